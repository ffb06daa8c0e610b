//! The CI pages: the commits waterfall (commits × shards), a commit's page (its shards and
//! attempts, failed tests with their output, and the log of each running shard, which live
//! updates stream), and a repository's tests (durations, flaky, quarantine with its admin
//! actions). Each reads the `Coordinator` methods behind `GET /v1/commits`, `/v1/commits/{sha}`,
//! `/v1/commits/{sha}/log` and `/v1/repos/{repo}/tests`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Form;
use maud::{html, Markup, PreEscaped};

use super::chart;
use super::layout::{badge, form, form_with, time};
use super::{Done, Page, PageCtx, Params, Ui, UiError, UiRoute};
use crate::ci::{AttemptEnd, CommitState, JobState};
use crate::coordinator::Coordinator;
use crate::views::{AttemptView, CommitView, JobView, RepoView, TestsView};

/// Commits on the waterfall unless `?limit=` says otherwise, and the most it shows.
const WATERFALL: usize = 30;
const WATERFALL_MAX: usize = 200;
/// The most of a log a commit's page shows (its end).
const LOG_TAIL: usize = 32 * 1024;
/// Tests listed by duration on the tests page (the slowest).
const TESTS_SHOWN: usize = 200;

pub(super) fn pages() -> Vec<Page> {
    vec![
        Page { path: "/ui/commits", title: "Commits", nav: Some("Commits"), section: "Commits", render: commits },
        Page { path: "/ui/commits/{sha}", title: "Commit", nav: None, section: "Commits", render: commit },
        Page { path: "/ui/tests", title: "Tests", nav: Some("Tests"), section: "Tests", render: tests },
    ]
}

pub(super) fn routes() -> Vec<UiRoute> {
    vec![UiRoute::action("/ui/tests/{repo}/quarantine", quarantine)]
}

/// Seconds as people read them: `850 ms`, `4.2 s`, `3 min 05 s`, `1 h 02 min`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "—".into();
    }
    if secs < 1.0 {
        return format!("{:.0} ms", secs * 1000.0);
    }
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    if s < 3600 {
        return format!("{} min {:02} s", s / 60, s % 60);
    }
    format!("{} h {:02} min", s / 3600, s / 60 % 60)
}

fn short(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}

fn commit_state(s: CommitState) -> Markup {
    match s {
        CommitState::Planning => badge("info", "planning"),
        CommitState::Testing => badge("warn", "testing"),
        CommitState::Passed => badge("ok", "passed"),
        CommitState::Failed => badge("bad", "failed"),
    }
}

fn job_state(s: JobState) -> Markup {
    match s {
        JobState::Queued => badge("info", "queued"),
        JobState::Running => badge("warn", "running"),
        JobState::Passed => badge("ok", "passed"),
        JobState::Failed => badge("bad", "failed"),
    }
}

fn attempt_end(a: &AttemptView) -> Markup {
    match &a.end {
        AttemptEnd::Running => badge("warn", "running"),
        AttemptEnd::Passed => badge("ok", "passed"),
        AttemptEnd::Failed { why } => html! { (badge("bad", "failed")) " " (why) },
        AttemptEnd::Lost { why } => html! { (badge("warn", "lost")) " " (why) },
    }
}

/// The link to a commit's page.
fn commit_href(repo: &str, sha: &str) -> String {
    format!("/ui/commits/{sha}?repo={}", super::urlencode(repo))
}

/// One waterfall cell: the shard's state, its (last) agent and duration, and its marks.
fn shard_cell(v: &CommitView, job: &JobView) -> Markup {
    let last = job.attempts.last();
    let shard = job.shard.unwrap_or(0);
    let flaky = v.failed_tests.iter().any(|t| t.shard == shard && t.flaky);
    let quarantined = v.failed_tests.iter().any(|t| t.shard == shard && t.quarantined);
    html! {
        (job_state(job.state))
        @if let Some(a) = last {
            br; span.meta { (a.host) ", " (duration(a.duration_secs)) }
            @if job.attempts.len() > 1 { " " span.meta title="attempts" { "×" (job.attempts.len()) } }
        }
        @if flaky { " " span.badge.warn title="a test failed, then passed on a retry" { "flaky" } }
        @if quarantined { " " span.badge.info title="a quarantined test failed (reported, not failing the commit)" { "quarantined" } }
    }
}

/// The waterfall: one row per commit (newest first), one column per shard.
pub fn waterfall(repos: &[RepoView], repo: Option<&str>, commits: &[CommitView]) -> Markup {
    let width = commits.iter().map(|c| c.summary.shards).max().unwrap_or(0);
    let durations: Vec<f64> = commits.iter().rev().filter_map(|c| c.summary.duration_secs).collect();
    html! {
        @if repos.len() > 1 {
            nav.repos aria-label="Repositories" {
                "Repository: "
                @if repo.is_none() { strong { "all" } } @else { a href="/ui/commits" { "all" } }
                @for r in repos {
                    " · "
                    @if repo == Some(r.name.as_str()) { strong { (r.name) } }
                    @else { a href={ "/ui/commits?repo=" (super::urlencode(&r.name)) } { (r.name) } }
                }
            }
        }
        @if commits.is_empty() { p { "No commits yet: a push to a repository Fifty watches queues one." } }
        @else {
            p.meta {
                "The newest " (commits.len()) " commits, newest first; one column per shard. "
                @if durations.len() > 1 {
                    "Time from push to result, oldest to newest: "
                    (PreEscaped(chart::sparkline("time from push to result, seconds", &durations)))
                }
            }
            div.scroll {
                table #waterfall {
                    thead { tr {
                        th scope="col" { "Commit" } th scope="col" { "State" } th scope="col" { "Plan" }
                        @for i in 0..width { th scope="col" { "Shard " (i) } }
                        th scope="col" { "Package" } th scope="col" { "Took" }
                    } }
                    tbody {
                        @for v in commits {
                            @let s = &v.summary;
                            tr data-sha=(s.sha) {
                                th scope="row" {
                                    a href=(commit_href(&s.repo, &s.sha)) { code { (short(&s.sha)) } }
                                    " " (s.subject)
                                    br; span.meta { (s.repo) "/" (s.branch) " · " (s.author) }
                                }
                                td { (commit_state(s.state)) @if s.error.is_some() { " " span.meta { "(error)" } } }
                                td { @if let Some(p) = v.jobs.iter().find(|j| j.kind == "plan") { (job_state(p.state)) } }
                                @for i in 0..width {
                                    @let job = v.jobs.iter().find(|j| j.shard == Some(i as u32) && j.kind == "shard");
                                    td.shard { @if let Some(j) = job { (shard_cell(v, j)) } @else { "—" } }
                                }
                                td { @if let Some(p) = v.jobs.iter().find(|j| j.kind == "package") { (job_state(p.state)) } @else { "—" } }
                                td.num { @if let Some(d) = s.duration_secs { (duration(d)) } @else { "…" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn commits(c: &Coordinator, _ctx: &PageCtx, p: &Params) -> Result<Markup, UiError> {
    let repo = p.get("repo").filter(|r| !r.is_empty());
    let limit = match p.get("limit") {
        None => WATERFALL,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| UiError::new(StatusCode::BAD_REQUEST, format!("limit: {l:?} is not a number of commits")))?,
    }
    .clamp(1, WATERFALL_MAX);
    let repos = c.repos()?;
    let mut views = Vec::new();
    for s in c.commits(repo, limit)? {
        views.push(c.commit_view(&s.sha, Some(&s.repo))?);
    }
    Ok(waterfall(&repos, repo, &views))
}

/// What a log shows: its last [`LOG_TAIL`] bytes, as text.
fn log_text(bytes: &[u8]) -> String {
    let tail = &bytes[bytes.len().saturating_sub(LOG_TAIL)..];
    let text = String::from_utf8_lossy(tail).into_owned();
    if bytes.len() > LOG_TAIL {
        format!("[... {} earlier bytes on `fifty log` ...]\n{text}", bytes.len() - LOG_TAIL)
    } else {
        text
    }
}

/// A log the commit's page shows: which job, and its text.
pub struct ShownLog {
    /// `shard 2`, `plan`, `package`.
    pub job: String,
    /// Whether it is still being written (then live updates stream it).
    pub running: bool,
    /// Its text (the tail).
    pub text: String,
}

/// Which job's log `?log=` asks for: `plan`, `package` or a shard number.
fn log_choice(text: &str) -> Result<(Option<u32>, bool), UiError> {
    match text {
        "plan" => Ok((None, false)),
        "package" => Ok((None, true)),
        n => n.parse::<u32>().map(|n| (Some(n), false)).map_err(|_| {
            UiError::new(StatusCode::BAD_REQUEST, format!("log: {n:?} is not `plan`, `package` or a shard number"))
        }),
    }
}

fn job_name(j: &JobView) -> String {
    match j.shard {
        Some(n) if j.kind == "shard" => format!("shard {n}"),
        _ => j.kind.clone(),
    }
}

/// The log choice of a job for `?log=`.
fn job_log_param(j: &JobView) -> String {
    match j.shard {
        Some(n) if j.kind == "shard" => n.to_string(),
        _ => j.kind.clone(),
    }
}

/// A commit's page body: summary, jobs and attempts, failed tests with their output, `logs`.
pub fn commit_body(v: &CommitView, logs: &[ShownLog]) -> Markup {
    let s = &v.summary;
    html! {
        section aria-labelledby="h-summary" {
            h2 #h-summary { code { (short(&s.sha)) } " " (s.subject) }
            dl.facts {
                dt { "State" } dd { (commit_state(s.state)) " " (s.shards_passed) " of " (s.shards) " shards passed" }
                dt { "Repository" } dd { (s.repo) " / " (s.branch) }
                dt { "Author" } dd { (s.author) }
                dt { "Notified" } dd { (time(&s.notified_at)) }
                @if let Some(f) = &s.finished_at { dt { "Finished" } dd { (time(f)) " (" (s.duration_secs.map(duration).unwrap_or_default()) ")" } }
                @if let Some(r) = v.release { dt { "Release" } dd { (r) } }
                @if let Some(e) = &v.release_error { dt { "Packaging" } dd.error { (e) } }
                dt { "SHA" } dd { code { (s.sha) } }
            }
            @if let Some(e) = &s.error { pre.error { (e) } }
            @if !s.flaky.is_empty() { p { (badge("warn", "flaky")) " failed, then passed: " (s.flaky.join(", ")) } }
            @for n in &v.notes { p.hint { (n) } }
        }
        section aria-labelledby="h-jobs" {
            h2 #h-jobs { "Jobs" }
            div.scroll { table #jobs {
                thead { tr {
                    th scope="col" { "Job" } th scope="col" { "State" } th scope="col" { "Tests" } th scope="col" { "Attempt" }
                    th scope="col" { "Agent" } th scope="col" { "Started" } th scope="col" { "Took" } th scope="col" { "Ended" }
                    th scope="col" { "Passed / failed / skipped" } th scope="col" { "Log" }
                } }
                tbody {
                    @for j in &v.jobs {
                        @if j.attempts.is_empty() {
                            tr { th scope="row" { (job_name(j)) } td { (job_state(j.state)) } td.num { (j.tests) } td colspan="7" { "not started" } }
                        }
                        @for (i, a) in j.attempts.iter().enumerate() {
                            tr {
                                th scope="row" { @if i == 0 { (job_name(j)) } }
                                td { @if i == 0 { (job_state(j.state)) } }
                                td.num { @if i == 0 { (j.tests) } }
                                td.num { (a.attempt) }
                                td { (a.host) }
                                td { (time(&a.started_at)) }
                                td.num { (duration(a.duration_secs)) }
                                td { (attempt_end(a)) @if let Some(e) = &a.exit { " " span.meta { (e) } } }
                                td.num { (a.tests_passed) " / " (a.tests_failed) " / " (a.tests_skipped) }
                                td { a href={ (commit_href(&s.repo, &s.sha)) "&log=" (job_log_param(j)) "#h-logs" } { (a.log_bytes) " bytes" } }
                            }
                            @for n in &a.notes { tr { td {} td colspan="9" { span.hint { (n) } } } }
                        }
                    }
                }
            } }
        }
        section aria-labelledby="h-failed" {
            h2 #h-failed { "Failed tests (" (v.failed_tests.len()) ")" }
            @if v.failed_tests.is_empty() { p { "None." } }
            ul.plain #failed-tests {
                @for t in &v.failed_tests {
                    li {
                        details {
                            summary {
                                code { (t.name) } " — shard " (t.shard) ", attempt " (t.attempt) " on " (t.host)
                                @if t.flaky { " " (badge("warn", "flaky")) }
                                @if t.quarantined { " " (badge("info", "quarantined")) }
                            }
                            pre.output { (t.message) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-logs" {
            h2 #h-logs { "Logs" }
            @if logs.is_empty() { p { "No shard is running. Pick a job's log in the table above." } }
            @for l in logs {
                h3 { (l.job) @if l.running { " " (badge("warn", "running")) " " span.meta { "(live)" } } }
                pre.log aria-live=(if l.running { "polite" } else { "off" }) { (l.text) }
            }
        }
    }
}

fn commit(c: &Coordinator, _ctx: &PageCtx, p: &Params) -> Result<Markup, UiError> {
    let sha = p.get("sha").unwrap_or_default();
    let repo = p.get("repo").filter(|r| !r.is_empty());
    let v = c.commit_view(sha, repo)?;
    let repo = Some(v.summary.repo.as_str());
    let mut logs = Vec::new();
    match p.get("log") {
        Some(choice) => {
            let (shard, package) = log_choice(choice)?;
            let job = v
                .jobs
                .iter()
                .find(|j| match (package, shard) {
                    (true, _) => j.kind == "package",
                    (false, None) => j.kind == "plan",
                    (false, Some(n)) => j.shard == Some(n) && j.kind == "shard",
                })
                .map(|j| (job_name(j), j.state == JobState::Running))
                .unwrap_or_else(|| (choice.to_string(), false));
            let bytes = c.commit_log(&v.summary.sha, repo, shard, package, None)?;
            logs.push(ShownLog { job: job.0, running: job.1, text: log_text(&bytes) });
        }
        None => {
            // Every running job's log, as the leader holds it now: the page's live updates
            // re-render it, so it streams while the page is open.
            for j in v.jobs.iter().filter(|j| j.state == JobState::Running) {
                let package = j.kind == "package";
                let shard = if j.kind == "shard" { j.shard } else { None };
                let bytes = c.commit_log(&v.summary.sha, repo, shard, package, None)?;
                logs.push(ShownLog { job: job_name(j), running: true, text: log_text(&bytes) });
            }
        }
    }
    Ok(commit_body(&v, &logs))
}

/// A repository's tests: slowest first with a chart of the slowest, flaky, quarantined; admins
/// quarantine and release.
pub fn tests_body(ctx: &PageCtx, repos: &[RepoView], v: &TestsView) -> Markup {
    let action = format!("/ui/tests/{}/quarantine", super::urlencode(&v.repo));
    let slowest: Vec<(String, f64)> =
        v.tests.iter().take(15).map(|t| (t.name.chars().take(28).collect(), t.duration_secs)).collect();
    html! {
        @if repos.len() > 1 {
            nav.repos aria-label="Repositories" {
                "Repository: "
                @for (i, r) in repos.iter().enumerate() {
                    @if i > 0 { " · " }
                    @if r.name == v.repo { strong { (r.name) } }
                    @else { a href={ "/ui/tests?repo=" (super::urlencode(&r.name)) } { (r.name) } }
                }
            }
        }
        p { (v.known) " tests with a known duration, " (duration(v.total_secs)) " in all (one machine, one after another)." }
        section aria-labelledby="h-quarantined" {
            h2 #h-quarantined { "Quarantined (" (v.quarantined.len()) ")" }
            p.hint { "A quarantined test still runs and is reported; its failures do not fail a commit." }
            @if !v.quarantined.is_empty() {
                div.scroll { table #quarantined {
                    thead { tr { th scope="col" { "Test" } th scope="col" { "By" } th scope="col" { "Since" } @if ctx.admin { th scope="col" { "Action" } } } }
                    tbody { @for (name, by, since) in &v.quarantined {
                        tr { th scope="row" { code { (name) } } td { (by) } td { (time(since)) }
                            @if ctx.admin { td { (form(ctx, &action, "Release", &[("test", name.as_str()), ("on", "false")])) } } }
                    } }
                } }
            }
            (form_with(ctx, &action, "Quarantine", html! {
                input type="hidden" name="on" value="true";
                label for="quarantine-test" { "Test" }
                input #quarantine-test type="text" name="test" required placeholder="as its JUnit report names it";
            }))
        }
        section aria-labelledby="h-flaky" {
            h2 #h-flaky { "Seen flaky (" (v.flaky.len()) ")" }
            @if v.flaky.is_empty() { p { "None." } }
            @else {
                div.scroll { table #flaky {
                    thead { tr { th scope="col" { "Test" } th scope="col" { "Last commit" } th scope="col" { "When" } @if ctx.admin { th scope="col" { "Action" } } } }
                    tbody { @for (name, sha, at) in &v.flaky {
                        @let quarantined = v.quarantined.iter().any(|q| &q.0 == name);
                        tr { th scope="row" { code { (name) } } td { a href=(commit_href(&v.repo, sha)) { code { (short(sha)) } } } td { (time(at)) }
                            @if ctx.admin { td { @if !quarantined { (form(ctx, &action, "Quarantine", &[("test", name.as_str()), ("on", "true")])) } } } }
                    } }
                } }
            }
        }
        section aria-labelledby="h-durations" {
            h2 #h-durations { "Durations, slowest first" }
            @if !slowest.is_empty() { (PreEscaped(chart::bar_chart("The slowest tests' last passing run", "seconds", &slowest))) }
            div.scroll { table #durations {
                thead { tr { th scope="col" { "Test" } th scope="col" { "Last passing run" } } }
                tbody { @for t in v.tests.iter().take(TESTS_SHOWN) {
                    tr { th scope="row" { code { (t.name) } } td.num { (duration(t.duration_secs)) } }
                } }
            } }
            @if v.tests.len() > TESTS_SHOWN { p.meta { "And " (v.tests.len() - TESTS_SHOWN) " faster ones (`fifty test list`)." } }
        }
    }
}

fn tests(c: &Coordinator, ctx: &PageCtx, p: &Params) -> Result<Markup, UiError> {
    let repos = c.repos()?;
    let repo = match p.get("repo").filter(|r| !r.is_empty()) {
        Some(r) => r.to_string(),
        None => match repos.first() {
            Some(r) => r.name.clone(),
            None => return Ok(html! { p { "No repositories: add one with `fifty repo add`." } }),
        },
    };
    Ok(tests_body(ctx, &repos, &c.tests_view(&repo)?))
}

/// The quarantine form: the test and whether to quarantine (`true`) or release it.
#[derive(serde::Deserialize)]
struct QuarantineForm {
    test: String,
    on: String,
}

async fn quarantine(
    State(ui): State<Arc<Ui>>,
    ctx: PageCtx,
    Path(repo): Path<String>,
    Form(f): Form<QuarantineForm>,
) -> Result<Done, UiError> {
    let on = match f.on.as_str() {
        "true" => true,
        "false" => false,
        other => return Err(UiError::new(StatusCode::BAD_REQUEST, format!("on: {other:?} is not true or false"))),
    };
    ui.c.quarantine(&repo, f.test.trim(), on, &ctx.by).await?;
    Ok(Done::to(format!("/ui/tests?repo={}", super::urlencode(&repo))))
}

/// What the pages' unit tests share.
#[cfg(test)]
pub(super) mod fixtures {
    use super::PageCtx;

    /// A time in the views.
    pub const NOW: &str = "2026-12-08T00:00:00.000Z";

    /// An admin or a read session.
    pub fn ctx(admin: bool) -> PageCtx {
        PageCtx {
            admin,
            csrf: "csrf-token".into(),
            who: "token a1".into(),
            by: "token a1".into(),
            node_id: "00000000000000aa".into(),
            live_path: "/ui/".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{ctx, NOW};
    use super::*;
    use crate::views::{CommitSummary, FailedTest, TestTime};

    fn attempt(n: u32, host: &str, end: AttemptEnd, secs: f64) -> AttemptView {
        AttemptView {
            attempt: n,
            host: host.into(),
            started_at: NOW.into(),
            duration_secs: secs,
            end,
            exit: None,
            tests_passed: 3,
            tests_failed: 1,
            tests_skipped: 0,
            notes: vec![],
            log_bytes: 120,
        }
    }

    fn job(id: u64, kind: &str, shard: Option<u32>, state: JobState, attempts: Vec<AttemptView>) -> JobView {
        JobView { id, kind: kind.into(), shard, state, tests: 4, attempts }
    }

    pub(crate) fn commit_view() -> CommitView {
        CommitView {
            summary: CommitSummary {
                repo: "shop".into(),
                seq: 7,
                sha: "abcdef0123456789abcdef0123456789abcdef01".into(),
                branch: "main".into(),
                subject: "Make <checkout> faster".into(),
                author: "Ada".into(),
                state: CommitState::Testing,
                error: None,
                shards: 2,
                shards_passed: 1,
                notified_at: NOW.into(),
                finished_at: None,
                duration_secs: None,
                flaky: vec!["cart::adds".into()],
            },
            jobs: vec![
                job(1, "plan", None, JobState::Passed, vec![attempt(1, "build-1", AttemptEnd::Passed, 2.0)]),
                job(
                    2,
                    "shard",
                    Some(0),
                    JobState::Passed,
                    vec![
                        attempt(1, "build-1", AttemptEnd::Failed { why: "1 test failed".into() }, 12.5),
                        attempt(2, "build-2", AttemptEnd::Passed, 11.0),
                    ],
                ),
                job(3, "shard", Some(1), JobState::Running, vec![attempt(1, "build-2", AttemptEnd::Running, 75.0)]),
            ],
            release: None,
            release_error: None,
            failed_tests: vec![
                FailedTest {
                    name: "cart::adds".into(),
                    shard: 0,
                    attempt: 1,
                    host: "build-1".into(),
                    message: "assertion failed: <left> == right".into(),
                    quarantined: false,
                    flaky: true,
                },
                FailedTest {
                    name: "pay::slow".into(),
                    shard: 0,
                    attempt: 1,
                    host: "build-1".into(),
                    message: "timeout".into(),
                    quarantined: true,
                    flaky: false,
                },
            ],
            notes: vec![],
        }
    }

    #[test]
    fn the_waterfall_has_a_row_per_commit_and_a_column_per_shard() {
        let repos = vec![];
        let page = waterfall(&repos, None, &[commit_view()]).into_string();
        assert!(page.contains("Shard 0") && page.contains("Shard 1") && !page.contains("Shard 2"), "{page}");
        assert!(page.contains(r#"href="/ui/commits/abcdef0123456789abcdef0123456789abcdef01?repo=shop""#), "{page}");
        assert!(page.contains("Make &lt;checkout&gt; faster"), "escaped subject: {page}");
        // Shard 0: passed on its second attempt on build-2, flaky and quarantined marks.
        assert!(page.contains("build-2, 11.0 s"), "{page}");
        assert!(page.contains("×2") && page.contains(">flaky<") && page.contains(">quarantined<"), "{page}");
        // Shard 1 running.
        assert!(page.contains(">running<") && page.contains("build-2, 1 min 15 s"), "{page}");
        // Finished commits' durations as a sparkline, oldest first.
        let mut done = commit_view();
        done.summary.duration_secs = Some(90.0);
        let mut older = commit_view();
        older.summary.duration_secs = Some(30.0);
        let page = waterfall(&repos, None, &[done, older]).into_string();
        assert!(page.contains(r#"class="sparkline""#) && page.contains("last 90, lowest 30, highest 90"), "{page}");
        let empty = waterfall(&repos, None, &[]).into_string();
        assert!(empty.contains("No commits yet"));
    }

    #[test]
    fn a_commit_page_shows_failed_tests_with_their_output_and_the_running_log() {
        let logs = vec![ShownLog { job: "shard 1".into(), running: true, text: "running test <x>\n".into() }];
        let page = commit_body(&commit_view(), &logs).into_string();
        assert!(page.contains("cart::adds") && page.contains("assertion failed: &lt;left&gt; == right"), "{page}");
        assert!(page.contains("pay::slow") && page.contains(">quarantined<"), "{page}");
        assert!(
            page.contains("shard 1") && page.contains("(live)") && page.contains("running test &lt;x&gt;"),
            "{page}"
        );
        assert!(page.contains(r#"aria-live="polite""#), "{page}");
        assert!(page.contains("&amp;log=1#h-logs"), "each job links to its log: {page}");
        let none = commit_body(&commit_view(), &[]).into_string();
        assert!(none.contains("No shard is running"));
    }

    #[test]
    fn a_long_log_shows_its_end() {
        let mut log = vec![b'a'; LOG_TAIL + 10];
        log.extend(b"END");
        let text = log_text(&log);
        assert!(text.starts_with("[... 13 earlier bytes"), "{}", &text[..40]);
        assert!(text.ends_with("END"));
        assert!(log_choice("x").is_err() && log_choice("3").is_ok_and(|c| c == (Some(3), false)));
    }

    fn tests_view() -> TestsView {
        TestsView {
            repo: "shop".into(),
            known: 2,
            total_secs: 3.5,
            tests: vec![
                TestTime { name: "slow::one".into(), duration_secs: 3.0 },
                TestTime { name: "fast::one".into(), duration_secs: 0.5 },
            ],
            quarantined: vec![("pay::slow".into(), "token a1".into(), NOW.into())],
            flaky: vec![("cart::adds".into(), "abcdef0123".into(), NOW.into())],
        }
    }

    #[test]
    fn the_tests_page_lists_durations_flaky_and_quarantine_and_only_admins_act() {
        let admin = tests_body(&ctx(true), &[], &tests_view()).into_string();
        let read = tests_body(&ctx(false), &[], &tests_view()).into_string();
        for page in [&admin, &read] {
            assert!(page.contains("slow::one") && page.contains("3.0 s") && page.contains("500 ms"), "{page}");
            assert!(page.contains("pay::slow") && page.contains("cart::adds"), "{page}");
            assert!(page.contains("<svg"), "the slowest as a chart: {page}");
        }
        assert!(admin.contains(r#"action="/ui/tests/shop/quarantine""#), "{admin}");
        assert!(admin.contains(r#"name="csrf""#) && admin.contains(">Release<") && admin.contains(">Quarantine<"));
        assert!(!read.contains("<form") && !read.contains("csrf"), "{read}");
    }
}
