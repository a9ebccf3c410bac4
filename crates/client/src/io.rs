//! File data I/O: maps byte ranges to chunks and chains, sends writes to each chain's
//! primary and reads to a serving replica, batched per storage node.

use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use ember_proto::meta::ChunkBlocks;
use ember_proto::storage::{BatchReadReq, BatchReadResp, ChunkRef, CopyReq, ReadIo, SyncBlocksReq, TruncateReq, WritePiece, WriteReq, WriteResp};
use ember_proto::routing::RoutingTable;
use ember_types::{ChainId, ChunkId, ChunkSpan, InodeId, Layout, Status, StatusCode};
use tokio::task::JoinSet;

use crate::{should_retry, Backoff, EmberClient, Retry};

/// Most bytes of pieces gathered into one write of a chunk (a single larger piece still goes
/// alone).
pub const MAX_WRITE_BYTES: usize = 4 << 20;

/// Reads of one request grouped by the storage node that will serve them.
struct ReadPlan {
    by_node: BTreeMap<String, Vec<(ChunkSpan, ReadIo)>>,
}

impl EmberClient {
    /// Writes `data` at `offset`; returns once every chunk write is durable on storage, with
    /// what each written chunk then holds.
    pub async fn write(self: &Arc<Self>, inode: InodeId, layout: &Layout, offset: u64, data: Bytes) -> Result<Vec<ChunkBlocks>, Status> {
        self.write_extents(inode, layout, vec![(offset, data)]).await
    }

    /// Writes disjoint `(offset, bytes)` extents in offset order, all chunks at once; returns
    /// once every one is durable on storage. The pieces that fall in one chunk travel in one
    /// write (up to [`MAX_WRITE_BYTES`]), so scattered small writes cost storage one request,
    /// one commit and one journal sync per chunk rather than one per piece. Returns what each
    /// written chunk then holds.
    pub async fn write_extents(self: &Arc<Self>, inode: InodeId, layout: &Layout, extents: Vec<(u64, Bytes)>) -> Result<Vec<ChunkBlocks>, Status> {
        let mut by_chunk: BTreeMap<ChunkId, Vec<(ChunkSpan, Bytes)>> = BTreeMap::new();
        for (offset, data) in extents {
            let spans = layout.spans(inode, offset, data.len()).map_err(|e| Status::invalid(e.to_string()))?;
            for span in spans {
                let part = data.slice(span.buf_offset..span.buf_offset + span.len as usize);
                by_chunk.entry(span.chunk).or_default().push((span, part));
            }
        }
        let mut tasks = JoinSet::new();
        for pieces in by_chunk.into_values() {
            let me = self.clone();
            tasks.spawn(async move {
                let mut last = None;
                for group in write_groups(pieces) {
                    last = Some(me.write_pieces(group).await?);
                }
                Ok(last)
            });
        }
        Ok(all_or_first_error(tasks, "write").await?.into_iter().flatten().collect())
    }

    /// One write of pieces of one chunk, in offset order (at least one).
    async fn write_pieces(&self, pieces: Vec<(ChunkSpan, Bytes)>) -> Result<ChunkBlocks, Status> {
        let Some((span, _)) = pieces.first().cloned() else { return Err(Status::internal("a write of no pieces")) };
        let (payload, parts) = match &pieces[..] {
            [(_, data)] => (data.clone(), Vec::new()),
            _ => {
                let mut payload = Vec::with_capacity(pieces.iter().map(|(_, d)| d.len()).sum());
                for (_, data) in &pieces {
                    payload.extend_from_slice(data);
                }
                let parts = pieces.iter().map(|(s, _)| WritePiece { offset: s.offset, len: s.len }).collect();
                (Bytes::from(payload), parts)
            }
        };
        let crc = crc32c::crc32c(&payload);
        let (_turn, request) = self.chunk_turn(span.chunk).await;
        let request = Some(request);
        self.with_route(span.chain, Retry::Idempotent, |table| {
            let (chunk, addr) = route(table, &span)?;
            let req = WriteReq { chunk: Some(chunk), offset: span.offset, crc32c: crc, request, pieces: parts.clone() };
            Ok((addr, req))
        }, |addr, req| {
            let peer = self.peer(&addr);
            let payload = payload.clone();
            async move { peer.call(&req, payload).await.map(|(resp, _)| chunk_blocks(span.chunk, &resp)) }
        })
        .await
    }

    /// Reads `len` bytes at `offset`; bytes no chunk holds (holes, short chunks) read as zeros.
    /// The caller clips the range to the file length.
    pub async fn read(self: &Arc<Self>, inode: InodeId, layout: &Layout, offset: u64, len: usize) -> Result<Vec<u8>, Status> {
        let mut out = vec![0u8; len];
        let spans = layout.spans(inode, offset, len).map_err(|e| Status::invalid(e.to_string()))?;
        let deadline = Instant::now() + self.config.retry_for;
        let mut backoff = Backoff::new();
        let mut pending = spans;
        // The first round spreads the spans over every serving member; what a replica could
        // not serve (its copy not yet confirmed committed, or it just left) goes to the
        // primary at once.
        let mut spread = self.config.read_from_replicas.then_some(self.client_id);
        while !pending.is_empty() {
            // A chain with no serving member (all of them failed or syncing) is waited for.
            pending = match plan_reads(&self.routing.get(), &pending, spread) {
                Ok(plan) => self.run_plan(plan, &mut out).await?,
                Err(st) if should_retry(&st, Retry::Idempotent) => pending,
                Err(st) => return Err(st),
            };
            if spread.take().is_some() {
                continue;
            }
            if !pending.is_empty() {
                if Instant::now() >= deadline {
                    return Err(Status::new(StatusCode::Unavailable, "storage did not serve the read in time"));
                }
                // Refreshed after the wait: the retry goes by routing as it is then.
                backoff.wait().await;
                let _ = self.routing.refresh().await;
            }
        }
        Ok(out)
    }

    /// Runs one batch per node in parallel; returns the spans to retry. A small read from a
    /// single node runs on the calling thread instead (see [`Self::read_batch`]).
    async fn run_plan(self: &Arc<Self>, plan: ReadPlan, out: &mut [u8]) -> Result<Vec<ChunkSpan>, Status> {
        let mut retry = Vec::new();
        if plan.by_node.len() == 1 && out.len() <= IN_PLACE_READ_MAX {
            for (addr, ios) in plan.by_node {
                let (spans, result) = self.clone().read_batch(addr, ios, true).await;
                collect_read(&spans, result, out, &mut retry)?;
            }
            return Ok(retry);
        }
        let mut tasks = JoinSet::new();
        for (addr, ios) in plan.by_node {
            tasks.spawn(self.clone().read_batch(addr, ios, false));
        }
        while let Some(joined) = tasks.join_next().await {
            let (spans, result) = joined.map_err(|e| Status::internal(format!("read task failed: {e}")))?;
            collect_read(&spans, result, out, &mut retry)?;
        }
        Ok(retry)
    }

    /// Reads `ios` from the storage node at `addr`. `in_place`: first on the calling thread's
    /// own connection if it has them (a FUSE thread, which blocks for the reply anyway): the
    /// reply then wakes that thread directly, where the shared connection's reader task would
    /// wake a runtime worker first, a wake-up as long as the read itself on a small VM. A
    /// call unanswered after `STALLED` continues as any other read.
    async fn read_batch(
        self: Arc<Self>,
        addr: String,
        ios: Vec<(ChunkSpan, ReadIo)>,
        in_place: bool,
    ) -> (Vec<ChunkSpan>, Result<(BatchReadResp, Bytes), Status>) {
        let peer = self.peer(&addr);
        let (spans, ios): (Vec<ChunkSpan>, Vec<ReadIo>) = ios.into_iter().unzip();
        let req = BatchReadReq { ios };
        let stalled = match in_place.then(|| peer.call_here_within(&req, STALLED)).flatten() {
            Some(Err(st)) if st.code == StatusCode::Timeout => true,
            Some(result) => return (spans, result),
            None => false,
        };
        // Any change of a chain's members (a primary or replica gone) bumps its version.
        let chains: Vec<(ChainId, u64)> = req.ios.iter().filter_map(|io| io.chunk.as_ref()).map(|c| (ChainId(c.chain_id), c.chain_version)).collect();
        let moved = |table: &RoutingTable| chains.iter().any(|(c, v)| table.chain(*c).map(|c| c.version) != Some(*v));
        if stalled && self.has_moved(&moved).await {
            return (spans, Err(rerouted()));
        }
        let result = self.unless_moved(moved, peer.call(&req, Bytes::new())).await;
        (spans, result)
    }

    /// Cuts the file's chunks on every chain of its layout down to `length`. Each chain's
    /// primary applies the cut and replicates it.
    pub async fn truncate_chunks(&self, inode: InodeId, layout: &Layout, length: u64) -> Result<Vec<ChunkBlocks>, Status> {
        let stripe = layout.chains.len() as u32;
        let request = Some(self.new_request());
        let mut kept = Vec::with_capacity(layout.chains.len());
        for (position, chain) in layout.chains.iter().enumerate() {
            let resp = self.with_route(*chain, Retry::Idempotent, |table| primary_ref(table, inode, *chain), |addr, c| async move {
                let req = TruncateReq {
                    chain: Some(c),
                    length,
                    chunk_size: layout.chunk_size,
                    stripe,
                    stripe_position: position as u32,
                    request,
                };
                self.peer(&addr).unary(&req).await
            })
            .await?;
            kept.push(ChunkBlocks { index: resp.kept_index, version: resp.kept_version, blocks: resp.kept_blocks });
        }
        Ok(kept)
    }

    /// Copies `len` bytes at `src_offset` of one file to `dst_offset` of another (or the same),
    /// storage to storage: each piece is sent to the primary of its destination chunk, which
    /// reads the source chunk itself. Returns once every piece is durable. The caller clips
    /// `len` to the source's length; bytes the source chunks do not hold copy as zeros.
    pub async fn copy_range(self: &Arc<Self>, src: (InodeId, &Layout, u64), dst: (InodeId, &Layout, u64), len: u64) -> Result<Vec<ChunkBlocks>, Status> {
        let pieces = copy_pieces(src, dst, len)?;
        let mut tasks = JoinSet::new();
        for (from, to) in pieces {
            let me = self.clone();
            tasks.spawn(async move { me.copy_piece(from, to).await });
        }
        all_or_first_error(tasks, "copy").await
    }

    async fn copy_piece(&self, from: ChunkSpan, to: ChunkSpan) -> Result<ChunkBlocks, Status> {
        let (_turn, request) = self.chunk_turn(to.chunk).await;
        let plan = |table: &RoutingTable| {
            let (chunk, addr) = route(table, &to)?;
            let (src, _) = route(table, &from)?;
            let req = CopyReq { chunk: Some(chunk), offset: to.offset, src: Some(src.clone()), src_offset: from.offset, len: to.len, request: Some(request) };
            Ok(((addr, src.target_id, src.chain_version), req))
        };
        self.with_route(to.chain, Retry::Idempotent, plan, |(addr, _, _), req| async move {
            self.peer(&addr).unary(&req).await.map(|resp| chunk_blocks(to.chunk, &resp))
        })
        .await
    }

    /// The logical 4 KiB blocks that chunk `index` of the file stores (the others are holes),
    /// and the chunk's length; `None` if the chunk does not exist. Asked of the chain's primary,
    /// which holds every acknowledged write.
    pub async fn stored_blocks(&self, inode: InodeId, layout: &Layout, index: u32) -> Result<Option<(u32, Vec<u32>)>, Status> {
        let span = layout.spans(inode, u64::from(index) * u64::from(layout.chunk_size), 1).map_err(|e| Status::invalid(e.to_string()))?;
        let span = *span.first().ok_or_else(|| Status::internal("a one-byte range maps to no chunk"))?;
        let resp = self
            .with_route(span.chain, Retry::Idempotent, |table| route(table, &span).map(|(c, addr)| (addr, c)), |addr, c| async move {
                self.peer(&addr).unary(&SyncBlocksReq { chunk: Some(c) }).await
            })
            .await?;
        Ok(resp.exists.then_some((resp.len, resp.blocks)))
    }

    /// Resolves a route with `plan`, runs `call`, and retries both while routing changes.
    async fn with_route<A, R, T, F, Fut>(&self, chain: ChainId, retry: Retry, plan: F, call: impl Fn(A, R) -> Fut) -> Result<T, Status>
    where
        A: Clone + PartialEq,
        F: Fn(&RoutingTable) -> Result<(A, R), Status>,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.config.retry_for;
        let mut backoff = Backoff::new();
        loop {
            let result = match plan(&self.routing.get()) {
                Ok((a, r)) => {
                    let first = a.clone();
                    let moved = |table: &RoutingTable| plan(table).map(|(a, _)| a).ok().as_ref() != Some(&first);
                    self.unless_moved(moved, call(a, r)).await
                }
                Err(e) => Err(e),
            };
            match result {
                Err(st) if should_retry(&st, retry) && Instant::now() < deadline => {
                    tracing::debug!(chain = chain.0, error = %st, "retrying storage request");
                    backoff.wait().await;
                    let _ = self.routing.refresh().await;
                }
                other => return other,
            }
        }
    }

    /// Runs `call`, but gives it up once routing says its route `moved`: a storage process that
    /// hangs without closing its connections is declared dead by mgmtd and replaced, and the
    /// caller then retries on the new route (writes carry request ids, so a write the hung
    /// process still applies later is not applied twice). Routing is looked at only after
    /// the call has taken `STALLED`.
    async fn unless_moved<T>(
        &self,
        moved: impl Fn(&RoutingTable) -> bool,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let mut call = std::pin::pin!(call);
        let mut wait = STALLED;
        loop {
            // `biased`: polled in order, not at random, so that a simulation replays exactly.
            tokio::select! {
                biased;
                result = &mut call => return result,
                () = tokio::time::sleep(wait) => {}
            }
            if self.has_moved(&moved).await {
                return Err(rerouted());
            }
            wait = STALLED / 2;
        }
    }

    /// Whether routing, refreshed, has `moved` a request away from where it was sent.
    async fn has_moved(&self, moved: &impl Fn(&RoutingTable) -> bool) -> bool {
        let table = self.routing.refresh().await.unwrap_or_else(|_| self.routing.get());
        moved(&table)
    }
}

fn rerouted() -> Status {
    Status::new(StatusCode::RoutingStale, "storage did not answer and routing moved the request elsewhere")
}

/// Places a batch's bytes in `out`, or adds its spans to `retry` when it failed in a way
/// worth retrying.
fn collect_read(spans: &[ChunkSpan], result: Result<(BatchReadResp, Bytes), Status>, out: &mut [u8], retry: &mut Vec<ChunkSpan>) -> Result<(), Status> {
    match result {
        Ok((resp, payload)) => retry.extend(place_results(spans, &resp.results, &payload, out)?),
        Err(st) if should_retry(&st, Retry::Idempotent) => retry.extend_from_slice(spans),
        Err(st) => return Err(st),
    }
    Ok(())
}

/// Consecutive runs of pieces of at most [`MAX_WRITE_BYTES`] each.
fn write_groups(pieces: Vec<(ChunkSpan, Bytes)>) -> Vec<Vec<(ChunkSpan, Bytes)>> {
    let mut groups: Vec<Vec<(ChunkSpan, Bytes)>> = Vec::new();
    let mut bytes = 0;
    for piece in pieces {
        let len = piece.1.len();
        match groups.last_mut() {
            Some(group) if bytes + len <= MAX_WRITE_BYTES => {
                group.push(piece);
                bytes += len;
            }
            _ => {
                groups.push(vec![piece]);
                bytes = len;
            }
        }
    }
    groups
}

/// Waits for every task (a started storage change runs to its end) and returns the first
/// failure, if any.
async fn all_or_first_error<T: 'static>(mut tasks: JoinSet<Result<T, Status>>, what: &str) -> Result<Vec<T>, Status> {
    let mut first_err = None;
    let mut out = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| Status::internal(format!("{what} task failed: {e}"))).and_then(|r| r) {
            Ok(v) => out.push(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(out), Err)
}

/// A chunk's state after a write, as meta takes it for the file's block count.
fn chunk_blocks(chunk: ChunkId, resp: &WriteResp) -> ChunkBlocks {
    ChunkBlocks { index: chunk.index, version: resp.version, blocks: resp.blocks }
}

/// How long a storage request may go unanswered before the client checks whether routing has
/// moved it: about the time mgmtd takes to declare a silent node dead.
const STALLED: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads up to this many bytes from one node run on the calling thread (`read_batch`): their
/// time goes to wake-ups more than to moving bytes.
const IN_PLACE_READ_MAX: usize = 128 * 1024;

/// The chain's primary (first serving target) for one span, with its node address.
fn route(table: &RoutingTable, span: &ChunkSpan) -> Result<(ChunkRef, String), Status> {
    route_to(table, span, None)
}

/// Like [`route`], or, with a `spread` seed, to one of the chain's serving members chosen by
/// the seed and the chunk: one client's reads of a chunk keep going to the same member, and
/// many clients and chunks spread over all of them.
fn route_to(table: &RoutingTable, span: &ChunkSpan, spread: Option<u64>) -> Result<(ChunkRef, String), Status> {
    let chain = table
        .chain(span.chain)
        .ok_or_else(|| Status::new(StatusCode::RoutingStale, format!("chain {} unknown", span.chain)))?;
    let serving = table.serving_targets(span.chain);
    let pick = spread.map_or(0, |seed| {
        let h = (seed ^ span.chunk.inode.0.rotate_left(32) ^ u64::from(span.chunk.index)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 32) as usize % serving.len().max(1)
    });
    let target = *serving
        .get(pick)
        .ok_or_else(|| Status::new(StatusCode::Unavailable, format!("chain {} has no serving target", span.chain)))?;
    let addr = table
        .target_address(target)
        .ok_or_else(|| Status::new(StatusCode::RoutingStale, format!("target {target} has no node")))?;
    let c = ChunkRef {
        inode: span.chunk.inode.0,
        index: span.chunk.index,
        chain_id: span.chain.0,
        chain_version: chain.version,
        target_id: target.0,
    };
    Ok((c, addr.to_owned()))
}

/// The chain's primary and a reference to it for chain-wide requests.
fn primary_ref(table: &RoutingTable, inode: InodeId, chain: ChainId) -> Result<(String, ChunkRef), Status> {
    let span = ChunkSpan { chunk: ember_types::ChunkId::new(inode, 0), chain, offset: 0, len: 0, buf_offset: 0 };
    let (c, addr) = route(table, &span)?;
    Ok((addr, c))
}

/// Splits a copy into (source, destination) spans of equal length that each stay inside one
/// chunk of either file.
fn copy_pieces(src: (InodeId, &Layout, u64), dst: (InodeId, &Layout, u64), len: u64) -> Result<Vec<(ChunkSpan, ChunkSpan)>, Status> {
    let bad = |e: ember_types::LayoutError| Status::invalid(e.to_string());
    let (src_cs, dst_cs) = (u64::from(src.1.chunk_size), u64::from(dst.1.chunk_size));
    let mut pieces = Vec::new();
    let mut done = 0u64;
    while done < len {
        let (s, d) = (src.2 + done, dst.2 + done);
        let take = (len - done).min(src_cs - s % src_cs).min(dst_cs - d % dst_cs) as usize;
        let from = src.1.spans(src.0, s, take).map_err(bad)?;
        let to = dst.1.spans(dst.0, d, take).map_err(bad)?;
        match (from.as_slice(), to.as_slice()) {
            ([f], [t]) => pieces.push((*f, *t)),
            _ => return Err(Status::internal("a copy piece crosses a chunk boundary")),
        }
        done += take as u64;
    }
    Ok(pieces)
}

fn plan_reads(table: &RoutingTable, spans: &[ChunkSpan], spread: Option<u64>) -> Result<ReadPlan, Status> {
    let mut by_node: BTreeMap<String, Vec<(ChunkSpan, ReadIo)>> = BTreeMap::new();
    for span in spans {
        let (chunk, addr) = route_to(table, span, spread)?;
        let io = ReadIo { chunk: Some(chunk), offset: span.offset, len: span.len };
        by_node.entry(addr).or_default().push((*span, io));
    }
    Ok(ReadPlan { by_node })
}

/// Copies each io's bytes to its place in `out`; returns spans whose io asked for a retry.
fn place_results(
    spans: &[ChunkSpan],
    results: &[ember_proto::storage::ReadResult],
    payload: &[u8],
    out: &mut [u8],
) -> Result<Vec<ChunkSpan>, Status> {
    if results.len() != spans.len() {
        return Err(Status::internal("storage answered a different number of reads than asked"));
    }
    let mut retry = Vec::new();
    let mut pos = 0usize;
    for (span, r) in spans.iter().zip(results) {
        if r.status != 0 {
            let st = Status::new(StatusCode::from_u16(r.status as u16), r.message.clone());
            if should_retry(&st, Retry::Idempotent) {
                retry.push(*span);
                continue;
            }
            return Err(st);
        }
        let n = r.len as usize;
        if n > span.len as usize || pos + n > payload.len() {
            return Err(Status::internal("storage returned more bytes than asked"));
        }
        out[span.buf_offset..span.buf_offset + n].copy_from_slice(&payload[pos..pos + n]);
        pos += n;
    }
    Ok(retry)
}
