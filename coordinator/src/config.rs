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
    /// Enables `POST /v1/debug/isolate` (admin only), which drops this node's peer traffic: for
    /// partition tests. Never on in production.
    pub fault_injection: bool,
    /// Alert rules proposed by the leader when no rule has their name (`[[alert.rule]]`).
    pub alert: AlertConfig,
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
        if self.bootstrap_expect > 1 && self.peers.len() + 1 < self.bootstrap_expect {
            bail!(
                "config key peers: bootstrap_expect = {} needs at least {} peer addresses, got {}",
                self.bootstrap_expect,
                self.bootstrap_expect - 1,
                self.peers.len()
            );
        }
        if self.ca_cert.is_some() != self.ca_key.is_some() {
            bail!("config keys ca_cert and ca_key: set both or neither");
        }
        if self.snapshot_threshold < 10 {
            bail!("config key snapshot_threshold: {} is too small (at least 10)", self.snapshot_threshold);
        }
        Ok(())
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
}
