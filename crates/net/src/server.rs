use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ember_proto::Method;
use ember_telemetry::{Counter, Histogram, SeriesCache};
use ember_types::{Status, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use crate::frame::{read_frame, FrameError, FrameHeader, FrameKind, FrameLimits};
use crate::inline::here_or_spawn;

/// Requests a single connection may have in flight; more wait in the socket buffer.
const MAX_INFLIGHT_PER_CONN: usize = 256;

/// The sending half of a connection, shared by its requests' handlers.
type Writer<W> = Arc<Mutex<BufWriter<W>>>;

pub struct Request {
    pub method: u16,
    pub body: Bytes,
    pub payload: Bytes,
    pub deadline: Option<Instant>,
    pub peer: SocketAddr,
}

#[derive(Default)]
pub struct Response {
    pub body: Bytes,
    pub payload: Bytes,
}

impl Response {
    pub fn msg<M: prost::Message>(m: &M) -> Self {
        Response { body: m.encode_to_vec().into(), payload: Bytes::new() }
    }

    pub fn with_payload<M: prost::Message>(m: &M, payload: Bytes) -> Self {
        Response { body: m.encode_to_vec().into(), payload }
    }
}

pub type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response, Status>> + Send + 'static>>;

/// A service answers requests; it owns its state behind `Arc` so handlers can run as tasks.
pub trait Service: Send + Sync + 'static {
    fn call(self: Arc<Self>, req: Request) -> ServiceFuture;
}

struct OutFrame {
    header: FrameHeader,
    body: Bytes,
    payload: Bytes,
}

/// Accepts connections forever: one task per connection, in which each request runs until it
/// would wait; the rest of it continues as a task of its own.
pub async fn serve(listener: TcpListener, service: Arc<dyn Service>, limits: FrameLimits) {
    describe_metrics();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                tokio::spawn(serve_stream(rd, wr, peer, service.clone(), limits));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn describe_metrics() {
    let r = ember_telemetry::global();
    r.describe("ember_rpc_requests_total", "RPC requests served, by method and status.");
    r.describe("ember_rpc_seconds", "RPC handling time, by method.");
    r.describe("ember_rpc_bad_frames_total", "Frames rejected before dispatch, by reason.");
}

/// Serves the requests of one accepted connection until the peer closes it.
pub async fn serve_stream<R, W>(mut rd: R, wr: W, peer: SocketAddr, service: Arc<dyn Service>, limits: FrameLimits)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer: Writer<W> = Arc::new(Mutex::new(BufWriter::with_capacity(64 * 1024, wr)));
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_PER_CONN));
    loop {
        let frame = match read_frame(&mut rd, &limits).await {
            Ok(f) => f,
            Err(e) => {
                if !reject_frame(e, peer, &writer).await {
                    break;
                }
                continue;
            }
        };
        if frame.header.kind != FrameKind::Request {
            bad_frame("unexpected_response");
            break;
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else { break };
        let req = Request {
            method: frame.header.method,
            body: frame.body,
            payload: frame.payload,
            deadline: deadline_of(&frame.header),
            peer,
        };
        let (svc, writer) = (service.clone(), writer.clone());
        let request_id = frame.header.request_id;
        // Our permit taken, all others free: no other request of this connection is waiting.
        let alone = inflight.available_permits() == MAX_INFLIGHT_PER_CONN - 1;
        crate::transport::with_request_alone(alone, || {
            here_or_spawn(async move {
                let out = handle(svc, req, request_id).await;
                let _ = send(&writer, &out).await;
                drop(permit);
            })
        });
    }
    // Every request in flight answers before our side closes.
    let _ = inflight.acquire_many(MAX_INFLIGHT_PER_CONN as u32).await;
    let _ = writer.lock().await.shutdown().await;
}

/// Answers a frame that could not be dispatched. Returns whether the stream is still usable.
async fn reject_frame<W: AsyncWrite + Unpin>(e: FrameError, peer: SocketAddr, writer: &Writer<W>) -> bool {
    match e {
        FrameError::Closed => false,
        FrameError::DataChecksum { header, what } => {
            bad_frame("checksum");
            let st = Status::new(StatusCode::ChecksumMismatch, format!("{what} checksum mismatch"));
            let _ = send(writer, &error_frame(header.method, header.request_id, &st)).await;
            true
        }
        FrameError::TooLarge { header, what, len, max } => {
            bad_frame("too_large");
            tracing::warn!(%peer, what, len, max, "frame too large; closing connection");
            let st = Status::new(StatusCode::FrameTooLarge, format!("{what} of {len} bytes exceeds {max}"));
            let _ = send(writer, &error_frame(header.method, header.request_id, &st)).await;
            false
        }
        other => {
            bad_frame("malformed");
            tracing::warn!(%peer, error = %other, "malformed frame; closing connection");
            let st = Status::new(StatusCode::BadFrame, other.to_string());
            let _ = send(writer, &error_frame(0, 0, &st)).await;
            false
        }
    }
}

fn bad_frame(reason: &str) {
    ember_telemetry::global().inc("ember_rpc_bad_frames_total", &format!("reason=\"{reason}\""), 1);
}

fn deadline_of(h: &FrameHeader) -> Option<Instant> {
    (h.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(u64::from(h.timeout_ms)))
}

async fn handle(svc: Arc<dyn Service>, req: Request, request_id: u64) -> OutFrame {
    let method = req.method;
    match answer(svc, req).await {
        Ok(resp) => {
            let header = FrameHeader::for_data(FrameKind::Response, method, request_id, &resp.body, &resp.payload);
            OutFrame { header, body: resp.body, payload: resp.payload }
        }
        Err(st) => error_frame(method, request_id, &st),
    }
}

/// Runs one request within its deadline and counts it, wherever it came from (a connection or
/// this process, `local.rs`). A handler that panics answers `Internal` instead of taking its
/// caller down with it.
pub(crate) async fn answer(svc: Arc<dyn Service>, req: Request) -> Result<Response, Status> {
    let name = Method::from_u16(req.method).map(Method::name).unwrap_or("unknown");
    let started = Instant::now();
    let deadline = req.deadline;
    let call = CatchPanic(svc.call(req));
    let result = match deadline {
        Some(d) => match tokio::time::timeout_at(d, call).await {
            Ok(r) => r,
            Err(_) => Err(Status::new(StatusCode::Timeout, "deadline expired on the server")),
        },
        None => call.await,
    };
    let code = result.as_ref().err().map(|s| s.code).unwrap_or(StatusCode::Ok);
    let make = || {
        let reg = ember_telemetry::global();
        let requests = reg.counter("ember_rpc_requests_total", &format!("method=\"{name}\",status=\"{code:?}\""));
        (requests, reg.histogram("ember_rpc_seconds", &format!("method=\"{name}\"")))
    };
    ANSWERED.with(|cache| {
        cache.with((name, code), make, |(requests, seconds)| {
            requests.add(1);
            seconds.observe(started.elapsed());
        })
    });
    result
}

thread_local! {
    /// The request counter and latency histogram of each method and outcome.
    static ANSWERED: SeriesCache<(&'static str, StatusCode), (Counter, Histogram)> = SeriesCache::default();
}

/// A handler's future whose panic becomes an error reply.
struct CatchPanic(ServiceFuture);

impl Future for CatchPanic {
    type Output = Result<Response, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "request handler panicked");
                Poll::Ready(Err(Status::internal(format!("request handler panicked: {what}"))))
            }
        }
    }
}

fn error_frame(method: u16, request_id: u64, st: &Status) -> OutFrame {
    let body = Bytes::from(st.message.clone().into_bytes());
    let mut header = FrameHeader::for_data(FrameKind::Response, method, request_id, &body, &[]);
    header.status = st.code.as_u16();
    OutFrame { header, body, payload: Bytes::new() }
}

/// Writes one frame and flushes it.
async fn send<W: AsyncWrite + Unpin>(writer: &Mutex<BufWriter<W>>, f: &OutFrame) -> std::io::Result<()> {
    let mut w = writer.lock().await;
    write_one(&mut w, f).await?;
    w.flush().await
}

async fn write_one<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, f: &OutFrame) -> std::io::Result<()> {
    w.write_all(&f.header.encode()).await?;
    w.write_all(&f.body).await?;
    w.write_all(&f.payload).await
}
