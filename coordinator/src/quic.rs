//! The coordinator's QUIC endpoint. One UDP socket, routed by ALPN:
//! - `fifty-enroll/1`: one request, one answer, then the client closes.
//! - `fifty-agent/1`: the agent's control link. The host is whoever its verified certificate
//!   says; what it writes in messages is never trusted for identity. Every bi-stream after the
//!   control stream is one artifact download request (a piece table or a piece).
//! - `fifty-peer/1`: another coordinator (`consensus::transport`).
//!
//! Agents belong to the leader: a follower answers enrollments and agent links with a
//! `close::NOT_LEADER` carrying the leader's address, and the agent dials that (holding the
//! link first while its leader may be dead: `Coordinator::where_to_link`). The leader admits
//! agent links at `links.handshake_rate` and closes the rest with `close::BUSY`, saying when to
//! come back.
//!
//! A malformed frame closes the link with `close::PROTOCOL` and a log line; nothing here panics on
//! what a peer sends.

use std::sync::Arc;
use std::time::Duration;

use fifty_shared::codec::{read_frame, write_frame, CodecError};
use fifty_shared::ids::HostName;
use fifty_shared::wire::{
    close, AgentMsg, CoordinatorMsg, DownloadRequest, DownloadResponse, EnrollRequest, ALPN_AGENT, ALPN_ENROLL,
    ALPN_PEER,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{debug, error, info, warn, Instrument};

use crate::coordinator::Coordinator;

/// How long a peer may take to send the frame we wait for at the start of a link.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` turns true.
pub async fn serve(endpoint: quinn::Endpoint, coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(incoming) = incoming else { break };
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    if refused_in_handshake(&e) {
                        coordinator.metrics.handshake_refused("certificate");
                    }
                    warn!(%remote, error = %e, "QUIC handshake failed");
                    return;
                }
            };
            let alpn = conn
                .handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol);
            let redirect = match alpn.as_deref() {
                Some(ALPN_ENROLL | ALPN_AGENT) => coordinator.where_to_link().await,
                _ => None,
            };
            if let Some(leader) = redirect {
                debug!(%remote, %leader, "not the leader; redirecting");
                return conn.close(close::NOT_LEADER.into(), leader.as_bytes());
            }
            // The leader admits agent links at a bounded rate; the rest are told when to return.
            if alpn.as_deref() == Some(ALPN_AGENT) {
                if let Err(wait) = coordinator.admit_link() {
                    coordinator.metrics.handshake_refused("busy");
                    debug!(%remote, ?wait, "handshake rate reached; agent told to retry later");
                    return conn.close(close::BUSY.into(), close::busy_reason(wait).as_bytes());
                }
            }
            match alpn.as_deref() {
                Some(ALPN_PEER) => crate::consensus::transport::serve_peer(conn, coordinator.consensus.clone()).await,
                Some(ALPN_ENROLL) => {
                    enroll(conn, &coordinator).instrument(tracing::info_span!("enroll", %remote)).await
                }
                Some(ALPN_AGENT) => agent_link(conn, coordinator).await,
                _ => conn.close(close::PROTOCOL.into(), b"unknown ALPN"),
            }
        });
    }
    endpoint.close(close::DONE.into(), b"coordinator shutting down");
}

/// Whether a failed handshake is this endpoint refusing the peer's certificate (another CA, a
/// damaged or expired certificate), as opposed to a peer that went away or timed out.
fn refused_in_handshake(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::TransportError(t)
        if fifty_shared::tls::certificate_alert(u64::from(t.code)).is_some())
}

async fn enroll(conn: quinn::Connection, coordinator: &Coordinator) {
    let (mut send, mut recv) = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        _ => return conn.close(close::PROTOCOL.into(), b"expected an enrollment request"),
    };
    let req = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame::<EnrollRequest, _>(&mut recv)).await {
        Ok(Ok(Some(req))) => req,
        Ok(Err(e)) => return refuse_frame(&conn, &e),
        _ => return conn.close(close::PROTOCOL.into(), b"expected an enrollment request"),
    };
    let response = coordinator.enroll(req).await;
    if write_frame(&mut send, &response).await.is_ok() {
        let _ = send.finish();
    }
    // The client closes once it has read the answer; don't wait forever for it.
    let _ = tokio::time::timeout(FIRST_FRAME_TIMEOUT, conn.closed()).await;
}

fn refuse_frame(conn: &quinn::Connection, e: &CodecError) {
    warn!(remote = %conn.remote_address(), error = %e, "malformed frame; closing the link");
    conn.close(close::PROTOCOL.into(), format!("malformed frame: {e}").as_bytes());
}

/// The certificate a QUIC peer presented (verified against the cluster CA in the handshake).
pub(crate) fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

async fn agent_link(conn: quinn::Connection, coordinator: Arc<Coordinator>) {
    let remote = conn.remote_address();
    let Some(cert) = peer_certificate(&conn) else {
        coordinator.metrics.links_refused.inc();
        coordinator.metrics.handshake_refused("no_certificate");
        warn!(%remote, "agent link without a client certificate refused");
        return conn.close(
            close::NO_CERTIFICATE.into(),
            b"this link needs the host's certificate; enroll with `fifty-agent join`",
        );
    };
    let host = match coordinator.identify(&cert) {
        Ok(host) => host,
        Err(refusal) => {
            coordinator.metrics.links_refused.inc();
            coordinator.metrics.handshake_refused(if refusal.code == close::REVOKED {
                "revoked"
            } else {
                "unknown_host"
            });
            warn!(%remote, reason = %refusal.reason, "agent link refused");
            return conn.close(refusal.code.into(), refusal.reason.as_bytes());
        }
    };
    let span = tracing::info_span!("host", host = %host, %remote);
    let result = control_stream(&conn, &coordinator, &host).instrument(span.clone()).await;
    let _guard = span.enter();
    match result {
        Ok(()) => info!("agent link closed"),
        Err(LinkEnd::Connection(e)) => info!(reason = %e, "agent link ended"),
        Err(LinkEnd::Frame(e)) => refuse_frame(&conn, &e),
    }
}

enum LinkEnd {
    Connection(quinn::ConnectionError),
    Frame(CodecError),
}

impl From<quinn::ConnectionError> for LinkEnd {
    fn from(e: quinn::ConnectionError) -> Self {
        LinkEnd::Connection(e)
    }
}

impl From<CodecError> for LinkEnd {
    fn from(e: CodecError) -> Self {
        LinkEnd::Frame(e)
    }
}

async fn control_stream(
    conn: &quinn::Connection,
    coordinator: &Arc<Coordinator>,
    host: &HostName,
) -> Result<(), LinkEnd> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let agent_version = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame::<AgentMsg, _>(&mut recv)).await {
        Ok(Ok(Some(AgentMsg::Hello { agent_version }))) => agent_version,
        Ok(Ok(Some(other))) => return Err(CodecError::Decode(format!("expected Hello first, got {other:?}")).into()),
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(CodecError::Decode("no Hello within 10 s".into()).into()),
    };
    info!(%agent_version, "agent connected");
    let welcome = CoordinatorMsg::Welcome {
        host: host.clone(),
        heartbeat_interval: coordinator.config.heartbeat_interval,
        release_key: coordinator.release_public_key(),
    };
    write_frame(&mut send, &welcome).await?;
    // Everything else to the agent (acks, jobs) goes through one writer, fed by a queue that the
    // CI dispatcher can reach through the link registry.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<CoordinatorMsg>();
    let writer = tokio::spawn(
        async move {
            while let Some(msg) = rx.recv().await {
                match write_frame(&mut send, &msg).await {
                    Ok(()) => {}
                    // Refused before a byte was written: the link is fine, this message is not.
                    Err(e @ CodecError::TooLarge { .. }) => {
                        error!(error = %e, "a message to the agent is over the frame cap; not sent")
                    }
                    Err(e) => {
                        debug!(error = %e, "agent link writer stopped");
                        return;
                    }
                }
            }
        }
        .in_current_span(),
    );
    let id = coordinator.register_link(host, conn.clone(), tx.clone());
    coordinator.experiments_on_link(host, &tx);
    let streams = tokio::spawn(
        serve_streams(conn.clone(), coordinator.clone(), host.clone(), coordinator.coordinators()).in_current_span(),
    );
    let result = read_agent(conn, coordinator, host, &agent_version, &mut recv, &tx).await;
    coordinator.unregister_link(host, id);
    writer.abort();
    streams.abort();
    result
}

/// The agent's further bi-streams after the control stream. The second stream is the
/// coordinators' stream ([`push_coordinators`]): the agent opens it, and writes its Hello,
/// before it can start any download, and QUIC hands streams over in the order of their ids, so
/// it is the first one accepted here. Every later stream is a download (`DownloadRequest`): one
/// request, one answer, then the stream ends. (The two first frames cannot tell themselves
/// apart: a Hello and a piece-table request encode alike, so the order decides.)
async fn serve_streams(
    conn: quinn::Connection,
    coordinator: Arc<Coordinator>,
    host: HostName,
    coordinators: watch::Receiver<Vec<String>>,
) {
    let Ok((send, recv)) = conn.accept_bi().await else { return };
    tokio::spawn(push_coordinators(send, recv, coordinators).in_current_span());
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (conn, coordinator, host) = (conn.clone(), coordinator.clone(), host.clone());
        tokio::spawn(async move { download(&conn, &coordinator, &host, send, recv).await }.in_current_span());
    }
}

async fn download(
    conn: &quinn::Connection,
    coordinator: &Coordinator,
    host: &HostName,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let request = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame::<DownloadRequest, _>(&mut recv)).await {
        Ok(Ok(Some(request))) => request,
        Ok(Err(CodecError::Io(_))) | Ok(Ok(None)) | Err(_) => return,
        Ok(Err(e)) => return refuse_frame(conn, &e),
    };
    let written = match request {
        DownloadRequest::PieceTable { digest } => {
            let answer = match coordinator.download_piece_table(host, &digest).await {
                Ok(table) => DownloadResponse::PieceTable((*table).clone()),
                Err(reason) => DownloadResponse::Refused { reason },
            };
            write_frame(&mut send, &answer).await
        }
        DownloadRequest::Piece { digest, index } => match coordinator.download_piece(host, &digest, index).await {
            Ok(bytes) => {
                let head = DownloadResponse::Piece { index, len: bytes.len() as u32 };
                match write_frame(&mut send, &head).await {
                    Ok(()) => send.write_all(&bytes).await.map_err(|e| CodecError::Io(e.into())),
                    Err(e) => Err(e),
                }
            }
            Err(reason) => write_frame(&mut send, &DownloadResponse::Refused { reason }).await,
        },
    };
    match written {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => debug!(error = %e, "a download stream ended early"),
    }
}

/// Tells the agent every coordinator's address, now and whenever the members change, on the
/// second stream it opens after the Welcome (with a Hello). An agent that opens none (an older
/// one) never hears of it; this task just waits until the link ends.
async fn push_coordinators(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut coordinators: watch::Receiver<Vec<String>>,
) {
    match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame::<AgentMsg, _>(&mut recv)).await {
        Ok(Ok(Some(AgentMsg::Hello { .. }))) => {}
        _ => return,
    }
    loop {
        let list = coordinators.borrow_and_update().clone();
        if !list.is_empty() && write_frame(&mut send, &CoordinatorMsg::Coordinators(list)).await.is_err() {
            return;
        }
        if coordinators.changed().await.is_err() {
            return;
        }
    }
}

async fn read_agent(
    conn: &quinn::Connection,
    coordinator: &Arc<Coordinator>,
    host: &HostName,
    agent_version: &str,
    recv: &mut quinn::RecvStream,
    tx: &tokio::sync::mpsc::UnboundedSender<CoordinatorMsg>,
) -> Result<(), LinkEnd> {
    loop {
        match read_frame::<AgentMsg, _>(recv).await {
            Ok(Some(AgentMsg::Heartbeat(beat))) => {
                debug!(seq = beat.seq, "heartbeat");
                coordinator.on_heartbeat(host, beat.health, beat.release, agent_version);
                coordinator.on_job_report(host, beat.jobs);
                let _ = tx.send(CoordinatorMsg::HeartbeatAck { seq: beat.seq });
            }
            Ok(Some(AgentMsg::JobOutput { job, offset, data })) => coordinator.on_job_output(host, job, offset, &data),
            Ok(Some(AgentMsg::ArtifactChunk { job, offset, data })) => {
                coordinator.on_artifact_chunk(host, job, offset, &data)
            }
            Ok(Some(AgentMsg::FetchArtifact { digest, offset })) => {
                let _ = tx.send(coordinator.serve_artifact(host, &digest, offset).await);
            }
            Ok(Some(AgentMsg::JobDone(done))) => {
                let (coordinator, host, tx) = (coordinator.clone(), host.clone(), tx.clone());
                tokio::spawn(async move { coordinator.on_job_done(&host, done, &tx).await }.in_current_span());
            }
            Ok(Some(AgentMsg::Metrics(report))) => coordinator.on_metrics(host, report),
            Ok(Some(AgentMsg::ExperimentReport(report))) => {
                let (coordinator, host, tx) = (coordinator.clone(), host.clone(), tx.clone());
                tokio::spawn(
                    async move { coordinator.on_experiment_report(&host, report, &tx).await }.in_current_span(),
                );
            }
            Ok(Some(AgentMsg::Hello { .. })) => return Err(CodecError::Decode("Hello sent twice".into()).into()),
            Ok(None) => return Ok(()),
            Err(CodecError::Io(e)) => {
                // A reset or closed connection surfaces as an I/O error on the stream.
                return match conn.close_reason() {
                    Some(reason) => Err(reason.into()),
                    None => Err(CodecError::Io(e).into()),
                };
            }
            Err(e) => return Err(e.into()),
        }
    }
}
