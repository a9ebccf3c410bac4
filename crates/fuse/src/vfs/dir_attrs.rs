//! Attributes of directories, kept for the attribute TTL.
//!
//! The kernel forgets a directory's attributes whenever a name in it changes, and asks for
//! them again before the next create or unlink there (to check that the caller may write in
//! it): one more metadata round trip per file created. Meta answers each change of a name with
//! the directory as the change left it, so the mount keeps that and answers the kernel itself
//! for the TTL. Its own changes are always in what it answers; other clients' show up within
//! the TTL, as they do through the kernel's own attribute cache. A change of this mount that
//! does not come back with the directory (rename, rmdir, extended attributes) drops what it
//! kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ember_proto::meta::Attr;
use ember_types::FileType;

/// Directories kept at once; more are not kept until some expire.
const MAX_DIRS: usize = 4096;

pub(super) struct DirAttrs {
    ttl: Duration,
    dirs: Mutex<HashMap<u64, (Attr, Instant)>>,
}

impl DirAttrs {
    /// A zero `ttl` keeps nothing.
    pub fn new(ttl: Duration) -> Self {
        DirAttrs { ttl, dirs: Mutex::default() }
    }

    pub fn get(&self, dir: u64) -> Option<Attr> {
        let mut dirs = super::lock(&self.dirs);
        match dirs.get(&dir) {
            Some((a, until)) if *until > Instant::now() => Some(a.clone()),
            Some(_) => {
                dirs.remove(&dir);
                None
            }
            None => None,
        }
    }

    /// Keeps `attr` if it is a directory's and not older than what is kept: answers to
    /// concurrent changes may arrive out of order, and the older one must not win.
    pub fn put(&self, attr: &Attr) {
        if self.ttl.is_zero() || FileType::from_u8(attr.file_type as u8) != Some(FileType::Directory) {
            return;
        }
        let mut dirs = super::lock(&self.dirs);
        if dirs.len() >= MAX_DIRS && !dirs.contains_key(&attr.inode) {
            let now = Instant::now();
            dirs.retain(|_, (_, until)| *until > now);
            if dirs.len() >= MAX_DIRS {
                return;
            }
        }
        let newer = |kept: &Attr| (attr.ctime_ns, attr.entry_changes) >= (kept.ctime_ns, kept.entry_changes);
        match dirs.get(&attr.inode) {
            Some((kept, _)) if !newer(kept) => {}
            _ => {
                dirs.insert(attr.inode, (attr.clone(), Instant::now() + self.ttl));
            }
        }
    }

    pub fn forget(&self, dir: u64) {
        super::lock(&self.dirs).remove(&dir);
    }

    /// After a change whose effect on directories is not known here in full.
    pub fn forget_all(&self) {
        super::lock(&self.dirs).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(inode: u64, ctime_ns: i64, entry_changes: u64) -> Attr {
        Attr { inode, file_type: u32::from(FileType::Directory.to_u8()), ctime_ns, entry_changes, ..Attr::default() }
    }

    #[test]
    fn keeps_the_newest_directory_attributes_for_the_ttl() {
        let kept = DirAttrs::new(Duration::from_millis(40));
        kept.put(&dir(1, 10, 2));
        kept.put(&dir(1, 10, 1));
        assert_eq!(kept.get(1).map(|a| a.entry_changes), Some(2), "an older answer does not win");
        kept.put(&dir(1, 11, 1));
        assert_eq!(kept.get(1).map(|a| a.ctime_ns), Some(11), "a later ctime (chmod) wins");
        let file = Attr { inode: 2, file_type: u32::from(FileType::File.to_u8()), ..Attr::default() };
        kept.put(&file);
        assert!(kept.get(2).is_none(), "files are not kept");
        std::thread::sleep(Duration::from_millis(50));
        assert!(kept.get(1).is_none(), "past the ttl meta is asked");
    }

    #[test]
    fn forgetting_and_zero_ttl() {
        let kept = DirAttrs::new(Duration::from_secs(5));
        kept.put(&dir(1, 1, 0));
        kept.put(&dir(3, 1, 0));
        kept.forget(1);
        assert!(kept.get(1).is_none() && kept.get(3).is_some());
        kept.forget_all();
        assert!(kept.get(3).is_none());
        let off = DirAttrs::new(Duration::ZERO);
        off.put(&dir(1, 1, 0));
        assert!(off.get(1).is_none());
    }
}
