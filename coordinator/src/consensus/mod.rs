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

mod bootstrap;
mod node;
mod slog_bridge;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use fifty_shared::wire::PeerInfo;
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
    Propose { data: Vec<u8>, reply: oneshot::Sender<Result<ApplyOutcome, ConsensusError>> },
    AddMember { member: MemberRecord, reply: oneshot::Sender<Result<ApplyOutcome, ConsensusError>> },
    RemoveMember { id: u64, reply: oneshot::Sender<Result<ApplyOutcome, ConsensusError>> },
    ReadIndex { reply: oneshot::Sender<Result<(), ConsensusError>> },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotSent { to: u64, ok: bool },
}

/// The result of applying one entry.
pub(crate) type ApplyOutcome = Result<Applied, Rejection>;

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
            }),
        }
    }

    /// Forms or joins the cluster as `membership` says, then runs the Raft loop on its own
    /// thread. Returns once the loop runs.
    pub async fn start(&self, membership: Membership, options: node::Options) -> anyhow::Result<()> {
        let log = RaftLog::new(self.inner.store.clone());
        bootstrap::prepare(&log, &self.inner.me, &membership, &self.inner.transport).await?;
        let rx = self.inner.inbox_rx.lock().expect("inbox lock").take().expect("start is called once");
        node::spawn(self.inner.id, log, rx, self.inner.status_tx.clone(), self.inner.transport.clone(), options)?;
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
        let data = fifty_shared::codec::to_bytes(&cmd)
            .map_err(|source| StoreError::Encode { key: "command".into(), source })?;
        self.ask(|reply| Input::Propose { data, reply }, PROPOSE_TIMEOUT).await
    }

    /// Waits until this node's state reflects every write committed before the call (Raft
    /// ReadIndex: the leader confirms with a quorum that it still leads).
    pub async fn read_barrier(&self) -> Result<(), ConsensusError> {
        self.ensure_leader()?;
        self.ask(|reply| Input::ReadIndex { reply }, READ_TIMEOUT).await
    }

    /// Adds a coordinator as a voter (a Raft configuration change), on the leader.
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
