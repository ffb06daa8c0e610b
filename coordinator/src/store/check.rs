//! `fifty store check`: an offline consistency check of a coordinator's data dir, for after a
//! crash or a disk fault (and for the storage torture script, which runs it after every kill -9).
//! It opens sled (which fails if the database is badly damaged or still open) and checks what
//! Raft and the state machine rely on:
//!
//! - the Raft log and its metadata ([`RaftLog::inspect`]): every record's checksum holds and it
//!   decodes; the log is contiguous from its compaction point with terms never going down; the
//!   commit is within the log and the applied index within the commit; and nothing the flushed
//!   mark says was flushed (log entries, term, vote) is missing: sled does not notice a torn or
//!   truncated tail itself;
//! - every state record under `sm/` is of a kind the store writes ([`KINDS`]) and decodes as
//!   that kind; hosts and their serial index agree both ways.

use std::collections::BTreeMap;
use std::path::Path;

use bincode::Decode;
use fifty_shared::codec::{self, CodecError};
use serde::Serialize;

use super::raft_log::{LogInspection, RaftLog};
use super::{Store, StoreError, STATE_PREFIX};
use crate::state::HostRecord;

/// Problems listed at most from the state records (the rest are counted).
const MAX_LISTED: usize = 40;

/// What the check found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The Raft log, hard state and flushed mark.
    pub log: LogInspection,
    /// State records by kind (the prefix after `sm/`), for the kinds present.
    pub records: BTreeMap<&'static str, usize>,
    /// Every inconsistency found, naming the record; empty when the store is sound.
    pub problems: Vec<String>,
}

type Check = fn(&[u8]) -> Result<(), CodecError>;

fn decodes<T: Decode<()>>(bytes: &[u8]) -> Result<(), CodecError> {
    codec::from_bytes::<T>(bytes).map(|_: T| ())
}

/// Every kind of state record the store writes ([`super::Batch`]): its key after `sm/` (a whole
/// key, or a prefix ending in `/`), what it holds, and the type it must decode as. A record
/// under no entry here is reported, and a test keeps this table in step with the store.
pub const KINDS: &[(&str, &str, Check)] = &[
    ("cluster", "the cluster record", decodes::<crate::state::ClusterRecord>),
    ("retention", "what retention last removed", decodes::<crate::retention::RetentionRecord>),
    ("counters", "the counters", decodes::<crate::state::Counters>),
    ("token/", "a token", decodes::<crate::state::TokenRecord>),
    ("host/", "a host", decodes::<HostRecord>),
    ("serial/", "a certificate serial's host", decodes::<fifty_shared::ids::HostName>),
    ("revoked/", "a revocation", decodes::<crate::state::Revocation>),
    ("member/", "a coordinator", decodes::<crate::state::MemberRecord>),
    ("repo/", "a repository", decodes::<crate::state::RepoRecord>),
    ("gate/", "a gate", decodes::<crate::state::GateRecord>),
    ("commit/", "a commit", decodes::<crate::ci::CommitRecord>),
    ("sha/", "a commit's sequence number", decodes::<u64>),
    ("job/", "a job", decodes::<crate::ci::JobRecord>),
    ("active/", "an unfinished job's id", decodes::<u64>),
    ("log/", "a job attempt's output", decodes::<Vec<u8>>),
    ("results/", "a job attempt's test results", decodes::<Vec<crate::ci::TestResult>>),
    ("tests/", "a repository's test history", decodes::<crate::ci::TestBook>),
    ("duration/", "a test's duration", decodes::<(String, std::time::Duration)>),
    ("delivery/", "a webhook delivery seen", decodes::<std::time::SystemTime>),
    ("blob/", "an artifact chunk", decodes::<Vec<u8>>),
    ("blobsize/", "an artifact's size", decodes::<u64>),
    ("release/", "a release", decodes::<crate::deploy::ReleaseRecord>),
    ("rollout/", "a rollout", decodes::<crate::deploy::Rollout>),
    ("target/", "a deploy target", decodes::<crate::deploy::TargetRecord>),
    ("hosttarget/", "a host's target release", decodes::<crate::deploy::HostTarget>),
    ("evidence/", "the immune system's evidence of a wave", decodes::<crate::immune::evidence::WaveEvidence>),
    ("spread/", "the spreads of hosts' changes learned", decodes::<crate::immune::spread::LearnedSpread>),
    ("incident/", "an incident", decodes::<crate::incidents::IncidentRecord>),
    (
        "notification/",
        "a notification",
        decodes::<(crate::notify::Notification, Option<std::time::SystemTime>, Vec<(u64, bool)>)>,
    ),
    ("webhook/", "a webhook", decodes::<crate::notify::Webhook>),
    ("alertrule/", "an alert rule", decodes::<crate::alerts::Rule>),
    ("alert/", "an alert", decodes::<crate::alerts::AlertRecord>),
    ("firing/", "a firing alert's id", decodes::<u64>),
    ("exp/def/", "an experiment", decodes::<crate::experiments::ExperimentRecord>),
    ("exp/stats/", "an experiment's counts", decodes::<crate::experiments::StatsRecord>),
    ("exp/schedule/", "an experiment's schedule", decodes::<crate::experiments::Schedule>),
    ("exp/running/", "an experiment's looks and peaks", decodes::<crate::experiments::RunningRecord>),
    ("exp/unit/", "an experiment unit", decodes::<crate::experiments::UnitRecord>),
    ("exp/mark/", "a host's last applied report", decodes::<crate::experiments::ReportMark>),
];

/// The entry of [`KINDS`] a state key (after `sm/`) belongs to.
fn kind_of(key: &str) -> Option<&'static (&'static str, &'static str, Check)> {
    KINDS.iter().find(|(kind, _, _)| if kind.ends_with('/') { key.starts_with(kind) } else { key == *kind })
}

/// Checks the store in `dir` (a coordinator's `<data_dir>/state`).
pub fn check(dir: &Path) -> Result<Report, StoreError> {
    if !dir.exists() {
        return Err(StoreError::Sled(sled::Error::Unsupported(format!("{} does not exist", dir.display()))));
    }
    let store = Store::open(dir)?;
    let log = RaftLog::new(store.clone()).inspect()?;
    let mut problems = log.problems.clone();
    let (records, hosts, state_problems) = check_state(&store)?;
    let listed = state_problems.len().min(MAX_LISTED);
    problems.extend(state_problems.iter().take(listed).cloned());
    if state_problems.len() > listed {
        problems.push(format!("... and {} more problems in state records", state_problems.len() - listed));
    }
    for h in &hosts {
        match store.host_by_serial(&h.serial) {
            Ok(Some(name)) if name == h.name => {}
            Ok(other) => problems.push(format!(
                "sm/host/{}: has serial {} but the serial index sm/serial/{} says {other:?}",
                h.name, h.serial, h.serial
            )),
            // Already reported as a record that does not decode.
            Err(_) => {}
        }
    }
    Ok(Report { log, records, problems })
}

/// Decodes every record under `sm/`: counts by kind, the hosts (for the serial index check), and
/// the problems found.
#[allow(clippy::type_complexity)]
fn check_state(store: &Store) -> Result<(BTreeMap<&'static str, usize>, Vec<HostRecord>, Vec<String>), StoreError> {
    let (mut records, mut hosts, mut problems) = (BTreeMap::new(), Vec::new(), Vec::new());
    for item in store.tree.scan_prefix(STATE_PREFIX.as_bytes()) {
        let (key, value) = item?;
        let name = String::from_utf8_lossy(&key).into_owned();
        let Some((kind, what, decodes)) = kind_of(&name[STATE_PREFIX.len()..]) else {
            problems.push(format!("{name}: not a kind of record Fifty writes"));
            continue;
        };
        *records.entry(*kind).or_insert(0) += 1;
        if let Err(e) = decodes(&value) {
            problems.push(format!("{name}: does not decode as {what}: {e}"));
        } else if *kind == "host/" {
            hosts.extend(codec::from_bytes::<HostRecord>(&value).ok());
        }
    }
    Ok((records, hosts, problems))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::raft_log::OpenError;
    use crate::store::Batch;
    use raft::eraftpb::{ConfState, Entry, HardState};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("fifty-check-{name}-{}-{}", std::process::id(), rand::random::<u32>()))
    }

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8; 100].into();
        e
    }

    /// What the Raft loop does for each acknowledged entry: append it with the hard state, apply
    /// a state record and the applied index, flush, record the flushed mark.
    fn acknowledge(log: &RaftLog, index: u64, term: u64) {
        let mut batch = Batch::default();
        log.append(&mut batch, &[entry(index, term)]).unwrap();
        let mut hs = HardState::default();
        hs.term = term;
        hs.vote = 7;
        hs.commit = index;
        RaftLog::set_hard_state(&mut batch, &hs);
        log.store().apply(batch).unwrap();
        log.flush_and_mark().unwrap();
        log.sync_mark().unwrap();
        let mut batch = Batch::default();
        batch.put_counters(&crate::state::Counters { next_commit_seq: index, ..Default::default() });
        RaftLog::set_applied(&mut batch, index);
        log.store().apply(batch).unwrap();
    }

    /// A store as genesis leaves it (member 7, compacted at 1), then `n` acknowledged entries.
    fn store_with(dir: &Path, n: u64) -> RaftLog {
        let log = RaftLog::new(Store::open(dir).unwrap());
        let mut batch = Batch::default();
        let mut cs = ConfState::default();
        cs.voters = vec![7];
        RaftLog::set_conf_state(&mut batch, &cs);
        RaftLog::set_compacted(&mut batch, 1, 1);
        RaftLog::set_applied(&mut batch, 1);
        batch.put_member(&crate::state::MemberRecord { id: 7, quic_addr: "127.0.0.1:1".into(), http_addr: "h".into() });
        log.store().apply(batch).unwrap();
        log.node_id().unwrap();
        for index in 2..n + 2 {
            acknowledge(&log, index, 2);
        }
        log.store().flush_blocking().unwrap();
        log
    }

    #[test]
    fn a_clean_store_passes() {
        let dir = temp_dir("clean");
        drop(store_with(&dir, 20));
        let report = check(&dir).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.log.first_index, report.log.last_index, report.log.entries), (2, 21, 20));
        assert_eq!((report.log.commit, report.log.applied), (21, 21));
        assert_eq!(report.log.mark.map(|m| (m.index, m.term, m.hs_term, m.hs_vote)), Some((21, 2, 2, 7)));
        assert_eq!(report.records.get("member/"), Some(&1));
        assert_eq!(report.records.get("counters"), Some(&1));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_flipped_byte_in_an_entry_is_reported_with_its_index() {
        let dir = temp_dir("flip");
        let log = store_with(&dir, 10);
        let key = super::super::raft_log::log_key(5);
        let mut stored = log.store().tree.get(&key).unwrap().unwrap().to_vec();
        let at = stored.len() - 10;
        stored[at] ^= 0x01;
        log.store().tree.insert(&key, stored).unwrap();
        log.store().flush_blocking().unwrap();
        drop(log);

        let report = check(&dir).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(
            report.problems[0].contains("raft/log/5") && report.problems[0].contains("checksum"),
            "{:?}",
            report.problems
        );
        let refused = RaftLog::new(Store::open(&dir).unwrap()).verify();
        assert!(matches!(refused, Err(OpenError::Damaged(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Issue 14 item 9: `state/db` cut by 4 KiB opened as an older, self-consistent database
    /// that had forgotten acknowledged entries, and the check said "consistent".
    #[test]
    fn a_db_file_truncated_by_4_kib_is_reported_and_refused() {
        let dir = temp_dir("torn");
        drop(store_with(&dir, 200));
        let db = dir.join("db");
        let len = std::fs::metadata(&db).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(len - 4096).unwrap();

        let report = check(&dir).unwrap();
        assert!(!report.problems.is_empty(), "the truncation went unnoticed: {report:?}");
        let (from, to) = report.log.lost.expect("lost entries are named");
        assert!(from <= to && to == 201, "lost {from}..={to}");
        assert!(report.problems.iter().any(|p| p.contains(&format!("entries {from}..=201"))), "{:?}", report.problems);

        let refused = RaftLog::new(Store::open(&dir).unwrap()).verify();
        let Err(OpenError::Damaged(damage)) = refused else { panic!("a truncated log was accepted: {refused:?}") };
        let message = damage.to_string();
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(message.contains(&format!("entries {from}..=201")), "{message}");
        assert!(message.contains("--join") && message.contains("fifty cluster remove"), "{message}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_record_that_does_not_decode_and_an_unknown_kind_are_reported_by_key() {
        let dir = temp_dir("undecodable");
        let log = store_with(&dir, 3);
        log.store().tree.insert(b"sm/repo/shop", vec![0xff; 3]).unwrap();
        log.store().tree.insert(b"sm/bogus/1", vec![0]).unwrap();
        log.store().flush_blocking().unwrap();
        drop(log);

        let report = check(&dir).unwrap();
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(report.problems.contains(&"sm/bogus/1: not a kind of record Fifty writes".to_string()));
        assert!(
            report.problems.iter().any(|p| p.starts_with("sm/repo/shop: does not decode as a repository")),
            "{:?}",
            report.problems
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Every key the store's `Batch` writes (read from its source) has an entry in [`KINDS`],
    /// and every entry there is still written: a new kind of record cannot be added unchecked.
    #[test]
    fn every_kind_of_record_the_store_writes_is_checked() {
        let source = include_str!("mod.rs");
        let batch = &source[source.find("impl Batch {").unwrap()..source.find("impl Store {").unwrap()];
        let mut written = std::collections::BTreeSet::new();
        for line in batch.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for literal in line.split('"').skip(1).step_by(2) {
                let key = literal.trim_start_matches("{STATE_PREFIX}");
                let kind = key.split('{').next().unwrap_or_default();
                if !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c == '/') {
                    written.insert(kind.to_string());
                }
            }
        }
        assert!(written.len() >= 30, "the key literals were not found in store/mod.rs: {written:?}");
        for kind in &written {
            assert!(kind_of(kind).is_some(), "the store writes sm/{kind}... but check.rs has no KINDS entry for it");
        }
        for (kind, _, _) in KINDS {
            assert!(written.contains(*kind), "KINDS lists {kind}, which store/mod.rs no longer writes");
        }
    }
}
