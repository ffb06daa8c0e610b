//! CI operations behind the API: notify commits (from the CLI, a post-receive hook or a
//! GitHub-style webhook), list and show commits, read a shard's output, quarantine tests.

use std::time::SystemTime;

use fifty_shared::ids::RepoName;

use super::{valid_sha, AttemptEnd, CommitRecord, JobRecord, JobState, NewCommit, TestOutcome};
use crate::coordinator::{Coordinator, OpError};
use crate::state::{Applied, Command};
use crate::store::StoreError;
use crate::views::{self, AttemptView, CommitSummary, CommitView, FailedTest, JobView, Notified, TestsView};

/// Checks what `fifty repo add` gives that reaches git on build hosts: the URL and the branch.
/// The error names the field (`url ...`, `branch ...`) and is a 400.
pub fn check_repo_source(url: &str, branch: &str) -> Result<(), OpError> {
    fifty_shared::git::check_repo_url(url).map_err(|e| OpError::BadRequest(e.to_string()))?;
    fifty_shared::git::check_branch(branch).map_err(|e| OpError::BadRequest(e.to_string()))
}

/// Most commits one notification may carry.
pub const MAX_COMMITS_PER_NOTIFY: usize = 1000;

impl Coordinator {
    /// Records pushed commits of `repo` and queues their tests. Commits pushed to a branch other
    /// than the repository's are not tested (the answer says so).
    pub async fn notify_commits(
        &self,
        repo: &str,
        branch: Option<String>,
        commits: Vec<NewCommit>,
        delivery: Option<String>,
    ) -> Result<Notified, OpError> {
        let record = self.repo(repo)?;
        let branch = branch.unwrap_or_else(|| record.branch.clone());
        fifty_shared::git::check_branch(&branch).map_err(|e| OpError::BadRequest(e.to_string()))?;
        let mut answer = Notified {
            repo: record.name.to_string(),
            branch: branch.clone(),
            queued: vec![],
            known: vec![],
            ignored: None,
        };
        if commits.len() > MAX_COMMITS_PER_NOTIFY {
            return Err(OpError::BadRequest(format!(
                "{} commits in one notification; the limit is {MAX_COMMITS_PER_NOTIFY}",
                commits.len()
            )));
        }
        for c in &commits {
            if !valid_sha(&c.sha) {
                return Err(OpError::BadRequest(format!(
                    "{:?} is not a full commit SHA (40 lower-case hex digits)",
                    c.sha
                )));
            }
        }
        if branch != record.branch {
            answer.ignored = Some(format!("Fifty tests branch {} of {}, not {branch}", record.branch, record.name));
            return Ok(answer);
        }
        if commits.is_empty() {
            answer.ignored = Some("no commits".into());
            return Ok(answer);
        }
        let commits: Vec<NewCommit> = commits
            .into_iter()
            .map(|mut c| {
                c.subject = c.subject.lines().next().unwrap_or_default().chars().take(200).collect();
                c.author = c.author.chars().take(100).collect();
                c
            })
            .collect();
        let all: Vec<String> = commits.iter().map(|c| c.sha.clone()).collect();
        let cmd =
            Command::NotifyCommits { repo: record.name.clone(), branch, commits, delivery, at: SystemTime::now() };
        match self.consensus.propose(cmd).await?? {
            Applied::Notified { duplicate: true, .. } => {
                answer.ignored = Some("this delivery was received before".into());
            }
            Applied::Notified { new, .. } => {
                answer.known = all.into_iter().filter(|s| !new.contains(s)).collect();
                for sha in &new {
                    tracing::info!(repo = %record.name, sha = super::short(sha), "commit queued for testing");
                }
                answer.queued = new;
                self.ci_wake.notify_one();
            }
            other => return Err(OpError::BadRequest(format!("unexpected outcome {other:?}"))),
        }
        Ok(answer)
    }

    /// The newest commits, newest first, of one repository or of all.
    pub fn commits(&self, repo: Option<&str>, limit: usize) -> Result<Vec<CommitSummary>, OpError> {
        let store = self.consensus.store();
        let repos = match repo {
            Some(r) => vec![self.repo(r)?.name],
            None => store.repos()?.into_iter().map(|r| r.name).collect(),
        };
        let mut out = Vec::new();
        for r in repos {
            for c in store.recent_commits(&r, limit)? {
                out.push(self.summary(&c)?);
            }
        }
        out.sort_by(|a, b| b.seq.cmp(&a.seq));
        out.truncate(limit);
        Ok(out)
    }

    /// Finds a commit by SHA or unique prefix (at least 4 digits), in `repo` or in any.
    pub fn find_commit(&self, sha: &str, repo: Option<&str>) -> Result<CommitRecord, OpError> {
        let sha = sha.trim().to_ascii_lowercase();
        if sha.len() < 4 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(OpError::BadRequest(format!("{sha:?} is not a commit SHA or a prefix of one (4+ hex digits)")));
        }
        let store = self.consensus.store();
        let repos: Vec<RepoName> = match repo {
            Some(r) => vec![self.repo(r)?.name],
            None => store.repos()?.into_iter().map(|r| r.name).collect(),
        };
        let mut found = Vec::new();
        for r in &repos {
            found.extend(store.commits_by_prefix(r, &sha)?);
        }
        match found.len() {
            0 => Err(OpError::NotFound(format!("no commit {sha} is known to Fifty"))),
            1 => Ok(found.remove(0)),
            n => Err(OpError::BadRequest(format!(
                "{sha} matches {n} commits ({}); give more digits or --repo",
                found.iter().map(|c| format!("{} in {}", super::short(&c.sha), c.repo)).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn jobs_of(&self, c: &CommitRecord) -> Result<Vec<JobRecord>, StoreError> {
        let store = self.consensus.store();
        let mut jobs = Vec::new();
        for id in &c.jobs {
            jobs.extend(store.job(*id)?);
        }
        Ok(jobs)
    }

    fn summary(&self, c: &CommitRecord) -> Result<CommitSummary, StoreError> {
        let jobs = self.jobs_of(c)?;
        let shards: Vec<&JobRecord> = jobs.iter().filter(|j| j.shard().is_some()).collect();
        Ok(CommitSummary {
            repo: c.repo.to_string(),
            seq: c.seq,
            sha: c.sha.clone(),
            branch: c.branch.clone(),
            subject: c.subject.clone(),
            author: c.author.clone(),
            state: c.state,
            error: c.error.clone(),
            shards: shards.len(),
            shards_passed: shards.iter().filter(|j| j.state == JobState::Passed).count(),
            notified_at: views::rfc3339(c.notified_at),
            finished_at: c.finished_at.map(views::rfc3339),
            duration_secs: c.finished_at.map(|f| f.duration_since(c.notified_at).unwrap_or_default().as_secs_f64()),
            flaky: c.flaky.clone(),
        })
    }

    /// A commit in full: shards, attempts, failed tests.
    pub fn commit_view(&self, sha: &str, repo: Option<&str>) -> Result<CommitView, OpError> {
        let c = self.find_commit(sha, repo)?;
        let jobs = self.jobs_of(&c)?;
        let quarantined = self.consensus.store().tests(&c.repo)?.quarantined;
        let now = SystemTime::now();
        let mut failed_tests = Vec::new();
        let mut views_ = Vec::new();
        for j in &jobs {
            let mut attempts = Vec::new();
            for a in &j.attempts {
                attempts.push(AttemptView {
                    attempt: a.n,
                    host: a.host.to_string(),
                    started_at: views::rfc3339(a.started_at),
                    duration_secs: a
                        .finished_at
                        .unwrap_or(now)
                        .duration_since(a.started_at)
                        .unwrap_or_default()
                        .as_secs_f64(),
                    end: a.end.clone(),
                    exit: a.exit.as_ref().map(exit_text),
                    tests_passed: a.passed as usize,
                    tests_failed: a.failed as usize,
                    tests_skipped: a.skipped as usize,
                    notes: a.notes.clone(),
                    log_bytes: a.log_bytes,
                });
                if a.failed == 0 {
                    continue;
                }
                let results = self.consensus.store().results(j.id, a.n)?;
                for t in results.iter().filter(|t| t.outcome == TestOutcome::Failed) {
                    failed_tests.push(FailedTest {
                        name: t.name.clone(),
                        shard: j.shard().unwrap_or(0),
                        attempt: a.n,
                        host: a.host.to_string(),
                        message: t.message.clone(),
                        quarantined: quarantined.contains_key(&t.name),
                        flaky: c.flaky.contains(&t.name),
                    });
                }
            }
            let tests = match &j.kind {
                fifty_shared::wire::JobKind::Shard { tests, .. } => tests.len(),
                _ => 0,
            };
            views_.push(JobView {
                id: j.id,
                kind: j.kind_name().into(),
                shard: j.shard(),
                state: j.state,
                tests,
                attempts,
            });
        }
        Ok(CommitView {
            summary: self.summary(&c)?,
            notes: split_notes(&views_),
            jobs: views_,
            failed_tests,
            release: c.release,
            release_error: c.release_error.clone(),
        })
    }

    /// A job's output: live from this leader while it runs, else the recorded tail. `shard`
    /// None is the plan; `attempt` None is the last.
    pub fn commit_log(
        &self,
        sha: &str,
        repo: Option<&str>,
        shard: Option<u32>,
        package: bool,
        attempt: Option<u32>,
    ) -> Result<Vec<u8>, OpError> {
        let c = self.find_commit(sha, repo)?;
        let jobs = self.jobs_of(&c)?;
        let wanted = |j: &&JobRecord| match (package, shard) {
            (true, _) => j.kind_name() == "package",
            (false, None) => j.kind_name() == "plan",
            (false, Some(n)) => j.shard() == Some(n),
        };
        let Some(job) = jobs.iter().find(wanted) else {
            return Err(OpError::NotFound(match shard {
                Some(n) => format!(
                    "commit {} has no shard {n} (it has {})",
                    super::short(&c.sha),
                    jobs.len().saturating_sub(1)
                ),
                None if package => format!("commit {} has no package job (yet)", super::short(&c.sha)),
                None => format!("commit {} has no plan job", super::short(&c.sha)),
            }));
        };
        let Some(a) = (match attempt {
            Some(n) => job.attempts.iter().find(|a| a.n == n),
            None => job.attempts.last(),
        }) else {
            return Ok(b"(not started yet: the job is queued)\n".to_vec());
        };
        let r = fifty_shared::wire::JobRef { job: job.id, attempt: a.n };
        if a.end == AttemptEnd::Running {
            let live = self.ci.lock().expect("ci lock");
            let mut out = Vec::new();
            if let Some(log) = live.logs.get(&r) {
                let skipped = log.total - log.tail.len() as u64;
                if skipped > 0 {
                    out.extend(format!("[... {skipped} earlier bytes not kept by this coordinator ...]\n").as_bytes());
                }
                out.extend(log.tail.iter());
            }
            return Ok(out);
        }
        let tail = self.consensus.store().log(job.id, a.n)?.unwrap_or_default();
        let mut out = Vec::new();
        let skipped = a.log_bytes.saturating_sub(tail.len() as u64);
        if skipped > 0 {
            out.extend(format!("[... {skipped} earlier bytes not kept ...]\n").as_bytes());
        }
        out.extend(tail);
        Ok(out)
    }

    /// Quarantines a test of `repo`, or releases it.
    pub async fn quarantine(&self, repo: &str, test: &str, on: bool, by: &str) -> Result<(), OpError> {
        let record = self.repo(repo)?;
        if test.trim().is_empty() {
            return Err(OpError::BadRequest("test: give the test's name as its JUnit report names it".into()));
        }
        if test.len() > crate::ci::MAX_TEST_NAME {
            return Err(OpError::BadRequest(format!(
                "test: {} bytes; Fifty keeps test names of at most {} bytes (longer JUnit names are shortened \
                 with a hash: quarantine the name `fifty test list` shows)",
                test.len(),
                crate::ci::MAX_TEST_NAME
            )));
        }
        let cmd = Command::SetQuarantine {
            repo: record.name,
            test: test.to_string(),
            on,
            by: crate::ci::cut(by, crate::ci::MAX_WHO).to_string(),
            at: SystemTime::now(),
        };
        self.consensus.propose(cmd).await??;
        Ok(())
    }

    /// What the repository's history says about its tests.
    pub fn tests_view(&self, repo: &str) -> Result<TestsView, OpError> {
        let record = self.repo(repo)?;
        let book = self.consensus.store().tests(&record.name)?;
        let durations = self.consensus.store().durations(&record.name)?;
        let tests = slowest_first(&durations);
        Ok(TestsView {
            repo: record.name.to_string(),
            known: durations.len(),
            total_secs: durations.values().map(|d| d.as_secs_f64()).sum(),
            tests,
            quarantined: book.quarantined.into_iter().map(|(name, (by, at))| (name, by, views::rfc3339(at))).collect(),
            flaky: book.flaky.into_iter().map(|(name, (sha, at))| (name, sha, views::rfc3339(at))).collect(),
        })
    }
}

/// Tests by their last passing duration, slowest first (what a shard's time is made of, and
/// what is worth making faster); equal ones by name.
pub fn slowest_first(durations: &std::collections::BTreeMap<String, std::time::Duration>) -> Vec<views::TestTime> {
    let mut tests: Vec<views::TestTime> = durations
        .iter()
        .map(|(name, d)| views::TestTime { name: name.clone(), duration_secs: d.as_secs_f64() })
        .collect();
    tests.sort_by(|a, b| b.duration_secs.total_cmp(&a.duration_secs).then_with(|| a.name.cmp(&b.name)));
    tests
}

/// What a commit's shards say about how its suite was split: shards given no tests were split
/// by the test command itself, which only `[test] list` lets Fifty balance by past durations.
pub fn split_notes(jobs: &[JobView]) -> Vec<String> {
    let shards: Vec<&JobView> = jobs.iter().filter(|j| j.shard.is_some()).collect();
    if shards.len() < 2 || shards.iter().any(|j| j.tests > 0) {
        return Vec::new();
    }
    vec![format!(
        "its {} shards were split by the test command itself (FIFTY_SHARD_INDEX / FIFTY_SHARD_COUNT): sharding by \
         test duration needs `list` under [test] in fifty.toml, a command printing every test name",
        shards.len()
    )]
}

fn exit_text(e: &fifty_shared::wire::JobExit) -> String {
    match e {
        fifty_shared::wire::JobExit::Exited(code) => format!("exit {code}"),
        fifty_shared::wire::JobExit::TimedOut => "timed out".into(),
        fifty_shared::wire::JobExit::Failed(why) => format!("not run: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tests_list_slowest_first() {
        let durations = std::collections::BTreeMap::from([
            ("a_fast".to_string(), Duration::from_millis(20)),
            ("b_slow".to_string(), Duration::from_secs(9)),
            ("c_mid".to_string(), Duration::from_secs(1)),
            ("d_mid".to_string(), Duration::from_secs(1)),
        ]);
        let names: Vec<String> = slowest_first(&durations).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["b_slow", "c_mid", "d_mid", "a_fast"]);
    }
}
