//! The verdict on an experiment, as a pure function of its per-variant totals.
//!
//! - Conversion: rate per variant; the difference against the control with an always-valid
//!   confidence interval (a confidence sequence) and an always-valid p-value from a mixture
//!   sequential probability ratio test (mSPRT; Johari, Pekelis, Walsh 2017, "Always valid
//!   inference"), normal approximation, mixing distribution N(0, τ²) on the difference. Both stay
//!   valid however often people look, which a fixed-horizon z-test does not.
//! - Value metric (sum of the metric's values per exposed unit): mean per variant, Welch's
//!   difference with the same always-valid interval and p-value, plus Welch's fixed-horizon t-test
//!   for reference.
//! - Sample-ratio mismatch: χ² goodness of fit of the exposed units against the configured weights,
//!   flagged at p < 0.001 (as GrowthBook and Statsig do).
//!
//! - Scheduled looks ([`scheduled`]): an experiment declared with a number of looks is judged only
//!   at them, by a group-sequential z-test whose boundaries spend alpha by the Lan-DeMets
//!   O'Brien-Fleming function ([`super::group_sequential`]). It spends all of alpha by the last
//!   look, where the mSPRT, valid for looking at any time, spends little of it at 14 looks: more
//!   power for the same units, in exchange for looking only when scheduled.
//!
//! τ² is set per comparison as (φ·σ̂)², σ̂² the pooled per-unit variance: the mixture expects effects
//! of about φ standard deviations of the metric. With φ = 0.05 and a 10% base rate that is a
//! difference of 1.5 points (15% relative), which keeps power for 5–10% lifts at a few hundred
//! thousand units; `BENCHMARKS.md` has the table from `sim`.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

use super::group_sequential::{self, Look};

/// Exposed units of one variant and what they did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Units exposed (each counted once, whichever hosts saw it).
    pub exposed: u64,
    /// Exposed units with at least one metric event.
    pub converted: u64,
    /// Sum over exposed units of their summed metric values.
    pub value_sum: f64,
    /// Sum over exposed units of the square of their summed metric value.
    pub value_sumsq: f64,
}

/// How strict the analysis is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Significance level of the always-valid test and the interval's 1 − alpha coverage.
    pub alpha: f64,
    /// Expected effect size in standard deviations of the metric (sets τ).
    pub phi: f64,
    /// Sample-ratio mismatch is flagged below this p-value.
    pub srm_alpha: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { alpha: 0.05, phi: 0.05, srm_alpha: 0.001 }
    }
}

/// A variant against the control, on one metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// Variant minus control (rates, or means).
    pub diff: f64,
    /// Always-valid 1 − alpha interval of `diff`.
    pub diff_ci: (f64, f64),
    /// `diff` relative to the control (None when the control's rate or mean is 0).
    pub lift: Option<f64>,
    /// The interval relative to the control's observed value.
    pub lift_ci: Option<(f64, f64)>,
    /// Always-valid p-value (mSPRT).
    pub p_value: f64,
}

/// What the data says about a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The baseline.
    Control,
    /// Not enough data for either way (p ≥ alpha), or too few units to test.
    Inconclusive,
    /// Significantly better than the control.
    Win,
    /// Significantly worse.
    Loss,
}

impl Verdict {
    /// The word the CLI and the JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Control => "control",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Win => "win",
            Verdict::Loss => "loss",
        }
    }
}

/// One variant's row.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantResult {
    /// Its totals.
    pub totals: Totals,
    /// converted / exposed.
    pub rate: f64,
    /// Conversion against the control (None for the control).
    pub conversion: Option<Comparison>,
    /// Mean value per exposed unit.
    pub value_mean: f64,
    /// Value against the control (None for the control).
    pub value: Option<Comparison>,
    /// Welch's fixed-horizon two-sided p-value of the value difference, for reference.
    pub value_welch_p: Option<f64>,
    /// The conversion verdict.
    pub verdict: Verdict,
}

/// The sample-ratio-mismatch check.
#[derive(Clone, Debug, PartialEq)]
pub struct Srm {
    /// χ² statistic.
    pub chi2: f64,
    /// Its p-value with (variants − 1) degrees of freedom.
    pub p_value: f64,
    /// p < srm_alpha: the split is not what was configured; do not trust the results.
    pub flagged: bool,
}

/// The whole verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// Per variant, the control first.
    pub variants: Vec<VariantResult>,
    /// None while fewer than 2 variants have a weight and a unit.
    pub srm: Option<Srm>,
}

/// Fewer exposed units than this in an arm: no test.
pub const MIN_UNITS: u64 = 30;

/// Analyses `totals` (the control first) against the configured `weights`.
pub fn analyze(totals: &[Totals], weights: &[u32], settings: &Settings) -> Analysis {
    let control = totals.first().copied().unwrap_or_default();
    let variants = totals
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let rate = ratio(t.converted as f64, t.exposed as f64);
            let value_mean = ratio(t.value_sum, t.exposed as f64);
            if i == 0 {
                return VariantResult {
                    totals: *t,
                    rate,
                    conversion: None,
                    value_mean,
                    value: None,
                    value_welch_p: None,
                    verdict: Verdict::Control,
                };
            }
            let conversion = compare_rates(&control, t, settings);
            let value = compare_means(&control, t, settings);
            let verdict = match conversion {
                Some(c) if c.p_value < settings.alpha && c.diff > 0.0 => Verdict::Win,
                Some(c) if c.p_value < settings.alpha && c.diff < 0.0 => Verdict::Loss,
                _ => Verdict::Inconclusive,
            };
            VariantResult {
                totals: *t,
                rate,
                conversion,
                value_mean,
                value: value.map(|v| v.0),
                value_welch_p: value.map(|v| v.1),
                verdict,
            }
        })
        .collect();
    let observed: Vec<u64> = totals.iter().map(|t| t.exposed).collect();
    Analysis { variants, srm: srm(&observed, weights, settings.srm_alpha) }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The always-valid comparisons of `variant` against `control`: (conversion, value); None with
/// fewer than [`MIN_UNITS`] in either.
pub fn comparisons(control: &Totals, variant: &Totals, s: &Settings) -> (Option<Comparison>, Option<Comparison>) {
    (compare_rates(control, variant, s), compare_means(control, variant, s).map(|v| v.0))
}

fn compare_rates(control: &Totals, variant: &Totals, s: &Settings) -> Option<Comparison> {
    if control.exposed < MIN_UNITS || variant.exposed < MIN_UNITS {
        return None;
    }
    let (nc, nv) = (control.exposed as f64, variant.exposed as f64);
    let (pc, pv) = (control.converted as f64 / nc, variant.converted as f64 / nv);
    let var = pc * (1.0 - pc) / nc + pv * (1.0 - pv) / nv;
    let pooled = (control.converted + variant.converted) as f64 / (nc + nv);
    let sigma2 = pooled * (1.0 - pooled);
    Some(comparison(pv - pc, var, sigma2, pc, s))
}

/// Welch's comparison of mean values: the always-valid comparison and the fixed-horizon p-value.
fn compare_means(control: &Totals, variant: &Totals, s: &Settings) -> Option<(Comparison, f64)> {
    if control.exposed < MIN_UNITS || variant.exposed < MIN_UNITS {
        return None;
    }
    let (mc, vc) = mean_var(control);
    let (mv, vv) = mean_var(variant);
    let (nc, nv) = (control.exposed as f64, variant.exposed as f64);
    let se2 = vc / nc + vv / nv;
    let welch_p = welch(mv - mc, vc, nc, vv, nv).1;
    Some((comparison(mv - mc, se2, (vc + vv) / 2.0, mc, s), welch_p))
}

/// Mean and sample variance of a variant's per-unit values.
pub fn mean_var(t: &Totals) -> (f64, f64) {
    let n = t.exposed as f64;
    if n < 2.0 {
        return (ratio(t.value_sum, n), 0.0);
    }
    let mean = t.value_sum / n;
    let var = ((t.value_sumsq - n * mean * mean) / (n - 1.0)).max(0.0);
    (mean, var)
}

/// Welch's t statistic, two-sided p-value and degrees of freedom for a difference `diff` of two
/// means with sample variances `v1`, `v2` over `n1`, `n2` units.
pub fn welch(diff: f64, v1: f64, n1: f64, v2: f64, n2: f64) -> (f64, f64, f64) {
    let (a, b) = (v1 / n1, v2 / n2);
    let se = (a + b).sqrt();
    if se == 0.0 {
        return (0.0, 1.0, n1 + n2 - 2.0);
    }
    let t = diff / se;
    let df = (a + b).powi(2) / (a * a / (n1 - 1.0) + b * b / (n2 - 1.0));
    let p = match StudentsT::new(0.0, 1.0, df) {
        // The survival function, not 1 − cdf: the tail keeps its digits below 1e-16.
        Ok(dist) => 2.0 * dist.sf(t.abs()),
        Err(_) => 1.0,
    };
    (t, p.clamp(0.0, 1.0), df)
}

fn comparison(diff: f64, var: f64, sigma2: f64, base: f64, s: &Settings) -> Comparison {
    let tau2 = s.phi * s.phi * sigma2;
    let p_value = msprt_p(diff, var, tau2);
    let diff_ci = confidence_sequence(diff, var, tau2, s.alpha);
    let (lift, lift_ci) =
        if base > 0.0 { (Some(diff / base), Some((diff_ci.0 / base, diff_ci.1 / base))) } else { (None, None) };
    Comparison { diff, diff_ci, lift, lift_ci, p_value }
}

/// The mSPRT's always-valid p-value after observing an estimate `diff` of variance `var`, with a
/// N(0, `tau2`) mixture over the true difference: 1 / Λ capped at 1, where
/// Λ = √(V/(V+τ²)) · exp(τ²·diff² / (2V(V+τ²))). P(Λ ever exceeds 1/α | no difference) ≤ α
/// (Ville's inequality), so looking at it every day is fine.
pub fn msprt_p(diff: f64, var: f64, tau2: f64) -> f64 {
    if var <= 0.0 || tau2 <= 0.0 {
        return 1.0;
    }
    let log_lambda = 0.5 * (var / (var + tau2)).ln() + tau2 * diff * diff / (2.0 * var * (var + tau2));
    (-log_lambda).exp().min(1.0)
}

/// The always-valid 1 − alpha interval matching [`msprt_p`]: the differences θ the test would not
/// reject, diff ± √((2V(V+τ²)/τ²) · (ln(1/α) + ½ ln((V+τ²)/V))).
pub fn confidence_sequence(diff: f64, var: f64, tau2: f64, alpha: f64) -> (f64, f64) {
    if var <= 0.0 || tau2 <= 0.0 {
        return (diff, diff);
    }
    let half = ((2.0 * var * (var + tau2) / tau2) * ((1.0 / alpha).ln() + 0.5 * ((var + tau2) / var).ln())).sqrt();
    (diff - half, diff + half)
}

/// One scheduled look of a variant against the control, on one metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduledLook {
    /// Variant minus control at the look (None with too few units to test).
    pub diff: Option<f64>,
    /// diff / its standard error.
    pub z: Option<f64>,
    /// Reject when |z| ≥ this (None: this look spends nothing).
    pub bound: Option<f64>,
    /// Alpha spent by the end of this look.
    pub spent: f64,
    /// Two-sided p-value of z as if this look were the only one.
    pub nominal_p: Option<f64>,
    /// The nominal p-value this look needs to reject: 2 − 2Φ(bound).
    pub threshold: Option<f64>,
}

/// A variant against the control over the scheduled looks taken so far, on one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    /// Each look taken, the first first.
    pub looks: Vec<ScheduledLook>,
    /// The first look (1-based) whose |z| reached its boundary: the result, which later looks do
    /// not change.
    pub crossed_at: Option<usize>,
    /// The intersection of the repeated confidence intervals diff ± bound · se of the looks that
    /// tested (Jennison and Turnbull): all of them cover the true difference together with
    /// probability 1 − alpha, so their intersection does too. None before a look tests.
    pub diff_ci: Option<(f64, f64)>,
    /// The interval relative to the control's rate (or mean) at the last look.
    pub lift_ci: Option<(f64, f64)>,
}

impl Scheduled {
    /// Win or loss once a boundary is crossed (by the sign of the difference at that look).
    pub fn verdict(&self) -> Verdict {
        match self.crossed_at.and_then(|k| self.looks[k - 1].diff) {
            Some(d) if d > 0.0 => Verdict::Win,
            Some(d) if d < 0.0 => Verdict::Loss,
            _ => Verdict::Inconclusive,
        }
    }
}

/// The group-sequential analysis of `variant` (index ≥ 1) against the control (index 0), from
/// the totals at each look taken (`looks[k]` holds every variant's totals at look k + 1) of
/// `planned` looks: returns (conversion, value). The information at a look is
/// n_c·n_v / (n_c + n_v), the inverse of the variance of a difference up to the metric's variance,
/// which is the same at every look under no difference; look k spends up to α*(k / planned).
pub fn scheduled(looks: &[Vec<Totals>], planned: u32, variant: usize, alpha: f64) -> (Scheduled, Scheduled) {
    let pairs: Vec<(Totals, Totals)> = looks
        .iter()
        .map(|t| (t.first().copied().unwrap_or_default(), t.get(variant).copied().unwrap_or_default()))
        .collect();
    let tests: Vec<bool> = pairs.iter().map(|(c, v)| c.exposed >= MIN_UNITS && v.exposed >= MIN_UNITS).collect();
    let design: Vec<Look> = pairs
        .iter()
        .zip(&tests)
        .enumerate()
        .map(|(k, ((c, v), tests))| {
            let (nc, nv) = (c.exposed as f64, v.exposed as f64);
            let info = if *tests { nc * nv / (nc + nv) } else { 0.0 };
            Look { time: (k + 1) as f64 / f64::from(planned.max(1)), info }
        })
        .collect();
    let bounds = group_sequential::boundaries(alpha, &design);
    let rates: Vec<Option<(f64, f64, f64)>> = pairs
        .iter()
        .zip(&tests)
        .map(|((c, v), tests)| {
            tests.then(|| {
                let (nc, nv) = (c.exposed as f64, v.exposed as f64);
                let (pc, pv) = (c.converted as f64 / nc, v.converted as f64 / nv);
                (pv - pc, pc * (1.0 - pc) / nc + pv * (1.0 - pv) / nv, pc)
            })
        })
        .collect();
    let means: Vec<Option<(f64, f64, f64)>> = pairs
        .iter()
        .zip(&tests)
        .map(|((c, v), tests)| {
            tests.then(|| {
                let ((mc, vc), (mv, vv)) = (mean_var(c), mean_var(v));
                (mv - mc, vc / c.exposed as f64 + vv / v.exposed as f64, mc)
            })
        })
        .collect();
    (scheduled_metric(&rates, &bounds), scheduled_metric(&means, &bounds))
}

/// One metric's looks: (diff, its variance, the control's value) where it can be tested.
fn scheduled_metric(points: &[Option<(f64, f64, f64)>], bounds: &[group_sequential::Bound]) -> Scheduled {
    let normal = Normal::new(0.0, 1.0).expect("the standard normal is valid");
    let mut out = Scheduled { looks: Vec::new(), crossed_at: None, diff_ci: None, lift_ci: None };
    let mut base = None;
    for (k, (point, b)) in points.iter().zip(bounds).enumerate() {
        let tested = point.filter(|(_, var, _)| *var > 0.0);
        let z = tested.map(|(d, var, _)| d / var.sqrt());
        let look = ScheduledLook {
            diff: point.map(|p| p.0),
            z,
            bound: b.z,
            spent: b.spent,
            nominal_p: z.map(|z| (2.0 * normal.sf(z.abs())).min(1.0)),
            threshold: b.z.map(|b| 2.0 * normal.sf(b)),
        };
        if let (Some((d, var, control)), Some(bound)) = (tested, b.z) {
            let half = bound * var.sqrt();
            let (lo, hi) = out.diff_ci.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            out.diff_ci = Some((lo.max(d - half), hi.min(d + half)));
            if out.crossed_at.is_none() && (d / var.sqrt()).abs() >= bound {
                out.crossed_at = Some(k + 1);
            }
            base = Some(control);
        }
        out.looks.push(look);
    }
    if let (Some((lo, hi)), Some(base)) = (out.diff_ci, base.filter(|b| *b > 0.0)) {
        out.lift_ci = Some((lo / base, hi / base));
    }
    out
}

/// χ² goodness of fit over several periods, each with its own weights (an experiment's epochs:
/// each ramp starts one): the statistics and degrees of freedom of the periods add up. Periods
/// with no units are left out; None if none is left.
pub fn srm_periods(periods: &[(&[u32], &[u64])], srm_alpha: f64) -> Option<Srm> {
    let (mut chi2, mut df) = (0.0, 0usize);
    for (weights, observed) in periods {
        if let Some((c, d)) = chi2_fit(observed, weights) {
            chi2 += c;
            df += d;
        }
    }
    if df == 0 {
        return None;
    }
    let p_value = match ChiSquared::new(df as f64) {
        // The survival function, not 1 − cdf, which rounds every p below 1e-16 to 0.
        Ok(dist) => dist.sf(chi2).clamp(0.0, 1.0),
        Err(_) => 1.0,
    };
    Some(Srm { chi2, p_value, flagged: p_value < srm_alpha })
}

/// χ² and degrees of freedom of `observed` against `weights`.
fn chi2_fit(observed: &[u64], weights: &[u32]) -> Option<(f64, usize)> {
    let total_w: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let total_n: f64 = observed.iter().map(|n| *n as f64).sum();
    let arms: Vec<(f64, f64)> = observed
        .iter()
        .zip(weights)
        .filter(|(_, w)| **w > 0)
        .map(|(n, w)| (*n as f64, total_n * f64::from(*w) / total_w))
        .collect();
    if arms.len() < 2 || total_n == 0.0 {
        return None;
    }
    let chi2: f64 = arms.iter().map(|(o, e)| (o - e).powi(2) / e).sum();
    Some((chi2, arms.len() - 1))
}

/// χ² goodness of fit of `observed` against `weights`; None without two weighted variants or with
/// no units.
pub fn srm(observed: &[u64], weights: &[u32], srm_alpha: f64) -> Option<Srm> {
    srm_periods(&[(weights, observed)], srm_alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-300)
    }

    // Reference values from an independent implementation (scipy 1.x and numpy):
    //   python3 scripts/reference/experiments_reference.py
    // Its output is recorded in scripts/reference/experiments_reference.txt.

    #[test]
    fn srm_matches_scipy_chisquare() {
        // scipy.stats.chisquare([5200, 4800], [5000, 5000])
        let s = srm(&[5200, 4800], &[50, 50], 0.001).unwrap();
        assert!(close(s.chi2, 16.0, 1e-12));
        assert!(close(s.p_value, REF_SRM_2_P, 1e-6), "{}", s.p_value);
        assert!(s.flagged);
        // scipy.stats.chisquare([2050, 2950, 5000], [2000, 3000, 5000])
        let s = srm(&[2050, 2950, 5000], &[20, 30, 50], 0.001).unwrap();
        assert!(close(s.chi2, REF_SRM_3_CHI2, 1e-9));
        assert!(close(s.p_value, REF_SRM_3_P, 1e-6), "{}", s.p_value);
        assert!(!s.flagged);
    }

    #[test]
    fn srm_adds_up_periods_with_their_own_weights() {
        // scipy.stats.chi2.sf(16.0 + 2.0833333333333335, 3)
        let s = srm_periods(&[(&[50, 50], &[5200, 4800]), (&[20, 30, 50], &[2050, 2950, 5000])], 0.001).unwrap();
        assert!(close(s.chi2, 16.0 + REF_SRM_3_CHI2, 1e-9));
        assert!(close(s.p_value, REF_SRM_SUM_P, 1e-6), "{}", s.p_value);
        // A ramp: 50/50 before, 20/80 after, each period fits its own weights.
        let ok = srm_periods(&[(&[50, 50], &[1010, 990]), (&[20, 80], &[405, 1595])], 0.001).unwrap();
        assert!(!ok.flagged, "{ok:?}");
        // Judged against the newest weights only, the same units would look broken.
        assert!(srm(&[1415, 2585], &[20, 80], 0.001).unwrap().flagged);
        assert!(srm_periods(&[(&[50, 50], &[0, 0])], 0.001).is_none());
    }

    #[test]
    fn tiny_p_values_keep_their_digits() {
        // scipy.stats.chisquare([5600, 4400], [5000, 5000]) and [6000, 4000]: 1 − cdf gave 0.
        let s = srm(&[5600, 4400], &[50, 50], 0.001).unwrap();
        assert!(close(s.p_value, REF_SRM_FAR_P, 1e-6), "{}", s.p_value);
        let s = srm(&[6000, 4000], &[50, 50], 0.001).unwrap();
        assert!(close(s.p_value, REF_SRM_FARTHER_P, 1e-6), "{}", s.p_value);
        // scipy.stats.ttest_ind_from_stats(2.0, 1.0, 100, 0.0, 1.0, 100, equal_var=False)
        let (_, p, _) = welch(2.0, 1.0, 100.0, 1.0, 100.0);
        assert!(close(p, REF_WELCH_FAR_P, 1e-6), "{p}");
    }

    #[test]
    fn welch_matches_scipy() {
        // scipy.stats.ttest_ind_from_stats(10.5, sqrt(9), 400, 10.0, sqrt(16), 500, equal_var=False)
        let (t, p, df) = welch(0.5, 9.0, 400.0, 16.0, 500.0);
        assert!(close(t, REF_WELCH_T, 1e-9), "{t}");
        assert!(close(p, REF_WELCH_P, 1e-6), "{p}");
        assert!(close(df, REF_WELCH_DF, 1e-9), "{df}");
    }

    #[test]
    fn msprt_matches_the_reference_implementation() {
        // Conversion: control 1000/10000, variant 1100/10000, phi 0.05, alpha 0.05.
        let c = Totals { exposed: 10_000, converted: 1000, ..Default::default() };
        let v = Totals { exposed: 10_000, converted: 1100, ..Default::default() };
        let cmp = compare_rates(&c, &v, &Settings::default()).unwrap();
        assert!(close(cmp.p_value, REF_MSPRT_P, 1e-6), "{}", cmp.p_value);
        assert!(close(cmp.diff_ci.0, REF_CS_LO, 1e-6), "{:?}", cmp.diff_ci);
        assert!(close(cmp.diff_ci.1, REF_CS_HI, 1e-6), "{:?}", cmp.diff_ci);
    }

    #[test]
    fn the_interval_excludes_zero_exactly_when_the_test_rejects() {
        for converted in [1000u64, 1050, 1080, 1100, 1150, 1200, 900, 850] {
            let c = Totals { exposed: 10_000, converted: 1000, ..Default::default() };
            let v = Totals { exposed: 10_000, converted, ..Default::default() };
            let cmp = compare_rates(&c, &v, &Settings::default()).unwrap();
            let excludes = cmp.diff_ci.0 > 0.0 || cmp.diff_ci.1 < 0.0;
            assert_eq!(excludes, cmp.p_value < 0.05, "{converted}: {cmp:?}");
        }
    }

    #[test]
    fn verdicts_follow_the_data() {
        let t = |n: u64, c: u64| Totals { exposed: n, converted: c, value_sum: c as f64, value_sumsq: c as f64 };
        let a = analyze(&[t(50_000, 5000), t(50_000, 5750)], &[50, 50], &Settings::default());
        assert_eq!(a.variants[0].verdict, Verdict::Control);
        assert_eq!(a.variants[1].verdict, Verdict::Win);
        assert!(a.variants[1].value.unwrap().p_value < 0.05);
        assert!(!a.srm.unwrap().flagged);
        let a = analyze(&[t(50_000, 5000), t(50_000, 5020)], &[50, 50], &Settings::default());
        assert_eq!(a.variants[1].verdict, Verdict::Inconclusive);
        let a = analyze(&[t(50_000, 5000), t(50_000, 4300)], &[50, 50], &Settings::default());
        assert_eq!(a.variants[1].verdict, Verdict::Loss);
        let a = analyze(&[t(10, 1), t(12, 5)], &[50, 50], &Settings::default());
        assert_eq!(a.variants[1].verdict, Verdict::Inconclusive, "too few units to test");
        assert!(a.variants[1].conversion.is_none());
    }

    // Printed by scripts/reference/experiments_reference.py (see experiments_reference.txt).
    const REF_SRM_2_P: f64 = 6.334248366623988e-05;
    const REF_SRM_3_CHI2: f64 = 2.0833333333333335;
    const REF_SRM_3_P: f64 = 0.35286608145884896;
    const REF_SRM_SUM_P: f64 = 0.0004227810943474292;
    const REF_SRM_FAR_P: f64 = 3.5529642241553834e-33;
    const REF_SRM_FARTHER_P: f64 = 5.507248237212379e-89;
    const REF_WELCH_FAR_P: f64 = 7.617128426617721e-32;
    const REF_WELCH_T: f64 = 2.1417646843905964;
    const REF_WELCH_P: f64 = 0.03248197114164559;
    const REF_WELCH_DF: f64 = 894.4108301676624;
    const REF_MSPRT_P: f64 = 0.31271593442233997;
    const REF_CS_LO: f64 = -0.0032062278191185246;
    const REF_CS_HI: f64 = 0.023206227819118515;
}
