//! Replicated-coordinator benchmarks on a real 3-coordinator loopback cluster (release binaries):
//!
//! 1. write commit latency (p50/p99/max) and throughput: token creations through the HTTPS API,
//!    one client, then 32 concurrent clients, each on its own kept-alive connection to the leader;
//!    plus one client going through a follower (forwarded);
//! 2. leader failover: kill -9 the leader, then time until a write is committed again (clients
//!    try every coordinator), over TRIALS trials; the killed node is restarted and caught up
//!    before the next trial.
//!
//! Run with `scripts/bench/raft` (builds the release binaries first). `FIFTY_BENCH_WRITES`,
//! `FIFTY_BENCH_TRIALS` change the sizes; `FIFTY_BENCH_KEEP=1` keeps the data dirs and logs.

use std::time::{Duration, Instant};

use fifty::cli::Client;
use fifty::local::{bin_dir, wait_for, LocalCluster, Options, Writer};
use fifty::views::{CreateToken, TokenCreated};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn token(n: usize) -> CreateToken {
    CreateToken { role: "read".into(), ttl: None, max_uses: None, description: format!("bench-{n}") }
}

struct Stats {
    samples: Vec<Duration>,
    wall: Duration,
}

impl Stats {
    fn line(&mut self, what: &str) -> String {
        self.samples.sort();
        let pct = |p: f64| {
            let i = ((self.samples.len() as f64 * p).ceil() as usize).clamp(1, self.samples.len()) - 1;
            self.samples[i].as_secs_f64() * 1000.0
        };
        format!(
            "{what}: {} writes in {:.2}s = {:.0} writes/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.samples.len(),
            self.wall.as_secs_f64(),
            self.samples.len() as f64 / self.wall.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            self.samples.last().unwrap().as_secs_f64() * 1000.0
        )
    }
}

async fn writes(clients: Vec<Client>, per_client: usize, offset: usize) -> Stats {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                let _: TokenCreated =
                    client.post("/v1/tokens", &token(offset + c * per_client + i)).await.expect("write");
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    Stats { samples, wall: start.elapsed() }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let writes_n = env_or("FIFTY_BENCH_WRITES", 2000);
    let trials = env_or("FIFTY_BENCH_TRIALS", 20);
    let dir = std::env::temp_dir().join(format!("fifty-bench-raft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = Options { coordinators: 3, ..Options::default() };
    let mut cluster = LocalCluster::start(&dir, &bin_dir()?, options).await?;
    let leader = cluster.wait_leader(Duration::from_secs(60)).await?;
    println!("3 coordinators on loopback; leader {}", cluster.coordinators[leader].name);

    // Warm up connections and the log.
    writes(vec![cluster.client_for(leader)], 50, 10_000_000).await;

    let mut one = writes(vec![cluster.client_for(leader)], writes_n, 0).await;
    println!("{}", one.line("1 client  → leader"));
    let clients: Vec<Client> = (0..32).map(|_| cluster.client_for(leader)).collect();
    let mut many = writes(clients, writes_n.div_ceil(32).max(50), 1_000_000).await;
    println!("{}", many.line("32 clients → leader"));
    let follower = (leader + 1) % 3;
    let mut fwd = writes(vec![cluster.client_for(follower)], (writes_n / 4).max(100), 2_000_000).await;
    println!("{}", fwd.line("1 client  → follower (forwarded)"));

    // Writes stream through every coordinator during the whole kill loop; once it is over, every
    // write the API acknowledged must be on every coordinator exactly once.
    let writer = Writer::start((0..3).map(|i| cluster.client_for(i)).collect(), Duration::from_secs(3600));
    let mut failovers = Vec::new();
    for trial in 0..trials {
        let leader = cluster.wait_leader(Duration::from_secs(60)).await?;
        let survivors: Vec<Client> = (0..3).filter(|i| *i != leader).map(|i| cluster.client_for(i)).collect();
        let killed_at = Instant::now();
        cluster.kill_coordinator(leader).await?;
        // Each survivor's client tries in turn until a write commits.
        let mut n = 0usize;
        let elapsed = loop {
            let client = &survivors[n % survivors.len()];
            let attempt = tokio::time::timeout(
                Duration::from_secs(2),
                client.post::<TokenCreated>("/v1/tokens", &token(3_000_000 + trial * 1000 + n)),
            )
            .await;
            if let Ok(Ok(_)) = attempt {
                break killed_at.elapsed();
            }
            n += 1;
            if killed_at.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("no write committed within 60 s of killing the leader");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!("failover trial {:>2}: {:.0} ms", trial + 1, elapsed.as_secs_f64() * 1000.0);
        failovers.push(elapsed);
        cluster.start_coordinator(leader).await?;
        wait_for("the restarted coordinator to catch up", Duration::from_secs(60), || async {
            let views = cluster.views().await;
            let commit = views.iter().map(|(_, v)| v.commit_index).max().unwrap_or(0);
            Ok((views.len() == 3 && views.iter().all(|(_, v)| v.applied_index >= commit && v.leader_id.is_some()))
                .then_some(()))
        })
        .await?;
    }
    let acked = writer.finish().await;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let mut lost = 0;
    for i in 0..3 {
        let held = cluster.token_descriptions(i).await?;
        lost += acked.iter().filter(|d| held.get(*d) != Some(&1)).count();
    }
    println!(
        "kill loop: {} leader kills (kill -9, restart, catch up), {} writes acknowledged meanwhile, {} missing or doubled on some coordinator",
        trials,
        acked.len(),
        lost
    );
    if lost > 0 {
        anyhow::bail!("{lost} acknowledged writes were lost or applied twice");
    }
    failovers.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "leader failover (kill -9 → next committed write), {} trials: median {:.0} ms, min {:.0} ms, max {:.0} ms",
        failovers.len(),
        ms(failovers[failovers.len() / 2]),
        ms(failovers[0]),
        ms(*failovers.last().unwrap())
    );
    drop(cluster);
    // FIFTY_BENCH_KEEP=1 keeps the coordinators' data dirs and logs (`<dir>/logs`) to look at.
    if std::env::var_os("FIFTY_BENCH_KEEP").is_some() {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
