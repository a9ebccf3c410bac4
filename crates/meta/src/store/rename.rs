//! rename(2) with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`, as one transaction.
//!
//! Loop safety: moving a directory reads every ancestor of the destination serializably, so two
//! concurrent renames that would together create a cycle (a into b, b into a) cannot both commit:
//! each writes the `parent` field of an inode the other read.

use ember_proto::meta::{RENAME_EXCHANGE, RENAME_NOREPLACE};
use ember_types::{FileType, InodeId};

use super::dir::drop_link;
use super::{check_name, now_ns, MetaStore, Tx};
use crate::schema::DirEntryRecord;
use crate::MetaError;

/// Deepest directory tree the loop check walks before declaring the metadata corrupt.
const MAX_DEPTH: usize = 4096;

impl MetaStore {
    pub fn rename(
        &self,
        old_parent: InodeId,
        old_name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), MetaError> {
        check_name(old_name)?;
        check_name(new_name)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(MetaError::Unsupported(format!("rename flags {flags:#x}")));
        }
        if flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(MetaError::InvalidArgument("RENAME_NOREPLACE with RENAME_EXCHANGE".into()));
        }
        if flags == RENAME_EXCHANGE {
            return self.exchange(old_parent, old_name, new_parent, new_name);
        }
        let noreplace = flags & RENAME_NOREPLACE != 0;
        self.run(|t| {
            let src = t.require_entry(old_parent, old_name)?;
            if old_parent == new_parent && old_name == new_name {
                return Ok(());
            }
            if old_parent != new_parent {
                t.require_dir(new_parent)?;
            }
            let dst = t.entry(new_parent, new_name)?;
            if let Some(d) = &dst {
                if noreplace {
                    let name = String::from_utf8_lossy(new_name);
                    return Err(MetaError::AlreadyExists(format!(
                        "{name:?} in directory {new_parent}"
                    )));
                }
                if d.inode == src.inode {
                    // Two names of one file: POSIX says do nothing.
                    return Ok(());
                }
                check_replace(t, &src, d)?;
            }
            let kind = src.kind()?;
            if kind == FileType::Directory && old_parent != new_parent {
                check_no_loop(t, InodeId(src.inode), new_parent)?;
            }
            let now = now_ns();
            t.delete_entry(old_parent, old_name);
            t.put_entry(new_parent, new_name, InodeId(src.inode), kind);
            if let Some(d) = dst {
                replace_target(t, new_parent, &d, now)?;
            }
            moved(t, InodeId(src.inode), new_parent, new_name, now)?;
            if kind == FileType::Directory && old_parent != new_parent {
                t.add_subdirs(old_parent, -1);
                t.add_subdirs(new_parent, 1);
            }
            t.touch_dir(old_parent, now);
            t.touch_dir(new_parent, now);
            Ok(())
        })
    }
}

impl MetaStore {
    /// Swaps two existing names, whatever their types (renameat2's `RENAME_EXCHANGE`).
    fn exchange(&self, a_parent: InodeId, a_name: &[u8], b_parent: InodeId, b_name: &[u8]) -> Result<(), MetaError> {
        self.run(|t| {
            let a = t.require_entry(a_parent, a_name)?;
            let b = t.require_entry(b_parent, b_name)?;
            if a_parent == b_parent && a_name == b_name {
                return Ok(());
            }
            let (a_kind, b_kind) = (a.kind()?, b.kind()?);
            let (a_ino, b_ino) = (InodeId(a.inode), InodeId(b.inode));
            if a_parent != b_parent {
                if a_kind == FileType::Directory {
                    check_no_loop(t, a_ino, b_parent)?;
                }
                if b_kind == FileType::Directory {
                    check_no_loop(t, b_ino, a_parent)?;
                }
                let dirs = |k: FileType| i64::from(k == FileType::Directory);
                let delta = dirs(a_kind) - dirs(b_kind);
                t.add_subdirs(a_parent, -delta);
                t.add_subdirs(b_parent, delta);
            }
            let now = now_ns();
            t.put_entry(a_parent, a_name, b_ino, b_kind);
            t.put_entry(b_parent, b_name, a_ino, a_kind);
            if a_ino != b_ino {
                moved(t, a_ino, b_parent, b_name, now)?;
                moved(t, b_ino, a_parent, a_name, now)?;
            }
            t.touch_dir(a_parent, now);
            t.touch_dir(b_parent, now);
            Ok(())
        })
    }
}

/// Type rules for replacing an existing target.
fn check_replace(
    t: &mut Tx<'_>,
    src: &DirEntryRecord,
    dst: &DirEntryRecord,
) -> Result<(), MetaError> {
    let dst_ino = InodeId(dst.inode);
    match (
        src.kind()? == FileType::Directory,
        dst.kind()? == FileType::Directory,
    ) {
        (true, false) => Err(MetaError::NotDirectory(dst_ino)),
        (false, true) => Err(MetaError::IsDirectory(dst_ino)),
        (true, true) if !t.dir_is_empty(dst_ino)? => Err(MetaError::NotEmpty(dst_ino)),
        _ => Ok(()),
    }
}

/// Fails if `dir` is `new_parent` or one of its ancestors.
fn check_no_loop(t: &mut Tx<'_>, dir: InodeId, new_parent: InodeId) -> Result<(), MetaError> {
    let mut cur = new_parent;
    for _ in 0..MAX_DEPTH {
        if cur == dir {
            return Err(MetaError::InvalidRename(dir));
        }
        if cur == InodeId::ROOT {
            return Ok(());
        }
        let rec = t.require_dir(cur)?;
        if rec.parent == 0 {
            return Err(MetaError::Corrupt(format!("directory {cur} has no parent")));
        }
        cur = InodeId(rec.parent);
    }
    Err(MetaError::Corrupt(format!(
        "ancestors of {new_parent} exceed {MAX_DEPTH} levels"
    )))
}

/// The replaced target loses its name: an (empty) directory goes, a file drops a link.
fn replace_target(
    t: &mut Tx<'_>,
    parent: InodeId,
    dst: &DirEntryRecord,
    now: i64,
) -> Result<(), MetaError> {
    let ino = InodeId(dst.inode);
    if dst.kind()? == FileType::Directory {
        let rec = t.require_inode(ino)?;
        t.delete_dir(ino, &rec)?;
        t.add_subdirs(parent, -1);
        return Ok(());
    }
    drop_link(t, ino, now)
}

/// The moved inode's ctime changes; a directory also records its new parent and name.
fn moved(
    t: &mut Tx<'_>,
    ino: InodeId,
    new_parent: InodeId,
    new_name: &[u8],
    now: i64,
) -> Result<(), MetaError> {
    let mut rec = t.require_inode(ino)?;
    rec.ctime_ns = now;
    if rec.kind()? == FileType::Directory {
        rec.parent = new_parent.0;
        rec.name = new_name.to_vec();
        t.touch_dir_ctime(ino, now);
    }
    t.put_inode(ino, &rec);
    Ok(())
}
