//! How the CLI prints: aligned tables for people, the API's JSON with `--json`.

use std::fmt::Write;

use anyhow::Result;
use serde::Serialize;

use crate::views::{ClusterView, GateView, HostView, RepoView, StatusView, TokenCreated, TokenView};

/// Prints `value` as JSON or through `human`.
pub fn print<T: Serialize>(json: bool, value: &T, human: impl Fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human(value));
    }
    Ok(())
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Bytes as GiB with one decimal.
pub fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 30) as f64)
}

fn or_dash<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// `fifty hosts`.
pub fn hosts(hosts: &[HostView]) -> String {
    if hosts.is_empty() {
        return "No hosts. Enroll one with `fifty-agent join` (make a token with `fifty token create --role agent`).\n"
            .into();
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let labels = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
            let memory = match (h.mem_used_bytes, h.mem_total_bytes) {
                (Some(u), Some(t)) => format!("{}/{} GiB", gib(u), gib(t)),
                _ => "-".into(),
            };
            vec![
                h.name.clone(),
                h.state.as_str().to_string(),
                labels,
                or_dash(h.cpu_percent, |c| format!("{c:.1}")),
                or_dash(h.load, |l| format!("{:.2}", l[0])),
                memory,
                or_dash(h.disk_free_bytes, |d| format!("{} GiB", gib(d))),
                or_dash(h.agent_version.clone(), |v| v),
                or_dash(h.last_seen_secs_ago, |s| format!("{s:.0}s ago")),
            ]
        })
        .collect();
    table(&["NAME", "STATE", "LABELS", "CPU%", "LOAD", "MEMORY", "DISK FREE", "VERSION", "LAST SEEN"], &rows)
}

/// `fifty status`.
pub fn status(s: &StatusView) -> String {
    format!(
        "Cluster      created {}, CA sha256:{}\n\
         Raft         {} coordinators, leader {}, term {}, commit {}, applied {}\n\
         Coordinator  {} (fifty {}), up {}s, API {}, QUIC {}\n\
         Hosts        {} total, {} ready, {} down; {} agents connected\n\
         Heartbeats   every {}, down after {}\n",
        s.cluster_created_at.as_deref().unwrap_or("(forming)"),
        &s.ca_fingerprint[..16.min(s.ca_fingerprint.len())],
        s.coordinators,
        s.leader_id.as_deref().unwrap_or("none"),
        s.term,
        s.commit_index,
        s.applied_index,
        s.node_id,
        s.version,
        s.uptime_secs,
        s.http_addr,
        s.quic_addr,
        s.hosts.total,
        s.hosts.ready,
        s.hosts.down,
        s.agent_links,
        s.heartbeat_interval,
        s.down_after,
    ) + &status_storage(s)
}

/// The state's size and retention, in `fifty status`.
fn status_storage(s: &StatusView) -> String {
    let mut out = String::new();
    if let Some(st) = &s.store {
        out += &format!(
            "State        {} records, {}; Raft log {} entries, {}; on disk {}\n",
            st.state_records,
            size(st.state_bytes),
            st.log_entries,
            size(st.log_bytes),
            size(st.disk_bytes),
        );
    }
    if let Some((n, bytes)) = s.artifacts {
        out += &format!("Artifacts    {n}, {} (in the blob store)\n", size(bytes));
    }
    if let Some(r) = &s.retention {
        out += &format!("Retention    {}\n", r.settings);
        match &r.last_run {
            Some(at) => {
                out += &format!(
                    "             last removed {} at {}{}; {} since the cluster began\n",
                    r.removed.describe(),
                    at,
                    if r.more { " (more to go)" } else { "" },
                    r.total.describe()
                )
            }
            None => out += "             nothing removed yet\n",
        }
    }
    out
}

/// Bytes as people read them.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 10 << 30 => format!("{} GiB", b >> 30),
        b if b >= 10 << 20 => format!("{} MiB", b >> 20),
        b if b >= 10 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// `fifty cluster members`.
pub fn cluster(c: &ClusterView) -> String {
    let rows: Vec<Vec<String>> = c
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                if m.leader {
                    "leader"
                } else if m.voter {
                    "follower"
                } else if m.learner {
                    "learner"
                } else {
                    "not voting"
                }
                .to_string(),
                m.quic_addr.clone(),
                m.http_addr.clone(),
                m.matched.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    format!(
        "{}\nterm {}, commit {}, applied {} (as seen by {})\n",
        table(&["NODE", "ROLE", "QUIC", "API", "MATCHED"], &rows),
        c.term,
        c.commit_index,
        c.applied_index,
        c.node_id
    )
}

/// `fifty cluster check`.
pub fn cluster_check(c: &crate::views::ClusterCheckView) -> String {
    let rows: Vec<Vec<String>> = c
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.applied.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                n.digest.as_deref().map(|d| d[..16.min(d.len())].to_string()).unwrap_or_else(|| "-".into()),
                n.verdict.clone(),
            ]
        })
        .collect();
    format!(
        "{}\ncheckpoint at index {}: {}\n",
        table(&["NODE", "APPLIED", "DIGEST", "STATE"], &rows),
        c.index,
        if c.consistent { "every coordinator agrees" } else { "NOT CONSISTENT" }
    )
}

/// `fifty repo list`.
pub fn repos(repos: &[RepoView]) -> String {
    let rows: Vec<Vec<String>> =
        repos.iter().map(|r| vec![r.name.clone(), r.branch.clone(), r.url.clone(), r.fix_marker.clone()]).collect();
    table(&["NAME", "BRANCH", "URL", "FIX MARKER"], &rows)
}

/// `fifty gate status` (and a refused `gate check`).
pub fn gate(g: &GateView) -> String {
    if g.open {
        return format!("Gate of {}/{} is OPEN.\n", g.repo, g.branch);
    }
    let cause = match &g.cause {
        Some(crate::gate::Cause::Build { sha }) => {
            format!(
                "the build of {} is red; a push whose message carries {} is let in",
                &sha[..sha.len().min(12)],
                g.fix_marker
            )
        }
        Some(crate::gate::Cause::Manual { by }) => format!("closed by {by}"),
        Some(crate::gate::Cause::Immune { sha, incident }) => format!(
            "the immune system reverted {}; only its revert commit is let in until an admin runs `fifty gate open {}` \
             (incident {incident}: `fifty incident show {incident}`)",
            &sha[..sha.len().min(12)],
            g.repo
        ),
        None => "closed".into(),
    };
    format!(
        "Gate of {}/{} is CLOSED since {}: {}\n({cause})\n",
        g.repo,
        g.branch,
        g.since.as_deref().unwrap_or("?"),
        g.reason.as_deref().unwrap_or("no reason given"),
    )
}

/// Percent-encodes a query value.
pub fn url_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `fifty token create`.
pub fn token_created(t: &TokenCreated) -> String {
    let expiry = t.expires_at.as_deref().map(|e| format!(", expires {e}")).unwrap_or_default();
    format!("{}\n\n(accessor {}, role {}{expiry}; the token is shown only now)\n", t.token, t.accessor, t.role)
}

/// `fifty token list`.
pub fn tokens(tokens: &[TokenView]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let state = if t.revoked {
                "revoked"
            } else if t.expired {
                "expired"
            } else if t.max_uses.is_some_and(|m| t.uses >= m) {
                "used"
            } else {
                "valid"
            };
            vec![
                t.accessor.clone(),
                t.role.clone(),
                state.to_string(),
                match t.max_uses {
                    Some(m) => format!("{}/{m}", t.uses),
                    None => t.uses.to_string(),
                },
                t.expires_at.clone().unwrap_or_else(|| "never".into()),
                t.description.clone(),
            ]
        })
        .collect();
    table(&["ACCESSOR", "ROLE", "STATE", "USES", "EXPIRES", "DESCRIPTION"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }

    /// A coordinator still catching up shows as a learner, not as "not voting".
    #[test]
    fn members_show_learners() {
        let member = |id: &str, leader: bool, voter: bool, learner: bool| crate::views::MemberView {
            id: id.into(),
            quic_addr: "q".into(),
            http_addr: "h".into(),
            leader,
            voter,
            learner,
            matched: None,
        };
        let view = ClusterView {
            node_id: "a".into(),
            leader_id: Some("a".into()),
            term: 2,
            commit_index: 9,
            applied_index: 9,
            members: vec![
                member("a", true, true, false),
                member("b", false, true, false),
                member("c", false, false, true),
            ],
        };
        let text = cluster(&view);
        let role =
            |id: &str| text.lines().find(|l| l.starts_with(id)).unwrap().split_whitespace().nth(1).unwrap().to_string();
        assert_eq!([role("a"), role("b"), role("c")], ["leader", "follower", "learner"]);
    }
}

fn secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

fn state_word(s: crate::ci::CommitState) -> &'static str {
    match s {
        crate::ci::CommitState::Planning => "planning",
        crate::ci::CommitState::Testing => "testing",
        crate::ci::CommitState::Passed => "passed",
        crate::ci::CommitState::Failed => "FAILED",
    }
}

/// `fifty commits`.
pub fn commits(commits: &[crate::views::CommitSummary]) -> String {
    if commits.is_empty() {
        return "No commits yet. Wire scripts/hooks/post-receive into the repository, or run `fifty commit notify`.\n"
            .into();
    }
    let rows: Vec<Vec<String>> = commits
        .iter()
        .map(|c| {
            vec![
                c.sha[..c.sha.len().min(10)].to_string(),
                format!("{}/{}", c.repo, c.branch),
                state_word(c.state).to_string(),
                if c.shards == 0 { "-".into() } else { format!("{}/{}", c.shards_passed, c.shards) },
                or_dash(c.duration_secs, secs),
                c.author.clone(),
                c.subject.clone(),
            ]
        })
        .collect();
    table(&["COMMIT", "REPO", "STATE", "SHARDS", "TOOK", "AUTHOR", "SUBJECT"], &rows)
}

/// `fifty commit show`.
pub fn commit(c: &crate::views::CommitView) -> String {
    let s = &c.summary;
    let mut out = format!(
        "commit {}  {}/{}  {}{}\n",
        s.sha,
        s.repo,
        s.branch,
        state_word(s.state),
        s.duration_secs.map(|d| format!(" in {}", secs(d))).unwrap_or_default()
    );
    if !s.subject.is_empty() {
        let _ = writeln!(
            out,
            "  \"{}\"{}",
            s.subject,
            if s.author.is_empty() { String::new() } else { format!(" by {}", s.author) }
        );
    }
    if let Some(e) = &s.error {
        let _ = writeln!(out, "  {e}");
    }
    out.push('\n');
    let mut rows = Vec::new();
    for j in &c.jobs {
        let name = j.shard.map(|n| n.to_string()).unwrap_or_else(|| j.kind.clone());
        let tests = if j.shard.is_some() { j.tests.to_string() } else { "-".into() };
        if j.attempts.is_empty() {
            rows.push(vec![
                name.clone(),
                format!("{:?}", j.state).to_lowercase(),
                tests.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "waiting for a build agent".into(),
            ]);
        }
        for a in &j.attempts {
            let result = match &a.end {
                crate::ci::AttemptEnd::Running => "running".to_string(),
                crate::ci::AttemptEnd::Passed => a.exit.clone().unwrap_or_else(|| "passed".into()),
                crate::ci::AttemptEnd::Failed { why } => format!("failed: {why}"),
                crate::ci::AttemptEnd::Lost { why } => format!("lost, re-queued: {why}"),
            };
            rows.push(vec![
                name.clone(),
                format!("{:?}", j.state).to_lowercase(),
                tests.clone(),
                a.attempt.to_string(),
                a.host.clone(),
                secs(a.duration_secs),
                result,
            ]);
        }
    }
    out.push_str(&table(&["SHARD", "STATE", "TESTS", "ATTEMPT", "AGENT", "TOOK", "RESULT"], &rows));
    if !c.failed_tests.is_empty() {
        out.push_str("\nFailed tests:\n");
        for t in &c.failed_tests {
            let mut tags = Vec::new();
            if t.quarantined {
                tags.push("quarantined");
            }
            if t.flaky {
                tags.push("flaky: passed on retry");
            }
            let tags = if tags.is_empty() { String::new() } else { format!(" [{}]", tags.join(", ")) };
            let _ = writeln!(out, "  {} (shard {}, attempt {}, {}){tags}", t.name, t.shard, t.attempt, t.host);
            for line in t.message.lines().take(6) {
                let _ = writeln!(out, "      {line}");
            }
        }
    }
    if !s.flaky.is_empty() {
        let _ = writeln!(out, "\nFlaky tests (failed, then passed): {}", s.flaky.join(", "));
    }
    for j in &c.jobs {
        for a in &j.attempts {
            for n in &a.notes {
                let _ = writeln!(
                    out,
                    "note (shard {}): {n}",
                    j.shard.map(|s| s.to_string()).unwrap_or_else(|| "plan".into())
                );
            }
        }
    }
    out
}

/// `fifty test list`.
pub fn tests(t: &crate::views::TestsView) -> String {
    let mut out = format!("{}: {} tests with a known duration, {} in all\n", t.repo, t.known, secs(t.total_secs));
    if t.quarantined.is_empty() {
        out.push_str("No quarantined tests.\n");
    } else {
        out.push_str("\nQuarantined (failures reported, not failing commits):\n");
        let rows: Vec<Vec<String>> =
            t.quarantined.iter().map(|(n, by, at)| vec![n.clone(), by.clone(), at.clone()]).collect();
        out.push_str(&table(&["TEST", "BY", "SINCE"], &rows));
    }
    if !t.flaky.is_empty() {
        out.push_str("\nSeen flaky:\n");
        let rows: Vec<Vec<String>> = t
            .flaky
            .iter()
            .map(|(n, sha, at)| vec![n.clone(), sha[..sha.len().min(10)].to_string(), at.clone()])
            .collect();
        out.push_str(&table(&["TEST", "LAST COMMIT", "WHEN"], &rows));
    }
    out
}

/// `fifty releases`.
pub fn releases(releases: &[crate::views::ReleaseView]) -> String {
    if releases.is_empty() {
        return "No releases yet: a green commit of a repository with [package] and [deploy] makes one.\n".into();
    }
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.repo.clone(),
                r.sha[..r.sha.len().min(10)].to_string(),
                format!("sha256:{}", &r.digest[..r.digest.len().min(12)]),
                format!("{:.1} MiB", r.size as f64 / (1 << 20) as f64),
                r.state.clone(),
                if r.hosts.is_empty() { "-".into() } else { r.hosts.join(",") },
                r.subject.clone(),
            ]
        })
        .collect();
    table(&["RELEASE", "REPO", "COMMIT", "DIGEST", "SIZE", "STATE", "RUNS ON", "SUBJECT"], &rows)
}

fn rollout_header(r: &crate::views::RolloutView) -> String {
    let phase = match (&r.outcome, r.phase) {
        (Some(crate::deploy::Outcome::Succeeded), crate::deploy::Phase::Done) => "SUCCEEDED".to_string(),
        (Some(crate::deploy::Outcome::Failed { why }), _) => format!("FAILED: {why}"),
        (Some(crate::deploy::Outcome::Aborted { by }), _) => format!("ABORTED by {by}"),
        (Some(crate::deploy::Outcome::Superseded { by }), _) => format!("superseded by rollout {by}"),
        (Some(crate::deploy::Outcome::Reverted { why }), _) => format!("REVERTED by the immune system: {why}"),
        (_, p) => format!("{p:?}").to_lowercase().replace('_', " "),
    };
    let rolling_back = if r.phase == crate::deploy::Phase::RollingBack { " (rolling back)" } else { "" };
    let paused = if r.paused { " PAUSED" } else { "" };
    let what = match r.kind {
        crate::deploy::Kind::Deploy => "rollout",
        crate::deploy::Kind::Rollback => "rollback",
    };
    format!(
        "{what} {} of {}: release {}{}, wave {}/{} ({}), {phase}{rolling_back}{paused}\n",
        r.id,
        r.repo,
        r.release,
        r.previous.map(|p| format!(" (from {p})")).unwrap_or_default(),
        r.wave,
        r.waves.len(),
        r.waves.iter().map(|w| w.step.clone()).collect::<Vec<_>>().join(" → "),
    )
}

fn host_rows(r: &crate::views::RolloutView) -> String {
    let rows: Vec<Vec<String>> = r
        .hosts
        .iter()
        .map(|h| {
            let state = if !h.up {
                "down".to_string()
            } else if let Some((rel, bytes)) = h.applying {
                format!("applying {rel} ({:.1} MiB)", bytes as f64 / (1 << 20) as f64)
            } else if h.current == h.target && h.healthy {
                "healthy".into()
            } else if h.current == h.target {
                "unhealthy".into()
            } else {
                "waiting".into()
            };
            vec![
                h.host.clone(),
                h.wave.to_string(),
                or_dash(h.target, |t| t.to_string()),
                or_dash(h.current, |c| c.to_string()),
                state,
                h.failed.as_ref().map(|(rel, why)| format!("{rel}: {why}")).unwrap_or_default(),
            ]
        })
        .collect();
    table(&["HOST", "WAVE", "TARGET", "RUNS", "STATE", "LAST FAILURE"], &rows)
}

/// `fifty rollout status`.
pub fn rollout(r: &crate::views::RolloutView) -> String {
    let mut out = rollout_header(r);
    out.push_str(&host_rows(r));
    out.push('\n');
    if let Some(held) = &r.held {
        let _ = writeln!(
            out,
            "HELD by the immune system: {held}\n  decide with `fifty rollout promote` or `fifty rollout abort`\n"
        );
    }
    if !r.immune.is_empty() {
        let _ = writeln!(out, "immune system, wave {}:", r.wave);
        for v in &r.immune {
            let _ = writeln!(out, "  {v}");
        }
        out.push('\n');
    }
    if let Some(e) = &r.evidence {
        let resumed = match e.resumes {
            0 => String::new(),
            1 => "; continued by 1 new leader".into(),
            n => format!("; continued by {n} new leaders"),
        };
        let _ = writeln!(out, "immune evidence, wave {} (replicated {}{resumed}):", e.wave, e.recorded_at);
        for m in &e.metrics {
            let _ = writeln!(
                out,
                "  {}: {} looks, p={:.2e} (alpha {:.2e}); canary {} hosts, baseline {} hosts, {} with a pre-deploy reference",
                m.name, m.looks, m.p_value, m.alpha, m.canary_hosts, m.baseline_hosts, m.reference_hosts
            );
        }
        out.push('\n');
    }
    for (at, what) in r.events.iter().rev().take(8).rev() {
        let _ = writeln!(out, "{at}  {what}");
    }
    out
}

/// `fifty rollout watch` on a terminal: the status with a progress bar per wave.
pub fn rollout_bars(r: &crate::views::RolloutView) -> String {
    let mut out = rollout_header(r);
    let total = r.hosts.len().max(1);
    let mut before = 0;
    for (i, w) in r.waves.iter().enumerate() {
        let hosts: Vec<&crate::views::RolloutHostView> =
            r.hosts.iter().skip(before).take(w.reach.saturating_sub(before)).collect();
        let done = hosts.iter().filter(|h| h.current == Some(r.release) && h.healthy).count();
        let size = hosts.len();
        let width = 30 * size / total;
        let filled = if size == 0 { 0 } else { width * done / size };
        let _ = writeln!(
            out,
            "  wave {} {:>6}  [{}{}] {done}/{size}",
            i + 1,
            w.step,
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
        before = w.reach.max(before);
    }
    out.push('\n');
    out.push_str(&host_rows(r));
    out
}

/// `fifty incidents`.
pub fn incidents(list: &[crate::views::IncidentView]) -> String {
    if list.is_empty() {
        return "No incidents.\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                i.state.clone(),
                i.opened_at.clone(),
                i.repo.clone(),
                format!("{}/{}", i.whys.len(), i.actions.len()),
                i.title.clone(),
            ]
        })
        .collect();
    table(&["ID", "STATE", "OPENED", "REPO", "WHYS/ACTIONS", "TITLE"], &rows)
}

/// `fifty incident show`.
pub fn incident(i: &crate::views::IncidentView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "incident {} ({}): {}", i.id, i.state, i.title);
    let _ = writeln!(
        out,
        "commit   {} \"{}\" (release {}, hosts back on {})",
        &i.sha[..i.sha.len().min(10)],
        i.subject,
        i.release,
        i.previous
    );
    match (&i.revert_commit, &i.revert_error) {
        (Some(sha), _) => {
            let _ = writeln!(out, "revert   {} pushed to {}", &sha[..sha.len().min(10)], i.branch);
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "revert   NOT MADE: {why}");
        }
        (None, None) => {
            let _ = writeln!(out, "revert   pending");
        }
    }
    let _ = writeln!(out, "\nevidence:");
    for e in &i.evidence {
        let _ = writeln!(out, "  {e}");
    }
    let _ = writeln!(out, "\ntimeline:");
    for (at, what) in &i.timeline {
        let _ = writeln!(out, "  {at}  {what}");
    }
    let _ = writeln!(out, "\nwhys:");
    if i.whys.is_empty() {
        let _ = writeln!(out, "  (none yet: `fifty incident why {} \"...\"`)", i.id);
    }
    for (n, w) in i.whys.iter().enumerate() {
        let _ = writeln!(out, "  {}. {w}", n + 1);
    }
    let _ = writeln!(out, "\ncorrective actions:");
    if i.actions.is_empty() {
        let _ = writeln!(out, "  (none yet: `fifty incident action {} \"...\" --owner NAME`)", i.id);
    }
    for (n, a) in i.actions.iter().enumerate() {
        let _ = writeln!(out, "  {}. [{}] {} ({})", n + 1, if a.done { "done" } else { "open" }, a.text, a.owner);
    }
    out
}

/// `fifty webhook list`.
pub fn webhooks(list: &[crate::views::WebhookView]) -> String {
    if list.is_empty() {
        return "No webhooks: `fifty webhook add URL` to be notified of reverts.\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|w| vec![w.id.to_string(), format!("{:?}", w.format).to_lowercase(), w.url.clone(), w.added_by.clone()])
        .collect();
    table(&["ID", "FORMAT", "URL", "ADDED BY"], &rows)
}

/// `fifty store check`'s report.
pub fn store_check(r: &crate::store::check::Report) -> String {
    let l = &r.log;
    let mut out = format!(
        "log {}..={} ({} entries, compacted at {}), term {}, commit {}, applied {}, {} voters\n",
        l.first_index, l.last_index, l.entries, l.compacted, l.term, l.commit, l.applied, l.voters
    );
    match &l.mark {
        Some(m) => {
            let _ = writeln!(
                out,
                "flushed mark: log up to {} (term {}); hard state term {}, vote {:016x}",
                m.index, m.term, m.hs_term, m.hs_vote
            );
        }
        None if l.unsealed => out.push_str("no flushed mark; records without checksums (sealed at the next start)\n"),
        None => out.push_str("no flushed mark yet\n"),
    }
    let records: Vec<String> =
        r.records.iter().map(|(kind, n)| format!("{n} {}", kind.trim_end_matches('/'))).collect();
    let _ = writeln!(out, "records: {}", if records.is_empty() { "none".to_string() } else { records.join(", ") });
    if r.problems.is_empty() {
        out.push_str("consistent\n");
    } else {
        for p in &r.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
    }
    out
}
