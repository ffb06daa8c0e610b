//! The leader's side of experiments, the I/O shell around the records: it pushes each linked host
//! the definitions its labels select (on link, and whenever they change), and turns every agent
//! report into one `Command::RecordExperimentReport`, acknowledging it once applied. An agent keeps
//! a report until acknowledged and re-sends it to whichever coordinator leads next; the command's
//! (boot, seq) makes a repeat change nothing, so a failover neither loses nor double-counts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fifty_shared::codec;
use fifty_shared::experiment::{ExperimentDef, ExperimentReport};
use fifty_shared::ids::HostName;
use fifty_shared::wire::CoordinatorMsg;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, warn};

use crate::coordinator::Coordinator;
use crate::state::Command;
use crate::store::StoreError;

/// How often the definitions are compared with what each host was sent, without a wake-up.
const ROUND: Duration = Duration::from_secs(2);

/// The leader's soft experiment state: a fingerprint of the definitions each host was sent.
#[derive(Default)]
pub struct Live {
    sent: HashMap<HostName, [u8; 32]>,
}

/// Runs until `shutdown`, pushing changed definitions while this node leads.
pub async fn run(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = coordinator.experiments_wake.notified() => {}
            _ = tokio::time::sleep(ROUND) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !coordinator.consensus.status().is_leader() {
            continue;
        }
        let experiments = match coordinator.consensus.store().experiments() {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "reading experiments failed; retrying");
                continue;
            }
        };
        for host in coordinator.linked_hosts() {
            match coordinator.experiments_message(&host, &experiments, false) {
                Ok(Some(msg)) => {
                    coordinator.send_to(&host, msg);
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "reading experiments failed; retrying"),
            }
        }
    }
}

/// Every experiment of `all` whose selector matches `host`'s labels.
fn defs_for(
    store: &crate::store::Store,
    host: &HostName,
    all: &[super::ExperimentRecord],
) -> Result<Vec<ExperimentDef>, StoreError> {
    let Some(record) = store.host(host)? else { return Ok(Vec::new()) };
    Ok(all.iter().filter(|e| crate::deploy::selects(&e.hosts, &record.labels)).map(|e| e.def()).collect())
}

impl Coordinator {
    /// The definitions `host` should hold, if they differ from what it was last sent (or always,
    /// with `force`, for a new link).
    pub(crate) fn experiments_message(
        &self,
        host: &HostName,
        all: &[super::ExperimentRecord],
        force: bool,
    ) -> Result<Option<CoordinatorMsg>, StoreError> {
        let mut defs = defs_for(self.consensus.store(), host, all)?;
        // The definitions go in one message under the frame cap: with `MAX_EXPERIMENTS` and slot
        // tables as runs they fit many times over, but should they not, the host gets those that
        // fit (and the log says which were left out) rather than none.
        let mut left_out = Vec::new();
        let bytes = loop {
            match codec::to_bytes(&defs) {
                Ok(bytes) if bytes.len() <= codec::MAX_FRAME - 1024 => break bytes,
                Ok(_) | Err(codec::CodecError::TooLarge { .. }) if !defs.is_empty() => {
                    left_out.push(defs.pop().expect("not empty").name);
                }
                Ok(bytes) => break bytes,
                Err(source) => return Err(StoreError::Encode { key: "experiments".into(), source }),
            }
        };
        let print: [u8; 32] = Sha256::digest(&bytes).into();
        let mut live = self.experiments.lock().expect("experiments lock");
        if !force && live.sent.get(host) == Some(&print) {
            return Ok(None);
        }
        live.sent.insert(host.clone(), print);
        if !left_out.is_empty() {
            error!(%host, left_out = ?left_out, "this host's experiment definitions exceed one message; it serves only the others");
        }
        Ok(Some(CoordinatorMsg::Experiments(defs)))
    }

    /// A new agent link: send it its experiments at once.
    pub(crate) fn experiments_on_link(&self, host: &HostName, tx: &mpsc::UnboundedSender<CoordinatorMsg>) {
        let all = match self.consensus.store().experiments() {
            Ok(all) => all,
            Err(e) => return warn!(error = %e, "reading experiments for a new link failed"),
        };
        match self.experiments_message(host, &all, true) {
            Ok(Some(msg)) => {
                let _ = tx.send(msg);
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "reading experiments for a new link failed"),
        }
    }

    /// An agent's report: record it through Raft, then acknowledge it.
    pub(crate) async fn on_experiment_report(
        &self,
        host: &HostName,
        report: ExperimentReport,
        tx: &mpsc::UnboundedSender<CoordinatorMsg>,
    ) {
        let (boot, seq) = (report.boot, report.seq);
        let units: usize = report.experiments.iter().map(|e| e.units.len()).sum();
        let cmd = Command::RecordExperimentReport { host: host.clone(), report, at: SystemTime::now() };
        match self.consensus.propose(cmd).await {
            Ok(_) => {
                debug!(seq, units, "experiment report recorded");
                let _ = tx.send(CoordinatorMsg::ExperimentReportAck { boot, seq });
            }
            // Not acknowledged: the agent sends it again, here or to the next leader.
            Err(e) => warn!(seq, error = %e, "experiment report not recorded; the agent will send it again"),
        }
    }
}
