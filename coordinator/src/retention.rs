//! Retention: what the cluster forgets, so that years of commits, logs, test results, incidents
//! and alerts do not grow the state (and every snapshot, backup and new coordinator's catch-up)
//! without end.
//!
//! The leader checks every `[retention] interval` whether anything is out of retention and, if
//! so, proposes one [`Command::Forget`](crate::state::Command::Forget) carrying the cut-off
//! times, fixed when it is proposed. Applying it ([`apply_forget`]) is deterministic (the same
//! state and the same times give the same removals on every coordinator), bounded
//! ([`MAX_PER_COMMAND`] records of each kind a command; the leader proposes again while more
//! remain) and never fails on its input. It never drops what is still needed:
//!
//! - a commit not finished, or with a job queued or running;
//! - the newest green commit of each branch, and the newest finished one (the gate follows it);
//! - the commit a closed gate names (its reason comes from it);
//! - the commit of a release a host is targeted at, a rollout in progress runs (or goes back
//!   to), or a repository keeps as its last good or queued release;
//! - the commit of an open incident; an open incident, or one a closed gate names; an alert
//!   still firing, or whose incident is open.
//!
//! Artifacts have their own retention (`deploy::apply::drop_old_artifacts`: the newest
//! `deploy::KEEP_ARTIFACTS` releases of each repository, and every targeted one); release and
//! rollout records are kept.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bincode::{Decode, Encode};
use fifty_shared::config::duration;
use fifty_shared::ids::RepoName;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ci::{CommitState, JobState};
use crate::coordinator::Coordinator;
use crate::gate::{Cause, Closure};
use crate::state::{Applied, ApplyResult, Command};
use crate::store::{Batch, Store, StoreError};

/// The most records of each kind (commits with their jobs, commits whose logs go, incidents,
/// alerts) one command forgets: applying it stays short on the Raft thread.
pub const MAX_PER_COMMAND: usize = 500;

/// `[retention]`: how long the cluster keeps what it would otherwise keep forever. `0s` keeps
/// that kind forever.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Finished commits, with their jobs and test results, this long after they finished.
    #[serde(with = "duration")]
    pub commits: Duration,
    /// Jobs' output (the log tail of each attempt) this long after its commit finished.
    #[serde(with = "duration")]
    pub logs: Duration,
    /// Closed incidents this long after they were closed.
    #[serde(with = "duration")]
    pub incidents: Duration,
    /// Resolved alerts this long after they resolved.
    #[serde(with = "duration")]
    pub alerts: Duration,
    /// How often the leader looks for what is out of retention; `0s` turns retention off.
    #[serde(with = "duration")]
    pub interval: Duration,
}

const DAY: u64 = 86_400;

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            commits: Duration::from_secs(90 * DAY),
            logs: Duration::from_secs(30 * DAY),
            incidents: Duration::from_secs(365 * DAY),
            alerts: Duration::from_secs(90 * DAY),
            interval: Duration::from_secs(3600),
        }
    }
}

impl RetentionConfig {
    /// The cut-off times at `now`: what finished (closed, resolved) before them goes.
    pub fn cutoffs(&self, now: SystemTime) -> Cutoffs {
        // A cut-off before 1970 would not encode (and nothing recorded is that old): none.
        let before = |keep: Duration| {
            (!keep.is_zero()).then(|| now.checked_sub(keep)).flatten().filter(|t| *t >= SystemTime::UNIX_EPOCH)
        };
        Cutoffs {
            commits: before(self.commits),
            logs: before(self.logs),
            incidents: before(self.incidents),
            alerts: before(self.alerts),
        }
    }

    /// The settings as a person reads them.
    pub fn describe(&self) -> String {
        let d = |keep: Duration| match keep.as_secs() {
            0 => "forever".to_string(),
            s if s % DAY == 0 => format!("{}d", s / DAY),
            _ => humantime::format_duration(keep).to_string(),
        };
        if self.interval.is_zero() {
            return "off".into();
        }
        format!(
            "commits {}, logs {}, incidents {}, alerts {} (checked every {})",
            d(self.commits),
            d(self.logs),
            d(self.incidents),
            d(self.alerts),
            humantime::format_duration(self.interval)
        )
    }
}

/// What a [`Command::Forget`] forgets: records that finished before these times (None: keep).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Cutoffs {
    /// Commits with their jobs and test results.
    pub commits: Option<SystemTime>,
    /// Jobs' output.
    pub logs: Option<SystemTime>,
    /// Closed incidents.
    pub incidents: Option<SystemTime>,
    /// Resolved alerts.
    pub alerts: Option<SystemTime>,
}

/// How many records of each kind were forgotten.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Removed {
    /// Commits.
    pub commits: u64,
    /// Jobs (plan, shards, package, revert).
    pub jobs: u64,
    /// Attempts' output.
    pub logs: u64,
    /// Attempts' test results.
    pub results: u64,
    /// Incidents.
    pub incidents: u64,
    /// Alerts.
    pub alerts: u64,
}

impl Removed {
    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        *self == Removed::default()
    }

    fn add(&mut self, o: &Removed) {
        self.commits += o.commits;
        self.jobs += o.jobs;
        self.logs += o.logs;
        self.results += o.results;
        self.incidents += o.incidents;
        self.alerts += o.alerts;
    }

    /// One line for people: "3 commits, 9 jobs, ...".
    pub fn describe(&self) -> String {
        if self.is_empty() {
            return "nothing".into();
        }
        let parts = [
            (self.commits, "commits"),
            (self.jobs, "jobs"),
            (self.logs, "logs"),
            (self.results, "test results"),
            (self.incidents, "incidents"),
            (self.alerts, "alerts"),
        ];
        parts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect::<Vec<_>>().join(", ")
    }
}

/// What retention last did (`sm/retention`), for `fifty status`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct RetentionRecord {
    /// When the last [`Command::Forget`] was proposed.
    pub at: SystemTime,
    /// Its cut-off times.
    pub cutoffs: Cutoffs,
    /// What it removed.
    pub removed: Removed,
    /// Whether it stopped at [`MAX_PER_COMMAND`] with more out of retention.
    pub more: bool,
    /// Everything retention removed since the cluster began.
    pub total: Removed,
}

/// Adds to `batch` the removal of what `cutoffs` puts out of retention, at most
/// [`MAX_PER_COMMAND`] of each kind; returns what, and whether more remains.
pub fn plan(store: &Store, cutoffs: &Cutoffs, batch: &mut Batch) -> Result<(Removed, bool), StoreError> {
    let mut removed = Removed::default();
    let mut more = false;
    if cutoffs.commits.is_some() || cutoffs.logs.is_some() {
        more |= plan_commits(store, cutoffs, batch, &mut removed)?;
    }
    if let Some(before) = cutoffs.incidents {
        // An incident a closed gate names stays while the gate is closed (opening the gate is
        // part of its story).
        let mut named = HashSet::new();
        for repo in store.repos()? {
            for gate in store.gates(&repo.name)? {
                if let Some(Closure { cause: Cause::Immune { incident, .. }, .. }) = gate.closed {
                    named.insert(incident);
                }
            }
        }
        let mut n = 0;
        for i in store.incidents()? {
            if matches!(i.closed, Some((at, _)) if at < before) && !named.contains(&i.id) {
                if n == MAX_PER_COMMAND {
                    more = true;
                    break;
                }
                batch.remove_incident(i.id);
                n += 1;
            }
        }
        removed.incidents = n as u64;
    }
    if let Some(before) = cutoffs.alerts {
        let mut n = 0;
        for a in store.all_alerts()? {
            let resolved_before = matches!(a.resolved, Some((at, _)) if at < before);
            let incident_open = match a.incident {
                Some(id) => store.incident(id)?.is_some_and(|i| i.closed.is_none()),
                None => false,
            };
            if resolved_before && !incident_open {
                if n == MAX_PER_COMMAND {
                    more = true;
                    break;
                }
                batch.remove_alert(a.id);
                n += 1;
            }
        }
        removed.alerts = n as u64;
    }
    Ok((removed, more))
}

/// Commits (with jobs and results) and logs out of retention; true if more remain.
fn plan_commits(
    store: &Store,
    cutoffs: &Cutoffs,
    batch: &mut Batch,
    removed: &mut Removed,
) -> Result<bool, StoreError> {
    let commits = store.all_commits()?;
    let keep = protected(store, &commits)?;
    let (mut forgotten, mut trimmed, mut more) = (0usize, 0usize, false);
    for c in &commits {
        let Some(finished) = c.finished_at.filter(|_| c.state.finished()) else { continue };
        if keep.contains(&(c.repo.clone(), c.seq)) {
            continue;
        }
        let mut jobs = Vec::new();
        for id in &c.jobs {
            if let Some(j) = store.job(*id)? {
                jobs.push(j);
            }
        }
        if jobs.iter().any(|j| matches!(j.state, JobState::Queued | JobState::Running)) {
            continue;
        }
        if cutoffs.commits.is_some_and(|before| finished < before) {
            if forgotten == MAX_PER_COMMAND {
                more = true;
                continue;
            }
            forgotten += 1;
            removed.commits += 1;
            for j in &jobs {
                for a in &j.attempts {
                    removed.logs += store.has_log(j.id, a.n)? as u64;
                    removed.results += store.has_results(j.id, a.n)? as u64;
                }
                batch.remove_job(j);
                removed.jobs += 1;
            }
            batch.remove_commit(c);
        } else if cutoffs.logs.is_some_and(|before| finished < before) {
            let mut any = false;
            for j in &jobs {
                for a in &j.attempts {
                    if store.has_log(j.id, a.n)? {
                        if !any && trimmed == MAX_PER_COMMAND {
                            more = true;
                            break;
                        }
                        any = true;
                        batch.remove_log(j.id, a.n);
                        removed.logs += 1;
                    }
                }
            }
            trimmed += any as usize;
        }
    }
    Ok(more)
}

/// The commits (repository, sequence number) retention keeps whatever their age.
fn protected(store: &Store, commits: &[crate::ci::CommitRecord]) -> Result<HashSet<(RepoName, u64)>, StoreError> {
    let mut keep = HashSet::new();
    // The newest green and the newest finished commit of each branch (commits come in sequence
    // order within a repository).
    let mut newest_green: BTreeMap<(RepoName, String), u64> = BTreeMap::new();
    for c in commits {
        if c.state == CommitState::Passed {
            newest_green.insert((c.repo.clone(), c.branch.clone()), c.seq);
        }
    }
    keep.extend(newest_green.into_iter().map(|((repo, _), seq)| (repo, seq)));
    let mut in_use: HashSet<u64> = store.host_targets()?.into_iter().map(|t| t.release).collect();
    for r in store.rollouts()?.into_iter().filter(|r| !r.finished()) {
        in_use.insert(r.release);
        in_use.extend(r.previous);
    }
    let mut shas: Vec<(RepoName, String)> = Vec::new();
    for repo in store.repos()? {
        let target = store.target(&repo.name)?;
        in_use.extend([target.active, target.queued, target.last_good].into_iter().flatten());
        for gate in store.gates(&repo.name)? {
            keep.insert((repo.name.clone(), gate.last_finished_seq));
            if let Some(Closure { cause: Cause::Build { sha } | Cause::Immune { sha, .. }, .. }) = &gate.closed {
                shas.push((repo.name.clone(), sha.clone()));
            }
        }
    }
    for i in store.incidents()?.into_iter().filter(|i| i.closed.is_none()) {
        if let Some(repo) = i.repo {
            shas.push((repo, i.sha));
        }
    }
    for (repo, sha) in shas {
        if let Some(c) = store.commit_by_sha(&repo, &sha)? {
            keep.insert((repo, c.seq));
        }
    }
    for c in commits {
        if c.release.is_some_and(|r| in_use.contains(&r)) {
            keep.insert((c.repo.clone(), c.seq));
        }
    }
    Ok(keep)
}

/// Applies [`Command::Forget`]: forgets what its cut-offs put out of retention and records
/// what in `sm/retention`. Never rejected.
pub fn apply_forget(store: &Store, cutoffs: &Cutoffs, at: SystemTime, batch: &mut Batch) -> ApplyResult {
    let (removed, more) = plan(store, cutoffs, batch)?;
    let mut total = store.retention()?.map(|r| r.total).unwrap_or_default();
    total.add(&removed);
    batch.put_retention(&RetentionRecord { at, cutoffs: *cutoffs, removed, more, total });
    Ok(Ok(Applied::Done))
}

/// What the leader proposes at `now` under `config`: a [`Command::Forget`] if anything in
/// `store` is out of retention (checked with the same rules the command is applied by), else
/// nothing, so an idle cluster's log does not grow by a command an hour.
pub fn proposal(store: &Store, config: &RetentionConfig, now: SystemTime) -> Result<Option<Command>, StoreError> {
    if config.interval.is_zero() {
        return Ok(None);
    }
    let cutoffs = config.cutoffs(now);
    let (removed, _) = plan(store, &cutoffs, &mut Batch::default())?;
    Ok((!removed.is_empty()).then_some(Command::Forget { cutoffs, at: now }))
}

/// On the leader, every `[retention] interval`: proposes a [`Command::Forget`] when something is
/// out of retention (checked on this coordinator's state first, so an idle cluster's log does
/// not grow by a command an hour), again at once while a command stopped at its bound.
pub async fn run(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    let config = coordinator.config.retention.clone();
    if config.interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for _ in 0..100 {
            if !coordinator.consensus.status().is_leader() {
                break;
            }
            match forget_once(&coordinator, &config).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "retention: not applied this time; trying again later");
                    break;
                }
            }
        }
    }
}

/// One round: true if the command stopped at its bound with more to forget.
async fn forget_once(coordinator: &Coordinator, config: &RetentionConfig) -> anyhow::Result<bool> {
    let store = coordinator.consensus.store().clone();
    let config = config.clone();
    let proposed = tokio::task::spawn_blocking(move || proposal(&store, &config, SystemTime::now())).await??;
    let Some(command) = proposed else { return Ok(false) };
    match coordinator.consensus.propose(command).await? {
        Ok(_) => {}
        Err(rejection) => anyhow::bail!("{rejection}"),
    }
    let record = coordinator.consensus.store().retention()?;
    if let Some(r) = &record {
        tracing::info!(removed = %r.removed.describe(), more = r.more, "retention forgot what is past its settings");
    }
    Ok(record.is_some_and(|r| r.more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testkit::*;

    fn forget(m: &mut crate::state::Machine, cutoffs: Cutoffs) -> RetentionRecord {
        apply(m, Command::Forget { cutoffs, at: SystemTime::now() }).unwrap();
        m.store().retention().unwrap().expect("recorded")
    }

    #[test]
    fn defaults_and_cutoffs() {
        let c = RetentionConfig::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000 * DAY);
        let cut = c.cutoffs(now);
        assert_eq!(cut.commits, Some(now - Duration::from_secs(90 * DAY)));
        assert_eq!(cut.logs, Some(now - Duration::from_secs(30 * DAY)));
        let forever = RetentionConfig { logs: Duration::ZERO, ..c.clone() };
        assert_eq!(forever.cutoffs(now).logs, None, "0s keeps logs forever");
        assert_eq!(c.describe(), "commits 90d, logs 30d, incidents 365d, alerts 90d (checked every 1h)");
        let early = c.cutoffs(SystemTime::UNIX_EPOCH + Duration::from_secs(100 * DAY));
        assert_eq!(early.incidents, None, "a cut-off before 1970 (which would not encode) is none");
    }

    /// Writes commit `seq` of `branch` (finished at `t` in `state`) with one job of one attempt,
    /// its log and its results.
    fn commit(m: &crate::state::Machine, seq: u64, branch: &str, state: CommitState, t: SystemTime) {
        use crate::ci::{Attempt, AttemptEnd, CommitRecord, JobRecord};
        let sha = format!("{seq:040x}");
        let job = JobRecord {
            id: seq,
            repo: repo(),
            sha: sha.clone(),
            commit_seq: seq,
            kind: fifty_shared::wire::JobKind::Plan,
            state: JobState::Passed,
            max_failures: 1,
            avoid: vec![],
            attempts: vec![Attempt {
                n: 1,
                host: b("build-1"),
                started_at: t,
                finished_at: Some(t),
                end: AttemptEnd::Passed,
                exit: None,
                passed: 1,
                failed: 0,
                skipped: 0,
                notes: vec![],
                log_bytes: 3,
            }],
            queued_at: t,
        };
        let c = CommitRecord {
            seq,
            repo: repo(),
            branch: branch.into(),
            sha,
            subject: format!("commit {seq}"),
            author: "a".into(),
            notified_at: t,
            finished_at: Some(t),
            state,
            error: None,
            plan: None,
            jobs: vec![seq],
            flaky: vec![],
            release: None,
            release_error: None,
        };
        let mut batch = Batch::default();
        batch.put_commit(&c);
        batch.put_job(&job);
        batch.put_log(seq, 1, b"out");
        batch.put_results(seq, 1, &[]);
        m.store().apply(batch).unwrap();
    }

    /// The shop repository, added at a fixed time (two machines' digests are compared).
    fn fixed_repo(m: &mut crate::state::Machine) {
        let record = crate::state::RepoRecord {
            name: repo(),
            url: "/srv/shop.git".into(),
            branch: "main".into(),
            fix_marker: "[fix]".into(),
            webhook_secret: None,
            added_at: SystemTime::UNIX_EPOCH,
        };
        apply(m, Command::PutRepo(record)).unwrap();
    }

    fn seqs(m: &crate::state::Machine) -> Vec<u64> {
        m.store().all_commits().unwrap().iter().map(|c| c.seq).collect()
    }

    /// Old commits go with their jobs, logs and results, except the newest green one of each
    /// branch and the one a closed gate names; logs go sooner than commits; every coordinator
    /// applying the same command forgets the same (the command carries the times).
    #[test]
    fn old_commits_go_with_their_jobs_but_the_last_green_and_the_gates_stay() {
        let (mut m, _d) = machine();
        fixed_repo(&mut m);
        let day = |d: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(d * DAY);
        commit(&m, 1, "main", CommitState::Passed, day(1));
        commit(&m, 2, "main", CommitState::Passed, day(2)); // the newest green of main: kept
        commit(&m, 3, "main", CommitState::Failed, day(3)); // closed the gate: kept
        commit(&m, 4, "dev", CommitState::Failed, day(4));
        commit(&m, 5, "dev", CommitState::Passed, day(5)); // the newest green of dev: kept
        commit(&m, 6, "main", CommitState::Failed, day(60)); // recent: kept, its log goes at 30 days
        commit(&m, 7, "main", CommitState::Failed, day(100)); // recent: all kept
        let closed = crate::state::GateRecord {
            repo: repo(),
            branch: "main".into(),
            closed: Some(Closure {
                reason: "build broke".into(),
                cause: Cause::Build { sha: format!("{:040x}", 3) },
                since: day(3),
            }),
            changed_at: day(3),
            changed_by: "fifty".into(),
            last_finished_seq: 7,
        };
        let mut batch = Batch::default();
        batch.put_gate(&closed);
        m.store().apply(batch).unwrap();

        // What the leader would propose at day 100 with the defaults.
        let cutoffs = RetentionConfig::default().cutoffs(day(100));
        let r = forget(&mut m, cutoffs);
        assert_eq!(seqs(&m), vec![2, 3, 5, 6, 7]);
        assert_eq!(r.removed, Removed { commits: 2, jobs: 2, logs: 3, results: 2, ..Removed::default() });
        for gone in [1, 4] {
            assert!(m.store().job(gone).unwrap().is_none());
            assert!(!m.store().has_log(gone, 1).unwrap() && !m.store().has_results(gone, 1).unwrap());
            assert!(m.store().commit_by_sha(&repo(), &format!("{gone:040x}")).unwrap().is_none(), "sha index");
        }
        assert!(!m.store().has_log(6, 1).unwrap(), "a 40-day-old log is past 30 days");
        assert!(m.store().has_results(6, 1).unwrap(), "its results stay with the commit");
        assert!(m.store().has_log(7, 1).unwrap());
        assert!(m.store().job(2).unwrap().is_some() && m.store().has_log(2, 1).unwrap(), "kept whole");

        // The same command on another coordinator's copy gives the same state.
        let (mut other, _d2) = machine();
        fixed_repo(&mut other);
        for (seq, branch, state, t) in [
            (1, "main", CommitState::Passed, day(1)),
            (2, "main", CommitState::Passed, day(2)),
            (3, "main", CommitState::Failed, day(3)),
            (4, "dev", CommitState::Failed, day(4)),
            (5, "dev", CommitState::Passed, day(5)),
            (6, "main", CommitState::Failed, day(60)),
            (7, "main", CommitState::Failed, day(100)),
        ] {
            commit(&other, seq, branch, state, t);
        }
        let mut batch = Batch::default();
        batch.put_gate(&closed);
        other.store().apply(batch).unwrap();
        apply(&mut other, Command::Forget { cutoffs, at: r.at }).unwrap();
        assert_eq!(other.store().state_digest().unwrap(), m.store().state_digest().unwrap());

        // Once the gate opens and a newer green commit exists, the old ones go too.
        commit(&m, 8, "main", CommitState::Passed, day(200));
        let mut batch = Batch::default();
        batch.put_gate(&crate::state::GateRecord { closed: None, last_finished_seq: 8, ..closed });
        m.store().apply(batch).unwrap();
        forget(&mut m, RetentionConfig::default().cutoffs(day(200)));
        assert_eq!(seqs(&m), vec![5, 8], "dev's last green stays; main's old ones go");
        assert_eq!(m.store().retention().unwrap().unwrap().total.commits, 2 + 4);
    }

    /// One command forgets at most MAX_PER_COMMAND of a kind and says more remain; the next
    /// takes the rest.
    #[test]
    fn one_command_is_bounded_and_the_next_goes_on() {
        let (mut m, _d) = machine();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(DAY);
        let mut b = Batch::default();
        for id in 1..=(MAX_PER_COMMAND as u64 + 1) {
            b.put_alert(&crate::alerts::AlertRecord {
                id,
                rule: 1,
                rule_name: "r".into(),
                subject: "s".into(),
                severity: crate::alerts::Severity::Warning,
                summary: String::new(),
                since: t0,
                fired_at: t0,
                resolved: Some((t0, String::new())),
                acked: None,
                silenced: false,
                notifications: vec![],
                incident: None,
            });
        }
        m.store().apply(b).unwrap();
        let cut = Cutoffs { alerts: Some(t0 + Duration::from_secs(1)), ..Cutoffs::default() };
        let r = forget(&mut m, cut);
        assert_eq!((r.removed.alerts, r.more), (MAX_PER_COMMAND as u64, true));
        let r = forget(&mut m, cut);
        assert_eq!((r.removed.alerts, r.more, r.total.alerts), (1, false, MAX_PER_COMMAND as u64 + 1));
        assert!(m.store().all_alerts().unwrap().is_empty());
    }

    /// A kind of command new in state version 5: the leader proposes it only once every voter
    /// runs a binary that knows it.
    #[test]
    fn forget_is_state_version_5() {
        let cmd = Command::Forget { cutoffs: Cutoffs::default(), at: SystemTime::UNIX_EPOCH };
        assert_eq!(cmd.since(), 5);
        assert!(crate::state::STATE_VERSION >= 5);
    }

    /// An incident is forgotten only once closed before the cut-off; an alert only once
    /// resolved before it, and never while its incident is open. Nothing else moves.
    #[test]
    fn closed_incidents_and_resolved_alerts_go_open_ones_stay() {
        let (mut m, _d) = machine();
        add_repo(&mut m);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * DAY);
        let incident = |id, closed: Option<SystemTime>| crate::incidents::IncidentRecord {
            id,
            repo: None,
            branch: String::new(),
            title: format!("incident {id}"),
            opened_at: t0,
            sha: String::new(),
            subject: String::new(),
            release: 0,
            previous: 0,
            rollout: 0,
            reason: String::new(),
            evidence: vec![],
            revert_job: None,
            revert: None,
            timeline: vec![],
            whys: vec![],
            actions: vec![],
            closed: closed.map(|at| (at, "admin".into())),
            alert: None,
        };
        let mut b = Batch::default();
        b.put_incident(&incident(1, Some(t0)));
        b.put_incident(&incident(2, None));
        b.put_incident(&incident(3, Some(t0 + Duration::from_secs(50 * DAY))));
        m.store().apply(b).unwrap();
        let cut = t0 + Duration::from_secs(DAY);
        let r = forget(&mut m, Cutoffs { incidents: Some(cut), ..Cutoffs::default() });
        assert_eq!(r.removed, Removed { incidents: 1, ..Removed::default() });
        let left: Vec<u64> = m.store().incidents().unwrap().iter().map(|i| i.id).collect();
        assert_eq!(left, vec![2, 3], "the open one and the recently closed one stay");
        // Again: nothing more goes, and the total counts every run.
        let r = forget(&mut m, Cutoffs { incidents: Some(cut), ..Cutoffs::default() });
        assert!(r.removed.is_empty());
        assert_eq!(r.total.incidents, 1);

        // The leader proposes only when something is out of retention: not now (incident 2 is
        // open, 3 closed 50 days after the others)...
        let config = RetentionConfig::default();
        let soon = t0 + Duration::from_secs(300 * DAY);
        assert!(proposal(m.store(), &config, soon).unwrap().is_none());
        // ... but once 3 has been closed a year, with the times fixed in the command.
        let later = t0 + Duration::from_secs(450 * DAY);
        let Some(Command::Forget { cutoffs, at }) = proposal(m.store(), &config, later).unwrap() else {
            panic!("nothing proposed")
        };
        assert_eq!((at, cutoffs), (later, config.cutoffs(later)));
        let off = RetentionConfig { interval: Duration::ZERO, ..config.clone() };
        assert!(proposal(m.store(), &off, later).unwrap().is_none(), "interval 0s turns it off");
        // An incident a closed gate names stays while the gate is closed.
        let mut b = Batch::default();
        b.put_gate(&crate::state::GateRecord {
            repo: repo(),
            branch: "main".into(),
            closed: Some(Closure {
                reason: "immune system reverted".into(),
                cause: Cause::Immune { sha: "a".repeat(40), incident: 3 },
                since: t0,
            }),
            changed_at: t0,
            changed_by: "fifty".into(),
            last_finished_seq: 0,
        });
        m.store().apply(b).unwrap();
        assert!(proposal(m.store(), &config, later).unwrap().is_none(), "incident 3 is the gate's");

        // Alerts: one resolved long ago goes; one still firing, or whose incident is open, stays.
        let alert = |id, resolved: Option<SystemTime>, incident| crate::alerts::AlertRecord {
            id,
            rule: 1,
            rule_name: "host-down".into(),
            subject: "web-1".into(),
            severity: crate::alerts::Severity::Critical,
            summary: String::new(),
            since: t0,
            fired_at: t0,
            resolved: resolved.map(|at| (at, "back".into())),
            acked: None,
            silenced: false,
            notifications: vec![],
            incident,
        };
        let mut b = Batch::default();
        b.put_alert(&alert(1, Some(t0), None));
        b.put_alert(&alert(2, None, None));
        b.put_alert(&alert(3, Some(t0), Some(2)));
        m.store().apply(b).unwrap();
        let r = forget(&mut m, Cutoffs { alerts: Some(cut), ..Cutoffs::default() });
        assert_eq!(r.removed, Removed { alerts: 1, ..Removed::default() });
        let left: Vec<u64> = m.store().all_alerts().unwrap().iter().map(|a| a.id).collect();
        assert_eq!(left, vec![2, 3]);
        assert_eq!(m.store().firing_alerts().unwrap().len(), 1, "the firing index keeps the firing one");
    }
}
