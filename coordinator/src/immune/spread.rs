//! The fleet's spread of hosts' changes, learned from past waves and kept in the replicated state
//! (`Command::LearnSpread`, `sm/spread/<repo>`).
//!
//! A ratio judged against each host's own past ([`super::analysis::Monitor::with_history`]) needs
//! to know how much healthy hosts' changes differ beyond their sampling noise (a host's neighbour
//! got busier, its cache warmed up): that spread is what stops an unusual but healthy canary from
//! being reverted. One wave's few baseline hosts estimate it poorly, so the judge took at least a
//! fixed 5% (`Settings::change_host_spread`). Every judged wave's baseline hosts — on the old
//! release before and during the wave, so healthy by construction whatever the canary did — are
//! one more sample of it: at the end of each judged wave the leader proposes that sample
//! ([`SpreadSample`]: the hosts' squared deviations beyond their sampling noise, and their degrees
//! of freedom), and applying it folds it into an exponentially weighted pool per metric
//! ([`LearnedSpread::fold`]). Once the pool holds [`MIN_DF`] degrees of freedom its estimate
//! replaces the fixed floor for that repository's next waves; before, the floor stays.
//!
//! Bounded: one record per repository, at most [`MAX_METRICS`] metrics in it (the oldest-updated
//! dropped first), each a handful of numbers. Deterministic: a fold is arithmetic on the command's
//! numbers and the stored ones, and a sample for a wave already folded (the leader may propose it
//! again before its step commits, or a new leader may) changes nothing.

use bincode::{Decode, Encode};

/// Each wave's weight relative to the next one's: after about 20 waves a sample counts a tenth
/// as much, so the pool follows a fleet that changes (new hardware, a new neighbour) within a few
/// dozen rollouts while one odd wave moves it little.
pub const DECAY: f64 = 0.9;

/// Degrees of freedom the pool needs before it replaces the fixed floor: about three waves of
/// five baseline hosts. Below it the estimate is too rough to be taken as known.
pub const MIN_DF: f64 = 10.0;

/// Most metrics one repository's record keeps.
pub const MAX_METRICS: usize = 64;

/// Longest metric name a sample may carry.
pub const MAX_NAME: usize = 256;

/// One metric's contribution from one wave: its baseline hosts' log changes `y` (each against its
/// own past) with sampling variances `v`, as `excess = Σ (y − ȳ)² − (1 − 1/k) Σ v`, whose
/// expectation is `(k − 1) τ²` for `k` hosts and a between-host variance of changes `τ²`, and
/// `df = k − 1`.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct SpreadSample {
    /// The metric's name (as in the release's `[immune]`).
    pub metric: String,
    /// Squared deviations beyond the sampling noise (may be negative: noise).
    pub excess: f64,
    /// Its degrees of freedom (hosts − 1).
    pub df: f64,
}

impl SpreadSample {
    /// Refuses a sample no judge could have made.
    pub fn check(&self) -> Result<(), String> {
        if self.metric.is_empty() || self.metric.len() > MAX_NAME {
            return Err(format!("metric name of {} bytes (1 to {MAX_NAME})", self.metric.len()));
        }
        if !(self.df >= 1.0 && self.df <= 10_000.0 && self.df.fract() == 0.0) {
            return Err(format!("metric {}: {} degrees of freedom (a whole number, 1 to 10000)", self.metric, self.df));
        }
        if !(self.excess.is_finite() && self.excess.abs() <= 1e6) {
            return Err(format!("metric {}: excess {} is not a finite number within ±1e6", self.metric, self.excess));
        }
        Ok(())
    }
}

/// One metric's pool.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct PooledSpread {
    /// The metric's name.
    pub metric: String,
    /// Σ over past waves of `DECAY^age · excess`.
    pub excess: f64,
    /// Σ over past waves of `DECAY^age · df`.
    pub df: f64,
    /// Waves folded in.
    pub waves: u64,
    /// The fold that last changed it (its order among the record's folds), for dropping the
    /// stalest metric when the record is full.
    pub updated: u64,
}

/// A repository's learned spreads.
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
pub struct LearnedSpread {
    /// The last wave folded in: (rollout, wave). A sample of it or of an earlier one is not
    /// folded again.
    pub last: Option<(u64, u64)>,
    /// Folds so far.
    pub folds: u64,
    /// One pool per metric.
    pub metrics: Vec<PooledSpread>,
}

impl LearnedSpread {
    /// Folds one wave's samples in; false (and nothing changed) when that wave or a later one is
    /// already in. Every metric of the record ages by one wave; a metric the wave did not sample
    /// ages too (its older samples count for less as the fleet moves on).
    pub fn fold(&mut self, rollout: u64, wave: u64, samples: &[SpreadSample]) -> bool {
        if self.last.is_some_and(|last| (rollout, wave) <= last) {
            return false;
        }
        self.last = Some((rollout, wave));
        self.folds += 1;
        for m in &mut self.metrics {
            m.excess *= DECAY;
            m.df *= DECAY;
        }
        for s in samples {
            match self.metrics.iter_mut().find(|m| m.metric == s.metric) {
                Some(m) => {
                    m.excess += s.excess;
                    m.df += s.df;
                    m.waves += 1;
                    m.updated = self.folds;
                }
                None => {
                    if self.metrics.len() >= MAX_METRICS {
                        // Full: the metric updated longest ago makes room.
                        if let Some(stalest) =
                            self.metrics.iter().enumerate().min_by_key(|(_, m)| m.updated).map(|(i, _)| i)
                        {
                            self.metrics.remove(stalest);
                        }
                    }
                    self.metrics.push(PooledSpread {
                        metric: s.metric.clone(),
                        excess: s.excess,
                        df: s.df,
                        waves: 1,
                        updated: self.folds,
                    });
                }
            }
        }
        true
    }

    /// The learned spread (one standard deviation of hosts' log changes) of `metric`, once its
    /// pool has [`MIN_DF`] degrees of freedom; None before (the fixed floor then applies).
    pub fn spread(&self, metric: &str) -> Option<f64> {
        let m = self.metrics.iter().find(|m| m.metric == metric)?;
        (m.df >= MIN_DF).then(|| (m.excess / m.df).max(0.0).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metric: &str, excess: f64, df: f64) -> SpreadSample {
        SpreadSample { metric: metric.into(), excess, df }
    }

    #[test]
    fn folds_are_weighted_deterministic_and_taken_once() {
        let mut a = LearnedSpread::default();
        assert_eq!(a.spread("error_rate"), None, "no history: the floor applies");
        // Three waves of five baseline hosts, each saying τ² = 0.0004 (2 %), 0.0009, 0.0001.
        assert!(a.fold(1, 0, &[sample("error_rate", 4.0 * 0.0004, 4.0)]));
        assert_eq!(a.spread("error_rate"), None, "4 df is below MIN_DF");
        assert!(a.fold(1, 1, &[sample("error_rate", 4.0 * 0.0009, 4.0)]));
        assert!(a.fold(2, 0, &[sample("error_rate", 4.0 * 0.0001, 4.0)]));
        // Weighted: (0.81·0.0016 + 0.9·0.0036 + 0.0004) / (0.81·4 + 0.9·4 + 4).
        let want = ((0.81f64 * 0.0016 + 0.9 * 0.0036 + 0.0004) / (0.81 * 4.0 + 0.9 * 4.0 + 4.0)).sqrt();
        let got = a.spread("error_rate").expect("10.84 df");
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // The same wave again (a repeated proposal) or an older one changes nothing.
        let before = a.clone();
        assert!(!a.fold(2, 0, &[sample("error_rate", 100.0, 4.0)]));
        assert!(!a.fold(1, 1, &[sample("error_rate", 100.0, 4.0)]));
        assert_eq!(a, before);
        // Another node applying the same commands in the same order holds the same bytes.
        let mut b = LearnedSpread::default();
        b.fold(1, 0, &[sample("error_rate", 4.0 * 0.0004, 4.0)]);
        b.fold(1, 1, &[sample("error_rate", 4.0 * 0.0009, 4.0)]);
        b.fold(2, 0, &[sample("error_rate", 4.0 * 0.0001, 4.0)]);
        assert_eq!(fifty_shared::codec::to_bytes(&a).unwrap(), fifty_shared::codec::to_bytes(&b).unwrap());
        // Noise can make the excess negative: the spread is then 0, not NaN.
        let mut quiet = LearnedSpread::default();
        quiet.fold(1, 0, &[sample("error_rate", -0.01, 12.0)]);
        assert_eq!(quiet.spread("error_rate"), Some(0.0));
    }

    #[test]
    fn the_record_stays_bounded_and_bad_samples_are_named() {
        let mut a = LearnedSpread::default();
        for i in 0..(MAX_METRICS as u64 + 10) {
            a.fold(i, 0, &[sample(&format!("m{i}"), 0.01, 4.0)]);
        }
        assert_eq!(a.metrics.len(), MAX_METRICS);
        assert!(a.metrics.iter().all(|m| m.metric != "m0"), "the stalest metric made room");
        assert!(a.metrics.iter().any(|m| m.metric == "m73"));
        assert!(sample("error_rate", f64::NAN, 4.0).check().unwrap_err().contains("error_rate"));
        assert!(sample("error_rate", 0.1, 0.5).check().unwrap_err().contains("degrees of freedom"));
        assert!(sample("", 0.1, 4.0).check().is_err());
        assert!(sample("error_rate", 0.1, 4.0).check().is_ok());
    }
}
