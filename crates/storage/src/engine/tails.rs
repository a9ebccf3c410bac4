//! Short last blocks, kept in the metadata database instead of `blocks.dat`.
//!
//! Space in `blocks.dat` goes by whole 4 KiB blocks, so a file of 5 KiB takes 8 KiB there,
//! and files just past the inline limit (configuration, source, small records) are common. So
//! when a change leaves the chunk's last block with at most `EngineOptions::tail_bytes` bytes
//! before its trailing zeros, that block is kept in keyspace `tails` trimmed to those bytes,
//! in the same fjall batch as the chunk record, and costs its length plus a key.
//!
//! A tail's reference in the record is a physical number with the top bit set: bits 40..53
//! hold the stored length, bits 0..40 the tail's id, its key in `tails` (u64 big-endian).
//! The CRC32C is still the one of the whole 4 KiB image, so replicas, syncs and digests
//! cannot tell how a block is kept, and each replica decides for itself.
//!
//! Crash safety needs nothing new: a tail is written and a replaced one deleted in the batch
//! that commits the record, so a crash leaves the old record with the old tail or the new
//! record with the new one, never an orphan; and no byte of `blocks.dat` is rewritten in place
//! (packing tails into shared blocks would have put neighbours' bytes at risk of a torn write).

use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Keyspace, OwnedWriteBatch};

use super::space::BS;
use super::EngineError;

const TAIL_BIT: u64 = 1 << 63;
const LEN_SHIFT: u32 = 40;
const ID_MASK: u64 = (1 << LEN_SHIFT) - 1;

/// Whether a physical reference names a tail rather than a block of `blocks.dat`.
pub(crate) fn is_tail(phys: u64) -> bool {
    phys & TAIL_BIT != 0
}

fn stored_len(phys: u64) -> u64 {
    (phys & !TAIL_BIT) >> LEN_SHIFT
}

fn key(phys: u64) -> [u8; 8] {
    (phys & ID_MASK).to_be_bytes()
}

/// The bytes of a block image up to its last non-zero one, if that is at most `max` (and the
/// image is not all zeros: such a block is a hole).
pub(crate) fn trimmed_len(img: &[u8], max: usize) -> Option<usize> {
    let n = img.iter().rposition(|&b| b != 0)? + 1;
    (n <= max).then_some(n)
}

pub(crate) struct Tails {
    keyspace: Keyspace,
    next_id: AtomicU64,
    /// Bytes held by committed tails.
    bytes: AtomicU64,
}

impl Tails {
    /// Ids continue after the highest one stored (keys are big-endian, so that is the last).
    pub fn open(keyspace: Keyspace) -> Result<Tails, EngineError> {
        let last = match keyspace.last_key_value() {
            Some(guard) => {
                let key = guard.key().map_err(EngineError::from_fjall)?;
                let raw: [u8; 8] = key
                    .as_ref()
                    .try_into()
                    .map_err(|_| EngineError::Corrupt(format!("tail key of {} bytes", key.len())))?;
                u64::from_be_bytes(raw)
            }
            None => 0,
        };
        Ok(Tails { keyspace, next_id: AtomicU64::new(last + 1), bytes: AtomicU64::new(0) })
    }

    /// A reference for a new tail of `len` bytes (`len` < 4 KiB).
    pub fn allocate(&self, len: usize) -> Result<u64, EngineError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id > ID_MASK {
            return Err(EngineError::NoSpace);
        }
        Ok(TAIL_BIT | ((len as u64) << LEN_SHIFT) | id)
    }

    pub fn insert(&self, batch: &mut OwnedWriteBatch, phys: u64, bytes: &[u8]) {
        batch.insert(&self.keyspace, key(phys), bytes);
    }

    pub fn remove(&self, batch: &mut OwnedWriteBatch, phys: u64) {
        batch.remove(&self.keyspace, key(phys));
    }

    /// The whole 4 KiB image of a tail: its stored bytes, then zeros.
    pub fn read(&self, phys: u64) -> Result<Vec<u8>, EngineError> {
        let stored = self
            .keyspace
            .get(key(phys))
            .map_err(EngineError::from_fjall)?
            .ok_or_else(|| EngineError::Corrupt(format!("tail {} is referenced but not stored", phys & ID_MASK)))?;
        if stored.len() as u64 != stored_len(phys) || stored.len() > BS as usize {
            return Err(EngineError::Corrupt(format!(
                "tail {} holds {} bytes, its reference says {}",
                phys & ID_MASK,
                stored.len(),
                stored_len(phys)
            )));
        }
        let mut img = vec![0u8; BS as usize];
        img[..stored.len()].copy_from_slice(&stored);
        Ok(img)
    }

    /// Counts tails that a commit added (`true`) or that stopped being referenced.
    pub fn account(&self, phys: impl Iterator<Item = u64>, added: bool) {
        let n: u64 = phys.filter(|p| is_tail(*p)).map(stored_len).sum();
        if added {
            self.bytes.fetch_add(n, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(n, Ordering::Relaxed);
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    #[cfg(test)]
    pub fn keyspace_len(&self) -> usize {
        self.keyspace.iter().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_carry_the_length_and_never_look_like_blocks() {
        let phys = TAIL_BIT | (1024 << LEN_SHIFT) | 77;
        assert!(is_tail(phys) && !is_tail(77));
        assert_eq!((stored_len(phys), key(phys)), (1024, 77u64.to_be_bytes()));
    }

    #[test]
    fn trimming_stops_at_the_last_byte_that_is_not_zero() {
        let mut img = vec![0u8; BS as usize];
        assert_eq!(trimmed_len(&img, 2048), None, "all zeros is a hole");
        img[999] = 1;
        assert_eq!(trimmed_len(&img, 2048), Some(1000));
        img[2048] = 1;
        assert_eq!(trimmed_len(&img, 2048), None);
        assert_eq!(trimmed_len(&img, 4096), Some(2049));
    }
}
