//! Canary analysis: is the new release worse than the old one on one metric? Pure: observations in,
//! verdicts out; no clock, no I/O, no randomness.
//!
//! A [`Monitor`] holds one metric's evidence for one wave. The caller feeds it each scrape interval's
//! per-host deltas ([`Monitor::observe`], one call = one look) and asks for a [`MetricResult`] at any
//! time ([`Monitor::verdict`]). The model and why it stays valid are in the module doc of
//! [`crate::immune`]; in short:
//!
//! 1. Each host is summarised on a scale where the release effect is a shift: its rate relative to
//!    the pooled rate (ratios), its probability of being slower than the baseline's requests (the
//!    Mann-Whitney AUC, histograms) or its mean relative to the fleet (gauges).
//! 2. The canary-minus-baseline contrast gets a variance with two parts: the sampling noise
//!    (quasi-Poisson with a dispersion estimated from the intervals; the Mann-Whitney variance with
//!    tie correction; the intervals' spread) and a **between-host** spread estimated from how much the
//!    hosts on each side differ beyond their sampling noise (for ratios, at least
//!    `Settings::ratio_host_spread`). The second part is what stops a healthy but unusual canary host
//!    from being reverted; it is estimated from few hosts, so the statistic is referred to Student's t
//!    with Welch-Satterthwaite degrees of freedom. Ratios measure the sampling evidence with the
//!    continuity-corrected root of the Poisson likelihood ratio, calibrated at small counts.
//! 3. That one-sided t is turned into a normal score and into a one-sided normal-mixture likelihood
//!    ratio (mSPRT); the running minimum of its inverse is an always-valid p-value, so looking at every
//!    interval does not inflate false reverts.
//!
//! Invariants: a `Fail` needs the always-valid p-value at or below this monitor's share of alpha AND a
//! relative effect of at least `min_effect` in the bad direction; once failed, a monitor stays failed
//! and keeps the evidence of the failing look. No data, too little data or a host spread that cannot
//! be measured is `Inconclusive`, never `Pass`. A `Pass` needs the data to rule out a regression
//! larger than `pass_bound`: early, at any look, with an observed change below `min_effect` and an
//! always-valid bound at `1 − β/2` (`β = 1 − pass_confidence`); or once, at the end of the bake
//! ([`Monitor::end_look`]), with a fixed-horizon bound at `1 − β_end`, `β_end` chosen with the
//! early pass's correlation ([`end_level`]). Together they pass a regression of `pass_bound` in at
//! most `β` of waves.

use std::collections::BTreeMap;
use std::fmt;

use bincode::{Decode, Encode};

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Which direction of change is a regression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// Larger is worse (error rate, latency, CPU).
    Increase,
    /// Smaller is worse (purchases per request, cache hit rate).
    Decrease,
}

impl Bad {
    /// +1 when an increase is bad, −1 when a decrease is.
    fn sign(self) -> f64 {
        match self {
            Bad::Increase => 1.0,
            Bad::Decrease => -1.0,
        }
    }
}

/// How a metric is reported and therefore tested.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricKind {
    /// A ratio of two counters' deltas (5xx / requests, purchases / requests).
    Ratio,
    /// A Prometheus histogram with these finite, strictly increasing `le` bounds (the `+Inf` bucket is
    /// the count).
    Histogram {
        /// The finite bucket bounds, in the metric's unit (seconds for `*_seconds`).
        bounds: Vec<f64>,
    },
    /// A per-interval value (CPU %, resident memory).
    Gauge,
}

/// One metric the immune system watches.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSpec {
    /// Its name, as shown in verdicts (`error_rate`, `http_request_duration_seconds`).
    pub name: String,
    /// How it is reported.
    pub kind: MetricKind,
    /// Which direction is a regression.
    pub bad: Bad,
}

/// The statistical settings of a rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The false-revert probability the whole rollout may spend, shared by [`Budget`] (e.g. 0.01).
    pub alpha: f64,
    /// Regressions smaller than this relative change are ignored (0.2 = 20 %); a `Fail` needs at least
    /// this much in the bad direction.
    pub min_effect: f64,
    /// A `Pass` needs the data to rule out a regression larger than this relative change.
    pub pass_bound: f64,
    /// The one-sided confidence with which a `Pass` rules out `pass_bound` (e.g. 0.9).
    pub pass_confidence: f64,
    /// Ratios and histograms: fewer than this many denominator events (requests) on either side is
    /// too little data and gives `Inconclusive`.
    pub min_denominator: f64,
    /// The spread (one standard deviation, relative) of the regressions the sequential test is tuned
    /// for. Any value keeps the test valid; it trades early detection of large regressions against
    /// detection of small ones.
    pub mixture_scale: f64,
    /// Ratio metrics: the host-to-host spread (coefficient of variation of healthy hosts' rates) taken
    /// as at least this, whatever the data say. A handful of hosts with a few events each cannot rule
    /// out a large spread, and a quiet-looking baseline would otherwise let an unusual canary host
    /// fail; the spread the data show above it is still estimated and its uncertainty counted.
    pub ratio_host_spread: f64,
    /// Ratio metrics judged against each host's own past ([`Monitor::with_history`]): the spread
    /// of healthy hosts' changes (relative, one standard deviation) taken as at least this. Host
    /// effects cancel in a change, so this is far smaller than `ratio_host_spread`.
    pub change_host_spread: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alpha: 0.01,
            min_effect: 0.2,
            pass_bound: 0.5,
            pass_confidence: 0.9,
            min_denominator: 100.0,
            mixture_scale: 0.5,
            ratio_host_spread: 0.2,
            change_host_spread: 0.05,
        }
    }
}

/// A setting or metric spec that cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SettingsError {
    /// `alpha` must be in (0, 1).
    #[error("alpha must be in (0, 1), got {0}")]
    Alpha(f64),
    /// `min_effect` must be finite and ≥ 0.
    #[error("min_effect must be finite and >= 0, got {0}")]
    MinEffect(f64),
    /// `pass_bound` must be finite and > 0.
    #[error("pass_bound must be finite and > 0, got {0}")]
    PassBound(f64),
    /// `pass_confidence` must be in (0.5, 1).
    #[error("pass_confidence must be in (0.5, 1), got {0}")]
    PassConfidence(f64),
    /// `min_denominator` must be finite and ≥ 0.
    #[error("min_denominator must be finite and >= 0, got {0}")]
    MinDenominator(f64),
    /// `mixture_scale` must be finite and > 0.
    #[error("mixture_scale must be finite and > 0, got {0}")]
    MixtureScale(f64),
    /// `ratio_host_spread` must be finite and ≥ 0.
    #[error("ratio_host_spread must be finite and >= 0, got {0}")]
    RatioHostSpread(f64),
    /// The budget must count at least one metric and one wave.
    #[error("the alpha budget needs at least one metric and one wave")]
    Budget,
    /// A histogram's bounds must be finite and strictly increasing.
    #[error("histogram {0}: bounds must be non-empty, finite and strictly increasing")]
    Bounds(String),
}

impl Settings {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(SettingsError::Alpha(self.alpha));
        }
        if !(self.min_effect.is_finite() && self.min_effect >= 0.0) {
            return Err(SettingsError::MinEffect(self.min_effect));
        }
        if !(self.pass_bound.is_finite() && self.pass_bound > 0.0) {
            return Err(SettingsError::PassBound(self.pass_bound));
        }
        if !(self.pass_confidence > 0.5 && self.pass_confidence < 1.0) {
            return Err(SettingsError::PassConfidence(self.pass_confidence));
        }
        if !(self.min_denominator.is_finite() && self.min_denominator >= 0.0) {
            return Err(SettingsError::MinDenominator(self.min_denominator));
        }
        if !(self.mixture_scale.is_finite() && self.mixture_scale > 0.0) {
            return Err(SettingsError::MixtureScale(self.mixture_scale));
        }
        if !(self.change_host_spread.is_finite() && self.change_host_spread >= 0.0) {
            return Err(SettingsError::RatioHostSpread(self.change_host_spread));
        }
        if !(self.ratio_host_spread.is_finite() && self.ratio_host_spread >= 0.0) {
            return Err(SettingsError::RatioHostSpread(self.ratio_host_spread));
        }
        Ok(())
    }
}

/// How many tests share `Settings::alpha` (Bonferroni): every metric of every wave of one rollout. A
/// rollout that reverts on the first failing metric of any wave then reverts a healthy release with
/// probability at most `alpha`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Metrics watched in each wave.
    pub metrics: usize,
    /// Waves of the rollout that are analysed (including a final comparison against an earlier
    /// window, if the caller runs one).
    pub waves: usize,
}

impl Budget {
    /// The alpha of one metric in one wave.
    pub fn alpha_each(&self, alpha: f64) -> f64 {
        alpha / (self.metrics.max(1) * self.waves.max(1)) as f64
    }
}

/// One host's deltas for one interval, of the metric's kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    /// Numerator and denominator deltas. An absent numerator series (Prometheus does not export a
    /// labelled counter that never moved, e.g. `code="500"` on a healthy host) is `num = 0`.
    Ratio {
        /// Bad (or counted) events, e.g. 5xx responses.
        num: f64,
        /// All events, e.g. requests.
        den: f64,
    },
    /// Histogram deltas: `buckets[i]` counts observations `<= bounds[i]` (cumulative, as Prometheus
    /// gives them; a trailing `+Inf` bucket may be included), plus the `_sum` and `_count` deltas.
    Histogram {
        /// Cumulative bucket deltas.
        buckets: Vec<f64>,
        /// `_sum` delta.
        sum: f64,
        /// `_count` delta.
        count: f64,
    },
    /// The gauge's value over the interval.
    Gauge(f64),
}

/// One host's observation for one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The host.
    pub host: String,
    /// The interval's sequence number; a host's repeated or older interval is ignored (a retried
    /// report must not count twice).
    pub interval: u64,
    /// The deltas.
    pub sample: Sample,
}

/// A metric's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The observed change is below `min_effect` and the data rule out a regression larger than
    /// `pass_bound`.
    Pass,
    /// A significant regression of at least `min_effect`: revert.
    Fail,
    /// Neither: too little data, or not precise enough to pass. At the end of the bake a person decides.
    Inconclusive,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// What a verdict rests on.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    /// The baseline's value: pooled rate, median of the histogram (interpolated within its bucket),
    /// mean gauge value.
    pub baseline: f64,
    /// The canary's value, on the same scale.
    pub canary: f64,
    /// Relative change, canary / baseline − 1 (signed; `+inf` when the baseline is zero and the canary
    /// is not).
    pub effect: f64,
    /// The one-sided statistic in the bad direction (Student's t with `df` degrees of freedom).
    pub statistic: f64,
    /// Its degrees of freedom (Welch-Satterthwaite; infinite when every variance part is known).
    pub df: f64,
    /// The always-valid p-value: the smallest over all looks so far. Compare with `alpha`.
    pub p_value: f64,
    /// This monitor's share of the rollout's alpha.
    pub alpha: f64,
    /// The upper confidence bound of the relative effect in the bad direction, when it can be
    /// computed: after the end look ([`Monitor::end_look`]), that look's fixed-horizon bound at
    /// `1 − β_end` ([`end_level`]); before it, the always-valid one at `1 − β/2`
    /// (`β = 1 − pass_confidence`),
    /// bound at this look, given only by a final look's verdict (`verdict(true)`), as it takes a
    /// root search.
    pub bad_effect_upper: Option<f64>,
    /// The always-valid p-value of "the regression is at least `pass_bound`": the smallest over
    /// all looks so far. An early `Pass` needs it at or below `β/2`, `β = 1 − pass_confidence`.
    pub pass_p_value: f64,
    /// Baseline sample size: requests (ratio), observations (histogram) or host-intervals (gauge).
    pub baseline_n: u64,
    /// Canary sample size, as `baseline_n`.
    pub canary_n: u64,
    /// Baseline hosts with data.
    pub baseline_hosts: usize,
    /// Canary hosts with data.
    pub canary_hosts: usize,
    /// Looks (calls to `observe`) so far.
    pub looks: u64,
    /// Why the verdict is what it is, when that is not obvious (too little data, assumptions made).
    pub note: Option<String>,
}

/// One metric's verdict with its evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricResult {
    /// The metric's name.
    pub metric: String,
    /// How its values are shown.
    kind: ShownAs,
    /// Whether the values are a histogram's medians.
    histogram: bool,
    /// The verdict.
    pub verdict: Verdict,
    /// What it rests on.
    pub evidence: Evidence,
    /// Whether this is the verdict at the end of the bake.
    pub final_look: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ShownAs {
    Percent,
    Seconds,
    Plain,
}

impl MetricResult {
    /// Whether the caller must hold the wave for a person: inconclusive at the end of the bake.
    pub fn holds_wave(&self) -> bool {
        self.final_look && self.verdict == Verdict::Inconclusive
    }

    /// Whether more data may still decide this metric: it is passed, or undecided with data on
    /// both sides and a host spread it can measure (a wave's bake is extended only then).
    pub fn more_data_can_decide(&self) -> bool {
        let e = &self.evidence;
        self.verdict == Verdict::Pass
            || (self.verdict == Verdict::Inconclusive
                && e.canary_n > 0
                && e.baseline_n > 0
                && !e.note.as_deref().is_some_and(|n| n.contains("not measurable")))
    }

    /// One line for a gate or incident reason, e.g. `error_rate 0.41% → 3.9% (+850%, p=2.1e-05)`.
    pub fn summary(&self) -> String {
        let e = &self.evidence;
        let shown = |v: f64| match self.kind {
            ShownAs::Percent => format!("{}%", sig(v * 100.0, 2)),
            ShownAs::Seconds if v.abs() < 1.0 => format!("{}ms", sig(v * 1000.0, 3)),
            ShownAs::Seconds => format!("{}s", sig(v, 3)),
            ShownAs::Plain => sig(v, 3),
        };
        let effect = if e.effect.is_infinite() {
            "new".to_string()
        } else if e.effect.is_nan() {
            "n/a".to_string()
        } else {
            let pct = sig(e.effect * 100.0, 2);
            if e.effect >= 0.0 {
                format!("+{pct}%")
            } else {
                format!("{pct}%")
            }
        };
        // A histogram is judged on its requests' ranks, so it is shown by its median, not its
        // mean, and its change is the one the ranks give (every request scaled by the same factor).
        let (what, how) = if self.histogram { (" median", " by rank") } else { ("", "") };
        let mut line = format!(
            "{}{what} {} → {} ({}{how}, p={})",
            self.metric,
            shown(e.baseline),
            shown(e.canary),
            effect,
            sig(e.p_value, 2)
        );
        if self.verdict == Verdict::Inconclusive {
            if let Some(note) = &e.note {
                line.push_str(": ");
                line.push_str(note);
            }
        }
        line
    }
}

impl fmt::Display for MetricResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.verdict, self.summary())
    }
}

/// What the caller does with a wave, given every metric's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaveAction {
    /// A metric failed: revert the release.
    Revert,
    /// Mid-bake and nothing failed: keep baking.
    KeepBaking,
    /// End of the bake and some metric is inconclusive: hold the wave for a person.
    Hold,
    /// End of the bake and every metric passed: go on to the next wave.
    Promote,
}

/// Decides a wave from its metrics' results: any `Fail` reverts; at the end of the bake every metric
/// must `Pass` to promote, else the wave is held. An empty list holds (no evidence is not a pass).
pub fn decide_wave(results: &[MetricResult], final_look: bool) -> WaveAction {
    if results.iter().any(|r| r.verdict == Verdict::Fail) {
        WaveAction::Revert
    } else if !final_look {
        WaveAction::KeepBaking
    } else if !results.is_empty() && results.iter().all(|r| r.verdict == Verdict::Pass) {
        WaveAction::Promote
    } else {
        WaveAction::Hold
    }
}

/// The sequential state of one metric over one wave: feed it each interval's observations, ask for a
/// verdict at any time.
#[derive(Clone, Debug)]
pub struct Monitor {
    spec: MetricSpec,
    settings: Settings,
    alpha: f64,
    baseline: Side,
    canary: Side,
    looks: u64,
    min_p: f64,
    /// The largest ln Λ so far of the pass test (evidence against a regression of `pass_bound`),
    /// over the looks whose evidence is kept ([`Stat::pass_kept`]).
    best_pass: f64,
    /// The one fixed-horizon look at the end of the bake's extension, once taken
    /// ([`Monitor::end_look`]); frozen from then on.
    end: Option<EndLook>,
    last: Option<Look>,
    failed: Option<MetricResult>,
    /// Each host's data from before the wave, on the old release.
    before: Side,
    rejected: u64,
}

impl Monitor {
    /// A monitor for `spec` in a rollout whose alpha is shared by `budget`.
    pub fn new(spec: &MetricSpec, settings: &Settings, budget: Budget) -> Result<Self, SettingsError> {
        settings.validate()?;
        if budget.metrics == 0 || budget.waves == 0 {
            return Err(SettingsError::Budget);
        }
        if let MetricKind::Histogram { bounds } = &spec.kind {
            let increasing = bounds.windows(2).all(|w| w[0] < w[1]);
            if bounds.is_empty() || !increasing || bounds.iter().any(|b| !b.is_finite()) {
                return Err(SettingsError::Bounds(spec.name.clone()));
            }
        }
        Ok(Monitor {
            spec: spec.clone(),
            settings: settings.clone(),
            alpha: budget.alpha_each(settings.alpha),
            baseline: Side::default(),
            canary: Side::default(),
            looks: 0,
            min_p: 1.0,
            best_pass: f64::NEG_INFINITY,
            end: None,
            last: None,
            failed: None,
            before: Side::default(),
            rejected: 0,
        })
    }

    /// A monitor for the last wave, when every host runs the new release and no baseline is left: the
    /// baseline is the previous release's fleet in an earlier window (`earlier`), loaded here without
    /// counting a look; then call `observe(&[], canary)` each interval.
    ///
    /// Assumption: the metric does not move between that window and the bake for reasons other than
    /// the release (no deploy of a dependency, no traffic-mix change, no daily cycle). Unlike the
    /// in-wave comparison, common drift does not cancel here, so choose a window just before the
    /// rollout and of about the bake's length.
    pub fn against_window(
        spec: &MetricSpec,
        settings: &Settings,
        budget: Budget,
        earlier: &[Observation],
    ) -> Result<Self, SettingsError> {
        let mut monitor = Monitor::new(spec, settings, budget)?;
        for o in earlier {
            monitor.ingest(o, true);
        }
        Ok(monitor)
    }

    /// Adds one interval's observations (baseline hosts on the old release, canary hosts on the new
    /// one, over the same interval) and takes one look. Malformed observations (wrong kind, negative
    /// or non-finite values, bucket counts that go down) are dropped and counted in the note.
    pub fn observe(&mut self, baseline: &[Observation], canary: &[Observation]) {
        for o in baseline {
            self.ingest(o, true);
        }
        for o in canary {
            self.ingest(o, false);
        }
        self.looks += 1;
        let look = self.look();
        if let Some(stat) = &look.stat {
            self.min_p = self.min_p.min(stat.p_now);
            if let Some(bound) = stat.bound.as_ref().filter(|_| stat.pass_kept) {
                self.best_pass = self.best_pass.max(bound.pass_log_lr(self.settings.pass_bound));
            }
        }
        self.last = Some(look);
        if self.failed.is_none() {
            let result = self.result(false);
            if result.verdict == Verdict::Fail {
                self.failed = Some(result);
            }
        }
    }

    /// The verdict now; `final_look` says the bake has ended (an `Inconclusive` then holds the wave).
    pub fn verdict(&self, final_look: bool) -> MetricResult {
        match &self.failed {
            Some(failed) => MetricResult { final_look, ..failed.clone() },
            None => self.result(final_look),
        }
    }

    /// The one fixed-horizon look at the end of the bake's extension (when `max_bake` is reached,
    /// or when the wave cannot be baked any longer), then the verdict. The metric passes if the
    /// `1 − β_end` upper confidence bound of this look alone (the same estimate and variance as
    /// the sequential test, the spread floor included, Student's t on its degrees of freedom) is
    /// at or below `pass_bound`, whatever the change observed below it. `β_end` is what the
    /// early, always-valid pass (at `β/2`, `β = 1 − pass_confidence`) leaves of `β` given how the
    /// two are correlated ([`end_level`]): a regression of `pass_bound` passes one way or the
    /// other in at most `β` of waves.
    ///
    /// Taken once: a second call (or a later `observe`) changes nothing about it, so the caller
    /// cannot look again at the end with more data. A failed test stays failed.
    pub fn end_look(&mut self) -> MetricResult {
        if self.end.is_none() && self.failed.is_none() {
            let beta = 1.0 - self.settings.pass_confidence;
            let bound = self.last.as_ref().and_then(|l| l.stat.as_ref()).and_then(|s| s.bound.as_ref());
            let level = bound.map_or(beta / 2.0, |b| end_level(beta, b.end_ratio(self.settings.pass_bound)));
            let confidence = 1.0 - level;
            let upper = bound.map(|b| b.fixed_upper(confidence));
            let passed = upper.is_some_and(|u| u <= self.settings.pass_bound);
            self.end = Some(EndLook { upper, passed, confidence });
        }
        self.verdict(true)
    }

    /// Whether [`Monitor::end_look`] has been taken.
    pub fn ended(&self) -> bool {
        self.end.is_some()
    }

    /// The always-valid p-value so far (1 before any usable look).
    pub fn p_value(&self) -> f64 {
        self.min_p
    }

    /// Looks taken so far (recorded ones included, after [`Monitor::resume`]).
    pub fn looks(&self) -> u64 {
        self.looks
    }

    /// Loads each host's data from before the wave (on the old release, e.g. its last ten
    /// minutes), without counting a look. A ratio is then judged on each host's change against its
    /// own past, the canary hosts' changes against the baseline hosts' over the same intervals
    /// (difference in differences): a host's persistent effect (hardware, neighbours, traffic mix)
    /// cancels, so an unusual canary host is neither reverted for being unusual nor keeps a wave
    /// from passing. A look falls back to comparing hosts with each other while any host lacks
    /// `min_denominator` requests of history, or has so few events in it that its past is noisier
    /// than the host spread it would replace (fewer than about 26 at the default spreads).
    pub fn with_history(&mut self, before: &[Observation]) {
        for o in before {
            let Some(delta) = Delta::parse(&self.spec.kind, &o.sample) else { continue };
            let host = self.before.hosts.entry(o.host.clone()).or_default();
            if host.last_interval.is_none_or(|last| o.interval > last) {
                host.last_interval = Some(o.interval);
                host.add(&delta);
            }
        }
    }

    /// What this wave says about the spread of healthy hosts' changes, for the pool the judge
    /// learns it from ([`super::spread`]): the baseline hosts' log changes against their own
    /// past (old release before and during the wave, so healthy whatever the canary did), as
    /// `Σ (y − ȳ)² − (1 − 1/k) Σ v` with Poisson variances `v = 1/(n + ½) + 1/(n_past + ½)`
    /// (overdispersion left in the excess errs towards a larger spread) and `k − 1` degrees of
    /// freedom. None unless this is a ratio judged against each host's past with two or more
    /// baseline hosts whose past is informative.
    pub fn spread_sample(&self) -> Option<super::spread::SpreadSample> {
        if !matches!(self.spec.kind, MetricKind::Ratio) {
            return None;
        }
        let min = self.settings.min_denominator.max(f64::MIN_POSITIVE);
        let changes: Vec<(f64, f64)> = self
            .baseline
            .active()
            .iter()
            .filter(|h| h.den >= min)
            .filter_map(|h| {
                let past = self.before.hosts.get(&h.name)?;
                if past.den < min || !self.past_is_informative(past.num) {
                    return None;
                }
                let y = ((h.num + 0.5) / h.den).ln() - ((past.num + 0.5) / past.den).ln();
                Some((y, 1.0 / (h.num + 0.5) + 1.0 / (past.num + 0.5)))
            })
            .collect();
        let k = changes.len() as f64;
        if changes.len() < 2 {
            return None;
        }
        let mean = changes.iter().map(|(y, _)| y).sum::<f64>() / k;
        let squares = changes.iter().map(|(y, _)| (y - mean) * (y - mean)).sum::<f64>();
        let noise = (1.0 - 1.0 / k) * changes.iter().map(|(_, v)| v).sum::<f64>();
        Some(super::spread::SpreadSample { metric: self.spec.name.clone(), excess: squares - noise, df: k - 1.0 })
    }

    /// What this monitor's sequential test has accumulated, enough for [`Monitor::resume`] to go
    /// on from it (all but the end look's outcome, which ends the wave's bake; see
    /// [`Monitor::end_look`]): every host's running totals on each side (and before the wave), the looks, the
    /// running minimum p-value. Every field that carries from one look to the next is here; the
    /// rest of a monitor is recomputed from it.
    pub fn state(&self) -> TestState {
        // Keyed by the map's name: the hosts before the wave are not named in their records.
        let totals = |side: &Side| side.hosts.iter().map(|(name, h)| h.totals(name)).collect();
        TestState {
            looks: self.looks,
            min_p: self.min_p,
            best_pass: self.best_pass,
            alpha: self.alpha,
            rejected: self.rejected,
            baseline: totals(&self.baseline),
            canary: totals(&self.canary),
            before: totals(&self.before),
        }
    }

    /// A monitor that goes on from `state` (recorded by another monitor of the same spec, settings
    /// and budget) as if it had taken those looks itself: the next `observe` is look
    /// `state.looks + 1`, a host's interval at or below the last one recorded is not counted
    /// again, and the p-value stays the minimum over every look, recorded or new.
    ///
    /// Why this keeps alpha: the statistic of a look is a function of the hosts' running totals
    /// alone, so the resumed monitor computes at each later look exactly what the one that
    /// recorded `state` would have computed on the same observations. The looks before and after
    /// the resume are one sequence of one test, checked against one share of alpha, not two
    /// tests each with its own. Intervals the recording monitor took after its last record and
    /// that never reach this one are left out, never counted twice; which ones are left out
    /// depends on when a leader died, not on their values, so the likelihood ratio over the
    /// intervals that are counted is still a martingale without a regression.
    ///
    /// A recorded test that had failed is failed again if its latest look still fails (with that
    /// look's evidence); the judge reverts at the look that fails and records no failed test.
    pub fn resume(
        spec: &MetricSpec,
        settings: &Settings,
        budget: Budget,
        state: &TestState,
    ) -> Result<Self, ResumeError> {
        let mut monitor = Monitor::new(spec, settings, budget).map_err(ResumeError::Settings)?;
        let buckets = match &spec.kind {
            MetricKind::Histogram { bounds } => bounds.len() + 1,
            _ => 0,
        };
        state.check(buckets)?;
        if state.alpha != monitor.alpha {
            // Another budget or alpha: another test, which this one cannot continue.
            return Err(ResumeError::State(format!(
                "recorded with alpha {} where this test has {}",
                state.alpha, monitor.alpha
            )));
        }
        let side =
            |hosts: &[HostTotals]| Side { hosts: hosts.iter().map(|h| (h.host.clone(), Host::from(h))).collect() };
        monitor.looks = state.looks;
        monitor.min_p = state.min_p;
        monitor.best_pass = state.best_pass;
        monitor.rejected = state.rejected;
        monitor.baseline = side(&state.baseline);
        monitor.canary = side(&state.canary);
        monitor.before = side(&state.before);
        if state.looks > 0 {
            // The last recorded look, recomputed from the same totals (not a new look).
            monitor.last = Some(monitor.look());
            let result = monitor.result(false);
            if result.verdict == Verdict::Fail {
                monitor.failed = Some(result);
            }
        }
        Ok(monitor)
    }

    fn ingest(&mut self, o: &Observation, baseline: bool) {
        let Some(delta) = Delta::parse(&self.spec.kind, &o.sample) else {
            self.rejected += 1;
            return;
        };
        let side = if baseline { &mut self.baseline } else { &mut self.canary };
        let host = side.hosts.entry(o.host.clone()).or_insert_with(|| Host { name: o.host.clone(), ..Host::default() });
        if host.last_interval.is_some_and(|last| o.interval <= last) {
            return;
        }
        host.last_interval = Some(o.interval);
        host.add(&delta);
    }

    fn result(&self, final_look: bool) -> MetricResult {
        let shown = match self.spec.kind {
            MetricKind::Ratio => ShownAs::Percent,
            MetricKind::Histogram { .. } if self.spec.name.ends_with("_seconds") => ShownAs::Seconds,
            _ => ShownAs::Plain,
        };
        let look = self.last.clone().unwrap_or_else(|| Look::insufficient("no data yet".into()));
        let mut notes: Vec<String> = Vec::new();
        let beta = 1.0 - self.settings.pass_confidence;
        // After the end look, its fixed-horizon bound; before it, the always-valid bound at the
        // early pass's 1 − β/2, which takes a root search: only a final look shows it.
        let upper = match &self.end {
            Some(end) => end.upper,
            None => look
                .stat
                .as_ref()
                .and_then(|s| s.bound.as_ref())
                .filter(|_| final_look)
                .map(|b| b.upper(1.0 - beta / 2.0)),
        };
        let sign = self.spec.bad.sign();
        // The pass evidence: the kept looks' best, and the current look's own while it lasts.
        let pass_evidence = look
            .stat
            .as_ref()
            .filter(|s| !s.pass_kept)
            .and_then(|s| s.bound.as_ref())
            .map_or(self.best_pass, |b| self.best_pass.max(b.pass_log_lr(self.settings.pass_bound)));
        let verdict = match &look.stat {
            None => Verdict::Inconclusive,
            Some(stat) => {
                let significant = self.min_p <= self.alpha;
                if significant && look.bad_effect >= self.settings.min_effect {
                    Verdict::Fail
                } else if self.end.as_ref().is_some_and(|e| e.passed) {
                    // The end look ruled out `pass_bound` at 1 − β_end: within the tolerance the
                    // user set, whatever the change observed below it.
                    Verdict::Pass
                } else if let Some(end) = &self.end {
                    notes.push(match end.upper {
                        Some(u) => format!(
                            "at the end of the bake the {}% bound, {}, does not rule out a regression of {}",
                            plain(end.confidence * 100.0),
                            signed_pct(u * sign),
                            signed_pct(self.settings.pass_bound * sign)
                        ),
                        None => "the size of the regression cannot be bounded".into(),
                    });
                    Verdict::Inconclusive
                } else if look.bad_effect >= self.settings.min_effect {
                    notes.push(format!(
                        "a change of {} but not significant (p {} > {})",
                        signed_pct(look.bad_effect * self.spec.bad.sign()),
                        sig(self.min_p, 2),
                        sig(self.alpha, 2)
                    ));
                    Verdict::Inconclusive
                } else if stat.bound.is_none() {
                    notes.push("the size of the regression cannot be bounded".into());
                    Verdict::Inconclusive
                } else if pass_evidence >= (2.0 / beta).ln() {
                    // Some look's always-valid bound ruled out `pass_bound`: a regression that
                    // large passes this way at most `β/2` of the time, however often and however
                    // long the wave is looked at (the end look spends what is left, `end_level`).
                    Verdict::Pass
                } else {
                    let ruled_out = match upper {
                        Some(u) => format!("cannot yet rule out a regression of {}", signed_pct(u * sign)),
                        None => format!(
                            "cannot yet rule out a regression of {}",
                            signed_pct(self.settings.pass_bound * sign)
                        ),
                    };
                    notes.push(format!(
                        "{ruled_out} (an early pass rules out {} with {}% confidence, valid at any look; at \
                         max_bake one fixed-horizon look decides)",
                        signed_pct(self.settings.pass_bound * sign),
                        plain((1.0 - beta / 2.0) * 100.0)
                    ));
                    Verdict::Inconclusive
                }
            }
        };
        if let Some(note) = &look.note {
            notes.insert(0, note.clone());
        }
        if self.rejected > 0 {
            notes.push(format!("{} malformed observations dropped", self.rejected));
        }
        // What happens next, as it will happen: before its end look an undecided metric is baked
        // on (up to `max_bake`) and then looked at once more, which may still pass it; only an
        // end look that does not pass holds the wave for a person.
        if final_look && verdict == Verdict::Inconclusive {
            notes.push(if self.end.is_some() {
                "end of bake: hold the wave for a person (`fifty immune size` tells what bake or canaries would decide)"
                    .into()
            } else {
                "undecided at the end of the bake: baking on while more data can decide, up to max_bake, where one last \
                 look passes the wave or holds it for a person"
                    .into()
            });
        }
        let stat = look.stat.as_ref();
        MetricResult {
            metric: self.spec.name.clone(),
            kind: shown,
            histogram: matches!(self.spec.kind, MetricKind::Histogram { .. }),
            verdict,
            evidence: Evidence {
                baseline: look.baseline,
                canary: look.canary,
                effect: look.effect,
                statistic: stat.map_or(f64::NAN, |s| s.t),
                df: stat.map_or(f64::NAN, |s| s.df),
                p_value: self.min_p,
                alpha: self.alpha,
                bad_effect_upper: upper,
                pass_p_value: (-pass_evidence).exp().min(1.0),
                baseline_n: look.baseline_n.round() as u64,
                canary_n: look.canary_n.round() as u64,
                baseline_hosts: look.baseline_hosts,
                canary_hosts: look.canary_hosts,
                looks: self.looks,
                note: if notes.is_empty() { None } else { Some(notes.join("; ")) },
            },
            final_look,
        }
    }

    fn look(&self) -> Look {
        let base = self.baseline.active();
        let can = self.canary.active();
        let mut look = match &self.spec.kind {
            MetricKind::Ratio => self.ratio_look(&base, &can),
            MetricKind::Histogram { bounds } => self.histogram_look(&base, &can, bounds),
            MetricKind::Gauge => self.gauge_look(&base, &can),
        };
        look.baseline_hosts = base.len();
        look.canary_hosts = can.len();
        look
    }

    /// Ratio: quasi-Poisson counts with a between-host spread (see the module doc of `immune`).
    fn ratio_look(&self, base: &[&Host], can: &[&Host]) -> Look {
        let totals = |hosts: &[&Host]| hosts.iter().fold((0.0, 0.0), |(n, d), h| (n + h.num, d + h.den));
        let (nb, db) = totals(base);
        let (nc, dc) = totals(can);
        let mut look = Look::insufficient(String::new());
        look.baseline_n = db;
        look.canary_n = dc;
        look.baseline = if db > 0.0 { nb / db } else { f64::NAN };
        look.canary = if dc > 0.0 { nc / dc } else { f64::NAN };
        let min = self.settings.min_denominator;
        if base.is_empty() || can.is_empty() || db < min.max(f64::MIN_POSITIVE) || dc < min.max(f64::MIN_POSITIVE) {
            look.note = Some(too_little(base.len(), can.len(), db, dc, min, "events in the denominator"));
            return look;
        }
        let (rb, rc) = (nb / db, nc / dc);
        look.effect = relative(rc, rb);
        look.bad_effect = bad_relative(rc, rb, self.spec.bad);
        look.note = None;
        if nb + nc <= 0.0 {
            // Nothing counted anywhere: no regression to see, and a zero rate cannot grow unseen.
            // It passes while it lasts (a metric that never counts anything passes at the end of
            // the bake), but its pass is not kept: a few seconds without an event say nothing
            // about a regression of `pass_bound`, and at 20 req/s and 0.5% errors the first
            // usable look of a 4 + 2 wave counts nothing in about 4% of waves.
            let bound = Bound { bad_delta: 0.0, sd: 0.0, df: f64::INFINITY, scale: Scale::Linear(1.0) };
            look.stat = Some(Stat { t: 0.0, df: f64::INFINITY, p_now: 1.0, bound: Some(bound), pass_kept: false });
            look.note = Some("no events on either side".into());
            return look;
        }
        let p0 = (nb + nc) / (db + dc);
        // Between-interval dispersion (Pearson, each host around its own rate), at least Poisson.
        let (mut pearson, mut pearson_df) = (0.0, 0.0);
        for h in base.iter().chain(can.iter()) {
            if h.num > 0.0 && h.intervals >= 2 {
                let r = h.num / h.den;
                pearson += ((h.num_sq_over_den - h.num * h.num / h.den) / r).max(0.0);
                pearson_df += (h.intervals - 1) as f64;
            }
        }
        let phi_hat = if pearson_df > 0.0 { pearson / pearson_df } else { 1.0 };
        let (phi, phi_df) = if phi_hat > 1.0 { (phi_hat, pearson_df) } else { (1.0, f64::INFINITY) };
        let units = |hosts: &[&Host], rate: f64| -> Vec<Unit> {
            hosts
                .iter()
                .map(|h| Unit {
                    x: h.num / h.den / p0,
                    v_null: phi / (h.den * p0),
                    v_own: phi * rate / (h.den * p0 * p0),
                    w: h.den,
                })
                .collect()
        };
        if let Some(did) = self.ratio_change_look(base, can, phi, phi_df, look.clone()) {
            return did;
        }
        let c =
            Contrast::estimate(&units(can, rc), &units(base, rb), Spread::Relative, self.settings.ratio_host_spread);
        // The sampling part is tested with the signed root of the Poisson likelihood ratio (continuity
        // corrected), which keeps its tail at small counts where the score z's normal tail is far too
        // thin; the host spread then shrinks it as it would shrink Δ/√B to Δ/√(A + B).
        let z_sampling = signed_root_lr(nc, dc, nb, db) / phi.sqrt();
        let shrink = (c.null.sampling / c.null.total()).sqrt();
        let mut stat =
            self.score(self.spec.bad.sign() * z_sampling * shrink, &c.null, phi_df, self.settings.mixture_scale);
        // The pass test's scale: x is relative to p0, the effect to rb.
        stat.bound = (rb > 0.0).then(|| Bound {
            bad_delta: self.spec.bad.sign() * c.delta,
            sd: c.own.total().sqrt(),
            df: c.own.df(phi_df),
            scale: Scale::Linear(p0 / rb),
        });
        if !c.measured {
            look.note = Some(format!(
                "host-to-host spread not measurable (one host per side): assumed {}",
                signed_pct(self.settings.ratio_host_spread).trim_start_matches('+')
            ));
        }
        look.stat = Some(stat);
        look
    }

    /// Whether a host's past window, with `events` counted, makes its change a better measure
    /// than comparing hosts: the past's own noise (`1/(events + ½)`) plus the spread of changes
    /// must stay below the host spread it replaces. A short or quiet past (a host that just
    /// joined, a release that just rolled out) would otherwise put a floor under the change's
    /// variance that no bake lowers, and a pass could never rule out `pass_bound`.
    fn past_is_informative(&self, events: f64) -> bool {
        let s = &self.settings;
        1.0 / (events + 0.5) + s.change_host_spread * s.change_host_spread < s.ratio_host_spread * s.ratio_host_spread
    }

    /// Ratio, each host against its own past: `y = ln(rate now / rate before)` per host (half an
    /// event added to each count), with quasi-Poisson variance `φ/(n + ½)` per window; the
    /// canary hosts' mean change minus the baseline hosts', with a between-host spread of changes
    /// of at least `change_host_spread`. None when a host lacks history.
    fn ratio_change_look(&self, base: &[&Host], can: &[&Host], phi: f64, phi_df: f64, mut look: Look) -> Option<Look> {
        let min = self.settings.min_denominator.max(f64::MIN_POSITIVE);
        let units = |hosts: &[&Host]| -> Option<Vec<Unit>> {
            hosts
                .iter()
                .map(|h| {
                    let past = self.before.hosts.get(&h.name)?;
                    if past.den < min || !self.past_is_informative(past.num) {
                        return None;
                    }
                    let x = ((h.num + 0.5) / h.den).ln() - ((past.num + 0.5) / past.den).ln();
                    let v = phi / (h.num + 0.5) + phi / (past.num + 0.5);
                    Some(Unit { x, v_null: v, v_own: v, w: 1.0 })
                })
                .collect()
        };
        let (cu, bu) = (units(can)?, units(base)?);
        let c = Contrast::estimate(&cu, &bu, Spread::Absolute, self.settings.change_host_spread);
        let sign = self.spec.bad.sign();
        let relative = |log_change: f64| log_change.exp() - 1.0;
        look.effect = relative(c.delta);
        look.bad_effect = sign * relative(c.delta);
        let mut stat = self.sequential(sign * c.delta, &c.null, phi_df, self.settings.mixture_scale);
        stat.bound = Some(Bound {
            bad_delta: sign * c.delta,
            sd: c.own.total().sqrt(),
            df: c.own.df(phi_df),
            scale: Scale::LogChange(sign),
        });
        look.stat = Some(stat);
        look.note = Some("each host against its own past".into());
        Some(look)
    }

    /// Histogram: each host's Mann-Whitney AUC against the baseline's requests, with a between-host
    /// spread. The effect that gates a `Fail` and that a `Pass` bounds is the change of the median
    /// (from the buckets, as `histogram_quantile` interpolates it), a quantity the rank test
    /// measures; the mean would need `_sum`, which not every service exports, and can move while
    /// the ranks do not (or the other way round).
    fn histogram_look(&self, base: &[&Host], can: &[&Host], bounds: &[f64]) -> Look {
        let count = |hosts: &[&Host]| hosts.iter().map(|h| h.den).sum::<f64>();
        let pooled_of = |hosts: &[&Host]| -> Vec<f64> {
            let mut pooled = vec![0.0; bounds.len() + 1];
            for h in hosts {
                for (p, c) in pooled.iter_mut().zip(&h.buckets) {
                    *p += c;
                }
            }
            pooled
        };
        let (cb, cc) = (count(base), count(can));
        let mut look = Look::insufficient(String::new());
        look.baseline_n = cb;
        look.canary_n = cc;
        look.baseline = if cb > 0.0 { bucket_quantile(&pooled_of(base), bounds, 0.5) } else { f64::NAN };
        look.canary = if cc > 0.0 { bucket_quantile(&pooled_of(can), bounds, 0.5) } else { f64::NAN };
        let min = self.settings.min_denominator.max(1.0);
        if base.is_empty() || can.is_empty() || cb < min || cc < min {
            look.note = Some(too_little(base.len(), can.len(), cb, cc, min, "observations"));
            return look;
        }
        look.effect = relative(look.canary, look.baseline);
        look.bad_effect = bad_relative(look.canary, look.baseline, self.spec.bad);
        let pooled = pooled_of(base);
        let auc_unit = |h: &Host, reference: &[f64]| -> Unit {
            let (auc, var) = mann_whitney_auc(&h.buckets, reference);
            Unit { x: auc, v_null: var, v_own: var, w: 1.0 }
        };
        let can_units: Vec<Unit> = can.iter().map(|h| auc_unit(h, &pooled)).collect();
        let base_units: Vec<Unit> = if base.len() == 1 {
            vec![Unit { x: 0.5, v_null: 0.0, v_own: 0.0, w: 1.0 }]
        } else {
            base.iter()
                .map(|h| {
                    let others: Vec<f64> = pooled.iter().zip(&h.buckets).map(|(p, c)| p - c).collect();
                    auc_unit(h, &others)
                })
                .collect()
        };
        let c = Contrast::estimate(&can_units, &base_units, Spread::Absolute, 0.0);
        if !c.measured {
            look.note = Some(needs_hosts());
            return look;
        }
        let prior = self.settings.mixture_scale * AUC_PER_RELATIVE;
        let sign = self.spec.bad.sign();
        let mut stat = self.sequential(sign * c.delta, &c.null, f64::INFINITY, prior);
        // The effect that gates a `Fail` and that a `Pass` bounds is the one the rank test
        // measures: the factor by which the baseline's latencies, all scaled, would give the
        // canary's AUC. It uses every request, where the median (shown) rests on the few near it.
        let scale = Scale::Ranks { sign, reference: pooled.clone(), bounds: bounds.to_vec() };
        look.effect = rank_scale(&pooled, bounds, 0.5 + c.delta) - 1.0;
        look.bad_effect = sign * look.effect;
        stat.bound =
            Some(Bound { bad_delta: sign * c.delta, sd: c.own.total().sqrt(), df: c.own.df(f64::INFINITY), scale });
        look.stat = Some(stat);
        look
    }

    /// Gauge: each host's mean over its intervals, relative to the fleet, with a between-host spread.
    fn gauge_look(&self, base: &[&Host], can: &[&Host]) -> Look {
        let mean = |hosts: &[&Host]| hosts.iter().map(|h| h.num / h.intervals as f64).sum::<f64>() / hosts.len() as f64;
        let intervals = |hosts: &[&Host]| hosts.iter().map(|h| h.intervals as f64).sum::<f64>();
        let mut look = Look::insufficient(String::new());
        look.baseline_n = intervals(base);
        look.canary_n = intervals(can);
        if base.is_empty() || can.is_empty() {
            look.note = Some(too_little(base.len(), can.len(), look.baseline_n, look.canary_n, 1.0, "intervals"));
            return look;
        }
        let (mb, mc) = (mean(base), mean(can));
        look.baseline = mb;
        look.canary = mc;
        look.effect = relative(mc, mb);
        look.bad_effect = bad_relative(mc, mb, self.spec.bad);
        let fleet = (mb + mc) / 2.0;
        let scale = if fleet.abs() > 0.0 { fleet.abs() } else { 1.0 };
        let units = |hosts: &[&Host]| -> Vec<Unit> {
            hosts
                .iter()
                .map(|h| {
                    let n = h.intervals as f64;
                    let m = h.num / n;
                    let var = if n >= 2.0 { ((h.num_sq_over_den - n * m * m) / (n - 1.0)).max(0.0) } else { 0.0 };
                    let v = var / n / (scale * scale);
                    Unit { x: m / scale, v_null: v, v_own: v, w: 1.0 }
                })
                .collect()
        };
        let c = Contrast::estimate(&units(can), &units(base), Spread::Absolute, 0.0);
        if !c.measured {
            look.note = Some(needs_hosts());
            return look;
        }
        let sampling_df = (intervals(base) + intervals(can) - (base.len() + can.len()) as f64).max(1.0);
        let mut stat =
            self.sequential(self.spec.bad.sign() * c.delta, &c.null, sampling_df, self.settings.mixture_scale);
        stat.bound = (mb.abs() > 0.0).then(|| Bound {
            bad_delta: self.spec.bad.sign() * c.delta,
            sd: c.own.total().sqrt(),
            df: c.own.df(sampling_df),
            scale: Scale::Linear(scale / mb.abs()),
        });
        look.stat = Some(stat);
        look
    }

    /// The sequential step: one-sided t in the bad direction → normal score → mixture likelihood ratio.
    fn sequential(&self, bad_delta: f64, var: &Variance, sampling_df: f64, prior_sd: f64) -> Stat {
        let total = var.total();
        if total <= 0.0 || !total.is_finite() {
            // No noise at all: only an exact tie can be told apart from a regression.
            let t = if bad_delta > 0.0 {
                f64::INFINITY
            } else if bad_delta < 0.0 {
                -f64::INFINITY
            } else {
                0.0
            };
            return self.score(t, var, sampling_df, prior_sd);
        }
        self.score(bad_delta / total.sqrt(), var, sampling_df, prior_sd)
    }

    /// From a one-sided statistic `t` (Student's t with the variance's Satterthwaite degrees of
    /// freedom) to the always-valid p-value of this look.
    fn score(&self, t: f64, var: &Variance, sampling_df: f64, prior_sd: f64) -> Stat {
        let df = var.df(sampling_df);
        let z = normal_isf(t_sf(t, df));
        let total = var.total();
        let ratio = if total > 0.0 { (prior_sd * prior_sd / total).min(MAX_RATIO) } else { MAX_RATIO };
        let p_now = (-mixture_log_lr_scales(z, ratio)).exp().min(1.0);
        Stat { t, df, p_now, bound: None, pass_kept: true }
    }
}

/// The prior spread of AUC shifts per unit of relative regression: a latency distribution with a
/// log-scale spread of about 0.6 moves its AUC by about 0.4 × the log of the change.
const AUC_PER_RELATIVE: f64 = 0.4;
/// Normal scores are capped here (p ≈ 1e-300).
const MAX_Z: f64 = 37.0;
/// Prior-to-estimate variance ratios are capped here, so a noise-free look stays finite.
const MAX_RATIO: f64 = 1e12;

/// The end look's level by the pass test's prior ratio at the end (`r = (θ / sd)²`,
/// [`Bound::end_ratio`]), for `β = 0.1` with the early pass at `β/2`: under a regression of
/// exactly `pass_bound` the pass statistic is a Brownian motion in the information fraction, the
/// early pass a crossing of its always-valid boundary (monitored continuously, which bounds the
/// real looks' chance from above), the end look `W(1) ≥ c`; each level makes
/// `P(early or end) = β`. Computed by `scripts/reference/immune_reference.py` on a grid,
/// extrapolated to continuous time and floored to 0.001 (e.g. r 12: 0.09055 → 0.090).
const END_LEVELS: [(f64, f64); 23] = [
    (0.5, 0.099),
    (1.0, 0.099),
    (2.0, 0.099),
    (3.0, 0.098),
    (4.0, 0.097),
    (5.0, 0.096),
    (6.0, 0.095),
    (8.0, 0.093),
    (10.0, 0.092),
    (12.0, 0.090),
    (14.0, 0.089),
    (17.0, 0.087),
    (20.0, 0.086),
    (25.0, 0.084),
    (30.0, 0.082),
    (40.0, 0.080),
    (50.0, 0.078),
    (70.0, 0.075),
    (100.0, 0.073),
    (150.0, 0.070),
    (200.0, 0.069),
    (300.0, 0.067),
    (500.0, 0.066),
];

/// The end look's level `β_end` (its bound is at `1 − β_end`) after an early pass at `β/2`, so
/// that a regression of exactly `pass_bound` passes one way or the other with probability at
/// most `β`, `ratio` the pass test's prior ratio at the end look ([`Bound::end_ratio`]).
///
/// The two passes are correlated (a wave that passed early would mostly pass at the end too),
/// so the end look can spend more than the `β/2` the union bound leaves: 9.0% where the data
/// know the tolerance at `r` = 12 (one canary of six at 100 req/s after 5 minutes), near 10%
/// with little information, falling towards `β/2` with much (then a pass is easy anyway). The
/// level is read at the table's next ratio at or above `ratio` (it falls with the ratio, so
/// that is the safe side); beyond the table, and for any `β` other than 0.1 (the table's), it is
/// `β/2`, which the union bound guarantees by itself.
pub fn end_level(beta: f64, ratio: f64) -> f64 {
    let union = beta / 2.0;
    if (beta - 0.1).abs() > 1e-9 || ratio.is_nan() {
        return union;
    }
    END_LEVELS.iter().find(|(r, _)| *r >= ratio).map_or(union, |(_, level)| level.max(union))
}

fn needs_hosts() -> String {
    "host-to-host spread not measurable: needs two or more hosts on one side (three in all)".into()
}

fn too_little(base_hosts: usize, can_hosts: usize, base: f64, can: f64, min: f64, what: &str) -> String {
    if base_hosts == 0 && can_hosts == 0 {
        "no data".into()
    } else if base_hosts == 0 {
        "no baseline data".into()
    } else if can_hosts == 0 {
        "no canary data".into()
    } else {
        format!("too little data: baseline {base:.0}, canary {can:.0} {what} (needs {min:.0} each)")
    }
}

fn relative(canary: f64, baseline: f64) -> f64 {
    if baseline != 0.0 {
        canary / baseline - 1.0
    } else if canary == 0.0 {
        0.0
    } else {
        f64::INFINITY * canary.signum()
    }
}

fn bad_relative(canary: f64, baseline: f64, bad: Bad) -> f64 {
    if baseline != 0.0 {
        bad.sign() * (canary - baseline) / baseline.abs()
    } else if canary == 0.0 {
        0.0
    } else {
        f64::INFINITY * (bad.sign() * canary).signum()
    }
}

fn signed_pct(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 { "+inf%".into() } else { "-inf%".into() };
    }
    let s = sig(x * 100.0, 2);
    if x >= 0.0 {
        format!("+{s}%")
    } else {
        format!("{s}%")
    }
}

/// A percentage as people write it: `95`, `97.5`.
fn plain(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `v` with `digits` significant digits, plainly (`0.0041`, `3.9`, `850`), or in exponent form below
/// 1e-4.
fn sig(v: f64, digits: i32) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if magnitude < -4 {
        return format!("{:.*e}", (digits - 1).max(0) as usize, v);
    }
    let decimals = (digits - 1 - magnitude).max(0) as usize;
    format!("{v:.decimals$}")
}

/// One usable look's statistics.
#[derive(Clone, Debug, PartialEq)]
struct Stat {
    t: f64,
    df: f64,
    p_now: f64,
    /// What the pass test and the always-valid upper bound need, when the effect can be bounded.
    bound: Option<Bound>,
    /// Whether this look's pass evidence counts at later looks (`Monitor::best_pass`). False for
    /// a look that counted no event on either side: its zero-noise bound rules out any
    /// regression, which is true only while nothing is counted.
    pass_kept: bool,
}

/// How a look's contrast on its test's scale (`bad_delta`, signed so that positive is worse)
/// maps to the relative change in the bad direction that `min_effect` and `pass_bound` speak of.
#[derive(Clone, Debug, PartialEq)]
enum Scale {
    /// Relative change = contrast × this (hosts against each other; gauges).
    Linear(f64),
    /// The contrast is a change of logs (each host against its own past); the sign of the bad
    /// direction.
    LogChange(f64),
    /// The contrast is an AUC shift against these baseline bucket counts (histograms).
    Ranks { sign: f64, reference: Vec<f64>, bounds: Vec<f64> },
}

impl Scale {
    fn to_relative(&self, bad_delta: f64) -> f64 {
        match self {
            Scale::Linear(f) => bad_delta * f,
            Scale::LogChange(sign) => sign * ((sign * bad_delta).exp() - 1.0),
            Scale::Ranks { sign, reference, bounds } => {
                sign * (rank_scale(reference, bounds, 0.5 + sign * bad_delta) - 1.0)
            }
        }
    }

    /// The contrast of a relative change in the bad direction; `+inf` when no contrast is that
    /// bad (a drop of 100 % or more when a decrease is bad).
    fn from_relative(&self, bad_rel: f64) -> f64 {
        match self {
            Scale::Linear(f) if *f > 0.0 => bad_rel / f,
            Scale::Linear(_) => f64::INFINITY,
            Scale::LogChange(sign) => {
                let factor = 1.0 + sign * bad_rel;
                if factor > 0.0 {
                    sign * factor.ln()
                } else {
                    f64::INFINITY
                }
            }
            Scale::Ranks { sign, reference, bounds } => {
                let factor = 1.0 + sign * bad_rel;
                if factor > 0.0 {
                    sign * (shifted_auc(reference, bounds, factor) - 0.5)
                } else {
                    f64::INFINITY
                }
            }
        }
    }
}

/// The pass side of a look: an always-valid test of "the regression is at least `pass_bound`",
/// the mirror image of the revert test. Evidence against a regression of size θ (on the test's
/// scale) is the revert test's one-sided normal mixture on `θ − bad_delta`, with one prior
/// scale: θ itself (a healthy release is θ below it; one scale, not six, because the distance
/// to rule out is known, which saves a sixth of the data a pass needs). Under a regression of θ
/// or more it is a nonnegative supermartingale, so by Ville's inequality it reaches `1/β` with
/// probability at most `β = 1 − pass_confidence`, at any look. Inverted (each θ with its own
/// test), it is a confidence sequence: an upper bound on the regression valid at every look at once.
#[derive(Clone, Debug, PartialEq)]
struct Bound {
    bad_delta: f64,
    /// The contrast's standard deviation around the observed levels.
    sd: f64,
    /// Its degrees of freedom (the t is mapped to a normal score, as the revert test does).
    df: f64,
    scale: Scale,
}

/// The end look's outcome ([`Monitor::end_look`]).
#[derive(Clone, Debug, PartialEq)]
struct EndLook {
    /// Its fixed-horizon upper bound of the relative regression (None: it cannot be bounded).
    upper: Option<f64>,
    /// Whether that bound is at or below `pass_bound`.
    passed: bool,
    /// The bound's confidence, `1 − β_end` ([`end_level`]).
    confidence: f64,
}

impl Bound {
    /// The fixed-horizon upper confidence bound at `confidence` of the relative regression, for
    /// this one look: `bad_delta + t_{confidence, df} · sd` on the test's scale (the t mapped
    /// through its normal score, as the tests do), then on the relative scale. Valid for a look
    /// whose time does not depend on the data's values; the end of the bake is one.
    fn fixed_upper(&self, confidence: f64) -> f64 {
        if !(self.sd > 0.0 && self.sd.is_finite()) {
            return self.scale.to_relative(self.bad_delta);
        }
        self.scale.to_relative(self.bad_delta + t_isf(1.0 - confidence, self.df) * self.sd)
    }

    /// The pass test's prior-to-estimate variance ratio at this look, `(θ / sd)²` with θ the
    /// regression of `pass_bound` on the test's scale: how much the data know about it, which
    /// sets how much of `β` the early looks can have spent ([`end_level`]). Infinite with no noise.
    fn end_ratio(&self, pass_bound: f64) -> f64 {
        let theta = self.scale.from_relative(pass_bound);
        if !(self.sd > 0.0 && self.sd.is_finite()) || !theta.is_finite() {
            return f64::INFINITY;
        }
        (theta / self.sd).powi(2)
    }

    /// ln Λ against a regression of `bad_rel` (relative) at this look.
    fn pass_log_lr(&self, bad_rel: f64) -> f64 {
        self.log_lr_at(self.scale.from_relative(bad_rel))
    }

    /// ln Λ against a regression of `theta` on the test's scale.
    fn log_lr_at(&self, theta: f64) -> f64 {
        if theta == f64::INFINITY {
            return f64::INFINITY;
        }
        if !(self.sd > 0.0 && self.sd.is_finite()) {
            return if self.bad_delta < theta { f64::INFINITY } else { f64::NEG_INFINITY };
        }
        if theta <= 0.0 {
            return f64::NEG_INFINITY;
        }
        let z = normal_isf(t_sf((theta - self.bad_delta) / self.sd, self.df));
        mixture_log_lr(z, (theta * theta / (self.sd * self.sd)).min(MAX_RATIO))
    }

    /// The always-valid upper bound at `confidence` of the relative regression: the smallest θ
    /// whose test reaches `1/(1 − confidence)` (a pass rules out exactly what is above it),
    /// by bisection; `+inf` when none within 40 standard deviations does.
    fn upper(&self, confidence: f64) -> f64 {
        if !(self.sd > 0.0 && self.sd.is_finite()) {
            return self.scale.to_relative(self.bad_delta);
        }
        let target = -(1.0 - confidence).ln();
        let (mut lo, mut hi) = (self.bad_delta.max(0.0), self.bad_delta.max(0.0) + 40.0 * self.sd);
        if self.log_lr_at(hi) < target {
            return f64::INFINITY;
        }
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if self.log_lr_at(mid) >= target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        self.scale.to_relative(hi)
    }
}

/// The per-bucket probabilities of the `reference` latencies all multiplied by `factor`: the
/// reference's distribution function is read as `histogram_quantile` reads it (linear within a
/// bucket, the first from 0) at each bound divided by `factor`.
fn shifted_counts(reference: &[f64], bounds: &[f64], factor: f64) -> Vec<f64> {
    let total: f64 = reference.iter().sum();
    let cdf = |x: f64| -> f64 {
        let mut below = 0.0;
        for (i, &upper) in bounds.iter().enumerate() {
            let lower = if i == 0 { upper.min(0.0) } else { bounds[i - 1] };
            let c = reference[i];
            if x <= upper {
                if x <= lower {
                    return below / total;
                }
                return (below + c * (x - lower) / (upper - lower)) / total;
            }
            below += c;
        }
        below / total
    };
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut previous = 0.0;
    for b in bounds {
        let f = cdf(b / factor);
        out.push((f - previous).max(0.0));
        previous = f;
    }
    out.push((1.0 - previous).max(0.0));
    out
}

/// The AUC of the `reference` latencies multiplied by `factor` against the reference itself, on
/// the buckets (what the rank test's contrast is expected to be under that change).
fn shifted_auc(reference: &[f64], bounds: &[f64], factor: f64) -> f64 {
    let total: f64 = reference.iter().sum();
    if total <= 0.0 {
        return 0.5;
    }
    // As counts of the reference's size: `mann_whitney_auc` takes fewer than two observations
    // in all as no data, and two shares that sum to 1 - ε each would be that.
    let shifted: Vec<f64> = shifted_counts(reference, bounds, factor).iter().map(|p| p * total).collect();
    mann_whitney_auc(&shifted, reference).0
}

/// The factor by which the `reference` latencies, all multiplied, have this AUC against
/// themselves ([`shifted_auc`] inverted by bisection on its log, within ×1/1000 … ×1000).
fn rank_scale(reference: &[f64], bounds: &[f64], auc: f64) -> f64 {
    let (mut lo, mut hi) = (-(1000f64.ln()), 1000f64.ln());
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if shifted_auc(reference, bounds, mid.exp()) < auc {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).exp()
}

/// What one look saw; `stat` is `None` when the data do not allow a test.
#[derive(Clone, Debug, PartialEq)]
struct Look {
    baseline: f64,
    canary: f64,
    effect: f64,
    bad_effect: f64,
    baseline_n: f64,
    canary_n: f64,
    baseline_hosts: usize,
    canary_hosts: usize,
    stat: Option<Stat>,
    note: Option<String>,
}

impl Look {
    fn insufficient(note: String) -> Look {
        Look {
            baseline: f64::NAN,
            canary: f64::NAN,
            effect: f64::NAN,
            bad_effect: f64::NAN,
            baseline_n: 0.0,
            canary_n: 0.0,
            baseline_hosts: 0,
            canary_hosts: 0,
            stat: None,
            note: if note.is_empty() { None } else { Some(note) },
        }
    }
}

/// A validated delta, in the form hosts add up.
enum Delta {
    Ratio { num: f64, den: f64 },
    Histogram { counts: Vec<f64>, sum: f64, count: f64 },
    Gauge(f64),
}

impl Delta {
    /// Checks a sample against the metric's kind; `None` when it is malformed.
    fn parse(kind: &MetricKind, sample: &Sample) -> Option<Delta> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        match (kind, sample) {
            (MetricKind::Ratio, Sample::Ratio { num, den }) if ok(*num) && ok(*den) => {
                Some(Delta::Ratio { num: *num, den: *den })
            }
            (MetricKind::Histogram { bounds }, Sample::Histogram { buckets, sum, count })
                if ok(*sum) && ok(*count) && buckets.iter().all(|b| ok(*b)) =>
            {
                let finite = match buckets.len() {
                    n if n == bounds.len() => buckets.as_slice(),
                    n if n == bounds.len() + 1 => &buckets[..bounds.len()],
                    _ => return None,
                };
                let mut counts = Vec::with_capacity(bounds.len() + 1);
                let mut below = 0.0;
                for &cumulative in finite.iter().chain(std::iter::once(count)) {
                    if cumulative < below {
                        return None;
                    }
                    counts.push(cumulative - below);
                    below = cumulative;
                }
                Some(Delta::Histogram { counts, sum: *sum, count: *count })
            }
            (MetricKind::Gauge, Sample::Gauge(v)) if v.is_finite() => Some(Delta::Gauge(*v)),
            _ => None,
        }
    }
}

/// One host's running totals. Ratio: `num`, `den`, Σ num²/den. Histogram: `num` = Σ sum, `den` =
/// Σ count, per-bucket counts. Gauge: `num` = Σ value, `num_sq_over_den` = Σ value².
#[derive(Clone, Debug, Default)]
struct Host {
    /// The host's name, as observed.
    name: String,
    last_interval: Option<u64>,
    intervals: u64,
    num: f64,
    den: f64,
    num_sq_over_den: f64,
    buckets: Vec<f64>,
}

impl Host {
    fn add(&mut self, delta: &Delta) {
        match delta {
            Delta::Ratio { num, den } => {
                if *den > 0.0 {
                    self.intervals += 1;
                    self.num += num;
                    self.den += den;
                    self.num_sq_over_den += num * num / den;
                }
            }
            Delta::Histogram { counts, sum, count } => {
                if *count > 0.0 {
                    self.intervals += 1;
                    self.num += sum;
                    self.den += count;
                    if self.buckets.is_empty() {
                        self.buckets = vec![0.0; counts.len()];
                    }
                    for (b, c) in self.buckets.iter_mut().zip(counts) {
                        *b += c;
                    }
                }
            }
            Delta::Gauge(v) => {
                self.intervals += 1;
                self.num += v;
                self.num_sq_over_den += v * v;
            }
        }
    }
}

impl Host {
    fn totals(&self, name: &str) -> HostTotals {
        HostTotals {
            host: name.to_string(),
            last_interval: self.last_interval,
            intervals: self.intervals,
            num: self.num,
            den: self.den,
            num_sq_over_den: self.num_sq_over_den,
            buckets: self.buckets.clone(),
        }
    }
}

impl From<&HostTotals> for Host {
    fn from(t: &HostTotals) -> Host {
        Host {
            name: t.host.clone(),
            last_interval: t.last_interval,
            intervals: t.intervals,
            num: t.num,
            den: t.den,
            num_sq_over_den: t.num_sq_over_den,
            buckets: t.buckets.clone(),
        }
    }
}

/// One host's running totals in a [`TestState`] (see the fields of the monitor's hosts: ratio
/// `num`/`den`/Σ num²/den, histogram Σ sum/Σ count/bucket counts, gauge Σ value/Σ value²).
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct HostTotals {
    /// The host.
    pub host: String,
    /// The newest interval counted (a report at or below it is not counted again).
    pub last_interval: Option<u64>,
    /// Intervals counted.
    pub intervals: u64,
    /// Σ numerator (ratio), Σ `_sum` (histogram), Σ value (gauge).
    pub num: f64,
    /// Σ denominator (ratio), Σ `_count` (histogram).
    pub den: f64,
    /// Σ num²/den (ratio), Σ value² (gauge).
    pub num_sq_over_den: f64,
    /// Per-bucket counts (histogram; empty otherwise).
    pub buckets: Vec<f64>,
}

/// A monitor's sequential test so far, as [`Monitor::state`] records it and [`Monitor::resume`]
/// goes on from it.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct TestState {
    /// Looks taken.
    pub looks: u64,
    /// The always-valid p-value so far (the minimum over the looks).
    pub min_p: f64,
    /// The pass test's largest ln Λ so far (evidence against a regression of `pass_bound`; minus
    /// infinity before the first look), so a metric that has passed stays passed.
    pub best_pass: f64,
    /// The share of the rollout's alpha this test spends (it fails when `min_p` reaches it).
    pub alpha: f64,
    /// Malformed observations dropped.
    pub rejected: u64,
    /// Baseline hosts (for the last wave, the previous release's fleet in the earlier window).
    pub baseline: Vec<HostTotals>,
    /// Canary hosts.
    pub canary: Vec<HostTotals>,
    /// Each host's data from before the wave (see [`Monitor::with_history`]).
    pub before: Vec<HostTotals>,
}

impl TestState {
    /// Refuses a state no monitor could have recorded: a p-value outside (0, 1], totals that are
    /// negative or not finite, a host twice on one side, bucket counts that do not fit a metric
    /// of `buckets` buckets (0: not a histogram).
    pub fn check(&self, buckets: usize) -> Result<(), ResumeError> {
        let bad = |what: String| Err(ResumeError::State(what));
        if !(self.min_p > 0.0 && self.min_p <= 1.0) {
            return bad(format!("p-value {} is not in (0, 1]", self.min_p));
        }
        if self.best_pass.is_nan() || self.best_pass == f64::INFINITY {
            return bad(format!("pass evidence {} is not a number or minus infinity", self.best_pass));
        }
        for (name, side) in [("baseline", &self.baseline), ("canary", &self.canary), ("before", &self.before)] {
            let mut seen = std::collections::BTreeSet::new();
            for h in side {
                let ok = |v: f64| v.is_finite() && v >= 0.0;
                if !seen.insert(h.host.as_str()) {
                    return bad(format!("{name} host {} appears twice", h.host));
                }
                if !(ok(h.num) && ok(h.den) && ok(h.num_sq_over_den) && h.buckets.iter().all(|b| ok(*b))) {
                    return bad(format!("{name} host {} has a negative or non-finite total", h.host));
                }
                if !h.buckets.is_empty() && h.buckets.len() != buckets {
                    return bad(format!("{name} host {} has {} buckets, not {buckets}", h.host, h.buckets.len()));
                }
            }
        }
        Ok(())
    }
}

/// Why a recorded test state cannot be continued.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ResumeError {
    /// The metric's settings are invalid.
    #[error(transparent)]
    Settings(SettingsError),
    /// The state is not one a monitor records.
    #[error("recorded test state: {0}")]
    State(String),
}

/// One side (baseline or canary) of a comparison.
#[derive(Clone, Debug, Default)]
struct Side {
    hosts: BTreeMap<String, Host>,
}

impl Side {
    /// Hosts that contributed data.
    fn active(&self) -> Vec<&Host> {
        self.hosts.values().filter(|h| h.intervals > 0).collect()
    }
}

/// One host's summary on the test's scale.
#[derive(Clone, Copy, Debug)]
struct Unit {
    /// The host's estimate.
    x: f64,
    /// Its sampling variance if the release had no effect.
    v_null: f64,
    /// Its sampling variance around its own side's level.
    v_own: f64,
    /// Its weight in its side's mean.
    w: f64,
}

/// How the between-host spread scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spread {
    /// Proportional to the side's level (host effects multiply a rate).
    Relative,
    /// The same on both sides.
    Absolute,
}

/// A variance with an estimated between-host part (`spread`, `spread_df` degrees of freedom) and a
/// sampling part.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Variance {
    spread: f64,
    spread_df: f64,
    sampling: f64,
}

impl Variance {
    fn total(&self) -> f64 {
        self.spread + self.sampling
    }

    /// Welch-Satterthwaite degrees of freedom, the sampling part having `sampling_df`.
    fn df(&self, sampling_df: f64) -> f64 {
        let term = |v: f64, df: f64| if df.is_finite() && df > 0.0 { v * v / df } else { 0.0 };
        let denom = term(self.spread, self.spread_df) + term(self.sampling, sampling_df);
        if denom > 0.0 {
            self.total() * self.total() / denom
        } else {
            f64::INFINITY
        }
    }
}

/// The canary-minus-baseline contrast of host summaries under a random host effect.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Contrast {
    /// Weighted canary mean minus weighted baseline mean.
    delta: f64,
    /// Its variance if the release had no effect (for the test).
    null: Variance,
    /// Its variance around the observed levels (for the confidence bound).
    own: Variance,
    /// Whether the data could measure the spread (two hosts or more on some side).
    measured: bool,
}

impl Contrast {
    /// Estimates the between-host variance by moments, pooled within sides (the DerSimonian-Laird
    /// estimator with a mean per side): with weights `w`, `Q = Σ w (x − x̄_w)²` has expectation
    /// `Σ w v − Σ w² v / W + τ² (W − Σ w² / W)`, so `τ² = Σ (Q − noise) / Σ (W − Σ w² / W)` over the
    /// sides with two hosts or more. Relative spreads are measured on `x / x̄` of each side and weigh each
    /// host by its precision `1 / v` (a side of low-count hosts then says little); absolute spreads
    /// weigh hosts equally. The spread is at least `floor²` (see `Settings::ratio_host_spread`).
    fn estimate(canary: &[Unit], baseline: &[Unit], spread: Spread, floor: f64) -> Contrast {
        let (mut excess, mut scale_sum, mut tau_df) = (0.0, 0.0, 0.0);
        for side in [canary, baseline] {
            if side.len() < 2 {
                continue;
            }
            let (xs, vs): (Vec<f64>, Vec<f64>) = match spread {
                Spread::Absolute => side.iter().map(|u| (u.x, u.v_own)).unzip(),
                Spread::Relative => {
                    let w: f64 = side.iter().map(|u| u.w).sum();
                    let m = side.iter().map(|u| u.w * u.x).sum::<f64>() / w;
                    if m <= 0.0 {
                        continue;
                    }
                    side.iter().map(|u| (u.x / m, u.v_own / (m * m))).unzip()
                }
            };
            let precision = spread == Spread::Relative && vs.iter().all(|v| *v > 0.0);
            let ws: Vec<f64> = vs.iter().map(|v| if precision { 1.0 / v } else { 1.0 }).collect();
            let w: f64 = ws.iter().sum();
            let w2: f64 = ws.iter().map(|w| w * w).sum();
            let mean = ws.iter().zip(&xs).map(|(w, x)| w * x).sum::<f64>() / w;
            let q = ws.iter().zip(&xs).map(|(w, x)| w * (x - mean) * (x - mean)).sum::<f64>();
            let noise = ws.iter().zip(&vs).map(|(wh, v)| wh * v - wh * wh * v / w).sum::<f64>();
            excess += q - noise;
            scale_sum += w - w2 / w;
            tau_df += (side.len() - 1) as f64;
        }
        let estimate = if tau_df > 0.0 && scale_sum > 0.0 { (excess / scale_sum).max(0.0) } else { 0.0 };
        // Below the floor the spread is taken as known; above it only the excess is uncertain, which
        // Satterthwaite sees as (K·excess)²/df = (K·τ²)²/df_eff.
        let floor2 = floor * floor;
        let (tau2, spread_df) = if estimate <= floor2 {
            (floor2, if floor2 > 0.0 { f64::INFINITY } else { tau_df })
        } else if floor2 > 0.0 {
            (estimate, tau_df * (estimate / (estimate - floor2)).powi(2))
        } else {
            (estimate, tau_df)
        };
        let mean = |side: &[Unit]| {
            let w: f64 = side.iter().map(|u| u.w).sum();
            side.iter().map(|u| u.w * u.x).sum::<f64>() / w
        };
        // Σ (w/W)² and Σ (w/W)² v for one side.
        let sums = |side: &[Unit], v: fn(&Unit) -> f64| {
            let w: f64 = side.iter().map(|u| u.w).sum();
            let k = side.iter().map(|u| (u.w / w).powi(2)).sum::<f64>();
            let s = side.iter().map(|u| (u.w / w).powi(2) * v(u)).sum::<f64>();
            (k, s)
        };
        let (xc, xb) = (mean(canary), mean(baseline));
        let (kc, sc0) = sums(canary, |u| u.v_null);
        let (kb, sb0) = sums(baseline, |u| u.v_null);
        let (_, sc1) = sums(canary, |u| u.v_own);
        let (_, sb1) = sums(baseline, |u| u.v_own);
        let own_spread = match spread {
            Spread::Relative => tau2 * (xc * xc * kc + xb * xb * kb),
            Spread::Absolute => tau2 * (kc + kb),
        };
        Contrast {
            delta: xc - xb,
            null: Variance { spread: tau2 * (kc + kb), spread_df, sampling: sc0 + sb0 },
            own: Variance { spread: own_spread, spread_df, sampling: sc1 + sb1 },
            measured: tau_df > 0.0,
        }
    }
}

/// The `q` quantile of a histogram's per-bucket `counts` (`bounds.len() + 1` of them, the last the
/// `+Inf` bucket), as Prometheus' `histogram_quantile` estimates it: linear within the bucket that
/// holds it, the first bucket starting at 0 (when its bound is positive), and the last finite bound
/// for a quantile in the `+Inf` bucket. NaN without observations.
fn bucket_quantile(counts: &[f64], bounds: &[f64], q: f64) -> f64 {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || bounds.is_empty() {
        return f64::NAN;
    }
    let rank = q * total;
    let mut below = 0.0;
    for (i, &c) in counts.iter().enumerate() {
        if below + c >= rank && c > 0.0 {
            let Some(&upper) = bounds.get(i) else { return bounds[bounds.len() - 1] };
            let lower = if i == 0 { upper.min(0.0) } else { bounds[i - 1] };
            return lower + (upper - lower) * (rank - below) / c;
        }
        below += c;
    }
    bounds[bounds.len() - 1]
}

/// The Mann-Whitney AUC of `host` against `reference`, both as per-bucket counts over the same
/// buckets: P(host's observation > reference's) + ½·P(tie). Returns it with its variance if both came
/// from one distribution, tie-corrected: σ²(U) = n₁n₂/12 · (N + 1 − Σ(t³ − t)/(N(N − 1))), over
/// (n₁n₂)².
fn mann_whitney_auc(host: &[f64], reference: &[f64]) -> (f64, f64) {
    let (mut below, mut u, mut ties) = (0.0, 0.0, 0.0);
    let n1: f64 = host.iter().sum();
    let n2: f64 = reference.iter().sum();
    for (&h, &r) in host.iter().zip(reference) {
        u += h * (below + 0.5 * r);
        below += r;
        let t = h + r;
        ties += t * t * t - t;
    }
    let n = n1 + n2;
    if n1 <= 0.0 || n2 <= 0.0 || n < 2.0 {
        return (0.5, 0.0);
    }
    let var_u = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    (u / (n1 * n2), var_u.max(0.0) / (n1 * n2).powi(2))
}

/// The signed root of the likelihood-ratio statistic for two Poisson rates (`n1` events over `d1`
/// exposure against `n2` over `d2`), with a continuity correction of one half: each count moved half
/// an event towards its expectation under equal rates. Positive when the first rate is higher.
fn signed_root_lr(n1: f64, d1: f64, n2: f64, d2: f64) -> f64 {
    let total = n1 + n2;
    let e1 = total * d1 / (d1 + d2);
    let gap = n1 - e1;
    if total <= 0.0 || gap.abs() <= 0.5 {
        return 0.0;
    }
    let c1 = n1 - 0.5 * gap.signum();
    let c2 = total - c1;
    let e2 = total - e1;
    let term = |n: f64, e: f64| if n > 0.0 { n * (n / e).ln() } else { 0.0 };
    let deviance = 2.0 * (term(c1, e1) + term(c2, e2));
    gap.signum() * deviance.max(0.0).sqrt()
}

/// P(T ≥ t) for Student's t with `df` degrees of freedom; the normal's when `df` is infinite or huge.
fn t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return 1.0;
    }
    if !df.is_finite() || df > 1e7 {
        return Normal::standard().sf(t);
    }
    match StudentsT::new(0.0, 1.0, df.max(1e-3)) {
        Ok(dist) => dist.sf(t),
        Err(_) => 1.0,
    }
}

/// The t with P(T ≥ t) = p for Student's t with `df` degrees of freedom (the normal's when `df`
/// is infinite or huge).
fn t_isf(p: f64, df: f64) -> f64 {
    if !df.is_finite() || df > 1e7 {
        return normal_isf(p);
    }
    match StudentsT::new(0.0, 1.0, df.max(1e-3)) {
        Ok(dist) => -dist.inverse_cdf(p),
        Err(_) => normal_isf(p),
    }
}

/// The z with P(Z ≥ z) = p, capped at ±`MAX_Z`.
fn normal_isf(p: f64) -> f64 {
    if p <= 0.0 {
        return MAX_Z;
    }
    if p >= 1.0 {
        return -MAX_Z;
    }
    (-Normal::standard().inverse_cdf(p)).clamp(-MAX_Z, MAX_Z)
}

/// ln Λ of the one-sided normal mixture: for a normal score `z` whose estimate has variance V, and a
/// half-normal prior on the effect with variance σ² (`ratio` = σ²/V),
/// Λ = ∫₀^∞ exp(θS − θ²I/2) 2φ(θ/σ)/σ dθ = 2/√(1+r) · exp(z²r/(2(1+r))) · Φ(z√(r/(1+r))),
/// with I = 1/V and S = z√I. Under no regression Λ is a nonnegative martingale in the looks, so
/// P(sup Λ ≥ 1/α) ≤ α (Ville).
/// The effect scales the sequential test mixes over, as multiples of its prior's spread
/// (`mixture_scale`): a regression of any of these sizes is caught in about the fewest looks its
/// size allows, a large one in one or two, where one scale tuned for small effects would wait. The
/// mixture is an equal-weight average of the scales' likelihood ratios: an average of nonnegative
/// martingales is one, so Ville's bound P(sup Λ ≥ 1/α) ≤ α holds as for one scale; the price is at
/// most ln 6 ≈ 1.8 of log-evidence at the best-fitting scale.
const MIXTURE_MULTIPLES: [f64; 6] = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0];

/// ln of the average of [`mixture_log_lr`]'s Λ over [`MIXTURE_MULTIPLES`] of the prior's spread
/// (`ratio` is the base scale's σ²/V).
fn mixture_log_lr_scales(z: f64, ratio: f64) -> f64 {
    let logs: Vec<f64> = MIXTURE_MULTIPLES.iter().map(|m| mixture_log_lr(z, (ratio * m * m).min(MAX_RATIO))).collect();
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    top + logs.iter().map(|l| (l - top).exp()).sum::<f64>().ln() - (MIXTURE_MULTIPLES.len() as f64).ln()
}

fn mixture_log_lr(z: f64, ratio: f64) -> f64 {
    let r = ratio.max(0.0);
    let shrink = r / (1.0 + r);
    let tail = Normal::standard().cdf(z * shrink.sqrt());
    std::f64::consts::LN_2 - 0.5 * (1.0 + r).ln() + 0.5 * z * z * shrink + tail.max(f64::MIN_POSITIVE).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values: `python3 scripts/reference/immune_reference.py` (numpy 2.4.6, scipy 1.17.1).
    // Distributions come from scipy.stats, the mixture from scipy.integrate.quad, Mann-Whitney from
    // scipy.stats.mannwhitneyu, and whole looks from a numpy re-implementation of the module doc.

    fn close(got: f64, want: f64, rel: f64) {
        assert!((got - want).abs() <= rel * want.abs().max(1e-300), "got {got}, want {want} (rel {rel})");
    }

    #[test]
    fn normal_and_t_tails_match_scipy() {
        close(normal_isf(0.0025), 2.8070337683438042, 1e-9);
        close(normal_isf(1e-6), 4.753424308822899, 1e-9);
        close(normal_isf(1e-12), 7.034483825301131, 1e-8);
        close(t_sf(2.5, 4.0), 0.03338327240599407, 1e-9);
        close(t_sf(7.0, 4.0), 0.0010960649033464694, 1e-8);
        close(t_sf(12.0, 3.5), 0.0002872670964280638, 1e-7);
        close(t_sf(4.0, 28.3), 0.0002069726987377386, 1e-7);
        close(t_sf(30.0, 2.0), 0.0005546313409798295, 1e-7);
        close(t_sf(-1.0, 6.0), 0.822041158125209, 1e-9);
        close(t_isf(0.05, 5.5), 1.9752797040389098, 1e-8);
        close(t_isf(0.05, f64::INFINITY), 1.6448536269514722, 1e-9);
    }

    #[test]
    fn mixture_likelihood_ratio_matches_numerical_integration() {
        close(mixture_log_lr(2.0, 1.0), 1.264658727398098, 1e-8);
        close(mixture_log_lr(4.0, 25.0), 6.756362753183592, 1e-8);
        close(mixture_log_lr(-1.0, 4.0), -1.3960205343828018, 1e-7);
        close(mixture_log_lr(6.5, 0.3), 5.436068032551893, 1e-8);
        // The equal-weight mixture over six scales, from six numerical integrals.
        close(mixture_log_lr_scales(2.0, 1.0), 0.9628309694713147, 1e-8);
        close(mixture_log_lr_scales(4.0, 25.0), 6.093001349601974, 1e-8);
        close(mixture_log_lr_scales(9.0, 0.04), 34.5891929887545, 1e-8);
    }

    #[test]
    fn mann_whitney_matches_scipy_asymptotic_with_ties() {
        // The example on which statrs' exact path is wrong; every value in its own bucket.
        let bounds = [1.0, 2.0, 2.5, 3.5, 4.0, 5.2, 6.0, 7.1, 8.0, 9.3];
        let bucket = |values: &[f64]| {
            let mut counts = vec![0.0; bounds.len() + 1];
            for v in values {
                let i = bounds.iter().position(|b| v <= b).unwrap_or(bounds.len());
                counts[i] += 1.0;
            }
            counts
        };
        let (auc, var) = mann_whitney_auc(&bucket(&[1.0, 2.0, 3.5, 4.0, 5.2]), &bucket(&[2.5, 6.0, 7.1, 8.0, 9.3]));
        close(auc * 25.0, 3.0, 1e-12); // U1
        close(2.0 * Normal::standard().cdf((auc - 0.5) / var.sqrt()), 0.04720176769014221, 1e-9);
        // Heavy ties: the values are bucket indices.
        let (auc, var) = mann_whitney_auc(&[3.0, 10.0, 25.0, 9.0, 2.0, 1.0], &[6.0, 15.0, 20.0, 5.0, 1.0, 0.0]);
        close(auc * 50.0 * 47.0, 1450.5, 1e-12);
        close(Normal::standard().sf((auc - 0.5) / var.sqrt()), 0.01696959578441313, 1e-9);
    }

    fn error_rate() -> MetricSpec {
        MetricSpec { name: "error_rate".into(), kind: MetricKind::Ratio, bad: Bad::Increase }
    }

    fn latency() -> MetricSpec {
        MetricSpec {
            name: "http_request_duration_seconds".into(),
            kind: MetricKind::Histogram { bounds: vec![0.05, 0.1, 0.25, 0.5] },
            bad: Bad::Increase,
        }
    }

    fn monitor(spec: &MetricSpec) -> Monitor {
        Monitor::new(spec, &Settings::default(), Budget { metrics: 2, waves: 1 }).expect("valid settings")
    }

    /// A monitor whose alpha share is so small (1e-9) that it never fails: its evidence is always the
    /// latest look's, to compare with the reference looks.
    fn watcher(spec: &MetricSpec) -> Monitor {
        Monitor::new(spec, &Settings::default(), Budget { metrics: 10_000, waves: 1_000 }).expect("valid settings")
    }

    fn ratio(host: &str, interval: u64, num: f64, den: f64) -> Observation {
        Observation { host: host.into(), interval, sample: Sample::Ratio { num, den } }
    }

    /// Feeds `intervals` looks of `hosts` baseline and canary hosts with the given counts per interval.
    fn feed_ratio(m: &mut Monitor, intervals: u64, baseline: &[(f64, f64)], canary: &[(f64, f64)]) {
        for k in 0..intervals {
            let b: Vec<_> = baseline.iter().enumerate().map(|(i, (n, d))| ratio(&format!("b{i}"), k, *n, *d)).collect();
            let c: Vec<_> = canary.iter().enumerate().map(|(i, (n, d))| ratio(&format!("c{i}"), k, *n, *d)).collect();
            m.observe(&b, &c);
        }
    }

    #[test]
    fn a_ratio_look_matches_the_reference() {
        let base = [
            [(2.0, 400.0), (1.0, 380.0), (3.0, 410.0)],
            [(0.0, 390.0), (2.0, 420.0), (1.0, 405.0)],
            [(4.0, 415.0), (1.0, 395.0), (2.0, 400.0)],
        ];
        let can = [[(6.0, 400.0), (9.0, 410.0), (7.0, 390.0)], [(5.0, 380.0), (8.0, 400.0), (4.0, 395.0)]];
        let look = |k: usize| -> (Vec<Observation>, Vec<Observation>) {
            let side = |prefix: &str, hosts: &[[(f64, f64); 3]]| -> Vec<Observation> {
                hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| ratio(&format!("{prefix}{i}"), k as u64, h[k].0, h[k].1))
                    .collect()
            };
            (side("b", &base), side("c", &can))
        };
        let gate_budget = Budget { metrics: 1, waves: 1 };
        let mut gate = Monitor::new(&error_rate(), &Settings::default(), gate_budget).expect("valid settings");
        let mut watch = watcher(&error_rate());
        let mut results = Vec::new();
        for k in 0..3 {
            let (b, c) = look(k);
            watch.observe(&b, &c);
            gate.observe(&b, &c);
            results.push((watch.verdict(false), gate.verdict(false)));
        }
        let first = &results[0].0.evidence;
        close(first.statistic, 1.647908091719474, 1e-9);
        close(first.df, 222.86104385044155, 1e-9);
        close(first.p_value, 0.609984940637504, 1e-7);
        close(results[1].0.evidence.p_value, 0.010468481336073551, 1e-7);
        let last = &results[2].0.evidence;
        close(last.baseline, 0.004426002766251729, 1e-12);
        close(last.canary, 0.016421052631578947, 1e-12);
        close(last.statistic, 3.7933006337465858, 1e-9);
        assert!(last.df.is_infinite(), "the host spread is at its floor");
        close(last.p_value, 0.0047088297803939555, 1e-7);
        // The always-valid 95 % upper bound (a final look's verdict searches for it).
        assert!(last.bad_effect_upper.is_none(), "only a final look shows the bound");
        let upper = watch.verdict(true).evidence.bad_effect_upper.expect("bounded");
        close(upper, 5.154389533871339, 1e-7);
        // The end look's fixed-horizon bound: t quantile × the same standard deviation, at the
        // level `end_level` gives for this look's information (the reference's END_LEVELS).
        let end = watch.end_look();
        close(end.evidence.bad_effect_upper.expect("bounded"), 3.790302016505716, 1e-9);
        assert_eq!(end.verdict, Verdict::Inconclusive, "+379 % is not ruled out");
        // With all of alpha = 0.01 on this one metric, the third look fails.
        assert_eq!(results[1].1.verdict, Verdict::Inconclusive);
        assert_eq!(results[2].1.verdict, Verdict::Fail);
        assert_eq!(results[2].1.summary(), "error_rate 0.44% → 1.6% (+271%, p=0.0047)");
    }

    #[test]
    fn a_ratio_against_each_hosts_own_past_matches_the_reference() {
        let before = [("b0", 36.0, 18000.0), ("b1", 45.0, 18000.0), ("b2", 90.0, 18000.0), ("c0", 72.0, 18000.0)];
        let after = [("b0", 3.0, 1000.0), ("b1", 2.0, 1000.0), ("b2", 5.0, 1000.0)];
        let mut m = watcher(&error_rate());
        m.with_history(&before.iter().map(|(h, n, d)| ratio(h, 0, *n, *d)).collect::<Vec<_>>());
        m.observe(
            &after.iter().map(|(h, n, d)| ratio(h, 1, *n, *d)).collect::<Vec<_>>(),
            &[ratio("c0", 1, 9.0, 1000.0)],
        );
        let e = m.verdict(false).evidence;
        close(e.effect, 0.9153418496992842, 1e-12);
        close(e.statistic, 1.368593712429524, 1e-9);
        assert!(e.df.is_infinite(), "the spread of changes is at its floor");
        close(e.p_value, 0.860650813440239, 1e-7);
        close(m.verdict(true).evidence.bad_effect_upper.expect("bounded"), 6.3136731435960405, 1e-7);
        close(m.clone().end_look().evidence.bad_effect_upper.expect("bounded"), 2.529565539440927, 1e-9);
        // A past of a few events per host is noisier than the hosts' spread: the same look then
        // compares the hosts with each other, as it does without history.
        let mut m = watcher(&error_rate());
        m.with_history(&before.iter().map(|(h, n, d)| ratio(h, 0, n / 6.0, d / 6.0)).collect::<Vec<_>>());
        m.observe(
            &after.iter().map(|(h, n, d)| ratio(h, 1, *n, *d)).collect::<Vec<_>>(),
            &[ratio("c0", 1, 9.0, 1000.0)],
        );
        assert!(m.verdict(false).evidence.note.is_none_or(|n| !n.contains("own past")));
        // Without history the same look compares the hosts with each other.
        let mut m = watcher(&error_rate());
        m.observe(
            &after.iter().map(|(h, n, d)| ratio(h, 1, *n, *d)).collect::<Vec<_>>(),
            &[ratio("c0", 1, 9.0, 1000.0)],
        );
        assert!(m.verdict(false).evidence.note.is_none_or(|n| !n.contains("own past")));
    }

    #[test]
    fn the_poisson_likelihood_ratio_matches_the_reference() {
        close(signed_root_lr(11.0, 1000.0, 20.0, 5000.0), 2.3262043626074904, 1e-12);
        close(signed_root_lr(20.0, 3000.0, 0.0, 3000.0), 4.801001276493953, 1e-12);
        close(signed_root_lr(150.0, 3000.0, 75.0, 15000.0), 16.6176745645707, 1e-12);
        close(signed_root_lr(3.0, 400.0, 30.0, 2000.0), -0.9890173888866991, 1e-12);
        assert_eq!(signed_root_lr(5.0, 1000.0, 5.2, 1000.0), 0.0, "within half an event of equal rates");
    }

    #[test]
    fn a_histogram_look_matches_the_reference() {
        let base: [[[f64; 5]; 2]; 3] = [
            [[20.0, 50.0, 25.0, 4.0, 1.0], [18.0, 52.0, 26.0, 3.0, 1.0]],
            [[22.0, 47.0, 27.0, 3.0, 1.0], [25.0, 45.0, 24.0, 5.0, 1.0]],
            [[19.0, 51.0, 26.0, 3.0, 1.0], [21.0, 49.0, 25.0, 4.0, 1.0]],
        ];
        let base_sums = [[9.1, 9.3], [9.0, 9.2], [9.2, 9.1]];
        let can = [[8.0, 35.0, 45.0, 10.0, 2.0], [7.0, 33.0, 47.0, 11.0, 2.0]];
        let can_sums = [14.8, 15.2];
        let obs = |host: &str, k: u64, counts: &[f64; 5], sum: f64| {
            let mut cumulative = Vec::new();
            let mut running = 0.0;
            for c in &counts[..4] {
                running += c;
                cumulative.push(running);
            }
            let count = counts.iter().sum();
            Observation {
                host: host.into(),
                interval: k,
                sample: Sample::Histogram { buckets: cumulative, sum, count },
            }
        };
        let mut m = watcher(&latency());
        let mut results = Vec::new();
        for k in 0..2 {
            let b: Vec<_> = (0..3).map(|i| obs(&format!("b{i}"), k as u64, &base[i][k], base_sums[i][k])).collect();
            m.observe(&b, &[obs("c0", k as u64, &can[k], can_sums[k])]);
            results.push(m.verdict(false));
        }
        close(results[0].evidence.statistic, 4.252954603750974, 1e-9);
        close(results[0].evidence.p_value, 0.0008528646377354335, 1e-7);
        let last = &results[1].evidence;
        close(last.baseline, 0.07976190476190477, 1e-12);
        close(last.canary, 0.12771739130434784, 1e-12);
        close(last.statistic, 6.352791612303349, 1e-9);
        close(last.p_value, 1.861852268247511e-08, 1e-6);
        // The change the ranks give (every request scaled by one factor), and its bound.
        close(results[0].evidence.effect, 0.43920654177630025, 1e-8);
        close(last.effect, 0.4848682993029423, 1e-8);
        close(m.verdict(true).evidence.bad_effect_upper.expect("bounded"), 0.9321904244894337, 1e-7);
        close(m.clone().end_look().evidence.bad_effect_upper.expect("bounded"), 0.6651673616097116, 1e-7);
        assert_eq!(results[1].verdict, Verdict::Inconclusive, "alpha 1e-9 is not reached");
        assert_eq!(
            results[1].summary(),
            "http_request_duration_seconds median 79.8ms → 128ms (+48% by rank, p=1.9e-8): a change of +48% but \
             not significant (p 1.9e-8 > 1.0e-9)"
        );
    }

    #[test]
    fn the_change_the_ranks_give_inverts_a_scaling_of_every_request() {
        // A fleet's pooled latencies in Prometheus' default buckets, nothing above 1 s: its
        // shares of the whole once summed to 1 − ε and read as "no data" (AUC ½), which made
        // every scaling look like ×31 and let an A/A wave's noise pass the min_effect gate.
        let bounds = crate::immune::sim::DEFAULT_BUCKETS;
        let reference = [3.0, 206.0, 8113.0, 27238.0, 29914.0, 10463.0, 348.0, 6.0, 0.0, 0.0, 0.0, 0.0];
        for factor in [0.8, 1.0, 1.1, 1.5, 3.0] {
            let auc = shifted_auc(&reference, &bounds, factor);
            assert!((factor - 1.0) * (auc - 0.5) >= 0.0, "×{factor}: AUC {auc}");
            close(rank_scale(&reference, &bounds, auc), factor, 1e-6);
        }
        close(shifted_auc(&reference, &bounds, 1.0), 0.5, 1e-12);
    }

    #[test]
    fn a_histograms_quantiles_match_the_reference() {
        // numpy.interp on the cumulative counts (scripts/reference/immune_reference.py).
        let bounds = [0.05, 0.1, 0.25, 0.5];
        close(bucket_quantile(&[20.0, 50.0, 25.0, 4.0, 1.0], &bounds, 0.5), 0.08, 1e-12);
        close(bucket_quantile(&[20.0, 50.0, 25.0, 4.0, 1.0], &bounds, 0.9), 0.22, 1e-12);
        close(bucket_quantile(&[2.0, 10.0, 40.0, 40.0, 8.0], &bounds, 0.5), 0.2425, 1e-12);
        assert_eq!(bucket_quantile(&[0.0, 0.0, 1.0, 0.0, 9.0], &bounds, 0.5), 0.5, "in +Inf: the last bound");
        close(bucket_quantile(&[3.0, 0.0, 0.0, 0.0, 0.0], &bounds, 0.5), 0.025, 1e-12);
        assert!(bucket_quantile(&[0.0; 5], &bounds, 0.5).is_nan());
    }

    #[test]
    fn a_histogram_without_sum_is_still_reverted_on_its_ranks() {
        // The service exports buckets but no `_sum`: every sum is 0. The canary's requests are about
        // three times slower; the gate uses the median the buckets give, not the (absent) mean.
        let obs = |host: String, k: u64, counts: [f64; 5]| {
            let mut cumulative = Vec::new();
            let mut running = 0.0;
            for c in &counts[..4] {
                running += c;
                cumulative.push(running);
            }
            let count = counts.iter().sum();
            Observation { host, interval: k, sample: Sample::Histogram { buckets: cumulative, sum: 0.0, count } }
        };
        let base = [[20.0, 50.0, 25.0, 4.0, 1.0], [22.0, 48.0, 26.0, 3.0, 1.0], [18.0, 52.0, 24.0, 5.0, 1.0]];
        let mut m = monitor(&latency());
        for k in 0..10 {
            let b: Vec<_> = base.iter().enumerate().map(|(i, c)| obs(format!("b{i}"), k, *c)).collect();
            m.observe(&b, &[obs("c0".into(), k, [2.0, 10.0, 40.0, 40.0, 8.0])]);
        }
        let r = m.verdict(false);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        // The ranks say every request is about 3.3 times slower (the medians, 80 → 243 ms, 3.0).
        assert!(
            r.summary().starts_with("http_request_duration_seconds median 80.0ms → 243ms (+234% by rank"),
            "{}",
            r.summary()
        );
        // The same service, healthy: the median does not move and the wave passes.
        let mut m = monitor(&latency());
        for k in 0..30 {
            let b: Vec<_> = base.iter().enumerate().map(|(i, c)| obs(format!("b{i}"), k, *c)).collect();
            m.observe(&b, &[obs("c0".into(), k, base[k as usize % 3])]);
        }
        assert_eq!(m.verdict(true).verdict, Verdict::Pass, "{:?}", m.verdict(true));
    }

    #[test]
    fn a_gauge_look_matches_the_reference() {
        let spec = MetricSpec { name: "cpu_percent".into(), kind: MetricKind::Gauge, bad: Bad::Increase };
        let base = [[41.0, 43.0, 40.0], [45.0, 44.0, 47.0], [38.0, 40.0, 39.0], [42.0, 41.0, 44.0]];
        let can = [[55.0, 58.0, 54.0], [60.0, 57.0, 59.0]];
        let gauge = |host: String, k: usize, v: f64| Observation { host, interval: k as u64, sample: Sample::Gauge(v) };
        let mut m = watcher(&spec);
        let mut results = Vec::new();
        for k in 0..3 {
            let b: Vec<_> = base.iter().enumerate().map(|(i, h)| gauge(format!("b{i}"), k, h[k])).collect();
            let c: Vec<_> = can.iter().enumerate().map(|(i, h)| gauge(format!("c{i}"), k, h[k])).collect();
            m.observe(&b, &c);
            results.push(m.verdict(false));
        }
        close(results[0].evidence.statistic, 6.033977866125207, 1e-9);
        close(results[0].evidence.df, 4.0, 1e-9);
        close(results[0].evidence.p_value, 0.12152188456543266, 1e-7);
        close(results[1].evidence.df, 7.833714118252916, 1e-9);
        close(results[1].evidence.p_value, 0.002579042067743866, 1e-7);
        let last = &results[2].evidence;
        close(last.statistic, 6.8814114947526805, 1e-9);
        close(last.df, 5.463599170634333, 1e-9);
        // The always-valid p-value is the smallest so far (look 2's).
        close(last.p_value, 0.002579042067743866, 1e-7);
        close(m.verdict(true).evidence.bad_effect_upper.expect("bounded"), 0.6573612610929475, 1e-7);
        close(m.clone().end_look().evidence.bad_effect_upper.expect("bounded"), 0.4500196560554725, 1e-9);
        assert_eq!(results[2].verdict, Verdict::Inconclusive, "alpha 1e-9 is not reached");
        assert!(results[2].summary().starts_with("cpu_percent 42.0 → 57.2 (+36%, p=0.0026): a change of +36%"));
    }

    #[test]
    fn errors_against_a_baseline_without_any_are_a_fail() {
        let mut m = monitor(&error_rate());
        // Five baseline hosts with no errors at all (no 5xx series), one canary at 1 %.
        feed_ratio(&mut m, 15, &[(0.0, 200.0); 5], &[(2.0, 200.0)]);
        let r = m.verdict(false);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(r.evidence.effect.is_infinite());
        assert!(r.summary().starts_with("error_rate 0% → 1.0% (new, p="), "{}", r.summary());
    }

    #[test]
    fn a_single_error_against_a_zero_baseline_is_not_enough_to_fail() {
        let mut m = monitor(&error_rate());
        feed_ratio(&mut m, 1, &[(0.0, 200.0); 5], &[(1.0, 200.0)]);
        assert_ne!(m.verdict(false).verdict, Verdict::Fail);
    }

    #[test]
    fn no_data_is_inconclusive_and_holds_the_wave_at_the_end() {
        let mut m = monitor(&error_rate());
        let r = m.verdict(true);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.holds_wave());
        m.observe(&[], &[]);
        let r = m.verdict(true);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.evidence.note.as_deref().is_some_and(|n| n.starts_with("no data")), "{r:?}");
        assert_eq!(decide_wave(&[r], true), WaveAction::Hold);
        // No baseline: errors on the canary alone cannot be judged.
        let mut m = monitor(&error_rate());
        feed_ratio(&mut m, 10, &[], &[(20.0, 200.0)]);
        let r = m.verdict(true);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.summary().contains("no baseline data"), "{}", r.summary());
    }

    #[test]
    fn too_little_traffic_is_inconclusive_not_a_pass() {
        let mut m = monitor(&error_rate());
        feed_ratio(&mut m, 3, &[(0.0, 10.0); 5], &[(0.0, 10.0)]);
        let r = m.verdict(true);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.summary().contains("too little data: baseline 150, canary 30"), "{}", r.summary());
    }

    #[test]
    fn a_clear_regression_fails_and_a_clear_improvement_passes() {
        let mut worse = monitor(&error_rate());
        feed_ratio(&mut worse, 15, &[(1.0, 200.0); 5], &[(10.0, 200.0)]);
        let r = worse.verdict(false);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(decide_wave(std::slice::from_ref(&r), false), WaveAction::Revert);
        assert!(r.summary().starts_with("error_rate 0.50% → 5.0% (+900%, p="), "{}", r.summary());

        let mut better = monitor(&error_rate());
        feed_ratio(&mut better, 30, &[(10.0, 1000.0); 5], &[(2.0, 1000.0)]);
        let r = better.verdict(true);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert_eq!(decide_wave(&[r], true), WaveAction::Promote);
    }

    #[test]
    fn a_small_but_significant_change_below_min_effect_does_not_fail() {
        // No host spread assumed, so that +10 % on a lot of traffic is highly significant.
        let settings = Settings { ratio_host_spread: 0.0, ..Settings::default() };
        let mut m = Monitor::new(&error_rate(), &settings, Budget { metrics: 2, waves: 1 }).expect("valid settings");
        feed_ratio(&mut m, 30, &[(100.0, 10_000.0); 5], &[(550.0, 50_000.0); 5]);
        let r = m.verdict(true);
        assert!(r.evidence.p_value < 1e-6, "{r:?}");
        assert_eq!(r.verdict, Verdict::Pass);
    }

    #[test]
    fn an_unusual_but_healthy_host_is_judged_against_the_spread_of_the_baseline_hosts() {
        // Baseline hosts' own rates range from 0.2 % to 1.0 %; a canary at 2.0 % is unusual, not damning.
        let base = [(2.0, 1000.0), (4.0, 1000.0), (6.0, 1000.0), (8.0, 1000.0), (10.0, 1000.0)];
        let mut m = monitor(&error_rate());
        feed_ratio(&mut m, 30, &base, &[(20.0, 1000.0)]);
        let r = m.verdict(true);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        // Against five baseline hosts that all run at 0.6 %, the same canary is a regression.
        let mut m = monitor(&error_rate());
        feed_ratio(&mut m, 30, &[(6.0, 1000.0); 5], &[(20.0, 1000.0)]);
        assert_eq!(m.verdict(true).verdict, Verdict::Fail);
    }

    #[test]
    fn a_drop_fails_when_a_decrease_is_bad() {
        let purchases =
            MetricSpec { name: "purchases_per_request".into(), kind: MetricKind::Ratio, bad: Bad::Decrease };
        let mut m = monitor(&purchases);
        feed_ratio(&mut m, 30, &[(20.0, 1000.0); 3], &[(8.0, 1000.0); 3]);
        let r = m.verdict(false);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(r.summary().starts_with("purchases_per_request 2.0% → 0.80% (-60%, p="), "{}", r.summary());
        let mut m = monitor(&purchases);
        feed_ratio(&mut m, 30, &[(20.0, 1000.0); 3], &[(40.0, 1000.0); 3]);
        assert_eq!(m.verdict(true).verdict, Verdict::Pass);
    }

    #[test]
    fn a_fail_is_kept_with_the_evidence_of_the_failing_look() {
        let mut m = monitor(&error_rate());
        feed_ratio(&mut m, 15, &[(1.0, 200.0); 5], &[(10.0, 200.0)]);
        let failed = m.verdict(false);
        assert_eq!(failed.verdict, Verdict::Fail);
        feed_ratio(&mut m, 30, &[(1.0, 200.0); 5], &[(1.0, 200.0)]);
        let later = m.verdict(true);
        assert_eq!(later.verdict, Verdict::Fail);
        assert_eq!(later.evidence, failed.evidence);
    }

    #[test]
    fn malformed_and_repeated_observations_are_dropped() {
        let mut m = monitor(&error_rate());
        let b: Vec<_> = (0..5).map(|i| ratio(&format!("b{i}"), 0, 1.0, 200.0)).collect();
        let bad = [
            ratio("c0", 0, -1.0, 200.0),
            ratio("c0", 0, f64::NAN, 200.0),
            Observation { host: "c0".into(), interval: 0, sample: Sample::Gauge(1.0) },
        ];
        m.observe(&b, &bad);
        m.observe(&[], &[ratio("c0", 1, 1.0, 200.0), ratio("c0", 1, 50.0, 200.0), ratio("c0", 0, 50.0, 200.0)]);
        let r = m.verdict(false);
        assert_eq!(r.evidence.canary_n, 200, "the repeated interval 1 and the older interval 0 are ignored");
        assert!(r.evidence.note.as_deref().is_some_and(|n| n.contains("3 malformed observations dropped")), "{r:?}");
        let spec = MetricSpec { kind: MetricKind::Histogram { bounds: vec![0.1, 0.2] }, ..latency() };
        let mut m = monitor(&spec);
        let going_down = Sample::Histogram { buckets: vec![5.0, 3.0], sum: 1.0, count: 6.0 };
        m.observe(&[Observation { host: "b".into(), interval: 0, sample: going_down }], &[]);
        assert!(m.verdict(false).evidence.note.as_deref().is_some_and(|n| n.contains("1 malformed")));
    }

    #[test]
    fn the_last_wave_compares_with_an_earlier_window_of_the_old_release() {
        let earlier: Vec<_> =
            (0..30).flat_map(|k| (0..6).map(move |h| ratio(&format!("h{h}"), k, 1.0, 200.0))).collect();
        let budget = Budget { metrics: 2, waves: 3 };
        let mut m = Monitor::against_window(&error_rate(), &Settings::default(), budget, &earlier).expect("valid");
        for k in 100..115 {
            let now: Vec<_> = (0..6).map(|h| ratio(&format!("h{h}"), k, 6.0, 200.0)).collect();
            m.observe(&[], &now);
        }
        let r = m.verdict(false);
        assert_eq!(r.verdict, Verdict::Fail);
        close(r.evidence.alpha, 0.01 / 6.0, 1e-12);
        assert_eq!((r.evidence.baseline_hosts, r.evidence.canary_hosts), (6, 6));
    }

    #[test]
    fn a_histogram_or_gauge_needs_three_hosts_to_measure_their_spread() {
        let spec = MetricSpec { name: "cpu_percent".into(), kind: MetricKind::Gauge, bad: Bad::Increase };
        let mut m = monitor(&spec);
        for k in 0..30 {
            let b = [Observation { host: "b".into(), interval: k, sample: Sample::Gauge(40.0 + (k % 3) as f64) }];
            let c = [Observation { host: "c".into(), interval: k, sample: Sample::Gauge(90.0 + (k % 3) as f64) }];
            m.observe(&b, &c);
        }
        let r = m.verdict(true);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.summary().contains("host-to-host spread not measurable"), "{}", r.summary());
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = Settings { alpha: 0.0, ..Settings::default() };
        assert_eq!(
            Monitor::new(&error_rate(), &bad, Budget { metrics: 1, waves: 1 }).err(),
            Some(SettingsError::Alpha(0.0))
        );
        let unsorted = MetricSpec { kind: MetricKind::Histogram { bounds: vec![0.2, 0.1] }, ..latency() };
        assert!(matches!(
            Monitor::new(&unsorted, &Settings::default(), Budget { metrics: 1, waves: 1 }),
            Err(SettingsError::Bounds(_))
        ));
        assert_eq!(
            Monitor::new(&error_rate(), &Settings::default(), Budget { metrics: 0, waves: 1 }).err(),
            Some(SettingsError::Budget)
        );
    }

    /// Feeds look `k` of a regressed canary wave: three baseline hosts at 0.5 %, one canary at
    /// 1.5 %, 400 requests each, and histograms whose canary is a little slower.
    fn wave_look(k: u64, spec: &MetricSpec) -> (Vec<Observation>, Vec<Observation>) {
        let obs = |host: &str, bad: bool| match &spec.kind {
            MetricKind::Ratio => ratio(host, k, if bad { 6.0 } else { 2.0 } + (k % 2) as f64, 400.0),
            _ => {
                // A slightly slower canary, which never reaches the watcher's tiny alpha (a failed
                // test is not recorded: the judge reverts instead).
                let buckets =
                    if bad { vec![36.0, 146.0, 296.0, 380.0, 400.0] } else { vec![40.0, 150.0, 300.0, 380.0, 400.0] };
                Observation {
                    host: host.into(),
                    interval: k,
                    sample: Sample::Histogram { buckets, sum: 80.0, count: 400.0 },
                }
            }
        };
        (vec![obs("b0", false), obs("b1", false), obs("b2", false)], vec![obs("c0", true)])
    }

    /// A monitor resumed from another's recorded state, fed the same later looks, is the same
    /// test: the same verdict, p-value and looks at every later look as the one that went on, for
    /// a ratio judged against each host's past and for a histogram; and it does not count again
    /// an interval it was recorded with.
    #[test]
    fn a_resumed_monitor_goes_on_as_the_one_that_recorded_it() {
        let past: Vec<Observation> = ["b0", "b1", "b2", "c0"]
            .iter()
            .flat_map(|h| (0..20).map(move |k| ratio(h, 1000 + k, 2.0, 400.0)))
            .collect();
        for spec in [error_rate(), latency()] {
            let mut going_on = watcher(&spec);
            going_on.with_history(&past);
            for k in 0..4 {
                let (b, c) = wave_look(k, &spec);
                going_on.observe(&b, &c);
            }
            let state = going_on.state();
            let budget = Budget { metrics: 10_000, waves: 1_000 };
            let mut resumed = Monitor::resume(&spec, &Settings::default(), budget, &state).expect("resumes");
            assert_eq!(resumed.verdict(false), going_on.verdict(false), "{}: the recorded look", spec.name);
            assert_eq!(resumed.state(), state, "{}: state → resume → state", spec.name);
            // The recorded last look arrives again (an agent resends it): not counted twice.
            let (b, c) = wave_look(3, &spec);
            resumed.observe(&b, &c);
            going_on.observe(&[], &[]);
            assert_eq!(resumed.verdict(false), going_on.verdict(false), "{}: a repeated interval", spec.name);
            for k in 4..12 {
                let (b, c) = wave_look(k, &spec);
                going_on.observe(&b, &c);
                resumed.observe(&b, &c);
                assert_eq!(resumed.verdict(false), going_on.verdict(false), "{} look {k}", spec.name);
            }
            assert_eq!(resumed.looks(), 13);
            if spec.kind == MetricKind::Ratio {
                let note = resumed.verdict(false).evidence.note.unwrap_or_default();
                assert!(note.contains("each host against its own past"), "the pre-deploy reference kept: {note}");
            }
        }
    }

    /// Each host's past at 1 % errors: 300 intervals of 200 requests with 2 errors each.
    fn steady_past() -> Vec<Observation> {
        ["b0", "b1", "b2", "b3", "b4", "c0"]
            .iter()
            .flat_map(|h| (0..300).map(move |k| ratio(h, 1000 + k, 2.0, 200.0)))
            .collect()
    }

    /// One look of five baseline hosts at 1 % and one canary host at `canary` errors of 200.
    fn past_and_now(m: &mut Monitor, k: u64, canary: f64) {
        let b: Vec<_> = (0..5).map(|i| ratio(&format!("b{i}"), 2000 + k, 2.0, 200.0)).collect();
        m.observe(&b, &[ratio("c0", 2000 + k, canary, 200.0)]);
    }

    /// The end look passes a healthy canary the always-valid rule has not passed yet, holds one
    /// whose change is at the tolerance, and is taken once: more data after it change neither.
    #[test]
    fn the_end_look_passes_what_the_data_bound_and_is_taken_once() {
        // 20 looks of a canary exactly at the fleet's rate: the change is 0 with a fixed bound
        // of +27 % (under +50 %), while the always-valid bound is still wider.
        let mut healthy = monitor(&error_rate());
        healthy.with_history(&steady_past());
        for k in 0..20 {
            past_and_now(&mut healthy, k, 2.0);
        }
        let before = healthy.verdict(true);
        assert_eq!(before.verdict, Verdict::Inconclusive, "{before:?}");
        assert!(before.evidence.bad_effect_upper.expect("bounded") > 0.5, "{before:?}");
        // Before its end look the verdict says what happens next (baking on, then one last look
        // that may pass it), not that the wave is held: this one's end look passes it.
        let said = before.summary();
        assert!(said.contains("baking on while more data can decide, up to max_bake"), "{said}");
        assert!(!said.contains("hold the wave for a person"), "{said}");
        let end = healthy.end_look();
        assert_eq!(end.verdict, Verdict::Pass, "{end:?}");
        let upper = end.evidence.bad_effect_upper.expect("bounded");
        assert!(upper < 0.5, "{end:?}");
        // Reference: exp(z · sd) − 1 with sd² = (1 + 1/5)(1/40.5 + 1/600.5 + 0.05²) (no
        // dispersion, no spread above the floor), z = scipy.stats.norm.isf(0.096): the prior
        // ratio (ln 1.5 / sd)² is 4.75, whose level (END_LEVELS at 5) is 9.6 %, not the 5 %
        // halves of β would give.
        let sd = (1.2f64 * (1.0 / 40.5 + 1.0 / 600.5 + 0.0025)).sqrt();
        close(upper, (1.3046853852287894 * sd).exp() - 1.0, 1e-9);
        close(upper, 0.27479268034870286, 1e-9);
        // Later looks of a worse canary do not take the end look again (they could still revert).
        for k in 20..25 {
            past_and_now(&mut healthy, k, 3.0);
        }
        assert_eq!(healthy.end_look(), healthy.verdict(true));
        assert_eq!(healthy.verdict(true).verdict, Verdict::Pass);
        assert!(healthy.ended());

        // The same data with the canary's rate +50 %: its bound is above +50 %, held.
        let mut tolerance = monitor(&error_rate());
        tolerance.with_history(&steady_past());
        for k in 0..20 {
            past_and_now(&mut tolerance, k, 3.0);
        }
        let end = tolerance.end_look();
        assert_eq!(end.verdict, Verdict::Inconclusive, "{end:?}");
        assert!(end.summary().contains("at the end of the bake the 90."), "{}", end.summary());
        assert!(end.summary().contains("end of bake: hold the wave for a person"), "{}", end.summary());
        // Healthy data afterwards do not get a second end look.
        for k in 20..200 {
            past_and_now(&mut tolerance, k, 2.0);
        }
        assert_eq!(tolerance.end_look().verdict, Verdict::Inconclusive);
    }

    /// A look that counted no event on either side passes only while nothing is counted: its
    /// zero-noise bound is not kept as evidence for later looks. (It was: at 20 req/s and 0.5%
    /// errors the first usable look of a 4 + 2 wave counts nothing in about 4% of waves, and
    /// such a wave passed a +50% regression whenever a later look's change was under
    /// `min_effect`; the tolerance cell passed 10.3% against the promised 10%.)
    #[test]
    fn a_look_that_counted_nothing_passes_only_while_nothing_is_counted() {
        let mut m = monitor(&error_rate());
        m.with_history(&steady_past());
        let b: Vec<_> = (0..5).map(|i| ratio(&format!("b{i}"), 1999, 0.0, 200.0)).collect();
        m.observe(&b, &[ratio("c0", 1999, 0.0, 200.0)]);
        let empty = m.verdict(true);
        assert_eq!(empty.verdict, Verdict::Pass, "{empty:?}");
        assert_eq!(empty.evidence.pass_p_value, 0.0, "{empty:?}");
        // Then 20 looks of a canary at the fleet's rate: the same data that leave the
        // always-valid bound above +50 % without the empty look (the end look's test above).
        for k in 0..20 {
            past_and_now(&mut m, k, 2.0);
        }
        let after = m.verdict(true);
        assert_eq!(after.verdict, Verdict::Inconclusive, "{after:?}");
        assert!(after.evidence.pass_p_value > 0.05, "{after:?}");
        assert!(after.evidence.bad_effect_upper.expect("bounded") > 0.5, "{after:?}");
        // Its state (what a new leader resumes) holds no infinite evidence.
        assert!(m.state().best_pass.is_finite(), "{:?}", m.state().best_pass);

        // A metric that never counts anything still passes (no error to regress from).
        let mut quiet = monitor(&error_rate());
        feed_ratio(&mut quiet, 30, &[(0.0, 200.0); 5], &[(0.0, 200.0)]);
        assert_eq!(quiet.verdict(true).verdict, Verdict::Pass);
    }

    /// A failed test stays failed when resumed; a state of another alpha share, or one no monitor
    /// records, is refused rather than continued.
    #[test]
    fn a_resumed_state_keeps_its_failure_and_bad_states_are_refused() {
        let budget = Budget { metrics: 1, waves: 1 };
        let mut failing = Monitor::new(&error_rate(), &Settings::default(), budget).unwrap();
        feed_ratio(&mut failing, 6, &[(2.0, 400.0), (1.0, 400.0), (2.0, 400.0)], &[(30.0, 400.0)]);
        assert_eq!(failing.verdict(false).verdict, Verdict::Fail);
        let state = failing.state();
        let resumed = Monitor::resume(&error_rate(), &Settings::default(), budget, &state).unwrap();
        assert_eq!(resumed.verdict(false).verdict, Verdict::Fail);
        assert_eq!(resumed.p_value(), failing.p_value());

        let other = Budget { metrics: 2, waves: 1 };
        let err = Monitor::resume(&error_rate(), &Settings::default(), other, &state).unwrap_err();
        assert!(err.to_string().contains("recorded with alpha 0.01 where this test has 0.005"), "{err}");
        let bad = |change: fn(&mut TestState)| {
            let mut s = state.clone();
            change(&mut s);
            Monitor::resume(&error_rate(), &Settings::default(), budget, &s).unwrap_err().to_string()
        };
        assert!(bad(|s| s.min_p = 0.0).contains("p-value 0 is not in (0, 1]"));
        assert!(bad(|s| s.min_p = f64::NAN).contains("not in (0, 1]"));
        assert!(bad(|s| s.canary[0].num = f64::INFINITY).contains("canary host c0 has a negative or non-finite total"));
        assert!(bad(|s| s.baseline[1].den = -1.0).contains("baseline host b1"));
        assert!(bad(|s| s.baseline[1].host = "b0".into()).contains("baseline host b0 appears twice"));
        assert!(bad(|s| s.canary[0].buckets = vec![1.0]).contains("has 1 buckets, not 0"));
        let hist = Monitor::resume(&latency(), &Settings::default(), budget, &state);
        assert!(hist.is_ok(), "ratio totals carry no buckets, which a histogram may also lack");
    }

    /// The end look's level: the reference's table (computed by scripts/reference/
    /// immune_reference.py on a grid, each value at most 0.0015 under the computed one and a Monte
    /// Carlo run confirming P(early or end) ≤ 0.1 at r 12), read at the next tabulated ratio, never
    /// below β/2 and β/2 beyond the table or for another β.
    #[test]
    fn the_end_looks_level_spends_what_the_early_pass_leaves() {
        close(end_level(0.1, 12.0), 0.090, 1e-12);
        close(end_level(0.1, 11.9), 0.090, 1e-12);
        close(end_level(0.1, 12.1), 0.089, 1e-12);
        close(end_level(0.1, 4.75), 0.096, 1e-12);
        close(end_level(0.1, 0.01), 0.099, 1e-12);
        close(end_level(0.1, 500.0), 0.066, 1e-12);
        close(end_level(0.1, 501.0), 0.05, 1e-12);
        close(end_level(0.1, f64::INFINITY), 0.05, 1e-12);
        close(end_level(0.2, 12.0), 0.1, 1e-12);
        close(end_level(0.1, f64::NAN), 0.05, 1e-12);
        assert!(END_LEVELS.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 >= w[1].1), "ratios rise, levels fall");
        // The one-canary fleet at 100 req/s after 5 minutes (sd 0.1146, README's sizing; ratio
        // 12.5, read at 14): 8.9 %, so its healthy waves are held at Φ(z_0.911 − ln 1.5 / sd) at
        // the limit (scipy: norm.cdf(norm.isf(0.089) − log(1.5) / 0.1146)), not 2.9 %.
        let sd = 0.1146f64;
        let level = end_level(0.1, (1.5f64.ln() / sd).powi(2));
        close(level, 0.089, 1e-12);
        let held = Normal::standard().cdf(normal_isf(level) - 1.5f64.ln() / sd);
        close(held, 0.014220421903936128, 1e-9);
    }

    /// A spread of hosts' changes learned from past waves (`immune::spread`) replaces the fixed
    /// 5% floor, and a wave's baseline hosts give the sample that teaches it; both against the
    /// reference (`learned spread` and `busy change look` in scripts/reference/immune_reference.py).
    #[test]
    fn a_learned_spread_of_changes_judges_as_the_reference_says() {
        let before =
            [("b0", 1800.0, 360000.0), ("b1", 1750.0, 360000.0), ("b2", 1850.0, 360000.0), ("c0", 1800.0, 360000.0)];
        let after = [("b0", 150.0, 30000.0), ("b1", 146.0, 30000.0), ("b2", 155.0, 30000.0)];
        let look = |settings: &Settings| {
            let mut m = Monitor::new(&error_rate(), settings, Budget { metrics: 10_000, waves: 1_000 }).unwrap();
            m.with_history(&before.iter().map(|(h, n, d)| ratio(h, 0, *n, *d)).collect::<Vec<_>>());
            m.observe(
                &after.iter().map(|(h, n, d)| ratio(h, 1, *n, *d)).collect::<Vec<_>>(),
                &[ratio("c0", 1, 180.0, 30000.0)],
            );
            m
        };
        let floor = look(&Settings::default());
        let sample = floor.spread_sample().expect("three baseline hosts with a past");
        close(sample.excess, -0.014363580957668194, 1e-9);
        assert_eq!(sample.df, 2.0);
        // Three earlier waves of four degrees of freedom each saying τ = 1%.
        let mut learned = crate::immune::spread::LearnedSpread::default();
        for wave in 0..3 {
            let s = crate::immune::spread::SpreadSample { metric: "error_rate".into(), excess: 4.0 * 1e-4, df: 4.0 };
            learned.fold(1, wave, &[s]);
        }
        let spread = learned.spread("error_rate").expect("10.84 degrees of freedom");
        close(spread, 0.01, 1e-12);
        let taught = look(&Settings { change_host_spread: spread, ..Settings::default() });
        let (e0, e1) = (floor.verdict(false).evidence, taught.verdict(false).evidence);
        close(e0.statistic, 1.6515352242778754, 1e-9);
        close(e1.statistic, 1.9337762372042493, 1e-9);
        close(e1.p_value, 0.768331142850731, 1e-7);
        close(taught.verdict(true).evidence.bad_effect_upper.expect("bounded"), 0.5594074195382674, 1e-7);
        close(floor.clone().end_look().evidence.bad_effect_upper.expect("bounded"), 0.38550936046094764, 1e-9);
        close(taught.clone().end_look().evidence.bad_effect_upper.expect("bounded"), 0.3585826055940642, 1e-9);
        // A histogram, or a ratio without a past, teaches nothing.
        assert!(watcher(&latency()).spread_sample().is_none());
        let mut no_past = watcher(&error_rate());
        no_past.observe(&after.iter().map(|(h, n, d)| ratio(h, 1, *n, *d)).collect::<Vec<_>>(), &[]);
        assert!(no_past.spread_sample().is_none());
    }
}
