//! The immune system's evidence as pictures: for each watched metric of a wave, the canary's
//! value against the baseline's over the bake, with the bake's start, the recorded looks and the
//! decision marked. Used by the rollouts page (the wave baking now) and an incident's page (the
//! wave that was reverted).
//!
//! The numbers are the leader's metric reports (`immune::series`, the soft state the judge and
//! `GET /v1/fleet/series` read; it keeps an hour), split by the release each report was observed
//! under: the rollout's release is the canary, its previous release the baseline. The verdicts
//! and looks are the replicated evidence ([`EvidenceView`]) and the rollout's events. Work is
//! bounded: at most [`MAX_HOSTS`] hosts per rollout (the leader's lock on the reports is taken
//! for one host at a time) and [`BUCKETS`] points per line.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use fifty_shared::ids::HostName;
use fifty_shared::wire::MetricSample;
use maud::{html, Markup, PreEscaped};

use super::chart::{self, LineChart, Marker, Series, XAxis};
use crate::coordinator::Coordinator;
use crate::views::{parse_rfc3339, EvidenceView, RolloutView};

/// Hosts of a rollout whose reports are read for its charts.
pub const MAX_HOSTS: usize = 100;
/// Time buckets of a chart.
pub const BUCKETS: usize = 60;
/// The longest window charted (the leader keeps an hour of reports).
const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// Running totals of one metric on one side in one bucket.
#[derive(Clone, Copy, Default)]
struct Acc {
    num: f64,
    den: f64,
}

impl Acc {
    fn add(&mut self, s: &MetricSample) {
        match s {
            MetricSample::Ratio { num, den } => {
                self.num += num;
                self.den += den;
            }
            // A histogram's mean: its sum over its count.
            MetricSample::Histogram { sum, count, .. } => {
                self.num += sum;
                self.den += count;
            }
            MetricSample::Gauge(v) => {
                self.num += v;
                self.den += 1.0;
            }
        }
    }

    fn value(&self) -> f64 {
        if self.den > 0.0 {
            self.num / self.den
        } else {
            f64::NAN
        }
    }
}

/// The window a chart covers and the rollout's sides.
pub struct Window {
    /// From.
    pub from: SystemTime,
    /// To.
    pub to: SystemTime,
    /// The canary's release.
    pub release: u64,
    /// The baseline's release.
    pub previous: Option<u64>,
}

/// Per metric, the canary's and the baseline's pooled value per bucket of `w` (x: epoch
/// seconds of the bucket's middle), from the leader's reports of `hosts`. Metrics named in
/// `metrics` come first; with none named, every metric the canary reported.
pub fn canary_vs_baseline(
    c: &Coordinator,
    hosts: &[String],
    metrics: &[String],
    w: &Window,
) -> BTreeMap<String, [Vec<(f64, f64)>; 2]> {
    let to = w.to.min(w.from + MAX_WINDOW);
    let span = to.duration_since(w.from).unwrap_or_default().max(Duration::from_secs(1));
    let step = span.as_secs_f64() / BUCKETS as f64;
    let mut acc: BTreeMap<String, [Vec<Acc>; 2]> = BTreeMap::new();
    for host in hosts.iter().take(MAX_HOSTS) {
        let Ok(name) = HostName::new(host) else { continue };
        // The lock is the judge's and the metric reports': taken for one host at a time.
        let reports = c.immune.lock().expect("immune lock").series.between(&name, w.from, to);
        for r in reports {
            let side = if r.report.release == w.release {
                0
            } else if w.previous.is_none_or(|p| p == r.report.release) {
                1
            } else {
                continue;
            };
            let Ok(since) = r.at.duration_since(w.from) else { continue };
            let bucket = ((since.as_secs_f64() / step) as usize).min(BUCKETS - 1);
            for (metric, sample) in &r.report.samples {
                if !metrics.is_empty() && !metrics.contains(metric) {
                    continue;
                }
                let sides = acc
                    .entry(metric.clone())
                    .or_insert_with(|| [vec![Acc::default(); BUCKETS], vec![Acc::default(); BUCKETS]]);
                sides[side][bucket].add(sample);
            }
        }
    }
    let from = chart::epoch_secs(w.from);
    acc.into_iter()
        .map(|(metric, sides)| {
            let line = |side: &Vec<Acc>| {
                side.iter().enumerate().map(|(i, a)| (from + (i as f64 + 0.5) * step, a.value())).collect()
            };
            (metric, [line(&sides[0]), line(&sides[1])])
        })
        .collect()
}

/// Does an event line record a decision on a wave (or the rollout)?
fn is_decision(line: &str) -> bool {
    ["healthy", "promoted", "failed", "revert", "held", "rolling back", "back on", "aborted"]
        .iter()
        .any(|w| line.contains(w))
}

/// The markers of a wave's chart: the bake's start, the last recorded look, and the decisions
/// the rollout's events record after the bake began.
pub fn rollout_markers(r: &RolloutView) -> Vec<Marker> {
    let mut out = Vec::new();
    let Some(e) = &r.evidence else { return out };
    let start = e.first_data.as_deref().and_then(parse_rfc3339);
    if let Some(t) = start {
        out.push(Marker { x: chart::epoch_secs(t), label: format!("wave {} bake starts", e.wave) });
    }
    if let Some(t) = parse_rfc3339(&e.recorded_at) {
        let looks = e.metrics.iter().map(|m| m.looks).max().unwrap_or(0);
        out.push(Marker { x: chart::epoch_secs(t), label: format!("look {looks} recorded") });
    }
    for (at, line) in &r.events {
        let Some(t) = parse_rfc3339(at) else { continue };
        if start.is_some_and(|s| t >= s) && is_decision(line) {
            out.push(Marker { x: chart::epoch_secs(t), label: format!("decision: {}", cut(line, 40)) });
        }
    }
    out
}

fn cut(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(n).collect::<String>())
    }
}

/// A chart per metric from `lines` (see [`canary_vs_baseline`]).
pub fn charts(
    lines: BTreeMap<String, [Vec<(f64, f64)>; 2]>,
    release: u64,
    previous: Option<u64>,
    markers: &[Marker],
) -> Vec<LineChart> {
    lines
        .into_iter()
        .map(|(metric, [canary, baseline])| LineChart {
            title: format!("{metric}: canary (release {release}) vs baseline"),
            y_label: metric.clone(),
            x_axis: XAxis::Time,
            series: vec![
                Series { name: format!("canary, release {release}"), points: canary },
                Series {
                    name: match previous {
                        Some(p) => format!("baseline, release {p}"),
                        None => "baseline".into(),
                    },
                    points: baseline,
                },
            ],
            markers: markers.to_vec(),
        })
        .collect()
}

/// The charts of a rollout's latest judged wave (none without recorded evidence).
pub fn rollout_charts(c: &Coordinator, r: &RolloutView) -> Vec<LineChart> {
    let Some(e) = &r.evidence else { return Vec::new() };
    let from = e.first_data.as_deref().or(Some(&r.started_at)).and_then(parse_rfc3339);
    let Some(from) = from else { return Vec::new() };
    let to = r.finished_at.as_deref().and_then(parse_rfc3339).unwrap_or_else(SystemTime::now);
    let hosts: Vec<String> = r.hosts.iter().map(|h| h.host.clone()).collect();
    let metrics: Vec<String> = e.metrics.iter().map(|m| m.name.clone()).collect();
    let w = Window { from, to, release: r.release, previous: r.previous };
    charts(canary_vs_baseline(c, &hosts, &metrics, &w), r.release, r.previous, &rollout_markers(r))
}

/// The evidence table of a wave: each metric's looks, p-value against its alpha and hosts.
pub fn evidence_table(e: &EvidenceView) -> Markup {
    html! {
        div.scroll { table.evidence {
            caption { "Wave " (e.wave) ": the immune system's tests, recorded " (super::layout::time(&e.recorded_at))
                @if e.resumes > 0 { " (continued by " (e.resumes) " new leaders)" } }
            thead { tr {
                th scope="col" { "Metric" } th scope="col" { "Looks" } th scope="col" { "p-value" } th scope="col" { "Fails below" }
                th scope="col" { "Canary hosts" } th scope="col" { "Baseline hosts" } th scope="col" { "Hosts with a reference" }
            } }
            tbody { @for m in &e.metrics {
                tr {
                    th scope="row" { (m.name) }
                    td.num { (m.looks) }
                    td.num { (chart::format_value(m.p_value)) @if m.p_value <= m.alpha { " " (super::layout::badge("bad", "significant")) } }
                    td.num { (format!("{:.2e}", m.alpha)) }
                    td.num { (m.canary_hosts) } td.num { (m.baseline_hosts) } td.num { (m.reference_hosts) }
                }
            } }
        } }
    }
}

/// The evidence section of a rollout: the evidence table and a chart per metric (the rollouts
/// page shows the verdicts and why a wave is held itself).
pub fn evidence_section(r: &RolloutView, charts: &[LineChart]) -> Markup {
    html! {
        section.evidence aria-label={ "Immune evidence of rollout " (r.id) } {
            h3 { "Immune evidence" }
            @match &r.evidence {
                None => p.meta { "No evidence recorded for this rollout (its release watches no metric, or no wave has baked yet)." },
                Some(e) => {
                    (evidence_table(e))
                    @if charts.is_empty() { p.meta { "No metric reports of this rollout's hosts are held by the leader (it keeps an hour)." } }
                    @for c in charts { (PreEscaped(chart::line_chart(c))) }
                }
            }
        }
    }
}

/// A rollout's evidence section, read from the coordinator (for the rollouts page).
pub fn section(c: &Coordinator, r: &RolloutView) -> Markup {
    evidence_section(r, &rollout_charts(c, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::MetricEvidenceView;

    pub(crate) fn rollout() -> RolloutView {
        serde_json::from_value(serde_json::json!({
            "id": 4, "repo": "shop", "kind": "deploy", "release": 9, "previous": 8, "phase": "baking",
            "paused": false, "wave": 1, "waves": [{"step": "1", "reach": 1}], "bake": "60s", "phase_secs": 3.0,
            "started_at": "2026-12-08T00:00:00.000Z", "finished_at": null, "outcome": null,
            "hosts": [], "events": [
                ["2026-12-08T00:00:00.000Z", "rollout started"],
                ["2026-12-08T00:02:00.000Z", "failed: error_rate regressed; reverting"]
            ],
            "immune": ["fail: error_rate +80%"], "held": null
        }))
        .expect("a rollout view")
    }

    fn evidence() -> EvidenceView {
        EvidenceView {
            wave: 1,
            recorded_at: "2026-12-08T00:01:30.000Z".into(),
            first_data: Some("2026-12-08T00:00:30.000Z".into()),
            resumes: 0,
            metrics: vec![MetricEvidenceView {
                name: "error_rate".into(),
                looks: 12,
                p_value: 0.0001,
                alpha: 0.01,
                canary_hosts: 1,
                baseline_hosts: 5,
                reference_hosts: 1,
            }],
        }
    }

    #[test]
    fn markers_are_the_bake_the_looks_and_the_decision() {
        let mut r = rollout();
        assert!(rollout_markers(&r).is_empty(), "no evidence, no markers");
        r.evidence = Some(evidence());
        let m = rollout_markers(&r);
        let labels: Vec<&str> = m.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(
            labels,
            ["wave 1 bake starts", "look 12 recorded", "decision: failed: error_rate regressed; reverting"]
        );
        assert_eq!(m[0].x, chart::epoch_secs(parse_rfc3339("2026-12-08T00:00:30.000Z").unwrap()));
    }

    #[test]
    fn the_section_shows_the_tests_and_a_chart_per_metric() {
        let mut r = rollout();
        let none = evidence_section(&r, &[]).into_string();
        assert!(none.contains("No evidence recorded"), "{none}");
        r.evidence = Some(evidence());
        let t0 = chart::epoch_secs(parse_rfc3339("2026-12-08T00:00:30.000Z").unwrap());
        let mut lines = BTreeMap::new();
        lines.insert(
            "error_rate".to_string(),
            [vec![(t0, 0.02), (t0 + 30.0, 0.03)], vec![(t0, 0.01), (t0 + 30.0, f64::NAN)]],
        );
        let charts = charts(lines, 9, Some(8), &rollout_markers(&r));
        let page = evidence_section(&r, &charts).into_string();
        assert!(page.contains(">significant<") && page.contains(">12<"), "{page}");
        assert!(page.contains("canary, release 9") && page.contains("baseline, release 8"), "{page}");
        assert!(page.contains("<svg") && page.contains("decision: failed"), "{page}");
    }

    #[test]
    fn totals_pool_by_side() {
        let mut a = Acc::default();
        a.add(&MetricSample::Ratio { num: 1.0, den: 10.0 });
        a.add(&MetricSample::Ratio { num: 3.0, den: 10.0 });
        assert_eq!(a.value(), 0.2);
        assert!(Acc::default().value().is_nan(), "a bucket without data is a gap");
        let mut h = Acc::default();
        h.add(&MetricSample::Histogram { bounds: vec![0.1], buckets: vec![1.0, 2.0], sum: 0.5, count: 2.0 });
        assert_eq!(h.value(), 0.25);
    }
}
