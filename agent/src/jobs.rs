//! The build agent's job runner. The coordinator hands out jobs (`CoordinatorMsg::RunJob`); each
//! one runs here as a task that
//! 0. checks what the coordinator sent (URL, SHA, branch: [`fifty_shared::git`]) before any of it
//!    reaches git;
//! 1. fetches the repository into a cached bare clone (`<data_dir>/repos/<repo>.git`, one per
//!    repository, fetches serialised) and clones the exact commit out of it into the job's own
//!    directory (`<jobs dir>/job-<id>-<attempt>/src`, with `home/` and `tmp/` beside it), removed
//!    afterwards. The clone shares no git dir with the cache, and every git command the agent
//!    runs has hooks and fsmonitor off, so nothing a job writes runs in a later job;
//! 2. for a plan, reads `fifty.toml` and runs `[test] list`; for a shard, runs `[test] command`
//!    with `FIFTY_COMMIT`, `FIFTY_SHARD_INDEX`, `FIFTY_SHARD_COUNT` and `FIFTY_TESTS_FILE`; for a
//!    package job, runs `[package] command` and keeps the artifact (`<data_dir>/artifacts/`), which
//!    is uploaded in chunks just before the result, every time the result is sent;
//! 3. streams the output to the coordinator while it runs, and keeps the result until the
//!    coordinator acknowledges it — across reconnects, so a result finished while no coordinator
//!    answered is not lost.
//!
//! Commands run as `sh -c` in a process group of their own, as the job user with a clean
//! environment ([`crate::sandbox`]), each in a job tree ([`crate::job_tree`]: a cgroup, or a
//! variable its descendants inherit): a timeout or a cancel kills the whole tree, and so does
//! the end of the command (nothing it left running survives the job, even in a session of its
//! own). If the agent itself dies, the shell gets SIGKILL (`PR_SET_PDEATHSIG`) and the next
//! start of the agent kills what is left of every tree it recorded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fifty_shared::git::{check_branch, check_repo_url, is_full_sha};
use fifty_shared::pipeline::{self, Pipeline};
use fifty_shared::wire::{AgentMsg, ArtifactInfo, JobDone, JobExit, JobKind, JobRef, JobSpec, PlanFound};
use fifty_shared::wire::{ARTIFACT_CHUNK, MAX_ARTIFACT_BYTES, MAX_JUNIT_BYTES, MAX_LOG_TAIL_BYTES};
use sha2::Digest;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

use crate::job_tree::JobTrees;
use crate::sandbox::JobUser;

/// How long `[test] list` may run.
const LIST_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes of test names a plan reports.
const MAX_LIST_BYTES: usize = 256 * 1024;
/// Output queued for the link beyond this is dropped from the live view (the tail is kept).
const MAX_QUEUED_OUTPUT: usize = 4 << 20;
/// How long a git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

/// The jobs this agent holds: running, or finished and not yet acknowledged.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Mutex<Inner>>,
    data_dir: PathBuf,
    jobs_dir: PathBuf,
    user: JobUser,
    /// Where each command's processes are tracked.
    trees: JobTrees,
    /// The agent's environment variables jobs get (`[jobs] env`).
    pass_env: Arc<Vec<String>>,
    repo_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    queued_output: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Inner {
    running: HashMap<JobRef, watch::Sender<bool>>,
    /// The job user's lock, held shared while any job runs ([`JobUser::hold_while_running`]).
    running_lock: Option<std::fs::File>,
    done: BTreeMap<JobRef, JobDone>,
    link: Option<mpsc::UnboundedSender<AgentMsg>>,
}

impl Jobs {
    /// A runner keeping its cached clones under `data_dir` and its jobs' directories under
    /// `jobs_dir`, running jobs as `user`. Directories and processes left by an earlier run of
    /// the agent belong to no job now and are removed.
    pub fn new(data_dir: &Path, jobs_dir: &Path, user: JobUser) -> Self {
        Self::with_trees(data_dir, jobs_dir, user, JobTrees::new(data_dir))
    }

    /// [`Jobs::new`] with the job trees given (tests choose cgroups or not).
    pub fn with_trees(data_dir: &Path, jobs_dir: &Path, user: JobUser, trees: JobTrees) -> Self {
        trees.kill_leftovers();
        let _ = std::fs::remove_dir_all(data_dir.join("work"));
        if let Ok(entries) = std::fs::read_dir(jobs_dir) {
            for entry in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("job-")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        user.kill_leftovers();
        // The agent's own: jobs (another user) may not even list them.
        for private in ["repos", "artifacts"] {
            let path = data_dir.join(private);
            if std::fs::create_dir_all(&path).is_ok() {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
            }
        }
        Self {
            inner: Arc::default(),
            data_dir: data_dir.to_path_buf(),
            jobs_dir: jobs_dir.to_path_buf(),
            user,
            trees,
            pass_env: Arc::default(),
            repo_locks: Arc::default(),
            queued_output: Arc::default(),
        }
    }

    /// Jobs also get these of the agent's environment variables (`[jobs] env`).
    pub fn pass_env(mut self, names: &[String]) -> Self {
        self.pass_env = Arc::new(names.to_vec());
        self
    }

    /// A new link is up: messages for the coordinator go to `tx`, starting with every result not
    /// yet acknowledged.
    pub fn attach(&self, tx: mpsc::UnboundedSender<AgentMsg>) {
        let mut inner = self.inner.lock().expect("jobs lock");
        for done in inner.done.values() {
            send_result(&self.data_dir, &tx, done);
        }
        inner.link = Some(tx);
        self.queued_output.store(0, Ordering::Relaxed);
    }

    /// The link is down: hold messages until the next one.
    pub fn detach(&self) {
        self.inner.lock().expect("jobs lock").link = None;
    }

    /// Every job held: running, or done and unacknowledged (sent with each heartbeat).
    pub fn held(&self) -> Vec<JobRef> {
        let inner = self.inner.lock().expect("jobs lock");
        inner.running.keys().chain(inner.done.keys()).copied().collect()
    }

    /// Starts `spec`, unless this attempt is already held.
    pub fn start(&self, spec: JobSpec) {
        let job = spec.job;
        let (cancel_tx, cancel_rx) = watch::channel(false);
        {
            let mut inner = self.inner.lock().expect("jobs lock");
            if inner.running.contains_key(&job) || inner.done.contains_key(&job) {
                return;
            }
            if inner.running.is_empty() {
                inner.running_lock = self.user.hold_while_running();
            }
            inner.running.insert(job, cancel_tx);
        }
        let this = self.clone();
        let span = tracing::info_span!("job", job = job.job, attempt = job.attempt, repo = %spec.repo, sha = %short(&spec.sha));
        tokio::spawn(
            async move {
                info!(kind = kind_name(&spec.kind), "job started");
                let done = this.run(spec, cancel_rx.clone()).await;
                let cancelled = *cancel_rx.borrow();
                let mut inner = this.inner.lock().expect("jobs lock");
                inner.running.remove(&job);
                if inner.running.is_empty() {
                    // No job runs, so nothing of the job user may: a daemon a job left would
                    // otherwise wait for the next job (held under the lock: none starts meanwhile).
                    inner.running_lock = None;
                    this.user.kill_leftovers();
                }
                if cancelled {
                    info!("job cancelled by the coordinator");
                    return;
                }
                info!(exit = ?done.exit, secs = done.duration.as_secs_f64(), "job finished");
                if let Some(link) = &inner.link {
                    send_result(&this.data_dir, link, &done);
                }
                inner.done.insert(job, done);
            }
            .instrument(span),
        );
    }

    /// The agent is stopping: every running job's processes are killed (not left for the next
    /// start to find). Results not yet sent are lost with the agent, as the jobs are.
    pub fn end_all(&self) {
        let killed = self.trees.end();
        if killed > 0 {
            info!(processes = killed, "killed the running jobs' processes: the agent is stopping");
        }
    }

    /// Stops a job the coordinator gave to another host.
    pub fn cancel(&self, job: JobRef) {
        let mut inner = self.inner.lock().expect("jobs lock");
        if let Some(cancel) = inner.running.remove(&job) {
            let _ = cancel.send(true);
        }
        inner.done.remove(&job);
    }

    /// The coordinator recorded this result.
    pub fn acked(&self, job: JobRef) {
        self.inner.lock().expect("jobs lock").done.remove(&job);
        let _ = std::fs::remove_file(artifact_path(&self.data_dir, job));
    }

    fn send_output(&self, job: JobRef, offset: u64, data: &[u8]) {
        if self.queued_output.load(Ordering::Relaxed) > MAX_QUEUED_OUTPUT {
            return;
        }
        let inner = self.inner.lock().expect("jobs lock");
        if let Some(link) = &inner.link {
            self.queued_output.fetch_add(data.len(), Ordering::Relaxed);
            let _ = link.send(AgentMsg::JobOutput { job, offset, data: data.to_vec() });
        }
    }

    /// Called by the link as it writes a chunk out.
    pub fn output_sent(&self, bytes: usize) {
        let _ =
            self.queued_output.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(bytes)));
    }

    async fn run(&self, spec: JobSpec, mut cancel: watch::Receiver<bool>) -> JobDone {
        let started = Instant::now();
        let mut log = Log::new(self.clone(), spec.job);
        let dir = JobDir::new(&self.jobs_dir, spec.job);
        let mut done = JobDone {
            job: spec.job,
            exit: JobExit::Exited(0),
            duration: Duration::ZERO,
            plan: None,
            junit: Vec::new(),
            junit_note: None,
            log_tail: Vec::new(),
            log_bytes: 0,
            artifact: None,
            revert: None,
        };
        let finish = |mut done: JobDone, log: Log| {
            let _ = std::fs::remove_dir_all(&dir.root);
            done.duration = started.elapsed();
            done.log_bytes = log.total;
            done.log_tail = log.tail.into_iter().collect();
            done
        };
        // The coordinator checked these too; git must not see a bad one whoever sent it.
        if let Err(e) = check_spec(&spec) {
            warn!(error = %e, "job refused before running git");
            log.note(&format!("fifty-agent: refused: {e}\n"));
            if matches!(spec.kind, JobKind::Revert { .. }) {
                done.revert = Some(Err(e.clone()));
            }
            done.exit = JobExit::Failed(e);
            return finish(done, log);
        }
        if let JobKind::Revert { revert, branch, reason } = &spec.kind {
            let result = tokio::select! {
                r = self.revert(&spec, revert, branch, reason, &dir, &mut log) => r,
                _ = async { let _ = cancel.wait_for(|c| *c).await; } => Err("cancelled".into()),
            };
            match &result {
                Ok(sha) => log.note(&format!("fifty-agent: pushed revert {} to {branch}\n", short(sha))),
                Err(e) => log.note(&format!("fifty-agent: no revert: {e}\n")),
            }
            done.revert = Some(result);
            return finish(done, log);
        }
        let checkout = tokio::select! {
            r = self.checkout(&spec, &dir) => r,
            _ = async { let _ = cancel.wait_for(|c| *c).await; } => Err("cancelled".into()),
        };
        // What the plan reports of the commit is read before the job's user owns the tree.
        let described = match (&checkout, &spec.kind) {
            (Ok(()), JobKind::Plan) => describe(&dir.work).await,
            _ => (String::new(), String::new()),
        };
        let checkout = checkout.and_then(|()| {
            self.user
                .hand_over(&dir.root)
                .map_err(|e| format!("give {} to {}: {e}", dir.root.display(), self.user.name))
        });
        let work = &dir.work;
        let env = |extra: &[(&'static str, String)]| {
            let mut env = vec![("FIFTY_COMMIT", spec.sha.clone()), ("FIFTY_REPO", spec.repo.to_string())];
            env.extend_from_slice(extra);
            env
        };
        let ctx = CommandCtx { user: &self.user, dir: &dir, pass_env: &self.pass_env, trees: &self.trees };
        match checkout {
            Err(e) => {
                log.note(&format!("fifty-agent: {e}\n"));
                done.exit = JobExit::Failed(e);
            }
            Ok(()) => match &spec.kind {
                JobKind::Plan => {
                    let (exit, plan) = plan(&ctx, described, &mut log, &mut cancel).await;
                    done.exit = exit;
                    done.plan = Some(plan);
                }
                JobKind::Package { command, artifact, timeout } => {
                    done.exit = run_command(command, &ctx, &env(&[]), *timeout, &mut log, None, &mut cancel).await;
                    if done.exit == JobExit::Exited(0) {
                        let kept =
                            keep_artifact(&self.user, &work.join(artifact), &artifact_path(&self.data_dir, spec.job));
                        match kept {
                            Ok(info) => {
                                log.note(&format!(
                                    "fifty-agent: artifact {artifact}: {} bytes, sha256 {}\n",
                                    info.size, info.digest
                                ));
                                done.artifact = Some(info);
                            }
                            Err(e) => {
                                log.note(&format!("fifty-agent: {e}\n"));
                                done.exit = JobExit::Failed(e);
                            }
                        }
                    }
                }
                JobKind::Revert { .. } => unreachable!("revert jobs are run above"),
                JobKind::Shard { index, count, tests, command, timeout, junit } => {
                    let tests_file = dir.root.join("tests");
                    let mut body = tests.join("\n");
                    if !body.is_empty() {
                        body.push('\n');
                    }
                    // Written by the agent, then given to the job (whose directory it is in).
                    let written = std::fs::write(&tests_file, body).and_then(|()| self.user.hand_over(&tests_file));
                    done.exit = match written {
                        Err(e) => JobExit::Failed(format!("write {}: {e}", tests_file.display())),
                        Ok(()) => {
                            let env = env(&[
                                ("FIFTY_SHARD_INDEX", index.to_string()),
                                ("FIFTY_SHARD_COUNT", count.to_string()),
                                ("FIFTY_TESTS_FILE", tests_file.display().to_string()),
                            ]);
                            run_command(command, &ctx, &env, *timeout, &mut log, None, &mut cancel).await
                        }
                    };
                    if let Some(glob) = junit {
                        let (files, note) = collect_junit(&self.user, work, glob);
                        done.junit = files;
                        done.junit_note = note;
                    }
                }
            },
        }
        finish(done, log)
    }

    /// Fetches into the cached clone (`<data_dir>/repos/<repo>.git`) and clones `spec.sha` (a
    /// SHA, or a ref of the cache) out of it into `dir.work`, detached. The clone copies what it
    /// needs and keeps no link to the cache, so the job cannot write anything the agent or another
    /// job later reads as git config or hooks.
    async fn checkout(&self, spec: &JobSpec, dir: &JobDir) -> Result<(), String> {
        let lock = {
            let mut locks = self.repo_locks.lock().expect("repo locks");
            locks.entry(spec.repo.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let cache = self.cache(spec);
        if !cache.join("HEAD").exists() {
            std::fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
            git(&cache, &["init", "-q", "--bare"]).await?;
        }
        let have = |rev: &str| {
            let cache = cache.clone();
            let object = format!("{rev}^{{commit}}");
            async move { git(&cache, &["rev-parse", "-q", "--verify", "--end-of-options", &object]).await.ok() }
        };
        let sha = match have(&spec.sha).await {
            Some(sha) => sha,
            None => {
                fetch(&cache, &spec.url).await?;
                have(&spec.sha)
                    .await
                    .ok_or_else(|| format!("commit {} is not on any branch of {}", spec.sha, spec.url))?
            }
        };
        let sha = sha.trim();
        let _ = std::fs::remove_dir_all(&dir.root);
        dir.create()?;
        let (from, to) = (cache.display().to_string(), dir.work.display().to_string());
        git(&dir.root, &["clone", "-q", "--no-hardlinks", "--no-checkout", "--", &from, &to])
            .await
            .map_err(|e| format!("clone {}: {e}", spec.repo))?;
        git(&dir.work, &["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", "--end-of-options", sha])
            .await
            .map_err(|e| format!("check out {sha}: {e}"))?;
        Ok(())
    }

    fn cache(&self, spec: &JobSpec) -> PathBuf {
        self.data_dir.join("repos").join(format!("{}.git", spec.repo))
    }

    /// Reverts `bad` on the tip of `branch` and pushes the revert, with a `Fifty-Revert: <sha>`
    /// trailer (the one push a gate closed by the immune system lets in). A refused push is made
    /// again on the new tip, [`PUSH_ATTEMPTS`] times over about a minute. Returns the revert's sha;
    /// a revert that does not apply cleanly is an error at once. Each attempt starts from a
    /// fresh clone; no job command runs in it.
    async fn revert(
        &self,
        spec: &JobSpec,
        bad: &str,
        branch: &str,
        reason: &str,
        dir: &JobDir,
        log: &mut Log,
    ) -> Result<String, String> {
        let mut last = String::new();
        let work = &dir.work;
        // A push can be refused for a while for reasons that pass (the gate cannot be checked
        // during an election, another push won the race): try again on the new tip, backing off.
        for attempt in 0..PUSH_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << attempt.min(4))).await;
            }
            let tip = JobSpec { sha: format!("refs/heads/{branch}"), ..spec.clone() };
            self.checkout_fresh(&tip, dir).await?;
            if git(work, &["merge-base", "--is-ancestor", "--end-of-options", bad, "HEAD"]).await.is_err() {
                return Err(format!("commit {} is not on {branch}", short(bad)));
            }
            let subject =
                git(work, &["log", "-1", "--format=%s", "--end-of-options", bad, "--"]).await.unwrap_or_default();
            log.note(&format!("$ git revert --no-edit {bad}\n"));
            if let Err(e) = git_as_fifty(work, &["revert", "--no-edit", "--end-of-options", bad]).await {
                let _ = git(work, &["revert", "--abort"]).await;
                return Err(format!("{} cannot be reverted cleanly on {branch}: {e}", short(bad)));
            }
            let message = format!(
                "Revert \"{}\"\n\nThis reverts commit {bad}.\n\nThe cluster immune system reverted its release: {reason}\n\nFifty-Revert: {bad}\n",
                subject.trim()
            );
            git_as_fifty(work, &["commit", "--amend", "-q", "-m", &message]).await?;
            let sha = git(work, &["rev-parse", "HEAD"]).await?.trim().to_string();
            log.note(&format!("$ git push {} HEAD:refs/heads/{branch}\n", spec.url));
            match git(work, &["push", "-q", "--", &spec.url, &format!("HEAD:refs/heads/{branch}")]).await {
                Ok(_) => return Ok(sha),
                Err(e) => {
                    log.note(&format!("fifty-agent: push refused: {e}\n"));
                    last = e;
                }
            }
        }
        Err(format!("the revert could not be pushed to {branch}: {last}"))
    }

    /// Fetches the repository (whatever the cache holds) and checks `spec.sha` (a ref) out.
    async fn checkout_fresh(&self, spec: &JobSpec, dir: &JobDir) -> Result<(), String> {
        let cache = self.cache(spec);
        if cache.join("HEAD").exists() {
            let lock = self.repo_locks.lock().expect("repo locks").get(spec.repo.as_str()).cloned();
            let _guard = match &lock {
                Some(lock) => Some(lock.lock().await),
                None => None,
            };
            fetch(&cache, &spec.url).await?;
        }
        self.checkout(spec, dir).await
    }
}

/// Checks what a job spec carries to git: the URL, the commit and the branch.
fn check_spec(spec: &JobSpec) -> Result<(), String> {
    check_repo_url(&spec.url).map_err(|e| e.to_string())?;
    if !is_full_sha(&spec.sha) {
        return Err(format!("sha {:?} is not a full commit SHA (40 lower-case hex digits)", spec.sha));
    }
    if let JobKind::Revert { revert, branch, .. } = &spec.kind {
        if !is_full_sha(revert) {
            return Err(format!("revert {revert:?} is not a full commit SHA (40 lower-case hex digits)"));
        }
        check_branch(branch).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Fetches every branch of `url` into the bare `cache`.
async fn fetch(cache: &Path, url: &str) -> Result<(), String> {
    git(cache, &["fetch", "-q", "--prune", "--no-tags", "--", url, "+refs/heads/*:refs/heads/*"])
        .await
        .map(drop)
        .map_err(|e| format!("fetch {url}: {e}"))
}

/// A job's directory: `root` (0700, the job user's), the clone in `work`, `home/` and `tmp/`.
struct JobDir {
    root: PathBuf,
    work: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
}

impl JobDir {
    fn new(jobs_dir: &Path, job: JobRef) -> Self {
        let root = jobs_dir.join(format!("job-{}-{}", job.job, job.attempt));
        Self { work: root.join("src"), home: root.join("home"), tmp: root.join("tmp"), root }
    }

    /// Creates the directory with `home/` and `tmp/`, under a jobs dir others may pass through
    /// but not list (0711).
    fn create(&self) -> Result<(), String> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let parent = self.root.parent().expect("job dirs have a parent");
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
        // A directory shared with others (such as /tmp, sticky) would let anyone replace a job's.
        let meta = std::fs::metadata(parent).map_err(|e| format!("stat {}: {e}", parent.display()))?;
        // SAFETY: plain syscall without arguments.
        if meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o1000 != 0 {
            return Err(format!(
                "the jobs dir {} is not the agent's own (it must be a directory only the agent writes; set [jobs] dir)",
                parent.display()
            ));
        }
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("set the mode of {}: {e}", parent.display()))?;
        for d in [&self.root, &self.home, &self.tmp] {
            std::fs::DirBuilder::new().mode(0o700).create(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        Ok(())
    }
}

fn kind_name(kind: &JobKind) -> &'static str {
    match kind {
        JobKind::Plan => "plan",
        JobKind::Package { .. } => "package",
        JobKind::Shard { .. } => "shard",
        JobKind::Revert { .. } => "revert",
    }
}

/// Where a package job's artifact waits until its result is acknowledged.
fn artifact_path(data_dir: &Path, job: JobRef) -> PathBuf {
    data_dir.join("artifacts").join(format!("job-{}-{}", job.job, job.attempt))
}

/// Checks the artifact a package command left (a regular file of the job user's, so not a link
/// to the agent's files) and copies it out of the work tree; returns its digest and size.
fn keep_artifact(user: &JobUser, from: &Path, to: &Path) -> Result<ArtifactInfo, String> {
    let (file, meta) = user.open_job_file(from).map_err(|e| format!("the artifact: {e}"))?;
    if meta.len() > MAX_ARTIFACT_BYTES {
        return Err(format!("the artifact is {} bytes; the limit is {MAX_ARTIFACT_BYTES}", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_ARTIFACT_BYTES + 1), &mut bytes)
        .map_err(|e| format!("read the artifact: {e}"))?;
    if bytes.len() as u64 > MAX_ARTIFACT_BYTES {
        return Err(format!("the artifact grew past the limit of {MAX_ARTIFACT_BYTES} bytes"));
    }
    std::fs::create_dir_all(to.parent().expect("artifacts have a directory")).map_err(|e| e.to_string())?;
    std::fs::write(to, &bytes).map_err(|e| format!("keep the artifact: {e}"))?;
    Ok(ArtifactInfo { digest: hex_digest(&bytes), size: bytes.len() as u64 })
}

fn hex_digest(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends a result: for a package job, the artifact's chunks first (the coordinator needs them
/// before it can record the result), then the result.
fn send_result(data_dir: &Path, link: &mpsc::UnboundedSender<AgentMsg>, done: &JobDone) {
    if done.artifact.is_some() {
        match std::fs::read(artifact_path(data_dir, done.job)) {
            Ok(bytes) => {
                for (i, chunk) in bytes.chunks(ARTIFACT_CHUNK).enumerate() {
                    let offset = (i * ARTIFACT_CHUNK) as u64;
                    let _ = link.send(AgentMsg::ArtifactChunk { job: done.job, offset, data: chunk.to_vec() });
                }
            }
            Err(e) => warn!(job = done.job.job, error = %e, "the kept artifact is gone; the result will be refused"),
        }
    }
    let _ = link.send(AgentMsg::JobDone(done.clone()));
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

/// A job's output: counted, streamed to the link, and its tail kept.
struct Log {
    jobs: Jobs,
    job: JobRef,
    total: u64,
    tail: VecDeque<u8>,
}

impl Log {
    fn new(jobs: Jobs, job: JobRef) -> Self {
        Self { jobs, job, total: 0, tail: VecDeque::new() }
    }

    fn write(&mut self, data: &[u8]) {
        self.jobs.send_output(self.job, self.total, data);
        self.total += data.len() as u64;
        self.tail.extend(data);
        let excess = self.tail.len().saturating_sub(MAX_LOG_TAIL_BYTES);
        self.tail.drain(..excess);
    }

    fn note(&mut self, text: &str) {
        self.write(text.as_bytes());
    }
}

/// Settings every git command of the agent runs with: no hooks and no fsmonitor (whatever a
/// repository's config says, so a repository cannot make the agent run a command), and no
/// transports that run commands.
const GIT_SAFE: &[&str] = &[
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "protocol.fd.allow=never",
];

/// Runs `git` with `args` in `dir` (with [`GIT_SAFE`]); the error holds what git said.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(GIT_SAFE).args(args).current_dir(dir).stdin(Stdio::null()).kill_on_drop(true);
    // The agent's own environment must not point git elsewhere.
    cmd.env_remove("GIT_DIR").env_remove("GIT_WORK_TREE").env("GIT_TERMINAL_PROMPT", "0");
    let out = match tokio::time::timeout(GIT_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("run git: {e}")),
        Err(_) => return Err(format!("git {} took longer than {GIT_TIMEOUT:?}", args.join(" "))),
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("git {}: {}", args.first().unwrap_or(&""), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// How many times a revert is pushed before the job gives up (waits 2, 4, 8, 16, 16... s between).
const PUSH_ATTEMPTS: u32 = 6;

/// Runs `git` as Fifty's own identity (reverts are Fifty's commits, whoever runs the agent).
async fn git_as_fifty(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["-c", "user.name=Fifty immune system", "-c", "user.email=fifty@fifty.invalid"];
    full.extend_from_slice(args);
    git(dir, &full).await
}

/// The checked-out commit's subject and author (read by the agent before the job owns the tree).
async fn describe(work: &Path) -> (String, String) {
    let Ok(text) = git(work, &["log", "-1", "--format=%s%x1f%an"]).await else {
        return (String::new(), String::new());
    };
    let (subject, author) = text.trim_end().split_once('\u{1f}').unwrap_or((text.trim_end(), ""));
    (subject.chars().take(200).collect(), author.chars().take(100).collect())
}

/// Reads `fifty.toml` (only as a file of the job's own) and runs `[test] list` if there is one.
async fn plan(
    ctx: &CommandCtx<'_>,
    (subject, author): (String, String),
    log: &mut Log,
    cancel: &mut watch::Receiver<bool>,
) -> (JobExit, PlanFound) {
    let mut found = PlanFound { subject, author, pipeline: None, tests: Vec::new() };
    let path = ctx.dir.work.join(pipeline::FILE_NAME);
    if std::fs::symlink_metadata(&path).is_err() {
        return (JobExit::Exited(0), found);
    }
    let text = match ctx.user.open_job_file(&path) {
        Err(e) => return (JobExit::Failed(e), found),
        Ok((_, m)) if m.len() as usize > pipeline::MAX_FILE_BYTES => {
            let e = format!("{} is {} bytes; the limit is {}", pipeline::FILE_NAME, m.len(), pipeline::MAX_FILE_BYTES);
            return (JobExit::Failed(e), found);
        }
        Ok((file, _)) => {
            let mut text = String::new();
            let limit = pipeline::MAX_FILE_BYTES as u64 + 1;
            match std::io::Read::read_to_string(&mut std::io::Read::take(file, limit), &mut text) {
                Ok(_) => text,
                Err(e) => return (JobExit::Failed(format!("read {}: {e}", pipeline::FILE_NAME)), found),
            }
        }
    };
    found.pipeline = Some(text.clone());
    // The coordinator reports a bad file; here it only decides whether there is a list to run.
    let Some(list) = Pipeline::parse(&text).ok().and_then(|p| p.test.list) else {
        return (JobExit::Exited(0), found);
    };
    log.note(&format!("$ {list}\n"));
    let mut stdout = Vec::new();
    let exit = run_command(&list, ctx, &[], LIST_TIMEOUT, log, Some(&mut stdout), cancel).await;
    if stdout.len() > MAX_LIST_BYTES {
        return (JobExit::Failed(format!("[test] list printed more than {MAX_LIST_BYTES} bytes")), found);
    }
    found.tests =
        String::from_utf8_lossy(&stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    (exit, found)
}

/// Who runs a job's command, and where.
struct CommandCtx<'a> {
    user: &'a JobUser,
    dir: &'a JobDir,
    pass_env: &'a [String],
    trees: &'a JobTrees,
}

/// `PATH` for jobs when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `sh -c command` in the job's clone, in its own process group, as the job user with a
/// clean environment: `PATH` and `LANG` (the agent's, or defaults), `HOME` and `TMPDIR` in the
/// job's directory, the agent's variables named in `[jobs] env`, and `env`. Output goes to `log`;
/// stdout also to `capture` when given. A timeout or a cancel kills the group; the end of the
/// command kills its whole tree, whatever left the group.
async fn run_command(
    command: &str,
    ctx: &CommandCtx<'_>,
    env: &[(&str, String)],
    timeout: Duration,
    log: &mut Log,
    mut capture: Option<&mut Vec<u8>>,
    cancel: &mut watch::Receiver<bool>,
) -> JobExit {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(&ctx.dir.work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()))
        .env("LANG", std::env::var_os("LANG").unwrap_or_else(|| "C.UTF-8".into()))
        .env("HOME", &ctx.dir.home)
        .env("TMPDIR", &ctx.dir.tmp);
    for name in ctx.pass_env {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    ctx.user.apply(&mut cmd);
    // Dropped when this returns, which kills whatever of the command is left.
    let mut tree = match ctx.trees.start() {
        Ok(tree) => tree,
        Err(e) => return JobExit::Failed(format!("record the job's processes in the data dir: {e}")),
    };
    tree.prepare(&mut cmd);
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the shell if the
    // agent dies, so no test run outlives its agent unnoticed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return JobExit::Failed(format!("start `sh -c {command}`: {e}")),
    };
    tree.started(child.id());
    let pgid = child.id().map(|p| p as i32);
    let kill_group = || {
        if let Some(pgid) = pgid {
            // SAFETY: plain syscall on a process group this job created.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
        tree.kill();
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (mut out_buf, mut err_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut out_open, mut err_open) = (true, true);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut status = None;
    // Read both pipes until the command exits and its pipes close (or, once it has exited, until
    // a grace period passes: something it started may hold them).
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if status.is_some() && !out_open && !err_open {
            break;
        }
        let wake = drain_until.unwrap_or(deadline);
        tokio::select! {
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    log.write(&out_buf[..n]);
                    if let Some(c) = capture.as_deref_mut() {
                        if c.len() <= MAX_LIST_BYTES {
                            c.extend_from_slice(&out_buf[..n]);
                        }
                    }
                }
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => log.write(&err_buf[..n]),
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                // Nothing the command started outlives it.
                kill_group();
                drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            _ = tokio::time::sleep_until(wake) => {
                if drain_until.is_some() {
                    break;
                }
                kill_group();
                log.note(&format!("\nfifty-agent: timed out after {}; killed the process tree\n", humantime_secs(timeout)));
                let _ = child.wait().await;
                return JobExit::TimedOut;
            }
            _ = async { let _ = cancel.wait_for(|c| *c).await; } => {
                kill_group();
                let _ = child.wait().await;
                return JobExit::Failed("cancelled".into());
            }
        }
    }
    match status {
        Some(Ok(s)) => {
            use std::os::unix::process::ExitStatusExt;
            JobExit::Exited(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)))
        }
        Some(Err(e)) => JobExit::Failed(format!("wait for the command: {e}")),
        None => JobExit::Failed("the command's status was lost".into()),
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The JUnit files under `work` matching `pattern`, up to [`MAX_JUNIT_BYTES`] in all; only files
/// of the job user's own.
fn collect_junit(user: &JobUser, work: &Path, pattern: &str) -> (Vec<(String, String)>, Option<String>) {
    let full = work.join(pattern).display().to_string();
    let paths = match glob::glob(&full) {
        Ok(paths) => paths,
        Err(e) => return (Vec::new(), Some(format!("junit pattern {pattern:?}: {e}"))),
    };
    let mut files = Vec::new();
    let mut total = 0;
    let mut skipped = Vec::new();
    for path in paths.flatten() {
        let name = path.strip_prefix(work).unwrap_or(&path).display().to_string();
        let read = user.open_job_file(&path).and_then(|(file, _)| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_JUNIT_BYTES as u64 + 1), &mut text)
                .map_err(|e| e.to_string())?;
            Ok(text)
        });
        match read {
            Ok(text) if total + text.len() <= MAX_JUNIT_BYTES => {
                total += text.len();
                files.push((name, text));
            }
            Ok(_) => skipped.push(format!("{name} (over the {MAX_JUNIT_BYTES}-byte limit)")),
            Err(e) => skipped.push(format!("{name} ({e})")),
        }
    }
    let note = if files.is_empty() && skipped.is_empty() {
        Some(format!("no file matched junit = {pattern:?}"))
    } else if !skipped.is_empty() {
        Some(format!("skipped JUnit files: {}", skipped.join(", ")))
    } else {
        None
    };
    if note.is_some() {
        warn!(note = note.as_deref().unwrap_or_default(), "JUnit reports");
    }
    (files, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fifty_shared::ids::RepoName;

    fn git_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
        cmd.env("GIT_AUTHOR_NAME", "T")
            .env("GIT_AUTHOR_EMAIL", "t@fifty.invalid")
            .env("GIT_COMMITTER_NAME", "T")
            .env("GIT_COMMITTER_EMAIL", "t@fifty.invalid")
    }

    fn sh(dir: &Path, script: &str) {
        let out = git_env(std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir)).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A repository with one commit holding `files`; returns (dir, sha).
    fn repo(files: &[(&str, &str)]) -> (PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("fifty-jobs-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        sh(&dir, "git init -q -b main . && git add -A && git commit -q -m 'add the app'");
        let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&dir).output().unwrap();
        (dir, String::from_utf8(out.stdout).unwrap().trim().to_string())
    }

    fn spec(dir: &Path, sha: &str, kind: JobKind) -> JobSpec {
        JobSpec {
            job: JobRef { job: 1, attempt: 1 },
            repo: RepoName::new("app").unwrap(),
            url: dir.display().to_string(),
            sha: sha.to_string(),
            kind,
        }
    }

    /// A runner with its data dir `data`, jobs beside it, running jobs as the test's own user.
    /// Jobs without cgroups (each would leave its agent's empty cgroup behind); the cgroup path
    /// has tests of its own.
    fn jobs_at(data: &Path) -> Jobs {
        Jobs::with_trees(data, &data.with_extension("jobs"), JobUser::agent_itself(), JobTrees::without_cgroups(data))
    }

    fn attach(jobs: &Jobs) -> mpsc::UnboundedReceiver<AgentMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        jobs.attach(tx);
        rx
    }

    async fn wait_done(jobs: &Jobs, rx: &mut mpsc::UnboundedReceiver<AgentMsg>) -> JobDone {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("a result within 60 s") {
                Some(AgentMsg::JobDone(done)) => {
                    jobs.acked(done.job);
                    return done;
                }
                Some(_) => {}
                None => panic!("link channel closed"),
            }
        }
    }

    #[tokio::test]
    async fn a_plan_reads_the_pipeline_and_lists_the_tests() {
        let (src, sha) = repo(&[
            ("fifty.toml", "[test]\ncommand = \"true\"\nlist = \"ls tests\"\n"),
            ("tests/a.sh", ""),
            ("tests/b.sh", ""),
        ]);
        let data = src.join("agent");
        let jobs = jobs_at(&data);
        let mut rx = attach(&jobs);
        jobs.start(spec(&src, &sha, JobKind::Plan));
        let done = wait_done(&jobs, &mut rx).await;
        assert_eq!(done.exit, JobExit::Exited(0), "{}", String::from_utf8_lossy(&done.log_tail));
        let plan = done.plan.unwrap();
        assert_eq!(plan.subject, "add the app");
        assert_eq!(plan.tests, ["a.sh", "b.sh"]);
        assert!(plan.pipeline.unwrap().contains("ls tests"));
        assert!(!data.with_extension("jobs").join("job-1-1").exists(), "the job's directory is removed");
        assert!(jobs.held().is_empty());
        let _ = std::fs::remove_dir_all(&src);
    }

    #[tokio::test]
    async fn a_shard_gets_its_environment_and_leaves_junit() {
        let script = "cat \"$FIFTY_TESTS_FILE\" > seen; echo \"$FIFTY_SHARD_INDEX/$FIFTY_SHARD_COUNT $FIFTY_COMMIT\"; \
                      mkdir -p reports; echo '<testsuite><testcase name=\"t1\" time=\"0.5\"/></testsuite>' > reports/r.xml; \
                      echo to-stderr >&2; exit 3";
        let (src, sha) = repo(&[("README", "x")]);
        let jobs = jobs_at(&src.join("agent"));
        let mut rx = attach(&jobs);
        let kind = JobKind::Shard {
            index: 1,
            count: 2,
            tests: vec!["t1".into(), "t2".into()],
            command: script.into(),
            timeout: Duration::from_secs(60),
            junit: Some("reports/*.xml".into()),
        };
        jobs.start(spec(&src, &sha, kind));
        let done = wait_done(&jobs, &mut rx).await;
        assert_eq!(done.exit, JobExit::Exited(3));
        let log = String::from_utf8_lossy(&done.log_tail).into_owned();
        assert!(log.contains(&format!("1/2 {sha}")) && log.contains("to-stderr"), "{log}");
        assert_eq!(done.junit.len(), 1);
        assert_eq!(done.junit[0].0, "reports/r.xml");
        let _ = std::fs::remove_dir_all(&src);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_tree() {
        let (src, sha) = repo(&[("README", "x")]);
        let pidfile = src.join("grandchild.pid");
        // The grandchild would outlive a kill of the shell alone.
        let script = format!("sh -c 'echo $$ > {}; exec sleep 600' & wait", pidfile.display());
        let jobs = jobs_at(&src.join("agent"));
        let mut rx = attach(&jobs);
        let kind = JobKind::Shard {
            index: 0,
            count: 1,
            tests: vec![],
            command: script,
            timeout: Duration::from_secs(2),
            junit: None,
        };
        jobs.start(spec(&src, &sha, kind));
        let done = wait_done(&jobs, &mut rx).await;
        assert_eq!(done.exit, JobExit::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // Reaped or a zombie: either way not running. Wait for the kernel to finish the kill.
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z')))
                .unwrap_or(false)
        };
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(30) {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "the grandchild {pid} survived the timeout");
        let _ = std::fs::remove_dir_all(&src);
    }

    #[tokio::test]
    async fn a_daemon_a_test_started_in_a_session_of_its_own_dies_with_the_job() {
        for trees in [JobTrees::new, JobTrees::without_cgroups] {
            let (src, sha) = repo(&[("README", "x")]);
            let pidfile = src.join("daemon.pid");
            // setsid: the daemon leaves the command's process group, so killing the group misses it.
            let script = format!(
                "setsid sh -c 'echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 600' </dev/null >/dev/null 2>&1 & \
                 while [ ! -s {0} ]; do sleep 0.05; done",
                pidfile.display()
            );
            let data = src.join("agent");
            let trees = trees(&data);
            let jobs = Jobs::with_trees(&data, &data.with_extension("jobs"), JobUser::agent_itself(), trees.clone());
            let mut rx = attach(&jobs);
            let kind = JobKind::Shard {
                index: 0,
                count: 1,
                tests: vec![],
                command: script,
                timeout: Duration::from_secs(60),
                junit: None,
            };
            jobs.start(spec(&src, &sha, kind));
            let done = wait_done(&jobs, &mut rx).await;
            assert_eq!(done.exit, JobExit::Exited(0));
            let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
            let daemon = crate::procs::ProcessId::of(pid);
            let start = Instant::now();
            while daemon.as_ref().is_some_and(|d| d.is_running()) && start.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(!daemon.is_some_and(|d| d.is_running()), "the daemon {pid} outlived its job");
            trees.remove_parent();
            let _ = std::fs::remove_dir_all(&src);
        }
    }

    #[tokio::test]
    async fn a_stopping_agent_kills_its_running_jobs_processes() {
        let (src, sha) = repo(&[("README", "x")]);
        let pidfile = src.join("daemon.pid");
        let script = format!(
            "setsid sh -c 'echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 600' </dev/null >/dev/null 2>&1 & sleep 600",
            pidfile.display()
        );
        let jobs = jobs_at(&src.join("agent"));
        let _rx = attach(&jobs);
        let kind = JobKind::Shard {
            index: 0,
            count: 1,
            tests: vec![],
            command: script,
            timeout: Duration::from_secs(600),
            junit: None,
        };
        jobs.start(spec(&src, &sha, kind));
        let start = Instant::now();
        let pid: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok()) {
                break pid;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the job's daemon never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let daemon = crate::procs::ProcessId::of(pid).expect("the daemon runs");
        jobs.end_all();
        let start = Instant::now();
        while daemon.is_running() && start.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!daemon.is_running(), "the daemon {pid} outlived its stopping agent");
        let _ = std::fs::remove_dir_all(&src);
    }

    /// A bare copy of `dir` to push to; returns its path.
    fn bare(dir: &Path) -> PathBuf {
        let bare = dir.with_extension("git");
        sh(dir, &format!("git clone -q --bare . {}", bare.display()));
        bare
    }

    #[tokio::test]
    async fn a_revert_job_reverts_the_commit_on_the_branch_tip_and_pushes_it() {
        let (dir, _) = repo(&[("price", "55\n"), ("other", "a\n")]);
        sh(&dir, "echo 50 > price && git commit -qam 'Cheaper pears' && echo b > other && git commit -qam 'Later'");
        let bad = String::from_utf8(
            std::process::Command::new("git").args(["rev-parse", "HEAD~1"]).current_dir(&dir).output().unwrap().stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        let bare = bare(&dir);
        let data = dir.with_extension("agent");
        let jobs = jobs_at(&data);
        let mut rx = attach(&jobs);
        let kind =
            JobKind::Revert { revert: bad.clone(), branch: "main".into(), reason: "error_rate 2% → 25%".into() };
        jobs.start(spec(&bare, &bad, kind));
        let done = wait_done(&jobs, &mut rx).await;
        let pushed = done.revert.clone().expect("a revert result").unwrap_or_else(|e| panic!("{e}"));
        let show = |what: &str| {
            let out = std::process::Command::new("git").args(["show", what]).current_dir(&bare).output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let head = show("main:price");
        assert_eq!(head, "55\n", "the price change is undone");
        assert_eq!(show("main:other"), "b\n", "the later commit stays");
        let message = show(&format!("{pushed}"));
        assert!(
            message.contains(&format!("Fifty-Revert: {bad}")) && message.contains("Revert \"Cheaper pears\""),
            "{message}"
        );

        // A commit that cannot be reverted cleanly any more is an error, and nothing is pushed.
        sh(&dir, &format!("git pull -q {} main && echo 45 > price && git commit -qam 'Even cheaper'", bare.display()));
        sh(&dir, &format!("git push -q {} main", bare.display()));
        let kind = JobKind::Revert { revert: bad.clone(), branch: "main".into(), reason: "again".into() };
        jobs.start(JobSpec { job: JobRef { job: 2, attempt: 1 }, ..spec(&bare, &bad, kind) });
        let done = wait_done(&jobs, &mut rx).await;
        let err = done.revert.unwrap().unwrap_err();
        assert!(err.contains("cannot be reverted cleanly"), "{err}");
        assert_eq!(show("main:price"), "45\n");
    }

    #[tokio::test]
    async fn a_missing_commit_fails_with_a_reason() {
        let (src, _) = repo(&[("README", "x")]);
        let jobs = jobs_at(&src.join("agent"));
        let mut rx = attach(&jobs);
        jobs.start(spec(&src, "0123456789012345678901234567890123456789", JobKind::Plan));
        let done = wait_done(&jobs, &mut rx).await;
        assert!(matches!(&done.exit, JobExit::Failed(e) if e.contains("not on any branch")), "{:?}", done.exit);
        let _ = std::fs::remove_dir_all(&src);
    }

    #[tokio::test]
    async fn a_job_spec_that_would_inject_git_options_is_refused_before_git_runs() {
        let (src, sha) = repo(&[("README", "x")]);
        let data = src.join("agent");
        let jobs = jobs_at(&data);
        let mut rx = attach(&jobs);
        let pwned = src.join("PWNED");
        let url = format!("--upload-pack=touch {}", pwned.display());
        jobs.start(JobSpec { url: url.clone(), ..spec(&src, &sha, JobKind::Plan) });
        let done = wait_done(&jobs, &mut rx).await;
        assert!(
            matches!(&done.exit, JobExit::Failed(e) if e.starts_with("url ") && e.contains("starts with '-'")),
            "{:?}",
            done.exit
        );
        let log = String::from_utf8_lossy(&done.log_tail).into_owned();
        assert!(log.contains("refused: url"), "{log}");
        assert!(!pwned.exists(), "git ran the URL's command");
        assert!(!data.join("repos/app.git/HEAD").exists(), "git ran at all");

        for url in [format!("ext::sh -c touch% {}", pwned.display()), "ssh://-oProxyCommand=x/y".into()] {
            jobs.start(JobSpec { job: JobRef { job: 2, attempt: 1 }, url, ..spec(&src, &sha, JobKind::Plan) });
            let done = wait_done(&jobs, &mut rx).await;
            assert!(matches!(&done.exit, JobExit::Failed(e) if e.starts_with("url ")), "{:?}", done.exit);
        }

        // A revert onto a branch named like an option, or of something not a SHA, is refused too.
        let kind = JobKind::Revert { revert: sha.clone(), branch: "--orphan".into(), reason: "r".into() };
        jobs.start(JobSpec { job: JobRef { job: 3, attempt: 1 }, ..spec(&src, &sha, kind) });
        let done = wait_done(&jobs, &mut rx).await;
        let err = done.revert.expect("a revert result").unwrap_err();
        assert!(err.starts_with("branch \"--orphan\"") && err.contains("starts with '-'"), "{err}");
        let kind = JobKind::Revert { revert: "--abort".into(), branch: "main".into(), reason: "r".into() };
        jobs.start(JobSpec { job: JobRef { job: 4, attempt: 1 }, ..spec(&src, &sha, kind) });
        let err = wait_done(&jobs, &mut rx).await.revert.expect("a revert result").unwrap_err();
        assert!(err.contains("not a full commit SHA"), "{err}");
        jobs.start(JobSpec {
            job: JobRef { job: 5, attempt: 1 },
            sha: "--all".into(),
            ..spec(&src, &sha, JobKind::Plan)
        });
        let done = wait_done(&jobs, &mut rx).await;
        assert!(matches!(&done.exit, JobExit::Failed(e) if e.contains("not a full commit SHA")), "{:?}", done.exit);
        assert!(!data.join("repos/app.git/HEAD").exists(), "git ran at all");
        let _ = std::fs::remove_dir_all(&src);
    }

    #[tokio::test]
    async fn a_shared_jobs_dir_is_refused() {
        let (src, sha) = repo(&[("README", "x")]);
        let shared = src.with_extension("shared");
        std::fs::create_dir_all(&shared).unwrap();
        chmod(&shared, 0o1777);
        let jobs = Jobs::with_trees(
            &src.with_extension("agent"),
            &shared,
            JobUser::agent_itself(),
            JobTrees::without_cgroups(&src),
        );
        let mut rx = attach(&jobs);
        jobs.start(spec(&src, &sha, JobKind::Plan));
        let done = wait_done(&jobs, &mut rx).await;
        assert!(matches!(&done.exit, JobExit::Failed(e) if e.contains("is not the agent's own")), "{:?}", done.exit);
        for dir in [&src, &shared, &src.with_extension("agent")] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The user the sandbox test switches jobs to (created if missing; the test needs root).
    const TEST_JOB_USER: &str = "fifty-job-test";

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A commit on a side branch whose jobs try to reach beyond it: read the host's key, plant
    /// hooks and fsmonitor in the agent's cached clone, leave a daemon that rewrites later jobs'
    /// trees, and hand the agent links to its key as `fifty.toml`, JUnit report and artifact.
    /// Every attempt fails; the later jobs of main's commit (plan, package) are what they would
    /// have been, and nothing planted ever runs.
    #[tokio::test]
    async fn a_job_reaches_nothing_beyond_its_own_commit() {
        assert!(
            crate::sandbox::is_root(),
            "this test switches jobs to a second user ({TEST_JOB_USER}, created with useradd): run it as root"
        );
        crate::sandbox::create_user(TEST_JOB_USER).expect("create the job user");
        let user = JobUser::resolve(Some(TEST_JOB_USER)).unwrap();
        assert!(user.switch && user.uid != 0, "{user:?}");

        let secret = "SECRET-KEY-MATERIAL-0123";
        let (src, good) = repo(&[("app.txt", "good\n"), ("README", "the shop\n")]);
        let data = src.with_extension("agent");
        let jobs_dir = data.with_extension("jobs");
        crate::identity::Identity {
            cert: fifty_shared::tls::CertAndKey { cert_pem: "CERT".into(), key_pem: secret.into() },
            ca_pem: "CA".into(),
        }
        .save(&data)
        .unwrap();
        let key = data.join("identity/key.pem");
        let cache = data.join("repos/app.git");
        // Whatever runs a planted command, as any user, leaves its mark here.
        let marks = src.with_extension("marks");
        std::fs::create_dir_all(&marks).unwrap();
        chmod(&marks, 0o777);
        let evil = format!(
            r#"echo "uid $(id -u) groups $(id -G)"; grep NoNewPrivs /proc/self/status; env | sed 's/^/ENV /'
cat {key} && echo "STOLE the key"
ls {data}/repos && echo "LISTED the cache"
mkdir -p {cache}/hooks 2>/dev/null
for h in post-checkout reference-transaction post-merge; do
  printf '#!/bin/sh\ntouch {marks}/hook-ran\n' > {cache}/hooks/$h && chmod +x {cache}/hooks/$h && echo "WROTE hook $h"
done
git --git-dir={cache} config core.fsmonitor "touch {marks}/fsmonitor-ran" && echo "WROTE cache config"
printf '[core]\n\tfsmonitor = touch {marks}/home-ran\n' > "$HOME/.gitconfig"
common=$(git rev-parse --git-common-dir)
printf '#!/bin/sh\ntouch {marks}/common-ran\n' > "$common/hooks/post-checkout" && chmod +x "$common/hooks/post-checkout"
git config core.fsmonitor "touch {marks}/common-ran"
touch {jobs}/planted && echo "WROTE the jobs dir"
setsid sh -c 'echo $$ > {marks}/daemon.pid; while :; do for j in 2 3 4 5; do echo tampered > {jobs}/job-$j-1/src/app.txt; done; sleep 0.05; done' </dev/null >/dev/null 2>&1 &
sleep 0.5
echo "evil done"
"#,
            key = key.display(),
            data = data.display(),
            cache = cache.display(),
            marks = marks.display(),
            jobs = jobs_dir.display(),
        );
        std::fs::write(src.join("evil.sh"), evil).unwrap();
        sh(
            &src,
            &format!(
                "git checkout -q -b feature && ln -s {key} report.xml && ln -s {key} key-link && rm -f fifty.toml && \
                 ln -s {key} fifty.toml && git add -A && git commit -q -m 'Harmless change' && git checkout -q main",
                key = key.display()
            ),
        );
        let bad = String::from_utf8(
            std::process::Command::new("git").args(["rev-parse", "feature"]).current_dir(&src).output().unwrap().stdout,
        )
        .unwrap()
        .trim()
        .to_string();

        // `cargo test` runs tests with CARGO_MANIFEST_DIR set: passed on by name, like an
        // operator's `[jobs] env`.
        // Cgroups where the host has them, as a real agent: the job user's commands join theirs.
        let trees = JobTrees::new(&data);
        let jobs =
            Jobs::with_trees(&data, &jobs_dir, user.clone(), trees.clone()).pass_env(&["CARGO_MANIFEST_DIR".into()]);
        let mut rx = attach(&jobs);
        let job = |n: u64| JobRef { job: n, attempt: 1 };
        let shard = |command: &str, junit: Option<&str>| JobKind::Shard {
            index: 0,
            count: 1,
            tests: vec![],
            command: command.into(),
            timeout: Duration::from_secs(60),
            junit: junit.map(str::to_string),
        };
        jobs.start(JobSpec { job: job(1), ..spec(&src, &bad, shard("sh evil.sh", Some("report.xml"))) });
        let done = wait_done(&jobs, &mut rx).await;
        let log = String::from_utf8_lossy(&done.log_tail).into_owned();
        assert_eq!(done.exit, JobExit::Exited(0), "{log}");
        assert!(log.contains("evil done") && log.contains(&format!("uid {} groups {}\n", user.uid, user.gid)), "{log}");
        assert!(log.contains("NoNewPrivs:\t1"), "setuid programs could raise the job's privileges: {log}");
        assert!(!log.contains(secret) && !log.contains("STOLE"), "the job read the agent's key: {log}");
        assert!(!log.contains("LISTED") && !log.contains("WROTE"), "the job reached the agent's files: {log}");
        for line in log.lines().filter_map(|l| l.strip_prefix("ENV ")) {
            let name = line.split('=').next().unwrap_or_default();
            let expected = ["PATH", "HOME", "LANG", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD", "CARGO_MANIFEST_DIR"]
                .contains(&name)
                || name.starts_with("FIFTY_");
            assert!(expected, "the job saw the agent's environment: {line}");
        }
        assert!(log.contains(&format!("ENV HOME={}", jobs_dir.join("job-1-1/home").display())), "{log}");
        assert!(log.contains(&format!("ENV CARGO_MANIFEST_DIR={}", env!("CARGO_MANIFEST_DIR"))), "{log}");
        assert!(done.junit.is_empty(), "a link to the key was read as a JUnit report");
        let note = done.junit_note.unwrap_or_default();
        assert!(note.contains("not the job's own file"), "{note}");
        let daemon: i32 = std::fs::read_to_string(marks.join("daemon.pid")).unwrap().trim().parse().unwrap();

        // The daemon it left in a session of its own is gone once no job runs.
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z')))
                .unwrap_or(false)
        };
        // SIGKILL is delivered asynchronously: wait for the kernel to finish it.
        let start = Instant::now();
        while alive(daemon) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(daemon), "the job's daemon {daemon} outlived it");

        // Its links to the key are not read as fifty.toml or as an artifact.
        jobs.start(JobSpec { job: job(2), ..spec(&src, &bad, JobKind::Plan) });
        let done = wait_done(&jobs, &mut rx).await;
        assert!(matches!(&done.exit, JobExit::Failed(e) if e.contains("not the job's own file")), "{:?}", done.exit);
        assert_eq!(done.plan.as_ref().and_then(|p| p.pipeline.clone()), None);
        let package = |artifact: &str| JobKind::Package {
            command: "cp app.txt app.tar".into(),
            artifact: artifact.into(),
            timeout: Duration::from_secs(60),
        };
        jobs.start(JobSpec { job: job(3), ..spec(&src, &bad, package("key-link")) });
        let done = wait_done(&jobs, &mut rx).await;
        assert!(matches!(&done.exit, JobExit::Failed(e) if e.contains("not the job's own file")), "{:?}", done.exit);
        assert!(done.artifact.is_none() && !String::from_utf8_lossy(&done.log_tail).contains(secret));

        // main's commit: planned and packaged from a pristine clone; nothing planted runs.
        jobs.start(JobSpec { job: job(4), ..spec(&src, &good, JobKind::Plan) });
        let done = wait_done(&jobs, &mut rx).await;
        assert_eq!(done.exit, JobExit::Exited(0), "{}", String::from_utf8_lossy(&done.log_tail));
        assert_eq!(done.plan.unwrap().subject, "add the app");
        jobs.start(JobSpec {
            job: job(5),
            ..spec(
                &src,
                &good,
                JobKind::Package {
                    command: "git status --short >/dev/null; sleep 0.3; cp app.txt app.tar".into(),
                    artifact: "app.tar".into(),
                    timeout: Duration::from_secs(60),
                },
            )
        });
        let done = wait_done(&jobs, &mut rx).await;
        assert_eq!(done.exit, JobExit::Exited(0), "{}", String::from_utf8_lossy(&done.log_tail));
        assert_eq!(done.artifact.unwrap().digest, hex_digest(b"good\n"), "the artifact was tampered with");

        // A revert of a later commit of main, pushed from a fresh clone: no planted hook runs.
        sh(&src, "echo 50 > price && git add price && git commit -qm 'Cheaper pears'");
        let cheaper = String::from_utf8(
            std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&src).output().unwrap().stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        let pushed_to = bare(&src);
        let kind = JobKind::Revert { revert: cheaper.clone(), branch: "main".into(), reason: "errors".into() };
        jobs.start(JobSpec { job: job(6), ..spec(&pushed_to, &cheaper, kind) });
        let done = wait_done(&jobs, &mut rx).await;
        done.revert.expect("a revert result").unwrap_or_else(|e| panic!("{e}"));

        let ran: Vec<_> = std::fs::read_dir(&marks)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "daemon.pid")
            .collect();
        assert!(ran.is_empty(), "planted commands ran: {ran:?}");
        let hooks: Vec<_> = std::fs::read_dir(cache.join("hooks"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert!(hooks.iter().all(|h| h.ends_with(".sample")), "hooks in the cache: {hooks:?}");
        let config = std::fs::read_to_string(cache.join("config")).unwrap();
        assert!(!config.contains("fsmonitor"), "{config}");
        assert!(!jobs_dir.join("planted").exists());
        trees.remove_parent();
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&marks);
        let _ = std::fs::remove_dir_all(&jobs_dir);
        let _ = std::fs::remove_dir_all(&data);
        let _ = std::fs::remove_dir_all(&pushed_to);
    }
}
