//! What storage answered about the chunks a client changed, kept until meta is told (with the
//! next fsync or close) so it can count the file's blocks.

use std::collections::BTreeMap;

use ember_proto::meta::ChunkBlocks;

/// The latest state of each changed chunk, by chunk index.
#[derive(Default)]
pub(super) struct ChunkReports(BTreeMap<u32, ChunkBlocks>);

impl ChunkReports {
    /// Adds answers; of two for one chunk the later version stays.
    pub fn add(&mut self, reports: Vec<ChunkBlocks>) {
        for r in reports {
            if self.0.get(&r.index).is_none_or(|old| old.version < r.version) {
                self.0.insert(r.index, r);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The reports, in chunk order; they stay until [`clear`](Self::clear) (after meta has them).
    pub fn pending(&self) -> Vec<ChunkBlocks> {
        self.0.values().cloned().collect()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_version_of_each_chunk_stays() {
        let r = |index, version, blocks| ChunkBlocks { index, version, blocks };
        let mut reports = ChunkReports::default();
        reports.add(vec![r(1, 5, 10), r(0, 2, 3)]);
        reports.add(vec![r(1, 4, 99), r(0, 3, 4)]);
        assert_eq!(reports.pending(), vec![r(0, 3, 4), r(1, 5, 10)]);
        reports.clear();
        assert!(reports.is_empty());
    }
}
