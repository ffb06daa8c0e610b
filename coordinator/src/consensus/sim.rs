//! A deterministic simulation of the coordinators, after FoundationDB's simulator and
//! TigerBeetle's VOPR: 3 or 5 coordinators in one thread, each the real raft-rs `RawNode` in the
//! real Raft loop ([`Node`]) over the real `state::Machine` and sled store on a temp dir, joined
//! by a simulated network that drops, duplicates and reorders messages and cuts nodes off, under
//! simulated time (Raft ticks), with crashes and restarts at any step — a leader restarted at
//! once among them. One seed decides the whole schedule (raft-rs draws election timeouts at random,
//! so the simulation gives it a one-value range and staggers nodes by its own ticks instead), so a
//! failing seed replays exactly: `scripts/simulate --seed N`.
//!
//! Checked for every schedule:
//! - a proposal answered "done" is applied on the node that answered (its own entry, never an
//!   older entry's outcome) and, once the cluster has settled, on every node exactly once;
//! - two nodes at the same applied index have the same state digest;
//! - at most one leader per term.

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
use crate::state::{Applied, Command};
use crate::store::raft_log::{RaftLog, SnapshotBuild};
use crate::store::Store;
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
/// the same process at once (its background threads still hold the files). What a crash can lose
/// on disk is not simulated here: entries and hard state are flushed before any message leaves,
/// and `scripts/torture-storage` kills real processes for that.
struct Member {
    id: u64,
    store: Store,
    node: Option<Node>,
    out: Net,
}

struct Waiting {
    write: u64,
    member: usize,
    reply: oneshot::Receiver<Result<ApplyOutcome, ConsensusError>>,
}

struct Sim {
    rng: StdRng,
    seed: u64,
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
        members.push(Member { id: p.node_id, store, node: None, out: Net(Arc::default()) });
    }
    let mut sim = Sim {
        rng: StdRng::seed_from_u64(seed),
        seed,
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
        sim.start(i)?;
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
        format!("seed {} step {step}: {what}", self.seed)
    }

    fn start(&mut self, i: usize) -> Result<(), String> {
        let m = &mut self.members[i];
        let store = m.store.clone();
        // As `fifty server` does before raft-rs sees the log.
        RaftLog::new(store.clone()).verify().map_err(|e| format!("node {} refuses to start: {e}", m.id))?;
        let (status, _) = watch::channel(RaftStatus::default());
        // A small threshold, so logs compact and lagging nodes catch up from snapshots.
        let options = Options { snapshot_threshold: 40 };
        let boot = self.rng.random();
        // Snapshots are built inline: a background build's timing would make the schedule depend
        // on threads, not on the seed.
        let node = Node::new(
            m.id,
            RaftLog::with_snapshot_build(store, SnapshotBuild::Inline),
            status,
            Box::new(m.out.clone()),
            Arc::default(),
            options,
            (10, 11),
            boot,
        )
        .map_err(|e| format!("start node {}: {e:#}", m.id))?;
        m.node = Some(node);
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        self.members[i].node = None;
        self.members[i].out.0.lock().expect("simulated outbox").clear();
        self.summary.crashes += 1;
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
        node.process().map_err(|e| format!("seed {} step {step}: node {} stopped: {e}", self.seed, i + 1))
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
        for m in &self.members {
            self.in_flight.append(&mut m.out.0.lock().expect("simulated outbox"));
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
                                w.write,
                                w.member + 1
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

    /// Nodes at the same applied index hold the same state.
    fn check_digests(&self, step: usize) -> Result<(), String> {
        let mut at: BTreeMap<u64, (usize, String)> = BTreeMap::new();
        for i in self.live() {
            let store = self.node(i).store();
            let applied = RaftLog::new(store.clone()).applied().map_err(|e| e.to_string())?;
            let digest = store.state_digest().map_err(|e| e.to_string())?;
            match at.get(&applied) {
                Some((j, d)) if *d != digest => {
                    return Err(
                        self.fail(step, format!("nodes {} and {} differ at applied index {applied}", j + 1, i + 1))
                    )
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
                90 if live.len() == self.members.len() => {
                    let i = live[self.rng.random_range(0..live.len())];
                    self.crash(i);
                }
                91 => {
                    // The leader dies and its supervisor starts it again at once: it may well be
                    // elected again, with entries of its previous life still to commit.
                    if let Some(l) = self.leader() {
                        self.crash(l);
                        self.start(l)?;
                    }
                }
                92..=95 => {
                    if let Some(i) = (0..self.members.len()).find(|i| self.members[*i].node.is_none()) {
                        self.start(i)?;
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
            if self.members[i].node.is_none() {
                self.start(i)?;
            }
        }
        for round in 0..3000 {
            let step = usize::MAX - 3000 + round;
            for i in 0..self.members.len() {
                self.tick(i, step)?;
            }
            self.after_step(step)?;
            while !self.in_flight.is_empty() {
                self.deliver(0, false, step)?;
                self.after_step(step)?;
            }
            if let Some(l) = self.leader() {
                let commit = self.node(l).status_commit();
                let all = (0..self.members.len()).all(|i| self.node(i).status_applied() == commit);
                if all && round > 30 {
                    self.summary.applied = commit;
                    return Ok(());
                }
            }
        }
        Err(format!("seed {}: the cluster did not settle after healing", self.seed))
    }

    fn check_settled(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            let seen = writes_in(self.node(i).store());
            for w in &self.acked {
                match seen.get(w) {
                    Some(1) => {}
                    None => {
                        return Err(format!("seed {}: acknowledged write {w} is missing on node {}", self.seed, i + 1))
                    }
                    Some(n) => {
                        return Err(format!("seed {}: write {w} applied {n} times on node {}", self.seed, i + 1))
                    }
                }
            }
            if let Some((w, n)) = seen.iter().find(|(_, n)| **n > 1) {
                return Err(format!("seed {}: write {w} applied {n} times on node {}", self.seed, i + 1));
            }
        }
        self.summary.acked = self.acked.len();
        self.check_digests(usize::MAX)
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
            match run(*seed, Settings { nodes, steps }, &root) {
                Ok(s) => {
                    totals.acked += s.acked;
                    totals.proposed += s.proposed;
                    totals.crashes += s.crashes;
                    totals.term = totals.term.max(s.term);
                }
                Err(e) => {
                    panic!("{e}\nreplay: FIFTY_SIM_SEED={seed} FIFTY_SIM_STEPS={steps} scripts/simulate");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        println!(
            "{} schedules: {} of {} writes acknowledged, {} crashes, highest term {}",
            seeds.len(),
            totals.acked,
            totals.proposed,
            totals.crashes,
            totals.term
        );
        assert!(totals.acked > seeds.len(), "the schedules made progress: {totals:?}");
    }
}
