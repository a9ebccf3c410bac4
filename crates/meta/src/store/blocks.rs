//! The blocks a chunked file holds on storage (`st_blocks`), counted from what storage answered
//! the writers: one `CBLK` row per chunk with the version and block count last reported, and
//! their sum in the inode record. A report older than the row is ignored, so writers racing on
//! one chunk settle on the latest state whatever order their reports arrive in.

use ember_proto::meta::ChunkBlocks;
use ember_types::InodeId;

use super::Tx;
use crate::schema::{chunk_blocks_key, chunk_blocks_prefix, prefix_end, InodeRecord};
use crate::MetaError;

fn decode(v: &[u8]) -> Result<(u64, u32), MetaError> {
    let bad = || MetaError::Corrupt(format!("chunk block count of {} bytes", v.len()));
    let version = u64::from_le_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let blocks = u32::from_le_bytes(v.get(8..12).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    Ok((version, blocks))
}

fn encode(version: u64, blocks: u32) -> Vec<u8> {
    let mut v = version.to_le_bytes().to_vec();
    v.extend_from_slice(&blocks.to_le_bytes());
    v
}

/// Applies reports of a file's chunks to its rows and total.
pub(super) fn apply(t: &mut Tx<'_>, ino: InodeId, rec: &mut InodeRecord, reports: &[ChunkBlocks]) -> Result<(), MetaError> {
    for r in reports {
        let key = chunk_blocks_key(ino, r.index);
        let old = t.0.get(&key)?.map(|v| decode(&v)).transpose()?;
        if old.is_some_and(|(version, _)| version >= r.version) {
            continue;
        }
        let old_blocks = old.map_or(0, |(_, b)| u64::from(b));
        rec.stored_blocks = rec.stored_blocks.saturating_sub(old_blocks) + u64::from(r.blocks);
        t.0.set(&key, &encode(r.version, r.blocks));
    }
    Ok(())
}

/// Forgets the chunks from index `first` on (a truncate emptied them).
pub(super) fn drop_from(t: &mut Tx<'_>, ino: InodeId, rec: &mut InodeRecord, first: u32) -> Result<(), MetaError> {
    let end = prefix_end(&chunk_blocks_prefix(ino));
    for (key, value) in t.0.scan(&chunk_blocks_key(ino, first), &end, 0)? {
        rec.stored_blocks = rec.stored_blocks.saturating_sub(u64::from(decode(&value)?.1));
        t.0.delete(&key);
    }
    Ok(())
}

/// Deletes every row of an inode being removed (read as a snapshot, like its attributes).
pub(super) fn delete_all(t: &mut Tx<'_>, ino: InodeId) -> Result<(), MetaError> {
    let begin = chunk_blocks_prefix(ino);
    for (key, _) in t.0.snapshot_scan(&begin, &prefix_end(&begin), 0)? {
        t.0.delete(&key);
    }
    Ok(())
}
