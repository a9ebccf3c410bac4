//! Concurrent reads and writes of one block of one chunk on a chain of three, through the
//! client library against the real services, while replicas and the primary are killed and
//! restarted; the recorded history must be linearizable.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_client::{ClientConfig, EmberClient, Retry};
use ember_proto::meta::CreateReq;
use ember_testkit::linearizable::{check_register, Op, OpKind};
use ember_testkit::{Cluster, Spec};
use ember_types::{InodeId, Layout};

const WORKERS: u64 = 4;
/// Bounds the history the checker searches.
const MAX_OPS_PER_WORKER: u64 = 1500;
const BLOCK: usize = 4096;

fn block_of(value: u64) -> Bytes {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(&value.to_le_bytes());
    b[8..16].copy_from_slice(&(!value).to_le_bytes());
    Bytes::from(b)
}

fn value_of(block: &[u8]) -> u64 {
    let v = u64::from_le_bytes(block[..8].try_into().unwrap());
    let check = u64::from_le_bytes(block[8..16].try_into().unwrap());
    assert!(v == 0 && check == 0 || check == !v, "torn block: {v:#x} / {check:#x}");
    v
}

/// Reads and writes until `stop` (the faults are over) or the cap.
async fn worker(client: Arc<EmberClient>, inode: InodeId, layout: Layout, id: u64, stop: Arc<AtomicBool>) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut rng = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in 0..MAX_OPS_PER_WORKER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let invoked = Instant::now();
        let kind = if rng.is_multiple_of(2) {
            let v = id * 1_000_000 + i + 1;
            client.write(inode, &layout, 0, block_of(v)).await.unwrap_or_else(|e| panic!("write failed: {e}"));
            OpKind::Write(v)
        } else {
            let data = client.read(inode, &layout, 0, BLOCK).await.unwrap_or_else(|e| panic!("read failed: {e}"));
            OpKind::Read(value_of(&data))
        };
        ops.push(Op { invoked, returned: Instant::now(), kind });
        // Paced so the history spans every fault.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ops
}

#[test]
fn reads_and_writes_of_one_block_stay_linearizable_through_failovers() {
    let bin = Path::new(env!("CARGO_BIN_EXE_ember"));
    let mut cluster = Cluster::start_spec(bin, Spec { storage_nodes: 3, targets: 1, replicas: 3, chain_mode: false, periodic_meta: false, client_session_timeout_ms: None });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = rt.block_on(EmberClient::connect(ClientConfig::new(&cluster.mgmtd_addr))).unwrap();
    let create = CreateReq {
        parent: InodeId::ROOT.0,
        name: b"register".to_vec(),
        mode: 0o644,
        exclusive: true,
        client_id: client.client_id(),
        ..Default::default()
    };
    let attr = rt.block_on(client.meta(&create, Retry::OnlyIfNotSent)).unwrap().attr.unwrap();
    let layout = ember_proto::layout_from_msg(attr.layout.as_ref().unwrap()).unwrap();
    let inode = InodeId(attr.inode);

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (1..=WORKERS)
        .map(|id| rt.spawn(worker(client.clone(), inode, layout.clone(), id, stop.clone())))
        .collect();
    // Faults while the workers run: a replica, then whichever node is primary by then.
    for node in [1usize, 0] {
        std::thread::sleep(Duration::from_millis(400));
        cluster.storage[node].kill9();
        std::thread::sleep(Duration::from_millis(1500));
        cluster.restart_storage(node);
    }
    // Then the primary is taken out by hand while its process lives on: it may still hold a
    // read lease, which the new primary waits out before it accepts writes.
    std::thread::sleep(Duration::from_millis(800));
    let chains: Vec<serde_json::Value> = serde_json::from_str(&cluster.admin(&["chains", "--json"])).unwrap();
    let primary = chains[0]["targets"][0].as_u64().unwrap().to_string();
    cluster.admin(&["offline-target", &primary]);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let mut history = Vec::new();
    for t in tasks {
        history.extend(rt.block_on(t).unwrap());
    }
    let reads = history.iter().filter(|o| matches!(o.kind, OpKind::Read(_))).count();
    eprintln!("{} operations ({reads} reads)", history.len());
    assert!(reads > 0 && reads < history.len(), "the history needs both reads and writes");
    let started = Instant::now();
    check_register(&history, 0).unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    eprintln!("checked in {:?}", started.elapsed());
}
