//! The rollout controller: a plain state machine. Its state is a replicated record
//! ([`Rollout`]); the leader feeds it what the hosts report and `now`, and it answers with its
//! next state and the release each host should run ([`Step`]), which the leader records through
//! Raft before acting on it. Nothing here does I/O or reads a clock.
//!
//! A rollout walks its waves in order. Entering a wave targets its new hosts at the release;
//! the wave is healthy when every host of it runs the release and passes its health check, except
//! hosts that were away before they got the release (at most `max_unavailable` down at once; they
//! converge when they return); it then bakes for `bake`, staying healthy, and the next wave
//! starts (a `manual` wave waits for `promote`). A host that goes down on the release (running it
//! or switching to it when last heard from) is never healthy: the release may have taken it down.
//! A host that fails the release, a wave that is not healthy within `progress_deadline`, a host
//! unhealthy or down on the release while baking, or more hosts down than `max_unavailable` fails
//! the rollout: every host it touched goes back to the previous release at once. `abort` does the
//! same by hand. A rollback is a rollout of one wave (every host), with no bake.
//!
//! A newer release of the same target supersedes a deploy still moving forward (as Argo Rollouts
//! does): the old rollout ends, the new one starts from its first wave, and the hosts the old one
//! had moved to its release move to the new release in that first wave ([`Rollout::carry_over`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bincode::{Decode, Encode};
use fifty_shared::ids::{HostName, RepoName};
use serde::{Deserialize, Serialize};

/// One entry of `[deploy] waves`, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaveStep {
    /// This many hosts in all.
    Hosts(u32),
    /// This percent of the hosts in all, rounded up.
    Percent(u32),
    /// Wait for a person (`fifty rollout promote`).
    Manual,
}

impl From<fifty_shared::pipeline::Wave> for WaveStep {
    fn from(w: fifty_shared::pipeline::Wave) -> Self {
        use fifty_shared::pipeline::Wave;
        match w {
            Wave::Hosts(n) => WaveStep::Hosts(n),
            Wave::Percent(p) => WaveStep::Percent(p),
            Wave::Manual => WaveStep::Manual,
        }
    }
}

impl WaveStep {
    fn reach(self, total: usize) -> Option<usize> {
        match self {
            WaveStep::Hosts(n) => Some((n as usize).min(total)),
            WaveStep::Percent(p) => Some((total * p as usize).div_ceil(100).min(total)),
            WaveStep::Manual => None,
        }
    }
}

/// A normal rollout or a rollback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Waves and bake, as `[deploy]` says.
    Deploy,
    /// Every host at once, no bake (`fifty rollback`).
    Rollback,
}

/// Where the rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The current wave's hosts are switching; waiting for them to be healthy.
    Deploying,
    /// The current wave is healthy and must stay so for `bake`.
    Baking,
    /// Waiting for `fifty rollout promote` before the next wave.
    AwaitingPromotion,
    /// Putting the touched hosts back on the previous release.
    RollingBack,
    /// Finished; see `outcome`.
    Done,
}

impl Phase {
    /// The phase in words, as the CLI shows it (the API's JSON keeps `awaiting_promotion`).
    pub fn words(self) -> &'static str {
        match self {
            Phase::Deploying => "deploying",
            Phase::Baking => "baking",
            Phase::AwaitingPromotion => "awaiting promotion",
            Phase::RollingBack => "rolling back",
            Phase::Done => "done",
        }
    }
}

/// How a rollout ended.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Outcome {
    /// Every host runs the release.
    Succeeded,
    /// It failed and was rolled back.
    Failed {
        /// Why.
        why: String,
    },
    /// Someone aborted it and it was rolled back.
    Aborted {
        /// Who.
        by: String,
    },
    /// A rollback or a newer rollout took over.
    Superseded {
        /// By which rollout.
        by: u64,
    },
    /// The cluster immune system found the release worse than the one before it.
    Reverted {
        /// The failing metrics' verdicts.
        why: String,
    },
}

/// What the cluster immune system says of the wave baking now (the leader's analysis of the
/// hosts' metrics; see `crate::immune`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The release is not watched (no `[immune]`, no previous release to compare with).
    Off,
    /// Watching; nothing failed, and not enough has been seen yet for a final verdict.
    Watching,
    /// Every metric passed over the whole bake.
    Promote,
    /// The bake is over and some metric is inconclusive: a person decides.
    Hold {
        /// Which metrics, and why.
        why: String,
    },
}

/// A rollout, as replicated.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Rollout {
    /// Rollout id.
    pub id: u64,
    /// Bumped by every step; a step recorded against another version is refused.
    pub version: u64,
    /// The repository (the deploy target).
    pub repo: RepoName,
    /// Deploy or rollback.
    pub kind: Kind,
    /// The release rolling out.
    pub release: u64,
    /// The release the hosts go back to on failure (None: the first release).
    pub previous: Option<u64>,
    /// Target hosts, in wave order.
    pub hosts: Vec<HostName>,
    /// The waves.
    pub waves: Vec<WaveStep>,
    /// Bake per wave.
    pub bake: Duration,
    /// Hosts that may be down at once.
    pub max_unavailable: usize,
    /// Time a wave has to become healthy.
    pub progress_deadline: Duration,
    /// Index into `waves` of the current wave.
    pub wave: usize,
    /// Where it is.
    pub phase: Phase,
    /// When `phase` began (for bake and the progress deadline).
    pub phase_since: SystemTime,
    /// Paused by a person: nothing advances.
    pub paused: bool,
    /// When it started.
    pub started_at: SystemTime,
    /// When it finished.
    pub finished_at: Option<SystemTime>,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// What happened, one line per event, for `fifty rollout status`.
    pub events: Vec<(SystemTime, String)>,
    /// With the immune system watching: how long the last wave bakes (compared with the
    /// previous release's fleet before the rollout), in place of `bake`.
    pub watch: Option<Duration>,
    /// Why the wave waiting for `promote` is held, when the immune system held it.
    pub held: Option<String>,
}

/// What the leader sees of one host now (soft state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    /// Reporting heartbeats (or, just after an election, not yet known to be down).
    pub up: bool,
    /// This leader has heard from it: without a report nothing is decided about it (a new
    /// leader starts with none).
    pub reported: bool,
    /// The release it runs.
    pub current: Option<u64>,
    /// Whether that release passed its health check.
    pub healthy: bool,
    /// The last release that failed to apply there, and why.
    pub failed: Option<(u64, String)>,
    /// The release it was switching to when last heard from, if any.
    pub applying: Option<u64>,
}

/// A decision: the rollout's next state and the hosts whose target release changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The next state (version bumped).
    pub rollout: Rollout,
    /// Host → release it should run from now on.
    pub targets: Vec<(HostName, u64)>,
}

/// Most events a rollout keeps.
const MAX_EVENTS: usize = 200;

impl Rollout {
    /// A rollout of `release` over `hosts` (sorted by the caller), starting now: returns its
    /// first step (the first wave targeted).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: u64,
        repo: RepoName,
        kind: Kind,
        release: u64,
        previous: Option<u64>,
        hosts: Vec<HostName>,
        waves: Vec<WaveStep>,
        bake: Duration,
        max_unavailable: usize,
        progress_deadline: Duration,
        now: SystemTime,
    ) -> Step {
        let (waves, bake) = match kind {
            // No waves (not a checked `[deploy]`): every host in one wave.
            Kind::Deploy if waves.is_empty() => (vec![WaveStep::Percent(100)], bake),
            Kind::Deploy => (waves, bake),
            Kind::Rollback => (vec![WaveStep::Percent(100)], Duration::ZERO),
        };
        let mut r = Rollout {
            id,
            version: 0,
            repo,
            kind,
            release,
            previous,
            hosts,
            waves,
            bake,
            max_unavailable: max_unavailable.max(1),
            progress_deadline,
            wave: 0,
            phase: Phase::Deploying,
            phase_since: now,
            paused: false,
            started_at: now,
            finished_at: None,
            outcome: None,
            events: Vec::new(),
            watch: None,
            held: None,
        };
        let what = match kind {
            Kind::Deploy => format!("rollout of release {release} to {} hosts started", r.hosts.len()),
            Kind::Rollback => format!("rollback of {} hosts to release {release} started", r.hosts.len()),
        };
        r.say(now, what);
        if r.hosts.is_empty() {
            r.finish(now, Outcome::Failed { why: "no host matches the deploy selector".into() });
            return Step { rollout: r, targets: vec![] };
        }
        let mut targets = Vec::new();
        r.enter_wave(0, now, &mut targets);
        Step { rollout: r, targets }
    }

    /// Whether it has finished.
    pub fn finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// How many hosts the wave at `index` reaches in all: the most any wave up to it reaches (a
    /// wave never takes hosts back, e.g. `["5", "1", "100%"]` reaches 5, 5, every host).
    pub fn reach(&self, index: usize) -> usize {
        self.waves.iter().take(index + 1).filter_map(|w| w.reach(self.hosts.len())).max().unwrap_or(0)
    }

    /// The hosts of the current wave and every earlier one.
    pub fn touched(&self) -> &[HostName] {
        &self.hosts[..self.reach(self.wave)]
    }

    pub(crate) fn say(&mut self, now: SystemTime, what: String) {
        self.events.push((now, what));
        if self.events.len() > MAX_EVENTS {
            self.events.remove(1);
        }
    }

    fn finish(&mut self, now: SystemTime, outcome: Outcome) {
        let what = match &outcome {
            Outcome::Succeeded => format!("release {} runs on all {} hosts", self.release, self.hosts.len()),
            Outcome::Failed { why } => format!("failed: {why}"),
            Outcome::Aborted { by } => format!("aborted by {by}"),
            Outcome::Superseded { by } => format!("superseded by rollout {by}"),
            Outcome::Reverted { why } => format!("reverted by the immune system: {why}"),
        };
        self.say(now, what);
        self.phase = Phase::Done;
        self.phase_since = now;
        self.finished_at = Some(now);
        self.outcome = Some(outcome);
    }

    /// Moves to wave `index` (skipping nothing: a manual wave is entered as a stop).
    fn enter_wave(&mut self, index: usize, now: SystemTime, targets: &mut Vec<(HostName, u64)>) {
        let before = if index == 0 { 0 } else { self.reach(index - 1) };
        self.wave = index;
        self.phase_since = now;
        if self.waves[index] == WaveStep::Manual {
            self.phase = Phase::AwaitingPromotion;
            self.say(now, format!("wave {} waits for `fifty rollout promote`", index + 1));
            return;
        }
        self.phase = Phase::Deploying;
        let reach = self.reach(index);
        for h in &self.hosts[before..reach] {
            targets.push((h.clone(), self.release));
        }
        self.say(
            now,
            format!("wave {}: {} of {} hosts on release {}", index + 1, reach, self.hosts.len(), self.release),
        );
    }

    /// Fails the rollout and sends every touched host back to the previous release.
    fn fail(&mut self, now: SystemTime, outcome: Outcome, targets: &mut Vec<(HostName, u64)>) {
        match self.previous {
            Some(prev) => {
                for h in self.touched().to_vec() {
                    targets.push((h, prev));
                }
                let what = match &outcome {
                    Outcome::Failed { why } => {
                        format!("failing ({why}); rolling {} hosts back to release {prev}", self.touched().len())
                    }
                    Outcome::Aborted { by } => {
                        format!("aborted by {by}; rolling {} hosts back to release {prev}", self.touched().len())
                    }
                    Outcome::Reverted { why } => format!(
                        "immune system: {why}; reverting {} hosts to release {prev} at once",
                        self.touched().len()
                    ),
                    _ => format!("rolling back to release {prev}"),
                };
                self.say(now, what);
                self.phase = Phase::RollingBack;
                self.phase_since = now;
                self.outcome = Some(outcome);
            }
            None => {
                self.say(now, "no previous release to go back to; hosts keep what they run".into());
                self.finish(now, outcome);
            }
        }
    }

    fn bumped(&self) -> Rollout {
        let mut r = self.clone();
        r.version += 1;
        r
    }

    /// The next step given what the hosts report at `now`, or `None` when nothing changes.
    pub fn step(&self, hosts: &HashMap<HostName, HostView>, judgement: &Judgement, now: SystemTime) -> Option<Step> {
        if self.finished() || (self.paused && self.phase != Phase::RollingBack) {
            return None;
        }
        let mut r = self.bumped();
        let mut targets = Vec::new();
        let view = |h: &HostName| hosts.get(h).cloned().unwrap_or_default();
        let elapsed = now.duration_since(self.phase_since).unwrap_or_default();
        match self.phase {
            Phase::Deploying | Phase::Baking => {
                let wave: Vec<HostName> = self.touched().to_vec();
                if wave.iter().any(|h| {
                    let v = view(h);
                    v.up && !v.reported
                }) {
                    return None;
                }
                // A host that failed this release fails the rollout.
                if let Some((h, why)) = wave.iter().find_map(|h| match view(h).failed {
                    Some((rel, why)) if rel == self.release => Some((h.clone(), why)),
                    _ => None,
                }) {
                    r.fail(
                        now,
                        Outcome::Failed { why: format!("{h} could not run release {}: {why}", self.release) },
                        &mut targets,
                    );
                    return Some(Step { rollout: r, targets });
                }
                let down: Vec<&HostName> = wave.iter().filter(|h| !view(h).up).collect();
                if down.len() > self.max_unavailable {
                    let names: Vec<String> = down.iter().map(|h| h.to_string()).collect();
                    let why = format!(
                        "{} hosts down ({}), more than max_unavailable {}",
                        down.len(),
                        names.join(", "),
                        self.max_unavailable
                    );
                    r.fail(now, Outcome::Failed { why }, &mut targets);
                    return Some(Step { rollout: r, targets });
                }
                let ready = |h: &&HostName| {
                    let v = view(h);
                    v.up && v.current == Some(self.release) && v.healthy
                };
                // Down while running or switching to this release: the release may have taken it
                // down, so it is never counted healthy. A host away since before it got the
                // release only counts against max_unavailable, and converges when it returns.
                let lost = |h: &&HostName| {
                    let v = view(h);
                    !v.up && (v.current == Some(self.release) || v.applying == Some(self.release))
                };
                let away = down.iter().filter(|h| !lost(*h)).count();
                let healthy = wave.iter().filter(ready).count();
                let all_healthy = healthy + away >= wave.len();
                // The hosts holding the wave up, for the failure's message.
                let unready = || -> String {
                    let sick = wave.iter().filter(|h| view(h).up && !ready(h)).map(|h| match view(h).current {
                        Some(rel) if rel == self.release => format!("{h} unhealthy"),
                        _ => format!("{h} not on release {} yet", self.release),
                    });
                    let gone = wave.iter().filter(lost).map(|h| format!("{h} down on release {}", self.release));
                    sick.chain(gone).collect::<Vec<_>>().join(", ")
                };
                if self.phase == Phase::Baking {
                    if !all_healthy {
                        let why = format!("{} while baking wave {}", unready(), self.wave + 1);
                        r.fail(now, Outcome::Failed { why }, &mut targets);
                        return Some(Step { rollout: r, targets });
                    }
                    if elapsed < self.bake_of(self.wave) {
                        return None;
                    }
                    match judgement {
                        Judgement::Off | Judgement::Promote => r.advance(now, &mut targets),
                        // The analysis has not seen a whole bake yet (it started late, e.g. on
                        // a new leader): it says when.
                        Judgement::Watching => return None,
                        Judgement::Hold { why } => {
                            r.phase = Phase::AwaitingPromotion;
                            r.phase_since = now;
                            r.held = Some(why.clone());
                            r.say(
                                now,
                                format!(
                                    "wave {} held by the immune system: {why}; `fifty rollout promote` or `abort`",
                                    self.wave + 1
                                ),
                            );
                        }
                    }
                    return Some(Step { rollout: r, targets });
                }
                if all_healthy {
                    if self.bake_of(self.wave).is_zero() {
                        r.say(now, format!("wave {} healthy", self.wave + 1));
                        r.advance(now, &mut targets);
                    } else {
                        r.phase = Phase::Baking;
                        r.phase_since = now;
                        r.say(
                            now,
                            format!(
                                "wave {} healthy; baking for {}",
                                self.wave + 1,
                                humantime::format_duration(self.bake_of(self.wave))
                            ),
                        );
                    }
                    return Some(Step { rollout: r, targets });
                }
                if elapsed > self.progress_deadline {
                    let why = format!(
                        "wave {} not healthy within the progress deadline ({}): {healthy} of {} hosts ready ({})",
                        self.wave + 1,
                        humantime::format_duration(self.progress_deadline),
                        wave.len(),
                        unready()
                    );
                    r.fail(now, Outcome::Failed { why }, &mut targets);
                    return Some(Step { rollout: r, targets });
                }
                None
            }
            Phase::RollingBack => {
                let prev = self.previous?;
                let back = self.touched().iter().all(|h| {
                    let v = view(h);
                    !v.up || v.current == Some(prev)
                });
                if !back {
                    return None;
                }
                let outcome = self.outcome.clone().unwrap_or(Outcome::Failed { why: "rolled back".into() });
                r.say(now, format!("every touched host is back on release {prev}"));
                r.finish(now, outcome);
                Some(Step { rollout: r, targets })
            }
            Phase::AwaitingPromotion | Phase::Done => None,
        }
    }

    /// How long wave `index` bakes: `watch` for the wave that reaches every host when the immune
    /// system watches, else `bake`.
    pub fn bake_of(&self, index: usize) -> Duration {
        match self.watch {
            Some(watch) if self.reach(index) >= self.hosts.len() => watch,
            _ => self.bake,
        }
    }

    /// The cluster immune system found a regression: every host the rollout touched goes back
    /// to the previous release at once (no waves, no bake).
    pub fn revert(&self, why: &str, now: SystemTime) -> Result<Step, String> {
        if matches!(self.phase, Phase::Done | Phase::RollingBack) {
            return Err("the rollout is over".into());
        }
        if self.previous.is_none() {
            return Err("there is no previous release to go back to".into());
        }
        let mut r = self.bumped();
        r.paused = false;
        r.held = None;
        let mut targets = Vec::new();
        r.fail(now, Outcome::Reverted { why: why.to_string() }, &mut targets);
        Ok(Step { rollout: r, targets })
    }

    /// After a baked (or manual) wave: the next wave, or success.
    fn advance(&mut self, now: SystemTime, targets: &mut Vec<(HostName, u64)>) {
        self.held = None;
        if self.wave + 1 >= self.waves.len() {
            self.finish(now, Outcome::Succeeded);
        } else {
            self.enter_wave(self.wave + 1, now, targets);
        }
    }

    /// `fifty rollout promote`: skips the rest of a bake, or passes a manual wave.
    pub fn promote(&self, by: &str, now: SystemTime) -> Result<Step, String> {
        let mut r = self.bumped();
        let mut targets = Vec::new();
        match self.phase {
            Phase::Baking | Phase::AwaitingPromotion => {
                r.say(now, format!("wave {} promoted by {by}", self.wave + 1));
                r.advance(now, &mut targets);
                Ok(Step { rollout: r, targets })
            }
            Phase::Deploying => Err(format!("wave {} is not healthy yet; nothing to promote", self.wave + 1)),
            Phase::RollingBack | Phase::Done => Err("the rollout is over".into()),
        }
    }

    /// `fifty rollout pause` / `resume`.
    pub fn set_paused(&self, paused: bool, by: &str, now: SystemTime) -> Result<Step, String> {
        if matches!(self.phase, Phase::Done | Phase::RollingBack) {
            return Err("the rollout is over".into());
        }
        if self.paused == paused {
            return Err(if paused { "already paused".into() } else { "not paused".into() });
        }
        let mut r = self.bumped();
        r.paused = paused;
        // The bake and the progress deadline start again after a pause.
        r.phase_since = now;
        r.say(now, format!("{} by {by}", if paused { "paused" } else { "resumed" }));
        Ok(Step { rollout: r, targets: vec![] })
    }

    /// `fifty rollout abort`: every touched host back to the previous release.
    pub fn abort(&self, by: &str, now: SystemTime) -> Result<Step, String> {
        if matches!(self.phase, Phase::Done | Phase::RollingBack) {
            return Err("the rollout is over".into());
        }
        let mut r = self.bumped();
        r.paused = false;
        let mut targets = Vec::new();
        r.fail(now, Outcome::Aborted { by: by.to_string() }, &mut targets);
        Ok(Step { rollout: r, targets })
    }

    /// Whether a rollout of `release` takes this one over when it starts: this is a deploy of an
    /// older release still moving forward. A rollout rolling back finishes first, and so does one
    /// a person paused (they are looking at it); a rollback is never taken over by a deploy.
    pub fn superseded_by(&self, release: u64) -> bool {
        self.kind == Kind::Deploy
            && !self.finished()
            && self.phase != Phase::RollingBack
            && !self.paused
            && release > self.release
    }

    /// The hosts and waves of a rollout superseding this one, from its own `hosts` (in wave
    /// order) and `waves`: the hosts this rollout already moved to its release (and that the new
    /// release also targets) come first and make up the first wave, since they run unproven code
    /// either way; then the configured waves that reach further, from where it stands.
    pub fn carry_over(&self, hosts: Vec<HostName>, waves: Vec<WaveStep>) -> (Vec<HostName>, Vec<WaveStep>) {
        let carried: Vec<HostName> = self.touched().iter().filter(|h| hosts.contains(h)).cloned().collect();
        if carried.is_empty() {
            return (hosts, waves);
        }
        let total = hosts.len();
        let n = carried.len();
        let rest: Vec<HostName> = hosts.into_iter().filter(|h| !carried.contains(h)).collect();
        let hosts: Vec<HostName> = carried.into_iter().chain(rest).collect();
        let later = waves.into_iter().filter(|w| w.reach(total).is_none_or(|r| r > n));
        let waves: Vec<WaveStep> = std::iter::once(WaveStep::Hosts(n as u32)).chain(later).collect();
        (hosts, waves)
    }

    /// Ends this rollout because rollout `by` (a rollback, or a deploy of a newer release) takes
    /// over; its hosts' targets are the new rollout's business.
    pub fn supersede(&self, by: u64, now: SystemTime) -> Step {
        let mut r = self.bumped();
        r.finish(now, Outcome::Superseded { by });
        Step { rollout: r, targets: vec![] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: usize) -> HostName {
        HostName::new(&format!("web-{i}")).unwrap()
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn start(waves: Vec<WaveStep>, previous: Option<u64>) -> Step {
        Rollout::start(
            1,
            RepoName::new("shop").unwrap(),
            Kind::Deploy,
            7,
            previous,
            (1..=6).map(h).collect(),
            waves,
            Duration::from_secs(60),
            1,
            Duration::from_secs(600),
            t(0),
        )
    }

    fn fleet(release: u64, on: &[usize]) -> HashMap<HostName, HostView> {
        (1..=6)
            .map(|i| {
                let current = if on.contains(&i) { Some(release) } else { Some(6) };
                (h(i), HostView { up: true, reported: true, current, healthy: true, failed: None, applying: None })
            })
            .collect()
    }

    fn hosts_of(targets: &[(HostName, u64)]) -> Vec<String> {
        targets.iter().map(|(h, _)| h.to_string()).collect()
    }

    #[test]
    fn waves_bake_and_finish() {
        let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(50), WaveStep::Percent(100)];
        let first = start(waves, Some(6));
        assert_eq!(hosts_of(&first.targets), ["web-1"]);
        let r = first.rollout;
        // Not there yet: nothing changes.
        assert_eq!(r.step(&fleet(7, &[]), &Judgement::Off, t(5)), None);
        // The canary is healthy: bake.
        let s = r.step(&fleet(7, &[1]), &Judgement::Off, t(10)).unwrap();
        assert_eq!(s.rollout.phase, Phase::Baking);
        let r = s.rollout;
        assert_eq!(r.step(&fleet(7, &[1]), &Judgement::Off, t(69)), None, "still baking");
        let s = r.step(&fleet(7, &[1]), &Judgement::Off, t(70)).unwrap();
        assert_eq!(hosts_of(&s.targets), ["web-2", "web-3"]);
        assert_eq!((s.rollout.wave, s.rollout.phase), (1, Phase::Deploying));
        let r = s.rollout.step(&fleet(7, &[1, 2, 3]), &Judgement::Off, t(80)).unwrap().rollout;
        let s = r.step(&fleet(7, &[1, 2, 3]), &Judgement::Off, t(140)).unwrap();
        assert_eq!(hosts_of(&s.targets), ["web-4", "web-5", "web-6"]);
        let r = s.rollout.step(&fleet(7, &[1, 2, 3, 4, 5, 6]), &Judgement::Off, t(150)).unwrap().rollout;
        let done = r.step(&fleet(7, &[1, 2, 3, 4, 5, 6]), &Judgement::Off, t(210)).unwrap().rollout;
        assert_eq!(done.outcome, Some(Outcome::Succeeded));
        assert!(done.finished());
        assert_eq!(done.version, 6);
    }

    #[test]
    fn a_failing_canary_rolls_back_and_stops() {
        let r = start(vec![WaveStep::Hosts(1), WaveStep::Percent(100)], Some(6)).rollout;
        let mut hosts = fleet(7, &[]);
        hosts.get_mut(&h(1)).unwrap().failed = Some((7, "health check: 503".into()));
        let s = r.step(&hosts, &Judgement::Off, t(10)).unwrap();
        assert_eq!(s.targets, vec![(h(1), 6)]);
        assert_eq!(s.rollout.phase, Phase::RollingBack);
        // web-1 is back on 6: done, failed.
        let done = s.rollout.step(&fleet(7, &[]), &Judgement::Off, t(12)).unwrap().rollout;
        assert!(matches!(&done.outcome, Some(Outcome::Failed { why }) if why.contains("health check: 503")));
    }

    #[test]
    fn an_unhealthy_host_during_bake_fails_the_rollout() {
        let r = start(vec![WaveStep::Hosts(2), WaveStep::Percent(100)], Some(6)).rollout;
        let r = r.step(&fleet(7, &[1, 2]), &Judgement::Off, t(10)).unwrap().rollout;
        let mut sick = fleet(7, &[1, 2]);
        sick.get_mut(&h(2)).unwrap().healthy = false;
        let s = r.step(&sick, &Judgement::Off, t(20)).unwrap();
        assert_eq!(s.targets.len(), 2);
        assert!(matches!(&s.rollout.outcome, Some(Outcome::Failed { why }) if why.contains("web-2 unhealthy")));
    }

    #[test]
    fn down_hosts_count_against_max_unavailable() {
        let r = start(vec![WaveStep::Hosts(3), WaveStep::Percent(100)], Some(6)).rollout;
        let mut one_down = fleet(7, &[1, 2]);
        one_down.get_mut(&h(3)).unwrap().up = false;
        assert_eq!(
            r.step(&one_down, &Judgement::Off, t(10)).unwrap().rollout.phase,
            Phase::Baking,
            "one down is within budget"
        );
        let mut two_down = one_down.clone();
        two_down.get_mut(&h(2)).unwrap().up = false;
        let s = r.step(&two_down, &Judgement::Off, t(10)).unwrap();
        assert!(matches!(&s.rollout.outcome, Some(Outcome::Failed { why }) if why.contains("max_unavailable")));
    }

    /// Without the immune system, a canary that goes down on the release (crashed by it, say) used
    /// to count as healthy within max_unavailable: the release was promoted to the next wave.
    #[test]
    fn a_host_down_on_the_release_is_never_healthy() {
        let r = start(vec![WaveStep::Hosts(1), WaveStep::Percent(100)], Some(6)).rollout;
        // The canary switched to 7, then stopped reporting.
        let mut crashed = fleet(7, &[1]);
        crashed.get_mut(&h(1)).unwrap().up = false;
        assert_eq!(r.step(&crashed, &Judgement::Off, t(10)), None, "the wave waits for it");
        assert_eq!(r.step(&crashed, &Judgement::Off, t(70)), None, "and is not promoted after a bake's time");
        let s = r.step(&crashed, &Judgement::Off, t(601)).unwrap();
        assert_eq!(s.targets, vec![(h(1), 6)], "the canary goes back");
        assert!(
            matches!(&s.rollout.outcome, Some(Outcome::Failed { why }) if why.contains("progress deadline") && why.contains("web-1 down on release 7")),
            "{:?}",
            s.rollout.outcome
        );

        // Down while switching to 7 is the same.
        let mut switching = fleet(7, &[]);
        let web1 = switching.get_mut(&h(1)).unwrap();
        (web1.up, web1.applying) = (false, Some(7));
        assert_eq!(r.step(&switching, &Judgement::Off, t(10)), None);

        // Down while baking fails the rollout at once, instead of promoting it.
        let baking = r.step(&fleet(7, &[1]), &Judgement::Off, t(10)).unwrap().rollout;
        assert_eq!(baking.phase, Phase::Baking);
        let s = baking.step(&crashed, &Judgement::Off, t(70)).unwrap();
        assert_eq!(s.targets, vec![(h(1), 6)]);
        assert!(
            matches!(&s.rollout.outcome, Some(Outcome::Failed { why }) if why == "web-1 down on release 7 while baking wave 1"),
            "{:?}",
            s.rollout.outcome
        );
    }

    #[test]
    fn a_host_away_before_its_wave_converges_later() {
        let r = start(vec![WaveStep::Hosts(1), WaveStep::Percent(100)], Some(6)).rollout;
        let r = r.step(&fleet(7, &[1]), &Judgement::Off, t(10)).unwrap().rollout;
        let s = r.step(&fleet(7, &[1]), &Judgement::Off, t(70)).unwrap();
        assert_eq!(s.targets.len(), 5);
        // web-6 was down on release 6 before its wave: it only counts against max_unavailable.
        let mut away = fleet(7, &[1, 2, 3, 4, 5]);
        away.get_mut(&h(6)).unwrap().up = false;
        let s = s.rollout.step(&away, &Judgement::Off, t(80)).unwrap();
        assert_eq!(s.rollout.phase, Phase::Baking);
        let done = s.rollout.step(&away, &Judgement::Off, t(140)).unwrap().rollout;
        assert_eq!(done.outcome, Some(Outcome::Succeeded));
        // One away and one down on the release: two down, more than max_unavailable 1.
        let mut both = away.clone();
        both.get_mut(&h(2)).unwrap().up = false;
        let fresh = start(vec![WaveStep::Percent(100)], Some(6)).rollout;
        let s = fresh.step(&both, &Judgement::Off, t(10)).unwrap();
        assert!(
            matches!(&s.rollout.outcome, Some(Outcome::Failed { why }) if why.contains("2 hosts down (web-2, web-6)"))
        );
    }

    #[test]
    fn waves_never_take_hosts_back() {
        let s = start(vec![WaveStep::Hosts(3), WaveStep::Hosts(1), WaveStep::Percent(100)], Some(6));
        assert_eq!(s.targets.len(), 3);
        let r = s.rollout;
        assert_eq!((r.reach(0), r.reach(1), r.reach(2)), (3, 3, 6));
        let r = r.step(&fleet(7, &[1, 2, 3]), &Judgement::Off, t(10)).unwrap().rollout;
        let s = r.step(&fleet(7, &[1, 2, 3]), &Judgement::Off, t(70)).unwrap();
        assert_eq!((s.rollout.wave, s.targets.len()), (1, 0), "the second wave adds nobody");
        let none = Rollout::start(
            1,
            RepoName::new("shop").unwrap(),
            Kind::Deploy,
            7,
            Some(6),
            (1..=6).map(h).collect(),
            vec![],
            Duration::ZERO,
            1,
            Duration::from_secs(600),
            t(0),
        );
        assert_eq!(none.targets.len(), 6, "no waves: every host at once");
    }

    /// Release 8 arrives while release 7 bakes its second wave: 7's rollout ends, 8's starts from
    /// its first wave, which moves 7's three hosts to 8; the waves after it go on from there.
    #[test]
    fn a_newer_release_supersedes_a_rollout_in_progress() {
        let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(50), WaveStep::Percent(100)];
        let r = start(waves.clone(), Some(6)).rollout;
        let r = r.step(&fleet(7, &[1]), &Judgement::Off, t(10)).unwrap().rollout;
        let r = r.step(&fleet(7, &[1]), &Judgement::Off, t(70)).unwrap().rollout;
        let old = r.step(&fleet(7, &[1, 2, 3]), &Judgement::Off, t(80)).unwrap().rollout;
        assert_eq!((old.wave, old.phase, old.touched().len()), (1, Phase::Baking, 3));

        assert!(old.superseded_by(8));
        assert!(!old.superseded_by(7) && !old.superseded_by(5), "only by a newer release");
        assert!(!old.set_paused(true, "admin", t(81)).unwrap().rollout.superseded_by(8), "a person paused it");
        assert!(!old.abort("admin", t(81)).unwrap().rollout.superseded_by(8), "rolling back");

        // The new release's hosts (web-2 no longer selected, web-7 new), in name order.
        let hosts: Vec<HostName> = [1, 3, 4, 5, 6, 7].into_iter().map(h).collect();
        let (hosts, new_waves) = old.carry_over(hosts, waves);
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        assert_eq!(names, ["web-1", "web-3", "web-4", "web-5", "web-6", "web-7"]);
        assert_eq!(new_waves, [WaveStep::Hosts(2), WaveStep::Percent(50), WaveStep::Percent(100)]);

        let ended = old.supersede(2, t(90));
        assert_eq!((ended.rollout.outcome, ended.targets), (Some(Outcome::Superseded { by: 2 }), vec![]));
        let new = Rollout::start(
            2,
            RepoName::new("shop").unwrap(),
            Kind::Deploy,
            8,
            Some(6),
            hosts,
            new_waves,
            Duration::from_secs(60),
            1,
            Duration::from_secs(600),
            t(90),
        );
        assert_eq!(new.targets, vec![(h(1), 8), (h(3), 8)], "7's hosts move to 8 first");
        let mut on8 = fleet(8, &[1, 3]);
        on8.insert(h(7), HostView { up: true, reported: true, current: None, healthy: false, ..Default::default() });
        let r = new.rollout.step(&on8, &Judgement::Off, t(100)).unwrap().rollout;
        let s = r.step(&on8, &Judgement::Off, t(160)).unwrap();
        assert_eq!(hosts_of(&s.targets), ["web-4"], "then 50% of six");

        // Where 7 had reached no host that 8 targets, 8 starts as configured.
        let canary_only = start(vec![WaveStep::Hosts(1), WaveStep::Percent(100)], Some(6)).rollout;
        let hosts: Vec<HostName> = (2..=6).map(h).collect();
        let (same, waves) = canary_only.carry_over(hosts.clone(), vec![WaveStep::Hosts(1), WaveStep::Percent(100)]);
        assert_eq!((same, waves), (hosts, vec![WaveStep::Hosts(1), WaveStep::Percent(100)]));
    }

    #[test]
    fn nothing_is_decided_about_a_host_not_heard_from() {
        let r = start(vec![WaveStep::Hosts(2), WaveStep::Percent(100)], Some(6)).rollout;
        let r = r.step(&fleet(7, &[1, 2]), &Judgement::Off, t(10)).unwrap().rollout;
        // A new leader: web-2 counts as up (grace) but has not reported.
        let mut fresh = fleet(7, &[1]);
        let web2 = fresh.get_mut(&h(2)).unwrap();
        web2.reported = false;
        web2.current = None;
        web2.healthy = false;
        assert_eq!(r.step(&fresh, &Judgement::Off, t(20)), None);
    }

    #[test]
    fn the_progress_deadline_fails_a_stuck_wave() {
        let r = start(vec![WaveStep::Hosts(1), WaveStep::Percent(100)], Some(6)).rollout;
        assert_eq!(r.step(&fleet(7, &[]), &Judgement::Off, t(600)), None);
        let s = r.step(&fleet(7, &[]), &Judgement::Off, t(601)).unwrap();
        assert!(matches!(&s.rollout.outcome, Some(Outcome::Failed { why }) if why.contains("progress deadline")));
    }

    #[test]
    fn manual_waves_promote_pause_resume_and_abort() {
        let r = start(vec![WaveStep::Hosts(1), WaveStep::Manual, WaveStep::Percent(100)], Some(6)).rollout;
        let r = r.step(&fleet(7, &[1]), &Judgement::Off, t(10)).unwrap().rollout;
        // Promote skips the rest of the bake, into the manual stop.
        let r = r.promote("admin", t(11)).unwrap().rollout;
        assert_eq!(r.phase, Phase::AwaitingPromotion);
        assert_eq!(r.step(&fleet(7, &[1]), &Judgement::Off, t(1000)), None, "a manual wave waits for a person");
        let s = r.promote("admin", t(1001)).unwrap();
        assert_eq!(s.targets.len(), 5);
        let r = s.rollout;
        let paused = r.set_paused(true, "admin", t(1002)).unwrap().rollout;
        assert_eq!(paused.step(&fleet(7, &[1, 2, 3, 4, 5, 6]), &Judgement::Off, t(1003)), None, "paused");
        let resumed = paused.set_paused(false, "admin", t(1004)).unwrap().rollout;
        let aborted = resumed.abort("admin", t(1005)).unwrap();
        assert_eq!(aborted.targets.len(), 6, "every touched host goes back");
        assert!(aborted.targets.iter().all(|(_, rel)| *rel == 6));
        assert!(matches!(aborted.rollout.outcome, Some(Outcome::Aborted { .. })));
        assert!(aborted.rollout.abort("admin", t(1006)).is_err());
    }

    #[test]
    fn a_rollback_is_one_wave_without_bake() {
        let s = Rollout::start(
            2,
            RepoName::new("shop").unwrap(),
            Kind::Rollback,
            6,
            Some(7),
            (1..=6).map(h).collect(),
            vec![WaveStep::Hosts(1), WaveStep::Percent(100)],
            Duration::from_secs(60),
            1,
            Duration::from_secs(600),
            t(0),
        );
        assert_eq!(s.targets.len(), 6, "every host at once");
        let done = s.rollout.step(&fleet(6, &[1, 2, 3, 4, 5, 6]), &Judgement::Off, t(3)).unwrap().rollout;
        assert_eq!(done.outcome, Some(Outcome::Succeeded));
    }
}

/// The controller with the immune system's judgement on: held waves, promotion by the judge and
/// reverts, alone and driven by the real [`crate::immune::judge::Judge`] over reported metrics.
#[cfg(test)]
mod judged_tests {
    use super::*;
    use crate::deploy::{ImmuneMetric, ImmunePlan};
    use crate::immune::judge::{Call, Judge};
    use crate::immune::series::Series;
    use fifty_shared::wire::{MetricSample, MetricsReport};

    fn h(i: usize) -> HostName {
        HostName::new(&format!("web-{i}")).unwrap()
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    /// Release 7 over six hosts (release 6 before it), one canary then everyone; 60 s bakes and,
    /// as the immune system sets it, a 120 s watch for the last wave.
    fn watched(waves: Vec<WaveStep>) -> Rollout {
        let mut r = Rollout::start(
            1,
            RepoName::new("shop").unwrap(),
            Kind::Deploy,
            7,
            Some(6),
            (1..=6).map(h).collect(),
            waves,
            Duration::from_secs(60),
            1,
            Duration::from_secs(600),
            t(0),
        )
        .rollout;
        r.watch = Some(Duration::from_secs(120));
        r
    }

    fn fleet(on: &[usize]) -> HashMap<HostName, HostView> {
        (1..=6)
            .map(|i| {
                let current = if on.contains(&i) { Some(7) } else { Some(6) };
                (h(i), HostView { up: true, reported: true, current, healthy: true, failed: None, applying: None })
            })
            .collect()
    }

    fn hold() -> Judgement {
        Judgement::Hold { why: "error_rate inconclusive (too little data)".into() }
    }

    #[test]
    fn a_held_wave_waits_for_a_person_then_promote_goes_on() {
        let r = watched(vec![WaveStep::Hosts(1), WaveStep::Percent(100)]);
        let r = r.step(&fleet(&[1]), &Judgement::Watching, t(10)).unwrap().rollout;
        assert_eq!(r.phase, Phase::Baking);
        // The judge's hold means nothing before the bake is over.
        assert_eq!(r.step(&fleet(&[1]), &hold(), t(69)), None);
        let held = r.step(&fleet(&[1]), &hold(), t(70)).unwrap();
        assert!(held.targets.is_empty(), "a hold moves no host");
        let r = held.rollout;
        assert_eq!(r.phase, Phase::AwaitingPromotion);
        assert_eq!(r.held.as_deref(), Some("error_rate inconclusive (too little data)"));
        assert!(r.events.last().unwrap().1.starts_with("wave 1 held by the immune system: error_rate inconclusive"));
        // Held: neither time nor a later promote from the judge moves it; a person does.
        assert_eq!(r.step(&fleet(&[1]), &Judgement::Promote, t(5000)), None);
        let s = r.promote("admin", t(5001)).unwrap();
        assert_eq!(
            s.targets.iter().map(|(h, _)| h.to_string()).collect::<Vec<_>>(),
            ["web-2", "web-3", "web-4", "web-5", "web-6"]
        );
        assert!(s.targets.iter().all(|(_, rel)| *rel == 7));
        assert_eq!((s.rollout.wave, s.rollout.phase, s.rollout.held.clone()), (1, Phase::Deploying, None));
        assert!(s.rollout.events.last().unwrap().1.starts_with("wave 2: 6 of 6 hosts"));
    }

    #[test]
    fn a_held_wave_can_be_aborted_back_to_the_previous_release() {
        let r = watched(vec![WaveStep::Hosts(2), WaveStep::Percent(100)]);
        let r = r.step(&fleet(&[1, 2]), &Judgement::Watching, t(10)).unwrap().rollout;
        let r = r.step(&fleet(&[1, 2]), &hold(), t(70)).unwrap().rollout;
        assert_eq!(r.phase, Phase::AwaitingPromotion);
        let s = r.abort("admin", t(80)).unwrap();
        assert_eq!(s.targets, vec![(h(1), 6), (h(2), 6)]);
        assert_eq!(s.rollout.phase, Phase::RollingBack);
        let done = s.rollout.step(&fleet(&[]), &Judgement::Off, t(90)).unwrap().rollout;
        assert_eq!(done.outcome, Some(Outcome::Aborted { by: "admin".into() }));
    }

    #[test]
    fn the_judge_promotes_each_wave_and_watching_waits_past_the_bake() {
        let r = watched(vec![WaveStep::Hosts(1), WaveStep::Percent(50), WaveStep::Percent(100)]);
        let r = r.step(&fleet(&[1]), &Judgement::Watching, t(10)).unwrap().rollout;
        // A promote before the bake is over does not cut it short.
        assert_eq!(r.step(&fleet(&[1]), &Judgement::Promote, t(69)), None);
        // The analysis has not seen a whole bake yet (a new leader): the wave keeps baking.
        assert_eq!(r.step(&fleet(&[1]), &Judgement::Watching, t(500)), None);
        let s = r.step(&fleet(&[1]), &Judgement::Promote, t(501)).unwrap();
        assert_eq!(s.targets, vec![(h(2), 7), (h(3), 7)]);
        let r = s.rollout.step(&fleet(&[1, 2, 3]), &Judgement::Watching, t(510)).unwrap().rollout;
        let r = r.step(&fleet(&[1, 2, 3]), &Judgement::Promote, t(570)).unwrap().rollout;
        assert_eq!((r.wave, r.phase), (2, Phase::Deploying));
        let all = [1, 2, 3, 4, 5, 6];
        let r = r.step(&fleet(&all), &Judgement::Watching, t(580)).unwrap().rollout;
        // The last wave bakes for the immune system's watch (120 s), not the 60 s bake.
        assert_eq!(r.bake_of(r.wave), Duration::from_secs(120));
        assert_eq!(r.step(&fleet(&all), &Judgement::Promote, t(699)), None);
        let done = r.step(&fleet(&all), &Judgement::Promote, t(700)).unwrap().rollout;
        assert_eq!(done.outcome, Some(Outcome::Succeeded));
    }

    #[test]
    fn a_revert_sends_every_touched_host_back_at_once_even_when_held() {
        let r = watched(vec![WaveStep::Hosts(1), WaveStep::Percent(50), WaveStep::Percent(100)]);
        let r = r.step(&fleet(&[1]), &Judgement::Watching, t(10)).unwrap().rollout;
        let r = r.step(&fleet(&[1]), &Judgement::Promote, t(70)).unwrap().rollout;
        let r = r.step(&fleet(&[1, 2, 3]), &Judgement::Watching, t(80)).unwrap().rollout;
        let r = r.step(&fleet(&[1, 2, 3]), &hold(), t(140)).unwrap().rollout;
        assert_eq!(r.phase, Phase::AwaitingPromotion);
        let s = r.revert("error_rate 0.50% → 5.0% (+900%, p=1e-06)", t(150)).unwrap();
        assert_eq!(s.targets, vec![(h(1), 6), (h(2), 6), (h(3), 6)]);
        assert_eq!(s.rollout.held, None);
        assert!(s.rollout.events.last().unwrap().1.contains("reverting 3 hosts to release 6 at once"));
        let done = s.rollout.step(&fleet(&[]), &Judgement::Off, t(151)).unwrap().rollout;
        assert!(matches!(&done.outcome, Some(Outcome::Reverted { why }) if why.starts_with("error_rate 0.50%")));
        assert!(done.revert("again", t(152)).is_err(), "a finished rollout is not reverted twice");
    }

    fn plan() -> ImmunePlan {
        ImmunePlan {
            interval: Duration::from_secs(1),
            alpha: 0.01,
            min_effect: 0.5,
            pass_bound: 2.0,
            watch: Duration::from_secs(120),
            max_bake: Duration::from_secs(120),
            metrics: vec![ImmuneMetric { name: "error_rate".into(), kind: "ratio".into(), bad_decrease: false }],
        }
    }

    /// One second of reports: 200 requests a host, 1 error on the old release and `new_errors` on
    /// the new one.
    fn report_second(
        series: &mut Series,
        hosts: &HashMap<HostName, HostView>,
        now: SystemTime,
        seq: u64,
        new_errors: f64,
    ) {
        for (name, v) in hosts {
            let release = v.current.expect("every host runs a release");
            let num = if release == 7 { new_errors } else { 1.0 };
            let report = MetricsReport {
                release,
                seq,
                at: now,
                span: Duration::from_secs(1),
                samples: vec![("error_rate".into(), MetricSample::Ratio { num, den: 200.0 })],
                error: None,
            };
            series.push(name, report, now);
        }
    }

    /// Drives the rollout as the leader's deploy round does: reports, the judge's call, then the
    /// controller's step (or the revert), one second at a time, hosts switching when targeted.
    fn drive(new_errors: f64, seconds: u64) -> Rollout {
        let mut r = watched(vec![WaveStep::Hosts(1), WaveStep::Percent(100)]);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        let mut on: Vec<usize> = vec![];
        // The hour before the rollout on release 6, for the last wave's comparison.
        for s in 0..200 {
            report_second(&mut series, &fleet(&on), t(0) - Duration::from_secs(200 - s), s + 1, 1.0);
        }
        for s in 1..=seconds {
            let now = t(s);
            for target in r.touched() {
                let i: usize = target.as_str().trim_start_matches("web-").parse().unwrap();
                if !on.contains(&i) && r.phase == Phase::Deploying {
                    on.push(i);
                }
            }
            if r.phase == Phase::RollingBack {
                on.clear();
            }
            let hosts = fleet(&on);
            report_second(&mut series, &hosts, now, 200 + s, new_errors);
            match judge.judge(&r, Some(&plan()), &series, now) {
                Call::Revert { why, .. } => r = r.revert(&why, now).unwrap().rollout,
                Call::Judge(j) => {
                    if let Some(step) = r.step(&hosts, &j, now) {
                        r = step.rollout;
                    }
                }
            }
            if r.finished() {
                break;
            }
        }
        r
    }

    #[test]
    fn a_healthy_release_is_promoted_by_the_judge_through_every_wave() {
        let r = drive(1.0, 1000);
        assert_eq!(r.outcome, Some(Outcome::Succeeded), "{:#?}", r.events);
        assert!(r.events.iter().all(|(_, e)| !e.contains("held")), "{:#?}", r.events);
        // Canary bake (60 s) plus the last wave's watch (120 s), each with a second of deploy.
        let took = r.finished_at.unwrap().duration_since(t(0)).unwrap();
        assert!(took >= Duration::from_secs(180) && took <= Duration::from_secs(190), "{took:?}");
    }

    #[test]
    fn a_bad_canary_is_reverted_by_the_judge_before_its_bake_ends() {
        let r = drive(40.0, 1000);
        let Some(Outcome::Reverted { why }) = &r.outcome else { panic!("not reverted: {:#?}", r.events) };
        assert!(why.starts_with("error_rate 0.50% → 20%"), "{why}");
        assert!(r.finished_at.unwrap() < t(60), "reverted at {:?}", r.finished_at);
        assert_eq!(r.wave, 0, "the bad release never left its canary");
    }
}
