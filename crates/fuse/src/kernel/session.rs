//! The request loop: worker threads, each reading its own clone of the connection, decode
//! requests and hand them to the [`Handler`]; the INIT exchange is answered here, and when the
//! kernel and the limits agree on FUSE over io_uring, ring threads take over the requests.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::abi::{self, init, Header, InitReply, Op, Out};
use super::device::{Device, Read, Reply};
use super::uring;

/// What a file system implements to be served.
pub trait Handler: Send + Sync + 'static {
    /// The INIT exchange: of the capabilities the kernel `offered`, those this file system
    /// wants (the session adds what every mount uses: async reads and large writes).
    fn init(&self, offered: u64) -> u64;
    /// Answers one request, now or later, from any thread.
    fn handle(&self, header: &Header, op: Op<'_>, reply: Reply);
}

/// Limits the session announces at INIT.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest read or write request; the read buffer of each worker is this plus a page.
    pub max_io: u32,
    pub threads: usize,
    /// Serve through FUSE over io_uring when the kernel offers it (the /dev/fuse workers
    /// stay for what the kernel still sends there).
    pub io_uring: bool,
}

pub(super) struct Shared<H> {
    handler: H,
    pub(super) device: Arc<Device>,
    pub(super) limits: Limits,
    pub(super) setxattr_ext: AtomicBool,
    rings: Mutex<Vec<JoinHandle<()>>>,
}

/// Running workers of one mounted file system.
pub struct Session {
    workers: Vec<JoinHandle<()>>,
    shared: Arc<dyn RingThreads>,
}

/// The ring threads a session started, whatever its handler.
trait RingThreads: Send + Sync {
    fn take(&self) -> Vec<JoinHandle<()>>;
}

impl<H: Handler> RingThreads for Shared<H> {
    fn take(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.rings.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Session {
    /// Starts `limits.threads` workers on `device`.
    pub fn start<H: Handler>(device: Arc<Device>, handler: H, limits: Limits) -> io::Result<Session> {
        let shared = Arc::new(Shared {
            handler,
            device: device.clone(),
            limits,
            setxattr_ext: AtomicBool::new(false),
            rings: Mutex::new(Vec::new()),
        });
        let mut workers = Vec::with_capacity(limits.threads.max(1));
        for i in 0..limits.threads.max(1) {
            let dev = if i == 0 { device.clone() } else { Arc::new(device.clone_connection()?) };
            let shared = shared.clone();
            let worker = std::thread::Builder::new().name(format!("fuse-{i}")).spawn(move || serve(&dev, &shared))?;
            workers.push(worker);
        }
        Ok(Session { workers, shared })
    }

    /// Whether the connection ended (the file system was unmounted or aborted).
    pub fn ended(&self) -> bool {
        self.workers.iter().any(JoinHandle::is_finished)
    }

    /// Waits for every worker to see the end of the connection.
    pub fn join(self) -> io::Result<()> {
        for w in self.workers.into_iter().chain(self.shared.take()) {
            w.join().map_err(|_| io::Error::other("a FUSE worker panicked"))?;
        }
        Ok(())
    }
}

fn serve<H: Handler>(device: &Arc<Device>, shared: &Arc<Shared<H>>) {
    let mut buf = vec![0u8; shared.limits.max_io as usize + 4096];
    loop {
        let n = match device.read(&mut buf) {
            Read::Request(n) => n,
            Read::Again => continue,
            Read::Ended => return,
        };
        let Some((header, body)) = abi::split(&buf[..n]) else {
            tracing::error!(bytes = n, "the kernel sent a request that does not parse; ignoring it");
            continue;
        };
        dispatch(shared, &header, body, Reply::new(device.clone(), header.unique));
    }
}

/// Decodes one request, from /dev/fuse or a ring, and answers it or hands it on.
pub(super) fn dispatch<H: Handler>(shared: &Arc<Shared<H>>, header: &Header, body: &[u8], reply: Reply) {
    match abi::decode(header.opcode, body, shared.setxattr_ext.load(Ordering::Acquire)) {
        None => reply.error(libc::EINVAL),
        Some(Op::NoReply) => {}
        Some(Op::Unsupported) => reply.error(libc::ENOSYS),
        Some(Op::Init { major, minor, max_readahead, flags }) => negotiate(shared, major, minor, max_readahead, flags, reply),
        Some(op) => shared.handler.handle(header, op, reply),
    }
}

fn negotiate<H: Handler>(shared: &Arc<Shared<H>>, major: u32, minor: u32, max_readahead: u32, offered: u64, reply: Reply) {
    if major != abi::KERNEL_MAJOR || minor < 36 {
        tracing::error!(major, minor, "kernel FUSE protocol too old or unknown; 7.36 or newer is needed");
        return reply.error(libc::EPROTO);
    }
    let mut base = init::ASYNC_READ | init::BIG_WRITES | init::MAX_PAGES;
    let rings = if shared.limits.io_uring && offered & init::OVER_IO_URING != 0 { prepare_rings(shared) } else { None };
    if rings.is_some() {
        base |= init::OVER_IO_URING;
    }
    let mut flags = (base | shared.handler.init(offered)) & offered;
    if flags >> 32 != 0 {
        flags |= init::INIT_EXT;
    }
    shared.setxattr_ext.store(flags & init::SETXATTR_EXT != 0, Ordering::Release);
    let max_io = shared.limits.max_io;
    let answer = InitReply {
        flags,
        max_readahead: max_readahead.min(max_io),
        max_write: max_io,
        max_pages: (max_io / 4096) as u16,
        max_background: 16,
        congestion_threshold: 12,
    };
    tracing::debug!(minor, flags = format!("{flags:#x}"), "FUSE session initialised");
    reply.out(Out::init(minor.min(abi::KERNEL_MINOR), &answer));
    if let Some(rings) = rings {
        // The kernel took the INIT reply during the write above: rings may register now.
        let threads = rings.open(flags & init::OVER_IO_URING != 0);
        shared.rings.lock().unwrap_or_else(|e| e.into_inner()).extend(threads);
    }
}

/// Ring threads for FUSE over io_uring, each with its ring set up; `None` (and /dev/fuse)
/// when they cannot be had.
fn prepare_rings<H: Handler>(shared: &Arc<Shared<H>>) -> Option<uring::Prepared> {
    uring::prepare(shared)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot set up FUSE over io_uring; serving through /dev/fuse"))
        .ok()
}
