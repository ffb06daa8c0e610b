//! CI and gate benchmarks on a real loopback cluster (release binaries): one coordinator and two
//! build agents with two slots each.
//!
//! 1. Shard balance: a 200-test suite with skewed durations (180 short tests of 10-50 ms, 20 long
//!    ones of 0.3-1.5 s, in a seeded random order; each test sleeps its duration), 4 shards. The
//!    same suite is tested on three commits in a row: the first without history (round-robin by
//!    index), the next two with the durations the previous ones recorded. Figure: the slowest
//!    shard's wall time over the mean shard wall time (1.00 is perfect), from the API.
//! 2. Gate check latency: `GET /v1/repos/{repo}/gate` over one kept-alive HTTPS connection
//!    (p50/p99), and `fifty gate check` as a whole process, as a pre-receive hook runs it.
//! 3. Dispatch overhead: from `POST /v1/repos/{repo}/commits` until every one of 4 shards' commands
//!    has started (each writes a nanosecond timestamp first thing), with idle agents. This
//!    includes the plan job (fetch, checkout, read fifty.toml, list the tests).
//!
//! Run with `scripts/bench/ci`. `FIFTY_BENCH_GATE_CHECKS`, `FIFTY_BENCH_DISPATCH_TRIALS` change
//! the sizes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fifty::ci::{CommitState, NewCommit};
use fifty::local::{bin_dir, wait_for, LocalCluster, Options};
use fifty::sample_app::git;
use fifty::views::{AddRepo, CommitView, GateView, Notified, NotifyCommits, RepoView};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// A seeded generator (splitmix64), so every run builds the same suite.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const RUN_TESTS: &str = r#"#!/bin/sh
# Runs the tests listed in $FIFTY_TESTS_FILE (or index/count of the list) and writes JUnit.
date +%s%N > "$MARKS/start-$FIFTY_COMMIT-$FIFTY_SHARD_INDEX"
if [ -s "$FIFTY_TESTS_FILE" ]; then tests=$(cat "$FIFTY_TESTS_FILE")
else tests=$(sh list.sh | awk -v i="$FIFTY_SHARD_INDEX" -v n="$FIFTY_SHARD_COUNT" '(NR - 1) % n == i'); fi
mkdir -p reports
{
  echo '<testsuite name="bench">'
  for t in $tests; do
    start=$(date +%s%N)
    sh "tests/$t.sh"
    end=$(date +%s%N)
    echo "<testcase name=\"$t\" time=\"$(awk -v ns=$((end - start)) 'BEGIN { printf "%.4f", ns / 1e9 }')\"/>"
  done
  echo '</testsuite>'
} > reports/junit.xml
"#;

async fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args).await.unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository (no hooks: the benchmark notifies through the API) and its working clone.
async fn repo(dir: &Path, name: &str, files: &[(String, String)]) -> (PathBuf, PathBuf) {
    let bare = dir.join(format!("{name}.git"));
    let work = dir.join(format!("{name}-work"));
    git_ok(dir, &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]).await;
    git_ok(dir, &["init", "-q", "-b", "main", work.to_str().unwrap()]).await;
    for (path, text) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    (bare, work)
}

/// Commits everything (or an empty commit) and pushes to the bare repository; returns the SHA.
async fn commit_and_push(work: &Path, bare: &Path, message: &str) -> String {
    git_ok(work, &["add", "-A"]).await;
    git_ok(work, &["commit", "-q", "--allow-empty", "-m", message]).await;
    git_ok(work, &["push", "-q", bare.to_str().unwrap(), "HEAD:main"]).await;
    git_ok(work, &["rev-parse", "HEAD"]).await
}

async fn notify(cluster: &LocalCluster, repo: &str, sha: &str) {
    let req = NotifyCommits {
        branch: None,
        commits: vec![NewCommit { sha: sha.into(), subject: String::new(), author: String::new() }],
    };
    let answer: Notified = cluster.client().post(&format!("/v1/repos/{repo}/commits"), &req).await.unwrap();
    assert_eq!(answer.queued, [sha.to_string()]);
}

async fn finished(cluster: &LocalCluster, sha: &str) -> CommitView {
    let client = cluster.client();
    wait_for("the commit to finish", Duration::from_secs(300), || {
        let client = client.clone();
        let path = format!("/v1/commits/{sha}");
        async move {
            let v: CommitView = client.get(&path).await?;
            Ok(v.summary.state.finished().then_some(v))
        }
    })
    .await
    .unwrap()
}

async fn add_repo(cluster: &LocalCluster, name: &str, bare: &Path) {
    let req = AddRepo {
        name: name.into(),
        url: bare.display().to_string(),
        branch: None,
        fix_marker: None,
        webhook_secret: None,
    };
    let _: RepoView = cluster.client().post("/v1/repos", &req).await.unwrap();
}

async fn shard_balance(cluster: &LocalCluster, dir: &Path, marks: &Path) {
    let mut rng = Rng(50);
    let mut durations: Vec<f64> = (0..180).map(|_| rng.uniform(0.010, 0.050)).collect();
    durations.extend((0..20).map(|_| rng.uniform(0.3, 1.5)));
    // A seeded shuffle, so the long tests are scattered over the list.
    for i in (1..durations.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        durations.swap(i, j);
    }
    let mut files = vec![
        (
            "fifty.toml".to_string(),
            "[test]\ncommand = \"sh run.sh\"\nlist = \"sh list.sh\"\nshards = 4\ntimeout = \"5m\"\njunit = \"reports/*.xml\"\n"
                .to_string(),
        ),
        ("run.sh".to_string(), RUN_TESTS.to_string()),
        ("list.sh".to_string(), "for f in tests/*.sh; do basename \"$f\" .sh; done\n".to_string()),
    ];
    for (i, d) in durations.iter().enumerate() {
        files.push((format!("tests/t{i:03}.sh"), format!("sleep {d:.3}\n")));
    }
    let total: f64 = durations.iter().sum();
    println!(
        "shard balance: 200 tests, {total:.1} s in all (20 long ones of 0.3-1.5 s), 4 shards on 2 agents x 2 slots"
    );
    let (bare, work) = repo(dir, "suite", &files).await;
    add_repo(cluster, "suite", &bare).await;
    let _ = marks;
    for run in 1..=3 {
        let sha = commit_and_push(&work, &bare, &format!("run {run}")).await;
        notify(cluster, "suite", &sha).await;
        let view = finished(cluster, &sha).await;
        assert_eq!(view.summary.state, CommitState::Passed, "{view:#?}");
        let walls: Vec<f64> =
            view.jobs.iter().filter(|j| j.shard.is_some()).map(|j| j.attempts.last().unwrap().duration_secs).collect();
        let mean = walls.iter().sum::<f64>() / walls.len() as f64;
        let max = walls.iter().cloned().fold(0.0, f64::max);
        let label = if run == 1 { "first run (no history: index/count)" } else { "with history" };
        println!(
            "  run {run}, {label}: shard wall times {} s; slowest/mean = {:.3}",
            walls.iter().map(|w| format!("{w:.2}")).collect::<Vec<_>>().join(", "),
            max / mean
        );
    }
}

async fn gate_latency(cluster: &LocalCluster, dir: &Path) {
    let (bare, work) = repo(dir, "gated", &[("README".into(), "x\n".into())]).await;
    commit_and_push(&work, &bare, "first").await;
    add_repo(cluster, "gated", &bare).await;
    let n = env_or("FIFTY_BENCH_GATE_CHECKS", 2000);
    let client = cluster.client();
    let _: GateView = client.get("/v1/repos/gated/gate?branch=main").await.unwrap();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let path = format!("/v1/repos/gated/gate?branch=main&message=change-{i}");
        let view: GateView = client.get(&path).await.unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(view.open);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "gate check API (GET /v1/repos/gated/gate, one kept-alive connection): {n} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&samples, 0.5),
        pct(&samples, 0.99),
        samples.last().unwrap()
    );
    let processes = env_or("FIFTY_BENCH_GATE_PROCESSES", 100);
    let mut walls = Vec::with_capacity(processes);
    for _ in 0..processes {
        let t = Instant::now();
        let out = tokio::process::Command::new(cluster.bin_dir.join("fifty"))
            .args(["gate", "check", "gated", "--branch", "main", "--message", "a change"])
            .env("FIFTY_ADDR", cluster.addr())
            .env("FIFTY_CACERT", cluster.ca_path())
            .env("FIFTY_TOKEN", &cluster.admin_token)
            .output()
            .await
            .unwrap();
        walls.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    walls.sort_by(f64::total_cmp);
    println!(
        "`fifty gate check` as a process (new TLS connection each): {processes} runs, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&walls, 0.5),
        pct(&walls, 0.99),
        walls.last().unwrap()
    );
}

async fn dispatch(cluster: &LocalCluster, dir: &Path, marks: &Path) {
    let files = vec![
        ("fifty.toml".to_string(), "[test]\ncommand = \"sh run.sh\"\nlist = \"sh list.sh\"\nshards = 4\n".to_string()),
        ("run.sh".to_string(), RUN_TESTS.to_string()),
        ("list.sh".to_string(), "for f in tests/*.sh; do basename \"$f\" .sh; done\n".to_string()),
        ("tests/a.sh".to_string(), "true\n".to_string()),
        ("tests/b.sh".to_string(), "true\n".to_string()),
        ("tests/c.sh".to_string(), "true\n".to_string()),
        ("tests/d.sh".to_string(), "true\n".to_string()),
    ];
    let (bare, work) = repo(dir, "quick", &files).await;
    add_repo(cluster, "quick", &bare).await;
    let trials = env_or("FIFTY_BENCH_DISPATCH_TRIALS", 20);
    let mut samples = Vec::with_capacity(trials + 1);
    for trial in 0..=trials {
        let sha = commit_and_push(&work, &bare, &format!("trial {trial}")).await;
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        notify(cluster, "quick", &sha).await;
        let view = finished(cluster, &sha).await;
        assert_eq!(view.summary.state, CommitState::Passed, "{view:#?}");
        let last_start = (0..4)
            .map(|i| {
                let text = std::fs::read_to_string(marks.join(format!("start-{sha}-{i}"))).unwrap();
                Duration::from_nanos(text.trim().parse().unwrap())
            })
            .max()
            .unwrap();
        if trial > 0 {
            // Trial 0 warms the agents' cached clones.
            samples.push((last_start - before).as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "dispatch: notified -> all 4 shards running, idle agents: {trials} commits, median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        pct(&samples, 0.5),
        pct(&samples, 0.9),
        samples.last().unwrap()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("fifty-bench-ci-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let marks = dir.join("marks");
        std::fs::create_dir_all(&marks).unwrap();
        // The shards' commands write their start times here, as the agents' job user, which gets
        // MARKS from the agents' environment by name (jobs get a clean one).
        std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        std::env::set_var("MARKS", &marks);
        std::env::set_var("FIFTY_JOBS_ENV", "MARKS");
        let bins = bin_dir().unwrap();
        println!("binaries: {}", bins.display());
        let mut cluster = LocalCluster::start(&dir, &bins, Options::default()).await.unwrap();
        for name in ["build-1", "build-2"] {
            cluster.add_agent(name, "role=build,slots=2").await.unwrap();
        }
        cluster.wait_reporting(&["build-1", "build-2"], Duration::from_secs(60)).await.unwrap();
        gate_latency(&cluster, &dir).await;
        dispatch(&cluster, &dir, &marks).await;
        shard_balance(&cluster, &dir, &marks).await;
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
