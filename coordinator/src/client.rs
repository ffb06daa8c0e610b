//! The HTTPS client of the API: one request per call, TLS verified against the cluster CA
//! (`FIFTY_CACERT`), bearer token from `FIFTY_TOKEN`. The CLI uses it (re-exported from `cli`), and
//! so do a follower forwarding a request to its leader (`api::forward`) and the local cluster (`local`).

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::views::ErrorBody;

/// Where the coordinator is and how to authenticate, from flags or `FIFTY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientOpts {
    /// Coordinator API address; several, comma-separated, are tried in turn when one does not
    /// answer (any coordinator serves every request).
    #[arg(long, env = "FIFTY_ADDR", default_value = "https://127.0.0.1:7070", global = true)]
    pub addr: String,
    /// API token.
    #[arg(long, env = "FIFTY_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA certificate (PEM), `<data_dir>/tls/ca.pem` on a coordinator.
    #[arg(long, env = "FIFTY_CACERT", global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// Let the coordinator asked answer reads from its own copy of the state, which may lag
    /// the leader's (faster, and works without a leader).
    #[arg(long, global = true)]
    pub stale: bool,
}

/// An answer from the API that was not a success.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: StatusCode,
    /// The server's error message.
    pub message: String,
}

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One coordinator address.
#[derive(Clone, Debug)]
struct Target {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

/// A client for the coordinators. It keeps its connection open between requests; clones share
/// that connection, so requests through one client (and its clones) go one at a time — make one
/// client per concurrent caller. Given several addresses, it connects to the first that answers.
#[derive(Clone)]
pub struct Client {
    targets: Arc<Vec<Target>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    token: Option<String>,
    tls: TlsConnector,
    /// Where the trusted CA came from, for errors: "the CA in FILE".
    ca_source: String,
    /// Bound on connecting: TCP, TLS handshake and HTTP handshake together.
    connect_timeout: std::time::Duration,
    stale: bool,
    conn: Arc<tokio::sync::Mutex<Option<Connection>>>,
}

impl Client {
    /// A client for `addr` (`https://host:port`, or several comma-separated) that trusts `ca_pem`.
    pub fn new(addr: &str, token: Option<String>, ca_pem: &str) -> Result<Self> {
        let mut targets = Vec::new();
        for one in addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let uri: Uri = one.parse().with_context(|| format!("FIFTY_ADDR {one:?} is not a URL"))?;
            if uri.scheme_str() != Some("https") {
                return Err(anyhow!("FIFTY_ADDR {one:?} must start with https://"));
            }
            let host = uri.host().context("FIFTY_ADDR has no host")?.trim_matches(['[', ']']).to_string();
            let port = uri.port_u16().unwrap_or(7070);
            let server_name = ServerName::try_from(host.clone()).with_context(|| format!("{host:?} as a TLS name"))?;
            targets.push(Target { host, port, server_name });
        }
        if targets.is_empty() {
            return Err(anyhow!("FIFTY_ADDR is empty: give a coordinator's https:// address"));
        }
        let tls = TlsConnector::from(Arc::new(fifty_shared::tls::https_client_config(ca_pem)?));
        Ok(Self {
            targets: Arc::new(targets),
            current: Arc::default(),
            token,
            tls,
            ca_source: "the cluster CA".into(),
            connect_timeout: std::time::Duration::from_secs(5),
            stale: false,
            conn: Arc::default(),
        })
    }

    /// The same client with another bound on connecting (TCP, TLS and HTTP handshakes together).
    pub fn with_connect_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A client for another coordinator's API at `http_addr` (`HOST:PORT`): it verifies the fixed
    /// coordinator name, whatever the address.
    pub fn to_coordinator(http_addr: &str, ca_pem: &str) -> Result<Self> {
        let mut client = Self::new(&format!("https://{http_addr}"), None, ca_pem)?;
        let name = ServerName::try_from(fifty_shared::tls::COORDINATOR_NAME).expect("a valid DNS name");
        client.targets =
            Arc::new(client.targets.iter().cloned().map(|t| Target { server_name: name.clone(), ..t }).collect());
        Ok(client)
    }

    fn target(&self) -> &Target {
        &self.targets[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.targets.len()]
    }

    /// Sends a request as received from someone else (the follower-to-leader forwarding path):
    /// method, path and query, the given headers and body; returns status, content type and body.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: Bytes,
    ) -> Result<(StatusCode, Option<hyper::header::HeaderValue>, Bytes)> {
        let (status, content_type, bytes) = self.send(method, path_and_query, headers, body.to_vec()).await?;
        Ok((status, content_type, bytes))
    }

    /// A client from flags and environment.
    pub fn from_opts(opts: &ClientOpts) -> Result<Self> {
        let path = opts.cacert.as_ref().context(
            "FIFTY_CACERT is not set: point it (or --cacert) at the cluster CA, <data_dir>/tls/ca.pem on a coordinator",
        )?;
        let ca = std::fs::read_to_string(path).with_context(|| format!("read FIFTY_CACERT {}", path.display()))?;
        if !ca.contains("-----BEGIN CERTIFICATE-----") {
            return Err(anyhow!(
                "FIFTY_CACERT {} holds no PEM certificate: point it at the cluster CA, <data_dir>/tls/ca.pem on a coordinator",
                path.display()
            ));
        }
        let mut client = Self::new(&opts.addr, opts.token.clone(), &ca)
            .with_context(|| format!("FIFTY_CACERT {}", path.display()))?;
        client.ca_source = format!("the CA in {}", path.display());
        client.stale = opts.stale;
        Ok(client)
    }

    async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(StatusCode, Bytes)> {
        let mut headers =
            vec![(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"))];
        headers.extend(self.authorization()?);
        let (status, _, bytes) = self.send(method, path, &headers, body.unwrap_or_default()).await?;
        Ok((status, bytes))
    }

    /// The `Authorization` header of this client's token, if it has one.
    fn authorization(&self) -> Result<Option<(hyper::header::HeaderName, hyper::header::HeaderValue)>> {
        let Some(token) = &self.token else { return Ok(None) };
        let value = hyper::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("FIFTY_TOKEN holds characters not allowed in a header")?;
        Ok(Some((hyper::header::AUTHORIZATION, value)))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Option<hyper::header::HeaderValue>, Bytes)> {
        let (_conn, resp) = self.exchange(method, path, headers, body).await?;
        let status = resp.status();
        let content_type = resp.headers().get(hyper::header::CONTENT_TYPE).cloned();
        let bytes = resp.into_body().collect().await.context("read response")?.to_bytes();
        Ok((status, content_type, bytes))
    }

    /// Sends one request on the kept connection (opening one if it is not usable) and returns
    /// the answer's head with its body unread, and the connection's guard: the caller reads the
    /// body before anyone else may use the connection (a failed read drops it).
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: Vec<u8>,
    ) -> Result<(tokio::sync::MutexGuard<'_, Option<Connection>>, hyper::Response<hyper::body::Incoming>)> {
        let mut conn = self.conn.lock().await;
        // Reuse the open connection if it is still usable; otherwise open a new one.
        let reusable = match conn.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            *conn = Some(self.connect().await?);
        }
        let sender = conn.as_mut().expect("a connection was just ensured");
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", self.target().host, self.target().port));
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(Bytes::from(body))).context("build request")?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((conn, resp)),
            Err(e) => {
                *conn = None;
                Err(e).context("send request")
            }
        }
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<T> {
        let (status, bytes) = self.request(method, path, body).await?;
        if !status.is_success() {
            return Err(failure(status, &bytes));
        }
        serde_json::from_slice(&bytes).with_context(|| format!("decode the answer to {path}"))
    }

    /// Connects to the current address, else to the next one that answers.
    async fn connect(&self) -> Result<Connection> {
        let n = self.targets.len();
        let first = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let index = (first + i) % n;
            match self.connect_to(&self.targets[index]).await {
                Ok(conn) => {
                    self.current.store(index, std::sync::atomic::Ordering::Relaxed);
                    return Ok(conn);
                }
                Err(e) if n == 1 => return Err(e),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        Err(anyhow!("no coordinator answered: {}", errors.join("; ")))
    }

    async fn connect_to(&self, t: &Target) -> Result<Connection> {
        let connect = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port))
                .await
                .with_context(|| format!("connect to the coordinator at {}:{}", t.host, t.port))?;
            tcp.set_nodelay(true)?;
            let tls = self.tls.connect(t.server_name.clone(), tcp).await.map_err(|e| self.handshake_error(t, e))?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.context("HTTP handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            anyhow::Ok(sender)
        };
        tokio::time::timeout(self.connect_timeout, connect).await.map_err(|_| {
            anyhow!("no answer from the coordinator at {}:{} within {:?}", t.host, t.port, self.connect_timeout)
        })?
    }

    /// Says what a failed TLS handshake means for the user: a certificate from another CA is the
    /// usual case (a wrong FIFTY_CACERT, or a coordinator of another cluster).
    fn handshake_error(&self, t: &Target, e: std::io::Error) -> anyhow::Error {
        use rustls::CertificateError;
        let tls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls_error {
            Some(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature | CertificateError::UnknownIssuer,
            )) => anyhow!(
                "the coordinator's certificate is not signed by {} (TLS handshake with {}:{}): point FIFTY_CACERT at this cluster's CA, <data_dir>/tls/ca.pem on a coordinator",
                self.ca_source,
                t.host,
                t.port
            ),
            _ => anyhow::Error::new(e).context(format!("TLS handshake with the coordinator at {}:{}", t.host, t.port)),
        }
    }

    /// `GET path`, decoded (with `stale=true` if the client was asked for stale reads).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        if self.stale {
            let sep = if path.contains('?') { '&' } else { '?' };
            return self.call(Method::GET, &format!("{path}{sep}stale=true"), None).await;
        }
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, decoded.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.call(Method::POST, path, Some(serde_json::to_vec(body)?)).await
    }

    /// `DELETE path`, decoded.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::DELETE, path, None).await
    }

    /// `GET path`, its body written to `out` as it arrives (a backup, which may be far larger
    /// than memory should hold); returns how many bytes. A failure answer is an [`ApiFailure`].
    pub async fn download(&self, path: &str, out: &mut (impl tokio::io::AsyncWrite + Unpin)) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let mut headers = Vec::new();
        headers.extend(self.authorization()?);
        let (mut conn, resp) = self.exchange(Method::GET, path, &headers, Vec::new()).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.context("read response")?.to_bytes();
            return Err(failure(status, &bytes));
        }
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    *conn = None;
                    return Err(anyhow!("the coordinator stopped sending after {written} bytes: {e}"));
                }
            };
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).await.context("write what the coordinator sent")?;
                written += data.len() as u64;
            }
        }
        out.flush().await?;
        Ok(written)
    }

    /// `GET path` as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let (status, bytes) = self.request(Method::GET, path, None).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            return Err(ApiFailure { status, message: text }.into());
        }
        Ok(text)
    }
}

/// A failure answer as an [`ApiFailure`]: the JSON error's message, else the body as text.
fn failure(status: StatusCode, bytes: &[u8]) -> anyhow::Error {
    let message = serde_json::from_slice::<ErrorBody>(bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned());
    ApiFailure { status, message }.into()
}
