//! The commit gate: whether a branch of a repository takes new pushes. Pure decisions; the gate's
//! state is replicated (`state::Command::SetGate`) and the API and hooks ask it here.
//!
//! A gate is open or closed. A closure has a cause: a red build (closed by the CI when the
//! branch's newest finished commit fails, reopened when a later one passes) or an admin
//! (`fifty gate close`, until `fifty gate open`). A push whose commit message carries the fix
//! marker (default `[fix]`) passes a build closure — that is how the fix gets in — but never a
//! manual one.

use std::time::SystemTime;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Why a gate is closed.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Cause {
    /// The branch's newest finished commit failed.
    Build {
        /// That commit.
        sha: String,
    },
    /// An admin closed it.
    Manual {
        /// Who: the closing token's accessor and description.
        by: String,
    },
}

/// A closed gate's details.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Closure {
    /// Why, for the pusher.
    pub reason: String,
    /// What closed it.
    pub cause: Cause,
    /// Since when.
    pub since: SystemTime,
}

/// What a push meets at the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The gate is open.
    Open,
    /// The gate is closed by a red build, and the message carries the fix marker.
    FixAllowed,
    /// The gate is closed to this push.
    Closed,
}

impl Verdict {
    /// Whether the push may go in.
    pub fn allows(self) -> bool {
        !matches!(self, Verdict::Closed)
    }
}

/// Decides whether a push with `message` passes a gate in state `closure`.
pub fn check(closure: Option<&Closure>, message: Option<&str>, fix_marker: &str) -> Verdict {
    match closure {
        None => Verdict::Open,
        Some(Closure { cause: Cause::Build { .. }, .. })
            if !fix_marker.is_empty() && message.is_some_and(|m| m.contains(fix_marker)) =>
        {
            Verdict::FixAllowed
        }
        Some(_) => Verdict::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(cause: Cause) -> Closure {
        Closure { reason: "r".into(), cause, since: SystemTime::UNIX_EPOCH }
    }

    #[test]
    fn an_open_gate_lets_everything_in() {
        assert_eq!(check(None, Some("anything"), "[fix]"), Verdict::Open);
        assert_eq!(check(None, None, "[fix]"), Verdict::Open);
    }

    #[test]
    fn the_fix_marker_passes_a_red_build_but_not_an_admin() {
        let red = closed(Cause::Build { sha: "abc".into() });
        assert_eq!(check(Some(&red), Some("[fix] restore the parser"), "[fix]"), Verdict::FixAllowed);
        assert_eq!(check(Some(&red), Some("more features"), "[fix]"), Verdict::Closed);
        assert_eq!(check(Some(&red), None, "[fix]"), Verdict::Closed);
        let manual = closed(Cause::Manual { by: "admin".into() });
        assert_eq!(check(Some(&manual), Some("[fix] please"), "[fix]"), Verdict::Closed);
    }

    #[test]
    fn an_empty_marker_never_matches() {
        let red = closed(Cause::Build { sha: "abc".into() });
        assert_eq!(check(Some(&red), Some("anything"), ""), Verdict::Closed);
    }
}
