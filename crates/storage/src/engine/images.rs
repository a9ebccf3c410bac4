//! Block images: the form in which a write travels from a chain's primary to its replicas.
//!
//! A write of arbitrary bytes at an arbitrary offset becomes whole 4 KiB blocks (the edge
//! blocks completed with the chunk's current bytes), each with its CRC32C, plus the chunk's
//! length after the write. A replica stores the images as they are: it reads nothing, and every
//! replica ends with byte-identical blocks and the same per-block CRCs as the primary.

use bytes::Bytes;

use super::space::BS;
use super::EngineError;

/// The whole blocks a write produces, with their CRC32Cs and the chunk length after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockImages {
    first: u32,
    len: u32,
    images: Bytes,
    crcs: Vec<u32>,
}

impl BlockImages {
    /// Images built here from bytes we hold: their CRCs are computed.
    pub(super) fn computed(first: u32, len: u32, images: Bytes) -> BlockImages {
        let crcs = images.chunks_exact(BS as usize).map(crc32c::crc32c).collect();
        BlockImages { first, len, images, crcs }
    }

    /// Images received from a peer: refused unless their shape is consistent and every block
    /// matches its CRC32C.
    pub fn received(first: u32, len: u32, images: Bytes, crcs: Vec<u32>) -> Result<BlockImages, EngineError> {
        let count = images.len() / BS as usize;
        if !images.len().is_multiple_of(BS as usize) || count != crcs.len() {
            return Err(EngineError::InvalidArgument(format!(
                "{} bytes of block images with {} CRCs",
                images.len(),
                crcs.len()
            )));
        }
        let last = u64::from(first) + count as u64;
        if count > 0 && (last - 1) * BS >= u64::from(len) {
            return Err(EngineError::InvalidArgument(format!("blocks {first}..{last} lie past the chunk length {len}")));
        }
        let built = BlockImages::computed(first, len, images);
        if let Some(k) = built.crcs.iter().zip(&crcs).position(|(a, b)| a != b) {
            return Err(EngineError::ChecksumMismatch(format!("block image {} does not match its CRC32C", u64::from(first) + k as u64)));
        }
        Ok(built)
    }

    /// The logical index of the first block.
    pub fn first(&self) -> u32 {
        self.first
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
