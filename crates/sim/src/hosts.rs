//! The simulated machines: mgmtd and storage nodes running their real service code, reached
//! through turmoil's network instead of TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_kv::TxnKv;
use ember_mgmtd::{ClusterState, MgmtdOptions, MgmtdService};
use ember_net::{BoxRead, BoxWrite, Dialer, FrameLimits, Service};
use ember_storage::{ChunkEngine, EngineOptions, StorageConfig, StorageNode};
use ember_types::ReplicationMode;

use crate::faults::{lock, Faults};

pub const MGMTD: &str = "mgmtd";
pub const MGMTD_PORT: u16 = 9000;
pub const STORAGE_PORT: u16 = 9200;
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

pub fn storage_host(i: usize) -> String {
    format!("s{}", i + 1)
}

pub fn mgmtd_addr() -> String {
    format!("{MGMTD}:{MGMTD_PORT}")
}

/// Connections over the simulated network.
pub fn sim_dialer() -> Dialer {
    Dialer::new(|addr| {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr.as_str()).await?;
            let (rd, wr) = stream.into_split();
            Ok((Box::new(rd) as BoxRead, Box::new(wr) as BoxWrite))
        })
    })
}

/// A node whose engine hit its crash point is dead from that instant: it answers nothing
/// (the driver crashes it before the next step, which closes its connections).
struct UntilCrash {
    inner: Arc<dyn Service>,
    faults: Arc<Mutex<Faults>>,
    node: usize,
}

impl Service for UntilCrash {
    fn call(self: Arc<Self>, req: ember_net::Request) -> ember_net::ServiceFuture {
        Box::pin(async move {
            let result = self.inner.clone().call(req).await;
            if lock(&self.faults).is_doomed(self.node) {
                std::future::pending::<()>().await;
            }
            result
        })
    }
}

/// Accepts simulated connections on `port` and serves each with `service`.
async fn serve(port: u16, service: Arc<dyn Service>) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let (rd, wr) = stream.into_split();
        tokio::spawn(ember_net::serve_stream(rd, wr, peer, service.clone(), FrameLimits::default()));
    }
}

/// mgmtd on a KV that outlives its crashes (the KV's own durability is tested elsewhere).
pub async fn run_mgmtd(kv: Arc<dyn TxnKv>, mode: ReplicationMode) -> turmoil::Result {
    let options = MgmtdOptions {
        heartbeat_timeout: HEARTBEAT_TIMEOUT,
        client_session_timeout: Duration::from_secs(60),
        auto_create_chains: false,
        replication_mode: mode,
    };
    let state = Arc::new(ClusterState::load(kv, options)?);
    tokio::spawn(ember_mgmtd::liveness_loop(state.clone()));
    serve(MGMTD_PORT, Arc::new(MgmtdService::new(state))).await
}

/// The engines of the running storage nodes, for the final comparison; `None` while a node is
/// down (its engine must be closed before the restart opens it again).
pub type Engines = Arc<Mutex<Vec<Option<Arc<ChunkEngine>>>>>;

/// One storage node with one target in `dir`, which survives crashes like a disk.
pub async fn run_storage(i: usize, dir: PathBuf, faults: Arc<Mutex<Faults>>, engines: Engines) -> turmoil::Result {
    let config = StorageConfig {
        listen: String::new(),
        metrics_listen: String::new(),
        mgmtd: mgmtd_addr(),
        data_dir: dir.clone(),
        targets: vec![dir.join("target0")],
        heartbeat_interval_ms: 200,
    };
    // A capacity well below the scratch file system's free space keeps the space reports
    // (which travel in heartbeats and routing) independent of what else uses that disk.
    let options = EngineOptions { capacity_bytes: Some(1 << 30), ..EngineOptions::default() };
    let engine = Arc::new(ChunkEngine::open(&config.targets[0], options)?);
    engine.set_crash_points(Faults::crash_points(&faults, i));
    engines.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(engine.clone());
    let address = format!("{}:{STORAGE_PORT}", storage_host(i));
    let node = StorageNode::start(&config, vec![engine], &address, sim_dialer()).await?;
    serve(STORAGE_PORT, Arc::new(UntilCrash { inner: node.service.clone(), faults, node: i })).await
}
