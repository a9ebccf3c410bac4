//! Namespace changes other than rename: mkdir, rmdir, unlink, link, symlink.

use ember_proto::meta::Attr;
use ember_types::{FileType, InodeId};

use super::file::once;
use super::{check_name, new_record, now_ns, MetaStore, Perm, Tx};
use crate::schema::{gc_key, inode_key, GcRecord, InodeRecord, MAX_SYMLINK_LEN};
use crate::MetaError;

/// Largest link count of a file (as ext4).
const MAX_LINKS: u32 = 65_000;

fn exists(parent: InodeId, name: &[u8]) -> MetaError {
    MetaError::AlreadyExists(format!(
        "{:?} in directory {parent}",
        String::from_utf8_lossy(name)
    ))
}

/// Fails unless `parent` is a directory without an entry `name`.
/// The parent directory's record, if `name` is free in it.
fn require_free_name(t: &mut Tx<'_>, parent: InodeId, name: &[u8]) -> Result<InodeRecord, MetaError> {
    let rec = t.require_dir(parent)?;
    if t.entry(parent, name)?.is_some() {
        return Err(exists(parent, name));
    }
    Ok(rec)
}

fn check_symlink_target(target: &[u8]) -> Result<(), MetaError> {
    if target.is_empty() || target.contains(&0) {
        return Err(MetaError::InvalidArgument(
            "symlink target must be non-empty and contain no NUL".into(),
        ));
    }
    if target.len() > MAX_SYMLINK_LEN {
        return Err(MetaError::NameTooLong(target.len()));
    }
    Ok(())
}

impl MetaStore {
    pub fn mkdir(&self, parent: InodeId, name: &[u8], perm: Perm) -> Result<Attr, MetaError> {
        check_name(name)?;
        let mut new_id = None;
        self.run(|t| {
            let parent_rec = require_free_name(t, parent, name)?;
            let ino = once(&mut new_id, || self.ids.allocate())?;
            let now = now_ns();
            let (perm, acls) = super::xattr::new_inode_acls(t, parent, &parent_rec, perm, true)?;
            let mut rec = InodeRecord {
                parent: parent.0,
                name: name.to_vec(),
                dir_inline_max: parent_rec.dir_inline_max,
                ..new_record(FileType::Directory, perm, now)
            };
            super::xattr::put_inherited(t, ino, &mut rec, &acls);
            t.put_inode(ino, &rec);
            t.init_dir_attrs(ino, now);
            t.put_entry(parent, name, ino, FileType::Directory);
            t.add_subdirs(parent, 1);
            t.touch_dir(parent, now);
            t.count_inodes(1);
            t.attr(ino, &rec)
        })
    }

    pub fn rmdir(&self, parent: InodeId, name: &[u8]) -> Result<(), MetaError> {
        check_name(name)?;
        self.run(|t| {
            let entry = t.require_entry(parent, name)?;
            let dir = InodeId(entry.inode);
            if entry.kind()? != FileType::Directory {
                return Err(MetaError::NotDirectory(dir));
            }
            if !t.dir_is_empty(dir)? {
                return Err(MetaError::NotEmpty(dir));
            }
            let rec = t.require_inode(dir)?;
            t.delete_entry(parent, name);
            t.delete_dir(dir, &rec)?;
            t.add_subdirs(parent, -1);
            t.touch_dir(parent, now_ns());
            Ok(())
        })
    }

    /// Removes a name of a file or symlink. A file whose last name goes is queued for GC, never
    /// deleted at once: open handles may still read it.
    pub fn unlink(&self, parent: InodeId, name: &[u8]) -> Result<(), MetaError> {
        check_name(name)?;
        self.run(|t| {
            let entry = t.require_entry(parent, name)?;
            if entry.kind()? == FileType::Directory {
                return Err(MetaError::IsDirectory(InodeId(entry.inode)));
            }
            let now = now_ns();
            t.delete_entry(parent, name);
            t.touch_dir(parent, now);
            drop_link(t, InodeId(entry.inode), now)
        })
    }

    /// Adds the name `new_parent/new_name` for the file or symlink `ino`, which may be a file
    /// with no name yet (see `relink`).
    pub fn link(
        &self,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
    ) -> Result<Attr, MetaError> {
        check_name(new_name)?;
        self.run(|t| {
            let mut rec = t.require_inode(ino)?;
            let kind = rec.kind()?;
            if kind == FileType::Directory {
                return Err(MetaError::PermissionDenied(format!(
                    "inode {ino} is a directory; hard links to directories are not allowed"
                )));
            }
            if rec.nlink >= MAX_LINKS {
                return Err(MetaError::TooManyLinks(ino));
            }
            require_free_name(t, new_parent, new_name)?;
            if rec.nlink == 0 {
                relink(t, ino)?;
            }
            let now = now_ns();
            rec.nlink += 1;
            rec.ctime_ns = now;
            t.put_inode(ino, &rec);
            t.put_entry(new_parent, new_name, ino, kind);
            t.touch_dir(new_parent, now);
            t.attr(ino, &rec)
        })
    }

    /// Creates a FIFO, socket or device node.
    pub fn mknod(&self, parent: InodeId, name: &[u8], kind: FileType, perm: Perm, rdev: u32) -> Result<Attr, MetaError> {
        check_name(name)?;
        if !kind.is_special() {
            return Err(MetaError::InvalidArgument(format!("mknod makes FIFOs, sockets and devices, not a {kind:?}")));
        }
        let mut new_id = None;
        self.run(|t| {
            let parent_rec = require_free_name(t, parent, name)?;
            let ino = once(&mut new_id, || self.ids.allocate())?;
            let now = now_ns();
            let rdev = if matches!(kind, FileType::CharDevice | FileType::BlockDevice) { rdev } else { 0 };
            let (perm, acls) = super::xattr::new_inode_acls(t, parent, &parent_rec, perm, false)?;
            let mut rec = InodeRecord { rdev, ..new_record(kind, perm, now) };
            super::xattr::put_inherited(t, ino, &mut rec, &acls);
            t.put_inode(ino, &rec);
            t.put_entry(parent, name, ino, kind);
            t.touch_dir(parent, now);
            t.count_inodes(1);
            t.attr(ino, &rec)
        })
    }

    pub fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr, MetaError> {
        check_name(name)?;
        check_symlink_target(target)?;
        let mut new_id = None;
        self.run(|t| {
            let parent_rec = require_free_name(t, parent, name)?;
            let ino = once(&mut new_id, || self.ids.allocate())?;
            let now = now_ns();
            let perm = Perm::new(0o777, uid, gid).in_parent(&parent_rec, false);
            let rec = InodeRecord {
                size: target.len() as u64,
                symlink_target: target.to_vec(),
                ..new_record(FileType::Symlink, perm, now)
            };
            t.put_inode(ino, &rec);
            t.put_entry(parent, name, ino, FileType::Symlink);
            t.touch_dir(parent, now);
            t.count_inodes(1);
            t.attr(ino, &rec)
        })
    }
}

/// One name of `ino` is gone: decrement its link count. A file at zero waits in the GC queue
/// (its chunks and open handles); a symlink or special file at zero has nothing outside the
/// KV and goes now.
pub(super) fn drop_link(t: &mut Tx<'_>, ino: InodeId, now: i64) -> Result<(), MetaError> {
    let Some(mut rec) = t.inode(ino)? else {
        tracing::warn!(%ino, "removed a directory entry whose inode was missing");
        return Ok(());
    };
    rec.nlink = rec.nlink.saturating_sub(1);
    rec.ctime_ns = now;
    match (rec.kind()?, rec.nlink) {
        (FileType::Directory, _) => {
            return Err(MetaError::Internal(format!("drop_link on directory {ino}")))
        }
        (kind, 0) if kind == FileType::Symlink || kind.is_special() => {
            t.0.delete(&inode_key(ino));
            t.count_inodes(-1);
            super::xattr::delete_all(t, ino, &rec)?;
        }
        (FileType::File, 0) => {
            t.put_inode(ino, &rec);
            queue_unlinked(t, ino, &rec, now);
        }
        _ => t.put_inode(ino, &rec),
    }
    Ok(())
}

/// Queues the file `ino` (`rec`), which has no name left, for GC: its chunks go once no
/// session holds it.
pub(super) fn queue_unlinked(t: &mut Tx<'_>, ino: InodeId, rec: &InodeRecord, now: i64) {
    t.put_gc_record(ino, &GcRecord { layout: rec.layout.clone(), queued_ns: now, removing: false });
}

/// A file with no link may get one while GC has not started removing it: an O_TMPFILE file,
/// which `linkat` names. The kernel refuses to link any other unlinked file (and an O_TMPFILE
/// one opened with O_EXCL) itself, so meta need not tell them apart; only a mount whose
/// kernel has not yet seen another mount's unlink can bring such a file back. Its queue
/// record goes: a named file is not GC's.
fn relink(t: &mut Tx<'_>, ino: InodeId) -> Result<(), MetaError> {
    match t.gc_record(ino)? {
        Some(g) if !g.removing => {
            t.0.delete(&gc_key(ino));
            Ok(())
        }
        _ => Err(MetaError::NotFound(format!("inode {ino} (unlinked)"))),
    }
}
