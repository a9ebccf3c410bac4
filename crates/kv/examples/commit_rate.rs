//! Sync commit throughput of the fjall backend: `threads` writers, each committing small
//! transactions back to back for `secs` seconds in a fresh database under `dir`.
//!
//!   cargo run --release -p ember-kv --example commit_rate -- DIR THREADS SECS
//!
//! Prints one line: threads, commits, commits per second. Group commit shows as a rate that
//! grows with the number of threads while the disk's fsync rate stays the same.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_kv::{FjallKv, TxnKv};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: commit_rate DIR THREADS SECS");
        std::process::exit(2);
    }
    let (dir, threads, secs) = (&args[1], parse(&args[2]), parse(&args[3]));
    let path = std::path::Path::new(dir).join(format!("kv-{threads}"));
    let _ = std::fs::remove_dir_all(&path);
    let kv = FjallKv::open(&path).unwrap_or_else(|e| fail(&e));
    let (commits, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let started = Instant::now();
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            let (kv, commits, stop) = (kv.clone(), commits.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut txn = kv.begin().unwrap_or_else(|e| fail(&e));
                    txn.set(format!("w{t}/{i}").as_bytes(), &[7u8; 200]);
                    txn.commit().unwrap_or_else(|e| fail(&e));
                    commits.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let n = commits.load(Ordering::Relaxed);
    println!("threads {threads} commits {n} per_sec {:.0}", n as f64 / started.elapsed().as_secs_f64());
    drop(kv);
    let _ = std::fs::remove_dir_all(&path);
}

fn parse(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| fail(&format!("not a number: {s}")))
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("commit_rate: {e}");
    std::process::exit(1);
}
