//! The cluster as mgmtd sees it: durable records mirrored in memory, plus liveness.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use ember_kv::{Transaction, TxnKv};
use ember_proto::mgmtd::{
    ChainInfo, ChainTableInfo, ClientSessionInfo, HeartbeatReq, NodeInfo, RegisterNodeReq, RoutingInfo, TargetInfo,
    TargetReport,
};
use ember_types::{LocalState, NodeKind, ReplicationMode, TargetState};
use prost::Message;

use crate::records::{self, ChainRecord, ChainTableRecord, NodeRecord, TargetRecord};
use crate::transition;
use crate::MgmtdError;

/// The chain table new chains join and new files take chains from.
pub const DEFAULT_TABLE: u32 = 1;

#[derive(Clone, Debug)]
pub struct MgmtdOptions {
    pub heartbeat_timeout: Duration,
    pub client_session_timeout: Duration,
    pub auto_create_chains: bool,
    pub replication_mode: ReplicationMode,
}

struct Node {
    record: NodeRecord,
    last_heartbeat: Instant,
    alive: bool,
    heartbeat_seq: u64,
}

struct Target {
    record: TargetRecord,
    report: TargetReport,
    /// From the node's last heartbeat; `None` until it reports after a (mgmtd) restart.
    local: Option<LocalState>,
}

struct ClientSession {
    description: String,
    extended: Instant,
}

#[derive(Default)]
struct Inner {
    routing_version: u64,
    nodes: BTreeMap<u32, Node>,
    targets: BTreeMap<u32, Target>,
    chains: BTreeMap<u32, ChainRecord>,
    tables: BTreeMap<u32, ChainTableRecord>,
    sessions: HashMap<u64, ClientSession>,
}

pub struct ClusterState {
    kv: Arc<dyn TxnKv>,
    options: MgmtdOptions,
    started: Instant,
    inner: Mutex<Inner>,
}

/// Writes queued while the in-memory state changes, committed as one transaction.
#[derive(Default)]
struct Batch {
    puts: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Batch {
    fn put<M: Message>(&mut self, key: Vec<u8>, m: &M) {
        self.puts.push((key, m.encode_to_vec()));
    }
}

impl ClusterState {
    /// Loads durable state. Known nodes start alive with a fresh deadline: after a mgmtd restart
    /// they get one heartbeat timeout to call in before their targets go offline.
    pub fn load(kv: Arc<dyn TxnKv>, options: MgmtdOptions) -> Result<Self, MgmtdError> {
        let mut inner = Inner::default();
        let now = Instant::now();
        ember_kv::run(kv.as_ref(), |txn| -> Result<(), MgmtdError> {
            inner = Inner::default();
            inner.routing_version = read_u64(txn, records::ROUTING_VERSION)?;
            for (k, v) in scan_prefix(txn, records::NODE)? {
                let record: NodeRecord = records::decode(&k, &v)?;
                let node = Node { record, last_heartbeat: now, alive: true, heartbeat_seq: 0 };
                inner.nodes.insert(records::id_of(&k)?, node);
            }
            for (k, v) in scan_prefix(txn, records::TARGET)? {
                let record: TargetRecord = records::decode(&k, &v)?;
                inner.targets.insert(records::id_of(&k)?, Target { record, report: TargetReport::default(), local: None });
            }
            for (k, v) in scan_prefix(txn, records::CHAIN)? {
                inner.chains.insert(records::id_of(&k)?, records::decode(&k, &v)?);
            }
            for (k, v) in scan_prefix(txn, records::TABLE)? {
                inner.tables.insert(records::id_of(&k)?, records::decode(&k, &v)?);
            }
            Ok(())
        })?;
        Ok(ClusterState { kv, options, started: now, inner: Mutex::new(inner) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a node (new or returning) and its targets; returns the node id and target ids.
    pub fn register(&self, req: &RegisterNodeReq) -> Result<(u32, Vec<u32>), MgmtdError> {
        let kind = NodeKind::from_u8(req.kind as u8)
            .ok_or_else(|| MgmtdError::Invalid(format!("unknown node kind {}", req.kind)))?;
        if req.address.is_empty() {
            return Err(MgmtdError::Invalid("a node must register with its address".into()));
        }
        let mut inner = self.lock();
        let mut batch = Batch::default();
        let node_id = match req.node_id {
            0 => inner.nodes.keys().next_back().map_or(1, |id| id + 1),
            id => id,
        };
        if kind != NodeKind::Storage && !req.target_ids.is_empty() {
            return Err(MgmtdError::Invalid("only storage nodes have targets".into()));
        }
        let record = NodeRecord { kind: kind.to_u8().into(), address: req.address.clone(), hostname: req.hostname.clone() };
        batch.put(records::key(records::NODE, node_id), &record);
        let mut target_ids = Vec::with_capacity(req.target_ids.len());
        for &t in &req.target_ids {
            target_ids.push(self.register_target(&mut inner, &mut batch, node_id, t)?);
        }
        let node = Node { record, last_heartbeat: Instant::now(), alive: true, heartbeat_seq: 0 };
        inner.nodes.insert(node_id, node);
        // A (re)starting node says what its targets are worth in its next heartbeat.
        for t in inner.targets.values_mut().filter(|t| t.record.node_id == node_id) {
            t.local = None;
        }
        if req.node_id != 0 {
            demote_restarted(&mut inner, &mut batch, node_id);
        }
        self.bump_routing(&mut inner, &mut batch);
        self.commit(batch)?;
        tracing::info!(node_id, kind = kind.name(), address = %req.address, targets = ?target_ids, "node registered");
        Ok((node_id, target_ids))
    }

    fn register_target(&self, inner: &mut Inner, batch: &mut Batch, node_id: u32, id: u32) -> Result<u32, MgmtdError> {
        if id != 0 {
            return match inner.targets.get(&id) {
                Some(t) if t.record.node_id == node_id => Ok(id),
                Some(t) => Err(MgmtdError::Invalid(format!("target {id} belongs to node {}", t.record.node_id))),
                None => Err(MgmtdError::Invalid(format!("target {id} is unknown to this cluster"))),
            };
        }
        let id = inner.targets.keys().next_back().map_or(1, |t| t + 1);
        // A new target holds no data, so a chain of its own can serve at once.
        let mut record = TargetRecord { node_id, chain_id: 0, state: TargetState::Serving.to_u8().into() };
        if self.options.auto_create_chains {
            record.chain_id = create_chain(inner, batch, vec![id]);
        }
        batch.put(records::key(records::TARGET, id), &record);
        inner.targets.insert(id, Target { record, report: TargetReport::default(), local: None });
        Ok(id)
    }

    /// Builds a chain from targets that belong to no chain yet; appends it to the default table.
    pub fn create_chain(&self, targets: &[u32]) -> Result<u32, MgmtdError> {
        let mut inner = self.lock();
        if targets.is_empty() {
            return Err(MgmtdError::Invalid("a chain needs at least one target".into()));
        }
        let mut nodes = Vec::new();
        for t in targets {
            let target = inner.targets.get(t).ok_or_else(|| MgmtdError::Invalid(format!("target {t} is unknown")))?;
            if target.record.chain_id != 0 {
                return Err(MgmtdError::Invalid(format!("target {t} is already in chain {}", target.record.chain_id)));
            }
            if nodes.contains(&target.record.node_id) {
                return Err(MgmtdError::Invalid(format!("two targets of node {} in one chain", target.record.node_id)));
            }
            nodes.push(target.record.node_id);
        }
        let mut batch = Batch::default();
        let id = create_chain(&mut inner, &mut batch, targets.to_vec());
        for t in targets {
            if let Some(target) = inner.targets.get_mut(t) {
                target.record.chain_id = id;
                target.record.state = TargetState::Serving.to_u8().into();
                batch.put(records::key(records::TARGET, *t), &target.record);
            }
        }
        self.bump_routing(&mut inner, &mut batch);
        self.commit(batch)?;
        tracing::info!(chain = id, ?targets, "chain created");
        Ok(id)
    }

    /// Takes a target out of service by hand; it must sync before it serves again. The last
    /// serving member of a chain is refused: nothing could bring it back.
    /// Takes `target` out of its chain; `chain_version` 0 is unconditional, any other must be
    /// the chain's current version.
    pub fn offline_target(&self, target: u32, chain_version: u64) -> Result<(), MgmtdError> {
        let mut inner = self.lock();
        let chain_id = inner
            .targets
            .get(&target)
            .map(|t| t.record.chain_id)
            .ok_or_else(|| MgmtdError::Invalid(format!("target {target} is unknown")))?;
        let current = inner.chains.get(&chain_id).map_or(0, |c| c.version);
        if chain_version != 0 && chain_version != current {
            return Err(MgmtdError::Stale(format!("chain {chain_id} is at version {current}, not {chain_version}")));
        }
        if !others_serving(&inner, chain_id, target) {
            return Err(MgmtdError::Invalid(format!("target {target} is the last serving member of chain {chain_id}")));
        }
        let mut batch = Batch::default();
        if let Some(t) = inner.targets.get_mut(&target) {
            t.record.state = TargetState::Offline.to_u8().into();
            // Its node must report again (as fenced) before it may come back.
            t.local = None;
            batch.put(records::key(records::TARGET, target), &t.record);
        }
        update_chain(&mut inner, &mut batch, chain_id);
        self.bump_routing(&mut inner, &mut batch);
        self.commit(batch)
    }

    /// Records a heartbeat. A node mgmtd does not know must register again.
    pub fn heartbeat(&self, req: &HeartbeatReq) -> Result<u64, MgmtdError> {
        let mut inner = self.lock();
        let node = inner.nodes.get_mut(&req.node_id).ok_or(MgmtdError::UnknownNode(req.node_id))?;
        if req.seq != 0 && req.seq < node.heartbeat_seq {
            return Ok(inner.routing_version);
        }
        node.heartbeat_seq = req.seq;
        node.last_heartbeat = Instant::now();
        if !node.alive {
            tracing::info!(node_id = req.node_id, "node is back");
        }
        node.alive = true;
        for report in &req.targets {
            if let Some(t) = inner.targets.get_mut(&report.target_id) {
                if t.record.node_id == req.node_id {
                    t.report = report.clone();
                    t.local = Some(LocalState::from_u8(report.local_state as u8).unwrap_or(LocalState::UpToDate));
                }
            }
        }
        self.update_chains(&mut inner)?;
        Ok(inner.routing_version)
    }

    /// Declares nodes dead whose heartbeats stopped.
    pub fn check_liveness(&self) -> Result<(), MgmtdError> {
        let mut inner = self.lock();
        let now = Instant::now();
        let expired: Vec<u32> = inner
            .nodes
            .iter()
            .filter(|(_, n)| n.alive && now.duration_since(n.last_heartbeat) > self.options.heartbeat_timeout)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        for id in expired {
            tracing::warn!(node_id = id, "node missed its heartbeats; marking it dead");
            if let Some(n) = inner.nodes.get_mut(&id) {
                n.alive = false;
            }
        }
        let mut batch = Batch::default();
        self.bump_routing(&mut inner, &mut batch);
        self.commit(batch)?;
        self.update_chains(&mut inner)
    }

    /// Applies the state machine to every chain; persists and publishes what changed.
    fn update_chains(&self, inner: &mut Inner) -> Result<(), MgmtdError> {
        let mut batch = Batch::default();
        let ids: Vec<u32> = inner.chains.keys().copied().collect();
        for id in ids {
            update_chain(inner, &mut batch, id);
        }
        if batch.puts.is_empty() {
            return Ok(());
        }
        self.bump_routing(inner, &mut batch);
        self.commit(batch)
    }

    fn bump_routing(&self, inner: &mut Inner, batch: &mut Batch) {
        inner.routing_version += 1;
        batch.puts.push((records::ROUTING_VERSION.to_vec(), inner.routing_version.to_le_bytes().to_vec()));
    }

    fn commit(&self, batch: Batch) -> Result<(), MgmtdError> {
        ember_kv::run(self.kv.as_ref(), |txn| -> Result<(), MgmtdError> {
            for (k, v) in &batch.puts {
                txn.set(k, v);
            }
            Ok(())
        })
    }

    /// The routing info, or `None` when the caller already has the current version.
    pub fn routing(&self, known_version: u64) -> Option<RoutingInfo> {
        let inner = self.lock();
        if known_version == inner.routing_version && known_version != 0 {
            return None;
        }
        Some(build_routing(&inner, self.options.replication_mode))
    }

    pub fn extend_session(&self, client_id: u64, description: String) {
        let mut inner = self.lock();
        inner.sessions.insert(client_id, ClientSession { description, extended: Instant::now() });
    }

    /// Live client sessions, and whether mgmtd has been up long enough for the list to be whole.
    pub fn client_sessions(&self) -> (Vec<ClientSessionInfo>, bool) {
        let mut inner = self.lock();
        let timeout = self.options.client_session_timeout;
        inner.sessions.retain(|_, s| s.extended.elapsed() <= timeout);
        let list = inner
            .sessions
            .iter()
            .map(|(id, s)| ClientSessionInfo {
                client_id: *id,
                description: s.description.clone(),
                last_extended_ms: s.extended.elapsed().as_millis() as u64,
            })
            .collect();
        (list, self.started.elapsed() > timeout)
    }

    /// The primary lease granted with each heartbeat: a margin below the heartbeat timeout, so
    /// a node's lease has run out before mgmtd can declare it dead and appoint another primary.
    pub fn lease(&self) -> Duration {
        self.options.heartbeat_timeout * 3 / 4
    }

    /// How often liveness is re-evaluated: a dead node is declared within a twentieth of the
    /// heartbeat timeout after its deadline, since a new primary waits for that.
    pub fn liveness_tick(&self) -> Duration {
        self.options.heartbeat_timeout / 20
    }

    pub fn session_timeout(&self) -> Duration {
        self.options.client_session_timeout
    }
}

/// Adds a chain of `targets` to the default table; returns its id.
fn create_chain(inner: &mut Inner, batch: &mut Batch, targets: Vec<u32>) -> u32 {
    let id = inner.chains.keys().next_back().map_or(1, |c| c + 1);
    let chain = ChainRecord { version: 1, targets };
    batch.put(records::key(records::CHAIN, id), &chain);
    inner.chains.insert(id, chain);
    let table = inner.tables.entry(DEFAULT_TABLE).or_default();
    table.version += 1;
    table.chains.push(id);
    batch.put(records::key(records::TABLE, DEFAULT_TABLE), table);
    id
}

fn build_routing(inner: &Inner, mode: ReplicationMode) -> RoutingInfo {
    let nodes = inner
        .nodes
        .iter()
        .map(|(id, n)| NodeInfo {
            node_id: *id,
            kind: n.record.kind,
            address: n.record.address.clone(),
            hostname: n.record.hostname.clone(),
            alive: n.alive,
            last_heartbeat_ms: n.last_heartbeat.elapsed().as_millis() as u64,
        })
        .collect();
    let targets = inner
        .targets
        .iter()
        .map(|(id, t)| {
            TargetInfo {
                target_id: *id,
                node_id: t.record.node_id,
                state: t.record.public_state().to_u8().into(),
                local_state: t.local.map_or(0, |l| l.to_u8().into()),
                chain_id: t.record.chain_id,
                used_bytes: t.report.used_bytes,
                capacity_bytes: t.report.capacity_bytes,
                free_bytes: t.report.free_bytes,
                chunks: t.report.chunks,
            }
        })
        .collect();
    let chains = inner
        .chains
        .iter()
        .map(|(id, c)| ChainInfo { chain_id: *id, version: c.version, targets: c.targets.clone() })
        .collect();
    let chain_tables = inner
        .tables
        .iter()
        .map(|(id, t)| ChainTableInfo {
            table_id: *id,
            version: t.version,
            chains: t.chains.clone(),
            mode: mode.to_u8().into(),
        })
        .collect();
    RoutingInfo { version: inner.routing_version, nodes, targets, chains, chain_tables }
}

/// A serving target whose process restarted may have lost changes in flight that its chain
/// peers hold: unless it is its chain's only serving member, it must sync before serving again.
fn demote_restarted(inner: &mut Inner, batch: &mut Batch, node_id: u32) {
    let restarted: Vec<(u32, u32)> = inner
        .targets
        .iter()
        .filter(|(_, t)| t.record.node_id == node_id && t.record.chain_id != 0)
        .filter(|(_, t)| t.record.public_state() == TargetState::Serving)
        .map(|(id, t)| (*id, t.record.chain_id))
        .collect();
    for (target, chain_id) in restarted {
        if !others_serving(inner, chain_id, target) {
            continue;
        }
        tracing::info!(target, chain = chain_id, "serving target restarted; it syncs before serving again");
        if let Some(t) = inner.targets.get_mut(&target) {
            t.record.state = TargetState::Offline.to_u8().into();
            batch.put(records::key(records::TARGET, target), &t.record);
        }
        update_chain(inner, batch, chain_id);
    }
}

/// Runs the state machine over one chain's members in chain order, so that of two members
/// failing together exactly one becomes LASTSRV; then orders members by state.
fn update_chain(inner: &mut Inner, batch: &mut Batch, chain_id: u32) {
    let Some(chain) = inner.chains.get(&chain_id).cloned() else { return };
    let mut changed = false;
    for &t in &chain.targets {
        let Some(input) = member_input(inner, t, chain.version) else { continue };
        let Some(current) = inner.targets.get(&t).map(|x| x.record.public_state()) else { continue };
        let next = transition::next_state(current, input, others_serving(inner, chain_id, t));
        if next != current {
            tracing::info!(target = t, chain = chain_id, from = current.name(), to = next.name(), "target state");
            if let Some(target) = inner.targets.get_mut(&t) {
                target.record.state = next.to_u8().into();
                batch.put(records::key(records::TARGET, t), &target.record);
            }
            changed = true;
        }
    }
    let mut order = chain.targets.clone();
    order.sort_by_key(|t| inner.targets.get(t).map_or(u8::MAX, |x| transition::rank(x.record.public_state())));
    if changed || order != chain.targets {
        let updated = ChainRecord { version: chain.version + 1, targets: order };
        batch.put(records::key(records::CHAIN, chain_id), &updated);
        inner.chains.insert(chain_id, updated);
    }
}

/// Whether a member of the chain other than `target` is SERVING.
fn others_serving(inner: &Inner, chain_id: u32, target: u32) -> bool {
    inner.chains.get(&chain_id).is_some_and(|c| {
        c.targets.iter().any(|&o| {
            o != target && inner.targets.get(&o).is_some_and(|x| x.record.public_state() == TargetState::Serving)
        })
    })
}

/// What the state machine gets for one member: `None` = no news (its node is alive but has
/// not reported since mgmtd started), `Some(None)` = its node is dead.
///
/// A SYNCING member's "up to date" counts only if its last sync ran at the chain's current
/// version: a sync by a deposed primary, or one that a later change overtook, may have missed
/// changes (a node cut off from mgmtd may also still say "up to date" from before it was
/// taken out). The current primary syncs it again at the current version.
fn member_input(inner: &Inner, target: u32, chain_version: u64) -> Option<Option<LocalState>> {
    let t = inner.targets.get(&target)?;
    let stale = t.record.public_state() == TargetState::Syncing && t.report.synced_chain_version != chain_version;
    match inner.nodes.get(&t.record.node_id) {
        Some(n) if n.alive && stale && t.local == Some(LocalState::UpToDate) => Some(Some(LocalState::Online)),
        Some(n) if n.alive => t.local.map(Some),
        _ => Some(None),
    }
}

fn read_u64(txn: &mut dyn Transaction, key: &[u8]) -> Result<u64, MgmtdError> {
    match txn.get(key)? {
        None => Ok(0),
        Some(v) => {
            let b: [u8; 8] = v.as_slice().try_into().map_err(|_| MgmtdError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: format!("expected 8 bytes, found {}", v.len()),
            })?;
            Ok(u64::from_le_bytes(b))
        }
    }
}

fn scan_prefix(txn: &mut dyn Transaction, prefix: &[u8; 4]) -> Result<Vec<ember_kv::KeyValue>, MgmtdError> {
    Ok(txn.scan(prefix, &records::prefix_end(prefix), 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(timeout_ms: u64) -> MgmtdOptions {
        MgmtdOptions {
            heartbeat_timeout: Duration::from_millis(timeout_ms),
            client_session_timeout: Duration::from_millis(timeout_ms),
            auto_create_chains: true,
            replication_mode: ReplicationMode::FanOut,
        }
    }

    fn storage(node_id: u32, targets: Vec<u32>) -> RegisterNodeReq {
        RegisterNodeReq {
            node_id,
            kind: NodeKind::Storage.to_u8().into(),
            address: "127.0.0.1:1".into(),
            target_ids: targets,
            hostname: "h".into(),
        }
    }

    fn target_states(r: &RoutingInfo) -> Vec<u32> {
        r.targets.iter().map(|t| t.state).collect()
    }

    #[test]
    fn registration_creates_chains_and_survives_reload() {
        let kv: Arc<dyn TxnKv> = Arc::new(ember_kv::MemKv::new());
        let st = ClusterState::load(kv.clone(), options(1000)).unwrap();
        let (node, targets) = st.register(&storage(0, vec![0, 0])).unwrap();
        assert_eq!((node, targets.clone()), (1, vec![1, 2]));
        let r = st.routing(0).unwrap();
        assert_eq!(r.chains.len(), 2);
        assert_eq!(r.chain_tables[0].chains, vec![1, 2]);
        assert!(st.routing(r.version).is_none());

        let again = ClusterState::load(kv, options(1000)).unwrap();
        let r2 = again.routing(0).unwrap();
        assert_eq!(r2.version, r.version);
        assert_eq!(r2.chains, r.chains);
        // A returning node keeps its ids; a foreign target id is refused.
        assert_eq!(again.register(&storage(1, targets)).unwrap(), (1, vec![1, 2]));
        assert!(again.register(&storage(2, vec![1])).is_err());
    }

    #[test]
    fn missed_heartbeats_take_targets_offline_and_bump_chain_versions() {
        let kv: Arc<dyn TxnKv> = Arc::new(ember_kv::MemKv::new());
        let st = ClusterState::load(kv, options(50)).unwrap();
        st.register(&storage(0, vec![0])).unwrap();
        let before = st.routing(0).unwrap();
        assert_eq!(target_states(&before), vec![state(TargetState::Serving)]);
        std::thread::sleep(Duration::from_millis(80));
        st.check_liveness().unwrap();
        let after = st.routing(0).unwrap();
        // The only member keeps its data: LASTSRV, not OFFLINE.
        assert_eq!(target_states(&after), vec![state(TargetState::LastServing)]);
        assert!(after.version > before.version);
        assert_eq!(after.chains[0].version, before.chains[0].version + 1);
        beat(&st, 1, 1, &[(1, LocalState::Online)]);
        assert_eq!(target_states(&st.routing(0).unwrap()), vec![state(TargetState::Serving)]);
    }

    /// Two storage nodes with one target each, in one chain [1, 2].
    fn two_node_chain(heartbeat_timeout_ms: u64) -> ClusterState {
        let mut opts = options(heartbeat_timeout_ms);
        opts.auto_create_chains = false;
        let st = ClusterState::load(Arc::new(ember_kv::MemKv::new()), opts).unwrap();
        st.register(&storage(0, vec![0])).unwrap();
        st.register(&storage(0, vec![0])).unwrap();
        assert_eq!(st.create_chain(&[1, 2]).unwrap(), 1);
        st
    }

    fn state(s: TargetState) -> u32 {
        s.to_u8().into()
    }

    fn beat(st: &ClusterState, node: u32, seq: u64, targets: &[(u32, LocalState)]) {
        let targets = targets
            .iter()
            .map(|(t, l)| TargetReport { target_id: *t, local_state: l.to_u8().into(), ..Default::default() })
            .collect();
        st.heartbeat(&HeartbeatReq { node_id: node, seq, targets, ..Default::default() }).unwrap();
    }

    fn chain_of(st: &ClusterState) -> (u64, Vec<u32>) {
        let r = st.routing(0).unwrap();
        (r.chains[0].version, r.chains[0].targets.clone())
    }

    fn state_of(st: &ClusterState, target: u32) -> TargetState {
        let r = st.routing(0).unwrap();
        let t = r.targets.iter().find(|t| t.target_id == target).unwrap();
        TargetState::from_u8(t.state as u8).unwrap()
    }

    #[test]
    fn a_failed_member_moves_to_the_end_and_syncs_before_serving_again() {
        let st = two_node_chain(50);
        assert!(st.create_chain(&[2]).is_err(), "a target in two chains");
        let (v0, order) = chain_of(&st);
        assert_eq!(order, vec![1, 2]);

        // Node 1 (the primary) dies; node 2 keeps beating.
        for seq in 1..5 {
            beat(&st, 2, seq, &[(2, LocalState::UpToDate)]);
            std::thread::sleep(Duration::from_millis(20));
        }
        st.check_liveness().unwrap();
        let (v1, order) = chain_of(&st);
        assert_eq!(order, vec![2, 1], "the failed primary moves to the end");
        assert!(v1 > v0);
        assert_eq!(state_of(&st, 1), TargetState::Offline);
        assert_eq!(state_of(&st, 2), TargetState::Serving);

        // It comes back needing a sync: WAITING, then SYNCING, then SERVING once up to date.
        beat(&st, 1, 10, &[(1, LocalState::Online)]);
        assert_eq!(state_of(&st, 1), TargetState::Waiting);
        beat(&st, 1, 11, &[(1, LocalState::Online)]);
        assert_eq!(state_of(&st, 1), TargetState::Syncing);
        // "Up to date" from before it was taken out (it never saw that), or from a sync at an
        // older chain version, does not count: only a sync by the current primary does.
        beat(&st, 1, 12, &[(1, LocalState::UpToDate)]);
        assert_eq!(state_of(&st, 1), TargetState::Syncing);
        let synced = TargetReport {
            target_id: 1,
            local_state: LocalState::UpToDate.to_u8().into(),
            synced_chain_version: chain_of(&st).0 - 1,
            ..Default::default()
        };
        st.heartbeat(&HeartbeatReq { node_id: 1, seq: 13, targets: vec![synced.clone()], ..Default::default() }).unwrap();
        assert_eq!(state_of(&st, 1), TargetState::Syncing);
        let synced = TargetReport { synced_chain_version: chain_of(&st).0, ..synced };
        st.heartbeat(&HeartbeatReq { node_id: 1, seq: 14, targets: vec![synced], ..Default::default() }).unwrap();
        assert_eq!(state_of(&st, 1), TargetState::Serving);
        assert_eq!(chain_of(&st).1, vec![2, 1], "the new primary stays primary");
    }

    #[test]
    fn a_restarted_serving_member_must_sync_unless_it_is_the_only_one() {
        let st = two_node_chain(10_000);
        // Fresh members report ONLINE until promoted; that is no reason to leave the chain.
        beat(&st, 1, 1, &[(1, LocalState::Online)]);
        beat(&st, 2, 1, &[(2, LocalState::Online)]);
        assert_eq!((state_of(&st, 1), state_of(&st, 2)), (TargetState::Serving, TargetState::Serving));
        // Node 1's process restarts: it registers again with its ids.
        st.register(&storage(1, vec![1])).unwrap();
        assert_eq!(state_of(&st, 1), TargetState::Offline);
        assert_eq!(chain_of(&st).1, vec![2, 1]);
        // Node 2 restarts too, now the only serving member: it keeps serving.
        st.register(&storage(2, vec![2])).unwrap();
        assert_eq!(state_of(&st, 2), TargetState::Serving);
    }

    #[test]
    fn offline_by_hand_refuses_the_last_serving_member() {
        let st = two_node_chain(10_000);
        st.offline_target(1, 0).unwrap();
        assert_eq!(state_of(&st, 1), TargetState::Offline);
        assert_eq!(chain_of(&st).1, vec![2, 1]);
        assert!(st.offline_target(2, 0).is_err());
    }

    #[test]
    fn a_drop_request_from_an_older_chain_version_is_refused() {
        let st = two_node_chain(10_000);
        let (v, _) = chain_of(&st);
        // A primary that was deposed meanwhile acts on an old version: it may not drop members.
        assert!(matches!(st.offline_target(2, v + 1), Err(MgmtdError::Stale(_))));
        assert_eq!(state_of(&st, 2), TargetState::Serving);
        st.offline_target(2, v).unwrap();
        assert_eq!(state_of(&st, 2), TargetState::Offline);
    }

    #[test]
    fn heartbeat_from_unknown_node_asks_for_registration() {
        let st = ClusterState::load(Arc::new(ember_kv::MemKv::new()), options(1000)).unwrap();
        let err = st.heartbeat(&HeartbeatReq { node_id: 42, ..Default::default() }).unwrap_err();
        assert!(matches!(err, MgmtdError::UnknownNode(42)));
    }

    #[test]
    fn client_sessions_expire() {
        let st = ClusterState::load(Arc::new(ember_kv::MemKv::new()), options(40)).unwrap();
        st.extend_session(7, "mount".into());
        let (list, _) = st.client_sessions();
        assert_eq!(list.len(), 1);
        std::thread::sleep(Duration::from_millis(60));
        let (list, complete) = st.client_sessions();
        assert!(list.is_empty());
        assert!(complete);
    }
}
