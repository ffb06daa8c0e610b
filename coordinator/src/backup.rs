//! Backups of a cluster: `fifty snapshot save FILE` (through `GET /v1/snapshot`, admin) and
//! `fifty snapshot restore FILE` (offline, like `etcdctl snapshot restore`).
//!
//! A backup is one file holding everything a new cluster needs to carry on: every state record
//! (the CA and its key, the release-signing key, token hashes, hosts and their certificate
//! serials, repositories, gates, commits, jobs, logs, releases, rollouts, incidents, alerts,
//! experiments) at one applied index, copied between two applies on the Raft thread, and the
//! bytes of every artifact the state names (`sm/blobsize/<digest>`), which live in the blob
//! store, not in the state: a restore that lost every release's artifact would not be one.
//!
//! Layout: the 8 bytes [`MAGIC`], then codec frames (`fifty_shared::codec`, each at most
//! `MAX_FRAME`): one [`Part::Header`] (format, state version, index, how many records, which
//! artifacts), the records, each artifact's bytes in [`Part::BlobData`] pieces (in the header's
//! order), and [`Part::End`] with the SHA-256 of every byte before it. Reading checks all of it
//! — magic, format, each frame, record keys, each artifact's digest, the checksum, nothing after
//! the end — and says what was wrong and at which byte.
//!
//! A restore writes the state as a snapshot received from a leader would be written
//! (`RaftLog::restore_state`), then makes the new coordinator the only voter as
//! `--force-new-cluster` does (`consensus::bootstrap::force_new_cluster`): the other
//! coordinators then join it as usual. It keeps the cluster's CA (it is in the state), so
//! agents enrolled before the backup reconnect without joining again.

use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use bincode::{Decode, Encode};
use fifty_shared::codec;
use fifty_shared::wire::PeerInfo;
use hyper::body::{Bytes, Frame};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::consensus::Consensus;
use crate::store::blobs::{check_digest, BlobError, BlobWriter, Blobs};
use crate::store::raft_log::{RaftLog, StateImage};
use crate::store::{Store, STATE_PREFIX};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"FIFTYBK\n";
/// The layout this binary writes and reads.
pub const FORMAT: u32 = 1;
/// Artifact bytes per frame.
const BLOB_PIECE: usize = 256 * 1024;
/// Where an artifact's records live in the state: `sm/blobsize/<digest>` → size.
const BLOBSIZE_PREFIX: &str = "sm/blobsize/";

/// What a backup says about itself.
#[derive(Clone, Debug, Encode, Decode)]
pub struct Header {
    /// [`FORMAT`].
    pub format: u32,
    /// The `state::STATE_VERSION` of the coordinator that took it.
    pub state_version: u32,
    /// The applied index the state is at.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// When it was taken.
    pub taken_at: SystemTime,
    /// The Raft id of the coordinator that took it.
    pub taken_by: u64,
    /// How many state records follow.
    pub records: u64,
    /// Every artifact whose bytes follow, in order: digest and size.
    pub blobs: Vec<(String, u64)>,
}

/// One frame of a backup.
#[derive(Encode, Decode)]
enum Part {
    Header(Header),
    Record { key: Vec<u8>, value: Vec<u8> },
    BlobData(Vec<u8>),
    End { sha256: Vec<u8> },
}

/// Why a backup file cannot be used. Offsets count bytes from the start of the file.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file does not start with [`MAGIC`].
    #[error("not a Fifty backup: it does not start with the backup header (made by `fifty snapshot save`?)")]
    NotABackup,
    /// Another layout.
    #[error("backup format {found}; this fifty reads format {FORMAT}: restore it with the fifty version that made it")]
    Format {
        /// What the file says.
        found: u32,
    },
    /// A newer state version than this binary knows.
    #[error(
        "the backup was taken by a coordinator with state version {found}; this fifty knows up to {known}: \
         restore it with a fifty at least as new as the one that took it"
    )]
    NewerState {
        /// The backup's.
        found: u32,
        /// This binary's.
        known: u32,
    },
    /// The file ends early.
    #[error("truncated: the file ends at byte {offset}, inside {what} (an incomplete copy or download?)")]
    Truncated {
        /// Where it ends.
        offset: u64,
        /// What was being read.
        what: String,
    },
    /// A frame that does not decode, or is not what comes next.
    #[error("damaged at byte {offset}, in {what}: {detail}")]
    Damaged {
        /// Where the frame starts.
        offset: u64,
        /// What was being read.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The contents do not hash to the checksum the file ends with.
    #[error(
        "checksum mismatch: the contents hash to SHA-256 {actual}, the file's last frame says {expected}: \
         bytes were changed after it was written"
    )]
    Checksum {
        /// What the file says.
        expected: String,
        /// What its bytes hash to.
        actual: String,
    },
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// What was read or written.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The header.
    pub header: Header,
    /// The whole file's size.
    pub bytes: u64,
    /// The SHA-256 in its last frame, hex.
    pub sha256: String,
}

impl Summary {
    /// Artifact bytes in the backup.
    pub fn blob_bytes(&self) -> u64 {
        self.header.blobs.iter().map(|(_, s)| s).sum()
    }
}

/// Writes frames, hashing everything written.
struct Writer<W: Write> {
    out: W,
    hash: Sha256,
    written: u64,
}

impl<W: Write> Writer<W> {
    fn raw(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        self.out.write_all(bytes)?;
        self.hash.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn part(&mut self, part: &Part, what: &str) -> Result<(), BackupError> {
        let frame = codec::encode_frame(part)
            .map_err(|e| BackupError::Io(std::io::Error::other(format!("{what} does not fit a backup frame: {e}"))))?;
        self.raw(&frame)
    }
}

/// The artifacts `image` names: digest and size.
fn named_blobs(image: &StateImage) -> Result<Vec<(String, u64)>, BackupError> {
    let mut out = Vec::new();
    for (key, value) in image.records() {
        if let Some(digest) = key.strip_prefix(BLOBSIZE_PREFIX.as_bytes()) {
            let digest = String::from_utf8_lossy(digest).into_owned();
            let size: u64 = codec::from_bytes(value).map_err(|e| BackupError::Damaged {
                offset: 0,
                what: format!("the state's record of artifact {digest}"),
                detail: e.to_string(),
            })?;
            out.push((digest, size));
        }
    }
    Ok(out)
}

/// Writes the backup of `image` with the artifacts `header` lists, read from `blobs`; returns
/// its summary.
fn write_backup(out: impl Write, header: &Header, image: &StateImage, blobs: &Blobs) -> Result<Summary, BackupError> {
    let mut w = Writer { out, hash: Sha256::new(), written: 0 };
    w.raw(MAGIC)?;
    w.part(&Part::Header(header.clone()), "the header")?;
    for (key, value) in image.records() {
        let record = Part::Record { key: key.to_vec(), value: value.to_vec() };
        w.part(&record, &format!("record {}", String::from_utf8_lossy(key)))?;
    }
    for (digest, size) in &header.blobs {
        let mut offset = 0u64;
        while offset < *size {
            let Some((total, data)) = blobs.read_at(digest, offset, BLOB_PIECE)? else {
                return Err(BackupError::Io(std::io::Error::other(format!(
                    "artifact {digest} was removed from this coordinator while the backup was written \
                     (retention dropped its release?); take the backup again"
                ))));
            };
            if total != *size || data.is_empty() {
                return Err(BackupError::Io(std::io::Error::other(format!(
                    "artifact {digest} on this coordinator is {total} bytes, its record says {size}"
                ))));
            }
            offset += data.len() as u64;
            w.part(&Part::BlobData(data), &format!("artifact {digest}"))?;
        }
    }
    let sha256 = w.hash.clone().finalize().to_vec();
    w.part(&Part::End { sha256: sha256.clone() }, "the checksum")?;
    w.out.flush()?;
    Ok(Summary { header: header.clone(), bytes: w.written, sha256: hex::encode(sha256) })
}

/// Where what is read goes.
trait Sink {
    fn record(&mut self, _key: Vec<u8>, _value: Vec<u8>) -> Result<(), BackupError> {
        Ok(())
    }
    fn blob_start(&mut self, _digest: &str) -> Result<(), BackupError> {
        Ok(())
    }
    fn blob_data(&mut self, _data: &[u8]) -> Result<(), BackupError> {
        Ok(())
    }
    fn blob_end(&mut self) -> Result<(), BackupError> {
        Ok(())
    }
}

/// Reads and checks, keeping nothing.
struct Check;
impl Sink for Check {}

/// Reads, keeping the records and writing the artifacts to a blob store.
struct Restore<'a> {
    records: Vec<(Vec<u8>, Vec<u8>)>,
    blobs: &'a Blobs,
    writing: Option<BlobWriter>,
}

impl Sink for Restore<'_> {
    fn record(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), BackupError> {
        self.records.push((key, value));
        Ok(())
    }
    fn blob_start(&mut self, digest: &str) -> Result<(), BackupError> {
        self.writing = Some(self.blobs.writer(digest)?);
        Ok(())
    }
    fn blob_data(&mut self, data: &[u8]) -> Result<(), BackupError> {
        self.writing.as_mut().expect("blob_start came first").write(data)?;
        Ok(())
    }
    fn blob_end(&mut self) -> Result<(), BackupError> {
        self.writing.take().expect("blob_start came first").finish()?;
        Ok(())
    }
}

/// Reads frames, hashing every byte read and counting where it is.
struct Reader<R: Read> {
    inner: R,
    hash: Sha256,
    offset: u64,
}

impl<R: Read> Reader<R> {
    /// Fills `buf`; `Ok(n)` with `n < buf.len()` means the file ended after `n` bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, BackupError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.hash.update(&buf[..got]);
        self.offset += got as u64;
        Ok(got)
    }

    /// The next frame, decoded by the shared codec (with its size limit).
    fn part(&mut self, what: &str) -> Result<Part, BackupError> {
        let start = self.offset;
        let truncated = |offset| BackupError::Truncated { offset, what: what.to_string() };
        let damaged = |detail: String| BackupError::Damaged { offset: start, what: what.to_string(), detail };
        let mut prefix = [0u8; codec::PREFIX];
        if self.fill(&mut prefix)? < codec::PREFIX {
            return Err(truncated(self.offset));
        }
        let len = u32::from_be_bytes(prefix) as usize;
        if len > codec::MAX_FRAME {
            return Err(damaged(format!("a frame of {len} bytes, over the {}-byte limit", codec::MAX_FRAME)));
        }
        let mut body = vec![0u8; len];
        if self.fill(&mut body)? < len {
            return Err(truncated(self.offset));
        }
        codec::from_bytes(&body).map_err(|e| damaged(e.to_string()))
    }
}

/// Reads a whole backup from `r`, checking everything, and hands its contents to `sink`.
fn read_backup(r: impl Read, sink: &mut dyn Sink) -> Result<Summary, BackupError> {
    let mut rd = Reader { inner: r, hash: Sha256::new(), offset: 0 };
    let mut magic = [0u8; MAGIC.len()];
    let got = rd.fill(&mut magic)?;
    if magic[..got] != MAGIC[..got] || got == 0 {
        return Err(BackupError::NotABackup);
    }
    if got < MAGIC.len() {
        return Err(BackupError::Truncated { offset: rd.offset, what: "the backup header".into() });
    }
    let header_at = rd.offset;
    let header = match rd.part("the backup header")? {
        Part::Header(h) => h,
        _ => {
            return Err(BackupError::Damaged {
                offset: header_at,
                what: "the backup header".into(),
                detail: "another kind of frame where the header belongs".into(),
            })
        }
    };
    if header.format != FORMAT {
        return Err(BackupError::Format { found: header.format });
    }
    if header.state_version > crate::state::STATE_VERSION {
        return Err(BackupError::NewerState { found: header.state_version, known: crate::state::STATE_VERSION });
    }
    for i in 0..header.records {
        let what = format!("state record {} of {}", i + 1, header.records);
        let at = rd.offset;
        match rd.part(&what)? {
            Part::Record { key, value } if key.starts_with(STATE_PREFIX.as_bytes()) => sink.record(key, value)?,
            Part::Record { key, .. } => {
                let detail = format!("key {:?} is not a state key", String::from_utf8_lossy(&key));
                return Err(BackupError::Damaged { offset: at, what, detail });
            }
            _ => return Err(BackupError::Damaged { offset: at, what, detail: "not a record".into() }),
        }
    }
    for (digest, size) in &header.blobs {
        check_digest(digest).map_err(|e| BackupError::Damaged {
            offset: header_at,
            what: "the backup header".into(),
            detail: e.to_string(),
        })?;
        if *size > fifty_shared::wire::MAX_ARTIFACT_BYTES {
            let detail = format!("artifact {digest} of {size} bytes, over the artifact limit");
            return Err(BackupError::Damaged { offset: header_at, what: "the backup header".into(), detail });
        }
        sink.blob_start(digest)?;
        let mut hash = Sha256::new();
        let mut got = 0u64;
        while got < *size {
            let what = format!("artifact {digest} (at byte {got} of {size})");
            let at = rd.offset;
            match rd.part(&what)? {
                Part::BlobData(data) if !data.is_empty() && got + data.len() as u64 <= *size => {
                    hash.update(&data);
                    sink.blob_data(&data)?;
                    got += data.len() as u64;
                }
                Part::BlobData(data) => {
                    let detail = format!("{} bytes where at most {} remain", data.len(), size - got);
                    return Err(BackupError::Damaged { offset: at, what, detail });
                }
                _ => return Err(BackupError::Damaged { offset: at, what, detail: "not artifact bytes".into() }),
            }
        }
        let actual = hex::encode(hash.finalize());
        if actual != *digest {
            return Err(BackupError::Damaged {
                offset: rd.offset,
                what: format!("artifact {digest}"),
                detail: format!("its bytes hash to {actual}"),
            });
        }
        sink.blob_end()?;
    }
    let actual = hex::encode(rd.hash.clone().finalize());
    let end_at = rd.offset;
    let expected = match rd.part("the checksum at the end")? {
        Part::End { sha256 } => hex::encode(sha256),
        _ => {
            return Err(BackupError::Damaged {
                offset: end_at,
                what: "the checksum at the end".into(),
                detail: "another kind of frame where the checksum belongs".into(),
            })
        }
    };
    if expected != actual {
        return Err(BackupError::Checksum { expected, actual });
    }
    let mut extra = [0u8; 1];
    if rd.fill(&mut extra)? > 0 {
        return Err(BackupError::Damaged {
            offset: rd.offset - 1,
            what: "the end of the file".into(),
            detail: "bytes after the checksum".into(),
        });
    }
    Ok(Summary { header, bytes: rd.offset, sha256: expected })
}

/// Checks a backup file whole (format, every frame, every artifact's digest, the checksum).
pub fn verify(path: &Path) -> Result<Summary, BackupError> {
    let file = std::fs::File::open(path)?;
    read_backup(std::io::BufReader::new(file), &mut Check)
}

/// Starts streaming a backup of this coordinator's state and of the artifacts it names: the
/// state is copied now (see [`Consensus::state_image`]), every named artifact is made local
/// (fetched from a peer if this coordinator lacks it), then a thread writes the file into the
/// returned body. A failure midway ends the body with an error, so the client never mistakes
/// a part for a whole (and the missing checksum would tell it anyway).
pub async fn stream(consensus: &Consensus) -> anyhow::Result<(Header, axum::body::Body)> {
    let image = consensus.state_image().await.context("copy the state")?;
    let blobs = named_blobs(&image)?;
    for (digest, size) in &blobs {
        crate::deploy::artifacts::ensure_local(consensus, digest, *size, None)
            .await
            .with_context(|| format!("artifact {digest}, named by the state, is on no coordinator that answers"))?;
    }
    let header = Header {
        format: FORMAT,
        state_version: crate::state::STATE_VERSION,
        index: image.index,
        term: image.term,
        taken_at: SystemTime::now(),
        taken_by: consensus.id(),
        records: image.len() as u64,
        blobs,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let store = consensus.store().clone();
    let h = header.clone();
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(BLOB_PIECE) };
        match write_backup(out, &h, &image, store.blobs()) {
            Ok(s) => tracing::info!(index = s.header.index, bytes = s.bytes, sha256 = %s.sha256, "backup streamed"),
            Err(e) => {
                tracing::warn!(error = %e, "backup cut short");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    Ok((header, axum::body::Body::new(ChannelBody { rx })))
}

/// A `Write` that hands the bytes to the response body in pieces.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= BLOB_PIECE {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

/// The response body: the pieces the writer thread sends.
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|piece| piece.map(|r| r.map(Frame::data)))
    }
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The backup's summary.
    pub summary: Summary,
    /// The new coordinator's Raft id.
    pub node_id: u64,
    /// Its addresses.
    pub me: PeerInfo,
    /// Where its CA certificate is (for `FIFTY_CACERT`).
    pub ca_path: std::path::PathBuf,
}

/// `fifty snapshot restore FILE`: makes `config`'s (empty) data dir the first coordinator of a
/// new cluster whose state is the backup's. The file is checked whole before anything is
/// written. Run with the coordinator stopped; then start it with `fifty server` as usual.
pub fn restore(file: &Path, config: &Config) -> anyhow::Result<Restored> {
    let summary = verify(file).with_context(|| format!("backup {}", file.display()))?;
    if config.state_dir().exists() {
        bail!(
            "data dir {} already holds a coordinator's state ({} exists): a restore makes a new cluster's first \
             coordinator, so give it an empty data dir (move the old one away first)",
            config.data_dir.display(),
            config.state_dir().display()
        );
    }
    let quic = config.advertised(config.quic_addr)?;
    let http = config.advertised(config.http_addr)?;
    if quic.port() == 0 || http.port() == 0 {
        bail!(
            "config keys quic_addr and http_addr: a restored coordinator is recorded as the cluster's member at \
             fixed addresses; give ports, not 0 ({quic}, {http})"
        );
    }
    crate::server::prepare_data_dir(config)?;
    let store = Store::open_with_blobs(&config.state_dir(), &config.blob_dir())
        .with_context(|| format!("create state in {}", config.state_dir().display()))?;
    let log = RaftLog::new(store.clone());
    let node_id = log.node_id()?;
    let me = PeerInfo { node_id, quic_addr: quic.to_string(), http_addr: http.to_string() };
    let file_reader = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let mut sink = Restore { records: Vec::new(), blobs: store.blobs(), writing: None };
    read_backup(std::io::BufReader::new(file_reader), &mut sink)
        .with_context(|| format!("backup {} (changed while it was restored?)", file.display()))?;
    let records = sink.records;
    log.restore_state(summary.header.index, summary.header.term, &records, node_id)
        .context("write the restored state")?;
    crate::consensus::bootstrap::force_new_cluster(&log, &me)?;
    let ca_path = restore_ca(&store, config)?;
    store.flush_blocking()?;
    Ok(Restored { summary, node_id, me, ca_path })
}

/// The restored cluster keeps its CA (agents enrolled before the backup trust it and hold
/// certificates it signed): written to `<data_dir>/tls/` from the state's cluster record, or,
/// when the config names `ca_cert`, checked to be that one.
fn restore_ca(store: &Store, config: &Config) -> anyhow::Result<std::path::PathBuf> {
    let Some(cluster) = store.cluster()? else {
        return Ok(config.ca_path());
    };
    if let Some(cert) = &config.ca_cert {
        let given = std::fs::read_to_string(cert).with_context(|| format!("read {}", cert.display()))?;
        if given.trim() != cluster.ca_cert_pem.trim() {
            bail!(
                "config key ca_cert: {} is not the CA of the backed-up cluster. A restored cluster keeps its CA (its \
                 hosts' certificates are signed by it): point ca_cert and ca_key at that CA, or drop both keys and the \
                 restore writes it to {}",
                cert.display(),
                config.tls_dir().display()
            );
        }
        std::fs::write(config.ca_path(), &cluster.ca_cert_pem)
            .with_context(|| format!("write {}", config.ca_path().display()))?;
        return Ok(config.ca_path());
    }
    let key = config.tls_dir().join("ca-key.pem");
    crate::config::write_private(&key, &cluster.ca_key_pem).with_context(|| format!("write {}", key.display()))?;
    std::fs::write(config.ca_path(), &cluster.ca_cert_pem)
        .with_context(|| format!("write {}", config.ca_path().display()))?;
    Ok(config.ca_path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testkit;

    /// A state with a few records and two artifacts in its blob store; the backup of it.
    fn backup() -> (Vec<u8>, Summary, Box<dyn std::any::Any>) {
        let (mut m, dir) = testkit::machine();
        testkit::add_repo(&mut m);
        let mut names = Vec::new();
        for n in [1usize, 600_000] {
            let bytes: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let digest = hex::encode(Sha256::digest(&bytes));
            m.store().blobs().put(&digest, &bytes).unwrap();
            let cmd = crate::state::Command::BlobAvailable { digest: digest.clone(), size: n as u64 };
            testkit::apply(&mut m, cmd).unwrap();
            names.push((digest, n as u64));
        }
        let log = RaftLog::new(m.store().clone());
        let image = log.state_image().unwrap();
        let blobs_named = named_blobs(&image).unwrap();
        assert_eq!(blobs_named.len(), 2);
        let header = Header {
            format: FORMAT,
            state_version: crate::state::STATE_VERSION,
            index: image.index,
            term: image.term,
            taken_at: SystemTime::UNIX_EPOCH,
            taken_by: 7,
            records: image.len() as u64,
            blobs: blobs_named,
        };
        let mut out = Vec::new();
        let summary = write_backup(&mut out, &header, &image, m.store().blobs()).unwrap();
        assert_eq!(summary.bytes, out.len() as u64);
        (out, summary, Box::new(dir))
    }

    fn read(bytes: &[u8]) -> Result<Summary, BackupError> {
        read_backup(bytes, &mut Check)
    }

    #[test]
    fn a_whole_backup_reads_back() {
        let (bytes, written, _d) = backup();
        let read = read(&bytes).unwrap();
        assert_eq!(read.sha256, written.sha256);
        assert_eq!(read.header.records, written.header.records);
        assert_eq!(read.blob_bytes(), 600_001);
    }

    /// Every way a file can be cut short is refused, naming where it ends and what was being
    /// read; nothing is taken for a whole backup.
    #[test]
    fn a_truncated_backup_says_where_it_ends() {
        let (bytes, _, _d) = backup();
        for cut in [bytes.len() - 1, bytes.len() - 40, bytes.len() / 2, 200, 20, 9] {
            let err = read(&bytes[..cut]).expect_err("a cut file is refused");
            let text = err.to_string();
            assert!(matches!(err, BackupError::Truncated { offset, .. } if offset == cut as u64), "{cut}: {text}");
            assert!(text.contains(&format!("ends at byte {cut}")), "{text}");
        }
        let half = read(&bytes[..bytes.len() / 2]).unwrap_err().to_string();
        assert!(half.contains("inside artifact"), "{half}");
        let end = read(&bytes[..bytes.len() - 1]).unwrap_err().to_string();
        assert!(end.contains("the checksum at the end"), "{end}");
        assert!(matches!(read(&bytes[..3]), Err(BackupError::Truncated { .. })));
        assert!(matches!(read(&[]), Err(BackupError::NotABackup)));
    }

    /// A changed byte is caught: where it breaks a frame, that frame is named with its offset;
    /// where it does not (inside a record's value), the checksum is.
    #[test]
    fn a_damaged_backup_says_what_is_wrong() {
        let (bytes, _, _d) = backup();
        let mut other = bytes.clone();
        other[0] = b'X';
        assert!(matches!(read(&other), Err(BackupError::NotABackup)));

        // A frame's length prefix made huge: refused before anything is allocated.
        let mut huge = bytes.clone();
        huge[MAGIC.len()] = 0xff;
        let err = read(&huge).unwrap_err();
        assert!(matches!(&err, BackupError::Damaged { offset: 8, .. }), "{err}");
        assert!(err.to_string().contains("over the 1048576-byte limit"), "{err}");

        // Every single flipped byte past the magic is refused, one way or another.
        let mut seen_checksum = false;
        for at in (MAGIC.len()..bytes.len()).step_by(bytes.len() / 97) {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x20;
            match read(&flipped) {
                Ok(_) => panic!("a flipped byte at {at} went unnoticed"),
                Err(BackupError::Checksum { .. }) => seen_checksum = true,
                Err(_) => {}
            }
        }
        assert!(seen_checksum, "some flips only the checksum catches");

        // Bytes after the end.
        let mut longer = bytes.clone();
        longer.push(0);
        let err = read(&longer).unwrap_err().to_string();
        assert!(err.contains("bytes after the checksum"), "{err}");
    }

    /// A restore writes the state and the artifacts into an empty data dir, makes it a cluster
    /// of one, and keeps the CA; a second restore into it is refused.
    #[test]
    fn a_restore_makes_a_cluster_of_one_with_the_state() {
        let (bytes, written, _d) = backup();
        let root = std::env::temp_dir().join(format!("fifty-restore-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&root).unwrap();
        let file = root.join("backup.fifty");
        std::fs::write(&file, &bytes).unwrap();
        let config = Config {
            data_dir: root.join("data"),
            http_addr: "127.0.0.1:17070".parse().unwrap(),
            quic_addr: "127.0.0.1:17071".parse().unwrap(),
            ..Config::default()
        };
        let restored = restore(&file, &config).unwrap();
        assert_eq!(restored.summary.sha256, written.sha256);
        let store = Store::open_with_blobs(&config.state_dir(), &config.blob_dir()).unwrap();
        let log = RaftLog::new(store.clone());
        assert_eq!(log.conf_state().unwrap().voters, vec![restored.node_id]);
        assert_eq!(log.applied().unwrap(), written.header.index);
        assert_eq!(store.members().unwrap().len(), 1);
        assert!(store.repo(&testkit::repo()).unwrap().is_some(), "the state came back");
        for (digest, _) in &written.header.blobs {
            assert!(store.blobs().verify(digest).unwrap(), "artifact {digest} is in the new blob store");
        }
        drop((log, store));
        let again = restore(&file, &config).unwrap_err().to_string();
        assert!(again.contains("already holds a coordinator's state"), "{again}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
