//! A small io_uring of our own (io_uring_setup(2) and io_uring_enter(2) over the shared rings),
//! with 128-byte submission entries: what FUSE's ring commands need, and no more. One thread
//! owns a ring: it alone submits to it and reaps from it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

const SETUP_COOP_TASKRUN: u32 = 1 << 8;
const SETUP_SQE128: u32 = 1 << 10;
const SETUP_SINGLE_ISSUER: u32 = 1 << 12;
const SETUP_DEFER_TASKRUN: u32 = 1 << 13;
const FEAT_SINGLE_MMAP: u32 = 1 << 0;
const ENTER_GETEVENTS: u32 = 1 << 0;
const OFF_SQ_RING: i64 = 0;
const OFF_CQ_RING: i64 = 0x800_0000;
const OFF_SQES: i64 = 0x1000_0000;
const SQE_LEN: usize = 128;
const CQE_LEN: usize = 16;

pub const OP_READ: u8 = 22;
pub const OP_URING_CMD: u8 = 46;

#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

/// One submission, built byte by byte at the offsets of `struct io_uring_sqe`.
pub struct Sqe(pub [u8; SQE_LEN]);

impl Sqe {
    pub fn new(opcode: u8, fd: i32, user_data: u64) -> Sqe {
        let mut s = Sqe([0; SQE_LEN]);
        s.0[0] = opcode;
        s.put(4, &fd.to_ne_bytes());
        s.put(32, &user_data.to_ne_bytes());
        s
    }

    pub fn put(&mut self, at: usize, bytes: &[u8]) -> &mut Sqe {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// `off` (for a ring command: its `cmd_op` in the low half).
    pub fn off(&mut self, v: u64) -> &mut Sqe {
        self.put(8, &v.to_ne_bytes())
    }

    pub fn addr(&mut self, v: u64) -> &mut Sqe {
        self.put(16, &v.to_ne_bytes())
    }

    pub fn len(&mut self, v: u32) -> &mut Sqe {
        self.put(24, &v.to_ne_bytes())
    }

    /// The 80-byte command area of a ring command.
    pub fn cmd(&mut self, bytes: &[u8]) -> &mut Sqe {
        self.put(48, bytes)
    }
}

/// One completion.
#[derive(Clone, Copy, Debug)]
pub struct Cqe {
    pub user_data: u64,
    pub res: i32,
}

/// A mapping of the ring's memory, unmapped on drop.
struct Map {
    ptr: NonNull<u8>,
    len: usize,
}

impl Map {
    fn new(fd: i32, len: usize, offset: i64) -> io::Result<Map> {
        // SAFETY: a fresh shared mapping of the ring fd at an offset the kernel defines.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_POPULATE, fd, offset)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map { ptr: NonNull::new(p.cast()).expect("mmap returned null"), len })
    }

    fn at<T>(&self, offset: u32) -> *mut T {
        // SAFETY: offsets come from the kernel's description of this very mapping.
        unsafe { self.ptr.as_ptr().add(offset as usize).cast() }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Map::new` and nothing points into it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct Ring {
    fd: OwnedFd,
    rings: Map,
    /// The CQ ring when the kernel maps it apart from the SQ ring (old kernels).
    cq_map: Option<Map>,
    sqes: Map,
    sq: (*const AtomicU32, *const AtomicU32, u32, *mut u32),
    cq: (*const AtomicU32, *const AtomicU32, u32, u32),
    queued: u32,
}

impl Ring {
    /// A ring of `entries` submissions. Task work runs only when this thread waits on the
    /// ring (deferred), so a request is copied in on the thread that serves it, at no
    /// interrupt of whatever else runs; kernels without that get cooperative task work.
    pub fn new(entries: u32) -> io::Result<Ring> {
        let deferred = SETUP_SQE128 | SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN;
        match Ring::setup(entries, deferred) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ring::setup(entries, SETUP_SQE128 | SETUP_COOP_TASKRUN),
            other => other,
        }
    }

    fn setup(entries: u32, flags: u32) -> io::Result<Ring> {
        let mut p = Params { flags, ..Params::default() };
        // SAFETY: io_uring_setup(2) fills the params struct we pass and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, entries, &mut p as *mut Params) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just created this fd for us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
        let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * CQE_LEN;
        let single = p.features & FEAT_SINGLE_MMAP != 0;
        let rings = Map::new(fd.as_raw_fd(), if single { sq_len.max(cq_len) } else { sq_len }, OFF_SQ_RING)?;
        let cq_map = if single { None } else { Some(Map::new(fd.as_raw_fd(), cq_len, OFF_CQ_RING)?) };
        let sqes = Map::new(fd.as_raw_fd(), p.sq_entries as usize * SQE_LEN, OFF_SQES)?;
        let cqm = cq_map.as_ref().unwrap_or(&rings);
        // SAFETY: the masks are plain u32s in the mapping, written once by the kernel.
        let (sq_mask, cq_mask) = unsafe { (*rings.at::<u32>(p.sq_off.ring_mask), *cqm.at::<u32>(p.cq_off.ring_mask)) };
        let sq = (rings.at::<AtomicU32>(p.sq_off.head).cast_const(), rings.at::<AtomicU32>(p.sq_off.tail).cast_const(), sq_mask, rings.at(p.sq_off.array));
        let cq = (cqm.at::<AtomicU32>(p.cq_off.head).cast_const(), cqm.at::<AtomicU32>(p.cq_off.tail).cast_const(), cq_mask, p.cq_off.cqes);
        Ok(Ring { fd, rings, cq_map, sqes, sq, cq, queued: 0 })
    }

    /// Queues one submission; `false` when the submission queue is full (submit first).
    pub fn push(&mut self, sqe: &Sqe) -> bool {
        let (head, tail, mask, array) = self.sq;
        // SAFETY: head and tail are the ring's atomics; only this thread moves the tail.
        let (h, t) = unsafe { ((*head).load(Ordering::Acquire), (*tail).load(Ordering::Relaxed)) };
        if t.wrapping_sub(h) > mask {
            return false;
        }
        let slot = t & mask;
        // SAFETY: slot < entries; the kernel reads this SQE only after the tail moves past it.
        unsafe {
            let dst = self.sqes.ptr.as_ptr().add(slot as usize * SQE_LEN);
            std::ptr::copy_nonoverlapping(sqe.0.as_ptr(), dst, SQE_LEN);
            *array.add(slot as usize) = slot;
            (*tail).store(t.wrapping_add(1), Ordering::Release);
        }
        self.queued += 1;
        true
    }

    /// Submits what is queued and waits until at least `want` completions are there.
    pub fn submit_and_wait(&mut self, want: u32) -> io::Result<()> {
        let flags = if want > 0 { ENTER_GETEVENTS } else { 0 };
        loop {
            // SAFETY: io_uring_enter(2) on our ring fd, without a signal mask.
            let n = unsafe {
                libc::syscall(libc::SYS_io_uring_enter, self.fd.as_raw_fd(), self.queued, want, flags, std::ptr::null::<u8>(), 0usize)
            };
            if n >= 0 {
                self.queued -= (n as u32).min(self.queued);
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                // Completions must be reaped before more fit: the caller does, then comes back.
                Some(libc::EAGAIN | libc::EBUSY) => return Ok(()),
                _ => return Err(e),
            }
        }
    }

    /// The next completion, if one is there.
    pub fn pop(&mut self) -> Option<Cqe> {
        let (head, tail, mask, cqes) = self.cq;
        // SAFETY: only this thread moves the head; the tail is the kernel's.
        let (h, t) = unsafe { ((*head).load(Ordering::Relaxed), (*tail).load(Ordering::Acquire)) };
        if h == t {
            return None;
        }
        let map = self.cq_map.as_ref().unwrap_or(&self.rings);
        // SAFETY: the entry at head is complete (the tail is past it) and in the mapping.
        let cqe = unsafe {
            let p = map.at::<u8>(cqes + (h & mask) * CQE_LEN as u32);
            Cqe { user_data: std::ptr::read_unaligned(p.cast::<u64>()), res: std::ptr::read_unaligned(p.add(8).cast::<i32>()) }
        };
        // SAFETY: as above; this hands the slot back to the kernel.
        unsafe { (*head).store(h.wrapping_add(1), Ordering::Release) };
        Some(cqe)
    }
}
