//! `cargo bench -p fifty --bench experiments`: the seeded simulations of `experiments::sim` at full
//! size, printed as the tables in `BENCHMARKS.md` ("A/B experiments"). No network, no clock: the
//! same seed prints the same numbers on any machine. Exits non-zero if daily peeking at A/A tests
//! rejects more often than alpha, or the sample-ratio check misses a biased split, or scheduled
//! looks miss their targets.
//!
//! `cargo bench -p fifty --bench experiments -- scheduled N` runs only the scheduled-looks section
//! (issue 16's targets) with seed set N (1, 2, 3, ...).

use std::process::ExitCode;
use std::time::Instant;

use fifty::experiments::analysis::Settings;
use fifty::experiments::sim::{run, run_parallel, Scenario};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "scheduled") {
        let set = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(1);
        return if scheduled(set) { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    if let Some(i) = args.iter().position(|a| a == "diagnose") {
        let set = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(1);
        let n = args.get(i + 2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
        diagnose(set, n);
        return ExitCode::SUCCESS;
    }
    let settings = Settings::default();
    let started = Instant::now();
    let mut ok = true;
    println!("settings: alpha {}, phi {}, SRM flagged at p < {}", settings.alpha, settings.phi, settings.srm_alpha);

    let aa =
        Scenario { base_rate: 0.10, lift: 0.0, variant_share: 0.5, looks: 14, units_per_look: 2_000, scheduled: false };
    let n = 10_000;
    let o = run(1, n, &aa, &settings);
    println!("\n### A/A: {n} experiments, 14 daily looks, 2,000 units a day (28,000 in all), base rate 10%\n");
    println!("| test | experiments rejected at any look | rate |");
    println!("| --- | ---: | ---: |");
    println!(
        "| conversion, always-valid (mSPRT) | {} | {:.4} |",
        o.conversion_rejected,
        o.share(o.conversion_rejected)
    );
    println!("| value per unit, always-valid (mSPRT) | {} | {:.4} |", o.value_rejected, o.share(o.value_rejected));
    println!(
        "| conversion, fixed-horizon z-test peeked daily (for contrast) | {} | {:.4} |",
        o.naive_rejected,
        o.share(o.naive_rejected)
    );
    println!("| sample-ratio check flagged at the last look | {} | {:.4} |", o.srm_flagged, o.share(o.srm_flagged));
    if o.share(o.conversion_rejected) > settings.alpha || o.share(o.value_rejected) > settings.alpha {
        eprintln!("FAIL: the A/A false positive rate exceeds alpha");
        ok = false;
    }

    println!("\n### Sample-ratio mismatch: 1,000 experiments each, 28,000 units, configured 50/50\n");
    println!("| real share of the variant | flagged (p < 0.001) |");
    println!("| ---: | ---: |");
    for (i, share) in [0.5, 0.51, 0.52, 0.55].into_iter().enumerate() {
        let o = run(100 + i as u64, 1_000, &Scenario { variant_share: share, ..aa }, &settings);
        println!("| {share:.2} | {:.3} |", o.share(o.srm_flagged));
        if share >= 0.52 && o.share(o.srm_flagged) < 0.95 {
            eprintln!("FAIL: a {share} split was not caught");
            ok = false;
        }
    }

    println!("\n### Power: share of experiments judged a win by the last of 14 daily looks, base rate 10%\n");
    println!("| relative lift | units per arm | experiments | wins | fixed-horizon z-test, one look at the end |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let cells: [(f64, &[u64]); 2] =
        [(0.05, &[50_000, 100_000, 200_000, 400_000]), (0.10, &[12_500, 25_000, 50_000, 100_000])];
    for (lift, sizes) in cells {
        for (j, &per_arm) in sizes.iter().enumerate() {
            let experiments = 400;
            let scenario = Scenario { lift, units_per_look: per_arm * 2 / 14, ..aa };
            let o = run(1_000 + (lift * 100.0) as u64 * 10 + j as u64, experiments, &scenario, &settings);
            let once = Scenario { lift, looks: 1, units_per_look: per_arm * 2, ..aa };
            let f = run(2_000 + (lift * 100.0) as u64 * 10 + j as u64, experiments, &once, &settings);
            println!(
                "| +{:.0}% | {per_arm} | {experiments} | {:.3} | {:.3} |",
                lift * 100.0,
                o.share(o.wins),
                f.share(f.naive_rejected)
            );
        }
    }
    println!("\n(ran in {:.1} s)", started.elapsed().as_secs_f64());
    ok &= scheduled(1);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Issue 16's targets for scheduled looks: 14 daily looks, 100,000 units an arm in all, base rate
/// 10%: A/A false positives ≤ alpha (5%), power at +5% ≥ 90%. Seed set `set` (each set is one
/// run; the target is met only if every run meets it).
fn scheduled(set: u64) -> bool {
    let settings = Settings::default();
    let started = Instant::now();
    let mut ok = true;
    let per_arm = 100_000u64;
    let base = Scenario {
        base_rate: 0.10,
        lift: 0.0,
        variant_share: 0.5,
        looks: 14,
        // At least 100,000 an arm over the 14 looks.
        units_per_look: (per_arm * 2).div_ceil(14),
        scheduled: true,
    };
    println!(
        "\n### Scheduled looks, seed set {set}: 14 daily looks, {} units a day ({} an arm in all), base rate 10%\n",
        base.units_per_look,
        base.units_per_look * 14 / 2
    );
    println!("| experiments | lift | test | rejected (wins) | rate (wins with a lift) | Wilson 95% |");
    println!("| ---: | ---: | --- | ---: | ---: | --- |");
    let row = |n: u64, lift: f64, test: &str, k: u64, wins: Option<u64>, o: &fifty::experiments::sim::Outcome| {
        let (lo, hi) = o.wilson(wins.unwrap_or(k));
        let count = match wins {
            Some(w) => format!("{k} ({w})"),
            None => k.to_string(),
        };
        println!(
            "| {n} | +{:.0}% | {test} | {count} | {:.4} | {:.4}-{:.4} |",
            lift * 100.0,
            o.share(wins.unwrap_or(k)),
            lo,
            hi
        );
    };
    let n = 10_000;
    let o = run(10_000 * set + 1, n, &base, &settings);
    row(n, 0.0, "group-sequential, conversion", o.scheduled_rejected, None, &o);
    row(n, 0.0, "group-sequential, value", o.scheduled_value_rejected, None, &o);
    row(n, 0.0, "always-valid mSPRT, conversion", o.conversion_rejected, None, &o);
    // The same experiments and boundaries with other variances in z (diagnosis): with the true
    // one nothing is estimated, so what it rejects is the design's own rate on these data.
    row(n, 0.0, "(same boundaries, z with the pooled variance)", o.scheduled_pooled_rejected, None, &o);
    row(n, 0.0, "(same boundaries, z with the true variance)", o.scheduled_known_rejected, None, &o);
    println!("\nshipped and true-variance z disagree in {} of {n} A/A experiments", o.scheduled_known_discordant);
    let (lo, _) = o.wilson(o.scheduled_rejected);
    if lo > settings.alpha {
        eprintln!("FAIL: scheduled A/A false positives above alpha beyond chance");
        ok = false;
    }
    let n = 2_000;
    let lifted = Scenario { lift: 0.05, ..base };
    let o = run(10_000 * set + 2, n, &lifted, &settings);
    row(n, 0.05, "group-sequential, conversion", o.scheduled_rejected, Some(o.scheduled_wins), &o);
    row(n, 0.05, "always-valid mSPRT, conversion", o.conversion_rejected, Some(o.wins), &o);
    if o.share(o.scheduled_wins) < 0.90 {
        eprintln!("FAIL: power at +5% below 90%");
        ok = false;
    }
    println!("\n(seed set {set} ran in {:.1} s)", started.elapsed().as_secs_f64());
    ok
}

/// Where scheduled looks' A/A false positives come from: the same simulated experiments judged by
/// the shipped test and by the same boundaries with z from the variance pooled under no difference
/// and from the true variance (no estimate at all), in a large and a small experiment.
fn diagnose(set: u64, n: u64) {
    let settings = Settings::default();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get() as u64);
    println!("\n### Scheduled looks, A/A diagnosis, seed set {set}, {n} experiments each, {threads} threads\n");
    println!("| units a day | base rate | shipped | pooled variance | true variance | shipped vs true: discordant |");
    println!("| ---: | ---: | --- | --- | --- | ---: |");
    for (units, rate) in [(14_286u64, 0.10), (1_000, 0.10), (300, 0.02), (100, 0.05)] {
        let started = Instant::now();
        let s = Scenario {
            base_rate: rate,
            lift: 0.0,
            variant_share: 0.5,
            looks: 14,
            units_per_look: units,
            scheduled: true,
        };
        let o = run_parallel(100 * set + 3, n, threads, &s, &settings);
        let cell = |k: u64| {
            let (lo, hi) = o.wilson(k);
            format!("{k} = {:.3}% ({:.3}-{:.3}%)", 100.0 * o.share(k), 100.0 * lo, 100.0 * hi)
        };
        println!(
            "| {units} | {rate} | {} | {} | {} | {} |",
            cell(o.scheduled_rejected),
            cell(o.scheduled_pooled_rejected),
            cell(o.scheduled_known_rejected),
            o.scheduled_known_discordant
        );
        eprintln!("({units} a day: {:.1} s)", started.elapsed().as_secs_f64());
    }
}
