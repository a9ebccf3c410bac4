//! Transactional key-value store that Ember's metadata service and cluster manager sit on.
//!
//! # Model
//!
//! Every [`Transaction`] reads from a consistent snapshot taken at [`TxnKv::begin`] and buffers
//! its writes until [`Transaction::commit`]. Commits are serializable: a transaction fails with
//! [`KvError::Conflict`] if a key or range it read serializably was written by a transaction that
//! committed after its snapshot. Snapshot reads, blind writes and the commutative atomic
//! operations (`atomic_add`, `atomic_max`) take no part in conflict detection, so e.g. creates in
//! one directory that all bump the parent's link count do not conflict with each other.
//!
//! # Design
//!
//! Optimistic concurrency control is implemented once, in module `occ`, over a small internal
//! storage engine trait (`engine::Engine`): a point-in-time read view (point get + ordered range reads),
//! an atomic batch apply and a durability barrier (`persist`). Two engines exist:
//!
//! * memory ([`MemKv`]): MVCC `BTreeMap<key, [(version, value)]>`; versions no live snapshot can
//!   see are pruned on later commits;
//! * fjall ([`FjallKv`]): one fjall `Database` with keyspace `kv` for the data and `meta` for the
//!   commit counter (written in the same atomic batch as the data, so the counter survives a
//!   restart); snapshots are fjall snapshots, durability is an fdatasync of fjall's journal
//!   taken outside its writer lock (`journal_sync`), so commits keep applying while it runs.
//!
//! Versions are a `u64` commit counter. `begin` registers its snapshot version `S` as live.
//! Commit, under one commit mutex: validate the read set against an in-memory conflict history
//! (key -> version of its last write, kept only for versions above the oldest live snapshot and
//! capped in size; a snapshot older than the trimmed horizon gets [`KvError::TooOld`]), resolve
//! atomic operations against the latest committed value, apply the batch, record the written keys
//! at version `C = last + 1` and publish `C` to new snapshots. The commit mutex is then released
//! and the committer waits for durability through group commit: one thread at a time persists
//! everything applied so far, and every committer covered by that persist returns together.
//!
//! A new snapshot is taken *after* reading the published version, so it always contains every
//! commit up to `S`, and at worst also a commit that was applied but not yet published; that can
//! only cause a spurious conflict, never a missed one.
//!
//! Writes become visible to new snapshots when they are applied, slightly before they are durable;
//! no commit is acknowledged before it is durable. If the durability barrier fails the commit
//! returns [`KvError::Storage`] and its outcome is unknown (it may survive a restart or not).
//! Read-only transactions never conflict and never wait for a persist.
//!
//! Limits (fjall's, enforced for every backend so they behave alike): written keys are 1 to
//! [`MAX_KEY_LEN`] bytes; a violating write makes `commit` fail with [`KvError::Storage`].

mod engine;
mod fjall_engine;
mod history;
mod journal_sync;
mod mem;
mod occ;
mod pending;
mod txn;

pub mod conformance;

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

pub use fjall_engine::FjallKv;
pub use journal_sync::JournalSync;
pub use mem::MemKv;

/// When a commit counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On disk (group-committed fdatasync) before `commit` returns.
    Sync,
    /// Handed to the operating system before `commit` returns, so it survives the process
    /// dying; on disk within the interval, so a power loss or kernel crash takes at most that
    /// much of the latest commits.
    Periodic(Duration),
}

/// A key. Keys sort bytewise.
pub type Key = Vec<u8>;

/// A key and its value, as returned by scans (plain `(Vec<u8>, Vec<u8>)`).
pub type KeyValue = (Key, Vec<u8>);

/// Longest key any backend accepts.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// The one error type of this crate.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The transaction read data that a later commit changed; retry it.
    #[error("transaction conflict, retry")]
    Conflict,
    /// The transaction's snapshot is older than the retained conflict history; retry it.
    #[error("transaction snapshot too old, retry")]
    TooOld,
    /// The storage engine failed (I/O error, invalid request such as an oversized key).
    #[error("storage error: {0}")]
    Storage(String),
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store can no longer be used (an earlier commit panicked half-way).
    #[error("key-value store is closed")]
    Closed,
}

impl KvError {
    /// Whether running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KvError::Conflict | KvError::TooOld)
    }
}

/// One transaction. Dropping it without commit abandons it.
pub trait Transaction: Send {
    /// Serializable read: the key joins the read-conflict set. Sees this txn's own writes and
    /// pending atomic ops.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Snapshot read: no conflict tracking (still sees own writes).
    fn snapshot_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Ordered range scan `[begin, end)`, at most `limit` pairs (0 = unlimited), merged with own
    /// writes. Adds the conflict range `[begin, end)` if fewer than `limit` pairs were returned,
    /// else `[begin, last_key_returned + "\0")`.
    fn scan(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, KvError>;
    /// Like [`Transaction::scan`] without conflict tracking.
    fn snapshot_scan(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, KvError>;
    /// Buffers a write.
    fn set(&mut self, key: &[u8], value: &[u8]);
    /// Buffers a delete.
    fn delete(&mut self, key: &[u8]);
    /// Commutative add to a little-endian i64 (missing or short values are zero-extended, bytes
    /// past the eighth ignored; wrapping). No read conflict; applied to the latest committed value
    /// at commit time. The stored result is always 8 bytes.
    fn atomic_add(&mut self, key: &[u8], delta: i64);
    /// Commutative max on a little-endian u64 (same value rules as `atomic_add`). No read conflict.
    fn atomic_max(&mut self, key: &[u8], value: u64);
    /// Adds `key` to the read-conflict set without reading it.
    fn add_read_conflict(&mut self, key: &[u8]);
    /// Lets `commit` return once the change is in the operating system's hands (it survives a
    /// crash of the process), before it is on disk: for bookkeeping whose loss in a power cut
    /// harms nobody. The next commit that waits for the disk makes it durable too.
    fn relax_durability(&mut self);
    /// Commits and returns the commit version (a read-only transaction returns its snapshot
    /// version). Returns only after the commit is durable (see `relax_durability`).
    fn commit(self: Box<Self>) -> Result<u64, KvError>;
}

/// A transactional key-value store.
pub trait TxnKv: Send + Sync {
    /// Starts a transaction on a fresh snapshot.
    fn begin(&self) -> Result<Box<dyn Transaction>, KvError>;
}

const MAX_ATTEMPTS: u32 = 20;
const MAX_RETRY_TIME: Duration = Duration::from_secs(5);

/// Runs `f` in a fresh transaction and commits it, retrying on retryable errors from `begin` and
/// `commit` with a small randomized backoff, up to 20 attempts or about 5 s.
///
/// Errors returned by `f` itself are passed through unchanged and never retried (with the
/// backends here reads never fail retryably; only commit does).
pub fn run<T, E: From<KvError>>(
    kv: &dyn TxnKv,
    mut f: impl FnMut(&mut dyn Transaction) -> Result<T, E>,
) -> Result<T, E> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match attempt_once(kv, &mut f) {
            Ok(value) => return Ok(value),
            Err(Failure::User(e)) => return Err(e),
            Err(Failure::Kv(e)) => e,
        };
        if !err.is_retryable() || attempt >= MAX_ATTEMPTS || start.elapsed() >= MAX_RETRY_TIME {
            return Err(err.into());
        }
        std::thread::sleep(backoff(attempt));
    }
}

enum Failure<E> {
    User(E),
    Kv(KvError),
}

fn attempt_once<T, E>(
    kv: &dyn TxnKv,
    f: &mut impl FnMut(&mut dyn Transaction) -> Result<T, E>,
) -> Result<T, Failure<E>> {
    let mut txn = kv.begin().map_err(Failure::Kv)?;
    let value = f(&mut *txn).map_err(Failure::User)?;
    txn.commit().map_err(Failure::Kv)?;
    Ok(value)
}

/// Uniform jitter in `[0, cap)` with `cap` doubling from 0.5 ms to 64 ms, so contending
/// transactions spread out instead of colliding again in lock step.
fn backoff(attempt: u32) -> Duration {
    let cap_us: u64 = 500 << attempt.min(7);
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    Duration::from_micros(random % cap_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(KvError::Conflict.is_retryable());
        assert!(KvError::TooOld.is_retryable());
        assert!(!KvError::Storage("x".into()).is_retryable());
        assert!(!KvError::Corrupt("x".into()).is_retryable());
        assert!(!KvError::Closed.is_retryable());
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 1..30 {
            assert!(backoff(attempt) < Duration::from_millis(64));
        }
    }

    #[test]
    fn run_passes_user_errors_through_without_retry() {
        let kv = MemKv::new();
        let mut calls = 0;
        let res: Result<(), KvError> = run(&kv, |_| {
            calls += 1;
            Err(KvError::Corrupt("user".into()))
        });
        assert!(matches!(res, Err(KvError::Corrupt(_))));
        assert_eq!(calls, 1);
    }
}
