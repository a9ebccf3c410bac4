use crate::{ChainId, ChunkId, InodeId};

/// Storage allocation unit of the chunk engine.
pub const BLOCK_SIZE: u32 = 4096;
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("chunk size {0} must be a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")]
    BadChunkSize(u32),
    #[error("a layout needs at least one chain")]
    NoChains,
    #[error("offset {0} is beyond the largest file a layout can address")]
    OffsetTooLarge(u64),
}

/// How a file's bytes map to chains: fixed-size chunks, chunk `i` on `chains[i % chains.len()]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    pub chunk_size: u32,
    pub chains: Vec<ChainId>,
}

/// The part of one I/O that falls into one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub chunk: ChunkId,
    pub chain: ChainId,
    /// Offset inside the chunk.
    pub offset: u32,
    pub len: u32,
    /// Offset of the span's first byte inside the caller's buffer.
    pub buf_offset: usize,
}

impl Layout {
    pub fn new(chunk_size: u32, chains: Vec<ChainId>) -> Result<Self, LayoutError> {
        let layout = Layout { chunk_size, chains };
        layout.validate()?;
        Ok(layout)
    }

    pub fn validate(&self) -> Result<(), LayoutError> {
        let cs = self.chunk_size;
        if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return Err(LayoutError::BadChunkSize(cs));
        }
        if self.chains.is_empty() {
            return Err(LayoutError::NoChains);
        }
        Ok(())
    }

    pub fn chain_of(&self, index: u32) -> ChainId {
        self.chains[index as usize % self.chains.len()]
    }

    /// Splits `[offset, offset + len)` of `inode` into per-chunk spans, in file order.
    pub fn spans(&self, inode: InodeId, offset: u64, len: usize) -> Result<Vec<ChunkSpan>, LayoutError> {
        let cs = u64::from(self.chunk_size);
        let end = offset + len as u64;
        if len > 0 && (end - 1) / cs > u64::from(u32::MAX) {
            return Err(LayoutError::OffsetTooLarge(end));
        }
        let mut spans = Vec::new();
        let mut pos = offset;
        while pos < end {
            let index = (pos / cs) as u32;
            let in_chunk = (pos % cs) as u32;
            let take = (cs - u64::from(in_chunk)).min(end - pos) as u32;
            spans.push(ChunkSpan {
                chunk: ChunkId::new(inode, index),
                chain: self.chain_of(index),
                offset: in_chunk,
                len: take,
                buf_offset: (pos - offset) as usize,
            });
            pos += u64::from(take);
        }
        Ok(spans)
    }

    /// Index of the chunk holding byte `offset`.
    pub fn chunk_index(&self, offset: u64) -> u64 {
        offset / u64::from(self.chunk_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(64 * 1024, vec![ChainId(1), ChainId(2), ChainId(3)]).unwrap()
    }

    #[test]
    fn rejects_bad_chunk_sizes_and_empty_chain_lists() {
        assert_eq!(Layout::new(1000, vec![ChainId(1)]), Err(LayoutError::BadChunkSize(1000)));
        assert_eq!(Layout::new(1 << 20, vec![]), Err(LayoutError::NoChains));
    }

    #[test]
    fn spans_cover_the_range_exactly_and_round_robin_over_chains() {
        let l = layout();
        let spans = l.spans(InodeId(9), 60 * 1024, 200 * 1024).unwrap();
        let total: u32 = spans.iter().map(|s| s.len).sum();
        assert_eq!(total, 200 * 1024);
        assert_eq!(spans[0].offset, 60 * 1024);
        assert_eq!(spans[0].len, 4 * 1024);
        assert_eq!(spans[1].chunk.index, 1);
        assert_eq!(spans[1].chain, ChainId(2));
        assert_eq!(spans[3].chain, ChainId(1));
        let mut next = 0;
        for s in &spans {
            assert_eq!(s.buf_offset, next);
            next += s.len as usize;
        }
    }

    #[test]
    fn empty_range_has_no_spans() {
        assert!(layout().spans(InodeId(1), 5, 0).unwrap().is_empty());
    }
}
