//! Safe deploy: a green commit becomes a signed release that rolls out in waves.
//!
//! 1. When a commit of a repository with `[package]` and `[deploy]` passes, the state machine
//!    queues a *package* job; a build agent runs it and uploads the artifact over its link
//!    (`AgentMsg::ArtifactChunk`). The leader checks its digest, writes it to its blob store
//!    (content-addressed files beside sled), has a quorum of coordinators fetch and verify it
//!    (`artifacts`), records only its digest and size through Raft (`Command::BlobAvailable`,
//!    so a quorum holds it before anything refers to it), signs the release manifest with the cluster's ed25519 key and records the
//!    release (`FinishJob` with a package report).
//! 2. A release of a repository with `auto = true` queues for its deploy target (the
//!    repository); the newest queued release supersedes older ones. The leader's deploy loop
//!    (`dispatch`) starts one rollout per target at a time (`rollout::Rollout`), steps it with
//!    what the hosts report, records each step (`Command::StepRollout`), and sends every host whose
//!    target release differs from what it runs a `CoordinatorMsg::Deploy` with the signed
//!    manifest. Agents download the artifact from the leader, verify, switch and health-check.
//! 3. `fifty rollout promote|pause|resume|abort` and `fifty rollback` are steps of the same
//!    machine, decided on the leader.

pub mod apply;
pub mod artifacts;
pub mod dispatch;
pub mod rollout;
pub mod upload;

use std::time::{Duration, SystemTime};

use bincode::{Decode, Encode};
use fifty_shared::ids::{HostName, RepoName};

pub use rollout::{Judgement, Kind, Outcome, Phase, Rollout, WaveStep};

/// What `[deploy]` (and `[immune]`) of the release's commit said.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct DeployPlan {
    /// Label selector of the target hosts.
    pub hosts: String,
    /// The waves.
    pub waves: Vec<WaveStep>,
    /// Bake per wave.
    pub bake: Duration,
    /// Deploy every green commit.
    pub auto: bool,
    /// `max_unavailable` as written (a count or a percentage).
    pub max_unavailable: String,
    /// Time a wave has to become healthy.
    pub progress_deadline: Duration,
    /// What the cluster immune system watches, if anything.
    pub immune: Option<ImmunePlan>,
}

/// `[immune]` as the coordinator judges it (the agents get the scraping part in the manifest).
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ImmunePlan {
    /// Scrape interval: one look per interval.
    pub interval: Duration,
    /// The rollout's false-revert budget.
    pub alpha: f64,
    /// Smallest regression that reverts.
    pub min_effect: f64,
    /// Largest regression a pass must rule out.
    pub pass_bound: f64,
    /// How long the last wave is compared with the previous release's earlier window.
    pub watch: Duration,
    /// How long a bake may be extended, in all, while the data cannot yet tell.
    pub max_bake: Duration,
    /// The metrics.
    pub metrics: Vec<ImmuneMetric>,
}

/// One watched metric.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ImmuneMetric {
    /// Its name.
    pub name: String,
    /// `ratio`, `histogram`, `gauge` or `host`.
    pub kind: String,
    /// Whether a decrease (not an increase) is the regression.
    pub bad_decrease: bool,
}

impl ImmunePlan {
    /// From a checked `[immune]`.
    pub fn from_step(step: &fifty_shared::pipeline::ImmuneStep) -> Self {
        ImmunePlan {
            interval: step.interval,
            alpha: step.alpha,
            min_effect: step.min_effect,
            pass_bound: step.pass_bound,
            watch: step.watch,
            max_bake: step.max_bake,
            metrics: step
                .metric
                .iter()
                .map(|m| ImmuneMetric { name: m.name.clone(), kind: m.kind.clone(), bad_decrease: m.bad == "decrease" })
                .collect(),
        }
    }
}

/// A release: a signed artifact of one commit.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ReleaseRecord {
    /// Release id: the sequence number of its commit.
    pub id: u64,
    /// The repository.
    pub repo: RepoName,
    /// Its commit.
    pub sha: String,
    /// The commit's subject.
    pub subject: String,
    /// SHA-256 of the artifact, hex.
    pub digest: String,
    /// Artifact size.
    pub size: u64,
    /// The signed manifest (`wire::ReleaseManifest`, encoded).
    pub manifest: Vec<u8>,
    /// Its ed25519 signature.
    pub signature: Vec<u8>,
    /// How it rolls out.
    pub plan: DeployPlan,
    /// When it was recorded.
    pub created_at: SystemTime,
}

/// A deploy target (one per repository): its active rollout, the release waiting for it, and
/// the last release that reached every host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct TargetRecord {
    /// The rollout in progress.
    pub active: Option<u64>,
    /// The newest release waiting for the active rollout to end.
    pub queued: Option<u64>,
    /// The last release that rolled out fully.
    pub last_good: Option<u64>,
}

/// Releases per repository whose artifacts the coordinators keep (besides any release a host
/// is targeted at); older artifacts are dropped, their release records stay.
pub const KEEP_ARTIFACTS: usize = 10;

/// The release a host should run.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct HostTarget {
    /// The host.
    pub host: HostName,
    /// The repository whose service it is.
    pub repo: RepoName,
    /// The release.
    pub release: u64,
    /// Since when.
    pub since: SystemTime,
}

/// Whether a host's labels match a selector like `role=prod,pool=web`.
pub fn selects(selector: &str, labels: &fifty_shared::ids::Labels) -> bool {
    selector.split(',').map(str::trim).filter(|s| !s.is_empty()).all(|kv| match kv.split_once('=') {
        Some((k, v)) => labels.get(k.trim()) == Some(v.trim()),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_every_pair() {
        let labels: fifty_shared::ids::Labels = "role=prod,pool=web".parse().unwrap();
        assert!(selects("role=prod", &labels));
        assert!(selects("role=prod, pool=web", &labels));
        assert!(!selects("role=prod,pool=db", &labels));
        assert!(!selects("role", &labels));
    }
}
