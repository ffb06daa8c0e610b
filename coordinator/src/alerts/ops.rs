//! Alerts in the state machine (deterministic, called from `Machine::apply`) and the
//! coordinator's operations behind the API.

use std::time::{Duration, SystemTime};

use super::{AlertRecord, AlertView, Rule, RuleSpec, RuleView};
use crate::coordinator::{Coordinator, OpError};
use crate::notify::Notification;
use crate::state::{Applied, ApplyResult, Command, Rejection};
use crate::store::{Batch, Store};

/// `Command::AddAlertRule`.
pub fn add_rule(store: &Store, rule: &Rule, batch: &mut Batch) -> ApplyResult {
    if let Some(same) = store.alert_rules()?.into_iter().find(|r| r.name == rule.name) {
        return Ok(Err(Rejection::Alert(format!("name {:?}: rule {} already has it", rule.name, same.id))));
    }
    for id in &rule.webhooks {
        if store.webhook(*id)?.is_none() {
            return Ok(Err(Rejection::UnknownWebhook(*id)));
        }
    }
    let mut counters = store.counters()?;
    counters.last_alert_rule += 1;
    let rule = Rule { id: counters.last_alert_rule, ..rule.clone() };
    batch.put_counters(&counters);
    batch.put_alert_rule(&rule);
    Ok(Ok(Applied::Done))
}

fn no_rule(id: u64) -> Rejection {
    Rejection::UnknownAlert(format!("no alert rule {id}; see `fifty alert rule list`"))
}

/// `Command::RemoveAlertRule`.
pub fn remove_rule(store: &Store, id: u64, batch: &mut Batch) -> ApplyResult {
    if store.alert_rule(id)?.is_none() {
        return Ok(Err(no_rule(id)));
    }
    batch.remove_alert_rule(id);
    Ok(Ok(Applied::Done))
}

/// `Command::SilenceAlertRule`.
pub fn silence_rule(store: &Store, id: u64, until: Option<SystemTime>, batch: &mut Batch) -> ApplyResult {
    let Some(mut rule) = store.alert_rule(id)? else {
        return Ok(Err(no_rule(id)));
    };
    rule.silenced_until = until;
    batch.put_alert_rule(&rule);
    Ok(Ok(Applied::Done))
}

/// `Command::AlertFired`: refused if the rule is gone or already has a firing alert for the
/// subject, so one event is recorded, and notified, once.
pub fn fired(store: &Store, alert: &AlertRecord, batch: &mut Batch) -> ApplyResult {
    let Some(rule) = store.alert_rule(alert.rule)? else {
        return Ok(Err(no_rule(alert.rule)));
    };
    if let Some(open) = store.firing_alerts()?.into_iter().find(|a| a.rule == alert.rule && a.subject == alert.subject)
    {
        return Ok(Err(Rejection::Alert(format!(
            "alert {} of rule {} is already firing for {}",
            open.id, rule.name, open.subject
        ))));
    }
    let mut counters = store.counters()?;
    counters.last_alert += 1;
    let mut alert = AlertRecord { id: counters.last_alert, ..alert.clone() };
    alert.silenced = rule.silenced(alert.fired_at);
    // A critical alert that is not already about an incident opens one (Five Whys).
    if alert.severity == super::Severity::Critical && alert.incident.is_none() {
        counters.last_incident += 1;
        let mut incident = crate::incidents::IncidentRecord::of_alert(
            alert.id,
            format!("{} firing: {}", rule.name, alert.subject),
            format!("{} ({}): {}", rule.condition.describe(), alert.subject, alert.summary),
            alert.fired_at,
        );
        incident.id = counters.last_incident;
        alert.incident = Some(incident.id);
        batch.put_incident(&incident);
    }
    if !alert.silenced {
        let hooks = store.webhooks()?;
        let to: Vec<(u64, bool)> = hooks
            .iter()
            .filter(|h| rule.webhooks.is_empty() || rule.webhooks.contains(&h.id))
            .map(|h| (h.id, false))
            .collect();
        counters.last_notification += 1;
        let n = Notification {
            id: counters.last_notification,
            kind: "alert.firing".into(),
            title: format!("[{}] {} firing: {}", alert.severity.as_str(), rule.name, alert.subject),
            text: format!(
                "{} ({} for {}): {}. Alert {}: `fifty alerts`, `fifty alert ack {}`.",
                rule.condition.describe(),
                alert.subject,
                humantime::format_duration(rule.for_),
                alert.summary,
                alert.id,
                alert.id
            ),
            repo: None,
            incident: alert.incident,
            at: Some(alert.fired_at),
            to,
        };
        alert.notifications.push(n.id);
        batch.put_notification(&n);
    }
    batch.put_counters(&counters);
    batch.put_alert(&alert);
    Ok(Ok(Applied::Done))
}

/// `Command::AlertResolved`: notifies the webhooks the firing went to.
pub fn resolved(store: &Store, id: u64, summary: &str, at: SystemTime, batch: &mut Batch) -> ApplyResult {
    let Some(mut alert) = store.alert(id)? else {
        return Ok(Err(Rejection::UnknownAlert(format!("no alert {id}; see `fifty alerts`"))));
    };
    if alert.resolved.is_some() {
        return Ok(Err(Rejection::Alert(format!("alert {id} is already resolved"))));
    }
    alert.resolved = Some((at, summary.to_string()));
    if let Some(mut incident) = alert.incident.map(|i| store.incident(i)).transpose()?.flatten() {
        if incident.alert == Some(alert.id) {
            incident.say(at, format!("alert {} resolved: {summary}", alert.id));
            batch.put_incident(&incident);
        }
    }
    if let Some(first) = alert.notifications.first() {
        let to = store.notification(*first)?.map(|n| n.to).unwrap_or_default();
        let mut counters = store.counters()?;
        counters.last_notification += 1;
        let held = at.duration_since(alert.fired_at).unwrap_or_default();
        let n = Notification {
            id: counters.last_notification,
            kind: "alert.resolved".into(),
            title: format!("resolved: {} for {}", alert.rule_name, alert.subject),
            text: format!(
                "Alert {} ({}) resolved after {}: {summary}.",
                alert.id,
                alert.summary,
                humantime::format_duration(Duration::from_secs(held.as_secs()))
            ),
            repo: None,
            incident: alert.incident,
            at: Some(at),
            to: to.into_iter().map(|(h, _)| (h, false)).collect(),
        };
        alert.notifications.push(n.id);
        batch.put_notification(&n);
        batch.put_counters(&counters);
    }
    batch.put_alert(&alert);
    Ok(Ok(Applied::Done))
}

/// `Command::AckAlert`.
pub fn ack(store: &Store, id: u64, by: &str, at: SystemTime, batch: &mut Batch) -> ApplyResult {
    let Some(mut alert) = store.alert(id)? else {
        return Ok(Err(Rejection::UnknownAlert(format!("no alert {id}; see `fifty alerts`"))));
    };
    alert.acked = Some((at, by.to_string()));
    batch.put_alert(&alert);
    Ok(Ok(Applied::Done))
}

/// `fifty alerts`: the firing ones and the most recent.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AlertsView {
    /// Firing now, oldest first.
    pub firing: Vec<AlertView>,
    /// The newest alerts (firing or resolved), newest first.
    pub recent: Vec<AlertView>,
}

/// `POST /v1/alerts/rules/{rule}/silence`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Silence {
    /// How long, e.g. `"1h"`; `"0s"` lifts the silence.
    #[serde(rename = "for")]
    pub for_: String,
}

impl Coordinator {
    /// The alert rules.
    pub fn alert_rules(&self) -> Result<Vec<RuleView>, OpError> {
        Ok(self.consensus.store().alert_rules()?.iter().map(Into::into).collect())
    }

    /// Adds a rule.
    pub async fn add_alert_rule(&self, spec: RuleSpec, by: &str) -> Result<Vec<RuleView>, OpError> {
        let rule = spec.to_rule(by, SystemTime::now()).map_err(|e| OpError::BadRequest(format!("alert rule: {e}")))?;
        self.consensus.propose(Command::AddAlertRule { rule }).await??;
        self.alert_rules()
    }

    /// A rule's id from its id or name.
    fn rule_id(&self, rule: &str) -> Result<u64, OpError> {
        let rules = self.consensus.store().alert_rules()?;
        rules
            .iter()
            .find(|r| r.name == rule || r.id.to_string() == rule)
            .map(|r| r.id)
            .ok_or_else(|| OpError::NotFound(format!("no alert rule {rule:?}; see `fifty alert rule list`")))
    }

    /// Removes a rule (by id or name).
    pub async fn remove_alert_rule(&self, rule: &str) -> Result<Vec<RuleView>, OpError> {
        let id = self.rule_id(rule)?;
        self.consensus.propose(Command::RemoveAlertRule { id }).await??;
        self.alert_rules()
    }

    /// Silences a rule (by id or name) for a while.
    pub async fn silence_alert_rule(&self, rule: &str, silence: Silence) -> Result<Vec<RuleView>, OpError> {
        let id = self.rule_id(rule)?;
        let d = fifty_shared::config::parse_duration(&silence.for_)
            .map_err(|e| OpError::BadRequest(format!("for: {e}")))?;
        let until = (!d.is_zero()).then(|| SystemTime::now() + d);
        self.consensus.propose(Command::SilenceAlertRule { id, until }).await??;
        self.alert_rules()
    }

    /// Firing and recent alerts.
    pub fn alerts(&self, limit: usize) -> Result<AlertsView, OpError> {
        let store = self.consensus.store();
        Ok(AlertsView {
            firing: store.firing_alerts()?.iter().map(Into::into).collect(),
            recent: store.recent_alerts(limit.clamp(1, 1000))?.iter().map(Into::into).collect(),
        })
    }

    /// Acknowledges an alert.
    pub async fn ack_alert(&self, id: u64, by: &str) -> Result<AlertView, OpError> {
        self.consensus.propose(Command::AckAlert { id, by: by.to_string(), at: SystemTime::now() }).await??;
        match self.consensus.store().alert(id)? {
            Some(a) => Ok((&a).into()),
            None => Err(OpError::NotFound(format!("no alert {id}"))),
        }
    }

    /// Proposes the rules of the coordinator config that no rule has the name of (the leader,
    /// once it leads).
    pub async fn propose_config_rules(&self) {
        for spec in &self.config.alert.rule {
            match self.consensus.store().alert_rules() {
                Ok(rules) if rules.iter().any(|r| r.name == spec.name) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read alert rules");
                    return;
                }
            }
            match spec.to_rule("config", SystemTime::now()) {
                Ok(rule) => {
                    if let Err(e) = self.consensus.propose(Command::AddAlertRule { rule }).await {
                        tracing::warn!(rule = %spec.name, error = %e, "alert rule from the config not added");
                    }
                }
                Err(e) => tracing::error!(rule = %spec.name, error = %e, "alert rule in the config is invalid"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Severity;
    use crate::state::Machine;

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn machine() -> (Dir, Machine) {
        let dir =
            Dir(std::env::temp_dir().join(format!("fifty-alerts-{}-{}", std::process::id(), rand::random::<u64>())));
        let store = Store::open(&dir.0).unwrap();
        (dir, Machine::new(store))
    }

    fn apply(m: &mut Machine, cmd: Command) -> Result<Applied, Rejection> {
        m.apply(&cmd, Batch::default()).unwrap()
    }

    fn alert(rule: u64, subject: &str, at: SystemTime) -> AlertRecord {
        AlertRecord {
            id: 0,
            rule,
            rule_name: "web-down".into(),
            subject: subject.into(),
            severity: Severity::Critical,
            summary: "no heartbeat for 6s".into(),
            since: at,
            fired_at: at,
            resolved: None,
            acked: None,
            silenced: false,
            notifications: vec![],
            incident: None,
        }
    }

    #[test]
    fn an_alert_fires_once_notifies_its_webhooks_and_resolves_once() {
        let (_dir, mut m) = machine();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for url in ["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"] {
            let hook =
                Command::AddWebhook { url: url.into(), format: crate::notify::Format::Json, by: "admin".into(), at };
            apply(&mut m, hook).unwrap();
        }
        let spec = RuleSpec {
            name: "web-down".into(),
            kind: "host_down".into(),
            for_: Some("5s".into()),
            webhooks: vec![2],
            ..Default::default()
        };
        apply(&mut m, Command::AddAlertRule { rule: spec.to_rule("admin", at).unwrap() }).unwrap();
        let again = apply(&mut m, Command::AddAlertRule { rule: spec.to_rule("admin", at).unwrap() }).unwrap_err();
        assert!(again.to_string().contains("already has it"), "{again}");
        let bad = RuleSpec { name: "other".into(), webhooks: vec![7], ..spec.clone() };
        assert_eq!(
            apply(&mut m, Command::AddAlertRule { rule: bad.to_rule("admin", at).unwrap() }),
            Err(Rejection::UnknownWebhook(7))
        );

        apply(&mut m, Command::AlertFired { alert: alert(1, "web-3", at) }).unwrap();
        let twice = apply(&mut m, Command::AlertFired { alert: alert(1, "web-3", at) }).unwrap_err();
        assert!(twice.to_string().contains("already firing"), "{twice}");
        let store = m.store();
        let firing = store.firing_alerts().unwrap();
        assert_eq!(firing.len(), 1);
        let n = store.notification(firing[0].notifications[0]).unwrap().unwrap();
        assert_eq!((n.kind.as_str(), n.to.clone()), ("alert.firing", vec![(2, false)]), "only the rule's webhook");
        assert!(n.title.contains("[critical] web-down firing: web-3"), "{}", n.title);

        apply(&mut m, Command::AlertResolved { id: 1, summary: "heartbeats again".into(), at }).unwrap();
        assert!(apply(&mut m, Command::AlertResolved { id: 1, summary: "x".into(), at }).is_err());
        let store = m.store();
        assert!(store.firing_alerts().unwrap().is_empty());
        let a = store.alert(1).unwrap().unwrap();
        let n = store.notification(a.notifications[1]).unwrap().unwrap();
        assert_eq!((n.kind.as_str(), n.to), ("alert.resolved", vec![(2, false)]));
        // A critical alert opened an incident, which records its resolution.
        let incident = store.incident(a.incident.expect("a critical alert opens an incident")).unwrap().unwrap();
        assert_eq!(incident.alert, Some(1));
        assert!(incident.title.contains("web-down firing: web-3"), "{}", incident.title);
        assert!(incident.timeline.iter().any(|(_, e)| e.starts_with("alert 1 resolved")), "{:?}", incident.timeline);
        let firing = store.notification(a.notifications[0]).unwrap().unwrap();
        assert_eq!(firing.incident, Some(incident.id), "the notification names the incident");

        // Silenced: the alert is recorded, nothing is sent for it.
        let until = Some(at + Duration::from_secs(3600));
        apply(&mut m, Command::SilenceAlertRule { id: 1, until }).unwrap();
        apply(&mut m, Command::AlertFired { alert: alert(1, "web-3", at) }).unwrap();
        let a = m.store().alert(2).unwrap().unwrap();
        assert!(a.silenced && a.notifications.is_empty(), "{a:?}");
        apply(&mut m, Command::AlertResolved { id: 2, summary: "back".into(), at }).unwrap();
        assert!(m.store().alert(2).unwrap().unwrap().notifications.is_empty());
        assert_eq!(m.store().notifications().unwrap().len(), 2);
        apply(&mut m, Command::AckAlert { id: 2, by: "ana".into(), at }).unwrap();
        assert_eq!(m.store().recent_alerts(10).unwrap().iter().map(|a| a.id).collect::<Vec<_>>(), vec![2, 1]);
        apply(&mut m, Command::RemoveAlertRule { id: 1 }).unwrap();
        assert!(apply(&mut m, Command::AlertFired { alert: alert(1, "web-3", at) }).is_err());
    }
}
