//! Chunks of an unlinked file stay while a handle is open and are removed after it closes.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use ember_net::RpcClient;
use ember_proto::storage::SpaceInfoReq;
use ember_testkit::{fuse_available, random_bytes, Cluster};

fn used_bytes(rt: &tokio::runtime::Runtime, storage: &RpcClient) -> u64 {
    let resp = rt.block_on(storage.unary(&SpaceInfoReq {})).unwrap();
    resp.targets.iter().map(|t| t.used_bytes).sum()
}

#[test]
fn unlinked_file_keeps_its_chunks_until_the_last_handle_closes() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::start(Path::new(env!("CARGO_BIN_EXE_ember")), 1);
    let mount = cluster.mount();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr = std::fs::read_to_string(cluster.dir.path().join("storage/storage.addr")).unwrap();
    let storage = RpcClient::new(addr.trim());

    let data = random_bytes(3, 8 << 20);
    let path = mount.join("doomed");
    std::fs::write(&path, &data).unwrap();
    let full = used_bytes(&rt, &storage);
    assert!(full >= 8 << 20, "storage holds {full} bytes after an 8 MiB write");

    let mut reader = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    // Several GC passes run while the handle is open; the data must stay readable.
    std::thread::sleep(Duration::from_secs(3));
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    assert!(back == data, "an open handle lost the data of its unlinked file");
    assert_eq!(used_bytes(&rt, &storage), full);

    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(30);
    while used_bytes(&rt, &storage) >= full {
        assert!(Instant::now() < deadline, "chunks were never removed:\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(used_bytes(&rt, &storage) < 1 << 20);
}
