//! The web dashboard: server-rendered HTML pages under `/ui/`, on the API's port and TLS.
//!
//! # The contract for adding pages
//!
//! **A page** is a row of [`pages`]: a [`Page`] with its path (axum syntax, `{name}` for a
//! parameter), the `<title>`/`<h1>`, the nav label if it belongs in the top navigation, and a
//! plain function `render(&Coordinator, &PageCtx, &Params) -> Result<Markup, UiError>` that reads
//! the same `Coordinator` methods the JSON API's handlers call (`c.hosts()`, `c.status()`,
//! `c.rollout_view(..)`, ...: one source of truth) and returns the body. The router adds the
//! frame ([`layout::page`]), the session check, the leader check and live updates itself:
//! a `render` function never sees HTTP. Put a group of pages in its own file (`ui/commits.rs`
//! with `pub(super) fn pages() -> Vec<Page>`) and add one line to [`pages`].
//!
//! **An admin action** is a row of [`routes`]: `UiRoute::action(path, handler)` — a POST route
//! that only an admin session with the right CSRF token reaches (the guard checks both before the
//! handler runs and answers 403 otherwise), and that runs on the leader (a follower forwards it).
//! The handler is an ordinary axum handler returning `Result<Done, UiError>`:
//!
//! ```ignore
//! async fn close_gate(
//!     State(ui): State<Arc<Ui>>,
//!     ctx: PageCtx,                      // who is acting; `ctx.by` goes into records
//!     Path(repo): Path<String>,
//!     Form(f): Form<GateForm>,           // the form's own fields; `csrf` is checked already
//! ) -> Result<Done, UiError> {
//!     ui.c.set_gate(&repo, change, true, &ctx.by).await?;   // the API's method
//!     Ok(Done::to("/ui/gates"))          // 303 See Other back to a page
//! }
//! ```
//!
//! and its button on a page is [`layout::form`] (hidden fields) or [`layout::form_with`]
//! (inputs of its own), which add the CSRF field and render nothing for a read session.
//!
//! **Live updates**: every page of the frame loads `/ui/static/live.js`, which opens
//! `/ui/events?page=<the page's path and query>` (server-sent events). The server re-renders that
//! page's `<main>` fragment ([`layout::fragment`]) every [`LIVE_INTERVAL`] and sends it when it
//! changed; the script swaps it in (unless the user is typing in a form inside it). A page does
//! nothing to take part; without JavaScript it is a normal page. At most [`MAX_STREAMS`] streams
//! run at once per coordinator (more get 503 and the page just does not update).
//!
//! # Sessions, roles, CSRF
//! See `session`. Roles are the API's: `read` sees every page and no action; `admin` may act;
//! `ci` tokens may not sign in. A request without a live session is sent to `/ui/login` (GET) or
//! refused 403 (POST); a POST from a read session, or without the session's CSRF token, gets
//! 403. Requests with `Authorization: Bearer` instead of a cookie (how a follower forwards, or a
//! script) are checked like the API's and need no CSRF token: a browser never adds that header by
//! itself. Every answer carries a strict Content Security Policy ([`SECURITY_HEADERS`]).
//!
//! # Any coordinator
//! Pages and actions show and change what the API would: the leader confirms its leadership
//! (ReadIndex) before rendering; a follower forwards the request to the leader with the
//! session's token as a bearer token (and its CSRF token in `x-fifty-ui-csrf`, so the forms the
//! leader renders carry it), and relays the answer. Sign-in, sign-out, static files and the
//! event streams are served by the coordinator asked (a stream on a follower forwards each
//! re-render).

mod alerts;
pub mod chart;
mod ci;
pub mod evidence;
mod experiments;
mod incidents;
pub mod layout;
mod pages;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Form, Router};
use fifty_shared::ids::Role;
use maud::{html, Markup};

use crate::client::Client;
use crate::consensus::ConsensusError;
use crate::coordinator::{Coordinator, OpError};

pub use layout::{form, form_with};
pub use session::Sessions;

/// How often a live page is re-rendered.
pub const LIVE_INTERVAL: Duration = Duration::from_millis(1000);
/// Event streams one coordinator serves at once.
pub const MAX_STREAMS: usize = 64;
/// The largest form body the dashboard reads.
const MAX_FORM: usize = 64 * 1024;
/// Marks a request a follower forwarded (the API's forwarding uses the same header).
const FORWARDED: &str = "x-fifty-forwarded-by";
/// The session's CSRF token, sent along with a forwarded request so the leader's forms carry it.
const CSRF_HEADER: &str = "x-fifty-ui-csrf";
/// Asks for the `<main>` fragment of a page only (what an event stream sends).
const FRAGMENT_HEADER: &str = "x-fifty-fragment";

/// Headers on every dashboard answer: nothing from elsewhere runs, nothing frames the pages, no
/// page is cached (they hold live state and a CSRF token).
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// Who is looking at a page: what the layout and the pages need to know about the session.
#[derive(Clone, Debug)]
pub struct PageCtx {
    /// An admin session: action buttons are shown (and accepted).
    pub admin: bool,
    /// The session's CSRF token, which every POST form carries (the form helpers add it).
    pub csrf: String,
    /// The token as people know it: `token <accessor> (<description>)`.
    pub who: String,
    /// The same, for records of who did something (gate closed by, rollout paused by): what the
    /// API's `Caller` records.
    pub by: String,
    /// The coordinator that rendered the page (the leader), 16 hex digits.
    pub node_id: String,
    /// The page's own path and query, which live updates re-render.
    pub live_path: String,
}

impl PageCtx {
    /// `admin` or `read`.
    pub fn role_name(&self) -> &'static str {
        if self.admin {
            "admin"
        } else {
            "read"
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PageCtx {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, UiError> {
        parts
            .extensions
            .get::<PageCtx>()
            .cloned()
            .ok_or_else(|| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, "this route has no session guard"))
    }
}

/// A dashboard failure: an HTML page saying what went wrong, with its status.
#[derive(Debug)]
pub struct UiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the user.
    pub message: String,
}

impl UiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = layout::bare(
            title,
            html! { p.error role="alert" { (self.message) } p { a href="/ui/" { "Back to the overview" } } },
        );
        html_response(self.status, body.into_string())
    }
}

impl From<OpError> for UiError {
    fn from(e: OpError) -> Self {
        let api: crate::api::ApiError = e.into();
        UiError::new(api.0, api.1)
    }
}

impl From<crate::store::StoreError> for UiError {
    fn from(e: crate::store::StoreError) -> Self {
        let api: crate::api::ApiError = e.into();
        UiError::new(api.0, api.1)
    }
}

/// An action's success: 303 See Other to a dashboard page.
pub struct Done(String);

impl Done {
    /// Go to `path`, which must be a dashboard path (`/ui/...`).
    pub fn to(path: impl Into<String>) -> Self {
        Done(path.into())
    }
}

impl IntoResponse for Done {
    fn into_response(self) -> Response {
        see_other(&self.0)
    }
}

/// 303 to `path` if it is a dashboard path, else to the overview (never elsewhere: no open
/// redirect). The body repeats the path, which is how a follower relays the leader's redirect.
fn see_other(path: &str) -> Response {
    let path = if safe_next(path) { path } else { "/ui/" };
    let mut resp = Response::new(Body::from(path.to_string()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(path) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn safe_next(path: &str) -> bool {
    path.starts_with("/ui/") && !path.starts_with("//") && !path.contains('\\') && !path.chars().any(char::is_control)
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

/// A page's parameters: the path's `{name}` segments and the query string.
#[derive(Clone, Debug, Default)]
pub struct Params {
    /// Path parameters by name.
    pub path: HashMap<String, String>,
    /// Query parameters, in order.
    pub query: Vec<(String, String)>,
}

impl Params {
    /// A path parameter, or the first query parameter of that name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.path
            .get(name)
            .map(String::as_str)
            .or_else(|| self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()))
    }
}

/// The function that renders a page's body.
pub type Render = fn(&Coordinator, &PageCtx, &Params) -> Result<Markup, UiError>;

/// One dashboard page (a GET route); see the module docs.
#[derive(Clone, Copy)]
pub struct Page {
    /// Its path, axum syntax.
    pub path: &'static str,
    /// Its title.
    pub title: &'static str,
    /// Its label in the top navigation, if it has one.
    pub nav: Option<&'static str>,
    /// The nav label to mark as current (its own, or its parent's for a detail page).
    pub section: &'static str,
    /// Renders its body.
    pub render: Render,
}

/// Every page. Add a group with one line.
pub fn pages() -> Vec<Page> {
    let mut all = pages::pages();
    all.extend(ci::pages());
    all.extend(incidents::pages());
    all.extend(alerts::pages());
    all.extend(experiments::pages());
    all.sort_by_key(|p| nav_order(p.nav));
    all
}

/// Where a nav label goes in the top navigation (unknown labels last, in table order).
fn nav_order(nav: Option<&str>) -> usize {
    const ORDER: [&str; 9] =
        ["Overview", "Hosts", "Commits", "Gates", "Rollouts", "Incidents", "Alerts", "Experiments", "Tests"];
    nav.and_then(|n| ORDER.iter().position(|o| *o == n)).unwrap_or(ORDER.len())
}

/// The top navigation: (label, path) of each page that has a nav label.
pub fn nav() -> Vec<(&'static str, &'static str)> {
    pages().into_iter().filter_map(|p| p.nav.map(|n| (n, p.path))).collect()
}

/// Who may use a dashboard route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UiAccess {
    /// Anyone: sign-in, static files.
    Public,
    /// A session with this role, served by the coordinator asked (sign-out, event streams).
    Here(Role),
    /// A session with this role, served by the leader (pages and actions).
    Leader(Role),
}

/// One dashboard route: method, path, access and handler. The dashboard's router is built from
/// [`routes`] alone, like the API's.
pub struct UiRoute {
    /// The method.
    pub method: Method,
    /// The path.
    pub path: &'static str,
    /// Who may call it.
    pub access: UiAccess,
    handler: MethodRouter<Arc<Ui>>,
}

impl UiRoute {
    fn new<H, T>(method: Method, path: &'static str, access: UiAccess, handler: H) -> Self
    where
        H: axum::handler::Handler<T, Arc<Ui>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("standard methods");
        UiRoute { method, path, access, handler: axum::routing::on(filter, handler) }
    }

    /// An admin action: POST, admin session with its CSRF token, run on the leader.
    pub fn action<H, T>(path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, Arc<Ui>>,
        T: 'static,
    {
        Self::new(Method::POST, path, UiAccess::Leader(Role::Admin), handler)
    }
}

/// Every dashboard route.
pub fn routes() -> Vec<UiRoute> {
    use UiAccess::*;
    let mut table = vec![
        UiRoute::new(Method::GET, "/ui", Public, || async { see_other("/ui/") }),
        UiRoute::new(Method::GET, "/ui/login", Public, login_page),
        UiRoute::new(Method::POST, "/ui/login", Public, login),
        UiRoute::new(Method::POST, "/ui/logout", Here(Role::Read), logout),
        UiRoute::new(Method::GET, "/ui/static/style.css", Public, || async {
            asset("text/css; charset=utf-8", layout::STYLE_CSS)
        }),
        UiRoute::new(Method::GET, "/ui/static/live.js", Public, || async {
            asset("text/javascript; charset=utf-8", layout::LIVE_JS)
        }),
        UiRoute::new(Method::GET, "/ui/events", Here(Role::Read), events),
    ];
    for p in pages() {
        table.push(UiRoute::new(Method::GET, p.path, Leader(Role::Read), serve_page));
    }
    table.extend(pages::routes());
    table.extend(ci::routes());
    table.extend(incidents::routes());
    table.extend(alerts::routes());
    table
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The dashboard's shared state.
pub struct Ui {
    /// The coordinator.
    pub c: Arc<Coordinator>,
    /// Signed-in browsers.
    pub sessions: Sessions,
    streams: Arc<tokio::sync::Semaphore>,
    /// Idle connections to the leader, for forwarding.
    idle: Mutex<Vec<(String, Client)>>,
}

impl Ui {
    /// The dashboard of `c`.
    pub fn new(c: Arc<Coordinator>) -> Self {
        Self {
            c,
            sessions: Sessions::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            idle: Mutex::default(),
        }
    }
}

/// The dashboard's router: [`routes`], each behind its guard, with [`SECURITY_HEADERS`].
pub fn router(c: Arc<Coordinator>) -> Router {
    let ui = Arc::new(Ui::new(c));
    let mut router = Router::new();
    for r in routes() {
        let guard = Guard { ui: ui.clone(), access: r.access };
        router = router.route(r.path, r.handler.route_layer(axum::middleware::from_fn_with_state(guard, guard_route)));
    }
    router.layer(axum::middleware::from_fn(security_headers)).with_state(ui)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    for (k, v) in SECURITY_HEADERS {
        resp.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    resp
}

#[derive(Clone)]
struct Guard {
    ui: Arc<Ui>,
    access: UiAccess,
}

/// How a request proved who it is.
#[derive(Clone)]
enum Credential {
    /// A session cookie (its id).
    Session(String),
    /// A bearer token.
    Bearer,
}

/// Who is asking, once checked.
#[derive(Clone)]
struct Asker {
    ctx: PageCtx,
    role: Role,
    /// The token's secret: what a follower sends the leader.
    secret: String,
    credential: Credential,
}

/// Checks a request's session (or bearer token): `Ok(None)` when it has none that is valid now.
fn identify(ui: &Ui, headers: &HeaderMap, live_path: &str) -> Result<Option<Asker>, UiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let (secret, csrf, credential) = match bearer {
        Some(secret) => {
            let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            (secret, csrf, Credential::Bearer)
        }
        None => {
            let id = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()).and_then(session::cookie_value);
            let Some(id) = id else { return Ok(None) };
            let Some(s) = ui.sessions.get(id, Instant::now()) else { return Ok(None) };
            (s.secret, s.csrf, Credential::Session(id.to_string()))
        }
    };
    let Some(token) = ui.c.authenticate(&secret)? else {
        // Revoked or expired since sign-in: the session ends with its token.
        if let Credential::Session(id) = &credential {
            ui.sessions.remove(id);
        }
        return Ok(None);
    };
    let who = match token.description.as_str() {
        "" => format!("token {}", token.accessor),
        d => format!("token {} ({d})", token.accessor),
    };
    let ctx = PageCtx {
        admin: token.role == Role::Admin,
        csrf,
        by: who.clone(),
        who,
        node_id: format!("{:016x}", ui.c.consensus.id()),
        live_path: live_path.to_string(),
    };
    Ok(Some(Asker { ctx, role: token.role, secret, credential }))
}

/// The route guard: session, role and CSRF checks, then the leader check (or forwarding).
async fn guard_route(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let needed = match g.access {
        UiAccess::Public => return next.run(req).await,
        UiAccess::Here(r) | UiAccess::Leader(r) => r,
    };
    let live_path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/ui/").to_string();
    let asker = match identify(&g.ui, req.headers(), &live_path) {
        Ok(Some(a)) => a,
        Ok(None) if req.method() == Method::GET => {
            return see_other(&format!("/ui/login?next={}", urlencode(&live_path)));
        }
        Ok(None) => return UiError::new(StatusCode::FORBIDDEN, "not signed in: sign in at /ui/login").into_response(),
        Err(e) => return e.into_response(),
    };
    if asker.role == Role::Ci {
        return UiError::new(StatusCode::FORBIDDEN, "a ci token may not use the dashboard; use a read or admin token")
            .into_response();
    }
    if !asker.role.allows(needed) {
        return UiError::new(
            StatusCode::FORBIDDEN,
            format!("a {} session may not do this; it needs {needed}", asker.role),
        )
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_FORM).await {
        Ok(b) => b,
        Err(_) => return UiError::new(StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response(),
    };
    // A cookie comes with every request the browser makes, whoever made the page that sent it:
    // a POST must also prove it came from one of this session's pages.
    if parts.method != Method::GET && matches!(asker.credential, Credential::Session(_)) {
        let sent = form_fields(&String::from_utf8_lossy(&body)).into_iter().find(|(k, _)| k == "csrf").map(|(_, v)| v);
        match sent {
            Some(t) if session::same_secret(&t, &asker.ctx.csrf) => {}
            Some(_) => {
                return UiError::new(StatusCode::FORBIDDEN, "wrong CSRF token: reload the page and try again")
                    .into_response()
            }
            None => {
                return UiError::new(StatusCode::FORBIDDEN, "missing CSRF token: use the dashboard's own forms")
                    .into_response()
            }
        }
    }
    let mut req = Request::from_parts(parts, Body::from(body.clone()));
    req.extensions_mut().insert(asker.ctx.clone());
    req.extensions_mut().insert(asker.clone());
    if matches!(g.access, UiAccess::Here(_)) {
        return next.run(req).await;
    }
    match on_leader(&g.ui, req.method() == Method::GET, req.headers().contains_key(FORWARDED)).await {
        Ok(None) => next.run(req).await,
        Ok(Some(leader)) => {
            let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/ui/").to_string();
            let fragment = req.headers().contains_key(FRAGMENT_HEADER);
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            forward(&g.ui, &leader, req.method().clone(), &path, &asker, fragment, content_type, body).await
        }
        Err(e) => e.into_response(),
    }
}

/// `Ok(None)` to serve here (this node leads and, for a read, confirmed it); `Ok(Some(addr))` to
/// forward to the leader's API at `addr`.
async fn on_leader(ui: &Ui, read: bool, forwarded: bool) -> Result<Option<String>, UiError> {
    let here = crate::api::forward::leader_here(&ui.c, read).await;
    match here {
        Ok(()) => Ok(None),
        Err(ConsensusError::NotLeader { leader: Some(leader) }) if !forwarded => Ok(Some(leader.http_addr)),
        Err(e) => Err(UiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; reload in a moment"))),
    }
}

/// Sends a dashboard request to the leader with the asker's token and relays the answer.
#[allow(clippy::too_many_arguments)]
async fn forward(
    ui: &Ui,
    leader: &str,
    method: Method,
    path: &str,
    asker: &Asker,
    fragment: bool,
    content_type: Option<HeaderValue>,
    body: Bytes,
) -> Response {
    let mut headers = Vec::new();
    let mut add = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.push((header::HeaderName::from_static(name), v));
        }
    };
    add("authorization", &format!("Bearer {}", asker.secret));
    add(CSRF_HEADER, &asker.ctx.csrf);
    add(FORWARDED, &format!("{:016x}", ui.c.consensus.id()));
    if fragment {
        add(FRAGMENT_HEADER, "1");
    }
    if let Some(ct) = content_type {
        headers.push((header::CONTENT_TYPE, ct));
    }
    let client = {
        let mut idle = ui.idle.lock().expect("ui pool lock");
        match idle.iter().position(|(a, _)| a == leader) {
            Some(i) => Ok(idle.swap_remove(i).1),
            None => {
                Client::to_coordinator(leader, ui.c.ca_pem()).map(|c| c.with_connect_timeout(Duration::from_secs(3)))
            }
        }
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => return UiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")).into_response(),
    };
    let timeout = ui.c.config.api.forward_timeout;
    let answer = tokio::time::timeout(timeout, client.forward(method, path, &headers, body)).await;
    let (status, content_type, bytes) = match answer {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            return UiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("forwarding to the leader at {leader} failed: {e:#}; reload in a moment"),
            )
            .into_response()
        }
        Err(_) => {
            return UiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the leader at {leader} did not answer within {timeout:?}; reload in a moment"),
            )
            .into_response()
        }
    };
    {
        let mut idle = ui.idle.lock().expect("ui pool lock");
        if idle.len() < 8 {
            idle.push((leader.to_string(), client));
        }
    }
    if status == StatusCode::SEE_OTHER {
        return see_other(String::from_utf8_lossy(&bytes).trim());
    }
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text (a form body or a query string); a bad
/// escape is kept as written.
pub fn form_fields(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Matches a concrete path against a page's pattern: the path parameters, or `None`.
fn match_path(pattern: &str, path: &str) -> Option<HashMap<String, String>> {
    let pat: Vec<&str> = pattern.trim_end_matches('/').split('/').collect();
    let got: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if pat.len() != got.len() {
        return None;
    }
    let mut params = HashMap::new();
    for (p, g) in pat.iter().zip(&got) {
        match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if !g.is_empty() => {
                params.insert(name.to_string(), percent_decode(g));
            }
            Some(_) => return None,
            None if p == g => {}
            None => return None,
        }
    }
    Some(params)
}

/// Renders the page at `path_and_query` here: (page, its `<main>` fragment or whole page).
fn render_here(c: &Coordinator, ctx: &PageCtx, path_and_query: &str, whole: bool) -> Result<String, UiError> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let (page, params) = pages()
        .into_iter()
        .find_map(|p| match_path(p.path, path).map(|params| (p, params)))
        .ok_or_else(|| UiError::new(StatusCode::NOT_FOUND, format!("no dashboard page at {path}")))?;
    let query = form_fields(query);
    let params = Params { path: params, query };
    let body = (page.render)(c, ctx, &params)?;
    Ok(if whole {
        layout::page(ctx, page.title, page.section, body).into_string()
    } else {
        layout::fragment(page.title, body).into_string()
    })
}

/// Every page's GET route.
async fn serve_page(State(ui): State<Arc<Ui>>, ctx: PageCtx, headers: HeaderMap) -> Response {
    let whole = !headers.contains_key(FRAGMENT_HEADER);
    match render_here(&ui.c, &ctx, &ctx.live_path, whole) {
        Ok(html) => html_response(StatusCode::OK, html),
        Err(e) => e.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(State(ui): State<Arc<Ui>>, Query(q): Query<LoginQuery>, headers: HeaderMap) -> Response {
    if let Ok(Some(_)) = identify(&ui, &headers, "/ui/") {
        return see_other(q.next.as_deref().unwrap_or("/ui/"));
    }
    login_form(StatusCode::OK, q.next.as_deref(), None)
}

fn login_form(status: StatusCode, next: Option<&str>, error: Option<&str>) -> Response {
    let next = next.filter(|n| safe_next(n)).unwrap_or("/ui/");
    let body = html! {
        @if let Some(e) = error {
            p.error role="alert" { (e) }
        }
        form.login method="post" action="/ui/login" {
            input type="hidden" name="next" value=(next);
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="off" required autofocus;
            p.hint { "A read token sees everything; an admin token may also act. CI tokens may not sign in. "
                "Your session lasts 12 hours on this coordinator, or until you sign out or the token is revoked." }
            button type="submit" { "Sign in" }
        }
    };
    html_response(status, layout::bare("Sign in", body).into_string())
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(ui): State<Arc<Ui>>,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return login_form(StatusCode::BAD_REQUEST, None, Some("the form must have a field `token`"));
    };
    let secret = f.token.trim();
    let refused = |status, e: &dyn std::fmt::Display| login_form(status, f.next.as_deref(), Some(&e.to_string()));
    let token = match ui.c.authenticate(secret) {
        Ok(Some(t)) => t,
        Ok(None) => return refused(StatusCode::UNAUTHORIZED, &session::SignInError::Invalid),
        Err(e) => return UiError::from(e).into_response(),
    };
    match ui.sessions.create(secret, &token.accessor, token.role, Instant::now()) {
        Ok(id) => {
            let mut resp = see_other(f.next.as_deref().unwrap_or("/ui/"));
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e @ session::SignInError::Full) => refused(StatusCode::SERVICE_UNAVAILABLE, &e),
        Err(e) => refused(StatusCode::FORBIDDEN, &e),
    }
}

async fn logout(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    if let Some(Asker { credential: Credential::Session(id), .. }) = req.extensions().get::<Asker>() {
        ui.sessions.remove(id);
    }
    let mut resp = see_other("/ui/login");
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&session::clear_cookie()).expect("ascii"));
    resp
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    page: String,
}

/// A response body fed from a channel: the event stream.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl axum::body::HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// One server-sent event carrying `html` as the `main` event.
fn sse_event(html: &str) -> Bytes {
    let mut out = String::from("event: main\n");
    for line in html.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// A place for one more event stream, or 503 when [`MAX_STREAMS`] run already.
fn stream_permit(streams: &Arc<tokio::sync::Semaphore>) -> Result<tokio::sync::OwnedSemaphorePermit, UiError> {
    streams.clone().try_acquire_owned().map_err(|_| {
        UiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} live pages are open on this coordinator; this one will not update by itself"),
        )
    })
}

/// `/ui/events?page=PATH`: the page's `<main>` fragment each time it changes (checked every
/// [`LIVE_INTERVAL`]), until the browser goes away or the session ends.
async fn events(State(ui): State<Arc<Ui>>, Query(q): Query<EventsQuery>, req: Request) -> Response {
    let Some(asker) = req.extensions().get::<Asker>().cloned() else {
        return UiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no session").into_response();
    };
    if !safe_next(&q.page) && q.page != "/ui/" {
        return UiError::new(StatusCode::BAD_REQUEST, "page must be a dashboard path").into_response();
    }
    let permit = match stream_permit(&ui.streams) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let ui2 = ui.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut last = String::new();
        let mut headers = HeaderMap::new();
        match &asker.credential {
            Credential::Session(id) => {
                if let Ok(v) = HeaderValue::from_str(&format!("{}={id}", session::COOKIE)) {
                    headers.insert(header::COOKIE, v);
                }
            }
            Credential::Bearer => {
                if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", asker.secret)) {
                    headers.insert(header::AUTHORIZATION, v);
                }
            }
        }
        // Tell the browser how long to wait before reconnecting, and that the stream is open.
        if tx.send(Bytes::from_static(b"retry: 2000\n: live\n\n")).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(LIVE_INTERVAL);
        let mut quiet = 0u32;
        loop {
            tick.tick().await;
            // The session may have ended (signed out, token revoked) since the stream began.
            let Ok(Some(now)) = identify(&ui2, &headers, &q.page) else { break };
            let html = match on_leader(&ui2, true, false).await {
                Ok(None) => render_here(&ui2.c, &now.ctx, &q.page, false).ok(),
                Ok(Some(leader)) => {
                    let resp = forward(&ui2, &leader, Method::GET, &q.page, &now, true, None, Bytes::new()).await;
                    if resp.status() == StatusCode::OK {
                        axum::body::to_bytes(resp.into_body(), 4 << 20)
                            .await
                            .ok()
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                    } else {
                        None
                    }
                }
                Err(_) => None,
            };
            let msg = match html {
                Some(h) if h != last => {
                    let e = sse_event(&h);
                    last = h;
                    quiet = 0;
                    e
                }
                _ => {
                    quiet += 1;
                    // A comment now and then, so a browser that went away is noticed.
                    if quiet % 15 != 0 {
                        continue;
                    }
                    Bytes::from_static(b": still live\n\n")
                }
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::new(Body::new(ChannelBody(rx)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_page_patterns() {
        assert_eq!(match_path("/ui/hosts", "/ui/hosts"), Some(HashMap::new()));
        let m = match_path("/ui/commits/{sha}", "/ui/commits/ab%20c").unwrap();
        assert_eq!(m["sha"], "ab c");
        assert_eq!(match_path("/ui/commits/{sha}", "/ui/commits/"), None);
        assert_eq!(match_path("/ui/hosts", "/ui/gates"), None);
        assert!(match_path("/ui/", "/ui/").is_some());
    }

    #[test]
    fn redirects_stay_on_the_dashboard() {
        for bad in ["https://evil.example/", "//evil.example/ui/", "/v1/tokens", "/ui/\\evil", "/ui/\r\nx: y"] {
            let r = see_other(bad);
            assert_eq!(r.headers()[header::LOCATION], "/ui/", "{bad:?}");
        }
        assert_eq!(see_other("/ui/hosts?label=a").headers()[header::LOCATION], "/ui/hosts?label=a");
        assert_eq!(urlencode("/ui/hosts?a=b&c"), "%2Fui%2Fhosts%3Fa%3Db%26c");
    }

    #[test]
    fn event_streams_are_bounded() {
        let streams = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
        let held: Vec<_> = (0..MAX_STREAMS).map(|_| stream_permit(&streams).expect("a place")).collect();
        let refused = stream_permit(&streams).err().expect("one too many");
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert!(stream_permit(&streams).is_ok(), "places come back when streams end");
    }

    #[test]
    fn events_carry_every_line_of_the_fragment() {
        let e = sse_event("<h1>x</h1>\n<p>y</p>");
        assert_eq!(&e[..], b"event: main\ndata: <h1>x</h1>\ndata: <p>y</p>\n\n");
    }

    /// The dashboard's table, like the API's: every route once, each with a declared access, the
    /// pages read-only, every POST but sign-in/out an admin action on the leader.
    #[test]
    fn every_route_has_a_declared_access() {
        let table = routes();
        let mut seen = std::collections::HashSet::new();
        for r in &table {
            assert!(seen.insert((r.method.clone(), r.path)), "{} {} twice", r.method, r.path);
            assert!(r.path.starts_with("/ui"), "{}", r.path);
            let policy = match (&r.method, r.path) {
                (_, "/ui" | "/ui/login" | "/ui/static/style.css" | "/ui/static/live.js") => UiAccess::Public,
                (_, "/ui/logout" | "/ui/events") => UiAccess::Here(Role::Read),
                (&Method::GET, _) => UiAccess::Leader(Role::Read),
                _ => UiAccess::Leader(Role::Admin),
            };
            assert_eq!(r.access, policy, "{} {}", r.method, r.path);
        }
        for p in pages() {
            assert!(seen.contains(&(Method::GET, p.path)), "page {} has its route", p.path);
        }
    }
}
