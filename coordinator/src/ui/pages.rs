//! The overview, hosts, gates and rollouts pages, and their admin actions (gate close/open;
//! rollout pause, resume, promote, abort; rollback). Each reads the `Coordinator` methods the
//! JSON API's handlers call.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Form;
use maud::{html, Markup};

use super::layout::{badge, form, form_with, time};
use super::{Done, Page, PageCtx, Params, Ui, UiError, UiRoute};
use crate::coordinator::{Coordinator, OpError};
use crate::deploy::{Outcome, Phase};
use crate::fleet::HostState;
use crate::views::{GateChange, GateView, HostView, RolloutView};

pub(super) fn pages() -> Vec<Page> {
    vec![
        Page { path: "/ui/", title: "Overview", nav: Some("Overview"), section: "Overview", render: overview },
        Page { path: "/ui/hosts", title: "Hosts", nav: Some("Hosts"), section: "Hosts", render: hosts },
        Page { path: "/ui/gates", title: "Gates", nav: Some("Gates"), section: "Gates", render: gates },
        Page {
            path: "/ui/rollouts",
            title: "Rollouts and releases",
            nav: Some("Rollouts"),
            section: "Rollouts",
            render: rollouts,
        },
    ]
}

pub(super) fn routes() -> Vec<UiRoute> {
    vec![
        UiRoute::action("/ui/gates/{repo}/close", close_gate),
        UiRoute::action("/ui/gates/{repo}/open", open_gate),
        UiRoute::action("/ui/rollouts/{repo}/{action}", steer_rollout),
        UiRoute::action("/ui/rollback/{repo}", rollback),
    ]
}

fn host_state(state: HostState) -> Markup {
    match state {
        HostState::Ready => badge("ok", "ready"),
        HostState::Down => badge("bad", "down"),
    }
}

fn gate_badge(g: &GateView) -> Markup {
    if g.open {
        badge("ok", "open")
    } else {
        badge("bad", "closed")
    }
}

fn outcome(o: &Option<Outcome>) -> Markup {
    match o {
        None => html! {},
        Some(Outcome::Succeeded) => badge("ok", "succeeded"),
        Some(Outcome::Failed { why }) => html! { (badge("bad", "failed")) " " (why) },
        Some(Outcome::Aborted { by }) => html! { (badge("warn", "aborted")) " by " (by) },
        Some(Outcome::Superseded { by }) => html! { (badge("info", "superseded")) " by rollout " (by) },
        Some(Outcome::Reverted { why }) => html! { (badge("bad", "reverted")) " " (why) },
    }
}

fn phase(v: &RolloutView) -> Markup {
    let kind = match v.phase {
        Phase::Done => "info",
        Phase::RollingBack => "bad",
        Phase::AwaitingPromotion => "warn",
        _ => "ok",
    };
    html! {
        (badge(kind, v.phase.words()))
        @if v.paused { " " (badge("warn", "paused")) }
    }
}

/// The gate of each repository, with its reason.
fn repo_gates(c: &Coordinator) -> Result<Vec<GateView>, UiError> {
    let mut out = Vec::new();
    for r in c.repos()? {
        out.push(c.gate(&r.name, None, None, None)?);
    }
    Ok(out)
}

/// The latest rollout of each repository that has one.
fn repo_rollouts(c: &Coordinator) -> Result<Vec<RolloutView>, UiError> {
    let mut out = Vec::new();
    for r in c.repos()? {
        match c.rollout_view(Some(&r.name)) {
            Ok(v) => out.push(v),
            Err(OpError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn gate_reason(g: &GateView) -> Markup {
    html! {
        @if let Some(r) = &g.reason { (r) }
        @if let Some(by) = &g.changed_by { " — " (by) }
        @if let Some(since) = &g.since { " since " (time(since)) }
    }
}

fn overview(c: &Coordinator, _ctx: &PageCtx, _: &Params) -> Result<Markup, UiError> {
    let status = c.status()?;
    let cluster = c.cluster()?;
    let gates = repo_gates(c)?;
    let rollouts = repo_rollouts(c)?;
    let alerts = c.alerts(20)?;
    let incidents: Vec<_> = c.incidents()?.into_iter().filter(|i| i.state == "open").collect();
    Ok(html! {
        div.cards {
            section.card aria-labelledby="h-coord" {
                h2 #h-coord { "Coordinators" }
                ul.plain {
                    @for m in &cluster.members {
                        li {
                            code { (m.id) } " " (m.http_addr) " "
                            @if m.leader { (badge("ok", "leader")) }
                            @else if m.learner { (badge("info", "learner")) }
                            @else { (badge("info", "follower")) }
                        }
                    }
                }
                p.meta { "term " (cluster.term) ", commit " (cluster.commit_index) }
            }
            section.card aria-labelledby="h-hosts" {
                h2 #h-hosts { a href="/ui/hosts" { "Hosts" } }
                p.big {
                    span #hosts-ready { (status.hosts.ready) } " ready, "
                    span #hosts-down { (status.hosts.down) } " down"
                }
                p.meta { (status.hosts.total) " enrolled, " (status.agent_links) " agents linked" }
            }
            section.card aria-labelledby="h-gates" {
                h2 #h-gates { a href="/ui/gates" { "Gates" } }
                @if gates.is_empty() { p { "No repositories." } }
                ul.plain {
                    @for g in &gates {
                        li { (g.repo) "/" (g.branch) " " (gate_badge(g)) " " (gate_reason(g)) }
                    }
                }
            }
            section.card aria-labelledby="h-rollout" {
                h2 #h-rollout { a href="/ui/rollouts" { "Rollouts" } }
                @let active: Vec<_> = rollouts.iter().filter(|r| r.phase != Phase::Done).collect();
                @if active.is_empty() { p { "No rollout in progress." } }
                @for r in active {
                    p { (r.repo) ": release " (r.release) ", wave " (r.wave) " of " (r.waves.len()) " " (phase(r)) }
                }
            }
            section.card aria-labelledby="h-alerts" {
                h2 #h-alerts { "Firing alerts" }
                @if alerts.firing.is_empty() { p { "None." } }
                ul.plain {
                    @for a in &alerts.firing {
                        li { (badge("bad", &format!("{:?}", a.severity).to_lowercase())) " " (a.rule_name) ": " (a.subject) " — " (a.summary) }
                    }
                }
            }
            section.card aria-labelledby="h-incidents" {
                h2 #h-incidents { "Open incidents" }
                @if incidents.is_empty() { p { "None." } }
                ul.plain {
                    @for i in &incidents {
                        li { "#" (i.id) " " (i.title) " (" (i.repo) ", opened " (time(&i.opened_at)) ")" }
                    }
                }
            }
        }
    })
}

fn labels_text(h: &HostView) -> String {
    h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Whether host `h` has every `key=value` (or bare `key`) of the comma-separated `filter`.
fn matches_labels(h: &HostView, filter: &str) -> bool {
    filter.split(',').map(str::trim).filter(|f| !f.is_empty()).all(|f| match f.split_once('=') {
        Some((k, v)) => h.labels.get(k.trim()).is_some_and(|have| have == v.trim()),
        None => h.labels.contains_key(f),
    })
}

fn bytes(b: Option<u64>) -> String {
    match b {
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
        None => "—".into(),
    }
}

fn hosts(c: &Coordinator, _ctx: &PageCtx, p: &Params) -> Result<Markup, UiError> {
    let filter = p.get("label").unwrap_or("").to_string();
    let all = c.hosts()?;
    let shown: Vec<&HostView> = all.iter().filter(|h| matches_labels(h, &filter)).collect();
    Ok(html! {
        form.filter method="get" action="/ui/hosts" role="search" {
            label for="label" { "Labels" }
            input #label type="text" name="label" value=(filter) placeholder="role=prod";
            button type="submit" { "Filter" }
            @if !filter.is_empty() { " " a href="/ui/hosts" { "Show all" } }
        }
        p.meta { (shown.len()) " of " (all.len()) " hosts" }
        div.scroll {
            table #hosts {
                thead { tr {
                    th scope="col" { "Host" } th scope="col" { "State" } th scope="col" { "Labels" }
                    th scope="col" { "CPU" } th scope="col" { "Memory" } th scope="col" { "Disk free" }
                    th scope="col" { "Agent" } th scope="col" { "Last seen" }
                } }
                tbody {
                    @for h in &shown {
                        tr data-host=(h.name) {
                            th scope="row" { (h.name) }
                            td { (host_state(h.state)) }
                            td { code { (labels_text(h)) } }
                            td.num { @if let Some(cpu) = h.cpu_percent { (format!("{cpu:.0}%")) } @else { "—" } }
                            td.num { (bytes(h.mem_used_bytes)) " / " (bytes(h.mem_total_bytes)) }
                            td.num { (bytes(h.disk_free_bytes)) }
                            td { (h.agent_version.as_deref().unwrap_or("—")) }
                            td { @if let Some(s) = h.last_seen_secs_ago { (format!("{s:.0} s ago")) } @else { "never" } }
                        }
                    }
                }
            }
        }
    })
}

fn gates(c: &Coordinator, ctx: &PageCtx, _: &Params) -> Result<Markup, UiError> {
    let gates = repo_gates(c)?;
    Ok(html! {
        @if gates.is_empty() { p { "No repositories: add one with `fifty repo add`." } }
        div.scroll {
            table #gates {
                thead { tr {
                    th scope="col" { "Repository" } th scope="col" { "Branch" } th scope="col" { "Gate" }
                    th scope="col" { "Reason" }
                    @if ctx.admin { th scope="col" { "Action" } }
                } }
                tbody {
                    @for g in &gates {
                        tr data-repo=(g.repo) {
                            th scope="row" { (g.repo) }
                            td { (g.branch) }
                            td.gate-state { (gate_badge(g)) }
                            td { (gate_reason(g)) }
                            @if ctx.admin {
                                td {
                                    @if g.open {
                                        (form_with(ctx, &format!("/ui/gates/{}/close", g.repo), "Close gate", html! {
                                            input type="hidden" name="branch" value=(g.branch);
                                            label for={ "reason-" (g.repo) } { "Reason" }
                                            input id={ "reason-" (g.repo) } type="text" name="reason" required placeholder="why";
                                        }))
                                    } @else {
                                        (form(ctx, &format!("/ui/gates/{}/open", g.repo), "Open gate", &[("branch", g.branch.as_str())]))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

fn host_cell(h: &crate::views::RolloutHostView) -> Markup {
    let (kind, text) = if let Some((r, why)) = &h.failed {
        ("bad", format!("failed release {r}: {why}"))
    } else if let Some((from, to)) = h.applying {
        ("warn", format!("switching {from} → {to}"))
    } else if !h.up {
        ("bad", "down".to_string())
    } else if h.target.is_some() && h.current == h.target && h.healthy {
        ("ok", "on target, healthy".to_string())
    } else if h.target.is_some() && h.current == h.target {
        ("warn", "on target, not healthy".to_string())
    } else if h.target.is_none() {
        ("info", "waiting".to_string())
    } else {
        ("warn", "pending".to_string())
    };
    badge(kind, &text)
}

fn rollouts(c: &Coordinator, ctx: &PageCtx, _: &Params) -> Result<Markup, UiError> {
    let rollouts = repo_rollouts(c)?;
    let releases = c.releases(None)?;
    Ok(html! {
        @if rollouts.is_empty() { p { "No rollout yet: a green commit of a repository with [package] and [deploy] makes a release." } }
        @for r in &rollouts {
            section.rollout data-rollout=(r.id) aria-labelledby={ "h-rollout-" (r.id) } {
                h2 id={ "h-rollout-" (r.id) } {
                    (r.repo) ": rollout " (r.id) " of release " (r.release)
                    @if let Some(p) = r.previous { " (from " (p) ")" }
                }
                p.status {
                    span.phase { (phase(r)) } " "
                    @if r.phase != Phase::Done { "wave " span.wave { (r.wave) } " of " (r.waves.len()) ", " (format!("{:.0}", r.phase_secs)) " s in this phase; bake " (r.bake) }
                    " " (outcome(&r.outcome))
                }
                @if let Some(h) = &r.held { p.warn { "Held: " (h) } }
                @if !r.immune.is_empty() {
                    ul.plain.immune { @for line in &r.immune { li { (line) } } }
                }
                (super::evidence::section(c, r))
                @if ctx.admin && r.phase != Phase::Done {
                    div.actions {
                        @if r.phase == Phase::AwaitingPromotion { (form(ctx, &format!("/ui/rollouts/{}/promote", r.repo), "Promote", &[])) }
                        @if r.paused { (form(ctx, &format!("/ui/rollouts/{}/resume", r.repo), "Resume", &[])) }
                        @else { (form(ctx, &format!("/ui/rollouts/{}/pause", r.repo), "Pause", &[])) }
                        (form(ctx, &format!("/ui/rollouts/{}/abort", r.repo), "Abort", &[]))
                    }
                }
                ol.waves {
                    @for (i, w) in r.waves.iter().enumerate() {
                        @let state = if r.phase == Phase::Done || i + 1 < r.wave { "done" } else if i + 1 == r.wave { "current" } else { "next" };
                        li class={ "wave " (state) } data-wave=(i + 1) {
                            h3 { "Wave " (i + 1) ": " (w.step) " → " (w.reach) " hosts " span.sr { "(" (state) ")" } }
                            ul.plain {
                                @for h in r.hosts.iter().filter(|h| h.wave == i + 1) {
                                    li data-host=(h.host) { (h.host) " " (host_cell(h)) }
                                }
                            }
                        }
                    }
                }
                details {
                    summary { "Events" }
                    ol.events { @for (at, line) in r.events.iter().rev().take(30) { li { (time(at)) " " (line) } } }
                }
            }
        }
        h2 { "Releases" }
        @if let Some(repo) = rollouts.first().map(|r| r.repo.clone()) {
            @if ctx.admin {
                (form(ctx, &format!("/ui/rollback/{repo}"), &format!("Roll {repo} back to the last good release"), &[]))
            }
        }
        div.scroll {
            table #releases {
                thead { tr {
                    th scope="col" { "Release" } th scope="col" { "Repository" } th scope="col" { "Commit" }
                    th scope="col" { "State" } th scope="col" { "Hosts" } th scope="col" { "Made" }
                    @if ctx.admin { th scope="col" { "Action" } }
                } }
                tbody {
                    @for rel in releases.iter().take(50) {
                        tr {
                            th scope="row" { (rel.id) }
                            td { (rel.repo) }
                            td { code { (rel.sha.get(..10).unwrap_or(&rel.sha)) } " " (rel.subject) }
                            td { (rel.state) }
                            td { (rel.hosts.len()) }
                            td { (time(&rel.created_at)) }
                            @if ctx.admin {
                                td { (form(ctx, &format!("/ui/rollback/{}", rel.repo), "Roll back to this", &[("to", &rel.id.to_string())])) }
                            }
                        }
                    }
                }
            }
        }
    })
}

#[derive(serde::Deserialize)]
struct GateForm {
    branch: Option<String>,
    reason: Option<String>,
}

async fn change_gate(ui: &Ui, ctx: &PageCtx, repo: &str, f: GateForm, close: bool) -> Result<Done, UiError> {
    let reason = f.reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
    if close && reason.is_none() {
        return Err(UiError::new(StatusCode::BAD_REQUEST, "closing a gate needs a reason"));
    }
    let branch = f.branch.filter(|b| !b.is_empty());
    ui.c.set_gate(repo, GateChange { branch, reason }, close, &ctx.by).await?;
    Ok(Done::to("/ui/gates"))
}

async fn close_gate(
    State(ui): State<Arc<Ui>>,
    ctx: PageCtx,
    Path(repo): Path<String>,
    Form(f): Form<GateForm>,
) -> Result<Done, UiError> {
    change_gate(&ui, &ctx, &repo, f, true).await
}

async fn open_gate(
    State(ui): State<Arc<Ui>>,
    ctx: PageCtx,
    Path(repo): Path<String>,
    Form(f): Form<GateForm>,
) -> Result<Done, UiError> {
    change_gate(&ui, &ctx, &repo, f, false).await
}

async fn steer_rollout(
    State(ui): State<Arc<Ui>>,
    ctx: PageCtx,
    Path((repo, action)): Path<(String, String)>,
) -> Result<Done, UiError> {
    ui.c.steer_rollout(Some(&repo), &action, &ctx.by).await?;
    Ok(Done::to("/ui/rollouts"))
}

#[derive(serde::Deserialize)]
struct RollbackForm {
    to: Option<u64>,
}

async fn rollback(
    State(ui): State<Arc<Ui>>,
    ctx: PageCtx,
    Path(repo): Path<String>,
    Form(f): Form<RollbackForm>,
) -> Result<Done, UiError> {
    ui.c.rollback(Some(&repo), f.to, &ctx.by).await?;
    Ok(Done::to("/ui/rollouts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_need_every_label() {
        let h = HostView {
            name: "web-1".into(),
            labels: [("role".to_string(), "prod".to_string()), ("zone".to_string(), "a".to_string())].into(),
            state: HostState::Ready,
            cpu_percent: None,
            load: None,
            mem_used_bytes: None,
            mem_total_bytes: None,
            disk_free_bytes: None,
            agent_version: None,
            last_seen: None,
            last_seen_secs_ago: None,
            enrolled_at: String::new(),
            cert_serial: String::new(),
        };
        assert!(matches_labels(&h, ""));
        assert!(matches_labels(&h, "role=prod"));
        assert!(matches_labels(&h, "role=prod, zone"));
        assert!(!matches_labels(&h, "role=build"));
        assert!(!matches_labels(&h, "role=prod,zone=b"));
    }
}
