//! Memory of the leader's monitoring soft state for a simulated fleet: `cargo bench -p fifty --bench
//! monitor_memory [-- HOSTS] [histogram] [every=SECONDS] [scale=N] [health]`. Fills the heartbeat health history (`fleet::Fleet`, 1 heartbeat/s,
//! kept one point per 2 s) and the metric reports (`immune::series::Series`, one report/s) of
//! HOSTS hosts (default 1,000) over one hour of simulated time, and prints the process's resident
//! memory (VmRSS) before and after. Two report shapes, one per run (a process, so freed memory
//! does not blur the next figure): one ratio metric (`error_rate`, as the sample shop), or with
//! `histogram` one ratio plus one 8-bucket latency histogram; with `health` the health history
//! alone (what monitoring adds to the leader's memory beside the immune system's reports). With
//! `scale=N` every count is N times larger (40·N requests a second per host instead of 40): whole
//! counts are stored as variable-length integers, so busier hosts' reports take a few more bytes.

use std::time::{Duration, Instant, SystemTime};

use fifty::fleet::{Beat, Fleet};
use fifty::immune::series::Series;
use fifty_shared::ids::HostName;
use fifty_shared::wire::{Health, MetricSample, MetricsReport};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

fn fill(hosts: usize, histogram: bool, health_only: bool, every: u64, scale: f64) -> (Fleet, Series, f64) {
    let names: Vec<HostName> = (0..hosts).map(|i| HostName::new(&format!("web-{i}")).expect("valid name")).collect();
    let before = rss_mib();
    let mut fleet = Fleet::default();
    let mut series = Series::default();
    let t0 = SystemTime::now() - Duration::from_secs(3600);
    for s in 0..3600u64 {
        let at = t0 + Duration::from_secs(s);
        for (i, host) in names.iter().enumerate() {
            let health = Health {
                cpu_percent: ((s + i as u64) % 100) as f32,
                load: [0.5, 0.4, 0.3],
                mem_used_bytes: 1 << 30,
                mem_total_bytes: 8 << 30,
                disk_free_bytes: 50 << 30,
                disk_total_bytes: 100 << 30,
                uptime: Duration::from_secs(s),
            };
            let beat = Beat {
                at: Instant::now(),
                wall: at,
                health,
                agent_version: "0.1.0".into(),
                release: Default::default(),
            };
            fleet.on_heartbeat(host, beat);
            if health_only || s % every != 0 {
                continue;
            }
            let mut samples = vec![("error_rate".to_string(), MetricSample::Ratio { num: scale, den: 40.0 * scale })];
            if histogram {
                samples.push((
                    "latency".to_string(),
                    MetricSample::Histogram {
                        bounds: vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
                        buckets: [1.0, 5.0, 20.0, 35.0, 38.0, 39.0, 40.0, 40.0].iter().map(|c| c * scale).collect(),
                        sum: 1.2 * scale,
                        count: 40.0 * scale,
                    },
                ));
            }
            let report =
                MetricsReport { release: 3, seq: s + 1, at, span: Duration::from_secs(every), samples, error: None };
            series.push(host, report, at);
        }
    }
    (fleet, series, before)
}

fn main() {
    let hosts: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1000);
    let histogram = std::env::args().any(|a| a == "histogram");
    let health_only = std::env::args().any(|a| a == "health");
    // `every=2`: one report every 2 s (the default `[immune] interval`); default one a second.
    let every: u64 =
        std::env::args().find_map(|a| a.strip_prefix("every=").and_then(|n| n.parse().ok())).unwrap_or(1).max(1);
    let scale: f64 =
        std::env::args().find_map(|a| a.strip_prefix("scale=").and_then(|n| n.parse().ok())).unwrap_or(1.0);
    {
        let started = Instant::now();
        let (fleet, series, before) = fill(hosts, histogram, health_only, every, scale);
        let after = rss_mib();
        println!(
            "{hosts} hosts, 1 h, reports every {every} s, counts x{scale}, {}: {} health points, {} reports held; VmRSS {:.1} → {:.1} MiB (+{:.1} MiB, {:.1} KiB/host); filled in {:.1}s",
            match (health_only, histogram) {
                (true, _) => "none (health history only)",
                (false, true) => "ratio + 8-bucket histogram",
                (false, false) => "one ratio metric",
            },
            fleet.history_len(),
            series.len(),
            before,
            after,
            after - before,
            (after - before) * 1024.0 / hosts as f64,
            started.elapsed().as_secs_f64()
        );
        drop((fleet, series));
    }
}
