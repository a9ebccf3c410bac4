//! copy_file_range(2): chunked files are copied storage to storage, so the bytes pass through
//! neither the kernel nor this process; a copy from or to an inline file (at most 64 KiB in
//! meta) goes through this client's ordinary read and write paths.

use ember_types::Status;

use super::Vfs;

/// Bytes copied by one call at most; copy_file_range may copy less than asked, and callers
/// (cp, the kernel's own loops) ask again for the rest.
const MAX_COPY: u64 = 64 << 20;
/// The same through this client, when an inline file takes part.
const MAX_CLIENT_COPY: u64 = 1 << 20;

impl Vfs {
    /// Copies up to `len` bytes at `off_in` of `fh_in` to `off_out` of `fh_out`; returns how
    /// many (0 at or past the source's end).
    pub async fn copy_file_range(&self, fh_in: u64, off_in: u64, fh_out: u64, off_out: u64, len: u64) -> Result<u32, Status> {
        let (src, dst) = (self.handle(fh_in)?, self.handle(fh_out)?);
        let _mark = self.statahead.mark_when_done(dst.inode.0);
        let (src_layout, dst_layout) = (src.file_layout()?, dst.file_layout()?);
        // What is buffered here goes out first: storage copies what it holds.
        let (size_in, src_inline) = {
            let mut st = src.state.lock().await;
            self.flush_buffer(src.inode, src_layout, &mut st).await?;
            (st.size, st.inline.is_some())
        };
        let dst_inline = {
            let mut st = dst.state.lock().await;
            self.flush_buffer(dst.inode, dst_layout, &mut st).await?;
            st.inline.is_some()
        };
        let cap = if src_inline || dst_inline { MAX_CLIENT_COPY } else { MAX_COPY };
        let n = len.min(size_in.saturating_sub(off_in)).min(cap);
        if n == 0 {
            return Ok(0);
        }
        if src_inline || dst_inline {
            let data = self.read(fh_in, off_in, n as u32).await?;
            return self.write(fh_out, off_out, &data).await;
        }
        let copied = self.client.copy_range((src.inode, src_layout, off_in), (dst.inode, dst_layout, off_out), n).await?;
        let mut st = dst.state.lock().await;
        st.reports.add(copied);
        let end = off_out + n;
        st.size = st.size.max(end);
        st.unreported_end = Some(st.unreported_end.unwrap_or(0).max(end));
        Ok(n as u32)
    }
}
