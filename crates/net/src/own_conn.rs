//! Calls from a thread that blocks for its reply anyway (a FUSE worker), on a connection of
//! its own that it reads itself.
//!
//! A call through [`RpcClient`](crate::RpcClient) gets its reply from the connection's reader
//! task: a runtime worker wakes for the socket, then wakes the caller. On a busy small machine
//! each wake-up costs tens of microseconds, about what meta takes to handle a request. A thread
//! that asked for it ([`own_connections_on_this_thread`]) instead sends on a blocking socket of
//! its own and reads the reply there: one wake-up brings the reply to the thread waiting for
//! it. One call at a time per connection, so the only check a reply needs is its request id.
//! A connection that failed, timed out or answered out of turn is dropped; the next call
//! dials again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ember_types::{Status, StatusCode};

use crate::client::{reply_of, Reply};
use crate::frame::{Frame, FrameError, FrameHeader, FrameKind, FrameLimits, HEADER_LEN};

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static CONNS: RefCell<HashMap<String, Conn>> = RefCell::new(HashMap::new());
}

struct Conn {
    stream: TcpStream,
    next_id: u64,
    /// The read and write timeouts set on the socket.
    timeout: Duration,
}

/// From now on, calls made on this thread through
/// [`RpcClient::unary_here`](crate::RpcClient::unary_here) use this thread's own connections.
/// Only for a thread that may block (not a runtime worker).
pub fn own_connections_on_this_thread() {
    ENABLED.with(|e| e.set(true));
}

pub(crate) fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// One request without payload on this thread's connection to `addr`; the reply's payload, if
/// any, comes back as with any call.
pub(crate) fn call(addr: &str, method: u16, body: &[u8], timeout: Duration, limits: &FrameLimits) -> Reply {
    // Out of the map while in use, so a failure simply leaves it dropped.
    let taken = CONNS.with(|c| c.borrow_mut().remove(addr));
    let mut conn = match taken.filter(Conn::is_open) {
        Some(c) => c,
        None => connect(addr)?,
    };
    conn.set_timeout(timeout).map_err(|e| failed(addr, timeout, FrameError::Io(e)))?;
    let id = conn.next_id;
    conn.next_id += 1;
    let frame = exchange(&mut conn.stream, method, id, body, timeout, limits).map_err(|e| failed(addr, timeout, e))?;
    if frame.header.kind != FrameKind::Response || frame.header.request_id != id {
        return Err(Status::new(StatusCode::BadFrame, format!("{addr} answered out of turn")));
    }
    CONNS.with(|c| c.borrow_mut().insert(addr.to_owned(), conn));
    reply_of(frame)
}

fn connect(addr: &str) -> Result<Conn, Status> {
    let unavailable = |e: io::Error| Status::new(StatusCode::Unavailable, format!("connect {addr}: {e}"));
    let target = addr
        .to_socket_addrs()
        .map_err(unavailable)?
        .next()
        .ok_or_else(|| unavailable(io::Error::new(io::ErrorKind::NotFound, "no address")))?;
    let stream = TcpStream::connect_timeout(&target, crate::client::CONNECT_TIMEOUT).map_err(unavailable)?;
    stream.set_nodelay(true).map_err(unavailable)?;
    Ok(Conn { stream, next_id: 1, timeout: Duration::ZERO })
}

impl Conn {
    /// Whether the server has not closed the connection while it sat idle (a restarted
    /// server): then a request sent on it is certainly lost, and a new connection is dialed
    /// before sending instead, which keeps requests that may not be repeated (an exclusive
    /// create) from failing for nothing.
    fn is_open(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a valid socket descriptor and a one-byte buffer that outlives the call.
        let n = unsafe {
            libc::recv(self.stream.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        };
        // Nothing to read is the healthy state; a byte before any request is a protocol error.
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Each read and write waits at most `timeout` (the call's deadline).
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        // A zero timeout would mean "none" to the socket.
        let timeout = timeout.max(Duration::from_millis(1));
        if self.timeout != timeout {
            self.stream.set_read_timeout(Some(timeout))?;
            self.stream.set_write_timeout(Some(timeout))?;
            self.timeout = timeout;
        }
        Ok(())
    }
}

/// Why a call failed, as the async client says it: the request may have reached the server
/// unless the connection could not even be opened.
fn failed(addr: &str, timeout: Duration, e: FrameError) -> Status {
    match e {
        FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Status::new(StatusCode::Timeout, format!("rpc to {addr} timed out after {timeout:?}"))
        }
        FrameError::Closed | FrameError::Io(_) => Status::new(StatusCode::ConnectionClosed, format!("connection to {addr} closed")),
        FrameError::DataChecksum { what, .. } => {
            Status::new(StatusCode::ChecksumMismatch, format!("reply {what} from {addr} corrupted"))
        }
        other => Status::new(StatusCode::BadFrame, format!("reply from {addr}: {other}")),
    }
}

fn exchange(
    s: &mut TcpStream,
    method: u16,
    id: u64,
    body: &[u8],
    timeout: Duration,
    limits: &FrameLimits,
) -> Result<Frame, FrameError> {
    let mut header = FrameHeader::for_data(FrameKind::Request, method, id, body, &[]);
    header.timeout_ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
    s.write_all(&out)?;
    read_frame(s, limits)
}

/// The blocking twin of `frame::read_frame`: limits checked on the header before any buffer
/// exists, checksums after.
fn read_frame(s: &mut TcpStream, limits: &FrameLimits) -> Result<Frame, FrameError> {
    let mut hb = [0u8; HEADER_LEN];
    read_exact(s, &mut hb)?;
    let header = FrameHeader::decode(&hb)?;
    header.check_limits(limits)?;
    let body = read_bytes(s, header.body_len as usize)?;
    let payload = read_bytes(s, header.payload_len as usize)?;
    header.check_data(&body, &payload)?;
    Ok(Frame { header, body, payload })
}

fn read_bytes(s: &mut TcpStream, len: usize) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::zeroed(len);
    read_exact(s, &mut buf)?;
    Ok(buf.freeze())
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8]) -> Result<(), FrameError> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(e),
    })
}
