//! Key layout and stored records of the metadata service.
//!
//! Keys follow 3FS: a 4-byte ASCII prefix, then inode ids as 8 bytes little-endian (so that
//! sequential ids spread over the key space of a range-partitioned KV), then the rest.
//!
//! | key | value |
//! |---|---|
//! | `INOD` id | [`InodeRecord`] |
//! | `DENT` parent name | [`DirEntryRecord`] |
//! | `DATR` id `n` | i64 LE: number of subdirectories (commutative add) |
//! | `DATR` id `m` / `c` | u64 LE: directory mtime / ctime in ns (commutative max) |
//! | `INOS` id session (8 B big-endian) | [`SessionRecord`] |
//! | `INLN` id | [`InlineRecord`]: the bytes of an inline file (absent = empty) |
//! | `XATR` id name | the value of one extended attribute |
//! | `LOCK` id | [`LockRecord`]: the byte-range and flock locks held on a file |
//! | `LKWT` client (8 B LE) owner (8 B BE) | [`LockWaitRecord`]: the lock a POSIX owner waits for |
//! | `CBLK` id chunk (4 B big-endian) | u64 LE version, u32 LE blocks: what one chunk holds |
//! | `GCQ_` id | [`GcRecord`]: unlinked file waiting for chunk removal |
//! | `SING` `ino` shard | u64 LE: inode-id block counter of one shard |
//! | `SING` `inodes` | i64 LE: number of inodes (commutative add) |
//!
//! Records are protobuf messages: a reader skips fields it does not know, so fields can be added
//! without a migration.

use ember_types::{ChainId, FileType, InodeId, Layout};

use crate::MetaError;

pub const INODE_PREFIX: &[u8; 4] = b"INOD";
pub const DENTRY_PREFIX: &[u8; 4] = b"DENT";
pub const DIR_ATTR_PREFIX: &[u8; 4] = b"DATR";
pub const SESSION_PREFIX: &[u8; 4] = b"INOS";
pub const GC_PREFIX: &[u8; 4] = b"GCQ_";
pub const INLINE_PREFIX: &[u8; 4] = b"INLN";
pub const XATTR_PREFIX: &[u8; 4] = b"XATR";
pub const LOCK_PREFIX: &[u8; 4] = b"LOCK";
pub const LOCK_WAIT_PREFIX: &[u8; 4] = b"LKWT";
pub const CHUNK_BLOCKS_PREFIX: &[u8; 4] = b"CBLK";
pub const SINGLETON_PREFIX: &[u8; 4] = b"SING";

/// Longest file name (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target (PATH_MAX).
pub const MAX_SYMLINK_LEN: usize = 4096;

fn key(prefix: &[u8; 4], id: InodeId, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(&id.0.to_le_bytes());
    k.extend_from_slice(rest);
    k
}

pub fn inode_key(id: InodeId) -> Vec<u8> {
    key(INODE_PREFIX, id, &[])
}

pub fn dentry_key(parent: InodeId, name: &[u8]) -> Vec<u8> {
    key(DENTRY_PREFIX, parent, name)
}

/// Prefix of every entry of one directory.
pub fn dentry_prefix(parent: InodeId) -> Vec<u8> {
    key(DENTRY_PREFIX, parent, &[])
}

/// Which per-directory counter a `DATR` key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirAttr {
    Subdirs,
    Mtime,
    Ctime,
    /// Entries added or removed, ever (`Attr::entry_changes`).
    Changes,
}

impl DirAttr {
    pub const ALL: [DirAttr; 4] = [DirAttr::Subdirs, DirAttr::Mtime, DirAttr::Ctime, DirAttr::Changes];

    fn tag(self) -> u8 {
        match self {
            DirAttr::Subdirs => b'n',
            DirAttr::Mtime => b'm',
            DirAttr::Ctime => b'c',
            DirAttr::Changes => b'e',
        }
    }
}

pub fn dir_attr_key(dir: InodeId, attr: DirAttr) -> Vec<u8> {
    key(DIR_ATTR_PREFIX, dir, &[attr.tag()])
}

pub fn session_key(ino: InodeId, session: u64) -> Vec<u8> {
    key(SESSION_PREFIX, ino, &session.to_be_bytes())
}

pub fn session_prefix(ino: InodeId) -> Vec<u8> {
    key(SESSION_PREFIX, ino, &[])
}

pub fn inline_key(ino: InodeId) -> Vec<u8> {
    key(INLINE_PREFIX, ino, &[])
}

pub fn xattr_key(ino: InodeId, name: &[u8]) -> Vec<u8> {
    key(XATTR_PREFIX, ino, name)
}

pub fn xattr_prefix(ino: InodeId) -> Vec<u8> {
    key(XATTR_PREFIX, ino, &[])
}

pub fn lock_key(ino: InodeId) -> Vec<u8> {
    key(LOCK_PREFIX, ino, &[])
}

/// The wait of one lock owner (a client id in the place of an inode id).
pub fn lock_wait_key(client_id: u64, owner: u64) -> Vec<u8> {
    key(LOCK_WAIT_PREFIX, InodeId(client_id), &owner.to_be_bytes())
}

pub fn chunk_blocks_key(ino: InodeId, chunk: u32) -> Vec<u8> {
    key(CHUNK_BLOCKS_PREFIX, ino, &chunk.to_be_bytes())
}

pub fn chunk_blocks_prefix(ino: InodeId) -> Vec<u8> {
    key(CHUNK_BLOCKS_PREFIX, ino, &[])
}

pub fn gc_key(ino: InodeId) -> Vec<u8> {
    key(GC_PREFIX, ino, &[])
}

pub fn id_shard_key(shard: u8) -> Vec<u8> {
    let mut k = SINGLETON_PREFIX.to_vec();
    k.extend_from_slice(b"ino");
    k.push(shard);
    k
}

pub fn inode_count_key() -> Vec<u8> {
    let mut k = SINGLETON_PREFIX.to_vec();
    k.extend_from_slice(b"inodes");
    k
}

/// The inode id at the end of an `INOD`/`GCQ_`/`INOS`/`LOCK` key.
pub fn id_from_key(k: &[u8]) -> Option<InodeId> {
    let b: [u8; 8] = k.get(4..12)?.try_into().ok()?;
    Some(InodeId(u64::from_le_bytes(b)))
}

/// The session id at the end of an `INOS` key.
pub fn session_from_key(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(12..20)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The smallest key greater than every key starting with `prefix` (empty = no upper bound).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    end
}

/// The smallest key greater than `k`.
pub fn key_after(k: &[u8]) -> Vec<u8> {
    let mut next = k.to_vec();
    next.push(0);
    next
}

/// Reads a little-endian integer value written by `atomic_add`/`atomic_max`; missing bytes are 0.
pub fn le_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    u64::from_le_bytes(b)
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LayoutRecord {
    #[prost(uint32, tag = "1")]
    pub chunk_size: u32,
    #[prost(uint32, repeated, tag = "2")]
    pub chains: Vec<u32>,
}

impl LayoutRecord {
    pub fn from_layout(l: &Layout) -> Self {
        LayoutRecord {
            chunk_size: l.chunk_size,
            chains: l.chains.iter().map(|c| c.0).collect(),
        }
    }

    pub fn to_layout(&self) -> Result<Layout, MetaError> {
        Layout::new(
            self.chunk_size,
            self.chains.iter().copied().map(ChainId).collect(),
        )
        .map_err(|e| MetaError::Corrupt(format!("stored layout: {e}")))
    }
}

/// One file, directory or symlink.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InodeRecord {
    /// `FileType::to_u8`.
    #[prost(uint32, tag = "1")]
    pub file_type: u32,
    /// Permission bits (07777), no type bits.
    #[prost(uint32, tag = "2")]
    pub mode: u32,
    #[prost(uint32, tag = "3")]
    pub uid: u32,
    #[prost(uint32, tag = "4")]
    pub gid: u32,
    /// Link count of files and symlinks; directories derive theirs from `DATR n`.
    #[prost(uint32, tag = "5")]
    pub nlink: u32,
    #[prost(uint64, tag = "6")]
    pub size: u64,
    #[prost(int64, tag = "7")]
    pub atime_ns: i64,
    /// For directories only the initial value: `DATR m` overrides it.
    #[prost(int64, tag = "8")]
    pub mtime_ns: i64,
    #[prost(int64, tag = "9")]
    pub ctime_ns: i64,
    #[prost(message, optional, tag = "10")]
    pub layout: Option<LayoutRecord>,
    #[prost(bytes = "vec", tag = "11")]
    pub symlink_target: Vec<u8>,
    /// Directories: the parent, walked upwards by rename's loop check.
    #[prost(uint64, tag = "12")]
    pub parent: u64,
    /// Directories: own name in the parent.
    #[prost(bytes = "vec", tag = "13")]
    pub name: Vec<u8>,
    /// Files: non-zero while the file is inline (its bytes in `INLN`, `size` their length),
    /// the length up to which it may grow there. Set at create; 0 once moved to chunks.
    #[prost(uint32, tag = "14")]
    pub inline_limit: u32,
    /// Directories: the inline limit of files created in it (`ember.dir.inline_max`), copied
    /// to subdirectories made in it; absent = the service's default.
    #[prost(uint32, optional, tag = "15")]
    pub dir_inline_max: Option<u32>,
    /// Whether the inode may have `XATR` records (set by the first set, never cleared), so
    /// that removing an inode without any skips their scan.
    #[prost(bool, tag = "16")]
    pub has_xattrs: bool,
    /// Device nodes: the device number, as the kernel encodes it.
    #[prost(uint32, tag = "17")]
    pub rdev: u32,
    /// A chunked file: the 4 KiB blocks its chunks hold on storage (see `store::blocks`).
    #[prost(uint64, tag = "18")]
    pub stored_blocks: u64,
}

impl InodeRecord {
    pub fn kind(&self) -> Result<FileType, MetaError> {
        u8::try_from(self.file_type)
            .ok()
            .and_then(FileType::from_u8)
            .ok_or_else(|| MetaError::Corrupt(format!("file type {}", self.file_type)))
    }
}

/// A name in a directory.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DirEntryRecord {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint32, tag = "2")]
    pub file_type: u32,
}

impl DirEntryRecord {
    pub fn kind(&self) -> Result<FileType, MetaError> {
        u8::try_from(self.file_type)
            .ok()
            .and_then(FileType::from_u8)
            .ok_or_else(|| MetaError::Corrupt(format!("entry file type {}", self.file_type)))
    }
}

/// One open handle of a file; the file's chunks are kept while any exists.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionRecord {
    #[prost(uint64, tag = "1")]
    pub client_id: u64,
    #[prost(bool, tag = "2")]
    pub write: bool,
    #[prost(int64, tag = "3")]
    pub opened_ns: i64,
}

/// The bytes of an inline file, and who is moving them to chunks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InlineRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    /// Non-zero while a client moves the file to chunks (`SpillInline`).
    #[prost(uint64, tag = "2")]
    pub spill_token: u64,
    /// Wall-clock end of that client's hold, in ns.
    #[prost(int64, tag = "3")]
    pub spill_deadline_ns: i64,
}

/// One lock: bytes `start..=end` of a file, held by `owner` of client `client_id`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LockEntry {
    #[prost(uint64, tag = "1")]
    pub client_id: u64,
    #[prost(uint64, tag = "2")]
    pub owner: u64,
    #[prost(uint64, tag = "3")]
    pub start: u64,
    #[prost(uint64, tag = "4")]
    pub end: u64,
    /// Exclusive; shared otherwise.
    #[prost(bool, tag = "5")]
    pub write: bool,
    #[prost(uint32, tag = "6")]
    pub pid: u32,
    /// An flock (whole file, `owner` an open file); a POSIX lock otherwise, as every lock
    /// stored before the two were told apart.
    #[prost(bool, tag = "7")]
    pub flock: bool,
}

/// A blocking POSIX lock request that was refused, so its owner waits and asks again; it
/// counts only until `until_ns` (the waiter refreshes it with every attempt). flock waits
/// leave none: Linux looks for deadlocks among POSIX locks only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockWaitRecord {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint64, tag = "2")]
    pub start: u64,
    #[prost(uint64, tag = "3")]
    pub end: u64,
    #[prost(bool, tag = "4")]
    pub write: bool,
    #[prost(int64, tag = "5")]
    pub until_ns: i64,
}

/// Every lock held on one file, in the normal form `crate::locks::LockTable` keeps.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockRecord {
    #[prost(message, repeated, tag = "1")]
    pub locks: Vec<LockEntry>,
}

/// An unlinked file whose chunks still have to be removed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GcRecord {
    #[prost(message, optional, tag = "1")]
    pub layout: Option<LayoutRecord>,
    #[prost(int64, tag = "2")]
    pub queued_ns: i64,
    /// Set once GC has decided to remove the chunks; from then on the inode cannot be reopened.
    #[prost(bool, tag = "3")]
    pub removing: bool,
}

/// Decodes a stored record; failure means corrupt metadata, never a panic.
pub fn decode<M: prost::Message + Default>(what: &str, v: &[u8]) -> Result<M, MetaError> {
    M::decode(v).map_err(|e| MetaError::Corrupt(format!("{what}: {e}")))
}

pub fn encode<M: prost::Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_prefix_and_little_endian_ids() {
        let k = inode_key(InodeId(0x0102));
        assert_eq!(&k[..4], b"INOD");
        assert_eq!(&k[4..6], &[0x02, 0x01]);
        assert_eq!(id_from_key(&k), Some(InodeId(0x0102)));
        let d = dentry_key(InodeId(1), b"abc");
        assert!(d.starts_with(&dentry_prefix(InodeId(1))));
        assert_eq!(&d[12..], b"abc");
        assert_eq!(session_from_key(&session_key(InodeId(9), 77)), Some(77));
        assert_ne!(id_shard_key(0), inode_count_key());
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff]), Vec::<u8>::new());
        let p = dentry_prefix(InodeId(u64::MAX));
        assert!(dentry_key(InodeId(u64::MAX), b"zzz") < prefix_end(&p));
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert!(decode::<InodeRecord>("inode", &[0xff, 0xff, 0xff]).is_err());
        let r = InodeRecord {
            file_type: 9,
            ..Default::default()
        };
        assert!(r.kind().is_err());
        assert_eq!(le_u64(&[1, 0]), 1);
    }
}
