//! The file system as the kernel sees it, minus the kernel: inodes, open handles, write
//! buffers and directory listings on top of `EmberClient`.

mod closes;
mod copy;
mod dir_attrs;
mod dirty;
mod holes;
mod inline;
mod locks;
mod names;
mod privileges;
mod reports;
mod statahead;
mod xattr;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ember_client::{EmberClient, Retry};
use ember_proto::meta::*;
use ember_types::{FileType, InodeId, Layout, Status, StatusCode};

use dirty::DirtyExtents;
use closes::SessionCloser;
use dir_attrs::DirAttrs;
use inline::InlineFile;
use names::{Absence, KnownNames};
use reports::ChunkReports;
use statahead::Statahead;
use xattr::MissingXattrs;

pub use holes::SeekFor;
pub use locks::LockSpec;

/// Written extents held before a flush; past this many, they are sent even if small.
const MAX_DIRTY_EXTENTS: usize = 1024;

#[derive(Clone, Debug)]
pub struct VfsConfig {
    /// Writes are gathered up to this many bytes before they go to storage (at the latest on
    /// close or fsync).
    pub write_buffer: usize,
    /// Entries fetched per readdir RPC.
    pub readdir_page: u32,
    /// How long a directory this mount made or listed answers lookups of missing names
    /// without meta (`vfs::names`); zero asks meta every time.
    pub negative_ttl: Duration,
    /// How long attributes may be served without asking meta (the kernel's attribute TTL,
    /// and directories' attributes kept here, `vfs::dir_attrs`).
    pub attr_ttl: Duration,
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            write_buffer: 4 << 20,
            readdir_page: 512,
            negative_ttl: Duration::from_secs(1),
            attr_ttl: Duration::from_secs(1),
        }
    }
}

/// What a setattr drops besides what it sets (see `vfs::privileges`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kill {
    pub setid: bool,
    pub capability: bool,
}

/// Who creates an inode: its owner, and the umask, which meta applies unless the parent
/// directory has a default ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creator {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

/// A name looked up, and how long the kernel may keep it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub inode: u64,
    pub file_type: FileType,
}

/// What this client knows about one inode that has open handles.
#[derive(Default)]
struct InodeState {
    /// Written bytes not yet sent to storage.
    dirty: DirtyExtents,
    /// Length as this client sees it: the size at open, grown by writes, set by truncate.
    size: u64,
    /// Mode bits as meta last told this client.
    mode: u32,
    /// Highest end written by this client and not yet reported to meta.
    unreported_end: Option<u64>,
    /// A failed flush, reported by the next write, flush, fsync or close.
    error: Option<Status>,
    /// The flush started when the buffer filled, still sending while new writes gather.
    in_flight: Option<tokio::task::JoinHandle<Result<Vec<ChunkBlocks>, Status>>>,
    /// What the chunks this client changed hold now, for meta's block count.
    reports: ChunkReports,
    open_handles: usize,
    /// The bytes of an inline file; `None` for a chunked one.
    inline: Option<InlineFile>,
    /// Lock owners that may hold locks on the file through this mount.
    lock_owners: HashSet<locks::LockOwner>,
}

impl InodeState {
    /// st_blocks (512-byte units) of what this client wrote and meta has not counted yet:
    /// the chunks storage answered for, and the buffered bytes as whole 4 KiB blocks, as a
    /// local file system counts delayed allocations at once. Meta's count covers the rest;
    /// the larger of the two is shown until the next fsync or close reports these.
    fn unreported_blocks(&self) -> u64 {
        let stored: u64 = self.reports.pending().iter().map(|r| u64::from(r.blocks)).sum();
        (stored + (self.dirty.bytes() as u64).div_ceil(4096)) * 8
    }
}

struct Handle {
    inode: InodeId,
    session_id: u64,
    layout: Option<Layout>,
    state: Arc<tokio::sync::Mutex<InodeState>>,
    /// Lock owners that locked through this handle (flock's owner is the open file).
    lock_owners: Mutex<HashSet<locks::LockOwner>>,
    /// The client's session lapses before the first lock through this handle was asked for:
    /// one more since, and those locks may be gone (`vfs::locks`).
    locked_at_lapses: std::sync::OnceLock<u64>,
}

impl Handle {
    /// The layout of the open file; `IsDirectory` for anything else.
    fn file_layout(&self) -> Result<&Layout, Status> {
        self.layout.as_ref().ok_or_else(|| Status::new(StatusCode::IsDirectory, "not a file"))
    }
}

pub struct Vfs {
    client: Arc<EmberClient>,
    config: VfsConfig,
    next_fh: AtomicU64,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    inodes: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<InodeState>>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    missing_xattrs: MissingXattrs,
    names: Arc<KnownNames>,
    dir_attrs: DirAttrs,
    statahead: Arc<Statahead>,
    closes: Arc<SessionCloser>,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn attr_of(resp: AttrResp) -> Result<Attr, Status> {
    resp.attr.ok_or_else(|| Status::internal("meta replied without attributes"))
}

fn layout_of(attr: &Attr) -> Result<Option<Layout>, Status> {
    attr.layout
        .as_ref()
        .map(|l| ember_proto::layout_from_msg(l).map_err(|e| Status::internal(format!("bad layout from meta: {e}"))))
        .transpose()
}

impl Vfs {
    pub fn new(client: Arc<EmberClient>, config: VfsConfig) -> Self {
        Vfs {
            closes: SessionCloser::new(client.clone()),
            client,
            names: Arc::new(KnownNames::new(config.negative_ttl)),
            dir_attrs: DirAttrs::new(config.attr_ttl),
            statahead: Arc::new(Statahead::new(config.attr_ttl)),
            config,
            next_fh: AtomicU64::new(1),
            handles: Mutex::default(),
            inodes: Mutex::default(),
            dirs: Mutex::default(),
            missing_xattrs: MissingXattrs::default(),
        }
    }

    pub fn client(&self) -> &Arc<EmberClient> {
        &self.client
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, Status> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or_else(|| Status::new(StatusCode::StaleHandle, format!("no open handle {fh}")))
    }

    /// Overlays what this client knows but meta may not yet: sizes of files being written.
    async fn local_view(&self, mut attr: Attr) -> Attr {
        let state = lock(&self.inodes).get(&attr.inode).cloned();
        if let Some(state) = state {
            let mut st = state.lock().await;
            attr.size = attr.size.max(st.size);
            attr.blocks = attr.blocks.max(st.unreported_blocks());
            st.mode = attr.mode;
        }
        attr
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Entry, Status> {
        if self.known_absent(parent, name).await {
            return Err(Status::new(StatusCode::NotFound, "no such entry (the directory's names are known here)"));
        }
        if let Some((attr, ttl)) = self.statahead.get(parent, name) {
            statahead::count_hit();
            return Ok(Entry { attr: self.local_view(attr).await, ttl });
        }
        let r = LookupReq { parent, name: name.to_vec() };
        let attr = attr_of(self.client.meta(&r, Retry::Idempotent).await?)?;
        self.dir_attrs.put(&attr);
        if let Some(plan) = self.statahead.missed(parent, name) {
            self.read_ahead(parent, plan);
        }
        Ok(Entry { attr: self.local_view(attr).await, ttl: self.config.attr_ttl })
    }

    /// Reads a directory ahead in a task of its own (`vfs::statahead`); one that read every
    /// name also tells `vfs::names` what the directory holds.
    fn read_ahead(&self, dir: u64, plan: statahead::Plan) {
        let (client, ahead, names, page) = (self.client.clone(), self.statahead.clone(), self.names.clone(), self.config.readdir_page);
        let start = names.listing_start();
        tokio::spawn(async move {
            if let Some(all) = statahead::read_ahead(&client, &ahead, plan, page).await {
                names.listed(dir, all.iter().map(Vec::as_slice), start);
            }
        });
    }

    /// Whether this mount knows `name` is not in `dir`, renewing what it knows of `dir` with
    /// one getattr when that has just expired (`vfs::names`).
    async fn known_absent(&self, dir: u64, name: &[u8]) -> bool {
        match self.names.absent(dir, name) {
            Absence::Absent => true,
            Absence::Unknown => false,
            Absence::Expired { .. } => {
                let since = Instant::now();
                let Ok(resp) = self.client.meta(&GetAttrReq { inode: dir }, Retry::Idempotent).await else { return false };
                let changes = resp.attr.map_or(u64::MAX, |a| a.entry_changes);
                self.names.renew(dir, changes, since) && self.names.absent(dir, name) == Absence::Absent
            }
        }
    }

    pub async fn getattr(&self, inode: u64) -> Result<Attr, Status> {
        if let Some(attr) = self.dir_attrs.get(inode) {
            return Ok(attr);
        }
        let attr = attr_of(self.client.meta(&GetAttrReq { inode }, Retry::Idempotent).await?)?;
        self.dir_attrs.put(&attr);
        Ok(self.local_view(attr).await)
    }

    /// Takes in a change of `name` in `dir` by this mount, sent at `since`: what it did to
    /// the names known here, and the directory as meta read it after the change.
    fn name_changed<T>(&self, dir: u64, name: &[u8], made: bool, since: Instant, outcome: &Result<T, Status>, parent: Option<&Attr>) {
        if made {
            self.statahead.mark(dir);
        } else {
            // The inode that lost the name may have others, elsewhere (this covers `dir` too).
            self.statahead.mark_all();
        }
        self.names.changed(dir, name, made, outcome);
        match parent {
            Some(p) if outcome.is_ok() => {
                self.dir_attrs.put(p);
                self.names.confirm(dir, p.entry_changes, since);
            }
            _ => self.dir_attrs.forget(dir),
        }
    }

    /// Finishes a change that makes `name` in `dir` (mkdir, mknod, symlink, link).
    fn made(&self, dir: u64, name: &[u8], since: Instant, resp: Result<AttrResp, Status>) -> Result<Attr, Status> {
        let (made, parent) = match resp {
            Ok(r) => (r.attr.ok_or_else(|| Status::internal("meta replied without attributes")), r.parent),
            Err(e) => (Err(e), None),
        };
        self.name_changed(dir, name, true, since, &made, parent.as_ref());
        made
    }

    /// Finishes a change that removes `name` from `dir` (unlink, rmdir).
    fn removed(&self, dir: u64, name: &[u8], since: Instant, resp: Result<RemovedResp, Status>) -> Result<(), Status> {
        let (removed, parent) = match resp {
            Ok(r) => (Ok(()), r.parent),
            Err(e) => (Err(e), None),
        };
        self.name_changed(dir, name, false, since, &removed, parent.as_ref());
        removed
    }

    pub async fn mkdir(&self, parent: u64, name: &[u8], mode: u32, who: Creator) -> Result<Attr, Status> {
        let r = MkdirReq { parent, name: name.to_vec(), mode, uid: who.uid, gid: who.gid, umask: who.umask };
        let since = Instant::now();
        let made = self.made(parent, name, since, self.client.meta(&r, Retry::OnlyIfNotSent).await);
        if let Ok(a) = &made {
            self.dir_attrs.put(a);
            self.names.made_empty(a.inode, a.entry_changes);
        }
        made
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), Status> {
        let r = UnlinkReq { parent, name: name.to_vec() };
        let since = Instant::now();
        self.removed(parent, name, since, self.client.meta(&r, Retry::OnlyIfNotSent).await)
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), Status> {
        let r = RmdirReq { parent, name: name.to_vec() };
        let since = Instant::now();
        let removed = self.removed(parent, name, since, self.client.meta(&r, Retry::OnlyIfNotSent).await);
        // The removed directory's own attributes (nlink 0 now) are kept under an inode not
        // known here.
        self.dir_attrs.forget_all();
        removed
    }

    pub async fn rename(&self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8], flags: u32) -> Result<(), Status> {
        let r = RenameReq { old_parent: parent, old_name: name.to_vec(), new_parent, new_name: new_name.to_vec(), flags };
        let renamed = self.client.meta(&r, Retry::OnlyIfNotSent).await.map(|_| ());
        // Both directories changed, and so did a moved directory's ctime.
        self.dir_attrs.forget_all();
        // Both directories, and the other names of a replaced file.
        self.statahead.mark_all();
        if renamed.is_ok() {
            // An exchange leaves both names in place.
            let exchange = flags & libc::RENAME_EXCHANGE != 0;
            self.names.changed(parent, name, exchange, &renamed);
            self.names.changed(new_parent, new_name, true, &renamed);
            self.names.uncounted(parent);
            self.names.uncounted(new_parent);
        } else {
            self.names.forget(parent);
            self.names.forget(new_parent);
        }
        renamed
    }

    pub async fn link(&self, inode: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr, Status> {
        let _mark = self.statahead.mark_when_done(inode);
        let r = LinkReq { inode, new_parent, new_name: new_name.to_vec() };
        let since = Instant::now();
        let linked = self.made(new_parent, new_name, since, self.client.meta(&r, Retry::OnlyIfNotSent).await)?;
        Ok(self.local_view(linked).await)
    }

    pub async fn symlink(&self, parent: u64, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr, Status> {
        let r = SymlinkReq { parent, name: name.to_vec(), target: target.to_vec(), uid, gid };
        let since = Instant::now();
        self.made(parent, name, since, self.client.meta(&r, Retry::OnlyIfNotSent).await)
    }

    pub async fn mknod(&self, parent: u64, name: &[u8], kind: FileType, mode: u32, who: Creator, rdev: u32) -> Result<Attr, Status> {
        let file_type = u32::from(kind.to_u8());
        let r = MknodReq { parent, name: name.to_vec(), file_type, mode, uid: who.uid, gid: who.gid, rdev, umask: who.umask };
        let since = Instant::now();
        self.made(parent, name, since, self.client.meta(&r, Retry::OnlyIfNotSent).await)
    }

    pub async fn readlink(&self, inode: u64) -> Result<Vec<u8>, Status> {
        Ok(self.client.meta(&ReadlinkReq { inode }, Retry::Idempotent).await?.target)
    }

    pub async fn statfs(&self) -> Result<StatFsResp, Status> {
        self.client.meta(&StatFsReq {}, Retry::Idempotent).await
    }

    /// Changes attributes; a size change first cuts or clears the chunks on storage.
    #[allow(clippy::too_many_arguments)]
    pub async fn setattr(
        &self,
        inode: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime_ns: Option<i64>,
        mtime_ns: Option<i64>,
        kill: Kill,
    ) -> Result<Attr, Status> {
        let _mark = self.statahead.mark_when_done(inode);
        let mut attempts = 0;
        let resp = loop {
            let (size_inline, chunks) = match size {
                Some(new_size) => self.truncate(inode, new_size).await?,
                None => (false, Vec::new()),
            };
            let (kill_setid, drop_capability) = (kill.setid, kill.capability);
            let r = SetAttrReq { inode, mode, uid, gid, size, atime_ns, mtime_ns, size_inline, kill_setid, drop_capability, chunks };
            match self.client.meta(&r, Retry::Idempotent).await {
                // Another client moved the file to chunks meanwhile: cut the chunks instead.
                Err(e) if e.code == StatusCode::InlineMoved && attempts < 3 => attempts += 1,
                other => break other?,
            }
        };
        let attr = attr_of(resp)?;
        self.dir_attrs.put(&attr);
        Ok(self.local_view(attr).await)
    }

    /// Cuts or extends a file's data; returns whether it did so on the file's inline bytes
    /// (meta then resizes them), not on chunks, and what the chunks it cut hold.
    async fn truncate(&self, inode: u64, new_size: u64) -> Result<(bool, Vec<ChunkBlocks>), Status> {
        let state = lock(&self.inodes).get(&inode).cloned();
        let mut guard = match &state {
            Some(s) => Some(s.lock().await),
            None => None,
        };
        let attr = attr_of(self.client.meta(&GetAttrReq { inode }, Retry::Idempotent).await?)?;
        let layout = layout_of(&attr)?.ok_or_else(|| Status::new(StatusCode::IsDirectory, "only files can be truncated"))?;
        if attr.inline_limit > 0 && self.truncate_inline(InodeId(inode), &layout, &attr, new_size, guard.as_deref_mut()).await? {
            return Ok((true, Vec::new()));
        }
        let mut known = attr.size;
        if let Some(st) = guard.as_deref_mut() {
            self.flush_buffer(InodeId(inode), &layout, st).await?;
            known = known.max(st.size);
        }
        // Cut to the smaller length: bytes past it must read as zeros after growing again.
        let mut chunks = self.client.truncate_chunks(InodeId(inode), &layout, known.min(new_size)).await?;
        if let Some(st) = guard.as_deref_mut() {
            st.size = new_size;
            st.unreported_end = None;
            // They go with the truncate, before meta counts the chunks past the end as empty:
            // sent later, they would count those chunks again.
            chunks.extend(st.reports.pending());
            st.reports.clear();
        }
        Ok((false, chunks))
    }

    /// Truncate of a file meta reported inline: resizes the bytes held here if the new size
    /// fits (true), else moves the file to chunks first (false: cut the chunks next).
    async fn truncate_inline(
        &self,
        inode: InodeId,
        layout: &Layout,
        attr: &Attr,
        new_size: u64,
        st: Option<&mut InodeState>,
    ) -> Result<bool, Status> {
        let mut blank = InodeState::default();
        let st = st.unwrap_or(&mut blank);
        if st.inline.is_none() && st.open_handles == 0 {
            st.inline = Some(InlineFile::new(Vec::new(), attr.inline_limit));
        }
        if st.inline.as_ref().is_some_and(|f| f.spill_due) {
            self.flush_buffer(inode, layout, st).await?;
            return Ok(false);
        }
        self.flush_inline(inode, layout, st).await?;
        let Some(file) = st.inline.as_mut() else { return Ok(false) };
        if new_size <= file.limit {
            file.data.resize(new_size as usize, 0);
            st.size = new_size;
            return Ok(true);
        }
        self.spill(inode, layout, st).await?;
        Ok(false)
    }

    /// Creates and opens a regular file.
    pub async fn create(&self, parent: u64, name: &[u8], mode: u32, who: Creator, flags: i32) -> Result<(Attr, u64), Status> {
        let exclusive = flags & libc::O_EXCL != 0;
        let client_id = self.client.client_id();
        let r = CreateReq { parent, name: name.to_vec(), mode, uid: who.uid, gid: who.gid, exclusive, client_id, umask: who.umask };
        let retry = if exclusive { Retry::OnlyIfNotSent } else { Retry::Idempotent };
        let since = Instant::now();
        let resp = self.client.meta(&r, retry).await;
        let dir = resp.as_ref().ok().and_then(|r| r.parent.as_ref());
        self.name_changed(parent, name, true, since, &resp, dir);
        let resp = resp?;
        let attr = resp.attr.ok_or_else(|| Status::internal("create replied without attributes"))?;
        // An existing file opened by a create may have been truncated.
        self.statahead.mark(attr.inode);
        let fh = self.register_handle(&attr, resp.session_id, resp.inline_data).await?;
        Ok((self.local_view(attr).await, fh))
    }

    /// Creates a regular file without a name in `parent` and opens it (open(2) with
    /// O_TMPFILE); `link` may name it later. No name changes, so nothing known of `parent`'s
    /// names does. The open's O_EXCL (the file may never be linked) is the kernel's to
    /// enforce.
    pub async fn tmpfile(&self, parent: u64, mode: u32, who: Creator) -> Result<(Attr, u64), Status> {
        let client_id = self.client.client_id();
        let r = TmpfileReq { parent, mode, uid: who.uid, gid: who.gid, client_id, umask: who.umask };
        // A repeat would make a second file, held by its session until this client is gone.
        let resp = self.client.meta(&r, Retry::OnlyIfNotSent).await?;
        let attr = resp.attr.ok_or_else(|| Status::internal("tmpfile replied without attributes"))?;
        let fh = self.register_handle(&attr, resp.session_id, resp.inline_data).await?;
        Ok((self.local_view(attr).await, fh))
    }

    pub async fn open(&self, inode: u64, flags: i32) -> Result<u64, Status> {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let r = OpenReq { inode, client_id: self.client.client_id(), write: writable };
        let resp = self.client.meta(&r, Retry::Idempotent).await?;
        let attr = resp.attr.ok_or_else(|| Status::internal("open replied without attributes"))?;
        self.register_handle(&attr, resp.session_id, resp.inline_data).await
    }

    async fn register_handle(&self, attr: &Attr, session_id: u64, inline: Option<Vec<u8>>) -> Result<u64, Status> {
        let layout = layout_of(attr)?;
        if !attr.has_xattrs {
            self.missing_xattrs.note_none(attr.inode);
        }
        let state = lock(&self.inodes).entry(attr.inode).or_default().clone();
        {
            let mut st = state.lock().await;
            if st.open_handles == 0 {
                st.size = attr.size;
                st.mode = attr.mode;
                st.inline = inline.map(|data| InlineFile::new(data, attr.inline_limit));
            }
            st.open_handles += 1;
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            inode: InodeId(attr.inode),
            session_id,
            layout,
            state,
            lock_owners: Mutex::default(),
            locked_at_lapses: std::sync::OnceLock::new(),
        };
        lock(&self.handles).insert(fh, Arc::new(handle));
        Ok(fh)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Status> {
        let h = self.handle(fh)?;
        self.check_locks(&h)?;
        let layout = h.file_layout()?;
        let file_size = {
            let mut st = h.state.lock().await;
            if let Some(bytes) = st.inline.as_ref().and_then(|f| f.read(offset, size as usize)) {
                return Ok(bytes);
            }
            // Read-after-write within this client: what is buffered must be readable.
            self.flush_buffer(h.inode, layout, &mut st).await?;
            st.size
        };
        if offset >= file_size {
            return Ok(Vec::new());
        }
        let len = (file_size - offset).min(u64::from(size)) as usize;
        self.client.read(h.inode, layout, offset, len).await
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Status> {
        let h = self.handle(fh)?;
        self.check_locks(&h)?;
        let layout = h.file_layout()?;
        let mut st = h.state.lock().await;
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if st.inline.as_mut().is_some_and(|file| file.write(offset, data)) {
            st.size = st.size.max(offset + data.len() as u64);
            return Ok(data.len() as u32);
        }
        if st.dirty.bytes() + data.len() > self.config.write_buffer || st.dirty.count() >= MAX_DIRTY_EXTENTS {
            self.start_flush(h.inode, layout, &mut st).await?;
        }
        st.dirty.insert(offset, data);
        let end = offset + data.len() as u64;
        st.size = st.size.max(end);
        st.unreported_end = Some(st.unreported_end.unwrap_or(0).max(end));
        if st.dirty.bytes() >= self.config.write_buffer {
            self.start_flush(h.inode, layout, &mut st).await?;
        }
        Ok(data.len() as u32)
    }

    /// Sends everything buffered and waits until storage has it.
    async fn flush_buffer(&self, inode: InodeId, layout: &Layout, st: &mut InodeState) -> Result<(), Status> {
        self.start_flush(inode, layout, st).await?;
        settle_in_flight(st).await
    }

    /// Starts sending what is buffered and returns while it is on its way, so the writer goes
    /// on filling a fresh buffer (write-behind). One flush at a time is in flight: the next
    /// waits for it, which keeps overlapping writes in order and bounds the memory held to
    /// two buffers.
    async fn start_flush(&self, inode: InodeId, layout: &Layout, st: &mut InodeState) -> Result<(), Status> {
        settle_in_flight(st).await?;
        if st.dirty.is_empty() {
            return Ok(());
        }
        if st.inline.as_ref().is_some_and(|f| f.spill_due) {
            self.spill(inode, layout, st).await?;
        }
        let extents = st.dirty.take().into_iter().map(|(offset, bytes)| (offset, Bytes::from(bytes))).collect();
        let (client, layout) = (self.client.clone(), layout.clone());
        st.in_flight = Some(tokio::spawn(async move { client.write_extents(inode, &layout, extents).await }));
        Ok(())
    }

    /// Makes everything written through this handle durable and its length known to meta.
    /// Called on every close(2) (FUSE flush) and on fsync.
    pub async fn flush(&self, fh: u64) -> Result<(), Status> {
        let h = self.handle(fh)?;
        let _mark = self.statahead.mark_when_done(h.inode.0);
        if let Err(e) = self.check_locks(&h) {
            // What was buffered here was written under locks that may be gone: an open from
            // now on starts from what meta holds, not from this state.
            self.detach_state(&h);
            return Err(e);
        }
        let Some(layout) = h.layout.as_ref() else { return Ok(()) };
        let mut st = h.state.lock().await;
        // A failure of the flush in flight lands in `error`, reported just below.
        let _ = settle_in_flight(&mut st).await;
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        self.flush_inline(h.inode, layout, &mut st).await?;
        self.flush_buffer(h.inode, layout, &mut st).await?;
        if st.unreported_end.is_some() || !st.reports.is_empty() {
            let written_end = st.unreported_end.unwrap_or(0);
            let r = SyncReq { inode: h.inode.0, written_end, mtime_ns: Some(now_ns()), chunks: st.reports.pending() };
            self.client.meta(&r, Retry::Idempotent).await?;
            st.unreported_end = None;
            st.reports.clear();
        }
        Ok(())
    }

    /// close(2) of a descriptor: [`flush`](Self::flush), then the POSIX locks of the closing
    /// process (`owner`) on the file are given back, after its data is out.
    pub async fn close(&self, fh: u64, owner: u64) -> Result<(), Status> {
        let flushed = self.flush(fh).await;
        let h = self.handle(fh)?;
        // The locks go even if the data could not: close(2) releases them whatever it reports.
        let released = self.release_owner(&h, owner).await;
        flushed.and(released)
    }

    /// Drops a handle: flushes what is left, gives back the locks taken through it and ends
    /// its session on meta.
    pub async fn release(&self, fh: u64) -> Result<(), Status> {
        let flushed = self.flush(fh).await;
        let Some(h) = lock(&self.handles).remove(&fh) else { return flushed };
        let flushed = flushed.and(self.release_handle_owners(&h).await);
        let last = {
            let mut st = h.state.lock().await;
            st.open_handles = st.open_handles.saturating_sub(1);
            st.open_handles == 0
        };
        if last {
            self.detach_state(&h);
        }
        // `flush` above already reported the length; what is left is ending the session.
        self.closes.close(h.inode.0, h.session_id);
        flushed
    }

    /// Unless a later open already replaced it, the handle's state stops being the inode's.
    fn detach_state(&self, h: &Handle) {
        let mut inodes = lock(&self.inodes);
        if inodes.get(&h.inode.0).is_some_and(|s| Arc::ptr_eq(s, &h.state)) {
            inodes.remove(&h.inode.0);
        }
    }

    /// Before unmounting: ends the sessions whose releases are still being gathered.
    pub async fn finish(&self) {
        self.closes.send_all().await;
    }

    /// Lists a directory once per open and serves the kernel's offsets from that listing, so
    /// every name appears exactly once even if the directory changes while it is read.
    pub async fn opendir(&self, inode: u64) -> Result<u64, Status> {
        let start = self.names.listing_start();
        let mut entries = Vec::new();
        let mut after = Vec::new();
        loop {
            let r = ReadDirReq { inode, after: after.clone(), limit: self.config.readdir_page, with_attrs: false };
            let resp = self.client.meta(&r, Retry::Idempotent).await?;
            for e in &resp.entries {
                let file_type = FileType::from_u8(e.file_type as u8)
                    .ok_or_else(|| Status::internal(format!("bad file type {} in listing", e.file_type)))?;
                entries.push(DirEntry { name: e.name.clone(), inode: e.inode, file_type });
            }
            match (resp.more, resp.entries.last()) {
                (true, Some(last)) => after = last.name.clone(),
                _ => break,
            }
        }
        self.names.listed(inode, entries.iter().map(|e| e.name.as_slice()), start);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(entries));
        Ok(fh)
    }

    pub fn listing(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>, Status> {
        lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or_else(|| Status::new(StatusCode::StaleHandle, format!("no open directory {fh}")))
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }
}

/// Waits for the flush in flight, if any; its failure is kept to be reported again by the
/// next flush, fsync or close, since the writes it carried are lost.
async fn settle_in_flight(st: &mut InodeState) -> Result<(), Status> {
    let Some(task) = st.in_flight.take() else { return Ok(()) };
    match task.await.unwrap_or_else(|e| Err(Status::internal(format!("flush task failed: {e}")))) {
        Ok(reports) => {
            st.reports.add(reports);
            Ok(())
        }
        Err(e) => {
            st.error = Some(e.clone());
            Err(e)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
