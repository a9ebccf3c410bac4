//! Mounting and unmounting: mount(2) directly when this process may, else through the
//! setuid `fusermount3` helper, which hands back the `/dev/fuse` file over a socket.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::device::Device;

const FSNAME: &str = "ember";

/// Mounts a FUSE file system at `mountpoint` and returns its connection.
pub fn mount(mountpoint: &Path, allow_other: bool) -> io::Result<Device> {
    if !mountpoint.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "the mount point is not a directory"));
    }
    let device = Device::open()?;
    match mount_directly(&device, mountpoint, allow_other) {
        Ok(()) => Ok(device),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => mount_with_helper(mountpoint, allow_other),
        Err(e) => Err(e),
    }
}

fn mount_directly(device: &Device, mountpoint: &Path, allow_other: bool) -> io::Result<()> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!("fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions", device.raw());
    if allow_other {
        data.push_str(",allow_other");
    }
    let target = c_path(mountpoint)?;
    let (source, fstype, data) = (c_str(FSNAME)?, c_str(&format!("fuse.{FSNAME}"))?, c_str(&data)?);
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mount_with_helper(mountpoint: &Path, allow_other: bool) -> io::Result<Device> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    let mut options = format!("fsname={FSNAME},subtype={FSNAME},default_permissions,nosuid,nodev");
    if allow_other {
        options.push_str(",allow_other");
    }
    let mut helper = Command::new("fusermount3");
    helper.arg("-o").arg(options).arg("--").arg(mountpoint).env("_FUSE_COMMFD", theirs_fd.to_string());
    // SAFETY: between fork and exec only fcntl(2) runs, which is async-signal-safe; it keeps
    // the helper's end of the socket open across exec.
    unsafe {
        helper.pre_exec(move || {
            if libc::fcntl(theirs_fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = helper.status().map_err(|e| io::Error::new(e.kind(), format!("fusermount3: {e}")))?;
    drop(theirs);
    if !status.success() {
        return Err(io::Error::other(format!("fusermount3 failed ({status}); not root and no helper to mount with")));
    }
    receive_fd(&ours).map(Device::from_fd)
}

/// The one file descriptor the helper sends with SCM_RIGHTS.
fn receive_fd(socket: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // Room for one control message holding one int, aligned as cmsghdr wants.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
    // SAFETY: recvmsg(2) into the buffers described by `msg`.
    if unsafe { libc::recvmsg(fd, &mut msg, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CMSG_FIRSTHDR/CMSG_DATA walk the control buffer recvmsg filled.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other("fusermount3 sent no file descriptor"));
        }
        let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        Ok(OwnedFd::from_raw_fd(raw))
    }
}

/// Unmounts; `lazy` detaches a busy mount, which the kernel finishes once its last user is gone.
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let target = c_path(mountpoint)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: umount2(2) with a NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e);
    }
    let mut helper = Command::new("fusermount3");
    helper.arg("-u");
    if lazy {
        helper.arg("-z");
    }
    let status = helper.arg("--").arg(mountpoint).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("fusermount3 -u failed ({status})")))
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

fn c_str(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string holds a NUL byte"))
}
