//! Inline files (bytes kept in meta up to a limit, 4 KiB by default) through the real mount:
//! every size around the limit, growth past it, truncates, overwrites, two clients, crashes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ember_testkit::{fuse_available, random_bytes, Cluster, Slots, TestRng};

static SLOTS: Slots = Slots::new(2);

const LIMIT: usize = 4096;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
}

fn model_write(model: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if model.len() < offset + data.len() {
        model.resize(offset + data.len(), 0);
    }
    model[offset..offset + data.len()].copy_from_slice(data);
}

/// Files written in every way the limit matters, with what each must hold.
fn write_every_case(root: &Path) -> (BTreeMap<PathBuf, Vec<u8>>, fs::File) {
    let mut want = BTreeMap::new();
    for size in [0, 1, LIMIT - 1, LIMIT, LIMIT + 1, 64 << 10] {
        let data = random_bytes(size as u64, size);
        fs::write(root.join(format!("closed-{size}")), &data).unwrap();
        want.insert(root.join(format!("closed-{size}")), data);
    }
    // Past the limit by appending: the file moves to chunks with its inline bytes.
    let grow = root.join("grow");
    let mut model = random_bytes(1, 3000);
    fs::write(&grow, &model).unwrap();
    let tail = random_bytes(2, 2000);
    fs::OpenOptions::new().append(true).open(&grow).unwrap().write_all(&tail).unwrap();
    model.extend_from_slice(&tail);
    want.insert(grow, model);
    // Overwrite in the middle, inline.
    let mid = root.join("mid");
    let mut model = random_bytes(3, 4000);
    fs::write(&mid, &model).unwrap();
    write_at(&mid, 100, b"middle");
    model_write(&mut model, 100, b"middle");
    want.insert(mid, model);
    // Chunked, then truncated back below the limit and overwritten there.
    let shrink = root.join("shrink");
    let mut model = random_bytes(4, 10_000);
    fs::write(&shrink, &model).unwrap();
    fs::OpenOptions::new().write(true).open(&shrink).unwrap().set_len(100).unwrap();
    model.truncate(100);
    write_at(&shrink, 10, b"0123456789");
    model_write(&mut model, 10, b"0123456789");
    want.insert(shrink, model);
    // Truncated up within the limit (zeros), and past it.
    for (name, len) in [("pad", 3000usize), ("pad-past", 10_000)] {
        let path = root.join(name);
        fs::write(&path, b"0123456789").unwrap();
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len as u64).unwrap();
        let mut model = b"0123456789".to_vec();
        model.resize(len, 0);
        want.insert(path, model);
    }
    // Acknowledged by fsync while still open.
    let synced = root.join("synced");
    let mut open = fs::File::create(&synced).unwrap();
    let data = random_bytes(5, 2500);
    open.write_all(&data).unwrap();
    open.sync_all().unwrap();
    want.insert(synced, data);
    (want, open)
}

fn check(root: &Path, want: &BTreeMap<PathBuf, Vec<u8>>, logs: &str) {
    for (path, data) in want {
        let path = root.join(path.file_name().unwrap());
        let got = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}\n{logs}", path.display()));
        assert_eq!(got.len(), data.len(), "{} length\n{logs}", path.display());
        assert!(got == *data, "{} bytes differ\n{logs}", path.display());
        assert_eq!(fs::metadata(&path).unwrap().len(), data.len() as u64, "{} stat size", path.display());
    }
}

#[test]
fn every_size_around_the_limit_survives_kill9_of_meta_and_mount() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let mut cluster = Cluster::start(bin(), 1);
    let mut mount = cluster.mount();
    let (want, open) = write_every_case(&mount.path);
    check(&mount.path, &want, "");

    cluster.meta.kill9();
    cluster.restart_meta();
    mount.kill9();
    drop(open);
    let fresh = cluster.mount();
    check(&fresh.path, &want, &cluster.logs());
}

#[test]
fn small_files_cost_no_storage_request() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    fs::write(mount.join("warm"), random_bytes(1, 100_000)).unwrap();
    let before = cluster.storage_writes();
    assert!(before > 0, "the metric does not count storage writes");
    for i in 0..50 {
        fs::write(mount.join(&format!("f{i}")), random_bytes(i, 4000)).unwrap();
    }
    for i in 0..50 {
        assert!(fs::read(mount.join(&format!("f{i}"))).unwrap() == random_bytes(i, 4000));
    }
    assert_eq!(cluster.storage_writes(), before, "inline files went to storage");
}

#[test]
fn a_second_client_spills_while_the_first_writes_inline_and_both_writes_land() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    fs::write(a.join("shared"), b"hello").unwrap();
    assert_eq!(fs::read(b.join("shared")).unwrap(), b"hello");

    // A writes inline and keeps the file open; B then grows it past the limit.
    let mut held = fs::OpenOptions::new().write(true).open(a.join("shared")).unwrap();
    held.write_all(b"HE").unwrap();
    let tail = random_bytes(7, 1000);
    write_at(&b.join("shared"), 5000, &tail);
    // A's close finds the file moved to chunks and writes its bytes there.
    drop(held);

    let mut want = b"HEllo".to_vec();
    model_write(&mut want, 5000, &tail);
    for m in [&a, &b] {
        let mut got = Vec::new();
        fs::File::open(m.join("shared")).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the two clients' writes did not both land");
    }
}

/// Random writes, truncates and reads on a few files that cross the limit both ways, checked
/// against an in-memory model after every step and after remounting.
#[test]
fn random_operations_across_the_limit_match_a_model() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let mut rng = TestRng::new(0x1234_5678_9abc_def0);
    let mut next = move |n: u64| rng.below(n);
    let mut models: Vec<Vec<u8>> = vec![Vec::new(); 4];
    for i in 0..models.len() {
        fs::write(mount.join(&format!("m{i}")), b"").unwrap();
    }
    for step in 0..400u64 {
        let i = next(models.len() as u64) as usize;
        let path = mount.join(&format!("m{i}"));
        match next(10) {
            0..=5 => {
                let offset = next(3 * LIMIT as u64) as usize;
                let data = random_bytes(step, 1 + next(2 * LIMIT as u64) as usize);
                write_at(&path, offset as u64, &data);
                model_write(&mut models[i], offset, &data);
            }
            6 | 7 => {
                let len = next(3 * LIMIT as u64) as usize;
                fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len as u64).unwrap();
                models[i].resize(len, 0);
            }
            _ => {}
        }
        let got = fs::read(&path).unwrap();
        assert!(got == models[i], "step {step}: m{i} has {} bytes, the model {}", got.len(), models[i].len());
    }
    let fresh = cluster.mount();
    for (i, model) in models.iter().enumerate() {
        assert!(fs::read(fresh.join(&format!("m{i}"))).unwrap() == *model, "m{i} after remount");
    }
}
