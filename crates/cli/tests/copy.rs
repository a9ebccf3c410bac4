//! copy_file_range through the real mount: chunked files are copied storage to storage (no
//! client write carries the bytes), across chunk and node boundaries, and `cp` uses it.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use ember_testkit::{fuse_available, random_bytes, Cluster, Slots, Spec};

static SLOTS: Slots = Slots::new(2);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember"))
}

/// copy_file_range until `len` bytes are copied or the source ends; returns the total.
fn copy(from: &File, off_in: u64, to: &File, off_out: u64, len: u64) -> u64 {
    let mut done = 0;
    while done < len {
        let (mut i, mut o) = ((off_in + done) as i64, (off_out + done) as i64);
        let n = unsafe { libc::copy_file_range(from.as_raw_fd(), &mut i, to.as_raw_fd(), &mut o, (len - done) as usize, 0) };
        assert!(n >= 0, "copy_file_range: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    done
}

fn copies(cluster: &Cluster) -> u64 {
    (0..2).map(|n| cluster.storage_metric(n, "ember_rpc_seconds_count{method=\"storage.copy\"}")).sum()
}

fn client_writes(cluster: &Cluster) -> u64 {
    (0..2).map(|n| cluster.storage_metric(n, "ember_rpc_seconds_count{method=\"storage.write\"}")).sum()
}

#[test]
fn copy_file_range_copies_on_storage_across_chunks_and_nodes() {
    if !fuse_available() {
        return;
    }
    let _slot = SLOTS.acquire();
    let spec = Spec { storage_nodes: 2, targets: 1, replicas: 1, chain_mode: false, periodic_meta: false, client_session_timeout_ms: None };
    let cluster = Cluster::start_spec(bin(), spec);
    let (a, b) = (cluster.mount(), cluster.mount());
    let data = random_bytes(21, 5 << 20);
    fs::write(a.join("src"), &data).unwrap();
    fs::write(a.join("dst"), random_bytes(22, 1 << 20)).unwrap();
    let src = File::open(a.join("src")).unwrap();
    let dst = OpenOptions::new().read(true).write(true).open(a.join("dst")).unwrap();

    let (writes, copied) = (client_writes(&cluster), copies(&cluster));
    let (off_in, off_out, len) = (100_000u64, 300_000u64, 4_500_000u64);
    assert_eq!(copy(&src, off_in, &dst, off_out, len), len);
    assert_eq!(client_writes(&cluster), writes, "the copied bytes went through a client write");
    assert!(copies(&cluster) > copied + 4, "the copy did not run on storage");
    let mut expect = random_bytes(22, 1 << 20);
    expect.resize((off_out + len) as usize, 0);
    expect[off_out as usize..].copy_from_slice(&data[off_in as usize..(off_in + len) as usize]);
    assert_eq!(dst.metadata().unwrap().len(), off_out + len);
    assert!(fs::read(a.join("dst")).unwrap() == expect, "this mount reads other bytes");
    drop(dst);
    assert!(fs::read(b.join("dst")).unwrap() == expect, "another mount reads other bytes");

    // Past the source's end nothing is copied; a copy is clipped to the source's length.
    let dst = OpenOptions::new().write(true).open(a.join("dst")).unwrap();
    assert_eq!(copy(&src, 5 << 20, &dst, 0, 1000), 0);
    assert_eq!(copy(&src, (5 << 20) - 10, &dst, 0, 1000), 10);
    drop(dst);

    // Inline files (kept in meta) take part through the client.
    fs::write(a.join("small"), b"tiny inline file").unwrap();
    let small = File::open(a.join("small")).unwrap();
    let big = OpenOptions::new().write(true).open(a.join("src")).unwrap();
    assert_eq!(copy(&small, 5, &big, 4 << 20, 6), 6);
    drop(big);
    assert_eq!(&fs::read(b.join("src")).unwrap()[4 << 20..(4 << 20) + 6], b"inline");

    // cp uses copy_file_range.
    let before = copies(&cluster);
    let status = Command::new("cp").arg(a.join("src")).arg(a.join("copy")).status().unwrap();
    assert!(status.success());
    assert!(fs::read(b.join("copy")).unwrap() == fs::read(b.join("src")).unwrap());
    assert!(copies(&cluster) > before, "cp did not copy on storage");
}
