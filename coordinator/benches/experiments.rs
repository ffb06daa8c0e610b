//! `cargo bench -p fifty --bench experiments`: the seeded simulations of `experiments::sim` at full
//! size, printed as the tables in `BENCHMARKS.md` ("A/B experiments"). No network, no clock: the
//! same seed prints the same numbers on any machine. Exits non-zero if daily peeking at A/A tests
//! rejects more often than alpha, or the sample-ratio check misses a biased split.

use std::process::ExitCode;
use std::time::Instant;

use fifty::experiments::analysis::Settings;
use fifty::experiments::sim::{run, Scenario};

fn main() -> ExitCode {
    let settings = Settings::default();
    let started = Instant::now();
    let mut ok = true;
    println!("settings: alpha {}, phi {}, SRM flagged at p < {}", settings.alpha, settings.phi, settings.srm_alpha);

    let aa = Scenario { base_rate: 0.10, lift: 0.0, variant_share: 0.5, looks: 14, units_per_look: 2_000 };
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
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
