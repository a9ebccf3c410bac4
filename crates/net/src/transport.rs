//! How a process reaches its peers and runs blocking work: TCP and the blocking thread pool
//! in production, or whatever a deterministic simulation puts in their place.
//!
//! A [`Dialer`] opens a byte stream to an address; clients hold one (TCP when none is given).
//! [`blocking`] runs synchronous work (KV commits, engine calls) off the async workers, except
//! on a thread that asked for inline execution: a single-threaded simulation must not hand
//! work to other threads, or their timing would decide the order of events.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<(BoxRead, BoxWrite)>> + Send>>;

/// Opens a connection to an address and returns its two halves.
#[derive(Clone)]
pub struct Dialer {
    dial: Arc<dyn Fn(String) -> DialFuture + Send + Sync>,
    /// Plain TCP: a thread's own blocking connections (`own_conn.rs`) may stand in for it.
    tcp: bool,
}

impl Dialer {
    pub fn new(f: impl Fn(String) -> DialFuture + Send + Sync + 'static) -> Self {
        Dialer { dial: Arc::new(f), tcp: false }
    }

    /// Plain TCP with Nagle off: requests are small and latency-bound.
    pub fn tcp() -> Self {
        let dialer = Dialer::new(|addr| {
            Box::pin(async move {
                let stream = tokio::net::TcpStream::connect(&addr).await?;
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                Ok((Box::new(rd) as BoxRead, Box::new(wr) as BoxWrite))
            })
        });
        Dialer { tcp: true, ..dialer }
    }

    pub(crate) fn dial(&self, addr: &str) -> DialFuture {
        (self.dial)(addr.to_owned())
    }

    pub(crate) fn is_tcp(&self) -> bool {
        self.tcp
    }
}

impl Default for Dialer {
    fn default() -> Self {
        Dialer::tcp()
    }
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dialer")
    }
}

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
    /// Set while a server first polls a request that is the only one in flight on its
    /// connection (`server.rs`).
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with [`blocking_brief`] allowed to block the current task when `alone`.
pub(crate) fn with_request_alone<R>(alone: bool, f: impl FnOnce() -> R) -> R {
    /// Puts the mark back even if `f` unwinds, so that it never outlives the poll.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ALONE.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ALONE.with(|a| a.replace(alone)));
    f()
}

/// Like [`blocking`], for work that blocks briefly (a small disk read): when the request
/// it serves is alone on its connection, it runs right here, the worker's other tasks
/// handed to another thread meanwhile (`block_in_place`), instead of waking a pool thread
/// and then this task again, two wake-ups as long as the read on a small VM. Only requests
/// a connection does not wait behind: its reader is this task, and stays blocked as well.
pub async fn blocking_brief<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, tokio::task::JoinError> {
    let multi_thread = || {
        tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    };
    if !INLINE.with(Cell::get) && ALONE.with(Cell::get) && multi_thread() {
        return Ok(tokio::task::block_in_place(f));
    }
    blocking(f).await
}

/// Makes [`blocking`] run work inline on the calling thread from now on.
pub fn run_blocking_inline_on_this_thread() {
    INLINE.with(|i| i.set(true));
}

/// Runs `f` on the blocking pool, or inline on a thread that asked for it.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, tokio::task::JoinError> {
    if INLINE.with(Cell::get) {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await
}
