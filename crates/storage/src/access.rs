//! Who may do what on a target: the checks a storage node makes against its routing table
//! before touching a chunk.

use ember_proto::routing::RoutingTable;
use ember_proto::storage::ChunkRef;
use ember_types::{ChainId, LocalState, TargetId, TargetState};

/// What a request needs from the target it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Client I/O: the chain's primary (first serving member), up to date, at the client's
    /// chain version.
    Primary,
    /// Client reads away from the primary: a serving member, up to date, at the client's chain
    /// version.
    Replica,
    /// From the primary (replication, sync): a serving or syncing member at the same chain
    /// version; a syncing member is still ONLINE locally.
    Member,
    /// Deleting the chunks of a removed file: any local target that can write.
    Any,
}

/// Checks `c` against the routing table; the error says what did not match.
pub fn check(table: &RoutingTable, c: &ChunkRef, local: LocalState, need: Need) -> Result<(), String> {
    let target = TargetId(c.target_id);
    if need == Need::Any {
        return match local {
            LocalState::Offline => Err(format!("target {target} is offline here")),
            _ => Ok(()),
        };
    }
    let chain = table.chain(ChainId(c.chain_id)).ok_or_else(|| format!("chain {} is unknown", c.chain_id))?;
    if chain.version != c.chain_version {
        return Err(format!("chain {} is at version {}, not {}", c.chain_id, chain.version, c.chain_version));
    }
    if !chain.targets.contains(&c.target_id) {
        return Err(format!("target {target} is not in chain {}", c.chain_id));
    }
    let public = table.target(target).and_then(|t| TargetState::from_u8(t.state as u8));
    match need {
        Need::Primary => {
            if local != LocalState::UpToDate {
                return Err(format!("target {target} is {} here and does not serve yet", local.name()));
            }
            if table.serving_targets(ChainId(c.chain_id)).first() != Some(&target) {
                return Err(format!("target {target} is not the primary of chain {}", c.chain_id));
            }
            Ok(())
        }
        Need::Replica => match (public, local) {
            (Some(TargetState::Serving), LocalState::UpToDate) => Ok(()),
            (state, local) => Err(format!("target {target} is {state:?} and {} here: it serves no reads", local.name())),
        },
        Need::Member => match (public, local) {
            (_, LocalState::Offline) => Err(format!("target {target} is offline here")),
            (Some(TargetState::Serving | TargetState::Syncing), _) => Ok(()),
            (state, _) => Err(format!("target {target} is {state:?} and takes no replication")),
        },
        Need::Any => Ok(()),
    }
}

/// Async per-chunk locks of a primary: a chunk's writes, truncates and sync copies run one at
/// a time, and a read waits for the write in flight (which may not be committed yet).
pub struct ChunkLocks {
    shards: Vec<tokio::sync::Mutex<()>>,
}

const SHARDS: usize = 1024;

impl ChunkLocks {
    pub fn new() -> Self {
        ChunkLocks { shards: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect() }
    }

    pub async fn lock(&self, chunk: ember_types::ChunkId) -> tokio::sync::MutexGuard<'_, ()> {
        let h = chunk.inode.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(chunk.index);
        self.shards[(h % SHARDS as u64) as usize].lock().await
    }
}
