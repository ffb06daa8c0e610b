//! Real-time alerting: replicated rules, replicated alerts, notifications through the webhooks
//! of `notify`.
//!
//! A [`Rule`] names a condition (host down, disk free, CPU, a fleet's or pool's error rate, an
//! immune-system decision), how long it must hold (`for`) and where its notifications go. The
//! leader's loop ([`run`]) reads the fleet's soft state every second, turns it into readings per
//! rule and subject, and hands them to the pure evaluator ([`eval`]), which decides
//! pending → firing → resolved with a hysteresis margin, so a value hovering at the threshold does
//! not flap. Firing and resolution are Raft entries (`Command::AlertFired`, `AlertResolved`), and
//! each writes its [`Notification`](crate::notify::Notification) in the same entry: one event is
//! sent once. Pending state is soft: a new leader starts it again.
//!
//! Architecture invariant: [`eval`] knows nothing of time sources, Raft or the fleet; it takes
//! readings and `now` and returns transitions.

pub mod eval;
pub mod live;
pub mod ops;
pub mod run;

use std::time::{Duration, SystemTime};

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// How bad an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Someone should look soon.
    Warning,
    /// Someone must look now; may open an incident.
    Critical,
}

impl Severity {
    /// As users read it.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a rule watches.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum Condition {
    /// A host sends no heartbeat (down after the coordinators' `down_after`). Subject: the host.
    HostDown,
    /// A host's free disk below `percent` of the disk. Subject: the host.
    DiskFree {
        /// Threshold, percent.
        below_percent: f64,
    },
    /// A host's CPU above `percent`. Subject: the host.
    Cpu {
        /// Threshold, percent.
        above_percent: f64,
    },
    /// A ratio metric of the service (`fifty.toml` `[immune]`, e.g. `error_rate`) pooled over the
    /// fleet or the hosts with a label, over the last [`eval::RATE_WINDOW`], above `above`.
    ErrorRate {
        /// The metric's name.
        metric: String,
        /// Threshold, as a ratio (0.05 = 5%).
        above: f64,
        /// Only hosts with this label (`key`, `value`); None: the whole fleet.
        pool: Option<(String, String)>,
    },
    /// Any immune-system decision (a revert, or a wave held as inconclusive). Subject: the
    /// incident or the rollout.
    Immune,
    /// The last consistency check (`fifty cluster check`, or the leader's own every
    /// `consistency_check_interval`) found coordinators whose state differs from the leader's at
    /// the same log index. Subject: `coordinators`. (State version 2.)
    Divergence,
}

impl Condition {
    /// The kind's name, as the CLI and config write it.
    pub fn kind(&self) -> &'static str {
        match self {
            Condition::HostDown => "host_down",
            Condition::DiskFree { .. } => "disk_free",
            Condition::Cpu { .. } => "cpu",
            Condition::ErrorRate { .. } => "error_rate",
            Condition::Immune => "immune",
            Condition::Divergence => "divergence",
        }
    }

    /// One line: what fires.
    pub fn describe(&self) -> String {
        match self {
            Condition::HostDown => "host down".into(),
            Condition::DiskFree { below_percent } => format!("disk free below {below_percent}%"),
            Condition::Cpu { above_percent } => format!("CPU above {above_percent}%"),
            Condition::ErrorRate { metric, above, pool } => {
                let on = match pool {
                    Some((k, v)) => format!("pool {k}={v}"),
                    None => "fleet".into(),
                };
                format!("{on} {metric} above {}", percent(*above))
            }
            Condition::Immune => "immune-system revert or hold".into(),
            Condition::Divergence => "coordinators' states differ".into(),
        }
    }
}

/// A ratio as a percentage, e.g. `4.2%`.
pub fn percent(ratio: f64) -> String {
    let text = format!("{:.3}", ratio * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// An alert rule (replicated).
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Rule {
    /// Its id, from 1 (assigned when it is added).
    pub id: u64,
    /// Its name, unique.
    pub name: String,
    /// What it watches.
    pub condition: Condition,
    /// How long the condition must hold before the alert fires (and be clear before it resolves).
    pub for_: Duration,
    /// How bad.
    pub severity: Severity,
    /// Webhook ids its notifications go to; empty: every webhook.
    pub webhooks: Vec<u64>,
    /// Notifications are not sent until then.
    pub silenced_until: Option<SystemTime>,
    /// When and by whom it was added.
    pub added: (SystemTime, String),
}

impl Rule {
    /// How long the condition must be clear before a firing alert resolves.
    pub fn resolve_after(&self) -> Duration {
        self.for_.clamp(eval::MIN_RESOLVE, eval::MAX_RESOLVE)
    }

    /// Whether notifications are held at `at`.
    pub fn silenced(&self, at: SystemTime) -> bool {
        self.silenced_until.is_some_and(|u| at < u)
    }
}

/// A rule as people write it (API JSON, `[[alert.rule]]` in the coordinator config).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name.
    pub name: String,
    /// `host_down`, `disk_free`, `cpu`, `error_rate` or `immune`.
    pub kind: String,
    /// `disk_free`: percent; `cpu`: percent; `error_rate`: a ratio (0.05) or a percentage ("5%").
    #[serde(default)]
    pub threshold: Option<String>,
    /// How long the condition must hold, e.g. `"5s"`, `"2m"` (default 0s for `immune`, 1m otherwise).
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    /// `error_rate`: the `[immune]` ratio metric (default `error_rate`).
    #[serde(default)]
    pub metric: Option<String>,
    /// `error_rate`: only hosts with this label, `key=value`.
    #[serde(default)]
    pub pool: Option<String>,
    /// `warning` (default) or `critical`.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Webhook ids; empty or absent: every webhook.
    #[serde(default)]
    pub webhooks: Vec<u64>,
}

/// Longest rule name.
pub const MAX_NAME: usize = 100;

impl RuleSpec {
    /// Checks the spec; the error names the field and why.
    pub fn to_rule(&self, by: &str, at: SystemTime) -> Result<Rule, String> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > MAX_NAME || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "name {:?}: a rule needs a name of 1 to {MAX_NAME} characters without spaces",
                self.name
            ));
        }
        let threshold = |what: &str, max: f64, ratio: bool| -> Result<f64, String> {
            let Some(text) = self.threshold.as_deref() else {
                return Err(format!("threshold: a {} rule needs a threshold ({what})", self.kind));
            };
            let t = text.trim();
            let value = match t.strip_suffix('%') {
                Some(p) if ratio => p.trim().parse::<f64>().map(|v| v / 100.0),
                Some(p) => p.trim().parse::<f64>(),
                None => t.parse::<f64>(),
            }
            .map_err(|_| format!("threshold {text:?} is not a number ({what})"))?;
            if !value.is_finite() || value <= 0.0 || value > max {
                return Err(format!("threshold {text:?} is out of range ({what})"));
            }
            Ok(value)
        };
        let condition = match self.kind.as_str() {
            "host_down" => Condition::HostDown,
            "disk_free" => {
                Condition::DiskFree { below_percent: threshold("percent free, above 0 and at most 100", 100.0, false)? }
            }
            "cpu" => Condition::Cpu { above_percent: threshold("percent, above 0 and at most 100", 100.0, false)? },
            "error_rate" => {
                let metric = self.metric.clone().unwrap_or_else(|| "error_rate".into());
                if metric.is_empty() || !metric.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    return Err(format!("metric {metric:?}: not a metric name (letters, digits, _ and :)"));
                }
                let pool = match self.pool.as_deref() {
                    None | Some("") => None,
                    Some(p) => match p.split_once('=') {
                        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                            Some((k.trim().to_string(), v.trim().to_string()))
                        }
                        _ => return Err(format!("pool {p:?}: write a host label as key=value, e.g. role=prod")),
                    },
                };
                Condition::ErrorRate {
                    metric,
                    above: threshold("a ratio like 0.05 or 5%, above 0 and at most 1", 1.0, true)?,
                    pool,
                }
            }
            "immune" => Condition::Immune,
            "divergence" => Condition::Divergence,
            other => {
                return Err(format!("kind {other:?}: use host_down, disk_free, cpu, error_rate, immune or divergence"));
            }
        };
        if !matches!(condition, Condition::ErrorRate { .. }) && (self.metric.is_some() || self.pool.is_some()) {
            return Err(format!("metric/pool: only error_rate rules take them, not {}", self.kind));
        }
        if matches!(condition, Condition::HostDown | Condition::Immune | Condition::Divergence)
            && self.threshold.is_some()
        {
            return Err(format!("threshold: a {} rule takes none", self.kind));
        }
        let default_for = match condition {
            Condition::Immune | Condition::Divergence => Duration::ZERO,
            _ => Duration::from_secs(60),
        };
        let for_ = match self.for_.as_deref() {
            None => default_for,
            Some(text) => fifty_shared::config::parse_duration(text).map_err(|e| format!("for: {e}"))?,
        };
        if for_ > Duration::from_secs(24 * 3600) {
            return Err(format!("for {:?}: at most 24h", self.for_.as_deref().unwrap_or_default()));
        }
        let severity = self.severity.unwrap_or(Severity::Warning);
        Ok(Rule {
            id: 0,
            name: name.to_string(),
            condition,
            for_,
            severity,
            webhooks: self.webhooks.clone(),
            silenced_until: None,
            added: (at, by.to_string()),
        })
    }
}

/// One alert: a rule's condition held for one subject (replicated, kept after it resolves).
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct AlertRecord {
    /// Its id, from 1 (assigned when it fires).
    pub id: u64,
    /// The rule.
    pub rule: u64,
    /// The rule's name then.
    pub rule_name: String,
    /// What it is about: a host, `fleet`, `pool role=prod`, `incident 3`, `rollout 4`.
    pub subject: String,
    /// How bad.
    pub severity: Severity,
    /// What was seen when it fired.
    pub summary: String,
    /// When the condition began (pending since).
    pub since: SystemTime,
    /// When it fired.
    pub fired_at: SystemTime,
    /// When it resolved, and what was seen then.
    pub resolved: Option<(SystemTime, String)>,
    /// Who acknowledged it, and when.
    pub acked: Option<(SystemTime, String)>,
    /// Its rule was silenced when it fired: nothing was sent.
    pub silenced: bool,
    /// The notifications sent for it (firing, resolution).
    pub notifications: Vec<u64>,
    /// The incident it is about (immune-system alerts).
    pub incident: Option<u64>,
}

/// An alert as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    /// Id.
    pub id: u64,
    /// `firing` or `resolved`.
    pub state: String,
    /// The rule's id.
    pub rule: u64,
    /// The rule's name.
    pub rule_name: String,
    /// What it is about.
    pub subject: String,
    /// How bad.
    pub severity: Severity,
    /// What was seen when it fired.
    pub summary: String,
    /// Pending since (RFC 3339).
    pub since: String,
    /// Fired at.
    pub fired_at: String,
    /// Resolved at.
    pub resolved_at: Option<String>,
    /// What was seen when it resolved.
    pub resolved_summary: Option<String>,
    /// Acknowledged by.
    pub acked_by: Option<String>,
    /// Nothing was sent (the rule was silenced).
    pub silenced: bool,
    /// Notification ids.
    pub notifications: Vec<u64>,
    /// The incident it opened.
    pub incident: Option<u64>,
}

impl From<&AlertRecord> for AlertView {
    fn from(a: &AlertRecord) -> Self {
        let rfc = crate::views::rfc3339;
        AlertView {
            id: a.id,
            state: if a.resolved.is_some() { "resolved" } else { "firing" }.into(),
            rule: a.rule,
            rule_name: a.rule_name.clone(),
            subject: a.subject.clone(),
            severity: a.severity,
            summary: a.summary.clone(),
            since: rfc(a.since),
            fired_at: rfc(a.fired_at),
            resolved_at: a.resolved.as_ref().map(|(t, _)| rfc(*t)),
            resolved_summary: a.resolved.as_ref().map(|(_, s)| s.clone()),
            acked_by: a.acked.as_ref().map(|(_, by)| by.clone()),
            silenced: a.silenced,
            notifications: a.notifications.clone(),
            incident: a.incident,
        }
    }
}

/// A rule as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Kind (`host_down`, ...).
    pub kind: String,
    /// What fires, in words.
    pub condition: String,
    /// How long it must hold.
    #[serde(rename = "for")]
    pub for_: String,
    /// How bad.
    pub severity: Severity,
    /// Webhook ids (empty: all).
    pub webhooks: Vec<u64>,
    /// Silenced until (RFC 3339).
    pub silenced_until: Option<String>,
    /// Added by.
    pub added_by: String,
}

impl From<&Rule> for RuleView {
    fn from(r: &Rule) -> Self {
        RuleView {
            id: r.id,
            name: r.name.clone(),
            kind: r.condition.kind().into(),
            condition: r.condition.describe(),
            for_: humantime::format_duration(r.for_).to_string(),
            severity: r.severity,
            webhooks: r.webhooks.clone(),
            silenced_until: r.silenced_until.filter(|u| *u > SystemTime::now()).map(crate::views::rfc3339),
            added_by: r.added.1.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> RuleSpec {
        RuleSpec { name: "r".into(), kind: kind.into(), ..Default::default() }
    }

    #[test]
    fn rules_are_checked_and_errors_name_the_field() {
        let at = SystemTime::UNIX_EPOCH;
        let down = RuleSpec { for_: Some("5s".into()), ..spec("host_down") }.to_rule("admin", at).unwrap();
        assert_eq!((down.condition.clone(), down.for_), (Condition::HostDown, Duration::from_secs(5)));
        let rate = RuleSpec { threshold: Some("5%".into()), pool: Some("role=prod".into()), ..spec("error_rate") };
        let rate = rate.to_rule("admin", at).unwrap();
        assert_eq!(
            rate.condition,
            Condition::ErrorRate {
                metric: "error_rate".into(),
                above: 0.05,
                pool: Some(("role".into(), "prod".into()))
            }
        );
        assert_eq!(rate.condition.describe(), "pool role=prod error_rate above 5%");
        let err = |s: RuleSpec| s.to_rule("admin", at).unwrap_err();
        assert!(err(spec("cpu")).starts_with("threshold:"), "{}", err(spec("cpu")));
        assert!(err(RuleSpec { threshold: Some("150".into()), ..spec("cpu") }).contains("out of range"));
        assert!(err(RuleSpec { threshold: Some("lots".into()), ..spec("disk_free") }).contains("not a number"));
        assert!(err(spec("memory")).starts_with("kind \"memory\""));
        assert!(err(RuleSpec { for_: Some("soon".into()), ..spec("host_down") }).starts_with("for:"));
        assert!(err(RuleSpec { pool: Some("prod".into()), threshold: Some("0.1".into()), ..spec("error_rate") })
            .starts_with("pool"));
        assert!(err(RuleSpec { name: "two words".into(), ..spec("host_down") }).starts_with("name"));
        assert!(err(RuleSpec { threshold: Some("1".into()), ..spec("host_down") }).starts_with("threshold:"));
    }

    /// A divergence rule takes no threshold, fires at once by default, and is a newer kind of
    /// rule: proposed only once every voter understands it.
    #[test]
    fn a_divergence_rule_is_a_state_version_2_rule() {
        let at = SystemTime::UNIX_EPOCH;
        let rule = spec("divergence").to_rule("admin", at).unwrap();
        assert_eq!((rule.condition.clone(), rule.for_), (Condition::Divergence, Duration::ZERO));
        assert_eq!(crate::state::Command::AddAlertRule { rule }.since(), 2);
        let refused = RuleSpec { threshold: Some("1".into()), ..spec("divergence") }.to_rule("admin", at).unwrap_err();
        assert!(refused.starts_with("threshold:"), "{refused}");
        let host_down = spec("host_down").to_rule("admin", at).unwrap();
        assert_eq!(crate::state::Command::AddAlertRule { rule: host_down }.since(), 1);
    }
}
