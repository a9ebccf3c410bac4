//! The deterministic simulation as tests: many seeds (`EMBER_SIM_SEEDS`, starting at
//! `EMBER_SIM_FIRST_SEED`), one seed replayed with its fault log (`EMBER_SIM_SEED`,
//! `EMBER_SIM_MODE=chain` for chain mode, and `RUST_LOG=info` for every node's log), and the
//! proof that a seed replays exactly.

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
fn fan_out_chains_hold_every_invariant_under_faults() {
    assert_seeds_pass(&SimConfig::default(), 1000);
}

#[test]
fn chain_mode_holds_every_invariant_under_faults() {
    assert_seeds_pass(&SimConfig { mode: ReplicationMode::Chain, ..SimConfig::default() }, 500);
}

/// The same seeds, run in another order on another thread, give the same runs: nothing
/// outside the seed (hash orders, ids, leftovers of earlier runs) decides what happens.
#[test]
fn seeds_replay_exactly() {
    let config = SimConfig::default();
    let first = env_u64("EMBER_SIM_SEED", 7);
    let seeds: Vec<u64> = (first..first + 4).collect();
    let run = |order: Vec<u64>| {
        let config = config.clone();
        std::thread::spawn(move || {
            let mut reports: Vec<_> = order.iter().map(|s| run_seed(*s, &config).unwrap_or_else(|f| panic!("{f}"))).collect();
            reports.sort_by_key(|r| r.seed);
            reports
        })
        .join()
        .unwrap()
    };
    let forward = run(seeds.clone());
    let backward = run(seeds.iter().rev().copied().collect());
    assert!(forward.iter().all(|r| !r.faults.is_empty()), "a seed injected no fault");
    for (f, b) in forward.iter().zip(&backward) {
        assert!(
            f == b,
            "seed {} ran differently: {} vs {} operations, {:?} vs {:?} simulated\nfaults {:#?}\nvs {:#?}",
            f.seed,
            f.operations,
            b.operations,
            f.elapsed,
            b.elapsed,
            f.faults,
            b.faults
        );
    }
}

#[test]
fn one_seed() {
    let seed = env_u64("EMBER_SIM_SEED", 1);
    if std::env::var_os("RUST_LOG").is_some() {
        ember_telemetry::init_logging("warn");
    }
    let mode = if std::env::var("EMBER_SIM_MODE").as_deref() == Ok("chain") { ReplicationMode::Chain } else { ReplicationMode::FanOut };
    match run_seed(seed, &SimConfig { mode, ..SimConfig::default() }) {
        Ok(r) => eprintln!("seed {seed}: {} operations in {:?} simulated; faults: {:#?}\n{}", r.operations, r.elapsed, r.faults, r.history),
        Err(f) => panic!("{f}"),
    }
}
