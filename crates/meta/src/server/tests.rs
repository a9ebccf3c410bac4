//! End-to-end: `run_meta` on loopback with a fake mgmtd, driven through `RpcClient`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ember_net::{decode_body, Request, Response, RpcClient, Service, ServiceFuture};
use ember_proto::meta::*;
use ember_proto::mgmtd::*;
use ember_proto::Method;
use ember_types::StatusCode;

use super::*;

/// Answers registration (id 42 for a new node, the same id for a known one) and heartbeats,
/// and publishes one chain so that files can be created.
#[derive(Default)]
struct FakeMgmtd {
    registered_with: AtomicU32,
    heartbeats: AtomicU32,
}

impl Service for FakeMgmtd {
    fn call(self: Arc<Self>, req: Request) -> ServiceFuture {
        Box::pin(async move {
            match Method::from_u16(req.method) {
                Some(Method::MgmtdRegisterNode) => {
                    let r: RegisterNodeReq = decode_body(&req.body)?;
                    self.registered_with.store(r.node_id + 1, Ordering::SeqCst);
                    let node_id = if r.node_id == 0 { 42 } else { r.node_id };
                    Ok(Response::msg(&RegisterNodeResp {
                        node_id,
                        target_ids: vec![],
                    }))
                }
                Some(Method::MgmtdHeartbeat) => {
                    self.heartbeats.fetch_add(1, Ordering::SeqCst);
                    Ok(Response::msg(&HeartbeatResp { routing_version: 1, lease_ms: 750 }))
                }
                Some(Method::MgmtdGetRouting) => {
                    let routing = RoutingInfo {
                        version: 1,
                        chains: vec![ChainInfo {
                            chain_id: 5,
                            version: 1,
                            targets: vec![],
                        }],
                        chain_tables: vec![ChainTableInfo {
                            table_id: 1,
                            version: 1,
                            chains: vec![5],
                            mode: 0,
                        }],
                        ..Default::default()
                    };
                    Ok(Response::msg(&GetRoutingResp {
                        changed: true,
                        routing: Some(routing),
                    }))
                }
                _ => Ok(Response::msg(&ListClientSessionsResp {
                    sessions: vec![],
                    complete: false,
                })),
            }
        })
    }
}

async fn wait_for_file(path: &Path) -> String {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never appeared", path.display());
}

async fn start(
    dir: &Path,
    mgmtd: &str,
) -> (
    RpcClient,
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<Result<(), MetaError>>,
) {
    let _ = std::fs::remove_file(dir.join("meta.addr"));
    let config = MetaConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        mgmtd: mgmtd.into(),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_meta(config, async move {
        let _ = rx.await;
    }));
    for _ in 0..100 {
        if dir.join("meta.addr").exists() || task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if task.is_finished() {
        panic!("run_meta ended: {:?}", task.await);
    }
    let addr = wait_for_file(&dir.join("meta.addr")).await;
    (RpcClient::new(addr), tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_rpcs_registers_and_keeps_data_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mgmtd_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mgmtd_addr = mgmtd_listener.local_addr().unwrap().to_string();
    let mgmtd = Arc::new(FakeMgmtd::default());
    tokio::spawn(ember_net::serve(
        mgmtd_listener,
        mgmtd.clone(),
        FrameLimits::default(),
    ));

    let (client, stop, task) = start(dir.path(), &mgmtd_addr).await;
    let root = client
        .unary(&GetAttrReq { inode: 1 })
        .await
        .unwrap()
        .attr
        .unwrap();
    assert_eq!(root.nlink, 2);
    let d = client
        .unary(&MkdirReq {
            parent: 1,
            name: b"d".to_vec(),
            mode: 0o755,
            ..Default::default()
        })
        .await
        .unwrap();
    let d = d.attr.unwrap().inode;
    let err = client
        .unary(&MkdirReq {
            parent: 1,
            name: b"d".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, StatusCode::AlreadyExists);
    // Files need the routing poller to have seen mgmtd's chain table.
    let mut created = None;
    for _ in 0..100 {
        let req = CreateReq {
            parent: d,
            name: b"f".to_vec(),
            mode: 0o644,
            exclusive: true,
            client_id: 1,
            ..Default::default()
        };
        match client.unary(&req).await {
            Ok(r) => {
                created = Some(r);
                break;
            }
            Err(e) => assert_eq!(e.code, StatusCode::Unavailable),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = created.expect("create never succeeded").attr.unwrap();
    assert_eq!(created.layout.clone().unwrap().chains, vec![5]);
    let tmp = TmpfileReq { parent: d, mode: 0o600, client_id: 1, ..Default::default() };
    assert_eq!(client.unary(&tmp).await.unwrap().attr.unwrap().nlink, 0, "a tmpfile has no name");
    let lock = |client_id, flock| LockReq { inode: created.inode, client_id, owner: 3, end: u64::MAX, kind: LockKind::Write.into(), flock, ..Default::default() };
    for flock in [false, true] {
        assert!(client.unary(&SetLockReq { lock: Some(lock(1, flock)) }).await.unwrap().granted);
    }
    let release = ReleaseLocksReq { inode: created.inode, client_id: 1, owners: vec![3], flock: Some(true) };
    client.unary(&release).await.unwrap();
    let free = |flock| GetLockReq { lock: Some(lock(2, flock)) };
    assert!(client.unary(&free(true)).await.unwrap().granted, "the flock went");
    assert!(!client.unary(&free(false)).await.unwrap().granted, "the POSIX lock stayed");
    let page = client
        .unary(&ReadDirReq {
            inode: d,
            after: vec![],
            limit: 10,
            with_attrs: false,
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    let unknown = client
        .call_raw(0x7777, Bytes::new(), Bytes::new(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(unknown.code, StatusCode::UnknownMethod);
    let bad = client.call_raw(
        Method::MetaLookup as u16,
        Bytes::from_static(&[0xff]),
        Bytes::new(),
        Duration::from_secs(5),
    );
    assert_eq!(bad.await.unwrap_err().code, StatusCode::DecodeError);

    assert_eq!(wait_for_file(&dir.path().join("node.id")).await, "42");
    for _ in 0..100 {
        if mgmtd.heartbeats.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(mgmtd.heartbeats.load(Ordering::SeqCst) > 0);
    let metrics = wait_for_file(&dir.path().join("metrics.addr")).await;
    assert!(!metrics.is_empty());
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let (client, stop, task) = start(dir.path(), &mgmtd_addr).await;
    let f = client
        .unary(&LookupReq {
            parent: d,
            name: b"f".to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(f.attr.unwrap().inode, created.inode);
    for _ in 0..100 {
        if mgmtd.registered_with.load(Ordering::SeqCst) == 43 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        mgmtd.registered_with.load(Ordering::SeqCst),
        43,
        "restart resends the persisted node id"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
