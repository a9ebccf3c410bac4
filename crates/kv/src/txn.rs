//! The transaction type shared by every engine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use crate::engine::{Engine, EngineSnapshot, Pair};
use crate::occ::{CommitRequest, Registration};
use crate::pending::{AtomicOp, Pending};
use crate::{Key, KvError, Transaction, MAX_KEY_LEN};

pub(crate) struct OccTxn<E: Engine> {
    reg: Registration<E>,
    snapshot: E::Snapshot,
    writes: BTreeMap<Key, Pending>,
    reads: BTreeSet<Key>,
    ranges: Vec<(Key, Key)>,
    /// Set by a write that can never be stored; reported at commit since writes are infallible.
    invalid: Option<String>,
    relaxed: bool,
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_LEN {
        return Err(KvError::Storage(format!("key of {} bytes exceeds {MAX_KEY_LEN}", key.len())));
    }
    Ok(())
}

/// The empty key can be read (it never exists) but not written: fjall cannot store it.
fn check_write_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::Storage("the empty key cannot be written".into()));
    }
    check_key(key)
}

impl<E: Engine> OccTxn<E> {
    pub(crate) fn new(reg: Registration<E>, snapshot: E::Snapshot) -> Self {
        OccTxn {
            reg,
            snapshot,
            writes: BTreeMap::new(),
            reads: BTreeSet::new(),
            ranges: Vec::new(),
            invalid: None,
            relaxed: false,
        }
    }

    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        match self.writes.get(key) {
            Some(Pending::Put(value)) => Ok(value.clone()),
            Some(p) => Ok(p.resolve(self.snapshot.get(key)?)),
            None => self.snapshot.get(key),
        }
    }

    fn buffer(&mut self, key: &[u8], op: impl FnOnce(Option<Pending>) -> Pending) {
        if let Err(e) = check_write_key(key) {
            self.invalid = Some(e.to_string());
            return;
        }
        let previous = self.writes.remove(key);
        self.writes.insert(key.to_vec(), op(previous));
    }

    fn atomic(&mut self, key: &[u8], op: AtomicOp) {
        self.buffer(key, |previous| match previous {
            Some(mut p) => {
                p.push(op);
                p
            }
            None => Pending::Atomic(vec![op]),
        });
    }

    /// Snapshot rows merged with this transaction's writes.
    fn merged_scan(&self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, KvError> {
        check_key(begin)?;
        check_key(end)?;
        let mut out = Vec::new();
        if begin >= end {
            return Ok(out);
        }
        let want = if limit == 0 { usize::MAX } else { limit };
        let mut base = ChunkedScan::new(&self.snapshot, begin, end, limit);
        let bounds = (Bound::Included(begin), Bound::Excluded(end));
        let mut local = self.writes.range::<[u8], _>(bounds).peekable();
        while out.len() < want {
            let local_key = local.peek().map(|(k, _)| k.as_slice());
            let row = match next_source(base.peek_key()?, local_key) {
                Source::Done => break,
                Source::Base => base.pop(),
                Source::Local { shadows_base } => {
                    let base_value = if shadows_base { base.pop().map(|(_, v)| v) } else { None };
                    local.next().and_then(|(k, p)| Some((k.clone(), p.resolve(base_value)?)))
                }
            };
            out.extend(row);
        }
        Ok(out)
    }
}

enum Source {
    Done,
    Base,
    Local { shadows_base: bool },
}

fn next_source(base: Option<&[u8]>, local: Option<&[u8]>) -> Source {
    match (base, local) {
        (None, None) => Source::Done,
        (Some(_), None) => Source::Base,
        (None, Some(_)) => Source::Local { shadows_base: false },
        (Some(b), Some(l)) if l <= b => Source::Local { shadows_base: l == b },
        (Some(_), Some(_)) => Source::Base,
    }
}

/// Reads `[begin, end)` from a snapshot in bounded chunks, so a scan whose own deletes hide rows
/// can keep reading without the engine materializing the whole range.
struct ChunkedScan<'a, S> {
    snapshot: &'a S,
    next: Option<Key>,
    end: &'a [u8],
    chunk: usize,
    buf: VecDeque<Pair>,
}

impl<'a, S: EngineSnapshot> ChunkedScan<'a, S> {
    fn new(snapshot: &'a S, begin: &[u8], end: &'a [u8], limit: usize) -> Self {
        let chunk = if limit == 0 { 1024 } else { limit.clamp(16, 1024) };
        ChunkedScan { snapshot, next: Some(begin.to_vec()), end, chunk, buf: VecDeque::new() }
    }

    fn peek_key(&mut self) -> Result<Option<&[u8]>, KvError> {
        if self.buf.is_empty() {
            self.refill()?;
        }
        Ok(self.buf.front().map(|(k, _)| k.as_slice()))
    }

    fn pop(&mut self) -> Option<Pair> {
        self.buf.pop_front()
    }

    fn refill(&mut self) -> Result<(), KvError> {
        let Some(from) = self.next.take() else { return Ok(()) };
        if from.as_slice() >= self.end {
            return Ok(());
        }
        let rows = self.snapshot.scan(&from, self.end, self.chunk)?;
        if rows.len() >= self.chunk {
            self.next = rows.last().map(|(k, _)| successor(k));
        }
        self.buf.extend(rows);
        Ok(())
    }
}

/// The smallest key greater than `key`.
fn successor(key: &[u8]) -> Key {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

impl<E: Engine> Transaction for OccTxn<E> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let value = self.read(key)?;
        // A value fully determined by this transaction's own write depends on no other commit.
        if !matches!(self.writes.get(key), Some(Pending::Put(_))) {
            self.reads.insert(key.to_vec());
        }
        Ok(value)
    }

    fn snapshot_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.read(key)
    }

    fn scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, KvError> {
        let rows = self.merged_scan(begin, end, limit)?;
        let conflict_end = match rows.last() {
            Some((last, _)) if limit > 0 && rows.len() >= limit => successor(last),
            _ => end.to_vec(),
        };
        if begin < conflict_end.as_slice() {
            self.ranges.push((begin.to_vec(), conflict_end));
        }
        Ok(rows)
    }

    fn snapshot_scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, KvError> {
        self.merged_scan(begin, end, limit)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        let value = value.to_vec();
        self.buffer(key, |_| Pending::Put(Some(value)));
    }

    fn delete(&mut self, key: &[u8]) {
        self.buffer(key, |_| Pending::Put(None));
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.atomic(key, AtomicOp::Add(delta));
    }

    fn atomic_max(&mut self, key: &[u8], value: u64) {
        self.atomic(key, AtomicOp::Max(value));
    }

    fn add_read_conflict(&mut self, key: &[u8]) {
        self.reads.insert(key.to_vec());
    }

    fn relax_durability(&mut self) {
        self.relaxed = true;
    }

    fn commit(self: Box<Self>) -> Result<u64, KvError> {
        let OccTxn { reg, snapshot, writes, reads, ranges, invalid, relaxed } = *self;
        drop(snapshot);
        if let Some(msg) = invalid {
            return Err(KvError::Storage(msg));
        }
        if writes.is_empty() {
            return Ok(reg.version);
        }
        let store = std::sync::Arc::clone(&reg.store);
        store.commit(reg, CommitRequest { reads, ranges, writes, relaxed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_is_the_next_key() {
        assert_eq!(successor(b"ab"), b"ab\0".to_vec());
        assert!(successor(b"ab").as_slice() < b"ab\x01".as_slice());
    }

    #[test]
    fn local_write_wins_on_equal_keys() {
        assert!(matches!(next_source(Some(b"a"), Some(b"a")), Source::Local { shadows_base: true }));
        assert!(matches!(next_source(Some(b"a"), Some(b"b")), Source::Base));
        assert!(matches!(next_source(None, Some(b"b")), Source::Local { shadows_base: false }));
        assert!(matches!(next_source(None, None), Source::Done));
    }
}
