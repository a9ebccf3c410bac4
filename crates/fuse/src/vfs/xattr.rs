//! Extended attributes, and a short memory of the missing ones.
//!
//! The kernel asks for `security.capability` before every write to a file (to drop file
//! capabilities), so nearly every such question has the same answer: none. This mount
//! remembers a missing attribute for `MISSING_TTL`, like the kernel's entry and attribute
//! caches, and forgets it at once when it sets the attribute itself.

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
pub(super) struct MissingXattrs(Mutex<HashMap<(u64, Vec<u8>), Instant>>);

impl MissingXattrs {
    fn known_missing(&self, inode: u64, name: &[u8]) -> bool {
        lock(&self.0).get(&(inode, name.to_vec())).is_some_and(|at| at.elapsed() < MISSING_TTL)
    }

    fn note(&self, inode: u64, name: &[u8]) {
        let mut missing = lock(&self.0);
        if missing.len() >= MISSING_MAX {
            missing.clear();
        }
        missing.insert((inode, name.to_vec()), Instant::now());
    }

    fn forget(&self, inode: u64, name: &[u8]) {
        lock(&self.0).remove(&(inode, name.to_vec()));
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
        result
    }

    pub async fn listxattr(&self, inode: u64) -> Result<Vec<Vec<u8>>, Status> {
        Ok(self.client.meta(&ListXattrReq { inode }, Retry::Idempotent).await?.names)
    }

    pub async fn removexattr(&self, inode: u64, name: &[u8]) -> Result<(), Status> {
        let r = RemoveXattrReq { inode, name: name.to_vec() };
        let result = self.client.meta(&r, Retry::OnlyIfNotSent).await.map(|_| ());
        match &result {
            Err(st) if st.code != StatusCode::NoAttribute => self.missing_xattrs.forget(inode, name),
            _ => self.missing_xattrs.note(inode, name),
        }
        result
    }
}
