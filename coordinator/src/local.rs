//! A cluster of real processes on this machine: one or more coordinators (`fifty server`) and
//! any number of agents (`fifty-agent`), each with its own data dir under one directory, on free
//! loopback ports. `fifty dev`, `fifty demo` and the end-to-end tests all start their clusters
//! here.
//!
//! Children are killed when the cluster is dropped. Their output goes to `<dir>/logs/<name>.log`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use crate::client::Client;
use crate::views::{ClusterView, CreateToken, HostView};

/// How the local cluster runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many coordinators (1, 3 or 5).
    pub coordinators: usize,
    /// Agents' heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Silence after which a host is down.
    pub down_after: Duration,
    /// Compact the Raft log past this many entries.
    pub snapshot_threshold: u64,
    /// Enable the partition fault hook (`POST /v1/debug/isolate`).
    pub fault_injection: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            coordinators: 1,
            heartbeat_interval: Duration::from_secs(1),
            down_after: Duration::from_secs(5),
            snapshot_threshold: 10_000,
            fault_injection: false,
        }
    }
}

/// One agent of the cluster.
pub struct LocalAgent {
    /// Host name.
    pub name: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    child: Option<Child>,
}

/// One coordinator of the cluster.
pub struct LocalCoordinator {
    /// `coord-1`, `coord-2`, ...
    pub name: String,
    /// HTTPS API address.
    pub http: SocketAddr,
    /// QUIC address.
    pub quic: SocketAddr,
    child: Option<Child>,
}

/// Coordinators and agents running as child processes.
pub struct LocalCluster {
    /// Everything lives under here.
    pub dir: PathBuf,
    /// Where `fifty` and `fifty-agent` are.
    pub bin_dir: PathBuf,
    /// The bootstrap admin token.
    pub admin_token: String,
    /// The coordinators.
    pub coordinators: Vec<LocalCoordinator>,
    /// The agents, in the order they were added.
    pub agents: Vec<LocalAgent>,
    ca_pem: String,
}

impl Drop for LocalCluster {
    /// The agents die with the cluster (their children are killed on drop), but the services
    /// they supervise outlive an agent by design (a restarted agent adopts them): they are
    /// stopped here, or they would keep serving on their ports after the cluster is gone.
    fn drop(&mut self) {
        for agent in &mut self.agents {
            if let Some(child) = agent.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        for agent in &self.agents {
            stop_services(&agent.data_dir);
            remove_job_cgroups(&agent.data_dir);
        }
    }
}

/// Kills what is left in an agent's job cgroups and removes them (the agent notes where they are
/// in `<data_dir>/job-trees/cgroup`); a killed agent would do it at its next start, which a
/// dropped cluster's agents never have.
fn remove_job_cgroups(agent_dir: &Path) {
    let Ok(parent) = std::fs::read_to_string(agent_dir.join("job-trees/cgroup")) else { return };
    let parent = PathBuf::from(parent.trim());
    if !parent.file_name().is_some_and(|n| n.to_string_lossy().starts_with("fifty-jobs-")) {
        return;
    }
    for tree in std::fs::read_dir(&parent).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
        let _ = std::fs::write(tree.path().join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(tree.path()).is_err() && tree.path().exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_dir(&parent);
}

/// Kills every process working in an agent's release dirs (its services and what they started).
pub fn stop_services(agent_dir: &Path) {
    let Ok(releases) = agent_dir.join("releases").canonicalize() else { return };
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&releases)) {
            // SAFETY: kill(2) on a process working in this cluster's own agent's release dir.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A port on 127.0.0.1 that is free for both TCP and UDP right now, chosen below the kernel's
/// ephemeral port range when it can be.
pub fn free_port() -> Result<u16> {
    // Below the kernel's ephemeral range when there is room: a port from that range can be taken,
    // while a server restarts, as the source port of any outgoing connection (the demo's and the
    // tests' traffic opens hundreds a second), and the server then cannot bind it again.
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()));
    if let Some(low) = ephemeral_low.filter(|l| *l > 12_000) {
        for _ in 0..200 {
            let port = low - 1 - (rand::random::<u16>() % (low - 11_000));
            let tcp = TcpListener::bind(("127.0.0.1", port));
            if tcp.is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("found no free loopback port")
}

/// The directory holding `fifty` and `fifty-agent`: `FIFTY_BIN_DIR`, or beside this executable
/// (one level up for test binaries under `target/<profile>/deps`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FIFTY_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("find this executable")?;
    let mut dir = exe.parent().context("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for bin in ["fifty", "fifty-agent"] {
        if !dir.join(bin).exists() {
            bail!("{} not found in {}: build the workspace first (cargo build --workspace --bins)", bin, dir.display());
        }
    }
    Ok(dir)
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{name}.log")))
        .with_context(|| format!("open log for {name}"))
}

/// Polls `check` every 100 ms until it returns `Some` or `deadline` passes.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > deadline {
            let detail = last_error.map(|e| format!(" (last error: {e:#})")).unwrap_or_default();
            bail!("timed out after {:?} waiting for {what}{detail}", deadline);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl LocalCluster {
    /// Starts the coordinators in `dir` and waits until the cluster has a leader and answers.
    pub async fn start(dir: &Path, bin_dir: &Path, options: Options) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let n = options.coordinators.max(1);
        let mut coordinators = Vec::new();
        for i in 1..=n {
            let http: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let quic: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            coordinators.push(LocalCoordinator { name: format!("coord-{i}"), http, quic, child: None });
        }
        let mut shared = String::new();
        if n > 1 {
            let out =
                Command::new(bin_dir.join("fifty")).args(["ca", "init", "--out"]).arg(dir.join("ca")).output().await?;
            if !out.status.success() {
                bail!("fifty ca init: {}", String::from_utf8_lossy(&out.stderr));
            }
            let peers: Vec<String> = coordinators.iter().map(|c| format!("\"{}\"", c.quic)).collect();
            shared = format!(
                "bootstrap_expect = {n}\npeers = [{}]\nca_cert = {:?}\nca_key = {:?}\n",
                peers.join(", "),
                dir.join("ca").join("ca.pem"),
                dir.join("ca").join("ca-key.pem"),
            );
        }
        for c in &coordinators {
            let config = format!(
                "data_dir = {data:?}\nhttp_addr = \"{http}\"\nquic_addr = \"{quic}\"\n\
                 heartbeat_interval = \"{hb}\"\ndown_after = \"{down}\"\nbootstrap_token_file = {tok:?}\n\
                 snapshot_threshold = {snap}\nfault_injection = {fault}\n{shared}",
                data = dir.join(&c.name),
                http = c.http,
                quic = c.quic,
                hb = humantime::format_duration(options.heartbeat_interval),
                down = humantime::format_duration(options.down_after),
                tok = dir.join("bootstrap-token"),
                snap = options.snapshot_threshold,
                fault = options.fault_injection,
            );
            std::fs::write(dir.join(format!("{}.toml", c.name)), config)?;
        }
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            admin_token: String::new(),
            coordinators,
            agents: Vec::new(),
            ca_pem: String::new(),
        };
        for i in 0..n {
            cluster.spawn_coordinator(i, &[])?;
        }
        let token_file = dir.join("bootstrap-token");
        let token = wait_for("the bootstrap token", Duration::from_secs(90), || async {
            Ok(std::fs::read_to_string(&token_file).ok().filter(|t| !t.trim().is_empty()))
        })
        .await?;
        cluster.admin_token = token.trim().to_string();
        let ca_path = cluster.ca_path();
        cluster.ca_pem = wait_for("the cluster CA", Duration::from_secs(60), || async {
            Ok(std::fs::read_to_string(&ca_path).ok().filter(|c| c.contains("END CERTIFICATE")))
        })
        .await?;
        cluster.wait_leader(Duration::from_secs(90)).await?;
        Ok(cluster)
    }

    fn spawn_coordinator(&mut self, i: usize, extra_args: &[&str]) -> Result<()> {
        let c = &self.coordinators[i];
        let log = log_file(&self.dir, &c.name)?;
        let child = Command::new(self.bin_dir.join("fifty"))
            .args(["server", "--config"])
            .arg(self.dir.join(format!("{}.toml", c.name)))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start fifty server")?;
        self.coordinators[i].child = Some(child);
        Ok(())
    }

    /// (Re)starts coordinator `i` from its data dir and waits until its API answers (so
    /// [`Self::client`] and [`Self::addr`], which may pick it, reach a listening coordinator),
    /// or until its process exits by itself (a refusal to start: see
    /// [`Self::wait_coordinator_exit`]). With several coordinators, wait for what you need next
    /// (`wait_leader`): one node alone has no quorum.
    pub async fn start_coordinator(&mut self, i: usize) -> Result<()> {
        self.spawn_coordinator(i, &[])?;
        if self.coordinators.len() == 1 {
            self.wait_leader(Duration::from_secs(60)).await?;
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exited = match self.coordinators[i].child.as_mut() {
                Some(child) => child.try_wait().context("poll coordinator")?.is_some(),
                None => true,
            };
            // A stale read answers from the node itself, quorum or not.
            let answers = || async {
                self.client_for(i).get::<serde_json::Value>("/v1/cluster/members?stale=true").await.is_ok()
            };
            if exited || answers().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("coordinator {i} was started but its API did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (Re)starts coordinator `i` from its data dir with extra `fifty server` flags (e.g.
    /// `--force-new-cluster`).
    pub fn start_coordinator_with(&mut self, i: usize, args: &[&str]) -> Result<()> {
        self.spawn_coordinator(i, args)
    }

    /// Deletes coordinator `i`'s data dir, as a lost disk would (stop it first). A dir already
    /// gone is fine.
    pub fn wipe_coordinator(&mut self, i: usize) -> Result<()> {
        if self.coordinators[i].child.is_some() {
            bail!("coordinator {i} is running; kill it before wiping its data dir");
        }
        let data = self.dir.join(&self.coordinators[i].name);
        match std::fs::remove_dir_all(&data) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("wipe {}", data.display()))
            }
            _ => Ok(()),
        }
    }

    /// Wipes coordinator `i`'s data dir and starts it with `--join` through another
    /// coordinator: it comes back as a new member. With `replace`, also `--replace`: the
    /// leader removes the member still listed at its address (its old id) first.
    pub async fn rejoin_wiped(&mut self, i: usize, replace: bool) -> Result<()> {
        self.wipe_coordinator(i)?;
        let via = self.running().into_iter().find(|j| *j != i).context("no other coordinator is running")?;
        let via = self.coordinators[via].quic.to_string();
        let mut args = vec!["--join", via.as_str()];
        if replace {
            args.push("--replace");
        }
        self.spawn_coordinator(i, &args)
    }

    /// Kills coordinator `i` with SIGKILL and waits for it to exit.
    pub async fn kill_coordinator(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.coordinators[i].child.take() {
            child.kill().await.context("kill coordinator")?;
        }
        Ok(())
    }

    /// Waits for coordinator `i`'s process to exit by itself and returns its exit status.
    pub async fn wait_coordinator_exit(&mut self, i: usize, deadline: Duration) -> Result<std::process::ExitStatus> {
        let child = self.coordinators[i].child.as_mut().with_context(|| format!("coordinator {i} is not running"))?;
        match tokio::time::timeout(deadline, child.wait()).await {
            Ok(status) => {
                self.coordinators[i].child = None;
                Ok(status?)
            }
            Err(_) => bail!("coordinator {i} still running after {deadline:?}"),
        }
    }

    /// Stops coordinator `i`'s process (SIGSTOP) or lets it go on (SIGCONT), as a stalled
    /// machine would: its sockets stay open and its kernel still accepts connections.
    pub fn pause_coordinator(&self, i: usize, paused: bool) -> Result<()> {
        let pid = self.coordinators[i].child.as_ref().and_then(|c| c.id()).context("the coordinator is not running")?;
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            bail!("signal coordinator {i}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Indexes of the coordinators whose process runs.
    pub fn running(&self) -> Vec<usize> {
        (0..self.coordinators.len()).filter(|i| self.coordinators[*i].child.is_some()).collect()
    }

    /// An admin client for coordinator `i`'s API.
    pub fn client_for(&self, i: usize) -> Client {
        Client::new(&format!("https://{}", self.coordinators[i].http), Some(self.admin_token.clone()), &self.ca_pem)
            .expect("a loopback address and the cluster CA make a valid client")
    }

    /// An admin client for the first running coordinator (any coordinator answers as the leader
    /// would).
    pub fn client(&self) -> Client {
        self.client_for(self.running().first().copied().unwrap_or(0))
    }

    /// Each running coordinator's own view of the cluster (`?stale=true`), by index.
    pub async fn views(&self) -> Vec<(usize, ClusterView)> {
        let mut out = Vec::new();
        for i in self.running() {
            if let Ok(v) = self.client_for(i).get::<ClusterView>("/v1/cluster/members?stale=true").await {
                out.push((i, v));
            }
        }
        out
    }

    /// The index of the coordinator that leads, as the leader itself says.
    pub async fn leader(&self) -> Option<usize> {
        self.views().await.into_iter().find(|(_, v)| v.leader_id.as_deref() == Some(v.node_id.as_str())).map(|(i, _)| i)
    }

    /// Waits until a running coordinator leads and the API answers through it.
    pub async fn wait_leader(&self, deadline: Duration) -> Result<usize> {
        wait_for("a leader", deadline, || async {
            let Some(i) = self.leader().await else { return Ok(None) };
            Ok(self.client_for(i).get::<serde_json::Value>("/v1/status").await.ok().map(|_| i))
        })
        .await
    }

    /// `https://127.0.0.1:PORT` of the first running coordinator.
    pub fn addr(&self) -> String {
        format!("https://{}", self.coordinators[self.running().first().copied().unwrap_or(0)].http)
    }

    /// Waits until commit `sha` has finished testing.
    pub async fn wait_commit(&self, sha: &str, deadline: Duration) -> Result<crate::views::CommitView> {
        let client = self.client();
        wait_for(&format!("commit {} to finish", crate::ci::short(sha)), deadline, || async {
            let view: crate::views::CommitView = client.get(&format!("/v1/commits/{sha}")).await?;
            Ok(view.summary.state.finished().then_some(view))
        })
        .await
    }

    /// Waits until commit `sha` has a release and returns its id; fails if packaging failed.
    pub async fn wait_release(&self, sha: &str, deadline: Duration) -> Result<u64> {
        let client = self.client();
        wait_for(&format!("a release of {}", crate::ci::short(sha)), deadline, || async {
            let view: crate::views::CommitView = client.get(&format!("/v1/commits/{sha}")).await?;
            if let Some(e) = &view.release_error {
                bail!("packaging {} failed: {e}", crate::ci::short(sha));
            }
            Ok(view.release)
        })
        .await
    }

    /// Waits until the rollout of `release` of `repo` is in `phase`.
    pub async fn wait_rollout(
        &self,
        repo: &str,
        release: u64,
        phase: crate::deploy::Phase,
        deadline: Duration,
    ) -> Result<crate::views::RolloutView> {
        let client = self.client();
        let path = format!("/v1/rollouts/current?repo={repo}");
        wait_for(&format!("the rollout of release {release} to reach {phase:?}"), deadline, || async {
            let view: crate::views::RolloutView = client.get(&path).await?;
            Ok((view.release == release && view.phase == phase).then_some(view))
        })
        .await
    }

    /// Every coordinator's API address, comma-separated (for `FIFTY_ADDR` and git hooks that
    /// must outlive any one coordinator).
    pub fn all_addrs(&self) -> String {
        self.coordinators.iter().map(|c| format!("https://{}", c.http)).collect::<Vec<_>>().join(",")
    }

    /// The first running coordinator's QUIC address.
    pub fn quic(&self) -> SocketAddr {
        self.coordinators[self.running().first().copied().unwrap_or(0)].quic
    }

    /// The CA certificate (for `FIFTY_CACERT`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(&self.coordinators[0].name).join("tls").join("ca.pem")
    }

    /// The `export` lines that point the CLI at this cluster.
    pub fn env_lines(&self) -> String {
        format!(
            "export FIFTY_ADDR={}\nexport FIFTY_CACERT={}\nexport FIFTY_TOKEN={}\n",
            self.addr(),
            self.ca_path().display(),
            self.admin_token
        )
    }

    /// Creates a join token for `max_uses` hosts.
    pub async fn join_token(&self, max_uses: u32) -> Result<String> {
        let req = CreateToken {
            role: "agent".into(),
            ttl: Some("1h".into()),
            max_uses: Some(max_uses),
            description: "local cluster".into(),
        };
        let created: crate::views::TokenCreated = self.client().post("/v1/tokens", &req).await?;
        Ok(created.token)
    }

    /// The data dir an agent named `name` uses.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.dir.join("agents").join(name)
    }

    /// Runs `fifty-agent join` to completion and returns what it printed.
    pub async fn join(&self, name: &str, labels: &str, token: &str) -> Result<Output> {
        self.join_with(name, labels, token, "").await
    }

    /// `join` with `[service]` settings (`--service port=18081`).
    pub async fn join_with(&self, name: &str, labels: &str, token: &str, service: &str) -> Result<Output> {
        // Agents share this machine: each gets its own free loopback port for its A/B sidecar.
        let sidecar = format!("127.0.0.1:{}", free_port()?);
        Command::new(self.bin_dir.join("fifty-agent"))
            .args([
                "join",
                "--coordinator",
                &self.quic().to_string(),
                "--token",
                token,
                "--name",
                name,
                "--labels",
                labels,
                "--service",
                service,
                "--sidecar",
                &sidecar,
            ])
            .arg("--data-dir")
            .arg(self.agent_dir(name))
            .stdin(Stdio::null())
            .output()
            .await
            .context("run fifty-agent join")
    }

    /// Where an enrolled agent's A/B sidecar listens (from its `agent.toml`).
    pub fn sidecar(&self, name: &str) -> Result<SocketAddr> {
        let path = self.agent_dir(name).join("agent.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let value: toml::Value = toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let listen = value.get("sidecar").and_then(|s| s.get("listen")).and_then(|l| l.as_str());
        listen
            .with_context(|| format!("{} has no [sidecar] listen", path.display()))?
            .parse()
            .context("sidecar address")
    }

    /// Joins an agent with a fresh token and starts it.
    pub async fn add_agent(&mut self, name: &str, labels: &str) -> Result<()> {
        self.add_agent_with(name, labels, "").await
    }

    /// Joins an agent with `[service]` settings (e.g. `port=18081`) and starts it.
    pub async fn add_agent_with(&mut self, name: &str, labels: &str, service: &str) -> Result<()> {
        let token = self.join_token(1).await?;
        let out = self.join_with(name, labels, &token, service).await?;
        if !out.status.success() {
            bail!("fifty-agent join {name} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.adopt_agent(name);
        self.start_agent(name)
    }

    /// Tracks an agent enrolled with [`LocalCluster::join`], so it can be started and killed.
    pub fn adopt_agent(&mut self, name: &str) {
        if !self.agents.iter().any(|a| a.name == name) {
            self.agents.push(LocalAgent { name: name.to_string(), data_dir: self.agent_dir(name), child: None });
        }
    }

    fn agent_mut(&mut self, name: &str) -> Result<&mut LocalAgent> {
        self.agents.iter_mut().find(|a| a.name == name).with_context(|| format!("no local agent {name}"))
    }

    /// Starts (or restarts) an enrolled agent's `fifty-agent run`.
    pub fn start_agent(&mut self, name: &str) -> Result<()> {
        let log = log_file(&self.dir, name)?;
        let bin = self.bin_dir.join("fifty-agent");
        // Build agents package the sample shop with this binary (coordinator/sample-app).
        let sample = self.bin_dir.join("fifty-sample-service");
        let agent = self.agent_mut(name)?;
        let mut command = Command::new(bin);
        if sample.exists() {
            // Jobs get a clean environment: this one is passed on by name (with any the caller named).
            let names = std::env::var("FIFTY_JOBS_ENV")
                .map_or("FIFTY_SAMPLE_SERVICE".into(), |v| format!("{v},FIFTY_SAMPLE_SERVICE"));
            command.env("FIFTY_SAMPLE_SERVICE", sample).env("FIFTY_JOBS_ENV", names);
        }
        let child = command
            .args(["run", "--config"])
            .arg(agent.data_dir.join("agent.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start fifty-agent run for {name}"))?;
        agent.child = Some(child);
        Ok(())
    }

    /// Kills an agent with SIGKILL and waits for it to exit.
    pub async fn kill_agent(&mut self, name: &str) -> Result<()> {
        if let Some(mut child) = self.agent_mut(name)?.child.take() {
            child.kill().await.with_context(|| format!("kill agent {name}"))?;
        }
        Ok(())
    }

    /// Waits for an agent process to exit by itself and returns its exit status.
    pub async fn wait_agent_exit(&mut self, name: &str, deadline: Duration) -> Result<std::process::ExitStatus> {
        let agent = self.agent_mut(name)?;
        let child = agent.child.as_mut().with_context(|| format!("agent {name} is not running"))?;
        match tokio::time::timeout(deadline, child.wait()).await {
            Ok(status) => {
                agent.child = None;
                Ok(status?)
            }
            Err(_) => bail!("agent {name} still running after {deadline:?}"),
        }
    }

    /// The hosts as the API shows them.
    pub async fn hosts(&self) -> Result<Vec<HostView>> {
        self.client().get("/v1/hosts").await
    }

    /// Waits until every host in `names` has `state` ("ready" or "down").
    pub async fn wait_hosts(
        &self,
        names: &[&str],
        state: crate::fleet::HostState,
        deadline: Duration,
    ) -> Result<Vec<HostView>> {
        let what = format!("{} to be {}", names.join(", "), state.as_str());
        wait_for(&what, deadline, || async {
            let hosts = self.hosts().await?;
            let all = names.iter().all(|n| hosts.iter().any(|h| h.name == *n && h.state == state));
            Ok(all.then_some(hosts))
        })
        .await
    }

    /// Waits until every host in `names` is ready *and* has reported to the current leader
    /// (a new leader counts silent hosts as ready for a grace period; this waits for the real thing).
    pub async fn wait_reporting(&self, names: &[&str], deadline: Duration) -> Result<Vec<HostView>> {
        let what = format!("{} to report to the leader", names.join(", "));
        wait_for(&what, deadline, || async {
            let hosts = self.hosts().await?;
            let all = names.iter().all(|n| {
                hosts.iter().any(|h| h.name == *n && h.state == crate::fleet::HostState::Ready && h.last_seen.is_some())
            });
            Ok(all.then_some(hosts))
        })
        .await
    }

    /// The last `lines` lines of a process's log, for error messages.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A webhook receiver on loopback for the demo and the tests: answers every POST with 200 (or
/// with 500 to the first `fail_first` ones, to show retries) and keeps the bodies it accepted.
pub struct WebhookReceiver {
    addr: std::net::SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Every request seen, accepted or not: (X-Fifty-Delivery, answered status).
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>>,
}

impl WebhookReceiver {
    /// Starts it on a free port of 127.0.0.1; it lives as long as the process.
    pub fn start() -> Result<Self> {
        Self::start_failing(0)
    }

    /// Starts one that answers 500 to its first `fail_first` requests.
    pub fn start_failing(fail_first: usize) -> Result<Self> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>> = Default::default();
        let (b, s) = (bodies.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(&stream);
                let (mut length, mut delivery) = (0usize, String::new());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0).min(1 << 20);
                    }
                    if lower.starts_with("x-fifty-delivery:") {
                        delivery = line[17..].trim().to_string();
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let status = if s.lock().expect("seen").len() < fail_first { 500 } else { 200 };
                s.lock().expect("seen").push((delivery, status));
                if status == 200 {
                    b.lock().expect("bodies").push(String::from_utf8_lossy(&body).into_owned());
                }
                let _ = (&stream).write_all(
                    format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                );
            }
        });
        Ok(Self { addr, bodies, seen })
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The bodies accepted so far.
    pub fn received(&self) -> Vec<String> {
        self.bodies.lock().expect("bodies").clone()
    }
}

/// Streams token creations (descriptions `w-0`, `w-1`, ...) through the clients in turn until
/// stopped or `budget` is spent; remembers which ones the API acknowledged. For tests and
/// benchmarks that kill coordinators under writes and then check every acknowledged one.
pub struct Writer {
    acked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing through `clients`, for at most `budget` (and 1,000,000 attempts).
    pub fn start(clients: Vec<Client>, budget: Duration) -> Self {
        use std::sync::atomic::Ordering;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                // A failed attempt waits 20 ms, so a failover's instant refusals cannot use up
                // the budget.
                let started = Instant::now();
                for n in 0..1_000_000usize {
                    if started.elapsed() > budget || stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let client = &clients[n % clients.len()];
                    let req =
                        CreateToken { role: "read".into(), ttl: None, max_uses: None, description: format!("w-{n}") };
                    let sent = tokio::time::timeout(
                        Duration::from_secs(15),
                        client.post::<crate::views::TokenCreated>("/v1/tokens", &req),
                    )
                    .await;
                    match sent {
                        Ok(Ok(_)) => acked.lock().expect("acked lock").push(format!("w-{n}")),
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        };
        Writer { acked, stop, task }
    }

    /// How many writes were acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().expect("acked lock").len()
    }

    /// Stops writing; the acknowledged writes.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.task.await;
        self.acked.lock().expect("acked lock").clone()
    }
}

impl LocalCluster {
    /// Token descriptions as coordinator `i` itself holds them (a stale, local read), with counts.
    pub async fn token_descriptions(&self, i: usize) -> Result<std::collections::HashMap<String, usize>> {
        let tokens: Vec<crate::views::TokenView> = self.client_for(i).get("/v1/tokens?stale=true").await?;
        let mut counts = std::collections::HashMap::new();
        for t in tokens {
            *counts.entry(t.description).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Waits until every running coordinator has applied everything the leader committed;
    /// returns that commit index.
    pub async fn wait_converged(&self, deadline: Duration) -> Result<u64> {
        wait_for("every coordinator to apply the leader's commit index", deadline, || async {
            let views = self.views().await;
            let leader = views.iter().find(|(_, v)| v.leader_id.as_deref() == Some(v.node_id.as_str()));
            let Some((_, leader)) = leader else { return Ok(None) };
            let all = views.len() == self.running().len()
                && views.iter().all(|(_, v)| v.applied_index >= leader.commit_index);
            Ok(all.then_some(leader.commit_index))
        })
        .await
    }
}
