//! The JSON bodies of the HTTPS API. The server builds them; the CLI reads them back with the
//! same types, so `--json` output and the API never disagree.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::fleet::HostState;

/// RFC 3339 text of a time, to the millisecond. It never fails: RFC 3339 has four-digit years,
/// so a time before 1970 shows as the epoch and one past 9999 as the last millisecond of 9999.
/// Durations from users are bounded now, but a record stored before they were may hold such a
/// time, and listing it must still work.
pub fn rfc3339(t: SystemTime) -> String {
    let last = SystemTime::UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    humantime::format_rfc3339_millis(t.clamp(SystemTime::UNIX_EPOCH, last)).to_string()
}

/// The time an RFC 3339 text names, if it is one.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()
}

/// One host in `GET /v1/hosts`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostView {
    /// Host name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `ready` or `down`.
    pub state: HostState,
    /// CPU use, percent of all cores.
    pub cpu_percent: Option<f32>,
    /// Load averages (1, 5, 15 min).
    pub load: Option<[f32; 3]>,
    /// Memory in use, bytes.
    pub mem_used_bytes: Option<u64>,
    /// Memory installed, bytes.
    pub mem_total_bytes: Option<u64>,
    /// Free disk under the agent's data dir, bytes.
    pub disk_free_bytes: Option<u64>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Last heartbeat received by this coordinator, RFC 3339.
    pub last_seen: Option<String>,
    /// Seconds since then.
    pub last_seen_secs_ago: Option<f64>,
    /// When it enrolled, RFC 3339.
    pub enrolled_at: String,
    /// Serial of its certificate.
    pub cert_serial: String,
}

/// Host counts in `GET /v1/status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HostCounts {
    /// All enrolled hosts.
    pub total: usize,
    /// Reporting.
    pub ready: usize,
    /// Not reporting.
    pub down: usize,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    /// Coordinator version.
    pub version: String,
    /// When the cluster was created (none while it is still forming).
    pub cluster_created_at: Option<String>,
    /// SHA-256 of the cluster CA.
    pub ca_fingerprint: String,
    /// The answering coordinator's Raft id.
    pub node_id: String,
    /// The leader's Raft id, if one is known.
    pub leader_id: Option<String>,
    /// Raft term.
    pub term: u64,
    /// Raft commit index on the answering coordinator.
    pub commit_index: u64,
    /// Raft applied index on the answering coordinator.
    pub applied_index: u64,
    /// Voting coordinators.
    pub coordinators: usize,
    /// Address of the HTTPS API.
    pub http_addr: String,
    /// Address of the QUIC endpoint.
    pub quic_addr: String,
    /// Seconds since this coordinator started.
    pub uptime_secs: u64,
    /// Agents connected right now.
    pub agent_links: usize,
    /// Host counts.
    pub hosts: HostCounts,
    /// Heartbeat interval the agents are told to use, e.g. `1s`.
    pub heartbeat_interval: String,
    /// How long without a heartbeat makes a host down, e.g. `5s`.
    pub down_after: String,
    /// How big the answering coordinator's state and Raft log are (absent from older servers).
    #[serde(default)]
    pub store: Option<crate::store::StoreSizes>,
    /// Artifacts the state names: how many, and their bytes (in the blob store, beside sled).
    #[serde(default)]
    pub artifacts: Option<(u64, u64)>,
    /// Retention's settings and what it last removed.
    #[serde(default)]
    pub retention: Option<RetentionView>,
}

/// Retention in `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RetentionView {
    /// The settings, as a person reads them (`off`, or what is kept how long).
    pub settings: String,
    /// When it last removed something (none yet: never).
    pub last_run: Option<String>,
    /// What it removed then.
    pub removed: crate::retention::Removed,
    /// Whether that run stopped at its bound with more to remove (the next follows at once).
    pub more: bool,
    /// Everything it removed since the cluster began.
    pub total: crate::retention::Removed,
}

/// One token in `GET /v1/tokens` (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenView {
    /// Public id.
    pub accessor: String,
    /// Role.
    pub role: String,
    /// Note.
    pub description: String,
    /// Created, RFC 3339.
    pub created_at: String,
    /// Expires, RFC 3339.
    pub expires_at: Option<String>,
    /// Use limit (join tokens).
    pub max_uses: Option<u32>,
    /// Uses so far.
    pub uses: u32,
    /// Revoked by an admin.
    pub revoked: bool,
    /// Past its expiry now.
    pub expired: bool,
}

impl TokenView {
    /// The view of a stored token at `now`.
    pub fn of(t: &crate::state::TokenRecord, now: SystemTime) -> Self {
        TokenView {
            expired: t.expires_at.is_some_and(|at| now >= at),
            accessor: t.accessor.clone(),
            role: t.role.to_string(),
            description: t.description.clone(),
            created_at: rfc3339(t.created_at),
            expires_at: t.expires_at.map(rfc3339),
            max_uses: t.max_uses,
            uses: t.uses,
            revoked: t.revoked,
        }
    }
}

/// `POST /v1/tokens` request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CreateToken {
    /// `admin`, `ci`, `read` or `agent`.
    pub role: String,
    /// Lifetime, e.g. `1h`. Join tokens default to 1h; API tokens to no expiry.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Join tokens: how many hosts it may enroll (default 1). 0 means unlimited until expiry.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// A note.
    #[serde(default)]
    pub description: String,
}

/// `POST /v1/tokens` answer: the only time the secret is shown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenCreated {
    /// Public id.
    pub accessor: String,
    /// Role.
    pub role: String,
    /// The token to hand out.
    pub token: String,
    /// Expires, RFC 3339.
    pub expires_at: Option<String>,
}

/// One coordinator in `GET /v1/cluster/members`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberView {
    /// Raft node id (16 hex digits).
    pub id: String,
    /// QUIC address.
    pub quic_addr: String,
    /// HTTPS API address.
    pub http_addr: String,
    /// Whether it leads.
    pub leader: bool,
    /// Whether it votes.
    pub voter: bool,
    /// Whether it is a learner: added, catching up, not voting yet.
    #[serde(default)]
    pub learner: bool,
    /// Highest log index known replicated to it (reported by the leader).
    pub matched: Option<u64>,
}

/// `GET /v1/cluster/members`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterView {
    /// The answering coordinator.
    pub node_id: String,
    /// The leader, if known.
    pub leader_id: Option<String>,
    /// Raft term.
    pub term: u64,
    /// Commit index on the answering coordinator.
    pub commit_index: u64,
    /// Applied index on the answering coordinator.
    pub applied_index: u64,
    /// The coordinators.
    pub members: Vec<MemberView>,
}

/// One repository in `GET /v1/repos`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RepoView {
    /// Name in Fifty.
    pub name: String,
    /// Git URL build hosts fetch.
    pub url: String,
    /// The branch Fifty gates and deploys.
    pub branch: String,
    /// What a commit message carries to pass a gate closed by a red build.
    pub fix_marker: String,
    /// Whether GitHub-style webhooks are accepted (a secret is set).
    pub webhook: bool,
    /// When it was added.
    pub added_at: String,
}

/// `POST /v1/repos`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AddRepo {
    /// Name in Fifty.
    pub name: String,
    /// Git URL.
    pub url: String,
    /// Branch (default `main`).
    #[serde(default)]
    pub branch: Option<String>,
    /// Fix marker (default `[fix]`).
    #[serde(default)]
    pub fix_marker: Option<String>,
    /// Secret for GitHub-style webhooks (HMAC-SHA256); none: webhooks are refused.
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

/// `GET /v1/repos/{repo}/gate`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GateView {
    /// Repository.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// Whether the gate is open.
    pub open: bool,
    /// For the message given (if any): `open`, `fix_allowed` or `closed`.
    pub verdict: crate::gate::Verdict,
    /// Why it is closed.
    pub reason: Option<String>,
    /// What closed it.
    pub cause: Option<crate::gate::Cause>,
    /// Closed since, RFC 3339.
    pub since: Option<String>,
    /// Who changed it last.
    pub changed_by: Option<String>,
    /// The repository's fix marker.
    pub fix_marker: String,
}

/// `POST /v1/repos/{repo}/gate/close` and `/open`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GateChange {
    /// Branch (default: the repository's).
    #[serde(default)]
    pub branch: Option<String>,
    /// Why (closing).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/repos/{repo}/commits`: commits pushed to a branch, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NotifyCommits {
    /// The branch they were pushed to (default: the repository's).
    #[serde(default)]
    pub branch: Option<String>,
    /// The commits.
    pub commits: Vec<crate::ci::NewCommit>,
}

/// The answer to a notification.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Notified {
    /// Repository.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// SHAs queued for testing.
    pub queued: Vec<String>,
    /// SHAs Fifty already knew.
    pub known: Vec<String>,
    /// Why nothing was queued, when nothing was (another branch, a repeated delivery).
    pub ignored: Option<String>,
}

/// One commit in `GET /v1/commits`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommitSummary {
    /// Repository.
    pub repo: String,
    /// Notification order.
    pub seq: u64,
    /// Full SHA.
    pub sha: String,
    /// Branch.
    pub branch: String,
    /// Subject line.
    pub subject: String,
    /// Author.
    pub author: String,
    /// `planning`, `testing`, `passed` or `failed`.
    pub state: crate::ci::CommitState,
    /// Why it failed other than by a test. Its first line stands alone; a bad `fifty.toml`'s goes
    /// on with the file's line and a caret under the fault.
    pub error: Option<String>,
    /// Shards planned.
    pub shards: usize,
    /// Shards passed.
    pub shards_passed: usize,
    /// Notified, RFC 3339.
    pub notified_at: String,
    /// Finished, RFC 3339.
    pub finished_at: Option<String>,
    /// From notification to result.
    pub duration_secs: Option<f64>,
    /// Tests that failed and then passed on it.
    pub flaky: Vec<String>,
}

/// One attempt of a job in `GET /v1/commits/{sha}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttemptView {
    /// From 1.
    pub attempt: u32,
    /// The build agent.
    pub host: String,
    /// Started, RFC 3339.
    pub started_at: String,
    /// How long it ran (so far, while running).
    pub duration_secs: f64,
    /// How it ended.
    pub end: crate::ci::AttemptEnd,
    /// How its process ended: `exit 0`, `timed out`, ...
    pub exit: Option<String>,
    /// Tests that passed.
    pub tests_passed: usize,
    /// Tests that failed.
    pub tests_failed: usize,
    /// Tests skipped.
    #[serde(default)]
    pub tests_skipped: usize,
    /// Notes on its reports.
    pub notes: Vec<String>,
    /// Bytes of output.
    pub log_bytes: u64,
}

/// One job of a commit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobView {
    /// Job id.
    pub id: u64,
    /// `plan`, `shard` or `package`.
    pub kind: String,
    /// Shard index; none for the plan and the package job.
    pub shard: Option<u32>,
    /// `queued`, `running`, `passed` or `failed`.
    pub state: crate::ci::JobState,
    /// Tests assigned to it.
    pub tests: usize,
    /// Its attempts.
    pub attempts: Vec<AttemptView>,
}

/// A failed test of a commit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FailedTest {
    /// Name.
    pub name: String,
    /// Shard.
    pub shard: u32,
    /// Attempt.
    pub attempt: u32,
    /// Agent.
    pub host: String,
    /// Failure message.
    pub message: String,
    /// Quarantined: reported, not failing the commit.
    pub quarantined: bool,
    /// Passed on a later attempt.
    pub flaky: bool,
}

/// `GET /v1/commits/{sha}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommitView {
    /// The summary.
    #[serde(flatten)]
    pub summary: CommitSummary,
    /// Its jobs: the plan, then the shards, then the package job.
    pub jobs: Vec<JobView>,
    /// The release built from it.
    pub release: Option<u64>,
    /// Why packaging failed, if it did.
    pub release_error: Option<String>,
    /// Every failed test, every attempt.
    pub failed_tests: Vec<FailedTest>,
    /// Advice on how it was tested, e.g. that its shards were not balanced by test durations.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl CommitView {
    /// The build agents its shards ran on (every attempt), sorted, each once.
    pub fn shard_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| j.shard.is_some())
            .flat_map(|j| j.attempts.iter().map(|a| a.host.clone()))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// `GET /v1/repos/{repo}/tests`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TestsView {
    /// Repository.
    pub repo: String,
    /// Tests with a known duration.
    pub known: usize,
    /// Sum of their durations.
    pub total_secs: f64,
    /// Every test with a known duration (its last passing run), slowest first.
    #[serde(default)]
    pub tests: Vec<TestTime>,
    /// Quarantined: name, by whom, since.
    pub quarantined: Vec<(String, String, String)>,
    /// Seen flaky: name, last commit, when.
    pub flaky: Vec<(String, String, String)>,
}

/// One test's last passing duration in [`TestsView`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TestTime {
    /// As JUnit names it.
    pub name: String,
    /// Seconds its last passing run took.
    pub duration_secs: f64,
}

/// `POST /v1/repos/{repo}/quarantine`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Quarantine {
    /// The test, as its JUnit names it.
    pub test: String,
    /// Quarantine (default) or release.
    #[serde(default = "yes")]
    pub on: bool,
}

fn yes() -> bool {
    true
}

/// An error body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// One release in `GET /v1/releases`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReleaseView {
    /// Release id.
    pub id: u64,
    /// Repository.
    pub repo: String,
    /// Commit.
    pub sha: String,
    /// Commit subject.
    pub subject: String,
    /// SHA-256 of the artifact.
    pub digest: String,
    /// Artifact size, bytes.
    pub size: u64,
    /// Recorded, RFC 3339.
    pub created_at: String,
    /// `rolling out`, `live` (the last release that reached every host), `previous` or `-`.
    pub state: String,
    /// Hosts running it now.
    pub hosts: Vec<String>,
}

/// One host of a rollout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RolloutHostView {
    /// Host.
    pub host: String,
    /// The wave (from 1) that reaches it.
    pub wave: usize,
    /// The release it should run.
    pub target: Option<u64>,
    /// The release it runs.
    pub current: Option<u64>,
    /// Its last health check passed.
    pub healthy: bool,
    /// Reporting.
    pub up: bool,
    /// A release being applied and the bytes downloaded.
    pub applying: Option<(u64, u64)>,
    /// The last release that failed there, and why.
    pub failed: Option<(u64, String)>,
}

/// One wave of a rollout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WaveView {
    /// As written: `1`, `25%`, `manual`.
    pub step: String,
    /// Hosts it reaches in all.
    pub reach: usize,
}

/// `GET /v1/rollouts/current` and the answer to steering commands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RolloutView {
    /// Rollout id.
    pub id: u64,
    /// Repository.
    pub repo: String,
    /// `deploy` or `rollback`.
    pub kind: crate::deploy::Kind,
    /// The release rolling out.
    pub release: u64,
    /// The release it goes back to on failure.
    pub previous: Option<u64>,
    /// Phase.
    pub phase: crate::deploy::Phase,
    /// Paused by a person.
    pub paused: bool,
    /// Current wave, from 1.
    pub wave: usize,
    /// The waves.
    pub waves: Vec<WaveView>,
    /// Bake per wave, e.g. `60s`.
    pub bake: String,
    /// Seconds into the current phase.
    pub phase_secs: f64,
    /// Started, RFC 3339.
    pub started_at: String,
    /// Finished, RFC 3339.
    pub finished_at: Option<String>,
    /// How it ended.
    pub outcome: Option<crate::deploy::Outcome>,
    /// Its hosts, in wave order.
    pub hosts: Vec<RolloutHostView>,
    /// What happened: (RFC 3339, line).
    pub events: Vec<(String, String)>,
    /// The immune system's latest verdict per metric for the wave baking now (leader's view).
    #[serde(default)]
    pub immune: Vec<String>,
    /// Why the wave waiting for `promote` is held, when the immune system held it.
    #[serde(default)]
    pub held: Option<String>,
    /// The immune system's tests of this rollout's latest judged wave, as replicated: what a new
    /// leader continues from.
    #[serde(default)]
    pub evidence: Option<EvidenceView>,
}

/// The replicated evidence of a wave's tests (see `immune::evidence`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvidenceView {
    /// The wave, from 1.
    pub wave: usize,
    /// When the leader recorded it, RFC 3339.
    pub recorded_at: String,
    /// The bake is counted from here (the first data from the new release), RFC 3339.
    pub first_data: Option<String>,
    /// How many times a new leader continued these tests from a record.
    pub resumes: u32,
    /// One per metric with a test.
    pub metrics: Vec<MetricEvidenceView>,
}

/// One metric's test in an [`EvidenceView`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetricEvidenceView {
    /// The metric.
    pub name: String,
    /// Looks taken.
    pub looks: u64,
    /// The always-valid p-value so far.
    pub p_value: f64,
    /// The share of alpha it is compared with.
    pub alpha: f64,
    /// Hosts on the new release with data.
    pub canary_hosts: usize,
    /// Hosts on the previous release with data (the last wave: its fleet before the rollout).
    pub baseline_hosts: usize,
    /// Hosts with a pre-deploy reference (each judged against its own past).
    pub reference_hosts: usize,
}

impl From<&crate::immune::evidence::WaveEvidence> for EvidenceView {
    fn from(e: &crate::immune::evidence::WaveEvidence) -> Self {
        EvidenceView {
            wave: e.wave + 1,
            recorded_at: rfc3339(e.at),
            first_data: e.first_data.map(rfc3339),
            resumes: e.resumes,
            metrics: e
                .metrics
                .iter()
                .map(|m| MetricEvidenceView {
                    name: m.name.clone(),
                    looks: m.test.looks,
                    p_value: m.test.min_p,
                    alpha: m.test.alpha,
                    canary_hosts: m.test.canary.len(),
                    baseline_hosts: m.test.baseline.len(),
                    reference_hosts: m.test.before.len(),
                })
                .collect(),
        }
    }
}

/// An incident, as people read it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IncidentView {
    /// Its number.
    pub id: u64,
    /// `open` or `closed`.
    pub state: String,
    /// One line.
    pub title: String,
    /// The repository.
    pub repo: String,
    /// The branch.
    pub branch: String,
    /// Opened, RFC 3339.
    pub opened_at: String,
    /// The reverted commit.
    pub sha: String,
    /// Its subject.
    pub subject: String,
    /// The bad release.
    pub release: u64,
    /// The release hosts went back to.
    pub previous: u64,
    /// The reverted rollout.
    pub rollout: u64,
    /// The failing metrics.
    pub reason: String,
    /// Every metric's verdict at the decision.
    pub evidence: Vec<String>,
    /// The revert commit.
    pub revert_commit: Option<String>,
    /// Why there is no revert commit.
    pub revert_error: Option<String>,
    /// (RFC 3339, line).
    pub timeline: Vec<(String, String)>,
    /// The whys, in order.
    pub whys: Vec<String>,
    /// Corrective actions.
    pub actions: Vec<crate::incidents::Action>,
    /// Closed: (RFC 3339, by).
    pub closed: Option<(String, String)>,
    /// The postmortem, as Markdown.
    pub markdown: String,
}

impl From<&crate::incidents::IncidentRecord> for IncidentView {
    fn from(i: &crate::incidents::IncidentRecord) -> Self {
        IncidentView {
            id: i.id,
            state: if i.closed.is_some() { "closed".into() } else { "open".into() },
            title: i.title.clone(),
            repo: i.repo.as_ref().map(|r| r.to_string()).unwrap_or_default(),
            branch: i.branch.clone(),
            opened_at: rfc3339(i.opened_at),
            sha: i.sha.clone(),
            subject: i.subject.clone(),
            release: i.release,
            previous: i.previous,
            rollout: i.rollout,
            reason: i.reason.clone(),
            evidence: i.evidence.clone(),
            revert_commit: i.revert.clone().and_then(Result::ok),
            revert_error: i.revert.clone().and_then(Result::err),
            timeline: i.timeline.iter().map(|(t, e)| (rfc3339(*t), e.clone())).collect(),
            whys: i.whys.clone(),
            actions: i.actions.clone(),
            closed: i.closed.as_ref().map(|(t, by)| (rfc3339(*t), by.clone())),
            markdown: i.markdown(),
        }
    }
}

/// A webhook, as listed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebhookView {
    /// Its id.
    pub id: u64,
    /// Where.
    pub url: String,
    /// `json` or `slack`.
    pub format: crate::notify::Format,
    /// Added, RFC 3339.
    pub added_at: String,
    /// By whom.
    pub added_by: String,
}

/// `POST /v1/notify/webhooks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddWebhook {
    /// Where.
    pub url: String,
    /// What it takes (default json).
    #[serde(default)]
    pub format: Option<crate::notify::Format>,
}

/// `POST /v1/rollback`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RollbackRequest {
    /// Repository (default: the only one that deploys).
    #[serde(default)]
    pub repo: Option<String>,
    /// Release to go back to (default: the last known-good one).
    #[serde(default)]
    pub to: Option<u64>,
}

/// `POST /v1/cluster/check`: every coordinator's state digest at one checkpoint of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterCheckView {
    /// The checkpoint's log index.
    pub index: u64,
    /// Whether every coordinator that answered has the leader's digest, and every one answered.
    pub consistent: bool,
    /// One row per coordinator.
    pub nodes: Vec<NodeDigestView>,
}

/// One coordinator's row in [`ClusterCheckView`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeDigestView {
    /// Node id (16 hex digits).
    pub id: String,
    /// Its applied index when it answered (None: it did not answer).
    pub applied: Option<u64>,
    /// Its state digest at the checkpoint (SHA-256, hex).
    pub digest: Option<String>,
    /// "agrees", "DIFFERS", "behind" (has not applied the checkpoint yet) or why it did not answer.
    pub verdict: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Machine, TokenRecord};
    use crate::store::{Batch, Store};
    use fifty_shared::ids::Role;

    #[test]
    fn times_outside_rfc3339_still_format() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
    }

    /// A token committed before TTLs were bounded (`--ttl 100000000h`, year 13,000-something)
    /// still lists, and can be revoked.
    #[test]
    fn a_stored_token_with_a_huge_expiry_lists_and_revokes() {
        let dir = std::env::temp_dir().join(format!("fifty-views-{}-{}", std::process::id(), rand::random::<u64>()));
        let mut m = Machine::new(Store::open(&dir).unwrap());
        let now = SystemTime::now();
        let record = TokenRecord {
            accessor: "0123456789abcdef".into(),
            hash: "h".into(),
            role: Role::Admin,
            description: "from before the bound".into(),
            created_at: now,
            expires_at: Some(now + Duration::from_secs(100_000_000 * 3600)),
            max_uses: None,
            uses: 0,
            revoked: false,
        };
        m.apply(&Command::CreateToken(record), Batch::default()).unwrap().unwrap();
        let list = |m: &Machine| -> Vec<TokenView> {
            m.store().tokens().unwrap().iter().map(|t| TokenView::of(t, SystemTime::now())).collect()
        };
        let listed = list(&m);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].expires_at.as_deref(), Some("9999-12-31T23:59:59.999Z"));
        assert!(!listed[0].expired && !listed[0].revoked);
        m.apply(&Command::RevokeToken { accessor: "0123456789abcdef".into() }, Batch::default()).unwrap().unwrap();
        assert!(list(&m)[0].revoked);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `GET /v1/immune/size`: what to size.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SizeQuery {
    /// The repository (its latest release's `[immune]` and hosts).
    pub repo: Option<String>,
    /// A ratio metric of that `[immune]` (default: the first).
    pub metric: Option<String>,
    /// The regression to catch, as a factor on the rate (default 2.0).
    pub effect: Option<f64>,
    /// Hosts in the wave (default: the plan's first wave).
    pub canaries: Option<usize>,
}

/// How soon the judge decides one way, in a sizing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SizeDecision {
    /// Share of simulated waves decided this way within the horizon.
    pub share: f64,
    /// Share decided this way within the plan's `max_bake`.
    pub within_max_bake: f64,
    /// Median time to decide, seconds (among those decided this way).
    pub median_secs: Option<f64>,
    /// 90th percentile, seconds.
    pub p90_secs: Option<f64>,
}

/// `fifty immune size`: how long a bake needs on this fleet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SizeView {
    /// The repository.
    pub repo: String,
    /// The release whose `[immune]` was read.
    pub release: u64,
    /// The metric sized.
    pub metric: String,
    /// Hosts with enough history.
    pub hosts: usize,
    /// Hosts in the wave.
    pub canaries: usize,
    /// Measured mean requests a second per host.
    pub requests_per_second: f64,
    /// Measured pooled rate.
    pub rate: f64,
    /// Measured spread of the hosts' own rates (coefficient of variation).
    pub host_cv: f64,
    /// Measured burstiness of intervals (coefficient of variation beyond Poisson).
    pub burst_cv: f64,
    /// Report interval, seconds.
    pub interval_secs: f64,
    /// Shortest history used, seconds.
    pub history_secs: f64,
    /// The regression sized, as a factor.
    pub effect: f64,
    /// The plan's alpha.
    pub alpha: f64,
    /// The plan's min_effect.
    pub min_effect: f64,
    /// The plan's pass_bound.
    pub pass_bound: f64,
    /// The confidence of a pass.
    pub pass_confidence: f64,
    /// The plan's max_bake (at least its bake), seconds.
    pub max_bake_secs: f64,
    /// How long a wave was simulated at most, seconds.
    pub horizon_secs: f64,
    /// Waves simulated for each answer.
    pub waves: usize,
    /// A wave with the regression: how soon it is reverted.
    pub revert: SizeDecision,
    /// A healthy wave: how soon it passes by itself.
    pub pass: SizeDecision,
    /// Healthy simulated waves reverted.
    pub false_reverts: f64,
}
