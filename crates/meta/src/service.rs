//! The RPC face of [`MetaStore`]: decodes a request by method id, runs the store call, encodes
//! the reply. Under `sync` durability, calls that change something run on the blocking pool
//! (their commit waits for an fsync), or in place on a caller's thread that may block (a FUSE
//! worker of a mount that runs this server in process). Everything else (read-only calls, and
//! every call under `periodic` durability, whose commits only hand the journal to the OS)
//! takes microseconds from the KV's cache and runs in place, saving the round trip through
//! that pool.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ember_net::{decode_body, Request, Response, Service, ServiceFuture};
use ember_proto::meta::*;
use ember_proto::Method;
use ember_types::{FileType, InodeId, Status, StatusCode};

use crate::store::{Perm, SetAttrs};
use crate::{InlineReply, MetaError, MetaStore, Opened};

pub struct MetaService {
    /// `None` after `close`: connection tasks outlive the listener, and must not keep the KV
    /// open once the server has shut down.
    store: RwLock<Option<Arc<MetaStore>>>,
    commits_wait: bool,
}

impl MetaService {
    /// `commits_wait`: a commit returns only once it is on disk (`sync` durability).
    pub fn new(store: Arc<MetaStore>, commits_wait: bool) -> Arc<Self> {
        Arc::new(MetaService {
            store: RwLock::new(Some(store)),
            commits_wait,
        })
    }

    /// Stops serving: later requests fail with `Unavailable`.
    pub fn close(&self) {
        self.store.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn store(&self) -> Option<Arc<MetaStore>> {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

type Handler<Req, Resp> = fn(&MetaStore, Req) -> Result<Resp, MetaError>;

/// Decodes `Req`, runs `f` and encodes its `Resp`: on the blocking pool when `blocking` (its
/// commit waits for an fsync), else in place.
fn unary<Req, Resp>(store: Arc<MetaStore>, body: Bytes, blocking: bool, f: Handler<Req, Resp>) -> ServiceFuture
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    Box::pin(async move {
        let req: Req = decode_body(&body)?;
        let resp = if blocking {
            ember_net::blocking(move || f(&store, req))
                .await
                .map_err(|e| Status::internal(format!("metadata task failed: {e}")))??
        } else {
            f(&store, req)?
        };
        Ok(Response::msg(&resp))
    })
}

/// Like [`unary`] for a call that never waits for the disk, run in place.
fn read_only<Req, Resp>(store: Arc<MetaStore>, body: Bytes, f: Handler<Req, Resp>) -> ServiceFuture
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    unary(store, body, false, f)
}

fn attr(a: Attr) -> AttrResp {
    AttrResp { attr: Some(a), parent: None }
}

/// The directory a name was just changed in, read after the change (it may also show later
/// changes by others; never an earlier state). Only a hint: a failed read leaves it out.
fn parent_after(s: &MetaStore, parent: u64) -> Option<Attr> {
    s.getattr(InodeId(parent)).ok()
}

fn made_in(s: &MetaStore, parent: u64, made: Attr) -> AttrResp {
    AttrResp { attr: Some(made), parent: parent_after(s, parent) }
}

fn opened(o: Opened) -> OpenResp {
    OpenResp { attr: Some(o.attr), session_id: o.session, inline_data: o.inline, parent: None }
}

fn inline_write(r: InlineReply) -> WriteInlineResp {
    match r {
        InlineReply::Done { attr, data } => WriteInlineResp { outcome: InlineOutcome::Done.into(), attr: Some(attr), data },
        InlineReply::Refused(why) => WriteInlineResp { outcome: why.into(), ..Default::default() },
    }
}

fn inline_spill(r: InlineReply) -> SpillInlineResp {
    match r {
        InlineReply::Done { attr, data } => SpillInlineResp { outcome: InlineOutcome::Done.into(), attr: Some(attr), data },
        InlineReply::Refused(why) => SpillInlineResp { outcome: why.into(), ..Default::default() },
    }
}

impl Service for MetaService {
    fn call(self: Arc<Self>, req: Request) -> ServiceFuture {
        let Some(s) = self.store() else {
            return Box::pin(async {
                Err(Status::new(
                    StatusCode::Unavailable,
                    "meta server is shutting down",
                ))
            });
        };
        let body = req.body;
        let wait = self.commits_wait;
        let Some(method) = Method::from_u16(req.method) else {
            let st = Status::new(
                StatusCode::UnknownMethod,
                format!("unknown method {:#06x}", req.method),
            );
            return Box::pin(async move { Err(st) });
        };
        match method {
            Method::MetaLookup => read_only(s, body, |s, r: LookupReq| {
                s.lookup(InodeId(r.parent), &r.name).map(attr)
            }),
            Method::MetaGetAttr => read_only(s, body, |s, r: GetAttrReq| {
                s.getattr(InodeId(r.inode)).map(attr)
            }),
            Method::MetaCreate => unary(s, body, wait, |s, r: CreateReq| {
                let perm = Perm::new(r.mode, r.uid, r.gid).with_umask(r.umask);
                let made = s.create(InodeId(r.parent), &r.name, perm, r.exclusive, r.client_id)?;
                Ok(OpenResp { parent: parent_after(s, r.parent), ..opened(made) })
            }),
            Method::MetaTmpfile => unary(s, body, wait, |s, r: TmpfileReq| {
                let perm = Perm::new(r.mode, r.uid, r.gid).with_umask(r.umask);
                s.tmpfile(InodeId(r.parent), perm, r.client_id).map(opened)
            }),
            // Sessions begin and end without waiting for the disk (`MetaStore::open`).
            Method::MetaOpen => unary(s, body, false, |s, r: OpenReq| {
                s.open(InodeId(r.inode), r.client_id, r.write).map(opened)
            }),
            Method::MetaClose => unary(s, body, wait, |s, r: CloseReq| {
                s.close(InodeId(r.inode), r.session_id, r.written_end, r.mtime_ns)
                    .map(attr)
            }),
            Method::MetaCloseSessions => unary(s, body, false, |s, r: CloseSessionsReq| {
                let sessions: Vec<_> = r.sessions.iter().map(|x| (InodeId(x.inode), x.session_id)).collect();
                s.close_sessions(&sessions).map(|()| EmptyResp {})
            }),
            Method::MetaSync => unary(s, body, wait, |s, r: SyncReq| {
                s.sync(InodeId(r.inode), r.written_end, r.mtime_ns, &r.chunks)
                    .map(attr)
            }),
            Method::MetaMkdir => unary(s, body, wait, |s, r: MkdirReq| {
                let made = s.mkdir(InodeId(r.parent), &r.name, Perm::new(r.mode, r.uid, r.gid).with_umask(r.umask))?;
                Ok(made_in(s, r.parent, made))
            }),
            Method::MetaRmdir => unary(s, body, wait, |s, r: RmdirReq| {
                s.rmdir(InodeId(r.parent), &r.name)?;
                Ok(RemovedResp { parent: parent_after(s, r.parent) })
            }),
            Method::MetaUnlink => unary(s, body, wait, |s, r: UnlinkReq| {
                s.unlink(InodeId(r.parent), &r.name)?;
                Ok(RemovedResp { parent: parent_after(s, r.parent) })
            }),
            Method::MetaRename => unary(s, body, wait, |s, r: RenameReq| {
                s.rename(
                    InodeId(r.old_parent),
                    &r.old_name,
                    InodeId(r.new_parent),
                    &r.new_name,
                    r.flags,
                )
                .map(|()| EmptyResp {})
            }),
            Method::MetaLink => unary(s, body, wait, |s, r: LinkReq| {
                let linked = s.link(InodeId(r.inode), InodeId(r.new_parent), &r.new_name)?;
                Ok(made_in(s, r.new_parent, linked))
            }),
            Method::MetaMknod => unary(s, body, wait, |s, r: MknodReq| {
                let kind = u8::try_from(r.file_type)
                    .ok()
                    .and_then(FileType::from_u8)
                    .ok_or_else(|| MetaError::InvalidArgument(format!("file type {}", r.file_type)))?;
                let perm = Perm::new(r.mode, r.uid, r.gid).with_umask(r.umask);
                let made = s.mknod(InodeId(r.parent), &r.name, kind, perm, r.rdev)?;
                Ok(made_in(s, r.parent, made))
            }),
            Method::MetaSymlink => unary(s, body, wait, |s, r: SymlinkReq| {
                let made = s.symlink(InodeId(r.parent), &r.name, &r.target, r.uid, r.gid)?;
                Ok(made_in(s, r.parent, made))
            }),
            Method::MetaReadlink => read_only(s, body, |s, r: ReadlinkReq| {
                s.readlink(InodeId(r.inode))
                    .map(|target| ReadlinkResp { target })
            }),
            Method::MetaSetAttr => unary(s, body, wait, |s, r: SetAttrReq| {
                s.setattr(InodeId(r.inode), set_attrs(&r), &r.chunks).map(attr)
            }),
            // A page with attributes reads an inode per entry: too long to hold a runtime thread.
            Method::MetaReadDir => unary(s, body, true, |s, r: ReadDirReq| {
                s.readdir(InodeId(r.inode), &r.after, r.limit, r.with_attrs)
                    .map(|(entries, more)| ReadDirResp { entries, more })
            }),
            Method::MetaStatFs => unary(s, body, wait, |s, _: StatFsReq| s.statfs()),
            Method::MetaWriteInline => unary(s, body, wait, |s, r: WriteInlineReq| {
                s.write_inline(InodeId(r.inode), &r.writes, r.mtime_ns).map(inline_write)
            }),
            Method::MetaSpillInline => unary(s, body, wait, |s, r: SpillInlineReq| {
                s.spill_inline(InodeId(r.inode), r.token, r.finish, r.size).map(inline_spill)
            }),
            Method::MetaGetXattr => read_only(s, body, |s, r: GetXattrReq| {
                s.get_xattr(InodeId(r.inode), &r.name).map(|value| GetXattrResp { value })
            }),
            Method::MetaListXattr => read_only(s, body, |s, r: ListXattrReq| {
                s.list_xattr(InodeId(r.inode)).map(|names| ListXattrResp { names })
            }),
            Method::MetaSetXattr => unary(s, body, wait, |s, r: SetXattrReq| {
                let mode = XattrSetMode::try_from(r.mode)
                    .map_err(|_| MetaError::InvalidArgument(format!("set mode {}", r.mode)))?;
                s.set_xattr(InodeId(r.inode), &r.name, &r.value, mode).map(|()| EmptyResp {})
            }),
            Method::MetaRemoveXattr => unary(s, body, wait, |s, r: RemoveXattrReq| {
                s.remove_xattr(InodeId(r.inode), &r.name).map(|()| EmptyResp {})
            }),
            Method::MetaSetLock => unary(s, body, wait, |s, r: SetLockReq| s.set_lock(&lock_of(r.lock)?)),
            Method::MetaGetLock => read_only(s, body, |s, r: GetLockReq| s.get_lock(&lock_of(r.lock)?)),
            Method::MetaReleaseLocks => unary(s, body, wait, |s, r: ReleaseLocksReq| {
                s.release_locks(InodeId(r.inode), r.client_id, &r.owners, r.flock).map(|()| EmptyResp {})
            }),
            other => {
                let st = Status::new(
                    StatusCode::UnknownMethod,
                    format!("{} is not served by meta", other.name()),
                );
                Box::pin(async move { Err(st) })
            }
        }
    }
}

fn lock_of(lock: Option<LockReq>) -> Result<LockReq, MetaError> {
    lock.ok_or_else(|| MetaError::InvalidArgument("lock request without a lock".into()))
}

fn set_attrs(r: &SetAttrReq) -> SetAttrs {
    SetAttrs {
        mode: r.mode,
        uid: r.uid,
        gid: r.gid,
        size: r.size,
        atime_ns: r.atime_ns,
        mtime_ns: r.mtime_ns,
        size_inline: r.size_inline,
        kill_setid: r.kill_setid,
        drop_capability: r.drop_capability,
    }
}
