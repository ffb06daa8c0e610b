//! A seeded, deterministic fleet simulator that drives [`super::analysis`] exactly as the rollout
//! controller will: one `observe` per scrape interval, a verdict after each, revert on the first
//! `Fail`. No network, no clock, no sleeping: a rollout is a loop over intervals, and the same seed
//! gives the same outcome on every machine.
//!
//! The world model (per wave: `baseline_hosts` on the old release, `canary_hosts` on the new one):
//!
//! - **Traffic**: each host's requests per interval are Poisson, around `requests_per_second` times a
//!   host weight (Gamma, CV `traffic_host_cv`) times a fleet-wide swing (a sine of amplitude
//!   `traffic_swing` over `swing_period`, random phase).
//! - **Errors**: each host's error rate is the fleet rate times a persistent host effect (Gamma, mean 1,
//!   CV `error_host_cv`), times a per host-interval burst (Gamma, CV `error_burst_cv`), times a slow
//!   fleet-wide drift (a log random walk, step `drift_sd` per interval). Errors and successes are
//!   independent Poisson counts (the thinning of Poisson traffic).
//! - **Latency**: log-normal per request, median `latency_median` times a persistent host effect
//!   (log-normal, sd `latency_host_sd`) times its own fleet-wide drift. Bucket counts are independent
//!   Poisson draws of the bucket probabilities (again Poisson thinning); the `_sum` delta is each
//!   bucket's count times the log-normal's mean within that bucket.
//! - **Regression**: applied to the canary hosts from the first interval: the error rate or the latency
//!   multiplied by a factor.
//!
//! The samplers (Poisson, Gamma, normal) are small and written here, with tests of their moments.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::gamma::ln_gamma;

use super::analysis::{
    decide_wave, Bad, Budget, MetricKind, MetricSpec, Monitor, Observation, Sample, Settings, Verdict, WaveAction,
};

/// Prometheus' default histogram buckets, in seconds.
pub const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The simulated fleet and its noise.
#[derive(Clone, Debug, PartialEq)]
pub struct Fleet {
    /// Mean requests per second per host.
    pub requests_per_second: f64,
    /// Coefficient of variation of the hosts' traffic weights.
    pub traffic_host_cv: f64,
    /// Relative amplitude of the fleet-wide traffic swing.
    pub traffic_swing: f64,
    /// Period of that swing.
    pub swing_period: Duration,
    /// The fleet's error rate (errors per request).
    pub error_rate: f64,
    /// Coefficient of variation of the hosts' persistent error-rate effects.
    pub error_host_cv: f64,
    /// Coefficient of variation of the per host-interval error bursts.
    pub error_burst_cv: f64,
    /// Median request latency, seconds.
    pub latency_median: f64,
    /// Log-scale standard deviation of one request's latency.
    pub latency_sigma: f64,
    /// Log-scale standard deviation of the hosts' persistent latency effects.
    pub latency_host_sd: f64,
    /// Log-scale step per interval of the fleet-wide drift (errors and latency, each its own walk).
    pub drift_sd: f64,
    /// Log-scale step per interval of each host's own drift of its error rate (a log random walk
    /// per host, in its past and during the wave): what makes a host's older past a worse
    /// reference for its present. 0.004 moves a host's rate over a 5-minute bake against its
    /// last 10 minutes by about 5% (one standard deviation), the spread of changes the judge
    /// assumes at least (`Settings::change_host_spread`).
    pub host_drift_sd: f64,
    /// Histogram bucket bounds, seconds.
    pub bounds: Vec<f64>,
    /// The scrape interval.
    pub interval: Duration,
    /// How long a wave bakes.
    pub bake: Duration,
    /// How long an undecided bake may be extended, in all (as `[immune] max_bake`; at most `bake`
    /// means no extension).
    pub max_bake: Duration,
    /// Share of hosts that are noisy neighbours: their error rate is `noisy_factor` times the others'.
    pub noisy_share: f64,
    /// See `noisy_share`.
    pub noisy_factor: f64,
    /// Probability that a host's report of an interval is lost (a failed scrape: its data are gone).
    pub missing_scrapes: f64,
    /// How much of every host's past (on the old release, before the wave) the error-rate monitor
    /// gets, to judge each host against itself ([`Monitor::with_history`]); zero for none.
    pub history: Duration,
    /// Whether the latency histogram is watched beside the error rate (as the default
    /// scenarios do); without it only `error_rate` is judged.
    pub watch_latency: bool,
}

impl Default for Fleet {
    /// The brief's fleet: 100 req/s per host, 0.5 % errors, 2 s scrapes, 60 s bake, with realistic
    /// host-to-host and interval-to-interval variation.
    fn default() -> Self {
        Fleet {
            requests_per_second: 100.0,
            traffic_host_cv: 0.1,
            traffic_swing: 0.2,
            swing_period: Duration::from_secs(600),
            error_rate: 0.005,
            error_host_cv: 0.15,
            error_burst_cv: 0.3,
            latency_median: 0.05,
            latency_sigma: 0.6,
            latency_host_sd: 0.03,
            drift_sd: 0.02,
            host_drift_sd: 0.0,
            bounds: DEFAULT_BUCKETS.to_vec(),
            interval: Duration::from_secs(2),
            bake: Duration::from_secs(60),
            max_bake: Duration::from_secs(60),
            noisy_share: 0.0,
            noisy_factor: 1.0,
            missing_scrapes: 0.0,
            history: Duration::ZERO,
            watch_latency: true,
        }
    }
}

/// What the new release does to the canary hosts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Regression {
    /// Nothing: an A/A rollout.
    None,
    /// Error rate multiplied by this factor.
    ErrorRate(f64),
    /// Latency multiplied by this factor.
    Latency(f64),
}

/// One wave to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The fleet.
    pub fleet: Fleet,
    /// Hosts on the new release.
    pub canary_hosts: usize,
    /// Hosts still on the old release.
    pub baseline_hosts: usize,
    /// What the release does.
    pub regression: Regression,
    /// The analysis settings.
    pub settings: Settings,
    /// How the rollout's alpha is shared.
    pub budget: Budget,
}

impl Scenario {
    /// The metrics the simulation watches: `error_rate` and (unless `Fleet::watch_latency` is off)
    /// `http_request_duration_seconds`.
    pub fn metrics(&self) -> Vec<MetricSpec> {
        let mut specs = vec![MetricSpec { name: "error_rate".into(), kind: MetricKind::Ratio, bad: Bad::Increase }];
        if self.fleet.watch_latency {
            specs.push(MetricSpec {
                name: "http_request_duration_seconds".into(),
                kind: MetricKind::Histogram { bounds: self.fleet.bounds.clone() },
                bad: Bad::Increase,
            });
        }
        specs
    }
}

/// How one simulated wave ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// When the release was reverted (time since the wave started), if it was.
    pub reverted_after: Option<Duration>,
    /// The first failing metric's one-line summary.
    pub reason: Option<String>,
    /// What the caller would do at the end (`Revert` if it was reverted).
    pub action: WaveAction,
    /// When that was decided (time since the wave started).
    pub decided_after: Duration,
    /// A held wave's first undecided metric, with its evidence (for the record).
    pub held_because: Option<String>,
}

/// Simulates one wave with its own seed.
pub fn run_wave(scenario: &Scenario, seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let fleet = &scenario.fleet;
    let specs = scenario.metrics();
    let mut monitors: Vec<Monitor> = specs
        .iter()
        .map(|spec| Monitor::new(spec, &scenario.settings, scenario.budget).expect("the scenario's settings are valid"))
        .collect();
    let hosts = scenario.baseline_hosts + scenario.canary_hosts;
    let names: Vec<String> = (0..hosts).map(|h| format!("host-{h}")).collect();
    let traffic: Vec<f64> = (0..hosts).map(|_| gamma_mean_one(&mut rng, fleet.traffic_host_cv)).collect();
    let error_effect: Vec<f64> = (0..hosts)
        .map(|_| {
            let noisy = if fleet.noisy_share > 0.0 && rng.random::<f64>() < fleet.noisy_share {
                fleet.noisy_factor
            } else {
                1.0
            };
            gamma_mean_one(&mut rng, fleet.error_host_cv) * noisy
        })
        .collect();
    let latency_effect: Vec<f64> =
        (0..hosts).map(|_| (fleet.latency_host_sd * standard_normal(&mut rng)).exp()).collect();
    let phase = rng.random::<f64>() * std::f64::consts::TAU;
    let (mut error_drift, mut latency_drift) = (0.0f64, 0.0f64);
    // Each host's own drift (drawn only when asked for, so a fleet without it keeps its seeds' draws).
    let mut host_drift = vec![0.0f64; hosts];
    let drift_hosts = |rng: &mut StdRng, host_drift: &mut [f64]| {
        if fleet.host_drift_sd > 0.0 {
            for d in host_drift.iter_mut() {
                *d += fleet.host_drift_sd * standard_normal(rng);
            }
        }
    };
    let seconds = fleet.interval.as_secs_f64();
    let intervals = (fleet.bake.as_secs_f64() / seconds).round().max(1.0) as u64;
    let most = (fleet.max_bake.as_secs_f64() / seconds).round().max(intervals as f64) as u64;
    let past = (fleet.history.as_secs_f64() / seconds).round() as u64;
    if past > 0 {
        // The hosts' past on the old release: the same host effects, bursts and drift; only the
        // error rate (the histogram monitor does not use history). The drifts are walks that end
        // where the wave starts, at the fleet's own rate: a longer past reaches further back,
        // not a wave at a rate the walk wandered to.
        let mut walks = Vec::with_capacity(past as usize);
        for _ in 0..past {
            error_drift += fleet.drift_sd * standard_normal(&mut rng);
            drift_hosts(&mut rng, &mut host_drift);
            walks.push((error_drift, host_drift.clone()));
        }
        let mut before = Vec::new();
        for (j, (fleet_walk, host_walk)) in walks.iter().enumerate() {
            let t = (j as f64 - past as f64) * seconds;
            let swing = 1.0
                + fleet.traffic_swing * (std::f64::consts::TAU * t / fleet.swing_period.as_secs_f64() + phase).sin();
            for h in 0..hosts {
                let requests = fleet.requests_per_second * seconds * traffic[h] * swing;
                let burst = gamma_mean_one(&mut rng, fleet.error_burst_cv);
                let drift = (fleet_walk - error_drift + host_walk[h] - host_drift[h]).exp();
                let p = (fleet.error_rate * error_effect[h] * burst * drift).min(1.0);
                let errors = poisson(&mut rng, requests * p);
                let successes = poisson(&mut rng, requests * (1.0 - p));
                if fleet.missing_scrapes > 0.0 && rng.random::<f64>() < fleet.missing_scrapes {
                    continue;
                }
                let sample = Sample::Ratio { num: errors, den: errors + successes };
                before.push(Observation { host: names[h].clone(), interval: j as u64, sample });
            }
        }
        error_drift = 0.0;
        host_drift.iter_mut().for_each(|d| *d = 0.0);
        monitors[0].with_history(&before);
    }
    for k in 0..most {
        error_drift += fleet.drift_sd * standard_normal(&mut rng);
        drift_hosts(&mut rng, &mut host_drift);
        latency_drift += fleet.drift_sd * standard_normal(&mut rng);
        let t = k as f64 * seconds;
        let swing =
            1.0 + fleet.traffic_swing * (std::f64::consts::TAU * t / fleet.swing_period.as_secs_f64() + phase).sin();
        let mut ratio = (Vec::new(), Vec::new());
        let mut histogram = (Vec::new(), Vec::new());
        for h in 0..hosts {
            let canary = h >= scenario.baseline_hosts;
            let requests = fleet.requests_per_second * seconds * traffic[h] * swing;
            let (error_factor, latency_factor) = match (canary, scenario.regression) {
                (true, Regression::ErrorRate(f)) => (f, 1.0),
                (true, Regression::Latency(f)) => (1.0, f),
                _ => (1.0, 1.0),
            };
            let burst = gamma_mean_one(&mut rng, fleet.error_burst_cv);
            let drift = (error_drift + host_drift[h]).exp();
            let p = (fleet.error_rate * error_effect[h] * burst * drift * error_factor).min(1.0);
            let errors = poisson(&mut rng, requests * p);
            let successes = poisson(&mut rng, requests * (1.0 - p));
            let median = fleet.latency_median * latency_effect[h] * latency_drift.exp() * latency_factor;
            let (buckets, sum, count) =
                latency_histogram(&mut rng, requests, median, fleet.latency_sigma, &fleet.bounds);
            let side = |pair: &mut (Vec<Observation>, Vec<Observation>), sample: Sample| {
                let o = Observation { host: names[h].clone(), interval: k, sample };
                if canary {
                    pair.1.push(o)
                } else {
                    pair.0.push(o)
                }
            };
            if fleet.missing_scrapes > 0.0 && rng.random::<f64>() < fleet.missing_scrapes {
                continue;
            }
            side(&mut ratio, Sample::Ratio { num: errors, den: errors + successes });
            side(&mut histogram, Sample::Histogram { buckets, sum, count });
        }
        monitors[0].observe(&ratio.0, &ratio.1);
        if let Some(m) = monitors.get_mut(1) {
            m.observe(&histogram.0, &histogram.1);
        }
        // `verdict(false)` decides as `verdict(true)` does; only the notes differ (a final look
        // also searches for the always-valid bound, which the simulation does not show).
        let results: Vec<_> = monitors.iter().map(|m| m.verdict(false)).collect();
        let elapsed = fleet.interval * (k as u32 + 1);
        if let Some(failed) = results.iter().find(|r| r.verdict == Verdict::Fail) {
            return Outcome {
                reverted_after: Some(elapsed),
                reason: Some(failed.summary()),
                action: WaveAction::Revert,
                decided_after: elapsed,
                held_because: None,
            };
        }
        // From the end of the bake, as the leader's judge does: promote when every metric passes,
        // else bake on while more data can decide, up to `max_bake`.
        if k + 1 >= intervals {
            let action = decide_wave(&results, true);
            let undecided = action == WaveAction::Hold && results.iter().all(|r| r.more_data_can_decide());
            if !undecided || k + 1 >= most {
                let (action, held_because) =
                    if action == WaveAction::Hold { end_looks(&mut monitors) } else { (action, None) };
                return Outcome { reverted_after: None, reason: None, action, decided_after: elapsed, held_because };
            }
        }
    }
    let decided_after = fleet.interval * most as u32;
    let (action, held_because) = end_looks(&mut monitors);
    Outcome { reverted_after: None, reason: None, action, decided_after, held_because }
}

/// The end of a wave's bake that cannot be extended, as the judge does it: every metric not yet
/// passed takes its one fixed-horizon look, and the wave is decided on the results (with the
/// first metric still undecided, if any).
fn end_looks(monitors: &mut [Monitor]) -> (WaveAction, Option<String>) {
    let results: Vec<_> = monitors
        .iter_mut()
        .map(|m| if m.verdict(true).verdict == Verdict::Inconclusive { m.end_look() } else { m.verdict(true) })
        .collect();
    let held = results.iter().find(|r| r.verdict == Verdict::Inconclusive).map(|r| r.summary());
    (decide_wave(&results, true), held)
}

/// Many waves of one scenario, tallied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Waves simulated.
    pub runs: usize,
    /// Time to revert of every reverted wave, in run order.
    pub reverted_after: Vec<Duration>,
    /// Waves held for a person at the end of the bake.
    pub held: usize,
    /// Waves promoted at the end of the bake.
    pub promoted: usize,
    /// Time to promote of every promoted wave, in run order.
    pub promoted_after: Vec<Duration>,
    /// The first few revert reasons, for the record.
    pub reasons: Vec<String>,
}

impl Tally {
    /// Reverted waves.
    pub fn reverts(&self) -> usize {
        self.reverted_after.len()
    }

    /// Share of waves reverted.
    pub fn revert_rate(&self) -> f64 {
        self.reverts() as f64 / self.runs.max(1) as f64
    }

    /// The 95 % Wilson score interval of the revert rate.
    pub fn revert_interval(&self) -> (f64, f64) {
        wilson(self.reverts(), self.runs, 1.959963984540054)
    }

    /// Share of waves reverted within `limit`.
    pub fn reverted_within(&self, limit: Duration) -> f64 {
        self.reverted_after.iter().filter(|d| **d <= limit).count() as f64 / self.runs.max(1) as f64
    }

    /// The `q` quantile of the time to revert among reverted waves (nearest rank).
    pub fn time_to_revert(&self, q: f64) -> Option<Duration> {
        quantile(&self.reverted_after, q)
    }

    /// The `q` quantile of the time to promote among promoted waves (nearest rank).
    pub fn time_to_promote(&self, q: f64) -> Option<Duration> {
        quantile(&self.promoted_after, q)
    }

    /// Share of waves promoted.
    pub fn promote_rate(&self) -> f64 {
        self.promoted as f64 / self.runs.max(1) as f64
    }

    /// The 95 % Wilson score interval of the promote rate.
    pub fn promote_interval(&self) -> (f64, f64) {
        wilson(self.promoted, self.runs, 1.959963984540054)
    }
}

/// The `q` quantile of `times` (nearest rank); None when empty.
fn quantile(times: &[Duration], q: f64) -> Option<Duration> {
    let mut times = times.to_vec();
    if times.is_empty() {
        return None;
    }
    times.sort();
    let rank = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len());
    Some(times[rank - 1])
}

impl Tally {}

/// Runs `runs` waves of `scenario` on `threads` threads. Wave `i` uses the seed `mix(seed, i)`, so the
/// tally does not depend on the thread count.
pub fn run_many(scenario: &Scenario, runs: usize, seed: u64, threads: usize) -> Tally {
    let threads = threads.clamp(1, runs.max(1));
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..runs).step_by(threads).map(|i| (i, run_wave(scenario, mix(seed, i as u64)))).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, Outcome)> =
            workers.into_iter().flat_map(|w| w.join().expect("a simulation thread panicked")).collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, o)| o).collect()
    });
    let mut tally = Tally { runs, ..Tally::default() };
    for o in outcomes {
        match o.action {
            WaveAction::Hold => tally.held += 1,
            WaveAction::Promote => {
                tally.promoted += 1;
                tally.promoted_after.push(o.decided_after);
            }
            _ => {}
        }
        if let Some(after) = o.reverted_after {
            tally.reverted_after.push(after);
        }
        if let Some(reason) = o.reason {
            if tally.reasons.len() < 5 {
                tally.reasons.push(reason);
            }
        }
    }
    tally
}

/// Seed `i` of a family (SplitMix64 of the pair).
pub fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x6A09_E667_F3BC_C909);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The Wilson score interval of `k` successes in `n` trials at normal quantile `z`.
pub fn wilson(k: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// One interval's latency histogram for a host serving `requests` (mean) requests whose latencies are
/// log-normal with this median and log-scale sd: cumulative bucket counts, `_sum` and `_count`.
fn latency_histogram(rng: &mut StdRng, requests: f64, median: f64, sigma: f64, bounds: &[f64]) -> (Vec<f64>, f64, f64) {
    let normal = Normal::standard();
    let mu = median.ln();
    let mean = (mu + sigma * sigma / 2.0).exp();
    let (mut cumulative, mut buckets) = (0.0, Vec::with_capacity(bounds.len()));
    let (mut sum, mut below_p, mut below_partial) = (0.0, 0.0, 0.0);
    for edge in bounds.iter().map(|b| Some(*b)).chain(std::iter::once(None)) {
        let (p, partial) = match edge {
            Some(b) => {
                let z = (b.ln() - mu) / sigma;
                (normal.cdf(z), normal.cdf(z - sigma))
            }
            None => (1.0, 1.0),
        };
        let count = poisson(rng, requests * (p - below_p).max(0.0));
        if count > 0.0 && p > below_p {
            // E[X | bucket] = mean · (Φ(z_b − σ) − Φ(z_a − σ)) / (Φ(z_b) − Φ(z_a))
            sum += count * mean * (partial - below_partial) / (p - below_p);
        }
        cumulative += count;
        if edge.is_some() {
            buckets.push(cumulative);
        }
        below_p = p;
        below_partial = partial;
    }
    (buckets, sum, cumulative)
}

/// A standard normal draw (Box-Muller).
pub fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma draw with mean 1 and coefficient of variation `cv` (1 when `cv` is 0).
pub fn gamma_mean_one(rng: &mut StdRng, cv: f64) -> f64 {
    if cv <= 0.0 {
        return 1.0;
    }
    let shape = 1.0 / (cv * cv);
    gamma(rng, shape) / shape
}

/// A Gamma(shape, 1) draw: Marsaglia and Tsang (2000), boosted for shape < 1.
pub fn gamma(rng: &mut StdRng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = 1.0 - rng.random::<f64>();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.random::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A Poisson draw: multiplication of uniforms below mean 10, else Hörmann's transformed rejection
/// with squeeze (PTRS, 1993), as numpy does.
pub fn poisson(rng: &mut StdRng, mean: f64) -> f64 {
    if mean <= 0.0 || !mean.is_finite() {
        return 0.0;
    }
    if mean < 10.0 {
        let limit = (-mean).exp();
        let (mut k, mut product) = (0.0, rng.random::<f64>());
        while product > limit {
            k += 1.0;
            product *= rng.random::<f64>();
        }
        return k;
    }
    let slam = mean.sqrt();
    let loglam = mean.ln();
    let b = 0.931 + 2.53 * slam;
    let a = -0.059 + 0.02483 * b;
    let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
    let vr = 0.9277 - 3.6224 / (b - 2.0);
    loop {
        let u = rng.random::<f64>() - 0.5;
        let v: f64 = rng.random::<f64>();
        let us = 0.5 - u.abs();
        let k = ((2.0 * a / us + b) * u + mean + 0.43).floor();
        if us >= 0.07 && v <= vr {
            return k;
        }
        if k < 0.0 || (us < 0.013 && v > us) {
            continue;
        }
        if v.ln() + inv_alpha.ln() - (a / (us * us) + b).ln() <= -mean + k * loglam - ln_gamma(k + 1.0) {
            return k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(draws: &[f64]) -> (f64, f64) {
        let n = draws.len() as f64;
        let mean = draws.iter().sum::<f64>() / n;
        let var = draws.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn poisson_has_its_mean_and_variance_on_both_paths() {
        let mut rng = StdRng::seed_from_u64(1);
        for mean in [0.3, 4.0, 9.9, 10.0, 57.0, 400.0] {
            let draws: Vec<f64> = (0..40_000).map(|_| poisson(&mut rng, mean)).collect();
            let (m, v) = moments(&draws);
            // Standard errors: √(mean/n) for the mean, about mean·√(2/n) for the variance.
            assert!((m - mean).abs() < 5.0 * (mean / 40_000.0).sqrt(), "mean {mean}: got {m}");
            assert!((v / mean - 1.0).abs() < 0.05, "mean {mean}: variance {v}");
            assert!(draws.iter().all(|d| *d >= 0.0 && d.fract() == 0.0));
        }
    }

    #[test]
    fn gamma_has_mean_one_and_the_asked_spread() {
        let mut rng = StdRng::seed_from_u64(2);
        for cv in [0.1, 0.3, 1.5] {
            let draws: Vec<f64> = (0..40_000).map(|_| gamma_mean_one(&mut rng, cv)).collect();
            let (m, v) = moments(&draws);
            assert!((m - 1.0).abs() < 5.0 * cv / 200.0, "cv {cv}: mean {m}");
            assert!((v.sqrt() / cv - 1.0).abs() < 0.05, "cv {cv}: sd {}", v.sqrt());
        }
        assert_eq!(gamma_mean_one(&mut rng, 0.0), 1.0);
    }

    #[test]
    fn normal_has_mean_zero_and_variance_one() {
        let mut rng = StdRng::seed_from_u64(3);
        let draws: Vec<f64> = (0..40_000).map(|_| standard_normal(&mut rng)).collect();
        let (m, v) = moments(&draws);
        assert!(m.abs() < 0.025 && (v - 1.0).abs() < 0.03, "mean {m}, variance {v}");
    }

    #[test]
    fn a_simulated_histogram_is_well_formed_and_centred_on_its_median() {
        let mut rng = StdRng::seed_from_u64(4);
        let (buckets, sum, count) = latency_histogram(&mut rng, 20_000.0, 0.05, 0.6, &DEFAULT_BUCKETS);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]) && buckets[buckets.len() - 1] <= count);
        // Half the requests at or below the median (0.05 is a bucket bound).
        let at_median = buckets[3] / count;
        assert!((at_median - 0.5).abs() < 0.02, "{at_median}");
        let mean = sum / count;
        let want = (0.05f64.ln() + 0.18).exp();
        assert!((mean / want - 1.0).abs() < 0.03, "mean {mean} want {want}");
    }

    #[test]
    fn the_same_seed_gives_the_same_tally_whatever_the_thread_count() {
        let scenario = scenario(1, 5, Regression::ErrorRate(3.0));
        assert_eq!(run_many(&scenario, 12, 7, 1), run_many(&scenario, 12, 7, 3));
    }

    fn scenario(canary: usize, baseline: usize, regression: Regression) -> Scenario {
        Scenario {
            fleet: Fleet::default(),
            canary_hosts: canary,
            baseline_hosts: baseline,
            regression,
            settings: Settings::default(),
            budget: Budget { metrics: 2, waves: 1 },
        }
    }

    #[test]
    fn healthy_releases_are_reverted_at_most_alpha_of_the_time() {
        // 3,000 A/A waves at alpha = 0.01 (one rollout's two metrics), sized to see a 2-3× inflation
        // of false reverts: at the guaranteed 1 %, more than 48 happens with probability 0.00083;
        // at 2 % the test fails with probability 0.94, at 2.5 % 0.9995, at 3 % 1 − 6e-7
        // (scipy.stats.binom.sf(48, 3000, p)).
        let tally = run_many(&scenario(1, 5, Regression::None), 3000, 11, 2);
        assert!(tally.reverts() <= 48, "{} false reverts in 3000: {:?}", tally.reverts(), tally.reasons);
    }

    #[test]
    fn a_regression_at_the_pass_bound_passes_at_most_one_minus_pass_confidence_of_the_time() {
        // +50 % errors (the default pass_bound) on 4 canaries with each host's past, the bake
        // extended up to 5 minutes: the extension looks at every scrape, and a bound that is
        // valid at one look only would pass such waves more often as it looks more. The rule
        // promises at most 10 % (5 % early, 5 % at the end look); at 10 %, more than 33 of 240
        // passes has probability 0.025 (scipy.stats.binom.sf(33, 240, 0.1)).
        let fleet = Fleet {
            max_bake: Duration::from_secs(300),
            history: Duration::from_secs(600),
            watch_latency: false,
            ..Fleet::default()
        };
        let scenario =
            Scenario { fleet, budget: Budget { metrics: 1, waves: 1 }, ..scenario(4, 2, Regression::ErrorRate(1.5)) };
        let tally = run_many(&scenario, 240, 13, 2);
        assert!(tally.promoted <= 33, "{} of 240 passed; {} reverted", tally.promoted, tally.reverts());
        // And a healthy release on the same fleet is mostly passed by itself.
        let healthy = Scenario { regression: Regression::None, ..scenario };
        let tally = run_many(&healthy, 120, 14, 2);
        assert!(tally.promoted >= 96, "{} of 120 passed, {} held", tally.promoted, tally.held);
    }

    #[test]
    fn a_tenfold_error_rate_on_one_canary_is_reverted_within_30_seconds() {
        let tally = run_many(&scenario(1, 5, Regression::ErrorRate(10.0)), 100, 12, 2);
        let within = tally.reverted_within(Duration::from_secs(30));
        assert!(within >= 0.97, "only {within} reverted within 30 s");
        assert!(tally.reasons.iter().all(|r| r.starts_with("error_rate ")), "{:?}", tally.reasons);
    }
}
