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

    fn rollout_view(
        phase: crate::deploy::Phase,
        hosts: Vec<crate::views::RolloutHostView>,
    ) -> crate::views::RolloutView {
        crate::views::RolloutView {
            id: 1,
            repo: "shop".into(),
            kind: crate::deploy::Kind::Deploy,
            release: 1,
            previous: None,
            phase,
            paused: false,
            wave: 2,
            waves: vec![
                crate::views::WaveView { step: "1".into(), reach: 1 },
                crate::views::WaveView { step: "manual".into(), reach: 1 },
                crate::views::WaveView { step: "100%".into(), reach: 2 },
            ],
            bake: "6s".into(),
            phase_secs: 1.0,
            started_at: "t".into(),
            finished_at: None,
            outcome: None,
            hosts,
            events: vec![],
            immune: vec![],
            held: None,
            evidence: None,
        }
    }

    fn host(name: &str, target: Option<u64>, current: Option<u64>, healthy: bool) -> crate::views::RolloutHostView {
        crate::views::RolloutHostView {
            host: name.into(),
            wave: 1,
            target,
            current,
            healthy,
            up: true,
            applying: None,
            failed: None,
        }
    }

    /// The first rollout: the canary runs the release, the host after the manual wave has none
    /// yet, which is not unhealthy; the header says its phase in words.
    #[test]
    fn a_first_rollout_reads_in_words() {
        let view = rollout_view(
            crate::deploy::Phase::AwaitingPromotion,
            vec![
                host("web-1", Some(1), Some(1), true),
                host("web-2", None, None, false),
                host("web-3", Some(1), Some(1), false),
            ],
        );
        let text = rollout(&view);
        assert!(
            text.starts_with("rollout 1 of shop: release 1, wave 2/3 (1 → manual → 100%), awaiting promotion\n"),
            "{text}"
        );
        let state = |h: &str| {
            text.lines()
                .find(|l| l.starts_with(h))
                .unwrap()
                .split("  ")
                .filter(|c| !c.is_empty())
                .nth(4)
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!([state("web-1"), state("web-2"), state("web-3")], ["healthy", "no release yet", "unhealthy"]);
        let back = rollout(&rollout_view(crate::deploy::Phase::RollingBack, vec![]));
        assert!(back.lines().next().unwrap().ends_with(", rolling back"), "{back}");
    }

    #[test]
    fn test_list_shows_each_test_and_its_duration() {
        let view = crate::views::TestsView {
            repo: "shop".into(),
            known: 2,
            total_secs: 75.25,
            tests: vec![
                crate::views::TestTime { name: "tests.test_cart::test_checkout".into(), duration_secs: 75.0 },
                crate::views::TestTime { name: "tests.test_cart::test_add".into(), duration_secs: 0.25 },
            ],
            quarantined: vec![],
            flaky: vec![],
        };
        let text = tests(&view);
        assert!(text.starts_with("shop: 2 tests with a known duration, 1m15s in all\n\nDURATION  TEST\n"), "{text}");
        assert!(
            text.contains("\n1m15s     tests.test_cart::test_checkout\n250ms     tests.test_cart::test_add\n"),
            "{text}"
        );
    }

    fn attempt(
        n: u32,
        host: &str,
        end: crate::ci::AttemptEnd,
        counts: (usize, usize, usize),
    ) -> crate::views::AttemptView {
        crate::views::AttemptView {
            attempt: n,
            host: host.into(),
            started_at: "t".into(),
            duration_secs: 2.0,
            end,
            exit: Some("exit 0".into()),
            tests_passed: counts.0,
            tests_failed: counts.1,
            tests_skipped: counts.2,
            notes: vec![],
            log_bytes: 0,
        }
    }

    /// A shard whose agent was lost: that attempt's row says lost, not the job's final state;
    /// with no `[test] list`, TESTS counts what JUnit reported, and a note says what balancing
    /// by duration needs.
    #[test]
    fn a_commit_shows_each_attempt_in_its_own_state() {
        use crate::ci::{AttemptEnd, JobState};
        let job = |id, shard: Option<u32>, attempts| crate::views::JobView {
            id,
            kind: if shard.is_some() { "shard".into() } else { "plan".into() },
            shard,
            state: JobState::Passed,
            tests: 0,
            attempts,
        };
        let jobs = vec![
            job(1, None, vec![attempt(1, "build-1", AttemptEnd::Passed, (0, 0, 0))]),
            job(
                2,
                Some(0),
                vec![
                    attempt(1, "build-1", AttemptEnd::Lost { why: "down".into() }, (0, 0, 0)),
                    attempt(2, "build-2", AttemptEnd::Passed, (3, 0, 1)),
                ],
            ),
            job(3, Some(1), vec![attempt(1, "build-2", AttemptEnd::Passed, (2, 0, 0))]),
        ];
        let view = crate::views::CommitView {
            summary: crate::views::CommitSummary {
                repo: "shop".into(),
                seq: 1,
                sha: "a".repeat(40),
                branch: "main".into(),
                subject: "s".into(),
                author: "me".into(),
                state: crate::ci::CommitState::Passed,
                error: None,
                shards: 2,
                shards_passed: 2,
                notified_at: "t".into(),
                finished_at: None,
                duration_secs: None,
                flaky: vec![],
            },
            notes: crate::ci::ops::split_notes(&jobs),
            jobs,
            release: None,
            release_error: None,
            failed_tests: vec![],
        };
        let text = commit(&view);
        let row = |shard: &str, attempt: &str| -> Vec<String> {
            text.lines()
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .find(|c| c.len() > 3 && c[0] == shard && c[3] == attempt)
                .unwrap_or_else(|| panic!("no row {shard}/{attempt} in\n{text}"))
        };
        assert_eq!(row("0", "1")[1..3], ["lost", "-"], "{text}");
        assert_eq!(row("0", "2")[1..3], ["passed", "4"], "{text}");
        assert_eq!(row("1", "1")[1..3], ["passed", "2"], "{text}");
        assert!(text.contains("note: its 2 shards were split by the test command itself"), "{text}");
        assert!(text.contains("needs `list` under [test]"), "{text}");

        // With a list, the assigned count shows and no note is given.
        let mut listed = view.jobs.clone();
        listed[1].tests = 5;
        assert!(crate::ci::ops::split_notes(&listed).is_empty());
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
        // A bad fifty.toml's error shows its line with a caret under it: keep it indented.
        for line in e.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push('\n');
    let mut rows = Vec::new();
    for j in &c.jobs {
        let name = j.shard.map(|n| n.to_string()).unwrap_or_else(|| j.kind.clone());
        let waiting = |tests: String| {
            vec![
                name.clone(),
                format!("{:?}", j.state).to_lowercase(),
                tests,
                "-".into(),
                "-".into(),
                "-".into(),
                "waiting for a build agent".into(),
            ]
        };
        let assigned = if j.shard.is_some() && j.tests > 0 { j.tests.to_string() } else { "-".into() };
        if j.attempts.is_empty() {
            rows.push(waiting(assigned.clone()));
        }
        for a in &j.attempts {
            // Each row is one attempt, in its own state: a lost or failed attempt stays so even
            // when a later one passed.
            let (state, result) = match &a.end {
                crate::ci::AttemptEnd::Running => ("running", "running".to_string()),
                crate::ci::AttemptEnd::Passed => ("passed", a.exit.clone().unwrap_or_else(|| "passed".into())),
                crate::ci::AttemptEnd::Failed { why } => ("failed", format!("failed: {why}")),
                crate::ci::AttemptEnd::Lost { why } => ("lost", format!("lost, re-queued: {why}")),
            };
            // Without `[test] list` no test is assigned: count what the attempt's JUnit reported.
            let reported = a.tests_passed + a.tests_failed + a.tests_skipped;
            let tests = match &a.end {
                _ if assigned != "-" => assigned.clone(),
                crate::ci::AttemptEnd::Passed | crate::ci::AttemptEnd::Failed { .. } if j.shard.is_some() => {
                    reported.to_string()
                }
                _ => "-".into(),
            };
            rows.push(vec![
                name.clone(),
                state.to_string(),
                tests,
                a.attempt.to_string(),
                a.host.clone(),
                secs(a.duration_secs),
                result,
            ]);
        }
        if !j.attempts.is_empty() && j.state == crate::ci::JobState::Queued {
            rows.push(waiting(assigned.clone()));
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
    for n in &c.notes {
        let _ = writeln!(out, "\nnote: {n}");
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
    if t.tests.is_empty() {
        out.push_str("No test has passed yet (durations come from the JUnit reports of passing tests).\n");
    } else {
        out.push('\n');
        let took = |s: f64| if s < 1.0 { format!("{:.0}ms", s * 1000.0) } else { secs(s) };
        let rows: Vec<Vec<String>> = t.tests.iter().map(|x| vec![took(x.duration_secs), x.name.clone()]).collect();
        out.push_str(&table(&["DURATION", "TEST"], &rows));
        out.push('\n');
    }
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
        (_, p) => p.words().to_string(),
    };
    // An outcome that is not yet final while its hosts go back says so; a phase alone already does.
    let rolling_back =
        if r.outcome.is_some() && r.phase == crate::deploy::Phase::RollingBack { " (rolling back)" } else { "" };
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
            } else if h.current.is_none() && h.target.is_none() {
                // Not reached by the first rollout yet: nothing runs there to be unhealthy.
                "no release yet".into()
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
