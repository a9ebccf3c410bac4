//! Small writes journaled with their record: one fdatasync per write instead of two.
//!
//! A change that writes at most `EngineOptions::journal_blocks` new blocks puts their images
//! into the same fjall batch as the chunk record (keyspace `staged`, key = physical block index,
//! big-endian; value = the 4 KiB image). The one journal persist then makes data and metadata
//! durable together. The images also go to `blocks.dat`, unsynced, where reads find them.
//!
//! Settling: once `SETTLE_BLOCKS` blocks are staged, the writer that crosses the count
//! fdatasyncs `blocks.dat` and deletes the staged images that sync covered. The deletes need no
//! persist of their own: fjall's journal is ordered, so any later persisted batch carries them.
//!
//! Reuse rule: a staged block that a later change frees goes back to the allocator only once it
//! has settled. Hence a later record can reference that block only after the delete of its old
//! image, earlier in the journal; and a staged image that survives a crash belongs to the last
//! write of its block. At open, every surviving image whose block a committed record references
//! with the image's CRC32C is written back, then `blocks.dat` is synced and the keyspace cleared.
//!
//! Budget: a staged image stays in fjall's journal after its settle, until fjall starts a new
//! journal (past 64 MB, a constant of fjall's) and has flushed the memtables the old one
//! covers. On a target that stores little, those copies would be most of its disk use (2.15x
//! the data for 10,000 files of 5 KiB). So a change stages only while the journals take at
//! most a quarter of the bytes the target stores, or `EngineOptions::staging_journal_bytes`
//! if that is more ([`JournalBudget`]); past it, small changes are synced in place like large
//! ones, at two fdatasyncs each, until the journal rotates or the target grows.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, OwnedWriteBatch, PersistMode, Slice};

use super::space::{BlockFile, BS};
use super::EngineError;

/// Staged blocks that trigger a settle (4 MiB of images at 4 KiB blocks).
pub(crate) const SETTLE_BLOCKS: usize = 1024;

pub(crate) struct Staging {
    keyspace: Keyspace,
    /// Staged blocks not yet settled, each with whether a later change has freed it.
    blocks: Mutex<HashMap<u64, bool>>,
    /// Held by the one writer settling at a time.
    settling: Mutex<()>,
}

/// Blocks a settle covers; dropping it lets the next settle start.
pub(crate) struct Settle<'a> {
    pub blocks: Vec<u64>,
    _one_at_a_time: MutexGuard<'a, ()>,
}

impl Staging {
    pub fn new(keyspace: Keyspace) -> Staging {
        Staging {
            keyspace,
            blocks: Mutex::new(HashMap::new()),
            settling: Mutex::new(()),
        }
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// Adds the images of `phys` (back to back in `images`) to the batch that commits their record.
    pub fn stage(&self, batch: &mut OwnedWriteBatch, phys: &[u64], images: &[u8]) {
        for (p, img) in phys.iter().zip(images.chunks_exact(BS as usize)) {
            batch.insert(&self.keyspace, p.to_be_bytes(), img);
        }
    }

    /// Records blocks whose images were committed: from now on they are freed only by a settle.
    /// Call after the batch commit, so a settle never deletes an image committed after it.
    pub fn committed(&self, phys: &[u64]) {
        let mut blocks = self.lock();
        for &p in phys {
            blocks.insert(p, false);
        }
    }

    /// Of the blocks a change frees, those the allocator may take back now; the staged ones are
    /// kept until they settle.
    pub fn releasable(&self, freed: &[u64]) -> Vec<u64> {
        let mut blocks = self.lock();
        freed
            .iter()
            .copied()
            .filter(|p| match blocks.get_mut(p) {
                Some(was_freed) => {
                    *was_freed = true;
                    false
                }
                None => true,
            })
            .collect()
    }

    /// A settle of every staged block, if at least `min_blocks` (and one) are staged and no
    /// other settle runs.
    pub fn due(&self, min_blocks: usize) -> Option<Settle<'_>> {
        if self.lock().len() < min_blocks.max(1) {
            return None;
        }
        let guard = match self.settling.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let blocks = self.lock().keys().copied().collect();
        Some(Settle { blocks, _one_at_a_time: guard })
    }

    /// Forgets settled blocks (their images are synced in `blocks.dat` and their journal copies
    /// deleted); returns those a change freed meanwhile, now free for the allocator.
    pub fn settled(&self, settle: &Settle<'_>) -> Vec<u64> {
        let mut blocks = self.lock();
        settle
            .blocks
            .iter()
            .filter(|p| blocks.remove(p) == Some(true))
            .copied()
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, bool>> {
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Staged bytes after which the journals are measured again.
const REMEASURE_BYTES: u64 = 1 << 20;
/// Age after which a measurement is taken again (the journal also grows by records and tails,
/// and shrinks when fjall deletes an old one).
const REMEASURE_AFTER: Duration = Duration::from_secs(1);

/// Decides whether a change may stage its images (see the module doc).
pub(crate) struct JournalBudget {
    floor: u64,
    state: Mutex<Measured>,
}

struct Measured {
    /// Journal bytes on disk at the last measurement, and when it was taken.
    bytes: u64,
    at: Option<Instant>,
    /// Bytes staged since then.
    since: u64,
}

impl JournalBudget {
    pub fn new(floor: u64) -> JournalBudget {
        JournalBudget { floor, state: Mutex::new(Measured { bytes: 0, at: None, since: 0 }) }
    }

    /// Whether `add` more bytes of images may go to the journal of a target storing `stored`
    /// bytes; if so, counts them. `measure` reads the journals' size when the last reading is
    /// stale; if it fails, the last reading stands.
    pub fn admit(&self, add: u64, stored: u64, measure: impl FnOnce() -> std::io::Result<u64>) -> bool {
        let mut m = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = m.at.is_none_or(|at| at.elapsed() >= REMEASURE_AFTER) || m.since >= REMEASURE_BYTES;
        if stale {
            match measure() {
                Ok(bytes) => (m.bytes, m.since) = (bytes, 0),
                Err(e) => tracing::warn!(error = %e, "cannot measure the journal; keeping the last reading"),
            }
            m.at = Some(Instant::now());
        }
        let fits = m.bytes + m.since + add <= self.floor.max(stored / 4);
        if fits {
            m.since += add;
        }
        fits
    }
}

fn block_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Every staged image the previous run left, by block.
pub(crate) fn load(keyspace: &Keyspace) -> Result<HashMap<u64, Slice>, EngineError> {
    let mut images = HashMap::new();
    for guard in keyspace.iter() {
        let (key, image) = guard.into_inner().map_err(EngineError::from_fjall)?;
        let block = block_of(&key)
            .ok_or_else(|| EngineError::Corrupt(format!("staged key of {} bytes", key.len())))?;
        if image.len() != BS as usize {
            return Err(EngineError::Corrupt(format!("staged image of block {block} has {} bytes", image.len())));
        }
        images.insert(block, image);
    }
    Ok(images)
}

/// Writes back the staged images whose blocks committed records reference with the same
/// CRC32C (`crcs`; a crash may have lost their unsynced copies in `blocks.dat`), syncs
/// `blocks.dat` and clears the keyspace. Other images belong to writes that were replaced.
pub(crate) fn replay(
    db: &Database,
    keyspace: &Keyspace,
    blocks: &BlockFile,
    images: &HashMap<u64, Slice>,
    crcs: &HashMap<u64, u32>,
) -> Result<(), EngineError> {
    if images.is_empty() {
        return Ok(());
    }
    let mut replayed = 0;
    for (&block, image) in images {
        if crcs.get(&block) == Some(&crc32c::crc32c(image)) {
            blocks.write_blocks(&[block], image)?;
            replayed += 1;
        }
    }
    blocks.sync_data()?;
    let mut batch = db.batch();
    for block in images.keys() {
        batch.remove(keyspace, block.to_be_bytes());
    }
    batch.commit().map_err(EngineError::from_fjall)?;
    db.persist(PersistMode::SyncAll).map_err(EngineError::from_fjall)?;
    tracing::info!(staged = images.len(), replayed, "wrote back staged block images");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn the_budget_is_a_floor_or_a_quarter_of_what_is_stored() {
        let budget = JournalBudget::new(100);
        let reads = Cell::new(0);
        let measure = || {
            reads.set(reads.get() + 1);
            Ok(10)
        };
        assert!(budget.admit(60, 0, measure));
        assert!(budget.admit(30, 0, measure), "10 measured + 60 + 30 fit in 100");
        assert!(!budget.admit(1, 0, measure), "past the floor");
        assert!(budget.admit(300, 1600, measure), "a quarter of 1600 is 400");
        assert_eq!(reads.get(), 1, "a fresh reading is not taken again");
    }

    #[test]
    fn a_reading_is_retaken_after_a_mebibyte_and_a_failed_one_keeps_the_last() {
        let budget = JournalBudget::new(8 << 20);
        assert!(budget.admit(REMEASURE_BYTES, 0, || Ok(0)));
        assert!(!budget.admit(1, 0, || Ok(8 << 20)), "the new reading fills the budget");
        assert!(!budget.admit(1, 0, || panic!("read again")), "a fresh reading stands");

        let budget = JournalBudget::new(8 << 20);
        assert!(budget.admit(REMEASURE_BYTES, 0, || Ok(1 << 20)));
        assert!(
            budget.admit(1, 0, || Err(std::io::Error::other("gone"))),
            "the last reading and what was staged since (2 MiB) stand"
        );
    }
}
