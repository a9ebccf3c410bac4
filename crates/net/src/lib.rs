//! Ember's RPC transport: length-prefixed frames over TCP.
//!
//! A frame is a fixed 44-byte little-endian header, a message body (protobuf, see
//! `ember-proto`) and a raw payload (chunk bytes, never re-encoded). The header carries the
//! request id, so one connection multiplexes many requests in flight; a deadline budget, so a
//! server can drop work nobody waits for; and CRC32C sums of itself, the body and the payload.
//! Sizes are checked against limits before anything is allocated, so a peer announcing a
//! 4 GiB payload costs nothing but a closed connection.

mod client;
mod frame;
mod inline;
mod local;
mod own_conn;
pub mod routing;
mod server;
mod transport;

pub use client::{PeerPool, RpcClient};
pub use local::{serve_in_process, InProcess};
pub use own_conn::own_connections_on_this_thread;
pub use frame::{FrameError, FrameHeader, FrameKind, FrameLimits, HEADER_LEN, MAGIC, VERSION};
pub use server::{serve, serve_stream, Request, Response, Service, ServiceFuture};
pub use transport::{blocking, blocking_brief, run_blocking_inline_on_this_thread, BoxRead, BoxWrite, DialFuture, Dialer};

use ember_types::{Status, StatusCode};

/// Decodes a request body, mapping failure to a `DecodeError` status for the caller.
pub fn decode_body<M: prost::Message + Default>(body: &[u8]) -> Result<M, Status> {
    ember_proto::decode(body).map_err(|e| Status::new(StatusCode::DecodeError, e))
}

/// Replaces `path` with `contents` atomically and durably: written to a temporary name,
/// fsynced, renamed, and the directory fsynced. Used for the address a process bound (port 0
/// picks a free one, a harness reads it) and for ids a node must never forget.
pub fn write_file_atomic(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Binds a TCP listener; the error names the address, which the OS error alone does not.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
