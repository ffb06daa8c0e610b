//! Token secrets and the join token's text form.
//!
//! A secret is 24 random bytes in hex. The coordinator stores only its SHA-256, so a stolen
//! database holds no usable token (as `nomad acl bootstrap` does). API tokens are written
//! `fifty_<secret>`; a join token is `fifty-join.<secret>.<ca-fingerprint>`, carrying the SHA-256
//! of the cluster CA so a new host can authenticate the coordinator on first contact.

use rand::Rng;
use sha2::{Digest, Sha256};

/// Prefix of API tokens (`admin`, `ci`, `read`).
pub const API_PREFIX: &str = "fifty_";
/// Prefix of join tokens (`agent`).
pub const JOIN_PREFIX: &str = "fifty-join.";

/// Why a token's text was refused before anything was asked of a coordinator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The text is not `fifty-join.<48 hex>.<64 hex>`.
    #[error("not a join token: expected fifty-join.<secret>.<ca-fingerprint> (as printed by `fifty token create --role agent`)")]
    MalformedJoin,
}

/// A new random secret, 48 hex digits.
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

/// The stored form of a secret: SHA-256, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The secret inside an API token's text (`fifty_<secret>`), or the text itself if it has no prefix.
pub fn api_secret(token: &str) -> &str {
    token.trim().strip_prefix(API_PREFIX).unwrap_or(token.trim())
}

/// A join token: a secret and the fingerprint of the CA the host should expect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// The secret the coordinator checks.
    pub secret: String,
    /// SHA-256 of the cluster CA certificate, hex.
    pub ca_fingerprint: String,
}

impl JoinToken {
    /// The token as users copy it.
    pub fn encode(&self) -> String {
        format!("{JOIN_PREFIX}{}.{}", self.secret, self.ca_fingerprint)
    }

    /// Parses a token copied by a user.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let rest = text.trim().strip_prefix(JOIN_PREFIX).ok_or(TokenError::MalformedJoin)?;
        let (secret, fp) = rest.split_once('.').ok_or(TokenError::MalformedJoin)?;
        let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_of(secret, 48) || !hex_of(fp, 64) {
            return Err(TokenError::MalformedJoin);
        }
        Ok(Self { secret: secret.to_lowercase(), ca_fingerprint: fp.to_lowercase() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_reject_garbage() {
        let t = JoinToken { secret: new_secret(), ca_fingerprint: "ab".repeat(32) };
        assert_eq!(JoinToken::parse(&t.encode()).unwrap(), t);
        assert_eq!(JoinToken::parse("fifty-join.abc.def"), Err(TokenError::MalformedJoin));
        assert_eq!(JoinToken::parse(&format!("fifty_{}", new_secret())), Err(TokenError::MalformedJoin));
    }

    #[test]
    fn secrets_are_stored_hashed() {
        let s = new_secret();
        assert_eq!(s.len(), 48);
        assert_ne!(hash_secret(&s), s);
        assert_eq!(hash_secret(&s), hash_secret(&s));
        assert_eq!(api_secret(&format!("fifty_{s}")), s);
    }
}
