//! Every Ember RPC message and method id.
//!
//! Messages are Protocol Buffers encoded by `prost` from hand-written structs: a peer skips
//! fields it does not know, so adding a field never breaks an older reader. Bulk data (chunk
//! bytes) never goes through this encoding; it travels as the frame's raw payload.

pub mod meta;
pub mod mgmtd;
pub mod routing;
pub mod storage;

mod convert;

pub use convert::{layout_from_msg, layout_to_msg};
use prost::Message;

/// Method ids on the wire. The high byte names the service; values are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Method {
    MgmtdRegisterNode = 0x0101,
    MgmtdHeartbeat = 0x0102,
    MgmtdGetRouting = 0x0103,
    MgmtdExtendClientSession = 0x0104,
    MgmtdListClientSessions = 0x0105,
    MgmtdCreateChain = 0x0106,
    MgmtdOfflineTarget = 0x0107,

    MetaLookup = 0x0201,
    MetaGetAttr = 0x0202,
    MetaCreate = 0x0203,
    MetaOpen = 0x0204,
    MetaClose = 0x0205,
    MetaSync = 0x0206,
    MetaMkdir = 0x0207,
    MetaRmdir = 0x0208,
    MetaUnlink = 0x0209,
    MetaRename = 0x020a,
    MetaLink = 0x020b,
    MetaSymlink = 0x020c,
    MetaReadlink = 0x020d,
    MetaSetAttr = 0x020e,
    MetaReadDir = 0x020f,
    MetaStatFs = 0x0210,
    MetaWriteInline = 0x0211,
    MetaSpillInline = 0x0212,
    MetaGetXattr = 0x0213,
    MetaSetXattr = 0x0214,
    MetaListXattr = 0x0215,
    MetaRemoveXattr = 0x0216,
    MetaMknod = 0x0217,
    MetaSetLock = 0x0218,
    MetaGetLock = 0x0219,
    MetaReleaseLocks = 0x021a,
    MetaCloseSessions = 0x021b,
    MetaTmpfile = 0x021c,

    StorageWrite = 0x0301,
    StorageBatchRead = 0x0302,
    StorageTruncate = 0x0303,
    StorageRemoveChunks = 0x0304,
    StorageSpaceInfo = 0x0305,
    StorageReplicate = 0x0306,
    StorageSyncList = 0x0307,
    StorageSyncPatch = 0x0308,
    StorageSyncRemove = 0x0309,
    StorageSyncDone = 0x030a,
    StorageSyncBlocks = 0x030b,
    StorageCommittedVersion = 0x030c,
    StorageCopy = 0x030d,
}

impl Method {
    const ALL: [Method; 48] = [
        Method::MgmtdRegisterNode,
        Method::MgmtdHeartbeat,
        Method::MgmtdGetRouting,
        Method::MgmtdExtendClientSession,
        Method::MgmtdListClientSessions,
        Method::MgmtdCreateChain,
        Method::MgmtdOfflineTarget,
        Method::MetaLookup,
        Method::MetaGetAttr,
        Method::MetaCreate,
        Method::MetaOpen,
        Method::MetaClose,
        Method::MetaSync,
        Method::MetaMkdir,
        Method::MetaRmdir,
        Method::MetaUnlink,
        Method::MetaRename,
        Method::MetaLink,
        Method::MetaSymlink,
        Method::MetaReadlink,
        Method::MetaSetAttr,
        Method::MetaReadDir,
        Method::MetaStatFs,
        Method::MetaWriteInline,
        Method::MetaSpillInline,
        Method::MetaGetXattr,
        Method::MetaSetXattr,
        Method::MetaListXattr,
        Method::MetaRemoveXattr,
        Method::MetaMknod,
        Method::MetaSetLock,
        Method::MetaGetLock,
        Method::MetaReleaseLocks,
        Method::MetaCloseSessions,
        Method::MetaTmpfile,
        Method::StorageWrite,
        Method::StorageBatchRead,
        Method::StorageTruncate,
        Method::StorageRemoveChunks,
        Method::StorageSpaceInfo,
        Method::StorageReplicate,
        Method::StorageSyncList,
        Method::StorageSyncPatch,
        Method::StorageSyncRemove,
        Method::StorageSyncDone,
        Method::StorageSyncBlocks,
        Method::StorageCommittedVersion,
        Method::StorageCopy,
    ];

    pub fn from_u16(v: u16) -> Option<Method> {
        Self::ALL.iter().copied().find(|m| *m as u16 == v)
    }

    /// Short label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Method::MgmtdRegisterNode => "mgmtd.register_node",
            Method::MgmtdHeartbeat => "mgmtd.heartbeat",
            Method::MgmtdGetRouting => "mgmtd.get_routing",
            Method::MgmtdExtendClientSession => "mgmtd.extend_client_session",
            Method::MgmtdListClientSessions => "mgmtd.list_client_sessions",
            Method::MgmtdCreateChain => "mgmtd.create_chain",
            Method::MgmtdOfflineTarget => "mgmtd.offline_target",
            Method::MetaLookup => "meta.lookup",
            Method::MetaGetAttr => "meta.getattr",
            Method::MetaCreate => "meta.create",
            Method::MetaOpen => "meta.open",
            Method::MetaClose => "meta.close",
            Method::MetaSync => "meta.sync",
            Method::MetaMkdir => "meta.mkdir",
            Method::MetaRmdir => "meta.rmdir",
            Method::MetaUnlink => "meta.unlink",
            Method::MetaRename => "meta.rename",
            Method::MetaLink => "meta.link",
            Method::MetaSymlink => "meta.symlink",
            Method::MetaReadlink => "meta.readlink",
            Method::MetaSetAttr => "meta.setattr",
            Method::MetaReadDir => "meta.readdir",
            Method::MetaStatFs => "meta.statfs",
            Method::MetaWriteInline => "meta.write_inline",
            Method::MetaSpillInline => "meta.spill_inline",
            Method::MetaGetXattr => "meta.get_xattr",
            Method::MetaSetXattr => "meta.set_xattr",
            Method::MetaListXattr => "meta.list_xattr",
            Method::MetaRemoveXattr => "meta.remove_xattr",
            Method::MetaMknod => "meta.mknod",
            Method::MetaSetLock => "meta.set_lock",
            Method::MetaGetLock => "meta.get_lock",
            Method::MetaReleaseLocks => "meta.release_locks",
            Method::MetaCloseSessions => "meta.close_sessions",
            Method::MetaTmpfile => "meta.tmpfile",
            Method::StorageWrite => "storage.write",
            Method::StorageBatchRead => "storage.batch_read",
            Method::StorageTruncate => "storage.truncate",
            Method::StorageRemoveChunks => "storage.remove_chunks",
            Method::StorageSpaceInfo => "storage.space_info",
            Method::StorageReplicate => "storage.replicate",
            Method::StorageSyncList => "storage.sync_list",
            Method::StorageSyncPatch => "storage.sync_patch",
            Method::StorageSyncRemove => "storage.sync_remove",
            Method::StorageSyncDone => "storage.sync_done",
            Method::StorageSyncBlocks => "storage.sync_blocks",
            Method::StorageCommittedVersion => "storage.committed_version",
            Method::StorageCopy => "storage.copy",
        }
    }
}

/// Links a request message to its method and response type, so callers cannot mix them up.
pub trait Rpc: Message + Default {
    const METHOD: Method;
    type Response: Message + Default;
}

/// Decodes a message; the error is the decoder's description.
pub fn decode<M: Message + Default>(buf: &[u8]) -> Result<M, String> {
    M::decode(buf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_ids_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in Method::ALL {
            assert_eq!(Method::from_u16(m as u16), Some(m));
            assert!(seen.insert(m as u16));
            assert!(seen.len() <= Method::ALL.len());
        }
        assert_eq!(Method::from_u16(0xffff), None);
    }

    #[test]
    fn a_reader_skips_fields_added_by_a_newer_writer() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct LookupV2 {
            #[prost(uint64, tag = "1")]
            parent: u64,
            #[prost(bytes = "vec", tag = "2")]
            name: Vec<u8>,
            #[prost(string, tag = "99")]
            added_later: String,
        }
        let newer = LookupV2 { parent: 7, name: b"x".to_vec(), added_later: "hint".into() };
        let old: meta::LookupReq = decode(&newer.encode_to_vec()).unwrap();
        assert_eq!(old.parent, 7);
        assert_eq!(old.name, b"x");
    }
}
