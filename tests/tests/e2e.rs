//! End-to-end tests: real `fifty server` and `fifty-agent` processes on loopback, real QUIC with
//! real certificates, the real CLI. Each test waits for what a user would see, with generous
//! deadlines, never for a fixed time.
//!
//! Run through `scripts/test`, which builds the binaries first.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use fifty::fleet::HostState;
use fifty::local::{bin_dir, wait_for, LocalCluster, Options};
use fifty::views::{HostView, TokenCreated, TokenView};
use fifty_shared::token::JoinToken;

const DEADLINE: Duration = Duration::from_secs(60);

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fifty-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs the real `fifty` CLI against the cluster with `token`.
async fn cli(cluster: &LocalCluster, token: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(cluster.bin_dir.join("fifty"))
        .args(args)
        .env("FIFTY_ADDR", cluster.addr())
        .env("FIFTY_CACERT", cluster.ca_path())
        .env("FIFTY_TOKEN", token)
        .output()
        .await
        .expect("run fifty")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn token(cluster: &LocalCluster, role: &str, ttl: Option<&str>) -> TokenCreated {
    let mut args = vec!["token", "create", "--role", role, "--json"];
    if let Some(ttl) = ttl {
        args.extend(["--ttl", ttl]);
    }
    let out = cli(cluster, &cluster.admin_token, &args).await;
    assert!(out.status.success(), "token create: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("token JSON")
}

/// Enrollment with good, reused, expired and forged tokens; identity at the TLS layer;
/// removal and revocation; API roles; `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_identity_and_api_auth() {
    let dir = test_dir("enroll");
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), Options::default()).await.unwrap();

    // A good single-use token enrolls one host, which then reports.
    let join = token(&cluster, "agent", None).await;
    let out = cluster.join("web-1", "role=prod,pool=web", &join.token).await.unwrap();
    assert!(out.status.success(), "join web-1: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("fifty-agent run --config"), "{}", text(&out.stdout));
    cluster.adopt_agent("web-1");
    cluster.start_agent("web-1").unwrap();
    cluster.wait_hosts(&["web-1"], HostState::Ready, DEADLINE).await.unwrap();

    // The CLI shows it, as a table and as JSON, with labels and health.
    let out = cli(&cluster, &cluster.admin_token, &["hosts"]).await;
    let table = text(&out.stdout);
    assert!(out.status.success() && table.contains("web-1") && table.contains("ready"), "{table}");
    assert!(table.contains("pool=web,role=prod"), "{table}");
    let out = cli(&cluster, &cluster.admin_token, &["hosts", "--json"]).await;
    let hosts: Vec<HostView> = serde_json::from_slice(&out.stdout).expect("hosts JSON");
    let web1 = &hosts[0];
    assert_eq!((web1.name.as_str(), web1.state), ("web-1", HostState::Ready));
    assert!(web1.mem_total_bytes.unwrap() > 0 && web1.agent_version.is_some());

    // The same single-use token again: refused, and the host is not created.
    let out = cluster.join("web-2", "role=prod", &join.token).await.unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("token was already used"), "{}", text(&out.stderr));

    // An expired token: refused with its expiry.
    let short = token(&cluster, "agent", Some("1s")).await;
    wait_for("the short token to expire", DEADLINE, || async {
        let tokens: Vec<TokenView> = cluster.client().get("/v1/tokens").await?;
        Ok(tokens.iter().any(|t| t.accessor == short.accessor && t.expired).then_some(()))
    })
    .await
    .unwrap();
    let out = cluster.join("web-2", "role=prod", &short.token).await.unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("token expired at"), "{}", text(&out.stderr));

    // A forged secret with the right CA fingerprint: the coordinator does not know it.
    let real = JoinToken::parse(&join.token).unwrap();
    let forged = JoinToken { secret: fifty_shared::token::new_secret(), ca_fingerprint: real.ca_fingerprint.clone() };
    let out = cluster.join("web-2", "role=prod", &forged.encode()).await.unwrap();
    assert!(text(&out.stderr).contains("unknown token"), "{}", text(&out.stderr));

    // A token naming another CA: the host refuses the coordinator before sending anything.
    let good = JoinToken::parse(&token(&cluster, "agent", None).await.token).unwrap();
    let wrong_ca = JoinToken { secret: good.secret.clone(), ca_fingerprint: "ab".repeat(32) };
    let out = cluster.join("web-2", "role=prod", &wrong_ca.encode()).await.unwrap();
    assert!(text(&out.stderr).contains("does not match the join token"), "{}", text(&out.stderr));
    // ...and the secret was not spent: the right fingerprint still enrolls.
    let out = cluster.join("web-2", "role=prod", &good.encode()).await.unwrap();
    assert!(out.status.success(), "join web-2: {}", text(&out.stderr));
    cluster.adopt_agent("web-2");
    cluster.start_agent("web-2").unwrap();
    cluster.wait_hosts(&["web-1", "web-2"], HostState::Ready, DEADLINE).await.unwrap();

    // A client whose certificate comes from another CA fails the TLS handshake.
    let err = connect_with_foreign_certificate(cluster.quic()).await;
    assert!(err.contains("invalid peer certificate"), "{err}");

    // API roles: no token or a bad one is 401; a role that may not do a thing is 403.
    let read = token(&cluster, "read", None).await;
    let ci = token(&cluster, "ci", None).await;
    let out = cli(&cluster, "", &["hosts"]).await;
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let out = cli(&cluster, "fifty_0000", &["status"]).await;
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let out = cli(&cluster, &read.token, &["status"]).await;
    assert!(out.status.success() && text(&out.stdout).contains("2 ready"), "{}", text(&out.stdout));
    let out = cli(&cluster, &read.token, &["token", "create", "--role", "read"]).await;
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
    let out = cli(&cluster, &ci.token, &["host", "remove", "web-2"]).await;
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
    let out = cli(&cluster, &join.token, &["hosts"]).await;
    assert!(text(&out.stderr).contains("401"), "a join token is no API token: {}", text(&out.stderr));

    // /metrics is Prometheus text with the fleet by state.
    let metrics = cluster.client().get_text("/metrics").await.unwrap();
    assert!(metrics.contains("fifty_hosts{state=\"ready\"} 2"), "{metrics}");
    assert!(metrics.contains("fifty_enrollments_total{result=\"refused\"}"), "{metrics}");
    check_exposition(&metrics);

    // Removing a host revokes its certificate: its agent is cut off, told why, and stops.
    let out = cli(&cluster, &cluster.admin_token, &["host", "remove", "web-2"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = cluster.wait_agent_exit("web-2", DEADLINE).await.unwrap();
    assert!(!status.success());
    assert!(cluster.log_tail("web-2", 5).contains("revoked"), "{}", cluster.log_tail("web-2", 5));
    // Started again, it is refused again at once.
    cluster.start_agent("web-2").unwrap();
    let status = cluster.wait_agent_exit("web-2", DEADLINE).await.unwrap();
    assert!(!status.success());
    assert!(cluster.log_tail("coord-1", 50).contains("agent link refused"));
    let hosts = cluster.hosts().await.unwrap();
    assert_eq!(hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["web-1"]);

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every non-comment line of an OpenMetrics exposition is `name{labels} value`.
fn check_exposition(text: &str) {
    assert!(text.trim_end().ends_with("# EOF"));
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "name of {line}");
        assert_eq!(series.contains('{'), series.ends_with('}'), "labels of {line}");
    }
}

/// Dials the agent link with a certificate from a CA the cluster never saw; returns the error.
async fn connect_with_foreign_certificate(quic: std::net::SocketAddr) -> String {
    use fifty_shared::ids::HostName;
    use fifty_shared::tls;
    let other_ca = tls::new_cluster_ca().unwrap();
    let host = HostName::new("intruder").unwrap();
    let (key_pem, csr) = tls::new_host_key_and_csr(&host).unwrap();
    let cert_pem = tls::sign_host_csr(&other_ca, &csr, &host, &tls::random_serial()).unwrap();
    // Trust the real server (to get as far as the client certificate), present the foreign one.
    let cluster_ca = std::fs::read_to_string(
        std::env::temp_dir().join(format!("fifty-e2e-enroll-{}", std::process::id())).join("coord-1/tls/ca.pem"),
    )
    .unwrap();
    let config =
        tls::quic_client_config(&cluster_ca, &tls::CertAndKey { cert_pem, key_pem }, fifty_shared::wire::ALPN_AGENT)
            .unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    // TLS 1.3 lets the client finish first; the server then checks the client's certificate and
    // closes the connection with a TLS alert before any application data is answered.
    let attempt = async {
        let conn = endpoint.connect(quic, tls::COORDINATOR_NAME)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = fifty_shared::wire::AgentMsg::Hello { agent_version: "x".into() };
        let _ = fifty_shared::codec::write_frame(&mut send, &hello).await;
        let reply = fifty_shared::codec::read_frame::<fifty_shared::wire::CoordinatorMsg, _>(&mut recv).await;
        if let Ok(Some(reply)) = reply {
            panic!("a foreign certificate got an answer: {reply:?}");
        }
        anyhow::Ok(conn.closed().await)
    };
    match tokio::time::timeout(DEADLINE, attempt).await.expect("the attempt ends") {
        Ok(quinn::ConnectionError::ConnectionClosed(close)) => {
            // Transport error codes 0x100-0x1ff are TLS alerts.
            let code = u64::from(close.error_code);
            assert!((0x100..0x200).contains(&code), "not a TLS alert: {close:?}");
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        Ok(other) => panic!("expected a TLS alert, got {other:?}"),
        Err(e) => format!("{e:#}"),
    }
}

/// A killed agent goes down within the timeout and comes back; a killed coordinator comes back
/// from its disk with everything it acknowledged, and the agents reconnect by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_coordinator_restart() {
    let dir = test_dir("liveness");
    let options = Options {
        heartbeat_interval: Duration::from_millis(500),
        down_after: Duration::from_secs(2),
        ..Options::default()
    };
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();
    for name in ["app-1", "app-2"] {
        cluster.add_agent(name, "role=prod").await.unwrap();
    }
    cluster.wait_hosts(&["app-1", "app-2"], HostState::Ready, DEADLINE).await.unwrap();

    cluster.kill_agent("app-1").await.unwrap();
    let hosts = cluster.wait_hosts(&["app-1"], HostState::Down, DEADLINE).await.unwrap();
    assert_eq!(hosts.iter().find(|h| h.name == "app-2").unwrap().state, HostState::Ready);
    cluster.start_agent("app-1").unwrap();
    cluster.wait_hosts(&["app-1", "app-2"], HostState::Ready, DEADLINE).await.unwrap();

    let extra = token(&cluster, "ci", None).await;
    let tokens_before: Vec<TokenView> = cluster.client().get("/v1/tokens").await.unwrap();
    cluster.kill_coordinator(0).await.unwrap();
    cluster.start_coordinator(0).await.unwrap();
    let hosts = cluster.wait_reporting(&["app-1", "app-2"], DEADLINE).await.unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].labels.get("role").map(String::as_str), Some("prod"));
    let tokens_after: Vec<TokenView> = cluster.client().get("/v1/tokens").await.unwrap();
    assert_eq!(tokens_after, tokens_before);
    // The token made before the kill still authenticates.
    let out = cli(&cluster, &extra.token, &["status", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Both agents kept running through the outage (neither was restarted).
    assert!(
        cluster.log_tail("app-2", 40).contains("reconnecting")
            || cluster.log_tail("app-2", 40).contains("cannot reach")
    );

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the replicated coordinator ------------------------------------------------------------

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fifty::cli::Client;
use fifty::views::{ClusterView, CreateToken};

/// Streams token creations (descriptions `w-0`, `w-1`, ...) through every coordinator in turn
/// until stopped; remembers which ones the API acknowledged.
struct Writer {
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(clients: Vec<Client>) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                // Bounded: at most 20,000 attempts and 5 minutes, whatever happens. A failed
                // attempt waits 20 ms, so a failover's instant refusals cannot use up the budget.
                let started = std::time::Instant::now();
                for n in 0..20_000usize {
                    if started.elapsed() > Duration::from_secs(300) {
                        return;
                    }
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let client = &clients[n % clients.len()];
                    let req =
                        CreateToken { role: "read".into(), ttl: None, max_uses: None, description: format!("w-{n}") };
                    let sent =
                        tokio::time::timeout(Duration::from_secs(15), client.post::<TokenCreated>("/v1/tokens", &req))
                            .await;
                    match sent {
                        Ok(Ok(_)) => acked.lock().unwrap().push(format!("w-{n}")),
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        };
        Writer { acked, stop, task }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Token descriptions as coordinator `i` itself holds them (a stale, local read), with counts.
async fn local_descriptions(cluster: &LocalCluster, i: usize) -> HashMap<String, usize> {
    let tokens: Vec<TokenView> = cluster.client_for(i).get("/v1/tokens?stale=true").await.unwrap();
    let mut counts = HashMap::new();
    for t in tokens {
        *counts.entry(t.description).or_insert(0) += 1;
    }
    counts
}

/// Waits until every running coordinator has applied everything the leader committed.
async fn wait_converged(cluster: &LocalCluster) -> u64 {
    wait_for("every coordinator to apply the leader's commit index", DEADLINE, || async {
        let views = cluster.views().await;
        let leader = views.iter().find(|(_, v)| v.leader_id.as_deref() == Some(v.node_id.as_str()));
        let Some((_, leader)) = leader else { return Ok(None) };
        let all =
            views.len() == cluster.running().len() && views.iter().all(|(_, v)| v.applied_index >= leader.commit_index);
        Ok(all.then_some(leader.commit_index))
    })
    .await
    .unwrap()
}

async fn wait_acked(writer: &Writer, at_least: usize) {
    wait_for(&format!("{at_least} acknowledged writes"), DEADLINE, || async {
        Ok((writer.acked() >= at_least).then_some(()))
    })
    .await
    .unwrap();
}

/// Kill -9 the leader while a client streams writes: a new leader takes over, every
/// acknowledged write survives on every node (and a full restart), none is applied twice; a
/// wiped node rejoins as a new member through a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_writes_survive_leader_kill_restart_and_wipe() {
    let dir = test_dir("raft");
    let options = Options { coordinators: 3, snapshot_threshold: 40, ..Options::default() };
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();

    let clients: Vec<Client> = (0..3).map(|i| cluster.client_for(i)).collect();
    let writer = Writer::start(clients);
    wait_acked(&writer, 30).await;
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    cluster.kill_coordinator(leader).await.unwrap();
    let before = writer.acked();
    let new_leader = cluster.wait_leader(DEADLINE).await.unwrap();
    assert_ne!(new_leader, leader);
    wait_acked(&writer, before + 30).await;
    let acked = writer.finish().await;

    wait_converged(&cluster).await;
    for i in cluster.running() {
        let held = local_descriptions(&cluster, i).await;
        for d in &acked {
            assert_eq!(held.get(d), Some(&1), "coordinator {i}: acknowledged write {d} missing or applied twice");
        }
        assert!(held.values().all(|n| *n == 1), "coordinator {i} applied a write twice");
    }

    // Everything stopped, everything restarted: nothing acknowledged is lost.
    for i in cluster.running() {
        cluster.kill_coordinator(i).await.unwrap();
    }
    for i in 0..3 {
        cluster.start_coordinator(i).await.unwrap();
    }
    cluster.wait_leader(DEADLINE).await.unwrap();
    wait_converged(&cluster).await;
    for i in 0..3 {
        let held = local_descriptions(&cluster, i).await;
        assert!(acked.iter().all(|d| held.get(d) == Some(&1)), "coordinator {i} lost writes across a full restart");
    }

    // A follower loses its disk: removed as a member, it rejoins as a new one from a snapshot
    // (the log was compacted long ago: snapshot_threshold is 40 entries).
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let victim = (leader + 1) % 3;
    let old_id = cluster.views().await.into_iter().find(|(i, _)| *i == victim).unwrap().1.node_id;
    cluster.kill_coordinator(victim).await.unwrap();
    let out = cli(&cluster, &cluster.admin_token, &["cluster", "remove", &old_id]).await;
    assert!(out.status.success(), "cluster remove: {}", text(&out.stderr));
    cluster.rejoin_wiped(victim).await.unwrap();
    let commit = wait_converged(&cluster).await;
    let members: ClusterView = cluster.client().get("/v1/cluster/members").await.unwrap();
    assert_eq!(members.members.len(), 3, "{members:?}");
    assert!(!members.members.iter().any(|m| m.id == old_id), "the wiped node came back under a new id");
    let held = local_descriptions(&cluster, victim).await;
    assert!(acked.iter().all(|d| held.get(d) == Some(&1)), "the rejoined node misses writes (commit {commit})");
    let coord_log = std::fs::read_to_string(dir.join("logs").join(format!("coord-{}.log", victim + 1))).unwrap();
    assert!(
        coord_log.contains("installed a snapshot from the leader"),
        "the wiped node did not catch up from a snapshot"
    );

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Isolate the leader from its peers: the minority cannot commit, the majority elects a new
/// leader and carries on, and after healing every node holds the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_commit_and_heals() {
    let dir = test_dir("partition");
    let options = Options { coordinators: 3, fault_injection: true, ..Options::default() };
    let cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();
    let old = cluster.wait_leader(DEADLINE).await.unwrap();
    let isolate = |on: bool| {
        let client = cluster.client_for(old);
        async move {
            let body = serde_json::json!({ "isolated": on });
            let _: serde_json::Value = client.post("/v1/debug/isolate", &body).await.unwrap();
        }
    };
    isolate(true).await;

    // The majority elects someone else.
    let new = wait_for("a new leader on the majority side", DEADLINE, || async {
        let views = cluster.views().await;
        Ok(views.iter().find(|(i, v)| *i != old && v.leader_id.as_deref() == Some(v.node_id.as_str())).map(|(i, _)| *i))
    })
    .await
    .unwrap();

    // The isolated old leader cannot commit: a write sent straight to it fails.
    let req = CreateToken { role: "read".into(), ttl: None, max_uses: None, description: "minority".into() };
    let minority = cluster.client_for(old).post::<TokenCreated>("/v1/tokens", &req).await;
    assert!(minority.is_err(), "the isolated node committed a write: {minority:?}");

    // The majority carries on.
    let req = CreateToken { role: "read".into(), ttl: None, max_uses: None, description: "majority".into() };
    cluster.client_for(new).post::<TokenCreated>("/v1/tokens", &req).await.unwrap();

    // Heal: the logs agree, the majority's write is everywhere, the minority's nowhere.
    isolate(false).await;
    wait_converged(&cluster).await;
    let mut states = Vec::new();
    for i in 0..3 {
        let held = local_descriptions(&cluster, i).await;
        assert_eq!(held.get("majority"), Some(&1), "coordinator {i}");
        assert_eq!(held.get("minority"), None, "coordinator {i} kept an uncommitted write");
        states.push(held);
    }
    assert!(states.windows(2).all(|w| w[0] == w[1]), "coordinators disagree after healing");
    // The same, as an operator checks it: every coordinator's state digest at one checkpoint.
    let out = cli(&cluster, &cluster.admin_token, &["cluster", "check"]).await;
    assert!(out.status.success(), "cluster check: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("every coordinator agrees"), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout).matches("agrees").count(), 4, "three rows and the summary: {}", text(&out.stdout));

    // A panic on the leader's Raft thread ends its process (a leader whose deciding thread died
    // must not stay "leader"); the others elect a new one and carry on.
    let mut cluster = cluster;
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let fault = |f: &str| serde_json::json!({ "fault": f });
    let _: serde_json::Value = cluster.client_for(leader).post("/v1/debug/raft", &fault("panic")).await.unwrap();
    let status = cluster.wait_coordinator_exit(leader, DEADLINE).await.unwrap();
    assert!(!status.success(), "a panicked coordinator exits with a failure: {status:?}");
    let next = cluster.wait_leader(DEADLINE).await.unwrap();
    assert_ne!(next, leader);
    let req = CreateToken { role: "read".into(), ttl: None, max_uses: None, description: "after-panic".into() };
    cluster.client_for(next).post::<TokenCreated>("/v1/tokens", &req).await.unwrap();
    cluster.start_coordinator(leader).await.unwrap();
    wait_converged(&cluster).await;

    // A committed entry a coordinator cannot decode (a newer binary's command, in a rolling
    // upgrade) stops it with a message saying so; it is never skipped, which would let its state
    // part from the others'. Every coordinator runs this binary, so every one stops.
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let _: serde_json::Value = cluster.client_for(leader).post("/v1/debug/raft", &fault("undecodable")).await.unwrap();
    for i in 0..3 {
        let status = cluster.wait_coordinator_exit(i, DEADLINE).await.unwrap();
        assert!(!status.success(), "coordinator {i}: {status:?}");
        let log = std::fs::read_to_string(dir.join("logs").join(format!("coord-{}.log", i + 1))).unwrap();
        assert!(log.contains("does not decode") && log.contains("upgrade this coordinator"), "coordinator {i}'s log");
    }

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the commit gate -------------------------------------------------------------------------

/// Runs git in `dir` with an identity of its own (CI machines have none).
async fn git(dir: &std::path::Path, args: &[&str]) -> Output {
    tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Fifty Test")
        .env("GIT_AUTHOR_EMAIL", "test@fifty.invalid")
        .env("GIT_COMMITTER_NAME", "Fifty Test")
        .env("GIT_COMMITTER_EMAIL", "test@fifty.invalid")
        .output()
        .await
        .expect("run git")
}

async fn commit_and_push(work: &std::path::Path, file: &str, message: &str) -> Output {
    std::fs::write(work.join(file), message).unwrap();
    let out = git(work, &["add", file]).await;
    assert!(out.status.success(), "git add: {}", text(&out.stderr));
    let out = git(work, &["commit", "-q", "-m", message]).await;
    assert!(out.status.success(), "git commit: {}", text(&out.stderr));
    git(work, &["push", "-q", "origin", "HEAD:main"]).await
}

/// Real pushes through the real pre-receive hook: an open gate lets them in; an admin's closure
/// refuses them, with the reason, even with the fix marker; reopened, they go in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_gate_refuses_pushes_while_closed() {
    let dir = test_dir("gate");
    let cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), Options::default()).await.unwrap();
    let bare = dir.join("shop.git");
    let work = dir.join("work");
    let out = git(&dir, &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]).await;
    assert!(out.status.success(), "git init: {}", text(&out.stderr));
    let hook = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/hooks/pre-receive");
    std::fs::copy(&hook, bare.join("hooks/pre-receive")).unwrap();
    let out = cli(&cluster, &cluster.admin_token, &["repo", "add", "shop", "--url", bare.to_str().unwrap()]).await;
    assert!(out.status.success(), "repo add: {}", text(&out.stderr));
    let ci = token(&cluster, "ci", None).await;
    let fifty_bin = cluster.bin_dir.join("fifty");
    for (key, value) in [
        ("fifty.repo", "shop".to_string()),
        ("fifty.addr", cluster.addr()),
        ("fifty.token", ci.token.clone()),
        ("fifty.cacert", cluster.ca_path().display().to_string()),
        ("fifty.bin", fifty_bin.display().to_string()),
    ] {
        assert!(git(&bare, &["config", key, &value]).await.status.success());
    }
    let out = git(&dir, &["clone", "-q", bare.to_str().unwrap(), work.to_str().unwrap()]).await;
    assert!(out.status.success(), "git clone: {}", text(&out.stderr));

    // Open: the push goes in.
    let out = commit_and_push(&work, "a.txt", "first feature").await;
    assert!(out.status.success(), "push to an open gate: {}", text(&out.stderr));

    // Closed by an admin: refused, and the pusher reads why.
    let out =
        cli(&cluster, &cluster.admin_token, &["gate", "close", "shop", "--reason", "trunk is red: investigating"])
            .await;
    assert!(out.status.success() && text(&out.stdout).contains("CLOSED"), "{}", text(&out.stderr));
    let out = commit_and_push(&work, "b.txt", "second feature").await;
    assert!(!out.status.success(), "a push got through a closed gate");
    let said = text(&out.stderr);
    assert!(said.contains("refused") && said.contains("trunk is red: investigating"), "{said}");
    assert!(said.contains("bootstrap admin token"), "the pusher should see who closed it: {said}");

    // The fix marker does not pass a manual closure.
    let out = commit_and_push(&work, "c.txt", "[fix] restore trunk").await;
    assert!(!out.status.success(), "a [fix] push got through a manual closure");
    let out = cli(&cluster, &ci.token, &["gate", "check", "shop", "--message", "[fix] x"]).await;
    assert_eq!(out.status.code(), Some(1));

    // Status, as JSON, says who and since when.
    let out = cli(&cluster, &ci.token, &["gate", "status", "shop", "--json"]).await;
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["open"], false);
    assert_eq!(view["cause"]["kind"], "manual");
    assert!(view["since"].as_str().is_some());

    // Only admins open and close gates; unknown repositories are named.
    let out = cli(&cluster, &ci.token, &["gate", "open", "shop"]).await;
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
    let out = cli(&cluster, &ci.token, &["gate", "check", "nosuch"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no repository named nosuch"), "{}", text(&out.stderr));

    // Reopened: the waiting commits go in.
    let out = cli(&cluster, &cluster.admin_token, &["gate", "open", "shop"]).await;
    assert!(out.status.success() && text(&out.stdout).contains("OPEN"), "{}", text(&out.stderr));
    let out = git(&work, &["push", "-q", "origin", "HEAD:main"]).await;
    assert!(out.status.success(), "push after reopening: {}", text(&out.stderr));
    let out = git(&bare, &["log", "--format=%s", "main"]).await;
    assert_eq!(
        text(&out.stdout).lines().collect::<Vec<_>>(),
        ["[fix] restore trunk", "second feature", "first feature"]
    );

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- CI: every commit tested, sharded, and the gate following the branch ----------------------

use fifty::ci::{AttemptEnd, CommitState};
use fifty::sample_app::SampleRepo;
use fifty::views::CommitView;

/// Waits until commit `sha` has finished and returns it.
async fn wait_finished(cluster: &LocalCluster, sha: &str, deadline: Duration) -> CommitView {
    cluster.wait_commit(sha, deadline).await.unwrap()
}

fn said(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

async fn webhook(cluster: &LocalCluster, secret: &str, delivery: &str, body: &str) -> (u16, String) {
    use hyper::header::{HeaderName, HeaderValue};
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = format!("sha256={}", hex::encode(ring::hmac::sign(&key, body.as_bytes()).as_ref()));
    let client =
        fifty::cli::Client::new(&cluster.addr(), None, &std::fs::read_to_string(cluster.ca_path()).unwrap()).unwrap();
    let headers = [
        (HeaderName::from_static("x-hub-signature-256"), HeaderValue::from_str(&sig).unwrap()),
        (HeaderName::from_static("x-github-delivery"), HeaderValue::from_str(delivery).unwrap()),
        (HeaderName::from_static("x-github-event"), HeaderValue::from_static("push")),
        (HeaderName::from_static("content-type"), HeaderValue::from_static("application/json")),
    ];
    let (status, _, bytes) = client
        .forward(hyper::Method::POST, "/v1/webhooks/github?repo=shop", &headers, body.as_bytes().to_vec().into())
        .await
        .unwrap();
    (status.as_u16(), text(&bytes))
}

/// The CI story with a real bare repository, the real hooks, two build agents and the sample
/// shop's real test suite writing JUnit: green commits spread over both agents; a red one closes
/// the gate and the next push is refused; a `[fix]` push gets in and reopens it; a flaky test is
/// caught; a quarantined test stops failing commits; a build agent killed mid-shard has its job
/// re-run on the other; a bad `fifty.toml` fails its commit by name; webhooks are signed and
/// deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_is_tested_sharded_and_gates_the_branch() {
    let dir = test_dir("ci");
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), Options::default()).await.unwrap();
    for name in ["build-1", "build-2"] {
        cluster.add_agent(name, "role=build,slots=2").await.unwrap();
    }
    cluster.wait_reporting(&["build-1", "build-2"], DEADLINE).await.unwrap();
    let ci = token(&cluster, "ci", None).await;
    let repo = SampleRepo::create(&dir, &cluster, "shop", &ci.token, Some("s3cret"), fifty::sample_app::Steps::Test)
        .await
        .unwrap();
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let deadline = Duration::from_secs(120);

    // 1. A good commit: the post-receive hook queues it; green, its two shards on both agents.
    let good = repo.git_head().await;
    let out = repo.push().await.unwrap();
    assert!(out.status.success(), "first push: {}", said(&out));
    assert!(said(&out).contains("Queued"), "the post-receive hook should queue the commit: {}", said(&out));
    let view = wait_finished(&cluster, &good, deadline).await;
    assert_eq!(view.summary.state, CommitState::Passed, "{view:#?}");
    assert_eq!(view.summary.shards, 2);
    assert_eq!(view.shard_hosts(), ["build-1", "build-2"], "shards should spread over both agents: {view:#?}");
    assert_eq!(view.jobs.iter().map(|j| j.tests).sum::<usize>(), 5, "every listed test assigned once");
    let out = cli(&cluster, &ci.token, &["commit", "log", &good[..8], "--shard", "0"]).await;
    assert!(text(&out.stdout).contains("ok    test_"), "shard output: {}", said(&out));

    // 2. A breaking commit goes red (its failing shard retried on the other agent) and closes the gate.
    repo.edit("app/shop.sh", "pear) echo 55", "pear) echo 50").unwrap();
    let red = repo.commit("Cheaper pears").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let view = wait_finished(&cluster, &red, deadline).await;
    assert_eq!(view.summary.state, CommitState::Failed);
    let failed = view.failed_tests.iter().find(|t| t.name == "test_total").expect("test_total failed");
    assert!(failed.message.contains("3 pears cost 150, expected 165"), "{failed:?}");
    let retried = view.jobs.iter().find(|j| j.attempts.len() == 2).expect("the red shard was retried");
    assert_ne!(retried.attempts[0].host, retried.attempts[1].host, "a retry goes to another agent");
    let out = cli(&cluster, &ci.token, &["commit", "show", &red[..8]]).await;
    assert!(text(&out.stdout).contains("test_total") && text(&out.stdout).contains("FAILED"), "{}", said(&out));

    // 3. The next ordinary push is refused, with the reason.
    repo.write("NOTES.md", "more features\n").unwrap();
    repo.commit("More features").await.unwrap();
    let out = repo.push().await.unwrap();
    assert!(!out.status.success(), "a push got through a red gate");
    assert!(said(&out).contains("build red") && said(&out).contains(&red[..10]), "{}", said(&out));
    repo.undo_commit().await.unwrap();

    // 4. A [fix] push gets in and goes green — and a test that fails once, then passes on the
    // retry, is caught as flaky. The gate reopens.
    repo.edit("app/shop.sh", "pear) echo 50", "pear) echo 55").unwrap();
    let flaky = format!(
        "mark={}/flaky-$FIFTY_COMMIT\nif [ -e \"$mark\" ]; then exit 0; fi\ntouch \"$mark\"\necho 'first run fails'\nexit 1\n",
        marks.display()
    );
    repo.write("tests/test_flaky.sh", &flaky).unwrap();
    let fix = repo.commit("[fix] Pears cost 55 again").await.unwrap();
    let out = repo.push().await.unwrap();
    assert!(out.status.success(), "a [fix] push was refused: {}", said(&out));
    let view = wait_finished(&cluster, &fix, deadline).await;
    assert_eq!(view.summary.state, CommitState::Passed, "{view:#?}");
    assert_eq!(view.summary.flaky, ["test_flaky"]);
    let out = cli(&cluster, &ci.token, &["gate", "check", "shop"]).await;
    assert_eq!(out.status.code(), Some(0), "the gate should reopen after a green commit: {}", said(&out));
    let out = cli(&cluster, &ci.token, &["test", "list", "shop"]).await;
    assert!(text(&out.stdout).contains("test_flaky"), "{}", said(&out));

    // 5. A quarantined test's failure is reported but does not fail the commit.
    let out = cli(&cluster, &cluster.admin_token, &["test", "quarantine", "shop", "test_receipt"]).await;
    assert!(out.status.success(), "{}", said(&out));
    repo.edit("app/shop.sh", "'%s x%s  %d.%02d\\n'", "'%s * %s  %d.%02d\\n'").unwrap();
    let quarantined = repo.commit("Receipts use *").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let view = wait_finished(&cluster, &quarantined, deadline).await;
    assert_eq!(view.summary.state, CommitState::Passed, "{view:#?}");
    assert!(view.failed_tests.iter().any(|t| t.name == "test_receipt" && t.quarantined), "{view:#?}");

    // 6. A build agent killed mid-shard: its job is re-queued and passes on the other agent.
    // The slow test holds while `hold` exists, so it is running when its agent is killed.
    let hold = marks.join("hold");
    std::fs::write(&hold, "").unwrap();
    let slow = format!(
        "pwd > {m}/started-$FIFTY_COMMIT-$$\ni=0\nwhile [ -e {m}/hold ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n[ ! -e {m}/hold ]\n",
        m = marks.display()
    );
    repo.write("tests/test_slow.sh", &slow).unwrap();
    let killed = repo.commit("A slow test").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let victim = wait_for("the slow test to start", deadline, || {
        let marks = marks.clone();
        let killed = killed.clone();
        async move {
            for entry in std::fs::read_dir(&marks)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("started-{killed}")) {
                    let pwd = std::fs::read_to_string(marks.join(&name))?;
                    let agent = ["build-1", "build-2"].into_iter().find(|a| pwd.contains(&format!("/agents/{a}/")));
                    return Ok(agent.map(str::to_string));
                }
            }
            Ok(None)
        }
    })
    .await
    .unwrap();
    cluster.kill_agent(&victim).await.unwrap();
    std::fs::remove_file(&hold).unwrap();
    let view = wait_finished(&cluster, &killed, deadline).await;
    assert_eq!(view.summary.state, CommitState::Passed, "{view:#?}");
    let lost = view
        .jobs
        .iter()
        .find(|j| j.attempts.iter().any(|a| a.host == victim && matches!(a.end, AttemptEnd::Lost { .. })))
        .unwrap_or_else(|| panic!("no attempt on {victim} was lost: {view:#?}"));
    assert_ne!(lost.attempts.last().unwrap().host, victim, "the job re-ran on the other agent");
    cluster.start_agent(&victim).unwrap();

    // 7. A bad fifty.toml fails its commit with the key and the problem, and closes the gate.
    repo.edit("fifty.toml", "shards  = 2", "shards  = \"two\"").unwrap();
    let bad = repo.commit("Typo in the pipeline").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let view = wait_finished(&cluster, &bad, deadline).await;
    assert_eq!(view.summary.state, CommitState::Failed);
    let error = view.summary.error.clone().unwrap_or_default();
    assert!(error.contains("fifty.toml") && error.contains("shards"), "{error}");
    let out = cli(&cluster, &ci.token, &["gate", "check", "shop"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));

    // 8. Webhooks: a wrong signature is refused; a signed push is queued once per delivery.
    repo.edit("fifty.toml", "shards  = \"two\"", "shards  = 2").unwrap();
    let hooked = repo.commit("[fix] shards is a number").await.unwrap();
    // Update the bare repository without its hooks, as a GitHub-hosted repository would be.
    let out =
        fifty::sample_app::git(&repo.bare, &["fetch", "-q", repo.work.to_str().unwrap(), "+HEAD:refs/heads/main"])
            .await
            .unwrap();
    assert!(out.status.success(), "{}", said(&out));
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "after": hooked,
        "repository": { "name": "shop", "clone_url": repo.bare.display().to_string() },
        "commits": [{ "id": hooked, "message": "[fix] shards is a number", "author": { "name": "Dev" } }],
    })
    .to_string();
    let (status, said_) = webhook(&cluster, "not the secret", "d-1", &body).await;
    assert_eq!(status, 401, "{said_}");
    let (status, said_) = webhook(&cluster, "s3cret", "d-2", &body).await;
    assert_eq!(status, 200, "{said_}");
    assert!(said_.contains(&hooked), "{said_}");
    let (status, said_) = webhook(&cluster, "s3cret", "d-2", &body).await;
    assert!(status == 200 && said_.contains("received before"), "{status} {said_}");
    let view = wait_finished(&cluster, &hooked, deadline).await;
    assert_eq!(view.summary.state, CommitState::Passed, "{view:#?}");
    assert_eq!(view.summary.author, "Dev");
    let out = cli(&cluster, &ci.token, &["gate", "check", "shop"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    let out = cli(&cluster, &ci.token, &["commits", "--repo", "shop"]).await;
    let listing = text(&out.stdout);
    assert_eq!(listing.lines().count(), 1 + 7, "header and 7 commits: {listing}");

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With three coordinators and one single-slot build agent: a second commit's jobs queue while
/// the agent is busy; the leader is killed while a shard runs; the new leader keeps both commits
/// and the running job, and both finish green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_jobs_queue_and_survive_a_leader_failover() {
    let dir = test_dir("ci-failover");
    let options = Options { coordinators: 3, ..Options::default() };
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();
    cluster.add_agent("build-1", "role=build,slots=1").await.unwrap();
    cluster.wait_reporting(&["build-1"], DEADLINE).await.unwrap();
    let ci = token(&cluster, "ci", None).await;
    let repo =
        SampleRepo::create(&dir, &cluster, "shop", &ci.token, None, fifty::sample_app::Steps::Test).await.unwrap();
    // The push that creates the branch tests its head; the later one tests each commit.
    let base = repo.git_head().await;
    assert!(repo.push().await.unwrap().status.success());
    wait_finished(&cluster, &base, Duration::from_secs(120)).await;
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let hold = marks.join("hold");
    std::fs::write(&hold, "").unwrap();
    let slow = format!(
        "touch {m}/started-$FIFTY_COMMIT\ni=0\nwhile [ -e {m}/hold ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n[ ! -e {m}/hold ]\n",
        m = marks.display()
    );
    repo.write("tests/test_slow.sh", &slow).unwrap();
    let first = repo.commit("A slow test").await.unwrap();
    repo.write("NOTES.md", "second\n").unwrap();
    let second = repo.commit("Notes").await.unwrap();
    let out = repo.push().await.unwrap();
    assert!(out.status.success(), "{}", said(&out));

    // The slow shard of the first commit runs; the second commit waits for the only slot.
    wait_for("the slow test to start", DEADLINE, || {
        let started = marks.join(format!("started-{first}"));
        async move { Ok(started.exists().then_some(())) }
    })
    .await
    .unwrap();
    let view: CommitView = cluster.client().get(&format!("/v1/commits/{second}")).await.unwrap();
    assert!(!view.summary.state.finished(), "the second commit cannot have run yet: {view:#?}");

    // Kill the leader mid-shard; the cluster elects another and keeps every commit and job.
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    cluster.kill_coordinator(leader).await.unwrap();
    let new_leader = cluster.wait_leader(DEADLINE).await.unwrap();
    assert_ne!(new_leader, leader);
    std::fs::remove_file(&hold).unwrap();
    for sha in [&first, &second] {
        let view = wait_finished(&cluster, sha, Duration::from_secs(120)).await;
        assert_eq!(view.summary.state, CommitState::Passed, "{view:#?}");
    }
    // The slow shard was not lost: its one attempt on build-1 reported to the new leader.
    let view: CommitView = cluster.client().get(&format!("/v1/commits/{first}")).await.unwrap();
    let attempts: usize = view.jobs.iter().map(|j| j.attempts.len()).sum();
    assert_eq!(attempts, view.jobs.len(), "no job needed a second attempt: {view:#?}");

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- safe deploy: packages, signed releases, waves, health checks --------------------------

use fifty::deploy::{Outcome, Phase};
use fifty::sample_app::served_version;
use fifty::views::{GateView, IncidentView, ReleaseView, RolloutView};

/// Waits until commit `sha` has a release, and returns its id.
async fn wait_release(cluster: &LocalCluster, sha: &str) -> u64 {
    cluster.wait_release(sha, Duration::from_secs(120)).await.unwrap()
}

/// Waits until the shop's rollout of `release` is in `phase`.
async fn wait_rollout(cluster: &LocalCluster, release: u64, phase: Phase) -> RolloutView {
    cluster.wait_rollout("shop", release, phase, Duration::from_secs(120)).await.unwrap()
}

/// Waits until every port in `ports` serves version `v` (a commit's first 10 digits).
async fn wait_serving(ports: &[u16], v: &str) {
    fifty::sample_app::wait_serving(ports, v, DEADLINE).await.unwrap()
}

/// Waits until coordinator `i` holds artifact `digest` in its blob store (`<data_dir>/blobs/`):
/// a private file named by its SHA-256 whose bytes hash to it.
async fn wait_blob(cluster: &LocalCluster, i: usize, digest: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = cluster.dir.join(&cluster.coordinators[i].name).join("blobs");
    let file = dir.join(digest);
    wait_for(&format!("coordinator {i} to hold artifact {digest}"), DEADLINE, || {
        let file = file.clone();
        async move {
            let bytes = std::fs::read(&file).ok();
            Ok(bytes.filter(|b| hex::encode(ring::digest::digest(&ring::digest::SHA256, b)) == digest).map(|_| ()))
        }
    })
    .await
    .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    assert_eq!(mode(&file), 0o600, "{}", file.display());
}

/// A cluster with one build agent and four web agents (`role=prod`, each serving the sample shop on
/// its own port), the shop's repository keeping the `fifty.toml` sections `steps` says.
async fn shop_cluster(
    dir: &std::path::Path,
    options: Options,
    steps: fifty::sample_app::Steps,
) -> (LocalCluster, Vec<u16>, SampleRepo, TokenCreated) {
    let mut cluster = LocalCluster::start(dir, &bin_dir().unwrap(), options).await.unwrap();
    cluster.add_agent("build-1", "role=build,slots=2").await.unwrap();
    let mut ports = Vec::new();
    for i in 1..=4 {
        let port = fifty::local::free_port().unwrap();
        ports.push(port);
        cluster.add_agent_with(&format!("web-{i}"), "role=prod", &format!("port={port}")).await.unwrap();
    }
    cluster.wait_reporting(&["build-1", "web-1", "web-2", "web-3", "web-4"], DEADLINE).await.unwrap();
    let ci = token(&cluster, "ci", None).await;
    let repo = SampleRepo::create(dir, &cluster, "shop", &ci.token, None, steps).await.unwrap();
    (cluster, ports, repo, ci)
}

/// A green commit becomes a signed release that rolls out 1 → 50% → 100% over four real agents
/// supervising the real sample service; a leader killed mid-rollout changes nothing; a release
/// that fails its health check stops at the canary and is rolled back; manual waves, pause,
/// resume, promote, abort and `rollback --to` do what they say; a host away during a rollout
/// converges when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_commits_roll_out_in_waves_and_bad_releases_roll_back() {
    let dir = test_dir("deploy");
    let options = Options { coordinators: 3, fault_injection: true, ..Options::default() };
    let (mut cluster, ports, repo, ci) = shop_cluster(&dir, options, fifty::sample_app::Steps::Deploy).await;
    let admin = cluster.admin_token.clone();

    // 1. The first green commit: packaged, signed, rolled out in three waves.
    let first = repo.git_head().await;
    assert!(repo.push().await.unwrap().status.success());
    let r1 = wait_release(&cluster, &first).await;
    // `fifty rollout watch`, piped: one line per event, until the rollout succeeds.
    wait_for("the first rollout to start", DEADLINE, || {
        let client = cluster.client();
        async move { Ok(client.get::<RolloutView>("/v1/rollouts/current?repo=shop").await.ok().filter(|v| v.release == r1)) }
    })
    .await
    .unwrap();
    let watched = cli(&cluster, &ci.token, &["rollout", "watch"]).await;
    assert!(watched.status.success(), "{}", said(&watched));
    assert!(
        text(&watched.stdout).contains("wave 3: 4 of 4 hosts") && text(&watched.stdout).contains("SUCCEEDED"),
        "{}",
        said(&watched)
    );
    let done = wait_rollout(&cluster, r1, Phase::Done).await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    assert_eq!(done.waves.iter().map(|w| w.reach).collect::<Vec<_>>(), [1, 2, 4]);
    wait_serving(&ports, &first[..10]).await;
    let releases: Vec<ReleaseView> = cluster.client().get("/v1/releases").await.unwrap();
    assert_eq!(releases[0].state, "live");
    assert_eq!(releases[0].hosts.len(), 4, "{releases:#?}");
    assert!(releases[0].digest.len() == 64 && releases[0].size > 0);
    // The artifact is not in Raft: every coordinator holds it in its blob store (a quorum before
    // the release was recorded, the last one by fetching it from a peer).
    for i in 0..3 {
        wait_blob(&cluster, i, &releases[0].digest).await;
    }

    // 2. The next one, with web-4 away and the leader killed mid-rollout: the same rollout
    // finishes, and web-4 converges when it comes back.
    cluster.kill_agent("web-4").await.unwrap();
    repo.write("NOTES.md", "second\n").unwrap();
    let second = repo.commit("Second release").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r2 = wait_release(&cluster, &second).await;
    let baking = wait_rollout(&cluster, r2, Phase::Baking).await;
    let killed = cluster.wait_leader(DEADLINE).await.unwrap();
    cluster.kill_coordinator(killed).await.unwrap();
    cluster.wait_leader(DEADLINE).await.unwrap();
    let done = wait_rollout(&cluster, r2, Phase::Done).await;
    assert_eq!(done.id, baking.id, "the rollout resumed, not restarted");
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    wait_serving(&ports[..3], &second[..10]).await;
    cluster.start_agent("web-4").unwrap();
    wait_serving(&ports[3..], &second[..10]).await;
    // The killed coordinator comes back with its blob store lost: it fetches the artifacts the
    // state records from its peers by digest.
    let lost = cluster.dir.join(&cluster.coordinators[killed].name).join("blobs");
    std::fs::remove_dir_all(&lost).unwrap();
    cluster.start_coordinator(killed).await.unwrap();
    let releases: Vec<ReleaseView> = cluster.client().get("/v1/releases").await.unwrap();
    assert_eq!(releases.len(), 2, "{releases:#?}");
    for r in &releases {
        wait_blob(&cluster, killed, &r.digest).await;
    }

    // 3. A release whose service fails its health check: the canary goes back by itself, the
    // rollout fails and stops there; every host keeps serving the previous release.
    repo.write("release/UNHEALTHY", "").unwrap();
    let sick = repo.commit("A broken release").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r3 = wait_release(&cluster, &sick).await;
    let done = wait_rollout(&cluster, r3, Phase::Done).await;
    match &done.outcome {
        Some(Outcome::Failed { why }) => assert!(why.contains("health"), "{why}"),
        other => panic!("the unhealthy release should fail: {other:?}\n{done:#?}"),
    }
    assert!(done.hosts.iter().filter(|h| h.failed.as_ref().is_some_and(|(r, _)| *r == r3)).count() == 1, "{done:#?}");
    wait_serving(&ports, &second[..10]).await;

    // 4. A manual wave: it waits for a person; pause and resume hold it; promote lets it go.
    repo.edit("fifty.toml", "waves    = [\"1\", \"50%\", \"100%\"]", "waves    = [\"1\", \"manual\", \"100%\"]")
        .unwrap();
    std::fs::remove_file(repo.work.join("release/UNHEALTHY")).unwrap();
    let manual = repo.commit("Healthy again, with a manual wave").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r4 = wait_release(&cluster, &manual).await;
    wait_rollout(&cluster, r4, Phase::AwaitingPromotion).await;
    let out = cli(&cluster, &admin, &["rollout", "pause"]).await;
    assert!(out.status.success() && text(&out.stdout).contains("PAUSED"), "{}", said(&out));
    let out = cli(&cluster, &admin, &["rollout", "resume"]).await;
    assert!(out.status.success(), "{}", said(&out));
    let out = cli(&cluster, &admin, &["rollout", "promote"]).await;
    assert!(out.status.success(), "{}", said(&out));
    let done = wait_rollout(&cluster, r4, Phase::Done).await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    wait_serving(&ports, &manual[..10]).await;

    // 5. Abort at the manual wave: the canary goes back to the previous release.
    repo.write("NOTES.md", "fifth\n").unwrap();
    let aborted = repo.commit("To be aborted").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r5 = wait_release(&cluster, &aborted).await;
    wait_rollout(&cluster, r5, Phase::AwaitingPromotion).await;
    let out = cli(&cluster, &admin, &["rollout", "abort"]).await;
    assert!(out.status.success(), "{}", said(&out));
    let done = wait_rollout(&cluster, r5, Phase::Done).await;
    assert!(matches!(done.outcome, Some(Outcome::Aborted { .. })), "{done:#?}");
    wait_serving(&ports, &manual[..10]).await;

    // 6. `fifty rollback --to` the second release: every host at once, no canary, no bake.
    let out = cli(&cluster, &admin, &["rollback", "--to", &r2.to_string()]).await;
    assert!(out.status.success(), "{}", said(&out));
    let done = wait_rollout(&cluster, r2, Phase::Done).await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    assert_eq!(done.waves.len(), 1);
    wait_serving(&ports, &second[..10]).await;
    let out = cli(&cluster, &ci.token, &["releases"]).await;
    assert!(text(&out.stdout).contains("live"), "{}", said(&out));

    // 7. Tampered orders are refused and the host keeps its release: a broken signature, and an
    // artifact whose stored bytes no longer match the signed digest.
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    // web-4 never had release 5 (its rollout was aborted after the canary), so it must download it.
    let cases = [(r4, "signature", "bad signature", "web-1", 0), (r5, "artifact", "does not match", "web-4", 3)];
    for (release, tamper, expect, host, port) in cases {
        let body = serde_json::json!({ "host": host, "release": release, "tamper": tamper });
        let _: serde_json::Value = cluster.client_for(leader).post("/v1/debug/deploy", &body).await.unwrap();
        let why = wait_for(&format!("{host} to refuse the {tamper}-tampered release {release}"), DEADLINE, || {
            let client = cluster.client();
            async move {
                let view: RolloutView = client.get("/v1/rollouts/current?repo=shop").await?;
                let found = view.hosts.iter().find(|h| h.host == host).cloned();
                Ok(found.and_then(|h| h.failed).filter(|(r, _)| *r == release).map(|(_, why)| why))
            }
        })
        .await
        .unwrap();
        assert!(why.contains(expect), "{tamper}: {why}");
        assert_eq!(served_version(ports[port]).await.as_deref(), Some(&second[..10]), "{host} kept its release");
    }

    // The coordinator that came back in step 2 holds every release's artifact too.
    let releases: Vec<ReleaseView> = cluster.client().get("/v1/releases").await.unwrap();
    assert_eq!(releases.len(), 5, "{releases:#?}");
    for r in &releases {
        wait_blob(&cluster, killed, &r.digest).await;
    }

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cluster immune system, through real agents scraping the real sample service under load:
/// a good release passes every wave; a release that fails a quarter of its requests is caught on
/// its canary and the whole sequence follows from one decision — every host back on the previous
/// release, the gate closed with the verdict, the commit reverted in git by a build agent (the one
/// push the closed gate lets in), an incident with the evidence, a webhook notified — and it
/// completes although the leader is killed just after the decision. Then ordinary pushes are
/// refused until an admin opens the gate, and the incident takes its whys and actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_immune_system_reverts_a_bad_release_everywhere() {
    let dir = test_dir("immune");
    let options = Options { coordinators: 3, ..Options::default() };
    let (mut cluster, ports, repo, _ci) = shop_cluster(&dir, options, fifty::sample_app::Steps::Immune).await;
    let admin = cluster.admin_token.clone();
    let hook = fifty::local::WebhookReceiver::start_failing(1).unwrap();
    let added = cli(&cluster, &admin, &["webhook", "add", &hook.url()]).await;
    assert!(added.status.success(), "{}", said(&added));

    // The first release has nothing to be compared with: it rolls out unwatched, and says so.
    let first = repo.git_head().await;
    assert!(repo.push().await.unwrap().status.success());
    let r1 = wait_release(&cluster, &first).await;
    let done = wait_rollout(&cluster, r1, Phase::Done).await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    assert!(done.events.iter().any(|(_, e)| e.contains("immune system not watching")), "{:#?}", done.events);
    wait_serving(&ports, &first[..10]).await;
    let _load = fifty::sample_app::Load::start(&ports, 40);

    // A good release: every wave is compared with the hosts still on release 1, and passes.
    repo.write("NOTES.md", "a harmless change\n").unwrap();
    let good = repo.commit("Harmless change").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r2 = wait_release(&cluster, &good).await;
    let done = wait_rollout(&cluster, r2, Phase::Done).await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    assert!(done.events.iter().any(|(_, e)| e.contains("immune system watching error_rate")), "{:#?}", done.events);
    assert!(!done.events.iter().any(|(_, e)| e.contains("held")), "{:#?}", done.events);
    wait_serving(&ports, &good[..10]).await;

    // A bad release: its tests pass, the shop fails 25% of requests.
    repo.write("release/ERROR_RATE", "0.25\n").unwrap();
    let bad = repo.commit("Faster checkout").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r3 = wait_release(&cluster, &bad).await;
    let incident: IncidentView = wait_for("the immune system's decision", Duration::from_secs(180), || {
        let client = cluster.client();
        async move {
            let list: Vec<IncidentView> = client.get("/v1/incidents").await?;
            Ok(list.into_iter().find(|i| i.release == r3))
        }
    })
    .await
    .unwrap();
    // Kill the leader just after the decision: the sequence must complete under the next one.
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    cluster.kill_coordinator(leader).await.unwrap();
    assert!(incident.reason.starts_with("error_rate "), "{incident:#?}");
    assert!(incident.evidence.iter().any(|e| e.starts_with("FAIL: error_rate")), "{incident:#?}");
    assert_eq!((incident.previous, incident.sha.as_str()), (r2, bad.as_str()));

    // 1. Every host goes back to release 2 at once (caught on the canary: one host to bring back).
    let back = format!("every host of rollout {} is back on release {r2}", incident.rollout);
    wait_for("the hosts back", Duration::from_secs(180), || {
        let client = cluster.client();
        let (id, back) = (incident.id, back.clone());
        async move {
            let i: IncidentView = client.get(&format!("/v1/incidents/{id}")).await?;
            Ok(i.timeline.iter().any(|(_, e)| *e == back).then_some(()))
        }
    })
    .await
    .unwrap();
    assert!(incident.timeline.iter().any(|(_, e)| e.contains("reverting 1 hosts to release")), "{incident:#?}");
    wait_serving(&ports, &good[..10]).await;
    // 2. The gate is closed with the verdict.
    let gate: GateView = cluster.client().get("/v1/repos/shop/gate").await.unwrap();
    let reason = gate.reason.clone().unwrap_or_default();
    assert!(reason.starts_with(&format!("immune system reverted {}: error_rate ", &bad[..10])), "{reason}");
    // 3. The commit is reverted in git, with the trailer the gate let in.
    let incident: IncidentView = wait_for("the revert commit", Duration::from_secs(180), || {
        let client = cluster.client();
        let id = incident.id;
        async move {
            let i: IncidentView = client.get(&format!("/v1/incidents/{id}")).await?;
            Ok((i.revert_commit.is_some() || i.revert_error.is_some()).then_some(i))
        }
    })
    .await
    .unwrap();
    let revert = incident.revert_commit.clone().unwrap_or_else(|| panic!("no revert: {incident:#?}"));
    let head = git(&repo.bare, &["log", "-1", "--format=%H%n%B", "main"]).await;
    let head = text(&head.stdout);
    assert!(head.starts_with(&revert) && head.contains(&format!("Fifty-Revert: {bad}")), "{head}");
    let tree = git(&repo.bare, &["diff", "--stat", &good, "main", "--", "release"]).await;
    assert!(text(&tree.stdout).trim().is_empty(), "the revert undoes the change: {}", text(&tree.stdout));
    // 4. The incident tells the story. 5. The webhook got it, once, after a failed first try.
    let timeline: Vec<&str> = incident.timeline.iter().map(|(_, e)| e.as_str()).collect();
    for expected in ["Faster checkout", "immune system: error_rate", "gate of main closed", "revert commit"] {
        assert!(timeline.iter().any(|e| e.contains(expected)), "{expected:?} missing from {timeline:#?}");
    }
    let got = wait_for("the webhook", DEADLINE, || async { Ok(hook.received().into_iter().next()) }).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!((body["kind"].as_str(), body["incident"].as_u64()), (Some("immune.revert"), Some(incident.id)));
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen[0].1, 500, "the first try failed and was retried: {seen:?}");
    assert_eq!(hook.received().len(), 1, "delivered once: {seen:?}");

    // The revert goes through CI like any commit; ordinary pushes are refused until an admin opens the gate.
    let reverted = wait_finished(&cluster, &revert, Duration::from_secs(180)).await;
    assert_eq!(reverted.summary.state, CommitState::Passed);
    git(&repo.work, &["pull", "-q", "--ff-only", "origin", "main"]).await;
    repo.write("NOTES.md", "while the gate is closed\n").unwrap();
    repo.commit("Unrelated change").await.unwrap();
    let refused = repo.push().await.unwrap();
    assert!(!refused.status.success() && said(&refused).contains("immune system reverted"), "{}", said(&refused));
    // Naming the reverted commit is not enough: the hook checks the change undoes it exactly.
    git(&repo.work, &["commit", "-q", "--amend", "-m", &format!("Sneak in\n\nFifty-Revert: {bad}")]).await;
    let forged = repo.push().await.unwrap();
    assert!(!forged.status.success() && said(&forged).contains("commit gate is closed"), "{}", said(&forged));
    let listed = cli(&cluster, &admin, &["incidents"]).await;
    assert!(text(&listed.stdout).contains(&format!("immune system reverted {}", &bad[..10])), "{}", said(&listed));
    let close = cli(&cluster, &admin, &["incident", "close", &incident.id.to_string()]).await;
    assert!(!close.status.success() && said(&close).contains("at least one why"), "{}", said(&close));
    let why =
        cli(&cluster, &admin, &["incident", "why", &incident.id.to_string(), "the error rate was set in the release"])
            .await;
    assert!(why.status.success(), "{}", said(&why));
    let action = cli(
        &cluster,
        &admin,
        &["incident", "action", &incident.id.to_string(), "check ERROR_RATE in review", "--owner", "ana"],
    )
    .await;
    assert!(action.status.success(), "{}", said(&action));
    let close = cli(&cluster, &admin, &["incident", "close", &incident.id.to_string()]).await;
    assert!(close.status.success(), "{}", said(&close));
    let open = cli(&cluster, &admin, &["gate", "open", "shop"]).await;
    assert!(open.status.success(), "{}", said(&open));
    assert!(repo.push().await.unwrap().status.success());
    let md = cli(&cluster, &admin, &["incident", "show", &incident.id.to_string(), "--markdown"]).await;
    let md = text(&md.stdout);
    assert!(
        md.contains("## Five whys") && md.contains("1. the error rate was set") && md.contains("gate of main opened"),
        "{md}"
    );
}

/// One HTTP/1.1 exchange on loopback (connection: close): status and body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut answer)).await??;
    let status = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The variant a sidecar assigns `unit` in `experiment`.
async fn assign(sidecar: std::net::SocketAddr, experiment: &str, unit: &str) -> String {
    let (status, body) = http(sidecar, "GET", &format!("/v1/assign/{experiment}/{unit}"), "").await.unwrap();
    assert_eq!(status, 200, "assign {experiment}/{unit} on {sidecar}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["experiment"], experiment);
    v["variant"].as_str().unwrap().to_string()
}

async fn experiment_json(cluster: &LocalCluster, name: &str) -> serde_json::Value {
    let out = cli(cluster, &cluster.admin_token, &["experiment", "show", name, "--json"]).await;
    assert!(out.status.success(), "experiment show: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Users `range` visit the shops (`/checkout` for both experiments): user i on host i mod 3, every
/// fifth also on the next host. Returns (experiment, variant, converted) per user and experiment,
/// after checking that every host answered the same.
async fn visit(shop_ports: &[u16], range: std::ops::Range<usize>) -> Vec<(&'static str, String, bool)> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..6 {
        let (shop_ports, range) = (shop_ports.to_vec(), range.clone());
        tasks.spawn(async move {
            let mut seen = Vec::new();
            for i in range.skip(worker).step_by(6) {
                let mut visits = vec![i % 3];
                if i % 5 == 0 {
                    visits.push((i + 1) % 3);
                }
                for experiment in ["checkout", "banner"] {
                    let mut answers = Vec::new();
                    for h in &visits {
                        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], shop_ports[*h]));
                        let path = format!("/checkout?user=user-{i}&experiment={experiment}");
                        let (status, body) = http(addr, "GET", &path, "").await.unwrap();
                        assert_eq!(status, 200, "{path}: {body}");
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        answers.push((v["variant"].as_str().unwrap().to_string(), v["converted"].as_bool().unwrap()));
                    }
                    assert!(answers.windows(2).all(|w| w[0] == w[1]), "user-{i} differs between hosts: {answers:?}");
                    seen.push((experiment, answers[0].0.clone(), answers[0].1));
                }
            }
            seen
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all
}

/// A/B split tests: definitions reach the sidecars of the selected hosts only; every host gives
/// a unit the same variant; a ramp moves units only into the grown variant; the sample shop on
/// three hosts runs a population (some users visiting two hosts) through its checkout, with the
/// leader of three coordinators killed halfway; the coordinators count each user exactly once,
/// judge a real lift a win and an A/A test not; a stop gives everyone the winner; a delete (of a
/// stopped experiment only) makes every sidecar forget it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_assign_on_every_host_and_judge_a_real_lift() {
    let dir = test_dir("experiments");
    let options = Options { coordinators: 3, ..Options::default() };
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();
    let webs = ["web-1", "web-2", "web-3"];
    for name in webs {
        cluster.add_agent(name, "role=prod").await.unwrap();
    }
    cluster.add_agent("build-1", "role=build").await.unwrap();
    cluster.wait_reporting(&["web-1", "web-2", "web-3", "build-1"], DEADLINE).await.unwrap();
    let sidecars: Vec<std::net::SocketAddr> = webs.iter().map(|n| cluster.sidecar(n).unwrap()).collect();
    let build_sidecar = cluster.sidecar("build-1").unwrap();
    let admin = cluster.admin_token.clone();

    let create = |args: &'static [&'static str]| {
        let (cluster, admin) = (&cluster, admin.clone());
        async move {
            let mut all = vec!["experiment", "create"];
            all.extend_from_slice(args);
            let out = cli(cluster, &admin, &all).await;
            assert!(out.status.success(), "experiment create {args:?}: {}", text(&out.stderr));
        }
    };
    // Fixed salts make the split reproducible run to run (so is who buys: see the sample shop).
    create(&["checkout", "--variants", "control=50,new_checkout=50", "--hosts", "role=prod", "--salt", "e2e-1"]).await;
    create(&["banner", "--variants", "control=50,blue=50", "--hosts", "role=prod", "--salt", "e2e-2"]).await;
    create(&["ramp-check", "--variants", "control=50,new=50", "--hosts", "role=prod", "--salt", "e2e-3"]).await;
    let out = cli(&cluster, &admin, &["experiment", "create", "bad", "--variants", "control=50"]).await;
    assert!(!out.status.success() && text(&out.stderr).contains("at least two"), "{}", text(&out.stderr));

    // Every selected host serves them within seconds; the build host's sidecar stays off.
    wait_for("every prod sidecar to serve the experiments", DEADLINE, || async {
        // Listing what a sidecar serves records no exposure.
        for s in &sidecars {
            match http(*s, "GET", "/v1/experiments", "").await {
                Ok((200, body)) if ["checkout", "banner", "ramp-check"].iter().all(|e| body.contains(e)) => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(()))
    })
    .await
    .unwrap();
    assert!(tokio::net::TcpStream::connect(build_sidecar).await.is_err(), "the build host's sidecar is off");
    let (status, body) = http(sidecars[0], "GET", "/v1/assign/nope/u1", "").await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].as_str().unwrap().contains("nope"));
    let (status, _) = http(sidecars[1], "POST", "/v1/track", "{\"experiment\":").await.unwrap();
    assert_eq!(status, 400);

    // The same unit gets the same variant on every host.
    for i in 0..40 {
        let unit = format!("same-{i}");
        let first = assign(sidecars[0], "ramp-check", &unit).await;
        for s in &sidecars[1..] {
            assert_eq!(assign(*s, "ramp-check", &unit).await, first, "{unit}");
        }
    }

    // A ramp only moves units into the grown variant.
    let units: Vec<String> = (0..600).map(|i| format!("ramp-{i}")).collect();
    let mut before = Vec::new();
    for u in &units {
        before.push(assign(sidecars[2], "ramp-check", u).await);
    }
    let out = cli(&cluster, &admin, &["experiment", "ramp", "ramp-check", "--variants", "control=20,new=80"]).await;
    assert!(out.status.success(), "ramp: {}", text(&out.stderr));
    let after = wait_for("the ramp to reach web-3", DEADLINE, || async {
        let mut after = Vec::new();
        for u in &units {
            after.push(assign(sidecars[2], "ramp-check", u).await);
        }
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        Ok((moved > 0).then_some(after))
    })
    .await
    .unwrap();
    for ((u, b), a) in units.iter().zip(&before).zip(&after) {
        assert!(b == a || (b == "control" && a == "new"), "{u} moved from {b} to {a}");
    }
    let new_share = after.iter().filter(|v| *v == "new").count() as f64 / units.len() as f64;
    assert!((0.72..0.88).contains(&new_share), "new's share after the ramp: {new_share}");
    // New units after the ramp split 20/80; the sample-ratio check judges each period by its own
    // weights, so the ramp itself is no mismatch.
    for i in 0..400 {
        assign(sidecars[i % 3], "ramp-check", &format!("post-{i}")).await;
    }
    let view = wait_for("ramp-check's units to be counted", DEADLINE, || async {
        let v = experiment_json(&cluster, "ramp-check").await;
        Ok((v["units"].as_u64() == Some(1040)).then_some(v))
    })
    .await
    .unwrap();
    assert_eq!(view["srm"]["mismatch"], false, "{view:#}");

    // The sample shop on each web host, asking its own host's sidecar.
    let mut shops = Vec::new();
    let mut shop_ports = Vec::new();
    for s in &sidecars {
        let port = fifty::local::free_port().unwrap();
        let child = tokio::process::Command::new(cluster.bin_dir.join("fifty-sample-service"))
            .args(["--port", &port.to_string()])
            .current_dir(&dir)
            .env("FIFTY_SIDECAR", s.to_string())
            .env("FIFTY_SAMPLE_CONVERSION", "control=0.10,new_checkout=0.20,*=0.10")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        shops.push(child);
        shop_ports.push(port);
    }
    let shop = |i: usize| std::net::SocketAddr::from(([127, 0, 0, 1], shop_ports[i % shop_ports.len()]));
    wait_for("the shops to answer", DEADLINE, || async {
        for i in 0..3 {
            if http(shop(i), "GET", "/health", "").await.is_err() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .unwrap();

    // A population: user i shops on host i mod 3; every fifth user also on the next host. Halfway,
    // the leader is killed while the agents hold unreported visits: nothing may be lost or doubled.
    let users = 3000usize;
    let mut expected: std::collections::HashMap<(String, String), (u64, u64)> = Default::default();
    for half in [0..users / 2, users / 2..users] {
        if half.start > 0 {
            let old = cluster.wait_leader(DEADLINE).await.unwrap();
            cluster.kill_coordinator(old).await.unwrap();
            cluster.wait_leader(DEADLINE).await.unwrap();
        }
        for (experiment, variant, converted) in visit(&shop_ports, half).await {
            let e = expected.entry((experiment.to_string(), variant)).or_default();
            e.0 += 1;
            e.1 += u64::from(converted);
        }
    }

    // The coordinator counts every user once, whichever hosts saw them, as the shops answered.
    let counts = |v: &serde_json::Value| -> Vec<(String, u64, u64)> {
        v["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["exposed"].as_u64().unwrap(),
                    r["converted"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    for experiment in ["checkout", "banner"] {
        let want: u64 = users as u64;
        let view = wait_for(&format!("{experiment}'s reports to arrive"), DEADLINE, || async {
            let v = experiment_json(&cluster, experiment).await;
            let exposed: u64 = counts(&v).iter().map(|c| c.1).sum();
            Ok((exposed >= want).then_some(v))
        })
        .await
        .unwrap();
        for (variant, exposed, converted) in counts(&view) {
            let (e, c) = expected.get(&(experiment.to_string(), variant.clone())).copied().unwrap_or_default();
            assert_eq!((exposed, converted), (e, c), "{experiment}/{variant}: coordinator vs what the shops answered");
        }
        assert_eq!(view["srm"]["mismatch"], false, "{view:#}");
    }
    let checkout = experiment_json(&cluster, "checkout").await;
    assert_eq!(checkout["winner"], "new_checkout", "{checkout:#}");
    assert_eq!(checkout["variants"][1]["verdict"], "win", "{checkout:#}");
    assert_eq!(checkout["variants"][1]["conversion"]["significant"], true);
    let lift_ci = checkout["variants"][1]["conversion"]["lift_ci"].as_array().unwrap();
    assert!(lift_ci[0].as_f64().unwrap() > 0.0, "{checkout:#}");
    let banner = experiment_json(&cluster, "banner").await;
    assert!(banner["winner"].is_null(), "an A/A test has no winner: {banner:#}");
    assert_eq!(banner["variants"][1]["verdict"], "inconclusive", "{banner:#}");
    let out = cli(&cluster, &admin, &["experiment", "show", "checkout"]).await;
    let table = text(&out.stdout);
    assert!(table.contains("new_checkout") && table.contains("win") && table.contains("Sample ratio"), "{table}");
    let out = cli(&cluster, &admin, &["experiment", "list"]).await;
    assert!(text(&out.stdout).contains("ramp-check"), "{}", text(&out.stdout));

    // Stop with a winner: every host gives everyone new_checkout.
    let out = cli(&cluster, &admin, &["experiment", "stop", "checkout", "--winner", "new_checkout"]).await;
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    wait_for("every host to serve the winner", DEADLINE, || async {
        for s in &sidecars {
            for i in 0..30 {
                if assign(*s, "checkout", &format!("after-{i}")).await != "new_checkout" {
                    return Ok(None);
                }
            }
        }
        Ok(Some(()))
    })
    .await
    .unwrap();
    let out =
        cli(&cluster, &admin, &["experiment", "ramp", "checkout", "--variants", "control=0,new_checkout=100"]).await;
    assert!(text(&out.stderr).contains("stopped"), "{}", text(&out.stderr));

    // Delete: refused while running; once stopped, it goes, and every sidecar forgets it.
    let out = cli(&cluster, &admin, &["experiment", "delete", "banner"]).await;
    assert!(!out.status.success() && text(&out.stderr).contains("stop it first"), "{}", text(&out.stderr));
    let out = cli(&cluster, &admin, &["experiment", "delete", "checkout"]).await;
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    wait_for("every sidecar to forget the deleted experiment", DEADLINE, || async {
        for s in &sidecars {
            let (status, _) = http(*s, "GET", "/v1/assign/checkout/u1", "").await?;
            if status != 404 {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .unwrap();
    let out = cli(&cluster, &admin, &["experiment", "list"]).await;
    let list = text(&out.stdout);
    assert!(!list.contains("checkout") && list.contains("banner"), "{list}");

    drop(shops);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- monitoring and alerting ----------------------------------------------------------------

use fifty::alerts::ops::AlertsView;
use fifty::alerts::AlertView;

/// The alert of `rule` for `subject`, once it satisfies `done`.
async fn wait_alert(
    cluster: &LocalCluster,
    what: &str,
    rule: &str,
    subject: &str,
    done: fn(&AlertView) -> bool,
) -> AlertView {
    wait_for(what, DEADLINE, || {
        let client = cluster.client();
        let (rule, subject) = (rule.to_string(), subject.to_string());
        async move {
            let v: AlertsView = client.get("/v1/alerts?limit=100").await?;
            Ok(v.recent.into_iter().find(|a| a.rule_name == rule && a.subject == subject && done(a)))
        }
    })
    .await
    .unwrap()
}

/// The webhook bodies of `kind` naming `needle`.
fn hook_bodies(hook: &fifty::local::WebhookReceiver, kind: &str, needle: &str) -> Vec<serde_json::Value> {
    hook.received()
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .filter(|v| v["kind"] == kind && v["title"].as_str().is_some_and(|t| t.contains(needle)))
        .collect()
}

/// A killed agent fires the host-down rule after its duration and resolves when the agent is back;
/// an error-rate rule fires when the sample service's failure rate is raised and resolves when it
/// is lowered; a silenced rule's alerts are recorded but send nothing; the first delivery fails
/// and is retried, and each event reaches the webhook once; `/metrics` parses as Prometheus text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_resolve_and_notify_once() {
    let dir = test_dir("alerts");
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), Options::default()).await.unwrap();
    cluster.add_agent("build-1", "role=build,slots=2").await.unwrap();
    let mut ports = Vec::new();
    for i in 1..=2 {
        let port = fifty::local::free_port().unwrap();
        ports.push(port);
        cluster.add_agent_with(&format!("web-{i}"), "role=prod", &format!("port={port}")).await.unwrap();
    }
    cluster.wait_reporting(&["build-1", "web-1", "web-2"], DEADLINE).await.unwrap();
    let admin = cluster.admin_token.clone();
    let hook = fifty::local::WebhookReceiver::start_failing(1).unwrap();
    let added = cli(&cluster, &admin, &["webhook", "add", &hook.url()]).await;
    assert!(added.status.success(), "{}", said(&added));

    // Rules: a bad one is refused with the field named; good ones are listed.
    let bad = cli(&cluster, &admin, &["alert", "rule", "add", "hot", "--kind", "cpu"]).await;
    assert!(!bad.status.success() && said(&bad).contains("threshold"), "{}", said(&bad));
    for args in [
        &["host-down", "--kind", "host_down", "--for", "5s", "--severity", "critical"][..],
        &["quiet-down", "--kind", "host_down", "--for", "1s"][..],
        &["shop-errors", "--kind", "error_rate", "--threshold", "10%", "--for", "3s", "--pool", "role=prod"][..],
    ] {
        let out = cli(&cluster, &admin, &[&["alert", "rule", "add"][..], args].concat()).await;
        assert!(out.status.success(), "{}", said(&out));
    }
    let silence = cli(&cluster, &admin, &["alert", "silence", "quiet-down", "--for", "1h"]).await;
    assert!(silence.status.success() && said(&silence).contains("until"), "{}", said(&silence));
    let listed = cli(&cluster, &admin, &["alert", "rule", "list"]).await;
    assert!(said(&listed).contains("pool role=prod error_rate above 10%"), "{}", said(&listed));

    // The sample shop, watched so that agents report its error_rate, serving under load.
    let ci = token(&cluster, "ci", None).await;
    let repo =
        SampleRepo::create(&dir, &cluster, "shop", &ci.token, None, fifty::sample_app::Steps::Immune).await.unwrap();
    let first = repo.git_head().await;
    assert!(repo.push().await.unwrap().status.success());
    let r1 = wait_release(&cluster, &first).await;
    let done = wait_rollout(&cluster, r1, Phase::Done).await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    wait_serving(&ports, &first[..10]).await;
    let _load = fifty::sample_app::Load::start(&ports, 40);

    // A killed agent: the host-down alert fires after the heartbeat timeout plus 5 s, once.
    let killed = std::time::Instant::now();
    cluster.kill_agent("build-1").await.unwrap();
    let fired = wait_alert(&cluster, "host-down firing", "host-down", "build-1", |_| true).await;
    let bodies = wait_for("the host-down webhook", DEADLINE, || {
        let b = hook_bodies(&hook, "alert.firing", "host-down firing: build-1");
        async move { Ok((!b.is_empty()).then_some(b)) }
    })
    .await
    .unwrap();
    println!("host-down: agent killed → webhook delivered in {:.1}s", killed.elapsed().as_secs_f64());
    let since = humantime::parse_rfc3339(&fired.since).unwrap();
    let at = humantime::parse_rfc3339(&fired.fired_at).unwrap();
    assert!(at.duration_since(since).unwrap() >= Duration::from_secs(5), "fired before its duration: {fired:#?}");
    assert_eq!(bodies[0]["title"], "[critical] host-down firing: build-1");
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen[0].1, 500, "the first try failed and was retried: {seen:?}");
    // The silenced rule fired too, recorded as silenced, and sent nothing.
    let quiet = wait_alert(&cluster, "quiet-down firing", "quiet-down", "build-1", |_| true).await;
    assert!(quiet.silenced && quiet.notifications.is_empty(), "{quiet:#?}");

    // It comes back: resolved, once.
    cluster.start_agent("build-1").unwrap();
    let resolved = wait_alert(&cluster, "host-down resolved", "host-down", "build-1", |a| a.state == "resolved").await;
    assert_eq!(resolved.id, fired.id);
    wait_for("the resolution webhook", DEADLINE, || {
        let n = hook_bodies(&hook, "alert.resolved", "host-down for build-1").len();
        async move { Ok((n > 0).then_some(())) }
    })
    .await
    .unwrap();
    // The critical alert opened an incident, whose timeline has the firing and the resolution.
    let incidents: Vec<IncidentView> = cluster.client().get("/v1/incidents").await.unwrap();
    let opened = incidents.iter().find(|i| i.title == "host-down firing: build-1").expect("an incident");
    let story: Vec<&str> = opened.timeline.iter().map(|(_, e)| e.as_str()).collect();
    assert!(story.iter().any(|e| e.ends_with("fired; incident opened")), "{story:?}");
    assert!(story.iter().any(|e| e.contains("resolved")), "{story:?}");

    // The shop starts failing half its requests: the error-rate alert fires; back to none: resolves.
    let set_rate = |rate: &str| {
        for i in 1..=2 {
            let path = cluster.agent_dir(&format!("web-{i}")).join("current").join("ERROR_RATE");
            std::fs::write(&path, format!("{rate}\n")).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    };
    set_rate("0.5");
    let errors = wait_alert(&cluster, "shop-errors firing", "shop-errors", "pool role=prod", |_| true).await;
    assert!(errors.summary.starts_with("error_rate "), "{errors:#?}");
    set_rate("0");
    wait_alert(&cluster, "shop-errors resolved", "shop-errors", "pool role=prod", |a| a.state == "resolved").await;
    wait_for("the error-rate webhooks", DEADLINE, || {
        let n = (
            hook_bodies(&hook, "alert.firing", "shop-errors firing").len(),
            hook_bodies(&hook, "alert.resolved", "shop-errors for pool").len(),
        );
        async move { Ok((n == (1, 1)).then_some(())) }
    })
    .await
    .unwrap();

    // Each event reached the webhook once; the silenced rule sent nothing.
    let all = hook.received();
    assert!(!all.iter().any(|b| b.contains("quiet-down")), "the silenced rule sent: {all:#?}");
    assert_eq!(hook_bodies(&hook, "alert.firing", "host-down firing: build-1").len(), 1, "{all:#?}");
    assert_eq!(hook_bodies(&hook, "alert.resolved", "host-down for build-1").len(), 1, "{all:#?}");
    let deliveries: Vec<String> =
        hook.seen.lock().unwrap().iter().filter(|(_, s)| *s == 200).map(|(d, _)| d.clone()).collect();
    let unique: std::collections::HashSet<_> = deliveries.iter().collect();
    assert_eq!(unique.len(), deliveries.len(), "a notification was delivered twice: {deliveries:?}");

    // What people see.
    let alerts = cli(&cluster, &admin, &["alerts"]).await;
    let shown = said(&alerts);
    assert!(
        shown.contains("Recently resolved:") && shown.contains("host-down") && shown.contains("shop-errors"),
        "{shown}"
    );
    let ack = cli(&cluster, &admin, &["alert", "ack", &fired.id.to_string()]).await;
    assert!(ack.status.success() && said(&ack).contains("acknowledged"), "{}", said(&ack));
    let top = cli(&cluster, &admin, &["top", "--once"]).await;
    assert!(top.status.success() && said(&top).contains("web-1") && said(&top).contains("ready"), "{}", said(&top));
    let series = cli(&cluster, &admin, &["metrics", "web-1", "--since", "5m", "--json"]).await;
    let series: serde_json::Value = serde_json::from_str(&text(&series.stdout)).unwrap();
    let points = series["points"].as_array().unwrap();
    assert!(points.iter().any(|p| p["ratios"]["error_rate"].as_f64().is_some_and(|r| r > 0.1)), "{series:#}");
    assert!(points.iter().any(|p| p["cpu_percent"].is_number()), "{series:#}");

    // /metrics parses as Prometheus text and says what the cluster is doing.
    let exposition = cluster.client().get_text("/metrics").await.unwrap();
    let lines = exposition.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape.samples.iter().find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v))).map(
            |s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            },
        )
    };
    assert_eq!(value("fifty_raft_is_leader", None), Some(1.0), "{exposition}");
    assert!(value("fifty_raft_term", None).is_some_and(|t| t >= 1.0), "{exposition}");
    assert!(value("fifty_raft_commit_index", None).is_some_and(|t| t >= 1.0), "{exposition}");
    assert_eq!(value("fifty_alerts", Some(("state", "firing"))), Some(0.0), "{exposition}");
    assert_eq!(value("fifty_hosts", Some(("state", "ready"))), Some(3.0), "{exposition}");
    assert!(value("fifty_heartbeats_total", None).is_some_and(|v| v > 0.0), "{exposition}");
}
