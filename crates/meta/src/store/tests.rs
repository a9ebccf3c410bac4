//! Tests of `MetaStore` over `MemKv` (and `FjallKv` for restarts).

use std::collections::HashSet;
use std::sync::Arc;

use ember_kv::{MemKv, TxnKv};
use ember_proto::meta::{Attr, ChunkBlocks, RENAME_NOREPLACE};
use ember_types::{ChainId, FileType, InodeId, StatusCode};

use super::*;
use crate::chains::FixedChains;

const ROOT: InodeId = InodeId::ROOT;

fn store_on(kv: Arc<dyn TxnKv>) -> MetaStore {
    let chains = Arc::new(FixedChains::new((1..=8).map(ChainId).collect()));
    let s = MetaStore::new(kv, chains, StoreConfig::default());
    s.ensure_root().unwrap();
    s
}

fn store() -> MetaStore {
    store_on(Arc::new(MemKv::new()))
}

fn perm() -> Perm {
    Perm::new(0o644, 1000, 1000)
}

fn dperm() -> Perm {
    Perm::new(0o755, 1000, 1000)
}

fn code<T: std::fmt::Debug>(r: Result<T, MetaError>) -> StatusCode {
    r.unwrap_err().code()
}

fn mkfile(s: &MetaStore, parent: InodeId, name: &str) -> Attr {
    let Opened { attr: a, session, .. } = s.create(parent, name.as_bytes(), perm(), true, 7).unwrap();
    s.close(InodeId(a.inode), session, None, None).unwrap();
    a
}

fn mkdir(s: &MetaStore, parent: InodeId, name: &str) -> InodeId {
    InodeId(s.mkdir(parent, name.as_bytes(), dperm()).unwrap().inode)
}

fn names(s: &MetaStore, dir: InodeId) -> Vec<String> {
    let (entries, more) = s.readdir(dir, b"", 4096, false).unwrap();
    assert!(!more);
    entries
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect()
}

fn gc_queue(s: &MetaStore) -> Vec<InodeId> {
    s.gc_scan(None, 1000)
        .unwrap()
        .into_iter()
        .map(|i| i.inode)
        .collect()
}

#[test]
fn root_exists_and_ensure_root_is_idempotent() {
    let s = store();
    s.ensure_root().unwrap();
    let a = s.getattr(ROOT).unwrap();
    assert_eq!(a.file_type, u32::from(FileType::Directory.to_u8()));
    assert_eq!((a.mode, a.uid, a.gid, a.nlink), (0o755, 0, 0, 2));
    assert_eq!(s.statfs().unwrap().inodes, 1);
}

#[test]
fn create_lookup_getattr() {
    let s = store();
    let Opened { attr: a, session, .. } = s
        .create(ROOT, b"f", Perm::new(0o100644, 5, 6), false, 1)
        .unwrap();
    assert_ne!(session, 0);
    assert!(a.inode >= InodeId::FIRST_ALLOCATED);
    assert_eq!((a.mode, a.uid, a.gid, a.nlink, a.size), (0o644, 5, 6, 1, 0));
    let layout = a.layout.clone().unwrap();
    assert_eq!(layout.chunk_size, 1 << 20);
    assert_eq!(layout.chains.len(), 4);
    assert_eq!(s.lookup(ROOT, b"f").unwrap(), a);
    assert_eq!(s.getattr(InodeId(a.inode)).unwrap(), a);
    assert_eq!(code(s.lookup(ROOT, b"missing")), StatusCode::NotFound);
    assert_eq!(
        code(s.lookup(InodeId(a.inode), b"x")),
        StatusCode::NotDirectory
    );
    assert_eq!(code(s.getattr(InodeId(999_999))), StatusCode::NotFound);
    assert_eq!(s.statfs().unwrap().inodes, 2);
}

#[test]
fn create_of_existing_name() {
    let s = store();
    let a = mkfile(&s, ROOT, "f");
    assert_eq!(
        code(s.create(ROOT, b"f", perm(), true, 1)),
        StatusCode::AlreadyExists
    );
    let Opened { attr: again, session, .. } = s.create(ROOT, b"f", perm(), false, 1).unwrap();
    assert_eq!(again.inode, a.inode);
    assert_ne!(session, 0);
    mkdir(&s, ROOT, "d");
    assert_eq!(
        code(s.create(ROOT, b"d", perm(), false, 1)),
        StatusCode::IsDirectory
    );
    assert_eq!(
        code(s.create(ROOT, b"d", perm(), true, 1)),
        StatusCode::AlreadyExists
    );
    assert_eq!(
        code(s.mkdir(ROOT, b"f", dperm())),
        StatusCode::AlreadyExists
    );
}

#[test]
fn no_chains_means_unavailable() {
    let s = MetaStore::new(
        Arc::new(MemKv::new()),
        Arc::new(FixedChains::new(vec![])),
        StoreConfig::default(),
    );
    s.ensure_root().unwrap();
    let err = s.create(ROOT, b"f", perm(), true, 1).unwrap_err();
    assert_eq!(err.code(), StatusCode::Unavailable);
    assert!(err.to_string().contains("no storage chains registered yet"));
    mkdir(&s, ROOT, "dirs-need-no-chains");
}

#[test]
fn bad_names_are_rejected() {
    let s = store();
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert_eq!(
            code(s.create(ROOT, bad, perm(), true, 1)),
            StatusCode::InvalidArgument,
            "{bad:?}"
        );
        assert_eq!(
            code(s.mkdir(ROOT, bad, dperm())),
            StatusCode::InvalidArgument
        );
        assert_eq!(code(s.lookup(ROOT, bad)), StatusCode::InvalidArgument);
    }
    let long = vec![b'x'; 256];
    assert_eq!(
        code(s.create(ROOT, &long, perm(), true, 1)),
        StatusCode::NameTooLong
    );
    assert_eq!(
        code(s.rename(ROOT, b"a", ROOT, &long, 0)),
        StatusCode::NameTooLong
    );
    mkfile(&s, ROOT, &"y".repeat(255));
}

#[test]
fn mkdir_twenty_levels_deep() {
    let s = store();
    let mut dir = ROOT;
    for i in 0..20 {
        dir = mkdir(&s, dir, &format!("level{i}"));
    }
    let mut cur = ROOT;
    for i in 0..20 {
        let a = s.lookup(cur, format!("level{i}").as_bytes()).unwrap();
        cur = InodeId(a.inode);
    }
    assert_eq!(cur, dir);
    assert_eq!(s.getattr(dir).unwrap().nlink, 2);
}

#[test]
fn readdir_pages_over_5000_entries() {
    let s = store();
    let dir = mkdir(&s, ROOT, "big");
    let mut want = Vec::new();
    for i in 0..5000 {
        let name = format!("entry-{:x}-{i}", i * 7919 % 5000);
        s.create(dir, name.as_bytes(), perm(), true, 1).unwrap();
        want.push(name.into_bytes());
    }
    want.sort();
    let (mut got, mut after, mut pages) = (Vec::new(), Vec::new(), 0);
    loop {
        let (entries, more) = s.readdir(dir, &after, 128, false).unwrap();
        assert!(entries.len() <= 128);
        pages += 1;
        if let Some(last) = entries.last() {
            after = last.name.clone();
        }
        got.extend(entries.into_iter().map(|e| e.name));
        if !more {
            break;
        }
    }
    assert_eq!(got, want);
    assert_eq!(pages, 5000usize.div_ceil(128));
    let f = InodeId(s.lookup(dir, &want[0]).unwrap().inode);
    assert_eq!(code(s.readdir(f, b"", 10, false)), StatusCode::NotDirectory);
}

#[test]
fn readdir_with_attrs_answers_as_lookup_does() {
    let s = store();
    let dir = mkdir(&s, ROOT, "d");
    s.create(dir, b"f", perm(), true, 1).unwrap();
    mkdir(&s, dir, "sub");
    let (entries, _) = s.readdir(dir, b"", 10, true).unwrap();
    assert_eq!(entries.len(), 2);
    for e in &entries {
        assert_eq!(e.attr.as_ref(), Some(&s.lookup(dir, &e.name).unwrap()), "{:?}", e.name);
    }
    let (plain, _) = s.readdir(dir, b"", 10, false).unwrap();
    assert!(plain.iter().all(|e| e.attr.is_none()));
}

#[test]
fn rename_files_and_dirs_across_directories() {
    let s = store();
    let a = mkdir(&s, ROOT, "a");
    let b = mkdir(&s, ROOT, "b");
    let f = mkfile(&s, a, "f");
    s.rename(a, b"f", b, b"g", 0).unwrap();
    assert_eq!(code(s.lookup(a, b"f")), StatusCode::NotFound);
    assert_eq!(s.lookup(b, b"g").unwrap().inode, f.inode);

    let sub = mkdir(&s, a, "sub");
    mkfile(&s, sub, "inner");
    assert_eq!(s.getattr(a).unwrap().nlink, 3);
    s.rename(a, b"sub", b, b"moved", 0).unwrap();
    assert_eq!(s.getattr(a).unwrap().nlink, 2);
    assert_eq!(s.getattr(b).unwrap().nlink, 3);
    assert_eq!(s.lookup(b, b"moved").unwrap().inode, sub.0);
    assert_eq!(names(&s, sub), vec!["inner"]);
    assert_eq!(names(&s, a), Vec::<String>::new());
    // The moved directory knows its new parent: moving b into the moved dir is a loop.
    assert_eq!(
        code(s.rename(ROOT, b"b", sub, b"x", 0)),
        StatusCode::InvalidRename
    );
    // Same-directory rename and no-op rename.
    s.rename(b, b"g", b, b"h", 0).unwrap();
    s.rename(b, b"h", b, b"h", 0).unwrap();
    assert_eq!(names(&s, b), vec!["h", "moved"]);
    assert_eq!(code(s.rename(b, b"nope", a, b"x", 0)), StatusCode::NotFound);
}

#[test]
fn rename_directory_into_its_own_subtree_is_rejected() {
    let s = store();
    let a = mkdir(&s, ROOT, "a");
    let b = mkdir(&s, a, "b");
    let c = mkdir(&s, b, "c");
    assert_eq!(
        code(s.rename(ROOT, b"a", c, b"a", 0)),
        StatusCode::InvalidRename
    );
    assert_eq!(
        code(s.rename(ROOT, b"a", a, b"self", 0)),
        StatusCode::InvalidRename
    );
    assert_eq!(
        code(s.rename(a, b"b", b, b"x", 0)),
        StatusCode::InvalidRename
    );
    // Moving upwards is fine.
    s.rename(b, b"c", ROOT, b"c", 0).unwrap();
    s.rename(ROOT, b"a", c, b"a", 0).unwrap();
    assert_eq!(s.lookup(c, b"a").unwrap().inode, a.0);
}

#[test]
fn rename_onto_existing_file_replaces_it() {
    let s = store();
    let src = mkfile(&s, ROOT, "src");
    let dst = mkfile(&s, ROOT, "dst");
    s.rename(ROOT, b"src", ROOT, b"dst", 0).unwrap();
    assert_eq!(s.lookup(ROOT, b"dst").unwrap().inode, src.inode);
    assert_eq!(code(s.lookup(ROOT, b"src")), StatusCode::NotFound);
    assert_eq!(gc_queue(&s), vec![InodeId(dst.inode)]);
    assert_eq!(s.getattr(InodeId(dst.inode)).unwrap().nlink, 0);
}

#[test]
fn rename_type_rules_and_noreplace() {
    let s = store();
    mkfile(&s, ROOT, "f");
    mkfile(&s, ROOT, "g");
    let d = mkdir(&s, ROOT, "d");
    let e = mkdir(&s, ROOT, "e");
    mkfile(&s, e, "x");
    assert_eq!(
        code(s.rename(ROOT, b"f", ROOT, b"g", RENAME_NOREPLACE)),
        StatusCode::AlreadyExists
    );
    assert_eq!(
        code(s.rename(ROOT, b"f", ROOT, b"g", 4)), // RENAME_WHITEOUT
        StatusCode::Unsupported
    );
    s.rename(ROOT, b"f", ROOT, b"h", RENAME_NOREPLACE).unwrap();
    assert_eq!(
        code(s.rename(ROOT, b"d", ROOT, b"g", 0)),
        StatusCode::NotDirectory
    );
    assert_eq!(
        code(s.rename(ROOT, b"g", ROOT, b"d", 0)),
        StatusCode::IsDirectory
    );
    assert_eq!(
        code(s.rename(ROOT, b"d", ROOT, b"e", 0)),
        StatusCode::NotEmpty
    );
    // Directory onto an empty directory replaces it.
    let empty = mkdir(&s, ROOT, "empty");
    assert_eq!(s.getattr(ROOT).unwrap().nlink, 5);
    s.rename(ROOT, b"d", ROOT, b"empty", 0).unwrap();
    assert_eq!(s.lookup(ROOT, b"empty").unwrap().inode, d.0);
    assert_eq!(code(s.getattr(empty)), StatusCode::NotFound);
    assert_eq!(s.getattr(ROOT).unwrap().nlink, 4);
}

#[test]
fn rmdir_and_unlink_rules() {
    let s = store();
    let d = mkdir(&s, ROOT, "d");
    mkfile(&s, d, "f");
    assert_eq!(code(s.rmdir(ROOT, b"d")), StatusCode::NotEmpty);
    assert_eq!(code(s.unlink(ROOT, b"d")), StatusCode::IsDirectory);
    assert_eq!(code(s.rmdir(d, b"f")), StatusCode::NotDirectory);
    assert_eq!(code(s.rmdir(ROOT, b"zz")), StatusCode::NotFound);
    s.unlink(d, b"f").unwrap();
    s.rmdir(ROOT, b"d").unwrap();
    assert_eq!(code(s.getattr(d)), StatusCode::NotFound);
    assert_eq!(names(&s, ROOT), Vec::<String>::new());
}

#[test]
fn hard_links() {
    let s = store();
    let d = mkdir(&s, ROOT, "d");
    let f = mkfile(&s, ROOT, "f");
    let ino = InodeId(f.inode);
    let a = s.link(ino, d, b"g").unwrap();
    assert_eq!(a.nlink, 2);
    assert_eq!(s.lookup(ROOT, b"f").unwrap().nlink, 2);
    assert_eq!(s.lookup(d, b"g").unwrap().inode, f.inode);
    assert_eq!(
        code(s.link(d, ROOT, b"dirlink")),
        StatusCode::PermissionDenied
    );
    assert_eq!(code(s.link(ino, d, b"g")), StatusCode::AlreadyExists);
    s.unlink(ROOT, b"f").unwrap();
    assert_eq!(s.lookup(d, b"g").unwrap().nlink, 1);
    assert!(gc_queue(&s).is_empty());
    s.unlink(d, b"g").unwrap();
    assert_eq!(gc_queue(&s), vec![ino]);
    assert_eq!(s.gc_claim(&[ino]).unwrap(), [ino]);
    assert_eq!(code(s.link(ino, ROOT, b"back")), StatusCode::NotFound, "GC is removing it");
    assert_eq!(gc_queue(&s), vec![ino]);
}

#[test]
fn symlinks() {
    let s = store();
    let a = s.symlink(ROOT, b"l", b"../some/where", 3, 4).unwrap();
    assert_eq!(a.file_type, u32::from(FileType::Symlink.to_u8()));
    assert_eq!((a.size, a.mode, a.uid), (13, 0o777, 3));
    let ino = InodeId(a.inode);
    assert_eq!(s.readlink(ino).unwrap(), b"../some/where");
    assert_eq!(code(s.readlink(ROOT)), StatusCode::InvalidArgument);
    assert_eq!(code(s.open(ino, 1, false)), StatusCode::InvalidArgument);
    assert_eq!(
        code(s.symlink(ROOT, b"e", b"", 0, 0)),
        StatusCode::InvalidArgument
    );
    assert_eq!(
        code(s.symlink(ROOT, b"l", b"x", 0, 0)),
        StatusCode::AlreadyExists
    );
    s.unlink(ROOT, b"l").unwrap();
    assert_eq!(code(s.getattr(ino)), StatusCode::NotFound);
    assert!(gc_queue(&s).is_empty());
    assert_eq!(s.statfs().unwrap().inodes, 1);
}

#[test]
fn setattr_fields_are_visible() {
    let s = store();
    let f = InodeId(mkfile(&s, ROOT, "f").inode);
    let set = SetAttrs {
        mode: Some(0o100600),
        uid: Some(10),
        gid: Some(20),
        size: Some(4096),
        atime_ns: Some(1_000),
        mtime_ns: Some(2_000),
        size_inline: true,
        kill_setid: false,
        drop_capability: false,
    };
    let a = s.setattr(f, set, &[]).unwrap();
    assert_eq!(
        (a.mode, a.uid, a.gid, a.size, a.atime_ns, a.mtime_ns),
        (0o600, 10, 20, 4096, 1_000, 2_000)
    );
    assert!(a.ctime_ns > 2_000);
    assert_eq!(s.getattr(f).unwrap(), a);
    let d = mkdir(&s, ROOT, "d");
    assert_eq!(
        code(s.setattr(
            d,
            SetAttrs {
                size: Some(1),
                ..Default::default()
            }, &[]
        )),
        StatusCode::IsDirectory
    );
    let da = s
        .setattr(
            d,
            SetAttrs {
                mtime_ns: Some(5_000),
                mode: Some(0o700),
                ..Default::default()
            },
            &[],
        )
        .unwrap();
    assert_eq!((da.mtime_ns, da.mode), (5_000, 0o700));
    assert_eq!(s.getattr(d).unwrap().mtime_ns, 5_000);
}

#[test]
fn killing_privileges_drops_setuid_group_executable_setgid_and_the_capability() {
    use ember_proto::meta::XattrSetMode::Upsert;
    let s = store();
    let f = InodeId(mkfile(&s, ROOT, "f").inode);
    let kill = SetAttrs { kill_setid: true, ..SetAttrs::default() };
    s.set_xattr(f, b"security.capability", b"cap", Upsert).unwrap();
    s.set_xattr(f, b"user.keep", b"1", Upsert).unwrap();
    for (mode, after) in [(0o6755, 0o755), (0o6745, 0o2745), (0o4700, 0o700), (0o2710, 0o710), (0o644, 0o644)] {
        s.setattr(f, SetAttrs { mode: Some(mode), ..SetAttrs::default() }, &[]).unwrap();
        assert_eq!(s.setattr(f, kill, &[]).unwrap().mode & 0o7777, after, "{mode:o}");
    }
    assert_eq!(s.get_xattr(f, b"security.capability").unwrap(), b"cap", "kept without drop_capability");
    s.setattr(f, SetAttrs { drop_capability: true, ..SetAttrs::default() }, &[]).unwrap();
    assert_eq!(code(s.get_xattr(f, b"security.capability")), StatusCode::NoAttribute);
    assert_eq!(s.get_xattr(f, b"user.keep").unwrap(), b"1");
    let d = mkdir(&s, ROOT, "d");
    s.setattr(d, SetAttrs { mode: Some(0o2775), ..SetAttrs::default() }, &[]).unwrap();
    assert_eq!(s.setattr(d, kill, &[]).unwrap().mode & 0o7777, 0o2775, "a directory keeps its setgid");
}

#[test]
fn close_raises_size_and_setattr_lowers_it() {
    let s = store();
    let Opened { attr: a, session, .. } = s.create(ROOT, b"f", perm(), true, 1).unwrap();
    let f = InodeId(a.inode);
    let a = s.sync(f, 1000, None, &[]).unwrap();
    assert_eq!(a.size, 1000);
    let a = s
        .close(f, session, Some(500), Some(a.mtime_ns + 10))
        .unwrap();
    assert_eq!(a.size, 1000, "a shorter report never shrinks the file");
    let Opened { session, .. } = s.open(f, 1, true).unwrap();
    assert_eq!(
        s.close(f, session, Some(3 << 20), None).unwrap().size,
        3 << 20
    );
    assert_eq!(
        s.setattr(
            f,
            SetAttrs {
                size: Some(10),
                ..Default::default()
            }, &[]
        )
        .unwrap()
        .size,
        10
    );
    assert_eq!(s.getattr(f).unwrap().size, 10);
    assert_eq!(code(s.open(ROOT, 1, false)), StatusCode::IsDirectory);
}

#[test]
fn parent_nlink_and_times_follow_children() {
    let s = store();
    let d = mkdir(&s, ROOT, "d");
    let before = s.getattr(d).unwrap();
    assert_eq!(before.nlink, 2);
    let after_step = |prev: &Attr| {
        let now = s.getattr(d).unwrap();
        assert!(
            now.mtime_ns > prev.mtime_ns && now.ctime_ns > prev.ctime_ns,
            "{prev:?} -> {now:?}"
        );
        now
    };
    std::thread::sleep(std::time::Duration::from_millis(2));
    mkdir(&s, d, "sub");
    let a = after_step(&before);
    assert_eq!(a.nlink, 3);
    std::thread::sleep(std::time::Duration::from_millis(2));
    mkfile(&s, d, "f");
    let b = after_step(&a);
    assert_eq!(b.nlink, 3);
    std::thread::sleep(std::time::Duration::from_millis(2));
    s.rmdir(d, b"sub").unwrap();
    let c = after_step(&b);
    assert_eq!(c.nlink, 2);
    std::thread::sleep(std::time::Duration::from_millis(2));
    s.unlink(d, b"f").unwrap();
    after_step(&c);
}

#[test]
fn concurrent_exclusive_creates_of_one_name_one_wins() {
    let s = Arc::new(store());
    for round in 0..20 {
        let name = format!("race{round}");
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (s, name) = (s.clone(), name.clone());
                std::thread::spawn(move || {
                    s.create(ROOT, name.as_bytes(), perm(), true, 1)
                        .map(|o| o.attr.inode)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1, "{results:?}");
        let err = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert_eq!(err.code(), StatusCode::AlreadyExists);
        assert_eq!(s.lookup(ROOT, name.as_bytes()).unwrap().inode, *ok[0]);
    }
}

#[test]
fn concurrent_creates_of_distinct_names_all_succeed() {
    let s = Arc::new(store());
    let d = mkdir(&s, ROOT, "d");
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    s.create(d, format!("t{t}-{i}").as_bytes(), perm(), true, 1)
                        .unwrap();
                    if i % 10 == 0 {
                        s.mkdir(d, format!("dir{t}-{i}").as_bytes(), dperm())
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(names(&s, d).len(), 8 * 55);
    assert_eq!(s.getattr(d).unwrap().nlink, 2 + 8 * 5);
    assert_eq!(s.statfs().unwrap().inodes, 2 + 8 * 55);
}

#[test]
fn inode_ids_unique_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv");
    let mut seen = HashSet::new();
    for round in 0..3 {
        let kv: Arc<dyn TxnKv> = Arc::new(ember_kv::FjallKv::open(&path).unwrap());
        let s = store_on(kv);
        for i in 0..20 {
            let a = mkfile(&s, ROOT, &format!("r{round}-{i}"));
            assert!(
                seen.insert(a.inode),
                "inode {} reused after reopen",
                a.inode
            );
        }
        assert_eq!(names(&s, ROOT).len(), 20 * (round + 1));
    }
}

#[test]
fn unlinked_open_file_stays_readable() {
    let s = store();
    let Opened { attr: a, session, .. } = s.create(ROOT, b"f", perm(), true, 1).unwrap();
    let f = InodeId(a.inode);
    s.close(f, session, Some(100), None).unwrap();
    let Opened { session: reader, .. } = s.open(f, 2, false).unwrap();
    s.unlink(ROOT, b"f").unwrap();
    assert_eq!(code(s.lookup(ROOT, b"f")), StatusCode::NotFound);
    let a = s.getattr(f).unwrap();
    assert_eq!((a.nlink, a.size), (0, 100));
    let queued = s.gc_scan(None, 10).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].sessions.len(), 1);
    assert!(s.gc_claim(&[f]).unwrap().is_empty(), "an open session blocks the claim");
    s.close(f, reader, None, None).unwrap();
    assert_eq!(s.gc_claim(&[f]).unwrap(), [f]);
    assert_eq!(
        code(s.open(f, 3, false)),
        StatusCode::NotFound,
        "a claimed inode cannot be reopened"
    );
    s.gc_finish(&[f]).unwrap();
    assert_eq!(code(s.getattr(f)), StatusCode::NotFound);
    assert!(gc_queue(&s).is_empty());
    assert_eq!(s.statfs().unwrap().inodes, 1);
}

fn iw(offset: u64, data: &[u8]) -> ember_proto::meta::InlineWrite {
    ember_proto::meta::InlineWrite { offset, data: data.to_vec() }
}

fn inline_bytes(s: &MetaStore, ino: InodeId) -> Option<Vec<u8>> {
    let o = s.open(ino, 9, false).unwrap();
    s.close(ino, o.session, None, None).unwrap();
    o.inline
}

#[test]
fn inline_files_take_writes_up_to_their_limit_and_resize_in_place() {
    let s = store();
    let created = s.create(ROOT, b"small", perm(), true, 1).unwrap();
    let ino = InodeId(created.attr.inode);
    assert_eq!((created.attr.inline_limit, created.inline), (DEFAULT_INLINE_MAX, Some(Vec::new())));

    let done = |r: InlineReply| match r {
        InlineReply::Done { attr, data } => (attr, data),
        InlineReply::Refused(why) => panic!("refused: {why:?}"),
    };
    let (attr, data) = done(s.write_inline(ino, &[iw(2, b"cd"), iw(0, b"ab"), iw(6, b"x")], Some(5)).unwrap());
    assert_eq!(data, b"abcd\0\0x");
    assert_eq!((attr.size, attr.mtime_ns.max(5)), (7, attr.mtime_ns));
    assert_eq!(inline_bytes(&s, ino).unwrap(), b"abcd\0\0x");

    let limit = u64::from(DEFAULT_INLINE_MAX);
    let (attr, _) = done(s.write_inline(ino, &[iw(limit - 1, b"z")], None).unwrap());
    assert_eq!(attr.size, limit);
    assert!(matches!(
        s.write_inline(ino, &[iw(limit, b"!")], None).unwrap(),
        InlineReply::Refused(ember_proto::meta::InlineOutcome::TooLarge)
    ));
    assert_eq!(inline_bytes(&s, ino).unwrap().len() as u64, limit, "a refused write changes nothing");

    let cut = SetAttrs { size: Some(3), ..SetAttrs::default() };
    assert_eq!(s.setattr(ino, cut, &[]).unwrap().size, 3);
    assert_eq!(inline_bytes(&s, ino).unwrap(), b"abc");
    let grow = SetAttrs { size: Some(5), ..SetAttrs::default() };
    s.setattr(ino, grow, &[]).unwrap();
    assert_eq!(inline_bytes(&s, ino).unwrap(), b"abc\0\0");
    let past = SetAttrs { size: Some(limit + 1), ..SetAttrs::default() };
    assert_eq!(code(s.setattr(ino, past, &[])), StatusCode::InvalidArgument);
}

#[test]
fn a_spill_reserves_the_file_and_hands_it_to_chunks() {
    let s = store();
    let ino = InodeId(mkfile(&s, ROOT, "f").inode);
    s.write_inline(ino, &[iw(0, b"hello")], None).unwrap();

    let InlineReply::Done { data, .. } = s.spill_inline(ino, 11, false, 0).unwrap() else { panic!("not started") };
    assert_eq!(data, b"hello");
    assert!(s.spill_inline(ino, 11, false, 0).is_ok(), "a retried start is the same start");
    assert_eq!(code(s.spill_inline(ino, 12, false, 0)), StatusCode::Busy);
    assert_eq!(code(s.write_inline(ino, &[iw(0, b"J")], None)), StatusCode::Busy);
    assert_eq!(code(s.setattr(ino, SetAttrs { size: Some(1), ..SetAttrs::default() }, &[])), StatusCode::Busy);
    assert_eq!(code(s.spill_inline(ino, 12, true, 9)), StatusCode::SpillLost, "only the holder finishes");

    let InlineReply::Done { attr, .. } = s.spill_inline(ino, 11, true, 9000).unwrap() else { panic!("not finished") };
    assert_eq!((attr.inline_limit, attr.size), (0, 9000));
    assert_eq!(inline_bytes(&s, ino), None, "a chunked file has no inline bytes");
    let stale = SetAttrs { size: Some(1), size_inline: true, ..SetAttrs::default() };
    assert_eq!(code(s.setattr(ino, stale, &[])), StatusCode::InlineMoved);
    assert!(matches!(
        s.write_inline(ino, &[iw(0, b"late")], None).unwrap(),
        InlineReply::Refused(ember_proto::meta::InlineOutcome::NotInline)
    ));
    assert!(matches!(
        s.spill_inline(ino, 11, true, 9000).unwrap(),
        InlineReply::Refused(ember_proto::meta::InlineOutcome::NotInline)
    ));
}

#[test]
fn a_change_after_an_expired_reservation_cancels_the_late_spill() {
    let s = store();
    let ino = InodeId(mkfile(&s, ROOT, "f").inode);
    s.spill_inline(ino, 21, false, 0).unwrap();
    // Let the reservation run out.
    s.run(|t| {
        let mut rec = t.inline(ino)?;
        rec.spill_deadline_ns = 1;
        t.put_inline(ino, &rec);
        Ok(())
    })
    .unwrap();
    s.write_inline(ino, &[iw(0, b"kept")], None).unwrap();
    assert_eq!(code(s.spill_inline(ino, 21, true, 0)), StatusCode::SpillLost);
    assert_eq!(inline_bytes(&s, ino).unwrap(), b"kept");
}

#[test]
fn deleting_an_inline_file_deletes_its_bytes() {
    let s = store();
    let ino = InodeId(mkfile(&s, ROOT, "f").inode);
    s.write_inline(ino, &[iw(0, b"bytes")], None).unwrap();
    s.unlink(ROOT, b"f").unwrap();
    assert_eq!(s.gc_claim(&[ino]).unwrap(), [ino]);
    s.gc_finish(&[ino]).unwrap();
    let left = s.run(|t| Ok(t.0.snapshot_get(&crate::schema::inline_key(ino))?)).unwrap();
    assert_eq!(left, None);
}

#[test]
fn inline_can_be_turned_off() {
    let chains = Arc::new(FixedChains::new((1..=8).map(ChainId).collect()));
    let s = MetaStore::new(Arc::new(MemKv::new()), chains, StoreConfig { inline_max: 0, ..StoreConfig::default() });
    s.ensure_root().unwrap();
    let o = s.create(ROOT, b"f", perm(), true, 1).unwrap();
    assert_eq!((o.attr.inline_limit, o.inline), (0, None));
}

fn stored_xattr_keys(s: &MetaStore) -> usize {
    let begin = crate::schema::XATTR_PREFIX.to_vec();
    let end = crate::schema::prefix_end(&begin);
    ember_kv::run(&*s.kv, |t| Ok::<_, MetaError>(t.snapshot_scan(&begin, &end, 0)?.len())).unwrap()
}

#[test]
fn xattrs_are_set_read_listed_and_removed_with_the_errors_linux_gives() {
    use ember_proto::meta::XattrSetMode::{Create, Replace, Upsert};
    let s = store();
    let f = InodeId(mkfile(&s, ROOT, "f").inode);
    let ctime = s.getattr(f).unwrap().ctime_ns;
    s.set_xattr(f, b"user.b", b"2", Upsert).unwrap();
    s.set_xattr(f, b"user.a", b"1", Create).unwrap();
    s.set_xattr(f, b"security.selinux", b"x", Upsert).unwrap();
    assert!(s.getattr(f).unwrap().ctime_ns > ctime, "a set changes ctime");
    assert_eq!(s.get_xattr(f, b"user.a").unwrap(), b"1");
    assert_eq!(code(s.set_xattr(f, b"user.a", b"9", Create)), StatusCode::AlreadyExists);
    assert_eq!(code(s.set_xattr(f, b"user.c", b"9", Replace)), StatusCode::NoAttribute);
    s.set_xattr(f, b"user.a", b"", Replace).unwrap();
    assert_eq!(s.get_xattr(f, b"user.a").unwrap(), b"", "an empty value is a value");
    assert_eq!(s.list_xattr(f).unwrap(), [&b"security.selinux"[..], b"user.a", b"user.b"]);
    s.remove_xattr(f, b"user.b").unwrap();
    assert_eq!(code(s.remove_xattr(f, b"user.b")), StatusCode::NoAttribute);
    assert_eq!(code(s.get_xattr(f, b"user.b")), StatusCode::NoAttribute);
    assert_eq!(code(s.get_xattr(ROOT, b"user.a")), StatusCode::NoAttribute);

    for bad in [&b"system.other"[..], b"os2.name", b"user."] {
        assert_eq!(code(s.set_xattr(f, bad, b"v", Upsert)), StatusCode::Unsupported, "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(code(s.set_xattr(f, b"", b"v", Upsert)), StatusCode::InvalidArgument);
    assert_eq!(code(s.set_xattr(f, &[b'u'; 256], b"v", Upsert)), StatusCode::InvalidArgument);
    assert_eq!(code(s.set_xattr(f, b"user.big", &vec![0; (64 << 10) + 1], Upsert)), StatusCode::InvalidArgument);
    assert_eq!(code(s.get_xattr(InodeId(999_999), b"user.a")), StatusCode::NotFound);
}

#[test]
fn xattrs_of_one_inode_stay_within_what_listxattr_can_return() {
    use ember_proto::meta::XattrSetMode::Upsert;
    let s = store();
    let f = InodeId(mkfile(&s, ROOT, "f").inode);
    let name = |i: usize| format!("user.{i:0>250}").into_bytes();
    // 255 bytes and a NUL per name: 256 names fill the 64 KiB list exactly.
    for i in 0..256 {
        s.set_xattr(f, &name(i), b"", Upsert).unwrap();
    }
    assert_eq!(code(s.set_xattr(f, b"user.one_more", b"", Upsert)), StatusCode::NoSpace);
    s.set_xattr(f, &name(7), b"replacing keeps the list as long", Upsert).unwrap();
    assert_eq!(s.list_xattr(f).unwrap().len(), 256);
}

#[test]
fn removing_an_inode_removes_its_xattrs() {
    use ember_proto::meta::XattrSetMode::Upsert;
    let s = store();
    let f = InodeId(mkfile(&s, ROOT, "f").inode);
    let d = mkdir(&s, ROOT, "d");
    let replaced = mkdir(&s, ROOT, "replaced");
    let link = InodeId(s.symlink(ROOT, b"l", b"f", 0, 0).unwrap().inode);
    for ino in [f, d, replaced, link] {
        s.set_xattr(ino, b"user.k", b"v", Upsert).unwrap();
        s.set_xattr(ino, b"trusted.k", b"v", Upsert).unwrap();
    }
    assert_eq!(stored_xattr_keys(&s), 8);
    s.unlink(ROOT, b"l").unwrap();
    s.rmdir(ROOT, b"d").unwrap();
    let empty = mkdir(&s, ROOT, "empty");
    s.rename(ROOT, b"empty", ROOT, b"replaced", 0).unwrap();
    assert_eq!(stored_xattr_keys(&s), 2, "only the file's remain while it waits for GC");
    s.unlink(ROOT, b"f").unwrap();
    assert_eq!(s.gc_claim(&[f]).unwrap(), [f]);
    s.gc_finish(&[f]).unwrap();
    assert_eq!(stored_xattr_keys(&s), 0);
    assert_eq!(code(s.list_xattr(replaced)), StatusCode::NotFound);
    assert!(s.list_xattr(empty).unwrap().is_empty());
}

#[test]
fn a_directory_inline_limit_applies_to_files_created_in_it_and_passes_to_new_subdirectories() {
    use ember_proto::meta::XattrSetMode::{Replace, Upsert};
    let s = store();
    let d = mkdir(&s, ROOT, "d");
    assert_eq!(code(s.get_xattr(d, DIR_INLINE_MAX)), StatusCode::NoAttribute);
    s.set_xattr(d, DIR_INLINE_MAX, b"16384", Upsert).unwrap();
    assert_eq!(s.get_xattr(d, DIR_INLINE_MAX).unwrap(), b"16384");
    assert!(s.list_xattr(d).unwrap().is_empty(), "the setting is not listed");
    assert_eq!(mkfile(&s, d, "f").inline_limit, 16384);
    let sub = mkdir(&s, d, "sub");
    assert_eq!(mkfile(&s, sub, "f").inline_limit, 16384, "a new subdirectory inherits it");
    s.set_xattr(sub, DIR_INLINE_MAX, b"0", Replace).unwrap();
    assert_eq!(mkfile(&s, sub, "g").inline_limit, 0, "0 turns inline files off");
    s.remove_xattr(d, DIR_INLINE_MAX).unwrap();
    assert_eq!(mkfile(&s, d, "g").inline_limit, DEFAULT_INLINE_MAX);
    assert_eq!(code(s.remove_xattr(d, DIR_INLINE_MAX)), StatusCode::NoAttribute);
    for bad in [&b"65537"[..], b"-1", b"4k", b""] {
        assert_eq!(code(s.set_xattr(d, DIR_INLINE_MAX, bad, Upsert)), StatusCode::InvalidArgument);
    }
    let f = InodeId(mkfile(&s, ROOT, "plain").inode);
    assert_eq!(code(s.set_xattr(f, DIR_INLINE_MAX, b"8192", Upsert)), StatusCode::InvalidArgument);
    assert_eq!(code(s.set_xattr(d, b"ember.other", b"1", Upsert)), StatusCode::Unsupported);
}

#[test]
fn mknod_makes_fifos_sockets_and_devices_that_go_with_their_last_name() {
    let s = store();
    let kinds = [(FileType::Fifo, 0), (FileType::Socket, 0), (FileType::CharDevice, 0x0103), (FileType::BlockDevice, 0x0801)];
    for (i, (kind, rdev)) in kinds.iter().enumerate() {
        let a = s.mknod(ROOT, format!("n{i}").as_bytes(), *kind, perm(), *rdev).unwrap();
        assert_eq!((a.file_type, a.rdev, a.nlink, a.mode), (u32::from(kind.to_u8()), *rdev, 1, 0o644));
        assert_eq!(s.lookup(ROOT, format!("n{i}").as_bytes()).unwrap(), a);
    }
    assert_eq!(s.mknod(ROOT, b"p", FileType::Fifo, perm(), 7).unwrap().rdev, 0, "a FIFO has no device number");
    for kind in [FileType::File, FileType::Directory, FileType::Symlink] {
        assert_eq!(code(s.mknod(ROOT, b"x", kind, perm(), 0)), StatusCode::InvalidArgument);
    }
    assert_eq!(code(s.mknod(ROOT, b"n0", FileType::Fifo, perm(), 0)), StatusCode::AlreadyExists);
    let fifo = InodeId(s.lookup(ROOT, b"n0").unwrap().inode);
    assert_eq!(code(s.create(ROOT, b"n0", perm(), false, 1)), StatusCode::AlreadyExists);
    assert_eq!(code(s.setattr(fifo, SetAttrs { size: Some(0), ..SetAttrs::default() }, &[])), StatusCode::InvalidArgument);
    s.link(fifo, ROOT, b"n0-again").unwrap();
    s.unlink(ROOT, b"n0").unwrap();
    assert_eq!(s.getattr(fifo).unwrap().nlink, 1);
    s.unlink(ROOT, b"n0-again").unwrap();
    assert_eq!(code(s.getattr(fifo)), StatusCode::NotFound, "a special file goes with its last name");
    assert!(gc_queue(&s).is_empty(), "nothing for GC to remove");
}

#[test]
fn rename_exchange_swaps_two_names_of_any_type() {
    use ember_proto::meta::RENAME_EXCHANGE;
    let s = store();
    let (a, b) = (mkdir(&s, ROOT, "a"), mkdir(&s, ROOT, "b"));
    let f = InodeId(mkfile(&s, a, "f").inode);
    let sub = mkdir(&s, b, "sub");
    s.rename(a, b"f", b, b"sub", RENAME_EXCHANGE).unwrap();
    assert_eq!(s.lookup(a, b"f").unwrap().inode, sub.0);
    assert_eq!(s.lookup(b, b"sub").unwrap().inode, f.0);
    assert_eq!((s.getattr(a).unwrap().nlink, s.getattr(b).unwrap().nlink), (3, 2), "the subdirectory moved from b to a");
    s.mkdir(sub, b"inside", dperm()).unwrap();
    assert_eq!(names(&s, a), ["f"]);
    assert_eq!(names(&s, sub), ["inside"], "a moved directory keeps its contents");
    // A file and itself through two names: nothing changes.
    s.link(f, ROOT, b"f2").unwrap();
    s.rename(ROOT, b"f2", b, b"sub", RENAME_EXCHANGE).unwrap();
    assert_eq!(s.getattr(f).unwrap().nlink, 2);

    assert_eq!(code(s.rename(a, b"missing", b, b"sub", RENAME_EXCHANGE)), StatusCode::NotFound);
    assert_eq!(code(s.rename(a, b"f", b, b"missing", RENAME_EXCHANGE)), StatusCode::NotFound);
    assert_eq!(code(s.rename(ROOT, b"a", sub, b"inside", RENAME_EXCHANGE)), StatusCode::InvalidRename, "a directory into its own subtree");
    assert_eq!(code(s.rename(a, b"f", b, b"sub", RENAME_EXCHANGE | RENAME_NOREPLACE)), StatusCode::InvalidArgument);
}

fn lock_req(inode: u64, client_id: u64, owner: u64, range: (u64, u64), kind: ember_proto::meta::LockKind) -> ember_proto::meta::LockReq {
    ember_proto::meta::LockReq { inode, client_id, owner, start: range.0, end: range.1, kind: kind.into(), pid: owner as u32, wait: false, flock: false }
}

fn flock_req(inode: u64, client_id: u64, owner: u64, kind: ember_proto::meta::LockKind) -> ember_proto::meta::LockReq {
    ember_proto::meta::LockReq { flock: true, ..lock_req(inode, client_id, owner, (0, i64::MAX as u64), kind) }
}

fn waiting(req: ember_proto::meta::LockReq) -> ember_proto::meta::LockReq {
    ember_proto::meta::LockReq { wait: true, ..req }
}

#[test]
fn a_wait_that_closes_a_cycle_of_waiters_is_a_deadlock() {
    use ember_proto::meta::LockKind::{Read, Write};
    let s = store();
    let [f, g, h] = ["f", "g", "h"].map(|n| mkfile(&s, InodeId::ROOT, n).inode);
    // Owners 10 (client 1), 20 and 30 (client 2) hold f, g and h.
    assert!(s.set_lock(&lock_req(f, 1, 10, (0, 0), Write)).unwrap().granted);
    assert!(s.set_lock(&lock_req(g, 2, 20, (0, 0), Write)).unwrap().granted);
    assert!(s.set_lock(&lock_req(h, 2, 30, (0, 9), Read)).unwrap().granted);
    assert!(!s.set_lock(&waiting(lock_req(g, 1, 10, (0, 0), Write))).unwrap().granted, "10 waits for 20");
    let dead = s.set_lock(&waiting(lock_req(f, 2, 20, (0, 0), Read)));
    assert_eq!(code(dead), StatusCode::Deadlock, "20 waiting for 10 closes the cycle");
    assert!(!s.set_lock(&lock_req(f, 2, 20, (0, 0), Read)).unwrap().granted, "without waiting it is a plain refusal");
    // Three owners: 10 waits for 20, 20 waits for 30 (a read lock is in the way of a write).
    assert!(!s.set_lock(&waiting(lock_req(h, 2, 20, (5, 5), Write))).unwrap().granted);
    assert_eq!(code(s.set_lock(&waiting(lock_req(f, 2, 30, (0, 0), Write)))), StatusCode::Deadlock);
    // Read locks do not wait for read locks, and a wait not renewed stops counting.
    assert!(s.set_lock(&waiting(lock_req(h, 1, 10, (0, 0), Read))).unwrap().granted);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!s.set_lock(&waiting(lock_req(f, 2, 30, (0, 0), Write))).unwrap().granted, "the old waits have expired");
}

#[test]
fn locks_conflict_between_owners_report_the_holder_and_go_with_release() {
    use ember_proto::meta::LockKind::{Read, Unlock, Write};
    let s = store();
    let f = mkfile(&s, InodeId::ROOT, "f").inode;
    assert!(s.set_lock(&lock_req(f, 1, 10, (0, 99), Write)).unwrap().granted);
    let refused = s.set_lock(&lock_req(f, 2, 20, (50, 50), Read)).unwrap();
    assert!(!refused.granted);
    let holder = refused.conflict.unwrap();
    assert_eq!((holder.start, holder.end, holder.kind, holder.pid), (0, 99, Write as i32, 10));
    assert!(s.get_lock(&lock_req(f, 2, 20, (100, 200), Write)).unwrap().granted);
    assert!(s.get_lock(&lock_req(f, 1, 10, (0, 5), Write)).unwrap().granted, "own locks are no conflict");

    assert!(s.set_lock(&lock_req(f, 1, 10, (0, 49), Unlock)).unwrap().granted);
    assert!(s.set_lock(&lock_req(f, 2, 20, (0, 49), Read)).unwrap().granted);
    s.release_locks(InodeId(f), 1, &[10], None).unwrap();
    assert!(s.set_lock(&lock_req(f, 3, 30, (50, 99), Write)).unwrap().granted);
    s.release_locks(InodeId(f), 2, &[20], None).unwrap();
    s.release_locks(InodeId(f), 3, &[30], None).unwrap();
    assert!(s.lock_scan(None, 10).unwrap().is_empty(), "an empty table leaves no record");
}

#[test]
fn flock_and_fcntl_locks_of_one_file_are_independent() {
    use ember_proto::meta::LockKind::{Read, Write};
    let s = store();
    let f = mkfile(&s, ROOT, "f").inode;
    assert!(s.set_lock(&lock_req(f, 1, 10, (0, 99), Write)).unwrap().granted);
    assert!(s.set_lock(&flock_req(f, 2, 20, Write)).unwrap().granted, "an flock beside another owner's fcntl write lock");
    assert!(s.get_lock(&lock_req(f, 3, 30, (0, 0), Read)).unwrap().conflict.is_some_and(|c| c.pid == 10), "F_GETLK sees the POSIX lock only");
    assert!(s.get_lock(&flock_req(f, 3, 30, Read)).unwrap().conflict.is_some_and(|c| c.pid == 20));
    assert!(!s.set_lock(&flock_req(f, 3, 30, Read)).unwrap().granted, "two flocks conflict");
    assert!(!s.set_lock(&lock_req(f, 3, 30, (50, 50), Read)).unwrap().granted, "two POSIX locks still conflict");
    assert!(s.get_lock(&lock_req(f, 3, 30, (100, 200), Write)).unwrap().granted, "beyond the POSIX lock, the flock is no conflict");
    let g = mkfile(&s, ROOT, "g").inode;
    let ranged = |client_id, owner, start, end| ember_proto::meta::LockReq { start, end, ..flock_req(g, client_id, owner, Write) };
    assert!(s.set_lock(&ranged(1, 10, 0, 0)).unwrap().granted);
    assert!(!s.set_lock(&ranged(2, 20, 1000, 2000)).unwrap().granted, "an flock is whole-file whatever range it names");
}

#[test]
fn a_release_of_one_lock_flavor_leaves_the_other() {
    use ember_proto::meta::LockKind::Write;
    let s = store();
    let f = mkfile(&s, ROOT, "f").inode;
    // The kernel's POSIX and flock owners are numbered apart: one number, two owners.
    assert!(s.set_lock(&lock_req(f, 1, 10, (0, 9), Write)).unwrap().granted);
    assert!(s.set_lock(&flock_req(f, 1, 10, Write)).unwrap().granted);
    s.release_locks(InodeId(f), 1, &[10], Some(false)).unwrap();
    assert!(s.set_lock(&lock_req(f, 2, 20, (0, 9), Write)).unwrap().granted, "the POSIX lock went");
    assert!(!s.set_lock(&flock_req(f, 2, 20, Write)).unwrap().granted, "the flock stayed");
    s.release_locks(InodeId(f), 1, &[10], Some(true)).unwrap();
    assert!(s.set_lock(&flock_req(f, 2, 20, Write)).unwrap().granted);
    s.release_locks(InodeId(f), 2, &[20], None).unwrap();
    assert!(s.lock_scan(None, 10).unwrap().is_empty(), "no flavor named: both go");
}

#[test]
fn waiting_flocks_are_never_a_deadlock() {
    use ember_proto::meta::LockKind::Write;
    let s = store();
    let [f, g, h] = ["f", "g", "h"].map(|n| mkfile(&s, ROOT, n).inode);
    assert!(s.set_lock(&flock_req(f, 1, 10, Write)).unwrap().granted);
    assert!(s.set_lock(&flock_req(g, 2, 20, Write)).unwrap().granted);
    assert!(!s.set_lock(&waiting(flock_req(g, 1, 10, Write))).unwrap().granted, "10 waits for 20");
    assert!(!s.set_lock(&waiting(flock_req(f, 2, 20, Write))).unwrap().granted, "20 waits for 10: Linux lets them hang");
    // A POSIX owner with the same numbers is someone else: no cycle through the flock waits.
    assert!(s.set_lock(&lock_req(f, 1, 10, (0, 0), Write)).unwrap().granted);
    assert!(s.set_lock(&lock_req(g, 2, 20, (0, 0), Write)).unwrap().granted);
    assert!(!s.set_lock(&waiting(lock_req(g, 1, 10, (0, 0), Write))).unwrap().granted);
    assert!(s.set_lock(&waiting(flock_req(h, 1, 10, Write))).unwrap().granted, "must not end the POSIX owner's wait");
    assert_eq!(code(s.set_lock(&waiting(lock_req(f, 2, 20, (0, 0), Write)))), StatusCode::Deadlock, "POSIX waits are still checked");
}

#[test]
fn bad_lock_requests_are_refused() {
    use ember_proto::meta::LockKind::Write;
    let s = store();
    let f = mkfile(&s, InodeId::ROOT, "f").inode;
    assert_eq!(code(s.set_lock(&lock_req(f, 1, 1, (9, 3), Write))), StatusCode::InvalidArgument);
    let mut bad_kind = lock_req(f, 1, 1, (0, 1), Write);
    bad_kind.kind = 7;
    assert_eq!(code(s.set_lock(&bad_kind)), StatusCode::InvalidArgument);
    assert_eq!(code(s.set_lock(&lock_req(999_999, 1, 1, (0, 1), Write))), StatusCode::NotFound);
    assert_eq!(code(s.set_lock(&lock_req(InodeId::ROOT.0, 1, 1, (0, 1), Write))), StatusCode::IsDirectory);
}

#[test]
fn gc_of_a_locked_unlinked_file_removes_its_locks() {
    use ember_proto::meta::LockKind::Write;
    let s = store();
    let Opened { attr, session, .. } = s.create(InodeId::ROOT, b"f", perm(), true, 1).unwrap();
    assert!(s.set_lock(&lock_req(attr.inode, 1, 1, (0, 9), Write)).unwrap().granted);
    s.unlink(InodeId::ROOT, b"f").unwrap();
    s.close(InodeId(attr.inode), session, None, None).unwrap();
    assert_eq!(s.gc_claim(&[InodeId(attr.inode)]).unwrap(), [InodeId(attr.inode)]);
    s.gc_finish(&[InodeId(attr.inode)]).unwrap();
    assert!(s.lock_scan(None, 10).unwrap().is_empty());
}

/// An ACL value as the kernel sends it: (tag, perm, id) entries after the version header.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

const NO_ID: u32 = u32::MAX;

#[test]
fn an_access_acl_sets_the_mode_and_chmod_rewrites_it() {
    use ember_proto::meta::XattrSetMode::Upsert;
    let s = store();
    let f = InodeId(mkfile(&s, InodeId::ROOT, "f").inode);
    let with_user = acl_value(&[(0x01, 6, NO_ID), (0x02, 4, 1000), (0x04, 0, NO_ID), (0x10, 4, NO_ID), (0x20, 0, NO_ID)]);
    s.set_xattr(f, crate::acl::ACCESS, &with_user, Upsert).unwrap();
    assert_eq!(s.getattr(f).unwrap().mode & 0o777, 0o640, "the group class is the mask");
    assert_eq!(s.get_xattr(f, crate::acl::ACCESS).unwrap(), with_user);
    s.setattr(f, SetAttrs { mode: Some(0o600), ..Default::default() }, &[]).unwrap();
    let after = crate::acl::Acl::decode(&s.get_xattr(f, crate::acl::ACCESS).unwrap()).unwrap();
    assert_eq!(after.mode_bits(), 0o600, "chmod reached the ACL's mask");
    // An ACL the mode says all of is the mode: nothing stays stored.
    let minimal = acl_value(&[(0x01, 7, NO_ID), (0x04, 5, NO_ID), (0x20, 1, NO_ID)]);
    s.set_xattr(f, crate::acl::ACCESS, &minimal, Upsert).unwrap();
    assert_eq!(s.getattr(f).unwrap().mode & 0o777, 0o751);
    assert_eq!(code(s.get_xattr(f, crate::acl::ACCESS)), StatusCode::NoAttribute);
    assert_eq!(code(s.set_xattr(f, crate::acl::ACCESS, &[2, 0, 0, 0, 1], Upsert)), StatusCode::InvalidArgument);
    assert_eq!(code(s.set_xattr(f, crate::acl::DEFAULT, &minimal, Upsert)), StatusCode::InvalidArgument, "default ACLs are for directories");
    assert_eq!(code(s.set_xattr(f, b"system.other", b"x", Upsert)), StatusCode::Unsupported);
}

#[test]
fn new_inodes_take_the_default_acl_instead_of_the_umask() {
    use ember_proto::meta::XattrSetMode::Upsert;
    let s = store();
    let d = mkdir(&s, InodeId::ROOT, "d");
    let default = acl_value(&[(0x01, 7, NO_ID), (0x02, 7, 1000), (0x04, 5, NO_ID), (0x10, 7, NO_ID), (0x20, 0, NO_ID)]);
    s.set_xattr(d, crate::acl::DEFAULT, &default, Upsert).unwrap();
    let umask = Perm::new(0o666, 0, 0).with_umask(0o077);
    let f = s.create(d, b"f", umask, true, 1).unwrap().attr;
    assert_eq!(f.mode & 0o777, 0o660, "the umask gives way to the default ACL");
    let access = crate::acl::Acl::decode(&s.get_xattr(InodeId(f.inode), crate::acl::ACCESS).unwrap()).unwrap();
    assert_eq!(access.mode_bits(), 0o660);
    let sub = s.mkdir(d, b"sub", Perm::new(0o777, 0, 0).with_umask(0o077)).unwrap();
    assert_eq!(sub.mode & 0o777, 0o770);
    assert_eq!(s.get_xattr(InodeId(sub.inode), crate::acl::DEFAULT).unwrap(), default, "a directory passes the default on");
    let plain = s.create(InodeId::ROOT, b"plain", umask, true, 1).unwrap().attr;
    assert_eq!(plain.mode & 0o777, 0o600, "without a default ACL the umask applies");
    assert_eq!(code(s.get_xattr(InodeId(plain.inode), crate::acl::ACCESS)), StatusCode::NoAttribute);
}

#[test]
fn block_counts_follow_the_latest_chunk_reports_and_truncates() {
    let s = store();
    let ino = InodeId(mkfile(&s, ROOT, "f").inode);
    assert!(matches!(s.spill_inline(ino, 1, false, 0), Ok(InlineReply::Done { .. })));
    assert!(matches!(s.spill_inline(ino, 1, true, 0), Ok(InlineReply::Done { .. })));
    let r = |index, version, blocks| ChunkBlocks { index, version, blocks };
    let blocks = |s: &MetaStore| s.getattr(ino).unwrap().blocks;
    assert_eq!(s.sync(ino, 3 << 20, None, &[r(0, 2, 256), r(1, 1, 256), r(2, 1, 100)]).unwrap().blocks, 612 * 8);
    // A late report of an older version changes nothing; a newer one replaces.
    s.sync(ino, 0, None, &[r(0, 1, 7), r(1, 3, 10)]).unwrap();
    assert_eq!(blocks(&s), (256 + 10 + 100) * 8);
    // A cut inside chunk 1: chunk 2 counts nothing, chunk 1 as reported.
    let cut = SetAttrs { size: Some((1 << 20) + 5), ..SetAttrs::default() };
    assert_eq!(s.setattr(ino, cut, &[r(1, 4, 1)]).unwrap().blocks, 257 * 8);
    s.sync(ino, 0, None, &[r(2, 2, 50)]).unwrap();
    assert_eq!(blocks(&s), 307 * 8, "a chunk written again after the cut counts again");
    let inline = mkfile(&s, ROOT, "small");
    assert_eq!(inline.blocks, 0);

    s.unlink(ROOT, b"f").unwrap();
    assert_eq!(s.gc_claim(&[ino]).unwrap(), [ino]);
    s.gc_finish(&[ino]).unwrap();
    let begin = crate::schema::CHUNK_BLOCKS_PREFIX.to_vec();
    let end = crate::schema::prefix_end(&begin);
    let rows = ember_kv::run(&*s.kv, |t| Ok::<_, MetaError>(t.snapshot_scan(&begin, &end, 0)?.len())).unwrap();
    assert_eq!(rows, 0, "a deleted file leaves no block counts");
}

#[test]
fn a_directory_counts_every_entry_added_or_removed() {
    let s = store();
    let d = mkdir(&s, ROOT, "d");
    let changes = |s: &MetaStore| s.getattr(d).unwrap().entry_changes;
    assert_eq!(changes(&s), 0);
    let f = mkfile(&s, d, "f");
    mkdir(&s, d, "sub");
    s.symlink(d, b"l", b"f", 0, 0).unwrap();
    s.link(InodeId(f.inode), d, b"g").unwrap();
    assert_eq!(changes(&s), 4);
    s.unlink(d, b"g").unwrap();
    s.rmdir(d, b"sub").unwrap();
    assert_eq!(changes(&s), 6);
    assert!(s.create(d, b"f", perm(), true, 7).is_err());
    assert_eq!(changes(&s), 6, "a create that fails changes nothing");
    s.rename(d, b"f", d, b"h", 0).unwrap();
    assert_eq!(changes(&s), 8, "a rename removes one name and adds one");
    assert_eq!(s.getattr(ROOT).unwrap().entry_changes, 1, "only the directory's own names count");
}

#[test]
fn a_tmpfile_has_no_name_waits_in_the_gc_queue_and_takes_a_name_from_link() {
    let s = store();
    let d = mkdir(&s, ROOT, "d");
    let before = s.getattr(d).unwrap();
    let Opened { attr, session, inline } = s.tmpfile(d, Perm::new(0o666, 5, 6).with_umask(0o022), 7).unwrap();
    let ino = InodeId(attr.inode);
    assert_eq!((attr.nlink, attr.mode & 0o777, attr.uid, attr.gid), (0, 0o644, 5, 6));
    assert_eq!(inline, Some(Vec::new()), "an inline file like any other new one");
    assert!(names(&s, d).is_empty());
    let after = s.getattr(d).unwrap();
    assert_eq!((after.mtime_ns, after.entry_changes), (before.mtime_ns, before.entry_changes), "the directory did not change");
    assert_eq!(s.statfs().unwrap().inodes, 3);
    let queued = s.gc_scan(None, 10).unwrap();
    assert_eq!((queued.len(), queued[0].inode, queued[0].sessions.len()), (1, ino, 1));
    assert!(s.gc_claim(&[ino]).unwrap().is_empty(), "its own session keeps it");

    assert_eq!(s.link(ino, ROOT, b"named").unwrap().nlink, 1);
    assert_eq!(s.lookup(ROOT, b"named").unwrap().inode, ino.0);
    assert!(gc_queue(&s).is_empty());
    s.close(ino, session, Some(3), None).unwrap();
    assert!(s.gc_claim(&[ino]).unwrap().is_empty());
    assert_eq!(s.getattr(ino).unwrap().nlink, 1, "a named tmpfile outlives its session");
}

#[test]
fn a_tmpfile_never_linked_goes_with_its_last_session() {
    let s = store();
    let Opened { attr, session, .. } = s.tmpfile(ROOT, perm(), 7).unwrap();
    let ino = InodeId(attr.inode);
    s.close(ino, session, None, None).unwrap();
    assert_eq!(s.gc_claim(&[ino]).unwrap(), [ino]);
    assert_eq!(code(s.link(ino, ROOT, b"late")), StatusCode::NotFound, "GC is removing it");
    s.gc_finish(&[ino]).unwrap();
    assert_eq!(code(s.getattr(ino)), StatusCode::NotFound);
    assert_eq!(s.statfs().unwrap().inodes, 1);
}

#[test]
fn a_tmpfile_takes_the_directory_default_acl_and_inline_limit() {
    use ember_proto::meta::XattrSetMode::Upsert;
    let s = store();
    let d = mkdir(&s, ROOT, "d");
    let default = acl_value(&[(0x01, 7, NO_ID), (0x02, 7, 1000), (0x04, 5, NO_ID), (0x10, 7, NO_ID), (0x20, 0, NO_ID)]);
    s.set_xattr(d, crate::acl::DEFAULT, &default, Upsert).unwrap();
    s.set_xattr(d, DIR_INLINE_MAX, b"16384", Upsert).unwrap();
    let attr = s.tmpfile(d, Perm::new(0o666, 0, 0).with_umask(0o077), 1).unwrap().attr;
    assert_eq!(attr.mode & 0o777, 0o660, "the umask gives way to the default ACL");
    assert!(s.get_xattr(InodeId(attr.inode), crate::acl::ACCESS).is_ok());
    assert_eq!(attr.inline_limit, 16384);
}

#[test]
fn a_tmpfile_needs_a_directory() {
    let s = store();
    let f = InodeId(mkfile(&s, ROOT, "f").inode);
    assert_eq!(code(s.tmpfile(f, perm(), 1)), StatusCode::NotDirectory);
    assert_eq!(code(s.tmpfile(InodeId(999_999), perm(), 1)), StatusCode::NotFound);
    assert!(gc_queue(&s).is_empty());
}

#[test]
fn new_inodes_in_a_setgid_directory_take_its_group_and_new_directories_its_setgid() {
    let s = store();
    let shared = mkdir(&s, ROOT, "shared");
    let setgid = SetAttrs { mode: Some(0o2775), gid: Some(4243), ..SetAttrs::default() };
    s.setattr(shared, setgid, &[]).unwrap();
    let file = mkfile(&s, shared, "f");
    let dir = s.mkdir(shared, b"d", dperm()).unwrap();
    let link = s.symlink(shared, b"l", b"f", 1000, 1000).unwrap();
    let fifo = s.mknod(shared, b"p", FileType::Fifo, perm(), 0).unwrap();
    let tmp = s.tmpfile(shared, perm(), 7).unwrap().attr;
    for a in [&file, &dir, &link, &fifo, &tmp] {
        assert_eq!((a.uid, a.gid), (1000, 4243), "inode {} takes the directory's group", a.inode);
    }
    assert_eq!(dir.mode & 0o7777, 0o2755, "a new directory is setgid too");
    assert_eq!(file.mode & 0o7777, 0o644, "a file is not");
    let plain = mkdir(&s, ROOT, "plain");
    assert_eq!(mkfile(&s, plain, "f").gid, 1000, "elsewhere the creator's group");
}
