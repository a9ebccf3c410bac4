//! The mount process: connect to the cluster, mount, serve until told to stop, unmount.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ember_client::{ClientConfig, EmberClient};
use ember_types::Status;
use fuser::{Config, MountOption, SessionACL};

use crate::adapter::EmberFs;
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
    let notifier = Arc::new(OnceLock::new());
    let ttl = Duration::from_millis(config.attr_ttl_ms);
    let fs = EmberFs::new(vfs.clone(), tokio::runtime::Handle::current(), ttl, notifier.clone());
    let options = vec![
        MountOption::FSName("ember".into()),
        MountOption::Subtype("ember".into()),
        MountOption::DefaultPermissions,
    ];
    // No auto_unmount: it hands unmounting to a fusermount3 helper that did not unmount here
    // when the session ended. A crashed mount is cleaned with `umount -l`, as with any FUSE.
    let acl = if config.allow_other { SessionACL::All } else { SessionACL::Owner };
    let mut fuse_config = Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = acl;
    fuse_config.n_threads = Some(config.threads.max(1));
    let mountpoint = config.mountpoint.clone();
    let session = tokio::task::spawn_blocking(move || fuser::spawn_mount(fs, &mountpoint, &fuse_config))
        .await
        .map_err(|e| Status::internal(format!("mount task failed: {e}")))?
        .map_err(|e| Status::invalid(format!("mount {}: {e}", config.mountpoint.display())))?;
    let _ = notifier.set(session.notifier());
    tracing::info!(mountpoint = %config.mountpoint.display(), "mounted");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if session.guard.is_finished() {
                    let ended = session.join().map_err(|e| Status::internal(format!("FUSE session failed: {e}")));
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
    let mountpoint = config.mountpoint.clone();
    let unmounted = tokio::task::spawn_blocking(move || session.umount_and_join());
    match tokio::time::timeout(UNMOUNT_WAIT, unmounted).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            // Busy: detach it so new opens fail; the kernel finishes once the last user leaves.
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            lazy_unmount(&mountpoint);
        }
        Ok(Err(e)) => return Err(Status::internal(format!("unmount task failed: {e}"))),
        Err(_) => tracing::warn!("FUSE workers did not stop in {UNMOUNT_WAIT:?}; exiting anyway"),
    }
    end_sessions(&vfs).await;
    Ok(())
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

fn lazy_unmount(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return };
    // SAFETY: umount2(2) with a valid NUL-terminated path; failure is reported, not fatal.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "lazy unmount failed");
    }
}
