//! The only module that talks to sled. Everything a coordinator keeps lives in one sled tree:
//! the state machine's records under `sm/` and the Raft log and its metadata under `raft/`
//! (see [`raft_log`]). Writes arrive as a [`Batch`] that is applied atomically — so an applied
//! command and the applied index move together, and a snapshot replaces the whole state in one
//! step — and are durable once [`Store::flush`] returns.
//!
//! State keys: `sm/cluster`, `sm/token/<hash>`, `sm/host/<name>`, `sm/serial/<hex>`,
//! `sm/revoked/<hex>`, `sm/member/<node id>`. Values are records encoded with the one codec
//! (`fifty_shared::codec`); Raft's own types are kept in raft-rs's protobuf encoding.

pub mod check;
pub mod raft_log;

use std::path::Path;

use bincode::{Decode, Encode};
use fifty_shared::codec::{self, CodecError};

use crate::state::{ClusterRecord, GateRecord, HostRecord, MemberRecord, RepoRecord, Revocation, TokenRecord};
use fifty_shared::ids::HostName;
use fifty_shared::ids::RepoName;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (disk full, I/O error, or a damaged database).
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record does not decode: the database is damaged or from an incompatible version.
    #[error("stored record {key:?} does not decode: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What the codec said.
        source: CodecError,
    },
    /// A record did not encode (larger than a frame): a bug, caught before writing.
    #[error("record {key:?} does not encode: {source}")]
    Encode {
        /// The record's key.
        key: String,
        /// What the codec said.
        source: CodecError,
    },
}

/// The coordinator's durable state.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
}

/// A set of writes applied all at once.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    error: Option<StoreError>,
}

/// Prefix of the state machine's keys: everything a snapshot carries.
pub const STATE_PREFIX: &str = "sm/";

impl Batch {
    fn put<T: Encode>(&mut self, key: String, value: &T) {
        let key = format!("{STATE_PREFIX}{key}");
        match codec::to_bytes(value) {
            Ok(bytes) => self.ops.push((key.into_bytes(), Some(bytes))),
            Err(source) => self.error = Some(StoreError::Encode { key, source }),
        }
    }

    fn remove(&mut self, key: String) {
        self.ops.push((format!("{STATE_PREFIX}{key}").into_bytes(), None));
    }

    /// Writes raw bytes under a full key (Raft metadata and log entries).
    pub(crate) fn put_raw(&mut self, key: &[u8], value: Vec<u8>) {
        self.ops.push((key.to_vec(), Some(value)));
    }

    /// Deletes a full key.
    pub(crate) fn remove_raw(&mut self, key: &[u8]) {
        self.ops.push((key.to_vec(), None));
    }

    /// Appends another batch's writes after this one's.
    pub fn merge(&mut self, other: Batch) {
        self.ops.extend(other.ops);
        if self.error.is_none() {
            self.error = other.error;
        }
    }

    /// Records a coordinator's addresses.
    pub fn put_member(&mut self, m: &MemberRecord) {
        self.put(format!("member/{:016x}", m.id), m);
    }

    /// Forgets a coordinator.
    pub fn remove_member(&mut self, id: u64) {
        self.remove(format!("member/{id:016x}"));
    }

    /// Records the cluster (CA) on first start.
    pub fn put_cluster(&mut self, c: &ClusterRecord) {
        self.put("cluster".into(), c);
    }

    /// Writes a token record.
    pub fn put_token(&mut self, t: &TokenRecord) {
        self.put(format!("token/{}", t.hash), t);
    }

    /// Writes a host record and the serial that identifies it.
    pub fn put_host(&mut self, h: &HostRecord) {
        self.put(format!("host/{}", h.name), h);
        self.put(format!("serial/{}", h.serial), &h.name);
    }

    /// Deletes a host record and its serial mapping.
    pub fn remove_host(&mut self, h: &HostRecord) {
        self.remove(format!("host/{}", h.name));
        self.remove(format!("serial/{}", h.serial));
    }

    /// Writes a repository.
    pub fn put_repo(&mut self, r: &RepoRecord) {
        self.put(format!("repo/{}", r.name), r);
    }

    /// Writes a branch's gate.
    pub fn put_gate(&mut self, g: &GateRecord) {
        self.put(format!("gate/{}/{}", g.repo, g.branch), g);
    }

    /// Records a revoked certificate serial.
    pub fn put_revocation(&mut self, r: &Revocation) {
        self.put(format!("revoked/{}", r.serial), r);
    }
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let tree = db.open_tree("fifty")?;
        Ok(Self { db, tree })
    }

    fn get<T: Decode<()>>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let key = format!("{STATE_PREFIX}{key}");
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => codec::from_bytes(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { key: key.to_string(), source }),
        }
    }

    fn scan<T: Decode<()>>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(format!("{STATE_PREFIX}{prefix}").as_bytes()) {
            let (key, bytes) = item?;
            let value = codec::from_bytes(&bytes)
                .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(&key).into_owned(), source })?;
            out.push(value);
        }
        Ok(out)
    }

    /// The cluster record, once the cluster was initialised.
    pub fn cluster(&self) -> Result<Option<ClusterRecord>, StoreError> {
        self.get("cluster")
    }

    /// A token by the hash of its secret.
    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get(&format!("token/{hash}"))
    }

    /// Every token record.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.scan("token/")
    }

    /// A host by name.
    pub fn host(&self, name: &HostName) -> Result<Option<HostRecord>, StoreError> {
        self.get(&format!("host/{name}"))
    }

    /// Every host, sorted by name.
    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.scan("host/")
    }

    /// The host whose current certificate has this serial.
    pub fn host_by_serial(&self, serial: &str) -> Result<Option<HostName>, StoreError> {
        self.get(&format!("serial/{serial}"))
    }

    /// The revocation of this serial, if it was revoked.
    pub fn revocation(&self, serial: &str) -> Result<Option<Revocation>, StoreError> {
        self.get(&format!("revoked/{serial}"))
    }

    /// Every revocation.
    pub fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.scan("revoked/")
    }

    /// A repository by name.
    pub fn repo(&self, name: &RepoName) -> Result<Option<RepoRecord>, StoreError> {
        self.get(&format!("repo/{name}"))
    }

    /// Every repository, sorted by name.
    pub fn repos(&self) -> Result<Vec<RepoRecord>, StoreError> {
        self.scan("repo/")
    }

    /// A branch's gate, if it was ever set.
    pub fn gate(&self, repo: &RepoName, branch: &str) -> Result<Option<GateRecord>, StoreError> {
        self.get(&format!("gate/{repo}/{branch}"))
    }

    /// Every gate ever set for `repo`.
    pub fn gates(&self, repo: &RepoName) -> Result<Vec<GateRecord>, StoreError> {
        self.scan(&format!("gate/{repo}/"))
    }

    /// Every coordinator in the cluster, by node id.
    pub fn members(&self) -> Result<Vec<MemberRecord>, StoreError> {
        self.scan("member/")
    }

    /// Applies `batch` atomically (not yet durable: see [`Store::flush`]).
    pub fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        if let Some(e) = batch.error {
            return Err(e);
        }
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.ops {
            match value {
                Some(v) => sled_batch.insert(key, v),
                None => sled_batch.remove(key),
            }
        }
        self.tree.apply_batch(sled_batch)?;
        Ok(())
    }

    /// Makes every applied batch durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Makes every applied batch durable, blocking the thread (for the Raft loop).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree.get(key)?)
    }
}
