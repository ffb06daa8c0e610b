//! Seeded simulations of whole experiments through the same [`analysis`] code `fifty experiment
//! show` uses: no network, no clock, no sleeping. `cargo bench -p fifty --bench experiments` runs
//! them at full size and prints the tables of `BENCHMARKS.md`; the unit tests run small ones.
//!
//! Each simulated experiment exposes `units_per_look` new units per "day", splits them between the
//! arms with the given share, converts each with its arm's rate (a converting unit also gets a
//! revenue value, uniform in 10..50), and looks at the analysis after every day, as people do.

use statrs::distribution::{ContinuousCDF, Normal};

use super::analysis::{self, Settings, Totals};

/// SplitMix64: small, fast and seedable; plenty for simulation.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One kind of simulated experiment.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Conversion rate of the control.
    pub base_rate: f64,
    /// Relative lift of the variant's rate (0 for an A/A test).
    pub lift: f64,
    /// Share of units the assignment really sends to the variant (0.5 unless biased).
    pub variant_share: f64,
    /// Looks ("days").
    pub looks: u32,
    /// New units per look, both arms together.
    pub units_per_look: u64,
    /// Also judge each experiment as one with `looks` scheduled looks (the group-sequential test
    /// of [`analysis::scheduled`]), besides the always-valid test.
    pub scheduled: bool,
}

/// What a batch of simulated experiments showed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Experiments run.
    pub experiments: u64,
    /// Experiments whose conversion test was significant (either way) at some look.
    pub conversion_rejected: u64,
    /// Of those, significant in the variant's favour ("win").
    pub wins: u64,
    /// Experiments whose value test was significant at some look.
    pub value_rejected: u64,
    /// Experiments whose sample-ratio check flagged at the last look.
    pub srm_flagged: u64,
    /// Experiments a fixed-horizon z-test at level alpha would have rejected at some look (the
    /// mistake the sequential test avoids).
    pub naive_rejected: u64,
    /// With `scheduled`: experiments whose conversion crossed a group-sequential boundary.
    pub scheduled_rejected: u64,
    /// Of those, in the variant's favour.
    pub scheduled_wins: u64,
    /// With `scheduled`: experiments whose value crossed a boundary.
    pub scheduled_value_rejected: u64,
    /// With `scheduled`, for diagnosis: experiments whose conversion would have crossed the same
    /// boundaries with z from the variance pooled under no difference, p̂(1 − p̂)(1/n_c + 1/n_v).
    pub scheduled_pooled_rejected: u64,
    /// With `scheduled`, for diagnosis: the same with the true variance, p(1 − p)(1/n_c + 1/n_v)
    /// of the control's real rate: no estimated variance at all (only meaningful for A/A, where
    /// both arms have that rate).
    pub scheduled_known_rejected: u64,
    /// Experiments where the shipped test and the known-variance one disagree (either way): the
    /// paired difference of the two rates is at most this over the experiments.
    pub scheduled_known_discordant: u64,
}

impl Outcome {
    /// `n` as a share of the experiments.
    pub fn share(&self, n: u64) -> f64 {
        n as f64 / self.experiments.max(1) as f64
    }

    /// The Wilson score interval (95%) of the share `n`.
    pub fn wilson(&self, n: u64) -> (f64, f64) {
        wilson(n, self.experiments)
    }

    /// Adds `other`'s counts (another batch of the same scenario).
    pub fn add(&mut self, other: &Outcome) {
        self.experiments += other.experiments;
        self.conversion_rejected += other.conversion_rejected;
        self.wins += other.wins;
        self.value_rejected += other.value_rejected;
        self.srm_flagged += other.srm_flagged;
        self.naive_rejected += other.naive_rejected;
        self.scheduled_rejected += other.scheduled_rejected;
        self.scheduled_wins += other.scheduled_wins;
        self.scheduled_value_rejected += other.scheduled_value_rejected;
        self.scheduled_pooled_rejected += other.scheduled_pooled_rejected;
        self.scheduled_known_rejected += other.scheduled_known_rejected;
        self.scheduled_known_discordant += other.scheduled_known_discordant;
    }
}

/// [`run`] split over `threads` threads, batch i seeded `seed · 1000 + i` (the same counts on any
/// machine for the same `threads`).
pub fn run_parallel(seed: u64, experiments: u64, threads: u64, scenario: &Scenario, settings: &Settings) -> Outcome {
    let threads = threads.max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let n = experiments / threads + u64::from(i < experiments % threads);
                scope.spawn(move || run(seed * 1000 + i, n, scenario, settings))
            })
            .collect();
        let mut out = Outcome::default();
        for h in handles {
            out.add(&h.join().expect("a simulation thread panicked"));
        }
        out
    })
}

/// The 95% Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Runs `experiments` experiments of `scenario` from `seed`.
pub fn run(seed: u64, experiments: u64, scenario: &Scenario, settings: &Settings) -> Outcome {
    let mut rng = Rng::new(seed);
    let normal = Normal::new(0.0, 1.0).expect("the standard normal is valid");
    let rates = [scenario.base_rate, scenario.base_rate * (1.0 + scenario.lift)];
    let mut out = Outcome { experiments, ..Default::default() };
    for _ in 0..experiments {
        let mut totals = [Totals::default(); 2];
        let (mut rejected, mut won, mut value_rejected, mut naive) = (false, false, false, false);
        let mut last = None;
        let mut looks: Vec<Vec<Totals>> = Vec::new();
        for _ in 0..scenario.looks {
            for _ in 0..scenario.units_per_look {
                let arm = usize::from(rng.uniform() < scenario.variant_share);
                let t = &mut totals[arm];
                t.exposed += 1;
                if rng.uniform() < rates[arm] {
                    let value = 10.0 + 40.0 * rng.uniform();
                    t.converted += 1;
                    t.value_sum += value;
                    t.value_sumsq += value * value;
                }
            }
            let a = analysis::analyze(&totals, &[50, 50], settings);
            let v = &a.variants[1];
            if let Some(c) = v.conversion {
                if c.p_value < settings.alpha {
                    rejected = true;
                    won |= c.diff > 0.0;
                }
                naive |= naive_p(&totals, &normal) < settings.alpha;
            }
            value_rejected |= v.value.is_some_and(|c| c.p_value < settings.alpha);
            last = a.srm;
            if scenario.scheduled {
                looks.push(totals.to_vec());
            }
        }
        if scenario.scheduled {
            // The boundary of look k depends only on looks 1..k, so judging all the looks at the
            // end is what looking after each day would have shown.
            let (conv, value) = analysis::scheduled(&looks, scenario.looks, 1, settings.alpha);
            out.scheduled_rejected += u64::from(conv.crossed_at.is_some());
            out.scheduled_wins += u64::from(conv.verdict() == analysis::Verdict::Win);
            out.scheduled_value_rejected += u64::from(value.crossed_at.is_some());
            let crosses = |z: &dyn Fn(&Totals, &Totals) -> f64| {
                conv.looks.iter().zip(&looks).any(|(look, t)| look.bound.is_some_and(|b| z(&t[0], &t[1]).abs() >= b))
            };
            out.scheduled_pooled_rejected += u64::from(crosses(&|c, v| {
                let pooled = (c.converted + v.converted) as f64 / (c.exposed + v.exposed) as f64;
                rate_diff(c, v) / (pooled * (1.0 - pooled) * spread(c, v)).sqrt()
            }));
            let p = scenario.base_rate;
            let known = crosses(&|c, v| rate_diff(c, v) / (p * (1.0 - p) * spread(c, v)).sqrt());
            out.scheduled_known_rejected += u64::from(known);
            out.scheduled_known_discordant += u64::from(known != conv.crossed_at.is_some());
        }
        out.conversion_rejected += u64::from(rejected);
        out.wins += u64::from(won);
        out.value_rejected += u64::from(value_rejected);
        out.naive_rejected += u64::from(naive);
        out.srm_flagged += u64::from(last.is_some_and(|s| s.flagged));
    }
    out
}

/// The variant's rate minus the control's.
fn rate_diff(c: &Totals, v: &Totals) -> f64 {
    v.converted as f64 / v.exposed as f64 - c.converted as f64 / c.exposed as f64
}

/// 1/n_c + 1/n_v: a difference's variance per unit of the per-unit variance.
fn spread(c: &Totals, v: &Totals) -> f64 {
    1.0 / c.exposed as f64 + 1.0 / v.exposed as f64
}

/// The fixed-horizon two-proportion z-test's p-value (for comparison only).
fn naive_p(t: &[Totals; 2], normal: &Normal) -> f64 {
    let (n0, n1) = (t[0].exposed as f64, t[1].exposed as f64);
    let (p0, p1) = (t[0].converted as f64 / n0, t[1].converted as f64 / n1);
    let se = (p0 * (1.0 - p0) / n0 + p1 * (1.0 - p1) / n1).sqrt();
    if se == 0.0 {
        return 1.0;
    }
    2.0 * (1.0 - normal.cdf(((p1 - p0) / se).abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aa(units_per_look: u64) -> Scenario {
        Scenario { base_rate: 0.1, lift: 0.0, variant_share: 0.5, looks: 14, units_per_look, scheduled: false }
    }

    #[test]
    fn daily_peeking_at_an_aa_test_keeps_false_positives_under_alpha() {
        let s = Settings::default();
        let o = run(1, 600, &aa(1000), &s);
        assert!(o.share(o.conversion_rejected) <= s.alpha, "{o:?}");
        assert!(o.share(o.value_rejected) <= s.alpha, "{o:?}");
        // The same data with a fixed-horizon test, peeked at daily, is wrong far more often:
        // proof the simulation can see the problem the sequential test solves.
        assert!(o.share(o.naive_rejected) > 1.5 * s.alpha, "{o:?}");
    }

    #[test]
    fn a_biased_split_is_caught_and_a_fair_one_is_not() {
        let s = Settings::default();
        let biased = Scenario { variant_share: 0.52, ..aa(2000) };
        let o = run(2, 100, &biased, &s);
        assert!(o.share(o.srm_flagged) >= 0.95, "{o:?}");
        let o = run(3, 200, &aa(2000), &s);
        assert!(o.share(o.srm_flagged) <= 0.01, "{o:?}");
    }

    #[test]
    fn scheduled_looks_spend_alpha_and_find_more_than_peeking_at_any_time() {
        let s = Settings::default();
        // A/A: the group-sequential test rejects about alpha of the time (it spends all of it),
        // the always-valid one far less.
        let o = run(5, 400, &Scenario { scheduled: true, ..aa(1000) }, &s);
        let (lo, hi) = o.wilson(o.scheduled_rejected);
        assert!(lo <= s.alpha && hi >= 0.02, "{o:?} [{lo}, {hi}]");
        assert!(o.share(o.value_rejected) < 0.03, "{o:?}");
        // The same boundaries with z from the true variance reject nearly the same experiments:
        // at these sizes the estimated variance moves a z across its boundary only rarely.
        assert!(o.scheduled_known_discordant <= o.experiments / 50, "{o:?}");
        assert!(o.scheduled_pooled_rejected.abs_diff(o.scheduled_rejected) <= o.experiments / 50, "{o:?}");
        // A +10% lift at 14 × 1,000 units: found more often with the schedule.
        let lifted = Scenario { lift: 0.1, scheduled: true, ..aa(2000) };
        let o = run(6, 100, &lifted, &s);
        assert!(o.scheduled_wins > o.wins + 10, "{o:?}");
    }

    #[test]
    fn a_parallel_run_adds_up_its_batches() {
        let (s, scenario) = (Settings::default(), Scenario { scheduled: true, ..aa(200) });
        let mut want = run(7_000, 3, &scenario, &s);
        want.add(&run(7_001, 2, &scenario, &s));
        assert_eq!(run_parallel(7, 5, 2, &scenario, &s), want);
    }

    #[test]
    fn the_wilson_interval_matches_its_formula() {
        // scipy.stats.binomtest(50, 1000).proportion_ci(method="wilson")
        let (lo, hi) = wilson(50, 1000);
        assert!((lo - 0.03813026239274881).abs() < 1e-12 && (hi - 0.06531382024425081).abs() < 1e-12, "{lo} {hi}");
    }

    #[test]
    fn a_real_lift_is_found() {
        let s = Settings::default();
        let lifted = Scenario { lift: 0.3, ..aa(2000) };
        let o = run(4, 100, &lifted, &s);
        assert!(o.share(o.wins) >= 0.9, "{o:?}");
    }
}
