//! Alerting latency on a real loopback cluster: time from an agent's death (SIGKILL) to the
//! host-down alert's delivery at a webhook, with a 5 s `host_down` rule (target <= rule + 2 s).
//! One coordinator, three agents, 1 s heartbeats, `down_after` 5 s; a webhook receiver that
//! answers 200 at once, polled every 10 ms. Each trial kills `web-1`, times the firing's arrival,
//! restarts the agent and waits for the resolution.
//!
//! `cargo bench -p fifty-tests --bench alerts [-- TRIALS]` (release binaries beside the bench, or
//! `FIFTY_BIN_DIR`).

use std::time::{Duration, Instant};

use fifty::alerts::RuleSpec;
use fifty::local::{bin_dir, wait_for, LocalCluster, Options, WebhookReceiver};

fn count(hook: &WebhookReceiver, needle: &str) -> usize {
    hook.received().iter().filter(|b| b.contains(needle)).count()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let trials: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("fifty-bench-alerts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), Options::default()).await.unwrap();
    for name in ["web-1", "web-2", "web-3"] {
        cluster.add_agent(name, "role=prod").await.unwrap();
    }
    cluster.wait_reporting(&["web-1", "web-2", "web-3"], Duration::from_secs(60)).await.unwrap();
    let hook = WebhookReceiver::start().unwrap();
    let client = cluster.client();
    let _: Vec<fifty::views::WebhookView> =
        client.post("/v1/notify/webhooks", &fifty::views::AddWebhook { url: hook.url(), format: None }).await.unwrap();
    let rule =
        RuleSpec { name: "host-down".into(), kind: "host_down".into(), for_: Some("5s".into()), ..Default::default() };
    let _: Vec<fifty::alerts::RuleView> = client.post("/v1/alerts/rules", &rule).await.unwrap();
    let mut times = Vec::new();
    for trial in 1..=trials {
        let before = count(&hook, "host-down firing: web-1");
        let killed = Instant::now();
        cluster.kill_agent("web-1").await.unwrap();
        loop {
            if count(&hook, "host-down firing: web-1") > before {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(120), "no alert after 120 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = killed.elapsed().as_secs_f64();
        println!("trial {trial}: agent killed → host-down alert at the webhook in {took:.2} s");
        times.push(took);
        let resolved = count(&hook, "resolved: host-down for web-1");
        cluster.start_agent("web-1").unwrap();
        wait_for("the resolution", Duration::from_secs(120), || {
            let n = count(&hook, "resolved: host-down for web-1");
            async move { Ok((n > resolved).then_some(())) }
        })
        .await
        .unwrap();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{trials} trials: median {:.2} s, min {:.2} s, max {:.2} s (rule 5 s; target <= 7 s)",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
