//! Coordinator-to-coordinator links over QUIC with mutual TLS (ALPN `fifty-peer/1`), on the same
//! endpoint agents use. Raft messages go out on one long-lived unidirectional stream per peer;
//! a snapshot goes on a stream of its own, in chunks, so heartbeats never wait behind it.
//! Requests (bootstrap hellos, joins, artifacts) use one bidirectional stream each; an artifact
//! (`FetchBlob`) comes back on its stream in chunks.
//!
//! Only a client presenting a coordinator certificate from the cluster CA is heard. A fault hook
//! (`set_isolated`) drops all Raft traffic in and out, for partition tests.
//!
//! Each peer's outgoing queue is bounded ([`PEER_QUEUE`]): a slow or stalled peer cannot grow
//! this node's memory, and the Raft thread never waits. A message that finds the queue full is
//! dropped and reported to Raft as unreachable (Raft resends what matters).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use fifty_shared::codec::{read_frame, write_frame};
use fifty_shared::tls::COORDINATOR_NAME;
use fifty_shared::wire::{close, PeerFrame, PeerInfo, PeerRequest, PeerResponse};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Consensus, Input};
use crate::store::Store;

/// Largest snapshot a peer may stream to us.
const MAX_SNAPSHOT: u64 = 1 << 30;
/// Snapshot data per frame.
const CHUNK: usize = 256 * 1024;
/// Raft messages queued for one peer at most. Raft keeps at most `max_inflight_msgs` (256)
/// appends in flight per peer; the rest is heartbeats, votes and their answers.
const PEER_QUEUE: usize = 1024;
/// At most one warning per peer this often about messages dropped on its full queue.
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// One peer's outgoing queue, read by its link task.
struct PeerQueue {
    tx: mpsc::Sender<Message>,
    drops: DropLog,
}

/// Why a message was not queued.
enum Refused {
    /// The queue is full.
    Full(Message),
    /// The peer's link task has ended.
    Closed(Message),
}

impl PeerQueue {
    fn new(capacity: usize) -> (Self, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx, drops: DropLog::default() }, rx)
    }

    /// Queues `msg` without waiting; a full queue counts the drop and warns (rate limited).
    fn offer(&mut self, to: u64, msg: Message, now: Instant) -> Result<(), Refused> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                if let Some(dropped) = self.drops.count(now) {
                    warn!(
                        peer = format!("{to:016x}"),
                        dropped,
                        total = self.drops.total,
                        "peer send queue full ({PEER_QUEUE} messages): dropping Raft messages; Raft resends them"
                    );
                }
                Err(Refused::Full(msg))
            }
            Err(mpsc::error::TrySendError::Closed(msg)) => Err(Refused::Closed(msg)),
        }
    }
}

/// Messages dropped on a full queue: how many in all, and since the last warning.
#[derive(Default)]
struct DropLog {
    total: u64,
    unreported: u64,
    last_warn: Option<Instant>,
}

impl DropLog {
    /// Counts one drop at `now`; returns the drops to report when a warning is due.
    fn count(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        self.unreported += 1;
        if self.last_warn.is_some_and(|at| now.duration_since(at) < DROP_WARN_EVERY) {
            return None;
        }
        self.last_warn = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// Outgoing peer links and the fault hook.
pub struct Transport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    store: Store,
    runtime: tokio::runtime::Handle,
    inbox: OnceLock<std::sync::mpsc::Sender<Input>>,
    peers: Mutex<HashMap<u64, PeerQueue>>,
    /// Addresses learned before they are in the member table (bootstrap).
    known: Mutex<HashMap<u64, String>>,
    isolated: AtomicBool,
    /// Where a [`PeerRequest::LastHeard`] goes (the coordinator's fleet): the transport only
    /// carries it.
    last_heard: OnceLock<LastHeardSink>,
    /// When a Raft frame last arrived from each peer: a follower tells a dead leader from a live
    /// one by it before the election says so.
    frames_from: Mutex<HashMap<u64, Instant>>,
}

/// Takes the hosts of a [`PeerRequest::LastHeard`] when it arrives.
pub type LastHeardSink = Box<dyn Fn(Vec<fifty_shared::wire::HeardHost>) + Send + Sync>;

impl Transport {
    /// A transport dialling from `endpoint` with `client_config` (ALPN `fifty-peer/1`, this
    /// node's coordinator certificate).
    pub fn new(endpoint: quinn::Endpoint, client_config: quinn::ClientConfig, store: Store) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            client_config,
            store,
            runtime: tokio::runtime::Handle::current(),
            inbox: OnceLock::new(),
            peers: Mutex::default(),
            known: Mutex::default(),
            isolated: AtomicBool::new(false),
            last_heard: OnceLock::new(),
            frames_from: Mutex::default(),
        })
    }

    /// How long since a Raft frame last arrived from peer `id` (None: none since this start).
    pub fn quiet_for(&self, id: u64) -> Option<Duration> {
        self.frames_from.lock().expect("frames lock").get(&id).map(Instant::elapsed)
    }

    /// Sets where the hosts of a [`PeerRequest::LastHeard`] go (once; later calls are ignored).
    pub fn on_last_heard(&self, sink: LastHeardSink) {
        let _ = self.last_heard.set(sink);
    }

    /// Connects the transport to the Raft loop's inbox (for unreachable and snapshot reports).
    pub(crate) fn attach(&self, inbox: std::sync::mpsc::Sender<Input>) {
        let _ = self.inbox.set(inbox);
    }

    fn report(&self, input: Input) {
        if let Some(inbox) = self.inbox.get() {
            let _ = inbox.send(input);
        }
    }

    /// Drops (or stops dropping) all Raft traffic, both ways: a network partition of this node.
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::SeqCst);
        if isolated {
            // Cut live links too, so nothing buffered slips through.
            self.peers.lock().expect("peers lock").clear();
        }
        warn!(isolated, "fault injection: peer traffic {}", if isolated { "dropped" } else { "restored" });
    }

    /// Whether the fault hook is dropping traffic.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }

    /// Remembers a peer's address before it is in the member table.
    pub fn learn(&self, id: u64, quic_addr: &str) {
        self.known.lock().expect("known lock").insert(id, quic_addr.to_string());
    }

    fn address_of(&self, id: u64) -> Option<String> {
        if let Ok(members) = self.store.members() {
            if let Some(m) = members.into_iter().find(|m| m.id == id) {
                return Some(m.quic_addr);
            }
        }
        self.known.lock().expect("known lock").get(&id).cloned()
    }

    /// A message that will not be sent. A snapshot must be reported as failed, or Raft waits for
    /// it forever and never replicates to that peer again; anything else Raft resends by itself.
    fn dropped(&self, msg: &Message) {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            self.report(Input::SnapshotSent { to: msg.to, ok: false });
        } else {
            self.report(Input::Unreachable(msg.to));
        }
    }

    /// Sends Raft messages (called from the Raft thread; never blocks).
    pub fn send(self: &Arc<Self>, messages: Vec<Message>) {
        if self.is_isolated() {
            for msg in &messages {
                self.dropped(msg);
            }
            return;
        }
        let mut peers = self.peers.lock().expect("peers lock");
        let now = Instant::now();
        for msg in messages {
            let to = msg.to;
            let queue = peers.entry(to).or_insert_with(|| {
                let (queue, rx) = PeerQueue::new(PEER_QUEUE);
                self.runtime.spawn(self.clone().peer_link(to, rx));
                queue
            });
            match queue.offer(to, msg, now) {
                Ok(()) => {}
                Err(Refused::Full(msg)) => self.dropped(&msg),
                Err(Refused::Closed(msg)) => {
                    peers.remove(&to);
                    self.dropped(&msg);
                }
            }
        }
    }

    async fn dial(&self, addr: &str) -> Result<quinn::Connection> {
        let sock = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| anyhow!("{addr} resolves to nothing"))?;
        let connecting = self.endpoint.connect_with(self.client_config.clone(), sock, COORDINATOR_NAME)?;
        Ok(tokio::time::timeout(Duration::from_secs(3), connecting)
            .await
            .map_err(|_| anyhow!("no answer from {addr}"))??)
    }

    /// One peer's outgoing link: connect when needed, write each message as a frame.
    async fn peer_link(self: Arc<Self>, to: u64, mut rx: mpsc::Receiver<Message>) {
        let mut link: Option<(quinn::Connection, quinn::SendStream)> = None;
        let mut retry_at = Instant::now();
        while let Some(msg) = rx.recv().await {
            if self.is_isolated() {
                self.dropped(&msg);
                continue;
            }
            if link.is_none() {
                if Instant::now() < retry_at {
                    self.dropped(&msg);
                    continue;
                }
                let opened = async {
                    let addr = self.address_of(to).ok_or_else(|| anyhow!("no address for node {to:016x}"))?;
                    let conn = self.dial(&addr).await?;
                    let stream = conn.open_uni().await?;
                    anyhow::Ok((conn, stream))
                };
                match opened.await {
                    Ok(l) => link = Some(l),
                    Err(e) => {
                        debug!(peer = format!("{to:016x}"), error = %e, "peer unreachable");
                        retry_at = Instant::now() + Duration::from_millis(300);
                        self.dropped(&msg);
                        continue;
                    }
                }
            }
            let (conn, stream) = link.as_mut().expect("link was just opened");
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                tokio::spawn(self.clone().send_snapshot(conn.clone(), msg));
                continue;
            }
            let frame = PeerFrame::Raft(msg.write_to_bytes().expect("encode a raft message"));
            if let Err(e) = write_frame(stream, &frame).await {
                debug!(peer = format!("{to:016x}"), error = %e, "peer link broke");
                link = None;
                self.dropped(&msg);
            }
        }
    }

    async fn send_snapshot(self: Arc<Self>, conn: quinn::Connection, mut msg: Message) {
        let to = msg.to;
        let data = msg.mut_snapshot().take_data();
        let sent = async {
            let mut stream = conn.open_uni().await?;
            let header = PeerFrame::SnapshotStart { message: msg.write_to_bytes()?, data_len: data.len() as u64 };
            write_frame(&mut stream, &header).await?;
            for chunk in data.chunks(CHUNK) {
                write_frame(&mut stream, &PeerFrame::SnapshotChunk(chunk.to_vec())).await?;
            }
            stream.finish()?;
            // Bounded: a peer that never acknowledges must not hold the snapshot (and with it
            // all replication to that peer) forever.
            tokio::time::timeout(Duration::from_secs(30), stream.stopped())
                .await
                .map_err(|_| anyhow!("the peer did not acknowledge the snapshot within 30 s"))??;
            anyhow::Ok(())
        };
        let ok = match sent.await {
            Ok(()) => true,
            Err(e) => {
                warn!(peer = format!("{to:016x}"), error = %e, "sending a snapshot failed");
                false
            }
        };
        debug!(peer = format!("{to:016x}"), bytes = data.len(), ok, "snapshot sent");
        self.report(Input::SnapshotSent { to, ok });
    }

    /// Sends one request to the coordinator at `addr` and reads its answer.
    pub async fn request(&self, addr: &str, req: &PeerRequest) -> Result<PeerResponse> {
        self.request_within(addr, req, Duration::from_secs(15)).await
    }

    /// Sends one request to the coordinator at `addr` and reads its answer within `limit`.
    pub async fn request_within(&self, addr: &str, req: &PeerRequest, limit: Duration) -> Result<PeerResponse> {
        let conn = self.dial(addr).await.with_context(|| format!("dial coordinator {addr}"))?;
        let answer = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            write_frame(&mut send, req).await?;
            send.finish()?;
            read_frame::<PeerResponse, _>(&mut recv).await?.ok_or_else(|| anyhow!("{addr} closed without answering"))
        };
        let out = tokio::time::timeout(limit, answer).await.map_err(|_| anyhow!("{addr} did not answer"))?;
        conn.close(close::DONE.into(), b"done");
        out
    }

    /// Streams artifact `digest` (`size` bytes) from the coordinator at `addr` into `sink`, piece
    /// by piece, in order. The caller verifies the digest.
    pub async fn fetch_blob(
        &self,
        addr: &str,
        digest: &str,
        size: u64,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let conn = self.dial(addr).await.with_context(|| format!("dial coordinator {addr}"))?;
        let fetched = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            write_frame(&mut send, &PeerRequest::FetchBlob { digest: digest.to_string(), offset: 0 }).await?;
            send.finish()?;
            let mut at = 0u64;
            while at < size {
                // Bounded per piece, not for the whole: a large artifact on a slow link is fine
                // as long as it keeps coming.
                let frame = tokio::time::timeout(BLOB_PIECE_TIMEOUT, read_frame::<PeerResponse, _>(&mut recv))
                    .await
                    .map_err(|_| anyhow!("no piece of the artifact for {BLOB_PIECE_TIMEOUT:?}"))??;
                match frame {
                    Some(PeerResponse::BlobChunk { offset, total, data }) => {
                        if total != size {
                            return Err(anyhow!("the artifact is {total} bytes there; {size} were recorded"));
                        }
                        if offset != at || data.is_empty() || at + data.len() as u64 > size {
                            return Err(anyhow!("a piece at {offset} of {} bytes does not follow {at}", data.len()));
                        }
                        sink(&data)?;
                        at += data.len() as u64;
                    }
                    Some(PeerResponse::Refused { reason }) => return Err(anyhow!("refused: {reason}")),
                    Some(other) => return Err(anyhow!("unexpected answer {other:?}")),
                    None => return Err(anyhow!("the stream ended after {at} of {size} bytes")),
                }
            }
            anyhow::Ok(())
        };
        let out = fetched.await;
        conn.close(close::DONE.into(), b"done");
        out
    }
}

/// How long a blob fetch waits for its next piece.
const BLOB_PIECE_TIMEOUT: Duration = Duration::from_secs(15);

/// Answers `PeerRequest::FetchBlob` on its stream: the artifact's pieces from `offset` to its end.
async fn send_blob(send: &mut quinn::SendStream, store: &Store, digest: &str, mut offset: u64) -> Result<()> {
    loop {
        let piece = store.blobs().read_at(digest, offset, CHUNK);
        let (total, data) = match piece {
            Ok(Some(p)) => p,
            Ok(None) => {
                let reason = format!("this coordinator does not hold artifact {digest}");
                return Ok(write_frame(send, &PeerResponse::Refused { reason }).await?);
            }
            Err(e) => return Ok(write_frame(send, &PeerResponse::Refused { reason: e.to_string() }).await?),
        };
        if data.is_empty() {
            return Ok(());
        }
        let next = offset + data.len() as u64;
        write_frame(send, &PeerResponse::BlobChunk { offset, total, data }).await?;
        offset = next;
    }
}

/// Serves a peer connection accepted on the QUIC endpoint.
pub async fn serve_peer(conn: quinn::Connection, consensus: Consensus) {
    let remote = conn.remote_address();
    if !crate::quic::peer_certificate(&conn).is_some_and(|c| fifty_shared::tls::is_coordinator_cert(&c)) {
        warn!(%remote, "peer link without a coordinator certificate refused");
        return conn.close(close::NOT_A_COORDINATOR.into(), b"peer links need a coordinator certificate");
    }
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(stream) => { tokio::spawn(read_raft(stream, consensus.clone())); }
                Err(_) => return,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => { tokio::spawn(answer(send, recv, consensus.clone())); }
                Err(_) => return,
            },
        }
    }
}

async fn read_raft(mut stream: quinn::RecvStream, consensus: Consensus) {
    let transport = consensus.transport().clone();
    loop {
        let frame = match read_frame::<PeerFrame, _>(&mut stream).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "peer stream ended");
                return;
            }
        };
        let msg = match frame {
            PeerFrame::Raft(bytes) => Message::parse_from_bytes(&bytes).map_err(|e| anyhow!("raft message: {e}")),
            PeerFrame::SnapshotStart { message, data_len } => read_snapshot(&mut stream, &message, data_len).await,
            PeerFrame::SnapshotChunk(_) => Err(anyhow!("snapshot chunk without a start")),
        };
        match msg {
            Ok(msg) if !transport.is_isolated() => {
                transport.frames_from.lock().expect("frames lock").insert(msg.from, Instant::now());
                consensus.step(msg)
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "malformed peer frame; dropping the stream");
                let _ = stream.stop(close::PROTOCOL.into());
                return;
            }
        }
    }
}

async fn read_snapshot(stream: &mut quinn::RecvStream, message: &[u8], data_len: u64) -> Result<Message> {
    if data_len > MAX_SNAPSHOT {
        return Err(anyhow!("snapshot of {data_len} bytes exceeds the {MAX_SNAPSHOT}-byte limit"));
    }
    let mut msg = Message::parse_from_bytes(message).map_err(|e| anyhow!("snapshot message: {e}"))?;
    let mut data = Vec::with_capacity(data_len.min(64 << 20) as usize);
    while (data.len() as u64) < data_len {
        match read_frame::<PeerFrame, _>(stream).await? {
            Some(PeerFrame::SnapshotChunk(chunk)) if data.len() as u64 + chunk.len() as u64 <= data_len => {
                data.extend_from_slice(&chunk);
            }
            Some(_) => return Err(anyhow!("unexpected frame inside a snapshot")),
            None => return Err(anyhow!("snapshot stream ended after {} of {data_len} bytes", data.len())),
        }
    }
    msg.mut_snapshot().data = data.into();
    debug!(bytes = data_len, "snapshot received");
    Ok(msg)
}

async fn answer(mut send: quinn::SendStream, mut recv: quinn::RecvStream, consensus: Consensus) {
    let req = match read_frame::<PeerRequest, _>(&mut recv).await {
        Ok(Some(r)) => r,
        _ => return,
    };
    if let PeerRequest::FetchBlob { digest, offset } = &req {
        match send_blob(&mut send, consensus.store(), digest, *offset).await {
            Ok(()) => {
                let _ = send.finish();
                let _ = send.stopped().await;
            }
            Err(e) => debug!(digest, error = %e, "sending an artifact to a peer stopped"),
        }
        return;
    }
    let response = match req {
        PeerRequest::Hello(info) => {
            consensus.transport().learn(info.node_id, &info.quic_addr);
            let members = consensus.store().members().unwrap_or_default();
            PeerResponse::Hello {
                state_version: crate::state::STATE_VERSION,
                info: consensus.me().clone(),
                initialized: consensus.initialized(),
                members: members
                    .into_iter()
                    .map(|m| PeerInfo { node_id: m.id, quic_addr: m.quic_addr, http_addr: m.http_addr })
                    .collect(),
            }
        }
        PeerRequest::Digest { index } => {
            let answer = consensus.digest_at(index, Duration::from_secs(5)).await;
            PeerResponse::Digest { applied: answer.applied, digest: answer.digest }
        }
        PeerRequest::Join(info) => consensus.join(info, false).await,
        PeerRequest::JoinReplacing(info) => consensus.join(info, true).await,
        PeerRequest::HoldBlob { digest, size, from } => {
            crate::deploy::artifacts::hold(&consensus, &digest, size, &from).await
        }
        PeerRequest::LastHeard(hosts) => {
            if let Some(sink) = consensus.transport().last_heard.get() {
                sink(hosts);
            }
            PeerResponse::Noted
        }
        // Streamed above; never reaches this match.
        PeerRequest::FetchBlob { .. } => return,
    };
    if write_frame(&mut send, &response).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.to = to;
        m
    }

    /// A peer that reads nothing (stalled) holds at most the queue's bound; the rest is given
    /// back at once, never waited for, and warned about once per interval.
    #[test]
    fn a_stalled_peer_queue_is_bounded_and_never_blocks() {
        let (mut queue, mut rx) = PeerQueue::new(4);
        let t0 = Instant::now();
        let results: Vec<bool> = (0..10).map(|_| queue.offer(2, heartbeat(2), t0).is_ok()).collect();
        assert_eq!(results, [true, true, true, true, false, false, false, false, false, false]);
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 4);
        assert_eq!((queue.drops.total, queue.drops.unreported), (6, 5), "one warning so far, for the first drop");
        // Room again once the link reads.
        assert!(queue.offer(2, heartbeat(2), t0).is_ok());
        drop(rx);
        assert!(matches!(queue.offer(2, heartbeat(2), t0), Err(Refused::Closed(_))));
    }

    #[test]
    fn dropped_messages_are_warned_about_at_most_once_per_interval() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        assert_eq!(log.count(t0), Some(1));
        assert_eq!(log.count(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.count(t0 + Duration::from_secs(9)), None);
        assert_eq!(log.count(t0 + DROP_WARN_EVERY), Some(3), "the drops since the last warning");
        assert_eq!(log.total, 4);
    }
}
