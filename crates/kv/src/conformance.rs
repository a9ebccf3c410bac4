//! Behaviour every [`TxnKv`] backend must show. Each check takes a factory that returns a fresh,
//! empty store and panics on failure; [`run_all`] runs them all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use crate::{run, KvError, Transaction, TxnKv, MAX_KEY_LEN};

/// Returns a fresh, empty store.
pub type Factory<'a> = &'a dyn Fn() -> Arc<dyn TxnKv>;

/// Every check below, each on its own fresh store.
pub fn run_all(make: Factory<'_>) {
    let checks: &[fn(Factory<'_>)] = &[
        round_trip,
        read_your_writes,
        isolation,
        write_write_conflict,
        range_conflict,
        limited_scan_conflict,
        blind_writes_do_not_conflict,
        atomic_add_concurrent,
        atomic_max,
        atomic_ops_apply_to_latest_value,
        snapshot_reads_do_not_conflict,
        scan_semantics,
        long_scan_with_own_deletes,
        run_retries_contended_counter,
        read_only_never_conflicts,
        add_read_conflict_conflicts,
        dropped_txn_is_abandoned,
        invalid_keys_are_rejected,
    ];
    for check in checks {
        check(make);
    }
}

fn begin(kv: &dyn TxnKv) -> Box<dyn Transaction> {
    kv.begin().expect("begin")
}

fn put(kv: &dyn TxnKv, key: &[u8], value: &[u8]) -> u64 {
    let mut t = begin(kv);
    t.set(key, value);
    t.commit().expect("commit of a blind write")
}

fn read(kv: &dyn TxnKv, key: &[u8]) -> Option<Vec<u8>> {
    begin(kv).snapshot_get(key).expect("get")
}

fn as_i64(value: Option<Vec<u8>>) -> i64 {
    let bytes = value.expect("counter present");
    i64::from_le_bytes(bytes.as_slice().try_into().expect("8-byte counter"))
}

fn as_u64(value: Option<Vec<u8>>) -> u64 {
    let bytes = value.expect("value present");
    u64::from_le_bytes(bytes.as_slice().try_into().expect("8-byte value"))
}

fn keys(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<&[u8]> {
    rows.iter().map(|(k, _)| k.as_slice()).collect()
}

fn assert_conflict(result: Result<u64, KvError>) {
    assert!(matches!(result, Err(KvError::Conflict)), "expected Conflict, got {result:?}");
}

/// Set, get and delete across transactions; commit versions increase.
pub fn round_trip(make: Factory<'_>) {
    let kv = make();
    assert_eq!(read(&*kv, b"k"), None);
    let v1 = put(&*kv, b"k", b"v1");
    assert_eq!(read(&*kv, b"k"), Some(b"v1".to_vec()));
    let v2 = put(&*kv, b"k", b"v2");
    assert!(v2 > v1, "versions must increase: {v1} then {v2}");
    assert_eq!(read(&*kv, b"k"), Some(b"v2".to_vec()));
    let mut t = begin(&*kv);
    t.delete(b"k");
    assert!(t.commit().expect("delete") > v2);
    assert_eq!(read(&*kv, b"k"), None);
}

/// A transaction sees its own sets, deletes and pending atomic ops.
pub fn read_your_writes(make: Factory<'_>) {
    let kv = make();
    put(&*kv, b"gone", b"x");
    put(&*kv, b"n", &5i64.to_le_bytes());
    let mut t = begin(&*kv);
    t.set(b"a", b"1");
    assert_eq!(t.get(b"a").expect("get"), Some(b"1".to_vec()));
    assert_eq!(t.snapshot_get(b"a").expect("get"), Some(b"1".to_vec()));
    t.delete(b"gone");
    assert_eq!(t.get(b"gone").expect("get"), None);
    t.atomic_add(b"n", 2);
    assert_eq!(as_i64(t.get(b"n").expect("get")), 7);
    t.atomic_max(b"m", 9);
    assert_eq!(as_u64(t.snapshot_get(b"m").expect("get")), 9);
    t.commit().expect("commit");
    assert_eq!(read(&*kv, b"a"), Some(b"1".to_vec()));
    assert_eq!(read(&*kv, b"gone"), None);
    assert_eq!(as_i64(read(&*kv, b"n")), 7);
}

/// Writes are invisible to a transaction begun earlier (repeatably) and visible to later ones.
pub fn isolation(make: Factory<'_>) {
    let kv = make();
    put(&*kv, b"k", b"old");
    let mut early = begin(&*kv);
    let mut writer = begin(&*kv);
    writer.set(b"k", b"new");
    writer.set(b"fresh", b"1");
    assert_eq!(early.get(b"k").expect("get"), Some(b"old".to_vec()));
    writer.commit().expect("commit");
    assert_eq!(early.get(b"k").expect("get"), Some(b"old".to_vec()));
    assert_eq!(early.get(b"fresh").expect("get"), None);
    assert!(early.scan(b"a", b"z", 0).expect("scan").iter().all(|(k, _)| k != b"fresh"));
    let mut late = begin(&*kv);
    assert_eq!(late.get(b"k").expect("get"), Some(b"new".to_vec()));
    assert_eq!(late.get(b"fresh").expect("get"), Some(b"1".to_vec()));
}

/// Two read-modify-writes of one key: the first commit wins, the second conflicts.
pub fn write_write_conflict(make: Factory<'_>) {
    let kv = make();
    put(&*kv, b"k", b"0");
    let mut a = begin(&*kv);
    let mut b = begin(&*kv);
    a.get(b"k").expect("get");
    b.get(b"k").expect("get");
    a.set(b"k", b"a");
    b.set(b"k", b"b");
    a.commit().expect("first committer wins");
    assert_conflict(b.commit());
    assert_eq!(read(&*kv, b"k"), Some(b"a".to_vec()));
}

/// An insert into a scanned range (a phantom) conflicts.
pub fn range_conflict(make: Factory<'_>) {
    let kv = make();
    put(&*kv, b"d/a", b"1");
    let mut a = begin(&*kv);
    assert_eq!(a.scan(b"d/", b"d0", 0).expect("scan").len(), 1);
    put(&*kv, b"d/x", b"2");
    a.set(b"elsewhere", b"1");
    assert_conflict(a.commit());

    // Just past the end of the range is not a phantom.
    let mut a = begin(&*kv);
    a.scan(b"d/", b"d0", 0).expect("scan");
    put(&*kv, b"d0", b"outside");
    a.set(b"elsewhere", b"2");
    a.commit().expect("insert outside the range must not conflict");
}

/// A scan that hit its limit only conflicts on the part it returned.
pub fn limited_scan_conflict(make: Factory<'_>) {
    let kv = make();
    for k in [b"d/a", b"d/b", b"d/c"] {
        put(&*kv, k, b"1");
    }
    let mut a = begin(&*kv);
    assert_eq!(keys(&a.scan(b"d/", b"d0", 2).expect("scan")), vec![b"d/a", b"d/b"]);
    put(&*kv, b"d/ba", b"after the last returned key");
    put(&*kv, b"d/c", b"changed, not returned");
    a.set(b"elsewhere", b"1");
    a.commit().expect("writes past the returned part must not conflict");

    let mut a = begin(&*kv);
    a.scan(b"d/", b"d0", 2).expect("scan");
    put(&*kv, b"d/aa", b"inside the returned part");
    a.set(b"elsewhere", b"2");
    assert_conflict(a.commit());
}

/// Blind writes of one key never conflict; the last committer wins.
pub fn blind_writes_do_not_conflict(make: Factory<'_>) {
    let kv = make();
    let mut a = begin(&*kv);
    let mut b = begin(&*kv);
    a.set(b"k", b"a");
    b.set(b"k", b"b");
    let va = a.commit().expect("blind write");
    let vb = b.commit().expect("blind write");
    assert!(vb > va);
    assert_eq!(read(&*kv, b"k"), Some(b"b".to_vec()));
}

/// 8 threads x 200 `atomic_add` transactions through `run`: no retries, exact total.
pub fn atomic_add_concurrent(make: Factory<'_>) {
    let kv = make();
    let attempts = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (kv, attempts) = (Arc::clone(&kv), Arc::clone(&attempts));
            thread::spawn(move || {
                for _ in 0..200 {
                    run(&*kv, |t| {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        t.atomic_add(b"ctr", 1);
                        Ok::<_, KvError>(())
                    })
                    .expect("atomic add");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked");
    }
    assert_eq!(as_i64(read(&*kv, b"ctr")), 1600);
    assert_eq!(attempts.load(Ordering::SeqCst), 1600, "atomic ops must never conflict");
}

/// `atomic_max` keeps the maximum, also against concurrent transactions.
pub fn atomic_max(make: Factory<'_>) {
    let kv = make();
    let mut a = begin(&*kv);
    let mut b = begin(&*kv);
    a.atomic_max(b"m", 7);
    b.atomic_max(b"m", 3);
    a.commit().expect("max");
    b.commit().expect("max never conflicts");
    assert_eq!(as_u64(read(&*kv, b"m")), 7);
    let mut c = begin(&*kv);
    c.atomic_max(b"m", 11);
    c.atomic_max(b"m", 9);
    c.commit().expect("max");
    assert_eq!(as_u64(read(&*kv, b"m")), 11);
}

/// Atomic ops apply to the latest committed value, not the transaction's snapshot.
pub fn atomic_ops_apply_to_latest_value(make: Factory<'_>) {
    let kv = make();
    let mut early = begin(&*kv);
    let mut other = begin(&*kv);
    other.atomic_add(b"n", 5);
    other.commit().expect("add");
    early.atomic_add(b"n", -1);
    early.commit().expect("add");
    assert_eq!(as_i64(read(&*kv, b"n")), 4);
    put(&*kv, b"n", b"");
    let mut t = begin(&*kv);
    t.atomic_add(b"n", 3);
    t.commit().expect("add to empty value");
    assert_eq!(as_i64(read(&*kv, b"n")), 3);
}

/// Snapshot reads and snapshot scans add no conflicts.
pub fn snapshot_reads_do_not_conflict(make: Factory<'_>) {
    let kv = make();
    put(&*kv, b"k", b"0");
    let mut a = begin(&*kv);
    assert_eq!(a.snapshot_get(b"k").expect("get"), Some(b"0".to_vec()));
    a.snapshot_scan(b"a", b"z", 0).expect("scan");
    put(&*kv, b"k", b"1");
    put(&*kv, b"m", b"new");
    a.set(b"other", b"x");
    a.commit().expect("snapshot reads must not conflict");
}

/// Ordering, limits, exclusive end, and own writes merged into results.
pub fn scan_semantics(make: Factory<'_>) {
    let kv = make();
    let mut t = begin(&*kv);
    for k in [b"s/c", b"s/a", b"s/e", b"s/b", b"t/a"] {
        t.set(k, k);
    }
    t.set(b"s", b"prefix itself");
    t.commit().expect("populate");

    let mut t = begin(&*kv);
    let all = t.scan(b"s/", b"s0", 0).expect("scan");
    assert_eq!(keys(&all), vec![b"s/a", b"s/b", b"s/c", b"s/e"]);
    assert!(all.iter().all(|(k, v)| k == v));
    assert_eq!(keys(&t.scan(b"s/", b"s0", 2).expect("scan")), vec![b"s/a", b"s/b"]);
    assert_eq!(keys(&t.scan(b"s/a", b"s/c", 0).expect("scan")), vec![b"s/a", b"s/b"]);
    assert!(t.scan(b"s/c", b"s/a", 0).expect("reversed range").is_empty());
    assert!(t.scan(b"s/c", b"s/c", 0).expect("empty range").is_empty());

    t.set(b"s/d", b"own");
    t.delete(b"s/b");
    t.set(b"s/a", b"overwritten");
    t.atomic_add(b"s/f", 2);
    let merged = t.scan(b"s/", b"s0", 0).expect("scan");
    assert_eq!(keys(&merged), vec![b"s/a", b"s/c", b"s/d", b"s/e", b"s/f"]);
    assert_eq!(merged[0].1, b"overwritten".to_vec());
    assert_eq!(merged[2].1, b"own".to_vec());
    assert_eq!(merged[4].1, 2i64.to_le_bytes().to_vec());
    let limited = t.snapshot_scan(b"s/", b"s0", 3).expect("scan");
    assert_eq!(keys(&limited), vec![b"s/a", b"s/c", b"s/d"]);
}

/// Scans longer than any internal read chunk, with most rows hidden by own deletes.
pub fn long_scan_with_own_deletes(make: Factory<'_>) {
    let kv = make();
    let key = |i: u32| format!("r/{i:05}").into_bytes();
    let mut t = begin(&*kv);
    for i in 0..3000 {
        t.set(&key(i), &i.to_le_bytes());
    }
    t.commit().expect("populate");
    let mut t = begin(&*kv);
    assert_eq!(t.scan(b"r/", b"r0", 0).expect("scan").len(), 3000);
    for i in (0..3000).filter(|i| i % 10 != 0) {
        t.delete(&key(i));
    }
    let rows = t.scan(b"r/", b"r0", 0).expect("scan");
    let expected: Vec<Vec<u8>> = (0..3000).step_by(10).map(key).collect();
    assert_eq!(rows.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), expected);
    let limited = t.scan(b"r/", b"r0", 250).expect("scan");
    assert_eq!(limited.len(), 250);
    assert_eq!(limited[249].0, key(2490));
}

/// `run` retries a contended read-modify-write until every increment lands.
pub fn run_retries_contended_counter(make: Factory<'_>) {
    let kv = make();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let kv = Arc::clone(&kv);
            thread::spawn(move || {
                for _ in 0..100 {
                    run(&*kv, |t| {
                        let n = t.get(b"ctr")?.map_or(0, |v| as_i64(Some(v)));
                        t.set(b"ctr", &(n + 1).to_le_bytes());
                        Ok::<_, KvError>(())
                    })
                    .expect("increment");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked");
    }
    assert_eq!(as_i64(read(&*kv, b"ctr")), 400);
}

/// A transaction that wrote nothing commits even if everything it read changed.
pub fn read_only_never_conflicts(make: Factory<'_>) {
    let kv = make();
    put(&*kv, b"k", b"0");
    let mut a = begin(&*kv);
    a.get(b"k").expect("get");
    a.scan(b"", b"\xff", 0).expect("scan");
    a.add_read_conflict(b"k");
    put(&*kv, b"k", b"1");
    put(&*kv, b"j", b"1");
    a.commit().expect("read-only commit");
}

/// `add_read_conflict` makes a later write of the key conflict without reading it.
pub fn add_read_conflict_conflicts(make: Factory<'_>) {
    let kv = make();
    let mut a = begin(&*kv);
    a.add_read_conflict(b"k");
    a.set(b"other", b"x");
    put(&*kv, b"k", b"1");
    assert_conflict(a.commit());
    assert_eq!(read(&*kv, b"other"), None);
}

/// Dropping a transaction discards its writes and blocks nothing.
pub fn dropped_txn_is_abandoned(make: Factory<'_>) {
    let kv = make();
    let mut t = begin(&*kv);
    t.get(b"k").expect("get");
    t.set(b"k", b"never");
    drop(t);
    assert_eq!(read(&*kv, b"k"), None);
    let mut t = begin(&*kv);
    t.get(b"k").expect("get");
    t.set(b"k", b"yes");
    t.commit().expect("commit after an abandoned txn");
    assert_eq!(read(&*kv, b"k"), Some(b"yes".to_vec()));
}

/// Empty keys and keys longer than [`MAX_KEY_LEN`] fail cleanly instead of panicking.
pub fn invalid_keys_are_rejected(make: Factory<'_>) {
    let kv = make();
    let huge = vec![b'x'; MAX_KEY_LEN + 1];
    let mut t = begin(&*kv);
    assert!(matches!(t.get(&huge), Err(KvError::Storage(_))));
    assert!(matches!(t.scan(b"a", &huge, 0), Err(KvError::Storage(_))));
    t.set(&huge, b"v");
    t.set(b"small", b"v");
    assert!(matches!(t.commit(), Err(KvError::Storage(_))));
    assert_eq!(read(&*kv, b"small"), None);
    let mut t = begin(&*kv);
    assert_eq!(t.get(b"").expect("the empty key can be read"), None);
    t.set(b"", b"v");
    assert!(matches!(t.commit(), Err(KvError::Storage(_))));
    put(&*kv, &huge[..MAX_KEY_LEN], b"largest allowed key");
    assert_eq!(read(&*kv, &huge[..MAX_KEY_LEN]), Some(b"largest allowed key".to_vec()));
}
