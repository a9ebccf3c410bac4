//! Durable mgmtd records and their KV keys (3FS prefixes: NODE, TGIF, CHIF, CHIT, SING).

use prost::Message;

use crate::MgmtdError;

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeRecord {
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(string, tag = "3")]
    pub hostname: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TargetRecord {
    #[prost(uint32, tag = "1")]
    pub node_id: u32,
    #[prost(uint32, tag = "2")]
    pub chain_id: u32,
    /// Public state (`TargetState::to_u8`); 0 in records written before states existed.
    #[prost(uint32, tag = "3")]
    pub state: u32,
}

impl TargetRecord {
    pub fn public_state(&self) -> ember_types::TargetState {
        ember_types::TargetState::from_u8(self.state as u8).unwrap_or(ember_types::TargetState::Serving)
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChainRecord {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(uint32, repeated, tag = "2")]
    pub targets: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChainTableRecord {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(uint32, repeated, tag = "2")]
    pub chains: Vec<u32>,
}

pub const NODE: &[u8; 4] = b"NODE";
pub const TARGET: &[u8; 4] = b"TGIF";
pub const CHAIN: &[u8; 4] = b"CHIF";
pub const TABLE: &[u8; 4] = b"CHIT";
pub const ROUTING_VERSION: &[u8] = b"SINGrouting-version";

/// Big-endian ids so a prefix scan returns records in id order.
pub fn key(prefix: &[u8; 4], id: u32) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn prefix_end(prefix: &[u8; 4]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end[3] += 1;
    end
}

pub fn id_of(key: &[u8]) -> Result<u32, MgmtdError> {
    let bytes: [u8; 4] = key
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(key, "key is not prefix + 4-byte id"))?;
    Ok(u32::from_be_bytes(bytes))
}

pub fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M, MgmtdError> {
    M::decode(value).map_err(|e| corrupt(key, &e.to_string()))
}

fn corrupt(key: &[u8], reason: &str) -> MgmtdError {
    MgmtdError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: reason.to_owned() }
}
