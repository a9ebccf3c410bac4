//! Hostile bytes on the wire: every service answers or closes, keeps its memory, and keeps
//! serving well-behaved clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ember_net::{FrameHeader, FrameKind, RpcClient, HEADER_LEN};
use ember_proto::meta::GetAttrReq;
use ember_proto::mgmtd::GetRoutingReq;
use ember_proto::routing::RoutingTable;
use ember_proto::storage::{BatchReadReq, ChunkRef, ReadIo, SpaceInfoReq, WritePiece, WriteReq};
use ember_proto::Method;
use ember_testkit::{rss_kib, Cluster, Slots};
use ember_types::StatusCode;

static SLOTS: Slots = Slots::new(1);

/// Growth in resident memory we accept after the attacks (allocator noise, not a 4 GiB buffer).
const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes or sends one frame header; returns the header if any.
fn reply_or_close(s: &mut TcpStream) -> Option<FrameHeader> {
    let mut hb = [0u8; HEADER_LEN];
    match s.read_exact(&mut hb) {
        Ok(()) => FrameHeader::decode(&hb).ok(),
        Err(e) => {
            assert!(e.kind() != std::io::ErrorKind::WouldBlock, "server neither answered nor closed");
            None
        }
    }
}

fn attack(addr: &str) {
    let mut s = connect(addr);
    s.write_all(&vec![0xAB; 64 * 1024]).unwrap_or(());
    if let Some(h) = reply_or_close(&mut s) {
        assert_eq!(h.status, ember_types::StatusCode::BadFrame as u16);
    }

    let mut s = connect(addr);
    let mut h = FrameHeader::for_data(FrameKind::Request, Method::MetaGetAttr as u16, 77, b"", b"");
    h.payload_len = u32::MAX;
    s.write_all(&h.encode()).unwrap();
    let reply = reply_or_close(&mut s).expect("a 4 GiB announcement gets an error reply");
    assert_eq!(reply.status, ember_types::StatusCode::FrameTooLarge as u16);
    assert_eq!(reply.request_id, 77);

    let mut s = connect(addr);
    let h = FrameHeader::for_data(FrameKind::Request, Method::MetaGetAttr as u16, 78, &[1u8; 100], b"");
    s.write_all(&h.encode()).unwrap();
    s.write_all(&[1u8; 10]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(reply_or_close(&mut s).is_none(), "a truncated frame must not be answered as a request");
}

#[test]
fn services_survive_garbage_truncated_and_oversized_frames() {
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(Path::new(env!("CARGO_BIN_EXE_ember")), 1);
    let read = |role: &str| std::fs::read_to_string(cluster.dir.path().join(role).join(format!("{role}.addr"))).unwrap();
    let services = [
        (cluster.mgmtd_addr.clone(), cluster.mgmtd.pid().unwrap()),
        (read("meta"), cluster.meta.pid().unwrap()),
        (read("storage"), cluster.storage[0].pid().unwrap()),
    ];
    for (addr, pid) in &services {
        let before = rss_kib(*pid).unwrap();
        for _ in 0..3 {
            attack(addr);
        }
        let after = rss_kib(*pid).unwrap();
        assert!(after < before + MAX_RSS_GROWTH_KIB, "{addr}: RSS grew from {before} to {after} KiB");
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mgmtd = RpcClient::new(services[0].0.clone());
        assert!(mgmtd.unary(&GetRoutingReq { known_version: 0 }).await.unwrap().changed);
        let meta = RpcClient::new(services[1].0.clone());
        let root = meta.unary(&GetAttrReq { inode: 1 }).await.unwrap();
        assert_eq!(root.attr.unwrap().inode, 1);
        let storage = RpcClient::new(services[2].0.clone());
        assert_eq!(storage.unary(&SpaceInfoReq {}).await.unwrap().targets.len(), 1);
        refuses_malformed_write_pieces(&mgmtd, &storage).await;
    });
}

/// A write whose pieces do not describe its payload, or overlap, is refused whole.
async fn refuses_malformed_write_pieces(mgmtd: &RpcClient, storage: &RpcClient) {
    let routing = mgmtd.unary(&GetRoutingReq { known_version: 0 }).await.unwrap().routing.unwrap();
    let chain = RoutingTable::new(routing).info.chains[0].clone();
    let chunk = ChunkRef { inode: 7, index: 0, chain_id: chain.chain_id, chain_version: chain.version, target_id: chain.targets[0] };
    let piece = |offset, len| WritePiece { offset, len };
    let cases = [
        (vec![piece(0, 10), piece(100, 10)], 15, "of 20 bytes with a payload of 15"),
        (vec![piece(0, 10), piece(5, 10)], 20, "overlaps"),
        (vec![piece(100, 10), piece(0, 10)], 20, "overlaps or precedes"),
    ];
    for (pieces, len, says) in cases {
        let payload = Bytes::from(vec![1u8; len]);
        let req = WriteReq { chunk: Some(chunk.clone()), offset: 0, crc32c: crc32c::crc32c(&payload), request: None, pieces };
        let err = storage.call(&req, payload).await.unwrap_err();
        assert_eq!(err.code, StatusCode::InvalidArgument, "{err}");
        assert!(err.message.contains(says), "{err}");
    }
    let read = BatchReadReq { ios: vec![ReadIo { chunk: Some(chunk), offset: 0, len: 200 }] };
    let (resp, _) = storage.call(&read, Bytes::new()).await.unwrap();
    assert_eq!(resp.results[0].len, 0, "nothing of a refused write was stored");
}
