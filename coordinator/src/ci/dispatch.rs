//! The leader's CI loop: the I/O shell around `scheduler`. Each round (on a wake-up, else every
//! half second) it re-queues jobs whose agent is lost, stops stale attempts agents still run,
//! gives queued jobs to free build agents and sends them over the agents' links. Results come back
//! through [`Coordinator::on_job_done`], which turns an agent's report into a `FinishJob` decision.
//!
//! A build agent is a host labelled `role=build` with a live link that reports; its `slots` label
//! (default 1) says how many jobs it runs at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fifty_shared::ids::HostName;
use fifty_shared::pipeline::Pipeline;
use fifty_shared::wire::{CoordinatorMsg, JobDone, JobExit, JobKind, JobRef, JobSpec};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::scheduler::{self, Agent, Report, Running, Waiting};
use super::{junit, shard, short, JobReport, JobState, TestPlan};
use crate::consensus::ConsensusError;
use crate::coordinator::Coordinator;
use crate::state::{Applied, Command};

/// How often the loop runs without a wake-up.
const ROUND: Duration = Duration::from_millis(500);

/// Runs the dispatcher until `shutdown`; it acts only while this node leads.
pub async fn run(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = coordinator.ci_wake.notified() => {}
            _ = tokio::time::sleep(ROUND) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !coordinator.consensus.status().is_leader() {
            continue;
        }
        if let Err(e) = round(&coordinator).await {
            warn!(error = %format!("{e:#}"), "CI dispatch round failed; retrying");
        }
    }
}

/// The slots a build host offers, from its labels.
fn slots(labels: &fifty_shared::ids::Labels) -> u32 {
    labels.get("slots").and_then(|s| s.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

async fn round(c: &Coordinator) -> anyhow::Result<()> {
    let store = c.consensus.store();
    let active = store.active_jobs()?;
    let now = Instant::now();

    // 1. Jobs whose agent is lost go back to the queue.
    let (running, reports) = {
        let live = c.ci.lock().expect("ci lock");
        let running: Vec<Running> = active
            .iter()
            .filter(|j| j.state == JobState::Running)
            .filter_map(|j| j.current().map(|a| (j, a)))
            .map(|(j, a)| {
                let job = JobRef { job: j.id, attempt: a.n };
                let sent = live.sent.get(&job).copied().unwrap_or(live.since);
                let timeout = match &j.kind {
                    JobKind::Shard { timeout, .. } | JobKind::Package { timeout, .. } => *timeout,
                    // `[test] list` is bounded by the agent (2 minutes), and so is git.
                    JobKind::Plan | JobKind::Revert { .. } => Duration::from_secs(120),
                };
                let overdue = SystemTime::now()
                    .duration_since(a.started_at)
                    .is_ok_and(|ran| ran > timeout + scheduler::OVERDUE_GRACE);
                Running { job, host: a.host.clone(), since: sent.max(live.since), overdue }
            })
            .collect();
        (running, live.reports.clone())
    };
    let down: Vec<HostName> = running.iter().map(|r| r.host.clone()).filter(|h| !c.host_ready(h)).collect();
    for (job, why) in scheduler::lost(&running, &down, &reports) {
        warn!(job = job.job, attempt = job.attempt, %why, "re-queueing a job whose agent is lost");
        match c.consensus.propose(Command::RequeueJob { job, why, at: SystemTime::now() }).await? {
            Ok(_) => {
                c.ci.lock().expect("ci lock").forget(job);
                if let Some(r) = running.iter().find(|r| r.job == job) {
                    c.send_to(&r.host, CoordinatorMsg::CancelJob(job));
                }
            }
            Err(e) => debug!(error = %e, "requeue not applied"),
        }
    }

    // 2. Attempts an agent holds that are no longer its: stop them.
    let current: HashMap<JobRef, HostName> = running.iter().map(|r| (r.job, r.host.clone())).collect();
    for (host, report) in &reports {
        for job in &report.jobs {
            if current.get(job) != Some(host) && report.at > now.checked_sub(Duration::from_secs(5)).unwrap_or(now) {
                let still_current =
                    store.job(job.job)?.is_some_and(|j| j.state == JobState::Running && j.runs(*job, host));
                if !still_current {
                    debug!(%host, job = job.job, attempt = job.attempt, "agent holds a stale attempt; cancelling it");
                    c.send_to(host, CoordinatorMsg::CancelJob(*job));
                }
            }
        }
    }

    // 3. Queued jobs to free build agents.
    let active = store.active_jobs()?;
    for state in [JobState::Queued, JobState::Running] {
        let n = active.iter().filter(|j| j.state == state).count();
        let label = vec![("state".to_string(), format!("{state:?}").to_lowercase())];
        c.metrics.ci_jobs.get_or_create(&label).set(n as i64);
    }
    let queue: Vec<Waiting> = active
        .iter()
        .filter(|j| j.state == JobState::Queued)
        .map(|j| Waiting { job: j.id, avoid: j.avoid.clone() })
        .collect();
    if queue.is_empty() {
        return Ok(());
    }
    let linked = c.linked_hosts();
    let mut busy: HashMap<HostName, u32> = HashMap::new();
    for j in active.iter().filter(|j| j.state == JobState::Running) {
        if let Some(a) = j.current() {
            *busy.entry(a.host.clone()).or_default() += 1;
        }
    }
    let mut agents = Vec::new();
    let mut all = Vec::new();
    for host in store.hosts()? {
        if host.labels.get("role") != Some("build") || !linked.contains(&host.name) || !c.host_ready(&host.name) {
            continue;
        }
        all.push(host.name.clone());
        let free = slots(&host.labels).saturating_sub(busy.get(&host.name).copied().unwrap_or(0));
        agents.push(Agent { host: host.name, free });
    }
    let picks = scheduler::assign(&queue, &agents, &all);
    if picks.is_empty() {
        return Ok(());
    }
    let Applied::Assigned(given) =
        c.consensus.propose(Command::AssignJobs { jobs: picks.clone(), at: SystemTime::now() }).await??
    else {
        anyhow::bail!("AssignJobs applied with an unexpected outcome");
    };
    for job in given {
        let Some(record) = store.job(job.job)? else { continue };
        let Some(host) = picks.iter().find(|(id, _)| *id == job.job).map(|(_, h)| h.clone()) else { continue };
        let Some(repo) = store.repo(&record.repo)? else { continue };
        let spec = JobSpec {
            job,
            repo: record.repo.clone(),
            url: repo.url,
            sha: record.sha.clone(),
            kind: record.kind.clone(),
        };
        c.ci.lock().expect("ci lock").sent.insert(job, Instant::now());
        c.metrics.jobs_dispatched.inc();
        let what = match &record.kind {
            JobKind::Plan => "plan".to_string(),
            JobKind::Package { .. } => "package".to_string(),
            JobKind::Shard { index, count, .. } => format!("shard {index}/{count}"),
            JobKind::Revert { revert, .. } => format!("revert {}", short(revert)),
        };
        info!(%host, job = job.job, attempt = job.attempt, repo = %record.repo, sha = short(&record.sha), %what, "job dispatched");
        if !c.send_to(&host, CoordinatorMsg::RunJob(spec)) {
            // The link just went; the lost-agent check re-queues it.
            warn!(%host, job = job.job, "the agent's link closed before the job was sent");
        }
    }
    Ok(())
}

impl Coordinator {
    /// An agent's heartbeat listed the jobs it holds.
    pub fn on_job_report(&self, host: &HostName, jobs: Vec<JobRef>) {
        let mut live = self.ci.lock().expect("ci lock");
        let had = live.reports.get(host).map(|r| r.jobs.len()).unwrap_or(0);
        let changed = had != jobs.len();
        live.reports.insert(host.clone(), Report { at: Instant::now(), jobs });
        drop(live);
        if changed {
            self.ci_wake.notify_one();
        }
    }

    /// A chunk of a running job's output.
    /// Live output of a running job, kept only from the host running that attempt (so a host
    /// can neither write into another's log nor hold the leader's memory with made-up jobs: there
    /// are as many live logs as running attempts).
    pub fn on_job_output(&self, host: &HostName, job: JobRef, offset: u64, data: &[u8]) {
        match self.consensus.store().job(job.job) {
            Ok(Some(record)) if record.runs(job, host) => {
                self.ci.lock().expect("ci lock").on_output(job, offset, data);
            }
            Ok(_) => {
                debug!(job = job.job, attempt = job.attempt, %host, "output of an attempt this host does not run; dropped")
            }
            Err(e) => warn!(error = %e, "cannot read the job some output is for"),
        }
    }

    /// A job's result: record it, then acknowledge it to the agent. A result of an attempt that
    /// is no longer running (a re-sent one, or one given to another agent since) is acknowledged
    /// and dropped.
    pub async fn on_job_done(&self, host: &HostName, done: JobDone, tx: &mpsc::UnboundedSender<CoordinatorMsg>) {
        let job = done.job;
        let record = match self.consensus.store().job(job.job) {
            Ok(r) => r,
            Err(e) => return warn!(error = %e, "cannot read the job a result is for"),
        };
        let Some(record) = record.filter(|r| r.runs(job, host)) else {
            debug!(job = job.job, attempt = job.attempt, "result of an attempt that is not running; dropped");
            let _ = tx.send(CoordinatorMsg::JobDoneAck(job));
            return;
        };
        let report = if matches!(record.kind, JobKind::Package { .. }) {
            match self.package_report(&record, &done).await {
                Ok(outcome) => {
                    if let Err(why) = &outcome {
                        warn!(job = job.job, %why, "packaging failed");
                    }
                    JobReport::Package { outcome }
                }
                Err(e) => return warn!(error = %e, "could not record the artifact yet; the agent will send it again"),
            }
        } else if matches!(record.kind, JobKind::Revert { .. }) {
            JobReport::Revert { outcome: done.revert.clone().unwrap_or(Err("the agent reported no revert".into())) }
        } else {
            match self.job_report(&record.kind, &record.repo, &record.sha, &done) {
                Ok(r) => r,
                Err(e) => return warn!(error = %e, "cannot read the test history"),
            }
        };
        let command =
            Command::FinishJob { job, host: host.clone(), report, log_tail: done.log_tail, at: SystemTime::now() };
        // A proposal can time out while an election settles; the agent keeps the result until it
        // is acknowledged, and re-sends it on its next link.
        for _ in 0..3 {
            match self.consensus.propose(command.clone()).await {
                Ok(out) => {
                    if let Err(e) = out {
                        debug!(error = %e, "result not applied");
                    }
                    let _ = tx.send(CoordinatorMsg::JobDoneAck(job));
                    self.ci.lock().expect("ci lock").forget(job);
                    self.ci_wake.notify_one();
                    return;
                }
                Err(ConsensusError::Store(e)) => return warn!(error = %e, "storage failed recording a job result"),
                Err(e) => {
                    warn!(error = %e, "could not record a job result yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Turns an agent's report into what the log records: a plan's test plan and shards (split
    /// by the repository's history), or a shard's parsed JUnit.
    fn job_report(
        &self,
        kind: &JobKind,
        repo: &fifty_shared::ids::RepoName,
        sha: &str,
        done: &JobDone,
    ) -> Result<JobReport, crate::store::StoreError> {
        Ok(match kind {
            JobKind::Plan => {
                let found = done.plan.clone();
                let (subject, author) =
                    found.as_ref().map(|p| (p.subject.clone(), p.author.clone())).unwrap_or_default();
                let outcome = match (&done.exit, found) {
                    (JobExit::Failed(why), _) => Err(format!("could not check the commit out: {why}")),
                    (JobExit::TimedOut, _) => Err("[test] list timed out".into()),
                    (JobExit::Exited(code), _) if *code != 0 => Err(format!("[test] list exited with status {code}")),
                    (_, None) => Err("the plan job reported nothing".into()),
                    (_, Some(found)) => match found.pipeline {
                        None => Err(format!(
                            "{} not found at the root of the repository at {}",
                            fifty_shared::pipeline::FILE_NAME,
                            short(sha)
                        )),
                        Some(text) => match Pipeline::parse(&text) {
                            Err(e) => Err(e.to_string()),
                            Ok(p) => {
                                let history = self.consensus.store().durations(repo)?;
                                let shards = shard::split(&found.tests, &history, p.test.shards);
                                let service = p.deploy.as_ref().map(|d| fifty_shared::wire::ServiceOrder {
                                    run: d.run.clone(),
                                    restart: d.restart.clone(),
                                    health_url: d.health.url.clone(),
                                    health_timeout: d.health.timeout,
                                    keep_releases: d.keep_releases,
                                    metrics: p.immune.as_ref().map(|i| i.order()),
                                });
                                let deploy = p.deploy.as_ref().map(|d| crate::deploy::DeployPlan {
                                    hosts: d.hosts.clone(),
                                    waves: d.parsed_waves().into_iter().map(Into::into).collect(),
                                    bake: d.bake,
                                    auto: d.auto,
                                    max_unavailable: d.max_unavailable.clone(),
                                    progress_deadline: d.progress_deadline,
                                    immune: p.immune.as_ref().map(crate::deploy::ImmunePlan::from_step),
                                });
                                let package = p.package.as_ref().map(|k| super::PackagePlan {
                                    command: k.command.clone(),
                                    artifact: k.artifact.clone(),
                                    timeout: k.timeout,
                                });
                                let plan = TestPlan {
                                    command: p.test.command,
                                    timeout: p.test.timeout,
                                    junit: p.test.junit,
                                    retries: p.test.retries,
                                    package,
                                    deploy,
                                    service,
                                };
                                Ok((plan, shards))
                            }
                        },
                    },
                };
                JobReport::Plan { subject, author, outcome }
            }
            JobKind::Package { .. } | JobKind::Revert { .. } => {
                unreachable!("package and revert results are handled by on_job_done")
            }
            JobKind::Shard { tests: listed, .. } => {
                let (mut tests, mut notes) = junit::parse(&done.junit);
                junit::name_as_listed(&mut tests, listed);
                notes.extend(done.junit_note.clone());
                JobReport::Shard { exit: done.exit.clone(), tests, notes, log_bytes: done.log_bytes }
            }
        })
    }
}
