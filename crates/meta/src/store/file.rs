//! Regular files: create, tmpfile, open, close, sync (length reports) and setattr.

use ember_proto::meta::{Attr, ChunkBlocks};
use ember_types::{FileType, InodeId, Layout};

use super::{check_name, new_record, now_ns, MetaStore, Perm, SetAttrs, Tx, PERM_MASK};
use crate::ids::random_u64;
use crate::schema::{session_key, DirEntryRecord, InodeRecord, LayoutRecord, SessionRecord};
use crate::MetaError;

/// Fills `slot` once; a transaction retry reuses the value instead of allocating again.
pub(super) fn once<T: Clone>(
    slot: &mut Option<T>,
    f: impl FnOnce() -> Result<T, MetaError>,
) -> Result<T, MetaError> {
    if let Some(v) = slot {
        return Ok(v.clone());
    }
    let v = f()?;
    *slot = Some(v.clone());
    Ok(v)
}

fn new_session_id() -> u64 {
    random_u64().max(1)
}

/// Applies a writer's report: the length only grows, the mtime only moves forward.
fn apply_write(
    rec: &mut InodeRecord,
    written_end: Option<u64>,
    mtime: Option<i64>,
    now: i64,
) -> bool {
    let before = rec.clone();
    if let Some(end) = written_end {
        rec.size = rec.size.max(end);
    }
    if written_end.is_some() || mtime.is_some() {
        let m = mtime.unwrap_or(now);
        rec.mtime_ns = rec.mtime_ns.max(m);
        rec.ctime_ns = rec.ctime_ns.max(m);
    }
    *rec != before
}

pub(super) fn require_file(ino: InodeId, rec: &InodeRecord) -> Result<(), MetaError> {
    match rec.kind()? {
        FileType::File => Ok(()),
        FileType::Directory => Err(MetaError::IsDirectory(ino)),
        kind => Err(MetaError::InvalidArgument(format!("inode {ino} is a {kind:?}, not a regular file"))),
    }
}

impl MetaStore {
    /// Creates and opens a regular file. An existing file is opened instead unless `exclusive`.
    pub fn create(
        &self,
        parent: InodeId,
        name: &[u8],
        perm: Perm,
        exclusive: bool,
        client_id: u64,
    ) -> Result<Opened, MetaError> {
        check_name(name)?;
        let mut new = NewFile::new(parent, perm, client_id);
        self.run(|t| {
            let dir = t.require_dir(parent)?;
            let now = now_ns();
            if let Some(entry) = t.entry(parent, name)? {
                return open_existing(t, parent, name, entry, exclusive, (client_id, new.session), now);
            }
            let (ino, rec) = self.put_new_file(t, &mut new, &dir, 1, now)?;
            t.put_entry(parent, name, ino, FileType::File);
            t.touch_dir(parent, now);
            opened_new(t, ino, &rec, new.session)
        })
    }

    /// Creates a regular file without a name in `parent` and opens it for writing (open(2)
    /// with O_TMPFILE). It is queued for GC from the start, as an unlinked open file is, so
    /// it goes once its last session ends unless `link` has given it a name meanwhile. No
    /// entry of `parent` changes, so neither do its times.
    pub fn tmpfile(&self, parent: InodeId, perm: Perm, client_id: u64) -> Result<Opened, MetaError> {
        let mut new = NewFile::new(parent, perm, client_id);
        self.run(|t| {
            let dir = t.require_dir(parent)?;
            let now = now_ns();
            let (ino, rec) = self.put_new_file(t, &mut new, &dir, 0, now)?;
            super::dir::queue_unlinked(t, ino, &rec, now);
            opened_new(t, ino, &rec, new.session)
        })
    }

    /// Puts a new regular file with `nlink` links, made in `new.parent` (whose record is
    /// `dir`), into the KV, open for writing in `new.session`; the caller names it, or not.
    fn put_new_file(
        &self,
        t: &mut Tx<'_>,
        new: &mut NewFile,
        dir: &InodeRecord,
        nlink: u32,
        now: i64,
    ) -> Result<(InodeId, InodeRecord), MetaError> {
        let ino = once(&mut new.id, || self.ids.allocate())?;
        let layout = once(&mut new.layout, || self.chains.layout())?;
        let inline_limit = dir.dir_inline_max.unwrap_or(self.inline_max);
        let (perm, acls) = super::xattr::new_inode_acls(t, new.parent, dir, new.perm, false)?;
        let mut rec = InodeRecord { inline_limit, nlink, ..new_file(&layout, perm, now) };
        super::xattr::put_inherited(t, ino, &mut rec, &acls);
        t.put_inode(ino, &rec);
        t.count_inodes(1);
        put_session(t, ino, new.session, new.client_id, true, now);
        Ok((ino, rec))
    }

    /// Opens a file by inode; the session keeps its chunks alive until `close`.
    pub fn open(
        &self,
        ino: InodeId,
        client_id: u64,
        write: bool,
    ) -> Result<Opened, MetaError> {
        let session = new_session_id();
        self.run(|t| {
            let rec = t.require_inode(ino)?;
            require_file(ino, &rec)?;
            if rec.nlink == 0 && t.gc_record(ino)?.is_some_and(|g| g.removing) {
                return Err(MetaError::NotFound(format!("inode {ino} (being deleted)")));
            }
            put_session(t, ino, session, client_id, write, now_ns());
            // Bookkeeping, not a change anyone reads: the next durable commit carries it,
            // and only a power cut before that loses it (see `close_sessions`).
            t.0.relax_durability();
            opened(t, ino, &rec, session)
        })
    }

    /// Ends sessions that have nothing to report, in one transaction. Like any session end it
    /// is not waited on: a power cut that loses it leaves sessions that live until their
    /// client is gone, which only holds an unlinked file's chunks that long.
    pub fn close_sessions(&self, sessions: &[(InodeId, u64)]) -> Result<(), MetaError> {
        self.run(|t| {
            for &(ino, s) in sessions {
                t.0.delete(&session_key(ino, s));
            }
            t.0.relax_durability();
            Ok(())
        })
    }

    /// Ends a session; a writer's `written_end` raises the length (`max(size, written_end)`).
    pub fn close(
        &self,
        ino: InodeId,
        session: u64,
        written_end: Option<u64>,
        mtime_ns: Option<i64>,
    ) -> Result<Attr, MetaError> {
        self.report_write(ino, Some(session), written_end, mtime_ns, &[])
    }

    /// A writer's report without closing (fsync): its length, and what the chunks it changed
    /// hold.
    pub fn sync(
        &self,
        ino: InodeId,
        written_end: u64,
        mtime_ns: Option<i64>,
        chunks: &[ChunkBlocks],
    ) -> Result<Attr, MetaError> {
        self.report_write(ino, None, Some(written_end), mtime_ns, chunks)
    }

    fn report_write(
        &self,
        ino: InodeId,
        session: Option<u64>,
        end: Option<u64>,
        mtime: Option<i64>,
        chunks: &[ChunkBlocks],
    ) -> Result<Attr, MetaError> {
        self.run(|t| {
            let mut rec = t.require_inode(ino)?;
            require_file(ino, &rec)?;
            if let Some(s) = session {
                t.0.delete(&session_key(ino, s));
                if end.is_none() && mtime.is_none() {
                    // Only a session ends (the client's flush reported its writes): not worth
                    // an fsync per close (see `close_sessions`).
                    t.0.relax_durability();
                }
            }
            let counted = rec.stored_blocks;
            super::blocks::apply(t, ino, &mut rec, chunks)?;
            if apply_write(&mut rec, end, mtime, now_ns()) || rec.stored_blocks != counted {
                t.put_inode(ino, &rec);
            }
            t.attr(ino, &rec)
        })
    }

    /// Changes the given fields and sets ctime. A size sets the length exactly: the client has
    /// already cut the chunks on storage (`chunks` says what they hold now); an inline file's
    /// bytes are cut or zero-filled here.
    pub fn setattr(&self, ino: InodeId, attrs: SetAttrs, chunks: &[ChunkBlocks]) -> Result<Attr, MetaError> {
        self.run(|t| {
            let mut rec = t.require_inode(ino)?;
            let now = now_ns();
            if let Some(size) = attrs.size {
                match (rec.inline_limit > 0, attrs.size_inline) {
                    (true, _) => super::inline::resize(t, ino, &rec, size)?,
                    (false, true) => return Err(MetaError::InlineMoved(format!("inode {ino}"))),
                    (false, false) => cut_blocks(t, ino, &mut rec, size, chunks)?,
                }
            }
            apply_setattr(ino, &mut rec, &attrs, now)?;
            if attrs.kill_setid && rec.kind()? != FileType::Directory {
                rec.mode = without_setid(rec.mode);
            }
            if attrs.drop_capability {
                super::xattr::drop_capability(t, ino, &rec);
            }
            if attrs.mode.is_some() {
                super::xattr::chmod_acl(t, ino, &rec)?;
            }
            if rec.kind()? == FileType::Directory {
                if let Some(m) = attrs.mtime_ns {
                    t.set_dir_mtime(ino, m);
                }
                t.touch_dir_ctime(ino, now);
            }
            t.put_inode(ino, &rec);
            t.attr(ino, &rec)
        })
    }
}

fn apply_setattr(
    ino: InodeId,
    rec: &mut InodeRecord,
    a: &SetAttrs,
    now: i64,
) -> Result<(), MetaError> {
    if let Some(size) = a.size {
        require_file(ino, rec)?;
        if a.mtime_ns.is_none() {
            // truncate(2) and O_TRUNC update mtime, even to the same length (as Linux does).
            rec.mtime_ns = now;
        }
        rec.size = size;
    }
    if let Some(mode) = a.mode {
        rec.mode = mode & PERM_MASK;
    }
    if let Some(uid) = a.uid {
        rec.uid = uid;
    }
    if let Some(gid) = a.gid {
        rec.gid = gid;
    }
    if let Some(at) = a.atime_ns {
        rec.atime_ns = at;
    }
    if let Some(mt) = a.mtime_ns {
        rec.mtime_ns = mt;
    }
    rec.ctime_ns = now;
    Ok(())
}

/// A truncate of a chunked file to `size`: the cut chunks' reports apply, and every chunk
/// wholly past the end holds nothing.
fn cut_blocks(t: &mut Tx<'_>, ino: InodeId, rec: &mut InodeRecord, size: u64, chunks: &[ChunkBlocks]) -> Result<(), MetaError> {
    super::blocks::apply(t, ino, rec, chunks)?;
    let chunk_size = rec.layout.as_ref().map_or(0, |l| u64::from(l.chunk_size));
    if chunk_size > 0 {
        let first_gone = u32::try_from(size.div_ceil(chunk_size)).unwrap_or(u32::MAX);
        super::blocks::drop_from(t, ino, rec, first_gone)?;
    }
    Ok(())
}

/// The mode after a change by someone without CAP_FSETID: no setuid, and no setgid if the
/// group may execute (setgid without it marks mandatory locking, which stays).
fn without_setid(mode: u32) -> u32 {
    let setgid = if mode & 0o010 != 0 { 0o2000 } else { 0 };
    mode & !(0o4000 | setgid)
}

fn new_file(layout: &Layout, perm: Perm, now: i64) -> InodeRecord {
    InodeRecord {
        layout: Some(LayoutRecord::from_layout(layout)),
        ..new_record(FileType::File, perm, now)
    }
}

/// A regular file about to be made and opened.
struct NewFile {
    parent: InodeId,
    perm: Perm,
    client_id: u64,
    session: u64,
    /// Taken on the first attempt: a transaction retry reuses them instead of allocating again.
    id: Option<InodeId>,
    layout: Option<Layout>,
}

impl NewFile {
    fn new(parent: InodeId, perm: Perm, client_id: u64) -> Self {
        NewFile { parent, perm, client_id, session: new_session_id(), id: None, layout: None }
    }
}

/// An open file: its attributes, the session and, for an inline file, its bytes.
#[derive(Debug)]
pub struct Opened {
    pub attr: Attr,
    pub session: u64,
    pub inline: Option<Vec<u8>>,
}

fn opened(t: &mut Tx<'_>, ino: InodeId, rec: &InodeRecord, session: u64) -> Result<Opened, MetaError> {
    let inline = if rec.inline_limit > 0 { Some(t.inline(ino)?.data) } else { None };
    Ok(Opened { attr: t.attr(ino, rec)?, session, inline })
}

/// A file just made: an inline one holds no bytes yet.
fn opened_new(t: &mut Tx<'_>, ino: InodeId, rec: &InodeRecord, session: u64) -> Result<Opened, MetaError> {
    let inline = (rec.inline_limit > 0).then(Vec::new);
    Ok(Opened { attr: t.attr(ino, rec)?, session, inline })
}

fn put_session(t: &mut Tx<'_>, ino: InodeId, session: u64, client_id: u64, write: bool, now: i64) {
    t.put_session(
        ino,
        session,
        &SessionRecord {
            client_id,
            write,
            opened_ns: now,
        },
    );
}

/// `create` of a name that exists: O_EXCL fails, a file is opened, anything else is an error.
fn open_existing(
    t: &mut Tx<'_>,
    parent: InodeId,
    name: &[u8],
    entry: DirEntryRecord,
    exclusive: bool,
    (client_id, session): (u64, u64),
    now: i64,
) -> Result<Opened, MetaError> {
    let ino = InodeId(entry.inode);
    let exists = || {
        MetaError::AlreadyExists(format!(
            "{:?} in directory {parent}",
            String::from_utf8_lossy(name)
        ))
    };
    if exclusive {
        return Err(exists());
    }
    match entry.kind()? {
        FileType::Directory => return Err(MetaError::IsDirectory(ino)),
        FileType::File => {}
        // The kernel resolves symlinks and opens FIFOs and devices itself: any other kind
        // here is a name clash.
        _ => return Err(exists()),
    }
    let rec = t.require_inode(ino)?;
    put_session(t, ino, session, client_id, true, now);
    opened(t, ino, &rec, session)
}
