//! In-memory MVCC engine, for tests and as the reference the other backends are compared to.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::engine::{Engine, EngineSnapshot, Pair, Write};
use crate::history::DEFAULT_CAP;
use crate::occ::Store;
use crate::txn::OccTxn;
use crate::{Durability, Key, KvError, Transaction, TxnKv};

/// Row versions of one key, oldest first; `None` is a delete.
type Versions = Vec<(u64, Option<Vec<u8>>)>;

#[derive(Default)]
struct Rows {
    data: BTreeMap<Key, Versions>,
    /// Writes in version order, so pruning only visits keys that have superseded versions.
    unpruned: VecDeque<(u64, Key)>,
}

impl Rows {
    fn prune(&mut self, oldest_live: u64) {
        while self.unpruned.front().is_some_and(|(v, _)| *v <= oldest_live) {
            let Some((_, key)) = self.unpruned.pop_front() else { break };
            self.prune_key(key, oldest_live);
        }
    }

    /// Keeps the newest version at or below `oldest_live` and everything above it.
    fn prune_key(&mut self, key: Key, oldest_live: u64) {
        let Some(versions) = self.data.get_mut(&key) else { return };
        let visible = versions.iter().rposition(|(v, _)| *v <= oldest_live).unwrap_or(0);
        versions.drain(..visible);
        if versions.len() == 1 && versions[0].1.is_none() {
            self.data.remove(&key);
        }
    }
}

fn visible(versions: &Versions, at: u64) -> Option<&Vec<u8>> {
    versions.iter().rev().find(|(v, _)| *v <= at).and_then(|(_, value)| value.as_ref())
}

#[derive(Default)]
pub(crate) struct MemEngine {
    rows: Arc<RwLock<Rows>>,
}

pub(crate) struct MemSnapshot {
    rows: Arc<RwLock<Rows>>,
    version: u64,
}

// Poisoning is ignored: every mutation leaves `Rows` consistent between statements.
fn read(rows: &RwLock<Rows>) -> RwLockReadGuard<'_, Rows> {
    rows.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(rows: &RwLock<Rows>) -> RwLockWriteGuard<'_, Rows> {
    rows.write().unwrap_or_else(PoisonError::into_inner)
}

impl Engine for MemEngine {
    type Snapshot = MemSnapshot;

    fn snapshot(&self, version: u64) -> MemSnapshot {
        MemSnapshot { rows: Arc::clone(&self.rows), version }
    }

    fn apply(&self, version: u64, writes: &[Write], oldest_live: u64) -> Result<(), KvError> {
        let mut rows = write(&self.rows);
        for (key, value) in writes {
            rows.data.entry(key.clone()).or_default().push((version, value.clone()));
            rows.unpruned.push_back((version, key.clone()));
        }
        rows.prune(oldest_live);
        Ok(())
    }

    fn persist(&self) -> Result<(), KvError> {
        Ok(())
    }

    fn hand_to_os(&self) -> Result<(), KvError> {
        Ok(())
    }
}

impl EngineSnapshot for MemSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let rows = read(&self.rows);
        Ok(rows.data.get(key).and_then(|v| visible(v, self.version)).cloned())
    }

    fn scan(&self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, KvError> {
        let rows = read(&self.rows);
        let bounds = (Bound::Included(begin), Bound::Excluded(end));
        let pairs = rows
            .data
            .range::<[u8], _>(bounds)
            .filter_map(|(k, v)| Some((k.clone(), visible(v, self.version)?.clone())))
            .take(limit)
            .collect();
        Ok(pairs)
    }
}

/// In-memory backend. Cloning shares the same store.
#[derive(Clone)]
pub struct MemKv {
    store: Arc<Store<MemEngine>>,
}

impl MemKv {
    pub fn new() -> Self {
        MemKv { store: Store::new(MemEngine::default(), 0, DEFAULT_CAP, Durability::Sync) }
    }
}

impl Default for MemKv {
    fn default() -> Self {
        Self::new()
    }
}

impl TxnKv for MemKv {
    fn begin(&self) -> Result<Box<dyn Transaction>, KvError> {
        let (reg, snapshot) = self.store.begin();
        Ok(Box::new(OccTxn::new(reg, snapshot)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwritten_versions_are_pruned_without_live_snapshots() {
        let engine = MemEngine::default();
        for v in 1..=100u64 {
            engine.apply(v, &[(b"k".to_vec(), Some(v.to_le_bytes().to_vec()))], v - 1).unwrap();
        }
        let rows = read(&engine.rows);
        assert!(rows.data[b"k".as_slice()].len() <= 2);
        assert!(rows.unpruned.len() <= 1);
    }

    #[test]
    fn live_snapshot_keeps_its_version_and_deleted_keys_vanish() {
        let engine = MemEngine::default();
        engine.apply(1, &[(b"k".to_vec(), Some(b"one".to_vec()))], 0).unwrap();
        let old = engine.snapshot(1);
        for v in 2..=50u64 {
            engine.apply(v, &[(b"k".to_vec(), Some(b"new".to_vec()))], 1).unwrap();
        }
        assert_eq!(old.get(b"k").unwrap(), Some(b"one".to_vec()));
        engine.apply(51, &[(b"k".to_vec(), None)], 50).unwrap();
        engine.apply(52, &[(b"other".to_vec(), None)], 51).unwrap();
        assert!(!read(&engine.rows).data.contains_key(b"k".as_slice()));
        assert_eq!(engine.snapshot(52).get(b"k").unwrap(), None);
    }
}
