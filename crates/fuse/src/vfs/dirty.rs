//! Bytes a client has written but not yet sent to storage.

use std::collections::BTreeMap;

/// Disjoint extents keyed by offset. Writes that overlap or touch an extent merge into it (the
/// later write wins where they overlap), so a sequential stream stays one extent and random
/// writes stay separate ones, sent together at the next flush.
#[derive(Default)]
pub(super) struct DirtyExtents {
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

impl DirtyExtents {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Extents held.
    pub fn count(&self) -> usize {
        self.extents.len()
    }

    pub fn insert(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Extents are disjoint and sorted: walking down from the last one starting at or before
        // `end`, the first that ends before `offset` ends the run of touching ones.
        let touching: Vec<u64> = self
            .extents
            .range(..=end)
            .rev()
            .take_while(|(start, bytes)| *start + bytes.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        if let [start] = touching[..] {
            // One extent that the write continues or overwrites (a sequential stream): grow it
            // in place rather than copy it.
            if let Some(extent) = self.extents.get_mut(&start).filter(|_| start <= offset) {
                let at = (offset - start) as usize;
                let before = extent.len();
                if extent.len() < at + data.len() {
                    extent.resize(at + data.len(), 0);
                }
                extent[at..at + data.len()].copy_from_slice(data);
                self.bytes += extent.len() - before;
                return;
            }
        }
        let first = touching.iter().copied().fold(offset, u64::min);
        let last = touching.iter().map(|s| s + self.extents[s].len() as u64).fold(end, u64::max);
        let mut merged = vec![0u8; (last - first) as usize];
        for start in touching {
            let old = self.extents.remove(&start).unwrap_or_default();
            self.bytes -= old.len();
            let at = (start - first) as usize;
            merged[at..at + old.len()].copy_from_slice(&old);
        }
        let at = (offset - first) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len();
        self.extents.insert(first, merged);
    }

    /// Empties the set, returning the extents in offset order.
    pub fn take(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.bytes = 0;
        std::mem::take(&mut self.extents).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes the extents describe, with `None` where nothing was written.
    fn image(d: &DirtyExtents, len: usize) -> Vec<Option<u8>> {
        let mut out = vec![None; len];
        for (start, bytes) in &d.extents {
            for (i, b) in bytes.iter().enumerate() {
                out[*start as usize + i] = Some(*b);
            }
        }
        out
    }

    #[test]
    fn merges_touching_and_overlapping_writes_and_keeps_the_latest_bytes() {
        let mut rng = ember_testkit::TestRng::new(7);
        let mut next = |n: u64| rng.below(n);
        for round in 0..200 {
            let (mut d, mut model) = (DirtyExtents::default(), vec![None; 300]);
            for w in 0..20 {
                let offset = next(250) as usize;
                let len = 1 + next(40) as usize;
                let byte = (round * 20 + w) as u8;
                d.insert(offset as u64, &vec![byte; len]);
                for slot in &mut model[offset..offset + len] {
                    *slot = Some(byte);
                }
                assert_eq!(image(&d, 300), model);
                assert_eq!(d.bytes(), model.iter().flatten().count());
                let ends: Vec<(u64, u64)> = d.extents.iter().map(|(s, b)| (*s, s + b.len() as u64)).collect();
                assert!(ends.windows(2).all(|p| p[0].1 < p[1].0), "extents touch or overlap: {ends:?}");
            }
        }
    }

    #[test]
    fn a_sequential_stream_stays_one_extent() {
        let mut d = DirtyExtents::default();
        for i in 0..64u64 {
            d.insert(i * 4096, &[1; 4096]);
        }
        assert_eq!((d.count(), d.bytes()), (1, 64 * 4096));
        let taken = d.take();
        assert_eq!(taken.len(), 1);
        assert!(d.is_empty() && d.bytes() == 0);
    }
}
