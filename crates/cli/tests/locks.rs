//! fcntl byte-range locks and flock through the real mount: they hold between two mounts of one
//! cluster, report their holder, wait and can be interrupted, and are given back when their
//! holder closes, is killed, or its whole client dies.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use ember_testkit::{cpath, errno, fuse_available, Cluster, Forked, Slots, Spec};

static SLOTS: Slots = Slots::new(2);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// A `struct flock` for `len` bytes at `start` (`len` 0: to the end of the file).
fn flock_of(kind: i32, start: i64, len: i64) -> libc::flock {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// fcntl(fd, cmd, lock): Ok or the errno. No allocation, so a forked child may call it.
fn fcntl_lock(fd: i32, cmd: i32, kind: i32, start: i64, len: i64) -> Result<(), i32> {
    let fl = flock_of(kind, start, len);
    if unsafe { libc::fcntl(fd, cmd, &fl) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// F_GETLK: `None` if the lock could be set, else (type, start, len, pid) of the holder.
fn getlk(fd: i32, kind: i32, start: i64, len: i64) -> Option<(i32, i64, i64, i32)> {
    let mut fl = flock_of(kind, start, len);
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_GETLK, &mut fl) }, 0, "F_GETLK: errno {}", errno());
    (i32::from(fl.l_type) != libc::F_UNLCK).then_some((i32::from(fl.l_type), fl.l_start, fl.l_len, fl.l_pid))
}

fn flock(fd: i32, op: i32) -> Result<(), i32> {
    if unsafe { libc::flock(fd, op) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// Tries `f` every 50 ms for up to `limit`; returns whether it ever said yes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn byte_range_locks_hold_across_mounts_split_report_their_holder_and_hand_over_data() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    fs::write(a.join("db"), b"").unwrap();
    let fa = open_rw(&a.join("db"));
    let fb = open_rw(&b.join("db"));
    let (da, db) = (fa.as_raw_fd(), fb.as_raw_fd());

    fcntl_lock(da, libc::F_SETLK, libc::F_WRLCK, 0, 100).unwrap();
    assert_eq!(fcntl_lock(db, libc::F_SETLK, libc::F_WRLCK, 50, 10), Err(libc::EAGAIN));
    assert_eq!(fcntl_lock(db, libc::F_SETLK, libc::F_RDLCK, 99, 1), Err(libc::EAGAIN));
    let me = std::process::id() as i32;
    assert_eq!(getlk(db, libc::F_RDLCK, 10, 1), Some((libc::F_WRLCK, 0, 100, me)));
    assert_eq!(getlk(db, libc::F_WRLCK, 100, 0), None, "bytes past the lock are free");
    fcntl_lock(db, libc::F_SETLK, libc::F_WRLCK, 100, 0).unwrap();

    // Unlocking the middle splits the lock in two.
    fcntl_lock(da, libc::F_SETLK, libc::F_UNLCK, 40, 20).unwrap();
    fcntl_lock(db, libc::F_SETLK, libc::F_WRLCK, 45, 10).unwrap();
    assert_eq!(fcntl_lock(db, libc::F_SETLK, libc::F_RDLCK, 10, 5), Err(libc::EAGAIN));
    assert_eq!(getlk(db, libc::F_WRLCK, 0, 0).map(|h| (h.1, h.2)), Some((0, 40)));

    // Shared locks share; a writer is kept out of them.
    fcntl_lock(da, libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();
    fcntl_lock(db, libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();
    fcntl_lock(da, libc::F_SETLK, libc::F_RDLCK, 0, 0).unwrap();
    fcntl_lock(db, libc::F_SETLK, libc::F_RDLCK, 0, 0).unwrap();
    assert_eq!(fcntl_lock(db, libc::F_SETLK, libc::F_WRLCK, 0, 0), Err(libc::EAGAIN));

    // What was written under a lock is there for the next holder, before any close.
    fcntl_lock(db, libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();
    fcntl_lock(da, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    (&fa).write_all(&[7u8; 6000]).unwrap();
    fcntl_lock(da, libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();
    fcntl_lock(db, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    let mut seen = Vec::new();
    File::open(b.join("db")).unwrap().read_to_end(&mut seen).unwrap();
    assert!(seen == [7u8; 6000], "the next holder read {} bytes, not the 6000 written under the lock", seen.len());

    // Closing any descriptor of the file gives back the process's locks.
    let other = open_rw(&b.join("db"));
    drop(other);
    fcntl_lock(da, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    assert_eq!(getlk(db, libc::F_WRLCK, 0, 0).map(|h| h.0), Some(libc::F_WRLCK));
}

#[test]
fn flock_holds_per_open_file_across_mounts_and_goes_with_the_last_close() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    fs::write(a.join("f"), b"x").unwrap();
    let first = File::open(a.join("f")).unwrap();
    let second = File::open(a.join("f")).unwrap();
    let remote = File::open(b.join("f")).unwrap();

    flock(first.as_raw_fd(), libc::LOCK_EX).unwrap();
    assert_eq!(flock(remote.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB), Err(libc::EWOULDBLOCK));
    assert_eq!(flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), Err(libc::EWOULDBLOCK), "another open file of this process");
    let dup = first.try_clone().unwrap();
    drop(first);
    assert_eq!(flock(remote.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB), Err(libc::EWOULDBLOCK), "a duplicate still holds it");
    drop(dup);
    // The kernel gives a flock back with FUSE's release of the open file, which it sends
    // after close(2) returns: another mount sees it free a moment later.
    let shared = || flock(remote.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB).is_ok();
    assert!(eventually(Duration::from_secs(5), shared), "the last close must give the flock back");
    flock(second.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB).unwrap();
    assert_eq!(flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), Err(libc::EWOULDBLOCK));
    flock(remote.as_raw_fd(), libc::LOCK_UN).unwrap();
    flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB).unwrap();
}

#[test]
fn flock_and_fcntl_locks_of_one_file_never_meet() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    fs::write(a.join("f"), b"x").unwrap();
    let (whole, other) = (open_rw(&a.join("f")), open_rw(&a.join("f")));
    let remote = open_rw(&b.join("f"));

    flock(whole.as_raw_fd(), libc::LOCK_EX).unwrap();
    fcntl_lock(remote.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 0).expect("an flock does not stand in a POSIX lock's way");
    assert_eq!(flock(remote.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB), Err(libc::EWOULDBLOCK), "flocks still meet each other");
    assert_eq!(fcntl_lock(other.as_raw_fd(), libc::F_SETLK, libc::F_RDLCK, 0, 0), Err(libc::EAGAIN), "POSIX locks still meet each other");
    assert_eq!(getlk(other.as_raw_fd(), libc::F_WRLCK, 0, 0).map(|h| h.0), Some(libc::F_WRLCK), "F_GETLK reports the POSIX holder");

    drop(whole);
    let free = || flock(remote.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB).is_ok();
    assert!(eventually(Duration::from_secs(5), free), "the flock goes with its last close");
    assert_eq!(fcntl_lock(other.as_raw_fd(), libc::F_SETLK, libc::F_RDLCK, 0, 0), Err(libc::EAGAIN), "the POSIX lock stays");
    // Closing a descriptor drops the process's POSIX locks of that file, not its flocks.
    drop(open_rw(&b.join("f")));
    assert!(getlk(other.as_raw_fd(), libc::F_RDLCK, 0, 0).is_none(), "close gives the POSIX lock back");
    assert_eq!(flock(other.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB), Err(libc::EWOULDBLOCK), "the flock stays");
}

extern "C" fn ignore_signal(_: i32) {}

/// A child process waiting (F_SETLKW) for a write lock on the whole of `fd`; it exits with 0
/// once it has it, or with the errno.
fn wait_for_lock(fd: i32) -> Forked {
    Forked::start(move || match fcntl_lock(fd, libc::F_SETLKW, libc::F_WRLCK, 0, 0) {
        Ok(()) => 0,
        Err(e) => e,
    })
}

#[test]
fn a_blocking_lock_waits_for_its_holder_and_a_signal_or_kill_ends_the_wait() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    fs::write(a.join("f"), b"x").unwrap();
    let held = open_rw(&a.join("f"));
    fcntl_lock(held.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    let waiter_file = open_rw(&b.join("f"));
    let wfd = waiter_file.as_raw_fd();

    // Granted once the holder lets go.
    let mut waiter = wait_for_lock(wfd);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(waiter.try_wait(), None, "the waiter must still wait while the lock is held");
    fcntl_lock(held.as_raw_fd(), libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();
    assert!(eventually(Duration::from_secs(10), || waiter.try_wait().is_some()), "the waiter never got the lock");
    drop(waiter);

    // A caught signal ends the wait with EINTR, as on a local file system.
    fcntl_lock(held.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    let interrupted = Forked::start(|| unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(i32) as usize;
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
        libc::alarm(1);
        match fcntl_lock(wfd, libc::F_SETLKW, libc::F_WRLCK, 0, 0) {
            Err(libc::EINTR) => 0,
            Ok(()) => 1,
            Err(_) => 2,
        }
    });
    assert_eq!(interrupted.wait(), 0, "the wait must end with EINTR");

    // kill -9 ends it too, and the dead waiter holds nothing afterwards.
    let mut killed = wait_for_lock(wfd);
    std::thread::sleep(Duration::from_millis(300));
    assert!(killed.kill9(Duration::from_secs(10)), "a waiter killed with SIGKILL must die");
    fcntl_lock(held.as_raw_fd(), libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();
    fcntl_lock(wfd, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
}

/// Two processes each holding a lock the other waits for: the second wait fails with
/// EDEADLK, as Linux detects it, and the first is granted once the lock it waits for is free.
#[test]
fn a_wait_that_would_never_end_fails_with_edeadlk() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let m = cluster.mount();
    fs::write(m.join("f"), b"xy").unwrap();
    let file = open_rw(&m.join("f"));
    let fd = file.as_raw_fd();
    fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 0, 1).unwrap();
    // The child holds byte 1 and waits for byte 0, which this process holds.
    let mut child = Forked::start(move || {
        if fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 1, 1).is_err() {
            return 100;
        }
        match fcntl_lock(fd, libc::F_SETLKW, libc::F_WRLCK, 0, 1) {
            Ok(()) => 0,
            Err(e) => e,
        }
    });
    assert!(eventually(Duration::from_secs(10), || getlk(fd, libc::F_WRLCK, 1, 1).is_some()), "the child never locked byte 1");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(child.try_wait(), None, "the child must be waiting for byte 0");
    assert_eq!(fcntl_lock(fd, libc::F_SETLKW, libc::F_WRLCK, 1, 1), Err(libc::EDEADLK));
    fcntl_lock(fd, libc::F_SETLK, libc::F_UNLCK, 0, 1).unwrap();
    let mut status = None;
    assert!(eventually(Duration::from_secs(10), || {
        status = child.try_wait();
        status.is_some()
    }));
    assert_eq!(status, Some(0), "the child's wait must end with the lock");
}

/// A one-node cluster whose client sessions end this soon without an extension.
fn with_session_timeout_ms(ms: u64) -> Cluster {
    let spec = Spec { storage_nodes: 1, targets: 1, replicas: 1, chain_mode: false, periodic_meta: false, client_session_timeout_ms: Some(ms) };
    Cluster::start_spec(bin(), spec)
}

#[test]
fn locks_of_a_killed_process_and_of_a_dead_mount_are_released() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = with_session_timeout_ms(3000);
    let (mut a, b) = (cluster.mount(), cluster.mount());
    fs::write(a.join("f"), b"x").unwrap();
    let local = open_rw(&b.join("f"));
    let fd = local.as_raw_fd();

    // A process holding a lock is killed: the kernel closes its files, which gives it back.
    let path = cpath(&a.join("f"));
    let mut ready = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
    let mut holder = Forked::start(|| unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR);
        if fd < 0 || fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 0, 0).is_err() {
            return 1;
        }
        libc::write(ready[1], b"k".as_ptr().cast(), 1);
        loop {
            libc::pause();
        }
    });
    let mut byte = [0u8];
    assert_eq!(unsafe { libc::read(ready[0], byte.as_mut_ptr().cast(), 1) }, 1, "the holder never locked");
    assert_eq!(fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 0, 0), Err(libc::EAGAIN));
    assert!(holder.kill9(Duration::from_secs(10)));
    assert!(eventually(Duration::from_secs(10), || fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 0, 0).is_ok()));
    fcntl_lock(fd, libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();

    // A whole mount dies with a lock held: its session times out and meta drops its locks.
    let on_a = open_rw(&a.join("f"));
    fcntl_lock(on_a.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    assert_eq!(fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 0, 0), Err(libc::EAGAIN));
    a.kill9();
    assert!(
        eventually(Duration::from_secs(30), || fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 0, 0).is_ok()),
        "the dead mount's lock was never released:\n{}",
        cluster.logs()
    );
    drop(on_a);
}

/// A mount cut off from mgmtd for longer than its session timeout may have lost its locks:
/// the files it locked then fail with EIO until closed; other files work on.
#[test]
fn files_locked_before_the_session_lapsed_fail_with_eio() {
    use std::os::unix::fs::FileExt;
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let mut cluster = with_session_timeout_ms(2000);
    let (m, other) = (cluster.mount(), cluster.mount());
    fs::write(m.join("locked"), b"x").unwrap();
    fs::write(m.join("plain"), b"y").unwrap();
    let locked = open_rw(&m.join("locked"));
    fcntl_lock(locked.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    let plain = open_rw(&m.join("plain"));
    locked.write_at(b"under the lock", 0).unwrap();
    locked.sync_all().unwrap();
    cluster.mgmtd.kill9();
    // Until the mount sees the lapse (the session timeout after the last extension), the file
    // works as before; fsync is the probe, so no write lands in between.
    let lost = || locked.sync_all().map_err(|e| e.raw_os_error()) == Err(Some(libc::EIO));
    assert!(eventually(Duration::from_secs(15), lost), "the locked file kept working after the session lapsed:\n{}", cluster.logs());
    assert_eq!(locked.write_at(b"after the lapse", 0).map_err(|e| e.raw_os_error()).unwrap_err(), Some(libc::EIO));
    plain.write_at(b"unlocked", 0).unwrap();
    plain.sync_all().unwrap();
    drop(locked);
    assert_eq!(fs::read(other.join("plain")).unwrap(), b"unlocked");
    assert_eq!(fs::read(other.join("locked")).unwrap(), b"under the lock", "meta has what was synced under the lock");
    assert_eq!(fs::read(m.join("locked")).unwrap(), b"under the lock", "and the mount shows what meta has");
    open_rw(&m.join("locked")).write_at(b"reopened", 0).unwrap();
}
