//! `fifty alerts`, `fifty alert rule add|list|remove`, `fifty alert ack|silence`, `fifty top`,
//! `fifty metrics`.

use std::fmt::Write;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use super::output;
use crate::alerts::live::{SeriesView, TopView};
use crate::alerts::ops::{AlertsView, Silence};
use crate::alerts::{percent, AlertView, RuleSpec, RuleView, Severity};
use crate::client::{Client, ClientOpts};

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Alert rules.
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// Acknowledge an alert (someone is on it).
    Ack {
        /// The alert's id, from `fifty alerts`.
        id: u64,
    },
    /// Send nothing for a rule's alerts for a while (they are still recorded).
    Silence {
        /// The rule's name or id.
        rule: String,
        /// How long, e.g. `1h`; `0s` lifts the silence.
        #[arg(long = "for", default_value = "1h")]
        for_: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add a rule.
    Add {
        /// A unique name, e.g. `web-down`.
        name: String,
        /// host_down, disk_free, cpu, error_rate, immune or divergence.
        #[arg(long)]
        kind: String,
        /// disk_free: percent free; cpu: percent; error_rate: a ratio (0.05) or a percentage (5%).
        #[arg(long)]
        threshold: Option<String>,
        /// How long the condition must hold before the alert fires, e.g. 5s, 2m (default 1m; immune 0s).
        #[arg(long = "for")]
        for_: Option<String>,
        /// error_rate: the service's ratio metric (fifty.toml [immune]); default error_rate.
        #[arg(long)]
        metric: Option<String>,
        /// error_rate: only the hosts with this label, key=value (default: the whole fleet).
        #[arg(long)]
        pool: Option<String>,
        /// warning (default) or critical.
        #[arg(long)]
        severity: Option<String>,
        /// Notify only this webhook (repeat for several; default: every webhook).
        #[arg(long = "webhook")]
        webhooks: Vec<u64>,
    },
    /// The rules.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a rule (its firing alerts resolve).
    Remove {
        /// The rule's name or id.
        rule: String,
    },
}

/// `fifty alerts`.
pub async fn list(opts: &ClientOpts, json: bool, limit: usize) -> Result<()> {
    let view: AlertsView = Client::from_opts(opts)?.get(&format!("/v1/alerts?limit={limit}")).await?;
    output::print(json, &view, alerts)
}

/// `fifty alert ...`.
pub async fn alert(opts: &ClientOpts, command: AlertCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    match command {
        AlertCommand::Rule {
            command: RuleCommand::Add { name, kind, threshold, for_, metric, pool, severity, webhooks },
        } => {
            let severity = match severity.as_deref() {
                None => None,
                Some("warning") => Some(Severity::Warning),
                Some("critical") => Some(Severity::Critical),
                Some(other) => anyhow::bail!("--severity {other:?}: use warning or critical"),
            };
            let spec = RuleSpec { name, kind, threshold, for_, metric, pool, severity, webhooks };
            let list: Vec<RuleView> = client.post("/v1/alerts/rules", &spec).await?;
            print!("{}", rules(&list));
            Ok(())
        }
        AlertCommand::Rule { command: RuleCommand::List { json } } => {
            let list: Vec<RuleView> = client.get("/v1/alerts/rules").await?;
            output::print(json, &list, |l| rules(l))
        }
        AlertCommand::Rule { command: RuleCommand::Remove { rule } } => {
            let list: Vec<RuleView> = client.delete(&format!("/v1/alerts/rules/{}", output::url_encode(&rule))).await?;
            print!("{}", rules(&list));
            Ok(())
        }
        AlertCommand::Ack { id } => {
            let view: AlertView = client.post(&format!("/v1/alerts/{id}/ack"), &serde_json::json!({})).await?;
            println!(
                "alert {} ({} {}) acknowledged by {}",
                view.id,
                view.rule_name,
                view.subject,
                view.acked_by.unwrap_or_default()
            );
            Ok(())
        }
        AlertCommand::Silence { rule, for_ } => {
            let path = format!("/v1/alerts/rules/{}/silence", output::url_encode(&rule));
            let list: Vec<RuleView> = client.post(&path, &Silence { for_ }).await?;
            print!("{}", rules(&list));
            Ok(())
        }
    }
}

/// `fifty top`: redraws every `every` on a terminal, prints once otherwise (or with `--once`).
pub async fn top(opts: &ClientOpts, once: bool, json: bool, every: Duration) -> Result<()> {
    use std::io::IsTerminal;
    let client = Client::from_opts(opts)?;
    let live = !once && !json && std::io::stdout().is_terminal();
    loop {
        let view: TopView = client.get("/v1/fleet/top").await?;
        if !live {
            return output::print(json, &view, top_text);
        }
        // Home, clear screen, draw.
        print!("\x1b[H\x1b[2J{}", top_text(&view));
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// `fifty metrics`.
pub async fn metrics(
    opts: &ClientOpts,
    host: Option<String>,
    metric: Option<String>,
    since: String,
    step: Option<String>,
    json: bool,
) -> Result<()> {
    let mut path = format!("/v1/fleet/series?since={}", output::url_encode(&since));
    if let Some(h) = &host {
        let _ = write!(path, "&host={}", output::url_encode(h));
    }
    if let Some(m) = &metric {
        let _ = write!(path, "&metric={}", output::url_encode(m));
    }
    if let Some(s) = &step {
        let _ = write!(path, "&step={}", output::url_encode(s));
    }
    let view: SeriesView = Client::from_opts(opts)?.get(&path).await?;
    output::print(json, &view, series_text)
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// The alerts, as a table.
pub fn alerts(v: &AlertsView) -> String {
    let mut out = String::new();
    let row = |a: &AlertView| {
        let mut state = a.state.clone();
        if a.acked_by.is_some() {
            state += " (acked)";
        }
        if a.silenced {
            state += " (silenced)";
        }
        vec![
            a.id.to_string(),
            state,
            a.severity.as_str().into(),
            a.rule_name.clone(),
            a.subject.clone(),
            a.fired_at.clone(),
            a.resolved_at.clone().unwrap_or_else(|| "-".into()),
            a.summary.clone(),
        ]
    };
    let header = ["ID", "STATE", "SEVERITY", "RULE", "SUBJECT", "FIRED", "RESOLVED", "SEEN"];
    if v.firing.is_empty() {
        out.push_str("No alert is firing.\n");
    } else {
        let _ = writeln!(out, "Firing:");
        out.push_str(&output::table(&header, &v.firing.iter().map(row).collect::<Vec<_>>()));
    }
    let resolved: Vec<_> = v.recent.iter().filter(|a| a.state == "resolved").map(row).collect();
    if !resolved.is_empty() {
        let _ = writeln!(out, "\nRecently resolved:");
        out.push_str(&output::table(&header, &resolved));
    }
    out
}

/// The rules, as a table.
pub fn rules(list: &[RuleView]) -> String {
    if list.is_empty() {
        return "No alert rules. Add one with `fifty alert rule add NAME --kind host_down --for 5m`.\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let hooks = if r.webhooks.is_empty() {
                "all".to_string()
            } else {
                r.webhooks.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            };
            vec![
                r.id.to_string(),
                r.name.clone(),
                r.condition.clone(),
                r.for_.clone(),
                r.severity.as_str().into(),
                hooks,
                r.silenced_until.clone().map(|u| format!("until {u}")).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(&["ID", "NAME", "CONDITION", "FOR", "SEVERITY", "WEBHOOKS", "SILENCED"], &rows)
}

/// `fifty top`'s screen.
pub fn top_text(v: &TopView) -> String {
    let rows: Vec<Vec<String>> = v
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                h.state.as_str().into(),
                opt(h.release, |r| r.to_string()),
                opt(h.cpu_percent, |c| format!("{c:.1}")),
                match (h.mem_used_bytes, h.mem_total_bytes) {
                    (Some(u), Some(t)) if t > 0 => format!("{}/{}", output::gib(u), output::gib(t)),
                    _ => "-".into(),
                },
                opt(h.disk_free_percent, |d| format!("{d:.0}")),
                opt(h.requests_per_s, |r| format!("{r:.1}")),
                opt(h.error_rate, percent),
            ]
        })
        .collect();
    let mut out = format!(
        "fifty top  {}  hosts {} ready, {} down  requests/s {:.1}  {} {}  alerts firing {}\n\n",
        v.at,
        v.ready,
        v.down,
        v.requests_per_s,
        v.metric.as_deref().unwrap_or("error rate"),
        opt(v.error_rate, percent),
        v.alerts_firing
    );
    out.push_str(&output::table(
        &["HOST", "STATE", "RELEASE", "CPU%", "MEM GiB", "DISK FREE%", "REQ/S", "ERRORS"],
        &rows,
    ));
    out
}

/// `fifty metrics`' table.
pub fn series_text(v: &SeriesView) -> String {
    let names: std::collections::BTreeSet<&String> = v.points.iter().flat_map(|p| p.ratios.keys()).collect();
    let mut header = vec!["TIME", "HOSTS", "CPU%", "MEM GiB", "DISK FREE%", "REQ/S"];
    header.extend(names.iter().map(|n| n.as_str()));
    let rows: Vec<Vec<String>> = v
        .points
        .iter()
        .filter(|p| p.hosts > 0 || !p.ratios.is_empty())
        .map(|p| {
            let mut row = vec![
                p.at.clone(),
                p.hosts.to_string(),
                opt(p.cpu_percent, |c| format!("{c:.1}")),
                opt(p.mem_used_bytes, output::gib),
                opt(p.disk_free_percent, |d| format!("{d:.0}")),
                opt(p.requests_per_s, |r| format!("{r:.1}")),
            ];
            row.extend(names.iter().map(|n| opt(p.ratios.get(*n).copied(), percent)));
            row
        })
        .collect();
    if rows.is_empty() {
        return format!("No data for {} in that window (the leader keeps the last hour).\n", v.of);
    }
    format!("{} every {}s\n{}", v.of, v.step_secs, output::table(&header, &rows))
}
