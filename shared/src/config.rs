//! What both binaries' configuration loading has in common: TOML files that refuse unknown keys,
//! `FIFTY_*` environment overrides, and durations written the way people write them (`"5s"`).
//! Each binary keeps its own `Config` struct; this module only loads and checks.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// Reads and parses a TOML config file. A bad or unknown key is an error that names the file, the
/// key and the line.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

/// The value of environment variable `name`, parsed; `Ok(None)` when unset or empty.
pub fn env_var<T>(name: &str) -> Result<Option<T>>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().map(Some).map_err(|e| anyhow::anyhow!("environment variable {name}={v:?}: {e}"))
        }
        _ => Ok(None),
    }
}

/// Writes `text` to `path` readable by the owner only (keys, tokens), atomically: a crash leaves
/// the old file or the new one, never half of one.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// The longest duration Fifty accepts from anyone (10 years). Every duration a user writes (a
/// token's TTL, a silence, a bake, a config key) is at most this, so adding one to the current
/// time or formatting the result can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(315_576_000);

/// Parses a duration written like `"500ms"`, `"5s"` or `"1h"`, of at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_at_most(text, MAX_DURATION)
}

/// Parses a duration as [`parse_duration`] does, refusing one longer than `max` with a message
/// that names the maximum.
pub fn parse_duration_at_most(text: &str, max: Duration) -> Result<Duration, String> {
    let max = max.min(MAX_DURATION);
    let too_long = || format!("{text:?} is longer than the maximum, {}", humantime::format_duration(max));
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d > max => Err(too_long()),
        Ok(d) => Ok(d),
        Err(humantime::DurationError::NumberOverflow) => Err(too_long()),
        Err(e) => Err(format!("{text:?} is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"1h\"")),
    }
}

/// Serde adapter for `Duration` fields written as human durations.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Deserializes `"5s"`-style text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    /// Serializes as `"5s"`-style text.
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn durations_past_the_maximum_are_refused_naming_it() {
        assert_eq!(parse_duration("10years").unwrap(), MAX_DURATION);
        for huge in ["100000000h", "18446744073709551615s", "11years"] {
            let err = parse_duration(huge).unwrap_err();
            assert!(err.contains("longer than the maximum, 10years"), "{huge}: {err}");
        }
        let err = parse_duration_at_most("2d", Duration::from_secs(86_400)).unwrap_err();
        assert!(err.contains("maximum, 1day"), "{err}");
        // Whatever is accepted can be added to the current time and formatted.
        let later = std::time::SystemTime::now() + MAX_DURATION;
        assert!(!humantime::format_rfc3339_millis(later).to_string().is_empty());
    }
}
