//! Dashboard sessions: an API token pasted at `/ui/login` becomes a random session id in an
//! HttpOnly, Secure, SameSite=Strict cookie (`Path=/ui`), held in a bounded table in this
//! coordinator's memory.
//!
//! Why a server-side table rather than a signed cookie: signing out must end the session for
//! real (a copied cookie stops working at once), and the table is the one place to drop sessions
//! from. Each request also checks the session's token again, so revoking or expiring the token
//! ends every session made with it. The table is not replicated: a session belongs to the
//! coordinator where it was made and is lost when that coordinator restarts; signing in on
//! another coordinator is a new session (pages on a follower still show the leader's view,
//! see `super`).
//!
//! Every session has a CSRF token, a second random value rendered into each POST form
//! (`super::layout::form`) and compared on every POST; SameSite=Strict is the first line, the
//! token the second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fifty_shared::ids::Role;
use rand::RngCore;

/// The session cookie's name.
pub const COOKIE: &str = "fifty_session";
/// How long a session lasts from sign-in (the cookie's Max-Age too).
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept by one coordinator at most; a sign-in beyond it is refused until some expire or
/// sign out.
pub const MAX_SESSIONS: usize = 4096;
/// Sessions of one token at most: signing in again with it ends its oldest session, so one token
/// cannot fill the table.
pub const MAX_PER_TOKEN: usize = 16;

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    /// The API token's secret, checked again on every request (and sent to the leader as a bearer
    /// token when a follower forwards a page).
    pub secret: String,
    /// The token's accessor, for the per-token bound.
    pub accessor: String,
    /// The value every POST form of this session must carry.
    pub csrf: String,
    /// When it was made.
    pub created: Instant,
    /// When it ends.
    pub expires: Instant,
}

/// Why a sign-in was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignInError {
    /// The token is unknown, revoked, expired or a join token.
    #[error("invalid, expired or revoked token")]
    Invalid,
    /// A CI token: machine credentials do not sign in to the dashboard.
    #[error("a ci token may not sign in: the dashboard is for people; use a read or admin token")]
    Ci,
    /// The table is full.
    #[error("this coordinator has {MAX_SESSIONS} sessions open; sign out elsewhere or wait for some to expire")]
    Full,
}

/// The session table.
#[derive(Default)]
pub struct Sessions {
    /// Keyed by the SHA-256 of the session id (the id itself is only in the browser's cookie).
    table: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn key(id: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, id.as_bytes()))
}

/// Compares two secrets in time that depends on their lengths only.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// Makes a session for a token of `role` and returns its id (the cookie's value).
    pub fn create(&self, secret: &str, accessor: &str, role: Role, now: Instant) -> Result<String, SignInError> {
        match role {
            Role::Read | Role::Admin => {}
            Role::Ci => return Err(SignInError::Ci),
            Role::Agent => return Err(SignInError::Invalid),
        }
        let mut table = self.table.lock().expect("sessions lock");
        table.retain(|_, s| s.expires > now);
        let mut mine: Vec<(String, Instant)> =
            table.iter().filter(|(_, s)| s.accessor == accessor).map(|(k, s)| (k.clone(), s.created)).collect();
        if mine.len() >= MAX_PER_TOKEN {
            mine.sort_by_key(|(_, created)| *created);
            for (k, _) in &mine[..=mine.len() - MAX_PER_TOKEN] {
                table.remove(k);
            }
        }
        if table.len() >= MAX_SESSIONS {
            return Err(SignInError::Full);
        }
        let id = random_hex();
        let session = Session {
            secret: secret.to_string(),
            accessor: accessor.to_string(),
            csrf: random_hex(),
            created: now,
            expires: now + LIFETIME,
        };
        table.insert(key(&id), session);
        Ok(id)
    }

    /// The live session with cookie value `id`.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut table = self.table.lock().expect("sessions lock");
        let k = key(id);
        match table.get(&k) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                table.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends the session with cookie value `id`.
    pub fn remove(&self, id: &str) {
        self.table.lock().expect("sessions lock").remove(&key(id));
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.table.lock().expect("sessions lock").len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session id in a `Cookie` header, if any.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == COOKIE).map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value that stores session `id`.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age={}", LIFETIME.as_secs())
}

/// The `Set-Cookie` value that deletes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_end_and_are_bounded_per_token() {
        let s = Sessions::default();
        let now = Instant::now();
        assert_eq!(s.create("x", "a", Role::Ci, now), Err(SignInError::Ci));
        let id = s.create("secret", "acc", Role::Read, now).unwrap();
        assert!(s.get(&id, now).is_some());
        assert!(s.get(&id, now + LIFETIME).is_none(), "expired");
        assert!(s.get(&id, now).is_none(), "an expired session is gone");
        let id = s.create("secret", "acc", Role::Admin, now).unwrap();
        s.remove(&id);
        assert!(s.get(&id, now).is_none(), "signed out");
        let ids: Vec<String> = (0..MAX_PER_TOKEN + 3)
            .map(|i| s.create("secret", "acc", Role::Read, now + Duration::from_millis(i as u64)).unwrap())
            .collect();
        assert_eq!(s.len(), MAX_PER_TOKEN);
        assert!(s.get(&ids[0], now).is_none(), "the oldest session of the token was ended");
        assert!(s.get(ids.last().unwrap(), now).is_some());
        let other = s.create("secret2", "other", Role::Read, now).unwrap();
        assert!(s.get(&other, now).is_some(), "another token is not affected");
    }

    #[test]
    fn the_table_refuses_sign_ins_when_full() {
        let s = Sessions::default();
        let now = Instant::now();
        for i in 0..MAX_SESSIONS {
            s.create("secret", &format!("acc{i}"), Role::Read, now).unwrap();
        }
        assert_eq!(s.create("secret", "one more", Role::Read, now), Err(SignInError::Full));
        // Once they expire, sign-ins work again.
        assert!(s.create("secret", "one more", Role::Read, now + LIFETIME).is_ok());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn cookies_are_parsed_and_set_with_every_attribute() {
        assert_eq!(cookie_value("a=1; fifty_session=abc; b=2"), Some("abc"));
        assert_eq!(cookie_value("fifty_sessionx=abc"), None);
        let c = set_cookie("abc");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
