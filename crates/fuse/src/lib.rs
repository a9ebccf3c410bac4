//! Ember's FUSE mount.
//!
//! All file-system logic lives in [`Vfs`], a plain async type that tests can drive without
//! the kernel. [`adapter`] is a thin layer over [`kernel`], Ember's own speaker of the FUSE
//! protocol, that turns each kernel request into one `Vfs` call, with one tracing span, one
//! metrics observation and one status-to-errno mapping per operation.

mod adapter;
mod caller;
mod errno;
mod kernel;
mod mount;
mod vfs;

pub use errno::errno_of;
pub use mount::{run_mount, MountConfig};
pub use vfs::{Creator, DirEntry, Kill, LockSpec, SeekFor, Vfs, VfsConfig};
