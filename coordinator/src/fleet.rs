//! Soft state: the last heartbeat of every host, held in memory and never written to disk (a
//! coordinator rebuilds it from the next reports). Pure: callers pass `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use fifty_shared::ids::HostName;
use fifty_shared::wire::Health;

/// The last report from one host.
#[derive(Clone, Debug)]
pub struct Beat {
    /// When it arrived (monotonic, for liveness).
    pub at: Instant,
    /// When it arrived (wall clock, for display).
    pub wall: SystemTime,
    /// What the host measured.
    pub health: Health,
    /// The agent's version, from its hello.
    pub agent_version: String,
    /// Where its deployed service stands.
    pub release: fifty_shared::wire::ReleaseReport,
}

/// Whether a host is reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Heartbeats arrive.
    Ready,
    /// No heartbeat for longer than `down_after` (or none since this coordinator started).
    Down,
}

impl HostState {
    /// As users read it.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ready => "ready",
            HostState::Down => "down",
        }
    }
}

/// Last heartbeats by host.
#[derive(Default)]
pub struct Fleet {
    beats: HashMap<HostName, Beat>,
    /// Until then, a host not heard from yet counts as ready: a new leader has no heartbeats
    /// of its own, and agents need a moment to find it (Nomad's grace TTL after an election).
    grace_until: Option<Instant>,
}

impl Fleet {
    /// An empty fleet whose hosts are given until `until` to report.
    pub fn with_grace(until: Instant) -> Self {
        Self { beats: HashMap::new(), grace_until: Some(until) }
    }

    /// Records a heartbeat.
    pub fn on_heartbeat(&mut self, host: &HostName, beat: Beat) {
        self.beats.insert(host.clone(), beat);
    }

    /// The host's state at `now`.
    pub fn state(&self, host: &HostName, now: Instant, down_after: Duration) -> HostState {
        match self.beats.get(host) {
            Some(b) if now.saturating_duration_since(b.at) <= down_after => HostState::Ready,
            None if self.grace_until.is_some_and(|g| now < g) => HostState::Ready,
            _ => HostState::Down,
        }
    }

    /// The host's last heartbeat.
    pub fn last(&self, host: &HostName) -> Option<&Beat> {
        self.beats.get(host)
    }

    /// Drops a removed host.
    pub fn forget(&mut self, host: &HostName) {
        self.beats.remove(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_goes_down_after_the_timeout_and_returns_on_the_next_beat() {
        let mut fleet = Fleet::default();
        let web = HostName::new("web-1").unwrap();
        let t0 = Instant::now();
        let down_after = Duration::from_secs(5);
        assert_eq!(fleet.state(&web, t0, down_after), HostState::Down);
        let beat = |at| Beat {
            at,
            wall: SystemTime::now(),
            health: Health::default(),
            agent_version: "0".into(),
            release: Default::default(),
        };
        fleet.on_heartbeat(&web, beat(t0));
        assert_eq!(fleet.state(&web, t0 + Duration::from_secs(5), down_after), HostState::Ready);
        assert_eq!(fleet.state(&web, t0 + Duration::from_millis(5001), down_after), HostState::Down);
        fleet.on_heartbeat(&web, beat(t0 + Duration::from_secs(9)));
        assert_eq!(fleet.state(&web, t0 + Duration::from_secs(10), down_after), HostState::Ready);
    }

    #[test]
    fn a_new_leader_gives_silent_hosts_a_grace_period() {
        let t0 = Instant::now();
        let fleet = Fleet::with_grace(t0 + Duration::from_secs(10));
        let web = HostName::new("web-1").unwrap();
        assert_eq!(fleet.state(&web, t0 + Duration::from_secs(9), Duration::from_secs(5)), HostState::Ready);
        assert_eq!(fleet.state(&web, t0 + Duration::from_secs(10), Duration::from_secs(5)), HostState::Down);
    }
}
