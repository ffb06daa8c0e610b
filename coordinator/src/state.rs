//! The coordinator's state machine. Every decision is a [`Command`]; [`Machine::apply`] checks it
//! against the stored state and writes the result to the [`Store`]. Commands carry everything
//! they need (times, signed certificates, hashes), so applying one is deterministic: the same log
//! of commands gives the same state on every node. That is what lets a replicated log slot in
//! under this module without changing it.
//!
//! Soft state (heartbeats, health) is not here: see `fleet`.

use std::time::SystemTime;

use bincode::{Decode, Encode};
use fifty_shared::ids::{HostName, Labels, RepoName, Role};

use crate::gate::Closure;

use crate::store::{Batch, Store, StoreError};

/// The cluster's identity, created on first start.
#[derive(Clone, Debug, Encode, Decode)]
pub struct ClusterRecord {
    /// The CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The CA private key, PEM. Never leaves the coordinators.
    pub ca_key_pem: String,
    /// When the cluster was created.
    pub created_at: SystemTime,
}

/// A token, stored by the hash of its secret.
#[derive(Clone, Debug, Encode, Decode)]
pub struct TokenRecord {
    /// Public id, used to list and revoke the token without knowing its secret.
    pub accessor: String,
    /// SHA-256 of the secret.
    pub hash: String,
    /// What the token may do.
    pub role: Role,
    /// A note from whoever made it.
    pub description: String,
    /// When it was made.
    pub created_at: SystemTime,
    /// After this it is refused.
    pub expires_at: Option<SystemTime>,
    /// Join tokens: how many hosts it may enroll (None: unlimited until it expires).
    pub max_uses: Option<u32>,
    /// How many hosts it has enrolled.
    pub uses: u32,
    /// Revoked by an admin.
    pub revoked: bool,
}

impl TokenRecord {
    /// Why this token may not be used at `now`, if it may not.
    pub fn refusal(&self, now: SystemTime) -> Option<Rejection> {
        if self.revoked {
            return Some(Rejection::TokenRevoked);
        }
        if let Some(at) = self.expires_at {
            if now >= at {
                return Some(Rejection::TokenExpired { at });
            }
        }
        if let Some(max) = self.max_uses {
            if self.uses >= max {
                return Some(Rejection::TokenUsedUp { max });
            }
        }
        None
    }
}

/// An enrolled host.
#[derive(Clone, Debug, Encode, Decode)]
pub struct HostRecord {
    /// Its name (the subject of its certificate).
    pub name: HostName,
    /// Its labels.
    pub labels: Labels,
    /// Serial of its current certificate, hex.
    pub serial: String,
    /// When it enrolled.
    pub enrolled_at: SystemTime,
    /// The accessor of the join token it used.
    pub token_accessor: String,
}

/// A revoked certificate.
#[derive(Clone, Debug, Encode, Decode)]
pub struct Revocation {
    /// The certificate's serial, hex.
    pub serial: String,
    /// The host it belonged to.
    pub host: HostName,
    /// When it was revoked.
    pub at: SystemTime,
    /// Why.
    pub reason: String,
}

/// A coordinator of the cluster: its Raft id and where to reach it. Written when a
/// configuration change that adds it is applied (or at bootstrap), removed with it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, serde::Serialize, serde::Deserialize)]
pub struct MemberRecord {
    /// Raft node id.
    pub id: u64,
    /// QUIC address (agents and peers).
    pub quic_addr: String,
    /// HTTPS API address.
    pub http_addr: String,
}

/// A repository Fifty watches.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct RepoRecord {
    /// Its name in Fifty.
    pub name: RepoName,
    /// Where build hosts fetch it from.
    pub url: String,
    /// The branch whose gate and pipeline Fifty runs.
    pub branch: String,
    /// What a commit message carries to pass a gate closed by a red build.
    pub fix_marker: String,
    /// When it was added.
    pub added_at: SystemTime,
}

/// The gate of one branch of a repository. No record, or `closed: None`, is an open gate.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct GateRecord {
    /// The repository.
    pub repo: RepoName,
    /// The branch.
    pub branch: String,
    /// Set while the gate is closed.
    pub closed: Option<Closure>,
    /// When it last changed, and who changed it.
    pub changed_at: SystemTime,
    /// Who opened or closed it last.
    pub changed_by: String,
}

/// A decision to apply: the payload of a Raft log entry.
#[derive(Clone, Debug, Encode, Decode)]
pub enum Command {
    /// Create the cluster: its CA and the bootstrap admin token.
    InitCluster {
        /// The cluster record.
        cluster: ClusterRecord,
        /// The bootstrap admin token.
        bootstrap: TokenRecord,
    },
    /// Create a token.
    CreateToken(TokenRecord),
    /// Revoke a token by accessor.
    RevokeToken {
        /// Which token.
        accessor: String,
    },
    /// Enroll a host with a certificate the leader signed.
    EnrollHost {
        /// Hash of the join token's secret.
        token_hash: String,
        /// The new host record.
        host: HostRecord,
        /// When.
        at: SystemTime,
    },
    /// Remove a host and revoke its certificate.
    RemoveHost {
        /// Which host.
        name: HostName,
        /// When.
        at: SystemTime,
    },
    /// Add (or update) a repository.
    PutRepo(RepoRecord),
    /// Open or close a branch's gate.
    SetGate(GateRecord),
}

/// Why a command was not applied. Deterministic: every node rejects the same commands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The cluster already has a CA.
    #[error("the cluster is already initialised")]
    AlreadyInitialised,
    /// No token has this secret.
    #[error("unknown token")]
    UnknownToken,
    /// The token's time is up.
    #[error("token expired at {}", humantime::format_rfc3339_seconds(*at))]
    TokenExpired {
        /// When it expired.
        at: SystemTime,
    },
    /// A limited-use token was used up.
    #[error("token was already used (it allows {max} enrollment{})", if *max == 1 { "" } else { "s" })]
    TokenUsedUp {
        /// Its limit.
        max: u32,
    },
    /// The token was revoked.
    #[error("token was revoked")]
    TokenRevoked,
    /// The token is not a join token.
    #[error("token has role {0}, not agent: create one with `fifty token create --role agent`")]
    NotAJoinToken(Role),
    /// No token has this accessor.
    #[error("no token with accessor {0}")]
    UnknownAccessor(String),
    /// No host has this name.
    #[error("no host named {0}")]
    UnknownHost(HostName),
    /// No coordinator has this id.
    #[error("no coordinator with node id {0:016x}")]
    UnknownMember(u64),
    /// No repository has this name.
    #[error("no repository named {0}; add it with `fifty repo add`")]
    UnknownRepo(RepoName),
    /// Removing this coordinator would leave no voter.
    #[error("node {0:016x} is the last voter; a cluster cannot remove its only member")]
    LastMember(u64),
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done; nothing to report.
    Done,
    /// A host was enrolled; if it replaced an earlier enrollment of the same name, that
    /// certificate's serial (now revoked).
    Enrolled {
        /// Serial revoked by the re-enrollment.
        replaced_serial: Option<String>,
    },
    /// A host was removed; the serial revoked.
    Removed {
        /// The revoked serial.
        serial: String,
    },
}

/// Applies commands to the store.
pub struct Machine {
    store: Store,
}

/// The result of applying one command: a storage error is fatal for the node; a rejection is an
/// answer for the client.
pub type ApplyResult = Result<Result<Applied, Rejection>, StoreError>;

impl Machine {
    /// A machine over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks `cmd` against the current state and writes its effects, with `extra` (the applied
    /// index, say), in one atomic batch. A rejected command writes only `extra`.
    pub fn apply(&mut self, cmd: &Command, extra: Batch) -> ApplyResult {
        let mut batch = extra;
        let mut effects = Batch::default();
        let out = self.decide(cmd, &mut effects)?;
        if out.is_ok() {
            batch.merge(effects);
        }
        self.store.apply(batch)?;
        Ok(out)
    }

    fn decide(&self, cmd: &Command, batch: &mut Batch) -> ApplyResult {
        let store = &self.store;
        Ok(match cmd {
            Command::InitCluster { cluster, bootstrap } => {
                if store.cluster()?.is_some() {
                    return Ok(Err(Rejection::AlreadyInitialised));
                }
                batch.put_cluster(cluster);
                batch.put_token(bootstrap);
                Ok(Applied::Done)
            }
            Command::CreateToken(token) => {
                batch.put_token(token);
                Ok(Applied::Done)
            }
            Command::RevokeToken { accessor } => {
                let Some(mut token) = store.tokens()?.into_iter().find(|t| &t.accessor == accessor) else {
                    return Ok(Err(Rejection::UnknownAccessor(accessor.clone())));
                };
                token.revoked = true;
                batch.put_token(&token);
                Ok(Applied::Done)
            }
            Command::EnrollHost { token_hash, host, at } => {
                let Some(mut token) = store.token(token_hash)? else {
                    return Ok(Err(Rejection::UnknownToken));
                };
                if token.role != Role::Agent {
                    return Ok(Err(Rejection::NotAJoinToken(token.role)));
                }
                if let Some(refusal) = token.refusal(*at) {
                    return Ok(Err(refusal));
                }
                token.uses += 1;
                batch.put_token(&token);
                let replaced = store.host(&host.name)?;
                if let Some(old) = &replaced {
                    batch.remove_host(old);
                    batch.put_revocation(&Revocation {
                        serial: old.serial.clone(),
                        host: old.name.clone(),
                        at: *at,
                        reason: "replaced by a new enrollment of the same host name".into(),
                    });
                }
                batch.put_host(host);
                Ok(Applied::Enrolled { replaced_serial: replaced.map(|h| h.serial) })
            }
            Command::RemoveHost { name, at } => {
                let Some(host) = store.host(name)? else {
                    return Ok(Err(Rejection::UnknownHost(name.clone())));
                };
                batch.remove_host(&host);
                batch.put_revocation(&Revocation {
                    serial: host.serial.clone(),
                    host: host.name.clone(),
                    at: *at,
                    reason: "host removed".into(),
                });
                Ok(Applied::Removed { serial: host.serial })
            }
            Command::PutRepo(repo) => {
                batch.put_repo(repo);
                Ok(Applied::Done)
            }
            Command::SetGate(gate) => {
                if store.repo(&gate.repo)?.is_none() {
                    return Ok(Err(Rejection::UnknownRepo(gate.repo.clone())));
                }
                batch.put_gate(gate);
                Ok(Applied::Done)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn machine() -> (Machine, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        (Machine::new(Store::open(&dir.0).unwrap()), dir)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p =
                    std::env::temp_dir().join(format!("fifty-state-{}-{}", std::process::id(), rand::random::<u64>()));
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn join_token(max_uses: Option<u32>, expires_at: Option<SystemTime>) -> TokenRecord {
        TokenRecord {
            accessor: "acc1".into(),
            hash: "h1".into(),
            role: Role::Agent,
            description: String::new(),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at,
            max_uses,
            uses: 0,
            revoked: false,
        }
    }

    fn host(name: &str, serial: &str) -> HostRecord {
        HostRecord {
            name: HostName::new(name).unwrap(),
            labels: "role=prod".parse().unwrap(),
            serial: serial.into(),
            enrolled_at: SystemTime::UNIX_EPOCH,
            token_accessor: "acc1".into(),
        }
    }

    fn enroll(m: &mut Machine, name: &str, serial: &str, at: SystemTime) -> Result<Applied, Rejection> {
        m.apply(&Command::EnrollHost { token_hash: "h1".into(), host: host(name, serial), at }, Batch::default())
            .unwrap()
    }

    #[test]
    fn a_single_use_token_enrolls_once() {
        let (mut m, _d) = machine();
        m.apply(&Command::CreateToken(join_token(Some(1), None)), Batch::default()).unwrap().unwrap();
        let now = SystemTime::now();
        assert!(enroll(&mut m, "web-1", "01", now).is_ok());
        assert_eq!(enroll(&mut m, "web-2", "02", now), Err(Rejection::TokenUsedUp { max: 1 }));
        assert!(m.store().host(&HostName::new("web-2").unwrap()).unwrap().is_none());
    }

    #[test]
    fn an_expired_token_is_refused_by_the_command_time() {
        let (mut m, _d) = machine();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        m.apply(&Command::CreateToken(join_token(None, Some(t0))), Batch::default()).unwrap().unwrap();
        assert!(enroll(&mut m, "web-1", "01", t0 - Duration::from_secs(1)).is_ok());
        assert!(matches!(enroll(&mut m, "web-2", "02", t0), Err(Rejection::TokenExpired { .. })));
    }

    #[test]
    fn removing_a_host_revokes_its_serial() {
        let (mut m, _d) = machine();
        m.apply(&Command::CreateToken(join_token(None, None)), Batch::default()).unwrap().unwrap();
        enroll(&mut m, "web-1", "0a", SystemTime::now()).unwrap();
        let name = HostName::new("web-1").unwrap();
        let out =
            m.apply(&Command::RemoveHost { name: name.clone(), at: SystemTime::now() }, Batch::default()).unwrap();
        assert_eq!(out, Ok(Applied::Removed { serial: "0a".into() }));
        assert!(m.store().host(&name).unwrap().is_none());
        assert!(m.store().host_by_serial("0a").unwrap().is_none());
        assert_eq!(m.store().revocation("0a").unwrap().unwrap().host, name);
    }

    #[test]
    fn re_enrolling_a_name_revokes_the_old_certificate() {
        let (mut m, _d) = machine();
        m.apply(&Command::CreateToken(join_token(None, None)), Batch::default()).unwrap().unwrap();
        enroll(&mut m, "web-1", "0a", SystemTime::now()).unwrap();
        let out = enroll(&mut m, "web-1", "0b", SystemTime::now());
        assert_eq!(out, Ok(Applied::Enrolled { replaced_serial: Some("0a".into()) }));
        assert!(m.store().revocation("0a").unwrap().is_some());
        assert_eq!(m.store().host_by_serial("0b").unwrap().unwrap().as_str(), "web-1");
    }
}
