//! `fifty immune`: the immune system's questions that are not about one rollout.

use std::fmt::Write as _;

use anyhow::Result;
use clap::Subcommand;

use super::output;
use crate::client::{Client, ClientOpts};
use crate::views::{SizeDecision, SizeView};

#[derive(Debug, Subcommand)]
pub enum ImmuneCommand {
    /// How long a bake needs, on the fleet's current traffic and history, to revert a regression
    /// of a given size and to pass a healthy release (the judge's own test, simulated on the
    /// measured rates).
    Size {
        /// The repository (its latest release's [immune] settings and hosts).
        #[arg(long)]
        repo: String,
        /// A ratio metric of that [immune] (default: the first).
        #[arg(long)]
        metric: Option<String>,
        /// The regression to catch, as a factor on the metric's rate (2.0: it doubles).
        #[arg(long, default_value_t = 2.0)]
        effect: f64,
        /// Hosts in the wave (default: the plan's first wave).
        #[arg(long)]
        canaries: Option<usize>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `fifty immune` command.
pub async fn run(opts: &ClientOpts, command: ImmuneCommand) -> Result<()> {
    match command {
        ImmuneCommand::Size { repo, metric, effect, canaries, json } => {
            let mut path = format!("/v1/immune/size?repo={}&effect={effect}", output::url_encode(&repo));
            if let Some(m) = &metric {
                let _ = write!(path, "&metric={}", output::url_encode(m));
            }
            if let Some(n) = canaries {
                let _ = write!(path, "&canaries={n}");
            }
            let view: SizeView = Client::from_opts(opts)?.get(&path).await?;
            output::print(json, &view, size_text)
        }
    }
}

fn duration(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s >= 90.0 => format!("{}m{:02}s", (s / 60.0).floor(), (s % 60.0).round()),
        Some(s) => format!("{s:.0}s"),
        None => "-".into(),
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn size_text(v: &SizeView) -> String {
    let decision = |what: &str, d: &SizeDecision| {
        format!(
            "  {what}: {} of waves within {} (median {}, 90% by {}); within max_bake {}: {}\n",
            pct(d.share),
            duration(Some(v.horizon_secs)),
            duration(d.median_secs),
            duration(d.p90_secs),
            duration(Some(v.max_bake_secs)),
            pct(d.within_max_bake),
        )
    };
    let mut out = format!(
        "{} of {} (release {}'s [immune]: alpha {}, min_effect +{:.0}%, pass_bound +{:.0}% at {:.0}%)\n",
        v.metric,
        v.repo,
        v.release,
        v.alpha,
        v.min_effect * 100.0,
        v.pass_bound * 100.0,
        v.pass_confidence * 100.0
    );
    let _ = writeln!(
        out,
        "fleet: {} hosts at {:.0} requests/s each, {} {:.2}% (hosts differ by {:.0}%, intervals burst by {:.0}%), {}s \
         reports, {} of history",
        v.hosts,
        v.requests_per_second,
        v.metric,
        v.rate * 100.0,
        v.host_cv * 100.0,
        v.burst_cv * 100.0,
        v.interval_secs,
        duration(Some(v.history_secs))
    );
    let _ = writeln!(out, "a wave of {} on the new release, {} left on the old:", v.canaries, v.hosts - v.canaries);
    out.push_str(&decision(&format!("×{} regression reverted", v.effect), &v.revert));
    out.push_str(&decision("healthy release passed by itself", &v.pass));
    let _ = writeln!(
        out,
        "({} simulated waves each of the judge's own test on these rates; {} of the healthy ones reverted)",
        v.waves,
        pct(v.false_reverts)
    );
    if v.pass.within_max_bake < 0.98 {
        let _ = writeln!(
            out,
            "to pass more healthy waves by themselves: a longer max_bake (90% pass by {}), more hosts in the wave \
             (--canaries), or a wider pass_bound",
            duration(v.pass.p90_secs)
        );
    }
    out
}
