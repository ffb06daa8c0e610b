//! The build agent's job runner. The coordinator hands out jobs (`CoordinatorMsg::RunJob`); each
//! one runs here as a task that
//! 1. fetches the repository into a cached bare clone (`<data_dir>/repos/<repo>.git`, one per
//!    repository, fetches serialised) and checks the exact commit out into a fresh work tree
//!    (`<data_dir>/work/job-<id>-<attempt>`), removed afterwards;
//! 2. for a plan, reads `fifty.toml` and runs `[test] list`; for a shard, runs `[test] command`
//!    with `FIFTY_COMMIT`, `FIFTY_SHARD_INDEX`, `FIFTY_SHARD_COUNT` and `FIFTY_TESTS_FILE`; for a
//!    package job, runs `[package] command` and keeps the artifact (`<data_dir>/artifacts/`), which
//!    is uploaded in chunks just before the result, every time the result is sent;
//! 3. streams the output to the coordinator while it runs, and keeps the result until the
//!    coordinator acknowledges it — across reconnects, so a result finished while no coordinator
//!    answered is not lost.
//!
//! Commands run as `sh -c` in a process group of their own: a timeout or a cancel kills the whole
//! tree, and so does the end of the command (nothing it left running survives the job). If the
//! agent itself dies, the shell gets SIGKILL (`PR_SET_PDEATHSIG`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fifty_shared::pipeline::{self, Pipeline};
use fifty_shared::wire::{AgentMsg, ArtifactInfo, JobDone, JobExit, JobKind, JobRef, JobSpec, PlanFound};
use fifty_shared::wire::{ARTIFACT_CHUNK, MAX_ARTIFACT_BYTES, MAX_JUNIT_BYTES, MAX_LOG_TAIL_BYTES};
use sha2::Digest;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

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
    repo_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    queued_output: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Inner {
    running: HashMap<JobRef, watch::Sender<bool>>,
    done: BTreeMap<JobRef, JobDone>,
    link: Option<mpsc::UnboundedSender<AgentMsg>>,
}

impl Jobs {
    /// A runner keeping its clones and work trees under `data_dir`. Work trees left by an
    /// earlier run of the agent belong to no job now and are removed.
    pub fn new(data_dir: &Path) -> Self {
        let _ = std::fs::remove_dir_all(data_dir.join("work"));
        Self {
            inner: Arc::default(),
            data_dir: data_dir.to_path_buf(),
            repo_locks: Arc::default(),
            queued_output: Arc::default(),
        }
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
        let work = self.data_dir.join("work").join(format!("job-{}-{}", spec.job.job, spec.job.attempt));
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
        if let JobKind::Revert { revert, branch, reason } = &spec.kind {
            let result = tokio::select! {
                r = self.revert(&spec, revert, branch, reason, &work, &mut log) => r,
                _ = async { let _ = cancel.wait_for(|c| *c).await; } => Err("cancelled".into()),
            };
            match &result {
                Ok(sha) => log.note(&format!("fifty-agent: pushed revert {} to {branch}\n", short(sha))),
                Err(e) => log.note(&format!("fifty-agent: no revert: {e}\n")),
            }
            done.revert = Some(result);
            self.remove_work_tree(&spec, &work).await;
            done.duration = started.elapsed();
            done.log_bytes = log.total;
            done.log_tail = log.tail.into_iter().collect();
            return done;
        }
        let checkout = tokio::select! {
            r = self.checkout(&spec, &work) => r,
            _ = async { let _ = cancel.wait_for(|c| *c).await; } => Err("cancelled".into()),
        };
        match checkout {
            Err(e) => {
                log.note(&format!("fifty-agent: {e}\n"));
                done.exit = JobExit::Failed(e);
            }
            Ok(()) => match &spec.kind {
                JobKind::Plan => {
                    let (exit, plan) = plan(&work, &mut log, &mut cancel).await;
                    done.exit = exit;
                    done.plan = Some(plan);
                }
                JobKind::Package { command, artifact, timeout } => {
                    let env = [("FIFTY_COMMIT", spec.sha.clone()), ("FIFTY_REPO", spec.repo.to_string())];
                    done.exit = run_command(command, &work, &env, *timeout, &mut log, None, &mut cancel).await;
                    if done.exit == JobExit::Exited(0) {
                        match keep_artifact(&work.join(artifact), &artifact_path(&self.data_dir, spec.job)) {
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
                    let tests_file = work.with_extension("tests");
                    let mut body = tests.join("\n");
                    if !body.is_empty() {
                        body.push('\n');
                    }
                    done.exit = match std::fs::write(&tests_file, body) {
                        Err(e) => JobExit::Failed(format!("write {}: {e}", tests_file.display())),
                        Ok(()) => {
                            let env = [
                                ("FIFTY_COMMIT", spec.sha.clone()),
                                ("FIFTY_REPO", spec.repo.to_string()),
                                ("FIFTY_SHARD_INDEX", index.to_string()),
                                ("FIFTY_SHARD_COUNT", count.to_string()),
                                ("FIFTY_TESTS_FILE", tests_file.display().to_string()),
                            ];
                            run_command(command, &work, &env, *timeout, &mut log, None, &mut cancel).await
                        }
                    };
                    let _ = std::fs::remove_file(&tests_file);
                    if let Some(glob) = junit {
                        let (files, note) = collect_junit(&work, glob);
                        done.junit = files;
                        done.junit_note = note;
                    }
                }
            },
        }
        self.remove_work_tree(&spec, &work).await;
        done.duration = started.elapsed();
        done.log_bytes = log.total;
        done.log_tail = log.tail.into_iter().collect();
        done
    }

    /// Fetches into the cached clone and adds a detached work tree at the commit.
    async fn checkout(&self, spec: &JobSpec, work: &Path) -> Result<(), String> {
        let lock = {
            let mut locks = self.repo_locks.lock().expect("repo locks");
            locks.entry(spec.repo.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let cache = self.data_dir.join("repos").join(format!("{}.git", spec.repo));
        if !cache.join("HEAD").exists() {
            std::fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
            git(&cache, &["init", "-q", "--bare"]).await?;
        }
        let have = |sha: &str| {
            let cache = cache.clone();
            let object = format!("{sha}^{{commit}}");
            async move { git(&cache, &["cat-file", "-e", &object]).await.is_ok() }
        };
        if !have(&spec.sha).await {
            git(&cache, &["fetch", "-q", "--prune", "--no-tags", &spec.url, "+refs/heads/*:refs/heads/*"])
                .await
                .map_err(|e| format!("fetch {}: {e}", spec.url))?;
            if !have(&spec.sha).await {
                return Err(format!("commit {} is not on any branch of {}", spec.sha, spec.url));
            }
        }
        let _ = std::fs::remove_dir_all(work);
        let _ = git(&cache, &["worktree", "prune"]).await;
        std::fs::create_dir_all(work.parent().expect("work dirs have a parent"))
            .map_err(|e| format!("create {}: {e}", work.display()))?;
        let path = work.display().to_string();
        git(&cache, &["worktree", "add", "-q", "--detach", "--force", &path, &spec.sha])
            .await
            .map_err(|e| format!("check out {}: {e}", spec.sha))?;
        Ok(())
    }

    /// Reverts `bad` on the tip of `branch` and pushes the revert, with a `Fifty-Revert: <sha>`
    /// trailer (the one push a gate closed by the immune system lets in). A refused push is made
    /// again on the new tip, [`PUSH_ATTEMPTS`] times over about a minute. Returns the revert's sha;
    /// a revert that does not apply cleanly is an error at once.
    async fn revert(
        &self,
        spec: &JobSpec,
        bad: &str,
        branch: &str,
        reason: &str,
        work: &Path,
        log: &mut Log,
    ) -> Result<String, String> {
        let mut last = String::new();
        // A push can be refused for a while for reasons that pass (the gate cannot be checked
        // during an election, another push won the race): try again on the new tip, backing off.
        for attempt in 0..PUSH_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << attempt.min(4))).await;
            }
            let tip = JobSpec { sha: format!("refs/heads/{branch}"), ..spec.clone() };
            self.checkout_fresh(&tip, work).await?;
            if git(work, &["merge-base", "--is-ancestor", bad, "HEAD"]).await.is_err() {
                return Err(format!("commit {} is not on {branch}", short(bad)));
            }
            let subject = git(work, &["log", "-1", "--format=%s", bad]).await.unwrap_or_default();
            log.note(&format!("$ git revert --no-edit {bad}\n"));
            if let Err(e) = git_as_fifty(work, &["revert", "--no-edit", bad]).await {
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
            match git(work, &["push", "-q", &spec.url, &format!("HEAD:refs/heads/{branch}")]).await {
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
    async fn checkout_fresh(&self, spec: &JobSpec, work: &Path) -> Result<(), String> {
        let cache = self.data_dir.join("repos").join(format!("{}.git", spec.repo));
        if cache.join("HEAD").exists() {
            git(&cache, &["fetch", "-q", "--prune", "--no-tags", &spec.url, "+refs/heads/*:refs/heads/*"])
                .await
                .map_err(|e| format!("fetch {}: {e}", spec.url))?;
        }
        self.checkout(spec, work).await
    }

    async fn remove_work_tree(&self, spec: &JobSpec, work: &Path) {
        let cache = self.data_dir.join("repos").join(format!("{}.git", spec.repo));
        let _ = std::fs::remove_dir_all(work);
        if cache.exists() {
            let lock = self.repo_locks.lock().expect("repo locks").get(spec.repo.as_str()).cloned();
            if let Some(lock) = lock {
                let _guard = lock.lock().await;
                let _ = git(&cache, &["worktree", "prune"]).await;
            }
        }
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

/// Checks the artifact a package command left and moves it out of the work tree; returns its
/// digest and size.
fn keep_artifact(from: &Path, to: &Path) -> Result<ArtifactInfo, String> {
    let meta = std::fs::metadata(from).map_err(|e| format!("the artifact {} is missing: {e}", from.display()))?;
    if !meta.is_file() {
        return Err(format!("the artifact {} is not a file", from.display()));
    }
    if meta.len() > MAX_ARTIFACT_BYTES {
        return Err(format!("the artifact is {} bytes; the limit is {MAX_ARTIFACT_BYTES}", meta.len()));
    }
    std::fs::create_dir_all(to.parent().expect("artifacts have a directory")).map_err(|e| e.to_string())?;
    std::fs::copy(from, to).map_err(|e| format!("keep the artifact: {e}"))?;
    let bytes = std::fs::read(to).map_err(|e| format!("read the artifact: {e}"))?;
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

/// Runs `git` with `args` in `dir`; the error holds what git said.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).kill_on_drop(true);
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

/// Reads `fifty.toml` and the commit's subject and author; runs `[test] list` if there is one.
async fn plan(work: &Path, log: &mut Log, cancel: &mut watch::Receiver<bool>) -> (JobExit, PlanFound) {
    let mut found = PlanFound { subject: String::new(), author: String::new(), pipeline: None, tests: Vec::new() };
    if let Ok(text) = git(work, &["log", "-1", "--format=%s%x1f%an"]).await {
        let (subject, author) = text.trim_end().split_once('\u{1f}').unwrap_or((text.trim_end(), ""));
        found.subject = subject.chars().take(200).collect();
        found.author = author.chars().take(100).collect();
    }
    let path = work.join(pipeline::FILE_NAME);
    let text = match std::fs::metadata(&path) {
        Err(_) => return (JobExit::Exited(0), found),
        Ok(m) if m.len() as usize > pipeline::MAX_FILE_BYTES => {
            let e = format!("{} is {} bytes; the limit is {}", pipeline::FILE_NAME, m.len(), pipeline::MAX_FILE_BYTES);
            return (JobExit::Failed(e), found);
        }
        Ok(_) => match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => return (JobExit::Failed(format!("read {}: {e}", pipeline::FILE_NAME)), found),
        },
    };
    found.pipeline = Some(text.clone());
    // The coordinator reports a bad file; here it only decides whether there is a list to run.
    let Some(list) = Pipeline::parse(&text).ok().and_then(|p| p.test.list) else {
        return (JobExit::Exited(0), found);
    };
    log.note(&format!("$ {list}\n"));
    let mut stdout = Vec::new();
    let exit = run_command(&list, work, &[], LIST_TIMEOUT, log, Some(&mut stdout), cancel).await;
    if stdout.len() > MAX_LIST_BYTES {
        return (JobExit::Failed(format!("[test] list printed more than {MAX_LIST_BYTES} bytes")), found);
    }
    found.tests =
        String::from_utf8_lossy(&stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    (exit, found)
}

/// Runs `sh -c command` in its own process group. Output goes to `log`; stdout also to `capture`
/// when given. A timeout or a cancel kills the group.
async fn run_command(
    command: &str,
    dir: &Path,
    env: &[(&str, String)],
    timeout: Duration,
    log: &mut Log,
    mut capture: Option<&mut Vec<u8>>,
    cancel: &mut watch::Receiver<bool>,
) -> JobExit {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
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
    let pgid = child.id().map(|p| p as i32);
    let kill_group = || {
        if let Some(pgid) = pgid {
            // SAFETY: plain syscall on a process group this job created.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
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

/// The JUnit files under `work` matching `pattern`, up to [`MAX_JUNIT_BYTES`] in all.
fn collect_junit(work: &Path, pattern: &str) -> (Vec<(String, String)>, Option<String>) {
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
        match std::fs::read_to_string(&path) {
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
        let jobs = Jobs::new(&data);
        let mut rx = attach(&jobs);
        jobs.start(spec(&src, &sha, JobKind::Plan));
        let done = wait_done(&jobs, &mut rx).await;
        assert_eq!(done.exit, JobExit::Exited(0), "{}", String::from_utf8_lossy(&done.log_tail));
        let plan = done.plan.unwrap();
        assert_eq!(plan.subject, "add the app");
        assert_eq!(plan.tests, ["a.sh", "b.sh"]);
        assert!(plan.pipeline.unwrap().contains("ls tests"));
        assert!(!data.join("work/job-1-1").exists(), "the work tree is removed");
        assert!(jobs.held().is_empty());
        let _ = std::fs::remove_dir_all(&src);
    }

    #[tokio::test]
    async fn a_shard_gets_its_environment_and_leaves_junit() {
        let script = "cat \"$FIFTY_TESTS_FILE\" > seen; echo \"$FIFTY_SHARD_INDEX/$FIFTY_SHARD_COUNT $FIFTY_COMMIT\"; \
                      mkdir -p reports; echo '<testsuite><testcase name=\"t1\" time=\"0.5\"/></testsuite>' > reports/r.xml; \
                      echo to-stderr >&2; exit 3";
        let (src, sha) = repo(&[("README", "x")]);
        let jobs = Jobs::new(&src.join("agent"));
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
        let jobs = Jobs::new(&src.join("agent"));
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
        let jobs = Jobs::new(&data);
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
        let jobs = Jobs::new(&src.join("agent"));
        let mut rx = attach(&jobs);
        jobs.start(spec(&src, "0123456789012345678901234567890123456789", JobKind::Plan));
        let done = wait_done(&jobs, &mut rx).await;
        assert!(matches!(&done.exit, JobExit::Failed(e) if e.contains("not on any branch")), "{:?}", done.exit);
        let _ = std::fs::remove_dir_all(&src);
    }
}
