//! The release applier: makes the release the coordinator orders current on this host, and
//! keeps the deployed service running.
//!
//! For each `CoordinatorMsg::Deploy` (one at a time; a newer order waits for the one applying):
//! 1. verify the manifest's ed25519 signature with the cluster's release key (from `Welcome`);
//! 2. download the artifact from the coordinator in pieces (`download`: a signed piece table,
//!    then 1 MiB pieces on streams of their own, several at once, each checked on arrival) into
//!    `downloads/<digest>.part`, resuming where a dropped link or a restart left off, and check
//!    the whole's size and SHA-256 against the signed manifest;
//! 3. unpack it into `releases/<id>/` (in process; entries that could reach outside the release
//!    dir or gain privileges are refused), keep the order beside it (`releases/<id>.order`);
//! 4. switch the `current` link atomically (a new symlink renamed over the old one);
//! 5. restart the service (`run`: supervised here; `restart`: a command for a service managed
//!    elsewhere) and wait for its health check to pass within the deadline.
//! If anything fails the host goes back to the release it ran before, by itself, and reports why.
//! Nothing is applied from a manifest whose signature, size or digest is wrong.
//!
//! The service outlives the agent: stopping or killing the agent leaves it serving. On start the
//! agent adopts the current release's service if it still runs (the very process its earlier run
//! recorded, running the current release's command); otherwise it says why and brings the
//! service back up from disk. So a restarted agent, or one that cannot reach any coordinator,
//! keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fifty_shared::codec;
use fifty_shared::pipeline::fill;
use fifty_shared::wire::{AgentMsg, CoordinatorMsg, DeployOrder, ReleaseManifest, ReleaseReport};
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::download::{fetch_missing, verify_table, CoordinatorSource, Failure, Partial, TABLE_TIMEOUT};
use crate::service::{http_get, Adoption, ServiceSpec, Supervisor};

/// Download requests kept in flight (each answered with up to one 256 KiB chunk).
const FETCH_WINDOW: u64 = 8;
/// How long one download request may wait for its answer before it is sent again.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a download may wait for a link to the coordinator.
const LINK_WAIT: Duration = Duration::from_secs(600);
/// How often the current release's health is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// How long a `restart` command may run.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// The deployed service on this host.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Mutex<Inner>>,
    data_dir: PathBuf,
    vars: BTreeMap<String, String>,
    supervisor: Supervisor,
    /// Signalled when the report changes, so the link sends it at once, not at the next beat.
    changed: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Inner {
    report: ReleaseReport,
    /// The manifest of the current release.
    current: Option<ReleaseManifest>,
    /// An order waiting for the one applying.
    next: Option<DeployOrder>,
    busy: bool,
    key: Vec<u8>,
    link: Option<mpsc::UnboundedSender<AgentMsg>>,
    /// The link's QUIC connection (downloads open streams of their own on it).
    conn: Option<quinn::Connection>,
    /// Answers to download requests.
    chunks: Option<mpsc::UnboundedSender<CoordinatorMsg>>,
}

impl Deployer {
    /// A deployer keeping releases under `data_dir`, filling `{name}` in commands and URLs from
    /// `vars` (the agent's `[service]` settings).
    pub fn new(data_dir: &Path, vars: BTreeMap<String, String>) -> Self {
        Self {
            inner: Arc::default(),
            data_dir: data_dir.to_path_buf(),
            vars,
            supervisor: Supervisor::new(data_dir.join("service.log"), data_dir.join("service.json")),
            changed: Arc::default(),
        }
    }

    /// Resolves when the report changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn touch(&self) {
        self.changed.notify_one();
    }

    /// Adopts the current release's service if an earlier run of the agent left it running, or
    /// brings it (if any) back up; then checks its health every few seconds. Call once, at start.
    /// A service not adopted is stopped first, with anything else left running in a release
    /// dir, so the new one can take its port.
    pub async fn resume(&self) {
        let current = self.read_current();
        let mut adopted = false;
        if let Some((id, manifest)) = &current {
            match self.adopt_service(manifest, &self.release_dir(*id)).await {
                Ok(Adoption::Adopted(pid)) => {
                    info!(release = id, pid, "adopted the running service of the current release (not restarted)");
                    adopted = true;
                }
                Ok(Adoption::NothingRecorded) => {}
                Ok(Adoption::Refused(why)) => {
                    warn!(release = id, %why, "not adopting the running service; restarting it")
                }
                Err(why) => warn!(release = id, %why, "cannot adopt the running service; restarting it"),
            }
        }
        if !adopted {
            let orphans = kill_orphans(&self.data_dir.join("releases"));
            if orphans > 0 {
                warn!(processes = orphans, "stopped service processes an earlier agent left running");
            }
        }
        if let Some((id, manifest)) = current {
            self.inner.lock().expect("deploy lock").report.current = Some(id);
            if !adopted {
                info!(release = id, "starting the current release's service");
                if let Err(e) = self.start_service(&manifest, &self.release_dir(id)).await {
                    warn!(release = id, error = %e, "could not start the current release's service");
                }
            }
            self.inner.lock().expect("deploy lock").current = Some(manifest);
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_EVERY).await;
                let (manifest, busy) = {
                    let inner = this.inner.lock().expect("deploy lock");
                    (inner.current.clone(), inner.busy)
                };
                if let (Some(m), false) = (manifest, busy) {
                    let running = m.service.run.is_none() || this.supervisor.status().running;
                    let healthy = running && this.healthy_once(&m).await.is_ok();
                    let mut inner = this.inner.lock().expect("deploy lock");
                    if !inner.busy && inner.report.healthy != healthy {
                        inner.report.healthy = healthy;
                        drop(inner);
                        this.touch();
                    }
                }
            }
        });
    }

    /// A link is up: requests go to `tx`, downloads to streams of their own on `conn`; `key` is
    /// the cluster's release key.
    pub fn attach(&self, tx: mpsc::UnboundedSender<AgentMsg>, key: Vec<u8>, conn: Option<quinn::Connection>) {
        let mut inner = self.inner.lock().expect("deploy lock");
        inner.link = Some(tx);
        inner.conn = conn;
        if !key.is_empty() {
            inner.key = key;
        }
    }

    /// The link is down.
    pub fn detach(&self) {
        let mut inner = self.inner.lock().expect("deploy lock");
        inner.link = None;
        inner.conn = None;
    }

    /// What to scrape now, if the current release asks (`[immune]`): its id, the order, and the
    /// scrape URL with `{name}` filled (or why it cannot be). Nothing while a release is applied.
    pub fn metrics_target(&self) -> Option<(u64, fifty_shared::wire::MetricsOrder, Result<String, String>)> {
        let inner = self.inner.lock().expect("deploy lock");
        if inner.busy {
            return None;
        }
        let manifest = inner.current.as_ref()?;
        let order = manifest.service.metrics.clone()?;
        let url = fifty_shared::pipeline::fill(&order.scrape_url, &self.vars);
        Some((manifest.release, order, url))
    }

    /// Sends `msg` on the link; false when there is none.
    pub fn send(&self, msg: AgentMsg) -> bool {
        match &self.inner.lock().expect("deploy lock").link {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// What the heartbeat says about the service.
    pub fn report(&self) -> ReleaseReport {
        self.inner.lock().expect("deploy lock").report.clone()
    }

    /// An answer to a download request.
    pub fn on_artifact_data(&self, msg: CoordinatorMsg) {
        if let Some(tx) = &self.inner.lock().expect("deploy lock").chunks {
            let _ = tx.send(msg);
        }
    }

    /// The coordinator orders a release.
    pub fn deploy(&self, order: DeployOrder) {
        {
            let mut inner = self.inner.lock().expect("deploy lock");
            if inner.report.current == Some(order.release) && !inner.busy {
                return;
            }
            if inner.report.applying.is_some_and(|(r, _)| r == order.release) {
                return;
            }
            if inner.busy {
                inner.next = Some(order);
                return;
            }
            inner.busy = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut order = order;
            loop {
                let release = order.release;
                let span = tracing::info_span!("release", release);
                let _enter = span.enter();
                drop(_enter);
                match this.apply(&order).await {
                    Ok(()) => info!(release, "release applied and healthy"),
                    Err(why) => {
                        warn!(release, %why, "release not applied; the host keeps its previous release");
                        this.inner.lock().expect("deploy lock").report.failed = Some((release, why));
                    }
                }
                this.touch();
                let mut inner = this.inner.lock().expect("deploy lock");
                inner.report.applying = None;
                match inner.next.take() {
                    Some(next) if inner.report.current != Some(next.release) => order = next,
                    _ => {
                        inner.busy = false;
                        return;
                    }
                }
            }
        });
    }

    fn release_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join("releases").join(id.to_string())
    }

    fn order_path(&self, id: u64) -> PathBuf {
        self.data_dir.join("releases").join(format!("{id}.order"))
    }

    /// The release the `current` link points to, with its manifest.
    fn read_current(&self) -> Option<(u64, ReleaseManifest)> {
        let target = std::fs::read_link(self.data_dir.join("current")).ok()?;
        let id: u64 = target.file_name()?.to_str()?.parse().ok()?;
        let bytes = std::fs::read(self.order_path(id)).ok()?;
        let order: DeployOrder = codec::from_bytes(&bytes).ok()?;
        let manifest: ReleaseManifest = codec::from_bytes(&order.manifest).ok()?;
        Some((id, manifest))
    }

    /// Verifies, downloads, unpacks, switches, restarts and checks one release; on failure after
    /// the switch, puts the previous release back.
    async fn apply(&self, order: &DeployOrder) -> Result<(), String> {
        let key = self.inner.lock().expect("deploy lock").key.clone();
        let manifest = verify(order, &key)?;
        let id = manifest.release;
        self.inner.lock().expect("deploy lock").report.applying = Some((id, 0));
        self.touch();
        info!(release = id, digest = %manifest.digest, size = manifest.size, "applying release");
        let dir = self.release_dir(id);
        // A release still unpacked here (its order is written last) is switched back to as it is.
        let kept = dir.is_dir()
            && std::fs::read(self.order_path(id))
                .ok()
                .and_then(|b| codec::from_bytes::<DeployOrder>(&b).ok())
                .and_then(|o| codec::from_bytes::<ReleaseManifest>(&o.manifest).ok())
                .is_some_and(|kept| kept.digest == manifest.digest);
        if kept {
            info!(release = id, "release already unpacked here; switching to it");
        } else {
            let downloading = Instant::now();
            let file = self.download(&manifest).await?;
            let secs = downloading.elapsed().as_secs_f64();
            info!(
                release = id,
                bytes = manifest.size,
                secs,
                mib_per_s = manifest.size as f64 / 1048576.0 / secs.max(1e-9),
                "artifact downloaded and verified"
            );
            unpack(&file, &dir).await?;
            let _ = std::fs::remove_file(&file);
            let order_bytes = codec::to_bytes(order).map_err(|e| format!("encode the order: {e}"))?;
            std::fs::write(self.order_path(id), order_bytes).map_err(|e| format!("keep the order: {e}"))?;
        }

        let previous = self.read_current();
        self.switch(id)?;
        self.inner.lock().expect("deploy lock").report.healthy = false;
        let started = self.start_service(&manifest, &dir).await;
        let healthy = match started {
            Ok(()) => self.wait_healthy(&manifest).await,
            Err(e) => Err(e),
        };
        match healthy {
            Ok(()) => {
                let mut inner = self.inner.lock().expect("deploy lock");
                inner.report.current = Some(id);
                inner.report.healthy = true;
                inner.current = Some(manifest.clone());
                drop(inner);
                self.prune(manifest.service.keep_releases, id);
                Ok(())
            }
            Err(why) => {
                match previous {
                    Some((prev, prev_manifest)) => {
                        warn!(release = id, previous = prev, %why, "new release unhealthy; going back");
                        self.switch(prev)?;
                        if let Err(e) = self.start_service(&prev_manifest, &self.release_dir(prev)).await {
                            warn!(release = prev, error = %e, "the previous release did not start again");
                        }
                        let healthy = self.wait_healthy(&prev_manifest).await.is_ok();
                        let mut inner = self.inner.lock().expect("deploy lock");
                        inner.report.current = Some(prev);
                        inner.report.healthy = healthy;
                        inner.current = Some(prev_manifest);
                    }
                    None => {
                        // Nothing to go back to: stop what does not work.
                        self.supervisor.stop().await;
                        let _ = std::fs::remove_file(self.data_dir.join("current"));
                        let mut inner = self.inner.lock().expect("deploy lock");
                        inner.report.current = None;
                        inner.report.healthy = false;
                        inner.current = None;
                    }
                }
                Err(why)
            }
        }
    }

    /// Downloads the artifact in verified pieces on streams of their own (resuming a partial
    /// download, across links), and checks the whole against the manifest. A coordinator that
    /// does not answer for the piece table (one older than download streams) sends it on the
    /// control stream instead.
    async fn download(&self, m: &ReleaseManifest) -> Result<PathBuf, String> {
        // Since the download started or last made progress.
        let mut since = Instant::now();
        let mut last_lost = String::new();
        let mut partial: Option<Arc<Mutex<Partial>>> = None;
        loop {
            let (conn, key) = {
                let inner = self.inner.lock().expect("deploy lock");
                (inner.conn.clone(), inner.key.clone())
            };
            let Some(conn) = conn.filter(|c| c.close_reason().is_none()) else {
                if since.elapsed() > LINK_WAIT {
                    return Err(format!("no link to a coordinator to download the artifact from ({last_lost})"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let source = Arc::new(CoordinatorSource::new(conn.clone()));
            let open = match &partial {
                Some(p) => p.clone(),
                None => {
                    let signed = match tokio::time::timeout(TABLE_TIMEOUT, source.table(&m.digest)).await {
                        Ok(Ok(signed)) => signed,
                        Ok(Err(Failure::Refused(why))) => {
                            return Err(format!("the coordinator cannot serve the artifact: {why}"))
                        }
                        Ok(Err(Failure::Bad(why))) => return Err(why),
                        Ok(Err(Failure::Lost(why))) => {
                            last_lost = why;
                            self.wait_for_new_link(&conn, since).await?;
                            continue;
                        }
                        Err(_) => {
                            warn!(
                                coordinator = %conn.remote_address(),
                                "no answer for the artifact's piece table; downloading on the control stream"
                            );
                            return self.download_on_control_stream(m).await;
                        }
                    };
                    let table = verify_table(&signed, &key, &m.digest, m.size)?;
                    let dir = self.data_dir.join("downloads");
                    let opened = tokio::task::spawn_blocking(move || Partial::open(&dir, table))
                        .await
                        .map_err(|e| format!("open the download: {e}"))??;
                    let opened = Arc::new(Mutex::new(opened));
                    partial = Some(opened.clone());
                    opened
                }
            };
            let release = m.release;
            let progress = |bytes: u64| {
                self.inner.lock().expect("deploy lock").report.applying = Some((release, bytes));
            };
            let before = open.lock().expect("partial lock").verified_bytes();
            match fetch_missing(source, open.clone(), &progress).await {
                Ok(()) => break,
                Err(Failure::Lost(why)) => {
                    warn!(release, %why, "a piece download was cut off; resuming");
                    if open.lock().expect("partial lock").verified_bytes() > before {
                        since = Instant::now();
                    }
                    last_lost = why;
                    self.wait_for_new_link(&conn, since).await?;
                }
                Err(Failure::Refused(why) | Failure::Bad(why)) => return Err(why),
            }
        }
        let partial = partial.expect("a finished download has its pieces");
        let partial = Arc::try_unwrap(partial)
            .map_err(|_| "a piece fetch still holds the download".to_string())?
            .into_inner()
            .map_err(|_| "a piece fetch panicked".to_string())?;
        let path = partial.finish()?;
        check_artifact(&path, m)?;
        Ok(path)
    }

    /// After a download stream failed: waits until the link is a new connection, or a moment if
    /// `conn` still looks alive (a slow piece); an error once nothing came for [`LINK_WAIT`]
    /// `since` the download's last progress.
    async fn wait_for_new_link(&self, conn: &quinn::Connection, since: Instant) -> Result<(), String> {
        loop {
            if since.elapsed() > LINK_WAIT {
                return Err(format!("the artifact download made no progress for {LINK_WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.inner.lock().expect("deploy lock").conn.clone();
            match now {
                Some(c) if c.stable_id() != conn.stable_id() => return Ok(()),
                Some(_) if conn.close_reason().is_none() => return Ok(()),
                _ => {}
            }
        }
    }

    /// Downloads the artifact on the control stream (`AgentMsg::FetchArtifact`), as coordinators
    /// before download streams serve it, resuming a partial download; checks it against the
    /// manifest.
    async fn download_on_control_stream(&self, m: &ReleaseManifest) -> Result<PathBuf, String> {
        let dir = self.data_dir.join("downloads");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let path = dir.join(format!("{}.stream", m.digest));
        let mut offset = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
        if offset > m.size {
            let _ = std::fs::remove_file(&path);
            offset = 0;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.inner.lock().expect("deploy lock").chunks = Some(tx);
        let since = Instant::now();
        // Requests go out ahead, up to FETCH_WINDOW chunks past what has arrived; answers come
        // back in order on the link. `asked` is where the next request starts (chunk-aligned
        // after the first, which may resume mid-chunk).
        let chunk = fifty_shared::wire::ARTIFACT_CHUNK as u64;
        let mut asked = offset;
        let mut asked_on: Option<mpsc::UnboundedSender<AgentMsg>> = None;
        let mut progress = Instant::now();
        while offset < m.size {
            let link = self.inner.lock().expect("deploy lock").link.clone();
            let Some(link) = link else {
                if since.elapsed() > LINK_WAIT {
                    return Err("no link to a coordinator to download the artifact from".into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            // A new link (the old one dropped, or another coordinator leads) or a long silence:
            // the requests in flight are lost; ask again from what has arrived.
            if !asked_on.as_ref().is_some_and(|l| l.same_channel(&link)) || progress.elapsed() > FETCH_TIMEOUT {
                asked = offset;
                progress = Instant::now();
                asked_on = Some(link.clone());
            }
            while asked < m.size && asked < offset + FETCH_WINDOW * chunk {
                let _ = link.send(AgentMsg::FetchArtifact { digest: m.digest.clone(), offset: asked });
                asked = (asked / chunk + 1) * chunk;
            }
            let answer = match tokio::time::timeout(Duration::from_millis(250), rx.recv()).await {
                Ok(Some(a)) => a,
                _ => continue,
            };
            let CoordinatorMsg::ArtifactData { digest, offset: at, total, data, missing } = answer else { continue };
            if digest != m.digest || at != offset {
                continue; // an answer to an earlier request
            }
            if let Some(why) = missing {
                return Err(format!("the coordinator cannot serve the artifact: {why}"));
            }
            if total != m.size {
                return Err(format!(
                    "the coordinator's artifact is {total} bytes; the signed manifest says {}",
                    m.size
                ));
            }
            if data.is_empty() {
                return Err("the coordinator sent an empty piece of the artifact".into());
            }
            let take = data.len().min((m.size - offset) as usize);
            file.write_all(&data[..take]).await.map_err(|e| format!("write {}: {e}", path.display()))?;
            progress = Instant::now();
            offset += take as u64;
            self.inner.lock().expect("deploy lock").report.applying = Some((m.release, offset));
        }
        file.flush().await.map_err(|e| e.to_string())?;
        drop(file);
        self.inner.lock().expect("deploy lock").chunks = None;
        check_artifact(&path, m)?;
        Ok(path)
    }

    /// Points `current` at release `id`, atomically.
    fn switch(&self, id: u64) -> Result<(), String> {
        let link = self.data_dir.join("current");
        let tmp = self.data_dir.join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(id.to_string()), &tmp)
            .map_err(|e| format!("link {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &link).map_err(|e| format!("switch {}: {e}", link.display()))?;
        Ok(())
    }

    /// The variables a release's commands get.
    fn service_env(&self, m: &ReleaseManifest) -> Vec<(String, String)> {
        let mut env =
            vec![("FIFTY_RELEASE".to_string(), m.release.to_string()), ("FIFTY_COMMIT".to_string(), m.sha.clone())];
        // Where the application asks for its A/B variants (the agent's sidecar, loopback).
        env.extend(self.vars.get("sidecar").map(|s| ("FIFTY_SIDECAR".to_string(), s.clone())));
        env
    }

    /// Adopts the supervised service of release `m` an earlier run of the agent left running
    /// ([`Supervisor::adopt`]); a release managed elsewhere (`restart`) has nothing to adopt.
    async fn adopt_service(&self, m: &ReleaseManifest, dir: &Path) -> Result<Adoption, String> {
        let Some(run) = &m.service.run else { return Ok(Adoption::NothingRecorded) };
        let command = fill(run, &self.vars)?;
        Ok(self.supervisor.adopt(ServiceSpec { command, dir: dir.to_path_buf(), env: self.service_env(m) }).await)
    }

    async fn start_service(&self, m: &ReleaseManifest, dir: &Path) -> Result<(), String> {
        let env = self.service_env(m);
        if let Some(run) = &m.service.run {
            let command = fill(run, &self.vars)?;
            self.supervisor.start(ServiceSpec { command, dir: dir.to_path_buf(), env }).await;
            return Ok(());
        }
        if let Some(restart) = &m.service.restart {
            let command = fill(restart, &self.vars)?;
            let out = tokio::time::timeout(
                RESTART_TIMEOUT,
                tokio::process::Command::new("sh").arg("-c").arg(&command).current_dir(dir).envs(env).output(),
            )
            .await
            .map_err(|_| format!("`{command}` took longer than {RESTART_TIMEOUT:?}"))?
            .map_err(|e| format!("run `{command}`: {e}"))?;
            if !out.status.success() {
                return Err(format!("`{command}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(())
    }

    async fn healthy_once(&self, m: &ReleaseManifest) -> Result<(), String> {
        let url = fill(&m.service.health_url, &self.vars)?;
        match http_get(&url, Duration::from_secs(2)).await {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(format!("health check {url}: HTTP {}", r.status)),
            Err(e) => Err(format!("health check: {e}")),
        }
    }

    /// Polls the health check until it passes or the manifest's deadline passes. A supervised
    /// service that exits meanwhile fails it, whatever answers on its port.
    async fn wait_healthy(&self, m: &ReleaseManifest) -> Result<(), String> {
        let deadline = Instant::now() + m.service.health_timeout;
        loop {
            let last = self.healthy_once(m).await;
            if m.service.run.is_some() {
                let status = self.supervisor.status();
                if status.restarts > 0 {
                    let exit = status.last_exit.unwrap_or_else(|| "exited".into());
                    return Err(format!("the service did not stay up ({exit}); see service.log"));
                }
            }
            if last.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let why = last.err().unwrap_or_default();
                return Err(format!("not healthy within {:?}: {why}", m.service.health_timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Keeps the newest `keep` releases (always the current one).
    fn prune(&self, keep: u32, current: u64) {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("releases")) else { return };
        let mut ids: Vec<u64> =
            entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids.into_iter().skip(keep.max(2) as usize).filter(|id| *id != current) {
            let _ = std::fs::remove_dir_all(self.release_dir(id));
            let _ = std::fs::remove_file(self.order_path(id));
        }
    }
}

/// Kills every process whose working directory is under `releases` (services an earlier run of
/// the agent started); returns how many. Linux `/proc`.
fn kill_orphans(releases: &Path) -> usize {
    let Ok(releases) = releases.canonicalize() else { return 0 };
    let me = std::process::id();
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid as u32 == me {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else { continue };
        if cwd.starts_with(&releases) {
            // SAFETY: a plain syscall on a process running in this agent's own release directory.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

/// Checks an order's signature with `key` and returns its manifest.
pub fn verify(order: &DeployOrder, key: &[u8]) -> Result<ReleaseManifest, String> {
    if key.is_empty() {
        return Err("no release key from the coordinator yet; cannot verify the release".into());
    }
    let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key);
    public
        .verify(&order.manifest, &order.signature)
        .map_err(|_| format!("release {}: bad signature on the manifest; refused", order.release))?;
    let manifest: ReleaseManifest = codec::from_bytes(&order.manifest)
        .map_err(|e| format!("release {}: manifest does not decode: {e}", order.release))?;
    if manifest.release != order.release {
        return Err(format!("the order names release {} but its manifest release {}", order.release, manifest.release));
    }
    Ok(manifest)
}

/// Checks a downloaded artifact's size and digest against the manifest; a bad file is deleted.
fn check_artifact(path: &Path, m: &ReleaseManifest) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let bad = |why: String| {
        let _ = std::fs::remove_file(path);
        Err(why)
    };
    if bytes.len() as u64 != m.size {
        return bad(format!("artifact truncated: {} of {} bytes", bytes.len(), m.size));
    }
    let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    if digest != m.digest {
        return bad(format!("artifact digest {digest} does not match the signed manifest's {}", m.digest));
    }
    Ok(())
}

/// Unpacks a `.tar.gz` into `dir` (replacing it), through a temporary directory. In process, not
/// with the system `tar`: what that refuses differs (BusyBox's is weaker than GNU's), and as root
/// it keeps the archive's owners and modes. See [`unpack_checked`].
async fn unpack(file: &Path, dir: &Path) -> Result<(), String> {
    let tmp = dir.with_extension("unpacking");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    let (from, into) = (file.to_path_buf(), tmp.clone());
    let unpacked = tokio::task::spawn_blocking(move || unpack_checked(&from, &into))
        .await
        .unwrap_or_else(|e| Err(format!("the unpacking thread failed: {e}")));
    if let Err(why) = unpacked {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!("unpack the artifact: {why}"));
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| format!("move {} into place: {e}", dir.display()))?;
    Ok(())
}

/// Unpacks the `.tar.gz` at `file` into the existing directory `root`, refusing (with the
/// entry's name) anything that could reach outside `root` or gain privileges: a path that is
/// absolute, has `..` or goes through a symbolic link; a symbolic link leading outside `root`
/// (followed through the links the archive makes, wherever they end up); a hard link to outside;
/// devices, FIFOs and unknown kinds of entry; a file with the setuid or setgid bit. Files belong
/// to the agent's user whoever owned them in the archive, keep their modes less the group and
/// other write bits (nobody else may change what the agent runs), and no extended attributes.
fn unpack_checked(file: &Path, root: &Path) -> Result<(), String> {
    use tar::EntryType;
    let reader = std::fs::File::open(file).map_err(|e| format!("open {}: {e}", file.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(reader)));
    archive.set_preserve_ownerships(false);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_mask(0o022);
    let root = root.canonicalize().map_err(|e| format!("open {}: {e}", root.display()))?;
    let mut dirs = Vec::new();
    for entry in archive.entries().map_err(|e| format!("read the archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("read the archive: {e}"))?;
        let name = entry.path().map_err(|e| format!("read the archive: {e}"))?.into_owned();
        let refuse = |why: String| format!("entry `{}` refused: {why}", name.display());
        let kind = entry.header().entry_type();
        let path = relative(&name).ok_or_else(|| refuse("its path is absolute or has `..`".into()))?;
        if let Some(link) = through_link(&root, &path) {
            return Err(refuse(format!("its path goes through the symbolic link `{}`", link.display())));
        }
        let link_name = || -> Result<PathBuf, String> {
            match entry.link_name() {
                Ok(Some(target)) => Ok(target.into_owned()),
                _ => Err(refuse("a link without a target".into())),
            }
        };
        match kind {
            EntryType::Directory => {
                // Created now if a file needs it; its mode is set last (as `tar` does), so a
                // read-only directory does not stop its own files.
                dirs.push(entry);
                continue;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mode = entry.header().mode().map_err(|e| refuse(format!("its mode: {e}")))?;
                if mode & 0o6000 != 0 {
                    return Err(refuse(format!("setuid or setgid file (mode {mode:o})")));
                }
            }
            EntryType::Symlink => {
                let target = link_name()?;
                let at = path.parent().map(components).unwrap_or_default();
                if resolve(&root, at, &target, 0).is_none() {
                    return Err(refuse(format!(
                        "symbolic link to `{}` leads outside the release dir",
                        target.display()
                    )));
                }
            }
            EntryType::Link => {
                let target = link_name()?;
                let inside = relative(&target).filter(|t| through_link(&root, t).is_none());
                if inside.is_none() {
                    return Err(refuse(format!("hard link to `{}` outside the release dir", target.display())));
                }
            }
            EntryType::XGlobalHeader => continue,
            other => return Err(refuse(format!("{} entries are not allowed", kind_name(other)))),
        }
        entry.unpack_in(&root).map_err(|e| format!("entry `{}`: {e}", name.display()))?;
    }
    // Deepest first, so a directory's mode never stops its subdirectories.
    dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in dirs {
        let name = dir.path().map(|p| p.display().to_string()).unwrap_or_default();
        dir.unpack_in(&root).map_err(|e| format!("entry `{name}`: {e}"))?;
    }
    // A later entry can change where an earlier link leads (`a -> b/..`, then `b -> .`): check
    // every link where it ended up.
    check_links(&root, &root)
}

/// `name` as plain components under the release dir, or `None` if it is absolute or has `..`.
fn relative(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            std::path::Component::Normal(part) => out.push(part),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// The first directory on the way to `path` (under `root`) that is a symbolic link, if any.
fn through_link(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut at = root.to_path_buf();
    for part in path.parent()?.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Some(at.strip_prefix(root).unwrap_or(&at).to_path_buf())
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

fn components(path: &Path) -> Vec<std::ffi::OsString> {
    path.components().map(|c| c.as_os_str().to_os_string()).collect()
}

/// Where a symbolic link to `target` in the directory `at` (components under `root`) leads,
/// following the links already under `root`; `None` if it leaves `root` or loops.
fn resolve(root: &Path, mut at: Vec<std::ffi::OsString>, target: &Path, depth: u32) -> Option<Vec<std::ffi::OsString>> {
    if depth > 40 {
        return None;
    }
    for c in target.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                at.pop()?;
            }
            std::path::Component::Normal(part) => {
                at.push(part.to_os_string());
                let here: PathBuf = at.iter().collect();
                if let Ok(next) = std::fs::read_link(root.join(here)) {
                    at.pop();
                    at = resolve(root, at, &next, depth + 1)?;
                }
            }
            std::path::Component::RootDir | std::path::Component::Prefix(_) => return None,
        }
    }
    Some(at)
}

/// Checks every symbolic link under `dir` (inside `root`) still leads inside `root`.
fn check_links(root: &Path, dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("read {}: {e}", dir.display()))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| format!("read {}: {e}", path.display()))?;
        let name = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
            let at = name.parent().map(components).unwrap_or_default();
            if resolve(root, at, &target, 0).is_none() {
                return Err(format!(
                    "entry `{}` refused: symbolic link to `{}` leads outside the release dir",
                    name.display(),
                    target.display()
                ));
            }
        } else if kind.is_dir() {
            check_links(root, &path)?;
        }
    }
    Ok(())
}

fn kind_name(kind: tar::EntryType) -> String {
    use tar::EntryType;
    match kind {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "FIFO".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fifty_shared::ids::RepoName;
    use fifty_shared::wire::ServiceOrder;
    use ring::signature::KeyPair;

    fn key() -> ring::signature::Ed25519KeyPair {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn manifest(release: u64) -> ReleaseManifest {
        ReleaseManifest {
            release,
            repo: RepoName::new("shop").unwrap(),
            sha: "a".repeat(40),
            digest: "00".repeat(32),
            size: 10,
            service: ServiceOrder {
                run: Some("bin/app".into()),
                restart: None,
                health_url: "http://127.0.0.1:1/health".into(),
                health_timeout: Duration::from_secs(1),
                keep_releases: 3,
                metrics: None,
            },
        }
    }

    fn order(k: &ring::signature::Ed25519KeyPair, m: &ReleaseManifest) -> DeployOrder {
        let bytes = codec::to_bytes(m).unwrap();
        DeployOrder { release: m.release, signature: k.sign(&bytes).as_ref().to_vec(), manifest: bytes }
    }

    #[test]
    fn only_a_manifest_signed_by_the_cluster_key_is_accepted() {
        let (k, other) = (key(), key());
        let public = k.public_key().as_ref().to_vec();
        let good = order(&k, &manifest(3));
        assert_eq!(verify(&good, &public).unwrap().release, 3);
        let forged = order(&other, &manifest(3));
        assert!(verify(&forged, &public).unwrap_err().contains("bad signature"));
        let mut tampered = good.clone();
        tampered.manifest[5] ^= 1;
        assert!(verify(&tampered, &public).unwrap_err().contains("bad signature"));
        let mut relabelled = good.clone();
        relabelled.release = 4;
        assert!(verify(&relabelled, &public).unwrap_err().contains("names release 4"));
        assert!(verify(&good, &[]).unwrap_err().contains("no release key"));
    }

    /// Answers download requests from `rx` with `bytes`, `limit` answers at most; returns how many
    /// it answered and the offset of the first request.
    async fn serve(
        d: &Deployer,
        rx: &mut mpsc::UnboundedReceiver<AgentMsg>,
        bytes: &[u8],
        limit: usize,
    ) -> (usize, Option<u64>) {
        let chunk = fifty_shared::wire::ARTIFACT_CHUNK as u64;
        let (mut served, mut first) = (0, None);
        while served < limit {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await else { break };
            let AgentMsg::FetchArtifact { digest, offset } = msg else { continue };
            first.get_or_insert(offset);
            let end = ((offset / chunk + 1) * chunk).min(bytes.len() as u64);
            let data = bytes[offset as usize..end as usize].to_vec();
            let total = bytes.len() as u64;
            d.on_artifact_data(CoordinatorMsg::ArtifactData { digest, offset, total, data, missing: None });
            served += 1;
        }
        (served, first)
    }

    #[tokio::test]
    async fn a_download_resumes_on_a_new_link_and_from_a_partial_file() {
        let dir = std::env::temp_dir().join(format!("fifty-download-{}-{}", std::process::id(), rand::random::<u32>()));
        let d = Deployer::new(&dir, BTreeMap::new());
        let bytes: Vec<u8> =
            (0..(5 * fifty_shared::wire::ARTIFACT_CHUNK + 1234)).map(|i| (i * 7 % 251) as u8).collect();
        let mut m = manifest(9);
        m.size = bytes.len() as u64;
        m.digest = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        // A partial download from an earlier attempt: 1000 bytes.
        std::fs::create_dir_all(dir.join("downloads")).unwrap();
        std::fs::write(dir.join("downloads").join(format!("{}.stream", m.digest)), &bytes[..1000]).unwrap();

        let (tx, mut rx) = mpsc::unbounded_channel();
        d.attach(tx, vec![1], None);
        let download = tokio::spawn({
            let (d, m) = (d.clone(), m.clone());
            async move { d.download_on_control_stream(&m).await }
        });
        // The first link answers two requests, then drops.
        let (served, first) = serve(&d, &mut rx, &bytes, 2).await;
        assert_eq!((served, first), (2, Some(1000)), "the download resumed from the partial file");
        d.detach();
        drop(rx);
        // A new link serves the rest.
        let (tx, mut rx) = mpsc::unbounded_channel();
        d.attach(tx, vec![1], None);
        let server = tokio::spawn({
            let (d, bytes) = (d.clone(), bytes.clone());
            async move { serve(&d, &mut rx, &bytes, usize::MAX).await }
        });
        let path = tokio::time::timeout(Duration::from_secs(60), download).await.unwrap().unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "every byte arrived once, in order");
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_truncated_or_altered_artifact_is_refused_and_deleted() {
        let dir = std::env::temp_dir().join(format!("fifty-deploy-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = b"0123456789".to_vec();
        let mut m = manifest(1);
        m.digest = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join("a.part");
        std::fs::write(&path, &bytes).unwrap();
        check_artifact(&path, &m).unwrap();
        std::fs::write(&path, &bytes[..7]).unwrap();
        assert!(check_artifact(&path, &m).unwrap_err().contains("truncated: 7 of 10"));
        assert!(!path.exists());
        std::fs::write(&path, b"0123456780").unwrap();
        assert!(check_artifact(&path, &m).unwrap_err().contains("does not match"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One entry of a test archive, written header by header (so it can be as hostile as any).
    enum Item<'a> {
        File(&'a str, u32, &'a [u8]),
        Dir(&'a str, u32),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Char(&'a str),
        Fifo(&'a str),
    }

    /// A `.tar.gz` of `items`, with names and link targets written raw (no checks) and owned
    /// by uid 4321.
    fn archive(items: &[Item]) -> Vec<u8> {
        use tar::EntryType;
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for item in items {
            let (name, kind, mode, data, link): (&str, EntryType, u32, &[u8], &str) = match item {
                Item::File(n, mode, data) => (n, EntryType::Regular, *mode, data, ""),
                Item::Dir(n, mode) => (n, EntryType::Directory, *mode, b"", ""),
                Item::Symlink(n, to) => (n, EntryType::Symlink, 0o777, b"", to),
                Item::HardLink(n, to) => (n, EntryType::Link, 0o644, b"", to),
                Item::Char(n) => (n, EntryType::Char, 0o666, b"", ""),
                Item::Fifo(n) => (n, EntryType::Fifo, 0o644, b"", ""),
            };
            let mut h = tar::Header::new_gnu();
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_uid(4321);
            h.set_gid(4321);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fifty-{what}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(dir.join("releases")).unwrap();
        dir
    }

    /// Every file and link under `dir`, as paths relative to it.
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    walk(root, &e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_release_unpacks_with_its_modes_and_links_but_not_its_owners() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let base = scratch("unpack");
        let long = format!("lib/{}/data.txt", "d".repeat(120));
        let items = [
            Item::Dir("./", 0o755),
            Item::Dir("./bin/", 0o755),
            Item::File("./bin/app", 0o755, b"#!/bin/sh\necho hi\n"),
            Item::File("./README", 0o666, b"read me\n"),
            Item::Dir("./data/", 0o2775),
            Item::Symlink("./app", "bin/app"),
            Item::Symlink("./bin/self", "../bin"),
            Item::HardLink("./bin/app2", "./bin/app"),
        ];
        let mut bytes = archive(&items);
        // A long name (a GNU long-name entry) through the ordinary builder.
        {
            let gz = flate2::read::GzDecoder::new(&bytes[..]);
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut { gz }, &mut raw).unwrap();
            raw.truncate(raw.len() - 1024); // the end-of-archive blocks
            let mut b = tar::Builder::new(raw);
            let mut h = tar::Header::new_gnu();
            h.set_size(5);
            h.set_mode(0o644);
            b.append_data(&mut h, &long, &b"12345"[..]).unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
            bytes = gz.finish().unwrap();
        }
        let file = base.join("a.tar.gz");
        std::fs::write(&file, &bytes).unwrap();
        let dir = base.join("releases").join("1");
        unpack(&file, &dir).await.unwrap();

        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("bin/app"), 0o755, "the executable bit is kept");
        assert_eq!(mode("README"), 0o644, "no group or other write");
        assert_eq!(mode("data"), 0o755, "no setgid, no group write");
        assert_eq!(std::fs::read_to_string(dir.join("app")).unwrap(), "#!/bin/sh\necho hi\n");
        assert_eq!(std::fs::read(dir.join("bin/self/app2")).unwrap(), b"#!/bin/sh\necho hi\n");
        assert_eq!(std::fs::read(dir.join(&long)).unwrap(), b"12345");
        let me = unsafe { libc::geteuid() };
        assert_eq!(std::fs::metadata(dir.join("bin/app")).unwrap().uid(), me, "owned by the agent's user");
        assert!(!base.join("releases/1.unpacking").exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Hostile archives are refused, naming the entry, and write nothing outside the release dir
    /// (nor the release dir itself).
    #[tokio::test]
    async fn hostile_archives_are_refused_naming_the_entry() {
        let outside = format!("fifty-escape-{}-{}", std::process::id(), rand::random::<u32>());
        let abs = format!("/tmp/{outside}");
        let via_root = format!("l/tmp/{outside}");
        let cases: Vec<(&str, Vec<Item>, &str)> = vec![
            (
                "dot-dot",
                vec![Item::File("../x", 0o644, b"x")],
                "entry `../x` refused: its path is absolute or has `..`",
            ),
            (
                "deep dot-dot",
                vec![Item::Dir("a/", 0o755), Item::File("a/../../x", 0o644, b"x")],
                "entry `a/../../x` refused",
            ),
            ("absolute", vec![Item::File(&abs, 0o644, b"x")], "its path is absolute"),
            ("symlink to /", vec![Item::Symlink("l", "/")], "entry `l` refused: symbolic link to `/` leads outside"),
            ("symlink up", vec![Item::Dir("a/", 0o755), Item::Symlink("a/l", "../..")], "entry `a/l` refused"),
            (
                "symlink then a file through it",
                vec![Item::Symlink("l", "/"), Item::File(&via_root, 0o644, b"x")],
                "entry `l` refused",
            ),
            (
                "a file through an inside symlink",
                vec![Item::Dir("d/", 0o755), Item::Symlink("l", "d"), Item::File("l/x", 0o644, b"x")],
                "entry `l/x` refused: its path goes through the symbolic link `l`",
            ),
            (
                "a link that leaves once a later link exists, and a file through it",
                vec![Item::Symlink("t", "s/.."), Item::Symlink("s", "."), Item::File("t/x", 0o644, b"x")],
                "entry `t/x` refused: its path goes through the symbolic link `t`",
            ),
            (
                "a link that leaves once a later link exists",
                vec![Item::Symlink("t", "s/.."), Item::Symlink("s", ".")],
                "entry `t` refused: symbolic link to `s/..` leads outside",
            ),
            ("symlink loop", vec![Item::Symlink("a", "b"), Item::Symlink("b", "a")], "leads outside the release dir"),
            (
                "hard link outside",
                vec![Item::HardLink("h", "../../x")],
                "entry `h` refused: hard link to `../../x` outside",
            ),
            (
                "hard link absolute",
                vec![Item::HardLink("h", "/etc/passwd")],
                "entry `h` refused: hard link to `/etc/passwd`",
            ),
            ("char device", vec![Item::Char("null")], "entry `null` refused: character device entries are not allowed"),
            ("fifo", vec![Item::Fifo("pipe")], "entry `pipe` refused: FIFO entries are not allowed"),
            (
                "setuid",
                vec![Item::File("bin/su", 0o4755, b"x")],
                "entry `bin/su` refused: setuid or setgid file (mode 4755)",
            ),
            (
                "setgid",
                vec![Item::File("bin/sg", 0o2755, b"x")],
                "entry `bin/sg` refused: setuid or setgid file (mode 2755)",
            ),
        ];
        for (what, items, expect) in cases {
            let base = scratch("hostile");
            let file = base.join("a.tar.gz");
            std::fs::write(&file, archive(&items)).unwrap();
            let dir = base.join("releases").join("1");
            let err = unpack(&file, &dir).await.expect_err(what);
            assert!(err.contains(expect), "{what}: {err}");
            assert_eq!(tree(&base), ["a.tar.gz", "releases"], "{what}: nothing written");
            assert!(!Path::new(&abs).exists(), "{what}");
            let _ = std::fs::remove_dir_all(&base);
        }
    }
}
