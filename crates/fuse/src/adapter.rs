//! The kernel adapter: each FUSE request becomes one `Vfs` call on the tokio runtime, with a
//! tracing span, a metrics observation and an errno mapping.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ember_proto::meta::{Attr, LockKind, XattrSetMode};
use ember_telemetry::{Counter, Histogram, SeriesCache};
use ember_types::{FileType, Status};
use tracing::Instrument;

use crate::kernel::abi::{self, fattr, init, CreateIn, DirBuf, FileLock, Out, SetAttrIn, StatFs};
use crate::kernel::{Device, Handler, Header, KernelAttr, Op, Reply};
use crate::vfs::{Creator, Kill, LockSpec, SeekFor};
use crate::Vfs;

/// Largest read/write the kernel sends in one request (the kernel's own ceiling here).
pub const MAX_IO: u32 = 1 << 20;
const BLOCK: u32 = 4096;

/// What this mount asks of the kernel at INIT: locks go to meta (so they hold across
/// mounts); the kernel enforces the POSIX ACLs meta keeps, and creates arrive without the
/// umask applied, since a default ACL replaces it; this mount drops setuid, setgid and
/// capabilities on changes (else the kernel asks for `security.capability` before every
/// write), and learns when setting an ACL must drop setgid.
const WANTED: u64 = init::POSIX_LOCKS
    | init::FLOCK_LOCKS
    | init::POSIX_ACL
    | init::DONT_MASK
    | init::HANDLE_KILLPRIV_V2
    | init::SETXATTR_EXT;

pub struct EmberFs {
    vfs: Arc<Vfs>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    /// How this mount drops what the kernel cached of a file.
    device: Arc<Device>,
    /// Whether the kernel enforces POSIX ACLs; if not, none may be set (it would protect
    /// nothing).
    acls: AtomicBool,
    /// Whether this mount drops setuid, setgid and capabilities on changes
    /// (FUSE_HANDLE_KILLPRIV_V2) instead of the kernel.
    kills_privileges: AtomicBool,
}

impl EmberFs {
    pub fn new(vfs: Arc<Vfs>, rt: tokio::runtime::Handle, ttl: Duration, device: Arc<Device>) -> Self {
        EmberFs { vfs, rt, ttl, device, acls: AtomicBool::new(false), kills_privileges: AtomicBool::new(false) }
    }

    fn kills_privileges(&self) -> bool {
        self.kills_privileges.load(Ordering::Relaxed)
    }

    /// For changes the kernel does not flag (fallocate, copy_file_range): whether the caller
    /// lacks CAP_FSETID, asked only when this mount drops the bits.
    fn lacks_fsetid(&self, h: &Header) -> bool {
        self.kills_privileges() && !crate::caller::may_keep_setid(h.pid)
    }

    /// Runs one operation to completion on the runtime. FUSE worker threads block here, so
    /// their metadata requests go on connections of their own, read by themselves, and work
    /// that must block (a metadata server's commit, when it runs in this process) runs on them.
    fn run<T>(&self, op: &'static str, fut: impl Future<Output = Result<T, Status>>) -> Result<T, i32> {
        ember_net::own_connections_on_this_thread();
        ember_net::run_blocking_inline_on_this_thread();
        let started = Instant::now();
        let span = tracing::debug_span!("fuse", op);
        observe(op, started, self.rt.block_on(fut.instrument(span)))
    }

    /// Before a write, fallocate or copy into the file: its capability goes, and with `setid`
    /// (the caller lacks CAP_FSETID) its setuid and setgid; the kernel then forgets the
    /// attributes it cached. The kernel does this itself unless it handed it to this mount.
    async fn before_change(&self, ino: u64, fh: u64, setid: bool) -> Result<(), Status> {
        if self.kills_privileges() && self.vfs.drop_privileges(fh, setid).await? {
            // A negative offset: the attributes only, not the pages (a write may hold them).
            if let Err(e) = self.device.inval_inode(ino, -1, 0) {
                tracing::debug!(ino, error = %e, "cannot drop the kernel's attributes of a file");
            }
        }
        Ok(())
    }

    /// Setting an ACL by someone outside the file's group and without CAP_FSETID drops
    /// setgid, as `posix_acl_update_mode` does on a local file system.
    async fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], mode: XattrSetMode, kill_sgid: bool) -> Result<(), Status> {
        self.vfs.setxattr(ino, name, value, mode).await?;
        if !kill_sgid || name != b"system.posix_acl_access" {
            return Ok(());
        }
        let a = self.vfs.getattr(ino).await?;
        if a.mode & 0o2000 != 0 {
            let mode = Some(a.mode & 0o7777 & !0o2000);
            self.vfs.setattr(ino, mode, None, None, None, None, None, Kill::default()).await?;
        }
        Ok(())
    }

    fn kernel_attr(&self, a: &Attr) -> KernelAttr {
        let kind = FileType::from_u8(a.file_type as u8).unwrap_or(FileType::File);
        KernelAttr {
            ino: a.inode,
            size: a.size,
            blocks: a.blocks,
            atime_ns: a.atime_ns,
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
            mode: type_bits(kind) | (a.mode & 0o7777),
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: BLOCK,
        }
    }

    fn entry(&self, reply: Reply, r: Result<Attr, i32>) {
        match r {
            Ok(a) => reply.out(Out::entry(&self.kernel_attr(&a), self.ttl)),
            Err(e) => reply.error(e),
        }
    }

    fn created(&self, reply: Reply, r: Result<(Attr, u64), i32>) {
        match r {
            Ok((a, fh)) => reply.out(Out::created(&self.kernel_attr(&a), self.ttl, fh)),
            Err(e) => reply.error(e),
        }
    }

    fn attr(&self, reply: Reply, r: Result<Attr, i32>) {
        match r {
            Ok(a) => reply.out(Out::attr_out(&self.kernel_attr(&a), self.ttl)),
            Err(e) => reply.error(e),
        }
    }
}

fn empty(reply: Reply, r: Result<(), i32>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn count(reply: Reply, r: Result<u32, i32>) {
    match r {
        Ok(n) => reply.out(Out::count(n)),
        Err(e) => reply.error(e),
    }
}

/// The series one operation records into.
struct OpSeries {
    ok: Counter,
    failed: Counter,
    seconds: Histogram,
}

impl OpSeries {
    fn new(op: &'static str) -> OpSeries {
        let reg = ember_telemetry::global();
        OpSeries {
            ok: reg.counter("ember_fuse_ops_total", &format!("op=\"{op}\",result=\"ok\"")),
            failed: reg.counter("ember_fuse_ops_total", &format!("op=\"{op}\",result=\"error\"")),
            seconds: reg.histogram("ember_fuse_op_seconds", &format!("op=\"{op}\"")),
        }
    }
}

thread_local! {
    static OP_SERIES: SeriesCache<&'static str, OpSeries> = SeriesCache::default();
}

/// Counts and times one finished operation, and turns its error into an errno.
fn observe<T>(op: &'static str, started: Instant, result: Result<T, Status>) -> Result<T, i32> {
    OP_SERIES.with(|cache| {
        cache.with(op, || OpSeries::new(op), |series| {
            let outcome = if result.is_ok() { &series.ok } else { &series.failed };
            outcome.add(1);
            series.seconds.observe(started.elapsed());
        })
    });
    result.map_err(|st| {
        tracing::debug!(op, error = %st, "fuse op failed");
        crate::errno_of(&st)
    })
}

/// The kernel forgets the file's attributes and pages: after a read or write lock is granted
/// (`spec`), so the holder reads what the lock's last holder wrote, and after a close that
/// could not write out what it had (no `spec`).
fn forget_cached(device: &Device, ino: u64, spec: Option<&LockSpec>) {
    if spec.is_some_and(|s| s.kind == LockKind::Unlock) {
        return;
    }
    if let Err(e) = device.inval_inode(ino, 0, 0) {
        tracing::debug!(ino, error = %e, "cannot drop the kernel's cache of a file");
    }
}

/// The caller of a create, mkdir or mknod. The mode arrives unmasked (FUSE_DONT_MASK): meta
/// applies the umask, unless the parent's default ACL takes its place.
fn creator(h: &Header, umask: u32) -> Creator {
    Creator { uid: h.uid, gid: h.gid, umask }
}

/// A kernel lock request; `None` for an unknown lock type.
fn lock_spec(lk: &FileLock) -> Option<LockSpec> {
    let kind = match lk.typ as i32 {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return None,
    };
    Some(LockSpec { owner: lk.owner, start: lk.start, end: lk.end, kind, pid: lk.pid, flock: lk.flock })
}

fn type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::File => libc::S_IFREG,
        FileType::Directory => libc::S_IFDIR,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Fifo => libc::S_IFIFO,
        FileType::Socket => libc::S_IFSOCK,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
    }
}

/// A time from setattr: the one given, or now when the kernel says so.
fn time_ns(valid: u32, given: u32, now: u32, at: (u64, u32)) -> Option<i64> {
    if valid & given == 0 {
        return None;
    }
    if valid & now != 0 {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        return Some(d.as_nanos() as i64);
    }
    Some(abi::join_ns(at))
}

/// getxattr(2)/listxattr(2): a zero size asks for the length only; a smaller buffer is ERANGE.
fn reply_xattr(reply: Reply, size: u32, value: &[u8]) {
    match u32::try_from(value.len()) {
        Ok(len) if size == 0 => reply.out(Out::count(len)),
        Ok(len) if len <= size => reply.bytes(value),
        _ => reply.error(libc::ERANGE),
    }
}

impl Handler for EmberFs {
    fn init(&self, offered: u64) -> u64 {
        let got = WANTED & offered;
        if got & (init::POSIX_LOCKS | init::FLOCK_LOCKS) != init::POSIX_LOCKS | init::FLOCK_LOCKS {
            tracing::warn!("kernel lacks lock support; locks will only hold within this mount");
        }
        let acls = got & init::POSIX_ACL != 0;
        if !acls {
            tracing::warn!("kernel lacks POSIX ACL support; setting ACLs is refused");
        }
        self.acls.store(acls, Ordering::Relaxed);
        self.kills_privileges.store(got & init::HANDLE_KILLPRIV_V2 != 0, Ordering::Relaxed);
        got
    }

    fn handle(&self, h: &Header, op: Op<'_>, reply: Reply) {
        match op {
            Op::Lookup { .. }
            | Op::Mknod { .. }
            | Op::Mkdir { .. }
            | Op::Symlink { .. }
            | Op::Unlink { .. }
            | Op::Rmdir { .. }
            | Op::Rename { .. }
            | Op::Link { .. }
            | Op::Create { .. }
            | Op::Tmpfile(_) => self.namespace(h, op, reply),
            Op::Getattr | Op::Setattr(_) | Op::Readlink | Op::Statfs => self.attributes(h, op, reply),
            Op::Setxattr { .. } | Op::Getxattr { .. } | Op::Listxattr { .. } | Op::Removexattr { .. } => {
                self.xattrs(h, op, reply)
            }
            Op::Getlk(_) | Op::Setlk { .. } => self.locks(h, op, reply),
            Op::Opendir | Op::Readdir { .. } | Op::Releasedir { .. } | Op::Fsyncdir => self.directories(h, op, reply),
            _ => self.files(h, op, reply),
        }
    }
}

impl EmberFs {
    fn namespace(&self, h: &Header, op: Op<'_>, reply: Reply) {
        let parent = h.nodeid;
        match op {
            Op::Lookup { name } => match self.run("lookup", self.vfs.lookup(parent, name)) {
                // A negative entry: the kernel remembers the name is missing for the entry TTL
                // (programs probe many missing paths: imports, PATH, config search). It drops
                // the entry at once when this mount creates the name.
                Err(libc::ENOENT) => reply.out(Out::entry(&KernelAttr::default(), self.ttl)),
                Ok(e) => reply.out(Out::entry(&self.kernel_attr(&e.attr), e.ttl)),
                Err(e) => reply.error(e),
            },
            Op::Mknod { name, mode, rdev, umask } => self.mknod(h, name, mode, rdev, umask, reply),
            Op::Mkdir { name, mode, umask } => {
                let r = self.run("mkdir", self.vfs.mkdir(parent, name, mode & 0o7777, creator(h, umask)));
                self.entry(reply, r)
            }
            Op::Symlink { name, target } => {
                let r = self.run("symlink", self.vfs.symlink(parent, name, target, h.uid, h.gid));
                self.entry(reply, r)
            }
            Op::Unlink { name } => empty(reply, self.run("unlink", self.vfs.unlink(parent, name))),
            Op::Rmdir { name } => empty(reply, self.run("rmdir", self.vfs.rmdir(parent, name))),
            Op::Rename { name, newdir, newname, flags } => {
                empty(reply, self.run("rename", self.vfs.rename(parent, name, newdir, newname, flags)))
            }
            Op::Link { inode, newname } => {
                let r = self.run("link", self.vfs.link(inode, parent, newname));
                self.entry(reply, r)
            }
            Op::Create { name, args: CreateIn { flags, mode, umask } } => {
                let fut = self.vfs.create(parent, name, mode & 0o7777, creator(h, umask), flags as i32);
                self.created(reply, self.run("create", fut))
            }
            Op::Tmpfile(CreateIn { mode, umask, .. }) => {
                let fut = self.vfs.tmpfile(parent, mode & 0o7777, creator(h, umask));
                self.created(reply, self.run("tmpfile", fut))
            }
            _ => reply.error(libc::ENOSYS),
        }
    }

    fn mknod(&self, h: &Header, name: &[u8], mode: u32, rdev: u32, umask: u32, reply: Reply) {
        let (perm, who) = (mode & 0o7777, creator(h, umask));
        let special = match mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some(FileType::Fifo),
            libc::S_IFSOCK => Some(FileType::Socket),
            libc::S_IFCHR => Some(FileType::CharDevice),
            libc::S_IFBLK => Some(FileType::BlockDevice),
            _ => return reply.error(libc::EINVAL),
        };
        if let Some(kind) = special {
            let r = self.run("mknod", self.vfs.mknod(h.nodeid, name, kind, perm, who, rdev));
            return self.entry(reply, r);
        }
        let r = self.run("mknod", async {
            let (attr, fh) = self.vfs.create(h.nodeid, name, perm, who, libc::O_EXCL).await?;
            self.vfs.release(fh).await?;
            Ok(attr)
        });
        self.entry(reply, r);
    }

    fn attributes(&self, h: &Header, op: Op<'_>, reply: Reply) {
        match op {
            Op::Getattr => self.attr(reply, self.run("getattr", self.vfs.getattr(h.nodeid))),
            Op::Setattr(s) => self.setattr(h, &s, reply),
            Op::Readlink => match self.run("readlink", self.vfs.readlink(h.nodeid)) {
                Ok(t) => reply.bytes(&t),
                Err(e) => reply.error(e),
            },
            Op::Statfs => match self.run("statfs", self.vfs.statfs()) {
                Ok(s) => {
                    let b = u64::from(BLOCK);
                    let free = s.free_bytes / b;
                    let (files, ffree) = (s.inodes + (1 << 32), 1 << 32);
                    let st = StatFs { blocks: s.capacity_bytes / b, bfree: free, bavail: free, files, ffree, bsize: BLOCK, namelen: 255, frsize: BLOCK };
                    reply.out(Out::statfs(&st))
                }
                Err(e) => reply.error(e),
            },
            _ => reply.error(libc::ENOSYS),
        }
    }

    fn setattr(&self, h: &Header, s: &SetAttrIn, reply: Reply) {
        let given = |bit: u32, v: u32| (s.valid & bit != 0).then_some(v);
        let mode = given(fattr::MODE, s.mode & 0o7777);
        let (uid, gid) = (given(fattr::UID, s.uid), given(fattr::GID, s.gid));
        let size = (s.valid & fattr::SIZE != 0).then_some(s.size);
        let atime = time_ns(s.valid, fattr::ATIME, fattr::ATIME_NOW, s.atime);
        let mtime = time_ns(s.valid, fattr::MTIME, fattr::MTIME_NOW, s.mtime);
        // The kernel flags a truncate by a caller without CAP_FSETID; a chown always drops
        // setuid and setgid, as on a local file system. A chown that changes neither owner
        // still does, and reaches us as a setattr of nothing (the kernel sends no such
        // setattr for any other call).
        let chown = uid.is_some() || gid.is_some() || s.valid == 0;
        let kill = Kill {
            setid: self.kills_privileges() && (chown || s.valid & fattr::KILL_SUIDGID != 0),
            capability: self.kills_privileges() && (chown || size.is_some()),
        };
        let r = self.run("setattr", self.vfs.setattr(h.nodeid, mode, uid, gid, size, atime, mtime, kill));
        self.attr(reply, r);
    }

    fn xattrs(&self, h: &Header, op: Op<'_>, reply: Reply) {
        let ino = h.nodeid;
        match op {
            Op::Setxattr { name, value, flags, setxattr_flags } => {
                let mode = match flags as i32 {
                    0 => XattrSetMode::Upsert,
                    libc::XATTR_CREATE => XattrSetMode::Create,
                    libc::XATTR_REPLACE => XattrSetMode::Replace,
                    _ => return reply.error(libc::EINVAL),
                };
                if !self.acls.load(Ordering::Relaxed) && name.starts_with(b"system.posix_acl_") {
                    return reply.error(libc::EOPNOTSUPP);
                }
                let kill_sgid = setxattr_flags & abi::SETXATTR_ACL_KILL_SGID != 0;
                empty(reply, self.run("setxattr", self.setxattr(ino, name, value, mode, kill_sgid)))
            }
            Op::Getxattr { name, size } => match self.run("getxattr", self.vfs.getxattr(ino, name)) {
                Ok(value) => reply_xattr(reply, size, &value),
                Err(e) => reply.error(e),
            },
            Op::Listxattr { size } => match self.run("listxattr", self.vfs.listxattr(ino)) {
                Ok(names) => {
                    let list: Vec<u8> = names.iter().flat_map(|n| n.iter().copied().chain([0])).collect();
                    reply_xattr(reply, size, &list)
                }
                Err(e) => reply.error(e),
            },
            Op::Removexattr { name } => empty(reply, self.run("removexattr", self.vfs.removexattr(ino, name))),
            _ => reply.error(libc::ENOSYS),
        }
    }

    fn files(&self, h: &Header, op: Op<'_>, reply: Reply) {
        let ino = h.nodeid;
        match op {
            Op::Open { flags } => match self.run("open", self.vfs.open(ino, flags as i32)) {
                Ok(fh) => reply.out(Out::open(fh)),
                Err(e) => reply.error(e),
            },
            Op::Read { fh, offset, size } => match self.run("read", self.vfs.read(fh, offset, size)) {
                Ok(d) => reply.bytes(&d),
                Err(e) => reply.error(e),
            },
            Op::Write { fh, offset, write_flags, data } => {
                let setid = write_flags & abi::WRITE_KILL_SUIDGID != 0;
                let fut = async {
                    self.before_change(ino, fh, setid).await?;
                    self.vfs.write(fh, offset, data).await
                };
                count(reply, self.run("write", fut))
            }
            Op::Flush { fh, owner } => {
                let r = self.run("flush", self.vfs.close(fh, owner));
                if r == Err(libc::EIO) {
                    // What this close could not write out (lost locks, a failed storage
                    // write) must not stay readable from the kernel's page cache as if stored.
                    forget_cached(&self.device, ino, None);
                }
                empty(reply, r)
            }
            Op::Release { fh } => empty(reply, self.run("release", self.vfs.release(fh))),
            Op::Fsync { fh } => empty(reply, self.run("fsync", self.vfs.flush(fh))),
            Op::Fallocate { fh, offset, length, mode } => {
                let fut = async {
                    self.before_change(ino, fh, self.lacks_fsetid(h)).await?;
                    self.vfs.fallocate(fh, offset, length, mode as i32).await
                };
                empty(reply, self.run("fallocate", fut))
            }
            Op::CopyFileRange { fh_in, off_in, inode_out, fh_out, off_out, len, flags } => {
                if flags != 0 {
                    return reply.error(libc::EINVAL);
                }
                let fut = async {
                    self.before_change(inode_out, fh_out, self.lacks_fsetid(h)).await?;
                    self.vfs.copy_file_range(fh_in, off_in, fh_out, off_out, len).await
                };
                count(reply, self.run("copy_file_range", fut))
            }
            Op::Lseek { fh, offset, whence } => self.lseek(fh, offset, whence, reply),
            Op::Destroy => reply.ok(),
            _ => reply.error(libc::ENOSYS),
        }
    }

    fn lseek(&self, fh: u64, offset: u64, whence: u32, reply: Reply) {
        let want = match whence as i32 {
            libc::SEEK_DATA => SeekFor::Data,
            libc::SEEK_HOLE => SeekFor::Hole,
            _ => return reply.error(libc::EINVAL),
        };
        if (offset as i64) < 0 {
            return reply.error(libc::ENXIO);
        }
        match self.run("lseek", self.vfs.seek(fh, offset, want)) {
            Ok(at) => reply.out(Out::lseek(at)),
            Err(e) => reply.error(e),
        }
    }

    fn directories(&self, h: &Header, op: Op<'_>, reply: Reply) {
        match op {
            Op::Opendir => match self.run("opendir", self.vfs.opendir(h.nodeid)) {
                Ok(fh) => reply.out(Out::open(fh)),
                Err(e) => reply.error(e),
            },
            Op::Readdir { fh, offset, size } => self.readdir(h.nodeid, fh, offset, size, reply),
            Op::Releasedir { fh } => {
                self.vfs.releasedir(fh);
                reply.ok()
            }
            // Every metadata change is durable in the KV before it is acknowledged.
            Op::Fsyncdir => reply.ok(),
            _ => reply.error(libc::ENOSYS),
        }
    }

    fn readdir(&self, ino: u64, fh: u64, offset: u64, size: u32, reply: Reply) {
        let listing = match self.vfs.listing(fh) {
            Ok(l) => l,
            Err(e) => return reply.error(crate::errno_of(&e)),
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = listing entries; each entry carries the next offset.
        let dir = libc::S_IFDIR >> 12;
        let dots = [(ino, dir, &b"."[..]), (ino, dir, &b".."[..])];
        let entries = dots.into_iter().chain(listing.iter().map(|e| (e.inode, type_bits(e.file_type) >> 12, e.name.as_slice())));
        let mut buf = DirBuf::new(size);
        for (i, (inode, dtype, name)) in entries.enumerate().skip(offset as usize) {
            if !buf.add(inode, i as u64 + 1, dtype, name) {
                break;
            }
        }
        reply.bytes(&buf.into_bytes());
    }

    fn locks(&self, h: &Header, op: Op<'_>, reply: Reply) {
        match op {
            Op::Getlk(lk) => {
                let Some(spec) = lock_spec(&lk) else { return reply.error(libc::EINVAL) };
                match self.run("getlk", self.vfs.getlk(lk.fh, spec)) {
                    Ok(Some(c)) => {
                        let typ = if c.kind == LockKind::Write as i32 { libc::F_WRLCK } else { libc::F_RDLCK };
                        reply.out(Out::lock(c.start, c.end, typ as u32, c.pid))
                    }
                    Ok(None) => reply.out(Out::lock(lk.start, lk.end, libc::F_UNLCK as u32, 0)),
                    Err(e) => reply.error(e),
                }
            }
            Op::Setlk { lock, sleep } => self.setlk(h, lock, sleep, reply),
            _ => reply.error(libc::ENOSYS),
        }
    }

    fn setlk(&self, h: &Header, lk: FileLock, sleep: bool, reply: Reply) {
        let Some(spec) = lock_spec(&lk) else { return reply.error(libc::EINVAL) };
        let ino = h.nodeid;
        if !sleep {
            let r = self.run("setlk", self.vfs.setlk(lk.fh, spec, false, || false));
            if r.is_ok() {
                forget_cached(&self.device, ino, Some(&spec));
            }
            return empty(reply, r);
        }
        // A wait can last: it goes on as a task, so it holds no FUSE thread; the caller's
        // signals are watched in /proc (see `caller`).
        let (vfs, device, thread) = (self.vfs.clone(), self.device.clone(), h.pid);
        self.rt.spawn(async move {
            let started = Instant::now();
            let r = vfs.setlk(lk.fh, spec, true, || crate::caller::pending(thread)).await;
            if r.is_ok() {
                forget_cached(&device, ino, Some(&spec));
            }
            empty(reply, observe("setlkw", started, r));
        });
    }
}
