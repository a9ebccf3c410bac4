//! Inline files on the client: files whose bytes live in meta until they grow past a limit.
//!
//! An open inline file's bytes come with the open reply; reads are served from them, and
//! writes within the limit change them locally and are sent to meta in one request at flush
//! (close, fsync). A write past the limit, and every write after it, goes to the ordinary
//! write buffer instead; before that buffer is written out, the file moves to chunks (a
//! spill, see `SpillInlineReq`), and from then on it is an ordinary chunked file. So a file
//! written in one go talks to storage no earlier than a chunked one would. Another client that opened
//! the file earlier keeps reading the bytes it got until it opens the file again
//! (close-to-open consistency).

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_client::Retry;
use ember_proto::meta::{InlineOutcome, InlineWrite, SpillInlineReq, WriteInlineReq};
use ember_types::{InodeId, Layout, Status, StatusCode};

use super::{now_ns, InodeState, Vfs};

/// A spill stops writing chunks this long after it started: well inside meta's reservation
/// (`ember_meta::SPILL_HOLD`, 60 s) even with a storage request's whole deadline added.
const SPILL_BUDGET: Duration = Duration::from_secs(20);
/// Spills that lose their reservation are started again this many times.
const SPILL_ATTEMPTS: usize = 3;

/// The bytes of an open inline file as this client sees them.
pub(super) struct InlineFile {
    pub data: Vec<u8>,
    pub limit: u64,
    /// Writes applied to `data` but not yet sent to meta, in order.
    pub pending: Vec<InlineWrite>,
    /// A write went past the limit: the file moves to chunks before the write buffer is
    /// written out, and later writes go to that buffer too.
    pub spill_due: bool,
}

impl InlineFile {
    pub fn new(data: Vec<u8>, limit: u32) -> Self {
        InlineFile { data, limit: u64::from(limit), pending: Vec::new(), spill_due: false }
    }

    /// Applies a write that fits under the limit; false (and nothing changed) once one did not.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let end = offset + data.len() as u64;
        if self.spill_due || end > self.limit {
            self.spill_due = true;
            return false;
        }
        apply(&mut self.data, offset, data);
        self.pending.push(InlineWrite { offset, data: data.to_vec() });
        true
    }

    /// The bytes at `offset`, unless writes wait in the write buffer (read from chunks then).
    pub fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        if self.spill_due {
            return None;
        }
        let start = (offset as usize).min(self.data.len());
        let end = start.saturating_add(len).min(self.data.len());
        Some(self.data[start..end].to_vec())
    }
}

fn apply(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let (start, end) = (offset as usize, offset as usize + bytes.len());
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

fn outcome(code: i32) -> Result<InlineOutcome, Status> {
    InlineOutcome::try_from(code).map_err(|_| Status::internal(format!("unknown inline outcome {code} from meta")))
}

impl Vfs {
    /// Sends an open inline file's pending writes to meta. If the file has moved to chunks
    /// meanwhile, they are written there instead.
    pub(super) async fn flush_inline(&self, inode: InodeId, layout: &Layout, st: &mut InodeState) -> Result<(), Status> {
        let Some(file) = st.inline.as_mut() else { return Ok(()) };
        if file.pending.is_empty() || file.spill_due {
            return Ok(());
        }
        let req = WriteInlineReq { inode: inode.0, writes: file.pending.clone(), mtime_ns: Some(now_ns()) };
        let resp = self.client.meta(&req, Retry::Idempotent).await?;
        match outcome(resp.outcome)? {
            InlineOutcome::Done => {
                file.pending.clear();
                file.data = resp.data;
                st.size = file.data.len() as u64;
                Ok(())
            }
            InlineOutcome::TooLarge => self.spill(inode, layout, st).await,
            InlineOutcome::NotInline => self.pending_to_chunks(inode, layout, st).await,
        }
    }

    /// Moves an inline file to chunks with this client's pending writes applied. `st` may be
    /// a handle's state or, for a file nobody here has open, a blank one.
    pub(super) async fn spill(&self, inode: InodeId, layout: &Layout, st: &mut InodeState) -> Result<(), Status> {
        for _ in 0..SPILL_ATTEMPTS {
            match self.try_spill(inode, layout, st).await {
                Err(e) if e.code == StatusCode::SpillLost => tracing::info!(%inode, "spill lost its reservation; starting again"),
                other => return other,
            }
        }
        Err(Status::new(StatusCode::Busy, format!("could not move inline file {inode} to chunks")))
    }

    async fn try_spill(&self, inode: InodeId, layout: &Layout, st: &mut InodeState) -> Result<(), Status> {
        let started = Instant::now();
        let token = std::collections::hash_map::RandomState::new().hash_one((inode.0, started)) | 1;
        let start = SpillInlineReq { inode: inode.0, token, finish: false, size: 0 };
        let resp = self.client.meta(&start, Retry::Idempotent).await?;
        if outcome(resp.outcome)? == InlineOutcome::NotInline {
            return self.pending_to_chunks(inode, layout, st).await;
        }
        let mut content = resp.data;
        for w in st.inline.iter().flat_map(|f| &f.pending) {
            apply(&mut content, w.offset, &w.data);
        }
        let size = content.len() as u64;
        within_budget(started, inode)?;
        // Chunks of an inline file hold nothing live, only what an abandoned spill left.
        st.reports.add(self.client.truncate_chunks(inode, layout, 0).await?);
        within_budget(started, inode)?;
        if size > 0 {
            st.reports.add(self.client.write(inode, layout, 0, Bytes::from(content)).await?);
        }
        within_budget(started, inode)?;
        let finish = SpillInlineReq { inode: inode.0, token, finish: true, size };
        // NotInline here is a retried finish whose first answer was lost: done as well.
        self.client.meta(&finish, Retry::Idempotent).await?;
        tracing::debug!(%inode, size, "inline file moved to chunks");
        st.inline = None;
        st.size = st.size.max(size);
        Ok(())
    }

    /// Another client moved the file to chunks: this client's pending writes go there too.
    async fn pending_to_chunks(&self, inode: InodeId, layout: &Layout, st: &mut InodeState) -> Result<(), Status> {
        let Some(file) = st.inline.take() else { return Ok(()) };
        for w in file.pending {
            let end = w.offset + w.data.len() as u64;
            st.reports.add(self.client.write(inode, layout, w.offset, Bytes::from(w.data)).await?);
            st.unreported_end = Some(st.unreported_end.unwrap_or(0).max(end));
        }
        Ok(())
    }
}

fn within_budget(started: Instant, inode: InodeId) -> Result<(), Status> {
    if started.elapsed() > SPILL_BUDGET {
        return Err(Status::new(StatusCode::SpillLost, format!("spill of inode {inode} ran out of time")));
    }
    Ok(())
}
