//! The local A/B sidecar: a minimal HTTP/1.1 server on loopback that answers "which variant does
//! this unit get?" from memory, and counts what it saw for the coordinator.
//!
//! - `GET /v1/assign/{experiment}/{unit}` → `{"experiment":"…","variant":"…"}`, recording an exposure.
//! - `POST /v1/track` with `{"experiment":"…","unit":"…","event":"…","value":1.0}` records a metric
//!   event (`value` is optional, default 1; at most 1e12 in magnitude, as is one unit's sum in one
//!   report, so no sum can overflow).
//! - `GET /v1/experiments` lists what this host serves.
//!
//! Errors are JSON `{"error":"…"}`: 404 unknown experiment or path, 400 bad request or JSON, 405
//! wrong method, 413 body over [`MAX_BODY`], 431 head over [`MAX_HEAD`]. A connection idle or slow
//! for [`IO_TIMEOUT`] is closed; keep-alive is supported.
//!
//! Invariants:
//! - It listens on loopback only (the config refuses anything else), and only while the
//!   coordinator says this host serves at least one experiment.
//! - Memory is bounded: at most [`MAX_UNITS_PER_EXPERIMENT`] units per experiment and
//!   [`MAX_UNITS`] in all wait for the next report (40 bytes each in a hash table, at most twice
//!   that with the table's slack: under 16 MiB), plus the reports made of the last units taken
//!   (at most [`MAX_UNITS`] at 24 bytes: under 5 MiB), sent one at a time; a table gives its
//!   memory back when a report takes its units. A unit over the cap is not recorded and is
//!   counted as dropped, which the coordinator shows.
//! - The application's requests never wait for a report: the lock they share with the link is
//!   held for constant work only (tables are taken whole and made into reports outside it).
//! - A report is kept until the coordinator acknowledges it and re-sent on every new link, so a
//!   coordinator failover loses nothing; the (boot, seq) it carries makes a repeat count once.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fifty_shared::experiment::{
    unit_hash, ExperimentDef, ExperimentReport, ExperimentUnits, UnitSeen, MAX_REPORT_UNITS, MAX_VALUE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

/// The longest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest request body.
pub const MAX_BODY: usize = 4 * 1024;
/// How long a connection may sit idle or take to send a request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most units of one experiment waiting for the next report.
pub const MAX_UNITS_PER_EXPERIMENT: usize = 50_000;
/// Most units of all experiments waiting for the next report.
pub const MAX_UNITS: usize = 200_000;
/// Longest unit id accepted.
pub const MAX_UNIT_LEN: usize = 256;
/// A report not acknowledged this long is sent again on the same link.
const RESEND_AFTER: Duration = Duration::from_secs(5);
/// The scheduler slice the sidecar's thread asks for (see [`request_short_slice`]).
pub const SLICE: Duration = Duration::from_micros(100);

/// The kernel's `struct sched_attr` (`sched_setattr(2)`), as far as Linux 6.x reads it.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    /// For a normal (`SCHED_OTHER`) thread since Linux 6.12: its slice, in nanoseconds.
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Asks Linux's scheduler to run the calling thread in slices of `slice` (0.1 to 100 ms; Linux
/// 6.12 and later, no privilege needed), keeping its policy and nice value.
///
/// Why: the sidecar's thread works about 20 µs per request and sleeps in between. The scheduler
/// (EEVDF) lets a thread that wakes on a busy core run only once the running one's slice is spent
/// or its own deadline (its wake-up plus its slice) comes first; with the default slice (1.4 ms on
/// two cores here) a request that arrives while another thread (the agent's link encoding a report,
/// a coordinator on the same machine, a build) has the core waits up to that long. With a short
/// slice its deadline is near and it runs at once; it still gets only its fair share of CPU.
/// Older kernels ignore the field (the thread keeps the default) or refuse the call (an error).
pub fn request_short_slice(slice: Duration) -> std::io::Result<()> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: `attr` is a writable sched_attr of `size` bytes; pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, size, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    attr.size = size;
    attr.runtime = slice.as_nanos().min(u64::MAX as u128) as u64;
    // SAFETY: `attr` is a valid sched_attr of `size` bytes (the kernel's own, one field changed).
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Default)]
struct Pending {
    units: HashMap<u64, UnitSeen>,
    dropped: u64,
}

struct State {
    defs: HashMap<String, ExperimentDef>,
    pending: HashMap<String, Pending>,
    total: usize,
    boot: u64,
    next_seq: u64,
    /// The report sent and not yet acknowledged, and when it went out on this link.
    inflight: Option<(Arc<ExperimentReport>, Option<Instant>)>,
    /// Reports built from taken units, waiting for `inflight` to be acknowledged (numbered when
    /// they go out).
    queued: VecDeque<ExperimentReport>,
}

/// The sidecar's shared state; cheap to clone.
#[derive(Clone)]
pub struct Sidecar {
    listen: SocketAddr,
    state: Arc<Mutex<State>>,
    active: Arc<watch::Sender<bool>>,
    more: Arc<tokio::sync::Notify>,
}

/// A JSON answer.
#[derive(Debug, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: String,
}

fn error(status: u16, message: impl AsRef<str>) -> Answer {
    Answer { status, body: serde_json::json!({ "error": message.as_ref() }).to_string() }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Track {
    experiment: String,
    unit: String,
    event: String,
    value: Option<f64>,
}

impl Sidecar {
    /// A sidecar that will listen on `listen` (loopback, checked by the config) once it serves an
    /// experiment.
    pub fn new(listen: SocketAddr) -> Self {
        let state = State {
            defs: HashMap::new(),
            pending: HashMap::new(),
            total: 0,
            boot: rand::random(),
            next_seq: 1,
            inflight: None,
            queued: VecDeque::new(),
        };
        Sidecar {
            listen,
            state: Arc::new(Mutex::new(state)),
            active: Arc::new(watch::channel(false).0),
            more: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("sidecar lock")
    }

    /// The coordinator's definitions for this host (the whole set).
    pub fn set_definitions(&self, defs: Vec<ExperimentDef>) {
        let mut s = self.lock();
        s.defs = defs.into_iter().map(|d| (d.name.clone(), d)).collect();
        let State { defs, pending, total, .. } = &mut *s;
        pending.retain(|name, _| defs.contains_key(name));
        *total = pending.values().map(|p| p.units.len()).sum();
        let on = !s.defs.is_empty();
        drop(s);
        self.active.send_if_modified(|a| std::mem::replace(a, on) != on);
    }

    /// Answers one request (method, path, body): the whole API, without I/O.
    pub fn handle(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(rest) = path.strip_prefix("/v1/assign/") {
            if method != "GET" {
                return error(405, "use GET for /v1/assign/{experiment}/{unit}");
            }
            let Some((name, unit)) = rest.split_once('/') else {
                return error(400, "expected /v1/assign/{experiment}/{unit}");
            };
            let (Some(name), Some(unit)) = (percent_decode(name), percent_decode(unit)) else {
                return error(400, "bad percent-encoding in the path");
            };
            return self.assign(&name, &unit);
        }
        match (method, path) {
            ("POST", "/v1/track") => match serde_json::from_slice::<Track>(body) {
                Ok(t) => self.track(&t.experiment, &t.unit, &t.event, t.value.unwrap_or(1.0)),
                // serde_json says only "number out of range"; the one number is `value`.
                Err(e) if e.to_string().starts_with("number out of range") => {
                    error(400, format!("field \"value\": {e}; give a number from -1e12 to 1e12"))
                }
                Err(e) => error(400, format!("request body: {e}; expected {{\"experiment\":\"…\",\"unit\":\"…\",\"event\":\"…\",\"value\":1.0}}")),
            },
            (_, "/v1/track") => error(405, "use POST for /v1/track"),
            ("GET", "/v1/experiments") => {
                let s = self.lock();
                let mut list: Vec<serde_json::Value> = s
                    .defs
                    .values()
                    .map(|d| {
                        serde_json::json!({
                            "name": d.name,
                            "variants": d.variants,
                            "metric": d.metric,
                            "stopped": d.stopped.is_some(),
                        })
                    })
                    .collect();
                list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                Answer { status: 200, body: serde_json::json!({ "experiments": list }).to_string() }
            }
            (_, "/v1/experiments") => error(405, "use GET for /v1/experiments"),
            _ => error(404, format!("no such path {path:?}; see /v1/assign/{{experiment}}/{{unit}} and /v1/track")),
        }
    }

    fn check_unit(unit: &str) -> Option<Answer> {
        if unit.is_empty() || unit.len() > MAX_UNIT_LEN {
            return Some(error(400, format!("unit id must be 1 to {MAX_UNIT_LEN} bytes")));
        }
        None
    }

    fn assign(&self, name: &str, unit: &str) -> Answer {
        if let Some(bad) = Self::check_unit(unit) {
            return bad;
        }
        let mut s = self.lock();
        let Some(def) = s.defs.get(name) else {
            return error(404, format!("no experiment named {name:?} on this host"));
        };
        let v = def.assign(unit);
        let variant = def.variants.get(v as usize).cloned().unwrap_or_default();
        if def.stopped.is_none() {
            let epoch = def.epoch;
            record(&mut s, name, unit, v, epoch, true, None);
        }
        Answer { status: 200, body: serde_json::json!({ "experiment": name, "variant": variant }).to_string() }
    }

    fn track(&self, name: &str, unit: &str, event: &str, value: f64) -> Answer {
        if let Some(bad) = Self::check_unit(unit) {
            return bad;
        }
        // Bounded so that sums stay finite: an infinite sum would make the coordinator drop the unit.
        if !value.is_finite() || value.abs() > MAX_VALUE {
            return error(400, format!("field \"value\": {value:e} is out of range; give a number from -1e12 to 1e12"));
        }
        let mut s = self.lock();
        let Some(def) = s.defs.get(name) else {
            return error(404, format!("no experiment named {name:?} on this host"));
        };
        if def.metric != event {
            return error(400, format!("experiment {name} measures event {:?}, not {event:?}", def.metric));
        }
        let sum = s.pending.get(name).and_then(|p| p.units.get(&unit_hash(unit))).map_or(0.0, |u| u.value) + value;
        if sum.abs() > MAX_VALUE {
            return error(
                400,
                format!("field \"value\": unit {unit:?}'s values would sum to {sum:e} in this report, past 1e12"),
            );
        }
        let def = s.defs.get(name).expect("looked up above");
        let v = def.assign(unit);
        let variant = def.variants.get(v as usize).cloned().unwrap_or_default();
        let recorded = def.stopped.is_none();
        if recorded {
            let epoch = def.epoch;
            record(&mut s, name, unit, v, epoch, false, Some(value));
        }
        Answer {
            status: 200,
            body: serde_json::json!({ "experiment": name, "variant": variant, "recorded": recorded }).to_string(),
        }
    }

    /// A new link: the report in flight (if any) goes out again on it.
    pub fn on_link(&self) {
        if let Some((_, sent)) = &mut self.lock().inflight {
            *sent = None;
        }
    }

    /// The report to send now, if one is due: the unacknowledged one when it was not sent on this
    /// link or waited too long, else the next built one, else a new one from what waits.
    ///
    /// The sidecar's lock is held only for constant work (the application's requests wait on it):
    /// the waiting tables are taken whole and turned into reports outside it.
    pub fn report_due(&self, now: Instant) -> Option<ExperimentReport> {
        let taken = {
            let mut s = self.lock();
            if let Some(due) = s.resend_or_next(now) {
                drop(s);
                return due.map(|r| (*r).clone());
            }
            if s.pending.values().all(|p| p.units.is_empty() && p.dropped == 0) {
                return None;
            }
            s.total = 0;
            s.pending
                .iter_mut()
                .filter(|(_, p)| !p.units.is_empty() || p.dropped > 0)
                .map(|(name, p)| (name.clone(), std::mem::take(p)))
                .collect::<Vec<_>>()
        };
        let built = into_reports(taken);
        let next = {
            let mut s = self.lock();
            s.queued.extend(built);
            s.resend_or_next(now).flatten()
        };
        // Copied for the wire outside the lock.
        next.map(|r| (*r).clone())
    }

    /// The coordinator recorded the report (boot, seq). If more wait, the next report may go at
    /// once (see [`Sidecar::more`]) rather than at the next beat, so a busy host drains faster than
    /// one report a second.
    pub fn acked(&self, boot: u64, seq: u64) {
        let mut s = self.lock();
        if s.inflight.as_ref().is_some_and(|(r, _)| r.boot == boot && r.seq == seq) {
            s.inflight = None;
            if !s.queued.is_empty() || s.total >= MAX_REPORT_UNITS / 2 {
                self.more.notify_one();
            }
        }
    }

    /// Resolves when a report was acknowledged and many units wait: send the next one now.
    pub async fn more(&self) {
        self.more.notified().await
    }

    /// Units waiting to be taken into a report.
    pub fn waiting(&self) -> usize {
        self.lock().total
    }

    /// Serves HTTP while the host has experiments, until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut active = self.active.subscribe();
        loop {
            tokio::select! {
                _ = active.wait_for(|a| *a) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let listener = match TcpListener::bind(self.listen).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(listen = %self.listen, error = %e, "A/B sidecar cannot listen; retrying in 5 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            };
            info!(listen = %self.listen, "A/B sidecar listening");
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(self.clone().connection(stream));
                        }
                    }
                    _ = active.wait_for(|a| !*a) => break,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            info!("A/B sidecar off: this host serves no experiment");
        }
    }

    async fn connection(self, mut stream: TcpStream) {
        let mut buf: Vec<u8> = Vec::with_capacity(1024);
        loop {
            let (answer, keep_alive) = match tokio::time::timeout(IO_TIMEOUT, read_request(&mut stream, &mut buf)).await
            {
                Err(_) | Ok(Err(ReadError::Closed)) => return,
                Ok(Err(ReadError::Bad(answer))) => (answer, false),
                Ok(Ok(req)) => (self.handle(&req.method, &req.path, &req.body), req.keep_alive),
            };
            let head = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {}\r\n\r\n",
                answer.status,
                reason(answer.status),
                answer.body.len(),
                if keep_alive { "keep-alive" } else { "close" }
            );
            let mut out = head.into_bytes();
            out.extend_from_slice(answer.body.as_bytes());
            if tokio::time::timeout(IO_TIMEOUT, stream.write_all(&out)).await.map_or(true, |r| r.is_err())
                || !keep_alive
            {
                return;
            }
        }
    }
}

impl State {
    /// Some(the report to send) when one is in flight or built: the unacknowledged one again if
    /// it was not sent on this link or waited too long (else Some(None): wait for its ack), or
    /// the next built one, numbered now. None: nothing in flight or built.
    fn resend_or_next(&mut self, now: Instant) -> Option<Option<Arc<ExperimentReport>>> {
        if let Some((report, sent)) = &mut self.inflight {
            if sent.is_some_and(|at| now.duration_since(at) < RESEND_AFTER) {
                return Some(None);
            }
            *sent = Some(now);
            return Some(Some(report.clone()));
        }
        let mut next = self.queued.pop_front()?;
        next.boot = self.boot;
        next.seq = self.next_seq;
        self.next_seq += 1;
        let next = Arc::new(next);
        self.inflight = Some((next.clone(), Some(now)));
        Some(Some(next))
    }
}

/// Waiting tables taken from the sidecar, as reports of at most [`MAX_REPORT_UNITS`] units each
/// (numbered when sent); each table's memory goes back once it is consumed.
fn into_reports(taken: Vec<(String, Pending)>) -> Vec<ExperimentReport> {
    let mut reports: Vec<ExperimentReport> = Vec::new();
    let mut room = 0;
    for (name, p) in taken {
        if p.units.is_empty() && p.dropped == 0 {
            continue;
        }
        let mut dropped = p.dropped;
        let mut units = p.units.into_values().peekable();
        loop {
            if room == 0 {
                reports.push(ExperimentReport { boot: 0, seq: 0, experiments: Vec::new() });
                room = MAX_REPORT_UNITS;
            }
            let chunk: Vec<UnitSeen> = units.by_ref().take(room).collect();
            room -= chunk.len();
            let report = reports.last_mut().expect("pushed above");
            report.experiments.push(ExperimentUnits {
                name: name.clone(),
                units: chunk,
                dropped: std::mem::take(&mut dropped),
            });
            if units.peek().is_none() {
                break;
            }
        }
    }
    reports
}

/// Adds what was seen of `unit` to the pending report, within the caps.
fn record(s: &mut State, name: &str, unit: &str, variant: u8, epoch: u32, exposed: bool, value: Option<f64>) {
    let key = unit_hash(unit);
    let total = s.total;
    if !s.pending.contains_key(name) {
        s.pending.insert(name.to_string(), Pending::default());
    }
    let p = s.pending.get_mut(name).expect("inserted above");
    let is_new = !p.units.contains_key(&key);
    if is_new && (p.units.len() >= MAX_UNITS_PER_EXPERIMENT || total >= MAX_UNITS) {
        p.dropped += 1;
        return;
    }
    let seen = p.units.entry(key).or_insert(UnitSeen {
        unit: key,
        variant,
        exposed: false,
        converted: false,
        value: 0.0,
        epoch,
    });
    seen.exposed |= exposed;
    if let Some(v) = value {
        seen.converted = true;
        seen.value += v;
    }
    if is_new {
        s.total += 1;
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    keep_alive: bool,
}

enum ReadError {
    /// The peer closed or the socket failed: nothing to answer.
    Closed,
    /// Answer this, then close.
    Bad(Answer),
}

/// Reads one request from `stream`, `buf` holding bytes already read (pipelining).
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Request, ReadError> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Bad(error(431, format!("request head over {MAX_HEAD} bytes"))));
        }
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::Bad(error(431, format!("request head over {MAX_HEAD} bytes"))));
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(error(400, "malformed request line")));
    };
    if !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return Err(ReadError::Bad(error(400, "malformed request line")));
    }
    let mut length = 0usize;
    let mut keep_alive = version == "HTTP/1.1";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(error(400, "malformed header line")));
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => {
                length = value.parse().map_err(|_| ReadError::Bad(error(400, "bad content-length")))?;
            }
            "transfer-encoding" => return Err(ReadError::Bad(error(400, "send a content-length, not chunks"))),
            "connection" if value.eq_ignore_ascii_case("close") => keep_alive = false,
            "connection" if value.eq_ignore_ascii_case("keep-alive") => keep_alive = true,
            _ => {}
        }
    }
    if length > MAX_BODY {
        return Err(ReadError::Bad(error(413, format!("request body over {MAX_BODY} bytes"))));
    }
    let (method, path) = (method.to_string(), path.to_string());
    let start = head_end + 4;
    while buf.len() < start + length {
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[start..start + length].to_vec();
    buf.drain(..start + length);
    Ok(Request { method, path, body, keep_alive })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// Decodes `%XX` escapes; None if one is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fifty_shared::experiment::initial_slots;

    fn sidecar() -> Sidecar {
        let s = Sidecar::new("127.0.0.1:0".parse().unwrap());
        s.set_definitions(vec![ExperimentDef {
            name: "checkout".into(),
            salt: "salt".into(),
            variants: vec!["control".into(), "new_checkout".into()],
            slots: initial_slots(&[50, 50]).into(),
            metric: "conversion".into(),
            stopped: None,
            epoch: 0,
        }]);
        s
    }

    fn json(a: &Answer) -> serde_json::Value {
        serde_json::from_str(&a.body).unwrap()
    }

    #[test]
    fn assign_answers_the_variant_and_errors_are_clear() {
        let s = sidecar();
        let a = s.handle("GET", "/v1/assign/checkout/user-1", b"");
        assert_eq!(a.status, 200);
        let v = json(&a);
        assert_eq!(v["experiment"], "checkout");
        assert!(v["variant"] == "control" || v["variant"] == "new_checkout");
        assert_eq!(s.handle("GET", "/v1/assign/checkout/user-1", b""), a, "same unit, same variant");
        assert_eq!(s.handle("GET", "/v1/assign/nope/user-1", b"").status, 404);
        assert!(json(&s.handle("GET", "/v1/assign/nope/u", b""))["error"].as_str().unwrap().contains("nope"));
        assert_eq!(s.handle("POST", "/v1/assign/checkout/u", b"").status, 405);
        assert_eq!(s.handle("GET", "/v1/assign/checkout", b"").status, 400);
        assert_eq!(s.handle("GET", "/v1/track", b"").status, 405);
        assert_eq!(s.handle("POST", "/v1/track", b"{not json").status, 400);
        let wrong_event = br#"{"experiment":"checkout","unit":"u","event":"click"}"#;
        assert!(json(&s.handle("POST", "/v1/track", wrong_event))["error"].as_str().unwrap().contains("conversion"));
        assert_eq!(s.handle("GET", "/elsewhere", b"").status, 404);
        assert_eq!(s.handle("GET", "/v1/assign/checkout/a%2Fb", b"").status, 200);
        assert_eq!(s.handle("GET", "/v1/assign/checkout/a%zz", b"").status, 400);
    }

    #[test]
    fn reports_carry_each_unit_once_and_wait_for_their_ack() {
        let s = sidecar();
        s.handle("GET", "/v1/assign/checkout/u1", b"");
        s.handle("GET", "/v1/assign/checkout/u1", b"");
        let track = br#"{"experiment":"checkout","unit":"u1","event":"conversion","value":2.5}"#;
        assert_eq!(s.handle("POST", "/v1/track", track).status, 200);
        s.handle("GET", "/v1/assign/checkout/u2", b"");
        let now = Instant::now();
        let r = s.report_due(now).unwrap();
        assert_eq!(r.seq, 1);
        let units = &r.experiments[0].units;
        assert_eq!(units.len(), 2);
        let u1 = units.iter().find(|u| u.unit == unit_hash("u1")).unwrap();
        assert!(u1.exposed && u1.converted && u1.value == 2.5);
        // Unacknowledged: nothing new until it is resent (new link, or after a while).
        s.handle("GET", "/v1/assign/checkout/u3", b"");
        assert_eq!(s.report_due(now), None);
        s.on_link();
        assert_eq!(s.report_due(now).unwrap().seq, 1);
        assert_eq!(s.report_due(now + RESEND_AFTER).unwrap().seq, 1);
        s.acked(r.boot, 1);
        let r2 = s.report_due(now).unwrap();
        assert_eq!((r2.seq, r2.experiments[0].units.len()), (2, 1));
        s.acked(r2.boot, 2);
        assert_eq!(s.report_due(now), None);
    }

    #[test]
    fn values_that_could_make_a_sum_infinite_are_refused_naming_the_field() {
        let s = sidecar();
        let track = |value: &str| {
            let body = format!(r#"{{"experiment":"checkout","unit":"u1","event":"conversion","value":{value}}}"#);
            s.handle("POST", "/v1/track", body.as_bytes())
        };
        for bad in ["1e308", "-1e308", "1e13", "1e400"] {
            let a = track(bad);
            assert_eq!(a.status, 400, "{bad}");
            assert!(json(&a)["error"].as_str().unwrap().contains("field \"value\""), "{bad}: {}", a.body);
        }
        assert_eq!(s.waiting(), 0, "nothing was recorded");
        assert_eq!(track("1e12").status, 200);
        assert_eq!(track("-1e12").status, 200, "negative amounts (refunds) are fine");
        // One unit's sum in a report is bounded too.
        assert_eq!(track("1e12").status, 200);
        let a = track("1e12");
        assert_eq!(a.status, 400);
        assert!(json(&a)["error"].as_str().unwrap().contains("would sum to"), "{}", a.body);
        let r = s.report_due(Instant::now()).unwrap();
        let u1 = &r.experiments[0].units[0];
        assert!(u1.value == 1e12 && u1.converted, "{u1:?}");
        assert_eq!(r.experiments[0].dropped, 0);
    }

    #[test]
    fn memory_is_capped_and_drops_are_counted() {
        let s = sidecar();
        for i in 0..MAX_UNITS_PER_EXPERIMENT + 10 {
            s.handle("GET", &format!("/v1/assign/checkout/u{i}"), b"");
        }
        assert_eq!(s.waiting(), MAX_UNITS_PER_EXPERIMENT);
        let now = Instant::now();
        let r = s.report_due(now).unwrap();
        assert_eq!(r.experiments[0].units.len(), MAX_REPORT_UNITS);
        assert_eq!(r.experiments[0].dropped, 10);
        // Everything waiting was taken at once: the rest is the next report, sent after the ack.
        assert_eq!(s.waiting(), 0);
        s.handle("GET", "/v1/assign/checkout/late", b"");
        assert_eq!(s.report_due(now), None, "one report in flight at a time");
        s.acked(r.boot, r.seq);
        let r2 = s.report_due(now).unwrap();
        assert_eq!(
            (r2.seq, r2.experiments[0].units.len(), r2.experiments[0].dropped),
            (r.seq + 1, MAX_UNITS_PER_EXPERIMENT - MAX_REPORT_UNITS, 0)
        );
        s.acked(r2.boot, r2.seq);
        let r3 = s.report_due(now).unwrap();
        assert_eq!(r3.experiments[0].units.len(), 1, "the unit that came meanwhile");
    }

    #[test]
    fn the_sidecar_thread_gets_the_short_slice_it_asks_for() {
        // On a thread of its own, as the agent does: the slice is per thread.
        std::thread::spawn(|| {
            let get = || {
                let mut attr = SchedAttr::default();
                let size = std::mem::size_of::<SchedAttr>() as u32;
                // SAFETY: as in `request_short_slice`.
                let r = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, size, 0) };
                assert_eq!(r, 0);
                attr
            };
            let before = get();
            request_short_slice(SLICE).expect("sched_setattr on this kernel");
            let after = get();
            assert_eq!(after.runtime, SLICE.as_nanos() as u64, "the kernel keeps the slice asked for");
            assert_eq!((after.policy, after.nice), (before.policy, before.nice), "policy and nice kept");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_listener_is_on_only_while_experiments_are_served() {
        let s = sidecar();
        assert!(*s.active.borrow());
        s.set_definitions(vec![]);
        assert!(!*s.active.borrow());
        assert_eq!(s.handle("GET", "/v1/assign/checkout/u", b"").status, 404);
    }

    #[tokio::test]
    async fn it_serves_http_with_keep_alive_and_caps() {
        let s = sidecar();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = s.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(server.clone().connection(stream));
            }
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            c.write_all(b"GET /v1/assign/checkout/u9 HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let mut buf = vec![0u8; 512];
            let n = c.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
            assert!(text.contains("\"variant\""), "{text}");
        }
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /v1/track HTTP/1.1\r\ncontent-length: 99999\r\n\r\n").await.unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        let mut c = TcpStream::connect(addr).await.unwrap();
        let huge = format!("GET /v1/assign/checkout/u HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        c.write_all(huge.as_bytes()).await.unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    }
}
