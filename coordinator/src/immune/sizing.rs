//! Bake sizing: from a fleet's measured traffic and error history, how long a wave must bake
//! for the judge to revert a regression of a given size, and to pass a healthy release.
//!
//! The answer comes from the judge's own test, not from a formula about it: [`measure`] reads
//! the fleet's rates from the reports the leader keeps (requests a second per host, the pooled
//! rate, how much hosts differ beyond chance, how bursty intervals are), and [`size`] runs the
//! seeded simulation of [`super::sim`] with those rates — the same `Monitor`, the same look
//! after every scrape, each host judged against its own past — over a fixed number of waves
//! with a fixed seed. Deterministic and bounded: `waves` waves of at most `horizon / interval`
//! looks each. Ratio metrics only (what `[immune]` calls `ratio`).

use std::time::Duration;

use super::analysis::{Budget, Settings};
use super::sim::{run_many, Fleet, Regression, Scenario, Tally};

/// The least history [`measure`] accepts from each host: the judge compares each host with its
/// own last ten minutes, and five are what it takes to see how much hosts differ.
pub const MIN_HISTORY: Duration = Duration::from_secs(300);
/// The least number of hosts with that history (two on the old release and one canary).
pub const MIN_HOSTS: usize = 3;
/// Most canary hosts simulated, and most hosts on the old release (bounds the time a sizing takes).
pub const MAX_CANARIES: usize = 50;
const MAX_BASELINE: usize = 20;
/// How much history the judge gives each host (see `judge::HISTORY`).
const JUDGE_HISTORY: Duration = Duration::from_secs(1800);

/// One report interval of one host: a ratio's numerator and denominator deltas and its span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// Counted events (errors).
    pub num: f64,
    /// All events (requests).
    pub den: f64,
    /// How long the interval was.
    pub span: Duration,
}

/// A fleet's rates as [`measure`] estimates them.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Hosts with enough history.
    pub hosts: usize,
    /// Mean requests a second per host.
    pub requests_per_second: f64,
    /// Coefficient of variation of the hosts' traffic.
    pub traffic_host_cv: f64,
    /// The pooled rate (errors per request).
    pub rate: f64,
    /// Coefficient of variation of the hosts' own rates beyond what counting explains.
    pub host_cv: f64,
    /// Coefficient of variation of interval-to-interval bursts beyond Poisson.
    pub burst_cv: f64,
    /// The report interval (median span).
    pub interval: Duration,
    /// The shortest history among the hosts used.
    pub history: Duration,
}

/// Why a fleet cannot be sized.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SizingError {
    /// Too few hosts have enough reports of the metric.
    #[error(
        "not enough history of {metric}: {have} host(s) have {min} of reports (the most any host has: {longest}); \
         sizing needs {need} from at least {hosts} hosts, so let the agents report for that long"
    )]
    History {
        /// The metric.
        metric: String,
        /// Hosts with enough.
        have: usize,
        /// What "enough" is, shown.
        min: String,
        /// The longest history any host has, shown.
        longest: String,
        /// The history needed, shown.
        need: String,
        /// Hosts needed.
        hosts: usize,
    },
    /// The history counts no event of the metric, so there is no rate to scale.
    #[error(
        "{metric} counted no events in the last {window} ({requests:.0} requests): a regression of a zero rate cannot \
         be sized; wait until some are counted"
    )]
    NoEvents {
        /// The metric.
        metric: String,
        /// The window read, shown.
        window: String,
        /// Requests counted in it.
        requests: f64,
    },
    /// The question cannot be asked of this fleet.
    #[error("{0}")]
    Ask(String),
}

/// Estimates a fleet's rates from each host's recent intervals of one ratio metric.
pub fn measure(metric: &str, hosts: &[(String, Vec<Interval>)]) -> Result<Measured, SizingError> {
    let span_of = |ivs: &[Interval]| ivs.iter().map(|i| i.span).sum::<Duration>();
    let usable: Vec<&[Interval]> = hosts
        .iter()
        .map(|(_, ivs)| ivs.as_slice())
        .filter(|ivs| span_of(ivs) >= MIN_HISTORY && ivs.iter().map(|i| i.den).sum::<f64>() > 0.0)
        .collect();
    if usable.len() < MIN_HOSTS {
        let longest = hosts.iter().map(|(_, ivs)| span_of(ivs)).max().unwrap_or_default();
        return Err(SizingError::History {
            metric: metric.into(),
            have: usable.len(),
            min: humantime::format_duration(MIN_HISTORY).to_string(),
            longest: humantime::format_duration(Duration::from_secs(longest.as_secs())).to_string(),
            need: humantime::format_duration(MIN_HISTORY).to_string(),
            hosts: MIN_HOSTS,
        });
    }
    let totals: Vec<(f64, f64, f64)> = usable
        .iter()
        .map(|ivs| {
            let num: f64 = ivs.iter().map(|i| i.num).sum();
            let den: f64 = ivs.iter().map(|i| i.den).sum();
            (num, den, span_of(ivs).as_secs_f64())
        })
        .collect();
    let (num, den): (f64, f64) = totals.iter().fold((0.0, 0.0), |(n, d), t| (n + t.0, d + t.1));
    let history = usable.iter().map(|ivs| span_of(ivs)).min().unwrap_or_default();
    if num <= 0.0 {
        return Err(SizingError::NoEvents {
            metric: metric.into(),
            window: humantime::format_duration(Duration::from_secs(history.as_secs())).to_string(),
            requests: den,
        });
    }
    let rate = num / den;
    let n = totals.len() as f64;
    let rps: Vec<f64> = totals.iter().map(|(_, d, s)| d / s).collect();
    let mean_rps = rps.iter().sum::<f64>() / n;
    let sd = |xs: &[f64], mean: f64| (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt();
    let traffic_host_cv = sd(&rps, mean_rps) / mean_rps;
    // Bursts: Pearson's dispersion of each host's intervals around its own rate; a Gamma burst
    // of CV c on a Poisson count of mean μ gives a dispersion of 1 + μc².
    let (mut pearson, mut pearson_df, mut events, mut intervals) = (0.0, 0.0, 0.0, 0.0);
    for (ivs, (hn, hd, _)) in usable.iter().zip(&totals) {
        let r = hn / hd;
        if r <= 0.0 {
            continue;
        }
        for i in ivs.iter().filter(|i| i.den > 0.0) {
            let expected = i.den * r;
            pearson += (i.num - expected).powi(2) / expected;
            pearson_df += 1.0;
            events += i.num;
            intervals += 1.0;
        }
        pearson_df -= 1.0;
    }
    let dispersion = if pearson_df > 0.0 { (pearson / pearson_df).max(1.0) } else { 1.0 };
    let per_interval = if intervals > 0.0 { events / intervals } else { 0.0 };
    let burst_cv = if per_interval > 0.0 { ((dispersion - 1.0) / per_interval).sqrt() } else { 0.0 };
    // Host effects: the hosts' rates vary more than their counts explain (moments, as the
    // judge's spread estimate does).
    let rates: Vec<f64> = totals.iter().map(|(hn, hd, _)| hn / hd).collect();
    let mean_rate = rates.iter().sum::<f64>() / n;
    let observed = sd(&rates, mean_rate).powi(2);
    let chance = totals.iter().map(|(_, hd, _)| dispersion * rate / hd).sum::<f64>() / n;
    let host_cv = (observed - chance).max(0.0).sqrt() / rate;
    let mut spans: Vec<Duration> = usable.iter().flat_map(|ivs| ivs.iter().map(|i| i.span)).collect();
    spans.sort();
    let interval = spans[spans.len() / 2].max(Duration::from_millis(100));
    Ok(Measured {
        hosts: usable.len(),
        requests_per_second: mean_rps,
        traffic_host_cv,
        rate,
        host_cv,
        burst_cv,
        interval,
        history,
    })
}

/// What to size.
#[derive(Clone, Debug, PartialEq)]
pub struct Ask {
    /// The regression to catch, as a factor on the rate (2.0: errors double).
    pub factor: f64,
    /// Hosts in the wave (on the new release); the others stay on the old one.
    pub canaries: usize,
    /// The judge's settings (alpha, min_effect, pass_bound, pass_confidence).
    pub settings: Settings,
    /// How the rollout's alpha is shared (the plan's metrics × judged waves).
    pub budget: Budget,
    /// The longest bake to simulate; a wave undecided by then counts as not decided.
    pub horizon: Duration,
    /// The plan's `max_bake`: each answer also says what share is decided within it.
    pub limit: Duration,
    /// Waves simulated for each answer.
    pub waves: usize,
}

/// How long the judge takes to decide, over the simulated waves.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Share of waves decided this way within the horizon.
    pub share: f64,
    /// Share decided this way within `Ask::limit` (the plan's `max_bake`). For a pass, with the
    /// end look at that limit, as the judge takes it.
    pub within_limit: f64,
    /// Median time to decide, among the waves decided this way.
    pub median: Option<Duration>,
    /// 90th percentile of the same.
    pub p90: Option<Duration>,
}

/// The sizing of one fleet and question.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// A wave with the regression: how soon it is reverted.
    pub revert: Decision,
    /// A healthy wave: how soon it passes by itself.
    pub pass: Decision,
    /// Healthy waves reverted in the simulation (false reverts; at most `alpha` is promised).
    pub false_reverts: f64,
}

/// The simulated fleet with the measured rates; `horizon` as its longest bake.
pub fn fleet_of(m: &Measured, horizon: Duration) -> Fleet {
    Fleet {
        requests_per_second: m.requests_per_second,
        traffic_host_cv: m.traffic_host_cv,
        traffic_swing: 0.0,
        error_rate: m.rate,
        error_host_cv: m.host_cv,
        error_burst_cv: m.burst_cv,
        drift_sd: 0.0,
        interval: m.interval,
        // A decision may come at any look: the first bake ends at the first interval, and the
        // extension runs to the horizon.
        bake: m.interval,
        max_bake: horizon,
        history: JUDGE_HISTORY.min(m.history),
        watch_latency: false,
        ..Fleet::default()
    }
}

/// Sizes `ask` on the fleet `m`: `ask.waves` waves with the regression and as many healthy ones,
/// each seeded from a fixed seed, on one thread.
pub fn size(m: &Measured, ask: &Ask) -> Result<Estimate, SizingError> {
    if ask.canaries == 0 || ask.canaries >= m.hosts {
        return Err(SizingError::Ask(format!(
            "canaries: {} of {} hosts; a wave needs at least one host on the new release and one left on the old",
            ask.canaries, m.hosts
        )));
    }
    if ask.canaries > MAX_CANARIES {
        return Err(SizingError::Ask(format!(
            "canaries: {} (sizing simulates at most {MAX_CANARIES}; a wave that large decides faster still)",
            ask.canaries
        )));
    }
    if !(ask.factor.is_finite() && ask.factor > 1.0) {
        return Err(SizingError::Ask(format!(
            "effect: {} is not a factor above 1 (2.0: the rate doubles)",
            ask.factor
        )));
    }
    ask.settings.validate().map_err(|e| SizingError::Ask(e.to_string()))?;
    let scenario = |regression| Scenario {
        fleet: fleet_of(m, ask.horizon),
        canary_hosts: ask.canaries,
        // Beyond a few dozen, more hosts on the old release barely narrow the comparison.
        baseline_hosts: (m.hosts - ask.canaries).min(MAX_BASELINE),
        regression,
        settings: ask.settings.clone(),
        budget: ask.budget,
    };
    let bad = run_many(&scenario(Regression::ErrorRate(ask.factor)), ask.waves, SEED, 1);
    let healthy = run_many(&scenario(Regression::None), ask.waves, SEED + 1, 1);
    let decision = |times: &[Duration], tally: &Tally, quantile: fn(&Tally, f64) -> Option<Duration>| Decision {
        share: times.len() as f64 / tally.runs.max(1) as f64,
        within_limit: times.iter().filter(|t| **t <= ask.limit).count() as f64 / tally.runs.max(1) as f64,
        median: quantile(tally, 0.5),
        p90: quantile(tally, 0.9),
    };
    let mut pass = decision(&healthy.promoted_after, &healthy, Tally::time_to_promote);
    if ask.limit < ask.horizon {
        // The judge's end look comes at `max_bake`, not at the horizon: what passes within the
        // plan's `max_bake` is what a wave that ends there passes (the same seeds, so the same
        // waves up to it; the end look adds the ones only a fixed-horizon bound can pass).
        let at_limit =
            Scenario { fleet: Fleet { max_bake: ask.limit, ..fleet_of(m, ask.horizon) }, ..scenario(Regression::None) };
        pass.within_limit = run_many(&at_limit, ask.waves, SEED + 1, 1).promote_rate();
    }
    Ok(Estimate {
        revert: decision(&bad.reverted_after, &bad, Tally::time_to_revert),
        pass,
        false_reverts: healthy.revert_rate(),
    })
}

/// The horizon of a sizing: how long a wave is simulated at most.
pub const HORIZON: Duration = Duration::from_secs(1800);
/// Waves simulated for each answer.
pub const WAVES: usize = 48;

impl crate::coordinator::Coordinator {
    /// `fifty immune size`: sizes a bake of `q.repo` from the fleet's last hour of reports (leader).
    pub fn immune_size(
        &self,
        q: &crate::views::SizeQuery,
    ) -> Result<crate::views::SizeView, crate::coordinator::OpError> {
        use crate::coordinator::OpError;
        if !self.consensus.status().is_leader() {
            return Err(OpError::BadRequest("the reports a sizing reads are held by the leader; ask it".into()));
        }
        let repo_name = q.repo.as_deref().ok_or_else(|| OpError::BadRequest("repo: required (?repo=NAME)".into()))?;
        let repo = self.repo(repo_name)?;
        let store = self.consensus.store();
        let release =
            store.releases()?.into_iter().filter(|r| r.repo == repo.name).max_by_key(|r| r.id).ok_or_else(|| {
                OpError::NotFound(format!("{} has no release yet: sizing reads the latest one's [immune]", repo.name))
            })?;
        let plan = release.plan.immune.clone().ok_or_else(|| {
            OpError::BadRequest(format!("release {} of {} has no [immune] section to size", release.id, repo.name))
        })?;
        let ratios: Vec<&str> = plan.metrics.iter().filter(|m| m.kind == "ratio").map(|m| m.name.as_str()).collect();
        let metric = match &q.metric {
            Some(m) => match plan.metrics.iter().find(|x| x.name == *m) {
                Some(x) if x.kind == "ratio" => m.clone(),
                Some(x) => {
                    return Err(OpError::BadRequest(format!(
                        "metric: {m} is a {} metric; sizing covers ratio metrics ({})",
                        x.kind,
                        ratios.join(", ")
                    )))
                }
                None => {
                    let all: Vec<&str> = plan.metrics.iter().map(|x| x.name.as_str()).collect();
                    return Err(OpError::BadRequest(format!(
                        "metric: {m} is not one of release {}'s [immune] metrics ({})",
                        release.id,
                        all.join(", ")
                    )));
                }
            },
            None => ratios.first().map(|m| m.to_string()).ok_or_else(|| {
                OpError::BadRequest(format!(
                    "release {} watches no ratio metric; sizing covers ratio metrics",
                    release.id
                ))
            })?,
        };
        let hosts: Vec<fifty_shared::ids::HostName> = store
            .hosts()?
            .into_iter()
            .filter(|h| crate::deploy::selects(&release.plan.hosts, &h.labels))
            .map(|h| h.name)
            .collect();
        let canaries = match q.canaries {
            Some(n) => n,
            None => match release.plan.waves.first() {
                Some(crate::deploy::rollout::WaveStep::Hosts(n)) => *n as usize,
                Some(crate::deploy::rollout::WaveStep::Percent(p)) => {
                    ((*p as usize * hosts.len()).div_ceil(100)).max(1)
                }
                _ => 1,
            },
        };
        let now = std::time::SystemTime::now();
        let from = now.checked_sub(super::series::KEEP).unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        let history: Vec<(String, Vec<Interval>)> = {
            let live = self.immune.lock().expect("immune lock");
            hosts
                .iter()
                .map(|h| {
                    let ivs = live
                        .series
                        .between(h, from, now + Duration::from_millis(1))
                        .into_iter()
                        .filter_map(|r| {
                            r.report.samples.iter().find_map(|(name, s)| match s {
                                fifty_shared::wire::MetricSample::Ratio { num, den } if *name == metric => {
                                    Some(Interval { num: *num, den: *den, span: r.report.span })
                                }
                                _ => None,
                            })
                        })
                        .collect();
                    (h.to_string(), ivs)
                })
                .collect()
        };
        let measured = measure(&metric, &history).map_err(|e| OpError::BadRequest(e.to_string()))?;
        let settings = Settings {
            alpha: plan.alpha,
            min_effect: plan.min_effect,
            pass_bound: plan.pass_bound,
            ..Settings::default()
        };
        let judged = release.plan.waves.iter().filter(|w| **w != crate::deploy::rollout::WaveStep::Manual).count();
        let ask = Ask {
            factor: q.effect.unwrap_or(2.0),
            canaries,
            settings: settings.clone(),
            budget: Budget { metrics: plan.metrics.len().max(1), waves: judged.max(1) },
            horizon: HORIZON,
            limit: plan.max_bake.max(release.plan.bake),
            waves: WAVES,
        };
        let estimate = size(&measured, &ask).map_err(|e| OpError::BadRequest(e.to_string()))?;
        let view = |d: &Decision| crate::views::SizeDecision {
            share: d.share,
            within_max_bake: d.within_limit,
            median_secs: d.median.map(|t| t.as_secs_f64()),
            p90_secs: d.p90.map(|t| t.as_secs_f64()),
        };
        Ok(crate::views::SizeView {
            repo: repo.name.to_string(),
            release: release.id,
            metric,
            hosts: measured.hosts,
            canaries,
            requests_per_second: measured.requests_per_second,
            rate: measured.rate,
            host_cv: measured.host_cv,
            burst_cv: measured.burst_cv,
            interval_secs: measured.interval.as_secs_f64(),
            history_secs: measured.history.as_secs_f64(),
            effect: ask.factor,
            alpha: settings.alpha,
            min_effect: settings.min_effect,
            pass_bound: settings.pass_bound,
            pass_confidence: settings.pass_confidence,
            max_bake_secs: ask.limit.as_secs_f64(),
            horizon_secs: HORIZON.as_secs_f64(),
            waves: WAVES,
            revert: view(&estimate.revert),
            pass: view(&estimate.pass),
            false_reverts: estimate.false_reverts,
        })
    }
}

/// The seed of every sizing (the answer depends only on the fleet and the question).
const SEED: u64 = 0x5122_0000_B4CE;

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::immune::sim::{gamma_mean_one, poisson};

    /// `minutes` of 2 s intervals of `hosts` hosts of `fleet` (traffic, host effects, bursts),
    /// as the leader would keep them.
    fn history(fleet: &Fleet, hosts: usize, minutes: u64, seed: u64) -> Vec<(String, Vec<Interval>)> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..hosts)
            .map(|h| {
                let traffic = gamma_mean_one(&mut rng, fleet.traffic_host_cv);
                let effect = gamma_mean_one(&mut rng, fleet.error_host_cv);
                let ivs = (0..minutes * 30)
                    .map(|_| {
                        let requests = poisson(&mut rng, fleet.requests_per_second * 2.0 * traffic);
                        let p = fleet.error_rate * effect * gamma_mean_one(&mut rng, fleet.error_burst_cv);
                        let errors = poisson(&mut rng, requests * p).min(requests);
                        Interval { num: errors, den: requests, span: Duration::from_secs(2) }
                    })
                    .collect();
                (format!("web-{h}"), ivs)
            })
            .collect()
    }

    fn ask(factor: f64) -> Ask {
        Ask {
            factor,
            canaries: 1,
            settings: Settings::default(),
            budget: Budget { metrics: 1, waves: 2 },
            horizon: Duration::from_secs(1200),
            limit: Duration::from_secs(300),
            waves: 48,
        }
    }

    #[test]
    fn the_rates_are_measured_from_the_history() {
        let fleet = Fleet { error_rate: 0.01, error_host_cv: 0.3, error_burst_cv: 0.3, ..Fleet::default() };
        let m = measure("error_rate", &history(&fleet, 12, 30, 1)).expect("enough history");
        assert_eq!((m.hosts, m.interval, m.history), (12, Duration::from_secs(2), Duration::from_secs(1800)));
        assert!((m.requests_per_second / 100.0 - 1.0).abs() < 0.1, "{m:?}");
        assert!((m.rate / 0.01 - 1.0).abs() < 0.15, "{m:?}");
        // Twelve hosts say roughly how much they differ; bursts are measured over 900 intervals.
        assert!((0.15..0.5).contains(&m.host_cv), "{m:?}");
        assert!((0.2..0.4).contains(&m.burst_cv), "{m:?}");
    }

    #[test]
    fn the_predicted_times_match_the_simulation_of_the_true_fleet() {
        // A fleet of 6 at 100 req/s and 0.5 % errors: sized from 20 minutes of its reports, then
        // compared with 400 waves of the true fleet (other seeds) for each answer. The sizing
        // simulates only 48 waves on rates it estimated, so its medians are allowed 1.5×.
        let truth =
            Fleet { error_host_cv: 0.15, error_burst_cv: 0.3, drift_sd: 0.0, traffic_swing: 0.0, ..Fleet::default() };
        let m = measure("error_rate", &history(&truth, 6, 20, 2)).expect("enough history");
        let estimate = size(&m, &ask(2.0)).expect("sizable");
        eprintln!("{m:?}\n{estimate:?}");
        let scenario = |regression| Scenario {
            fleet: Fleet {
                bake: Duration::from_secs(2),
                max_bake: Duration::from_secs(1200),
                history: JUDGE_HISTORY,
                watch_latency: false,
                ..truth.clone()
            },
            canary_hosts: 1,
            baseline_hosts: 5,
            regression,
            settings: Settings::default(),
            budget: Budget { metrics: 1, waves: 2 },
        };
        let bad = run_many(&scenario(Regression::ErrorRate(2.0)), 400, 77, 2);
        let healthy = run_many(&scenario(Regression::None), 400, 78, 2);
        let within = |predicted: Option<Duration>, measured: Option<Duration>| {
            let (p, m) = (predicted.expect("predicted").as_secs_f64(), measured.expect("measured").as_secs_f64());
            eprintln!("predicted median {p} s, simulated {m} s");
            assert!(p / m <= 1.5 && m / p <= 1.5, "predicted {p} s, simulated {m} s");
        };
        within(estimate.revert.median, bad.time_to_revert(0.5));
        within(estimate.pass.median, healthy.time_to_promote(0.5));
        // Passed within the plan's max_bake (5 minutes), where the judge takes its end look.
        let at_limit = Scenario {
            fleet: Fleet { max_bake: Duration::from_secs(300), ..scenario(Regression::None).fleet },
            ..scenario(Regression::None)
        };
        let passed = run_many(&at_limit, 400, 78, 2).promote_rate();
        eprintln!("passed within max_bake: predicted {}, simulated {passed}", estimate.pass.within_limit);
        assert!((estimate.pass.within_limit - passed).abs() <= 0.15, "{estimate:?}, simulated {passed}");
        assert!(estimate.revert.share >= 0.9 && estimate.pass.share >= 0.9, "{estimate:?}");
    }

    #[test]
    fn too_little_history_says_how_much_is_needed() {
        let fleet = Fleet::default();
        let err = measure("error_rate", &history(&fleet, 6, 2, 3)).expect_err("two minutes");
        assert_eq!(
            err.to_string(),
            "not enough history of error_rate: 0 host(s) have 5m of reports (the most any host has: 2m); sizing \
             needs 5m from at least 3 hosts, so let the agents report for that long"
        );
        let quiet = Fleet { error_rate: 0.0, ..Fleet::default() };
        let err = measure("error_rate", &history(&quiet, 6, 6, 4)).expect_err("no errors");
        assert!(err.to_string().starts_with("error_rate counted no events in the last 6m"), "{err}");
        let m = measure("error_rate", &history(&fleet, 6, 6, 5)).expect("enough");
        let err = size(&m, &Ask { canaries: 6, ..ask(2.0) }).expect_err("no baseline");
        assert!(err.to_string().starts_with("canaries: 6 of 6 hosts"), "{err}");
        let err = size(&m, &ask(0.5)).expect_err("not a regression");
        assert!(err.to_string().starts_with("effect: 0.5 is not a factor above 1"), "{err}");
    }
}
