//! raft-rs's `Storage` on sled: log entries, hard state, conf state and snapshot metadata, in the
//! same tree as the state machine so that one atomic batch can move both (an applied entry and
//! the applied index; a received snapshot and the state it carries).
//!
//! Keys: `raft/log/<index, 8 bytes big-endian>` (entries, protobuf), `raft/hard_state`,
//! `raft/conf_state`, `raft/snapshot_meta` (protobuf), `raft/applied` and `raft/node_id` (u64
//! big-endian). The log holds the entries after the last compaction; `raft/snapshot_meta` names
//! the index and term it was compacted at. Snapshots are made on demand from the state at the
//! applied index: the state machine's records (`sm/...`) as a sequence of codec frames.

// raft-rs's protobuf types are built field by field, as its own examples do.
#![allow(clippy::field_reassign_with_default)]

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use fifty_shared::codec;

use super::{Batch, Store, StoreError, STATE_PREFIX};

const LOG: &[u8] = b"raft/log/";
const HARD_STATE: &[u8] = b"raft/hard_state";
const CONF_STATE: &[u8] = b"raft/conf_state";
const SNAPSHOT_META: &[u8] = b"raft/snapshot_meta";
const APPLIED: &[u8] = b"raft/applied";
const NODE_ID: &[u8] = b"raft/node_id";

/// One state record inside snapshot data.
#[derive(bincode::Encode, bincode::Decode)]
struct SnapshotRecord {
    key: Vec<u8>,
    value: Vec<u8>,
}

fn log_key(index: u64) -> Vec<u8> {
    let mut k = LOG.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn index_of(key: &[u8]) -> u64 {
    let bytes: [u8; 8] = key[LOG.len()..].try_into().expect("log keys end in 8 index bytes");
    u64::from_be_bytes(bytes)
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

fn store_err(e: StoreError) -> raft::Error {
    other(e)
}

fn decode<M: protobuf::Message>(bytes: &[u8], what: &str) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes)
        .map_err(|e| StoreError::Corrupt { key: what.to_string(), source: codec::CodecError::Decode(e.to_string()) })
}

fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes().expect("protobuf encoding of an in-memory message cannot fail")
}

/// The Raft log of one coordinator.
#[derive(Clone)]
pub struct RaftLog {
    store: Store,
}

impl RaftLog {
    /// The log kept in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn u64_at(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        Ok(self.store.raw_get(key)?.map(|v| {
            let bytes: [u8; 8] = v.as_ref().try_into().unwrap_or([0; 8]);
            u64::from_be_bytes(bytes)
        }))
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
        batch.put_raw(NODE_ID, id.to_be_bytes().to_vec());
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
        batch.put_raw(APPLIED, index.to_be_bytes().to_vec());
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> Result<HardState, StoreError> {
        match self.store.raw_get(HARD_STATE)? {
            Some(b) => decode(&b, "raft/hard_state"),
            None => Ok(HardState::default()),
        }
    }

    /// The stored conf state.
    pub fn conf_state(&self) -> Result<ConfState, StoreError> {
        match self.store.raw_get(CONF_STATE)? {
            Some(b) => decode(&b, "raft/conf_state"),
            None => Ok(ConfState::default()),
        }
    }

    fn snapshot_meta(&self) -> Result<SnapshotMetadata, StoreError> {
        match self.store.raw_get(SNAPSHOT_META)? {
            Some(b) => decode(&b, "raft/snapshot_meta"),
            None => Ok(SnapshotMetadata::default()),
        }
    }

    /// Whether this node belongs to a cluster yet (bootstrapped, or caught up from a snapshot).
    pub fn initialized(&self) -> Result<bool, StoreError> {
        let cs = self.conf_state()?;
        Ok(!cs.voters.is_empty() || !cs.learners.is_empty())
    }

    /// Saves the hard state in `batch`.
    pub fn set_hard_state(batch: &mut Batch, hs: &HardState) {
        batch.put_raw(HARD_STATE, encode(hs));
    }

    /// Records in `batch` that the log was compacted at `index` (whose term was `term`).
    pub fn set_compacted(batch: &mut Batch, index: u64, term: u64) {
        let mut meta = SnapshotMetadata::default();
        meta.index = index;
        meta.term = term;
        batch.put_raw(SNAPSHOT_META, encode(&meta));
    }

    /// Saves the conf state in `batch`.
    pub fn set_conf_state(batch: &mut Batch, cs: &ConfState) {
        batch.put_raw(CONF_STATE, encode(cs));
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
    pub fn append(&self, batch: &mut Batch, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        for item in self.store.tree.range(log_key(first.index)..) {
            let (key, _) = item?;
            if !key.starts_with(LOG) {
                break;
            }
            batch.remove_raw(&key);
        }
        for e in entries {
            batch.put_raw(&log_key(e.index), encode(e));
        }
        Ok(())
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
        match self.store.raw_get(&log_key(idx))? {
            Some(b) => Ok(decode::<Entry>(&b, "raft/log")?.term),
            None => Ok(0),
        }
    }

    /// Number of entries in the log.
    pub fn entry_count(&self) -> Result<u64, StoreError> {
        Ok((self.last()? + 1).saturating_sub(self.first()?))
    }

    /// Writes the state machine's records as snapshot data. Artifact bytes are not state: they
    /// live in the blob store, and a coordinator that installs the snapshot fetches the blobs
    /// its records name from a peer; legacy chunk records are left out.
    fn snapshot_data(&self) -> Result<Vec<u8>, StoreError> {
        let mut data = Vec::new();
        for item in self.store.tree.scan_prefix(STATE_PREFIX.as_bytes()) {
            let (key, value) = item?;
            if key.starts_with(super::LEGACY_BLOB_PREFIX.as_bytes()) {
                continue;
            }
            let record = SnapshotRecord { key: key.to_vec(), value: value.to_vec() };
            let frame = codec::encode_frame(&record)
                .map_err(|source| StoreError::Encode { key: String::from_utf8_lossy(&key).into_owned(), source })?;
            data.extend_from_slice(&frame);
        }
        Ok(data)
    }

    /// Replaces the whole state with a snapshot received from the leader, in one atomic batch:
    /// state records, conf state, applied index, and an empty log compacted at the snapshot.
    pub fn apply_snapshot(&self, snapshot: &Snapshot, hard_state: &HardState) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        let mut batch = Batch::default();
        for item in self.store.tree.scan_prefix(STATE_PREFIX.as_bytes()) {
            batch.remove_raw(&item?.0);
        }
        for item in self.store.tree.scan_prefix(LOG) {
            batch.remove_raw(&item?.0);
        }
        let mut rest: &[u8] = &snapshot.data;
        while !rest.is_empty() {
            let corrupt = |detail: String| StoreError::Corrupt {
                key: format!("snapshot at index {}", meta.index),
                source: codec::CodecError::Decode(detail),
            };
            match codec::decode_frame::<SnapshotRecord>(rest) {
                Ok(Some((record, used))) => {
                    if !record.key.starts_with(STATE_PREFIX.as_bytes()) {
                        return Err(corrupt("a record outside the state machine".into()));
                    }
                    batch.put_raw(&record.key, record.value);
                    rest = &rest[used..];
                }
                Ok(None) => return Err(corrupt("truncated".into())),
                Err(e) => return Err(corrupt(e.to_string())),
            }
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
            let (_, bytes) = item.map_err(other)?;
            let e: Entry = decode(&bytes, "raft/log").map_err(store_err)?;
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

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let applied = self.applied().map_err(store_err)?;
        if applied < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snapshot = Snapshot::default();
        snapshot.data = self.snapshot_data().map_err(store_err)?.into();
        let meta = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = self.term_of(applied).map_err(store_err)?;
        meta.set_conf_state(self.conf_state().map_err(store_err)?);
        Ok(snapshot)
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

    fn log() -> (RaftLog, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fifty-raftlog-{}-{}", std::process::id(), rand::random::<u64>()));
        (RaftLog::new(Store::open(&dir).unwrap()), dir)
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
}
