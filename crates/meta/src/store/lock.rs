//! File locks in the KV: one `LOCK` record per locked file holds its whole [`LockTable`], read
//! serializably, so two clients locking the same file never both win. Requests never wait
//! here; a client that wants to wait asks again. Locks of clients that are gone are dropped by
//! GC ([`MetaStore::drop_client_locks`]).
//!
//! Deadlocks: a refused POSIX request whose owner will wait leaves an `LKWT` record of what it
//! waits for, which each attempt renews and which counts for `WAIT_FRESH`. Before it is
//! recorded, the owners in its way are followed through their own waits; reaching the
//! requester means the wait would never end, and the request fails with EDEADLK instead.
//! flock waits are neither recorded nor checked: Linux does no deadlock detection for flock,
//! and flock and POSIX locks never wait for each other.

use std::collections::HashSet;
use std::time::Duration;

use ember_proto::meta::{LockHolder, LockKind, LockReq, LockResp};
use ember_types::{FileType, InodeId};

use super::{now_ns, MetaStore, Tx};
use crate::locks::{ByteRange, LockChange, LockOwner, LockTable};
use crate::schema::{
    decode, encode, id_from_key, key_after, lock_key, lock_wait_key, prefix_end, InodeRecord, LockEntry, LockRecord, LockWaitRecord,
    LOCK_PREFIX,
};
use crate::MetaError;

/// A decoded, checked lock request.
struct Request {
    ino: InodeId,
    who: LockOwner,
    range: ByteRange,
    change: LockChange,
    pid: u32,
    /// A refusal records the wait and looks for a cycle first (blocking POSIX requests).
    tracks_wait: bool,
}

fn request(req: &LockReq) -> Result<Request, MetaError> {
    let change = match LockKind::try_from(req.kind) {
        Ok(LockKind::Read) => LockChange::Read,
        Ok(LockKind::Write) => LockChange::Write,
        Ok(LockKind::Unlock) => LockChange::Unlock,
        Err(_) => return Err(MetaError::InvalidArgument(format!("lock kind {}", req.kind))),
    };
    if req.start > req.end {
        return Err(MetaError::InvalidArgument(format!("lock range {}..={}", req.start, req.end)));
    }
    let range = if req.flock { WHOLE_FILE } else { ByteRange { start: req.start, end: req.end } };
    Ok(Request {
        ino: InodeId(req.inode),
        who: LockOwner { client_id: req.client_id, owner: req.owner, flock: req.flock },
        range,
        change,
        pid: req.pid,
        tracks_wait: req.wait && !req.flock,
    })
}

/// What an flock covers, whatever range the request names.
const WHOLE_FILE: ByteRange = ByteRange { start: 0, end: u64::MAX };

/// How long a recorded wait counts without being renewed: a waiter asks again at least every
/// 64 ms, so a record this old belongs to a wait that ended (granted, interrupted, or its
/// process died).
const WAIT_FRESH: Duration = Duration::from_millis(250);
/// Waits followed at most when looking for a cycle.
const MAX_WAIT_STEPS: usize = 256;

fn change_of(write: bool) -> LockChange {
    if write {
        LockChange::Write
    } else {
        LockChange::Read
    }
}

fn holder(e: &LockEntry) -> LockHolder {
    let kind = if e.write { LockKind::Write } else { LockKind::Read };
    LockHolder { start: e.start, end: e.end, kind: kind.into(), pid: e.pid }
}

impl Tx<'_> {
    fn locks(&mut self, ino: InodeId) -> Result<LockTable, MetaError> {
        let rec = self.0.get(&lock_key(ino))?.map(|v| decode::<LockRecord>("lock record", &v)).transpose()?;
        Ok(LockTable::from_record(rec.unwrap_or_default()))
    }

    /// Like [`locks`](Self::locks) without joining the conflict set: a cycle check reads the
    /// locks of other files, which must not make this request conflict with their changes.
    fn snapshot_locks(&mut self, ino: InodeId) -> Result<LockTable, MetaError> {
        let rec = self.0.snapshot_get(&lock_key(ino))?.map(|v| decode::<LockRecord>("lock record", &v)).transpose()?;
        Ok(LockTable::from_record(rec.unwrap_or_default()))
    }

    /// What `who` waits for, if it still waits.
    fn lock_wait(&mut self, who: LockOwner, now: i64) -> Result<Option<LockWaitRecord>, MetaError> {
        let Some(v) = self.0.snapshot_get(&lock_wait_key(who.client_id, who.owner))? else { return Ok(None) };
        let w: LockWaitRecord = decode("lock wait record", &v)?;
        Ok((w.until_ns > now).then_some(w))
    }

    /// Whether the owners in `blockers` wait, themselves or through the owners in their way,
    /// for a lock of `who`.
    fn closes_cycle(&mut self, who: LockOwner, blockers: Vec<LockOwner>, now: i64) -> Result<bool, MetaError> {
        let (mut seen, mut frontier) = (HashSet::new(), blockers);
        while let Some(o) = frontier.pop() {
            if o == who {
                return Ok(true);
            }
            if seen.len() >= MAX_WAIT_STEPS || !seen.insert(o) {
                continue;
            }
            if let Some(w) = self.lock_wait(o, now)? {
                let range = ByteRange { start: w.start, end: w.end };
                frontier.extend(self.snapshot_locks(InodeId(w.inode))?.blockers(o, range, change_of(w.write)));
            }
        }
        Ok(false)
    }

    fn put_locks(&mut self, ino: InodeId, table: LockTable) {
        if table.is_empty() {
            self.0.delete(&lock_key(ino));
        } else {
            self.0.set(&lock_key(ino), &encode(&table.into_record()));
        }
    }

    /// A file that exists and can be locked through the mount, and its locks.
    fn lockable(&mut self, ino: InodeId) -> Result<(InodeRecord, LockTable), MetaError> {
        let rec = self.require_inode(ino)?;
        if rec.kind()? == FileType::Directory {
            return Err(MetaError::IsDirectory(ino));
        }
        Ok((rec, self.locks(ino)?))
    }

    /// What a granted lock's reply carries: the attributes and an inline file's bytes.
    fn granted(&mut self, ino: InodeId, rec: &InodeRecord, change: LockChange) -> Result<LockResp, MetaError> {
        if change == LockChange::Unlock {
            return Ok(LockResp { granted: true, ..Default::default() });
        }
        let inline_data = if rec.inline_limit > 0 { Some(self.inline(ino)?.data) } else { None };
        Ok(LockResp { granted: true, conflict: None, attr: Some(self.attr(ino, rec)?), inline_data })
    }

    pub fn delete_locks(&mut self, ino: InodeId) {
        self.0.delete(&lock_key(ino));
    }
}

impl MetaStore {
    /// Takes, changes or gives back a lock unless another owner's lock is in the way.
    pub fn set_lock(&self, req: &LockReq) -> Result<LockResp, MetaError> {
        let r = request(req)?;
        let wait_key = lock_wait_key(r.who.client_id, r.who.owner);
        let result = self.run(|t| {
            let (rec, mut table) = t.lockable(r.ino)?;
            if let Some(e) = table.conflict(r.who, r.range, r.change) {
                let refused = LockResp { granted: false, conflict: Some(holder(e)), ..Default::default() };
                if r.tracks_wait {
                    let now = now_ns();
                    if t.closes_cycle(r.who, table.blockers(r.who, r.range, r.change), now)? {
                        return Err(MetaError::Deadlock(format!("waiting for inode {} would never end", r.ino)));
                    }
                    let until_ns = now.saturating_add(WAIT_FRESH.as_nanos() as i64);
                    let w = LockWaitRecord { inode: r.ino.0, start: r.range.start, end: r.range.end, write: r.change == LockChange::Write, until_ns };
                    t.0.set(&wait_key, &encode(&w));
                    // Bookkeeping that lives a quarter of a second: not worth an fsync.
                    t.0.relax_durability();
                }
                return Ok(refused);
            }
            table.apply(r.who, r.range, r.change, r.pid);
            t.put_locks(r.ino, table);
            if r.tracks_wait {
                t.0.delete(&wait_key);
            }
            t.granted(r.ino, &rec, r.change)
        });
        if matches!(result, Err(MetaError::Deadlock(_))) {
            // The requester stops waiting: its record must not make others see a cycle.
            self.run(|t| {
                t.0.delete(&wait_key);
                t.0.relax_durability();
                Ok(())
            })?;
        }
        result
    }

    /// F_GETLK: the lock in the way of `req`, if any.
    pub fn get_lock(&self, req: &LockReq) -> Result<LockResp, MetaError> {
        let r = request(req)?;
        self.run(|t| {
            let (_, table) = t.lockable(r.ino)?;
            let conflict = table.conflict(r.who, r.range, r.change).map(holder);
            Ok(LockResp { granted: conflict.is_none(), conflict, ..Default::default() })
        })
    }

    /// Gives back every lock these owners of `client_id` hold on `ino`: their flocks
    /// (`flock` true), their POSIX locks (false), or both (`None`).
    pub fn release_locks(&self, ino: InodeId, client_id: u64, owners: &[u64], flock: Option<bool>) -> Result<(), MetaError> {
        self.run(|t| {
            let mut table = t.locks(ino)?;
            if table.release_owners(client_id, owners, flock) {
                t.put_locks(ino, table);
            }
            Ok(())
        })
    }

    /// Up to `limit` locked files after `after`, each with the clients holding its locks
    /// (snapshot: what GC checks against the live clients).
    pub fn lock_scan(&self, after: Option<InodeId>, limit: usize) -> Result<Vec<(InodeId, HashSet<u64>)>, MetaError> {
        let begin = after.map_or_else(|| LOCK_PREFIX.to_vec(), |a| key_after(&lock_key(a)));
        self.run(|t| {
            let rows = t.0.snapshot_scan(&begin, &prefix_end(LOCK_PREFIX), limit)?;
            rows.iter()
                .map(|(k, v)| {
                    let ino = id_from_key(k).ok_or_else(|| MetaError::Corrupt("lock key".into()))?;
                    let rec: LockRecord = decode("lock record", v)?;
                    Ok((ino, rec.locks.iter().map(|e| e.client_id).collect()))
                })
                .collect()
        })
    }

    /// Drops the locks on `ino` of the clients in `gone`; returns how many were dropped.
    pub fn drop_client_locks(&self, ino: InodeId, gone: &HashSet<u64>) -> Result<usize, MetaError> {
        self.run(|t| {
            let mut table = t.locks(ino)?;
            let dropped = table.release_clients(|c| gone.contains(&c));
            if dropped > 0 {
                t.put_locks(ino, table);
            }
            Ok(dropped)
        })
    }
}
