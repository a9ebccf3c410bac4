//! Extended attributes: one `XATR` record per name, plus the virtual `ember.dir.inline_max`.
//!
//! The `user.`, `trusted.` and `security.` namespaces are stored as given; the kernel has
//! already checked the caller's right to them (the mount uses `default_permissions`).
//! `system.` (POSIX ACLs) is refused until ACLs are enforced, so that no program believes an
//! ACL it set protects anything. `ember.dir.inline_max` reads and sets a directory's inline
//! limit for the files created in it; it is not listed, so copying a tree elsewhere does not
//! carry it.

use ember_proto::meta::XattrSetMode;
use ember_types::{FileType, InodeId};

use super::{now_ns, MetaStore, Tx, MAX_INLINE};
use crate::schema::{prefix_end, xattr_key, xattr_prefix, InodeRecord};
use crate::MetaError;

/// Longest name, as Linux's XATTR_NAME_MAX.
const NAME_MAX: usize = 255;
/// Largest value, as Linux's XATTR_SIZE_MAX.
const VALUE_MAX: usize = 64 << 10;
/// Longest list of one inode's names (each with its NUL), as Linux's XATTR_LIST_MAX: a longer
/// one could not be listed.
const LIST_MAX: usize = 64 << 10;
/// Names and values of one inode together.
const INODE_MAX: usize = 1 << 20;

pub const DIR_INLINE_MAX: &[u8] = b"ember.dir.inline_max";
const STORED_NAMESPACES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];

/// (name, value) pairs.
type Stored = Vec<(Vec<u8>, Vec<u8>)>;

enum XattrName {
    Stored,
    DirInlineMax,
}

fn classify(name: &[u8]) -> Result<XattrName, MetaError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.is_empty() || name.len() > NAME_MAX || name.contains(&0) {
        return Err(MetaError::InvalidArgument(format!("extended attribute name {:?}", shown())));
    }
    if name == DIR_INLINE_MAX {
        return Ok(XattrName::DirInlineMax);
    }
    if STORED_NAMESPACES.iter().any(|ns| name.len() > ns.len() && name.starts_with(ns)) {
        return Ok(XattrName::Stored);
    }
    if name.starts_with(b"system.") {
        return Err(MetaError::Unsupported(format!("{} (POSIX ACLs are not supported yet)", shown())));
    }
    Err(MetaError::Unsupported(format!("extended attribute namespace of {}", shown())))
}

fn missing(ino: InodeId, name: &[u8]) -> MetaError {
    MetaError::NoAttribute(format!("{} on inode {ino}", String::from_utf8_lossy(name)))
}

impl MetaStore {
    pub fn get_xattr(&self, ino: InodeId, name: &[u8]) -> Result<Vec<u8>, MetaError> {
        let kind = classify(name)?;
        self.run(|t| {
            let rec = t.require_inode(ino)?;
            match kind {
                XattrName::DirInlineMax => rec.dir_inline_max.map(|v| v.to_string().into_bytes()).ok_or_else(|| missing(ino, name)),
                XattrName::Stored if !rec.has_xattrs => Err(missing(ino, name)),
                XattrName::Stored => t.0.get(&xattr_key(ino, name))?.ok_or_else(|| missing(ino, name)),
            }
        })
    }

    pub fn set_xattr(&self, ino: InodeId, name: &[u8], value: &[u8], mode: XattrSetMode) -> Result<(), MetaError> {
        let kind = classify(name)?;
        if value.len() > VALUE_MAX {
            return Err(MetaError::InvalidArgument(format!("a value of {} bytes is larger than {VALUE_MAX}", value.len())));
        }
        self.run(|t| {
            let mut rec = t.require_inode(ino)?;
            let existed = match kind {
                XattrName::DirInlineMax => {
                    let existed = rec.dir_inline_max.is_some();
                    check_mode(ino, name, mode, existed)?;
                    rec.dir_inline_max = Some(parse_inline_max(ino, &rec, value)?);
                    existed
                }
                XattrName::Stored => {
                    let others = stored(t, ino, &rec)?;
                    let existed = others.iter().any(|(n, _)| n == name);
                    check_mode(ino, name, mode, existed)?;
                    check_room(others.iter().filter(|(n, _)| n != name), name, value)?;
                    t.0.set(&xattr_key(ino, name), value);
                    rec.has_xattrs = true;
                    existed
                }
            };
            tracing::debug!(%ino, name = %String::from_utf8_lossy(name), existed, "set an extended attribute");
            changed(t, ino, rec)
        })
    }

    /// The stored names, in byte order.
    pub fn list_xattr(&self, ino: InodeId) -> Result<Vec<Vec<u8>>, MetaError> {
        self.run(|t| {
            let rec = t.require_inode(ino)?;
            Ok(stored(t, ino, &rec)?.into_iter().map(|(n, _)| n).collect())
        })
    }

    pub fn remove_xattr(&self, ino: InodeId, name: &[u8]) -> Result<(), MetaError> {
        let kind = classify(name)?;
        self.run(|t| {
            let mut rec = t.require_inode(ino)?;
            match kind {
                XattrName::DirInlineMax => {
                    rec.dir_inline_max.take().ok_or_else(|| missing(ino, name))?;
                }
                XattrName::Stored => {
                    let key = xattr_key(ino, name);
                    if !rec.has_xattrs || t.0.get(&key)?.is_none() {
                        return Err(missing(ino, name));
                    }
                    t.0.delete(&key);
                }
            }
            changed(t, ino, rec)
        })
    }
}

fn check_mode(ino: InodeId, name: &[u8], mode: XattrSetMode, existed: bool) -> Result<(), MetaError> {
    match (mode, existed) {
        (XattrSetMode::Create, true) => Err(MetaError::AlreadyExists(format!(
            "extended attribute {} on inode {ino}",
            String::from_utf8_lossy(name)
        ))),
        (XattrSetMode::Replace, false) => Err(missing(ino, name)),
        _ => Ok(()),
    }
}

fn parse_inline_max(ino: InodeId, rec: &InodeRecord, value: &[u8]) -> Result<u32, MetaError> {
    if rec.kind()? != FileType::Directory {
        return Err(MetaError::InvalidArgument(format!("inode {ino}: ember.dir.inline_max applies to directories")));
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|v| *v <= MAX_INLINE)
        .ok_or_else(|| {
            MetaError::InvalidArgument(format!(
                "ember.dir.inline_max must be a number of bytes from 0 to {MAX_INLINE}, not {:?}",
                String::from_utf8_lossy(value)
            ))
        })
}

/// Refuses a value that would make the inode's attributes unlistable or larger than allowed.
fn check_room<'a>(others: impl Iterator<Item = &'a (Vec<u8>, Vec<u8>)>, name: &[u8], value: &[u8]) -> Result<(), MetaError> {
    let (mut list, mut total) = (name.len() + 1, name.len() + value.len());
    for (n, v) in others {
        list += n.len() + 1;
        total += n.len() + v.len();
    }
    if list > LIST_MAX || total > INODE_MAX {
        return Err(MetaError::NoSpace(format!(
            "extended attributes of one inode are limited to {LIST_MAX} bytes of names and {INODE_MAX} bytes in all"
        )));
    }
    Ok(())
}

/// The inode's stored attributes, read serializably (a concurrent set conflicts).
fn stored(t: &mut Tx<'_>, ino: InodeId, rec: &InodeRecord) -> Result<Stored, MetaError> {
    if !rec.has_xattrs {
        return Ok(Vec::new());
    }
    let begin = xattr_prefix(ino);
    let rows = t.0.scan(&begin, &prefix_end(&begin), 0)?;
    Ok(rows.into_iter().map(|(k, v)| (k[begin.len()..].to_vec(), v)).collect())
}

/// Stores `rec` with its ctime moved to now, as every attribute change does.
fn changed(t: &mut Tx<'_>, ino: InodeId, mut rec: InodeRecord) -> Result<(), MetaError> {
    let now = now_ns();
    if rec.kind()? == FileType::Directory {
        t.touch_dir_ctime(ino, now);
    } else {
        rec.ctime_ns = now;
    }
    t.put_inode(ino, &rec);
    Ok(())
}

/// Deletes every stored attribute of an inode being removed. Read as a snapshot: nothing can
/// set one on an inode whose removal is committing (that set would conflict on the inode).
pub(super) fn delete_all(t: &mut Tx<'_>, ino: InodeId, rec: &InodeRecord) -> Result<(), MetaError> {
    if !rec.has_xattrs {
        return Ok(());
    }
    let begin = xattr_prefix(ino);
    for (k, _) in t.0.snapshot_scan(&begin, &prefix_end(&begin), 0)? {
        t.0.delete(&k);
    }
    Ok(())
}
