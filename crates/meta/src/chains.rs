//! Where new files' chains and the file system's capacity come from.
//!
//! In a cluster that is the routing info from mgmtd (chain table 1, target space reports); in
//! tests a fixed list. Layouts take chains round-robin from a counter that starts at a random
//! offset per process, as 3FS does, so that several meta servers do not all start on chain 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ember_net::routing::RoutingWatcher;
use ember_types::{ChainId, ChainTableId, Layout};

use crate::MetaError;

/// Space of the file system in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    pub capacity: u64,
    pub free: u64,
    pub used: u64,
}

pub trait ChainSource: Send + Sync {
    /// Chains new files may be placed on, in table order.
    fn chains(&self) -> Vec<ChainId>;
    fn space(&self) -> Space;
}

/// A fixed chain list with a fixed space report (tests, single-node setups).
pub struct FixedChains {
    pub chains: Vec<ChainId>,
    pub space: Space,
}

impl FixedChains {
    pub fn new(chains: Vec<ChainId>) -> Self {
        FixedChains {
            chains,
            space: Space::default(),
        }
    }
}

impl ChainSource for FixedChains {
    fn chains(&self) -> Vec<ChainId> {
        self.chains.clone()
    }

    fn space(&self) -> Space {
        self.space
    }
}

/// The chain table new files are placed on.
pub const DEFAULT_CHAIN_TABLE: ChainTableId = ChainTableId(1);

/// Chains and space from the routing info mgmtd publishes.
pub struct RoutingChains(pub Arc<RoutingWatcher>);

impl ChainSource for RoutingChains {
    fn chains(&self) -> Vec<ChainId> {
        self.0.get().table_chains(DEFAULT_CHAIN_TABLE)
    }

    fn space(&self) -> Space {
        space_of(&self.0.get())
    }
}

/// What files can use: per chain, the smallest capacity and free space among its members
/// (every replica holds every byte) and the largest usage, summed over the chains. Targets that
/// share one file system are still counted once each.
fn space_of(table: &ember_proto::routing::RoutingTable) -> Space {
    table.info.chains.iter().fold(Space::default(), |s, chain| {
        let members: Vec<_> = chain.targets.iter().filter_map(|t| table.target(ember_types::TargetId(*t))).collect();
        let min = |f: fn(&ember_proto::mgmtd::TargetInfo) -> u64| members.iter().map(|t| f(t)).min().unwrap_or(0);
        Space {
            capacity: s.capacity.saturating_add(min(|t| t.capacity_bytes)),
            free: s.free.saturating_add(min(|t| t.free_bytes)),
            used: s.used.saturating_add(members.iter().map(|t| t.used_bytes).max().unwrap_or(0)),
        }
    })
}

/// Builds layouts for new files: `stripe` consecutive chains of the table, round-robin.
pub struct ChainPicker {
    source: Arc<dyn ChainSource>,
    next: AtomicU64,
    chunk_size: u32,
    stripe: u32,
}

impl ChainPicker {
    pub fn new(source: Arc<dyn ChainSource>, chunk_size: u32, stripe: u32) -> Self {
        let start = crate::ids::random_u64() % 1_000_000;
        ChainPicker {
            source,
            next: AtomicU64::new(start),
            chunk_size,
            stripe: stripe.max(1),
        }
    }

    pub fn source(&self) -> &Arc<dyn ChainSource> {
        &self.source
    }

    pub fn layout(&self) -> Result<Layout, MetaError> {
        let all = self.source.chains();
        if all.is_empty() {
            return Err(MetaError::Unavailable(
                "no storage chains registered yet".into(),
            ));
        }
        let n = all.len() as u64;
        let stripe = u64::from(self.stripe).min(n);
        let start = self.next.fetch_add(stripe, Ordering::Relaxed);
        let chains = (0..stripe)
            .map(|i| all[((start + i) % n) as usize])
            .collect();
        Layout::new(self.chunk_size, chains)
            .map_err(|e| MetaError::InvalidArgument(format!("configured layout: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_rotate_over_chains_and_cap_stripe() {
        let src = Arc::new(FixedChains::new((1..=5).map(ChainId).collect()));
        let p = ChainPicker::new(src, 1 << 20, 2);
        let a = p.layout().unwrap();
        let b = p.layout().unwrap();
        assert_eq!(a.chains.len(), 2);
        let next = |c: ChainId| ChainId(c.0 % 5 + 1);
        assert_eq!(a.chains[1], next(a.chains[0]));
        assert_eq!(b.chains[0], next(a.chains[1]));
        let wide = ChainPicker::new(Arc::new(FixedChains::new(vec![ChainId(7)])), 1 << 20, 4);
        assert_eq!(wide.layout().unwrap().chains, vec![ChainId(7)]);
    }

    #[test]
    fn no_chains_is_unavailable() {
        let p = ChainPicker::new(Arc::new(FixedChains::new(vec![])), 1 << 20, 4);
        let err = p.layout().unwrap_err();
        assert!(err.to_string().contains("no storage chains registered yet"));
    }

    #[test]
    fn space_counts_each_replicated_byte_once() {
        use ember_proto::mgmtd::{ChainInfo, RoutingInfo, TargetInfo};
        let target = |id, cap, free, used| TargetInfo {
            target_id: id,
            capacity_bytes: cap,
            free_bytes: free,
            used_bytes: used,
            ..Default::default()
        };
        let info = RoutingInfo {
            targets: vec![target(1, 100, 60, 40), target(2, 90, 50, 41), target(3, 10, 5, 5)],
            chains: vec![
                ChainInfo { chain_id: 1, version: 1, targets: vec![1, 2] },
                ChainInfo { chain_id: 2, version: 1, targets: vec![3] },
            ],
            ..Default::default()
        };
        let s = space_of(&ember_proto::routing::RoutingTable::new(info));
        assert_eq!((s.capacity, s.free, s.used), (100, 55, 46));
    }
}
