//! The target state machine: from a target's public state, what its node last reported, and
//! whether its chain still has another serving member, to its next public state. Pure
//! functions, so the whole table is unit-tested.
//!
//! The rules keep one property above all: a target that may have missed a committed write
//! never becomes SERVING without a sync (SYNCING -> up to date), unless no member of the
//! chain could have newer data (it was the last one serving).

use ember_types::{LocalState, TargetState};

/// `local` is `None` when the node is dead (missed heartbeats) or has not reported yet.
pub fn next_state(public: TargetState, local: Option<LocalState>, others_serving: bool) -> TargetState {
    use LocalState as L;
    use TargetState as T;
    match (public, local) {
        (T::Serving, None | Some(L::Offline)) if others_serving => T::Offline,
        (T::Serving, None | Some(L::Offline)) => T::LastServing,
        (T::LastServing, None | Some(L::Offline)) => T::LastServing,
        (_, None | Some(L::Offline)) => T::Offline,
        // Not promoted yet (new chain, or mgmtd restarted). A node restart is caught at its
        // registration instead, where mgmtd knows the process is new.
        (T::Serving, Some(_)) => T::Serving,
        // Nobody served after it: what it holds is the newest data there is.
        (T::LastServing, Some(_)) if !others_serving => T::Serving,
        (T::LastServing, Some(_)) => T::Offline,
        (T::Syncing, Some(L::UpToDate)) => T::Serving,
        (T::Syncing, Some(_)) => T::Syncing,
        (T::Offline, Some(_)) => T::Waiting,
        (T::Waiting, Some(_)) if others_serving => T::Syncing,
        (T::Waiting, Some(_)) => T::Waiting,
    }
}

/// Order in which members are listed: serving first (the first is the primary), failed last.
/// Stable, so the primary only changes when it stops serving.
pub fn rank(state: TargetState) -> u8 {
    match state {
        TargetState::Serving => 0,
        TargetState::Syncing => 1,
        TargetState::Waiting => 2,
        TargetState::LastServing => 3,
        TargetState::Offline => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LocalState as L;
    use TargetState as T;

    #[test]
    fn failure_of_one_member_takes_it_offline_but_the_last_one_stays_lastsrv() {
        assert_eq!(next_state(T::Serving, None, true), T::Offline);
        assert_eq!(next_state(T::Serving, Some(L::Offline), true), T::Offline);
        assert_eq!(next_state(T::Serving, None, false), T::LastServing);
        assert_eq!(next_state(T::LastServing, None, false), T::LastServing);
        assert_eq!(next_state(T::Syncing, None, true), T::Offline);
        assert_eq!(next_state(T::Waiting, None, true), T::Offline);
    }

    #[test]
    fn a_returning_member_syncs_before_it_serves() {
        assert_eq!(next_state(T::Offline, Some(L::Online), true), T::Waiting);
        assert_eq!(next_state(T::Waiting, Some(L::Online), true), T::Syncing);
        assert_eq!(next_state(T::Waiting, Some(L::Online), false), T::Waiting);
        assert_eq!(next_state(T::Syncing, Some(L::Online), true), T::Syncing);
        assert_eq!(next_state(T::Syncing, Some(L::UpToDate), true), T::Serving);
        // Claiming to be up to date does not skip the sync.
        assert_eq!(next_state(T::Offline, Some(L::UpToDate), true), T::Waiting);
    }

    #[test]
    fn restarts_without_a_failure_in_between() {
        assert_eq!(next_state(T::Serving, Some(L::UpToDate), true), T::Serving);
        assert_eq!(next_state(T::Serving, Some(L::Online), false), T::Serving);
        assert_eq!(next_state(T::Serving, Some(L::Online), true), T::Serving);
        assert_eq!(next_state(T::LastServing, Some(L::Online), false), T::Serving);
        assert_eq!(next_state(T::LastServing, Some(L::Online), true), T::Offline);
    }

    #[test]
    fn every_combination_has_an_answer_and_serving_needs_a_reason() {
        let states = [T::Serving, T::Syncing, T::Waiting, T::LastServing, T::Offline];
        let locals = [None, Some(L::UpToDate), Some(L::Online), Some(L::Offline)];
        for s in states {
            for l in locals {
                for others in [false, true] {
                    let n = next_state(s, l, others);
                    if n == T::Serving {
                        let was_current = matches!(s, T::Serving | T::LastServing | T::Syncing);
                        assert!(was_current, "{s:?} + {l:?} became serving without a sync");
                    }
                }
            }
        }
    }
}
