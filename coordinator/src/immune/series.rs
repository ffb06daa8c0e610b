//! The leader's recent metric reports, per host: soft state, like heartbeats. Agents send one
//! report per scrape interval (`AgentMsg::Metrics`); the leader keeps the last hour of them (at
//! most [`PER_HOST`] per host), which is what the immune system compares, what `fifty metrics` and
//! `fifty top` show, and what a new leader rebuilds from the next reports after a failover.
//!
//! Stored compactly, because a fleet's hour adds up (1,000 hosts at one report a second are 3.6
//! million reports): each host keeps the shapes of its reports once (metric names, kinds, histogram
//! bounds — they change only with a release's `[immune]`), a 16-byte row per report (arrival to
//! 100 ms, sequence, release, span) and the values as `f32`s in one ring. A ratio metric costs 24
//! bytes a report; a ratio and an 8-bucket histogram 68. Reading gives the reports back whole.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use fifty_shared::ids::HostName;
use fifty_shared::wire::{MetricSample, MetricsReport};

/// How long reports are kept.
pub const KEEP: Duration = Duration::from_secs(3600);
/// Most reports kept per host (an hour at one-second intervals).
pub const PER_HOST: usize = 3600;

/// One report as the leader received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// When it arrived (the leader's clock, to 100 ms: intervals of different hosts are lined up
    /// by it).
    pub at: SystemTime,
    /// The report (its `at` is the arrival time too; values to `f32` precision).
    pub report: MetricsReport,
}

/// How one metric of a report is laid out in the value ring.
#[derive(Clone, Debug, PartialEq)]
enum Shape {
    Ratio,
    Gauge,
    Histogram(Vec<f64>),
}

impl Shape {
    fn width(&self) -> usize {
        match self {
            Shape::Ratio => 2,
            Shape::Gauge => 1,
            // Buckets (bounds and +Inf), sum, count.
            Shape::Histogram(bounds) => bounds.len() + 3,
        }
    }
}

type Schema = Vec<(String, Shape)>;

#[derive(Clone, Copy, Debug)]
struct Row {
    /// Arrival, in tenths of a second since the series' epoch.
    at: u32,
    seq: u32,
    release: u32,
    /// The report's span, in hundredths of a second.
    span: u16,
    schema: u8,
    error: bool,
}

#[derive(Default)]
struct HostSeries {
    schemas: Vec<Schema>,
    rows: VecDeque<Row>,
    values: VecDeque<f32>,
    /// Errors of the rows that have one, by seq.
    errors: VecDeque<(u32, Box<str>)>,
}

impl HostSeries {
    fn width(&self, row: &Row) -> usize {
        self.schemas[row.schema as usize].iter().map(|(_, s)| s.width()).sum()
    }

    fn pop_front(&mut self) {
        if let Some(row) = self.rows.pop_front() {
            let w = self.width(&row);
            self.values.drain(..w.min(self.values.len()));
            while self.errors.front().is_some_and(|(seq, _)| *seq <= row.seq) {
                self.errors.pop_front();
            }
        }
    }
}

/// Every host's recent reports, oldest first.
#[derive(Default)]
pub struct Series {
    epoch: Option<SystemTime>,
    hosts: HashMap<HostName, HostSeries>,
}

fn clamp32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

impl Series {
    fn ticks(&mut self, t: SystemTime) -> u32 {
        let epoch = *self.epoch.get_or_insert(t);
        clamp32((t.duration_since(epoch).unwrap_or_default().as_millis() / 100) as u64)
    }

    fn time(&self, ticks: u32) -> SystemTime {
        self.epoch.unwrap_or(SystemTime::UNIX_EPOCH) + Duration::from_millis(ticks as u64 * 100)
    }

    /// Adds a report from `host`; a repeated or older one (by `seq`, unless the agent restarted
    /// and counts from 1 again) is dropped.
    pub fn push(&mut self, host: &HostName, report: MetricsReport, now: SystemTime) {
        let at = self.ticks(now);
        let seq = clamp32(report.seq);
        // Before the epoch counts as tick 0: nothing is evicted for age in the first hour.
        let keep_from = self.ticks(now.checked_sub(KEEP).unwrap_or(SystemTime::UNIX_EPOCH));
        let h = self.hosts.entry(host.clone()).or_default();
        if let Some(last) = h.rows.back() {
            let restarted = seq <= 1 && last.seq > 1;
            if seq <= last.seq && !restarted {
                return;
            }
        }
        let schema: Schema = report
            .samples
            .iter()
            .map(|(name, s)| {
                let shape = match s {
                    MetricSample::Ratio { .. } => Shape::Ratio,
                    MetricSample::Gauge(_) => Shape::Gauge,
                    MetricSample::Histogram { bounds, .. } => Shape::Histogram(bounds.clone()),
                };
                (name.clone(), shape)
            })
            .collect();
        // A histogram whose bucket counts do not match its bounds cannot be laid out: dropped.
        let fits = report.samples.iter().all(|(_, s)| match s {
            MetricSample::Histogram { bounds, buckets, .. } => buckets.len() == bounds.len() + 1,
            _ => true,
        });
        if !fits {
            return;
        }
        let index = match h.schemas.iter().position(|s| *s == schema) {
            Some(i) => i,
            None => {
                if h.schemas.len() >= u8::MAX as usize {
                    // Hundreds of shapes: start the host afresh rather than grow without bound.
                    *h = HostSeries::default();
                }
                h.schemas.push(schema);
                h.schemas.len() - 1
            }
        };
        // Grow the rings by a tenth, not by doubling: a full hour is what every host ends up holding.
        let width: usize = h.schemas[index].iter().map(|(_, s)| s.width()).sum();
        if h.values.len() + width > h.values.capacity() {
            h.values.reserve_exact((h.values.len() / 10).max(width * 16));
        }
        if h.rows.len() == h.rows.capacity() {
            h.rows.reserve_exact((h.rows.len() / 10).max(16));
        }
        for (_, s) in &report.samples {
            match s {
                MetricSample::Ratio { num, den } => h.values.extend([*num as f32, *den as f32]),
                MetricSample::Gauge(v) => h.values.push_back(*v as f32),
                MetricSample::Histogram { buckets, sum, count, .. } => {
                    h.values.extend(buckets.iter().map(|b| *b as f32));
                    h.values.extend([*sum as f32, *count as f32]);
                }
            }
        }
        if let Some(e) = &report.error {
            h.errors.push_back((seq, e.as_str().into()));
        }
        h.rows.push_back(Row {
            at,
            seq,
            release: clamp32(report.release),
            span: (report.span.as_millis() / 10).min(u16::MAX as u128) as u16,
            schema: index as u8,
            error: report.error.is_some(),
        });
        while h.rows.len() > PER_HOST || h.rows.front().is_some_and(|r| r.at < keep_from) {
            h.pop_front();
        }
    }

    /// The report of `host` at `index` of its rows, whole again.
    fn report(&self, h: &HostSeries, index: usize, offset: usize) -> Received {
        let row = h.rows[index];
        let mut i = offset;
        let mut next = || {
            let v = h.values.get(i).copied().unwrap_or(0.0) as f64;
            i += 1;
            v
        };
        let samples = h.schemas[row.schema as usize]
            .iter()
            .map(|(name, shape)| {
                let sample = match shape {
                    Shape::Ratio => MetricSample::Ratio { num: next(), den: next() },
                    Shape::Gauge => MetricSample::Gauge(next()),
                    Shape::Histogram(bounds) => {
                        let buckets = (0..=bounds.len()).map(|_| next()).collect();
                        MetricSample::Histogram { bounds: bounds.clone(), buckets, sum: next(), count: next() }
                    }
                };
                (name.clone(), sample)
            })
            .collect();
        let at = self.time(row.at);
        let error =
            if row.error { h.errors.iter().find(|(seq, _)| *seq == row.seq).map(|(_, e)| e.to_string()) } else { None };
        let report = MetricsReport {
            release: row.release as u64,
            seq: row.seq as u64,
            at,
            span: Duration::from_millis(row.span as u64 * 10),
            samples,
            error,
        };
        Received { at, report }
    }

    /// `host`'s reports that arrived in `[from, to)`, oldest first.
    pub fn between(&self, host: &HostName, from: SystemTime, to: SystemTime) -> Vec<Received> {
        let Some(h) = self.hosts.get(host) else { return Vec::new() };
        let mut out = Vec::new();
        let mut offset = 0;
        for (index, row) in h.rows.iter().enumerate() {
            let at = self.time(row.at);
            if at >= from && at < to {
                out.push(self.report(h, index, offset));
            }
            offset += h.width(row);
        }
        out
    }

    /// `host`'s newest report.
    pub fn last(&self, host: &HostName) -> Option<Received> {
        let h = self.hosts.get(host)?;
        let index = h.rows.len().checked_sub(1)?;
        let width = h.width(&h.rows[index]);
        Some(self.report(h, index, h.values.len() - width))
    }

    /// Hosts with reports.
    pub fn hosts(&self) -> impl Iterator<Item = &HostName> {
        self.hosts.keys()
    }

    /// Reports held, in all.
    pub fn len(&self) -> usize {
        self.hosts.values().map(|h| h.rows.len()).sum()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (this node stopped leading: the next leader has its own).
    pub fn clear(&mut self) {
        self.hosts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64) -> MetricsReport {
        MetricsReport {
            release: 1,
            seq,
            at: SystemTime::UNIX_EPOCH,
            span: Duration::from_secs(2),
            samples: vec![],
            error: None,
        }
    }

    #[test]
    fn reports_are_kept_once_in_order_and_for_an_hour() {
        let h = HostName::new("web-1").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let mut s = Series::default();
        s.push(&h, report(1), t0);
        s.push(&h, report(2), t0 + Duration::from_secs(2));
        s.push(&h, report(2), t0 + Duration::from_secs(3));
        assert_eq!(s.len(), 2, "a repeated report is dropped");
        s.push(&h, report(1), t0 + Duration::from_secs(4));
        assert_eq!(s.len(), 3, "an agent that restarted counts from 1 again");
        assert_eq!(s.between(&h, t0 + Duration::from_secs(1), t0 + Duration::from_secs(4)).len(), 1);
        s.push(&h, report(2), t0 + KEEP + Duration::from_secs(3));
        assert_eq!(s.len(), 2, "reports older than an hour are dropped");
    }

    #[test]
    fn reports_come_back_whole_from_the_compact_rings() {
        let h = HostName::new("web-1").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let mut s = Series::default();
        let hist = MetricSample::Histogram {
            bounds: vec![0.1, 0.5],
            buckets: vec![90.0, 99.0, 100.0],
            sum: 4.25,
            count: 100.0,
        };
        let full = MetricsReport {
            release: 7,
            seq: 1,
            at: t0,
            span: Duration::from_millis(2000),
            samples: vec![
                ("error_rate".into(), MetricSample::Ratio { num: 2.0, den: 100.0 }),
                ("latency".into(), hist.clone()),
                ("cpu".into(), MetricSample::Gauge(37.5)),
            ],
            error: None,
        };
        s.push(&h, full.clone(), t0);
        let mut partial = report(2);
        partial.samples = vec![("error_rate".into(), MetricSample::Ratio { num: 0.0, den: 50.0 })];
        partial.error = Some("latency: no histogram matches x".into());
        s.push(&h, partial.clone(), t0 + Duration::from_secs(2));
        s.push(&h, MetricsReport { seq: 3, ..full.clone() }, t0 + Duration::from_secs(4));
        let got = s.between(&h, t0, t0 + Duration::from_secs(10));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].report, full);
        assert_eq!(got[1].report.samples, partial.samples);
        assert_eq!(got[1].report.error, partial.error);
        assert_eq!(got[1].at, t0 + Duration::from_secs(2));
        assert_eq!(got[2].report.samples[1].1, hist, "the third row reads past the second's narrower one");
        assert_eq!(s.last(&h).unwrap().report.seq, 3);
        for i in 4..(PER_HOST as u64 + 10) {
            s.push(&h, MetricsReport { seq: i, ..full.clone() }, t0 + Duration::from_secs(4 + i));
        }
        assert_eq!(s.len(), PER_HOST);
        let h1 = &s.hosts[&h];
        assert_eq!(h1.values.len(), PER_HOST * 8, "the value ring holds exactly the rows kept");
        assert_eq!(std::mem::size_of::<Row>(), 16);
    }
}
