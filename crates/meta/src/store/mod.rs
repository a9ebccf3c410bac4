//! `MetaStore`: every metadata operation as one serializable KV transaction.
//!
//! The store is a plain synchronous type with no network, so every operation is testable over
//! `MemKv`. Each public method runs its closure through `ember_kv::run`, which retries on
//! conflicts; any meta server can therefore serve any request (the service is stateless apart
//! from the inode-id block and the chain round-robin counter, both safe to lose).

mod blocks;
mod dir;
mod file;
mod gc;
mod inline;
mod lock;
mod rename;
mod tx;
mod xattr;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ember_kv::{Transaction, TxnKv};
use ember_proto::meta::{Attr, DirEntryMsg, StatFsResp};
use ember_types::{FileType, InodeId};

use crate::chains::{ChainPicker, ChainSource};
use crate::ids::IdAllocator;
use crate::schema::{
    dentry_prefix, inode_count_key, key_after, le_u64, prefix_end, InodeRecord, MAX_NAME_LEN,
};
use crate::MetaError;

pub use file::Opened;
pub use gc::{GcItem, GcSession};
pub use inline::{InlineReply, SPILL_HOLD};
pub use xattr::DIR_INLINE_MAX;

pub(crate) use tx::Tx;

/// Layout settings for new files.
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    pub chunk_size: u32,
    /// Chains per file; capped by the number of chains that exist.
    pub stripe: u32,
    /// New files keep their bytes in the KV until they grow past this length (0: never).
    pub inline_max: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunk_size: 1 << 20,
            stripe: 4,
            inline_max: DEFAULT_INLINE_MAX,
        }
    }
}

/// Owner and permission bits of a new inode, and the creator's umask: applied unless the
/// parent directory has a default ACL, which takes its place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perm {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

impl Perm {
    pub fn new(mode: u32, uid: u32, gid: u32) -> Self {
        Perm { mode, uid, gid, umask: 0 }
    }

    pub fn with_umask(self, umask: u32) -> Self {
        Perm { umask: umask & 0o777, ..self }
    }

    /// As a new inode in `parent`: in a setgid directory it takes the directory's group, and
    /// a new directory is setgid too, as on Linux file systems (the kernel has already
    /// dropped a setgid asked for by a creator outside that group).
    pub(crate) fn in_parent(self, parent: &InodeRecord, dir: bool) -> Self {
        if parent.mode & 0o2000 == 0 {
            return self;
        }
        let mode = if dir { self.mode | 0o2000 } else { self.mode };
        Perm { gid: parent.gid, mode, ..self }
    }
}

/// Fields of a setattr; `None` leaves a field unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    /// The size is for the file's inline form (see `SetAttrReq::size_inline`).
    pub size_inline: bool,
    /// See `SetAttrReq::kill_setid`.
    pub kill_setid: bool,
    /// See `SetAttrReq::drop_capability`.
    pub drop_capability: bool,
}

/// Inline limit of new files unless configured otherwise.
pub const DEFAULT_INLINE_MAX: u32 = 4096;
/// The largest inline limit accepted: bigger files go to chunks.
pub const MAX_INLINE: u32 = 64 << 10;

/// Permission bits a client may set (no file-type bits).
const PERM_MASK: u32 = 0o7777;
/// Default and largest page of readdir.
const READDIR_DEFAULT: u32 = 128;
const READDIR_MAX: u32 = 4096;

pub struct MetaStore {
    kv: Arc<dyn TxnKv>,
    ids: IdAllocator,
    chains: ChainPicker,
    inline_max: u32,
    /// Transactions run so far: how busy clients are keeping the store (GC paces itself by it).
    transactions: AtomicU64,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Rejects names no directory may hold.
pub fn check_name(name: &[u8]) -> Result<(), MetaError> {
    if name.len() > MAX_NAME_LEN {
        return Err(MetaError::NameTooLong(name.len()));
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0)
    {
        return Err(MetaError::InvalidArgument(format!(
            "invalid file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

impl MetaStore {
    pub fn new(kv: Arc<dyn TxnKv>, chains: Arc<dyn ChainSource>, config: StoreConfig) -> Self {
        let ids = IdAllocator::new(kv.clone());
        let chains = ChainPicker::new(chains, config.chunk_size, config.stripe);
        MetaStore { kv, ids, chains, inline_max: config.inline_max.min(MAX_INLINE), transactions: AtomicU64::new(0) }
    }

    fn run<T>(&self, f: impl FnMut(&mut Tx<'_>) -> Result<T, MetaError>) -> Result<T, MetaError> {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        let mut f = f;
        ember_kv::run(&*self.kv, |txn: &mut dyn Transaction| f(&mut Tx(txn)))
    }

    /// Transactions run so far, reads included.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Creates the root directory if this is a fresh file system.
    pub fn ensure_root(&self) -> Result<(), MetaError> {
        self.run(|t| {
            if t.inode(InodeId::ROOT)?.is_some() {
                return Ok(());
            }
            let now = now_ns();
            let rec = new_record(FileType::Directory, Perm::new(0o755, 0, 0), now);
            let rec = InodeRecord {
                parent: InodeId::ROOT.0,
                ..rec
            };
            t.put_inode(InodeId::ROOT, &rec);
            t.init_dir_attrs(InodeId::ROOT, now);
            t.count_inodes(1);
            Ok(())
        })
    }

    pub fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr, MetaError> {
        check_name(name)?;
        self.run(|t| {
            let Some(entry) = t.entry(parent, name)? else {
                // Tell a missing name apart from a bad parent.
                t.require_dir(parent)?;
                return Err(MetaError::NotFound(format!(
                    "{:?} in directory {parent}",
                    String::from_utf8_lossy(name)
                )));
            };
            let ino = InodeId(entry.inode);
            let rec = t.inode(ino)?.ok_or_else(|| {
                MetaError::Corrupt(format!(
                    "entry {parent}/{:?} points at missing inode {ino}",
                    String::from_utf8_lossy(name)
                ))
            })?;
            t.attr(ino, &rec)
        })
    }

    pub fn getattr(&self, ino: InodeId) -> Result<Attr, MetaError> {
        self.run(|t| {
            let rec = t.require_inode(ino)?;
            t.attr(ino, &rec)
        })
    }

    pub fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, MetaError> {
        self.run(|t| {
            let rec = t.require_inode(ino)?;
            if rec.kind()? != FileType::Symlink {
                return Err(MetaError::InvalidArgument(format!(
                    "inode {ino} is not a symlink"
                )));
            }
            Ok(rec.symlink_target)
        })
    }

    /// Up to `limit` entries of `dir` with names after `after`, in byte order, and whether more
    /// follow; `with_attrs` adds each entry's attributes, read in the same snapshot. Each page
    /// is its own snapshot: an entry created or removed between pages may or may not show,
    /// every other entry shows exactly once.
    pub fn readdir(
        &self,
        dir: InodeId,
        after: &[u8],
        limit: u32,
        with_attrs: bool,
    ) -> Result<(Vec<DirEntryMsg>, bool), MetaError> {
        let limit = if limit == 0 {
            READDIR_DEFAULT
        } else {
            limit.min(READDIR_MAX)
        } as usize;
        self.run(|t| {
            let rec = t
                .snapshot_inode(dir)?
                .ok_or_else(|| MetaError::NotFound(format!("inode {dir}")))?;
            if rec.kind()? != FileType::Directory {
                return Err(MetaError::NotDirectory(dir));
            }
            let prefix = dentry_prefix(dir);
            let mut begin = prefix.clone();
            begin.extend_from_slice(after);
            let begin = if after.is_empty() {
                begin
            } else {
                key_after(&begin)
            };
            let mut rows = t.0.snapshot_scan(&begin, &prefix_end(&prefix), limit + 1)?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let entries = rows
                .into_iter()
                .map(|(k, v)| {
                    let e: crate::schema::DirEntryRecord = crate::schema::decode("dir entry", &v)?;
                    let name = k.get(prefix.len()..).unwrap_or_default().to_vec();
                    let attr = if with_attrs { t.snapshot_attr(InodeId(e.inode))? } else { None };
                    Ok(DirEntryMsg {
                        name,
                        inode: e.inode,
                        file_type: e.file_type,
                        attr,
                    })
                })
                .collect::<Result<Vec<_>, MetaError>>()?;
            Ok((entries, more))
        })
    }

    pub fn statfs(&self) -> Result<StatFsResp, MetaError> {
        let space = self.chains.source().space();
        let inodes = self.run(|t| {
            Ok(t.0
                .snapshot_get(&inode_count_key())?
                .map_or(0, |v| le_u64(&v)))
        })?;
        Ok(StatFsResp {
            capacity_bytes: space.capacity,
            free_bytes: space.free,
            used_bytes: space.used,
            inodes: (inodes as i64).max(0) as u64,
        })
    }
}

/// A fresh inode record of `kind` with all times `now`.
fn new_record(kind: FileType, perm: Perm, now: i64) -> InodeRecord {
    InodeRecord {
        file_type: u32::from(kind.to_u8()),
        mode: perm.mode & PERM_MASK,
        uid: perm.uid,
        gid: perm.gid,
        nlink: 1,
        atime_ns: now,
        mtime_ns: now,
        ctime_ns: now,
        ..Default::default()
    }
}
