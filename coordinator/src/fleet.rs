//! Soft state: the last heartbeat of every host, held in memory and never written to disk (a
//! coordinator rebuilds it from the next reports), and a bounded ring of each host's recent health
//! for `fifty metrics` and `fifty top`: one [`HealthPoint`] per [`HISTORY_STEP`] for
//! [`HISTORY_KEEP`], at most [`HISTORY_PER_HOST`] points (about 70 KiB) per host. Pure: callers pass `now`.

use std::collections::{HashMap, VecDeque};
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

/// How long health history is kept.
pub const HISTORY_KEEP: Duration = Duration::from_secs(3600);
/// At most one history point per host per this step (heartbeats in between are dropped).
pub const HISTORY_STEP: Duration = Duration::from_secs(2);
/// Most history points per host.
pub const HISTORY_PER_HOST: usize = (HISTORY_KEEP.as_secs() / HISTORY_STEP.as_secs()) as usize;

/// One host's health at one moment, as the history gives it back (stored in 20 bytes: the time
/// to the second, memory as an `f32`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthPoint {
    /// When the heartbeat arrived (wall clock).
    pub at: SystemTime,
    /// CPU, percent.
    pub cpu_percent: f32,
    /// Memory in use, bytes.
    pub mem_used_bytes: u64,
    /// Free disk, percent of the disk (0 when the agent did not say).
    pub disk_free_percent: f32,
    /// One-minute load.
    pub load1: f32,
}

impl HealthPoint {
    /// The point of a heartbeat.
    pub fn of(at: SystemTime, h: &Health) -> Self {
        let disk = if h.disk_total_bytes == 0 {
            0.0
        } else {
            (h.disk_free_bytes as f64 * 100.0 / h.disk_total_bytes as f64) as f32
        };
        Self {
            at,
            cpu_percent: h.cpu_percent,
            mem_used_bytes: h.mem_used_bytes,
            disk_free_percent: disk,
            load1: h.load[0],
        }
    }
}

/// A [`HealthPoint`] as kept: 20 bytes, so an hour of 1,000 hosts is about 36 MB.
#[derive(Clone, Copy, Debug)]
struct StoredPoint {
    /// Seconds since the Unix epoch.
    at: u32,
    cpu_percent: f32,
    mem_used_bytes: f32,
    disk_free_percent: f32,
    load1: f32,
}

impl StoredPoint {
    fn of(p: &HealthPoint) -> Self {
        let at = p.at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs().min(u32::MAX as u64) as u32;
        Self {
            at,
            cpu_percent: p.cpu_percent,
            mem_used_bytes: p.mem_used_bytes as f32,
            disk_free_percent: p.disk_free_percent,
            load1: p.load1,
        }
    }

    fn point(&self) -> HealthPoint {
        HealthPoint {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(self.at as u64),
            cpu_percent: self.cpu_percent,
            mem_used_bytes: self.mem_used_bytes as u64,
            disk_free_percent: self.disk_free_percent,
            load1: self.load1,
        }
    }
}

/// Last heartbeats by host.
#[derive(Default)]
pub struct Fleet {
    beats: HashMap<HostName, Beat>,
    history: HashMap<HostName, VecDeque<StoredPoint>>,
    /// Until then, a host not heard from yet counts as ready: a new leader has no heartbeats
    /// of its own, and agents need a moment to find it (Nomad's grace TTL after an election).
    grace_until: Option<Instant>,
}

impl Fleet {
    /// An empty fleet whose hosts are given until `until` to report.
    pub fn with_grace(until: Instant) -> Self {
        Self { beats: HashMap::new(), history: HashMap::new(), grace_until: Some(until) }
    }

    /// Records a heartbeat.
    pub fn on_heartbeat(&mut self, host: &HostName, beat: Beat) {
        let point = StoredPoint::of(&HealthPoint::of(beat.wall, &beat.health));
        self.beats.insert(host.clone(), beat);
        let ring = self.history.entry(host.clone()).or_default();
        let step = HISTORY_STEP.as_secs() as u32;
        if ring.back().is_some_and(|last| point.at.saturating_sub(last.at) < step) {
            return;
        }
        if ring.len() == ring.capacity() {
            // Grow by a tenth, not by doubling: a full hour is what every host ends up holding.
            ring.reserve_exact((ring.len() / 10).max(16));
        }
        ring.push_back(point);
        let keep = HISTORY_KEEP.as_secs() as u32;
        while ring.len() > HISTORY_PER_HOST || ring.front().is_some_and(|p| point.at.saturating_sub(p.at) > keep) {
            ring.pop_front();
        }
    }

    /// A host's health history, oldest first.
    pub fn history(&self, host: &HostName) -> impl Iterator<Item = HealthPoint> + '_ {
        self.history.get(host).into_iter().flatten().map(StoredPoint::point)
    }

    /// History points held, in all.
    pub fn history_len(&self) -> usize {
        self.history.values().map(VecDeque::len).sum()
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
        self.history.remove(host);
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
    fn the_history_keeps_one_point_per_step_for_an_hour() {
        let mut fleet = Fleet::default();
        let web = HostName::new("web-1").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for s in 0..(2 * 3600 + 10) {
            let health =
                Health { cpu_percent: (s % 100) as f32, disk_free_bytes: 1, disk_total_bytes: 4, ..Default::default() };
            let beat = Beat {
                at: Instant::now(),
                wall: t0 + Duration::from_secs(s),
                health,
                agent_version: "0".into(),
                release: Default::default(),
            };
            fleet.on_heartbeat(&web, beat);
        }
        let points: Vec<_> = fleet.history(&web).collect();
        assert!(points.len() <= HISTORY_PER_HOST && points.len() >= HISTORY_PER_HOST - 1, "{}", points.len());
        assert!(points.windows(2).all(|w| w[1].at.duration_since(w[0].at).unwrap() == HISTORY_STEP));
        let last = points.last().unwrap();
        assert_eq!(last.disk_free_percent, 25.0);
        assert!(last.at.duration_since(points[0].at).unwrap() <= HISTORY_KEEP);
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
