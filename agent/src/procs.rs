//! Processes the agent finds again after a restart: a pid alone names another process once the
//! old one is gone (pids are reused), so a process is known by its pid, its start time (in clock
//! ticks since boot, `/proc/<pid>/stat` field 22) and the boot it started in. Linux `/proc`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a process that cannot be watched through a pidfd is looked at.
const EXIT_POLL: Duration = Duration::from_millis(100);

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `Z` (a zombie: dead, not yet collected) and so on.
    pub state: char,
    /// Its process group.
    pub pgrp: i32,
    /// When it started, in clock ticks since boot.
    pub start_ticks: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ... starttime(22) ...`; comm may hold spaces and parentheses.
    let (_, fields) = text.rsplit_once(") ")?;
    let fields: Vec<&str> = fields.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty if unreadable.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// One process, told apart from any later one that gets the same pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Its pid.
    pub pid: i32,
    /// Its start time, clock ticks since boot.
    pub start_ticks: u64,
    /// The boot it started in.
    pub boot_id: String,
}

impl ProcessId {
    /// The process running as `pid` now, if there is one.
    pub fn of(pid: i32) -> Option<Self> {
        let stat = stat(pid)?;
        Some(ProcessId { pid, start_ticks: stat.start_ticks, boot_id: boot_id() })
    }

    /// Whether this very process still runs (not a zombie, not another process with its pid).
    pub fn is_running(&self) -> bool {
        self.pid > 1
            && self.boot_id == boot_id()
            && stat(self.pid).is_some_and(|s| s.start_ticks == self.start_ticks && !matches!(s.state, 'Z' | 'X'))
    }

    /// Waits until this process has exited. It need not be a child of the agent: a pidfd
    /// (Linux 5.3) turns readable when it exits; without one, `/proc` is polled.
    pub async fn exited(&self) {
        if !self.is_running() {
            return;
        }
        if let Ok(fd) = pidfd_open(self.pid) {
            // The pidfd was opened after the identity check: if the pid was reused in between,
            // the check below ends the wait.
            if self.is_running() {
                // SAFETY: the AsyncFd owns the OwnedFd, which stays open until it is dropped.
                let watch =
                    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
                if let Ok(watch) = watch {
                    let _ = watch.readable().await;
                    return;
                }
            } else {
                return;
            }
        }
        while self.is_running() {
            tokio::time::sleep(EXIT_POLL).await;
        }
    }
}

/// `pidfd_open(2)`.
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just gave us and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    debug_assert!(fd.as_raw_fd() >= 0);
    Ok(fd)
}

/// Whether a live (not zombie) process is in group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only asks whether the group exists.
    if unsafe { libc::killpg(pgid, 0) } != 0 {
        return io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    }
    all_pids().any(|pid| stat(pid).is_some_and(|s| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X')))
}

/// Every pid in `/proc` now.
pub fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_is_told_apart_from_a_later_one_with_its_pid_and_its_exit_is_seen() {
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let id = ProcessId::of(child.id() as i32).unwrap();
        assert!(id.is_running());
        let later = ProcessId { start_ticks: id.start_ticks + 1, ..id.clone() };
        assert!(!later.is_running(), "another start time is another process");
        let rebooted = ProcessId { boot_id: "another boot".into(), ..id.clone() };
        assert!(!rebooted.is_running());
        let watching = tokio::spawn({
            let id = id.clone();
            async move { id.exited().await }
        });
        child.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(30), watching).await.expect("the exit is seen").unwrap();
        let _ = child.wait();
        assert!(!id.is_running());
    }
}
