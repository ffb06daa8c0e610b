//! The immune system's proof by simulation: false reverts of healthy releases (A/A) and the power to
//! catch regressions, over many seeded waves of a 6-host fleet. Prints Markdown.
//!
//! Run: `nice cargo bench -p fifty --bench immune` (a few minutes on 2 cores). Every number below is
//! reproducible from the printed seed. `FIFTY_IMMUNE_SCALE=0.1` runs a tenth of the waves, for a quick look.

use std::time::{Duration, Instant};

use fifty::immune::analysis::{Budget, Settings};
use fifty::immune::sim::{run_many, Fleet, Regression, Scenario, Tally};

const SEED: u64 = 0x00F1_F7E5_EED5;
const AA_RUNS: usize = 50_000;
const STRESS_RUNS: usize = 20_000;
const POWER_RUNS: usize = 2_000;
const THREADS: usize = 2;

/// `runs` scaled by `FIFTY_IMMUNE_SCALE` (default 1).
fn scaled(runs: usize) -> usize {
    let scale = std::env::var("FIFTY_IMMUNE_SCALE").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(1.0);
    ((runs as f64 * scale).round() as usize).max(1)
}

fn scenario(fleet: &Fleet, canary: usize, regression: Regression, budget: Budget) -> Scenario {
    Scenario {
        fleet: fleet.clone(),
        canary_hosts: canary,
        baseline_hosts: 6 - canary,
        regression,
        settings: Settings::default(),
        budget,
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{} s", d.as_secs()))
}

fn main() {
    let started = Instant::now();
    let fleet = Fleet::default();
    let settings = Settings::default();
    let budget = Budget { metrics: 2, waves: 1 };
    let alpha_each = budget.alpha_each(settings.alpha);
    println!("# Immune system simulation\n");
    println!(
        "seed `{SEED:#x}`, {THREADS} threads; fleet of 6 hosts at {} req/s each, error rate {}, latency median {} ms \
         (log-sd {}), {} s scrapes, {} s bake.",
        fleet.requests_per_second,
        pct(fleet.error_rate),
        fleet.latency_median * 1000.0,
        fleet.latency_sigma,
        fleet.interval.as_secs(),
        fleet.bake.as_secs()
    );
    println!(
        "Noise: host error-rate effect CV {}, error bursts per host-interval CV {}, host latency effect log-sd {}, \
         host traffic CV {}, fleet-wide drift {} per interval (log random walk), traffic swing ±{}.",
        fleet.error_host_cv,
        fleet.error_burst_cv,
        fleet.latency_host_sd,
        fleet.traffic_host_cv,
        fleet.drift_sd,
        fleet.traffic_swing
    );
    println!(
        "Settings: alpha {} per rollout over {} metrics × {} wave (each monitor {:.4}), min_effect +{:.0}%, \
         pass_bound +{:.0}% at {:.0}%, mixture_scale {}, ratio_host_spread {}. Metrics: `error_rate` (ratio) and \
         `http_request_duration_seconds` (histogram, Prometheus default buckets). A wave is reverted on the first \
         `Fail` of either metric, checked after every scrape.\n",
        settings.alpha,
        budget.metrics,
        budget.waves,
        alpha_each,
        settings.min_effect * 100.0,
        settings.pass_bound * 100.0,
        settings.pass_confidence * 100.0,
        settings.mixture_scale,
        settings.ratio_host_spread
    );

    // A/A
    let stress =
        Fleet { error_host_cv: 0.3, error_burst_cv: 0.6, latency_host_sd: 0.1, drift_sd: 0.05, ..fleet.clone() };
    let quiet =
        Fleet { error_host_cv: 0.0, error_burst_cv: 0.0, latency_host_sd: 0.0, traffic_host_cv: 0.0, ..fleet.clone() };
    println!("## False reverts of healthy releases (A/A)\n");
    println!(
        "| fleet noise | canary + baseline | waves | false reverts | rate | 95% CI (Wilson) | held at end | promoted |"
    );
    println!("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |");
    let mut worst_upper: f64 = 0.0;
    let mut worst_rate: f64 = 0.0;
    let rows = [
        ("realistic", &fleet, scaled(AA_RUNS)),
        ("no host effects", &quiet, scaled(STRESS_RUNS)),
        ("stress: host error CV 0.3, bursts CV 0.6, host latency sd 0.1, drift 0.05", &stress, scaled(STRESS_RUNS)),
    ];
    for (seed_offset, (label, f, runs)) in rows.iter().enumerate() {
        for canary in [1, 4] {
            let t = Instant::now();
            let tally = run_many(
                &scenario(f, canary, Regression::None, budget),
                *runs,
                SEED + seed_offset as u64 * 10 + canary as u64,
                THREADS,
            );
            let (lo, hi) = tally.revert_interval();
            worst_upper = worst_upper.max(hi);
            worst_rate = worst_rate.max(tally.revert_rate());
            println!(
                "| {label} | {canary} + {} | {} | {} | {} | {} – {} | {} | {} |",
                6 - canary,
                tally.runs,
                tally.reverts(),
                pct(tally.revert_rate()),
                pct(lo),
                pct(hi),
                pct(tally.held as f64 / tally.runs as f64),
                pct(tally.promoted as f64 / tally.runs as f64),
            );
            for reason in tally.reasons.iter().take(2) {
                eprintln!("  A/A {label} {canary}+{}: reverted on {reason} ({:.1?})", 6 - canary, t.elapsed());
            }
        }
    }
    println!();

    // Power
    println!("## Power: regressions on the canary hosts ({} waves per cell)\n", scaled(POWER_RUNS));
    println!("| regression | canary + baseline | reverted | within 30 s | median time to revert | 90th percentile |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    let regressions = [
        ("error rate ×1.5", Regression::ErrorRate(1.5)),
        ("error rate ×2", Regression::ErrorRate(2.0)),
        ("error rate ×4", Regression::ErrorRate(4.0)),
        ("error rate ×10", Regression::ErrorRate(10.0)),
        ("latency +10%", Regression::Latency(1.1)),
        ("latency +25%", Regression::Latency(1.25)),
        ("latency +50%", Regression::Latency(1.5)),
    ];
    let mut target: Option<Tally> = None;
    for (i, (label, regression)) in regressions.iter().enumerate() {
        for canary in [1, 4] {
            let tally = run_many(
                &scenario(&fleet, canary, *regression, budget),
                scaled(POWER_RUNS),
                SEED + 1000 + 10 * i as u64 + canary as u64,
                THREADS,
            );
            println!(
                "| {label} | {canary} + {} | {} | {} | {} | {} |",
                6 - canary,
                pct(tally.revert_rate()),
                pct(tally.reverted_within(Duration::from_secs(30))),
                secs(tally.time_to_revert(0.5)),
                secs(tally.time_to_revert(0.9)),
            );
            if *regression == Regression::ErrorRate(10.0) && canary == 1 {
                target = Some(tally);
            }
        }
    }
    println!();

    // Targets
    println!("## Targets\n");
    println!(
        "- False reverts ≤ 1% (alpha = {}): worst observed rate {}, worst 95% upper bound {} → **{}**",
        settings.alpha,
        pct(worst_rate),
        pct(worst_upper),
        if worst_upper <= settings.alpha {
            "met"
        } else if worst_rate <= settings.alpha {
            "met (point estimate)"
        } else {
            "NOT met"
        }
    );
    if let Some(tally) = target {
        let within = tally.reverted_within(Duration::from_secs(30));
        println!(
            "- Error rate 0.5% → 5% on one canary at 100 req/s reverted within 30 s in ≥ 99% of waves: {} of {} ({}) → **{}**",
            (within * tally.runs as f64).round(),
            tally.runs,
            pct(within),
            if within >= 0.99 { "met" } else { "NOT met" }
        );
    }
    println!("\nwall time: {:.1?}", started.elapsed());
}
