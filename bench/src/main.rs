//! `fifty-swarm`: many simulated agents against one coordinator, for the capacity benchmark.
//!
//! Every simulated host goes through the agent's own code: it enrolls with
//! `fifty_agent::join::enroll` (the real enrollment protocol, one durable write on the coordinator
//! each), gets its QUIC client config from `fifty_shared::tls::quic_client_config`,
//! and runs its link with `fifty_agent::link::session` (hello, welcome, heartbeats at the interval
//! the coordinator dictates). Only the health probe is replaced by a constant, since sampling
//! sysinfo thousands of times a second measures this machine, not the coordinator.
//!
//! Phases: enroll N hosts (concurrently, with progress), ramp the links up in batches, let them
//! settle, then record every heartbeat's round trip (heartbeat sent to ack read, as the agent's
//! link observes it) over a window of `--seconds`, and print count, p50, p90, p99, p99.9 and max.
//! The links run on `--threads` threads, each a current-thread tokio runtime like the one
//! `fifty-agent run` uses (the session future is not `Send`, so it cannot go on a work-stealing
//! runtime), each with its own client endpoints (one per `--links-per-endpoint` links).
//! Everything is bounded in time and stops by itself; all sockets are on 127.0.0.1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fifty_agent::identity::Identity;
use fifty_agent::link::{session, AckObserver, Backoff, SessionEnd};
use fifty_shared::ids::{HostName, Labels};
use fifty_shared::token::JoinToken;
use fifty_shared::wire::{Health, ALPN_AGENT};
use tokio::sync::{mpsc, watch};

/// Simulate many Fifty agents heartbeating against one coordinator and measure heartbeat
/// round trips.
#[derive(Debug, Parser)]
#[command(name = "fifty-swarm", version, about)]
struct Args {
    /// The coordinator's QUIC address; must be a loopback address, e.g. 127.0.0.1:7071.
    #[arg(long)]
    coordinator: String,
    /// A join token with enough uses (`fifty token create --role agent --max-uses 0 --ttl 2h`).
    #[arg(long, env = "FIFTY_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// How many agents to simulate.
    #[arg(long, default_value_t = 5000)]
    agents: usize,
    /// Length of the measurement window, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds between the last link coming up and the start of the window.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// Host names are `<prefix>-<n>`.
    #[arg(long, default_value = "swarm")]
    prefix: String,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// Links started per ramp step; the next step starts once these are up (or after 30 s).
    /// Kept small: a burst of QUIC Initial packets (1200 bytes each) larger than the
    /// coordinator's UDP receive buffer is partly dropped, and each drop costs a handshake a
    /// retransmission timeout.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Give up waiting for every link after this many seconds of ramp-up, and measure anyway.
    #[arg(long, default_value_t = 300)]
    ramp_timeout: u64,
    /// Links sharing one client UDP endpoint.
    #[arg(long, default_value_t = 500)]
    links_per_endpoint: usize,
    /// Threads of the swarm, each a current-thread runtime with its share of the links.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Receive buffer (SO_RCVBUF) asked for each client endpoint's UDP socket, bytes; 0 keeps
    /// the system default. The swarm puts hundreds of links on one socket where real agents have
    /// a socket each, so its sockets get a large buffer to keep them from being the bottleneck
    /// (the kernel caps it at net.core.rmem_max).
    #[arg(long, default_value_t = 4 << 20)]
    recv_buffer: usize,
    /// The coordinator's process id: its CPU and memory over the window are reported too.
    #[arg(long)]
    coordinator_pid: Option<u32>,
    /// A shell command printing `GET /v1/status` as JSON (e.g. `fifty status --json`); run at
    /// the end of the window, while every link is still up, to count the hosts the coordinator
    /// sees ready.
    #[arg(long)]
    status_cmd: Option<String>,
    /// Write one CSV line a second (links up, acks, UDP drops, CPU) from the ramp to the end of
    /// the window to this file, to see when and where things go wrong.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Enrollment and the control of the run; the links run on their own threads (see `shard`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run(args))
}

/// What the links report, shared by all of them.
#[derive(Default)]
struct Stats {
    /// Whether round trips are being recorded (the measurement window).
    recording: AtomicBool,
    /// Round trips recorded in the window, microseconds.
    rtts: Mutex<Vec<u32>>,
    /// Links that are up now (have had an ack in their current session).
    up: AtomicUsize,
    /// Acks observed, in total.
    acks: AtomicU64,
    /// Sessions that ended after being established (link lost).
    lost: AtomicU64,
    /// Connection attempts that failed.
    unreachable: AtomicU64,
    /// Hosts the coordinator refused.
    refused: AtomicU64,
    /// Link attempts the coordinator put off (`close::BUSY`: its handshake rate was reached).
    busy: AtomicU64,
    /// The last reason a session ended, for the report.
    last_end: Mutex<Option<String>>,
    /// Local ports of the swarm's client endpoints.
    ports: Mutex<Vec<u16>>,
}

impl Stats {
    fn on_ack(&self, rtt: Duration) {
        self.acks.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            let micros = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
            self.rtts.lock().expect("rtts lock").push(micros);
        }
    }
}

/// A process's CPU ticks (user + system) and memory, from /proc.
#[derive(Clone, Copy, Debug)]
struct ProcSample {
    ticks: u64,
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
}

fn proc_sample(pid: &str) -> Result<ProcSample> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample { ticks: utime + stime, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:"), threads: kib("Threads:") })
}

/// Datagrams the kernel dropped on the UDP sockets bound to `ports` (any address), summed: the
/// last column of /proc/net/udp. A drop means the socket's receive buffer was full, i.e. its
/// reader fell behind.
fn udp_drops(ports: &[u16]) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            ports.contains(&port).then(|| fields.last()?.parse::<u64>().ok()).flatten()
        })
        .sum()
}

/// The machine's UDP `RcvbufErrors` counter (/proc/net/snmp).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let udp: Vec<Vec<&str>> =
        snmp.lines().filter(|l| l.starts_with("Udp:")).map(|l| l.split_whitespace().collect()).collect();
    match udp.as_slice() {
        [names, values, ..] => names
            .iter()
            .position(|n| *n == "RcvbufErrors")
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Writes a CSV line a second to `path` until `stop` turns true: seconds since the ramp began,
/// links up, acks in that second, drops on the coordinator's and the swarm's sockets in that
/// second, and CPU (% of one core) of the coordinator and the swarm in that second.
async fn trace(
    path: PathBuf,
    stats: Arc<Stats>,
    coord_port: u16,
    coord_pid: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(out, "t,up,acks,coord_udp_drops,swarm_udp_drops,coord_cpu,swarm_cpu")?;
    let tck = clock_ticks_per_second();
    let started = Instant::now();
    let sample = |stats: &Stats| {
        let ports = stats.ports.lock().expect("ports lock").clone();
        let coord = coord_pid.as_deref().and_then(|p| proc_sample(p).ok()).map(|s| s.ticks).unwrap_or(0);
        let me = proc_sample("self").map(|s| s.ticks).unwrap_or(0);
        (Instant::now(), stats.acks.load(Ordering::Relaxed), udp_drops(&[coord_port]), udp_drops(&ports), coord, me)
    };
    let mut last = sample(&stats);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let now = sample(&stats);
        let secs = now.0.duration_since(last.0).as_secs_f64();
        let cpu = |a: u64, b: u64| b.saturating_sub(a) as f64 / tck / secs * 100.0;
        writeln!(
            out,
            "{:.0},{},{},{},{},{:.0},{:.0}",
            started.elapsed().as_secs_f64(),
            stats.up.load(Ordering::Relaxed),
            now.1 - last.1,
            now.2.saturating_sub(last.2),
            now.3.saturating_sub(last.3),
            cpu(last.4, now.4),
            cpu(last.5, now.5)
        )?;
        out.flush()?;
        last = now;
    }
    out.flush()?;
    Ok(())
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn enroll_all(args: &Args, token: &JoinToken) -> Result<Vec<Identity>> {
    let labels: Labels = "role=bench,pool=swarm".parse()?;
    let names: Vec<HostName> =
        (1..=args.agents).map(|i| HostName::new(&format!("{}-{i:05}", args.prefix))).collect::<Result<_, _>>()?;
    let slots: Arc<Vec<Mutex<Option<Identity>>>> = Arc::new((0..args.agents).map(|_| Mutex::new(None)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(None::<String>));
    let names = Arc::new(names);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.enroll_concurrency.max(1) {
        let (slots, next, done, failed, names) =
            (slots.clone(), next.clone(), done.clone(), failed.clone(), names.clone());
        let (coordinator, token, labels) = (args.coordinator.clone(), token.clone(), labels.clone());
        workers.spawn(async move {
            loop {
                if failed.lock().expect("failed lock").is_some() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { return };
                let mut attempt = 0;
                let identity = loop {
                    attempt += 1;
                    match fifty_agent::join::enroll(&coordinator, &token, name, &labels).await {
                        Ok(identity) => break identity,
                        Err(e) if attempt < 3 => {
                            eprintln!("enroll {name}: {e:#}; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => {
                            *failed.lock().expect("failed lock") = Some(format!("enroll {name}: {e:#}"));
                            return;
                        }
                    }
                };
                *slots[i].lock().expect("slot lock") = Some(identity);
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut last_print = Instant::now();
    while !workers.is_empty() {
        tokio::select! {
            _ = workers.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if last_print.elapsed() >= Duration::from_secs(5) || workers.is_empty() {
            last_print = Instant::now();
            let n = done.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            println!("  enrolled {n}/{} in {secs:.1}s ({:.0}/s)", args.agents, n as f64 / secs.max(0.001));
        }
    }
    if let Some(e) = failed.lock().expect("failed lock").take() {
        bail!("{e}");
    }
    let slots = Arc::try_unwrap(slots).map_err(|_| anyhow::anyhow!("enrollment workers still hold the slots"))?;
    slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.into_inner().expect("slot lock").with_context(|| format!("host {} was not enrolled", i + 1)))
        .collect()
}

/// A client endpoint on 127.0.0.1 with a receive buffer of `recv_buffer` bytes (0: the system
/// default). Records the size the kernel granted in `RECV_BUFFER_GRANTED`.
fn client_endpoint(recv_buffer: usize) -> Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("bind a UDP socket")?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    if recv_buffer > 0 {
        state.set_recv_buffer_size((&socket).into(), recv_buffer).context("set SO_RCVBUF")?;
    }
    if let Ok(granted) = state.recv_buffer_size((&socket).into()) {
        RECV_BUFFER_GRANTED.store(granted, Ordering::Relaxed);
    }
    let runtime = quinn::default_runtime().context("no async runtime")?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).context("open a QUIC endpoint")
}

/// The receive buffer the kernel gave the swarm's sockets (as `getsockopt(SO_RCVBUF)` reports it).
static RECV_BUFFER_GRANTED: AtomicUsize = AtomicUsize::new(0);

/// One swarm thread: a current-thread runtime (as `fifty-agent run` uses) running the links it
/// is fed, on its own client endpoints bound to 127.0.0.1. Returns once shutdown was asked for
/// and its links stopped (or 20 s later).
fn shard(
    mut feed: mpsc::UnboundedReceiver<quinn::ClientConfig>,
    addr: SocketAddr,
    per_endpoint: usize,
    recv_buffer: usize,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("start a swarm thread's runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut endpoints: Vec<quinn::Endpoint> = Vec::new();
        let mut links = tokio::task::JoinSet::new();
        let mut count = 0usize;
        while let Some(cfg) = feed.recv().await {
            if count % per_endpoint == 0 {
                match client_endpoint(recv_buffer) {
                    Ok(e) => {
                        if let Ok(local) = e.local_addr() {
                            stats.ports.lock().expect("ports lock").push(local.port());
                        }
                        endpoints.push(e);
                    }
                    Err(e) => {
                        eprintln!("open a client UDP socket: {e:#}");
                        break;
                    }
                }
            }
            count += 1;
            let endpoint = endpoints.last().expect("an endpoint").clone();
            links.spawn_local(run_link(endpoint, cfg, addr, stats.clone(), shutdown.clone()));
        }
        let _ = shutdown.wait_for(|s| *s).await;
        let stopped =
            tokio::time::timeout(Duration::from_secs(20), async { while links.join_next().await.is_some() {} }).await;
        if stopped.is_err() {
            eprintln!("some links did not stop within 20 s; aborting them");
            links.abort_all();
        }
        for e in &endpoints {
            e.close(0u32.into(), b"swarm done");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            for e in &endpoints {
                e.wait_idle().await;
            }
        })
        .await;
    });
}

/// One simulated agent: runs the agent's link and reconnects as `fifty_agent::link::run` does
/// with one coordinator (the agent's `Backoff`, 250 ms to 15 s with jitter, reset only after a
/// stable link; a redirect to the leader is followed at once; a busy coordinator is tried again
/// when it asked), until shutdown.
async fn run_link(
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    mut addr: SocketAddr,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let health_now = Health {
        cpu_percent: 1.0,
        load: [0.1, 0.1, 0.1],
        mem_used_bytes: 1 << 30,
        mem_total_bytes: 8 << 30,
        disk_free_bytes: 50 << 30,
        disk_total_bytes: 100 << 30,
        uptime: Duration::ZERO,
    };
    let started = Instant::now();
    let mut health = move || Health { uptime: started.elapsed(), ..health_now.clone() };
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
    loop {
        let up = Arc::new(AtomicBool::new(false));
        let observer: AckObserver = {
            let (stats, up) = (stats.clone(), up.clone());
            Arc::new(move |rtt| {
                if !up.swap(true, Ordering::Relaxed) {
                    stats.up.fetch_add(1, Ordering::Relaxed);
                }
                stats.on_ack(rtt);
            })
        };
        let began = Instant::now();
        let end =
            session(&endpoint, &client_config, addr, &mut health, Some(observer), Default::default(), &mut shutdown)
                .await;
        if up.swap(true, Ordering::Relaxed) {
            stats.up.fetch_sub(1, Ordering::Relaxed);
        }
        let reason = match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Refused(r) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                *stats.last_end.lock().expect("last_end lock") = Some(format!("refused: {r}"));
                return;
            }
            SessionEnd::Lost(r) => {
                stats.lost.fetch_add(1, Ordering::Relaxed);
                backoff.link_ended(began.elapsed());
                format!("lost: {r}")
            }
            SessionEnd::Busy(wait) => {
                stats.busy.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(fifty_agent::link::busy_delay(wait)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                continue;
            }
            SessionEnd::Unreachable(r) => {
                stats.unreachable.fetch_add(1, Ordering::Relaxed);
                format!("unreachable: {r}")
            }
            // Not the leader: follow to the leader at once, as the agent does (a single
            // coordinator is always the leader, so this is for runs against a cluster).
            SessionEnd::Redirect(leader) | SessionEnd::Moved(leader) => match fifty_agent::join::resolve(&leader).await
            {
                Ok(leader) if !leader.ip().is_loopback() => {
                    *stats.last_end.lock().expect("last_end lock") =
                        Some(format!("redirected to {leader}, which is not a loopback address; stopping this link"));
                    return;
                }
                Ok(leader) => {
                    addr = leader;
                    continue;
                }
                Err(_) => format!("redirected, no leader known yet ({leader:?})"),
            },
        };
        *stats.last_end.lock().expect("last_end lock") = Some(reason);
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let token = JoinToken::parse(&args.token).context("--token")?;
    let addr = fifty_agent::join::resolve(&args.coordinator).await?;
    if !addr.ip().is_loopback() {
        bail!("--coordinator must be a loopback address (this benchmark stays on 127.0.0.1), got {addr}");
    }
    let n = args.agents;
    println!("fifty-swarm: {n} agents against {addr}, window {} s, {} swarm threads", args.seconds, args.threads);

    // 1. Enroll.
    println!("enrolling {n} hosts ({} at a time) through the real enrollment protocol", args.enroll_concurrency);
    let enroll_started = Instant::now();
    let identities = enroll_all(&args, &token).await?;
    let enroll_secs = enroll_started.elapsed().as_secs_f64();
    let configs: Vec<quinn::ClientConfig> = identities
        .iter()
        .map(|id| fifty_shared::tls::quic_client_config(&id.ca_pem, &id.cert, ALPN_AGENT))
        .collect::<Result<_>>()?;
    drop(identities);

    // 2. Ramp the links up, spread over the shards.
    let stats = Arc::new(Stats::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let threads = args.threads.max(1);
    let mut feeds = Vec::new();
    let mut shards = Vec::new();
    for i in 0..threads {
        let (tx, rx) = mpsc::unbounded_channel();
        feeds.push(tx);
        let (stats, shutdown, per_endpoint) = (stats.clone(), shutdown_rx.clone(), args.links_per_endpoint.max(1));
        let recv_buffer = args.recv_buffer;
        let handle = std::thread::Builder::new()
            .name(format!("swarm-{i}"))
            .spawn(move || shard(rx, addr, per_endpoint, recv_buffer, stats, shutdown))
            .context("start a swarm thread")?;
        shards.push(handle);
    }
    let (trace_stop, trace_stop_rx) = watch::channel(false);
    let tracer = args.trace.clone().map(|path| {
        let pid = args.coordinator_pid.map(|p| p.to_string());
        tokio::spawn(trace(path, stats.clone(), addr.port(), pid, trace_stop_rx))
    });
    let coord_drops_before_ramp = udp_drops(&[addr.port()]);
    let rcvbuf_errors_before_ramp = udp_rcvbuf_errors();
    let ramp_started = Instant::now();
    println!(
        "ramping up {n} links, {} per step, on {threads} threads (one client endpoint per {} links)",
        args.batch, args.links_per_endpoint
    );
    let mut configs = configs.into_iter().enumerate();
    let mut started = 0;
    let ramp_deadline = ramp_started + Duration::from_secs(args.ramp_timeout);
    let mut last_print = Instant::now();
    let up = || stats.up.load(Ordering::Relaxed);
    while started < n {
        // Past the deadline, start everything that is left at once.
        let step = if Instant::now() >= ramp_deadline { n } else { args.batch.max(1) };
        for (i, cfg) in configs.by_ref().take(step) {
            feeds[i % threads].send(cfg).map_err(|_| anyhow::anyhow!("a swarm thread stopped early"))?;
            started += 1;
        }
        let step_deadline = (Instant::now() + Duration::from_secs(30)).min(ramp_deadline);
        while up() < started && Instant::now() < step_deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if last_print.elapsed() >= Duration::from_secs(5) || started == n {
            last_print = Instant::now();
            println!("  {} links up of {started} started ({:.1}s)", up(), ramp_started.elapsed().as_secs_f64());
        }
    }
    while up() < n && Instant::now() < ramp_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp_complete = up() == n;
    if !ramp_complete {
        println!("  ramp-up timed out after {} s with {}/{n} links up; measuring anyway", args.ramp_timeout, up());
    }
    drop(feeds);
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

    // 3. Measure.
    let tck = clock_ticks_per_second();
    let coord_pid = args.coordinator_pid.map(|p| p.to_string());
    let coord_before = coord_pid.as_deref().map(proc_sample).transpose()?;
    let self_before = proc_sample("self")?;
    let lost_before = stats.lost.load(Ordering::Relaxed) + stats.unreachable.load(Ordering::Relaxed);
    let acks_before = stats.acks.load(Ordering::Relaxed);
    let swarm_ports = stats.ports.lock().expect("ports lock").clone();
    let drops_at_start = (udp_drops(&[addr.port()]), udp_drops(&swarm_ports), udp_rcvbuf_errors());
    stats.rtts.lock().expect("rtts lock").clear();
    stats.recording.store(true, Ordering::Relaxed);
    let window_started = Instant::now();
    println!("measuring for {} s with {} links up", args.seconds, stats.up.load(Ordering::Relaxed));
    let mut min_up = usize::MAX;
    let mut rss_peak = 0u64;
    let window = Duration::from_secs(args.seconds);
    let mut last_print = Instant::now();
    while window_started.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1).min(window.saturating_sub(window_started.elapsed()))).await;
        min_up = min_up.min(stats.up.load(Ordering::Relaxed));
        if let Some(pid) = &coord_pid {
            rss_peak = rss_peak.max(proc_sample(pid).map(|s| s.rss_kib).unwrap_or(0));
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            println!(
                "  t={:>3.0}s up={} beats recorded={}",
                window_started.elapsed().as_secs_f64(),
                stats.up.load(Ordering::Relaxed),
                stats.rtts.lock().expect("rtts lock").len()
            );
        }
    }
    stats.recording.store(false, Ordering::Relaxed);
    let _ = trace_stop.send(true);
    if let Some(tracer) = tracer {
        if let Err(e) = tracer.await? {
            eprintln!("trace: {e:#}");
        }
    }
    let window_secs = window_started.elapsed().as_secs_f64();
    let up_at_end = stats.up.load(Ordering::Relaxed);
    let coord_after = coord_pid.as_deref().map(proc_sample).transpose()?;
    let self_after = proc_sample("self")?;
    let drops_in_window = stats.lost.load(Ordering::Relaxed) + stats.unreachable.load(Ordering::Relaxed) - lost_before;
    let acks_in_window = stats.acks.load(Ordering::Relaxed) - acks_before;
    let drops_at_end = (udp_drops(&[addr.port()]), udp_drops(&swarm_ports), udp_rcvbuf_errors());
    let coord_drops =
        (drops_at_start.0.saturating_sub(coord_drops_before_ramp), drops_at_end.0.saturating_sub(drops_at_start.0));
    let swarm_drops = (drops_at_start.1, drops_at_end.1.saturating_sub(drops_at_start.1));
    let system_drops =
        (drops_at_start.2.saturating_sub(rcvbuf_errors_before_ramp), drops_at_end.2.saturating_sub(drops_at_start.2));
    let mut rtts = std::mem::take(&mut *stats.rtts.lock().expect("rtts lock"));
    rtts.sort_unstable();

    // The coordinator's own view, while every link is still up.
    let mut status = serde_json::Value::Null;
    if let Some(cmd) = &args.status_cmd {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new("sh").arg("-c").arg(cmd).kill_on_drop(true).output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() => {
                status = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
            }
            Ok(Ok(o)) => eprintln!("status command failed: {}", String::from_utf8_lossy(&o.stderr)),
            Ok(Err(e)) => eprintln!("status command: {e}"),
            Err(_) => eprintln!("status command did not answer within 30 s"),
        }
    }

    // 4. Stop; every shard bounds its own wind-down.
    let _ = shutdown_tx.send(true);
    for handle in shards {
        tokio::task::spawn_blocking(move || handle.join())
            .await?
            .map_err(|_| anyhow::anyhow!("a swarm thread panicked"))?;
    }

    // 5. Report.
    let cpu = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) => b.ticks.saturating_sub(a.ticks) as f64 / tck / window_secs * 100.0,
        _ => f64::NAN,
    };
    let coord_cpu = cpu(coord_before, coord_after);
    let self_cpu = cpu(Some(self_before), Some(self_after));
    let (p50, p90, p99, p999) =
        (percentile(&rtts, 50.0), percentile(&rtts, 90.0), percentile(&rtts, 99.0), percentile(&rtts, 99.9));
    let max = rtts.last().map(|m| *m as f64 / 1000.0).unwrap_or(f64::NAN);
    let ready = status.pointer("/hosts/ready").and_then(|v| v.as_u64());
    let coord_links = status.pointer("/agent_links").and_then(|v| v.as_u64());
    let last_end = stats.last_end.lock().expect("last_end lock").clone();
    println!("results for {n} agents:");
    println!("  enrollment        {enroll_secs:.1} s ({:.0}/s)", n as f64 / enroll_secs);
    println!("  ramp-up           {ramp_secs:.1} s{}", if ramp_complete { "" } else { " (timed out)" });
    println!("  links up          {up_at_end}/{n} at end of window (min {min_up} during it)");
    println!("  coordinator sees  {} ready hosts, {} links", fmt_opt(ready), fmt_opt(coord_links));
    println!(
        "  heartbeats        {} acked in {window_secs:.1} s ({:.0}/s; expected ~{:.0}/s)",
        rtts.len(),
        acks_in_window as f64 / window_secs,
        up_at_end as f64
    );
    println!(
        "  heartbeat RTT     p50 {p50:.2} ms  p90 {p90:.2} ms  p99 {p99:.2} ms  p99.9 {p999:.2} ms  max {max:.2} ms"
    );
    println!(
        "  link drops        {drops_in_window} in window; refused {}; put off (busy) {}",
        stats.refused.load(Ordering::Relaxed),
        stats.busy.load(Ordering::Relaxed)
    );
    if let Some(r) = &last_end {
        println!("  last session end  {r}");
    }
    println!(
        "  UDP drops         coordinator socket {} in ramp, {} in window; swarm sockets {} / {}; machine RcvbufErrors {} / {}",
        coord_drops.0, coord_drops.1, swarm_drops.0, swarm_drops.1, system_drops.0, system_drops.1
    );
    if let (Some(b), Some(a)) = (coord_before, coord_after) {
        println!(
            "  coordinator       CPU {coord_cpu:.1}% of one core, RSS {:.1} MiB (peak in window {:.1}, HWM {:.1}), {} threads",
            a.rss_kib as f64 / 1024.0,
            rss_peak as f64 / 1024.0,
            a.hwm_kib as f64 / 1024.0,
            a.threads.max(b.threads)
        );
    }
    println!(
        "  swarm sockets     {} links per UDP socket, SO_RCVBUF {} KiB",
        args.links_per_endpoint,
        RECV_BUFFER_GRANTED.load(Ordering::Relaxed) / 1024
    );
    println!("  swarm             CPU {self_cpu:.1}% of one core, RSS {:.1} MiB", self_after.rss_kib as f64 / 1024.0);
    if let Some(path) = &args.json_out {
        let json = serde_json::json!({
            "agents": n,
            "window_secs": window_secs,
            "enroll_secs": enroll_secs,
            "ramp_secs": ramp_secs,
            "ramp_complete": ramp_complete,
            "links_up": up_at_end,
            "links_up_min": min_up,
            "ready_hosts": ready,
            "coordinator_links": coord_links,
            "heartbeats": rtts.len(),
            "heartbeats_per_sec": acks_in_window as f64 / window_secs,
            "rtt_ms": { "p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": max },
            "link_drops": drops_in_window,
            "udp_drops": {
                "coordinator": { "ramp": coord_drops.0, "window": coord_drops.1 },
                "swarm": { "ramp": swarm_drops.0, "window": swarm_drops.1 },
                "machine_rcvbuf_errors": { "ramp": system_drops.0, "window": system_drops.1 },
            },
            "refused": stats.refused.load(Ordering::Relaxed),
            "busy": stats.busy.load(Ordering::Relaxed),
            "coordinator": coord_after.map(|a| serde_json::json!({
                "cpu_percent": coord_cpu,
                "rss_mib": a.rss_kib as f64 / 1024.0,
                "rss_peak_mib": rss_peak as f64 / 1024.0,
                "hwm_mib": a.hwm_kib as f64 / 1024.0,
            })),
            "swarm": {
                "cpu_percent": self_cpu,
                "rss_mib": self_after.rss_kib as f64 / 1024.0,
                "links_per_socket": args.links_per_endpoint,
                "socket_rcvbuf_kib": RECV_BUFFER_GRANTED.load(Ordering::Relaxed) / 1024,
            },
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}
