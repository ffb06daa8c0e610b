//! The leader's deploy loop, the I/O shell around `rollout`: each round (on a wake-up, else every
//! half second) it steps every active rollout with what the hosts report, starts the queued
//! release of an idle target, and sends each host whose target release differs from what it runs
//! the signed order to switch. Also here: turning a package job's upload into a release, serving
//! artifacts to agents, and the operations behind `fifty rollout ...` and `fifty rollback`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fifty_shared::codec;
use fifty_shared::ids::{HostName, RepoName};
use fifty_shared::pieces::{PieceTable, SignedPieceTable, PIECE_SIZE};
use fifty_shared::wire::{
    ArtifactInfo, CoordinatorMsg, DeployOrder, JobDone, JobExit, JobRef, ReleaseManifest, ARTIFACT_CHUNK,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::rollout::{HostView, Kind, Rollout, Step};
use super::upload::{FetchGrants, Uploads};
use super::{selects, ReleaseRecord};
use crate::ci::{CommitRecord, JobRecord};
use crate::coordinator::{Coordinator, OpError};
use crate::immune::judge::Call;
use crate::state::{Command, Rejection};
use crate::store::StoreError;

/// How often the loop runs without a wake-up.
const ROUND: Duration = Duration::from_millis(500);
/// How long before an order not yet acted on is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(10);

/// The leader's soft deploy state: uploads in progress, fetch permissions and orders sent.
#[derive(Default)]
pub struct Live {
    /// Artifact bytes received so far, by package job attempt (bounded, owned by the uploader).
    pub uploads: Uploads,
    /// Which host may fetch which artifact, as last decided.
    pub fetch_grants: FetchGrants,
    /// The last order sent to each host, and when.
    pub sent: HashMap<HostName, (u64, Instant)>,
    /// Signed piece tables made from this coordinator's blobs.
    pub piece_tables: PieceTables,
}

/// The signed piece tables made lately, newest last; at most [`PieceTables::KEEP`] (a table is
/// made again from the blob when needed).
#[derive(Default)]
pub struct PieceTables(Vec<(String, Arc<SignedPieceTable>)>);

impl PieceTables {
    /// How many tables are kept.
    pub const KEEP: usize = 32;

    /// The table of `digest`, if kept.
    pub fn get(&self, digest: &str) -> Option<Arc<SignedPieceTable>> {
        self.0.iter().find(|(d, _)| d == digest).map(|(_, t)| t.clone())
    }

    /// Keeps the table of `digest`, forgetting the oldest beyond [`PieceTables::KEEP`].
    pub fn put(&mut self, digest: &str, table: Arc<SignedPieceTable>) {
        self.0.retain(|(d, _)| d != digest);
        self.0.push((digest.to_string(), table));
        if self.0.len() > Self::KEEP {
            self.0.remove(0);
        }
    }
}

/// Runs the deploy loop until `shutdown`; it acts only while this node leads.
pub async fn run(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = coordinator.deploy_wake.notified() => {}
            _ = tokio::time::sleep(ROUND) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !coordinator.consensus.status().is_leader() {
            // Soft state is the leader's: a node that leads again starts from fresh reports.
            *coordinator.immune.lock().expect("immune lock") = Default::default();
            continue;
        }
        if let Err(e) = round(&coordinator).await {
            warn!(error = %format!("{e:#}"), "deploy round failed; retrying");
        }
    }
}

fn log_events(before: Option<&Rollout>, after: &Rollout) {
    let seen = before.map(|r| r.events.len()).unwrap_or(0);
    for (_, what) in after.events.iter().skip(seen) {
        info!(rollout = after.id, repo = %after.repo, release = after.release, "{what}");
    }
}

async fn round(c: &Coordinator) -> anyhow::Result<()> {
    // An upload whose host went quiet (it died, or never meant to finish) is forgotten.
    c.deploy.lock().expect("deploy lock").uploads.expire(Instant::now());
    let store = c.consensus.store();
    let views = c.host_views()?;
    let now = SystemTime::now();
    let mut active = Vec::new();
    for repo in store.repos()? {
        let target = store.target(&repo.name)?;
        if let Some(id) = target.active {
            let Some(rollout) = store.rollout(id)? else { continue };
            // A newer release takes over a deploy still moving forward (see `superseded_by`).
            if let Some(release) = target.queued.filter(|q| rollout.superseded_by(*q)) {
                if let Err(e) = c.start_rollout(release, Kind::Deploy, None).await {
                    warn!(error = %e, release, "could not start the rollout");
                }
                continue;
            }
            active.push(id);
            let plan = store.release(rollout.release)?.and_then(|r| r.plan.immune);
            // What the previous leader recorded of this wave's tests, to continue them.
            let recorded = store.evidence(&rollout.repo)?.filter(|e| e.rollout == rollout.id);
            let (call, evidence, samples) = {
                let mut live = c.immune.lock().expect("immune lock");
                let crate::immune::Live { series, judge } = &mut *live;
                if let Some(recorded) = &recorded {
                    judge.resume(&rollout, plan.as_ref(), recorded, now);
                }
                match store.spread(&rollout.repo) {
                    Ok(learned) => judge.learn(&rollout.repo, learned),
                    // Judged with what the judge had (or the fixed floor) rather than not at all.
                    Err(e) => warn!(error = %e, repo = %rollout.repo, "the learned spreads could not be read"),
                }
                let call = judge.judge(&rollout, plan.as_ref(), series, now);
                let evidence = match (&call, &plan) {
                    (Call::Judge(_), Some(plan)) => judge.evidence_due(&rollout, plan, now),
                    _ => None,
                };
                let samples = judge.spread_samples(&rollout, &call);
                (call, evidence, samples)
            };
            if !samples.is_empty() {
                // The wave is judged: what its baseline hosts say about the spread of hosts'
                // changes joins the repository's learned spreads (`immune::spread`).
                let cmd = Command::LearnSpread {
                    repo: rollout.repo.clone(),
                    rollout: rollout.id,
                    wave: rollout.wave as u64,
                    samples,
                };
                match c.consensus.propose(cmd).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, rollout = rollout.id, "the learned spread was refused"),
                    // A rolling upgrade: nothing is learned until every voter knows the command.
                    Err(e @ crate::consensus::ConsensusError::NotUpgraded { .. }) => {
                        tracing::debug!(error = %e, "the learned spread is not replicated yet")
                    }
                    Err(e) => warn!(error = %e, rollout = rollout.id, "the learned spread was not recorded"),
                }
            }
            if let Some(evidence) = evidence {
                match c.consensus.propose(Command::ImmuneEvidence { evidence }).await {
                    Ok(Ok(_)) => {}
                    // The wave moved on meanwhile: nothing to keep.
                    Ok(Err(Rejection::RolloutConflict(_))) => {}
                    Ok(Err(e)) => warn!(error = %e, rollout = rollout.id, "the immune system's evidence was refused"),
                    // During a rolling upgrade the evidence is not replicated: a failover then
                    // starts the wave's tests again, as older versions did. Said each time at
                    // debug only: it is expected until every coordinator is upgraded.
                    Err(e @ crate::consensus::ConsensusError::NotUpgraded { .. }) => {
                        tracing::debug!(error = %e, "the immune system's evidence is not replicated yet")
                    }
                    Err(e) => warn!(error = %e, rollout = rollout.id, "the immune system's evidence was not recorded"),
                }
            }
            let judgement = match call {
                Call::Judge(j) => j,
                Call::Revert { why, evidence } => {
                    if let Err(e) = c.immune_revert(&rollout, &why, evidence, now).await {
                        warn!(error = %e, rollout = rollout.id, "the immune system's revert was not applied; judging again");
                    }
                    continue;
                }
            };
            if let Some(step) = rollout.step(&views, &judgement, now) {
                log_events(Some(&rollout), &step.rollout);
                let cmd = Command::StepRollout { rollout: step.rollout, targets: step.targets, at: now };
                if let Err(e) = c.consensus.propose(cmd).await? {
                    warn!(error = %e, "rollout step not applied");
                }
            }
        } else if let Some(release) = target.queued {
            match c.start_rollout(release, Kind::Deploy, None).await {
                Ok(_) => {}
                Err(e) => warn!(error = %e, release, "could not start the rollout"),
            }
        }
    }
    c.immune.lock().expect("immune lock").judge.retain(&active);
    converge(c, &views)?;
    Ok(())
}

/// Sends every host whose target release differs from what it runs (and is not already applying,
/// and did not already fail) the order to switch.
fn converge(c: &Coordinator, views: &HashMap<HostName, HostView>) -> Result<(), StoreError> {
    let store = c.consensus.store();
    for t in store.host_targets()? {
        let Some(view) = views.get(&t.host) else { continue };
        let report = c.release_report(&t.host);
        if !view.up
            || report.current == Some(t.release)
            || report.applying.is_some_and(|(r, _)| r == t.release)
            || report.failed.as_ref().is_some_and(|(r, _)| *r == t.release)
        {
            continue;
        }
        let recently = c
            .deploy
            .lock()
            .expect("deploy lock")
            .sent
            .get(&t.host)
            .is_some_and(|(r, at)| *r == t.release && at.elapsed() < RESEND_AFTER);
        if recently {
            continue;
        }
        let Some(release) = store.release(t.release)? else { continue };
        let order = DeployOrder { release: release.id, manifest: release.manifest, signature: release.signature };
        if c.send_to(&t.host, CoordinatorMsg::Deploy(order)) {
            info!(host = %t.host, release = t.release, "deploy order sent");
            c.deploy.lock().expect("deploy lock").sent.insert(t.host.clone(), (t.release, Instant::now()));
        }
    }
    Ok(())
}

impl Coordinator {
    /// What the leader sees of every enrolled host now.
    pub(crate) fn host_views(&self) -> Result<HashMap<HostName, HostView>, StoreError> {
        let mut out = HashMap::new();
        for h in self.consensus.store().hosts()? {
            let r = self.release_report(&h.name);
            let view = HostView {
                up: self.host_ready(&h.name),
                reported: self.fleet_has_beat(&h.name),
                current: r.current,
                healthy: r.healthy,
                failed: r.failed,
                applying: r.applying.map(|(release, _)| release),
            };
            out.insert(h.name, view);
        }
        Ok(out)
    }

    /// Starts a rollout of `release` (`Kind::Rollback`: every host at once, superseding the
    /// active rollout; `Kind::Deploy` of a newer release supersedes a deploy still moving forward,
    /// moving its hosts first); `by` names who asked, if a person did.
    pub async fn start_rollout(&self, release: u64, kind: Kind, by: Option<&str>) -> Result<Rollout, OpError> {
        let store = self.consensus.store();
        let Some(record) = store.release(release)? else {
            return Err(OpError::NotFound(format!("no release {release}; see `fifty releases`")));
        };
        let target = store.target(&record.repo)?;
        let active = match target.active {
            Some(id) => store.rollout(id)?.filter(|r| !r.finished()),
            None => None,
        };
        let previous = match (kind, &active) {
            (Kind::Deploy, _) => target.last_good.filter(|g| *g != release),
            (Kind::Rollback, Some(a)) => Some(a.release),
            (Kind::Rollback, None) => target.last_good,
        }
        .filter(|p| *p != release);
        let mut hosts: Vec<HostName> =
            store.hosts()?.into_iter().filter(|h| selects(&record.plan.hosts, &h.labels)).map(|h| h.name).collect();
        hosts.sort();
        let unavailable = parse_unavailable(&record.plan.max_unavailable, hosts.len());
        let superseded = active.filter(|a| kind == Kind::Deploy && a.superseded_by(release));
        let (hosts, waves) = match &superseded {
            Some(a) => a.carry_over(hosts, record.plan.waves.clone()),
            None => (hosts, record.plan.waves.clone()),
        };
        let id = store.counters()?.last_rollout + 1;
        let now = SystemTime::now();
        let Step { mut rollout, targets } = Rollout::start(
            id,
            record.repo.clone(),
            kind,
            release,
            previous,
            hosts,
            waves,
            record.plan.bake,
            unavailable,
            record.plan.progress_deadline,
            now,
        );
        if let Some(a) = &superseded {
            let moved: Vec<String> =
                targets.iter().filter(|(h, _)| a.touched().contains(h)).map(|(h, _)| h.to_string()).collect();
            let what = format!("supersedes rollout {} of release {}", a.id, a.release);
            let what = match moved.is_empty() {
                true => what,
                false => {
                    let verb = if moved.len() == 1 { "moves" } else { "move" };
                    format!("{what}; {} {verb} to release {release} first", moved.join(", "))
                }
            };
            rollout.say(now, what);
        }
        match crate::immune::judge::watched(&rollout, record.plan.immune.as_ref()) {
            Ok(()) => {
                let immune = record.plan.immune.as_ref().expect("watched");
                let names: Vec<&str> = immune.metrics.iter().map(|m| m.name.as_str()).collect();
                rollout.watch = Some(immune.watch);
                rollout.say(
                    now,
                    format!(
                        "immune system watching {} against release {}; the last wave is watched for {}",
                        names.join(", "),
                        rollout.previous.unwrap_or_default(),
                        humantime::format_duration(immune.watch)
                    ),
                );
            }
            Err(why) if kind == Kind::Deploy && !rollout.finished() => {
                rollout.say(now, format!("immune system not watching: {why}"))
            }
            Err(_) => {}
        }
        self.consensus.propose(Command::StartRollout { rollout: rollout.clone(), targets, at: now }).await??;
        if let Some(by) = by {
            info!(rollout = id, release, %by, "{kind:?} started by hand");
        }
        log_events(None, &rollout);
        self.deploy_wake.notify_one();
        Ok(rollout)
    }

    /// The immune system's decision (see `Command::ImmuneRevert`): builds the incident with the
    /// story so far and proposes the whole revert as one entry.
    async fn immune_revert(
        &self,
        rollout: &Rollout,
        why: &str,
        evidence: Vec<String>,
        now: SystemTime,
    ) -> Result<(), OpError> {
        let store = self.consensus.store();
        let step = rollout.revert(why, now).map_err(OpError::BadRequest)?;
        let release = store.release(rollout.release)?.ok_or_else(|| OpError::NotFound("the release is gone".into()))?;
        let repo = store.repo(&rollout.repo)?.ok_or_else(|| OpError::NotFound("the repository is gone".into()))?;
        let commit = store.commit_by_sha(&rollout.repo, &release.sha)?;
        let short = crate::ci::short(&release.sha).to_string();
        let mut timeline = Vec::new();
        if let Some(c) = &commit {
            let by = if c.author.is_empty() { String::new() } else { format!(" by {}", c.author) };
            timeline.push((c.notified_at, format!("commit {short} \"{}\"{by} pushed to {}", c.subject, c.branch)));
            if let Some(done) = c.finished_at {
                let shards = c.jobs.len().saturating_sub(2);
                timeline.push((done, format!("tests passed ({shards} shards); packaged")));
            }
        }
        timeline.push((release.created_at, format!("release {} built and signed", release.id)));
        timeline.extend(rollout.events.iter().map(|(t, e)| (*t, format!("rollout {}: {e}", rollout.id))));
        let previous = rollout.previous.unwrap_or_default();
        timeline.push((
            now,
            format!("immune system: {why}; reverting {} hosts to release {previous} at once", rollout.touched().len()),
        ));
        let incident = crate::incidents::IncidentRecord {
            id: 0,
            repo: Some(rollout.repo.clone()),
            branch: repo.branch.clone(),
            title: format!("immune system reverted {short}: {why}"),
            opened_at: now,
            sha: release.sha.clone(),
            subject: release.subject.clone(),
            release: release.id,
            previous,
            rollout: rollout.id,
            reason: why.to_string(),
            evidence,
            revert_job: None,
            revert: None,
            timeline,
            whys: Vec::new(),
            actions: Vec::new(),
            closed: None,
            alert: None,
        };
        tracing::error!(rollout = rollout.id, release = release.id, sha = %short, %why, "immune system: reverting the release");
        log_events(Some(rollout), &step.rollout);
        let cmd = Command::ImmuneRevert { rollout: step.rollout, targets: step.targets, incident, at: now };
        self.consensus.propose(cmd).await??;
        self.deploy_wake.notify_one();
        self.ci_wake.notify_one();
        self.notify_wake.notify_one();
        Ok(())
    }

    /// The active rollout of `repo` (or of the only repository that has one).
    pub(crate) fn active_rollout(&self, repo: Option<&str>) -> Result<Rollout, OpError> {
        let store = self.consensus.store();
        let repos: Vec<RepoName> = match repo {
            Some(r) => vec![self.repo(r)?.name],
            None => store.repos()?.into_iter().map(|r| r.name).collect(),
        };
        let mut active = Vec::new();
        for r in repos {
            if let Some(id) = store.target(&r)?.active {
                active.extend(store.rollout(id)?.filter(|r| !r.finished()));
            }
        }
        match active.len() {
            0 => Err(OpError::NotFound("no rollout is in progress".into())),
            1 => Ok(active.remove(0)),
            _ => Err(OpError::BadRequest("rollouts are in progress for several repositories; give --repo".into())),
        }
    }

    /// `promote`, `pause`, `resume` or `abort` on the active rollout.
    pub async fn steer_rollout(&self, repo: Option<&str>, action: &str, by: &str) -> Result<Rollout, OpError> {
        let rollout = self.active_rollout(repo)?;
        let now = SystemTime::now();
        let step = match action {
            "promote" => rollout.promote(by, now),
            "pause" => rollout.set_paused(true, by, now),
            "resume" => rollout.set_paused(false, by, now),
            "abort" => rollout.abort(by, now),
            other => return Err(OpError::BadRequest(format!("unknown rollout action {other:?}"))),
        }
        .map_err(OpError::BadRequest)?;
        log_events(Some(&rollout), &step.rollout);
        let cmd = Command::StepRollout { rollout: step.rollout.clone(), targets: step.targets, at: now };
        self.consensus.propose(cmd).await??;
        self.deploy_wake.notify_one();
        Ok(step.rollout)
    }

    /// `fifty rollback [--to RELEASE]`: every host of the repository to a known-good release at
    /// once. Without `to`: the release the active rollout started from, else the last release that
    /// fully rolled out before the current one.
    pub async fn rollback(&self, repo: Option<&str>, to: Option<u64>, by: &str) -> Result<Rollout, OpError> {
        let store = self.consensus.store();
        let release = match to {
            Some(r) => r,
            None => {
                if let Ok(active) = self.active_rollout(repo) {
                    active.previous.ok_or_else(|| {
                        OpError::BadRequest("the rollout in progress has no previous release to go back to".into())
                    })?
                } else {
                    let repo = match repo {
                        Some(r) => self.repo(r)?.name,
                        None => {
                            let with_target: Vec<RepoName> = store
                                .repos()?
                                .into_iter()
                                .map(|r| r.name)
                                .filter(|r| store.target(r).is_ok_and(|t| t.last_good.is_some()))
                                .collect();
                            match with_target.as_slice() {
                                [one] => one.clone(),
                                [] => return Err(OpError::NotFound("nothing was deployed yet".into())),
                                _ => {
                                    return Err(OpError::BadRequest("several repositories deploy; give --repo".into()))
                                }
                            }
                        }
                    };
                    let current = store.target(&repo)?.last_good;
                    let earlier = store
                        .rollouts()?
                        .into_iter()
                        .rev()
                        .filter(|r| r.repo == repo && r.outcome == Some(super::Outcome::Succeeded))
                        .map(|r| r.release)
                        .find(|r| Some(*r) != current);
                    earlier
                        .ok_or_else(|| OpError::NotFound("no earlier good release to roll back to; give --to".into()))?
                }
            }
        };
        self.start_rollout(release, Kind::Rollback, Some(by)).await
    }

    /// A chunk of a package job's artifact from `host`: kept only if `host` runs that attempt of
    /// a package job (see [`Uploads`] for the bounds). A refused chunk is dropped; the job's
    /// result then says the upload is incomplete.
    pub fn on_artifact_chunk(&self, host: &HostName, job: JobRef, offset: u64, data: &[u8]) {
        let runs_job = || match self.consensus.store().job(job.job) {
            Ok(Some(record)) => {
                matches!(record.kind, fifty_shared::wire::JobKind::Package { .. }) && record.runs(job, host)
            }
            Ok(None) => false,
            Err(e) => {
                warn!(error = %e, "cannot read the job an artifact chunk is for");
                false
            }
        };
        let refused = self.deploy.lock().expect("deploy lock").uploads.on_chunk(
            host,
            job,
            offset,
            data,
            Instant::now(),
            runs_job,
        );
        if let Err(why) = refused {
            warn!(%host, %why, "artifact chunk refused");
        }
    }

    /// Whether `host` may fetch the artifact `digest`: a build host, or a host that a release with
    /// that artifact targets (its `HostTarget`, or the hosts of an active rollout of it or back
    /// to it).
    fn may_fetch(&self, host: &HostName, digest: &str) -> Result<bool, StoreError> {
        let store = self.consensus.store();
        if store.host(host)?.is_some_and(|h| h.labels.get("role") == Some("build")) {
            return Ok(true);
        }
        let holds = |release: u64| -> Result<bool, StoreError> {
            Ok(store.release(release)?.is_some_and(|r| r.digest == digest))
        };
        for t in store.host_targets()? {
            if t.host == *host && holds(t.release)? {
                return Ok(true);
            }
        }
        for repo in store.repos()? {
            let Some(id) = store.target(&repo.name)?.active else { continue };
            let Some(rollout) = store.rollout(id)? else { continue };
            if rollout.hosts.contains(host)
                && (holds(rollout.release)? || rollout.previous.map(holds).transpose()? == Some(true))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Why `host` may not fetch artifact `digest` now, if it may not: no release with it
    /// targets the host (or storage failed to say).
    fn fetch_refusal(&self, host: &HostName, digest: &str) -> Option<String> {
        let mut failed = None;
        let allowed =
            self.deploy.lock().expect("deploy lock").fetch_grants.allowed(host, digest, Instant::now(), || {
                self.may_fetch(host, digest).unwrap_or_else(|e| {
                    failed = Some(e);
                    false
                })
            });
        if let Some(e) = failed {
            return Some(format!("storage: {e}"));
        }
        if !allowed {
            warn!(%host, %digest, "artifact fetch refused: no release with it targets this host");
            return Some(format!("no release with artifact {digest} targets host {host}"));
        }
        None
    }

    /// The recorded size of artifact `digest`, once this coordinator holds it whole (fetched
    /// from a peer first if it lacks it).
    async fn held_artifact(&self, digest: &str) -> Result<u64, String> {
        let store = self.consensus.store();
        let total = match store.blob_size(digest) {
            Ok(Some(t)) => t,
            Ok(None) => return Err(format!("no artifact {digest} is stored")),
            Err(e) => return Err(format!("storage: {e}")),
        };
        if !matches!(store.blobs().size(digest), Ok(Some(t)) if t == total) {
            if let Err(e) = super::artifacts::ensure_local(&self.consensus, digest, total, None).await {
                return Err(format!("this coordinator lacks artifact {digest} and no peer sent it: {e:#}"));
            }
        }
        Ok(total)
    }

    /// Answers `host`'s download request with the next piece of an artifact, if it may have it,
    /// from this coordinator's blob store (fetching the artifact from a peer first if it lacks it).
    pub async fn serve_artifact(&self, host: &HostName, digest: &str, offset: u64) -> CoordinatorMsg {
        let missing = |why: String| CoordinatorMsg::ArtifactData {
            digest: digest.to_string(),
            offset,
            total: 0,
            data: Vec::new(),
            missing: Some(why),
        };
        if let Some(why) = self.fetch_refusal(host, digest) {
            return missing(why);
        }
        let total = match self.held_artifact(digest).await {
            Ok(t) => t,
            Err(why) => return missing(why),
        };
        if offset >= total {
            return missing(format!("offset {offset} is past the end of the artifact ({total} bytes)"));
        }
        // Up to the next chunk boundary: the agent asks for chunk-aligned pieces after the first.
        let upto = ARTIFACT_CHUNK - (offset % ARTIFACT_CHUNK as u64) as usize;
        match self.consensus.store().blobs().read_at(digest, offset, upto) {
            Ok(Some((t, data))) if t == total && !data.is_empty() => {
                CoordinatorMsg::ArtifactData { digest: digest.to_string(), offset, total, data, missing: None }
            }
            Ok(_) => missing(format!("artifact {digest} is not stored whole here")),
            Err(e) => missing(format!("blob store: {e}")),
        }
    }

    /// The signed piece table of artifact `digest` for `host` (a download stream's first
    /// request), if it may fetch the artifact.
    pub async fn download_piece_table(&self, host: &HostName, digest: &str) -> Result<Arc<SignedPieceTable>, String> {
        if let Some(why) = self.fetch_refusal(host, digest) {
            return Err(why);
        }
        self.piece_table(digest).await
    }

    /// Piece `index` of artifact `digest` for `host`, if it may fetch the artifact.
    pub async fn download_piece(&self, host: &HostName, digest: &str, index: u32) -> Result<Vec<u8>, String> {
        if let Some(why) = self.fetch_refusal(host, digest) {
            return Err(why);
        }
        let total = self.held_artifact(digest).await?;
        let count = PieceTable::count_for(total, PIECE_SIZE);
        if index >= count {
            return Err(format!("artifact {digest} has {count} pieces; there is no piece {index}"));
        }
        let start = u64::from(index) * u64::from(PIECE_SIZE);
        let store = self.consensus.store().clone();
        let d = digest.to_string();
        let read = tokio::task::spawn_blocking(move || store.blobs().read_at(&d, start, PIECE_SIZE as usize)).await;
        match read {
            Ok(Ok(Some((t, data)))) if t == total => Ok(data),
            Ok(Ok(_)) => Err(format!("artifact {digest} is not stored whole here")),
            Ok(Err(e)) => Err(format!("blob store: {e}")),
            Err(e) => Err(format!("read a piece: {e}")),
        }
    }

    /// The piece table of a held artifact, signed with the cluster's release key: made once per
    /// artifact from the blob's bytes (refused if they no longer hash to its digest) and kept.
    pub async fn piece_table(&self, digest: &str) -> Result<Arc<SignedPieceTable>, String> {
        if let Some(t) = self.deploy.lock().expect("deploy lock").piece_tables.get(digest) {
            return Ok(t);
        }
        let total = self.held_artifact(digest).await?;
        let store = self.consensus.store().clone();
        let d = digest.to_string();
        let table = match tokio::task::spawn_blocking(move || store.blobs().piece_table(&d, PIECE_SIZE)).await {
            Ok(Ok(Some(t))) => t,
            Ok(Ok(None)) => return Err(format!("artifact {digest} is not stored here")),
            Ok(Err(e)) => return Err(format!("blob store: {e}")),
            Err(e) => return Err(format!("hash the artifact: {e}")),
        };
        if table.digest != digest || table.size != total {
            error!(%digest, actual = %table.digest, "a stored artifact no longer matches its digest (damaged on disk)");
            return Err(format!(
                "artifact {digest} stored on this coordinator is damaged: its bytes hash to {}",
                table.digest
            ));
        }
        let encoded = table.encode().map_err(|e| format!("encode the piece table: {e}"))?;
        let key = self.release_key().map_err(|e| format!("storage: {e}"))?;
        let Some(key) = key else { return Err("the cluster has no release key yet".into()) };
        let signature = key.sign(&PieceTable::signed_message(&encoded)).as_ref().to_vec();
        let signed = Arc::new(SignedPieceTable { table: encoded, signature });
        self.deploy.lock().expect("deploy lock").piece_tables.put(digest, signed.clone());
        Ok(signed)
    }

    /// Turns a package job's result into a release: checks the uploaded bytes against the
    /// digest, writes them to this coordinator's blob store, has a quorum of coordinators hold
    /// them and records that through Raft (digest and size only) before the release is
    /// recorded, and signs the manifest.
    pub(crate) async fn package_report(
        &self,
        job: &JobRecord,
        done: &JobDone,
    ) -> Result<Result<ReleaseRecord, String>, OpError> {
        let Some(host) = job.current().map(|a| a.host.clone()) else {
            return Ok(Err("the package job is not running".into()));
        };
        let uploaded = self.deploy.lock().expect("deploy lock").uploads.take(done.job, &host);
        match &done.exit {
            JobExit::Exited(0) => {}
            JobExit::Exited(code) => return Ok(Err(format!("the package command exited with status {code}"))),
            JobExit::TimedOut => return Ok(Err("the package command timed out".into())),
            JobExit::Failed(why) => return Ok(Err(why.clone())),
        }
        let Some(ArtifactInfo { digest, size }) = done.artifact.clone() else {
            return Ok(Err("the package job reported no artifact".into()));
        };
        let bytes = uploaded.unwrap_or_default();
        if bytes.len() as u64 != size {
            return Ok(Err(format!("artifact upload incomplete: {} of {size} bytes arrived", bytes.len())));
        }
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != digest {
            return Ok(Err(format!("artifact digest mismatch: the agent said {digest}, the bytes hash to {actual}")));
        }
        let store = self.consensus.store();
        let Some(commit): Option<CommitRecord> = store.commit(&job.repo, job.commit_seq)? else {
            return Ok(Err("the commit is gone".into()));
        };
        let Some(plan) = &commit.plan else { return Ok(Err("the commit has no plan".into())) };
        let (Some(deploy), Some(service)) = (plan.deploy.clone(), plan.service.clone()) else {
            return Ok(Err("the commit's fifty.toml has no [deploy]".into()));
        };
        if let Err(why) = self.store_artifact(&digest, size, bytes).await? {
            return Ok(Err(why));
        }
        let manifest = ReleaseManifest {
            release: commit.seq,
            repo: job.repo.clone(),
            sha: job.sha.clone(),
            digest: digest.clone(),
            size,
            service,
        };
        let manifest = codec::to_bytes(&manifest).map_err(|e| OpError::BadRequest(format!("manifest: {e}")))?;
        let signature = self.sign_release(&manifest)?;
        Ok(Ok(ReleaseRecord {
            id: commit.seq,
            repo: job.repo.clone(),
            sha: job.sha.clone(),
            subject: commit.subject.clone(),
            digest,
            size,
            manifest,
            signature,
            plan: deploy,
            created_at: SystemTime::now(),
        }))
    }

    /// Where a completed upload goes: this coordinator's blob store, then a quorum's, then the
    /// record `Command::BlobAvailable` (digest and size; the bytes never enter Raft). An
    /// artifact already recorded is only written here if this coordinator lacks it.
    async fn store_artifact(&self, digest: &str, size: u64, bytes: Vec<u8>) -> Result<Result<(), String>, OpError> {
        let store = self.consensus.store().clone();
        if store.blobs().size(digest).ok().flatten() != Some(size) {
            let (d, s) = (digest.to_string(), store.clone());
            let written = tokio::task::spawn_blocking(move || s.blobs().put(&d, &bytes)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Ok(Err(format!("the artifact could not be stored: {e}"))),
                Err(e) => return Ok(Err(format!("the artifact could not be stored: {e}"))),
            }
        }
        if store.blob_size(digest)? == Some(size) {
            return Ok(Ok(()));
        }
        if let Err(e) = super::artifacts::replicate(&self.consensus, digest, size).await {
            return Ok(Err(format!("the artifact could not be stored on a quorum of coordinators: {e:#}")));
        }
        self.consensus.propose(Command::BlobAvailable { digest: digest.to_string(), size }).await??;
        Ok(Ok(()))
    }

    /// Fault injection (`POST /v1/debug/deploy`, only with `fault_injection = true`): sends `host`
    /// an order for `release` whose signature is broken (`tamper = "signature"`), or first
    /// overwrites the start of this coordinator's (the leader's: agents download from it) blob
    /// file with garbage, so it serves corrupted bytes under the signed digest
    /// (`tamper = "artifact"`).
    pub async fn debug_deploy(&self, host: &HostName, release: u64, tamper: &str) -> Result<(), OpError> {
        let store = self.consensus.store();
        let Some(record) = store.release(release)? else {
            return Err(OpError::NotFound(format!("no release {release}")));
        };
        let mut order = DeployOrder { release, manifest: record.manifest.clone(), signature: record.signature.clone() };
        match tamper {
            "signature" => order.signature[0] ^= 0xff,
            "artifact" => {
                super::artifacts::ensure_local(&self.consensus, &record.digest, record.size, None)
                    .await
                    .map_err(|e| OpError::NotFound(format!("artifact of release {release}: {e:#}")))?;
                // The piece table is made from the good bytes first, as when a disk goes bad
                // after the table was made: agents then catch the damage piece by piece.
                self.piece_table(&record.digest).await.map_err(OpError::BadRequest)?;
                store
                    .blobs()
                    .corrupt_for_fault_injection(&record.digest)
                    .map_err(|e| OpError::BadRequest(format!("tamper: {e}")))?;
            }
            other => {
                return Err(OpError::BadRequest(format!("tamper: {other:?} is not \"signature\" or \"artifact\"")))
            }
        }
        // The order is outside any rollout, so no `HostTarget` lets the host fetch the artifact.
        self.deploy.lock().expect("deploy lock").fetch_grants.grant(host, &record.digest, Instant::now());
        if !self.send_to(host, CoordinatorMsg::Deploy(order)) {
            return Err(OpError::NotFound(format!("{host} has no link to this coordinator")));
        }
        warn!(%host, release, tamper, "fault injection: sent a tampered deploy order");
        Ok(())
    }

    fn release_key(&self) -> Result<Option<ring::signature::Ed25519KeyPair>, StoreError> {
        Ok(self
            .consensus
            .store()
            .cluster()?
            .and_then(|c| ring::signature::Ed25519KeyPair::from_pkcs8(&c.release_key_pkcs8).ok()))
    }

    fn sign_release(&self, manifest: &[u8]) -> Result<Vec<u8>, OpError> {
        match self.release_key()? {
            Some(key) => Ok(key.sign(manifest).as_ref().to_vec()),
            None => Err(OpError::Rejected(Rejection::RolloutConflict(0))),
        }
    }

    /// The cluster's release-signing public key (empty before the cluster is recorded).
    pub fn release_public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        self.release_key().ok().flatten().map(|k| k.public_key().as_ref().to_vec()).unwrap_or_default()
    }
}

fn parse_unavailable(text: &str, total: usize) -> usize {
    let text = text.trim();
    let n = match text.strip_suffix('%') {
        Some(p) => p.trim().parse::<usize>().map(|p| total * p / 100).unwrap_or(1),
        None => text.parse::<usize>().unwrap_or(1),
    };
    n.max(1)
}

impl Coordinator {
    /// Every release, newest first, with where it runs.
    pub fn releases(&self, repo: Option<&str>) -> Result<Vec<crate::views::ReleaseView>, OpError> {
        let store = self.consensus.store();
        let only = repo.map(|r| self.repo(r)).transpose()?.map(|r| r.name);
        let views = self.host_views()?;
        let mut out = Vec::new();
        for r in store.releases()?.into_iter().rev() {
            if only.as_ref().is_some_and(|o| *o != r.repo) {
                continue;
            }
            let target = store.target(&r.repo)?;
            let active = target.active.map(|id| store.rollout(id)).transpose()?.flatten();
            let mut hosts: Vec<String> =
                views.iter().filter(|(_, v)| v.current == Some(r.id)).map(|(h, _)| h.to_string()).collect();
            hosts.sort();
            let state = if active.as_ref().is_some_and(|a| a.release == r.id) {
                "rolling out"
            } else if target.last_good == Some(r.id) {
                "live"
            } else if !hosts.is_empty() {
                "running"
            } else {
                "-"
            };
            out.push(crate::views::ReleaseView {
                id: r.id,
                repo: r.repo.to_string(),
                sha: r.sha,
                subject: r.subject,
                digest: r.digest,
                size: r.size,
                created_at: crate::views::rfc3339(r.created_at),
                state: state.into(),
                hosts,
            });
        }
        Ok(out)
    }

    /// The active rollout of `repo`, else its latest one, as people read it.
    pub fn rollout_view(&self, repo: Option<&str>) -> Result<crate::views::RolloutView, OpError> {
        let rollout = match self.active_rollout(repo) {
            Ok(r) => r,
            Err(OpError::NotFound(_)) => {
                let store = self.consensus.store();
                let only = repo.map(|r| self.repo(r)).transpose()?.map(|r| r.name);
                store
                    .rollouts()?
                    .into_iter()
                    .rev()
                    .find(|r| only.as_ref().is_none_or(|o| *o == r.repo))
                    .ok_or_else(|| OpError::NotFound("no rollout yet".into()))?
            }
            Err(e) => return Err(e),
        };
        Ok(self.view_of(&rollout)?)
    }

    pub(crate) fn view_of(&self, r: &Rollout) -> Result<crate::views::RolloutView, StoreError> {
        let views = self.host_views()?;
        let targets: HashMap<HostName, u64> =
            self.consensus.store().host_targets()?.into_iter().map(|t| (t.host, t.release)).collect();
        let wave_of = |i: usize| (0..r.waves.len()).find(|w| r.reach(*w) > i).map(|w| w + 1).unwrap_or(r.waves.len());
        let hosts = r
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let v = views.get(h).cloned().unwrap_or_default();
                let report = self.release_report(h);
                crate::views::RolloutHostView {
                    host: h.to_string(),
                    wave: wave_of(i),
                    target: targets.get(h).copied(),
                    current: v.current,
                    healthy: v.healthy,
                    up: v.up,
                    applying: report.applying,
                    failed: v.failed,
                }
            })
            .collect();
        let waves = r
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| crate::views::WaveView {
                step: match w {
                    super::WaveStep::Hosts(n) => n.to_string(),
                    super::WaveStep::Percent(p) => format!("{p}%"),
                    super::WaveStep::Manual => "manual".into(),
                },
                reach: r.reach(i),
            })
            .collect();
        Ok(crate::views::RolloutView {
            id: r.id,
            repo: r.repo.to_string(),
            kind: r.kind,
            release: r.release,
            previous: r.previous,
            phase: r.phase,
            paused: r.paused,
            wave: r.wave + 1,
            waves,
            bake: humantime::format_duration(r.bake).to_string(),
            phase_secs: SystemTime::now().duration_since(r.phase_since).unwrap_or_default().as_secs_f64(),
            started_at: crate::views::rfc3339(r.started_at),
            finished_at: r.finished_at.map(crate::views::rfc3339),
            outcome: r.outcome.clone(),
            hosts,
            events: r.events.iter().map(|(t, e)| (crate::views::rfc3339(*t), e.clone())).collect(),
            immune: self.immune.lock().expect("immune lock").judge.verdicts(r.id),
            held: r.held.clone(),
            evidence: self
                .consensus
                .store()
                .evidence(&r.repo)?
                .filter(|e| e.rollout == r.id)
                .map(|e| crate::views::EvidenceView::from(&e)),
        })
    }
}
