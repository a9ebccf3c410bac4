//! One open `/dev/fuse` connection: reading requests, writing replies and notifications.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use super::abi::{self, Out, OUT_HEADER_LEN};
use super::uring::Slot;

/// A `/dev/fuse` file. Cloned devices share the connection's request queue, but a reply must
/// go to the device its request was read from (each keeps its own list of requests in work).
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
}

/// What a read of the device gave.
pub enum Read {
    Request(usize),
    /// Nothing this time (a request was taken back, or a signal): read again.
    Again,
    /// The file system was unmounted or the connection aborted.
    Ended,
}

impl Device {
    pub fn open() -> io::Result<Device> {
        // SAFETY: open(2) of a constant NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("open /dev/fuse: {e} (is the fuse module loaded?)")));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(Device { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn from_fd(fd: OwnedFd) -> Device {
        Device { fd }
    }

    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// A second device on the same connection, so another thread reads requests of its own.
    pub fn clone_connection(&self) -> io::Result<Device> {
        let other = Device::open()?;
        let mut master = self.raw() as u32;
        // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the connection's fd) from the pointer.
        if unsafe { libc::ioctl(other.raw(), abi::DEV_IOC_CLONE, &mut master) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(other)
    }

    pub fn read(&self, buf: &mut [u8]) -> Read {
        // SAFETY: read(2) into a buffer we own, at most its length.
        let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Read::Request(n as usize);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOENT | libc::EINTR | libc::EAGAIN) => Read::Again,
            Some(libc::ENODEV) => Read::Ended,
            _ => {
                tracing::error!(error = %io::Error::last_os_error(), "reading /dev/fuse failed; ending the session");
                Read::Ended
            }
        }
    }

    /// Writes one message: the header, then `parts` in order, in a single writev(2).
    fn send(&self, unique: u64, error: i32, parts: &[&[u8]]) -> io::Result<()> {
        let len = OUT_HEADER_LEN + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut header = Out::default();
        header.u32(len as u32).u32(error as u32).u64(unique);
        let mut iov = Vec::with_capacity(parts.len() + 1);
        for part in std::iter::once(&header.0[..]).chain(parts.iter().copied()) {
            iov.push(libc::iovec { iov_base: part.as_ptr() as *mut _, iov_len: part.len() });
        }
        // SAFETY: every iovec points into a slice that outlives the call.
        let n = unsafe { libc::writev(self.raw(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Tells the kernel to drop what it cached of an inode: its attributes, and its pages in
    /// `offset..offset+len` (all of them with `len` 0; none with a negative `offset`).
    pub fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> io::Result<()> {
        self.send(0, abi::NOTIFY_INVAL_INODE, &[&Out::inval_inode(ino, offset, len).0])
    }
}

/// The answer to one request; sent once, from any thread.
#[must_use = "the kernel waits for every reply"]
pub struct Reply {
    to: Channel,
    unique: u64,
}

/// Where a request came from, so where its answer goes.
enum Channel {
    Device(Arc<Device>),
    Ring(Slot),
}

impl Reply {
    pub fn new(device: Arc<Device>, unique: u64) -> Reply {
        Reply { to: Channel::Device(device), unique }
    }

    pub fn ring(slot: Slot, unique: u64) -> Reply {
        Reply { to: Channel::Ring(slot), unique }
    }

    pub fn ok(self) {
        self.finish(0, &[]);
    }

    pub fn bytes(self, body: &[u8]) {
        self.finish(0, &[body]);
    }

    pub fn out(self, body: Out) {
        self.finish(0, &[&body.0]);
    }

    pub fn error(self, errno: i32) {
        self.finish(-errno, &[]);
    }

    fn finish(self, error: i32, parts: &[&[u8]]) {
        let device = match self.to {
            Channel::Device(device) => device,
            Channel::Ring(slot) => return slot.finish(self.unique, error, parts),
        };
        if let Err(e) = device.send(self.unique, error, parts) {
            // ENOENT: the request was interrupted and the kernel no longer waits for it.
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!(unique = self.unique, error = %e, "cannot reply to the kernel");
            }
        }
    }
}
