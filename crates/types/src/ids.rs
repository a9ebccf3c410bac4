use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
                 serde::Serialize, serde::Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A file, directory or symlink. Equal to the FUSE node id, so the kernel's ids need no table.
    InodeId, u64
);
id_type!(
    /// A registered process (meta or storage server).
    NodeId, u32
);
id_type!(
    /// One storage target: a directory on one disk, owned by one storage node.
    TargetId, u32
);
id_type!(
    /// A replica group of targets; chunks are placed on chains.
    ChainId, u32
);
id_type!(
    /// An ordered list of chains that layouts pick from.
    ChainTableId, u32
);
id_type!(
    /// A client process (mount), used for open-file sessions and exactly-once retries.
    ClientId, u64
);

impl InodeId {
    /// The root directory. Equal to `FUSE_ROOT_ID`.
    pub const ROOT: InodeId = InodeId(1);
    /// First id handed out by the allocator; everything below is reserved.
    pub const FIRST_ALLOCATED: u64 = 0x1000;
}

/// One chunk of one file: the unit that storage targets hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId {
    pub inode: InodeId,
    pub index: u32,
}

impl ChunkId {
    pub const ENCODED_LEN: usize = 12;

    pub fn new(inode: InodeId, index: u32) -> Self {
        ChunkId { inode, index }
    }

    /// Big-endian so that the chunks of one inode sort together and in index order.
    pub fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.inode.0.to_be_bytes());
        out[8..].copy_from_slice(&self.index.to_be_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::ENCODED_LEN {
            return None;
        }
        let inode = u64::from_be_bytes(b[..8].try_into().ok()?);
        let index = u32::from_be_bytes(b[8..].try_into().ok()?);
        Some(ChunkId::new(InodeId(inode), index))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{}", self.inode.0, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_round_trips_and_sorts_by_inode_then_index() {
        let a = ChunkId::new(InodeId(5), 300);
        let b = ChunkId::new(InodeId(6), 1);
        assert_eq!(ChunkId::from_bytes(&a.to_bytes()), Some(a));
        assert!(a.to_bytes() < b.to_bytes());
        assert!(ChunkId::new(InodeId(5), 2).to_bytes() < a.to_bytes());
        assert_eq!(ChunkId::from_bytes(&[0u8; 5]), None);
    }
}
