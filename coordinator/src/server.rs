//! `fifty server`: opens the store, loads the cluster CA, binds the QUIC endpoint and the HTTPS
//! API, forms or joins the Raft cluster, and serves until told to stop. Whichever coordinator
//! first leads a new cluster records it (CA, bootstrap admin token) as the first decision.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use fifty_shared::ids::Role;
use fifty_shared::tls::{self, CertAndKey};
use fifty_shared::token;
use fifty_shared::wire::{PeerInfo, ALPN_AGENT, ALPN_ENROLL, ALPN_PEER};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{write_private, Config};
use crate::consensus::transport::Transport;
use crate::consensus::{Consensus, Membership, Options};
use crate::coordinator::Coordinator;
use crate::state::{ClusterRecord, Command, Rejection, TokenRecord};
use crate::store::raft_log::RaftLog;
use crate::store::Store;

/// Runs a coordinator until `shutdown` turns true.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<()> {
    // The data dir holds the cluster CA key and the release-signing key (sled's files included):
    // everything this process creates is its user's only, and a looser data dir is refused.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    prepare_data_dir(&config)?;
    let store = Store::open_with_blobs(&config.state_dir(), &config.blob_dir())
        .with_context(|| format!("open state in {}", config.state_dir().display()))?;
    // Before anything reads the Raft log: refuse a log that lost what this node acknowledged.
    RaftLog::new(store.clone()).verify()?;
    let node_id = RaftLog::new(store.clone()).node_id()?;
    let ca = load_or_create_ca(&config)?;

    // This node's certificate is issued afresh at every start: it follows `tls_names`.
    let identity = tls::issue_coordinator_cert(&ca, &config.tls_names)?;
    let quic_config = tls::quic_server_config(&identity, &ca.cert_pem, &[ALPN_ENROLL, ALPN_AGENT, ALPN_PEER])?;
    let (socket, _) = bind_udp(config.quic_addr, config.links.udp_recv_buffer)
        .with_context(|| format!("bind QUIC endpoint on {}", config.quic_addr))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quic_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("bind QUIC endpoint on {}", config.quic_addr))?;
    let listener =
        TcpListener::bind(config.http_addr).await.with_context(|| format!("bind HTTPS API on {}", config.http_addr))?;
    let me = PeerInfo {
        node_id,
        quic_addr: config.advertised(endpoint.local_addr()?)?.to_string(),
        http_addr: config.advertised(listener.local_addr()?)?.to_string(),
    };
    let https_tls = tls::https_server_config(&identity, &ca.cert_pem)?;
    let mut peer_client = tls::quic_client_config(&ca.cert_pem, &identity, ALPN_PEER)?;
    peer_client.transport_config(tls::peer_transport_config());
    let transport = Transport::new(endpoint.clone(), peer_client, store.clone());
    let consensus = Consensus::new(store, me.clone(), transport);

    let coordinator = Arc::new(Coordinator::new(config.clone(), consensus.clone(), ca.clone())?);
    {
        let weak = Arc::downgrade(&coordinator);
        consensus.transport().on_last_heard(Box::new(move |hosts| {
            if let Some(c) = weak.upgrade() {
                c.learn_last_heard(hosts);
            }
        }));
    }
    tokio::spawn(fleet_upkeep(coordinator.clone(), shutdown.clone()));
    tracing::info!(node = format!("{node_id:016x}"), http = %me.http_addr, quic = %me.quic_addr, "coordinator listening");
    let router = crate::api::router(coordinator.clone());
    let quic = tokio::spawn(crate::quic::serve(endpoint, coordinator.clone(), shutdown.clone()));
    let api = tokio::spawn(crate::api::serve(listener, https_tls, router, config.api.clone(), shutdown.clone()));
    // systemd (`Type=notify`): ready once the API and the QUIC endpoint listen, before the cluster
    // forms. A coordinator waiting for its peers (`bootstrap_expect`) is up and answers
    // /v1/health; waiting for a quorum here would time out the first of three coordinators started
    // one after the other.
    fifty_shared::sd_notify::notify_or_warn(&format!(
        "READY=1\nSTATUS=API on {}, QUIC on {}; forming or joining the cluster",
        me.http_addr, me.quic_addr
    ));

    let membership = Membership {
        bootstrap_expect: config.bootstrap_expect,
        peers: config.peers.clone(),
        join: config.join.clone(),
        replace: config.replace,
        force_new_cluster: config.force_new_cluster,
    };
    let options = Options { snapshot_threshold: config.snapshot_threshold, ..Options::default() };
    let started = tokio::select! {
        started = consensus.start(membership, options) => started,
        _ = wait_for(shutdown.clone()) => return Ok(()),
    };
    started.context("form or join the cluster")?;
    fifty_shared::sd_notify::notify_or_warn(&format!(
        "STATUS=API on {}, QUIC on {}; a member of the cluster",
        me.http_addr, me.quic_addr
    ));
    tokio::spawn(leadership(coordinator.clone(), config.clone(), ca));
    tokio::spawn(crate::ci::dispatch::run(coordinator.clone(), shutdown.clone()));
    tokio::spawn(crate::deploy::dispatch::run(coordinator.clone(), shutdown.clone()));
    tokio::spawn(crate::deploy::artifacts::run(coordinator.consensus.clone(), shutdown.clone()));
    tokio::spawn(crate::notify::run(coordinator.clone(), shutdown.clone()));
    tokio::spawn(crate::experiments::leader::run(coordinator.clone(), shutdown.clone()));
    tokio::spawn(crate::alerts::run::run(coordinator.clone(), shutdown.clone()));
    tokio::spawn(crate::retention::run(coordinator.clone(), shutdown.clone()));
    tokio::spawn(consistency_checks(coordinator.clone(), config.consistency_check_interval, shutdown.clone()));

    let _ = tokio::join!(quic, api);
    coordinator.consensus.store().flush().await?;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// Binds the QUIC endpoint's UDP socket with a receive buffer of `recv_buffer` bytes
/// (`links.udp_recv_buffer`): a fleet's handshakes and heartbeats arriving at once wait in it
/// instead of being dropped. The kernel caps the size at `net.core.rmem_max`; say so when it did.
/// Returns the socket and the buffer the kernel granted (0 if it could not be read).
pub fn bind_udp(addr: std::net::SocketAddr, recv_buffer: usize) -> Result<(std::net::UdpSocket, usize)> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind(addr)?;
    let fd = socket.as_raw_fd();
    let asked = libc::c_int::try_from(recv_buffer).unwrap_or(libc::c_int::MAX);
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is the open socket above; the option value is a c_int of the size given.
    let set =
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&asked as *const libc::c_int).cast(), size) };
    if set != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(asked = recv_buffer, error = %e, "could not set the QUIC socket's receive buffer (links.udp_recv_buffer)");
        return Ok((socket, 0));
    }
    let mut got: libc::c_int = 0;
    let mut len = size;
    // SAFETY: as above; `got` and `len` are valid for writes of their sizes.
    let read = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&mut got as *mut libc::c_int).cast(), &mut len)
    };
    // Linux reports twice what it grants (the other half is its bookkeeping).
    let granted = if read == 0 { usize::try_from(got).unwrap_or(0) / 2 } else { 0 };
    if granted < recv_buffer {
        tracing::warn!(
            asked = recv_buffer,
            granted,
            "the kernel capped the QUIC socket's receive buffer (links.udp_recv_buffer); raise net.core.rmem_max \
             (sysctl -w net.core.rmem_max={recv_buffer}) or a fleet reconnecting at once may see datagrams dropped"
        );
    } else {
        tracing::info!(bytes = granted, "QUIC socket receive buffer");
    }
    Ok((socket, granted))
}

/// How often the leader shares what it last heard from each host with the other coordinators.
const SHARE_LAST_HEARD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the fleet's down rule honest: ticks it (so a stall of this process opens a grace
/// instead of calling every host down) and, on the leader, shares what it last heard from each
/// host with the other coordinators (`PeerRequest::LastHeard`), so a coordinator taking over
/// knows who was already silent.
async fn fleet_upkeep(coordinator: Arc<Coordinator>, shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(crate::fleet::TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_share = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = wait_for(shutdown.clone()) => return,
        }
        let now = std::time::Instant::now();
        let stalled = coordinator
            .fleet
            .lock()
            .expect("fleet lock")
            .tick(now, coordinator.config.down_after, || coordinator.reattach_grace());
        if stalled {
            tracing::warn!(
                "this coordinator did not run for a while (stopped, or starved of CPU); hosts get a grace period \
                 to report again before any is called down"
            );
        }
        if now.duration_since(last_share) < SHARE_LAST_HEARD_EVERY {
            continue;
        }
        last_share = now;
        coordinator.refresh_coordinators();
        if !coordinator.consensus.status().is_leader() {
            continue;
        }
        let heard = coordinator.fleet.lock().expect("fleet lock").last_heard(now);
        let hosts: Vec<_> = heard
            .into_iter()
            .map(|(host, age)| fifty_shared::wire::HeardHost { host, age_ms: age.as_millis() as u64 })
            .collect();
        if hosts.is_empty() {
            continue;
        }
        let me = coordinator.consensus.me().node_id;
        let members = coordinator.consensus.store().members().unwrap_or_default();
        for m in members.into_iter().filter(|m| m.id != me) {
            let transport = coordinator.consensus.transport().clone();
            let chunks: Vec<Vec<_>> =
                hosts.chunks(fifty_shared::wire::LAST_HEARD_PER_FRAME).map(<[_]>::to_vec).collect();
            // Off this loop: a dead follower must not hold up the ticks.
            tokio::spawn(async move {
                for chunk in chunks {
                    let req = fifty_shared::wire::PeerRequest::LastHeard(chunk);
                    if let Err(e) = transport.request_within(&m.quic_addr, &req, SHARE_LAST_HEARD_EVERY).await {
                        tracing::debug!(peer = %m.quic_addr, error = %format!("{e:#}"), "sharing last-heard times failed");
                        return;
                    }
                }
            });
        }
    }
}

/// On the leader, every `interval`: compare every coordinator's state at one checkpoint.
/// `Coordinator::cluster_check` logs an ERROR when they differ; a disagreement is for a person.
async fn consistency_checks(
    coordinator: Arc<Coordinator>,
    interval: std::time::Duration,
    shutdown: watch::Receiver<bool>,
) {
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wait_for(shutdown.clone()) => return,
        }
        if !coordinator.consensus.status().is_leader() {
            continue;
        }
        match coordinator.cluster_check().await {
            Ok(view) if view.consistent => tracing::debug!(index = view.index, "every coordinator's state agrees"),
            Ok(view) => {
                tracing::warn!(index = view.index, nodes = ?view.nodes, "consistency check: not every coordinator agrees")
            }
            Err(e) => tracing::debug!(error = %e, "consistency check not run"),
        }
    }
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Creates the data dir (0700, with `tls/`) or, when it exists, refuses it if anything in it is
/// open to other local users: a dir must be 0700 and a file 0600. A CA key kept outside the data
/// dir (`ca_key`) must be 0600 too.
pub fn prepare_data_dir(config: &Config) -> Result<()> {
    if config.data_dir.exists() {
        fifty_shared::config::check_private_tree(&config.data_dir).context("the data dir")?;
    }
    fifty_shared::config::create_private_dir(&config.data_dir)?;
    fifty_shared::config::create_private_dir(&config.tls_dir())?;
    if let Some(key) = &config.ca_key {
        fifty_shared::config::check_private(key).context("config key ca_key")?;
    }
    Ok(())
}

/// Follows this node's role: a new leader takes over the fleet's soft state (with a grace
/// period) and, in a brand-new cluster, records the cluster; a node that stops leading hands
/// its agents over.
async fn leadership(coordinator: Arc<Coordinator>, config: Config, ca: CertAndKey) {
    let mut status = coordinator.consensus.watch();
    let mut leading = false;
    loop {
        let now_leading = status.borrow_and_update().is_leader();
        if now_leading && !leading {
            tracing::info!(term = status.borrow().term, "this coordinator is now the leader");
            coordinator.on_became_leader();
            if let Err(e) = record_cluster(&coordinator, &config, &ca).await {
                tracing::warn!(error = %format!("{e:#}"), "could not record the new cluster yet; the next leader will");
            }
        } else if leading && !now_leading {
            tracing::info!("this coordinator is no longer the leader");
            coordinator.on_lost_leadership();
        }
        leading = now_leading;
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// In a new cluster: record the CA and a bootstrap admin token, and show the token once.
async fn record_cluster(coordinator: &Coordinator, config: &Config, ca: &CertAndKey) -> Result<()> {
    if coordinator.consensus.store().cluster()?.is_some() {
        return Ok(());
    }
    let now = SystemTime::now();
    let secret = token::new_secret();
    let bootstrap = TokenRecord {
        accessor: hex::encode(rand::random::<[u8; 8]>()),
        hash: token::hash_secret(&secret),
        role: Role::Admin,
        description: "bootstrap admin token".into(),
        created_at: now,
        expires_at: None,
        max_uses: None,
        uses: 0,
        revoked: false,
    };
    let release_key = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("could not generate the release-signing key"))?;
    let cluster = ClusterRecord {
        ca_cert_pem: ca.cert_pem.clone(),
        ca_key_pem: ca.key_pem.clone(),
        release_key_pkcs8: release_key.as_ref().to_vec(),
        created_at: now,
    };
    match coordinator.consensus.propose(Command::InitCluster { cluster, bootstrap }).await? {
        Ok(_) => {}
        Err(Rejection::AlreadyInitialised) => return Ok(()),
        Err(other) => bail!("{other}"),
    }
    let text = format!("{}{secret}", token::API_PREFIX);
    if let Some(path) = &config.bootstrap_token_file {
        write_private(path, &format!("{text}\n"))
            .with_context(|| format!("write bootstrap token to {}", path.display()))?;
    }
    println!(
        "==> Created a new Fifty cluster.\n\
         ==> Bootstrap admin token (shown once, stored only as a hash):\n\n    {text}\n\n\
         To use the CLI against this coordinator:\n\n    \
         export FIFTY_ADDR=https://{http}\n    \
         export FIFTY_CACERT={ca}\n    \
         export FIFTY_TOKEN={text}\n",
        http = coordinator.consensus.me().http_addr,
        ca = config.ca_path().display(),
    );
    Ok(())
}

/// The cluster CA: from `ca_cert`/`ca_key`, else from this node's data dir, else (a single
/// coordinator's first start) made here. Its certificate is always copied to `tls/ca.pem` for
/// `FIFTY_CACERT`.
fn load_or_create_ca(config: &Config) -> Result<CertAndKey> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let own_cert = config.tls_dir().join("ca.pem");
    let own_key = config.tls_dir().join("ca-key.pem");
    let ca = if let (Some(cert), Some(key)) = (&config.ca_cert, &config.ca_key) {
        CertAndKey { cert_pem: read(cert)?, key_pem: read(key)? }
    } else if own_key.exists() {
        CertAndKey { cert_pem: read(&own_cert)?, key_pem: read(&own_key)? }
    } else if config.clustered() {
        bail!(
            "config keys ca_cert and ca_key: coordinators of one cluster share a CA. Make it once with \
             `fifty ca init --out DIR`, copy DIR to every coordinator, and point ca_cert and ca_key at it"
        );
    } else {
        let ca = tls::new_cluster_ca()?;
        write_private(&own_key, &ca.key_pem).with_context(|| format!("write {}", own_key.display()))?;
        ca
    };
    tls::cert_from_pem(&ca.cert_pem).context("the CA certificate")?;
    std::fs::write(&own_cert, &ca.cert_pem).with_context(|| format!("write {}", own_cert.display()))?;
    Ok(ca)
}

/// `fifty ca init --out DIR`: a new cluster CA in `DIR/ca.pem` and `DIR/ca-key.pem`.
pub fn ca_init(dir: &Path) -> Result<()> {
    fifty_shared::config::create_private_dir(dir)?;
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert.exists() || key.exists() {
        bail!("{} already holds a CA; refusing to overwrite it", dir.display());
    }
    let ca = tls::new_cluster_ca()?;
    std::fs::write(&cert, &ca.cert_pem)?;
    write_private(&key, &ca.key_pem)?;
    println!(
        "Wrote {} and {}. Copy both to every coordinator and set ca_cert and ca_key.",
        cert.display(),
        key.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_data_dir_is_private_and_a_loose_one_is_refused_by_name() {
        let root = std::env::temp_dir().join(format!("fifty-server-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let config = Config { data_dir: root.join("data"), ..Config::default() };
        prepare_data_dir(&config).unwrap();
        assert_eq!((mode(&config.data_dir), mode(&config.tls_dir())), (0o700, 0o700));
        // (sled's own files are 0600 through the server's umask: the end-to-end tests check them.)

        // Made 0755 beforehand (as `mkdir` under the usual umask does): refused, naming it.
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = format!("{:#}", prepare_data_dir(&config).unwrap_err());
        assert!(err.contains(&format!("chmod 700 {}", config.data_dir.display())), "{err}");

        // A CA key outside the data dir that others may read is refused too.
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = root.join("ca-key.pem");
        std::fs::write(&key, "key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = Config { ca_key: Some(key.clone()), ca_cert: Some(root.join("ca.pem")), ..config };
        let err = format!("{:#}", prepare_data_dir(&config).unwrap_err());
        assert!(err.contains("ca_key") && err.contains(&format!("chmod 600 {}", key.display())), "{err}");

        // The store makes its own dir 0700 when it is new.
        drop(Store::open(&root.join("state")).unwrap());
        assert_eq!(mode(&root.join("state")), 0o700);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_quic_socket_gets_the_receive_buffer_asked_for_up_to_the_kernels_cap() {
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
        let addr = "127.0.0.1:0".parse().unwrap();
        let (_, granted) = bind_udp(addr, 256 * 1024).unwrap();
        assert_eq!(granted, (256 * 1024).min(cap));
        // Far over the cap: the kernel grants its cap, the socket still binds (and a warning says so).
        let (socket, granted) = bind_udp(addr, 1 << 30).unwrap();
        assert_eq!(granted, cap);
        assert!(socket.local_addr().unwrap().port() != 0);
    }
}
