//! The FUSE wire format (`linux/fuse.h`, protocol 7.38): request decoding and reply encoding.
//!
//! Requests are read field by field from the byte buffer, never cast in place, so a short or
//! malformed request is an `EINVAL` reply, not undefined behaviour. All values are in the
//! host's byte order, as the kernel writes them.

use std::time::Duration;

pub const KERNEL_MAJOR: u32 = 7;
/// The newest minor version this module speaks; an older kernel's is used when it is lower.
pub const KERNEL_MINOR: u32 = 38;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

/// Opcodes this mount answers. Others get ENOSYS, which tells the kernel to stop asking; so
/// does INTERRUPT, since a waiting lock request watches its caller's signals itself.
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const TMPFILE: u32 = 51;
}

/// INIT flags (the high 32 bits are the `flags2` word).
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const POSIX_LOCKS: u64 = 1 << 1;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const FLOCK_LOCKS: u64 = 1 << 10;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const SETXATTR_EXT: u64 = 1 << 29;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
pub const LK_FLOCK: u32 = 1 << 0;
pub const SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;
pub const NOTIFY_INVAL_INODE: i32 = 2;
/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
pub const DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

/// What every request carries.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A byte-range lock as the kernel sends it.
#[derive(Clone, Copy, Debug)]
pub struct FileLock {
    pub fh: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub typ: u32,
    pub pid: u32,
    /// flock(2) rather than fcntl(2).
    pub flock: bool,
}

/// `fuse_setattr_in`, with times as nanoseconds and the `*_NOW` bits resolved by the caller.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttrIn {
    pub valid: u32,
    pub size: u64,
    pub atime: (u64, u32),
    pub mtime: (u64, u32),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `fuse_create_in` (create and tmpfile).
#[derive(Clone, Copy, Debug)]
pub struct CreateIn {
    pub flags: u32,
    pub mode: u32,
    pub umask: u32,
}

/// One decoded request.
#[derive(Debug)]
pub enum Op<'a> {
    Init { major: u32, minor: u32, max_readahead: u32, flags: u64 },
    Destroy,
    /// Needs no reply (FORGET, BATCH_FORGET): this mount keeps no per-lookup state.
    NoReply,
    Lookup { name: &'a [u8] },
    Getattr,
    Setattr(SetAttrIn),
    Readlink,
    Symlink { name: &'a [u8], target: &'a [u8] },
    Mknod { name: &'a [u8], mode: u32, rdev: u32, umask: u32 },
    Mkdir { name: &'a [u8], mode: u32, umask: u32 },
    Unlink { name: &'a [u8] },
    Rmdir { name: &'a [u8] },
    Rename { name: &'a [u8], newdir: u64, newname: &'a [u8], flags: u32 },
    Link { inode: u64, newname: &'a [u8] },
    Open { flags: u32 },
    Opendir,
    Read { fh: u64, offset: u64, size: u32 },
    Readdir { fh: u64, offset: u64, size: u32 },
    Write { fh: u64, offset: u64, write_flags: u32, data: &'a [u8] },
    Statfs,
    Release { fh: u64 },
    Releasedir { fh: u64 },
    Fsync { fh: u64 },
    Fsyncdir,
    Setxattr { name: &'a [u8], value: &'a [u8], flags: u32, setxattr_flags: u32 },
    Getxattr { name: &'a [u8], size: u32 },
    Listxattr { size: u32 },
    Removexattr { name: &'a [u8] },
    Flush { fh: u64, owner: u64 },
    Getlk(FileLock),
    Setlk { lock: FileLock, sleep: bool },
    Create { name: &'a [u8], args: CreateIn },
    Tmpfile(CreateIn),
    Fallocate { fh: u64, offset: u64, length: u64, mode: u32 },
    Lseek { fh: u64, offset: u64, whence: u32 },
    CopyFileRange { fh_in: u64, off_in: u64, inode_out: u64, fh_out: u64, off_out: u64, len: u64, flags: u64 },
    Unsupported,
}

/// Reads fixed-size fields and NUL-terminated names off a request body.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    /// A name up to its NUL, which is consumed too.
    fn name(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let name = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(name)
    }
}

/// Splits a request into its header and body; `None` when the buffer is not a whole request.
pub fn split(buf: &[u8]) -> Option<(Header, &[u8])> {
    let (len, header) = parse_header(buf)?;
    if len != buf.len() || len < IN_HEADER_LEN {
        return None;
    }
    Some((header, &buf[IN_HEADER_LEN..]))
}

/// A `fuse_in_header` and the request length it states.
pub fn parse_header(buf: &[u8]) -> Option<(usize, Header)> {
    let mut f = Fields(buf);
    let len = f.u32()? as usize;
    let opcode = f.u32()?;
    let unique = f.u64()?;
    let nodeid = f.u64()?;
    let (uid, gid, pid) = (f.u32()?, f.u32()?, f.u32()?);
    f.skip(4)?;
    Some((len, Header { opcode, unique, nodeid, uid, gid, pid }))
}

/// The size of a request's fixed argument struct (`fuse_*_in`), which FUSE over io_uring
/// delivers apart from the rest of the body; 0 for requests that start with a name or carry
/// nothing.
pub fn fixed_args_len(opcode: u32, setxattr_ext: bool) -> usize {
    use opcode::*;
    match opcode {
        MKDIR | RENAME | LINK | OPEN | OPENDIR | GETXATTR | LISTXATTR => 8,
        SETXATTR if setxattr_ext => 16,
        SETXATTR => 8,
        GETATTR | MKNOD | FSYNC | FSYNCDIR | CREATE | TMPFILE | RENAME2 => 16,
        RELEASE | RELEASEDIR | FLUSH | LSEEK => 24,
        FALLOCATE => 32,
        READ | READDIR | WRITE => 40,
        GETLK | SETLK | SETLKW => 48,
        COPY_FILE_RANGE => 56,
        SETATTR => 88,
        _ => 0,
    }
}

/// Decodes a request body; `None` when it is too short for its opcode. `setxattr_ext` says
/// whether the kernel agreed to the longer `fuse_setxattr_in`.
pub fn decode(opcode: u32, body: &[u8], setxattr_ext: bool) -> Option<Op<'_>> {
    use opcode::*;
    let mut f = Fields(body);
    let op = match opcode {
        INIT => decode_init(&mut f)?,
        DESTROY => Op::Destroy,
        FORGET | BATCH_FORGET => Op::NoReply,
        LOOKUP => Op::Lookup { name: f.name()? },
        GETATTR => Op::Getattr,
        SETATTR => Op::Setattr(decode_setattr(&mut f)?),
        READLINK => Op::Readlink,
        SYMLINK => Op::Symlink { name: f.name()?, target: f.name()? },
        MKNOD => {
            let (mode, rdev, umask) = (f.u32()?, f.u32()?, f.u32()?);
            f.skip(4)?;
            Op::Mknod { mode, rdev, umask, name: f.name()? }
        }
        MKDIR => Op::Mkdir { mode: f.u32()?, umask: f.u32()?, name: f.name()? },
        UNLINK => Op::Unlink { name: f.name()? },
        RMDIR => Op::Rmdir { name: f.name()? },
        RENAME => Op::Rename { newdir: f.u64()?, flags: 0, name: f.name()?, newname: f.name()? },
        RENAME2 => {
            let (newdir, flags) = (f.u64()?, f.u32()?);
            f.skip(4)?;
            Op::Rename { newdir, flags, name: f.name()?, newname: f.name()? }
        }
        LINK => Op::Link { inode: f.u64()?, newname: f.name()? },
        OPEN => Op::Open { flags: f.u32()? },
        OPENDIR => Op::Opendir,
        READ | READDIR => {
            let (fh, offset, size) = (f.u64()?, f.u64()?, f.u32()?);
            f.skip(20)?;
            if opcode == READ {
                Op::Read { fh, offset, size }
            } else {
                Op::Readdir { fh, offset, size }
            }
        }
        WRITE => {
            let (fh, offset, size, write_flags) = (f.u64()?, f.u64()?, f.u32()?, f.u32()?);
            f.skip(16)?;
            Op::Write { fh, offset, write_flags, data: f.take(size as usize)? }
        }
        STATFS => Op::Statfs,
        RELEASE => Op::Release { fh: f.u64()? },
        RELEASEDIR => Op::Releasedir { fh: f.u64()? },
        FSYNC => Op::Fsync { fh: f.u64()? },
        FSYNCDIR => Op::Fsyncdir,
        SETXATTR => decode_setxattr(&mut f, setxattr_ext)?,
        GETXATTR => {
            let size = f.u32()?;
            f.skip(4)?;
            Op::Getxattr { size, name: f.name()? }
        }
        LISTXATTR => Op::Listxattr { size: f.u32()? },
        REMOVEXATTR => Op::Removexattr { name: f.name()? },
        FLUSH => {
            let fh = f.u64()?;
            f.skip(8)?;
            Op::Flush { fh, owner: f.u64()? }
        }
        GETLK => Op::Getlk(decode_lock(&mut f)?),
        SETLK | SETLKW => Op::Setlk { lock: decode_lock(&mut f)?, sleep: opcode == SETLKW },
        CREATE => {
            let args = decode_create(&mut f)?;
            Op::Create { args, name: f.name()? }
        }
        TMPFILE => Op::Tmpfile(decode_create(&mut f)?),
        FALLOCATE => Op::Fallocate { fh: f.u64()?, offset: f.u64()?, length: f.u64()?, mode: f.u32()? },
        LSEEK => Op::Lseek { fh: f.u64()?, offset: f.u64()?, whence: f.u32()? },
        COPY_FILE_RANGE => Op::CopyFileRange {
            fh_in: f.u64()?,
            off_in: f.u64()?,
            inode_out: f.u64()?,
            fh_out: f.u64()?,
            off_out: f.u64()?,
            len: f.u64()?,
            flags: f.u64()?,
        },
        _ => Op::Unsupported,
    };
    Some(op)
}

fn decode_init<'a>(f: &mut Fields<'a>) -> Option<Op<'a>> {
    let (major, minor) = (f.u32()?, f.u32()?);
    if major != KERNEL_MAJOR || minor < 36 {
        // An older or newer protocol: answered with our version, nothing else is read.
        return Some(Op::Init { major, minor, max_readahead: 0, flags: 0 });
    }
    let (max_readahead, flags) = (f.u32()?, f.u32()?);
    let flags2 = f.u32()?;
    Some(Op::Init { major, minor, max_readahead, flags: u64::from(flags) | u64::from(flags2) << 32 })
}

fn decode_setattr(f: &mut Fields<'_>) -> Option<SetAttrIn> {
    let valid = f.u32()?;
    f.skip(12)?;
    let size = f.u64()?;
    f.skip(8)?;
    let (atime, mtime) = (f.u64()?, f.u64()?);
    f.skip(8)?;
    let (atime_ns, mtime_ns) = (f.u32()?, f.u32()?);
    f.skip(4)?;
    let mode = f.u32()?;
    f.skip(4)?;
    let (uid, gid) = (f.u32()?, f.u32()?);
    Some(SetAttrIn { valid, size, atime: (atime, atime_ns), mtime: (mtime, mtime_ns), mode, uid, gid })
}

fn decode_setxattr<'a>(f: &mut Fields<'a>, ext: bool) -> Option<Op<'a>> {
    let (size, flags) = (f.u32()?, f.u32()?);
    let setxattr_flags = if ext {
        let v = f.u32()?;
        f.skip(4)?;
        v
    } else {
        0
    };
    let name = f.name()?;
    Some(Op::Setxattr { name, value: f.take(size as usize)?, flags, setxattr_flags })
}

fn decode_lock(f: &mut Fields<'_>) -> Option<FileLock> {
    let (fh, owner, start, end, typ, pid) = (f.u64()?, f.u64()?, f.u64()?, f.u64()?, f.u32()?, f.u32()?);
    let lk_flags = f.u32()?;
    Some(FileLock { fh, owner, start, end, typ, pid, flock: lk_flags & LK_FLOCK != 0 })
}

fn decode_create(f: &mut Fields<'_>) -> Option<CreateIn> {
    let (flags, mode, umask) = (f.u32()?, f.u32()?, f.u32()?);
    f.skip(4)?;
    Some(CreateIn { flags, mode, umask })
}

/// A file's attributes as the kernel takes them (`fuse_attr`); `mode` includes the type bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelAttr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// Appends native-endian fields to a reply body.
#[derive(Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }

    fn attr(&mut self, a: &KernelAttr) -> &mut Self {
        let [at, mt, ct] = [a.atime_ns, a.mtime_ns, a.ctime_ns].map(split_ns);
        self.u64(a.ino).u64(a.size).u64(a.blocks).u64(at.0).u64(mt.0).u64(ct.0);
        self.u32(at.1).u32(mt.1).u32(ct.1);
        self.u32(a.mode).u32(a.nlink).u32(a.uid).u32(a.gid).u32(a.rdev).u32(a.blksize).u32(0)
    }

    fn valid(&mut self, ttl: Duration) -> &mut Self {
        self.u64(ttl.as_secs())
    }

    /// `fuse_entry_out`; an `ino` of 0 is a negative entry, cached for `ttl`.
    pub fn entry(a: &KernelAttr, ttl: Duration) -> Out {
        let mut o = Out::default();
        o.u64(a.ino).u64(0).valid(ttl).valid(ttl).u32(ttl.subsec_nanos()).u32(ttl.subsec_nanos()).attr(a);
        o
    }

    /// `fuse_attr_out`.
    pub fn attr_out(a: &KernelAttr, ttl: Duration) -> Out {
        let mut o = Out::default();
        o.valid(ttl).u32(ttl.subsec_nanos()).u32(0).attr(a);
        o
    }

    /// `fuse_open_out`.
    pub fn open(fh: u64) -> Out {
        let mut o = Out::default();
        o.u64(fh).u32(0).u32(0);
        o
    }

    /// `fuse_entry_out` followed by `fuse_open_out`, the reply to create and tmpfile.
    pub fn created(a: &KernelAttr, ttl: Duration, fh: u64) -> Out {
        let mut o = Out::entry(a, ttl);
        o.0.extend_from_slice(&Out::open(fh).0);
        o
    }

    /// `fuse_write_out`, `fuse_getxattr_out`: a count and padding.
    pub fn count(n: u32) -> Out {
        let mut o = Out::default();
        o.u32(n).u32(0);
        o
    }

    pub fn lseek(offset: u64) -> Out {
        let mut o = Out::default();
        o.u64(offset);
        o
    }

    /// `fuse_lk_out`.
    pub fn lock(start: u64, end: u64, typ: u32, pid: u32) -> Out {
        let mut o = Out::default();
        o.u64(start).u64(end).u32(typ).u32(pid);
        o
    }

    /// `fuse_statfs_out`.
    pub fn statfs(s: &StatFs) -> Out {
        let mut o = Out::default();
        o.u64(s.blocks).u64(s.bfree).u64(s.bavail).u64(s.files).u64(s.ffree);
        o.u32(s.bsize).u32(s.namelen).u32(s.frsize).u32(0).zeros(24);
        o
    }

    /// `fuse_init_out` for protocol `minor`.
    pub fn init(minor: u32, reply: &InitReply) -> Out {
        let mut o = Out::default();
        o.u32(KERNEL_MAJOR).u32(minor).u32(reply.max_readahead).u32(reply.flags as u32);
        o.u16(reply.max_background).u16(reply.congestion_threshold).u32(reply.max_write).u32(1);
        o.u16(reply.max_pages).u16(0).u32((reply.flags >> 32) as u32).u32(0).zeros(24);
        o
    }

    /// `fuse_notify_inval_inode_out`.
    pub fn inval_inode(ino: u64, offset: i64, len: i64) -> Out {
        let mut o = Out::default();
        o.u64(ino).u64(offset as u64).u64(len as u64);
        o
    }
}

/// What this mount answers to INIT.
#[derive(Clone, Copy, Debug)]
pub struct InitReply {
    pub flags: u64,
    pub max_readahead: u32,
    pub max_write: u32,
    pub max_pages: u16,
    pub max_background: u16,
    pub congestion_threshold: u16,
}

/// `fuse_kstatfs`.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Seconds and nanoseconds of a time in nanoseconds since the epoch; times before it have
/// negative seconds (stored two's complement) and nanoseconds counted forward.
fn split_ns(ns: i64) -> (u64, u32) {
    (ns.div_euclid(1_000_000_000) as u64, ns.rem_euclid(1_000_000_000) as u32)
}

/// A time from `fuse_setattr_in` as nanoseconds since the epoch.
pub fn join_ns((secs, nsec): (u64, u32)) -> i64 {
    (secs as i64).saturating_mul(1_000_000_000).saturating_add(i64::from(nsec))
}

/// Fills a READDIR reply: `fuse_dirent` records, each padded to 8 bytes, up to `size` bytes.
pub struct DirBuf {
    out: Out,
    size: usize,
}

impl DirBuf {
    pub fn new(size: u32) -> DirBuf {
        DirBuf { out: Out::default(), size: size as usize }
    }

    /// Adds an entry whose successor is at `next`; false when it does not fit.
    pub fn add(&mut self, ino: u64, next: u64, dtype: u32, name: &[u8]) -> bool {
        let len = (24 + name.len()).next_multiple_of(8);
        if self.out.0.len() + len > self.size {
            return false;
        }
        self.out.u64(ino).u64(next).u32(name.len() as u32).u32(dtype);
        self.out.0.extend_from_slice(name);
        self.out.zeros(len - 24 - name.len());
        true
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(opcode: u32, body: &[u8]) -> Vec<u8> {
        let mut o = Out::default();
        o.u32((IN_HEADER_LEN + body.len()) as u32).u32(opcode).u64(7).u64(1).u32(1000).u32(100).u32(42).u32(0);
        o.0.extend_from_slice(body);
        o.0
    }

    #[test]
    fn a_request_decodes_header_and_fields() {
        let mut body = Out::default();
        body.u32(0o644).u32(0).u32(0o022).u32(0);
        body.0.extend_from_slice(b"name\0");
        let buf = request(opcode::MKNOD, &body.0);
        let (h, rest) = split(&buf).unwrap();
        assert_eq!((h.opcode, h.unique, h.nodeid, h.uid, h.gid, h.pid), (opcode::MKNOD, 7, 1, 1000, 100, 42));
        match decode(h.opcode, rest, false).unwrap() {
            Op::Mknod { name, mode, umask, .. } => assert_eq!((name, mode, umask), (&b"name"[..], 0o644, 0o022)),
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn truncated_or_mislabelled_requests_are_refused() {
        let buf = request(opcode::LOOKUP, b"no-terminator");
        let (h, rest) = split(&buf).unwrap();
        assert!(decode(h.opcode, rest, false).is_none());
        let mut wrong_len = request(opcode::GETATTR, &[0; 16]);
        wrong_len[0] = 200;
        assert!(split(&wrong_len).is_none());
        assert!(split(&[0; 12]).is_none());
        let mut write = Out::default();
        write.u64(1).u64(0).u32(4096).u32(0).u64(0).u32(0).u32(0);
        write.0.extend_from_slice(&[1; 100]);
        assert!(decode(opcode::WRITE, &write.0, false).is_none(), "data shorter than its size");
    }

    #[test]
    fn setxattr_reads_the_extended_struct_only_when_agreed() {
        let mut ext = Out::default();
        ext.u32(3).u32(0).u32(SETXATTR_ACL_KILL_SGID).u32(0);
        ext.0.extend_from_slice(b"user.a\0abc");
        match decode(opcode::SETXATTR, &ext.0, true).unwrap() {
            Op::Setxattr { name, value, setxattr_flags, .. } => {
                assert_eq!((name, value, setxattr_flags), (&b"user.a"[..], &b"abc"[..], SETXATTR_ACL_KILL_SGID))
            }
            other => panic!("decoded as {other:?}"),
        }
        let mut short = Out::default();
        short.u32(3).u32(0);
        short.0.extend_from_slice(b"user.a\0abc");
        assert!(matches!(decode(opcode::SETXATTR, &short.0, false), Some(Op::Setxattr { value: b"abc", .. })));
    }

    #[test]
    fn times_before_the_epoch_split_with_forward_nanoseconds() {
        assert_eq!(split_ns(1_500_000_000), (1, 500_000_000));
        assert_eq!(split_ns(-1), ((-1i64) as u64, 999_999_999));
        assert_eq!(join_ns(split_ns(-2_250_000_000)), -2_250_000_000);
    }

    #[test]
    fn directory_entries_are_padded_and_bounded() {
        let mut d = DirBuf::new(72);
        assert!(d.add(5, 1, 4, b"."));
        assert!(d.add(6, 2, 4, b"abcdefghij"));
        assert!(!d.add(7, 3, 8, b"x"), "a third entry exceeds 72 bytes");
        let bytes = d.into_bytes();
        assert_eq!(bytes.len(), 32 + 40);
        assert_eq!(&bytes[56..66], b"abcdefghij");
    }

    #[test]
    fn replies_have_the_kernel_struct_sizes() {
        let a = KernelAttr::default();
        assert_eq!(Out::entry(&a, Duration::from_secs(1)).0.len(), 128);
        assert_eq!(Out::attr_out(&a, Duration::from_secs(1)).0.len(), 104);
        assert_eq!(Out::created(&a, Duration::ZERO, 9).0.len(), 144);
        let s = StatFs { blocks: 1, bfree: 1, bavail: 1, files: 1, ffree: 1, bsize: 4096, namelen: 255, frsize: 4096 };
        assert_eq!(Out::statfs(&s).0.len(), 80);
        let r = InitReply { flags: 0, max_readahead: 0, max_write: 0, max_pages: 0, max_background: 0, congestion_threshold: 0 };
        assert_eq!(Out::init(38, &r).0.len(), 64);
        assert_eq!(Out::lock(0, 0, 0, 0).0.len(), 24);
    }
}
