//! Services answered inside this process, without a socket.
//!
//! A mount that runs the metadata server in its own process (what `ember up` does) would
//! otherwise send each of its requests over loopback TCP to itself: a wake-up of a runtime
//! worker for the request and another of the caller for the reply, which on a small VM cost
//! as much as the request itself. A service registered here under the address it listens on
//! is called directly by this process's clients of that address (plain TCP clients only: a
//! simulated network keeps its own path); every other process still reaches it over TCP.
//! The request and the reply are encoded and decoded as on the wire, and the server's
//! deadline, metrics and panic handling apply, so a caller cannot tell the paths apart.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ember_proto::Method;
use ember_telemetry::{Counter, SeriesCache};
use tokio::time::Instant;

use crate::client::Reply;
use crate::server::{answer, Request, Service};

/// How many services are registered: the common case (none) costs one atomic load per call.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);
static SERVICES: RwLock<Vec<(String, Arc<dyn Service>)>> = RwLock::new(Vec::new());

/// What the service sees as the caller's address.
const IN_PROCESS_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Keeps a service reachable in process until dropped.
#[must_use = "the service is reachable in process only while this lives"]
pub struct InProcess {
    addr: String,
}

/// From now on, calls from this process to `addr` go straight to `service`.
pub fn serve_in_process(addr: &str, service: Arc<dyn Service>) -> InProcess {
    ember_telemetry::global().describe(
        "ember_rpc_in_process_total",
        "RPC requests answered by a service of the same process, without a socket, by method.",
    );
    let mut services = SERVICES.write().unwrap_or_else(|p| p.into_inner());
    services.retain(|(a, _)| a != addr);
    services.push((addr.to_owned(), service));
    REGISTERED.store(services.len(), Ordering::Release);
    InProcess { addr: addr.to_owned() }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let mut services = SERVICES.write().unwrap_or_else(|p| p.into_inner());
        services.retain(|(a, _)| *a != self.addr);
        REGISTERED.store(services.len(), Ordering::Release);
    }
}

/// The service registered under `addr`, if any.
pub(crate) fn service_at(addr: &str) -> Option<Arc<dyn Service>> {
    if REGISTERED.load(Ordering::Acquire) == 0 {
        return None;
    }
    let services = SERVICES.read().unwrap_or_else(|p| p.into_inner());
    services.iter().find(|(a, _)| a == addr).map(|(_, s)| s.clone())
}

thread_local! {
    static CALLED: SeriesCache<&'static str, Counter> = SeriesCache::default();
}

/// Calls `service` as a request from `timeout`'s caller would reach it over the wire.
pub(crate) async fn call(service: Arc<dyn Service>, method: u16, body: Bytes, payload: Bytes, timeout: Duration) -> Reply {
    let name = Method::from_u16(method).map(Method::name).unwrap_or("unknown");
    let make = || ember_telemetry::global().counter("ember_rpc_in_process_total", &format!("method=\"{name}\""));
    CALLED.with(|cache| cache.with(name, make, |calls| calls.add(1)));
    let req = Request { method, body, payload, deadline: Some(Instant::now() + timeout), peer: IN_PROCESS_PEER };
    answer(service, req).await.map(|r| (r.body, r.payload))
}
