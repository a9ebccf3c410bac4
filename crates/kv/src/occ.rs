//! Optimistic concurrency control over any [`Engine`], plus group commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use ember_telemetry::{Counter, Histogram};

use crate::engine::{Engine, EngineSnapshot, Write};
use crate::history::History;
use crate::pending::Pending;
use crate::{Durability, Key, KvError};

/// How long a persist may wait for one more commit when several writers are at work: a
/// fraction of the 140-220 us an fdatasync takes on the dev box.
const GROUP_COMMIT_LINGER: Duration = Duration::from_micros(40);

/// The shared state of one store: engine, live snapshots, conflict history, durability.
pub(crate) struct Store<E: Engine> {
    pub(crate) engine: E,
    durability: Durability,
    live: Mutex<Live>,
    commit: Mutex<CommitState>,
    sync: Mutex<SyncState>,
    synced: Condvar,
}

/// Published version and registered snapshots, under one lock so that a snapshot registers the
/// version it read before any trimming can pass it.
struct Live {
    version: u64,
    snapshots: BTreeMap<u64, usize>,
    /// Commits applied so far that wait for a persist (not relaxed, under sync durability):
    /// what group commit batches, counted apart from versions so that relaxed commits do not
    /// look like other writers at work.
    durable_commits: u64,
}

impl Live {
    fn oldest(&self) -> u64 {
        self.snapshots.keys().next().copied().unwrap_or(self.version)
    }
}

struct CommitState {
    version: u64,
    history: History,
}

struct SyncState {
    synced_upto: u64,
    syncing: bool,
    /// `Live::durable_commits` when the last persist started.
    durable_synced: u64,
    /// Durable commits the last persist covered: more than one means several writers are at
    /// work.
    last_batch: u64,
    /// A background persist failed: acknowledged commits may not be durable, so the store
    /// refuses further commits (a later fsync could not prove anything either).
    failed: Option<String>,
}

/// Everything a transaction hands over at commit.
pub(crate) struct CommitRequest {
    pub(crate) reads: BTreeSet<Key>,
    pub(crate) ranges: Vec<(Key, Key)>,
    pub(crate) writes: BTreeMap<Key, Pending>,
    /// Return once the OS has the change, even under `Durability::Sync`.
    pub(crate) relaxed: bool,
}

/// Keeps snapshot `version` live (its data and conflict history retained) until dropped.
pub(crate) struct Registration<E: Engine> {
    pub(crate) store: Arc<Store<E>>,
    pub(crate) version: u64,
}

impl<E: Engine> Drop for Registration<E> {
    fn drop(&mut self) {
        let mut live = relock(&self.store.live);
        if let Some(count) = live.snapshots.get_mut(&self.version) {
            *count -= 1;
            if *count == 0 {
                live.snapshots.remove(&self.version);
            }
        }
    }
}

/// For locks whose protected state stays consistent even if a holder panicked.
fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<E: Engine> Store<E> {
    /// A store whose last durable commit is `version`. With periodic durability a background
    /// thread persists every interval, for as long as the store lives.
    pub(crate) fn new(engine: E, version: u64, history_cap: usize, durability: Durability) -> Arc<Self> {
        let store = Arc::new(Store {
            engine,
            durability,
            live: Mutex::new(Live { version, snapshots: BTreeMap::new(), durable_commits: 0 }),
            commit: Mutex::new(CommitState { version, history: History::new(version, history_cap) }),
            sync: Mutex::new(SyncState {
                synced_upto: version,
                syncing: false,
                durable_synced: 0,
                last_batch: 0,
                failed: None,
            }),
            synced: Condvar::new(),
        });
        describe_metrics();
        if let Durability::Periodic(every) = durability {
            persist_every(Arc::downgrade(&store), every);
        }
        store
    }

    /// Registers the current version as live and opens an engine snapshot at it.
    pub(crate) fn begin(self: &Arc<Self>) -> (Registration<E>, E::Snapshot) {
        let version = {
            let mut live = relock(&self.live);
            let version = live.version;
            *live.snapshots.entry(version).or_insert(0) += 1;
            version
        };
        let snapshot = self.engine.snapshot(version);
        (Registration { store: Arc::clone(self), version }, snapshot)
    }

    /// Validates, applies and makes durable as the store's durability says; returns the
    /// commit version.
    pub(crate) fn commit(&self, reg: Registration<E>, req: CommitRequest) -> Result<u64, KvError> {
        if let Some(why) = &relock(&self.sync).failed {
            return Err(KvError::Storage(format!("an earlier background persist failed: {why}")));
        }
        let durable = matches!(self.durability, Durability::Sync) && !req.relaxed;
        let version = self.apply_serialized(reg, req, durable)?;
        if durable {
            self.wait_durable(version)?;
        } else {
            self.engine.hand_to_os()?;
        }
        Ok(version)
    }

    /// The background persist of periodic durability: returns false once it has failed.
    fn persist_in_background(&self) -> bool {
        let version = relock(&self.live).version;
        match self.wait_durable(version) {
            Ok(()) => true,
            Err(e) => {
                relock(&self.sync).failed = Some(e.to_string());
                false
            }
        }
    }

    fn apply_serialized(&self, reg: Registration<E>, req: CommitRequest, durable: bool) -> Result<u64, KvError> {
        // A panic half-way through a commit may leave history and engine out of step; refuse
        // further commits rather than risk an undetected conflict.
        let mut st = self.commit.lock().map_err(|_| KvError::Closed)?;
        st.history.validate(reg.version, &req.reads, &req.ranges)?;
        drop(reg);
        let writes = self.resolve(st.version, req.writes)?;
        let version = st.version + 1;
        let oldest_live = relock(&self.live).oldest();
        self.engine.apply(version, &writes, oldest_live)?;
        st.version = version;
        let oldest = {
            let mut live = relock(&self.live);
            live.version = version;
            live.durable_commits += u64::from(durable);
            live.oldest()
        };
        st.history.record(version, writes.into_iter().map(|(k, _)| k).collect());
        st.history.trim(oldest);
        Ok(version)
    }

    /// Turns buffered writes into final values; atomic ops read the latest committed value,
    /// which is stable because the caller holds the commit mutex.
    fn resolve(&self, latest: u64, pending: BTreeMap<Key, Pending>) -> Result<Vec<Write>, KvError> {
        let needs_read = pending.values().any(|p| matches!(p, Pending::Atomic(_)));
        let view = needs_read.then(|| self.engine.snapshot(latest));
        let mut writes = Vec::with_capacity(pending.len());
        for (key, p) in pending {
            let base = match (&p, &view) {
                (Pending::Atomic(_), Some(view)) => view.get(&key)?,
                _ => None,
            };
            let value = p.resolve(base);
            writes.push((key, value));
        }
        Ok(writes)
    }

    /// Group commit: one committer at a time persists everything applied so far; the others
    /// wait and are released together when a persist covers their version.
    fn wait_durable(&self, version: u64) -> Result<(), KvError> {
        let mut st = relock(&self.sync);
        loop {
            if st.synced_upto >= version {
                return Ok(());
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.syncing = true;
            let (before, durable_before) = (st.synced_upto, st.durable_synced);
            let concurrent = st.last_batch > 1;
            drop(st);
            if concurrent {
                self.linger(durable_before);
            }
            let started = Instant::now();
            let result = self.persist_applied();
            st = relock(&self.sync);
            st.syncing = false;
            if let Ok((upto, durable)) = result {
                st.last_batch = durable.saturating_sub(durable_before);
                st.durable_synced = st.durable_synced.max(durable);
                record_persist(started.elapsed(), upto.saturating_sub(before));
                st.synced_upto = st.synced_upto.max(upto);
            }
            self.synced.notify_all();
            result?;
        }
    }

    /// Waits up to [`GROUP_COMMIT_LINGER`] for a second durable commit to join the persist
    /// about to start (the ones counted above `durable_synced` wait for it), giving the CPU to
    /// the threads that would apply it. Only called while several writers are at work: a lone
    /// writer never waits, and with several each persist covers more commits (measured in
    /// `docs/benchmarks.md`, session 17: 13% fewer fsyncs, 3-8% more creates by four processes).
    fn linger(&self, durable_synced: u64) {
        let until = Instant::now() + GROUP_COMMIT_LINGER;
        while relock(&self.live).durable_commits < durable_synced + 2 && Instant::now() < until {
            std::thread::yield_now();
        }
    }

    /// Persists and returns the version the persist is known to cover, with the durable
    /// commits counted up to it.
    fn persist_applied(&self) -> Result<(u64, u64), KvError> {
        // Read before persisting: every version published by now has been applied.
        let upto = {
            let live = relock(&self.live);
            (live.version, live.durable_commits)
        };
        self.engine.persist().inspect_err(|e| tracing::error!(error = %e, "kv persist failed"))?;
        Ok(upto)
    }

    #[cfg(test)]
    pub(crate) fn history_len(&self) -> usize {
        relock(&self.commit).history.len()
    }
}

impl<E: Engine> Drop for Store<E> {
    /// A store closed in an orderly way leaves nothing for the power to take.
    fn drop(&mut self) {
        if matches!(self.durability, Durability::Periodic(_)) {
            if let Err(e) = self.engine.persist() {
                tracing::error!(error = %e, "kv persist at close failed");
            }
        }
    }
}

/// How well group commit batches: persists, their latency, and the commits each covered.
fn record_persist(took: Duration, commits: u64) {
    static SERIES: OnceLock<(Counter, Counter, Histogram)> = OnceLock::new();
    let (persists, persisted, seconds) = SERIES.get_or_init(|| {
        let reg = ember_telemetry::global();
        (
            reg.counter("ember_kv_persists_total", ""),
            reg.counter("ember_kv_persisted_commits_total", ""),
            reg.histogram("ember_kv_persist_seconds", ""),
        )
    });
    persists.add(1);
    persisted.add(commits);
    seconds.observe(took);
}

fn describe_metrics() {
    let reg = ember_telemetry::global();
    reg.describe("ember_kv_persists_total", "Journal fsyncs of the transactional KV (group commit rounds).");
    reg.describe("ember_kv_persisted_commits_total", "Commits made durable, summed over all persists.");
    reg.describe("ember_kv_persist_seconds", "Time one journal fsync took.");
}

/// Persists the store every `every` until it is dropped or a persist fails.
fn persist_every<E: Engine>(store: Weak<Store<E>>, every: Duration) {
    let spawned = std::thread::Builder::new().name("kv-persist".into()).spawn(move || loop {
        std::thread::sleep(every);
        let Some(store) = store.upgrade() else { return };
        if !store.persist_in_background() {
            return;
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the kv's periodic persist");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemEngine;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    /// A memory engine whose persist is slow and counted.
    struct SlowPersist {
        inner: MemEngine,
        persists: AtomicUsize,
        fail: AtomicBool,
        /// A persist, once counted, waits while a test holds this.
        hold: Mutex<()>,
    }

    impl Engine for SlowPersist {
        type Snapshot = <MemEngine as Engine>::Snapshot;
        fn snapshot(&self, version: u64) -> Self::Snapshot {
            self.inner.snapshot(version)
        }
        fn apply(&self, version: u64, writes: &[Write], oldest: u64) -> Result<(), KvError> {
            self.inner.apply(version, writes, oldest)
        }
        fn persist(&self) -> Result<(), KvError> {
            self.persists.fetch_add(1, Ordering::SeqCst);
            drop(relock(&self.hold));
            std::thread::sleep(Duration::from_millis(5));
            if self.fail.load(Ordering::SeqCst) {
                return Err(KvError::Storage("disk gone".into()));
            }
            Ok(())
        }
        fn hand_to_os(&self) -> Result<(), KvError> {
            Ok(())
        }
    }

    fn blind_write(key: &[u8]) -> CommitRequest {
        let mut writes = BTreeMap::new();
        writes.insert(key.to_vec(), Pending::Put(Some(b"v".to_vec())));
        CommitRequest { reads: BTreeSet::new(), ranges: Vec::new(), writes, relaxed: false }
    }

    #[test]
    fn a_relaxed_commit_does_not_wait_and_the_next_durable_one_covers_it() {
        let store = Store::new(slow_persist(), 0, crate::history::DEFAULT_CAP, Durability::Sync);
        let (reg, _snap) = store.begin();
        let relaxed = store.commit(reg, CommitRequest { relaxed: true, ..blind_write(b"a") }).unwrap();
        assert_eq!((store.engine.persists.load(Ordering::SeqCst), relock(&store.sync).synced_upto), (0, 0));
        let (reg, _snap) = store.begin();
        store.commit(reg, blind_write(b"b")).unwrap();
        assert!(relock(&store.sync).synced_upto > relaxed, "the durable commit left the relaxed one behind");
    }

    #[test]
    fn concurrent_committers_share_persists() {
        let store = Store::new(slow_persist(), 0, crate::history::DEFAULT_CAP, Durability::Sync);
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..20u8 {
                        let (reg, _snap) = store.begin();
                        store.commit(reg, blind_write(&[t, i])).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let persists = store.engine.persists.load(Ordering::SeqCst);
        assert!(persists < 160, "{persists} persists for 160 commits");
        assert_eq!(relock(&store.sync).synced_upto, 160);
        // Other tests of this process count into the same registry, hence at least.
        let page = ember_telemetry::global().render();
        let counted = |name: &str| -> u64 {
            let line = page.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(counted("ember_kv_persisted_commits_total ") >= 160);
        assert!(counted("ember_kv_persists_total ") >= persists as u64);
    }

    #[test]
    fn a_persist_lingers_only_after_one_that_covered_several_durable_commits() {
        let store = Store::new(slow_persist(), 0, crate::history::DEFAULT_CAP, Durability::Sync);
        let commit = |key: &[u8], relaxed: bool| {
            let (reg, _snap) = store.begin();
            let started = Instant::now();
            store.commit(reg, CommitRequest { relaxed, ..blind_write(key) }).unwrap();
            started.elapsed()
        };
        let last_batch = || relock(&store.sync).last_batch;
        commit(b"a", false);
        assert_eq!(last_batch(), 1, "a lone writer's persist covers its commit");
        commit(b"b", true);
        commit(b"c", false);
        assert_eq!(last_batch(), 1, "a relaxed commit carried along is not another writer");
        // Three writers: the first one's persist is held until the other two have applied.
        let held = relock(&store.engine.hold);
        std::thread::scope(|s| {
            s.spawn(|| commit(b"x", false));
            while store.engine.persists.load(Ordering::SeqCst) < 3 {
                std::thread::yield_now();
            }
            s.spawn(|| commit(b"y", false));
            s.spawn(|| commit(b"z", false));
            while relock(&store.live).durable_commits < 5 {
                std::thread::yield_now();
            }
            drop(held);
        });
        assert_eq!(last_batch(), 2, "one persist covered the two that waited");
        // Several writers were at work: the next persist waits for company, none comes.
        assert!(commit(b"w", false) >= GROUP_COMMIT_LINGER);
        assert_eq!(last_batch(), 1);
        assert_eq!(store.engine.persists.load(Ordering::SeqCst), 5);
    }

    fn slow_persist() -> SlowPersist {
        SlowPersist {
            inner: MemEngine::default(),
            persists: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            hold: Mutex::new(()),
        }
    }

    #[test]
    fn periodic_commits_do_not_wait_and_are_persisted_in_the_background() {
        let store = Store::new(slow_persist(), 0, crate::history::DEFAULT_CAP, Durability::Periodic(Duration::from_millis(20)));
        for i in 0..50u8 {
            let (reg, _snap) = store.begin();
            store.commit(reg, blind_write(&[i])).unwrap();
        }
        assert_eq!(relock(&store.sync).synced_upto, 0, "no commit waited for a persist");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while relock(&store.sync).synced_upto < 50 {
            assert!(std::time::Instant::now() < deadline, "the background persist never covered the commits");
            std::thread::sleep(Duration::from_millis(5));
        }

        // A failed background persist refuses every later commit.
        store.engine.fail.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (reg, _snap) = store.begin();
            match store.commit(reg, blind_write(b"late")) {
                Err(KvError::Storage(msg)) => {
                    assert!(msg.contains("disk gone"), "{msg}");
                    break;
                }
                other => assert!(other.is_ok() && std::time::Instant::now() < deadline, "{other:?}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn history_stays_small_without_live_snapshots() {
        let store = Store::new(MemEngine::default(), 0, crate::history::DEFAULT_CAP, Durability::Sync);
        for i in 0..2000u32 {
            let (reg, _snap) = store.begin();
            store.commit(reg, blind_write(&i.to_be_bytes())).unwrap();
        }
        assert!(store.history_len() <= 1, "history holds {}", store.history_len());
    }

    #[test]
    fn history_over_cap_makes_old_readers_too_old() {
        let store = Store::new(MemEngine::default(), 0, 10, Durability::Sync);
        let (old, _old_snap) = store.begin();
        for i in 0..100u32 {
            let (reg, _snap) = store.begin();
            store.commit(reg, blind_write(&i.to_be_bytes())).unwrap();
        }
        assert!(store.history_len() <= 10);
        let mut req = blind_write(b"x");
        req.reads.insert(b"y".to_vec());
        assert!(matches!(store.commit(old, req), Err(KvError::TooOld)));
    }
}
