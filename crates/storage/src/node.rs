//! A storage node process: opens its targets, registers them with mgmtd, heartbeats, serves.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ember_net::routing::RoutingWatcher;
use ember_net::{Dialer, PeerPool, RpcClient};
use ember_proto::mgmtd::{HeartbeatReq, RegisterNodeReq};
use ember_types::{NodeKind, StatusCode, TargetId};

use crate::service::{StorageService, REPLICA_RPC_TIMEOUT};
use crate::{ChunkEngine, EngineOptions, StorageError};

/// Settings of one storage process (`ember storage --print-default-config`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// RPC listen address; port 0 picks a free port (written to `<data_dir>/storage.addr`).
    pub listen: String,
    /// Prometheus `/metrics` address; empty disables it.
    pub metrics_listen: String,
    /// Address of mgmtd.
    pub mgmtd: String,
    /// Node identity and defaults live here.
    pub data_dir: PathBuf,
    /// One directory per target (ideally one per disk); empty means `<data_dir>/target0`.
    pub targets: Vec<PathBuf>,
    pub heartbeat_interval_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            listen: "127.0.0.1:9200".into(),
            metrics_listen: "127.0.0.1:9201".into(),
            mgmtd: "127.0.0.1:9000".into(),
            data_dir: PathBuf::from("/var/lib/ember/storage"),
            targets: Vec::new(),
            heartbeat_interval_ms: 200,
        }
    }
}

impl StorageConfig {
    pub fn target_dirs(&self) -> Vec<PathBuf> {
        if self.targets.is_empty() {
            vec![self.data_dir.join("target0")]
        } else {
            self.targets.clone()
        }
    }
}

/// Runs a storage node until `shutdown` resolves.
pub async fn run_storage(config: StorageConfig, shutdown: impl Future<Output = ()>) -> Result<(), StorageError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let mut engines = Vec::new();
    for dir in config.target_dirs() {
        let engine = tokio::task::spawn_blocking(move || ChunkEngine::open(&dir, EngineOptions::default()))
            .await
            .map_err(|e| StorageError::Startup(e.to_string()))??;
        engines.push(Arc::new(engine));
    }
    let listener = ember_net::bind(&config.listen).await?;
    let address = listener.local_addr()?.to_string();
    let node = StorageNode::start(&config, engines, &address, Dialer::tcp()).await?;
    if !config.metrics_listen.is_empty() {
        let m = ember_net::bind(&config.metrics_listen).await?;
        ember_net::write_file_atomic(&config.data_dir.join("metrics.addr"), &m.local_addr()?.to_string())?;
        tokio::spawn(ember_telemetry::serve_metrics(m));
    }
    ember_net::write_file_atomic(&config.data_dir.join("storage.addr"), &address)?;
    tokio::select! {
        _ = ember_net::serve(listener, node.service.clone(), ember_net::FrameLimits::default()) => {}
        _ = shutdown => tracing::info!("storage shutting down"),
    }
    Ok(())
}

/// A registered storage node and its background duties (routing poll, heartbeats, chain
/// upkeep); dropping it stops them. Serving its RPCs is the caller's job, so the same node
/// runs behind a TCP listener or a simulated one.
pub struct StorageNode {
    pub service: Arc<StorageService>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StorageNode {
    /// Registers the targets of `engines` (one per directory of `config`) under `address`.
    pub async fn start(
        config: &StorageConfig,
        engines: Vec<Arc<ChunkEngine>>,
        address: &str,
        dialer: Dialer,
    ) -> Result<StorageNode, StorageError> {
        let dirs = config.target_dirs();
        let routing = RoutingWatcher::with_dialer(&config.mgmtd, dialer.clone());
        let (node_id, ids) = register_until_done(config, routing.mgmtd(), address, &dirs).await?;
        let targets: HashMap<TargetId, Arc<ChunkEngine>> = ids.iter().copied().map(TargetId).zip(engines).collect();
        let peers = PeerPool::new(REPLICA_RPC_TIMEOUT).with_dialer(dialer);
        let service = Arc::new(StorageService::new(targets, routing.clone(), peers));
        let _ = routing.refresh().await;
        let tasks = vec![
            routing.spawn_poller(Duration::from_secs(1)),
            tokio::spawn(heartbeat_loop(config.clone(), routing.clone(), service.clone(), node_id, address.to_owned())),
            tokio::spawn(keep_chains_loop(service.clone())),
        ];
        tracing::info!(%address, node_id, targets = ?ids, "storage serving");
        Ok(StorageNode { service, tasks })
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Registers with mgmtd, retrying while it is unreachable, and remembers the ids it gets.
async fn register_until_done(
    config: &StorageConfig,
    mgmtd: &RpcClient,
    address: &str,
    dirs: &[PathBuf],
) -> Result<(u32, Vec<u32>), StorageError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match register(config, mgmtd, address, dirs).await {
            Ok(ids) => return Ok(ids),
            Err(StorageError::Rpc(st)) if st.code.is_retryable() || st.code == StatusCode::Unavailable => {
                tracing::info!(error = %st, "mgmtd not reachable yet; retrying registration");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn register(
    config: &StorageConfig,
    mgmtd: &RpcClient,
    address: &str,
    dirs: &[PathBuf],
) -> Result<(u32, Vec<u32>), StorageError> {
    let node_file = config.data_dir.join("node.id");
    let mut target_ids = Vec::with_capacity(dirs.len());
    for d in dirs {
        target_ids.push(read_id(&d.join("target.id"))?.unwrap_or(0));
    }
    let req = RegisterNodeReq {
        node_id: read_id(&node_file)?.unwrap_or(0),
        kind: NodeKind::Storage.to_u8().into(),
        address: address.to_owned(),
        target_ids,
        hostname: hostname(),
    };
    let resp = mgmtd.unary(&req).await.map_err(StorageError::Rpc)?;
    if resp.target_ids.len() != dirs.len() {
        return Err(StorageError::Startup("mgmtd returned the wrong number of target ids".into()));
    }
    write_id(&node_file, resp.node_id)?;
    for (d, id) in dirs.iter().zip(&resp.target_ids) {
        write_id(&d.join("target.id"), *id)?;
    }
    Ok((resp.node_id, resp.target_ids))
}

async fn heartbeat_loop(
    config: StorageConfig,
    routing: Arc<RoutingWatcher>,
    service: Arc<StorageService>,
    node_id: u32,
    address: String,
) {
    let every = Duration::from_millis(config.heartbeat_interval_ms.max(50));
    let mut seq = 0u64;
    loop {
        seq += 1;
        let req = HeartbeatReq { node_id, address: address.clone(), targets: service.reports(), seq };
        let sent = tokio::time::Instant::now();
        // A heartbeat that is not answered soon is lost (the lease it would renew runs out
        // anyway); waiting longer would only delay the next one after the network heals.
        match routing.mgmtd().unary_within(&req, every * 3).await {
            Ok(resp) => {
                let news = routing.get().version() < resp.routing_version;
                if news {
                    let _ = routing.refresh().await;
                }
                service.reconcile(&routing.get(), resp.routing_version);
                if news {
                    // A new primary starts syncing its members now, not at the next tick.
                    service.keep_chains();
                }
                // Counted from the send: mgmtd saw the heartbeat after that. Only with routing
                // as new as the reply: a lease must not outlive news that we were deposed.
                if routing.get().version() >= resp.routing_version {
                    service.renew_lease(sent, Duration::from_millis(resp.lease_ms));
                }
            }
            Err(st) if st.code == StatusCode::NotRegistered => {
                let dirs = config.target_dirs();
                if let Err(e) = register(&config, routing.mgmtd(), &address, &dirs).await {
                    tracing::warn!(error = %e, "re-registration failed");
                }
            }
            Err(st) => tracing::debug!(error = %st, "heartbeat failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The primary's duties (syncing members) are checked a few times a second.
async fn keep_chains_loop(service: Arc<StorageService>) {
    loop {
        service.keep_chains();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads a persisted id; a missing file means "not assigned yet".
pub(crate) fn read_id(path: &Path) -> Result<Option<u32>, StorageError> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| StorageError::Startup(format!("{} does not hold a number", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn write_id(path: &Path, id: u32) -> Result<(), StorageError> {
    if read_id(path)? == Some(id) {
        return Ok(());
    }
    ember_net::write_file_atomic(path, &id.to_string())?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}
