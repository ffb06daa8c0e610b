//! The cluster immune system's statistics: while a wave bakes, compare the metrics of hosts on the new
//! release (canary) with hosts still on the old one (baseline) over the same intervals, and call a
//! statistically significant regression so the release can be reverted.
//!
//! Architecture invariant: this module is pure. It takes per-host, per-interval deltas (the agents'
//! Prometheus scrapes, tagged with the release they were observed under) and returns verdicts; it
//! knows nothing of scraping, time or the rollout controller, which feeds it and acts on
//! [`analysis::decide_wave`]. [`sim`] drives the same code with a seeded, simulated fleet.
//! [`apply`] is the state machine's part, outside that rule: it writes a decided revert
//! (`Command::ImmuneRevert`) and the replicated evidence of a baking wave's tests
//! (`Command::ImmuneEvidence`, [`evidence`]) to the store, from the command alone, like every
//! command's apply. With that evidence a new leader continues a wave's tests instead of starting
//! them again ([`judge::Judge::resume`], [`analysis::Monitor::resume`]).
//!
//! # The model
//!
//! Every metric is reduced to one number per host (over the intervals seen so far) on a scale where a
//! release effect is a shift:
//!
//! - **ratio** (`5xx / requests`): the host's rate over the pooled rate, `x = r_h / p₀`. Counts are
//!   quasi-Poisson: `Var(num) = φ · den · rate`, with the dispersion `φ ≥ 1` estimated (Pearson) from
//!   each host's intervals around that host's own rate, so bursty errors widen the test instead of
//!   tripping it. The sampling evidence is the signed root of the two-Poisson likelihood ratio with a
//!   continuity correction (its tail follows the exact conditional binomial test at the handful of
//!   events a canary sees in its first seconds, where the score z's normal tail is far too thin),
//!   divided by `√φ`. A zero baseline is just a rate of zero: a canary with enough errors against it
//!   fails.
//! - **histogram** (latency): the host's Mann-Whitney AUC, the probability that one of its requests is
//!   slower than a baseline request (ties count one half), computed from the bucket counts in
//!   O(buckets) (a baseline host is compared with the other baseline hosts). Its sampling variance is
//!   the tie-corrected Mann-Whitney variance. A rank statistic: no assumption on the latency
//!   distribution's shape, and the coarse buckets only cost power.
//! - **gauge** (CPU, memory): the host's mean over its intervals, relative to the fleet mean, with the
//!   intervals' variance as sampling variance.
//!
//! **Each host against itself.** When the monitor has each host's past on the old release
//! ([`analysis::Monitor::with_history`]; the judge gives it the ten minutes before the wave), a
//! ratio is judged on `y_h = ln(rate now / rate before)` per host instead (half an event added to
//! each count; variance `φ/(n + ½)` per window): the canary hosts' mean change minus the baseline
//! hosts', a difference in differences in which a host's persistent effect and fleet-wide drift
//! cancel. The hosts' changes still get a between-host spread (DerSimonian-Laird, floor
//! `change_host_spread`: 5%, or the spread learned from the repository's past waves once it rests
//! on enough of them, [`spread`]). Without that history for every host, the model below applies.
//!
//! Hosts differ for reasons other than the release (hardware, neighbours, traffic mix), and a canary
//! host can simply be an unusual host. So each host summary is `x_h = level_side + u_h + e_h`: a
//! random host effect `u_h` with variance `τ²` plus sampling noise `e_h` with its model variance `v_h`.
//! `τ²` is estimated by moments (DerSimonian-Laird), pooled within the two sides: for weights `w`,
//! `E Σ w (x − x̄_w)² = Σ w v − Σ w² v / W + τ² (W − Σ w² / W)`. For ratios the spread is relative to
//! each side's level (host effects multiply a rate) and hosts are weighted by their precision, so a
//! side of low-count hosts says little. The contrast `Δ = x̄_canary − x̄_baseline` then has variance
//! `A + B`, `A = τ² K` (`K = Σ w²` over both sides, weights normalised per side) and `B = Σ w² v`; the
//! statistic is `Δ / √(A + B)` (for ratios, the likelihood-ratio root times `√(B / (A + B))`).
//!
//! `τ²` rests on `hosts − 2` degrees of freedom, so the statistic is referred to Student's t with
//! Welch-Satterthwaite degrees of freedom: with many hosts or a dominant sampling part this is a
//! z-test; with six hosts and a dominant host spread it is a t-test on about four degrees of freedom,
//! as it must be. Five baseline hosts with a few errors each cannot rule out a large spread, and a
//! quiet-looking baseline (a low draw of a four-degree-of-freedom estimate, common when each host has
//! only a few events) would let an unusual canary host fail: for ratios the spread is therefore at least `ratio_host_spread`
//! (default 0.2, a coefficient of variation of healthy hosts' rates), taken as known, and only the
//! excess the data show above it counts as uncertain (`(K · excess)² / df` in Satterthwaite's sum).
//! Without two hosts on one side the spread cannot be measured: histograms and gauges are then
//! inconclusive, ratios use the floor and say so in the note.
//!
//! # Peeking
//!
//! The one-sided t is mapped to a normal score `z`, and `z` with the contrast's variance `V` to a
//! one-sided normal-mixture likelihood ratio (mSPRT, Robbins; Johari et al. 2017) with a half-normal
//! prior on the regression of standard deviation `σ` (`Settings::mixture_scale`, relative):
//! `Λ = 2/√(1+r) · exp(z² r / (2(1+r))) · Φ(z √(r/(1+r)))`, `r = σ²/V`, averaged with equal weights
//! over six scales `σ · {½, 1, 2, 4, 8, 16}` so that a large regression is caught in a look or two
//! while small ones are still tuned for (an average of martingales is a martingale). For a Gaussian contrast whose
//! information grows with the looks, `Λ` is a nonnegative martingale when there is no regression, so by
//! Ville's inequality `P(Λ ever ≥ 1/α) ≤ α`: the always-valid p-value `min over looks of 1/Λ` may be
//! checked after every interval without inflating false reverts. The host-effect part of `Δ` does not
//! shrink with time (it is one draw per wave); against a constant the mixture boundary (|z| ≈ 3.9 at
//! α = 0.0025) is far stricter than a single look needs (2.8), which is what keeps the combined test
//! valid. The plug-in variances and the t-to-normal mapping make this an approximation, so the
//! simulation measures the false-revert rate rather than assume it.
//!
//! # Alpha and decisions
//!
//! `alpha` is the false-revert probability of a whole rollout, split evenly (Bonferroni) over every
//! metric of every analysed wave ([`analysis::Budget`]). A metric fails when its always-valid p-value
//! is at or below its share and the observed change is at least `min_effect` in the bad direction.
//! A metric passes in one of two ways, which share `β = 1 − pass_confidence` between them:
//!
//! - **early, at any look**: the observed change is below `min_effect` and the mirror-image
//!   sequential test — of "the regression is at least `pass_bound`", a one-sided normal mixture on
//!   `pass_bound − Δ` with the tolerance itself as its prior's scale — has reached `2/β` at some
//!   look (inverted, it is the always-valid upper bound a held wave shows);
//! - **at the end look**, once: when the bake can be extended no more (`max_bake` reached, or a
//!   metric more data cannot decide), each metric not yet passed takes one fixed-horizon look
//!   ([`analysis::Monitor::end_look`]) and passes if its `1 − β_end` upper confidence bound — the
//!   same estimate and variance, the spread floor included, Student's t on their degrees of
//!   freedom — is at or below `pass_bound`.
//!
//! Under a regression of exactly `pass_bound` the statistic is a Brownian motion in the
//! information, so the chance that either happens is a boundary-crossing probability:
//! `β_end` is the end look's level that makes it `β`, given how much the data know about the
//! tolerance at the end ([`analysis::end_level`]: 9.0% at the 1 + 5 fleet's 5-minute bake where
//! halves gave 5%; never below `β/2`, which the union bound alone guarantees). The early pass
//! rarely fires without the end look also passing, so little of its `β/2` is lost; a larger
//! regression passes less often still. That is where most of `β` is spent: at the last look,
//! where the information is largest. Otherwise a metric is inconclusive — too little data is
//! never a pass. A wave undecided at the end of its bake bakes on while more data can decide
//! (`max_bake`, default 5 minutes; neither sequential test spends anything on it), takes its end
//! look, and only then holds for a person.
//! The end look's outcome is kept by the monitor, so the leader that took it never looks again; it
//! is not in the replicated evidence, so a new leader that continues a wave whose end look's call
//! never committed takes its own (the one that ends the wave is then chosen by when the old leader
//! died, not by what either look said). A
//! histogram's effect is the factor by which every baseline request, scaled, would give the canary's
//! AUC (on the buckets, as `histogram_quantile` reads them): what its rank test measures, from every
//! request, and no `_sum` needed. A host of the wave that serves no requests while the old
//! release's hosts serve is reverted after a grace (30 s, or five intervals).
//!
//! After the last wave there is no baseline left: [`analysis::Monitor::against_window`] compares the
//! whole fleet with the previous release's fleet in an earlier window. That comparison assumes the
//! metric does not move between the two windows for other reasons; drift no longer cancels.

pub mod analysis;
pub mod apply;
pub mod evidence;
pub mod judge;
pub mod series;
pub mod sim;
pub mod sizing;
pub mod spread;

/// The leader's soft state: recent metric reports and the analyses of the waves baking now.
#[derive(Default)]
pub struct Live {
    /// Every host's recent reports.
    pub series: series::Series,
    /// The analyses.
    pub judge: judge::Judge,
}

impl crate::coordinator::Coordinator {
    /// An agent's metric report (kept only while this node leads).
    pub fn on_metrics(&self, host: &fifty_shared::ids::HostName, report: fifty_shared::wire::MetricsReport) {
        if !self.consensus.status().is_leader() {
            return;
        }
        let mut live = self.immune.lock().expect("immune lock");
        live.series.push(host, report, std::time::SystemTime::now());
    }
}
