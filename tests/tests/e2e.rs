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

    // Anyone holding a (multi-use) join token tries to take web-1's name while it runs: refused,
    // and the real web-1 keeps its certificate, its labels and its link.
    let out =
        cli(&cluster, &cluster.admin_token, &["token", "create", "--role", "agent", "--max-uses", "0", "--json"]).await;
    let multi: TokenCreated = serde_json::from_slice(&out.stdout).expect("token JSON");
    let thief = dir.join("thief");
    let out = join_into(&cluster, &thief, "web-1", "role=evil", &multi.token).await;
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains("a host named web-1 is already enrolled"), "{said}");
    assert!(said.contains("fifty host remove web-1"), "the way out is named: {said}");
    assert!(!thief.join("identity").exists(), "nothing was written for the refused join");

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

    // A real agent holding such a certificate is told so and stops at once, instead of trying
    // again forever; the coordinator counts each refusal.
    let refused_before = refused_handshakes(&cluster, "certificate").await;
    assert!(refused_before >= 1.0, "the probe above was counted");
    foreign_agent(&cluster, "intruder");
    cluster.adopt_agent("intruder");
    cluster.start_agent("intruder").unwrap();
    let status = cluster.wait_agent_exit("intruder", DEADLINE).await.unwrap();
    assert!(!status.success());
    let log = cluster.log_tail("intruder", 5);
    assert!(log.contains("rejected this host's certificate in the TLS handshake"), "{log}");
    assert!(log.contains("fifty-agent join"), "{log}");
    let refused = refused_handshakes(&cluster, "certificate").await - refused_before;
    assert!((1.0..=3.0).contains(&refused), "the agent tried {refused} times");

    // A host may fetch only artifacts a release of its own calls for.
    cluster.kill_agent("web-2").await.unwrap();
    let answer = fetch_artifact_as(&cluster, "web-2", &"ab".repeat(32)).await;
    assert!(answer.contains("no release with artifact") && answer.contains("targets host web-2"), "{answer}");
    cluster.start_agent("web-2").unwrap();
    cluster.wait_hosts(&["web-1", "web-2"], HostState::Ready, DEADLINE).await.unwrap();

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
    assert!(refused_handshakes(&cluster, "revoked").await >= 1.0);
    let hosts = cluster.hosts().await.unwrap();
    assert_eq!(hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["web-1"]);

    // Key material is its owner's only: every dir of the coordinator's data dir (sled's included)
    // is 0700 and every file 0600; so are the host's identity and agent.toml.
    assert_private_tree(&dir.join("coord-1"));
    assert_private_tree(&cluster.agent_dir("web-1").join("identity"));
    assert_private_tree(&cluster.agent_dir("web-1").join("agent.toml"));

    // Several agents on one machine: joined without --sidecar into data dirs side by side, each
    // gets an A/B sidecar port of its own (the default 127.0.0.1:7072 to the first if it is free).
    let mut listens = Vec::new();
    for name in ["side-a", "side-b"] {
        let join = token(&cluster, "agent", None).await;
        let out = join_into(&cluster, &cluster.agent_dir(name), name, "role=prod", &join.token).await;
        assert!(out.status.success(), "join {name}: {}", text(&out.stderr));
        let listen = cluster.sidecar(name).unwrap();
        if listens.first().is_some_and(|first: &std::net::SocketAddr| first.port() == 7072) {
            assert!(text(&out.stdout).contains("is taken on this host"), "{}", text(&out.stdout));
        }
        listens.push(listen);
    }
    assert_ne!(listens[0], listens[1], "two agents on one host share no sidecar port");
    assert_ne!(listens[1], cluster.sidecar("web-1").unwrap());

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `fifty-agent join` for `name` into the data dir `data`.
async fn join_into(cluster: &LocalCluster, data: &std::path::Path, name: &str, labels: &str, token: &str) -> Output {
    tokio::process::Command::new(cluster.bin_dir.join("fifty-agent"))
        .args(["join", "--coordinator", &cluster.quic().to_string(), "--token", token, "--name", name])
        .args(["--labels", labels])
        .arg("--data-dir")
        .arg(data)
        .output()
        .await
        .expect("run fifty-agent join")
}

/// `fifty_handshakes_refused_total{reason="REASON"}` on /metrics (0 when absent).
async fn refused_handshakes(cluster: &LocalCluster, reason: &str) -> f64 {
    let metrics = cluster.client().get_text("/metrics").await.unwrap();
    let series = format!("fifty_handshakes_refused_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series)).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Makes an agent data dir for `name` whose certificate another CA signed (the cluster's CA is
/// trusted, so the agent gets as far as presenting it), set up as `fifty-agent join` would.
fn foreign_agent(cluster: &LocalCluster, name: &str) {
    use fifty_shared::ids::HostName;
    use fifty_shared::tls;
    let data = cluster.agent_dir(name);
    let other_ca = tls::new_cluster_ca().unwrap();
    let host = HostName::new(name).unwrap();
    let (key_pem, csr) = tls::new_host_key_and_csr(&host).unwrap();
    let cert_pem = tls::sign_host_csr(&other_ca, &csr, &host, &tls::random_serial()).unwrap();
    let ids = data.join("identity");
    fifty_shared::config::create_private_dir(&ids).unwrap();
    fifty_shared::config::write_private(&ids.join("key.pem"), &key_pem).unwrap();
    fifty_shared::config::write_private(&ids.join("cert.pem"), &cert_pem).unwrap();
    fifty_shared::config::write_private(&ids.join("ca.pem"), &std::fs::read_to_string(cluster.ca_path()).unwrap())
        .unwrap();
    let config = format!("data_dir = {:?}\ncoordinators = [\"{}\"]\n", data.display().to_string(), cluster.quic());
    fifty_shared::config::write_private(&data.join("agent.toml"), &config).unwrap();
}

/// Dials the agent link as `host` (with its real identity, its agent stopped), asks for the
/// artifact `digest`, and returns why the coordinator sent no data.
async fn fetch_artifact_as(cluster: &LocalCluster, host: &str, digest: &str) -> String {
    use fifty_shared::codec::{read_frame, write_frame};
    use fifty_shared::wire::{AgentMsg, CoordinatorMsg, DownloadRequest, DownloadResponse};
    let ids = cluster.agent_dir(host).join("identity");
    let read = |f: &str| std::fs::read_to_string(ids.join(f)).unwrap();
    let cert = fifty_shared::tls::CertAndKey { cert_pem: read("cert.pem"), key_pem: read("key.pem") };
    let config = fifty_shared::tls::quic_client_config(&read("ca.pem"), &cert, fifty_shared::wire::ALPN_AGENT).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let attempt = async {
        let conn = endpoint.connect(cluster.quic(), fifty_shared::tls::COORDINATOR_NAME)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &AgentMsg::Hello { agent_version: "probe".into() }).await?;
        write_frame(&mut send, &AgentMsg::FetchArtifact { digest: digest.to_string(), offset: 0 }).await?;
        // As an agent does: the coordinators' stream comes second, before any download stream.
        let (mut members, _members_recv) = conn.open_bi().await?;
        write_frame(&mut members, &AgentMsg::Hello { agent_version: "probe".into() }).await?;
        loop {
            match read_frame::<CoordinatorMsg, _>(&mut recv).await? {
                Some(CoordinatorMsg::ArtifactData { data, missing, .. }) => {
                    assert!(data.is_empty(), "artifact bytes were served");
                    let missing = missing.unwrap_or_default();
                    // The same refusal on download streams: the piece table and a piece.
                    for request in [
                        DownloadRequest::PieceTable { digest: digest.to_string() },
                        DownloadRequest::Piece { digest: digest.to_string(), index: 0 },
                    ] {
                        let (mut send, mut recv) = conn.open_bi().await?;
                        write_frame(&mut send, &request).await?;
                        send.finish()?;
                        match read_frame::<DownloadResponse, _>(&mut recv).await? {
                            Some(DownloadResponse::Refused { reason }) => assert_eq!(reason, missing, "{request:?}"),
                            other => panic!("{request:?} was answered {other:?}"),
                        }
                    }
                    conn.close(0u32.into(), b"done");
                    return anyhow::Ok(missing);
                }
                Some(_) => continue,
                None => anyhow::bail!("the coordinator closed the link without answering"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, attempt).await.expect("an answer").unwrap()
}

/// Every dir under `root` (and `root`) is 0700 and every file 0600.
fn assert_private_tree(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut todo = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() {
            assert_eq!(mode, 0o600, "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen > 0, "no file under {}", root.display());
}

/// A coordinator whose data dir other local users can reach refuses to start, naming the dir
/// and the fix; tightened, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_refuses_a_data_dir_open_to_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = test_dir("modes");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = tokio::process::Command::new(bin_dir().unwrap().join("fifty"))
        .args(["server", "--http-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, server).await.expect("the server stops by itself").unwrap();
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains(&format!("directory {} is mode 0755", data.display())), "{said}");
    assert!(said.contains(&format!("chmod 700 {}", data.display())), "{said}");
    assert!(!data.join("state").exists(), "nothing was created in it");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every non-comment line of a Prometheus text exposition is `name{labels} value`.
fn check_exposition(text: &str) {
    assert!(!text.contains("# EOF"), "the default format is Prometheus text, not OpenMetrics");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "name of {line}");
        assert_eq!(series.contains('{'), series.ends_with('}'), "labels of {line}");
    }
}

/// One raw request to coordinator `i`'s API: status, content type and body as text.
async fn raw(
    cluster: &LocalCluster,
    i: usize,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String, String) {
    let ca = std::fs::read_to_string(cluster.ca_path()).unwrap();
    let client = fifty::cli::Client::new(&format!("https://{}", cluster.coordinators[i].http), None, &ca).unwrap();
    let headers: Vec<_> = headers
        .iter()
        .map(|(k, v)| {
            (
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect();
    let (status, content_type, bytes) = client
        .forward(method.clone(), path, &headers, bytes(body))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    let content_type = content_type.map(|c| c.to_str().unwrap_or("").to_string()).unwrap_or_default();
    (status.as_u16(), content_type, text(&bytes))
}

fn bytes(v: Vec<u8>) -> hyper::body::Bytes {
    hyper::body::Bytes::from(v)
}

/// promtool, from Debian's `prometheus` package (scripts/test installs it).
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.exists());
    found.expect("promtool is not installed: `apt-get install prometheus` (scripts/test does it when run as root)")
}

/// Runs `promtool` with `args`, `input` on standard input; returns whether it passed and what it said.
fn run_promtool(args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(promtool())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", text(&out.stdout), text(&out.stderr)))
}

/// The API, probed as a hostile client would on a cluster of three: every route of the router's
/// table against every kind of credential, through a follower (so forwarding keeps the rules);
/// bounded durations; oversized bodies; `/metrics` in both formats checked by promtool; the CLI's
/// CA errors; and a paused leader, which a follower must not wait on for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_checks_every_route_bounds_its_input_and_does_not_wait_on_a_paused_leader() {
    use fifty::api::{routes, Access};
    use fifty_shared::ids::Role;
    use hyper::Method;

    let dir = test_dir("api");
    let options = Options { coordinators: 3, fault_injection: true, ..Options::default() };
    let cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let admin = cluster.admin_token.clone();

    // Durations are bounded and named; 0 is refused; the listing still works.
    let huge = br#"{"role":"read","ttl":"18446744073709551615s"}"#.to_vec();
    let bearer = format!("Bearer {admin}");
    let json = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let (status, _, body) = raw(&cluster, follower, Method::POST, "/v1/tokens", &json, huge).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ttl") && body.contains("maximum, 10years"), "{body}");
    for (ttl, says) in [("100000000h", "maximum, 10years"), ("0s", "already expired")] {
        let out = cli(&cluster, &admin, &["token", "create", "--role", "read", "--ttl", ttl]).await;
        assert!(!out.status.success() && text(&out.stderr).contains(says), "--ttl {ttl}: {}", text(&out.stderr));
    }
    let out = cli(&cluster, &admin, &["token", "list"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rule = br#"{"name":"probe-down","kind":"host_down","for":"5m"}"#.to_vec();
    let (status, _, body) = raw(&cluster, follower, Method::POST, "/v1/alerts/rules", &json, rule).await;
    assert_eq!(status, 200, "{body}");
    let silence = br#"{"for":"100000000h"}"#.to_vec();
    let (status, _, body) =
        raw(&cluster, follower, Method::POST, "/v1/alerts/rules/probe-down/silence", &json, silence).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("for: ") && body.contains("maximum, 10years"), "{body}");

    // Credentials of every kind.
    let read = token(&cluster, "read", None).await;
    let ci = token(&cluster, "ci", None).await;
    let join = token(&cluster, "agent", None).await;
    let revoked = token(&cluster, "admin", None).await;
    let out = cli(&cluster, &admin, &["token", "revoke", &revoked.accessor]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expired = token(&cluster, "admin", Some("1s")).await;
    wait_for("the short token to expire", DEADLINE, || async {
        let tokens: Vec<TokenView> = cluster.client().get("/v1/tokens").await?;
        Ok(tokens.iter().any(|t| t.accessor == expired.accessor && t.expired).then_some(()))
    })
    .await
    .unwrap();
    let credentials: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("wrong", Some(format!("Bearer fifty_{}", "0".repeat(64)))),
        ("join token", Some(format!("Bearer {}", join.token))),
        ("read", Some(format!("Bearer {}", read.token))),
        ("ci", Some(format!("Bearer {}", ci.token))),
        ("admin", Some(format!("bearer {admin}"))),
        ("revoked", Some(format!("Bearer {}", revoked.token))),
        ("expired", Some(format!("Bearer {}", expired.token))),
    ];

    // The table the router is built from: every route has a role, none twice.
    let table = routes();
    assert!(table.len() >= 45, "{} routes", table.len());
    let mut seen = std::collections::HashSet::new();
    for r in &table {
        assert!(seen.insert((r.method.clone(), r.path)), "{} {} is in the table twice", r.method, r.path);
    }
    // The policy, stated apart from the table: reads need `read` (tokens: `admin`), notifying
    // commits needs `ci`, every other write `admin`; only health and the signed webhook are open.
    for r in &table {
        let policy = match (&r.method, r.path) {
            (_, "/v1/health" | "/v1/webhooks/github") => Access::Public,
            (_, "/v1/repos/{repo}/commits") => Access::Token(Role::Ci),
            // A backup holds the CA key and every token's hash.
            (_, "/v1/snapshot") => Access::Token(Role::Admin),
            (&Method::GET, p) if !p.starts_with("/v1/tokens") => Access::Token(Role::Read),
            _ => Access::Token(Role::Admin),
        };
        assert_eq!(r.access, policy, "{} {}", r.method, r.path);
    }
    let access = |m: Method, p: &str| table.iter().find(|r| r.method == m && r.path == p).map(|r| r.access);
    assert_eq!(access(Method::GET, "/v1/health"), Some(Access::Public));
    assert_eq!(access(Method::POST, "/v1/webhooks/github"), Some(Access::Public));
    assert_eq!(access(Method::GET, "/metrics"), Some(Access::Token(Role::Read)));
    assert_eq!(access(Method::POST, "/v1/repos/{repo}/commits"), Some(Access::Token(Role::Ci)));
    assert_eq!(access(Method::POST, "/v1/tokens"), Some(Access::Token(Role::Admin)));
    assert_eq!(access(Method::POST, "/v1/debug/deploy"), Some(Access::Token(Role::Admin)));

    // Every route × every credential, through a follower. Parameters name nothing that exists
    // and bodies do not decode, so an allowed call changes nothing.
    let mut wrong = Vec::new();
    for r in &table {
        let path =
            r.path.split('/').map(|seg| if seg.starts_with('{') { "probe" } else { seg }).collect::<Vec<_>>().join("/");
        for (who, auth) in &credentials {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(a) = auth {
                headers.push(("authorization", a.as_str()));
            }
            let body = if r.method == Method::GET { Vec::new() } else { b"[]".to_vec() };
            let (status, content_type, answer) = raw(&cluster, follower, r.method.clone(), &path, &headers, body).await;
            if status >= 400 && !content_type.starts_with("application/json") {
                wrong.push(format!("{} {path} as {who}: {status} is not JSON ({content_type}): {answer}", r.method));
            }
            let allowed = match (r.access, *who) {
                (Access::Public, _) => true,
                (_, "none" | "wrong" | "join token" | "revoked" | "expired") => false,
                (Access::Token(Role::Read), _) => true,
                (Access::Token(Role::Ci), who) => who != "read",
                (Access::Token(_), who) => who == "admin",
            };
            let ok = match (r.access, *who) {
                _ if allowed => status < 500 && status != 401 && status != 403,
                (_, "none" | "wrong" | "join token" | "revoked" | "expired") => status == 401,
                (Access::Token(needed), _) => status == 403 && answer.contains(&format!("it needs {needed}")),
                (Access::Public, _) => unreachable!("public routes are allowed"),
            };
            if !ok {
                wrong.push(format!("{} {path} as {who}: {status} {answer}", r.method));
            }
        }
    }
    assert!(wrong.is_empty(), "{} wrong answers:\n{}", wrong.len(), wrong.join("\n"));

    // An oversized body, sent whole as most clients do: 413, as JSON, before it is forwarded
    // (the coordinator reads the rest of it and throws it away, so the answer is not lost to a
    // reset connection).
    let (status, content_type, body) =
        raw(&cluster, follower, Method::POST, "/v1/tokens", &json, vec![b' '; 2 << 20]).await;
    assert_eq!(status, 413, "{body}");
    assert!(content_type.starts_with("application/json") && body.contains("\"error\""), "{content_type} {body}");

    // /metrics: Prometheus text 0.0.4 unless OpenMetrics is asked for; promtool accepts both.
    let auth = format!("Bearer {}", read.token);
    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(accept.map(|a| ("accept", a)));
        let (status, content_type, exposition) =
            raw(&cluster, follower, Method::GET, "/metrics", &headers, vec![]).await;
        assert_eq!((status, content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"), "{accept:?}");
        assert!(exposition.contains("# TYPE fifty_heartbeats_total counter"), "{exposition}");
        check_exposition(&exposition);
        let (passed, said) = run_promtool(&["check", "metrics"], &exposition);
        assert!(passed && said.trim().is_empty(), "promtool check metrics ({accept:?}): {said}\n{exposition}");
    }
    let openmetrics = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let headers = [("authorization", auth.as_str()), ("accept", openmetrics)];
    let (status, content_type, exposition) = raw(&cluster, follower, Method::GET, "/metrics", &headers, vec![]).await;
    assert_eq!((status, content_type.as_str()), (200, "application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(exposition.ends_with("# EOF\n") && exposition.contains("# TYPE fifty_heartbeats counter"), "{exposition}");
    // promtool's linter reads only the text format; its OpenMetrics parser (Prometheus's own,
    // used for backfilling) checks this one, given a timestamp on each sample.
    let stamped: String = exposition
        .lines()
        .map(|l| if l.starts_with('#') { format!("{l}\n") } else { format!("{l} 1700000000\n") })
        .collect();
    let file = dir.join("openmetrics.txt");
    std::fs::write(&file, stamped).unwrap();
    let blocks = dir.join("blocks");
    let (passed, said) = run_promtool(
        &["tsdb", "create-blocks-from", "openmetrics", file.to_str().unwrap(), blocks.to_str().unwrap()],
        "",
    );
    assert!(passed, "promtool's OpenMetrics parser refused the exposition: {said}\n{exposition}");

    // The CLI with the wrong CA file says so, naming it; a file that is no PEM is named too.
    let out = tokio::process::Command::new(cluster.bin_dir.join("fifty"))
        .args(["ca", "init", "--out"])
        .arg(dir.join("other-ca"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let not_pem = dir.join("not-a-ca.txt");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (cacert, says) in [
        (dir.join("other-ca").join("ca.pem"), "the coordinator's certificate is not signed by the CA in"),
        (not_pem.clone(), "holds no PEM certificate"),
    ] {
        let out = tokio::process::Command::new(cluster.bin_dir.join("fifty"))
            .arg("status")
            .env("FIFTY_ADDR", cluster.addr())
            .env("FIFTY_CACERT", &cacert)
            .env("FIFTY_TOKEN", &admin)
            .output()
            .await
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{stderr}");
        assert!(stderr.contains(cacert.to_str().unwrap()), "{stderr}");
    }

    // A paused leader: the follower answers 503 "retry" within seconds, reads and writes alike
    // (before, it waited 20 s or more), and serves again once the others elect a new leader.
    cluster.pause_coordinator(leader, true).unwrap();
    // Both at once, while the follower still knows the paused node as its leader.
    let timed = |method: Method, path: &'static str, body: Vec<u8>| {
        let (cluster, json) = (&cluster, &json);
        async move {
            let start = std::time::Instant::now();
            let answer = raw(cluster, follower, method.clone(), path, json, body).await;
            (method, path, answer, start.elapsed())
        }
    };
    let (write, read) = tokio::join!(
        timed(Method::POST, "/v1/tokens", br#"{"role":"read"}"#.to_vec()),
        timed(Method::GET, "/v1/hosts", Vec::new()),
    );
    for (method, path, (status, _, answer), took) in [write, read] {
        assert!(status == 503 && answer.contains("retry"), "{method} {path}: {status} {answer}");
        assert!(took < Duration::from_secs(10), "{method} {path} took {took:?}: {answer}");
    }
    wait_for("a new leader to answer through the follower", DEADLINE, || async {
        Ok(cluster.client_for(follower).get::<serde_json::Value>("/v1/status").await.ok())
    })
    .await
    .unwrap();
    cluster.pause_coordinator(leader, false).unwrap();

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
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

use fifty::cli::Client;
use fifty::local::Writer;
use fifty::views::{ClusterView, CreateToken};

/// Token descriptions as coordinator `i` itself holds them (a stale, local read), with counts.
async fn local_descriptions(cluster: &LocalCluster, i: usize) -> std::collections::HashMap<String, usize> {
    cluster.token_descriptions(i).await.unwrap()
}

/// Waits until every running coordinator has applied everything the leader committed.
async fn wait_converged(cluster: &LocalCluster) -> u64 {
    cluster.wait_converged(DEADLINE).await.unwrap()
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
    let writer = Writer::start(clients, Duration::from_secs(300));
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

    // A follower loses its disk. Restarted with its normal config, it finds its address still
    // a member under its old id: it refuses to join as a fourth voter and names the recovery.
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let victim = (leader + 1) % 3;
    let old_id = cluster.views().await.into_iter().find(|(i, _)| *i == victim).unwrap().1.node_id;
    cluster.kill_coordinator(victim).await.unwrap();
    cluster.wipe_coordinator(victim).unwrap();
    cluster.start_coordinator(victim).await.unwrap();
    let status = cluster.wait_coordinator_exit(victim, DEADLINE).await.unwrap();
    assert!(!status.success(), "a wiped coordinator restarted with its old config must stop: {status:?}");
    let victim_log = dir.join("logs").join(format!("coord-{}.log", victim + 1));
    let log = std::fs::read_to_string(&victim_log).unwrap();
    assert!(
        log.contains(&format!("coordinator {old_id} is still a member")) && log.contains("--replace"),
        "the refusal names the old member and the recovery: {}",
        cluster.log_tail(&format!("coord-{}", victim + 1), 5)
    );
    // The same through the leader when it is told to --join without --replace.
    let via = cluster.coordinators[leader].quic.to_string();
    cluster.start_coordinator_with(victim, &["--join", &via]).unwrap();
    let status = cluster.wait_coordinator_exit(victim, DEADLINE).await.unwrap();
    assert!(!status.success(), "--join without --replace must stop: {status:?}");
    let log = std::fs::read_to_string(&victim_log).unwrap();
    assert_eq!(
        log.matches("is still a member").count(),
        2,
        "{}",
        cluster.log_tail(&format!("coord-{}", victim + 1), 5)
    );
    let members: ClusterView = cluster.client().get("/v1/cluster/members").await.unwrap();
    assert_eq!(members.members.len(), 3, "the refused node was not added: {members:?}");
    assert!(members.members.iter().any(|m| m.id == old_id), "{members:?}");

    // With --replace it comes back: the leader removes the old id, adds the new node as a
    // learner, which catches up from a snapshot (the log was compacted long ago:
    // snapshot_threshold is 40 entries) and is then promoted to voter.
    cluster.rejoin_wiped(victim, true).await.unwrap();
    let members = wait_for("the replacement to become a voter", DEADLINE, || async {
        let view: ClusterView = cluster.client().get("/v1/cluster/members").await?;
        let replaced = !view.members.iter().any(|m| m.id == old_id);
        let all_voters = view.members.len() == 3 && view.members.iter().all(|m| m.voter && !m.learner);
        Ok((replaced && all_voters).then_some(view))
    })
    .await
    .unwrap();
    let new_id = cluster.views().await.into_iter().find(|(i, _)| *i == victim).unwrap().1.node_id;
    assert_ne!(new_id, old_id);
    assert!(members.members.iter().any(|m| m.id == new_id), "{members:?}");
    let commit = wait_converged(&cluster).await;
    let held = local_descriptions(&cluster, victim).await;
    assert!(acked.iter().all(|d| held.get(d) == Some(&1)), "the rejoined node misses writes (commit {commit})");
    let coord_log = std::fs::read_to_string(&victim_log).unwrap();
    assert!(
        coord_log.contains("installed a snapshot from the leader"),
        "the wiped node did not catch up from a snapshot"
    );
    // Learner first, voter once caught up: every member logs the two changes in that order.
    let survivor = (victim + 1) % 3;
    let survivor_log = std::fs::read_to_string(dir.join("logs").join(format!("coord-{}.log", survivor + 1))).unwrap();
    let line_of = |what: &str, id: &str| {
        survivor_log
            .lines()
            .position(|l| l.contains(what) && l.contains(id))
            .unwrap_or_else(|| panic!("no line with {what:?} for {id} in coord-{}'s log", survivor + 1))
    };
    let removed = line_of("removed from the cluster", &old_id);
    let learner = line_of("as a learner", &new_id);
    let voter = line_of("is now a voter", &new_id);
    assert!(removed < learner && learner < voter, "old id removed, then the new one a learner, then a voter");

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two of three coordinators lose their disks: the survivor alone has no quorum and cannot
/// commit. Restarted with `--force-new-cluster` it becomes the only voter with its data intact;
/// the two wiped coordinators join it again (at once: one waits for the other's change) and
/// writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_quorum_is_recovered_with_force_new_cluster() {
    let dir = test_dir("quorum");
    let options = Options { coordinators: 3, ..Options::default() };
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();
    let survivor = cluster.wait_leader(DEADLINE).await.unwrap();
    let token = |d: &str| CreateToken { role: "read".into(), ttl: None, max_uses: None, description: d.into() };
    for i in 0..5 {
        cluster.client_for(survivor).post::<TokenCreated>("/v1/tokens", &token(&format!("before-{i}"))).await.unwrap();
    }
    let lost: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    for i in &lost {
        cluster.kill_coordinator(*i).await.unwrap();
        cluster.wipe_coordinator(*i).unwrap();
    }
    let refused = cluster.client_for(survivor).post::<TokenCreated>("/v1/tokens", &token("no-quorum")).await;
    assert!(refused.is_err(), "one coordinator of three committed a write: {refused:?}");

    cluster.kill_coordinator(survivor).await.unwrap();
    cluster.start_coordinator_with(survivor, &["--force-new-cluster"]).unwrap();
    assert_eq!(cluster.wait_leader(DEADLINE).await.unwrap(), survivor);
    let log = std::fs::read_to_string(dir.join("logs").join(format!("coord-{}.log", survivor + 1))).unwrap();
    assert!(log.contains("FORCE NEW CLUSTER"), "the forced start is logged loudly");
    let members: ClusterView = cluster.client().get("/v1/cluster/members").await.unwrap();
    assert_eq!(members.members.len(), 1, "{members:?}");
    let held = local_descriptions(&cluster, survivor).await;
    assert!((0..5).all(|i| held.get(&format!("before-{i}")) == Some(&1)), "the survivor kept its data: {held:?}");
    assert_eq!(held.get("no-quorum"), None, "an uncommitted write was kept");

    for i in &lost {
        cluster.rejoin_wiped(*i, false).await.unwrap();
    }
    wait_for("three voters again", DEADLINE, || async {
        let view: ClusterView = cluster.client().get("/v1/cluster/members").await?;
        Ok((view.members.len() == 3 && view.members.iter().all(|m| m.voter)).then_some(()))
    })
    .await
    .unwrap();
    cluster.client_for(lost[0]).post::<TokenCreated>("/v1/tokens", &token("after")).await.unwrap();
    wait_converged(&cluster).await;
    for i in 0..3 {
        let held = local_descriptions(&cluster, i).await;
        assert!((0..5).all(|n| held.get(&format!("before-{n}")) == Some(&1)), "coordinator {i}: {held:?}");
        assert_eq!(held.get("after"), Some(&1), "coordinator {i}");
    }
    // With the survivor killed, the two rejoined coordinators still hold a quorum of three.
    cluster.kill_coordinator(survivor).await.unwrap();
    let next = cluster.wait_leader(DEADLINE).await.unwrap();
    cluster.client_for(next).post::<TokenCreated>("/v1/tokens", &token("after-survivor")).await.unwrap();

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

    // A follower whose state parts from the others' (a record written outside the log, as a
    // damaged disk or a bug could) is named by the check, and a `divergence` rule fires.
    let out = cli(&cluster, &cluster.admin_token, &["alert", "rule", "add", "states", "--kind", "divergence"]).await;
    assert!(out.status.success(), "alert rule add: {}", text(&out.stderr));
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let follower = (leader + 1) % 3;
    let _: serde_json::Value =
        cluster.client_for(follower).post("/v1/debug/raft", &serde_json::json!({ "fault": "diverge" })).await.unwrap();
    let out = cli(&cluster, &cluster.admin_token, &["cluster", "check"]).await;
    assert!(!out.status.success(), "a diverged follower must fail the check: {}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("DIFFERS") && text(&out.stdout).contains("NOT CONSISTENT"),
        "{}",
        text(&out.stdout)
    );
    wait_for("the divergence alert to fire", DEADLINE, || async {
        let out = cli(&cluster, &cluster.admin_token, &["alerts"]).await;
        Ok(text(&out.stdout).contains("states").then_some(()))
    })
    .await
    .unwrap();

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
    // part from the others'. Every coordinator runs this binary, so every one that applies it
    // stops: at least a quorum (the entry committed); a third that had not received it before
    // the others stopped never will.
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let _: serde_json::Value = cluster.client_for(leader).post("/v1/debug/raft", &fault("undecodable")).await.unwrap();
    let mut stopped = Vec::new();
    let until = std::time::Instant::now() + DEADLINE;
    while stopped.len() < 2 && std::time::Instant::now() < until {
        for i in cluster.running() {
            if let Ok(status) = cluster.wait_coordinator_exit(i, Duration::from_millis(200)).await {
                stopped.push((i, status));
            }
        }
    }
    assert!(stopped.len() >= 2, "only {stopped:?} stopped at the undecodable entry");
    for (i, status) in stopped {
        assert!(!status.success(), "coordinator {i}: {status:?}");
        let log = std::fs::read_to_string(dir.join("logs").join(format!("coord-{}.log", i + 1))).unwrap();
        assert!(log.contains("does not decode") && log.contains("upgrade this coordinator"), "coordinator {i}'s log");
    }

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 14 item 9: a coordinator's `state/db` cut by 4 KiB (a damaged disk) opened as an older,
/// self-consistent database that had forgotten acknowledged writes, and `fifty store check` said
/// "consistent". Now the check names the lost entries, and the coordinator refuses to start,
/// saying why and how to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_whose_disk_lost_acknowledged_entries_refuses_to_start() {
    let dir = test_dir("torn-tail");
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), Options::default()).await.unwrap();
    for n in 0..40 {
        let req = CreateToken { role: "read".into(), ttl: None, max_uses: None, description: format!("t-{n}") };
        cluster.client().post::<TokenCreated>("/v1/tokens", &req).await.unwrap();
    }
    // The flushed mark trails the log by at most 20 ms (it is written at most that often): wait
    // until it covers every acknowledged write, as it does on any disk a few moments after.
    let commit = cluster.views().await.first().map(|(_, v)| v.commit_index).unwrap();
    let mark_file = fifty::store::mark::path_in(&dir.join("coord-1").join("state"));
    wait_for("the flushed mark to cover the acknowledged writes", DEADLINE, || async {
        let mark = fifty::store::mark::read(&mark_file)?;
        Ok(mark.filter(|(_, m)| m.index >= commit).map(|_| ()))
    })
    .await
    .unwrap();
    cluster.kill_coordinator(0).await.unwrap();
    // Cut the file as the disk left it (opening it first would let sled rewrite its tail).
    let data = dir.join("coord-1");
    let db = data.join("state").join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(len - 4096).unwrap();

    let out = tokio::process::Command::new(cluster.bin_dir.join("fifty"))
        .args(["store", "check", "--data-dir"])
        .arg(&data)
        .output()
        .await
        .expect("run fifty store check");
    let report = text(&out.stdout);
    assert!(!out.status.success(), "store check called a truncated store consistent:\n{report}");
    assert!(report.contains("were flushed (raft-mark) but are gone"), "{report}");

    let server = tokio::process::Command::new(cluster.bin_dir.join("fifty"))
        .args(["server", "--config"])
        .arg(dir.join("coord-1.toml"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, server).await.expect("the damaged coordinator started and ran").unwrap();
    let said = text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("will not start") && said.contains("were flushed (raft-mark) but are gone"), "{said}");
    assert!(said.contains(&data.join("state").display().to_string()) && said.contains("--join"), "{said}");

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

    // Nobody deletes the gated branch, open gate or not; other branches go as they come, unless
    // their gate is closed. (Git itself refuses to delete the branch the bare repository's HEAD
    // names; the gated branch need not be that one.)
    assert!(git(&bare, &["symbolic-ref", "HEAD", "refs/heads/trunk"]).await.status.success());
    let out = git(&work, &["push", "-q", "origin", "--delete", "main"]).await;
    let said = text(&out.stderr);
    assert!(!out.status.success(), "main was deleted: {said}");
    assert!(said.contains("deleting main refused") && said.contains("branch Fifty tests"), "{said}");
    assert!(git(&bare, &["rev-parse", "--verify", "main"]).await.status.success(), "main is gone");
    for branch in ["spike", "held"] {
        let out = git(&work, &["push", "-q", "origin", &format!("HEAD:{branch}")]).await;
        assert!(out.status.success(), "push {branch}: {}", text(&out.stderr));
    }
    let out = git(&work, &["push", "-q", "origin", "--delete", "spike"]).await;
    assert!(out.status.success(), "deleting an ungated branch: {}", text(&out.stderr));
    let out =
        cli(&cluster, &cluster.admin_token, &["gate", "close", "shop", "--branch", "held", "--reason", "frozen"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = git(&work, &["push", "-q", "origin", "--delete", "held"]).await;
    let said = text(&out.stderr);
    assert!(!out.status.success() && said.contains("gate is closed") && said.contains("frozen"), "{said}");

    // What reaches git on build hosts is checked when a repository is added: 400, naming the field.
    let pwned = dir.join("PWNED");
    let upload_pack = format!("--url=--upload-pack=touch {}", pwned.display());
    for (args, field) in [
        (vec!["repo", "add", "evil", upload_pack.as_str()], "url"),
        (vec!["repo", "add", "evil", "--url=ext::sh -c touch% PWNED"], "url"),
        (vec!["repo", "add", "evil", "--url", bare.to_str().unwrap(), "--branch=--orphan"], "branch"),
        (vec!["repo", "add", "--url", bare.to_str().unwrap(), "--", "-evil"], "repository name"),
    ] {
        let out = cli(&cluster, &cluster.admin_token, &args).await;
        let said = text(&out.stderr);
        assert!(!out.status.success() && said.contains("400") && said.contains(field), "{args:?}: {said}");
    }
    assert!(!pwned.exists());

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
    // The tests leave their marks as the build hosts' job user, not as the test's.
    std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
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
    // Every test that passed is listed with its duration, slowest first.
    let listing = text(&out.stdout);
    assert!(listing.contains("\nDURATION  TEST\n"), "{listing}");
    assert!(listing.lines().any(|l| l.ends_with(" test_total") && l.split_whitespace().count() == 2), "{listing}");
    let out = cli(&cluster, &ci.token, &["test", "list", "shop", "--json"]).await;
    let listed: fifty::views::TestsView = serde_json::from_slice(&out.stdout).expect("test list --json");
    assert!(listed.tests.iter().any(|t| t.name == "test_total"), "{listed:?}");
    assert!(listed.tests.windows(2).all(|w| w[0].duration_secs >= w[1].duration_secs), "slowest first: {listed:?}");

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
                    let agent =
                        ["build-1", "build-2"].into_iter().find(|a| pwd.contains(&format!("/agents/{a}-jobs/")));
                    return Ok(agent.map(str::to_string));
                }
            }
            Ok(None)
        }
    })
    .await
    .unwrap();
    // The test ran as the job user `fifty-agent join` set up when run as root, not as the agent.
    {
        use std::os::unix::fs::MetadataExt;
        let mark = std::fs::read_dir(&marks)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&format!("started-{killed}")))
            .expect("the slow test's mark");
        let owner = mark.metadata().unwrap().uid();
        // SAFETY: plain syscall without arguments.
        let me = unsafe { libc::geteuid() };
        let toml = std::fs::read_to_string(cluster.agent_dir(&victim).join("agent.toml")).unwrap();
        if me == 0 {
            let out = std::process::Command::new("id").args(["-u", "fifty-job"]).output().unwrap();
            let job_uid: u32 = text(&out.stdout).trim().parse().expect("join as root creates the user fifty-job");
            assert_eq!(owner, job_uid, "the job ran as uid {owner}, not as fifty-job");
            assert!(toml.contains("[jobs]") && toml.contains("user = \"fifty-job\""), "{toml}");
        } else {
            assert_eq!(owner, me, "an agent that is not root runs jobs as itself");
        }
    }
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
    // `commit show` prints the lost attempt as lost, not in the state its job ended in.
    let out = cli(&cluster, &ci.token, &["commit", "show", &killed[..8]]).await;
    let shown = text(&out.stdout);
    let row = shown
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() > 4 && c[4] == victim && Some(c[0]) == lost.shard.map(|n| n.to_string()).as_deref())
        .unwrap_or_else(|| panic!("no row on {victim}: {shown}"));
    assert_eq!(row[1], "lost", "{shown}");
    cluster.start_agent(&victim).unwrap();

    // 7. A bad fifty.toml fails its commit with the key and the problem, and closes the gate.
    repo.edit("fifty.toml", "shards  = 2", "shards  = \"two\"").unwrap();
    let bad = repo.commit("Typo in the pipeline").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let view = wait_finished(&cluster, &bad, deadline).await;
    assert_eq!(view.summary.state, CommitState::Failed);
    let error = view.summary.error.clone().unwrap_or_default();
    // The line, the key and what was expected, then the line with a caret under the value.
    let line = std::fs::read_to_string(repo.work.join("fifty.toml"))
        .unwrap()
        .lines()
        .position(|l| l.starts_with("shards"))
        .unwrap()
        + 1;
    let first = format!("fifty.toml:{line}: key test.shards: invalid type: string \"two\", expected u32");
    assert!(error.starts_with(&format!("{first}\n")) && error.contains("|           ^^^^^"), "{error}");
    let out = cli(&cluster, &ci.token, &["gate", "check", "shop"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    // The gate's reason and the commit's summary carry that message, not only where parsing stopped.
    let out = cli(&cluster, &ci.token, &["gate", "status", "shop"]).await;
    let gate = text(&out.stdout);
    assert!(gate.lines().next().unwrap_or_default().ends_with(&first), "{gate}");
    assert!(gate.contains("^^^^^"), "{gate}");
    let out = cli(&cluster, &ci.token, &["commit", "show", &bad[..8]]).await;
    assert!(text(&out.stdout).contains(&format!("\n  {first}\n")), "{}", said(&out));
    // `fifty pipeline check` gives the same message offline, before a push.
    let checked = repo.work.join("fifty.toml");
    let out = cli(&cluster, "", &["pipeline", "check", checked.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert_eq!(text(&out.stdout).trim_end(), error, "{}", said(&out));

    // 8. Webhooks: a wrong signature is refused; a signed push is queued once per delivery.
    repo.edit("fifty.toml", "shards  = \"two\"", "shards  = 2").unwrap();
    let out = cli(&cluster, "", &["pipeline", "check", checked.to_str().unwrap()]).await;
    assert!(
        out.status.success() && text(&out.stdout).contains("2 shards (balanced by past durations"),
        "{}",
        said(&out)
    );
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
    // The tests leave their marks as the build hosts' job user, not as the test's.
    std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
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

/// Watches every coordinator's `/v1/hosts` (as the leader answers it, through whichever
/// coordinator answers) every 100 ms and records each host seen `down`, until stopped.
struct DownWatch {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl DownWatch {
    fn start(cluster: &LocalCluster) -> Self {
        use std::sync::atomic::Ordering;
        let clients: Vec<_> = (0..cluster.coordinators.len()).map(|i| cluster.client_for(i)).collect();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    for (i, client) in clients.iter().enumerate() {
                        // A stopped or dead coordinator does not answer: skip it.
                        let hosts =
                            tokio::time::timeout(Duration::from_secs(1), client.get::<Vec<HostView>>("/v1/hosts"));
                        if let Ok(Ok(hosts)) = hosts.await {
                            for h in hosts.iter().filter(|h| h.state == HostState::Down) {
                                seen.lock().unwrap().push(format!("{} down (asked coordinator {i})", h.name));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        DownWatch { seen, stop, task }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.task.await;
        self.seen.lock().unwrap().clone()
    }
}

/// Waits until every host in `names` has reported to a leader other than `old` (its last
/// heartbeat is one the current leader received) and returns how long that took from `since`.
async fn wait_reattached(cluster: &LocalCluster, old: usize, names: &[&str], since: std::time::Instant) -> Duration {
    wait_for(&format!("{} to report to a new leader", names.join(", ")), DEADLINE, || async {
        // Ask only the others, each briefly: `old` may be stopped, and would hold the question.
        let mut leader = None;
        for i in cluster.running().into_iter().filter(|i| *i != old) {
            let client = cluster.client_for(i);
            let view = client.get::<ClusterView>("/v1/cluster/members?stale=true");
            if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(1), view).await {
                if v.leader_id.as_deref() == Some(v.node_id.as_str()) {
                    leader = Some(i);
                }
            }
        }
        let Some(leader) = leader else { return Ok(None) };
        let client = cluster.client_for(leader);
        let hosts = client.get::<Vec<HostView>>("/v1/hosts?stale=true");
        let Ok(Ok(hosts)) = tokio::time::timeout(Duration::from_secs(1), hosts).await else { return Ok(None) };
        let all = names.iter().all(|n| {
            hosts.iter().any(|h| {
                h.name == *n
                    && h.state == HostState::Ready
                    && h.last_seen_secs_ago.is_some_and(|ago| ago < since.elapsed().as_secs_f64())
            })
        });
        Ok(all.then(|| since.elapsed()))
    })
    .await
    .unwrap()
}

/// Issue 20: a coordinator's failover or stall marks no host down and fires no alert. With a
/// `host_down` rule armed (1 s) and a webhook listening, the leader is killed with -9 while
/// three agents are attached: no host is ever shown down, no alert fires, every agent reports to
/// the new leader within seconds, and a CI run still completes. Then the new leader is stopped
/// (SIGSTOP) for 5 s and let go on: the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_failover_or_stall_marks_no_host_down_and_fires_no_alert() {
    let dir = test_dir("no-false-downs");
    let options = Options { coordinators: 3, ..Options::default() };
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();
    let agents = ["build-1", "web-1", "web-2"];
    cluster.add_agent("build-1", "role=build,slots=2").await.unwrap();
    cluster.add_agent("web-1", "role=prod").await.unwrap();
    cluster.add_agent("web-2", "role=prod").await.unwrap();
    cluster.wait_reporting(&agents, DEADLINE).await.unwrap();
    // Each agent learned every coordinator's address from the cluster, and kept it for a restart.
    let mut quic: Vec<String> = cluster.coordinators.iter().map(|c| c.quic.to_string()).collect();
    quic.sort();
    for name in agents {
        let file = cluster.agent_dir(name).join("coordinators");
        wait_for(&format!("{name} to keep the coordinators' addresses"), DEADLINE, || {
            let (file, quic) = (file.clone(), quic.clone());
            async move {
                let kept: Vec<String> =
                    std::fs::read_to_string(&file).unwrap_or_default().lines().map(String::from).collect();
                Ok((kept == quic).then_some(()))
            }
        })
        .await
        .unwrap();
    }
    let admin = cluster.admin_token.clone();
    let hook = fifty::local::WebhookReceiver::start().unwrap();
    let added = cli(&cluster, &admin, &["webhook", "add", &hook.url()]).await;
    assert!(added.status.success(), "{}", said(&added));
    let rule =
        cli(&cluster, &admin, &["alert", "rule", "add", "host-down", "--kind", "host_down", "--for", "1s"]).await;
    assert!(rule.status.success(), "{}", said(&rule));
    let ci = token(&cluster, "ci", None).await;
    let repo =
        SampleRepo::create(&dir, &cluster, "shop", &ci.token, None, fifty::sample_app::Steps::Test).await.unwrap();
    let base = repo.git_head().await;
    assert!(repo.push().await.unwrap().status.success());
    assert_eq!(wait_finished(&cluster, &base, Duration::from_secs(120)).await.summary.state, CommitState::Passed);

    let watch = DownWatch::start(&cluster);
    // 1. kill -9 of the leader.
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let killed = std::time::Instant::now();
    cluster.kill_coordinator(leader).await.unwrap();
    let took = wait_reattached(&cluster, leader, &agents, killed).await;
    println!("leader killed: every agent reported to the new leader {:.2}s after the kill", took.as_secs_f64());
    // They learned it from a follower as soon as it was elected, not by waiting out the dead
    // leader's silence (three unanswered heartbeats).
    for name in agents {
        let log = cluster.log_tail(name, 200);
        assert!(log.contains("another coordinator leads now; following it"), "{name}:\n{log}");
    }
    repo.write("NOTES.md", "after the failover\n").unwrap();
    let after_kill = repo.commit("After the failover").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    assert_eq!(wait_finished(&cluster, &after_kill, Duration::from_secs(120)).await.summary.state, CommitState::Passed);
    cluster.start_coordinator(leader).await.unwrap();
    cluster.wait_converged(DEADLINE).await.unwrap();

    // 2. The leader stops for 5 s (SIGSTOP), then goes on (SIGCONT). The 5 s are the fault
    // itself, not a wait for an event: the cluster elects another leader meanwhile.
    let stalled = cluster.wait_leader(DEADLINE).await.unwrap();
    let stopped = std::time::Instant::now();
    cluster.pause_coordinator(stalled, true).unwrap();
    let took = wait_reattached(&cluster, stalled, &agents, stopped).await;
    println!("leader stopped: every agent reported to the new leader {:.2}s after SIGSTOP", took.as_secs_f64());
    tokio::time::sleep_until((stopped + Duration::from_secs(5)).into()).await;
    cluster.pause_coordinator(stalled, false).unwrap();
    cluster.wait_converged(DEADLINE).await.unwrap();
    let now_leader = cluster.wait_leader(DEADLINE).await.unwrap();
    cluster.wait_reporting(&agents, DEADLINE).await.unwrap();
    repo.write("NOTES.md", "after the stall\n").unwrap();
    let after_stall = repo.commit("After the stall").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    assert_eq!(
        wait_finished(&cluster, &after_stall, Duration::from_secs(120)).await.summary.state,
        CommitState::Passed
    );

    // Nothing was ever down, and no alert fired (or reached the webhook).
    let downs = watch.finish().await;
    assert!(downs.is_empty(), "hosts shown down during the failover or the stall: {downs:?}");
    let alerts: fifty::alerts::ops::AlertsView =
        cluster.client_for(now_leader).get("/v1/alerts?limit=100").await.unwrap();
    assert!(alerts.recent.is_empty(), "{:#?}", alerts.recent);
    let fired = hook.received().into_iter().filter(|b| b.contains("alert.firing")).collect::<Vec<_>>();
    assert!(fired.is_empty(), "{fired:?}");

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
/// resume, promote, abort and `rollback --to` do what they say; a newer release supersedes a
/// rollout in progress; a host away during a rollout converges when it returns.
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
    // finishes, and web-4 converges when it comes back. Its service keeps serving meanwhile.
    cluster.kill_agent("web-4").await.unwrap();
    assert_eq!(served_version(ports[3]).await.as_deref(), Some(&first[..10]), "web-4 serves with its agent dead");
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
    // Ask the leader: the restarted coordinator's API may not listen yet.
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let releases: Vec<ReleaseView> = cluster.client_for(leader).get("/v1/releases").await.unwrap();
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
    // The phase in words, as people say it.
    assert!(out.status.success() && text(&out.stdout).contains(", awaiting promotion PAUSED\n"), "{}", said(&out));
    let out = cli(&cluster, &admin, &["rollout", "resume"]).await;
    assert!(out.status.success(), "{}", said(&out));
    let out = cli(&cluster, &admin, &["rollout", "promote"]).await;
    assert!(out.status.success(), "{}", said(&out));
    let done = wait_rollout(&cluster, r4, Phase::Done).await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    wait_serving(&ports, &manual[..10]).await;

    // 5. A newer release supersedes a rollout in progress (as Argo Rollouts does): the new one
    // starts from its first wave, which moves the old canary to it. Abort at the manual wave: the
    // canary goes back to the previous release.
    repo.write("NOTES.md", "fifth\n").unwrap();
    let superseded = repo.commit("To be superseded").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r5 = wait_release(&cluster, &superseded).await;
    let waiting = wait_rollout(&cluster, r5, Phase::AwaitingPromotion).await;
    repo.write("NOTES.md", "sixth\n").unwrap();
    let aborted = repo.commit("To be aborted").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r6 = wait_release(&cluster, &aborted).await;
    let next = wait_rollout(&cluster, r6, Phase::AwaitingPromotion).await;
    let took_over = format!("supersedes rollout {} of release {r5}; web-1 moves to release {r6} first", waiting.id);
    assert!(next.events.iter().any(|(_, e)| *e == took_over), "{next:#?}");
    assert_eq!((next.waves[0].reach, next.hosts[0].host.as_str()), (1, "web-1"), "{next:#?}");
    wait_serving(&ports[..1], &aborted[..10]).await;
    let out = cli(&cluster, &admin, &["rollout", "abort"]).await;
    assert!(out.status.success(), "{}", said(&out));
    let done = wait_rollout(&cluster, r6, Phase::Done).await;
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
    // web-4 never had release 5 (its rollout was superseded after the canary), so it must download it.
    // The artifact's pieces are checked as they arrive: the damaged first piece is named, with
    // the coordinator that sent it, and refused each time it comes.
    let cases = [
        (r4, "signature", "bad signature", "web-1", 0),
        (r5, "artifact", "piece 0 does not match the signed piece table", "web-4", 3),
    ];
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
        if tamper == "artifact" {
            assert!(why.contains("(sent by coordinator 127.0.0.1:") && why.contains("refused 3 times"), "{why}");
        }
        assert_eq!(served_version(ports[port]).await.as_deref(), Some(&second[..10]), "{host} kept its release");
    }
    // Every download so far went in pieces on streams of their own, none on the control stream.
    for host in ["web-1", "web-2", "web-3", "web-4"] {
        let log = std::fs::read_to_string(cluster.dir.join(format!("logs/{host}.log"))).unwrap();
        assert!(log.contains("artifact downloaded and verified"), "{host}");
        assert!(!log.contains("downloading on the control stream"), "{host}: {log}");
    }

    // The coordinator that came back in step 2 holds every release's artifact too.
    let releases: Vec<ReleaseView> = cluster.client().get("/v1/releases").await.unwrap();
    assert_eq!(releases.len(), 6, "{releases:#?}");
    for r in &releases {
        wait_blob(&cluster, killed, &r.digest).await;
    }

    // 8. An agent killed with SIGKILL leaves production serving; started again, it adopts the
    // very process (no restart) and reports it healthy.
    let served_by = listener_pid(ports[0]).expect("web-1's service listens");
    let log = cluster.dir.join("logs/web-1.log");
    let adoptions = || std::fs::read_to_string(&log).unwrap_or_default().matches("adopted the running service").count();
    let adopted_before = adoptions();
    cluster.kill_agent("web-1").await.unwrap();
    assert_eq!(served_version(ports[0]).await.as_deref(), Some(&second[..10]), "web-1 serves with its agent dead");
    cluster.start_agent("web-1").unwrap();
    wait_for("web-1's agent to adopt its service", DEADLINE, || {
        let found = adoptions() > adopted_before;
        async move { Ok(found.then_some(())) }
    })
    .await
    .unwrap();
    assert_eq!(listener_pid(ports[0]), Some(served_by), "the same process serves after the agent's restart");
    wait_for("web-1 to report its adopted service healthy", DEADLINE, || {
        let client = cluster.client();
        async move {
            let view: RolloutView = client.get("/v1/rollouts/current?repo=shop").await?;
            Ok(view.hosts.iter().find(|h| h.host == "web-1" && h.up && h.healthy && h.current == Some(r2)).map(|_| ()))
        }
    })
    .await
    .unwrap();

    // 9. A build agent killed mid-job: the test's daemon (in a session of its own, so out of
    // the shell's process group) outlives the agent, and is killed when the agent starts again.
    // The agent runs jobs as its own user here (no [jobs] user), so no sweep of a job user does it.
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::write(marks.join("hang"), "").unwrap();
    let daemons = marks.join("daemons");
    repo.write(
        "tests/test_hang.sh",
        &format!(
            "#!/bin/sh\n# While {m}/hang exists: starts a daemon in a session of its own and waits.\n\
             if [ -e {m}/hang ]; then\n  setsid sh -c 'echo $$ >> {m}/daemons; exec sleep 600' </dev/null >/dev/null 2>&1 &\n\
             \x20 while [ -e {m}/hang ]; do sleep 0.1; done\nfi\n",
            m = marks.display()
        ),
    )
    .unwrap();
    let config = cluster.agent_dir("build-1").join("agent.toml");
    let agent_toml = std::fs::read_to_string(&config).unwrap();
    let job_user = "user = \"fifty-job\"\n";
    if fifty_agent_runs_as_root() {
        assert!(agent_toml.contains(job_user), "{agent_toml}");
    }
    std::fs::write(&config, agent_toml.replace(job_user, "")).unwrap();
    cluster.kill_agent("build-1").await.unwrap();
    cluster.start_agent("build-1").unwrap();
    let hanging = repo.commit("A test that starts a daemon").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let daemon_pids = || -> Vec<i32> {
        std::fs::read_to_string(&daemons).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    };
    let daemon = wait_for("the test's daemon to start", DEADLINE, || {
        let first = daemon_pids().first().copied();
        async move { Ok(first) }
    })
    .await
    .unwrap();
    let daemon_start = process_start(daemon).expect("the daemon runs");
    cluster.kill_agent("build-1").await.unwrap();
    assert_eq!(process_start(daemon), Some(daemon_start), "the daemon outlives its killed agent");
    cluster.start_agent("build-1").unwrap();
    wait_for("the restarted build agent to kill the daemon its killed run left", DEADLINE, || {
        let gone = process_start(daemon) != Some(daemon_start);
        async move { Ok(gone.then_some(())) }
    })
    .await
    .unwrap();
    // The test stops hanging: the commit goes green (a retried test's daemon dies with its job).
    std::fs::remove_file(marks.join("hang")).unwrap();
    let view = wait_finished(&cluster, &hanging, Duration::from_secs(180)).await;
    assert_eq!(view.summary.state, CommitState::Passed, "{view:#?}");
    for pid in daemon_pids() {
        assert!(process_start(pid).is_none(), "daemon {pid} outlived its job");
    }

    // 10. The next deploy replaces the adopted service: web-1 is the canary and serves the new
    // release from a new process.
    let r7 = wait_release(&cluster, &hanging).await;
    wait_rollout(&cluster, r7, Phase::AwaitingPromotion).await;
    wait_serving(&ports[..1], &hanging[..10]).await;
    assert_ne!(listener_pid(ports[0]), Some(served_by), "the deploy started a new process");

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cluster immune system, through real agents scraping the real sample service under load:
/// a good release passes every wave; a release that fails a quarter of its requests is caught on
/// its canary and the whole sequence follows from one decision — every host back on the previous
/// release, the gate closed with the verdict, the commit reverted in git by a build agent (the one
/// push the closed gate lets in), an incident with the evidence, a webhook notified — and it
/// completes although the leader is killed just after the decision. A leader killed while the
/// good release bakes does not restart the wave's tests: the next one continues them from the
/// replicated evidence, which `fifty rollout status` shows. Then ordinary pushes are
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

    // Sizing a bake reads the leader's reports: seconds of them are too few, and it says how
    // much it needs; a metric the release does not watch is named.
    let sized = cli(&cluster, &admin, &["immune", "size", "--repo", &repo.name, "--effect", "3"]).await;
    assert!(!sized.status.success(), "{}", said(&sized));
    assert!(
        said(&sized).contains("not enough history of error_rate")
            && said(&sized).contains("sizing needs 5m from at least 3 hosts"),
        "{}",
        said(&sized)
    );
    let sized = cli(&cluster, &admin, &["immune", "size", "--repo", &repo.name, "--metric", "checkout_rate"]).await;
    let named = format!("checkout_rate is not one of release {r1}'s [immune] metrics (error_rate, latency)");
    assert!(said(&sized).contains(&named), "{}", said(&sized));

    // A good release: every wave is compared with the hosts still on release 1, and passes.
    repo.write("NOTES.md", "a harmless change\n").unwrap();
    let good = repo.commit("Harmless change").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r2 = wait_release(&cluster, &good).await;
    // The leader is killed -9 mid-bake: the next one continues the wave's tests from the evidence
    // replicated so far (the same bake start, the looks counted on) instead of starting again.
    // The rollout is paused while its wave bakes so that the bake outlasts the failover (the
    // judge goes on looking and recording while paused); a wave that passed before the pause
    // landed is let go and the next one is caught.
    let (baking, recorded) = {
        let mut caught = None;
        for _ in 0..3 {
            let seen = wait_for("a wave of the good release baking, with recorded evidence", DEADLINE, || {
                let client = cluster.client();
                async move {
                    let v: RolloutView = client.get("/v1/rollouts/current?repo=shop").await?;
                    let fresh = v.evidence.as_ref().is_some_and(|e| e.wave == v.wave && e.metrics[0].looks >= 2);
                    Ok((v.release == r2 && v.phase == Phase::Baking && fresh).then_some(v.wave))
                }
            })
            .await
            .unwrap();
            let out = cli(&cluster, &admin, &["rollout", "pause"]).await;
            assert!(out.status.success(), "{}", said(&out));
            let v: RolloutView = cluster.client().get("/v1/rollouts/current?repo=shop").await.unwrap();
            if v.phase == Phase::Baking && v.wave == seen {
                caught = Some(v.wave);
                break;
            }
            let out = cli(&cluster, &admin, &["rollout", "resume"]).await;
            assert!(out.status.success(), "{}", said(&out));
        }
        let wave = caught.expect("a baking wave paused in one of three tries");
        // The judge keeps recording while paused: at least two more looks before the kill.
        let at_pause = cluster.client().get::<RolloutView>("/v1/rollouts/current?repo=shop").await.unwrap();
        let looks = at_pause.evidence.as_ref().map_or(0, |e| e.metrics[0].looks);
        let recorded = wait_for("evidence recorded while paused", DEADLINE, || {
            let client = cluster.client();
            async move {
                let v: RolloutView = client.get("/v1/rollouts/current?repo=shop").await?;
                Ok(v.evidence.filter(|e| e.wave == wave && e.metrics[0].looks >= looks + 2))
            }
        })
        .await
        .unwrap();
        (wave, recorded)
    };
    assert_eq!(recorded.resumes, 0, "{recorded:#?}");
    let first_leader = cluster.wait_leader(DEADLINE).await.unwrap();
    cluster.kill_coordinator(first_leader).await.unwrap();
    let continued = wait_for("the next leader to continue the wave's tests", Duration::from_secs(120), || {
        let client = cluster.client();
        let before = recorded.clone();
        async move {
            let v: RolloutView = client.get("/v1/rollouts/current?repo=shop").await?;
            Ok(v.evidence.filter(|e| e.resumes >= 1 && e.metrics[0].looks > before.metrics[0].looks))
        }
    })
    .await
    .unwrap();
    assert_eq!(continued.wave, baking, "the same wave: {continued:#?}");
    assert_eq!(continued.first_data, recorded.first_data, "the bake is counted from the same start: {continued:#?}");
    assert_eq!(continued.metrics[0].alpha, recorded.metrics[0].alpha, "the same test, the same alpha share");
    // What the next leader could not rebuild from the reports it hears: each host's pre-deploy
    // reference (before the last wave), or the previous release's fleet window (the last wave).
    let kept = if baking < 3 { continued.metrics[0].reference_hosts } else { continued.metrics[0].baseline_hosts };
    assert!(kept >= 1, "the reference the test started from is kept: {continued:#?}");
    // An admin sees it in `fifty rollout status`.
    let status = cli(&cluster, &admin, &["rollout", "status"]).await;
    let shown = text(&status.stdout);
    assert!(shown.contains(&format!("immune evidence, wave {baking}")) && shown.contains("continued by"), "{shown}");
    // The latency histogram went the whole way too: each agent scraped the shop's
    // http_request_duration_seconds buckets, reported their changes, and the judge ranks the
    // canary's requests against the old release's, with its own looks and its own share of alpha.
    let latency = continued.metrics.iter().find(|m| m.name == "latency").unwrap_or_else(|| panic!("{continued:#?}"));
    assert!(latency.looks >= 2 && latency.canary_hosts >= 1, "{continued:#?}");
    assert_eq!(latency.alpha, continued.metrics[0].alpha, "alpha is split evenly over the metrics");
    let verdict = shown.lines().find(|l| l.contains(": latency median ")).unwrap_or_else(|| panic!("{shown}"));
    assert!(verdict.contains(" by rank, p=") && verdict.contains(" looks)"), "{verdict}");
    assert!(shown.lines().any(|l| l.trim_start().starts_with("latency: ") && l.contains(" looks, p=")), "{shown}");
    cluster.start_coordinator(first_leader).await.unwrap();
    // Asked at once, even of the coordinator just restarted: one that has not heard from the
    // leader yet waits for it (up to 5 s) instead of answering 503 (it did, once in five runs).
    let out = cli(&cluster, &admin, &["rollout", "resume"]).await;
    assert!(out.status.success(), "{}", said(&out));
    // Each wave bakes on until the data rule out a tripling of the errors at any look (the
    // shop's hosts have seconds of history, so they are compared with each other): a minute or
    // so a wave at 40 requests a second, three waves.
    let done = cluster.wait_rollout("shop", r2, Phase::Done, Duration::from_secs(400)).await.unwrap();
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
    let md = cli(&cluster, &admin, &["incident", "show", &incident.id.to_string(), "--markdown"]).await;
    let md = text(&md.stdout);
    assert!(
        md.contains("## Five whys") && md.contains("1. the error rate was set") && md.contains("gate of main opened"),
        "{md}"
    );

    // A slow release: no more errors, but the shop takes eight times as long (a median of 40 ms
    // instead of 5). Only the latency histogram can see it, and it reverts the release.
    repo.undo_commit().await.unwrap();
    repo.write("release/LATENCY_MS", "40\n").unwrap();
    let slow = repo.commit("Richer receipts").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r4 = wait_release(&cluster, &slow).await;
    let incident: IncidentView =
        wait_for("the immune system's decision on the slow release", Duration::from_secs(180), || {
            let client = cluster.client();
            async move {
                let list: Vec<IncidentView> = client.get("/v1/incidents").await?;
                Ok(list.into_iter().find(|i| i.release == r4))
            }
        })
        .await
        .unwrap();
    assert!(incident.reason.starts_with("latency median "), "{incident:#?}");
    assert!(incident.evidence.iter().any(|e| e.starts_with("FAIL: latency median")), "{incident:#?}");
    assert!(!incident.evidence.iter().any(|e| e.starts_with("FAIL: error_rate")), "{incident:#?}");
    let back = format!("every host of rollout {} is back on release {}", incident.rollout, incident.previous);
    wait_for("the hosts back from the slow release", Duration::from_secs(180), || {
        let client = cluster.client();
        let (id, back) = (incident.id, back.clone());
        async move {
            let i: IncidentView = client.get(&format!("/v1/incidents/{id}")).await?;
            Ok(i.timeline.iter().any(|(_, e)| *e == back).then_some(()))
        }
    })
    .await
    .unwrap();

    // The dashboard's incident page draws the evidence: the canary's latency against the
    // baseline's over the bake, from the agents' real reports, with the decision marked.
    let page = cluster.client().get_text(&format!("/ui/incidents/{}", incident.id)).await.unwrap();
    let (canary, baseline) = (format!("canary, release {r4}"), format!("baseline, release {}", incident.previous));
    assert!(page.contains("<svg") && page.contains(&canary) && page.contains(&baseline), "{page}");
    assert!(page.contains(">decision: revert</text>"), "{page}");
    assert!(!page.contains(&format!("{canary} has no data")), "the canary's reports are drawn: {page}");
    assert!(page.contains("FAIL: latency median"), "the verdicts are listed: {page}");
}

/// The pid of the process listening on 127.0.0.1:`port` (TCP), from `/proc/net/tcp`.
fn listener_pid(port: u16) -> Option<i32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // `sl local_address rem_address st ... inode`: 0A is LISTEN; addresses are hex IP:port.
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
        (local_port == port && *f.get(3)? == "0A").then(|| f.get(9).map(|i| i.to_string()))?
    })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(&socket))).then_some(pid)
    })
}

/// Whether the tests (and so the agents they start) run as root.
fn fifty_agent_runs_as_root() -> bool {
    // SAFETY: a plain syscall without arguments.
    unsafe { libc::geteuid() == 0 }
}

/// When process `pid` started (clock ticks since boot), while it runs (a zombie does not).
fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    (!matches!(fields.first(), Some(&"Z") | Some(&"X"))).then(|| fields.get(19)?.parse().ok())?
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
    // Scheduled looks: a bad schedule is refused naming its field; a good one is kept and shown.
    let out = cli(
        &cluster,
        &admin,
        &["experiment", "create", "bad", "--variants", "control=50,b=50", "--looks", "0", "--look-every", "1d"],
    )
    .await;
    assert!(!out.status.success() && text(&out.stderr).contains("looks: 0 is out of range"), "{}", text(&out.stderr));
    create(&[
        "two-weeks",
        "--variants",
        "control=50,b=50",
        "--hosts",
        "role=prod",
        "--looks",
        "14",
        "--look-every",
        "1d",
    ])
    .await;
    let v = experiment_json(&cluster, "two-weeks").await;
    assert_eq!((v["schedule"]["looks"].as_u64(), v["schedule"]["taken"].as_u64()), (Some(14), Some(0)), "{v:#}");
    assert_eq!(v["schedule"]["look_every"], "1day", "{v:#}");
    let out = cli(&cluster, &admin, &["experiment", "show", "two-weeks"]).await;
    assert!(text(&out.stdout).contains("0 of 14 looks taken, one every 1day"), "{}", text(&out.stdout));

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

    // The coordinator (the only one) stops for 6 s (SIGSTOP; the 6 s are the fault, not a wait):
    // longer than down_after, but it heard nothing because it did not run. Once it goes on, no
    // host is called down and neither host-down rule fires (not even the 1 s one, silenced or not).
    let stopped = std::time::Instant::now();
    cluster.pause_coordinator(0, true).unwrap();
    tokio::time::sleep_until((stopped + Duration::from_secs(6)).into()).await;
    cluster.pause_coordinator(0, false).unwrap();
    cluster.wait_reporting(&["build-1", "web-1", "web-2"], DEADLINE).await.unwrap();

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
    // Checked only now, seconds of alert evaluation after the stall.
    let v: AlertsView = cluster.client().get("/v1/alerts?limit=100").await.unwrap();
    assert!(v.recent.is_empty(), "alerts after a stall of the coordinator: {:#?}", v.recent);

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

// ---- systemd readiness (the packages' Type=notify units) -----------------------------------

/// A stand-in for systemd's notification socket: collects what a process sends to it.
struct NotifySocket {
    path: PathBuf,
    socket: tokio::net::UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Self {
        let socket = tokio::net::UnixDatagram::bind(&path).expect("bind the notification socket");
        Self { path, socket, seen: Vec::new() }
    }

    /// Waits for a message holding `needle` (e.g. `READY=1`) and returns it.
    async fn wait(&mut self, needle: &str, what: &str) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(m) = self.seen.iter().find(|m| m.contains(needle)) {
                return m.clone();
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Ok(Ok(n)) => self.seen.push(text(&buf[..n])),
                Ok(Err(e)) => panic!("read the notification socket: {e}"),
                Err(_) => panic!("no {needle:?} from {what} within {DEADLINE:?}; it sent {:?}", self.seen),
            }
        }
    }
}

fn coordinator_with_notify(
    config: &std::path::Path,
    notify: &NotifySocket,
    log: &std::path::Path,
) -> tokio::process::Child {
    let log = std::fs::File::create(log).unwrap();
    tokio::process::Command::new(bin_dir().unwrap().join("fifty"))
        .args(["server", "--config"])
        .arg(config)
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// What a `Type=notify` unit relies on: the coordinator says READY=1 once its API answers, before
/// its cluster has formed (a coordinator waiting for its peers is up); the agent says READY=1
/// without waiting for a coordinator (a host booting while none answers still comes up) and
/// reports its link in STATUS=; both say STOPPING=1 when told to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_and_agents_tell_systemd_when_they_are_ready() {
    use fifty::local::free_port;
    let dir = test_dir("notify");
    std::fs::create_dir_all(&dir).unwrap();
    let (http, quic) = (free_port().unwrap(), free_port().unwrap());
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nhttp_addr = \"127.0.0.1:{http}\"\nquic_addr = \"127.0.0.1:{quic}\"\n\
             bootstrap_token_file = {:?}\n",
            dir.join("coord"),
            dir.join("token")
        ),
    )
    .unwrap();
    let mut coordinator_notify = NotifySocket::bind(dir.join("coordinator.sock"));
    let mut coordinator = coordinator_with_notify(&config, &coordinator_notify, &dir.join("coordinator.log"));
    let ready = coordinator_notify.wait("READY=1", "the coordinator").await;
    assert!(ready.contains(&format!("STATUS=API on 127.0.0.1:{http}")), "{ready}");
    // Ready means the API answers: no retry here.
    let ca = std::fs::read_to_string(dir.join("coord/tls/ca.pem")).unwrap();
    let anonymous = fifty::cli::Client::new(&format!("https://127.0.0.1:{http}"), None, &ca).unwrap();
    let health: serde_json::Value = anonymous.get("/v1/health").await.expect("the API answers once READY=1 is sent");
    assert_eq!(health["status"], "ok");
    coordinator_notify.wait("a member of the cluster", "the coordinator, once its cluster formed").await;

    // An agent enrolled, then started while no coordinator answers: ready all the same.
    let token = wait_for("the bootstrap token", DEADLINE, || async {
        Ok(std::fs::read_to_string(dir.join("token")).ok().filter(|t| !t.trim().is_empty()))
    })
    .await
    .unwrap();
    let admin = fifty::cli::Client::new(&format!("https://127.0.0.1:{http}"), Some(token.trim().into()), &ca).unwrap();
    let join: TokenCreated = admin
        .post(
            "/v1/tokens",
            &fifty::views::CreateToken { role: "agent".into(), ttl: None, max_uses: None, description: String::new() },
        )
        .await
        .unwrap();
    let agent_dir = dir.join("agent");
    let sidecar = format!("127.0.0.1:{}", free_port().unwrap());
    let out = tokio::process::Command::new(bin_dir().unwrap().join("fifty-agent"))
        .args(["join", "--coordinator", &format!("127.0.0.1:{quic}"), "--token", &join.token, "--name", "ready-1"])
        .args(["--sidecar", &sidecar, "--data-dir"])
        .arg(&agent_dir)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "join: {}", text(&out.stderr));
    coordinator.kill().await.unwrap();

    let mut agent_notify = NotifySocket::bind(dir.join("agent.sock"));
    let agent_log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut agent = tokio::process::Command::new(bin_dir().unwrap().join("fifty-agent"))
        .args(["run", "--config"])
        .arg(agent_dir.join("agent.toml"))
        .env("NOTIFY_SOCKET", &agent_notify.path)
        .stdin(std::process::Stdio::null())
        .stdout(agent_log.try_clone().unwrap())
        .stderr(agent_log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    agent_notify.wait("READY=1", "the agent, with no coordinator up").await;
    let unreachable = agent_notify.wait("STATUS=cannot reach", "the agent").await;
    assert!(unreachable.contains(&format!("127.0.0.1:{quic}")), "{unreachable}");

    // The coordinator comes back: the agent's status says it is connected.
    coordinator_notify.seen.clear();
    let mut coordinator = coordinator_with_notify(&config, &coordinator_notify, &dir.join("coordinator-2.log"));
    coordinator_notify.wait("READY=1", "the restarted coordinator").await;
    agent_notify.seen.clear();
    let connected = agent_notify.wait("STATUS=host ready-1: connected", "the agent, once linked").await;
    assert!(connected.contains(&format!("127.0.0.1:{quic}")), "{connected}");

    // SIGTERM (what `systemctl stop` sends): STOPPING=1, then a clean exit.
    for (child, notify, what) in
        [(&mut agent, &mut agent_notify, "the agent"), (&mut coordinator, &mut coordinator_notify, "the coordinator")]
    {
        // SAFETY: plain syscall on the child's pid.
        unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
        notify.wait("STOPPING=1", what).await;
        let status = tokio::time::timeout(DEADLINE, child.wait()).await.expect("it stops").unwrap();
        assert!(status.success(), "{what} exited with {status}");
    }

    // A coordinator of a cluster of two whose peer never comes: ready (its API answers) though no
    // cluster has formed, so `systemctl start` of the first coordinator does not wait for the rest.
    let out = tokio::process::Command::new(bin_dir().unwrap().join("fifty"))
        .args(["ca", "init", "--out"])
        .arg(dir.join("ca"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (http, quic, absent) = (free_port().unwrap(), free_port().unwrap(), free_port().unwrap());
    let lone = dir.join("lone.toml");
    std::fs::write(
        &lone,
        format!(
            "data_dir = {:?}\nhttp_addr = \"127.0.0.1:{http}\"\nquic_addr = \"127.0.0.1:{quic}\"\n\
             bootstrap_expect = 2\npeers = [\"127.0.0.1:{quic}\", \"127.0.0.1:{absent}\"]\n\
             ca_cert = {:?}\nca_key = {:?}\n",
            dir.join("lone"),
            dir.join("ca/ca.pem"),
            dir.join("ca/ca-key.pem"),
        ),
    )
    .unwrap();
    let mut lone_notify = NotifySocket::bind(dir.join("lone.sock"));
    let _lone = coordinator_with_notify(&lone, &lone_notify, &dir.join("lone.log"));
    let ready = lone_notify.wait("READY=1", "a coordinator waiting for its peer").await;
    assert!(ready.contains("forming or joining the cluster"), "{ready}");
    let ca = std::fs::read_to_string(dir.join("ca/ca.pem")).unwrap();
    let anonymous = fifty::cli::Client::new(&format!("https://127.0.0.1:{http}"), None, &ca).unwrap();
    let health: serde_json::Value = anonymous.get("/v1/health").await.expect("the API answers while no cluster formed");
    assert_eq!(health["status"], "ok");
    assert!(
        !lone_notify.seen.iter().any(|m| m.contains("a member of the cluster")),
        "no cluster of two can form with one coordinator: {:?}",
        lone_notify.seen
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Downloads artifact `digest` whole as agent `host` would (its own certificate, the agent
/// protocol, chunk by chunk) and returns its bytes.
async fn download_artifact_as(cluster: &LocalCluster, host: &str, digest: &str) -> Vec<u8> {
    use fifty_shared::codec::{read_frame, write_frame};
    use fifty_shared::wire::{AgentMsg, CoordinatorMsg};
    let ids = cluster.agent_dir(host).join("identity");
    let read = |f: &str| std::fs::read_to_string(ids.join(f)).unwrap();
    let cert = fifty_shared::tls::CertAndKey { cert_pem: read("cert.pem"), key_pem: read("key.pem") };
    let config = fifty_shared::tls::quic_client_config(&read("ca.pem"), &cert, fifty_shared::wire::ALPN_AGENT).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let attempt = async {
        let conn = endpoint.connect(cluster.quic(), fifty_shared::tls::COORDINATOR_NAME)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &AgentMsg::Hello { agent_version: "probe".into() }).await?;
        let mut bytes = Vec::new();
        loop {
            let offset = bytes.len() as u64;
            write_frame(&mut send, &AgentMsg::FetchArtifact { digest: digest.to_string(), offset }).await?;
            let (total, data) = loop {
                match read_frame::<CoordinatorMsg, _>(&mut recv).await? {
                    Some(CoordinatorMsg::ArtifactData { data, missing: None, total, offset: at, .. })
                        if at == offset =>
                    {
                        break (total, data)
                    }
                    Some(CoordinatorMsg::ArtifactData { missing: Some(why), .. }) => anyhow::bail!("refused: {why}"),
                    Some(_) => continue,
                    None => anyhow::bail!("the coordinator closed the link without answering"),
                }
            };
            bytes.extend_from_slice(&data);
            if bytes.len() as u64 >= total {
                conn.close(0u32.into(), b"done");
                return anyhow::Ok(bytes);
            }
        }
    };
    tokio::time::timeout(DEADLINE, attempt).await.expect("an answer").unwrap()
}

/// Backup and restore, as an operator would after losing every coordinator: `fifty snapshot
/// save` (admin only; the file 0600), every coordinator killed and its data dir deleted, a
/// damaged copy refused saying where, `fifty snapshot restore` into an empty data dir, the
/// others joined to it; then every token (the old ones work), host (its agent reconnects with the
/// certificate it had), repository, release (its artifact downloadable and on every
/// coordinator) and incident is there, and a new push goes from commit to release as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_restored_from_a_backup_after_losing_every_coordinator() {
    use std::os::unix::fs::PermissionsExt;
    let dir = test_dir("backup");
    let options = Options { coordinators: 3, ..Options::default() };
    let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), options).await.unwrap();
    cluster.add_agent("build-1", "role=build,slots=2").await.unwrap();
    cluster.add_agent("spare-1", "role=spare").await.unwrap();
    let port = fifty::local::free_port().unwrap();
    cluster.add_agent_with("web-1", "role=prod", &format!("port={port}")).await.unwrap();
    cluster.wait_reporting(&["build-1", "spare-1", "web-1"], DEADLINE).await.unwrap();
    let admin = cluster.admin_token.clone();
    let read = token(&cluster, "read", None).await;
    let ci = token(&cluster, "ci", None).await;
    let repo =
        SampleRepo::create(&dir, &cluster, "shop", &ci.token, None, fifty::sample_app::Steps::Deploy).await.unwrap();
    let first = repo.git_head().await;
    assert!(repo.push().await.unwrap().status.success());
    let r1 = wait_release(&cluster, &first).await;
    let done = wait_rollout(&cluster, r1, Phase::Done).await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    wait_serving(&[port], &first[..10]).await;
    let releases: Vec<ReleaseView> = cluster.client().get("/v1/releases").await.unwrap();
    let release = releases.into_iter().find(|r| r.id == r1).expect("release 1 listed");
    // An incident: a critical alert on a host that goes away.
    let rule = ["alert", "rule", "add", "host-down", "--kind", "host_down", "--for", "1s", "--severity", "critical"];
    let out = cli(&cluster, &admin, &rule).await;
    assert!(out.status.success(), "{}", said(&out));
    cluster.kill_agent("spare-1").await.unwrap();
    let incident = wait_for("the host-down incident", DEADLINE, || {
        let client = cluster.client();
        async move {
            let list: Vec<IncidentView> = client.get("/v1/incidents").await?;
            Ok(list.into_iter().find(|i| i.title == "host-down firing: spare-1"))
        }
    })
    .await
    .unwrap();

    // `fifty status` shows how big the state is and that retention has nothing to do yet.
    let status = cli(&cluster, &read.token, &["status"]).await;
    let shown = text(&status.stdout);
    assert!(status.status.success(), "{}", said(&status));
    for expected in ["records", "Raft log", "on disk", "Artifacts    1,", "Retention    commits 90d, logs 30d"] {
        assert!(shown.contains(expected), "{expected:?} missing: {shown}");
    }
    assert!(shown.contains("nothing removed yet"), "{shown}");
    let json: serde_json::Value =
        serde_json::from_slice(&cli(&cluster, &read.token, &["status", "--json"]).await.stdout).expect("status JSON");
    let records = json["store"]["state_records"].as_u64().unwrap_or(0);
    assert!(records > 20 && json["store"]["disk_bytes"].as_u64().unwrap_or(0) > 0, "{json:#}");

    // Only an admin may take a backup; the file is the owner's only.
    let file = dir.join("cluster.backup");
    let refused = cli(&cluster, &read.token, &["snapshot", "save", file.to_str().unwrap()]).await;
    assert!(!refused.status.success() && said(&refused).contains("it needs admin"), "{}", said(&refused));
    assert!(!file.exists(), "a refused backup leaves no file");
    let saved = cli(&cluster, &admin, &["snapshot", "save", file.to_str().unwrap()]).await;
    assert!(saved.status.success(), "{}", said(&saved));
    assert!(said(&saved).contains("1 artifacts") && said(&saved).contains("CA key"), "{}", said(&saved));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let checked = cli(&cluster, &admin, &["snapshot", "verify", file.to_str().unwrap()]).await;
    assert!(checked.status.success() && said(&checked).contains("a whole backup"), "{}", said(&checked));

    // Every coordinator is lost, with its disk.
    for i in 0..3 {
        cluster.kill_coordinator(i).await.unwrap();
        cluster.wipe_coordinator(i).unwrap();
    }
    let fifty = |args: &[&std::ffi::OsStr]| {
        let mut c = tokio::process::Command::new(cluster.bin_dir.join("fifty"));
        c.args(args);
        c
    };
    let config = dir.join("coord-1.toml");
    // A copy cut short, or with a changed byte, is refused before anything is written.
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let out = fifty(&["snapshot".as_ref(), "restore".as_ref(), cut.as_ref(), "--config".as_ref(), config.as_ref()])
        .output()
        .await
        .unwrap();
    let expected = format!("truncated: the file ends at byte {}", bytes.len() - 100);
    assert!(!out.status.success() && said(&out).contains(&expected), "{}", said(&out));
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    let bad = dir.join("flipped.backup");
    std::fs::write(&bad, &flipped).unwrap();
    let out = fifty(&["snapshot".as_ref(), "restore".as_ref(), bad.as_ref(), "--config".as_ref(), config.as_ref()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success() && said(&out).contains("backup "), "{}", said(&out));
    assert!(said(&out).contains("damaged at byte") || said(&out).contains("checksum mismatch"), "{}", said(&out));
    assert!(!dir.join("coord-1").join("state").exists(), "nothing was written");

    // Restore into coordinator 1's empty data dir; start it; the others join it.
    let out = fifty(&["snapshot".as_ref(), "restore".as_ref(), file.as_ref(), "--config".as_ref(), config.as_ref()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("Restored a cluster of one"), "{}", said(&out));
    assert_private_tree(&dir.join("coord-1"));
    cluster.start_coordinator(0).await.unwrap();
    cluster.wait_leader(DEADLINE).await.unwrap();
    let via = cluster.coordinators[0].quic.to_string();
    for i in 1..3 {
        cluster.start_coordinator_with(i, &["--join", &via]).unwrap();
    }
    wait_for("three voters again", Duration::from_secs(120), || {
        let client = cluster.client_for(0);
        async move {
            let v: ClusterView = client.get("/v1/cluster/members").await?;
            Ok((v.members.iter().filter(|m| m.voter).count() == 3).then_some(()))
        }
    })
    .await
    .unwrap();

    // Every token works as before: the bootstrap admin's, the read token, the CI token (below).
    let hosts = cli(&cluster, &read.token, &["hosts"]).await;
    assert!(hosts.status.success(), "{}", said(&hosts));
    for host in ["build-1", "spare-1", "web-1"] {
        assert!(text(&hosts.stdout).contains(host), "{host}: {}", text(&hosts.stdout));
    }
    // The agents reconnect with the certificates they had: the cluster kept its CA.
    cluster.wait_reporting(&["build-1", "web-1"], DEADLINE).await.unwrap();
    let repos = cli(&cluster, &admin, &["repo", "list"]).await;
    assert!(repos.status.success() && text(&repos.stdout).contains("shop"), "{}", said(&repos));
    let releases: Vec<ReleaseView> = cluster.client().get("/v1/releases").await.unwrap();
    assert!(releases.iter().any(|r| r.id == r1 && r.digest == release.digest), "{releases:#?}");
    let status: serde_json::Value =
        serde_json::from_slice(&cli(&cluster, &admin, &["status", "--json"]).await.stdout).expect("status JSON");
    let restored = status["store"]["state_records"].as_u64().unwrap_or(0);
    assert!(restored >= records, "every record came back: {restored} of at least {records}");
    let incidents: Vec<IncidentView> = cluster.client().get("/v1/incidents").await.unwrap();
    assert!(incidents.iter().any(|i| i.id == incident.id && i.title == incident.title), "{incidents:#?}");
    // The release's artifact came back with the state: on the restored coordinator, on those that
    // joined it, and to a host it targets.
    for i in 0..3 {
        wait_blob(&cluster, i, &release.digest).await;
    }
    // (web-1's own agent is stopped meanwhile: a host has one link, the newest.)
    cluster.kill_agent("web-1").await.unwrap();
    let artifact = download_artifact_as(&cluster, "web-1", &release.digest).await;
    assert_eq!(artifact.len() as u64, release.size);
    assert_eq!(hex::encode(ring::digest::digest(&ring::digest::SHA256, &artifact)), release.digest);
    cluster.start_agent("web-1").unwrap();
    cluster.wait_reporting(&["web-1"], DEADLINE).await.unwrap();

    // And the cluster goes on: a push is tested, packaged and rolled out.
    repo.write("NOTES.md", "after the restore\n").unwrap();
    let next = repo.commit("After the restore").await.unwrap();
    assert!(repo.push().await.unwrap().status.success());
    let r2 = wait_release(&cluster, &next).await;
    assert!(r2 > r1);
    let done = wait_rollout(&cluster, r2, Phase::Done).await;
    assert_eq!(done.outcome, Some(Outcome::Succeeded), "{done:#?}");
    wait_serving(&[port], &next[..10]).await;
}

// ---- the dashboard, in a real browser ----------------------------------------------------------

/// A minimal WebDriver client (W3C protocol, JSON over HTTP/1.1 to chromedriver on loopback),
/// written over a plain TCP stream: one request per connection.
mod webdriver {
    use std::time::Duration;

    use anyhow::{anyhow, bail, Context, Result};
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The key W3C WebDriver names an element reference with.
    const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

    /// chromedriver, killed when dropped.
    pub struct Driver {
        child: std::process::Child,
        pub port: u16,
    }

    impl Drop for Driver {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Where a program is on PATH.
    pub fn which(name: &str) -> Option<std::path::PathBuf> {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(name)).find(|p| p.is_file())
    }

    impl Driver {
        /// Starts chromedriver on a free loopback port and waits until it is ready. Fails (never
        /// skips) when chromium or chromedriver is missing.
        pub async fn start(log: &std::path::Path) -> Result<Self> {
            let driver = which("chromedriver").ok_or_else(|| {
                anyhow!("chromedriver is not installed: apt-get install chromium chromium-driver (scripts/test does it as root)")
            })?;
            which("chromium").ok_or_else(|| {
                anyhow!("chromium is not installed: apt-get install chromium chromium-driver (scripts/test does it as root)")
            })?;
            let port = fifty::local::free_port()?;
            let child = std::process::Command::new(driver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("start chromedriver")?;
            let d = Driver { child, port };
            fifty::local::wait_for("chromedriver to be ready", Duration::from_secs(30), || async {
                Ok(call(port, "GET", "/status", None).await.ok().filter(|v| v["ready"] == true).map(|_| ()))
            })
            .await?;
            Ok(d)
        }
    }

    /// One WebDriver command: its `value`, or the error it answered.
    pub async fn call(port: u16, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        // chromedriver says `Connection: close` but may keep the connection open: read the head,
        // then as much body as it declares.
        let read = async {
            let mut answer = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                answer.extend_from_slice(&buf[..n]);
                if let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            l.split_once(':').filter(|(k, _)| k.trim() == name).map(|(_, v)| v.trim().to_string())
                        })
                    };
                    let body = &answer[split + 4..];
                    let complete = match (header("content-length"), header("transfer-encoding")) {
                        (Some(len), _) => body.len() >= len.parse::<usize>().unwrap_or(0),
                        (None, Some(te)) if te.contains("chunked") => body.ends_with(b"0\r\n\r\n"),
                        _ => n == 0,
                    };
                    if complete {
                        return Ok::<_, std::io::Error>(answer);
                    }
                }
                if n == 0 {
                    return Ok(answer);
                }
            }
        };
        let answer = tokio::time::timeout(Duration::from_secs(120), read)
            .await
            .with_context(|| format!("chromedriver did not answer {method} {path}"))??;
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").context("no end of the answer's head")?;
        let head = String::from_utf8_lossy(&answer[..split]).to_string();
        let mut body = answer[split + 4..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding:") && head.to_ascii_lowercase().contains("chunked") {
            body = dechunk(&body)?;
        }
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status")?;
        let v: Value = serde_json::from_slice(&body).with_context(|| format!("{method} {path}: not JSON"))?;
        if status != 200 {
            bail!("{method} {path}: {status} {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let end = b.windows(2).position(|w| w == b"\r\n").context("chunk size")?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16)?;
            if size == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&b[end + 2..end + 2 + size]);
            b = &b[end + 4 + size..];
        }
    }

    fn unbase64(text: &str) -> Result<Vec<u8>> {
        let value = |c: u8| -> Result<u32> {
            Ok(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => bail!("not base64: {c}"),
            } as u32)
        };
        let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
        let mut out = Vec::with_capacity(clean.len() * 3 / 4);
        for chunk in clean.chunks(4) {
            let mut n = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                n |= value(*c)? << (18 - 6 * i);
            }
            out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
        }
        Ok(out)
    }

    /// One browser (its own profile, so its own cookies).
    pub struct Browser {
        port: u16,
        pub id: String,
    }

    impl Browser {
        /// A new headless Chromium at 1280×800 with a fresh profile in `profile`.
        pub async fn open(driver: &Driver, profile: &std::path::Path) -> Result<Self> {
            let binary = which("chromium").context("chromium")?;
            let caps = json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:chromeOptions": {
                    "binary": binary,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--ignore-certificate-errors", "--window-size=1280,800",
                        format!("--user-data-dir={}", profile.display()),
                    ]
                }
            }}});
            let v = call(driver.port, "POST", "/session", Some(caps)).await?;
            let id = v["sessionId"].as_str().context("no session id")?.to_string();
            Ok(Browser { port: driver.port, id })
        }

        async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
            call(self.port, method, &format!("/session/{}{path}", self.id), body).await
        }

        /// Navigates and waits for the page to load.
        pub async fn goto(&self, url: &str) -> Result<()> {
            self.cmd("POST", "/url", Some(json!({ "url": url }))).await.map(|_| ())
        }

        /// The current URL.
        pub async fn url(&self) -> Result<String> {
            Ok(self.cmd("GET", "/url", None).await?.as_str().unwrap_or_default().to_string())
        }

        /// Runs `script` (a function body) in the page and returns what it returns.
        pub async fn js(&self, script: &str) -> Result<Value> {
            self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
        }

        async fn element(&self, css: &str) -> Result<String> {
            let v = self.cmd("POST", "/element", Some(json!({ "using": "css selector", "value": css }))).await?;
            Ok(v[ELEMENT].as_str().context("no element reference")?.to_string())
        }

        /// Types `text` into the element `css` like a user.
        pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
            let e = self.element(css).await?;
            self.cmd("POST", &format!("/element/{e}/value"), Some(json!({ "text": text }))).await.map(|_| ())
        }

        /// Clicks the element `css` like a user (again if a live update replaced it meanwhile).
        pub async fn click(&self, css: &str) -> Result<()> {
            let mut last = None;
            for _ in 0..5 {
                let e = self.element(css).await?;
                match self.cmd("POST", &format!("/element/{e}/click"), Some(json!({}))).await {
                    Ok(_) => return Ok(()),
                    Err(err) => last = Some(err),
                }
            }
            Err(last.unwrap_or_else(|| anyhow!("click {css}")))
        }

        /// The browser's cookies for the current page, as WebDriver reports them.
        pub async fn cookies(&self) -> Result<Vec<Value>> {
            Ok(self.cmd("GET", "/cookie", None).await?.as_array().cloned().unwrap_or_default())
        }

        /// Resizes the window.
        pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
            self.cmd("POST", "/window/rect", Some(json!({ "width": width, "height": height }))).await.map(|_| ())
        }

        /// Saves a PNG screenshot of the viewport to `path`.
        pub async fn screenshot(&self, path: &std::path::Path) -> Result<()> {
            let v = self.cmd("GET", "/screenshot", None).await?;
            let png = unbase64(v.as_str().context("screenshot is not text")?)?;
            anyhow::ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
            std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
        }

        /// Ends the browser.
        pub async fn close(self) -> Result<()> {
            call(self.port, "DELETE", &format!("/session/{}", self.id), None).await.map(|_| ())
        }
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(unbase64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(unbase64("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(dechunk(b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n").unwrap(), b"hello!");
    }
}

/// The dashboard in headless Chromium over WebDriver, against a live three-coordinator cluster:
/// sign-in with read and admin tokens (the read one on a follower, which forwards to the leader);
/// the session cookie's attributes; the hosts of the cluster and the label filter; a rollout
/// advancing wave by wave on a page that is never reloaded; a gate closed and reopened as admin
/// through the page; no action for the read session; forged POSTs (no CSRF token, a wrong one,
/// a read session's) refused with 403; phone width; sign-out ending the session. Screenshots of
/// every page go to target/ui-screenshots/.
#[test]
fn the_dashboard_works_in_a_real_browser() {
    // The scenario is one long async function whose state, in a debug build, outgrows a test
    // thread's default stack: run it on a thread with a larger one.
    let run = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_stack_size(16 << 20)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(Box::pin(dashboard_scenario()))
    };
    let scenario = std::thread::Builder::new().stack_size(64 << 20).spawn(run).expect("a thread");
    if let Err(panic) = scenario.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn dashboard_scenario() {
    use serde_json::Value;
    let dir = test_dir("ui");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shots = shots.canonicalize().unwrap();
    println!("dashboard screenshots: {}", shots.display());
    let shot = |name: &str| shots.join(format!("{name}.png"));

    let options = Options { coordinators: 3, ..Options::default() };
    let (cluster, _ports, repo, ci) = shop_cluster(&dir, options, fifty::sample_app::Steps::Deploy).await;
    let leader = cluster.wait_leader(DEADLINE).await.unwrap();
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let url = |i: usize, path: &str| format!("https://{}{path}", cluster.coordinators[i].http);
    let read = token(&cluster, "read", None).await;
    let admin = cluster.admin_token.clone();

    std::fs::create_dir_all(&dir).unwrap();
    let driver = webdriver::Driver::start(&dir.join("chromedriver.log")).await.unwrap();
    let a = webdriver::Browser::open(&driver, &dir.join("profile-admin")).await.unwrap();
    let r = webdriver::Browser::open(&driver, &dir.join("profile-read")).await.unwrap();
    let text = |b: &'static str| format!("return (document.querySelector({b:?}) || {{}}).textContent || '';");

    // 1. Not signed in: sent to the sign-in page, and back to the page asked for after it.
    a.goto(&url(leader, "/ui/hosts")).await.unwrap();
    assert!(a.url().await.unwrap().contains("/ui/login?next=%2Fui%2Fhosts"), "{}", a.url().await.unwrap());
    a.screenshot(&shot("01-login")).await.unwrap();
    // A CI token may not sign in; a wrong one neither.
    for (bad, says) in [(ci.token.as_str(), "a ci token may not sign in"), ("fifty_nonsense", "invalid")] {
        a.type_into("#token", bad).await.unwrap();
        a.click("form.login button").await.unwrap();
        wait_for("the sign-in to be refused", DEADLINE, || async {
            Ok(a.js(&text("p.error")).await?.as_str().filter(|t| t.contains(says)).map(|_| ()))
        })
        .await
        .unwrap();
    }
    a.type_into("#token", &admin).await.unwrap();
    a.click("form.login button").await.unwrap();
    wait_for("the admin to land on the hosts page", DEADLINE, || async {
        Ok(a.url().await?.ends_with("/ui/hosts").then_some(()))
    })
    .await
    .unwrap();
    // The session cookie as the browser holds it.
    let cookies = a.cookies().await.unwrap();
    let session = cookies.iter().find(|c| c["name"] == "fifty_session").unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(session["path"], "/ui", "{session}");
    assert!(session["expiry"].as_u64().is_some(), "the cookie has an expiry: {session}");
    let admin_cookie = format!("fifty_session={}", session["value"].as_str().unwrap());

    // 2. The live cluster's hosts, all ready; the label filter.
    wait_for("the hosts page to list five ready hosts", DEADLINE, || async {
        let rows = a.js("return [...document.querySelectorAll('#hosts tbody tr')].map(r => r.dataset.host + ' ' + r.cells[1].textContent);").await?;
        let rows: Vec<String> = rows.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect();
        Ok((rows.len() == 5 && rows.iter().all(|r| r.ends_with("ready"))).then_some(()))
    })
    .await
    .unwrap();
    a.screenshot(&shot("02-hosts")).await.unwrap();
    a.goto(&url(leader, "/ui/hosts?label=role%3Dprod")).await.unwrap();
    let rows =
        a.js("return [...document.querySelectorAll('#hosts tbody tr')].map(r => r.dataset.host);").await.unwrap();
    assert_eq!(rows, serde_json::json!(["web-1", "web-2", "web-3", "web-4"]));
    assert_eq!(a.js("return document.querySelector('#label').value;").await.unwrap(), "role=prod");

    // 3. A read session, signed in on a follower: it shows the leader's view (the hosts' live state
    // is only on the leader) and no action anywhere.
    r.goto(&url(follower, "/ui/")).await.unwrap();
    r.type_into("#token", &read.token).await.unwrap();
    r.click("form.login button").await.unwrap();
    wait_for("the follower's overview to show five ready hosts", DEADLINE, || async {
        Ok(r.js(&text("#hosts-ready")).await?.as_str().filter(|t| *t == "5").map(|_| ()))
    })
    .await
    .unwrap();
    let overview = r.js("return document.querySelector('main').innerText;").await.unwrap();
    let overview = overview.as_str().unwrap();
    assert!(overview.contains("leader") && overview.contains("shop/main"), "{overview}");
    assert_eq!(r.js(&text(".role")).await.unwrap(), "read");
    r.screenshot(&shot("03-overview-read-follower")).await.unwrap();
    r.goto(&url(follower, "/ui/gates")).await.unwrap();
    assert_eq!(r.js("return document.querySelectorAll('main form, main button').length;").await.unwrap(), 0);
    assert_eq!(r.js(&text("#gates td.gate-state")).await.unwrap(), "open");
    r.screenshot(&shot("04-gates-read")).await.unwrap();
    let read_cookie = r.cookies().await.unwrap();
    let read_cookie = read_cookie.iter().find(|c| c["name"] == "fifty_session").unwrap();
    let read_cookie = format!("fifty_session={}", read_cookie["value"].as_str().unwrap());
    let read_csrf = r.js("return document.querySelector('input[name=csrf]').value;").await.unwrap();
    let read_csrf = read_csrf.as_str().unwrap().to_string();

    // 4. Forged POSTs: no session, no CSRF token, a wrong one, a read session's (with its own
    // valid token) — all 403, on the leader and through the follower; the gate stays open.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let forgeries = [
        ("no session", None, "reason=forged".to_string()),
        ("no CSRF token", Some(admin_cookie.as_str()), "reason=forged".to_string()),
        ("a wrong CSRF token", Some(admin_cookie.as_str()), format!("reason=forged&csrf={}", "0".repeat(64))),
        ("a read session", Some(read_cookie.as_str()), format!("reason=forged&csrf={read_csrf}")),
    ];
    for (what, cookie, body) in &forgeries {
        // The read session lives on the follower, the admin's on the leader.
        let at = if cookie == &Some(read_cookie.as_str()) { follower } else { leader };
        let mut headers = form.to_vec();
        if let Some(c) = cookie {
            headers.push(("cookie", c));
        }
        let (status, _, answer) =
            raw(&cluster, at, hyper::Method::POST, "/ui/gates/shop/close", &headers, body.as_bytes().to_vec()).await;
        assert_eq!(status, 403, "a forged POST with {what}: {answer}");
    }
    let gate: GateView = cluster.client().get("/v1/repos/shop/gate").await.unwrap();
    assert!(gate.open, "{gate:?}");

    // 5. A rollout advancing on a page that is not reloaded: the admin watches /ui/rollouts while
    // a green commit is pushed, built, packaged and rolled out in three waves.
    a.goto(&url(leader, "/ui/rollouts")).await.unwrap();
    a.js("window.__notReloaded = true; return null;").await.unwrap();
    let head = repo.git_head().await;
    assert!(repo.push().await.unwrap().status.success());
    let release = wait_release(&cluster, &head).await;
    let mut waves_seen = std::collections::BTreeSet::new();
    let mut read_checked = false;
    let mut steered = false;
    let state = "const s = document.querySelector('section.rollout'); \
        return { kept: window.__notReloaded === true, updated: document.querySelector('main').dataset.updated || null, \
                 title: s ? s.querySelector('h2').textContent : '', status: s ? s.querySelector('p.status').textContent : '', \
                 wave: (document.querySelector('li.wave.current') || { dataset: {} }).dataset.wave || null, \
                 buttons: [...document.querySelectorAll('main .actions button')].map(b => b.textContent) };";
    // Polled like `wait_for`, but keeping what it saw on the way.
    let started = std::time::Instant::now();
    let done: Value = loop {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the rollout did not succeed on the page: {waves_seen:?}"
        );
        let v = a.js(state).await.unwrap();
        assert_eq!(v["kept"], true, "the page was reloaded: {v}");
        if v["title"].as_str().unwrap_or("").contains(&format!("release {release}")) {
            if let Some(w) = v["wave"].as_str() {
                if waves_seen.insert(w.to_string()) {
                    a.screenshot(&shot(&format!("05-rollout-wave-{w}"))).await.unwrap();
                }
                // While it runs, the admin has buttons and the read session has none.
                assert!(v["buttons"].as_array().is_some_and(|b| b.iter().any(|t| t == "Pause")), "{v}");
                if !read_checked {
                    r.goto(&url(follower, "/ui/rollouts")).await.unwrap();
                    let forms =
                        r.js("return document.querySelectorAll('main form, main button').length;").await.unwrap();
                    assert_eq!(forms, 0, "the read session sees actions on the rollouts page");
                    r.screenshot(&shot("06-rollout-read")).await.unwrap();
                    r.js("window.__notReloaded = true; return null;").await.unwrap();
                    read_checked = true;
                }
                // Once the page has advanced by itself, pause and resume through its buttons (each
                // a POST and a redirect back: the page is loaded anew, so the mark is set again).
                if waves_seen.len() >= 2 && !steered {
                    a.click("form[action='/ui/rollouts/shop/pause'] button").await.unwrap();
                    wait_for("the page to show the rollout paused", DEADLINE, || async {
                        Ok(a.js(&text("section.rollout p.status"))
                            .await?
                            .as_str()
                            .filter(|t| t.contains("paused"))
                            .map(|_| ()))
                    })
                    .await
                    .unwrap();
                    let paused: RolloutView = cluster.client().get("/v1/rollouts/current?repo=shop").await.unwrap();
                    assert!(paused.paused, "{paused:?}");
                    a.screenshot(&shot("05-rollout-paused")).await.unwrap();
                    a.click("form[action='/ui/rollouts/shop/resume'] button").await.unwrap();
                    wait_for("the page to show the rollout resumed", DEADLINE, || async {
                        let status = a.js(&text("section.rollout p.status")).await?;
                        Ok(status.as_str().filter(|t| !t.is_empty() && !t.contains("paused")).map(|_| ()))
                    })
                    .await
                    .unwrap();
                    a.js("window.__notReloaded = true; return null;").await.unwrap();
                    steered = true;
                    continue;
                }
            }
            if v["status"].as_str().unwrap_or("").contains("succeeded") {
                break v;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(done["updated"].is_string(), "the page was changed by live updates: {done}");
    assert!(waves_seen.len() >= 2, "the page showed the rollout advancing wave by wave: {waves_seen:?}");
    assert!(read_checked, "the read session looked at the rollout while it ran");
    assert!(steered, "the rollout was paused and resumed from the page");
    // The read session's page, on a follower, followed too (its stream re-renders on the leader).
    wait_for("the follower's rollouts page to show the rollout's success", DEADLINE, || async {
        let v = r.js(state).await?;
        assert_eq!(v["kept"], true, "the read session's page was reloaded: {v}");
        Ok(v["status"].as_str().filter(|t| t.contains("succeeded")).map(|_| ()))
    })
    .await
    .unwrap();
    let done_view: RolloutView = cluster.client().get("/v1/rollouts/current?repo=shop").await.unwrap();
    assert!(done_view.events.iter().any(|(_, e)| e.contains("paused")), "{:?}", done_view.events);
    a.screenshot(&shot("07-rollout-done")).await.unwrap();

    // 6. Close and reopen the gate as admin, through the page.
    a.goto(&url(leader, "/ui/gates")).await.unwrap();
    a.type_into("#reason-shop", "closed from the dashboard test").await.unwrap();
    a.click("#gates form.action button").await.unwrap();
    wait_for("the gate to show closed", DEADLINE, || async {
        Ok(a.js(&text("#gates td.gate-state")).await?.as_str().filter(|t| *t == "closed").map(|_| ()))
    })
    .await
    .unwrap();
    let gate: GateView = cluster.client().get("/v1/repos/shop/gate").await.unwrap();
    assert!(!gate.open && gate.reason.as_deref() == Some("closed from the dashboard test"), "{gate:?}");
    assert!(gate.changed_by.as_deref().is_some_and(|b| b.starts_with("token ")), "{gate:?}");
    a.screenshot(&shot("08-gates-admin-closed")).await.unwrap();
    a.click("#gates form.action button").await.unwrap();
    wait_for("the gate to show open", DEADLINE, || async {
        Ok(a.js(&text("#gates td.gate-state")).await?.as_str().filter(|t| *t == "open").map(|_| ()))
    })
    .await
    .unwrap();
    let gate: GateView = cluster.client().get("/v1/repos/shop/gate").await.unwrap();
    assert!(gate.open, "{gate:?}");

    // 7. Phone width: the overview fits without sideways scrolling.
    a.resize(390, 844).await.unwrap();
    a.goto(&url(leader, "/ui/")).await.unwrap();
    let fits = a.js("return document.documentElement.scrollWidth <= window.innerWidth + 1;").await.unwrap();
    assert_eq!(fits, true, "the overview is wider than a phone");
    a.screenshot(&shot("09-overview-phone")).await.unwrap();
    a.resize(1280, 800).await.unwrap();

    // 8. Every dashboard route, from its table, with no session, a read session and an admin
    // session without the CSRF token: pages send the anonymous to sign-in and serve both roles;
    // every action refuses all three with 403 (the parameters name nothing, so nothing changes).
    let admin_csrf = a.js("return document.querySelector('input[name=csrf]').value;").await.unwrap();
    let admin_csrf = admin_csrf.as_str().unwrap().to_string();
    let mut wrong = Vec::new();
    for route in fifty::ui::routes() {
        let path: String = route
            .path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "probe" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let path = if path == "/ui/events" { "/ui/events?page=%2Fui%2Fhosts".to_string() } else { path };
        let post = route.method == hyper::Method::POST;
        for (who, cookie, at) in [
            ("no session", None, leader),
            ("read", Some(&read_cookie), follower),
            ("admin", Some(&admin_cookie), leader),
        ] {
            let mut headers = form.to_vec();
            if let Some(c) = cookie {
                headers.push(("cookie", c.as_str()));
            }
            if path.starts_with("/ui/events") && cookie.is_some() {
                continue; // a stream does not end: its access is checked with no session only
            }
            let (status, _, answer) =
                raw(&cluster, at, route.method.clone(), &path, &headers, b"reason=probe".to_vec()).await;
            let ok = match (route.access, who) {
                (fifty::ui::UiAccess::Public, _) => status < 500 && status != 403,
                (_, "no session") if post => status == 403,
                (_, "no session") => status == 303,
                (fifty::ui::UiAccess::Leader(fifty_shared::ids::Role::Admin), _) => status == 403,
                // Sign-out without its CSRF token is refused too.
                (_, _) if post => status == 403,
                // A page whose parameter names nothing may say so (404, or 400 for a bad one).
                (_, _) => status == 200 || status == 400 || status == 404,
            };
            if !ok {
                wrong.push(format!("{} {path} as {who}: {status} {answer}", route.method));
            }
        }
        // With the admin's CSRF token the same action goes through the guard to its handler,
        // which finds nothing named `probe` (or refuses it as a parameter): not 403, not 5xx.
        if route.access == fifty::ui::UiAccess::Leader(fifty_shared::ids::Role::Admin) {
            let headers = [form[0], ("cookie", admin_cookie.as_str())];
            let body = format!("reason=probe&csrf={admin_csrf}").into_bytes();
            let (status, _, answer) = raw(&cluster, leader, route.method.clone(), &path, &headers, body).await;
            if status == 403 || status >= 500 {
                wrong.push(format!("{} {path} as admin with the CSRF token: {status} {answer}", route.method));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // 9. Sign-out ends the session: the browser goes to sign-in, and the old cookie is refused.
    a.click("header form button").await.unwrap();
    wait_for("the sign-out", DEADLINE, || async { Ok(a.url().await?.contains("/ui/login").then_some(())) })
        .await
        .unwrap();
    let (status, _, _) =
        raw(&cluster, leader, hyper::Method::GET, "/ui/hosts", &[("cookie", &admin_cookie)], vec![]).await;
    assert_eq!(status, 303, "the signed-out session's cookie is sent to sign-in");
    let (status, _, _) = raw(
        &cluster,
        leader,
        hyper::Method::POST,
        "/ui/gates/shop/close",
        &[("cookie", &admin_cookie), form[0]],
        b"reason=x".to_vec(),
    )
    .await;
    assert_eq!(status, 403);

    a.close().await.unwrap();
    r.close().await.unwrap();
    drop(driver);
    let _ = std::fs::remove_dir_all(&dir);
}
