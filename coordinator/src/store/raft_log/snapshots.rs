//! Building snapshots without holding up the Raft thread.
//!
//! raft-rs asks for a snapshot on the Raft thread (`Storage::snapshot`, while it prepares a
//! message to a follower that is behind the log), and heartbeats wait until the call returns.
//! sled 0.34 has no point-in-time reads, and apply goes on writing once the call returns, so the
//! state cannot be read later on another thread. The call therefore splits the work:
//!
//! - on the Raft thread, [`StateCopy::take`]: the state records as sled hands them out (`IVec`s
//!   are reference-counted or inline, so collecting them copies no record's bytes), with the
//!   applied index, its term and the conf state. Nothing is encoded;
//! - on a thread of its own, [`StateCopy::encode`]: the codec frames of every record.
//!
//! The call answers `SnapshotTemporarilyUnavailable` while the build runs; raft-rs asks again at
//! the follower's next heartbeat response (`prepare_send_snapshot`, `handle_heartbeat_response`),
//! and then gets the built snapshot, kept here for as long as it is usable. The deterministic
//! simulation builds inline ([`SnapshotBuild::Inline`]): no thread timing may decide its schedule.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use raft::eraftpb::{ConfState, Snapshot};

use fifty_shared::codec;

use super::SnapshotRecord;
use crate::store::{StoreError, LEGACY_BLOB_PREFIX, STATE_PREFIX};

/// Where a [`super::RaftLog`] encodes the snapshots it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotBuild {
    /// Copy the state on the calling (Raft) thread, encode it on a thread of its own; the call
    /// answers "temporarily unavailable" until the snapshot is built. What `fifty server` uses.
    Background,
    /// Copy and encode during the call, which returns the snapshot. For the deterministic
    /// simulation, where thread timing must not decide anything.
    Inline,
}

/// The snapshot cache and the build under way, shared by every clone of one log.
pub(super) struct Snapshots {
    pub(super) mode: SnapshotBuild,
    state: Mutex<BuildState>,
    /// Held by a test to keep a background build from encoding until the test has written more.
    #[cfg(test)]
    pub(super) hold: Mutex<()>,
}

#[derive(Default)]
struct BuildState {
    /// The newest snapshot built.
    built: Option<Snapshot>,
    /// The applied index of the build under way: one build at a time.
    building: Option<u64>,
    /// The applied index at which the last build failed: no new build is started until the
    /// state has moved past it (the same state would fail the same way).
    failed_at: Option<u64>,
}

/// What [`Snapshots::serve`] decided.
pub(super) enum Serve {
    /// A built snapshot that is still usable.
    Ready(Snapshot),
    /// A build is under way, or the last one failed at this state: ask again later.
    Wait,
    /// Nothing usable and nothing under way: copy the state and build. In background mode the
    /// build is marked as under way already: start it, or [`abandon`](Snapshots::abandon) it.
    Build,
}

impl Snapshots {
    pub(super) fn new(mode: SnapshotBuild) -> Self {
        Self {
            mode,
            state: Mutex::new(BuildState::default()),
            #[cfg(test)]
            hold: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BuildState> {
        self.state.lock().expect("the snapshot lock is never held across a panic")
    }

    /// The cached snapshot if it is usable for follower `to`, which needs at least
    /// `request_index`, given that the log was compacted at `compacted`. Not usable: one older
    /// than the compaction (the follower could not go on from the log: the entries after it are
    /// gone), or one whose conf state does not name `to` (raft-rs on the follower refuses it: a
    /// coordinator that joined after it was built).
    pub(super) fn serve(&self, request_index: u64, to: u64, compacted: u64, applied: u64) -> Serve {
        let mut state = self.lock();
        if let Some(snap) = &state.built {
            let meta = snap.get_metadata();
            if meta.index >= request_index && meta.index >= compacted && names(meta.get_conf_state(), to) {
                return Serve::Ready(snap.clone());
            }
        }
        if state.building.is_some() || state.failed_at.is_some_and(|at| at >= applied) {
            return Serve::Wait;
        }
        if self.mode == SnapshotBuild::Background {
            state.building = Some(applied);
        }
        Serve::Build
    }

    /// Forgets a build that [`serve`](Self::serve) marked but that could not start.
    pub(super) fn abandon(&self) {
        self.lock().building = None;
    }

    /// Encodes `copy` now and keeps the result (inline builds).
    pub(super) fn build_inline(&self, copy: StateCopy) -> Result<Snapshot, StoreError> {
        let snap = copy.encode()?;
        self.lock().built = Some(snap.clone());
        Ok(snap)
    }

    /// Encodes `copy` on a thread of its own and keeps the result; the next
    /// [`serve`](Self::serve) after it finishes returns it.
    pub(super) fn build_in_background(self: &Arc<Self>, copy: StateCopy) {
        let index = copy.index;
        let this = self.clone();
        let spawned = std::thread::Builder::new().name("snapshot-build".into()).spawn(move || {
            #[cfg(test)]
            drop(this.hold.lock());
            let result = copy.encode();
            let mut state = this.lock();
            state.building = None;
            match result {
                Ok(snap) => {
                    state.failed_at = None;
                    state.built = Some(snap);
                }
                Err(e) => {
                    // raft-rs would end the process on an error here (its `fatal!`), on every
                    // leader in turn; a follower that cannot get a snapshot is better than a
                    // cluster that cannot keep a leader. Records are bounded when written, so
                    // this is a bug to report, not a state to expect.
                    tracing::error!(index, error = %e, "building a snapshot failed; followers that need one wait");
                    state.failed_at = Some(index);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(index, error = %e, "cannot start a thread to build a snapshot; will try again");
            self.abandon();
        }
    }
}

/// Whether `cs` lists node `id` in any role.
fn names(cs: &ConfState, id: u64) -> bool {
    [&cs.voters, &cs.learners, &cs.voters_outgoing, &cs.learners_next].iter().any(|ids| ids.contains(&id))
}

/// The state machine's records at one applied index, as sled handed them out.
pub(super) struct StateCopy {
    pub(super) index: u64,
    pub(super) term: u64,
    pub(super) conf_state: ConfState,
    records: Vec<(sled::IVec, sled::IVec)>,
}

impl StateCopy {
    /// Collects every state record, except legacy artifact chunks (artifact bytes are not state:
    /// they live in the blob store, and a coordinator that installs the snapshot fetches the
    /// blobs its records name from a peer). Call it where nothing writes the state meanwhile:
    /// on the Raft thread, between applies. `index` must be the applied index.
    pub(super) fn take(tree: &sled::Tree, index: u64, term: u64, conf_state: ConfState) -> Result<Self, StoreError> {
        let started = Instant::now();
        let mut records = Vec::new();
        for item in tree.scan_prefix(STATE_PREFIX.as_bytes()) {
            let (key, value) = item?;
            if key.starts_with(LEGACY_BLOB_PREFIX.as_bytes()) {
                continue;
            }
            records.push((key, value));
        }
        tracing::debug!(
            index,
            records = records.len(),
            took = ?started.elapsed(),
            "copied the state for a snapshot (on the Raft thread)"
        );
        Ok(Self { index, term, conf_state, records })
    }

    /// The records as copied, for a backup (`crate::backup`).
    pub(super) fn into_records(self) -> Vec<(sled::IVec, sled::IVec)> {
        self.records
    }

    /// The snapshot: metadata, and the records as a sequence of codec frames.
    pub(super) fn encode(self) -> Result<Snapshot, StoreError> {
        let started = Instant::now();
        let mut data = Vec::new();
        for (key, value) in &self.records {
            let record = SnapshotRecord { key: key.to_vec(), value: value.to_vec() };
            let frame = codec::encode_frame(&record)
                .map_err(|source| StoreError::Encode { key: String::from_utf8_lossy(key).into_owned(), source })?;
            data.extend_from_slice(&frame);
        }
        let mut snapshot = Snapshot::default();
        let bytes = data.len();
        snapshot.data = data.into();
        let meta = snapshot.mut_metadata();
        meta.index = self.index;
        meta.term = self.term;
        meta.set_conf_state(self.conf_state);
        tracing::debug!(
            index = self.index,
            records = self.records.len(),
            bytes,
            took = ?started.elapsed(),
            "encoded a snapshot"
        );
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_with(index: u64, value_len: usize) -> StateCopy {
        let mut conf_state = ConfState::default();
        conf_state.voters = vec![1, 2];
        let records = vec![(sled::IVec::from(&b"sm/x"[..]), sled::IVec::from(vec![7u8; value_len]))];
        StateCopy { index, term: 1, conf_state, records }
    }

    fn wait_idle(s: &Snapshots) {
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while s.lock().building.is_some() {
            assert!(Instant::now() < deadline, "the build did not finish within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A build that fails (a record over the frame limit: a bug, since records are bounded when
    /// written) is not returned to raft-rs, which would end the process on every leader in turn;
    /// the same state is not built again, a newer one is.
    #[test]
    fn a_failed_build_waits_for_the_state_to_move_on() {
        let s = Arc::new(Snapshots::new(SnapshotBuild::Background));
        assert!(matches!(s.serve(0, 2, 0, 5), Serve::Build));
        assert!(matches!(s.serve(0, 2, 0, 5), Serve::Wait), "one build at a time");
        s.build_in_background(copy_with(5, codec::MAX_FRAME + 1));
        wait_idle(&s);
        assert_eq!(s.lock().failed_at, Some(5));
        assert!(matches!(s.serve(0, 2, 0, 5), Serve::Wait), "the same state would fail the same way");
        assert!(matches!(s.serve(0, 2, 0, 6), Serve::Build), "a newer state is tried");
        s.build_in_background(copy_with(6, 10));
        wait_idle(&s);
        let Serve::Ready(snap) = s.serve(0, 2, 0, 6) else { panic!("the newer build was not served") };
        assert_eq!(snap.get_metadata().index, 6);
        assert_eq!(s.lock().failed_at, None);
    }
}
