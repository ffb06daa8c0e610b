//! The flushed mark: a small file beside sled's (`<state>/raft-mark`) that records the last Raft
//! log index (and its term) and the term and vote that sled has flushed to disk. A damaged disk can
//! take sled's newest writes with it without sled noticing (a torn or truncated tail opens as an
//! older, self-consistent database); this file is how the next start notices that the log or hard
//! state went back behind what this node already acknowledged to its peers.
//!
//! Invariant: the mark never claims more than was flushed. It is written only after a flush,
//! with what that flush made durable, and it is lowered (durably) *before* the log is cut back
//! (a follower's conflicting tail replaced, or an older snapshot installed).
//!
//! The Raft loop does not wait for the mark: [`MarkWriter`] writes it on a thread of its own (its
//! fdatasync would otherwise add to every write's latency), always the newest mark posted, at most
//! every 20 ms (`MIN_INTERVAL`). So the mark may trail the log by the flushes of the last few tens
//! of milliseconds, and a loss confined to those goes unnoticed; anything older that the disk loses
//! is caught at the next start.
//!
//! Format: two 64-byte slots, each `"FMRK"`, a sequence number and the four fields (u64 big-endian),
//! then the first 8 bytes of the SHA-256 of all that. Writes alternate between the slots and are
//! each followed by fdatasync; a write torn by a crash spoils only its own slot, and the other still
//! holds the previous (lower or equal, and still true) mark. The file is created whole (temp file,
//! fsync, rename, fsync of the directory), so it is never seen empty.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The file's name inside the state dir.
pub const FILE_NAME: &str = "raft-mark";

const MAGIC: &[u8; 4] = b"FMRK";
const SLOT: usize = 64;
/// Magic, sequence, four fields.
const BODY: usize = 4 + 8 + 4 * 8;

/// What was flushed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Mark {
    /// The last log index on disk.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The hard state's term.
    pub hs_term: u64,
    /// The hard state's vote.
    pub hs_vote: u64,
}

/// A mark file that is there but holds no valid slot.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The mark file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Neither slot is intact: the file itself was damaged.
    #[error("{path} is damaged (neither of its two copies is intact)")]
    Damaged {
        /// The mark file.
        path: PathBuf,
    },
}

fn digest(body: &[u8]) -> [u8; 8] {
    let d = Sha256::digest(body);
    d[..8].try_into().expect("a SHA-256 digest is 32 bytes")
}

fn encode(seq: u64, m: &Mark) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[..4].copy_from_slice(MAGIC);
    for (i, v) in [seq, m.index, m.term, m.hs_term, m.hs_vote].into_iter().enumerate() {
        slot[4 + i * 8..12 + i * 8].copy_from_slice(&v.to_be_bytes());
    }
    let d = digest(&slot[..BODY]);
    slot[BODY..BODY + 8].copy_from_slice(&d);
    slot
}

fn decode(slot: &[u8]) -> Option<(u64, Mark)> {
    if slot.len() < BODY + 8 || &slot[..4] != MAGIC || slot[BODY..BODY + 8] != digest(&slot[..BODY]) {
        return None;
    }
    let field = |i: usize| u64::from_be_bytes(slot[4 + i * 8..12 + i * 8].try_into().expect("8 bytes"));
    Some((field(0), Mark { index: field(1), term: field(2), hs_term: field(3), hs_vote: field(4) }))
}

/// The path of the mark file for the store in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the mark, with the sequence number of the slot it came from. `None` if there is no file
/// (a new node, or a store from before marks were kept).
pub fn read(path: &Path) -> Result<Option<(u64, Mark)>, MarkError> {
    let io = |source| MarkError::Io { path: path.to_path_buf(), source };
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let slots = [bytes.get(..SLOT), bytes.get(SLOT..2 * SLOT)];
    slots
        .into_iter()
        .flatten()
        .filter_map(decode)
        .max_by_key(|(seq, _)| *seq)
        .map(Some)
        .ok_or_else(|| MarkError::Damaged { path: path.to_path_buf() })
}

/// The writer of one store's mark file: remembers the last mark written and which slot is next.
#[derive(Debug)]
pub struct MarkFile {
    path: PathBuf,
    file: Option<File>,
    seq: u64,
    last: Option<Mark>,
}

impl MarkFile {
    /// The writer for `path`, continuing after whatever the file holds (a damaged file is
    /// replaced whole by the first write).
    pub fn open(path: PathBuf) -> Result<Self, MarkError> {
        let (seq, last) = match read(&path) {
            Ok(Some((seq, m))) => (seq, Some(m)),
            Ok(None) | Err(MarkError::Damaged { .. }) => (0, None),
            Err(e) => return Err(e),
        };
        Ok(Self { path, file: None, seq, last })
    }

    /// The mark last written (or read at open).
    pub fn last(&self) -> Option<Mark> {
        self.last
    }

    /// Makes `mark` durable; does nothing if it is the mark already written.
    pub fn write(&mut self, mark: Mark) -> Result<(), MarkError> {
        if self.last == Some(mark) {
            return Ok(());
        }
        let io = |source| MarkError::Io { path: self.path.clone(), source };
        self.seq += 1;
        let slot = encode(self.seq, &mark);
        match &mut self.file {
            Some(f) => {
                let at = (self.seq % 2) * SLOT as u64;
                f.seek(SeekFrom::Start(at)).map_err(io)?;
                f.write_all(&slot).map_err(io)?;
                f.sync_data().map_err(io)?;
            }
            None => {
                // First write of this process: the file is made whole, both slots holding this
                // mark, and renamed into place; from then on slots are overwritten in place.
                let tmp = self.path.with_extension("tmp");
                let mut f = File::create(&tmp).map_err(io)?;
                f.write_all(&slot).map_err(io)?;
                f.write_all(&slot).map_err(io)?;
                f.sync_all().map_err(io)?;
                drop(f);
                std::fs::rename(&tmp, &self.path).map_err(io)?;
                if let Some(dir) = self.path.parent() {
                    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                }
                self.file = Some(OpenOptions::new().write(true).open(&self.path).map_err(io)?);
            }
        }
        self.last = Some(mark);
        Ok(())
    }
}

/// Writes a store's mark on a thread of its own, always the newest posted; lowers it in line.
#[derive(Debug)]
pub struct MarkWriter {
    /// Held for each write, so a lowering waits for a write under way and none follows it.
    file: Mutex<MarkFile>,
    /// The newest mark posted and not yet written. Lock order: `file`, then `pending`.
    pending: Mutex<Option<Mark>>,
    posted: Condvar,
    thread: Mutex<bool>,
}

impl MarkWriter {
    /// The writer for the mark file at `path`.
    pub fn open(path: PathBuf) -> Result<Arc<Self>, MarkError> {
        Ok(Arc::new(Self {
            file: Mutex::new(MarkFile::open(path)?),
            pending: Mutex::new(None),
            posted: Condvar::new(),
            thread: Mutex::new(false),
        }))
    }

    fn lock_file(&self) -> std::sync::MutexGuard<'_, MarkFile> {
        self.file.lock().expect("the mark file lock is never poisoned")
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<Mark>> {
        self.pending.lock().expect("the pending mark lock is never poisoned")
    }

    /// Hands `mark` (what a flush just made durable) to the writer thread; does not wait.
    pub fn post(self: &Arc<Self>, mark: Mark) {
        *self.lock_pending() = Some(mark);
        self.posted.notify_one();
        let mut started = self.thread.lock().expect("the thread flag lock is never poisoned");
        if !*started {
            let weak = Arc::downgrade(self);
            match std::thread::Builder::new().name("raft-mark".into()).spawn(move || write_posted(weak)) {
                Ok(_) => *started = true,
                Err(e) => tracing::error!(error = %e, "could not start the flushed mark's writer"),
            }
        }
    }

    /// Writes the posted mark, if any, on this thread.
    pub fn sync(&self) -> Result<(), MarkError> {
        let mut file = self.lock_file();
        let pending = self.lock_pending().take();
        match pending {
            Some(m) => file.write(m),
            None => Ok(()),
        }
    }

    /// Lowers the mark to `index` (whose term `term` gives) and waits until that is durable, if
    /// the newest mark written or posted counts entries past `index`; a posted mark is dropped.
    pub fn lower<E: From<MarkError>>(&self, index: u64, term: impl FnOnce() -> Result<u64, E>) -> Result<(), E> {
        let mut file = self.lock_file();
        let mut pending = self.lock_pending();
        let Some(newest) = pending.or(file.last()) else { return Ok(()) };
        if newest.index <= index {
            return Ok(());
        }
        *pending = None;
        drop(pending);
        file.write(Mark { index, term: term()?, ..newest })?;
        Ok(())
    }
}

/// Least time between two marks written by the writer thread. Under a stream of writes, each
/// fdatasync of the mark competes with sled's fsync on the same disk (measured: 1-client write
/// p50 6.2 ms with a mark per flush, 4.1 ms without); writing at most every 20 ms bounds that to
/// 50 a second, while the mark trails the log by at most 20 ms more.
const MIN_INTERVAL: Duration = Duration::from_millis(20);

/// The writer thread: writes whatever is posted (the newest, at most every [`MIN_INTERVAL`]);
/// ends when the writer is dropped.
fn write_posted(writer: Weak<MarkWriter>) {
    let mut last_write: Option<std::time::Instant> = None;
    loop {
        let Some(w) = writer.upgrade() else { return };
        {
            let pending = w.lock_pending();
            if pending.is_none() {
                // Wake now and then to notice the writer was dropped.
                let _ = w.posted.wait_timeout(pending, Duration::from_secs(1));
                continue;
            }
        }
        // A rate limit, not a wait for an event: the marks posted meanwhile become one write.
        if let Some(wait) = last_write.map(|at| MIN_INTERVAL.saturating_sub(at.elapsed())).filter(|d| !d.is_zero()) {
            drop(w);
            std::thread::sleep(wait);
            continue;
        }
        last_write = Some(std::time::Instant::now());
        if let Err(e) = w.sync() {
            tracing::error!(error = %e, "could not write the flushed mark; damage to the Raft log may go unnoticed at the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fifty-mark-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mark(index: u64) -> Mark {
        Mark { index, term: 2, hs_term: 3, hs_vote: 4 }
    }

    #[test]
    fn the_newest_intact_slot_wins_and_a_torn_one_falls_back_to_the_other() {
        let dir = temp();
        let path = path_in(&dir);
        assert_eq!(read(&path).unwrap(), None);
        let mut file = MarkFile::open(path.clone()).unwrap();
        file.write(mark(10)).unwrap();
        assert_eq!(read(&path).unwrap().map(|(_, m)| m), Some(mark(10)));
        file.write(mark(12)).unwrap();
        file.write(mark(9)).unwrap();
        assert_eq!(read(&path).unwrap().map(|(_, m)| m), Some(mark(9)), "a lowered mark is the newest");

        // Tear the newest slot: the other slot's (older) mark is read.
        let (seq, _) = read(&path).unwrap().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(seq % 2) as usize * SLOT + 20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap().map(|(_, m)| m), Some(mark(12)));

        // Both torn: the file is reported damaged, not taken as "no mark".
        bytes[(1 - seq % 2) as usize * SLOT + 20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&path), Err(MarkError::Damaged { .. })));

        // A writer opened on it continues after the last intact sequence.
        let mut file = MarkFile::open(path.clone()).unwrap();
        file.write(mark(20)).unwrap();
        file.write(mark(21)).unwrap();
        assert_eq!(read(&path).unwrap().map(|(_, m)| m), Some(mark(21)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn posted_marks_reach_the_file_and_a_lowering_drops_a_higher_one_still_posted() {
        let dir = temp();
        let path = path_in(&dir);
        let writer = MarkWriter::open(path.clone()).unwrap();
        writer.post(mark(10));
        let written = (0..600).find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            read(&path).unwrap().filter(|(_, m)| *m == mark(10))
        });
        assert!(written.is_some(), "the writer thread never wrote the posted mark");

        // Posted, then cut back before the thread wrote it: the file holds the lowered mark and
        // the higher one is never written after it.
        *writer.lock_pending() = Some(mark(14));
        writer.lower::<MarkError>(8, || Ok(2)).unwrap();
        writer.sync().unwrap();
        assert_eq!(read(&path).unwrap().map(|(_, m)| m), Some(mark(8)));
        // A lowering below nothing higher changes nothing.
        writer.lower::<MarkError>(9, || panic!("no term is needed")).unwrap();
        assert_eq!(read(&path).unwrap().map(|(_, m)| m), Some(mark(8)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
