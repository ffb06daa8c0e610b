//! Artifact download against the ceiling this machine gives QUIC (issue 17), in one run:
//!
//! 1. Raw quinn on loopback with the cluster's own TLS setup (a cluster CA, a coordinator
//!    certificate, a host's client certificate, `tls::quic_server_config`/`quic_client_config`,
//!    the agent ALPN and transport settings), in this process, bytes from memory: (a) one stream
//!    carrying the whole size, (b) the agent's pattern, 1 MiB per bi-stream request with
//!    `PARALLEL_PIECES` (4) in flight. The ceiling is the faster of the two.
//! 2. One agent's download of a release whose artifact is FIFTY_BENCH_ARTIFACT_MIB (default 200)
//!    MiB, on a loopback cluster of release binaries (one coordinator, one build agent, one
//!    production agent): the agent's own log line (`artifact downloaded and verified`: piece table,
//!    pieces on streams of their own, each hashed and written, the whole file hashed again).
//!
//! Each of FIFTY_BENCH_ROUNDS rounds (default 3) measures both, raw first, then a new release.
//! Run with `scripts/bench/p2p`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fifty::local::{bin_dir, free_port, LocalCluster, Options};
use fifty::sample_app::SampleRepo;
use fifty_shared::codec::{read_frame, write_frame};
use fifty_shared::ids::HostName;
use fifty_shared::tls;
use fifty_shared::wire::ALPN_AGENT;

const PIECE: usize = 1 << 20;
const PARALLEL: usize = 4;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A loopback QUIC server and client with the cluster's TLS: returns the client's connection.
async fn raw_pair(payload: Arc<Vec<u8>>) -> (quinn::Endpoint, quinn::Endpoint, quinn::Connection) {
    let ca = tls::new_cluster_ca().unwrap();
    let coordinator = tls::issue_coordinator_cert(&ca, &[]).unwrap();
    let host = HostName::new("bench-host").unwrap();
    let (host_key, csr) = tls::new_host_key_and_csr(&host).unwrap();
    let host_cert = tls::sign_host_csr(&ca, &csr, &host, &tls::random_serial()).unwrap();
    let host_identity = tls::CertAndKey { cert_pem: host_cert, key_pem: host_key };
    let server_config = tls::quic_server_config(&coordinator, &ca.cert_pem, &[ALPN_AGENT]).unwrap();
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let accepting = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let payload = payload.clone();
                    tokio::spawn(async move {
                        // The request says which slice: (start, len).
                        let Ok(Some((start, len))) = read_frame::<(u64, u64), _>(&mut recv).await else { return };
                        let _ = send.write_all(&payload[start as usize..(start + len) as usize]).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    let client_config = tls::quic_client_config(&ca.cert_pem, &host_identity, ALPN_AGENT).unwrap();
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = client.connect_with(client_config, addr, tls::COORDINATOR_NAME).unwrap().await.unwrap();
    (server, client, conn)
}

async fn fetch(conn: &quinn::Connection, start: u64, len: u64) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_frame(&mut send, &(start, len)).await.unwrap();
    send.finish().unwrap();
    let mut buf = vec![0; len as usize];
    recv.read_exact(&mut buf).await.unwrap();
    buf
}

/// MiB/s of (a) one stream carrying everything, (b) 1 MiB per stream, 4 in flight.
async fn raw_quinn(size: usize) -> (f64, f64) {
    let mut payload = vec![0u8; size];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for b in payload.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let (server, client, conn) = raw_pair(Arc::new(payload)).await;
    let mib = size as f64 / 1048576.0;
    // Warm-up: the congestion window opens.
    fetch(&conn, 0, (16 * PIECE).min(size) as u64).await;
    let t = Instant::now();
    let got = fetch(&conn, 0, size as u64).await;
    let one_stream = mib / t.elapsed().as_secs_f64();
    assert_eq!(got.len(), size);
    drop(got);
    let t = Instant::now();
    let pieces = size.div_ceil(PIECE);
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut received = 0usize;
    while next < pieces || !running.is_empty() {
        while next < pieces && running.len() < PARALLEL {
            let (conn, start) = (conn.clone(), next * PIECE);
            let len = PIECE.min(size - start);
            running.spawn(async move { fetch(&conn, start as u64, len as u64).await.len() });
            next += 1;
        }
        received += running.join_next().await.unwrap().unwrap();
    }
    let pieces_rate = mib / t.elapsed().as_secs_f64();
    assert_eq!(received, size);
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    server.close(0u32.into(), b"done");
    (one_stream, pieces_rate)
}

/// The download figures (bytes, seconds) web-1 logged for `release`.
fn download_of(dir: &std::path::Path, release: u64) -> Option<(f64, f64)> {
    let log = std::fs::read_to_string(dir.join("logs/web-1.log")).ok()?;
    let tag = format!("release={release}");
    let line = log.lines().filter(|l| l.contains("artifact downloaded and verified") && l.contains(&tag)).last()?;
    let field = |name: &str| {
        line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{name}="))).and_then(|v| v.parse::<f64>().ok())
    };
    Some((field("bytes")?, field("secs")?))
}

fn main() {
    let mib = env_usize("FIFTY_BENCH_ARTIFACT_MIB", 200);
    let rounds = env_usize("FIFTY_BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("fifty-bench-p2p-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = LocalCluster::start(&dir, &bin_dir().unwrap(), Options::default()).await.unwrap();
        cluster.add_agent("build-1", "role=build,slots=1").await.unwrap();
        let port = free_port().unwrap();
        cluster.add_agent_with("web-1", "role=prod", &format!("port={port}")).await.unwrap();
        cluster.wait_reporting(&["build-1", "web-1"], Duration::from_secs(60)).await.unwrap();
        let ci: fifty::views::TokenCreated = cluster
            .client()
            .post(
                "/v1/tokens",
                &fifty::views::CreateToken { role: "ci".into(), ttl: None, max_uses: None, description: "bench".into() },
            )
            .await
            .unwrap();
        let repo = SampleRepo::create(&dir, &cluster, "shop", &ci.token, None, fifty::sample_app::Steps::Deploy)
            .await
            .unwrap();
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let (one_stream, pieces) = raw_quinn(mib << 20).await;
            let ceiling = one_stream.max(pieces);
            // A new artifact of random bytes each round (nothing to reuse on the host).
            let mut blob = vec![0u8; mib << 20];
            let mut x: u64 = 0x2545F4914F6CDD1D ^ round as u64;
            for b in blob.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            std::fs::write(repo.work.join("release/blob.bin"), &blob).unwrap();
            drop(blob);
            repo.commit(&format!("{mib} MiB of data, round {round}")).await.unwrap();
            let sha = fifty::sample_app::git(&repo.work, &["rev-parse", "HEAD"]).await.unwrap();
            let sha = String::from_utf8_lossy(&sha.stdout).trim().to_string();
            assert!(repo.push().await.unwrap().status.success());
            let release = cluster.wait_release(&sha, Duration::from_secs(600)).await.unwrap();
            let (bytes, secs) = fifty::local::wait_for("web-1 to log its download", Duration::from_secs(600), || {
                let found = download_of(&dir, release);
                async move { Ok(found) }
            })
            .await
            .unwrap();
            let agent = bytes / 1048576.0 / secs;
            ratios.push(agent / ceiling);
            println!(
                "round {round}: raw quinn {one_stream:.0} MiB/s one stream, {pieces:.0} MiB/s 1 MiB pieces x{PARALLEL}; \
                 agent download of {:.1} MiB: {secs:.2} s, {agent:.0} MiB/s = {:.0}% of the faster raw figure",
                bytes / 1048576.0,
                100.0 * agent / ceiling
            );
        }
        let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let best = ratios.iter().copied().fold(0.0, f64::max);
        println!("agent / raw quinn: {:.0}%-{:.0}% over {rounds} rounds, worst {:.0}% (target >= 50%)", 100.0 * worst, 100.0 * best, 100.0 * worst);
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
