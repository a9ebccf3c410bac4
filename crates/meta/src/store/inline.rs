//! Inline files: their bytes live in the KV (`INLN`) until they grow past their limit.
//!
//! A client applies its buffered writes with `write_inline`, one transaction that rewrites the
//! bytes. A write past the limit is refused (`TooLarge`); the client then moves the file to
//! chunks with `spill_inline`: the start reserves the file for the client's token for
//! `SPILL_HOLD` and returns the bytes; the client writes them, with its own writes applied, to
//! the file's chunks; the finish with the same token turns the file into a chunked one. While
//! the reservation holds, other inline changes are refused as busy (clients retry), so none is
//! lost under the spilled bytes. A change after the reservation expired cancels it, so a late
//! finish fails instead of dropping that change.

use std::time::Duration;

use ember_proto::meta::{Attr, InlineOutcome, InlineWrite};
use ember_types::InodeId;

use super::file::require_file;
use super::{now_ns, MetaStore, Tx};
use crate::schema::{InlineRecord, InodeRecord};
use crate::MetaError;

/// How long a spill reserves a file. Clients stop writing chunks well before (the spill's own
/// writes must all land inside the reservation).
pub const SPILL_HOLD: Duration = Duration::from_secs(60);

/// The answer to an inline write or spill step.
#[derive(Debug)]
pub enum InlineReply {
    Done { attr: Attr, data: Vec<u8> },
    Refused(InlineOutcome),
}

impl MetaStore {
    /// Applies `writes` in order to an inline file and sets its mtime.
    pub fn write_inline(&self, ino: InodeId, writes: &[InlineWrite], mtime_ns: Option<i64>) -> Result<InlineReply, MetaError> {
        self.run(|t| {
            let Some(mut rec) = inline_inode(t, ino)? else { return Ok(InlineReply::Refused(InlineOutcome::NotInline)) };
            let now = now_ns();
            let mut inline = unreserved(t, ino, now)?;
            for w in writes.iter().filter(|w| !w.data.is_empty()) {
                let end = w.offset.saturating_add(w.data.len() as u64);
                if end > u64::from(rec.inline_limit) {
                    return Ok(InlineReply::Refused(InlineOutcome::TooLarge));
                }
                let (start, end) = (w.offset as usize, end as usize);
                if inline.data.len() < end {
                    inline.data.resize(end, 0);
                }
                inline.data[start..end].copy_from_slice(&w.data);
            }
            rec.size = inline.data.len() as u64;
            let m = mtime_ns.unwrap_or(now);
            rec.mtime_ns = rec.mtime_ns.max(m);
            rec.ctime_ns = rec.ctime_ns.max(m);
            t.put_inline(ino, &inline);
            t.put_inode(ino, &rec);
            Ok(InlineReply::Done { attr: t.attr(ino, &rec)?, data: inline.data })
        })
    }

    /// One step of moving an inline file to chunks (see the module documentation): the start
    /// returns the bytes, the finish makes the file `size` bytes long in chunks.
    pub fn spill_inline(&self, ino: InodeId, token: u64, finish: bool, size: u64) -> Result<InlineReply, MetaError> {
        if token == 0 {
            return Err(MetaError::InvalidArgument("a spill needs a non-zero token".into()));
        }
        self.run(|t| {
            let Some(mut rec) = inline_inode(t, ino)? else { return Ok(InlineReply::Refused(InlineOutcome::NotInline)) };
            let now = now_ns();
            let mut inline = t.inline(ino)?;
            let held_by_other = reserved(&inline, now) && inline.spill_token != token;
            if finish {
                if inline.spill_token != token {
                    return Err(MetaError::SpillLost(format!("inode {ino}")));
                }
                rec.inline_limit = 0;
                rec.size = size;
                rec.mtime_ns = rec.mtime_ns.max(now);
                rec.ctime_ns = rec.ctime_ns.max(now);
                t.delete_inline(ino);
                t.put_inode(ino, &rec);
                return Ok(InlineReply::Done { attr: t.attr(ino, &rec)?, data: Vec::new() });
            }
            if held_by_other {
                return Err(busy(ino));
            }
            inline.spill_token = token;
            inline.spill_deadline_ns = now.saturating_add(SPILL_HOLD.as_nanos() as i64);
            t.put_inline(ino, &inline);
            Ok(InlineReply::Done { attr: t.attr(ino, &rec)?, data: inline.data })
        })
    }
}

/// The inode of a file, if it is inline.
fn inline_inode(t: &mut Tx<'_>, ino: InodeId) -> Result<Option<InodeRecord>, MetaError> {
    let rec = t.require_inode(ino)?;
    require_file(ino, &rec)?;
    Ok((rec.inline_limit > 0).then_some(rec))
}

/// Sets an inline file's bytes to `size` (cut, or zero-filled) for a setattr.
pub(super) fn resize(t: &mut Tx<'_>, ino: InodeId, rec: &InodeRecord, size: u64) -> Result<(), MetaError> {
    if size > u64::from(rec.inline_limit) {
        return Err(MetaError::InvalidArgument(format!(
            "inline file {ino} must move to chunks before it grows to {size} bytes"
        )));
    }
    let mut inline = unreserved(t, ino, now_ns())?;
    inline.data.resize(size as usize, 0);
    t.put_inline(ino, &inline);
    Ok(())
}

/// The file's bytes for a change: refused while a spill holds them, and with an expired
/// reservation cancelled.
fn unreserved(t: &mut Tx<'_>, ino: InodeId, now: i64) -> Result<InlineRecord, MetaError> {
    let inline = t.inline(ino)?;
    if reserved(&inline, now) {
        return Err(busy(ino));
    }
    Ok(InlineRecord { data: inline.data, ..InlineRecord::default() })
}

fn reserved(inline: &InlineRecord, now: i64) -> bool {
    inline.spill_token != 0 && inline.spill_deadline_ns > now
}

fn busy(ino: InodeId) -> MetaError {
    MetaError::Busy(format!("inode {ino} is being moved to chunks"))
}
