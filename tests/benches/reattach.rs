//! Agents re-attaching after a leader kill (issue 20), on a real 3-coordinator loopback cluster
//! with three real agents (release binaries): each trial kills the leader with SIGKILL and times,
//! from that instant,
//! - the election: until a surviving coordinator says it leads;
//! - each agent's re-attachment: until the new leader has a heartbeat from it (the heartbeat's
//!   arrival time, taken from the leader's `last_seen_secs_ago`, polled every 20 ms).
//!
//! Then the killed coordinator is restarted and caught up, and every agent reports, before the
//! next trial. Prints each trial and the median, range and worst over all agents and trials.
//!
//! Run with `scripts/bench/reattach` (builds the release binaries first). `FIFTY_BENCH_TRIALS`
//! (default 10) sets the trials.

use std::time::{Duration, Instant};

use fifty::fleet::HostState;
use fifty::local::{bin_dir, wait_for, LocalCluster, Options};
use fifty::views::{ClusterView, HostView};

const AGENTS: [&str; 3] = ["build-1", "web-1", "web-2"];
const DEADLINE: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The coordinator other than `old` that says it leads, asked briefly.
async fn new_leader(cluster: &LocalCluster, old: usize) -> Option<usize> {
    for i in cluster.running().into_iter().filter(|i| *i != old) {
        let client = cluster.client_for(i);
        let view = client.get::<ClusterView>("/v1/cluster/members?stale=true");
        if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(1), view).await {
            if v.leader_id.as_deref() == Some(v.node_id.as_str()) {
                return Some(i);
            }
        }
    }
    None
}

fn summary(what: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{what}: {} samples, median {:.0} ms, min {:.0} ms, max {:.0} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(*v.last().expect("samples"))
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let trials = env_or("FIFTY_BENCH_TRIALS", 10);
    let dir = std::env::temp_dir().join(format!("fifty-bench-reattach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = Options { coordinators: 3, ..Options::default() };
    let mut cluster = LocalCluster::start(&dir, &bin_dir()?, options).await?;
    for name in AGENTS {
        cluster.add_agent(name, "role=prod").await?;
    }
    cluster.wait_reporting(&AGENTS, DEADLINE).await?;

    let (mut elections, mut attaches, mut all_three) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 1..=trials {
        let old = cluster.wait_leader(DEADLINE).await?;
        let killed = Instant::now();
        cluster.kill_coordinator(old).await?;
        let mut election = None;
        let mut seen: Vec<Option<Duration>> = vec![None; AGENTS.len()];
        while seen.iter().any(Option::is_none) {
            if killed.elapsed() > DEADLINE {
                anyhow::bail!("trial {trial}: agents not back after {DEADLINE:?}: {seen:?}");
            }
            if let Some(leader) = new_leader(&cluster, old).await {
                election.get_or_insert(killed.elapsed());
                let client = cluster.client_for(leader);
                let hosts = client.get::<Vec<HostView>>("/v1/hosts?stale=true");
                if let Ok(Ok(hosts)) = tokio::time::timeout(Duration::from_secs(1), hosts).await {
                    let now = killed.elapsed();
                    for (a, name) in AGENTS.iter().enumerate() {
                        let h = hosts.iter().find(|h| h.name == *name);
                        let ago = h.filter(|h| h.state == HostState::Ready).and_then(|h| h.last_seen_secs_ago);
                        if let (None, Some(ago)) = (seen[a], ago.filter(|ago| *ago < now.as_secs_f64())) {
                            seen[a] = Some(now.saturating_sub(Duration::from_secs_f64(ago)));
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen: Vec<Duration> = seen.into_iter().flatten().collect();
        let election = election.expect("a leader was found");
        let last = *seen.iter().max().expect("three agents");
        println!(
            "trial {trial:>2}: election {:.0} ms; agents re-attached at {} ms; all three {:.0} ms",
            election.as_secs_f64() * 1000.0,
            seen.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0)).collect::<Vec<_>>().join(", "),
            last.as_secs_f64() * 1000.0
        );
        elections.push(election);
        attaches.extend(seen);
        all_three.push(last);
        cluster.start_coordinator(old).await?;
        cluster.wait_converged(DEADLINE).await?;
        cluster.wait_reporting(&AGENTS, DEADLINE).await?;
        // Let the agents settle on the current leader before the next kill.
        wait_for("the agents to report on the current leader", DEADLINE, || async {
            let hosts = cluster.hosts().await?;
            Ok(AGENTS
                .iter()
                .all(|n| hosts.iter().any(|h| h.name == *n && h.last_seen_secs_ago.is_some_and(|a| a < 1.5)))
                .then_some(()))
        })
        .await?;
    }
    println!("{}", summary("election (kill -> a new leader says so)", elections));
    println!("{}", summary("agent re-attached (kill -> its heartbeat on the new leader)", attaches));
    println!("{}", summary("all three re-attached", all_three));
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
