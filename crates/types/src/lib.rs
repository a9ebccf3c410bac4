//! Identifiers, status codes, file layouts and the chunk -> chain mapping shared by every Ember
//! crate. Nothing here does I/O.

mod ids;
mod layout;
mod status;

pub use ids::{ChainId, ChainTableId, ChunkId, ClientId, InodeId, NodeId, TargetId};
pub use layout::{ChunkSpan, Layout, LayoutError, BLOCK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use status::{Status, StatusCode};

/// Kind of file-system object an inode describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileType {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileType {
    pub fn to_u8(self) -> u8 {
        match self {
            FileType::File => 1,
            FileType::Directory => 2,
            FileType::Symlink => 3,
            FileType::Fifo => 4,
            FileType::Socket => 5,
            FileType::CharDevice => 6,
            FileType::BlockDevice => 7,
        }
    }

    /// FIFOs, sockets and device nodes: names with attributes and nothing stored behind them
    /// (the kernel serves their opens itself).
    pub fn is_special(self) -> bool {
        matches!(self, FileType::Fifo | FileType::Socket | FileType::CharDevice | FileType::BlockDevice)
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(FileType::File),
            2 => Some(FileType::Directory),
            3 => Some(FileType::Symlink),
            4 => Some(FileType::Fifo),
            5 => Some(FileType::Socket),
            6 => Some(FileType::CharDevice),
            7 => Some(FileType::BlockDevice),
            _ => None,
        }
    }
}

/// Public state of a storage target inside its chain (3FS vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TargetState {
    Serving,
    Syncing,
    Waiting,
    LastServing,
    Offline,
}

impl TargetState {
    pub fn to_u8(self) -> u8 {
        match self {
            TargetState::Serving => 1,
            TargetState::Syncing => 2,
            TargetState::Waiting => 3,
            TargetState::LastServing => 4,
            TargetState::Offline => 5,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(TargetState::Serving),
            2 => Some(TargetState::Syncing),
            3 => Some(TargetState::Waiting),
            4 => Some(TargetState::LastServing),
            5 => Some(TargetState::Offline),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TargetState::Serving => "serving",
            TargetState::Syncing => "syncing",
            TargetState::Waiting => "waiting",
            TargetState::LastServing => "lastsrv",
            TargetState::Offline => "offline",
        }
    }
}

/// What a storage node says about one of its targets in heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LocalState {
    /// Holds every committed write of its chain (it has been serving without interruption).
    UpToDate,
    /// Alive, but may have missed writes (just started, or fenced): needs a sync first.
    Online,
    /// Cannot serve (disk failure, fsync error).
    Offline,
}

impl LocalState {
    pub fn to_u8(self) -> u8 {
        match self {
            LocalState::UpToDate => 1,
            LocalState::Online => 2,
            LocalState::Offline => 3,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(LocalState::UpToDate),
            2 => Some(LocalState::Online),
            3 => Some(LocalState::Offline),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LocalState::UpToDate => "uptodate",
            LocalState::Online => "online",
            LocalState::Offline => "offline",
        }
    }
}

/// How a chain's primary replicates a change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// To every member in parallel (Ember's design).
    #[default]
    FanOut,
    /// Store and forward, one member after another (3FS's chain replication), kept as the
    /// baseline benchmarks compare against.
    Chain,
}

impl ReplicationMode {
    pub fn to_u8(self) -> u8 {
        match self {
            ReplicationMode::FanOut => 0,
            ReplicationMode::Chain => 1,
        }
    }

    /// Unknown values from a newer mgmtd fall back to fan-out.
    pub fn from_u8(v: u8) -> Self {
        if v == 1 {
            ReplicationMode::Chain
        } else {
            ReplicationMode::FanOut
        }
    }
}

/// Role a registered node plays in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NodeKind {
    Meta,
    Storage,
}

impl NodeKind {
    pub fn to_u8(self) -> u8 {
        match self {
            NodeKind::Meta => 1,
            NodeKind::Storage => 2,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(NodeKind::Meta),
            2 => Some(NodeKind::Storage),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Meta => "meta",
            NodeKind::Storage => "storage",
        }
    }
}
