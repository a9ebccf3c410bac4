//! fjall-only behaviour: data and the commit counter survive reopening.

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
