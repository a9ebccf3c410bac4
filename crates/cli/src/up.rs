//! `ember up`: a whole single-node cluster from one command. mgmtd, storage and the mount run
//! as separate child processes of this binary, each logging to `<data>/logs`; the metadata
//! server runs inside the mount process (its own requests then need no socket), or as a
//! process of its own with `--separate-meta`. This process waits for each to be ready, then
//! supervises them and stops them in order.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use tokio::process::{Child, Command};

use crate::config::Common;
use crate::Failure;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const RESTART_PACE: Duration = Duration::from_secs(3);

#[derive(Args, Clone, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: Common,
    /// State directory of the whole cluster.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where to mount the file system.
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// Number of storage targets per storage node.
    #[arg(long)]
    pub targets: Option<usize>,
    /// Number of storage processes, each with its own data directory and port.
    #[arg(long)]
    pub storage_nodes: Option<usize>,
    /// Replicas per chain (targets on distinct storage nodes).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// How chains replicate: fan-out (parallel, the default) or chain (store and forward).
    #[arg(long, value_parser = ["fan-out", "chain"])]
    pub replication_mode: Option<String>,
    /// When a metadata change is acknowledged: sync (on disk, the default) or periodic (in the
    /// OS, on disk within a second).
    #[arg(long, value_parser = ["sync", "periodic"])]
    pub meta_durability: Option<String>,
    /// Run the metadata server as a process of its own instead of inside the mount process.
    #[arg(long)]
    pub separate_meta: bool,
    /// Let every service pick a free port instead of the configured ones.
    #[arg(long)]
    pub any_port: bool,
    /// The mount takes requests through /dev/fuse only, not through FUSE over io_uring.
    #[arg(long)]
    pub no_io_uring: bool,
}

/// Settings of `ember up` (`ember up --print-default-config`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpConfig {
    pub data_dir: PathBuf,
    pub mountpoint: PathBuf,
    /// Targets per storage node.
    pub targets: usize,
    pub storage_nodes: usize,
    pub replicas: usize,
    /// "fan-out" or "chain".
    pub replication_mode: String,
    /// "sync" or "periodic".
    pub meta_durability: String,
    /// Run the metadata server inside the mount process: the mount's own metadata requests
    /// then need no socket, but a crash of either takes both (`ember up` then stops, as when
    /// the mount alone exits). false: a process of its own, restarted if it exits.
    pub meta_in_mount: bool,
    pub mgmtd_listen: String,
    pub meta_listen: String,
    pub storage_listen: String,
    /// Base port of the four /metrics endpoints (mgmtd, meta, storage, mount); 0 = any free port.
    pub metrics_base_port: u16,
    /// The mount takes requests through FUSE over io_uring when the kernel has it (see
    /// `ember mount --print-default-config`); false: through /dev/fuse only.
    pub fuse_io_uring: bool,
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig {
            data_dir: PathBuf::from("/var/lib/ember"),
            mountpoint: PathBuf::from("/mnt/ember"),
            targets: 2,
            storage_nodes: 1,
            replicas: 1,
            replication_mode: "fan-out".into(),
            meta_durability: "sync".into(),
            meta_in_mount: true,
            mgmtd_listen: "127.0.0.1:9000".into(),
            meta_listen: "127.0.0.1:9100".into(),
            storage_listen: "127.0.0.1:9200".into(),
            metrics_base_port: 9001,
            fuse_io_uring: true,
        }
    }
}

struct Role {
    name: String,
    child: Child,
    log: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// When the supervisor last restarted it, to pace restarts of a role that keeps failing.
    restarted: Option<Instant>,
}

impl Role {
    /// The end of the role's log, so a start-up failure explains itself.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

pub async fn run(args: UpArgs) -> Result<(), Failure> {
    let Some(config) = resolve(args)? else { return Ok(()) };
    let mut stop = std::pin::pin!(crate::shutdown_signal());
    let mut roles: Vec<Role> = Vec::new();
    let started = tokio::select! {
        r = start_all(&config, &mut roles) => r.map(|()| true),
        _ = &mut stop => Ok(false),
    };
    match started {
        Ok(true) => {}
        Ok(false) => {
            stop_all(&mut roles).await;
            return Ok(());
        }
        Err(e) => {
            stop_all(&mut roles).await;
            return Err(e.into());
        }
    }
    println!(
        "ember up: mounted at {} (state in {}, logs in {}). Ctrl-C stops it.",
        config.mountpoint.display(),
        config.data_dir.display(),
        config.data_dir.join("logs").display()
    );
    let outcome = supervise(&mut roles, stop).await;
    stop_all(&mut roles).await;
    outcome.map_err(Failure::from)
}

fn resolve(args: UpArgs) -> Result<Option<UpConfig>, Failure> {
    let mut c: UpConfig = if args.common.print_default_config {
        print!("{}", toml::to_string_pretty(&UpConfig::default())?);
        return Ok(None);
    } else if let Some(path) = &args.common.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    } else {
        UpConfig::default()
    };
    if let Some(d) = args.data {
        c.data_dir = d;
    }
    if let Some(m) = args.mount {
        c.mountpoint = m;
    }
    if let Some(t) = args.targets {
        c.targets = t.max(1);
    }
    if let Some(n) = args.storage_nodes {
        c.storage_nodes = n.max(1);
    }
    if let Some(r) = args.replicas {
        c.replicas = r.max(1);
    }
    if let Some(m) = args.replication_mode {
        c.replication_mode = m;
    }
    if let Some(d) = args.meta_durability {
        c.meta_durability = d;
    }
    if args.separate_meta {
        c.meta_in_mount = false;
    }
    c.fuse_io_uring &= !args.no_io_uring;
    if c.replicas > c.storage_nodes || !(c.targets * c.storage_nodes).is_multiple_of(c.replicas) {
        let error = anyhow!(
            "--replicas {} needs at least as many storage nodes and a target count ({} nodes x {} targets) it divides",
            c.replicas,
            c.storage_nodes,
            c.targets
        );
        return Err(Failure { code: crate::EXIT_USAGE, error });
    }
    if args.any_port {
        for l in [&mut c.mgmtd_listen, &mut c.meta_listen, &mut c.storage_listen] {
            *l = "127.0.0.1:0".into();
        }
        c.metrics_base_port = 0;
    }
    Ok(Some(c))
}

/// The /metrics address of role `offset` (mgmtd 0, meta 1, storage 2, mount 3), instance `index`.
fn metrics_addr(c: &UpConfig, offset: u16, index: usize) -> String {
    match c.metrics_base_port {
        0 => "127.0.0.1:0".into(),
        p => format!("127.0.0.1:{}", p + offset * 100 + index as u16),
    }
}

/// Storage node `i` listens `i` ports above the configured one (port 0 stays 0).
fn nth_port(addr: &str, i: usize) -> String {
    match addr.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?))) {
        Some((host, port)) if port != 0 => format!("{host}:{}", port + i as u16),
        _ => addr.to_owned(),
    }
}

/// Data directory name of storage node `i`: the first keeps the single-node name.
fn storage_role(i: usize) -> String {
    if i == 0 {
        "storage".to_owned()
    } else {
        format!("storage{i}")
    }
}

async fn start_all(c: &UpConfig, roles: &mut Vec<Role>) -> anyhow::Result<()> {
    let logs = c.data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let dir = |r: &str| c.data_dir.join(r);
    let s = |p: &Path| p.display().to_string();
    let _ = std::fs::remove_file(dir("mgmtd").join("mgmtd.addr"));
    let _ = std::fs::remove_file(dir("meta").join("meta.addr"));
    for i in 0..c.storage_nodes {
        let _ = std::fs::remove_file(dir(&storage_role(i)).join("storage.addr"));
    }

    let mgmtd_dir = s(&dir("mgmtd"));
    let mut args = vec!["mgmtd".to_owned(), "--data".into(), mgmtd_dir, "--listen".into(), c.mgmtd_listen.clone()];
    args.extend(["--metrics-listen".into(), metrics_addr(c, 0, 0)]);
    if c.replicas > 1 {
        args.push("--manual-chains".into());
    }
    args.extend(["--replication-mode".into(), c.replication_mode.clone()]);
    roles.push(spawn("mgmtd", &args, &logs)?);
    let mgmtd = wait_for_file(&dir("mgmtd").join("mgmtd.addr"), roles).await?;
    pin_listen(roles, "mgmtd", &mgmtd);

    let meta_dir = s(&dir("meta"));
    let meta_args = ["--meta-durability", &c.meta_durability];
    if !c.meta_in_mount {
        let args = ["meta", "--data", &meta_dir, "--listen", &c.meta_listen, "--mgmtd", &mgmtd, "--metrics-listen", &metrics_addr(c, 1, 0)];
        roles.push(spawn("meta", &[&args[..], &meta_args].concat(), &logs)?);
    }

    for i in 0..c.storage_nodes {
        let role = storage_role(i);
        let mut args: Vec<String> = vec!["storage".into(), "--data".into(), s(&dir(&role))];
        args.extend(["--listen".into(), nth_port(&c.storage_listen, i), "--mgmtd".into(), mgmtd.clone()]);
        args.extend(["--metrics-listen".into(), metrics_addr(c, 2, i)]);
        for t in 0..c.targets {
            args.extend(["--target".into(), s(&dir(&role).join(format!("target{t}")))]);
        }
        roles.push(spawn(role, &args, &logs)?);
    }
    if !c.meta_in_mount {
        let meta = wait_for_file(&dir("meta").join("meta.addr"), roles).await?;
        pin_listen(roles, "meta", &meta);
    }
    for i in 0..c.storage_nodes {
        let role = storage_role(i);
        let addr = wait_for_file(&dir(&role).join("storage.addr"), roles).await?;
        pin_listen(roles, &role, &addr);
    }
    if c.replicas > 1 {
        build_chains(&mgmtd, c.replicas).await?;
    }

    std::fs::create_dir_all(&c.mountpoint).with_context(|| format!("creating {}", c.mountpoint.display()))?;
    let mnt = s(&c.mountpoint);
    let (mount_metrics, meta_metrics) = (metrics_addr(c, 3, 0), metrics_addr(c, 1, 0));
    let mut args = vec!["mount", &mnt, "--mgmtd", &mgmtd, "--metrics-listen", &mount_metrics];
    if c.meta_in_mount {
        args.extend(["--meta-data", &meta_dir, "--meta-listen", &c.meta_listen, "--meta-metrics-listen", &meta_metrics]);
        args.extend(meta_args);
    }
    if !c.fuse_io_uring {
        args.push("--no-io-uring");
    }
    roles.push(spawn("mount", &args, &logs)?);
    wait_for_mount(&c.mountpoint, roles).await
}

/// A restarted service keeps the address it bound first (port 0 would pick a new one, and
/// mgmtd's address is wired into every other role).
fn pin_listen(roles: &mut [Role], name: &str, addr: &str) {
    for r in roles.iter_mut().filter(|r| r.name == name) {
        if let Some(i) = r.args.iter().position(|a| a == "--listen") {
            if let Some(v) = r.args.get_mut(i + 1) {
                *v = addr.into();
            }
        }
    }
}

/// Groups targets that are in no chain yet into chains of `replicas` targets on distinct nodes:
/// targets taken node by node in turn, so any `replicas` consecutive ones are on different nodes.
async fn build_chains(mgmtd: &str, replicas: usize) -> anyhow::Result<()> {
    use ember_proto::mgmtd::{CreateChainReq, GetRoutingReq};
    let client = ember_net::RpcClient::new(mgmtd).with_timeout(Duration::from_secs(10));
    let routing = client.unary(&GetRoutingReq { known_version: 0 }).await?.routing.unwrap_or_default();
    let mut by_node: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for t in routing.targets.iter().filter(|t| t.chain_id == 0) {
        by_node.entry(t.node_id).or_default().push(t.target_id);
    }
    let mut order = Vec::new();
    for i in 0..by_node.values().map(Vec::len).max().unwrap_or(0) {
        order.extend(by_node.values().filter_map(|ts| ts.get(i).copied()));
    }
    for members in order.chunks_exact(replicas) {
        let resp = client.unary(&CreateChainReq { targets: members.to_vec() }).await?;
        tracing::info!(chain = resp.chain_id, ?members, "chain created");
    }
    Ok(())
}

fn spawn<S: AsRef<std::ffi::OsStr>>(name: impl Into<String>, args: &[S], logs: &Path) -> anyhow::Result<Role> {
    let name = name.into();
    let log_path = logs.join(format!("{name}.log"));
    let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let child = start_child(&name, &args, &log_path)?;
    Ok(Role { name, child, log: log_path, args, restarted: None })
}

fn start_child(name: &str, args: &[std::ffi::OsString], log_path: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the ember binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(exe);
    // SAFETY: prctl(2) only, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // If `up` dies without stopping its roles (SIGKILL), they get SIGTERM and stop.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Own process group: a terminal's Ctrl-C reaches only `up`, which stops roles in order.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

/// Fails early, with the role's name, if a child exits while we wait for readiness.
fn check_alive(roles: &mut [Role]) -> anyhow::Result<()> {
    for r in roles.iter_mut() {
        if let Some(status) = r.child.try_wait()? {
            bail!("{} exited during start-up ({status}); end of {}:\n{}", r.name, r.log.display(), r.log_tail());
        }
    }
    Ok(())
}

async fn wait_for_file(path: &Path, roles: &mut [Role]) -> anyhow::Result<String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return Ok(s.trim().to_owned());
            }
        }
        check_alive(roles)?;
        if Instant::now() > deadline {
            bail!("timed out waiting for {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `path` is a mount point, per the kernel's mount table.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else { return false };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = canon.to_string_lossy();
    table.lines().any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

async fn wait_for_mount(path: &Path, roles: &mut [Role]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !is_mounted(path) {
        check_alive(roles)?;
        if Instant::now() > deadline {
            bail!("timed out waiting for the mount at {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits for a stop signal or for any role to exit on its own (an error).
/// Waits for a stop signal. A service that exits is restarted (at most every few seconds), as
/// a service manager would: the cluster rides through it. The mount exiting ends everything,
/// since its users already lost it.
async fn supervise(roles: &mut [Role], mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for r in roles.iter_mut() {
                    let Some(status) = r.child.try_wait()? else { continue };
                    if r.name == "mount" {
                        return Err(anyhow!("the mount exited unexpectedly ({status}); stopping the cluster"));
                    }
                    if r.restarted.is_some_and(|t| t.elapsed() < RESTART_PACE) {
                        continue;
                    }
                    eprintln!("ember up: {} exited ({status}); restarting it", r.name);
                    r.child = start_child(&r.name, &r.args, &r.log)?;
                    r.restarted = Some(Instant::now());
                }
            }
        }
    }
}

/// Stops roles newest first (mount, storage, meta, mgmtd): SIGTERM, then SIGKILL if stuck.
async fn stop_all(roles: &mut Vec<Role>) {
    while let Some(mut r) = roles.pop() {
        if let Some(pid) = r.child.id() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP_TIMEOUT, r.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("ember up: {} did not stop in {STOP_TIMEOUT:?}; killing it", r.name);
                let _ = r.child.kill().await;
            }
        }
    }
}
