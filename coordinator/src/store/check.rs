//! `fifty store check`: an offline consistency check of a coordinator's data dir, for after a
//! crash (and for the storage torture script, which runs it after every kill -9). It opens sled
//! (which fails if the database is damaged or still open) and checks what Raft and the state
//! machine rely on:
//!
//! - every log entry decodes, sits under its own index, indexes are contiguous from the
//!   compaction point, and terms never go down;
//! - the hard state's commit is within the log, and the applied index is not past the commit;
//! - every state record decodes, and hosts and their serial index agree both ways.

use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::Entry;
use serde::Serialize;

use super::raft_log::RaftLog;
use super::{Store, StoreError};

/// What the check found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// First log index held (after the compaction point).
    pub first_index: u64,
    /// Last log index held.
    pub last_index: u64,
    /// Entries in the log.
    pub entries: u64,
    /// Hard state: term.
    pub term: u64,
    /// Hard state: commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Voters in the conf state.
    pub voters: usize,
    /// Records: hosts, tokens, revocations, members.
    pub hosts: usize,
    /// Tokens.
    pub tokens: usize,
    /// Revocations.
    pub revocations: usize,
    /// Members.
    pub members: usize,
    /// Every inconsistency found; empty when the store is sound.
    pub problems: Vec<String>,
}

/// Checks the store in `dir` (a coordinator's `<data_dir>/state`).
pub fn check(dir: &Path) -> Result<Report, StoreError> {
    if !dir.exists() {
        return Err(StoreError::Sled(sled::Error::Unsupported(format!("{} does not exist", dir.display()))));
    }
    let store = Store::open(dir)?;
    let log = RaftLog::new(store.clone());
    let mut problems = Vec::new();

    let hs = log.hard_state()?;
    let cs = log.conf_state()?;
    let applied = log.applied()?;
    let (mut first, mut last, mut entries, mut last_term) = (None, 0u64, 0u64, 0u64);
    for item in store.tree.scan_prefix(b"raft/log/") {
        let (key, bytes) = item?;
        let index = u64::from_be_bytes(key[b"raft/log/".len()..].try_into().unwrap_or([0; 8]));
        match Entry::parse_from_bytes(&bytes) {
            Ok(e) => {
                if e.index != index {
                    problems.push(format!("log key {index} holds entry {}", e.index));
                }
                if e.term < last_term {
                    problems.push(format!("term goes down at index {index}: {} after {last_term}", e.term));
                }
                last_term = e.term;
            }
            Err(e) => problems.push(format!("log entry {index} does not decode: {e}")),
        }
        if first.is_some() && index != last + 1 {
            problems.push(format!("log gap: {last} then {index}"));
        }
        first.get_or_insert(index);
        last = index;
        entries += 1;
    }
    let compacted = raft::Storage::first_index(&log).map(|f| f - 1).unwrap_or(0);
    let first_index = first.unwrap_or(compacted + 1);
    if first.is_some() && first_index != compacted + 1 {
        problems.push(format!("log starts at {first_index} but was compacted at {compacted}"));
    }
    let last_index = if entries == 0 { compacted } else { last };
    if hs.commit > last_index {
        problems.push(format!("commit {} is past the last log index {last_index}", hs.commit));
    }
    if applied > hs.commit.max(compacted) {
        problems.push(format!("applied {applied} is past commit {}", hs.commit));
    }

    let hosts = store.hosts()?;
    for h in &hosts {
        match store.host_by_serial(&h.serial)? {
            Some(name) if name == h.name => {}
            other => {
                problems.push(format!("host {} has serial {} but the serial index says {other:?}", h.name, h.serial))
            }
        }
    }
    let tokens = store.tokens()?;
    let revocations = store.revocations()?;
    let members = store.members()?;
    store.cluster()?;

    Ok(Report {
        first_index,
        last_index,
        entries,
        term: hs.term,
        commit: hs.commit,
        applied,
        voters: cs.voters.len(),
        hosts: hosts.len(),
        tokens: tokens.len(),
        revocations: revocations.len(),
        members: members.len(),
        problems,
    })
}
