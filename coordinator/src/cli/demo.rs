//! `fifty demo`: Fifty's story, told with real processes on loopback. Each step waits for what a
//! user would see through the API; the command exits 0 only if every step happened.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fleet::HostState;
use crate::local::{bin_dir, LocalCluster, Options};
use crate::views::{StatusView, TokenView};

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
    let options = Options { heartbeat_interval: Duration::from_secs(1), down_after: Duration::from_secs(5) };
    let mut cluster = LocalCluster::start(dir, &bin_dir()?, options).await?;
    t.say(&format!("coordinator up: API {}, QUIC {}", cluster.addr(), cluster.quic));

    for name in BUILD {
        cluster.add_agent(name, "role=build,slots=2").await?;
    }
    for name in PROD {
        cluster.add_agent(name, "role=prod,pool=web").await?;
    }
    t.say("enrolled 2 build hosts and 6 production hosts (each made its own key; the coordinator signed it)");
    let all: Vec<&str> = BUILD.iter().chain(PROD.iter()).copied().collect();
    let hosts = cluster.wait_hosts(&all, HostState::Ready, DEADLINE).await?;
    t.say("all 8 hosts ready, reporting health over mutual-TLS QUIC:");
    print!("{}", indent(&super::output::hosts(&hosts)));

    cluster.kill_agent("web-3").await?;
    t.say("killed the agent on web-3 (SIGKILL)");
    cluster.wait_hosts(&["web-3"], HostState::Down, DEADLINE).await?;
    t.say("web-3 marked down after 5 s without a heartbeat");

    cluster.start_agent("web-3")?;
    cluster.wait_hosts(&all, HostState::Ready, DEADLINE).await?;
    t.say("restarted web-3: it reconnected and is ready again");

    let tokens_before: Vec<TokenView> = cluster.client().get("/v1/tokens").await?;
    cluster.kill_coordinator().await?;
    t.say("killed the coordinator (SIGKILL); agents keep running and retry with backoff");
    cluster.start_coordinator().await?;
    t.say("restarted the coordinator from its own disk");
    let hosts = cluster.wait_reporting(&all, DEADLINE).await?;
    let tokens_after: Vec<TokenView> = cluster.client().get("/v1/tokens").await?;
    if hosts.len() != all.len() || tokens_after != tokens_before {
        bail!("state changed across the restart: {} hosts, tokens equal: {}", hosts.len(), tokens_after == tokens_before);
    }
    t.say("all 8 hosts reconnected by themselves; hosts, labels and tokens all kept");

    let status: StatusView = cluster.client().get("/v1/status").await.context("read status")?;
    print!("{}", indent(&super::output::status(&status)));
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("           {l}\n")).collect()
}
