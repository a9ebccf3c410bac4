//! Reads served by any SERVING member of a chain, not only by its primary.
//!
//! A member applies a replicated change before the primary has heard from every other member,
//! so its newest copy of a chunk may not be committed yet, and a read of it could be undone by
//! a failover. A member therefore serves a chunk only in a state the primary has confirmed as
//! committed: it remembers the last confirmed (version, length, digest) per chunk, and when its
//! copy differs from that it asks the primary (`CommittedVersion`, which waits for the change in
//! flight). If the primary's committed state is not the one just read, the member answers
//! `NotCommitted` and the client reads from the primary instead.
//!
//! Why that is linearizable: the member read state v while it was in the write set, so v+1 was
//! not committed then (it needs this member's copy); the primary's answer says v is committed.
//! So v was the newest committed state at some instant between the read's start and its
//! answer. A member taken out of the write set stops serving when its lease runs out, and a
//! primary commits without a member only once the member's lease has run out
//! (`wait_out_leases`).

use std::collections::HashMap;
use std::sync::Mutex;

use ember_net::Response;
use ember_proto::storage::{ChunkRef, CommittedVersionReq, CommittedVersionResp, ReadIo};
use ember_types::{ChainId, ChunkId, InodeId, Status, StatusCode, TargetId};

use crate::access::Need;
use crate::service::{blocking, read_blocking, StorageService};
use crate::ChunkInfo;

/// Beyond this many remembered chunks the memory starts over: forgetting only costs a question
/// to the primary on the next read of each chunk.
const MAX_CONFIRMED: usize = 1 << 16;

/// The chunk states the primaries confirmed as committed, per local target.
#[derive(Default)]
pub struct Confirmed {
    states: Mutex<HashMap<(TargetId, ChunkId), ChunkInfo>>,
}

impl Confirmed {
    fn holds(&self, target: TargetId, chunk: ChunkId, info: ChunkInfo) -> bool {
        self.lock().get(&(target, chunk)) == Some(&info)
    }

    fn remember(&self, target: TargetId, chunk: ChunkId, info: ChunkInfo) {
        let mut states = self.lock();
        if states.len() >= MAX_CONFIRMED {
            states.clear();
        }
        states.insert((target, chunk), info);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TargetId, ChunkId), ChunkInfo>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StorageService {
    /// Whether `c` names the chain's primary in this node's routing.
    pub(crate) fn names_primary(&self, c: &ChunkRef) -> bool {
        self.routing.get().serving_targets(ChainId(c.chain_id)).first() == Some(&TargetId(c.target_id))
    }

    /// Serves a read on a member that is not the primary, from a committed state only.
    pub(crate) async fn read_on_replica(&self, c: ChunkRef, io: ReadIo) -> Result<Vec<u8>, Status> {
        let engine = self.resolve(&c, Need::Replica).await?;
        self.check_read_lease(c.chain_id)?;
        let chunk = ChunkId::new(InodeId(c.inode), c.index);
        let target = TargetId(c.target_id);
        let (info, data) = read_blocking(io.len, move || engine.read_with_info(chunk, io.offset, io.len)).await?;
        // Still a serving member with a lease after the read: it was one while reading.
        self.resolve(&c, Need::Replica).await?;
        self.check_read_lease(c.chain_id)?;
        if self.confirmed.holds(target, chunk, info) {
            tracing::debug!(%chunk, %target, version = info.version, "read on a replica");
            return Ok(data);
        }
        ember_telemetry::global().inc("ember_storage_replica_read_checks_total", "", 1);
        let committed = self.ask_primary(&c).await?;
        if committed != info {
            ember_telemetry::global().inc("ember_storage_replica_reads_refused_total", "", 1);
            return Err(Status::new(
                StatusCode::NotCommitted,
                format!("chunk {chunk} is at version {} here, the primary has {} committed", info.version, committed.version),
            ));
        }
        self.confirmed.remember(target, chunk, info);
        tracing::debug!(%chunk, %target, version = info.version, "read on a replica, confirmed by the primary");
        Ok(data)
    }

    async fn ask_primary(&self, c: &ChunkRef) -> Result<ChunkInfo, Status> {
        let table = self.routing.get();
        let primary = *table
            .serving_targets(ChainId(c.chain_id))
            .first()
            .ok_or_else(|| Status::new(StatusCode::NotCommitted, format!("chain {} has no primary to confirm a read", c.chain_id)))?;
        let addr = table
            .target_address(primary)
            .ok_or_else(|| Status::new(StatusCode::NotCommitted, format!("primary {primary} has no node")))?;
        let req = CommittedVersionReq { chunk: Some(ChunkRef { target_id: primary.0, ..c.clone() }) };
        let resp = self.peers.get(addr).unary(&req).await.map_err(|st| {
            // The client can still read from the primary itself; our trouble reaching it is ours.
            Status::new(StatusCode::NotCommitted, format!("cannot confirm the read with primary {primary}: {st}"))
        })?;
        Ok(ChunkInfo { version: resp.version, len: resp.len, digest: resp.digest, blocks: resp.blocks })
    }

    /// Primary side: the chunk's committed state, after the change in flight on it (if any)
    /// has committed, checked like a read.
    pub(crate) async fn committed_version(&self, r: CommittedVersionReq) -> Result<Response, Status> {
        let c = r.chunk.ok_or_else(|| Status::invalid("committed version without a chunk"))?;
        let (_guard, engine, chunk) = self.lock_committed(&c).await?;
        let info = blocking(move || engine.chunk_info(chunk)).await?.unwrap_or_default();
        Ok(Response::msg(&CommittedVersionResp { version: info.version, len: info.len, digest: info.digest, blocks: info.blocks }))
    }
}
