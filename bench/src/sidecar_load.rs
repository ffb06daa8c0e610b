//! `fifty-sidecar-load`: load for an agent's A/B sidecar on loopback, for `scripts/bench/sidecar`.
//!
//! `rate`: open-loop `GET /v1/assign/{experiment}/{unit}` at `--rate` requests a second for
//! `--seconds`, from one thread over a pool of `--connections` keep-alive connections. Requests
//! fall due as a seeded Poisson process (`--arrivals poisson`, independent users) or evenly
//! (`even`); a timerfd wakes the driver at each due time with nanosecond resolution (a 1 ms timer
//! wheel would release requests in bursts and charge its own lateness), and the request goes out
//! on the longest-idle connection, as a client's pool would send it. A request counts from its
//! due time when every connection was busy then (it waited for the server: no coordinated
//! omission), otherwise from when it was written. Prints count, errors, achieved rate, p50, p90,
//! p99, p99.9 and max.
//!
//! `fill`: as fast as `--connections` connections go, `--units` distinct units spread over the
//! experiments given, each assigned once and a tenth of them also tracked (a conversion).
//!
//! Everything dials 127.0.0.1 only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

#[derive(Debug, Parser)]
#[command(name = "fifty-sidecar-load", version, about)]
struct Args {
    /// The sidecar, a loopback address.
    #[arg(long)]
    sidecar: SocketAddr,
    /// Experiments to spread requests over (comma-separated).
    #[arg(long)]
    experiments: String,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Open-loop load at a fixed rate; latency percentiles.
    Rate {
        /// Requests a second, all connections together.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// How long.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Distinct units cycled through.
        #[arg(long, default_value_t = 100_000)]
        units: u64,
        /// When requests are due: `poisson` (independent users: random gaps, bursts included)
        /// or `even` (one every 1/rate).
        #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
        arrivals: Arrivals,
        /// Seed of the Poisson schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write each answered request's due time and latency (nanoseconds from the start, one
        /// `due latency` pair a line) to this file, to see when the slow ones happened.
        #[arg(long)]
        trace: Option<std::path::PathBuf>,
        /// The scheduler slice the driver's thread asks for, in microseconds (0: the kernel's
        /// default); see `fifty_agent::sidecar::request_short_slice`.
        #[arg(long, default_value_t = 0)]
        slice_us: u64,
    },
    /// Assign this many distinct units, once each, as fast as possible.
    Fill {
        /// Distinct units.
        #[arg(long, default_value_t = 1_000_000)]
        units: u64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Arrivals {
    Poisson,
    Even,
}

/// When each of `total` requests is due, from the start: evenly spaced, or a Poisson process of
/// `rate` (exponential gaps from a seeded splitmix64).
fn schedule(arrivals: Arrivals, rate: u64, total: u64, seed: u64) -> Vec<Duration> {
    match arrivals {
        Arrivals::Even => (0..total).map(|i| Duration::from_nanos(i * 1_000_000_000 / rate)).collect(),
        Arrivals::Poisson => {
            let mut state = seed;
            let mut at = 0.0f64;
            (0..total)
                .map(|_| {
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    // Uniform in (0, 1]; its -ln is an exponential gap of mean 1.
                    let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                    let due = Duration::from_secs_f64(at);
                    at += -u.ln() / rate as f64;
                    due
                })
                .collect()
        }
    }
}

/// A whole answer at the front of `buf`: its status and length in bytes; None if more must come.
fn parse_answer(buf: &[u8]) -> Result<Option<(u16, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("head is not UTF-8")?;
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .context("no content-length")?
        .parse()?;
    let status = head.get(9..12).context("short status line")?.parse().context("status")?;
    Ok((buf.len() >= end + 4 + length).then_some((status, end + 4 + length)))
}

/// One request on a blocking keep-alive connection; returns the status.
fn exchange(conn: &mut TcpStream, buf: &mut Vec<u8>, request: &[u8]) -> Result<u16> {
    conn.write_all(request)?;
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("the sidecar closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((status, _)) = parse_answer(buf)? {
            return Ok(status);
        }
    }
}

fn connect(sidecar: SocketAddr) -> Result<TcpStream> {
    let conn = TcpStream::connect(sidecar).with_context(|| format!("connecting to the sidecar at {sidecar}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(conn)
}

fn assign_request(experiment: &str, unit: u64) -> Vec<u8> {
    format!("GET /v1/assign/{experiment}/user-{unit} HTTP/1.1\r\nhost: sidecar\r\n\r\n").into_bytes()
}

fn track_request(experiment: &str, unit: u64) -> Vec<u8> {
    let body = format!(r#"{{"experiment":"{experiment}","unit":"user-{unit}","event":"conversion","value":1.0}}"#);
    format!("POST /v1/track HTTP/1.1\r\nhost: sidecar\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// The Linux calls of [`open_loop`], each checked.
mod sys {
    use std::io::{Error, Result};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    fn check(r: i32) -> Result<i32> {
        if r < 0 {
            Err(Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    pub fn epoll() -> Result<OwnedFd> {
        // SAFETY: epoll_create1 takes flags only; a non-negative result is a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) })
    }

    /// Watches `fd` for reading, reported with `token`.
    pub fn watch(epoll: &OwnedFd, fd: i32, token: u64) -> Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: both descriptors are open and `event` outlives the call.
        check(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) }).map(drop)
    }

    /// Waits up to `timeout_ms` for events; returns their tokens in `tokens`.
    pub fn wait(epoll: &OwnedFd, tokens: &mut Vec<u64>, timeout_ms: i32) -> Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: `events` has room for the 64 entries the kernel may write.
        let n = loop {
            match check(unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 64, timeout_ms) }) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        tokens.clear();
        tokens.extend(events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }

    pub fn timer() -> Result<OwnedFd> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        // SAFETY: plain flags; a non-negative result is a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(check(libc::timerfd_create(libc::CLOCK_MONOTONIC, flags))?) })
    }

    /// Fires `timer` once, `after` from now (nanosecond resolution).
    pub fn arm(timer: &OwnedFd, after: Duration) -> Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: after.as_secs() as _, tv_nsec: after.subsec_nanos() as _ },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        check(unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }).map(drop)
    }

    /// Reads the expirations of `timer` so it stops being readable.
    pub fn clear(timer: &OwnedFd) {
        let mut count = 0u64;
        // SAFETY: reads at most 8 bytes into `count`; a non-blocking timer with nothing pending
        // fails with EAGAIN, which is fine.
        unsafe { libc::read(timer.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

/// Drives the open loop on one thread: request `i` falls due at `start + due_at[i]` (a timerfd,
/// nanosecond resolution: no millisecond timer wheel) and goes out on the pool's longest-idle
/// connection, as a client's connection pool would send it; epoll reports the answers.
///
/// A request's latency counts from its due time when every connection was busy then (it had to
/// wait for one: the server's slowness, no coordinated omission); otherwise from when it was
/// written (this driver waking late is not the server's delay). Returns, for each 200 answer,
/// when its latency started counting (from `start`) and the latency; and the number of other
/// answers.
fn open_loop(
    pool: Vec<TcpStream>,
    due_at: &[Duration],
    start: Instant,
    request: impl Fn(u64) -> Vec<u8>,
) -> Result<(Vec<(Duration, Duration)>, u64)> {
    const TIMER: u64 = u64::MAX;
    struct Conn {
        stream: TcpStream,
        buf: Vec<u8>,
        /// In flight: counted from then. Idle: None.
        from: Option<Instant>,
        free_since: Instant,
    }
    let epoll = sys::epoll()?;
    let timer = sys::timer()?;
    sys::watch(&epoll, timer.as_raw_fd(), TIMER)?;
    let mut conns = Vec::new();
    for (token, stream) in pool.into_iter().enumerate() {
        stream.set_nonblocking(true)?;
        sys::watch(&epoll, stream.as_raw_fd(), token as u64)?;
        conns.push(Conn { stream, buf: Vec::with_capacity(512), from: None, free_since: start });
    }
    let total = due_at.len();
    let (mut next, mut answered, mut errors) = (0usize, 0usize, 0u64);
    let mut latencies = Vec::with_capacity(total);
    let mut waiting: VecDeque<Instant> = VecDeque::new();
    let mut tokens = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut last_progress = Instant::now();
    while answered + (errors as usize) < total {
        // Everything due by now waits in order for the longest-idle connection.
        let now = Instant::now();
        while next < total && start + due_at[next] <= now {
            waiting.push_back(start + due_at[next]);
            next += 1;
        }
        while let Some(&due) = waiting.front() {
            let Some(c) = conns.iter_mut().filter(|c| c.from.is_none()).min_by_key(|c| c.free_since) else {
                break;
            };
            waiting.pop_front();
            let i = (next - waiting.len() - 1) as u64;
            let sent = Instant::now();
            c.from = Some(if c.free_since > due { due } else { sent });
            match c.stream.write(&request(i)) {
                Ok(_) => {}
                Err(e) => bail!("writing to the sidecar: {e}"),
            }
        }
        if next < total {
            sys::arm(&timer, (start + due_at[next]).saturating_duration_since(Instant::now()))?;
        }
        sys::wait(&epoll, &mut tokens, 1000)?;
        if tokens.is_empty() && last_progress.elapsed() > Duration::from_secs(10) {
            bail!("no answer from the sidecar for 10 s ({answered} of {total} answered)");
        }
        for &token in &tokens {
            if token == TIMER {
                sys::clear(&timer);
                continue;
            }
            let c = &mut conns[token as usize];
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => bail!("the sidecar closed a connection"),
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => bail!("reading from the sidecar: {e}"),
                }
            }
            if let Some((status, length)) = parse_answer(&c.buf)? {
                let done = Instant::now();
                c.buf.drain(..length);
                let from = c.from.take().context("an answer nobody asked for")?;
                c.free_since = done;
                last_progress = done;
                if status == 200 {
                    latencies.push((from.saturating_duration_since(start), done - from));
                    answered += 1;
                } else {
                    errors += 1;
                }
            }
        }
    }
    Ok((latencies, errors))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.sidecar.ip().is_loopback() {
        bail!("--sidecar must be a loopback address");
    }
    let experiments: Arc<Vec<String>> =
        Arc::new(args.experiments.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    if experiments.is_empty() {
        bail!("--experiments: name at least one");
    }
    let conns = args.connections.max(1) as u64;
    let sidecar = args.sidecar;
    match args.mode {
        Mode::Rate { rate, seconds, units, arrivals, seed, trace, slice_us } => {
            if slice_us > 0 {
                fifty_agent::sidecar::request_short_slice(Duration::from_micros(slice_us))
                    .context("asking for a short scheduler slice (--slice-us)")?;
            }
            let total = rate * seconds;
            let due_at = schedule(arrivals, rate, total, seed);
            let mut pool = Vec::new();
            for _ in 0..conns {
                pool.push(connect(sidecar)?);
            }
            let request = |i: u64| assign_request(&experiments[(i % experiments.len() as u64) as usize], i % units);
            let start = Instant::now() + Duration::from_millis(200);
            let (answered, errors) = open_loop(pool, &due_at, start, request)?;
            let wall = start.elapsed().as_secs_f64();
            if let Some(path) = trace {
                let lines: String = answered
                    .iter()
                    .map(|(at, latency)| format!("{} {}\n", at.as_nanos(), latency.as_nanos()))
                    .collect();
                std::fs::write(&path, lines).with_context(|| format!("writing the trace {}", path.display()))?;
            }
            let mut all: Vec<Duration> = answered.into_iter().map(|(_, latency)| latency).collect();
            all.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "requests {} errors {} offered {rate}/s ({arrivals:?} arrivals) achieved {:.0}/s over {:.1}s on {conns} connections",
                all.len(),
                errors,
                all.len() as f64 / wall,
                wall
            );
            // The driver shares the machine with what it measures: its own CPU is part of the picture.
            // SAFETY: getrusage writes one rusage struct into `usage`.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                println!(
                    "driver CPU: {:.0}% of one core",
                    (secs(usage.ru_utime) + secs(usage.ru_stime)) / wall * 100.0
                );
            }
            println!(
                "latency ms: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
                ms(percentile(&all, 0.50)),
                ms(percentile(&all, 0.90)),
                ms(percentile(&all, 0.99)),
                ms(percentile(&all, 0.999)),
                ms(percentile(&all, 1.0))
            );
        }
        Mode::Fill { units } => {
            let started = Instant::now();
            let threads: Vec<_> = (0..conns)
                .map(|c| {
                    let experiments = experiments.clone();
                    std::thread::spawn(move || -> Result<u64> {
                        let mut conn = connect(sidecar)?;
                        let mut buf = Vec::with_capacity(512);
                        let mut bad = 0u64;
                        let mut u = c;
                        while u < units {
                            let e = &experiments[(u % experiments.len() as u64) as usize];
                            if exchange(&mut conn, &mut buf, &assign_request(e, u))? != 200 {
                                bad += 1;
                            }
                            if u % 10 == 0 && exchange(&mut conn, &mut buf, &track_request(e, u))? != 200 {
                                bad += 1;
                            }
                            u += conns;
                        }
                        Ok(bad)
                    })
                })
                .collect();
            let mut bad = 0;
            for t in threads {
                bad += t.join().map_err(|_| anyhow::anyhow!("a fill thread panicked"))??;
            }
            let wall = started.elapsed().as_secs_f64();
            println!(
                "filled {units} distinct units in {wall:.1}s ({:.0}/s), {bad} non-200 answers",
                units as f64 / wall
            );
        }
    }
    Ok(())
}
