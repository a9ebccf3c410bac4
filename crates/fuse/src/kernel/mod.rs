//! The FUSE kernel protocol over `/dev/fuse` and over FUSE's io_uring: mounting, the request
//! loops and the wire format.
//!
//! Ember speaks the protocol itself rather than through a library so that every request the
//! kernel has reaches the file system (O_TMPFILE, the flock flag of lock requests, the
//! privilege-dropping flags of setattr and setxattr) and so that how requests are read and
//! replies written stays in our hands.

pub mod abi;
mod device;
mod mount;
mod ring;
mod session;
mod uring;

pub use abi::{Header, KernelAttr, Op};
pub use device::{Device, Reply};
pub use mount::{mount, unmount};
pub use session::{Handler, Limits, Session};
pub use uring::kernel_ready as uring_ready;
