//! The storage-engine seam under the optimistic concurrency control in `occ`.

use crate::{Key, KvError};

/// One write of a batch: `None` deletes the key.
pub(crate) type Write = (Key, Option<Vec<u8>>);

/// A key-value pair returned by a range read.
pub(crate) type Pair = crate::KeyValue;

/// A storage engine. All `apply` calls are serialized by the caller (the commit mutex).
pub(crate) trait Engine: Send + Sync + 'static {
    type Snapshot: EngineSnapshot;

    /// A consistent read view containing at least every batch applied with a version `<= version`
    /// (the caller guarantees `version` stays registered as live while the view is used).
    fn snapshot(&self, version: u64) -> Self::Snapshot;

    /// Atomically applies `writes` as commit `version`. `oldest_live` is the oldest version any
    /// snapshot may still read, so older row versions can be discarded.
    fn apply(&self, version: u64, writes: &[Write], oldest_live: u64) -> Result<(), KvError>;

    /// Makes every batch applied so far durable.
    fn persist(&self) -> Result<(), KvError>;

    /// Hands every batch applied so far to the operating system: it survives the process
    /// dying, not a power loss.
    fn hand_to_os(&self) -> Result<(), KvError>;
}

/// A point-in-time read view.
pub(crate) trait EngineSnapshot: Send + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Up to `limit` (> 0) pairs with keys in `[begin, end)`, ascending; `begin < end`.
    fn scan(&self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, KvError>;
}
