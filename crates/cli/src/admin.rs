//! `ember admin`: operator commands against a running cluster.

use std::time::Duration;

use clap::{Args, Subcommand};
use ember_net::RpcClient;
use ember_proto::mgmtd::{CreateChainReq, GetRoutingReq, ListClientSessionsReq, OfflineTargetReq, RoutingInfo};
use ember_types::{LocalState, NodeKind, TargetState};
use serde::Serialize;

use crate::{Failure, EXIT_UNREACHABLE};

#[derive(Args, Clone, Debug)]
pub struct AdminArgs {
    /// Address of mgmtd.
    #[arg(long, global = true, default_value = "127.0.0.1:9000", env = "EMBER_MGMTD")]
    pub mgmtd: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum AdminCommand {
    /// Nodes, targets, chains and client sessions with their states.
    Status,
    /// Registered nodes and whether they are alive.
    Nodes,
    /// Storage targets with their public and local states and space.
    Targets,
    /// Chains with their versions and members (primary first).
    Chains,
    /// Build a chain from targets that are in no chain yet (comma-separated ids).
    CreateChain {
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<u32>,
    },
    /// Take a target out of service; it syncs before it serves again.
    OfflineTarget {
        /// Target id.
        target: u32,
    },
    /// Write load straight to storage through the client library; prints latency percentiles
    /// and throughput. Creates a hidden file in the root and removes it afterwards.
    Bench(crate::bench::BenchArgs),
}

#[derive(Serialize)]
struct StatusReport {
    routing_version: u64,
    nodes: Vec<NodeRow>,
    targets: Vec<TargetRow>,
    chains: Vec<ChainRow>,
    clients: Vec<ClientRow>,
}

#[derive(Serialize)]
struct NodeRow {
    id: u32,
    kind: &'static str,
    address: String,
    hostname: String,
    alive: bool,
    last_heartbeat_ms: u64,
}

#[derive(Serialize)]
struct TargetRow {
    id: u32,
    node: u32,
    chain: u32,
    state: &'static str,
    local_state: &'static str,
    used_bytes: u64,
    capacity_bytes: u64,
    chunks: u64,
}

#[derive(Serialize)]
struct ChainRow {
    id: u32,
    version: u64,
    targets: Vec<u32>,
}

#[derive(Serialize)]
struct ClientRow {
    id: String,
    description: String,
    last_seen_ms: u64,
}

/// Which parts of the cluster report a listing command prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    All,
    Nodes,
    Targets,
    Chains,
}

pub async fn run(args: AdminArgs) -> Result<(), Failure> {
    let client = RpcClient::new(&args.mgmtd).with_timeout(Duration::from_secs(5));
    let mgmtd = args.mgmtd.as_str();
    match args.command {
        AdminCommand::Status => show(&client, mgmtd, Section::All, args.json).await,
        AdminCommand::Nodes => show(&client, mgmtd, Section::Nodes, args.json).await,
        AdminCommand::Targets => show(&client, mgmtd, Section::Targets, args.json).await,
        AdminCommand::Chains => show(&client, mgmtd, Section::Chains, args.json).await,
        AdminCommand::CreateChain { targets } => {
            let resp = client.unary(&CreateChainReq { targets }).await.map_err(|e| rpc_failure(mgmtd, e))?;
            print_result(args.json, "chain_id", resp.chain_id, &format!("created chain {}", resp.chain_id))
        }
        AdminCommand::Bench(b) => crate::bench::run(mgmtd, b, args.json).await,
        AdminCommand::OfflineTarget { target } => {
            client.unary(&OfflineTargetReq { target_id: target, chain_version: 0 }).await.map_err(|e| rpc_failure(mgmtd, e))?;
            print_result(args.json, "offline_target", target, &format!("target {target} is offline"))
        }
    }
}

/// Unreachable mgmtd has its own exit code; a refused request is an ordinary failure.
fn rpc_failure(mgmtd: &str, e: ember_types::Status) -> Failure {
    use ember_types::StatusCode as C;
    match e.code {
        C::Unavailable | C::ConnectionClosed | C::Timeout => Failure {
            code: EXIT_UNREACHABLE,
            error: anyhow::anyhow!("cannot reach mgmtd at {mgmtd}: {e}"),
        },
        _ => Failure { code: crate::EXIT_FAILED, error: anyhow::anyhow!("mgmtd refused: {}", e.message) },
    }
}

fn print_result(json: bool, key: &str, value: u32, text: &str) -> Result<(), Failure> {
    if json {
        println!("{}", serde_json::json!({ key: value }));
    } else {
        println!("{text}");
    }
    Ok(())
}

async fn show(client: &RpcClient, mgmtd: &str, section: Section, json: bool) -> Result<(), Failure> {
    let routing = client.unary(&GetRoutingReq { known_version: 0 }).await.map_err(|e| rpc_failure(mgmtd, e))?;
    let sessions = client.unary(&ListClientSessionsReq {}).await.map_err(|e| rpc_failure(mgmtd, e))?;
    let info = routing.routing.unwrap_or_default();
    let mut report = report_of(&info);
    report.clients = sessions
        .sessions
        .into_iter()
        .map(|s| ClientRow { id: format!("{:016x}", s.client_id), description: s.description, last_seen_ms: s.last_extended_ms })
        .collect();
    let text = if json {
        let value = serde_json::to_value(&report)?;
        let part = match section {
            Section::All => value,
            Section::Nodes => value["nodes"].clone(),
            Section::Targets => value["targets"].clone(),
            Section::Chains => value["chains"].clone(),
        };
        serde_json::to_string_pretty(&part)?
    } else {
        render_tables(&report, section)
    };
    println!("{text}");
    Ok(())
}

fn report_of(info: &RoutingInfo) -> StatusReport {
    let nodes = info
        .nodes
        .iter()
        .map(|n| NodeRow {
            id: n.node_id,
            kind: NodeKind::from_u8(n.kind as u8).map_or("unknown", NodeKind::name),
            address: n.address.clone(),
            hostname: n.hostname.clone(),
            alive: n.alive,
            last_heartbeat_ms: n.last_heartbeat_ms,
        })
        .collect();
    let targets = info
        .targets
        .iter()
        .map(|t| TargetRow {
            id: t.target_id,
            node: t.node_id,
            chain: t.chain_id,
            state: TargetState::from_u8(t.state as u8).map_or("unknown", TargetState::name),
            local_state: LocalState::from_u8(t.local_state as u8).map_or("-", LocalState::name),
            used_bytes: t.used_bytes,
            capacity_bytes: t.capacity_bytes,
            chunks: t.chunks,
        })
        .collect();
    let chains = info
        .chains
        .iter()
        .map(|c| ChainRow { id: c.chain_id, version: c.version, targets: c.targets.clone() })
        .collect();
    StatusReport { routing_version: info.version, nodes, targets, chains, clients: Vec::new() }
}

fn render_tables(r: &StatusReport, section: Section) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let all = section == Section::All;
    if all {
        let _ = writeln!(o, "routing version {}\n", r.routing_version);
    }
    if all || section == Section::Nodes {
        let _ = writeln!(o, "NODES\n{:>4}  {:<8} {:<22} {:<6} {:>12}", "ID", "KIND", "ADDRESS", "ALIVE", "HEARTBEAT");
        for n in &r.nodes {
            let alive = if n.alive { "yes" } else { "NO" };
            let _ = writeln!(o, "{:>4}  {:<8} {:<22} {:<6} {:>10}ms", n.id, n.kind, n.address, alive, n.last_heartbeat_ms);
        }
    }
    if all || section == Section::Targets {
        let _ = writeln!(
            o,
            "{}TARGETS\n{:>4}  {:>4} {:>5}  {:<8} {:<9} {:>12} {:>12} {:>8}",
            if all { "\n" } else { "" },
            "ID",
            "NODE",
            "CHAIN",
            "STATE",
            "LOCAL",
            "USED",
            "CAPACITY",
            "CHUNKS"
        );
        for t in &r.targets {
            let (used, cap) = (human(t.used_bytes), human(t.capacity_bytes));
            let _ = writeln!(
                o,
                "{:>4}  {:>4} {:>5}  {:<8} {:<9} {used:>12} {cap:>12} {:>8}",
                t.id, t.node, t.chain, t.state, t.local_state, t.chunks
            );
        }
    }
    if all || section == Section::Chains {
        let _ = writeln!(o, "{}CHAINS\n{:>4}  {:>7}  TARGETS (primary first)", if all { "\n" } else { "" }, "ID", "VERSION");
        for c in &r.chains {
            let targets: Vec<String> = c.targets.iter().map(u32::to_string).collect();
            let _ = writeln!(o, "{:>4}  {:>7}  {}", c.id, c.version, targets.join(","));
        }
    }
    if all {
        let _ = writeln!(o, "\nCLIENTS\n{:<18} {:>10}  DESCRIPTION", "ID", "LAST SEEN");
        for c in &r.clients {
            let _ = writeln!(o, "{:<18} {:>8}ms  {}", c.id, c.last_seen_ms, c.description);
        }
    }
    o.trim_end().to_owned()
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
