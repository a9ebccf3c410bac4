//! Group commit: threads that each need "everything I wrote so far is durable" share one sync.
//!
//! Leader/follower: a caller takes a ticket after its write has completed. If no sync is running
//! it becomes the leader, remembers the newest ticket handed out so far, runs the sync and then
//! marks every ticket up to that one as durable. Callers arriving while a sync runs wait for the
//! next one, which one of them leads. So N concurrent writers cost about two syncs, not N.
//!
//! A failed sync poisons the group for good: after a failed fsync the kernel may already have
//! dropped the dirty pages, so a later "successful" fsync would prove nothing (fsyncgate). The
//! target must be restarted (and its data re-checked by replication).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::EngineError;

pub(crate) struct GroupSync {
    name: &'static str,
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    /// Last ticket handed out.
    requested: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    leader_active: bool,
    failed: Option<String>,
}

impl GroupSync {
    pub fn new(name: &'static str) -> Self {
        GroupSync {
            name,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        }
    }

    /// Returns once a run of `sync` that started after this call began has succeeded.
    /// Call it only after the write that must become durable has returned.
    pub fn sync_after_write(
        &self,
        sync: impl FnOnce() -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut st = self.lock();
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if let Some(msg) = &st.failed {
                return Err(self.poisoned(msg));
            }
            if st.synced >= ticket {
                return Ok(());
            }
            if !st.leader_active {
                break;
            }
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.leader_active = true;
        let target = st.requested;
        drop(st);
        let mut leader = LeaderGuard {
            group: self,
            target,
            outcome: None,
        };
        let result = sync();
        leader.outcome = Some(result.as_ref().map(|_| ()).map_err(ToString::to_string));
        drop(leader);
        result
    }

    /// Fails every later call: used when the protected file can no longer be trusted.
    pub fn is_poisoned(&self) -> Option<EngineError> {
        self.lock().failed.as_ref().map(|msg| self.poisoned(msg))
    }

    fn poisoned(&self, msg: &str) -> EngineError {
        EngineError::Io(std::io::Error::other(format!(
            "an earlier {} sync failed ({msg}); the target must be restarted",
            self.name
        )))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Publishes the leader's outcome and wakes the followers, even if the sync panicked (then the
/// group is poisoned instead of leaving followers waiting forever).
struct LeaderGuard<'a> {
    group: &'a GroupSync,
    target: u64,
    outcome: Option<Result<(), String>>,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.group.lock();
        st.leader_active = false;
        match self.outcome.take() {
            Some(Ok(())) => st.synced = st.synced.max(self.target),
            Some(Err(msg)) => {
                tracing::error!(group = self.group.name, error = %msg, "sync failed; poisoning target");
                st.failed = Some(msg);
            }
            None => st.failed = Some("sync panicked".to_string()),
        }
        self.group.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_callers_share_syncs_and_failure_poisons() {
        let group = Arc::new(GroupSync::new("test"));
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (group, syncs) = (group.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        group
                            .sync_after_write(|| {
                                syncs.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = syncs.load(Ordering::SeqCst);
        assert!(
            (1..320).contains(&n),
            "expected shared syncs, got {n} for 320 calls"
        );

        let err =
            group.sync_after_write(|| Err(EngineError::Io(std::io::Error::other("disk gone"))));
        assert!(err.is_err());
        let later = group.sync_after_write(|| Ok(()));
        assert!(
            matches!(later, Err(EngineError::Io(_))),
            "a failed sync must poison the group"
        );
        assert!(group.is_poisoned().is_some());
    }
}
