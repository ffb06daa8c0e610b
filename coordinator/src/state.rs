//! The coordinator's state machine. Every decision is a [`Command`]; [`Machine::apply`] checks it
//! against the stored state and writes the result to the [`Store`]. Commands carry everything
//! they need (times, signed certificates, hashes), so applying one is deterministic: the same log
//! of commands gives the same state on every node. That is what lets a replicated log slot in
//! under this module without changing it.
//!
//! Soft state (heartbeats, health) is not here: see `fleet`.

use std::time::SystemTime;

use bincode::{Decode, Encode};
use fifty_shared::ids::{HostName, Labels, RepoName, Role};

use fifty_shared::wire::{JobExit, JobKind, JobRef};

use crate::ci::outcome;
use crate::ci::{
    Attempt, AttemptEnd, CommitRecord, CommitState, JobRecord, JobReport, JobState, NewCommit, TestOutcome, TestResult,
    MAX_FLAKY, MAX_QUARANTINED, MAX_TEST_NAME,
};
use crate::gate::{Cause, Closure};

use crate::store::{Batch, Store, StoreError};

/// The cluster's identity, created on first start.
#[derive(Clone, Debug, Encode, Decode)]
pub struct ClusterRecord {
    /// The CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The CA private key, PEM. Never leaves the coordinators.
    pub ca_key_pem: String,
    /// The ed25519 key releases are signed with (PKCS#8). Never leaves the coordinators.
    pub release_key_pkcs8: Vec<u8>,
    /// When the cluster was created.
    pub created_at: SystemTime,
}

/// A token, stored by the hash of its secret.
#[derive(Clone, Debug, Encode, Decode)]
pub struct TokenRecord {
    /// Public id, used to list and revoke the token without knowing its secret.
    pub accessor: String,
    /// SHA-256 of the secret.
    pub hash: String,
    /// What the token may do.
    pub role: Role,
    /// A note from whoever made it.
    pub description: String,
    /// When it was made.
    pub created_at: SystemTime,
    /// After this it is refused.
    pub expires_at: Option<SystemTime>,
    /// Join tokens: how many hosts it may enroll (None: unlimited until it expires).
    pub max_uses: Option<u32>,
    /// How many hosts it has enrolled.
    pub uses: u32,
    /// Revoked by an admin.
    pub revoked: bool,
}

impl TokenRecord {
    /// Why this token may not be used at `now`, if it may not.
    pub fn refusal(&self, now: SystemTime) -> Option<Rejection> {
        if self.revoked {
            return Some(Rejection::TokenRevoked);
        }
        if let Some(at) = self.expires_at {
            if now >= at {
                return Some(Rejection::TokenExpired { at });
            }
        }
        if let Some(max) = self.max_uses {
            if self.uses >= max {
                return Some(Rejection::TokenUsedUp { max });
            }
        }
        None
    }
}

/// An enrolled host.
#[derive(Clone, Debug, Encode, Decode)]
pub struct HostRecord {
    /// Its name (the subject of its certificate).
    pub name: HostName,
    /// Its labels.
    pub labels: Labels,
    /// Serial of its current certificate, hex.
    pub serial: String,
    /// When it enrolled.
    pub enrolled_at: SystemTime,
    /// The accessor of the join token it used.
    pub token_accessor: String,
}

/// A revoked certificate.
#[derive(Clone, Debug, Encode, Decode)]
pub struct Revocation {
    /// The certificate's serial, hex.
    pub serial: String,
    /// The host it belonged to.
    pub host: HostName,
    /// When it was revoked.
    pub at: SystemTime,
    /// Why.
    pub reason: String,
}

/// A coordinator of the cluster: its Raft id and where to reach it. Written when a
/// configuration change that adds it is applied (or at bootstrap), removed with it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, serde::Serialize, serde::Deserialize)]
pub struct MemberRecord {
    /// Raft node id.
    pub id: u64,
    /// QUIC address (agents and peers).
    pub quic_addr: String,
    /// HTTPS API address.
    pub http_addr: String,
}

/// A repository Fifty watches.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct RepoRecord {
    /// Its name in Fifty.
    pub name: RepoName,
    /// Where build hosts fetch it from.
    pub url: String,
    /// The branch whose gate and pipeline Fifty runs.
    pub branch: String,
    /// What a commit message carries to pass a gate closed by a red build.
    pub fix_marker: String,
    /// The shared secret GitHub-style webhooks sign their payloads with (HMAC-SHA256), if set.
    pub webhook_secret: Option<String>,
    /// When it was added.
    pub added_at: SystemTime,
}

/// The gate of one branch of a repository. No record, or `closed: None`, is an open gate.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct GateRecord {
    /// The repository.
    pub repo: RepoName,
    /// The branch.
    pub branch: String,
    /// Set while the gate is closed.
    pub closed: Option<Closure>,
    /// When it last changed, and who changed it.
    pub changed_at: SystemTime,
    /// Who opened or closed it last.
    pub changed_by: String,
    /// Sequence number of the newest finished commit of the branch: the gate follows it.
    pub last_finished_seq: u64,
}

/// Numbers the state machine hands out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Counters {
    /// The next commit's sequence number (from 1).
    pub next_commit_seq: u64,
    /// The next job id (from 1).
    pub next_job: u64,
    /// The last rollout id handed out.
    pub last_rollout: u64,
    /// The last incident number handed out.
    pub last_incident: u64,
    /// The last notification id handed out.
    pub last_notification: u64,
    /// The last webhook id handed out.
    pub last_webhook: u64,
    /// The last alert rule id handed out.
    pub last_alert_rule: u64,
    /// The last alert id handed out.
    pub last_alert: u64,
}

/// How many times a job's agent may be lost before the job fails.
pub const MAX_LOST: usize = 5;

/// Most failed attempts a plan job may have (a fetch can fail for a moment).
pub const PLAN_MAX_FAILURES: u32 = 2;

/// The newest version of [`Command`] this binary understands. A release that adds a kind of
/// command raises it and makes [`Command::since`] return the new version for that kind: the
/// leader then proposes it only once every voter reports it (a rolling upgrade's old followers
/// would stop at an entry they cannot decode). Commands are only ever added at the end.
pub const STATE_VERSION: u32 = 2;

/// A decision to apply: the payload of a Raft log entry.
#[derive(Clone, Debug, Encode, Decode)]
pub enum Command {
    /// Create the cluster: its CA and the bootstrap admin token.
    InitCluster {
        /// The cluster record.
        cluster: ClusterRecord,
        /// The bootstrap admin token.
        bootstrap: TokenRecord,
    },
    /// Create a token.
    CreateToken(TokenRecord),
    /// Revoke a token by accessor.
    RevokeToken {
        /// Which token.
        accessor: String,
    },
    /// Enroll a host with a certificate the leader signed.
    EnrollHost {
        /// Hash of the join token's secret.
        token_hash: String,
        /// The new host record.
        host: HostRecord,
        /// When.
        at: SystemTime,
    },
    /// Remove a host and revoke its certificate.
    RemoveHost {
        /// Which host.
        name: HostName,
        /// When.
        at: SystemTime,
    },
    /// Add (or update) a repository.
    PutRepo(RepoRecord),
    /// Open or close a branch's gate.
    SetGate(GateRecord),
    /// Commits were pushed: record the new ones and queue their plan jobs.
    NotifyCommits {
        /// The repository.
        repo: RepoName,
        /// The branch.
        branch: String,
        /// Oldest first.
        commits: Vec<NewCommit>,
        /// A webhook's delivery id: a delivery seen before changes nothing.
        delivery: Option<String>,
        /// When.
        at: SystemTime,
    },
    /// Give queued jobs to build agents.
    AssignJobs {
        /// Job id and agent.
        jobs: Vec<(u64, HostName)>,
        /// When.
        at: SystemTime,
    },
    /// An attempt finished on its agent.
    FinishJob {
        /// Job and attempt.
        job: JobRef,
        /// The agent that reported it (must be the attempt's).
        host: HostName,
        /// What it found.
        report: JobReport,
        /// The tail of its output.
        log_tail: Vec<u8>,
        /// When.
        at: SystemTime,
    },
    /// An attempt's agent is lost: queue the job again.
    RequeueJob {
        /// Job and attempt.
        job: JobRef,
        /// Why the agent counts as lost.
        why: String,
        /// When.
        at: SystemTime,
    },
    /// Kept so that old log entries decode: versions before the blob store stored artifacts in
    /// Raft this way. Applying it now changes nothing (and logs a warning): artifact bytes are
    /// never in the Raft state; see [`Command::BlobAvailable`].
    PutBlob {
        /// SHA-256 of the whole artifact, hex.
        digest: String,
        /// Chunk number.
        index: u32,
        /// The whole artifact's size.
        total: u64,
        /// At most `wire::ARTIFACT_CHUNK` bytes.
        data: Vec<u8>,
    },
    /// Start a rollout (a rollback supersedes the active one; a deploy waits for it).
    StartRollout {
        /// Its first step.
        rollout: crate::deploy::Rollout,
        /// Hosts and the release each should run.
        targets: Vec<(HostName, u64)>,
        /// When.
        at: SystemTime,
    },
    /// The next state of a rollout (its version one higher than the stored one).
    StepRollout {
        /// The new state.
        rollout: crate::deploy::Rollout,
        /// Hosts whose target release changes.
        targets: Vec<(HostName, u64)>,
        /// When.
        at: SystemTime,
    },
    /// The cluster immune system found a release worse than the one before it. One decision,
    /// applied at once: every host the rollout touched goes back to the previous release (the
    /// rollout's next state, `targets`), the branch's gate closes, a build agent is given the
    /// revert of the commit in git, an incident is opened (`incident.id` is assigned here), and
    /// the configured webhooks are notified.
    ImmuneRevert {
        /// The rollout's next state (outcome `Reverted`, rolling back).
        rollout: crate::deploy::Rollout,
        /// Hosts and the release each goes back to.
        targets: Vec<(HostName, u64)>,
        /// The incident, with its timeline and evidence so far.
        incident: crate::incidents::IncidentRecord,
        /// When.
        at: SystemTime,
    },
    /// A person's change to an incident (a why, an action, closing it).
    ChangeIncident {
        /// Which.
        id: u64,
        /// What.
        change: crate::incidents::Change,
        /// Who.
        by: String,
        /// When.
        at: SystemTime,
    },
    /// Add a webhook every later notification goes to.
    AddWebhook {
        /// Where.
        url: String,
        /// What it takes.
        format: crate::notify::Format,
        /// Who.
        by: String,
        /// When.
        at: SystemTime,
    },
    /// Remove a webhook.
    RemoveWebhook {
        /// Which.
        id: u64,
    },
    /// A notification reached a webhook.
    Delivered {
        /// Which notification.
        notification: u64,
        /// Which webhook.
        webhook: u64,
    },
    /// Quarantine a test (its failures stop failing commits) or release it.
    SetQuarantine {
        /// The repository.
        repo: RepoName,
        /// The test, as JUnit names it.
        test: String,
        /// Quarantine (true) or release (false).
        on: bool,
        /// Who.
        by: String,
        /// When.
        at: SystemTime,
    },
    /// Define an A/B experiment.
    CreateExperiment(crate::experiments::ExperimentRecord),
    /// Change an experiment's weights (the slot table moves only units of shrinking variants).
    RampExperiment {
        /// Which experiment.
        name: String,
        /// One weight per variant.
        weights: Vec<u32>,
        /// When.
        at: SystemTime,
    },
    /// Stop an experiment: every unit gets `winner` (the control if none).
    StopExperiment {
        /// Which experiment.
        name: String,
        /// The winning variant's index.
        winner: Option<u8>,
        /// When.
        at: SystemTime,
    },
    /// Delete a stopped experiment with its counts and unit records.
    DeleteExperiment {
        /// Which experiment.
        name: String,
    },
    /// Merge one agent report of units seen into the experiments' counts (once per boot and seq).
    RecordExperimentReport {
        /// The reporting host (from its certificate).
        host: HostName,
        /// What it saw.
        report: fifty_shared::experiment::ExperimentReport,
        /// When.
        at: SystemTime,
    },
    /// Add an alert rule (its id is assigned here; names are unique).
    AddAlertRule {
        /// The rule.
        rule: crate::alerts::Rule,
    },
    /// Remove an alert rule (its firing alerts resolve on the leader's next evaluation).
    RemoveAlertRule {
        /// Which.
        id: u64,
    },
    /// Hold a rule's notifications until `until` (None: lift the silence).
    SilenceAlertRule {
        /// Which.
        id: u64,
        /// Until when.
        until: Option<SystemTime>,
    },
    /// An alert fires: the record (id assigned here), its notification, perhaps an incident.
    AlertFired {
        /// The alert.
        alert: crate::alerts::AlertRecord,
    },
    /// A firing alert resolves, with its notification.
    AlertResolved {
        /// Which.
        id: u64,
        /// What was seen.
        summary: String,
        /// When.
        at: SystemTime,
    },
    /// A person acknowledges an alert.
    AckAlert {
        /// Which.
        id: u64,
        /// Who.
        by: String,
        /// When.
        at: SystemTime,
    },
    /// Changes nothing: every coordinator takes a digest of its state right after applying it,
    /// so digests taken at the same point of the log can be compared (`fifty cluster check`).
    Checkpoint {
        /// When.
        at: SystemTime,
    },
    /// A quorum of coordinators holds artifact `digest` (verified by SHA-256) in its blob store:
    /// a release may now name it. Only the digest and size are in Raft, never the bytes.
    BlobAvailable {
        /// SHA-256 of the artifact, lower-case hex.
        digest: String,
        /// Its size in bytes.
        size: u64,
    },
}

impl Command {
    /// The [`STATE_VERSION`] that introduced this kind of command.
    pub fn since(&self) -> u32 {
        match self {
            // A newer kind of alert rule inside an older kind of command.
            Command::AddAlertRule { rule } if rule.condition == crate::alerts::Condition::Divergence => 2,
            Command::InitCluster { .. }
            | Command::CreateToken(_)
            | Command::RevokeToken { .. }
            | Command::EnrollHost { .. }
            | Command::RemoveHost { .. }
            | Command::PutRepo(_)
            | Command::SetGate(_)
            | Command::NotifyCommits { .. }
            | Command::AssignJobs { .. }
            | Command::FinishJob { .. }
            | Command::RequeueJob { .. }
            | Command::PutBlob { .. }
            | Command::StartRollout { .. }
            | Command::StepRollout { .. }
            | Command::ImmuneRevert { .. }
            | Command::ChangeIncident { .. }
            | Command::AddWebhook { .. }
            | Command::RemoveWebhook { .. }
            | Command::Delivered { .. }
            | Command::SetQuarantine { .. }
            | Command::CreateExperiment(_)
            | Command::RampExperiment { .. }
            | Command::StopExperiment { .. }
            | Command::DeleteExperiment { .. }
            | Command::RecordExperimentReport { .. }
            | Command::AddAlertRule { .. }
            | Command::RemoveAlertRule { .. }
            | Command::SilenceAlertRule { .. }
            | Command::AlertFired { .. }
            | Command::AlertResolved { .. }
            | Command::AckAlert { .. }
            | Command::Checkpoint { .. } => 1,
            Command::BlobAvailable { .. } => 2,
        }
    }
}

/// Why a command was not applied. Deterministic: every node rejects the same commands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The cluster already has a CA.
    #[error("the cluster is already initialised")]
    AlreadyInitialised,
    /// No incident has that number.
    #[error("no incident {0}; see `fifty incidents`")]
    UnknownIncident(u64),
    /// The change cannot be made to the incident.
    #[error("{0}")]
    IncidentChange(String),
    /// No webhook has that id.
    #[error("no webhook {0}; see `fifty webhook list`")]
    UnknownWebhook(u64),
    /// The alert rule or alert cannot be changed so.
    #[error("{0}")]
    Alert(String),
    /// No alert rule or alert has that id.
    #[error("{0}")]
    UnknownAlert(String),
    /// No token has this secret.
    #[error("unknown token")]
    UnknownToken,
    /// The token's time is up.
    #[error("token expired at {}", humantime::format_rfc3339_seconds(*at))]
    TokenExpired {
        /// When it expired.
        at: SystemTime,
    },
    /// A limited-use token was used up.
    #[error("token was already used (it allows {max} enrollment{})", if *max == 1 { "" } else { "s" })]
    TokenUsedUp {
        /// Its limit.
        max: u32,
    },
    /// The token was revoked.
    #[error("token was revoked")]
    TokenRevoked,
    /// The token is not a join token.
    #[error("token has role {0}, not agent: create one with `fifty token create --role agent`")]
    NotAJoinToken(Role),
    /// No token has this accessor.
    #[error("no token with accessor {0}")]
    UnknownAccessor(String),
    /// No host has this name.
    #[error("no host named {0}")]
    UnknownHost(HostName),
    /// A host of this name is enrolled: a join token cannot take its name over.
    #[error(
        "a host named {0} is already enrolled, and a join token cannot replace an enrolled host. \
         If this is {0} reinstalled, an admin removes the old enrollment first \
         (`fifty host remove {0}`, which revokes its certificate), then join again; else pick another name"
    )]
    HostEnrolled(HostName),
    /// No coordinator has this id.
    #[error("no coordinator with node id {0:016x}")]
    UnknownMember(u64),
    /// No repository has this name.
    #[error("no repository named {0}; add it with `fifty repo add`")]
    UnknownRepo(RepoName),
    /// The job's attempt is not the one running (it finished, or was given to another agent).
    #[error("{0} is not running (it finished or was given to another agent)")]
    StaleJob(JobRef),
    /// The rollout changed since this step was decided.
    #[error("rollout {0} changed meanwhile; try again")]
    RolloutConflict(u64),
    /// Another rollout is in progress for this target.
    #[error("rollout {0} is in progress for this repository")]
    RolloutBusy(u64),
    /// The test is not quarantined.
    #[error("test {0:?} is not quarantined")]
    NotQuarantined(String),
    /// Removing this coordinator would leave no voter.
    #[error("node {0:016x} is the last voter; a cluster cannot remove its only member")]
    LastMember(u64),
    /// An experiment of this name exists.
    #[error("an experiment named {0} exists already")]
    ExperimentExists(String),
    /// No experiment has this name.
    #[error("no experiment named {0}; see `fifty experiment list`")]
    UnknownExperiment(String),
    /// The experiment was stopped; it cannot change any more.
    #[error("experiment {0} is stopped")]
    ExperimentStopped(String),
    /// Only a stopped experiment can be deleted.
    #[error("experiment {0} is running: stop it first (`fifty experiment stop {0} --winner ...`), then delete it once no code asks for it")]
    ExperimentRunning(String),
    /// The cluster keeps at most this many experiments.
    #[error("the cluster keeps at most {0} experiments: delete stopped ones first (`fifty experiment delete NAME`)")]
    TooManyExperiments(usize),
    /// The repository quarantines as many tests as it may.
    #[error("the repository has {0} quarantined tests already, the most it keeps: release some first")]
    TooManyQuarantined(usize),
    /// The command would write a record larger than the store keeps in one record.
    #[error("refused: {0}")]
    TooLarge(String),
    /// The weights do not fit the experiment's variants.
    #[error("experiment {0}: give one weight per variant, not all zero")]
    ExperimentVariants(String),
    /// An artifact record names no SHA-256 digest, or a size over `wire::MAX_ARTIFACT_BYTES`.
    #[error("artifact {0}: not a SHA-256 digest, or too large")]
    BadArtifact(String),
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done; nothing to report.
    Done,
    /// A host was enrolled.
    Enrolled,
    /// A host was removed; the serial revoked.
    Removed {
        /// The revoked serial.
        serial: String,
    },
    /// Commits were notified.
    Notified {
        /// SHAs new to Fifty (the others were known already).
        new: Vec<String>,
        /// The webhook delivery was seen before; nothing changed.
        duplicate: bool,
    },
    /// Jobs were given out (jobs no longer queued are left out).
    Assigned(Vec<JobRef>),
    /// A checkpoint applied at `index`; the state's digest right after it.
    Checkpoint {
        /// The entry's index.
        index: u64,
        /// SHA-256 of the state, hex.
        digest: String,
    },
}

/// Applies commands to the store.
pub struct Machine {
    store: Store,
}

/// The result of applying one command: a storage error is fatal for the node; a rejection is an
/// answer for the client.
pub type ApplyResult = Result<Result<Applied, Rejection>, StoreError>;

impl Machine {
    /// A machine over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks `cmd` against the current state and writes its effects, with `extra` (the applied
    /// index, say), in one atomic batch. A rejected command writes only `extra`.
    ///
    /// Applying never fails on a command's content: a record over its bound
    /// (`store::MAX_RECORD`) rejects the command on every node alike (encoding is deterministic),
    /// so no entry can stop the cluster. Only the disk failing is an error.
    pub fn apply(&mut self, cmd: &Command, extra: Batch) -> ApplyResult {
        let mut batch = extra;
        let mut effects = Batch::default();
        let mut out = self.decide(cmd, &mut effects)?;
        if out.is_ok() {
            match effects.take_error() {
                Some(e) => {
                    tracing::error!(error = %e, "a command would write a record over its bound; rejected");
                    out = Err(Rejection::TooLarge(e.to_string()));
                }
                None => batch.merge(effects),
            }
        }
        self.store.apply(batch)?;
        Ok(out)
    }

    fn decide(&self, cmd: &Command, batch: &mut Batch) -> ApplyResult {
        let store = &self.store;
        Ok(match cmd {
            Command::InitCluster { cluster, bootstrap } => {
                if store.cluster()?.is_some() {
                    return Ok(Err(Rejection::AlreadyInitialised));
                }
                batch.put_cluster(cluster);
                batch.put_token(bootstrap);
                Ok(Applied::Done)
            }
            Command::CreateToken(token) => {
                batch.put_token(token);
                Ok(Applied::Done)
            }
            Command::RevokeToken { accessor } => {
                let Some(mut token) = store.tokens()?.into_iter().find(|t| &t.accessor == accessor) else {
                    return Ok(Err(Rejection::UnknownAccessor(accessor.clone())));
                };
                token.revoked = true;
                batch.put_token(&token);
                Ok(Applied::Done)
            }
            Command::EnrollHost { token_hash, host, at } => {
                let Some(mut token) = store.token(token_hash)? else {
                    return Ok(Err(Rejection::UnknownToken));
                };
                if token.role != Role::Agent {
                    return Ok(Err(Rejection::NotAJoinToken(token.role)));
                }
                if let Some(refusal) = token.refusal(*at) {
                    return Ok(Err(refusal));
                }
                // A name belongs to the host holding it until an admin removes it: whoever holds
                // a join token must not be able to revoke a live host and take its place.
                if store.host(&host.name)?.is_some() {
                    return Ok(Err(Rejection::HostEnrolled(host.name.clone())));
                }
                token.uses += 1;
                batch.put_token(&token);
                batch.put_host(host);
                Ok(Applied::Enrolled)
            }
            Command::RemoveHost { name, at } => {
                let Some(host) = store.host(name)? else {
                    return Ok(Err(Rejection::UnknownHost(name.clone())));
                };
                batch.remove_host(&host);
                batch.put_revocation(&Revocation {
                    serial: host.serial.clone(),
                    host: host.name.clone(),
                    at: *at,
                    reason: "host removed".into(),
                });
                Ok(Applied::Removed { serial: host.serial })
            }
            Command::PutRepo(repo) => {
                batch.put_repo(repo);
                Ok(Applied::Done)
            }
            Command::SetGate(gate) => {
                if store.repo(&gate.repo)?.is_none() {
                    return Ok(Err(Rejection::UnknownRepo(gate.repo.clone())));
                }
                let mut gate = gate.clone();
                let before = store.gate(&gate.repo, &gate.branch)?;
                gate.last_finished_seq = before.as_ref().map_or(0, |g| g.last_finished_seq);
                // Opening a gate the immune system closed is part of its incident's story.
                if let Some(Closure { cause: Cause::Immune { incident, .. }, .. }) = before.and_then(|g| g.closed) {
                    if gate.closed.is_none() {
                        if let Some(mut i) = store.incident(incident)? {
                            i.say(gate.changed_at, format!("gate of {} opened by {}", gate.branch, gate.changed_by));
                            batch.put_incident(&i);
                        }
                    }
                }
                batch.put_gate(&gate);
                Ok(Applied::Done)
            }
            Command::NotifyCommits { repo, branch, commits, delivery, at } => {
                self.notify_commits(repo, branch, commits, delivery.as_deref(), *at, batch)?
            }
            Command::AssignJobs { jobs, at } => {
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
                        started_at: *at,
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
                Ok(Applied::Assigned(assigned))
            }
            Command::FinishJob { job, host, report, log_tail, at } => {
                self.finish_job(*job, host, report, log_tail, *at, batch)?
            }
            Command::RequeueJob { job: r, why, at } => {
                let Some(mut job) = self.running_attempt(*r, None)? else {
                    return Ok(Err(Rejection::StaleJob(*r)));
                };
                let lost = job.attempts.iter().filter(|a| matches!(a.end, AttemptEnd::Lost { .. })).count() + 1;
                let attempt = job.attempts.last_mut().expect("running_attempt has one");
                attempt.finished_at = Some(*at);
                if lost >= MAX_LOST {
                    attempt.end = AttemptEnd::Failed { why: format!("its agent was lost {lost} times; last: {why}") };
                    job.state = JobState::Failed;
                } else {
                    attempt.end = AttemptEnd::Lost { why: why.clone() };
                    job.state = JobState::Queued;
                }
                batch.put_job(&job);
                if job.state == JobState::Failed {
                    self.finish_commit_if_done(&job, None, None, *at, batch)?;
                }
                Ok(Applied::Done)
            }
            Command::PutBlob { digest, index, .. } => {
                // Deterministic on every node: nothing is written.
                tracing::warn!(digest, index, "an artifact chunk from an older version's log is ignored: artifacts live in the blob store now; package that release again");
                Ok(Applied::Done)
            }
            Command::BlobAvailable { digest, size } => {
                if crate::store::blobs::check_digest(digest).is_err() || *size > fifty_shared::wire::MAX_ARTIFACT_BYTES
                {
                    return Ok(Err(Rejection::BadArtifact(format!("{digest:.80} of {size} bytes"))));
                }
                batch.put_blob_available(digest, *size);
                Ok(Applied::Done)
            }
            Command::StartRollout { rollout, targets, at } => {
                let mut counters = store.counters()?;
                if rollout.id != counters.last_rollout + 1 {
                    return Ok(Err(Rejection::RolloutConflict(rollout.id)));
                }
                let mut target = store.target(&rollout.repo)?;
                if let Some(active) = target.active {
                    let Some(current) = store.rollout(active)? else {
                        return Ok(Err(Rejection::RolloutConflict(active)));
                    };
                    if !current.finished() {
                        if rollout.kind != crate::deploy::Kind::Rollback && !current.superseded_by(rollout.release) {
                            return Ok(Err(Rejection::RolloutBusy(active)));
                        }
                        batch.put_rollout(&current.supersede(rollout.id, *at).rollout);
                    }
                }
                counters.last_rollout = rollout.id;
                batch.put_counters(&counters);
                target.active = (!rollout.finished()).then_some(rollout.id);
                if target.queued.is_some_and(|q| q <= rollout.release) {
                    target.queued = None;
                }
                self.record_rollout(rollout, targets, &mut target, *at, batch);
                Ok(Applied::Done)
            }
            Command::ImmuneRevert { rollout, targets, incident, at } => {
                self.immune_revert(rollout, targets, incident, *at, batch)?
            }
            Command::ChangeIncident { id, change, by, at } => {
                let Some(mut incident) = store.incident(*id)? else {
                    return Ok(Err(Rejection::UnknownIncident(*id)));
                };
                if let Err(why) = incident.change(change, by, *at) {
                    return Ok(Err(Rejection::IncidentChange(why)));
                }
                batch.put_incident(&incident);
                Ok(Applied::Done)
            }
            Command::AddWebhook { url, format, by, at } => {
                let mut counters = store.counters()?;
                counters.last_webhook += 1;
                let hook = crate::notify::Webhook {
                    id: counters.last_webhook,
                    url: url.clone(),
                    format: *format,
                    added: (*at, by.clone()),
                };
                batch.put_counters(&counters);
                batch.put_webhook(&hook);
                Ok(Applied::Done)
            }
            Command::RemoveWebhook { id } => {
                if store.webhook(*id)?.is_none() {
                    return Ok(Err(Rejection::UnknownWebhook(*id)));
                }
                batch.remove_webhook(*id);
                Ok(Applied::Done)
            }
            Command::Delivered { notification, webhook } => {
                if let Some(mut n) = store.notification(*notification)? {
                    for (id, done) in n.to.iter_mut() {
                        if id == webhook {
                            *done = true;
                        }
                    }
                    batch.put_notification(&n);
                }
                Ok(Applied::Done)
            }
            Command::StepRollout { rollout, targets, at } => {
                let stored = store.rollout(rollout.id)?;
                if stored.as_ref().map(|r| r.version + 1) != Some(rollout.version) {
                    return Ok(Err(Rejection::RolloutConflict(rollout.id)));
                }
                let mut target = store.target(&rollout.repo)?;
                if rollout.finished() && target.active == Some(rollout.id) {
                    target.active = None;
                }
                self.record_rollout(rollout, targets, &mut target, *at, batch);
                // A wave the immune system held waits for a person: tell them.
                if let (Some(why), None) = (&rollout.held, stored.as_ref().and_then(|r| r.held.as_ref())) {
                    let mut counters = store.counters()?;
                    counters.last_notification += 1;
                    let notification = crate::notify::Notification {
                        id: counters.last_notification,
                        kind: "immune.hold".into(),
                        title: format!(
                            "{}: rollout {} of release {} held at wave {}",
                            rollout.repo,
                            rollout.id,
                            rollout.release,
                            rollout.wave + 1
                        ),
                        text: format!(
                            "The immune system could not decide: {why}. Decide with `fifty rollout promote --repo {}` or `fifty rollout abort --repo {}`.",
                            rollout.repo, rollout.repo
                        ),
                        repo: Some(rollout.repo.to_string()),
                        incident: None,
                        at: Some(*at),
                        to: store.webhooks()?.iter().map(|h| (h.id, false)).collect(),
                    };
                    batch.put_notification(&notification);
                    batch.put_counters(&counters);
                }
                if let (true, Some(crate::deploy::Outcome::Reverted { .. })) = (rollout.finished(), &rollout.outcome) {
                    for mut i in store.incidents()?.into_iter().filter(|i| i.rollout == rollout.id) {
                        let back = rollout.previous.map_or("the previous release".into(), |p| format!("release {p}"));
                        i.say(*at, format!("every host of rollout {} is back on {back}", rollout.id));
                        batch.put_incident(&i);
                    }
                }
                Ok(Applied::Done)
            }
            Command::AddAlertRule { rule } => crate::alerts::ops::add_rule(store, rule, batch)?,
            Command::RemoveAlertRule { id } => crate::alerts::ops::remove_rule(store, *id, batch)?,
            Command::SilenceAlertRule { id, until } => crate::alerts::ops::silence_rule(store, *id, *until, batch)?,
            Command::AlertFired { alert } => crate::alerts::ops::fired(store, alert, batch)?,
            Command::AlertResolved { id, summary, at } => {
                crate::alerts::ops::resolved(store, *id, summary, *at, batch)?
            }
            Command::AckAlert { id, by, at } => crate::alerts::ops::ack(store, *id, by, *at, batch)?,
            // The Raft loop takes the digest once this entry is applied (it knows the index).
            Command::Checkpoint { .. } => Ok(Applied::Done),
            Command::SetQuarantine { repo, test, on, by, at } => {
                if store.repo(repo)?.is_none() {
                    return Ok(Err(Rejection::UnknownRepo(repo.clone())));
                }
                let mut book = store.tests(repo)?;
                if *on {
                    if book.quarantined.len() >= MAX_QUARANTINED && !book.quarantined.contains_key(test) {
                        return Ok(Err(Rejection::TooManyQuarantined(MAX_QUARANTINED)));
                    }
                    book.quarantined.insert(test.clone(), (by.clone(), *at));
                } else if book.quarantined.remove(test).is_none() {
                    return Ok(Err(Rejection::NotQuarantined(test.clone())));
                }
                batch.put_tests(repo, &book);
                Ok(Applied::Done)
            }
            Command::CreateExperiment(rec) => return crate::experiments::apply_create(store, rec, batch),
            Command::RampExperiment { name, weights, at } => {
                return crate::experiments::apply_ramp(store, name, weights, *at, batch)
            }
            Command::StopExperiment { name, winner, at } => {
                return crate::experiments::apply_stop(store, name, *winner, *at, batch)
            }
            Command::DeleteExperiment { name } => return crate::experiments::apply_delete(store, name, batch),
            Command::RecordExperimentReport { host, report, at } => {
                return crate::experiments::apply_report(store, host, report, *at, batch)
            }
        })
    }

    /// Keeps the artifacts of the newest `KEEP_ARTIFACTS` releases of `newest`'s repository and of
    /// every release a host is targeted at; drops the others' chunks (their records stay).
    fn drop_old_artifacts(&self, newest: &crate::deploy::ReleaseRecord, batch: &mut Batch) -> Result<(), StoreError> {
        let store = &self.store;
        let targeted: Vec<u64> = store.host_targets()?.into_iter().map(|t| t.release).collect();
        let mut releases: Vec<crate::deploy::ReleaseRecord> =
            store.releases()?.into_iter().filter(|r| r.repo == newest.repo && r.id != newest.id).collect();
        releases.sort_by(|a, b| b.id.cmp(&a.id));
        let mut keep_digests: Vec<String> = vec![newest.digest.clone()];
        for (i, r) in releases.iter().enumerate() {
            if i + 1 < crate::deploy::KEEP_ARTIFACTS || targeted.contains(&r.id) {
                keep_digests.push(r.digest.clone());
            }
        }
        for r in releases.iter().skip(crate::deploy::KEEP_ARTIFACTS - 1) {
            if !keep_digests.contains(&r.digest) && store.blob_size(&r.digest)?.is_some() {
                batch.remove_blob(&r.digest, r.size);
            }
        }
        Ok(())
    }

    /// The immune system's revert (see `Command::ImmuneRevert`).
    fn immune_revert(
        &self,
        rollout: &crate::deploy::Rollout,
        targets: &[(HostName, u64)],
        incident: &crate::incidents::IncidentRecord,
        at: SystemTime,
        batch: &mut Batch,
    ) -> ApplyResult {
        let store = &self.store;
        let stored = store.rollout(rollout.id)?;
        if stored.as_ref().map(|r| r.version + 1) != Some(rollout.version) {
            return Ok(Err(Rejection::RolloutConflict(rollout.id)));
        }
        let mut target = store.target(&rollout.repo)?;
        // The bad release must not be started again by itself.
        if target.queued == Some(rollout.release) {
            target.queued = None;
        }
        self.record_rollout(rollout, targets, &mut target, at, batch);
        let mut counters = store.counters()?;
        counters.last_incident += 1;
        counters.next_job += 1;
        counters.last_notification += 1;
        let mut incident = incident.clone();
        incident.id = counters.last_incident;
        let Some(repo) = incident.repo.clone() else {
            return Ok(Err(Rejection::IncidentChange("a revert's incident names its repository".into())));
        };
        let short = crate::ci::short(&incident.sha).to_string();
        // 1. every touched host goes back: the rollout's targets, above. 2. the gate closes.
        let reason = format!("immune system reverted {short}: {}", incident.reason);
        let gate = store.gate(&repo, &incident.branch)?;
        batch.put_gate(&GateRecord {
            repo: repo.clone(),
            branch: incident.branch.clone(),
            closed: Some(Closure {
                reason: reason.clone(),
                cause: Cause::Immune { sha: incident.sha.clone(), incident: incident.id },
                since: at,
            }),
            changed_at: at,
            changed_by: "fifty immune system".into(),
            last_finished_seq: gate.map_or(0, |g| g.last_finished_seq),
        });
        incident.say(at, format!("gate of {} closed: {reason}", incident.branch));
        // 3. a build agent reverts the commit in git. The job names the commit by its own
        // sequence number (0: the commit is not known here; seqs start at 1).
        let commit_seq = store.commit_by_sha(&repo, &incident.sha)?.map_or(0, |c| c.seq);
        let job = crate::ci::JobRecord {
            id: counters.next_job,
            repo: repo.clone(),
            sha: incident.sha.clone(),
            commit_seq,
            kind: JobKind::Revert {
                revert: incident.sha.clone(),
                branch: incident.branch.clone(),
                reason: incident.reason.clone(),
            },
            state: JobState::Queued,
            max_failures: 2,
            avoid: Vec::new(),
            attempts: Vec::new(),
            queued_at: at,
        };
        incident.revert_job = Some(job.id);
        incident.say(at, format!("revert of {short} on {} queued for a build agent (job {})", incident.branch, job.id));
        batch.put_job(&job);
        // 4. the incident. 5. the notification.
        let hooks = store.webhooks()?;
        incident.say(at, format!("incident {} opened; {} webhooks notified", incident.id, hooks.len()));
        let notification = crate::notify::Notification {
            id: counters.last_notification,
            kind: "immune.revert".into(),
            title: format!("{}: {}", repo, reason),
            text: format!(
                "Release {} ({short} \"{}\") was reverted on every host to release {}; the gate of {} is closed until an admin opens it (`fifty gate open {}`). Incident {}: `fifty incident show {}`.\n{}",
                incident.release,
                incident.subject,
                incident.previous,
                incident.branch,
                repo,
                incident.id,
                incident.id,
                incident.evidence.join("\n")
            ),
            repo: Some(repo.to_string()),
            incident: Some(incident.id),
            at: Some(at),
            to: hooks.iter().map(|h| (h.id, false)).collect(),
        };
        batch.put_notification(&notification);
        batch.put_incident(&incident);
        batch.put_counters(&counters);
        Ok(Ok(Applied::Done))
    }

    /// Writes a rollout, its hosts' new targets and its target record.
    fn record_rollout(
        &self,
        rollout: &crate::deploy::Rollout,
        targets: &[(HostName, u64)],
        target: &mut crate::deploy::TargetRecord,
        at: SystemTime,
        batch: &mut Batch,
    ) {
        if rollout.outcome == Some(crate::deploy::Outcome::Succeeded) {
            target.last_good = Some(rollout.release);
        }
        for (host, release) in targets {
            batch.put_host_target(&crate::deploy::HostTarget {
                host: host.clone(),
                repo: rollout.repo.clone(),
                release: *release,
                since: at,
            });
        }
        batch.put_rollout(rollout);
        batch.put_target(&rollout.repo, target);
    }

    fn notify_commits(
        &self,
        repo: &RepoName,
        branch: &str,
        commits: &[NewCommit],
        delivery: Option<&str>,
        at: SystemTime,
        batch: &mut Batch,
    ) -> ApplyResult {
        let store = &self.store;
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
    fn running_attempt(&self, r: JobRef, host: Option<&HostName>) -> Result<Option<JobRecord>, StoreError> {
        let Some(job) = self.store.job(r.job)? else { return Ok(None) };
        let ok = job.state == JobState::Running
            && job.current().is_some_and(|a| a.n == r.attempt && host.is_none_or(|h| *h == a.host));
        Ok(ok.then_some(job))
    }

    fn finish_job(
        &self,
        r: JobRef,
        host: &HostName,
        report: &JobReport,
        log_tail: &[u8],
        at: SystemTime,
        batch: &mut Batch,
    ) -> ApplyResult {
        let store = &self.store;
        let Some(mut job) = self.running_attempt(r, Some(host))? else {
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
                        self.gate_follows(&commit, at, batch)?;
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
                        self.drop_old_artifacts(release, batch)?;
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
                self.finish_commit_if_done(&job, Some((r.attempt, tests.as_slice())), Some(book), at, batch)?;
            }
        }
        Ok(Ok(Applied::Done))
    }

    /// After `changed` (already in `batch`) changed state: if every job of its commit is done,
    /// the commit passes or fails, its flaky tests are noted, and the gate follows. `current` is
    /// the attempt just recorded with its results (not yet in the store), `book` the repository's
    /// test book if the caller read it.
    fn finish_commit_if_done(
        &self,
        changed: &JobRecord,
        current: Option<(u32, &[TestResult])>,
        book: Option<crate::ci::TestBook>,
        at: SystemTime,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let store = &self.store;
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
        self.gate_follows(&commit, at, batch)
    }

    /// Moves the branch's gate after `commit` finished.
    fn gate_follows(&self, commit: &CommitRecord, at: SystemTime, batch: &mut Batch) -> Result<(), StoreError> {
        let current = self.store.gate(&commit.repo, &commit.branch)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn machine() -> (Machine, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        (Machine::new(Store::open(&dir.0).unwrap()), dir)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p =
                    std::env::temp_dir().join(format!("fifty-state-{}-{}", std::process::id(), rand::random::<u64>()));
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn join_token(max_uses: Option<u32>, expires_at: Option<SystemTime>) -> TokenRecord {
        TokenRecord {
            accessor: "acc1".into(),
            hash: "h1".into(),
            role: Role::Agent,
            description: String::new(),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at,
            max_uses,
            uses: 0,
            revoked: false,
        }
    }

    fn host(name: &str, serial: &str) -> HostRecord {
        HostRecord {
            name: HostName::new(name).unwrap(),
            labels: "role=prod".parse().unwrap(),
            serial: serial.into(),
            enrolled_at: SystemTime::UNIX_EPOCH,
            token_accessor: "acc1".into(),
        }
    }

    fn enroll(m: &mut Machine, name: &str, serial: &str, at: SystemTime) -> Result<Applied, Rejection> {
        m.apply(&Command::EnrollHost { token_hash: "h1".into(), host: host(name, serial), at }, Batch::default())
            .unwrap()
    }

    #[test]
    fn a_single_use_token_enrolls_once() {
        let (mut m, _d) = machine();
        m.apply(&Command::CreateToken(join_token(Some(1), None)), Batch::default()).unwrap().unwrap();
        let now = SystemTime::now();
        assert!(enroll(&mut m, "web-1", "01", now).is_ok());
        assert_eq!(enroll(&mut m, "web-2", "02", now), Err(Rejection::TokenUsedUp { max: 1 }));
        assert!(m.store().host(&HostName::new("web-2").unwrap()).unwrap().is_none());
    }

    #[test]
    fn an_expired_token_is_refused_by_the_command_time() {
        let (mut m, _d) = machine();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        m.apply(&Command::CreateToken(join_token(None, Some(t0))), Batch::default()).unwrap().unwrap();
        assert!(enroll(&mut m, "web-1", "01", t0 - Duration::from_secs(1)).is_ok());
        assert!(matches!(enroll(&mut m, "web-2", "02", t0), Err(Rejection::TokenExpired { .. })));
    }

    #[test]
    fn removing_a_host_revokes_its_serial() {
        let (mut m, _d) = machine();
        m.apply(&Command::CreateToken(join_token(None, None)), Batch::default()).unwrap().unwrap();
        enroll(&mut m, "web-1", "0a", SystemTime::now()).unwrap();
        let name = HostName::new("web-1").unwrap();
        let out =
            m.apply(&Command::RemoveHost { name: name.clone(), at: SystemTime::now() }, Batch::default()).unwrap();
        assert_eq!(out, Ok(Applied::Removed { serial: "0a".into() }));
        assert!(m.store().host(&name).unwrap().is_none());
        assert!(m.store().host_by_serial("0a").unwrap().is_none());
        assert_eq!(m.store().revocation("0a").unwrap().unwrap().host, name);
    }

    #[test]
    fn old_artifacts_are_dropped_unless_a_host_runs_them() {
        use sha2::Digest as _;
        let (m, _d) = machine();
        let repo = RepoName::new("shop").unwrap();
        let bytes = |id: u64| format!("artifact {id:08}").into_bytes();
        let digest = |id: u64| hex::encode(sha2::Sha256::digest(bytes(id)));
        let release = |id: u64| crate::deploy::ReleaseRecord {
            id,
            repo: repo.clone(),
            sha: "a".repeat(40),
            subject: String::new(),
            digest: digest(id),
            size: 17,
            manifest: vec![],
            signature: vec![],
            plan: crate::deploy::DeployPlan {
                hosts: "role=prod".into(),
                waves: vec![],
                bake: Duration::ZERO,
                auto: true,
                max_unavailable: "1".into(),
                progress_deadline: Duration::from_secs(60),
                immune: None,
            },
            created_at: SystemTime::UNIX_EPOCH,
        };
        let mut b = Batch::default();
        for id in 1..=12 {
            b.put_release(&release(id));
            m.store().blobs().put(&digest(id), &bytes(id)).unwrap();
            b.put_blob_available(&digest(id), 17);
        }
        b.put_host_target(&crate::deploy::HostTarget {
            host: HostName::new("web-1").unwrap(),
            repo: repo.clone(),
            release: 1,
            since: SystemTime::UNIX_EPOCH,
        });
        m.store().apply(b).unwrap();
        let mut b = Batch::default();
        m.drop_old_artifacts(&release(12), &mut b).unwrap();
        m.store().apply(b).unwrap();
        // The record and, once the batch is applied, the blob file.
        let kept = |id: u64| {
            let recorded = m.store().blob_size(&digest(id)).unwrap().is_some();
            let held = m.store().blobs().size(&digest(id)).unwrap().is_some();
            assert_eq!(recorded, held, "release {id}: record and file go together");
            recorded
        };
        assert!(kept(1), "a host is targeted at release 1");
        assert!(!kept(2), "release 2 is older than the newest ten");
        assert!((3..=12).all(kept), "the newest ten are kept");
        assert!(m.store().release(2).unwrap().is_some(), "the record stays");
        // Dropping again (an entry applied again after a restart) is harmless.
        let mut b = Batch::default();
        b.remove_blob(&digest(2), 17);
        m.store().apply(b).unwrap();
        let _ = std::fs::remove_dir_all(m.store().blobs().dir());
    }

    mod ci {
        use super::*;
        use crate::ci::{JobReport, TestPlan, TestResult};

        fn b(name: &str) -> HostName {
            HostName::new(name).unwrap()
        }

        fn apply(m: &mut Machine, cmd: Command) -> Result<Applied, Rejection> {
            m.apply(&cmd, Batch::default()).unwrap()
        }

        fn repo() -> RepoName {
            RepoName::new("shop").unwrap()
        }

        fn finish(m: &mut Machine, job: JobRef, host: &str, report: JobReport) -> Result<Applied, Rejection> {
            let cmd =
                Command::FinishJob { job, host: b(host), report, log_tail: b"out".to_vec(), at: SystemTime::now() };
            apply(m, cmd)
        }

        fn assign(m: &mut Machine, job: u64, host: &str) -> JobRef {
            match apply(m, Command::AssignJobs { jobs: vec![(job, b(host))], at: SystemTime::now() }) {
                Ok(Applied::Assigned(refs)) if refs.len() == 1 => refs[0],
                other => panic!("assign {job} to {host}: {other:?}"),
            }
        }

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

        /// The immune system's revert through the state machine alone: one entry turns the
        /// rollout back, closes the gate, queues the git revert, opens the incident and the
        /// notification; a second leader's copy of the same decision is refused; the hosts coming
        /// back, the revert commit, the admin opening the gate and the delivery are recorded.
        #[test]
        fn an_immune_revert_is_one_decision_with_five_effects() {
            use crate::deploy::{Kind, Rollout, WaveStep};
            let (mut m, _d) = machine();
            let now = SystemTime::now();
            let record = RepoRecord {
                name: repo(),
                url: "/srv/shop.git".into(),
                branch: "main".into(),
                fix_marker: "[fix]".into(),
                webhook_secret: None,
                added_at: now,
            };
            apply(&mut m, Command::PutRepo(record)).unwrap();
            let hook = Command::AddWebhook {
                url: "http://127.0.0.1:9/hook".into(),
                format: crate::notify::Format::Json,
                by: "admin".into(),
                at: now,
            };
            apply(&mut m, hook).unwrap();
            let hosts = vec![b("web-1"), b("web-2"), b("web-3")];
            let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(100)];
            let d = Duration::from_secs(10);
            let start = Rollout::start(1, repo(), Kind::Deploy, 2, Some(1), hosts, waves, d, 1, d * 6, now);
            let cmd = Command::StartRollout { rollout: start.rollout.clone(), targets: start.targets, at: now };
            apply(&mut m, cmd).unwrap();
            let bad = "3f2a9c1e20".repeat(4);
            let why = "error_rate 0.41% → 3.9% (+850%, p=2e-05)";
            let step = start.rollout.revert(why, now).unwrap();
            let incident = crate::incidents::IncidentRecord {
                id: 0,
                repo: Some(repo()),
                branch: "main".into(),
                title: "t".into(),
                opened_at: now,
                sha: bad.clone(),
                subject: "Faster checkout".into(),
                release: 2,
                previous: 1,
                rollout: 1,
                reason: why.into(),
                evidence: vec![format!("FAIL: {why}")],
                revert_job: None,
                revert: None,
                timeline: vec![],
                whys: vec![],
                actions: vec![],
                closed: None,
                alert: None,
            };
            let decide = Command::ImmuneRevert {
                rollout: step.rollout.clone(),
                targets: step.targets.clone(),
                incident: incident.clone(),
                at: now,
            };
            apply(&mut m, decide.clone()).unwrap();
            assert_eq!(apply(&mut m, decide), Err(Rejection::RolloutConflict(1)), "a second copy is refused");

            let store = m.store();
            // 1. The canary goes back.
            let targets = store.host_targets().unwrap();
            assert_eq!(targets.iter().find(|t| t.host == b("web-1")).map(|t| t.release), Some(1));
            // 2. The gate closes, naming the commit and the incident.
            let gate = store.gate(&repo(), "main").unwrap().unwrap().closed.unwrap();
            assert_eq!(gate.cause, Cause::Immune { sha: bad.clone(), incident: 1 });
            assert_eq!(gate.reason, format!("immune system reverted 3f2a9c1e20: {why}"));
            // 3. The revert is queued for a build agent. 4. The incident. 5. The notification.
            let i = store.incident(1).unwrap().unwrap();
            let job = store.job(i.revert_job.unwrap()).unwrap().unwrap();
            assert!(matches!(&job.kind, JobKind::Revert { revert, branch, .. } if *revert == bad && branch == "main"));
            assert_eq!(job.state, JobState::Queued);
            assert!(i.timeline.iter().any(|(_, e)| e.starts_with("gate of main closed")), "{:?}", i.timeline);
            let n = store.notification(1).unwrap().unwrap();
            assert_eq!((n.kind.as_str(), n.incident, n.to.clone()), ("immune.revert", Some(1), vec![(1, false)]));

            // The hosts are back: the rollout ends, and the incident says so.
            let back =
                step.rollout.step(&std::collections::HashMap::new(), &crate::deploy::Judgement::Off, now).unwrap();
            let cmd = Command::StepRollout { rollout: back.rollout, targets: back.targets, at: now };
            apply(&mut m, cmd).unwrap();
            // The revert commit is pushed.
            let r = assign(&mut m, job.id, "build-1");
            finish(&mut m, r, "build-1", JobReport::Revert { outcome: Ok("9b64de79f4".repeat(4)) }).unwrap();
            // An admin opens the gate; the webhook got it.
            let open = GateRecord {
                repo: repo(),
                branch: "main".into(),
                closed: None,
                changed_at: now,
                changed_by: "token a (admin)".into(),
                last_finished_seq: 0,
            };
            apply(&mut m, Command::SetGate(open)).unwrap();
            apply(&mut m, Command::Delivered { notification: 1, webhook: 1 }).unwrap();
            let store = m.store();
            let i = store.incident(1).unwrap().unwrap();
            let said: Vec<&str> = i.timeline.iter().map(|(_, e)| e.as_str()).collect();
            assert!(said.iter().any(|e| e.starts_with("every host of rollout 1 is back on release 1")), "{said:?}");
            assert!(said.iter().any(|e| e.starts_with("revert commit 9b64de79f4 pushed to main")), "{said:?}");
            assert!(said.iter().any(|e| e.starts_with("gate of main opened by token a")), "{said:?}");
            assert_eq!(i.revert, Some(Ok("9b64de79f4".repeat(4))));
            assert_eq!(store.notification(1).unwrap().unwrap().to, vec![(1, true)]);
            assert_eq!(store.job(job.id).unwrap().unwrap().state, JobState::Passed);

            // A held wave (the next rollout) notifies the webhooks once.
            let hosts = vec![b("web-1"), b("web-2")];
            let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(100)];
            let start = Rollout::start(2, repo(), Kind::Deploy, 3, Some(1), hosts, waves, d, 1, d * 6, now);
            let cmd = Command::StartRollout { rollout: start.rollout.clone(), targets: start.targets, at: now };
            apply(&mut m, cmd).unwrap();
            let mut held = start.rollout.clone();
            held.version += 1;
            held.held = Some("error_rate has no data".into());
            apply(&mut m, Command::StepRollout { rollout: held.clone(), targets: vec![], at: now }).unwrap();
            held.version += 1;
            apply(&mut m, Command::StepRollout { rollout: held, targets: vec![], at: now }).unwrap();
            let notes = m.store().notifications().unwrap();
            assert_eq!(notes.iter().filter(|n| n.kind == "immune.hold").count(), 1, "{notes:?}");
            assert!(notes[1].text.contains("error_rate has no data"));
        }

        fn add_repo(m: &mut Machine) {
            let record = RepoRecord {
                name: repo(),
                url: "/srv/shop.git".into(),
                branch: "main".into(),
                fix_marker: "[fix]".into(),
                webhook_secret: None,
                added_at: SystemTime::now(),
            };
            apply(m, Command::PutRepo(record)).unwrap();
        }

        fn quarantine(m: &mut Machine, test: String, by: &str) -> ApplyResult {
            let cmd = Command::SetQuarantine { repo: repo(), test, on: true, by: by.into(), at: SystemTime::now() };
            m.apply(&cmd, Batch::default())
        }

        /// A command whose record would outgrow a record (here a repository's test book, which
        /// two quarantines of ~600 KB names would take past 1 MiB) is rejected alike on every
        /// node, and the machine goes on: applying never fails on content, so no entry can stop
        /// the cluster. (Before the bound, the encode error stopped the Raft loop on every node,
        /// again after every restart.)
        #[test]
        fn a_record_over_its_bound_is_rejected_and_apply_goes_on() {
            let (mut m, _d) = machine();
            add_repo(&mut m);
            let big = |c: char| c.to_string().repeat(600 * 1024);
            assert_eq!(quarantine(&mut m, big('a'), "admin").expect("apply does not fail"), Ok(Applied::Done));
            let mut extra = Batch::default();
            crate::store::raft_log::RaftLog::set_applied(&mut extra, 7);
            let cmd = Command::SetQuarantine {
                repo: repo(),
                test: big('b'),
                on: true,
                by: "admin".into(),
                at: SystemTime::now(),
            };
            let out = m.apply(&cmd, extra).expect("apply does not fail on a record over its bound");
            assert!(matches!(&out, Err(Rejection::TooLarge(why)) if why.contains("sm/tests/shop")), "{out:?}");
            assert_eq!(m.store().tests(&repo()).unwrap().quarantined.len(), 1, "the rejected command wrote nothing");
            let applied = crate::store::raft_log::RaftLog::new(m.store().clone()).applied().unwrap();
            assert_eq!(applied, 7, "the applied index still moves with a rejected command");
            // And the machine still takes ordinary commands.
            assert_eq!(quarantine(&mut m, "small".into(), "admin").unwrap(), Ok(Applied::Done));
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

        /// The immune system's git revert job names the reverted commit by the commit's own
        /// sequence number, not by the release's id (it carried the release id).
        #[test]
        fn the_revert_job_names_the_commit_it_reverts() {
            use crate::deploy::{Kind, Rollout, WaveStep};
            let (mut m, _d) = machine();
            let now = SystemTime::now();
            add_repo(&mut m);
            let (good, bad) = ("a".repeat(40), "b".repeat(40));
            let commits = [&good, &bad]
                .into_iter()
                .map(|sha| NewCommit { sha: sha.clone(), subject: "s".into(), author: "a".into() })
                .collect();
            let notify =
                Command::NotifyCommits { repo: repo(), branch: "main".into(), commits, delivery: None, at: now };
            apply(&mut m, notify).unwrap();
            let seq = m.store().commit_by_sha(&repo(), &bad).unwrap().unwrap().seq;
            let (release, d) = (9, Duration::from_secs(10));
            assert_ne!(seq, release);
            let hosts = vec![b("web-1"), b("web-2")];
            let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(100)];
            let start = Rollout::start(1, repo(), Kind::Deploy, release, Some(1), hosts, waves, d, 1, d * 6, now);
            let cmd = Command::StartRollout { rollout: start.rollout.clone(), targets: start.targets, at: now };
            apply(&mut m, cmd).unwrap();
            let step = start.rollout.revert("worse", now).unwrap();
            let incident = crate::incidents::IncidentRecord {
                id: 0,
                repo: Some(repo()),
                branch: "main".into(),
                title: "t".into(),
                opened_at: now,
                sha: bad.clone(),
                subject: "s".into(),
                release,
                previous: 1,
                rollout: 1,
                reason: "worse".into(),
                evidence: vec![],
                revert_job: None,
                revert: None,
                timeline: vec![],
                whys: vec![],
                actions: vec![],
                closed: None,
                alert: None,
            };
            let decide = Command::ImmuneRevert { rollout: step.rollout, targets: step.targets, incident, at: now };
            apply(&mut m, decide).unwrap();
            let store = m.store();
            let job = store.job(store.incident(1).unwrap().unwrap().revert_job.unwrap()).unwrap().unwrap();
            assert_eq!(job.commit_seq, seq);
            assert_eq!(store.commit(&repo(), job.commit_seq).unwrap().unwrap().sha, bad);
        }

        /// A deploy of a newer release takes over the deploy in progress (which ends superseded)
        /// and moves its hosts; a paused rollout, or an older release, is not taken over.
        #[test]
        fn a_newer_release_supersedes_the_rollout_in_progress() {
            use crate::deploy::{Kind, Outcome, Rollout, WaveStep};
            let (mut m, _d) = machine();
            let now = SystemTime::now();
            add_repo(&mut m);
            let d = Duration::from_secs(10);
            let hosts = vec![b("web-1"), b("web-2"), b("web-3")];
            let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(100)];
            let start = |id, release, hosts: Vec<HostName>, waves: Vec<WaveStep>| {
                Rollout::start(id, repo(), Kind::Deploy, release, Some(6), hosts, waves, d, 1, d * 6, now)
            };
            let seven = start(1, 7, hosts.clone(), waves.clone());
            let cmd = Command::StartRollout { rollout: seven.rollout.clone(), targets: seven.targets, at: now };
            apply(&mut m, cmd).unwrap();

            let (carried, carried_waves) = seven.rollout.carry_over(hosts.clone(), waves.clone());
            let eight = start(2, 8, carried, carried_waves);
            let cmd = Command::StartRollout { rollout: eight.rollout.clone(), targets: eight.targets, at: now };
            assert_eq!(apply(&mut m, cmd), Ok(Applied::Done));
            let store = m.store();
            assert_eq!(store.rollout(1).unwrap().unwrap().outcome, Some(Outcome::Superseded { by: 2 }));
            assert_eq!(store.target(&repo()).unwrap().active, Some(2));
            let web1 = store.host_targets().unwrap().into_iter().find(|t| t.host == b("web-1")).unwrap();
            assert_eq!(web1.release, 8, "7's canary moved to 8");

            let older = start(3, 5, hosts.clone(), waves.clone());
            let cmd = Command::StartRollout { rollout: older.rollout, targets: older.targets, at: now };
            assert_eq!(apply(&mut m, cmd), Err(Rejection::RolloutBusy(2)), "an older release waits");
            let paused = eight.rollout.set_paused(true, "admin", now).unwrap();
            apply(&mut m, Command::StepRollout { rollout: paused.rollout, targets: vec![], at: now }).unwrap();
            let nine = start(3, 9, hosts, waves);
            let cmd = Command::StartRollout { rollout: nine.rollout, targets: nine.targets, at: now };
            assert_eq!(apply(&mut m, cmd), Err(Rejection::RolloutBusy(2)), "a paused rollout waits for its person");
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
            assert_eq!(
                apply(&mut m, notify.clone()),
                Ok(Applied::Notified { new: vec![sha.clone()], duplicate: false })
            );
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

    #[test]
    fn an_enrolled_name_is_refused_until_an_admin_removes_the_host() {
        let (mut m, _d) = machine();
        m.apply(&Command::CreateToken(join_token(None, None)), Batch::default()).unwrap().unwrap();
        enroll(&mut m, "web-1", "0a", SystemTime::now()).unwrap();
        let out = enroll(&mut m, "web-1", "0b", SystemTime::now());
        assert_eq!(out, Err(Rejection::HostEnrolled(HostName::new("web-1").unwrap())));
        // Nothing changed: the real host keeps its certificate, and the token its uses.
        assert!(m.store().revocation("0a").unwrap().is_none());
        assert_eq!(m.store().host_by_serial("0a").unwrap().unwrap().as_str(), "web-1");
        assert!(m.store().host_by_serial("0b").unwrap().is_none());
        assert_eq!(m.store().token("h1").unwrap().unwrap().uses, 1);
        // Removed by an admin, the name is free again.
        let web1 = HostName::new("web-1").unwrap();
        m.apply(&Command::RemoveHost { name: web1, at: SystemTime::now() }, Batch::default()).unwrap().unwrap();
        assert_eq!(enroll(&mut m, "web-1", "0b", SystemTime::now()), Ok(Applied::Enrolled));
        assert_eq!(m.store().host_by_serial("0b").unwrap().unwrap().as_str(), "web-1");
    }
}
