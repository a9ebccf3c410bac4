//! Ember's client core, shared by the FUSE mount and the admin CLI: follows mgmtd's routing
//! info, sends metadata requests to a live meta server, and turns file I/O into chunk
//! reads and writes on the right storage targets, batched per storage node, with retries when
//! routing changes or a server restarts.

mod io;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use ember_net::routing::RoutingWatcher;
use ember_net::{Dialer, PeerPool, RpcClient};
use ember_proto::storage::RequestRef;
use ember_proto::Rpc;
use ember_types::{NodeKind, Status, StatusCode};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub mgmtd: String,
    /// Deadline of one RPC.
    pub rpc_timeout: Duration,
    /// How long an operation keeps retrying while servers restart or routing changes.
    pub retry_for: Duration,
    /// Free-form text shown by `ember admin status` for this client's session.
    pub description: String,
    /// How connections are opened (TCP unless a simulation says otherwise).
    pub dialer: Dialer,
    /// This client's id; random unless set (a simulation sets it so that runs repeat).
    pub client_id: Option<u64>,
    /// Read from any serving member of a chain, not only from its primary.
    pub read_from_replicas: bool,
}

impl ClientConfig {
    pub fn new(mgmtd: impl Into<String>) -> Self {
        ClientConfig {
            mgmtd: mgmtd.into(),
            rpc_timeout: Duration::from_secs(30),
            retry_for: Duration::from_secs(60),
            description: String::new(),
            dialer: Dialer::tcp(),
            client_id: None,
            read_from_replicas: true,
        }
    }
}

/// Whether repeating a request after an unknown outcome (connection lost mid-call) is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    Idempotent,
    /// Retried only when the request certainly did not reach a server.
    OnlyIfNotSent,
}

pub struct EmberClient {
    routing: Arc<RoutingWatcher>,
    peers: PeerPool,
    client_id: u64,
    /// Sequence numbers of this client's storage writes (request ids, reused by retries).
    next_seq: AtomicU64,
    /// One write at a time per chunk (sharded), in sequence order: then a chunk that has
    /// applied a request of ours has applied all our earlier ones, which is what lets storage
    /// recognise a retry by the latest sequence number alone.
    chunk_turns: Vec<tokio::sync::Mutex<()>>,
    /// Times the session went longer than its timeout without an extension (`session.rs`).
    session_lapses: AtomicU64,
    config: ClientConfig,
}

const CHUNK_TURN_SHARDS: u64 = 256;

impl EmberClient {
    /// Connects to mgmtd and starts the routing poller and the session keep-alive.
    pub async fn connect(config: ClientConfig) -> Result<Arc<Self>, Status> {
        let routing = RoutingWatcher::with_dialer(&config.mgmtd, config.dialer.clone());
        let client = Arc::new(EmberClient {
            routing,
            peers: PeerPool::new(config.rpc_timeout).with_dialer(config.dialer.clone()),
            client_id: config.client_id.unwrap_or_else(session::new_client_id),
            next_seq: AtomicU64::new(1),
            chunk_turns: (0..CHUNK_TURN_SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            session_lapses: AtomicU64::new(0),
            config,
        });
        client.routing.refresh().await?;
        client.routing.spawn_poller(Duration::from_secs(1));
        session::spawn_keepalive(&client);
        Ok(client)
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// How many times this client's session may have ended on mgmtd (no extension got
    /// through for longer than the session timeout). Meta drops the locks of a client whose
    /// session ended, so a lock taken before a lapse may be gone.
    pub fn session_lapses(&self) -> u64 {
        self.session_lapses.load(Ordering::Acquire)
    }

    pub fn routing(&self) -> &Arc<RoutingWatcher> {
        &self.routing
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// A live meta server, refreshing routing once if none is known.
    async fn meta_server(&self) -> Result<Arc<RpcClient>, Status> {
        for attempt in 0..2 {
            let table = if attempt == 0 { self.routing.get() } else { self.routing.refresh().await? };
            if let Some(n) = table.alive_nodes(NodeKind::Meta).first() {
                return Ok(self.peers.get(&n.address));
            }
        }
        Err(Status::new(StatusCode::Unavailable, "no live meta server in the routing info"))
    }

    /// Sends a metadata request, retrying while servers restart or transactions conflict.
    pub async fn meta<R: Rpc>(&self, req: &R, retry: Retry) -> Result<R::Response, Status> {
        let deadline = Instant::now() + self.config.retry_for;
        let mut backoff = Backoff::new();
        loop {
            let result = match self.meta_server().await {
                Ok(server) => server.unary_here(req).await,
                Err(e) => Err(e),
            };
            match result {
                Err(st) if should_retry(&st, retry) && Instant::now() < deadline => {
                    tracing::debug!(method = R::METHOD.name(), error = %st, "retrying metadata request");
                    backoff.wait().await;
                    let _ = self.routing.refresh().await;
                }
                other => return other,
            }
        }
    }

    /// Waits for this client's turn to write `chunk`, then gives the write its request id,
    /// which every retry of it carries.
    pub(crate) async fn chunk_turn(&self, chunk: ember_types::ChunkId) -> (tokio::sync::MutexGuard<'_, ()>, RequestRef) {
        let h = chunk.inode.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(chunk.index);
        let turn = self.chunk_turns[(h % CHUNK_TURN_SHARDS) as usize].lock().await;
        (turn, self.new_request())
    }

    /// A request id for a truncate (the mount never truncates a file while writing it).
    pub(crate) fn new_request(&self) -> RequestRef {
        RequestRef { client: self.client_id, seq: self.next_seq.fetch_add(1, Ordering::Relaxed) }
    }

    pub(crate) fn peer(&self, addr: &str) -> Arc<RpcClient> {
        self.peers.get(addr)
    }
}

/// Retry decisions shared by metadata and storage calls.
pub(crate) fn should_retry(st: &Status, retry: Retry) -> bool {
    match st.code {
        StatusCode::Unavailable | StatusCode::TxnConflict | StatusCode::Busy | StatusCode::RoutingStale => true,
        StatusCode::NotCommitted => true,
        StatusCode::NoSuchTarget | StatusCode::NotRegistered => true,
        StatusCode::ConnectionClosed | StatusCode::Timeout => retry == Retry::Idempotent,
        _ => false,
    }
}

/// Exponential backoff from 20 ms to 250 ms. The cap bounds how late a client notices that
/// a failover finished (a new primary serves about a second after the old one died); a
/// longer one made writers wait up to a further 640 ms after it.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: Duration::from_millis(20) }
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_millis(250));
    }
}
