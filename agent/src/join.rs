//! `fifty-agent join`: enroll this host. Makes a key pair and a certificate request, trusts the
//! coordinator through the CA fingerprint in the join token, and keeps what the coordinator signs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use fifty_shared::codec::{read_frame, write_frame};
use fifty_shared::ids::{HostName, Labels};
use fifty_shared::tls::{self, CertAndKey, COORDINATOR_NAME};
use fifty_shared::token::JoinToken;
use fifty_shared::wire::{close, EnrollRequest, EnrollResponse};

use crate::config::Config;
use crate::identity::Identity;

/// What `join` needs.
pub struct JoinRequest<'a> {
    /// Coordinator QUIC address, `HOST:PORT`.
    pub coordinator: &'a str,
    /// The join token as printed by `fifty token create --role agent`.
    pub token: &'a str,
    /// This host's name.
    pub name: &'a str,
    /// This host's labels, `k=v,...`.
    pub labels: &'a str,
    /// Where to keep the identity.
    pub data_dir: &'a Path,
    /// `[service]` settings for agent.toml, `k=v,...` (e.g. `port=18081`).
    pub service: &'a str,
    /// Where the A/B sidecar listens (a loopback `IP:PORT`; default 127.0.0.1:7072).
    pub sidecar: Option<&'a str>,
}

/// How many ports, from the default one up, `join` considers for the A/B sidecar.
const SIDECAR_PORTS: u16 = 100;

/// The sidecar addresses other agents on this host are configured with: those in the
/// `agent.toml` of every data dir beside `data_dir` (e.g. `/var/lib/fifty-agent-2` beside
/// `/var/lib/fifty-agent`) and of the default data dir. A sidecar listens only while its host
/// serves an experiment, so a free port is not enough to tell.
fn claimed_sidecars(data_dir: &Path) -> std::collections::BTreeSet<SocketAddr> {
    let own = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    let mut dirs: Vec<std::path::PathBuf> = vec![crate::config::DEFAULT_DATA_DIR.into()];
    if let Some(Ok(entries)) = own.parent().map(std::fs::read_dir) {
        dirs.extend(entries.flatten().map(|e| e.path()));
    }
    dirs.into_iter()
        .filter(|dir| dir.canonicalize().map_or(true, |d| d != own))
        .filter_map(|dir| std::fs::read_to_string(dir.join("agent.toml")).ok())
        .filter_map(|text| toml::from_str::<Config>(&text).ok())
        .filter_map(|config| config.sidecar.addr().ok())
        .collect()
}

/// The first address from `default` up (same IP, at most [`SIDECAR_PORTS`] ports) that no other
/// agent claims and that is not `in_use`.
fn first_free_sidecar(
    default: SocketAddr,
    claimed: &std::collections::BTreeSet<SocketAddr>,
    in_use: impl Fn(SocketAddr) -> bool,
) -> Option<SocketAddr> {
    (0..SIDECAR_PORTS)
        .filter_map(|i| default.port().checked_add(i))
        .map(|port| SocketAddr::new(default.ip(), port))
        .find(|addr| !claimed.contains(addr) && !in_use(*addr))
}

/// Resolves `HOST:PORT`.
pub async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolve coordinator address {addr:?}"))?
        .next()
        .ok_or_else(|| anyhow!("coordinator address {addr:?} resolves to nothing"))
}

/// A client endpoint on an ephemeral port of the right address family.
/// A coordinator on loopback gets a socket bound to loopback too, so nothing listens beyond it.
pub fn client_endpoint(peer: SocketAddr) -> Result<quinn::Endpoint> {
    let local: SocketAddr = match (peer.is_ipv6(), peer.ip().is_loopback()) {
        (false, true) => "127.0.0.1:0".parse()?,
        (true, true) => "[::1]:0".parse()?,
        (false, false) => "0.0.0.0:0".parse()?,
        (true, false) => "[::]:0".parse()?,
    };
    quinn::Endpoint::client(local).context("open a UDP socket")
}

/// Asks the coordinator at `coordinator` to enroll `name`, and returns the identity it signed.
/// A coordinator that is not the leader points at the leader, which is asked next. Writes
/// nothing: [`join`] keeps the result on disk; the capacity benchmark keeps it in memory.
pub async fn enroll(coordinator: &str, token: &JoinToken, name: &HostName, labels: &Labels) -> Result<Identity> {
    Ok(enroll_with_coordinators(coordinator, token, name, labels).await?.0)
}

/// [`enroll`], also returning every coordinator's QUIC address as the leader listed them.
pub async fn enroll_with_coordinators(
    coordinator: &str,
    token: &JoinToken,
    name: &HostName,
    labels: &Labels,
) -> Result<(Identity, Vec<String>)> {
    let (key_pem, csr_pem) = tls::new_host_key_and_csr(name)?;
    let mut target = coordinator.to_string();
    for _ in 0..5 {
        match enroll_once(&target, token, name, labels, &csr_pem).await? {
            Enrolled::Yes { cert_pem, ca_pem, coordinators } => {
                return Ok((Identity { cert: CertAndKey { cert_pem, key_pem }, ca_pem }, coordinators))
            }
            Enrolled::AskLeader(leader) if !leader.is_empty() => target = leader,
            Enrolled::AskLeader(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                target = coordinator.to_string();
            }
        }
    }
    bail!("no coordinator leader accepted the enrollment (tried {coordinator} and the leaders it named)")
}

enum Enrolled {
    Yes { cert_pem: String, ca_pem: String, coordinators: Vec<String> },
    AskLeader(String),
}

async fn enroll_once(
    coordinator: &str,
    token: &JoinToken,
    name: &HostName,
    labels: &Labels,
    csr_pem: &str,
) -> Result<Enrolled> {
    let csr_pem = csr_pem.to_string();
    let addr = resolve(coordinator).await?;
    let endpoint = client_endpoint(addr)?;
    let connecting = endpoint
        .connect_with(tls::enroll_client_config(&token.ca_fingerprint)?, addr, COORDINATOR_NAME)
        .context("start connecting")?;
    let conn = tokio::time::timeout(Duration::from_secs(15), connecting)
        .await
        .map_err(|_| anyhow!("no answer from a coordinator at {addr} within 15 s"))?
        .map_err(|e| anyhow!("could not connect to the coordinator at {addr}: {e}"))?;
    let not_leader = |conn: &quinn::Connection| match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code.into_inner() as u32 == close::NOT_LEADER => {
            Some(Enrolled::AskLeader(String::from_utf8_lossy(&c.reason).into_owned()))
        }
        _ => None,
    };
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return not_leader(&conn).ok_or_else(|| anyhow!("open enrollment stream: {e}")),
    };
    let request = EnrollRequest {
        token_secret: token.secret.clone(),
        name: name.clone(),
        labels: labels.clone(),
        csr_pem,
        agent_version: fifty_shared::VERSION.to_string(),
    };
    let sent = write_frame(&mut send, &request).await;
    let _ = send.finish();
    let response = match sent {
        Ok(()) => tokio::time::timeout(Duration::from_secs(30), read_frame::<EnrollResponse, _>(&mut recv))
            .await
            .map_err(|_| anyhow!("the coordinator did not answer the enrollment within 30 s"))?,
        Err(e) => Err(e),
    };
    let response = match response {
        Ok(Some(r)) => r,
        Ok(None) => {
            return not_leader(&conn).ok_or_else(|| anyhow!("the coordinator closed the stream without answering"))
        }
        Err(e) => return not_leader(&conn).ok_or_else(|| anyhow!("read enrollment answer: {e}")),
    };
    conn.close(close::DONE.into(), b"enrolled");
    endpoint.wait_idle().await;
    let (cert_pem, ca_pem, coordinators) = match response {
        EnrollResponse::Enrolled { cert_pem, ca_pem, coordinators } => (cert_pem, ca_pem, coordinators),
        EnrollResponse::Refused { reason } => bail!("the coordinator refused to enroll {name}: {reason}"),
    };
    tls::check_ca_fingerprint(&ca_pem, &token.ca_fingerprint).context("the CA the coordinator sent")?;
    Ok(Enrolled::Yes { cert_pem, ca_pem, coordinators })
}

/// Enrolls the host and writes its identity and an `agent.toml` into the data dir.
pub async fn join(req: JoinRequest<'_>) -> Result<()> {
    let token = JoinToken::parse(req.token)?;
    let name = HostName::new(req.name)?;
    let labels: Labels = req.labels.parse()?;
    let (identity, mut coordinators) = enroll_with_coordinators(req.coordinator, &token, &name, &labels).await?;
    identity.save(req.data_dir)?;
    // The address the operator gave first, then every coordinator the cluster listed.
    coordinators.retain(|c| c != req.coordinator);
    coordinators.insert(0, req.coordinator.to_string());
    let mut service = std::collections::BTreeMap::new();
    for kv in req.service.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--service {kv:?}: expected key=value, e.g. port=18081");
        };
        let value = match v.trim().parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => toml::Value::String(v.trim().to_string()),
        };
        service.insert(k.trim().to_string(), value);
    }
    let mut sidecar = crate::config::SidecarConfig::default();
    if let Some(listen) = req.sidecar.filter(|s| !s.is_empty()) {
        sidecar.listen = listen.to_string();
        sidecar.addr().context("--sidecar")?;
    } else {
        let default = sidecar.addr().expect("the default sidecar address is valid");
        let claimed = claimed_sidecars(req.data_dir);
        let chosen = first_free_sidecar(default, &claimed, |addr| std::net::TcpListener::bind(addr).is_err())
            .with_context(|| {
                format!(
                    "no free port for the A/B sidecar from {default} to {} (another agent on this host has each); \
                     give one with --sidecar 127.0.0.1:PORT",
                    SIDECAR_PORTS - 1 + default.port()
                )
            })?;
        if chosen != default {
            println!(
                "The A/B sidecar's default address {default} is taken on this host (another agent's, or in use): this \
                 agent's sidecar listens on {chosen} ([sidecar] listen in agent.toml)."
            );
        }
        sidecar.listen = chosen.to_string();
    }
    // Jobs run as a user of their own when the agent can switch to one (it runs as root).
    let mut jobs = crate::config::JobsConfig::default();
    if crate::sandbox::is_root() {
        let user = crate::config::DEFAULT_JOB_USER;
        crate::sandbox::create_user(user).context("create the user CI jobs run as")?;
        println!("CI jobs on this host run as the user {user} ([jobs] user in agent.toml).");
        jobs.user = Some(user.to_string());
    } else {
        println!(
            "Note: not running as root, so CI jobs on this host will run as your own user and can read its \
             identity; join and run as root to isolate them."
        );
    }
    let config = Config { data_dir: req.data_dir.to_path_buf(), coordinators, service, sidecar, jobs };
    let config_path = req.data_dir.join("agent.toml");
    // Owner-only: `[service]` settings may hold secrets the release's commands use.
    fifty_shared::config::write_private(&config_path, &toml::to_string(&config)?)
        .with_context(|| format!("write {}", config_path.display()))?;
    println!("Enrolled {name} ({labels}). Identity in {}.", req.data_dir.join("identity").display());
    println!("Start the agent with:\n\n    fifty-agent run --config {}", config_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_port_another_agent_claims_or_something_uses_is_skipped() {
        let default: SocketAddr = "127.0.0.1:7072".parse().unwrap();
        let none = std::collections::BTreeSet::new();
        assert_eq!(first_free_sidecar(default, &none, |_| false), Some(default));
        let claimed = ["127.0.0.1:7072".parse().unwrap()].into_iter().collect();
        let in_use = |a: SocketAddr| a.port() == 7073;
        assert_eq!(first_free_sidecar(default, &claimed, in_use), Some("127.0.0.1:7074".parse().unwrap()));
        assert_eq!(first_free_sidecar(default, &none, |_| true), None, "gives up after {SIDECAR_PORTS} ports");
    }

    #[test]
    fn the_sidecars_of_agents_in_data_dirs_beside_this_one_are_claimed() {
        let root = std::env::temp_dir().join(format!("fifty-join-{}-{}", std::process::id(), rand::random::<u32>()));
        let (mine, other) = (root.join("agent-b"), root.join("agent-a"));
        for dir in [&mine, &other, &root.join("not-an-agent")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let toml = |listen: &str| {
            format!("data_dir = \"/x\"\ncoordinators = [\"c:7071\"]\n[sidecar]\nlisten = \"{listen}\"\n")
        };
        std::fs::write(other.join("agent.toml"), toml("127.0.0.1:7080")).unwrap();
        // Its own earlier agent.toml (a join again into the same dir) claims nothing.
        std::fs::write(mine.join("agent.toml"), toml("127.0.0.1:7081")).unwrap();
        std::fs::write(root.join("not-an-agent/agent.toml"), "garbage").unwrap();
        let claimed = claimed_sidecars(&mine);
        assert!(claimed.contains(&"127.0.0.1:7080".parse().unwrap()), "{claimed:?}");
        assert!(!claimed.contains(&"127.0.0.1:7081".parse().unwrap()), "{claimed:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
