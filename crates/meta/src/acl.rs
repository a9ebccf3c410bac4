//! POSIX ACLs in Linux's extended-attribute form (`system.posix_acl_access` and
//! `system.posix_acl_default`): decoding, the mode bits an ACL implies, chmod, and the ACL a
//! new inode takes from its directory's default ACL.
//!
//! The kernel enforces ACLs (the mount negotiates FUSE_POSIX_ACL) and leaves it to the file
//! system to keep mode and ACL in step and to apply default ACLs at create; that is this
//! module's work. The rules are POSIX 1003.1e draft 17's as Linux implements them: the owner
//! class is the ACL's owner entry, the group class is the mask if there is one, else the
//! owning group's entry, and an ACL of the three base entries alone is the mode, not stored.

use crate::MetaError;

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A decoded, checked ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

fn invalid(why: &str) -> MetaError {
    MetaError::InvalidArgument(format!("POSIX ACL: {why}"))
}

impl Acl {
    /// Decodes an ACL and checks what Linux checks: version, entry size, known tags and
    /// permissions, exactly one owner, owning-group and other entry, at most one mask, and a
    /// mask whenever named users or groups appear.
    pub fn decode(value: &[u8]) -> Result<Acl, MetaError> {
        let (head, body) = value.split_at_checked(HEADER).ok_or_else(|| invalid("shorter than its header"))?;
        if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) != VERSION {
            return Err(invalid("unknown version"));
        }
        if body.len() % ENTRY != 0 {
            return Err(invalid("a partial entry"));
        }
        let entries: Vec<Entry> = body
            .chunks_exact(ENTRY)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        if entries.iter().any(|e| e.perm > 7 || ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag)) {
            return Err(invalid("an unknown tag or permission"));
        }
        if entries.is_empty() {
            return Ok(Acl { entries });
        }
        if count(USER_OBJ) != 1 || count(GROUP_OBJ) != 1 || count(OTHER) != 1 || count(MASK) > 1 {
            return Err(invalid("base entries missing or repeated"));
        }
        if count(MASK) == 0 && (count(USER) > 0 || count(GROUP) > 0) {
            return Err(invalid("named entries without a mask"));
        }
        Ok(Acl { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + ENTRY * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// An ACL with no entries (what `setfacl -k` leaves of a default ACL): none at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the mode says all of it (only the three base entries): then it is not stored.
    pub fn is_minimal(&self) -> bool {
        self.entries.iter().all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    fn perm(&self, tag: u16) -> u32 {
        self.entries.iter().find(|e| e.tag == tag).map_or(0, |e| u32::from(e.perm))
    }

    /// The group class: the mask if there is one, else the owning group's entry.
    fn group_class(&mut self) -> Option<&mut Entry> {
        let tag = if self.entries.iter().any(|e| e.tag == MASK) { MASK } else { GROUP_OBJ };
        self.entries.iter_mut().find(|e| e.tag == tag)
    }

    /// The permission bits (0o777) the ACL implies.
    pub fn mode_bits(&self) -> u32 {
        let group = if self.entries.iter().any(|e| e.tag == MASK) { self.perm(MASK) } else { self.perm(GROUP_OBJ) };
        self.perm(USER_OBJ) << 6 | group << 3 | self.perm(OTHER)
    }

    /// chmod: the owner, group-class and other entries take the new bits.
    pub fn chmod(&mut self, mode: u32) {
        for e in &mut self.entries {
            match e.tag {
                USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
                OTHER => e.perm = (mode & 7) as u16,
                _ => {}
            }
        }
        if let Some(g) = self.group_class() {
            g.perm = ((mode >> 3) & 7) as u16;
        }
    }

    /// A new inode's access ACL from its directory's default ACL (`self`, consumed) and the
    /// mode the caller asked for: each class keeps only what both allow. Returns the ACL and
    /// the permission bits of the new inode.
    pub fn inherit(mut self, mode: u32) -> (Acl, u32) {
        for e in &mut self.entries {
            match e.tag {
                USER_OBJ => e.perm &= ((mode >> 6) & 7) as u16,
                OTHER => e.perm &= (mode & 7) as u16,
                _ => {}
            }
        }
        if let Some(g) = self.group_class() {
            g.perm &= ((mode >> 3) & 7) as u16;
        }
        let bits = self.mode_bits();
        (self, bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let acl = Acl { entries: entries.iter().map(|&(tag, perm, id)| Entry { tag, perm, id }).collect() };
        acl.encode()
    }

    const ANY: u32 = u32::MAX;

    #[test]
    fn decodes_what_it_encodes_and_refuses_malformed_acls() {
        let v = acl(&[(USER_OBJ, 7, ANY), (USER, 5, 1000), (GROUP_OBJ, 5, ANY), (MASK, 7, ANY), (OTHER, 0, ANY)]);
        assert_eq!(Acl::decode(&v).unwrap().encode(), v);
        assert!(Acl::decode(&v[..v.len() - 3]).is_err(), "partial entry");
        assert!(Acl::decode(&[1, 0, 0, 0]).is_err(), "version 1");
        assert!(Acl::decode(&[2, 0]).is_err(), "short header");
        assert!(Acl::decode(&acl(&[(USER_OBJ, 7, ANY), (USER, 5, 1), (GROUP_OBJ, 5, ANY), (OTHER, 0, ANY)])).is_err(), "named user without mask");
        assert!(Acl::decode(&acl(&[(USER_OBJ, 7, ANY), (OTHER, 0, ANY)])).is_err(), "no group entry");
        assert!(Acl::decode(&acl(&[(USER_OBJ, 9, ANY), (GROUP_OBJ, 5, ANY), (OTHER, 0, ANY)])).is_err(), "bad permission");
        assert!(Acl::decode(&acl(&[])).unwrap().is_empty());
    }

    #[test]
    fn the_mask_is_the_group_class_and_chmod_follows_it() {
        let mut a = Acl::decode(&acl(&[(USER_OBJ, 6, ANY), (USER, 7, 1000), (GROUP_OBJ, 4, ANY), (MASK, 6, ANY), (OTHER, 4, ANY)])).unwrap();
        assert_eq!(a.mode_bits(), 0o664);
        assert!(!a.is_minimal());
        a.chmod(0o750);
        assert_eq!(a.mode_bits(), 0o750);
        assert_eq!(a.perm(GROUP_OBJ), 4, "chmod changes the mask, not the owning group's entry");
        assert_eq!(a.perm(USER), 7, "named entries stay; the mask limits them");
        let mut base = Acl::decode(&acl(&[(USER_OBJ, 6, ANY), (GROUP_OBJ, 4, ANY), (OTHER, 4, ANY)])).unwrap();
        assert!(base.is_minimal());
        base.chmod(0o711);
        assert_eq!(base.mode_bits(), 0o711);
    }

    #[test]
    fn a_new_inode_keeps_what_both_the_default_acl_and_its_mode_allow() {
        let default = Acl::decode(&acl(&[(USER_OBJ, 7, ANY), (USER, 7, 1000), (GROUP_OBJ, 5, ANY), (MASK, 7, ANY), (OTHER, 5, ANY)])).unwrap();
        let (file, bits) = default.clone().inherit(0o666);
        assert_eq!(bits, 0o666 & 0o775);
        assert_eq!(file.perm(USER), 7, "the named entry stays; the mask (now 6) limits it");
        assert_eq!(file.perm(MASK), 6);
        let (dir, bits) = default.inherit(0o777);
        assert_eq!((bits, dir.perm(OTHER)), (0o775, 5));
    }
}
