//! The coordinator's operations, shared by its two front doors: the HTTPS API (`api`) and the
//! QUIC endpoint (`quic`). Each operation reads the applied state, decides, and sends a
//! [`Command`] through [`Consensus`]; soft state (heartbeats, live links) stays in memory here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use fifty_shared::ids::{HostName, RepoName, Role};
use fifty_shared::tls::{self, CertAndKey};
use fifty_shared::token::{self, JoinToken};
use fifty_shared::wire::{close, CoordinatorMsg, EnrollRequest, EnrollResponse, Health};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::consensus::{Consensus, ConsensusError};
use crate::fleet::{Beat, Fleet, HostState};
use crate::metrics::Metrics;
use crate::state::{Applied, Command, GateRecord, HostRecord, Rejection, RepoRecord, TokenRecord};
use crate::store::StoreError;
use crate::views::{self, CreateToken, HostCounts, HostView, StatusView, TokenCreated, TokenView};

/// Why an operation failed, as the API reports it.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request itself is wrong (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// What the request names does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The state machine refused the decision (HTTP 404 for unknown things, 409 otherwise).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Storage failed (HTTP 500); logged where it is handled.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster could not decide now (HTTP 503): no leader, lost quorum, timeout.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
}

/// A leader that sent no Raft frame for this long (it sends one every 100 ms tick) may be dead:
/// a follower does not send agents to it before it is heard from again or replaced.
pub const LEADER_QUIET: Duration = Duration::from_millis(350);
/// The longest a follower holds an agent's link waiting for the cluster to settle on a leader.
pub const PARK_LIMIT: Duration = Duration::from_secs(5);

/// Why an agent's link was refused: a QUIC close code and a reason for the operator.
#[derive(Debug)]
pub struct LinkRefusal {
    /// One of `fifty_shared::wire::close`.
    pub code: u32,
    /// Sent to the agent and logged.
    pub reason: String,
}

/// A live agent link: its id (a newer link replaces an older one), the connection, and the queue
/// of frames its writer sends.
pub struct Link {
    /// Distinguishes this link from an earlier one of the same host.
    pub id: u64,
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Frames to the agent.
    pub tx: mpsc::UnboundedSender<CoordinatorMsg>,
}

/// The coordinator: configuration, the decision log, and the soft state.
pub struct Coordinator {
    /// How it runs.
    pub config: Config,
    /// Where decisions go.
    pub consensus: Consensus,
    /// Counters and gauges for `/metrics`.
    pub metrics: Metrics,
    ca: CertAndKey,
    ca_fingerprint: String,
    started: Instant,
    pub(crate) fleet: Mutex<Fleet>,
    links: Mutex<HashMap<HostName, Link>>,
    next_link: AtomicU64,
    /// CI soft state (leader only).
    pub(crate) ci: Mutex<crate::ci::live::Live>,
    /// Wakes the CI dispatcher (a commit arrived, a job finished, an agent came).
    pub(crate) ci_wake: tokio::sync::Notify,
    /// Deploy soft state (leader only).
    pub(crate) deploy: Mutex<crate::deploy::dispatch::Live>,
    /// Wakes the deploy loop (a release, a report that changed, a command).
    pub(crate) deploy_wake: tokio::sync::Notify,
    /// The immune system's soft state (leader only): metric reports and the waves' analyses.
    pub(crate) immune: Mutex<crate::immune::Live>,
    /// Wakes the notification loop.
    pub(crate) notify_wake: tokio::sync::Notify,
    /// The last consistency check's coordinators that differed from this one, and when (for the
    /// `divergence` alert rule). None: no check ran yet here.
    pub(crate) last_divergence: Mutex<Option<(Vec<String>, SystemTime)>>,
    /// Experiments soft state (leader only): what each host was sent.
    pub(crate) experiments: Mutex<crate::experiments::leader::Live>,
    /// Wakes the experiments loop (a definition changed).
    pub(crate) experiments_wake: tokio::sync::Notify,
    /// Agent links admitted at `links.handshake_rate`.
    admission: Mutex<crate::admission::Admission>,
    /// Every coordinator's QUIC address (the member table, sorted), kept fresh by the server's
    /// upkeep loop: pushed to agents when it changes.
    coordinators: tokio::sync::watch::Sender<Vec<String>>,
}

impl Coordinator {
    /// Builds the coordinator; `ca` signs host certificates.
    pub fn new(config: Config, consensus: Consensus, ca: CertAndKey) -> anyhow::Result<Self> {
        let ca_fingerprint = tls::fingerprint(&tls::cert_from_pem(&ca.cert_pem)?);
        Ok(Self {
            consensus,
            metrics: Metrics::default(),
            ca,
            ca_fingerprint,
            started: Instant::now(),
            fleet: Mutex::default(),
            links: Mutex::default(),
            next_link: AtomicU64::new(1),
            ci: Mutex::default(),
            ci_wake: tokio::sync::Notify::new(),
            deploy: Mutex::default(),
            deploy_wake: tokio::sync::Notify::new(),
            immune: Mutex::default(),
            notify_wake: tokio::sync::Notify::new(),
            last_divergence: Mutex::new(None),
            experiments: Mutex::default(),
            experiments_wake: tokio::sync::Notify::new(),
            admission: Mutex::new(crate::admission::Admission::new(config.links.handshake_rate, Instant::now())),
            coordinators: tokio::sync::watch::Sender::new(Vec::new()),
            config,
        })
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Why this coordinator does not take agent links or enrollments now: the QUIC close
    /// reason is the leader's address (empty when none is known), which the agent dials next.
    pub fn redirect(&self) -> Option<String> {
        if self.consensus.status().is_leader() {
            return None;
        }
        Some(self.consensus.leader().map(|l| l.quic_addr).unwrap_or_default())
    }

    /// Where an agent's link (or enrollment) belongs: `None` here, this coordinator leads;
    /// otherwise the leader's QUIC address (empty when none is known). A follower that knows no
    /// leader, or has heard no Raft frame from its leader for [`LEADER_QUIET`] (it may have
    /// died), holds the link until the cluster settles — a leader elected (possibly this node,
    /// which then keeps the link), or the old one heard from again — for at most [`PARK_LIMIT`].
    /// An agent leaving a dead leader so learns the new one the moment it is elected, instead of
    /// polling followers that do not know it yet.
    pub async fn where_to_link(&self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + PARK_LIMIT;
        let mut status = self.consensus.watch();
        loop {
            let (leading, leader_id) = {
                let s = status.borrow_and_update();
                (s.is_leader(), s.leader_id)
            };
            if leading {
                return None;
            }
            let quiet =
                leader_id != 0 && self.consensus.transport().quiet_for(leader_id).is_some_and(|q| q > LEADER_QUIET);
            if leader_id != 0 && !quiet {
                if let Some(leader) = self.consensus.leader() {
                    return Some(leader.quic_addr);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Some(self.consensus.leader().map(|l| l.quic_addr).unwrap_or_default());
            }
            // A new leader shows in the status; the old one heard from again only in the
            // transport, so look again shortly too.
            tokio::select! {
                _ = status.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Reads the member table again; agents' links hear of a change.
    pub fn refresh_coordinators(&self) {
        let Ok(members) = self.consensus.store().members() else { return };
        let mut addrs: Vec<String> = members.into_iter().map(|m| m.quic_addr).collect();
        addrs.sort();
        addrs.truncate(fifty_shared::wire::MAX_COORDINATORS);
        self.coordinators.send_if_modified(|now| {
            let changed = *now != addrs;
            if changed {
                *now = addrs;
            }
            changed
        });
    }

    /// Every coordinator's QUIC address, changing when the members do.
    pub fn coordinators(&self) -> tokio::sync::watch::Receiver<Vec<String>> {
        self.coordinators.subscribe()
    }

    /// Whether to admit one more agent link now (`links.handshake_rate`), or how long that agent
    /// should wait before trying again.
    pub fn admit_link(&self) -> Result<(), Duration> {
        self.admission.lock().expect("admission lock").admit(Instant::now())
    }

    /// How long a new leader (or a coordinator back from a stall) gives every host to re-attach
    /// before it may call it down: twice `down_after`, plus the time it takes to admit the whole
    /// fleet at `links.handshake_rate` (every agent may be reconnecting at once).
    pub fn reattach_grace(&self) -> Duration {
        let hosts = self.consensus.store().hosts().map(|h| h.len()).unwrap_or(0);
        self.config.down_after * 2 + Duration::from_secs_f64(hosts as f64 / f64::from(self.config.links.handshake_rate))
    }

    /// Takes in what another coordinator last heard from hosts (the leader's share).
    pub fn learn_last_heard(&self, hosts: Vec<fifty_shared::wire::HeardHost>) {
        let now = Instant::now();
        let mut fleet = self.fleet.lock().expect("fleet lock");
        for h in hosts {
            let age = Duration::from_millis(h.age_ms);
            // An age from before this coordinator's clock began cannot be represented; such a
            // host is long silent anyway, and an unknown time is treated as silent since then.
            if let Some(at) = now.checked_sub(age) {
                fleet.learn(&h.host, at);
            }
        }
    }

    /// This node just became leader: it owns the fleet's soft state now, keeping what it knows
    /// the cluster last heard, with a grace period for every host to find it (`fleet`'s rule).
    pub fn on_became_leader(&self) {
        let grace = self.reattach_grace();
        self.fleet.lock().expect("fleet lock").take_over(Instant::now(), grace, self.config.down_after);
        *self.ci.lock().expect("ci lock") = Default::default();
        *self.deploy.lock().expect("deploy lock") = Default::default();
        self.ci_wake.notify_one();
        self.deploy_wake.notify_one();
    }

    /// This node stopped leading: send its agents to the new leader.
    pub fn on_lost_leadership(&self) {
        let leader = self.consensus.leader().map(|l| l.quic_addr).unwrap_or_default();
        let links: Vec<_> = self.links.lock().expect("links lock").drain().collect();
        for (_, link) in links {
            link.conn.close(close::NOT_LEADER.into(), leader.as_bytes());
        }
        self.fleet.lock().expect("fleet lock").step_down();
    }

    // ---- tokens ------------------------------------------------------------------------------

    /// The API token behind a bearer secret, if it is valid now.
    pub fn authenticate(&self, bearer: &str) -> Result<Option<TokenRecord>, StoreError> {
        let hash = token::hash_secret(token::api_secret(bearer));
        Ok(match self.consensus.store().token(&hash)? {
            Some(t) if t.role != Role::Agent && t.refusal(SystemTime::now()).is_none() => Some(t),
            _ => None,
        })
    }

    // ---- repositories and gates -------------------------------------------------------------

    fn repo_view(r: RepoRecord) -> views::RepoView {
        views::RepoView {
            name: r.name.to_string(),
            url: r.url,
            branch: r.branch,
            fix_marker: r.fix_marker,
            webhook: r.webhook_secret.is_some(),
            added_at: views::rfc3339(r.added_at),
        }
    }

    /// Adds (or updates) a repository.
    pub async fn add_repo(&self, req: views::AddRepo) -> Result<views::RepoView, OpError> {
        let name = RepoName::new(&req.name).map_err(|e| OpError::BadRequest(e.to_string()))?;
        if req.url.trim().is_empty() {
            return Err(OpError::BadRequest("url: give the git URL build hosts fetch (a local path works)".into()));
        }
        let branch = req.branch.unwrap_or_else(|| "main".into());
        crate::ci::ops::check_repo_source(req.url.trim(), &branch)?;
        let record = RepoRecord {
            name,
            url: req.url.trim().to_string(),
            branch,
            fix_marker: req.fix_marker.unwrap_or_else(|| "[fix]".into()),
            webhook_secret: req.webhook_secret.filter(|s| !s.is_empty()),
            added_at: SystemTime::now(),
        };
        self.consensus.propose(Command::PutRepo(record.clone())).await??;
        Ok(Self::repo_view(record))
    }

    /// Every repository.
    pub fn repos(&self) -> Result<Vec<views::RepoView>, StoreError> {
        Ok(self.consensus.store().repos()?.into_iter().map(Self::repo_view).collect())
    }

    pub(crate) fn repo(&self, name: &str) -> Result<RepoRecord, OpError> {
        let name = RepoName::new(name).map_err(|e| OpError::BadRequest(e.to_string()))?;
        self.consensus.store().repo(&name)?.ok_or(OpError::Rejected(Rejection::UnknownRepo(name)))
    }

    /// A branch's gate, and what a push with `message` would meet there; `reverts` is the commit
    /// the hook checked the push to undo exactly, if any.
    pub fn gate(
        &self,
        repo: &str,
        branch: Option<&str>,
        message: Option<&str>,
        reverts: Option<&str>,
    ) -> Result<views::GateView, OpError> {
        let repo = self.repo(repo)?;
        let branch = branch.unwrap_or(&repo.branch).to_string();
        let record = self.consensus.store().gate(&repo.name, &branch)?;
        let closure = record.as_ref().and_then(|g| g.closed.clone());
        let verdict = crate::gate::check(closure.as_ref(), message, reverts, &repo.fix_marker);
        Ok(views::GateView {
            repo: repo.name.to_string(),
            branch,
            open: closure.is_none(),
            verdict,
            reason: closure.as_ref().map(|c| c.reason.clone()),
            cause: closure.as_ref().map(|c| c.cause.clone()),
            since: closure.as_ref().map(|c| views::rfc3339(c.since)),
            changed_by: record.map(|g| g.changed_by),
            fix_marker: repo.fix_marker,
        })
    }

    /// Opens or closes a branch's gate by hand; `by` names the caller.
    pub async fn set_gate(
        &self,
        repo: &str,
        change: views::GateChange,
        close: bool,
        by: &str,
    ) -> Result<views::GateView, OpError> {
        let record = self.repo(repo)?;
        let branch = change.branch.clone().unwrap_or_else(|| record.branch.clone());
        let now = SystemTime::now();
        let closed = close.then(|| crate::gate::Closure {
            reason: change.reason.clone().unwrap_or_else(|| "closed by an admin".into()),
            cause: crate::gate::Cause::Manual { by: by.to_string() },
            since: now,
        });
        let gate = GateRecord {
            repo: record.name.clone(),
            branch: branch.clone(),
            closed,
            changed_at: now,
            changed_by: by.to_string(),
            last_finished_seq: 0,
        };
        self.consensus.propose(Command::SetGate(gate)).await??;
        tracing::info!(repo = %record.name, %branch, closed = close, %by, "gate changed by hand");
        self.gate(repo, Some(&branch), None, None)
    }

    /// Creates a token and returns its secret, the only time it is shown.
    pub async fn create_token(&self, req: CreateToken) -> Result<TokenCreated, OpError> {
        let role: Role =
            req.role.parse().map_err(|e: fifty_shared::ids::IdError| OpError::BadRequest(e.to_string()))?;
        let ttl = match (&req.ttl, role) {
            (Some(text), _) => {
                let ttl =
                    fifty_shared::config::parse_duration(text).map_err(|e| OpError::BadRequest(format!("ttl: {e}")))?;
                if ttl.is_zero() {
                    return Err(OpError::BadRequest(format!(
                        "ttl: {text:?} makes a token that is already expired; give a positive lifetime, or none for an API token that does not expire"
                    )));
                }
                Some(ttl)
            }
            (None, Role::Agent) => Some(Duration::from_secs(3600)),
            (None, _) => None,
        };
        let max_uses = match (req.max_uses, role) {
            (Some(0), Role::Agent) => None,
            (n, Role::Agent) => Some(n.unwrap_or(1)),
            (None, _) => None,
            (Some(_), _) => return Err(OpError::BadRequest("max_uses applies only to agent (join) tokens".into())),
        };
        let now = SystemTime::now();
        let secret = token::new_secret();
        let record = TokenRecord {
            accessor: hex::encode(rand::random::<[u8; 8]>()),
            hash: token::hash_secret(&secret),
            role,
            description: req.description,
            created_at: now,
            expires_at: ttl.map(|t| now + t),
            max_uses,
            uses: 0,
            revoked: false,
        };
        let text = match role {
            Role::Agent => JoinToken { secret, ca_fingerprint: self.ca_fingerprint.clone() }.encode(),
            _ => format!("{}{secret}", token::API_PREFIX),
        };
        self.consensus.propose(Command::CreateToken(record.clone())).await??;
        Ok(TokenCreated {
            accessor: record.accessor,
            role: role.to_string(),
            token: text,
            expires_at: record.expires_at.map(views::rfc3339),
        })
    }

    /// Revokes a token by accessor.
    pub async fn revoke_token(&self, accessor: &str) -> Result<(), OpError> {
        self.consensus.propose(Command::RevokeToken { accessor: accessor.to_string() }).await??;
        Ok(())
    }

    /// Every token, without secrets.
    pub fn tokens(&self) -> Result<Vec<TokenView>, StoreError> {
        let now = SystemTime::now();
        let mut tokens: Vec<_> = self.consensus.store().tokens()?.iter().map(|t| TokenView::of(t, now)).collect();
        tokens.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.accessor.cmp(&b.accessor)));
        Ok(tokens)
    }

    // ---- hosts -------------------------------------------------------------------------------

    /// Enrolls a host: checks its join token, signs its certificate request, records it.
    pub async fn enroll(&self, req: EnrollRequest) -> EnrollResponse {
        let refused = |reason: String| EnrollResponse::Refused { reason };
        let out = async {
            let hash = token::hash_secret(&req.token_secret);
            let now = SystemTime::now();
            // Check before signing so a bad token costs no signature; the command checks again.
            let Some(token) = self.consensus.store().token(&hash)? else {
                return Ok(refused(Rejection::UnknownToken.to_string()));
            };
            if token.role != Role::Agent {
                return Ok(refused(Rejection::NotAJoinToken(token.role).to_string()));
            }
            if let Some(why) = token.refusal(now) {
                return Ok(refused(why.to_string()));
            }
            // An enrolled name is not taken over by a join token (the command checks again).
            if self.consensus.store().host(&req.name)?.is_some() {
                return Ok(refused(Rejection::HostEnrolled(req.name.clone()).to_string()));
            }
            let serial = tls::random_serial();
            let cert_pem = match tls::sign_host_csr(&self.ca, &req.csr_pem, &req.name, &serial) {
                Ok(pem) => pem,
                Err(e) => return Ok(refused(format!("{e:#}"))),
            };
            let host = HostRecord {
                name: req.name.clone(),
                labels: req.labels.clone(),
                serial: hex::encode(&serial),
                enrolled_at: now,
                token_accessor: token.accessor,
            };
            let proposed = match self.consensus.propose(Command::EnrollHost { token_hash: hash, host, at: now }).await {
                Ok(out) => out,
                Err(ConsensusError::Store(e)) => return Err(e),
                Err(e) => {
                    return Ok(refused(format!("the cluster could not record the enrollment now ({e}); try again")))
                }
            };
            match proposed {
                Ok(Applied::Enrolled) => {
                    let coordinators = self.consensus.store().members()?.into_iter().map(|m| m.quic_addr).collect();
                    Ok(EnrollResponse::Enrolled { cert_pem, ca_pem: self.ca.cert_pem.clone(), coordinators })
                }
                Ok(other) => Ok(refused(format!("unexpected outcome {other:?}"))),
                Err(rejection) => Ok(refused(rejection.to_string())),
            }
        }
        .await;
        let response = out.unwrap_or_else(|e: StoreError| {
            tracing::error!(host = %req.name, error = %e, "enrollment failed on storage");
            refused("the coordinator could not record the enrollment; try again".into())
        });
        match &response {
            EnrollResponse::Enrolled { .. } => {
                self.metrics.enrollments_ok.inc();
                tracing::info!(host = %req.name, labels = %req.labels, "host enrolled");
            }
            EnrollResponse::Refused { reason } => {
                self.metrics.enrollments_refused.inc();
                tracing::warn!(host = %req.name, %reason, "enrollment refused");
            }
        }
        response
    }

    /// Takes a link's identity from its verified certificate: the serial must belong to an
    /// enrolled host and must not be revoked.
    pub fn identify(&self, cert: &CertificateDer<'_>) -> Result<HostName, LinkRefusal> {
        let serial =
            tls::cert_serial(cert).map_err(|e| LinkRefusal { code: close::UNKNOWN_HOST, reason: format!("{e:#}") })?;
        let store = self.consensus.store();
        let storage =
            |e: StoreError| LinkRefusal { code: close::UNKNOWN_HOST, reason: format!("coordinator storage: {e}") };
        if let Some(r) = store.revocation(&serial).map_err(storage)? {
            return Err(LinkRefusal {
                code: close::REVOKED,
                reason: format!(
                    "certificate {serial} of host {} was revoked at {} ({})",
                    r.host,
                    views::rfc3339(r.at),
                    r.reason
                ),
            });
        }
        match store.host_by_serial(&serial).map_err(storage)? {
            Some(name) => Ok(name),
            None => Err(LinkRefusal {
                code: close::UNKNOWN_HOST,
                reason: format!("certificate {serial} belongs to no enrolled host; enroll with `fifty-agent join`"),
            }),
        }
    }

    /// Removes a host: revokes its certificate and closes its link.
    pub async fn remove_host(&self, name: &HostName) -> Result<String, OpError> {
        let out = self.consensus.propose(Command::RemoveHost { name: name.clone(), at: SystemTime::now() }).await??;
        let serial = match out {
            Applied::Removed { serial } => serial,
            other => return Err(OpError::BadRequest(format!("unexpected outcome {other:?}"))),
        };
        self.fleet.lock().expect("fleet lock").forget(name);
        self.close_link(name, close::REVOKED, &format!("host {name} was removed and its certificate {serial} revoked"));
        tracing::info!(host = %name, %serial, "host removed");
        Ok(serial)
    }

    /// Records a heartbeat (soft state).
    pub fn on_heartbeat(
        &self,
        host: &HostName,
        health: Health,
        release: fifty_shared::wire::ReleaseReport,
        agent_version: &str,
    ) {
        let changed = self.release_report(host) != release;
        let beat = Beat {
            at: Instant::now(),
            wall: SystemTime::now(),
            health,
            agent_version: agent_version.to_string(),
            release,
        };
        self.fleet.lock().expect("fleet lock").on_heartbeat(host, beat);
        self.metrics.heartbeats.inc();
        if changed {
            self.deploy_wake.notify_one();
        }
    }

    /// Whether this node has had a heartbeat from `host` since it became leader.
    pub(crate) fn fleet_has_beat(&self, host: &HostName) -> bool {
        self.fleet.lock().expect("fleet lock").last(host).is_some()
    }

    /// The last release report of a host (empty if none arrived since this node leads).
    pub fn release_report(&self, host: &HostName) -> fifty_shared::wire::ReleaseReport {
        self.fleet.lock().expect("fleet lock").last(host).map(|b| b.release.clone()).unwrap_or_default()
    }

    /// Registers a live agent link, closing any older link of the same host.
    pub fn register_link(
        &self,
        host: &HostName,
        conn: quinn::Connection,
        tx: mpsc::UnboundedSender<CoordinatorMsg>,
    ) -> u64 {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let old = self.links.lock().expect("links lock").insert(host.clone(), Link { id, conn, tx });
        if let Some(old) = old {
            old.conn.close(close::REPLACED.into(), b"a newer connection from this host replaced this one");
        }
        self.ci_wake.notify_one();
        id
    }

    /// Forgets a link when it ends (unless a newer one replaced it).
    pub fn unregister_link(&self, host: &HostName, id: u64) {
        let mut links = self.links.lock().expect("links lock");
        if links.get(host).is_some_and(|l| l.id == id) {
            links.remove(host);
        }
    }

    fn close_link(&self, host: &HostName, code: u32, reason: &str) {
        if let Some(link) = self.links.lock().expect("links lock").remove(host) {
            link.conn.close(code.into(), reason.as_bytes());
        }
    }

    /// Sends a frame to a host's agent; false if it has no link.
    pub(crate) fn send_to(&self, host: &HostName, msg: CoordinatorMsg) -> bool {
        match self.links.lock().expect("links lock").get(host) {
            Some(link) => link.tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// Hosts with a live link.
    pub(crate) fn linked_hosts(&self) -> Vec<HostName> {
        self.links.lock().expect("links lock").keys().cloned().collect()
    }

    /// Whether `host` reports (heartbeats within `down_after`, or the new leader's grace).
    pub(crate) fn host_ready(&self, host: &HostName) -> bool {
        self.fleet.lock().expect("fleet lock").state(host, Instant::now(), self.config.down_after) == HostState::Ready
    }

    /// Number of connected agents.
    pub fn link_count(&self) -> usize {
        self.links.lock().expect("links lock").len()
    }

    /// Every host with its live state, sorted by name.
    pub fn hosts(&self) -> Result<Vec<HostView>, StoreError> {
        let records = self.consensus.store().hosts()?;
        let fleet = self.fleet.lock().expect("fleet lock");
        let now = Instant::now();
        Ok(records
            .into_iter()
            .map(|h| {
                let beat = fleet.last(&h.name);
                HostView {
                    state: fleet.state(&h.name, now, self.config.down_after),
                    cpu_percent: beat.map(|b| b.health.cpu_percent),
                    load: beat.map(|b| b.health.load),
                    mem_used_bytes: beat.map(|b| b.health.mem_used_bytes),
                    mem_total_bytes: beat.map(|b| b.health.mem_total_bytes),
                    disk_free_bytes: beat.map(|b| b.health.disk_free_bytes),
                    agent_version: beat.map(|b| b.agent_version.clone()),
                    last_seen: beat.map(|b| views::rfc3339(b.wall)),
                    last_seen_secs_ago: beat.map(|b| now.saturating_duration_since(b.at).as_secs_f64()),
                    enrolled_at: views::rfc3339(h.enrolled_at),
                    cert_serial: h.serial,
                    labels: h.labels.0,
                    name: h.name.to_string(),
                }
            })
            .collect())
    }

    /// The coordinators as this node sees them.
    pub fn cluster(&self) -> Result<views::ClusterView, StoreError> {
        let raft = self.consensus.status();
        let hex = |id: u64| format!("{id:016x}");
        let members = self
            .consensus
            .store()
            .members()?
            .into_iter()
            .map(|m| views::MemberView {
                id: hex(m.id),
                leader: m.id == raft.leader_id,
                voter: raft.voters.contains(&m.id),
                learner: raft.learners.contains(&m.id),
                matched: raft.matched.iter().find(|(id, _)| *id == m.id).map(|(_, i)| *i),
                quic_addr: m.quic_addr,
                http_addr: m.http_addr,
            })
            .collect();
        Ok(views::ClusterView {
            node_id: hex(raft.id),
            leader_id: (raft.leader_id != 0).then(|| hex(raft.leader_id)),
            term: raft.term,
            commit_index: raft.commit,
            applied_index: raft.applied,
            members,
        })
    }

    /// Compares every coordinator's state at one point of the log (etcd's `hashkv`): proposes a
    /// checkpoint, takes this node's digest right after it, and asks every other member for its
    /// digest at the same index. Equal logs applied deterministically give equal digests; a
    /// difference means a coordinator's state has parted from the others'.
    pub async fn cluster_check(&self) -> Result<views::ClusterCheckView, OpError> {
        let (index, digest) = self.consensus.checkpoint().await?;
        let me = self.consensus.id();
        let mut nodes = Vec::new();
        for m in self.consensus.store().members()? {
            let (applied, theirs, verdict) = if m.id == me {
                (Some(self.consensus.status().applied), Some(digest.clone()), "agrees".to_string())
            } else {
                let req = fifty_shared::wire::PeerRequest::Digest { index };
                match self.consensus.transport().request(&m.quic_addr, &req).await {
                    Ok(fifty_shared::wire::PeerResponse::Digest { applied, digest: theirs }) => {
                        let verdict = match &theirs {
                            Some(d) if *d == digest => "agrees".to_string(),
                            Some(_) => "DIFFERS".to_string(),
                            None if applied < index => "behind".to_string(),
                            None => "no digest kept for this checkpoint".to_string(),
                        };
                        (Some(applied), theirs, verdict)
                    }
                    Ok(other) => (None, None, format!("unexpected answer {other:?}")),
                    Err(e) => (None, None, format!("no answer: {e:#}")),
                }
            };
            nodes.push(views::NodeDigestView { id: format!("{:016x}", m.id), applied, digest: theirs, verdict });
        }
        let consistent = nodes.iter().all(|n| n.verdict == "agrees");
        let differing: Vec<String> = nodes.iter().filter(|n| n.verdict == "DIFFERS").map(|n| n.id.clone()).collect();
        if !differing.is_empty() {
            tracing::error!(
                index,
                ?differing,
                "coordinators' states differ at the same log index: see `fifty cluster check`"
            );
        }
        *self.last_divergence.lock().expect("divergence lock") = Some((differing, SystemTime::now()));
        Ok(views::ClusterCheckView { index, consistent, nodes })
    }

    /// The cluster summary.
    pub fn status(&self) -> Result<StatusView, StoreError> {
        let hosts = self.hosts()?;
        let ready = hosts.iter().filter(|h| h.state == HostState::Ready).count();
        let raft = self.consensus.status();
        let me = self.consensus.me();
        let store = self.consensus.store();
        Ok(StatusView {
            version: fifty_shared::VERSION.to_string(),
            cluster_created_at: self.consensus.store().cluster()?.map(|c| views::rfc3339(c.created_at)),
            ca_fingerprint: self.ca_fingerprint.clone(),
            node_id: format!("{:016x}", raft.id),
            leader_id: (raft.leader_id != 0).then(|| format!("{:016x}", raft.leader_id)),
            term: raft.term,
            commit_index: raft.commit,
            applied_index: raft.applied,
            coordinators: raft.voters.len(),
            http_addr: me.http_addr.clone(),
            quic_addr: me.quic_addr.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            agent_links: self.link_count(),
            hosts: HostCounts { total: hosts.len(), ready, down: hosts.len() - ready },
            heartbeat_interval: humantime::format_duration(self.config.heartbeat_interval).to_string(),
            down_after: humantime::format_duration(self.config.down_after).to_string(),
            store: Some(store.sizes()?),
            artifacts: Some(store.recorded_blobs()?.iter().fold((0, 0), |(n, bytes), (_, size)| (n + 1, bytes + size))),
            retention: Some(match store.retention()? {
                Some(r) => views::RetentionView {
                    settings: self.config.retention.describe(),
                    last_run: Some(views::rfc3339(r.at)),
                    removed: r.removed,
                    more: r.more,
                    total: r.total,
                },
                None => views::RetentionView {
                    settings: self.config.retention.describe(),
                    last_run: None,
                    removed: Default::default(),
                    more: false,
                    total: Default::default(),
                },
            }),
        })
    }
}
