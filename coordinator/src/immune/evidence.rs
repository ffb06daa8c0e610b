//! The immune system's evidence for the wave baking now, as replicated (`Command::ImmuneEvidence`):
//! every metric's sequential test so far ([`TestState`]: the hosts' running totals, the looks, the
//! always-valid p-value, and the reference each host is judged against), so that a new leader
//! continues the test where the old one left it instead of starting it again.
//!
//! Without it a failover mid-bake lost everything the judge held in memory: the new leader began a
//! fresh test (a second try at the same share of alpha), counted the bake again from the first
//! report it heard, and had none of the hosts' pre-deploy history nor, for the last wave, the
//! previous release's window (reports are the leader's soft state), so it judged an unusual
//! canary host against the others and could not judge a last wave at all.
//!
//! One record per deploy target (`sm/evidence/<repo>`), overwritten by each newer record of that
//! target's rollouts, so the state grows with the repositories, not with the rollouts. A record
//! is at most [`MAX_EVIDENCE`] bytes, checked before it is proposed and again when it is applied;
//! the leader writes one at most once an interval, and less often when it is large (see
//! `judge::RECORD_BYTES_PER_SEC`).

use std::time::SystemTime;

use bincode::{Decode, Encode};

use super::analysis::TestState;

/// The largest evidence record, encoded: a quarter of a Raft entry (`consensus::MAX_COMMAND`,
/// about 1 MiB), enough for about 500 hosts with a ratio and a 12-bucket histogram each. A wave
/// whose evidence is larger is not recorded (the leader says so in its log); a failover then
/// starts its test again, as before this record existed.
pub const MAX_EVIDENCE: usize = 256 * 1024;

/// Most metrics in one record (an `[immune]` section has a handful).
pub const MAX_METRICS: usize = 64;

/// One wave's evidence, as the leader last recorded it.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct WaveEvidence {
    /// The rollout.
    pub rollout: u64,
    /// Its wave (index into its waves). A rollout bakes each wave once (a pause and a resume
    /// restart the bake's clock, not its tests), so the two name the test.
    pub wave: usize,
    /// The first look with data from the new release's hosts: the bake is counted from it.
    pub first_data: Option<SystemTime>,
    /// Each host's newest report seq already taken (so a new leader does not take it again).
    pub seen: Vec<(String, u64)>,
    /// One entry per metric with a test so far.
    pub metrics: Vec<MetricEvidence>,
    /// How many times a new leader continued this wave's test from a record.
    pub resumes: u32,
    /// When the leader recorded this.
    pub at: SystemTime,
}

/// One metric's test in a [`WaveEvidence`].
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct MetricEvidence {
    /// The metric's name (as in the release's `[immune]`).
    pub name: String,
    /// A histogram's bucket bounds (empty for other kinds).
    pub bounds: Vec<f64>,
    /// The sequential test so far.
    pub test: TestState,
}

impl WaveEvidence {
    /// The most looks any metric took.
    pub fn looks(&self) -> u64 {
        self.metrics.iter().map(|m| m.test.looks).max().unwrap_or(0)
    }

    /// Refuses a record over its bounds or one no monitor could have written. Deterministic (the
    /// encoding is), so every coordinator applying it decides alike.
    pub fn check(&self) -> Result<(), String> {
        let len = fifty_shared::codec::to_bytes(self).map_err(|e| format!("does not encode: {e}"))?.len();
        if len > MAX_EVIDENCE {
            return Err(format!("{len} bytes; the limit is {MAX_EVIDENCE}"));
        }
        if self.metrics.len() > MAX_METRICS {
            return Err(format!("{} metrics; the limit is {MAX_METRICS}", self.metrics.len()));
        }
        for m in &self.metrics {
            let buckets = if m.bounds.is_empty() { 0 } else { m.bounds.len() + 1 };
            m.test.check(buckets).map_err(|e| format!("metric {}: {e}", m.name))?;
        }
        Ok(())
    }
}
