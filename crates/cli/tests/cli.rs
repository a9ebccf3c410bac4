//! The `ember` command line: help, default configs, `up` from start to stop and back again,
//! and `admin status`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_testkit::{fuse_available, is_mounted, lazy_unmount};

fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

#[test]
fn every_command_has_help_and_roles_print_a_parsable_default_config() {
    for cmd in ["up", "mgmtd", "meta", "storage", "mount", "admin"] {
        let out = ember().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{cmd} --help");
    }
    for role in ["up", "mgmtd", "meta", "storage", "mount"] {
        let out = ember().args([role, "--print-default-config"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let parsed: Result<toml::Table, _> = toml::from_str(&text);
        assert!(parsed.is_ok(), "{role} default config is not TOML:\n{text}");
    }
}

#[test]
fn bad_config_is_a_usage_error_and_unreachable_mgmtd_has_its_own_code() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = 5\nnot_a_field = true\n").unwrap();
    let out = ember().args(["mgmtd", "--config", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ember().args(["admin", "status", "--mgmtd", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_mount_that_cannot_reach_mgmtd_yet_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = ember()
        .args(["mount", mnt.to_str().unwrap(), "--mgmtd", "127.0.0.1:1", "--metrics-listen", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the mount ignored SIGTERM while connecting");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// Fetches `/metrics` from the address a service published.
fn scrape(addr_file: &Path) -> String {
    use std::io::{Read, Write};
    let addr = std::fs::read_to_string(addr_file).unwrap();
    let mut s = std::net::TcpStream::connect(addr.trim()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    out
}

struct Up {
    child: std::process::Child,
    mnt: std::path::PathBuf,
}

impl Up {
    fn start(data: &Path, mnt: &Path) -> Up {
        Up::start_with(data, mnt, &[])
    }

    fn start_with(data: &Path, mnt: &Path, extra: &[&str]) -> Up {
        let child = ember()
            .args(["up", "--any-port", "--targets", "2"])
            .args(extra)
            .arg("--data")
            .arg(data)
            .arg("--mount")
            .arg(mnt)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut up = Up { child, mnt: mnt.to_owned() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(mnt) {
            assert!(up.child.try_wait().unwrap().is_none(), "ember up exited early");
            assert!(Instant::now() < deadline, "ember up never mounted");
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    }

    fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGKILL: `up`'s roles get SIGTERM from the kernel (parent-death signal).
        let _ = self.child.kill();
        let _ = self.child.wait();
        lazy_unmount(&self.mnt);
    }
}

#[test]
fn up_serves_stops_cleanly_and_comes_back_with_the_same_files() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));

    let up = Up::start(&data, &mnt);
    std::fs::create_dir(mnt.join("kept")).unwrap();
    std::fs::write(mnt.join("kept/file"), b"across restarts").unwrap();
    // Past the inline limit, so storage serves it.
    let big = ember_testkit::random_bytes(5, 100_000);
    std::fs::write(mnt.join("kept/big"), &big).unwrap();

    let addr = std::fs::read_to_string(data.join("mgmtd/mgmtd.addr")).unwrap();
    let out = ember().args(["admin", "status", "--json", "--mgmtd", addr.trim()]).output().unwrap();
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 2);
    let targets = status["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert!(targets.iter().all(|t| t["state"] == "serving"), "{status}");
    assert_eq!(status["chains"].as_array().unwrap().len(), 2);
    let out = ember().args(["admin", "status", "--mgmtd", addr.trim()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("serving"));
    for role in ["mgmtd", "meta", "storage"] {
        let metrics = scrape(&data.join(role).join("metrics.addr"));
        assert!(metrics.contains("ember_rpc_requests_total"), "{role} /metrics:\n{metrics}");
    }

    assert!(up.stop().success());
    assert!(!is_mounted(&mnt), "mount left behind");

    let up = Up::start(&data, &mnt);
    assert_eq!(std::fs::read(mnt.join("kept/file")).unwrap(), b"across restarts");
    assert!(std::fs::read(mnt.join("kept/big")).unwrap() == big);
    assert!(up.stop().success());
}

fn admin(addr: &str, args: &[&str]) -> std::process::Output {
    ember().args(["admin", "--mgmtd", addr]).args(args).output().unwrap()
}

#[test]
fn up_with_several_storage_nodes_stripes_files_over_all_of_them() {
    if !fuse_available() {
        return;
    }
    let refused = ember().args(["up", "--replicas", "4", "--storage-nodes", "3"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at least as many storage nodes"));

    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let up = Up::start_with(&data, &mnt, &["--storage-nodes", "3"]);
    let addr = std::fs::read_to_string(data.join("mgmtd/mgmtd.addr")).unwrap();
    let addr = addr.trim();

    let content = ember_testkit::random_bytes(9, 9 << 20);
    std::fs::write(mnt.join("striped"), &content).unwrap();
    assert!(std::fs::read(mnt.join("striped")).unwrap() == content);

    // Space reports reach mgmtd with the next heartbeats.
    let deadline = Instant::now() + Duration::from_secs(10);
    let targets = loop {
        let out = admin(addr, &["targets", "--json"]);
        let targets: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let holding = targets.iter().filter(|t| t["chunks"].as_u64().unwrap() > 0).count();
        if holding >= 4 {
            break targets;
        }
        assert!(Instant::now() < deadline, "a 9 MiB file over a stripe of 4 chains touches 4 targets: {targets:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(targets.len(), 6, "3 nodes x 2 targets");
    let nodes: std::collections::HashSet<u64> = targets.iter().map(|t| t["node"].as_u64().unwrap()).collect();
    assert_eq!(nodes.len(), 3);

    let chains: serde_json::Value = serde_json::from_slice(&admin(addr, &["chains", "--json"]).stdout).unwrap();
    assert_eq!(chains.as_array().unwrap().len(), 6);
    // Every target is already in a chain; the only member of a chain cannot go offline.
    assert_eq!(admin(addr, &["create-chain", "--targets", "1,2"]).status.code(), Some(1));
    let out = admin(addr, &["offline-target", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("last serving member"));
    assert!(up.stop().success());
}

#[test]
fn up_restarts_a_storage_node_that_dies_and_the_chain_recovers() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let up = Up::start_with(&data, &mnt, &["--storage-nodes", "3", "--replicas", "3"]);
    let addr = std::fs::read_to_string(data.join("mgmtd/mgmtd.addr")).unwrap();
    let addr = addr.trim();
    std::fs::write(mnt.join("before"), b"written before the crash").unwrap();

    // The storage process `up` started for node 1 (found by its data directory).
    let pid = pids_of(&format!("storage --data {} ", data.join("storage1").display()))[0];
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::fs::write(mnt.join("during"), b"written while a replica restarts").unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = admin(addr, &["targets", "--json"]);
        let targets: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if targets.len() == 6 && targets.iter().all(|t| t["state"] == "serving") {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never came back: {targets:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(std::fs::read(mnt.join("before")).unwrap(), b"written before the crash");
    assert_eq!(std::fs::read(mnt.join("during")).unwrap(), b"written while a replica restarts");
    assert!(up.stop().success());
}

/// Processes whose command line contains `pattern` (the roles a test's `up` started are found
/// by their data directory or mount point, which only that test uses).
fn pids_of(pattern: &str) -> Vec<i32> {
    let out = Command::new("pgrep").args(["-f", pattern]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse().unwrap()).collect()
}

/// The value of one sample (`name{labels}` as printed) in a `/metrics` text; 0 if absent.
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `path` holds `want` (another mount's change shows within its caches' TTLs).
fn wait_for_contents(path: &Path, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(path).ok().as_deref() != Some(want) {
        assert!(Instant::now() < deadline, "{} never showed the other mount's bytes", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn up_runs_meta_in_the_mount_process_reachable_by_others_and_its_kill9_loses_nothing() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let mut up = Up::start_with(&data, &mnt, &["--meta-durability", "periodic"]);
    let mount_pid = pids_of(&format!("mount {} ", mnt.display()))[0];
    assert!(pids_of(&format!("meta --data {}", data.join("meta").display())).is_empty(), "no meta process of its own");

    // Inline, just past the inline limit, and chunked; fsynced or only closed.
    std::fs::create_dir(mnt.join("d")).unwrap();
    let files: Vec<(String, Vec<u8>)> =
        [(0, 100), (1, 4097), (2, 300_000)].iter().map(|&(i, n)| (format!("d/f{i}"), ember_testkit::random_bytes(i, n))).collect();
    for (i, (name, bytes)) in files.iter().enumerate() {
        let mut f = std::fs::File::create(mnt.join(name)).unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        if i % 2 == 0 {
            f.sync_all().unwrap();
        }
    }
    let metrics = scrape(&data.join("meta/metrics.addr"));
    let created = sample(&metrics, "ember_rpc_in_process_total{method=\"meta.create\"}");
    assert!(created >= 3, "the mount's creates reached meta in process ({created}):\n{metrics}");

    // Another mount reaches the same metadata server over TCP.
    let mgmtd = std::fs::read_to_string(data.join("mgmtd/mgmtd.addr")).unwrap();
    let mut other = ember_testkit::Mount::start(Path::new(env!("CARGO_BIN_EXE_ember")), mgmtd.trim(), dir.path(), &[]);
    assert_eq!(std::fs::read(other.join("d/f0")).unwrap(), files[0].1);
    std::fs::write(other.join("d/from-other"), b"written by another mount").unwrap();
    wait_for_contents(&mnt.join("d/from-other"), b"written by another mount");
    assert!(other.unmount());

    // SIGKILL of the mount takes its metadata server down with it; `up` stops.
    unsafe { libc::kill(mount_pid, libc::SIGKILL) };
    let status = up.child.wait().unwrap();
    assert!(!status.success(), "up reports the lost mount");
    drop(up); // clears the dead mount

    let up = Up::start(&data, &mnt);
    for (name, bytes) in &files {
        assert!(std::fs::read(mnt.join(name)).unwrap() == *bytes, "{name} after the crash");
    }
    assert_eq!(std::fs::read(mnt.join("d/from-other")).unwrap(), b"written by another mount");
    assert!(up.stop().success());
}
