//! The conformance suite against both built-in backends.

use std::sync::Arc;

use ember_kv::{conformance, FjallKv, KvError, MemKv, Transaction, TxnKv};
use tempfile::TempDir;

/// A fjall store that deletes its directory when dropped (store first, then directory).
struct TempFjall {
    kv: FjallKv,
    _dir: TempDir,
}

impl TxnKv for TempFjall {
    fn begin(&self) -> Result<Box<dyn Transaction>, KvError> {
        self.kv.begin()
    }
}

fn mem() -> Arc<dyn TxnKv> {
    Arc::new(MemKv::new())
}

fn fjall() -> Arc<dyn TxnKv> {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = FjallKv::open(dir.path()).expect("open fjall");
    Arc::new(TempFjall { kv, _dir: dir })
}

macro_rules! suite {
    ($backend:ident: $($check:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[test]
                fn $check() {
                    ember_kv::conformance::$check(&super::$backend);
                }
            )+
        }
    };
}

macro_rules! both {
    ($($check:ident),+ $(,)?) => {
        suite!(mem: $($check),+);
        suite!(fjall: $($check),+);
    };
}

both!(
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
);

#[test]
fn run_all_on_memory() {
    conformance::run_all(&mem);
}
