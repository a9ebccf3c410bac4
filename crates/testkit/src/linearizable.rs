//! A linearizability checker for a single register (Wing & Gong's search with the memoisation
//! Lowe and Porcupine use): is there a total order of the operations, consistent with their
//! real-time order, in which every read returns the value of the latest write before it?

use std::collections::HashSet;
use std::time::Instant;

/// One completed operation on the register as a client saw it, timed by any clock (a
/// simulation's virtual one too).
#[derive(Clone, Debug)]
pub struct Op<T = Instant> {
    pub invoked: T,
    pub returned: T,
    pub kind: OpKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write(u64),
    Read(u64),
}

/// Ok if `history` is linearizable for a register starting at `initial`; otherwise a message
/// naming how far the longest linearizable prefix got.
pub fn check_register<T: Ord + Copy>(history: &[Op<T>], initial: u64) -> Result<(), String> {
    let n = history.len();
    let mut done = vec![false; n];
    let mut seen: HashSet<(Vec<u64>, u64)> = HashSet::new();
    let mut best = 0usize;
    if search(history, &mut done, 0, initial, &mut seen, &mut best) {
        Ok(())
    } else {
        Err(format!("no linearization: at most {best} of {n} operations could be ordered"))
    }
}

fn key(done: &[bool]) -> Vec<u64> {
    let mut words = vec![0u64; done.len().div_ceil(64)];
    for (i, d) in done.iter().enumerate() {
        if *d {
            words[i / 64] |= 1 << (i % 64);
        }
    }
    words
}

/// Depth-first search over "which pending operation takes effect next".
fn search<T: Ord + Copy>(h: &[Op<T>], done: &mut [bool], count: usize, state: u64, seen: &mut HashSet<(Vec<u64>, u64)>, best: &mut usize) -> bool {
    if count == h.len() {
        return true;
    }
    *best = (*best).max(count);
    if !seen.insert((key(done), state)) {
        return false;
    }
    // Only an operation invoked before every pending one has returned can go next.
    let horizon = h.iter().zip(done.iter()).filter(|(_, d)| !**d).map(|(op, _)| op.returned).min();
    let Some(horizon) = horizon else { return true };
    for i in 0..h.len() {
        if done[i] || h[i].invoked > horizon {
            continue;
        }
        let next = match h[i].kind {
            OpKind::Write(v) => v,
            OpKind::Read(v) if v == state => state,
            OpKind::Read(_) => continue,
        };
        done[i] = true;
        if search(h, done, count + 1, next, seen, best) {
            return true;
        }
        done[i] = false;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Builds an op from times in milliseconds after a common origin.
    fn op(origin: Instant, from: u64, to: u64, kind: OpKind) -> Op {
        Op { invoked: origin + Duration::from_millis(from), returned: origin + Duration::from_millis(to), kind }
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        let t = Instant::now();
        let h = vec![
            op(t, 0, 10, OpKind::Write(1)),
            op(t, 5, 15, OpKind::Read(0)),
            op(t, 12, 20, OpKind::Read(1)),
            op(t, 14, 30, OpKind::Write(2)),
            op(t, 16, 18, OpKind::Read(1)),
            op(t, 25, 35, OpKind::Read(2)),
        ];
        assert!(check_register(&h, 0).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let t = Instant::now();
        let h = vec![op(t, 0, 10, OpKind::Write(1)), op(t, 11, 12, OpKind::Read(1)), op(t, 20, 30, OpKind::Read(0))];
        assert!(check_register(&h, 0).is_err());
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught() {
        let t = Instant::now();
        let h = vec![op(t, 0, 10, OpKind::Write(1)), op(t, 5, 6, OpKind::Read(7))];
        assert!(check_register(&h, 0).is_err());
    }
}
