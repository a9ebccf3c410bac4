//! Harness for integration tests: a [`Cluster`] of real `ember` processes (mgmtd, meta,
//! storage) on loopback, each in its own process group and data directory, and [`Mount`]s of
//! it. Every process and mount is owned by a guard whose `Drop` kills the process group and
//! lazily unmounts, so a failing assertion leaves nothing behind.
//!
//! Services bind port 0 and publish the port they got in `<data>/<role>.addr`; the harness
//! waits for that file, never for a fixed sleep.

pub mod linearizable;

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether FUSE tests can run here. In CI (`CI` set) a missing prerequisite is a failure;
/// elsewhere the test is skipped with the reason printed.
pub fn fuse_available() -> bool {
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root")
    } else if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is missing")
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) if std::env::var_os("CI").is_some() => panic!("FUSE tests are required in CI: {r}"),
        Some(r) => {
            eprintln!("skipping FUSE test: {r}");
            false
        }
    }
}

/// Caps how many clusters run at once, so two cores are not oversubscribed.
pub struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

pub struct Slot<'a> {
    slots: &'a Slots,
}

impl Slots {
    pub const fn new(max: usize) -> Self {
        Slots { used: Mutex::new(0), freed: Condvar::new(), max }
    }

    pub fn acquire(&self) -> Slot<'_> {
        let mut used = lock(&self.used);
        while *used >= self.max {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += 1;
        Slot { slots: self }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *lock(&self.slots.used) -= 1;
        self.slots.freed.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One `ember <role>` process.
pub struct Proc {
    role: &'static str,
    args: Vec<String>,
    bin: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(bin: &Path, role: &'static str, args: Vec<String>, log: PathBuf) -> Proc {
        let mut p = Proc { role, args, bin: bin.to_owned(), log, child: None };
        p.start();
        p
    }

    fn start(&mut self) {
        let out = OpenOptions::new().create(true).append(true).open(&self.log).expect("open log");
        let err = out.try_clone().expect("clone log");
        let mut command = Command::new(&self.bin);
        // SAFETY: prctl(2) only, which is async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // A test runner killed outright must not leave daemons behind.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .arg(self.role)
            .args(&self.args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.role));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the orderly stop an operator would do.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// The last lines of this process's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits for a service to publish its bound address.
fn wait_addr(path: &Path, proc: &mut Proc) -> String {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return s.trim().to_owned();
            }
        }
        assert!(!proc.exited(), "{} exited during start-up:\n{}", proc.role, proc.log_tail());
        assert!(Instant::now() < deadline, "{} never wrote {}:\n{}", proc.role, path.display(), proc.log_tail());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Shape of a test cluster.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub storage_nodes: usize,
    pub targets: usize,
    /// 1: every target is a chain of its own. Otherwise it must equal `storage_nodes`: chain `i`
    /// is target `i` of every node.
    pub replicas: usize,
    /// Store-and-forward replication (the 3FS baseline) instead of fan-out.
    pub chain_mode: bool,
    /// Metadata acknowledged once in the OS (`--meta-durability periodic`) instead of on disk.
    pub periodic_meta: bool,
    /// mgmtd's client session timeout; `None` keeps its default.
    pub client_session_timeout_ms: Option<u64>,
}

/// mgmtd, one meta server and `storage_nodes` storage nodes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub mgmtd_addr: String,
    pub mgmtd: Proc,
    pub meta: Proc,
    pub storage: Vec<Proc>,
}

/// Data directory name of storage node `i` (the first keeps the single-node name).
pub fn storage_role(i: usize) -> String {
    if i == 0 {
        "storage".into()
    } else {
        format!("storage{i}")
    }
}

impl Cluster {
    /// One storage node with `targets` single-target chains.
    pub fn start(bin: &Path, targets: usize) -> Cluster {
        Cluster::start_spec(bin, Spec { storage_nodes: 1, targets, replicas: 1, chain_mode: false, periodic_meta: false, client_session_timeout_ms: None })
    }

    pub fn start_spec(bin: &Path, spec: Spec) -> Cluster {
        assert!(spec.replicas == 1 || spec.replicas == spec.storage_nodes, "unsupported test cluster {spec:?}");
        let dir = tempfile::Builder::new().prefix("ember-test-").tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let data = |r: &str| dir.path().join(r).display().to_string();
        let any = "127.0.0.1:0".to_string();

        let mut args = vec!["--data".into(), data("mgmtd"), "--listen".into(), any.clone(), "--metrics-listen".into(), any.clone()];
        if spec.replicas > 1 {
            args.push("--manual-chains".into());
        }
        if spec.chain_mode {
            args.extend(["--replication-mode".into(), "chain".into()]);
        }
        if let Some(ms) = spec.client_session_timeout_ms {
            args.extend(["--client-session-timeout-ms".into(), ms.to_string()]);
        }
        let mut mgmtd = Proc::spawn(bin, "mgmtd", args, logs.join("mgmtd.log"));
        let mgmtd_addr = wait_addr(&dir.path().join("mgmtd/mgmtd.addr"), &mut mgmtd);

        let service_args = |role: &str| {
            vec!["--data".into(), data(role), "--listen".into(), any.clone(), "--metrics-listen".into(), any.clone(), "--mgmtd".into(), mgmtd_addr.clone()]
        };
        let mut meta_args = service_args("meta");
        if spec.periodic_meta {
            meta_args.extend(["--meta-durability".into(), "periodic".into()]);
        }
        let mut meta = Proc::spawn(bin, "meta", meta_args, logs.join("meta.log"));
        let mut storage = Vec::new();
        for n in 0..spec.storage_nodes {
            let role = storage_role(n);
            let mut args = service_args(&role);
            for i in 0..spec.targets {
                args.extend(["--target".into(), format!("{}/target{i}", data(&role))]);
            }
            storage.push(Proc::spawn(bin, "storage", args, logs.join(format!("{role}.log"))));
        }
        wait_addr(&dir.path().join("meta/meta.addr"), &mut meta);
        for (n, proc) in storage.iter_mut().enumerate() {
            wait_addr(&dir.path().join(storage_role(n)).join("storage.addr"), proc);
        }
        let cluster = Cluster { dir, bin: bin.to_owned(), mgmtd_addr, mgmtd, meta, storage };
        if spec.replicas > 1 {
            for i in 0..spec.targets {
                let ids: Vec<String> = (0..spec.storage_nodes).map(|n| cluster.target_id(n, i).to_string()).collect();
                cluster.admin(&["create-chain", "--targets", &ids.join(",")]);
            }
        }
        cluster
    }

    /// Id mgmtd gave target `i` of storage node `node`.
    pub fn target_id(&self, node: usize, i: usize) -> u32 {
        let path = self.dir.path().join(storage_role(node)).join(format!("target{i}/target.id"));
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no target id in {}", path.display()))
    }

    /// Runs `ember admin --mgmtd <addr> <args>` and returns its stdout; panics on failure.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .args(["admin", "--mgmtd", &self.mgmtd_addr])
            .args(args)
            .output()
            .expect("run ember admin");
        assert!(out.status.success(), "ember admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Address file of a service; removed before a restart so the new address is awaited.
    fn addr_file(&self, role: &str, file: &str) -> PathBuf {
        self.dir.path().join(role).join(file)
    }

    pub fn restart_meta(&mut self) {
        let f = self.addr_file("meta", "meta.addr");
        let _ = std::fs::remove_file(&f);
        self.meta.restart();
        wait_addr(&f, &mut self.meta);
    }

    /// Restarts storage node `n` (killing it first if it runs).
    pub fn restart_storage(&mut self, n: usize) {
        let f = self.addr_file(&storage_role(n), "storage.addr");
        let _ = std::fs::remove_file(&f);
        self.storage[n].restart();
        wait_addr(&f, &mut self.storage[n]);
    }

    /// The value of one sample (`name{labels}` as printed) on storage node `node`'s
    /// `/metrics`; 0 if it is absent or the node does not answer.
    pub fn storage_metric(&self, node: usize, sample: &str) -> u64 {
        self.metric(&storage_role(node), sample)
    }

    /// Write requests storage node 0 has served: what a test of "no storage request" counts.
    pub fn storage_writes(&self) -> u64 {
        self.storage_metric(0, "ember_rpc_seconds_count{method=\"storage.write\"}")
    }

    /// Like [`storage_metric`](Self::storage_metric), on the meta server.
    pub fn meta_metric(&self, sample: &str) -> u64 {
        self.metric("meta", sample)
    }

    fn metric(&self, role: &str, sample: &str) -> u64 {
        use std::io::{Read, Write};
        let Ok(addr) = std::fs::read_to_string(self.dir.path().join(role).join("metrics.addr")) else { return 0 };
        let Ok(mut s) = std::net::TcpStream::connect(addr.trim()) else { return 0 };
        let mut text = String::new();
        if s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").and_then(|()| s.read_to_string(&mut text)).is_err() {
            return 0;
        }
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    }

    pub fn mount(&self) -> Mount {
        Mount::start(&self.bin, &self.mgmtd_addr, self.dir.path(), &[])
    }

    /// A mount started with extra `ember mount` flags.
    pub fn mount_with(&self, flags: &[&str]) -> Mount {
        Mount::start(&self.bin, &self.mgmtd_addr, self.dir.path(), flags)
    }

    /// Log tails of every service, for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- mgmtd\n{}\n--- meta\n{}", self.mgmtd.log_tail(), self.meta.log_tail());
        for (n, s) in self.storage.iter().enumerate() {
            out.push_str(&format!("\n--- {}\n{}", storage_role(n), s.log_tail()));
        }
        out
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A FUSE mount of a cluster, served by an `ember mount` process.
pub struct Mount {
    pub path: PathBuf,
    pub proc: Proc,
}

impl Mount {
    /// Mounts the cluster whose mgmtd listens at `mgmtd` on a new directory in `dir` (its log
    /// in `dir/logs`), and waits until the kernel shows the mount.
    pub fn start(bin: &Path, mgmtd: &str, dir: &Path, flags: &[&str]) -> Mount {
        let path = dir.join(format!("mnt-{}", unique()));
        std::fs::create_dir_all(&path).expect("mountpoint");
        std::fs::create_dir_all(dir.join("logs")).expect("logs dir");
        let mut args = vec![path.display().to_string(), "--mgmtd".into(), mgmtd.to_owned(), "--metrics-listen".into(), String::new()];
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let log = dir.join("logs").join(format!("mount-{}.log", unique()));
        let mut proc = Proc::spawn(bin, "mount", args, log);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !is_mounted(&path) {
            assert!(!proc.exited(), "mount exited during start-up:\n{}", proc.log_tail());
            assert!(Instant::now() < deadline, "mount never appeared:\n{}", proc.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount { path, proc }
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Everything the mount logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// Crash the FUSE daemon and clear the dead mount, as an operator would after a crash.
    pub fn kill9(&mut self) {
        self.proc.kill9();
        lazy_unmount(&self.path);
    }

    /// Orderly unmount through SIGTERM; returns whether the daemon exited cleanly.
    pub fn unmount(&mut self) -> bool {
        let clean = self.proc.terminate().is_some_and(|s| s.success());
        clean && !is_mounted(&self.path)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.proc.kill9();
        lazy_unmount(&self.path);
    }
}

/// Whether `path` is a mount point, per the kernel's mount table.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.display().to_string();
    table.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

pub fn lazy_unmount(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// A forked copy of this process running `f`, whose result is the child's exit status
/// (0-255): a process of its own, with its own POSIX lock owner and signals. `f` runs in a
/// forked copy of a threaded process, so it must not allocate: prepare paths and buffers
/// before, and make plain system calls in it. Dropping it kills the child.
pub struct Forked {
    pid: libc::pid_t,
    reaped: bool,
}

impl Forked {
    pub fn start(f: impl FnOnce() -> i32) -> Forked {
        // SAFETY: the child runs `f` (plain system calls, by contract) and exits without
        // unwinding.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            unsafe { libc::_exit(f()) };
        }
        Forked { pid, reaped: false }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The exit status if the child has ended; panics if a signal ended it.
    pub fn try_wait(&mut self) -> Option<i32> {
        self.reap(libc::WNOHANG).map(|status| {
            assert!(libc::WIFEXITED(status), "child was killed by signal {}", libc::WTERMSIG(status));
            libc::WEXITSTATUS(status)
        })
    }

    pub fn wait(mut self) -> i32 {
        let status = self.reap(0).expect("waitpid");
        assert!(libc::WIFEXITED(status), "child was killed by signal {}", libc::WTERMSIG(status));
        libc::WEXITSTATUS(status)
    }

    /// Sends SIGKILL and waits up to `limit` for the child to be gone; returns whether it is.
    pub fn kill9(&mut self, limit: Duration) -> bool {
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let deadline = Instant::now() + limit;
        while self.reap(libc::WNOHANG).is_none() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn reap(&mut self, flags: i32) -> Option<i32> {
        if self.reaped {
            return None;
        }
        let mut status = 0;
        if unsafe { libc::waitpid(self.pid, &mut status, flags) } != self.pid {
            return None;
        }
        self.reaped = true;
        Some(status)
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if !self.reaped {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.reap(0);
        }
    }
}

/// Runs `f` in a child process as user and group `uid` (no supplementary groups) and returns
/// its result: how a test, running as root, acts as another user. `f` is bound as in
/// [`Forked::start`].
pub fn as_user(uid: u32, f: impl FnOnce() -> i32) -> i32 {
    Forked::start(move || {
        // SAFETY: plain system calls in the forked child.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setresgid(uid, uid, uid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
                return 255;
            }
        }
        f()
    })
    .wait()
}

/// The errno of the last failed system call of this thread (0 if none is known). Allocates
/// nothing, so a [`Forked`] child may call it.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A path as a C string, for calling libc directly.
pub fn cpath(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("a path has no NUL byte")
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = TestRng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A seeded xorshift generator: the same seed gives the same sequence on every run.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
