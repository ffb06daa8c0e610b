//! Pipeline as code: `fifty.toml` at the root of an application's repository, read at the commit
//! under test. The build agent that plans a commit reads it (it needs `[test] list` to collect the
//! suite) and sends its text on; the coordinator parses the same text here again, so both sides
//! agree on what it says.
//!
//! ```toml
//! [test]
//! command = "scripts/run-tests.sh"   # run once per shard
//! list    = "scripts/list-tests.sh"  # optional: prints every test, one per line
//! shards  = 4
//! timeout = "10m"
//! junit   = "reports/*.xml"          # JUnit XML the command leaves behind
//! retries = 1                        # a failed shard is retried on another agent
//! ```
//!
//! A bad file is an error that names the key and the problem; it fails that commit and nothing
//! else.

use std::time::Duration;

use serde::Deserialize;

/// The file's name, at the repository's root.
pub const FILE_NAME: &str = "fifty.toml";

/// Largest `fifty.toml` accepted (a plan travels in one frame).
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// Most shards one commit may ask for.
pub const MAX_SHARDS: u32 = 64;

/// Most retries one shard may ask for.
pub const MAX_RETRIES: u32 = 5;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// How the commit is tested.
    pub test: TestStep,
}

/// `[test]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestStep {
    /// Shell command run once per shard, in the checked-out tree (`sh -c`).
    pub command: String,
    /// Shell command that prints the suite's test names, one per line. With it, shards are
    /// balanced by each test's past duration; without it, the command splits the suite itself by
    /// `FIFTY_SHARD_INDEX` / `FIFTY_SHARD_COUNT`.
    #[serde(default)]
    pub list: Option<String>,
    /// How many shards (default 1).
    #[serde(default = "one")]
    pub shards: u32,
    /// How long one shard may run before its whole process tree is killed (default 10m).
    #[serde(default = "ten_minutes", with = "crate::config::duration")]
    pub timeout: Duration,
    /// Glob, relative to the repository root, of the JUnit XML files the command writes.
    #[serde(default)]
    pub junit: Option<String>,
    /// How many times a failed shard is run again, on another agent when there is one (default 0).
    #[serde(default)]
    pub retries: u32,
}

fn one() -> u32 {
    1
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

impl Pipeline {
    /// Parses and checks the text of a `fifty.toml`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_FILE_BYTES {
            return Err(format!("{FILE_NAME} is {} bytes; the limit is {MAX_FILE_BYTES}", text.len()));
        }
        let p: Pipeline = toml::from_str(text).map_err(|e| format!("{FILE_NAME}: {}", e.to_string().trim_end()))?;
        let bad = |key: &str, problem: String| Err(format!("{FILE_NAME}: key {key}: {problem}"));
        if p.test.command.trim().is_empty() {
            return bad("test.command", "is empty; give the command that runs the tests".into());
        }
        if p.test.list.as_deref().is_some_and(|l| l.trim().is_empty()) {
            return bad("test.list", "is empty; remove it or give the command that lists the tests".into());
        }
        if p.test.shards == 0 || p.test.shards > MAX_SHARDS {
            return bad("test.shards", format!("{} is out of range (1 to {MAX_SHARDS})", p.test.shards));
        }
        if p.test.timeout.is_zero() {
            return bad("test.timeout", "must be longer than zero".into());
        }
        if p.test.retries > MAX_RETRIES {
            return bad("test.retries", format!("{} is out of range (0 to {MAX_RETRIES})", p.test.retries));
        }
        if let Some(glob) = &p.test.junit {
            if glob.trim().is_empty() || glob.starts_with('/') || glob.split('/').any(|part| part == "..") {
                return bad("test.junit", format!("{glob:?} must be a relative path inside the repository"));
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_with_its_defaults() {
        let p = Pipeline::parse(
            "[test]\ncommand = \"make test\"\nshards = 4\ntimeout = \"2m\"\njunit = \"reports/*.xml\"\nretries = 1\n",
        )
        .unwrap();
        assert_eq!(p.test.shards, 4);
        assert_eq!(p.test.timeout, Duration::from_secs(120));
        assert_eq!(p.test.retries, 1);
        let p = Pipeline::parse("[test]\ncommand = \"make test\"\n").unwrap();
        assert_eq!((p.test.shards, p.test.timeout, p.test.retries), (1, Duration::from_secs(600), 0));
        assert_eq!(p.test.junit, None);
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let err = Pipeline::parse("[test]\ncommand = \"x\"\nshard = 4\n").unwrap_err();
        assert!(err.contains("unknown field `shard`") && err.contains("line 3"), "{err}");
        let err = Pipeline::parse("[test]\ncommand = \"x\"\nshards = 0\n").unwrap_err();
        assert!(err.contains("test.shards") && err.contains("out of range"), "{err}");
        let err = Pipeline::parse("[test]\ncommand = \"x\"\ntimeout = \"soon\"\n").unwrap_err();
        assert!(err.contains("timeout") && err.contains("not a duration"), "{err}");
        let err = Pipeline::parse("[test]\nshards = 2\n").unwrap_err();
        assert!(err.contains("missing field `command`"), "{err}");
        let err = Pipeline::parse("[test]\ncommand = \"x\"\njunit = \"../x.xml\"\n").unwrap_err();
        assert!(err.contains("test.junit"), "{err}");
        let err = Pipeline::parse("[tests]\ncommand = \"x\"\n").unwrap_err();
        assert!(err.contains("unknown field `tests`"), "{err}");
        let err = Pipeline::parse("[test\n").unwrap_err();
        assert!(err.starts_with("fifty.toml:"), "{err}");
    }
}
