//! A routing snapshot indexed for lookups: which node serves a target, which targets form a
//! chain, which chains a table lists.

use std::collections::HashMap;

use ember_types::{ChainId, ChainTableId, NodeId, NodeKind, ReplicationMode, TargetId, TargetState};

use crate::mgmtd::{ChainInfo, NodeInfo, RoutingInfo, TargetInfo};

#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    pub info: RoutingInfo,
    nodes: HashMap<u32, usize>,
    targets: HashMap<u32, usize>,
    chains: HashMap<u32, usize>,
}

impl RoutingTable {
    pub fn new(info: RoutingInfo) -> Self {
        let index = |ids: Vec<u32>| ids.into_iter().enumerate().map(|(i, id)| (id, i)).collect();
        let nodes = index(info.nodes.iter().map(|n| n.node_id).collect());
        let targets = index(info.targets.iter().map(|t| t.target_id).collect());
        let chains = index(info.chains.iter().map(|c| c.chain_id).collect());
        RoutingTable { info, nodes, targets, chains }
    }

    pub fn version(&self) -> u64 {
        self.info.version
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id.0).map(|&i| &self.info.nodes[i])
    }

    pub fn target(&self, id: TargetId) -> Option<&TargetInfo> {
        self.targets.get(&id.0).map(|&i| &self.info.targets[i])
    }

    pub fn chain(&self, id: ChainId) -> Option<&ChainInfo> {
        self.chains.get(&id.0).map(|&i| &self.info.chains[i])
    }

    /// Address of the node that holds `target`.
    pub fn target_address(&self, target: TargetId) -> Option<&str> {
        let t = self.target(target)?;
        self.node(NodeId(t.node_id)).map(|n| n.address.as_str())
    }

    /// Members of `chain` in chain order that are SERVING.
    pub fn serving_targets(&self, chain: ChainId) -> Vec<TargetId> {
        let Some(c) = self.chain(chain) else { return Vec::new() };
        c.targets
            .iter()
            .copied()
            .filter(|t| {
                self.target(TargetId(*t))
                    .is_some_and(|ti| TargetState::from_u8(ti.state as u8) == Some(TargetState::Serving))
            })
            .map(TargetId)
            .collect()
    }

    pub fn table_chains(&self, table: ChainTableId) -> Vec<ChainId> {
        self.info
            .chain_tables
            .iter()
            .find(|t| t.table_id == table.0)
            .map(|t| t.chains.iter().copied().map(ChainId).collect())
            .unwrap_or_default()
    }

    /// How the chain replicates: the mode of the table that lists it.
    pub fn replication_mode(&self, chain: ChainId) -> ReplicationMode {
        self.info
            .chain_tables
            .iter()
            .find(|t| t.chains.contains(&chain.0))
            .map_or(ReplicationMode::FanOut, |t| ReplicationMode::from_u8(t.mode as u8))
    }

    /// Alive nodes of one kind, in id order.
    pub fn alive_nodes(&self, kind: NodeKind) -> Vec<&NodeInfo> {
        let mut v: Vec<&NodeInfo> = self
            .info
            .nodes
            .iter()
            .filter(|n| n.alive && NodeKind::from_u8(n.kind as u8) == Some(kind))
            .collect();
        v.sort_by_key(|n| n.node_id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmtd::ChainTableInfo;

    #[test]
    fn resolves_targets_to_addresses_and_filters_serving() {
        let info = RoutingInfo {
            version: 3,
            nodes: vec![NodeInfo { node_id: 7, kind: 2, address: "127.0.0.1:9".into(), alive: true, ..Default::default() }],
            targets: vec![
                TargetInfo { target_id: 1, node_id: 7, state: TargetState::Serving.to_u8().into(), chain_id: 10, ..Default::default() },
                TargetInfo { target_id: 2, node_id: 7, state: TargetState::Offline.to_u8().into(), chain_id: 10, ..Default::default() },
            ],
            chains: vec![ChainInfo { chain_id: 10, version: 1, targets: vec![2, 1] }],
            chain_tables: vec![ChainTableInfo { table_id: 1, version: 1, chains: vec![10], mode: 1 }],
        };
        let r = RoutingTable::new(info);
        assert_eq!(r.target_address(TargetId(1)), Some("127.0.0.1:9"));
        assert_eq!(r.serving_targets(ChainId(10)), vec![TargetId(1)]);
        assert_eq!(r.table_chains(ChainTableId(1)), vec![ChainId(10)]);
        assert_eq!(r.replication_mode(ChainId(10)), ReplicationMode::Chain);
        assert_eq!(r.replication_mode(ChainId(99)), ReplicationMode::FanOut);
        assert_eq!(r.alive_nodes(NodeKind::Storage).len(), 1);
        assert!(r.alive_nodes(NodeKind::Meta).is_empty());
    }
}
