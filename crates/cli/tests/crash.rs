//! Durability: what fsync (or close) acknowledged survives kill -9 of any process.

use std::fs;
use std::io::Write;
use std::path::Path;

use ember_testkit::{fuse_available, random_bytes, Cluster, Slots, Spec};

static SLOTS: Slots = Slots::new(1);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

/// Acknowledged state, recorded outside the system under test.
struct Expected {
    synced: Vec<u8>,
    closed: Vec<u8>,
}

/// Writes one file and fsyncs it while it stays open, and one file that is closed.
fn write_and_acknowledge(root: &Path) -> (fs::File, Expected) {
    fs::create_dir(root.join("d")).unwrap();
    let synced = random_bytes(11, (8 << 20) + 12_345);
    let mut open = fs::File::create(root.join("d/synced")).unwrap();
    open.write_all(&synced).unwrap();
    open.sync_all().unwrap();
    let closed = random_bytes(12, 300_001);
    fs::write(root.join("d/closed"), &closed).unwrap();
    (open, Expected { synced, closed })
}

fn check(root: &Path, want: &Expected, logs: &str) {
    let synced = fs::read(root.join("d/synced")).unwrap_or_else(|e| panic!("read synced: {e}\n{logs}"));
    assert_eq!(synced.len(), want.synced.len(), "fsynced file length\n{logs}");
    assert!(synced == want.synced, "fsynced bytes differ\n{logs}");
    let closed = fs::read(root.join("d/closed")).unwrap();
    assert_eq!(closed.len(), want.closed.len(), "closed file length");
    assert!(closed == want.closed, "closed file bytes differ");
}

#[test]
fn acknowledged_writes_survive_kill9_of_storage_and_meta() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let mut cluster = Cluster::start(bin(), 2);
    let mut mount = cluster.mount();
    let (open, want) = write_and_acknowledge(&mount.path);

    cluster.storage[0].kill9();
    cluster.meta.kill9();
    cluster.restart_storage(0);
    cluster.restart_meta();

    drop(open);
    assert!(mount.unmount(), "the old mount did not stop cleanly:\n{}", mount.proc.log_tail());
    let fresh = cluster.mount();
    check(&fresh.path, &want, &cluster.logs());
    // The cluster keeps working after the crash.
    fs::write(fresh.join("d/after"), b"still writable").unwrap();
    assert_eq!(fs::read(fresh.join("d/after")).unwrap(), b"still writable");
}

/// `periodic` metadata durability acknowledges a change once the OS has it: a crash of the
/// process (not of the machine) loses nothing either.
#[test]
fn periodic_metadata_loses_nothing_to_kill9_of_meta() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let spec = Spec { storage_nodes: 1, targets: 1, replicas: 1, chain_mode: false, periodic_meta: true, client_session_timeout_ms: None };
    let mut cluster = Cluster::start_spec(bin(), spec);
    let mut mount = cluster.mount();
    let (open, want) = write_and_acknowledge(&mount.path);
    let names: Vec<String> = (0..200).map(|i| format!("d/small{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        fs::write(mount.join(n), random_bytes(100 + i as u64, i * 37)).unwrap();
    }
    cluster.meta.kill9();
    cluster.restart_meta();

    drop(open);
    assert!(mount.unmount(), "the old mount did not stop cleanly:\n{}", mount.proc.log_tail());
    let fresh = cluster.mount();
    check(&fresh.path, &want, &cluster.logs());
    for (i, n) in names.iter().enumerate() {
        assert_eq!(fs::read(fresh.join(n)).unwrap(), random_bytes(100 + i as u64, i * 37), "{n}");
    }
}

#[test]
fn acknowledged_writes_survive_kill9_of_the_mount() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mut mount = cluster.mount();
    let (open, want) = write_and_acknowledge(&mount.path);
    mount.kill9();
    drop(open);
    let fresh = cluster.mount();
    check(&fresh.path, &want, &cluster.logs());
}

#[test]
fn writes_wait_for_a_storage_node_that_is_down_longer_than_its_lease() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let mut cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let before = random_bytes(21, 2 << 20);
    fs::write(mount.join("before"), &before).unwrap();

    cluster.storage[0].kill9();
    // Long enough for mgmtd to declare the node dead (1 s) and the target LASTSRV.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let during = random_bytes(22, 3 << 20);
    let path = mount.join("during");
    let data = during.clone();
    let writer = std::thread::spawn(move || fs::write(path, &data));
    std::thread::sleep(std::time::Duration::from_millis(500));
    cluster.restart_storage(0);
    writer.join().unwrap().unwrap_or_else(|e| panic!("write across the outage failed: {e}\n{}\n--- mount\n{}", cluster.logs(), mount.proc.log_tail()));

    assert!(fs::read(mount.join("before")).unwrap() == before);
    assert!(fs::read(mount.join("during")).unwrap() == during);
}
