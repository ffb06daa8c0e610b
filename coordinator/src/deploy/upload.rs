//! Who may move artifact bytes through the leader, decided without I/O (the caller passes `now`
//! and asks the state through a closure).
//!
//! - [`Uploads`]: a package job's artifact arrives as chunks before its result. Only the host
//!   running that attempt of a package job may start an upload; the upload then belongs to it, so
//!   no other host can append to it or reset it. The leader holds at most [`MAX_UPLOADS`] uploads
//!   and [`MAX_BUFFERED`] bytes of them (counted by what is allocated), and forgets an upload idle
//!   for [`UPLOAD_IDLE`]: an enrolled host cannot make the leader's memory grow without bound.
//! - [`FetchGrants`]: a host may download an artifact only if a release with that digest targets
//!   it (or it is a build host); the decision reads the state, so it is remembered for
//!   [`GRANT_FOR`] rather than made again for every 256 KiB piece.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fifty_shared::ids::HostName;
use fifty_shared::wire::{JobRef, MAX_ARTIFACT_BYTES};

/// Most uploads the leader holds at once.
pub const MAX_UPLOADS: usize = 8;
/// Most bytes the leader allocates for uploads in all (two artifacts of the largest size).
pub const MAX_BUFFERED: u64 = 2 * MAX_ARTIFACT_BYTES;
/// An upload with no chunk for this long is dropped.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(120);
/// How long a host's permission to fetch an artifact is remembered.
pub const GRANT_FOR: Duration = Duration::from_secs(300);
/// Most (host, artifact) permissions remembered; past this, each fetch asks the state again.
pub const MAX_GRANTS: usize = 100_000;

/// Why a chunk was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkRefusal {
    /// The sender does not run this attempt of a package job.
    #[error("{0} is not a package job this host runs")]
    NotYours(JobRef),
    /// Another host started this upload.
    #[error("{job} is being uploaded by {owner}")]
    OtherHost {
        /// The attempt.
        job: JobRef,
        /// Who uploads it.
        owner: HostName,
    },
    /// A chunk past offset 0 of an upload that was never started (or was dropped).
    #[error("no upload of {0} is in progress; an upload starts at offset 0")]
    NotStarted(JobRef),
    /// The chunk does not continue the upload; it is dropped.
    #[error("{job}: chunk at offset {got}, expected {expected}; the upload is dropped")]
    OutOfOrder {
        /// The attempt.
        job: JobRef,
        /// Where the chunk starts.
        got: u64,
        /// Bytes received so far.
        expected: u64,
    },
    /// The artifact would pass the largest size ([`MAX_ARTIFACT_BYTES`]); the upload is dropped.
    #[error("{0}: the artifact is over the largest size accepted; the upload is dropped")]
    TooLarge(JobRef),
    /// As many uploads as the leader holds ([`MAX_UPLOADS`]) are in progress.
    #[error("{0}: as many uploads as the leader holds are in progress already")]
    TooMany(JobRef),
    /// The uploads in progress hold as many bytes as the leader allows ([`MAX_BUFFERED`]); this
    /// one is dropped.
    #[error("{0}: uploads in progress hold as many bytes as the leader allows; the upload is dropped")]
    OverBudget(JobRef),
}

struct Upload {
    owner: HostName,
    bytes: Vec<u8>,
    last: Instant,
}

/// Package jobs' artifacts being uploaded to the leader.
pub struct Uploads {
    by_job: HashMap<JobRef, Upload>,
    /// Bytes allocated for all uploads (capacities, not lengths).
    allocated: u64,
    limits: Limits,
}

/// The bounds [`Uploads`] keeps (tests use small ones).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most uploads at once.
    pub uploads: usize,
    /// Largest artifact.
    pub artifact: u64,
    /// Most bytes allocated in all.
    pub buffered: u64,
}

impl Default for Uploads {
    fn default() -> Self {
        Self::with_limits(Limits { uploads: MAX_UPLOADS, artifact: MAX_ARTIFACT_BYTES, buffered: MAX_BUFFERED })
    }
}

impl Uploads {
    /// No uploads yet, within `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        Self { by_job: HashMap::new(), allocated: 0, limits }
    }

    /// Takes one chunk from `host`. `runs_job` says whether `host` runs attempt `job` of a package
    /// job now; it is asked only when an upload starts (offset 0). A chunk that does not continue
    /// an upload drops it (the job's result will then say the upload is incomplete), except one
    /// from a host that does not own it, which changes nothing.
    pub fn on_chunk(
        &mut self,
        host: &HostName,
        job: JobRef,
        offset: u64,
        data: &[u8],
        now: Instant,
        runs_job: impl FnOnce() -> bool,
    ) -> Result<(), ChunkRefusal> {
        self.expire(now);
        if let Some(up) = self.by_job.get(&job) {
            if up.owner != *host {
                return Err(ChunkRefusal::OtherHost { job, owner: up.owner.clone() });
            }
        }
        if offset == 0 {
            if !runs_job() {
                return Err(ChunkRefusal::NotYours(job));
            }
            // The owner starting again: its result is re-sent on a new link, from the start.
            self.drop_upload(job);
            if self.by_job.len() >= self.limits.uploads {
                return Err(ChunkRefusal::TooMany(job));
            }
            self.by_job.insert(job, Upload { owner: host.clone(), bytes: Vec::new(), last: now });
        }
        let Some(up) = self.by_job.get(&job) else { return Err(ChunkRefusal::NotStarted(job)) };
        let (len, capacity) = (up.bytes.len() as u64, up.bytes.capacity() as u64);
        if len != offset {
            self.drop_upload(job);
            return Err(ChunkRefusal::OutOfOrder { job, got: offset, expected: len });
        }
        let needed = len + data.len() as u64;
        if needed > self.limits.artifact {
            self.drop_upload(job);
            return Err(ChunkRefusal::TooLarge(job));
        }
        // Grow in powers of two, decided here, so what is counted is what is allocated.
        let grown = if needed > capacity { needed.next_power_of_two().min(self.limits.artifact) } else { capacity };
        if self.allocated - capacity + grown > self.limits.buffered {
            self.drop_upload(job);
            return Err(ChunkRefusal::OverBudget(job));
        }
        let up = self.by_job.get_mut(&job).expect("checked above");
        up.bytes.reserve_exact((grown - len) as usize);
        up.bytes.extend_from_slice(data);
        up.last = now;
        self.allocated = self.allocated - capacity + up.bytes.capacity() as u64;
        Ok(())
    }

    /// The bytes `host` uploaded for `job`, removed; None if it uploaded none.
    pub fn take(&mut self, job: JobRef, host: &HostName) -> Option<Vec<u8>> {
        if self.by_job.get(&job).is_none_or(|up| up.owner != *host) {
            return None;
        }
        let up = self.by_job.remove(&job).expect("checked above");
        self.allocated -= up.bytes.capacity() as u64;
        Some(up.bytes)
    }

    /// Drops uploads idle for [`UPLOAD_IDLE`].
    pub fn expire(&mut self, now: Instant) {
        let idle: Vec<JobRef> = self
            .by_job
            .iter()
            .filter(|(_, up)| now.saturating_duration_since(up.last) >= UPLOAD_IDLE)
            .map(|(job, _)| *job)
            .collect();
        for job in idle {
            self.drop_upload(job);
        }
    }

    /// Uploads in progress and the bytes allocated for them.
    pub fn usage(&self) -> (usize, u64) {
        (self.by_job.len(), self.allocated)
    }

    fn drop_upload(&mut self, job: JobRef) {
        if let Some(up) = self.by_job.remove(&job) {
            self.allocated -= up.bytes.capacity() as u64;
        }
    }
}

/// Remembered permissions to fetch an artifact: (host, digest) → when granted.
#[derive(Default)]
pub struct FetchGrants {
    granted: HashMap<(HostName, String), Instant>,
}

impl FetchGrants {
    /// Whether `host` may fetch the artifact `digest`: remembered if granted within
    /// [`GRANT_FOR`], else `decide()` (which reads the state). A refusal is not remembered, so a
    /// host the state comes to allow is served at once.
    pub fn allowed(&mut self, host: &HostName, digest: &str, now: Instant, decide: impl FnOnce() -> bool) -> bool {
        let key = (host.clone(), digest.to_string());
        if self.granted.get(&key).is_some_and(|at| now.saturating_duration_since(*at) < GRANT_FOR) {
            return true;
        }
        if !decide() {
            self.granted.remove(&key);
            return false;
        }
        self.remember(key, now);
        true
    }

    /// Lets `host` fetch `digest` for [`GRANT_FOR`] whatever the state says: an admin's fault
    /// injection (`POST /v1/debug/deploy`) orders a host to deploy a release outside any rollout.
    pub fn grant(&mut self, host: &HostName, digest: &str, now: Instant) {
        self.remember((host.clone(), digest.to_string()), now);
    }

    fn remember(&mut self, key: (HostName, String), now: Instant) {
        if self.granted.len() >= MAX_GRANTS {
            self.granted.retain(|_, at| now.saturating_duration_since(*at) < GRANT_FOR);
        }
        if self.granted.len() < MAX_GRANTS {
            self.granted.insert(key, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostName {
        HostName::new(name).unwrap()
    }

    fn job(n: u64) -> JobRef {
        JobRef { job: n, attempt: 1 }
    }

    #[test]
    fn only_the_host_running_the_package_job_uploads_and_nobody_else_resets_it() {
        let (mut u, now) = (Uploads::default(), Instant::now());
        let (build, intruder) = (host("build-1"), host("web-1"));
        // A made-up job, or one this host does not run: nothing is kept.
        assert_eq!(u.on_chunk(&intruder, job(9), 0, b"junk", now, || false), Err(ChunkRefusal::NotYours(job(9))));
        assert_eq!(u.on_chunk(&intruder, job(9), 4, b"junk", now, || true), Err(ChunkRefusal::NotStarted(job(9))));
        assert_eq!(u.usage(), (0, 0));

        u.on_chunk(&build, job(1), 0, b"hello ", now, || true).unwrap();
        // Another host's offset 0 (or any chunk) for the same attempt changes nothing.
        let refused = u.on_chunk(&intruder, job(1), 0, b"evil", now, || true);
        assert_eq!(refused, Err(ChunkRefusal::OtherHost { job: job(1), owner: build.clone() }));
        assert!(u.on_chunk(&intruder, job(1), 6, b"evil", now, || true).is_err());
        u.on_chunk(&build, job(1), 6, b"world", now, || true).unwrap();
        assert_eq!(u.take(job(1), &intruder), None);
        assert_eq!(u.take(job(1), &build).as_deref(), Some(&b"hello world"[..]));
        assert_eq!(u.usage(), (0, 0));
    }

    #[test]
    fn the_owner_may_start_again_and_a_gap_drops_the_upload() {
        let (mut u, now) = (Uploads::default(), Instant::now());
        let build = host("build-1");
        u.on_chunk(&build, job(1), 0, b"abc", now, || true).unwrap();
        // A new link re-sends the result from the start.
        u.on_chunk(&build, job(1), 0, b"xy", now, || true).unwrap();
        let gap = u.on_chunk(&build, job(1), 5, b"z", now, || true);
        assert_eq!(gap, Err(ChunkRefusal::OutOfOrder { job: job(1), got: 5, expected: 2 }));
        assert_eq!(u.take(job(1), &build), None);
        assert_eq!(u.usage(), (0, 0));
    }

    #[test]
    fn uploads_are_bounded_in_number_size_and_bytes_and_expire_when_idle() {
        let (mut u, t0) = (Uploads::default(), Instant::now());
        let build = host("build-1");
        for n in 0..MAX_UPLOADS as u64 {
            u.on_chunk(&build, job(n), 0, b"x", t0, || true).unwrap();
        }
        let n = MAX_UPLOADS as u64;
        assert_eq!(u.on_chunk(&build, job(n), 0, b"x", t0, || true), Err(ChunkRefusal::TooMany(job(n))));

        // Idle uploads go; the one still sending stays.
        let later = t0 + UPLOAD_IDLE - Duration::from_secs(1);
        u.on_chunk(&build, job(0), 1, b"y", later, || true).unwrap();
        u.expire(t0 + UPLOAD_IDLE);
        assert_eq!(u.usage().0, 1);
        u.on_chunk(&build, job(n), 0, b"x", t0 + UPLOAD_IDLE, || true).unwrap();

        // One artifact cannot pass the size cap (small limits keep the test's memory small).
        let limits = Limits { uploads: 8, artifact: 64 << 10, buffered: 128 << 10 };
        let mut u = Uploads::with_limits(limits);
        let piece = vec![0u8; 1000];
        let fill = |u: &mut Uploads, j: u64| {
            let mut offset = 0;
            while offset + 1000 <= limits.artifact {
                u.on_chunk(&build, job(j), offset, &piece, t0, || true)?;
                offset += 1000;
            }
            Ok::<u64, ChunkRefusal>(offset)
        };
        let end = fill(&mut u, 1).unwrap();
        assert_eq!(u.usage(), (1, limits.artifact), "grown in powers of two up to the cap");
        assert_eq!(u.on_chunk(&build, job(1), end, &piece, t0, || true), Err(ChunkRefusal::TooLarge(job(1))));
        assert_eq!(u.usage(), (0, 0));

        // Together, uploads cannot pass the byte budget: the one that would is dropped.
        fill(&mut u, 1).unwrap();
        fill(&mut u, 2).unwrap();
        assert_eq!(u.usage(), (2, limits.buffered));
        assert_eq!(u.on_chunk(&build, job(3), 0, b"a", t0, || true), Err(ChunkRefusal::OverBudget(job(3))));
        assert_eq!(u.usage(), (2, limits.buffered));
        assert!(u.take(job(1), &build).is_some());
        u.on_chunk(&build, job(3), 0, b"a", t0, || true).unwrap();
    }

    #[test]
    fn fetch_permission_is_asked_once_and_remembered_for_a_while() {
        let (mut g, t0) = (FetchGrants::default(), Instant::now());
        let web = host("web-1");
        let mut asked = 0;
        assert!(!g.allowed(&web, "d1", t0, || {
            asked += 1;
            false
        }));
        // A refusal is not remembered: the state is asked again.
        assert!(g.allowed(&web, "d1", t0, || {
            asked += 1;
            true
        }));
        assert!(g.allowed(&web, "d1", t0 + GRANT_FOR / 2, || panic!("remembered")));
        assert!(!g.allowed(&web, "d1", t0 + GRANT_FOR, || {
            asked += 1;
            false
        }));
        assert_eq!(asked, 3);
        assert!(!g.allowed(&host("web-2"), "d1", t0, || false), "permission is per host");
        g.grant(&host("web-2"), "d1", t0);
        assert!(g.allowed(&host("web-2"), "d1", t0, || false), "granted by hand");
    }
}
