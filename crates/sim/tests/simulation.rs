//! The deterministic simulation as tests: many seeds (`EMBER_SIM_SEEDS`, starting at
//! `EMBER_SIM_FIRST_SEED`), one seed replayed with its fault log (`EMBER_SIM_SEED`, and
//! `RUST_LOG=info` for every node's log), and the proof that a seed replays exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ember_sim::{run_seed, SimConfig};
use ember_types::ReplicationMode;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `count` seeds from `first` on every core; returns the failures, lowest seed first.
fn run_many(first: u64, count: u64, config: &SimConfig) -> (u64, Vec<String>) {
    let next = Arc::new(AtomicU64::new(first));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let operations = Arc::new(AtomicU64::new(0));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    return;
                }
                match run_seed(seed, config) {
                    Ok(r) => {
                        operations.fetch_add(r.operations as u64, Ordering::Relaxed);
                    }
                    Err(f) => failures.lock().unwrap().push((seed, f.to_string())),
                }
            });
        }
    });
    let mut failures = std::mem::take(&mut *failures.lock().unwrap());
    failures.sort();
    (operations.load(Ordering::Relaxed), failures.into_iter().map(|(_, f)| f).collect())
}

fn assert_seeds_pass(config: &SimConfig, default_count: u64) {
    let first = env_u64("EMBER_SIM_FIRST_SEED", 0);
    let count = env_u64("EMBER_SIM_SEEDS", default_count);
    let (operations, failures) = run_many(first, count, config);
    eprintln!("{count} seeds from {first}: {operations} checked operations, {} failed", failures.len());
    if let Some(f) = failures.first() {
        panic!("{} of {count} seeds failed; the first:\n{f}", failures.len());
    }
}

#[test]
#[ignore = "retried writes can apply twice until request ids land (seed 9)"]
fn fan_out_chains_hold_every_invariant_under_faults() {
    assert_seeds_pass(&SimConfig::default(), 300);
}

#[test]
#[ignore = "retried writes can apply twice until request ids land (seed 9)"]
fn chain_mode_holds_every_invariant_under_faults() {
    assert_seeds_pass(&SimConfig { mode: ReplicationMode::Chain, ..SimConfig::default() }, 100);
}

#[test]
fn a_seed_replays_exactly() {
    let config = SimConfig::default();
    let seed = env_u64("EMBER_SIM_SEED", 7);
    let first = run_seed(seed, &config).unwrap_or_else(|f| panic!("{f}"));
    let second = run_seed(seed, &config).unwrap_or_else(|f| panic!("{f}"));
    assert!(!first.faults.is_empty(), "the seed injected no fault");
    assert_eq!(first, second, "seed {seed} ran differently twice");
}

#[test]
fn one_seed() {
    let seed = env_u64("EMBER_SIM_SEED", 1);
    if std::env::var_os("RUST_LOG").is_some() {
        ember_telemetry::init_logging("warn");
    }
    match run_seed(seed, &SimConfig::default()) {
        Ok(r) => eprintln!("seed {seed}: {} operations in {:?} simulated; faults: {:#?}", r.operations, r.elapsed, r.faults),
        Err(f) => panic!("{f}"),
    }
}
