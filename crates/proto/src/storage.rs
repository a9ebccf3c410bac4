//! Storage service messages. Chunk bytes travel as the frame payload, never inside a message.

use crate::{Method, Rpc};

/// Names one chunk on one target of one chain, at the chain version the client routed by.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkRef {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint32, tag = "2")]
    pub index: u32,
    #[prost(uint32, tag = "3")]
    pub chain_id: u32,
    #[prost(uint64, tag = "4")]
    pub chain_version: u64,
    #[prost(uint32, tag = "5")]
    pub target_id: u32,
}

/// Writes the frame payload at `offset` inside the chunk.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteReq {
    #[prost(message, optional, tag = "1")]
    pub chunk: Option<ChunkRef>,
    #[prost(uint32, tag = "2")]
    pub offset: u32,
    /// CRC32C of the payload computed by the client; storage verifies it before writing.
    #[prost(uint32, tag = "3")]
    pub crc32c: u32,
    /// The same on every retry of this write, so an applied write is not applied again.
    #[prost(message, optional, tag = "4")]
    pub request: Option<RequestRef>,
    /// Several pieces of the chunk written at once: the payload holds their bytes back to
    /// back, the pieces in offset order and apart, and `offset` is unused. Empty for a write
    /// of one piece.
    #[prost(message, repeated, tag = "5")]
    pub pieces: Vec<WritePiece>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WritePiece {
    #[prost(uint32, tag = "1")]
    pub offset: u32,
    #[prost(uint32, tag = "2")]
    pub len: u32,
}

/// A client's id for one request: (client id, sequence number of the client).
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct RequestRef {
    #[prost(uint64, tag = "1")]
    pub client: u64,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteResp {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(uint32, tag = "2")]
    pub chunk_len: u32,
    /// 4 KiB blocks the chunk stores after the write (holes take none).
    #[prost(uint32, tag = "3")]
    pub blocks: u32,
}

impl Rpc for WriteReq {
    const METHOD: Method = Method::StorageWrite;
    type Response = WriteResp;
}

/// Copies `len` bytes at `src_offset` of chunk `src` to `offset` of `chunk`, storage to storage
/// (copy_file_range): the receiving chain's primary reads them from the node routing gives for
/// `src.target_id` and writes them as it would a client's write (replicated, recognised on
/// retry by `request`). Bytes past the source chunk's end are zeros. Answered like a write.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CopyReq {
    #[prost(message, optional, tag = "1")]
    pub chunk: Option<ChunkRef>,
    #[prost(uint32, tag = "2")]
    pub offset: u32,
    #[prost(message, optional, tag = "3")]
    pub src: Option<ChunkRef>,
    #[prost(uint32, tag = "4")]
    pub src_offset: u32,
    #[prost(uint32, tag = "5")]
    pub len: u32,
    #[prost(message, optional, tag = "6")]
    pub request: Option<RequestRef>,
}

impl Rpc for CopyReq {
    const METHOD: Method = Method::StorageCopy;
    type Response = WriteResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadIo {
    #[prost(message, optional, tag = "1")]
    pub chunk: Option<ChunkRef>,
    #[prost(uint32, tag = "2")]
    pub offset: u32,
    #[prost(uint32, tag = "3")]
    pub len: u32,
}

/// Many reads against one storage node in one round trip.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchReadReq {
    #[prost(message, repeated, tag = "1")]
    pub ios: Vec<ReadIo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadResult {
    /// `StatusCode` of this io; 0 = ok.
    #[prost(uint32, tag = "1")]
    pub status: u32,
    #[prost(string, tag = "2")]
    pub message: String,
    /// Bytes of this io in the payload (may be short at the chunk end).
    #[prost(uint32, tag = "3")]
    pub len: u32,
}

/// The payload holds the results' bytes back to back, in request order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchReadResp {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<ReadResult>,
}

impl Rpc for BatchReadReq {
    const METHOD: Method = Method::StorageBatchRead;
    type Response = BatchReadResp;
}

/// Cuts a file to `length` on one chain: later chunks go, the boundary chunk is shortened.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TruncateReq {
    #[prost(message, optional, tag = "1")]
    pub chain: Option<ChunkRef>,
    #[prost(uint64, tag = "2")]
    pub length: u64,
    #[prost(uint32, tag = "3")]
    pub chunk_size: u32,
    /// Chains in the file's layout, to know which chunk indexes live on this chain.
    #[prost(uint32, tag = "4")]
    pub stripe: u32,
    #[prost(uint32, tag = "5")]
    pub stripe_position: u32,
    /// The same on every retry; remembered by the chain's last kept chunk of the file.
    #[prost(message, optional, tag = "6")]
    pub request: Option<RequestRef>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TruncateResp {
    #[prost(uint32, tag = "1")]
    pub removed_chunks: u32,
    /// The chain's last kept chunk of the file, which the cut changed: index, version and
    /// stored blocks after it.
    #[prost(uint32, tag = "2")]
    pub kept_index: u32,
    #[prost(uint64, tag = "3")]
    pub kept_version: u64,
    #[prost(uint32, tag = "4")]
    pub kept_blocks: u32,
}

impl Rpc for TruncateReq {
    const METHOD: Method = Method::StorageTruncate;
    type Response = TruncateResp;
}

/// Removes every chunk of `chain.inode` with index >= `from_index` held on the chain.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveChunksReq {
    #[prost(message, optional, tag = "1")]
    pub chain: Option<ChunkRef>,
    #[prost(uint32, tag = "2")]
    pub from_index: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveChunksResp {
    #[prost(uint32, tag = "1")]
    pub removed: u32,
}

impl Rpc for RemoveChunksReq {
    const METHOD: Method = Method::StorageRemoveChunks;
    type Response = RemoveChunksResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SpaceInfoReq {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SpaceInfoResp {
    #[prost(message, repeated, tag = "1")]
    pub targets: Vec<crate::mgmtd::TargetReport>,
}

impl Rpc for SpaceInfoReq {
    const METHOD: Method = Method::StorageSpaceInfo;
    type Response = SpaceInfoResp;
}

/// Primary -> replica: apply one versioned change to a chunk. A write carries whole 4 KiB block
/// images, back to back, as the frame payload; a truncate carries `truncate_to`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReplicateReq {
    /// `target_id` is the replica; `chain_version` the primary's view.
    #[prost(message, optional, tag = "1")]
    pub chunk: Option<ChunkRef>,
    /// The chunk version the change was built on; the replica applies it only there.
    #[prost(uint64, tag = "2")]
    pub base_version: u64,
    #[prost(uint32, optional, tag = "5")]
    pub truncate_to: Option<u32>,
    /// The sending primary's target: a member applies the change only if that target is the
    /// chain's primary at `chunk.chain_version` in its own routing too.
    #[prost(uint32, tag = "6")]
    pub from_target: u32,
    /// The client's request the change serves, remembered with the chunk on every replica.
    #[prost(message, optional, tag = "7")]
    pub request: Option<RequestRef>,
    /// A write: the logical index of the first image.
    #[prost(uint32, tag = "8")]
    pub first_block: u32,
    /// A write: the chunk length after it.
    #[prost(uint32, tag = "9")]
    pub chunk_len: u32,
    /// A write: the CRC32C of each image.
    #[prost(uint32, repeated, tag = "10")]
    pub block_crcs: Vec<u32>,
    /// A write of several runs of blocks: (first block, count) of each, flattened; empty
    /// when the images are one run from `first_block`.
    #[prost(uint32, repeated, tag = "11")]
    pub block_runs: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReplicateResp {
    #[prost(uint64, tag = "1")]
    pub version: u64,
}

impl Rpc for ReplicateReq {
    const METHOD: Method = Method::StorageReplicate;
    type Response = ReplicateResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkState {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint32, tag = "2")]
    pub index: u32,
    #[prost(uint64, tag = "3")]
    pub version: u64,
    #[prost(uint32, tag = "4")]
    pub len: u32,
    #[prost(uint64, tag = "5")]
    pub digest: u64,
}

/// One page of a target's chunks in key order, for comparing replicas.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncListReq {
    #[prost(message, optional, tag = "1")]
    pub target: Option<ChunkRef>,
    /// Resume after this chunk; absent starts at the beginning.
    #[prost(message, optional, tag = "2")]
    pub after: Option<ChunkState>,
    #[prost(uint32, tag = "3")]
    pub limit: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncListResp {
    #[prost(message, repeated, tag = "1")]
    pub chunks: Vec<ChunkState>,
}

impl Rpc for SyncListReq {
    const METHOD: Method = Method::StorageSyncList;
    type Response = SyncListResp;
}

/// Asks a member for its copy of a chunk: state and per-block CRCs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncBlocksReq {
    #[prost(message, optional, tag = "1")]
    pub chunk: Option<ChunkRef>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncBlocksResp {
    #[prost(bool, tag = "1")]
    pub exists: bool,
    #[prost(uint64, tag = "2")]
    pub version: u64,
    #[prost(uint32, tag = "3")]
    pub len: u32,
    /// Indexes of the stored blocks, ascending.
    #[prost(uint32, repeated, tag = "4")]
    pub blocks: Vec<u32>,
    /// CRC32C of each block in `blocks`.
    #[prost(uint32, repeated, tag = "5")]
    pub crcs: Vec<u32>,
}

impl Rpc for SyncBlocksReq {
    const METHOD: Method = Method::StorageSyncBlocks;
    type Response = SyncBlocksResp;
}

/// Makes a member's chunk equal to the primary's: keep `present` blocks, replace `patched` ones
/// with the payload (4 KiB images back to back), drop the rest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncPatchReq {
    #[prost(message, optional, tag = "1")]
    pub chunk: Option<ChunkRef>,
    #[prost(uint64, tag = "2")]
    pub version: u64,
    #[prost(uint32, tag = "3")]
    pub len: u32,
    #[prost(uint32, repeated, tag = "4")]
    pub present: Vec<u32>,
    #[prost(uint32, repeated, tag = "5")]
    pub patched: Vec<u32>,
    #[prost(uint32, tag = "6")]
    pub crc32c: u32,
    /// The request ids the chunk remembers, oldest first.
    #[prost(message, repeated, tag = "7")]
    pub requests: Vec<RequestRef>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncPatchResp {}

impl Rpc for SyncPatchReq {
    const METHOD: Method = Method::StorageSyncPatch;
    type Response = SyncPatchResp;
}

/// Removes a chunk the primary does not have.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncRemoveReq {
    #[prost(message, optional, tag = "1")]
    pub chunk: Option<ChunkRef>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncRemoveResp {}

impl Rpc for SyncRemoveReq {
    const METHOD: Method = Method::StorageSyncRemove;
    type Response = SyncRemoveResp;
}

/// The replica now holds everything the primary had committed when the sync started, and
/// gets every write since: it may report itself up to date.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncDoneReq {
    #[prost(message, optional, tag = "1")]
    pub target: Option<ChunkRef>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncDoneResp {}

impl Rpc for SyncDoneReq {
    const METHOD: Method = Method::StorageSyncDone;
    type Response = SyncDoneResp;
}

/// A replica asks the primary which state of a chunk is committed before it serves a read of a
/// version it has not seen confirmed (a write may still be on its way to the other members).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommittedVersionReq {
    /// The chunk, addressed to the primary at the replica's chain version.
    #[prost(message, optional, tag = "1")]
    pub chunk: Option<ChunkRef>,
}

/// The chunk's committed state on the primary; all zero when the chunk does not exist.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommittedVersionResp {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(uint32, tag = "2")]
    pub len: u32,
    #[prost(uint64, tag = "3")]
    pub digest: u64,
    #[prost(uint32, tag = "4")]
    pub blocks: u32,
}

impl Rpc for CommittedVersionReq {
    const METHOD: Method = Method::StorageCommittedVersion;
    type Response = CommittedVersionResp;
}
