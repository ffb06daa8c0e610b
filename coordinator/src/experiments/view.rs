//! The JSON bodies of `/v1/experiments`, shared by the API and the CLI.

use serde::{Deserialize, Serialize};

use super::analysis::{self, Settings, Verdict};
use super::{ExperimentRecord, Peak, RunningRecord, Schedule, StatsRecord};
use crate::views::rfc3339;

/// `POST /v1/experiments`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateExperiment {
    /// Its name.
    pub name: String,
    /// `control=50,new_checkout=50`.
    pub variants: String,
    /// Label selector, e.g. `role=prod` (default: every host).
    pub hosts: Option<String>,
    /// The metric event (default `conversion`).
    pub metric: Option<String>,
    /// The assignment salt (default: random). Reusing one reproduces a split exactly.
    #[serde(default)]
    pub salt: Option<String>,
    /// Scheduled looks (1-100), judged by a group-sequential test; with `look_every`. Without
    /// both, the experiment may be looked at any time (mSPRT).
    #[serde(default)]
    pub looks: Option<u32>,
    /// Time between scheduled looks, e.g. `"1d"`; the first is this long after creation.
    #[serde(default)]
    pub look_every: Option<String>,
}

/// `POST /v1/experiments/{name}/ramp`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RampExperiment {
    /// New weights for every variant, `control=20,new_checkout=80`.
    pub variants: String,
}

/// `POST /v1/experiments/{name}/stop`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StopExperiment {
    /// The variant every unit gets from now on (default: the control).
    pub winner: Option<String>,
}

/// One row of `GET /v1/experiments`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExperimentSummary {
    /// Its name.
    pub name: String,
    /// `running` or `stopped`.
    pub state: String,
    /// `control=50,new_checkout=50`.
    pub variants: String,
    /// Host selector.
    pub hosts: String,
    /// Metric event.
    pub metric: String,
    /// Units exposed in all.
    pub exposed: u64,
    /// When it was created.
    pub created_at: String,
    /// After a stop, the variant everyone gets.
    pub serving: Option<String>,
}

/// A comparison against the control, as JSON.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ComparisonView {
    /// Variant minus control.
    pub diff: f64,
    /// Always-valid interval of `diff`.
    pub diff_ci: [f64; 2],
    /// Relative to the control.
    pub lift: Option<f64>,
    /// Its interval.
    pub lift_ci: Option<[f64; 2]>,
    /// Always-valid (sequential) p-value of the current totals.
    pub p_value: f64,
    /// The lowest `p_value` since the experiment began (after every agent report): the
    /// always-valid p-value proper, which never rises.
    pub p_value_min: f64,
    /// The intersection of every interval since the experiment began: still valid, and never
    /// wider than any of them.
    pub diff_ci_intersection: [f64; 2],
    /// It, relative to the control's current value.
    pub lift_ci_intersection: Option<[f64; 2]>,
    /// p_value_min < alpha.
    pub significant: bool,
}

/// An experiment's schedule of looks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScheduleView {
    /// Looks planned.
    pub looks: u32,
    /// Time between them.
    pub look_every: String,
    /// Looks taken so far.
    pub taken: u32,
    /// When the next is due (none after the last); in the past, it is taken with the next agent
    /// report.
    pub next_look_at: Option<String>,
}

/// One scheduled look of a variant against the control.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LookView {
    /// 1-based.
    pub look: usize,
    /// Units exposed in the control and the variant by then.
    pub exposed: u64,
    /// Variant minus control then.
    pub diff: Option<f64>,
    /// diff / its standard error.
    pub z: Option<f64>,
    /// The boundary |z| had to reach (none: the look spent nothing: too few units or no new ones).
    pub bound: Option<f64>,
    /// This look's own p-value, and the one it needed (2 − 2Φ(bound)).
    pub nominal_p: Option<f64>,
    /// The nominal p-value needed to reject at this look.
    pub threshold: Option<f64>,
    /// Alpha spent by the end of this look.
    pub alpha_spent: f64,
}

/// A variant against the control at the scheduled looks, on one metric.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScheduledView {
    /// Each look taken.
    pub looks: Vec<LookView>,
    /// The first look whose boundary was reached: the result stands from then on.
    pub crossed_at: Option<usize>,
    /// The intersection of the looks' repeated 1 − alpha confidence intervals.
    pub diff_ci: Option<[f64; 2]>,
    /// It, relative to the control.
    pub lift_ci: Option<[f64; 2]>,
}

/// One variant in `GET /v1/experiments/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VariantView {
    /// Its name.
    pub name: String,
    /// Its current weight.
    pub weight: u32,
    /// Units exposed.
    pub exposed: u64,
    /// Exposed units that converted.
    pub converted: u64,
    /// converted / exposed.
    pub rate: f64,
    /// Conversion against the control (none for the control or with too few units).
    pub conversion: Option<ComparisonView>,
    /// Mean metric value per exposed unit.
    pub value_mean: f64,
    /// Value against the control.
    pub value: Option<ComparisonView>,
    /// Welch's fixed-horizon p-value of the value difference (valid for one look only).
    pub value_welch_p: Option<f64>,
    /// With a schedule: conversion at the scheduled looks (this decides the verdict).
    pub scheduled_conversion: Option<ScheduledView>,
    /// With a schedule: value at the scheduled looks.
    pub scheduled_value: Option<ScheduledView>,
    /// `control`, `win`, `loss` or `inconclusive`.
    pub verdict: String,
}

/// The sample-ratio-mismatch check.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SrmView {
    /// χ² against the weights.
    pub chi2: f64,
    /// Its p-value.
    pub p_value: f64,
    /// p < 0.001: the split is broken; do not trust the result.
    pub mismatch: bool,
}

/// `GET /v1/experiments/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExperimentView {
    /// Its name.
    pub name: String,
    /// `running` or `stopped`.
    pub state: String,
    /// Host selector.
    pub hosts: String,
    /// Metric event.
    pub metric: String,
    /// When it was created.
    pub created_at: String,
    /// Each ramp: when, and the weights.
    pub ramps: Vec<(String, String)>,
    /// After a stop, the variant every unit gets, and whether it was named the winner.
    pub serving: Option<String>,
    /// The test's level.
    pub alpha: f64,
    /// Scheduled looks (group-sequential test); none: looked at any time (mSPRT).
    pub schedule: Option<ScheduleView>,
    /// Per variant, the control first.
    pub variants: Vec<VariantView>,
    /// None until units arrive.
    pub srm: Option<SrmView>,
    /// The best significant winner, if any (and no sample-ratio mismatch).
    pub winner: Option<String>,
    /// Distinct units known.
    pub units: u64,
    /// Agent reports applied.
    pub reports: u64,
    /// When the last one was applied.
    pub last_report: Option<String>,
    /// Observations agents dropped at their memory cap.
    pub dropped: u64,
    /// What may be missing from these numbers.
    pub note: String,
}

/// How often agents report (their heartbeat interval by default).
pub const REPORT_NOTE: &str = "Counts include every agent report applied so far. Agents report once a second and \
keep each report until the leader has recorded it (a failover loses none); events of the last second may not be \
in yet, and an agent killed outright loses what it had not reported (at most one second).";

fn weights_text(names: &[String], weights: &[u32]) -> String {
    names.iter().zip(weights).map(|(n, w)| format!("{n}={w}")).collect::<Vec<_>>().join(",")
}

fn state(rec: &ExperimentRecord) -> (String, Option<String>) {
    match &rec.stopped {
        None => ("running".into(), None),
        Some(s) => {
            let name = rec.variants.get(s.variant as usize).cloned().unwrap_or_default();
            ("stopped".into(), Some(if s.winner { format!("{name} (winner)") } else { name }))
        }
    }
}

/// A row of the list.
pub fn summary(rec: &ExperimentRecord, stats: &StatsRecord) -> ExperimentSummary {
    let (state, serving) = state(rec);
    ExperimentSummary {
        name: rec.name.clone(),
        state,
        variants: weights_text(&rec.variants, &rec.weights),
        hosts: rec.hosts.clone(),
        metric: rec.metric.clone(),
        exposed: stats.totals.iter().map(|t| t.exposed).sum(),
        created_at: rfc3339(rec.created_at),
        serving,
    }
}

/// A comparison with its running minimum p-value and intersected interval (from `peak`, the
/// strongest evidence recorded as reports were applied; `base` is the control's current value).
fn comparison(
    c: Option<analysis::Comparison>,
    peak: Option<&Peak>,
    metric: usize,
    base: f64,
    settings: &Settings,
) -> Option<ComparisonView> {
    c.map(|c| {
        let (p_min, (lo, hi)) = peak.map_or((c.p_value, c.diff_ci), |p| p.running(metric, &c, settings));
        ComparisonView {
            diff: c.diff,
            diff_ci: [c.diff_ci.0, c.diff_ci.1],
            lift: c.lift,
            lift_ci: c.lift_ci.map(|(a, b)| [a, b]),
            p_value: c.p_value,
            p_value_min: p_min,
            diff_ci_intersection: [lo, hi],
            lift_ci_intersection: (base > 0.0).then(|| [lo / base, hi / base]),
            significant: p_min < settings.alpha,
        }
    })
}

fn scheduled_view(s: &analysis::Scheduled, looks: &[Vec<analysis::Totals>], variant: usize) -> ScheduledView {
    ScheduledView {
        looks: s
            .looks
            .iter()
            .enumerate()
            .map(|(k, l)| LookView {
                look: k + 1,
                exposed: looks[k].first().map_or(0, |t| t.exposed) + looks[k].get(variant).map_or(0, |t| t.exposed),
                diff: l.diff,
                z: l.z,
                bound: l.bound,
                nominal_p: l.nominal_p,
                threshold: l.threshold,
                alpha_spent: l.spent,
            })
            .collect(),
        crossed_at: s.crossed_at,
        diff_ci: s.diff_ci.map(|(a, b)| [a, b]),
        lift_ci: s.lift_ci.map(|(a, b)| [a, b]),
    }
}

/// The full view with its analysis (`schedule` and `running` are kept in records of their own:
/// see `RunningRecord`; empty for an experiment created before state version 4).
pub fn experiment_view(
    rec: &ExperimentRecord,
    schedule: Option<Schedule>,
    stats: &StatsRecord,
    running: &RunningRecord,
    settings: &Settings,
) -> ExperimentView {
    let totals: Vec<analysis::Totals> =
        (0..rec.variants.len()).map(|i| stats.totals.get(i).copied().unwrap_or_default().into()).collect();
    let a = analysis::analyze(&totals, &rec.weights, settings);
    let looks: Vec<Vec<analysis::Totals>> = running
        .looks
        .iter()
        .map(|l| (0..rec.variants.len()).map(|i| l.get(i).copied().unwrap_or_default().into()).collect())
        .collect();
    let mut verdicts = Vec::new();
    let variants: Vec<VariantView> = a
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let peaks = running.peaks.get(i);
            let conversion =
                comparison(v.conversion, peaks.and_then(|p| p.conversion.as_ref()), 0, a.variants[0].rate, settings);
            let value =
                comparison(v.value, peaks.and_then(|p| p.value.as_ref()), 1, a.variants[0].value_mean, settings);
            let scheduled = schedule.filter(|_| i > 0).map(|s| analysis::scheduled(&looks, s.looks, i, settings.alpha));
            // With a schedule the group-sequential test decides; without, the always-valid
            // interval's running intersection (once it excludes 0 it stays so).
            let verdict = match (&scheduled, &conversion) {
                _ if i == 0 => Verdict::Control,
                (Some((conv, _)), _) => conv.verdict(),
                (None, Some(c)) if c.diff_ci_intersection[0] > 0.0 => Verdict::Win,
                (None, Some(c)) if c.diff_ci_intersection[1] < 0.0 => Verdict::Loss,
                _ => Verdict::Inconclusive,
            };
            verdicts.push(verdict);
            VariantView {
                name: rec.variants[i].clone(),
                weight: rec.weights[i],
                exposed: v.totals.exposed,
                converted: v.totals.converted,
                rate: v.rate,
                conversion,
                value_mean: v.value_mean,
                value,
                value_welch_p: v.value_welch_p,
                scheduled_conversion: scheduled.as_ref().map(|(c, _)| scheduled_view(c, &looks, i)),
                scheduled_value: scheduled.as_ref().map(|(_, v)| scheduled_view(v, &looks, i)),
                verdict: verdict.as_str().into(),
            }
        })
        .collect();
    let schedule = schedule.map(|s| {
        let taken = running.looks.len() as u32;
        ScheduleView {
            looks: s.looks,
            look_every: humantime::format_duration(s.every).to_string(),
            taken,
            // In the past: due, and taken with the next agent report.
            next_look_at: (taken < s.looks && rec.stopped.is_none()).then(|| rfc3339(s.due(rec.created_at, taken + 1))),
        }
    });
    // Each epoch (each ramp starts one) against its own weights; before any report, the totals.
    let periods: Vec<(&[u32], &[u64])> = stats
        .first_exposed
        .iter()
        .enumerate()
        .map(|(e, counts)| (rec.weights_of(e as u32), counts.as_slice()))
        .collect();
    let srm = if periods.is_empty() { a.srm } else { analysis::srm_periods(&periods, settings.srm_alpha) };
    let srm = srm.map(|s| SrmView { chi2: s.chi2, p_value: s.p_value, mismatch: s.flagged });
    let winner = if srm.as_ref().is_some_and(|s| s.mismatch) {
        None
    } else {
        a.variants
            .iter()
            .enumerate()
            .filter(|(i, _)| verdicts[*i] == Verdict::Win)
            .max_by(|x, y| x.1.rate.total_cmp(&y.1.rate))
            .map(|(i, _)| rec.variants[i].clone())
    };
    let (state, serving) = state(rec);
    ExperimentView {
        name: rec.name.clone(),
        state,
        hosts: rec.hosts.clone(),
        metric: rec.metric.clone(),
        created_at: rfc3339(rec.created_at),
        ramps: rec.ramps.iter().map(|(at, w)| (rfc3339(*at), weights_text(&rec.variants, w))).collect(),
        serving,
        alpha: settings.alpha,
        schedule,
        variants,
        srm,
        winner,
        units: stats.units,
        reports: stats.reports,
        last_report: stats.last_report.map(rfc3339),
        dropped: stats.dropped,
        note: REPORT_NOTE.into(),
    }
}
