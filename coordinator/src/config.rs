//! The coordinator's one `Config`: TOML file, then `FIFTY_*` environment, then flags; checked once
//! at start.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use fifty_shared::config::{duration, env_var, load_toml};
use serde::{Deserialize, Serialize};

/// How a coordinator runs. Every key has a default except `data_dir` in production use.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the state (sled) and this node's TLS files live.
    pub data_dir: PathBuf,
    /// HTTPS API address (`FIFTY_HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// QUIC address for agents and peers (`FIFTY_QUIC_ADDR`).
    pub quic_addr: SocketAddr,
    /// How often agents report (`FIFTY_HEARTBEAT_INTERVAL`).
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// A host with no heartbeat for this long is `down` (`FIFTY_DOWN_AFTER`).
    #[serde(with = "duration")]
    pub down_after: Duration,
    /// Extra names and addresses the HTTPS certificate carries, for users who dial the API by a
    /// name other than `localhost`/`127.0.0.1`.
    pub tls_names: Vec<String>,
    /// If set, the bootstrap admin token is also written to this file (mode 0600) on the
    /// cluster's first start, for automation. It is always printed once on standard output.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Form a new cluster once this many coordinators (this one included) have found each other
    /// through `peers`. 1 (the default) forms a cluster of one at once.
    pub bootstrap_expect: usize,
    /// The other coordinators' QUIC addresses (`HOST:PORT`), for bootstrap.
    pub peers: Vec<String>,
    /// Join the running cluster this coordinator (`HOST:PORT`, QUIC) belongs to (`--join`).
    pub join: Option<String>,
    /// The address other coordinators and agents reach this one at, when it listens on
    /// 0.0.0.0 or ::. Defaults to the listen address.
    pub advertise_ip: Option<IpAddr>,
    /// The cluster CA certificate (PEM). Coordinators of one cluster share it: make it once with
    /// `fifty ca init`. A single coordinator without one creates its own on first start.
    pub ca_cert: Option<PathBuf>,
    /// The cluster CA key (PEM), beside `ca_cert`.
    pub ca_key: Option<PathBuf>,
    /// Snapshot the state and compact the Raft log past this many entries.
    pub snapshot_threshold: u64,
    /// How often the leader compares every coordinator's state digest (as `fifty cluster
    /// check` does) and logs an ERROR if they differ; 0s turns it off.
    #[serde(with = "duration")]
    pub consistency_check_interval: Duration,
    /// Enables the fault-injection routes (admin token only), for tests: `POST /v1/debug/isolate`
    /// drops this node's peer traffic (partitions); `POST /v1/debug/deploy` sends a host a deploy
    /// order with a broken signature, or overwrites a release's stored artifact with garbage on
    /// every coordinator (destroying that release), to test that agents refuse both. Never on in
    /// production.
    pub fault_injection: bool,
    /// Alert rules proposed by the leader when no rule has their name (`[[alert.rule]]`).
    pub alert: AlertConfig,
    /// With `join`: if a member of the cluster has this coordinator's address under another id
    /// (this node's data dir was lost), remove that member and add this node in its place
    /// (`--replace`). Flag only: never in the file, so a wiped node is never replaced silently.
    #[serde(skip)]
    pub replace: bool,
    /// Make this coordinator the only voter of its cluster, keeping its data, to recover from a
    /// lost quorum (`--force-new-cluster`). Flag only, for the one start that needs it.
    #[serde(skip)]
    pub force_new_cluster: bool,
    /// `[api]`: how long the HTTPS API waits for clients, and how many it serves at once.
    pub api: ApiConfig,
    /// `[retention]`: how long commits, logs, incidents and alerts are kept (`retention`).
    pub retention: crate::retention::RetentionConfig,
    /// `[links]`: how agents' links are admitted, and the QUIC socket's receive buffer.
    pub links: LinksConfig,
}

/// `[links]`: what keeps a fleet reconnecting at once (after a failover, a stall, a restart)
/// from swamping the coordinator it reaches.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LinksConfig {
    /// Agent links admitted per second at most (with a burst of as many); an agent over it is
    /// told when to try again (`close::BUSY`). Also sizes a new leader's grace period: every
    /// host gets the time it takes to admit the whole fleet at this rate, on top of
    /// `2 × down_after`.
    pub handshake_rate: u32,
    /// The receive buffer asked for the coordinator's UDP socket (`SO_RCVBUF`), in bytes: a
    /// fleet's datagrams arriving at once queue here instead of being dropped. The kernel caps
    /// it at `net.core.rmem_max`; the coordinator logs a warning when it did.
    pub udp_recv_buffer: usize,
}

impl Default for LinksConfig {
    fn default() -> Self {
        Self { handshake_rate: 1000, udp_recv_buffer: 8 << 20 }
    }
}

/// `[api]`: the bounds every HTTPS API client is held to, so that slow, idle or numerous
/// clients cannot hold the coordinator's connections, memory or file descriptors.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// A new connection must complete its TLS handshake within this.
    #[serde(with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Once the first byte of a request arrives, its head (request line and headers) must be
    /// complete within this.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A request's body must be complete within this after its head (else 408).
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// A connection with no request in progress (before its first, or after an answer) is
    /// closed after this.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Connections beyond this many at once are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a follower waits for the leader's answer to a request it forwarded before
    /// answering 503 (connecting to the leader gets at most 3 s of it). More than the leader's
    /// own 10 s bound on committing a write.
    #[serde(with = "duration")]
    pub forward_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            forward_timeout: Duration::from_secs(15),
        }
    }
}

/// `[alert]`: alert rules from the config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// `[[alert.rule]]` tables, as `fifty alert rule add` takes them.
    pub rule: Vec<crate::alerts::RuleSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/fifty"),
            http_addr: "0.0.0.0:7070".parse().expect("literal address"),
            quic_addr: "0.0.0.0:7071".parse().expect("literal address"),
            heartbeat_interval: Duration::from_secs(1),
            down_after: Duration::from_secs(5),
            tls_names: Vec::new(),
            bootstrap_token_file: None,
            bootstrap_expect: 1,
            peers: Vec::new(),
            join: None,
            advertise_ip: None,
            ca_cert: None,
            ca_key: None,
            snapshot_threshold: 10_000,
            consistency_check_interval: Duration::from_secs(600),
            fault_injection: false,
            alert: AlertConfig::default(),
            replace: false,
            force_new_cluster: false,
            api: ApiConfig::default(),
            retention: crate::retention::RetentionConfig::default(),
            links: LinksConfig::default(),
        }
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Config file (TOML).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTPS API address.
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// QUIC address.
    #[arg(long)]
    pub quic_addr: Option<SocketAddr>,
    /// Write the bootstrap admin token to this file on first start.
    #[arg(long)]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Join the running cluster of the coordinator at HOST:PORT (its QUIC address).
    #[arg(long)]
    pub join: Option<String>,
    /// With --join: this coordinator lost its data dir and a member with its address is still
    /// listed; the leader removes that member (once its address no longer answers as it) and
    /// adds this one in its place.
    #[arg(long)]
    pub replace: bool,
    /// Recover from a lost quorum: make this coordinator the only voter of its cluster, keeping
    /// its data; then add the others back with --join (README: Three (or five) coordinators).
    #[arg(long)]
    pub force_new_cluster: bool,
}

impl Config {
    /// Loads the file named by `--config` (if any), applies `FIFTY_*` variables and flags, and checks
    /// the result.
    pub fn load(flags: &Overrides) -> Result<Self> {
        let mut cfg: Config = match &flags.config {
            Some(path) => load_toml(path)?,
            None => Config::default(),
        };
        if let Some(v) = env_var::<PathBuf>("FIFTY_DATA_DIR")? {
            cfg.data_dir = v;
        }
        if let Some(v) = env_var::<SocketAddr>("FIFTY_HTTP_ADDR")? {
            cfg.http_addr = v;
        }
        if let Some(v) = env_var::<SocketAddr>("FIFTY_QUIC_ADDR")? {
            cfg.quic_addr = v;
        }
        if let Some(v) = env_var::<String>("FIFTY_HEARTBEAT_INTERVAL")? {
            cfg.heartbeat_interval = fifty_shared::config::parse_duration(&v)
                .map_err(|e| anyhow::anyhow!("environment variable FIFTY_HEARTBEAT_INTERVAL: {e}"))?;
        }
        if let Some(v) = env_var::<String>("FIFTY_DOWN_AFTER")? {
            cfg.down_after = fifty_shared::config::parse_duration(&v)
                .map_err(|e| anyhow::anyhow!("environment variable FIFTY_DOWN_AFTER: {e}"))?;
        }
        if let Some(v) = &flags.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = flags.http_addr {
            cfg.http_addr = v;
        }
        if let Some(v) = flags.quic_addr {
            cfg.quic_addr = v;
        }
        if let Some(v) = &flags.bootstrap_token_file {
            cfg.bootstrap_token_file = Some(v.clone());
        }
        if let Some(v) = env_var::<String>("FIFTY_JOIN")? {
            cfg.join = Some(v);
        }
        if let Some(v) = &flags.join {
            cfg.join = Some(v.clone());
        }
        cfg.replace = flags.replace;
        cfg.force_new_cluster = flags.force_new_cluster;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval < Duration::from_millis(100) {
            bail!("config key heartbeat_interval: {:?} is too short (at least 100ms)", self.heartbeat_interval);
        }
        if self.down_after <= self.heartbeat_interval * 2 {
            bail!(
                "config key down_after: {:?} must be more than twice heartbeat_interval ({:?}), or healthy hosts flap",
                self.down_after,
                self.heartbeat_interval
            );
        }
        for (i, spec) in self.alert.rule.iter().enumerate() {
            if let Err(e) = spec.to_rule("config", std::time::SystemTime::now()) {
                bail!("config key alert.rule[{i}] ({:?}): {e}", spec.name);
            }
        }
        if self.bootstrap_expect == 0 {
            bail!("config key bootstrap_expect: must be at least 1");
        }
        let others = self.other_peers();
        if self.bootstrap_expect > 1 && others + 1 < self.bootstrap_expect {
            bail!(
                "config key peers: bootstrap_expect = {} needs at least {} peer addresses besides this \
                 coordinator's own, got {others}",
                self.bootstrap_expect,
                self.bootstrap_expect - 1,
            );
        }
        // Bootstrap forms a cluster as soon as bootstrap_expect coordinators have found each
        // other: with more listed than that, two disjoint groups could each form one.
        if others + 1 > self.bootstrap_expect {
            bail!(
                "config keys peers and bootstrap_expect: peers lists {} coordinators besides this one, so the \
                 cluster has {} but bootstrap_expect is {}; two groups of {} could each form a cluster of their \
                 own. Set bootstrap_expect = {} (this coordinator's own address in peers counts only when it is \
                 written exactly as quic_addr or advertise_ip:port)",
                others,
                others + 1,
                self.bootstrap_expect,
                self.bootstrap_expect,
                others + 1
            );
        }
        if self.replace && self.join.is_none() {
            bail!("--replace needs --join: say which running coordinator to join through");
        }
        if self.force_new_cluster && self.join.is_some() {
            bail!("--force-new-cluster and --join (or config key join) exclude each other");
        }
        if self.ca_cert.is_some() != self.ca_key.is_some() {
            bail!("config keys ca_cert and ca_key: set both or neither");
        }
        if self.links.handshake_rate == 0 {
            bail!("config key links.handshake_rate: must be at least 1 (agent links admitted per second)");
        }
        if self.links.udp_recv_buffer < 64 * 1024 {
            bail!(
                "config key links.udp_recv_buffer: {} bytes is too small (at least 65536)",
                self.links.udp_recv_buffer
            );
        }
        if self.snapshot_threshold < 10 {
            bail!("config key snapshot_threshold: {} is too small (at least 10)", self.snapshot_threshold);
        }
        let api = &self.api;
        for (key, d) in [
            ("tls_handshake_timeout", api.tls_handshake_timeout),
            ("header_read_timeout", api.header_read_timeout),
            ("body_read_timeout", api.body_read_timeout),
            ("idle_timeout", api.idle_timeout),
            ("forward_timeout", api.forward_timeout),
        ] {
            if d < Duration::from_millis(100) {
                bail!("config key api.{key}: {d:?} is too short (at least 100ms)");
            }
        }
        let r = &self.retention;
        for (key, d) in [("commits", r.commits), ("logs", r.logs), ("incidents", r.incidents), ("alerts", r.alerts)] {
            if !d.is_zero() && d < Duration::from_secs(3600) {
                bail!("config key retention.{key}: {d:?} is too short (at least 1h, or 0s to keep forever)");
            }
        }
        if !r.interval.is_zero() && r.interval < Duration::from_secs(1) {
            bail!(
                "config key retention.interval: {:?} is too short (at least 1s, or 0s to turn retention off)",
                r.interval
            );
        }
        if api.max_connections == 0 {
            bail!("config key api.max_connections: must be at least 1");
        }
        Ok(())
    }

    /// How many distinct addresses in `peers` are not this coordinator's own.
    fn other_peers(&self) -> usize {
        let own = [
            Some(self.quic_addr.to_string()),
            self.advertise_ip.map(|ip| SocketAddr::new(ip, self.quic_addr.port()).to_string()),
        ];
        let mut others: Vec<&String> = self.peers.iter().filter(|p| !own.iter().flatten().any(|o| o == *p)).collect();
        others.sort();
        others.dedup();
        others.len()
    }

    /// Whether this coordinator is (or will be) one of several.
    pub fn clustered(&self) -> bool {
        self.bootstrap_expect > 1 || self.join.is_some() || !self.peers.is_empty()
    }

    /// The address others reach `bound` at.
    pub fn advertised(&self, bound: SocketAddr) -> Result<SocketAddr> {
        match (self.advertise_ip, bound.ip().is_unspecified()) {
            (Some(ip), _) => Ok(SocketAddr::new(ip, bound.port())),
            (None, false) => Ok(bound),
            (None, true) if !self.clustered() => Ok(SocketAddr::new([127, 0, 0, 1].into(), bound.port())),
            (None, true) => bail!(
                "config key advertise_ip: this coordinator listens on {bound}; say which address other coordinators reach it at"
            ),
        }
    }

    /// This node's TLS files: `ca.pem` (public, for `FIFTY_CACERT`), `node.pem`, `node-key.pem`.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// The sled database.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }

    /// Where the artifacts this coordinator holds live (`store::blobs`).
    pub fn blob_dir(&self) -> PathBuf {
        self.data_dir.join("blobs")
    }

    /// Path of the CA certificate users point `FIFTY_CACERT` at.
    pub fn ca_path(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }
}

pub use fifty_shared::config::write_private;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_named() {
        let err = toml::from_str::<Config>("data_dir = \"/x\"\nheartbeat = \"1s\"\n").unwrap_err().to_string();
        assert!(err.contains("heartbeat"), "{err}");
    }

    #[test]
    fn a_bad_duration_is_named() {
        let err = toml::from_str::<Config>("down_after = \"five\"\n").unwrap_err().to_string();
        assert!(err.contains("down_after") && err.contains("not a duration"), "{err}");
    }

    #[test]
    fn retention_has_defaults_and_is_checked() {
        let cfg: Config = toml::from_str("[retention]\nlogs = \"14d\"\nalerts = \"0s\"\n").unwrap();
        assert_eq!(cfg.retention.logs, Duration::from_secs(14 * 86_400));
        assert_eq!(cfg.retention.commits, Duration::from_secs(90 * 86_400), "the default");
        assert_eq!(
            cfg.retention.describe(),
            "commits 90d, logs 14d, incidents 365d, alerts forever (checked every 1h)"
        );
        cfg.validate().unwrap();
        let cfg: Config = toml::from_str("[retention]\ncommits = \"10m\"\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("retention.commits") && err.contains("at least 1h"), "{err}");
        let err = toml::from_str::<Config>("[retention]\nlog = \"1d\"\n").unwrap_err().to_string();
        assert!(err.contains("log"), "{err}");
        let cfg: Config = toml::from_str("[retention]\ninterval = \"0s\"\n").unwrap();
        assert_eq!(cfg.retention.describe(), "off");
    }

    #[test]
    fn api_limits_have_defaults_and_are_checked() {
        let cfg: Config = toml::from_str("[api]\nidle_timeout = \"2s\"\n").unwrap();
        assert_eq!(cfg.api.idle_timeout, Duration::from_secs(2));
        assert_eq!(cfg.api.max_connections, 1024);
        cfg.validate().unwrap();
        let cfg: Config = toml::from_str("[api]\nmax_connections = 0\n").unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("api.max_connections"));
        let cfg: Config = toml::from_str("[api]\nheader_read_timeout = \"0s\"\n").unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("api.header_read_timeout"));
        let err = toml::from_str::<Config>("[api]\nidle_timeout = \"100000000h\"\n").unwrap_err().to_string();
        assert!(err.contains("idle_timeout") && err.contains("maximum"), "{err}");
        assert!(toml::from_str::<Config>("[api]\nidle = \"1s\"\n").unwrap_err().to_string().contains("idle"));
    }

    #[test]
    fn down_after_must_exceed_two_heartbeats() {
        let cfg: Config = toml::from_str("heartbeat_interval = \"2s\"\ndown_after = \"3s\"\n").unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("down_after"));
    }

    #[test]
    fn alert_rules_in_the_config_are_checked_at_start() {
        let good = "[[alert.rule]]\nname = \"web-down\"\nkind = \"host_down\"\nfor = \"5m\"\nseverity = \"critical\"\n";
        let cfg: Config = toml::from_str(good).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.alert.rule[0].name, "web-down");
        let bad = "[[alert.rule]]\nname = \"hot\"\nkind = \"cpu\"\n";
        let err = toml::from_str::<Config>(bad).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("alert.rule[0]") && err.contains("threshold"), "{err}");
        let typo = "[[alert.rule]]\nname = \"x\"\nkind = \"cpu\"\nthreshhold = \"90\"\n";
        assert!(toml::from_str::<Config>(typo).unwrap_err().to_string().contains("threshhold"));
    }

    fn cluster_config(expect: usize, peers: &[&str]) -> Config {
        let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
        let text =
            format!("quic_addr = \"10.0.0.1:7071\"\nbootstrap_expect = {expect}\npeers = [{}]\n", peers.join(", "));
        toml::from_str(&text).unwrap()
    }

    /// More coordinators listed than bootstrap_expect could form two clusters: refused, naming
    /// both keys and the fix. This coordinator's own address in the list does not count.
    #[test]
    fn peers_beyond_bootstrap_expect_are_refused() {
        let three = ["10.0.0.1:7071", "10.0.0.2:7071", "10.0.0.3:7071"];
        cluster_config(3, &three).validate().expect("three listed (this one included), three expected");
        cluster_config(3, &three[1..]).validate().expect("the two others listed");
        let err = cluster_config(2, &three).validate().unwrap_err().to_string();
        assert!(err.contains("peers and bootstrap_expect") && err.contains("bootstrap_expect = 3"), "{err}");
        let five = ["10.0.0.2:7071", "10.0.0.3:7071", "10.0.0.4:7071", "10.0.0.5:7071"];
        let err = cluster_config(3, &five).validate().unwrap_err().to_string();
        assert!(err.contains("two groups of 3") && err.contains("bootstrap_expect = 5"), "{err}");
        let err = cluster_config(1, &three[1..2]).validate().unwrap_err().to_string();
        assert!(
            err.contains("bootstrap_expect = 2"),
            "a single coordinator with peers would form its own cluster: {err}"
        );
        let err = cluster_config(3, &three[1..2]).validate().unwrap_err().to_string();
        assert!(err.contains("config key peers") && err.contains("at least 2"), "{err}");
    }

    #[test]
    fn replace_and_force_new_cluster_are_checked() {
        let mut cfg = Config { replace: true, ..Config::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("--replace needs --join"));
        cfg.join = Some("10.0.0.2:7071".into());
        cfg.validate().unwrap();
        cfg.force_new_cluster = true;
        assert!(cfg.validate().unwrap_err().to_string().contains("--force-new-cluster"));
    }
}
