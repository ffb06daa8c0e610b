//! Names users see, as validated newtypes: a host's name, its labels, a token's role.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Why a name or label given by a user was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// A host name must be a DNS-style label so it can stand in a certificate.
    #[error("invalid host name {0:?}: use 1-63 characters a-z, 0-9 and '-', starting with a letter or digit")]
    HostName(String),
    /// Labels are written `key=value[,key=value...]`.
    #[error("invalid label {0:?}: write labels as key=value[,key=value...] with keys and values of a-z, A-Z, 0-9, '.', '_', '-'")]
    Label(String),
    /// Repository names are simple identifiers.
    #[error(
        "invalid repository name {0:?}: use 1-100 characters a-z, A-Z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    RepoName(String),
    /// Roles are a fixed set.
    #[error("unknown role {0:?}: expected one of admin, ci, read, agent")]
    Role(String),
}

/// The name of a host, e.g. `web-1`. It is the subject of the host's certificate, so it follows
/// DNS label rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

// Decoding re-checks the rules, so a name off the wire is as valid as one typed by a user.
impl<C> Decode<C> for HostName {
    fn decode<D: bincode::de::Decoder<Context = C>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        let s = String::decode(d)?;
        HostName::new(&s).map_err(|e| bincode::error::DecodeError::OtherString(e.to_string()))
    }
}
bincode::impl_borrow_decode!(HostName);

impl HostName {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, IdError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(IdError::HostName(name.to_string()))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HostName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for HostName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<HostName> for String {
    fn from(h: HostName) -> String {
        h.0
    }
}

/// The name a repository is registered under, e.g. `shop`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, IdError> {
        let ok = !name.is_empty()
            && name.len() <= 100
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !name.starts_with('.')
            // A leading '-' would read as an option wherever the name reaches a command line.
            && !name.starts_with('-');
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(IdError::RepoName(name.to_string()))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<C> Decode<C> for RepoName {
    fn decode<D: bincode::de::Decoder<Context = C>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        let s = String::decode(d)?;
        RepoName::new(&s).map_err(|e| bincode::error::DecodeError::OtherString(e.to_string()))
    }
}
bincode::impl_borrow_decode!(RepoName);

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepoName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for RepoName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<RepoName> for String {
    fn from(r: RepoName) -> String {
        r.0
    }
}

/// A host's labels, e.g. `role=prod,pool=web`, kept sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

// Decoding re-checks every key and value, like parsing does.
impl<C> Decode<C> for Labels {
    fn decode<D: bincode::de::Decoder<Context = C>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        let map = BTreeMap::<String, String>::decode(d)?;
        for (k, v) in &map {
            if !label_part_ok(k) || !label_part_ok(v) {
                let e = IdError::Label(format!("{k}={v}"));
                return Err(bincode::error::DecodeError::OtherString(e.to_string()));
            }
        }
        Ok(Labels(map))
    }
}
bincode::impl_borrow_decode!(Labels);

fn label_part_ok(t: &str) -> bool {
    !t.is_empty() && t.len() <= 63 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Labels {
    /// The value of `key`, if the host carries it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

impl FromStr for Labels {
    type Err = IdError;
    /// Parses `key=value[,key=value...]`; an empty string is no labels.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = label_part_ok;
        let mut labels = BTreeMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if valid(k) && valid(v) => {
                    labels.insert(k.to_string(), v.to_string());
                }
                _ => return Err(IdError::Label(pair.to_string())),
            }
        }
        Ok(Labels(labels))
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// What a token may do. API tokens are `admin`, `ci` or `read`; `agent` tokens only enroll hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens and host removal.
    Admin,
    /// What CI hooks need: read, plus notifying commits and checking the gate.
    Ci,
    /// Read-only access to the API and `/metrics`.
    Read,
    /// A join token: enrolls hosts over QUIC, no API access.
    Agent,
}

impl Role {
    /// Whether a token of this role may act with the rights of `needed`.
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Agent, _) | (_, Role::Agent) => false,
            (Role::Admin, _) => true,
            (Role::Ci, Role::Ci | Role::Read) => true,
            (Role::Read, Role::Read) => true,
            _ => false,
        }
    }

    /// The role's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Ci => "ci",
            Role::Read => "read",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "ci" => Ok(Role::Ci),
            "read" => Ok(Role::Read),
            "agent" => Ok(Role::Agent),
            other => Err(IdError::Role(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_follow_dns_label_rules() {
        assert!(HostName::new("web-1").is_ok());
        assert!(HostName::new("Web-1").is_err());
        assert!(HostName::new("-web").is_err());
        assert!(HostName::new("").is_err());
        assert!(HostName::new(&"a".repeat(64)).is_err());
        assert!(HostName::new("web_1").is_err());
    }

    #[test]
    fn repo_names_are_plain_identifiers() {
        assert!(RepoName::new("shop.v2_x-y").is_ok());
        for bad in ["", "-shop", "--upload-pack=x", ".git", "a/b", "a b", "a\nb"] {
            assert!(RepoName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_parse_and_print_sorted() {
        let l: Labels = "role=prod, pool=web".parse().unwrap();
        assert_eq!(l.get("role"), Some("prod"));
        assert_eq!(l.to_string(), "pool=web,role=prod");
        assert!("role".parse::<Labels>().is_err());
        assert!("role=".parse::<Labels>().is_err());
        assert_eq!("".parse::<Labels>().unwrap(), Labels::default());
    }

    #[test]
    fn roles_grant_what_they_should() {
        assert!(Role::Admin.allows(Role::Ci));
        assert!(Role::Ci.allows(Role::Read));
        assert!(!Role::Ci.allows(Role::Admin));
        assert!(!Role::Read.allows(Role::Ci));
        assert!(!Role::Agent.allows(Role::Read));
        assert!(!Role::Admin.allows(Role::Agent));
    }
}
