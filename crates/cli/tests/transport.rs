//! The two ways requests reach the mount, FUSE over io_uring (the default where the kernel
//! has it) and /dev/fuse, serve one file system alike; and requests that wait long (blocked
//! locks, each holding a ring entry until it is granted) never starve the others.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use ember_testkit::{fuse_available, random_bytes, Cluster, Forked, Mount, Slots};

static SLOTS: Slots = Slots::new(2);

const RING_SWITCH: &str = "/sys/module/fuse/parameters/enable_uring";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

/// Whether this kernel has FUSE over io_uring and lets processes set up rings.
fn rings_in_kernel() -> bool {
    let allowed = fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map_or(true, |v| v.trim() == "0");
    Path::new(RING_SWITCH).exists() && allowed
}

fn serves_over_rings(m: &Mount) -> bool {
    m.log().contains("serving FUSE over io_uring")
}

/// Files, a 3 MiB file written and read in pieces larger than one request, names with
/// every operation that carries a name, and extended attributes, made through `from` and
/// checked through `to`.
fn exchange(from: &Mount, to: &Mount, tag: &str) {
    let dir = from.join(tag);
    fs::create_dir(&dir).unwrap();
    let big = random_bytes(tag.len() as u64, 3 << 20);
    fs::write(dir.join("big"), &big).unwrap();
    for i in 0..50 {
        fs::write(dir.join(format!("small-{i}")), format!("{tag} {i}")).unwrap();
    }
    fs::rename(dir.join("small-0"), dir.join("renamed")).unwrap();
    fs::remove_file(dir.join("small-1")).unwrap();
    std::os::unix::fs::symlink("renamed", dir.join("link")).unwrap();
    fs::hard_link(dir.join("small-2"), dir.join("hard")).unwrap();
    fs::create_dir(dir.join("sub")).unwrap();
    fs::remove_dir(dir.join("sub")).unwrap();
    let c = ember_testkit::cpath(&dir.join("big"));
    let set = unsafe { libc::setxattr(c.as_ptr(), c"user.tag".as_ptr(), tag.as_ptr().cast(), tag.len(), 0) };
    assert_eq!(set, 0, "setxattr: errno {}", ember_testkit::errno());

    let seen = to.join(tag);
    let mut f = File::open(seen.join("big")).unwrap();
    let mut back = vec![0u8; big.len()];
    f.read_exact(&mut back).unwrap();
    assert!(back == big, "the 3 MiB file differs through the other transport");
    f.seek(SeekFrom::Start(1_500_000)).unwrap();
    let mut piece = [0u8; 4096];
    f.read_exact(&mut piece).unwrap();
    assert_eq!(&piece[..], &big[1_500_000..1_504_096]);
    let mut names: Vec<String> = fs::read_dir(&seen).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), 52, "{names:?}");
    assert!(names.contains(&"renamed".into()) && !names.contains(&"small-1".into()) && !names.contains(&"sub".into()));
    assert_eq!(fs::read_to_string(seen.join("link")).unwrap(), format!("{tag} 0"));
    assert_eq!(fs::read_to_string(seen.join("hard")).unwrap(), format!("{tag} 2"));
    let c = ember_testkit::cpath(&seen.join("big"));
    let mut value = [0u8; 64];
    let n = unsafe { libc::getxattr(c.as_ptr(), c"user.tag".as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    assert_eq!(usize::try_from(n).ok(), Some(tag.len()), "getxattr: errno {}", ember_testkit::errno());
    assert_eq!(&value[..tag.len()], tag.as_bytes());
    let mut w = OpenOptions::new().write(true).open(seen.join("big")).unwrap();
    w.seek(SeekFrom::Start(10)).unwrap();
    w.write_all(b"overwritten").unwrap();
    drop(w);
    assert_eq!(&fs::read(dir.join("big")).unwrap()[10..21], b"overwritten");
}

#[test]
fn a_ring_mount_and_a_dev_fuse_mount_serve_one_file_system_alike() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let ring = cluster.mount();
    let classic = cluster.mount_with(&["--no-io-uring"]);
    assert!(!serves_over_rings(&classic), "--no-io-uring must keep the mount on /dev/fuse:\n{}", classic.log());
    if rings_in_kernel() {
        assert!(serves_over_rings(&ring), "this kernel has FUSE over io_uring, the mount must use it:\n{}", ring.log());
    }
    exchange(&ring, &classic, "from-ring");
    exchange(&classic, &ring, "from-classic");
}

fn flock(fd: i32, op: i32) -> i32 {
    if unsafe { libc::flock(fd, op) } == 0 {
        0
    } else {
        ember_testkit::errno()
    }
}

#[test]
fn many_blocked_lock_requests_leave_the_mount_serving_and_all_get_their_turn() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let m = cluster.mount();
    fs::write(m.join("lock"), b"").unwrap();
    let holder = File::open(m.join("lock")).unwrap();
    assert_eq!(flock(holder.as_raw_fd(), libc::LOCK_EX), 0);

    // More waiters than the mount has threads per CPU: each blocked request holds its ring
    // entry until granted. Every waiter has its own open file, so its own flock.
    let files: Vec<File> = (0..24).map(|_| File::open(m.join("lock")).unwrap()).collect();
    let mut waiters: Vec<Forked> = files
        .iter()
        .map(|f| {
            let fd = f.as_raw_fd();
            Forked::start(move || match flock(fd, libc::LOCK_EX) {
                0 => flock(fd, libc::LOCK_UN),
                e => e,
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(waiters.iter_mut().all(|w| w.try_wait().is_none()), "a waiter got the lock while it was held");

    let started = Instant::now();
    for i in 0..20 {
        fs::write(m.join(&format!("meanwhile-{i}")), b"still served").unwrap();
        assert_eq!(fs::read(m.join(&format!("meanwhile-{i}"))).unwrap(), b"still served");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "requests waited behind blocked locks: {:?}", started.elapsed());

    assert_eq!(flock(holder.as_raw_fd(), libc::LOCK_UN), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for w in &mut waiters {
        let status = loop {
            if let Some(s) = w.try_wait() {
                break s;
            }
            assert!(Instant::now() < deadline, "a waiter never got the lock:\n{}", m.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status, 0, "a waiter failed with errno {status}");
    }
}
