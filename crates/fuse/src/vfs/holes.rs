//! fallocate(2) and lseek(2)'s SEEK_DATA / SEEK_HOLE: the holes of a file.
//!
//! Storage keeps an all-zero 4 KiB block as a hole, so zeroing a range (PUNCH_HOLE, ZERO_RANGE)
//! is a write of zeros that frees the whole blocks in it on every replica; the partial blocks at
//! its edges keep their other bytes. Space is allocated per block at write time (copy-on-write),
//! so reserving space (mode 0, KEEP_SIZE) cannot be promised and only the length changes, as on
//! other copy-on-write file systems. SEEK_DATA and SEEK_HOLE read the chunks' block lists from
//! each chain's primary.

use bytes::Bytes;
use ember_types::{InodeId, Layout, Status, StatusCode, BLOCK_SIZE};

use super::{Handle, Kill, Vfs};

const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;
/// Zeros sent in one storage write.
const ZERO_PIECE: usize = 1 << 20;
static ZEROS: [u8; ZERO_PIECE] = [0; ZERO_PIECE];
/// Zero pieces written at once.
const ZERO_BATCH: usize = 16;

/// What a fallocate mode asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fallocate {
    /// Zero the range (PUNCH_HOLE or ZERO_RANGE).
    zero: bool,
    keep_size: bool,
}

fn parse_mode(mode: i32) -> Result<Fallocate, Status> {
    if mode & !(KEEP_SIZE | PUNCH_HOLE | ZERO_RANGE) != 0 {
        return Err(Status::new(StatusCode::Unsupported, format!("fallocate mode {mode:#x}")));
    }
    let punch = mode & PUNCH_HOLE != 0;
    if punch && (mode & KEEP_SIZE == 0 || mode & ZERO_RANGE != 0) {
        return Err(Status::invalid("PUNCH_HOLE goes with KEEP_SIZE and without ZERO_RANGE"));
    }
    Ok(Fallocate { zero: punch || mode & ZERO_RANGE != 0, keep_size: mode & KEEP_SIZE != 0 })
}

/// Whether `whence` asks for data (SEEK_DATA) or a hole (SEEK_HOLE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekFor {
    Data,
    Hole,
}

impl Vfs {
    pub async fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<(), Status> {
        let op = parse_mode(mode)?;
        let end = offset.checked_add(len).filter(|_| len > 0).ok_or_else(|| Status::invalid(format!("fallocate of {len} bytes at {offset}")))?;
        let h = self.handle(fh)?;
        let _mark = self.statahead.mark_when_done(h.inode.0);
        let size = h.state.lock().await.size;
        let zero_end = end.min(size);
        if op.zero && offset < zero_end {
            self.zero_range(fh, &h, offset, zero_end).await?;
        }
        if !op.keep_size && end > size {
            self.setattr(h.inode.0, None, None, None, Some(end), None, None, Kill::default()).await?;
        }
        Ok(())
    }

    /// Writes zeros over `start..end` (inside the file): through the ordinary write path for an
    /// inline file, else straight to storage after what is buffered.
    async fn zero_range(&self, fh: u64, h: &Handle, start: u64, end: u64) -> Result<(), Status> {
        let layout = h.file_layout()?;
        if h.state.lock().await.inline.is_some() {
            let zeros = vec![0u8; (end - start) as usize];
            return self.write(fh, start, &zeros).await.map(|_| ());
        }
        let mut st = h.state.lock().await;
        self.flush_buffer(h.inode, layout, &mut st).await?;
        let pieces = zero_pieces(start, end);
        for batch in pieces.chunks(ZERO_BATCH) {
            let written = self.client.write_extents(h.inode, layout, batch.to_vec()).await?;
            st.reports.add(written);
        }
        // Reported at the next flush with the modification time; the length stays.
        st.unreported_end = Some(st.unreported_end.unwrap_or(0).max(end));
        Ok(())
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE: the first byte at or after `offset` that is data,
    /// or that lies in a hole (the end of the file counts as one). `NoSuchOffset` (ENXIO) when
    /// `offset` is at or past the end, or no data follows it.
    pub async fn seek(&self, fh: u64, offset: u64, want: SeekFor) -> Result<u64, Status> {
        let h = self.handle(fh)?;
        let layout = h.file_layout()?;
        let (size, inline) = {
            let mut st = h.state.lock().await;
            self.flush_buffer(h.inode, layout, &mut st).await?;
            (st.size, st.inline.is_some())
        };
        let past_end = || Status::new(StatusCode::NoSuchOffset, format!("offset {offset} is past the data of a {size}-byte file"));
        if offset >= size {
            return Err(past_end());
        }
        if inline {
            return Ok(if want == SeekFor::Data { offset } else { size });
        }
        let found = self.scan_blocks(h.inode, layout, offset, size, want).await?;
        match (found, want) {
            (Some(at), _) => Ok(at.max(offset)),
            (None, SeekFor::Hole) => Ok(size),
            (None, SeekFor::Data) => Err(past_end()),
        }
    }

    /// The start of the first block from `offset`'s block on (before `size`) that is stored
    /// (`Data`) or a hole (`Hole`), chunk by chunk.
    async fn scan_blocks(&self, inode: InodeId, layout: &Layout, offset: u64, size: u64, want: SeekFor) -> Result<Option<u64>, Status> {
        let cs = u64::from(layout.chunk_size);
        let bs = u64::from(BLOCK_SIZE);
        let mut at = offset / bs * bs;
        while at < size {
            let index = (at / cs) as u32;
            let chunk_start = u64::from(index) * cs;
            let (len, stored) = self.client.stored_blocks(inode, layout, index).await?.unwrap_or_default();
            let chunk_end = (chunk_start + cs).min(size);
            while at < chunk_end {
                let block = ((at - chunk_start) / bs) as u32;
                let is_data = at - chunk_start < u64::from(len) && stored.binary_search(&block).is_ok();
                if is_data == (want == SeekFor::Data) {
                    return Ok(Some(at));
                }
                at += bs;
            }
        }
        Ok(None)
    }
}

/// Zeros for `start..end` in pieces that, but for the first and last, start and end on
/// `ZERO_PIECE` boundaries: inner edges fall on whole blocks, so no block is rewritten twice.
fn zero_pieces(start: u64, end: u64) -> Vec<(u64, Bytes)> {
    let piece = ZERO_PIECE as u64;
    let mut pieces = Vec::new();
    let mut at = start;
    while at < end {
        let next = ((at / piece + 1) * piece).min(end);
        pieces.push((at, Bytes::from_static(&ZEROS[..(next - at) as usize])));
        at = next;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pieces_cover_the_range_with_aligned_inner_edges() {
        let p = zero_pieces(300_000, 2_500_000);
        let edges: Vec<(u64, usize)> = p.iter().map(|(at, b)| (*at, b.len())).collect();
        assert_eq!(edges, vec![(300_000, 748_576), (1 << 20, 1 << 20), (2 << 20, 402_848)]);
        assert!(zero_pieces(5, 5).is_empty());
    }

    #[test]
    fn modes_are_checked_as_linux_does() {
        assert_eq!(parse_mode(0).unwrap(), Fallocate { zero: false, keep_size: false });
        assert_eq!(parse_mode(KEEP_SIZE).unwrap(), Fallocate { zero: false, keep_size: true });
        assert_eq!(parse_mode(PUNCH_HOLE | KEEP_SIZE).unwrap(), Fallocate { zero: true, keep_size: true });
        assert_eq!(parse_mode(ZERO_RANGE).unwrap(), Fallocate { zero: true, keep_size: false });
        assert_eq!(parse_mode(PUNCH_HOLE).unwrap_err().code, StatusCode::InvalidArgument);
        assert_eq!(parse_mode(PUNCH_HOLE | ZERO_RANGE | KEEP_SIZE).unwrap_err().code, StatusCode::InvalidArgument);
        assert_eq!(parse_mode(libc::FALLOC_FL_COLLAPSE_RANGE).unwrap_err().code, StatusCode::Unsupported);
    }
}
