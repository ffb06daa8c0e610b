//! The coordinator's state machine. Every decision is a [`Command`]; [`Machine::apply`] checks it
//! against the stored state and writes the result to the [`Store`]. Commands carry everything
//! they need (times, signed certificates, hashes), so applying one is deterministic: the same log
//! of commands gives the same state on every node. That is what lets a replicated log slot in
//! under this module without changing it.
//!
//! The records every feature shares (cluster, tokens, hosts, members, repositories, gates) and the
//! commands on them are applied here; every other command is applied by its feature's module
//! (`ci::apply`, `deploy::apply`, `immune::apply`, `incidents`, `notify`, `experiments`,
//! `alerts::ops`), a free function that reads the store and adds its writes to the command's batch.
//!
//! Soft state (heartbeats, health) is not here: see `fleet`.

use std::time::SystemTime;

use bincode::{Decode, Encode};
use fifty_shared::ids::{HostName, Labels, RepoName, Role};

use fifty_shared::wire::JobRef;

use crate::ci::{JobReport, NewCommit};
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

/// The newest version of [`Command`] this binary understands. A release that adds a kind of
/// command raises it and makes [`Command::since`] return the new version for that kind: the
/// leader then proposes it only once every voter reports it (a rolling upgrade's old followers
/// would stop at an entry they cannot decode). Commands are only ever added at the end.
pub const STATE_VERSION: u32 = 6;

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
    /// The immune system's sequential tests of the wave baking now, so far: a new leader
    /// continues them from here (see `immune::evidence`). Refused for a rollout that is not
    /// baking that wave any more, and over its bounds.
    ImmuneEvidence {
        /// The evidence.
        evidence: crate::immune::evidence::WaveEvidence,
    },
    /// Creates an experiment (state version 4): with its schedule of scheduled looks, if any, and
    /// the record of its looks and peaks of evidence, both kept in records of their own
    /// (`experiments::RunningRecord`). [`Command::CreateExperiment`] stays as it was, for a
    /// cluster that still has a version 3 voter.
    CreateExperimentV4 {
        /// The definition, in the layout every version reads.
        experiment: crate::experiments::ExperimentRecord,
        /// Scheduled looks (judged by a group-sequential test); None: looked at any time.
        schedule: Option<crate::experiments::Schedule>,
    },
    /// Forget what is out of retention (state version 5): records that finished before the
    /// cut-off times, fixed by the leader when it proposes this, except what is still needed
    /// (see `retention`). Never rejected; what it removed is recorded in `sm/retention`.
    Forget {
        /// The cut-off times.
        cutoffs: crate::retention::Cutoffs,
        /// When it was proposed.
        at: SystemTime,
    },
    /// At the end of a judged wave (state version 6): what its baseline hosts say about the
    /// spread of healthy hosts' changes, folded into `repo`'s learned spreads
    /// (`immune::spread`). A wave already folded in changes nothing; a sample no judge could
    /// have made is refused.
    LearnSpread {
        /// The rollout's repository.
        repo: RepoName,
        /// The rollout.
        rollout: u64,
        /// Its wave.
        wave: u64,
        /// One sample per metric that has one.
        samples: Vec<crate::immune::spread::SpreadSample>,
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
            Command::ImmuneEvidence { .. } => 3,
            Command::CreateExperimentV4 { .. } => 4,
            Command::Forget { .. } => 5,
            Command::LearnSpread { .. } => 6,
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
    /// The immune system's evidence is over its bounds or malformed.
    #[error("immune evidence refused: {0}")]
    BadEvidence(String),
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
                crate::ci::apply::notify_commits(store, repo, branch, commits, delivery.as_deref(), *at, batch)?
            }
            Command::AssignJobs { jobs, at } => crate::ci::apply::assign_jobs(store, jobs, *at, batch)?,
            Command::FinishJob { job, host, report, log_tail, at } => {
                crate::ci::apply::finish_job(store, *job, host, report, log_tail, *at, batch)?
            }
            Command::RequeueJob { job, why, at } => crate::ci::apply::requeue_job(store, *job, why, *at, batch)?,
            Command::PutBlob { digest, index, .. } => crate::deploy::apply::put_blob(digest, *index)?,
            Command::BlobAvailable { digest, size } => crate::deploy::apply::blob_available(digest, *size, batch)?,
            Command::StartRollout { rollout, targets, at } => {
                crate::deploy::apply::start_rollout(store, rollout, targets, *at, batch)?
            }
            Command::ImmuneRevert { rollout, targets, incident, at } => {
                crate::immune::apply::immune_revert(store, rollout, targets, incident, *at, batch)?
            }
            Command::ImmuneEvidence { evidence } => crate::immune::apply::immune_evidence(store, evidence, batch)?,
            Command::LearnSpread { repo, rollout, wave, samples } => {
                crate::immune::apply::learn_spread(store, repo, *rollout, *wave, samples, batch)?
            }
            Command::ChangeIncident { id, change, by, at } => {
                crate::incidents::apply_change(store, *id, change, by, *at, batch)?
            }
            Command::AddWebhook { url, format, by, at } => {
                crate::notify::apply_add_webhook(store, url, *format, by, *at, batch)?
            }
            Command::RemoveWebhook { id } => crate::notify::apply_remove_webhook(store, *id, batch)?,
            Command::Delivered { notification, webhook } => {
                crate::notify::apply_delivered(store, *notification, *webhook, batch)?
            }
            Command::StepRollout { rollout, targets, at } => {
                crate::deploy::apply::step_rollout(store, rollout, targets, *at, batch)?
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
                crate::ci::apply::set_quarantine(store, repo, test, *on, by, *at, batch)?
            }
            Command::CreateExperiment(rec) => return crate::experiments::apply_create(store, rec, batch),
            Command::RampExperiment { name, weights, at } => {
                return crate::experiments::apply_ramp(store, name, weights, *at, batch)
            }
            Command::StopExperiment { name, winner, at } => {
                return crate::experiments::apply_stop(store, name, *winner, *at, batch)
            }
            Command::CreateExperimentV4 { experiment, schedule } => {
                return crate::experiments::apply_create_v4(store, experiment, *schedule, true, batch)
            }
            Command::DeleteExperiment { name } => return crate::experiments::apply_delete(store, name, batch),
            Command::Forget { cutoffs, at } => crate::retention::apply_forget(store, cutoffs, *at, batch)?,
            Command::RecordExperimentReport { host, report, at } => {
                return crate::experiments::apply_report(store, host, report, *at, batch)
            }
        })
    }
}

/// What the tests of every feature's commands share: a machine on a temporary store, and
/// helpers that apply commands to it.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use crate::ci::JobReport;

    pub(crate) fn machine() -> (Machine, tempdir::Dir) {
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

    pub(crate) fn b(name: &str) -> HostName {
        HostName::new(name).unwrap()
    }

    pub(crate) fn apply(m: &mut Machine, cmd: Command) -> Result<Applied, Rejection> {
        m.apply(&cmd, Batch::default()).unwrap()
    }

    pub(crate) fn repo() -> RepoName {
        RepoName::new("shop").unwrap()
    }

    pub(crate) fn finish(m: &mut Machine, job: JobRef, host: &str, report: JobReport) -> Result<Applied, Rejection> {
        let cmd = Command::FinishJob { job, host: b(host), report, log_tail: b"out".to_vec(), at: SystemTime::now() };
        apply(m, cmd)
    }

    pub(crate) fn assign(m: &mut Machine, job: u64, host: &str) -> JobRef {
        match apply(m, Command::AssignJobs { jobs: vec![(job, b(host))], at: SystemTime::now() }) {
            Ok(Applied::Assigned(refs)) if refs.len() == 1 => refs[0],
            other => panic!("assign {job} to {host}: {other:?}"),
        }
    }

    pub(crate) fn add_repo(m: &mut Machine) {
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

    pub(crate) fn quarantine(m: &mut Machine, test: String, by: &str) -> ApplyResult {
        let cmd = Command::SetQuarantine { repo: repo(), test, on: true, by: by.into(), at: SystemTime::now() };
        m.apply(&cmd, Batch::default())
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use std::time::Duration;

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
