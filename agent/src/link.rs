//! The agent's link to the coordinator: connect with the host's certificate, say hello, then
//! send a heartbeat every interval the coordinator asked for. When the link drops, try again
//! with exponential backoff and jitter, forever, while the host keeps running (a link that fails
//! before the coordinator's Welcome backs off too); only a refusal of the host itself stops the
//! agent: its certificate refused in the TLS handshake (another cluster's CA, expired), or the
//! host revoked or unknown. The same control
//! stream carries jobs to the `jobs` runner and their output and results back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use fifty_shared::codec::{read_frame, write_frame, CodecError};
use fifty_shared::tls::COORDINATOR_NAME;
use fifty_shared::wire::{close, AgentMsg, CoordinatorMsg, Health, Heartbeat};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::deploy::Deployer;
use crate::health::HealthProbe;
use crate::identity::Identity;
use crate::jobs::Jobs;
use crate::join::{client_endpoint, resolve};
use crate::sidecar::Sidecar;

/// How long a QUIC handshake with a coordinator may take. A dead coordinator answers nothing,
/// so this is what trying it costs before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// We were asked to stop.
    Shutdown,
    /// The link was up (the coordinator welcomed this host) and then dropped; reconnect.
    Lost(String),
    /// The link never came up; retry later, backing off.
    Unreachable(String),
    /// The coordinator refused this host (its certificate in the TLS handshake, or the host as
    /// revoked or unknown); retrying cannot help.
    Refused(String),
    /// This coordinator is not the leader; the leader is at this address (empty if unknown).
    Redirect(String),
    /// The link was up, and the cluster has since elected the leader at this address (another
    /// coordinator said so when this one went quiet): go there now.
    Moved(String),
    /// The coordinator admits no more links just now (`close::BUSY`): try it again after this.
    Busy(Duration),
}

/// Something that wants to know each heartbeat's round trip (the capacity benchmark does).
pub type AckObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Exponential backoff with jitter: each wait is random in [cap/2, cap], the cap doubling from
/// `base` to `max`. It starts again from `base` only after a link that stayed up for
/// [`STABLE_LINK`]: a link that dies right after it came up (a coordinator shedding load, a
/// leader that keeps failing) must not send the whole fleet back at the minimum wait.
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

/// A link up at least this long counts as healthy: the backoff starts again from its base.
pub const STABLE_LINK: Duration = Duration::from_secs(30);

impl Backoff {
    /// A backoff between `base` and `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, attempt: 0 }
    }

    /// The current cap: the longest the next wait can be.
    pub fn cap(&self) -> Duration {
        self.base.saturating_mul(1 << self.attempt.min(16)).min(self.max)
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        let jitter: f64 = rand::rng().random_range(0.5..=1.0);
        cap.mul_f64(jitter)
    }

    /// A link that was up for `lived` ended: start again from `base` only if it was stable.
    pub fn link_ended(&mut self, lived: Duration) {
        if lived >= STABLE_LINK {
            self.reset();
        }
    }

    /// Start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A coordinator that said `close::BUSY` is tried again after the wait it asked for, plus up to
/// this fraction more at random, so the agents it refused together do not return together.
const BUSY_JITTER: f64 = 0.25;

/// The wait before trying a coordinator that asked for `asked`: at least that, at most 25% more.
pub fn busy_delay(asked: Duration) -> Duration {
    asked.mul_f64(1.0 + rand::rng().random_range(0.0..=BUSY_JITTER))
}

/// Runs the agent until `shutdown` turns true or the coordinator refuses the host.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let identity = Identity::load(&config.data_dir)?;
    let client_config =
        fifty_shared::tls::quic_client_config(&identity.ca_pem, &identity.cert, fifty_shared::wire::ALPN_AGENT)?;
    let first = resolve(&config.coordinators[0]).await?;
    let endpoint = client_endpoint(first)?;
    let mut probe = HealthProbe::new(&config.data_dir);
    let mut health = move || probe.sample();
    let jobs =
        Jobs::new(&config.data_dir, &config.jobs_dir(), crate::sandbox::JobUser::resolve(config.jobs.user.as_deref())?)
            .pass_env(&config.jobs.env);
    let deployer = Deployer::new(&config.data_dir, config.service_vars());
    deployer.resume().await;
    tokio::spawn(crate::metrics::run(deployer.clone()));
    let sidecar = Sidecar::new(config.sidecar.addr()?);
    // The sidecar answers on a thread of its own: the link's work (encoding a report of thousands
    // of units, QUIC) must not hold up the application's requests.
    {
        let (sidecar, shutdown) = (sidecar.clone(), shutdown.clone());
        std::thread::Builder::new().name("fifty-sidecar".into()).spawn(move || {
            if let Err(e) = crate::sidecar::request_short_slice(crate::sidecar::SLICE) {
                info!(error = %e, "the A/B sidecar's thread keeps the scheduler's default slice");
            }
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(sidecar.run(shutdown)),
                Err(e) => warn!(error = %e, "cannot start the A/B sidecar's runtime; it stays off"),
            }
        })?;
    }
    // systemd (`Type=notify`): ready once the host serves what it served before (its current
    // release resumed, the sidecar's thread up), without waiting for a coordinator: a host that
    // boots while no coordinator answers must still come up (the agent works offline).
    fifty_shared::sd_notify::notify_or_warn("READY=1\nSTATUS=connecting to a coordinator");
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
    let members = crate::members::Coordinators::load(&config.data_dir, &config.coordinators);
    let mut next = 0;
    let mut redirected: Option<String> = None;
    let mut redirects_in_a_row = 0;
    let mut last_failed: Option<String> = None;
    loop {
        let target = match redirected.take() {
            Some(leader) => leader,
            None => {
                // Round-robin over the coordinators, skipping the one that just failed (when
                // there is another): a dead coordinator costs a connect timeout.
                let list = members.list();
                let n = list.len();
                let mut pick = list[next % n].clone();
                if n > 1 && last_failed.as_ref() == Some(&pick) {
                    next += 1;
                    pick = list[next % n].clone();
                }
                next += 1;
                pick
            }
        };
        let target = &target;
        let began = Instant::now();
        let known = members.list();
        let end = match resolve(target).await {
            Ok(addr) => {
                let work = Work {
                    jobs: Some(&jobs),
                    deployer: Some(&deployer),
                    sidecar: Some(&sidecar),
                    coordinators: &known,
                    members: Some(&members),
                };
                session(&endpoint, &client_config, addr, &mut health, None, work, &mut shutdown).await
            }
            Err(e) => SessionEnd::Unreachable(format!("{e:#}")),
        };
        match end {
            SessionEnd::Shutdown => {
                jobs.end_all();
                endpoint.close(close::DONE.into(), b"agent shutting down");
                endpoint.wait_idle().await;
                return Ok(());
            }
            SessionEnd::Refused(reason) => {
                return Err(anyhow!("the coordinator refused this host: {reason}"));
            }
            SessionEnd::Lost(reason) => {
                warn!(coordinator = %target, %reason, "link to the coordinator lost; reconnecting");
                fifty_shared::sd_notify::notify_or_warn(&format!("STATUS=link to {target} lost; reconnecting"));
                backoff.link_ended(began.elapsed());
                redirects_in_a_row = 0;
                last_failed = Some(target.clone());
                // Straight to another coordinator (once, after a stable link): the cluster may
                // already have a new leader. A link that keeps dying backs off instead.
                if known.len() > 1 && began.elapsed() >= STABLE_LINK {
                    continue;
                }
            }
            SessionEnd::Busy(wait) => {
                let delay = busy_delay(wait);
                info!(coordinator = %target, ?delay, "the coordinator is admitting other agents; trying it again later");
                redirected = Some(target.clone());
                redirects_in_a_row = 0;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|s| *s) => {
                        jobs.end_all();
                        return Ok(());
                    }
                }
                continue;
            }
            SessionEnd::Unreachable(reason) => {
                warn!(coordinator = %target, %reason, "cannot reach the coordinator; will retry");
                fifty_shared::sd_notify::notify_or_warn(&format!("STATUS=cannot reach {target}; retrying"));
                last_failed = Some(target.clone());
            }
            SessionEnd::Moved(leader) => {
                backoff.link_ended(began.elapsed());
                redirects_in_a_row = 0;
                redirected = Some(leader);
                continue;
            }
            SessionEnd::Redirect(leader) if !leader.is_empty() && redirects_in_a_row < 3 => {
                info!(coordinator = %target, %leader, "not the leader; following to the leader");
                redirects_in_a_row += 1;
                redirected = Some(leader);
                continue;
            }
            SessionEnd::Redirect(_) => {
                info!(coordinator = %target, "no leader known yet; will retry");
            }
        }
        redirects_in_a_row = 0;
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => {
                jobs.end_all();
                return Ok(());
            }
        }
    }
}

fn refused_or(e: &quinn::ConnectionError, otherwise: impl FnOnce(String) -> SessionEnd) -> SessionEnd {
    if let quinn::ConnectionError::ConnectionClosed(c) = e {
        if let Some(alert) = fifty_shared::tls::certificate_alert(u64::from(c.error_code)) {
            return SessionEnd::Refused(format!(
                "it rejected this host's certificate in the TLS handshake (TLS alert {alert}: {}). The certificate \
                 is not one this cluster's CA signed (it is from another cluster, or the cluster's CA changed), \
                 or it expired or is damaged; enroll this host again with `fifty-agent join`",
                String::from_utf8_lossy(&c.reason)
            ));
        }
    }
    if let quinn::ConnectionError::ApplicationClosed(c) = e {
        let code = c.error_code.into_inner() as u32;
        if matches!(code, close::REVOKED | close::UNKNOWN_HOST | close::NO_CERTIFICATE) {
            return SessionEnd::Refused(String::from_utf8_lossy(&c.reason).into_owned());
        }
        if code == close::NOT_LEADER {
            return SessionEnd::Redirect(String::from_utf8_lossy(&c.reason).into_owned());
        }
        if code == close::BUSY {
            let wait = close::retry_after(&String::from_utf8_lossy(&c.reason)).unwrap_or(Duration::from_secs(1));
            return SessionEnd::Busy(wait);
        }
    }
    otherwise(e.to_string())
}

/// What a link carries besides heartbeats: build jobs and deploy orders (the capacity benchmark's
/// simulated agents have neither).
#[derive(Clone, Copy, Default)]
pub struct Work<'a> {
    /// The job runner.
    pub jobs: Option<&'a Jobs>,
    /// The release applier.
    pub deployer: Option<&'a Deployer>,
    /// The A/B sidecar.
    pub sidecar: Option<&'a Sidecar>,
    /// Every coordinator's address: asked who leads when this link's coordinator goes quiet.
    pub coordinators: &'a [String],
    /// Where the coordinators the cluster names are kept (its second stream: see `members`).
    pub members: Option<&'a crate::members::Coordinators>,
}

/// One link: connect, hello, heartbeats until it drops; jobs and deploy orders (when `work` has
/// their handlers) run and report over it. Public so the capacity benchmark drives exactly the
/// agent's code path.
pub async fn session(
    endpoint: &quinn::Endpoint,
    client_config: &quinn::ClientConfig,
    addr: SocketAddr,
    health: &mut (dyn FnMut() -> Health + Send),
    on_ack: Option<AckObserver>,
    work: Work<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let connecting = match endpoint.connect_with(client_config.clone(), addr, COORDINATOR_NAME) {
        Ok(c) => c,
        Err(e) => return SessionEnd::Unreachable(e.to_string()),
    };
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return refused_or(&e, SessionEnd::Unreachable),
        Err(_) => return SessionEnd::Unreachable(format!("no answer from {addr} within {CONNECT_TIMEOUT:?}")),
    };
    let end = control_stream(endpoint, client_config, &conn, health, on_ack, work, shutdown).await;
    if let Some(jobs) = work.jobs {
        jobs.detach();
    }
    if let Some(deployer) = work.deployer {
        deployer.detach();
    }
    if matches!(end, SessionEnd::Shutdown) {
        conn.close(close::DONE.into(), b"agent shutting down");
    }
    end
}

#[allow(clippy::too_many_arguments)]
async fn control_stream(
    endpoint: &quinn::Endpoint,
    client_config: &quinn::ClientConfig,
    conn: &quinn::Connection,
    health: &mut (dyn FnMut() -> Health + Send),
    on_ack: Option<AckObserver>,
    work: Work<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let Work { jobs, deployer, sidecar, coordinators, members } = work;
    let lost = |e: quinn::ConnectionError| refused_or(&e, SessionEnd::Lost);
    // Until the Welcome the link was never up: such a failure (a refusal in the TLS handshake
    // lands here, since TLS 1.3 lets the client finish first) backs off like an unreachable
    // coordinator instead of starting again at once.
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return refused_or(&e, SessionEnd::Unreachable),
    };
    let hello = AgentMsg::Hello { agent_version: fifty_shared::VERSION.to_string() };
    if let Err(e) = write_frame(&mut send, &hello).await {
        return never_up(conn, format!("control stream: {e}")).await;
    }
    let (host, interval, release_key) =
        match tokio::time::timeout(Duration::from_secs(10), read_frame::<CoordinatorMsg, _>(&mut recv)).await {
            Ok(Ok(Some(CoordinatorMsg::Welcome { host, heartbeat_interval, release_key }))) => {
                (host, heartbeat_interval, release_key)
            }
            Ok(Ok(Some(other))) => return SessionEnd::Unreachable(format!("expected Welcome, got {other:?}")),
            Ok(Ok(None)) => return never_up(conn, "the coordinator closed the stream".into()).await,
            Ok(Err(e)) => return never_up(conn, format!("control stream: {e}")).await,
            Err(_) => return SessionEnd::Unreachable("no Welcome within 10 s".into()),
        };
    info!(%host, coordinator = %conn.remote_address(), ?interval, "connected to the coordinator");
    fifty_shared::sd_notify::notify_or_warn(&format!(
        "STATUS=host {host}: connected to the coordinator at {}",
        conn.remote_address()
    ));

    // The second stream: the cluster names its coordinators there, now and when they change.
    // It is opened, and its Hello written, before anything can start a download: the
    // coordinator takes the first stream after the control stream to be this one (QUIC hands
    // streams over in the order of their ids) and every later one to be a download. An older
    // coordinator never accepts it; nothing waits on it.
    let members_stream = match conn.open_bi().await {
        Ok((mut send, recv)) => {
            let hello = AgentMsg::Hello { agent_version: fifty_shared::VERSION.to_string() };
            match write_frame(&mut send, &hello).await {
                Ok(()) => Some((send, recv)),
                Err(_) => None,
            }
        }
        Err(_) => None,
    };
    let listen_members = members_stream.map(|(send, mut recv)| {
        let members = members.cloned();
        tokio::spawn(async move {
            let _send = send;
            while let Ok(Some(msg)) = read_frame::<CoordinatorMsg, _>(&mut recv).await {
                match msg {
                    CoordinatorMsg::Coordinators(addrs) => {
                        if let Some(members) = &members {
                            members.learn(addrs);
                        }
                    }
                    other => warn!(?other, "unexpected message on the coordinators' stream"),
                }
            }
        })
    });
    // Results not yet acknowledged go out first; then live output and new results.
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(jobs) = jobs {
        jobs.attach(tx.clone());
    }
    if let Some(deployer) = deployer {
        deployer.attach(tx.clone(), release_key, Some(conn.clone()));
    }
    drop(tx);
    if let Some(sidecar) = sidecar {
        sidecar.on_link();
    }
    let mut outbox = Some(rx);
    let _listen_members = AbortOnDrop(listen_members);
    // The coordinator's frames are read by their own task: reading a frame is not cancel-safe,
    // so it must not sit in a select! beside the ticker.
    let sent: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
    let mut reader = {
        let sent = sent.clone();
        let jobs = jobs.cloned();
        let deployer = deployer.cloned();
        let sidecar = sidecar.cloned();
        tokio::spawn(async move {
            loop {
                match read_frame::<CoordinatorMsg, _>(&mut recv).await {
                    Ok(Some(CoordinatorMsg::HeartbeatAck { seq })) => {
                        let mut sent = sent.lock().expect("sent lock");
                        while let Some(&(s, at)) = sent.front() {
                            if s > seq {
                                break;
                            }
                            sent.pop_front();
                            if let (true, Some(observe)) = (s == seq, &on_ack) {
                                observe(at.elapsed());
                            }
                        }
                    }
                    Ok(Some(CoordinatorMsg::RunJob(spec))) if jobs.is_some() => {
                        jobs.as_ref().expect("checked").start(spec)
                    }
                    Ok(Some(CoordinatorMsg::CancelJob(job))) if jobs.is_some() => {
                        jobs.as_ref().expect("checked").cancel(job)
                    }
                    Ok(Some(CoordinatorMsg::JobDoneAck(job))) if jobs.is_some() => {
                        jobs.as_ref().expect("checked").acked(job)
                    }
                    Ok(Some(CoordinatorMsg::Deploy(order))) if deployer.is_some() => {
                        deployer.as_ref().expect("checked").deploy(order)
                    }
                    Ok(Some(msg @ CoordinatorMsg::ArtifactData { .. })) if deployer.is_some() => {
                        deployer.as_ref().expect("checked").on_artifact_data(msg)
                    }
                    Ok(Some(CoordinatorMsg::Experiments(defs))) => {
                        if let Some(sidecar) = &sidecar {
                            sidecar.set_definitions(defs);
                        }
                    }
                    Ok(Some(CoordinatorMsg::ExperimentReportAck { boot, seq })) => {
                        if let Some(sidecar) = &sidecar {
                            sidecar.acked(boot, seq);
                        }
                    }
                    Ok(Some(other)) => return Err(CodecError::Decode(format!("unexpected {other:?}"))),
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
    };
    // A coordinator killed outright sends no close; unanswered heartbeats tell us sooner than
    // QUIC's idle timeout would.
    let ack_timeout = (interval * 3).max(Duration::from_secs(3));
    let suspect_after = suspect_after(interval);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    // While a heartbeat is unanswered past `suspect_after`, ask the other coordinators who leads
    // (one at a time, less and less often): after a leader dies, a follower names the new leader
    // the moment it is elected, long before `ack_timeout`. The link stays up meanwhile: a leader
    // that is only slow keeps its agents.
    let mut check = tokio::time::interval(PROBE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>>> = None;
    let mut probes = 0u32;
    let mut next_probe = Instant::now();
    loop {
        tokio::select! {
            _ = check.tick() => {
                let oldest_unacked = sent.lock().expect("sent lock").front().map(|&(_, at)| at.elapsed());
                match oldest_unacked {
                    Some(waited) if waited > suspect_after => {
                        if probe.is_none() && Instant::now() >= next_probe {
                            let others: Vec<&String> = coordinators.iter().collect();
                            if !others.is_empty() {
                                let target = others[probes as usize % others.len()].clone();
                                probes += 1;
                                probe = Some(Box::pin(who_leads(endpoint, client_config, target, conn.remote_address())));
                            }
                        }
                    }
                    _ => {
                        probes = 0;
                        next_probe = Instant::now();
                    }
                }
            }
            Some(found) = async { match probe.as_mut() { Some(p) => Some(p.await), None => std::future::pending().await } } => {
                probe = None;
                // Ask again later, less often each time: a slow leader is not worth a storm of probes.
                next_probe = Instant::now() + PROBE_CHECK.saturating_mul(1 << probes.min(6));
                if let Some(leader) = found {
                    reader.abort();
                    info!(%leader, "another coordinator leads now; following it");
                    return SessionEnd::Moved(leader);
                }
            }
            _ = ticker.tick() => {
                let oldest_unacked = sent.lock().expect("sent lock").front().map(|&(_, at)| at.elapsed());
                if let Some(waited) = oldest_unacked.filter(|w| *w > ack_timeout) {
                    reader.abort();
                    return SessionEnd::Lost(format!("no heartbeat acknowledged for {:.1}s", waited.as_secs_f64()));
                }
                seq += 1;
                let held = jobs.map(Jobs::held).unwrap_or_default();
                let release = deployer.map(Deployer::report).unwrap_or_default();
                let beat = AgentMsg::Heartbeat(Heartbeat { seq, health: health(), jobs: held, release });
                {
                    let mut sent = sent.lock().expect("sent lock");
                    sent.push_back((seq, Instant::now()));
                    if sent.len() > 64 {
                        sent.pop_front();
                    }
                }
                if let Err(e) = write_frame(&mut send, &beat).await {
                    reader.abort();
                    return stream_error(conn, e);
                }
                if let Some(report) = sidecar.and_then(|s| s.report_due(Instant::now())) {
                    if let Err(e) = write_frame(&mut send, &AgentMsg::ExperimentReport(report)).await {
                        reader.abort();
                        return stream_error(conn, e);
                    }
                }
            }
            // A busy sidecar's next report goes out as soon as the last one is acknowledged.
            _ = async { match sidecar { Some(s) => s.more().await, None => std::future::pending().await } } => {
                if let Some(report) = sidecar.and_then(|s| s.report_due(Instant::now())) {
                    if let Err(e) = write_frame(&mut send, &AgentMsg::ExperimentReport(report)).await {
                        reader.abort();
                        return stream_error(conn, e);
                    }
                }
            }
            // A release report that changed goes out now, not at the next beat.
            _ = async { match deployer { Some(d) => d.changed().await, None => std::future::pending().await } } => {
                ticker.reset_immediately();
            }
            Some(msg) = next_message(&mut outbox) => {
                let output = match &msg {
                    AgentMsg::JobOutput { data, .. } => data.len(),
                    _ => 0,
                };
                if let Err(e) = write_frame(&mut send, &msg).await {
                    reader.abort();
                    return stream_error(conn, e);
                }
                if let (Some(jobs), true) = (jobs, output > 0) {
                    jobs.output_sent(output);
                }
            }
            done = &mut reader => {
                return match done {
                    Ok(Err(e)) => stream_error(conn, e),
                    _ => match conn.close_reason() {
                        Some(e) => lost(e),
                        None => SessionEnd::Lost("the coordinator closed the control stream".into()),
                    },
                };
            }
            // Wrapped in its own future so `session` stays `Send` (the guard `wait_for` returns is not).
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                reader.abort();
                return SessionEnd::Shutdown;
            }
        }
    }
}

/// Aborts a task when the session that started it ends, however it ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// How often the link checks for a heartbeat left unanswered.
const PROBE_CHECK: Duration = Duration::from_millis(100);

/// How long a heartbeat may go unanswered before the agent asks the other coordinators who leads:
/// half the heartbeat interval, within 300 ms to 1 s (an answer takes milliseconds).
pub fn suspect_after(interval: Duration) -> Duration {
    (interval / 2).clamp(Duration::from_millis(300), Duration::from_secs(1))
}

/// How long a probe may take in all: a follower holds a probe while the cluster elects a leader.
const PROBE_TIMEOUT: Duration = Duration::from_secs(7);

/// Asks the coordinator at `target` who leads, as an agent link would start: the answer is a
/// redirect (`close::NOT_LEADER` naming the leader; a follower that has stopped hearing from its
/// leader holds it until a leader is elected) or, from the leader itself, a Welcome. Returns the
/// leader's address when it is not `current` (the coordinator this link is on).
async fn who_leads(
    endpoint: &quinn::Endpoint,
    client_config: &quinn::ClientConfig,
    target: String,
    current: SocketAddr,
) -> Option<String> {
    let addr = resolve(&target).await.ok()?;
    if addr == current {
        return None;
    }
    let ask = async {
        let conn = endpoint.connect_with(client_config.clone(), addr, COORDINATOR_NAME).ok()?.await.ok()?;
        let answer = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            let hello = AgentMsg::Hello { agent_version: fifty_shared::VERSION.to_string() };
            write_frame(&mut send, &hello).await.ok()?;
            read_frame::<CoordinatorMsg, _>(&mut recv).await.ok()?
        };
        let leader = match answer.await {
            Some(CoordinatorMsg::Welcome { .. }) => Some(target.clone()),
            _ => match conn.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(c))
                    if c.error_code.into_inner() as u32 == close::NOT_LEADER && !c.reason.is_empty() =>
                {
                    Some(String::from_utf8_lossy(&c.reason).into_owned())
                }
                _ => None,
            },
        };
        conn.close(close::DONE.into(), b"probe done");
        leader
    };
    let leader = tokio::time::timeout(PROBE_TIMEOUT, ask).await.ok().flatten()?;
    match resolve(&leader).await {
        Ok(a) if a != current => Some(leader),
        _ => None,
    }
}

/// The next message for the coordinator from the job runner, if this link has one.
async fn next_message(outbox: &mut Option<mpsc::UnboundedReceiver<AgentMsg>>) -> Option<AgentMsg> {
    match outbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How long a link that failed before its Welcome may take to say why it closed.
const CLOSE_REASON_WAIT: Duration = Duration::from_secs(2);

/// A link that failed before the Welcome: the stream usually broke because the coordinator closed
/// the connection (a refused certificate, a revoked host), and its reason decides what to do, so
/// wait briefly for it to arrive.
async fn never_up(conn: &quinn::Connection, what: String) -> SessionEnd {
    match tokio::time::timeout(CLOSE_REASON_WAIT, conn.closed()).await {
        Ok(reason) => refused_or(&reason, |r| SessionEnd::Unreachable(format!("{what} ({r})"))),
        Err(_) => SessionEnd::Unreachable(what),
    }
}

/// A stream error is usually the connection closing underneath; report the close reason if so.
fn stream_error(conn: &quinn::Connection, e: CodecError) -> SessionEnd {
    match conn.close_reason() {
        Some(reason) => refused_or(&reason, SessionEnd::Lost),
        None => {
            // Give the connection a moment to surface why the stream broke.
            SessionEnd::Lost(format!("control stream: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_with(code: u64) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto((code - 0x100) as u8),
            frame_type: None,
            reason: "invalid peer certificate: UnknownIssuer".into(),
        })
    }

    #[test]
    fn a_certificate_refused_in_the_handshake_is_final_and_other_closes_are_not() {
        // unknown_ca (48): the coordinator does not know the CA that signed this host's certificate.
        match refused_or(&closed_with(0x100 + 48), SessionEnd::Unreachable) {
            SessionEnd::Refused(why) => {
                assert!(why.contains("unknown_ca") && why.contains("fifty-agent join"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(refused_or(&closed_with(0x100 + 44), SessionEnd::Lost), SessionEnd::Refused(_)));
        // handshake_failure (40) is no verdict on the certificate: try again later.
        assert!(matches!(refused_or(&closed_with(0x100 + 40), SessionEnd::Unreachable), SessionEnd::Unreachable(_)));
        assert!(matches!(
            refused_or(&quinn::ConnectionError::TimedOut, SessionEnd::Unreachable),
            SessionEnd::Unreachable(_)
        ));
    }

    #[test]
    fn backoff_keeps_growing_after_short_lived_links_and_starts_again_after_a_stable_one() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
        // A coordinator that welcomes the agent and drops it a second later, again and again:
        // each wait is longer, up to the cap, never back at the minimum.
        let mut caps = Vec::new();
        for _ in 0..8 {
            caps.push(b.cap());
            let wait = b.next_delay();
            assert!(wait >= caps.last().unwrap().mul_f64(0.5) && wait <= *caps.last().unwrap(), "{wait:?}");
            b.link_ended(Duration::from_secs(1));
        }
        assert_eq!(caps[0], Duration::from_millis(250));
        assert!(caps.windows(2).all(|w| w[1] == (w[0] * 2).min(Duration::from_secs(15))), "{caps:?}");
        assert_eq!(b.cap(), Duration::from_secs(15));
        // A link that stayed up for STABLE_LINK: the next wait is short again.
        b.link_ended(STABLE_LINK);
        assert_eq!(b.cap(), Duration::from_millis(250));
    }

    #[test]
    fn jitter_spreads_waits_over_half_the_cap_to_the_cap() {
        let mut seen = Vec::new();
        for _ in 0..2000 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.push(b.next_delay().as_secs_f64());
        }
        assert!(seen.iter().all(|w| (0.5..=1.0).contains(w)));
        // Spread, not clumped: both quarters of the range are used.
        assert!(seen.iter().filter(|w| **w < 0.625).count() > 300);
        assert!(seen.iter().filter(|w| **w > 0.875).count() > 300);
        // A busy coordinator's wait is honoured, plus at most a quarter.
        for _ in 0..1000 {
            let d = busy_delay(Duration::from_millis(400));
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(500), "{d:?}");
        }
    }

    #[test]
    fn a_busy_coordinator_says_when_to_come_back() {
        let e = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: close::BUSY.into(),
            reason: close::busy_reason(Duration::from_millis(1250)).into_bytes().into(),
        });
        match refused_or(&e, SessionEnd::Unreachable) {
            SessionEnd::Busy(wait) => assert_eq!(wait, Duration::from_millis(1250)),
            other => panic!("{other:?}"),
        }
        assert_eq!(close::retry_after("too many agents connecting"), None);
        assert_eq!(suspect_after(Duration::from_secs(1)), Duration::from_millis(500));
        assert_eq!(suspect_after(Duration::from_millis(100)), Duration::from_millis(300));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(2)));
        assert!(waits[7] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
