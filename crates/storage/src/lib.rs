//! Ember's storage service.
//!
//! - [`engine`]: the per-target chunk engine: block-granular copy-on-write storage of chunks in
//!   one data file per target, chunk metadata in fjall, CRC32C per block.
//! - `service`: the RPC front that checks routing and checksums and calls the engines.
//! - `replication`: the primary's fan-out of versioned changes and the sync of members.
//! - `access`: which requests a target accepts in which state.
//! - `node`: the process: registration with mgmtd, heartbeats, serving.

mod access;
pub mod engine;
mod node;
mod replica_reads;
mod replication;
mod service;

pub use engine::{BlockImages, ChangeBase, ChunkEngine, ChunkInfo, CrashPoints, EngineError, EngineOptions, EngineStats, RequestId};
pub use node::{run_storage, StorageConfig, StorageNode};
pub use service::StorageService;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("rpc: {0}")]
    Rpc(ember_types::Status),
    #[error("startup: {0}")]
    Startup(String),
}
