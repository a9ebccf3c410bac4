//! File locks (fcntl byte-range locks and flock), held by meta so they work across mounts.
//!
//! The kernel names a lock's owner with an id only unique within this mount (the process's
//! file table for POSIX locks, the open file for flock), so meta keys locks by this client's
//! id and that owner. The two kinds are independent, as on Linux, and their owners are
//! numbered apart, so every request and release says which kind it is. A blocking request
//! asks meta again, backing off, until it is granted or the caller has a signal to take.
//! Locks are given back when the kernel says their owner is done: a POSIX owner at every
//! close of the file (FUSE flush), an flock owner at the last close of its open file (FUSE
//! release). Only owners that locked through this mount cost a request then, so closing a
//! file nobody locked stays one round trip.
//!
//! Data follows the locks as NFS has it: unlocking first writes out what this mount buffered,
//! and a granted lock's reply brings the file's length (and an inline file's bytes), which
//! replace this mount's cached view, so the next holder reads what the last one wrote.
//!
//! Lost locks: when this client's session lapses (it was cut off from mgmtd for longer than
//! the session timeout), meta may have dropped its locks and another client may hold them
//! now. Then every read, write, fsync, lock request and close through a handle that locked
//! before the lapse fails with EIO, as NFS does for a lost lock, so a program never writes on
//! as if it still held the lock (what it had buffered is not sent). The handle stays failed
//! until it is closed; a new open starts afresh.

use std::time::Duration;

use ember_client::Retry;
use ember_proto::meta::{Attr, GetLockReq, LockHolder, LockKind, LockReq, ReleaseLocksReq, SetLockReq};
use ember_types::{InodeId, Status, StatusCode};
use tokio::time::Instant;

use super::{lock, Handle, InlineFile, Vfs};

/// First and longest pause between two attempts of a blocking lock.
const RETRY_FIRST: Duration = Duration::from_millis(2);
const RETRY_MAX: Duration = Duration::from_millis(64);
/// How often a waiting request looks for a signal of its caller.
const SIGNAL_POLL: Duration = Duration::from_millis(10);

/// A lock request as the kernel makes it: `start..=end` of the file, for `owner`.
#[derive(Clone, Copy, Debug)]
pub struct LockSpec {
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
    /// An flock (the kernel's `FUSE_LK_FLOCK`): `owner` is then an open file, and the lock
    /// never meets POSIX ones.
    pub flock: bool,
}

/// An owner that may hold locks through this mount: the kernel's POSIX and flock owner ids
/// are separate spaces that may share a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct LockOwner {
    pub owner: u64,
    pub flock: bool,
}

/// The release requests for `owners`: one per kind of lock they hold, each naming its kind.
fn releases(inode: InodeId, client_id: u64, owners: &[LockOwner]) -> Vec<ReleaseLocksReq> {
    [false, true]
        .into_iter()
        .map(|flock| ReleaseLocksReq {
            inode: inode.0,
            client_id,
            owners: owners.iter().filter(|o| o.flock == flock).map(|o| o.owner).collect(),
            flock: Some(flock),
        })
        .filter(|r| !r.owners.is_empty())
        .collect()
}

impl Vfs {
    fn lock_req(&self, h: &Handle, spec: LockSpec) -> LockReq {
        LockReq {
            inode: h.inode.0,
            client_id: self.client.client_id(),
            owner: spec.owner,
            start: spec.start,
            end: spec.end,
            kind: spec.kind.into(),
            pid: spec.pid,
            wait: false,
            flock: spec.flock,
        }
    }

    /// F_GETLK: the lock of another owner in the way of `spec`, if any.
    pub async fn getlk(&self, fh: u64, spec: LockSpec) -> Result<Option<LockHolder>, Status> {
        let h = self.handle(fh)?;
        let r = GetLockReq { lock: Some(self.lock_req(&h, spec)) };
        Ok(self.client.meta(&r, Retry::Idempotent).await?.conflict)
    }

    /// F_SETLK, or F_SETLKW when `wait`: then it waits until the lock is granted or
    /// `interrupted` says the caller has a signal to take (`Interrupted`).
    pub async fn setlk(&self, fh: u64, spec: LockSpec, wait: bool, interrupted: impl Fn() -> bool) -> Result<(), Status> {
        let h = self.handle(fh)?;
        // A granted lock must show what its last holder wrote, not what was read ahead.
        let _mark = self.statahead.mark_when_done(h.inode.0);
        // Unlocking: what was written under the lock must be readable by its next holder.
        // Locking: this mount's own writes must be out before its view is refreshed.
        self.flush(fh).await?;
        if spec.kind != LockKind::Unlock {
            // Noted before asking: a grant whose reply is lost must still be given back, and
            // a lapse while the request is on its way may already have dropped the lock.
            h.locked_at_lapses.get_or_init(|| self.client.session_lapses());
            let owner = LockOwner { owner: spec.owner, flock: spec.flock };
            h.state.lock().await.lock_owners.insert(owner);
            lock(&h.lock_owners).insert(owner);
        }
        let r = SetLockReq { lock: Some(LockReq { wait, ..self.lock_req(&h, spec) }) };
        let mut pause = RETRY_FIRST;
        loop {
            let resp = self.client.meta(&r, Retry::Idempotent).await?;
            if resp.granted {
                if let Some(attr) = resp.attr {
                    self.refresh(&h, &attr, resp.inline_data).await;
                }
                return Ok(());
            }
            if !wait {
                let pid = resp.conflict.map_or(0, |c| c.pid);
                return Err(Status::new(StatusCode::LockConflict, format!("inode {} is locked by pid {pid}", h.inode)));
            }
            wait_unless_interrupted(pause, &interrupted).await?;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// Fails once the client's session has lapsed since this handle first asked for a lock.
    pub(super) fn check_locks(&self, h: &Handle) -> Result<(), Status> {
        match h.locked_at_lapses.get() {
            Some(&at) if self.client.session_lapses() > at => Err(Status::new(
                StatusCode::LocksLost,
                format!("the locks on inode {} may be gone: this mount was cut off from the cluster longer than its session timeout", h.inode),
            )),
            _ => Ok(()),
        }
    }

    /// Replaces this mount's view of a file (length, inline bytes) with meta's, unless writes
    /// of its own are still waiting to go out.
    async fn refresh(&self, h: &Handle, attr: &Attr, inline: Option<Vec<u8>>) {
        let mut st = h.state.lock().await;
        let clean = st.dirty.is_empty() && st.unreported_end.is_none() && st.inline.as_ref().is_none_or(|f| f.pending.is_empty() && !f.spill_due);
        if clean {
            st.size = attr.size;
            st.inline = inline.map(|data| InlineFile::new(data, attr.inline_limit));
        }
    }

    /// Close of a descriptor: gives back the POSIX locks of `owner` on the file, if it took any
    /// through this mount (its flocks, if an flock owner has the same number, stay).
    pub(super) async fn release_owner(&self, h: &Handle, owner: u64) -> Result<(), Status> {
        let owner = LockOwner { owner, flock: false };
        let held = h.state.lock().await.lock_owners.remove(&owner);
        if held {
            self.release_locks(h.inode, &[owner]).await?;
        }
        Ok(())
    }

    /// Last close of an open file: gives back the locks of every owner that locked through it
    /// and has not given them back yet (flock owners; POSIX owners went at their flush).
    pub(super) async fn release_handle_owners(&self, h: &Handle) -> Result<(), Status> {
        let mine: Vec<LockOwner> = lock(&h.lock_owners).drain().collect();
        let owners: Vec<LockOwner> = {
            let mut st = h.state.lock().await;
            mine.into_iter().filter(|o| st.lock_owners.remove(o)).collect()
        };
        self.release_locks(h.inode, &owners).await
    }

    async fn release_locks(&self, inode: InodeId, owners: &[LockOwner]) -> Result<(), Status> {
        for r in releases(inode, self.client.client_id(), owners) {
            self.client.meta(&r, Retry::Idempotent).await?;
        }
        Ok(())
    }
}

/// Sleeps `pause`, looking for a signal every `SIGNAL_POLL`.
async fn wait_unless_interrupted(pause: Duration, interrupted: &impl Fn() -> bool) -> Result<(), Status> {
    let until = Instant::now() + pause;
    loop {
        if interrupted() {
            return Err(Status::new(StatusCode::Interrupted, "lock wait interrupted by a signal"));
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        tokio::time::sleep((until - now).min(SIGNAL_POLL)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_release_names_one_kind_of_lock() {
        let (posix, flock) = (LockOwner { owner: 7, flock: false }, LockOwner { owner: 7, flock: true });
        let kinds = |owners: &[LockOwner]| -> Vec<(Vec<u64>, Option<bool>)> {
            releases(InodeId(3), 1, owners).into_iter().map(|r| (r.owners, r.flock)).collect()
        };
        assert!(kinds(&[]).is_empty(), "nothing to give back costs no request");
        assert_eq!(kinds(&[flock]), vec![(vec![7], Some(true))]);
        let other = LockOwner { owner: 8, flock: false };
        assert_eq!(kinds(&[flock, posix, other]), vec![(vec![7, 8], Some(false)), (vec![7], Some(true))], "one number, two owners");
    }
}
