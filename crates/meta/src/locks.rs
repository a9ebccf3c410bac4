//! The locks of one file as a plain value: POSIX byte-range semantics, no KV.
//!
//! Locks of one owner never overlap, and two of its locks of the same kind never touch (they
//! are merged), so the table is the same whatever order an owner's requests came in. flock
//! locks arrive from the kernel as whole-file locks whose owner is the open file, and follow
//! the same rules in a space of their own: an flock and a POSIX lock never conflict, as on
//! Linux, and the flavor is part of the owner because the kernel numbers the two kinds of
//! owner independently.

use crate::schema::{LockEntry, LockRecord};

/// Who holds a lock: the kernel's owner id is only unique within one client and one flavor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockOwner {
    pub client_id: u64,
    pub owner: u64,
    /// An flock owner (an open file) rather than a POSIX one (a process's file table).
    pub flock: bool,
}

/// What a request does to its owner's locks on a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockChange {
    Read,
    Write,
    Unlock,
}

/// Bytes `start..=end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    fn overlaps(self, e: &LockEntry) -> bool {
        e.start <= self.end && self.start <= e.end
    }

    fn touches(self, e: &LockEntry) -> bool {
        e.end.checked_add(1) == Some(self.start) || self.end.checked_add(1) == Some(e.start)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockTable {
    locks: Vec<LockEntry>,
}

fn held_by(e: &LockEntry, who: LockOwner) -> bool {
    e.client_id == who.client_id && e.owner == who.owner && e.flock == who.flock
}

fn owner_of(e: &LockEntry) -> LockOwner {
    LockOwner { client_id: e.client_id, owner: e.owner, flock: e.flock }
}

/// Whether `e`, a lock of another owner of `who`'s flavor, stands in the way of a `write` or
/// read lock of `range`.
fn in_the_way(e: &LockEntry, who: LockOwner, range: ByteRange, write: bool) -> bool {
    e.flock == who.flock && !held_by(e, who) && range.overlaps(e) && (write || e.write)
}

impl LockTable {
    pub fn from_record(rec: LockRecord) -> Self {
        LockTable { locks: rec.locks }
    }

    pub fn into_record(self) -> LockRecord {
        LockRecord { locks: self.locks }
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    pub fn locks(&self) -> &[LockEntry] {
        &self.locks
    }

    /// The first lock of another owner that a `change` of `range` by `who` would break.
    pub fn conflict(&self, who: LockOwner, range: ByteRange, change: LockChange) -> Option<&LockEntry> {
        if change == LockChange::Unlock {
            return None;
        }
        let write = change == LockChange::Write;
        self.locks.iter().find(|e| in_the_way(e, who, range, write))
    }

    /// Every other owner whose lock a `change` of `range` by `who` would break.
    pub fn blockers(&self, who: LockOwner, range: ByteRange, change: LockChange) -> Vec<LockOwner> {
        if change == LockChange::Unlock {
            return Vec::new();
        }
        let write = change == LockChange::Write;
        let mut owners: Vec<LockOwner> = Vec::new();
        for e in self.locks.iter().filter(|e| in_the_way(e, who, range, write)) {
            let o = owner_of(e);
            if !owners.contains(&o) {
                owners.push(o);
            }
        }
        owners
    }

    /// Applies `change` to `who`'s locks on `range`, without looking at other owners (the
    /// caller checks [`conflict`](Self::conflict) first).
    pub fn apply(&mut self, who: LockOwner, range: ByteRange, change: LockChange, pid: u32) {
        let write = change == LockChange::Write;
        let mut merged = range;
        let mut kept = Vec::with_capacity(self.locks.len() + 2);
        for e in self.locks.drain(..) {
            let same_kind = change != LockChange::Unlock && e.write == write;
            if !held_by(&e, who) || !(range.overlaps(&e) || (same_kind && range.touches(&e))) {
                kept.push(e);
            } else if same_kind {
                merged.start = merged.start.min(e.start);
                merged.end = merged.end.max(e.end);
            } else {
                if e.start < range.start {
                    kept.push(LockEntry { end: range.start - 1, ..e.clone() });
                }
                if e.end > range.end {
                    kept.push(LockEntry { start: range.end + 1, ..e });
                }
            }
        }
        if change != LockChange::Unlock {
            kept.push(LockEntry { client_id: who.client_id, owner: who.owner, start: merged.start, end: merged.end, write, pid, flock: who.flock });
        }
        kept.sort_by_key(|e| (e.start, e.client_id, e.owner, e.flock));
        self.locks = kept;
    }

    /// Drops every lock of these owners of one client, of one flavor (`flock`) or of both
    /// (`None`); returns whether any was held.
    pub fn release_owners(&mut self, client_id: u64, owners: &[u64], flock: Option<bool>) -> bool {
        let before = self.locks.len();
        let released = |e: &LockEntry| e.client_id == client_id && owners.contains(&e.owner) && flock.is_none_or(|f| f == e.flock);
        self.locks.retain(|e| !released(e));
        self.locks.len() != before
    }

    /// Drops every lock of the clients `gone` says are gone; returns how many.
    pub fn release_clients(&mut self, gone: impl Fn(u64) -> bool) -> usize {
        let before = self.locks.len();
        self.locks.retain(|e| !gone(e.client_id));
        before - self.locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: LockOwner = LockOwner { client_id: 1, owner: 10, flock: false };
    const B: LockOwner = LockOwner { client_id: 1, owner: 11, flock: false };
    /// Same kernel owner id as `A`, another mount.
    const C: LockOwner = LockOwner { client_id: 2, owner: 10, flock: false };
    /// Same client and kernel owner id as `A`, an flock owner.
    const A_FLOCK: LockOwner = LockOwner { flock: true, ..A };

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    fn ranges(t: &LockTable) -> Vec<(u64, u64, bool)> {
        t.locks().iter().map(|e| (e.start, e.end, e.write)).collect()
    }

    #[test]
    fn unlocking_the_middle_splits_and_neighbours_of_one_kind_merge() {
        let mut t = LockTable::default();
        t.apply(A, r(0, 99), LockChange::Write, 1);
        t.apply(A, r(40, 59), LockChange::Unlock, 1);
        assert_eq!(ranges(&t), vec![(0, 39, true), (60, 99, true)]);
        t.apply(A, r(40, 59), LockChange::Write, 1);
        assert_eq!(ranges(&t), vec![(0, 99, true)]);
        t.apply(A, r(50, u64::MAX), LockChange::Read, 1);
        assert_eq!(ranges(&t), vec![(0, 49, true), (50, u64::MAX, false)]);
    }

    #[test]
    fn owners_conflict_by_kind_and_clients_keep_owners_apart() {
        let mut t = LockTable::default();
        t.apply(A, r(0, 9), LockChange::Read, 1);
        assert!(t.conflict(B, r(5, 5), LockChange::Read).is_none());
        assert_eq!(t.conflict(B, r(5, 20), LockChange::Write).map(|e| e.pid), Some(1));
        assert!(t.conflict(B, r(10, 20), LockChange::Write).is_none());
        assert!(t.conflict(A, r(0, 9), LockChange::Write).is_none(), "an owner upgrades its own lock");
        assert!(t.conflict(C, r(0, 0), LockChange::Write).is_some(), "the same owner id on another client is someone else");
        assert!(t.conflict(B, r(0, 9), LockChange::Unlock).is_none());
    }

    #[test]
    fn release_drops_only_the_named_owners_and_clients() {
        let mut t = LockTable::default();
        t.apply(A, r(0, 9), LockChange::Write, 1);
        t.apply(B, r(20, 29), LockChange::Write, 2);
        t.apply(C, r(40, 49), LockChange::Read, 3);
        assert!(!t.release_owners(1, &[99], None));
        assert!(t.release_owners(1, &[10], None));
        assert_eq!(ranges(&t), vec![(20, 29, true), (40, 49, false)]);
        assert_eq!(t.release_clients(|c| c == 2), 1);
        assert_eq!(ranges(&t), vec![(20, 29, true)]);
    }

    #[test]
    fn flock_and_posix_locks_live_apart_even_with_one_owner_number() {
        let mut t = LockTable::default();
        t.apply(A, r(0, 9), LockChange::Write, 1);
        assert!(t.conflict(A_FLOCK, r(0, 9), LockChange::Write).is_none(), "an flock never meets a POSIX lock");
        assert!(t.blockers(A_FLOCK, r(0, 9), LockChange::Write).is_empty());
        t.apply(A_FLOCK, r(0, 9), LockChange::Write, 2);
        assert_eq!(ranges(&t), vec![(0, 9, true), (0, 9, true)], "one owner number holds a lock of each flavor");
        assert_eq!(t.conflict(B, r(5, 5), LockChange::Read).map(|e| e.flock), Some(false));
        let flock_b = LockOwner { flock: true, ..B };
        assert_eq!(t.blockers(flock_b, r(5, 5), LockChange::Read), vec![A_FLOCK]);
        t.apply(A_FLOCK, r(0, 9), LockChange::Unlock, 2);
        assert_eq!(t.locks().iter().map(|e| (e.pid, e.flock)).collect::<Vec<_>>(), vec![(1, false)], "an flock unlock leaves the POSIX lock");
    }

    #[test]
    fn release_of_one_flavor_leaves_the_other() {
        let mut t = LockTable::default();
        t.apply(A, r(0, 9), LockChange::Write, 1);
        t.apply(A_FLOCK, r(0, 9), LockChange::Write, 2);
        assert!(t.release_owners(1, &[10], Some(true)));
        assert_eq!(t.locks().iter().map(|e| e.flock).collect::<Vec<_>>(), vec![false]);
        assert!(!t.release_owners(1, &[10], Some(true)));
        t.apply(A_FLOCK, r(0, 9), LockChange::Write, 2);
        assert!(t.release_owners(1, &[10], Some(false)));
        assert_eq!(t.locks().iter().map(|e| e.flock).collect::<Vec<_>>(), vec![true]);
        t.apply(A, r(0, 9), LockChange::Write, 1);
        assert!(t.release_owners(1, &[10], None));
        assert!(t.is_empty(), "no flavor named: both go");
    }

    /// Per byte of a small file, what each owner holds: the reference the table is checked
    /// against.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Held {
        None,
        Read,
        Write,
    }

    const BYTES: usize = 48;
    const OWNERS: [LockOwner; 3] = [A, B, C];

    fn held_bytes(t: &LockTable, who: LockOwner) -> [Held; BYTES] {
        let mut out = [Held::None; BYTES];
        for e in t.locks().iter().filter(|e| held_by(e, who)) {
            for b in e.start..=e.end.min(BYTES as u64 - 1) {
                assert_eq!(out[b as usize], Held::None, "overlapping locks of one owner: {t:?}");
                out[b as usize] = if e.write { Held::Write } else { Held::Read };
            }
        }
        out
    }

    #[test]
    fn random_requests_match_a_per_byte_model() {
        let mut rng = ember_testkit::TestRng::new(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: u64| rng.below(n);
        let mut t = LockTable::default();
        let mut model = [[Held::None; BYTES]; 3];
        for step in 0..20_000 {
            let who = next(3) as usize;
            let start = next(BYTES as u64);
            let end = (start + next(12)).min(BYTES as u64 - 1);
            let (change, held) = match next(3) {
                0 => (LockChange::Read, Held::Read),
                1 => (LockChange::Write, Held::Write),
                _ => (LockChange::Unlock, Held::None),
            };
            let range = r(start, end);
            let model_conflict = (0..3).filter(|&o| o != who).any(|o| {
                (start..=end).any(|b| match model[o][b as usize] {
                    Held::None => false,
                    Held::Read => change == LockChange::Write,
                    Held::Write => change != LockChange::Unlock,
                })
            });
            assert_eq!(t.conflict(OWNERS[who], range, change).is_some(), model_conflict, "step {step}");
            if model_conflict {
                continue;
            }
            t.apply(OWNERS[who], range, change, who as u32);
            for b in start..=end {
                model[who][b as usize] = held;
            }
            for (o, bytes) in model.iter().enumerate() {
                assert_eq!(&held_bytes(&t, OWNERS[o]), bytes, "step {step}, owner {o}");
            }
            let mut sorted = t.locks().to_vec();
            sorted.sort_by_key(|e| (e.client_id, e.owner, e.start));
            for w in sorted.windows(2) {
                let touch = w[0].end + 1 == w[1].start && w[0].write == w[1].write;
                assert!(!(held_by(&w[0], owner_of(&w[1])) && touch), "unmerged neighbours at step {step}: {t:?}");
            }
        }
    }
}
