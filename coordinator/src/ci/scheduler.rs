//! Which build agent runs which queued job, and which running jobs count as lost. Pure: the
//! dispatcher passes in what it knows and `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fifty_shared::ids::HostName;
use fifty_shared::wire::JobRef;

/// A build agent that can take work now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// Its host.
    pub host: HostName,
    /// Slots free (its `slots` label, default 1, minus the jobs it runs).
    pub free: u32,
}

/// A queued job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// Its id.
    pub job: u64,
    /// Agents it failed on.
    pub avoid: Vec<HostName>,
}

/// Gives queued jobs, oldest first, to agents with free slots. Each job goes to the agent with
/// the most free slots (ties: the one given fewest jobs this round, then by name), so a commit's
/// shards spread over the agents. A job avoids agents it failed on while another build agent
/// exists, even a busy one (the retry waits for it); `all_agents` is every connected build agent.
pub fn assign(queue: &[Waiting], agents: &[Agent], all_agents: &[HostName]) -> Vec<(u64, HostName)> {
    let mut agents: Vec<(Agent, u32)> = agents.iter().cloned().map(|a| (a, 0)).collect();
    let mut out = Vec::new();
    for w in queue {
        let someone_else = all_agents.iter().any(|h| !w.avoid.contains(h));
        let pick = agents
            .iter_mut()
            .filter(|(a, _)| a.free > 0 && !(someone_else && w.avoid.contains(&a.host)))
            .max_by(|(a, na), (b, nb)| a.free.cmp(&b.free).then(nb.cmp(na)).then(b.host.as_str().cmp(a.host.as_str())));
        if let Some((agent, given)) = pick {
            agent.free -= 1;
            *given += 1;
            out.push((w.job, agent.host.clone()));
        }
    }
    out
}

/// A job the log says runs on `host`.
#[derive(Clone, Debug)]
pub struct Running {
    /// Job and attempt.
    pub job: JobRef,
    /// Where.
    pub host: HostName,
    /// When this leader sent it there, or took over leadership, whichever is later.
    pub since: Instant,
    /// It has run past its own timeout by more than [`OVERDUE_GRACE`]: its agent, which should
    /// have killed it and reported, is hung.
    pub overdue: bool,
}

/// How long past a job's timeout its agent has to report before the job counts as lost: the
/// timeout covers the command only, and the checkout before it may take up to 10 minutes (two git
/// commands of at most 5 each).
pub const OVERDUE_GRACE: Duration = Duration::from_secs(15 * 60);

/// What one agent said in its last heartbeat.
#[derive(Clone, Debug)]
pub struct Report {
    /// When it arrived.
    pub at: Instant,
    /// The jobs it holds.
    pub jobs: Vec<JobRef>,
}

/// How long after sending a job its agent's heartbeats must list it.
pub const REPORT_MARGIN: Duration = Duration::from_secs(3);

/// Running jobs whose agent is lost, with why: the agent is down (no heartbeat for
/// `down_after`, `down` holds such hosts), its heartbeats, well after the job was sent, do not
/// list it (it restarted, or never got it), or the job is overdue (the agent hangs).
pub fn lost(running: &[Running], down: &[HostName], reports: &HashMap<HostName, Report>) -> Vec<(JobRef, String)> {
    let mut out = Vec::new();
    for r in running {
        if down.contains(&r.host) {
            out.push((r.job, format!("agent {} lost: no heartbeat", r.host)));
            continue;
        }
        if r.overdue {
            out.push((r.job, format!("agent {} did not report it within its timeout", r.host)));
            continue;
        }
        if let Some(report) = reports.get(&r.host) {
            if report.at > r.since + REPORT_MARGIN && !report.jobs.contains(&r.job) {
                out.push((r.job, format!("agent {} is not running it (restarted?)", r.host)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: &str) -> HostName {
        HostName::new(n).unwrap()
    }

    fn w(job: u64, avoid: &[&str]) -> Waiting {
        Waiting { job, avoid: avoid.iter().map(|a| h(a)).collect() }
    }

    #[test]
    fn shards_spread_over_agents_and_respect_slots() {
        let agents = [Agent { host: h("build-1"), free: 2 }, Agent { host: h("build-2"), free: 2 }];
        let all = [h("build-1"), h("build-2")];
        let out = assign(&[w(1, &[]), w(2, &[]), w(3, &[]), w(4, &[]), w(5, &[])], &agents, &all);
        let on = |host: &str| out.iter().filter(|(_, a)| a.as_str() == host).count();
        assert_eq!((on("build-1"), on("build-2")), (2, 2), "{out:?}");
        assert_eq!(out.len(), 4, "job 5 waits for a slot");
    }

    #[test]
    fn a_retry_waits_for_another_agent_unless_there_is_none() {
        let all = [h("build-1"), h("build-2")];
        let only_1_free = [Agent { host: h("build-1"), free: 1 }];
        assert!(assign(&[w(7, &["build-1"])], &only_1_free, &all).is_empty());
        let alone = [h("build-1")];
        assert_eq!(assign(&[w(7, &["build-1"])], &only_1_free, &alone), [(7, h("build-1"))]);
    }

    #[test]
    fn jobs_of_down_or_forgetful_agents_are_lost() {
        let t0 = Instant::now();
        let job = JobRef { job: 1, attempt: 1 };
        let running = [Running { job, host: h("build-1"), since: t0, overdue: false }];
        assert_eq!(lost(&running, &[h("build-1")], &HashMap::new()).len(), 1);
        let report = |secs, jobs: Vec<JobRef>| {
            HashMap::from([(h("build-1"), Report { at: t0 + Duration::from_secs(secs), jobs })])
        };
        // Just sent: a heartbeat without it proves nothing yet.
        assert!(lost(&running, &[], &report(1, vec![])).is_empty());
        assert!(lost(&running, &[], &report(10, vec![job])).is_empty());
        let gone = lost(&running, &[], &report(10, vec![]));
        assert!(gone[0].1.contains("not running it"), "{gone:?}");
        // Listed, but far past its timeout: the agent hangs.
        let hung = [Running { overdue: true, ..running[0].clone() }];
        assert!(lost(&hung, &[], &report(10, vec![job]))[0].1.contains("within its timeout"));
    }
}
