//! Metadata service messages. Every request is one transaction on the KV.

use crate::{Method, Rpc};

#[derive(Clone, PartialEq, prost::Message)]
pub struct LayoutMsg {
    #[prost(uint32, tag = "1")]
    pub chunk_size: u32,
    #[prost(uint32, repeated, tag = "2")]
    pub chains: Vec<u32>,
}

/// Attributes of one inode as the client sees them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attr {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    /// `ember_types::FileType::to_u8`.
    #[prost(uint32, tag = "2")]
    pub file_type: u32,
    /// Permission bits including setuid/setgid/sticky (no type bits).
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    #[prost(uint32, tag = "6")]
    pub nlink: u32,
    #[prost(uint64, tag = "7")]
    pub size: u64,
    #[prost(int64, tag = "8")]
    pub atime_ns: i64,
    #[prost(int64, tag = "9")]
    pub mtime_ns: i64,
    #[prost(int64, tag = "10")]
    pub ctime_ns: i64,
    /// Present for regular files.
    #[prost(message, optional, tag = "11")]
    pub layout: Option<LayoutMsg>,
    /// Non-zero for an inline file (its bytes live in meta, not on storage): the length up to
    /// which it may grow before it has to move to chunks.
    #[prost(uint32, tag = "12")]
    pub inline_limit: u32,
    /// False when the inode has no stored extended attribute.
    #[prost(bool, tag = "13")]
    pub has_xattrs: bool,
    /// Device nodes: the device number.
    #[prost(uint32, tag = "14")]
    pub rdev: u32,
    /// Space used, in 512-byte units (`st_blocks`): the 4 KiB blocks storage holds for a
    /// chunked file (holes take none), the length for an inline file.
    #[prost(uint64, tag = "15")]
    pub blocks: u64,
    /// Directories: how many times an entry was added to or removed from it. A client that
    /// counts its own changes tells from this whether anyone else changed the directory.
    #[prost(uint64, tag = "16")]
    pub entry_changes: u64,
}

/// What storage holds of one chunk of a file after a change, as its primary answered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkBlocks {
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// The chunk's version: a report older than the one meta has is ignored, so racing
    /// writers' reports settle on the latest state.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// 4 KiB blocks stored.
    #[prost(uint32, tag = "3")]
    pub blocks: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttrResp {
    #[prost(message, optional, tag = "1")]
    pub attr: Option<Attr>,
    /// After a change of a name (mkdir, mknod, symlink, link): the directory it was made in,
    /// read after the change, so the client shows its own change without asking again.
    #[prost(message, optional, tag = "2")]
    pub parent: Option<Attr>,
}

/// Answer to an unlink or rmdir: the directory, read after the name went.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemovedResp {
    #[prost(message, optional, tag = "1")]
    pub parent: Option<Attr>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EmptyResp {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LookupReq {
    #[prost(uint64, tag = "1")]
    pub parent: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
}

impl Rpc for LookupReq {
    const METHOD: Method = Method::MetaLookup;
    type Response = AttrResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetAttrReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
}

impl Rpc for GetAttrReq {
    const METHOD: Method = Method::MetaGetAttr;
    type Response = AttrResp;
}

/// Creates a regular file and opens it in one transaction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateReq {
    #[prost(uint64, tag = "1")]
    pub parent: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    /// Fail with AlreadyExists instead of opening an existing file (O_EXCL).
    #[prost(bool, tag = "6")]
    pub exclusive: bool,
    #[prost(uint64, tag = "7")]
    pub client_id: u64,
    /// The creator's umask, applied by meta unless the parent has a default ACL.
    #[prost(uint32, tag = "8")]
    pub umask: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenResp {
    #[prost(message, optional, tag = "1")]
    pub attr: Option<Attr>,
    /// Identifies this open handle until close; its chunks are kept while it exists.
    #[prost(uint64, tag = "2")]
    pub session_id: u64,
    /// The whole content of an inline file, so that reading it needs no further request.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub inline_data: Option<Vec<u8>>,
    /// A create's directory, read after the create (see `AttrResp::parent`).
    #[prost(message, optional, tag = "4")]
    pub parent: Option<Attr>,
}

impl Rpc for CreateReq {
    const METHOD: Method = Method::MetaCreate;
    type Response = OpenResp;
}

/// Creates a regular file without a name in a directory and opens it for writing (open(2)
/// with O_TMPFILE). It has no links until `Link` gives it a name, and goes like an unlinked
/// file once its last session ends without one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TmpfileReq {
    #[prost(uint64, tag = "1")]
    pub parent: u64,
    #[prost(uint32, tag = "2")]
    pub mode: u32,
    #[prost(uint32, tag = "3")]
    pub uid: u32,
    #[prost(uint32, tag = "4")]
    pub gid: u32,
    #[prost(uint64, tag = "5")]
    pub client_id: u64,
    /// As `CreateReq::umask`.
    #[prost(uint32, tag = "6")]
    pub umask: u32,
}

impl Rpc for TmpfileReq {
    const METHOD: Method = Method::MetaTmpfile;
    type Response = OpenResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint64, tag = "2")]
    pub client_id: u64,
    #[prost(bool, tag = "3")]
    pub write: bool,
}

impl Rpc for OpenReq {
    const METHOD: Method = Method::MetaOpen;
    type Response = OpenResp;
}

/// Ends an open session; a writer reports the length it wrote up to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint64, tag = "2")]
    pub session_id: u64,
    #[prost(uint64, optional, tag = "3")]
    pub written_end: Option<u64>,
    #[prost(int64, optional, tag = "4")]
    pub mtime_ns: Option<i64>,
}

impl Rpc for CloseReq {
    const METHOD: Method = Method::MetaClose;
    type Response = AttrResp;
}

/// One open session, as [`CloseSessionsReq`] names it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionRef {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint64, tag = "2")]
    pub session_id: u64,
}

/// Ends sessions whose handles are gone and that have nothing left to report (the flush at
/// close already sent the length): many in one transaction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseSessionsReq {
    #[prost(message, repeated, tag = "1")]
    pub sessions: Vec<SessionRef>,
}

impl Rpc for CloseSessionsReq {
    const METHOD: Method = Method::MetaCloseSessions;
    type Response = EmptyResp;
}

/// Reports a writer's length without closing (fsync).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint64, tag = "2")]
    pub written_end: u64,
    #[prost(int64, optional, tag = "3")]
    pub mtime_ns: Option<i64>,
    /// The chunks the writer changed, for the file's block count.
    #[prost(message, repeated, tag = "4")]
    pub chunks: Vec<ChunkBlocks>,
}

impl Rpc for SyncReq {
    const METHOD: Method = Method::MetaSync;
    type Response = AttrResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MkdirReq {
    #[prost(uint64, tag = "1")]
    pub parent: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    /// As `CreateReq::umask`.
    #[prost(uint32, tag = "6")]
    pub umask: u32,
}

impl Rpc for MkdirReq {
    const METHOD: Method = Method::MetaMkdir;
    type Response = AttrResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RmdirReq {
    #[prost(uint64, tag = "1")]
    pub parent: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
}

impl Rpc for RmdirReq {
    const METHOD: Method = Method::MetaRmdir;
    type Response = RemovedResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UnlinkReq {
    #[prost(uint64, tag = "1")]
    pub parent: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
}

impl Rpc for UnlinkReq {
    const METHOD: Method = Method::MetaUnlink;
    type Response = RemovedResp;
}

/// `RENAME_NOREPLACE` from renameat2(2).
pub const RENAME_NOREPLACE: u32 = 1;
/// `RENAME_EXCHANGE` from renameat2(2).
pub const RENAME_EXCHANGE: u32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub struct RenameReq {
    #[prost(uint64, tag = "1")]
    pub old_parent: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub old_name: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub new_parent: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub new_name: Vec<u8>,
    #[prost(uint32, tag = "5")]
    pub flags: u32,
}

impl Rpc for RenameReq {
    const METHOD: Method = Method::MetaRename;
    type Response = EmptyResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinkReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint64, tag = "2")]
    pub new_parent: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub new_name: Vec<u8>,
}

impl Rpc for LinkReq {
    const METHOD: Method = Method::MetaLink;
    type Response = AttrResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SymlinkReq {
    #[prost(uint64, tag = "1")]
    pub parent: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub target: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
}

impl Rpc for SymlinkReq {
    const METHOD: Method = Method::MetaSymlink;
    type Response = AttrResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadlinkReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadlinkResp {
    #[prost(bytes = "vec", tag = "1")]
    pub target: Vec<u8>,
}

impl Rpc for ReadlinkReq {
    const METHOD: Method = Method::MetaReadlink;
    type Response = ReadlinkResp;
}

/// Changes only the fields that are present.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetAttrReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint32, optional, tag = "2")]
    pub mode: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    pub uid: Option<u32>,
    #[prost(uint32, optional, tag = "4")]
    pub gid: Option<u32>,
    /// The client has already cut the chunks on storage when it sends a smaller size.
    #[prost(uint64, optional, tag = "5")]
    pub size: Option<u64>,
    #[prost(int64, optional, tag = "6")]
    pub atime_ns: Option<i64>,
    #[prost(int64, optional, tag = "7")]
    pub mtime_ns: Option<i64>,
    /// With `size`: the client resized an inline file's bytes, not chunks; refused with
    /// `InlineMoved` if the file has moved to chunks meanwhile.
    #[prost(bool, tag = "8")]
    pub size_inline: bool,
    /// Someone without CAP_FSETID changes the file: drop setuid, and setgid if the group may
    /// execute (directories keep theirs).
    #[prost(bool, tag = "9")]
    pub kill_setid: bool,
    /// The file's data or owner changes: drop `security.capability`, whoever changes it.
    #[prost(bool, tag = "10")]
    pub drop_capability: bool,
    /// With `size` on a chunked file: the chunks the client cut (the ones wholly past the new
    /// end need no report: meta counts them empty).
    #[prost(message, repeated, tag = "11")]
    pub chunks: Vec<ChunkBlocks>,
}

impl Rpc for SetAttrReq {
    const METHOD: Method = Method::MetaSetAttr;
    type Response = AttrResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadDirReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    /// Resume after this name (exclusive); empty starts at the beginning.
    #[prost(bytes = "vec", tag = "2")]
    pub after: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub limit: u32,
    /// Each entry also carries its inode's attributes, read in the page's snapshot.
    #[prost(bool, tag = "4")]
    pub with_attrs: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DirEntryMsg {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub inode: u64,
    #[prost(uint32, tag = "3")]
    pub file_type: u32,
    /// Only when asked for (`ReadDirReq::with_attrs`).
    #[prost(message, optional, tag = "4")]
    pub attr: Option<Attr>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadDirResp {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<DirEntryMsg>,
    #[prost(bool, tag = "2")]
    pub more: bool,
}

impl Rpc for ReadDirReq {
    const METHOD: Method = Method::MetaReadDir;
    type Response = ReadDirResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatFsReq {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatFsResp {
    #[prost(uint64, tag = "1")]
    pub capacity_bytes: u64,
    #[prost(uint64, tag = "2")]
    pub free_bytes: u64,
    #[prost(uint64, tag = "3")]
    pub used_bytes: u64,
    #[prost(uint64, tag = "4")]
    pub inodes: u64,
}

impl Rpc for StatFsReq {
    const METHOD: Method = Method::MetaStatFs;
    type Response = StatFsResp;
}

/// What became of a request on an inline file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum InlineOutcome {
    /// Done (`WriteInline`: applied; `SpillInline`: the spill started or finished).
    Done = 0,
    /// The writes would take the file past its inline limit: spill it first.
    TooLarge = 1,
    /// The file is not (or no longer) inline: write its chunks instead.
    NotInline = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InlineWrite {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// Applies a client's writes, in order, to an inline file in one transaction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteInlineReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(message, repeated, tag = "2")]
    pub writes: Vec<InlineWrite>,
    #[prost(int64, optional, tag = "3")]
    pub mtime_ns: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteInlineResp {
    #[prost(enumeration = "InlineOutcome", tag = "1")]
    pub outcome: i32,
    #[prost(message, optional, tag = "2")]
    pub attr: Option<Attr>,
    /// The content after the writes (`Done`).
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

impl Rpc for WriteInlineReq {
    const METHOD: Method = Method::MetaWriteInline;
    type Response = WriteInlineResp;
}

/// Moves an inline file to chunks, in two steps under a token the client picks (non-zero).
/// The start reserves the file for that token for a limited time (other clients' inline
/// changes get `Busy` meanwhile) and returns the content; the client writes it, with its own
/// pending writes applied, to the file's chunks. The finish (same token, the final `size`)
/// makes the file a chunked one of that length. Both steps can be retried.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpillInlineReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint64, tag = "2")]
    pub token: u64,
    #[prost(bool, tag = "3")]
    pub finish: bool,
    #[prost(uint64, tag = "4")]
    pub size: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SpillInlineResp {
    #[prost(enumeration = "InlineOutcome", tag = "1")]
    pub outcome: i32,
    /// The content when the spill starts.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    pub attr: Option<Attr>,
}

impl Rpc for SpillInlineReq {
    const METHOD: Method = Method::MetaSpillInline;
    type Response = SpillInlineResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetXattrReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetXattrResp {
    #[prost(bytes = "vec", tag = "1")]
    pub value: Vec<u8>,
}

impl Rpc for GetXattrReq {
    const METHOD: Method = Method::MetaGetXattr;
    type Response = GetXattrResp;
}

/// How a set treats an existing attribute (setxattr(2)'s flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum XattrSetMode {
    /// Create or replace.
    Upsert = 0,
    /// Fail if it exists (XATTR_CREATE).
    Create = 1,
    /// Fail if it does not exist (XATTR_REPLACE).
    Replace = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SetXattrReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
    #[prost(enumeration = "XattrSetMode", tag = "4")]
    pub mode: i32,
}

impl Rpc for SetXattrReq {
    const METHOD: Method = Method::MetaSetXattr;
    type Response = EmptyResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListXattrReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListXattrResp {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub names: Vec<Vec<u8>>,
}

impl Rpc for ListXattrReq {
    const METHOD: Method = Method::MetaListXattr;
    type Response = ListXattrResp;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveXattrReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
}

impl Rpc for RemoveXattrReq {
    const METHOD: Method = Method::MetaRemoveXattr;
    type Response = EmptyResp;
}

/// Creates a FIFO, socket or device node (`file_type` as `FileType::to_u8`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MknodReq {
    #[prost(uint64, tag = "1")]
    pub parent: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub name: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub file_type: u32,
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub gid: u32,
    #[prost(uint32, tag = "7")]
    pub rdev: u32,
    /// As `CreateReq::umask`.
    #[prost(uint32, tag = "8")]
    pub umask: u32,
}

impl Rpc for MknodReq {
    const METHOD: Method = Method::MetaMknod;
    type Response = AttrResp;
}

/// What a byte-range lock request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum LockKind {
    /// Shared (F_RDLCK).
    Read = 0,
    /// Exclusive (F_WRLCK).
    Write = 1,
    /// Give back (F_UNLCK).
    Unlock = 2,
}

/// One byte-range lock of a file: bytes `start..=end` (`end` u64::MAX-ish for "to the end",
/// as the kernel sends it). Locks belong to an owner of a client: the kernel's lock owner
/// (a process for POSIX locks, an open file for flock) is only unique within one mount.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint64, tag = "2")]
    pub client_id: u64,
    #[prost(uint64, tag = "3")]
    pub owner: u64,
    #[prost(uint64, tag = "4")]
    pub start: u64,
    #[prost(uint64, tag = "5")]
    pub end: u64,
    #[prost(enumeration = "LockKind", tag = "6")]
    pub kind: i32,
    /// The locking process, reported to others by F_GETLK.
    #[prost(uint32, tag = "7")]
    pub pid: u32,
    /// The caller waits if refused (F_SETLKW, flock without LOCK_NB): a refusal records the
    /// wait, and one that would close a cycle of waiters fails as a deadlock instead.
    #[prost(bool, tag = "8")]
    pub wait: bool,
    /// An flock rather than a POSIX (fcntl) lock. The two kinds never conflict with each
    /// other, as on Linux; an flock covers the whole file whatever range it names. Absent in
    /// older encodings, which meant POSIX.
    #[prost(bool, tag = "9")]
    pub flock: bool,
}

/// A lock of another owner that stands in the way.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockHolder {
    #[prost(uint64, tag = "1")]
    pub start: u64,
    #[prost(uint64, tag = "2")]
    pub end: u64,
    #[prost(enumeration = "LockKind", tag = "3")]
    pub kind: i32,
    #[prost(uint32, tag = "4")]
    pub pid: u32,
}

/// `SetLock`: whether the change was made (a refused one changes nothing), and if not, a lock
/// in the way. `GetLock`: the first lock in the way, if any.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockResp {
    #[prost(bool, tag = "1")]
    pub granted: bool,
    #[prost(message, optional, tag = "2")]
    pub conflict: Option<LockHolder>,
    /// A granted read or write lock: the file as it is now, so that the new holder sees what
    /// the last one wrote.
    #[prost(message, optional, tag = "3")]
    pub attr: Option<Attr>,
    /// With `attr`, for an inline file: its bytes.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub inline_data: Option<Vec<u8>>,
}

/// Takes, changes or gives back a lock (POSIX semantics: an owner's new lock replaces its own
/// locks on the same bytes; unlocking part of a lock splits it). Never waits: a client that
/// wants to wait asks again.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetLockReq {
    #[prost(message, optional, tag = "1")]
    pub lock: Option<LockReq>,
}

impl Rpc for SetLockReq {
    const METHOD: Method = Method::MetaSetLock;
    type Response = LockResp;
}

/// F_GETLK: would this lock be granted? Changes nothing.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetLockReq {
    #[prost(message, optional, tag = "1")]
    pub lock: Option<LockReq>,
}

impl Rpc for GetLockReq {
    const METHOD: Method = Method::MetaGetLock;
    type Response = LockResp;
}

/// Gives back every lock that these owners of a client hold on a file (close of a descriptor
/// for POSIX locks, last close of an open file for flock).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReleaseLocksReq {
    #[prost(uint64, tag = "1")]
    pub inode: u64,
    #[prost(uint64, tag = "2")]
    pub client_id: u64,
    #[prost(uint64, repeated, tag = "3")]
    pub owners: Vec<u64>,
    /// Which kind of lock goes: `Some(true)` only flocks, `Some(false)` only POSIX locks. The
    /// kernel's POSIX and flock owners are separate id spaces that may share a number, so a
    /// release names its kind. Absent: both kinds, which is what a client that did not tell
    /// them apart meant (all its locks were stored as POSIX ones).
    #[prost(bool, optional, tag = "4")]
    pub flock: Option<bool>,
}

impl Rpc for ReleaseLocksReq {
    const METHOD: Method = Method::MetaReleaseLocks;
    type Response = EmptyResp;
}
