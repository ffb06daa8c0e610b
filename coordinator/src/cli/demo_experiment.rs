//! The A/B part of `fifty demo`: an experiment on the production hosts, the deployed sample shop
//! asking its own host's sidecar for each visitor's checkout, a population where the new checkout
//! really sells more, and the coordinator's verdict.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::experiments::view::{CreateExperiment, ExperimentView, StopExperiment};
use crate::local::{wait_for, LocalCluster};

const DEADLINE: Duration = Duration::from_secs(60);
/// Visitors in the demo's population.
const USERS: usize = 8000;

async fn http(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n").as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut answer)).await??;
    let status = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Runs the experiment on `web` hosts (`role=prod`, serving the sample shop on `ports`); `say`
/// prints a timeline line.
pub async fn story(cluster: &LocalCluster, web: &[&str], ports: &[u16], say: &dyn Fn(&str)) -> Result<()> {
    let client = cluster.client();
    let create = CreateExperiment {
        name: "checkout".into(),
        variants: "control=50,new_checkout=50".into(),
        hosts: Some("role=prod".into()),
        metric: Some("conversion".into()),
        salt: None,
        looks: None,
        look_every: None,
    };
    let _: ExperimentView = client.post("/v1/experiments", &create).await.context("create the experiment")?;
    let sidecars: Vec<SocketAddr> = web.iter().map(|n| cluster.sidecar(n)).collect::<Result<_>>()?;
    wait_for("every production sidecar to serve the experiment", DEADLINE, || async {
        for s in &sidecars {
            match http(*s, "/v1/experiments").await {
                Ok((200, body)) if body.contains("\"checkout\"") => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(()))
    })
    .await?;
    say(&format!(
        "experiment checkout (control=50,new_checkout=50 on role=prod) reached the A/B sidecars of all {} web hosts",
        web.len()
    ));

    // The shop each web host runs (the release rolled out above) asks its own host's sidecar
    // (the agent hands it FIFTY_SIDECAR); the new checkout converts 15%, the old 10%.
    for name in web {
        let file = cluster.agent_dir(name).join("current").join("CONVERSION");
        std::fs::write(&file, "control=0.10,new_checkout=0.15\n")
            .with_context(|| format!("write {}", file.display()))?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..6 {
        let ports = ports.to_vec();
        tasks.spawn(async move {
            for i in (worker..USERS).step_by(6) {
                let n = ports.len();
                let mut hosts = vec![i % n];
                if i % 5 == 0 {
                    hosts.push((i + 1) % n);
                }
                for h in hosts {
                    let addr = SocketAddr::from(([127, 0, 0, 1], ports[h]));
                    let (status, body) = http(addr, &format!("/checkout?user=visitor-{i}")).await?;
                    if status != 200 {
                        bail!("the shop answered {status}: {body}");
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    say(&format!("{USERS} visitors went through checkout on {} web hosts (every fifth on two of them)", ports.len()));
    let view: ExperimentView = wait_for("the agents' reports to be recorded", DEADLINE, || async {
        let v: ExperimentView = cluster.client().get("/v1/experiments/checkout").await?;
        let exposed: u64 = v.variants.iter().map(|r| r.exposed).sum();
        Ok((exposed >= USERS as u64).then_some(v))
    })
    .await?;
    let exposed: u64 = view.variants.iter().map(|r| r.exposed).sum();
    if exposed != USERS as u64 {
        bail!("{exposed} units counted for {USERS} visitors: a visitor seen on two hosts must count once");
    }
    say("the coordinator counted each visitor once, whichever hosts saw them:");
    print!("{}", indent(&super::experiment::show(&view)));
    if view.winner.as_deref() != Some("new_checkout") {
        bail!("the new checkout's real lift was not judged a win:\n{}", super::experiment::show(&view));
    }
    let stop = StopExperiment { winner: Some("new_checkout".into()) };
    let _: ExperimentView = client.post("/v1/experiments/checkout/stop", &stop).await.context("stop")?;
    wait_for("every sidecar to give everyone the winner", DEADLINE, || async {
        for s in &sidecars {
            let (status, body) = http(*s, "/v1/assign/checkout/someone-new").await?;
            if status != 200 || !body.contains("new_checkout") {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    say("stopped with --winner new_checkout: every web host now gives every visitor the new checkout");
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
