//! The JSON bodies of `/v1/experiments`, shared by the API and the CLI.

use serde::{Deserialize, Serialize};

use super::analysis::{self, Settings};
use super::{ExperimentRecord, StatsRecord};
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
    /// Always-valid (sequential) p-value.
    pub p_value: f64,
    /// p < alpha.
    pub significant: bool,
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

fn comparison(c: Option<analysis::Comparison>, alpha: f64) -> Option<ComparisonView> {
    c.map(|c| ComparisonView {
        diff: c.diff,
        diff_ci: [c.diff_ci.0, c.diff_ci.1],
        lift: c.lift,
        lift_ci: c.lift_ci.map(|(a, b)| [a, b]),
        p_value: c.p_value,
        significant: c.p_value < alpha,
    })
}

/// The full view with its analysis.
pub fn experiment_view(rec: &ExperimentRecord, stats: &StatsRecord, settings: &Settings) -> ExperimentView {
    let totals: Vec<analysis::Totals> =
        (0..rec.variants.len()).map(|i| stats.totals.get(i).copied().unwrap_or_default().into()).collect();
    let a = analysis::analyze(&totals, &rec.weights, settings);
    let variants: Vec<VariantView> = a
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| VariantView {
            name: rec.variants[i].clone(),
            weight: rec.weights[i],
            exposed: v.totals.exposed,
            converted: v.totals.converted,
            rate: v.rate,
            conversion: comparison(v.conversion, settings.alpha),
            value_mean: v.value_mean,
            value: comparison(v.value, settings.alpha),
            value_welch_p: v.value_welch_p,
            verdict: v.verdict.as_str().into(),
        })
        .collect();
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
            .filter(|(_, v)| v.verdict == analysis::Verdict::Win)
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
