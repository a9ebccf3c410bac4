//! `blocks.dat`: the target's data file, its block allocator and its group-committed fdatasync.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ember_types::BLOCK_SIZE;

use super::bitmap::BlockBitmap;
use super::sync::GroupSync;
use super::EngineError;

pub(crate) const BS: u64 = BLOCK_SIZE as u64;
/// Growth below this many blocks is rounded up, so the file never grows a block at a time.
const MIN_GROW_BLOCKS: u64 = 64;

pub(crate) struct BlockFile {
    file: File,
    alloc: Mutex<BlockBitmap>,
    grow_blocks: u64,
    /// Hard cap on the file size in blocks (a configured target capacity), if any.
    max_blocks: Option<u64>,
    sync: GroupSync,
}

impl BlockFile {
    /// Opens or creates the data file. The bitmap starts with every block free; the engine
    /// marks the blocks referenced by committed metadata afterwards.
    pub fn open(
        path: &Path,
        grow_bytes: u64,
        max_bytes: Option<u64>,
    ) -> Result<BlockFile, EngineError> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(EngineError::from_io)?;
        if !existed {
            // Make the new directory entry durable, or a crash could lose the whole file while
            // committed metadata points into it.
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(EngineError::from_io)?;
            }
        }
        let len_blocks = file.metadata().map_err(EngineError::from_io)?.len() / BS;
        let mut bitmap = BlockBitmap::new();
        bitmap.grow(len_blocks);
        Ok(BlockFile {
            file,
            alloc: Mutex::new(bitmap),
            grow_blocks: (grow_bytes / BS).max(MIN_GROW_BLOCKS),
            max_blocks: max_bytes.map(|b| b / BS),
            sync: GroupSync::new("blocks.dat"),
        })
    }

    /// (file size in blocks, blocks in use).
    pub fn counts(&self) -> (u64, u64) {
        let bm = self.lock();
        (bm.len(), bm.used())
    }

    /// Marks a block referenced by committed metadata at open; false if it was already claimed.
    /// A block past the end of the file (the file lost its tail) extends the file with zeros, so
    /// reading it fails its CRC instead of the engine refusing to start.
    pub fn claim_at_open(&self, phys: u64) -> Result<bool, EngineError> {
        let mut bm = self.lock();
        if phys >= bm.len() {
            tracing::error!(
                phys,
                file_blocks = bm.len(),
                "committed block lies past the end of blocks.dat"
            );
            self.file
                .set_len((phys + 1) * BS)
                .map_err(EngineError::from_io)?;
            bm.grow(phys + 1);
        }
        Ok(bm.mark_used(phys))
    }

    /// Allocates `n` blocks, lowest first, growing the file when too few are free.
    /// Allocation is in memory only: if the process dies before the metadata commit, the blocks
    /// are simply free again after the bitmap is rebuilt at open.
    pub fn allocate(&self, n: usize) -> Result<Vec<u64>, EngineError> {
        let mut bm = self.lock();
        let free = bm.free();
        if free < n as u64 {
            self.grow(&mut bm, n as u64 - free)?;
        }
        bm.alloc_lowest(n).ok_or_else(|| {
            EngineError::Io(std::io::Error::other("allocator lost blocks after growing"))
        })
    }

    /// Returns blocks to the free pool. Call only once no durable metadata references them.
    pub fn release(&self, blocks: &[u64]) {
        let mut bm = self.lock();
        for &b in blocks {
            if !bm.release(b) {
                tracing::error!(block = b, "released a block that was not allocated");
            }
        }
    }

    /// Grows the file by an eighth of its size, at least `MIN_GROW_BLOCKS` and at most the
    /// configured step (a small target stays small, a big one grows in big contiguous steps),
    /// or by just what is needed if that does not fit.
    fn grow(&self, bm: &mut BlockBitmap, needed: u64) -> Result<(), EngineError> {
        let old = bm.len();
        let minimal = needed.div_ceil(MIN_GROW_BLOCKS) * MIN_GROW_BLOCKS;
        let mut step = (old / 8).clamp(MIN_GROW_BLOCKS, self.grow_blocks.max(MIN_GROW_BLOCKS)).max(minimal);
        if let Some(max) = self.max_blocks {
            step = step.min(max.saturating_sub(old));
            if step < needed {
                return Err(EngineError::NoSpace);
            }
        }
        let result = match self.extend(old, step) {
            Err(EngineError::NoSpace) if step > minimal => {
                self.extend(old, minimal).map(|()| minimal)
            }
            other => other.map(|()| step),
        };
        let grown =
            result.inspect_err(|e| tracing::warn!(error = %e, needed, "cannot grow blocks.dat"))?;
        bm.grow(old + grown);
        tracing::debug!(blocks = old + grown, "grew blocks.dat");
        Ok(())
    }

    /// Extends the file by `add` blocks, reserving disk space up front where the file system can,
    /// so that running out of space shows up here as NoSpace rather than later in a pwrite.
    fn extend(&self, old: u64, add: u64) -> Result<(), EngineError> {
        let (start, len) = (old * BS, add * BS);
        match fallocate(&self.file, start, len) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                ) =>
            {
                self.file.set_len(start + len).map_err(EngineError::from_io)
            }
            Err(e) => Err(EngineError::from_io(e)),
        }
    }

    /// Writes block images (`images` holds `phys.len()` blocks back to back) with one pwrite per
    /// physically contiguous run.
    pub fn write_blocks(&self, phys: &[u64], images: &[u8]) -> Result<(), EngineError> {
        debug_assert_eq!(images.len() as u64, phys.len() as u64 * BS);
        let mut i = 0;
        while i < phys.len() {
            let run = run_len(&phys[i..], |&p| p);
            let bytes = &images[i * BS as usize..(i + run) * BS as usize];
            self.file
                .write_all_at(bytes, phys[i] * BS)
                .map_err(EngineError::from_io)?;
            i += run;
        }
        Ok(())
    }

    /// Reads `buf.len() / BS` consecutive blocks starting at `phys`.
    pub fn read_blocks(&self, phys: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, phys * BS)
    }

    /// Makes every block write that completed before this call durable (group-committed).
    pub fn sync_data(&self) -> Result<(), EngineError> {
        self.sync
            .sync_after_write(|| self.file.sync_data().map_err(EngineError::from_io))
    }

    /// Whether an earlier fdatasync failed (the file's contents can no longer be trusted).
    pub fn poisoned(&self) -> Option<EngineError> {
        self.sync.is_poisoned()
    }

    fn lock(&self) -> MutexGuard<'_, BlockBitmap> {
        self.alloc.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Length of the physically contiguous run at the start of `items` (0 if empty).
pub(crate) fn run_len<T>(items: &[T], phys: impl Fn(&T) -> u64) -> usize {
    let mut n = 1;
    while n < items.len() && phys(&items[n]) == phys(&items[n - 1]) + 1 {
        n += 1;
    }
    n.min(items.len())
}

#[cfg(target_os = "linux")]
fn fallocate(file: &File, start: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(start), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    loop {
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, start, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn fallocate(_file: &File, _start: u64, _len: u64) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP))
}
