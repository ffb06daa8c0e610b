//! Every message that crosses the network between agents and coordinators.
//!
//! Connections are QUIC with mutual TLS; the ALPN picks the protocol:
//! - [`ALPN_ENROLL`]: a host without an identity yet opens one bi-stream, sends an
//!   [`EnrollRequest`] and reads one [`EnrollResponse`]. The client has no certificate; it
//!   authenticates the coordinator by the CA fingerprint its join token carries.
//! - [`ALPN_AGENT`]: an enrolled host, with its certificate, opens one bi-stream (the control
//!   stream), sends [`AgentMsg::Hello`], reads [`CoordinatorMsg::Welcome`], then heartbeats.
//!   On the same stream the coordinator hands build hosts jobs ([`CoordinatorMsg::RunJob`]) and
//!   the agent streams their output and reports each result until it is acknowledged.
//!   Artifact downloads do not use the control stream: the agent opens a bi-stream of its own per
//!   request ([`DownloadRequest`]: the signed piece table, or one piece), several at once, and
//!   the coordinator answers on it ([`DownloadResponse`], a piece's bytes raw after the frame).
//!
//! A refusal after the handshake is a QUIC connection close with one of the [`close`] codes and
//! a reason a person can read.

use std::time::Duration;

use bincode::{Decode, Encode};

use crate::ids::{HostName, Labels, RepoName};

/// ALPN of the enrollment protocol (no client certificate).
pub const ALPN_ENROLL: &[u8] = b"fifty-enroll/1";
/// ALPN of the agent's control link (client certificate required).
pub const ALPN_AGENT: &[u8] = b"fifty-agent/1";
/// ALPN of coordinator-to-coordinator links (a coordinator certificate required).
pub const ALPN_PEER: &[u8] = b"fifty-peer/1";

/// QUIC application close codes, with the reason carried beside them.
pub mod close {
    /// The session ended normally (shutdown on either side).
    pub const DONE: u32 = 0;
    /// The host's certificate was revoked (`fifty host remove`). The agent stops.
    pub const REVOKED: u32 = 1;
    /// The certificate is from this CA but names no host the coordinator knows.
    pub const UNKNOWN_HOST: u32 = 2;
    /// A frame was malformed or out of order.
    pub const PROTOCOL: u32 = 3;
    /// The client presented no certificate on a link that needs one.
    pub const NO_CERTIFICATE: u32 = 4;
    /// Another connection from the same host replaced this one.
    pub const REPLACED: u32 = 5;
    /// This coordinator is not the leader; the reason holds the leader's QUIC address (empty if
    /// no leader is known yet). The client dials it next.
    pub const NOT_LEADER: u32 = 6;
    /// A peer link from something that is not a coordinator.
    pub const NOT_A_COORDINATOR: u32 = 7;
    /// The coordinator admits no more links just now (its handshake rate is reached); the
    /// reason says when to try again ([`busy_reason`], read back with [`retry_after`]).
    pub const BUSY: u32 = 8;

    /// The reason sent with [`BUSY`]: readable, and carrying the wait in milliseconds.
    pub fn busy_reason(wait: std::time::Duration) -> String {
        format!("too many agents connecting; retry after {} ms", wait.as_millis())
    }

    /// The wait a [`BUSY`] reason asks for (at most a minute), if it says one.
    pub fn retry_after(reason: &str) -> Option<std::time::Duration> {
        let ms: u64 = reason.split("retry after ").nth(1)?.split(' ').next()?.parse().ok()?;
        Some(std::time::Duration::from_millis(ms.min(60_000)))
    }
}

/// A host asks to join the cluster.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct EnrollRequest {
    /// The secret part of the join token.
    pub token_secret: String,
    /// The name the host asks for.
    pub name: HostName,
    /// Labels to record for the host.
    pub labels: Labels,
    /// A PKCS#10 certificate request for the key pair the host made, PEM.
    pub csr_pem: String,
    /// The agent's version.
    pub agent_version: String,
}

/// The coordinator's answer to an [`EnrollRequest`].
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum EnrollResponse {
    /// The host is in: its signed certificate and the cluster CA, both PEM.
    Enrolled {
        /// The host's certificate, signed by the cluster CA.
        cert_pem: String,
        /// The cluster CA certificate.
        ca_pem: String,
        /// Every coordinator's QUIC address, for the agent's config.
        coordinators: Vec<String>,
    },
    /// The host was not enrolled, and why.
    Refused {
        /// A sentence for the operator.
        reason: String,
    },
}

/// What a host measured about itself, sent with every heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
pub struct Health {
    /// CPU use over the last interval, percent of all cores (0-100).
    pub cpu_percent: f32,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f32; 3],
    /// Memory in use.
    pub mem_used_bytes: u64,
    /// Memory installed.
    pub mem_total_bytes: u64,
    /// Free space on the disk holding the agent's data dir.
    pub disk_free_bytes: u64,
    /// Size of that disk.
    pub disk_total_bytes: u64,
    /// How long the agent process has run.
    pub uptime: Duration,
}

/// A heartbeat: sequence number, health, and the jobs the agent holds.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Heartbeat {
    /// Counts up from 1 per connection; echoed in [`CoordinatorMsg::HeartbeatAck`].
    pub seq: u64,
    /// The host's health now.
    pub health: Health,
    /// Jobs running here, or finished with their result not yet acknowledged. The coordinator
    /// re-queues a job it gave this host that is missing from the list.
    pub jobs: Vec<JobRef>,
    /// Where the host's deployed service stands.
    pub release: ReleaseReport,
}

/// A host's deployed service, as its agent reports it with every heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct ReleaseReport {
    /// The release the `current` link points to.
    pub current: Option<u64>,
    /// Whether the current release passed its last health check.
    pub healthy: bool,
    /// A release being downloaded or applied now, with bytes downloaded so far.
    pub applying: Option<(u64, u64)>,
    /// The last release that failed to apply here, and why (the host went back to `current`).
    pub failed: Option<(u64, String)>,
}

/// What a release runs and how it is checked, signed as part of its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ServiceOrder {
    /// Command the agent supervises, in the release's directory (`{name}` from `[service]`).
    pub run: Option<String>,
    /// Or a command that restarts a service managed elsewhere.
    pub restart: Option<String>,
    /// Health check URL (`{name}` from `[service]`).
    pub health_url: String,
    /// How long a new release has to pass it.
    pub health_timeout: Duration,
    /// Releases kept on the host.
    pub keep_releases: u32,
    /// What the agent scrapes while this release runs (`[immune]`), if anything.
    pub metrics: Option<MetricsOrder>,
}

/// `[immune]` as the agent needs it: where and how often to scrape, and which series to report.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct MetricsOrder {
    /// The service's Prometheus endpoint (`{name}` from `[service]`).
    pub scrape_url: String,
    /// How often.
    pub interval: Duration,
    /// The metrics, by the names verdicts use.
    pub metrics: Vec<MetricQuery>,
}

/// One metric an agent reports.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct MetricQuery {
    /// Its name.
    pub name: String,
    /// Where its value comes from.
    pub source: MetricSource,
}

/// Where a metric's value comes from. Selectors are `shared::selector` text; a selector stands
/// for the sum of every series it matches.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum MetricSource {
    /// Two counters: counted events over all events.
    Ratio {
        /// The counted events.
        numerator: String,
        /// All events.
        denominator: String,
    },
    /// A Prometheus histogram (its base name, without `_bucket`).
    Histogram {
        /// The series.
        series: String,
    },
    /// A gauge of the service.
    Gauge {
        /// The series.
        series: String,
    },
    /// What the agent measures of the host: `cpu` (percent) or `memory` (bytes used).
    Host {
        /// `cpu` or `memory`.
        series: String,
    },
}

/// One metric's change over one interval.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum MetricSample {
    /// Counter deltas. A numerator with no matching series (Prometheus leaves out a labelled
    /// counter that never moved) is 0 when the denominator exists.
    Ratio {
        /// Counted events.
        num: f64,
        /// All events.
        den: f64,
    },
    /// Histogram deltas: cumulative bucket counts for `bounds` (finite `le`s, increasing), plus
    /// the `+Inf` bucket last; `_sum` and `_count`.
    Histogram {
        /// Finite `le` bounds.
        bounds: Vec<f64>,
        /// Cumulative counts, one per bound and one for `+Inf`.
        buckets: Vec<f64>,
        /// `_sum` delta.
        sum: f64,
        /// `_count` delta.
        count: f64,
    },
    /// The gauge's value at the end of the interval.
    Gauge(f64),
}

/// Agent → coordinator: one interval's metric deltas, tagged with the release they were
/// observed under. Soft state: kept by the leader, never replicated.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct MetricsReport {
    /// The release the service ran for the whole interval.
    pub release: u64,
    /// Counts up per agent process; the leader ignores a repeated or older one.
    pub seq: u64,
    /// When the interval ended (agent's clock).
    pub at: std::time::SystemTime,
    /// How long the interval was.
    pub span: Duration,
    /// One entry per metric that had data.
    pub samples: Vec<(String, MetricSample)>,
    /// Why some or all metrics are missing (scrape failed, series absent), if they are.
    pub error: Option<String>,
}

/// A release, as the cluster signs it (ed25519, the cluster's release key). Agents verify the
/// signature, then the artifact's digest and size, before applying anything.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ReleaseManifest {
    /// Release id.
    pub release: u64,
    /// The repository.
    pub repo: RepoName,
    /// The commit it was built from.
    pub sha: String,
    /// SHA-256 of the artifact (a `.tar.gz`), hex.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// What to run.
    pub service: ServiceOrder,
}

/// Coordinator → agent: make this release the host's current one. `manifest` is a
/// [`ReleaseManifest`] as the codec encodes it, exactly the bytes that were signed.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct DeployOrder {
    /// The release id (also inside the manifest).
    pub release: u64,
    /// The encoded manifest.
    pub manifest: Vec<u8>,
    /// Ed25519 signature of `manifest`.
    pub signature: Vec<u8>,
}

/// Agent → coordinator, the one frame on a download stream (a bi-stream of its own, not the
/// control stream). Coordinators older than this message never accept such a stream; the agent
/// then downloads on the control stream ([`AgentMsg::FetchArtifact`]).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum DownloadRequest {
    /// The signed piece table of an artifact ([`crate::pieces::SignedPieceTable`]).
    PieceTable {
        /// SHA-256 of the artifact, hex.
        digest: String,
    },
    /// One piece of an artifact.
    Piece {
        /// SHA-256 of the artifact, hex.
        digest: String,
        /// Which piece, from 0.
        index: u32,
    },
}

/// Coordinator → agent, the answer on a download stream; the stream ends after it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum DownloadResponse {
    /// The artifact's piece table and the cluster's signature of it.
    PieceTable(crate::pieces::SignedPieceTable),
    /// Piece `index` follows: exactly `len` raw bytes after this frame (not a frame: a piece may
    /// be larger than a frame, and the agent reads no more than the signed table says it is).
    Piece {
        /// Which piece.
        index: u32,
        /// How many bytes follow.
        len: u32,
    },
    /// No: why (not a host the release targets, not stored, a damaged blob).
    Refused {
        /// Why.
        reason: String,
    },
}

/// Bytes of artifact per chunk, up and down.
pub const ARTIFACT_CHUNK: usize = 256 * 1024;

/// Largest artifact accepted.
pub const MAX_ARTIFACT_BYTES: u64 = 256 << 20;

/// What a package job built.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ArtifactInfo {
    /// SHA-256, hex.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// One attempt at one job: the job's id and the attempt's number. A result names both, so a
/// late result of an attempt the coordinator gave up on is recognised and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct JobRef {
    /// The job (a commit's plan, or one shard of its tests).
    pub job: u64,
    /// Which attempt, from 1.
    pub attempt: u32,
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} attempt {}", self.job, self.attempt)
    }
}

/// What a build agent is asked to do with a commit.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum JobKind {
    /// Check the commit out, read `fifty.toml`, and collect the test list (`[test] list`).
    Plan,
    /// Build the artifact (`[package]`) after the tests passed, and upload it.
    Package {
        /// The shell command.
        command: String,
        /// Path of the artifact it leaves, relative to the repository root.
        artifact: String,
        /// How long it may run.
        timeout: Duration,
    },
    /// Revert `revert` on the branch (`git revert --no-edit`, with a `Fifty-Revert: <sha>`
    /// trailer) and push it: the immune system found the release of that commit bad.
    Revert {
        /// The commit to revert.
        revert: String,
        /// The branch to push to.
        branch: String,
        /// What the commit message says of why (the verdict).
        reason: String,
    },
    /// Run the test command for one shard.
    Shard {
        /// This shard, from 0.
        index: u32,
        /// How many shards the commit has.
        count: u32,
        /// Tests assigned to this shard (empty: the command splits by index/count itself).
        tests: Vec<String>,
        /// The shell command.
        command: String,
        /// How long it may run before its process tree is killed.
        timeout: Duration,
        /// Glob of the JUnit XML files it writes, relative to the repository root.
        junit: Option<String>,
    },
}

/// A job for a build agent.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct JobSpec {
    /// Which job and attempt.
    pub job: JobRef,
    /// The repository's name (the agent keeps one cached clone per name).
    pub repo: RepoName,
    /// Where to fetch it.
    pub url: String,
    /// The commit to check out.
    pub sha: String,
    /// What to do.
    pub kind: JobKind,
}

/// How a job's process ended.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum JobExit {
    /// It exited with this code (a signal counts as 128 + its number).
    Exited(i32),
    /// It ran past its timeout and its process tree was killed.
    TimedOut,
    /// It could not be run at all (fetch, checkout or spawn failed), and why.
    Failed(String),
}

/// What a plan job found at the commit.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct PlanFound {
    /// The commit's subject line.
    pub subject: String,
    /// Its author.
    pub author: String,
    /// The text of `fifty.toml`, if the commit has one.
    pub pipeline: Option<String>,
    /// The test names `[test] list` printed (empty without `list`).
    pub tests: Vec<String>,
}

/// Most bytes of JUnit XML one shard may report.
pub const MAX_JUNIT_BYTES: usize = 512 * 1024;

/// Most bytes of output kept with a job's result (its tail).
pub const MAX_LOG_TAIL_BYTES: usize = 128 * 1024;

/// Agent → coordinator: a job's result.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct JobDone {
    /// Which job and attempt.
    pub job: JobRef,
    /// How it ended.
    pub exit: JobExit,
    /// How long it ran.
    pub duration: Duration,
    /// For a plan: what it found.
    pub plan: Option<PlanFound>,
    /// JUnit XML files the shard left, as (path, text); at most [`MAX_JUNIT_BYTES`] in all.
    pub junit: Vec<(String, String)>,
    /// A note when reports were skipped (too large, unreadable).
    pub junit_note: Option<String>,
    /// The last [`MAX_LOG_TAIL_BYTES`] of its output.
    pub log_tail: Vec<u8>,
    /// How many bytes of output it wrote in all.
    pub log_bytes: u64,
    /// For a package job: the artifact, whose bytes were sent just before in
    /// [`AgentMsg::ArtifactChunk`]s.
    pub artifact: Option<ArtifactInfo>,
    /// For a revert job: the revert commit pushed, or why there is none.
    pub revert: Option<Result<String, String>>,
}

/// Agent → coordinator, on the control stream.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum AgentMsg {
    /// First frame on the control stream.
    Hello {
        /// The agent's version.
        agent_version: String,
    },
    /// Periodic health report.
    Heartbeat(Heartbeat),
    /// Output a running job wrote, from byte `offset` of its output (live view only: a chunk
    /// may be dropped when the link is slow; the result carries the tail).
    JobOutput {
        /// Which job and attempt.
        job: JobRef,
        /// Where in the job's output this chunk starts.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A job finished; sent again on every new link until acknowledged.
    JobDone(JobDone),
    /// A piece of a package job's artifact, sent in order before its [`JobDone`].
    ArtifactChunk {
        /// Which job and attempt.
        job: JobRef,
        /// Where in the artifact this piece starts.
        offset: u64,
        /// At most [`ARTIFACT_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// Send me this artifact from `offset` (a download, resumable).
    FetchArtifact {
        /// Its SHA-256, hex.
        digest: String,
        /// Where to start.
        offset: u64,
    },
    /// The service's metrics over the last interval.
    Metrics(MetricsReport),
    /// What the A/B sidecar saw since its last acknowledged report; re-sent until acknowledged.
    ExperimentReport(crate::experiment::ExperimentReport),
}

/// Coordinator → agent, on the control stream.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum CoordinatorMsg {
    /// Answer to [`AgentMsg::Hello`]: who the coordinator takes the host to be (from its
    /// certificate), how often to report, and the key releases are signed with.
    Welcome {
        /// The host's name, as its certificate says.
        host: HostName,
        /// How often to send heartbeats.
        heartbeat_interval: Duration,
        /// The cluster's ed25519 release-signing public key (32 bytes).
        release_key: Vec<u8>,
    },
    /// The heartbeat with this sequence number was received.
    HeartbeatAck {
        /// The acknowledged sequence number.
        seq: u64,
    },
    /// Run this job.
    RunJob(JobSpec),
    /// Stop this job if it runs (it was given to another host); report nothing for it.
    CancelJob(JobRef),
    /// The result of this job is recorded; forget it.
    JobDoneAck(JobRef),
    /// Make this release current on the host.
    Deploy(DeployOrder),
    /// Artifact bytes, answering [`AgentMsg::FetchArtifact`].
    ArtifactData {
        /// Its SHA-256, hex.
        digest: String,
        /// Where these bytes start.
        offset: u64,
        /// The artifact's whole size.
        total: u64,
        /// At most [`ARTIFACT_CHUNK`] bytes (empty: the coordinator does not have it; see
        /// `missing`).
        data: Vec<u8>,
        /// Why there is no data, if there is none.
        missing: Option<String>,
    },
    /// Every experiment whose host selector matches this host (the whole set, replacing the last
    /// one; empty turns the A/B sidecar off). Sent on link and whenever it changes.
    Experiments(Vec<crate::experiment::ExperimentDef>),
    /// The [`AgentMsg::ExperimentReport`] with this sequence number is recorded; forget it.
    ExperimentReportAck {
        /// The report's boot id.
        boot: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// Every coordinator's QUIC address, as the cluster's member table says. Sent only on the
    /// agent's second stream (the one it opens after the Welcome with a [`AgentMsg::Hello`], so
    /// coordinators and agents of older versions never meet it): once, then whenever the
    /// members change. At most [`MAX_COORDINATORS`] addresses.
    Coordinators(Vec<String>),
}

/// Most coordinator addresses an agent takes from [`CoordinatorMsg::Coordinators`].
pub const MAX_COORDINATORS: usize = 16;

/// Coordinator → coordinator, on unidirectional streams: Raft traffic. Raft's own messages are
/// carried as raft-rs encodes them (protobuf); a snapshot is streamed in chunks on a stream of
/// its own so it never holds up heartbeats.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum PeerFrame {
    /// One Raft message.
    Raft(Vec<u8>),
    /// A snapshot message without its data, and how many data bytes follow in chunks.
    SnapshotStart {
        /// The Raft message, its data emptied.
        message: Vec<u8>,
        /// Total bytes of snapshot data in the chunks that follow.
        data_len: u64,
    },
    /// The next piece of snapshot data.
    SnapshotChunk(Vec<u8>),
}

/// A coordinator as it introduces itself to another.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PeerInfo {
    /// Raft node id.
    pub node_id: u64,
    /// Its QUIC address.
    pub quic_addr: String,
    /// Its HTTPS API address.
    pub http_addr: String,
}

/// Coordinator → coordinator requests, one per bidirectional stream.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum PeerRequest {
    /// Who are you, and do you belong to a cluster yet? (Bootstrap discovery.)
    Hello(PeerInfo),
    /// Add me to the cluster (a Raft configuration change).
    Join(PeerInfo),
    /// Your state's digest at the checkpoint applied at this index (`fifty cluster check`).
    Digest {
        /// The checkpoint's index.
        index: u64,
    },
    /// Add me to the cluster in place of the member listed at my address under another id (my
    /// data dir was lost): the leader removes that member once its address no longer answers
    /// as it, then adds me (`fifty server --join ADDR --replace`).
    JoinReplacing(PeerInfo),
    /// Send me the artifact with this digest from `offset`: answered on the same stream by
    /// [`PeerResponse::BlobChunk`]s up to its end, or one [`PeerResponse::Refused`].
    FetchBlob {
        /// SHA-256 of the artifact, lower-case hex.
        digest: String,
        /// Where to start.
        offset: u64,
    },
    /// Hold this artifact in your blob store (fetch it from `from` if you do not), and answer
    /// [`PeerResponse::BlobHeld`] once it is there, verified.
    HoldBlob {
        /// SHA-256 of the artifact, lower-case hex.
        digest: String,
        /// Its size.
        size: u64,
        /// The QUIC address of a coordinator that holds it (the one asking).
        from: String,
    },
    /// What the cluster last heard from these hosts, as the sender knows it (the leader's
    /// share, so that a coordinator taking over knows who was silent before it): answered
    /// [`PeerResponse::Noted`].
    LastHeard(Vec<HeardHost>),
}

/// One host in [`PeerRequest::LastHeard`].
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct HeardHost {
    /// The host.
    pub host: HostName,
    /// How long before the message was sent it was last heard, in milliseconds.
    pub age_ms: u64,
}

/// Most hosts in one [`PeerRequest::LastHeard`] (a host name is at most 63 bytes: it fits a frame).
pub const LAST_HEARD_PER_FRAME: usize = 8192;

/// Answers to [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum PeerResponse {
    /// The answering coordinator.
    Hello {
        /// Who it is.
        info: PeerInfo,
        /// Whether it already belongs to a cluster.
        initialized: bool,
        /// If it does, the cluster's coordinators.
        members: Vec<PeerInfo>,
        /// The newest version of the replicated commands its binary understands: the leader
        /// proposes a newer kind of command only once every voter reports that version.
        state_version: u32,
    },
    /// The configuration change that adds the node is committed; here are the coordinators.
    Joined {
        /// Every coordinator, the new one included.
        members: Vec<PeerInfo>,
    },
    /// Ask the leader instead (its QUIC address, if one is known).
    NotLeader {
        /// The leader's QUIC address.
        leader: Option<String>,
    },
    /// The request failed.
    Refused {
        /// Why.
        reason: String,
    },
    /// This coordinator's state at a checkpoint.
    Digest {
        /// Its applied index when it answered.
        applied: u64,
        /// SHA-256 of its state right after the checkpoint (hex), if it applied it.
        digest: Option<String>,
    },
    /// Not now (another configuration change is in progress): ask again shortly.
    Retry {
        /// Why.
        reason: String,
    },
    /// A piece of an artifact, answering [`PeerRequest::FetchBlob`].
    BlobChunk {
        /// Where in the artifact it starts.
        offset: u64,
        /// The artifact's whole size.
        total: u64,
        /// At most [`ARTIFACT_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// The artifact asked for in [`PeerRequest::HoldBlob`] is in this coordinator's blob store.
    BlobHeld,
    /// The [`PeerRequest::LastHeard`] was taken in.
    Noted,
}

/// Decodes `bytes` as every wire type in turn and throws the results away. The codec's property
/// test and the cargo-fuzz target call this so that every message type is exercised.
#[doc(hidden)]
pub fn decode_any_for_fuzzing(bytes: &[u8]) {
    use crate::codec::{decode_frame, from_bytes};
    let _ = decode_frame::<EnrollRequest>(bytes);
    let _ = decode_frame::<EnrollResponse>(bytes);
    let _ = decode_frame::<AgentMsg>(bytes);
    let _ = decode_frame::<CoordinatorMsg>(bytes);
    let _ = decode_frame::<PeerFrame>(bytes);
    let _ = decode_frame::<PeerRequest>(bytes);
    let _ = decode_frame::<PeerResponse>(bytes);
    let _ = decode_frame::<DownloadRequest>(bytes);
    let _ = decode_frame::<DownloadResponse>(bytes);
    let _ = from_bytes::<crate::pieces::PieceTable>(bytes);
    let _ = from_bytes::<EnrollRequest>(bytes);
    let _ = from_bytes::<AgentMsg>(bytes);
    let _ = from_bytes::<CoordinatorMsg>(bytes);
}
