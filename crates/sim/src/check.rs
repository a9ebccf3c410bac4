//! The invariants every run must hold (numbering from the replication design, §1.5):
//!
//! - **Availability**: with at most one faulty node at a time, no read, write or truncate
//!   fails, and the file of the single writer reads back as its model (checked by the
//!   workload, which reports a difference as a failed operation).
//! - **I1, I7**: once the faults are over and every member is SERVING again, all replicas
//!   list the same chunks with the same version, length and block digest, and read the
//!   same bytes.
//! - **I2, I3**: the register's history, ending with a read after the faults, is
//!   linearizable: no acknowledged write is lost or reordered, no read sees a value that was
//!   not committed or was overwritten, no block is torn. Duplicated or late deliveries of an
//!   old write (retries, held links) would show here as a value coming back. With a deposed
//!   primary that still serves reads after its lease, this is also where **I5** shows.
//! - **I4**: the routing and chain versions the client saw never decrease, and every replica's
//!   version of the register chunk is at least the number of acknowledged writes to it.

use std::sync::Arc;
use std::time::Duration;

use ember_storage::ChunkEngine;
use ember_testkit::linearizable::{check_register, OpKind};
use ember_types::ChunkId;

use crate::workload::{Outcome, CHUNK_SIZE, REGISTER};

/// Checks everything; returns a fingerprint of the run for the determinism check.
pub fn all(outcome: &Outcome, engines: &[Arc<ChunkEngine>]) -> Result<u64, String> {
    if let Some(e) = outcome.errors.first() {
        return Err(format!("{} operations failed; the first: {e}", outcome.errors.len()));
    }
    if let Err(e) = check_register(&outcome.history, 0) {
        return Err(format!("register history not linearizable: {e}\n{}", describe(&outcome.history)));
    }
    monotonic(&outcome.versions)?;
    let replicas = same_replicas(engines)?;
    let register = ChunkId::new(REGISTER, 0);
    if let Some((_, info)) = replicas.iter().find(|(c, _)| *c == register) {
        if info.0 < outcome.acked_register_writes {
            return Err(format!("register chunk at version {} after {} acknowledged writes", info.0, outcome.acked_register_writes));
        }
    }
    Ok(fingerprint(outcome, &replicas))
}

/// The history in invocation order, times in ms from the first invocation.
pub fn describe(history: &[ember_testkit::linearizable::Op<tokio::time::Instant>]) -> String {
    let mut ops: Vec<_> = history.iter().collect();
    ops.sort_by_key(|o| o.invoked);
    let origin = ops.first().map(|o| o.invoked);
    let ms = |t: tokio::time::Instant| origin.map_or(0.0, |o| (t - o).as_secs_f64() * 1e3);
    ops.iter().map(|o| format!("  {:9.3} .. {:9.3} {:?}\n", ms(o.invoked), ms(o.returned), o.kind)).collect()
}

fn monotonic(versions: &[(u64, u64)]) -> Result<(), String> {
    for w in versions.windows(2) {
        if w[1].0 < w[0].0 || w[1].1 < w[0].1 {
            return Err(format!("versions went back: (routing, chain) {:?} then {:?}", w[0], w[1]));
        }
    }
    Ok(())
}

type Listing = Vec<(ChunkId, (u64, u32, u64))>;

/// Every replica's chunk list and contents equal the first one's.
fn same_replicas(engines: &[Arc<ChunkEngine>]) -> Result<Listing, String> {
    let mut first: Option<(Listing, Vec<Vec<u8>>)> = None;
    for (i, e) in engines.iter().enumerate() {
        let listing: Listing = e
            .list(None, 100_000)
            .map_err(|err| format!("replica {i}: list failed: {err}"))?
            .into_iter()
            .map(|(c, info)| (c, (info.version, info.len, info.digest)))
            .collect();
        let mut data = Vec::new();
        for (c, _) in &listing {
            data.push(e.read(*c, 0, CHUNK_SIZE).map_err(|err| format!("replica {i}: read of {c} failed: {err}"))?);
        }
        match &first {
            None => first = Some((listing, data)),
            Some((l0, d0)) => {
                if *l0 != listing {
                    return Err(format!("replica {i} lists {listing:?}, replica 0 lists {l0:?}"));
                }
                if let Some(k) = (0..data.len()).find(|k| data[*k] != d0[*k]) {
                    return Err(format!("replica {i} holds other bytes in chunk {} than replica 0", listing[k].0));
                }
            }
        }
    }
    first.map(|(l, _)| l).ok_or_else(|| "no replica was running at the end".to_owned())
}

/// FNV-1a over the history (values and times relative to the first invocation) and the
/// final chunk listing.
fn fingerprint(outcome: &Outcome, replicas: &Listing) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut mix = |x: u64| {
        for b in x.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let origin = outcome.history.iter().map(|o| o.invoked).min();
    for op in &outcome.history {
        let since = |t| origin.map_or(Duration::ZERO, |o| t - o).as_micros() as u64;
        mix(since(op.invoked));
        mix(since(op.returned));
        mix(match op.kind {
            OpKind::Write(v) => v,
            OpKind::Read(v) => !v,
        });
    }
    for (c, (version, len, digest)) in replicas {
        mix(c.inode.0);
        mix(u64::from(c.index));
        mix(*version);
        mix(u64::from(*len));
        mix(*digest);
    }
    h
}
