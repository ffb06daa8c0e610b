//! Where decisions become durable and agreed: a Raft group of coordinators (tikv's raft-rs),
//! each keeping its log and state in sled (`store`).
//!
//! [`Consensus`] is the handle the rest of the coordinator uses: `propose` a [`Command`] and get
//! the state machine's answer once the entry is committed, applied and flushed on this node;
//! `read_barrier` before a linearizable read; `status` for who leads. Behind it:
//! - `node`: the Ready loop on its own thread (tick, step, persist + flush, send, apply);
//! - `transport`: QUIC links to the other coordinators (Raft messages, streamed snapshots);
//! - `bootstrap`: forming a new cluster from `bootstrap_expect` peers, or joining one;
//! - `slog_bridge`: raft-rs logs into `tracing`.
//!
//! Decisions go through here; observations (heartbeats) never do.

pub(crate) mod bootstrap;
mod node;
#[cfg(test)]
mod sim;
mod slog_bridge;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use fifty_shared::wire::{PeerInfo, PeerRequest, PeerResponse};
use raft::eraftpb::Message;
use tokio::sync::{oneshot, watch};

use crate::state::{Applied, Command, MemberRecord, Rejection};
use crate::store::raft_log::RaftLog;
use crate::store::{Store, StoreError};

pub use bootstrap::Membership;

/// How long a proposal may take to commit before the caller is told the outcome is unknown.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a linearizable read may wait for the leader to confirm it still leads.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest encoded command the leader proposes. Replication wraps an entry in its context,
/// a Raft message and a peer frame, all of which must fit one frame (`codec::MAX_FRAME`); the
/// 64 KiB of headroom is far more than that wrapping (a test checks the largest command
/// encodes). A larger command is refused before it is proposed: one it could not replicate
/// would be resent forever.
pub const MAX_COMMAND: usize = fifty_shared::codec::MAX_FRAME - 64 * 1024;

/// Why a proposal or read could not be served here.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// This node is not the leader; ask the leader (if known).
    #[error("this coordinator is not the leader")]
    NotLeader {
        /// The leader, if one is known.
        leader: Option<MemberRecord>,
    },
    /// No leader is elected right now.
    #[error("no coordinator is leader right now (election in progress or no quorum); retry shortly")]
    NoLeader,
    /// The entry was not committed in time; it may or may not be applied later.
    #[error("the decision was not committed within {0:?} (leader changed or quorum lost); its outcome is unknown")]
    Timeout(Duration),
    /// The Raft loop stopped (storage failure or shutdown).
    #[error("the consensus loop is not running")]
    Stopped,
    /// A voter's binary is too old for this kind of command (a rolling upgrade is under way).
    #[error(
        "coordinator {node:016x} understands commands up to version {has}, this one needs {needs}: \
         upgrade every coordinator first (README: Upgrading)"
    )]
    NotUpgraded {
        /// The voter.
        node: u64,
        /// The version it reported (0: it did not answer).
        has: u32,
        /// The command's version.
        needs: u32,
    },
    /// Another configuration change is not yet applied; raft-rs takes one at a time.
    #[error("a configuration change is in progress; retry")]
    ConfChangeInProgress,
    /// The command is larger than one entry may be.
    #[error("the request makes a decision of {size} bytes; the cluster takes at most {max} bytes in one decision")]
    TooLarge {
        /// Its encoded size.
        size: usize,
        /// [`MAX_COMMAND`].
        max: usize,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one node knows about the group, published by the Raft loop after every step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node's id.
    pub id: u64,
    /// The leader's id (0: none known).
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Voters in the configuration.
    pub voters: Vec<u64>,
    /// Learners in the configuration: coordinators catching up before they vote.
    pub learners: Vec<u64>,
    /// On the leader: each peer's matched index.
    pub matched: Vec<(u64, u64)>,
}

impl RaftStatus {
    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.id != 0 && self.leader_id == self.id
    }
}

/// Inputs to the Raft loop.
pub(crate) enum Input {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<ApplyOutcome, ConsensusError>>,
    },
    AddMember {
        member: MemberRecord,
        reply: oneshot::Sender<Result<ApplyOutcome, ConsensusError>>,
    },
    RemoveMember {
        id: u64,
        reply: oneshot::Sender<Result<ApplyOutcome, ConsensusError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<(), ConsensusError>>,
    },
    /// Copy the state between two applies, for a backup.
    CopyState {
        reply: oneshot::Sender<Result<crate::store::raft_log::StateImage, ConsensusError>>,
    },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotSent {
        to: u64,
        ok: bool,
    },
    /// Fault injection (`fault_injection = true` only): make the Raft loop fail as it could.
    Fault(Fault),
}

/// Failures the Raft loop can be made to suffer, to test that each ends the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The Raft thread panics (as raft-rs does on some storage errors).
    Panic,
    /// The leader proposes an entry no coordinator can decode (as a newer binary's command
    /// would look to an older one).
    Undecodable,
    /// This coordinator writes a record to its own state outside the log (as a damaged disk or
    /// a bug could), so its state differs from the others'.
    Diverge,
}

/// The result of applying one entry.
pub(crate) type ApplyOutcome = Result<Applied, Rejection>;

/// The digests this node took at its most recent checkpoints (`Command::Checkpoint`), by index.
#[derive(Default)]
pub(crate) struct Checkpoints {
    recent: std::sync::Mutex<std::collections::VecDeque<(u64, String)>>,
}

impl Checkpoints {
    /// How many checkpoints a node remembers.
    const KEEP: usize = 32;

    pub(crate) fn record(&self, index: u64, digest: &str) {
        let mut recent = self.recent.lock().expect("checkpoints lock");
        if recent.len() == Self::KEEP {
            recent.pop_front();
        }
        recent.push_back((index, digest.to_string()));
    }

    fn get(&self, index: u64) -> Option<String> {
        let recent = self.recent.lock().expect("checkpoints lock");
        recent.iter().find(|(i, _)| *i == index).map(|(_, d)| d.clone())
    }
}

/// One coordinator's answer about its state at a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestAnswer {
    /// Its applied index when it answered.
    pub applied: u64,
    /// Its state's digest right after the checkpoint, if it applied it and still remembers it.
    pub digest: Option<String>,
}

/// The handle: cheap to clone.
#[derive(Clone)]
pub struct Consensus {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    me: PeerInfo,
    store: Store,
    inbox: std::sync::mpsc::Sender<Input>,
    inbox_rx: std::sync::Mutex<Option<std::sync::mpsc::Receiver<Input>>>,
    status: watch::Receiver<RaftStatus>,
    status_tx: watch::Sender<RaftStatus>,
    transport: Arc<transport::Transport>,
    checkpoints: Arc<Checkpoints>,
    /// Each voter's `STATE_VERSION`, as it last reported it, and when.
    versions: std::sync::Mutex<std::collections::HashMap<u64, (u32, std::time::Instant)>>,
}

impl Consensus {
    /// A handle for node `me` over `store`. Nothing runs until [`Consensus::start`]; inputs that
    /// arrive before then wait in the inbox.
    pub fn new(store: Store, me: PeerInfo, transport: Arc<transport::Transport>) -> Self {
        let (inbox, rx) = std::sync::mpsc::channel();
        transport.attach(inbox.clone());
        let (status_tx, status) = watch::channel(RaftStatus { id: me.node_id, ..Default::default() });
        Self {
            inner: Arc::new(Inner {
                id: me.node_id,
                me,
                store,
                inbox,
                inbox_rx: std::sync::Mutex::new(Some(rx)),
                status,
                status_tx,
                transport,
                checkpoints: Arc::default(),
                versions: Default::default(),
            }),
        }
    }

    /// Forms or joins the cluster as `membership` says, then runs the Raft loop on its own
    /// thread. Returns once the loop runs.
    pub async fn start(&self, membership: Membership, options: node::Options) -> anyhow::Result<()> {
        let log = RaftLog::new(self.inner.store.clone());
        bootstrap::prepare(&log, &self.inner.me, &membership, &self.inner.transport).await?;
        let rx = self.inner.inbox_rx.lock().expect("inbox lock").take().expect("start is called once");
        let checkpoints = self.inner.checkpoints.clone();
        node::spawn(
            self.inner.id,
            log,
            rx,
            self.inner.status_tx.clone(),
            self.inner.transport.clone(),
            checkpoints,
            options,
        )?;
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// This node's addresses.
    pub fn me(&self) -> &PeerInfo {
        &self.inner.me
    }

    /// The applied state, for reads.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The latest status.
    pub fn status(&self) -> RaftStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that changes whenever the status does.
    pub fn watch(&self) -> watch::Receiver<RaftStatus> {
        self.inner.status.clone()
    }

    /// The peer transport.
    pub fn transport(&self) -> &Arc<transport::Transport> {
        &self.inner.transport
    }

    /// The leader's record, if a leader is known and is in the member table.
    pub fn leader(&self) -> Option<MemberRecord> {
        let status = self.status();
        if status.leader_id == 0 {
            return None;
        }
        self.inner.store.members().ok()?.into_iter().find(|m| m.id == status.leader_id)
    }

    /// `Ok` if this node leads now; otherwise who does (if anyone).
    pub fn ensure_leader(&self) -> Result<(), ConsensusError> {
        let status = self.status();
        match status.leader_id {
            _ if status.is_leader() => Ok(()),
            0 => Err(ConsensusError::NoLeader),
            _ => Err(ConsensusError::NotLeader { leader: self.leader() }),
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ConsensusError>>) -> Input,
        timeout: Duration,
    ) -> Result<T, ConsensusError> {
        let (tx, rx) = oneshot::channel();
        self.inner.inbox.send(make(tx)).map_err(|_| ConsensusError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ConsensusError::Stopped),
            Err(_) => Err(ConsensusError::Timeout(timeout)),
        }
    }

    /// Proposes `cmd` on the leader and returns the state machine's answer once the entry is
    /// committed, applied here and flushed to disk.
    pub async fn propose(&self, cmd: Command) -> Result<Result<Applied, Rejection>, ConsensusError> {
        self.ensure_leader()?;
        let data = encode_command(&cmd)?;
        self.check_versions(cmd.since()).await?;
        self.ask(|reply| Input::Propose { data, reply }, PROPOSE_TIMEOUT).await
    }

    /// Refuses a kind of command some voter's binary would not understand. Every coordinator
    /// understands the first version, so today's commands ask nobody.
    async fn check_versions(&self, needs: u32) -> Result<(), ConsensusError> {
        if needs <= 1 {
            return Ok(());
        }
        let members = self.inner.store.members()?;
        let mut reported = Vec::new();
        for id in self.status().voters {
            if id == self.inner.id {
                reported.push((id, crate::state::STATE_VERSION));
                continue;
            }
            let cached = self.inner.versions.lock().expect("versions lock").get(&id).copied();
            let version = match cached {
                Some((v, at)) if at.elapsed() < Duration::from_secs(30) => v,
                _ => {
                    let addr = members.iter().find(|m| m.id == id).map(|m| m.quic_addr.clone());
                    let hello = PeerRequest::Hello(self.inner.me.clone());
                    let v = match addr {
                        Some(addr) => match self.inner.transport.request(&addr, &hello).await {
                            Ok(PeerResponse::Hello { state_version, .. }) => state_version,
                            _ => 0,
                        },
                        None => 0,
                    };
                    self.inner.versions.lock().expect("versions lock").insert(id, (v, std::time::Instant::now()));
                    v
                }
            };
            reported.push((id, version));
        }
        version_gate(&reported, needs)
    }

    /// Proposes a checkpoint and returns its index and this node's state digest right after it.
    pub async fn checkpoint(&self) -> Result<(u64, String), ConsensusError> {
        let cmd = Command::Checkpoint { at: std::time::SystemTime::now() };
        match self.propose(cmd).await? {
            Ok(Applied::Checkpoint { index, digest }) => Ok((index, digest)),
            other => unreachable!("a checkpoint is always applied as one: {other:?}"),
        }
    }

    /// This node's digest at checkpoint `index`, waiting up to `wait` for it to apply that far.
    pub async fn digest_at(&self, index: u64, wait: Duration) -> DigestAnswer {
        let mut status = self.watch();
        let _ = tokio::time::timeout(wait, status.wait_for(|s| s.applied >= index)).await;
        DigestAnswer { applied: self.status().applied, digest: self.inner.checkpoints.get(index) }
    }

    /// Makes the Raft loop suffer `fault` (fault injection only: the API checks the config).
    pub fn inject_fault(&self, fault: Fault) -> Result<(), ConsensusError> {
        self.inner.inbox.send(Input::Fault(fault)).map_err(|_| ConsensusError::Stopped)
    }

    /// Waits until this node's state reflects every write committed before the call (Raft
    /// ReadIndex: the leader confirms with a quorum that it still leads).
    pub async fn read_barrier(&self) -> Result<(), ConsensusError> {
        self.ensure_leader()?;
        self.ask(|reply| Input::ReadIndex { reply }, READ_TIMEOUT).await
    }

    /// A consistent copy of this node's state at its applied index (a backup's contents), taken
    /// on the Raft thread between two applies. On the leader, every write acknowledged before
    /// the call is in it (a read barrier comes first); a follower's copy is its own state, which
    /// may lag the leader's by the entries it has not applied yet.
    pub async fn state_image(&self) -> Result<crate::store::raft_log::StateImage, ConsensusError> {
        if self.status().is_leader() {
            self.read_barrier().await?;
        }
        self.ask(|reply| Input::CopyState { reply }, READ_TIMEOUT).await
    }

    /// Answers a coordinator asking to join (`PeerRequest::Join`/`JoinReplacing`), on the leader:
    /// adds it as a learner (the Raft loop makes it a voter once it has caught up). A member
    /// listed at its address under another id means its data dir was lost: without `replace`
    /// that is refused with the recovery; with it, that member is removed first — only if its
    /// address no longer answers as that member, so a running coordinator is never replaced.
    pub async fn join(&self, info: PeerInfo, replace: bool) -> PeerResponse {
        self.inner.transport.learn(info.node_id, &info.quic_addr);
        match self.admit(&info, replace).await {
            Ok(Ok(())) => match self.inner.store.members() {
                Ok(members) => PeerResponse::Joined { members: members.into_iter().map(peer_info).collect() },
                Err(e) => PeerResponse::Refused { reason: e.to_string() },
            },
            Ok(Err(reason)) => PeerResponse::Refused { reason },
            Err(ConsensusError::NotLeader { leader }) => {
                PeerResponse::NotLeader { leader: leader.map(|l| l.quic_addr) }
            }
            Err(ConsensusError::NoLeader) => PeerResponse::NotLeader { leader: None },
            Err(e @ (ConsensusError::ConfChangeInProgress | ConsensusError::Timeout(_))) => {
                PeerResponse::Retry { reason: e.to_string() }
            }
            Err(e) => PeerResponse::Refused { reason: e.to_string() },
        }
    }

    /// The configuration changes behind [`Consensus::join`]; `Ok(Err(why))` is a refusal.
    async fn admit(&self, info: &PeerInfo, replace: bool) -> Result<Result<(), String>, ConsensusError> {
        self.ensure_leader()?;
        let status = self.status();
        if status.voters.contains(&info.node_id) || status.learners.contains(&info.node_id) {
            // A join retried after its answer was lost: already done.
            return Ok(Ok(()));
        }
        let members: Vec<PeerInfo> = self.inner.store.members()?.into_iter().map(peer_info).collect();
        if let Some(old) = bootstrap::same_address(&members, info) {
            if !replace {
                return Ok(Err(bootstrap::lost_data_dir(&old, info, &self.inner.me.quic_addr)));
            }
            let hello = PeerRequest::Hello(self.inner.me.clone());
            if let Ok(PeerResponse::Hello { info: there, .. }) =
                self.inner.transport.request(&old.quic_addr, &hello).await
            {
                if there.node_id == old.node_id {
                    return Ok(Err(format!(
                        "coordinator {:016x} still answers at {}: it is running, so it is not replaced; stop it \
                         (or give the new coordinator another address) first",
                        old.node_id, old.quic_addr
                    )));
                }
            }
            tracing::warn!(
                old = format!("{:016x}", old.node_id),
                new = format!("{:016x}", info.node_id),
                quic = %info.quic_addr,
                "replacing a coordinator whose data dir was lost: removing the old member, then adding the new one"
            );
            if let Err(rejection) = self.remove_member(old.node_id).await? {
                return Ok(Err(rejection.to_string()));
            }
        }
        let member =
            MemberRecord { id: info.node_id, quic_addr: info.quic_addr.clone(), http_addr: info.http_addr.clone() };
        Ok(self.add_member(member).await?.map(|_| ()).map_err(|r| r.to_string()))
    }

    /// Adds a coordinator as a learner (a Raft configuration change), on the leader; the Raft
    /// loop promotes it to voter once it has caught up.
    pub async fn add_member(&self, member: MemberRecord) -> Result<Result<Applied, Rejection>, ConsensusError> {
        self.ensure_leader()?;
        self.ask(|reply| Input::AddMember { member, reply }, PROPOSE_TIMEOUT).await
    }

    /// Removes a coordinator from the configuration, on the leader.
    pub async fn remove_member(&self, id: u64) -> Result<Result<Applied, Rejection>, ConsensusError> {
        self.ensure_leader()?;
        self.ask(|reply| Input::RemoveMember { id, reply }, PROPOSE_TIMEOUT).await
    }

    /// Hands a Raft message from a peer to the loop.
    pub(crate) fn step(&self, msg: Message) {
        let _ = self.inner.inbox.send(Input::Step(Box::new(msg)));
    }

    /// Whether this node belongs to a cluster yet (for bootstrap discovery): its conf state,
    /// written at genesis or by a snapshot, is on disk.
    pub fn initialized(&self) -> bool {
        RaftLog::new(self.inner.store.clone()).initialized().unwrap_or(false)
    }
}

pub use node::Options;

fn peer_info(m: MemberRecord) -> PeerInfo {
    PeerInfo { node_id: m.id, quic_addr: m.quic_addr, http_addr: m.http_addr }
}

/// The first voter whose reported version is below `needs`. A voter that did not answer (0)
/// does not hold the cluster back: a coordinator that is down must not stop new kinds of
/// decisions (a release's artifact, say) while a quorum goes on. Should it come back still
/// running the older binary, it stops at the first entry it cannot decode, saying to upgrade it.
fn first_behind(reported: &[(u64, u32)], needs: u32) -> Option<(u64, u32)> {
    reported.iter().copied().find(|(_, has)| *has != 0 && *has < needs)
}

/// The leader's answer to a command that `needs` a state version, given what each voter
/// `reported`: refused while one that answers is older.
fn version_gate(reported: &[(u64, u32)], needs: u32) -> Result<(), ConsensusError> {
    match first_behind(reported, needs) {
        Some((node, has)) => Err(ConsensusError::NotUpgraded { node, has, needs }),
        None => Ok(()),
    }
}

/// Encodes a command for the log, refusing one larger than [`MAX_COMMAND`].
fn encode_command(cmd: &Command) -> Result<Vec<u8>, ConsensusError> {
    let data = match fifty_shared::codec::to_bytes(cmd) {
        Ok(data) => data,
        Err(fifty_shared::codec::CodecError::TooLarge { len, .. }) => {
            return Err(ConsensusError::TooLarge { size: len, max: MAX_COMMAND })
        }
        Err(source) => return Err(StoreError::Encode { key: "command".into(), source }.into()),
    };
    if data.len() > MAX_COMMAND {
        return Err(ConsensusError::TooLarge { size: data.len(), max: MAX_COMMAND });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TokenRecord;
    use fifty_shared::wire::PeerFrame;
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, MessageType};

    fn token_with_description(len: usize) -> Command {
        Command::CreateToken(TokenRecord {
            hash: "h".repeat(64),
            accessor: "a".repeat(16),
            role: fifty_shared::ids::Role::Read,
            description: "d".repeat(len),
            created_at: std::time::SystemTime::UNIX_EPOCH,
            expires_at: None,
            max_uses: None,
            uses: 0,
            revoked: false,
        })
    }

    /// A newer kind of command waits for every voter's binary; today's go everywhere.
    #[test]
    fn a_newer_command_waits_for_every_voter() {
        let cmd = Command::Checkpoint { at: std::time::SystemTime::UNIX_EPOCH };
        assert_eq!(cmd.since(), 1);
        assert!(cmd.since() <= crate::state::STATE_VERSION);
        let voters = [(1, 2), (2, 1), (3, 2)];
        assert_eq!(first_behind(&voters, 2), Some((2, 1)), "node 2 still runs the older binary");
        assert_eq!(first_behind(&voters, 1), None);
        assert_eq!(first_behind(&[(1, 2), (2, 0)], 2), None, "a voter that is down does not hold the cluster back");
    }

    /// An experiment with scheduled looks is created by state version 4's command: refused with
    /// "upgrade every coordinator first" while a voter reports version 3 (which could not decode
    /// it), proposed once all do. One without a schedule has the version 1 command to fall back
    /// on (`Coordinator::create_experiment`), which every voter reads.
    #[test]
    fn a_scheduled_experiment_waits_for_every_voter_on_version_4() {
        let rec = crate::experiments::ExperimentRecord {
            name: "checkout".into(),
            salt: "salt".into(),
            variants: vec!["control".into(), "new".into()],
            weights: vec![50, 50],
            initial_weights: vec![50, 50],
            slots: fifty_shared::experiment::initial_slots(&[50, 50]),
            hosts: "*".into(),
            metric: "conversion".into(),
            created_at: std::time::SystemTime::UNIX_EPOCH,
            created_by: "test".into(),
            ramps: vec![],
            stopped: None,
        };
        let every = Duration::from_secs(86_400);
        let schedule = Some(crate::experiments::Schedule { looks: 14, every });
        let scheduled = Command::CreateExperimentV4 { experiment: rec.clone(), schedule };
        assert_eq!(scheduled.since(), 4);
        assert!(crate::state::STATE_VERSION >= 4);
        let mixed = [(1, 4), (2, 3), (3, 4)];
        let err = version_gate(&mixed, scheduled.since()).expect_err("node 2 still runs version 3");
        assert!(matches!(err, ConsensusError::NotUpgraded { node: 2, has: 3, needs: 4 }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("upgrade every coordinator first") && msg.contains("version 3"), "{msg}");
        assert!(version_gate(&mixed, Command::CreateExperiment(rec).since()).is_ok(), "the old command goes");
        assert!(version_gate(&[(1, 4), (2, 4), (3, 4)], scheduled.since()).is_ok());
    }

    /// The largest command the leader accepts still replicates: wrapped in its entry (with the
    /// largest context a proposal carries), a Raft append message and a peer frame, it fits one
    /// frame. One byte more is refused before it is proposed.
    #[test]
    fn the_largest_command_fits_one_replication_frame() {
        let probe = MAX_COMMAND - 1000;
        let overhead = encode_command(&token_with_description(probe)).expect("under the cap").len() - probe;
        let len = MAX_COMMAND - overhead;
        let data = encode_command(&token_with_description(len)).expect("exactly the cap");
        assert_eq!(data.len(), MAX_COMMAND);
        let mut entry = Entry::default();
        entry.index = u64::MAX;
        entry.term = u64::MAX;
        entry.data = data.into();
        entry.context =
            node::proposal_context(node::Proposer { node: u64::MAX, boot: u64::MAX, proposal: u64::MAX }, &[]).into();
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgAppend);
        msg.to = u64::MAX;
        msg.from = u64::MAX;
        msg.term = u64::MAX;
        msg.log_term = u64::MAX;
        msg.index = u64::MAX;
        msg.commit = u64::MAX;
        msg.entries = vec![entry].into();
        let frame = PeerFrame::Raft(msg.write_to_bytes().expect("encode"));
        fifty_shared::codec::to_bytes(&frame).expect("the largest command's append message fits a frame");

        let too_large = encode_command(&token_with_description(len + 1)).expect_err("one byte over the cap");
        assert!(matches!(too_large, ConsensusError::TooLarge { max: MAX_COMMAND, .. }), "{too_large}");
    }
}
