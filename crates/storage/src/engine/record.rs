//! The chunk metadata record stored in fjall (one per chunk) and its binary encoding.
//!
//! Format 1, all integers little-endian:
//!
//! ```text
//! u8   format = 1
//! u64  version
//! u32  len                      logical chunk length in bytes
//! u32  extent_count
//! extent_count times:
//!   u32  logical_start          first logical block index of the extent
//!   u32  count                  >= 1
//!   u64  phys_start             first physical block in blocks.dat
//!   count times: u32 crc32c     of each 4 KiB block image
//! then, in records written since request ids exist (absent = none):
//! u32  request_count            <= MAX_REQUESTS
//! request_count times: u64 client, u64 seq    the latest writes' request ids, oldest first
//! ```
//!
//! An extent is a maximal run of blocks that is contiguous both logically and physically, so a
//! sequentially written chunk costs 20 B + 4 B per block. Extents are sorted, do not overlap and
//! lie below `ceil(len / BLOCK_SIZE)`; logical blocks not covered are holes (read as zeros).

use std::collections::BTreeMap;

use ember_types::BLOCK_SIZE;

const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 4 + 4;
const EXTENT_HEADER_LEN: usize = 4 + 4 + 8;

/// Where one logical block of a chunk lives and what its checksum is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockRef {
    pub phys: u64,
    pub crc: u32,
}

/// Who asked for a write: the client and its sequence number for the request, the same on
/// every retry. A client sends its writes to one chunk one at a time, in sequence order, so
/// a chunk that has applied `seq` from a client has applied every earlier one of its writes
/// to the chunk that was ever going to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    pub client: u64,
    pub seq: u64,
}

impl From<ember_proto::storage::RequestRef> for RequestId {
    fn from(r: ember_proto::storage::RequestRef) -> Self {
        RequestId { client: r.client, seq: r.seq }
    }
}

impl From<RequestId> for ember_proto::storage::RequestRef {
    fn from(r: RequestId) -> Self {
        ember_proto::storage::RequestRef { client: r.client, seq: r.seq }
    }
}

/// How many clients' latest writes a chunk remembers for retries.
pub const MAX_REQUESTS: usize = 32;

/// Decoded metadata of one chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChunkMeta {
    pub version: u64,
    pub len: u32,
    /// Logical block index -> physical block. Absent indexes are holes.
    pub blocks: BTreeMap<u32, BlockRef>,
    /// The latest applied request of each of the last clients that wrote, least recent
    /// first; they travel with the chunk's state (to replicas and in syncs), so whichever
    /// member is primary knows what was applied.
    pub requests: Vec<RequestId>,
}

/// Number of blocks needed to hold `len` bytes.
pub(crate) fn blocks_for(len: u64) -> u64 {
    len.div_ceil(u64::from(BLOCK_SIZE))
}

impl ChunkMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.blocks.len() * (EXTENT_HEADER_LEN + 4) + self.requests.len() * 16);
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        let count_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        // Extents are written as they are found; each one's block count is filled in when
        // the run ends (no intermediate list: this runs on every write).
        let mut extents = 0u32;
        // (where its count goes, first logical block, first physical block, count)
        let mut run: Option<(usize, u32, u64, u32)> = None;
        for (&l, r) in &self.blocks {
            match run.as_mut() {
                Some((_, first, phys, n)) if l == *first + *n && r.phys == *phys + u64::from(*n) => *n += 1,
                _ => {
                    if let Some((at, _, _, n)) = run {
                        out[at..at + 4].copy_from_slice(&n.to_le_bytes());
                    }
                    extents += 1;
                    out.extend_from_slice(&l.to_le_bytes());
                    run = Some((out.len(), l, r.phys, 1));
                    out.extend_from_slice(&0u32.to_le_bytes());
                    out.extend_from_slice(&r.phys.to_le_bytes());
                }
            }
            out.extend_from_slice(&r.crc.to_le_bytes());
        }
        if let Some((at, _, _, n)) = run {
            out[at..at + 4].copy_from_slice(&n.to_le_bytes());
        }
        out[count_at..count_at + 4].copy_from_slice(&extents.to_le_bytes());
        if !self.requests.is_empty() {
            out.extend_from_slice(&(self.requests.len() as u32).to_le_bytes());
            for r in &self.requests {
                out.extend_from_slice(&r.client.to_le_bytes());
                out.extend_from_slice(&r.seq.to_le_bytes());
            }
        }
        out
    }

    /// Remembers a write's request id, forgetting the least recent client beyond
    /// [`MAX_REQUESTS`].
    pub fn note_request(&mut self, request: RequestId) {
        let seq = self.requests.iter().filter(|r| r.client == request.client).map(|r| r.seq).fold(request.seq, u64::max);
        self.requests.retain(|r| r.client != request.client);
        self.requests.push(RequestId { client: request.client, seq });
        let excess = self.requests.len().saturating_sub(MAX_REQUESTS);
        self.requests.drain(..excess);
    }

    /// Whether the request (or a later one of the same client) was applied.
    pub fn has_applied(&self, request: RequestId) -> bool {
        self.requests.iter().any(|r| r.client == request.client && r.seq >= request.seq)
    }

    /// Decodes a record; any malformed input is an error message, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<ChunkMeta, String> {
        let mut r = Reader { buf: bytes };
        let format = r.u8()?;
        if format != FORMAT_V1 {
            return Err(format!("unknown record format {format}"));
        }
        let version = r.u64()?;
        let len = r.u32()?;
        let extent_count = r.u32()?;
        let limit = blocks_for(u64::from(len));
        // Collected in order, then built in one pass: cheaper than inserting one by one.
        let mut blocks = Vec::new();
        let mut next_free_l = 0u64;
        for i in 0..extent_count {
            let start = u64::from(r.u32()?);
            let count = u64::from(r.u32()?);
            let phys = r.u64()?;
            check_extent(i, start, count, phys, next_free_l, limit)?;
            for k in 0..count {
                let crc = r.u32()?;
                // Both sums were range-checked by check_extent.
                blocks.push(((start + k) as u32, BlockRef { phys: phys + k, crc }));
            }
            next_free_l = start + count;
        }
        let mut requests = Vec::new();
        if !r.buf.is_empty() {
            let count = r.u32()? as usize;
            if count > MAX_REQUESTS {
                return Err(format!("{count} request ids, at most {MAX_REQUESTS} allowed"));
            }
            for _ in 0..count {
                requests.push(RequestId { client: r.u64()?, seq: r.u64()? });
            }
        }
        if !r.buf.is_empty() {
            return Err(format!("{} trailing bytes", r.buf.len()));
        }
        Ok(ChunkMeta { version, len, blocks: BTreeMap::from_iter(blocks), requests })
    }
}

fn check_extent(
    i: u32,
    start: u64,
    count: u64,
    phys: u64,
    min_start: u64,
    limit: u64,
) -> Result<(), String> {
    if count == 0 {
        return Err(format!("extent {i} is empty"));
    }
    if start < min_start {
        return Err(format!("extent {i} overlaps or is out of order"));
    }
    if start + count > limit {
        return Err(format!(
            "extent {i} reaches past the chunk length ({limit} blocks)"
        ));
    }
    if phys.checked_add(count).is_none() {
        return Err(format!("extent {i} physical range overflows"));
    }
    Ok(())
}

/// Bounds-checked little-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let Some((head, rest)) = self.buf.split_first_chunk::<N>() else {
            return Err(format!(
                "record truncated: need {N} more bytes, have {}",
                self.buf.len()
            ));
        };
        self.buf = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChunkMeta {
        let mut blocks = BTreeMap::new();
        // Two physically contiguous blocks, a hole, then two scattered blocks.
        blocks.insert(
            0,
            BlockRef {
                phys: 10,
                crc: 0xaaaa_0000,
            },
        );
        blocks.insert(
            1,
            BlockRef {
                phys: 11,
                crc: 0xaaaa_0001,
            },
        );
        blocks.insert(
            3,
            BlockRef {
                phys: 12,
                crc: 0xaaaa_0003,
            },
        );
        blocks.insert(
            4,
            BlockRef {
                phys: 7,
                crc: 0xaaaa_0004,
            },
        );
        ChunkMeta {
            version: 42,
            len: 4 * BLOCK_SIZE + 17,
            blocks,
            requests: Vec::new(),
        }
    }

    #[test]
    fn request_ids_round_trip_and_keep_the_latest_clients() {
        let mut m = sample();
        let plain = m.encode().len();
        m.note_request(RequestId { client: 1, seq: 5 });
        m.note_request(RequestId { client: 1, seq: 3 });
        assert!(m.has_applied(RequestId { client: 1, seq: 5 }) && m.has_applied(RequestId { client: 1, seq: 2 }));
        assert!(!m.has_applied(RequestId { client: 1, seq: 6 }) && !m.has_applied(RequestId { client: 2, seq: 1 }));
        for client in 2..=MAX_REQUESTS as u64 + 5 {
            m.note_request(RequestId { client, seq: 1 });
        }
        m.note_request(RequestId { client: 10, seq: 2 });
        assert_eq!(m.requests.len(), MAX_REQUESTS);
        assert!(!m.has_applied(RequestId { client: 1, seq: 1 }), "the least recent client is forgotten");
        assert_eq!(m.requests.last(), Some(&RequestId { client: 10, seq: 2 }));
        let bytes = m.encode();
        assert_eq!(ChunkMeta::decode(&bytes).unwrap(), m);
        for cut in plain + 1..bytes.len() {
            assert!(ChunkMeta::decode(&bytes[..cut]).is_err(), "truncated at {cut} accepted");
        }
    }

    #[test]
    fn round_trips_and_merges_contiguous_runs() {
        let m = sample();
        let bytes = m.encode();
        // 3 extents: [0,1]@10, [3]@12, [4]@7.
        assert_eq!(bytes.len(), HEADER_LEN + 3 * EXTENT_HEADER_LEN + 4 * 4);
        assert_eq!(ChunkMeta::decode(&bytes).unwrap(), m);
        let empty = ChunkMeta { version: 1, len: 0, ..ChunkMeta::default() };
        assert_eq!(ChunkMeta::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(
                ChunkMeta::decode(&bytes[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(ChunkMeta::decode(&extra).is_err());
        let mut with_requests = sample();
        with_requests.note_request(RequestId { client: 1, seq: 1 });
        let mut extra = with_requests.encode();
        extra.push(0);
        assert!(ChunkMeta::decode(&extra).unwrap_err().contains("trailing"));
        let mut too_many = bytes.clone();
        too_many.extend_from_slice(&(MAX_REQUESTS as u32 + 1).to_le_bytes());
        assert!(ChunkMeta::decode(&too_many).unwrap_err().contains("request ids"));
        let mut bad_format = bytes.clone();
        bad_format[0] = 9;
        assert!(ChunkMeta::decode(&bad_format)
            .unwrap_err()
            .contains("format"));
        // Shrink the length so the last extent lies past the end.
        let mut short = bytes.clone();
        short[9..13].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        assert!(ChunkMeta::decode(&short).is_err());
        // A huge extent count with no data behind it must not allocate or panic.
        let mut huge = bytes[..HEADER_LEN].to_vec();
        huge[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ChunkMeta::decode(&huge).is_err());
        for garbage in [&b""[..], &[1u8; 3][..], &[0xff; 64][..]] {
            assert!(ChunkMeta::decode(garbage).is_err());
        }
    }

    #[test]
    fn rejects_overlapping_empty_and_overflowing_extents() {
        let header = |count: u32| {
            let mut v = vec![FORMAT_V1];
            v.extend_from_slice(&1u64.to_le_bytes());
            v.extend_from_slice(&(16 * BLOCK_SIZE).to_le_bytes());
            v.extend_from_slice(&count.to_le_bytes());
            v
        };
        let extent = |v: &mut Vec<u8>, start: u32, count: u32, phys: u64| {
            v.extend_from_slice(&start.to_le_bytes());
            v.extend_from_slice(&count.to_le_bytes());
            v.extend_from_slice(&phys.to_le_bytes());
            for _ in 0..count {
                v.extend_from_slice(&0u32.to_le_bytes());
            }
        };
        let mut overlap = header(2);
        extent(&mut overlap, 2, 3, 0);
        extent(&mut overlap, 4, 1, 100);
        assert!(ChunkMeta::decode(&overlap)
            .unwrap_err()
            .contains("overlaps"));
        let mut empty = header(1);
        extent(&mut empty, 0, 0, 0);
        assert!(ChunkMeta::decode(&empty).unwrap_err().contains("empty"));
        let mut overflow = header(1);
        extent(&mut overflow, 0, 2, u64::MAX);
        assert!(ChunkMeta::decode(&overflow)
            .unwrap_err()
            .contains("overflows"));
    }
}
