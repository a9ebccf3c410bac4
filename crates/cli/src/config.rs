//! Command-line arguments of the service roles: a TOML file (`--config`), then flags on top.
//! `--print-default-config` prints the full default file of a role.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Failure, EXIT_USAGE};

#[derive(Args, Clone, Debug, Default)]
pub struct Common {
    /// TOML configuration file; flags given on the command line override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

/// Loads `--config` over the defaults, or prints the defaults and returns `None`.
fn load<C: Serialize + DeserializeOwned + Default>(common: &Common) -> Result<Option<C>, Failure> {
    if common.print_default_config {
        let text = toml::to_string_pretty(&C::default())?;
        print!("{text}");
        return Ok(None);
    }
    match &common.config {
        None => Ok(Some(C::default())),
        Some(path) => read_config(path).map(Some).map_err(|error| Failure { code: EXIT_USAGE, error }),
    }
}

fn read_config<C: DeserializeOwned>(path: &Path) -> anyhow::Result<C> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

#[derive(Args, Clone, Debug)]
pub struct MgmtdArgs {
    #[command(flatten)]
    pub common: Common,
    /// RPC listen address (host:port; port 0 = any free port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Prometheus metrics address ("" disables).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// State directory (embedded KV).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Do not give new targets a chain of their own; chains are built with `admin create-chain`.
    #[arg(long)]
    pub manual_chains: bool,
    /// How chains replicate: fan-out (parallel) or chain (store and forward, the baseline).
    #[arg(long, value_parser = ["fan-out", "chain"])]
    pub replication_mode: Option<String>,
    /// A client (mount) that has not renewed its session for this long is gone: its open
    /// files and locks are released.
    #[arg(long)]
    pub client_session_timeout_ms: Option<u64>,
}

impl MgmtdArgs {
    pub fn resolve(self) -> Result<Option<ember_mgmtd::MgmtdConfig>, Failure> {
        let Some(mut c) = load::<ember_mgmtd::MgmtdConfig>(&self.common)? else { return Ok(None) };
        set(&mut c.listen, self.listen);
        set(&mut c.metrics_listen, self.metrics_listen);
        set(&mut c.data_dir, self.data);
        set(&mut c.client_session_timeout_ms, self.client_session_timeout_ms);
        if self.manual_chains {
            c.auto_create_chains = false;
        }
        if let Some(m) = self.replication_mode {
            c.replication_mode =
                if m == "chain" { ember_types::ReplicationMode::Chain } else { ember_types::ReplicationMode::FanOut };
        }
        Ok(Some(c))
    }
}

#[derive(Args, Clone, Debug)]
pub struct MetaArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Address of mgmtd.
    #[arg(long)]
    pub mgmtd: Option<String>,
    /// State directory (embedded KV).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// When a metadata change is acknowledged: sync (on disk) or periodic (in the OS, on disk
    /// within a second).
    #[arg(long, value_parser = ["sync", "periodic"])]
    pub meta_durability: Option<String>,
}

impl MetaArgs {
    pub fn resolve(self) -> Result<Option<ember_meta::MetaConfig>, Failure> {
        let Some(mut c) = load::<ember_meta::MetaConfig>(&self.common)? else { return Ok(None) };
        set(&mut c.listen, self.listen);
        set(&mut c.metrics_listen, self.metrics_listen);
        set(&mut c.mgmtd, self.mgmtd);
        set(&mut c.data_dir, self.data);
        if let Some(d) = self.meta_durability {
            c.durability = durability(&d);
        }
        Ok(Some(c))
    }
}

#[derive(Args, Clone, Debug)]
pub struct StorageArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Address of mgmtd.
    #[arg(long)]
    pub mgmtd: Option<String>,
    /// Node state directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A target directory (repeat for several disks); default `<data>/target0`.
    #[arg(long = "target")]
    pub targets: Vec<PathBuf>,
}

impl StorageArgs {
    pub fn resolve(self) -> Result<Option<ember_storage::StorageConfig>, Failure> {
        let Some(mut c) = load::<ember_storage::StorageConfig>(&self.common)? else { return Ok(None) };
        set(&mut c.listen, self.listen);
        set(&mut c.metrics_listen, self.metrics_listen);
        set(&mut c.mgmtd, self.mgmtd);
        set(&mut c.data_dir, self.data);
        if !self.targets.is_empty() {
            c.targets = self.targets;
        }
        Ok(Some(c))
    }
}

#[derive(Args, Clone, Debug)]
pub struct MountArgs {
    #[command(flatten)]
    pub common: Common,
    /// Where to mount.
    pub mountpoint: Option<PathBuf>,
    /// Address of mgmtd.
    #[arg(long)]
    pub mgmtd: Option<String>,
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// FUSE worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Take requests through /dev/fuse only, not through FUSE over io_uring.
    #[arg(long)]
    pub no_io_uring: bool,
    #[command(flatten)]
    pub meta: InProcessMetaArgs,
}

/// A metadata server run inside the mount process (`ember up` does this): other clients reach
/// it over TCP as any meta server, this mount's own requests need no socket.
#[derive(Args, Clone, Debug, Default)]
pub struct InProcessMetaArgs {
    /// Run a metadata server in this process, with its state (embedded KV) in this directory.
    #[arg(long)]
    pub meta_data: Option<PathBuf>,
    /// That server's configuration file (as `ember meta --config` takes); the flags below
    /// override it.
    #[arg(long, requires = "meta_data")]
    pub meta_config: Option<PathBuf>,
    /// That server's RPC listen address.
    #[arg(long, requires = "meta_data")]
    pub meta_listen: Option<String>,
    /// That server's Prometheus metrics address ("" disables).
    #[arg(long, requires = "meta_data")]
    pub meta_metrics_listen: Option<String>,
    /// That server's durability: sync (on disk) or periodic (in the OS, on disk within a second).
    #[arg(long, requires = "meta_data", value_parser = ["sync", "periodic"])]
    pub meta_durability: Option<String>,
}

impl MountArgs {
    /// The mount's configuration, and that of the metadata server to run with it, if any.
    pub fn resolve(self) -> Result<Option<(ember_fuse::MountConfig, Option<ember_meta::MetaConfig>)>, Failure> {
        let Some(mut c) = load::<ember_fuse::MountConfig>(&self.common)? else { return Ok(None) };
        set(&mut c.mountpoint, self.mountpoint);
        set(&mut c.mgmtd, self.mgmtd);
        set(&mut c.metrics_listen, self.metrics_listen);
        set(&mut c.threads, self.threads);
        c.io_uring &= !self.no_io_uring;
        let meta = self.meta.resolve(&c.mgmtd)?;
        Ok(Some((c, meta)))
    }
}

impl InProcessMetaArgs {
    fn resolve(self, mgmtd: &str) -> Result<Option<ember_meta::MetaConfig>, Failure> {
        let Some(data) = self.meta_data else { return Ok(None) };
        let common = Common { config: self.meta_config, print_default_config: false };
        let Some(mut c) = load::<ember_meta::MetaConfig>(&common)? else { return Ok(None) };
        c.data_dir = data;
        c.mgmtd = mgmtd.to_owned();
        c.in_process = true;
        set(&mut c.listen, self.meta_listen);
        set(&mut c.metrics_listen, self.meta_metrics_listen);
        if let Some(d) = self.meta_durability {
            c.durability = durability(&d);
        }
        Ok(Some(c))
    }
}

fn durability(name: &str) -> ember_meta::MetaDurability {
    if name == "periodic" {
        ember_meta::MetaDurability::Periodic
    } else {
        ember_meta::MetaDurability::Sync
    }
}
