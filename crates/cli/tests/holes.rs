//! fallocate (default, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE) and SEEK_DATA / SEEK_HOLE through
//! the real mount: the bytes, the length, the space on storage, and what a second mount sees.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use ember_testkit::{errno, fuse_available, random_bytes, Cluster, Slots};

static SLOTS: Slots = Slots::new(2);
const B: u64 = 4096;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> Result<(), i32> {
    match unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

fn seek(f: &File, offset: u64, whence: i32) -> Result<u64, i32> {
    match unsafe { libc::lseek(f.as_raw_fd(), offset as i64, whence) } {
        -1 => Err(errno()),
        at => Ok(at as u64),
    }
}

/// Bytes the storage targets report in use, once the report has settled on a value.
fn used_on_storage(cluster: &Cluster) -> u64 {
    let read = || {
        let text = cluster.admin(&["--json", "targets"]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("targets as JSON");
        let targets = v.as_array().expect("a list of targets");
        targets.iter().filter_map(|t| t.get("used_bytes").and_then(|u| u.as_u64())).sum::<u64>()
    };
    let (mut last, mut same_since) = (read(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(10);
    while same_since.elapsed() < Duration::from_millis(1500) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        if now != last {
            (last, same_since) = (now, Instant::now());
        }
    }
    last
}

#[test]
fn fallocate_modes_and_seek_data_hole_match_linux() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    let size = 3 << 20;
    let mut model = random_bytes(5, size as usize);
    fs::write(a.join("f"), &model).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(a.join("f")).unwrap();
    let used_before = used_on_storage(&cluster);

    // A punched hole reads as zeros, keeps the length and frees the whole blocks in it.
    let (start, end) = (300_000u64, 2_500_000u64);
    fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, start, end - start).unwrap();
    model[start as usize..end as usize].fill(0);
    assert_eq!(f.metadata().unwrap().len(), size);
    let freed = used_before.saturating_sub(used_on_storage(&cluster));
    let whole = (end / B - start.div_ceil(B)) * B;
    // A few blocks, rewritten at the edges of the zeroing writes, wait in the staging area
    // until its next sync before they count as free.
    assert!(freed + 16 * B >= whole, "punching {whole} bytes of whole blocks freed {freed} on storage");

    // SEEK_DATA / SEEK_HOLE see the hole at block granularity, and the end of file as a hole.
    let (hole_start, data_again) = (start.div_ceil(B) * B, end / B * B);
    assert_eq!(seek(&f, 0, libc::SEEK_DATA), Ok(0));
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE), Ok(hole_start));
    assert_eq!(seek(&f, hole_start + 10, libc::SEEK_HOLE), Ok(hole_start + 10));
    assert_eq!(seek(&f, hole_start, libc::SEEK_DATA), Ok(data_again));
    assert_eq!(seek(&f, data_again, libc::SEEK_HOLE), Ok(size));
    assert_eq!(seek(&f, size, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(seek(&f, size - 1, libc::SEEK_DATA), Ok(size - 1));

    // ZERO_RANGE past the end grows the file; KEEP_SIZE past the end does not; mode 0 grows.
    fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, size - 1000, 6000).unwrap();
    model[size as usize - 1000..].fill(0);
    model.resize(size as usize + 5000, 0);
    assert_eq!(f.metadata().unwrap().len(), size + 5000);
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, size * 2).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size + 5000);
    fallocate(&f, 0, size + 5000, 20_000).unwrap();
    model.resize(size as usize + 25_000, 0);
    assert_eq!(f.metadata().unwrap().len(), size + 25_000);
    assert_eq!(seek(&f, size + 5000, libc::SEEK_DATA), Err(libc::ENXIO), "the grown tail is a hole");
    assert_eq!(fallocate(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, B), Err(libc::EOPNOTSUPP));

    f.sync_all().unwrap();
    assert!(fs::read(a.join("f")).unwrap() == model, "this mount reads other bytes than the model");
    assert!(fs::read(b.join("f")).unwrap() == model, "another mount reads other bytes than the model");

    // An inline file: the bytes live in meta, all of it is data.
    fs::write(a.join("small"), random_bytes(6, 3000)).unwrap();
    let s = OpenOptions::new().read(true).write(true).open(a.join("small")).unwrap();
    fallocate(&s, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 100, 1900).unwrap();
    let mut expect = random_bytes(6, 3000);
    expect[100..2000].fill(0);
    assert_eq!(seek(&s, 0, libc::SEEK_HOLE), Ok(3000));
    drop(s);
    assert!(fs::read(b.join("small")).unwrap() == expect);
}

/// st_blocks (512-byte units) of `p` once the attribute cache (1 s) has expired.
fn blocks(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::thread::sleep(Duration::from_millis(1100));
    fs::metadata(p).unwrap().blocks()
}

#[test]
fn st_blocks_counts_what_storage_holds() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    const MIB: u64 = 1 << 20;
    let sectors = |bytes: u64| bytes / 512;
    fs::write(a.join("f"), random_bytes(7, 3 * MIB as usize)).unwrap();
    assert_eq!(blocks(&b.join("f")), sectors(3 * MIB), "written data, seen from another mount");

    let f = OpenOptions::new().read(true).write(true).open(a.join("f")).unwrap();
    fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, MIB, MIB).unwrap();
    f.sync_all().unwrap();
    assert_eq!(blocks(&b.join("f")), sectors(2 * MIB), "a punched hole takes no space");

    // Cut inside the punched chunk: the chunks past the end count nothing, the hole stays one.
    f.set_len(MIB + MIB / 2).unwrap();
    assert_eq!(blocks(&b.join("f")), sectors(MIB), "after a truncate");
    f.set_len(10 * MIB).unwrap();
    assert_eq!(blocks(&b.join("f")), sectors(MIB), "growing a file adds a hole, not blocks");

    // Zeros written by a program are holes too.
    use std::os::unix::fs::FileExt;
    f.write_all_at(&vec![0u8; (MIB / 2) as usize], 0).unwrap();
    f.sync_all().unwrap();
    assert_eq!(blocks(&b.join("f")), sectors(MIB / 2));

    // copy_file_range: the copy holds what the source held.
    let src = File::open(a.join("f")).unwrap();
    let dst = OpenOptions::new().write(true).create(true).truncate(true).open(a.join("g")).unwrap();
    let (mut off_in, mut off_out) = (0i64, 0i64);
    let copied = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, MIB as usize, 0) };
    assert_eq!(copied, MIB as isize);
    drop(dst);
    assert_eq!(blocks(&b.join("g")), sectors(MIB / 2), "a copy of half data, half hole");

    // Blocks a writer has not reported yet count at once for it, as delayed allocations do.
    let mut open = File::create(a.join("open")).unwrap();
    open.write_all(&random_bytes(9, 2 * MIB as usize)).unwrap();
    assert_eq!(blocks(&a.join("open")), sectors(2 * MIB), "buffered writes, seen by their mount");
    open.sync_all().unwrap();
    assert_eq!(blocks(&a.join("open")), sectors(2 * MIB), "once stored");
    drop(open);

    // An inline file counts its length.
    fs::write(a.join("small"), random_bytes(8, 3000)).unwrap();
    assert_eq!(blocks(&b.join("small")), 6);
}
