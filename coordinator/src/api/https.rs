//! Serves a router over TLS: accept TCP, complete the rustls handshake, hand the stream to hyper.
//! Each connection is its own task, so a slow or failed handshake holds up no one else.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Serves `router` on `listener` with `tls` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the API listener failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TLS handshake on the API failed"),
                Err(_) => return tracing::debug!(%remote, "TLS handshake on the API timed out"),
            };
            let conn = hyper::server::conn::http1::Builder::new();
            if let Err(e) = conn.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%remote, error = %e, "API connection ended with an error");
            }
        });
    }
}
