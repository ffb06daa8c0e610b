//! The only module that talks to sled. Everything a coordinator keeps lives in one sled tree:
//! the state machine's records under `sm/` and the Raft log and its metadata under `raft/`
//! (see [`raft_log`]). Writes arrive as a [`Batch`] that is applied atomically — so an applied
//! command and the applied index move together, and a snapshot replaces the whole state in one
//! step — and are durable once [`Store::flush`] returns.
//!
//! State keys: `sm/cluster`, `sm/token/<hash>`, `sm/host/<name>`, `sm/serial/<hex>`,
//! `sm/revoked/<hex>`, `sm/member/<node id>`, `sm/repo/<name>`, `sm/gate/<repo>/<branch>`; CI:
//! `sm/counters`, `sm/commit/<repo>/<seq>`, `sm/sha/<repo>/<sha>` (→ seq), `sm/job/<id>`,
//! `sm/active/<id>` (jobs queued or running), `sm/log/<id>/<attempt>`, `sm/results/<id>/<attempt>`
//! (an attempt's test results), `sm/tests/<repo>`, `sm/duration/<repo>/<test>`,
//! `sm/delivery/<id>` (webhook deliveries seen); deploy: `sm/blobsize/<digest>` (an artifact a
//! quorum holds in its blob store, [`blobs`]; the bytes are not in sled), `sm/release/<id>`, `sm/rollout/<id>`,
//! `sm/target/<repo>`, `sm/hosttarget/<host>`; the immune system: `sm/evidence/<repo>` (the
//! sequential tests of the wave baking now), `sm/spread/<repo>` (the spreads of hosts' changes
//! learned from its past waves), `sm/incident/<id>`,
//! `sm/notification/<id>`, `sm/webhook/<id>`; experiments: `sm/exp/def/<name>`, `sm/exp/stats/<name>`,
//! `sm/exp/unit/<name>/<unit hash>`, `sm/exp/mark/<host>`; alerts: `sm/alertrule/<id>`, `sm/alert/<id>`,
//! `sm/firing/<id>` (alerts firing now). Numbers in keys are 16 hex digits, so they sort. Values are records encoded with the one codec
//! (`fifty_shared::codec`); Raft's own types are kept in raft-rs's protobuf encoding.
//!
//! Artifact bytes live beside sled, in the [`blobs`] directory, never in a record. Older
//! versions kept them as `sm/blob/<digest>/<chunk>` records: such legacy keys are read once to
//! move an artifact into the blob store, and are in neither snapshots nor state digests.

pub mod blobs;
pub mod check;
pub mod mark;
pub mod raft_log;

use std::path::Path;
use std::sync::Arc;

use bincode::{Decode, Encode};
use fifty_shared::codec::{self, CodecError};

use crate::ci::{CommitRecord, JobRecord, JobState, TestBook, TestResult};
use crate::deploy::{HostTarget, ReleaseRecord, Rollout, TargetRecord};
use crate::state::{
    ClusterRecord, Counters, GateRecord, HostRecord, MemberRecord, RepoRecord, Revocation, TokenRecord,
};
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
    /// A record or key is larger than its bound: caught before writing.
    #[error("{what} {key:?} would be {len} bytes; the limit is {max}")]
    TooLarge {
        /// The record's key (cut short if the key itself is too long).
        key: String,
        /// "record" or "key".
        what: &'static str,
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A record did not encode: a bug, caught before writing.
    #[error("record {key:?} does not encode: {source}")]
    Encode {
        /// The record's key.
        key: String,
        /// What the codec said.
        source: CodecError,
    },
    /// The flushed mark (`raft-mark`, see [`mark`]) could not be read or written.
    #[error("flushed mark: {0}")]
    Mark(#[from] mark::MarkError),
}

/// How big a coordinator's store is ([`Store::sizes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreSizes {
    /// State records (`sm/`).
    pub state_records: u64,
    /// Their keys and values, in bytes.
    pub state_bytes: u64,
    /// Raft log entries kept (those after the last compaction).
    pub log_entries: u64,
    /// Their keys and values, in bytes.
    pub log_bytes: u64,
    /// What sled's files take on disk.
    pub disk_bytes: u64,
}

/// The coordinator's durable state.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    /// sled's directory (the Raft log's flushed mark lives beside sled's files).
    dir: std::sync::Arc<std::path::PathBuf>,
    blobs: Arc<blobs::Blobs>,
}

/// A set of writes applied all at once.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    error: Option<StoreError>,
    /// Blob files to delete once the batch is applied (their records go in `ops`).
    blob_deletions: Vec<String>,
}

/// The prefix of legacy artifact chunk records (see the module docs).
pub const LEGACY_BLOB_PREFIX: &str = "sm/blob/";

/// Prefix of the state machine's keys: everything a snapshot carries.
pub const STATE_PREFIX: &str = "sm/";

/// The largest state record, encoded. A snapshot carries each record with its key in one frame,
/// so a record must leave room in `codec::MAX_FRAME` for its key ([`MAX_KEY`]) and the framing.
/// Every record is checked here, the one place records are written: the state machine turns a
/// record over the bound into a deterministic rejection of its command, never a failed apply.
pub const MAX_RECORD: usize = codec::MAX_FRAME - 64 * 1024;

/// The longest state key.
pub const MAX_KEY: usize = 4 * 1024;

// Named here, not as literals in `impl Batch`, whose string literals are its keys
// (`check::tests` reads them from this file).
const WHAT_KEY: &str = "key";
const WHAT_RECORD: &str = "record";

impl Batch {
    fn put<T: Encode>(&mut self, key: String, value: &T) {
        let key = format!("{STATE_PREFIX}{key}");
        if key.len() > MAX_KEY {
            let len = key.len();
            self.fail(StoreError::TooLarge { key: truncated(&key), what: WHAT_KEY, len, max: MAX_KEY });
            return;
        }
        match codec::to_bytes(value) {
            Ok(bytes) if bytes.len() > MAX_RECORD => {
                let len = bytes.len();
                self.fail(StoreError::TooLarge { key, what: WHAT_RECORD, len, max: MAX_RECORD });
            }
            Ok(bytes) => self.ops.push((key.into_bytes(), Some(bytes))),
            Err(codec::CodecError::TooLarge { len, .. }) => {
                self.fail(StoreError::TooLarge { key, what: WHAT_RECORD, len, max: MAX_RECORD })
            }
            Err(source) => self.fail(StoreError::Encode { key, source }),
        }
    }

    fn fail(&mut self, e: StoreError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Takes the first write this batch could not make (a record over its bound), if any.
    pub fn take_error(&mut self) -> Option<StoreError> {
        self.error.take()
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
        self.blob_deletions.extend(other.blob_deletions);
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

    /// Writes the counters.
    pub fn put_counters(&mut self, c: &Counters) {
        self.put("counters".into(), c);
    }

    /// Writes a commit and its SHA index.
    pub fn put_commit(&mut self, c: &CommitRecord) {
        self.put(format!("commit/{}/{:016x}", c.repo, c.seq), c);
        self.put(format!("sha/{}/{}", c.repo, c.sha), &c.seq);
    }

    /// Writes a job, keeping the index of unfinished jobs.
    pub fn put_job(&mut self, j: &JobRecord) {
        self.put(format!("job/{:016x}", j.id), j);
        match j.state {
            JobState::Queued | JobState::Running => self.put(format!("active/{:016x}", j.id), &j.id),
            JobState::Passed | JobState::Failed => self.remove(format!("active/{:016x}", j.id)),
        }
    }

    /// Keeps the output tail of one attempt.
    pub fn put_log(&mut self, job: u64, attempt: u32, tail: &[u8]) {
        self.put(format!("log/{job:016x}/{attempt:08x}"), &tail.to_vec());
    }

    /// Keeps the test results of one attempt.
    pub fn put_results(&mut self, job: u64, attempt: u32, tests: &[TestResult]) {
        self.put(format!("results/{job:016x}/{attempt:08x}"), &tests.to_vec());
    }

    /// Records a test's last passing duration.
    pub fn put_duration(&mut self, repo: &RepoName, test: &str, d: std::time::Duration) {
        self.put(format!("duration/{repo}/{test}"), &(test.to_string(), d));
    }

    /// Records that a quorum of coordinators holds artifact `digest` of `size` bytes.
    pub fn put_blob_available(&mut self, digest: &str, size: u64) {
        self.put(format!("blobsize/{digest}"), &size);
    }

    /// Writes one legacy artifact chunk record (as versions before the blob store did).
    #[cfg(test)]
    pub(crate) fn put_legacy_blob_chunk(&mut self, digest: &str, index: u32, total: u64, data: &[u8]) {
        self.put(format!("blob/{digest}/{index:08x}"), &data.to_vec());
        self.put(format!("blobsize/{digest}"), &total);
    }

    /// Drops an artifact: its record (and any legacy chunk records) now, and its blob file on
    /// this coordinator once the batch is applied.
    pub fn remove_blob(&mut self, digest: &str, size: u64) {
        let chunks = size.div_ceil(fifty_shared::wire::ARTIFACT_CHUNK as u64).max(1);
        for index in 0..chunks {
            self.remove(format!("blob/{digest}/{index:08x}"));
        }
        self.remove(format!("blobsize/{digest}"));
        self.blob_deletions.push(digest.to_string());
    }

    /// Forgets a commit and its SHA index (retention).
    pub fn remove_commit(&mut self, c: &CommitRecord) {
        self.remove(format!("commit/{}/{:016x}", c.repo, c.seq));
        self.remove(format!("sha/{}/{}", c.repo, c.sha));
    }

    /// Forgets a finished job, with every attempt's output and test results (retention).
    pub fn remove_job(&mut self, j: &JobRecord) {
        self.remove(format!("job/{:016x}", j.id));
        self.remove(format!("active/{:016x}", j.id));
        for a in &j.attempts {
            self.remove_log(j.id, a.n);
            self.remove(format!("results/{:016x}/{:08x}", j.id, a.n));
        }
    }

    /// Forgets one attempt's output (retention).
    pub fn remove_log(&mut self, job: u64, attempt: u32) {
        self.remove(format!("log/{job:016x}/{attempt:08x}"));
    }

    /// Forgets an incident (retention).
    pub fn remove_incident(&mut self, id: u64) {
        self.remove(format!("incident/{id:016x}"));
    }

    /// Forgets an alert (retention).
    pub fn remove_alert(&mut self, id: u64) {
        self.remove(format!("alert/{id:016x}"));
        self.remove(format!("firing/{id:016x}"));
    }

    /// Records what retention last removed.
    pub fn put_retention(&mut self, r: &crate::retention::RetentionRecord) {
        self.put("retention".into(), r);
    }

    /// Writes a release.
    pub fn put_release(&mut self, r: &ReleaseRecord) {
        self.put(format!("release/{:016x}", r.id), r);
    }

    /// Writes an incident.
    pub fn put_incident(&mut self, i: &crate::incidents::IncidentRecord) {
        self.put(format!("incident/{:016x}", i.id), i);
    }

    /// Writes a notification.
    pub fn put_notification(&mut self, n: &crate::notify::Notification) {
        self.put(format!("notification/{:016x}", n.id), &(n.clone(), n.at, n.to.clone()));
    }

    /// Writes a webhook.
    pub fn put_webhook(&mut self, w: &crate::notify::Webhook) {
        self.put(format!("webhook/{:016x}", w.id), w);
    }

    /// Removes a webhook.
    pub fn remove_webhook(&mut self, id: u64) {
        self.ops.push((format!("{STATE_PREFIX}webhook/{id:016x}").into_bytes(), None));
    }

    /// Writes an alert rule.
    pub fn put_alert_rule(&mut self, r: &crate::alerts::Rule) {
        self.put(format!("alertrule/{:016x}", r.id), r);
    }

    /// Removes an alert rule.
    pub fn remove_alert_rule(&mut self, id: u64) {
        self.ops.push((format!("{STATE_PREFIX}alertrule/{id:016x}").into_bytes(), None));
    }

    /// Writes an alert, and whether it is firing.
    pub fn put_alert(&mut self, a: &crate::alerts::AlertRecord) {
        self.put(format!("alert/{:016x}", a.id), a);
        let firing = format!("firing/{:016x}", a.id);
        if a.resolved.is_none() {
            self.put(firing, &a.id);
        } else {
            self.ops.push((format!("{STATE_PREFIX}{firing}").into_bytes(), None));
        }
    }

    /// Writes a rollout.
    pub fn put_rollout(&mut self, r: &Rollout) {
        self.put(format!("rollout/{:016x}", r.id), r);
    }

    /// Writes the immune system's evidence for a wave of one of `repo`'s rollouts (the target's
    /// newest, replacing the one before).
    pub fn put_evidence(&mut self, repo: &RepoName, e: &crate::immune::evidence::WaveEvidence) {
        self.put(format!("evidence/{repo}"), e);
    }

    /// Writes `repo`'s learned spreads of hosts' changes (`immune::spread`).
    pub fn put_spread(&mut self, repo: &RepoName, s: &crate::immune::spread::LearnedSpread) {
        self.put(format!("spread/{repo}"), s);
    }

    /// Writes a deploy target.
    pub fn put_target(&mut self, repo: &RepoName, t: &TargetRecord) {
        self.put(format!("target/{repo}"), t);
    }

    /// Writes the release a host should run.
    pub fn put_host_target(&mut self, t: &HostTarget) {
        self.put(format!("hosttarget/{}", t.host), t);
    }

    /// Writes a repository's test history.
    pub fn put_tests(&mut self, repo: &RepoName, book: &TestBook) {
        self.put(format!("tests/{repo}"), book);
    }

    /// Records a webhook delivery id as seen.
    pub fn put_delivery(&mut self, id: &str, at: std::time::SystemTime) {
        self.put(format!("delivery/{id}"), &at);
    }

    // ---- experiments: `sm/exp/def/<name>`, `sm/exp/stats/<name>`, `sm/exp/unit/<name>/<hash>`,
    // `sm/exp/mark/<host>` (the last agent report applied); since state version 4 also
    // `sm/exp/schedule/<name>` and `sm/exp/running/<name>` (records of their own, so the older
    // ones keep the layout every version reads) ----------------------------------------------

    /// Writes an experiment's definition.
    pub fn put_experiment(&mut self, e: &crate::experiments::ExperimentRecord) {
        self.put(format!("exp/def/{}", e.name), e);
    }

    /// Writes an experiment's counts.
    pub fn put_experiment_stats(&mut self, name: &str, s: &crate::experiments::StatsRecord) {
        self.put(format!("exp/stats/{name}"), s);
    }

    /// Writes an experiment's schedule of looks.
    pub fn put_experiment_schedule(&mut self, name: &str, s: &crate::experiments::Schedule) {
        self.put(format!("exp/schedule/{name}"), s);
    }

    /// Writes an experiment's looks taken and peaks of evidence.
    pub fn put_experiment_running(&mut self, name: &str, r: &crate::experiments::RunningRecord) {
        self.put(format!("exp/running/{name}"), r);
    }

    /// Writes what is known of one unit in one experiment.
    pub fn put_experiment_unit(&mut self, name: &str, unit: u64, u: &crate::experiments::UnitRecord) {
        self.put(format!("exp/unit/{name}/{unit:016x}"), u);
    }

    /// Removes an experiment's definition and counts (its unit records: see
    /// [`Store::experiment_unit_keys`]).
    pub fn remove_experiment(&mut self, name: &str) {
        self.remove(format!("exp/def/{name}"));
        self.remove(format!("exp/stats/{name}"));
        self.remove(format!("exp/schedule/{name}"));
        self.remove(format!("exp/running/{name}"));
    }

    /// Records the last agent report applied for `host`.
    pub fn put_report_mark(&mut self, host: &HostName, m: &crate::experiments::ReportMark) {
        self.put(format!("exp/mark/{host}"), m);
    }
}

impl Store {
    /// Opens (or creates) the database in `dir`, with its blob store beside it in
    /// `<dir>.blobs` (tests and tools; a coordinator uses [`Store::open_with_blobs`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_blobs(dir, &dir.with_extension("blobs"))
    }

    /// Opens (or creates) the database in `dir` and the blob store in `blob_dir` (created on
    /// the first write). A new `dir` is made 0700: it will hold the cluster's keys (`fifty
    /// server` also sets a umask of 077, so sled's own files are 0600).
    pub fn open_with_blobs(dir: &Path, blob_dir: &Path) -> Result<Self, StoreError> {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(sled::Error::Io)?;
        }
        let db = sled::Config::new().path(dir).open()?;
        let tree = db.open_tree("fifty")?;
        Ok(Self {
            db,
            tree,
            dir: std::sync::Arc::new(dir.to_path_buf()),
            blobs: Arc::new(blobs::Blobs::new(blob_dir.to_path_buf())),
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact bytes this coordinator holds.
    pub fn blobs(&self) -> &blobs::Blobs {
        &self.blobs
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

    /// The counters (zero before the first CI decision).
    pub fn counters(&self) -> Result<Counters, StoreError> {
        Ok(self.get("counters")?.unwrap_or_default())
    }

    /// A commit by repository and sequence number.
    pub fn commit(&self, repo: &RepoName, seq: u64) -> Result<Option<CommitRecord>, StoreError> {
        self.get(&format!("commit/{repo}/{seq:016x}"))
    }

    /// A commit by repository and full SHA.
    pub fn commit_by_sha(&self, repo: &RepoName, sha: &str) -> Result<Option<CommitRecord>, StoreError> {
        match self.get::<u64>(&format!("sha/{repo}/{sha}"))? {
            Some(seq) => self.commit(repo, seq),
            None => Ok(None),
        }
    }

    /// Commits of `repo` whose SHA starts with `prefix`.
    pub fn commits_by_prefix(&self, repo: &RepoName, prefix: &str) -> Result<Vec<CommitRecord>, StoreError> {
        let seqs: Vec<u64> = self.scan(&format!("sha/{repo}/{prefix}"))?;
        let mut out = Vec::new();
        for seq in seqs {
            out.extend(self.commit(repo, seq)?);
        }
        Ok(out)
    }

    /// The newest `limit` commits of `repo`, newest first.
    pub fn recent_commits(&self, repo: &RepoName, limit: usize) -> Result<Vec<CommitRecord>, StoreError> {
        let prefix = format!("{STATE_PREFIX}commit/{repo}/");
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()).rev().take(limit) {
            let (key, bytes) = item?;
            out.push(
                codec::from_bytes(&bytes).map_err(|source| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// Every commit of every repository, by repository then sequence number.
    pub fn all_commits(&self) -> Result<Vec<CommitRecord>, StoreError> {
        self.scan("commit/")
    }

    /// Whether an attempt's output is kept.
    pub fn has_log(&self, job: u64, attempt: u32) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(format!("{STATE_PREFIX}log/{job:016x}/{attempt:08x}").as_bytes())?)
    }

    /// Whether an attempt's test results are kept.
    pub fn has_results(&self, job: u64, attempt: u32) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(format!("{STATE_PREFIX}results/{job:016x}/{attempt:08x}").as_bytes())?)
    }

    /// Every alert, oldest first.
    pub fn all_alerts(&self) -> Result<Vec<crate::alerts::AlertRecord>, StoreError> {
        self.scan("alert/")
    }

    /// What retention last removed, once it has run.
    pub fn retention(&self) -> Result<Option<crate::retention::RetentionRecord>, StoreError> {
        self.get("retention")
    }

    /// How big the state and the Raft log are: records and bytes (keys and values), and what
    /// sled takes on disk (state, log and sled's own overhead together).
    pub fn sizes(&self) -> Result<StoreSizes, StoreError> {
        let mut sizes = StoreSizes { disk_bytes: self.db.size_on_disk()?, ..StoreSizes::default() };
        for item in self.tree.iter() {
            let (key, value) = item?;
            let bytes = (key.len() + value.len()) as u64;
            if key.starts_with(STATE_PREFIX.as_bytes()) {
                sizes.state_records += 1;
                sizes.state_bytes += bytes;
            } else if key.starts_with(b"raft/log/") {
                sizes.log_entries += 1;
                sizes.log_bytes += bytes;
            }
        }
        Ok(sizes)
    }

    /// A job by id.
    pub fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        self.get(&format!("job/{id:016x}"))
    }

    /// Every job queued or running, oldest first.
    pub fn active_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let ids: Vec<u64> = self.scan("active/")?;
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.job(id)?);
        }
        Ok(out)
    }

    /// The output tail of one attempt.
    pub fn log(&self, job: u64, attempt: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&format!("log/{job:016x}/{attempt:08x}"))
    }

    /// The test results of one attempt (empty if it reported none).
    pub fn results(&self, job: u64, attempt: u32) -> Result<Vec<TestResult>, StoreError> {
        Ok(self.get(&format!("results/{job:016x}/{attempt:08x}"))?.unwrap_or_default())
    }

    /// Every recorded test duration of `repo`.
    pub fn durations(
        &self,
        repo: &RepoName,
    ) -> Result<std::collections::BTreeMap<String, std::time::Duration>, StoreError> {
        let pairs: Vec<(String, std::time::Duration)> = self.scan(&format!("duration/{repo}/"))?;
        Ok(pairs.into_iter().collect())
    }

    /// One chunk of an artifact as versions before the blob store kept it (read only to move
    /// it into the blob store).
    pub fn legacy_blob_chunk(&self, digest: &str, index: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&format!("blob/{digest}/{index:08x}"))
    }

    /// An artifact's size, once it is recorded as available.
    pub fn blob_size(&self, digest: &str) -> Result<Option<u64>, StoreError> {
        self.get(&format!("blobsize/{digest}"))
    }

    /// Every artifact recorded as available: its digest and size.
    pub fn recorded_blobs(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = format!("{STATE_PREFIX}blobsize/");
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let size = codec::from_bytes(&value).map_err(|source| StoreError::Corrupt { key: key.clone(), source })?;
            out.push((key[prefix.len()..].to_string(), size));
        }
        Ok(out)
    }

    /// A release by id.
    pub fn release(&self, id: u64) -> Result<Option<ReleaseRecord>, StoreError> {
        self.get(&format!("release/{id:016x}"))
    }

    /// Every release, oldest first.
    pub fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.scan("release/")
    }

    /// An incident by number.
    pub fn incident(&self, id: u64) -> Result<Option<crate::incidents::IncidentRecord>, StoreError> {
        self.get(&format!("incident/{id:016x}"))
    }

    /// Every incident, oldest first.
    pub fn incidents(&self) -> Result<Vec<crate::incidents::IncidentRecord>, StoreError> {
        self.scan("incident/")
    }

    /// A notification by id.
    pub fn notification(&self, id: u64) -> Result<Option<crate::notify::Notification>, StoreError> {
        Ok(self.get::<NotificationRow>(&format!("notification/{id:016x}"))?.map(unrow))
    }

    /// Every notification, oldest first.
    pub fn notifications(&self) -> Result<Vec<crate::notify::Notification>, StoreError> {
        Ok(self.scan::<NotificationRow>("notification/")?.into_iter().map(unrow).collect())
    }

    /// A webhook by id.
    pub fn webhook(&self, id: u64) -> Result<Option<crate::notify::Webhook>, StoreError> {
        self.get(&format!("webhook/{id:016x}"))
    }

    /// Every webhook.
    pub fn webhooks(&self) -> Result<Vec<crate::notify::Webhook>, StoreError> {
        self.scan("webhook/")
    }

    /// An alert rule by id.
    pub fn alert_rule(&self, id: u64) -> Result<Option<crate::alerts::Rule>, StoreError> {
        self.get(&format!("alertrule/{id:016x}"))
    }

    /// Every alert rule, by id.
    pub fn alert_rules(&self) -> Result<Vec<crate::alerts::Rule>, StoreError> {
        self.scan("alertrule/")
    }

    /// An alert by id.
    pub fn alert(&self, id: u64) -> Result<Option<crate::alerts::AlertRecord>, StoreError> {
        self.get(&format!("alert/{id:016x}"))
    }

    /// The alerts firing now, oldest first.
    pub fn firing_alerts(&self) -> Result<Vec<crate::alerts::AlertRecord>, StoreError> {
        let ids: Vec<u64> = self.scan("firing/")?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.alert(id)?);
        }
        Ok(out)
    }

    /// The newest `limit` alerts, newest first.
    pub fn recent_alerts(&self, limit: usize) -> Result<Vec<crate::alerts::AlertRecord>, StoreError> {
        let prefix = format!("{STATE_PREFIX}alert/");
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()).rev().take(limit) {
            let (key, value) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            out.push(codec::from_bytes(&value).map_err(|source| StoreError::Corrupt { key, source })?);
        }
        Ok(out)
    }

    /// A rollout by id.
    pub fn rollout(&self, id: u64) -> Result<Option<Rollout>, StoreError> {
        self.get(&format!("rollout/{id:016x}"))
    }

    /// The immune system's newest evidence for a rollout of `repo`.
    pub fn evidence(&self, repo: &RepoName) -> Result<Option<crate::immune::evidence::WaveEvidence>, StoreError> {
        self.get(&format!("evidence/{repo}"))
    }

    /// `repo`'s learned spreads of hosts' changes (empty before its first judged wave).
    pub fn spread(&self, repo: &RepoName) -> Result<crate::immune::spread::LearnedSpread, StoreError> {
        Ok(self.get(&format!("spread/{repo}"))?.unwrap_or_default())
    }

    /// Every rollout, oldest first.
    pub fn rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        self.scan("rollout/")
    }

    /// A repository's deploy target (empty if it never deployed).
    pub fn target(&self, repo: &RepoName) -> Result<TargetRecord, StoreError> {
        Ok(self.get(&format!("target/{repo}"))?.unwrap_or_default())
    }

    /// The release each host should run.
    pub fn host_targets(&self) -> Result<Vec<HostTarget>, StoreError> {
        self.scan("hosttarget/")
    }

    /// A repository's test history.
    pub fn tests(&self, repo: &RepoName) -> Result<TestBook, StoreError> {
        Ok(self.get(&format!("tests/{repo}"))?.unwrap_or_default())
    }

    /// When a webhook delivery was first seen.
    pub fn delivery(&self, id: &str) -> Result<Option<std::time::SystemTime>, StoreError> {
        self.get(&format!("delivery/{id}"))
    }

    /// An experiment by name.
    pub fn experiment(&self, name: &str) -> Result<Option<crate::experiments::ExperimentRecord>, StoreError> {
        self.get(&format!("exp/def/{name}"))
    }

    /// Every experiment, by name.
    pub fn experiments(&self) -> Result<Vec<crate::experiments::ExperimentRecord>, StoreError> {
        self.scan("exp/def/")
    }

    /// How many experiments there are.
    pub fn experiment_count(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for key in self.tree.scan_prefix(format!("{STATE_PREFIX}exp/def/").as_bytes()).keys() {
            key?;
            n += 1;
        }
        Ok(n)
    }

    /// The full keys of an experiment's unit records.
    pub fn experiment_unit_keys(&self, name: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        for key in self.tree.scan_prefix(format!("{STATE_PREFIX}exp/unit/{name}/").as_bytes()).keys() {
            keys.push(key?.to_vec());
        }
        Ok(keys)
    }

    /// An experiment's counts.
    pub fn experiment_stats(&self, name: &str) -> Result<Option<crate::experiments::StatsRecord>, StoreError> {
        self.get(&format!("exp/stats/{name}"))
    }

    /// An experiment's schedule of looks; None: it has none (or was created before state
    /// version 4).
    pub fn experiment_schedule(&self, name: &str) -> Result<Option<crate::experiments::Schedule>, StoreError> {
        self.get(&format!("exp/schedule/{name}"))
    }

    /// An experiment's looks taken and peaks of evidence; None: created before state version 4,
    /// it keeps none.
    pub fn experiment_running(&self, name: &str) -> Result<Option<crate::experiments::RunningRecord>, StoreError> {
        self.get(&format!("exp/running/{name}"))
    }

    /// What is known of one unit in one experiment.
    pub fn experiment_unit(&self, name: &str, unit: u64) -> Result<Option<crate::experiments::UnitRecord>, StoreError> {
        self.get(&format!("exp/unit/{name}/{unit:016x}"))
    }

    /// The last agent report applied for `host`.
    pub fn report_mark(&self, host: &HostName) -> Result<Option<crate::experiments::ReportMark>, StoreError> {
        self.get(&format!("exp/mark/{host}"))
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
        // The records are gone: their files follow. Idempotent (an entry applied again after a
        // restart removes nothing), and a failure only leaves a file the orphan sweep removes.
        for digest in batch.blob_deletions {
            if let Err(e) = self.blobs.remove(&digest) {
                tracing::warn!(error = %e, "could not delete a dropped artifact's blob file");
            }
        }
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

    /// Every record as stored, in key order: the simulation keeps such images of a node's disk
    /// to roll it back later, as a torn tail does (`consensus/sim.rs`).
    #[cfg(test)]
    pub(crate) fn raw_records(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.tree.iter().map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from)).collect()
    }

    /// SHA-256 (hex) of the state machine's records: every `sm/` key and value in key order,
    /// except legacy artifact chunks, which are not replicated (not in snapshots). Coordinators
    /// that applied the same entries have the same digest; the Raft loop takes it at
    /// checkpoints (etcd's `hashkv`).
    pub fn state_digest(&self) -> Result<String, StoreError> {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        for item in self.tree.scan_prefix(STATE_PREFIX.as_bytes()) {
            let (key, value) = item?;
            if key.starts_with(LEGACY_BLOB_PREFIX.as_bytes()) {
                continue;
            }
            hash.update((key.len() as u64).to_be_bytes());
            hash.update(&key);
            hash.update((value.len() as u64).to_be_bytes());
            hash.update(&value);
        }
        Ok(hex::encode(hash.finalize()))
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree.get(key)?)
    }
}

/// The first 100 bytes of a key, for messages.
fn truncated(key: &str) -> String {
    let mut end = key.len().min(100);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &key[..end])
}

/// A notification as stored: the record with the fields its JSON form leaves out.
type NotificationRow = (crate::notify::Notification, Option<std::time::SystemTime>, Vec<(u64, bool)>);

fn unrow((mut n, at, to): NotificationRow) -> crate::notify::Notification {
    n.at = at;
    n.to = to;
    n
}
