//! The service's metrics, for the cluster immune system: while the current release's manifest
//! carries a `MetricsOrder` (`[immune]` in `fifty.toml`), scrape its Prometheus endpoint every
//! interval, keep each series the metric's selector matches, and report the metric's change since
//! the last scrape (the sum of its series' increases), tagged with the release the service ran for
//! the whole interval.
//!
//! Increases are taken per series, as Prometheus' `rate()` does: a counter that went down was reset
//! (its process restarted) and counts from zero, and a series that appeared counts from zero too (a
//! labelled counter is exported from its first event). Summing first would hide one series' reset
//! behind the others' growth and report a wrong change. An interval in which the release changed or
//! the scrape failed is not reported as data: the next one starts afresh. Reports wait in a bounded
//! buffer while no coordinator answers, and go out when a link is back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fifty_shared::selector::Selector;
use fifty_shared::wire::{AgentMsg, MetricSample, MetricSource, MetricsOrder, MetricsReport};
use prometheus_parse::{Scrape, Value};
use tracing::{debug, warn};

use crate::deploy::Deployer;
use crate::service::http_get;

/// Reports kept while no link is up (at 2 s intervals, five minutes).
const BUFFERED: usize = 150;
/// Largest scrape read.
const MAX_SCRAPE_BYTES: usize = 4 << 20;

/// Each matching series' cumulative value at one scrape, by its name and labels
/// (`http_requests_total{code="500"}`).
type Counters = BTreeMap<String, f64>;

/// One metric's cumulative values at one scrape, series by series.
#[derive(Clone, Debug, PartialEq)]
enum Total {
    Ratio {
        num: Counters,
        den: Counters,
    },
    Histogram {
        bounds: Vec<f64>,
        /// Each series' cumulative bucket counts (the last is `+Inf`, the count).
        series: BTreeMap<String, Vec<f64>>,
        /// The `_sum` series (none when the service does not export them).
        sum: Counters,
    },
    Gauge(f64),
}

/// A metric's source with its selectors parsed.
enum Query {
    Ratio { numerator: Selector, denominator: Selector },
    Histogram(Selector),
    Gauge(Selector),
    Cpu,
    Memory,
}

impl Query {
    fn parse(source: &MetricSource) -> Result<Query, String> {
        Ok(match source {
            MetricSource::Ratio { numerator, denominator } => {
                Query::Ratio { numerator: Selector::parse(numerator)?, denominator: Selector::parse(denominator)? }
            }
            MetricSource::Histogram { series } => Query::Histogram(Selector::parse(series)?),
            MetricSource::Gauge { series } => Query::Gauge(Selector::parse(series)?),
            MetricSource::Host { series } if series == "cpu" => Query::Cpu,
            MetricSource::Host { series } if series == "memory" => Query::Memory,
            MetricSource::Host { series } => return Err(format!("unknown host metric {series:?}")),
        })
    }
}

fn scalar(v: &Value) -> Option<f64> {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => Some(*x),
        _ => None,
    }
}

/// The series `selector` matches, each by its name and labels, or None if none does.
fn series_of(scrape: &Scrape, selector: &Selector) -> Option<Counters> {
    let mut found = None;
    for s in &scrape.samples {
        if let Some(v) = scalar(&s.value) {
            if selector.matches(&s.metric, |l| s.labels.get(l)) {
                found.get_or_insert_with(Counters::new).insert(format!("{}{{{}}}", s.metric, s.labels), v);
            }
        }
    }
    found
}

/// How much a counter grew from `before` to `now`, as Prometheus' `rate()` takes it: a counter
/// that went down was reset and counts from zero, as does one not seen before.
fn increase(before: Option<f64>, now: f64) -> f64 {
    match before {
        Some(b) if now >= b => now - b,
        _ => now,
    }
}

/// The sum of the increases of every series of `now` since `before`.
fn increase_of(before: &Counters, now: &Counters) -> f64 {
    now.iter().map(|(key, v)| increase(before.get(key).copied(), *v)).sum()
}

/// Every histogram series `selector` matches (they must share their buckets), or why not.
fn histogram_of(scrape: &Scrape, selector: &Selector) -> Result<Total, String> {
    let mut bounds: Option<Vec<f64>> = None;
    let mut series = BTreeMap::new();
    for s in &scrape.samples {
        let Value::Histogram(counts) = &s.value else { continue };
        if !selector.matches(&s.metric, |l| s.labels.get(l)) {
            continue;
        }
        let mut counts = counts.clone();
        counts.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
        let these: Vec<f64> = counts.iter().map(|c| c.less_than).filter(|b| b.is_finite()).collect();
        if counts.last().is_none_or(|c| c.less_than != f64::INFINITY) {
            return Err(format!("histogram {} has no +Inf bucket", s.metric));
        }
        match &bounds {
            None => bounds = Some(these),
            Some(b) if *b == these => {}
            Some(_) => return Err(format!("the series of histogram {} have different buckets", s.metric)),
        }
        series.insert(format!("{}{{{}}}", s.metric, s.labels), counts.iter().map(|c| c.count).collect());
    }
    let Some(bounds) = bounds else { return Err(format!("no histogram matches {selector}")) };
    let sum_selector = Selector { name: format!("{}_sum", selector.name), matchers: selector.matchers.clone() };
    let sum = series_of(scrape, &sum_selector).unwrap_or_default();
    Ok(Total::Histogram { bounds, series, sum })
}

/// Reduces one scrape to each metric's total; metrics without data are named in the errors.
fn totals(scrape: &Scrape, queries: &[(String, Query)], host: &mut HostProbe) -> (Vec<(String, Total)>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, q) in queries {
        let total = match q {
            Query::Ratio { numerator, denominator } => match series_of(scrape, denominator) {
                None => Err(format!("no series matches {denominator}")),
                // A labelled counter that never moved is absent: no matching numerator is 0.
                Some(den) => Ok(Total::Ratio { num: series_of(scrape, numerator).unwrap_or_default(), den }),
            },
            Query::Histogram(selector) => histogram_of(scrape, selector),
            Query::Gauge(selector) => series_of(scrape, selector)
                .map(|c| Total::Gauge(c.values().sum()))
                .ok_or(format!("no series matches {selector}")),
            Query::Cpu => Ok(Total::Gauge(host.cpu())),
            Query::Memory => Ok(Total::Gauge(host.memory())),
        };
        match total {
            Ok(t) => out.push((name.clone(), t)),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    (out, errors)
}

/// The change from `before` to `now`: each series' increase (a reset counts from zero), summed;
/// None when the two cannot be compared (a histogram's buckets changed).
fn delta(before: &Total, now: &Total) -> Option<MetricSample> {
    match (before, now) {
        (Total::Ratio { num: n0, den: d0 }, Total::Ratio { num: n1, den: d1 }) => {
            Some(MetricSample::Ratio { num: increase_of(n0, n1), den: increase_of(d0, d1) })
        }
        (
            Total::Histogram { bounds: b0, series: c0, sum: s0 },
            Total::Histogram { bounds: b1, series: c1, sum: s1 },
        ) => {
            if b0 != b1 {
                return None;
            }
            let mut buckets = vec![0.0; b1.len() + 1];
            for (key, now) in c1 {
                // A series resets as a whole: its buckets are one process's counters.
                let grew =
                    c0.get(key).filter(|was| was.len() == now.len() && now.iter().zip(was.iter()).all(|(a, b)| a >= b));
                for (i, c) in now.iter().enumerate().take(buckets.len()) {
                    buckets[i] += c - grew.map_or(0.0, |was| was[i]);
                }
            }
            let count = *buckets.last().expect("a +Inf bucket");
            Some(MetricSample::Histogram { bounds: b1.clone(), buckets, sum: increase_of(s0, s1), count })
        }
        (_, Total::Gauge(v)) => Some(MetricSample::Gauge(*v)),
        _ => None,
    }
}

/// CPU and memory of the host, refreshed only when a metric asks.
struct HostProbe {
    system: Option<sysinfo::System>,
}

impl HostProbe {
    fn system(&mut self) -> Option<&mut sysinfo::System> {
        if self.system.is_none() {
            let mut s = sysinfo::System::new().ok()?;
            s.refresh_cpu_usage();
            self.system = Some(s);
        }
        self.system.as_mut()
    }

    fn cpu(&mut self) -> f64 {
        self.system().map_or(0.0, |s| {
            s.refresh_cpu_usage();
            s.global_cpu_usage() as f64
        })
    }

    fn memory(&mut self) -> f64 {
        self.system().map_or(0.0, |s| {
            s.refresh_memory();
            s.used_memory() as f64
        })
    }
}

/// Reports waiting for a link.
#[derive(Clone, Default)]
pub struct Outbox {
    queue: Arc<Mutex<VecDeque<MetricsReport>>>,
}

impl Outbox {
    fn push(&self, report: MetricsReport) {
        let mut q = self.queue.lock().expect("metrics outbox");
        q.push_back(report);
        while q.len() > BUFFERED {
            q.pop_front();
        }
    }

    /// Sends what waits, oldest first, through `send` until it refuses.
    fn flush(&self, send: impl Fn(AgentMsg) -> bool) {
        let mut q = self.queue.lock().expect("metrics outbox");
        while let Some(r) = q.pop_front() {
            if !send(AgentMsg::Metrics(r.clone())) {
                q.push_front(r);
                return;
            }
        }
    }
}

/// Scrapes the current release's metrics until the process ends.
pub async fn run(deployer: Deployer) {
    let outbox = Outbox::default();
    let mut host = HostProbe { system: None };
    let mut seq = 0u64;
    // The last scrape's totals: (release, when, totals).
    let mut last: Option<(u64, Instant, Vec<(String, Total)>)> = None;
    let mut order_seen: Option<MetricsOrder> = None;
    let mut queries: Vec<(String, Query)> = Vec::new();
    let mut warned = false;
    loop {
        let target = deployer.metrics_target();
        let interval = target.as_ref().map_or(Duration::from_secs(1), |(_, o, _)| o.interval);
        tokio::time::sleep(interval).await;
        outbox.flush(|m| deployer.send(m));
        let Some((release, order, url)) = target else {
            last = None;
            continue;
        };
        if order_seen.as_ref() != Some(&order) {
            queries = order
                .metrics
                .iter()
                .filter_map(|m| match Query::parse(&m.source) {
                    Ok(q) => Some((m.name.clone(), q)),
                    Err(e) => {
                        warn!(metric = %m.name, error = %e, "metric cannot be read; skipped");
                        None
                    }
                })
                .collect();
            order_seen = Some(order.clone());
            last = None;
        }
        let url = match url {
            Ok(u) => u,
            Err(e) => {
                if !warned {
                    warn!(error = %e, "cannot scrape the service's metrics");
                    warned = true;
                }
                continue;
            }
        };
        let scrape = match http_get(&url, interval.max(Duration::from_secs(1))).await {
            Ok(r) if r.status == 200 && r.body.len() <= MAX_SCRAPE_BYTES => {
                let text = String::from_utf8_lossy(&r.body).into_owned();
                Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).map_err(|e| format!("parse {url}: {e}"))
            }
            Ok(r) => Err(format!("{url} answered {} ({} bytes)", r.status, r.body.len())),
            Err(e) => Err(e.to_string()),
        };
        let now = Instant::now();
        let scrape = match scrape {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "scrape failed");
                seq += 1;
                let span = last.as_ref().map_or(interval, |(_, at, _)| now - *at);
                let report =
                    MetricsReport { release, seq, at: SystemTime::now(), span, samples: vec![], error: Some(e) };
                outbox.push(report);
                last = None;
                continue;
            }
        };
        let (now_totals, errors) = totals(&scrape, &queries, &mut host);
        if let Some((was, at, before)) = last.take().filter(|(r, _, _)| *r == release) {
            let samples: Vec<(String, MetricSample)> = now_totals
                .iter()
                .filter_map(|(name, t)| {
                    let (_, b) = before.iter().find(|(n, _)| n == name)?;
                    delta(b, t).map(|d| (name.clone(), d))
                })
                .collect();
            seq += 1;
            let error = (!errors.is_empty()).then(|| errors.join("; "));
            outbox.push(MetricsReport { release: was, seq, at: SystemTime::now(), span: now - at, samples, error });
            outbox.flush(|m| deployer.send(m));
        }
        last = Some((release, now, now_totals));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE http_requests_total counter\n\
        http_requests_total{code=\"200\"} 970\n\
        http_requests_total{code=\"500\"} 20\n\
        http_requests_total{code=\"503\"} 10\n\
        # TYPE http_request_duration_seconds histogram\n\
        http_request_duration_seconds_bucket{le=\"0.1\"} 900\n\
        http_request_duration_seconds_bucket{le=\"0.5\"} 990\n\
        http_request_duration_seconds_bucket{le=\"+Inf\"} 1000\n\
        http_request_duration_seconds_sum 42.5\n\
        http_request_duration_seconds_count 1000\n\
        # TYPE queue_depth gauge\n\
        queue_depth 7\n";

    fn scrape(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    fn queries() -> Vec<(String, Query)> {
        let q = |s: MetricSource| Query::parse(&s).unwrap();
        vec![
            (
                "error_rate".into(),
                q(MetricSource::Ratio {
                    numerator: "http_requests_total{code=~\"5..\"}".into(),
                    denominator: "http_requests_total".into(),
                }),
            ),
            ("latency".into(), q(MetricSource::Histogram { series: "http_request_duration_seconds".into() })),
            ("queue".into(), q(MetricSource::Gauge { series: "queue_depth".into() })),
            ("missing".into(), q(MetricSource::Gauge { series: "not_there".into() })),
        ]
    }

    fn counters(pairs: &[(&str, f64)]) -> Counters {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_scrape_reduces_to_each_metrics_series() {
        let (totals, errors) = totals(&scrape(TEXT), &queries(), &mut HostProbe { system: None });
        let num = counters(&[("http_requests_total{code=\"500\"}", 20.0), ("http_requests_total{code=\"503\"}", 10.0)]);
        let mut den = num.clone();
        den.insert("http_requests_total{code=\"200\"}".into(), 970.0);
        assert_eq!(totals[0], ("error_rate".into(), Total::Ratio { num, den }));
        let series = [("http_request_duration_seconds{}".to_string(), vec![900.0, 990.0, 1000.0])].into();
        let sum = counters(&[("http_request_duration_seconds_sum{}", 42.5)]);
        assert_eq!(totals[1], ("latency".into(), Total::Histogram { bounds: vec![0.1, 0.5], series, sum }));
        assert_eq!(totals[2], ("queue".into(), Total::Gauge(7.0)));
        assert_eq!(errors, ["missing: no series matches not_there"]);
    }

    #[test]
    fn deltas_are_taken_series_by_series() {
        let q = queries();
        let mut host = HostProbe { system: None };
        let (before, _) = totals(&scrape(TEXT), &q, &mut host);
        let later =
            TEXT.replace("} 970", "} 1070").replace("} 20", "} 25").replace("le=\"+Inf\"} 1000", "le=\"+Inf\"} 1105");
        let later = later.replace("le=\"0.5\"} 990", "le=\"0.5\"} 1090").replace("le=\"0.1\"} 900", "le=\"0.1\"} 1000");
        let later = later.replace("_count 1000", "_count 1105").replace("_sum 42.5", "_sum 50");
        let (after, _) = totals(&scrape(&later), &q, &mut host);
        assert_eq!(delta(&before[0].1, &after[0].1), Some(MetricSample::Ratio { num: 5.0, den: 105.0 }));
        assert_eq!(
            delta(&before[1].1, &after[1].1),
            Some(MetricSample::Histogram {
                bounds: vec![0.1, 0.5],
                buckets: vec![100.0, 100.0, 105.0],
                sum: 7.5,
                count: 105.0
            })
        );
    }

    #[test]
    fn a_counter_reset_counts_from_zero_in_its_own_series_only() {
        let q = queries();
        let mut host = HostProbe { system: None };
        let (before, _) = totals(&scrape(TEXT), &q, &mut host);
        // One worker restarted: its 503 counter went from 10 to 2, while the 500s grew from 20 to
        // 40 and the total of 5xx rose (30 → 42). The 5xx that happened are 20 + 2, not 42 − 30.
        let later = TEXT.replace("} 970", "} 1070").replace("} 20", "} 40").replace("\"503\"} 10", "\"503\"} 2");
        let (after, _) = totals(&scrape(&later), &q, &mut host);
        assert_eq!(delta(&before[0].1, &after[0].1), Some(MetricSample::Ratio { num: 22.0, den: 122.0 }));
        // The whole service restarted: every counter counts from zero, as `rate()` takes it.
        let restarted = "# TYPE http_requests_total counter\n\
            http_requests_total{code=\"200\"} 30\n\
            http_requests_total{code=\"500\"} 1\n";
        let (restarted, _) = totals(&scrape(restarted), &q[..1], &mut host);
        assert_eq!(delta(&before[0].1, &restarted[0].1), Some(MetricSample::Ratio { num: 1.0, den: 31.0 }));
        // A histogram series resets as a whole; a second series appearing counts from zero.
        let two = TEXT.replace("le=\"0.1\"} 900", "le=\"0.1\"} 9").replace("le=\"0.5\"} 990", "le=\"0.5\"} 10");
        let two = two.replace("le=\"+Inf\"} 1000", "le=\"+Inf\"} 10").replace("_sum 42.5", "_sum 0.5")
            + "http_request_duration_seconds_bucket{le=\"0.1\",worker=\"2\"} 3\n\
               http_request_duration_seconds_bucket{le=\"0.5\",worker=\"2\"} 4\n\
               http_request_duration_seconds_bucket{le=\"+Inf\",worker=\"2\"} 5\n\
               http_request_duration_seconds_sum{worker=\"2\"} 1.25\n";
        let (after, errors) = totals(&scrape(&two), &q, &mut host);
        assert_eq!(errors, ["missing: no series matches not_there"]);
        assert_eq!(
            delta(&before[1].1, &after[1].1),
            Some(MetricSample::Histogram {
                bounds: vec![0.1, 0.5],
                buckets: vec![12.0, 14.0, 15.0],
                sum: 1.75,
                count: 15.0
            })
        );
    }

    #[test]
    fn a_histogram_without_sum_still_reports_its_buckets() {
        let q = queries();
        let text = TEXT.replace("http_request_duration_seconds_sum 42.5\n", "");
        let mut host = HostProbe { system: None };
        let (before, _) = totals(&scrape(&text), &q, &mut host);
        let later = text.replace("le=\"+Inf\"} 1000", "le=\"+Inf\"} 1010");
        let (after, _) = totals(&scrape(&later), &q, &mut host);
        assert_eq!(
            delta(&before[1].1, &after[1].1),
            Some(MetricSample::Histogram {
                bounds: vec![0.1, 0.5],
                buckets: vec![0.0, 0.0, 10.0],
                sum: 0.0,
                count: 10.0
            })
        );
    }

    #[test]
    fn a_healthy_host_without_errors_reports_a_zero_numerator() {
        let text = "# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 10\n";
        let (found, errors) = totals(&scrape(text), &queries()[..1], &mut HostProbe { system: None });
        assert!(errors.is_empty());
        let den = counters(&[("http_requests_total{code=\"200\"}", 10.0)]);
        assert_eq!(found[0].1, Total::Ratio { num: Counters::new(), den: den.clone() });
        let later =
            Total::Ratio { num: Counters::new(), den: counters(&[("http_requests_total{code=\"200\"}", 15.0)]) };
        assert_eq!(delta(&found[0].1, &later), Some(MetricSample::Ratio { num: 0.0, den: 5.0 }));
        let (_, errors) = totals(&scrape("# nothing\n"), &queries()[..1], &mut HostProbe { system: None });
        assert_eq!(errors, ["error_rate: no series matches http_requests_total"]);
    }
}
