use std::os::unix::fs::FileExt;
use std::sync::Arc;

use ember_types::StatusCode;

use super::*;

const B: usize = BLOCK_SIZE as usize;

/// Whole blocks only: most tests count blocks (tails have tests of their own). Every small
/// write stages (the journal budget has tests of its own).
fn small_opts() -> EngineOptions {
    EngineOptions {
        grow_bytes: 1 << 20,
        tail_bytes: 0,
        staging_journal_bytes: 64 << 20,
        ..EngineOptions::default()
    }
}

fn open_with_tails(dir: &Path) -> ChunkEngine {
    ChunkEngine::open(dir, EngineOptions { tail_bytes: 2048, ..small_opts() }).unwrap()
}

fn open(dir: &Path) -> ChunkEngine {
    ChunkEngine::open(dir, small_opts()).unwrap()
}

/// Every write synced in `blocks.dat`, none staged: blocks are free again as soon as replaced.
fn open_unstaged(dir: &Path) -> ChunkEngine {
    ChunkEngine::open(dir, EngineOptions { journal_blocks: 0, ..small_opts() }).unwrap()
}

fn cid(inode: u64, index: u32) -> ChunkId {
    ChunkId::new(InodeId(inode), index)
}

/// Deterministic pseudo-random bytes (xorshift), different for every seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn meta(e: &ChunkEngine, c: ChunkId) -> ChunkMeta {
    e.load(c).unwrap().unwrap()
}

#[test]
fn engine_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChunkEngine>();
    assert_send_sync::<Arc<ChunkEngine>>();
}

#[test]
fn round_trip_unaligned_with_holes_clipping_and_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = cid(0x1000, 0);
    assert_eq!(
        e.read(c, 0, 100).unwrap(),
        Vec::<u8>::new(),
        "missing chunk reads empty"
    );
    assert_eq!(e.chunk_info(c).unwrap(), None);

    let a = pattern(1, 3 * B + 1000);
    let info = e.write(c, 1234, &a).unwrap();
    assert_eq!(
        (info.version, info.len),
        (1, (1234 + a.len()) as u32)
    );
    let mut expect = vec![0u8; 1234];
    expect.extend_from_slice(&a);
    assert_eq!(
        e.read(c, 0, 1 << 20).unwrap(),
        expect,
        "read is clipped to the chunk length"
    );

    // A second write far past the end leaves a hole of whole unmapped blocks.
    let b = pattern(2, 2 * B + 3);
    let off = 10 * B + 7;
    let info = e.write(c, off as u32, &b).unwrap();
    assert_eq!(
        (info.version, info.len),
        (2, (off + b.len()) as u32)
    );
    expect.resize(off, 0);
    expect.extend_from_slice(&b);
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), expect);
    assert_eq!(
        e.read(c, (5 * B) as u32, (4 * B) as u32).unwrap(),
        vec![0u8; 4 * B],
        "hole reads zeros"
    );
    let mapped: Vec<u32> = meta(&e, c).blocks.keys().copied().collect();
    assert_eq!(mapped, vec![0, 1, 2, 3, 10, 11, 12]);
    assert_eq!(e.stats().used_blocks, 7);

    // Overwrite across a block boundary in the middle: surrounding bytes are kept.
    let mid = pattern(3, 40);
    e.write(c, (2 * B - 20) as u32, &mid).unwrap();
    expect[2 * B - 20..2 * B + 20].copy_from_slice(&mid);
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), expect);
    e.settle(0).unwrap();
    assert_eq!(e.stats().used_blocks, 7, "replaced blocks were freed");

    // Unaligned partial reads, and reads at or past the end.
    let len = expect.len() as u32;
    assert_eq!(e.read(c, 4000, 5000).unwrap(), expect[4000..9000]);
    assert_eq!(e.read(c, len - 5, 100).unwrap(), expect[len as usize - 5..]);
    assert!(e.read(c, len, 10).unwrap().is_empty());
    assert!(e.read(c, len + 4096, 10).unwrap().is_empty());
    assert_eq!(
        e.chunk_info(c).unwrap().map(|i| (i.version, i.len)),
        Some((3, len))
    );
}

#[test]
fn reopen_keeps_data_versions_and_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<(ChunkId, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                cid(0x2000 + i, i as u32),
                pattern(i, 5000 + 3000 * i as usize),
            )
        })
        .collect();
    let before = {
        let e = open(dir.path());
        for (c, data) in &chunks {
            e.write(*c, 0, data).unwrap();
            e.write(*c, 100, &data[..50]).unwrap();
        }
        e.truncate(chunks[4].0, 6000).unwrap();
        e.settle(0).unwrap();
        e.stats()
    };
    let e = open(dir.path());
    for (i, (c, data)) in chunks.iter().enumerate() {
        let mut expect = data.clone();
        expect[100..150].copy_from_slice(&data[..50]);
        let mut version = 2;
        if i == 4 {
            expect.truncate(6000);
            version = 3;
        }
        assert_eq!(e.read(*c, 0, u32::MAX).unwrap(), expect, "chunk {i}");
        assert_eq!(
            e.chunk_info(*c).unwrap().map(|i| (i.version, i.len)),
            Some((version, expect.len() as u32))
        );
    }
    let after = e.stats();
    assert_eq!(
        (after.used_blocks, after.chunks, after.total_blocks),
        (before.used_blocks, before.chunks, before.total_blocks)
    );
    assert_eq!(after.chunks, 5);
}

#[test]
fn space_is_reused_and_the_file_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_unstaged(dir.path());
    let c = cid(0x3000, 0);
    for i in 0..100 {
        e.write(c, 0, &pattern(i, 64 * 1024)).unwrap();
    }
    for i in 0..100 {
        e.write(c, (i * 613) as u32, &pattern(1000 + i, 3000))
            .unwrap();
    }
    let s = e.stats();
    assert_eq!(s.used_blocks, 16);
    assert_eq!(s.total_blocks, 64, "the smallest growth step (256 KiB) must be enough");
    assert_eq!(
        std::fs::metadata(dir.path().join(DATA_FILE)).unwrap().len(),
        64 * BS
    );
    // Lowest-first allocation: 16 live blocks + at most 16 being replaced.
    assert!(meta(&e, c).blocks.values().all(|r| r.phys < 32));
    assert_eq!(e.remove_chunks(InodeId(0x3000), 0).unwrap(), 1);
    assert_eq!((e.stats().used_blocks, e.stats().chunks), (0, 0));
    e.write(cid(0x3001, 0), 0, &pattern(5, 4 * B)).unwrap();
    let phys: Vec<u64> = meta(&e, cid(0x3001, 0))
        .blocks
        .values()
        .map(|r| r.phys)
        .collect();
    assert_eq!(
        phys,
        vec![0, 1, 2, 3],
        "freed blocks are reused from the bottom"
    );
}

#[test]
fn orphan_blocks_of_uncommitted_writes_are_reclaimed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let c = cid(0x4000, 0);
    let data = pattern(4, 3 * B);
    {
        let e = open(dir.path());
        e.write(c, 0, &data).unwrap();
        // The first half of a write (allocate, pwrite, fdatasync) without its metadata commit:
        // exactly what a crash between the two leaves behind.
        let orphans = e.write_new_blocks(Bytes::from(pattern(9, 5 * B)), None).unwrap();
        assert_eq!(orphans.phys, vec![3, 4, 5, 6, 7]);
        assert_eq!(e.stats().used_blocks, 8);
    }
    let e = open(dir.path());
    assert_eq!(
        e.stats().used_blocks,
        3,
        "only committed blocks count after reopen"
    );
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), data);
    e.write(cid(0x4001, 0), 0, &pattern(6, 5 * B)).unwrap();
    let phys: Vec<u64> = meta(&e, cid(0x4001, 0))
        .blocks
        .values()
        .map(|r| r.phys)
        .collect();
    assert_eq!(
        phys,
        vec![3, 4, 5, 6, 7],
        "orphaned blocks are handed out again"
    );
}

#[test]
fn corrupted_block_is_detected_on_read_and_on_read_merge() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = cid(0x5000, 2);
    let data = pattern(5, 3 * B);
    e.write(c, 0, &data).unwrap();
    let victim = meta(&e, c).blocks[&1].phys;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join(DATA_FILE))
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, victim * BS + 100).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], victim * BS + 100)
        .unwrap();

    match e.read(c, 0, u32::MAX) {
        Err(err @ EngineError::Corrupt(_)) => {
            let msg = err.to_string();
            assert!(
                msg.contains("chunk 5000:2") && msg.contains("block 1"),
                "{msg}"
            );
            assert_eq!(err.status().code, StatusCode::CorruptData);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Only the blocks a read touches are verified.
    assert_eq!(e.read(c, 0, BLOCK_SIZE).unwrap(), data[..B]);
    assert_eq!(
        e.read(c, 2 * BLOCK_SIZE, BLOCK_SIZE).unwrap(),
        data[2 * B..]
    );
    // A partial write must not merge with a corrupt block, and must leave the chunk unchanged.
    assert!(matches!(
        e.write(c, BLOCK_SIZE + 10, b"xyz"),
        Err(EngineError::Corrupt(_))
    ));
    assert_eq!(e.chunk_info(c).unwrap().unwrap().version, 1);
    assert_eq!(e.stats().used_blocks, 3);
    // A whole-block overwrite needs no merge and repairs the chunk.
    e.write(c, BLOCK_SIZE, &data[B..2 * B]).unwrap();
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), data);
}

#[test]
fn truncate_down_then_up_reads_zeros_past_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = cid(0x6000, 0);
    let data = pattern(6, 3 * B + 100);
    e.write(c, 0, &data).unwrap();
    let cut = B + 10;
    assert_eq!(
        vl(e.truncate(c, cut as u32).unwrap()),
        (2, cut as u32)
    );
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), data[..cut]);
    e.settle(0).unwrap();
    assert_eq!(e.stats().used_blocks, 2);
    assert_eq!(
        vl(e.truncate(c, (3 * B) as u32).unwrap()),
        (3, (3 * B) as u32)
    );
    let mut expect = data[..cut].to_vec();
    expect.resize(3 * B, 0);
    assert_eq!(
        e.read(c, 0, u32::MAX).unwrap(),
        expect,
        "bytes past the old cut read as zeros"
    );
    assert_eq!(e.stats().used_blocks, 2, "growing allocates nothing");
    // Cut on a block boundary and to zero; a missing chunk is created by truncate.
    e.truncate(c, BLOCK_SIZE).unwrap();
    assert_eq!(e.stats().used_blocks, 1);
    e.truncate(c, 0).unwrap();
    assert_eq!(e.stats().used_blocks, 0);
    assert!(e.read(c, 0, 10).unwrap().is_empty());
    let fresh = cid(0x6001, 0);
    assert_eq!(
        vl(e.truncate(fresh, 5000).unwrap()),
        (1, 5000)
    );
    assert_eq!(e.read(fresh, 0, u32::MAX).unwrap(), vec![0u8; 5000]);
    assert_eq!(e.stats().chunks, 2);
}

#[test]
fn remove_chunks_removes_exactly_the_tail_of_one_inode() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let (a, before, after) = (0x7000u64, 0x6fffu64, 0x7001u64);
    for i in 0..5 {
        e.write(cid(a, i), 0, &pattern(u64::from(i), 2 * B))
            .unwrap();
    }
    e.write(cid(a, u32::MAX), 0, &pattern(99, B)).unwrap();
    for inode in [before, after] {
        for i in 0..3 {
            e.write(cid(inode, i), 0, &pattern(inode + u64::from(i), B))
                .unwrap();
        }
    }
    assert_eq!(e.stats().used_blocks, 10 + 1 + 6);
    assert_eq!(e.remove_chunks(InodeId(a), 2).unwrap(), 4);
    for i in 0..2 {
        assert_eq!(
            e.read(cid(a, i), 0, u32::MAX).unwrap(),
            pattern(u64::from(i), 2 * B)
        );
    }
    for i in [2, 3, 4, u32::MAX] {
        assert_eq!(e.chunk_info(cid(a, i)).unwrap(), None);
    }
    for inode in [before, after] {
        for i in 0..3 {
            assert_eq!(
                e.read(cid(inode, i), 0, u32::MAX).unwrap(),
                pattern(inode + u64::from(i), B)
            );
        }
    }
    e.settle(0).unwrap();
    let s = e.stats();
    assert_eq!((s.used_blocks, s.chunks), (4 + 6, 2 + 6));
    assert_eq!(e.remove_chunks(InodeId(a), 2).unwrap(), 0);
    assert_eq!(e.remove_chunks(InodeId(a), 0).unwrap(), 2);
    drop(e);
    let e = open(dir.path());
    assert_eq!(
        (e.stats().used_blocks, e.stats().chunks),
        (6, 6),
        "removal is durable"
    );
}

#[test]
fn concurrent_writers_are_serializable() {
    const ITERS: u8 = 30;
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(open(dir.path()));
    let shared = cid(0x8000, 0);
    let mut threads = Vec::new();
    // 8 threads on disjoint chunks.
    for t in 0..8u64 {
        let e = e.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..ITERS {
                let c = cid(0x9000 + t, u32::from(i % 3));
                let off = (u64::from(i) * 777 % 9000) as u32;
                e.write(c, off, &pattern(t * 1000 + u64::from(i), 5000))
                    .unwrap();
            }
        }));
    }
    // 4 threads on overlapping, block-aligned regions of one chunk: thread t covers blocks
    // [4t, 4t + 8), so each block is covered by at most two threads.
    for t in 0..4u8 {
        let e = e.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..ITERS {
                let fill = vec![t * 64 + i; 8 * B];
                e.write(shared, u32::from(t) * 4 * BLOCK_SIZE, &fill)
                    .unwrap();
            }
        }));
    }
    // A reader must never see a torn block or a CRC error.
    let reader = {
        let e = e.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let data = e.read(shared, 0, u32::MAX).unwrap();
                for block in data.chunks(B) {
                    assert!(block.iter().all(|&x| x == block[0]), "torn block");
                }
            }
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    reader.join().unwrap();

    let data = e.read(shared, 0, u32::MAX).unwrap();
    assert_eq!(data.len(), 20 * B);
    let owner: Vec<u8> = data
        .chunks(B)
        .map(|b| {
            assert!(b.iter().all(|&x| x == b[0]));
            b[0]
        })
        .collect();
    for (blk, &v) in owner.iter().enumerate() {
        let (t, i) = (v / 64, v % 64);
        assert_eq!(i, ITERS - 1, "block {blk}: last write of each thread wins");
        assert!(
            (4 * t as usize..4 * t as usize + 8).contains(&blk),
            "block {blk} written by thread {t}"
        );
    }
    // Each shared region of two threads is wholly from one of them (writes are atomic).
    for t in 1..4usize {
        let region = &owner[4 * t..4 * t + 4];
        assert!(
            region.iter().all(|&v| v == region[0]),
            "overlap {t} mixed: {region:?}"
        );
    }
    assert_eq!(
        e.chunk_info(shared).unwrap().unwrap().version,
        4 * u64::from(ITERS)
    );
    for t in 0..8u64 {
        for idx in 0..3u32 {
            let last = (0..ITERS).rev().find(|i| u32::from(*i % 3) == idx).unwrap();
            let c = cid(0x9000 + t, idx);
            // Reconstruct the chunk from the serial order of this thread's writes.
            let mut expect = Vec::new();
            for i in (0..=last).filter(|i| u32::from(*i % 3) == idx) {
                let off = (u64::from(i) * 777 % 9000) as usize;
                let p = pattern(t * 1000 + u64::from(i), 5000);
                if expect.len() < off + p.len() {
                    expect.resize(off + p.len(), 0);
                }
                expect[off..off + p.len()].copy_from_slice(&p);
            }
            assert_eq!(e.read(c, 0, u32::MAX).unwrap(), expect, "chunk {c}");
        }
    }
    let used: u64 = (0..8u64)
        .flat_map(|t| (0..3).map(move |i| cid(0x9000 + t, i)))
        .chain([shared])
        .map(|c| meta(&e, c).blocks.len() as u64)
        .sum();
    e.settle(0).unwrap();
    assert_eq!(
        e.stats().used_blocks,
        used,
        "no block leaked or double-freed"
    );
}

#[test]
fn bad_metadata_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let c = cid(0xa000, 1);
    {
        let e = open(dir.path());
        e.write(cid(0xa000, 0), 0, b"fine").unwrap();
        e.chunks.insert(c.to_bytes(), vec![1u8, 2, 3]).unwrap();
        e.db.persist(PersistMode::SyncAll).unwrap();
        assert!(matches!(e.chunk_info(c), Err(EngineError::Corrupt(_))));
        assert!(matches!(e.read(c, 0, 10), Err(EngineError::Corrupt(_))));
        assert!(matches!(e.write(c, 0, b"x"), Err(EngineError::Corrupt(_))));
        assert_eq!(e.read(cid(0xa000, 0), 0, 10).unwrap(), b"fine");
    }
    match ChunkEngine::open(dir.path(), small_opts()) {
        Err(EngineError::Corrupt(msg)) => assert!(msg.contains("a000:1"), "{msg}"),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("opened with a corrupt record"),
    }
}

#[test]
fn limits_and_empty_writes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        max_chunk_size: 64 * 1024,
        ..small_opts()
    };
    let e = ChunkEngine::open(dir.path(), opts).unwrap();
    let c = cid(0xb000, 0);
    let err = e.write(c, 64 * 1024 - 10, &[1u8; 20]).unwrap_err();
    assert_eq!(err.status().code, StatusCode::ChunkTooLarge);
    assert!(matches!(
        e.truncate(c, 64 * 1024 + 1),
        Err(EngineError::TooLarge(_))
    ));
    assert_eq!(
        e.read(c, 64 * 1024 + 1, 1).unwrap_err().status().code,
        StatusCode::InvalidArgument
    );
    assert_eq!(
        e.chunk_info(c).unwrap(),
        None,
        "failed calls create nothing"
    );
    e.write(c, 64 * 1024 - 10, &[1u8; 10]).unwrap();
    assert_eq!(
        vl(e.write(c, 5, b"").unwrap()),
        (1, 64 * 1024)
    );
    assert_eq!(
        e.write(cid(0xb000, 1), 5, b"").unwrap(),
        ChunkInfo::default()
    );
    assert_eq!(e.stats().chunks, 1);
}

#[test]
fn running_out_of_space_is_no_space_and_leaves_the_chunk_intact() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        grow_bytes: 64 * BS,
        capacity_bytes: Some(64 * BS),
        ..EngineOptions::default()
    };
    let e = ChunkEngine::open(dir.path(), opts.clone()).unwrap();
    let c = cid(0xc000, 0);
    let data = pattern(12, 40 * B);
    e.write(c, 0, &data).unwrap();
    // A full overwrite needs 40 new blocks while the old 40 are still live: only 24 are free.
    let err = e.write(c, 0, &pattern(13, 40 * B)).unwrap_err();
    assert!(matches!(err, EngineError::NoSpace), "{err:?}");
    assert_eq!(err.status().code, StatusCode::NoSpace);
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), data);
    assert_eq!(
        e.chunk_info(c).unwrap().map(vl),
        Some((1, (40 * B) as u32))
    );
    let s = e.stats();
    assert_eq!((s.used_blocks, s.total_blocks), (40, 64));
    assert!(
        s.capacity_bytes <= 64 * BS && s.free_bytes == 24 * BS,
        "{s:?}"
    );
    // Smaller writes still fit and reuse space.
    e.write(c, 0, &pattern(14, 20 * B)).unwrap();
    e.write(c, (20 * B) as u32, &pattern(15, 20 * B)).unwrap();
    assert_eq!(e.stats().used_blocks, 40);
    drop(e);
    let e = ChunkEngine::open(dir.path(), opts).unwrap();
    let mut expect = pattern(14, 20 * B);
    expect.extend(pattern(15, 20 * B));
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), expect);
}

#[test]
fn stats_report_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.write(cid(0xd000, 0), 0, &pattern(1, 10 * 1024)).unwrap();
    let s = e.stats();
    assert_eq!(s.block_size, BLOCK_SIZE);
    assert_eq!(
        (s.used_blocks, s.chunks, s.total_blocks),
        (3, 1, 64),
        "10 KiB uses 3 blocks of the first growth step"
    );
    assert!(
        s.capacity_bytes > 0 && s.free_bytes > 0 && s.free_bytes <= s.capacity_bytes + 64 * BS
    );
}

#[test]
fn second_engine_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _e = open(dir.path());
    assert!(ChunkEngine::open(dir.path(), small_opts()).is_err());
}

#[test]
fn versioned_changes_apply_only_on_their_base_version() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = cid(40, 0);
    assert_eq!(write_at(&e, c, 0, 0, b"first", None).unwrap().version, 1);
    let err = write_at(&e, c, 0, 0, b"stale", None).unwrap_err();
    assert!(matches!(err, EngineError::VersionMismatch { current: 1, expected: 0 }), "{err}");
    assert_eq!(err.status().code, StatusCode::VersionMismatch);
    assert!(write_at(&e, c, 5, 0, b"ahead", None).is_err());
    assert_eq!(e.read(c, 0, 16).unwrap(), b"first");
    assert_eq!(write_at(&e, c, 1, 5, b"+second", None).unwrap().version, 2);
    assert!(e.truncate_at(c, 1, 3, None).is_err());
    let info = e.truncate_at(c, 2, 3, Some(RequestId { client: 7, seq: 9 })).unwrap();
    assert!(e.change_base(c, Some(RequestId { client: 7, seq: 9 })).unwrap().applied);
    assert_eq!((info.version, info.len), (3, 3));
    assert_eq!(e.read(c, 0, 16).unwrap(), b"fir");
}

#[test]
fn applied_requests_are_remembered_durably_and_travel_with_a_sync() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = cid(42, 0);
    let req = RequestId { client: 7, seq: 1 };
    {
        let a = open(d1.path());
        assert_eq!(a.change_base(c, Some(req)).unwrap(), ChangeBase::default());
        let info = write_at(&a, c, 0, 0, b"once", Some(req)).unwrap();
        assert_eq!(a.change_base(c, Some(req)).unwrap(), ChangeBase { current: Some(info), applied: true });
        assert!(!a.change_base(c, Some(RequestId { client: 8, seq: 1 })).unwrap().applied);
    }
    let a = open(d1.path());
    assert!(a.change_base(c, Some(req)).unwrap().applied, "forgotten across a restart");
    let b = open(d2.path());
    sync_chunk(&a, &b, c);
    assert!(b.change_base(c, Some(req)).unwrap().applied, "a synced replica must know it too");
}

/// What a primary does with a write: build its block images here, then store them.
fn write_at(e: &ChunkEngine, c: ChunkId, base: u64, off: u32, data: &[u8], request: Option<RequestId>) -> Result<ChunkInfo, EngineError> {
    let images = e.block_images(c, &[(off, Bytes::copy_from_slice(data))])?;
    e.write_blocks_at(c, base, &images, request)
}

#[test]
fn replicas_storing_the_primarys_block_images_end_identical() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(d1.path()), open(d2.path()));
    let c = cid(41, 3);
    let ops: [(u32, &[u8]); 5] = [(0, b"aaaa"), (4094, b"bbbbbbbb"), (100, b"cc"), (9000, b"d"), (4096, &[7; 4096])];
    for (v, (off, data)) in ops.iter().enumerate() {
        let images = a.block_images(c, &[(*off, Bytes::copy_from_slice(data))]).unwrap();
        let wire = BlockImages::received(images.runs().to_vec(), images.len(), images.images().clone(), images.crcs().to_vec()).unwrap();
        assert_eq!(wire, images);
        a.write_blocks_at(c, v as u64, &images, None).unwrap();
        b.write_blocks_at(c, v as u64, &wire, None).unwrap();
        // A duplicate delivery is refused, not applied twice.
        assert!(b.write_blocks_at(c, v as u64, &wire, None).is_err());
    }
    assert_eq!(a.chunk_info(c).unwrap(), b.chunk_info(c).unwrap());
    assert_eq!(a.block_map(c).unwrap(), b.block_map(c).unwrap(), "per-block CRCs differ");
    let expected = {
        let mut m = vec![0u8; 9001];
        for (off, data) in ops {
            m[off as usize..off as usize + data.len()].copy_from_slice(data);
        }
        m
    };
    assert_eq!(a.read(c, 0, 10_000).unwrap(), expected);
    assert_eq!(b.read(c, 0, 10_000).unwrap(), expected);
}

#[test]
fn a_write_of_many_pieces_matches_them_written_one_by_one_and_replicates_alike() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // One keeps short last blocks as tails, the other does not: how a replica keeps a block
    // is its own business.
    let (a, b) = (open_with_tails(d1.path()), open(d2.path()));
    let c = cid(42, 1);
    let mut model = pattern(3, 3 * B + 10);
    write_at(&a, c, 0, 0, &model, None).unwrap();
    write_at(&b, c, 0, 0, &model, None).unwrap();
    let mut rng = ember_testkit::TestRng::new(11);
    let mut next = |n: u64| rng.below(n);
    for round in 0..60u8 {
        // Pieces in offset order and apart, some aligned, some sharing an edge block with the
        // one before, some past the current end.
        let mut pieces = Vec::new();
        let mut at = next(3 * B as u64) as usize;
        for _ in 0..1 + next(6) {
            let len = if next(2) == 0 { B } else { 1 + next(B as u64 + 50) as usize };
            let off = if next(2) == 0 { at.next_multiple_of(B) } else { at };
            pieces.push((off as u32, Bytes::from(vec![round.wrapping_add(pieces.len() as u8 * 40); len])));
            at = off + len + 1 + next(B as u64 / 2) as usize;
        }
        for (off, data) in &pieces {
            let end = *off as usize + data.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[*off as usize..end].copy_from_slice(data);
        }
        let images = a.block_images(c, &pieces).unwrap();
        let wire = BlockImages::received(images.runs().to_vec(), images.len(), images.images().clone(), images.crcs().to_vec()).unwrap();
        let v = a.chunk_info(c).unwrap().unwrap().version;
        a.write_blocks_at(c, v, &images, None).unwrap();
        b.write_blocks_at(c, v, &wire, None).unwrap();
        assert_eq!(a.read(c, 0, u32::MAX).unwrap(), model, "round {round}: {:?}", images.runs());
    }
    assert_eq!(a.block_map(c).unwrap(), b.block_map(c).unwrap());
    let overlapping = [(0, Bytes::from(vec![1u8; 10])), (5, Bytes::from(vec![2u8; 10]))];
    assert_eq!(a.block_images(c, &overlapping).unwrap_err().status().code, StatusCode::InvalidArgument);
    let unordered = [(B as u32, Bytes::from(vec![1u8; 10])), (0, Bytes::from(vec![2u8; 10]))];
    assert_eq!(a.block_images(c, &unordered).unwrap_err().status().code, StatusCode::InvalidArgument);
}

#[test]
fn received_block_images_are_checked_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = cid(43, 0);
    let block = Bytes::from(vec![5u8; 4096]);
    let crc = crc32c::crc32c(&block);
    let two = Bytes::from([&block[..], &block[..]].concat());
    let refused = [
        (BlockImages::received(vec![(0, 1)], 4096, block.clone(), vec![crc ^ 1]), StatusCode::ChecksumMismatch),
        (BlockImages::received(vec![(0, 1)], 4096, block.slice(..4000), vec![crc]), StatusCode::InvalidArgument),
        (BlockImages::received(vec![(0, 1)], 4096, block.clone(), vec![]), StatusCode::InvalidArgument),
        (BlockImages::received(vec![(1, 1)], 4096, block.clone(), vec![crc]), StatusCode::InvalidArgument),
        (BlockImages::received(vec![(0, 2)], 8192, block.clone(), vec![crc]), StatusCode::InvalidArgument),
        (BlockImages::received(vec![(1, 1), (0, 1)], 8192, two.clone(), vec![crc, crc]), StatusCode::InvalidArgument),
        (BlockImages::received(vec![(0, 1), (0, 1)], 8192, two.clone(), vec![crc, crc]), StatusCode::InvalidArgument),
        (BlockImages::received(vec![(0, 0), (1, 2)], 12288, two, vec![crc, crc]), StatusCode::InvalidArgument),
    ];
    for (outcome, code) in refused {
        assert_eq!(outcome.unwrap_err().status().code, code);
    }
    let grown = BlockImages::received(vec![(0, 1)], 8192, block.clone(), vec![crc]).unwrap();
    e.write_blocks_at(c, 0, &grown, None).unwrap();
    let shrinking = BlockImages::received(vec![(0, 1)], 4096, block, vec![crc]).unwrap();
    let err = e.write_blocks_at(c, 1, &shrinking, None).unwrap_err();
    assert_eq!(err.status().code, StatusCode::InvalidArgument, "{err}");
    assert_eq!(e.chunk_info(c).unwrap().map(|i| (i.version, i.len)), Some((1, 8192)));
}

/// What a sync does for one chunk: send only the blocks whose CRC differs.
fn sync_chunk(from: &ChunkEngine, to: &ChunkEngine, c: ChunkId) -> usize {
    let (info, mine) = from.block_map(c).unwrap().unwrap();
    let theirs: std::collections::HashMap<u32, u32> =
        to.block_map(c).unwrap().map(|(_, m)| m.into_iter().collect()).unwrap_or_default();
    let present: Vec<u32> = mine.iter().map(|(l, _)| *l).collect();
    let patched: Vec<u32> = mine.iter().filter(|(l, crc)| theirs.get(l) != Some(crc)).map(|(l, _)| *l).collect();
    let images = from.read_block_images(c, &patched).unwrap();
    let requests = from.requests(c).unwrap();
    assert_eq!(to.patch(c, info.version, info.len, &present, &patched, &images, &requests).unwrap(), info);
    patched.len()
}

#[test]
fn block_maps_and_patches_sync_a_replica_block_by_block() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(d1.path()), open(d2.path()));
    for i in 0..5u32 {
        let c = cid(50, i);
        a.write(c, i * 1000, &vec![i as u8 + 1; 5000]).unwrap();
        a.write(c, 0, b"again").unwrap();
    }
    b.write(cid(50, 9), 0, b"only on b").unwrap();
    b.write(cid(50, 2), 0, b"stale").unwrap();

    let page1 = a.list(None, 3).unwrap();
    let page2 = a.list(Some(page1[2].0), 3).unwrap();
    assert_eq!(page1.len() + page2.len(), 5);
    for (c, _) in page1.iter().chain(&page2) {
        sync_chunk(&a, &b, *c);
    }
    assert!(b.remove(cid(50, 9)).unwrap());
    assert!(!b.remove(cid(50, 9)).unwrap());
    assert_eq!(a.list(None, 100).unwrap(), b.list(None, 100).unwrap());
    for i in 0..5u32 {
        assert_eq!(a.read(cid(50, i), 0, 10_000).unwrap(), b.read(cid(50, i), 0, 10_000).unwrap());
    }

    // One changed block (and a shrink) costs one block, and the dropped blocks are freed.
    let c = cid(50, 4);
    a.write(c, 4096 + 10, b"x").unwrap();
    a.truncate(c, 3 * 4096).unwrap();
    b.settle(0).unwrap();
    let used = b.stats().used_blocks;
    assert_eq!(sync_chunk(&a, &b, c), 1);
    b.settle(0).unwrap();
    assert_eq!(a.read(c, 0, 1 << 20).unwrap(), b.read(c, 0, 1 << 20).unwrap());
    assert!(b.stats().used_blocks <= used);
    // A patch that keeps a block the replica lacks is refused.
    assert!(b.patch(cid(51, 0), 1, 8192, &[0, 1], &[], &[], &[]).is_err());
}

fn vl(i: ChunkInfo) -> (u64, u32) {
    (i.version, i.len)
}

/// The staged images left in the journal, by physical block.
fn staged_blocks(e: &ChunkEngine) -> Vec<u64> {
    let mut blocks: Vec<u64> = staging::load(e.staging.keyspace()).unwrap().into_keys().collect();
    blocks.sort_unstable();
    blocks
}

/// Overwrites physical blocks in `blocks.dat` with garbage: what a power loss does to pages
/// written but never synced.
fn lose_unsynced(dir: &Path, blocks: &[u64]) {
    let f = std::fs::OpenOptions::new().write(true).open(dir.join(DATA_FILE)).unwrap();
    for b in blocks {
        f.write_all_at(&[0xA5; B], b * BS).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn small_writes_are_journaled_with_their_record_and_written_back_after_a_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (small, large, trunc) = (cid(0x9000, 0), cid(0x9000, 1), cid(0x9000, 2));
    let staged = {
        let e = open(dir.path());
        e.write(small, 100, &pattern(1, 3 * B)).unwrap();
        e.write(large, 0, &pattern(2, 17 * B)).unwrap();
        e.write(trunc, 0, &pattern(3, 2 * B)).unwrap();
        e.truncate(trunc, B as u32 + 10).unwrap();
        let staged = staged_blocks(&e);
        let large_blocks: Vec<u64> = meta(&e, large).blocks.values().map(|r| r.phys).collect();
        assert_eq!(staged.len(), 4 + 2 + 1, "4 + 2 small-write blocks and the zeroed tail");
        assert!(large_blocks.iter().all(|b| !staged.contains(b)), "a write past journal_blocks is synced in place");
        staged
    };
    lose_unsynced(dir.path(), &staged);
    let e = open(dir.path());
    let mut expected = vec![0u8; 100];
    expected.extend(pattern(1, 3 * B));
    assert_eq!(e.read(small, 0, u32::MAX).unwrap(), expected);
    assert_eq!(e.read(large, 0, u32::MAX).unwrap(), pattern(2, 17 * B));
    assert_eq!(e.read(trunc, 0, u32::MAX).unwrap(), pattern(3, 2 * B)[..B + 10].to_vec());
    assert!(staged_blocks(&e).is_empty(), "open writes the images back and clears them");
}

#[test]
fn replaced_staged_blocks_wait_for_their_settle_and_stale_images_are_not_written_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = cid(0x9100, 0);
    let (first, second) = {
        let e = open(dir.path());
        e.write(c, 0, &pattern(1, B)).unwrap();
        let first = meta(&e, c).blocks[&0].phys;
        e.write(c, 0, &pattern(2, B)).unwrap();
        let second = meta(&e, c).blocks[&0].phys;
        e.write(cid(0x9101, 0), 0, &pattern(3, B)).unwrap();
        assert!(meta(&e, cid(0x9101, 0)).blocks[&0].phys > second, "the replaced staged block is not reused yet");
        assert_eq!(staged_blocks(&e), vec![first, second, second + 1]);
        (first, second)
    };
    // Both images of block 0 survive in the journal; the data file lost both blocks.
    lose_unsynced(dir.path(), &[first, second]);
    let e = open(dir.path());
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), pattern(2, B));
    let mut raw = vec![0u8; B];
    e.blocks.read_blocks(first, &mut raw).unwrap();
    assert_eq!(raw, vec![0xA5; B], "the replaced write's image stays where it lost");

    // Enough staged writes settle: every image leaves the journal and replaced blocks are free.
    for i in 0..staging::SETTLE_BLOCKS as u64 {
        e.write(c, 0, &pattern(10 + i, B)).unwrap();
    }
    assert!(staged_blocks(&e).len() < 2, "{} images still staged", staged_blocks(&e).len());
    assert!(e.stats().used_blocks <= 3, "{} blocks in use", e.stats().used_blocks);
}

#[test]
fn a_format_1_target_is_upgraded_and_an_unknown_format_refused() {
    let dir = tempfile::tempdir().unwrap();
    let info = |e: &ChunkEngine| e.db.keyspace("engine", KeyspaceCreateOptions::default).unwrap();
    {
        let e = open(dir.path());
        e.write(cid(0x9200, 0), 0, b"kept").unwrap();
        info(&e).insert(FORMAT_KEY, [&[1u8][..], &BLOCK_SIZE.to_le_bytes()].concat()).unwrap();
        e.db.persist(PersistMode::SyncAll).unwrap();
    }
    {
        let e = open(dir.path());
        assert_eq!(e.read(cid(0x9200, 0), 0, 4).unwrap(), b"kept");
        assert_eq!(info(&e).get(FORMAT_KEY).unwrap().unwrap()[0], FORMAT_VERSION);
        info(&e).insert(FORMAT_KEY, [&[9u8][..], &BLOCK_SIZE.to_le_bytes()].concat()).unwrap();
        e.db.persist(PersistMode::SyncAll).unwrap();
    }
    let err = ChunkEngine::open(dir.path(), small_opts()).err().unwrap();
    assert!(err.to_string().contains("unsupported engine format"), "{err}");
}

#[test]
fn zeroed_blocks_become_holes_on_every_replica_and_free_their_space() {
    let (d, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (e, replica) = (open(d.path()), open(d2.path()));
    let c = cid(77, 0);
    let data = pattern(9, 8 * B);
    let base = |e: &ChunkEngine| e.chunk_info(c).unwrap().map_or(0, |i| i.version);
    let images = e.block_images(c, &[(0, Bytes::from(data.clone()))]).unwrap();
    e.write_blocks_at(c, 0, &images, None).unwrap();
    replica.write_blocks_at(c, 0, &images, None).unwrap();

    // Zeros over blocks 2..6, starting and ending inside blocks 1 and 6: the partial edge
    // blocks keep their other bytes, the whole ones go.
    let (off, len) = (B + 100, 5 * B);
    let images = e.block_images(c, &[(off as u32, Bytes::from(vec![0u8; len]))]).unwrap();
    let v = base(&e);
    e.write_blocks_at(c, v, &images, None).unwrap();
    replica.write_blocks_at(c, v, &images, None).unwrap();
    let mut expect = data.clone();
    expect[off..off + len].fill(0);
    for eng in [&e, &replica] {
        assert_eq!(eng.read(c, 0, u32::MAX).unwrap(), expect);
        let mapped: Vec<u32> = meta(eng, c).blocks.keys().copied().collect();
        assert_eq!(mapped, vec![0, 1, 6, 7]);
        eng.settle(0).unwrap();
        assert_eq!(eng.stats().used_blocks, 4, "the zeroed blocks were freed");
        assert_eq!(eng.chunk_info(c).unwrap().unwrap().len, (8 * B) as u32, "the length stays");
    }
    assert_eq!(e.block_map(c).unwrap(), replica.block_map(c).unwrap());

    // A write of zeros into a hole or a new chunk stores nothing, and reads back as zeros.
    e.write(c, (3 * B) as u32, &vec![0u8; B]).unwrap();
    let fresh = cid(78, 0);
    e.write(fresh, 0, &vec![0u8; 3 * B]).unwrap();
    assert_eq!(e.read(fresh, 0, u32::MAX).unwrap(), vec![0u8; 3 * B]);
    e.settle(0).unwrap();
    assert_eq!(e.stats().used_blocks, 4);
}

fn space(e: &ChunkEngine) -> (u64, u64) {
    let s = e.stats();
    (s.used_blocks, s.tail_bytes)
}

#[test]
fn a_short_last_block_is_kept_as_a_tail_through_growth_truncate_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = cid(90, 0);
    let mut model = pattern(9, 5 * 1024);
    model[5 * 1024 - 1] = 0xff;
    {
        let e = open_with_tails(dir.path());
        e.write(c, 0, &model).unwrap();
        assert_eq!(space(&e), (1, 1024), "a 5 KiB chunk: one block and a 1 KiB tail");
        assert_eq!(e.read(c, 0, u32::MAX).unwrap(), model);
        e.write(c, 4200, b"middle of the tail").unwrap();
        model[4200..4218].copy_from_slice(b"middle of the tail");
        assert_eq!(space(&e), (1, 1024), "the replaced tail is gone");
    }
    let e = open_with_tails(dir.path());
    assert_eq!(space(&e), (1, 1024), "counted again at open");
    assert_eq!(e.read(c, 4000, 1000).unwrap(), model[4000..5000]);
    let mut more = pattern(10, 4000);
    more[3999] = 0xff;
    e.write(c, model.len() as u32, &more).unwrap();
    model.extend_from_slice(&more);
    assert_eq!(space(&e), (2, model.len() as u64 - 2 * B as u64), "the old tail became a block, the new end a tail");
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), model);
    e.truncate(c, 4100).unwrap();
    e.settle(0).unwrap();
    model.truncate(4100);
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), model);
    assert_eq!(space(&e).1, 0);
    e.truncate(c, 3000).unwrap();
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), model[..3000]);
    assert!(e.remove(c).unwrap());
    e.settle(0).unwrap();
    assert_eq!(space(&e), (0, 0));
    drop(e);
    let e = open_with_tails(dir.path());
    assert_eq!(space(&e), (0, 0));
    assert_eq!(e.tails.keyspace_len(), 0, "no tail left behind");
}

#[test]
fn a_tail_left_inside_by_sparse_growth_still_reads_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_with_tails(dir.path());
    let c = cid(91, 0);
    e.write(c, 0, b"short").unwrap();
    let far = pattern(11, B);
    e.write(c, (2 * B) as u32, &far).unwrap();
    assert_eq!(space(&e), (1, 5));
    let mut model = b"short".to_vec();
    model.resize(2 * B, 0);
    model.extend_from_slice(&far);
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), model);
    let phys = meta(&e, c).blocks[&0].phys;
    assert!(is_tail(phys));
    // A tail whose stored bytes were changed behind the engine's back fails its CRC.
    let mut batch = e.db.batch();
    e.tails.insert(&mut batch, phys, b"shirt");
    batch.commit().unwrap();
    assert_eq!(e.read(c, 0, 10).unwrap_err().status().code, StatusCode::CorruptData);
}

#[test]
fn a_crash_before_the_commit_leaves_the_old_tail_and_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let c = cid(92, 0);
    {
        let e = open_with_tails(dir.path());
        e.write(c, 0, &[1u8; 100]).unwrap();
        e.set_crash_points(Arc::new(|point| point == "meta.commit"));
        assert!(e.write(c, 0, &[2u8; 200]).is_err());
    }
    let e = open_with_tails(dir.path());
    assert_eq!(e.read(c, 0, u32::MAX).unwrap(), vec![1u8; 100]);
    assert_eq!((space(&e), e.tails.keyspace_len()), ((0, 100), 1));
}

#[test]
fn blocks_dat_grows_by_an_eighth_of_its_size_up_to_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_unstaged(dir.path());
    for i in 0..40u32 {
        e.write(cid(0x4000 + u64::from(i), 0), 0, &pattern(u64::from(i), 64 * B)).unwrap();
    }
    let total = e.stats().total_blocks;
    assert!((2560..=2560 + 2560 / 8 + 64).contains(&total), "{total} blocks for 2,560 in use");
}

#[test]
fn small_writes_stop_staging_once_the_journal_passes_its_budget_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions { staging_journal_bytes: 256 << 10, ..small_opts() };
    let staged = {
        let e = ChunkEngine::open(dir.path(), opts.clone()).unwrap();
        for i in 0..200 {
            e.write(cid(0xd000, i), 0, &pattern(u64::from(i), B)).unwrap();
        }
        staged_blocks(&e)
    };
    assert!(
        (32..=64).contains(&staged.len()),
        "{} of 200 one-block writes staged; a 256 KiB budget holds at most 64 images",
        staged.len()
    );
    lose_unsynced(dir.path(), &staged);
    let e = ChunkEngine::open(dir.path(), opts).unwrap();
    for i in 0..200 {
        assert_eq!(e.read(cid(0xd000, i), 0, u32::MAX).unwrap(), pattern(u64::from(i), B), "chunk {i}");
    }
}

#[test]
fn a_target_that_stores_more_stages_more() {
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(dir.path(), EngineOptions { staging_journal_bytes: 256 << 10, ..small_opts() }).unwrap();
    // Written in place (past `journal_blocks`): 4 MiB stored, so a quarter is 1 MiB of journal.
    e.write(cid(0xd100, 0), 0, &pattern(7, 1024 * B)).unwrap();
    assert!(staged_blocks(&e).is_empty());
    for i in 1..=200 {
        e.write(cid(0xd100, i), 0, &pattern(u64::from(i), B)).unwrap();
    }
    assert_eq!(staged_blocks(&e).len(), 200);
}
