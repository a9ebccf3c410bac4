//! Inode-id allocation from persistent sharded counters in the KV.
//!
//! Each grab is one transaction on one of `SHARDS` counter keys, picked at random so that
//! concurrent allocators (threads or meta servers) rarely touch the same key. Counter value `c`
//! of shard `s` owns block `c * SHARDS + s`, i.e. ids
//! `FIRST_ALLOCATED + block * BLOCK .. + BLOCK`; distinct (c, s) pairs give disjoint blocks, and
//! the counter only grows, so ids stay unique across restarts. The rest of a block is lost when
//! the process exits, which costs nothing in a 64-bit space.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ember_kv::TxnKv;
use ember_types::InodeId;

use crate::schema::{id_shard_key, le_u64};
use crate::MetaError;

pub const SHARDS: u64 = 16;
pub const BLOCK: u64 = 1024;

/// Hands out inode ids, refilling its local block from the KV when it runs dry.
pub struct IdAllocator {
    kv: Arc<dyn TxnKv>,
    /// Next free id and end of the current block.
    block: Mutex<(u64, u64)>,
}

impl IdAllocator {
    pub fn new(kv: Arc<dyn TxnKv>) -> Self {
        IdAllocator {
            kv,
            block: Mutex::new((0, 0)),
        }
    }

    pub fn allocate(&self) -> Result<InodeId, MetaError> {
        let mut block = self.block.lock().unwrap_or_else(|p| p.into_inner());
        if block.0 >= block.1 {
            let first = self.grab_block()?;
            *block = (first, first + BLOCK);
        }
        let id = block.0;
        block.0 += 1;
        Ok(InodeId(id))
    }

    fn grab_block(&self) -> Result<u64, MetaError> {
        let shard = random_u64() % SHARDS;
        let key = id_shard_key(shard as u8);
        let counter = ember_kv::run(&*self.kv, |txn| {
            let c = txn.get(&key)?.map(|v| le_u64(&v)).unwrap_or(0);
            txn.set(&key, &(c + 1).to_le_bytes());
            Ok::<_, MetaError>(c)
        })?;
        let block = counter
            .checked_mul(SHARDS)
            .and_then(|b| b.checked_add(shard))
            .and_then(|b| b.checked_mul(BLOCK))
            .and_then(|b| b.checked_add(InodeId::FIRST_ALLOCATED))
            .ok_or_else(|| MetaError::Internal("inode id space exhausted".into()))?;
        Ok(block)
    }
}

/// A random number without a dependency on a rand crate: std's hasher is randomly keyed per
/// `RandomState`, and the counter makes consecutive calls differ.
pub fn random_u64() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(SEQ.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn two_allocators_on_one_kv_never_collide() {
        let kv: Arc<dyn TxnKv> = Arc::new(ember_kv::MemKv::new());
        let a = Arc::new(IdAllocator::new(kv.clone()));
        let b = Arc::new(IdAllocator::new(kv));
        let handles: Vec<_> = [a, b]
            .into_iter()
            .map(|alloc| {
                std::thread::spawn(move || {
                    (0..5000)
                        .map(|_| alloc.allocate().unwrap().0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(id >= InodeId::FIRST_ALLOCATED);
                assert!(seen.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(seen.len(), 10_000);
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
