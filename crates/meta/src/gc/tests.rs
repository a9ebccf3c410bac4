//! Tests of the GC decision logic with a fake chunk remover and a fixed live-client list.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ember_kv::MemKv;
use ember_types::{ChainId, InodeId, Layout, StatusCode};

use super::*;
use crate::chains::FixedChains;
use crate::store::{Opened, Perm, StoreConfig};

#[derive(Default)]
struct FakeRemover {
    calls: Mutex<Vec<(InodeId, Vec<ChainId>)>>,
    fail: AtomicBool,
    /// One file whose removal fails while the others succeed.
    fail_for: Mutex<Option<InodeId>>,
}

impl ChunkRemover for FakeRemover {
    fn remove<'a>(
        &'a self,
        inode: InodeId,
        layout: &'a Layout,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if self.fail.load(Ordering::Relaxed) || *self.fail_for.lock().unwrap() == Some(inode) {
                return Err("storage down".into());
            }
            self.calls
                .lock()
                .unwrap()
                .push((inode, layout.chains.clone()));
            Ok(())
        })
    }
}

struct Fixed(Option<Arc<HashSet<u64>>>);

impl LiveClients for Fixed {
    fn live(&self) -> BoxFuture<'_, Option<Arc<HashSet<u64>>>> {
        Box::pin(async move { self.0.clone() })
    }
}

fn setup(live: Option<&[u64]>) -> (Arc<MetaStore>, Arc<FakeRemover>, Gc) {
    let chains = Arc::new(FixedChains::new((1..=6).map(ChainId).collect()));
    let store = Arc::new(MetaStore::new(
        Arc::new(MemKv::new()),
        chains,
        StoreConfig::default(),
    ));
    store.ensure_root().unwrap();
    let remover = Arc::new(FakeRemover::default());
    let clients = Arc::new(Fixed(live.map(|l| Arc::new(l.iter().copied().collect()))));
    let gc = Gc::new(store.clone(), remover.clone(), clients, 16);
    (store, remover, gc)
}

fn create(store: &MetaStore, name: &str, client: u64) -> (InodeId, u64, Vec<ChainId>) {
    let Opened { attr: a, session, .. } = store
        .create(
            InodeId::ROOT,
            name.as_bytes(),
            Perm::new(0o644, 0, 0),
            true,
            client,
        )
        .unwrap();
    let chains = a.layout.unwrap().chains.into_iter().map(ChainId).collect();
    (InodeId(a.inode), session, chains)
}

#[tokio::test]
async fn open_file_is_kept_until_close_then_chunks_and_inode_go() {
    let (store, remover, gc) = setup(Some(&[1]));
    let (ino, session, chains) = create(&store, "f", 1);
    store.unlink(InodeId::ROOT, b"f").unwrap();

    let stats = gc.pass().await.unwrap();
    assert_eq!((stats.removed, stats.busy), (0, 1));
    assert!(remover.calls.lock().unwrap().is_empty());
    assert_eq!(
        store.getattr(ino).unwrap().nlink,
        0,
        "still readable through the open handle"
    );

    store.close(ino, session, Some(10), None).unwrap();
    let stats = gc.pass().await.unwrap();
    assert_eq!(stats.removed, 1);
    assert_eq!(*remover.calls.lock().unwrap(), vec![(ino, chains)]);
    assert_eq!(store.getattr(ino).unwrap_err().code(), StatusCode::NotFound);
    assert!(store.gc_scan(None, 10).unwrap().is_empty());
    assert_eq!(gc.pass().await.unwrap(), GcStats::default());
}

#[tokio::test]
async fn sessions_of_dead_clients_are_dropped() {
    let (store, remover, gc) = setup(Some(&[1]));
    let (dead, _, _) = create(&store, "dead", 99);
    let (alive, _, _) = create(&store, "alive", 1);
    store.unlink(InodeId::ROOT, b"dead").unwrap();
    store.unlink(InodeId::ROOT, b"alive").unwrap();
    let stats = gc.pass().await.unwrap();
    assert_eq!((stats.removed, stats.busy, stats.stale_sessions), (1, 1, 1));
    let calls = remover.calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, dead);
    assert!(store.getattr(alive).is_ok());
}

#[tokio::test]
async fn unknown_client_list_keeps_every_session() {
    let (store, remover, gc) = setup(None);
    create(&store, "f", 99);
    store.unlink(InodeId::ROOT, b"f").unwrap();
    let stats = gc.pass().await.unwrap();
    assert_eq!((stats.removed, stats.busy, stats.stale_sessions), (0, 1, 0));
    assert!(remover.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn failed_removal_is_retried_on_the_next_pass() {
    let (store, remover, gc) = setup(Some(&[]));
    let (ino, session, _) = create(&store, "f", 1);
    store.close(ino, session, None, None).unwrap();
    store.unlink(InodeId::ROOT, b"f").unwrap();
    remover.fail.store(true, Ordering::Relaxed);
    assert_eq!(gc.pass().await.unwrap().failed, 1);
    assert!(store.getattr(ino).is_ok());
    assert_eq!(
        store.open(ino, 1, false).unwrap_err().code(),
        StatusCode::NotFound
    );
    remover.fail.store(false, Ordering::Relaxed);
    assert_eq!(gc.pass().await.unwrap().removed, 1);
    assert!(store.getattr(ino).is_err());
}

#[tokio::test]
async fn queue_is_walked_in_batches() {
    let (store, remover, gc) = setup(Some(&[]));
    for i in 0..40 {
        let (ino, session, _) = create(&store, &format!("f{i}"), 1);
        store.close(ino, session, None, None).unwrap();
        store
            .unlink(InodeId::ROOT, format!("f{i}").as_bytes())
            .unwrap();
    }
    let mut removed = 0;
    for _ in 0..4 {
        removed += gc.pass().await.unwrap().removed;
    }
    assert_eq!(removed, 40);
    assert_eq!(remover.calls.lock().unwrap().len(), 40);
    assert_eq!(store.statfs().unwrap().inodes, 1);
}

/// Creates, closes and unlinks `n` files; returns their inodes.
fn unlinked_files(store: &MetaStore, n: usize) -> Vec<InodeId> {
    (0..n)
        .map(|i| {
            let (ino, session, _) = create(store, &format!("f{i}"), 1);
            store.close(ino, session, None, None).unwrap();
            store.unlink(InodeId::ROOT, format!("f{i}").as_bytes()).unwrap();
            ino
        })
        .collect()
}

#[tokio::test]
async fn one_failed_removal_in_a_batch_leaves_only_that_file_queued() {
    let (store, remover, gc) = setup(Some(&[1]));
    let inodes = unlinked_files(&store, 5);
    let (open, _, _) = create(&store, "open", 1);
    store.unlink(InodeId::ROOT, b"open").unwrap();
    *remover.fail_for.lock().unwrap() = Some(inodes[2]);

    let stats = gc.pass().await.unwrap();
    assert_eq!((stats.removed, stats.busy, stats.failed), (4, 1, 1));
    let queued: Vec<InodeId> = store.gc_scan(None, 10).unwrap().into_iter().map(|i| i.inode).collect();
    assert_eq!(queued, [inodes[2], open]);
    assert_eq!(store.open(inodes[2], 1, false).unwrap_err().code(), StatusCode::NotFound, "claimed, so never reopened");
    for ino in [inodes[0], inodes[1], inodes[3], inodes[4]] {
        assert_eq!(store.getattr(ino).unwrap_err().code(), StatusCode::NotFound);
    }

    *remover.fail_for.lock().unwrap() = None;
    assert_eq!(gc.pass().await.unwrap().removed, 1);
    assert_eq!(store.statfs().unwrap().inodes, 2, "the root and the open file");
}

#[tokio::test]
async fn a_backlog_drains_without_waiting_the_interval_between_batches() {
    let (store, remover, gc) = setup(Some(&[]));
    unlinked_files(&store, 40);
    let every = Duration::from_millis(1500);
    let task = Arc::new(gc).spawn(every);
    // Three batches of 16: at the interval's pace the last would come after 4.5 s.
    tokio::time::sleep(every + Duration::from_millis(1000)).await;
    task.abort();
    assert_eq!(remover.calls.lock().unwrap().len(), 40);
    assert_eq!(store.statfs().unwrap().inodes, 1);
}

#[tokio::test]
async fn clients_keeping_the_store_busy_keep_gc_at_its_interval() {
    let (store, remover, gc) = setup(Some(&[]));
    unlinked_files(&store, 40);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                store.getattr(InodeId::ROOT).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let every = Duration::from_millis(1500);
    let task = Arc::new(gc).spawn(every);
    tokio::time::sleep(every + Duration::from_millis(1000)).await;
    task.abort();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(remover.calls.lock().unwrap().len(), 16, "one batch in one interval");
}

mod network {
    //! `RoutingRemover` and `MgmtdClients` against one loopback service playing mgmtd and a
    //! storage node.

    use super::*;
    use crate::ChainSource;
    use ember_net::{decode_body, Request, Response, Service, ServiceFuture};
    use ember_proto::mgmtd::*;
    use ember_proto::storage::{RemoveChunksReq, RemoveChunksResp};
    use ember_proto::Method;
    use ember_types::TargetState;

    struct FakeCluster {
        addr: String,
        complete: bool,
        removed: Mutex<Vec<RemoveChunksReq>>,
    }

    impl FakeCluster {
        fn routing(&self) -> RoutingInfo {
            let target = |id, state: TargetState| TargetInfo {
                target_id: id,
                node_id: 1,
                state: state.to_u8().into(),
                chain_id: 5,
                ..Default::default()
            };
            RoutingInfo {
                version: 7,
                nodes: vec![NodeInfo {
                    node_id: 1,
                    kind: 2,
                    address: self.addr.clone(),
                    alive: true,
                    ..Default::default()
                }],
                targets: vec![
                    target(10, TargetState::Serving),
                    target(11, TargetState::Serving),
                    target(12, TargetState::Offline),
                ],
                chains: vec![ChainInfo {
                    chain_id: 5,
                    version: 3,
                    targets: vec![10, 11, 12],
                }],
                chain_tables: vec![ChainTableInfo {
                    table_id: 1,
                    version: 1,
                    chains: vec![5],
                    mode: 0,
                }],
            }
        }
    }

    impl Service for FakeCluster {
        fn call(self: Arc<Self>, req: Request) -> ServiceFuture {
            Box::pin(async move {
                match Method::from_u16(req.method) {
                    Some(Method::MgmtdGetRouting) => Ok(Response::msg(&GetRoutingResp {
                        changed: true,
                        routing: Some(self.routing()),
                    })),
                    Some(Method::MgmtdListClientSessions) => {
                        let sessions = vec![ClientSessionInfo {
                            client_id: 3,
                            ..Default::default()
                        }];
                        Ok(Response::msg(&ListClientSessionsResp {
                            sessions,
                            complete: self.complete,
                        }))
                    }
                    Some(Method::StorageRemoveChunks) => {
                        self.removed.lock().unwrap().push(decode_body(&req.body)?);
                        Ok(Response::msg(&RemoveChunksResp { removed: 1 }))
                    }
                    _ => Err(ember_types::Status::new(StatusCode::UnknownMethod, "fake")),
                }
            })
        }
    }

    async fn cluster(complete: bool) -> (Arc<FakeCluster>, Arc<RoutingWatcher>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let fake = Arc::new(FakeCluster {
            addr: addr.clone(),
            complete,
            removed: Mutex::default(),
        });
        tokio::spawn(ember_net::serve(
            listener,
            fake.clone(),
            ember_net::FrameLimits::default(),
        ));
        let routing = RoutingWatcher::new(&addr);
        routing.refresh().await.unwrap();
        (fake, routing)
    }

    #[tokio::test]
    async fn removal_goes_to_every_live_target_of_every_chain() {
        let (fake, routing) = cluster(true).await;
        assert_eq!(
            crate::RoutingChains(routing.clone()).chains(),
            vec![ChainId(5)]
        );
        let remover = RoutingRemover::new(routing, Arc::new(PeerPool::default()));
        let layout = Layout::new(1 << 20, vec![ChainId(5), ChainId(5)]).unwrap();
        remover.remove(InodeId(0x1234), &layout).await.unwrap();
        let mut got: Vec<_> = fake
            .removed
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.chain.clone().unwrap(), r.from_index))
            .collect();
        got.sort_by_key(|(c, _)| c.target_id);
        let want = |target_id| {
            (
                ChunkRef {
                    inode: 0x1234,
                    index: 0,
                    chain_id: 5,
                    chain_version: 3,
                    target_id,
                },
                0,
            )
        };
        assert_eq!(got, vec![want(10), want(11)]);
        let unknown = Layout::new(1 << 20, vec![ChainId(99)]).unwrap();
        assert!(remover.remove(InodeId(1), &unknown).await.is_err());
    }

    #[tokio::test]
    async fn client_list_is_trusted_only_when_complete() {
        let (_, routing) = cluster(true).await;
        let live = MgmtdClients::new(routing, Duration::from_secs(3))
            .live()
            .await
            .unwrap();
        assert!(live.contains(&3) && live.len() == 1);
        let (_, routing) = cluster(false).await;
        assert!(MgmtdClients::new(routing, Duration::from_secs(3))
            .live()
            .await
            .is_none());
        let nobody = RoutingWatcher::new("127.0.0.1:1");
        assert!(MgmtdClients::new(nobody, Duration::from_secs(3))
            .live()
            .await
            .is_none());
    }
}

#[tokio::test]
async fn locks_of_dead_clients_are_dropped_and_live_ones_kept() {
    use ember_proto::meta::{LockKind, LockReq};
    let (store, _, gc) = setup(Some(&[1]));
    let (a, _, _) = create(&store, "a", 1);
    let (b, _, _) = create(&store, "b", 99);
    let lock = |inode: InodeId, client_id| LockReq {
        inode: inode.0,
        client_id,
        owner: 7,
        start: 0,
        end: u64::MAX,
        kind: LockKind::Write.into(),
        pid: 1,
        wait: false,
        flock: false,
    };
    assert!(store.set_lock(&lock(a, 1)).unwrap().granted);
    assert!(store.set_lock(&lock(b, 99)).unwrap().granted);
    assert!(store.set_lock(&lock(a, 99)).unwrap().conflict.is_some());
    let stats = gc.pass().await.unwrap();
    assert_eq!(stats.stale_locks, 1);
    assert!(store.set_lock(&lock(b, 2)).unwrap().granted, "the dead client's lock is gone");
    assert!(!store.set_lock(&lock(a, 2)).unwrap().granted, "the live client's lock stays");
    assert_eq!(store.lock_scan(None, 10).unwrap().len(), 2);
}
