//! The simulated client: the real `EmberClient` builds a chain of every storage target, then
//! workers read, write and truncate one 4 KiB block (the register whose history is checked
//! for linearizability) while another writes and truncates a second file across several
//! chunks, which must end as a model of its operations says. Two more race on a third file,
//! one writing and one truncating it: no model says what it holds, but its replicas must end
//! identical like every other chunk's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ember_client::{ClientConfig, EmberClient};
use ember_proto::mgmtd::CreateChainReq;
use ember_proto::routing::RoutingTable;
use ember_testkit::linearizable::{Op, OpKind};
use ember_types::{ChainId, InodeId, Layout, TargetState};
use tokio::time::Instant;

use crate::faults::{lock, Faults, Phase, Rng};
use crate::hosts::{mgmtd_addr, sim_dialer};

pub const REGISTER: InodeId = InodeId(1000);
pub const BULK: InodeId = InodeId(1001);
pub const RACE: InodeId = InodeId(1002);
pub const CHUNK_SIZE: u32 = 64 * 1024;
const BLOCK: usize = 4096;
const BULK_SPAN: u64 = 4 * CHUNK_SIZE as u64;

/// What the client saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub history: Vec<Op<Instant>>,
    /// Operations that returned an error although at most one node was faulty.
    pub errors: Vec<String>,
    /// (routing version, chain version) at every routing change the client saw.
    pub versions: Vec<(u64, u64)>,
    /// Acknowledged writes of the register (truncates excluded: one of a missing chunk is no
    /// new version).
    pub acked_register_writes: u64,
    pub chain: u32,
}

pub struct Workload {
    pub seed: u64,
    pub workers: u64,
    pub run_for: Duration,
    pub nodes: usize,
}

impl Workload {
    pub async fn run(self, faults: Arc<Mutex<Faults>>, out: Arc<Mutex<Outcome>>) -> turmoil::Result {
        let mut config = ClientConfig::new(mgmtd_addr());
        config.dialer = sim_dialer();
        config.rpc_timeout = Duration::from_secs(3);
        config.retry_for = Duration::from_secs(30);
        config.client_id = Some(100);
        let client = connect(config.clone()).await;
        let chain = self.create_chain(&client).await?;
        lock(&out).chain = chain.0;
        let layout = Layout::new(CHUNK_SIZE, vec![chain])?;
        lock(&faults).phase = Phase::Running;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        // Every worker is a client of its own, like separate mounts.
        for id in 1..=self.workers {
            let c = connect(ClientConfig { client_id: Some(id), ..config.clone() }).await;
            let w = register_worker(c, layout.clone(), id, Rng::new(self.seed ^ id), stop.clone(), out.clone());
            tasks.push(tokio::spawn(w));
        }
        let c = connect(ClientConfig { client_id: Some(self.workers + 1), ..config.clone() }).await;
        let bulk = tokio::spawn(bulk_writer(c, layout.clone(), Rng::new(!self.seed), stop.clone(), out.clone()));
        for (k, truncates) in [(2, false), (3, true)] {
            let c = connect(ClientConfig { client_id: Some(self.workers + k), ..config.clone() }).await;
            let w = racer(c, layout.clone(), truncates, Rng::new(self.seed.rotate_left(k as u32)), stop.clone(), out.clone());
            tasks.push(tokio::spawn(w));
        }
        tasks.push(tokio::spawn(watch_versions(client.clone(), chain, stop.clone(), out.clone())));
        tokio::time::sleep(self.run_for).await;
        lock(&faults).phase = Phase::Settling;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        let model = bulk.await?;
        wait_all_serving(&client, chain, self.nodes).await;
        // The final reads: every acknowledged write must be visible through them.
        register_op(&client, &layout, None, &out).await;
        check_bulk(&client, &layout, &model, &out).await;
        Ok(())
    }

    async fn create_chain(&self, client: &Arc<EmberClient>) -> turmoil::Result<ChainId> {
        let targets = loop {
            let table = client.routing().refresh().await.unwrap_or_else(|_| client.routing().get());
            let ids: Vec<u32> = table.info.targets.iter().map(|t| t.target_id).collect();
            if ids.len() == self.nodes {
                break ids;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let resp = client.routing().mgmtd().unary(&CreateChainReq { targets }).await?;
        let chain = ChainId(resp.chain_id);
        wait_all_serving(client, chain, self.nodes).await;
        Ok(chain)
    }
}

async fn connect(config: ClientConfig) -> Arc<EmberClient> {
    loop {
        match EmberClient::connect(config.clone()).await {
            Ok(c) => return c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn serving(table: &RoutingTable, chain: ChainId) -> usize {
    let Some(c) = table.chain(chain) else { return 0 };
    c.targets
        .iter()
        .filter(|t| table.target(ember_types::TargetId(**t)).is_some_and(|i| TargetState::from_u8(i.state as u8) == Some(TargetState::Serving)))
        .count()
}

async fn wait_all_serving(client: &Arc<EmberClient>, chain: ChainId, nodes: usize) {
    loop {
        let table = client.routing().refresh().await.unwrap_or_else(|_| client.routing().get());
        if serving(&table, chain) == nodes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A register value fills the block's first 16 bytes with v and !v, so a torn block shows.
fn block_of(v: u64) -> Bytes {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(&v.to_le_bytes());
    b[8..16].copy_from_slice(&(!v).to_le_bytes());
    Bytes::from(b)
}

fn value_of(block: &[u8]) -> Result<u64, String> {
    if block.len() < 16 {
        return if block.iter().all(|b| *b == 0) { Ok(0) } else { Err(format!("short register block of {} bytes", block.len())) };
    }
    let v = u64::from_le_bytes(block[..8].try_into().unwrap_or_default());
    let check = u64::from_le_bytes(block[8..16].try_into().unwrap_or_default());
    if (v == 0 && check == 0) || check == !v {
        Ok(v)
    } else {
        Err(format!("torn register block: {v:#x} / {check:#x}"))
    }
}

/// One read (`write == None`) or write of the register, recorded in the history. A write
/// that failed may still have taken effect: it stays pending forever in the history.
async fn register_op(client: &Arc<EmberClient>, layout: &Layout, write: Option<u64>, out: &Arc<Mutex<Outcome>>) {
    let invoked = Instant::now();
    let result = match write {
        // Truncating the register to nothing writes 0: it reads as zeros.
        Some(0) => client.truncate_chunks(REGISTER, layout, 0).await.map(|_| OpKind::Write(0)).map_err(|e| e.to_string()),
        Some(v) => client.write(REGISTER, layout, 0, block_of(v)).await.map(|_| OpKind::Write(v)).map_err(|e| e.to_string()),
        None => match client.read(REGISTER, layout, 0, BLOCK).await {
            Ok(data) => value_of(&data).map(OpKind::Read),
            Err(e) => Err(e.to_string()),
        },
    };
    let mut out = lock(out);
    match result {
        Ok(kind) => {
            if matches!(kind, OpKind::Write(v) if v != 0) {
                out.acked_register_writes += 1;
            }
            out.history.push(Op { invoked, returned: Instant::now(), kind });
        }
        Err(e) => {
            out.errors.push(format!("register {}: {e}", if write.is_some() { "write" } else { "read" }));
            if let Some(v) = write {
                out.history.push(Op { invoked, returned: invoked + Duration::from_secs(86_400), kind: OpKind::Write(v) });
            }
        }
    }
}

async fn register_worker(client: Arc<EmberClient>, layout: Layout, id: u64, mut rng: Rng, stop: Arc<AtomicBool>, out: Arc<Mutex<Outcome>>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let write = match rng.below(20) {
            0 => Some(0),
            1..10 => Some(id * 1_000_000 + n),
            _ => None,
        };
        register_op(&client, &layout, write, &out).await;
        tokio::time::sleep(rng.millis(0, 20)).await;
    }
}

/// Writes of 1 B to 64 KiB anywhere in four chunks, and now and then a truncate: the data
/// the final comparison of the replicas looks at. One writer, one operation at a time, so
/// the file must end as the model says; returns the model.
async fn bulk_writer(client: Arc<EmberClient>, layout: Layout, mut rng: Rng, stop: Arc<AtomicBool>, out: Arc<Mutex<Outcome>>) -> Vec<u8> {
    let mut model = vec![0u8; BULK_SPAN as usize];
    while !stop.load(Ordering::Relaxed) {
        let result = if rng.chance(0.05) {
            let len = rng.below(BULK_SPAN);
            let done = client.truncate_chunks(BULK, &layout, len).await;
            done.map(|_| model[len as usize..].fill(0)).map_err(|e| format!("bulk truncate to {len}: {e}"))
        } else {
            let len = 1 + rng.below(64 * 1024) as usize;
            let offset = rng.below(BULK_SPAN - len as u64) as usize;
            let data = vec![(rng.below(255) + 1) as u8; len];
            let done = client.write(BULK, &layout, offset as u64, Bytes::from(data.clone())).await;
            done.map(|_| model[offset..offset + len].copy_from_slice(&data)).map_err(|e| format!("bulk write of {len} at {offset}: {e}"))
        };
        if let Err(e) = result {
            // The outcome is unknown: the model can no longer say what the file holds.
            lock(&out).errors.push(e);
            break;
        }
        tokio::time::sleep(rng.millis(0, 30)).await;
    }
    model
}

/// Writes to, or truncates, the raced file (several chunks) until stopped.
async fn racer(client: Arc<EmberClient>, layout: Layout, truncates: bool, mut rng: Rng, stop: Arc<AtomicBool>, out: Arc<Mutex<Outcome>>) {
    while !stop.load(Ordering::Relaxed) {
        let result = if truncates {
            let len = rng.below(BULK_SPAN);
            client.truncate_chunks(RACE, &layout, len).await.map_err(|e| format!("raced truncate to {len}: {e}"))
        } else {
            let len = 1 + rng.below(16 * 1024) as usize;
            let offset = rng.below(BULK_SPAN - len as u64);
            let data = Bytes::from(vec![(rng.below(255) + 1) as u8; len]);
            client.write(RACE, &layout, offset, data).await.map_err(|e| format!("raced write of {len} at {offset}: {e}"))
        };
        if let Err(e) = result {
            lock(&out).errors.push(e);
            break;
        }
        tokio::time::sleep(rng.millis(0, 30)).await;
    }
}

/// The bulk file read back after the faults must be what its one writer made of it.
async fn check_bulk(client: &Arc<EmberClient>, layout: &Layout, model: &[u8], out: &Arc<Mutex<Outcome>>) {
    match client.read(BULK, layout, 0, model.len()).await {
        Ok(data) => {
            if let Some(at) = data.iter().zip(model).position(|(a, b)| a != b) {
                lock(out).errors.push(format!("bulk file differs from its model at byte {at}: {} instead of {}", data[at], model[at]));
            }
        }
        Err(e) => lock(out).errors.push(format!("final read of the bulk file: {e}")),
    }
}

async fn watch_versions(client: Arc<EmberClient>, chain: ChainId, stop: Arc<AtomicBool>, out: Arc<Mutex<Outcome>>) {
    while !stop.load(Ordering::Relaxed) {
        let table = client.routing().get();
        let seen = (table.version(), table.chain(chain).map_or(0, |c| c.version));
        {
            let mut out = lock(&out);
            if out.versions.last() != Some(&seen) {
                out.versions.push(seen);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
