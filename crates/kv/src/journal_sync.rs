//! Makes fjall's journal durable without holding the lock every commit appends under.
//!
//! `Database::persist(SyncData)` runs its fdatasync while holding the journal writer's lock,
//! and every batch takes that lock to append. A commit arriving during the fsync therefore
//! waits for it, applies only afterwards, and is covered only by the *next* fsync: group
//! commit then covers one or two commits per fsync, however many clients wait.
//!
//! Instead, [`JournalSync::persist`] has fjall hand its buffer to the OS under that lock
//! (`PersistMode::Buffer`, a copy into the page cache), then fdatasyncs the journal file
//! through a descriptor of its own, outside the lock: fsync acts on the file, whichever
//! descriptor asks. Commits that arrive meanwhile append and wait for the next round, which
//! covers all of them.
//!
//! Which file: fjall journals are `<N>.jnl` in the database directory, the newest is the one
//! being appended to, and fjall syncs a journal completely before it creates the next. So
//! syncing the newest file after the hand-over covers everything handed over, even when a
//! rotation happened in between. If the journal file cannot be found (fjall changed its
//! layout, or the directory cannot be read), it falls back to fjall's own persist, which is
//! slower but just as safe.
//!
//! Used by the metadata KV here and by the storage engine's chunk records; the engine also
//! asks [`JournalSync::disk_bytes`] how much disk the journals take.
//!
//! A failed fdatasync poisons the syncer: Linux may have dropped the dirty pages it could not
//! write, so a later fsync that succeeds would prove nothing. fjall poisons its database the
//! same way.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use fjall::{Database, PersistMode};

const JOURNAL_SUFFIX: &str = ".jnl";

/// Syncs the journal of one fjall database (see the module doc).
pub struct JournalSync {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The newest journal found so far and a descriptor of it.
    active: Option<(u64, File)>,
    failed: Option<String>,
}

impl JournalSync {
    /// For the database in `dir`.
    pub fn new(dir: &Path) -> JournalSync {
        JournalSync { dir: dir.to_path_buf(), state: Mutex::new(State::default()) }
    }

    /// Makes every batch applied to `db` so far durable. Errors come as fjall's, so each
    /// caller maps them as it maps fjall's own (a full disk stays a full disk).
    pub fn persist(&self, db: &Database) -> Result<(), fjall::Error> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &st.failed {
            tracing::error!(dir = %self.dir.display(), why = %why, "refusing to persist after a failed journal fsync");
            return Err(fjall::Error::Poisoned);
        }
        db.persist(PersistMode::Buffer)?;
        let file = match self.newest(&mut st) {
            Ok(Some(file)) => file,
            found => {
                let why = found.err().map_or("none there".to_owned(), |e| e.to_string());
                tracing::warn!(dir = %self.dir.display(), why, "cannot find fjall's journal file; using fjall's own persist");
                return db.persist(PersistMode::SyncData);
            }
        };
        file.sync_data().map_err(|e| {
            tracing::error!(dir = %self.dir.display(), error = %e, "journal fsync failed");
            st.failed = Some(e.to_string());
            fjall::Error::Io(e)
        })
    }

    /// Disk space taken by the database's journals (the active one and sealed ones not yet
    /// deleted), as `du` counts it.
    pub fn disk_bytes(&self) -> io::Result<u64> {
        let mut bytes = 0;
        for (_, meta) in journals(&self.dir)? {
            bytes += meta.blocks() * 512;
        }
        Ok(bytes)
    }

    /// The journal being appended to: the one held, unless a later one has appeared.
    fn newest<'a>(&self, st: &'a mut State) -> io::Result<Option<&'a File>> {
        let rotated = match &st.active {
            Some((id, _)) => self.dir.join(journal_name(id + 1)).exists(),
            None => true,
        };
        if rotated {
            st.active = match newest_journal(&self.dir)? {
                Some(id) => Some((id, File::open(self.dir.join(journal_name(id)))?)),
                None => None,
            };
        }
        Ok(st.active.as_ref().map(|(_, file)| file))
    }
}

fn journal_name(id: u64) -> String {
    format!("{id}{JOURNAL_SUFFIX}")
}

/// The `<N>.jnl` files in `dir`: `N` and the file's metadata.
fn journals(dir: &Path) -> io::Result<Vec<(u64, std::fs::Metadata)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let id = name.to_str().and_then(|n| n.strip_suffix(JOURNAL_SUFFIX)).and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id {
            found.push((id, entry.metadata()?));
        }
    }
    Ok(found)
}

/// The highest `N` of the `<N>.jnl` files in `dir`.
fn newest_journal(dir: &Path) -> io::Result<Option<u64>> {
    Ok(journals(dir)?.into_iter().map(|(id, _)| id).max())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_journal_is_the_highest_number_and_other_files_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_journal(dir.path()).unwrap(), None);
        for name in ["0.jnl", "2.jnl", "10.jnl", "11.tmp", "x.jnl", "version"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(newest_journal(dir.path()).unwrap(), Some(10));
    }

    #[test]
    fn disk_bytes_counts_the_blocks_of_journal_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let sync = JournalSync::new(dir.path());
        assert_eq!(sync.disk_bytes().unwrap(), 0);
        std::fs::write(dir.path().join("3.jnl"), vec![1u8; 10_000]).unwrap();
        std::fs::write(dir.path().join("4.jnl"), vec![1u8; 100]).unwrap();
        std::fs::write(dir.path().join("tree.sst"), vec![1u8; 50_000]).unwrap();
        let bytes = sync.disk_bytes().unwrap();
        assert!((10_100..50_000).contains(&bytes), "{bytes} bytes for 10,100 bytes of journal");
    }

    #[test]
    fn a_new_journal_is_followed_once_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0.jnl"), b"").unwrap();
        let sync = JournalSync::new(dir.path());
        let mut st = State::default();
        sync.newest(&mut st).unwrap();
        assert_eq!(st.active.as_ref().map(|(id, _)| *id), Some(0));
        std::fs::write(dir.path().join("1.jnl"), b"").unwrap();
        sync.newest(&mut st).unwrap();
        assert_eq!(st.active.as_ref().map(|(id, _)| *id), Some(1));
    }

    #[test]
    fn the_fjall_in_use_keeps_its_journal_where_this_looks_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).manual_journal_persist(true).open().unwrap();
        let ks = db.keyspace("probe", fjall::KeyspaceCreateOptions::default).unwrap();
        let probe = b"a value only the journal can hold";
        ks.insert("k", probe.as_slice()).unwrap();
        let sync = JournalSync::new(dir.path());
        sync.persist(&db).unwrap();
        let (id, _) = sync.state.lock().unwrap().active.take().expect("no journal file found");
        let synced = std::fs::read(dir.path().join(journal_name(id))).unwrap();
        assert!(synced.windows(probe.len()).any(|w| w == probe), "the file synced does not hold the batch");
    }
}
