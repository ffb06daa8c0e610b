//! Artifacts out of Raft: snapshot size and catch-up time of a coordinator that lost its disk, on
//! a real 3-coordinator loopback cluster holding many releases of a large artifact.
//!
//! 1. A build agent packages `FIFTY_BENCH_RELEASES` (default 10) releases, each carrying
//!    `FIFTY_BENCH_ARTIFACT_MIB` (default 100) MiB of random bytes; for each, the time from the
//!    push to the release being recorded (tests, package, upload, a quorum holding it).
//! 2. A follower loses its whole data dir; it is removed as a member and rejoins as a new one
//!    (`snapshot_threshold` is small, so it must install a snapshot). Measured: the snapshot's
//!    size (the receiver's `snapshot received` log line, which needs
//!    `RUST_LOG=...,fifty::consensus::transport=debug`), the time until it applied the leader's
//!    commit index, and the time until its blob store holds every recorded artifact, verified;
//!    and the sender's Raft-thread copy and background encoding times (with
//!    `fifty::store::raft_log=debug`).
//!
//! Run with `scripts/bench/artifacts`.

use std::path::Path;
use std::time::{Duration, Instant};

use fifty::local::{bin_dir, wait_for, LocalCluster, Options};
use fifty::sample_app::SampleRepo;
use fifty::views::{ClusterView, ReleaseView};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `size` pseudo-random bytes (xorshift), different for each `seed`: they do not compress.
fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x2545F4914F6CDD1D ^ seed.wrapping_mul(0x9E3779B97F4A7C15);
    let mut out = vec![0u8; size];
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn main() {
    let releases = env("FIFTY_BENCH_RELEASES", 10);
    let mib = env("FIFTY_BENCH_ARTIFACT_MIB", 100);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("fifty-bench-artifacts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = Options { coordinators: 3, snapshot_threshold: 50, ..Options::default() };
        let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();
        cluster.add_agent("build-1", "role=build,slots=1").await.unwrap();
        cluster.wait_reporting(&["build-1"], Duration::from_secs(60)).await.unwrap();
        let ci: fifty::views::TokenCreated = cluster
            .client()
            .post(
                "/v1/tokens",
                &fifty::views::CreateToken { role: "ci".into(), ttl: None, max_uses: None, description: "bench".into() },
            )
            .await
            .unwrap();
        let repo =
            SampleRepo::create(&dir, &cluster, "shop", &ci.token, None, fifty::sample_app::Steps::Deploy).await.unwrap();

        // 1. Releases carrying large artifacts (no host has role=prod: nothing rolls out).
        println!("{releases} releases of {mib} MiB of random bytes, 3 coordinators:");
        for n in 0..releases {
            std::fs::write(repo.work.join("release/blob.bin"), random_bytes((mib as usize) << 20, n)).unwrap();
            let sha = repo.commit(&format!("Release {n} with {mib} MiB of data")).await.unwrap();
            let pushed = Instant::now();
            assert!(repo.push().await.unwrap().status.success());
            let id = cluster.wait_release(&sha, Duration::from_secs(1800)).await.unwrap();
            println!("  release {id}: push -> recorded (a quorum holds it) {:.1} s", pushed.elapsed().as_secs_f64());
        }
        let recorded: Vec<ReleaseView> = cluster.client().get("/v1/releases").await.unwrap();
        let total: u64 = recorded.iter().map(|r| r.size).sum();
        println!("  {} releases recorded, {:.0} MiB of artifacts", recorded.len(), total as f64 / 1048576.0);

        // 2. A follower loses its disk and rejoins as a new member.
        let leader = cluster.wait_leader(Duration::from_secs(60)).await.unwrap();
        let victim = (leader + 1) % 3;
        let name = cluster.coordinators[victim].name.clone();
        let blobs_before = dir_bytes(&dir.join(&name).join("blobs"));
        let old_id = cluster.views().await.into_iter().find(|(i, _)| *i == victim).unwrap().1.node_id;
        cluster.kill_coordinator(victim).await.unwrap();
        let _: serde_json::Value =
            cluster.client().delete(&format!("/v1/cluster/members/{old_id}")).await.unwrap_or(serde_json::Value::Null);
        let started = Instant::now();
        cluster.rejoin_wiped(victim, false).await.unwrap();
        wait_for("the rejoined coordinator to apply the leader's commit", Duration::from_secs(600), || {
            let (client, victim_client) = (cluster.client(), cluster.client_for(victim));
            async move {
                let leader: ClusterView = client.get("/v1/cluster/members").await?;
                let mine: ClusterView = victim_client.get("/v1/cluster/members?stale=true").await?;
                Ok((mine.applied_index >= leader.commit_index).then_some(()))
            }
        })
        .await
        .unwrap();
        let state_caught_up = started.elapsed();
        let blob_dir = dir.join(&name).join("blobs");
        wait_for("the rejoined coordinator to hold every artifact", Duration::from_secs(3600), || {
            let blob_dir = blob_dir.clone();
            let recorded = &recorded;
            async move {
                Ok(recorded
                    .iter()
                    .all(|r| std::fs::metadata(blob_dir.join(&r.digest)).is_ok_and(|m| m.len() == r.size))
                    .then_some(()))
            }
        })
        .await
        .unwrap();
        let blobs_caught_up = started.elapsed();
        let log = std::fs::read_to_string(dir.join("logs").join(format!("{name}.log"))).unwrap_or_default();
        let snapshot = log
            .lines()
            .filter(|l| l.contains("snapshot received"))
            .filter_map(|l| l.split("bytes=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
            .last();
        match snapshot {
            Some(bytes) => println!("  snapshot installed by the rejoined coordinator: {bytes} bytes"),
            None => println!("  snapshot size not logged (run with RUST_LOG=info,fifty::consensus::transport=debug)"),
        }
        // The sender's side: how long its Raft thread spent copying the state, and the build.
        for c in &cluster.coordinators {
            let log = std::fs::read_to_string(dir.join("logs").join(format!("{}.log", c.name))).unwrap_or_default();
            for line in log.lines().filter(|l| l.contains("for a snapshot (on the Raft thread)") || l.contains("encoded a snapshot")) {
                let what = line.split_once("DEBUG").map_or(line, |(_, rest)| rest).trim();
                println!("  {}: {what}", c.name);
            }
        }
        println!(
            "  wiped coordinator: state caught up in {:.1} s; every artifact fetched and verified ({:.0} MiB, it held {:.0} MiB before the wipe) in {:.1} s",
            state_caught_up.as_secs_f64(),
            dir_bytes(&blob_dir) as f64 / 1048576.0,
            blobs_before as f64 / 1048576.0,
            blobs_caught_up.as_secs_f64()
        );
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
