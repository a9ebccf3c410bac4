//! Block images: the form in which a write travels from a chain's primary to its replicas.
//!
//! A write of arbitrary bytes at an arbitrary offset becomes whole 4 KiB blocks (the edge
//! blocks completed with the chunk's current bytes), each with its CRC32C, plus the chunk's
//! length after the write. A replica stores the images as they are: it reads nothing, and every
//! replica ends with byte-identical blocks and the same per-block CRCs as the primary.

use bytes::Bytes;

use super::space::BS;
use super::EngineError;

/// The whole blocks a write produces, with their CRC32Cs and the chunk length after it. The
/// blocks come in runs of consecutive indexes (a write of several pieces of a chunk makes
/// several), in ascending order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockImages {
    /// (first logical block, block count) of each run.
    runs: Vec<(u32, u32)>,
    len: u32,
    images: Bytes,
    crcs: Vec<u32>,
}

impl BlockImages {
    /// Images built here from bytes we hold: their CRCs are computed.
    pub(super) fn computed(runs: Vec<(u32, u32)>, len: u32, images: Bytes) -> BlockImages {
        let crcs = images.chunks_exact(BS as usize).map(crc32c::crc32c).collect();
        BlockImages { runs, len, images, crcs }
    }

    /// Images received from a peer: refused unless their shape is consistent and every block
    /// matches its CRC32C.
    pub fn received(runs: Vec<(u32, u32)>, len: u32, images: Bytes, crcs: Vec<u32>) -> Result<BlockImages, EngineError> {
        let count = images.len() / BS as usize;
        let in_runs: u64 = runs.iter().map(|(_, n)| u64::from(*n)).sum();
        if !images.len().is_multiple_of(BS as usize) || count != crcs.len() || in_runs != count as u64 {
            return Err(EngineError::InvalidArgument(format!(
                "{} bytes of block images with {} CRCs in runs of {in_runs} blocks",
                images.len(),
                crcs.len()
            )));
        }
        check_runs(&runs, len)?;
        let built = BlockImages::computed(runs, len, images);
        if let Some(k) = built.crcs.iter().zip(&crcs).position(|(a, b)| a != b) {
            let block = built.blocks().nth(k).unwrap_or_default();
            return Err(EngineError::ChecksumMismatch(format!("block image {block} does not match its CRC32C")));
        }
        Ok(built)
    }

    /// (first logical block, block count) of each run of images, in block order.
    pub fn runs(&self) -> &[(u32, u32)] {
        &self.runs
    }

    /// The logical index of each image, in order.
    pub fn blocks(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs.iter().flat_map(|&(first, n)| first..first + n)
    }

    /// The chunk length after the write.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// The images, back to back.
    pub fn images(&self) -> &Bytes {
        &self.images
    }

    /// One CRC32C per image.
    pub fn crcs(&self) -> &[u32] {
        &self.crcs
    }

    /// Whether the write changes nothing (an empty write).
    pub fn is_empty(&self) -> bool {
        self.crcs.is_empty()
    }
}

/// Runs of consecutive block indexes.
pub(super) fn runs_of(blocks: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &l in blocks {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == l => *n += 1,
            _ => runs.push((l, 1)),
        }
    }
    runs
}

/// Runs must be non-empty, ascending, apart, and below the chunk length.
fn check_runs(runs: &[(u32, u32)], len: u32) -> Result<(), EngineError> {
    let limit = u64::from(len).div_ceil(BS);
    let mut next = 0u64;
    for &(first, n) in runs {
        let end = u64::from(first) + u64::from(n);
        if n == 0 || u64::from(first) < next {
            return Err(EngineError::InvalidArgument(format!("block run {first}+{n} is empty or out of order")));
        }
        if end > limit {
            return Err(EngineError::InvalidArgument(format!("blocks {first}..{end} lie past the chunk length {len}")));
        }
        next = end;
    }
    Ok(())
}
