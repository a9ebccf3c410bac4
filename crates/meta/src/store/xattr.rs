//! Extended attributes: one `XATR` record per name, plus the virtual `ember.dir.inline_max`.
//!
//! The `user.`, `trusted.` and `security.` namespaces are stored as given; the kernel has
//! already checked the caller's right to them (the mount uses `default_permissions`).
//! POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`) are stored the same way
//! once checked, and kept in step with the mode (see [`crate::acl`]): setting an access ACL
//! sets the mode bits, chmod rewrites the ACL, and new inodes take their directory's default
//! ACL. Other `system.` names are refused. `ember.dir.inline_max` reads and sets a directory's
//! inline limit for the files created in it; it is not listed, so copying a tree elsewhere
//! does not carry it.

use ember_proto::meta::XattrSetMode;
use ember_types::{FileType, InodeId};

use super::{now_ns, MetaStore, Perm, Tx, MAX_INLINE};
use crate::acl::{self, Acl};
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
    AclAccess,
    AclDefault,
}

fn classify(name: &[u8]) -> Result<XattrName, MetaError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.is_empty() || name.len() > NAME_MAX || name.contains(&0) {
        return Err(MetaError::InvalidArgument(format!("extended attribute name {:?}", shown())));
    }
    match name {
        DIR_INLINE_MAX => return Ok(XattrName::DirInlineMax),
        acl::ACCESS => return Ok(XattrName::AclAccess),
        acl::DEFAULT => return Ok(XattrName::AclDefault),
        _ => {}
    }
    if STORED_NAMESPACES.iter().any(|ns| name.len() > ns.len() && name.starts_with(ns)) {
        return Ok(XattrName::Stored);
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
                _ if !rec.has_xattrs => Err(missing(ino, name)),
                _ => t.0.get(&xattr_key(ino, name))?.ok_or_else(|| missing(ino, name)),
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
                    // As ext4: setting the value an attribute already has changes nothing,
                    // its ctime included.
                    if mode != XattrSetMode::Create && t.0.get(&xattr_key(ino, name))?.as_deref() == Some(value) {
                        return Ok(());
                    }
                    put_value(t, ino, &mut rec, name, Some(value), mode)?
                }
                XattrName::AclAccess => {
                    let acl = Acl::decode(value)?;
                    if !acl.is_empty() {
                        rec.mode = (rec.mode & !0o777) | acl.mode_bits();
                    }
                    let keep = !acl.is_empty() && !acl.is_minimal();
                    put_value(t, ino, &mut rec, name, keep.then(|| acl.encode()).as_deref(), mode)?
                }
                XattrName::AclDefault => {
                    if rec.kind()? != FileType::Directory {
                        return Err(MetaError::InvalidArgument(format!("inode {ino}: default ACLs are for directories")));
                    }
                    let acl = Acl::decode(value)?;
                    put_value(t, ino, &mut rec, name, (!acl.is_empty()).then(|| acl.encode()).as_deref(), mode)?
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
                // Removing an ACL that is not there succeeds, as on ext4 (`setfacl -b`).
                XattrName::AclAccess | XattrName::AclDefault => t.0.delete(&xattr_key(ino, name)),
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

/// Sets (`Some`) or deletes (`None`: an ACL the mode says all of) one stored attribute after
/// checking the set mode and the inode's room; returns whether it existed.
fn put_value(t: &mut Tx<'_>, ino: InodeId, rec: &mut InodeRecord, name: &[u8], value: Option<&[u8]>, mode: XattrSetMode) -> Result<bool, MetaError> {
    let others = stored(t, ino, rec)?;
    let existed = others.iter().any(|(n, _)| n == name);
    check_mode(ino, name, mode, existed)?;
    let key = xattr_key(ino, name);
    match value {
        Some(value) => {
            check_room(others.iter().filter(|(n, _)| n != name), name, value)?;
            t.0.set(&key, value);
            rec.has_xattrs = true;
        }
        None => t.0.delete(&key),
    }
    Ok(existed)
}

/// chmod of an inode: its access ACL, if it has one, takes the new bits.
pub(super) fn chmod_acl(t: &mut Tx<'_>, ino: InodeId, rec: &InodeRecord) -> Result<(), MetaError> {
    if !rec.has_xattrs {
        return Ok(());
    }
    let key = xattr_key(ino, acl::ACCESS);
    if let Some(v) = t.0.get(&key)? {
        let mut a = Acl::decode(&v).map_err(|e| MetaError::Corrupt(format!("stored ACL of inode {ino}: {e}")))?;
        a.chmod(rec.mode);
        t.0.set(&key, &a.encode());
    }
    Ok(())
}

/// The owner, mode and ACLs of an inode created in `parent` with `perm` (the group of a
/// setgid parent, see `Perm::in_parent`): with a default ACL in the
/// parent, the new inode's access ACL comes from it (and a directory inherits the default ACL
/// itself), and the umask does not apply; without one, the umask does.
pub(super) fn new_inode_acls(t: &mut Tx<'_>, parent: InodeId, parent_rec: &InodeRecord, perm: Perm, dir: bool) -> Result<(Perm, Stored), MetaError> {
    let perm = perm.in_parent(parent_rec, dir);
    let default = if parent_rec.has_xattrs { t.0.get(&xattr_key(parent, acl::DEFAULT))? } else { None };
    let Some(value) = default else {
        return Ok((Perm { mode: perm.mode & !perm.umask, ..perm }, Vec::new()));
    };
    let default = Acl::decode(&value).map_err(|e| MetaError::Corrupt(format!("stored default ACL of inode {parent}: {e}")))?;
    let (access, bits) = default.inherit(perm.mode);
    let mut acls = Vec::new();
    if !access.is_minimal() {
        acls.push((acl::ACCESS.to_vec(), access.encode()));
    }
    if dir {
        acls.push((acl::DEFAULT.to_vec(), value));
    }
    Ok((Perm { mode: (perm.mode & !0o777) | bits, umask: 0, ..perm }, acls))
}

/// Stores a new inode's inherited ACLs; sets `has_xattrs` on its record when there are any.
pub(super) fn put_inherited(t: &mut Tx<'_>, ino: InodeId, rec: &mut InodeRecord, acls: &Stored) {
    for (name, value) in acls {
        t.0.set(&xattr_key(ino, name), value);
        rec.has_xattrs = true;
    }
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

/// Drops the file capability, as a change by someone without CAP_FSETID does on Linux.
pub(super) fn drop_capability(t: &mut Tx<'_>, ino: InodeId, rec: &InodeRecord) {
    if rec.has_xattrs {
        t.0.delete(&xattr_key(ino, b"security.capability"));
    }
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
