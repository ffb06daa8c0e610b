//! Reading the whole Raft part of a store back and saying what is wrong with it: seals, the log's
//! shape, the hard state, and the flushed mark. [`RaftLog::verify`] runs it when a coordinator
//! starts and refuses a damaged log; `fifty store check` prints it.

use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use serde::Serialize;

use super::{
    decode_u64, is_sealed, key_name, mark, open_seal, put_sealed, unseal, Mark, RaftLog, APPLIED, CONF_STATE,
    HARD_STATE, LOG, NODE_ID, RAFT_PREFIX, SNAPSHOT_META,
};
use crate::store::{Batch, StoreError};

/// Problems listed at most (the rest are counted), so a log damaged throughout stays readable.
const MAX_LISTED: usize = 40;

/// The Raft part of a store as found on disk.
#[derive(Debug, Default, Serialize)]
pub struct LogInspection {
    /// First log index held (after the compaction point).
    pub first_index: u64,
    /// Last log index held.
    pub last_index: u64,
    /// Entries in the log.
    pub entries: u64,
    /// The index the log was compacted at.
    pub compacted: u64,
    /// Hard state: term.
    pub term: u64,
    /// Hard state: vote.
    pub vote: u64,
    /// Hard state: commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Voters in the conf state.
    pub voters: usize,
    /// What the flushed mark says was last flushed (none on a new node or an old store).
    pub mark: Option<Mark>,
    /// The store predates checksums (no record sealed, no mark): it is sealed at the next start.
    pub unsealed: bool,
    /// Log entries, first and last, that were acknowledged but are gone.
    pub lost: Option<(u64, u64)>,
    /// Every problem found, with the record (key or index) it concerns; empty when sound.
    pub problems: Vec<String>,
}

/// A Raft log that lost or changed what this coordinator acknowledged.
#[derive(Debug)]
pub struct Damage {
    /// sled's directory (`<data_dir>/state`).
    pub state_dir: PathBuf,
    /// This node's Raft id, if it can still be read.
    pub node_id: Option<u64>,
    /// What was found.
    pub inspection: LogInspection,
}

impl Damage {
    /// The data dir to wipe: the state dir's parent when it is the usual `<data_dir>/state`.
    fn data_dir(&self) -> &Path {
        match self.state_dir.parent() {
            Some(parent) if self.state_dir.file_name().is_some_and(|n| n == "state") => parent,
            _ => &self.state_dir,
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "the Raft log in {} lost or changed records this coordinator had already acknowledged \
             (a damaged disk); a voter that forgets what it acknowledged can make the cluster lose \
             committed writes, so this coordinator will not start:",
            self.state_dir.display()
        )?;
        for p in &self.inspection.problems {
            writeln!(f, "  - {p}")?;
        }
        let remove = match self.node_id {
            Some(id) => format!("`fifty cluster remove {id:016x}`"),
            None => "`fifty cluster remove ID` (this coordinator's id, from `fifty cluster members`)".to_string(),
        };
        write!(
            f,
            "Recovery: keep it stopped; on a healthy coordinator run {remove}; then delete this \
             coordinator's data dir ({}) and start it with `--join` so that it comes back as a new \
             member and catches up from the others (README: \"A damaged disk\"). A cluster of one has \
             no other copy: restore its data dir from a backup. `fifty store check --data-dir {}` \
             shows what is wrong.",
            self.data_dir().display(),
            self.data_dir().display()
        )
    }
}

impl std::error::Error for Damage {}

/// Why a store's Raft log was not handed to Raft.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Reading or upgrading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log lost or changed acknowledged records.
    #[error(transparent)]
    Damaged(Box<Damage>),
}

/// A record's payload as found (`legacy`: stored bare, from before seals), or the problem.
fn payload<'a>(key: &[u8], stored: &'a [u8], legacy: bool) -> Result<&'a [u8], String> {
    if legacy {
        return Ok(stored);
    }
    open_seal(key, stored).map_err(|detail| format!("{}: {detail}", key_name(key)))
}

fn proto<M: protobuf::Message>(key: &[u8], bytes: &[u8]) -> Result<M, String> {
    M::parse_from_bytes(bytes).map_err(|e| format!("{}: does not decode: {e}", key_name(key)))
}

/// Problems, capped at [`MAX_LISTED`].
#[derive(Default)]
struct Problems {
    listed: Vec<String>,
    more: usize,
}

impl Problems {
    fn push(&mut self, p: String) {
        if self.listed.len() < MAX_LISTED {
            self.listed.push(p);
        } else {
            self.more += 1;
        }
    }

    fn into_vec(mut self) -> Vec<String> {
        if self.more > 0 {
            self.listed.push(format!("... and {} more problems", self.more));
        }
        self.listed
    }
}

impl RaftLog {
    /// The payload of a record as found: `None` if absent or damaged (a damaged one is added to
    /// `problems`). `legacy`: the store predates seals, payloads are stored bare.
    fn inspect_record(&self, key: &[u8], legacy: bool, problems: &mut Problems) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(stored) = self.store.raw_get(key)? else { return Ok(None) };
        match payload(key, &stored, legacy) {
            Ok(payload) => Ok(Some(payload.to_vec())),
            Err(problem) => {
                problems.push(problem);
                Ok(None)
            }
        }
    }

    fn inspect_proto<M: protobuf::Message>(
        &self,
        key: &[u8],
        legacy: bool,
        problems: &mut Problems,
    ) -> Result<Option<M>, StoreError> {
        Ok(self.inspect_record(key, legacy, problems)?.and_then(|b| match proto::<M>(key, &b) {
            Ok(m) => Some(m),
            Err(problem) => {
                problems.push(problem);
                None
            }
        }))
    }

    fn inspect_u64(&self, key: &[u8], legacy: bool, problems: &mut Problems) -> Result<Option<u64>, StoreError> {
        Ok(self.inspect_record(key, legacy, problems)?.and_then(|b| match decode_u64(&b, key) {
            Ok(v) => Some(v),
            Err(_) => {
                problems.push(format!("{}: {} bytes where a number was expected", key_name(key), b.len()));
                None
            }
        }))
    }

    /// Reads every Raft record and the flushed mark and reports what is wrong: a record whose
    /// seal does not hold or that does not decode; a log that is not contiguous from its
    /// compaction point, whose terms go down, or whose entries sit under another index; a commit
    /// past the log's end; an applied index outside the log; and a log or hard state behind the
    /// flushed mark (acknowledged records lost). Only sled failing is an `Err`.
    pub fn inspect(&self) -> Result<LogInspection, StoreError> {
        let mut problems = Problems::default();

        // A store written before seals holds no sealed record and no mark; anything else with
        // an unsealed record is damage.
        let (mut sealed, mut bare) = (0u64, 0u64);
        for stored in self.store.tree.scan_prefix(RAFT_PREFIX).values() {
            if is_sealed(&stored?) {
                sealed += 1;
            } else {
                bare += 1;
            }
        }
        let mark = match mark::read(&mark::path_in(self.store.dir())) {
            Ok(m) => m.map(|(_, m)| m),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        // Unsealed records are reported where they are read, below.
        let legacy = bare > 0 && sealed == 0 && mark.is_none();

        let hs_found = self.inspect_proto::<HardState>(HARD_STATE, legacy, &mut problems)?;
        let hs_present = self.store.raw_get(HARD_STATE)?.is_some();
        let hs = hs_found.unwrap_or_default();
        let cs: ConfState = self.inspect_proto(CONF_STATE, legacy, &mut problems)?.unwrap_or_default();
        let meta: SnapshotMetadata = self.inspect_proto(SNAPSHOT_META, legacy, &mut problems)?.unwrap_or_default();
        let applied = self.inspect_u64(APPLIED, legacy, &mut problems)?.unwrap_or(0);
        self.inspect_u64(NODE_ID, legacy, &mut problems)?;
        for key in self.store.tree.scan_prefix(RAFT_PREFIX).keys() {
            let key = key?;
            let known = [HARD_STATE, CONF_STATE, SNAPSHOT_META, APPLIED, NODE_ID].contains(&key.as_ref())
                || (key.starts_with(LOG) && key.len() == LOG.len() + 8);
            if !known {
                problems.push(format!("{}: not a record Fifty writes", key_name(&key)));
            }
        }

        // The log, entry by entry. An entry with a broken seal is still counted where it sits.
        let compacted = meta.index;
        let (mut first, mut last, mut entries, mut last_term) = (None, 0u64, 0u64, meta.term);
        let mut terms = std::collections::BTreeMap::new();
        for item in self.store.tree.scan_prefix(LOG) {
            let (key, stored) = item?;
            if key.len() != LOG.len() + 8 {
                continue;
            }
            let index = super::index_of(&key);
            match payload(&key, &stored, legacy).and_then(|b| proto::<Entry>(&key, b)) {
                Ok(e) => {
                    if e.index != index {
                        problems.push(format!("raft/log/{index}: holds entry {}", e.index));
                    }
                    if e.term < last_term {
                        problems.push(format!("raft/log/{index}: term goes down, {} after {last_term}", e.term));
                    }
                    last_term = e.term;
                    terms.insert(index, e.term);
                }
                Err(problem) => problems.push(problem),
            }
            if first.is_some() && index != last + 1 {
                problems.push(format!("log gap: entries {}..={} are missing", last + 1, index - 1));
            }
            first.get_or_insert(index);
            last = index;
            entries += 1;
        }
        let first_index = first.unwrap_or(compacted + 1);
        if first.is_some() && first_index != compacted + 1 {
            problems.push(format!(
                "log starts at {first_index} but was compacted at {compacted}: entries {}..={} are missing",
                compacted + 1,
                first_index - 1
            ));
        }
        let last_index = if entries == 0 { compacted } else { last };

        let in_cluster = !cs.voters.is_empty() || !cs.learners.is_empty();
        if in_cluster && !hs_present {
            problems
                .push("raft/hard_state is missing, yet this node is in a cluster (its term and vote are lost)".into());
        }
        let mut lost = None;
        if hs.commit > last_index {
            problems.push(format!(
                "commit {} is past the end of the log at {last_index}: committed entries {}..={} are gone",
                hs.commit,
                last_index + 1,
                hs.commit
            ));
            lost = Some((last_index + 1, hs.commit));
        }
        if applied > hs.commit.max(compacted) {
            problems.push(format!("applied {applied} is past commit {}", hs.commit));
        }
        if applied < compacted {
            problems.push(format!(
                "applied {applied} is behind the compaction point {compacted}: the state lost writes the log no longer holds"
            ));
        }

        if let Some(m) = mark {
            if m.index > last_index {
                problems.push(format!(
                    "entries {}..={} were flushed (raft-mark) but are gone: the log ends at {last_index}",
                    last_index + 1,
                    m.index
                ));
                let (from, to) = lost.unwrap_or((last_index + 1, m.index));
                lost = Some((from.min(last_index + 1), to.max(m.index)));
            } else if let Some(term) = terms.get(&m.index).filter(|t| **t != m.term) {
                problems.push(format!(
                    "raft/log/{}: term {term}, but an entry of term {} was flushed there (raft-mark)",
                    m.index, m.term
                ));
            }
            if hs.term < m.hs_term {
                problems.push(format!(
                    "raft/hard_state: term {} but term {} was flushed (raft-mark): the hard state went back",
                    hs.term, m.hs_term
                ));
            } else if hs.term == m.hs_term && m.hs_vote != 0 && hs.vote != m.hs_vote {
                problems.push(format!(
                    "raft/hard_state: vote {:016x} in term {}, but vote {:016x} was flushed (raft-mark)",
                    hs.vote, hs.term, m.hs_vote
                ));
            }
        }

        Ok(LogInspection {
            first_index,
            last_index,
            entries,
            compacted,
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
            applied,
            voters: cs.voters.len(),
            mark,
            unsealed: legacy,
            lost,
            problems: problems.into_vec(),
        })
    }

    /// Checks the log before it is handed to raft-rs (which panics on some storage errors, and
    /// would vote with a log that forgot what it acknowledged): a store written before
    /// checksums is sealed now, in one atomic batch; a damaged one is refused with what was lost
    /// and how to recover.
    pub fn verify(&self) -> Result<LogInspection, OpenError> {
        let mut found = self.inspect()?;
        if found.unsealed && found.problems.is_empty() {
            self.seal_all()?;
            tracing::info!(dir = %self.store.dir().display(), "Raft log records sealed with checksums (a store from before them)");
            found = self.inspect()?;
        }
        if !found.problems.is_empty() {
            let node_id = self.node_id_if_readable();
            return Err(OpenError::Damaged(Box::new(Damage {
                state_dir: self.store.dir().to_path_buf(),
                node_id,
                inspection: found,
            })));
        }
        Ok(found)
    }

    fn node_id_if_readable(&self) -> Option<u64> {
        let stored = self.store.raw_get(NODE_ID).ok()??;
        let payload = unseal(NODE_ID, &stored).ok()?;
        decode_u64(payload, NODE_ID).ok()
    }

    /// Rewrites every bare Raft record sealed, in one batch, and flushes it.
    fn seal_all(&self) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        for item in self.store.tree.scan_prefix(RAFT_PREFIX) {
            let (key, stored) = item?;
            put_sealed(&mut batch, &key, &stored);
        }
        self.store.apply(batch)?;
        self.flush_and_mark()?;
        self.sync_mark()
    }
}
