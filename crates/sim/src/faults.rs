//! The fault schedule: what goes wrong, when, decided by one seeded generator so that a seed
//! replays exactly. One fault at a time: a storage node crashed, isolated, cut off from mgmtd
//! or from one peer, or its links held; or mgmtd crashed. A chain of three therefore always
//! keeps a majority of healthy members and every acknowledged write must survive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_storage::CrashPoints;

use crate::hosts::{storage_host, Engines, MGMTD};

/// SplitMix64: small, fast and good enough to drive a schedule.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x005e_ed0f_e3be_5eed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// Where the workload is; faults are injected only while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Setup,
    Running,
    /// Faults are over: everything is repaired and restarted, the cluster must converge.
    Settling,
}

/// A fault in progress and when it ends.
#[derive(Clone, Debug)]
enum Fault {
    Down { node: usize, until: Duration },
    MgmtdDown { until: Duration },
    Cut { a: String, b: Vec<String>, until: Duration, held: bool },
}

pub struct Faults {
    rng: Rng,
    pub phase: Phase,
    nodes: usize,
    /// Chance that a persistence point of a storage engine is where its process dies.
    crash_point_chance: f64,
    /// A crash point fired on this node; the driver crashes it before the next step.
    doomed: Vec<bool>,
    incarnation: Vec<u64>,
    current: Option<Fault>,
    next_fault: Duration,
    /// What was injected and when, for the report of a failing seed.
    pub log: Vec<String>,
}

impl Faults {
    pub fn new(seed: u64, nodes: usize, crash_point_chance: f64) -> Self {
        Faults {
            rng: Rng::new(seed),
            phase: Phase::Setup,
            nodes,
            crash_point_chance,
            doomed: vec![false; nodes],
            incarnation: vec![0; nodes],
            current: None,
            next_fault: Duration::ZERO,
            log: Vec::new(),
        }
    }

    /// The crash decisions for the engine of node `i`'s current incarnation.
    pub fn crash_points(state: &Arc<Mutex<Faults>>, i: usize) -> CrashPoints {
        let incarnation = lock(state).incarnation[i];
        let state = state.clone();
        Arc::new(move |point| lock(&state).dies_at(i, incarnation, point))
    }

    pub fn is_doomed(&self, node: usize) -> bool {
        self.doomed[node]
    }

    fn dies_at(&mut self, i: usize, incarnation: u64, point: &'static str) -> bool {
        if incarnation != self.incarnation[i] || self.doomed[i] {
            return true;
        }
        if self.phase != Phase::Running || self.current.is_some() || self.doomed.iter().any(|d| *d) {
            return false;
        }
        if !self.rng.chance(self.crash_point_chance) {
            return false;
        }
        self.doomed[i] = true;
        self.log.push(format!("{} dies at persistence point {point}", storage_host(i)));
        true
    }

    /// Called between simulation steps at simulated time `now`.
    pub fn drive(&mut self, sim: &mut turmoil::Sim<'_>, engines: &Engines, now: Duration) {
        if let Some(i) = self.doomed.iter().position(|d| *d) {
            if self.current.is_none() {
                self.crash(sim, engines, i, now, "after its crash point");
            }
        }
        let over = match &self.current {
            Some(Fault::Down { until, .. } | Fault::MgmtdDown { until } | Fault::Cut { until, .. }) => {
                now >= *until || self.phase == Phase::Settling
            }
            None => false,
        };
        if over {
            self.end_fault(sim, now);
        }
        if self.phase == Phase::Running && self.current.is_none() && now >= self.next_fault {
            self.start_fault(sim, engines, now);
            self.next_fault = now + self.rng.millis(300, 1500);
        }
    }

    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, engines: &Engines, i: usize, now: Duration, why: &str) {
        sim.crash(storage_host(i));
        lock(engines)[i] = None;
        let until = now + self.rng.millis(200, 3000);
        self.log.push(format!("{now:?}: crash {} {why}, restart at {until:?}", storage_host(i)));
        self.current = Some(Fault::Down { node: i, until });
    }

    fn start_fault(&mut self, sim: &mut turmoil::Sim<'_>, engines: &Engines, now: Duration) {
        let node = self.rng.below(self.nodes as u64) as usize;
        let host = storage_host(node);
        let until = now + self.rng.millis(200, 3000);
        let others: Vec<String> = (0..self.nodes).filter(|n| *n != node).map(storage_host).collect();
        let (b, held) = match self.rng.below(6) {
            0 => return self.crash(sim, engines, node, now, "by the schedule"),
            // mgmtd restarts from its KV and rebuilds liveness from heartbeats.
            5 => {
                sim.crash(MGMTD);
                self.log.push(format!("{now:?}: crash mgmtd, restart at {until:?}"));
                self.current = Some(Fault::MgmtdDown { until });
                return;
            }
            // Isolated from everyone (mgmtd, peers, the client).
            1 => (others.into_iter().chain([MGMTD.to_owned(), "client".to_owned()]).collect(), false),
            // Cut off from mgmtd only: its lease runs out while clients and peers still reach it.
            2 => (vec![MGMTD.to_owned()], false),
            // Cut off from one peer: replication to it fails while mgmtd sees both alive.
            3 => (vec![others[self.rng.below(others.len() as u64) as usize].clone()], false),
            // Its links stall: messages wait and arrive late, in a burst.
            _ => (others.into_iter().chain([MGMTD.to_owned()]).collect(), true),
        };
        for peer in &b {
            if held {
                sim.hold(host.as_str(), peer.as_str());
            } else {
                sim.partition(host.as_str(), peer.as_str());
            }
        }
        let what = if held { "hold" } else { "partition" };
        self.log.push(format!("{now:?}: {what} {host} from {b:?} until {until:?}"));
        self.current = Some(Fault::Cut { a: host, b, until, held });
    }

    fn end_fault(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration) {
        match self.current.take() {
            Some(Fault::Down { node, .. }) => {
                self.incarnation[node] += 1;
                self.doomed[node] = false;
                sim.bounce(storage_host(node));
                self.log.push(format!("{now:?}: restart {}", storage_host(node)));
            }
            Some(Fault::MgmtdDown { .. }) => {
                sim.bounce(MGMTD);
                self.log.push(format!("{now:?}: restart mgmtd"));
            }
            Some(Fault::Cut { a, b, held, .. }) => {
                for peer in &b {
                    if held {
                        sim.release(a.as_str(), peer.as_str());
                    } else {
                        sim.repair(a.as_str(), peer.as_str());
                    }
                }
                self.log.push(format!("{now:?}: reconnect {a}"));
            }
            None => {}
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
