//! CI: every commit of a watched branch is tested, sharded across build agents.
//!
//! A commit's life, every step a replicated decision (`state::Command`):
//! 1. **notified** (`NotifyCommits`, from `fifty commit notify` or a webhook): a commit record in
//!    state *planning* and a queued *plan* job;
//! 2. the leader's dispatcher (`dispatch`) gives queued jobs to build agents with free slots
//!    (`AssignJobs`), pure choice in `scheduler`, and sends each agent its job over QUIC;
//! 3. the plan job reads `fifty.toml` and lists the tests; its result (`FinishJob`) either fails
//!    the commit with the file's error or queues one job per shard, the tests split by their past
//!    durations (`shard`);
//! 4. each shard's result (`FinishJob`, its JUnit parsed by `junit`) passes the shard, fails it,
//!    or queues a retry on another agent (`[test] retries`); a job whose agent is lost is queued
//!    again (`RequeueJob`), without using up a retry;
//! 5. when every shard is done the commit passes or fails, flaky tests are noted, and the
//!    branch's gate follows the newest finished commit.
//!
//! The records below are what the state machine keeps; `apply` is how it applies the commands above,
//! and `outcome` holds the pure rules it applies.

pub mod apply;
pub mod dispatch;
pub mod junit;
pub mod live;
pub mod ops;
pub mod outcome;
pub mod scheduler;
pub mod shard;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bincode::{Decode, Encode};
use fifty_shared::ids::{HostName, RepoName};
use fifty_shared::wire::{JobExit, JobKind};
use serde::{Deserialize, Serialize};

/// Where a commit is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    /// Waiting for, or running, its plan job.
    Planning,
    /// Its shards are queued or running.
    Testing,
    /// Every shard passed.
    Passed,
    /// A shard failed, or the commit could not be tested (its `error` says why).
    Failed,
}

impl CommitState {
    /// Whether the commit is done.
    pub fn finished(self) -> bool {
        matches!(self, CommitState::Passed | CommitState::Failed)
    }
}

/// What `[test]` of the commit's `fifty.toml` said, as the shards need it.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct TestPlan {
    /// The command.
    pub command: String,
    /// Per-shard timeout.
    pub timeout: Duration,
    /// JUnit glob.
    pub junit: Option<String>,
    /// Retries per shard.
    pub retries: u32,
    /// `[package]`, when the commit deploys.
    pub package: Option<PackagePlan>,
    /// `[deploy]`.
    pub deploy: Option<crate::deploy::DeployPlan>,
    /// What `[deploy]` says the hosts run, for the release manifest.
    pub service: Option<fifty_shared::wire::ServiceOrder>,
}

/// What `[package]` said.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PackagePlan {
    /// The command.
    pub command: String,
    /// The artifact's path.
    pub artifact: String,
    /// Its timeout.
    pub timeout: Duration,
}

/// One commit under test.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct CommitRecord {
    /// Order of notification, across the cluster: the gate follows the highest finished one.
    pub seq: u64,
    /// The repository.
    pub repo: RepoName,
    /// The branch it was pushed to.
    pub branch: String,
    /// Full SHA.
    pub sha: String,
    /// Subject line (from the notification, else from the plan job).
    pub subject: String,
    /// Author.
    pub author: String,
    /// When Fifty heard of it.
    pub notified_at: SystemTime,
    /// When it passed or failed.
    pub finished_at: Option<SystemTime>,
    /// Where it is.
    pub state: CommitState,
    /// Why it failed other than by a test: a bad `fifty.toml`, a plan that could not run.
    pub error: Option<String>,
    /// From `fifty.toml`, once planned.
    pub plan: Option<TestPlan>,
    /// Its jobs: the plan, then one per shard in shard order.
    pub jobs: Vec<u64>,
    /// Tests that failed and then passed on this commit.
    pub flaky: Vec<String>,
    /// The release built from it.
    pub release: Option<u64>,
    /// Why no release could be built, if packaging failed.
    pub release_error: Option<String>,
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a build agent.
    Queued,
    /// Given to the agent of its last attempt.
    Running,
    /// Done, passed.
    Passed,
    /// Done, failed (after its retries).
    Failed,
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AttemptEnd {
    /// Still running.
    Running,
    /// Passed.
    Passed,
    /// Failed, and why in a few words.
    Failed {
        /// Why.
        why: String,
    },
    /// Its agent was lost; the job was queued again.
    Lost {
        /// Why the agent counts as lost.
        why: String,
    },
}

/// A test's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestOutcome {
    /// Passed.
    Passed,
    /// Failed or errored.
    Failed,
    /// Skipped.
    Skipped,
}

/// One test in one attempt, from JUnit.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct TestResult {
    /// As `[test] list` names it when JUnit spells a listed test another way (pytest), else as
    /// JUnit names it (`classname::name`).
    pub name: String,
    /// What happened.
    pub outcome: TestOutcome,
    /// How long it took.
    #[serde(with = "fifty_shared::config::duration")]
    pub duration: Duration,
    /// The failure message (truncated).
    pub message: String,
}

/// One attempt at a job.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Attempt {
    /// From 1.
    pub n: u32,
    /// The agent.
    pub host: HostName,
    /// When it was given out.
    pub started_at: SystemTime,
    /// When its result was recorded.
    pub finished_at: Option<SystemTime>,
    /// How it ended.
    pub end: AttemptEnd,
    /// How the process ended, once known.
    pub exit: Option<JobExit>,
    /// Tests its JUnit reported passed (each test's result is kept apart: `Store::results`).
    pub passed: u32,
    /// Tests reported failed.
    pub failed: u32,
    /// Tests reported skipped.
    pub skipped: u32,
    /// Notes on its reports (missing or unparsable JUnit).
    pub notes: Vec<String>,
    /// Bytes of output it wrote.
    pub log_bytes: u64,
}

/// A plan or shard job.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct JobRecord {
    /// Cluster-wide id.
    pub id: u64,
    /// The repository.
    pub repo: RepoName,
    /// The commit.
    pub sha: String,
    /// The commit's sequence number.
    pub commit_seq: u64,
    /// What to run.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Runs it may have that end in failure (1 + retries).
    pub max_failures: u32,
    /// Agents it already failed on (a retry prefers another).
    pub avoid: Vec<HostName>,
    /// Every attempt so far.
    pub attempts: Vec<Attempt>,
    /// When it was queued first.
    pub queued_at: SystemTime,
}

impl JobRecord {
    /// The attempt now running, if any.
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.end == AttemptEnd::Running)
    }

    /// Whether attempt `job` is the one running, and on `host`: only that host may report its
    /// output, upload its artifact or give its result.
    pub fn runs(&self, job: fifty_shared::wire::JobRef, host: &HostName) -> bool {
        self.id == job.job && self.current().is_some_and(|a| a.n == job.attempt && a.host == *host)
    }

    /// Shard index, or None for the plan.
    pub fn shard(&self) -> Option<u32> {
        match &self.kind {
            JobKind::Plan | JobKind::Package { .. } | JobKind::Revert { .. } => None,
            JobKind::Shard { index, .. } => Some(*index),
        }
    }

    /// `plan`, `shard` or `package`.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            JobKind::Plan => "plan",
            JobKind::Package { .. } => "package",
            JobKind::Shard { .. } => "shard",
            JobKind::Revert { .. } => "revert",
        }
    }
}

/// What a repository's history says about its tests, besides their durations (one record per
/// test: `Store::durations`, the sharding input).
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
pub struct TestBook {
    /// Tests whose failures do not fail commits: name → who quarantined it, and when.
    pub quarantined: BTreeMap<String, (String, SystemTime)>,
    /// Tests seen flaky: name → the last commit where it was, and when.
    pub flaky: BTreeMap<String, (String, SystemTime)>,
}

/// Most flaky tests a repository remembers (the oldest sightings go first).
pub const MAX_FLAKY: usize = 500;

/// Most quarantined tests a repository keeps.
pub const MAX_QUARANTINED: usize = 500;

/// Longest test name Fifty keeps. With [`MAX_FLAKY`] and [`MAX_QUARANTINED`] this bounds a
/// repository's [`TestBook`] (one record) to well under `store::MAX_RECORD`, whatever a pusher's
/// JUnit files say.
pub const MAX_TEST_NAME: usize = 512;

/// Longest "who" kept with a quarantine.
pub const MAX_WHO: usize = 200;

/// `name` if it is at most [`MAX_TEST_NAME`] bytes; otherwise its start and a hash of the whole,
/// so two long names that differ only at their ends stay apart.
pub fn bounded_test_name(name: String) -> String {
    if name.len() <= MAX_TEST_NAME {
        return name;
    }
    use sha2::Digest as _;
    let hash = hex::encode(&sha2::Sha256::digest(name.as_bytes())[..8]);
    let mut end = MAX_TEST_NAME - hash.len() - 3;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...{hash}", &name[..end])
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A commit named in a notification.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct NewCommit {
    /// Full SHA (40 hex digits).
    pub sha: String,
    /// Subject line, if the notifier knows it (the plan job fills it in otherwise).
    #[serde(default)]
    pub subject: String,
    /// Author, if known.
    #[serde(default)]
    pub author: String,
}

/// What a finished job reports, as the leader made it ready for the log.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum JobReport {
    /// A plan job's result.
    Plan {
        /// Subject line of the commit.
        subject: String,
        /// Its author.
        author: String,
        /// The test plan and its shards, or why the commit cannot be tested.
        outcome: Result<(TestPlan, Vec<Vec<String>>), String>,
    },
    /// A package job's result: the release (artifact stored, manifest signed), or why not.
    Package {
        /// The release, or why there is none.
        outcome: Result<crate::deploy::ReleaseRecord, String>,
    },
    /// A revert job's result: the revert commit pushed, or why there is none.
    Revert {
        /// The revert's sha, or why not.
        outcome: Result<String, String>,
    },
    /// A shard's result.
    Shard {
        /// How its process ended.
        exit: JobExit,
        /// Its tests.
        tests: Vec<TestResult>,
        /// Notes on its reports.
        notes: Vec<String>,
        /// Bytes of output.
        log_bytes: u64,
    },
}

/// Whether `sha` looks like a full commit id.
pub fn valid_sha(sha: &str) -> bool {
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A short form for people.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output, artifacts and results of an attempt are taken only from the host running it.
    #[test]
    fn only_the_host_running_an_attempt_may_speak_for_it() {
        let web = HostName::new("build-1").unwrap();
        let other = HostName::new("build-2").unwrap();
        let attempt = |n, end| Attempt {
            n,
            host: web.clone(),
            started_at: SystemTime::UNIX_EPOCH,
            finished_at: None,
            end,
            exit: None,
            passed: 0,
            failed: 0,
            skipped: 0,
            notes: vec![],
            log_bytes: 0,
        };
        let lost = || AttemptEnd::Lost { why: "gone".into() };
        let mut job = JobRecord {
            id: 7,
            repo: RepoName::new("shop").unwrap(),
            sha: "a".repeat(40),
            commit_seq: 1,
            kind: JobKind::Plan,
            state: JobState::Running,
            max_failures: 2,
            avoid: vec![],
            attempts: vec![attempt(1, lost()), attempt(2, AttemptEnd::Running)],
            queued_at: SystemTime::UNIX_EPOCH,
        };
        use fifty_shared::wire::JobRef;
        assert!(job.runs(JobRef { job: 7, attempt: 2 }, &web));
        assert!(!job.runs(JobRef { job: 7, attempt: 2 }, &other), "another host");
        assert!(!job.runs(JobRef { job: 7, attempt: 1 }, &web), "an earlier attempt");
        assert!(!job.runs(JobRef { job: 8, attempt: 2 }, &web), "another job");
        job.attempts[1].end = lost();
        assert!(!job.runs(JobRef { job: 7, attempt: 2 }, &web), "an attempt that ended");
    }
}
