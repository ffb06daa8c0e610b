//! Artifacts between coordinators. The bytes live in each coordinator's blob store
//! (`store::blobs`), never in Raft; the Raft state records only "artifact <digest> of <size>
//! bytes is available" (`Command::BlobAvailable`), and only once a quorum holds it:
//!
//! - the leader writes an uploaded artifact to its own store, then asks every other coordinator
//!   to hold it ([`replicate`]: `PeerRequest::HoldBlob`; each pulls it from the leader by digest
//!   with `PeerRequest::FetchBlob`, verifies and stores it) and waits for a quorum, the rest
//!   finishing in the background;
//! - a coordinator missing a recorded artifact (after a snapshot install, a wipe, or an outage
//!   during the upload) pulls it from a peer: at once when an agent asks for it
//!   ([`ensure_local`]), and in the background sweep ([`run`]), which also removes blob files no
//!   record names any more.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use fifty_shared::wire::{PeerRequest, PeerResponse, ARTIFACT_CHUNK};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::consensus::Consensus;
use crate::store::Store;

/// How long one coordinator may take to fetch and store an artifact for [`replicate`].
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(300);
/// How often each coordinator looks for recorded artifacts it lacks.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// A blob file no record names is removed only once it is this old: the leader writes an
/// upload (and followers fetch it) before the record that names it is committed.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// Makes sure this coordinator holds artifact `digest` of `size` bytes: from legacy chunk
/// records if an older version left them, else from `from` (if given) and then from every other
/// coordinator in turn. Concurrent callers for one digest fetch it once.
pub async fn ensure_local(consensus: &Consensus, digest: &str, size: u64, from: Option<&str>) -> anyhow::Result<()> {
    let store = consensus.store();
    let blobs = store.blobs();
    if blobs.size(digest)? == Some(size) {
        return Ok(());
    }
    let lock = blobs.fetch_lock(digest);
    let _fetching = lock.lock().await;
    if blobs.size(digest)? == Some(size) {
        return Ok(());
    }
    let legacy = store.clone();
    let d = digest.to_string();
    let moved = tokio::task::spawn_blocking(move || from_legacy(&legacy, &d, size));
    if moved.await.context("move a legacy artifact")?? {
        info!(digest, size, "artifact moved from legacy chunk records into the blob store");
        return Ok(());
    }
    let mut sources: Vec<String> = from.into_iter().map(str::to_string).collect();
    let me = consensus.me().quic_addr.clone();
    for m in store.members()? {
        if m.quic_addr != me && !sources.contains(&m.quic_addr) {
            sources.push(m.quic_addr);
        }
    }
    let mut failures = Vec::new();
    for addr in sources {
        match fetch(consensus, &addr, digest, size).await {
            Ok(()) => {
                info!(digest, size, from = %addr, "artifact fetched from a peer");
                return Ok(());
            }
            Err(e) => failures.push(format!("{addr}: {e:#}")),
        }
    }
    if failures.is_empty() {
        bail!("no other coordinator to fetch artifact {digest} from");
    }
    bail!("no coordinator could send artifact {digest}: {}", failures.join("; "))
}

/// Pulls artifact `digest` from the coordinator at `addr` into the blob store, verified.
async fn fetch(consensus: &Consensus, addr: &str, digest: &str, size: u64) -> anyhow::Result<()> {
    let mut writer = consensus.store().blobs().writer(digest)?;
    consensus.transport().fetch_blob(addr, digest, size, |piece| Ok(writer.write(piece)?)).await?;
    // Fsync, read back and hash 100s of MiB: not on the async threads.
    tokio::task::spawn_blocking(move || writer.finish()).await.context("store a fetched artifact")??;
    Ok(())
}

/// Writes an artifact kept by an older version as `sm/blob/` chunk records into the blob store;
/// false if those records are not all there.
fn from_legacy(store: &Store, digest: &str, size: u64) -> anyhow::Result<bool> {
    if store.legacy_blob_chunk(digest, 0)?.is_none() {
        return Ok(false);
    }
    let mut writer = store.blobs().writer(digest)?;
    for index in 0..size.div_ceil(ARTIFACT_CHUNK as u64).max(1) {
        let Some(chunk) = store.legacy_blob_chunk(digest, index as u32)? else { return Ok(false) };
        writer.write(&chunk)?;
    }
    writer.finish()?;
    Ok(true)
}

/// The leader, holding artifact `digest` itself: asks every other coordinator to hold it too,
/// and returns once a quorum (this one included) does. Those still fetching go on in the
/// background.
pub async fn replicate(consensus: &Consensus, digest: &str, size: u64) -> anyhow::Result<()> {
    let store = consensus.store();
    if store.blobs().size(digest)? != Some(size) {
        bail!("this coordinator does not hold artifact {digest} of {size} bytes");
    }
    let me = consensus.me().clone();
    let others: Vec<_> = store.members()?.into_iter().filter(|m| m.id != me.node_id).collect();
    let voters = others.len() + 1;
    let need = voters / 2 + 1;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for m in &others {
        let (transport, tx) = (consensus.transport().clone(), tx.clone());
        let req = PeerRequest::HoldBlob { digest: digest.to_string(), size, from: me.quic_addr.clone() };
        let addr = m.quic_addr.clone();
        tokio::spawn(async move {
            let answer = match transport.request_within(&addr, &req, HOLD_TIMEOUT).await {
                Ok(PeerResponse::BlobHeld) => Ok(()),
                Ok(PeerResponse::Refused { reason }) => Err(reason),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(format!("{e:#}")),
            };
            let _ = tx.send((addr, answer));
        });
    }
    drop(tx);
    let mut held = 1;
    let mut failures = Vec::new();
    while held < need {
        match rx.recv().await {
            Some((addr, Ok(()))) => {
                debug!(digest, peer = %addr, "a coordinator holds the artifact");
                held += 1;
            }
            Some((addr, Err(why))) => {
                warn!(digest, peer = %addr, %why, "a coordinator could not take the artifact");
                failures.push(format!("{addr}: {why}"));
            }
            None => bail!(
                "only {held} of {voters} coordinators hold artifact {digest}; a quorum is {need}: {}",
                failures.join("; ")
            ),
        }
    }
    info!(digest, size, held, voters, "a quorum of coordinators holds the artifact");
    Ok(())
}

/// Answers a `PeerRequest::HoldBlob`.
pub async fn hold(consensus: &Consensus, digest: &str, size: u64, from: &str) -> PeerResponse {
    if let Err(e) = crate::store::blobs::check_digest(digest) {
        return PeerResponse::Refused { reason: e.to_string() };
    }
    if size > fifty_shared::wire::MAX_ARTIFACT_BYTES {
        return PeerResponse::Refused { reason: format!("an artifact of {size} bytes is over the limit") };
    }
    match ensure_local(consensus, digest, size, Some(from)).await {
        Ok(()) => PeerResponse::BlobHeld,
        Err(e) => PeerResponse::Refused { reason: format!("{e:#}") },
    }
}

/// Every coordinator, until `shutdown`: fetches recorded artifacts it lacks, and removes blob
/// files no record names (a record dropped while this coordinator was away or replaced by a
/// snapshot) once they are old enough not to be an upload in progress.
pub async fn run(consensus: Consensus, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = sweep(&consensus).await {
            warn!(error = %format!("{e:#}"), "artifact sweep failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn sweep(consensus: &Consensus) -> anyhow::Result<()> {
    let store = consensus.store();
    let recorded = store.recorded_blobs()?;
    for (digest, size) in &recorded {
        if store.blobs().size(digest)? != Some(*size) {
            if let Err(e) = ensure_local(consensus, digest, *size, None).await {
                warn!(digest, error = %format!("{e:#}"), "a recorded artifact is missing here and no peer sent it yet");
            }
        }
    }
    for (digest, written) in store.blobs().list(ORPHAN_AGE)? {
        let old = written.elapsed().is_ok_and(|age| age > ORPHAN_AGE);
        if old && !recorded.iter().any(|(d, _)| *d == digest) {
            // Checked again just before: a record may have arrived since the scan.
            if store.blob_size(&digest)?.is_none() {
                info!(digest, "removing a blob file no record names");
                store.blobs().remove(&digest).map_err(|e| anyhow!(e))?;
            }
        }
    }
    Ok(())
}
