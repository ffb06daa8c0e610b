//! The experiments pages: the list, and an experiment's result table, each variant's lift
//! against the control with its always-valid interval as a chart, and the sample-ratio check.
//! They read `Coordinator::experiments` and `experiment`, as `GET /v1/experiments` and
//! `/v1/experiments/{name}` do.

use maud::{html, Markup, PreEscaped};

use super::chart::{self, Interval};
use super::layout::{badge, time};
use super::{Page, PageCtx, Params, UiError};
use crate::coordinator::Coordinator;
use crate::experiments::view::{ComparisonView, ExperimentSummary, ExperimentView};

pub(super) fn pages() -> Vec<Page> {
    vec![
        Page {
            path: "/ui/experiments",
            title: "Experiments",
            nav: Some("Experiments"),
            section: "Experiments",
            render: list,
        },
        Page { path: "/ui/experiments/{name}", title: "Experiment", nav: None, section: "Experiments", render: show },
    ]
}

/// The experiments, as `fifty experiment list` shows them.
pub fn list_body(list: &[ExperimentSummary]) -> Markup {
    html! {
        @if list.is_empty() { p { "No experiments: define one with `fifty experiment create`." } }
        @else {
            div.scroll { table #experiments {
                thead { tr {
                    th scope="col" { "Experiment" } th scope="col" { "State" } th scope="col" { "Variants" }
                    th scope="col" { "Hosts" } th scope="col" { "Metric" } th scope="col" { "Units exposed" } th scope="col" { "Created" }
                } }
                tbody { @for e in list {
                    tr {
                        th scope="row" { a href={ "/ui/experiments/" (super::urlencode(&e.name)) } { (e.name) } }
                        td { (e.state) @if let Some(s) = &e.serving { br; span.meta { "serving " (s) } } }
                        td { code { (e.variants) } } td { code { (e.hosts) } } td { (e.metric) }
                        td.num { (e.exposed) } td { (time(&e.created_at)) }
                    }
                } }
            } }
        }
    }
}

fn list(c: &Coordinator, _ctx: &PageCtx, _: &Params) -> Result<Markup, UiError> {
    Ok(list_body(&c.experiments()?))
}

fn percent(v: f64) -> String {
    format!("{}%", chart::format_value(v * 100.0))
}

/// A comparison's lift and interval as text: `+4.1% (−1.2% to +9.3%)`, or the difference when
/// the control's value is zero (no lift).
fn comparison(c: &Option<ComparisonView>) -> Markup {
    let Some(c) = c else { return html! { "—" } };
    let sign = |v: f64| if v > 0.0 { format!("+{}", percent(v)) } else { percent(v) };
    let (est, ci) = match (c.lift, c.lift_ci_intersection.or(c.lift_ci)) {
        (Some(l), Some([lo, hi])) => (sign(l), format!("{} to {}", sign(lo), sign(hi))),
        _ => (
            chart::format_value(c.diff),
            format!(
                "{} to {}",
                chart::format_value(c.diff_ci_intersection[0]),
                chart::format_value(c.diff_ci_intersection[1])
            ),
        ),
    };
    html! {
        (est) " " span.meta { "(" (ci) ")" }
        br; span.meta { "p " (chart::format_value(c.p_value_min)) }
        @if c.significant { " " (badge("ok", "significant")) }
    }
}

/// The lift of each variant against the control, in percent, with its interval: conversion and,
/// when there is one, the metric's value.
pub fn lift_rows(v: &ExperimentView) -> Vec<Interval> {
    let mut rows = Vec::new();
    for variant in v.variants.iter().skip(1) {
        for (what, c) in [("conversion", &variant.conversion), ("value", &variant.value)] {
            let Some(c) = c else { continue };
            let Some(lift) = c.lift else { continue };
            let [lo, hi] = c.lift_ci_intersection.or(c.lift_ci).unwrap_or([f64::NAN, f64::NAN]);
            rows.push(Interval {
                label: format!("{} {what}", variant.name),
                estimate: lift * 100.0,
                low: lo * 100.0,
                high: hi * 100.0,
            });
        }
    }
    rows
}

/// An experiment's page body.
pub fn experiment_body(v: &ExperimentView) -> Markup {
    let lifts = lift_rows(v);
    html! {
        dl.facts {
            dt { "State" } dd { (v.state) @if let Some(s) = &v.serving { " — serving " (s) } }
            dt { "Hosts" } dd { code { (v.hosts) } }
            dt { "Metric" } dd { (v.metric) }
            dt { "Level" } dd { "alpha " (chart::format_value(v.alpha)) @if let Some(s) = &v.schedule { ", " (s.taken) " of " (s.looks) " scheduled looks every " (s.look_every) } @else { ", looked at any time (always-valid)" } }
            dt { "Units" } dd { (v.units) " from " (v.reports) " agent reports" @if let Some(l) = &v.last_report { ", the last " (time(l)) } }
            @if let Some(w) = &v.winner { dt { "Winner" } dd { (badge("ok", w)) } }
        }
        section aria-labelledby="h-srm" {
            h2 #h-srm { "Sample ratio" }
            @match &v.srm {
                None => p.meta { "No units yet." },
                Some(s) => p {
                    @if s.mismatch { (badge("bad", "mismatch")) " The split does not match the weights: do not trust the result. " }
                    @else { (badge("ok", "sound")) " The split matches the weights. " }
                    span.meta { "χ² " (chart::format_value(s.chi2)) ", p " (chart::format_value(s.p_value)) }
                },
            }
        }
        section aria-labelledby="h-results" {
            h2 #h-results { "Results" }
            div.scroll { table #results {
                thead { tr {
                    th scope="col" { "Variant" } th scope="col" { "Weight" } th scope="col" { "Exposed" } th scope="col" { "Converted" }
                    th scope="col" { "Rate" } th scope="col" { "Conversion lift" } th scope="col" { "Mean value" }
                    th scope="col" { "Value lift" } th scope="col" { "Verdict" }
                } }
                tbody { @for x in &v.variants {
                    tr data-variant=(x.name) {
                        th scope="row" { (x.name) }
                        td.num { (x.weight) } td.num { (x.exposed) } td.num { (x.converted) }
                        td.num { (percent(x.rate)) }
                        td { (comparison(&x.conversion)) }
                        td.num { (chart::format_value(x.value_mean)) }
                        td { (comparison(&x.value)) }
                        td { (x.verdict) }
                    }
                } }
            } }
            @if lifts.is_empty() { p.meta { "No lift yet: too few units, or no variant besides the control." } }
            @else { (PreEscaped(chart::interval_chart("Lift against the control, with its always-valid interval", "lift, %", &lifts))) }
            p.hint { (v.note) }
            @if v.dropped > 0 { p.warn { (v.dropped) " observations were dropped at agents' memory caps." } }
        }
        @if !v.ramps.is_empty() {
            section aria-labelledby="h-ramps" {
                h2 #h-ramps { "Ramps" }
                ol { @for (at, w) in &v.ramps { li { (time(at)) " — " code { (w) } } } }
            }
        }
    }
}

fn show(c: &Coordinator, _ctx: &PageCtx, p: &Params) -> Result<Markup, UiError> {
    Ok(experiment_body(&c.experiment(p.get("name").unwrap_or_default())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ExperimentView {
        serde_json::from_value(serde_json::json!({
            "name": "checkout-<b>", "state": "running", "hosts": "role=web", "metric": "purchase",
            "created_at": "2026-12-08T00:00:00.000Z", "ramps": [], "serving": null, "alpha": 0.05, "schedule": null,
            "variants": [
                {"name": "A", "weight": 50, "exposed": 1000, "converted": 100, "rate": 0.1, "conversion": null,
                 "value_mean": 1.0, "value": null, "value_welch_p": null, "scheduled_conversion": null,
                 "scheduled_value": null, "verdict": "control"},
                {"name": "B", "weight": 50, "exposed": 990, "converted": 130, "rate": 0.1313, "conversion": {
                    "diff": 0.0313, "diff_ci": [0.001, 0.06], "lift": 0.313, "lift_ci": [0.01, 0.6], "p_value": 0.01,
                    "p_value_min": 0.004, "diff_ci_intersection": [0.002, 0.06], "lift_ci_intersection": [0.02, 0.6],
                    "significant": true},
                 "value_mean": 1.1, "value": null, "value_welch_p": null, "scheduled_conversion": null,
                 "scheduled_value": null, "verdict": "win"}
            ],
            "srm": {"chi2": 0.02, "p_value": 0.89, "mismatch": false},
            "winner": "B", "units": 1990, "reports": 40, "last_report": null, "dropped": 0, "note": "Counts include..."
        }))
        .expect("an experiment view")
    }

    #[test]
    fn the_result_table_the_lift_chart_and_the_sample_ratio() {
        let page = experiment_body(&view()).into_string();
        assert!(page.contains("+31.3%") && page.contains("+2% to +60%"), "{page}");
        assert!(page.contains(">significant<") && page.contains(">win<"), "{page}");
        assert!(page.contains(">sound<") && page.contains("p 0.89"), "{page}");
        assert!(page.contains("<svg") && page.contains("B conversion"), "{page}");
        let rows = lift_rows(&view());
        assert_eq!(rows.len(), 1);
        assert!((rows[0].estimate - 31.3).abs() < 1e-9 && (rows[0].low - 2.0).abs() < 1e-9);
        let mut broken = view();
        broken.srm = Some(crate::experiments::view::SrmView { chi2: 30.0, p_value: 1e-6, mismatch: true });
        assert!(experiment_body(&broken).into_string().contains("do not trust the result"));
    }

    #[test]
    fn the_list_links_each_experiment() {
        let list = vec![ExperimentSummary {
            name: "checkout-<b>".into(),
            state: "running".into(),
            variants: "A:50,B:50".into(),
            hosts: "role=web".into(),
            metric: "purchase".into(),
            exposed: 1990,
            created_at: "2026-12-08T00:00:00.000Z".into(),
            serving: None,
        }];
        let page = list_body(&list).into_string();
        assert!(page.contains(r#"href="/ui/experiments/checkout-%3Cb%3E""#), "{page}");
        assert!(page.contains("checkout-&lt;b&gt;"), "{page}");
    }
}
