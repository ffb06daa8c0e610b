//! `fifty server`: opens the state, creates the cluster on first start, binds the QUIC endpoint
//! and the HTTPS API, and serves both until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use fifty_shared::ids::Role;
use fifty_shared::tls;
use fifty_shared::token;
use fifty_shared::wire::{ALPN_AGENT, ALPN_ENROLL};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{write_private, Config};
use crate::consensus::Consensus;
use crate::coordinator::Coordinator;
use crate::state::{ClusterRecord, Command, TokenRecord};
use crate::store::Store;

/// Where a running server listens (ports resolved, useful when configured with port 0).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// HTTPS API.
    pub http: SocketAddr,
    /// QUIC endpoint.
    pub quic: SocketAddr,
}

/// Runs a coordinator until `shutdown` turns true.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<()> {
    std::fs::create_dir_all(config.tls_dir()).with_context(|| format!("create {}", config.tls_dir().display()))?;
    let store = Store::open(&config.state_dir()).with_context(|| format!("open state in {}", config.state_dir().display()))?;
    let consensus = Consensus::new(store);
    if consensus.store().cluster()?.is_none() {
        bootstrap(&config, &consensus).await.context("create the cluster")?;
    }
    let cluster = consensus.store().cluster()?.context("cluster record missing after bootstrap")?;
    let ca = tls::CertAndKey { cert_pem: cluster.ca_cert_pem.clone(), key_pem: cluster.ca_key_pem.clone() };
    std::fs::write(config.ca_path(), &ca.cert_pem).with_context(|| format!("write {}", config.ca_path().display()))?;

    // This node's certificate is issued afresh at every start: it follows `tls_names` and needs
    // no file of its own.
    let identity = tls::issue_coordinator_cert(&ca, &config.tls_names)?;
    let quic_config = tls::quic_server_config(&identity, &ca.cert_pem, &[ALPN_ENROLL, ALPN_AGENT])?;
    let endpoint = quinn::Endpoint::server(quic_config, config.quic_addr)
        .with_context(|| format!("bind QUIC endpoint on {}", config.quic_addr))?;
    let listener = TcpListener::bind(config.http_addr).await.with_context(|| format!("bind HTTPS API on {}", config.http_addr))?;
    let bound = Bound { http: listener.local_addr()?, quic: endpoint.local_addr()? };
    let https_tls = tls::https_server_config(&identity, &ca.cert_pem)?;

    let coordinator = Arc::new(Coordinator::new(config, consensus, bound.http, bound.quic)?);
    tracing::info!(http = %bound.http, quic = %bound.quic, "coordinator listening");
    let router = crate::api::router(coordinator.clone());
    tokio::join!(
        crate::quic::serve(endpoint, coordinator.clone(), shutdown.clone()),
        crate::api::serve(listener, https_tls, router, shutdown),
    );
    coordinator.consensus.store().flush().await?;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// Creates the cluster CA and the bootstrap admin token, and shows the token once.
async fn bootstrap(config: &Config, consensus: &Consensus) -> Result<()> {
    let ca = tls::new_cluster_ca()?;
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
    let cluster = ClusterRecord { ca_cert_pem: ca.cert_pem, ca_key_pem: ca.key_pem, created_at: now };
    consensus.propose(Command::InitCluster { cluster, bootstrap }).await??;
    let text = format!("{}{secret}", token::API_PREFIX);
    if let Some(path) = &config.bootstrap_token_file {
        write_private(path, &format!("{text}\n")).with_context(|| format!("write bootstrap token to {}", path.display()))?;
    }
    let host = match config.http_addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        ip => ip.to_string(),
    };
    println!(
        "==> Created a new Fifty cluster.\n\
         ==> Bootstrap admin token (shown once, stored only as a hash):\n\n    {text}\n\n\
         To use the CLI against this coordinator:\n\n    \
         export FIFTY_ADDR=https://{host}:{port}\n    \
         export FIFTY_CACERT={ca}\n    \
         export FIFTY_TOKEN={text}\n",
        port = config.http_addr.port(),
        ca = config.ca_path().display(),
    );
    Ok(())
}
