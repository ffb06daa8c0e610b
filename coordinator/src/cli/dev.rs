//! `fifty dev --agents N`: a coordinator and N agents on this machine, until Ctrl-C.

use std::time::Duration;

use anyhow::Result;

use crate::fleet::HostState;
use crate::local::{bin_dir, LocalCluster, Options};

/// Starts the playground, prints how to use it, waits for Ctrl-C, then stops everything.
pub async fn run(agents: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fifty-dev-{}", std::process::id()));
    let mut cluster = LocalCluster::start(&dir, &bin_dir()?, Options::default()).await?;
    let names: Vec<String> = (1..=agents).map(|i| format!("dev-{i}")).collect();
    for name in &names {
        cluster.add_agent(name, "role=dev").await?;
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster.wait_hosts(&refs, HostState::Ready, Duration::from_secs(60)).await?;
    println!("==> fifty dev: a coordinator and {agents} agents are running under {}", dir.display());
    println!("==> Logs: {}/logs/. Use the CLI with:\n", dir.display());
    println!("{}", cluster.env_lines());
    println!("    fifty hosts\n\n==> Press Ctrl-C to stop.");
    crate::cli::shutdown_signal().await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
