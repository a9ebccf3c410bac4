use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ember_proto::Rpc;
use ember_types::{Status, StatusCode};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::oneshot;

use crate::frame::{read_frame, Frame, FrameError, FrameHeader, FrameKind, FrameLimits};
use crate::inline::here_or_spawn;
use crate::transport::{BoxRead, BoxWrite, Dialer};

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) type Reply = Result<(Bytes, Bytes), Status>;
/// Ordered by request id: when a connection fails, its callers are woken in the order they
/// called, not in a hash order that differs from run to run (which a simulation would notice).
type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Reply>>>>;

/// One multiplexed connection: the sending half, shared by the callers, a reader task, and
/// the table of waiting callers.
struct Connection {
    writer: Arc<tokio::sync::Mutex<BufWriter<BoxWrite>>>,
    pending: Pending,
    dead: Arc<AtomicBool>,
    /// Frames received so far: a call that times out while this stands still suggests the
    /// connection is silently gone (peer host lost, packets dropped), not just a slow server.
    received: Arc<AtomicU64>,
}

/// A client for one server address. Connects lazily and reconnects after a failure; every
/// call carries its own deadline.
pub struct RpcClient {
    addr: String,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
    next_id: AtomicU64,
    limits: FrameLimits,
    timeout: Duration,
    dialer: Dialer,
}

impl RpcClient {
    pub fn new(addr: impl Into<String>) -> Self {
        RpcClient {
            addr: addr.into(),
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            limits: FrameLimits::default(),
            timeout: DEFAULT_TIMEOUT,
            dialer: Dialer::tcp(),
        }
    }

    pub fn with_dialer(mut self, dialer: Dialer) -> Self {
        self.dialer = dialer;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Typed call: encodes `req`, sends `payload` raw, decodes the response message.
    pub async fn call<R: Rpc>(&self, req: &R, payload: Bytes) -> Result<(R::Response, Bytes), Status> {
        let body = Bytes::from(req.encode_to_vec());
        let (rbody, rpayload) = self.call_raw(R::METHOD as u16, body, payload, self.timeout).await?;
        let resp = crate::decode_body::<R::Response>(&rbody)?;
        Ok((resp, rpayload))
    }

    /// Typed call without payloads in either direction.
    pub async fn unary<R: Rpc>(&self, req: &R) -> Result<R::Response, Status> {
        Ok(self.call(req, Bytes::new()).await?.0)
    }

    /// [`unary`](Self::unary), on this thread's own connection if the thread asked for that
    /// (`own_conn.rs`): for callers that block for the reply anyway.
    pub async fn unary_here<R: Rpc>(&self, req: &R) -> Result<R::Response, Status> {
        let (method, body) = (R::METHOD as u16, Bytes::from(req.encode_to_vec()));
        let rbody = match self.in_process() {
            Some(service) => crate::local::call(service, method, body, Bytes::new(), self.timeout).await?.0,
            None if crate::own_conn::enabled() && self.dialer.is_tcp() => {
                crate::own_conn::call(&self.addr, method, &body, self.timeout, &self.limits)?.0
            }
            None => self.call_on_connection(method, body, Bytes::new(), self.timeout).await?.0,
        };
        crate::decode_body::<R::Response>(&rbody)
    }

    /// A call without request payload on this thread's own connection, waiting at most
    /// `timeout`, or `None` when this thread does not own connections (`own_conn.rs`) or the
    /// server is reached another way. Blocks the thread: only for callers that would block
    /// for the reply anyway.
    pub fn call_here_within<R: Rpc>(&self, req: &R, timeout: Duration) -> Option<Result<(R::Response, Bytes), Status>> {
        if !crate::own_conn::enabled() || !self.dialer.is_tcp() || self.in_process().is_some() {
            return None;
        }
        let reply = crate::own_conn::call(&self.addr, R::METHOD as u16, &req.encode_to_vec(), timeout, &self.limits);
        Some(reply.and_then(|(body, payload)| Ok((crate::decode_body::<R::Response>(&body)?, payload))))
    }

    /// [`unary`](Self::unary) with its own deadline instead of the client's.
    pub async fn unary_within<R: Rpc>(&self, req: &R, timeout: Duration) -> Result<R::Response, Status> {
        let rbody = self.call_raw(R::METHOD as u16, Bytes::from(req.encode_to_vec()), Bytes::new(), timeout).await?.0;
        crate::decode_body::<R::Response>(&rbody)
    }

    pub async fn call_raw(&self, method: u16, body: Bytes, payload: Bytes, timeout: Duration) -> Reply {
        match self.in_process() {
            Some(service) => crate::local::call(service, method, body, payload, timeout).await,
            None => self.call_on_connection(method, body, payload, timeout).await,
        }
    }

    /// One call on the shared, multiplexed connection.
    async fn call_on_connection(&self, method: u16, body: Bytes, payload: Bytes, timeout: Duration) -> Reply {
        let mut used: Option<(Arc<Connection>, u64)> = None;
        let work = async {
            let conn = self.connection().await?;
            used = Some((conn.clone(), conn.received.load(Ordering::Acquire)));
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&conn.pending).insert(id, tx);
            let mut header = FrameHeader::for_data(FrameKind::Request, method, id, &body, &payload);
            header.timeout_ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
            let guard = PendingGuard { pending: &conn.pending, id };
            if conn.dead.load(Ordering::Acquire) {
                return Err(closed(&self.addr));
            }
            conn.send(header, body, payload, &self.addr);
            let reply = rx.await.unwrap_or_else(|_| Err(closed(&self.addr)));
            drop(guard);
            reply
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                // Nothing at all came back while we waited: the next call reconnects instead
                // of queueing behind a connection that may never deliver again.
                if let Some((conn, before)) = used {
                    if conn.received.load(Ordering::Acquire) == before {
                        conn.dead.store(true, Ordering::Release);
                    }
                }
                Err(Status::new(StatusCode::Timeout, format!("rpc to {} timed out after {timeout:?}", self.addr)))
            }
        }
    }

    /// The service behind this address if this process serves it (`local.rs`).
    fn in_process(&self) -> Option<Arc<dyn crate::Service>> {
        if !self.dialer.is_tcp() {
            return None;
        }
        crate::local::service_at(&self.addr)
    }

    async fn connection(&self) -> Result<Arc<Connection>, Status> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.dead.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let conn = Arc::new(self.connect().await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self) -> Result<Connection, Status> {
        let unavailable = |e: String| Status::new(StatusCode::Unavailable, format!("connect {}: {e}", self.addr));
        let (rd, wr) = tokio::time::timeout(CONNECT_TIMEOUT, self.dialer.dial(&self.addr))
            .await
            .map_err(|_| unavailable("timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let writer = Arc::new(tokio::sync::Mutex::new(BufWriter::with_capacity(64 * 1024, wr)));
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let reader = Reader {
            pending: pending.clone(),
            dead: dead.clone(),
            received: received.clone(),
            limits: self.limits,
            addr: self.addr.clone(),
        };
        tokio::spawn(reader.run(rd));
        Ok(Connection { writer, pending, dead, received })
    }
}

/// Removes a caller's entry when it stops waiting (timeout or cancellation).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn closed(addr: &str) -> Status {
    Status::new(StatusCode::ConnectionClosed, format!("connection to {addr} closed"))
}

impl Connection {
    /// Sends a frame from the calling task when the connection is free to take it at once (the
    /// usual case), else from a task of its own, so that the frame goes out whole even if the
    /// caller stops waiting. A failed send fails every caller waiting on the connection.
    fn send(&self, header: FrameHeader, body: Bytes, payload: Bytes, addr: &str) {
        let (writer, pending, dead, addr) = (self.writer.clone(), self.pending.clone(), self.dead.clone(), addr.to_owned());
        here_or_spawn(async move {
            let mut w = writer.lock().await;
            let sent = async {
                w.write_all(&header.encode()).await?;
                w.write_all(&body).await?;
                w.write_all(&payload).await?;
                w.flush().await
            };
            if let Err(e) = sent.await {
                tracing::debug!(%addr, error = %e, "send failed; dropping connection");
                fail_all(&pending, &dead, &addr);
            }
        });
    }
}

/// Marks a connection dead and wakes every caller still waiting on it.
fn fail_all(pending: &Pending, dead: &AtomicBool, addr: &str) {
    dead.store(true, Ordering::Release);
    for (_, tx) in std::mem::take(&mut *lock(pending)) {
        let _ = tx.send(Err(closed(addr)));
    }
}

/// The receiving side of a connection: hands each reply to its caller.
struct Reader {
    pending: Pending,
    dead: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    limits: FrameLimits,
    addr: String,
}

impl Reader {
    async fn run(self, mut rd: BoxRead) {
        let Reader { pending, dead, received, limits, addr } = self;
        loop {
            let frame = read_frame(&mut rd, &limits).await;
            received.fetch_add(1, Ordering::AcqRel);
            match frame {
                Ok(frame) => {
                    let id = frame.header.request_id;
                    if let Some(tx) = lock(&pending).remove(&id) {
                        let _ = tx.send(reply_of(frame));
                    }
                }
                Err(FrameError::DataChecksum { header, what }) => {
                    let st = Status::new(StatusCode::ChecksumMismatch, format!("reply {what} from {addr} corrupted"));
                    if let Some(tx) = lock(&pending).remove(&header.request_id) {
                        let _ = tx.send(Err(st));
                    }
                }
                Err(e) => {
                    if !matches!(e, FrameError::Closed) {
                        tracing::warn!(%addr, error = %e, "dropping connection");
                    }
                    break;
                }
            }
        }
        fail_all(&pending, &dead, &addr);
    }
}

/// A reply frame as the caller sees it: body and payload, or the error status it carries.
pub(crate) fn reply_of(frame: Frame) -> Reply {
    if frame.header.status == 0 {
        Ok((frame.body, frame.payload))
    } else {
        let msg = String::from_utf8_lossy(&frame.body).into_owned();
        Err(Status::new(StatusCode::from_u16(frame.header.status), msg))
    }
}

/// Clients by address, shared by everything in a process that talks to the same peers.
#[derive(Default)]
pub struct PeerPool {
    clients: Mutex<HashMap<String, Arc<RpcClient>>>,
    timeout: Option<Duration>,
    dialer: Dialer,
}

impl PeerPool {
    pub fn new(timeout: Duration) -> Self {
        PeerPool { clients: Mutex::default(), timeout: Some(timeout), dialer: Dialer::tcp() }
    }

    pub fn with_dialer(mut self, dialer: Dialer) -> Self {
        self.dialer = dialer;
        self
    }

    pub fn get(&self, addr: &str) -> Arc<RpcClient> {
        let mut map = lock(&self.clients);
        map.entry(addr.to_owned())
            .or_insert_with(|| {
                let c = RpcClient::new(addr).with_dialer(self.dialer.clone());
                Arc::new(match self.timeout {
                    Some(t) => c.with_timeout(t),
                    None => c,
                })
            })
            .clone()
    }
}
