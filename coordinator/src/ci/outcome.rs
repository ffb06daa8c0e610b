//! The rules that turn results into decisions. Pure: the state machine calls them while applying
//! a command, so every coordinator decides the same.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use fifty_shared::wire::JobExit;

use super::{short, AttemptEnd, CommitRecord, JobRecord, TestOutcome, TestResult};
use crate::gate::{Cause, Closure};

/// Whether a shard passed: `Ok`, or `Err` with why it failed.
///
/// Failed tests that are quarantined do not count. A non-zero exit fails the shard unless the
/// only failures its JUnit shows are quarantined ones (the exit is then explained by them).
pub fn shard_verdict(
    exit: &JobExit,
    tests: &[TestResult],
    quarantined: &BTreeMap<String, (String, SystemTime)>,
) -> Result<(), String> {
    let failed: Vec<&TestResult> = tests.iter().filter(|t| t.outcome == TestOutcome::Failed).collect();
    let blocking: Vec<&str> =
        failed.iter().filter(|t| !quarantined.contains_key(&t.name)).map(|t| t.name.as_str()).collect();
    if !blocking.is_empty() {
        return Err(tests_failed(&blocking));
    }
    match exit {
        JobExit::Exited(0) => Ok(()),
        JobExit::Exited(_) if !failed.is_empty() => Ok(()),
        JobExit::Exited(code) => Err(format!("the command exited with status {code}")),
        JobExit::TimedOut => Err("timed out".into()),
        JobExit::Failed(why) => Err(why.clone()),
    }
}

fn tests_failed(names: &[&str]) -> String {
    let shown: Vec<&str> = names.iter().take(3).copied().collect();
    let more = names.len().saturating_sub(shown.len());
    let plural = if names.len() == 1 { "" } else { "s" };
    let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!("{} test{plural} failed: {}{tail}", names.len(), shown.join(", "))
}

/// Tests that failed in one attempt of a job and passed in a later one: `jobs` holds, per job,
/// each attempt's results in order.
pub fn flaky(jobs: &[Vec<Vec<TestResult>>]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for attempts in jobs {
        let mut failed_before = BTreeSet::new();
        for tests in attempts {
            for t in tests {
                match t.outcome {
                    TestOutcome::Failed => {
                        failed_before.insert(t.name.clone());
                    }
                    TestOutcome::Passed if failed_before.contains(&t.name) => {
                        out.insert(t.name.clone());
                    }
                    _ => {}
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Why a commit failed, for its record and the gate: the first failed shard's reason.
pub fn failure_summary(jobs: &[JobRecord]) -> String {
    for job in jobs {
        if let Some(AttemptEnd::Failed { why }) = job.attempts.last().map(|a| &a.end) {
            return match job.shard() {
                Some(i) => format!("shard {i}: {why}"),
                None => why.clone(),
            };
        }
    }
    "failed".into()
}

/// How the gate of a branch changes when `commit` finishes: `None` leaves it as it is.
///
/// The gate follows the newest finished commit (highest `seq`): a failure closes it, a pass
/// reopens a gate that a failure closed. An admin's closure stays until an admin opens it.
pub fn gate_after(
    commit: &CommitRecord,
    closed: Option<&Closure>,
    last_finished_seq: u64,
    at: SystemTime,
) -> Option<Option<Closure>> {
    if commit.seq < last_finished_seq {
        return None;
    }
    // An admin's closure, and the immune system's, stay until an admin opens the gate.
    let manual = matches!(closed, Some(Closure { cause: Cause::Manual { .. } | Cause::Immune { .. }, .. }));
    match commit.state {
        _ if manual => None,
        super::CommitState::Failed => {
            let why = commit.error.clone().unwrap_or_else(|| "failed".into());
            let subject = if commit.subject.is_empty() { String::new() } else { format!(" \"{}\"", commit.subject) };
            Some(Some(Closure {
                reason: format!("build red: {}{subject} failed: {why}", short(&commit.sha)),
                cause: Cause::Build { sha: commit.sha.clone() },
                since: closed.map(|c| c.since).unwrap_or(at),
            }))
        }
        super::CommitState::Passed => Some(None),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::CommitState;
    use fifty_shared::ids::RepoName;
    use std::time::Duration;

    fn test(name: &str, outcome: TestOutcome) -> TestResult {
        TestResult { name: name.into(), outcome, duration: Duration::from_millis(5), message: String::new() }
    }

    #[test]
    fn quarantined_failures_do_not_fail_a_shard() {
        let none = BTreeMap::new();
        let q = BTreeMap::from([("t_flaky".to_string(), ("admin".to_string(), SystemTime::UNIX_EPOCH))]);
        let tests = [test("t_ok", TestOutcome::Passed), test("t_flaky", TestOutcome::Failed)];
        assert_eq!(shard_verdict(&JobExit::Exited(1), &tests, &none), Err("1 test failed: t_flaky".into()));
        assert_eq!(shard_verdict(&JobExit::Exited(1), &tests, &q), Ok(()));
        // A crash with no JUnit failure behind it still fails.
        assert!(shard_verdict(&JobExit::Exited(2), &[test("t_ok", TestOutcome::Passed)], &q).is_err());
        assert_eq!(shard_verdict(&JobExit::TimedOut, &[], &q), Err("timed out".into()));
        // JUnit failures fail the shard even when the command forgot to exit non-zero.
        assert!(shard_verdict(&JobExit::Exited(0), &tests, &none).is_err());
    }

    #[test]
    fn a_test_that_fails_then_passes_is_flaky() {
        let job = vec![
            vec![test("a", TestOutcome::Failed), test("b", TestOutcome::Failed)],
            vec![test("a", TestOutcome::Passed), test("b", TestOutcome::Failed)],
        ];
        let other = vec![vec![test("a", TestOutcome::Passed)]];
        assert_eq!(flaky(&[job, other]), ["a"]);
    }

    fn commit(seq: u64, state: CommitState) -> CommitRecord {
        CommitRecord {
            seq,
            repo: RepoName::new("shop").unwrap(),
            branch: "main".into(),
            sha: format!("{seq:040x}"),
            subject: "change".into(),
            author: "dev".into(),
            notified_at: SystemTime::UNIX_EPOCH,
            finished_at: None,
            state,
            error: Some("shard 0: 1 test failed: t".into()),
            plan: None,
            jobs: vec![],
            flaky: vec![],
            release: None,
            release_error: None,
        }
    }

    #[test]
    fn the_gate_follows_the_newest_finished_commit_only() {
        let at = SystemTime::UNIX_EPOCH;
        let closed = gate_after(&commit(5, CommitState::Failed), None, 4, at).unwrap().unwrap();
        assert!(closed.reason.contains("build red") && closed.reason.contains("1 test failed"), "{}", closed.reason);
        // An older commit finishing later changes nothing.
        assert_eq!(gate_after(&commit(3, CommitState::Passed), Some(&closed), 5, at), None);
        // A newer pass reopens.
        assert_eq!(gate_after(&commit(6, CommitState::Passed), Some(&closed), 5, at), Some(None));
        // An admin's closure stays.
        let manual = Closure { reason: "freeze".into(), cause: Cause::Manual { by: "admin".into() }, since: at };
        assert_eq!(gate_after(&commit(7, CommitState::Passed), Some(&manual), 6, at), None);
    }
}
