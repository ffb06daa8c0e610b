//! The deployed application on this host: a [`Supervisor`] that keeps one service process
//! running, and [`http_get`], the minimal HTTP client that checks its health (and scrapes its
//! metrics).
//!
//! The service runs as `sh -c command` in a session (and process group) of its own, its output
//! appended to one log file. Stopping it signals the whole group, and whenever the shell exits,
//! by itself or because it was stopped, what is left of its group is killed: nothing the service
//! started outlives it.
//!
//! Production does not depend on the agent being up: the service is not the agent's to take
//! down when the agent stops or is killed (no parent-death signal; the agent's unit stops the
//! agent alone). What runs is recorded in the data dir (`service.json`: the shell's pid, its
//! start time and boot, and the spec it runs), and a starting agent adopts it
//! ([`Supervisor::adopt`]) when it is that very process running the same spec, then supervises
//! it as it would its own child: it sees it exit through a pidfd, restarts it, stops it.
//!
//! Invariants:
//! - At most one service (process group) per `Supervisor` at a time: `start` stops the old one and
//!   waits until it is gone before it starts the new one; `start`, `adopt` and `stop` are
//!   serialised.
//! - A process is adopted only if its pid, start time and boot are the recorded ones (a reused
//!   pid is never signalled) and the recorded spec is the one asked for; otherwise it is stopped,
//!   and the caller starts the spec afresh.
//! - A service that exits by itself is restarted after a backoff (500 ms doubling to 30 s, back to
//!   500 ms after a run that stayed up 30 s), until `stop` or the next `start`.
//! - `http_get` never takes longer than its timeout and never holds more than
//!   [`MAX_BODY_BYTES`] of body; it only dials IP addresses (`localhost` is 127.0.0.1), so no
//!   health check waits on DNS.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

use crate::procs::{group_alive, ProcessId};

/// The most body `http_get` accepts.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The most bytes of status line, headers and chunk framing `http_get` accepts besides the body.
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// The first pause before a restart.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run that stays up this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// How long a stopped service has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long, after SIGKILL, `stop` waits for the group's last members to die.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a dying process group is looked at.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// An answer to [`http_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Why [`http_get`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http://host[:port]/path` with an IP address or `localhost` as host.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// No TCP connection could be made (refused, unreachable).
    #[error("GET {url}: connect: {source}")]
    Connect {
        url: String,
        #[source]
        source: io::Error,
    },
    /// The connection broke after it was made, while sending or reading.
    #[error("GET {url}: connection failed: {source}")]
    Io {
        url: String,
        #[source]
        source: io::Error,
    },
    /// The whole exchange took longer than the timeout.
    #[error("GET {url}: no answer within {timeout:?}")]
    TimedOut { url: String, timeout: Duration },
    /// The answer is not HTTP/1.x.
    #[error("GET {url}: malformed response: {reason}")]
    Malformed { url: String, reason: String },
    /// The answer is larger than [`MAX_BODY_BYTES`] of body (or [`MAX_HEAD_BYTES`] of head).
    #[error("GET {url}: the response is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge { url: String },
}

/// Fetches `url` (`http://host[:port]/path`; the host an IP address or `localhost`) with one
/// `GET` on a fresh connection. The whole exchange, connecting included, is bounded by `timeout`.
/// Any status is an answer; only a missing or broken answer is an error.
pub async fn http_get(url: &str, timeout: Duration) -> Result<HttpResponse, HttpError> {
    let target = Target::parse(url).map_err(|reason| HttpError::BadUrl { url: url.to_string(), reason })?;
    match tokio::time::timeout(timeout, exchange(&target)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(fail)) => Err(fail.into_error(url)),
        Err(_) => Err(HttpError::TimedOut { url: url.to_string(), timeout }),
    }
}

/// Where a URL points.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    addr: SocketAddr,
    /// The `Host` header: the URL's host and port as written.
    host: String,
    /// Path and query, at least `/`.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let rest = match url.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
            _ => return Err("only http://host[:port]/path URLs are supported".into()),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let tail = tail.split('#').next().unwrap_or_default();
        let path = match tail {
            "" => "/".to_string(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_string(),
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("the path holds spaces or control characters".into());
        }
        if authority.contains('@') {
            return Err("user names in URLs are not supported".into());
        }
        let (ip, port): (IpAddr, Option<&str>) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or("no ] after an IPv6 address")?;
            let ip: Ipv6Addr = host.parse().map_err(|_| format!("{host:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or(format!("unexpected {after:?} after the address"))?),
            };
            (ip.into(), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.is_empty() {
                return Err("no host".into());
            }
            let ip = if host.eq_ignore_ascii_case("localhost") {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                host.parse::<Ipv4Addr>()
                    .map_err(|_| format!("host {host:?} is not an IPv4 address, [IPv6] address or localhost"))?
                    .into()
            };
            (ip, port)
        };
        let port = match port {
            None => 80,
            Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or(format!("bad port {port:?}"))?,
        };
        Ok(Target { addr: SocketAddr::new(ip, port), host: authority.to_string(), path })
    }
}

/// Why an exchange failed, before the URL is attached.
enum Fail {
    Connect(io::Error),
    Io(io::Error),
    Malformed(String),
    TooLarge,
}

impl Fail {
    fn into_error(self, url: &str) -> HttpError {
        let url = url.to_string();
        match self {
            Fail::Connect(source) => HttpError::Connect { url, source },
            Fail::Io(source) => HttpError::Io { url, source },
            Fail::Malformed(reason) => HttpError::Malformed { url, reason },
            Fail::TooLarge => HttpError::TooLarge { url },
        }
    }
}

/// Connects, sends the request, reads the answer.
async fn exchange(target: &Target) -> Result<HttpResponse, Fail> {
    let mut stream = TcpStream::connect(target.addr).await.map_err(Fail::Connect)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: fifty-agent\r\nAccept: */*\r\n\r\n",
        target.path, target.host
    );
    stream.write_all(request.as_bytes()).await.map_err(Fail::Io)?;
    let mut reader = Reader { stream, buf: Vec::new(), pos: 0, raw: 0 };
    // Interim answers (100 Continue and the like) come before the real one.
    let head = loop {
        let head = reader.head().await?;
        if !(100..200).contains(&head.status) {
            break head;
        }
    };
    let mut body = Vec::new();
    if head.status == 204 || head.status == 304 {
        // No body, whatever the headers say.
    } else if head.chunked {
        reader.chunked(&mut body).await?;
    } else if let (Some(length), false) = (head.content_length, head.transfer_encoding) {
        if length > MAX_BODY_BYTES as u64 {
            return Err(Fail::TooLarge);
        }
        reader.take(length as usize, &mut body).await?;
    } else {
        reader.until_closed(&mut body).await?;
    }
    Ok(HttpResponse { status: head.status, body })
}

/// What the client needs from a response head.
struct Head {
    status: u16,
    content_length: Option<u64>,
    /// A `Transfer-Encoding` header was sent (it overrides `Content-Length`).
    transfer_encoding: bool,
    /// ... and its last coding is `chunked`.
    chunked: bool,
}

/// A buffered reader over the connection that counts every byte against the limits.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` before this are consumed.
    pos: usize,
    /// Bytes read from the connection so far.
    raw: usize,
}

impl Reader {
    /// Reads more from the connection; false at its end.
    async fn fill(&mut self) -> Result<bool, Fail> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.reserve(16 * 1024);
        let n = self.stream.read_buf(&mut self.buf).await.map_err(Fail::Io)?;
        self.raw += n;
        if self.raw > MAX_BODY_BYTES + MAX_HEAD_BYTES {
            return Err(Fail::TooLarge);
        }
        Ok(n > 0)
    }

    /// One line without its line end (CRLF or LF); `None` if the connection ended first.
    async fn line(&mut self) -> Result<Option<String>, Fail> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[self.pos..self.pos + i];
                let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned();
                self.pos += i + 1;
                return Ok(Some(line));
            }
            if self.buf.len() - self.pos > MAX_HEAD_BYTES {
                return Err(Fail::TooLarge);
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// A line that must be there.
    async fn required_line(&mut self, what: &str) -> Result<String, Fail> {
        self.line().await?.ok_or_else(|| Fail::Malformed(format!("the connection closed in the {what}")))
    }

    /// The status line and headers.
    async fn head(&mut self) -> Result<Head, Fail> {
        let status_line = self.required_line("status line").await?;
        let mut parts = status_line.splitn(3, ' ');
        let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Fail::Malformed(format!("status line {:?}", truncate(&status_line))));
        }
        let status = code.parse().map_err(|_| Fail::Malformed(format!("status code {code:?}")))?;
        let mut head = Head { status, content_length: None, transfer_encoding: false, chunked: false };
        let mut head_bytes = status_line.len();
        loop {
            let line = self.required_line("headers").await?;
            head_bytes += line.len() + 2;
            if head_bytes > MAX_HEAD_BYTES {
                return Err(Fail::TooLarge);
            }
            if line.is_empty() {
                return Ok(head);
            }
            if line.starts_with([' ', '\t']) {
                continue; // obsolete line folding: a continued value we have no use for
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| Fail::Malformed(format!("header line {:?} has no colon", truncate(&line))))?;
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                let length = value
                    .parse::<u64>()
                    .map_err(|_| Fail::Malformed(format!("Content-Length {:?}", truncate(value))))?;
                if head.content_length.is_some_and(|earlier| earlier != length) {
                    return Err(Fail::Malformed("two different Content-Length headers".into()));
                }
                head.content_length = Some(length);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.transfer_encoding = true;
                let last = value.rsplit(',').next().unwrap_or_default().trim();
                head.chunked = last.eq_ignore_ascii_case("chunked");
            }
        }
    }

    /// Appends exactly `n` bytes to `body`.
    async fn take(&mut self, mut n: usize, body: &mut Vec<u8>) -> Result<(), Fail> {
        loop {
            let have = (self.buf.len() - self.pos).min(n);
            body.extend_from_slice(&self.buf[self.pos..self.pos + have]);
            self.pos += have;
            n -= have;
            if n == 0 {
                return Ok(());
            }
            if !self.fill().await? {
                return Err(Fail::Malformed(format!("the connection closed {n} bytes before the end of the body")));
            }
        }
    }

    /// Appends everything up to the end of the connection to `body`.
    async fn until_closed(&mut self, body: &mut Vec<u8>) -> Result<(), Fail> {
        loop {
            body.extend_from_slice(&self.buf[self.pos..]);
            self.pos = self.buf.len();
            if body.len() > MAX_BODY_BYTES {
                return Err(Fail::TooLarge);
            }
            if !self.fill().await? {
                return Ok(());
            }
        }
    }

    /// Decodes a chunked body into `body`, then skips the trailers.
    async fn chunked(&mut self, body: &mut Vec<u8>) -> Result<(), Fail> {
        loop {
            let line = self.required_line("chunk size").await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            if size.is_empty() || size.len() > 15 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Fail::Malformed(format!("chunk size {:?}", truncate(&line))));
            }
            let size = usize::from_str_radix(size, 16).map_err(|_| Fail::Malformed(format!("chunk size {size:?}")))?;
            if size == 0 {
                break;
            }
            if size > MAX_BODY_BYTES - body.len() {
                return Err(Fail::TooLarge);
            }
            self.take(size, body).await?;
            if !self.required_line("chunk end").await?.is_empty() {
                return Err(Fail::Malformed("a chunk is longer than its size".into()));
            }
        }
        // Trailers, up to the blank line. A server that closes instead has still sent the body.
        while let Some(line) = self.line().await? {
            if line.is_empty() {
                break;
            }
        }
        Ok(())
    }
}

/// At most 80 characters of `text`, for error messages.
fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// What to run as the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// A shell command, run as `sh -c command`.
    pub command: String,
    /// The working directory.
    pub dir: PathBuf,
    /// Variables set on top of the agent's own environment.
    pub env: Vec<(String, String)>,
}

/// What the supervisor knows about the service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStatus {
    /// A process is running now (false while waiting to restart, or stopped).
    pub running: bool,
    /// The shell's pid, which is also the process group's id, while running.
    pub pid: Option<u32>,
    /// How many times the current spec was restarted after exiting by itself.
    pub restarts: u32,
    /// How the last run ended: `exit 1`, `signal 9`, `failed to start: ...`.
    pub last_exit: Option<String>,
    /// The spec supervised since the last `start`; `None` before it and after `stop`.
    pub spec: Option<ServiceSpec>,
}

/// Keeps one service process running: restarts it when it exits, replaces it on `start`, stops
/// it, and all its process group, on `stop`. Clones share the same service.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
}

struct Shared {
    log_path: PathBuf,
    /// Where the running service is recorded for the next run of the agent.
    record_path: PathBuf,
    status: Arc<Mutex<StatusCell>>,
    /// The supervising task of the current spec. Held across `start` and `stop`, so they run
    /// one at a time.
    run: tokio::sync::Mutex<Option<Run>>,
}

/// The status, and which run may write it: a run that was stopped never overwrites the next
/// one's status, even if whoever stopped it gave up waiting.
#[derive(Default)]
struct StatusCell {
    generation: u64,
    status: ServiceStatus,
}

/// One supervising task.
struct Run {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What `service.json` holds: the process running a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    process: ProcessId,
    spec: ServiceSpec,
}

/// What [`Supervisor::adopt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// The recorded process runs the spec asked for: it is supervised now (its pid).
    Adopted(u32),
    /// Nothing was recorded: no earlier run of the agent left a service.
    NothingRecorded,
    /// Not adopted, and why; a recorded process that still ran was stopped.
    Refused(String),
}

impl Supervisor {
    /// A supervisor appending the service's stdout and stderr to `log_path` and recording what
    /// runs in `record_path`. Nothing runs until [`Supervisor::start`] or [`Supervisor::adopt`].
    pub fn new(log_path: PathBuf, record_path: PathBuf) -> Self {
        let run = tokio::sync::Mutex::new(None);
        Supervisor { shared: Arc::new(Shared { log_path, record_path, status: Arc::default(), run }) }
    }

    /// Takes over the service an earlier run of the agent left running, if the record in the
    /// data dir names a process that still runs (same pid, start time and boot) with `spec`;
    /// then it is supervised as if [`Supervisor::start`] had started it. A recorded process
    /// that runs another spec is stopped (SIGTERM to its group, then SIGKILL), as `start`
    /// stops an old service. Whatever runs under this supervisor now is left alone unless adopted.
    pub async fn adopt(&self, spec: ServiceSpec) -> Adoption {
        let mut run = self.shared.run.lock().await;
        let record = match std::fs::read(&self.shared.record_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Adoption::NothingRecorded,
            Err(e) => return Adoption::Refused(format!("read {}: {e}", self.shared.record_path.display())),
            Ok(bytes) => match serde_json::from_slice::<Record>(&bytes) {
                Ok(record) => record,
                Err(e) => return Adoption::Refused(format!("{} is damaged: {e}", self.shared.record_path.display())),
            },
        };
        let process = record.process;
        if !process.is_running() {
            let _ = std::fs::remove_file(&self.shared.record_path);
            return Adoption::Refused(format!("the recorded service process {} is no longer running", process.pid));
        }
        if crate::procs::stat(process.pid).map(|s| s.pgrp) != Some(process.pid) {
            // Not the leader of its group any more: it cannot be stopped as a group.
            return Adoption::Refused(format!("the recorded service process {} left its process group", process.pid));
        }
        if record.spec != spec {
            let what = if record.spec.dir != spec.dir {
                format!("it runs in {}, not {}", record.spec.dir.display(), spec.dir.display())
            } else if record.spec.command != spec.command {
                format!("it runs `{}`, not `{}`", record.spec.command, spec.command)
            } else {
                "its environment differs (FIFTY_* variables or [service] settings changed)".to_string()
            };
            warn!(pid = process.pid, "the running service is not the current release's; stopping it");
            let exit = terminate(&mut Proc::Adopted(process.clone()), Some(process.pid)).await;
            info!(exit, "service stopped");
            let _ = std::fs::remove_file(&self.shared.record_path);
            return Adoption::Refused(format!("the running service (pid {}) is not what to run: {what}", process.pid));
        }
        if let Some(old) = run.take() {
            finish(old).await;
        }
        let pid = process.pid as u32;
        let started = self.begin(&mut run, spec, Some(process));
        let _ = started.await;
        Adoption::Adopted(pid)
    }

    /// Stops whatever runs (as [`Supervisor::stop`] does), then runs `spec` and keeps it running.
    /// Returns once the new process is spawned or has failed to spawn (then it is retried like
    /// a crash).
    pub async fn start(&self, spec: ServiceSpec) {
        let mut run = self.shared.run.lock().await;
        if let Some(old) = run.take() {
            finish(old).await;
        }
        let started = self.begin(&mut run, spec, None);
        let _ = started.await;
    }

    /// Starts supervising `spec` (running `adopted` first, if given); resolves once the first
    /// process runs or has failed to start.
    fn begin(
        &self,
        run: &mut Option<Run>,
        spec: ServiceSpec,
        adopted: Option<ProcessId>,
    ) -> tokio::sync::oneshot::Receiver<()> {
        let generation = {
            let mut cell = self.shared.status.lock().expect("status lock");
            cell.generation += 1;
            cell.status = ServiceStatus { spec: Some(spec.clone()), ..ServiceStatus::default() };
            cell.generation
        };
        let (stop, stop_rx) = watch::channel(false);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let status = Arc::clone(&self.shared.status);
        let span = tracing::info_span!("service", command = %spec.command);
        let paths = (self.shared.log_path.clone(), self.shared.record_path.clone());
        let supervise = supervise(spec, paths, adopted, status, generation, stop_rx, started_tx);
        let task = tokio::spawn(supervise.instrument(span));
        *run = Some(Run { stop, task });
        started_rx
    }

    /// Stops restarting and stops the service: SIGTERM to its process group, up to 10 s for it to
    /// exit, then SIGKILL to the group. Returns when the group is gone.
    pub async fn stop(&self) {
        let mut run = self.shared.run.lock().await;
        if let Some(old) = run.take() {
            finish(old).await;
        }
        let mut cell = self.shared.status.lock().expect("status lock");
        cell.generation += 1;
        cell.status.running = false;
        cell.status.pid = None;
        cell.status.spec = None;
    }

    /// Forgets the service without stopping it, as the agent's death would (tests).
    #[cfg(test)]
    async fn abandon(&self) {
        if let Some(run) = self.shared.run.lock().await.take() {
            run.task.abort();
            let _ = run.task.await;
        }
    }

    /// The service's state now.
    pub fn status(&self) -> ServiceStatus {
        self.shared.status.lock().expect("status lock").status.clone()
    }
}

/// Tells a supervising task to stop and waits until it has (its process group is gone).
async fn finish(run: Run) {
    let _ = run.stop.send(true);
    if let Err(e) = run.task.await {
        warn!(error = %e, "the service's supervising task failed");
    }
}

/// Resolves once a stop is asked for; never if the supervisor went away without asking.
async fn stop_asked(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|asked| *asked).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A service process: the agent's child, or one an earlier run of the agent started.
enum Proc {
    Child(Child),
    Adopted(ProcessId),
}

impl Proc {
    /// Waits for it to exit; says how, for people.
    async fn wait(&mut self) -> String {
        match self {
            Proc::Child(child) => describe(&child.wait().await),
            Proc::Adopted(process) => {
                process.exited().await;
                // Its parent (init, or a subreaper) collects its status, not the agent.
                "exited (adopted: status unknown)".to_string()
            }
        }
    }
}

/// Runs `spec` until a stop is asked for, restarting it with backoff; `adopted`, if given, is
/// its first run. `started` is told once the first run has spawned (or failed to).
async fn supervise(
    spec: ServiceSpec,
    (log_path, record_path): (PathBuf, PathBuf),
    mut adopted: Option<ProcessId>,
    status: Arc<Mutex<StatusCell>>,
    generation: u64,
    mut stop: watch::Receiver<bool>,
    started: tokio::sync::oneshot::Sender<()>,
) {
    let update = |change: &dyn Fn(&mut ServiceStatus)| {
        let mut cell = status.lock().expect("status lock");
        if cell.generation == generation {
            change(&mut cell.status);
        }
    };
    let mut started = Some(started);
    let mut backoff = MIN_BACKOFF;
    let mut restarts = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let run_started = Instant::now();
        let spawned = match adopted.take() {
            Some(process) => {
                info!(pid = process.pid, "supervising the service an earlier run of the agent started");
                Ok(Proc::Adopted(process))
            }
            None => spawn(&spec, &log_path).map(|child| {
                let pid = child.id();
                info!(pid, dir = %spec.dir.display(), "service started");
                record(&record_path, pid, &spec);
                Proc::Child(child)
            }),
        };
        let exit = match spawned {
            Err(e) => format!("failed to start: {e}"),
            Ok(mut proc) => {
                let pid = match &proc {
                    Proc::Child(child) => child.id(),
                    Proc::Adopted(process) => u32::try_from(process.pid).ok(),
                };
                update(&|s| {
                    s.running = true;
                    s.pid = pid;
                });
                if let Some(started) = started.take() {
                    let _ = started.send(());
                }
                let pgid = pid.and_then(|pid| i32::try_from(pid).ok());
                tokio::select! {
                    exit = proc.wait() => {
                        // Nothing the service started outlives it.
                        signal_group(pgid, libc::SIGKILL);
                        exit
                    }
                    () = stop_asked(&mut stop) => {
                        let exit = terminate(&mut proc, pgid).await;
                        let _ = std::fs::remove_file(&record_path);
                        info!(exit, "service stopped");
                        update(&|s| {
                            s.running = false;
                            s.pid = None;
                            s.last_exit = Some(exit.clone());
                        });
                        return;
                    }
                }
            }
        };
        if let Some(started) = started.take() {
            let _ = started.send(());
        }
        let uptime = run_started.elapsed();
        if uptime >= STABLE_RUN {
            backoff = MIN_BACKOFF;
        }
        let delay = backoff;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        update(&|s| {
            s.running = false;
            s.pid = None;
            s.last_exit = Some(exit.clone());
        });
        if exit == "exit 0" {
            info!(exit, ?uptime, restart_in = ?delay, "service exited by itself; restarting it");
        } else {
            warn!(exit, ?uptime, restart_in = ?delay, "service crashed; restarting it");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop_asked(&mut stop) => return,
        }
        restarts += 1;
        update(&|s| s.restarts = restarts);
        info!(restarts, "restarting the service");
    }
}

/// Records in `path` that `pid` runs `spec` (for the next run of the agent to adopt).
fn record(path: &Path, pid: Option<u32>, spec: &ServiceSpec) {
    let Some(process) = pid.and_then(|p| i32::try_from(p).ok()).and_then(ProcessId::of) else { return };
    let record = Record { process, spec: spec.clone() };
    let tmp = path.with_extension("tmp");
    let written = serde_json::to_vec(&record)
        .map_err(io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        warn!(error = %e, file = %path.display(), "cannot record the service; a restarted agent will restart it");
    }
}

/// Spawns `sh -c command` in `dir`, in a new session, output appended to `log_path`.
fn spawn(spec: &ServiceSpec, log_path: &Path) -> Result<Child, String> {
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(log_path);
    let (stdout, stderr) = match (open(), open()) {
        (Ok(stdout), Ok(stderr)) => (stdout, stderr),
        (Err(e), _) | (_, Err(e)) => return Err(format!("open {}: {e}", log_path.display())),
    };
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    // The agent's systemd notification socket is the agent's: a service that speaks sd_notify
    // itself would otherwise report to the agent's unit.
    cmd.env_remove(fifty_shared::sd_notify::NOTIFY_SOCKET);
    // A session of its own (so a process group of its own, with the shell's pid as its id): no
    // signal meant for the agent's terminal or group reaches it, and no parent-death signal
    // either: the service outlives the agent, which adopts it when it starts again.
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("run `sh -c {}` in {}: {e}", spec.command, spec.dir.display()))
}

/// Stops a running service: SIGTERM to the group; once the shell has exited, the rest of the
/// group gets what is left of [`STOP_GRACE`] to follow; then SIGKILL to whatever remains. Says
/// how it ended.
async fn terminate(proc: &mut Proc, pgid: Option<i32>) -> String {
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    let status = match tokio::time::timeout_at(deadline, proc.wait()).await {
        Ok(status) => {
            wait_group_gone(pgid, deadline).await;
            status
        }
        Err(_) => {
            warn!(grace = ?STOP_GRACE, "service ignored SIGTERM; killing it");
            signal_group(pgid, libc::SIGKILL);
            proc.wait().await
        }
    };
    signal_group(pgid, libc::SIGKILL);
    wait_group_gone(pgid, tokio::time::Instant::now() + KILL_WAIT).await;
    status
}

/// Sends `signal` to the process group `pgid`.
fn signal_group(pgid: Option<i32>, signal: libc::c_int) {
    // Never 0 (our own group) or 1.
    if let Some(pgid) = pgid.filter(|p| *p > 1) {
        // SAFETY: plain syscall on a process group this supervisor created.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

/// Waits until no live process is left in the group, or `deadline`.
async fn wait_group_gone(pgid: Option<i32>, deadline: tokio::time::Instant) {
    let Some(pgid) = pgid.filter(|p| *p > 1) else { return };
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// How a run ended, for people: `exit 1`, `signal 9`.
fn describe(status: &io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => format!("{status}"),
        },
        Err(e) => format!("lost track of the process: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A fresh empty directory for one test.
    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fifty-service-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn spec(dir: &Path, command: &str) -> ServiceSpec {
        ServiceSpec { command: command.to_string(), dir: dir.to_path_buf(), env: Vec::new() }
    }

    /// Polls `condition` until it holds; panics after 30 s.
    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < deadline, "waited 30 s for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether `pid` is a live process (a zombie is not).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with(['Z', 'X'])))
            .unwrap_or(false)
    }

    /// The pid a command wrote to `file`, once it has.
    fn read_pid(file: &Path) -> Option<u32> {
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    #[tokio::test]
    async fn a_crashing_service_is_restarted_with_its_output_logged() {
        let dir = temp_dir();
        let supervisor = Supervisor::new(dir.join("logs/service.log"), dir.join("service.json"));
        supervisor.start(spec(&dir, "echo run >> runs.txt; echo crashing now; exit 1")).await;
        let runs = || std::fs::read_to_string(dir.join("runs.txt")).map_or(0, |t| t.lines().count());
        let logged =
            || std::fs::read_to_string(dir.join("logs/service.log")).map_or(0, |t| t.matches("crashing now").count());
        wait_until("three runs, logged, and two restarts", || {
            runs() >= 3 && logged() >= 3 && supervisor.status().restarts >= 2
        })
        .await;
        let status = supervisor.status();
        assert_eq!(status.last_exit.as_deref(), Some("exit 1"));
        assert_eq!(status.spec.as_ref().map(|s| s.command.contains("runs.txt")), Some(true));
        supervisor.stop().await;
        let stopped = supervisor.status();
        assert!(!stopped.running && stopped.pid.is_none() && stopped.spec.is_none(), "{stopped:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn stop_kills_the_whole_process_group() {
        let dir = temp_dir();
        let supervisor = Supervisor::new(dir.join("service.log"), dir.join("service.json"));
        // The grandchild would outlive a kill of the shell alone.
        supervisor.start(spec(&dir, "sh -c 'echo $$ > grandchild.pid; exec sleep 600' & wait")).await;
        let pidfile = dir.join("grandchild.pid");
        wait_until("the grandchild to start", || read_pid(&pidfile).is_some()).await;
        let grandchild = read_pid(&pidfile).unwrap();
        let shell = supervisor.status().pid.expect("a running service has a pid");
        assert!(alive(grandchild) && alive(shell));
        supervisor.stop().await;
        wait_until("the grandchild to die", || !alive(grandchild)).await;
        assert!(!alive(shell), "the shell {shell} survived stop");
        assert_eq!(supervisor.status().last_exit.as_deref(), Some("signal 15"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn start_replaces_the_running_service() {
        let dir = temp_dir();
        let supervisor = Supervisor::new(dir.join("service.log"), dir.join("service.json"));
        supervisor.start(spec(&dir, "echo $$ > old.pid; exec sleep 600")).await;
        wait_until("the old service to run", || read_pid(&dir.join("old.pid")).is_some()).await;
        let old = read_pid(&dir.join("old.pid")).unwrap();
        assert_eq!(supervisor.status().pid, Some(old));
        let mut new_spec = spec(&dir, "echo $$ > new.pid; exec sleep 600");
        new_spec.env.push(("SHOP_VERSION".into(), "2".into()));
        supervisor.start(new_spec.clone()).await;
        assert!(!alive(old), "the old service {old} still runs");
        wait_until("the new service to run", || read_pid(&dir.join("new.pid")).is_some()).await;
        let new = read_pid(&dir.join("new.pid")).unwrap();
        let status = supervisor.status();
        assert!(status.running && status.pid == Some(new) && new != old, "{status:?}");
        assert_eq!(status.spec, Some(new_spec));
        assert_eq!(status.restarts, 0);
        assert!(alive(new));
        supervisor.stop().await;
        assert!(!alive(new));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A service left running by a supervisor that went away (the agent died), and its pid.
    async fn left_running(dir: &Path, command: &str) -> (ServiceSpec, u32) {
        let first = Supervisor::new(dir.join("service.log"), dir.join("service.json"));
        let spec = spec(dir, command);
        first.start(spec.clone()).await;
        let pid = first.status().pid.expect("running");
        first.abandon().await;
        assert!(alive(pid), "the service outlives its supervisor");
        (spec, pid)
    }

    #[tokio::test]
    async fn a_restarted_agent_adopts_the_running_service_and_supervises_it() {
        let dir = temp_dir();
        let (left, pid) = left_running(&dir, "exec sleep 600").await;
        let second = Supervisor::new(dir.join("service.log"), dir.join("service.json"));
        assert_eq!(second.adopt(left.clone()).await, Adoption::Adopted(pid));
        let status = second.status();
        assert!(status.running && status.pid == Some(pid) && status.spec == Some(left), "{status:?}");
        // It crashes: seen through its pidfd although it is not the supervisor's child, and restarted.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        wait_until("the adopted service to be restarted", || {
            let s = second.status();
            s.restarts == 1 && s.running && s.pid.is_some_and(|p| p != pid)
        })
        .await;
        assert_eq!(second.status().last_exit.as_deref(), Some("exited (adopted: status unknown)"));
        let restarted = second.status().pid.unwrap();
        second.stop().await;
        assert!(!alive(restarted));
        assert!(!dir.join("service.json").exists(), "a stopped service leaves no record");
        assert_eq!(second.adopt(spec(&dir, "exec sleep 600")).await, Adoption::NothingRecorded);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_adopted_service_is_stopped_as_a_group() {
        let dir = temp_dir();
        let (spec, pid) = left_running(&dir, "sh -c 'echo $$ > grandchild.pid; exec sleep 600' & wait").await;
        wait_until("the grandchild to start", || read_pid(&dir.join("grandchild.pid")).is_some()).await;
        let grandchild = read_pid(&dir.join("grandchild.pid")).unwrap();
        let second = Supervisor::new(dir.join("service.log"), dir.join("service.json"));
        assert_eq!(second.adopt(spec).await, Adoption::Adopted(pid));
        second.stop().await;
        assert!(!alive(pid) && !alive(grandchild), "the adopted service's group was stopped");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_service_running_another_spec_is_stopped_not_adopted_and_a_reused_pid_is_left_alone() {
        let dir = temp_dir();
        let (_, pid) = left_running(&dir, "exec sleep 600").await;
        let second = Supervisor::new(dir.join("service.log"), dir.join("service.json"));
        match second.adopt(spec(&dir, "exec sleep 601")).await {
            Adoption::Refused(why) => assert!(why.contains("not what to run") && why.contains("sleep 601"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!alive(pid), "the service running the old command was stopped");
        assert!(!second.status().running);

        // The record names a pid that another process has now (another start time): refused,
        // and that process is not signalled.
        let (spec, pid) = left_running(&dir, "exec sleep 600").await;
        let path = dir.join("service.json");
        let mut record: Record = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        record.process.start_ticks += 1;
        std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
        match second.adopt(spec).await {
            Adoption::Refused(why) => assert!(why.contains("no longer running"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(alive(pid), "a process that is not the recorded one is left alone");
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_service_that_cannot_start_is_retried_and_reported() {
        let dir = temp_dir();
        let supervisor = Supervisor::new(dir.join("service.log"), dir.join("service.json"));
        supervisor.start(spec(&dir.join("missing"), "true")).await;
        wait_until("a failed start", || supervisor.status().last_exit.is_some()).await;
        let exit = supervisor.status().last_exit.unwrap();
        assert!(exit.starts_with("failed to start") && exit.contains("missing"), "{exit}");
        supervisor.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Serves one connection with `answer`, written in `pieces`, then holds the connection open
    /// until the client closes it. Returns the URL and the request head the server received.
    async fn one_shot_server(pieces: Vec<Vec<u8>>) -> (String, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            for piece in pieces {
                if socket.write_all(&piece).await.is_err() {
                    return;
                }
                let _ = socket.flush().await;
                tokio::task::yield_now().await;
            }
            // Keep the connection open: the client must know from the framing where the body ends.
            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        (format!("http://{addr}"), rx)
    }

    #[tokio::test]
    async fn http_get_reads_a_content_length_body() {
        let (base, request) = one_shot_server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n".to_vec(),
        ])
        .await;
        let response = http_get(&format!("{base}/health"), Duration::from_secs(30)).await.unwrap();
        assert_eq!(response, HttpResponse { status: 200, body: b"ok\n".to_vec() });
        let request = request.await.unwrap();
        let host = base.trim_start_matches("http://");
        assert!(request.starts_with("GET /health HTTP/1.1\r\n"), "{request}");
        for header in
            [format!("Host: {host}\r\n"), "Connection: close\r\n".into(), "User-Agent: fifty-agent\r\n".into()]
        {
            assert!(request.contains(&header), "no {header:?} in {request}");
        }
    }

    #[tokio::test]
    async fn http_get_decodes_a_chunked_body() {
        let pieces = [
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWi",
            "ki\r\n",
            "5;x=y\r\npedia\r\n0\r\n",
            "\r\n",
        ];
        let (base, _) = one_shot_server(pieces.iter().map(|p| p.as_bytes().to_vec()).collect()).await;
        let response = http_get(&format!("{base}/"), Duration::from_secs(30)).await.unwrap();
        assert_eq!(response, HttpResponse { status: 503, body: b"Wikipedia".to_vec() });
    }

    #[tokio::test]
    async fn http_get_reads_to_the_end_without_a_length_and_refuses_too_much() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for body_len in [5, MAX_BODY_BYTES + 1] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let mut answer = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
                answer.resize(answer.len() + body_len, b'x');
                let _ = socket.write_all(&answer).await;
            }
        });
        let url = format!("http://{addr}/metrics");
        let response = http_get(&url, Duration::from_secs(30)).await.unwrap();
        assert_eq!(response.body, b"xxxxx");
        let error = http_get(&url, Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(error, HttpError::TooLarge { .. }), "{error}");
        assert!(error.to_string().contains(&url), "{error}");

        let (base, _) = one_shot_server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n".to_vec()]).await;
        let error = http_get(&base, Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(error, HttpError::TooLarge { .. }), "{error}");
    }

    #[tokio::test]
    async fn http_get_gives_up_on_a_silent_server_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let url = format!("http://{addr}/health");
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let error = http_get(&url, timeout).await.unwrap_err();
        assert!(matches!(error, HttpError::TimedOut { .. }), "{error}");
        assert!(started.elapsed() >= timeout && started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        assert!(error.to_string().contains(&url), "{error}");
    }

    #[tokio::test]
    async fn http_get_reports_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://{addr}/health");
        let error = http_get(&url, Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(error, HttpError::Connect { .. }), "{error}");
        assert!(error.to_string().contains(&url), "{error}");
    }

    #[tokio::test]
    async fn http_get_refuses_urls_it_cannot_fetch() {
        for url in [
            "https://127.0.0.1/health",
            "ftp://127.0.0.1/",
            "http:///health",
            "http://",
            "http://:8080/",
            "http://127.0.0.1:notaport/",
            "http://127.0.0.1:0/",
            "http://example.com/",
            "http://user@127.0.0.1/",
            "http://127.0.0.1/a b",
            "http://::1/",
            "127.0.0.1:8080/health",
        ] {
            let error = http_get(url, Duration::from_secs(30)).await.unwrap_err();
            assert!(matches!(error, HttpError::BadUrl { .. }), "{url}: {error}");
            assert!(error.to_string().contains(url), "{error}");
        }
    }

    #[test]
    fn urls_split_into_address_host_and_path() {
        let target = |url| Target::parse(url).unwrap();
        assert_eq!(
            target("http://127.0.0.1:8080/metrics?x=1#top"),
            Target {
                addr: "127.0.0.1:8080".parse().unwrap(),
                host: "127.0.0.1:8080".into(),
                path: "/metrics?x=1".into()
            }
        );
        assert_eq!(
            target("HTTP://localhost"),
            Target { addr: "127.0.0.1:80".parse().unwrap(), host: "localhost".into(), path: "/".into() }
        );
        assert_eq!(target("http://[::1]:9/?q").addr, "[::1]:9".parse().unwrap());
        assert_eq!(target("http://[::1]:9/?q").path, "/?q");
    }
}
