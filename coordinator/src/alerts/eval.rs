//! The alert evaluator: readings and `now` in, transitions out. No I/O, no clock of its own.
//!
//! Per rule and subject it keeps when the condition became bad (pending) and when it became
//! clear. An alert fires once the condition has been bad for the rule's `for`; a firing alert
//! resolves once it has been clear for [`Rule::resolve_after`]. "Clear" is stricter than "not
//! bad": a threshold rule is clear only [`HYSTERESIS`] below its threshold (above, for disk free);
//! a value between the two keeps a firing alert firing and a pending one from going on, so a
//! value hovering at the threshold neither fires nor resolves it again and again. A subject with
//! no reading (no data yet, too few requests) changes nothing.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::{Condition, Rule};

/// How far below (or above, for disk free) its threshold a value must be to count as clear,
/// relative to the threshold.
pub const HYSTERESIS: f64 = 0.1;
/// Shortest time a condition must be clear before its alert resolves.
pub const MIN_RESOLVE: Duration = Duration::from_secs(2);
/// Longest time a condition must be clear before its alert resolves.
pub const MAX_RESOLVE: Duration = Duration::from_secs(300);
/// The window an error rate is pooled over.
pub const RATE_WINDOW: Duration = Duration::from_secs(20);
/// Fewest requests in [`RATE_WINDOW`] for an error rate to count as a reading.
pub const MIN_REQUESTS: f64 = 20.0;

/// What one subject of a rule looks like now.
#[derive(Clone, Debug, PartialEq)]
pub enum Level {
    /// The condition holds; what was seen.
    Bad(String),
    /// Neither bad nor clear (between the threshold and its hysteresis margin).
    Between(String),
    /// Clear; what was seen.
    Clear(String),
}

/// Classifies a value against a threshold rule's condition (`None` for host down and immune,
/// whose readings are bad or clear by nature).
pub fn classify(condition: &Condition, value: f64, said: String) -> Level {
    let (bad, clear) = match condition {
        Condition::DiskFree { below_percent } => (value < *below_percent, value >= below_percent * (1.0 + HYSTERESIS)),
        Condition::Cpu { above_percent } => (value > *above_percent, value <= above_percent * (1.0 - HYSTERESIS)),
        Condition::ErrorRate { above, .. } => (value > *above, value <= above * (1.0 - HYSTERESIS)),
        Condition::HostDown | Condition::Immune | Condition::Divergence => (value > 0.0, value <= 0.0),
    };
    if bad {
        Level::Bad(said)
    } else if clear {
        Level::Clear(said)
    } else {
        Level::Between(said)
    }
}

/// A reading: the rule, the subject, its level.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The rule's id.
    pub rule: u64,
    /// What it is about.
    pub subject: String,
    /// How it looks.
    pub level: Level,
    /// When a bad condition began, if the observer knows better than "now" (a host's silence
    /// began at its last heartbeat): the rule's `for` counts from there.
    pub began: Option<SystemTime>,
}

/// An alert that is firing now (from the replicated records).
#[derive(Clone, Debug, PartialEq)]
pub struct Firing {
    /// The alert's id.
    pub alert: u64,
    /// Its rule.
    pub rule: u64,
    /// Its subject.
    pub subject: String,
}

/// What should be recorded.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// The condition held for the rule's `for`: fire.
    Fire {
        /// The rule.
        rule: u64,
        /// The subject.
        subject: String,
        /// When the condition began.
        since: SystemTime,
        /// What is seen.
        summary: String,
    },
    /// The condition has been clear long enough, or its rule is gone: resolve.
    Resolve {
        /// The alert.
        alert: u64,
        /// What is seen.
        summary: String,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct Track {
    bad_since: Option<SystemTime>,
    clear_since: Option<SystemTime>,
}

/// The evaluator's soft state: per rule and subject, since when it is bad or clear.
#[derive(Default)]
pub struct Evaluator {
    tracks: HashMap<(u64, String), Track>,
}

impl Evaluator {
    /// One evaluation at `now`.
    pub fn step(
        &mut self,
        rules: &[Rule],
        readings: &[Reading],
        firing: &[Firing],
        now: SystemTime,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let held = |since: Option<SystemTime>| since.map(|s| now.duration_since(s).unwrap_or_default());
        for reading in readings {
            let Some(rule) = rules.iter().find(|r| r.id == reading.rule) else { continue };
            let key = (reading.rule, reading.subject.clone());
            let open = firing.iter().find(|f| f.rule == reading.rule && f.subject == reading.subject);
            let track = self.tracks.entry(key).or_default();
            match &reading.level {
                Level::Bad(said) => {
                    track.clear_since = None;
                    let since = *track.bad_since.get_or_insert(reading.began.unwrap_or(now).min(now));
                    if open.is_none() && held(Some(since)) >= Some(rule.for_) {
                        out.push(Transition::Fire {
                            rule: rule.id,
                            subject: reading.subject.clone(),
                            since,
                            summary: said.clone(),
                        });
                    }
                }
                Level::Between(_) => {
                    track.clear_since = None;
                    if open.is_none() {
                        track.bad_since = None;
                    }
                }
                Level::Clear(said) => {
                    track.bad_since = None;
                    let since = *track.clear_since.get_or_insert(now);
                    if let Some(f) = open {
                        if held(Some(since)) >= Some(rule.resolve_after()) {
                            out.push(Transition::Resolve { alert: f.alert, summary: said.clone() });
                        }
                    }
                }
            }
        }
        for f in firing {
            if !rules.iter().any(|r| r.id == f.rule) {
                out.push(Transition::Resolve { alert: f.alert, summary: "its rule was removed".into() });
            }
        }
        // Forget subjects of removed rules.
        self.tracks.retain(|(rule, _), _| rules.iter().any(|r| r.id == *rule));
        out
    }

    /// Subjects whose condition holds now but whose alert is not firing (pending).
    pub fn pending(&self, firing: &[Firing]) -> usize {
        self.tracks
            .iter()
            .filter(|((rule, subject), t)| {
                t.bad_since.is_some() && !firing.iter().any(|f| f.rule == *rule && f.subject == *subject)
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{RuleSpec, Severity};

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn rule(id: u64, kind: &str, threshold: Option<&str>, for_: &str) -> Rule {
        let spec = RuleSpec {
            name: format!("r{id}"),
            kind: kind.into(),
            threshold: threshold.map(Into::into),
            for_: Some(for_.into()),
            severity: Some(Severity::Warning),
            ..Default::default()
        };
        Rule { id, ..spec.to_rule("test", t(0)).unwrap() }
    }

    fn reading(rule: &Rule, subject: &str, value: f64) -> Reading {
        Reading {
            rule: rule.id,
            subject: subject.into(),
            level: classify(&rule.condition, value, format!("{value}")),
            began: None,
        }
    }

    /// Drives the evaluator second by second over `values`, recording fired alerts as the
    /// replicated state would, and returns (second, transition).
    fn drive(rule: &Rule, values: &[f64]) -> Vec<(u64, Transition)> {
        let mut e = Evaluator::default();
        let mut firing: Vec<Firing> = vec![];
        let mut log = vec![];
        for (s, v) in values.iter().enumerate() {
            let s = s as u64;
            for tr in e.step(std::slice::from_ref(rule), &[reading(rule, "web-1", *v)], &firing, t(s)) {
                match &tr {
                    Transition::Fire { rule, subject, .. } => {
                        firing.push(Firing { alert: s, rule: *rule, subject: subject.clone() })
                    }
                    Transition::Resolve { alert, .. } => firing.retain(|f| f.alert != *alert),
                }
                log.push((s, tr));
            }
        }
        log
    }

    #[test]
    fn an_alert_fires_after_its_duration_and_resolves_after_being_clear() {
        let down = rule(1, "host_down", None, "5s");
        // Down from second 2: pending at 2, fires at 7; back at 10, resolves at 15.
        let mut values = vec![0.0, 0.0];
        values.extend([1.0; 8]);
        values.extend([0.0; 8]);
        let log = drive(&down, &values);
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(matches!(&log[0], (7, Transition::Fire { since, .. }) if *since == t(2)), "{log:?}");
        assert!(matches!(&log[1], (15, Transition::Resolve { .. })), "{log:?}");
    }

    #[test]
    fn a_host_silent_since_its_last_heartbeat_fires_counting_from_it() {
        let down = rule(1, "host_down", None, "5s");
        let mut e = Evaluator::default();
        // Seen down at second 5 (the heartbeat timeout), silent since second 0: fires at 5, not 10.
        let r = Reading { began: Some(t(0)), ..reading(&down, "web-1", 1.0) };
        let out = e.step(std::slice::from_ref(&down), std::slice::from_ref(&r), &[], t(5));
        assert!(matches!(&out[..], [Transition::Fire { since, .. }] if *since == t(0)), "{out:?}");
    }

    #[test]
    fn a_condition_shorter_than_the_duration_does_not_fire() {
        let down = rule(1, "host_down", None, "5s");
        let log = drive(&down, &[1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        assert!(log.is_empty(), "{log:?}");
    }

    #[test]
    fn a_value_hovering_at_the_threshold_does_not_flap() {
        let cpu = rule(1, "cpu", Some("80"), "2s");
        // Above for 3 s: fires at 2. Then it hovers between 79 and 81 (inside the 10% margin):
        // stays firing, never resolves, never fires again. Only below 72 does it resolve.
        let mut values = vec![85.0, 85.0, 85.0];
        for i in 0..20 {
            values.push(if i % 2 == 0 { 79.0 } else { 81.0 });
        }
        values.extend([70.0; 3]);
        let log = drive(&cpu, &values);
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(matches!(log[0], (2, Transition::Fire { .. })), "{log:?}");
        assert!(matches!(log[1], (25, Transition::Resolve { .. })), "{log:?}");
        // And before it fires, hovering keeps resetting the pending clock.
        let log = drive(&cpu, &[81.0, 79.0, 81.0, 79.0, 81.0, 79.0, 81.0]);
        assert!(log.is_empty(), "{log:?}");
    }

    #[test]
    fn disk_free_is_clear_only_above_its_margin_and_missing_readings_change_nothing() {
        let disk = rule(1, "disk_free", Some("10"), "0s");
        let log = drive(&disk, &[20.0, 9.0, 10.5, 10.5, 10.5, 12.0, 12.0, 12.0]);
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(matches!(log[0], (1, Transition::Fire { .. })), "{log:?}");
        assert!(matches!(log[1], (7, Transition::Resolve { .. })), "{log:?}");
        // No reading for a firing subject (host gone quiet): nothing happens.
        let mut e = Evaluator::default();
        let firing = [Firing { alert: 4, rule: 1, subject: "web-1".into() }];
        assert!(e.step(std::slice::from_ref(&disk), &[], &firing, t(100)).is_empty());
    }

    #[test]
    fn an_alert_of_a_removed_rule_resolves_and_a_new_leader_resolves_what_cleared() {
        let mut e = Evaluator::default();
        let firing = [Firing { alert: 4, rule: 9, subject: "web-1".into() }];
        let out = e.step(&[], &[], &firing, t(0));
        assert_eq!(out, vec![Transition::Resolve { alert: 4, summary: "its rule was removed".into() }]);
        // A firing alert recorded under the previous leader, now clear: resolves after the margin.
        let down = rule(9, "host_down", None, "5s");
        let mut e = Evaluator::default();
        assert!(e.step(std::slice::from_ref(&down), &[reading(&down, "web-1", 0.0)], &firing, t(0)).is_empty());
        let out = e.step(std::slice::from_ref(&down), &[reading(&down, "web-1", 0.0)], &firing, t(5));
        assert!(matches!(&out[..], [Transition::Resolve { alert: 4, .. }]), "{out:?}");
        // Still bad under the new leader: no second firing.
        let mut e = Evaluator::default();
        for s in 0..10 {
            assert!(e.step(std::slice::from_ref(&down), &[reading(&down, "web-1", 1.0)], &firing, t(s)).is_empty());
        }
    }
}
