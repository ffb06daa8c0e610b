//! Every process a job's command starts, found again to be killed: when the command ends, when
//! the job is cancelled or times out, and, after the agent itself was killed (SIGKILL: nothing
//! of it runs), when it starts again. A test suite's daemon that leaves the job's process group
//! (`setsid`) is found too.
//!
//! Two ways, the first that works on the host:
//! - **cgroup v2**: each command runs in a cgroup of its own, `<agent's cgroup>/fifty-jobs-<data
//!   dir hash>/<tree>` on the cgroup2 mount (`/sys/fs/cgroup` under systemd, which needs
//!   `Delegate=yes` in the agent's unit; `/sys/fs/cgroup/unified` on a hybrid host). The child
//!   joins it before it execs (through a descriptor of `cgroup.procs` the agent opened, Linux
//!   5.16 checks the opener's rights), so nothing it forks escapes; `cgroup.kill` (Linux 5.14)
//!   kills everything in it at once.
//! - **Otherwise** (no writable cgroup2): the command's environment carries
//!   `FIFTY_JOB_TREE=<tree>`, which its descendants inherit; killing the tree kills every process
//!   whose `/proc/<pid>/environ` holds it (as Jenkins' process tree killer does). A process that
//!   clears its environment escapes this one; the job user's sweep ([`crate::sandbox`]) still
//!   gets it when the agent runs as root with `[jobs] user`.
//!
//! Each live tree is recorded in `<data dir>/job-trees/<tree>.json` while its command runs, so
//! a starting agent kills whatever an earlier run left ([`JobTrees::kill_leftovers`]).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::procs::{all_pids, ProcessId};

/// The file in `<data_dir>/job-trees/` naming the cgroup that holds this agent's job cgroups.
pub const CGROUP_FILE: &str = "cgroup";

/// The variable that marks a job's processes when there are no cgroups.
pub const TREE_VAR: &str = "FIFTY_JOB_TREE";

/// Where this agent's job trees are kept.
#[derive(Clone, Debug)]
pub struct JobTrees {
    records: PathBuf,
    /// The cgroup holding this agent's job cgroups, when cgroup v2 is writable here.
    cgroups: Option<PathBuf>,
}

/// A tree's record in the data dir.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    tree: String,
    cgroup: Option<PathBuf>,
    /// The command's shell (its process group's leader), once started.
    leader: Option<ProcessId>,
}

impl JobTrees {
    /// Job trees recorded under `data_dir`, in cgroups when this host lets the agent make them.
    pub fn new(data_dir: &Path) -> Self {
        let records = data_dir.join("job-trees");
        let cgroups = match jobs_cgroup(data_dir) {
            Ok(dir) => {
                info!(cgroup = %dir.display(), "each job's processes run in a cgroup of their own");
                // Named in the data dir, for whoever cleans up after this agent (tests' harness).
                let named = std::fs::create_dir_all(&records)
                    .and_then(|()| std::fs::write(records.join(CGROUP_FILE), dir.as_os_str().as_encoded_bytes()));
                if let Err(e) = named {
                    warn!(error = %e, "cannot note the jobs' cgroup in the data dir");
                }
                Some(dir)
            }
            Err(why) => {
                info!(
                    %why,
                    "no cgroup v2 for jobs; a job's processes are found by the {TREE_VAR} variable they inherit"
                );
                None
            }
        };
        JobTrees { records, cgroups }
    }

    /// Job trees without cgroups, found by their variable alone (what a host without a writable
    /// cgroup2 gets).
    pub fn without_cgroups(data_dir: &Path) -> Self {
        JobTrees { records: data_dir.join("job-trees"), cgroups: None }
    }

    /// Removes this agent's (empty) cgroup of job cgroups: for tests, whose data dirs do not
    /// come back.
    #[cfg(test)]
    pub(crate) fn remove_parent(&self) {
        if let Some(dir) = &self.cgroups {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The agent is stopping: kills every tree, as [`JobTrees::kill_leftovers`] does, and removes
    /// the agent's cgroup of job cgroups; returns how many processes were killed.
    pub fn end(&self) -> usize {
        let killed = self.kill_leftovers();
        if let Some(dir) = &self.cgroups {
            let _ = std::fs::remove_dir(dir);
            let _ = std::fs::remove_file(self.records.join(CGROUP_FILE));
        }
        killed
    }

    /// Whether trees are cgroups here.
    pub fn uses_cgroups(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Kills every tree an earlier run of the agent recorded (it was killed, or stopped, while
    /// jobs ran); returns how many processes were killed.
    pub fn kill_leftovers(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.records) else { return 0 };
        let mut killed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let record = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            match record {
                Some(record) => killed += kill_record(&record),
                None => warn!(file = %path.display(), "unreadable job tree record; removed"),
            }
            let _ = std::fs::remove_file(&path);
        }
        // Tree cgroups whose removal timed out earlier (a process slow to die), or whose record
        // was never written: no tree is live now, so whatever is in them goes too.
        if let Some(parent) = &self.cgroups {
            for tree in std::fs::read_dir(parent).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
                killed += kill_cgroup(&tree.path());
            }
        }
        if killed > 0 {
            warn!(processes = killed, "killed job processes an earlier run of the agent left running");
        }
        killed
    }

    /// Starts a new tree for one command (before it is spawned).
    pub fn start(&self) -> std::io::Result<JobTree> {
        std::fs::create_dir_all(&self.records)?;
        let tree = format!("{:016x}", rand::random::<u64>());
        let mut cgroup = None;
        let mut procs = None;
        if let Some(parent) = &self.cgroups {
            let dir = parent.join(&tree);
            match std::fs::create_dir(&dir)
                .and_then(|()| std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs")))
            {
                Ok(file) => {
                    cgroup = Some(dir);
                    procs = Some(file);
                }
                Err(e) => {
                    warn!(cgroup = %dir.display(), error = %e, "cannot make the job's cgroup; using {TREE_VAR} alone");
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        let tree = JobTree { record: Record { tree, cgroup, leader: None }, records: self.records.clone(), procs };
        tree.save()?;
        Ok(tree)
    }
}

/// The processes of one command.
pub struct JobTree {
    record: Record,
    records: PathBuf,
    /// `cgroup.procs` of the tree's cgroup, opened by the agent.
    procs: Option<std::fs::File>,
}

impl JobTree {
    fn path(&self) -> PathBuf {
        self.records.join(format!("{}.json", self.record.tree))
    }

    fn save(&self) -> std::io::Result<()> {
        let tmp = self.records.join(format!("{}.tmp", self.record.tree));
        std::fs::write(&tmp, serde_json::to_vec(&self.record).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, self.path())
    }

    /// Sets `cmd` up to run in this tree: the variable, and the cgroup joined before exec.
    pub fn prepare(&self, cmd: &mut tokio::process::Command) {
        cmd.env(TREE_VAR, &self.record.tree);
        if let Some(procs) = &self.procs {
            let fd = procs.as_raw_fd();
            // SAFETY: write(2) is async-signal-safe; the descriptor stays open in the parent
            // until the tree is dropped, after the spawn. "0" moves the writing process itself.
            unsafe {
                cmd.pre_exec(move || {
                    // A failure is not fatal: the agent moves the child after the spawn too.
                    libc::write(fd, b"0\n".as_ptr().cast(), 2);
                    Ok(())
                });
            }
        }
    }

    /// The command was spawned as `pid`: recorded, and moved into the cgroup in case the child
    /// could not move itself.
    pub fn started(&mut self, pid: Option<u32>) {
        let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else { return };
        if let Some(procs) = &mut self.procs {
            let _ = procs.write_all(format!("{pid}\n").as_bytes());
        }
        self.record.leader = ProcessId::of(pid);
        if let Err(e) = self.save() {
            warn!(error = %e, "cannot record the job's processes; a killed agent may leave them running");
        }
    }

    /// Kills every process of the tree (the command may still be running).
    pub fn kill(&self) -> usize {
        kill_record(&self.record)
    }
}

impl Drop for JobTree {
    /// The command is over: whatever it left is killed, its cgroup removed, its record too.
    fn drop(&mut self) {
        self.procs = None;
        kill_record(&self.record);
        let _ = std::fs::remove_file(self.path());
    }
}

/// Kills what `record` names: its cgroup's processes, else every process carrying its variable;
/// removes the cgroup. Returns how many processes were signalled.
fn kill_record(record: &Record) -> usize {
    let mut killed = 0;
    if let Some(cgroup) = &record.cgroup {
        killed += kill_cgroup(cgroup);
    }
    // Also by the variable: a tree recorded before its child joined the cgroup, or a host whose
    // cgroup.kill is missing.
    let marker = format!("{TREE_VAR}={}", record.tree);
    let me = std::process::id() as i32;
    for pid in all_pids().filter(|p| *p != me && *p > 1) {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var == marker.as_bytes()) {
            // SAFETY: plain syscall on a process that carries this tree's marker.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

/// Kills every process in `cgroup` and removes it; returns how many it held.
fn kill_cgroup(cgroup: &Path) -> usize {
    let members = || -> Vec<i32> {
        std::fs::read_to_string(cgroup.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    };
    let found = members();
    if found.is_empty() {
        let _ = std::fs::remove_dir(cgroup);
        return 0;
    }
    if std::fs::write(cgroup.join("cgroup.kill"), "1").is_err() {
        // Before Linux 5.14: one by one, until none is left (a fork in between is caught next time).
        for _ in 0..10 {
            let pids = members();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: plain syscall on a process in the job's own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
    // The cgroup can be removed once its processes are gone (the kernel finishes the kill within
    // milliseconds). The wait is short, as it holds up the agent: one left behind is removed at
    // the agent's next start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while std::fs::remove_dir(cgroup).is_err() && cgroup.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    found.len()
}

/// `<agent's cgroup>/fifty-jobs-<hash of data_dir>` on the cgroup2 mount, made and checked
/// writable; why not, otherwise.
fn jobs_cgroup(data_dir: &Path) -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("read mountinfo: {e}"))?;
    // `id parent major:minor root mount-point options ... - fstype source super-options`
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or("no cgroup2 file system is mounted")?;
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("read /proc/self/cgroup: {e}"))?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).ok_or("the agent is in no cgroup v2")?;
    let base = mount.join(own.trim().trim_start_matches('/'));
    if !base.join("cgroup.kill").exists() && !base.join("cgroup.procs").exists() {
        return Err(format!("{} is not the agent's cgroup", base.display()));
    }
    let absolute = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = <sha2::Sha256 as sha2::Digest>::digest(absolute.as_os_str().as_encoded_bytes());
    let name = format!("fifty-jobs-{}", &hex(&hash)[..12]);
    let dir = base.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
    }
    // Writable for real: a child cgroup can be made and removed.
    let probe = dir.join("probe");
    std::fs::create_dir(&probe)
        .and_then(|()| std::fs::remove_dir(&probe))
        .map_err(|e| format!("cannot make cgroups under {}: {e}", dir.display()))?;
    Ok(dir)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fifty-{what}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn wait_gone(pid: i32) -> bool {
        let id = ProcessId {
            pid,
            start_ticks: crate::procs::stat(pid).map_or(0, |s| s.start_ticks),
            boot_id: crate::procs::boot_id(),
        };
        let start = Instant::now();
        while id.is_running() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        !id.is_running()
    }

    /// A command that starts a daemon in a session of its own and writes the daemon's pid.
    async fn run_with_daemon(trees: &JobTrees, dir: &Path) -> (JobTree, i32) {
        let pidfile = dir.join("daemon.pid");
        let mut tree = trees.start().unwrap();
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "setsid sh -c 'echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 600' </dev/null >/dev/null 2>&1 &",
            pidfile.display()
        ));
        cmd.process_group(0);
        tree.prepare(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        tree.started(child.id());
        assert!(child.wait().await.unwrap().success());
        let start = Instant::now();
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok()) {
                break pid;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the daemon never wrote its pid");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (tree, pid)
    }

    async fn a_daemon_left_by_a_killed_agent_is_killed_at_the_next_start(trees: impl Fn(&Path) -> JobTrees) {
        let dir = scratch("job-tree");
        let (tree, daemon) = run_with_daemon(&trees(&dir), &dir).await;
        // The agent dies: nothing of it runs, so the tree is not dropped.
        std::mem::forget(tree);
        assert!(!wait_gone_quickly(daemon), "the daemon runs on after its agent died");
        let killed = trees(&dir).kill_leftovers();
        assert!(killed >= 1, "killed {killed}");
        assert!(wait_gone(daemon), "the daemon {daemon} survived the agent's restart");
        let records = std::fs::read_dir(dir.join("job-trees")).unwrap().flatten();
        assert_eq!(records.filter(|e| e.path().extension().is_some_and(|x| x == "json")).count(), 0, "records removed");
        trees(&dir).remove_parent();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn wait_gone_quickly(pid: i32) -> bool {
        crate::procs::stat(pid).is_none_or(|s| s.state == 'Z')
    }

    #[tokio::test]
    async fn without_cgroups_a_daemon_left_by_a_killed_agent_is_found_by_its_variable() {
        a_daemon_left_by_a_killed_agent_is_killed_at_the_next_start(JobTrees::without_cgroups).await;
    }

    #[tokio::test]
    async fn with_cgroups_where_the_host_has_them_a_daemon_left_by_a_killed_agent_is_killed() {
        let probe = scratch("job-tree-probe");
        let trees = JobTrees::new(&probe);
        let have = trees.uses_cgroups();
        trees.remove_parent();
        let _ = std::fs::remove_dir_all(&probe);
        if !have {
            eprintln!("no writable cgroup2 here: the fallback test covers this host");
            return;
        }
        a_daemon_left_by_a_killed_agent_is_killed_at_the_next_start(JobTrees::new).await;
    }

    #[tokio::test]
    async fn with_cgroups_a_tree_without_its_record_is_still_killed_at_the_next_start() {
        let dir = scratch("job-tree-norecord");
        let trees = JobTrees::new(&dir);
        if !trees.uses_cgroups() {
            trees.remove_parent();
            eprintln!("no writable cgroup2 here: nothing to check");
            return;
        }
        let (tree, daemon) = run_with_daemon(&trees, &dir).await;
        std::mem::forget(tree);
        // The record was lost (the agent died before writing it, or the disk lost it).
        for entry in std::fs::read_dir(dir.join("job-trees")).unwrap().flatten() {
            if entry.path().extension().is_some_and(|x| x == "json") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        assert!(JobTrees::new(&dir).kill_leftovers() >= 1);
        assert!(wait_gone(daemon), "the daemon {daemon} in a cgroup without a record survived");
        trees.remove_parent();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_finished_commands_daemon_in_a_new_session_dies_with_the_tree() {
        for trees in [JobTrees::new, JobTrees::without_cgroups] {
            let dir = scratch("job-tree-end");
            let (tree, daemon) = run_with_daemon(&trees(&dir), &dir).await;
            drop(tree);
            assert!(wait_gone(daemon), "the daemon {daemon} outlived its command");
            trees(&dir).remove_parent();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
