//! RPC front of a storage node: checks routing and checksums, then calls the target's engine.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use ember_net::routing::RoutingWatcher;
use ember_net::{decode_body, PeerPool, Request, Response, Service, ServiceFuture};
use ember_proto::mgmtd::TargetReport;
use ember_proto::storage::*;
use ember_proto::Method;
use ember_proto::routing::RoutingTable;
use ember_types::{ChunkId, InodeId, LocalState, BLOCK_SIZE, Status, StatusCode, TargetId, TargetState};

use crate::access::{self, ChunkLocks, Need};
use crate::replica_reads::Confirmed;
use crate::replication::{outside_write_set, Change, ChangeBody, Term};
use crate::{ChangeBase, ChunkEngine, ChunkInfo, RequestId};

/// A replica that does not answer in this time is reported to mgmtd and dropped.
pub(crate) const REPLICA_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest total a single batch read may return; keeps replies under the frame limit.
const MAX_BATCH_READ_BYTES: u64 = 64 << 20;
/// Reads up to this many bytes (a few disk blocks) may run on the task that serves them.
const BRIEF_READ_BYTES: u32 = 128 * 1024;

/// One target of this node: its engine and what this node says about it to mgmtd.
pub(crate) struct LocalTarget {
    pub(crate) engine: Arc<ChunkEngine>,
    state: AtomicU8,
    /// Chain version of the sync that last made this target up to date (0: none yet).
    pub(crate) synced_chain_version: AtomicU64,
}

impl LocalTarget {
    pub(crate) fn state(&self) -> LocalState {
        LocalState::from_u8(self.state.load(Ordering::Acquire)).unwrap_or(LocalState::Online)
    }

    pub(crate) fn set_state(&self, s: LocalState) {
        self.state.store(s.to_u8(), Ordering::Release);
    }
}

pub struct StorageService {
    pub(crate) targets: HashMap<TargetId, LocalTarget>,
    pub(crate) routing: Arc<RoutingWatcher>,
    pub(crate) peers: PeerPool,
    pub(crate) locks: ChunkLocks,
    pub(crate) terms: Mutex<HashMap<u32, Term>>,
    /// Until when this node may act as a primary of a replicated chain, and the lease length
    /// mgmtd grants (for a new primary's wait).
    pub(crate) lease: Mutex<(Option<Instant>, Duration)>,
    /// Chunks whose last change failed part-way: the primary's copy may differ from its
    /// members'. Nothing reads or changes them until a sync of the chunk makes them agree.
    pub(crate) diverged: Mutex<HashSet<ChunkId>>,
    /// Chunk states the primaries confirmed as committed, for reads served here as a replica.
    pub(crate) confirmed: Confirmed,
}

impl StorageService {
    /// Every target starts ONLINE: after a start it may have missed writes, and only mgmtd
    /// can say whether it may serve.
    pub fn new(targets: HashMap<TargetId, Arc<ChunkEngine>>, routing: Arc<RoutingWatcher>, peers: PeerPool) -> Self {
        describe_metrics();
        let targets = targets
            .into_iter()
            .map(|(id, engine)| (id, LocalTarget { engine, state: AtomicU8::new(LocalState::Online.to_u8()), synced_chain_version: AtomicU64::new(0) }))
            .collect();
        StorageService {
            targets,
            routing,
            peers,
            locks: ChunkLocks::new(),
            terms: Mutex::default(),
            lease: Mutex::new((None, Duration::ZERO)),
            diverged: Mutex::default(),
            confirmed: Confirmed::default(),
        }
    }

    /// Space and state reports of every local target, as sent in heartbeats.
    pub fn reports(&self) -> Vec<TargetReport> {
        let mut v: Vec<TargetReport> = self.targets.iter().map(|(id, t)| report(*id, t)).collect();
        v.sort_by_key(|r| r.target_id);
        v
    }

    /// Moves local states after mgmtd has answered a heartbeat with `acked_version`: a target
    /// becomes UPTODATE only when a routing that already reflects its ONLINE report shows it
    /// SERVING, and an UPTODATE target that mgmtd took out of service fences itself.
    pub fn reconcile(&self, table: &RoutingTable, acked_version: u64) {
        for (id, t) in &self.targets {
            let public = table.target(*id).and_then(|i| TargetState::from_u8(i.state as u8));
            match (t.state(), public) {
                (LocalState::Online, Some(TargetState::Serving)) if table.version() >= acked_version => {
                    tracing::info!(target = id.0, "target is serving");
                    t.set_state(LocalState::UpToDate);
                }
                (LocalState::UpToDate, Some(TargetState::Offline | TargetState::Waiting | TargetState::LastServing)) => {
                    tracing::warn!(target = id.0, state = ?public, "mgmtd took the target out of service; fencing it");
                    t.set_state(LocalState::Online);
                }
                _ => {}
            }
        }
    }

    /// Extends the primary lease to `sent + length` after mgmtd acknowledged a heartbeat.
    pub fn renew_lease(&self, sent: Instant, length: Duration) {
        let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        *lease = (Some(sent + length), length);
    }

    async fn dispatch(self: &Arc<Self>, req: Request) -> Result<Response, Status> {
        let body = &req.body;
        match Method::from_u16(req.method) {
            Some(Method::StorageWrite) => {
                let (me, r) = (self.clone(), decode_body(body)?);
                to_the_end(async move { me.write(r, req.payload).await }).await
            }
            Some(Method::StorageBatchRead) => self.batch_read(decode_body(body)?).await,
            Some(Method::StorageCopy) => {
                let (me, r) = (self.clone(), decode_body(body)?);
                to_the_end(async move { me.copy(r).await }).await
            }
            Some(Method::StorageTruncate) => {
                let (me, r) = (self.clone(), decode_body(body)?);
                to_the_end(async move { me.truncate(r).await }).await
            }
            Some(Method::StorageRemoveChunks) => self.remove_chunks(decode_body(body)?).await,
            Some(Method::StorageSpaceInfo) => Ok(Response::msg(&SpaceInfoResp { targets: self.reports() })),
            Some(Method::StorageReplicate) => self.replicate(decode_body(body)?, req.payload).await,
            Some(Method::StorageSyncList) => self.sync_list(decode_body(body)?).await,
            Some(Method::StorageSyncBlocks) => self.sync_blocks(decode_body(body)?).await,
            Some(Method::StorageSyncPatch) => self.sync_patch(decode_body(body)?, req.payload).await,
            Some(Method::StorageSyncRemove) => self.sync_remove(decode_body(body)?).await,
            Some(Method::StorageSyncDone) => self.sync_done(decode_body(body)?).await,
            Some(Method::StorageCommittedVersion) => self.committed_version(decode_body(body)?).await,
            _ => Err(Status::new(StatusCode::UnknownMethod, format!("storage has no method {:#06x}", req.method))),
        }
    }

    pub(crate) fn local(&self, target: TargetId) -> Result<&LocalTarget, Status> {
        self.targets
            .get(&target)
            .ok_or_else(|| Status::new(StatusCode::NoSuchTarget, format!("target {target} is not on this node")))
    }

    /// Resolves a request's target to its engine after checking the routing (refreshed once
    /// when it does not match: the caller may know a newer version than we do).
    pub(crate) async fn resolve(&self, c: &ChunkRef, need: Need) -> Result<Arc<ChunkEngine>, Status> {
        let local = self.local(TargetId(c.target_id))?;
        if access::check(&self.routing.get(), c, local.state(), need).is_ok() {
            return Ok(local.engine.clone());
        }
        let _ = self.routing.refresh().await;
        match access::check(&self.routing.get(), c, local.state(), need) {
            Ok(()) => Ok(local.engine.clone()),
            Err(why) => Err(Status::new(StatusCode::RoutingStale, why)),
        }
    }

    async fn write(&self, r: WriteReq, payload: Bytes) -> Result<Response, Status> {
        let c = r.chunk.ok_or_else(|| Status::invalid("write without a chunk"))?;
        let engine = self.resolve(&c, Need::Primary).await?;
        self.check_ready(c.chain_id)?;
        if crc32c::crc32c(&payload) != r.crc32c {
            return Err(Status::new(StatusCode::ChecksumMismatch, "write payload does not match its CRC32C"));
        }
        let chunk = ChunkId::new(InodeId(c.inode), c.index);
        let request = r.request.map(RequestId::from);
        let (_guard, start) = self.begin_change(&c, &engine, chunk, request).await?;
        if start.applied {
            let info = start.current.unwrap_or_default();
            ember_telemetry::global().inc("ember_storage_retries_recognised_total", "", 1);
            tracing::debug!(%chunk, ?request, version = info.version, "retry of an applied write");
            return Ok(Response::msg(&WriteResp { version: info.version, chunk_len: info.len, blocks: info.blocks }));
        }
        let base = start.version();
        let pieces = write_pieces(r.offset, &r.pieces, payload)?;
        let aligned = pieces.iter().all(|(offset, data)| offset.is_multiple_of(BLOCK_SIZE) && data.len().is_multiple_of(BLOCK_SIZE as usize));
        let images = if aligned {
            // Block-aligned bytes are their own images: nothing to read, so no hop to the pool.
            engine.block_images(chunk, &pieces).map_err(|e| e.status())?
        } else {
            let engine = engine.clone();
            blocking(move || engine.block_images(chunk, &pieces)).await?
        };
        let local = {
            let (engine, images) = (engine.clone(), images.clone());
            blocking(move || engine.write_blocks_at(chunk, base, &images, request))
        };
        let change = Change { base, body: ChangeBody::Write(images), request };
        let info = self.commit_change(&c, chunk, local, change).await?;
        tracing::debug!(%chunk, version = info.version, request = ?request, "write committed");
        Ok(Response::msg(&WriteResp { version: info.version, chunk_len: info.len, blocks: info.blocks }))
    }

    /// copy_file_range on storage: fetches the source bytes (from this node if it holds the
    /// source target) and writes them like a client write, so they never pass through a client.
    async fn copy(&self, r: CopyReq) -> Result<Response, Status> {
        let src = r.src.ok_or_else(|| Status::invalid("copy without a source chunk"))?;
        if u64::from(r.len) > MAX_BATCH_READ_BYTES {
            return Err(Status::invalid(format!("copy of {} bytes exceeds {MAX_BATCH_READ_BYTES}", r.len)));
        }
        let io = ReadIo { chunk: Some(src.clone()), offset: r.src_offset, len: r.len };
        let mut data = if self.targets.contains_key(&TargetId(src.target_id)) {
            self.read_one(io).await?
        } else {
            self.read_remote(&src, io).await?
        };
        data.resize(r.len as usize, 0);
        let write = WriteReq { chunk: r.chunk, offset: r.offset, crc32c: crc32c::crc32c(&data), request: r.request, pieces: Vec::new() };
        self.write(write, Bytes::from(data)).await
    }

    /// One read from the node that holds `src`'s target.
    async fn read_remote(&self, src: &ChunkRef, io: ReadIo) -> Result<Vec<u8>, Status> {
        let addr = self
            .routing
            .get()
            .target_address(TargetId(src.target_id))
            .map(str::to_owned)
            .ok_or_else(|| Status::new(StatusCode::RoutingStale, format!("source target {} has no node", src.target_id)))?;
        let (resp, payload) = self.peers.get(&addr).call(&BatchReadReq { ios: vec![io] }, Bytes::new()).await?;
        let result = resp.results.first().ok_or_else(|| Status::internal("batch read answered without a result"))?;
        if result.status != 0 {
            let code = u16::try_from(result.status).map_or(StatusCode::Internal, StatusCode::from_u16);
            return Err(Status::new(code, format!("reading the copy's source: {}", result.message)));
        }
        let len = (result.len as usize).min(payload.len());
        Ok(payload[..len].to_vec())
    }

    /// Takes the chunk's lock for a change and checks again after the wait: the chunk is
    /// settled and this target is still the synced primary. Returns the chunk's state then.
    async fn begin_change(
        &self,
        c: &ChunkRef,
        engine: &Arc<ChunkEngine>,
        chunk: ChunkId,
        request: Option<RequestId>,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, ChangeBase), Status> {
        let guard = self.locks.lock(chunk).await;
        self.settle(c, engine, chunk).await?;
        self.resolve(c, Need::Primary).await?;
        self.check_ready(c.chain_id)?;
        // A point lookup of the chunk's record, answered from fjall's memtable or block cache:
        // cheaper in place than a hop to the blocking pool, on every write's path.
        let start = engine.change_base(chunk, request).map_err(|e| e.status())?;
        Ok((guard, start))
    }

    async fn batch_read(&self, r: BatchReadReq) -> Result<Response, Status> {
        let total: u64 = r.ios.iter().map(|io| u64::from(io.len)).sum();
        if total > MAX_BATCH_READ_BYTES {
            return Err(Status::invalid(format!("batch read of {total} bytes exceeds {MAX_BATCH_READ_BYTES}")));
        }
        let mut results = Vec::with_capacity(r.ios.len());
        let mut payload = BytesMut::with_capacity(total as usize);
        for io in r.ios {
            match self.read_one(io).await {
                Ok(data) => {
                    results.push(ReadResult { status: 0, message: String::new(), len: data.len() as u32 });
                    payload.extend_from_slice(&data);
                }
                Err(st) => results.push(ReadResult { status: st.code.as_u16().into(), message: st.message, len: 0 }),
            }
        }
        Ok(Response::with_payload(&BatchReadResp { results }, payload.freeze()))
    }

    async fn read_one(&self, mut io: ReadIo) -> Result<Vec<u8>, Status> {
        let c = io.chunk.take().ok_or_else(|| Status::invalid("read without a chunk"))?;
        let (role, result) = if self.names_primary(&c) {
            ("primary", self.read_on_primary(c, io).await)
        } else {
            ("replica", self.read_on_replica(c, io).await)
        };
        if result.is_ok() {
            ember_telemetry::global().inc("ember_storage_reads_total", &format!("role=\"{role}\""), 1);
        }
        result
    }

    /// Reads on the primary, after any write in flight on the chunk: that write is not
    /// committed until every replica has it, and must not be seen before.
    async fn read_on_primary(&self, c: ChunkRef, io: ReadIo) -> Result<Vec<u8>, Status> {
        let (_guard, engine, chunk) = self.lock_committed(&c).await?;
        let data = read_blocking(io.len, move || engine.read(chunk, io.offset, io.len)).await?;
        tracing::debug!(%chunk, target = c.target_id, head = ?data.get(..8), "read");
        Ok(data)
    }

    /// Takes the chunk's lock on the primary, which waits for the change in flight on it, so
    /// that what the chunk then holds is committed; returns it once this target is checked to
    /// still be the synced primary with a lease.
    pub(crate) async fn lock_committed(&self, c: &ChunkRef) -> Result<(tokio::sync::MutexGuard<'_, ()>, Arc<ChunkEngine>, ChunkId), Status> {
        let engine = self.resolve(c, Need::Primary).await?;
        let chunk = ChunkId::new(InodeId(c.inode), c.index);
        let guard = self.locks.lock(chunk).await;
        self.settle(c, &engine, chunk).await?;
        // The write we waited for may have taken long: we must still be the primary, with a
        // lease, at the moment we read (the simulation found a read served seconds after
        // mgmtd had replaced this primary).
        self.resolve(c, Need::Primary).await?;
        // A new primary may hold a change its predecessor never committed; until its sync has
        // put that change on every member (or removed it), reading it could be undone.
        self.check_ready(c.chain_id)?;
        self.check_read_lease(c.chain_id)?;
        Ok((guard, engine, chunk))
    }

    /// Cuts the file on this chain at `r.length`: empties its chunks past the boundary chunk
    /// and truncates that one. The chain's last kept chunk of the file (created empty if
    /// missing) remembers the request, so a retry that arrives after later writes is
    /// recognised instead of cutting them.
    async fn truncate(self: Arc<Self>, r: TruncateReq) -> Result<Response, Status> {
        let c = r.chain.ok_or_else(|| Status::invalid("truncate without a chain"))?;
        if r.chunk_size == 0 || r.stripe == 0 || r.stripe_position >= r.stripe {
            return Err(Status::invalid("truncate needs a chunk size and a stripe position inside the stripe"));
        }
        let cs = u64::from(r.chunk_size);
        let Ok(boundary) = u32::try_from(r.length / cs) else {
            return Err(Status::invalid(format!("length {} is beyond the largest file", r.length)));
        };
        let engine = self.resolve(&c, Need::Primary).await?;
        let keep = ChunkId::new(InodeId(c.inode), last_kept_chunk(boundary, r.stripe, r.stripe_position));
        let request = r.request.map(RequestId::from);
        let (_, first) = self.begin_change(&c, &engine, keep, request).await?;
        if first.applied {
            ember_telemetry::global().inc("ember_storage_retries_recognised_total", "", 1);
            return Ok(Response::msg(&kept(0, keep, first.current.unwrap_or_default())));
        }
        let emptied = self.clone().empty_chunks(&c, &engine, boundary.saturating_add(1), keep).await?;
        let (_guard, start) = self.begin_change(&c, &engine, keep, request).await?;
        let len = match keep.index.cmp(&boundary) {
            std::cmp::Ordering::Equal => (r.length % cs) as u32,
            std::cmp::Ordering::Less => start.current.map_or(0, |i| i.len),
            std::cmp::Ordering::Greater => 0,
        };
        let base = start.version();
        let local = blocking(move || engine.truncate_at(keep, base, len, request));
        let change = Change { base, body: ChangeBody::Truncate(len), request };
        let info = self.commit_change(&c, keep, local, change).await?;
        Ok(Response::msg(&kept(emptied, keep, info)))
    }

    /// Truncates the file's chunks on this chain from index `from` on (but `keep`) to length
    /// zero, each as a versioned change under its own lock, like any write: a write in flight
    /// on one of them lands before or after the cut on every member alike. The emptied
    /// records stay, with the request ids they remember, so a write retried after the cut is
    /// still recognised; deleting the file removes them. Returns how many were emptied.
    async fn empty_chunks(self: Arc<Self>, c: &ChunkRef, engine: &Arc<ChunkEngine>, from: u32, keep: ChunkId) -> Result<u32, Status> {
        let inode = InodeId(c.inode);
        let ids = {
            let engine = engine.clone();
            blocking(move || engine.chunk_ids(inode, from)).await?
        };
        // Every started change runs to its end (an aborted one could stop between the local
        // copy and the members); the first failure is reported after all have finished.
        let mut tasks = tokio::task::JoinSet::new();
        let mut outcome = Ok(0);
        for chunk in ids.into_iter().filter(|id| *id != keep) {
            if tasks.len() >= EMPTY_PARALLELISM {
                add_count(&mut outcome, tasks.join_next().await);
            }
            if outcome.is_err() {
                break;
            }
            let (me, c, engine) = (self.clone(), c.clone(), engine.clone());
            tasks.spawn(async move { me.empty_chunk(&c, &engine, chunk).await });
        }
        while let Some(result) = tasks.join_next().await {
            add_count(&mut outcome, Some(result));
        }
        outcome
    }

    async fn empty_chunk(&self, c: &ChunkRef, engine: &Arc<ChunkEngine>, chunk: ChunkId) -> Result<u32, Status> {
        let (_guard, start) = self.begin_change(c, engine, chunk, None).await?;
        if start.current.is_none_or(|i| i.len == 0) {
            return Ok(0);
        }
        let base = start.version();
        let local = {
            let engine = engine.clone();
            blocking(move || engine.truncate_at(chunk, base, 0, None))
        };
        let change = Change { base, body: ChangeBody::Truncate(0), request: None };
        self.commit_change(c, chunk, local, change).await?;
        Ok(1)
    }

    /// Removes a deleted file's chunks from this target only: meta sends it to every target.
    /// On the chain's primary, the removed chunks count as missed by the members out of the
    /// write set (meta skips offline targets): their next sync must remove them too.
    async fn remove_chunks(&self, r: RemoveChunksReq) -> Result<Response, Status> {
        let c = r.chain.ok_or_else(|| Status::invalid("remove without a chain"))?;
        let engine = self.resolve(&c, Need::Any).await?;
        let inode = InodeId(c.inode);
        let primary = self.names_primary(&c);
        let (removed, ids) = blocking(move || {
            let ids = if primary { engine.chunk_ids(inode, r.from_index)? } else { Vec::new() };
            Ok((engine.remove_chunks(inode, r.from_index)?, ids))
        })
        .await?;
        if !ids.is_empty() {
            self.note_missed(c.chain_id, outside_write_set(&self.routing.get(), &c), &ids);
        }
        Ok(Response::msg(&RemoveChunksResp { removed }))
    }
}

/// The chunk of the file this chain keeps last after a cut at chunk `boundary`: the highest
/// index up to the boundary that lives on this stripe position, or, when none does, the
/// position's first chunk (kept as an empty chunk past the end).
fn last_kept_chunk(boundary: u32, stripe: u32, position: u32) -> u32 {
    if boundary >= position {
        boundary - (boundary - position) % stripe
    } else {
        position
    }
}

fn report(id: TargetId, t: &LocalTarget) -> TargetReport {
    let s = t.engine.stats();
    TargetReport {
        target_id: id.0,
        used_bytes: s.used_blocks * u64::from(s.block_size) + s.tail_bytes,
        capacity_bytes: s.capacity_bytes,
        free_bytes: s.free_bytes,
        chunks: s.chunks,
        local_state: t.state().to_u8().into(),
        synced_chain_version: t.synced_chain_version.load(Ordering::Acquire),
    }
}

fn describe_metrics() {
    let r = ember_telemetry::global();
    r.describe("ember_storage_sync_bytes_total", "Bytes of block images sent to members by syncs.");
    r.describe("ember_storage_retries_recognised_total", "Retried writes and truncates answered without applying them again.");
    r.describe("ember_storage_diverged_chunks_total", "Changes that failed part-way, leaving a chunk to be copied to its members.");
    r.describe("ember_storage_syncs_total", "Member syncs completed, by path: log (the chunks the member missed) or full (both chunk listings compared).");
    r.describe("ember_storage_reads_total", "Chunk reads served, by this target's role in its chain (primary or replica).");
    r.describe("ember_storage_replica_read_checks_total", "Reads on a replica that asked the primary whether the chunk's state is committed.");
    r.describe("ember_storage_replica_reads_refused_total", "Reads on a replica refused because the primary had another state committed.");
}

/// Chunks a truncate empties at once.
const EMPTY_PARALLELISM: usize = 32;

/// Adds a joined task's count to `total`, or keeps its error if it is the first.
fn add_count(total: &mut Result<u32, Status>, joined: Option<Result<Result<u32, Status>, tokio::task::JoinError>>) {
    let result = match joined {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(Status::internal(format!("storage task failed: {e}"))),
        None => Ok(0),
    };
    match (total.as_mut(), result) {
        (Ok(sum), Ok(n)) => *sum += n,
        (Ok(_), Err(e)) => *total = Err(e),
        (Err(_), _) => {}
    }
}

/// Runs a change in a task of its own: once the local copy has changed, the change must run
/// to its end (commit, or mark the chunk diverged) even if the client stops waiting and its
/// request is dropped (the simulation found a write cut off by its deadline between the
/// local copy and the replicas, later acknowledged as a retry without being replicated).
async fn to_the_end(change: impl std::future::Future<Output = Result<Response, Status>> + Send + 'static) -> Result<Response, Status> {
    tokio::spawn(change).await.map_err(|e| Status::internal(format!("storage task failed: {e}")))?
}

/// Runs engine work on the blocking pool: every engine call may wait for an fsync.
/// A truncate's answer: what it emptied and the state of the chunk it kept.
fn kept(removed_chunks: u32, keep: ChunkId, info: ChunkInfo) -> TruncateResp {
    TruncateResp { removed_chunks, kept_index: keep.index, kept_version: info.version, kept_blocks: info.blocks }
}

/// The (offset, bytes) pieces a write carries: its payload at `offset`, or the payload cut
/// along `pieces`.
fn write_pieces(offset: u32, pieces: &[WritePiece], payload: Bytes) -> Result<Vec<(u32, Bytes)>, Status> {
    if pieces.is_empty() {
        return Ok(vec![(offset, payload)]);
    }
    let total: u64 = pieces.iter().map(|p| u64::from(p.len)).sum();
    if total != payload.len() as u64 {
        return Err(Status::invalid(format!("write pieces of {total} bytes with a payload of {}", payload.len())));
    }
    let mut at = 0usize;
    Ok(pieces
        .iter()
        .map(|p| {
            let piece = (p.offset, payload.slice(at..at + p.len as usize));
            at += p.len as usize;
            piece
        })
        .collect())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::EngineError> + Send + 'static,
) -> Result<T, Status> {
    settle(ember_net::blocking(f).await)
}

/// A read of `len` bytes from the engine: in place when it is brief and its request alone on
/// its connection (`ember_net::blocking_brief`), else as [`blocking`].
pub(crate) async fn read_blocking<T: Send + 'static>(
    len: u32,
    f: impl FnOnce() -> Result<T, crate::EngineError> + Send + 'static,
) -> Result<T, Status> {
    if len <= BRIEF_READ_BYTES {
        settle(ember_net::blocking_brief(f).await)
    } else {
        blocking(f).await
    }
}

fn settle<T>(done: Result<Result<T, crate::EngineError>, tokio::task::JoinError>) -> Result<T, Status> {
    done.map_err(|e| Status::internal(format!("storage task failed: {e}")))?
        .map_err(|e| e.status())
}

impl Service for StorageService {
    fn call(self: Arc<Self>, req: Request) -> ServiceFuture {
        Box::pin(async move { self.dispatch(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::last_kept_chunk;

    #[test]
    fn the_last_kept_chunk_is_the_highest_one_of_the_chain_up_to_the_cut() {
        // One chain holds every chunk.
        assert_eq!(last_kept_chunk(5, 1, 0), 5);
        // Three chains: position 1 holds chunks 1, 4, 7, ...
        assert_eq!(last_kept_chunk(7, 3, 1), 7);
        assert_eq!(last_kept_chunk(6, 3, 1), 4);
        assert_eq!(last_kept_chunk(5, 3, 1), 4);
        // The cut lies before the chain's first chunk: that one is kept, empty.
        assert_eq!(last_kept_chunk(0, 3, 2), 2);
    }
}
