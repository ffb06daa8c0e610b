//! The coordinator's artifact store: content-addressed files beside sled, in `<data_dir>/blobs/`,
//! each named by the SHA-256 (lower-case hex) of its bytes. The only module that touches them.
//!
//! Artifacts are not in Raft: the log records only that "artifact <digest> of <size> bytes is
//! available" (`Command::BlobAvailable`), once a quorum of coordinators holds the bytes.
//!
//! Invariants: a file named `<digest>` only ever appears with bytes that hash to `<digest>`: it is
//! written to a temporary file (mode 0600, in a 0700 directory), fsynced, read back and verified,
//! then renamed into place (and the directory fsynced). Two writers of the same digest each use a
//! temporary file of their own; the renames leave the same bytes whichever wins. Removing a blob
//! that is not there succeeds (removal is a side effect of applied commands, which replay).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fifty_shared::pieces::{PieceTable, TableBuilder};
use sha2::{Digest, Sha256};

/// A blob store failure.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A digest is not 64 lower-case hex digits (it names a file, so it is checked first).
    #[error("{0:?} is not a SHA-256 digest (64 lower-case hex digits)")]
    BadDigest(String),
    /// The bytes written do not hash to the digest they were written under.
    #[error("blob {expected}: the bytes hash to {actual}")]
    Mismatch {
        /// The digest the bytes were given under.
        expected: String,
        /// What they hash to.
        actual: String,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The blob directory of one coordinator.
pub struct Blobs {
    dir: PathBuf,
    /// One lock per digest being fetched from a peer, so concurrent callers fetch it once.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Checks that `digest` is a SHA-256 in lower-case hex: it becomes a file name.
pub fn check_digest(digest: &str) -> Result<(), BlobError> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(BlobError::BadDigest(digest.chars().take(80).collect()))
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BlobError + 'a {
    move |source| BlobError::Io { what, path: path.to_path_buf(), source }
}

impl Blobs {
    /// The store in `dir`; the directory is created (mode 0700) on the first write.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, fetching: Mutex::default() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        check_digest(digest)?;
        Ok(self.dir.join(digest))
    }

    /// The stored blob's size, if this coordinator holds it.
    pub fn size(&self, digest: &str) -> Result<Option<u64>, BlobError> {
        let path = self.path(digest)?;
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("stat", &path)(e)),
        }
    }

    /// Up to `max` bytes of a blob from `offset`, and its whole size; `None` if not held.
    pub fn read_at(&self, digest: &str, offset: u64, max: usize) -> Result<Option<(u64, Vec<u8>)>, BlobError> {
        let path = self.path(digest)?;
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let total = file.metadata().map_err(io("stat", &path))?.len();
        let want = total.saturating_sub(offset).min(max as u64) as usize;
        let mut data = vec![0; want];
        if want > 0 {
            file.seek(SeekFrom::Start(offset)).map_err(io("seek", &path))?;
            file.read_exact(&mut data).map_err(io("read", &path))?;
        }
        Ok(Some((total, data)))
    }

    /// Stores `bytes` under `digest`, checking first that they hash to it.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let mut writer = self.writer(digest)?;
        writer.write(bytes)?;
        writer.finish()
    }

    /// Starts writing a blob piece by piece (a fetch from a peer); nothing is visible under
    /// `digest` until [`BlobWriter::finish`] verified the whole.
    pub fn writer(&self, digest: &str) -> Result<BlobWriter, BlobError> {
        let target = self.path(digest)?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(io("create", &self.dir))?;
        // An existing directory keeps its mode: tighten it (artifacts may hold secrets).
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of", &self.dir))?;
        let temp = self.dir.join(format!(".tmp-{digest}-{:016x}", rand::random::<u64>()));
        let file =
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).map_err(io("create", &temp))?;
        Ok(BlobWriter { digest: digest.to_string(), dir: self.dir.clone(), temp, target, file: Some(file) })
    }

    /// Whether the blob's bytes still hash to its name (false if it is not held).
    pub fn verify(&self, digest: &str) -> Result<bool, BlobError> {
        let path = self.path(digest)?;
        match hash_file(&path) {
            Ok(actual) => Ok(actual == digest),
            Err(BlobError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The piece table of a held blob (`None` if not held), read from its bytes. The caller
    /// checks the table's digest against the blob's name: a blob damaged on disk since it was
    /// written gives a table with another digest.
    pub fn piece_table(&self, digest: &str, piece_size: u32) -> Result<Option<PieceTable>, BlobError> {
        let path = self.path(digest)?;
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let mut table = TableBuilder::new(piece_size);
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io("read", &path))?;
            if n == 0 {
                return Ok(Some(table.finish()));
            }
            table.update(&buf[..n]);
        }
    }

    /// Removes a blob; removing one that is not there is not an error.
    pub fn remove(&self, digest: &str) -> Result<(), BlobError> {
        let path = self.path(digest)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// Every blob held, with the time its file was last written; and temporary files (a
    /// write cut short by a crash) older than `stale`, which are removed.
    pub fn list(&self, stale: Duration) -> Result<Vec<(String, SystemTime)>, BlobError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("list", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let written = entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            if name.starts_with(".tmp-") {
                if written.elapsed().is_ok_and(|age| age > stale) {
                    let _ = std::fs::remove_file(entry.path());
                }
            } else if check_digest(&name).is_ok() {
                out.push((name, written));
            }
        }
        Ok(out)
    }

    /// The lock a fetch of `digest` from a peer holds, so it happens once at a time.
    pub fn fetch_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut fetching = self.fetching.lock().expect("fetching lock");
        fetching.retain(|_, lock| Arc::strong_count(lock) > 1);
        fetching.entry(digest.to_string()).or_default().clone()
    }

    /// Fault injection only: overwrites the start of a held blob with garbage in place, so
    /// this coordinator serves bytes that no longer match their digest.
    pub fn corrupt_for_fault_injection(&self, digest: &str) -> Result<(), BlobError> {
        let path = self.path(digest)?;
        let mut file = OpenOptions::new().write(true).open(&path).map_err(io("open", &path))?;
        let len = file.metadata().map_err(io("stat", &path))?.len().min(4096) as usize;
        file.write_all(&vec![0x5a; len.max(1)]).map_err(io("write", &path))?;
        file.sync_all().map_err(io("fsync", &path))
    }
}

/// A blob being written; dropped without [`BlobWriter::finish`], its temporary file goes.
pub struct BlobWriter {
    digest: String,
    dir: PathBuf,
    temp: PathBuf,
    target: PathBuf,
    file: Option<File>,
}

impl BlobWriter {
    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        let file = self.file.as_mut().expect("a writer is used until finished");
        file.write_all(bytes).map_err(io("write", &self.temp))
    }

    /// Fsyncs the file, reads it back to verify its digest, and renames it into place.
    pub fn finish(mut self) -> Result<(), BlobError> {
        let file = self.file.take().expect("a writer finishes once");
        file.sync_all().map_err(io("fsync", &self.temp))?;
        drop(file);
        let actual = hash_file(&self.temp)?;
        if actual != self.digest {
            return Err(BlobError::Mismatch { expected: self.digest.clone(), actual });
        }
        std::fs::rename(&self.temp, &self.target).map_err(io("rename into place", &self.target))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("fsync", &self.dir))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Unfinished, or finished with an error: the temporary file must not stay.
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// SHA-256 (hex) of a file's bytes.
fn hash_file(path: &Path) -> Result<String, BlobError> {
    let mut file = File::open(path).map_err(io("open", path))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex::encode(hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn blobs() -> (Blobs, Dir) {
        let dir = std::env::temp_dir().join(format!("fifty-blobs-{}-{}", std::process::id(), rand::random::<u64>()));
        (Blobs::new(dir.join("blobs")), Dir(dir))
    }

    fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_held_blobs_piece_table_is_read_from_its_bytes_and_shows_damage() {
        let (b, _dir) = blobs();
        let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
        let d = digest(&bytes);
        assert_eq!(b.piece_table(&d, 1 << 20).unwrap(), None);
        b.put(&d, &bytes).unwrap();
        let table = b.piece_table(&d, 1 << 20).unwrap().unwrap();
        assert_eq!(table, PieceTable::of(&bytes, 1 << 20));
        assert_eq!((table.digest.as_str(), table.count()), (d.as_str(), 3));
        b.corrupt_for_fault_injection(&d).unwrap();
        let damaged = b.piece_table(&d, 1 << 20).unwrap().unwrap();
        assert_ne!(damaged.digest, d, "a damaged blob's table does not carry its name's digest");
        assert_ne!(damaged.hashes[0], table.hashes[0]);
        assert_eq!(damaged.hashes[1..], table.hashes[1..]);
    }

    #[test]
    fn a_blob_is_written_private_verified_and_read_back_by_offset() {
        let (b, _dir) = blobs();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let d = digest(&bytes);
        assert_eq!(b.size(&d).unwrap(), None);
        b.put(&d, &bytes).unwrap();
        assert_eq!(b.size(&d).unwrap(), Some(bytes.len() as u64));
        assert!(b.verify(&d).unwrap());
        let (total, piece) = b.read_at(&d, 262_144, 262_144).unwrap().unwrap();
        assert_eq!(total, bytes.len() as u64);
        assert_eq!(piece, &bytes[262_144..]);
        assert_eq!(b.read_at(&d, bytes.len() as u64, 10).unwrap().unwrap().1, Vec::<u8>::new());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(b.dir()), 0o700);
        assert_eq!(mode(&b.dir().join(&d)), 0o600);
        // Only the blob is left: no temporary file.
        assert_eq!(std::fs::read_dir(b.dir()).unwrap().count(), 1);
        b.remove(&d).unwrap();
        b.remove(&d).unwrap();
        assert_eq!(b.size(&d).unwrap(), None);
    }

    #[test]
    fn bytes_that_do_not_match_their_digest_are_never_stored() {
        let (b, _dir) = blobs();
        let d = digest(b"the real artifact");
        let err = b.put(&d, b"something else").unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        assert_eq!(b.size(&d).unwrap(), None);
        assert_eq!(std::fs::read_dir(b.dir()).unwrap().count(), 0, "the temporary file is gone");
        let err = b.put("../../etc/passwd", b"x").unwrap_err();
        assert!(matches!(err, BlobError::BadDigest(_)), "{err}");
    }

    #[test]
    fn a_corrupted_file_is_detected() {
        let (b, _dir) = blobs();
        let bytes = vec![7u8; 10_000];
        let d = digest(&bytes);
        b.put(&d, &bytes).unwrap();
        b.corrupt_for_fault_injection(&d).unwrap();
        assert!(!b.verify(&d).unwrap());
        // Flipping one byte on disk, behind the store's back, is seen too.
        let (b2, _dir2) = blobs();
        b2.put(&d, &bytes).unwrap();
        let mut raw = std::fs::read(b2.dir().join(&d)).unwrap();
        raw[9_999] ^= 1;
        std::fs::write(b2.dir().join(&d), raw).unwrap();
        assert!(!b2.verify(&d).unwrap());
        assert!(!b2.verify(&digest(b"never stored")).unwrap());
    }

    #[test]
    fn concurrent_writers_of_one_digest_leave_one_whole_blob() {
        let (b, _dir) = blobs();
        let b = Arc::new(b);
        let bytes: Arc<Vec<u8>> = Arc::new((0..2_000_000u32).map(|i| (i * 7) as u8).collect());
        let d = digest(&bytes);
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (b, bytes, d) = (b.clone(), bytes.clone(), d.clone());
                std::thread::spawn(move || {
                    // Piece by piece, as a fetch from a peer writes, so the writers interleave.
                    let mut w = b.writer(&d).unwrap();
                    for piece in bytes.chunks(65_536) {
                        w.write(piece).unwrap();
                    }
                    w.finish().unwrap();
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert!(b.verify(&d).unwrap());
        let names: Vec<String> = std::fs::read_dir(b.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [d.clone()]);
        assert_eq!(b.list(Duration::ZERO).unwrap().into_iter().map(|(n, _)| n).collect::<Vec<_>>(), [d]);
    }
}
