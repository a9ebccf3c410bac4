//! RPC front of a storage node: checks routing and checksums, then calls the target's engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ember_net::routing::RoutingWatcher;
use ember_net::{decode_body, Request, Response, Service, ServiceFuture};
use ember_proto::mgmtd::TargetReport;
use ember_proto::storage::*;
use ember_proto::Method;
use ember_proto::routing::RoutingTable;
use ember_types::{ChainId, ChunkId, InodeId, LocalState, Status, StatusCode, TargetId, TargetState};

use crate::ChunkEngine;

/// Largest total a single batch read may return; keeps replies under the frame limit.
const MAX_BATCH_READ_BYTES: u64 = 64 << 20;

/// One target of this node: its engine and what this node says about it to mgmtd.
struct LocalTarget {
    engine: Arc<ChunkEngine>,
    state: AtomicU8,
}

impl LocalTarget {
    fn state(&self) -> LocalState {
        LocalState::from_u8(self.state.load(Ordering::Acquire)).unwrap_or(LocalState::Online)
    }

    fn set_state(&self, s: LocalState) {
        self.state.store(s.to_u8(), Ordering::Release);
    }
}

pub struct StorageService {
    targets: HashMap<TargetId, LocalTarget>,
    routing: Arc<RoutingWatcher>,
}

impl StorageService {
    /// Every target starts ONLINE: after a start it may have missed writes, and only mgmtd
    /// can say whether it may serve.
    pub fn new(targets: HashMap<TargetId, Arc<ChunkEngine>>, routing: Arc<RoutingWatcher>) -> Self {
        let targets = targets
            .into_iter()
            .map(|(id, engine)| (id, LocalTarget { engine, state: AtomicU8::new(LocalState::Online.to_u8()) }))
            .collect();
        StorageService { targets, routing }
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

    async fn dispatch(&self, req: Request) -> Result<Response, Status> {
        match Method::from_u16(req.method) {
            Some(Method::StorageWrite) => self.write(decode_body(&req.body)?, req.payload).await,
            Some(Method::StorageBatchRead) => self.batch_read(decode_body(&req.body)?).await,
            Some(Method::StorageTruncate) => self.truncate(decode_body(&req.body)?).await,
            Some(Method::StorageRemoveChunks) => self.remove_chunks(decode_body(&req.body)?).await,
            Some(Method::StorageSpaceInfo) => Ok(Response::msg(&SpaceInfoResp { targets: self.reports() })),
            _ => Err(Status::new(StatusCode::UnknownMethod, format!("storage has no method {:#06x}", req.method))),
        }
    }

    /// Resolves a request's chunk to a local engine after checking the client routed by the
    /// chain version this node knows (refreshing once if they differ).
    async fn engine_for(&self, c: &ChunkRef) -> Result<Arc<ChunkEngine>, Status> {
        let target = TargetId(c.target_id);
        let local = self.targets.get(&target).ok_or_else(|| {
            Status::new(StatusCode::NoSuchTarget, format!("target {target} is not on this node"))
        })?;
        if local.state() != LocalState::UpToDate {
            return Err(Status::new(
                StatusCode::RoutingStale,
                format!("target {target} is {} here and does not serve yet", local.state().name()),
            ));
        }
        let engine = local.engine.clone();
        if self.chain_matches(c, false) {
            return Ok(engine);
        }
        let _ = self.routing.refresh().await;
        if self.chain_matches(c, true) {
            return Ok(engine);
        }
        Err(Status::new(
            StatusCode::RoutingStale,
            format!("chain {} version {} does not hold target {target} here", c.chain_id, c.chain_version),
        ))
    }

    fn chain_matches(&self, c: &ChunkRef, log: bool) -> bool {
        let table = self.routing.get();
        let serving = table
            .target(TargetId(c.target_id))
            .is_some_and(|t| TargetState::from_u8(t.state as u8) == Some(TargetState::Serving));
        let ok = serving
            && table
                .chain(ChainId(c.chain_id))
                .is_some_and(|chain| chain.version == c.chain_version && chain.targets.contains(&c.target_id));
        if !ok && log {
            tracing::debug!(chain = c.chain_id, version = c.chain_version, routing = table.version(), "stale route");
        }
        ok
    }

    async fn write(&self, r: WriteReq, payload: Bytes) -> Result<Response, Status> {
        let c = r.chunk.ok_or_else(|| Status::invalid("write without a chunk"))?;
        let engine = self.engine_for(&c).await?;
        if crc32c::crc32c(&payload) != r.crc32c {
            return Err(Status::new(StatusCode::ChecksumMismatch, "write payload does not match its CRC32C"));
        }
        let chunk = ChunkId::new(InodeId(c.inode), c.index);
        let info = blocking(move || engine.write(chunk, r.offset, &payload)).await?;
        Ok(Response::msg(&WriteResp { version: info.version, chunk_len: info.len }))
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

    async fn read_one(&self, io: ReadIo) -> Result<Vec<u8>, Status> {
        let c = io.chunk.ok_or_else(|| Status::invalid("read without a chunk"))?;
        let engine = self.engine_for(&c).await?;
        let chunk = ChunkId::new(InodeId(c.inode), c.index);
        blocking(move || engine.read(chunk, io.offset, io.len)).await
    }

    async fn truncate(&self, r: TruncateReq) -> Result<Response, Status> {
        let c = r.chain.ok_or_else(|| Status::invalid("truncate without a chain"))?;
        if r.chunk_size == 0 || r.stripe == 0 || r.stripe_position >= r.stripe {
            return Err(Status::invalid("truncate needs a chunk size and a stripe position inside the stripe"));
        }
        let engine = self.engine_for(&c).await?;
        let cs = u64::from(r.chunk_size);
        let boundary = r.length / cs;
        let Ok(boundary) = u32::try_from(boundary) else {
            return Err(Status::invalid(format!("length {} is beyond the largest file", r.length)));
        };
        let inode = InodeId(c.inode);
        let in_chunk = (r.length % cs) as u32;
        let here = boundary % r.stripe == r.stripe_position;
        let removed = blocking(move || {
            let removed = engine.remove_chunks(inode, boundary.saturating_add(1))?;
            let chunk = ChunkId::new(inode, boundary);
            if here && engine.chunk_info(chunk)?.is_some() {
                engine.truncate(chunk, in_chunk)?;
            }
            Ok(removed)
        })
        .await?;
        Ok(Response::msg(&TruncateResp { removed_chunks: removed }))
    }

    async fn remove_chunks(&self, r: RemoveChunksReq) -> Result<Response, Status> {
        let c = r.chain.ok_or_else(|| Status::invalid("remove without a chain"))?;
        let engine = self.engine_for(&c).await?;
        let inode = InodeId(c.inode);
        let removed = blocking(move || engine.remove_chunks(inode, r.from_index)).await?;
        Ok(Response::msg(&RemoveChunksResp { removed }))
    }
}

fn report(id: TargetId, t: &LocalTarget) -> TargetReport {
    let s = t.engine.stats();
    TargetReport {
        target_id: id.0,
        used_bytes: s.used_blocks * u64::from(s.block_size),
        capacity_bytes: s.capacity_bytes,
        free_bytes: s.free_bytes,
        chunks: s.chunks,
        local_state: t.state().to_u8().into(),
    }
}

/// Runs engine work on the blocking pool: every engine call may wait for an fsync.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::EngineError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("storage task failed: {e}")))?
        .map_err(|e| e.status())
}

impl Service for StorageService {
    fn call(self: Arc<Self>, req: Request) -> ServiceFuture {
        Box::pin(async move { self.dispatch(req).await })
    }
}
