//! Soft state: the last heartbeat of every host, held in memory and never written to disk (a
//! coordinator rebuilds it from the next reports), and a bounded ring of each host's recent health
//! for `fifty metrics` and `fifty top`: one [`HealthPoint`] per [`HISTORY_STEP`] for
//! [`HISTORY_KEEP`], at most [`HISTORY_PER_HOST`] points (about 70 KiB) per host. Pure: callers pass `now`.
//!
//! **The down rule.** A host is `down` when the cluster has heard nothing from it for `down_after`
//! of time in which it could have been heard. Two things make time not count:
//! - *A change of leader.* The new leader knows what the cluster last heard only as of the old
//!   leader's last share ([`Fleet::learn`], a few seconds old at most, never newer than the truth),
//!   and agents need a moment to find it. So [`Fleet::take_over`] opens a grace period: until it
//!   ends, a host not heard from since the takeover is `ready`, unless the shared view already
//!   had it silent for `down_after` (it was down before the failover and stays down: no alert
//!   resolves and fires again). After the grace, `down_after` counts from the newest of its own
//!   and the shared last-heard times. A stale shared time can only make a host look older, which
//!   the grace absorbs (a live agent re-attaches and reports well within it); a host that really
//!   died is still called down, at most the grace later than it would have been.
//! - *A stall of this coordinator* (SIGSTOP, a frozen VM, a starved process). While it does not
//!   run it hears nothing, which says nothing about the hosts. [`Fleet::tick`], called every
//!   [`TICK`], notices a gap longer than [`STALL`] and opens the same grace from the moment it
//!   woke; hosts already silent for `down_after` when the stall began stay down. Until the tick
//!   has run after a stall, [`Fleet::state`] judges as if it had.

use std::collections::{HashMap, HashSet, VecDeque};
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

/// How often the coordinator calls [`Fleet::tick`].
pub const TICK: Duration = Duration::from_millis(200);
/// A gap between two ticks longer than this is a stall of this coordinator.
pub const STALL: Duration = Duration::from_millis(1500);

/// A period in which hosts not heard from count as ready (after a takeover or a stall).
#[derive(Clone, Debug)]
struct Grace {
    /// When it began (the takeover, or the end of the stall).
    from: Instant,
    /// When it ends.
    until: Instant,
    /// Hosts already silent for `down_after` when it began: they stay down until heard.
    known_down: HashSet<HostName>,
}

/// Last heartbeats by host.
#[derive(Default)]
pub struct Fleet {
    beats: HashMap<HostName, Beat>,
    history: HashMap<HostName, VecDeque<StoredPoint>>,
    /// What the cluster last heard from hosts through other coordinators (the leader's shared
    /// view, on a follower; that view as of the takeover, on a new leader), on this clock.
    heard: HashMap<HostName, Instant>,
    grace: Option<Grace>,
    /// The last [`Fleet::tick`]: a later `now` far past it means this coordinator stalled.
    awake_at: Option<Instant>,
}

impl Fleet {
    /// An empty fleet whose hosts are given until `until` to report.
    pub fn with_grace(until: Instant) -> Self {
        let from = Instant::now().min(until);
        Self { grace: Some(Grace { from, until, known_down: HashSet::new() }), ..Self::default() }
    }

    /// This coordinator becomes the leader at `now`: what it heard itself and learned from the
    /// cluster stays, and hosts get `grace` to re-attach (see the module's down rule). Hosts the
    /// cluster had already heard nothing from for `down_after` stay down.
    pub fn take_over(&mut self, now: Instant, grace: Duration, down_after: Duration) {
        self.open_grace(now, now, grace, down_after);
        self.awake_at = Some(now);
    }

    /// This coordinator stops leading: its own heartbeats become part of what it knows the
    /// cluster heard (for a later takeover), and the history goes (the new leader keeps its own).
    pub fn step_down(&mut self) {
        for (host, beat) in self.beats.drain() {
            let t = self.heard.entry(host).or_insert(beat.at);
            *t = (*t).max(beat.at);
        }
        self.history.clear();
        self.grace = None;
    }

    /// Another coordinator last heard from `host` at `at` (on this clock: its age when it was
    /// sent, taken from when it arrived). Only ever moves a host's time forward.
    pub fn learn(&mut self, host: &HostName, at: Instant) {
        let t = self.heard.entry(host.clone()).or_insert(at);
        *t = (*t).max(at);
    }

    /// Every host this coordinator knows a last-heard time for, with its age at `now`: what the
    /// leader shares with the other coordinators.
    pub fn last_heard(&self, now: Instant) -> Vec<(HostName, Duration)> {
        let mut out: HashMap<&HostName, Instant> = self.heard.iter().map(|(h, t)| (h, *t)).collect();
        for (h, b) in &self.beats {
            let t = out.entry(h).or_insert(b.at);
            *t = (*t).max(b.at);
        }
        let mut v: Vec<_> = out.into_iter().map(|(h, t)| (h.clone(), now.saturating_duration_since(t))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Called every [`TICK`]: a gap since the last call longer than [`STALL`] was a stall of this
    /// coordinator, and opens a grace of `grace()` from `now`. Returns whether it did.
    pub fn tick(&mut self, now: Instant, down_after: Duration, grace: impl FnOnce() -> Duration) -> bool {
        let stalled = self.awake_at.filter(|a| now.saturating_duration_since(*a) > STALL);
        self.awake_at = Some(now);
        match stalled {
            Some(began) => {
                self.open_grace(began, now, grace(), down_after);
                true
            }
            None => false,
        }
    }

    /// Opens a grace from `now` for `grace`; hosts the cluster had heard nothing from for
    /// `down_after` at `silent_at` (the takeover, or the start of a stall) stay down.
    fn open_grace(&mut self, silent_at: Instant, now: Instant, grace: Duration, down_after: Duration) {
        let known_down = self
            .last_heard_all()
            .filter(|(_, t)| silent_at.saturating_duration_since(*t) > down_after)
            .map(|(h, _)| h.clone())
            .collect();
        // A grace already running keeps its end if that is later.
        let until = (now + grace).max(self.grace.as_ref().map_or(now, |g| g.until));
        self.grace = Some(Grace { from: now, until, known_down });
    }

    /// The newest time the cluster heard each host, as far as this coordinator knows.
    fn last_heard_all(&self) -> impl Iterator<Item = (&HostName, Instant)> {
        let own = self.beats.iter().map(|(h, b)| (h, self.heard.get(h).map_or(b.at, |t| (*t).max(b.at))));
        let learned = self.heard.iter().filter(|(h, _)| !self.beats.contains_key(*h)).map(|(h, t)| (h, *t));
        own.chain(learned)
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

    /// The host's state at `now` (the module's down rule).
    pub fn state(&self, host: &HostName, now: Instant, down_after: Duration) -> HostState {
        let own = self.beats.get(host).map(|b| b.at);
        let learned = self.heard.get(host).copied();
        let last = own.max(learned);
        let fresh = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) <= down_after);
        if fresh(own) {
            return HostState::Ready;
        }
        // A stall not yet noticed by `tick`: judge as if the grace had opened now.
        if let Some(began) = self.awake_at.filter(|a| now.saturating_duration_since(*a) > STALL) {
            let down_before = last.is_some_and(|t| began.saturating_duration_since(t) > down_after);
            return if down_before { HostState::Down } else { HostState::Ready };
        }
        if let Some(g) = &self.grace {
            // Heard since the grace began and silent since: the ordinary rule.
            let heard_since = last.is_some_and(|t| t >= g.from);
            if !heard_since {
                if g.known_down.contains(host) {
                    return HostState::Down;
                }
                if now < g.until {
                    return HostState::Ready;
                }
            }
        }
        if fresh(last) {
            HostState::Ready
        } else {
            HostState::Down
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
        self.heard.remove(host);
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

    fn beat(at: Instant) -> Beat {
        Beat {
            at,
            wall: SystemTime::now(),
            health: Health::default(),
            agent_version: "0".into(),
            release: Default::default(),
        }
    }

    fn host(name: &str) -> HostName {
        HostName::new(name).unwrap()
    }

    /// The coordinator runs from `from` to `to`: its upkeep ticks every [`TICK`].
    fn run(fleet: &mut Fleet, from: Instant, to: Instant, down_after: Duration, grace: Duration) {
        let mut t = from;
        while t < to {
            t = (t + TICK).min(to);
            assert!(!fleet.tick(t, down_after, || grace), "no stall while running");
        }
    }

    #[test]
    fn a_new_leader_counts_down_after_from_what_the_cluster_last_heard() {
        let down_after = Duration::from_secs(5);
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        // A follower's copy of the leader's share: web-1 heard 1 s before the failover, web-2
        // silent for 20 s (down already), db-1 never shared.
        let mut fleet = Fleet::default();
        let takeover = t0 + Duration::from_secs(30);
        fleet.learn(&host("web-1"), takeover - Duration::from_secs(1));
        fleet.learn(&host("web-2"), takeover - Duration::from_secs(20));
        fleet.take_over(takeover, grace, down_after);
        let at = |s: f64| takeover + Duration::from_secs_f64(s);
        // During the grace: silent hosts are ready, unless already down before the failover.
        assert_eq!(fleet.state(&host("web-1"), at(9.0), down_after), HostState::Ready);
        assert_eq!(fleet.state(&host("db-1"), at(9.0), down_after), HostState::Ready);
        assert_eq!(fleet.state(&host("web-2"), at(0.5), down_after), HostState::Down);
        // web-2 comes back: ready at once.
        fleet.on_heartbeat(&host("web-2"), beat(at(1.0)));
        assert_eq!(fleet.state(&host("web-2"), at(1.5), down_after), HostState::Ready);
        run(&mut fleet, takeover, at(10.0), down_after, grace);
        // After the grace, hosts never heard again are down: a host that really died is caught.
        assert_eq!(fleet.state(&host("web-1"), at(10.0), down_after), HostState::Down);
        assert_eq!(fleet.state(&host("db-1"), at(10.0), down_after), HostState::Down);
        // A host heard after the takeover and silent since is down after down_after, grace or not.
        let mut fleet2 = Fleet::default();
        fleet2.take_over(takeover, grace, down_after);
        fleet2.on_heartbeat(&host("db-1"), beat(at(0.5)));
        run(&mut fleet2, takeover, at(5.6), down_after, grace);
        assert_eq!(fleet2.state(&host("db-1"), at(5.4), down_after), HostState::Ready);
        assert_eq!(fleet2.state(&host("db-1"), at(5.6), down_after), HostState::Down);
    }

    #[test]
    fn a_stall_of_this_coordinator_calls_no_host_down() {
        let down_after = Duration::from_secs(5);
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut fleet = Fleet::default();
        fleet.take_over(t0, grace, down_after);
        fleet.on_heartbeat(&host("web-1"), beat(t0 + Duration::from_secs(11)));
        fleet.on_heartbeat(&host("gone"), beat(t0 + Duration::from_secs(1)));
        run(&mut fleet, t0, t0 + Duration::from_secs(12), down_after, grace);
        // "gone" was silent for 11 s before the stall: down, as it should be.
        let stopped = t0 + Duration::from_secs(12);
        assert_eq!(fleet.state(&host("gone"), stopped, down_after), HostState::Down);
        // The process is stopped for 8 s. Right after it wakes, before its tick has run, web-1
        // (last heard 9 s ago) is still ready; "gone" still down.
        let woke = stopped + Duration::from_secs(8);
        assert_eq!(fleet.state(&host("web-1"), woke, down_after), HostState::Ready);
        assert_eq!(fleet.state(&host("gone"), woke, down_after), HostState::Down);
        // The tick sees the gap and opens the grace.
        assert!(fleet.tick(woke, down_after, || grace));
        run(&mut fleet, woke, woke + Duration::from_secs(9), down_after, grace);
        assert_eq!(fleet.state(&host("web-1"), woke + Duration::from_secs(9), down_after), HostState::Ready);
        assert_eq!(fleet.state(&host("gone"), woke + Duration::from_secs(9), down_after), HostState::Down);
        // web-1 never reports again: down once the grace is over.
        run(&mut fleet, woke + Duration::from_secs(9), woke + Duration::from_secs(10), down_after, grace);
        assert_eq!(fleet.state(&host("web-1"), woke + Duration::from_secs(10), down_after), HostState::Down);
    }

    #[test]
    fn the_shared_view_keeps_the_newest_time_and_survives_a_step_down() {
        let t0 = Instant::now();
        let mut fleet = Fleet::default();
        fleet.learn(&host("web-1"), t0 + Duration::from_secs(5));
        fleet.learn(&host("web-1"), t0 + Duration::from_secs(2));
        fleet.on_heartbeat(&host("web-2"), beat(t0 + Duration::from_secs(7)));
        let now = t0 + Duration::from_secs(10);
        let shared = fleet.last_heard(now);
        assert_eq!(shared, vec![(host("web-1"), Duration::from_secs(5)), (host("web-2"), Duration::from_secs(3))]);
        fleet.step_down();
        assert!(fleet.last(&host("web-2")).is_none());
        assert_eq!(fleet.last_heard(now), shared);
    }
}
