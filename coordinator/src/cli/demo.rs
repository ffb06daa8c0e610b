//! `fifty demo`: Fifty's story, told with real processes on loopback. Each step waits for what a
//! user would see through the API; the command exits 0 only if every step happened.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fleet::HostState;
use crate::local::{bin_dir, LocalCluster, Options};
use crate::views::{ClusterView, StatusView, TokenView};

const BUILD: [&str; 2] = ["build-1", "build-2"];
const PROD: [&str; 6] = ["web-1", "web-2", "web-3", "web-4", "web-5", "web-6"];
const DEADLINE: Duration = Duration::from_secs(60);

struct Timeline {
    start: Instant,
}

impl Timeline {
    fn say(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.start.elapsed().as_secs_f64());
    }
}

/// Runs the story; on failure keeps the directory with every process's log.
pub async fn run() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fifty-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = story(&dir).await;
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
            println!("\nDemo complete: every step happened.");
        }
        Err(_) => eprintln!("\nDemo failed. Logs of every process are in {}/logs/", dir.display()),
    }
    result
}

async fn story(dir: &std::path::Path) -> Result<()> {
    let t = Timeline { start: Instant::now() };
    let options = Options { coordinators: 3, ..Options::default() };
    let mut cluster = LocalCluster::start(dir, &bin_dir()?, options).await?;
    let leader = cluster.wait_leader(DEADLINE).await?;
    t.say(&format!("3 coordinators formed a Raft cluster; {} leads", cluster.coordinators[leader].name));

    for name in BUILD {
        cluster.add_agent(name, "role=build,slots=2").await?;
    }
    for name in PROD {
        cluster.add_agent(name, "role=prod,pool=web").await?;
    }
    t.say("enrolled 2 build hosts and 6 production hosts (each made its own key; the coordinators signed it)");
    let all: Vec<&str> = BUILD.iter().chain(PROD.iter()).copied().collect();
    let hosts = cluster.wait_reporting(&all, DEADLINE).await?;
    t.say("all 8 hosts ready, reporting health to the leader over mutual-TLS QUIC:");
    print!("{}", indent(&super::output::hosts(&hosts)));

    cluster.kill_agent("web-3").await?;
    t.say("killed the agent on web-3 (SIGKILL)");
    cluster.wait_hosts(&["web-3"], HostState::Down, DEADLINE).await?;
    t.say("web-3 marked down after 5 s without a heartbeat");
    cluster.start_agent("web-3")?;
    cluster.wait_reporting(&all, DEADLINE).await?;
    t.say("restarted web-3: it reconnected and is ready again");

    let tokens_before: Vec<TokenView> = cluster.client().get("/v1/tokens").await?;
    let old = cluster.wait_leader(DEADLINE).await?;
    let killed_at = Instant::now();
    cluster.kill_coordinator(old).await?;
    t.say(&format!("killed the leader, {} (SIGKILL)", cluster.coordinators[old].name));
    let new = cluster.wait_leader(DEADLINE).await?;
    t.say(&format!(
        "{} leads now ({:.1} s after the kill); writes and reads go on through any coordinator",
        cluster.coordinators[new].name,
        killed_at.elapsed().as_secs_f64()
    ));
    let tokens_after: Vec<TokenView> = cluster.client().get("/v1/tokens").await?;
    if tokens_after != tokens_before {
        bail!("tokens changed across the failover: {} before, {} after", tokens_before.len(), tokens_after.len());
    }
    cluster.join_token(1).await.context("write through the new leader")?;
    let hosts = cluster.wait_reporting(&all, DEADLINE).await?;
    if hosts.len() != all.len() {
        bail!("{} hosts after the failover, expected {}", hosts.len(), all.len());
    }
    t.say("all 8 hosts re-attached to the new leader by themselves; every token and host kept");

    cluster.start_coordinator(old).await?;
    let caught_up = crate::local::wait_for("the old leader to catch up", DEADLINE, || async {
        let views = cluster.views().await;
        let back = views.iter().find(|(i, _)| *i == old).map(|(_, v)| v.applied_index);
        let leader = views.iter().map(|(_, v)| v.commit_index).max();
        Ok(match (back, leader) {
            (Some(a), Some(c)) if a >= c => Some(a),
            _ => None,
        })
    })
    .await?;
    t.say(&format!(
        "restarted {} from its own disk: it rejoined as a follower, applied index {caught_up}",
        cluster.coordinators[old].name
    ));

    let members: ClusterView = cluster.client().get("/v1/cluster/members").await?;
    print!("{}", indent(&super::output::cluster(&members)));
    let status: StatusView = cluster.client().get("/v1/status").await.context("read status")?;
    print!("{}", indent(&super::output::status(&status)));
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("           {l}\n")).collect()
}
