//! Serves a router over TLS: accept TCP, complete the rustls handshake, hand the stream to hyper.
//! Each connection is its own task, so a slow or failed handshake holds up no one else.
//!
//! Every client is bounded (config `[api]`): at most `max_connections` at once (more are closed
//! as soon as they are accepted), `tls_handshake_timeout` to finish the handshake,
//! `idle_timeout` with no request in progress, `header_read_timeout` from a request's first byte
//! to the end of its head, and `body_read_timeout` and [`MAX_BODY`] for its body. So idle,
//! half-sent (slowloris) or oversized requests cost a connection slot for a bounded time only.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::ApiError;
use crate::config::ApiConfig;

/// The largest request body the API reads (the largest legitimate ones, commit notifications
/// and push webhooks, are a few KiB); a larger one gets 413.
pub const MAX_BODY: usize = 1 << 20;

/// Serves `router` on `listener` with `tls` until `shutdown` turns true, holding every client to
/// `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    limits: ApiConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    // Warn once each time the cap is reached, not once per refused connection.
    let mut at_cap = false;
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !at_cap {
                tracing::warn!(
                    max = limits.max_connections,
                    "the API has as many connections as config key api.max_connections allows; closing new ones"
                );
                at_cap = true;
            }
            tracing::debug!(%remote, "API connection refused: at the connection cap");
            drop(tcp);
            continue;
        };
        at_cap = false;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TLS handshake on the API failed"),
                Err(_) => return tracing::debug!(%remote, "TLS handshake on the API timed out"),
            };
            let activity = Arc::new(Activity::new());
            let io = TokioIo::new(Watched { inner: tls, activity: activity.clone() });
            let service = Tracked { inner: TowerToHyperService::new(router), activity: activity.clone() };
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(%remote, error = %e, "API connection ended with an error");
                },
                why = activity.expired(&limits) => tracing::debug!(%remote, why, "API connection closed"),
            }
        });
    }
}

/// What a connection is doing, as far as its timeouts care.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No request in progress since this instant (accepted, or the last answer was given).
    Idle(Instant),
    /// The first byte of a request arrived at this instant; its head is not complete yet.
    Head(Instant),
    /// This many requests are being answered (their bodies are bounded by `bounded_body`).
    Busy(usize),
}

/// One connection's phase, updated by its reads ([`Watched`]) and requests ([`Tracked`]).
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self { phase: Mutex::new(Phase::Idle(Instant::now())), changed: Notify::new() }
    }

    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().expect("phase lock");
        *phase = f(*phase);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection is now reading a request head.
    fn on_read(&self) {
        let mut phase = self.phase.lock().expect("phase lock");
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            self.changed.notify_one();
        }
    }

    fn begin_request(&self) {
        self.set(|p| match p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
    }

    fn end_request(&self) {
        self.set(|p| match p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    /// Resolves when the connection has been idle, or reading one request head, for too long;
    /// says which.
    async fn expired(&self, limits: &ApiConfig) -> &'static str {
        loop {
            let deadline = match *self.phase.lock().expect("phase lock") {
                Phase::Idle(since) => Some((since + limits.idle_timeout, "idle for api.idle_timeout")),
                Phase::Head(since) => Some((
                    since + limits.header_read_timeout,
                    "request head not complete within api.header_read_timeout",
                )),
                Phase::Busy(_) => None,
            };
            match deadline {
                Some((at, why)) if Instant::now() >= at => return why,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// The connection's stream, telling its [`Activity`] when bytes arrive.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection's service, telling its [`Activity`] when a request starts and is answered.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// Ends a request's busy phase however its future ends (answered, or dropped with the
/// connection).
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<B>, Response = hyper::Response<axum::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: hyper::Request<B>) -> Self::Future {
        self.activity.begin_request();
        let guard = RequestGuard(self.activity.clone());
        let answer = self.inner.call(req);
        Box::pin(async move {
            // The request stays busy until its body is sent, not only its head: a streamed
            // answer (a backup) may take longer than `idle_timeout`, and is not idle meanwhile.
            let out = answer.await?;
            Ok(out.map(|inner| axum::body::Body::new(GuardedBody { inner, _guard: guard })))
        })
    }
}

/// A response body that keeps its request busy until it is sent (or dropped).
struct GuardedBody {
    inner: axum::body::Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for GuardedBody {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client that sends a too-large body without waiting for `100 Continue` is still writing it
/// when the 413 is ready. Closing the connection then, with its body unread, resets it, and the
/// client sees a broken pipe instead of the answer. So the rest of such a body is read and
/// thrown away first, up to this many bytes in all (as nginx's lingering close does); a body
/// declared larger than this is answered at once.
const MAX_DISCARD: u64 = 8 << 20;

/// Middleware: reads the whole request body (at most [`MAX_BODY`], within `body_read_timeout`)
/// before anything else looks at the request, so handlers and forwarding see it complete.
/// Too large: 413; too slow: 408; both as JSON like every other error.
pub(super) async fn bounded_body(State(body_read_timeout): State<Duration>, req: Request, next: Next) -> Response {
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: larger than the API's limit of {MAX_BODY} bytes"),
        )
        .into_response()
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let waits_to_send =
        req.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, mut body) = req.into_parts();
    if declared.is_some_and(|n| n > MAX_BODY as u64) && (waits_to_send || declared > Some(MAX_DISCARD)) {
        // The client sends nothing until told to, or too much to wait for: answer now.
        return too_large();
    }
    // Keeps up to MAX_BODY bytes; past that, discards up to MAX_DISCARD so the answer arrives.
    let read = async {
        let mut kept = Vec::new();
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            seen += data.len() as u64;
            if seen <= MAX_BODY as u64 {
                kept.extend_from_slice(&data);
            } else if seen > MAX_DISCARD {
                break;
            }
        }
        Ok::<_, axum::Error>((kept, seen))
    };
    let bytes = match tokio::time::timeout(body_read_timeout, read).await {
        Ok(Ok((_, seen))) if seen > MAX_BODY as u64 => return too_large(),
        Ok(Ok((kept, _))) => kept,
        Ok(Err(e)) => return ApiError(StatusCode::BAD_REQUEST, format!("request body: {e}")).into_response(),
        Err(_) if declared.is_some_and(|n| n > MAX_BODY as u64) => return too_large(),
        Err(_) => {
            return ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body: not complete within {body_read_timeout:?} (config key api.body_read_timeout)"),
            )
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

#[cfg(test)]
mod tests {
    //! Real TCP and TLS connections to [`serve`], with short limits set through [`ApiConfig`].
    //! Each test waits for the server to close the connection with a generous deadline.

    use std::net::SocketAddr;

    use axum::routing::{get, post};
    use fifty_shared::tls;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    use super::*;

    /// Far longer than any limit the tests set: a close this late means a limit did not work.
    const DEADLINE: Duration = Duration::from_secs(30);

    struct Server {
        addr: SocketAddr,
        ca_pem: String,
        _stop: watch::Sender<bool>,
    }

    async fn server(limits: ApiConfig) -> Server {
        let ca = tls::new_cluster_ca().unwrap();
        let identity = tls::issue_coordinator_cert(&ca, &[]).unwrap();
        let config = tls::https_server_config(&identity, &ca.cert_pem).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/echo", post(|body: axum::body::Bytes| async move { body.len().to_string() }))
            .route("/slow", get(slow_body))
            .layer(axum::middleware::from_fn_with_state(limits.body_read_timeout, bounded_body));
        let (stop, rx) = watch::channel(false);
        tokio::spawn(serve(listener, config, router, limits, rx));
        Server { addr, ca_pem: ca.cert_pem, _stop: stop }
    }

    fn limits(f: impl FnOnce(&mut ApiConfig)) -> ApiConfig {
        let mut l = ApiConfig::default();
        f(&mut l);
        l
    }

    async fn connect(s: &Server) -> std::io::Result<TlsStream<TcpStream>> {
        let config = tls::https_client_config(&s.ca_pem).unwrap();
        let tcp = TcpStream::connect(s.addr).await?;
        let name = ServerName::try_from(tls::COORDINATOR_NAME).unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    }

    /// Reads until the server closes the connection (end of stream or an error such as a
    /// reset); returns how long that took and what was read.
    async fn until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> (Duration, String) {
        let start = Instant::now();
        let mut got = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("the server closes the connection");
        (start.elapsed(), String::from_utf8_lossy(&got).into_owned())
    }

    /// An answer whose body takes 3 s to send, in pieces.
    async fn slow_body() -> axum::body::Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Bytes, std::io::Error>>(1);
        tokio::spawn(async move {
            for i in 0..6 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tx.send(Ok(hyper::body::Bytes::from(format!("piece {i};")))).await;
            }
        });
        struct Pieces(tokio::sync::mpsc::Receiver<Result<hyper::body::Bytes, std::io::Error>>);
        impl hyper::body::Body for Pieces {
            type Data = hyper::body::Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
                self.0.poll_recv(cx).map(|p| p.map(|r| r.map(hyper::body::Frame::data)))
            }
        }
        axum::body::Body::new(Pieces(rx))
    }

    /// A body that streams for longer than the idle timeout is sent whole: the connection is
    /// busy, not idle, until the body ends (a backup streams for as long as it takes).
    #[tokio::test]
    async fn a_long_streamed_answer_is_not_cut_by_the_idle_timeout() {
        let s = server(limits(|l| l.idle_timeout = Duration::from_secs(1))).await;
        let mut conn = connect(&s).await.unwrap();
        conn.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (took, answer) = until_closed(&mut conn).await;
        assert!(answer.contains("piece 5;"), "cut short after {took:?}: {answer}");
        assert!(took >= Duration::from_secs(3), "closed after {took:?}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let s = server(limits(|l| {
            l.idle_timeout = Duration::from_secs(1);
            l.header_read_timeout = Duration::from_secs(600);
        }))
        .await;
        // Before any request.
        let mut conn = connect(&s).await.unwrap();
        let (took, _) = until_closed(&mut conn).await;
        assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the idle timeout");
        // After an answered request, on a kept-alive connection.
        let mut conn = connect(&s).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (_, answer) = until_closed(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    }

    #[tokio::test]
    async fn a_half_sent_request_head_is_closed_after_the_header_timeout() {
        let s = server(limits(|l| {
            l.idle_timeout = Duration::from_secs(600);
            l.header_read_timeout = Duration::from_secs(1);
        }))
        .await;
        let mut conn = connect(&s).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        let (took, answer) = until_closed(&mut conn).await;
        assert!(took >= Duration::from_millis(900), "closed after {took:?}");
        assert!(answer.is_empty(), "{answer}");
        // A complete request on a fresh connection is still answered.
        let mut conn = connect(&s).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let (_, answer) = until_closed(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_after_the_handshake_timeout() {
        let s = server(limits(|l| l.tls_handshake_timeout = Duration::from_secs(1))).await;
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let (took, _) = until_closed(&mut tcp).await;
        assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_until_one_ends() {
        let s = server(limits(|l| l.max_connections = 2)).await;
        let first = connect(&s).await.unwrap();
        let _second = connect(&s).await.unwrap();
        // The third is closed at once: its handshake fails or its stream ends.
        match connect(&s).await {
            Err(_) => {}
            Ok(mut third) => {
                third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.ok();
                let (_, answer) = until_closed(&mut third).await;
                assert!(answer.is_empty(), "a connection past the cap was answered: {answer}");
            }
        }
        // Once one ends, a new one is served.
        drop(first);
        let served = fifty_local_wait(|| async {
            let mut conn = connect(&s).await.ok()?;
            conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
            let (_, answer) = until_closed(&mut conn).await;
            answer.starts_with("HTTP/1.1 200").then_some(())
        })
        .await;
        assert!(served.is_some(), "no connection was served after one of the two ended");
    }

    #[tokio::test]
    async fn an_oversized_body_gets_413_as_json_and_a_slow_one_408() {
        let s = server(limits(|l| l.body_read_timeout = Duration::from_secs(1))).await;
        // Declared too large and sent whole, as most clients do: the rest is read and thrown
        // away, so the client reads the 413 instead of a reset (a broken pipe while writing).
        for size in [MAX_BODY + 1, 7 * MAX_BODY] {
            let mut conn = connect(&s).await.unwrap();
            let head = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(&vec![b'a'; size]).await.expect("the server reads the whole body");
            let (_, answer) = until_closed_or_answered(&mut conn).await;
            assert!(answer.starts_with("HTTP/1.1 413"), "{size}: {answer}");
            assert!(answer.contains("application/json") && answer.contains("{\"error\":"), "{answer}");
        }
        // A client that waits for `100 Continue`, or declares more than is worth reading, is
        // answered from the head alone (this server would wait far past DEADLINE for a body).
        let patient = server(limits(|l| l.body_read_timeout = Duration::from_secs(600))).await;
        for head in [
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY + 1
            ),
            format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", MAX_DISCARD + 1),
        ] {
            let mut conn = connect(&patient).await.unwrap();
            conn.write_all(head.as_bytes()).await.unwrap();
            let (_, answer) = until_closed_or_answered(&mut conn).await;
            assert!(answer.starts_with("HTTP/1.1 413"), "{head}: {answer}");
        }
        // A body that never comes: 408.
        let mut conn = connect(&s).await.unwrap();
        conn.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc").await.unwrap();
        let (_, answer) = until_closed_or_answered(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("api.body_read_timeout"), "{answer}");
        // A body within the limit is served.
        let mut conn = connect(&s).await.unwrap();
        conn.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
            .await
            .unwrap();
        let (_, answer) = until_closed(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with('3'), "{answer}");
    }

    /// A body that declares no length is cut at the limit as it streams in. (Not over TLS: the
    /// server closing with the rest of such a body unread resets the connection, which may
    /// discard the answer before a client reads it.)
    #[tokio::test]
    async fn a_body_without_a_declared_length_is_cut_at_the_limit() {
        use hyper::service::Service as _;
        let router = Router::new()
            .route("/echo", post(|body: axum::body::Bytes| async move { body.len().to_string() }))
            .layer(axum::middleware::from_fn_with_state(Duration::from_secs(5), bounded_body));
        let service = TowerToHyperService::new(router);
        let call = |size: usize| {
            let req = hyper::Request::post("/echo").body(Body::from(vec![b'a'; size])).unwrap();
            assert!(req.headers().get(header::CONTENT_LENGTH).is_none());
            service.call(req)
        };
        let resp = call(MAX_BODY + 1).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let error: crate::views::ErrorBody = serde_json::from_slice(&body).unwrap();
        assert!(error.error.contains("limit"), "{}", error.error);
        let resp = call(MAX_BODY).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), MAX_BODY.to_string());
    }

    /// Reads until the server closes the connection or a whole answer (head and the body its
    /// Content-Length announces) has arrived.
    async fn until_closed_or_answered<S: AsyncRead + Unpin>(stream: &mut S) -> (Duration, String) {
        let start = Instant::now();
        let mut got = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok());
                    if length.is_some_and(|n| body.len() >= n) {
                        return;
                    }
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("the server answers or closes");
        (start.elapsed(), String::from_utf8_lossy(&got).into_owned())
    }

    /// Tries `check` every 100 ms until it gives `Some` or [`DEADLINE`] passes.
    async fn fifty_local_wait<T, F, Fut>(mut check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if let Some(v) = check().await {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}
