//! `fifty-sidecar-load`: load for an agent's A/B sidecar on loopback, for `scripts/bench/sidecar`.
//!
//! `rate`: open-loop `GET /v1/assign/{experiment}/{unit}` at `--rate` requests a second over
//! `--connections` keep-alive connections for `--seconds`; each request has a scheduled send time,
//! and when its connection was still busy at that time its latency counts from then (a stalled
//! server cannot hide queueing: no coordinated omission); otherwise from when it was sent, so the
//! driver's own timer lateness is not charged to the sidecar. Prints count, errors, achieved rate,
//! p50, p90, p99, p99.9 and max.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    },
    /// Assign this many distinct units, once each, as fast as possible.
    Fill {
        /// Distinct units.
        #[arg(long, default_value_t = 1_000_000)]
        units: u64,
    },
}

/// One request on a keep-alive connection; returns the status.
async fn exchange(conn: &mut TcpStream, buf: &mut Vec<u8>, request: &[u8]) -> Result<u16> {
    conn.write_all(request).await?;
    buf.clear();
    loop {
        let mut chunk = [0u8; 1024];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("the sidecar closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("head is not UTF-8")?.to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .context("no content-length")?
                .parse()?;
            while buf.len() < end + 4 + length {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    bail!("the sidecar closed the connection");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return head.get(9..12).context("short status line")?.parse().context("status");
        }
    }
}

fn assign_request(experiment: &str, unit: u64) -> Vec<u8> {
    format!("GET /v1/assign/{experiment}/user-{unit} HTTP/1.1\r\nhost: sidecar\r\n\r\n").into_bytes()
}

fn track_request(experiment: &str, unit: u64) -> Vec<u8> {
    let body = format!(r#"{{"experiment":"{experiment}","unit":"user-{unit}","event":"conversion","value":1.0}}"#);
    format!("POST /v1/track HTTP/1.1\r\nhost: sidecar\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.sidecar.ip().is_loopback() {
        bail!("--sidecar must be a loopback address");
    }
    let experiments: Arc<Vec<String>> =
        Arc::new(args.experiments.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    if experiments.is_empty() {
        bail!("--experiments: name at least one");
    }
    let conns = args.connections.max(1);
    match args.mode {
        Mode::Rate { rate, seconds, units } => {
            let start = Instant::now() + Duration::from_millis(200);
            let total = rate * seconds;
            let mut tasks = Vec::new();
            for c in 0..conns as u64 {
                let experiments = experiments.clone();
                tasks.push(tokio::spawn(async move {
                    let mut conn = TcpStream::connect(args.sidecar).await?;
                    conn.set_nodelay(true)?;
                    let mut buf = Vec::with_capacity(512);
                    let mut lat = Vec::with_capacity((total / conns as u64 + 1) as usize);
                    let mut errors = 0u64;
                    let mut i = c;
                    let mut free_since = Instant::now();
                    while i < total {
                        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        // A request counts from its due time if the connection was still busy with
                        // the previous one then (the server's queueing); if the connection was free,
                        // from when it was sent (the timer waking late is this driver's delay).
                        let sent = Instant::now();
                        let from = if free_since > due { due } else { sent };
                        let e = &experiments[(i % experiments.len() as u64) as usize];
                        let answer = exchange(&mut conn, &mut buf, &assign_request(e, i % units)).await;
                        free_since = Instant::now();
                        match answer {
                            Ok(200) => lat.push(free_since - from),
                            Ok(_) => errors += 1,
                            Err(_) => {
                                errors += 1;
                                conn = TcpStream::connect(args.sidecar).await?;
                                conn.set_nodelay(true)?;
                            }
                        }
                        i += conns as u64;
                    }
                    anyhow::Ok((lat, errors))
                }));
            }
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (lat, e) = t.await??;
                all.extend(lat);
                errors += e;
            }
            let wall = start.elapsed().as_secs_f64();
            all.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "requests {} errors {} offered {rate}/s achieved {:.0}/s over {:.1}s on {conns} connections",
                all.len(),
                errors,
                all.len() as f64 / wall,
                wall
            );
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
            let mut tasks = Vec::new();
            for c in 0..conns as u64 {
                let experiments = experiments.clone();
                tasks.push(tokio::spawn(async move {
                    let mut conn = TcpStream::connect(args.sidecar).await?;
                    conn.set_nodelay(true)?;
                    let mut buf = Vec::with_capacity(512);
                    let mut bad = 0u64;
                    let mut u = c;
                    while u < units {
                        let e = &experiments[(u % experiments.len() as u64) as usize];
                        if exchange(&mut conn, &mut buf, &assign_request(e, u)).await? != 200 {
                            bad += 1;
                        }
                        if u % 10 == 0 && exchange(&mut conn, &mut buf, &track_request(e, u)).await? != 200 {
                            bad += 1;
                        }
                        u += conns as u64;
                    }
                    anyhow::Ok(bad)
                }));
            }
            let mut bad = 0;
            for t in tasks {
                bad += t.await??;
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
