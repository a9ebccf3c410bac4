//! Ember's metadata service.
//!
//! Stateless in the 3FS sense: every request is one serializable transaction on the shared KV
//! (`ember-kv`), so any number of meta servers can serve any request. The pieces:
//!
//! * [`schema`]: key layout (`INOD`, `DENT`, `DATR`, `INOS`, `LOCK`, `GCQ_`, `SING`) and stored records;
//! * [`ids`]: inode ids from persistent sharded counters, handed out in blocks;
//! * [`MetaStore`]: every file-system operation as a plain synchronous call, testable over
//!   `MemKv` without a network;
//! * [`acl`]: POSIX ACLs in their xattr form, kept in step with the mode;
//! * [`locks`]: POSIX and flock locks of one file as a plain value, kept in `LOCK` records;
//! * [`gc`]: background removal of unlinked files' chunks once no live session holds them, and
//!   of locks whose client is gone;
//! * [`MetaService`]: the RPC adapter; [`run_meta`]: the whole process.

pub mod acl;
pub mod chains;
mod error;
pub mod gc;
pub mod ids;
pub mod locks;
pub mod schema;
mod server;
mod service;
pub mod store;

pub use chains::{ChainSource, FixedChains, RoutingChains, Space};
pub use error::MetaError;
pub use server::{run_meta, MetaConfig, MetaDurability};
pub use service::MetaService;
pub use store::{check_name, now_ns, InlineReply, MetaStore, Opened, Perm, SetAttrs, StoreConfig, SPILL_HOLD};
