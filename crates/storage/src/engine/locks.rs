//! Per-chunk locking through a fixed table of reader/writer locks.
//!
//! Mutations of a chunk hold its lock exclusively from reading the old metadata until the old
//! blocks are freed; reads hold it shared while they read blocks, so a block is never freed and
//! reused under a reader. Chunks that hash to different shards proceed in parallel; a collision
//! only costs some parallelism, never correctness.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ember_types::ChunkId;

const SHARDS: usize = 1024;

pub(crate) struct LockTable {
    shards: Box<[RwLock<()>]>,
}

impl LockTable {
    pub fn new() -> Self {
        LockTable {
            shards: (0..SHARDS).map(|_| RwLock::new(())).collect(),
        }
    }

    pub fn read(&self, chunk: ChunkId) -> RwLockReadGuard<'_, ()> {
        self.shards[shard_of(chunk)]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self, chunk: ChunkId) -> RwLockWriteGuard<'_, ()> {
        self.shards[shard_of(chunk)]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks every shard used by `chunks`, in ascending shard order so that two callers locking
    /// overlapping sets cannot deadlock.
    pub fn write_many(&self, chunks: &[ChunkId]) -> Vec<RwLockWriteGuard<'_, ()>> {
        let mut shards: Vec<usize> = chunks.iter().map(|&c| shard_of(c)).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
            .into_iter()
            .map(|s| {
                self.shards[s]
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
            })
            .collect()
    }
}

/// Fibonacci hashing of both halves so that neighbouring indexes of one inode spread out.
fn shard_of(chunk: ChunkId) -> usize {
    let mixed = chunk.inode.0.rotate_left(32) ^ u64::from(chunk.index);
    let h = mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_types::InodeId;

    #[test]
    fn neighbouring_chunks_spread_over_shards() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..64 {
            seen.insert(shard_of(ChunkId::new(InodeId(0x1000), i)));
        }
        assert!(seen.len() > 48, "only {} distinct shards", seen.len());
        let table = LockTable::new();
        let chunks: Vec<_> = (0..8).map(|i| ChunkId::new(InodeId(7), i)).collect();
        let guards = table.write_many(&chunks);
        assert!(!guards.is_empty() && guards.len() <= 8);
    }
}
