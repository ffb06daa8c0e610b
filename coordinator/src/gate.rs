//! The commit gate: whether a branch of a repository takes new pushes. Pure decisions; the gate's
//! state is replicated (`state::Command::SetGate`) and the API and hooks ask it here.
//!
//! A gate is open or closed. A closure has a cause: a red build (closed by the CI when the
//! branch's newest finished commit fails, reopened when a later one passes) or an admin
//! (`fifty gate close`, until `fifty gate open`). A push whose commit message carries the fix
//! marker (default `[fix]`) passes a build closure — that is how the fix gets in — but never a
//! manual one. A closure by the immune system (it reverted a release) lets exactly one push in:
//! the revert of that release's commit, which names it in a `Fifty-Revert: <sha>` trailer and
//! which the pre-receive hook checked undoes exactly that commit; then it stays closed until an
//! admin opens it.

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
    /// The immune system reverted the release of this commit.
    Immune {
        /// The reverted commit.
        sha: String,
        /// The incident it opened.
        incident: u64,
    },
}

/// The trailer a revert commit names the reverted commit with.
pub const REVERT_TRAILER: &str = "Fifty-Revert:";

/// The commit a message's `Fifty-Revert: <sha>` trailer names, if it has one.
pub fn reverted_by(message: &str) -> Option<&str> {
    message.lines().rev().find_map(|l| l.trim().strip_prefix(REVERT_TRAILER)).map(str::trim)
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
    /// The gate is closed by the immune system, and this push is the revert of its commit.
    RevertAllowed,
    /// The gate is closed to this push.
    Closed,
}

impl Verdict {
    /// Whether the push may go in.
    pub fn allows(self) -> bool {
        !matches!(self, Verdict::Closed)
    }
}

/// Decides whether a push with `message` passes a gate in state `closure`. `reverts` is the
/// commit the pushed commit was checked (by the pre-receive hook, against the repository) to
/// undo exactly, if it was.
pub fn check(closure: Option<&Closure>, message: Option<&str>, reverts: Option<&str>, fix_marker: &str) -> Verdict {
    match closure {
        None => Verdict::Open,
        Some(Closure { cause: Cause::Immune { sha, .. }, .. })
            if reverts == Some(sha.as_str()) && message.and_then(reverted_by) == Some(sha.as_str()) =>
        {
            Verdict::RevertAllowed
        }
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
        assert_eq!(check(None, Some("anything"), None, "[fix]"), Verdict::Open);
        assert_eq!(check(None, None, None, "[fix]"), Verdict::Open);
    }

    #[test]
    fn the_fix_marker_passes_a_red_build_but_not_an_admin() {
        let red = closed(Cause::Build { sha: "abc".into() });
        assert_eq!(check(Some(&red), Some("[fix] restore the parser"), None, "[fix]"), Verdict::FixAllowed);
        assert_eq!(check(Some(&red), Some("more features"), None, "[fix]"), Verdict::Closed);
        assert_eq!(check(Some(&red), None, None, "[fix]"), Verdict::Closed);
        let manual = closed(Cause::Manual { by: "admin".into() });
        assert_eq!(check(Some(&manual), Some("[fix] please"), None, "[fix]"), Verdict::Closed);
    }

    #[test]
    fn an_immune_closure_lets_in_only_the_checked_revert_of_its_commit() {
        let bad = "3f2a9c1".repeat(5) + "abcde";
        let immune = closed(Cause::Immune { sha: bad.clone(), incident: 1 });
        let revert = format!("Revert \"Cheaper pears\"\n\nThis reverts commit {bad}.\n\nFifty-Revert: {bad}\n");
        assert_eq!(reverted_by(&revert), Some(bad.as_str()));
        assert_eq!(check(Some(&immune), Some(&revert), Some(&bad), "[fix]"), Verdict::RevertAllowed);
        // Not checked by the hook to undo that commit: refused, trailer or not.
        assert_eq!(check(Some(&immune), Some(&revert), None, "[fix]"), Verdict::Closed);
        assert_eq!(check(Some(&immune), Some(&revert), Some("0000"), "[fix]"), Verdict::Closed);
        assert_eq!(check(Some(&immune), Some("[fix] it"), None, "[fix]"), Verdict::Closed);
        let other = revert.replace(&format!("Fifty-Revert: {bad}"), "Fifty-Revert: 1234");
        assert_eq!(check(Some(&immune), Some(&other), Some(&bad), "[fix]"), Verdict::Closed);
    }

    #[test]
    fn an_empty_marker_never_matches() {
        let red = closed(Cause::Build { sha: "abc".into() });
        assert_eq!(check(Some(&red), Some("anything"), None, ""), Verdict::Closed);
    }
}
