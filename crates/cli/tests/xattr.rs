//! Extended attributes through the real mount, the per-directory inline limit they carry, and
//! the space small files take with it.

use std::ffi::CString;
use std::fs;
use std::path::Path;
use std::time::Duration;

use ember_testkit::{as_user, cpath, errno, fuse_available, random_bytes, storage_role, Cluster, Slots};

static SLOTS: Slots = Slots::new(2);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

fn c(s: impl AsRef<[u8]>) -> CString {
    CString::new(s.as_ref()).unwrap()
}

/// setxattr(2): Ok or the errno.
fn set(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (p, n) = (cpath(p), c(name));
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// getxattr(2) with a buffer of `size` bytes (0 asks for the length): the bytes or the errno.
fn get_sized(p: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(p), c(name));
    let mut buf = vec![0u8; size];
    // SAFETY: as above; the buffer holds `size` bytes.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(if size == 0 { 0 } else { r as usize });
    if size == 0 {
        buf = vec![0; r as usize];
    }
    Ok(buf)
}

fn get(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    get_sized(p, name, 65536)
}

fn list(p: &Path) -> Vec<String> {
    let p = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: as above.
    let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: errno {}", errno());
    buf[..r as usize].split(|b| *b == 0).filter(|n| !n.is_empty()).map(|n| String::from_utf8(n.to_vec()).unwrap()).collect()
}

fn remove(p: &Path, name: &str) -> Result<(), i32> {
    let (p, n) = (cpath(p), c(name));
    // SAFETY: as above.
    let r = unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// Runs setxattr as another user; returns 0 or the errno.
fn set_as(uid: u32, p: &Path, name: &str, value: &[u8]) -> i32 {
    let (p, n) = (cpath(p), c(name));
    as_user(uid, || {
        // SAFETY: a valid path, name and buffer, made before the fork.
        let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if r == 0 { 0 } else { errno() }
    })
}

#[test]
fn xattrs_behave_as_on_a_local_file_system() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    let f = a.join("f");
    fs::write(&f, b"data").unwrap();

    assert_eq!(get(&f, "user.k"), Err(libc::ENODATA));
    set(&f, "user.k", b"value", 0).unwrap();
    assert_eq!(get(&f, "user.k").unwrap(), b"value", "this mount's own set shows at once");
    assert_eq!(get_sized(&f, "user.k", 0).unwrap().len(), 5, "size 0 asks for the length");
    assert_eq!(get_sized(&f, "user.k", 2), Err(libc::ERANGE));
    assert_eq!(set(&f, "user.k", b"x", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(set(&f, "user.none", b"x", libc::XATTR_REPLACE), Err(libc::ENODATA));
    set(&f, "trusted.t", b"root only", 0).unwrap();
    set(&f, "security.s", &[0, 1, 2], 0).unwrap();
    assert_eq!(list(&f), ["security.s", "trusted.t", "user.k"]);
    assert_eq!(get(&b.join("f"), "user.k").unwrap(), b"value", "another mount sees it");

    assert_eq!(set(&f, "system.posix_acl_access", b"\x02\0\0\0", 0), Ok(()), "an empty ACL is none, as on ext4");
    assert_eq!(set(&f, "system.other", b"x", 0), Err(libc::EOPNOTSUPP));
    assert_eq!(set(&f, "bogus.name", b"x", 0), Err(libc::EOPNOTSUPP));
    assert_eq!(set(&f, "user.big", &vec![7; 65537], 0), Err(libc::E2BIG));
    set(&f, "user.big", &vec![7; 65536], 0).unwrap();
    assert_eq!(get(&b.join("f"), "user.big").unwrap().len(), 65536);

    // The kernel checks the caller: user.* needs write permission, trusted.* CAP_SYS_ADMIN.
    assert_eq!(set_as(4321, &f, "user.k", b"intruder"), libc::EACCES);
    assert_eq!(set_as(4321, &f, "trusted.t", b"intruder"), libc::EPERM);
    fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    assert_eq!(set_as(4321, &f, "user.k", b"allowed"), 0);
    assert_eq!(get(&f, "user.k").unwrap(), b"allowed");

    remove(&f, "user.k").unwrap();
    assert_eq!(remove(&f, "user.k"), Err(libc::ENODATA));
    assert_eq!(get(&f, "user.k"), Err(libc::ENODATA));
    // Another mount may remember the attribute for its cache time, not longer.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&b.join("f"), "user.k"), Err(libc::ENODATA));

    // Writes still work (the kernel asks for security.capability before each one).
    fs::write(&f, random_bytes(1, 100_000)).unwrap();
    assert!(fs::read(&f).unwrap() == random_bytes(1, 100_000));
    // The kernel's probe before each write is answered by the mount, not by meta.
    let probes = || cluster.meta_metric("ember_rpc_seconds_count{method=\"meta.get_xattr\"}");
    let before = probes();
    for i in 0..20 {
        fs::write(a.join(&format!("w{i}")), random_bytes(i, 5000)).unwrap();
    }
    assert_eq!(probes(), before, "writes sent capability probes to meta");
    let d = a.join("dir");
    fs::create_dir(&d).unwrap();
    set(&d, "user.on_dir", b"1", 0).unwrap();
    fs::remove_dir(&d).unwrap();
    assert_eq!(list(&f), ["security.s", "trusted.t", "user.big"]);
}

/// Bytes allocated on disk under `dir`, as du counts them.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { allocated(&entry.path()) } else { meta.blocks() * 512 };
    }
    total
}

#[test]
fn a_directory_inline_limit_keeps_its_small_files_out_of_storage() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let d = mount.join("small");
    fs::create_dir(&d).unwrap();
    assert_eq!(set(&d, "ember.dir.inline_max", b"65537", 0), Err(libc::EINVAL));
    set(&d, "ember.dir.inline_max", b"16384", 0).unwrap();
    assert_eq!(get(&d, "ember.dir.inline_max").unwrap(), b"16384");
    assert!(list(&d).is_empty(), "the setting is not a stored attribute");
    fs::create_dir(d.join("sub")).unwrap();

    fs::write(mount.join("warm"), random_bytes(1, 100_000)).unwrap();
    let before = cluster.storage_writes();
    for (i, dir) in [&d, &d.join("sub")].into_iter().enumerate() {
        fs::write(dir.join("f"), random_bytes(i as u64, 16384)).unwrap();
    }
    assert_eq!(cluster.storage_writes(), before, "files within the directory's limit went to storage");
    fs::write(d.join("big"), random_bytes(3, 16385)).unwrap();
    assert!(cluster.storage_writes() > before, "a file past the limit must move to chunks");
    for (i, dir) in [&d, &d.join("sub")].into_iter().enumerate() {
        assert!(fs::read(dir.join("f")).unwrap() == random_bytes(i as u64, 16384));
    }
    assert!(fs::read(d.join("big")).unwrap() == random_bytes(3, 16385));
}

/// Issue 5's space target: 10,000 files of 5 KiB take at most 1.5x their size on the storage
/// targets and in the KV together, when their directory keeps them inline.
#[test]
fn ten_thousand_small_files_take_at_most_one_and_a_half_times_their_size() {
    if !fuse_available() {
        return;
    }
    const FILES: usize = 10_000;
    const SIZE: usize = 5 << 10;
    let _slot = SLOTS.acquire();
    let mut cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let d = mount.join("small");
    fs::create_dir(&d).unwrap();
    set(&d, "ember.dir.inline_max", b"8192", 0).unwrap();
    let data_dirs = [cluster.dir.path().join("meta"), cluster.dir.path().join(storage_role(0))];
    let used = |dirs: &[std::path::PathBuf]| dirs.iter().map(|p| allocated(p)).sum::<u64>();
    let empty = used(&data_dirs);
    for i in 0..FILES {
        fs::write(d.join(format!("f{i:05}")), random_bytes(i as u64, SIZE)).unwrap();
    }
    // A clean restart of meta: the KV's journal is flushed to its tables then.
    cluster.meta.terminate();
    cluster.restart_meta();
    let logical = (FILES * SIZE) as u64;
    let grown = used(&data_dirs).saturating_sub(empty);
    let ratio = grown as f64 / logical as f64;
    eprintln!("{FILES} files of {SIZE} B: {grown} B allocated on the targets and in the KV, {ratio:.2}x");
    assert!(ratio <= 1.5, "{FILES} files of {SIZE} B took {grown} B ({ratio:.2}x their size)");
    for i in (0..FILES).step_by(997) {
        assert!(fs::read(d.join(format!("f{i:05}"))).unwrap() == random_bytes(i as u64, SIZE));
    }
}
