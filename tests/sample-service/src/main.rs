//! `fifty-sample-service`: the small web service ("the shop") that Fifty's agents deploy and
//! supervise in the end-to-end tests and in `fifty demo`.
//!
//! It answers `GET /health`, `/`, `/version`, `/metrics` and `/checkout` (an A/B test through the
//! agent's sidecar, see [`checkout`]) over HTTP/1.1: one thread per
//! connection, one request per connection (`Connection: close`). Tests and demos steer it from
//! outside while it runs, through files in its working directory: `UNHEALTHY` fails the health
//! check, `ERROR_RATE` makes a share of `/` requests answer 500, `LATENCY_MS` slows `/` down
//! (the median delay; requests are spread around it, see [`delay_of`]).
//! The `FIFTY_SAMPLE_*` environment variables set the same knobs for the life of the process.
//!
//! Invariants:
//! - It depends on nothing but std, so it builds in seconds and starts at once.
//! - Failures are deterministic, not random: with error rate r, request n to `/` (counting from 1)
//!   fails iff ⌊n·r⌋ > ⌊(n−1)·r⌋, so the first n requests hold exactly ⌊n·r⌋ failures. The rate is
//!   kept in parts per billion and the test done in integers, so no rounding of n·r can shift it.
//! - Delays are deterministic too: with `LATENCY_MS` m, request n waits m · 4^(2·frac(n·φ) − 1),
//!   log-uniform between m/4 and 4m (φ the golden ratio, which spreads any run of requests evenly),
//!   so the latency histogram spans several buckets, as a real service's does, and a rank test
//!   can tell two releases apart or find them alike.
//! - `/metrics` is one consistent snapshot: the `+Inf` bucket always equals `_count`.
//! - Nothing a client sends can make it panic or hold a thread forever: heads are capped at
//!   [`MAX_HEAD_BYTES`] and every read and write has a timeout.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How to call the program.
const USAGE: &str = "usage: fifty-sample-service --port N [--bind 127.0.0.1]";
/// The longest request head (request line and headers) read before answering 400.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send its request, or to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the `ERROR_RATE` and `LATENCY_MS` files are read at most.
const KNOB_REFRESH: Duration = Duration::from_secs(1);
/// The histogram's finite upper bounds, in seconds, with their `le` label text.
const BUCKETS: [(f64, &str); 7] =
    [(0.001, "0.001"), (0.005, "0.005"), (0.01, "0.01"), (0.05, "0.05"), (0.1, "0.1"), (0.5, "0.5"), (1.0, "1")];
/// One error rate of 1 in parts per billion.
const PPB: u64 = 1_000_000_000;

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("fifty-sample-service: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let settings = match Settings::load(Path::new("."), |name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("fifty-sample-service: {e}");
            std::process::exit(2);
        }
    };
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("fifty-sample-service: listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let app = Arc::new(App::new(settings));
    println!("fifty-sample-service {} listening on {bound}", app.version);
    serve(listener, app);
}

/// The command line.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    /// TCP port to listen on (0 picks a free one).
    port: u16,
    /// Address to listen on.
    bind: IpAddr,
}

impl Args {
    /// Parses the arguments after the program name; `None` when help was asked for.
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
        let mut port = None;
        let mut bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
                _ => (arg.clone(), None),
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--port" | "--bind" => {
                    let value = match inline {
                        Some(value) => value,
                        None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
                    };
                    if flag == "--port" {
                        let parsed = value.parse::<u16>();
                        port = Some(parsed.map_err(|_| format!("--port {value:?} is not a port number (0-65535)"))?);
                    } else {
                        bind = value.parse().map_err(|_| format!("--bind {value:?} is not an IP address"))?;
                    }
                }
                _ => return Err(format!("unexpected argument {arg:?}")),
            }
        }
        let port = port.ok_or("--port is required")?;
        Ok(Some(Args { port, bind }))
    }
}

/// An error rate in parts per billion: 0 never fails, [`PPB`] always does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Rate(u64);

impl Rate {
    /// Parses a rate written as a float in 0..=1.
    fn parse(text: &str) -> Result<Rate, String> {
        let rate: f64 = text.trim().parse().map_err(|_| format!("{:?} is not a number", text.trim()))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("{rate} is not between 0 and 1"));
        }
        Ok(Rate((rate * PPB as f64).round() as u64))
    }

    /// Whether request `n` (counting from 1) fails: iff ⌊n·r⌋ > ⌊(n−1)·r⌋.
    fn fails(self, n: u64) -> bool {
        let (n, r, ppb) = (u128::from(n), u128::from(self.0), u128::from(PPB));
        n > 0 && n * r / ppb > (n - 1) * r / ppb
    }
}

/// The delay of request `n` (from 1) to `/` for a median delay `median`: `median · 4^(2u − 1)` with
/// `u = frac(n·φ)`, log-uniform between a quarter and four times the median. A fixed delay would put
/// every request in one bucket of the histogram, where a rank test sees nothing but ties.
fn delay_of(median: Duration, n: u64) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    let u = (n as f64 * GOLDEN).fract();
    median.mul_f64(4f64.powf(2.0 * u - 1.0))
}

/// Parses a latency written as whole milliseconds.
fn parse_latency(text: &str) -> Result<Duration, String> {
    let ms: u64 =
        text.trim().parse().map_err(|_| format!("{:?} is not a whole number of milliseconds", text.trim()))?;
    Ok(Duration::from_millis(ms))
}

/// A setting fixed by the environment, or read from a file in the working directory while the
/// service runs (missing file: the default).
enum Knob<T> {
    /// Set for the life of the process.
    Fixed(T),
    /// Read from `path`, at most once per [`KNOB_REFRESH`].
    File { path: PathBuf, parse: fn(&str) -> Result<T, String>, cache: Mutex<Option<(Instant, T)>> },
}

impl<T: Copy + Default> Knob<T> {
    /// A knob read from `dir/name`.
    fn file(dir: &Path, name: &str, parse: fn(&str) -> Result<T, String>) -> Self {
        Knob::File { path: dir.join(name), parse, cache: Mutex::new(None) }
    }

    /// The current value. A file that cannot be read or parsed counts as missing, with a warning.
    fn get(&self) -> T {
        let (path, parse, cache) = match self {
            Knob::Fixed(value) => return *value,
            Knob::File { path, parse, cache } => (path, parse, cache),
        };
        let mut cache = lock(cache);
        if let Some((read_at, value)) = *cache {
            if read_at.elapsed() < KNOB_REFRESH {
                return value;
            }
        }
        let value = match std::fs::read_to_string(path) {
            Ok(text) => parse(&text).unwrap_or_else(|e| {
                eprintln!("fifty-sample-service: ignoring {}: {e}", path.display());
                T::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => T::default(),
            Err(e) => {
                eprintln!("fifty-sample-service: ignoring {}: {e}", path.display());
                T::default()
            }
        };
        *cache = Some((Instant::now(), value));
        value
    }
}

/// Everything that shapes the service's answers, read once at start.
struct Settings {
    /// What `/version` says.
    version: String,
    /// Where the `UNHEALTHY`, `ERROR_RATE` and `LATENCY_MS` files are looked for.
    dir: PathBuf,
    /// `FIFTY_SAMPLE_UNHEALTHY=1`: the health check fails whatever the files say.
    unhealthy: bool,
    /// Share of `/` requests that fail.
    error_rate: Knob<Rate>,
    /// The median delay added to `/` (see [`delay_of`]).
    latency: Knob<Duration>,
}

impl Settings {
    /// Reads the settings from `env` (the process environment in `main`) and the files in `dir`.
    /// A malformed environment variable is an error; a malformed file only a warning.
    fn load(dir: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let version = match env("FIFTY_SAMPLE_VERSION").map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
            Some(version) => version,
            None => match std::fs::read_to_string(dir.join("VERSION")) {
                Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
                Ok(_) => "dev".to_string(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => "dev".to_string(),
                Err(e) => {
                    eprintln!("fifty-sample-service: cannot read VERSION ({e}); serving version dev");
                    "dev".to_string()
                }
            },
        };
        let unhealthy = env("FIFTY_SAMPLE_UNHEALTHY").is_some_and(|v| v.trim() == "1");
        let error_rate = match env("FIFTY_SAMPLE_ERROR_RATE") {
            Some(text) => Knob::Fixed(Rate::parse(&text).map_err(|e| format!("FIFTY_SAMPLE_ERROR_RATE: {e}"))?),
            None => Knob::file(dir, "ERROR_RATE", Rate::parse),
        };
        let latency = match env("FIFTY_SAMPLE_LATENCY_MS") {
            Some(text) => Knob::Fixed(parse_latency(&text).map_err(|e| format!("FIFTY_SAMPLE_LATENCY_MS: {e}"))?),
            None => Knob::file(dir, "LATENCY_MS", parse_latency),
        };
        Ok(Settings { version, dir: dir.to_path_buf(), unhealthy, error_rate, latency })
    }
}

/// What `/metrics` reports, all under one lock so a scrape sees one consistent snapshot.
#[derive(Default)]
struct Metrics {
    /// Requests to `/` answered 200.
    ok: u64,
    /// Requests to `/` answered 500.
    errors: u64,
    /// Observations per finite bucket (not cumulative): `bucket[i]` counts those in
    /// (`BUCKETS[i-1]`, `BUCKETS[i]`].
    buckets: [u64; BUCKETS.len()],
    /// Observations above the last finite bound.
    over: u64,
    /// Sum of the observed durations, in seconds.
    sum: f64,
}

impl Metrics {
    fn observe(&mut self, failed: bool, took: Duration) {
        if failed {
            self.errors += 1;
        } else {
            self.ok += 1;
        }
        let secs = took.as_secs_f64();
        match BUCKETS.iter().position(|(bound, _)| secs <= *bound) {
            Some(i) => self.buckets[i] += 1,
            None => self.over += 1,
        }
        self.sum += secs;
    }
}

/// The service: settings plus counters, shared by every connection's thread.
struct App {
    version: String,
    dir: PathBuf,
    unhealthy: bool,
    error_rate: Knob<Rate>,
    latency: Knob<Duration>,
    /// Requests to `/` so far; request n's number decides whether it fails.
    root_requests: AtomicU64,
    metrics: Mutex<Metrics>,
}

/// An answer, before it is written out.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    /// The bytes on the wire: status line, headers, body.
    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            head.push_str("Allow: GET\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A parsed request head; only what routing needs.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    /// The target's path, without the query.
    path: String,
    /// The query, after `?` (empty without one).
    query: String,
}

/// Recovers the guard of a poisoned lock: every critical section here leaves its data valid.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl App {
    fn new(settings: Settings) -> Self {
        App {
            version: settings.version,
            dir: settings.dir,
            unhealthy: settings.unhealthy,
            error_rate: settings.error_rate,
            latency: settings.latency,
            root_requests: AtomicU64::new(0),
            metrics: Mutex::new(Metrics::default()),
        }
    }

    /// Answers one request.
    fn handle(&self, request: &Request) -> Response {
        let known = matches!(request.path.as_str(), "/" | "/health" | "/version" | "/metrics" | "/checkout");
        if !known {
            return Response::text(404, "not found\n");
        }
        if request.method != "GET" {
            return Response::text(405, "method not allowed\n");
        }
        match request.path.as_str() {
            "/health" => self.health(),
            "/version" => Response::text(200, format!("{}\n", self.version)),
            "/checkout" => checkout::handle(&self.dir, &request.query),
            "/metrics" => {
                Response { status: 200, content_type: "text/plain; version=0.0.4", body: self.render_metrics() }
            }
            _ => self.root(),
        }
    }

    fn health(&self) -> Response {
        if self.unhealthy || self.dir.join("UNHEALTHY").exists() {
            Response::text(503, "unhealthy\n")
        } else {
            Response::text(200, "ok\n")
        }
    }

    fn root(&self) -> Response {
        let started = Instant::now();
        let n = self.root_requests.fetch_add(1, Ordering::Relaxed) + 1;
        let delay = delay_of(self.latency.get(), n);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let failed = self.error_rate.get().fails(n);
        let response = if failed {
            Response::text(500, "error\n")
        } else {
            Response::text(200, format!("shop {}\n", self.version))
        };
        lock(&self.metrics).observe(failed, started.elapsed());
        response
    }

    /// The Prometheus text exposition (format 0.0.4) of the counters.
    fn render_metrics(&self) -> String {
        let m = lock(&self.metrics);
        let mut out = String::new();
        let w = &mut out;
        // Writing to a String cannot fail.
        let _ = writeln!(w, "# HELP http_requests_total Requests to / by status code.");
        let _ = writeln!(w, "# TYPE http_requests_total counter");
        let _ = writeln!(w, "http_requests_total{{code=\"200\"}} {}", m.ok);
        let _ = writeln!(w, "http_requests_total{{code=\"500\"}} {}", m.errors);
        let _ = writeln!(w, "# HELP http_request_duration_seconds Time taken to answer requests to /.");
        let _ = writeln!(w, "# TYPE http_request_duration_seconds histogram");
        let mut cumulative = 0;
        for ((_, le), count) in BUCKETS.iter().zip(m.buckets) {
            cumulative += count;
            let _ = writeln!(w, "http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += m.over;
        let _ = writeln!(w, "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(w, "http_request_duration_seconds_sum {}", m.sum);
        let _ = writeln!(w, "http_request_duration_seconds_count {cumulative}");
        let _ = writeln!(w, "# HELP shop_version_info The version this process serves.");
        let _ = writeln!(w, "# TYPE shop_version_info gauge");
        let _ = writeln!(w, "shop_version_info{{version=\"{}\"}} 1", escape_label(&self.version));
        out
    }
}

/// Escapes a label value for the text format: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Why a request head could not be read.
#[derive(Debug)]
enum HeadError {
    /// The client sent more than [`MAX_HEAD_BYTES`] without ending the head.
    TooLarge,
    /// The client closed its side before ending the head.
    Incomplete,
    /// Reading failed (timeout, reset): there is nobody to answer.
    Io,
}

/// Reads up to the blank line ending the head; `Ok(None)` if the client closed without sending
/// anything. Returns the head without its final blank line.
fn read_head(stream: &mut impl Read) -> Result<Option<Vec<u8>>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(HeadError::Incomplete),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Io),
        }
    }
}

/// Where the head's content ends: before the first `\r\n\r\n` (or bare `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find(|&i| buf[i..].starts_with(b"\r\n\r\n") || buf[i..].starts_with(b"\n\n"))
}

/// Whether `c` may appear in an HTTP token (a method or a header name).
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Parses `METHOD SP origin-form-target SP HTTP/1.x`.
fn parse_request_line(line: &str) -> Result<Request, String> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("request line {line:?} is not `METHOD /path HTTP/1.1`"));
    };
    if method.is_empty() || !method.chars().all(is_token_char) {
        return Err(format!("bad method {method:?}"));
    }
    if !target.starts_with('/') || target.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("bad request target {target:?}"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("unsupported protocol {version:?}"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request { method: method.to_string(), path: path.to_string(), query: query.to_string() })
}

/// Parses a whole head: request line, then `Name: value` header lines.
fn parse_request(head: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8".to_string())?;
    let mut lines = text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line));
    let request = parse_request_line(lines.next().unwrap_or_default())?;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line {line:?} has no colon"));
        };
        if name.is_empty() || !name.chars().all(is_token_char) {
            return Err(format!("bad header name {name:?}"));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("header {name} holds control characters"));
        }
    }
    Ok(request)
}

/// Accepts connections forever, one thread each.
fn serve(listener: TcpListener, app: Arc<App>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let app = Arc::clone(&app);
                let spawned =
                    std::thread::Builder::new().name("connection".into()).spawn(move || serve_connection(&app, stream));
                if let Err(e) = spawned {
                    eprintln!("fifty-sample-service: cannot start a thread for a connection: {e}");
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                eprintln!("fifty-sample-service: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads one request, answers it, closes.
fn serve_connection(app: &App, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let response = match read_head(&mut stream) {
        Ok(None) | Err(HeadError::Io) => return,
        Ok(Some(head)) => match parse_request(&head) {
            Ok(request) => app.handle(&request),
            Err(e) => Response::text(400, format!("bad request: {e}\n")),
        },
        Err(HeadError::TooLarge) => Response::text(400, "bad request: the head is too large\n"),
        Err(HeadError::Incomplete) => Response::text(400, "bad request: the head ended early\n"),
    };
    if stream.write_all(&response.to_bytes()).and_then(|()| stream.flush()).is_err() {
        return;
    }
    // Close gently: send our FIN, then read what the client still sends (a body we did not
    // want) until it closes, so that the kernel does not answer it with a reset that could
    // destroy the response before the client read it.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// `GET /checkout?user=U[&experiment=E]`: the shop asks its host's A/B sidecar which checkout
/// `U` gets, and `U` buys with the probability set for that variant, which it reports to the
/// sidecar as a `conversion` event with the order's value. The sidecar is `FIFTY_SIDECAR`
/// (`127.0.0.1:7072` by default); the experiment `FIFTY_SAMPLE_EXPERIMENT` (default `checkout`);
/// the probabilities `FIFTY_SAMPLE_CONVERSION`, else the `CONVERSION` file in the working directory,
/// like `control=0.10,new_checkout=0.13,*=0.10` (`*`: any other variant; default 0.10).
/// Whether a user buys is a deterministic function of (experiment, user, probability), so a user
/// who visits two hosts decides the same way on both.
mod checkout {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::time::Duration;

    use super::Response;

    fn json(status: u16, body: String) -> Response {
        Response { status, content_type: "application/json", body }
    }

    pub fn handle(dir: &Path, query: &str) -> Response {
        let param = |key: &str| {
            query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
        };
        let Some(user) = param("user")
            .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        else {
            return json(400, r#"{"error":"give ?user=ID (letters, digits, '-', '_')"}"#.into());
        };
        let experiment = param("experiment")
            .or_else(|| std::env::var("FIFTY_SAMPLE_EXPERIMENT").ok())
            .unwrap_or_else(|| "checkout".into());
        let sidecar: SocketAddr =
            match std::env::var("FIFTY_SIDECAR").unwrap_or_else(|_| "127.0.0.1:7072".into()).parse() {
                Ok(a) => a,
                Err(_) => return json(500, r#"{"error":"FIFTY_SIDECAR is not IP:PORT"}"#.into()),
            };
        let (status, body) = match call(sidecar, "GET", &format!("/v1/assign/{experiment}/{user}"), "") {
            Ok(answer) => answer,
            Err(e) => return json(502, format!(r#"{{"error":"sidecar: {e}"}}"#)),
        };
        if status != 200 {
            return json(502, format!(r#"{{"error":"sidecar answered {status}","sidecar":{body}}}"#));
        }
        let Some(variant) = field(&body, "variant") else {
            return json(502, r#"{"error":"sidecar answer has no variant"}"#.into());
        };
        let spec = std::env::var("FIFTY_SAMPLE_CONVERSION")
            .ok()
            .or_else(|| std::fs::read_to_string(dir.join("CONVERSION")).ok())
            .unwrap_or_default();
        let p = probability(&spec, &variant);
        let draw = hash(&format!("{experiment}/{user}"));
        let converted = (draw >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0;
        if converted {
            let value = 10 + draw % 41;
            let track =
                format!(r#"{{"experiment":"{experiment}","unit":"{user}","event":"conversion","value":{value}.0}}"#);
            match call(sidecar, "POST", "/v1/track", &track) {
                Ok((200, _)) => {}
                Ok((status, body)) => {
                    return json(502, format!(r#"{{"error":"track answered {status}","sidecar":{body}}}"#))
                }
                Err(e) => return json(502, format!(r#"{{"error":"sidecar: {e}"}}"#)),
            }
        }
        json(200, format!(r#"{{"user":"{user}","variant":"{variant}","converted":{converted}}}"#))
    }

    /// The probability for `variant` in `control=0.10,new_checkout=0.13,*=0.10`.
    pub fn probability(spec: &str, variant: &str) -> f64 {
        let mut default = 0.10;
        for (k, v) in spec.split(',').filter_map(|kv| kv.trim().split_once('=')) {
            let Ok(p) = v.trim().parse::<f64>() else { continue };
            if k.trim() == variant {
                return p;
            }
            if k.trim() == "*" {
                default = p;
            }
        }
        default
    }

    /// FNV-1a, then a SplitMix64 finaliser: stable across builds, unlike std's hasher.
    pub fn hash(s: &str) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^ (h >> 31)
    }

    /// The string value of `"key":"…"` in a compact JSON object.
    pub fn field(body: &str, key: &str) -> Option<String> {
        let start = body.find(&format!("\"{key}\":\""))? + key.len() + 4;
        let end = body[start..].find('"')? + start;
        Some(body[start..end].to_string())
    }

    fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: sidecar\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        let status = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_probabilities_and_answers_are_read_strictly() {
        assert_eq!(checkout::probability("control=0.10,new_checkout=0.13", "new_checkout"), 0.13);
        assert_eq!(checkout::probability("control=0.10,*=0.2", "blue"), 0.2);
        assert_eq!(checkout::probability("", "blue"), 0.10);
        assert_eq!(
            checkout::field(r#"{"experiment":"x","variant":"new_checkout"}"#, "variant").unwrap(),
            "new_checkout"
        );
        assert_eq!(checkout::hash("a"), checkout::hash("a"));
        assert_ne!(checkout::hash("a"), checkout::hash("b"));
    }

    fn settings(dir: &Path, version: &str, rate: Rate) -> Settings {
        Settings {
            version: version.to_string(),
            dir: dir.to_path_buf(),
            unhealthy: false,
            error_rate: Knob::Fixed(rate),
            latency: Knob::Fixed(Duration::ZERO),
        }
    }

    fn get(path: &str) -> Request {
        Request { method: "GET".into(), path: path.into(), query: String::new() }
    }

    /// A fresh empty directory for one test.
    fn temp_dir(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("fifty-sample-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        dir
    }

    #[test]
    fn the_error_pattern_fails_exactly_the_rate() {
        for (text, expected) in [("0", 0), ("0.05", 50), ("0.5", 500), ("1", 1000)] {
            let app = App::new(settings(Path::new("."), "1.0", Rate::parse(text).unwrap()));
            let failures = (0..1000).filter(|_| app.handle(&get("/")).status == 500).count();
            assert_eq!(failures, expected, "rate {text}");
        }
    }

    #[test]
    fn the_error_pattern_is_spread_out_and_exact_where_floats_round() {
        let half = Rate::parse("0.5").unwrap();
        assert_eq!((1..=6).map(|n| half.fails(n)).collect::<Vec<_>>(), [false, true, false, true, false, true]);
        // 100 × 0.29 is 28.999999999999996 in floating point; in parts per billion it is 29.
        let rate = Rate::parse("0.29").unwrap();
        assert_eq!((1..=100).filter(|&n| rate.fails(n)).count(), 29);
        assert!(Rate::parse("1.5").is_err() && Rate::parse("-0.1").is_err() && Rate::parse("lots").is_err());
    }

    #[test]
    fn delays_spread_log_uniformly_around_the_median() {
        let median = Duration::from_millis(8);
        let mut delays: Vec<Duration> = (1..=1000).map(|n| delay_of(median, n)).collect();
        delays.sort();
        assert!(delays[0] >= Duration::from_millis(2) && delays[999] <= Duration::from_millis(32), "{delays:?}");
        assert!(delays[0] < Duration::from_micros(2100) && delays[999] > Duration::from_micros(31_000));
        let mid = delays[500].as_secs_f64() * 1000.0;
        assert!((7.8..8.2).contains(&mid), "median {mid} ms");
        // A quarter of the requests below m/2 (log-uniform over four halvings), a quarter above 2m.
        let below = delays.iter().filter(|d| **d < median / 2).count();
        assert!((240..=260).contains(&below), "{below} below m/2");
        assert_eq!(delay_of(Duration::ZERO, 7), Duration::ZERO);
    }

    #[test]
    fn request_lines_are_parsed_strictly() {
        assert_eq!(parse_request_line("GET / HTTP/1.1"), Ok(get("/")));
        let with_query = Request { query: "verbose=1".into(), ..get("/health") };
        assert_eq!(parse_request_line("GET /health?verbose=1 HTTP/1.0"), Ok(with_query));
        assert_eq!(
            parse_request(b"POST /version HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8\r\nAccept: */*"),
            Ok(Request { method: "POST".into(), path: "/version".into(), query: String::new() })
        );
        for bad in [
            "",
            "garbage",
            "GET /",
            "GET / HTTP/2.0",
            "GET  / HTTP/1.1",
            "GET / HTTP/1.1 extra",
            "GET health HTTP/1.1",
            "G(T / HTTP/1.1",
            "GET /a\u{7}b HTTP/1.1",
        ] {
            assert!(parse_request_line(bad).is_err(), "accepted {bad:?}");
        }
        assert!(parse_request(b"GET / HTTP/1.1\r\nno colon here").is_err());
        assert!(parse_request(b"GET / HTTP/1.1\r\n: empty name").is_err());
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost: \xff").is_err());
        assert!(parse_request(b"\x00\x01\x02").is_err());
    }

    #[test]
    fn arguments_need_a_port_and_refuse_the_unknown() {
        let args = |list: &[&str]| Args::parse(list.iter().map(|s| s.to_string()));
        assert_eq!(args(&["--port", "8080"]), Ok(Some(Args { port: 8080, bind: Ipv4Addr::LOCALHOST.into() })));
        assert_eq!(args(&["--bind=127.0.0.2", "--port=0"]), Ok(Some(Args { port: 0, bind: [127, 0, 0, 2].into() })));
        assert_eq!(args(&["--help"]), Ok(None));
        let bad: [&[&str]; 5] =
            [&[], &["--port"], &["--port", "http"], &["--port", "70000"], &["--port", "1", "--bind", "x"]];
        for bad in bad {
            assert!(args(bad).is_err(), "accepted {bad:?}");
        }
        assert!(args(&["--port", "1", "--verbose"]).unwrap_err().contains("--verbose"));
    }

    #[test]
    fn the_environment_wins_over_files_and_bad_values_are_refused() {
        let dir = temp_dir("settings");
        std::fs::write(dir.join("VERSION"), "  2.0.1\n").unwrap();
        let none = |_: &str| None;
        assert_eq!(Settings::load(&dir, none).unwrap().version, "2.0.1");
        let env = |name: &str| (name == "FIFTY_SAMPLE_VERSION").then(|| "3.0".to_string());
        assert_eq!(Settings::load(&dir, env).unwrap().version, "3.0");
        assert_eq!(Settings::load(&dir.join("nowhere"), none).unwrap().version, "dev");
        let bad = |name: &str| (name == "FIFTY_SAMPLE_ERROR_RATE").then(|| "2".to_string());
        assert!(Settings::load(&dir, bad).err().unwrap().contains("FIFTY_SAMPLE_ERROR_RATE"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_in_the_working_directory_steer_health_and_errors() {
        let dir = temp_dir("files");
        std::fs::write(dir.join("ERROR_RATE"), "1\n").unwrap();
        let app = App::new(Settings::load(&dir, |_| None).unwrap());
        assert_eq!(app.handle(&get("/health")), Response::text(200, "ok\n"));
        std::fs::write(dir.join("UNHEALTHY"), "").unwrap();
        assert_eq!(app.handle(&get("/health")), Response::text(503, "unhealthy\n"));
        std::fs::remove_file(dir.join("UNHEALTHY")).unwrap();
        assert_eq!(app.handle(&get("/health")).status, 200, "the file is checked on every request");
        assert_eq!(app.handle(&get("/")), Response::text(500, "error\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Checks `name{labels} value` / `name value` the way a Prometheus scraper would.
    fn is_sample(line: &str) -> bool {
        let Some((series, value)) = line.rsplit_once(' ') else { return false };
        let value_ok = value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value);
        let is_name = |s: &str| {
            let mut chars = s.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let series_ok = match series.split_once('{') {
            None => is_name(series),
            Some((name, labels)) => {
                let Some(labels) = labels.strip_suffix('}') else { return false };
                is_name(name)
                    && labels.split(',').all(|pair| {
                        pair.split_once('=').is_some_and(|(label, quoted)| {
                            is_name(label) && quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"')
                        })
                    })
            }
        };
        value_ok && series_ok
    }

    #[test]
    fn metrics_are_valid_text_format_with_the_expected_series() {
        let app = App::new(settings(Path::new("."), "1.2.3", Rate::parse("0.5").unwrap()));
        for _ in 0..4 {
            app.handle(&get("/"));
        }
        app.handle(&get("/health"));
        let response = app.handle(&get("/metrics"));
        assert_eq!(response.status, 200);
        assert!(response.content_type.starts_with("text/plain; version=0.0.4"));
        let text = response.body;
        for expected in [
            "# TYPE http_requests_total counter",
            "http_requests_total{code=\"200\"} 2",
            "http_requests_total{code=\"500\"} 2",
            "# TYPE http_request_duration_seconds histogram",
            "http_request_duration_seconds_bucket{le=\"0.001\"} ",
            "http_request_duration_seconds_bucket{le=\"1\"} 4",
            "http_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "http_request_duration_seconds_sum ",
            "http_request_duration_seconds_count 4",
            "# TYPE shop_version_info gauge",
            "shop_version_info{version=\"1.2.3\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        for line in text.lines() {
            let comment = line.starts_with("# HELP ") || line.starts_with("# TYPE ");
            assert!(comment || line.is_empty() || is_sample(line), "not valid text format: {line:?}");
        }
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// Sends `raw` on a fresh connection; returns the status code and the body.
    fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
        exchange_then(addr, raw, |_| {})
    }

    /// Like [`exchange`], doing `after_sending` to the connection before reading.
    fn exchange_then(addr: SocketAddr, raw: &[u8], after_sending: impl FnOnce(&TcpStream)) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).expect("connect to the service");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.write_all(raw).unwrap();
        after_sending(&stream);
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read the answer");
        let status = answer.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        (status, body)
    }

    #[test]
    fn it_serves_over_real_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(App::new(settings(Path::new("."), "7.7.7", Rate::default())));
        std::thread::spawn(move || serve(listener, app));
        let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n");
        assert_eq!(exchange(addr, request("/health").as_bytes()), (200, "ok\n".into()));
        assert_eq!(exchange(addr, request("/").as_bytes()), (200, "shop 7.7.7\n".into()));
        assert_eq!(exchange(addr, request("/version").as_bytes()), (200, "7.7.7\n".into()));
        assert_eq!(exchange(addr, request("/nope").as_bytes()).0, 404);
        assert_eq!(exchange(addr, b"garbage\r\n\r\n").0, 400);
        let half_close = |stream: &TcpStream| stream.shutdown(Shutdown::Write).expect("half-close");
        assert_eq!(exchange_then(addr, b"GET / HTTP/1.1\r\nHost: x\r\n", half_close).0, 400, "a head cut short");
        let (status, metrics) = exchange(addr, request("/metrics").as_bytes());
        assert_eq!(status, 200);
        assert!(metrics.contains("http_requests_total{code=\"200\"} 1"), "{metrics}");
    }
}
