//! The KV side of garbage collection: list queued inodes, drop stale sessions, claim an inode
//! for chunk removal, and delete what is left once its chunks are gone.
//!
//! A claim marks the queue record `removing` only if no session exists (read serializably), and
//! `open` refuses an unlinked inode marked `removing`; so once chunk removal starts nobody can
//! open the file again, and an open that raced with the claim makes the claim retry and see it.

use ember_types::{InodeId, Layout};

use super::MetaStore;
use crate::schema::{
    decode, dir_attr_key, gc_key, id_from_key, inode_key, key_after, prefix_end, session_from_key,
    session_key, session_prefix, DirAttr, GcRecord, SessionRecord, GC_PREFIX,
};
use crate::MetaError;

/// An open session of a queued inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcSession {
    pub id: u64,
    pub client_id: u64,
}

/// One unlinked file waiting for its chunks to be removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcItem {
    pub inode: InodeId,
    /// `None` when the file never had a layout: nothing to remove on storage.
    pub layout: Option<Layout>,
    pub queued_ns: i64,
    pub sessions: Vec<GcSession>,
}

impl MetaStore {
    /// Up to `limit` queued inodes with ids after `after`, each with its sessions (snapshot).
    pub fn gc_scan(&self, after: Option<InodeId>, limit: usize) -> Result<Vec<GcItem>, MetaError> {
        let begin = after.map_or_else(|| GC_PREFIX.to_vec(), |a| key_after(&gc_key(a)));
        self.run(|t| {
            let rows = t.0.snapshot_scan(&begin, &prefix_end(GC_PREFIX), limit)?;
            let mut items = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let inode =
                    id_from_key(&k).ok_or_else(|| MetaError::Corrupt("gc queue key".into()))?;
                let rec: GcRecord = decode("gc record", &v)?;
                let layout = match rec.layout.as_ref().map(|l| l.to_layout()).transpose() {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(%inode, error = %e, "skipping gc entry");
                        continue;
                    }
                };
                let sessions = snapshot_sessions(t, inode)?;
                items.push(GcItem {
                    inode,
                    layout,
                    queued_ns: rec.queued_ns,
                    sessions,
                });
            }
            Ok(items)
        })
    }

    /// Deletes sessions of clients that are gone.
    pub fn gc_drop_sessions(&self, ino: InodeId, sessions: &[u64]) -> Result<(), MetaError> {
        self.run(|t| {
            for s in sessions {
                t.0.delete(&session_key(ino, *s));
            }
            Ok(())
        })
    }

    /// Marks for chunk removal those of `inodes` still queued, unlinked and without a session,
    /// in one transaction; returns them. Their chunks may be removed once this returns: chunk
    /// removal cannot be undone, so the claim is durable first.
    pub fn gc_claim(&self, inodes: &[InodeId]) -> Result<Vec<InodeId>, MetaError> {
        self.run(|t| {
            let mut claimed = Vec::with_capacity(inodes.len());
            for &ino in inodes {
                if claim(t, ino)? {
                    claimed.push(ino);
                }
            }
            Ok(claimed)
        })
    }

    /// Deletes claimed inodes and everything keyed by them, after their chunks are gone, in
    /// one transaction. Not waited on: a deletion lost to a power cut leaves them claimed and
    /// queued, and a later pass removes their (already absent) chunks and deletes them again.
    pub fn gc_finish(&self, inodes: &[InodeId]) -> Result<(), MetaError> {
        self.run(|t| {
            for &ino in inodes {
                finish(t, ino)?;
            }
            t.0.relax_durability();
            Ok(())
        })
    }
}

fn claim(t: &mut super::Tx<'_>, ino: InodeId) -> Result<bool, MetaError> {
    let Some(mut rec) = t.gc_record(ino)? else {
        return Ok(false);
    };
    if !t.sessions(ino)?.is_empty() {
        return Ok(false);
    }
    match t.inode(ino)? {
        Some(inode) if inode.nlink == 0 => {}
        _ => {
            // Gone already, or linked again: nothing of it may be removed.
            t.0.delete(&gc_key(ino));
            return Ok(false);
        }
    }
    if !rec.removing {
        rec.removing = true;
        t.put_gc_record(ino, &rec);
    }
    Ok(true)
}

fn finish(t: &mut super::Tx<'_>, ino: InodeId) -> Result<(), MetaError> {
    if let Some(rec) = t.inode(ino)? {
        t.0.delete(&inode_key(ino));
        t.count_inodes(-1);
        super::xattr::delete_all(t, ino, &rec)?;
    }
    super::blocks::delete_all(t, ino)?;
    t.0.delete(&gc_key(ino));
    t.delete_inline(ino);
    t.delete_locks(ino);
    for s in snapshot_sessions(t, ino)? {
        t.0.delete(&session_key(ino, s.id));
    }
    for a in DirAttr::ALL {
        t.0.delete(&dir_attr_key(ino, a));
    }
    Ok(())
}

fn snapshot_sessions(t: &mut super::Tx<'_>, ino: InodeId) -> Result<Vec<GcSession>, MetaError> {
    let begin = session_prefix(ino);
    let rows = t.0.snapshot_scan(&begin, &prefix_end(&begin), 0)?;
    rows.iter()
        .map(|(k, v)| {
            let id = session_from_key(k).ok_or_else(|| MetaError::Corrupt("session key".into()))?;
            let rec: SessionRecord = decode("session", v)?;
            Ok(GcSession {
                id,
                client_id: rec.client_id,
            })
        })
        .collect()
}
