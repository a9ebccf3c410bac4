//! The `fuser` adapter: each kernel request becomes one `Vfs` call on the tokio runtime,
//! with a tracing span, a metrics observation and an errno mapping.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ember_proto::meta::{Attr, LockKind, XattrSetMode};
use ember_types::{FileType, Status};
use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::Instrument;

use crate::vfs::{Creator, Kill, LockSpec, SeekFor};
use crate::Vfs;

/// Largest read/write the kernel sends in one request (the kernel's own ceiling here).
const MAX_IO: u32 = 1 << 20;
const BLOCK: u32 = 4096;

pub struct EmberFs {
    vfs: Arc<Vfs>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    /// Set once the session runs: how this mount drops what the kernel cached of a file.
    notifier: Arc<OnceLock<Notifier>>,
    /// Whether the kernel enforces POSIX ACLs; if not, none may be set (it would protect
    /// nothing).
    acls: bool,
    /// Whether this mount drops setuid, setgid and capabilities on changes
    /// (FUSE_HANDLE_KILLPRIV_V2) instead of the kernel.
    kills_privileges: bool,
}

impl EmberFs {
    pub fn new(vfs: Arc<Vfs>, rt: tokio::runtime::Handle, ttl: Duration, notifier: Arc<OnceLock<Notifier>>) -> Self {
        EmberFs { vfs, rt, ttl, notifier, acls: false, kills_privileges: false }
    }

    /// Runs one operation to completion on the runtime. fuser worker threads block here, so
    /// their metadata requests go on connections of their own, read by themselves, and work
    /// that must block (a metadata server's commit, when it runs in this process) runs on them.
    fn run<T>(&self, op: &'static str, fut: impl Future<Output = Result<T, Status>>) -> Result<T, Errno> {
        ember_net::own_connections_on_this_thread();
        ember_net::run_blocking_inline_on_this_thread();
        let started = Instant::now();
        let span = tracing::debug_span!("fuse", op);
        observe(op, started, self.rt.block_on(fut.instrument(span)))
    }

    /// Before a write, fallocate or copy into the file: its capability goes, and with `setid`
    /// (the caller lacks CAP_FSETID) its setuid and setgid; the kernel then forgets the
    /// attributes it cached. The kernel does this itself unless it handed it to this mount.
    /// (The kernel flags writes; for fallocate and copy_file_range root stands for CAP_FSETID.)
    async fn before_change(&self, ino: INodeNo, fh: FileHandle, setid: bool) -> Result<(), Status> {
        if self.kills_privileges && self.vfs.drop_privileges(fh.0, setid).await? {
            if let Some(n) = self.notifier.get() {
                // A negative offset: the attributes only, not the pages (a write may hold them).
                if let Err(e) = n.inval_inode(ino, -1, 0) {
                    tracing::debug!(%ino, error = %e, "cannot drop the kernel's attributes of a file");
                }
            }
        }
        Ok(())
    }

    fn file_attr(&self, a: &Attr) -> FileAttr {
        let kind = FileType::from_u8(a.file_type as u8).map_or(fuser::FileType::RegularFile, kernel_type);
        FileAttr {
            ino: INodeNo(a.inode),
            size: a.size,
            blocks: a.blocks,
            atime: time_of(a.atime_ns),
            mtime: time_of(a.mtime_ns),
            ctime: time_of(a.ctime_ns),
            crtime: time_of(a.ctime_ns),
            kind,
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: BLOCK,
            flags: 0,
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &self.file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// Counts and times one finished operation, and turns its error into an errno.
fn observe<T>(op: &'static str, started: Instant, result: Result<T, Status>) -> Result<T, Errno> {
    let reg = ember_telemetry::global();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    reg.inc("ember_fuse_ops_total", &format!("op=\"{op}\",result=\"{outcome}\""), 1);
    reg.observe("ember_fuse_op_seconds", &format!("op=\"{op}\""), started.elapsed());
    result.map_err(|st| {
        tracing::debug!(op, error = %st, "fuse op failed");
        Errno::from_i32(crate::errno_of(&st))
    })
}

/// The kernel forgets the file's attributes and pages: after a read or write lock is granted
/// (`spec`), so the holder reads what the lock's last holder wrote, and after a close that
/// could not write out what it had (no `spec`).
fn forget_cached(notifier: &OnceLock<Notifier>, ino: INodeNo, spec: Option<&LockSpec>) {
    if spec.is_some_and(|s| s.kind == LockKind::Unlock) {
        return;
    }
    if let Some(n) = notifier.get() {
        if let Err(e) = n.inval_inode(ino, 0, 0) {
            tracing::debug!(%ino, error = %e, "cannot drop the kernel's cache of a file");
        }
    }
}

/// The caller of a create, mkdir or mknod. The mode arrives unmasked (FUSE_DONT_MASK): meta
/// applies the umask, unless the parent's default ACL takes its place.
fn creator(req: &Request, umask: u32) -> Creator {
    Creator { uid: req.uid(), gid: req.gid(), umask }
}

/// A kernel lock request; `None` for an unknown lock type.
fn lock_spec(owner: LockOwner, start: u64, end: u64, typ: i32, pid: u32) -> Option<LockSpec> {
    let kind = match typ {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return None,
    };
    Some(LockSpec { owner: owner.0, start, end, kind, pid })
}

fn kernel_type(kind: FileType) -> fuser::FileType {
    match kind {
        FileType::File => fuser::FileType::RegularFile,
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
        FileType::CharDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
    }
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns_of(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn name(n: &OsStr) -> &[u8] {
    n.as_bytes()
}

/// getxattr(2)/listxattr(2): a zero size asks for the length only; a smaller buffer is ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    match u32::try_from(value.len()) {
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len <= size => reply.data(value),
        _ => reply.error(Errno::ERANGE),
    }
}

impl Filesystem for EmberFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The kernel may refuse a larger value; the nearest it accepts is fine.
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // Locks go to meta (so they hold across mounts) instead of staying in this kernel.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS) {
            tracing::warn!(?missing, "kernel lacks lock support; locks will only hold within this mount");
        }
        // The kernel enforces POSIX ACLs, which meta keeps; creates arrive without the umask
        // applied, since a default ACL replaces it.
        self.acls = config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_ok();
        if !self.acls {
            tracing::warn!("kernel lacks POSIX ACL support; setting ACLs is refused");
        }
        let _ = config.add_capabilities(InitFlags::FUSE_DONT_MASK);
        // Without it the kernel asks for `security.capability` before every write.
        self.kills_privileges = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2).is_ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        match self.run("lookup", self.vfs.lookup(parent.0, name(n))) {
            // A negative entry: the kernel remembers the name is missing for the entry TTL
            // (programs probe many missing paths: imports, PATH, config search). It drops the
            // entry at once when this mount creates the name.
            Err(e) if e == Errno::ENOENT => {
                let missing = FileAttr { ino: INodeNo(0), ..self.file_attr(&Attr::default()) };
                reply.entry(&self.ttl, &missing, Generation(0));
            }
            Ok(e) => reply.entry(&e.ttl, &self.file_attr(&e.attr), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run("getattr", self.vfs.getattr(ino.0)) {
            Ok(a) => reply.attr(&self.ttl, &self.file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mode = mode.map(|m| m & 0o7777);
        // The kernel's FATTR_KILL_SUIDGID does not reach us through fuser, so its rule is
        // applied here: a truncate without CAP_FSETID (taken to be root's) and any chown.
        let chown = uid.is_some() || gid.is_some();
        let kill = Kill {
            setid: self.kills_privileges && (chown || (size.is_some() && req.uid() != 0)),
            capability: self.kills_privileges && (chown || size.is_some()),
        };
        let fut = self.vfs.setattr(ino.0, mode, uid, gid, size, atime.map(ns_of), mtime.map(ns_of), kill);
        match self.run("setattr", fut) {
            Ok(a) => reply.attr(&self.ttl, &self.file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        match self.run("getxattr", self.vfs.getxattr(ino.0, name(n))) {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, value: &[u8], flags: i32, position: u32, reply: ReplyEmpty) {
        let mode = match flags {
            0 => XattrSetMode::Upsert,
            libc::XATTR_CREATE => XattrSetMode::Create,
            libc::XATTR_REPLACE => XattrSetMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        if position != 0 {
            return reply.error(Errno::EINVAL);
        }
        if !self.acls && n.as_bytes().starts_with(b"system.posix_acl_") {
            return reply.error(Errno::EOPNOTSUPP);
        }
        Self::empty(reply, self.run("setxattr", self.vfs.setxattr(ino.0, name(n), value, mode)));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.run("listxattr", self.vfs.listxattr(ino.0)) {
            Ok(names) => {
                let list: Vec<u8> = names.iter().flat_map(|n| n.iter().copied().chain([0])).collect();
                reply_xattr(reply, size, &list)
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, self.run("removexattr", self.vfs.removexattr(ino.0, name(n))));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.run("readlink", self.vfs.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, n: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let (perm, who) = (mode & 0o7777, creator(req, umask));
        let special = match mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some(FileType::Fifo),
            libc::S_IFSOCK => Some(FileType::Socket),
            libc::S_IFCHR => Some(FileType::CharDevice),
            libc::S_IFBLK => Some(FileType::BlockDevice),
            _ => return reply.error(Errno::EINVAL),
        };
        if let Some(kind) = special {
            let r = self.run("mknod", self.vfs.mknod(parent.0, name(n), kind, perm, who, rdev));
            return self.entry(reply, r);
        }
        let r = self.run("mknod", async {
            let (attr, fh) = self.vfs.create(parent.0, name(n), perm, who, libc::O_EXCL).await?;
            self.vfs.release(fh).await?;
            Ok(attr)
        });
        self.entry(reply, r);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, n: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = self.run("mkdir", self.vfs.mkdir(parent.0, name(n), mode & 0o7777, creator(req, umask)));
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, self.run("unlink", self.vfs.unlink(parent.0, name(n))));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, self.run("rmdir", self.vfs.rmdir(parent.0, name(n))));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, n: &OsStr, target: &Path, reply: ReplyEntry) {
        let target = target.as_os_str().as_bytes();
        let r = self.run("symlink", self.vfs.symlink(parent.0, name(n), target, req.uid(), req.gid()));
        self.entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let fut = self.vfs.rename(parent.0, name(n), newparent.0, name(newname), flags.bits());
        Self::empty(reply, self.run("rename", fut));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = self.run("link", self.vfs.link(ino.0, newparent.0, name(newname)));
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.run("open", self.vfs.open(ino.0, flags.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.run("read", self.vfs.read(fh.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let setid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let fut = async {
            self.before_change(ino, fh, setid).await?;
            self.vfs.write(fh.0, offset, data).await
        };
        match self.run("write", fut) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let r = self.run("flush", self.vfs.close(fh.0, lock_owner.0));
        if r == Err(Errno::EIO) {
            // What this close could not write out (lost locks, a failed storage write) must
            // not stay readable from the kernel's page cache as if it were stored.
            forget_cached(&self.notifier, ino, None);
        }
        Self::empty(reply, r);
    }

    fn fallocate(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let fut = async {
            self.before_change(ino, fh, req.uid() != 0).await?;
            self.vfs.fallocate(fh.0, offset, length, mode).await
        };
        Self::empty(reply, self.run("fallocate", fut));
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let fut = async {
            self.before_change(ino_out, fh_out, req.uid() != 0).await?;
            self.vfs.copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len).await
        };
        match self.run("copy_file_range", fut) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let want = match whence {
            libc::SEEK_DATA => SeekFor::Data,
            libc::SEEK_HOLE => SeekFor::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else { return reply.error(Errno::ENXIO) };
        match self.run("lseek", self.vfs.seek(fh.0, offset, want)) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(e),
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let Some(spec) = lock_spec(lock_owner, start, end, typ, pid) else { return reply.error(Errno::EINVAL) };
        match self.run("getlk", self.vfs.getlk(fh.0, spec)) {
            Ok(Some(c)) => {
                let typ = if c.kind == LockKind::Write as i32 { libc::F_WRLCK } else { libc::F_RDLCK };
                reply.locked(c.start, c.end, typ, c.pid)
            }
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(spec) = lock_spec(lock_owner, start, end, typ, pid) else { return reply.error(Errno::EINVAL) };
        if !sleep {
            let r = self.run("setlk", self.vfs.setlk(fh.0, spec, false, || false));
            if r.is_ok() {
                forget_cached(&self.notifier, ino, Some(&spec));
            }
            return Self::empty(reply, r);
        }
        // A wait can last: it goes on as a task, so it holds no FUSE thread. fuser answers the
        // kernel's interrupts with ENOSYS, so a signal for the waiting thread is seen in /proc.
        let (vfs, notifier) = (self.vfs.clone(), self.notifier.clone());
        let thread = req.pid();
        self.rt.spawn(async move {
            let started = Instant::now();
            let r = vfs.setlk(fh.0, spec, true, || crate::signals::pending(thread)).await;
            if r.is_ok() {
                forget_cached(&notifier, ino, Some(&spec));
            }
            Self::empty(reply, observe("setlkw", started, r));
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(reply, self.run("release", self.vfs.release(fh.0)));
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::empty(reply, self.run("fsync", self.vfs.flush(fh.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.run("opendir", self.vfs.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listing = match self.vfs.listing(fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(Errno::from_i32(crate::errno_of(&e))),
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = listing entries; each entry carries the next offset.
        let dots = [(ino.0, fuser::FileType::Directory, &b"."[..]), (ino.0, fuser::FileType::Directory, &b".."[..])];
        let entries = dots.into_iter().chain(listing.iter().map(|e| (e.inode, kernel_type(e.file_type), e.name.as_slice())));
        for (i, (inode, kind, n)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(inode), i as u64 + 1, kind, OsStr::from_bytes(n)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every metadata change is durable in the KV before it is acknowledged.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.run("statfs", self.vfs.statfs()) {
            Ok(s) => {
                let b = u64::from(BLOCK);
                let free = s.free_bytes / b;
                reply.statfs(s.capacity_bytes / b, free, free, s.inodes + (1 << 32), 1 << 32, BLOCK, 255, BLOCK);
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(&self, req: &Request, parent: INodeNo, n: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        match self.run("create", self.vfs.create(parent.0, name(n), mode & 0o7777, creator(req, umask), flags)) {
            Ok((a, fh)) => reply.created(&self.ttl, &self.file_attr(&a), Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}
