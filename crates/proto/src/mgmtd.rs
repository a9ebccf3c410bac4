//! Cluster manager messages: registration, heartbeats, routing info, client sessions.

use crate::{Method, Rpc};

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterNodeReq {
    /// 0 asks mgmtd to assign a new id; a restarted node sends the id it was given before.
    #[prost(uint32, tag = "1")]
    pub node_id: u32,
    /// `ember_types::NodeKind::to_u8`.
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(string, tag = "3")]
    pub address: String,
    /// One entry per local target: its id, or 0 for a new target that needs one.
    #[prost(uint32, repeated, tag = "4")]
    pub target_ids: Vec<u32>,
    #[prost(string, tag = "5")]
    pub hostname: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterNodeResp {
    #[prost(uint32, tag = "1")]
    pub node_id: u32,
    /// Same order as the request's `target_ids`.
    #[prost(uint32, repeated, tag = "2")]
    pub target_ids: Vec<u32>,
}

impl Rpc for RegisterNodeReq {
    const METHOD: Method = Method::MgmtdRegisterNode;
    type Response = RegisterNodeResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TargetReport {
    #[prost(uint32, tag = "1")]
    pub target_id: u32,
    #[prost(uint64, tag = "2")]
    pub used_bytes: u64,
    #[prost(uint64, tag = "3")]
    pub capacity_bytes: u64,
    #[prost(uint64, tag = "4")]
    pub free_bytes: u64,
    #[prost(uint64, tag = "5")]
    pub chunks: u64,
    /// `ember_types::LocalState::to_u8`; 0 (absent) from an older node means up to date.
    #[prost(uint32, tag = "6")]
    pub local_state: u32,
    /// Chain version of the sync that made the target up to date; 0 if none has since the
    /// node started. mgmtd trusts an "up to date" from a SYNCING target only from a sync at
    /// the chain's current version, that is by the current primary, after the last change.
    #[prost(uint64, tag = "7")]
    pub synced_chain_version: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatReq {
    #[prost(uint32, tag = "1")]
    pub node_id: u32,
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(message, repeated, tag = "3")]
    pub targets: Vec<TargetReport>,
    /// Sender's monotonic heartbeat counter; mgmtd ignores one older than the last it saw.
    #[prost(uint64, tag = "4")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatResp {
    #[prost(uint64, tag = "1")]
    pub routing_version: u64,
    /// How long after sending this heartbeat the node may act as a chain's primary (serve
    /// reads): shorter than the time after which mgmtd declares it dead and lets another
    /// member take over.
    #[prost(uint64, tag = "2")]
    pub lease_ms: u64,
}

impl Rpc for HeartbeatReq {
    const METHOD: Method = Method::MgmtdHeartbeat;
    type Response = HeartbeatResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetRoutingReq {
    /// The version the caller already has; an unchanged table is not resent.
    #[prost(uint64, tag = "1")]
    pub known_version: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeInfo {
    #[prost(uint32, tag = "1")]
    pub node_id: u32,
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(string, tag = "3")]
    pub address: String,
    #[prost(string, tag = "4")]
    pub hostname: String,
    #[prost(bool, tag = "5")]
    pub alive: bool,
    /// Milliseconds since the last heartbeat, as seen by mgmtd.
    #[prost(uint64, tag = "6")]
    pub last_heartbeat_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TargetInfo {
    #[prost(uint32, tag = "1")]
    pub target_id: u32,
    #[prost(uint32, tag = "2")]
    pub node_id: u32,
    /// `ember_types::TargetState::to_u8`.
    #[prost(uint32, tag = "3")]
    pub state: u32,
    #[prost(uint32, tag = "4")]
    pub chain_id: u32,
    #[prost(uint64, tag = "5")]
    pub used_bytes: u64,
    #[prost(uint64, tag = "6")]
    pub capacity_bytes: u64,
    #[prost(uint64, tag = "7")]
    pub free_bytes: u64,
    #[prost(uint64, tag = "8")]
    pub chunks: u64,
    /// Last `ember_types::LocalState` the node reported; 0 = none yet.
    #[prost(uint32, tag = "9")]
    pub local_state: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChainInfo {
    #[prost(uint32, tag = "1")]
    pub chain_id: u32,
    /// Bumped on every membership or state change.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// Ordered members; the first serving one is the primary. Failed members move to the end.
    #[prost(uint32, repeated, tag = "3")]
    pub targets: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChainTableInfo {
    #[prost(uint32, tag = "1")]
    pub table_id: u32,
    #[prost(uint64, tag = "2")]
    pub version: u64,
    #[prost(uint32, repeated, tag = "3")]
    pub chains: Vec<u32>,
    /// `ember_types::ReplicationMode::to_u8` of the table's chains.
    #[prost(uint32, tag = "4")]
    pub mode: u32,
}

/// Everything a client or server needs to route requests. Versioned as a whole.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoutingInfo {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(message, repeated, tag = "2")]
    pub nodes: Vec<NodeInfo>,
    #[prost(message, repeated, tag = "3")]
    pub targets: Vec<TargetInfo>,
    #[prost(message, repeated, tag = "4")]
    pub chains: Vec<ChainInfo>,
    #[prost(message, repeated, tag = "5")]
    pub chain_tables: Vec<ChainTableInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetRoutingResp {
    /// False when the caller's `known_version` is current; `routing` is then absent.
    #[prost(bool, tag = "1")]
    pub changed: bool,
    #[prost(message, optional, tag = "2")]
    pub routing: Option<RoutingInfo>,
}

impl Rpc for GetRoutingReq {
    const METHOD: Method = Method::MgmtdGetRouting;
    type Response = GetRoutingResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtendClientSessionReq {
    #[prost(uint64, tag = "1")]
    pub client_id: u64,
    #[prost(string, tag = "2")]
    pub description: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtendClientSessionResp {
    #[prost(uint64, tag = "1")]
    pub session_timeout_ms: u64,
}

impl Rpc for ExtendClientSessionReq {
    const METHOD: Method = Method::MgmtdExtendClientSession;
    type Response = ExtendClientSessionResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListClientSessionsReq {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientSessionInfo {
    #[prost(uint64, tag = "1")]
    pub client_id: u64,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(uint64, tag = "3")]
    pub last_extended_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListClientSessionsResp {
    #[prost(message, repeated, tag = "1")]
    pub sessions: Vec<ClientSessionInfo>,
    /// False while mgmtd has been up for less than one session timeout: sessions live only in
    /// its memory, so a client missing from the list may simply not have called in yet.
    #[prost(bool, tag = "2")]
    pub complete: bool,
}

impl Rpc for ListClientSessionsReq {
    const METHOD: Method = Method::MgmtdListClientSessions;
    type Response = ListClientSessionsResp;
}

/// Builds a chain from targets that are in no chain yet.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateChainReq {
    #[prost(uint32, repeated, tag = "1")]
    pub targets: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateChainResp {
    #[prost(uint32, tag = "1")]
    pub chain_id: u32,
}

impl Rpc for CreateChainReq {
    const METHOD: Method = Method::MgmtdCreateChain;
    type Response = CreateChainResp;
}

/// Takes a target out of service; it must sync before it serves again.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OfflineTargetReq {
    #[prost(uint32, tag = "1")]
    pub target_id: u32,
    /// The chain version the requester (a primary dropping a failed member) acts on; a
    /// request from an older version is refused, so a deposed primary cannot take members
    /// out. 0: unconditional (an operator's request).
    #[prost(uint64, tag = "2")]
    pub chain_version: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OfflineTargetResp {}

impl Rpc for OfflineTargetReq {
    const METHOD: Method = Method::MgmtdOfflineTarget;
    type Response = OfflineTargetResp;
}
