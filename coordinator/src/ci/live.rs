//! The leader's soft state for CI: live output of running jobs, each build agent's last report of
//! the jobs it holds, and when each job was sent. Lost on failover, rebuilt from the next reports;
//! the output of a job that finished is in its replicated record (the tail).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use fifty_shared::ids::HostName;
use fifty_shared::wire::JobRef;

use super::scheduler::Report;

/// Most bytes of live output kept per job (its tail).
pub const MAX_LIVE_LOG: usize = 1 << 20;

/// Live output of one job.
#[derive(Default)]
pub struct LiveLog {
    /// The last [`MAX_LIVE_LOG`] bytes.
    pub tail: VecDeque<u8>,
    /// Bytes written in all, as far as we heard.
    pub total: u64,
    /// Bytes this leader never received (before it led, or dropped on a slow link).
    pub missed: u64,
}

/// Soft CI state of the leader.
pub struct Live {
    /// When this node became leader.
    pub since: Instant,
    /// Output by job attempt.
    pub logs: HashMap<JobRef, LiveLog>,
    /// Last heartbeat report per agent.
    pub reports: HashMap<HostName, Report>,
    /// When each job was sent to its agent.
    pub sent: HashMap<JobRef, Instant>,
}

impl Default for Live {
    fn default() -> Self {
        Self { since: Instant::now(), logs: HashMap::new(), reports: HashMap::new(), sent: HashMap::new() }
    }
}

impl Live {
    /// Appends a chunk that starts at `offset` of the job's output.
    pub fn on_output(&mut self, job: JobRef, offset: u64, data: &[u8]) {
        let log = self.logs.entry(job).or_default();
        if offset > log.total {
            log.missed += offset - log.total;
            log.total = offset;
        } else if offset < log.total {
            return; // a repeat
        }
        log.tail.extend(data);
        log.total += data.len() as u64;
        let excess = log.tail.len().saturating_sub(MAX_LIVE_LOG);
        log.tail.drain(..excess);
    }

    /// Forgets everything about a finished attempt.
    pub fn forget(&mut self, job: JobRef) {
        self.logs.remove(&job);
        self.sent.remove(&job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_counted_and_repeats_ignored() {
        let mut live = Live::default();
        let job = JobRef { job: 1, attempt: 1 };
        live.on_output(job, 0, b"abc");
        live.on_output(job, 0, b"abc");
        live.on_output(job, 10, b"xyz");
        let log = &live.logs[&job];
        assert_eq!(log.tail.iter().copied().collect::<Vec<_>>(), b"abcxyz");
        assert_eq!((log.total, log.missed), (13, 7));
    }
}
