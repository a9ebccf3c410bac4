//! The deterministic simulation as tests: many seeds (`EMBER_SIM_SEEDS`, starting at
//! `EMBER_SIM_FIRST_SEED`), one seed replayed with its fault log (`EMBER_SIM_SEED`,
//! `EMBER_SIM_MODE=chain` for chain mode, `EMBER_SIM_HISTORY=1` for the register's history,
//! `RUST_LOG=info` for every node's log), and the proof that a seed replays exactly.
//!
//! Every seed runs in a fresh process of this test binary (the `one_seed` test): tokio numbers
//! its tasks process-wide, and the order in which a crashed node's tasks are dropped, which
//! decides the order of the messages its closing sockets send, follows those numbers. In a
//! process that ran other simulations before, a run can therefore shift by a tick; in a fresh
//! one it replays exactly.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ember_sim::{run_seed, SimConfig};
use ember_types::ReplicationMode;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn mode_name(mode: ReplicationMode) -> &'static str {
    if mode == ReplicationMode::Chain {
        "chain"
    } else {
        "fan-out"
    }
}

/// Runs one seed in a fresh process; its summary line, or what the failure said.
fn run_in_child(seed: u64, mode: ReplicationMode) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["one_seed", "--exact", "--nocapture", "--test-threads", "1"])
        .env("EMBER_SIM_SEED", seed.to_string())
        .env("EMBER_SIM_MODE", mode_name(mode))
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .env_remove("EMBER_SIM_HISTORY")
        .output()
        .map_err(|e| format!("cannot start a simulation process: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr.lines().find(|l| l.starts_with(&format!("seed {seed}: ")));
    match (out.status.success(), summary) {
        (true, Some(line)) => Ok(line.to_owned()),
        _ => Err(stderr.lines().filter(|l| !l.starts_with("note:")).collect::<Vec<_>>().join("\n")),
    }
}

/// Runs `count` seeds from `first`, `EMBER_SIM_THREADS` (default: every core) processes at a
/// time; returns the failures, lowest seed first.
fn run_many(first: u64, count: u64, mode: ReplicationMode) -> Vec<String> {
    let next = AtomicU64::new(first);
    let failures = Mutex::new(Vec::new());
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    std::thread::scope(|s| {
        for _ in 0..env_u64("EMBER_SIM_THREADS", cores) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    return;
                }
                if let Err(f) = run_in_child(seed, mode) {
                    failures.lock().unwrap().push((seed, f));
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    failures.into_iter().map(|(_, f)| f).collect()
}

fn assert_seeds_pass(mode: ReplicationMode, default_count: u64) {
    let first = env_u64("EMBER_SIM_FIRST_SEED", 0);
    let count = env_u64("EMBER_SIM_SEEDS", default_count);
    let failures = run_many(first, count, mode);
    eprintln!("{} mode, {count} seeds from {first}: {} failed", mode_name(mode), failures.len());
    if let Some(f) = failures.first() {
        panic!("{} of {count} seeds failed; the first:\n{f}", failures.len());
    }
}

#[test]
fn fan_out_chains_hold_every_invariant_under_faults() {
    assert_seeds_pass(ReplicationMode::FanOut, 1000);
}

#[test]
fn chain_mode_holds_every_invariant_under_faults() {
    assert_seeds_pass(ReplicationMode::Chain, 500);
}

/// A seed run twice, each time in a fresh process, gives the same run: same faults, same
/// history with the same simulated times, same final replicas.
#[test]
fn seeds_replay_exactly() {
    let first = env_u64("EMBER_SIM_SEED", 7);
    for seed in first..first + 4 {
        let once = run_in_child(seed, ReplicationMode::FanOut).unwrap_or_else(|f| panic!("{f}"));
        let twice = run_in_child(seed, ReplicationMode::FanOut).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(once, twice, "seed {seed} ran differently");
    }
}

/// One seed in this process: what the other tests run in child processes, and how a failing
/// seed is replayed.
#[test]
fn one_seed() {
    let seed = env_u64("EMBER_SIM_SEED", 1);
    if std::env::var_os("RUST_LOG").is_some() {
        ember_telemetry::init_logging("warn");
    }
    let mode = if std::env::var("EMBER_SIM_MODE").as_deref() == Ok("chain") { ReplicationMode::Chain } else { ReplicationMode::FanOut };
    let report = run_seed(seed, &SimConfig { mode, ..SimConfig::default() }).unwrap_or_else(|f| panic!("{f}"));
    if std::env::var_os("EMBER_SIM_HISTORY").is_some() {
        eprintln!("faults: {:#?}\n{}", report.faults, report.history);
    }
    assert!(!report.faults.is_empty(), "seed {seed} injected no fault");
    eprintln!(
        "seed {seed}: {} operations, {} faults, {:?} simulated, fingerprint {:016x}",
        report.operations,
        report.faults.len(),
        report.elapsed,
        report.fingerprint
    );
}
