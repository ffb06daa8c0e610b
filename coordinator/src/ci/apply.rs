//! How the state machine applies CI's commands (`NotifyCommits`, `AssignJobs`, `FinishJob`,
//! `RequeueJob`, `SetQuarantine`): free functions over the store, called from the dispatch in
//! `state::Machine::apply`, which writes their batch (and bounds every record) in one go.

use std::time::SystemTime;

use fifty_shared::ids::{HostName, RepoName};
use fifty_shared::wire::{JobExit, JobKind, JobRef};

use super::outcome;
use super::{
    Attempt, AttemptEnd, CommitRecord, CommitState, JobRecord, JobReport, JobState, NewCommit, TestOutcome, TestResult,
    MAX_FLAKY, MAX_QUARANTINED, MAX_TEST_NAME,
};
use crate::deploy::apply::drop_old_artifacts;
use crate::state::{Applied, ApplyResult, GateRecord, Rejection};
use crate::store::{Batch, Store, StoreError};

/// How many times a job's agent may be lost before the job fails.
pub const MAX_LOST: usize = 5;

/// Most failed attempts a plan job may have (a fetch can fail for a moment).
pub const PLAN_MAX_FAILURES: u32 = 2;

/// Gives queued jobs to build agents (see `Command::AssignJobs`); jobs no longer queued are left out.
pub(crate) fn assign_jobs(store: &Store, jobs: &[(u64, HostName)], at: SystemTime, batch: &mut Batch) -> ApplyResult {
    let mut assigned = Vec::new();
    for (id, host) in jobs {
        let Some(mut job) = store.job(*id)? else { continue };
        if job.state != JobState::Queued {
            continue;
        }
        let n = job.attempts.len() as u32 + 1;
        job.attempts.push(Attempt {
            n,
            host: host.clone(),
            started_at: at,
            finished_at: None,
            end: AttemptEnd::Running,
            exit: None,
            passed: 0,
            failed: 0,
            skipped: 0,
            notes: Vec::new(),
            log_bytes: 0,
        });
        job.state = JobState::Running;
        batch.put_job(&job);
        assigned.push(JobRef { job: *id, attempt: n });
    }
    Ok(Ok(Applied::Assigned(assigned)))
}

/// Queues a job again whose agent is lost (see `Command::RequeueJob`).
pub(crate) fn requeue_job(store: &Store, r: JobRef, why: &str, at: SystemTime, batch: &mut Batch) -> ApplyResult {
    let Some(mut job) = running_attempt(store, r, None)? else {
        return Ok(Err(Rejection::StaleJob(r)));
    };
    let lost = job.attempts.iter().filter(|a| matches!(a.end, AttemptEnd::Lost { .. })).count() + 1;
    let attempt = job.attempts.last_mut().expect("running_attempt has one");
    attempt.finished_at = Some(at);
    if lost >= MAX_LOST {
        attempt.end = AttemptEnd::Failed { why: format!("its agent was lost {lost} times; last: {why}") };
        job.state = JobState::Failed;
    } else {
        attempt.end = AttemptEnd::Lost { why: why.to_string() };
        job.state = JobState::Queued;
    }
    batch.put_job(&job);
    if job.state == JobState::Failed {
        finish_commit_if_done(store, &job, None, None, at, batch)?;
    }
    Ok(Ok(Applied::Done))
}

/// Quarantines a test or releases it (see `Command::SetQuarantine`).
pub(crate) fn set_quarantine(
    store: &Store,
    repo: &RepoName,
    test: &str,
    on: bool,
    by: &str,
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    if store.repo(repo)?.is_none() {
        return Ok(Err(Rejection::UnknownRepo(repo.clone())));
    }
    let mut book = store.tests(repo)?;
    if on {
        if book.quarantined.len() >= MAX_QUARANTINED && !book.quarantined.contains_key(test) {
            return Ok(Err(Rejection::TooManyQuarantined(MAX_QUARANTINED)));
        }
        book.quarantined.insert(test.to_string(), (by.to_string(), at));
    } else if book.quarantined.remove(test).is_none() {
        return Ok(Err(Rejection::NotQuarantined(test.to_string())));
    }
    batch.put_tests(repo, &book);
    Ok(Ok(Applied::Done))
}

/// Records the new commits of a push and queues their plan jobs (see `Command::NotifyCommits`).
pub(crate) fn notify_commits(
    store: &Store,
    repo: &RepoName,
    branch: &str,
    commits: &[NewCommit],
    delivery: Option<&str>,
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    if store.repo(repo)?.is_none() {
        return Ok(Err(Rejection::UnknownRepo(repo.clone())));
    }
    if let Some(id) = delivery {
        if store.delivery(id)?.is_some() {
            return Ok(Ok(Applied::Notified { new: Vec::new(), duplicate: true }));
        }
        batch.put_delivery(id, at);
    }
    let mut counters = store.counters()?;
    let mut new = Vec::new();
    for c in commits {
        if new.contains(&c.sha) || store.commit_by_sha(repo, &c.sha)?.is_some() {
            continue;
        }
        counters.next_commit_seq += 1;
        counters.next_job += 1;
        let (seq, job) = (counters.next_commit_seq, counters.next_job);
        batch.put_commit(&CommitRecord {
            seq,
            repo: repo.clone(),
            branch: branch.to_string(),
            sha: c.sha.clone(),
            subject: c.subject.clone(),
            author: c.author.clone(),
            notified_at: at,
            finished_at: None,
            state: CommitState::Planning,
            error: None,
            plan: None,
            jobs: vec![job],
            flaky: Vec::new(),
            release: None,
            release_error: None,
        });
        batch.put_job(&JobRecord {
            id: job,
            repo: repo.clone(),
            sha: c.sha.clone(),
            commit_seq: seq,
            kind: JobKind::Plan,
            state: JobState::Queued,
            max_failures: PLAN_MAX_FAILURES,
            avoid: Vec::new(),
            attempts: Vec::new(),
            queued_at: at,
        });
        new.push(c.sha.clone());
    }
    batch.put_counters(&counters);
    Ok(Ok(Applied::Notified { new, duplicate: false }))
}

/// The job whose running attempt is `r` (on `host`, when given).
pub(crate) fn running_attempt(
    store: &Store,
    r: JobRef,
    host: Option<&HostName>,
) -> Result<Option<JobRecord>, StoreError> {
    let Some(job) = store.job(r.job)? else { return Ok(None) };
    let ok = job.state == JobState::Running
        && job.current().is_some_and(|a| a.n == r.attempt && host.is_none_or(|h| *h == a.host));
    Ok(ok.then_some(job))
}

/// Records an attempt's result (see `Command::FinishJob`).
pub(crate) fn finish_job(
    store: &Store,
    r: JobRef,
    host: &HostName,
    report: &JobReport,
    log_tail: &[u8],
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    let Some(mut job) = running_attempt(store, r, Some(host))? else {
        return Ok(Err(Rejection::StaleJob(r)));
    };
    if let JobReport::Revert { outcome } = report {
        batch.put_log(r.job, r.attempt, log_tail);
        let attempt = job.attempts.last_mut().expect("running_attempt has one");
        attempt.finished_at = Some(at);
        attempt.exit = Some(JobExit::Exited(0));
        match outcome {
            Ok(_) => {
                attempt.end = AttemptEnd::Passed;
                job.state = JobState::Passed;
            }
            Err(why) => {
                attempt.end = AttemptEnd::Failed { why: why.clone() };
                job.state = JobState::Failed;
            }
        }
        batch.put_job(&job);
        for mut i in store.incidents()?.into_iter().filter(|i| i.revert_job == Some(job.id)) {
            match outcome {
                Ok(sha) => {
                    i.say(at, format!("revert commit {} pushed to {} by {host}", crate::ci::short(sha), i.branch))
                }
                Err(why) => {
                    i.say(at, format!("the commit could not be reverted in git ({why}); the gate stays closed"))
                }
            }
            i.revert = Some(outcome.clone());
            batch.put_incident(&i);
        }
        return Ok(Ok(Applied::Done));
    }
    let Some(mut commit) = store.commit(&job.repo, job.commit_seq)? else {
        return Ok(Err(Rejection::StaleJob(r)));
    };
    batch.put_log(r.job, r.attempt, log_tail);
    let attempt = job.attempts.last_mut().expect("running_attempt has one");
    attempt.finished_at = Some(at);
    match report {
        JobReport::Plan { subject, author, outcome } => {
            if commit.subject.is_empty() {
                commit.subject = subject.clone();
            }
            if commit.author.is_empty() {
                commit.author = author.clone();
            }
            attempt.exit = Some(JobExit::Exited(0));
            match outcome {
                Ok((plan, shards)) => {
                    attempt.end = AttemptEnd::Passed;
                    job.state = JobState::Passed;
                    let mut counters = store.counters()?;
                    let count = shards.len() as u32;
                    for (index, tests) in shards.iter().enumerate() {
                        counters.next_job += 1;
                        let shard = JobRecord {
                            id: counters.next_job,
                            repo: job.repo.clone(),
                            sha: job.sha.clone(),
                            commit_seq: commit.seq,
                            kind: JobKind::Shard {
                                index: index as u32,
                                count,
                                tests: tests.clone(),
                                command: plan.command.clone(),
                                timeout: plan.timeout,
                                junit: plan.junit.clone(),
                            },
                            state: JobState::Queued,
                            max_failures: 1 + plan.retries,
                            avoid: Vec::new(),
                            attempts: Vec::new(),
                            queued_at: at,
                        };
                        commit.jobs.push(shard.id);
                        batch.put_job(&shard);
                    }
                    batch.put_counters(&counters);
                    commit.plan = Some(plan.clone());
                    commit.state = CommitState::Testing;
                    batch.put_job(&job);
                    batch.put_commit(&commit);
                }
                Err(why) => {
                    attempt.end = AttemptEnd::Failed { why: why.clone() };
                    job.state = JobState::Failed;
                    batch.put_job(&job);
                    commit.state = CommitState::Failed;
                    commit.error = Some(why.clone());
                    commit.finished_at = Some(at);
                    batch.put_commit(&commit);
                    gate_follows(store, &commit, at, batch)?;
                }
            }
        }
        JobReport::Package { outcome } => {
            attempt.exit = Some(JobExit::Exited(0));
            match outcome {
                Ok(release) => {
                    attempt.end = AttemptEnd::Passed;
                    job.state = JobState::Passed;
                    commit.release = Some(release.id);
                    batch.put_release(release);
                    drop_old_artifacts(store, release, batch)?;
                    if release.plan.auto {
                        let mut target = store.target(&release.repo)?;
                        // The newest green commit supersedes any older one still waiting.
                        if target.queued.is_none_or(|q| q < release.id) {
                            target.queued = Some(release.id);
                        }
                        batch.put_target(&release.repo, &target);
                    }
                }
                Err(why) => {
                    attempt.end = AttemptEnd::Failed { why: why.clone() };
                    job.state = JobState::Failed;
                    commit.release_error = Some(why.clone());
                }
            }
            batch.put_job(&job);
            batch.put_commit(&commit);
        }
        JobReport::Revert { .. } => unreachable!("revert results are recorded above"),
        JobReport::Shard { exit, tests, notes, log_bytes } => {
            let book = store.tests(&job.repo)?;
            let verdict = outcome::shard_verdict(exit, tests, &book.quarantined);
            let count = |o| tests.iter().filter(|t| t.outcome == o).count() as u32;
            attempt.exit = Some(exit.clone());
            attempt.passed = count(TestOutcome::Passed);
            attempt.failed = count(TestOutcome::Failed);
            attempt.skipped = count(TestOutcome::Skipped);
            attempt.notes = notes.clone();
            attempt.log_bytes = *log_bytes;
            batch.put_results(r.job, r.attempt, tests);
            for t in tests.iter().filter(|t| t.outcome == TestOutcome::Passed && t.name.len() <= MAX_TEST_NAME) {
                batch.put_duration(&job.repo, &t.name, t.duration);
            }
            match verdict {
                Ok(()) => {
                    attempt.end = AttemptEnd::Passed;
                    job.state = JobState::Passed;
                }
                Err(why) => {
                    attempt.end = AttemptEnd::Failed { why };
                    let failures =
                        job.attempts.iter().filter(|a| matches!(a.end, AttemptEnd::Failed { .. })).count() as u32;
                    if failures < job.max_failures {
                        job.state = JobState::Queued;
                        if !job.avoid.contains(host) {
                            job.avoid.push(host.clone());
                        }
                    } else {
                        job.state = JobState::Failed;
                    }
                }
            }
            batch.put_job(&job);
            finish_commit_if_done(store, &job, Some((r.attempt, tests.as_slice())), Some(book), at, batch)?;
        }
    }
    Ok(Ok(Applied::Done))
}

/// After `changed` (already in `batch`) changed state: if every job of its commit is done,
/// the commit passes or fails, its flaky tests are noted, and the gate follows. `current` is
/// the attempt just recorded with its results (not yet in the store), `book` the repository's
/// test book if the caller read it.
pub(crate) fn finish_commit_if_done(
    store: &Store,
    changed: &JobRecord,
    current: Option<(u32, &[TestResult])>,
    book: Option<crate::ci::TestBook>,
    at: SystemTime,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    let Some(mut commit) = store.commit(&changed.repo, changed.commit_seq)? else { return Ok(()) };
    if commit.state.finished() {
        return Ok(());
    }
    let mut jobs = Vec::new();
    for id in &commit.jobs {
        if *id == changed.id {
            jobs.push(changed.clone());
        } else if let Some(j) = store.job(*id)? {
            jobs.push(j);
        }
    }
    if jobs.iter().any(|j| matches!(j.state, JobState::Queued | JobState::Running)) {
        return Ok(());
    }
    let failed = jobs.iter().any(|j| j.state == JobState::Failed);
    commit.state = if failed { CommitState::Failed } else { CommitState::Passed };
    if failed {
        commit.error = Some(outcome::failure_summary(&jobs));
    }
    let mut results = Vec::new();
    for j in &jobs {
        let mut attempts = Vec::new();
        for a in &j.attempts {
            attempts.push(match current {
                Some((n, tests)) if j.id == changed.id && a.n == n => tests.to_vec(),
                _ => store.results(j.id, a.n)?,
            });
        }
        results.push(attempts);
    }
    commit.flaky = outcome::flaky(&results);
    commit.finished_at = Some(at);
    // A green commit that deploys is packaged next.
    if let (CommitState::Passed, Some(plan)) = (commit.state, &commit.plan) {
        if let (Some(pkg), Some(_)) = (&plan.package, &plan.deploy) {
            let mut counters = store.counters()?;
            counters.next_job += 1;
            batch.put_counters(&counters);
            let package = JobRecord {
                id: counters.next_job,
                repo: commit.repo.clone(),
                sha: commit.sha.clone(),
                commit_seq: commit.seq,
                kind: JobKind::Package {
                    command: pkg.command.clone(),
                    artifact: pkg.artifact.clone(),
                    timeout: pkg.timeout,
                },
                state: JobState::Queued,
                max_failures: 2,
                avoid: Vec::new(),
                attempts: Vec::new(),
                queued_at: at,
            };
            commit.jobs.push(package.id);
            batch.put_job(&package);
        }
    }
    if !commit.flaky.is_empty() {
        let mut book = match book {
            Some(b) => b,
            None => store.tests(&commit.repo)?,
        };
        for t in &commit.flaky {
            book.flaky.insert(t.clone(), (commit.sha.clone(), at));
        }
        while book.flaky.len() > MAX_FLAKY {
            let oldest = book.flaky.iter().min_by_key(|(_, (_, seen))| *seen).map(|(n, _)| n.clone());
            book.flaky.remove(&oldest.expect("not empty"));
        }
        batch.put_tests(&commit.repo, &book);
    }
    batch.put_commit(&commit);
    gate_follows(store, &commit, at, batch)
}

/// Moves the branch's gate after `commit` finished.
pub(crate) fn gate_follows(
    store: &Store,
    commit: &CommitRecord,
    at: SystemTime,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    let current = store.gate(&commit.repo, &commit.branch)?;
    let closed = current.as_ref().and_then(|g| g.closed.clone());
    let last = current.as_ref().map_or(0, |g| g.last_finished_seq);
    let change = outcome::gate_after(commit, closed.as_ref(), last, at);
    if commit.seq < last {
        return Ok(());
    }
    let (closed, changed_at, changed_by) = match change {
        Some(next) if next != closed => (next, at, "fifty ci".to_string()),
        _ => (
            closed,
            current.as_ref().map_or(at, |g| g.changed_at),
            current.map_or_else(|| "fifty ci".into(), |g| g.changed_by),
        ),
    };
    batch.put_gate(&GateRecord {
        repo: commit.repo.clone(),
        branch: commit.branch.clone(),
        closed,
        changed_at,
        changed_by,
        last_finished_seq: commit.seq,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::TestPlan;
    use crate::state::testkit::*;
    use crate::state::{Command, RepoRecord};
    use std::time::Duration;

    fn shard(exit: i32, tests: &[(&str, TestOutcome)]) -> JobReport {
        JobReport::Shard {
            exit: JobExit::Exited(exit),
            tests: tests
                .iter()
                .map(|(n, o)| TestResult {
                    name: n.to_string(),
                    outcome: *o,
                    duration: Duration::from_millis(10),
                    message: String::new(),
                })
                .collect(),
            notes: vec![],
            log_bytes: 3,
        }
    }

    /// A repository keeps at most MAX_QUARANTINED quarantined tests; re-quarantining one it has
    /// is still fine.
    #[test]
    fn quarantine_is_capped() {
        let (mut m, _d) = machine();
        add_repo(&mut m);
        for i in 0..MAX_QUARANTINED {
            assert_eq!(quarantine(&mut m, format!("t{i}"), "admin").unwrap(), Ok(Applied::Done));
        }
        assert_eq!(
            quarantine(&mut m, "one-more".into(), "admin").unwrap(),
            Err(Rejection::TooManyQuarantined(MAX_QUARANTINED))
        );
        assert_eq!(quarantine(&mut m, "t0".into(), "admin").unwrap(), Ok(Applied::Done));
    }

    /// A commit's whole life through the state machine alone: a lost plan attempt is
    /// re-queued without using a retry, stale results are refused, a failed shard is retried
    /// away from its agent, a test that failed then passed is flaky, and the gate records the
    /// commit.
    #[test]
    fn a_commit_is_planned_sharded_retried_and_finished() {
        let (mut m, _d) = machine();
        let added = SystemTime::now();
        let record = RepoRecord {
            name: repo(),
            url: "/srv/shop.git".into(),
            branch: "main".into(),
            fix_marker: "[fix]".into(),
            webhook_secret: None,
            added_at: added,
        };
        apply(&mut m, Command::PutRepo(record)).unwrap();
        let sha = "a".repeat(40);
        let notify = Command::NotifyCommits {
            repo: repo(),
            branch: "main".into(),
            commits: vec![NewCommit { sha: sha.clone(), subject: "s".into(), author: "a".into() }],
            delivery: Some("d1".into()),
            at: added,
        };
        assert_eq!(apply(&mut m, notify.clone()), Ok(Applied::Notified { new: vec![sha.clone()], duplicate: false }));
        assert_eq!(apply(&mut m, notify), Ok(Applied::Notified { new: vec![], duplicate: true }));

        let plan = assign(&mut m, 1, "build-1");
        let lost = Command::RequeueJob { job: plan, why: "agent lost".into(), at: SystemTime::now() };
        apply(&mut m, lost).unwrap();
        let plan_report = || JobReport::Plan {
            subject: String::new(),
            author: String::new(),
            outcome: Ok((
                TestPlan {
                    command: "t".into(),
                    timeout: Duration::from_secs(60),
                    junit: None,
                    retries: 1,
                    package: None,
                    deploy: None,
                    service: None,
                },
                vec![vec!["t1".into()], vec!["t2".into()]],
            )),
        };
        assert_eq!(finish(&mut m, plan, "build-1", plan_report()), Err(Rejection::StaleJob(plan)));
        let plan = assign(&mut m, 1, "build-2");
        assert_eq!(plan.attempt, 2);
        assert_eq!(finish(&mut m, plan, "build-1", plan_report()), Err(Rejection::StaleJob(plan)), "wrong host");
        finish(&mut m, plan, "build-2", plan_report()).unwrap();
        let commit = m.store().commit_by_sha(&repo(), &sha).unwrap().unwrap();
        assert_eq!((commit.state, commit.jobs.len()), (CommitState::Testing, 3));

        let (s0, s1) = (assign(&mut m, 2, "build-1"), assign(&mut m, 3, "build-2"));
        finish(&mut m, s0, "build-1", shard(1, &[("t1", TestOutcome::Failed)])).unwrap();
        let retry = m.store().job(2).unwrap().unwrap();
        assert_eq!((retry.state, retry.avoid.clone()), (JobState::Queued, vec![b("build-1")]));
        finish(&mut m, s1, "build-2", shard(0, &[("t2", TestOutcome::Passed)])).unwrap();
        let s0 = assign(&mut m, 2, "build-2");
        finish(&mut m, s0, "build-2", shard(0, &[("t1", TestOutcome::Passed)])).unwrap();

        let commit = m.store().commit_by_sha(&repo(), &sha).unwrap().unwrap();
        assert_eq!(commit.state, CommitState::Passed);
        assert_eq!(commit.flaky, ["t1"]);
        let gate = m.store().gate(&repo(), "main").unwrap().unwrap();
        assert_eq!((gate.closed, gate.last_finished_seq), (None, commit.seq));
        assert_eq!(m.store().durations(&repo()).unwrap().len(), 2);
        assert_eq!(m.store().results(2, 1).unwrap()[0].outcome, TestOutcome::Failed);
        assert!(m.store().active_jobs().unwrap().is_empty());
        assert_eq!(m.store().log(2, 2).unwrap().unwrap(), b"out");
    }
}
