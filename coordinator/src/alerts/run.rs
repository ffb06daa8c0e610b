//! The leader's alert loop: every [`TICK`], read the fleet's soft state (heartbeats, metric
//! reports) and the replicated records (rules, firing alerts, incidents, rollouts), turn them into
//! readings, let the evaluator decide, and propose what it decided. The notification of a
//! transition is written by the same Raft entry (see `ops::fired`), so it is sent once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use super::eval::{self, classify, Evaluator, Firing, Level, Reading, Transition};
use super::{percent, AlertRecord, Condition, Rule};
use crate::coordinator::Coordinator;
use crate::fleet::HostState;
use crate::state::Command;
use crate::store::StoreError;

/// How often the leader evaluates the rules.
pub const TICK: Duration = Duration::from_secs(1);

/// Runs until `shutdown`; evaluates only while this node leads.
pub async fn run(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    let mut evaluator = Evaluator::default();
    let mut leading = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !coordinator.consensus.status().is_leader() {
            // Pending state is soft: the next leader starts its own.
            evaluator = Evaluator::default();
            leading = false;
            continue;
        }
        if !leading {
            leading = true;
            coordinator.propose_config_rules().await;
        }
        if let Err(e) = evaluate(&coordinator, &mut evaluator).await {
            warn!(error = %e, "alert rules not evaluated");
        }
    }
}

async fn evaluate(c: &Coordinator, evaluator: &mut Evaluator) -> Result<(), StoreError> {
    let store = c.consensus.store();
    let rules = store.alert_rules()?;
    let firing_records = store.firing_alerts()?;
    if rules.is_empty() && firing_records.is_empty() {
        c.metrics.set_alerts_pending(0);
        return Ok(());
    }
    let now = SystemTime::now();
    let readings = readings(c, &rules, now)?;
    let firing: Vec<Firing> =
        firing_records.iter().map(|a| Firing { alert: a.id, rule: a.rule, subject: a.subject.clone() }).collect();
    let mut proposed = false;
    let mut fired = 0;
    for transition in evaluator.step(&rules, &readings, &firing, now) {
        let firing_now = matches!(transition, Transition::Fire { .. });
        let cmd = match transition {
            Transition::Fire { rule, subject, since, summary } => {
                let Some(rule) = rules.iter().find(|r| r.id == rule) else { continue };
                info!(rule = %rule.name, %subject, %summary, "alert firing");
                let incident = subject.strip_prefix("incident ").and_then(|n| n.parse().ok());
                Command::AlertFired {
                    alert: AlertRecord {
                        id: 0,
                        rule: rule.id,
                        rule_name: rule.name.clone(),
                        subject,
                        severity: rule.severity,
                        summary,
                        since,
                        fired_at: now,
                        resolved: None,
                        acked: None,
                        silenced: false,
                        notifications: vec![],
                        incident,
                    },
                }
            }
            Transition::Resolve { alert, summary } => {
                info!(alert, %summary, "alert resolved");
                Command::AlertResolved { id: alert, summary, at: now }
            }
        };
        match c.consensus.propose(cmd).await {
            Ok(Ok(_)) => {
                proposed = true;
                fired += usize::from(firing_now);
            }
            Ok(Err(rejected)) => warn!(%rejected, "alert transition refused"),
            Err(e) => warn!(error = %e, "alert transition not recorded; retried on the next evaluation"),
        }
    }
    // Pending: the condition holds, not (yet) firing (the alerts fired just now count as firing).
    c.metrics.set_alerts_pending(evaluator.pending(&firing).saturating_sub(fired));
    if proposed {
        c.notify_wake.notify_one();
    }
    Ok(())
}

/// Every rule's readings now.
fn readings(c: &Coordinator, rules: &[Rule], now: SystemTime) -> Result<Vec<Reading>, StoreError> {
    let store = c.consensus.store();
    let hosts = store.hosts()?;
    let mut out = Vec::new();
    let mono = Instant::now();
    for rule in rules {
        let mut push = |subject: String, level: Level, began: Option<SystemTime>| {
            out.push(Reading { rule: rule.id, subject, level, began })
        };
        match &rule.condition {
            Condition::HostDown => {
                let fleet = c.fleet.lock().expect("fleet lock");
                for h in &hosts {
                    let seen = fleet.last(&h.name).map(|b| mono.saturating_duration_since(b.at));
                    let said = match seen {
                        Some(ago) => format!("last heartbeat {}s ago", ago.as_secs()),
                        None => "no heartbeat since this coordinator leads".into(),
                    };
                    let down = fleet.state(&h.name, mono, c.config.down_after) == HostState::Down;
                    // Silent since its last heartbeat (this leader's; or since now, if none).
                    let began = fleet.last(&h.name).map(|b| b.wall);
                    push(h.name.to_string(), if down { Level::Bad(said) } else { Level::Clear(said) }, began);
                }
            }
            Condition::DiskFree { .. } | Condition::Cpu { .. } => {
                let fleet = c.fleet.lock().expect("fleet lock");
                for h in &hosts {
                    if fleet.state(&h.name, mono, c.config.down_after) == HostState::Down {
                        continue; // no fresh reading
                    }
                    let Some(beat) = fleet.last(&h.name) else { continue };
                    let value = match rule.condition {
                        Condition::Cpu { .. } => beat.health.cpu_percent as f64,
                        _ if beat.health.disk_total_bytes == 0 => continue,
                        _ => beat.health.disk_free_bytes as f64 * 100.0 / beat.health.disk_total_bytes as f64,
                    };
                    let said = match rule.condition {
                        Condition::Cpu { .. } => format!("CPU {value:.1}%"),
                        _ => format!("disk {value:.1}% free"),
                    };
                    push(h.name.to_string(), classify(&rule.condition, value, said), None);
                }
            }
            Condition::ErrorRate { metric, pool, .. } => {
                let chosen: Vec<_> = hosts
                    .iter()
                    .filter(|h| pool.as_ref().is_none_or(|(k, v)| h.labels.get(k) == Some(v.as_str())))
                    .collect();
                let live = c.immune.lock().expect("immune lock");
                let from = now.checked_sub(eval::RATE_WINDOW).unwrap_or(SystemTime::UNIX_EPOCH);
                let (mut num, mut den, mut reporting) = (0.0, 0.0, 0);
                for h in &chosen {
                    let mut any = false;
                    for r in live.series.between(&h.name, from, now + Duration::from_millis(1)) {
                        for (name, sample) in &r.report.samples {
                            if let (true, fifty_shared::wire::MetricSample::Ratio { num: n, den: d }) =
                                (name == metric, sample)
                            {
                                num += n;
                                den += d;
                                any = true;
                            }
                        }
                    }
                    reporting += usize::from(any);
                }
                if den < eval::MIN_REQUESTS {
                    continue; // too little traffic to say
                }
                let value = num / den;
                let subject = match pool {
                    Some((k, v)) => format!("pool {k}={v}"),
                    None => "fleet".into(),
                };
                let said = format!(
                    "{metric} {} over the last {}s ({num:.0} of {den:.0}, {reporting} hosts)",
                    percent(value),
                    eval::RATE_WINDOW.as_secs()
                );
                push(subject, classify(&rule.condition, value, said), None);
            }
            Condition::Immune => {
                // The immune system's incidents (not those alerts opened).
                for i in store.incidents()?.iter().filter(|i| i.opened_at >= rule.added.0 && i.alert.is_none()) {
                    let repo = i.repo.as_ref().map(|r| r.to_string()).unwrap_or_default();
                    let said = format!("{repo}: {}", i.title);
                    let level = if i.closed.is_some() { Level::Clear(said) } else { Level::Bad(said) };
                    push(format!("incident {}", i.id), level, Some(i.opened_at));
                }
                for r in store.rollouts()?.iter().filter(|r| r.started_at >= rule.added.0) {
                    let said = format!("{} release {}: {}", r.repo, r.release, r.held.as_deref().unwrap_or("not held"));
                    let level = if r.held.is_some() { Level::Bad(said) } else { Level::Clear(said) };
                    push(format!("rollout {} held", r.id), level, None);
                }
            }
            Condition::Divergence => {
                if let Some((differing, at)) = c.last_divergence.lock().expect("divergence lock").clone() {
                    let level = if differing.is_empty() {
                        Level::Clear("every coordinator agreed at the last check".into())
                    } else {
                        Level::Bad(format!(
                            "{} differ from the leader at the last check: `fifty cluster check`",
                            differing.join(", ")
                        ))
                    };
                    push("coordinators".into(), level, Some(at));
                }
            }
        }
    }
    Ok(out)
}
