//! The client's identity and its session with mgmtd, which tells meta servers that this
//! client's open files are still in use.
//!
//! A session ends on mgmtd when no extension reached it for the session timeout. The client
//! counts each stretch that long without a successful extension as a lapse: its session, and
//! with it its locks, may be gone (`EmberClient::session_lapses`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

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
        let mut lapse = LapseWatch::default();
        loop {
            let Some(c) = weak.upgrade() else { return };
            let req = ExtendClientSessionReq { client_id: c.client_id, description: c.config.description.clone() };
            let sent = Instant::now();
            // An extension that takes longer than the pause is late anyway: ask again.
            let result = c.routing.mgmtd().unary_within(&req, lapse.pause()).await;
            if let Err(e) = &result {
                tracing::debug!(error = %e, "client session keep-alive failed");
            }
            let timeout = result.ok().map(|r| Duration::from_millis(r.session_timeout_ms));
            if lapse.note(sent, timeout) {
                tracing::warn!("no session extension reached mgmtd within the session timeout; locks taken before may be gone");
                c.session_lapses.fetch_add(1, Ordering::AcqRel);
            }
            let pause = lapse.pause();
            drop(c);
            tokio::time::sleep(pause).await;
        }
    });
}

/// When the last extension got through, and whether the stretch since has been counted.
#[derive(Default)]
struct LapseWatch {
    /// Sending time of the last successful extension, and the timeout it reported.
    last_ok: Option<(Instant, Duration)>,
    counted: bool,
}

impl LapseWatch {
    /// Takes in an extension sent at `sent` (`Some(timeout)` if it succeeded); true when a
    /// new lapse begins.
    fn note(&mut self, sent: Instant, succeeded: Option<Duration>) -> bool {
        let lapsed = match (self.last_ok, succeeded) {
            (Some((prev, timeout)), Some(_)) => sent.duration_since(prev) > timeout && !timeout.is_zero(),
            (Some((prev, timeout)), None) => prev.elapsed() > timeout && !timeout.is_zero(),
            (None, _) => false,
        };
        let new = lapsed && !self.counted;
        self.counted = lapsed && succeeded.is_none();
        if let Some(timeout) = succeeded {
            self.last_ok = Some((sent, timeout));
        }
        new
    }

    /// A third of the session timeout, at most `KEEPALIVE`.
    fn pause(&self) -> Duration {
        match self.last_ok {
            Some((_, timeout)) if !timeout.is_zero() => KEEPALIVE.min(timeout / 3),
            _ => KEEPALIVE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stretch_longer_than_the_timeout_without_an_extension_is_one_lapse() {
        let t = Duration::from_millis(30);
        let mut w = LapseWatch::default();
        assert!(!w.note(Instant::now(), None), "nothing to lapse before the first success");
        assert!(!w.note(Instant::now(), Some(t)));
        assert_eq!(w.pause(), Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(40));
        assert!(w.note(Instant::now(), None), "failing past the timeout");
        assert!(!w.note(Instant::now(), None), "the same stretch counts once");
        assert!(!w.note(Instant::now(), Some(t)), "and not again when an extension gets through");
        assert!(!w.note(Instant::now(), Some(t)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(w.note(Instant::now(), Some(t)), "a late success after a silent stretch is a lapse too");
    }
}
