//! Durable backend on fjall (embedded LSM tree).

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use crate::engine::{Engine, EngineSnapshot, Pair, Write};
use crate::history::DEFAULT_CAP;
use crate::journal_sync::JournalSync;
use crate::occ::Store;
use crate::txn::OccTxn;
use crate::{Durability, KvError, Transaction, TxnKv};

const DATA_KEYSPACE: &str = "kv";
const META_KEYSPACE: &str = "meta";
/// Last commit version, little-endian u64, written in the same batch as the commit's data.
const VERSION_KEY: &[u8] = b"version";
/// A journal is deleted only once every keyspace has flushed what it holds. The version key is
/// rewritten by every commit but stays one key, so left at the default size (64 MiB) its
/// memtable would take hundreds of thousands of commits to fill, and the journals would pile
/// up behind it to fjall's limit.
const META_MEMTABLE_BYTES: u64 = 1 << 20;
/// fjall's limit on journals kept (default 512 MiB, least 64 MiB): past it, fjall flushes
/// whatever keyspace holds the oldest journal back.
const MAX_JOURNALS_BYTES: u64 = 128 << 20;

fn storage(e: fjall::Error) -> KvError {
    KvError::Storage(e.to_string())
}

pub(crate) struct FjallEngine {
    db: Database,
    data: Keyspace,
    meta: Keyspace,
    journal: JournalSync,
}

pub(crate) struct FjallSnapshot {
    snapshot: fjall::Snapshot,
    data: Keyspace,
}

impl FjallEngine {
    fn open(path: &Path) -> Result<Self, KvError> {
        // Journal persistence is driven by group commit, not by every batch.
        let db = Database::builder(path)
            .manual_journal_persist(true)
            .max_journaling_size(MAX_JOURNALS_BYTES)
            .open()
            .map_err(storage)?;
        let data = db.keyspace(DATA_KEYSPACE, KeyspaceCreateOptions::default).map_err(storage)?;
        let meta = db
            .keyspace(META_KEYSPACE, || KeyspaceCreateOptions::default().max_memtable_size(META_MEMTABLE_BYTES))
            .map_err(storage)?;
        Ok(FjallEngine { db, data, meta, journal: JournalSync::new(path) })
    }

    fn stored_version(&self) -> Result<u64, KvError> {
        let Some(raw) = self.meta.get(VERSION_KEY).map_err(storage)? else { return Ok(0) };
        let bytes: [u8; 8] = raw
            .as_ref()
            .try_into()
            .map_err(|_| KvError::Corrupt(format!("commit version has {} bytes", raw.len())))?;
        Ok(u64::from_le_bytes(bytes))
    }
}

impl Engine for FjallEngine {
    type Snapshot = FjallSnapshot;

    fn snapshot(&self, _version: u64) -> FjallSnapshot {
        FjallSnapshot { snapshot: self.db.snapshot(), data: self.data.clone() }
    }

    fn apply(&self, version: u64, writes: &[Write], _oldest_live: u64) -> Result<(), KvError> {
        let mut batch = self.db.batch();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(&self.data, key.as_slice(), value.as_slice()),
                None => batch.remove(&self.data, key.as_slice()),
            }
        }
        batch.insert(&self.meta, VERSION_KEY, version.to_le_bytes().as_slice());
        batch.commit().map_err(storage)
    }

    fn persist(&self) -> Result<(), KvError> {
        self.journal.persist(&self.db).map_err(storage)
    }

    fn hand_to_os(&self) -> Result<(), KvError> {
        self.db.persist(PersistMode::Buffer).map_err(storage)
    }
}

impl EngineSnapshot for FjallSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let value = self.snapshot.get(&self.data, key).map_err(storage)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan(&self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, KvError> {
        let bounds = (Bound::Included(begin), Bound::Excluded(end));
        let mut pairs = Vec::new();
        for guard in self.snapshot.range::<&[u8], _>(&self.data, bounds).take(limit) {
            let (key, value) = guard.into_inner().map_err(storage)?;
            pairs.push((key.to_vec(), value.to_vec()));
        }
        Ok(pairs)
    }
}

/// Durable embedded backend. Cloning shares the same open database.
#[derive(Clone)]
pub struct FjallKv {
    store: Arc<Store<FjallEngine>>,
}

impl FjallKv {
    /// Opens (creating if needed) the database in directory `path`, every commit durable on
    /// return. The commit counter continues from the last durable commit.
    pub fn open(path: &Path) -> Result<FjallKv, KvError> {
        FjallKv::open_with(path, Durability::Sync)
    }

    /// Like [`open`](Self::open), with commits as durable as `durability` says.
    pub fn open_with(path: &Path, durability: Durability) -> Result<FjallKv, KvError> {
        let engine = FjallEngine::open(path)?;
        let version = engine.stored_version()?;
        tracing::debug!(path = %path.display(), version, ?durability, "opened fjall kv");
        Ok(FjallKv { store: Store::new(engine, version, DEFAULT_CAP, durability) })
    }
}

impl TxnKv for FjallKv {
    fn begin(&self) -> Result<Box<dyn Transaction>, KvError> {
        let (reg, snapshot) = self.store.begin();
        Ok(Box::new(OccTxn::new(reg, snapshot)))
    }
}
