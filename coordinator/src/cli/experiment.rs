//! `fifty experiment create|list|ramp|stop|show|delete`: A/B experiments through `/v1/experiments`.

use anyhow::Result;
use clap::Subcommand;

use super::output;
use super::{Client, ClientOpts};
use crate::experiments::view::{
    ComparisonView, CreateExperiment, ExperimentSummary, ExperimentView, RampExperiment, StopExperiment,
};

/// `fifty experiment ...`.
#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Define an experiment; agents of matching hosts serve it within a second or two.
    Create {
        /// Its name (a-z, 0-9, '_', '-').
        name: String,
        /// Variants and weights, the control first: control=50,new_checkout=50.
        #[arg(long)]
        variants: String,
        /// Hosts that serve it, by label: role=prod (default: every host).
        #[arg(long)]
        hosts: Option<String>,
        /// The event that counts as a conversion (its values make the value metric).
        #[arg(long, default_value = "conversion")]
        metric: String,
        /// Assignment salt (default: random); the same salt and unit give the same bucket.
        #[arg(long)]
        salt: Option<String>,
        /// Judge it only at this many scheduled looks (1-100), with a group-sequential test that
        /// spends all of alpha by the last: more power than looking at any time. Needs --look-every.
        #[arg(long, requires = "look_every")]
        looks: Option<u32>,
        /// Time between scheduled looks, e.g. 1d or 12h; the first is this long after creation.
        #[arg(long, requires = "looks")]
        look_every: Option<String>,
    },
    /// Every experiment.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the weights; only units of shrinking variants move, into growing ones.
    Ramp {
        /// The experiment.
        name: String,
        /// New weights for every variant: control=20,new_checkout=80.
        #[arg(long)]
        variants: String,
    },
    /// Stop it: every unit gets the winner (the control if none is named) from then on.
    Stop {
        /// The experiment.
        name: String,
        /// The variant everyone gets.
        #[arg(long)]
        winner: Option<String>,
    },
    /// Delete a stopped experiment with its counts; agents stop serving it (404 for it), so delete
    /// only what no code asks for any more.
    Delete {
        /// The experiment.
        name: String,
    },
    /// The result table: per variant exposures, conversions, lift with its interval, p-value.
    Show {
        /// The experiment.
        name: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `fifty experiment` verb.
pub async fn run(opts: &ClientOpts, command: ExperimentCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    match command {
        ExperimentCommand::Create { name, variants, hosts, metric, salt, looks, look_every } => {
            let req = CreateExperiment { name, variants, hosts, metric: Some(metric), salt, looks, look_every };
            let view: ExperimentView = client.post("/v1/experiments", &req).await?;
            print!("{}", show(&view));
        }
        ExperimentCommand::List { json } => {
            let list: Vec<ExperimentSummary> = client.get("/v1/experiments").await?;
            output::print(json, &list, |l| list_table(l))?;
        }
        ExperimentCommand::Ramp { name, variants } => {
            let view: ExperimentView =
                client.post(&format!("/v1/experiments/{name}/ramp"), &RampExperiment { variants }).await?;
            print!("{}", show(&view));
        }
        ExperimentCommand::Stop { name, winner } => {
            let view: ExperimentView =
                client.post(&format!("/v1/experiments/{name}/stop"), &StopExperiment { winner }).await?;
            print!("{}", show(&view));
        }
        ExperimentCommand::Delete { name } => {
            let _: serde_json::Value = client.delete(&format!("/v1/experiments/{name}")).await?;
            println!("Deleted experiment {name}; agents stop serving it within a few seconds.");
        }
        ExperimentCommand::Show { name, json } => {
            let view: ExperimentView = client.get(&format!("/v1/experiments/{name}")).await?;
            output::print(json, &view, show)?;
        }
    }
    Ok(())
}

fn list_table(list: &[ExperimentSummary]) -> String {
    if list.is_empty() {
        return "No experiments yet; define one with `fifty experiment create`.\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let state = match &e.serving {
                Some(v) => format!("{} → {v}", e.state),
                None => e.state.clone(),
            };
            let hosts = if e.hosts.is_empty() { "all".to_string() } else { e.hosts.clone() };
            vec![e.name.clone(), state, e.variants.clone(), hosts, e.metric.clone(), e.exposed.to_string()]
        })
        .collect();
    output::table(&["NAME", "STATE", "VARIANTS", "HOSTS", "METRIC", "EXPOSED"], &rows)
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// The lift with the intersection of every interval so far, and the running minimum p-value.
fn lift(c: &Option<ComparisonView>) -> (String, String) {
    match c {
        None => ("—".into(), "—".into()),
        Some(c) => {
            let [dlo, dhi] = c.diff_ci_intersection;
            let l = match (c.lift, c.lift_ci_intersection) {
                (Some(l), Some([lo, hi])) => format!("{} [{}, {}]", pct(l), pct(lo), pct(hi)),
                _ => format!("{:+.4} [{:+.4}, {:+.4}]", c.diff, dlo, dhi),
            };
            (l, format!("{:.4}", c.p_value_min))
        }
    }
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "—".into(), f)
}

/// The looks of a scheduled experiment, per variant.
fn looks_table(out: &mut String, v: &ExperimentView) {
    for r in &v.variants {
        let Some(s) = &r.scheduled_conversion else { continue };
        out.push_str(&format!("\nScheduled looks, {} against {}:\n", r.name, v.variants[0].name));
        let rows: Vec<Vec<String>> = s
            .looks
            .iter()
            .map(|l| {
                vec![
                    l.look.to_string(),
                    l.exposed.to_string(),
                    opt(l.diff, |d| format!("{:+.4}", d)),
                    opt(l.z, |z| format!("{z:+.2}")),
                    opt(l.bound, |b| format!("±{b:.2}")),
                    opt(l.nominal_p, |p| format!("{p:.2e}")),
                    opt(l.threshold, |p| format!("{p:.2e}")),
                    format!("{:.4}", l.alpha_spent),
                ]
            })
            .collect();
        out.push_str(&output::table(&["LOOK", "EXPOSED", "DIFF", "Z", "BOUND", "P", "NEEDED", "ALPHA SPENT"], &rows));
        match (s.crossed_at, s.lift_ci.or(s.diff_ci)) {
            (Some(k), Some([lo, hi])) => out.push_str(&format!(
                "Decided at look {k} ({}); intersection of the looks' intervals [{}, {}].\n",
                r.verdict,
                pct(lo),
                pct(hi)
            )),
            (None, Some([lo, hi])) => out.push_str(&format!(
                "No boundary reached yet; intersection of the looks' intervals [{}, {}].\n",
                pct(lo),
                pct(hi)
            )),
            _ => out.push_str("No look has tested yet.\n"),
        }
    }
}

/// The result table of `fifty experiment show` (also printed by `fifty demo`).
pub fn show(v: &ExperimentView) -> String {
    let mut out = String::new();
    let hosts = if v.hosts.is_empty() { "all hosts".to_string() } else { v.hosts.clone() };
    let state = match &v.serving {
        Some(s) => format!("stopped, everyone gets {s}"),
        None => v.state.clone(),
    };
    out.push_str(&format!("Experiment {} ({state}; {hosts}; metric {})\n\n", v.name, v.metric));
    let ci = format!("LIFT [{:.0}% CI]", (1.0 - v.alpha) * 100.0);
    let rows: Vec<Vec<String>> = v
        .variants
        .iter()
        .map(|r| {
            let (l, p) = lift(&r.conversion);
            vec![
                r.name.clone(),
                r.weight.to_string(),
                r.exposed.to_string(),
                r.converted.to_string(),
                format!("{:.2}%", r.rate * 100.0),
                l,
                p,
                r.verdict.clone(),
            ]
        })
        .collect();
    out.push_str(&output::table(&["VARIANT", "WEIGHT", "EXPOSED", "CONVERTED", "RATE", &ci, "P", "VERDICT"], &rows));
    let value_rows: Vec<Vec<String>> = v
        .variants
        .iter()
        .map(|r| {
            let (l, p) = lift(&r.value);
            vec![r.name.clone(), format!("{:.3}", r.value_mean), l, p]
        })
        .collect();
    if let Some(s) = &v.schedule {
        looks_table(&mut out, v);
        out.push_str(&format!(
            "{} of {} looks taken, one every {}{}. The verdict is the scheduled test's (group-sequential, \
             O'Brien-Fleming spending); the table above is the always-valid test's, for reference.\n",
            s.taken,
            s.looks,
            s.look_every,
            s.next_look_at.as_ref().map(|t| format!("; the next due at {t}")).unwrap_or_default()
        ));
    }
    out.push_str(&format!("\nValue of {} per exposed unit:\n", v.metric));
    out.push_str(&output::table(&["VARIANT", "MEAN", &ci, "P"], &value_rows));
    out.push('\n');
    match &v.srm {
        None => out.push_str("Sample ratio: no units yet.\n"),
        Some(s) if s.mismatch => out.push_str(&format!(
            "SAMPLE RATIO MISMATCH: χ² {:.2}, p {:.2e} < 0.001 — the split is not what was configured; do not trust \
             these results.\n",
            s.chi2, s.p_value
        )),
        Some(s) => {
            out.push_str(&format!("Sample ratio: χ² {:.2}, p {:.3} — matches the weights.\n", s.chi2, s.p_value))
        }
    }
    match &v.winner {
        Some(w) if v.schedule.is_some() => {
            out.push_str(&format!("Winner: {w} (a scheduled look crossed its boundary at level {}).\n", v.alpha))
        }
        Some(w) => out.push_str(&format!("Winner so far: {w} (always-valid p < {}).\n", v.alpha)),
        None => out.push_str("No significant winner.\n"),
    }
    out.push_str(&format!(
        "{} units, {} agent reports{}{}.\n",
        v.units,
        v.reports,
        v.last_report.as_ref().map(|t| format!(", the last at {t}")).unwrap_or_default(),
        if v.dropped > 0 {
            format!(", {} observations dropped at agents' memory cap", v.dropped)
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "P is the lowest always-valid p-value so far and the interval the intersection of every one so far (mSPRT): \
         both stay valid however often you look. {}\n",
        v.note
    ));
    out
}
