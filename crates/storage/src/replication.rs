//! Replication, primary side and replica side.
//!
//! The chain's primary (its first SERVING member) takes a chunk's lock, applies the change locally
//! and sends the same versioned change (a write as absolute 4 KiB block images) to every other
//! SERVING or SYNCING member in parallel; the client gets its answer once all of them hold it. A
//! member that fails is reported to mgmtd, which takes it out of the chain, and the change commits
//! without it. A member that mgmtd lets back (SYNCING), and every member when a new primary takes
//! over, is brought to the primary's state by a sync: compare chunk lists (or, when this primary's
//! term knows every chunk the member missed, only those chunks), and for each chunk that differs
//! send only the blocks whose CRC differs; remove the chunks the primary lacks. Writes wait while a
//! new primary syncs its serving members: a change its predecessor left half-replicated is thereby
//! completed or undone everywhere before anything else happens to the chunk.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use ember_net::{Response, RpcClient};
use ember_proto::mgmtd::OfflineTargetReq;
use ember_proto::routing::RoutingTable;
use ember_proto::storage::*;
use ember_types::{ChainId, ChunkId, InodeId, LocalState, ReplicationMode, Status, StatusCode, TargetId, TargetState};
use tokio::task::JoinSet;

use crate::access::Need;
use crate::service::{blocking, StorageService};
use crate::{BlockImages, ChunkEngine, ChunkInfo, RequestId};

/// How long a primary waits for mgmtd to drop a failed replica before it gives up the write.
const DROP_WAIT: Duration = Duration::from_secs(5);
const SYNC_PAGE: usize = 1024;

/// One versioned change to a chunk, as the primary built it.
#[derive(Clone, Debug)]
pub struct Change {
    pub base: u64,
    pub body: ChangeBody,
    pub request: Option<RequestId>,
}

#[derive(Clone, Debug)]
pub enum ChangeBody {
    Write(BlockImages),
    Truncate(u32),
}

impl Change {
    /// The replication request for `chunk` (as `c` names it) to `member`, and its payload.
    fn request_to(&self, c: &ChunkRef, chunk: ChunkId, chain_version: u64, member: u32) -> (ReplicateReq, Bytes) {
        let mut req = ReplicateReq {
            chunk: Some(ChunkRef { inode: chunk.inode.0, index: chunk.index, chain_id: c.chain_id, chain_version, target_id: member }),
            base_version: self.base,
            from_target: c.target_id,
            request: self.request.map(RequestRef::from),
            ..ReplicateReq::default()
        };
        match &self.body {
            ChangeBody::Write(images) => {
                match images.runs() {
                    [(first, _)] => req.first_block = *first,
                    runs => req.block_runs = runs.iter().flat_map(|&(first, n)| [first, n]).collect(),
                }
                req.chunk_len = images.len();
                req.block_crcs = images.crcs().to_vec();
                (req, images.images().clone())
            }
            ChangeBody::Truncate(len) => {
                req.truncate_to = Some(*len);
                (req, Bytes::new())
            }
        }
    }
}

/// A local target's time as primary of one chain: which members it has synced since, and at
/// which chain version.
#[derive(Debug)]
pub struct Term {
    id: u64,
    peered: HashMap<u32, u64>,
    busy: HashSet<u32>,
    /// No writes before this: a deposed primary that is still alive may serve reads until its
    /// lease runs out, and must not miss a write committed in the meantime.
    writable_after: Instant,
    /// Members out of the write set whose node lives, and since when we know: they may serve
    /// reads until their lease runs out, so nothing commits without them before that.
    left: HashMap<u32, Instant>,
    /// Per member, the chunks this term changed without it: its next sync looks at those only.
    missed: HashMap<u32, Missed>,
}

/// The chunks a term changed without one member (a change it failed or was not sent).
#[derive(Debug, Default)]
struct Missed {
    /// Each chunk with the number of the latest note of it.
    chunks: BTreeMap<ChunkId, u64>,
    notes: u64,
    /// Whether `chunks` is all the member lacks: true from its first sync in this term on,
    /// false again if the set overflowed.
    complete: bool,
    /// Bumped on every overflow, so that a sync running across one does not mark the set
    /// complete.
    overflows: u64,
}

/// Beyond this many missed chunks a member's next sync compares full listings instead.
const MAX_MISSED: usize = 1 << 18;

/// What a member's sync looks at, taken when it starts.
struct SyncPlan {
    /// The chunks to compare (the log path), or `None` to compare full listings.
    log: Option<Vec<ChunkId>>,
    /// Notes up to this one are covered by a successful sync: each was made under its chunk's
    /// lock, before or during the change it notes, and the sync copies the chunk under that
    /// lock later. A later note (the chunk changed again) stays.
    notes: u64,
    overflows: u64,
}

impl Missed {
    fn note(&mut self, chunk: ChunkId) {
        if self.chunks.len() >= MAX_MISSED {
            self.chunks.clear();
            self.complete = false;
            self.overflows += 1;
        }
        self.notes += 1;
        self.chunks.insert(chunk, self.notes);
    }

    fn plan(&self) -> SyncPlan {
        SyncPlan {
            log: self.complete.then(|| self.chunks.keys().copied().collect()),
            notes: self.notes,
            overflows: self.overflows,
        }
    }

    /// After a successful sync: what was noted before it started is covered.
    fn synced(&mut self, plan: &SyncPlan) {
        if plan.overflows != self.overflows {
            return;
        }
        self.chunks.retain(|_, note| *note > plan.notes);
        self.complete = true;
    }
}

impl Term {
    /// A serving member needs one sync per term; a syncing member needs one at its current
    /// chain version (it may have restarted and be syncing again, faster than we polled).
    fn needs_sync(&self, member: u32, state: Option<TargetState>, chain_version: u64) -> bool {
        match state {
            Some(TargetState::Serving) => !self.peered.contains_key(&member),
            Some(TargetState::Syncing) => self.peered.get(&member) != Some(&chain_version),
            _ => false,
        }
    }
}

static TERM_IDS: AtomicU64 = AtomicU64::new(1);

/// A new term waits out one lease when a member that is not serving is still alive: it may
/// have been the primary a moment ago (taken out by hand) and still hold a lease. A crashed
/// primary's node is dead, and its lease ran out before mgmtd declared it so.
fn new_term(table: &RoutingTable, chain: ChainId, lease: Duration) -> Term {
    let members = table.chain(chain).map(|c| c.targets.clone()).unwrap_or_default();
    let live_non_serving = members.iter().any(|t| state_of(table, *t) != Some(TargetState::Serving) && node_alive(table, *t));
    let wait = if live_non_serving { lease } else { Duration::ZERO };
    let now = Instant::now();
    Term {
        id: TERM_IDS.fetch_add(1, Ordering::Relaxed),
        peered: HashMap::new(),
        busy: HashSet::new(),
        writable_after: now + wait,
        // The wait above covers them.
        left: members.into_iter().filter(|t| !in_write_set(state_of(table, *t)) && node_alive(table, *t)).map(|t| (t, now)).collect(),
        missed: HashMap::new(),
    }
}

/// Whether mgmtd counts the node of `target` alive. A node it declared dead has not had a
/// heartbeat acknowledged for longer than a lease.
fn node_alive(table: &RoutingTable, target: u32) -> bool {
    table
        .target(TargetId(target))
        .and_then(|i| table.node(ember_types::NodeId(i.node_id)))
        .is_some_and(|n| n.alive)
}

fn state_of(table: &RoutingTable, target: u32) -> Option<TargetState> {
    table.target(TargetId(target)).and_then(|t| TargetState::from_u8(t.state as u8))
}

fn in_write_set(state: Option<TargetState>) -> bool {
    matches!(state, Some(TargetState::Serving | TargetState::Syncing))
}

/// The members of `c`'s chain, other than `c`'s target, that are out of the write set.
pub(crate) fn outside_write_set(table: &RoutingTable, c: &ChunkRef) -> Vec<u32> {
    let Some(chain) = table.chain(ChainId(c.chain_id)) else { return Vec::new() };
    chain.targets.iter().copied().filter(|t| *t != c.target_id && !in_write_set(state_of(table, *t))).collect()
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StorageService {
    /// Writes wait while a new primary has not yet synced every serving member.
    pub(crate) fn check_ready(&self, chain_id: u32) -> Result<(), Status> {
        let table = self.routing.get();
        let Some(chain) = table.chain(ChainId(chain_id)) else {
            return Err(Status::new(StatusCode::RoutingStale, format!("chain {chain_id} is unknown")));
        };
        let serving = table.serving_targets(ChainId(chain_id));
        let lease = self.lease_length();
        let mut terms = lock(&self.terms);
        let term = terms.entry(chain_id).or_insert_with(|| new_term(&table, ChainId(chain_id), lease));
        if Instant::now() < term.writable_after {
            return Err(Status::new(StatusCode::Busy, format!("chain {chain_id} has a new primary waiting out the old one's lease")));
        }
        let waiting: Vec<u32> = chain
            .targets
            .iter()
            .copied()
            .filter(|t| serving.first() != Some(&TargetId(*t)) && serving.contains(&TargetId(*t)))
            .filter(|t| !term.peered.contains_key(t))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        Err(Status::new(StatusCode::Busy, format!("chain {chain_id} is syncing members {waiting:?} first")))
    }

    fn lease_length(&self) -> Duration {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Reads on a replicated chain need a valid primary lease: once it has run out, mgmtd may
    /// have made another member primary, which may commit writes this node never sees.
    pub(crate) fn check_read_lease(&self, chain_id: u32) -> Result<(), Status> {
        let table = self.routing.get();
        if table.chain(ChainId(chain_id)).is_none_or(|c| c.targets.len() < 2) {
            return Ok(());
        }
        let (until, _) = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_some_and(|u| Instant::now() < u) {
            return Ok(());
        }
        Err(Status::new(StatusCode::RoutingStale, "this primary's lease from mgmtd has run out"))
    }

    /// Whether the chain replicates member after member (the 3FS baseline) rather than in parallel.
    fn chain_mode(&self, chain_id: u32) -> bool {
        self.routing.get().replication_mode(ChainId(chain_id)) == ReplicationMode::Chain
    }

    /// Applies a change here (`local`) and on every other member of the write set: in
    /// parallel, or in chain mode member after member once the local copy is durable. A
    /// failure part-way marks the chunk diverged.
    pub(crate) async fn commit_change(
        &self,
        c: &ChunkRef,
        chunk: ChunkId,
        local: impl std::future::Future<Output = Result<ChunkInfo, Status>>,
        change: Change,
    ) -> Result<ChunkInfo, Status> {
        let result = if self.chain_mode(c.chain_id) {
            match local.await {
                Ok(info) => self.fan_out(c, chunk, &change).await.map(|()| info),
                Err(e) => Err(e),
            }
        } else {
            let (local, replicas) = tokio::join!(local, self.fan_out(c, chunk, &change));
            replicas.and(local)
        };
        if let Err(e) = &result {
            tracing::debug!(%chunk, error = %e, "change failed");
            self.mark_diverged(chunk);
        }
        result
    }

    /// Sends `change` to every other member in the write set and waits for all of them.
    pub(crate) async fn fan_out(&self, c: &ChunkRef, chunk: ChunkId, change: &Change) -> Result<(), Status> {
        let mut pending: Option<Vec<u32>> = None;
        for _attempt in 0..3 {
            let table = self.routing.get();
            let chain = table
                .chain(ChainId(c.chain_id))
                .ok_or_else(|| Status::new(StatusCode::RoutingStale, format!("chain {} is unknown", c.chain_id)))?;
            // After a refresh we may have been deposed: never replicate under a version in which
            // another member is the primary.
            if table.serving_targets(ChainId(c.chain_id)).first() != Some(&TargetId(c.target_id)) {
                return Err(Status::new(StatusCode::RoutingStale, "no longer the primary of the chain"));
            }
            let members: Vec<u32> = chain
                .targets
                .iter()
                .copied()
                .filter(|t| *t != c.target_id && in_write_set(state_of(&table, *t)))
                .filter(|t| pending.as_ref().is_none_or(|p| p.contains(t)))
                .collect();
            // Noted before the change is sent: a sync of such a member that starts meanwhile
            // must see the chunk (it copies it under the lock this change holds, so after it).
            self.note_missed(c.chain_id, outside_write_set(&table, c), &[chunk]);
            let (stale, failed) = self.send_change(&table, chain.version, c, chunk, change, &members).await;
            if !failed.is_empty() {
                self.drop_members(&failed, chain.version).await?;
            }
            if stale.is_empty() {
                self.wait_out_leases(c.chain_id).await;
                return Ok(());
            }
            // A member knew a newer chain version: refresh and resend to those members only.
            let _ = self.routing.refresh().await;
            pending = Some(stale);
        }
        Err(Status::new(StatusCode::RoutingStale, "replicas kept refusing the chain version"))
    }

    /// Returns (members that refused our chain version, members that failed).
    #[allow(clippy::too_many_arguments)]
    async fn send_change(
        &self,
        table: &RoutingTable,
        chain_version: u64,
        c: &ChunkRef,
        chunk: ChunkId,
        change: &Change,
        members: &[u32],
    ) -> (Vec<u32>, Vec<u32>) {
        let sequential = table.replication_mode(ChainId(c.chain_id)) == ReplicationMode::Chain;
        let mut tasks = JoinSet::new();
        let (mut failed, mut results) = (Vec::new(), Vec::new());
        for &m in members {
            let Some(addr) = table.target_address(TargetId(m)) else {
                failed.push(m);
                continue;
            };
            let syncing = state_of(table, m) == Some(TargetState::Syncing);
            let (req, payload) = change.request_to(c, chunk, chain_version, m);
            let client = self.peers.get(addr);
            let call = async move { (m, syncing, client.call(&req, payload).await.map(|_| ())) };
            if sequential {
                // Chain mode: the next member gets the change only after this one has it.
                results.push(call.await);
            } else {
                tasks.spawn(call);
            }
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok(r) = joined {
                results.push(r);
            }
        }
        let (mut stale, mut lacking) = (Vec::new(), failed.clone());
        for (m, syncing, result) in results {
            tracing::debug!(%chunk, base = change.base, member = m, chain_version, result = ?result.as_ref().err(), "replicated");
            match result {
                Ok(()) => continue,
                // A syncing member misses chunks until its sync reaches them.
                Err(st) if syncing && st.code == StatusCode::VersionMismatch => {}
                Err(st) if st.code == StatusCode::RoutingStale => stale.push(m),
                Err(st) => {
                    tracing::warn!(target = m, error = %st, "replica failed a change; dropping it from the chain");
                    failed.push(m);
                }
            }
            lacking.push(m);
        }
        self.note_missed(c.chain_id, lacking, &[chunk]);
        (stale, failed)
    }

    /// Remembers that `members` may lack this term's latest change to `chunks`.
    pub(crate) fn note_missed(&self, chain_id: u32, members: Vec<u32>, chunks: &[ChunkId]) {
        // Every write calls this twice, nearly always with nobody missing: skip the lock then.
        if members.is_empty() || chunks.is_empty() {
            return;
        }
        let mut terms = lock(&self.terms);
        let Some(term) = terms.get_mut(&chain_id) else { return };
        for m in members {
            let missed = term.missed.entry(m).or_default();
            for &chunk in chunks {
                missed.note(chunk);
            }
        }
    }

    /// Returns once every live member that left the chain's write set has been out for a
    /// lease: until then it may still serve reads (from its own routing, within its lease),
    /// and a change committed without it could be missed by such a read.
    async fn wait_out_leases(&self, chain_id: u32) {
        let table = self.routing.get();
        let Some(chain) = table.chain(ChainId(chain_id)) else { return };
        let lease = self.lease_length();
        let until = {
            let mut terms = lock(&self.terms);
            let term = terms.entry(chain_id).or_insert_with(|| new_term(&table, ChainId(chain_id), lease));
            let now = Instant::now();
            let mut until = now;
            for &t in &chain.targets {
                if in_write_set(state_of(&table, t)) || !node_alive(&table, t) {
                    term.left.remove(&t);
                } else {
                    until = until.max(*term.left.entry(t).or_insert(now) + lease);
                }
            }
            until
        };
        if until > Instant::now() {
            tracing::debug!(chain = chain_id, wait = ?(until - Instant::now()), "waiting out a departed member's lease");
            tokio::time::sleep_until(until).await;
        }
    }

    /// Asks mgmtd to take failed members out of their chain and waits until routing says so.
    /// mgmtd refuses if the chain has moved past `chain_version` (we may have been deposed);
    /// the caller's client then retries against the current primary.
    async fn drop_members(&self, failed: &[u32], chain_version: u64) -> Result<(), Status> {
        for &m in failed {
            let req = OfflineTargetReq { target_id: m, chain_version };
            if let Err(st) = self.routing.mgmtd().unary(&req).await {
                let code = if st.code == StatusCode::RoutingStale { st.code } else { StatusCode::Unavailable };
                return Err(Status::new(code, format!("cannot drop failed replica {m}: {st}")));
            }
        }
        let deadline = Instant::now() + DROP_WAIT;
        loop {
            let table = self.routing.refresh().await.unwrap_or_else(|_| self.routing.get());
            if failed.iter().all(|m| !in_write_set(state_of(&table, *m))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Status::new(StatusCode::Unavailable, "mgmtd did not drop the failed replicas in time"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replica side of `fan_out`: applies the change only on the version it was built on.
    pub(crate) async fn replicate(&self, r: ReplicateReq, payload: Bytes) -> Result<Response, Status> {
        let c = r.chunk.ok_or_else(|| Status::invalid("replicate without a chunk"))?;
        let engine = self.resolve(&c, Need::Member).await?;
        // Same chain version on both sides (checked above), so both agree on the primary.
        let primary = self.routing.get().serving_targets(ChainId(c.chain_id)).first().copied();
        if primary != Some(TargetId(r.from_target)) {
            return Err(Status::new(
                StatusCode::RoutingStale,
                format!("target {} is not the primary of chain {} here", r.from_target, c.chain_id),
            ));
        }
        let chunk = ChunkId::new(InodeId(c.inode), c.index);
        let base = r.base_version;
        let request = r.request.map(RequestId::from);
        let info = match r.truncate_to {
            Some(len) => blocking(move || engine.truncate_at(chunk, base, len, request)).await?,
            None => {
                let runs = received_runs(r.first_block, &r.block_runs, r.block_crcs.len())?;
                let images = BlockImages::received(runs, r.chunk_len, payload, r.block_crcs).map_err(|e| e.status())?;
                blocking(move || engine.write_blocks_at(chunk, base, &images, request)).await?
            }
        };
        tracing::debug!(%chunk, target = c.target_id, version = info.version, from = r.from_target, "applied a replicated change");
        Ok(Response::msg(&ReplicateResp { version: info.version }))
    }

    pub(crate) async fn sync_list(&self, r: SyncListReq) -> Result<Response, Status> {
        let c = r.target.ok_or_else(|| Status::invalid("sync list without a target"))?;
        let engine = self.resolve(&c, Need::Member).await?;
        let after = r.after.map(|s| ChunkId::new(InodeId(s.inode), s.index));
        let limit = (r.limit as usize).clamp(1, SYNC_PAGE * 4);
        let page = blocking(move || engine.list(after, limit)).await?;
        let chunks = page
            .into_iter()
            .map(|(id, i)| ChunkState { inode: id.inode.0, index: id.index, version: i.version, len: i.len, digest: i.digest })
            .collect();
        Ok(Response::msg(&SyncListResp { chunks }))
    }

    pub(crate) async fn sync_blocks(&self, r: SyncBlocksReq) -> Result<Response, Status> {
        let c = r.chunk.ok_or_else(|| Status::invalid("sync blocks without a chunk"))?;
        let engine = self.resolve(&c, Need::Member).await?;
        let chunk = ChunkId::new(InodeId(c.inode), c.index);
        let resp = match blocking(move || engine.block_map(chunk)).await? {
            None => SyncBlocksResp::default(),
            Some((info, map)) => {
                let (blocks, crcs) = map.into_iter().unzip();
                SyncBlocksResp { exists: true, version: info.version, len: info.len, blocks, crcs }
            }
        };
        Ok(Response::msg(&resp))
    }

    pub(crate) async fn sync_patch(&self, r: SyncPatchReq, payload: Bytes) -> Result<Response, Status> {
        let c = r.chunk.ok_or_else(|| Status::invalid("sync patch without a chunk"))?;
        let engine = self.resolve(&c, Need::Member).await?;
        if crc32c::crc32c(&payload) != r.crc32c {
            return Err(Status::new(StatusCode::ChecksumMismatch, "synced blocks do not match their CRC32C"));
        }
        let chunk = ChunkId::new(InodeId(c.inode), c.index);
        let requests: Vec<RequestId> = r.requests.iter().copied().map(RequestId::from).collect();
        blocking(move || engine.patch(chunk, r.version, r.len, &r.present, &r.patched, &payload, &requests)).await?;
        tracing::debug!(%chunk, target = c.target_id, version = r.version, "patched by a sync");
        Ok(Response::msg(&SyncPatchResp {}))
    }

    pub(crate) async fn sync_remove(&self, r: SyncRemoveReq) -> Result<Response, Status> {
        let c = r.chunk.ok_or_else(|| Status::invalid("sync remove without a chunk"))?;
        let engine = self.resolve(&c, Need::Member).await?;
        let chunk = ChunkId::new(InodeId(c.inode), c.index);
        blocking(move || engine.remove(chunk)).await?;
        Ok(Response::msg(&SyncRemoveResp {}))
    }

    /// The primary finished syncing this member: it holds everything committed and receives
    /// every new change, so it may report itself up to date.
    pub(crate) async fn sync_done(&self, r: SyncDoneReq) -> Result<Response, Status> {
        let c = r.target.ok_or_else(|| Status::invalid("sync done without a target"))?;
        self.resolve(&c, Need::Member).await?;
        let local = self.local(TargetId(c.target_id))?;
        local.synced_chain_version.fetch_max(c.chain_version, Ordering::AcqRel);
        if local.state() != LocalState::UpToDate {
            tracing::info!(target = c.target_id, chain = c.chain_id, "sync finished; target is up to date");
            local.set_state(LocalState::UpToDate);
        }
        Ok(Response::msg(&SyncDoneResp {}))
    }

    /// One pass of the primary's duties: start a sync for every member that needs one.
    pub fn keep_chains(self: &Arc<Self>) {
        let table = self.routing.get();
        for (tid, local) in &self.targets {
            let Some(chain_id) = table.target(*tid).map(|t| t.chain_id).filter(|c| *c != 0) else { continue };
            let primary = local.state() == LocalState::UpToDate
                && table.serving_targets(ChainId(chain_id)).first() == Some(tid);
            let mut terms = lock(&self.terms);
            if !primary {
                terms.remove(&chain_id);
                continue;
            }
            let Some(chain) = table.chain(ChainId(chain_id)) else { continue };
            let lease = self.lease_length();
            let term = terms.entry(chain_id).or_insert_with(|| new_term(&table, ChainId(chain_id), lease));
            for &m in chain.targets.iter().filter(|m| **m != tid.0) {
                let state = state_of(&table, m);
                if !in_write_set(state) {
                    term.peered.remove(&m);
                } else if term.needs_sync(m, state, chain.version) && term.busy.insert(m) {
                    let (me, term_id, target) = (self.clone(), term.id, *tid);
                    tokio::spawn(async move { me.run_sync(chain_id, term_id, target, m).await });
                }
            }
        }
    }

    async fn run_sync(self: Arc<Self>, chain_id: u32, term_id: u64, me: TargetId, member: u32) {
        let version = self.routing.get().chain(ChainId(chain_id)).map_or(0, |c| c.version);
        let plan = lock(&self.terms)
            .get(&chain_id)
            .filter(|t| t.id == term_id)
            .and_then(|t| t.missed.get(&member))
            .map_or_else(|| Missed::default().plan(), Missed::plan);
        let result = self.sync_member(chain_id, version, me, member, plan.log.as_deref()).await;
        if let Err(e) = &result {
            tracing::warn!(chain = chain_id, member, error = %e, "sync failed; will retry");
        }
        let mut terms = lock(&self.terms);
        if let Some(term) = terms.get_mut(&chain_id).filter(|t| t.id == term_id) {
            term.busy.remove(&member);
            if result.is_ok() {
                term.peered.insert(member, version);
                term.missed.entry(member).or_default().synced(&plan);
            }
        }
    }

    /// Brings `member` to this primary's state, chunk by chunk, under each chunk's lock:
    /// the chunks in `log` only, when this term knows every chunk the member missed, or
    /// else every chunk either side lists. Every request carries `version`: if the chain
    /// changes meanwhile the member refuses, and the sync is retried.
    async fn sync_member(&self, chain_id: u32, version: u64, me: TargetId, member: u32, log: Option<&[ChunkId]>) -> Result<(), Status> {
        let table = self.routing.get();
        let addr = table
            .target_address(TargetId(member))
            .ok_or_else(|| Status::new(StatusCode::RoutingStale, format!("member {member} has no node")))?;
        let client = self.peers.get(addr);
        let target = ChunkRef { inode: 0, index: 0, chain_id, chain_version: version, target_id: member };
        let engine = self.local(me)?.engine.clone();
        let (path, copied) = match log {
            Some(chunks) => {
                let mut copied = 0u64;
                for &chunk in chunks {
                    copied += self.copy_chunk(&engine, &client, &target, chunk).await?;
                }
                ("log", copied)
            }
            None => ("full", self.sync_listings(&engine, &client, &target).await?),
        };
        client.unary(&SyncDoneReq { target: Some(target) }).await?;
        let reg = ember_telemetry::global();
        reg.inc("ember_storage_sync_bytes_total", "", copied);
        reg.inc("ember_storage_syncs_total", &format!("path=\"{path}\""), 1);
        tracing::info!(chain = chain_id, member, bytes = copied, path, "member synced");
        Ok(())
    }

    /// The full comparison: both listings are walked in key order a page at a time, so a
    /// target with millions of chunks costs two pages of memory. Returns the bytes copied.
    async fn sync_listings(&self, engine: &Arc<ChunkEngine>, client: &RpcClient, target: &ChunkRef) -> Result<u64, Status> {
        let (mut mine, mut theirs) = (Listing::default(), Listing::default());
        let mut copied = 0u64;
        loop {
            if mine.needs_page() {
                let (e, after) = (engine.clone(), mine.after);
                let page = blocking(move || e.list(after, SYNC_PAGE)).await?;
                mine.refill(page.into_iter().map(|(c, i)| (c, (i.version, i.len, i.digest))).collect());
            }
            if theirs.needs_page() {
                theirs.refill(remote_page(client, target, theirs.after).await?);
            }
            let Some((chunk, differs)) = next_chunk(&mut mine, &mut theirs) else { break };
            if differs {
                copied += self.copy_chunk(engine, client, target, chunk).await?;
            }
        }
        Ok(copied)
    }

    /// [`copy_chunk_locked`] under the chunk's lock.
    async fn copy_chunk(&self, engine: &Arc<ChunkEngine>, client: &RpcClient, target: &ChunkRef, chunk: ChunkId) -> Result<u64, Status> {
        let _guard = self.locks.lock(chunk).await;
        copy_chunk_locked(engine, client, target, chunk).await
    }

    pub(crate) fn mark_diverged(&self, chunk: ChunkId) {
        ember_telemetry::global().inc("ember_storage_diverged_chunks_total", "", 1);
        tracing::info!(%chunk, "a change failed part-way; the chunk waits for its members to agree");
        lock(&self.diverged).insert(chunk);
    }

    /// Before a diverged chunk is read or changed (the caller holds its lock): copy it to
    /// every other member of the write set, dropping a member that cannot take it.
    pub(crate) async fn settle(&self, c: &ChunkRef, engine: &Arc<ChunkEngine>, chunk: ChunkId) -> Result<(), Status> {
        if !lock(&self.diverged).contains(&chunk) {
            return Ok(());
        }
        let table = self.routing.refresh().await.unwrap_or_else(|_| self.routing.get());
        let Some(chain) = table.chain(ChainId(c.chain_id)) else {
            return Err(Status::new(StatusCode::RoutingStale, format!("chain {} is unknown", c.chain_id)));
        };
        if table.serving_targets(ChainId(c.chain_id)).first() != Some(&TargetId(c.target_id)) {
            return Err(Status::new(StatusCode::RoutingStale, "no longer the primary of the chain"));
        }
        for &m in chain.targets.iter().filter(|m| **m != c.target_id && in_write_set(state_of(&table, **m))) {
            let target = ChunkRef { inode: 0, index: 0, chain_id: c.chain_id, chain_version: chain.version, target_id: m };
            let copied = match table.target_address(TargetId(m)) {
                Some(addr) => copy_chunk_locked(engine, &self.peers.get(addr), &target, chunk).await.map(|_| ()),
                None => Err(Status::new(StatusCode::RoutingStale, "member has no node")),
            };
            if let Err(st) = copied {
                tracing::warn!(target = m, %chunk, error = %st, "member cannot take a diverged chunk; dropping it");
                self.note_missed(c.chain_id, vec![m], &[chunk]);
                self.drop_members(&[m], chain.version)
                    .await
                    .map_err(|e| Status::new(StatusCode::Busy, format!("chunk {chunk} is waiting to be re-replicated: {e}")))?;
            }
        }
        lock(&self.diverged).remove(&chunk);
        tracing::info!(%chunk, "diverged chunk copied to every member");
        Ok(())
    }
}

/// Makes the member's copy of one chunk equal to ours (or removes it), sending only the
/// blocks whose CRC differs, with the request ids the chunk remembers; returns the bytes of
/// block images sent. The caller holds the chunk's lock.
async fn copy_chunk_locked(engine: &Arc<ChunkEngine>, client: &RpcClient, target: &ChunkRef, chunk: ChunkId) -> Result<u64, Status> {
    let c = ChunkRef { inode: chunk.inode.0, index: chunk.index, ..target.clone() };
    let e = engine.clone();
    let Some((info, mine)) = blocking(move || e.block_map(chunk)).await? else {
        client.unary(&SyncRemoveReq { chunk: Some(c) }).await?;
        return Ok(0);
    };
    let theirs = client.unary(&SyncBlocksReq { chunk: Some(c.clone()) }).await?;
    let theirs: HashMap<u32, u32> = theirs.blocks.into_iter().zip(theirs.crcs).collect();
    let present: Vec<u32> = mine.iter().map(|(l, _)| *l).collect();
    let patched: Vec<u32> = mine.iter().filter(|(l, crc)| theirs.get(l) != Some(crc)).map(|(l, _)| *l).collect();
    let (e, wanted) = (engine.clone(), patched.clone());
    let (images, requests) = blocking(move || Ok((e.read_block_images(chunk, &wanted)?, e.requests(chunk)?))).await?;
    let images = Bytes::from(images);
    let sent = images.len() as u64;
    let requests = requests.into_iter().map(RequestRef::from).collect();
    let req = SyncPatchReq { chunk: Some(c), version: info.version, len: info.len, present, patched, crc32c: crc32c::crc32c(&images), requests };
    client.call(&req, images).await?;
    Ok(sent)
}

/// (version, length, digest) of a chunk: what a sync compares.
type ChunkSummary = (u64, u32, u64);

/// One side of a sync's comparison: a chunk listing read a page at a time in key order.
#[derive(Default)]
struct Listing {
    page: VecDeque<(ChunkId, ChunkSummary)>,
    after: Option<ChunkId>,
    exhausted: bool,
}

impl Listing {
    fn needs_page(&self) -> bool {
        self.page.is_empty() && !self.exhausted
    }

    fn refill(&mut self, page: Vec<(ChunkId, ChunkSummary)>) {
        match page.last() {
            Some(last) => self.after = Some(last.0),
            None => self.exhausted = true,
        }
        self.page.extend(page);
    }

    /// The head's summary if the head is `chunk` (and moves past it).
    fn take(&mut self, chunk: ChunkId) -> Option<ChunkSummary> {
        let head = self.page.front().filter(|(c, _)| *c == chunk)?.1;
        self.page.pop_front();
        Some(head)
    }
}

/// The next chunk in key order on either side, and whether the two sides differ on it;
/// `None` when both listings are done.
fn next_chunk(mine: &mut Listing, theirs: &mut Listing) -> Option<(ChunkId, bool)> {
    let chunk = match (mine.page.front(), theirs.page.front()) {
        (Some(m), Some(t)) => m.0.min(t.0),
        (Some(m), None) => m.0,
        (None, Some(t)) => t.0,
        (None, None) => return None,
    };
    Some((chunk, mine.take(chunk) != theirs.take(chunk)))
}

/// The member's chunks after `after`, one page.
async fn remote_page(client: &RpcClient, target: &ChunkRef, after: Option<ChunkId>) -> Result<Vec<(ChunkId, ChunkSummary)>, Status> {
    let after = after.map(|c| ChunkState { inode: c.inode.0, index: c.index, ..ChunkState::default() });
    let req = SyncListReq { target: Some(target.clone()), after, limit: SYNC_PAGE as u32 };
    let page = client.unary(&req).await?.chunks;
    Ok(page.into_iter().map(|s| (ChunkId::new(InodeId(s.inode), s.index), (s.version, s.len, s.digest))).collect())
}

/// The runs of blocks a replicated write carries (see `ReplicateReq::block_runs`).
fn received_runs(first_block: u32, block_runs: &[u32], blocks: usize) -> Result<Vec<(u32, u32)>, Status> {
    if block_runs.is_empty() {
        let count = u32::try_from(blocks).map_err(|_| Status::invalid("too many block CRCs"))?;
        return Ok(if count == 0 { Vec::new() } else { vec![(first_block, count)] });
    }
    if !block_runs.len().is_multiple_of(2) {
        return Err(Status::invalid("block runs must come in (first, count) pairs"));
    }
    Ok(block_runs.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(inode: u64, index: u32) -> ChunkId {
        ChunkId::new(InodeId(inode), index)
    }

    #[test]
    fn a_paged_diff_walks_both_listings_in_key_order() {
        let (mut mine, mut theirs) = (Listing::default(), Listing::default());
        mine.refill(vec![(id(1, 0), (3, 10, 7)), (id(1, 2), (1, 5, 1)), (id(2, 0), (4, 4, 4))]);
        theirs.refill(vec![(id(1, 0), (3, 10, 7)), (id(1, 1), (1, 1, 1)), (id(2, 0), (3, 4, 4))]);
        mine.refill(Vec::new());
        theirs.refill(Vec::new());
        let mut walked = Vec::new();
        while let Some(step) = next_chunk(&mut mine, &mut theirs) {
            walked.push(step);
        }
        // Equal, only theirs (remove), only mine (copy), different (copy).
        assert_eq!(walked, vec![(id(1, 0), false), (id(1, 1), true), (id(1, 2), true), (id(2, 0), true)]);
        assert!(!mine.needs_page() && !theirs.needs_page());
    }
}

