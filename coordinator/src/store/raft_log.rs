//! raft-rs's `Storage` on sled: log entries, hard state, conf state and snapshot metadata, in the
//! same tree as the state machine so that one atomic batch can move both (an applied entry and
//! the applied index; a received snapshot and the state it carries).
//!
//! Keys: `raft/log/<index, 8 bytes big-endian>` (entries, protobuf), `raft/hard_state`,
//! `raft/conf_state`, `raft/snapshot_meta` (protobuf), `raft/applied` and `raft/node_id` (u64
//! big-endian). The log holds the entries after the last compaction; `raft/snapshot_meta` names
//! the index and term it was compacted at. Snapshots are made on demand from the state at the
//! applied index: the state machine's records (`sm/...`) as a sequence of codec frames, copied on
//! the Raft thread and encoded on a thread of their own ([`snapshots`]).

// raft-rs's protobuf types are built field by field, as its own examples do.
#![allow(clippy::field_reassign_with_default)]

use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use sha2::{Digest, Sha256};

use fifty_shared::codec;

use super::mark::{self, Mark, MarkWriter};
use super::{Batch, Store, StoreError, STATE_PREFIX};

mod inspect;
mod snapshots;
pub use inspect::{Damage, LogInspection, OpenError};
pub use snapshots::SnapshotBuild;
use snapshots::{Serve, Snapshots, StateCopy};

const LOG: &[u8] = b"raft/log/";
const HARD_STATE: &[u8] = b"raft/hard_state";
const CONF_STATE: &[u8] = b"raft/conf_state";
const SNAPSHOT_META: &[u8] = b"raft/snapshot_meta";
const APPLIED: &[u8] = b"raft/applied";
const NODE_ID: &[u8] = b"raft/node_id";
/// Every Raft record's key starts with this.
const RAFT_PREFIX: &[u8] = b"raft/";

/// First byte of a sealed record. No record written before seals began starts with it: protobuf
/// messages start with a field tag Raft's types do not use, and node ids are below 2^63.
const SEAL_TAG: u8 = 0xF5;
/// Tag and digest.
const SEAL_LEN: usize = 1 + 8;

/// One state record inside snapshot data.
#[derive(bincode::Encode, bincode::Decode)]
struct SnapshotRecord {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// The state machine's records at one applied index, copied between two applies: what a backup
/// (`crate::backup`) carries. sled hands the records out reference-counted, so taking the copy
/// on the Raft thread copies no record's bytes.
pub struct StateImage {
    /// The applied index the records are the state at.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    records: Vec<(sled::IVec, sled::IVec)>,
}

impl StateImage {
    /// Every record, key and value as stored, in key order.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.records.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The state records a snapshot carries, each checked to be one.
fn snapshot_records(snapshot: &Snapshot) -> Result<Vec<SnapshotRecord>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        key: format!("snapshot at index {}", snapshot.get_metadata().index),
        source: codec::CodecError::Decode(detail),
    };
    let mut records = Vec::new();
    let mut rest: &[u8] = &snapshot.data;
    while !rest.is_empty() {
        match codec::decode_frame::<SnapshotRecord>(rest) {
            Ok(Some((record, used))) => {
                if !record.key.starts_with(STATE_PREFIX.as_bytes()) {
                    return Err(corrupt("a record outside the state machine".into()));
                }
                records.push(record);
                rest = &rest[used..];
            }
            Ok(None) => return Err(corrupt("truncated".into())),
            Err(e) => return Err(corrupt(e.to_string())),
        }
    }
    Ok(records)
}

pub(super) fn log_key(index: u64) -> Vec<u8> {
    let mut k = LOG.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn index_of(key: &[u8]) -> u64 {
    let bytes: [u8; 8] = key[LOG.len()..].try_into().expect("log keys end in 8 index bytes");
    u64::from_be_bytes(bytes)
}

/// A Raft key as a person reads it: `raft/log/97`, `raft/hard_state`.
fn key_name(key: &[u8]) -> String {
    match key.strip_prefix(LOG).and_then(|i| <[u8; 8]>::try_from(i).ok()) {
        Some(index) => format!("raft/log/{}", u64::from_be_bytes(index)),
        None => String::from_utf8_lossy(key).into_owned(),
    }
}

fn seal_digest(key: &[u8], payload: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(payload);
    h.finalize()[..8].try_into().expect("a SHA-256 digest is 32 bytes")
}

/// `payload` as stored under `key`: tag, digest of key and payload, payload.
fn seal(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEAL_LEN + payload.len());
    out.push(SEAL_TAG);
    out.extend_from_slice(&seal_digest(key, payload));
    out.extend_from_slice(payload);
    out
}

fn is_sealed(stored: &[u8]) -> bool {
    stored.len() >= SEAL_LEN && stored[0] == SEAL_TAG
}

/// The payload of a record stored under `key`, if its seal holds; else what is wrong with it.
fn open_seal<'a>(key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], &'static str> {
    if !is_sealed(stored) {
        return Err("it has no checksum (damaged, or written before checksums and not upgraded)");
    }
    let payload = &stored[SEAL_LEN..];
    if stored[1..SEAL_LEN] != seal_digest(key, payload) {
        return Err("its checksum does not match: the disk changed it");
    }
    Ok(payload)
}

/// The payload of a record read under `key`, if its seal holds.
fn unseal<'a>(key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], StoreError> {
    open_seal(key, stored).map_err(|detail| StoreError::Corrupt {
        key: key_name(key),
        source: codec::CodecError::Decode(detail.to_string()),
    })
}

fn put_sealed(batch: &mut Batch, key: &[u8], payload: &[u8]) {
    batch.put_raw(key, seal(key, payload));
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

fn store_err(e: StoreError) -> raft::Error {
    other(e)
}

fn decode<M: protobuf::Message>(bytes: &[u8], key: &[u8]) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes)
        .map_err(|e| StoreError::Corrupt { key: key_name(key), source: codec::CodecError::Decode(e.to_string()) })
}

fn decode_u64(bytes: &[u8], key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: key_name(key),
        source: codec::CodecError::Decode(format!("{} bytes where a u64 was expected", bytes.len())),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes().expect("protobuf encoding of an in-memory message cannot fail")
}

/// The Raft log of one coordinator.
#[derive(Clone)]
pub struct RaftLog {
    store: Store,
    /// The flushed mark's writer, opened at its first use.
    mark: Arc<Mutex<Option<Arc<MarkWriter>>>>,
    /// The last snapshot built, and the build under way.
    snapshots: Arc<Snapshots>,
}

impl RaftLog {
    /// The log kept in `store`; snapshots are encoded off the calling thread.
    pub fn new(store: Store) -> Self {
        Self::with_snapshot_build(store, SnapshotBuild::Background)
    }

    /// The log kept in `store`, building snapshots as `build` says.
    pub fn with_snapshot_build(store: Store, build: SnapshotBuild) -> Self {
        Self { store, mark: Arc::new(Mutex::new(None)), snapshots: Arc::new(Snapshots::new(build)) }
    }

    /// The payload stored under a Raft key, its seal checked.
    fn get_sealed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.store.raw_get(key)? {
            Some(stored) => Ok(Some(unseal(key, &stored)?.to_vec())),
            None => Ok(None),
        }
    }

    fn u64_at(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        self.get_sealed(key)?.map(|b| decode_u64(&b, key)).transpose()
    }

    /// The store the log lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This node's Raft id, made once at random and kept (a wiped disk gets a new one).
    pub fn node_id(&self) -> Result<u64, StoreError> {
        if let Some(id) = self.u64_at(NODE_ID)? {
            return Ok(id);
        }
        let id = loop {
            let id: u64 = rand::random::<u64>() >> 1;
            if id != 0 {
                break id;
            }
        };
        let mut batch = Batch::default();
        put_sealed(&mut batch, NODE_ID, &id.to_be_bytes());
        self.store.apply(batch)?;
        self.store.flush_blocking()?;
        Ok(id)
    }

    /// The last applied index.
    pub fn applied(&self) -> Result<u64, StoreError> {
        Ok(self.u64_at(APPLIED)?.unwrap_or(0))
    }

    /// Records the applied index in `batch`.
    pub fn set_applied(batch: &mut Batch, index: u64) {
        put_sealed(batch, APPLIED, &index.to_be_bytes());
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> Result<HardState, StoreError> {
        match self.get_sealed(HARD_STATE)? {
            Some(b) => decode(&b, HARD_STATE),
            None => Ok(HardState::default()),
        }
    }

    /// The stored conf state.
    pub fn conf_state(&self) -> Result<ConfState, StoreError> {
        match self.get_sealed(CONF_STATE)? {
            Some(b) => decode(&b, CONF_STATE),
            None => Ok(ConfState::default()),
        }
    }

    fn snapshot_meta(&self) -> Result<SnapshotMetadata, StoreError> {
        match self.get_sealed(SNAPSHOT_META)? {
            Some(b) => decode(&b, SNAPSHOT_META),
            None => Ok(SnapshotMetadata::default()),
        }
    }

    /// The flushed mark's writer, opened at its first use.
    fn mark_writer(&self) -> Result<Arc<MarkWriter>, StoreError> {
        let mut slot = self.mark.lock().expect("the mark lock is never poisoned");
        if slot.is_none() {
            *slot = Some(MarkWriter::open(mark::path_in(self.store.dir()))?);
        }
        Ok(slot.clone().expect("opened just above"))
    }

    /// Lowers the flushed mark to `index` (durably) if it counts entries past it. Called before
    /// the log is cut back to `index`, so that the mark never claims entries the log no longer
    /// holds, even if the process dies right after the cut.
    fn lower_mark(&self, index: u64, term: impl FnOnce() -> Result<u64, StoreError>) -> Result<(), StoreError> {
        self.mark_writer()?.lower(index, term)
    }

    /// Records in the flushed mark what the store holds now: the log's last index and its term,
    /// and the hard state's term and vote. Call it only right after a flush, on the thread that
    /// writes the log, so what it records is what the flush made durable. The mark is written
    /// on a thread of its own, soon after ([`MarkWriter`]).
    pub fn mark_flushed(&self) -> Result<(), StoreError> {
        let index = self.last()?;
        let term = self.term_of(index)?;
        let hs = self.hard_state()?;
        self.mark_writer()?.post(Mark { index, term, hs_term: hs.term, hs_vote: hs.vote });
        Ok(())
    }

    /// Makes every write durable, then records what is now on disk in the flushed mark (the Raft
    /// loop's flush before it sends a Ready's messages).
    pub fn flush_and_mark(&self) -> Result<(), StoreError> {
        self.store.flush_blocking()?;
        self.mark_flushed()
    }

    /// Waits until the newest mark posted is written.
    pub fn sync_mark(&self) -> Result<(), StoreError> {
        Ok(self.mark_writer()?.sync()?)
    }

    /// Whether this node belongs to a cluster yet (bootstrapped, or caught up from a snapshot).
    pub fn initialized(&self) -> Result<bool, StoreError> {
        let cs = self.conf_state()?;
        Ok(!cs.voters.is_empty() || !cs.learners.is_empty())
    }

    /// Saves the hard state in `batch`.
    pub fn set_hard_state(batch: &mut Batch, hs: &HardState) {
        put_sealed(batch, HARD_STATE, &encode(hs));
    }

    /// Records in `batch` that the log was compacted at `index` (whose term was `term`).
    pub fn set_compacted(batch: &mut Batch, index: u64, term: u64) {
        let mut meta = SnapshotMetadata::default();
        meta.index = index;
        meta.term = term;
        put_sealed(batch, SNAPSHOT_META, &encode(&meta));
    }

    /// Saves the conf state in `batch`.
    pub fn set_conf_state(batch: &mut Batch, cs: &ConfState) {
        put_sealed(batch, CONF_STATE, &encode(cs));
    }

    fn first(&self) -> Result<u64, StoreError> {
        match self.store.tree.scan_prefix(LOG).next() {
            Some(item) => Ok(index_of(&item?.0)),
            None => Ok(self.snapshot_meta()?.index + 1),
        }
    }

    fn last(&self) -> Result<u64, StoreError> {
        match self.store.tree.scan_prefix(LOG).next_back() {
            Some(item) => Ok(index_of(&item?.0)),
            None => Ok(self.snapshot_meta()?.index),
        }
    }

    /// Adds `entries` to `batch`, replacing any stored entries from the first one's index on.
    /// If that cuts back entries the flushed mark counts, the mark is lowered first (durably).
    pub fn append(&self, batch: &mut Batch, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let keep = first.index.saturating_sub(1);
        self.lower_mark(keep, || self.term_of(keep))?;
        for item in self.store.tree.range(log_key(first.index)..) {
            let (key, _) = item?;
            if !key.starts_with(LOG) {
                break;
            }
            batch.remove_raw(&key);
        }
        for e in entries {
            put_sealed(batch, &log_key(e.index), &encode(e));
        }
        Ok(())
    }

    /// Adds to `batch` the removal of every entry after `index` (`--force-new-cluster` drops
    /// the entries no quorum committed). Returns how many.
    pub fn discard_after(&self, batch: &mut Batch, index: u64) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.store.tree.range(log_key(index + 1)..) {
            let (key, _) = item?;
            if !key.starts_with(LOG) {
                break;
            }
            batch.remove_raw(&key);
            n += 1;
        }
        Ok(n)
    }

    /// Drops entries up to and including `index` (which must be applied), remembering its term.
    pub fn compact(&self, index: u64) -> Result<(), StoreError> {
        let first = self.first()?;
        if index < first {
            return Ok(());
        }
        let term = self.term_of(index)?;
        let mut batch = Batch::default();
        for item in self.store.tree.range(log_key(first)..=log_key(index)) {
            batch.remove_raw(&item?.0);
        }
        Self::set_compacted(&mut batch, index, term);
        self.store.apply(batch)
    }

    fn term_of(&self, idx: u64) -> Result<u64, StoreError> {
        let meta = self.snapshot_meta()?;
        if idx == meta.index {
            return Ok(meta.term);
        }
        let key = log_key(idx);
        match self.get_sealed(&key)? {
            Some(b) => Ok(decode::<Entry>(&b, &key)?.term),
            None => Ok(0),
        }
    }

    /// Number of entries in the log.
    pub fn entry_count(&self) -> Result<u64, StoreError> {
        Ok((self.last()? + 1).saturating_sub(self.first()?))
    }

    /// A point-in-time copy of the state at the applied index, for a snapshot. Call it on the
    /// thread that applies entries, so that nothing writes the state meanwhile.
    fn copy_state(&self, applied: u64) -> Result<StateCopy, StoreError> {
        let term = self.term_of(applied)?;
        StateCopy::take(&self.store.tree, applied, term, self.conf_state()?)
    }

    /// The state at the applied index, for a backup. Call it on the thread that applies entries
    /// (the Raft thread), so that nothing writes the state meanwhile.
    pub fn state_image(&self) -> Result<StateImage, StoreError> {
        let applied = self.applied()?;
        let copy = self.copy_state(applied)?;
        Ok(StateImage { index: copy.index, term: copy.term, records: copy.into_records() })
    }

    /// Makes this (empty) log hold `records` as the state at `index` (of `term`), with `node` the
    /// only voter: a cluster restored from a backup (`crate::backup::restore`). The records go
    /// through the same checks and the same one batch as a snapshot received from a leader.
    pub fn restore_state(
        &self,
        index: u64,
        term: u64,
        records: &[(Vec<u8>, Vec<u8>)],
        node: u64,
    ) -> Result<(), StoreError> {
        let mut data = Vec::new();
        for (key, value) in records {
            let record = SnapshotRecord { key: key.clone(), value: value.clone() };
            let frame = codec::encode_frame(&record)
                .map_err(|source| StoreError::Encode { key: String::from_utf8_lossy(key).into_owned(), source })?;
            data.extend_from_slice(&frame);
        }
        let mut snapshot = Snapshot::default();
        snapshot.data = data.into();
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        let mut cs = ConfState::default();
        cs.voters = vec![node];
        meta.set_conf_state(cs);
        self.apply_snapshot(&snapshot, &HardState::default())?;
        self.flush_and_mark()?;
        self.sync_mark()
    }

    /// Replaces the whole state with a snapshot received from the leader, in one atomic batch:
    /// state records, conf state, applied index, and an empty log compacted at the snapshot.
    pub fn apply_snapshot(&self, snapshot: &Snapshot, hard_state: &HardState) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        // A snapshot behind the log's end replaces the log: lower the mark first.
        self.lower_mark(meta.index, || Ok(meta.term))?;
        let mut batch = Batch::default();
        for item in self.store.tree.scan_prefix(STATE_PREFIX.as_bytes()) {
            batch.remove_raw(&item?.0);
        }
        for item in self.store.tree.scan_prefix(LOG) {
            batch.remove_raw(&item?.0);
        }
        for record in snapshot_records(snapshot)? {
            batch.put_raw(&record.key, record.value);
        }
        let mut hs = hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        Self::set_hard_state(&mut batch, &hs);
        Self::set_conf_state(&mut batch, meta.get_conf_state());
        Self::set_applied(&mut batch, meta.index);
        Self::set_compacted(&mut batch, meta.index, meta.term);
        self.store.apply(batch)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state().map_err(store_err)?, self.conf_state().map_err(store_err)?))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first().map_err(store_err)?;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = self.last().map_err(store_err)?;
        if high > last + 1 {
            panic!("raft asked for entries up to {high} but the log ends at {last}");
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for item in self.store.tree.range(log_key(low)..log_key(high)) {
            let (key, stored) = item.map_err(other)?;
            let e: Entry = unseal(&key, &stored).and_then(|b| decode(b, &key)).map_err(store_err)?;
            size += e.compute_size() as u64;
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot_meta().map_err(store_err)?;
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < self.first().map_err(store_err)? {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last().map_err(store_err)? {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.term_of(idx).map_err(store_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.first().map_err(store_err)
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.last().map_err(store_err)
    }

    /// The snapshot to send a follower behind the log. Called on the Raft thread: only the copy
    /// of the state happens here; the encoding runs on a thread of its own (in background mode)
    /// and this answers "temporarily unavailable" until it is done. raft-rs asks again at the
    /// follower's next heartbeat response.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let applied = self.applied().map_err(store_err)?;
        if applied < request_index {
            return Err(unavailable());
        }
        let compacted = self.snapshot_meta().map_err(store_err)?.index;
        match self.snapshots.serve(request_index, to, compacted, applied) {
            Serve::Ready(snapshot) => Ok(snapshot),
            Serve::Wait => Err(unavailable()),
            Serve::Build => match self.snapshots.mode {
                SnapshotBuild::Inline => {
                    let copy = self.copy_state(applied).map_err(store_err)?;
                    self.snapshots.build_inline(copy).map_err(store_err)
                }
                SnapshotBuild::Background => {
                    let copy = self.copy_state(applied).inspect_err(|_| self.snapshots.abandon()).map_err(store_err)?;
                    self.snapshots.build_in_background(copy);
                    Err(unavailable())
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8; 4].into();
        e
    }

    /// A log that builds its snapshots inline, as the simulation's do.
    fn log() -> (RaftLog, std::path::PathBuf) {
        log_building(SnapshotBuild::Inline)
    }

    fn log_building(build: SnapshotBuild) -> (RaftLog, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fifty-raftlog-{}-{}", std::process::id(), rand::random::<u64>()));
        (RaftLog::with_snapshot_build(Store::open(&dir).unwrap(), build), dir)
    }

    fn append(log: &RaftLog, entries: &[Entry]) {
        let mut batch = Batch::default();
        log.append(&mut batch, entries).unwrap();
        log.store.apply(batch).unwrap();
    }

    #[test]
    fn entries_and_terms_honour_the_documented_ranges() {
        let (log, dir) = log();
        assert_eq!((log.first_index().unwrap(), log.last_index().unwrap()), (1, 0));
        append(&log, &[entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]);
        assert_eq!((log.first_index().unwrap(), log.last_index().unwrap()), (1, 4));
        let got = log.entries(2, 4, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 3]);
        // max_size still returns at least one entry.
        assert_eq!(log.entries(1, 5, Some(0), GetEntriesContext::empty(false)).unwrap().len(), 1);
        assert_eq!(log.term(3).unwrap(), 2);
        assert!(matches!(log.term(5), Err(raft::Error::Store(StorageError::Unavailable))));

        // A conflicting append replaces the tail.
        append(&log, &[entry(3, 3)]);
        assert_eq!(log.last_index().unwrap(), 3);
        assert_eq!(log.term(3).unwrap(), 3);

        // Compaction keeps the term of the compacted index for matching.
        log.compact(2).unwrap();
        assert_eq!(log.first_index().unwrap(), 3);
        assert_eq!(log.term(2).unwrap(), 1);
        assert!(matches!(log.term(1), Err(raft::Error::Store(StorageError::Compacted))));
        assert!(matches!(
            log.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_snapshot_carries_the_state_and_replaces_it_elsewhere() {
        let (a, dir_a) = log();
        let (b, dir_b) = log();
        let mut batch = Batch::default();
        batch.put_member(&crate::state::MemberRecord {
            id: 7,
            quic_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
        });
        append(&a, &[entry(1, 1), entry(2, 1)]);
        RaftLog::set_applied(&mut batch, 2);
        let mut cs = ConfState::default();
        cs.voters = vec![7];
        RaftLog::set_conf_state(&mut batch, &cs);
        a.store.apply(batch).unwrap();
        assert!(matches!(a.snapshot(3, 0), Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))));
        let snap = a.snapshot(2, 0).unwrap();
        assert_eq!((snap.get_metadata().index, snap.get_metadata().term), (2, 1));

        // b had other state and a log; the snapshot replaces all of it.
        let mut batch = Batch::default();
        batch.put_member(&crate::state::MemberRecord { id: 9, quic_addr: "x".into(), http_addr: "y".into() });
        b.store.apply(batch).unwrap();
        append(&b, &[entry(1, 1)]);
        b.apply_snapshot(&snap, &HardState::default()).unwrap();
        assert_eq!(b.store.members().unwrap().iter().map(|m| m.id).collect::<Vec<_>>(), [7]);
        assert_eq!((b.first_index().unwrap(), b.last_index().unwrap(), b.applied().unwrap()), (3, 2, 2));
        assert_eq!(b.conf_state().unwrap().voters, [7]);
        assert_eq!(b.hard_state().unwrap().commit, 2);

        // Truncated snapshot data is refused, not half-applied.
        let mut bad = snap.clone();
        let len = bad.data.len();
        bad.data = bad.data.slice(..len - 1);
        assert!(b.apply_snapshot(&bad, &HardState::default()).is_err());
        let _ = (std::fs::remove_dir_all(dir_a), std::fs::remove_dir_all(dir_b));
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        let mut hs = HardState::default();
        hs.term = term;
        hs.vote = vote;
        hs.commit = commit;
        hs
    }

    /// As the Raft loop persists a Ready: entries and hard state in one batch, flush, mark.
    fn persist(log: &RaftLog, entries: &[Entry], hs: &HardState) {
        let mut batch = Batch::default();
        log.append(&mut batch, entries).unwrap();
        RaftLog::set_hard_state(&mut batch, hs);
        log.store.apply(batch).unwrap();
        log.flush_and_mark().unwrap();
        log.sync_mark().unwrap();
    }

    fn mark_index(log: &RaftLog) -> u64 {
        mark::read(&mark::path_in(log.store.dir())).unwrap().map(|(_, m)| m.index).unwrap_or(0)
    }

    #[test]
    fn a_follower_cut_back_lowers_the_mark_before_the_cut_so_a_crash_is_no_false_alarm() {
        let (log, dir) = log();
        persist(&log, &[entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1), entry(5, 1)], &hard_state(1, 9, 2));
        assert_eq!(mark_index(&log), 5);

        // A new leader replaces entries 3.. with its own; the process dies after the flush,
        // before the mark for the new tail is written.
        let mut batch = Batch::default();
        log.append(&mut batch, &[entry(3, 2)]).unwrap();
        assert_eq!(mark_index(&log), 2, "the mark is lowered before the cut is written");
        RaftLog::set_hard_state(&mut batch, &hard_state(2, 0, 2));
        log.store.apply(batch).unwrap();
        log.store.flush_blocking().unwrap();
        let found = log.verify().unwrap();
        assert_eq!((found.last_index, found.problems.len()), (3, 0));

        log.flush_and_mark().unwrap();
        log.sync_mark().unwrap();
        assert_eq!(mark_index(&log), 3);
        assert!(log.verify().is_ok());

        // An older snapshot replacing the log lowers the mark the same way.
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 2;
        snap.mut_metadata().term = 1;
        log.apply_snapshot(&snap, &hard_state(2, 0, 2)).unwrap();
        assert_eq!(mark_index(&log), 2);
        assert!(log.verify().is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_hard_state_that_went_back_or_changed_its_vote_is_refused() {
        let (log, dir) = log();
        persist(&log, &[entry(1, 3)], &hard_state(3, 7, 1));
        assert!(log.verify().is_ok());

        // An older hard state comes back (the newest write was lost).
        let mut batch = Batch::default();
        RaftLog::set_hard_state(&mut batch, &hard_state(2, 7, 1));
        log.store.apply(batch).unwrap();
        let Err(OpenError::Damaged(damage)) = log.verify() else { panic!("a hard state that went back was accepted") };
        assert!(damage.to_string().contains("term 2 but term 3 was flushed"), "{damage}");

        // Same term, another vote: the node could vote twice in a term.
        let mut batch = Batch::default();
        RaftLog::set_hard_state(&mut batch, &hard_state(3, 8, 1));
        log.store.apply(batch).unwrap();
        let Err(OpenError::Damaged(damage)) = log.verify() else { panic!("a changed vote was accepted") };
        assert!(damage.to_string().contains("vote 0000000000000008 in term 3"), "{damage}");

        // A missing hard state on a node that belongs to a cluster.
        let mut batch = Batch::default();
        RaftLog::set_hard_state(&mut batch, &hard_state(3, 7, 1));
        let mut cs = ConfState::default();
        cs.voters = vec![7];
        RaftLog::set_conf_state(&mut batch, &cs);
        batch.remove_raw(HARD_STATE);
        log.store.apply(batch).unwrap();
        let Err(OpenError::Damaged(damage)) = log.verify() else { panic!("a missing hard state was accepted") };
        assert!(damage.to_string().contains("raft/hard_state is missing"), "{damage}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_store_from_before_checksums_is_sealed_at_start_and_reads_the_same() {
        let (log, dir) = log();
        // Records as the previous version wrote them: bare protobuf and u64s, no mark file.
        let mut batch = Batch::default();
        for e in [entry(2, 1), entry(3, 2)] {
            batch.put_raw(&log_key(e.index), encode(&e));
        }
        batch.put_raw(HARD_STATE, encode(&hard_state(2, 5, 3)));
        let mut meta = SnapshotMetadata::default();
        meta.index = 1;
        meta.term = 1;
        batch.put_raw(SNAPSHOT_META, encode(&meta));
        batch.put_raw(APPLIED, 3u64.to_be_bytes().to_vec());
        batch.put_raw(NODE_ID, 0x1234u64.to_be_bytes().to_vec());
        log.store.apply(batch).unwrap();
        assert!(log.hard_state().is_err(), "a bare record is not read as sealed");
        let before = log.inspect().unwrap();
        assert!(before.unsealed && before.problems.is_empty(), "{before:?}");

        let after = log.verify().unwrap();
        assert!(!after.unsealed && after.problems.is_empty(), "{after:?}");
        assert_eq!((after.first_index, after.last_index, after.commit, after.applied), (2, 3, 3, 3));
        assert_eq!(after.mark.map(|m| (m.index, m.term, m.hs_term, m.hs_vote)), Some((3, 2, 2, 5)));
        assert_eq!(log.node_id().unwrap(), 0x1234);
        assert_eq!(log.term(3).unwrap(), 2);

        // Once sealed, a bare record is damage, not an old format.
        let mut batch = Batch::default();
        batch.put_raw(&log_key(3), encode(&entry(3, 2)));
        log.store.apply(batch).unwrap();
        let found = log.inspect().unwrap();
        assert_eq!(
            found.problems,
            ["raft/log/3: it has no checksum (damaged, or written before checksums and not upgraded)"]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_snapshot_names_artifacts_but_holds_none_of_their_bytes() {
        use sha2::Digest as _;
        let (a, dir_a) = log();
        let (b, dir_b) = log();
        // A 1 MiB artifact in a's blob store, recorded as available; and a legacy chunk record
        // of another, as versions before the blob store wrote them.
        let bytes = vec![0xab_u8; 1 << 20];
        let digest = hex::encode(sha2::Sha256::digest(&bytes));
        a.store.blobs().put(&digest, &bytes).unwrap();
        let legacy = format!("{:064x}", 1);
        let mut batch = Batch::default();
        batch.put_blob_available(&digest, bytes.len() as u64);
        batch.put_legacy_blob_chunk(&legacy, 0, 200_000, &[0xcd; 200_000]);
        RaftLog::set_applied(&mut batch, 1);
        append(&a, &[entry(1, 1)]);
        a.store.apply(batch).unwrap();

        let snap = a.snapshot(1, 0).unwrap();
        assert!(snap.data.len() < 4096, "the snapshot is {} bytes", snap.data.len());
        assert!(!snap.data.windows(64).any(|w| w.iter().all(|&x| x == 0xab || x == 0xcd)), "artifact bytes");
        b.apply_snapshot(&snap, &HardState::default()).unwrap();
        let recorded = b.store.recorded_blobs().unwrap();
        assert!(recorded.contains(&(digest.clone(), bytes.len() as u64)), "{recorded:?}");
        assert!(recorded.contains(&(legacy.clone(), 200_000)), "{recorded:?}");
        assert_eq!(b.store.blobs().size(&digest).unwrap(), None, "b fetches the bytes from a peer");
        assert_eq!(b.store.legacy_blob_chunk(&legacy, 0).unwrap(), None);
        let _ = std::fs::remove_dir_all(a.store.blobs().dir());
        let _ = (std::fs::remove_dir_all(dir_a), std::fs::remove_dir_all(dir_b));
    }

    fn is_unavailable(r: &raft::Result<Snapshot>) -> bool {
        matches!(r, Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)))
    }

    /// Asks for a snapshot for follower 2, as raft-rs does at each heartbeat response, until
    /// one is built.
    fn wait_snapshot(log: &RaftLog, request_index: u64) -> Snapshot {
        wait_snapshot_for(log, request_index, 2)
    }

    fn wait_snapshot_for(log: &RaftLog, request_index: u64, to: u64) -> Snapshot {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match log.snapshot(request_index, to) {
                Ok(snap) => return snap,
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)) => {}
                Err(e) => panic!("snapshot: {e}"),
            }
            assert!(std::time::Instant::now() < deadline, "no snapshot built within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn state_records(log: &RaftLog) -> Vec<(Vec<u8>, Vec<u8>)> {
        log.store
            .tree
            .scan_prefix(STATE_PREFIX.as_bytes())
            .map(|i| i.unwrap())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    fn records_of(snap: &Snapshot) -> Vec<(Vec<u8>, Vec<u8>)> {
        snapshot_records(snap).unwrap().into_iter().map(|r| (r.key, r.value)).collect()
    }

    fn member(id: u64) -> crate::state::MemberRecord {
        crate::state::MemberRecord { id, quic_addr: format!("127.0.0.1:{id}"), http_addr: "127.0.0.1:2".into() }
    }

    /// As the Raft loop applies entry `index`: its records and the applied index in one batch.
    fn apply_members(log: &RaftLog, index: u64, term: u64, put: &[u64], remove: &[u64]) {
        append(log, &[entry(index, term)]);
        let mut batch = Batch::default();
        for id in put {
            batch.put_member(&member(*id));
        }
        for id in remove {
            batch.remove_member(*id);
        }
        RaftLog::set_applied(&mut batch, index);
        log.store.apply(batch).unwrap();
    }

    #[test]
    fn a_snapshot_is_encoded_off_the_calling_thread_from_the_state_copied_at_the_call() {
        let (log, dir) = log_building(SnapshotBuild::Background);
        let mut batch = Batch::default();
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2];
        RaftLog::set_conf_state(&mut batch, &cs);
        log.store.apply(batch).unwrap();
        apply_members(&log, 1, 1, &[1, 2], &[]);
        apply_members(&log, 2, 1, &[3], &[]);
        let at_two = state_records(&log);

        // The build may not encode before apply has written more: the copy must not see it.
        let hold = log.snapshots.hold.lock().unwrap();
        assert!(is_unavailable(&log.snapshot(0, 2)), "the first call starts a build and returns");
        assert!(is_unavailable(&log.snapshot(0, 2)), "a build is under way");
        apply_members(&log, 3, 2, &[4], &[1]);
        apply_members(&log, 4, 2, &[5], &[]);
        drop(hold);

        let snap = wait_snapshot(&log, 0);
        assert_eq!((snap.get_metadata().index, snap.get_metadata().term), (2, 1));
        assert_eq!(snap.get_metadata().get_conf_state().voters, [1, 2]);
        assert_eq!(records_of(&snap), at_two, "the snapshot holds the state at index 2, nothing written after");
        assert_ne!(state_records(&log), at_two);

        // It is served again while usable, not rebuilt.
        assert_eq!(log.snapshot(2, 2).unwrap().data.as_ptr(), snap.data.as_ptr());

        // Another coordinator installs it and has exactly that state.
        let (other, dir_other) = log_building(SnapshotBuild::Inline);
        other.apply_snapshot(&snap, &HardState::default()).unwrap();
        assert_eq!(state_records(&other), at_two);
        let _ = (std::fs::remove_dir_all(dir), std::fs::remove_dir_all(dir_other));
    }

    #[test]
    fn a_snapshot_too_old_for_the_request_the_compacted_log_or_a_new_member_is_rebuilt() {
        let (log, dir) = log_building(SnapshotBuild::Background);
        let voters = |ids: &[u64], learners: &[u64], index: u64| {
            let mut cs = ConfState::default();
            cs.voters = ids.to_vec();
            cs.learners = learners.to_vec();
            apply_members(&log, index, 1, &[], &[]);
            let mut batch = Batch::default();
            RaftLog::set_conf_state(&mut batch, &cs);
            log.store.apply(batch).unwrap();
        };
        voters(&[1, 2], &[], 1);
        assert!(is_unavailable(&log.snapshot(0, 2)));
        let first = wait_snapshot(&log, 0);
        assert_eq!(first.get_metadata().index, 1);

        // A follower asks for at least index 2: the snapshot at 1 will not do.
        apply_members(&log, 2, 1, &[2], &[]);
        assert!(is_unavailable(&log.snapshot(2, 2)), "a stale snapshot starts a new build");
        let second = wait_snapshot(&log, 2);
        assert_eq!(second.get_metadata().index, 2);
        assert_eq!(records_of(&second), state_records(&log));

        // Still usable after compaction up to its index; not once the log is compacted past it
        // (a follower could not go on from the log after it).
        apply_members(&log, 3, 1, &[3], &[]);
        apply_members(&log, 4, 1, &[4], &[]);
        log.compact(2).unwrap();
        assert_eq!(log.snapshot(0, 2).unwrap().get_metadata().index, 2);
        log.compact(3).unwrap();
        assert!(is_unavailable(&log.snapshot(0, 2)), "compacted past it: rebuilt");
        let third = wait_snapshot(&log, 0);
        assert_eq!(third.get_metadata().index, 4);
        assert_eq!(records_of(&third), state_records(&log));

        // A coordinator that joined (as a learner) after it was built is not in its conf state:
        // raft-rs on that coordinator would refuse it, forever.
        voters(&[1, 2], &[3], 5);
        assert!(is_unavailable(&log.snapshot(0, 3)), "a snapshot that does not name the new learner is rebuilt");
        let built = wait_snapshot_for(&log, 0, 3);
        assert_eq!(built.get_metadata().index, 5);
        assert_eq!(built.get_metadata().get_conf_state().learners, [3]);

        // Inline, the call builds and returns it at once (the simulation).
        let (inline, dir_inline) = log_building(SnapshotBuild::Inline);
        apply_members(&inline, 1, 1, &[1], &[]);
        let mut batch = Batch::default();
        let mut cs = ConfState::default();
        cs.voters = vec![1];
        RaftLog::set_conf_state(&mut batch, &cs);
        inline.store.apply(batch).unwrap();
        assert_eq!(inline.snapshot(0, 1).unwrap().get_metadata().index, 1);
        let _ = (std::fs::remove_dir_all(dir), std::fs::remove_dir_all(dir_inline));
    }
}
