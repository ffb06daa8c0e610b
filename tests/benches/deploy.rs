//! Deploy benchmarks on a real loopback cluster (release binaries): one coordinator, one build
//! agent, six production agents serving the sample shop (`fifty-sample-service`), each on its
//! own port.
//!
//! 1. Rollout overhead: green commits rolled out 1 → 50% → 100% with `bake = "0s"`. For each
//!    rollout: wall time from the release's rollout starting to the last host serving it, the
//!    time of each wave (polled every 20 ms), and the hosts' own apply times (download, verify,
//!    unpack, start, first healthy check, from the agents' logs); the controller's overhead per
//!    wave is the wave's time minus its slowest host's apply time.
//! 2. Rollback: `POST /v1/rollback {"to": previous}` → every one of the six hosts serves the
//!    previous release again (polled every 20 ms). Target <= 5 s.
//! 3. Artifact transfer: a release carrying 32 MiB of random bytes; each agent logs how long the
//!    download (with verification) took. Compared with copying the same file locally
//!    (`std::fs::copy` + `sync_all`).
//!
//! Run with `scripts/bench/deploy`.

use std::path::Path;
use std::time::{Duration, Instant};

use fifty::deploy::{Outcome, Phase};
use fifty::local::{bin_dir, free_port, wait_for, LocalCluster, Options};
use fifty::sample_app::{served_version, SampleRepo};
use fifty::views::{CommitView, RollbackRequest, RolloutView};

const PROD: [&str; 6] = ["web-1", "web-2", "web-3", "web-4", "web-5", "web-6"];

async fn release_of(cluster: &LocalCluster, sha: &str) -> u64 {
    cluster.wait_release(sha, Duration::from_secs(300)).await.unwrap()
}

/// Polls the rollout of `release` every 20 ms until it is done; returns when each wave started,
/// when it finished, and the view.
async fn follow(cluster: &LocalCluster, release: u64) -> (Vec<Instant>, Instant, RolloutView) {
    let client = cluster.client();
    let mut waves: Vec<Instant> = Vec::new();
    loop {
        if let Ok(view) = client.get::<RolloutView>("/v1/rollouts/current?repo=shop").await {
            if view.release == release {
                while waves.len() < view.wave {
                    waves.push(Instant::now());
                }
                if view.phase == Phase::Done {
                    assert_eq!(view.outcome, Some(Outcome::Succeeded), "{view:#?}");
                    return (waves, Instant::now(), view);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_serving(ports: &[u16], version: &str) {
    loop {
        let mut all = true;
        for &p in ports {
            if served_version(p).await.as_deref() != Some(version) {
                all = false;
                break;
            }
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Apply times (seconds) and download figures of `release` from the agents' logs.
fn from_logs(dir: &Path, release: u64) -> (Vec<(String, f64)>, Vec<(f64, f64)>) {
    let ts = |line: &str| -> Option<f64> {
        let t = line.split_whitespace().next()?;
        let t = humantime::parse_rfc3339(t).ok()?;
        Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
    };
    let mut applies = Vec::new();
    let mut downloads = Vec::new();
    for host in PROD {
        let Ok(log) = std::fs::read_to_string(dir.join("logs").join(format!("{host}.log"))) else { continue };
        let tag = format!("release={release}");
        let start = log.lines().filter(|l| l.contains("applying release") && l.contains(&tag)).filter_map(ts).last();
        let end =
            log.lines().filter(|l| l.contains("release applied and healthy") && l.contains(&tag)).filter_map(ts).last();
        if let (Some(s), Some(e)) = (start, end) {
            applies.push((host.to_string(), e - s));
        }
        for l in log.lines().filter(|l| l.contains("artifact downloaded") && l.contains(&tag)) {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            if let (Some(bytes), Some(secs)) = (field("bytes"), field("secs")) {
                downloads.push((bytes, secs));
            }
        }
    }
    (applies, downloads)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("fifty-bench-deploy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bins = bin_dir().unwrap();
        let mut cluster = LocalCluster::start(&dir, &bins, Options::default()).await.unwrap();
        cluster.add_agent("build-1", "role=build,slots=2").await.unwrap();
        let mut ports = Vec::new();
        for name in PROD {
            let port = free_port().unwrap();
            ports.push(port);
            cluster.add_agent_with(name, "role=prod", &format!("port={port}")).await.unwrap();
        }
        let mut all = vec!["build-1"];
        all.extend(PROD);
        cluster.wait_reporting(&all, Duration::from_secs(60)).await.unwrap();
        let ci: fifty::views::TokenCreated = cluster
            .client()
            .post(
                "/v1/tokens",
                &fifty::views::CreateToken { role: "ci".into(), ttl: None, max_uses: None, description: "bench".into() },
            )
            .await
            .unwrap();
        let repo = SampleRepo::create(&dir, &cluster, "shop", &ci.token, None, fifty::sample_app::Steps::Deploy).await.unwrap();
        repo.edit("fifty.toml", "bake     = \"3s\"", "bake     = \"0s\"").unwrap();
        repo.commit("No bake").await.unwrap();

        // 1. Rollout overhead, over a few releases.
        println!("rollout 1 -> 50% -> 100% of 6 hosts, bake 0s (the first is a warm-up):");
        let mut shas = Vec::new();
        for round in 0..4 {
            if round > 0 {
                repo.write("NOTES.md", &format!("round {round}\n")).unwrap();
                repo.commit(&format!("round {round}")).await.unwrap();
            }
            let sha = fifty::sample_app::git(&repo.work, &["rev-parse", "HEAD"]).await.unwrap();
            let sha = String::from_utf8_lossy(&sha.stdout).trim().to_string();
            assert!(repo.push().await.unwrap().status.success());
            let release = release_of(&cluster, &sha).await;
            let (waves, done, view) = follow(&cluster, release).await;
            all_serving(&ports, &sha[..10]).await;
            let served = Instant::now();
            let (applies, _) = from_logs(&dir, release);
            let total = served.duration_since(waves[0]).as_secs_f64();
            let mut wave_secs = Vec::new();
            for w in 0..waves.len() {
                let end = waves.get(w + 1).copied().unwrap_or(done);
                wave_secs.push(end.duration_since(waves[w]).as_secs_f64());
            }
            let mut overheads = Vec::new();
            for (w, secs) in wave_secs.iter().enumerate() {
                let hosts: Vec<&str> = view.hosts.iter().filter(|h| h.wave == w + 1).map(|h| h.host.as_str()).collect();
                let slowest = applies.iter().filter(|(h, _)| hosts.contains(&h.as_str())).map(|(_, s)| *s).fold(0.0, f64::max);
                overheads.push(secs - slowest);
            }
            if round > 0 {
                println!(
                    "  release {release}: rollout started -> all 6 serve it {total:.2} s; waves {} s; slowest host apply per wave {} s; controller overhead per wave {} s",
                    wave_secs.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" / "),
                    (0..wave_secs.len())
                        .map(|w| format!("{:.2}", wave_secs[w] - overheads[w]))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    overheads.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" / "),
                );
            }
            shas.push((release, sha));
        }

        // 2. Rollback to the previous release.
        let mut rollbacks = Vec::new();
        for trial in 0..3 {
            let (back_release, back_sha) = shas[shas.len() - 2 + (trial % 2)].clone();
            let (_, now_sha) = shas[shas.len() - 1 - (trial % 2)].clone();
            all_serving(&ports, &now_sha[..10]).await;
            let t0 = Instant::now();
            let _: RolloutView = cluster
                .client()
                .post("/v1/rollback", &RollbackRequest { repo: Some("shop".into()), to: Some(back_release) })
                .await
                .unwrap();
            all_serving(&ports, &back_sha[..10]).await;
            rollbacks.push(t0.elapsed().as_secs_f64());
            follow(&cluster, back_release).await;
        }
        println!(
            "rollback (POST /v1/rollback -> all 6 hosts serve the previous release): {} s",
            rollbacks.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ")
        );

        // 3. Artifact transfer: 32 MiB of random bytes in the release.
        let mut blob = vec![0u8; 32 << 20];
        let mut x: u64 = 0x2545F4914F6CDD1D;
        for b in blob.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let blob_path = repo.work.join("release/blob.bin");
        std::fs::write(&blob_path, &blob).unwrap();
        repo.commit("32 MiB of data").await.unwrap();
        let sha = String::from_utf8_lossy(&fifty::sample_app::git(&repo.work, &["rev-parse", "HEAD"]).await.unwrap().stdout)
            .trim()
            .to_string();
        assert!(repo.push().await.unwrap().status.success());
        let release = release_of(&cluster, &sha).await;
        follow(&cluster, release).await;
        let (_, downloads) = from_logs(&dir, release);
        let rates: Vec<f64> = downloads.iter().map(|(b, s)| b / 1048576.0 / s).collect();
        let size = downloads.first().map(|(b, _)| *b).unwrap_or(0.0);
        let copy_to = dir.join("copy.bin");
        let t = Instant::now();
        std::fs::copy(&blob_path, &copy_to).unwrap();
        std::fs::File::open(&copy_to).unwrap().sync_all().unwrap();
        let copy_rate = blob.len() as f64 / 1048576.0 / t.elapsed().as_secs_f64();
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        println!(
            "artifact download over QUIC ({:.1} MiB compressed artifact, 6 agents at once): {} MiB/s each (median {median:.0}); local copy + fsync {copy_rate:.0} MiB/s; ratio {:.2}",
            size / 1048576.0,
            rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
            median / copy_rate
        );
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
