//! The data-integrity run: 100,000 random reads, writes, truncates, fallocates (default,
//! KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE), copy_file_range calls and shared-mmap reads and writes
//! over two files of several chunks, each checked against an in-memory model, then the whole
//! files through a second mount. Once through the page cache and once with O_DIRECT.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ember_testkit::{errno, fuse_available, random_bytes, Cluster, Slots, Spec, TestRng};

static SLOTS: Slots = Slots::new(2);
/// Files stay below this size: six 1 MiB chunks, over two chains.
const MAX_SIZE: u64 = 6 << 20;
const PAGE: u64 = 4096;
const OPS: u64 = 100_000;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

/// A page-aligned buffer, as O_DIRECT wants one.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len.max(1), PAGE as usize).unwrap();
        // SAFETY: a non-zero size with a valid alignment.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        Aligned { ptr, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` holds `len` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(1), PAGE as usize).unwrap();
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

/// One file under test and its model.
struct Subject {
    file: File,
    model: Vec<u8>,
}

struct Run {
    files: [Subject; 2],
    rng: TestRng,
    direct: bool,
    step: u64,
}

impl Run {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n.max(1))
    }

    /// An offset and a length for I/O: page-aligned ones for O_DIRECT.
    fn range(&mut self, max_len: u64) -> (u64, u64) {
        let mut off = self.below(MAX_SIZE);
        let mut len = 1 + self.below(max_len);
        if self.direct {
            off = off / PAGE * PAGE;
            len = len.div_ceil(PAGE) * PAGE;
        }
        (off, len.min(MAX_SIZE - off))
    }

    fn pwrite(&mut self, i: usize) {
        let (off, len) = self.range(96 << 10);
        let data = random_bytes(self.step, len as usize);
        let mut buf = Aligned::zeroed(len as usize);
        buf.bytes().copy_from_slice(&data);
        let s = &mut self.files[i];
        let n = unsafe { libc::pwrite(s.file.as_raw_fd(), buf.ptr.cast(), len as usize, off as i64) };
        assert_eq!(n, len as isize, "step {}: pwrite of {len} at {off}: errno {}", self.step, errno());
        if s.model.len() < (off + len) as usize {
            s.model.resize((off + len) as usize, 0);
        }
        s.model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }

    fn pread(&mut self, i: usize) {
        let (off, len) = self.range(192 << 10);
        let mut buf = Aligned::zeroed(len as usize);
        let s = &self.files[i];
        let n = unsafe { libc::pread(s.file.as_raw_fd(), buf.ptr.cast(), len as usize, off as i64) };
        assert!(n >= 0, "step {}: pread: errno {}", self.step, errno());
        let want = &s.model[(off as usize).min(s.model.len())..((off + len) as usize).min(s.model.len())];
        assert_eq!(n as usize, want.len(), "step {}: pread of {len} at {off} from a {}-byte file", self.step, s.model.len());
        assert!(&buf.bytes()[..n as usize] == want, "step {}: pread of {len} at {off} differs from the model", self.step);
    }

    fn truncate(&mut self, i: usize) {
        let mut size = self.below(MAX_SIZE);
        if self.direct {
            size = size / PAGE * PAGE;
        }
        let s = &mut self.files[i];
        s.file.set_len(size).unwrap_or_else(|e| panic!("step {}: truncate to {size}: {e}", self.step));
        s.model.resize(size as usize, 0);
    }

    fn fallocate(&mut self, i: usize) {
        let (off, len) = self.range(512 << 10);
        let mode = match self.below(4) {
            0 => 0,
            1 => libc::FALLOC_FL_KEEP_SIZE,
            2 => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            _ => libc::FALLOC_FL_ZERO_RANGE,
        };
        let s = &mut self.files[i];
        let r = unsafe { libc::fallocate(s.file.as_raw_fd(), mode, off as i64, len as i64) };
        assert_eq!(r, 0, "step {}: fallocate mode {mode:#x} of {len} at {off}: errno {}", self.step, errno());
        let size = s.model.len() as u64;
        let end = off + len;
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 && off < size {
            s.model[off as usize..end.min(size) as usize].fill(0);
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > size {
            s.model.resize(end as usize, 0);
        }
    }

    fn copy_range(&mut self, from: usize) {
        let to = 1 - from;
        let (off_in, len) = self.range(256 << 10);
        let (off_out, _) = self.range(1);
        let len = len.min(MAX_SIZE - off_out);
        let size_in = self.files[from].model.len() as u64;
        let expect = len.min(size_in.saturating_sub(off_in));
        let (fd_in, fd_out) = (self.files[from].file.as_raw_fd(), self.files[to].file.as_raw_fd());
        if expect == 0 {
            let (mut i, mut o) = (off_in as i64, off_out as i64);
            let n = unsafe { libc::copy_file_range(fd_in, &mut i, fd_out, &mut o, len as usize, 0) };
            assert_eq!(n, 0, "step {}: copy_file_range from {off_in}, past the end of a {size_in}-byte file", self.step);
            return;
        }
        let mut done = 0u64;
        while done < expect {
            let (mut i, mut o) = ((off_in + done) as i64, (off_out + done) as i64);
            let n = unsafe { libc::copy_file_range(fd_in, &mut i, fd_out, &mut o, (expect - done) as usize, 0) };
            assert!(n > 0, "step {}: copy_file_range of {len} at {off_in} to {off_out}: {n}, errno {}", self.step, errno());
            done += n as u64;
        }
        let bytes = self.files[from].model[off_in as usize..(off_in + expect) as usize].to_vec();
        let out = &mut self.files[to].model;
        if (out.len() as u64) < off_out + expect {
            out.resize((off_out + expect) as usize, 0);
        }
        out[off_out as usize..(off_out + expect) as usize].copy_from_slice(&bytes);
    }

    /// Maps part of the file (inside its length), writes or reads through the mapping.
    fn mmap(&mut self, i: usize, write: bool) {
        let size = self.files[i].model.len() as u64;
        if size < PAGE {
            return;
        }
        let start = self.below(size / PAGE) * PAGE;
        let len = (1 + self.below(16 * PAGE)).min(size - start);
        let data = random_bytes(self.step, len as usize);
        let s = &mut self.files[i];
        // SAFETY: a shared mapping of `len` bytes inside the file, unmapped before returning;
        // the bytes are only touched through the slice while it is mapped.
        unsafe {
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            let p = libc::mmap(std::ptr::null_mut(), len as usize, prot, libc::MAP_SHARED, s.file.as_raw_fd(), start as i64);
            assert_ne!(p, libc::MAP_FAILED, "step {}: mmap of {len} at {start}: errno {}", self.step, errno());
            let view = std::slice::from_raw_parts_mut(p.cast::<u8>(), len as usize);
            let at = start as usize..(start + len) as usize;
            if write {
                view.copy_from_slice(&data);
                assert_eq!(libc::msync(p, len as usize, libc::MS_SYNC), 0, "step {}: msync: errno {}", self.step, errno());
                s.model[at].copy_from_slice(&data);
            } else {
                assert!(*view == s.model[at], "step {}: mapped bytes at {start} differ from the model", self.step);
            }
            libc::munmap(p, len as usize);
        }
    }

    fn step_once(&mut self) {
        let i = self.below(2) as usize;
        match self.below(100) {
            0..=29 => self.pwrite(i),
            30..=54 => self.pread(i),
            55..=61 => self.truncate(i),
            62..=73 => self.fallocate(i),
            74..=83 => self.copy_range(i),
            84..=91 => self.mmap(i, true),
            92..=97 => self.mmap(i, false),
            _ => self.files[i].file.sync_all().unwrap(),
        }
    }
}

fn open(path: &Path, direct: bool) -> File {
    let flags = if direct { libc::O_DIRECT } else { 0 };
    OpenOptions::new().read(true).write(true).create(true).custom_flags(flags).open(path).unwrap()
}

fn run(direct: bool, seed: u64) {
    let _slot = SLOTS.acquire();
    // Metadata durability is not what this run is about: periodic keeps it short.
    let spec = Spec { storage_nodes: 1, targets: 2, replicas: 1, chain_mode: false, periodic_meta: true, client_session_timeout_ms: None };
    let cluster = Cluster::start_spec(bin(), spec);
    let mount = cluster.mount();
    let names = ["a", "b"];
    let files = names.map(|n| Subject { file: open(&mount.join(n), direct), model: Vec::new() });
    let mut run = Run { files, rng: TestRng::new(seed), direct, step: 0 };
    for step in 0..OPS {
        run.step = step;
        run.step_once();
    }
    for s in &run.files {
        s.file.sync_all().unwrap();
    }
    let fresh = cluster.mount();
    for (n, s) in names.iter().zip(&run.files) {
        let back = std::fs::read(fresh.join(n)).unwrap();
        assert_eq!(back.len(), s.model.len(), "length of {n} through a second mount");
        assert!(back == s.model, "{n} through a second mount differs from the model");
    }
}

#[test]
fn a_hundred_thousand_random_operations_match_the_model() {
    if fuse_available() {
        run(false, 0x5eed_0001);
    }
}

#[test]
fn a_hundred_thousand_random_operations_with_o_direct_match_the_model() {
    if fuse_available() {
        run(true, 0x5eed_0002);
    }
}
