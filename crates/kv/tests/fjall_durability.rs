//! fjall-only behaviour: data and the commit counter survive reopening, and every
//! acknowledged commit survives `kill -9` of the process that made it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;

use ember_kv::{FjallKv, TxnKv};

fn put(kv: &dyn TxnKv, key: &[u8], value: &[u8]) -> u64 {
    let mut t = kv.begin().unwrap();
    t.set(key, value);
    t.commit().unwrap()
}

fn get(kv: &dyn TxnKv, key: &[u8]) -> Option<Vec<u8>> {
    kv.begin().unwrap().get(key).unwrap()
}

#[test]
fn data_and_version_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let kv = FjallKv::open(dir.path()).unwrap();
        put(&kv, b"a", b"1");
        let mut t = kv.begin().unwrap();
        t.atomic_add(b"n", 41);
        t.delete(b"a");
        t.set(b"b", b"2");
        t.commit().unwrap()
    };
    let kv = FjallKv::open(dir.path()).unwrap();
    assert_eq!(get(&kv, b"a"), None);
    assert_eq!(get(&kv, b"b"), Some(b"2".to_vec()));
    assert_eq!(get(&kv, b"n"), Some(41i64.to_le_bytes().to_vec()));
    // A read-only commit reports its snapshot version: the last durable commit.
    assert_eq!(kv.begin().unwrap().commit().unwrap(), last);
    let next = put(&kv, b"c", b"3");
    assert!(next > last, "counter went back: {last} then {next}");
    drop(kv);
    let kv = FjallKv::open(dir.path()).unwrap();
    assert!(put(&kv, b"d", b"4") > next);
}

#[test]
fn concurrent_group_commits_all_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = Arc::new(FjallKv::open(dir.path()).unwrap());
        let workers: Vec<_> = (0..8u8)
            .map(|t| {
                let kv = Arc::clone(&kv);
                thread::spawn(move || {
                    for i in 0..50u8 {
                        put(&*kv, &[b'k', t, i], &[t, i]);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    }
    let kv = FjallKv::open(dir.path()).unwrap();
    let rows = kv.begin().unwrap().scan(b"k", b"l", 0).unwrap();
    assert_eq!(rows.len(), 400);
    for (key, value) in rows {
        assert_eq!(&key[1..], value.as_slice());
    }
}

#[test]
fn open_fails_cleanly_while_another_handle_holds_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _kv = FjallKv::open(dir.path()).unwrap();
    assert!(FjallKv::open(dir.path()).is_err());
}

const CRASH_DIR_VAR: &str = "EMBER_KV_CRASH_DIR";
const CRASH_ROUND_VAR: &str = "EMBER_KV_CRASH_ROUND";
const COMMITTERS: u8 = 4;

fn crash_key(round: u32, thread: u8, i: u32) -> Vec<u8> {
    format!("r{round}t{thread}i{i:07}").into_bytes()
}

/// Sizes spread from empty to a few KiB.
fn crash_value(thread: u8, i: u32) -> Vec<u8> {
    vec![thread.wrapping_add(i as u8); (i as usize * 37) % 3000]
}

/// Helper of `acknowledged_commits_survive_kill_9`, run in a child process: commits from
/// several threads until killed, printing each commit once it is acknowledged.
#[test]
#[ignore = "run by acknowledged_commits_survive_kill_9 in a child process"]
fn commit_until_killed() {
    let dir = std::env::var(CRASH_DIR_VAR).expect("run by acknowledged_commits_survive_kill_9");
    let round: u32 = std::env::var(CRASH_ROUND_VAR).unwrap().parse().unwrap();
    let kv = Arc::new(FjallKv::open(Path::new(&dir)).unwrap());
    let committers: Vec<_> = (0..COMMITTERS)
        .map(|t| {
            let kv = Arc::clone(&kv);
            thread::spawn(move || {
                for i in 0.. {
                    put(&*kv, &crash_key(round, t, i), &crash_value(t, i));
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {t} {i}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for c in committers {
        c.join().unwrap();
    }
}

/// Starts a committer on `dir`, kills it with SIGKILL once it has acknowledged `acks`
/// commits, and returns the highest acknowledged `i` per thread.
fn commit_then_kill(dir: &Path, round: u32, acks: usize) -> BTreeMap<u8, u32> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["commit_until_killed", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CRASH_DIR_VAR, dir)
        .env(CRASH_ROUND_VAR, round.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = BTreeMap::new();
    let mut seen = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("acked ") else { continue };
        let (t, i) = rest.split_once(' ').unwrap();
        acked.insert(t.parse().unwrap(), i.parse().unwrap());
        seen += 1;
        if seen == acks {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(seen, acks, "the committer stopped after {seen} acknowledged commits");
    acked
}

#[test]
fn acknowledged_commits_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // Each round restarts on what the killed one left, so recovery is tested again on top
    // of earlier recoveries.
    let mut acked = Vec::new();
    for (round, acks) in [600, 900, 400, 300].into_iter().enumerate() {
        acked.push(commit_then_kill(dir.path(), round as u32, acks));
    }
    let kv = FjallKv::open(dir.path()).unwrap();
    for (round, last) in acked.iter().enumerate() {
        for (&t, &upto) in last {
            for i in 0..=upto {
                let got = get(&kv, &crash_key(round as u32, t, i));
                assert_eq!(got, Some(crash_value(t, i)), "round {round}, thread {t}, commit {i} of {upto} acknowledged");
            }
        }
    }
}
