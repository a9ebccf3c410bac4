//! `ember`: one binary for every role of an Ember cluster.
//!
//! Exit codes: 0 success, 1 the operation failed (see the message), 2 bad usage or
//! configuration (clap's convention), 3 the cluster could not be reached.

mod admin;
mod bench;
mod config;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember", version, about = "Ember distributed file system", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole single-node cluster (mgmtd, storage, and the mount with the metadata
    /// server in its process) and mount it.
    Up(up::UpArgs),
    /// Run the cluster manager.
    Mgmtd(config::MgmtdArgs),
    /// Run a metadata server.
    Meta(config::MetaArgs),
    /// Run a storage server with one or more targets.
    Storage(config::StorageArgs),
    /// Mount the file system with FUSE.
    Mount(config::MountArgs),
    /// Inspect and operate a running cluster.
    Admin(admin::AdminArgs),
}

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

/// An error with the exit code it should produce.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { code: EXIT_FAILED, error: e.into() }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The KV engine logs every recovery step at info; keep its warnings only.
    ember_telemetry::init_logging("info,fjall=warn,lsm_tree=warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ember: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Blocking tasks (fsyncs, FUSE threads) are not waited for once the command is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("ember: {}", describe(&f.error));
            ExitCode::from(f.code)
        }
    }
}

/// The error and its causes, skipping a cause whose text the message above already contains
/// (error enums often embed their source in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
    }
    out
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Up(a) => up::run(a).await,
        Command::Mgmtd(a) => {
            let Some(c) = a.resolve()? else { return Ok(()) };
            ember_mgmtd::run_mgmtd(c, shutdown_signal()).await.map_err(Failure::from)
        }
        Command::Meta(a) => {
            let Some(c) = a.resolve()? else { return Ok(()) };
            ember_meta::run_meta(c, shutdown_signal()).await.map_err(Failure::from)
        }
        Command::Storage(a) => {
            let Some(c) = a.resolve()? else { return Ok(()) };
            ember_storage::run_storage(c, shutdown_signal()).await.map_err(Failure::from)
        }
        Command::Mount(a) => match a.resolve()? {
            None => Ok(()),
            Some((c, None)) => ember_fuse::run_mount(c, shutdown_signal()).await.map_err(Failure::from),
            Some((c, Some(meta))) => mount_with_meta(c, meta).await,
        },
        Command::Admin(a) => admin::run(a).await,
    }
}

/// Serves a mount and a metadata server in this process. The server starts first and stops
/// last, after the mount has ended its sessions with it; if it fails, the mount stops too.
async fn mount_with_meta(mount: ember_fuse::MountConfig, meta: ember_meta::MetaConfig) -> Result<(), Failure> {
    let (stop_meta, meta_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut meta_task = tokio::spawn(ember_meta::run_meta(meta, async move {
        let _ = meta_stopped.await;
    }));
    let signal = shutdown_signal();
    let mut meta_ended = None;
    let mounted = ember_fuse::run_mount(mount, async {
        tokio::select! {
            () = signal => {}
            r = &mut meta_task => meta_ended = Some(r),
        }
    })
    .await;
    let _ = stop_meta.send(());
    let meta_result = match meta_ended {
        Some(r) => r,
        None => meta_task.await,
    };
    // A server that failed is the likelier cause of a mount that stopped with it.
    meta_result.map_err(|e| anyhow::anyhow!("metadata server task failed: {e}"))??;
    Ok(mounted?)
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal during start-up is not lost (or fatal).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            _ = recv(&mut term) => {}
            _ = recv(&mut int) => {}
        }
    }
}

async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
