//! Conflict history: which keys recent commits wrote, and at which version.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use crate::{Key, KvError};

/// Default cap on remembered keys; beyond it the horizon is advanced even past live snapshots,
/// which then fail with `TooOld` instead of memory growing without bound.
pub(crate) const DEFAULT_CAP: usize = 1 << 20;

pub(crate) struct History {
    /// Last write version of every key written after `horizon`.
    last_write: BTreeMap<Key, u64>,
    /// The same writes in commit order, so trimming never scans the whole map.
    log: VecDeque<(u64, Vec<Key>)>,
    /// Writes at versions `<= horizon` are forgotten.
    horizon: u64,
    cap: usize,
}

impl History {
    pub(crate) fn new(horizon: u64, cap: usize) -> Self {
        History { last_write: BTreeMap::new(), log: VecDeque::new(), horizon, cap: cap.max(1) }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.last_write.len()
    }

    /// Fails if something read at snapshot `read_version` was written later.
    pub(crate) fn validate(
        &self,
        read_version: u64,
        keys: &BTreeSet<Key>,
        ranges: &[(Key, Key)],
    ) -> Result<(), KvError> {
        if keys.is_empty() && ranges.is_empty() {
            return Ok(());
        }
        if read_version < self.horizon {
            return Err(KvError::TooOld);
        }
        let newer = |v: &u64| *v > read_version;
        if keys.iter().any(|k| self.last_write.get(k).is_some_and(newer)) {
            return Err(KvError::Conflict);
        }
        if ranges.iter().any(|(b, e)| self.range_written(b, e, read_version)) {
            return Err(KvError::Conflict);
        }
        Ok(())
    }

    fn range_written(&self, begin: &[u8], end: &[u8], read_version: u64) -> bool {
        if begin >= end {
            return false;
        }
        let bounds = (Bound::Included(begin), Bound::Excluded(end));
        self.last_write.range::<[u8], _>(bounds).any(|(_, v)| *v > read_version)
    }

    pub(crate) fn record(&mut self, version: u64, keys: Vec<Key>) {
        for key in &keys {
            self.last_write.insert(key.clone(), version);
        }
        self.log.push_back((version, keys));
    }

    /// Forgets writes no live snapshot can conflict with (`oldest_live` = the oldest snapshot
    /// still registered, or the current version if none), then enforces the cap.
    pub(crate) fn trim(&mut self, oldest_live: u64) {
        self.forget_upto(oldest_live);
        if self.last_write.len() > self.cap {
            self.shrink_to(self.cap / 2);
        }
    }

    fn forget_upto(&mut self, version: u64) {
        while self.log.front().is_some_and(|(v, _)| *v <= version) {
            self.pop_oldest();
        }
        self.horizon = self.horizon.max(version);
    }

    fn shrink_to(&mut self, target: usize) {
        while self.last_write.len() > target {
            let Some(version) = self.pop_oldest() else { break };
            self.horizon = self.horizon.max(version);
        }
        tracing::debug!(horizon = self.horizon, "conflict history over cap; horizon advanced");
    }

    fn pop_oldest(&mut self) -> Option<u64> {
        let (version, keys) = self.log.pop_front()?;
        for key in keys {
            // A later write of the same key owns the entry now.
            if self.last_write.get(&key) == Some(&version) {
                self.last_write.remove(&key);
            }
        }
        Some(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> BTreeSet<Key> {
        names.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    #[test]
    fn later_write_of_a_read_key_conflicts() {
        let mut h = History::new(0, DEFAULT_CAP);
        h.record(2, vec![b"a".to_vec()]);
        assert!(matches!(h.validate(1, &keys(&["a"]), &[]), Err(KvError::Conflict)));
        assert!(h.validate(2, &keys(&["a"]), &[]).is_ok());
        assert!(h.validate(1, &keys(&["b"]), &[]).is_ok());
    }

    #[test]
    fn ranges_are_half_open() {
        let mut h = History::new(0, DEFAULT_CAP);
        h.record(2, vec![b"d".to_vec()]);
        let r = |b: &str, e: &str| vec![(b.as_bytes().to_vec(), e.as_bytes().to_vec())];
        assert!(h.validate(1, &BTreeSet::new(), &r("a", "d")).is_ok());
        assert!(matches!(h.validate(1, &BTreeSet::new(), &r("a", "e")), Err(KvError::Conflict)));
        assert!(h.validate(1, &BTreeSet::new(), &r("e", "a")).is_ok());
    }

    #[test]
    fn trim_forgets_everything_without_live_snapshots() {
        let mut h = History::new(0, DEFAULT_CAP);
        for v in 1..=1000u64 {
            h.record(v, vec![v.to_be_bytes().to_vec(), b"hot".to_vec()]);
            h.trim(v);
        }
        assert_eq!(h.len(), 0);
        assert!(h.log.is_empty());
    }

    #[test]
    fn trim_keeps_what_a_live_snapshot_needs() {
        let mut h = History::new(0, DEFAULT_CAP);
        for v in 1..=10u64 {
            h.record(v, vec![v.to_be_bytes().to_vec()]);
            h.trim(4);
        }
        assert_eq!(h.len(), 6);
        assert!(matches!(h.validate(4, &keys(&[]), &[(vec![0], vec![1])]), Err(KvError::Conflict)));
        assert!(matches!(h.validate(3, &keys(&["x"]), &[]), Err(KvError::TooOld)));
    }

    #[test]
    fn cap_advances_the_horizon_past_live_snapshots() {
        let mut h = History::new(0, 100);
        for v in 1..=1000u64 {
            h.record(v, vec![v.to_be_bytes().to_vec()]);
            h.trim(0);
        }
        assert!(h.len() <= 100);
        assert!(matches!(h.validate(0, &keys(&["x"]), &[]), Err(KvError::TooOld)));
        // A writer that read nothing is never too old.
        assert!(h.validate(0, &BTreeSet::new(), &[]).is_ok());
    }
}
