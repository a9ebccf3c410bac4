//! Deterministic simulation of Ember's replicated storage.
//!
//! The real mgmtd, storage node and client code runs on turmoil's simulated hosts, network
//! and clock, in one thread: every message latency, crash, partition and persistence-point
//! failure comes from one seed, so a failing seed replays exactly. Engines are the real chunk
//! engine on files (tmpfs when there is one); a crash drops the node's tasks and memory and
//! keeps its files, like `kill -9`. The invariants checked after every run are listed in
//! [`check`].

pub mod check;
pub mod faults;
pub mod hosts;
pub mod workload;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_kv::{MemKv, TxnKv};
use ember_types::ReplicationMode;

use crate::faults::{lock, Faults};
use crate::hosts::{storage_host, Engines, MGMTD};
use crate::workload::{Outcome, Workload};

/// One run's settings; everything else follows from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub storage_nodes: usize,
    pub register_workers: u64,
    /// How long the workload runs (simulated), with faults throughout.
    pub run_for: Duration,
    pub crash_point_chance: f64,
    pub mode: ReplicationMode,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            storage_nodes: 3,
            register_workers: 3,
            run_for: Duration::from_secs(6),
            crash_point_chance: 0.002,
            mode: ReplicationMode::FanOut,
        }
    }
}

/// What a run did; equal for equal seeds.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    pub operations: usize,
    pub faults: Vec<String>,
    /// Simulated time the run took.
    pub elapsed: Duration,
    /// A digest of the history (values and simulated times) and of the final replicas.
    pub fingerprint: u64,
    /// The register's history, one operation a line.
    pub history: String,
}

/// A seed whose run broke an invariant, with everything needed to read what happened.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub mode: ReplicationMode,
    pub what: String,
    pub faults: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} failed: {}", self.seed, self.what)?;
        writeln!(f, "faults injected:")?;
        for line in &self.faults {
            writeln!(f, "  {line}")?;
        }
        let mode = if self.mode == ReplicationMode::Chain { "EMBER_SIM_MODE=chain " } else { "" };
        write!(f, "replay with EMBER_SIM_SEED={} {mode}cargo test -p ember-sim --test simulation one_seed -- --nocapture", self.seed)
    }
}

/// Runs the cluster for one seed and checks the invariants.
pub fn run_seed(seed: u64, config: &SimConfig) -> Result<Report, Failure> {
    let dir = scratch_dir().map_err(|e| Failure { seed, mode: config.mode, what: format!("no scratch directory: {e}"), faults: Vec::new() })?;
    ember_net::run_blocking_inline_on_this_thread();
    let faults = Arc::new(Mutex::new(Faults::new(seed, config.storage_nodes, config.crash_point_chance)));
    let engines: Engines = Arc::new(Mutex::new(vec![None; config.storage_nodes]));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let fail = |what: String, faults: &Arc<Mutex<Faults>>| Failure { seed, mode: config.mode, what, faults: lock(faults).log.clone() };

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(120))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(3))
        .build();
    let kv: Arc<dyn TxnKv> = Arc::new(MemKv::new());
    let mode = config.mode;
    sim.host(MGMTD, move || hosts::run_mgmtd(kv.clone(), mode));
    for i in 0..config.storage_nodes {
        let (d, f, e) = (dir.path().join(storage_host(i)), faults.clone(), engines.clone());
        sim.host(storage_host(i), move || hosts::run_storage(i, d.clone(), f.clone(), e.clone()));
    }
    let workload = Workload { seed, workers: config.register_workers, run_for: config.run_for, nodes: config.storage_nodes };
    sim.client("client", workload.run(faults.clone(), outcome.clone()));

    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {
                let now = sim.elapsed();
                lock(&faults).drive(&mut sim, &engines, now);
            }
            Err(e) => return Err(fail(format!("the simulation stopped: {e}"), &faults)),
        }
    }
    let elapsed = sim.elapsed();
    let outcome = std::mem::take(&mut *lock(&outcome));
    let engines: Vec<_> = lock(&engines).iter().flatten().cloned().collect();
    let fingerprint = check::all(&outcome, &engines).map_err(|what| fail(what, &faults))?;
    let history = check::describe(&outcome.history);
    let report = Report { seed, operations: outcome.history.len(), faults: lock(&faults).log.clone(), elapsed, fingerprint, history };
    drop(sim);
    Ok(report)
}

/// Engines fsync on every write; on tmpfs that costs nothing, which thousands of seeds need.
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    tempfile::Builder::new().prefix("ember-sim-").tempdir_in(base).or_else(|_| tempfile::tempdir())
}
