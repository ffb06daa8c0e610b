//! A deterministic simulation of the coordinators, after FoundationDB's simulator and
//! TigerBeetle's VOPR: 3 or 5 coordinators in one thread, each the real raft-rs `RawNode` in the
//! real Raft loop ([`Node`]) over the real `state::Machine` and sled store on a temp dir, joined
//! by a simulated network that drops, duplicates and reorders messages and cuts nodes off, under
//! simulated time (Raft ticks), with crashes and restarts at any step — a leader restarted at
//! once among them — and torn tails (issue 14 item 9): a crash that leaves the node's disk rolled
//! back to an image of it taken at an earlier step, so that it lost writes it had flushed and
//! acknowledged, while its flushed mark (`raft-mark`, a file of its own) still says what was
//! flushed. The node is then restarted through the real check (`RaftLog::verify`, as `fifty
//! server` does); one that refuses to start is recovered as README's "A damaged disk" says: removed
//! from the cluster, its data dir wiped, joined again under a new id as a learner, and made a voter
//! once caught up. One seed decides the whole schedule (raft-rs draws election timeouts at random,
//! so the simulation gives it a one-value range and staggers nodes by its own ticks instead), so a
//! failing seed replays exactly: `FIFTY_SIM_SEED=N scripts/simulate`.
//!
//! Checked for every schedule:
//! - a proposal answered "done" is applied on the node that answered (its own entry, never an
//!   older entry's outcome) and, once the cluster has settled, on every node exactly once;
//! - two nodes at the same applied index have the same state digest;
//! - at most one leader per term;
//! - a node whose disk lost what it had acknowledged (its last flushed entry, or its term and
//!   vote) never votes for anyone nor acknowledges entries before it holds again a log at least as
//!   up to date as the one it had acknowledged, and the same vote. What `RaftLog::verify` promises
//!   is stronger: such a node does not start at all, and a node whose disk lost nothing it
//!   acknowledged always starts (a refusal of a sound disk is a failure too).
//!
//! The flushed mark is written by a thread of its own at most every 20 ms after a flush; the
//! simulation writes it at each crash as that thread would have within those 20 ms, so that a
//! crash leaves the same file whatever the threads did. A disk that loses only the last 20 ms of
//! flushes goes unnoticed by design (`store/mark.rs`); a torn tail here loses whatever came after
//! its image, which is what the mark promises to catch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{oneshot, watch};

use super::node::{Node, Outbox};
use super::{ApplyOutcome, ConsensusError, Input, Options, RaftStatus};
use crate::state::{Applied, Command, MemberRecord};
use crate::store::raft_log::{OpenError, RaftLog, SnapshotBuild};
use crate::store::{mark, Batch, Store};
use fifty_shared::wire::PeerInfo;

/// What one run simulates.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Coordinators (3 or 5).
    pub nodes: usize,
    /// Steps of the faulty phase (each one event: a delivery, a tick, a proposal, a fault).
    pub steps: usize,
}

/// What a passing run did, for the script's summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Proposals answered "done".
    pub acked: usize,
    /// Proposals made.
    pub proposed: usize,
    /// Crashes (restarts at once included).
    pub crashes: usize,
    /// The highest term reached.
    pub term: u64,
    /// The settled applied index.
    pub applied: u64,
    /// Crashes that rolled the node's disk back (torn tails).
    pub torn: usize,
    /// Restarts refused because the disk lost what the node had acknowledged.
    pub refused: usize,
    /// Coordinators recovered from such a refusal (removed, wiped, joined again as voters).
    pub replaced: usize,
}

/// The writes: each adds a webhook whose URL names the write, so applying it twice would show
/// as two webhooks, and its presence on a node is one lookup.
fn write(n: u64) -> Command {
    Command::AddWebhook {
        url: format!("http://127.0.0.1:9/w{n}"),
        format: crate::notify::Format::Json,
        by: "simulation".into(),
        at: SystemTime::UNIX_EPOCH,
    }
}

/// How many times each write is applied in `store`.
fn writes_in(store: &Store) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for hook in store.webhooks().expect("read the simulated store") {
        if let Some(n) = hook.url.strip_prefix("http://127.0.0.1:9/w").and_then(|n| n.parse().ok()) {
            *seen.entry(n).or_insert(0) += 1;
        }
    }
    seen
}

#[derive(Clone)]
struct Net(Arc<Mutex<Vec<Message>>>);

impl Outbox for Net {
    fn send(&self, messages: Vec<Message>) {
        self.0.lock().expect("simulated outbox").extend(messages);
    }
}

/// One coordinator. A crash drops its `Node` (the Raft loop, its waiting proposals, its boot) and
/// the process's messages not yet sent; its store stays open, since sled cannot be reopened in
/// the same process at once (its background threads still hold the files). An ordinary crash
/// loses nothing on disk (entries and hard state are flushed before any message leaves, and
/// `scripts/torture-storage` kills real processes for that); a torn one replaces the store with
/// a new one, in another directory, holding an earlier image of it and the current mark.
struct Member {
    id: u64,
    store: Store,
    /// The running node's log handle (its clones share the flushed mark's writer).
    log: Option<RaftLog>,
    node: Option<Node>,
    out: Net,
    /// Every record of the store as it was at an earlier step (a prefix of its writes, as sled
    /// opens after losing its tail): what the next torn crash rolls the disk back to.
    image: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Set by a torn crash that lost something the node had acknowledged: what that was.
    lost: Option<Held>,
    /// The node started although its disk lost `Held` (only if the check at start fails to see
    /// it): it must not vote or acknowledge entries until it holds that again.
    forgot: Option<Held>,
    /// The recovery under way after the node refused to start.
    recovery: Option<Recovery>,
    /// Stores opened for this member so far (each torn crash opens one, in a directory of its own).
    disks: usize,
}

impl Member {
    /// Down, and not refused (a refused node waits for its recovery, not for a restart).
    fn restartable(&self) -> bool {
        self.node.is_none() && !matches!(self.recovery, Some(Recovery::Remove { .. }))
    }
}

/// What of a node's disk Raft relies on once the node has acknowledged it: its log's last entry
/// (index and term) and its term and vote.
#[derive(Clone, Copy, Debug)]
struct Held {
    last: u64,
    last_term: u64,
    term: u64,
    vote: u64,
}

impl Held {
    fn of(log: &RaftLog) -> Result<Held, String> {
        use raft::Storage as _;
        let last = log.last_index().map_err(|e| e.to_string())?;
        let last_term = log.term(last).map_err(|e| e.to_string())?;
        let hs = log.hard_state().map_err(|e| e.to_string())?;
        Ok(Held { last, last_term, term: hs.term, vote: hs.vote })
    }

    /// Whether `now` (the same node's disk later) still answers for what `self` acknowledged: a
    /// log at least as up to date (Raft's order: last term, then last index), and no other vote
    /// in the term it had voted in.
    fn kept_by(&self, now: &Held) -> bool {
        let log = (now.last_term, now.last) >= (self.last_term, self.last);
        let vote = now.term > self.term || (now.term == self.term && (self.vote == 0 || now.vote == self.vote));
        log && vote
    }
}

/// The recovery of a coordinator whose disk lost what it acknowledged (README: "A damaged disk").
#[derive(Clone, Copy, Debug)]
enum Recovery {
    /// `fifty cluster remove OLD` on a healthy coordinator, until `old` is out of the
    /// configuration.
    Remove { old: u64 },
    /// The data dir wiped and the node started with `--join`: added as learner `new`, until the
    /// leader has made it a voter.
    Join { new: u64 },
}

struct Waiting {
    write: u64,
    member: usize,
    reply: oneshot::Receiver<Result<ApplyOutcome, ConsensusError>>,
}

/// Steps from here on are the settling phase's rounds (numbered for messages only).
const SETTLING: usize = usize::MAX - 4000;

struct Sim {
    rng: StdRng,
    seed: u64,
    dir: PathBuf,
    next_id: u64,
    members: Vec<Member>,
    in_flight: Vec<Message>,
    isolated: Option<usize>,
    waiting: Vec<Waiting>,
    acked: BTreeSet<u64>,
    next_write: u64,
    leaders: BTreeMap<u64, u64>,
    summary: Summary,
}

/// Runs one seeded schedule in a fresh directory under `root`; `Err` names the broken promise
/// and the step. The directory is removed when the run passes.
pub fn run(seed: u64, settings: Settings, root: &Path) -> Result<Summary, String> {
    let dir = root.join(format!("sim-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    let peers: Vec<PeerInfo> = (1..=settings.nodes as u64)
        .map(|id| PeerInfo { node_id: id, quic_addr: format!("sim:{id}"), http_addr: format!("sim:{id}") })
        .collect();
    let mut members = Vec::new();
    for p in &peers {
        let store = Store::open(&dir.join(format!("node-{}", p.node_id))).map_err(|e| format!("open a store: {e}"))?;
        super::bootstrap::genesis(&RaftLog::new(store.clone()), &peers).map_err(|e| format!("genesis: {e}"))?;
        members.push(Member {
            id: p.node_id,
            store,
            log: None,
            node: None,
            out: Net(Arc::default()),
            image: None,
            lost: None,
            forgot: None,
            recovery: None,
            disks: 1,
        });
    }
    let mut sim = Sim {
        rng: StdRng::seed_from_u64(seed),
        seed,
        dir: dir.clone(),
        next_id: settings.nodes as u64 + 1,
        members,
        in_flight: Vec::new(),
        isolated: None,
        waiting: Vec::new(),
        acked: BTreeSet::new(),
        next_write: 1,
        leaders: BTreeMap::new(),
        summary: Summary::default(),
    };
    for i in 0..settings.nodes {
        sim.start(i, 0)?;
    }
    let result = sim.faulty(settings.steps).and_then(|()| sim.settle()).and_then(|()| sim.check_settled());
    let result = result.map(|()| sim.summary.clone());
    drop(sim);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

impl Sim {
    fn fail(&self, step: usize, what: String) -> String {
        match step.checked_sub(SETTLING) {
            Some(round) => format!("seed {} settling round {round}: {what}", self.seed),
            None => format!("seed {} step {step}: {what}", self.seed),
        }
    }

    /// Starts member `i` from its store, after the check `fifty server` makes before raft-rs sees
    /// the log. A refusal is what must happen to a disk that lost what the node acknowledged (the
    /// recovery then begins), and a failure for any other.
    fn start(&mut self, i: usize, step: usize) -> Result<(), String> {
        let (id, lost) = (self.members[i].id, self.members[i].lost.take());
        let store = self.members[i].store.clone();
        match RaftLog::new(store.clone()).verify() {
            Ok(_) => self.members[i].forgot = lost,
            Err(OpenError::Damaged(damage)) if lost.is_some() => {
                let said = damage.to_string();
                if !said.contains("will not start") || !said.contains("fifty cluster remove") {
                    return Err(
                        self.fail(step, format!("node {id} refused to start without naming the recovery: {said}"))
                    );
                }
                self.members[i].recovery = Some(Recovery::Remove { old: id });
                self.summary.refused += 1;
                return Ok(());
            }
            Err(e) => {
                return Err(self.fail(
                    step,
                    format!("node {id} refuses to start, though its disk lost nothing it had acknowledged: {e}"),
                ))
            }
        }
        let m = &mut self.members[i];
        let (status, _) = watch::channel(RaftStatus::default());
        // A small threshold, so logs compact and lagging nodes catch up from snapshots.
        let options = Options { snapshot_threshold: 40, ..Options::default() };
        let boot = self.rng.random();
        // Snapshots are built inline: a background build's timing would make the schedule depend
        // on threads, not on the seed.
        let log = RaftLog::with_snapshot_build(store, SnapshotBuild::Inline);
        m.log = Some(log.clone());
        let node = Node::new(m.id, log, status, Box::new(m.out.clone()), Arc::default(), options, (10, 11), boot)
            .map_err(|e| format!("start node {}: {e:#}", m.id))?;
        m.node = Some(node);
        Ok(())
    }

    fn crash(&mut self, i: usize) -> Result<(), String> {
        // The mark as its writer thread leaves it within 20 ms of the last flush, whatever the
        // threads did meanwhile (so the run replays exactly).
        if let Some(log) = self.members[i].log.take() {
            log.sync_mark().map_err(|e| format!("write node {}'s flushed mark: {e}", self.members[i].id))?;
        }
        self.members[i].node = None;
        self.members[i].out.0.lock().expect("simulated outbox").clear();
        self.summary.crashes += 1;
        Ok(())
    }

    /// A crash after which the disk holds the store's earlier image: sled's newest writes are
    /// gone (as when its file loses its tail), the flushed mark beside it is as it was. Opened in
    /// a new directory (sled cannot reopen the old one in this process).
    fn crash_torn(&mut self, i: usize) -> Result<(), String> {
        let Some(image) = self.members[i].image.take() else { return self.crash(i) };
        self.crash(i)?;
        let m = &mut self.members[i];
        let err = |e: &dyn std::fmt::Display| format!("roll node {}'s disk back: {e}", m.id);
        let before = Held::of(&RaftLog::new(m.store.clone()))?;
        m.disks += 1;
        let store = Store::open(&self.dir.join(format!("node-{}-disk-{}", m.id, m.disks))).map_err(|e| err(&e))?;
        let mut batch = Batch::default();
        for (key, value) in image {
            batch.put_raw(&key, value);
        }
        store.apply(batch).map_err(|e| err(&e))?;
        store.flush_blocking().map_err(|e| err(&e))?;
        let was = mark::path_in(m.store.dir());
        if was.exists() {
            std::fs::copy(&was, mark::path_in(store.dir())).map_err(|e| err(&e))?;
        }
        let after = Held::of(&RaftLog::new(store.clone()))?;
        m.lost = (!before.kept_by(&after)).then_some(before);
        m.store = store;
        self.summary.torn += 1;
        Ok(())
    }

    /// Takes the recovery of member `i` one stage further, as far as the cluster lets it now.
    fn recover(&mut self, i: usize, step: usize) -> Result<(), String> {
        let Some(recovery) = self.members[i].recovery else { return Ok(()) };
        let Some(l) = self.leader() else { return Ok(()) };
        let (voters, learners, pending) = self.node(l).conf();
        match recovery {
            Recovery::Remove { old } => {
                if voters.contains(&old) || learners.contains(&old) {
                    if !pending {
                        let (reply, _) = oneshot::channel();
                        self.feed(l, Some(Input::RemoveMember { id: old, reply }), step)?;
                    }
                    return Ok(());
                }
                // Out of the configuration: the data dir wiped, a new id, started with `--join`.
                let id = self.next_id;
                self.next_id += 1;
                let store = Store::open(&self.dir.join(format!("node-{id}")))
                    .map_err(|e| format!("open node {id}'s new store: {e}"))?;
                let m = &mut self.members[i];
                (m.id, m.store, m.image, m.forgot) = (id, store, None, None);
                m.recovery = Some(Recovery::Join { new: id });
                self.start(i, step)?;
                self.recover(i, step)
            }
            // Done once every node has applied the promotion: raft-rs counts a configuration
            // from its application, so until then a node still counts the smaller one, where
            // losing one more voter leaves no quorum.
            Recovery::Join { new } if voters.contains(&new) => {
                if !self.members.iter().all(|m| m.node.as_ref().is_some_and(|n| n.conf().0.contains(&new))) {
                    return Ok(());
                }
                self.members[i].recovery = None;
                self.summary.replaced += 1;
                Ok(())
            }
            Recovery::Join { new } => {
                if !learners.contains(&new) && !pending {
                    let member =
                        MemberRecord { id: new, quic_addr: format!("sim:{new}"), http_addr: format!("sim:{new}") };
                    let (reply, _) = oneshot::channel();
                    self.feed(l, Some(Input::AddMember { member, reply }), step)?;
                }
                Ok(())
            }
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|i| self.members[*i].node.is_some()).collect()
    }

    fn leader(&self) -> Option<usize> {
        self.live().into_iter().find(|i| self.node(*i).role().0 == StateRole::Leader)
    }

    fn node(&self, i: usize) -> &Node {
        self.members[i].node.as_ref().expect("a live member")
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// Feeds `input` to member `i` (if it runs) and lets it handle what Raft has ready.
    fn feed(&mut self, i: usize, input: Option<Input>, step: usize) -> Result<(), String> {
        let Some(node) = self.members[i].node.as_mut() else { return Ok(()) };
        if let Some(input) = input {
            node.handle(input);
        }
        node.process().map_err(|e| format!("seed {} step {step}: node {} stopped: {e}", self.seed, self.members[i].id))
    }

    fn tick(&mut self, i: usize, step: usize) -> Result<(), String> {
        if let Some(node) = self.members[i].node.as_mut() {
            node.tick();
        }
        self.feed(i, None, step)
    }

    fn cut_off(&self, a: usize, b: usize) -> bool {
        self.isolated.is_some_and(|x| (x == a) != (x == b))
    }

    /// Delivers in-flight message `k` (to a node that runs and is reachable), or loses it.
    fn deliver(&mut self, k: usize, lossy: bool, step: usize) -> Result<(), String> {
        let msg = self.in_flight.swap_remove(k);
        let (Some(from), Some(to)) = (self.index_of(msg.from), self.index_of(msg.to)) else { return Ok(()) };
        let lost = self.cut_off(from, to) || self.members[to].node.is_none() || (lossy && self.rng.random_bool(0.03));
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            // The real transport reports how a snapshot went; without it Raft waits forever.
            let report = Input::SnapshotSent { to: msg.to, ok: !lost };
            if !lost {
                self.feed(to, Some(Input::Step(Box::new(msg))), step)?;
            }
            return self.feed(from, Some(report), step);
        }
        if lost {
            return Ok(());
        }
        // Raft's own messages may arrive twice (a retransmission racing the first copy). A
        // proposal a follower forwards is not duplicated: the transport writes each message once
        // on a QUIC stream, and Raft cannot tell two copies of a proposal from two proposals.
        if lossy && msg.get_msg_type() != MessageType::MsgPropose && self.rng.random_bool(0.02) {
            self.in_flight.push(msg.clone());
        }
        self.feed(to, Some(Input::Step(Box::new(msg))), step)
    }

    fn propose(&mut self, i: usize, step: usize) -> Result<(), String> {
        let n = self.next_write;
        self.next_write += 1;
        let data = fifty_shared::codec::to_bytes(&write(n)).expect("a small command encodes");
        let (reply, rx) = oneshot::channel();
        self.waiting.push(Waiting { write: n, member: i, reply: rx });
        self.summary.proposed += 1;
        self.feed(i, Some(Input::Propose { data, reply }), step)
    }

    /// Moves what the nodes sent onto the network, answers proposals, and checks the promises
    /// that hold at every step.
    fn after_step(&mut self, step: usize) -> Result<(), String> {
        for i in 0..self.members.len() {
            let sent = std::mem::take(&mut *self.members[i].out.0.lock().expect("simulated outbox"));
            self.check_forgetful(i, &sent, step)?;
            self.in_flight.extend(sent);
        }
        let mut still = Vec::new();
        for mut w in std::mem::take(&mut self.waiting) {
            match w.reply.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => still.push(w),
                Err(oneshot::error::TryRecvError::Closed) | Ok(Err(_)) => {} // outcome unknown
                Ok(Ok(Ok(Applied::Done))) => {
                    let Some(node) = self.members[w.member].node.as_ref() else { continue };
                    if !writes_in(node.store()).contains_key(&w.write) {
                        return Err(self.fail(
                            step,
                            format!(
                                "write {} was answered done by node {} before its own entry applied there \
                                 (the answer belonged to another entry)",
                                w.write, self.members[w.member].id
                            ),
                        ));
                    }
                    self.acked.insert(w.write);
                }
                Ok(Ok(other)) => return Err(self.fail(step, format!("write {} answered {other:?}", w.write))),
            }
        }
        self.waiting = still;
        for i in self.live() {
            let (role, term, _) = self.node(i).role();
            self.summary.term = self.summary.term.max(term);
            if role == StateRole::Leader {
                let id = self.members[i].id;
                if let Some(other) = self.leaders.insert(term, id).filter(|other| *other != id) {
                    return Err(self.fail(step, format!("two leaders in term {term}: nodes {other} and {id}")));
                }
            }
        }
        self.check_digests(step)
    }

    /// A node that started with a disk that lost what it acknowledged neither votes nor
    /// acknowledges entries (what would count it toward a quorum) until it holds that again.
    fn check_forgetful(&mut self, i: usize, sent: &[Message], step: usize) -> Result<(), String> {
        let Some(lost) = self.members[i].forgot else { return Ok(()) };
        if lost.kept_by(&Held::of(&RaftLog::new(self.members[i].store.clone()))?) {
            self.members[i].forgot = None;
            return Ok(());
        }
        let counted = sent.iter().find(|m| {
            !m.reject
                && matches!(m.get_msg_type(), MessageType::MsgRequestVoteResponse | MessageType::MsgAppendResponse)
        });
        match counted {
            None => Ok(()),
            Some(m) => Err(self.fail(
                step,
                format!(
                    "node {} restarted on a disk that lost what it had acknowledged (entry {} of term {}; \
                     term {}, vote {}) and, before holding it again, {} node {}",
                    self.members[i].id,
                    lost.last,
                    lost.last_term,
                    lost.term,
                    lost.vote,
                    if m.get_msg_type() == MessageType::MsgAppendResponse {
                        format!("acknowledged entries up to {} (term {}) to", m.index, m.term)
                    } else {
                        format!("granted its vote in term {} to", m.term)
                    },
                    m.to
                ),
            )),
        }
    }

    /// Nodes at the same applied index hold the same state.
    fn check_digests(&self, step: usize) -> Result<(), String> {
        let mut at: BTreeMap<u64, (usize, String)> = BTreeMap::new();
        for i in self.live() {
            let store = self.node(i).store();
            let applied = RaftLog::new(store.clone()).applied().map_err(|e| e.to_string())?;
            let digest = store.state_digest().map_err(|e| e.to_string())?;
            match at.get(&applied) {
                Some((j, d)) if *d != digest => {
                    return Err(self.fail(
                        step,
                        format!(
                            "nodes {} and {} differ at applied index {applied}",
                            self.members[*j].id, self.members[i].id
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    at.insert(applied, (i, digest));
                }
            }
        }
        Ok(())
    }

    /// The faulty phase: each step one random event.
    fn faulty(&mut self, steps: usize) -> Result<(), String> {
        for step in 0..steps {
            let live = self.live();
            let roll = self.rng.random_range(0..100);
            match roll {
                0..=44 if !self.in_flight.is_empty() => {
                    let k = self.rng.random_range(0..self.in_flight.len());
                    self.deliver(k, true, step)?;
                }
                0..=74 if !live.is_empty() => {
                    let i = live[self.rng.random_range(0..live.len())];
                    if self.rng.random_bool(0.02) {
                        // An image of the disk now, for a torn tail to roll back to later.
                        let records = self.members[i].store.raw_records().map_err(|e| e.to_string())?;
                        self.members[i].image = Some(records);
                    }
                    self.tick(i, step)?;
                }
                75..=89 if !live.is_empty() => {
                    // Mostly to the leader, sometimes to whoever (a follower forwards it).
                    let i = match self.leader() {
                        Some(l) if self.rng.random_bool(0.8) => l,
                        _ => live[self.rng.random_range(0..live.len())],
                    };
                    self.propose(i, step)?;
                }
                // One fault at a time: a voter down, or one being recovered, is as many as a
                // cluster of 3 tolerates (a second loss would need `--force-new-cluster`).
                90 if live.len() == self.members.len() && self.members.iter().all(|m| m.recovery.is_none()) => {
                    let i = live[self.rng.random_range(0..live.len())];
                    if self.members[i].image.is_some() && self.rng.random_bool(0.3) {
                        self.crash_torn(i)?;
                    } else {
                        self.crash(i)?;
                    }
                }
                91 => {
                    // The leader dies and its supervisor starts it again at once: it may well be
                    // elected again, with entries of its previous life still to commit.
                    if let Some(l) = self.leader() {
                        self.crash(l)?;
                        self.start(l, step)?;
                    }
                }
                92..=95 => {
                    // An operator at work on a refused node; a supervisor restarting the others.
                    for i in 0..self.members.len() {
                        self.recover(i, step)?;
                    }
                    if let Some(i) = self.members.iter().position(Member::restartable) {
                        self.start(i, step)?;
                    }
                }
                _ => {
                    self.isolated = match self.isolated {
                        Some(_) => None,
                        None => Some(self.rng.random_range(0..self.members.len())),
                    };
                }
            }
            self.after_step(step)?;
        }
        Ok(())
    }

    /// Heals everything and runs a fault-free schedule until every node has applied all that
    /// the leader committed.
    fn settle(&mut self) -> Result<(), String> {
        self.isolated = None;
        for i in 0..self.members.len() {
            if self.members[i].restartable() {
                self.start(i, SETTLING)?;
            }
        }
        for round in 0..3000 {
            let step = SETTLING + round;
            for i in 0..self.members.len() {
                self.recover(i, step)?;
                // Not in lockstep: two nodes whose election timeouts run out together split
                // the vote again and again (raft-rs's timeout is one value here, not random).
                if self.rng.random_bool(0.8) {
                    self.tick(i, step)?;
                }
            }
            self.after_step(step)?;
            while !self.in_flight.is_empty() {
                self.deliver(0, false, step)?;
                self.after_step(step)?;
            }
            if let Some(l) = self.leader() {
                let commit = self.node(l).status_commit();
                let all = self
                    .members
                    .iter()
                    .all(|m| m.recovery.is_none() && m.node.as_ref().is_some_and(|n| n.status_applied() == commit));
                if all && round > 30 {
                    self.summary.applied = commit;
                    return Ok(());
                }
            }
        }
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| match &m.node {
                Some(n) => format!(
                    "node {} {:?} term {} applied {} commit {} conf {:?} {:?}",
                    m.id,
                    n.role().0,
                    n.role().1,
                    n.status_applied(),
                    n.status_commit(),
                    n.conf(),
                    m.recovery
                ),
                None => format!("node {} down {:?}", m.id, m.recovery),
            })
            .collect();
        Err(format!("seed {}: the cluster did not settle after healing: {}", self.seed, members.join("; ")))
    }

    fn check_settled(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            let seen = writes_in(self.node(i).store());
            for w in &self.acked {
                match seen.get(w) {
                    Some(1) => {}
                    None => {
                        return Err(format!(
                            "seed {}: acknowledged write {w} is missing on node {}",
                            self.seed, self.members[i].id
                        ))
                    }
                    Some(n) => {
                        return Err(format!(
                            "seed {}: write {w} applied {n} times on node {}",
                            self.seed, self.members[i].id
                        ))
                    }
                }
            }
            if let Some((w, n)) = seen.iter().find(|(_, n)| **n > 1) {
                return Err(format!("seed {}: write {w} applied {n} times on node {}", self.seed, self.members[i].id));
            }
        }
        self.summary.acked = self.acked.len();
        self.check_digests(SETTLING + 3000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        // Many small fsyncs: memory-backed storage keeps the run short where there is some.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        base.join(format!("fifty-sim-{}", std::process::id()))
    }

    fn env(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    /// Hundreds of seeded schedules of 3 and 5 coordinators (FIFTY_SIM_SEEDS to change how
    /// many, FIFTY_SIM_SEED to replay one, FIFTY_SIM_STEPS for longer schedules): every one keeps
    /// every promise. `scripts/simulate` runs a long one.
    #[test]
    fn seeded_schedules_keep_every_promise() {
        let root = root();
        let steps = env("FIFTY_SIM_STEPS").unwrap_or(1500) as usize;
        let seeds: Vec<u64> = match env("FIFTY_SIM_SEED") {
            Some(seed) => vec![seed],
            None => {
                let first = env("FIFTY_SIM_FIRST").unwrap_or(0);
                (first..first + env("FIFTY_SIM_SEEDS").unwrap_or(200)).collect()
            }
        };
        let mut totals = Summary::default();
        for seed in &seeds {
            let nodes = if seed % 4 == 3 { 5 } else { 3 };
            // raft-rs panics on some broken promises (a commit index past the log's end): that
            // too is a failing seed to replay.
            let outcome =
                std::panic::catch_unwind(|| run(*seed, Settings { nodes, steps }, &root)).unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic");
                    Err(format!("seed {seed}: a node panicked: {what}"))
                });
            match outcome {
                Ok(s) => {
                    totals.acked += s.acked;
                    totals.proposed += s.proposed;
                    totals.crashes += s.crashes;
                    totals.term = totals.term.max(s.term);
                    totals.torn += s.torn;
                    totals.refused += s.refused;
                    totals.replaced += s.replaced;
                }
                Err(e) => {
                    panic!("{e}\nreplay: FIFTY_SIM_SEED={seed} FIFTY_SIM_STEPS={steps} scripts/simulate");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        println!(
            "{} schedules: {} of {} writes acknowledged, {} crashes ({} torn tails: {} restarts refused, \
             {} coordinators replaced), highest term {}",
            seeds.len(),
            totals.acked,
            totals.proposed,
            totals.crashes,
            totals.torn,
            totals.refused,
            totals.replaced,
            totals.term
        );
        assert!(totals.acked > seeds.len(), "the schedules made progress: {totals:?}");
        if seeds.len() >= 100 {
            // The short run meets the damaged disk, and what follows it, many times over.
            assert!(totals.refused > 10 && totals.replaced > 10, "too few torn tails were caught: {totals:?}");
        }
    }
}
