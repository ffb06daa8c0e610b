//! The Raft loop, written out plainly after raft-rs's `five_mem_node`: one thread owns the
//! `RawNode` and the state machine. Each turn it takes inputs (proposals, peer messages, reads) —
//! all that wait, up to one bounded batch — ticks every 100 ms, and handles one Ready in this order
//! (`Node::on_ready`):
//!
//! 1. send the messages raft-rs allows out at once (a leader's appends), so followers write their
//!    copies while the leader writes its own;
//! 2. install a received snapshot (state, conf state and log replaced in one batch);
//! 3. write the new entries and the hard state into sled, one batch for the whole Ready;
//! 4. apply committed entries (each command with its applied index, atomically), then answer
//!    the clients waiting for them — a committed entry is already flushed here and on a quorum;
//! 5. **flush** once (when there are entries, a snapshot, or a new term or vote), post the flushed
//!    mark, and only then send the persisted messages (acknowledgements, votes), so nothing we
//!    promised is lost by a crash;
//! 6. answer reads whose ReadIndex is applied; compact the log past the snapshot threshold.
//!
//! A storage failure stops the process: a node that cannot persist must not vote or lead.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Message};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use super::transport::Transport;
use super::{ApplyOutcome, Checkpoints, ConsensusError, Fault, Input, RaftStatus};
use crate::state::{Applied, Command, Machine, MemberRecord, Rejection};
use crate::store::raft_log::RaftLog;
use crate::store::{Batch, StoreError};

const TICK: Duration = Duration::from_millis(100);

/// Tuning of the Raft loop.
#[derive(Clone, Debug)]
pub struct Options {
    /// Compact the log once it holds more than this many entries.
    pub snapshot_threshold: u64,
    /// One turn of the loop takes at most this many new entries (proposals, and entries in
    /// messages from the leader) into its Ready; the rest wait for the next turn.
    pub max_batch_entries: usize,
    /// ... and at most this many bytes of them (an input larger than this alone still goes, alone).
    /// Also the most bytes of committed entries one Ready hands over to apply.
    pub max_batch_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        // 256 entries, 1 MiB: 32 clients fill an eighth of a batch, and a full batch is one
        // sled write and fsync of about a frame's size (`codec::MAX_FRAME`).
        Self { snapshot_threshold: 10_000, max_batch_entries: 256, max_batch_bytes: 1 << 20 }
    }
}

/// The most inputs one turn takes, whatever they are (heartbeats, answers, reads).
const MAX_INPUTS_PER_TURN: usize = 1024;

/// What one turn of the loop has taken so far, against `Options`' bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Taken {
    pub inputs: usize,
    pub entries: usize,
    pub bytes: usize,
}

impl Taken {
    /// The new entries an input brings into the next Ready, and their bytes.
    fn weigh(input: &Input) -> (usize, usize) {
        match input {
            Input::Propose { data, .. } => (1, data.len() + CONTEXT_HEADER),
            Input::Step(msg) => (msg.entries.len(), msg.entries.iter().map(|e| e.data.len() + e.context.len()).sum()),
            _ => (0, 0),
        }
    }

    /// Whether `input` fits beside what is taken. The first input of a turn always fits, so
    /// an input over the bounds on its own still goes (alone).
    fn fits(&self, input: &Input, options: &Options) -> bool {
        let (entries, bytes) = Self::weigh(input);
        self.inputs == 0
            || (self.inputs < MAX_INPUTS_PER_TURN
                && self.entries + entries <= options.max_batch_entries
                && self.bytes + bytes <= options.max_batch_bytes)
    }

    fn add(&mut self, input: &Input) {
        let (entries, bytes) = Self::weigh(input);
        self.inputs += 1;
        self.entries += entries;
        self.bytes += bytes;
    }
}

/// Why the Raft loop stops the process: going on would risk forgetting or diverging.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fatal {
    /// Storage failed: a node that cannot persist must not vote or lead.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A committed entry is not a command this binary knows.
    #[error(
        "committed entry {index} does not decode ({error}): it was most likely written by a newer \
         version of fifty; upgrade this coordinator's binary and start it again (README: Upgrading)"
    )]
    Undecodable {
        /// The entry's index.
        index: u64,
        /// What the codec said.
        error: String,
    },
}

type Reply = oneshot::Sender<Result<ApplyOutcome, ConsensusError>>;
type ReadReply = oneshot::Sender<Result<(), ConsensusError>>;

/// Where a Ready's messages go: the QUIC transport, or the simulation's network.
pub(super) trait Outbox: Send {
    /// Sends (or queues) the messages; never blocks.
    fn send(&self, messages: Vec<Message>);
}

impl Outbox for Arc<Transport> {
    fn send(&self, messages: Vec<Message>) {
        Transport::send(self, messages)
    }
}

pub(super) struct Node {
    id: u64,
    raw: RawNode<RaftLog>,
    log: RaftLog,
    machine: Machine,
    outbox: Box<dyn Outbox>,
    status: watch::Sender<RaftStatus>,
    checkpoints: Arc<Checkpoints>,
    options: Options,
    /// Random for each start of the process: entries proposed before a restart carry another
    /// boot id, so a re-elected leader never answers a new proposal with an old entry's outcome.
    boot: u64,
    next_proposal: u64,
    /// Proposals made here, by id, waiting for their entry to apply.
    proposals: HashMap<u64, (Reply, Instant)>,
    /// Reads waiting for their ReadIndex, by context.
    reads: HashMap<Vec<u8>, (ReadReply, Instant)>,
    /// Read contexts not yet handed to raft-rs: a new leader drops ReadIndex requests until it has
    /// committed an entry of its own term, so they wait here until it has.
    deferred_reads: Vec<Vec<u8>>,
    /// Reads whose index is known, waiting for it to apply.
    ready_reads: Vec<(u64, ReadReply)>,
    /// Answers to send once the current batch of entries is applied.
    answers: Vec<(Reply, ApplyOutcome)>,
    /// The term and vote last flushed to disk.
    synced_term_vote: (u64, u64),
    /// Where the loop's time goes, logged at debug level.
    profile: Profile,
    /// An input taken from the inbox that did not fit in the last turn's batch: the next turn's first.
    held: Option<Input>,
    /// The last entry this loop applied.
    last_applied: u64,
}

/// Where the Raft loop's time goes: counts and time per step of a Ready, summed and logged at
/// debug level every 2 s (`RUST_LOG=fifty::consensus::node=debug`), then reset. Measuring costs
/// a few clock reads a Ready.
#[derive(Debug, Default)]
struct Profile {
    since: Option<Instant>,
    /// Turns of the loop that handled a Ready.
    readies: u64,
    /// Proposals taken from the inbox.
    proposals: u64,
    /// Entries appended to the log, and their bytes.
    appended: u64,
    appended_bytes: u64,
    /// Flushes (each an fsync of sled's log).
    flushes: u64,
    /// Committed entries applied.
    applied: u64,
    /// Time writing entries and hard state into sled (no fsync).
    persist: Duration,
    /// Time in flushes.
    flush: Duration,
    /// Time handing messages to the transport.
    send: Duration,
    /// Time applying committed entries (state machine writes, answers).
    apply: Duration,
    /// Time in the whole Ready, the above included.
    total: Duration,
}

impl Profile {
    const EVERY: Duration = Duration::from_secs(2);

    fn maybe_log(&mut self) {
        let since = *self.since.get_or_insert_with(Instant::now);
        let wall = since.elapsed();
        if wall < Self::EVERY {
            return;
        }
        if self.readies > 0 {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let per_s = |n: u64| n as f64 / wall.as_secs_f64();
            tracing::debug!(
                readies_per_s = format!("{:.0}", per_s(self.readies)),
                proposals_per_s = format!("{:.0}", per_s(self.proposals)),
                entries_per_ready = format!("{:.2}", self.appended as f64 / self.readies as f64),
                bytes_per_ready = self.appended_bytes / self.readies,
                flushes_per_s = format!("{:.0}", per_s(self.flushes)),
                applied_per_s = format!("{:.0}", per_s(self.applied)),
                busy_pct = format!("{:.1}", 100.0 * self.total.as_secs_f64() / wall.as_secs_f64()),
                persist_ms_per_ready = format!("{:.3}", ms(self.persist) / self.readies as f64),
                flush_ms_per_flush = format!("{:.3}", ms(self.flush) / self.flushes.max(1) as f64),
                send_ms_per_ready = format!("{:.3}", ms(self.send) / self.readies as f64),
                apply_ms_per_ready = format!("{:.3}", ms(self.apply) / self.readies as f64),
                total_ms_per_ready = format!("{:.3}", ms(self.total) / self.readies as f64),
                "raft loop profile"
            );
        }
        *self = Profile { since: Some(Instant::now()), ..Profile::default() };
    }
}

/// Starts the loop on its own thread.
pub(super) fn spawn(
    id: u64,
    log: RaftLog,
    inbox: Receiver<Input>,
    status: watch::Sender<RaftStatus>,
    transport: Arc<Transport>,
    checkpoints: Arc<Checkpoints>,
    options: Options,
) -> anyhow::Result<()> {
    let outbox = Box::new(transport);
    // 100 ms heartbeats; an election after 1.0-1.5 s of silence (etcd: 100 ms and 1 s).
    let mut node = Node::new(id, log, status, outbox, checkpoints, options, (10, 15), rand::random())?;
    std::thread::Builder::new().name(format!("raft-{id:016x}")).spawn(move || {
        if let Err(e) = node.run(inbox) {
            tracing::error!(error = %e, "the Raft loop cannot go on; stopping this coordinator");
            std::process::exit(70);
        }
    })?;
    Ok(())
}

impl Node {
    /// A node over `log`, restarted from what it holds. `election` is the election timeout's
    /// range in ticks (raft-rs draws it at random within; the simulation makes it one value so
    /// that its seed alone decides the schedule); `boot` tells this start from earlier ones.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: u64,
        log: RaftLog,
        status: watch::Sender<RaftStatus>,
        outbox: Box<dyn Outbox>,
        checkpoints: Arc<Checkpoints>,
        options: Options,
        election: (usize, usize),
        boot: u64,
    ) -> anyhow::Result<Node> {
        let config = raft::Config {
            id,
            election_tick: election.0,
            min_election_tick: election.0,
            max_election_tick: election.1,
            heartbeat_tick: 1,
            applied: log.applied()?,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 512 * 1024,
            max_inflight_msgs: 256,
            max_committed_size_per_ready: options.max_batch_bytes as u64,
            ..Default::default()
        };
        config.validate()?;
        let logger = super::slog_bridge::logger(id);
        let raw = RawNode::new(&config, log.clone(), &logger)?;
        let machine = Machine::new(log.store().clone());
        Ok(Node {
            id,
            raw,
            log,
            machine,
            outbox,
            status,
            checkpoints,
            options,
            boot,
            next_proposal: 1,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            deferred_reads: Vec::new(),
            ready_reads: Vec::new(),
            answers: Vec::new(),
            synced_term_vote: (0, 0),
            profile: Profile::default(),
            held: None,
            last_applied: 0,
        })
    }
}

/// Who proposed an entry: the node, the boot of its process, and the proposal's number in that
/// boot. Only the same node in the same boot waits for an answer to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proposer {
    pub node: u64,
    pub boot: u64,
    pub proposal: u64,
}

/// Bytes of an entry's context before its payload.
pub(crate) const CONTEXT_HEADER: usize = 24;

pub(crate) fn proposal_context(who: Proposer, payload: &[u8]) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(CONTEXT_HEADER + payload.len());
    ctx.extend_from_slice(&who.node.to_be_bytes());
    ctx.extend_from_slice(&who.boot.to_be_bytes());
    ctx.extend_from_slice(&who.proposal.to_be_bytes());
    ctx.extend_from_slice(payload);
    ctx
}

/// Splits an entry's context into its proposer and payload.
pub(crate) fn parse_context(ctx: &[u8]) -> Option<(Proposer, &[u8])> {
    let word = |at: usize| Some(u64::from_be_bytes(ctx.get(at..at + 8)?.try_into().ok()?));
    let who = Proposer { node: word(0)?, boot: word(8)?, proposal: word(16)? };
    Some((who, &ctx[CONTEXT_HEADER..]))
}

impl Node {
    fn run(&mut self, inbox: Receiver<Input>) -> Result<(), Fatal> {
        let mut next_tick = Instant::now() + TICK;
        loop {
            if self.take_inputs(&inbox, next_tick.saturating_duration_since(Instant::now())).is_none() {
                return Ok(());
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + TICK;
            }
            self.process()?;
            self.profile.maybe_log();
        }
    }

    /// Waits up to `wait` for an input, then takes whatever else is waiting, up to one batch
    /// (`Options::max_batch_entries`, `max_batch_bytes`, and 1,024 inputs), so that one Ready —
    /// one sled write, one flush, one round of messages — serves them all. An input that does
    /// not fit is held for the next turn. `None` once the inbox is closed.
    pub(super) fn take_inputs(&mut self, inbox: &Receiver<Input>, wait: Duration) -> Option<Taken> {
        let mut taken = Taken::default();
        let first = match self.held.take() {
            Some(input) => input,
            None => match inbox.recv_timeout(wait) {
                Ok(input) => input,
                Err(RecvTimeoutError::Timeout) => return Some(taken),
                Err(RecvTimeoutError::Disconnected) => return None,
            },
        };
        taken.add(&first);
        self.handle(first);
        while let Ok(input) = inbox.try_recv() {
            if !taken.fits(&input, &self.options) {
                self.held = Some(input);
                break;
            }
            taken.add(&input);
            self.handle(input);
        }
        Some(taken)
    }

    /// One tick of Raft's logical clock (heartbeats, elections), and waiters given up on dropped.
    pub(super) fn tick(&mut self) {
        self.raw.tick();
        self.expire_waiters();
    }

    /// Handles whatever Raft has ready (persist, send, apply, answer) and publishes the status.
    pub(super) fn process(&mut self) -> Result<(), Fatal> {
        if self.raw.has_ready() {
            self.on_ready()?;
        }
        self.promote_caught_up_learners()?;
        self.publish_status();
        Ok(())
    }

    /// Who this node thinks leads, in which term.
    #[cfg(test)]
    pub(super) fn role(&self) -> (StateRole, u64, u64) {
        (self.raw.raft.state, self.raw.raft.term, self.raw.raft.leader_id)
    }

    /// The node's store.
    #[cfg(test)]
    pub(super) fn store(&self) -> &crate::store::Store {
        self.log.store()
    }

    /// Raft's commit index here.
    #[cfg(test)]
    pub(super) fn status_commit(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Raft's applied index here.
    #[cfg(test)]
    pub(super) fn status_applied(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// The configuration this node has applied (voters, learners), and whether a change of it
    /// is still pending.
    #[cfg(test)]
    pub(super) fn conf(&self) -> (Vec<u64>, Vec<u64>, bool) {
        let conf = self.raw.raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        (voters, learners, self.raw.raft.has_pending_conf())
    }

    pub(super) fn handle(&mut self, input: Input) {
        match input {
            Input::Propose { data, reply } => {
                self.profile.proposals += 1;
                let who = self.next_proposer();
                match self.raw.propose(proposal_context(who, &[]), data) {
                    Ok(()) => {
                        self.proposals.insert(who.proposal, (reply, Instant::now()));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "proposal dropped");
                        let _ = reply.send(Err(ConsensusError::NoLeader));
                    }
                }
            }
            Input::AddMember { member, reply } => {
                let payload = match fifty_shared::codec::to_bytes(&member) {
                    Ok(p) => p,
                    Err(_) => return,
                };
                // A new coordinator joins as a learner: it receives the log (or a snapshot) but
                // counts toward no quorum until `promote_caught_up_learners` makes it a voter.
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::AddLearnerNode);
                cc.node_id = member.id;
                self.propose_conf_change(cc, &payload, Some(reply));
            }
            Input::RemoveMember { id, reply } => {
                let conf = self.raw.raft.prs().conf();
                let voters = conf.voters().ids().iter().collect::<Vec<_>>();
                let is_learner = conf.learners().contains(&id);
                if !voters.contains(&id) && !is_learner {
                    let _ = reply.send(Ok(Err(Rejection::UnknownMember(id))));
                    return;
                }
                if !is_learner && voters.len() == 1 {
                    let _ = reply.send(Ok(Err(Rejection::LastMember(id))));
                    return;
                }
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = id;
                self.propose_conf_change(cc, &[], Some(reply));
            }
            Input::ReadIndex { reply } => {
                let ctx = proposal_context(self.next_proposer(), &[]);
                self.reads.insert(ctx.clone(), (reply, Instant::now()));
                self.deferred_reads.push(ctx);
                self.issue_reads();
            }
            Input::CopyState { reply } => {
                let _ = reply.send(self.log.state_image().map_err(ConsensusError::from));
            }
            Input::Step(msg) => {
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "raft message not stepped");
                }
            }
            Input::Unreachable(id) => self.raw.report_unreachable(id),
            Input::SnapshotSent { to, ok } => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.raw.report_snapshot(to, status);
            }
            Input::Fault(Fault::Panic) => panic!("fault injection: the Raft thread panics"),
            Input::Fault(Fault::Diverge) => {
                let mut batch = Batch::default();
                batch.put_token(&crate::state::TokenRecord {
                    accessor: "d1ve4ged00000000".into(),
                    hash: "written-outside-the-log".into(),
                    role: fifty_shared::ids::Role::Read,
                    description: "fault injection: a record no entry wrote".into(),
                    created_at: std::time::SystemTime::UNIX_EPOCH,
                    expires_at: None,
                    max_uses: None,
                    uses: 0,
                    revoked: true,
                });
                if let Err(e) = self.log.store().apply(batch) {
                    tracing::warn!(error = %e, "fault injection: divergence not written");
                }
            }
            Input::Fault(Fault::Undecodable) => {
                let who = self.next_proposer();
                if let Err(e) = self.raw.propose(proposal_context(who, &[]), vec![0xff; 16]) {
                    tracing::warn!(error = %e, "fault injection: undecodable entry not proposed");
                }
            }
        }
    }

    fn next_proposer(&mut self) -> Proposer {
        let proposal = self.next_proposal;
        self.next_proposal += 1;
        Proposer { node: self.id, boot: self.boot, proposal }
    }

    /// Hands the waiting reads to raft-rs once this node leads and has committed in its term
    /// (before that raft-rs would drop them silently). Reads on a node that does not lead wait
    /// until it does or their caller gives up.
    fn issue_reads(&mut self) {
        if self.deferred_reads.is_empty()
            || self.raw.raft.state != StateRole::Leader
            || !self.raw.raft.commit_to_current_term()
        {
            return;
        }
        for ctx in std::mem::take(&mut self.deferred_reads) {
            if self.reads.contains_key(&ctx) {
                self.raw.read_index(ctx);
            }
        }
    }

    /// Proposes a configuration change, one at a time: raft-rs turns a change proposed while
    /// another is pending into an empty entry (its proposer would wait for nothing), so that is
    /// refused here with an answer the caller can retry on.
    fn propose_conf_change(&mut self, cc: ConfChange, payload: &[u8], reply: Option<Reply>) {
        if self.raw.raft.state != StateRole::Leader {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ConsensusError::NoLeader));
            }
            return;
        }
        if self.raw.raft.has_pending_conf() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ConsensusError::ConfChangeInProgress));
            }
            return;
        }
        let who = self.next_proposer();
        match self.raw.propose_conf_change(proposal_context(who, payload), cc) {
            Ok(()) => {
                if let Some(reply) = reply {
                    self.proposals.insert(who.proposal, (reply, Instant::now()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "configuration change not proposed");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(ConsensusError::NoLeader));
                }
            }
        }
    }

    /// On the leader: makes a learner a voter once its log has caught up with the commit index,
    /// so a new coordinator never counts toward a quorum while it is still receiving its snapshot.
    /// One change at a time; the next learner waits for the next turn.
    fn promote_caught_up_learners(&mut self) -> Result<(), Fatal> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() {
            return Ok(());
        }
        let committed = raft.raft_log.committed;
        let caught_up = raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .find(|id| raft.prs().get(*id).is_some_and(|pr| pr.matched >= committed));
        let Some(id) = caught_up else { return Ok(()) };
        let member = self.log.store().members()?.into_iter().find(|m| m.id == id);
        let payload = member.and_then(|m| fifty_shared::codec::to_bytes(&m).ok()).unwrap_or_default();
        tracing::info!(node = format!("{id:016x}"), matched = committed, "learner caught up; proposing it as a voter");
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = id;
        self.propose_conf_change(cc, &payload, None);
        Ok(())
    }

    /// Drops waiters the caller has given up on (their oneshot is closed), so the maps stay small.
    fn expire_waiters(&mut self) {
        let limit = super::PROPOSE_TIMEOUT * 2;
        self.proposals.retain(|_, (reply, at)| !reply.is_closed() && at.elapsed() < limit);
        self.reads.retain(|_, (reply, at)| !reply.is_closed() && at.elapsed() < limit);
        let reads = &self.reads;
        self.deferred_reads.retain(|ctx| reads.contains_key(ctx));
    }

    /// Handles one Ready, in raft-rs's order (its `single_mem_node` example), with one sled write
    /// and at most one flush for all of it:
    ///
    /// 1. send `messages` at once: raft-rs puts there only what may leave before this Ready is
    ///    persisted — a leader's appends, so followers write their copies while the leader writes
    ///    its own (Raft thesis §10.2.1); the leader counts itself toward a quorum only once
    ///    `advance` is told its copy is persisted;
    /// 2. install a snapshot, if one came;
    /// 3. write the new entries and the hard state into sled (one batch, no fsync yet), before
    ///    anything applied, so a disk never holds an applied index past its stored commit index;
    /// 4. apply the committed entries and answer their clients: raft-rs hands over only entries
    ///    already persisted here (and committed, so on a quorum's disks);
    /// 5. flush once (if there are entries, a snapshot, or a new term or vote) and post the
    ///    flushed mark, and only then send `persisted_messages` (acknowledgements, votes);
    /// 6. advance; apply what that commits (the leader's own copy now counts).
    fn on_ready(&mut self) -> Result<(), Fatal> {
        let started = Instant::now();
        let mut ready = self.raw.ready();
        self.send(ready.take_messages());
        let sent = Instant::now();
        self.profile.send += sent - started;

        // What must be on disk before this Ready's persisted messages go out: new entries, a
        // snapshot, and the term and vote. A hard state that only moves the commit index is
        // written but need not be waited for (Raft recovers the commit index from its peers),
        // which spares an fsync per acknowledgement.
        let mut must_sync = !ready.entries().is_empty();
        if !ready.snapshot().is_empty() {
            let hs = self.log.hard_state()?;
            self.log.apply_snapshot(ready.snapshot(), &hs)?;
            must_sync = true;
            tracing::info!(index = ready.snapshot().get_metadata().index, "installed a snapshot from the leader");
        }
        let mut batch = Batch::default();
        self.log.append(&mut batch, ready.entries())?;
        self.profile.appended += ready.entries().len() as u64;
        self.profile.appended_bytes += ready.entries().iter().map(|e| e.data.len() as u64).sum::<u64>();
        if let Some(hs) = ready.hs() {
            if (hs.term, hs.vote) != self.synced_term_vote {
                must_sync = true;
                self.synced_term_vote = (hs.term, hs.vote);
            }
            RaftLog::set_hard_state(&mut batch, hs);
        }
        self.log.store().apply(batch)?;
        let persisted = Instant::now();
        self.profile.persist += persisted - sent;

        for rs in ready.take_read_states() {
            if let Some((reply, _)) = self.reads.remove(rs.request_ctx.as_slice()) {
                self.ready_reads.push((rs.index, reply));
            }
        }
        self.apply(ready.take_committed_entries())?;
        self.answer();
        let applied = Instant::now();
        self.profile.apply += applied - persisted;

        if must_sync {
            self.log.flush_and_mark()?;
            self.profile.flushes += 1;
        }
        let flushed = Instant::now();
        self.profile.flush += flushed - applied;
        self.send(ready.take_persisted_messages());
        self.profile.send += flushed.elapsed();

        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.log.hard_state()?;
            hs.commit = commit;
            let mut batch = Batch::default();
            RaftLog::set_hard_state(&mut batch, &hs);
            self.log.store().apply(batch)?;
        }
        self.send(light.take_messages());
        let applying = Instant::now();
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.answer();
        self.profile.apply += applying.elapsed();

        self.maybe_compact()?;
        self.issue_reads();
        self.profile.readies += 1;
        self.profile.total += started.elapsed();
        Ok(())
    }

    /// Answers the proposals whose entries were just applied, and the reads whose index is
    /// applied now. No flush is waited for: an answered entry is committed, so it is already on
    /// this node's disk and a quorum's. Its effects and the applied index, written in one batch,
    /// reach the disk with sled's next flush; after a crash, Raft re-applies any committed
    /// entries past the applied index found on disk, so nothing answered is lost or doubled.
    fn answer(&mut self) {
        for (reply, outcome) in self.answers.drain(..) {
            let _ = reply.send(Ok(outcome));
        }
        // raft-rs moves its applied index at `advance_apply`; what this loop applied is ahead.
        let applied = self.raw.raft.raft_log.applied.max(self.last_applied);
        let (done, waiting): (Vec<_>, Vec<_>) = self.ready_reads.drain(..).partition(|(index, _)| *index <= applied);
        self.ready_reads = waiting;
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
    }

    fn send(&self, messages: Vec<Message>) {
        if !messages.is_empty() {
            self.outbox.send(messages);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        self.profile.applied += entries.len() as u64;
        for entry in entries {
            self.last_applied = entry.index;
            let mut extra = Batch::default();
            RaftLog::set_applied(&mut extra, entry.index);
            let outcome = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    // A new leader's empty entry.
                    self.log.store().apply(extra)?;
                    continue;
                }
                EntryType::EntryNormal => match fifty_shared::codec::from_bytes::<Command>(&entry.data) {
                    Ok(cmd @ Command::Checkpoint { .. }) => {
                        let _ = self.machine.apply(&cmd, extra)?;
                        let digest = self.log.store().state_digest()?;
                        self.checkpoints.record(entry.index, &digest);
                        Ok(Applied::Checkpoint { index: entry.index, digest })
                    }
                    Ok(cmd) => self.machine.apply(&cmd, extra)?,
                    // Skipping it would let this node's state part from the others' (an older
                    // binary meeting a newer kind of command in a rolling upgrade): stop instead,
                    // with the applied index before it, so the upgraded binary applies it.
                    Err(e) => return Err(Fatal::Undecodable { index: entry.index, error: e.to_string() }),
                },
                EntryType::EntryConfChange => self.apply_conf_change(&entry, extra)?,
                EntryType::EntryConfChangeV2 => {
                    self.log.store().apply(extra)?;
                    continue;
                }
            };
            if let Some((who, _)) = parse_context(&entry.context) {
                if who.node == self.id && who.boot == self.boot {
                    if let Some((reply, _)) = self.proposals.remove(&who.proposal) {
                        self.answers.push((reply, outcome));
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry, mut batch: Batch) -> Result<ApplyOutcome, Fatal> {
        let cc = ConfChange::parse_from_bytes(&entry.data)
            .map_err(|e| Fatal::Undecodable { index: entry.index, error: e.to_string() })?;
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(e) => {
                tracing::warn!(index = entry.index, error = %e, "configuration change refused by raft");
                self.log.store().apply(batch)?;
                return Ok(Err(Rejection::UnknownMember(cc.node_id)));
            }
        };
        RaftLog::set_conf_state(&mut batch, &cs);
        match cc.get_change_type() {
            change @ (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode) => {
                let node = format!("{:016x}", cc.node_id);
                let payload = parse_context(&entry.context).map(|(_, p)| p).unwrap_or_default();
                match fifty_shared::codec::from_bytes::<MemberRecord>(payload) {
                    Ok(member) => batch.put_member(&member),
                    // A promotion may carry no addresses: the learner's record is already kept.
                    Err(_) if self.log.store().members()?.iter().any(|m| m.id == cc.node_id) => {}
                    Err(e) => tracing::error!(node, error = %e, "added member carries no addresses"),
                }
                if change == ConfChangeType::AddNode {
                    tracing::info!(node, "coordinator is now a voter");
                } else {
                    tracing::info!(node, "coordinator added to the cluster as a learner");
                }
            }
            ConfChangeType::RemoveNode => {
                tracing::info!(node = format!("{:016x}", cc.node_id), "coordinator removed from the cluster");
                batch.remove_member(cc.node_id);
                if cc.node_id == self.id {
                    tracing::warn!("this coordinator was removed from the cluster; it no longer votes or serves");
                }
            }
        }
        self.log.store().apply(batch)?;
        Ok(Ok(Applied::Done))
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let threshold = self.options.snapshot_threshold;
        if self.log.entry_count()? <= threshold {
            return Ok(());
        }
        // Keep a tail so followers slightly behind catch up from the log, not a snapshot.
        let upto = self.raw.raft.raft_log.applied.saturating_sub(threshold / 4);
        if upto > 0 {
            self.log.compact(upto)?;
            tracing::debug!(upto, "compacted the Raft log");
        }
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let matched = if raft.state == StateRole::Leader {
            raft.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect()
        } else {
            Vec::new()
        };
        let mut voters: Vec<u64> = raft.prs().conf().voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = raft.prs().conf().learners().iter().copied().collect();
        learners.sort_unstable();
        let status = RaftStatus {
            id: self.id,
            leader_id: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            voters,
            learners,
            matched,
        };
        self.status.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use fifty_shared::wire::PeerInfo;

    /// A network that loses everything: the other coordinators never answer.
    struct NoNetwork;

    impl Outbox for NoNetwork {
        fn send(&self, _: Vec<Message>) {}
    }

    fn member(id: u64) -> MemberRecord {
        MemberRecord { id, quic_addr: format!("127.0.0.1:{id}"), http_addr: format!("127.0.0.1:{}", id + 1000) }
    }

    /// A cluster of one (node 1) that leads and has committed in its term.
    fn leading_node() -> (Node, watch::Receiver<RaftStatus>) {
        leading_node_with(Options::default())
    }

    fn leading_node_with(options: Options) -> (Node, watch::Receiver<RaftStatus>) {
        let dir = std::env::temp_dir().join(format!("fifty-node-{}-{}", std::process::id(), rand::random::<u64>()));
        let log = RaftLog::new(Store::open(&dir).expect("open a temp store"));
        let me = PeerInfo { node_id: 1, quic_addr: member(1).quic_addr, http_addr: member(1).http_addr };
        super::super::bootstrap::genesis(&log, &[me]).expect("genesis");
        let (tx, rx) = watch::channel(RaftStatus::default());
        let mut node = Node::new(1, log, tx, Box::new(NoNetwork), Arc::default(), options, (10, 11), 7).expect("node");
        for _ in 0..100 {
            node.tick();
            node.process().expect("process");
            if node.raw.raft.state == StateRole::Leader && !node.raw.raft.has_pending_conf() {
                return (node, rx);
            }
        }
        panic!("a cluster of one did not elect itself");
    }

    /// A new coordinator is added as a learner; a second change proposed before the first is
    /// applied is refused with a retryable answer (raft-rs would turn it into an empty entry and
    /// its proposer would wait for nothing); a learner that has not caught up is not promoted.
    #[test]
    fn members_join_as_learners_one_change_at_a_time() {
        let (mut node, status) = leading_node();
        let (first, mut first_rx) = oneshot::channel();
        node.handle(Input::AddMember { member: member(2), reply: first });
        let (second, mut second_rx) = oneshot::channel();
        node.handle(Input::AddMember { member: member(3), reply: second });
        assert!(
            matches!(second_rx.try_recv(), Ok(Err(ConsensusError::ConfChangeInProgress))),
            "the second change is refused while the first is pending"
        );
        for _ in 0..10 {
            node.process().expect("process");
        }
        assert!(matches!(first_rx.try_recv(), Ok(Ok(Ok(Applied::Done)))), "the first change is applied");
        let s = status.borrow().clone();
        assert_eq!((s.voters.clone(), s.learners.clone()), (vec![1], vec![2]), "node 2 is a learner: {s:?}");
        assert!(node.store().members().expect("members").iter().any(|m| m.id == 2), "its addresses are kept");

        // Node 2 never answers (matched 0): it stays a learner however long the leader runs.
        for _ in 0..30 {
            node.tick();
            node.process().expect("process");
        }
        assert_eq!(status.borrow().learners, vec![2], "a learner that has not caught up is not promoted");

        // Once nothing is pending, the next change goes through.
        let (third, mut third_rx) = oneshot::channel();
        node.handle(Input::AddMember { member: member(3), reply: third });
        for _ in 0..10 {
            node.process().expect("process");
        }
        assert!(matches!(third_rx.try_recv(), Ok(Ok(Ok(Applied::Done)))));
        assert_eq!(status.borrow().learners, vec![2, 3]);
    }

    /// A proposal creating a token whose description is `size` bytes long.
    fn propose(size: usize) -> (Input, oneshot::Receiver<Result<ApplyOutcome, ConsensusError>>) {
        let record = crate::state::TokenRecord {
            accessor: format!("{:016x}", rand::random::<u64>()),
            hash: "h".into(),
            role: fifty_shared::ids::Role::Read,
            description: "d".repeat(size),
            created_at: std::time::SystemTime::UNIX_EPOCH,
            expires_at: None,
            max_uses: None,
            uses: 0,
            revoked: false,
        };
        let data = fifty_shared::codec::to_bytes(&Command::CreateToken(record)).expect("encode");
        let (reply, rx) = oneshot::channel();
        (Input::Propose { data, reply }, rx)
    }

    /// Runs turns of the loop until the inbox is empty; returns, for each, how many proposals it
    /// took and how many entries the Ready it handled wrote to the log, checking it handled one.
    fn turns(node: &mut Node, inbox: &Receiver<Input>) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        loop {
            let (appended, readies) = (node.profile.appended, node.profile.readies);
            let taken = node.take_inputs(inbox, Duration::ZERO).expect("the inbox is open");
            if taken.inputs == 0 {
                return out;
            }
            node.process().expect("process");
            assert_eq!(node.profile.readies - readies, 1, "one Ready a turn");
            out.push((taken.entries, node.profile.appended - appended));
        }
    }

    /// One turn takes every waiting proposal into one Ready up to the batch's count; the rest
    /// wait, in order, for the next turns; every proposal is answered.
    #[test]
    fn a_turn_takes_at_most_max_batch_entries() {
        let (mut node, _status) = leading_node_with(Options { max_batch_entries: 10, ..Options::default() });
        let (tx, inbox) = std::sync::mpsc::channel();
        let mut replies = Vec::new();
        for _ in 0..25 {
            let (input, rx) = propose(100);
            tx.send(input).expect("send");
            replies.push(rx);
        }
        assert_eq!(turns(&mut node, &inbox), vec![(10, 10), (10, 10), (5, 5)]);
        for mut rx in replies {
            assert!(matches!(rx.try_recv(), Ok(Ok(Ok(Applied::Done)))), "every proposal is applied and answered");
        }
    }

    /// The batch's bytes are bounded too; a proposal larger than the bound on its own goes
    /// alone rather than never.
    #[test]
    fn a_turn_takes_at_most_max_batch_bytes() {
        let (one, _) = propose(1000);
        let (_, weight) = Taken::weigh(&one);
        let options = Options { max_batch_bytes: 3 * weight, ..Options::default() };
        let (mut node, _status) = leading_node_with(options);
        let (tx, inbox) = std::sync::mpsc::channel();
        let mut replies = Vec::new();
        for size in [1000, 1000, 1000, 1000, 10 * weight, 1000, 1000] {
            let (input, rx) = propose(size);
            tx.send(input).expect("send");
            replies.push(rx);
        }
        let taken = turns(&mut node, &inbox);
        assert_eq!(taken, vec![(3, 3), (1, 1), (1, 1), (2, 2)], "three fit; the big one goes alone");
        for mut rx in replies {
            assert!(matches!(rx.try_recv(), Ok(Ok(Ok(Applied::Done)))), "every proposal is applied and answered");
        }
    }

    /// Entries arriving from a leader count toward the bound as proposals do.
    #[test]
    fn entries_in_messages_weigh_like_proposals() {
        let mut msg = Message::default();
        msg.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
        for _ in 0..3 {
            let mut e = Entry::default();
            e.data = vec![0; 100].into();
            e.context = vec![0; CONTEXT_HEADER].into();
            msg.entries.push(e);
        }
        let step = Input::Step(Box::new(msg));
        assert_eq!(Taken::weigh(&step), (3, 3 * (100 + CONTEXT_HEADER)));
        let options = Options { max_batch_entries: 4, ..Options::default() };
        let one = Taken { inputs: 1, entries: 1, bytes: 10 };
        assert!(one.fits(&step, &options), "1 + 3 entries fit a bound of 4");
        let two = Taken { inputs: 2, entries: 2, bytes: 10 };
        assert!(!two.fits(&step, &options), "2 + 3 do not");
        assert!(
            Taken::default().fits(&step, &Options { max_batch_entries: 1, ..Options::default() }),
            "first always fits"
        );
    }
}
