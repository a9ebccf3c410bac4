//! Keeps a process's copy of mgmtd's routing info fresh: a poll loop plus on-demand refresh
//! when a peer says our routing is stale.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ember_proto::mgmtd::GetRoutingReq;
use ember_proto::routing::RoutingTable;
use ember_types::Status;

use crate::{Dialer, RpcClient};

pub struct RoutingWatcher {
    mgmtd: RpcClient,
    current: RwLock<Arc<RoutingTable>>,
    refresh: tokio::sync::Mutex<()>,
}

impl RoutingWatcher {
    pub fn new(mgmtd_addr: &str) -> Arc<Self> {
        Self::with_dialer(mgmtd_addr, Dialer::tcp())
    }

    pub fn with_dialer(mgmtd_addr: &str, dialer: Dialer) -> Arc<Self> {
        Arc::new(RoutingWatcher {
            mgmtd: RpcClient::new(mgmtd_addr).with_timeout(Duration::from_secs(5)).with_dialer(dialer),
            current: RwLock::new(Arc::new(RoutingTable::default())),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    pub fn mgmtd(&self) -> &RpcClient {
        &self.mgmtd
    }

    pub fn get(&self) -> Arc<RoutingTable> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fetches the routing info if mgmtd has a newer version. Concurrent callers share one fetch.
    pub async fn refresh(&self) -> Result<Arc<RoutingTable>, Status> {
        let known = self.get().version();
        let _one = self.refresh.lock().await;
        let now = self.get();
        if now.version() != known {
            return Ok(now);
        }
        let resp = self.mgmtd.unary(&GetRoutingReq { known_version: known }).await?;
        if let (true, Some(info)) = (resp.changed, resp.routing) {
            let table = Arc::new(RoutingTable::new(info));
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = table.clone();
            return Ok(table);
        }
        Ok(now)
    }

    /// Refreshes every `every` until the process exits.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.refresh().await {
                    tracing::debug!(error = %e, "routing refresh failed");
                }
                tokio::time::sleep(every).await;
            }
        })
    }
}
