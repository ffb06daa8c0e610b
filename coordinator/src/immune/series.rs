//! The leader's recent metric reports, per host: soft state, like heartbeats. Agents send one
//! report per scrape interval (`AgentMsg::Metrics`); the leader keeps the last hour of them (at
//! most [`PER_HOST`] per host), which is what the immune system compares, what `fifty metrics` and
//! `fifty top` show, and what a new leader rebuilds from the next reports after a failover.
//!
//! Stored compactly, because a fleet's hour adds up (1,000 hosts at one report a second are 3.6
//! million reports): each host keeps the shapes of its reports once (metric names, kinds, histogram
//! bounds — they change only with a release's `[immune]`) and its reports as one ring of bytes,
//! oldest first. A report is its row (arrival to 100 ms, sequence, release, span, each as the
//! difference from the report before, in a variable-length integer: 5 bytes for the usual report)
//! and then its values, each a whole number (what counter and histogram deltas are) as an exact
//! variable-length integer (1 byte up to 63, 2 up to 8,191) or else an `f32` (5 bytes). A ratio
//! and an 8-bucket histogram of a busy second come to about 20-35 bytes (68 with fixed-width
//! rows and `f32`s). Reading gives the reports back whole, walking the ring from the oldest.

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
    /// The report (its `at` is the arrival time too; whole values exact up to 2^53, others to
    /// `f32` precision).
    pub report: MetricsReport,
}

/// How one metric of a report is laid out in the ring.
#[derive(Clone, Debug, PartialEq)]
enum Shape {
    Ratio,
    Gauge,
    Histogram(Vec<f64>),
}

impl Shape {
    /// Values a sample of this shape has.
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

/// A report's fixed part, as decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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

/// Whole values up to this magnitude are stored as integers (exactly: an `f64` holds every
/// integer up to 2^53).
const EXACT: f64 = (1u64 << 53) as f64;
/// The tag (a varint of 1) of a value stored as the 4 bytes of an `f32`; an even varint is a
/// zigzagged whole number shifted left by one.
const F32_TAG: u64 = 1;
/// The tag of a value stored as the 8 bytes of an `f64`: a finite number past the `f32` range.
const F64_TAG: u64 = 3;

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v`: a whole number below 2^53 in magnitude exactly (1 byte up to 31, 2 up to 4,095,
/// 3 up to 524,287), anything else (fractions, -0, infinities, NaN, whole numbers past 2^53) as
/// an `f32`, or as an `f64` if it is finite and past the `f32` range (so it stays finite).
fn put_value(out: &mut Vec<u8>, v: f64) {
    if v.fract() == 0.0 && v.abs() < EXACT && !(v == 0.0 && v.is_sign_negative()) {
        put_varint(out, zigzag(v as i64) << 1);
    } else if v.is_finite() && (v as f32).is_infinite() {
        put_varint(out, F64_TAG);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        put_varint(out, F32_TAG);
        out.extend_from_slice(&(v as f32).to_le_bytes());
    }
}

/// The difference `now - before` of two row fields, for [`put_varint`].
fn delta(now: u32, before: u32) -> u64 {
    zigzag(now as i64 - before as i64)
}

/// Varints a row takes: schema and error, then the differences of at, seq, release and span.
const ROW_FIELDS: usize = 5;

/// Appends `row` as differences from `prev`.
fn put_row(out: &mut Vec<u8>, row: &Row, prev: &Row) {
    put_varint(out, (row.schema as u64) << 1 | row.error as u64);
    put_varint(out, delta(row.at, prev.at));
    put_varint(out, delta(row.seq, prev.seq));
    put_varint(out, delta(row.release, prev.release));
    put_varint(out, delta(row.span as u32, prev.span as u32));
}

/// Reads the ring from a position; None when it runs out or holds what no writer wrote.
struct Reader<'a> {
    bytes: std::iter::Copied<std::collections::vec_deque::Iter<'a, u8>>,
    /// Bytes read so far.
    read: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a VecDeque<u8>, from: usize) -> Self {
        Reader { bytes: bytes.range(from.min(bytes.len())..).copied(), read: 0 }
    }

    fn byte(&mut self) -> Option<u8> {
        let b = self.bytes.next()?;
        self.read += 1;
        Some(b)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut a = [0u8; N];
        for b in &mut a {
            *b = self.byte()?;
        }
        Some(a)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn value(&mut self) -> Option<f64> {
        match self.varint()? {
            F32_TAG => Some(f32::from_le_bytes(self.array()?) as f64),
            F64_TAG => Some(f64::from_le_bytes(self.array()?)),
            x if x & 1 == 0 => Some(unzigzag(x >> 1) as f64),
            _ => None,
        }
    }

    fn field(&mut self, before: u32) -> Option<u32> {
        u32::try_from(before as i64 + unzigzag(self.varint()?)).ok()
    }

    fn row(&mut self, prev: &Row) -> Option<Row> {
        let head = self.varint()?;
        Some(Row {
            schema: u8::try_from(head >> 1).ok()?,
            error: head & 1 == 1,
            at: self.field(prev.at)?,
            seq: self.field(prev.seq)?,
            release: self.field(prev.release)?,
            span: u16::try_from(self.field(prev.span as u32)?).ok()?,
        })
    }

    /// Steps over a row (its fields are differences: only the reader of every row before can
    /// decode it).
    fn skip_row(&mut self) -> Option<()> {
        for _ in 0..ROW_FIELDS {
            self.varint()?;
        }
        Some(())
    }

    /// Steps over the values of one metric laid out as `shape`.
    fn skip(&mut self, shape: &Shape) -> Option<()> {
        for _ in 0..shape.width() {
            self.value()?;
        }
        Some(())
    }

    /// The values of one metric laid out as `shape`.
    fn sample(&mut self, shape: &Shape) -> Option<MetricSample> {
        Some(match shape {
            Shape::Ratio => MetricSample::Ratio { num: self.value()?, den: self.value()? },
            Shape::Gauge => MetricSample::Gauge(self.value()?),
            Shape::Histogram(bounds) => {
                let buckets = (0..=bounds.len()).map(|_| self.value()).collect::<Option<Vec<f64>>>()?;
                MetricSample::Histogram { bounds: bounds.clone(), buckets, sum: self.value()?, count: self.value()? }
            }
        })
    }
}

#[derive(Default)]
struct HostSeries {
    schemas: Vec<Schema>,
    /// The reports, oldest first: each its row (differences from the report before) and values.
    bytes: VecDeque<u8>,
    /// Reports in `bytes`.
    count: usize,
    /// The row of the report before the oldest held (the oldest's differences are from it).
    base: Row,
    /// The newest report's row and where it starts in `bytes`.
    newest: Option<(Row, usize)>,
    /// Errors of the rows that have one, by seq.
    errors: VecDeque<(u32, Box<str>)>,
}

impl HostSeries {
    /// The oldest report's row and its length in bytes.
    fn front(&self) -> Option<(Row, usize)> {
        if self.count == 0 {
            return None;
        }
        let mut r = Reader::new(&self.bytes, 0);
        let row = r.row(&self.base)?;
        for (_, shape) in self.schemas.get(row.schema as usize)? {
            r.skip(shape)?;
        }
        Some((row, r.read))
    }

    fn pop_front(&mut self) {
        let Some((row, len)) = self.front() else {
            // Nothing, or bytes `push` did not write: start the reports afresh.
            self.bytes.clear();
            self.count = 0;
            self.newest = None;
            self.errors.clear();
            return;
        };
        self.bytes.drain(..len);
        self.base = row;
        self.count -= 1;
        self.newest = self.newest.filter(|_| self.count > 0).map(|(r, start)| (r, start - len));
        while self.errors.front().is_some_and(|(seq, _)| *seq <= row.seq) {
            self.errors.pop_front();
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
        if let Some((last, _)) = &h.newest {
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
        let row = Row {
            at,
            seq,
            release: clamp32(report.release),
            span: (report.span.as_millis() / 10).min(u16::MAX as u128) as u16,
            schema: index as u8,
            error: report.error.is_some(),
        };
        let mut record = Vec::with_capacity(64);
        put_row(&mut record, &row, &h.newest.map_or(h.base, |(r, _)| r));
        for (_, s) in &report.samples {
            match s {
                MetricSample::Ratio { num, den } => {
                    put_value(&mut record, *num);
                    put_value(&mut record, *den);
                }
                MetricSample::Gauge(v) => put_value(&mut record, *v),
                MetricSample::Histogram { buckets, sum, count, .. } => {
                    for b in buckets {
                        put_value(&mut record, *b);
                    }
                    put_value(&mut record, *sum);
                    put_value(&mut record, *count);
                }
            }
        }
        // Grow the ring by a tenth, not by doubling: a full hour is what every host ends up holding.
        if h.bytes.len() + record.len() > h.bytes.capacity() {
            h.bytes.reserve_exact((h.bytes.len() / 10).max(record.len() * 16));
        }
        if let Some(e) = &report.error {
            h.errors.push_back((seq, e.as_str().into()));
        }
        h.newest = Some((row, h.bytes.len()));
        h.bytes.extend(record);
        h.count += 1;
        while h.count > PER_HOST || h.front().is_some_and(|(r, _)| r.at < keep_from) {
            h.pop_front();
        }
    }

    /// The report whose row is `row`, its values read from `r`.
    fn report(&self, h: &HostSeries, row: &Row, r: &mut Reader) -> Option<Received> {
        let samples = h
            .schemas
            .get(row.schema as usize)?
            .iter()
            .map(|(name, shape)| Some((name.clone(), r.sample(shape)?)))
            .collect::<Option<Vec<_>>>()?;
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
        Some(Received { at, report })
    }

    /// `host`'s reports that arrived in `[from, to)`, oldest first.
    pub fn between(&self, host: &HostName, from: SystemTime, to: SystemTime) -> Vec<Received> {
        let Some(h) = self.hosts.get(host) else { return Vec::new() };
        let mut out = Vec::new();
        let mut r = Reader::new(&h.bytes, 0);
        let mut prev = h.base;
        for _ in 0..h.count {
            let Some(row) = r.row(&prev) else { break };
            prev = row;
            let at = self.time(row.at);
            let read = if at >= from && at < to {
                self.report(h, &row, &mut r).map(|rec| out.push(rec))
            } else {
                h.schemas.get(row.schema as usize).and_then(|s| s.iter().try_for_each(|(_, shape)| r.skip(shape)))
            };
            if read.is_none() {
                break;
            }
        }
        out
    }

    /// `host`'s newest report.
    pub fn last(&self, host: &HostName) -> Option<Received> {
        let h = self.hosts.get(host)?;
        let (row, start) = h.newest?;
        let mut r = Reader::new(&h.bytes, start);
        r.skip_row()?;
        self.report(h, &row, &mut r)
    }

    /// Hosts with reports.
    pub fn hosts(&self) -> impl Iterator<Item = &HostName> {
        self.hosts.keys()
    }

    /// Reports held, in all.
    pub fn len(&self) -> usize {
        self.hosts.values().map(|h| h.count).sum()
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
        let got = s.between(&h, t0, t0 + KEEP * 2);
        assert_eq!(got.len(), PER_HOST, "the oldest went and the rest still decode from the new oldest");
        assert!(got.iter().all(|r| r.report.samples == full.samples));
        assert_eq!(got[0].report.seq, 10);
        assert_eq!(s.last(&h).unwrap().report.seq, PER_HOST as u64 + 9);
        // A row of 5 one-byte differences; values: 2 (1 byte), 100 (2), buckets 90, 99, 100 (2
        // each), sum 4.25 (an f32: 5), count 100 (2), the gauge 37.5 (5).
        let h1 = &s.hosts[&h];
        assert_eq!(h1.bytes.len(), PER_HOST * 26, "the ring holds exactly the reports kept");
    }

    fn round_trip(v: f64) -> (f64, usize) {
        let mut out = Vec::new();
        put_value(&mut out, v);
        let ring: VecDeque<u8> = out.iter().copied().collect();
        let mut r = Reader::new(&ring, 0);
        let back = r.value().expect("decodes");
        assert_eq!(r.read, out.len(), "{v}: reads what was written");
        (back, out.len())
    }

    #[test]
    fn whole_values_come_back_exact_and_others_to_f32() {
        let exact = (1u64 << 53) as f64 - 1.0;
        for (v, size) in [
            (0.0, 1),
            (1.0, 1),
            (31.0, 1),
            (32.0, 2),
            (-1.0, 1),
            (4095.0, 2),
            (4096.0, 3),
            (524_287.0, 3),
            (524_288.0, 4),
            (1e6, 4),
            (16_777_217.0, 4), // 2^24 + 1: an f32 would round it
            (exact, 8),
            (-exact, 8),
        ] {
            let (back, len) = round_trip(v);
            assert_eq!(back.to_bits(), v.to_bits(), "{v} exact");
            assert_eq!(len, size, "{v} in {size} bytes");
        }
        for v in [0.5, 4.25, -3.75, 1e-9, 2.0f64.powi(53), 1e20, f64::INFINITY, f64::NEG_INFINITY] {
            let (back, len) = round_trip(v);
            assert_eq!(back, v as f32 as f64, "{v} to f32 precision");
            assert_eq!(len, 5);
        }
        let (zero, _) = round_trip(-0.0);
        assert!(zero == 0.0 && zero.is_sign_negative(), "-0 keeps its sign");
        assert!(round_trip(f64::NAN).0.is_nan());
        for v in [1e300, -1e300, f64::MAX] {
            assert_eq!(round_trip(v), (v, 9), "finite past the f32 range: an f64, not infinity");
        }
    }

    #[test]
    fn varints_and_rows_round_trip_at_their_bounds_and_bad_bytes_are_refused() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let ring: VecDeque<u8> = out.iter().copied().collect();
            assert_eq!(Reader::new(&ring, 0).varint(), Some(v));
        }
        let overlong: VecDeque<u8> = std::iter::repeat(0x80).take(10).chain([1]).collect();
        assert_eq!(Reader::new(&overlong, 0).varint(), None, "past 64 bits");
        let cut: VecDeque<u8> = [0x80, 0x80].into_iter().collect();
        assert_eq!(Reader::new(&cut, 0).varint(), None, "cut short");
        let unknown_tag: VecDeque<u8> = [5].into_iter().collect();
        assert_eq!(Reader::new(&unknown_tag, 0).value(), None);
        let extremes = [
            Row::default(),
            Row { at: u32::MAX, seq: u32::MAX, release: u32::MAX, span: u16::MAX, schema: 254, error: true },
            Row { at: 5, seq: 1, release: 2, span: 200, schema: 0, error: false },
            Row::default(),
        ];
        let mut out = Vec::new();
        for pair in extremes.windows(2) {
            put_row(&mut out, &pair[1], &pair[0]);
        }
        let ring: VecDeque<u8> = out.iter().copied().collect();
        let mut r = Reader::new(&ring, 0);
        let mut prev = extremes[0];
        for want in &extremes[1..] {
            prev = r.row(&prev).expect("decodes");
            assert_eq!(prev, *want, "differences both ways, to the bounds of each field");
        }
        assert_eq!(r.read, ring.len());
    }

    #[test]
    fn a_clock_stepped_back_and_an_agent_restart_read_back_right() {
        let h = HostName::new("web-1").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let mut s = Series::default();
        let mut r = report(6);
        r.release = 9;
        s.push(&h, r.clone(), t0);
        s.push(&h, MetricsReport { seq: 7, ..r.clone() }, t0 + Duration::from_secs(20));
        // The leader's clock stepped back 15 s; then the agent restarted on an older release.
        s.push(&h, MetricsReport { seq: 8, ..r.clone() }, t0 + Duration::from_secs(5));
        s.push(&h, MetricsReport { seq: 1, release: 3, ..r }, t0 + Duration::from_secs(7));
        let got: Vec<_> = s
            .between(&h, t0, t0 + Duration::from_secs(60))
            .iter()
            .map(|r| (r.at, r.report.seq, r.report.release))
            .collect();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(got, [(at(0), 6, 9), (at(20), 7, 9), (at(5), 8, 9), (at(7), 1, 3)]);
    }
}
