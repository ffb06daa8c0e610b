//! The JSON bodies of the HTTPS API. The server builds them; the CLI reads them back with the
//! same types, so `--json` output and the API never disagree.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::fleet::HostState;

/// RFC 3339 text of a time, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
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

/// An error body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}
