//! FUSE over io_uring (Linux 6.14 and newer): the kernel keeps one queue of ring entries per
//! CPU and gives a request to the queue of the CPU its caller runs on. Each queue is served by
//! threads pinned to that CPU, so a request and its answer stay on the caller's CPU: no
//! wake-up of another CPU, which on a virtual machine costs more than the request itself.
//!
//! Each serving thread owns one io_uring and the entries it registered. A fetched request is
//! answered on that thread with one COMMIT_AND_FETCH, which also asks for the next. A reply
//! given later from another thread (a blocking lock) is posted back to the owning thread,
//! which is woken through an eventfd; meanwhile it registers another entry so that its
//! queue keeps one waiting for requests. FORGET and INTERRUPT still come through /dev/fuse,
//! whose readers keep running.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};

use ember_telemetry::Counter;

use super::abi::{self, IN_HEADER_LEN, OUT_HEADER_LEN};
use super::device::Reply;
use super::ring::{Cqe, Ring, Sqe, OP_READ, OP_URING_CMD};
use super::session::{dispatch, Handler, Shared};

const CMD_REGISTER: u64 = 1;
const CMD_COMMIT_AND_FETCH: u64 = 2;
/// `struct fuse_uring_req_header`: the in/out header, the fixed arguments, then
/// `struct fuse_uring_ent_in_out` (whose `payload_sz` is at +16).
const HEADERS_LEN: usize = 288;
const OP_IN: usize = 128;
const OP_IN_LEN: usize = 128;
const PAYLOAD_SZ: usize = 256 + 16;
/// Where the payload starts in an entry's memory. A request's fixed arguments are copied to
/// just before it, so that its body is one slice, as read from /dev/fuse.
const PAYLOAD_AT: usize = 512;
const _: () = assert!(PAYLOAD_AT - OP_IN_LEN >= HEADERS_LEN);
/// Entries one thread may come to hold: one more each time a reply is given elsewhere while
/// all its entries wait for their replies.
const MAX_ENTRIES: usize = 64;
const RING_SIZE: u32 = 128;
const WAKE: u64 = u64::MAX;

/// How many ring queues the kernel makes: one per possible CPU.
pub fn queue_count() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    count_cpus(text.trim()).ok_or_else(|| io::Error::other(format!("cannot parse the possible CPUs {text:?}")))
}

fn count_cpus(list: &str) -> Option<usize> {
    list.split(',').try_fold(0, |n, part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
        (b >= a).then(|| n + b - a + 1)
    })
}

/// Whether the kernel would speak FUSE over io_uring, turning its module switch on when it
/// is off and this process may (root). The switch only makes the kernel offer the ring at
/// INIT; file systems that do not ask for it are not changed.
pub fn kernel_ready() -> bool {
    const SWITCH: &str = "/sys/module/fuse/parameters/enable_uring";
    match std::fs::read_to_string(SWITCH) {
        Ok(v) if v.trim() == "Y" => true,
        Ok(_) => match std::fs::write(SWITCH, "Y") {
            Ok(()) => {
                tracing::info!("turned on the kernel's FUSE over io_uring ({SWITCH})");
                true
            }
            Err(e) => {
                tracing::info!(error = %e, "FUSE over io_uring is off in this kernel ({SWITCH}); serving through /dev/fuse");
                false
            }
        },
        Err(_) => false,
    }
}

/// Ring threads set up but not yet registered with the kernel.
pub struct Prepared {
    threads: Vec<JoinHandle<()>>,
    gate: Arc<(Mutex<Option<bool>>, Condvar)>,
}

impl Prepared {
    /// Lets the threads register their entries (`go`: the INIT reply took the ring) or end.
    pub fn open(self, go: bool) -> Vec<JoinHandle<()>> {
        let (decision, opened) = &*self.gate;
        *decision.lock().unwrap_or_else(|e| e.into_inner()) = Some(go);
        opened.notify_all();
        self.threads
    }

    /// Sends the threads away (they end without registering) and passes `error` on.
    fn abandon(self, error: io::Error) -> io::Error {
        self.open(false);
        error
    }
}

/// Starts threads for each of the kernel's queues (the session's threads shared out, at least
/// two a queue) and waits until every one has its ring. Only then may INIT take the ring:
/// once it has, the kernel holds all requests until each queue has an entry, so a queue left
/// without a thread would hang the mount.
pub fn prepare<H: Handler>(shared: &Arc<Shared<H>>) -> io::Result<Prepared> {
    let queues = queue_count()?.max(1);
    let per_queue = (shared.limits.threads / queues).max(2);
    let payload = (shared.limits.max_io as usize).max(8192);
    let mut prepared = Prepared { threads: Vec::with_capacity(queues * per_queue), gate: Arc::default() };
    let (ready_tx, ready_rx) = mpsc::channel();
    for qid in 0..queues {
        for i in 0..per_queue {
            let (shared, gate, ready) = (shared.clone(), prepared.gate.clone(), ready_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("fuse-q{qid}-{i}"))
                .spawn(move || serve_queue(&shared, qid, payload, &gate, &ready));
            match spawned {
                Ok(t) => prepared.threads.push(t),
                Err(e) => return Err(prepared.abandon(e)),
            }
        }
    }
    drop(ready_tx);
    for _ in 0..prepared.threads.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(prepared.abandon(e)),
            Err(_) => return Err(prepared.abandon(io::Error::other("a FUSE ring thread ended while setting up"))),
        }
    }
    tracing::info!(queues, per_queue, "serving FUSE over io_uring");
    Ok(prepared)
}

/// Anonymous memory of one entry: headers, then the payload at `PAYLOAD_AT`.
struct Memory {
    ptr: *mut u8,
    len: usize,
    /// Headers and payload as REGISTER hands them over; kept as long as the entry, so the
    /// kernel never reads them after they are gone, however late it issues the command.
    iov: [libc::iovec; 2],
}

// SAFETY: the memory is plain bytes; who writes where is ordered by the entry's life cycle
// (the kernel, then the serving thread, then one reply, then the kernel again).
unsafe impl Send for Memory {}
unsafe impl Sync for Memory {}

impl Memory {
    fn new(payload: usize) -> io::Result<Memory> {
        let len = PAYLOAD_AT + payload;
        // SAFETY: a fresh private anonymous mapping; pages are only backed once touched.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr: *mut u8 = p.cast();
        let iov = [
            libc::iovec { iov_base: p, iov_len: HEADERS_LEN },
            // SAFETY: PAYLOAD_AT is inside the mapping.
            libc::iovec { iov_base: unsafe { ptr.add(PAYLOAD_AT) }.cast(), iov_len: payload },
        ];
        Ok(Memory { ptr, len, iov })
    }

    fn capacity(&self) -> usize {
        self.len - PAYLOAD_AT
    }

    /// Copies `bytes` in at `at`.
    ///
    /// # Safety
    /// Nothing may hold a slice of `at..at + bytes.len()`.
    unsafe fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.len);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len());
    }

    /// # Safety
    /// Nothing may write `at..at + len` while the slice lives.
    unsafe fn slice(&self, at: usize, len: usize) -> &[u8] {
        assert!(at + len <= self.len);
        std::slice::from_raw_parts(self.ptr.add(at), len)
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: mapped by `Memory::new`; the last reference is gone.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A reply ready to be committed.
struct Done {
    entry: usize,
    unique: u64,
    /// The reply's payload when it could not be written in place: the request's own payload
    /// was still being read.
    staged: Option<Vec<u8>>,
}

/// Where replies come back to the thread that owns their entry.
struct Mailbox {
    done: Mutex<Vec<Done>>,
    wake: std::os::fd::OwnedFd,
    owner: ThreadId,
}

impl Mailbox {
    fn new() -> io::Result<Mailbox> {
        // SAFETY: eventfd(2) returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nobody else.
        let wake = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        Ok(Mailbox { done: Mutex::new(Vec::new()), wake, owner: std::thread::current().id() })
    }

    fn post(&self, done: Done) {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).push(done);
        if std::thread::current().id() != self.owner {
            let one = 1u64.to_ne_bytes();
            // SAFETY: an 8-byte write to our eventfd; it only fails when the counter is full,
            // and then the owner is being woken anyway.
            unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(&self.wake), one.as_ptr().cast(), 8) };
        }
    }

    fn take(&self) -> Vec<Done> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The answer to one request fetched over the ring.
pub struct Slot {
    memory: Arc<Memory>,
    mailbox: Arc<Mailbox>,
    entry: usize,
    /// Bytes of payload the request brought; while the handler may read them, a reply
    /// payload is staged rather than written over them.
    request_payload: usize,
}

impl Slot {
    pub fn finish(self, unique: u64, error: i32, parts: &[&[u8]]) {
        let mut total: usize = parts.iter().map(|p| p.len()).sum();
        let mut error = error;
        if total > self.memory.capacity() {
            tracing::error!(unique, bytes = total, "a reply does not fit the ring entry; answering EIO");
            (error, total) = (-libc::EIO, 0);
        }
        let parts = if total == 0 { &[][..] } else { parts };
        let staged = if self.request_payload > 0 && total > 0 {
            Some(parts.concat())
        } else {
            let mut at = PAYLOAD_AT;
            for p in parts {
                // SAFETY: the request had no payload, so nothing reads the payload area.
                unsafe { self.memory.write(at, p) };
                at += p.len();
            }
            None
        };
        let mut header = [0u8; OUT_HEADER_LEN];
        header[..4].copy_from_slice(&((OUT_HEADER_LEN + total) as u32).to_ne_bytes());
        header[4..8].copy_from_slice(&error.to_ne_bytes());
        header[8..].copy_from_slice(&unique.to_ne_bytes());
        // SAFETY: the headers are not part of any request body handed out.
        unsafe {
            self.memory.write(0, &header);
            self.memory.write(PAYLOAD_SZ, &(total as u32).to_ne_bytes());
        }
        self.mailbox.post(Done { entry: self.entry, unique, staged });
    }
}

/// One serving thread: its ring, its entries and how many of them wait in the kernel.
struct Server {
    ring: Ring,
    fd: i32,
    qid: u16,
    payload: usize,
    entries: Vec<Arc<Memory>>,
    waiting: usize,
    /// Whether the kernel has given this thread a request yet: until then a failure means
    /// it refused the ring.
    served: bool,
    mailbox: Arc<Mailbox>,
    wake_buf: Box<[u8; 8]>,
    /// `ember_fuse_ring_requests_total`, held so that counting takes no lock.
    requests: Counter,
}

fn serve_queue<H: Handler>(
    shared: &Arc<Shared<H>>,
    qid: usize,
    payload: usize,
    gate: &(Mutex<Option<bool>>, Condvar),
    ready: &mpsc::Sender<io::Result<()>>,
) {
    pin_to_cpu(qid);
    let server = Server::new(shared.device.raw(), qid as u16, payload);
    let mut server = match server {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => return drop(ready.send(Err(e))),
    };
    let (decision, opened) = gate;
    let mut go = decision.lock().unwrap_or_else(|e| e.into_inner());
    while go.is_none() {
        go = opened.wait(go).unwrap_or_else(|e| e.into_inner());
    }
    if *go != Some(true) {
        return;
    }
    drop(go);
    if let Err(e) = server.register().and_then(|()| server.run(shared)) {
        tracing::warn!(qid, error = %e, "FUSE ring thread stopped");
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!(cpu, error = %io::Error::last_os_error(), "cannot pin a FUSE ring thread");
        }
    }
}

/// Completion codes that mean the connection is gone (unmounted or aborted).
fn connection_ended(res: i32) -> bool {
    matches!(-res, libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV)
}

impl Server {
    fn new(fd: i32, qid: u16, payload: usize) -> io::Result<Server> {
        let mut s = Server {
            ring: Ring::new(RING_SIZE)?,
            fd,
            qid,
            payload,
            entries: Vec::new(),
            waiting: 0,
            served: false,
            mailbox: Arc::new(Mailbox::new()?),
            wake_buf: Box::new([0; 8]),
            requests: ember_telemetry::global().counter("ember_fuse_ring_requests_total", ""),
        };
        s.arm_wake()?;
        Ok(s)
    }

    fn command(&self, entry: usize, cmd: u64, commit_id: u64) -> Sqe {
        let mut req = [0u8; 24];
        req[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        req[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let mut sqe = Sqe::new(OP_URING_CMD, self.fd, entry as u64);
        sqe.off(cmd).cmd(&req);
        sqe
    }

    fn submit(&mut self, sqe: &Sqe) -> io::Result<()> {
        while !self.ring.push(sqe) {
            self.ring.submit_and_wait(0)?;
        }
        Ok(())
    }

    /// Hands the kernel one more entry for this queue.
    fn register(&mut self) -> io::Result<()> {
        let memory = Arc::new(Memory::new(self.payload)?);
        let mut sqe = self.command(self.entries.len(), CMD_REGISTER, 0);
        sqe.addr(memory.iov.as_ptr() as u64).len(2);
        self.entries.push(memory);
        self.submit(&sqe)?;
        self.waiting += 1;
        ember_telemetry::global().inc("ember_fuse_ring_entries_total", "", 1);
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let mut sqe = Sqe::new(OP_READ, std::os::fd::AsRawFd::as_raw_fd(&self.mailbox.wake), WAKE);
        sqe.addr(self.wake_buf.as_mut_ptr() as u64).len(8);
        self.submit(&sqe)
    }

    fn run<H: Handler>(&mut self, shared: &Arc<Shared<H>>) -> io::Result<()> {
        loop {
            self.ring.submit_and_wait(1)?;
            while let Some(cqe) = self.ring.pop() {
                if !self.complete(shared, cqe)? {
                    return Ok(());
                }
            }
            self.commit_replies()?;
            if self.waiting == 0 && self.entries.len() < MAX_ENTRIES {
                self.register()?;
            }
        }
    }

    /// Handles one completion; `false` once the connection is gone.
    fn complete<H: Handler>(&mut self, shared: &Arc<Shared<H>>, cqe: Cqe) -> io::Result<bool> {
        if cqe.user_data == WAKE {
            self.arm_wake()?;
            return Ok(true);
        }
        self.waiting -= 1;
        if cqe.res < 0 {
            if connection_ended(cqe.res) {
                return Ok(false);
            }
            let e = io::Error::from_raw_os_error(-cqe.res);
            if !self.served {
                // The first registration failed: the kernel turned the ring off for this
                // connection and goes on with /dev/fuse.
                tracing::warn!(qid = self.qid, error = %e, "the kernel refused FUSE over io_uring; serving through /dev/fuse");
                return Ok(false);
            }
            tracing::warn!(qid = self.qid, entry = cqe.user_data, error = %e, "a FUSE ring entry failed; it is dropped");
            return Ok(true);
        }
        self.served = true;
        self.serve(shared, cqe.user_data as usize);
        Ok(true)
    }

    /// Decodes the request in `entry` and hands it to the file system.
    fn serve<H: Handler>(&self, shared: &Arc<Shared<H>>, entry: usize) {
        let memory = &self.entries[entry];
        // SAFETY: the kernel filled the headers before completing the fetch; nothing writes
        // them until this request is answered.
        let (head, sizes) = unsafe { (memory.slice(0, IN_HEADER_LEN), memory.slice(PAYLOAD_SZ, 4)) };
        let payload_len = u32::from_ne_bytes(sizes.try_into().expect("4 bytes")) as usize;
        let Some((_, header)) = abi::parse_header(head) else {
            return tracing::error!("a ring request's header does not parse; dropping it");
        };
        let setxattr_ext = shared.setxattr_ext.load(Ordering::Acquire);
        let fixed = abi::fixed_args_len(header.opcode, setxattr_ext);
        let slot = Slot { memory: memory.clone(), mailbox: self.mailbox.clone(), entry, request_payload: payload_len };
        let reply = Reply::ring(slot, header.unique);
        if payload_len > memory.capacity() || fixed > OP_IN_LEN {
            return reply.error(libc::EINVAL);
        }
        // SAFETY: the fixed arguments move to the gap before the payload, which no slice
        // covers yet; then the body is read-only until the handler is done with it.
        let body = unsafe {
            let mut args = [0u8; OP_IN_LEN];
            args[..fixed].copy_from_slice(memory.slice(OP_IN, fixed));
            memory.write(PAYLOAD_AT - fixed, &args[..fixed]);
            memory.slice(PAYLOAD_AT - fixed, fixed + payload_len)
        };
        self.requests.add(1);
        dispatch(shared, &header, body, reply);
    }

    /// Commits every reply given since the last round; each commit also fetches anew.
    fn commit_replies(&mut self) -> io::Result<()> {
        for done in self.mailbox.take() {
            if let Some(staged) = &done.staged {
                // SAFETY: the request was served (its body is no longer read) and answered.
                unsafe { self.entries[done.entry].write(PAYLOAD_AT, staged) };
            }
            let sqe = self.command(done.entry, CMD_COMMIT_AND_FETCH, done.unique);
            self.submit(&sqe)?;
            self.waiting += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_possible_cpus() {
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("0-1"), Some(2));
        assert_eq!(count_cpus("0-3,6-7"), Some(6));
        assert_eq!(count_cpus("0-x"), None);
        assert_eq!(count_cpus("3-1"), None);
    }
}
