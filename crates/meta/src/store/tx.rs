//! Typed reads and writes of the schema inside one KV transaction.
//!
//! Serializable reads (`get`, `scan`) are used for everything a decision depends on, so a
//! concurrent change of it makes one of the two transactions retry. Parent directories' mtime,
//! ctime and subdirectory count are only ever changed with commutative `atomic_max`/`atomic_add`,
//! so creates in one directory never conflict with each other.

use ember_kv::Transaction;
use ember_proto::meta::{Attr, LayoutMsg};
use ember_types::{FileType, InodeId, BLOCK_SIZE};

use crate::schema::{
    decode, dentry_key, dentry_prefix, dir_attr_key, encode, gc_key, inode_count_key, inode_key,
    inline_key, le_u64, prefix_end, session_key, session_prefix, DirAttr, DirEntryRecord, GcRecord,
    InlineRecord, InodeRecord, SessionRecord,
};
use crate::MetaError;

pub(crate) struct Tx<'a>(pub &'a mut dyn Transaction);

/// Nanoseconds as stored by `atomic_max` (times before 1970 clamp to 0).
fn time_u64(ns: i64) -> u64 {
    u64::try_from(ns).unwrap_or(0)
}

fn time_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Tx<'_> {
    pub fn inode(&mut self, ino: InodeId) -> Result<Option<InodeRecord>, MetaError> {
        self.0
            .get(&inode_key(ino))?
            .map(|v| decode("inode", &v))
            .transpose()
    }

    pub fn snapshot_inode(&mut self, ino: InodeId) -> Result<Option<InodeRecord>, MetaError> {
        self.0
            .snapshot_get(&inode_key(ino))?
            .map(|v| decode("inode", &v))
            .transpose()
    }

    pub fn require_inode(&mut self, ino: InodeId) -> Result<InodeRecord, MetaError> {
        self.inode(ino)?
            .ok_or_else(|| MetaError::NotFound(format!("inode {ino}")))
    }

    /// The directory `ino`, read serializably so that its removal conflicts with this txn.
    pub fn require_dir(&mut self, ino: InodeId) -> Result<InodeRecord, MetaError> {
        let rec = self.require_inode(ino)?;
        if rec.kind()? != FileType::Directory {
            return Err(MetaError::NotDirectory(ino));
        }
        Ok(rec)
    }

    pub fn put_inode(&mut self, ino: InodeId, rec: &InodeRecord) {
        self.0.set(&inode_key(ino), &encode(rec));
    }

    pub fn entry(
        &mut self,
        parent: InodeId,
        name: &[u8],
    ) -> Result<Option<DirEntryRecord>, MetaError> {
        self.0
            .get(&dentry_key(parent, name))?
            .map(|v| decode("dir entry", &v))
            .transpose()
    }

    pub fn require_entry(
        &mut self,
        parent: InodeId,
        name: &[u8],
    ) -> Result<DirEntryRecord, MetaError> {
        self.entry(parent, name)?.ok_or_else(|| {
            MetaError::NotFound(format!(
                "{:?} in directory {parent}",
                String::from_utf8_lossy(name)
            ))
        })
    }

    pub fn put_entry(&mut self, parent: InodeId, name: &[u8], ino: InodeId, kind: FileType) {
        let rec = DirEntryRecord {
            inode: ino.0,
            file_type: u32::from(kind.to_u8()),
        };
        self.0.set(&dentry_key(parent, name), &encode(&rec));
        self.count_entry_change(parent);
    }

    pub fn delete_entry(&mut self, parent: InodeId, name: &[u8]) {
        self.0.delete(&dentry_key(parent, name));
        self.count_entry_change(parent);
    }

    /// Commutative, like the other directory counters, so creates in one directory still do
    /// not conflict.
    fn count_entry_change(&mut self, dir: InodeId) {
        self.0.atomic_add(&dir_attr_key(dir, DirAttr::Changes), 1);
    }

    /// Whether `dir` has no entries; serializable, so a concurrent create into it conflicts.
    pub fn dir_is_empty(&mut self, dir: InodeId) -> Result<bool, MetaError> {
        let begin = dentry_prefix(dir);
        Ok(self.0.scan(&begin, &prefix_end(&begin), 1)?.is_empty())
    }

    /// Bumps a directory's mtime and ctime because its entries changed.
    pub fn touch_dir(&mut self, dir: InodeId, now: i64) {
        self.0
            .atomic_max(&dir_attr_key(dir, DirAttr::Mtime), time_u64(now));
        self.0
            .atomic_max(&dir_attr_key(dir, DirAttr::Ctime), time_u64(now));
    }

    pub fn touch_dir_ctime(&mut self, dir: InodeId, now: i64) {
        self.0
            .atomic_max(&dir_attr_key(dir, DirAttr::Ctime), time_u64(now));
    }

    /// Overwrites a directory's mtime (utimes may move it backwards).
    pub fn set_dir_mtime(&mut self, dir: InodeId, mtime: i64) {
        self.0.set(
            &dir_attr_key(dir, DirAttr::Mtime),
            &time_u64(mtime).to_le_bytes(),
        );
    }

    pub fn add_subdirs(&mut self, dir: InodeId, delta: i64) {
        self.0
            .atomic_add(&dir_attr_key(dir, DirAttr::Subdirs), delta);
    }

    /// Writes a new directory's counters so that later max/add start from its creation time.
    pub fn init_dir_attrs(&mut self, dir: InodeId, now: i64) {
        self.0
            .set(&dir_attr_key(dir, DirAttr::Subdirs), &0i64.to_le_bytes());
        self.0.set(
            &dir_attr_key(dir, DirAttr::Mtime),
            &time_u64(now).to_le_bytes(),
        );
        self.0.set(
            &dir_attr_key(dir, DirAttr::Ctime),
            &time_u64(now).to_le_bytes(),
        );
    }

    pub fn count_inodes(&mut self, delta: i64) {
        self.0.atomic_add(&inode_count_key(), delta);
    }

    /// Removes an empty directory's inode, counters and extended attributes.
    pub fn delete_dir(&mut self, dir: InodeId, rec: &InodeRecord) -> Result<(), MetaError> {
        self.0.delete(&inode_key(dir));
        for a in DirAttr::ALL {
            self.0.delete(&dir_attr_key(dir, a));
        }
        self.count_inodes(-1);
        super::xattr::delete_all(self, dir, rec)
    }

    pub fn put_session(&mut self, ino: InodeId, session: u64, rec: &SessionRecord) {
        self.0.set(&session_key(ino, session), &encode(rec));
    }

    /// Every session of `ino` with its id, serializable (a concurrent open conflicts).
    pub fn sessions(&mut self, ino: InodeId) -> Result<Vec<(u64, SessionRecord)>, MetaError> {
        let begin = session_prefix(ino);
        let rows = self.0.scan(&begin, &prefix_end(&begin), 0)?;
        rows.iter()
            .map(|(k, v)| {
                let id = crate::schema::session_from_key(k)
                    .ok_or_else(|| MetaError::Corrupt("session key".into()))?;
                Ok((id, decode("session", v)?))
            })
            .collect()
    }

    /// The bytes of an inline file (an absent record is an empty file), read serializably.
    pub fn inline(&mut self, ino: InodeId) -> Result<InlineRecord, MetaError> {
        Ok(self.0.get(&inline_key(ino))?.map(|v| decode("inline data", &v)).transpose()?.unwrap_or_default())
    }

    pub fn put_inline(&mut self, ino: InodeId, rec: &InlineRecord) {
        self.0.set(&inline_key(ino), &encode(rec));
    }

    pub fn delete_inline(&mut self, ino: InodeId) {
        self.0.delete(&inline_key(ino));
    }

    pub fn gc_record(&mut self, ino: InodeId) -> Result<Option<GcRecord>, MetaError> {
        self.0
            .get(&gc_key(ino))?
            .map(|v| decode("gc record", &v))
            .transpose()
    }

    pub fn put_gc_record(&mut self, ino: InodeId, rec: &GcRecord) {
        self.0.set(&gc_key(ino), &encode(rec));
    }

    fn dir_attr(&mut self, dir: InodeId, a: DirAttr) -> Result<Option<u64>, MetaError> {
        Ok(self
            .0
            .snapshot_get(&dir_attr_key(dir, a))?
            .map(|v| le_u64(&v)))
    }

    /// What a client sees of `ino` in this snapshot; `None` if it has no inode.
    pub fn snapshot_attr(&mut self, ino: InodeId) -> Result<Option<Attr>, MetaError> {
        match self.snapshot_inode(ino)? {
            Some(rec) => self.attr(ino, &rec).map(Some),
            None => Ok(None),
        }
    }

    /// What a client sees of `rec`; directories' counters come from their `DATR` keys.
    pub fn attr(&mut self, ino: InodeId, rec: &InodeRecord) -> Result<Attr, MetaError> {
        let kind = rec.kind()?;
        let mut attr = Attr {
            inode: ino.0,
            file_type: u32::from(kind.to_u8()),
            mode: rec.mode,
            uid: rec.uid,
            gid: rec.gid,
            nlink: rec.nlink,
            size: rec.size,
            atime_ns: rec.atime_ns,
            mtime_ns: rec.mtime_ns,
            ctime_ns: rec.ctime_ns,
            layout: rec.layout.as_ref().map(|l| LayoutMsg {
                chunk_size: l.chunk_size,
                chains: l.chains.clone(),
            }),
            inline_limit: rec.inline_limit,
            has_xattrs: rec.has_xattrs,
            rdev: rec.rdev,
            blocks: match kind {
                FileType::File if rec.inline_limit == 0 => rec.stored_blocks * u64::from(BLOCK_SIZE / 512),
                _ => rec.size.div_ceil(512),
            },
            entry_changes: 0,
        };
        if kind == FileType::Directory {
            let subdirs = self
                .dir_attr(ino, DirAttr::Subdirs)?
                .map_or(0, |v| v as i64)
                .max(0);
            attr.nlink = u32::try_from(2 + subdirs).unwrap_or(u32::MAX);
            if let Some(m) = self.dir_attr(ino, DirAttr::Mtime)? {
                attr.mtime_ns = time_i64(m);
            }
            if let Some(c) = self.dir_attr(ino, DirAttr::Ctime)? {
                attr.ctime_ns = time_i64(c);
            }
            attr.entry_changes = self.dir_attr(ino, DirAttr::Changes)?.unwrap_or(0);
        }
        Ok(attr)
    }
}
