//! `ember admin`: operator commands against a running cluster.

use std::time::Duration;

use clap::{Args, Subcommand};
use ember_net::RpcClient;
use ember_proto::mgmtd::{GetRoutingReq, ListClientSessionsReq, RoutingInfo};
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

pub async fn run(args: AdminArgs) -> Result<(), Failure> {
    match args.command {
        AdminCommand::Status => status(&args.mgmtd, args.json).await,
    }
}

async fn status(mgmtd: &str, json: bool) -> Result<(), Failure> {
    let client = RpcClient::new(mgmtd).with_timeout(Duration::from_secs(5));
    let unreachable = |e: ember_types::Status| Failure {
        code: EXIT_UNREACHABLE,
        error: anyhow::anyhow!("cannot reach mgmtd at {mgmtd}: {e}"),
    };
    let routing = client.unary(&GetRoutingReq { known_version: 0 }).await.map_err(unreachable)?;
    let sessions = client.unary(&ListClientSessionsReq {}).await.map_err(unreachable)?;
    let info = routing.routing.unwrap_or_default();
    let mut report = report_of(&info);
    report.clients = sessions
        .sessions
        .into_iter()
        .map(|s| ClientRow { id: format!("{:016x}", s.client_id), description: s.description, last_seen_ms: s.last_extended_ms })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&report);
    }
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

fn print_tables(r: &StatusReport) {
    println!("routing version {}", r.routing_version);
    println!("\nNODES\n{:>4}  {:<8} {:<22} {:<6} {:>12}", "ID", "KIND", "ADDRESS", "ALIVE", "HEARTBEAT");
    for n in &r.nodes {
        let alive = if n.alive { "yes" } else { "NO" };
        println!("{:>4}  {:<8} {:<22} {:<6} {:>10}ms", n.id, n.kind, n.address, alive, n.last_heartbeat_ms);
    }
    println!(
        "\nTARGETS\n{:>4}  {:>4} {:>5}  {:<8} {:<9} {:>12} {:>12} {:>8}",
        "ID", "NODE", "CHAIN", "STATE", "LOCAL", "USED", "CAPACITY", "CHUNKS"
    );
    for t in &r.targets {
        println!(
            "{:>4}  {:>4} {:>5}  {:<8} {:<9} {:>12} {:>12} {:>8}",
            t.id,
            t.node,
            t.chain,
            t.state,
            t.local_state,
            human(t.used_bytes),
            human(t.capacity_bytes),
            t.chunks
        );
    }
    println!("\nCHAINS\n{:>4}  {:>7}  TARGETS", "ID", "VERSION");
    for c in &r.chains {
        let targets: Vec<String> = c.targets.iter().map(u32::to_string).collect();
        println!("{:>4}  {:>7}  {}", c.id, c.version, targets.join(","));
    }
    println!("\nCLIENTS\n{:<18} {:>10}  DESCRIPTION", "ID", "LAST SEEN");
    for c in &r.clients {
        println!("{:<18} {:>8}ms  {}", c.id, c.last_seen_ms, c.description);
    }
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
