//! The leader's recent metric reports, per host: soft state, like heartbeats. Agents send one
//! report per scrape interval (`AgentMsg::Metrics`); the leader keeps the last hour of them (at
//! most [`PER_HOST`] per host), which is what the immune system compares and what a new leader
//! rebuilds from the next reports after a failover.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use fifty_shared::ids::HostName;
use fifty_shared::wire::MetricsReport;

/// How long reports are kept.
pub const KEEP: Duration = Duration::from_secs(3600);
/// Most reports kept per host (an hour at one-second intervals).
pub const PER_HOST: usize = 3600;

/// One report as the leader received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// When it arrived (the leader's clock: intervals of different hosts are lined up by it).
    pub at: SystemTime,
    /// The report.
    pub report: MetricsReport,
}

/// Every host's recent reports, oldest first.
#[derive(Default)]
pub struct Series {
    hosts: HashMap<HostName, VecDeque<Received>>,
}

impl Series {
    /// Adds a report from `host`; a repeated or older one (by `seq`, unless the agent restarted
    /// and counts from 1 again) is dropped.
    pub fn push(&mut self, host: &HostName, report: MetricsReport, now: SystemTime) {
        let q = self.hosts.entry(host.clone()).or_default();
        if let Some(last) = q.back() {
            let restarted = report.seq <= 1 && last.report.seq > 1;
            if report.seq <= last.report.seq && !restarted {
                return;
            }
        }
        q.push_back(Received { at: now, report });
        while q.len() > PER_HOST || q.front().is_some_and(|r| now.duration_since(r.at).unwrap_or_default() > KEEP) {
            q.pop_front();
        }
    }

    /// `host`'s reports that arrived in `[from, to)`.
    pub fn between(&self, host: &HostName, from: SystemTime, to: SystemTime) -> impl Iterator<Item = &Received> {
        self.hosts.get(host).into_iter().flatten().filter(move |r| r.at >= from && r.at < to)
    }

    /// `host`'s newest report.
    pub fn last(&self, host: &HostName) -> Option<&Received> {
        self.hosts.get(host).and_then(|q| q.back())
    }

    /// Hosts with reports.
    pub fn hosts(&self) -> impl Iterator<Item = &HostName> {
        self.hosts.keys()
    }

    /// Reports held, in all.
    pub fn len(&self) -> usize {
        self.hosts.values().map(VecDeque::len).sum()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (this node stopped leading: the next leader has its own).
    pub fn clear(&mut self) {
        self.hosts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64) -> MetricsReport {
        MetricsReport {
            release: 1,
            seq,
            at: SystemTime::UNIX_EPOCH,
            span: Duration::from_secs(2),
            samples: vec![],
            error: None,
        }
    }

    #[test]
    fn reports_are_kept_once_in_order_and_for_an_hour() {
        let h = HostName::new("web-1").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let mut s = Series::default();
        s.push(&h, report(1), t0);
        s.push(&h, report(2), t0 + Duration::from_secs(2));
        s.push(&h, report(2), t0 + Duration::from_secs(3));
        assert_eq!(s.len(), 2, "a repeated report is dropped");
        s.push(&h, report(1), t0 + Duration::from_secs(4));
        assert_eq!(s.len(), 3, "an agent that restarted counts from 1 again");
        assert_eq!(s.between(&h, t0 + Duration::from_secs(1), t0 + Duration::from_secs(4)).count(), 1);
        s.push(&h, report(2), t0 + KEEP + Duration::from_secs(3));
        assert_eq!(s.len(), 2, "reports older than an hour are dropped");
    }
}
