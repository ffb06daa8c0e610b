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
    /// certificate), `revoked`, `unknown_host`, `no_certificate`; `busy` (put off: the leader's
    /// `links.handshake_rate` was reached, told when to come back).
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
            "Agents refused, by reason (certificate: in the TLS handshake; revoked, unknown_host, no_certificate: after it; busy: handshake rate reached, told to retry)",
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

/// The two exposition formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what plain scrapers, `curl` and `promtool check metrics` read.
    Text,
    /// OpenMetrics 1.0.0, for scrapers that ask for it.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when it is preferred at least as
    /// much as plain text (Prometheus itself sends `application/openmetrics-text;version=1.0.0,
    /// ...,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`); text otherwise, and without a header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut open, mut text) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The exposition in this format, from [`Metrics::render`]'s OpenMetrics text.
    pub fn encode(self, openmetrics: String) -> String {
        match self {
            Format::OpenMetrics => openmetrics,
            Format::Text => text_format(&openmetrics),
        }
    }
}

/// Rewrites an OpenMetrics exposition in the Prometheus text format 0.0.4. The two differ where
/// prometheus-client's output uses OpenMetrics-only features: a counter family is named without
/// `_total` in OpenMetrics but with it in 0.0.4 (its samples already carry it); `# UNIT`,
/// `_created` samples and `# EOF` do not exist in 0.0.4; `unknown` is 0.0.4's `untyped`.
pub fn text_format(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let is_counter = |name: &str| counters.contains(&name);
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let keyword = &line[..7];
            let name = if is_counter(name) { format!("{name}_total") } else { name.to_string() };
            let tail = if keyword == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
            out.push_str(&format!("{keyword}{name} {tail}\n"));
            continue;
        }
        let sample = line.split(['{', ' ']).next().unwrap_or("");
        if sample.strip_suffix("_created").is_some_and(is_counter) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_accept_header() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain; version=0.0.4; q=1, */*; q=0.1")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text; version=1.0.0")), Format::OpenMetrics);
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.2,text/plain;version=0.0.4;q=0.9")),
            Format::Text
        );
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Format::Text);
    }

    #[test]
    fn the_text_format_names_counter_families_with_total() {
        let m = Metrics::default();
        m.heartbeats.inc();
        let text = text_format(&m.render(3, 1, 3, 10));
        assert!(text.contains("# HELP fifty_heartbeats_total Heartbeats received from agents"), "{text}");
        assert!(text.contains("# TYPE fifty_heartbeats_total counter\nfifty_heartbeats_total 1\n"), "{text}");
        assert!(text.contains("# TYPE fifty_enrollments_total counter"), "{text}");
        assert!(text.contains("# TYPE fifty_hosts gauge\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        // Every sample's family has a HELP and a TYPE line of its own name.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}:\n{text}");
        }
    }

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
