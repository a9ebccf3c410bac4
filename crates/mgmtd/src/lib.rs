//! Ember's cluster manager (mgmtd): registers nodes and their storage targets, builds chains
//! and chain tables, tracks liveness from heartbeats, keeps client sessions, and hands out the
//! versioned routing info every other process routes by.
//!
//! Durable state (nodes, targets, chains, tables, the routing version) lives in the KV;
//! liveness and client sessions live in memory and are rebuilt from heartbeats after a restart.

mod records;
mod service;
mod state;
mod transition;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use service::MgmtdService;
pub use state::{ClusterState, MgmtdOptions};

#[derive(Debug, thiserror::Error)]
pub enum MgmtdError {
    #[error("kv: {0}")]
    Kv(#[from] ember_kv::KvError),
    #[error("corrupt record under {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("unknown node {0}")]
    UnknownNode(u32),
    #[error("stale request: {0}")]
    Stale(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl MgmtdError {
    pub fn status(&self) -> ember_types::Status {
        use ember_types::{Status, StatusCode};
        match self {
            MgmtdError::Kv(e) if e.is_retryable() => Status::new(StatusCode::TxnConflict, self.to_string()),
            MgmtdError::Kv(_) => Status::new(StatusCode::KvError, self.to_string()),
            MgmtdError::Invalid(_) => Status::new(StatusCode::InvalidArgument, self.to_string()),
            MgmtdError::UnknownNode(_) => Status::new(StatusCode::NotRegistered, self.to_string()),
            MgmtdError::Stale(_) => Status::new(StatusCode::RoutingStale, self.to_string()),
            _ => Status::new(StatusCode::Internal, self.to_string()),
        }
    }
}

/// Settings of one mgmtd process (`ember mgmtd --print-default-config`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MgmtdConfig {
    /// RPC listen address; port 0 picks a free port (written to `<data_dir>/mgmtd.addr`).
    pub listen: String,
    /// Prometheus `/metrics` address; empty disables it.
    pub metrics_listen: String,
    /// Directory of the embedded KV.
    pub data_dir: PathBuf,
    /// A node that has not sent a heartbeat for this long is dead and its targets offline.
    pub heartbeat_timeout_ms: u64,
    /// A client that has not extended its session for this long is gone.
    pub client_session_timeout_ms: u64,
    /// Give every new target a chain of its own (single-node and test clusters).
    pub auto_create_chains: bool,
    /// How chains replicate: "fan-out" (the primary sends to every member at once) or "chain"
    /// (store and forward, member after member: 3FS's scheme, kept as a baseline).
    pub replication_mode: ember_types::ReplicationMode,
}

impl Default for MgmtdConfig {
    fn default() -> Self {
        MgmtdConfig {
            listen: "127.0.0.1:9000".into(),
            metrics_listen: "127.0.0.1:9001".into(),
            data_dir: PathBuf::from("/var/lib/ember/mgmtd"),
            heartbeat_timeout_ms: 1_000,
            client_session_timeout_ms: 60_000,
            auto_create_chains: true,
            replication_mode: ember_types::ReplicationMode::FanOut,
        }
    }
}

/// Runs mgmtd until `shutdown` resolves.
pub async fn run_mgmtd(config: MgmtdConfig, shutdown: impl Future<Output = ()>) -> Result<(), MgmtdError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let kv: Arc<dyn ember_kv::TxnKv> = Arc::new(ember_kv::FjallKv::open(&config.data_dir.join("kv"))?);
    let options = MgmtdOptions {
        heartbeat_timeout: Duration::from_millis(config.heartbeat_timeout_ms),
        client_session_timeout: Duration::from_millis(config.client_session_timeout_ms),
        auto_create_chains: config.auto_create_chains,
        replication_mode: config.replication_mode,
    };
    let state = Arc::new(tokio::task::block_in_place(|| ClusterState::load(kv, options))?);
    let listener = ember_net::bind(&config.listen).await?;
    ember_net::write_file_atomic(&config.data_dir.join("mgmtd.addr"), &listener.local_addr()?.to_string())?;
    if !config.metrics_listen.is_empty() {
        let m = ember_net::bind(&config.metrics_listen).await?;
        ember_net::write_file_atomic(&config.data_dir.join("metrics.addr"), &m.local_addr()?.to_string())?;
        tokio::spawn(ember_telemetry::serve_metrics(m));
    }
    tracing::info!(addr = %listener.local_addr()?, "mgmtd serving");
    let liveness = tokio::spawn(liveness_loop(state.clone()));
    let service = Arc::new(MgmtdService::new(state));
    tokio::select! {
        _ = ember_net::serve(listener, service, ember_net::FrameLimits::default()) => {}
        _ = shutdown => tracing::info!("mgmtd shutting down"),
    }
    liveness.abort();
    Ok(())
}

/// Re-evaluates node liveness every [`ClusterState::liveness_tick`].
pub async fn liveness_loop(state: Arc<ClusterState>) {
    loop {
        tokio::time::sleep(state.liveness_tick()).await;
        let st = state.clone();
        match ember_net::blocking(move || st.check_liveness()).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "liveness check failed"),
            Err(e) => tracing::warn!(error = %e, "liveness task failed"),
            Ok(Ok(())) => {}
        }
    }
}
