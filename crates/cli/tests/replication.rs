//! Replicated chains (3 storage nodes, chains of 3) through the FUSE mount, under failures:
//! a replica lost, the primary lost, every node restarted in turn, all while a writer runs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_testkit::{fuse_available, random_bytes, Cluster, Slots, Spec, TestRng};

static SLOTS: Slots = Slots::new(1);
/// The longest a write may wait through one failure. Measured here: about 0.8 s for a lost
/// replica and 1.1 s for a lost or hung primary; the bound leaves room for a loaded machine.
const STALL_BOUND: Duration = Duration::from_secs(5);
const NODES: usize = 3;

fn start() -> Cluster {
    start_in(false)
}

fn start_in(chain_mode: bool) -> Cluster {
    let bin = Path::new(env!("CARGO_BIN_EXE_ember"));
    Cluster::start_spec(bin, Spec { storage_nodes: NODES, targets: 1, replicas: NODES, chain_mode, periodic_meta: false, client_session_timeout_ms: None })
}

/// Waits until every target is SERVING and up to date.
fn wait_all_serving(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets: Vec<serde_json::Value> = serde_json::from_str(&cluster.admin(&["targets", "--json"])).unwrap();
        if targets.iter().all(|t| t["state"] == "serving" && t["local_state"] == "uptodate") {
            return;
        }
        assert!(Instant::now() < deadline, "targets never all served again: {targets:?}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Index of the storage node holding the chain's primary.
fn primary_node(cluster: &Cluster) -> usize {
    let chains: Vec<serde_json::Value> = serde_json::from_str(&cluster.admin(&["chains", "--json"])).unwrap();
    let primary = chains[0]["targets"][0].as_u64().unwrap() as u32;
    (0..NODES).find(|n| cluster.target_id(*n, 0) == primary).unwrap()
}

/// Bytes all storage nodes copied to members they synced, from their /metrics.
fn synced_bytes(cluster: &Cluster) -> u64 {
    (0..NODES).map(|n| cluster.storage_metric(n, "ember_storage_sync_bytes_total")).sum()
}

/// One sample (name with its labels) from a storage node's /metrics; 0 when absent.
/// Files whose write returned, with their contents.
type Acked = Vec<(PathBuf, Vec<u8>)>;

/// Writes files of 4 KiB to 1 MiB until stopped; returns what was acknowledged and the
/// longest time one file took.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Acked, Duration)>,
}

impl Writer {
    fn start(dir: PathBuf) -> Writer {
        fs::create_dir_all(&dir).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut acked, mut longest) = (Vec::new(), Duration::ZERO);
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let len = 4096 << (i % 9);
                let data = random_bytes(1000 + i, len);
                let path = dir.join(format!("w{i}"));
                let t0 = Instant::now();
                fs::write(&path, &data).unwrap_or_else(|e| panic!("write {} failed: {e}", path.display()));
                longest = longest.max(t0.elapsed());
                acked.push((path, data));
                i += 1;
            }
            (acked, longest)
        });
        Writer { stop, handle }
    }

    fn finish(self) -> (Acked, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer panicked")
    }
}

/// A started cluster, its mount, every target serving, and a first file written (so that
/// meta knows the chains: stalls measured later are the failure's alone).
fn ready(chain_mode: bool) -> (Cluster, ember_testkit::Mount) {
    let cluster = start_in(chain_mode);
    let mount = cluster.mount();
    wait_all_serving(&cluster);
    fs::write(mount.join("first"), b"first").unwrap();
    (cluster, mount)
}

/// Kills storage node `victim`, keeps it down for `down`, and starts it again.
fn outage(cluster: &mut Cluster, victim: usize, down: Duration) {
    cluster.storage[victim].kill9();
    std::thread::sleep(down);
    cluster.restart_storage(victim);
}

fn verify(acked: &[(PathBuf, Vec<u8>)], cluster: &Cluster) {
    for (path, data) in acked {
        let back = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}\n{}", path.display(), cluster.logs()));
        assert!(back == *data, "{} differs after the failure", path.display());
    }
}

#[test]
fn a_lost_replica_costs_no_write_and_resyncs_only_what_changed() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let mut cluster = start();
    let mount = cluster.mount();
    let base = random_bytes(5, 16 << 20);
    fs::write(mount.join("base"), &base).unwrap();
    wait_all_serving(&cluster);
    let before = synced_bytes(&cluster);

    let victim = (primary_node(&cluster) + 1) % NODES;
    let writer = Writer::start(mount.join("stream"));
    std::thread::sleep(Duration::from_millis(500));
    outage(&mut cluster, victim, Duration::from_millis(2000));
    std::thread::sleep(Duration::from_millis(500));
    let (acked, longest) = writer.finish();
    eprintln!("replica loss: {} writes acknowledged, longest {longest:?}", acked.len());
    assert!(longest < STALL_BOUND, "a write hung for {longest:?}");

    wait_all_serving(&cluster);
    verify(&acked, &cluster);
    assert!(fs::read(mount.join("base")).unwrap() == base);
    let written: u64 = acked.iter().map(|(_, d)| d.len() as u64).sum();
    let copied = synced_bytes(&cluster) - before;
    eprintln!("resync copied {copied} bytes; data set {} bytes", written + base.len() as u64);
    assert!(copied <= written, "resync copied {copied} bytes, more than the {written} written meanwhile");
}

/// Writes through `fail` of the chain's primary, then checks that no write stalled past the
/// bound, that another member took over, and that every acknowledged write reads back, also
/// after the old primary is back.
fn survive_primary_failure(what: &str, fail: impl FnOnce(&mut Cluster, usize)) {
    let (mut cluster, mount) = ready(false);
    let old = primary_node(&cluster);
    let writer = Writer::start(mount.join("stream"));
    std::thread::sleep(Duration::from_millis(500));
    fail(&mut cluster, old);
    std::thread::sleep(Duration::from_millis(2500));
    let (acked, longest) = writer.finish();
    eprintln!("{what}: {} writes acknowledged, longest {longest:?}", acked.len());
    assert!(longest < STALL_BOUND, "a write hung for {longest:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while primary_node(&cluster) == old {
        assert!(Instant::now() < deadline, "no new primary:\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    verify(&acked, &cluster);

    cluster.storage[old].kill9();
    cluster.restart_storage(old);
    wait_all_serving(&cluster);
    verify(&acked, &cluster);
}

#[test]
fn a_new_primary_takes_over_without_losing_acknowledged_writes() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    survive_primary_failure("primary loss", |cluster, old| cluster.storage[old].kill9());
}

#[test]
fn a_hung_primary_is_replaced_and_writers_move_on() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    // Stopped, not dead: its connections stay open and answer nothing.
    survive_primary_failure("hung primary", |cluster, old| {
        let pid = cluster.storage[old].pid().expect("the primary runs") as i32;
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    });
}

#[test]
fn a_rolling_restart_of_every_storage_node_costs_no_write() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let (mut cluster, mount) = ready(false);
    let writer = Writer::start(mount.join("stream"));
    for n in 0..NODES {
        std::thread::sleep(Duration::from_millis(300));
        cluster.restart_storage(n);
        wait_all_serving(&cluster);
    }
    let (acked, _) = writer.finish();
    assert!(!acked.is_empty());
    verify(&acked, &cluster);
}

#[test]
fn chain_mode_replicates_member_after_member_and_survives_a_lost_replica() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let (mut cluster, mount) = ready(true);
    let chains: serde_json::Value = serde_json::from_str(&cluster.admin(&["status", "--json"])).unwrap();
    assert_eq!(chains["chains"].as_array().unwrap().len(), 1);
    let victim = (primary_node(&cluster) + 2) % NODES;
    let writer = Writer::start(mount.join("stream"));
    std::thread::sleep(Duration::from_millis(300));
    outage(&mut cluster, victim, Duration::from_millis(1500));
    let (acked, _) = writer.finish();
    wait_all_serving(&cluster);
    verify(&acked, &cluster);
}

#[test]
fn a_returning_replica_copies_only_the_blocks_it_missed() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let mut cluster = start();
    let mount = cluster.mount();
    let mut expect = random_bytes(77, 32 << 20);
    fs::write(mount.join("base"), &expect).unwrap();
    wait_all_serving(&cluster);
    let before = synced_bytes(&cluster);

    let victim = (primary_node(&cluster) + 1) % NODES;
    cluster.storage[victim].kill9();
    let mut f = fs::OpenOptions::new().write(true).open(mount.join("base")).unwrap();
    let mut rng = TestRng::new(0x1234_5678);
    let pieces = 100;
    for i in 0..pieces {
        let offset = rng.below(expect.len() as u64 / 4096) * 4096;
        let piece = random_bytes(500 + i, 4096);
        std::os::unix::fs::FileExt::write_all_at(&f, &piece, offset).unwrap();
        expect[offset as usize..offset as usize + 4096].copy_from_slice(&piece);
    }
    f.flush().unwrap();
    f.sync_all().unwrap();
    drop(f);
    cluster.restart_storage(victim);
    wait_all_serving(&cluster);

    let copied = synced_bytes(&cluster) - before;
    eprintln!("catch-up copied {copied} bytes for {pieces} changed blocks of a {} byte file", expect.len());
    assert!(copied <= pieces * 4096, "copied {copied} bytes for {pieces} changed 4 KiB blocks");
    // The primary knew which chunks the replica missed: no full comparison of chunk lists.
    let primary = primary_node(&cluster);
    assert!(cluster.storage_metric(primary, "ember_storage_syncs_total{path=\"log\"}") >= 1, "the catch-up compared full listings\n{}", cluster.logs());
    assert!(fs::read(mount.join("base")).unwrap() == expect);
}

#[test]
fn reads_spread_over_every_serving_replica_and_see_every_acknowledged_write() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = start();
    let mount = cluster.mount();
    wait_all_serving(&cluster);
    let mut expect = random_bytes(91, 16 << 20);
    fs::write(mount.join("spread"), &expect).unwrap();
    // Overwrite pieces and read each back at once through a fresh descriptor: a replica must
    // never answer with the state before the acknowledged write.
    for i in 0..40u64 {
        let offset = (i * 397 % 4096) * 4096;
        let piece = random_bytes(1000 + i, 4096);
        let f = fs::OpenOptions::new().write(true).open(mount.join("spread")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &piece, offset).unwrap();
        f.sync_all().unwrap();
        drop(f);
        expect[offset as usize..offset as usize + 4096].copy_from_slice(&piece);
        let mut back = vec![0u8; 4096];
        let f = fs::File::open(mount.join("spread")).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut back, offset).unwrap();
        assert!(back == piece, "read after an acknowledged write at {offset} returned older data");
    }
    assert!(fs::read(mount.join("spread")).unwrap() == expect);
    let primary = primary_node(&cluster);
    for n in (0..NODES).filter(|n| *n != primary) {
        let served = cluster.storage_metric(n, "ember_storage_reads_total{role=\"replica\"}");
        assert!(served > 0, "replica on node {n} served no reads\n{}", cluster.logs());
    }
}

#[test]
fn a_hung_storage_node_stalls_no_read_for_long() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let (mut cluster, mount) = ready(false);
    let expect = Arc::new(random_bytes(92, 16 << 20));
    fs::write(mount.join("hung"), &*expect).unwrap();
    let primary = primary_node(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    // Direct 4 KiB reads, so that each one reaches storage as the small read it is.
    let reader = {
        let (path, expect, stop) = (mount.join("hung"), expect.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::{FileExt, OpenOptionsExt};
            let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&path).unwrap();
            let mut raw = vec![0u8; 8192];
            let at = raw.as_ptr().align_offset(4096);
            let buf = &mut raw[at..at + 4096];
            let (mut reads, mut longest) = (Vec::new(), Duration::ZERO);
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let offset = (i * 397 % 4096) * 4096;
                let t0 = Instant::now();
                f.read_exact_at(buf, offset).unwrap_or_else(|e| panic!("read at {offset}: {e}"));
                longest = longest.max(t0.elapsed());
                assert!(*buf == expect[offset as usize..offset as usize + 4096], "read at {offset} returned other bytes");
                reads.push(Instant::now());
            }
            (reads, longest)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // A replica, which serves its share of the reads: stopped, its connections stay open and
    // answer nothing.
    let victim = (primary + 1) % NODES;
    let pid = cluster.storage[victim].pid().expect("the replica runs") as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let hung_at = Instant::now();
    std::thread::sleep(Duration::from_millis(3000));
    stop.store(true, Ordering::Relaxed);
    let (reads, longest) = reader.join().expect("reader panicked");
    let after = reads.iter().filter(|t| **t > hung_at + Duration::from_millis(2000)).count();
    eprintln!("hung replica: {} reads, {after} in the last second, longest {longest:?}", reads.len());
    assert!(longest < STALL_BOUND, "a read hung for {longest:?}\n{}", cluster.logs());
    assert!(after > 0, "no read finished a second after the replica hung\n{}", cluster.logs());
    cluster.storage[victim].kill9();
}
