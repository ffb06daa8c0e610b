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
    // A leftover temporary file would keep its old mode: `mode` applies only to a new file.
    let _ = std::fs::remove_file(&tmp);
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

/// Creates `dir` readable by the owner only (0700); missing parents are created as usual (the
/// process's umask decides), since they may be shared, e.g. with a build job's directory beside
/// `dir`. An existing directory is left as it is: [`check_private`] says whether it is good enough.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other.with_context(|| format!("create {}", dir.display())),
    }
}

/// Refuses `path` when users other than its owner may read, write or enter it: a directory must
/// be 0700, a file 0600 (or stricter). The error names the path, its mode and the fix.
pub fn check_private(path: &Path) -> Result<()> {
    match open_to_others(path)? {
        Some(problem) => anyhow::bail!("{problem} and start again"),
        None => Ok(()),
    }
}

/// [`check_private`] for `root` and everything below it (symbolic links are skipped, not followed).
pub fn check_private_tree(root: &Path) -> Result<()> {
    let fix_all = |problem: String| {
        anyhow::anyhow!(
            "{problem} (or, for all of {}: `chmod -R go-rwx {}`) and start again",
            root.display(),
            root.display()
        )
    };
    if let Some(problem) = open_to_others(root)? {
        return Err(fix_all(problem));
    }
    if !std::fs::metadata(root).with_context(|| format!("read {}", root.display()))?.is_dir() {
        return Ok(());
    }
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            let kind = entry.file_type().with_context(|| format!("read {}", entry.path().display()))?;
            if kind.is_symlink() {
                continue;
            }
            if let Some(problem) = open_to_others(&entry.path())? {
                return Err(fix_all(problem));
            }
            if kind.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(())
}

/// What is wrong with `path`'s mode, with the fix, if others may reach it.
fn open_to_others(path: &Path) -> Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("read the mode of {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    let (kind, fix) = if meta.is_dir() { ("directory", "chmod 700") } else { ("file", "chmod 600") };
    Ok(Some(format!(
        "{kind} {} is mode {mode:04o}: other local users can reach it, and it holds keys or tokens. Run `{fix} {}`",
        path.display(),
        path.display()
    )))
}

/// Refuses a directory that users other than its owner may write to (group- or world-writable):
/// whoever can write there can replace what it holds.
pub fn check_not_shared_writable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir).with_context(|| format!("read the mode of {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        anyhow::bail!(
            "directory {} is mode {mode:04o}: other local users can write to it and replace what it holds. \
             Run `chmod go-w {}` and start again",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Parses a duration written like `"500ms"`, `"5s"` or `"1h"`.
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

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fifty-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_trees_refuse_any_entry_others_can_reach_and_name_it() {
        let root = temp("private");
        create_private_dir(&root).unwrap();
        create_private_dir(&root.join("tls")).unwrap();
        write_private(&root.join("tls/ca-key.pem"), "key").unwrap();
        check_private_tree(&root).unwrap();

        // A file others may read, deep inside: refused, naming the file and the fix.
        std::fs::write(root.join("tls/ca.pem"), "cert").unwrap();
        chmod(&root.join("tls/ca.pem"), 0o644);
        let err = format!("{:#}", check_private_tree(&root).unwrap_err());
        assert!(err.contains(&format!("file {} is mode 0644", root.join("tls/ca.pem").display())), "{err}");
        assert!(err.contains(&format!("chmod 600 {}", root.join("tls/ca.pem").display())), "{err}");
        chmod(&root.join("tls/ca.pem"), 0o600);

        // The root itself made 0755.
        chmod(&root, 0o755);
        let err = format!("{:#}", check_private_tree(&root).unwrap_err());
        assert!(err.contains(&format!("chmod 700 {}", root.display())), "{err}");
        chmod(&root, 0o700);
        check_private_tree(&root).unwrap();

        // Write access for others is refused separately (the agent's data root may be 0755).
        check_not_shared_writable(&root).unwrap();
        chmod(&root, 0o775);
        let err = format!("{:#}", check_not_shared_writable(&root).unwrap_err());
        assert!(err.contains(&format!("chmod go-w {}", root.display())), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn write_private_makes_0600_even_over_a_leftover_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp("leftover");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("key.tmp"), "old").unwrap();
        chmod(&root.join("key.tmp"), 0o644);
        write_private(&root.join("key.pem"), "secret").unwrap();
        let mode = std::fs::metadata(root.join("key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&root).unwrap();
    }

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
