//! The agent's one `Config`: `agent.toml` (written by `fifty-agent join`), then `FIFTY_*`
//! environment, then flags.

use std::path::PathBuf;

use anyhow::{bail, Result};
use fifty_shared::config::{env_var, load_toml};
use serde::{Deserialize, Serialize};

/// How an agent runs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the identity (key, certificate, CA) lives (`FIFTY_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Coordinators' QUIC addresses, `HOST:PORT`; tried in turn (`FIFTY_COORDINATORS`,
    /// comma-separated).
    pub coordinators: Vec<String>,
    /// `[service]`: values a release's `run`, `restart` and health URL refer to as `{name}`,
    /// e.g. `port = 18081`.
    #[serde(default)]
    pub service: std::collections::BTreeMap<String, toml::Value>,
    /// `[sidecar]`: the local A/B endpoint.
    #[serde(default)]
    pub sidecar: SidecarConfig,
    /// `[jobs]`: how CI jobs run on a build host.
    #[serde(default)]
    pub jobs: JobsConfig,
}

/// `[jobs]` of `agent.toml`: who CI jobs run as and where their directories live.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// The unprivileged user jobs run as (`FIFTY_JOBS_USER`), e.g. `fifty-job`. Switching to it
    /// needs an agent running as root; `fifty-agent join` run as root creates `fifty-job` and
    /// sets it here. Unset, jobs run as the agent's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Where each job gets its directory (`FIFTY_JOBS_DIR`); default `<data_dir>-jobs`, beside the
    /// data dir, which jobs must not be able to enter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Names of the agent's environment variables passed on to jobs (`FIFTY_JOBS_ENV`,
    /// comma-separated), e.g. `["CARGO_HOME"]`; jobs get no others of the agent's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// Where `fifty-agent join` keeps a host's identity and `agent.toml` unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/fifty-agent";

/// The user `fifty-agent join` creates for jobs when it runs as root.
pub const DEFAULT_JOB_USER: &str = "fifty-job";

/// `[sidecar]` of `agent.toml`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// Where the A/B sidecar listens while this host serves an experiment: a loopback address
    /// (`FIFTY_SIDECAR_LISTEN`).
    pub listen: String,
}

/// The sidecar's default address.
pub const DEFAULT_SIDECAR: &str = "127.0.0.1:7072";

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig { listen: DEFAULT_SIDECAR.to_string() }
    }
}

impl SidecarConfig {
    /// The listen address, refused unless it is loopback.
    pub fn addr(&self) -> Result<std::net::SocketAddr> {
        let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() else {
            bail!("config key sidecar.listen: {:?} is not IP:PORT, e.g. \"{DEFAULT_SIDECAR}\"", self.listen);
        };
        if !addr.ip().is_loopback() {
            bail!(
                "config key sidecar.listen: {addr} is not a loopback address; the A/B sidecar only listens on \
                 127.0.0.1 or ::1"
            );
        }
        Ok(addr)
    }
}

impl Config {
    /// `[service]` as text, for filling `{name}` placeholders; `sidecar` is the A/B sidecar's
    /// address unless `[service]` sets it (the service also gets it as `FIFTY_SIDECAR`).
    pub fn service_vars(&self) -> std::collections::BTreeMap<String, String> {
        let mut vars: std::collections::BTreeMap<String, String> = self
            .service
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        vars.entry("sidecar".into()).or_insert_with(|| self.sidecar.listen.clone());
        vars
    }
}

impl Config {
    /// Loads `path`, applies the environment and checks the result.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let mut cfg: Config = load_toml(path)?;
        if let Some(v) = env_var::<PathBuf>("FIFTY_DATA_DIR")? {
            cfg.data_dir = v;
        }
        if let Some(v) = env_var::<String>("FIFTY_COORDINATORS")? {
            cfg.coordinators = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        if let Some(v) = env_var::<String>("FIFTY_SIDECAR_LISTEN")? {
            cfg.sidecar.listen = v;
        }
        if let Some(v) = env_var::<String>("FIFTY_JOBS_USER")? {
            cfg.jobs.user = Some(v).filter(|u| !u.is_empty());
        }
        if let Some(v) = env_var::<PathBuf>("FIFTY_JOBS_DIR")? {
            cfg.jobs.dir = Some(v);
        }
        if let Some(v) = env_var::<String>("FIFTY_JOBS_ENV")? {
            cfg.jobs.env = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.coordinators.is_empty() {
            bail!("config key coordinators: list at least one coordinator address, e.g. [\"10.0.0.5:7071\"]");
        }
        for c in &self.coordinators {
            if c.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                bail!("config key coordinators: {c:?} is not HOST:PORT");
            }
        }
        self.sidecar.addr()?;
        if let Some(user) = &self.jobs.user {
            let ok = !user.is_empty()
                && user.len() <= 32
                && !user.starts_with('-')
                && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                bail!("config key jobs.user: {user:?} is not a user name (letters, digits, '.', '_', '-')");
            }
        }
        for name in &self.jobs.env {
            let ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                bail!("config key jobs.env: {name:?} is not an environment variable name");
            }
        }
        if let Some(dir) = &self.jobs.dir {
            if !dir.is_absolute() || dir.starts_with(&self.data_dir) {
                bail!(
                    "config key jobs.dir: {} must be an absolute path outside data_dir ({}), which jobs cannot enter",
                    dir.display(),
                    self.data_dir.display()
                );
            }
        }
        Ok(())
    }

    /// Where jobs' directories live: `jobs.dir`, or `<data_dir>-jobs`.
    pub fn jobs_dir(&self) -> PathBuf {
        self.jobs.dir.clone().unwrap_or_else(|| {
            let mut name = self.data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "fifty-agent".into());
            name.push("-jobs");
            self.data_dir.with_file_name(name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_addresses_are_named() {
        let err = toml::from_str::<Config>("data_dir = \"/x\"\ncoordinators = []\nport = 1\n").unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
        let cfg: Config = toml::from_str("data_dir = \"/x\"\ncoordinators = [\"nowhere\"]\n").unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("HOST:PORT"));
    }

    #[test]
    fn jobs_get_a_user_and_a_directory_outside_the_data_dir() {
        let base = "data_dir = \"/var/lib/fifty-agent\"\ncoordinators = [\"c:7071\"]\n";
        let cfg: Config = toml::from_str(base).unwrap();
        assert_eq!(cfg.jobs, JobsConfig::default());
        assert_eq!(cfg.jobs_dir(), PathBuf::from("/var/lib/fifty-agent-jobs"));
        let cfg: Config =
            toml::from_str(&format!("{base}[jobs]\nuser = \"fifty-job\"\ndir = \"/srv/jobs\"\n")).unwrap();
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.jobs_dir(), PathBuf::from("/srv/jobs"));
        let cfg: Config = toml::from_str(&format!("{base}[jobs]\ndir = \"/var/lib/fifty-agent/work\"\n")).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("jobs.dir") && err.contains("outside data_dir"), "{err}");
        let cfg: Config = toml::from_str(&format!("{base}[jobs]\nenv = [\"CARGO_HOME\", \"A=B\"]\n")).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("jobs.env"));
        let cfg: Config = toml::from_str(&format!("{base}[jobs]\nuser = \"-x\"\n")).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("jobs.user"));
        let err = toml::from_str::<Config>(&format!("{base}[jobs]\nusr = \"x\"\n")).unwrap_err().to_string();
        assert!(err.contains("usr"), "{err}");
    }

    #[test]
    fn the_sidecar_listens_on_loopback_only() {
        let base = "data_dir = \"/x\"\ncoordinators = [\"c:7071\"]\n";
        let cfg: Config = toml::from_str(base).unwrap();
        assert_eq!(cfg.sidecar.addr().unwrap().to_string(), "127.0.0.1:7072");
        assert_eq!(cfg.service_vars()["sidecar"], "127.0.0.1:7072", "the service learns where to ask");
        let cfg: Config = toml::from_str(&format!("{base}[sidecar]\nlisten = \"0.0.0.0:7072\"\n")).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("sidecar.listen") && err.contains("loopback"), "{err}");
        let cfg: Config = toml::from_str(&format!("{base}[sidecar]\nlisten = \"[::1]:9000\"\n")).unwrap();
        assert!(cfg.validate().is_ok());
    }
}
