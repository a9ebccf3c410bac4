//! The mount against the kernel's own file system. One random sequence of POSIX calls
//! (namespace changes, modes and owners, truncates, writes, times, FIFOs, xattrs, and calls by
//! another user) runs on a directory of the local disk and on the mount; after every call the
//! two must agree on the call's result or errno and, for every path, on its type, mode, link
//! count, owner, length, whether its mtime and ctime moved, its xattr names and, for a
//! directory, its listing. Issue 6 asks for no failure the local file system does not also
//! have; this is where a difference shows first, with the calls that led to it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ember_testkit::{as_user, cpath, errno, fuse_available, Cluster, Slots, TestRng};

static SLOTS: Slots = Slots::new(2);
const STEPS: usize = 3000;
const USER: u32 = 4243;
const PATHS: [&str; 12] = ["a", "b", "c", "d0", "d1", "d0/a", "d0/b", "d0/e", "d1/a", "d1/d2", "d1/d2/a", "l"];
const MODES: [u32; 8] = [0o644, 0o600, 0o755, 0o777, 0o4755, 0o2775, 0o1777, 0o6711];
const XATTRS: [&str; 2] = ["user.x", "user.y"];

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

#[derive(Clone, Copy, Debug)]
enum Call {
    Create { p: usize, mode: u32, flags: i32 },
    Mkdir { p: usize, mode: u32 },
    Mkfifo { p: usize, mode: u32 },
    Symlink { target: usize, p: usize },
    Rmdir { p: usize },
    Unlink { p: usize },
    Rename { from: usize, to: usize, flags: u32 },
    Link { from: usize, to: usize },
    Chmod { p: usize, mode: u32 },
    Chown { p: usize, uid: u32, gid: u32 },
    Truncate { p: usize, len: i64 },
    Write { p: usize, offset: i64, len: usize, append: bool },
    Utimes { p: usize, how: u8 },
    Open { p: usize, flags: i32 },
    Readlink { p: usize },
    Setxattr { p: usize, name: usize, flags: i32 },
    Getxattr { p: usize, name: usize },
    Removexattr { p: usize, name: usize },
}

fn pick<T: Copy>(rng: &mut TestRng, from: &[T]) -> T {
    from[rng.below(from.len() as u64) as usize]
}

fn random_call(rng: &mut TestRng) -> Call {
    let p = rng.below(PATHS.len() as u64) as usize;
    let q = rng.below(PATHS.len() as u64) as usize;
    let mode = pick(rng, &MODES);
    match rng.below(100) {
        0..=13 => Call::Create { p, mode, flags: pick(rng, &[0, libc::O_EXCL, libc::O_TRUNC, libc::O_EXCL | libc::O_TRUNC]) },
        14..=23 => Call::Mkdir { p, mode },
        24..=25 => Call::Mkfifo { p, mode },
        26..=28 => Call::Symlink { target: q, p },
        29..=33 => Call::Rmdir { p },
        34..=39 => Call::Unlink { p },
        40..=49 => Call::Rename { from: p, to: q, flags: pick(rng, &[0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]) },
        50..=54 => Call::Link { from: p, to: q },
        55..=60 => Call::Chmod { p, mode },
        61..=64 => Call::Chown { p, uid: pick(rng, &[0, USER, u32::MAX]), gid: pick(rng, &[0, USER, u32::MAX]) },
        65..=69 => Call::Truncate { p, len: pick(rng, &[0, 10, 5000, 70_000]) },
        70..=78 => Call::Write { p, offset: pick(rng, &[0, 3, 4096, 65_000]), len: pick(rng, &[1, 100, 5000]), append: rng.below(3) == 0 },
        79..=82 => Call::Utimes { p, how: rng.below(3) as u8 },
        83..=86 => Call::Open { p, flags: pick(rng, &[libc::O_RDONLY, libc::O_RDONLY | libc::O_DIRECTORY, libc::O_WRONLY, libc::O_RDONLY | libc::O_NOFOLLOW]) },
        87..=88 => Call::Readlink { p },
        89..=93 => Call::Setxattr { p, name: rng.below(2) as usize, flags: pick(rng, &[0, libc::XATTR_CREATE, libc::XATTR_REPLACE]) },
        94..=96 => Call::Getxattr { p, name: rng.below(2) as usize },
        _ => Call::Removexattr { p, name: rng.below(2) as usize },
    }
}

/// A call with its paths made C strings before it runs, so a forked child only makes system
/// calls.
struct Prepared {
    call: Call,
    a: CString,
    b: CString,
    target: CString,
    name: CString,
}

fn prepare(root: &Path, call: Call) -> Prepared {
    let path = |i: usize| cpath(&root.join(PATHS[i]));
    let (a, b, target, name) = match call {
        Call::Rename { from, to, .. } | Call::Link { from, to } => (path(from), path(to), CString::default(), CString::default()),
        Call::Symlink { target, p } => (path(p), CString::default(), CString::new(PATHS[target]).unwrap(), CString::default()),
        Call::Setxattr { p, name, .. } | Call::Getxattr { p, name } | Call::Removexattr { p, name } => {
            (path(p), CString::default(), CString::default(), CString::new(XATTRS[name]).unwrap())
        }
        Call::Create { p, .. }
        | Call::Mkdir { p, .. }
        | Call::Mkfifo { p, .. }
        | Call::Rmdir { p }
        | Call::Unlink { p }
        | Call::Chmod { p, .. }
        | Call::Chown { p, .. }
        | Call::Truncate { p, .. }
        | Call::Write { p, .. }
        | Call::Utimes { p, .. }
        | Call::Open { p, .. }
        | Call::Readlink { p } => (path(p), CString::default(), CString::default(), CString::default()),
    };
    Prepared { call, a, b, target, name }
}

/// Runs the call: 0 or the errno, and the bytes it read (readlink, getxattr) into `out`.
/// Every open is non-blocking: opening a FIFO for writing would wait for a reader.
fn execute(c: &Prepared, out: &mut [u8; 256]) -> (i32, usize) {
    let fail = |r: i64| if r < 0 { errno() } else { 0 };
    // SAFETY: system calls on NUL-terminated paths and buffers that outlive them.
    unsafe {
        match c.call {
            Call::Create { mode, flags, .. } => {
                let fd = libc::open(c.a.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_NONBLOCK | flags, mode);
                (close(fd), 0)
            }
            Call::Mkdir { mode, .. } => (fail(libc::mkdir(c.a.as_ptr(), mode).into()), 0),
            Call::Mkfifo { mode, .. } => (fail(libc::mknod(c.a.as_ptr(), libc::S_IFIFO | mode, 0).into()), 0),
            Call::Symlink { .. } => (fail(libc::symlink(c.target.as_ptr(), c.a.as_ptr()).into()), 0),
            Call::Rmdir { .. } => (fail(libc::rmdir(c.a.as_ptr()).into()), 0),
            Call::Unlink { .. } => (fail(libc::unlink(c.a.as_ptr()).into()), 0),
            Call::Rename { flags, .. } => {
                let r = libc::renameat2(libc::AT_FDCWD, c.a.as_ptr(), libc::AT_FDCWD, c.b.as_ptr(), flags);
                (fail(r.into()), 0)
            }
            Call::Link { .. } => (fail(libc::link(c.a.as_ptr(), c.b.as_ptr()).into()), 0),
            Call::Chmod { mode, .. } => (fail(libc::chmod(c.a.as_ptr(), mode).into()), 0),
            Call::Chown { uid, gid, .. } => (fail(libc::lchown(c.a.as_ptr(), uid, gid).into()), 0),
            Call::Truncate { len, .. } => (fail(libc::truncate(c.a.as_ptr(), len).into()), 0),
            Call::Write { offset, len, append, .. } => {
                let flags = libc::O_WRONLY | libc::O_NONBLOCK | if append { libc::O_APPEND } else { 0 };
                let fd = libc::open(c.a.as_ptr(), flags);
                if fd < 0 {
                    return (errno(), 0);
                }
                let data = [b'w'; 5000];
                let n = libc::pwrite(fd, data.as_ptr().cast(), len, offset);
                let e = fail(n as i64);
                let closed = close(fd);
                (if e != 0 { e } else { closed }, 0)
            }
            Call::Utimes { how, .. } => {
                let t = |sec, nsec| libc::timespec { tv_sec: sec, tv_nsec: nsec };
                let times = match how {
                    0 => [t(0, libc::UTIME_NOW), t(0, libc::UTIME_NOW)],
                    1 => [t(0, libc::UTIME_OMIT), t(1_000_000, 123_456_789)],
                    _ => [t(2_000_000, 5), t(0, libc::UTIME_OMIT)],
                };
                let r = libc::utimensat(libc::AT_FDCWD, c.a.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW);
                (fail(r.into()), 0)
            }
            Call::Open { flags, .. } => (close(libc::open(c.a.as_ptr(), flags | libc::O_NONBLOCK)), 0),
            Call::Readlink { .. } => {
                let n = libc::readlink(c.a.as_ptr(), out.as_mut_ptr().cast(), out.len());
                (fail(n as i64), n.max(0) as usize)
            }
            Call::Setxattr { flags, .. } => {
                let v = b"value";
                let r = libc::lsetxattr(c.a.as_ptr(), c.name.as_ptr(), v.as_ptr().cast(), v.len(), flags);
                (fail(r.into()), 0)
            }
            Call::Getxattr { .. } => {
                let n = libc::lgetxattr(c.a.as_ptr(), c.name.as_ptr(), out.as_mut_ptr().cast(), out.len());
                (fail(n as i64), n.max(0) as usize)
            }
            Call::Removexattr { .. } => (fail(libc::lremovexattr(c.a.as_ptr(), c.name.as_ptr()).into()), 0),
        }
    }
}

/// Closes `fd` from an open; 0, or the errno of the open or of the close.
fn close(fd: i32) -> i32 {
    if fd < 0 {
        return errno();
    }
    // SAFETY: closing a descriptor this call opened.
    if unsafe { libc::close(fd) } != 0 {
        errno()
    } else {
        0
    }
}

/// Which calls another user makes too: the ones whose permission checks differ by caller.
fn by_user(rng: &mut TestRng, call: Call) -> bool {
    matches!(
        call,
        Call::Create { .. }
            | Call::Mkdir { .. }
            | Call::Unlink { .. }
            | Call::Rmdir { .. }
            | Call::Rename { .. }
            | Call::Write { .. }
            | Call::Truncate { .. }
            | Call::Chmod { .. }
            | Call::Utimes { .. }
            | Call::Open { .. }
            | Call::Setxattr { .. }
    ) && rng.below(4) == 0
}

/// A call's outcome: 0 or an errno, and what it read.
type Outcome = (i32, Vec<u8>);

fn run(root: &Path, call: Call, user: bool) -> Outcome {
    let c = prepare(root, call);
    if user {
        return (as_user(USER, || execute(&c, &mut [0; 256]).0), Vec::new());
    }
    let mut out = [0u8; 256];
    let (e, n) = execute(&c, &mut out);
    (e, out[..n].to_vec())
}

/// What is compared of one path: everything but inode numbers, block counts, directory sizes
/// and time values (whether mtime and ctime moved is compared).
#[derive(Debug, PartialEq, Eq)]
struct Node {
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    xattrs: Vec<String>,
    listing: Option<Vec<String>>,
}

type Times = (i64, i64, i64, i64);

fn node(path: &Path) -> Result<(Node, Times), i32> {
    let m = std::fs::symlink_metadata(path).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let is_dir = m.file_type().is_dir();
    let listing = is_dir.then(|| {
        let mut names: Vec<String> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    });
    let mut xattrs: Vec<String> = match xattr_names(path) {
        Ok(names) => names.into_iter().filter(|n| n.starts_with("user.")).collect(),
        Err(e) => vec![format!("listxattr errno {e}")],
    };
    xattrs.sort();
    let n = Node { mode: m.mode(), nlink: m.nlink(), uid: m.uid(), gid: m.gid(), size: (!is_dir).then_some(m.size()), xattrs, listing };
    Ok((n, (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())))
}

fn xattr_names(path: &Path) -> Result<Vec<String>, i32> {
    let p = cpath(path);
    let mut buf = vec![0u8; 4096];
    // SAFETY: llistxattr into a buffer of the given length.
    let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(errno());
    }
    Ok(buf[..n as usize].split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

/// Every path's node, and which paths' mtime and ctime moved since `before`.
type Snapshot = BTreeMap<&'static str, Result<(Node, Times), i32>>;

fn snapshot(root: &Path) -> Snapshot {
    PATHS.iter().map(|&p| (p, node(&root.join(p)))).collect()
}

/// What is compared of one path after a call: its node (or errno), and (mtime moved, ctime
/// moved).
type Seen<'a> = (Result<&'a Node, i32>, (bool, bool));

/// The comparable view of a snapshot taken after `before`.
fn view<'a>(now: &'a Snapshot, before: &Snapshot) -> BTreeMap<&'static str, Seen<'a>> {
    now.iter()
        .map(|(&p, r)| {
            let moved = match (r, &before[p]) {
                (Ok((_, t)), Ok((_, b))) => ((t.0, t.1) != (b.0, b.1), (t.2, t.3) != (b.2, b.3)),
                _ => (false, false),
            };
            (p, (r.as_ref().map(|(n, _)| n).map_err(|e| *e), moved))
        })
        .collect()
}

/// The directory on the local disk the calls also run in; removed when the test ends, passed
/// or failed.
struct LocalRoot(PathBuf);

impl LocalRoot {
    fn new() -> LocalRoot {
        let base = std::env::var_os("EMBER_LOCAL_FS_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let dir = base.join(format!("ember-posix-vs-local-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        LocalRoot(dir)
    }
}

impl Drop for LocalRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(root: &Path) {
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
}

#[test]
fn a_random_sequence_of_posix_calls_agrees_with_the_local_file_system() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let local_root = LocalRoot::new();
    let (local, ours) = (local_root.0.clone(), mount.join(""));
    setup(&local);
    setup(&ours);
    // SAFETY: umask(2) cannot fail; both trees see the same one.
    unsafe { libc::umask(0o022) };
    // The suite's seed is fixed; EMBER_POSIX_SEED runs another sequence, to look further.
    let seed = std::env::var("EMBER_POSIX_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6_0051);
    let mut rng = TestRng::new(seed);
    let (mut before_local, mut before_ours) = (snapshot(&local), snapshot(&ours));
    let mut history: Vec<String> = Vec::new();
    for step in 0..STEPS {
        let call = random_call(&mut rng);
        let user = by_user(&mut rng, call);
        history.push(format!("{step}: {}{call:?}", if user { "as user: " } else { "" }));
        let (want, got) = (run(&local, call, user), run(&ours, call, user));
        let recent = || history[history.len().saturating_sub(12)..].join("\n  ");
        assert_eq!(got, want, "step {step}: the call's result differs (mount, local); calls:\n  {}", recent());
        let (now_local, now_ours) = (snapshot(&local), snapshot(&ours));
        let (want, got) = (view(&now_local, &before_local), view(&now_ours, &before_ours));
        for p in PATHS {
            assert_eq!(got[p], want[p], "step {step}: {p} differs (mount, local); calls:\n  {}", recent());
        }
        (before_local, before_ours) = (now_local, now_ours);
    }
}
