//! Background garbage collection of unlinked files.
//!
//! Every pass reads a bounded batch of the `GCQ_` queue. For each queued file, sessions of
//! clients that mgmtd no longer lists are dropped; the files with no session left are claimed
//! together in one transaction, their chunks are removed on every target of every chain of
//! their layouts, and then their inodes and queue entries are deleted together in another. Any
//! failure leaves an entry queued for the next pass. Each pass also reads a batch of the
//! `LOCK` records and drops the locks of clients that mgmtd no longer lists, so a crashed
//! client's locks outlive it by at most its session timeout. Storage removal and the
//! live-client list are traits so the decision logic is testable without a network.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_net::routing::RoutingWatcher;
use ember_net::PeerPool;
use ember_proto::mgmtd::ListClientSessionsReq;
use ember_proto::storage::{ChunkRef, RemoveChunksReq};
use ember_types::{ChainId, InodeId, Layout, TargetId, TargetState};

use crate::store::GcItem;
use crate::{MetaError, MetaStore};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Removes every chunk of a file from storage.
pub trait ChunkRemover: Send + Sync {
    fn remove<'a>(
        &'a self,
        inode: InodeId,
        layout: &'a Layout,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The clients that are still alive. `None` = unknown right now: no session is declared stale.
pub trait LiveClients: Send + Sync {
    fn live(&self) -> BoxFuture<'_, Option<Arc<HashSet<u64>>>>;
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Files whose chunks and inode are gone.
    pub removed: usize,
    /// Files still open (or reopened) and left queued.
    pub busy: usize,
    /// Files whose removal failed and will be retried.
    pub failed: usize,
    /// Sessions of dead clients dropped.
    pub stale_sessions: usize,
    /// Locks of dead clients dropped.
    pub stale_locks: usize,
}

impl GcStats {
    /// A file whose collection failed stays queued for the next pass.
    fn failed_on(&mut self, inode: InodeId, error: &dyn std::fmt::Display) {
        self.failed += 1;
        tracing::warn!(%inode, %error, "gc of file failed; will retry");
    }
}

/// The pause between passes while the queue holds more than a batch and clients are idle.
const BACKLOG_PAUSE: Duration = Duration::from_millis(20);

/// Below this rate of client transactions the store counts as idle.
const IDLE_TRANSACTIONS_PER_SEC: f64 = 200.0;

pub struct Gc {
    store: Arc<MetaStore>,
    remover: Arc<dyn ChunkRemover>,
    clients: Arc<dyn LiveClients>,
    batch: usize,
    /// Where the next pass resumes, so files held open at the head of the queue do not starve
    /// the rest of it.
    cursor: Mutex<Option<InodeId>>,
    /// The same for the `LOCK` records.
    lock_cursor: Mutex<Option<InodeId>>,
}

async fn blocking<T: Send + 'static>(
    store: &Arc<MetaStore>,
    f: impl FnOnce(&MetaStore) -> Result<T, MetaError> + Send + 'static,
) -> Result<T, MetaError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| MetaError::Internal(format!("gc task: {e}")))?
}

impl Gc {
    pub fn new(
        store: Arc<MetaStore>,
        remover: Arc<dyn ChunkRemover>,
        clients: Arc<dyn LiveClients>,
        batch: usize,
    ) -> Self {
        Gc {
            store,
            remover,
            clients,
            batch: batch.max(1),
            cursor: Mutex::new(None),
            lock_cursor: Mutex::new(None),
        }
    }

    /// Runs a pass every `every` until the task is aborted. While the queue holds more than a
    /// batch and clients leave the store idle, passes follow one another after
    /// `BACKLOG_PAUSE`, so a large delete frees its space in seconds, not hours; while clients
    /// keep it busy, GC stays at one batch per `every` and takes little from them.
    pub fn spawn(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut pause = every;
            loop {
                // GC itself runs no transaction while it sleeps: whatever ran then was clients'.
                let before = self.store.transactions();
                tokio::time::sleep(pause).await;
                let foreground = (self.store.transactions() - before) as f64 / pause.as_secs_f64();
                match self.pass().await {
                    Ok(s) if s != GcStats::default() => tracing::debug!(?s, "gc pass"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "gc pass failed"),
                }
                let backlog = cursor(&self.cursor).is_some();
                pause = match backlog && foreground < IDLE_TRANSACTIONS_PER_SEC {
                    true => BACKLOG_PAUSE.min(every),
                    false => every,
                };
            }
        })
    }

    /// One pass over the next batch of the queue and of the lock records. The files are claimed
    /// in one transaction and, once their chunks are gone, deleted in another; only the claim
    /// waits for the disk, so a pass costs one fsync under `sync` durability, not two per file.
    pub async fn pass(&self) -> Result<GcStats, MetaError> {
        let mut stats = GcStats::default();
        self.drop_stale_locks(&mut stats).await?;
        let batch = self.batch;
        let after = cursor(&self.cursor);
        let items = blocking(&self.store, move |s| s.gc_scan(after, batch)).await?;
        move_cursor(&self.cursor, items.len(), batch, items.last().map(|i| i.inode));
        let live = match items.iter().any(|i| !i.sessions.is_empty()) {
            true => self.clients.live().await,
            false => None,
        };
        let mut unopened = Vec::with_capacity(items.len());
        for item in items {
            let ino = item.inode;
            match self.drop_stale_sessions(&item, live.as_deref(), &mut stats).await {
                Ok(true) => unopened.push(item),
                Ok(false) => stats.busy += 1,
                Err(e) => stats.failed_on(ino, &e),
            }
        }
        self.collect(unopened, &mut stats).await?;
        record(&stats);
        Ok(stats)
    }

    async fn drop_stale_locks(&self, stats: &mut GcStats) -> Result<(), MetaError> {
        let batch = self.batch;
        let after = cursor(&self.lock_cursor);
        let locked = blocking(&self.store, move |s| s.lock_scan(after, batch)).await?;
        move_cursor(&self.lock_cursor, locked.len(), batch, locked.last().map(|l| l.0));
        if locked.is_empty() {
            return Ok(());
        }
        let Some(live) = self.clients.live().await else { return Ok(()) };
        for (ino, clients) in locked {
            let gone: HashSet<u64> = clients.into_iter().filter(|c| !live.contains(c)).collect();
            if !gone.is_empty() {
                stats.stale_locks += blocking(&self.store, move |s| s.drop_client_locks(ino, &gone)).await?;
            }
        }
        Ok(())
    }

    /// Claims `items`, removes their chunks, then deletes them.
    async fn collect(&self, items: Vec<GcItem>, stats: &mut GcStats) -> Result<(), MetaError> {
        if items.is_empty() {
            return Ok(());
        }
        let inodes: Vec<InodeId> = items.iter().map(|i| i.inode).collect();
        let claimed: HashSet<InodeId> = blocking(&self.store, move |s| s.gc_claim(&inodes)).await?.into_iter().collect();
        stats.busy += items.len() - claimed.len();
        let mut gone = Vec::with_capacity(claimed.len());
        for item in items.iter().filter(|i| claimed.contains(&i.inode)) {
            let removed = match &item.layout {
                Some(layout) => self.remover.remove(item.inode, layout).await,
                None => Ok(()),
            };
            match removed {
                Ok(()) => gone.push(item.inode),
                Err(e) => stats.failed_on(item.inode, &e),
            }
        }
        stats.removed = gone.len();
        if !gone.is_empty() {
            blocking(&self.store, move |s| s.gc_finish(&gone)).await?;
        }
        Ok(())
    }

    /// Drops the sessions of `item` whose clients are gone; returns whether none is left.
    async fn drop_stale_sessions(
        &self,
        item: &GcItem,
        live: Option<&HashSet<u64>>,
        stats: &mut GcStats,
    ) -> Result<bool, MetaError> {
        let stale: Vec<u64> = match live {
            Some(live) => item
                .sessions
                .iter()
                .filter(|s| !live.contains(&s.client_id))
                .map(|s| s.id)
                .collect(),
            None => Vec::new(),
        };
        if !stale.is_empty() {
            stats.stale_sessions += stale.len();
            let ino = item.inode;
            let dropped = stale.clone();
            blocking(&self.store, move |s| s.gc_drop_sessions(ino, &dropped)).await?;
        }
        Ok(item.sessions.len() == stale.len())
    }
}

/// Where a scan resumes.
fn cursor(c: &Mutex<Option<InodeId>>) -> Option<InodeId> {
    *c.lock().unwrap_or_else(|p| p.into_inner())
}

/// After a scan that returned `rows` (the last with key `last`): resume after it if the batch
/// was full, else start over.
fn move_cursor(c: &Mutex<Option<InodeId>>, rows: usize, batch: usize, last: Option<InodeId>) {
    *c.lock().unwrap_or_else(|p| p.into_inner()) = last.filter(|_| rows == batch);
}

fn record(s: &GcStats) {
    let r = ember_telemetry::global();
    r.inc(
        "ember_meta_gc_files_total",
        "result=\"removed\"",
        s.removed as u64,
    );
    r.inc(
        "ember_meta_gc_files_total",
        "result=\"failed\"",
        s.failed as u64,
    );
    r.inc(
        "ember_meta_gc_stale_sessions_total",
        "",
        s.stale_sessions as u64,
    );
    r.inc("ember_meta_gc_stale_locks_total", "", s.stale_locks as u64);
}

/// Removes chunks by `RemoveChunksReq` to every target of every chain, addresses from routing.
pub struct RoutingRemover {
    routing: Arc<RoutingWatcher>,
    pool: Arc<PeerPool>,
}

impl RoutingRemover {
    pub fn new(routing: Arc<RoutingWatcher>, pool: Arc<PeerPool>) -> Self {
        RoutingRemover { routing, pool }
    }

    /// One request per live target of `chain`. Offline targets are skipped: they are brought
    /// back in sync from a serving replica before they serve again.
    fn requests(
        &self,
        inode: InodeId,
        chain: ChainId,
    ) -> Result<Vec<(String, RemoveChunksReq)>, String> {
        let table = self.routing.get();
        let info = table
            .chain(chain)
            .ok_or_else(|| format!("chain {chain} is not in routing v{}", table.version()))?;
        let mut out = Vec::new();
        for &t in &info.targets {
            let state = table
                .target(TargetId(t))
                .and_then(|ti| u8::try_from(ti.state).ok())
                .and_then(TargetState::from_u8);
            if state == Some(TargetState::Offline) {
                continue;
            }
            let addr = table
                .target_address(TargetId(t))
                .ok_or_else(|| format!("no address for target {t}"))?;
            let chunk = ChunkRef {
                inode: inode.0,
                index: 0,
                chain_id: chain.0,
                chain_version: info.version,
                target_id: t,
            };
            out.push((
                addr.to_owned(),
                RemoveChunksReq {
                    chain: Some(chunk),
                    from_index: 0,
                },
            ));
        }
        if out.is_empty() {
            return Err(format!("chain {chain} has no reachable target"));
        }
        Ok(out)
    }
}

impl ChunkRemover for RoutingRemover {
    fn remove<'a>(
        &'a self,
        inode: InodeId,
        layout: &'a Layout,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut chains = layout.chains.clone();
            chains.sort();
            chains.dedup();
            let mut calls = tokio::task::JoinSet::new();
            for chain in chains {
                for (addr, req) in self.requests(inode, chain)? {
                    let client = self.pool.get(&addr);
                    calls.spawn(async move {
                        client
                            .unary(&req)
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("remove chunks of {inode} on {addr}: {e}"))
                    });
                }
            }
            let mut first_err = None;
            while let Some(done) = calls.join_next().await {
                let res = done.map_err(|e| e.to_string()).and_then(|r| r);
                if let Err(e) = res {
                    first_err.get_or_insert(e);
                }
            }
            first_err.map_or(Ok(()), Err)
        })
    }
}

/// A client list and when it was fetched.
type CachedList = Option<(Instant, Option<Arc<HashSet<u64>>>)>;

/// The live client list from mgmtd, cached for `ttl`.
pub struct MgmtdClients {
    routing: Arc<RoutingWatcher>,
    ttl: Duration,
    cache: tokio::sync::Mutex<CachedList>,
}

impl MgmtdClients {
    pub fn new(routing: Arc<RoutingWatcher>, ttl: Duration) -> Self {
        MgmtdClients {
            routing,
            ttl,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Option<Arc<HashSet<u64>>> {
        match self.routing.mgmtd().unary(&ListClientSessionsReq {}).await {
            // An incomplete list (mgmtd restarted recently) cannot prove a client dead.
            Ok(resp) if resp.complete => Some(Arc::new(
                resp.sessions.iter().map(|s| s.client_id).collect(),
            )),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "listing client sessions failed");
                None
            }
        }
    }
}

impl LiveClients for MgmtdClients {
    fn live(&self) -> BoxFuture<'_, Option<Arc<HashSet<u64>>>> {
        Box::pin(async move {
            let mut cache = self.cache.lock().await;
            if let Some((at, list)) = cache.as_ref() {
                if at.elapsed() < self.ttl {
                    return list.clone();
                }
            }
            let list = self.fetch().await;
            *cache = Some((Instant::now(), list.clone()));
            list
        })
    }
}

#[cfg(test)]
mod tests;
