//! The live fleet view behind `fifty top` and `fifty metrics`: the leader's soft state (heartbeat
//! health history from `fleet`, service metric reports from `immune::series`) summarised per host
//! and per time bucket. Requests per second are a ratio metric's denominator over the reports'
//! spans; an error rate is the pooled numerator over the pooled denominator.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use fifty_shared::ids::HostName;
use fifty_shared::wire::MetricSample;
use serde::{Deserialize, Serialize};

use crate::coordinator::{Coordinator, OpError};
use crate::fleet::HostState;

/// The window `fifty top` rates are taken over.
pub const TOP_WINDOW: Duration = Duration::from_secs(10);

/// One host in `fifty top`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopRow {
    /// Host name.
    pub host: String,
    /// `ready` or `down`.
    pub state: HostState,
    /// The release it runs.
    pub release: Option<u64>,
    /// CPU, percent.
    pub cpu_percent: Option<f32>,
    /// Memory in use / installed, bytes.
    pub mem_used_bytes: Option<u64>,
    /// Memory installed.
    pub mem_total_bytes: Option<u64>,
    /// Free disk, percent.
    pub disk_free_percent: Option<f32>,
    /// Requests per second (the first ratio metric's denominator), over the last 10 s.
    pub requests_per_s: Option<f64>,
    /// Its error rate (numerator / denominator) over the last 10 s.
    pub error_rate: Option<f64>,
}

/// `fifty top`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopView {
    /// When (RFC 3339).
    pub at: String,
    /// The ratio metric rates are of (`error_rate` if the service has one).
    pub metric: Option<String>,
    /// Per host, by name.
    pub hosts: Vec<TopRow>,
    /// Hosts ready.
    pub ready: usize,
    /// Hosts down.
    pub down: usize,
    /// Fleet requests per second.
    pub requests_per_s: f64,
    /// Fleet error rate (pooled).
    pub error_rate: Option<f64>,
    /// Alerts firing now.
    pub alerts_firing: usize,
}

/// `GET /v1/fleet/series`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeriesQuery {
    /// One host; absent: the fleet.
    pub host: Option<String>,
    /// How far back, e.g. `10m` (default 10m, at most 1h).
    pub since: Option<String>,
    /// Only this service ratio metric (default: every one).
    pub metric: Option<String>,
    /// Bucket width, e.g. `10s` (default: `since` / 30, at least 2 s).
    pub step: Option<String>,
}

/// One time bucket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// The bucket's start (RFC 3339).
    pub at: String,
    /// Hosts with a heartbeat in the bucket.
    pub hosts: usize,
    /// Mean CPU, percent.
    pub cpu_percent: Option<f64>,
    /// Mean memory in use, bytes (summed over hosts).
    pub mem_used_bytes: Option<u64>,
    /// Lowest free disk, percent.
    pub disk_free_percent: Option<f64>,
    /// Requests per second (the ratio metric's denominator).
    pub requests_per_s: Option<f64>,
    /// Ratio metrics: name → pooled ratio.
    pub ratios: BTreeMap<String, f64>,
}

/// `fifty metrics`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeriesView {
    /// The host, or `fleet`.
    pub of: String,
    /// Bucket width, seconds.
    pub step_secs: u64,
    /// Buckets, oldest first.
    pub points: Vec<SeriesPoint>,
}

fn ratios<'a>(samples: impl Iterator<Item = &'a (String, MetricSample)>) -> impl Iterator<Item = (&'a str, f64, f64)> {
    samples.filter_map(|(name, s)| match s {
        MetricSample::Ratio { num, den } => Some((name.as_str(), *num, *den)),
        _ => None,
    })
}

impl Coordinator {
    fn soft_state_here(&self) -> Result<(), OpError> {
        if self.consensus.status().is_leader() {
            Ok(())
        } else {
            Err(OpError::BadRequest("live series are held by the leader; ask it (drop ?stale)".into()))
        }
    }

    /// The live fleet view (leader).
    pub fn fleet_top(&self) -> Result<TopView, OpError> {
        self.soft_state_here()?;
        let hosts = self.consensus.store().hosts()?;
        let alerts_firing = self.consensus.store().firing_alerts()?.len();
        let now = SystemTime::now();
        let mono = Instant::now();
        let from = now.checked_sub(TOP_WINDOW).unwrap_or(SystemTime::UNIX_EPOCH);
        let fleet = self.fleet.lock().expect("fleet lock");
        let live = self.immune.lock().expect("immune lock");
        // Which ratio metric: error_rate if any host reports it, else the first one seen.
        let mut metric: Option<String> = None;
        for h in &hosts {
            if let Some(r) = live.series.last(&h.name) {
                for (name, _, _) in ratios(r.report.samples.iter()) {
                    if metric.is_none() || name == "error_rate" {
                        metric = Some(name.to_string());
                    }
                }
            }
        }
        let (mut fleet_num, mut fleet_den, mut fleet_rps) = (0.0, 0.0, 0.0);
        let mut rows = Vec::with_capacity(hosts.len());
        for h in &hosts {
            let beat = fleet.last(&h.name);
            let (mut num, mut den, mut span) = (0.0, 0.0, Duration::ZERO);
            if let Some(m) = &metric {
                for r in live.series.between(&h.name, from, now + Duration::from_millis(1)) {
                    for (name, n, d) in ratios(r.report.samples.iter()) {
                        if name == m {
                            num += n;
                            den += d;
                        }
                    }
                    span += r.report.span;
                }
            }
            let rps = (!span.is_zero()).then(|| den / span.as_secs_f64());
            fleet_num += num;
            fleet_den += den;
            fleet_rps += rps.unwrap_or(0.0);
            rows.push(TopRow {
                host: h.name.to_string(),
                state: fleet.state(&h.name, mono, self.config.down_after),
                release: beat.and_then(|b| b.release.current),
                cpu_percent: beat.map(|b| b.health.cpu_percent),
                mem_used_bytes: beat.map(|b| b.health.mem_used_bytes),
                mem_total_bytes: beat.map(|b| b.health.mem_total_bytes),
                disk_free_percent: beat.map(|b| crate::fleet::HealthPoint::of(b.wall, &b.health).disk_free_percent),
                requests_per_s: rps,
                error_rate: (den > 0.0).then(|| num / den),
            });
        }
        let ready = rows.iter().filter(|r| r.state == HostState::Ready).count();
        Ok(TopView {
            at: crate::views::rfc3339(now),
            metric,
            down: rows.len() - ready,
            ready,
            hosts: rows,
            requests_per_s: fleet_rps,
            error_rate: (fleet_den > 0.0).then(|| fleet_num / fleet_den),
            alerts_firing,
        })
    }

    /// Recent series of one host or the fleet, in buckets (leader).
    pub fn fleet_series(&self, q: &SeriesQuery) -> Result<SeriesView, OpError> {
        self.soft_state_here()?;
        let parse = |what: &str, v: &Option<String>, default: Duration| -> Result<Duration, OpError> {
            match v {
                None => Ok(default),
                Some(t) => {
                    fifty_shared::config::parse_duration(t).map_err(|e| OpError::BadRequest(format!("{what}: {e}")))
                }
            }
        };
        let since = parse("since", &q.since, Duration::from_secs(600))?;
        if since.is_zero() || since > crate::fleet::HISTORY_KEEP {
            return Err(OpError::BadRequest("since: between 1s and 1h (the leader keeps an hour)".into()));
        }
        let step = parse("step", &q.step, (since / 30).max(Duration::from_secs(2)))?.max(Duration::from_secs(1));
        if since.as_secs() / step.as_secs().max(1) > 3600 {
            return Err(OpError::BadRequest("step: too small for since (at most 3600 buckets)".into()));
        }
        let store = self.consensus.store();
        let hosts: Vec<HostName> = match &q.host {
            Some(name) => {
                let name = HostName::new(name).map_err(|e| OpError::BadRequest(format!("host: {e}")))?;
                if store.host(&name)?.is_none() {
                    return Err(OpError::NotFound(format!("no host named {name}; see `fifty hosts`")));
                }
                vec![name]
            }
            None => store.hosts()?.into_iter().map(|h| h.name).collect(),
        };
        let now = SystemTime::now();
        let from = now.checked_sub(since).unwrap_or(SystemTime::UNIX_EPOCH);
        let n = (since.as_secs_f64() / step.as_secs_f64()).ceil() as usize;
        let bucket = |at: SystemTime| {
            at.duration_since(from).ok().map(|d| (d.as_secs_f64() / step.as_secs_f64()) as usize).filter(|i| *i < n)
        };
        #[derive(Default, Clone)]
        struct Acc {
            hosts: std::collections::BTreeSet<usize>,
            cpu: (f64, usize),
            mem: u64,
            disk: Option<f64>,
            den_for_rps: f64,
            ratios: BTreeMap<String, (f64, f64)>,
        }
        let mut acc = vec![Acc::default(); n];
        let fleet = self.fleet.lock().expect("fleet lock");
        let live = self.immune.lock().expect("immune lock");
        for (hi, host) in hosts.iter().enumerate() {
            let mut seen_in = vec![false; n];
            for p in fleet.history(host) {
                let Some(i) = bucket(p.at) else { continue };
                let a = &mut acc[i];
                a.hosts.insert(hi);
                a.cpu.0 += p.cpu_percent as f64;
                a.cpu.1 += 1;
                if !seen_in[i] {
                    a.mem += p.mem_used_bytes; // one point per host per bucket counts for memory
                    seen_in[i] = true;
                }
                if p.disk_free_percent > 0.0 {
                    a.disk =
                        Some(a.disk.map_or(p.disk_free_percent as f64, |d: f64| d.min(p.disk_free_percent as f64)));
                }
            }
            let mut rate_metric: Option<String> = None;
            for r in live.series.between(host, from, now + Duration::from_millis(1)) {
                let Some(i) = bucket(r.at) else { continue };
                for (name, num, den) in ratios(r.report.samples.iter()) {
                    if q.metric.as_deref().is_some_and(|m| m != name) {
                        continue;
                    }
                    let e = acc[i].ratios.entry(name.to_string()).or_default();
                    e.0 += num;
                    e.1 += den;
                    if rate_metric.is_none() || name == "error_rate" {
                        rate_metric = Some(name.to_string());
                    }
                    if rate_metric.as_deref() == Some(name) {
                        acc[i].den_for_rps += den;
                    }
                }
            }
        }
        let points = acc
            .into_iter()
            .enumerate()
            .map(|(i, a)| SeriesPoint {
                at: crate::views::rfc3339(from + step * i as u32),
                hosts: a.hosts.len(),
                cpu_percent: (a.cpu.1 > 0).then(|| a.cpu.0 / a.cpu.1 as f64),
                mem_used_bytes: (a.cpu.1 > 0).then_some(a.mem),
                disk_free_percent: a.disk,
                requests_per_s: (!a.ratios.is_empty()).then(|| a.den_for_rps / step.as_secs_f64()),
                ratios: a.ratios.into_iter().filter(|(_, (_, d))| *d > 0.0).map(|(k, (nm, d))| (k, nm / d)).collect(),
            })
            .collect();
        Ok(SeriesView { of: q.host.clone().unwrap_or_else(|| "fleet".into()), step_secs: step.as_secs(), points })
    }
}
