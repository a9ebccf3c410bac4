//! POSIX ACLs through the real mount, enforced by the kernel for another user: access ACLs,
//! chmod's effect on them, default ACLs in place of the umask, and setuid, setgid and file
//! capabilities dropped when another user writes, truncates or fallocates, on chown, and
//! setgid when someone outside the file's group sets its ACL.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ember_testkit::{as_user, cpath, fuse_available, Cluster, Forked, Slots};

static SLOTS: Slots = Slots::new(2);
const USER: u32 = 4242;
const NO_ID: u32 = u32::MAX;
const USER_OBJ: u16 = 0x01;
const NAMED_USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn set_acl(p: &Path, name: &str, value: &[u8]) {
    let (path, name) = (cpath(p), CString::new(name).unwrap());
    let r = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {name:?}: {}", std::io::Error::last_os_error());
}

/// 0 if `USER` can open `p` for reading, else the errno.
fn user_reads(p: &Path) -> i32 {
    let path = cpath(p);
    as_user(USER, || {
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            return std::io::Error::last_os_error().raw_os_error().unwrap_or(255);
        }
        unsafe { libc::close(fd) };
        0
    })
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn access_and_default_acls_are_enforced_and_kept_with_the_mode() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    let f = a.join("f");
    fs::write(&f, b"secret").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(user_reads(&f), libc::EACCES);

    // A named-user entry lets the user in; the mask is the group class of the mode.
    set_acl(&f, "system.posix_acl_access", &acl(&[(USER_OBJ, 6, NO_ID), (NAMED_USER, 4, USER), (GROUP_OBJ, 0, NO_ID), (MASK, 4, NO_ID), (OTHER, 0, NO_ID)]));
    assert_eq!(mode(&f), 0o640);
    assert_eq!(user_reads(&f), 0, "the ACL grants the read");
    assert_eq!(user_reads(&b.join("f")), 0, "and on another mount");

    // chmod narrows the mask, which now keeps the named user out.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(user_reads(&f), libc::EACCES, "chmod must reach the ACL's mask");

    // A default ACL replaces the umask for new files and is inherited by new directories.
    let d = a.join("shared");
    fs::create_dir(&d).unwrap();
    set_acl(&d, "system.posix_acl_default", &acl(&[(USER_OBJ, 7, NO_ID), (NAMED_USER, 7, USER), (GROUP_OBJ, 5, NO_ID), (MASK, 7, NO_ID), (OTHER, 0, NO_ID)]));
    let (file, sub) = (cpath(&d.join("new")), cpath(&d.join("sub")));
    let made = Forked::start(|| unsafe {
        libc::umask(0o077);
        let fd = libc::open(file.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o666);
        i32::from(fd < 0 || libc::mkdir(sub.as_ptr(), 0o777) != 0)
    });
    assert_eq!(made.wait(), 0);
    assert_eq!(mode(&d.join("new")), 0o660, "the default ACL, not the umask, sets the group class");
    assert_eq!(user_reads(&d.join("new")), 0, "the inherited ACL grants the named user");
    assert_eq!(mode(&d.join("sub")), 0o770);
    fs::write(d.join("sub/deeper"), b"x").unwrap();
    assert_eq!(user_reads(&d.join("sub/deeper")), 0, "the default ACL passed to the subdirectory");

    // Without a default ACL the umask applies as usual.
    let plain = cpath(&a.join("plain"));
    let made = Forked::start(|| unsafe {
        libc::umask(0o027);
        let fd = libc::open(plain.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o666);
        i32::from(fd < 0)
    });
    assert_eq!(made.wait(), 0);
    assert_eq!(mode(&a.join("plain")), 0o640);
}

#[test]
fn a_write_truncate_or_chown_clears_setuid_and_setgid() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let a = cluster.mount();
    let f = a.join("tool");
    fs::write(&f, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).unwrap();
    assert_eq!(mode(&f), 0o6777);
    let path = cpath(&f);
    assert_eq!(as_user(USER, || append_byte(&path)), 0);
    assert_eq!(mode(&f), 0o777, "a write by someone else must drop setuid and setgid");

    fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).unwrap();
    let cut = as_user(USER, || unsafe { i32::from(libc::truncate(path.as_ptr(), 1) != 0) });
    assert_eq!(cut, 0);
    assert_eq!(mode(&f), 0o777, "a truncate by someone else must drop setuid and setgid");

    fs::set_permissions(&f, fs::Permissions::from_mode(0o6755)).unwrap();
    std::os::unix::fs::chown(&f, Some(USER), None).unwrap();
    assert_eq!(mode(&f) & 0o6000, 0, "chown drops setuid and setgid");
    std::os::unix::fs::chown(&f, Some(0), None).unwrap();

    // Setgid without group execute marks mandatory locking: a write keeps it.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o2766)).unwrap();
    assert_eq!(as_user(USER, || append_byte(&path)), 0);
    assert_eq!(mode(&f), 0o2766, "setgid without group execute must stay");

    // Root has CAP_FSETID: its writes keep both bits.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).unwrap();
    assert_eq!(append_byte(&path), 0);
    assert_eq!(mode(&f), 0o6777, "a write by root keeps setuid and setgid");
    assert_eq!(unsafe { libc::truncate(path.as_ptr(), 2) }, 0);
    assert_eq!(mode(&f), 0o6777, "a truncate by root keeps setuid and setgid");

    let fallocated = as_user(USER, || unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
        i32::from(fd < 0 || libc::fallocate(fd, 0, 0, 8192) != 0)
    });
    assert_eq!(fallocated, 0);
    assert_eq!(mode(&f), 0o777, "fallocate by someone else must drop setuid and setgid");

    // What counts is CAP_FSETID, not uid 0: root without it is like anyone else.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).unwrap();
    let without_fsetid = Forked::start(|| unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
        i32::from(fd < 0 || !drop_effective_capability(CAP_FSETID) || libc::fallocate(fd, 0, 0, 16384) != 0)
    });
    assert_eq!(without_fsetid.wait(), 0);
    assert_eq!(mode(&f), 0o777, "fallocate by root without CAP_FSETID must drop setuid and setgid");
}

const CAP_FSETID: u32 = 4;

/// Takes `cap` out of this thread's effective capabilities (capget/capset, version 3).
fn drop_effective_capability(cap: u32) -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header { version: 0x2008_0522, pid: 0 };
    let mut data = [Data::default(); 2];
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return false;
        }
        data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
        libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) == 0
    }
}

#[test]
fn any_write_drops_the_file_capability() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let a = cluster.mount();
    let f = a.join("ping");
    fs::write(&f, vec![1u8; 100_000]).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o777)).unwrap();
    // struct vfs_cap_data, revision 2: CAP_NET_RAW (13) permitted.
    let mut cap = 0x0200_0000u32.to_le_bytes().to_vec();
    for word in [1u32 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    let path = cpath(&f);
    set_acl(&f, "security.capability", &cap);
    assert_eq!(as_user(USER, || append_byte(&path)), 0);
    assert!(!has_xattr(&f, "security.capability"), "a write by someone else must drop the capability");
    // As on ext4, even root's write drops it (CAP_FSETID keeps only setuid and setgid).
    set_acl(&f, "security.capability", &cap);
    assert!(has_xattr(&f, "security.capability"));
    assert_eq!(append_byte(&path), 0);
    assert!(!has_xattr(&f, "security.capability"), "a write by root must drop the capability too");
    assert_eq!(fs::metadata(&f).unwrap().len(), 100_002);
}

#[test]
fn an_acl_set_by_someone_outside_the_files_group_drops_setgid() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let a = cluster.mount();
    let f = a.join("shared");
    fs::write(&f, b"x").unwrap();
    std::os::unix::fs::chown(&f, Some(USER), Some(0)).unwrap();
    let access = acl(&[(USER_OBJ, 7, NO_ID), (GROUP_OBJ, 7, NO_ID), (OTHER, 0, NO_ID)]);
    let (path, name) = (cpath(&f), CString::new("system.posix_acl_access").unwrap());
    let set = |value: &[u8]| unsafe { i32::from(libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) != 0) };

    fs::set_permissions(&f, fs::Permissions::from_mode(0o2750)).unwrap();
    assert_eq!(as_user(USER, || set(&access)), 0, "the owner may set an ACL");
    assert_eq!(mode(&f), 0o770, "the owner is not in the file's group: setgid goes");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o2750)).unwrap();
    assert_eq!(set(&access), 0);
    assert_eq!(mode(&f), 0o2770, "root may keep setgid");
}

/// 0 if one byte could be appended to `path`.
fn append_byte(path: &CString) -> i32 {
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
        let failed = fd < 0 || libc::write(fd, b"x".as_ptr().cast(), 1) != 1;
        libc::close(fd);
        i32::from(failed)
    }
}

fn has_xattr(p: &Path, name: &str) -> bool {
    let (path, name) = (cpath(p), CString::new(name).unwrap());
    unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}
