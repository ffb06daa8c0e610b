//! Downloading an artifact in pieces (`fifty_shared::pieces`), verified one by one.
//!
//! The coordinator sends the artifact's piece table, signed with the cluster's release key; the
//! agent checks the signature and that the table names the manifest's digest and size. Then it
//! fetches the pieces it lacks, [`PARALLEL_PIECES`] at once, each on a QUIC bi-stream of its own
//! (never the control stream), checks each against the table as it arrives and writes it at its
//! place in `downloads/<digest>.part`. Which pieces are there and verified is kept beside it in
//! `downloads/<digest>.pieces` (one byte per piece, `1` when verified), so an agent restarted or a
//! link dropped mid-download carries on with the pieces it lacks.
//!
//! Invariant: nothing unverified is used. A piece whose bytes do not match the table is not
//! written and is fetched again (the error names the piece and who sent it); the bitmap is written
//! without fsync, so on resume every piece it marks is hashed again and fetched anew if its bytes
//! are not there (a crash between the piece's write and the disk); and the assembled file's whole
//! SHA-256 is checked against the signed manifest before it is unpacked (`deploy`).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fifty_shared::codec::{self, read_frame, write_frame};
use fifty_shared::pieces::{PieceTable, SignedPieceTable};
use fifty_shared::wire::{DownloadRequest, DownloadResponse};
use tracing::warn;

/// Pieces requested at once.
pub const PARALLEL_PIECES: usize = 4;
/// How many times one piece may arrive bad before the download gives up.
pub const MAX_BAD_PIECE: u32 = 3;
/// How long one piece may take.
const PIECE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the coordinator may take to answer for the piece table (it hashes the artifact the
/// first time). A coordinator that never answers is older than download streams.
pub const TABLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest piece an agent accepts in a table (the coordinator uses 1 MiB).
const MAX_PIECE: u32 = 16 << 20;

/// Why a piece (or the table) did not arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Its bytes were wrong (hash or length): the sender is named in the text. Fetched again,
    /// up to [`MAX_BAD_PIECE`] times.
    Bad(String),
    /// The source said no (not allowed, not stored, damaged there): the download fails.
    Refused(String),
    /// The stream or connection failed, or took too long: try again, on a new link if needed.
    Lost(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Bad(s) | Failure::Refused(s) | Failure::Lost(s) => f.write_str(s),
        }
    }
}

/// Where pieces come from.
pub trait PieceSource: Send + Sync + 'static {
    /// Who it is, as errors name it ("coordinator 127.0.0.1:7000").
    fn name(&self) -> String;
    /// Piece `index` of artifact `digest`, `len` bytes long by the signed table (the bytes are
    /// checked by the caller; a source only refuses more bytes than `len`).
    fn piece(&self, digest: &str, index: u32, len: usize) -> impl Future<Output = Result<Vec<u8>, Failure>> + Send;
}

/// The coordinator the agent's link is up with: one bi-stream per request on its connection.
pub struct CoordinatorSource {
    conn: quinn::Connection,
}

impl CoordinatorSource {
    /// Requests go over `conn`, the agent's link.
    pub fn new(conn: quinn::Connection) -> Self {
        Self { conn }
    }

    async fn ask(&self, request: &DownloadRequest) -> Result<(quinn::RecvStream, DownloadResponse), Failure> {
        let lost = |what: &str, e: &dyn std::fmt::Display| Failure::Lost(format!("{what} to {}: {e}", self.name()));
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| lost("open a download stream", &e))?;
        write_frame(&mut send, request).await.map_err(|e| lost("send a download request", &e))?;
        let _ = send.finish();
        match read_frame::<DownloadResponse, _>(&mut recv).await {
            Ok(Some(answer)) => Ok((recv, answer)),
            Ok(None) => Err(Failure::Lost(format!("{} closed a download stream without answering", self.name()))),
            Err(codec::CodecError::Io(e)) => Err(lost("read a download answer", &e)),
            Err(e) => Err(Failure::Bad(format!("{} sent a malformed download answer: {e}", self.name()))),
        }
    }

    /// The signed piece table of artifact `digest`.
    pub async fn table(&self, digest: &str) -> Result<SignedPieceTable, Failure> {
        match self.ask(&DownloadRequest::PieceTable { digest: digest.to_string() }).await? {
            (_, DownloadResponse::PieceTable(table)) => Ok(table),
            (_, DownloadResponse::Refused { reason }) => Err(Failure::Refused(reason)),
            (_, other) => Err(Failure::Bad(format!("{} answered {other:?} to a piece table request", self.name()))),
        }
    }
}

impl PieceSource for CoordinatorSource {
    fn name(&self) -> String {
        format!("coordinator {}", self.conn.remote_address())
    }

    async fn piece(&self, digest: &str, index: u32, len: usize) -> Result<Vec<u8>, Failure> {
        let request = DownloadRequest::Piece { digest: digest.to_string(), index };
        let (mut recv, answer) = self.ask(&request).await?;
        let sent = match answer {
            DownloadResponse::Piece { index: i, len } if i == index => len as usize,
            DownloadResponse::Refused { reason } => return Err(Failure::Refused(reason)),
            other => return Err(Failure::Bad(format!("{} answered {other:?} for piece {index}", self.name()))),
        };
        if sent != len {
            return Err(Failure::Bad(format!(
                "piece {index} from {} is {sent} bytes; the signed piece table says {len}",
                self.name()
            )));
        }
        let mut bytes = vec![0; len];
        match recv.read_exact(&mut bytes).await {
            Ok(()) => Ok(bytes),
            Err(quinn::ReadExactError::FinishedEarly(got)) => {
                Err(Failure::Bad(format!("piece {index} from {} ended after {got} of {len} bytes", self.name())))
            }
            Err(quinn::ReadExactError::ReadError(e)) => {
                Err(Failure::Lost(format!("read piece {index} from {}: {e}", self.name())))
            }
        }
    }
}

/// Checks a signed piece table against the release key and the manifest's artifact.
pub fn verify_table(signed: &SignedPieceTable, key: &[u8], digest: &str, size: u64) -> Result<PieceTable, String> {
    let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key);
    public
        .verify(&PieceTable::signed_message(&signed.table), &signed.signature)
        .map_err(|_| "the piece table has a bad signature (not signed by this cluster's release key)".to_string())?;
    let table: PieceTable =
        codec::from_bytes(&signed.table).map_err(|e| format!("the piece table does not decode: {e}"))?;
    table.describes(digest, size).map_err(|e| e.to_string())?;
    if table.piece_size > MAX_PIECE {
        return Err(format!(
            "the piece table's pieces are {} bytes; at most {MAX_PIECE} are accepted",
            table.piece_size
        ));
    }
    Ok(table)
}

/// A download in progress on disk: the artifact's file, its pieces written in place, and the
/// bitmap of verified pieces beside it.
pub struct Partial {
    table: PieceTable,
    path: PathBuf,
    bitmap_path: PathBuf,
    file: File,
    have: Vec<bool>,
}

impl Partial {
    /// Opens (or starts) the download of `table`'s artifact in `dir`: pieces the bitmap marks are
    /// hashed again and kept only if their bytes are right.
    pub fn open(dir: &Path, table: PieceTable) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let path = dir.join(format!("{}.part", table.digest));
        let bitmap_path = dir.join(format!("{}.pieces", table.digest));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        file.set_len(table.size).map_err(|e| format!("size {}: {e}", path.display()))?;
        let count = table.count() as usize;
        let marked = match std::fs::read(&bitmap_path) {
            Ok(b) if b.len() == count => b.iter().map(|&x| x == b'1').collect(),
            _ => vec![false; count],
        };
        let mut partial = Self { table, path, bitmap_path, file, have: vec![false; count] };
        for (index, marked) in marked.into_iter().enumerate() {
            if marked {
                let index = index as u32;
                let (start, len) = partial.table.range(index).map_err(|e| e.to_string())?;
                let mut bytes = vec![0; len];
                let readable = partial.file.read_exact_at(&mut bytes, start).is_ok();
                match readable.then(|| partial.table.check(index, &bytes)) {
                    Some(Ok(())) => partial.have[index as usize] = true,
                    _ => {
                        warn!(piece = index, file = %partial.path.display(), "a piece marked verified is not on disk; fetching it again")
                    }
                }
            }
        }
        partial.write_bitmap()?;
        Ok(partial)
    }

    /// The pieces still to fetch, in order.
    pub fn missing(&self) -> Vec<u32> {
        (0..self.table.count()).filter(|&i| !self.have[i as usize]).collect()
    }

    /// Bytes of the verified pieces.
    pub fn verified_bytes(&self) -> u64 {
        (0..self.table.count())
            .filter(|&i| self.have[i as usize])
            .map(|i| self.table.range(i).map(|(_, len)| len as u64).unwrap_or(0))
            .sum()
    }

    /// Writes piece `index` in place and marks it verified. Only for bytes that passed
    /// `PieceTable::check` against this table (`fetch_missing` checks them, outside the lock, so
    /// pieces are hashed in parallel).
    fn write_checked(&mut self, index: u32, bytes: &[u8]) -> Result<(), String> {
        let (start, _) = self.table.range(index).map_err(|e| e.to_string())?;
        self.file.write_all_at(bytes, start).map_err(|e| format!("write {}: {e}", self.path.display()))?;
        self.have[index as usize] = true;
        self.write_bitmap()
    }

    fn write_bitmap(&self) -> Result<(), String> {
        let bytes: Vec<u8> = self.have.iter().map(|&h| if h { b'1' } else { b'0' }).collect();
        std::fs::write(&self.bitmap_path, bytes).map_err(|e| format!("write {}: {e}", self.bitmap_path.display()))
    }

    /// Every piece is verified: the file, and the bitmap removed (the caller checks the whole
    /// artifact's digest and removes the file when done with it).
    pub fn finish(self) -> Result<PathBuf, String> {
        if let Some(i) = self.missing().first() {
            return Err(format!("piece {i} of artifact {} is still missing", self.table.digest));
        }
        self.file.sync_all().map_err(|e| format!("fsync {}: {e}", self.path.display()))?;
        let _ = std::fs::remove_file(&self.bitmap_path);
        Ok(self.path)
    }

    /// The table.
    pub fn table(&self) -> &PieceTable {
        &self.table
    }
}

/// Fetches every missing piece of `partial` from `source`, [`PARALLEL_PIECES`] at once, checking
/// each; `progress` gets the verified bytes so far. After the first [`Failure::Refused`] or
/// [`Failure::Lost`], or a piece that came bad [`MAX_BAD_PIECE`] times, it asks for nothing more,
/// stores the pieces already on their way, and returns that failure.
pub async fn fetch_missing<S: PieceSource>(
    source: Arc<S>,
    partial: Arc<Mutex<Partial>>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), Failure> {
    let (table, mut queue): (Arc<PieceTable>, VecDeque<u32>) = {
        let p = partial.lock().expect("partial lock");
        (Arc::new(p.table().clone()), p.missing().into())
    };
    let mut bad: HashMap<u32, u32> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    // The first failure that ends the download; pieces already on their way are still stored.
    let mut stop: Option<Failure> = None;
    loop {
        while stop.is_none() && running.len() < PARALLEL_PIECES {
            let Some(index) = queue.pop_front() else { break };
            let (start_len, source, partial, digest, table) =
                (table.range(index), source.clone(), partial.clone(), table.digest.clone(), table.clone());
            running.spawn(async move {
                let fetched = async {
                    let (_, len) = start_len.map_err(|e| Failure::Bad(e.to_string()))?;
                    let bytes = match tokio::time::timeout(PIECE_TIMEOUT, source.piece(&digest, index, len)).await {
                        Ok(got) => got?,
                        Err(_) => {
                            let who = source.name();
                            return Err(Failure::Lost(format!("piece {index} from {who} took over {PIECE_TIMEOUT:?}")));
                        }
                    };
                    // Hashing and writing a piece: not on the async threads. Nothing is written
                    // before its hash matched.
                    let who = source.name();
                    tokio::task::spawn_blocking(move || {
                        table.check(index, &bytes).map_err(|e| Failure::Bad(format!("{e} (sent by {who})")))?;
                        partial.lock().expect("partial lock").write_checked(index, &bytes).map_err(Failure::Refused)
                    })
                    .await
                    .map_err(|e| Failure::Lost(format!("store piece {index}: {e}")))?
                };
                (index, fetched.await)
            });
        }
        let Some(joined) = running.join_next().await else {
            return match stop {
                Some(failure) => Err(failure),
                None => Ok(()),
            };
        };
        let (index, result) = match joined {
            Ok(r) => r,
            Err(e) => (u32::MAX, Err(Failure::Lost(format!("a piece fetch failed: {e}")))),
        };
        match result {
            Ok(()) => progress(partial.lock().expect("partial lock").verified_bytes()),
            Err(Failure::Bad(why)) => {
                let times = bad.entry(index).or_default();
                *times += 1;
                if *times >= MAX_BAD_PIECE {
                    stop.get_or_insert(Failure::Refused(format!("{why}; refused {times} times, giving up")));
                } else {
                    warn!(piece = index, %why, "bad piece refused; fetching it again");
                    queue.push_back(index);
                }
            }
            Err(other) => {
                stop.get_or_insert(other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("fifty-pieces-{}-{}", std::process::id(), rand::random::<u64>()))
    }

    fn artifact(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 13 % 251) as u8).collect()
    }

    /// An in-memory source: serves `bytes`, with faults by piece index.
    struct Fake {
        bytes: Vec<u8>,
        piece_size: usize,
        /// Pieces sent with a flipped byte, how many times each.
        corrupt: Mutex<HashMap<u32, u32>>,
        /// Pieces sent cut short, how many times each.
        truncate: Mutex<HashMap<u32, u32>>,
        /// After this many pieces, every request is lost (a dropped link).
        lose_after: Option<usize>,
        served: AtomicUsize,
        asked: Mutex<Vec<u32>>,
    }

    impl Fake {
        fn new(bytes: Vec<u8>, piece_size: usize) -> Self {
            Fake {
                bytes,
                piece_size,
                corrupt: Mutex::default(),
                truncate: Mutex::default(),
                lose_after: None,
                served: AtomicUsize::new(0),
                asked: Mutex::default(),
            }
        }
    }

    fn take(faults: &Mutex<HashMap<u32, u32>>, index: u32) -> bool {
        let mut f = faults.lock().unwrap();
        match f.get_mut(&index) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    impl PieceSource for Fake {
        fn name(&self) -> String {
            "fake peer".into()
        }

        async fn piece(&self, _digest: &str, index: u32, len: usize) -> Result<Vec<u8>, Failure> {
            self.asked.lock().unwrap().push(index);
            if self.lose_after.is_some_and(|n| self.served.load(Ordering::SeqCst) >= n) {
                return Err(Failure::Lost("link dropped".into()));
            }
            self.served.fetch_add(1, Ordering::SeqCst);
            let start = index as usize * self.piece_size;
            let mut bytes = self.bytes[start..start + len].to_vec();
            if take(&self.corrupt, index) {
                bytes[0] ^= 0xff;
            }
            if take(&self.truncate, index) {
                bytes.truncate(len / 2);
            }
            Ok(bytes)
        }
    }

    #[tokio::test]
    async fn pieces_are_verified_on_arrival_and_a_bad_one_is_fetched_again() {
        let dir = scratch();
        let data = artifact(10 * 1000 + 17);
        let table = PieceTable::of(&data, 1000);
        let fake = Arc::new(Fake::new(data.clone(), 1000));
        fake.corrupt.lock().unwrap().insert(3, 1);
        fake.truncate.lock().unwrap().insert(7, 2);
        let partial = Arc::new(Mutex::new(Partial::open(&dir, table.clone()).unwrap()));
        fetch_missing(fake.clone(), partial.clone(), &|_| {}).await.unwrap();
        let asked = fake.asked.lock().unwrap().clone();
        assert_eq!(asked.iter().filter(|&&i| i == 3).count(), 2, "piece 3 came bad once: {asked:?}");
        assert_eq!(asked.iter().filter(|&&i| i == 7).count(), 3, "piece 7 came short twice: {asked:?}");
        let partial = Arc::try_unwrap(partial).ok().unwrap().into_inner().unwrap();
        let path = partial.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(!dir.join(format!("{}.pieces", table.digest)).exists(), "the bitmap goes once done");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_piece_bad_every_time_fails_the_download_naming_it_and_its_sender() {
        let dir = scratch();
        let data = artifact(5000);
        let table = PieceTable::of(&data, 1000);
        let fake = Arc::new(Fake::new(data, 1000));
        fake.corrupt.lock().unwrap().insert(2, u32::MAX);
        let partial = Arc::new(Mutex::new(Partial::open(&dir, table).unwrap()));
        let err = fetch_missing(fake, partial.clone(), &|_| {}).await.unwrap_err();
        let Failure::Refused(why) = err else { panic!("{err:?}") };
        assert!(why.starts_with("piece 2 does not match the signed piece table"), "{why}");
        assert!(why.contains("(sent by fake peer); refused 3 times"), "{why}");
        assert_eq!(partial.lock().unwrap().missing(), [2], "the good pieces are kept");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_download_resumes_from_the_bitmap_after_a_dropped_link_and_a_restart() {
        let dir = scratch();
        let data = artifact(12 * 1000);
        let table = PieceTable::of(&data, 1000);
        let mut dropping = Fake::new(data.clone(), 1000);
        dropping.lose_after = Some(5);
        let partial = Arc::new(Mutex::new(Partial::open(&dir, table.clone()).unwrap()));
        let err = fetch_missing(Arc::new(dropping), partial.clone(), &|_| {}).await.unwrap_err();
        assert!(matches!(err, Failure::Lost(_)), "{err:?}");
        let kept = 12 - partial.lock().unwrap().missing().len();
        assert!(kept >= 5, "the pieces that arrived are kept: {kept}");
        drop(partial);

        // The agent restarts: the bitmap says which pieces are there; one of them was lost from
        // the disk (a crash before the write reached it) and is fetched again, not trusted.
        let bitmap = std::fs::read(dir.join(format!("{}.pieces", table.digest))).unwrap();
        assert_eq!(bitmap.iter().filter(|&&b| b == b'1').count(), kept);
        let first = bitmap.iter().position(|&b| b == b'1').unwrap();
        let file = OpenOptions::new().write(true).open(dir.join(format!("{}.part", table.digest))).unwrap();
        file.write_all_at(&[0u8; 10], first as u64 * 1000).unwrap();
        let reopened = Partial::open(&dir, table.clone()).unwrap();
        assert_eq!(reopened.missing().len(), 12 - kept + 1);
        assert!(reopened.missing().contains(&(first as u32)));
        let fresh = Arc::new(Fake::new(data.clone(), 1000));
        let partial = Arc::new(Mutex::new(reopened));
        fetch_missing(fresh.clone(), partial.clone(), &|_| {}).await.unwrap();
        assert_eq!(fresh.asked.lock().unwrap().len(), 12 - kept + 1, "only the missing pieces are fetched");
        let path = Arc::try_unwrap(partial).ok().unwrap().into_inner().unwrap().finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_table_signed_by_the_cluster_for_the_manifests_artifact_is_accepted() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(
            ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref(),
        )
        .unwrap();
        let public = key.public_key().as_ref().to_vec();
        let data = artifact(3000);
        let table = PieceTable::of(&data, 1000);
        let encoded = table.encode().unwrap();
        let sign = |bytes: &[u8]| key.sign(&PieceTable::signed_message(bytes)).as_ref().to_vec();
        let good = SignedPieceTable { table: encoded.clone(), signature: sign(&encoded) };
        assert_eq!(verify_table(&good, &public, &table.digest, 3000).unwrap(), table);
        // The bare encoding signed (without the context) is not a table signature.
        let bare = SignedPieceTable { table: encoded.clone(), signature: key.sign(&encoded).as_ref().to_vec() };
        assert!(verify_table(&bare, &public, &table.digest, 3000).unwrap_err().contains("bad signature"));
        let mut forged = table.clone();
        forged.hashes[1] = [0; 32];
        let forged = SignedPieceTable { table: forged.encode().unwrap(), signature: good.signature.clone() };
        assert!(verify_table(&forged, &public, &table.digest, 3000).unwrap_err().contains("bad signature"));
        let other = "1".repeat(64);
        assert!(verify_table(&good, &public, &other, 3000).unwrap_err().contains("the manifest names"));
    }
}
