//! The mount process: connect to the cluster, mount, serve until told to stop, unmount.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ember_client::{ClientConfig, EmberClient};
use ember_types::Status;

use crate::adapter::{EmberFs, MAX_IO};
use crate::kernel::{self, Limits, Session};
use crate::{Vfs, VfsConfig};

const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

/// Settings of one mount (`ember mount --print-default-config`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MountConfig {
    pub mgmtd: String,
    pub mountpoint: PathBuf,
    /// FUSE worker threads. They block on I/O, so size them by outstanding requests, not cores.
    pub threads: usize,
    /// Take requests through FUSE over io_uring (Linux 6.14+), answered on the CPU of the
    /// process that made them, when the kernel has it; the mount turns the kernel's switch
    /// on (`/sys/module/fuse/parameters/enable_uring`) if it runs as root. Off, or without
    /// it, requests come through /dev/fuse.
    pub io_uring: bool,
    /// How long the kernel may cache attributes and directory entries.
    pub attr_ttl_ms: u64,
    /// How long a directory this mount has just made or listed answers lookups of names it
    /// does not hold without asking meta (creates by other clients show up that much late,
    /// as with the kernel's negative entries); 0 turns it off.
    pub negative_ttl_ms: u64,
    pub write_buffer_bytes: usize,
    /// Let users other than the one who mounted use the mount (needs root or user_allow_other).
    pub allow_other: bool,
    /// Prometheus `/metrics` address; empty disables it.
    pub metrics_listen: String,
    /// Read from any serving replica of a chain (spreads reads over the replicas), not only
    /// from its primary.
    pub read_from_replicas: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            mgmtd: "127.0.0.1:9000".into(),
            mountpoint: PathBuf::from("/mnt/ember"),
            threads: 16,
            io_uring: true,
            attr_ttl_ms: 1000,
            negative_ttl_ms: 1000,
            write_buffer_bytes: 4 << 20,
            allow_other: true,
            metrics_listen: "127.0.0.1:9301".into(),
            read_from_replicas: true,
        }
    }
}

/// Mounts and serves until `shutdown` resolves or the file system is unmounted from outside.
pub async fn run_mount(config: MountConfig, shutdown: impl Future<Output = ()>) -> Result<(), Status> {
    let mut shutdown = std::pin::pin!(shutdown);
    let client = tokio::select! {
        c = connect(&config) => c?,
        () = &mut shutdown => {
            tracing::info!("stopped before the cluster could be reached");
            return Ok(());
        }
    };
    if !config.metrics_listen.is_empty() {
        let m = ember_net::bind(&config.metrics_listen).await.map_err(|e| Status::invalid(e.to_string()))?;
        tokio::spawn(ember_telemetry::serve_metrics(m));
    }
    let vfs_config = VfsConfig {
        write_buffer: config.write_buffer_bytes,
        negative_ttl: Duration::from_millis(config.negative_ttl_ms),
        attr_ttl: Duration::from_millis(config.attr_ttl_ms),
        ..VfsConfig::default()
    };
    let vfs = Arc::new(Vfs::new(client, vfs_config));
    let ttl = Duration::from_millis(config.attr_ttl_ms);
    let (mountpoint, allow_other) = (config.mountpoint.clone(), config.allow_other);
    // Before mounting: the kernel offers the ring in the INIT it sends at mount(2).
    let io_uring = config.io_uring && kernel::uring_ready();
    // No auto_unmount: a crashed mount is cleaned with `umount -l`, as with any FUSE.
    let device = tokio::task::spawn_blocking(move || kernel::mount(&mountpoint, allow_other))
        .await
        .map_err(|e| Status::internal(format!("mount task failed: {e}")))?
        .map_err(|e| Status::invalid(format!("mount {}: {e}", config.mountpoint.display())))?;
    let device = Arc::new(device);
    let fs = EmberFs::new(vfs.clone(), tokio::runtime::Handle::current(), ttl, device.clone());
    let limits = Limits { max_io: MAX_IO, threads: config.threads.max(1), io_uring };
    let session = match Session::start(device, fs, limits) {
        Ok(s) => s,
        Err(e) => {
            let _ = kernel::unmount(&config.mountpoint, true);
            return Err(Status::internal(format!("cannot start FUSE workers: {e}")));
        }
    };
    tracing::info!(mountpoint = %config.mountpoint.display(), "mounted");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if session.ended() {
                    let ended = join(session).await;
                    if ended.is_ok() {
                        tracing::info!("unmounted from outside");
                    }
                    end_sessions(&vfs).await;
                    return ended;
                }
            }
        }
    }
    tracing::info!("unmounting");
    if let Err(e) = kernel::unmount(&config.mountpoint, false) {
        // Busy: detach it so new opens fail; the kernel finishes once the last user leaves.
        tracing::warn!(error = %e, "unmount failed; detaching lazily");
        if let Err(e) = kernel::unmount(&config.mountpoint, true) {
            tracing::warn!(error = %e, "lazy unmount failed");
        }
    }
    match tokio::time::timeout(UNMOUNT_WAIT, join(session)).await {
        Ok(r) => r?,
        Err(_) => tracing::warn!("FUSE workers did not stop in {UNMOUNT_WAIT:?}; exiting anyway"),
    }
    end_sessions(&vfs).await;
    Ok(())
}

async fn join(session: Session) -> Result<(), Status> {
    tokio::task::spawn_blocking(move || session.join())
        .await
        .map_err(|e| Status::internal(format!("FUSE session task failed: {e}")))?
        .map_err(|e| Status::internal(format!("FUSE session failed: {e}")))
}

async fn end_sessions(vfs: &Vfs) {
    if tokio::time::timeout(UNMOUNT_WAIT, vfs.finish()).await.is_err() {
        tracing::warn!("sessions of released files were not ended in {UNMOUNT_WAIT:?}; they end with this client's lease");
    }
}

async fn connect(config: &MountConfig) -> Result<Arc<EmberClient>, Status> {
    let mut client_config = ClientConfig::new(&config.mgmtd);
    client_config.description = format!("mount {}", config.mountpoint.display());
    client_config.read_from_replicas = config.read_from_replicas;
    let mut delay = Duration::from_millis(100);
    for _ in 0..50 {
        match EmberClient::connect(client_config.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::info!(error = %e, "mgmtd not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
    EmberClient::connect(client_config).await
}
