//! Ends of sessions, sent to meta in batches.
//!
//! The last release of an open file ends its session on meta. By then the flush of close(2)
//! has reported the length, so the end tells meta nothing a reader could see: it only lets an
//! unlinked file's chunks go. The kernel does not wait for a release either. So releases are
//! answered at once, and their sessions are gathered for a few milliseconds and ended in one
//! request and one transaction, instead of a round trip and a commit per file (a third of the
//! metadata requests of creating small files). Unmounting sends what is still gathered; a
//! session whose end never arrives (the mount died) ends with its client's lease, as before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_client::{EmberClient, Retry};
use ember_proto::meta::{CloseSessionsReq, SessionRef};

/// How long ends gather before they are sent.
const GATHER: Duration = Duration::from_millis(5);
/// Ends sent in one request at most.
const MAX_BATCH: usize = 256;

pub(super) struct SessionCloser {
    client: Arc<EmberClient>,
    batch: Mutex<Batch>,
}

#[derive(Default)]
struct Batch {
    sessions: Vec<SessionRef>,
    /// A task is gathering and will send them.
    sending: bool,
}

impl SessionCloser {
    pub fn new(client: Arc<EmberClient>) -> Arc<Self> {
        Arc::new(SessionCloser { client, batch: Mutex::default() })
    }

    /// Queues the end of `session`; must be called on the runtime.
    pub fn close(self: &Arc<Self>, inode: u64, session_id: u64) {
        let mut batch = super::lock(&self.batch);
        batch.sessions.push(SessionRef { inode, session_id });
        if !batch.sending {
            batch.sending = true;
            let closer = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(GATHER).await;
                closer.send_all().await;
            });
        }
    }

    /// Sends every end gathered so far, and returns once meta has them (or they failed).
    pub async fn send_all(&self) {
        loop {
            let sessions: Vec<SessionRef> = {
                let mut batch = super::lock(&self.batch);
                if batch.sessions.is_empty() {
                    batch.sending = false;
                    return;
                }
                let n = batch.sessions.len().min(MAX_BATCH);
                batch.sessions.drain(..n).collect()
            };
            let n = sessions.len();
            if let Err(e) = self.client.meta(&CloseSessionsReq { sessions }, Retry::Idempotent).await {
                tracing::warn!(sessions = n, error = %e, "could not end sessions; they end with this client's lease");
            }
        }
    }
}
