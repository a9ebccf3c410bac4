//! The client's identity and its session with mgmtd, which tells meta servers that this
//! client's open files are still in use.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use ember_proto::mgmtd::ExtendClientSessionReq;

use crate::EmberClient;

/// Longest pause between two extensions; a shorter session timeout makes it a third of that.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// A random non-zero id: `RandomState` is seeded from the OS per process.
pub(crate) fn new_client_id() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    h.finish().max(1)
}

/// Extends the session until the client is dropped.
pub(crate) fn spawn_keepalive(client: &Arc<EmberClient>) {
    let weak: Weak<EmberClient> = Arc::downgrade(client);
    tokio::spawn(async move {
        loop {
            let Some(c) = weak.upgrade() else { return };
            let req = ExtendClientSessionReq { client_id: c.client_id, description: c.config.description.clone() };
            let mut pause = KEEPALIVE;
            match c.routing.mgmtd().unary(&req).await {
                Ok(resp) if resp.session_timeout_ms > 0 => {
                    pause = pause.min(Duration::from_millis(resp.session_timeout_ms) / 3);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "client session keep-alive failed"),
            }
            drop(c);
            tokio::time::sleep(pause).await;
        }
    });
}
