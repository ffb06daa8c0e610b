//! `/metrics`: the coordinator's Prometheus exposition, through `prometheus-client`. Counters
//! live here and are bumped where things happen; gauges of the fleet are set at scrape time from
//! the state the API would show.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The coordinator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Heartbeats received.
    pub heartbeats: Counter,
    /// Enrollments accepted.
    pub enrollments_ok: Counter,
    /// Enrollments refused.
    pub enrollments_refused: Counter,
    /// Agent links refused after the handshake (revoked, unknown).
    pub links_refused: Counter,
    /// Agents refused, by reason: `certificate` (refused in the TLS handshake: another CA, a bad
    /// certificate), `revoked`, `unknown_host`, `no_certificate`.
    pub handshakes_refused: Family<Vec<(String, String)>, Counter>,
    /// Webhook deliveries refused for a bad signature.
    pub webhooks_refused: Counter,
    /// CI jobs given to build agents.
    pub jobs_dispatched: Counter,
    /// CI jobs queued or running now, by state (set by the leader's dispatcher).
    pub ci_jobs: Family<Vec<(String, String)>, Gauge>,
    hosts: Family<Vec<(String, String)>, Gauge>,
    links: Gauge,
    up_seconds: Gauge,
    raft_term: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_is_leader: Gauge,
    alerts: Family<Vec<(String, String)>, Gauge>,
    notifications_pending: Gauge,
    metric_reports: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fifty");
        let heartbeats = Counter::default();
        let enrollments: Family<Vec<(String, String)>, Counter> = Family::default();
        let links_refused = Counter::default();
        let hosts = Family::<Vec<(String, String)>, Gauge>::default();
        let links = Gauge::default();
        let up_seconds = Gauge::default();
        let webhooks_refused = Counter::default();
        let jobs_dispatched = Counter::default();
        let ci_jobs = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "webhooks_refused",
            "Webhook deliveries refused for a bad signature",
            webhooks_refused.clone(),
        );
        registry.register("ci_jobs_dispatched", "CI jobs given to build agents", jobs_dispatched.clone());
        registry.register("ci_jobs", "CI jobs queued or running now (leader only)", ci_jobs.clone());
        registry.register("heartbeats", "Heartbeats received from agents", heartbeats.clone());
        registry.register("enrollments", "Host enrollments by result", enrollments.clone());
        registry.register("agent_links_refused", "Agent links refused after the TLS handshake", links_refused.clone());
        let handshakes_refused = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "handshakes_refused",
            "Agents refused, by reason (certificate: in the TLS handshake; revoked, unknown_host, no_certificate: after it)",
            handshakes_refused.clone(),
        );
        registry.register("hosts", "Enrolled hosts by state", hosts.clone());
        registry.register("agent_links", "Agents connected now", links.clone());
        registry.register("uptime_seconds", "Seconds since this coordinator started", up_seconds.clone());
        let raft_term = Gauge::default();
        let raft_commit_index = Gauge::default();
        let raft_applied_index = Gauge::default();
        let raft_is_leader = Gauge::default();
        let alerts = Family::<Vec<(String, String)>, Gauge>::default();
        let notifications_pending = Gauge::default();
        let metric_reports = Gauge::default();
        registry.register("raft_term", "This coordinator's Raft term", raft_term.clone());
        registry.register("raft_commit_index", "Index of the last committed Raft entry", raft_commit_index.clone());
        registry.register("raft_applied_index", "Index of the last applied Raft entry", raft_applied_index.clone());
        registry.register("raft_is_leader", "1 if this coordinator leads", raft_is_leader.clone());
        registry.register("alerts", "Alerts by state (pending: leader's evaluator only)", alerts.clone());
        registry.register(
            "notifications_pending",
            "Notifications not yet delivered to every webhook (delivery queue depth)",
            notifications_pending.clone(),
        );
        registry.register(
            "metric_reports",
            "Agents' metric reports held in memory (leader only)",
            metric_reports.clone(),
        );
        let label = |v: &str| vec![("result".to_string(), v.to_string())];
        let enrollments_ok = enrollments.get_or_create(&label("ok")).clone();
        let enrollments_refused = enrollments.get_or_create(&label("refused")).clone();
        Self {
            enrollments_ok,
            enrollments_refused,
            registry,
            heartbeats,
            links_refused,
            handshakes_refused,
            webhooks_refused,
            jobs_dispatched,
            ci_jobs,
            hosts,
            links,
            up_seconds,
            raft_term,
            raft_commit_index,
            raft_applied_index,
            raft_is_leader,
            alerts,
            notifications_pending,
            metric_reports,
        }
    }
}

impl Metrics {
    /// Counts an agent refused for `reason`.
    pub fn handshake_refused(&self, reason: &str) {
        self.handshakes_refused.get_or_create(&vec![("reason".to_string(), reason.to_string())]).inc();
    }

    /// Sets the Raft gauges.
    pub fn set_raft(&self, term: u64, commit: u64, applied: u64, leader: bool) {
        self.raft_term.set(term as i64);
        self.raft_commit_index.set(commit as i64);
        self.raft_applied_index.set(applied as i64);
        self.raft_is_leader.set(i64::from(leader));
    }

    /// Sets the number of firing alerts (replicated: every coordinator knows it).
    pub fn set_alerts_firing(&self, firing: usize) {
        self.alerts.get_or_create(&vec![("state".to_string(), "firing".to_string())]).set(firing as i64);
    }

    /// Sets the number of pending alerts (the leader's alert loop).
    pub fn set_alerts_pending(&self, pending: usize) {
        self.alerts.get_or_create(&vec![("state".to_string(), "pending".to_string())]).set(pending as i64);
    }

    /// Sets the queue gauges.
    pub fn set_queues(&self, notifications_pending: usize, metric_reports: usize) {
        self.notifications_pending.set(notifications_pending as i64);
        self.metric_reports.set(metric_reports as i64);
    }

    /// Renders the text exposition after setting the fleet gauges.
    pub fn render(&self, ready: usize, down: usize, links: usize, uptime_secs: u64) -> String {
        let state = |v: &str| vec![("state".to_string(), v.to_string())];
        self.hosts.get_or_create(&state("ready")).set(ready as i64);
        self.hosts.get_or_create(&state("down")).set(down as i64);
        self.links.set(links as i64);
        self.up_seconds.set(uptime_secs as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_hosts_by_state() {
        let m = Metrics::default();
        m.heartbeats.inc();
        let text = m.render(3, 1, 3, 10);
        assert!(text.contains("fifty_hosts{state=\"ready\"} 3"), "{text}");
        assert!(text.contains("fifty_hosts{state=\"down\"} 1"), "{text}");
        assert!(text.contains("fifty_heartbeats_total 1"), "{text}");
        assert!(text.contains("# TYPE fifty_enrollments counter"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
