//! The chunk engine: stores the chunks of one storage target (a directory on one disk).
//!
//! # Layout on disk
//!
//! ```text
//! <dir>/blocks.dat   data file, an array of 4 KiB blocks; grows by an eighth (at most 64 MiB)
//! <dir>/meta/        fjall database
//!     keyspace "chunks":  key = ChunkId::to_bytes() (12 B big-endian: inode, index)
//!                         value = chunk record, see `record.rs` (version, length, extents, CRCs)
//!     keyspace "staged":  key = physical block (u64 big-endian), value = its 4 KiB image:
//!                         blocks of small writes not yet synced in blocks.dat, see `staging.rs`
//!     keyspace "tails":   key = tail id (u64 big-endian), value = the bytes of a chunk's short
//!                         last block up to its trailing zeros, see `tails.rs`
//!     keyspace "engine":  key "format" = [2u8, BLOCK_SIZE as u32 LE]
//! ```
//!
//! Big-endian keys make the chunks of one inode a contiguous, index-ordered key range, so
//! `remove_chunks` is one range scan.
//!
//! # Space
//!
//! Space is allocated per 4 KiB block, except that a chunk's last block holding at most
//! `tail_bytes` (2 KiB) of data is kept as a tail in fjall: a 10 KiB chunk uses 2 blocks and a
//! 2 KiB tail, a 13 KiB one 4 blocks. The allocation bitmap
//! lives only in memory and is rebuilt at open from the chunk records: a block is in use exactly
//! when a committed record references it. Blocks written by a write that crashed before its
//! metadata commit (orphans) are therefore free again after a restart, without any log. The
//! allocator hands out the lowest free blocks so the file stays compact; it grows `blocks.dat`
//! (fallocate, falling back to set_len) only when no block is free. A full disk is reported as
//! [`EngineError::NoSpace`] and leaves the metadata untouched.
//!
//! # Writes: block-level copy-on-write
//!
//! 1. Lock the chunk exclusively and load its record.
//! 2. Split the range into logical blocks; for a partially covered edge block, start from the
//!    existing block image (CRC-verified) or zeros for a hole. A chain's primary does this step
//!    alone ([`ChunkEngine::block_images`]) and sends the resulting images (`images.rs`) to its
//!    replicas, which start at step 3 ([`ChunkEngine::write_blocks_at`]).
//! 3. Allocate a new physical block for every touched logical block and pwrite the images (one
//!    pwrite per physically contiguous run). A large write then fdatasyncs `blocks.dat` (group
//!    commit); a small one (at most `journal_blocks` blocks, while the journal is within its
//!    budget) instead puts its images into the batch of step 4 and syncs `blocks.dat` later
//!    (`staging.rs`).
//! 4. Commit the new record (version + 1, length = max(old, end of write) as the images say,
//!    new block refs and CRCs) to fjall and persist the journal with fdatasync (group commit).
//! 5. Only now free the replaced blocks: the durable metadata no longer references them.
//!
//! A crash before step 4 completes leaves the old record in place (the new blocks are orphans);
//! after it, the new record is durable, and so are the images (in `blocks.dat` or staged). In-memory state is never ahead of the disk in a way a
//! crash could expose: allocations are only in memory (lost on crash = freed), and frees happen
//! after the commit is durable. A failed fsync poisons the engine (all later mutations fail),
//! because after one the kernel may have dropped the dirty pages.
//!
//! Truncate is the same scheme: blocks past the new end are freed after the commit, and a partial
//! last block whose tail is not already zero is rewritten copy-on-write with a zeroed tail, which
//! keeps the invariant that bytes of the last block past the chunk length are zero (so growing a
//! chunk again exposes zeros).
//!
//! # Reads
//!
//! A read takes the chunk lock shared, clips the range to the chunk length, reads the mapped
//! blocks (one pread per physically contiguous run), verifies the CRC32C of every block it touches
//! and fills holes with zeros.
//!
//! # Concurrency
//!
//! The API is blocking and `ChunkEngine` is `Send + Sync`; call it from many threads (e.g. from
//! `spawn_blocking`). Operations on one chunk serialize on a sharded reader/writer lock table;
//! other chunks proceed in parallel. Concurrent writers share fdatasyncs of `blocks.dat` and
//! fjall journal persists through leader/follower group commit (`sync.rs`); the journal's
//! fdatasync runs outside fjall's writer lock (`ember_kv::JournalSync`), so writers keep
//! committing records while it runs.

mod bitmap;
mod error;
mod images;
mod locks;
mod record;
mod space;
mod staging;
mod sync;
mod tails;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use ember_types::{ChunkId, InodeId, BLOCK_SIZE, MAX_CHUNK_SIZE};
use ember_kv::JournalSync;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

pub use error::EngineError;
pub use images::BlockImages;
use locks::LockTable;
pub use record::{RequestId, MAX_REQUESTS};
use record::{blocks_for, BlockRef, ChunkMeta};
use space::{run_len, BlockFile, BS};
use staging::{JournalBudget, Staging, SETTLE_BLOCKS};
use sync::GroupSync;
use tails::{is_tail, trimmed_len, Tails};

const DATA_FILE: &str = "blocks.dat";
const META_DIR: &str = "meta";
const FORMAT_KEY: &str = "format";
/// Format 2 added the `staged` keyspace; a format-1 target has none and is upgraded at open.
const FORMAT_VERSION: u8 = 3;
/// Longest run of blocks read with one pread (bounds the temporary buffer to 1 MiB).
const MAX_READ_RUN: usize = 256;
/// Chunks removed per metadata batch by `remove_chunks` (bounds memory and lock hold times).
const REMOVE_BATCH: usize = 1024;
/// Journal bytes kept before fjall flushes memtables to drop the oldest journal (the least
/// fjall accepts).
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// Tunables of one engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Largest chunk length accepted; writes or truncates past it fail with `TooLarge`.
    pub max_chunk_size: u32,
    /// The most `blocks.dat` grows at a time when no block is free (rounded to 4 KiB); it
    /// grows by an eighth of its size up to that.
    pub grow_bytes: u64,
    /// Optional cap on the size of `blocks.dat`; growing past it fails with `NoSpace`.
    pub capacity_bytes: Option<u64>,
    /// Changes writing at most this many new blocks journal the images with their record: one
    /// fdatasync instead of two (0 turns it off).
    pub journal_blocks: u32,
    /// Journal size up to which small changes always stage; past it, only while the journals
    /// take at most a quarter of the bytes stored (`staging.rs`, budget).
    pub staging_journal_bytes: u64,
    /// A chunk's last block holding at most this many bytes before its trailing zeros is kept
    /// as a tail in the metadata database, not in a 4 KiB block (`tails.rs`; 0 turns it off).
    pub tail_bytes: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_chunk_size: MAX_CHUNK_SIZE,
            grow_bytes: 64 << 20,
            capacity_bytes: None,
            journal_blocks: 16,
            staging_journal_bytes: 4 << 20,
            tail_bytes: 2048,
        }
    }
}

/// (block index, CRC32C) of every stored block of a chunk, in block order.
pub type BlockMap = Vec<(u32, u32)>;

/// A chunk as a change to it starts: its current state, and whether it already applied the
/// change's request (a retry, then, not to be applied again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeBase {
    pub current: Option<ChunkInfo>,
    pub applied: bool,
}

impl ChangeBase {
    /// The version the change builds on (0 for a chunk that does not exist).
    pub fn version(&self) -> u64 {
        self.current.map_or(0, |i| i.version)
    }
}

/// Committed state of one chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Incremented by every committed write or truncate; 0 means "never written".
    pub version: u64,
    pub len: u32,
    /// Hash of every block's index and CRC32C: replicas with equal versions but different
    /// histories (a write that never committed) differ here.
    pub digest: u64,
    /// Blocks stored (holes take none).
    pub blocks: u32,
}

/// Space accounting of one target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub block_size: u32,
    /// Size of `blocks.dat` in blocks.
    pub total_blocks: u64,
    /// Blocks referenced by committed chunks (plus blocks of writes in flight).
    pub used_blocks: u64,
    /// Bytes of the short last blocks kept as tails, outside `blocks.dat`.
    pub tail_bytes: u64,
    pub chunks: u64,
    /// Size of the file system holding the target (or the configured capacity, if smaller).
    pub capacity_bytes: u64,
    /// Space available to unprivileged users on the file system plus free blocks inside
    /// `blocks.dat` (bounded by the configured capacity, if any).
    pub free_bytes: u64,
}

/// Chunk storage of one target. See the module documentation for the design.
pub struct ChunkEngine {
    dir: PathBuf,
    opts: EngineOptions,
    blocks: BlockFile,
    db: Database,
    chunks: Keyspace,
    meta_sync: GroupSync,
    journal: JournalSync,
    staging: Staging,
    staging_budget: JournalBudget,
    tails: Tails,
    locks: LockTable,
    chunk_count: AtomicU64,
    crash_points: OnceLock<CrashPoints>,
}

/// Asked at every persistence point (`"data.write"`, `"meta.commit"`, `"meta.persisted"`)
/// whether the process dies there. Only the deterministic simulation installs one: the
/// engine then fails the operation at that point, with what is on disk exactly as a `kill -9`
/// at that instant would leave it, and the simulation crashes the node.
pub type CrashPoints = Arc<dyn Fn(&'static str) -> bool + Send + Sync>;

impl ChunkEngine {
    /// Creates the target in `dir` or reopens it, rebuilding the block allocator from the
    /// committed chunk records (which reclaims blocks of writes that never committed).
    pub fn open(dir: &Path, opts: EngineOptions) -> Result<ChunkEngine, EngineError> {
        if opts.max_chunk_size == 0 {
            return Err(EngineError::InvalidArgument(
                "max_chunk_size must be positive".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(EngineError::from_io)?;
        // fjall takes a lock file, so a second engine on the same directory fails here.
        // Staged images and tails pass through the journal: fjall's 512 MiB default would let
        // a small target's journal hold many times its data.
        let db = Database::builder(dir.join(META_DIR))
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .open()
            .map_err(EngineError::from_fjall)?;
        let chunks = db
            .keyspace("chunks", KeyspaceCreateOptions::default)
            .map_err(EngineError::from_fjall)?;
        let staged = db
            .keyspace("staged", KeyspaceCreateOptions::default)
            .map_err(EngineError::from_fjall)?;
        let tails = Tails::open(db.keyspace("tails", KeyspaceCreateOptions::default).map_err(EngineError::from_fjall)?)?;
        check_format(&db)?;
        let blocks = BlockFile::open(&dir.join(DATA_FILE), opts.grow_bytes, opts.capacity_bytes)?;
        let images = staging::load(&staged)?;
        let (chunk_count, crcs) = claim_committed_blocks(&chunks, &blocks, &tails, &images)?;
        staging::replay(&db, &staged, &blocks, &images, &crcs)?;
        let (total, used) = blocks.counts();
        tracing::info!(dir = %dir.display(), chunks = chunk_count, total_blocks = total, used_blocks = used, "chunk engine open");
        let staging_budget = JournalBudget::new(opts.staging_journal_bytes);
        Ok(ChunkEngine {
            dir: dir.to_path_buf(),
            opts,
            blocks,
            db,
            chunks,
            meta_sync: GroupSync::new("chunk metadata"),
            journal: JournalSync::new(&dir.join(META_DIR)),
            staging: Staging::new(staged),
            staging_budget,
            tails,
            locks: LockTable::new(),
            chunk_count: AtomicU64::new(chunk_count),
            crash_points: OnceLock::new(),
        })
    }

    /// Installs the simulation's crash decisions (once per engine).
    pub fn set_crash_points(&self, points: CrashPoints) {
        let _ = self.crash_points.set(points);
    }

    fn persistence_point(&self, point: &'static str) -> Result<(), EngineError> {
        match self.crash_points.get() {
            Some(dies) if dies(point) => Err(EngineError::Crashed(point)),
            _ => Ok(()),
        }
    }

    /// Writes `data` at `offset` inside the chunk; durable (data and metadata fsynced) before it
    /// returns. An empty write changes nothing and returns the current state.
    pub fn write(&self, chunk: ChunkId, offset: u32, data: &[u8]) -> Result<ChunkInfo, EngineError> {
        let _guard = self.locks.write(chunk);
        let old = self.load(chunk)?;
        let images = self.images_for(chunk, old.as_ref(), &[(offset, Bytes::copy_from_slice(data))])?;
        self.apply_images(chunk, old, &images, None)
    }

    /// The block images a write of `pieces` ((offset, bytes), in offset order, apart) makes
    /// of the chunk as it is now. The caller keeps the chunk from changing until it applies
    /// them (the service's chunk lock).
    pub fn block_images(&self, chunk: ChunkId, pieces: &[(u32, Bytes)]) -> Result<BlockImages, EngineError> {
        let _guard = self.locks.read(chunk);
        let old = self.load(chunk)?;
        self.images_for(chunk, old.as_ref(), pieces)
    }

    /// Stores `images`, but only if the chunk is at `base_version` (0 = missing), so that every
    /// replica applies a chunk's writes in the same order and reaches the same version;
    /// otherwise `VersionMismatch` and nothing changes. `request` is remembered with the chunk
    /// (see [`change_base`](Self::change_base)). Durable on return.
    pub fn write_blocks_at(
        &self,
        chunk: ChunkId,
        base_version: u64,
        images: &BlockImages,
        request: Option<RequestId>,
    ) -> Result<ChunkInfo, EngineError> {
        self.check_end(u64::from(images.len()), "write")?;
        let _guard = self.locks.write(chunk);
        let old = self.load(chunk)?;
        check_base(old.as_ref(), Some(base_version))?;
        let current = old.as_ref().map_or(0, |m| m.len);
        if images.len() < current {
            return Err(EngineError::InvalidArgument(format!(
                "block images would shrink chunk {chunk} from {current} to {} bytes",
                images.len()
            )));
        }
        self.apply_images(chunk, old, images, request)
    }

    /// The chunk's state as a change starts, and whether it has applied `request` (or a later
    /// write of the same client): a retry of a write whose answer was lost, or a late duplicate.
    /// One lookup, because it sits on every write's path.
    pub fn change_base(&self, chunk: ChunkId, request: Option<RequestId>) -> Result<ChangeBase, EngineError> {
        let _guard = self.locks.read(chunk);
        let meta = self.load(chunk)?;
        let applied = request.is_some_and(|r| meta.as_ref().is_some_and(|m| m.has_applied(r)));
        Ok(ChangeBase { current: meta.map(|m| m.info()), applied })
    }

    /// The request ids the chunk remembers, oldest first (what a sync copies with its blocks).
    pub fn requests(&self, chunk: ChunkId) -> Result<Vec<RequestId>, EngineError> {
        let _guard = self.locks.read(chunk);
        Ok(self.load(chunk)?.map(|m| m.requests).unwrap_or_default())
    }

    /// The images of a write of `pieces` to a chunk stored as `meta`. One block-aligned piece
    /// is its own images; otherwise the touched blocks are assembled, starting from the stored
    /// bytes of blocks a piece covers only in part (two pieces may share such a block).
    fn images_for(&self, chunk: ChunkId, meta: Option<&ChunkMeta>, pieces: &[(u32, Bytes)]) -> Result<BlockImages, EngineError> {
        let pieces: Vec<&(u32, Bytes)> = pieces.iter().filter(|(_, data)| !data.is_empty()).collect();
        let mut len = meta.map_or(0, |m| m.len);
        let mut prev_end = 0u64;
        for (offset, data) in &pieces {
            if u64::from(*offset) < prev_end {
                return Err(EngineError::InvalidArgument(format!("write piece at {offset} overlaps or precedes the one before")));
            }
            let end = self.check_end(u64::from(*offset) + data.len() as u64, "write")?;
            prev_end = u64::from(end);
            len = len.max(end);
        }
        if let [(offset, data)] = pieces[..] {
            if offset.is_multiple_of(BLOCK_SIZE) && data.len().is_multiple_of(BS as usize) {
                let run = (offset / BLOCK_SIZE, (data.len() / BS as usize) as u32);
                return Ok(BlockImages::computed(vec![run], len, data.clone()));
            }
        }
        let mut blocks: Vec<u32> = Vec::new();
        let mut images: Vec<u8> = Vec::new();
        for (offset, data) in pieces {
            let (start, end) = (u64::from(*offset), u64::from(*offset) + data.len() as u64);
            for l in (start / BS) as u32..=((end - 1) / BS) as u32 {
                let block_start = u64::from(l) * BS;
                if blocks.last() != Some(&l) {
                    blocks.push(l);
                    let whole = start <= block_start && end >= block_start + BS;
                    match meta.and_then(|m| m.blocks.get(&l)).filter(|_| !whole) {
                        Some(r) => images.extend_from_slice(&self.read_verified(chunk, &[(l, *r)])?),
                        None => images.resize(images.len() + BS as usize, 0),
                    }
                }
                let at = images.len() - BS as usize;
                let (lo, hi) = (block_start.max(start), (block_start + BS).min(end));
                images[at + (lo - block_start) as usize..at + (hi - block_start) as usize]
                    .copy_from_slice(&data[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        Ok(BlockImages::computed(images::runs_of(&blocks), len, Bytes::from(images)))
    }

    /// Stores `images` over the chunk stored as `old` as its next version.
    fn apply_images(
        &self,
        chunk: ChunkId,
        old: Option<ChunkMeta>,
        images: &BlockImages,
        request: Option<RequestId>,
    ) -> Result<ChunkInfo, EngineError> {
        if images.is_empty() {
            return Ok(old.map(|m| m.info()).unwrap_or_default());
        }
        let zero = zero_blocks(images);
        let mut stored = match zero.iter().any(|z| *z) {
            true => data_images(images, &zero),
            false => images.images().clone(),
        };
        let tail = self.tail_of(images, &zero).map(|n| {
            let last = stored.split_off(stored.len() - BS as usize);
            last.slice(..n)
        });
        let new = if stored.is_empty() && tail.is_none() { None } else { Some(self.write_new_blocks(stored, tail)?) };
        let mut meta = old.clone().unwrap_or_default();
        let replaced = install_blocks(&mut meta, images.blocks(), &zero, new.as_ref(), images.crcs());
        meta.version += 1;
        meta.len = images.len();
        if let Some(r) = request {
            meta.note_request(r);
        }
        self.commit_and_release(chunk, &meta, old.is_none(), &replaced, new.as_ref())?;
        Ok(meta.info())
    }

    /// How many bytes of the images' last block to keep as a tail, if it is kept as one: it
    /// must be the chunk's last block, hold data, and end within `tail_bytes`.
    fn tail_of(&self, images: &BlockImages, zero: &[bool]) -> Option<usize> {
        let last = images.blocks().last()?;
        if zero.last() != Some(&false) || u64::from(last) + 1 != blocks_for(u64::from(images.len())) {
            return None;
        }
        let all = images.images();
        trimmed_len(&all[all.len() - BS as usize..], self.opts.tail_bytes as usize)
    }

    /// Reads up to `len` bytes at `offset`, clipped to the chunk length. Holes read as zeros;
    /// every block read is CRC32C-verified. A missing chunk reads as empty.
    pub fn read(&self, chunk: ChunkId, offset: u32, len: u32) -> Result<Vec<u8>, EngineError> {
        self.read_with_info(chunk, offset, len).map(|(_, data)| data)
    }

    /// Like [`read`](Self::read), and the state of the chunk the bytes come from (all zero for
    /// a missing chunk), taken under the same lock.
    pub fn read_with_info(&self, chunk: ChunkId, offset: u32, len: u32) -> Result<(ChunkInfo, Vec<u8>), EngineError> {
        if offset > self.opts.max_chunk_size {
            return Err(EngineError::InvalidArgument(format!(
                "read offset {offset} is past the maximum chunk size {}",
                self.opts.max_chunk_size
            )));
        }
        let _guard = self.locks.read(chunk);
        let Some(meta) = self.load(chunk)? else {
            return Ok((ChunkInfo::default(), Vec::new()));
        };
        let info = meta.info();
        let (start, end) = (
            u64::from(offset),
            (u64::from(offset) + u64::from(len)).min(u64::from(meta.len)),
        );
        if end <= start {
            return Ok((info, Vec::new()));
        }
        let mut out = vec![0u8; (end - start) as usize];
        let mapped: Vec<(u32, BlockRef)> = meta
            .blocks
            .range((start / BS) as u32..=((end - 1) / BS) as u32)
            .map(|(&l, &r)| (l, r))
            .collect();
        let mut i = 0;
        while i < mapped.len() {
            // A tail is read on its own: no other reference continues it.
            let n = if is_tail(mapped[i].1.phys) { 1 } else { run_len(&mapped[i..], |(_, r)| r.phys).min(MAX_READ_RUN) };
            let run = &mapped[i..i + n];
            let buf = self.read_verified(chunk, run)?;
            for (k, (l, _)) in run.iter().enumerate() {
                copy_block_part(
                    &buf[k * BS as usize..(k + 1) * BS as usize],
                    *l,
                    start,
                    end,
                    &mut out,
                );
            }
            i += run.len();
        }
        Ok((info, out))
    }

    /// Sets the chunk length (creating the chunk if needed). Shrinking frees whole blocks past the
    /// end and zeroes the tail of the last partial block (copy-on-write); growing just raises the
    /// length. Durable on return.
    pub fn truncate(&self, chunk: ChunkId, len: u32) -> Result<ChunkInfo, EngineError> {
        self.truncate_inner(chunk, None, len, None)
    }

    /// Like [`truncate`](Self::truncate), but only if the chunk is at `base_version`;
    /// `request` is remembered with the chunk.
    pub fn truncate_at(&self, chunk: ChunkId, base_version: u64, len: u32, request: Option<RequestId>) -> Result<ChunkInfo, EngineError> {
        self.truncate_inner(chunk, Some(base_version), len, request)
    }

    fn truncate_inner(&self, chunk: ChunkId, base: Option<u64>, len: u32, request: Option<RequestId>) -> Result<ChunkInfo, EngineError> {
        self.check_end(u64::from(len), "truncate")?;
        let _guard = self.locks.write(chunk);
        let old = self.load(chunk)?;
        check_base(old.as_ref(), base)?;
        let mut meta = old.clone().unwrap_or_default();
        let keep = blocks_for(u64::from(len)) as u32;
        let mut freed: Vec<u64> = meta
            .blocks
            .split_off(&keep)
            .into_values()
            .map(|r| r.phys)
            .collect();
        let mut tail = None;
        if len < meta.len {
            if let Some((replaced, new)) = self.zero_tail(chunk, &mut meta, len)? {
                freed.push(replaced);
                tail = Some(new);
            }
        }
        meta.len = len;
        meta.version += 1;
        if let Some(r) = request {
            meta.note_request(r);
        }
        self.commit_and_release(chunk, &meta, old.is_none(), &freed, tail.as_ref())?;
        Ok(meta.info())
    }

    /// Removes every chunk of `inode` with index >= `from_index`; returns how many were removed.
    /// Durable on return. Chunks created concurrently with the call may survive it.
    pub fn remove_chunks(&self, inode: InodeId, from_index: u32) -> Result<u32, EngineError> {
        let ids = self.chunk_ids(inode, from_index)?;
        let mut removed = 0;
        for group in ids.chunks(REMOVE_BATCH) {
            removed += self.remove_group(group)?;
        }
        Ok(removed)
    }

    /// Chunks after `after` (exclusive) in key order, at most `limit`, with their state: the
    /// pages a replica sync compares.
    pub fn list(&self, after: Option<ChunkId>, limit: usize) -> Result<Vec<(ChunkId, ChunkInfo)>, EngineError> {
        use std::ops::Bound;
        let lo = match after {
            Some(c) => Bound::Excluded(c.to_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for guard in self.chunks.range::<Vec<u8>, _>((lo, Bound::Unbounded)).take(limit) {
            let (key, value) = guard.into_inner().map_err(EngineError::from_fjall)?;
            let chunk = ChunkId::from_bytes(&key)
                .ok_or_else(|| EngineError::Corrupt(format!("chunk key of {} bytes", key.len())))?;
            let meta = ChunkMeta::decode(&value)
                .map_err(|e| EngineError::Corrupt(format!("chunk {chunk}: bad metadata record: {e}")))?;
            out.push((chunk, meta.info()));
        }
        Ok(out)
    }

    /// The chunk's state and the (index, CRC32C) of every block it stores, in block order: what
    /// a sync compares to find the blocks a replica lacks.
    pub fn block_map(&self, chunk: ChunkId) -> Result<Option<(ChunkInfo, BlockMap)>, EngineError> {
        let _guard = self.locks.read(chunk);
        Ok(self.load(chunk)?.map(|m| (m.info(), m.blocks.iter().map(|(l, r)| (*l, r.crc)).collect())))
    }

    /// The images of the given stored blocks, back to back, each CRC-verified.
    pub fn read_block_images(&self, chunk: ChunkId, blocks: &[u32]) -> Result<Vec<u8>, EngineError> {
        let _guard = self.locks.read(chunk);
        let meta = self.load(chunk)?.ok_or_else(|| EngineError::InvalidArgument(format!("chunk {chunk} does not exist")))?;
        let mut out = Vec::with_capacity(blocks.len() * BS as usize);
        for l in blocks {
            let r = meta
                .blocks
                .get(l)
                .ok_or_else(|| EngineError::InvalidArgument(format!("chunk {chunk} has no block {l}")))?;
            out.extend_from_slice(&self.read_verified(chunk, &[(*l, *r)])?);
        }
        Ok(out)
    }

    /// Makes the chunk hold exactly the blocks `present` at `version` and `len`: the blocks in
    /// `patched` (a subset of `present`) get `images`, the other present blocks are kept, every
    /// other block is dropped, and the remembered request ids become `requests`. How a replica
    /// takes over another's state block by block.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        chunk: ChunkId,
        version: u64,
        len: u32,
        present: &[u32],
        patched: &[u32],
        images: &[u8],
        requests: &[RequestId],
    ) -> Result<ChunkInfo, EngineError> {
        if requests.len() > MAX_REQUESTS {
            return Err(EngineError::InvalidArgument(format!("{} request ids, at most {MAX_REQUESTS}", requests.len())));
        }
        self.check_end(u64::from(len), "patch")?;
        if images.len() != patched.len() * BS as usize {
            return Err(EngineError::InvalidArgument(format!("{} images for {} blocks", images.len() / BS as usize, patched.len())));
        }
        let limit = blocks_for(u64::from(len)) as u32;
        if let Some(bad) = present.iter().find(|l| **l >= limit) {
            return Err(EngineError::InvalidArgument(format!("block {bad} lies past the chunk length {len}")));
        }
        let _guard = self.locks.write(chunk);
        let old = self.load(chunk)?;
        let mut meta = ChunkMeta { version, len, requests: requests.to_vec(), ..ChunkMeta::default() };
        let keep: std::collections::BTreeSet<u32> = present.iter().copied().collect();
        let new: std::collections::BTreeSet<u32> = patched.iter().copied().collect();
        if !new.is_subset(&keep) {
            return Err(EngineError::InvalidArgument("patched blocks must be present blocks".into()));
        }
        for l in keep.difference(&new) {
            let r = old.as_ref().and_then(|m| m.blocks.get(l)).ok_or_else(|| {
                EngineError::InvalidArgument(format!("chunk {chunk} lacks block {l} that the patch keeps"))
            })?;
            meta.blocks.insert(*l, *r);
        }
        let new = if images.is_empty() { None } else { Some(self.write_new_blocks(Bytes::copy_from_slice(images), None)?) };
        for (l, (p, img)) in patched.iter().zip(new.iter().flat_map(NewBlocks::iter)) {
            meta.blocks.insert(*l, BlockRef { phys: p, crc: crc32c::crc32c(img) });
        }
        let freed: Vec<u64> = old
            .as_ref()
            .map(|m| m.blocks.iter().filter(|(l, r)| meta.blocks.get(l) != Some(r)).map(|(_, r)| r.phys).collect())
            .unwrap_or_default();
        self.commit_and_release(chunk, &meta, old.is_none(), &freed, new.as_ref())?;
        Ok(meta.info())
    }

    /// Removes one chunk; returns whether it existed.
    pub fn remove(&self, chunk: ChunkId) -> Result<bool, EngineError> {
        Ok(self.remove_group(&[chunk])? == 1)
    }

    /// The committed version and length of a chunk, or `None` if it does not exist.
    pub fn chunk_info(&self, chunk: ChunkId) -> Result<Option<ChunkInfo>, EngineError> {
        let _guard = self.locks.read(chunk);
        Ok(self.load(chunk)?.map(|m| m.info()))
    }

    pub fn stats(&self) -> EngineStats {
        let (total, used) = self.blocks.counts();
        let (fs_size, fs_avail) = fs_space(&self.dir).unwrap_or((0, 0));
        let mut capacity = fs_size;
        let mut free = fs_avail.saturating_add((total - used) * BS);
        if let Some(cap) = self.opts.capacity_bytes {
            capacity = capacity.min(cap);
            free = free.min(cap.saturating_sub(used * BS));
        }
        EngineStats {
            block_size: BLOCK_SIZE,
            total_blocks: total,
            used_blocks: used,
            tail_bytes: self.tails.bytes(),
            chunks: self.chunk_count.load(Ordering::Relaxed),
            capacity_bytes: capacity,
            free_bytes: free,
        }
    }

    /// Rejects chunk ends past the maximum chunk size; returns the end as u32.
    fn check_end(&self, end: u64, what: &str) -> Result<u32, EngineError> {
        let max = self.opts.max_chunk_size;
        if end > u64::from(max) {
            return Err(EngineError::TooLarge(format!(
                "{what} up to byte {end} exceeds the maximum chunk size {max}"
            )));
        }
        Ok(end as u32)
    }

    fn load(&self, chunk: ChunkId) -> Result<Option<ChunkMeta>, EngineError> {
        let Some(value) = self
            .chunks
            .get(chunk.to_bytes())
            .map_err(EngineError::from_fjall)?
        else {
            return Ok(None);
        };
        ChunkMeta::decode(&value)
            .map(Some)
            .map_err(|e| EngineError::Corrupt(format!("chunk {chunk}: bad metadata record: {e}")))
    }

    /// Reads a physically contiguous run of blocks and verifies each block's CRC32C.
    fn read_verified(
        &self,
        chunk: ChunkId,
        run: &[(u32, BlockRef)],
    ) -> Result<Vec<u8>, EngineError> {
        let Some((first_l, first)) = run.first() else {
            return Ok(Vec::new());
        };
        let buf = if is_tail(first.phys) && run.len() == 1 {
            self.tails.read(first.phys)?
        } else {
            let mut buf = vec![0u8; run.len() * BS as usize];
            self.blocks.read_blocks(first.phys, &mut buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => EngineError::Corrupt(format!(
                    "chunk {chunk} block {first_l}: physical block {} lies past the end of {DATA_FILE}",
                    first.phys
                )),
                _ => EngineError::from_io(e),
            })?;
            buf
        };
        for ((l, r), img) in run.iter().zip(buf.chunks_exact(BS as usize)) {
            let crc = crc32c::crc32c(img);
            if crc != r.crc {
                return Err(EngineError::Corrupt(format!(
                    "chunk {chunk} block {l} (physical block {}): CRC32C mismatch, stored {:08x}, computed {crc:08x}",
                    r.phys, r.crc
                )));
            }
        }
        Ok(buf)
    }

    /// Allocates blocks for `images` and writes them. Large writes are made durable here; small
    /// ones are staged, made durable by the commit that journals them with their record. On
    /// failure nothing references the new blocks, so they go straight back to the allocator.
    /// A `tail` (the trimmed last block) only gets its reference: the commit stores it.
    fn write_new_blocks(&self, images: Bytes, tail: Option<Bytes>) -> Result<NewBlocks, EngineError> {
        if let Some(e) = self.blocks.poisoned() {
            return Err(e);
        }
        self.persistence_point("data.write")?;
        let count = images.len() / BS as usize;
        let staged = count <= self.opts.journal_blocks as usize && (count == 0 || self.journal_admits(images.len()));
        let phys = self.blocks.allocate(count)?;
        let mut result = self.blocks.write_blocks(&phys, &images);
        if !staged {
            result = result.and_then(|()| self.blocks.sync_data());
        }
        let tail = match (result, tail) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(bytes)) => self.tails.allocate(bytes.len()).map(|p| Some((p, bytes))),
            (Ok(()), None) => Ok(None),
        };
        match tail {
            Ok(tail) => Ok(NewBlocks { phys, images, staged, tail }),
            Err(e) => {
                self.blocks.release(&phys);
                Err(e)
            }
        }
    }

    /// Whether `bytes` of images may be staged in the journal now (`staging.rs`, budget).
    fn journal_admits(&self, bytes: usize) -> bool {
        let (_, used) = self.blocks.counts();
        let stored = used * BS + self.tails.bytes();
        self.staging_budget.admit(bytes as u64, stored, || self.journal.disk_bytes())
    }

    /// Copy-on-write of the last partial block when shrinking: a new block with a zeroed tail.
    /// Returns the replaced physical block and the new one, if one was replaced.
    fn zero_tail(
        &self,
        chunk: ChunkId,
        meta: &mut ChunkMeta,
        len: u32,
    ) -> Result<Option<(u64, NewBlocks)>, EngineError> {
        let (l, cut) = (len / BLOCK_SIZE, (len % BLOCK_SIZE) as usize);
        let Some(old) = meta.blocks.get(&l).copied().filter(|_| cut != 0) else {
            return Ok(None);
        };
        let mut img = self.read_verified(chunk, &[(l, old)])?;
        if img[cut..].iter().all(|&b| b == 0) {
            return Ok(None);
        }
        img[cut..].fill(0);
        let crc = crc32c::crc32c(&img);
        let new = self.write_new_blocks(Bytes::from(img), None)?;
        meta.blocks.insert(l, BlockRef { phys: new.phys[0], crc });
        Ok(Some((old.phys, new)))
    }

    /// Commits `meta` durably, with the images of `new` if they are staged, then frees `freed`
    /// (no durable record references them anymore). If the commit fails, nothing is freed: the
    /// outcome on disk is unknown, and leaking blocks until the next open is safe while reusing
    /// them might not be.
    fn commit_and_release(
        &self,
        chunk: ChunkId,
        meta: &ChunkMeta,
        created: bool,
        freed: &[u64],
        new: Option<&NewBlocks>,
    ) -> Result<(), EngineError> {
        self.persistence_point("meta.commit")?;
        let staged = new.filter(|n| n.staged);
        let tail = new.and_then(|n| n.tail.as_ref());
        let mut batch = self.db.batch();
        batch.insert(&self.chunks, chunk.to_bytes(), meta.encode());
        if let Some(n) = staged {
            self.staging.stage(&mut batch, &n.phys, &n.images);
        }
        if let Some((phys, bytes)) = tail {
            self.tails.insert(&mut batch, *phys, bytes);
        }
        self.remove_tails(&mut batch, freed);
        batch.commit().map_err(EngineError::from_fjall)?;
        if let Some(n) = staged {
            self.staging.committed(&n.phys);
        }
        self.tails.account(tail.map(|(p, _)| *p).into_iter(), true);
        self.persist_meta()?;
        self.persistence_point("meta.persisted")?;
        if created {
            self.chunk_count.fetch_add(1, Ordering::Relaxed);
        }
        self.release(freed);
        self.settle(SETTLE_BLOCKS)
    }

    /// Deletes, in the batch that drops their last reference, the tails among `freed`.
    fn remove_tails(&self, batch: &mut fjall::OwnedWriteBatch, freed: &[u64]) {
        for &phys in freed.iter().filter(|p| is_tail(**p)) {
            self.tails.remove(batch, phys);
        }
    }

    /// Frees blocks no durable record references; staged ones wait for their settle. The
    /// tails among them were deleted with the record.
    fn release(&self, freed: &[u64]) {
        self.tails.account(freed.iter().copied(), false);
        let blocks: Vec<u64> = freed.iter().copied().filter(|p| !is_tail(*p)).collect();
        self.blocks.release(&self.staging.releasable(&blocks));
    }

    /// Once at least `min_blocks` images are staged: syncs `blocks.dat`, deletes the staged
    /// copies that sync covered and frees those of them that later changes replaced.
    fn settle(&self, min_blocks: usize) -> Result<(), EngineError> {
        let Some(settle) = self.staging.due(min_blocks) else {
            return Ok(());
        };
        self.persistence_point("data.settle")?;
        self.blocks.sync_data()?;
        let mut batch = self.db.batch();
        for block in &settle.blocks {
            batch.remove(self.staging.keyspace(), block.to_be_bytes());
        }
        batch.commit().map_err(EngineError::from_fjall)?;
        self.blocks.release(&self.staging.settled(&settle));
        Ok(())
    }

    /// Makes every fjall batch committed so far durable (group-committed fdatasync of the journal).
    fn persist_meta(&self) -> Result<(), EngineError> {
        self.meta_sync
            .sync_after_write(|| self.journal.persist(&self.db).map_err(EngineError::from_fjall))
    }

    /// The inode's chunks from `from_index` on, in index order.
    pub fn chunk_ids(&self, inode: InodeId, from_index: u32) -> Result<Vec<ChunkId>, EngineError> {
        let lo = ChunkId::new(inode, from_index).to_bytes();
        let hi = ChunkId::new(inode, u32::MAX).to_bytes();
        let mut ids = Vec::new();
        for guard in self.chunks.range(lo..=hi) {
            let key = guard.key().map_err(EngineError::from_fjall)?;
            let id = ChunkId::from_bytes(&key)
                .ok_or_else(|| EngineError::Corrupt(format!("chunk key of {} bytes", key.len())))?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Removes a group of chunks in one durable batch. Chunks already gone are skipped.
    fn remove_group(&self, ids: &[ChunkId]) -> Result<u32, EngineError> {
        let _guards = self.locks.write_many(ids);
        let mut batch = self.db.batch();
        let (mut freed, mut removed) = (Vec::new(), 0u32);
        for &chunk in ids {
            if let Some(meta) = self.load(chunk)? {
                batch.remove(&self.chunks, chunk.to_bytes());
                freed.extend(meta.blocks.values().map(|r| r.phys));
                removed += 1;
            }
        }
        if removed == 0 {
            return Ok(0);
        }
        self.remove_tails(&mut batch, &freed);
        self.persistence_point("meta.commit")?;
        batch.commit().map_err(EngineError::from_fjall)?;
        self.persist_meta()?;
        self.persistence_point("meta.persisted")?;
        self.chunk_count
            .fetch_sub(u64::from(removed), Ordering::Relaxed);
        self.release(&freed);
        Ok(removed)
    }
}

impl ChunkMeta {
    fn info(&self) -> ChunkInfo {
        ChunkInfo { version: self.version, len: self.len, digest: self.digest(), blocks: self.blocks.len() as u32 }
    }

    /// FNV-1a over (block index, CRC32C) pairs in block order.
    fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (idx, r) in &self.blocks {
            for b in idx.to_le_bytes().into_iter().chain(r.crc.to_le_bytes()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }
}

/// Blocks a change wrote that no committed record references yet.
struct NewBlocks {
    phys: Vec<u64>,
    /// Their images, back to back.
    images: Bytes,
    /// Whether the images go into the journal with the record instead of being synced already.
    staged: bool,
    /// The last block kept as a tail: its reference and trimmed bytes, stored by the commit.
    tail: Option<(u64, Bytes)>,
}

impl NewBlocks {
    /// (physical block, image) pairs.
    fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.phys.iter().copied().zip(self.images.chunks_exact(BS as usize))
    }
}

/// CRC32C of a block of zeros.
fn zero_block_crc() -> u32 {
    static CRC: OnceLock<u32> = OnceLock::new();
    *CRC.get_or_init(|| crc32c::crc32c(&[0u8; BS as usize]))
}

/// Which images are all zeros. Those are stored as holes (which read as zeros), so zeroing a
/// range (fallocate's PUNCH_HOLE and ZERO_RANGE, or a program writing zeros) frees its blocks on
/// every replica alike. The CRC, computed anyway, spares scanning blocks that hold data.
fn zero_blocks(images: &BlockImages) -> Vec<bool> {
    let zero_crc = zero_block_crc();
    images
        .images()
        .chunks_exact(BS as usize)
        .zip(images.crcs())
        .map(|(img, &crc)| crc == zero_crc && img.iter().all(|&b| b == 0))
        .collect()
}

/// The images that are not all zeros, back to back.
fn data_images(images: &BlockImages, zero: &[bool]) -> Bytes {
    let mut out = Vec::with_capacity(images.images().len());
    for (img, _) in images.images().chunks_exact(BS as usize).zip(zero).filter(|(_, z)| !**z) {
        out.extend_from_slice(img);
    }
    Bytes::from(out)
}

/// Points the logical `blocks` at the new physical blocks (one per image that is not all
/// zeros, in order; the images have `crcs`) or, where `zero` says so, at nothing; returns the
/// replaced physical blocks.
fn install_blocks(meta: &mut ChunkMeta, blocks: impl Iterator<Item = u32>, zero: &[bool], new: Option<&NewBlocks>, crcs: &[u32]) -> Vec<u64> {
    let mut fresh = new.into_iter().flat_map(|n| n.phys.iter().copied().chain(n.tail.as_ref().map(|(p, _)| *p)));
    let mut replaced = Vec::new();
    for (l, (&is_zero, &crc)) in blocks.zip(zero.iter().zip(crcs)) {
        let stored = if is_zero { None } else { fresh.next() };
        let old = match stored {
            Some(phys) => meta.blocks.insert(l, BlockRef { phys, crc }),
            None => meta.blocks.remove(&l),
        };
        replaced.extend(old.map(|o| o.phys));
    }
    replaced
}

/// Copies the part of logical block `l` (image `img`) that falls in `[start, end)` into `out`,
/// which holds the bytes from `start` on.
fn copy_block_part(img: &[u8], l: u32, start: u64, end: u64, out: &mut [u8]) {
    let block_start = u64::from(l) * BS;
    let (lo, hi) = (block_start.max(start), (block_start + BS).min(end));
    out[(lo - start) as usize..(hi - start) as usize]
        .copy_from_slice(&img[(lo - block_start) as usize..(hi - block_start) as usize]);
}

/// Checks (or, on a new target, writes) the engine format marker; upgrades formats 1 and 2,
/// which differ only by lacking the (then empty) `staged` and `tails` keyspaces. A format-2
/// engine cannot read tails, so the marker keeps an older binary off an upgraded target.
fn check_format(db: &Database) -> Result<(), EngineError> {
    let info = db
        .keyspace("engine", KeyspaceCreateOptions::default)
        .map_err(EngineError::from_fjall)?;
    let marker = |version: u8| [&[version][..], &BLOCK_SIZE.to_le_bytes()].concat();
    let expected = marker(FORMAT_VERSION);
    match info.get(FORMAT_KEY).map_err(EngineError::from_fjall)? {
        Some(found) if *found == *expected => Ok(()),
        Some(found) if *found != *marker(1) && *found != *marker(2) => Err(EngineError::Meta(format!(
            "unsupported engine format {found:?}, expected {expected:?}"
        ))),
        _ => {
            info.insert(FORMAT_KEY, expected)
                .map_err(EngineError::from_fjall)?;
            db.persist(PersistMode::SyncAll)
                .map_err(EngineError::from_fjall)
        }
    }
}

/// Marks every block referenced by a committed chunk record as used; returns the chunk count
/// and the committed CRC32C of those blocks that have `staged` images.
/// A corrupt record or a block claimed twice fails the open: serving with a wrong allocation
/// map could hand out a block that still holds live data.
fn claim_committed_blocks<T>(
    chunks: &Keyspace,
    blocks: &BlockFile,
    tails: &Tails,
    staged: &HashMap<u64, T>,
) -> Result<(u64, HashMap<u64, u32>), EngineError> {
    let (mut count, mut crcs) = (0, HashMap::new());
    for guard in chunks.iter() {
        let (key, value) = guard.into_inner().map_err(EngineError::from_fjall)?;
        let chunk = ChunkId::from_bytes(&key)
            .ok_or_else(|| EngineError::Corrupt(format!("chunk key of {} bytes", key.len())))?;
        let meta = ChunkMeta::decode(&value).map_err(|e| {
            EngineError::Corrupt(format!("chunk {chunk}: bad metadata record: {e}"))
        })?;
        tails.account(meta.blocks.values().map(|r| r.phys), true);
        for r in meta.blocks.values().filter(|r| !is_tail(r.phys)) {
            if !blocks.claim_at_open(r.phys)? {
                return Err(EngineError::Corrupt(format!(
                    "chunk {chunk}: physical block {} is referenced twice",
                    r.phys
                )));
            }
            if staged.contains_key(&r.phys) {
                crcs.insert(r.phys, r.crc);
            }
        }
        count += 1;
    }
    Ok((count, crcs))
}

/// (size, space available to unprivileged users) of the file system holding `dir`.
#[allow(clippy::unnecessary_cast)] // statvfs field types differ between platforms.
fn fs_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `st` points to writable memory of the right type.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled `st` (it was zeroed before in any case).
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize as u64;
    Some((
        (st.f_blocks as u64).saturating_mul(frsize),
        (st.f_bavail as u64).saturating_mul(frsize),
    ))
}

/// Refuses a versioned change unless the chunk is at the version the change was built on.
fn check_base(old: Option<&ChunkMeta>, base: Option<u64>) -> Result<(), EngineError> {
    let current = old.map_or(0, |m| m.version);
    match base {
        Some(expected) if expected != current => Err(EngineError::VersionMismatch { current, expected }),
        _ => Ok(()),
    }
}

