//! What a CI job can reach. A job runs a commit's own commands; nothing beyond that commit:
//! - it runs as `[jobs] user` (an unprivileged user, no supplementary groups, no new privileges
//!   through setuid binaries), so it cannot read the agent's data dir (0700: identity, cached
//!   clones, artifacts) nor write anything the agent or a later job runs;
//! - with a clean environment: `PATH`, `LANG`, `HOME` and `TMPDIR` inside its own directory, and
//!   the `FIFTY_*` variables of its kind, nothing of the agent's;
//! - in a directory of its own (`<jobs dir>/job-<id>-<attempt>`, 0700, owned by the job user)
//!   holding a clone of the commit that shares no git dir with the agent's cache;
//! - files it leaves (artifact, JUnit reports, `fifty.toml`) are read only if the job's user owns
//!   them, so a symlink or link to the agent's own files reads nothing;
//! - when no job runs, nothing of the job user runs either: leftovers (daemons a job started in a
//!   new session) are killed. Agents sharing a job user (several on one host) take turns through a
//!   lock: each holds it shared while any of its jobs run, and the sweep needs it exclusively.
//!
//! An agent not running as root cannot switch users: then jobs run as the agent's own user and
//! can read and write whatever the agent can. The agent says so at start (WARN).

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

/// Who jobs run as, resolved once at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobUser {
    /// The user's name (or the uid, for an agent's own user without a name).
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Whether the agent switches to it (it runs as root and the user is another one).
    pub switch: bool,
}

/// Looks a user up by name: `(uid, gid)`, or `None` when there is no such user.
pub fn lookup_user(name: &str) -> Result<Option<(u32, u32)>> {
    let cname = CString::new(name).with_context(|| format!("user name {name:?}"))?;
    // SAFETY: getpwnam_r writes into `pwd` and `buf`, which outlive the call; `result` is null
    // or points at `pwd`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result = std::ptr::null_mut();
        let rc = libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).with_context(|| format!("look up user {name:?}"));
        }
        Ok((!result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid)))
    }
}

fn effective_ids() -> (u32, u32) {
    // SAFETY: plain syscalls without arguments.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

impl JobUser {
    /// The agent's own user: jobs run with the agent's rights.
    pub fn agent_itself() -> Self {
        let (uid, gid) = effective_ids();
        Self { name: format!("uid {uid}"), uid, gid, switch: false }
    }

    /// Resolves `[jobs] user`. Root switches to it; a user that does not exist, is root, or that
    /// an agent not running as root cannot switch to is an error naming the key. Without one, or
    /// without root, jobs run as the agent's own user, and this says so (WARN).
    pub fn resolve(configured: Option<&str>) -> Result<Self> {
        let (euid, _) = effective_ids();
        let Some(name) = configured else {
            let me = Self::agent_itself();
            warn!(
                uid = me.uid,
                "[jobs] user is not set: CI jobs run as the agent's own user and can read this host's identity \
                 and change what later jobs run; run the agent as root with [jobs] user = \"fifty-job\" \
                 (`fifty-agent join` as root sets it up)"
            );
            return Ok(me);
        };
        let Some((uid, gid)) = lookup_user(name)? else {
            bail!(
                "config key jobs.user: there is no user {name:?} on this host (create it: `useradd --system \
                 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {name}`)"
            );
        };
        if uid == 0 {
            bail!("config key jobs.user: {name:?} is root; jobs must run as an unprivileged user");
        }
        if euid == 0 {
            info!(user = name, uid, gid, "CI jobs run as {name}");
            return Ok(Self { name: name.to_string(), uid, gid, switch: true });
        }
        if uid == euid {
            warn!(
                user = name,
                "[jobs] user is the agent's own user: CI jobs can read this host's identity and change what later \
                 jobs run; run the agent as root to isolate them"
            );
            return Ok(Self { name: name.to_string(), uid, gid, switch: false });
        }
        bail!(
            "config key jobs.user: the agent runs as uid {euid}, not root, so it cannot run jobs as {name:?}; run it \
             as root, or remove jobs.user (jobs then run as the agent's own user, unisolated)"
        )
    }

    /// Sets `cmd` up to run as the job user: its uid and gid, no supplementary groups (std's
    /// `uid()` drops them when root switches), no privileges gained through setuid binaries.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        if !self.switch {
            return;
        }
        cmd.uid(self.uid).gid(self.gid);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Gives the tree at `path` to the job user (no symlink is followed).
    pub fn hand_over(&self, path: &Path) -> std::io::Result<()> {
        if !self.switch {
            return Ok(());
        }
        let lchown = |p: &Path| -> std::io::Result<()> {
            let c = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))?;
            // SAFETY: `c` is a valid C string for the call's duration.
            if unsafe { libc::lchown(c.as_ptr(), self.uid, self.gid) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        lchown(path)?;
        if std::fs::symlink_metadata(path)?.is_dir() {
            for entry in std::fs::read_dir(path)? {
                self.hand_over(&entry?.path())?;
            }
        }
        Ok(())
    }

    /// The lock agents running jobs as this user share (see the module docs): a root-owned
    /// 0600 file in the temporary directory, which the job user can neither open nor replace.
    fn lock_file(&self) -> std::io::Result<File> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("fifty-agent-jobs-{}.lock", self.uid));
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        };
        let file = match open() {
            Ok(f) => f,
            Err(_) => {
                // Made by someone else (the job user?), or a symlink: replaced by ours.
                let _ = std::fs::remove_file(&path);
                open()?
            }
        };
        let meta = file.metadata()?;
        if meta.uid() != effective_ids().0 || meta.permissions().mode() & 0o077 != 0 {
            let _ = std::fs::remove_file(&path);
            return Err(std::io::Error::other(format!("{} was not the agent's own; removed", path.display())));
        }
        Ok(file)
    }

    /// Holds the job user's lock shared while this agent runs jobs (dropping it lets go):
    /// another agent sharing the user does not sweep meanwhile.
    pub fn hold_while_running(&self) -> Option<File> {
        if !self.switch {
            return None;
        }
        let file = match self.lock_file() {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "the job user's lock: jobs may be swept by another agent sharing the user");
                return None;
            }
        };
        // SAFETY: plain syscall on a descriptor we own; blocks only while a sweep runs.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_SH) };
        Some(file)
    }

    /// Kills every process of the job user (the sweep between jobs): `kill -KILL -1` run as that
    /// user reaches exactly its processes. Only for a user the agent switches to, only while it
    /// runs no job, and only if no other agent sharing the user runs one (else that agent sweeps
    /// when its jobs end).
    pub fn kill_leftovers(&self) {
        if !self.switch {
            return;
        }
        let Ok(lock) = self.lock_file() else { return };
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return;
        }
        for _ in 0..2 {
            use std::os::unix::process::CommandExt;
            // The shell kills itself too; its exit status says nothing.
            let _ = std::process::Command::new("sh")
                .args(["-c", "kill -KILL -1"])
                .env_clear()
                .uid(self.uid)
                .gid(self.gid)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    /// Opens a file a job left (artifact, JUnit report, `fifty.toml`), refusing what the job's
    /// user could not have read itself: anything not a regular file or not owned by that user
    /// (so a symlink to the agent's key reads nothing). Never blocks on a FIFO.
    pub fn open_job_file(&self, path: &Path) -> Result<(File, std::fs::Metadata), String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let meta = file.metadata().map_err(|e| format!("stat {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        if meta.uid() != self.uid {
            return Err(format!(
                "{} is not the job's own file (owner uid {}, the job runs as {}); a link out of the work tree is \
                 not read",
                path.display(),
                meta.uid(),
                self.name
            ));
        }
        Ok((file, meta))
    }
}

/// Creates `name` as a system user with a group of its own, no home and no login shell, unless it
/// exists. Needs root.
pub fn create_user(name: &str) -> Result<()> {
    if lookup_user(name)?.is_some() {
        return Ok(());
    }
    let out = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "Fifty CI jobs",
            "--",
            name,
        ])
        .output()
        .context("run useradd (is the shadow/passwd package installed?)")?;
    if !out.status.success() {
        bail!("useradd {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    if lookup_user(name)?.is_none() {
        bail!("useradd {name} succeeded but the user cannot be looked up");
    }
    Ok(())
}

/// Whether the agent runs as root.
pub fn is_root() -> bool {
    effective_ids().0 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_user_that_cannot_be_used_is_refused_naming_the_key() {
        let err = JobUser::resolve(Some("no-such-user-fifty")).unwrap_err().to_string();
        assert!(err.contains("config key jobs.user") && err.contains("useradd"), "{err}");
        if is_root() {
            let err = JobUser::resolve(Some("root")).unwrap_err().to_string();
            assert!(err.contains("jobs.user") && err.contains("is root"), "{err}");
        } else {
            let err = JobUser::resolve(Some("root")).unwrap_err().to_string();
            assert!(err.contains("jobs.user"), "{err}");
        }
        let me = JobUser::resolve(None).unwrap();
        assert!(!me.switch && me.uid == effective_ids().0);
    }
}
