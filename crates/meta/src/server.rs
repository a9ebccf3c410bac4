//! The `ember meta` process: KV, RPC listener, registration and heartbeats with mgmtd, routing
//! poller, metrics endpoint and GC, until shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ember_kv::{Durability, FjallKv, TxnKv};
use ember_net::routing::RoutingWatcher;
use ember_net::{FrameLimits, PeerPool};
use ember_proto::mgmtd::{HeartbeatReq, RegisterNodeReq};
use ember_types::{NodeKind, StatusCode};
use tokio::task::JoinHandle;

use crate::chains::RoutingChains;
use crate::gc::{Gc, MgmtdClients, RoutingRemover};
use crate::service::MetaService;
use crate::store::StoreConfig;
use crate::{MetaError, MetaStore};

/// Well inside mgmtd's default heartbeat timeout (1 s), so a busy moment is not a failure.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
const ROUTING_EVERY: Duration = Duration::from_secs(1);
const MAX_REGISTER_BACKOFF: Duration = Duration::from_secs(5);
/// How long mgmtd's client list is trusted before asking again.
const CLIENT_LIST_TTL: Duration = Duration::from_secs(3);
const GC_BATCH: usize = 256;
const STORAGE_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// 10 ms steps: up to 10 s for in-flight transactions at shutdown.
const SHUTDOWN_WAIT_STEPS: u32 = 1000;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MetaConfig {
    /// RPC listen address; port 0 picks a free port (written to `data_dir/meta.addr`).
    pub listen: String,
    /// Address registered with mgmtd; empty = the bound listen address.
    pub advertise: String,
    /// Prometheus `/metrics` address; empty = off.
    pub metrics_listen: String,
    pub mgmtd: String,
    /// Holds the KV (`kv/`), the node id and the bound addresses.
    pub data_dir: PathBuf,
    /// Chunk size of new files in bytes.
    pub chunk_size: u32,
    /// Chains per new file (capped by the chains that exist).
    pub stripe: u32,
    pub gc_interval_ms: u64,
    /// New files keep their bytes in the KV, with no storage request, until they grow past
    /// this length (0 turns it off; at most 65536).
    pub inline_max_bytes: u32,
    /// When a metadata change is acknowledged: `sync`, once it is on disk (the default), or
    /// `periodic`, once it is in the operating system, on disk within a second (a power loss
    /// may take the last second of changes; a crash of the process takes nothing).
    pub durability: MetaDurability,
    /// Also answer this process's own requests to this server without a socket (set by a
    /// mount that runs its metadata server in process; not a configuration setting).
    #[serde(skip)]
    pub in_process: bool,
}

/// See [`MetaConfig::durability`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetaDurability {
    #[default]
    Sync,
    Periodic,
}

/// How often `periodic` durability puts the KV on disk.
const PERIODIC_PERSIST: Duration = Duration::from_secs(1);

impl MetaDurability {
    fn kv(self) -> Durability {
        match self {
            MetaDurability::Sync => Durability::Sync,
            MetaDurability::Periodic => Durability::Periodic(PERIODIC_PERSIST),
        }
    }
}

impl Default for MetaConfig {
    fn default() -> Self {
        let store = StoreConfig::default();
        MetaConfig {
            listen: "127.0.0.1:9100".into(),
            advertise: String::new(),
            metrics_listen: "127.0.0.1:9101".into(),
            mgmtd: "127.0.0.1:9000".into(),
            data_dir: PathBuf::from("/var/lib/ember/meta"),
            chunk_size: store.chunk_size,
            stripe: store.stripe,
            gc_interval_ms: 1000,
            inline_max_bytes: store.inline_max,
            durability: MetaDurability::Sync,
            in_process: false,
        }
    }
}

fn write_atomic(path: &Path, contents: &str) -> Result<(), MetaError> {
    Ok(ember_net::write_file_atomic(path, contents)?)
}

/// Runs the metadata service until `shutdown` resolves.
pub async fn run_meta(
    config: MetaConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetaError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let kv: Arc<dyn TxnKv> = Arc::new(FjallKv::open_with(&config.data_dir.join("kv"), config.durability.kv())?);
    tracing::info!(durability = ?config.durability, "metadata KV open");
    let routing = RoutingWatcher::new(&config.mgmtd);
    let store_config = StoreConfig {
        chunk_size: config.chunk_size,
        stripe: config.stripe,
        inline_max: config.inline_max_bytes,
    };
    let store = Arc::new(MetaStore::new(
        kv,
        Arc::new(RoutingChains(routing.clone())),
        store_config,
    ));
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.ensure_root())
        .await
        .map_err(|e| MetaError::Internal(e.to_string()))??;

    let listener = ember_net::bind(&config.listen).await?;
    let bound = listener.local_addr()?.to_string();
    write_atomic(&config.data_dir.join("meta.addr"), &bound)?;
    let advertise = if config.advertise.is_empty() {
        bound.clone()
    } else {
        config.advertise.clone()
    };
    tracing::info!(listen = %bound, mgmtd = %config.mgmtd, "meta server listening");

    let service = MetaService::new(store.clone(), config.durability == MetaDurability::Sync);
    let in_process = config.in_process.then(|| ember_net::serve_in_process(&advertise, service.clone()));
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    tasks.push(tokio::spawn(ember_net::serve(
        listener,
        service.clone(),
        FrameLimits::default(),
    )));
    if let Some(t) = start_metrics(&config).await? {
        tasks.push(t);
    }
    tasks.push(tokio::spawn(keep_registered(
        routing.clone(),
        config.data_dir.clone(),
        advertise,
    )));
    tasks.push(routing.spawn_poller(ROUTING_EVERY));
    let remover = Arc::new(RoutingRemover::new(
        routing.clone(),
        Arc::new(PeerPool::new(STORAGE_RPC_TIMEOUT)),
    ));
    let clients = Arc::new(MgmtdClients::new(routing.clone(), CLIENT_LIST_TTL));
    let gc = Arc::new(Gc::new(store.clone(), remover, clients, GC_BATCH));
    tasks.push(gc.spawn(Duration::from_millis(config.gc_interval_ms.max(10))));

    shutdown.await;
    tracing::info!("meta server shutting down");
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    drop(in_process);
    service.close();
    release(store).await;
    Ok(())
}

/// Waits for in-flight transactions to finish so the KV is closed (and its lock released) when
/// `run_meta` returns; a restart in the same process can then open it again.
async fn release(store: Arc<MetaStore>) {
    for _ in 0..SHUTDOWN_WAIT_STEPS {
        if Arc::strong_count(&store) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!("metadata transactions still running at shutdown");
}

async fn start_metrics(config: &MetaConfig) -> Result<Option<JoinHandle<()>>, MetaError> {
    if config.metrics_listen.is_empty() {
        return Ok(None);
    }
    let listener = ember_net::bind(&config.metrics_listen).await?;
    write_atomic(
        &config.data_dir.join("metrics.addr"),
        &listener.local_addr()?.to_string(),
    )?;
    Ok(Some(tokio::spawn(ember_telemetry::serve_metrics(listener))))
}

fn load_node_id(data_dir: &Path) -> u32 {
    std::fs::read_to_string(data_dir.join("node.id"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Registers (with backoff while mgmtd is unreachable), then heartbeats every second;
/// registers again if mgmtd forgot this node.
async fn keep_registered(routing: Arc<RoutingWatcher>, data_dir: PathBuf, address: String) {
    let mut seq = 0u64;
    loop {
        let node_id = register(&routing, &data_dir, &address).await;
        loop {
            tokio::time::sleep(HEARTBEAT_EVERY).await;
            seq += 1;
            let hb = HeartbeatReq {
                node_id,
                address: address.clone(),
                targets: Vec::new(),
                seq,
            };
            match routing.mgmtd().unary(&hb).await {
                Ok(_) => {}
                Err(e) if e.code == StatusCode::NotRegistered => {
                    tracing::warn!(node_id, "mgmtd does not know this node; registering again");
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
            }
        }
    }
}

async fn register(routing: &RoutingWatcher, data_dir: &Path, address: &str) -> u32 {
    let mut backoff = Duration::from_millis(100);
    loop {
        let req = RegisterNodeReq {
            node_id: load_node_id(data_dir),
            kind: u32::from(NodeKind::Meta.to_u8()),
            address: address.to_owned(),
            target_ids: Vec::new(),
            hostname: hostname(),
        };
        match routing.mgmtd().unary(&req).await {
            Ok(resp) => {
                if let Err(e) = write_atomic(&data_dir.join("node.id"), &resp.node_id.to_string()) {
                    tracing::warn!(error = %e, "cannot persist node id");
                }
                tracing::info!(node_id = resp.node_id, "registered with mgmtd");
                return resp.node_id;
            }
            Err(e) => {
                tracing::debug!(error = %e, "registration with mgmtd failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_REGISTER_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests;
