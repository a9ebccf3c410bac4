//! Extended attributes, and a short memory of the missing ones.
//!
//! The kernel asks for `security.capability` before every write to a file (to drop file
//! capabilities), so nearly every such question has the same answer: none. This mount
//! remembers for `MISSING_TTL`, like the kernel's entry and attribute caches, that an
//! attribute is missing, or that an inode it opened had none at all, and forgets it at once
//! when it sets or removes one itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ember_client::Retry;
use ember_proto::meta::{GetXattrReq, ListXattrReq, RemoveXattrReq, SetXattrReq, XattrSetMode};
use ember_types::{Status, StatusCode};

use super::{lock, Vfs};

/// How long a missing attribute is believed missing (another client may set it meanwhile).
const MISSING_TTL: Duration = Duration::from_secs(1);
/// Remembered misses at most; past it, the memory starts over.
const MISSING_MAX: usize = 4096;

#[derive(Default)]
struct Misses {
    /// (inode, name) -> when the name was found missing.
    names: HashMap<(u64, Vec<u8>), Instant>,
    /// inode -> when it was found to have no attribute at all.
    inodes: HashMap<u64, Instant>,
}

#[derive(Default)]
pub(super) struct MissingXattrs(Mutex<Misses>);

fn fresh(at: Option<&Instant>) -> bool {
    at.is_some_and(|at| at.elapsed() < MISSING_TTL)
}

impl MissingXattrs {
    pub(super) fn known_missing(&self, inode: u64, name: &[u8]) -> bool {
        let m = lock(&self.0);
        fresh(m.inodes.get(&inode)) || fresh(m.names.get(&(inode, name.to_vec())))
    }

    pub(super) fn note(&self, inode: u64, name: &[u8]) {
        let mut m = lock(&self.0);
        if m.names.len() >= MISSING_MAX {
            m.names.clear();
        }
        m.names.insert((inode, name.to_vec()), Instant::now());
    }

    /// Meta said (in an open's attributes) that `inode` has no attribute.
    pub(super) fn note_none(&self, inode: u64) {
        let mut m = lock(&self.0);
        if m.inodes.len() >= MISSING_MAX {
            m.inodes.clear();
        }
        m.inodes.insert(inode, Instant::now());
    }

    fn forget(&self, inode: u64, name: &[u8]) {
        let mut m = lock(&self.0);
        m.inodes.remove(&inode);
        m.names.remove(&(inode, name.to_vec()));
    }
}

fn no_attribute() -> Status {
    Status::new(StatusCode::NoAttribute, "no such extended attribute")
}

impl Vfs {
    pub async fn getxattr(&self, inode: u64, name: &[u8]) -> Result<Vec<u8>, Status> {
        if self.missing_xattrs.known_missing(inode, name) {
            return Err(no_attribute());
        }
        let r = GetXattrReq { inode, name: name.to_vec() };
        match self.client.meta(&r, Retry::Idempotent).await {
            Ok(resp) => Ok(resp.value),
            Err(st) => {
                if st.code == StatusCode::NoAttribute {
                    self.missing_xattrs.note(inode, name);
                }
                Err(st)
            }
        }
    }

    pub async fn setxattr(&self, inode: u64, name: &[u8], value: &[u8], mode: XattrSetMode) -> Result<(), Status> {
        let r = SetXattrReq { inode, name: name.to_vec(), value: value.to_vec(), mode: mode.into() };
        // Only a plain set may be repeated blindly: a create or replace that succeeded could
        // fail its retry.
        let retry = if mode == XattrSetMode::Upsert { Retry::Idempotent } else { Retry::OnlyIfNotSent };
        let result = self.client.meta(&r, retry).await.map(|_| ());
        // After the set: a lookup that raced it may have noted a miss in the meantime.
        self.missing_xattrs.forget(inode, name);
        // An ACL may change the mode, and the ctime moved.
        self.dir_attrs.forget(inode);
        self.statahead.mark(inode);
        result
    }

    pub async fn listxattr(&self, inode: u64) -> Result<Vec<Vec<u8>>, Status> {
        Ok(self.client.meta(&ListXattrReq { inode }, Retry::Idempotent).await?.names)
    }

    pub async fn removexattr(&self, inode: u64, name: &[u8]) -> Result<(), Status> {
        let r = RemoveXattrReq { inode, name: name.to_vec() };
        let result = self.client.meta(&r, Retry::OnlyIfNotSent).await.map(|_| ());
        self.dir_attrs.forget(inode);
        self.statahead.mark(inode);
        match &result {
            Err(st) if st.code != StatusCode::NoAttribute => self.missing_xattrs.forget(inode, name),
            _ => {
                self.missing_xattrs.forget(inode, name);
                self.missing_xattrs.note(inode, name);
            }
        }
        result
    }
}
