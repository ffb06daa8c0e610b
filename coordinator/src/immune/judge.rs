//! The leader's side of the immune system: while a wave of a watched rollout bakes, feed the
//! hosts' metric reports ([`Series`]) to one [`Monitor`] per metric every scrape interval —
//! hosts of the wave on the new release against hosts still on the previous one, or, once every
//! host runs the new release, against the previous release's fleet in the window before the
//! rollout — and turn their verdicts into what the rollout controller acts on.
//!
//! The reports are soft state, but the tests are not: each interval (less often when the record
//! is large) the leader records every metric's test so far ([`Judge::evidence_due`], replicated as
//! `Command::ImmuneEvidence`), and a new leader continues the baking wave's tests from the last
//! record ([`Judge::resume`]) — the same looks, the same always-valid p-value against the same
//! share of alpha, the hosts' pre-deploy reference and the bake's start — instead of starting
//! them again. The controller waits until the analysis has seen a whole bake before it promotes.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use fifty_shared::ids::{HostName, RepoName};
use fifty_shared::wire::MetricSample;
use tracing::{info, warn};

use super::analysis::{
    Bad, Budget, MetricKind, MetricResult, MetricSpec, Monitor, Observation, Sample, Settings, Verdict,
};
use super::evidence::{MetricEvidence, WaveEvidence, MAX_EVIDENCE};
use super::series::Series;
use super::spread::{LearnedSpread, SpreadSample};
use crate::deploy::rollout::{Judgement, Kind, Phase, Rollout, WaveStep};
use crate::deploy::ImmunePlan;

/// How much longer than twice the bake the analysis waits for a first report before it calls
/// the wave without data (inconclusive: a person decides).
const NO_DATA_GRACE: Duration = Duration::from_secs(60);

/// How long a host on the new release may serve nothing (no report, or reports with no requests
/// counted) while the hosts on the previous release serve, before the release counts as having
/// stopped serving and is reverted. At least this, and at least [`SILENT_INTERVALS`] intervals.
const SILENT_GRACE: Duration = Duration::from_secs(30);
/// See [`SILENT_GRACE`].
const SILENT_INTERVALS: u32 = 5;

/// The evidence is recorded at most once an interval and at least this far apart.
const RECORD_EVERY: Duration = Duration::from_secs(1);
/// And at most this many bytes a second on average per rollout: a record of `n` bytes waits
/// `n / RECORD_BYTES_PER_SEC` seconds after the one before (a six-host wave's record is about
/// 1 KiB, recorded every interval; the largest, `evidence::MAX_EVIDENCE`, every 8 s). Each record
/// is one Raft entry, written to disk on a quorum.
const RECORD_BYTES_PER_SEC: u64 = 32 * 1024;

/// How much of each host's past on the previous release a wave's ratio metrics are judged against
/// (each host against itself; see `Monitor::with_history`). Half an hour: in the simulation
/// (BENCHMARKS §9, "how much of each host's past") it holds a fifth as many healthy one-canary
/// waves as ten minutes when hosts do not drift apart, as many when each host drifts as much as
/// the judge's 5% spread of changes allows over ten minutes, and an hour is never better; the
/// leader keeps an hour of reports (`series::KEEP`).
const HISTORY: Duration = Duration::from_secs(1800);

/// What the analysis concluded at its latest look.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// For the controller.
    Judge(Judgement),
    /// A metric failed: revert, with the failing metrics' summaries and every metric's evidence.
    Revert {
        /// e.g. `error_rate 0.41% → 3.9% (+850%, p=2.1e-05)`.
        why: String,
        /// One line per metric.
        evidence: Vec<String>,
    },
}

/// One wave's analysis.
struct Watch {
    wave: usize,
    /// When this leader started looking.
    started: SystemTime,
    /// The first look with data from the new release's hosts: a bake is counted from it.
    first_data: Option<SystemTime>,
    last_look: Option<SystemTime>,
    monitors: Vec<Option<Monitor>>,
    /// Newest report seq taken from each host.
    seen: HashMap<HostName, u64>,
    /// When each host on the new release last served (a report counting requests).
    served: HashMap<HostName, SystemTime>,
    /// When a host on the previous release last served.
    baseline_served: Option<SystemTime>,
    /// Every host's reports on the previous release in the [`HISTORY`] before this wave's
    /// analysis began (empty for the last wave, and for what this leader did not see).
    history: Vec<(HostName, fifty_shared::wire::MetricsReport)>,
    results: Vec<Option<MetricResult>>,
    /// Each metric's histogram bounds, once its monitor exists (empty for other kinds).
    bounds: Vec<Vec<f64>>,
    /// How many leaders before this one continued the test (from the record it resumed from).
    resumes: u32,
    /// The last record proposed: when, after how many looks, and its size.
    recorded: Option<(SystemTime, u64, usize)>,
    /// Whether this leader said that the evidence is too large to record.
    too_large: bool,
    /// Whether this wave's spread samples were handed out ([`Judge::spread_samples`]).
    spread_taken: bool,
}

impl Watch {
    fn new(rollout: &Rollout, metrics: usize, now: SystemTime) -> Watch {
        Watch {
            wave: rollout.wave,
            started: now,
            first_data: None,
            last_look: None,
            monitors: vec![None; metrics],
            seen: HashMap::new(),
            served: HashMap::new(),
            baseline_served: None,
            history: Vec::new(),
            results: vec![None; metrics],
            bounds: vec![Vec::new(); metrics],
            resumes: 0,
            recorded: None,
            too_large: false,
            spread_taken: false,
        }
    }

    fn looks(&self) -> u64 {
        self.monitors.iter().flatten().map(Monitor::looks).max().unwrap_or(0)
    }
}

/// The analyses of every watched rollout (leader only).
#[derive(Default)]
pub struct Judge {
    watches: HashMap<u64, Watch>,
    /// Each repository's spreads of hosts' changes learned from its past waves, as the
    /// replicated state last had them ([`Judge::learn`]).
    learned: HashMap<RepoName, LearnedSpread>,
}

fn kind_of(kind: &str, bounds: Option<&[f64]>) -> Option<MetricKind> {
    match kind {
        "ratio" => Some(MetricKind::Ratio),
        "histogram" => bounds.map(|b| MetricKind::Histogram { bounds: b.to_vec() }),
        _ => Some(MetricKind::Gauge),
    }
}

fn sample_of(s: &MetricSample) -> Sample {
    match s {
        MetricSample::Ratio { num, den } => Sample::Ratio { num: *num, den: *den },
        MetricSample::Histogram { buckets, sum, count, .. } => {
            Sample::Histogram { buckets: buckets.clone(), sum: *sum, count: *count }
        }
        MetricSample::Gauge(v) => Sample::Gauge(*v),
    }
}

/// Waves of `rollout` the immune system judges (manual stops are not waves).
fn judged_waves(rollout: &Rollout) -> usize {
    rollout.waves.iter().filter(|w| **w != WaveStep::Manual).count().max(1)
}

/// Whether the immune system watches `rollout` at all, and if not, why (for the rollout's events).
pub fn watched(rollout: &Rollout, plan: Option<&ImmunePlan>) -> Result<(), &'static str> {
    match (rollout.kind, plan, rollout.previous) {
        (Kind::Rollback, _, _) => Err("a rollback is not judged"),
        (_, None, _) => Err("the release has no [immune] section"),
        (_, _, None) => Err("there is no previous release to compare with"),
        _ => Ok(()),
    }
}

impl Judge {
    /// Takes `repo`'s spreads learned from its past waves, as the replicated state has them now:
    /// the next wave's tests of a ratio against each host's past use a metric's learned spread
    /// of hosts' changes instead of the fixed 5% floor, once it rests on enough data
    /// (`spread::MIN_DF`). A wave already under way keeps what it began with.
    pub fn learn(&mut self, repo: &RepoName, learned: LearnedSpread) {
        self.learned.insert(repo.clone(), learned);
    }

    /// Each metric's settings for `rollout`'s wave: the plan's, with the learned spread of
    /// hosts' changes where there is one.
    fn settings_of(&self, rollout: &Rollout, plan: &ImmunePlan) -> Vec<Settings> {
        let learned = self.learned.get(&rollout.repo);
        plan.metrics
            .iter()
            .map(|m| {
                let base = settings(plan);
                match learned.and_then(|l| l.spread(&m.name)) {
                    Some(spread) => Settings { change_host_spread: spread, ..base },
                    None => base,
                }
            })
            .collect()
    }

    /// What `rollout`'s wave says about the spread of healthy hosts' changes, once, when its
    /// judgement is final (promote, hold or revert): one sample per ratio metric judged against
    /// each host's past with two or more baseline hosts (`Monitor::spread_sample`). Empty before
    /// the end, after the first call, and for a wave without such a metric.
    pub fn spread_samples(&mut self, rollout: &Rollout, call: &Call) -> Vec<SpreadSample> {
        let done = matches!(call, Call::Revert { .. } | Call::Judge(Judgement::Promote | Judgement::Hold { .. }));
        let Some(watch) = self.watches.get_mut(&rollout.id).filter(|w| w.wave == rollout.wave && done) else {
            return Vec::new();
        };
        if watch.spread_taken {
            return Vec::new();
        }
        watch.spread_taken = true;
        watch.monitors.iter().flatten().filter_map(Monitor::spread_sample).collect()
    }

    /// The analysis of `rollout` at `now`, taking a look if an interval has passed.
    pub fn judge(&mut self, rollout: &Rollout, plan: Option<&ImmunePlan>, series: &Series, now: SystemTime) -> Call {
        let Some(plan) = plan.filter(|_| watched(rollout, plan).is_ok()) else {
            return Call::Judge(Judgement::Off);
        };
        if rollout.phase != Phase::Baking {
            // Not baking (deploying a wave, held, rolling back): nothing to compare yet.
            self.watches.remove(&rollout.id);
            return Call::Judge(Judgement::Watching);
        }
        let last_wave = rollout.reach(rollout.wave) >= rollout.hosts.len();
        let previous = rollout.previous.expect("watched rollouts have one");
        let learned = self.settings_of(rollout, plan);
        let watch = match self.watches.get_mut(&rollout.id) {
            Some(w) if w.wave == rollout.wave => w,
            _ => {
                let mut w = Watch::new(rollout, plan.metrics.len(), now);
                if !last_wave {
                    let from = now.checked_sub(HISTORY).unwrap_or(SystemTime::UNIX_EPOCH);
                    w.history = reports_on(series, &rollout.hosts, previous, from, now);
                }
                if last_wave {
                    // The previous release's fleet from `watch` before the rollout began until
                    // now: before it, and the hosts that stayed on it during the earlier waves
                    // (all this leader saw, if it took over during the rollout).
                    let from = rollout.started_at.checked_sub(plan.watch).unwrap_or(SystemTime::UNIX_EPOCH);
                    let earlier = reports_on(series, &rollout.hosts, previous, from, now);
                    for (i, m) in plan.metrics.iter().enumerate() {
                        let obs = observations(&earlier, &m.name);
                        let bounds = first_bounds(&earlier, &m.name);
                        if let Some(kind) = kind_of(&m.kind, bounds.as_deref()) {
                            w.bounds[i] = bounds_of(&kind);
                            w.monitors[i] =
                                Monitor::against_window(&spec(m, kind), &learned[i], budget(rollout, plan), &obs).ok();
                        }
                    }
                }
                self.watches.insert(rollout.id, w);
                self.watches.get_mut(&rollout.id).expect("just inserted")
            }
        };
        if watch.last_look.is_none_or(|t| now.duration_since(t).unwrap_or_default() >= plan.interval) {
            watch.last_look = Some(now);
            let touched: Vec<&HostName> = rollout.touched().iter().collect();
            let mut canary = Vec::new();
            let mut baseline = Vec::new();
            for h in &rollout.hosts {
                let seen = watch.seen.get(h).copied().unwrap_or(0);
                let fresh: Vec<_> = series
                    .between(h, watch.started, now + Duration::from_secs(1))
                    .into_iter()
                    .filter(|r| r.report.seq > seen)
                    .collect();
                if let Some(newest) = fresh.iter().map(|r| r.report.seq).max() {
                    watch.seen.insert(h.clone(), newest);
                }
                let on_new = touched.contains(&h);
                for r in fresh {
                    match (on_new, r.report.release) {
                        (true, rel) if rel == rollout.release => canary.push((h.clone(), r.report)),
                        (false, rel) if rel == previous && !last_wave => baseline.push((h.clone(), r.report)),
                        _ => {}
                    }
                }
            }
            if !canary.is_empty() && watch.first_data.is_none() {
                watch.first_data = Some(now);
            }
            for (h, r) in &canary {
                if serves(r) {
                    watch.served.insert(h.clone(), now);
                }
            }
            if baseline.iter().any(|(_, r)| serves(r)) {
                watch.baseline_served = Some(now);
            }
            for (i, m) in plan.metrics.iter().enumerate() {
                if watch.monitors[i].is_none() {
                    let bounds = first_bounds(&canary, &m.name).or_else(|| first_bounds(&baseline, &m.name));
                    if let Some(kind) = kind_of(&m.kind, bounds.as_deref()) {
                        watch.bounds[i] = bounds_of(&kind);
                        watch.monitors[i] = Monitor::new(&spec(m, kind), &learned[i], budget(rollout, plan)).ok();
                        if let Some(monitor) = watch.monitors[i].as_mut() {
                            monitor.with_history(&observations(&watch.history, &m.name));
                        }
                    }
                }
                if let Some(monitor) = watch.monitors[i].as_mut() {
                    monitor.observe(&observations(&baseline, &m.name), &observations(&canary, &m.name));
                }
            }
        }
        // A bake is judged over its whole length of data: counted from the first report of the
        // new release's hosts (a new leader hears from the agents only once they re-attach).
        // Without any, the verdict comes after twice the bake (plus a minute): no data holds.
        let bake = rollout.bake_of(rollout.wave);
        let observed = watch.first_data.and_then(|t| now.duration_since(t).ok()).unwrap_or_default();
        let waited = now.duration_since(watch.started).unwrap_or_default();
        let final_look = observed >= bake || waited >= bake * 2 + NO_DATA_GRACE;
        watch.results = watch.monitors.iter().map(|m| m.as_ref().map(|m| m.verdict(final_look))).collect();
        let evidence: Vec<String> = plan
            .metrics
            .iter()
            .zip(&watch.results)
            .map(|(m, r)| match r {
                Some(r) => describe(r),
                None => format!("inconclusive: {}: no data yet", m.name),
            })
            .collect();
        let failed: Vec<String> =
            watch.results.iter().flatten().filter(|r| r.verdict == Verdict::Fail).map(MetricResult::summary).collect();
        if !failed.is_empty() {
            return Call::Revert { why: failed.join("; "), evidence };
        }
        // A host on the new release that serves nothing while the old release's hosts serve: the
        // release stopped serving (it crashed behind a passing health check, or its metrics
        // endpoint died), which no metric can show. Not in the last wave, where no host is left
        // on the old release to tell a broken release from a quiet hour.
        let grace = SILENT_GRACE.max(plan.interval * SILENT_INTERVALS);
        let counts_requests = plan.metrics.iter().any(|m| m.kind == "ratio" || m.kind == "histogram");
        let old_serves = watch.baseline_served.is_some_and(|t| now.duration_since(t).unwrap_or_default() < grace);
        let silent = (!last_wave && counts_requests && old_serves)
            .then(|| {
                rollout
                    .touched()
                    .iter()
                    .map(|h| {
                        let since = watch.served.get(h).copied().unwrap_or(watch.started);
                        (h, now.duration_since(since).unwrap_or_default())
                    })
                    .max_by_key(|(_, quiet)| *quiet)
            })
            .flatten();
        if let Some((h, quiet)) = silent {
            if quiet >= grace {
                let why = format!(
                    "{h} on release {} served no requests for {}s while the hosts on release {previous} served",
                    rollout.release,
                    quiet.as_secs()
                );
                return Call::Revert { why, evidence };
            }
            if final_look && quiet >= plan.interval * 2 {
                // Gone quiet near the end of the bake: neither pass nor hold before the grace
                // tells whether it serves again.
                return Call::Judge(Judgement::Watching);
            }
        }
        if !final_look {
            return Call::Judge(Judgement::Watching);
        }
        if watch.results.iter().all(|r| r.as_ref().is_some_and(|r| r.verdict == Verdict::Pass)) {
            return Call::Judge(Judgement::Promote);
        }
        // Undecided at the end of the bake: bake on while more data can still decide (each
        // undecided metric has data on both sides and a spread it can measure), up to
        // `max_bake`. The sequential test stays valid however long it runs, so this spends no
        // extra alpha; a pass still needs the data to rule out `pass_bound`.
        let max_bake = plan.max_bake.max(bake);
        let decidable = watch.results.iter().flatten().all(MetricResult::more_data_can_decide);
        let all_present = watch.results.iter().all(Option::is_some);
        let ended = watch.monitors.iter().flatten().any(Monitor::ended);
        if watch.first_data.is_some() && observed < max_bake && all_present && decidable && !ended {
            return Call::Judge(Judgement::Watching);
        }
        // The bake cannot go on: each metric not yet passed takes its one fixed-horizon look
        // (`Monitor::end_look`, at what the early passes left of β, `end_level`). Its time is
        // set by `max_bake` or by which metrics have data, never by their values, and the
        // monitor keeps its outcome, so later calls of this wave (the controller may ask again
        // before its step commits) get the same answer, not a second look. A new leader that
        // continues the wave from its record takes its own end look only if this one's call
        // never committed: at most one end look's outcome is ever acted on (README, "The
        // decision").
        for (monitor, result) in watch.monitors.iter_mut().zip(watch.results.iter_mut()) {
            if let Some(monitor) = monitor {
                if monitor.verdict(true).verdict == Verdict::Inconclusive {
                    *result = Some(monitor.end_look());
                }
            }
        }
        if watch.results.iter().all(|r| r.as_ref().is_some_and(|r| r.verdict == Verdict::Pass)) {
            return Call::Judge(Judgement::Promote);
        }
        let why: Vec<String> = plan
            .metrics
            .iter()
            .zip(&watch.results)
            .filter(|(_, r)| r.as_ref().is_none_or(|r| r.verdict != Verdict::Pass))
            .map(|(m, r)| match r {
                Some(r) if r.evidence.canary_n > 0 || r.evidence.baseline_n > 0 => {
                    format!("{} inconclusive ({})", m.name, r.summary())
                }
                _ => format!("{} has no data", m.name),
            })
            .collect();
        let mut why = why.join("; ");
        if observed > bake {
            why.push_str(&format!(
                "; still undecided after extending the bake to {}s (immune.max_bake): more traffic per host or a \
                 longer max_bake would decide it",
                observed.as_secs()
            ));
        }
        Call::Judge(Judgement::Hold { why })
    }

    /// Continues the tests of `rollout`'s baking wave from `recorded`, the evidence the previous
    /// leader replicated, when this leader has not begun that wave's analysis yet (call it before
    /// [`Judge::judge`]). Returns whether it did. A record of another rollout or wave, or of a
    /// plan that is not watched, changes nothing.
    ///
    /// The bake is counted from the recorded first data; each host's reports are taken from the
    /// newest one after those recorded; each metric's test goes on with its recorded totals,
    /// looks and p-value (see `Monitor::resume` for why that keeps its alpha). What is not
    /// recorded starts from this leader's takeover: a canary host's silence is timed from it.
    pub fn resume(
        &mut self,
        rollout: &Rollout,
        plan: Option<&ImmunePlan>,
        recorded: &WaveEvidence,
        now: SystemTime,
    ) -> bool {
        let Some(plan) = plan.filter(|_| watched(rollout, plan).is_ok()) else { return false };
        let current = rollout.phase == Phase::Baking && recorded.rollout == rollout.id && recorded.wave == rollout.wave;
        let begun = self.watches.get(&rollout.id).is_some_and(|w| w.wave == rollout.wave);
        if !current || begun {
            return false;
        }
        let learned = self.settings_of(rollout, plan);
        let mut w = Watch::new(rollout, plan.metrics.len(), now);
        w.first_data = recorded.first_data;
        w.resumes = recorded.resumes.saturating_add(1);
        for (host, seq) in &recorded.seen {
            if let Ok(h) = HostName::new(host) {
                w.seen.insert(h, *seq);
            }
        }
        for h in rollout.touched() {
            w.served.insert(h.clone(), now);
        }
        for (i, m) in plan.metrics.iter().enumerate() {
            let Some(me) = recorded.metrics.iter().find(|e| e.name == m.name) else { continue };
            let bounds = (!me.bounds.is_empty()).then_some(me.bounds.as_slice());
            let Some(kind) = kind_of(&m.kind, bounds) else { continue };
            match Monitor::resume(&spec(m, kind), &learned[i], budget(rollout, plan), &me.test) {
                Ok(monitor) => {
                    w.bounds[i] = me.bounds.clone();
                    w.monitors[i] = Some(monitor);
                }
                Err(e) => {
                    warn!(rollout = rollout.id, metric = %m.name, error = %e, "cannot continue the recorded test; it starts again")
                }
            }
        }
        // This leader's clock, not the record's: a clock behind the old leader's would hold back
        // the next record.
        w.recorded = Some((now, w.looks(), 0));
        info!(
            rollout = rollout.id,
            wave = rollout.wave + 1,
            looks = w.looks(),
            resumes = w.resumes,
            "immune system: continuing the wave's tests from the evidence the previous leader recorded"
        );
        self.watches.insert(rollout.id, w);
        true
    }

    /// The evidence of `rollout`'s baking wave to record now, if a record is due: once a look has
    /// been taken since the last one, at most once an interval, and no more than
    /// [`RECORD_BYTES_PER_SEC`] on average. None when the evidence is over
    /// `evidence::MAX_EVIDENCE` (said once in the log: a failover then starts the test again).
    pub fn evidence_due(&mut self, rollout: &Rollout, plan: &ImmunePlan, now: SystemTime) -> Option<WaveEvidence> {
        let w = self.watches.get_mut(&rollout.id).filter(|w| w.wave == rollout.wave)?;
        let looks = w.looks();
        if let Some((at, recorded_looks, len)) = w.recorded {
            let wait =
                plan.interval.max(RECORD_EVERY).max(Duration::from_secs_f64(len as f64 / RECORD_BYTES_PER_SEC as f64));
            if looks <= recorded_looks || now.duration_since(at).unwrap_or_default() < wait {
                return None;
            }
        } else if looks == 0 {
            return None;
        }
        let metrics = plan
            .metrics
            .iter()
            .zip(&w.monitors)
            .zip(&w.bounds)
            .filter_map(|((m, monitor), bounds)| {
                let test = monitor.as_ref()?.state();
                Some(MetricEvidence { name: m.name.clone(), bounds: bounds.clone(), test })
            })
            .collect();
        let mut seen: Vec<(String, u64)> = w.seen.iter().map(|(h, s)| (h.to_string(), *s)).collect();
        seen.sort();
        let evidence = WaveEvidence {
            rollout: rollout.id,
            wave: w.wave,
            first_data: w.first_data,
            seen,
            metrics,
            resumes: w.resumes,
            at: now,
        };
        let len = fifty_shared::codec::to_bytes(&evidence).map_or(usize::MAX, |b| b.len());
        if len > MAX_EVIDENCE {
            if !w.too_large {
                warn!(
                    rollout = rollout.id,
                    bytes = len,
                    max = MAX_EVIDENCE,
                    "the immune system's evidence is too large to replicate; a new leader would start this wave's tests again"
                );
                w.too_large = true;
            }
            w.recorded = Some((now, looks, MAX_EVIDENCE));
            return None;
        }
        w.recorded = Some((now, looks, len));
        Some(evidence)
    }

    /// The latest verdicts of `rollout`'s current wave, one line per metric (for people).
    pub fn verdicts(&self, rollout: u64) -> Vec<String> {
        self.watches.get(&rollout).map(|w| w.results.iter().flatten().map(describe).collect()).unwrap_or_default()
    }

    /// Forgets rollouts that are over.
    pub fn retain(&mut self, active: &[u64]) {
        self.watches.retain(|id, _| active.contains(id));
    }
}

/// One metric's verdict and the evidence behind it, on one line.
pub fn describe(r: &MetricResult) -> String {
    let e = &r.evidence;
    format!(
        "{}: {} (t={:.2}, df={:.0}, alpha={:.2e}; baseline {} hosts n={}, canary {} hosts n={}; {} looks)",
        r.verdict,
        r.summary(),
        e.statistic,
        e.df,
        e.alpha,
        e.baseline_hosts,
        e.baseline_n,
        e.canary_hosts,
        e.canary_n,
        e.looks
    )
}

fn bounds_of(kind: &MetricKind) -> Vec<f64> {
    match kind {
        MetricKind::Histogram { bounds } => bounds.clone(),
        _ => Vec::new(),
    }
}

fn spec(m: &crate::deploy::ImmuneMetric, kind: MetricKind) -> MetricSpec {
    MetricSpec { name: m.name.clone(), kind, bad: if m.bad_decrease { Bad::Decrease } else { Bad::Increase } }
}

fn settings(plan: &ImmunePlan) -> Settings {
    Settings { alpha: plan.alpha, min_effect: plan.min_effect, pass_bound: plan.pass_bound, ..Settings::default() }
}

fn budget(rollout: &Rollout, plan: &ImmunePlan) -> Budget {
    Budget { metrics: plan.metrics.len().max(1), waves: judged_waves(rollout) }
}

/// Every report of `hosts` on `release` between `from` and `now`, with its host.
fn reports_on(
    series: &Series,
    hosts: &[HostName],
    release: u64,
    from: SystemTime,
    now: SystemTime,
) -> Vec<(HostName, fifty_shared::wire::MetricsReport)> {
    hosts
        .iter()
        .flat_map(|h| {
            series
                .between(h, from, now)
                .into_iter()
                .filter(|r| r.report.release == release)
                .map(move |r| (h.clone(), r.report))
        })
        .collect()
}

fn observations(reports: &[(HostName, fifty_shared::wire::MetricsReport)], metric: &str) -> Vec<Observation> {
    reports
        .iter()
        .filter_map(|(h, r)| {
            let (_, s) = r.samples.iter().find(|(n, _)| n == metric)?;
            Some(Observation { host: h.to_string(), interval: r.seq, sample: sample_of(s) })
        })
        .collect()
}

/// Whether a report counts any request (a ratio's denominator or a histogram's count).
fn serves(report: &fifty_shared::wire::MetricsReport) -> bool {
    report.samples.iter().any(|(_, s)| match s {
        MetricSample::Ratio { den, .. } => *den > 0.0,
        MetricSample::Histogram { count, .. } => *count > 0.0,
        MetricSample::Gauge(_) => false,
    })
}

fn first_bounds(reports: &[(HostName, fifty_shared::wire::MetricsReport)], metric: &str) -> Option<Vec<f64>> {
    reports.iter().find_map(|(_, r)| {
        r.samples.iter().find_map(|(n, s)| match s {
            MetricSample::Histogram { bounds, .. } if n == metric && !bounds.is_empty() => Some(bounds.clone()),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::ImmuneMetric;
    use fifty_shared::wire::MetricsReport;

    fn plan() -> ImmunePlan {
        ImmunePlan {
            interval: Duration::from_secs(1),
            alpha: 0.01,
            min_effect: 0.5,
            pass_bound: 2.0,
            watch: Duration::from_secs(10),
            max_bake: Duration::from_secs(10),
            metrics: vec![ImmuneMetric { name: "error_rate".into(), kind: "ratio".into(), bad_decrease: false }],
        }
    }

    fn host(i: usize) -> HostName {
        HostName::new(&format!("web-{i}")).unwrap()
    }

    /// A rollout of release 2 over four hosts (canary first), baking its first wave since `t0`.
    fn baking(t0: SystemTime) -> Rollout {
        let hosts = (1..=4).map(host).collect();
        let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(100)];
        let d = Duration::from_secs(10);
        let mut r =
            Rollout::start(1, "shop".parse().unwrap(), Kind::Deploy, 2, Some(1), hosts, waves, d, 1, d * 6, t0).rollout;
        r.phase = Phase::Baking;
        r
    }

    /// Feeds one second of 100 requests per host (the canary failing `canary_errors` of them,
    /// the others 2) and asks for the call.
    fn second(
        judge: &mut Judge,
        series: &mut Series,
        r: &Rollout,
        t: SystemTime,
        seq: u64,
        canary_errors: f64,
    ) -> Call {
        for i in 1..=4 {
            let (release, num) = if i == 1 { (2, canary_errors) } else { (1, 2.0) };
            let report = MetricsReport {
                release,
                seq,
                at: t,
                span: Duration::from_secs(1),
                samples: vec![("error_rate".into(), MetricSample::Ratio { num, den: 100.0 })],
                error: None,
            };
            series.push(&host(i), report, t);
        }
        judge.judge(r, Some(&plan()), series, t)
    }

    #[test]
    fn a_canary_failing_a_quarter_of_its_requests_is_reverted_within_seconds() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        let mut call = Call::Judge(Judgement::Watching);
        let mut seconds = 0;
        for s in 1..=10 {
            call = second(&mut judge, &mut series, &r, t0 + Duration::from_secs(s), s, 25.0);
            seconds = s;
            if matches!(call, Call::Revert { .. }) {
                break;
            }
        }
        let Call::Revert { why, evidence } = call else { panic!("not reverted in 10 s: {call:?}") };
        assert!(seconds <= 5, "took {seconds} s");
        assert!(why.starts_with("error_rate 2.0% → 25%"), "{why}");
        assert!(evidence[0].starts_with("FAIL: error_rate"), "{evidence:?}");
    }

    #[test]
    fn a_healthy_canary_is_promoted_only_after_a_whole_bake() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        for s in 1..=10 {
            let call = second(&mut judge, &mut series, &r, t0 + Duration::from_secs(s), s, 2.0);
            assert_eq!(call, Call::Judge(Judgement::Watching), "second {s}");
        }
        let call = second(&mut judge, &mut series, &r, t0 + Duration::from_secs(11), 11, 2.0);
        assert_eq!(call, Call::Judge(Judgement::Promote));
    }

    #[test]
    fn an_undecided_bake_is_extended_until_the_data_pass_it_up_to_max_bake() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        // A tight pass bound (+40%) that 10 s of a healthy canary cannot rule out, even at the
        // end look (hosts compared with each other, taken to differ by 20%: a 90% bound near
        // +45%), and 60 s can (near +33%).
        let tight = ImmunePlan { pass_bound: 0.4, max_bake: Duration::from_secs(60), ..plan() };
        let held = ImmunePlan { max_bake: Duration::from_secs(10), ..tight.clone() };
        let (mut judge, mut series) = (Judge::default(), Series::default());
        let (mut calls, mut held_calls) = (Vec::new(), Vec::new());
        let mut other = Judge::default();
        for s in 1..=61 {
            feed(&mut series, t0 + Duration::from_secs(s), s, Some((2.0, 100.0)));
            calls.push(judge.judge(&r, Some(&tight), &series, t0 + Duration::from_secs(s)));
            held_calls.push(other.judge(&r, Some(&held), &series, t0 + Duration::from_secs(s)));
        }
        // Without an extension the wave is held at the end of its 10 s bake.
        let Call::Judge(Judgement::Hold { why }) = &held_calls[10] else { panic!("{held_calls:?}") };
        assert!(why.starts_with("error_rate inconclusive"), "{why}");
        // With one, it bakes on and passes by itself at max_bake, where its end look rules out
        // +40 % (the always-valid bound never does: the hosts' assumed 20 % spread, which no bake
        // shrinks, keeps it wider).
        assert_eq!(calls[10], Call::Judge(Judgement::Watching));
        let promoted = calls.iter().position(|c| *c == Call::Judge(Judgement::Promote)).expect("promoted");
        assert_eq!(promoted + 1, 61, "promoted at second {}: {calls:?}", promoted + 1);
    }

    /// At `max_bake` each metric not yet passed takes one fixed-horizon look: a healthy canary
    /// the always-valid rule has not passed yet is promoted, one whose errors are up by the
    /// tolerance is held, and the held wave's outcome stays what that look said however long
    /// the controller keeps asking (it may ask again before its step commits).
    #[test]
    fn at_max_bake_the_end_look_passes_a_healthy_wave_and_holds_one_at_the_tolerance_once() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let plan = ImmunePlan { pass_bound: 0.7, max_bake: Duration::from_secs(12), ..plan() };
        let run = |canary: f64, seconds: u64| {
            let (mut judge, mut series) = (Judge::default(), Series::default());
            let mut calls = Vec::new();
            for s in 1..=seconds {
                let errors = if s <= 13 { canary } else { 2.0 };
                feed(&mut series, t0 + Duration::from_secs(s), s, Some((errors, 100.0)));
                calls.push(judge.judge(&r, Some(&plan), &series, t0 + Duration::from_secs(s)));
            }
            (calls, judge.verdicts(r.id))
        };
        // Data from second 1: max_bake (12 s) is reached at second 13.
        let (healthy, verdicts) = run(2.0, 13);
        assert!(healthy[..12].iter().all(|c| *c == Call::Judge(Judgement::Watching)), "{healthy:?}");
        assert_eq!(healthy[12], Call::Judge(Judgement::Promote), "{verdicts:?}");
        // Without the end look (the always-valid rule alone) the same wave is still undecided.
        let mut alone = Monitor::new(&spec(&plan.metrics[0], MetricKind::Ratio), &settings(&plan), budget(&r, &plan))
            .expect("valid");
        for s in 1..=13 {
            let b: Vec<_> = (2..=4)
                .map(|i| Observation {
                    host: host(i).to_string(),
                    interval: s,
                    sample: Sample::Ratio { num: 2.0, den: 100.0 },
                })
                .collect();
            alone.observe(
                &b,
                &[Observation {
                    host: host(1).to_string(),
                    interval: s,
                    sample: Sample::Ratio { num: 2.0, den: 100.0 },
                }],
            );
        }
        assert_eq!(alone.verdict(true).verdict, Verdict::Inconclusive, "{:?}", alone.verdict(true));

        // Errors up 70 % (the tolerance): held at max_bake, and still held on the same end
        // look's bound after 20 more seconds of a healthy canary (the rates shown move on).
        let (tolerance, verdicts) = run(3.4, 33);
        let end_bound = |c: &Call| match c {
            Call::Judge(Judgement::Hold { why }) => why
                .find("at the end of the bake the ")
                .map(|at| why[at..].split(';').next().unwrap_or_default().to_string()),
            _ => None,
        };
        let first = end_bound(&tolerance[12]).unwrap_or_else(|| panic!("{tolerance:?}"));
        assert!(tolerance[12..].iter().all(|c| end_bound(c).as_ref() == Some(&first)), "{tolerance:?}");
        assert!(verdicts[0].starts_with("inconclusive"), "{verdicts:?}");
    }

    #[test]
    fn a_wave_still_undecided_at_max_bake_is_held_with_what_would_decide_it() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        // A pass bound (+5 %) that a canary of 100 requests a second cannot reach in 30 s.
        let plan = ImmunePlan { pass_bound: 0.05, max_bake: Duration::from_secs(30), ..plan() };
        let (mut judge, mut series) = (Judge::default(), Series::default());
        let mut calls = Vec::new();
        for s in 1..=40 {
            feed(&mut series, t0 + Duration::from_secs(s), s, Some((2.0, 100.0)));
            calls.push(judge.judge(&r, Some(&plan), &series, t0 + Duration::from_secs(s)));
        }
        assert!(calls[..30].iter().all(|c| *c == Call::Judge(Judgement::Watching)), "{calls:?}");
        let Call::Judge(Judgement::Hold { why }) = &calls[30] else { panic!("{calls:?}") };
        assert!(why.contains("still undecided after extending the bake to 30s (immune.max_bake)"), "{why}");
    }

    #[test]
    fn an_unusual_canary_host_is_judged_against_its_own_past() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let plan = ImmunePlan { pass_bound: 0.5, ..plan() };
        // web-1 always fails twice as often as the others (4 % against 2 % of 1,000 requests a
        // second), before and after.
        let report = |release: u64, seq: u64, at: SystemTime, num: f64| MetricsReport {
            release,
            seq,
            at,
            span: Duration::from_secs(1),
            samples: vec![("error_rate".into(), MetricSample::Ratio { num: num * 10.0, den: 1000.0 })],
            error: None,
        };
        let run = |with_history: bool| {
            let (mut judge, mut series) = (Judge::default(), Series::default());
            if with_history {
                for s in 0..60 {
                    let at = t0 - Duration::from_secs(60 - s);
                    for i in 1..=4 {
                        series.push(&host(i), report(1, s + 1, at, if i == 1 { 4.0 } else { 2.0 }), at);
                    }
                }
            }
            let mut calls = vec![judge.judge(&r, Some(&plan), &series, t0)];
            for s in 1..=11 {
                let at = t0 + Duration::from_secs(s);
                for i in 1..=4 {
                    let release = if i == 1 { 2 } else { 1 };
                    series.push(&host(i), report(release, 100 + s, at, if i == 1 { 4.0 } else { 2.0 }), at);
                }
                calls.push(judge.judge(&r, Some(&plan), &series, at));
            }
            calls
        };
        // Against its own past it did not change: the wave passes by itself.
        assert_eq!(run(true)[11], Call::Judge(Judgement::Promote));
        // Against the other hosts alone it looks twice as bad: not a pass.
        let without = run(false);
        assert!(without.iter().all(|c| *c != Call::Judge(Judgement::Promote)), "{without:?}");
    }

    /// A judged wave hands out its baseline hosts' spread sample once, when its call is final,
    /// and a spread learned from earlier waves is what the next wave's tests of that metric use
    /// (the fixed 5% floor stays for a metric with no history).
    #[test]
    fn a_judged_wave_teaches_the_spread_once_and_a_learned_spread_is_used() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let plan = ImmunePlan { pass_bound: 0.5, ..plan() };
        let (mut judge, mut series) = (Judge::default(), Series::default());
        for s in -60..0 {
            unusual_second(&mut series, t0, s);
        }
        let mut call = judge.judge(&r, Some(&plan), &series, t0);
        assert!(judge.spread_samples(&r, &call).is_empty(), "not final yet: {call:?}");
        for s in 1..=11 {
            unusual_second(&mut series, t0, s);
            call = judge.judge(&r, Some(&plan), &series, t0 + Duration::from_secs(s as u64));
        }
        assert_eq!(call, Call::Judge(Judgement::Promote));
        let samples = judge.spread_samples(&r, &call);
        assert_eq!(samples.len(), 1, "{samples:?}");
        assert_eq!((samples[0].metric.as_str(), samples[0].df), ("error_rate", 2.0));
        // Three steady baseline hosts: no spread beyond their sampling noise.
        assert!(samples[0].excess < 0.0 && samples[0].excess > -0.05, "{samples:?}");
        assert!(judge.spread_samples(&r, &call).is_empty(), "handed out once");

        let mut learned = LearnedSpread::default();
        for wave in 0..3 {
            learned.fold(1, wave, &[SpreadSample { metric: "error_rate".into(), excess: 4.0 * 1e-4, df: 4.0 }]);
        }
        let two = ImmunePlan {
            metrics: vec![
                plan.metrics[0].clone(),
                ImmuneMetric { name: "checkout_rate".into(), kind: "ratio".into(), bad_decrease: true },
            ],
            ..plan.clone()
        };
        let mut taught = Judge::default();
        assert!(taught.settings_of(&r, &two).iter().all(|s| s.change_host_spread == 0.05), "no history: the floor");
        taught.learn(&r.repo, learned);
        let settings = taught.settings_of(&r, &two);
        assert!((settings[0].change_host_spread - 0.01).abs() < 1e-12, "{settings:?}");
        assert_eq!(settings[1].change_host_spread, 0.05, "a metric without history keeps the floor");
    }

    /// One second of reports of every host: web-1 (the canary from `t0`, on release 2) always
    /// fails 4 of its 100 requests, the others 2 — an unusual host, healthy against its own past.
    fn unusual_second(series: &mut Series, t0: SystemTime, s: i64) {
        let at = if s < 0 { t0 - Duration::from_secs(s.unsigned_abs()) } else { t0 + Duration::from_secs(s as u64) };
        for i in 1..=4 {
            let release = if i == 1 && s > 0 { 2 } else { 1 };
            let report = MetricsReport {
                release,
                seq: (s + 100) as u64,
                at,
                span: Duration::from_secs(1),
                samples: vec![(
                    "error_rate".into(),
                    MetricSample::Ratio { num: if i == 1 { 40.0 } else { 20.0 }, den: 1000.0 },
                )],
                error: None,
            };
            series.push(&host(i), report, at);
        }
    }

    /// A leader that judges the wave from `t0` with the minute before it, records its evidence
    /// after each look and dies after second `dies`; its last record is the one made after
    /// second `last_record`.
    fn old_leader(r: &Rollout, plan: &ImmunePlan, t0: SystemTime, dies: u64, last_record: u64) -> WaveEvidence {
        let (mut judge, mut series) = (Judge::default(), Series::default());
        for s in -60..=0 {
            unusual_second(&mut series, t0, s);
        }
        judge.judge(r, Some(plan), &series, t0);
        let mut kept = None;
        for s in 1..=dies {
            unusual_second(&mut series, t0, s as i64);
            let at = t0 + Duration::from_secs(s);
            judge.judge(r, Some(plan), &series, at);
            let evidence = judge.evidence_due(r, plan, at).expect("a record after each look");
            // The look at t0, before any data, is a look too.
            assert_eq!(evidence.looks(), s + 1);
            if s == last_record {
                kept = Some(evidence);
            }
        }
        kept.expect("recorded")
    }

    /// The calls and verdicts of a judge that never stopped, seconds 1 to 20.
    fn never_stopped(r: &Rollout, plan: &ImmunePlan, t0: SystemTime) -> Vec<(Call, Vec<String>)> {
        let (mut judge, mut series) = (Judge::default(), Series::default());
        for s in -60..=0 {
            unusual_second(&mut series, t0, s);
        }
        judge.judge(r, Some(plan), &series, t0);
        (1..=20)
            .map(|s| {
                unusual_second(&mut series, t0, s);
                let call = judge.judge(r, Some(plan), &series, t0 + Duration::from_secs(s as u64));
                (call, judge.verdicts(r.id))
            })
            .collect()
    }

    /// A leader dies five seconds into a ten-second bake. The next leader hears only the reports
    /// sent after it took over, and has none of the hour before the wave (reports are soft state).
    /// The canary is an unusual host, healthy against its own past. Before the evidence was
    /// replicated the new leader started the test again: against the other hosts the canary
    /// looked twice as bad, its bake counted again from second 6, and it held the healthy wave
    /// for a person at second 16 where the judge that never stopped promoted it at second 11.
    #[test]
    fn a_new_leader_continues_the_wave_instead_of_restarting_its_test() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let plan = ImmunePlan { pass_bound: 0.5, ..plan() };
        let reference = never_stopped(&r, &plan, t0);
        assert_eq!(reference[10].0, Call::Judge(Judgement::Promote), "{reference:#?}");

        let recorded = old_leader(&r, &plan, t0, 5, 5);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        let mut continued = Vec::new();
        for s in 6..=20 {
            unusual_second(&mut series, t0, s);
            let at = t0 + Duration::from_secs(s as u64);
            if s == 6 {
                assert!(judge.resume(&r, Some(&plan), &recorded, at), "resumed");
            }
            continued.push((judge.judge(&r, Some(&plan), &series, at), judge.verdicts(r.id)));
            if s == 6 {
                assert!(judge.evidence_due(&r, &plan, at).is_none(), "an interval after the takeover");
            }
            if s == 7 {
                // Its own records say a leader continued the test, and go on counting looks.
                let next = judge.evidence_due(&r, &plan, at).expect("a record an interval after the takeover");
                assert_eq!((next.resumes, next.looks(), next.first_data), (1, 8, recorded.first_data));
            }
        }
        assert_eq!(continued[..], reference[5..], "the new leader's calls and verdicts from second 6");
        // A second record changes nothing for a judge that has begun the wave.
        assert!(!judge.resume(&r, Some(&plan), &recorded, t0 + Duration::from_secs(21)));
    }

    /// The new leader may also receive reports the old one had counted (an agent's buffer sent
    /// again) and miss the ones the old one took after its last record: the first are not counted
    /// twice, the second are left out, and the test goes on from the recorded looks.
    #[test]
    fn a_continued_test_counts_no_report_twice_and_skips_what_was_not_recorded() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let plan = ImmunePlan { pass_bound: 0.5, ..plan() };
        let reference = never_stopped(&r, &plan, t0);

        // Every report from second 1 reaches the new leader: the same verdicts as never stopping.
        let recorded = old_leader(&r, &plan, t0, 5, 5);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        for s in 1..=5 {
            unusual_second(&mut series, t0, s);
        }
        let mut continued = Vec::new();
        for s in 6..=20 {
            unusual_second(&mut series, t0, s);
            let at = t0 + Duration::from_secs(s as u64);
            judge.resume(&r, Some(&plan), &recorded, at);
            continued.push((judge.judge(&r, Some(&plan), &series, at), judge.verdicts(r.id)));
        }
        assert_eq!(continued[..], reference[5..]);

        // The old leader's last record is from second 3; seconds 4 and 5 died with it.
        let recorded = old_leader(&r, &plan, t0, 5, 3);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        unusual_second(&mut series, t0, 6);
        let at = t0 + Duration::from_secs(6);
        assert!(judge.resume(&r, Some(&plan), &recorded, at));
        judge.judge(&r, Some(&plan), &series, at);
        let line = &judge.verdicts(r.id)[0];
        assert!(line.contains("canary 1 hosts n=4000; 5 looks"), "{line}");
    }

    #[test]
    fn evidence_is_recorded_once_per_new_look_and_not_over_its_bound() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        // Nothing looked at yet: nothing to record.
        assert!(judge.evidence_due(&r, &plan(), t0).is_none());
        feed(&mut series, t0 + Duration::from_secs(1), 1, Some((2.0, 100.0)));
        judge.judge(&r, Some(&plan()), &series, t0 + Duration::from_secs(1));
        let first = judge.evidence_due(&r, &plan(), t0 + Duration::from_secs(1)).expect("first record");
        assert_eq!((first.rollout, first.wave, first.looks()), (r.id, 0, 1));
        assert_eq!(first.first_data, Some(t0 + Duration::from_secs(1)));
        assert!(first.check().is_ok());
        // No new look: no new record.
        assert!(judge.evidence_due(&r, &plan(), t0 + Duration::from_secs(3)).is_none());
        feed(&mut series, t0 + Duration::from_secs(2), 2, Some((2.0, 100.0)));
        judge.judge(&r, Some(&plan()), &series, t0 + Duration::from_secs(4));
        // A new look, but within an interval of the last record: not yet.
        assert!(judge.evidence_due(&r, &plan(), t0 + Duration::from_millis(1500)).is_none());
        assert_eq!(judge.evidence_due(&r, &plan(), t0 + Duration::from_secs(4)).map(|e| e.looks()), Some(2));

        // A thousand-host wave with a 200-bucket histogram is over the bound: not recorded.
        let bounds: Vec<f64> = (1..=200).map(f64::from).collect();
        let hist = ImmunePlan {
            metrics: vec![ImmuneMetric { name: "latency".into(), kind: "histogram".into(), bad_decrease: false }],
            ..plan()
        };
        let mut big = baking(t0);
        big.hosts = (1..=1000).map(host).collect();
        let (mut judge, mut series) = (Judge::default(), Series::default());
        judge.judge(&big, Some(&hist), &series, t0);
        let at = t0 + Duration::from_secs(1);
        for i in 1..=1000 {
            // Cumulative, the last the +Inf bucket.
            let buckets: Vec<f64> = (1..=201).map(|b| f64::from(b) * 10.0).collect();
            let sample = MetricSample::Histogram { bounds: bounds.clone(), buckets, sum: 1.0, count: 2010.0 };
            let report = MetricsReport {
                release: if i == 1 { 2 } else { 1 },
                seq: 1,
                at,
                span: Duration::from_secs(1),
                samples: vec![("latency".into(), sample)],
                error: None,
            };
            series.push(&host(i), report, at);
        }
        judge.judge(&big, Some(&hist), &series, at);
        assert!(judge.verdicts(big.id)[0].contains("1 looks"), "{:?}", judge.verdicts(big.id));
        assert!(judge.evidence_due(&big, &hist, at).is_none(), "over MAX_EVIDENCE");
    }

    #[test]
    fn no_data_holds_the_wave_instead_of_passing_it() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let (mut judge, series) = (Judge::default(), Series::default());
        assert_eq!(judge.judge(&r, Some(&plan()), &series, t0), Call::Judge(Judgement::Watching));
        let later = t0 + Duration::from_secs(10) * 2 + NO_DATA_GRACE;
        let Call::Judge(Judgement::Hold { why }) = judge.judge(&r, Some(&plan()), &series, later) else {
            panic!("not held")
        };
        assert_eq!(why, "error_rate has no data");
        let unwatched = Rollout { previous: None, ..r };
        assert_eq!(judge.judge(&unwatched, Some(&plan()), &series, later), Call::Judge(Judgement::Off));
    }

    /// One second of reports: 100 requests with 2 errors on each old-release host; the canary
    /// (web-1) reports `canary` (errors, requests), or nothing at all.
    fn feed(series: &mut Series, t: SystemTime, seq: u64, canary: Option<(f64, f64)>) {
        for i in 1..=4 {
            let (release, (num, den)) = match (i, canary) {
                (1, Some(c)) => (2, c),
                (1, None) => continue,
                _ => (1, (2.0, 100.0)),
            };
            let report = MetricsReport {
                release,
                seq,
                at: t,
                span: Duration::from_secs(1),
                samples: vec![("error_rate".into(), MetricSample::Ratio { num, den })],
                error: None,
            };
            series.push(&host(i), report, t);
        }
    }

    #[test]
    fn a_canary_that_stops_serving_is_reverted_after_a_grace_not_held() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        let mut calls = Vec::new();
        for s in 1..=60 {
            // Five healthy seconds, then the canary counts no requests at all.
            let canary = if s <= 5 { (2.0, 100.0) } else { (0.0, 0.0) };
            feed(&mut series, t0 + Duration::from_secs(s), s, Some(canary));
            let call = judge.judge(&r, Some(&plan()), &series, t0 + Duration::from_secs(s));
            let done = matches!(call, Call::Revert { .. });
            calls.push(call);
            if done {
                break;
            }
        }
        // Past the 10 s bake it neither passes nor holds: it waits for the grace (30 s).
        assert!(calls[..34].iter().all(|c| *c == Call::Judge(Judgement::Watching)), "{calls:?}");
        let Some(Call::Revert { why, .. }) = calls.get(34) else { panic!("not reverted at 35 s: {calls:?}") };
        assert_eq!(why, "web-1 on release 2 served no requests for 30s while the hosts on release 1 served");
    }

    #[test]
    fn a_canary_that_never_reports_is_reverted_while_the_old_release_serves() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = baking(t0);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        assert_eq!(judge.judge(&r, Some(&plan()), &series, t0), Call::Judge(Judgement::Watching));
        let mut call = Call::Judge(Judgement::Watching);
        let mut at = 0;
        for s in 1..=60 {
            feed(&mut series, t0 + Duration::from_secs(s), s, None);
            call = judge.judge(&r, Some(&plan()), &series, t0 + Duration::from_secs(s));
            at = s;
            if matches!(call, Call::Revert { .. }) {
                break;
            }
        }
        let Call::Revert { why, .. } = call else { panic!("not reverted: {call:?}") };
        assert_eq!(at, 30, "{why}");
        assert!(why.starts_with("web-1 on release 2 served no requests for 30s"), "{why}");
    }

    /// Reports of every host from `from` for `seconds` seconds at one a second, all on `release`
    /// with `errors` of 100 requests.
    fn history(series: &mut Series, from: SystemTime, seconds: u64, first_seq: u64, release: u64, errors: f64) {
        for s in 0..seconds {
            for i in 1..=4 {
                let at = from + Duration::from_secs(s);
                let report = MetricsReport {
                    release,
                    seq: first_seq + s,
                    at,
                    span: Duration::from_secs(1),
                    samples: vec![("error_rate".into(), MetricSample::Ratio { num: errors, den: 100.0 })],
                    error: None,
                };
                series.push(&host(i), report, at);
            }
        }
    }

    /// The last wave (every host on release 2, baking since `t0`), the rollout started 100 s
    /// before it; the previous release's fleet is compared over the `watch` (10 s) before the
    /// rollout and the earlier waves.
    fn last_wave(t0: SystemTime) -> Rollout {
        let mut r = baking(t0 - Duration::from_secs(100));
        r.wave = 1;
        r.phase_since = t0;
        r
    }

    #[test]
    fn the_last_wave_is_compared_with_the_previous_release_in_the_window_before_the_rollout() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = last_wave(t0);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        // Long before the rollout the old release failed 30 %: outside the window, so ignored (if it
        // counted, the new release's 10 % would look like an improvement).
        history(&mut series, t0 - Duration::from_secs(200), 80, 1, 1, 30.0);
        // The 10 s before the rollout (and its first 100 s, the canary wave): 2 %.
        history(&mut series, t0 - Duration::from_secs(110), 110, 81, 1, 2.0);
        let mut call = judge.judge(&r, Some(&plan()), &series, t0);
        for s in 1..=10 {
            history(&mut series, t0 + Duration::from_secs(s), 1, 1000 + s, 2, 10.0);
            call = judge.judge(&r, Some(&plan()), &series, t0 + Duration::from_secs(s));
            if matches!(call, Call::Revert { .. }) {
                break;
            }
        }
        let Call::Revert { why, evidence } = call else { panic!("not reverted: {call:?}") };
        assert!(why.starts_with("error_rate 2.0% → 10%"), "{why}");
        assert!(evidence[0].contains("baseline 4 hosts"), "{evidence:?}");
    }

    /// A leader that takes over during the last wave never saw the previous release's fleet
    /// (every host already runs the new release): the window it is compared with comes from the
    /// record, and the wave is promoted when the judge that never stopped promotes it.
    #[test]
    fn a_new_leader_continues_the_last_wave_against_the_recorded_window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = last_wave(t0);
        let run = |series: &mut Series, judge: &mut Judge, s: u64| {
            history(series, t0 + Duration::from_secs(s), 1, 1000 + s, 2, 2.0);
            let call = judge.judge(&r, Some(&plan()), series, t0 + Duration::from_secs(s));
            (call, judge.verdicts(r.id))
        };
        let (mut old, mut never_stopped) = (Series::default(), Series::default());
        history(&mut old, t0 - Duration::from_secs(110), 110, 1, 1, 2.0);
        history(&mut never_stopped, t0 - Duration::from_secs(110), 110, 1, 1, 2.0);
        let (mut a, mut c) = (Judge::default(), Judge::default());
        a.judge(&r, Some(&plan()), &old, t0);
        c.judge(&r, Some(&plan()), &never_stopped, t0);
        let mut recorded = None;
        for s in 1..=4 {
            run(&mut old, &mut a, s);
            recorded = a.evidence_due(&r, &plan(), t0 + Duration::from_secs(s)).or(recorded);
        }
        let recorded = recorded.expect("recorded");
        let reference: Vec<_> = (1..=12).map(|s| run(&mut never_stopped, &mut c, s)).collect();
        assert_eq!(reference[10].0, Call::Judge(Judgement::Promote), "{reference:#?}");
        assert!(recorded.metrics[0].test.baseline.len() == 4, "the window's fleet is recorded: {recorded:#?}");

        let (mut b, mut new) = (Judge::default(), Series::default());
        assert!(b.resume(&r, Some(&plan()), &recorded, t0 + Duration::from_secs(5)));
        let continued: Vec<_> = (5..=12).map(|s| run(&mut new, &mut b, s)).collect();
        assert_eq!(continued[..], reference[4..]);
        // Without the record the new leader has nothing to compare with, and holds the wave.
        let (mut restarted, mut new) = (Judge::default(), Series::default());
        let calls: Vec<_> = (5..=40).map(|s| run(&mut new, &mut restarted, s).0).collect();
        assert!(!calls.contains(&Call::Judge(Judgement::Promote)), "{calls:?}");
        assert!(calls.iter().any(|c| matches!(c, Call::Judge(Judgement::Hold { .. }))), "{calls:?}");
    }

    #[test]
    fn a_healthy_last_wave_is_promoted_after_its_watch() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = last_wave(t0);
        let (mut judge, mut series) = (Judge::default(), Series::default());
        history(&mut series, t0 - Duration::from_secs(110), 110, 1, 1, 2.0);
        assert_eq!(judge.judge(&r, Some(&plan()), &series, t0), Call::Judge(Judgement::Watching));
        let mut calls = Vec::new();
        for s in 1..=12 {
            history(&mut series, t0 + Duration::from_secs(s), 1, 1000 + s, 2, 2.0);
            calls.push(judge.judge(&r, Some(&plan()), &series, t0 + Duration::from_secs(s)));
        }
        // Data from second 1: the watch (10 s) is over at second 11.
        assert!(calls[..10].iter().all(|c| *c == Call::Judge(Judgement::Watching)), "{calls:?}");
        assert_eq!(calls[10], Call::Judge(Judgement::Promote), "{:?}", judge.verdicts(r.id));
        assert!(judge.verdicts(r.id)[0].contains("baseline 4 hosts n="), "{:?}", judge.verdicts(r.id));
    }
}
