//! POSIX behaviour through a real kernel mount of a real cluster (mgmtd, meta and storage
//! as separate processes on loopback).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ember_testkit::{as_user, cpath, errno, fuse_available, random_bytes, Cluster, Slots, TestRng};
use sha2::{Digest, Sha256};

static SLOTS: Slots = Slots::new(2);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

#[test]
fn large_file_round_trips_with_the_same_sha256() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 2);
    let mount = cluster.mount();
    let data = random_bytes(0x5eed, 64 << 20);
    let path = mount.join("big.bin");
    {
        let mut f = fs::File::create(&path).unwrap();
        for piece in data.chunks(1 << 20) {
            f.write_all(piece).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(fs::metadata(&path).unwrap().len(), data.len() as u64);
    let back = fs::read(&path).unwrap();
    assert_eq!(sha256(&back), sha256(&data), "{}", cluster.logs());

    // A random read in the middle sees the same bytes.
    let mut f = fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 100_000];
    f.seek(SeekFrom::Start(33_333_333)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &data[33_333_333..33_433_333]);
}

#[test]
fn ten_thousand_small_files_create_stat_read_unlink() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let dir = mount.join("small");
    fs::create_dir(&dir).unwrap();
    let content = |i: usize| format!("file number {i}\n").repeat(1 + i % 7);
    for i in 0..10_000 {
        fs::write(dir.join(format!("f{i:05}")), content(i)).unwrap();
    }
    for i in 0..10_000 {
        let p = dir.join(format!("f{i:05}"));
        assert_eq!(fs::metadata(&p).unwrap().len(), content(i).len() as u64, "stat {i}");
        assert_eq!(fs::read_to_string(&p).unwrap(), content(i), "read {i}");
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 10_000);
    for i in 0..10_000 {
        fs::remove_file(dir.join(format!("f{i:05}"))).unwrap();
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    fs::remove_dir(&dir).unwrap();
}

#[test]
fn namespace_operations() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let root = &mount.path;

    // mkdir -p of a 20-level tree.
    let mut deep = root.join("deep");
    for level in 0..20 {
        deep = deep.join(format!("level{level}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), b"leaf").unwrap();
    assert_eq!(fs::read(deep.join("leaf")).unwrap(), b"leaf");

    // Renames of files and directories across directories.
    fs::create_dir_all(root.join("a/sub")).unwrap();
    fs::create_dir(root.join("b")).unwrap();
    fs::write(root.join("a/file"), b"moved").unwrap();
    fs::rename(root.join("a/file"), root.join("b/file2")).unwrap();
    assert!(!root.join("a/file").exists());
    assert_eq!(fs::read(root.join("b/file2")).unwrap(), b"moved");
    fs::rename(root.join("a/sub"), root.join("b/sub")).unwrap();
    assert!(root.join("b/sub").is_dir());
    assert_eq!(fs::metadata(root.join("b")).unwrap().nlink(), 3, "b holds one subdirectory");
    assert_eq!(fs::metadata(root.join("a")).unwrap().nlink(), 2, "a lost its subdirectory");

    // A directory cannot move into its own subtree.
    let err = fs::rename(root.join("deep"), deep.join("inside")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let err = fs::rename(root.join("b"), root.join("b/sub/b")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));

    // Removing a non-empty directory fails; unlinking a directory fails.
    assert_eq!(fs::remove_dir(root.join("b")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    assert!(fs::remove_file(root.join("b/sub")).is_err());

    // Hard links and symlinks.
    fs::write(root.join("orig"), b"linked").unwrap();
    fs::hard_link(root.join("orig"), root.join("b/hard")).unwrap();
    assert_eq!(fs::metadata(root.join("orig")).unwrap().nlink(), 2);
    assert_eq!(fs::read(root.join("b/hard")).unwrap(), b"linked");
    fs::remove_file(root.join("orig")).unwrap();
    assert_eq!(fs::metadata(root.join("b/hard")).unwrap().nlink(), 1);
    std::os::unix::fs::symlink("b/hard", root.join("sym")).unwrap();
    assert_eq!(fs::read_link(root.join("sym")).unwrap(), Path::new("b/hard"));
    assert_eq!(fs::read(root.join("sym")).unwrap(), b"linked");
    assert!(fs::symlink_metadata(root.join("sym")).unwrap().file_type().is_symlink());
}

#[test]
fn truncate_and_attributes() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let p = mount.join("t");
    let data = random_bytes(7, 3 << 20);
    fs::write(&p, &data).unwrap();

    // Down into the middle of a chunk, then up past the old end: the gap reads as zeros.
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(1_500_000).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 1_500_000);
    f.set_len(4 << 20).unwrap();
    drop(f);
    let back = fs::read(&p).unwrap();
    assert_eq!(back.len(), 4 << 20);
    assert_eq!(&back[..1_500_000], &data[..1_500_000]);
    assert!(back[1_500_000..].iter().all(|b| *b == 0), "bytes after the cut are not zero");

    // chmod, chown, utimes.
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
    let m = fs::metadata(&p).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(m.mtime(), 1_000_000_000);
}

#[test]
fn large_directory_lists_every_name_once() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let dir = mount.join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..5_000 {
        fs::File::create(dir.join(format!("entry-{i}"))).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 5_000);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 5_000, "a name was listed twice");
    assert!(names.contains(&"entry-4999".to_string()));
}

/// Eight writers on two mounts create and unlink in one directory at once: every create and
/// unlink succeeds and the directory ends with exactly the surviving names and the right
/// link count (parent updates are commutative, so the writers do not conflict).
#[test]
fn a_hot_directory_takes_creates_and_unlinks_from_eight_writers() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mounts = [cluster.mount(), cluster.mount()];
    fs::create_dir(mounts[0].join("hot")).unwrap();
    const FILES: usize = 2000;
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let dir = mounts[w % 2].join("hot");
            std::thread::spawn(move || {
                fs::create_dir(dir.join(format!("sub{w}"))).unwrap();
                for i in 0..FILES {
                    fs::write(dir.join(format!("w{w}-{i}")), format!("{w}/{i}")).unwrap();
                    if i % 2 == 1 {
                        fs::remove_file(dir.join(format!("w{w}-{}", i - 1))).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let mut want: Vec<String> = (0..8).flat_map(|w| (1..FILES).step_by(2).map(move |i| format!("w{w}-{i}"))).collect();
    want.extend((0..8).map(|w| format!("sub{w}")));
    want.sort();
    for m in &mounts {
        let dir = m.join("hot");
        let mut names: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names.len(), want.len(), "entries listed");
        assert!(names == want, "the listing differs from the surviving names");
        assert_eq!(fs::metadata(&dir).unwrap().nlink(), 2 + 8, "link count of the directory");
        assert_eq!(fs::read_to_string(dir.join("w7-1999")).unwrap(), "7/1999");
    }
}

/// Random overlapping writes to one open file (gathered by the client and sent together), with
/// reads in between, match an in-memory model before and after a remount.
#[test]
fn random_writes_in_one_open_file_match_a_model() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 2);
    let mount = cluster.mount();
    let path = mount.join("random");
    let mut model = random_bytes(1, 3 << 20);
    fs::write(&path, &model).unwrap();
    let mut f = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut rng = TestRng::new(0x9e37_79b9_7f4a_7c15);
    let mut next = move |n: u64| rng.below(n);
    for step in 0..2000u64 {
        let len = 1 + next(8192) as usize;
        let offset = next((model.len() + 4096 - len) as u64) as usize;
        let data = random_bytes(step + 10, len);
        f.seek(SeekFrom::Start(offset as u64)).unwrap();
        f.write_all(&data).unwrap();
        if model.len() < offset + len {
            model.resize(offset + len, 0);
        }
        model[offset..offset + len].copy_from_slice(&data);
        if step % 500 == 499 {
            let mut back = vec![0u8; 64 << 10];
            let at = next((model.len() - back.len()) as u64) as usize;
            f.seek(SeekFrom::Start(at as u64)).unwrap();
            f.read_exact(&mut back).unwrap();
            assert!(back == model[at..at + back.len()], "read at {at} after step {step}");
        }
    }
    f.sync_all().unwrap();
    drop(f);
    let fresh = cluster.mount();
    let back = fs::read(fresh.join("random")).unwrap();
    assert_eq!(back.len(), model.len());
    assert!(sha256(&back) == sha256(&model), "contents differ from the model");
}

/// A missing name is remembered by the kernel for the entry TTL (1 s), so probing it again
/// costs no request; this mount's own create shows at once, another mount's after the TTL.
#[test]
fn missing_names_are_cached_for_the_entry_ttl_and_creates_show_through() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    let misses = || cluster.meta_metric("ember_rpc_requests_total{method=\"meta.lookup\",status=\"NotFound\"}");
    let before = misses();
    for _ in 0..100 {
        assert!(fs::metadata(a.join("absent")).is_err());
    }
    let asked = misses() - before;
    assert!((1..=3).contains(&asked), "{asked} lookups of one missing name");

    fs::write(a.join("absent"), b"now here").unwrap();
    assert_eq!(fs::read(a.join("absent")).unwrap(), b"now here");

    assert!(fs::metadata(b.join("late")).is_err());
    fs::write(a.join("late"), b"x").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(fs::read(b.join("late")).unwrap(), b"x");
}

/// A directory this mount made answers lookups of missing names and its own attributes
/// without meta, for as long as nobody else changes it; this mount's own changes show at once,
/// another mount's within the TTL.
#[test]
fn a_directory_this_mount_made_answers_for_itself_until_another_mount_changes_it() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    let asked = |method: &str| {
        ["Ok", "NotFound"].iter().map(|st| cluster.meta_metric(&format!("ember_rpc_requests_total{{method=\"meta.{method}\",status=\"{st}\"}}"))).sum::<u64>()
    };
    let d = a.join("d");
    fs::create_dir(&d).unwrap();
    let (lookups, getattrs) = (asked("lookup"), asked("getattr"));
    let started = std::time::Instant::now();
    for i in 0..100 {
        fs::write(d.join(format!("f{i}")), b"x").unwrap();
    }
    fs::create_dir(d.join("sub")).unwrap();
    if started.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(asked("lookup") - lookups, 0, "creates in a directory this mount made asked meta for lookups");
        assert!(asked("getattr") - getattrs <= 2, "{} getattrs for 100 creates", asked("getattr") - getattrs);
    }
    let m = fs::metadata(&d).unwrap();
    assert_eq!(m.nlink(), 3, "nlink after this mount's mkdir");
    fs::remove_file(d.join("f0")).unwrap();
    assert!(fs::metadata(d.join("f0")).is_err());
    fs::rename(d.join("f1"), d.join("g1")).unwrap();
    assert!(fs::metadata(d.join("f1")).is_err());
    assert_eq!(fs::read(d.join("g1")).unwrap(), b"x");
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(d.join("f0"), b"again").unwrap();
    assert_eq!(fs::read(d.join("f0")).unwrap(), b"again");
    let after = fs::metadata(&d).unwrap();
    assert!(after.mtime_nsec() != m.mtime_nsec() || after.mtime() != m.mtime(), "directory mtime unchanged by this mount's create");

    // Another mount's changes: seen within the TTL (1 s), even while this mount keeps working
    // in the directory.
    fs::write(b.join("d/late"), b"from b").unwrap();
    fs::set_permissions(b.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        fs::write(d.join("busy"), b"").unwrap();
        let seen = fs::read(d.join("late")).ok();
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        if seen.as_deref() == Some(&b"from b"[..]) && mode == 0o700 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "another mount's create and chmod not seen after 3 s: {seen:?}, {mode:o}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Drops the kernel's unused dentries and inodes (of every file system), so that the next
/// stat of a path is a lookup of the mount.
fn drop_kernel_dentries() {
    fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
}

/// Stats of a directory's files in a row are answered from entries read ahead with their
/// attributes (statahead): a few lookups reach meta, not one per file. The mount's own
/// changes show at once, another mount's within the TTL.
#[test]
fn stats_of_a_directory_in_a_row_are_read_ahead() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (a, b) = (cluster.mount(), cluster.mount());
    let asked = |method: &str| cluster.meta_metric(&format!("ember_rpc_requests_total{{method=\"meta.{method}\",status=\"Ok\"}}"));
    fs::create_dir(b.join("d")).unwrap();
    for i in 0..300 {
        fs::write(b.join(&format!("d/f{i:03}")), vec![b'x'; i]).unwrap();
    }
    fs::set_permissions(b.join("d/f299"), fs::Permissions::from_mode(0o600)).unwrap();
    let (lookups, pages) = (asked("lookup"), asked("readdir"));
    let started = std::time::Instant::now();
    for i in 0..300 {
        let m = fs::metadata(a.join(&format!("d/f{i:03}"))).unwrap();
        assert_eq!(m.len(), i as u64, "size of f{i:03}");
        assert_eq!(m.nlink(), 1);
    }
    assert_eq!(fs::metadata(a.join("d/f299")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(asked("readdir") > pages, "no page was read ahead");
    if started.elapsed() < std::time::Duration::from_millis(800) {
        let n = asked("lookup") - lookups;
        assert!(n <= 100, "{n} lookups reached meta for 300 stats in a row");
    }

    // This mount's own changes, seen by a lookup that the entries read ahead could answer.
    fs::set_permissions(a.join("d/f100"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::hard_link(a.join("d/f101"), a.join("link101")).unwrap();
    fs::OpenOptions::new().append(true).open(a.join("d/f102")).unwrap().write_all(b"more").unwrap();
    drop_kernel_dentries();
    assert_eq!(fs::metadata(a.join("d/f100")).unwrap().permissions().mode() & 0o777, 0o640);
    assert_eq!(fs::metadata(a.join("d/f101")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(a.join("d/f102")).unwrap().len(), 102 + 4);
    fs::remove_file(a.join("link101")).unwrap();
    drop_kernel_dentries();
    assert_eq!(fs::metadata(a.join("d/f101")).unwrap().nlink(), 1);

    // Another mount's change: within the TTL (1 s), while this mount keeps statting.
    fs::set_permissions(b.join("d/f200"), fs::Permissions::from_mode(0o604)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        for i in 190..210 {
            fs::metadata(a.join(&format!("d/f{i:03}"))).unwrap();
        }
        if fs::metadata(a.join("d/f200")).unwrap().permissions().mode() & 0o777 == 0o604 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "another mount's chmod not seen after 3 s");
        drop_kernel_dentries();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// This mount's own link, unlink, rename and writes show at once in every name's attributes,
/// never after the attribute TTL; an open file that lost its last name still answers fstat.
#[test]
fn own_changes_show_at_once_in_nlink_ctime_size_and_mtime() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let (f, g, h) = (mount.join("f"), mount.join("g"), mount.join("h"));
    fs::write(&f, b"one").unwrap();
    let before = fs::metadata(&f).unwrap();
    assert_eq!(before.nlink(), 1);
    std::thread::sleep(std::time::Duration::from_millis(20));

    fs::hard_link(&f, &g).unwrap();
    for name in [&f, &g] {
        let m = fs::metadata(name).unwrap();
        assert_eq!(m.nlink(), 2, "{} after link", name.display());
        assert!(m.ctime_nsec() != before.ctime_nsec() || m.ctime() != before.ctime(), "{}: ctime unchanged by link", name.display());
    }
    fs::rename(&g, &h).unwrap();
    assert_eq!(fs::metadata(&h).unwrap().nlink(), 2);
    fs::remove_file(&h).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().nlink(), 1, "nlink after unlinking the other name");

    // Size and mtime after this mount's own write, without waiting for the TTL.
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::OpenOptions::new().append(true).open(&f).unwrap().write_all(&[7; 10_000]).unwrap();
    let m = fs::metadata(&f).unwrap();
    assert_eq!(m.len(), 10_003);
    assert!(m.modified().unwrap() > mtime, "mtime unchanged by a write");

    let mut open = fs::File::open(&f).unwrap();
    fs::remove_file(&f).unwrap();
    let m = open.metadata().unwrap();
    assert_eq!((m.nlink(), m.len()), (0, 10_003), "fstat of an open, unlinked file");
    let mut back = Vec::new();
    open.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 10_003);
}

/// FIFOs, Unix sockets and device nodes through the mount: their types and device numbers
/// are kept, and the kernel serves their opens (a FIFO carries bytes between processes).
#[test]
fn special_files_keep_their_type_and_work() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let (fifo, dev) = (mount.join("fifo"), mount.join("null"));
    // SAFETY: valid NUL-terminated paths.
    unsafe {
        assert_eq!(libc::mkfifo(c(&fifo).as_ptr(), 0o600), 0, "mkfifo: {}", std::io::Error::last_os_error());
        assert_eq!(libc::mknod(c(&dev).as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)), 0, "mknod: {}", std::io::Error::last_os_error());
    }
    assert_eq!(unsafe { libc::mkfifo(c(&fifo).as_ptr(), 0o600) }, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EEXIST));

    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::OpenOptions::new().write(true).open(&fifo).unwrap().write_all(b"through the pipe").unwrap())
    };
    let mut got = String::new();
    fs::File::open(&fifo).unwrap().read_to_string(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got, "through the pipe");

    let sock = mount.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let client = std::thread::spawn({
        let sock = sock.clone();
        move || std::os::unix::net::UnixStream::connect(&sock).unwrap().write_all(b"hello").unwrap()
    });
    let mut got = String::new();
    listener.accept().unwrap().0.read_to_string(&mut got).unwrap();
    client.join().unwrap();
    assert_eq!(got, "hello");

    let second = cluster.mount();
    let types: Vec<(String, fs::FileType)> = fs::read_dir(&second.path)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.file_type().unwrap()))
        .collect();
    for (name, t) in &types {
        let expected = match name.as_str() {
            "fifo" => t.is_fifo(),
            "null" => t.is_char_device(),
            "sock" => t.is_socket(),
            _ => false,
        };
        assert!(expected, "{name} listed as {t:?}");
    }
    assert_eq!(types.len(), 3);
    let m = fs::metadata(second.join("null")).unwrap();
    // 0o666 less the process umask, as on any file system.
    // SAFETY: umask only swaps the process's mask; it is put back at once.
    let umask = unsafe {
        let m = libc::umask(0);
        libc::umask(m);
        m
    };
    assert_eq!((m.rdev(), m.mode() & 0o777), (libc::makedev(1, 3), 0o666 & !umask));
    fs::remove_file(second.join("fifo")).unwrap();
    assert!(fs::symlink_metadata(second.join("fifo")).is_err());
}

/// renameat2(2) with RENAME_EXCHANGE swaps a file and a directory through the mount.
#[test]
fn rename_exchange_swaps_a_file_and_a_directory() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let (file, dir) = (mount.join("file"), mount.join("dir"));
    fs::write(&file, b"contents").unwrap();
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("inner"), b"inner").unwrap();
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let exchange = |a: &Path, b: &Path| {
        // SAFETY: valid NUL-terminated paths; AT_FDCWD with absolute paths.
        let r = unsafe { libc::renameat2(libc::AT_FDCWD, c(a).as_ptr(), libc::AT_FDCWD, c(b).as_ptr(), libc::RENAME_EXCHANGE) };
        if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error().raw_os_error()) }
    };
    exchange(&file, &dir).unwrap();
    assert_eq!(fs::read(&dir).unwrap(), b"contents");
    assert_eq!(fs::read(file.join("inner")).unwrap(), b"inner");
    let fresh = cluster.mount();
    assert_eq!(fs::read(fresh.join("dir")).unwrap(), b"contents", "another mount sees the swap");
    assert!(fresh.join("file").is_dir());
    assert_eq!(exchange(&file, &mount.join("missing")), Err(Some(libc::ENOENT)));
}

/// utimensat(2) with nanoseconds, UTIME_NOW and UTIME_OMIT.
#[test]
fn utimensat_keeps_nanoseconds_and_honours_now_and_omit() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let f = mount.join("t");
    fs::write(&f, b"x").unwrap();
    let path = CString::new(f.as_os_str().as_bytes()).unwrap();
    let set = |atime: libc::timespec, mtime: libc::timespec| {
        // SAFETY: a valid path and two timespecs.
        let r = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), [atime, mtime].as_ptr(), 0) };
        assert_eq!(r, 0, "utimensat: {}", std::io::Error::last_os_error());
    };
    let ts = |sec, nsec| libc::timespec { tv_sec: sec, tv_nsec: nsec };
    set(ts(1_000_000_000, 123_456_789), ts(1_100_000_000, 987_654_321));
    let m = fs::metadata(&f).unwrap();
    assert_eq!((m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()), (1_000_000_000, 123_456_789, 1_100_000_000, 987_654_321));

    set(ts(0, libc::UTIME_OMIT), ts(0, libc::UTIME_NOW));
    let later = fs::metadata(&f).unwrap();
    assert_eq!((later.atime(), later.atime_nsec()), (1_000_000_000, 123_456_789), "UTIME_OMIT changed atime");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((later.mtime() - now).abs() <= 5, "UTIME_NOW set mtime to {}", later.mtime());
    let fresh = cluster.mount();
    let seen = fs::metadata(fresh.join("t")).unwrap();
    assert_eq!((seen.atime_nsec(), seen.mtime()), (123_456_789, later.mtime()), "another mount sees the stored times");
}

/// A sticky directory lets only a file's owner (or the directory's) remove or rename it.
#[test]
fn a_sticky_directory_protects_other_users_files() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let mount = cluster.mount();
    let tmp = mount.join("tmp");
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    let mine = tmp.join("roots");
    fs::write(&mine, b"root's").unwrap();
    fs::set_permissions(&mine, fs::Permissions::from_mode(0o666)).unwrap();
    let own = tmp.join("theirs");
    // Paths are made before the fork: the child must not allocate.
    let (mine_c, own_c) = (cpath(&mine), cpath(&own));
    assert_eq!(as_user(4321, || unlink(&mine_c)), libc::EPERM, "another user removed root's file");
    assert_eq!(as_user(4321, || create(&own_c)), 0);
    assert_eq!(as_user(4321, || unlink(&own_c)), 0, "the owner could not remove their own file");
    assert!(mine.exists());
}

fn unlink(p: &std::ffi::CStr) -> i32 {
    // SAFETY: a valid path.
    if unsafe { libc::unlink(p.as_ptr()) } == 0 { 0 } else { errno() }
}

fn create(p: &std::ffi::CStr) -> i32 {
    // SAFETY: a valid path.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) };
    if fd < 0 {
        return errno();
    }
    // SAFETY: fd was just opened.
    unsafe { libc::close(fd) };
    0
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap_or(0)
}

#[test]
fn errors_and_open_flags_are_the_ones_linux_gives() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (m, other) = (cluster.mount(), cluster.mount());
    let (dir, file) = (m.join("d"), m.join("f"));
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("inside"), b"x").unwrap();
    fs::write(&file, b"data").unwrap();

    assert_eq!(errno_of(fs::write(m.join("n".repeat(256).as_str()), b"")), libc::ENAMETOOLONG);
    std::os::unix::fs::symlink("loop2", m.join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", m.join("loop2")).unwrap();
    assert_eq!(errno_of(fs::read(m.join("loop1"))), libc::ELOOP);
    assert_eq!(errno_of(fs::remove_dir(&dir)), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::rename(&file, other.join("f2"))), libc::EXDEV, "another mount is another file system");
    assert_eq!(errno_of(fs::OpenOptions::new().write(true).open(&dir)), libc::EISDIR);
    assert_eq!(errno_of(fs::remove_file(&dir)), libc::EISDIR);
    assert_eq!(errno_of(fs::read(file.join("below"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_dir(&file)), libc::ENOTDIR);
    assert_eq!(errno_of(fs::create_dir(&dir)), libc::EEXIST);
    assert_eq!(errno_of(fs::OpenOptions::new().write(true).create_new(true).open(&file)), libc::EEXIST);
    fs::create_dir(m.join("empty")).unwrap();
    assert_eq!(errno_of(fs::rename(m.join("empty"), &dir)), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::rename(m.join("empty"), &file)), libc::ENOTDIR);
    assert_eq!(errno_of(fs::rename(&file, m.join("empty"))), libc::EISDIR);

    // O_APPEND: every write lands at the end, whatever another descriptor wrote meanwhile.
    let mut first = fs::OpenOptions::new().append(true).open(&file).unwrap();
    let mut second = fs::OpenOptions::new().append(true).open(&file).unwrap();
    first.write_all(b"-one").unwrap();
    second.write_all(b"-two").unwrap();
    first.write_all(b"-three").unwrap();
    drop((first, second));
    assert_eq!(fs::read(&file).unwrap(), b"data-one-two-three");
}

#[test]
fn supplementary_groups_grant_group_access() {
    if !fuse_available() {
        return;
    }
    const USER: u32 = 4243;
    const GROUP: u32 = 4244;
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let m = cluster.mount();
    let f = m.join("team");
    fs::write(&f, b"for the team").unwrap();
    std::os::unix::fs::chown(&f, Some(0), Some(GROUP)).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    let path = cpath(&f);
    let reads = |groups: &'static [libc::gid_t]| {
        ember_testkit::Forked::start(|| unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setresgid(USER, USER, USER) != 0 || libc::setresuid(USER, USER, USER) != 0 {
                return 255;
            }
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                return std::io::Error::last_os_error().raw_os_error().unwrap_or(254);
            }
            0
        })
        .wait()
    };
    assert_eq!(reads(&[GROUP]), 0, "a supplementary group of the caller owns the file");
    assert_eq!(reads(&[]), libc::EACCES);
}

/// open(2) with O_TMPFILE in `dir`: the descriptor or the errno.
fn open_tmpfile(dir: &Path, extra: i32) -> Result<i32, i32> {
    let path = cpath(dir);
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_TMPFILE | libc::O_RDWR | extra, 0o640) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

/// linkat(fd, "", AT_FDCWD, to, AT_EMPTY_PATH): gives an open file a name (root may).
fn link_open_file(fd: i32, to: &Path) -> Result<(), i32> {
    let to = cpath(to);
    if unsafe { libc::linkat(fd, c"".as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_EMPTY_PATH) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

#[test]
fn an_o_tmpfile_file_has_no_name_until_linkat_gives_it_one() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let cluster = Cluster::start(bin(), 1);
    let (m, other) = (cluster.mount(), cluster.mount());
    fs::create_dir(m.join("d")).unwrap();
    let before = fs::metadata(m.join("d")).unwrap();
    let data = random_bytes(9, 300_000);

    let fd = open_tmpfile(&m.join("d"), 0).unwrap();
    let mut file = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.write_all(&data).unwrap();
    let st = file.metadata().unwrap();
    assert_eq!((st.nlink(), st.len(), st.mode() & 0o7777), (0, data.len() as u64, 0o640));
    assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), 0, "no name until linked");
    let after = fs::metadata(m.join("d")).unwrap();
    assert_eq!((after.mtime(), after.mtime_nsec()), (before.mtime(), before.mtime_nsec()), "the directory is unchanged");

    link_open_file(fd, &m.join("d/kept")).unwrap();
    assert_eq!(file.metadata().unwrap().nlink(), 1);
    drop(file);
    assert_eq!(sha256(&fs::read(other.join("d/kept")).unwrap()), sha256(&data), "linked: another mount reads it");

    let excl = open_tmpfile(&m.join("d"), libc::O_EXCL).unwrap();
    assert_eq!(link_open_file(excl, &m.join("d/never")), Err(libc::ENOENT), "O_EXCL: never linkable");
    unsafe { libc::close(excl) };
    let dropped = open_tmpfile(&m.join("d"), 0).unwrap();
    assert_eq!(unsafe { libc::write(dropped, b"gone".as_ptr().cast(), 4) }, 4);
    unsafe { libc::close(dropped) };
    let names: Vec<_> = fs::read_dir(other.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("kept")]);
    assert_eq!(open_tmpfile(&m.join("d/kept"), 0), Err(libc::ENOTDIR));
}
