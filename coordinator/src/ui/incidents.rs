//! The incidents pages (Five Whys): the list, and an incident's page with its timeline, the
//! evidence chart of the reverted wave, the verdicts, whys and corrective actions, and the
//! Markdown export. Admins add whys and actions, mark actions done and close the incident
//! through CSRF-protected forms that call `Coordinator::change_incident`, as
//! `POST /v1/incidents/{id}` does.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use fifty_shared::ids::Role;
use maud::{html, Markup, PreEscaped};

use super::chart::{self, LineChart, Marker};
use super::layout::{badge, form, form_with, time};
use super::{evidence, Done, Page, PageCtx, Params, Ui, UiAccess, UiError, UiRoute};
use crate::coordinator::Coordinator;
use crate::incidents::Change;
use crate::views::{parse_rfc3339, IncidentView};

pub(super) fn pages() -> Vec<Page> {
    vec![
        Page { path: "/ui/incidents", title: "Incidents", nav: Some("Incidents"), section: "Incidents", render: list },
        Page { path: "/ui/incidents/{id}", title: "Incident", nav: None, section: "Incidents", render: show },
    ]
}

pub(super) fn routes() -> Vec<UiRoute> {
    vec![
        UiRoute::new(axum::http::Method::GET, "/ui/incidents/{id}/markdown", UiAccess::Leader(Role::Read), markdown),
        UiRoute::action("/ui/incidents/{id}/why", add_why),
        UiRoute::action("/ui/incidents/{id}/action", add_action),
        UiRoute::action("/ui/incidents/{id}/done", action_done),
        UiRoute::action("/ui/incidents/{id}/close", close),
    ]
}

fn state(i: &IncidentView) -> Markup {
    if i.closed.is_some() {
        badge("info", "closed")
    } else {
        badge("bad", "open")
    }
}

/// The incidents, newest first.
pub fn list_body(incidents: &[IncidentView]) -> Markup {
    html! {
        @if incidents.is_empty() { p { "No incidents. The immune system opens one when it reverts a release, and a critical alert when it fires." } }
        @else {
            div.scroll { table #incidents {
                thead { tr {
                    th scope="col" { "#" } th scope="col" { "State" } th scope="col" { "Title" } th scope="col" { "Opened" }
                    th scope="col" { "Repository" } th scope="col" { "Whys" } th scope="col" { "Actions done" }
                } }
                tbody { @for i in incidents {
                    tr data-incident=(i.id) {
                        th scope="row" { a href={ "/ui/incidents/" (i.id) } { (i.id) } }
                        td { (state(i)) }
                        td { a href={ "/ui/incidents/" (i.id) } { (i.title) } }
                        td { (time(&i.opened_at)) }
                        td { (i.repo) }
                        td.num { (i.whys.len()) }
                        td.num { (i.actions.iter().filter(|a| a.done).count()) " of " (i.actions.len()) }
                    }
                } }
            } }
        }
    }
}

fn list(c: &Coordinator, _ctx: &PageCtx, _: &Params) -> Result<Markup, UiError> {
    Ok(list_body(&c.incidents()?))
}

/// An incident's page body; `charts` are the reverted wave's metrics (see [`incident_charts`]).
pub fn incident_body(ctx: &PageCtx, i: &IncidentView, charts: &[LineChart]) -> Markup {
    let base = format!("/ui/incidents/{}", i.id);
    let open = i.closed.is_none();
    html! {
        h2 { "Incident " (i.id) ": " (i.title) " " (state(i)) }
        p {
            a href={ (base) "/markdown" } download={ "incident-" (i.id) ".md" } { "Export as Markdown" }
            " (the postmortem, as `fifty incident show --markdown` prints it)"
        }
        dl.facts {
            dt { "Opened" } dd { (time(&i.opened_at)) }
            @if let Some((at, by)) = &i.closed { dt { "Closed" } dd { (time(at)) " by " (by) } }
            @if !i.repo.is_empty() { dt { "Repository" } dd { (i.repo) " / " (i.branch) } }
            @if !i.sha.is_empty() {
                dt { "Commit" } dd { a href={ "/ui/commits/" (i.sha) "?repo=" (super::urlencode(&i.repo)) } { code { (i.sha.get(..10).unwrap_or(&i.sha)) } } " " (i.subject) }
                dt { "Release" } dd { (i.release) " reverted to " (i.previous) " (rollout " (i.rollout) ")" }
            }
            @if let Some(r) = &i.revert_commit { dt { "Revert commit" } dd { code { (r) } } }
            @if let Some(e) = &i.revert_error { dt { "Revert" } dd.error { (e) } }
            dt { "Why it was opened" } dd { (i.reason) }
        }
        section aria-labelledby="h-evidence" {
            h2 #h-evidence { "Evidence" }
            @if i.evidence.is_empty() { p.meta { "No metric verdicts (this incident was not opened by the immune system)." } }
            @else { ul.plain #verdicts { @for e in &i.evidence { li { code { (e) } } } } }
            @for c in charts { (PreEscaped(chart::line_chart(c))) }
            @if charts.is_empty() && i.rollout > 0 {
                p.meta { "No metric reports of the reverted rollout's hosts are held by the leader any more (it keeps an hour); the verdicts above are the record." }
            }
        }
        section aria-labelledby="h-timeline" {
            h2 #h-timeline { "Timeline" }
            ol.timeline { @for (at, what) in &i.timeline { li { (time(at)) " — " (what) } } }
        }
        section aria-labelledby="h-whys" {
            h2 #h-whys { "Five whys" }
            @if i.whys.is_empty() { p.meta { "None yet." } }
            ol #whys { @for w in &i.whys { li { (w) } } }
            @if open {
                (form_with(ctx, &format!("{base}/why"), "Add why", html! {
                    label for="why-text" { "Why " (i.whys.len() + 1) }
                    input #why-text type="text" name="text" required maxlength="2000";
                }))
            }
        }
        section aria-labelledby="h-actions" {
            h2 #h-actions { "Corrective actions" }
            @if i.actions.is_empty() { p.meta { "None yet." } }
            ul.plain #actions { @for (n, a) in i.actions.iter().enumerate() {
                li {
                    @if a.done { (badge("ok", "done")) } @else { (badge("warn", "to do")) }
                    " " (a.text) " — " (a.owner)
                    @if open && !a.done { " " (form(ctx, &format!("{base}/done"), "Mark done", &[("n", (n + 1).to_string().as_str())])) }
                }
            } }
            @if open {
                (form_with(ctx, &format!("{base}/action"), "Add action", html! {
                    label for="action-text" { "Action" }
                    input #action-text type="text" name="text" required maxlength="2000";
                    label for="action-owner" { "Owner" }
                    input #action-owner type="text" name="owner" required maxlength="2000";
                }))
                (form(ctx, &format!("{base}/close"), "Close incident", &[]))
            }
        }
    }
}

/// The charts of the wave an incident reverted: canary vs baseline from the rollout's start to
/// a minute after the decision, marked with the incident's timeline. None for an incident an
/// alert opened, or once the rollout is gone.
pub fn incident_charts(c: &Coordinator, i: &IncidentView) -> Result<Vec<LineChart>, UiError> {
    if i.rollout == 0 {
        return Ok(Vec::new());
    }
    let Some(rollout) = c.consensus.store().rollout(i.rollout)? else { return Ok(Vec::new()) };
    let r = c.view_of(&rollout)?;
    let Some(opened) = parse_rfc3339(&i.opened_at) else { return Ok(Vec::new()) };
    let from = r
        .evidence
        .as_ref()
        .and_then(|e| e.first_data.as_deref())
        .or(Some(r.started_at.as_str()))
        .and_then(parse_rfc3339)
        .unwrap_or(opened);
    let metrics: Vec<String> = r.evidence.iter().flat_map(|e| e.metrics.iter().map(|m| m.name.clone())).collect();
    let hosts: Vec<String> = r.hosts.iter().map(|h| h.host.clone()).collect();
    let w = evidence::Window {
        from,
        to: opened + std::time::Duration::from_secs(60),
        release: i.release,
        previous: Some(i.previous),
    };
    let mut markers = evidence::rollout_markers(&r);
    markers.retain(|m| !m.label.starts_with("decision"));
    markers.push(Marker { x: chart::epoch_secs(opened), label: "decision: revert".into() });
    let lines = evidence::canary_vs_baseline(c, &hosts, &metrics, &w);
    Ok(evidence::charts(lines, i.release, Some(i.previous), &markers))
}

fn id_of(p: &Params) -> Result<u64, UiError> {
    let text = p.get("id").unwrap_or_default();
    text.parse().map_err(|_| UiError::new(StatusCode::BAD_REQUEST, format!("{text:?} is not an incident number")))
}

fn show(c: &Coordinator, ctx: &PageCtx, p: &Params) -> Result<Markup, UiError> {
    let i = c.incident(id_of(p)?)?;
    let charts = incident_charts(c, &i)?;
    Ok(incident_body(ctx, &i, &charts))
}

fn number(text: &str) -> Result<u64, UiError> {
    text.parse().map_err(|_| UiError::new(StatusCode::BAD_REQUEST, format!("{text:?} is not an incident number")))
}

/// `GET /ui/incidents/{id}/markdown`: the postmortem as a Markdown file.
async fn markdown(State(ui): State<Arc<Ui>>, Path(id): Path<String>) -> Response {
    let incident = match number(&id).and_then(|id| ui.c.incident(id).map_err(UiError::from)) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let name = format!("attachment; filename=\"incident-{}.md\"", incident.id);
    (
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, name)],
        incident.markdown,
    )
        .into_response()
}

async fn change(ui: &Ui, ctx: &PageCtx, id: &str, change: Change) -> Result<Done, UiError> {
    let id = number(id)?;
    ui.c.change_incident(id, change, &ctx.by).await?;
    Ok(Done::to(format!("/ui/incidents/{id}")))
}

#[derive(serde::Deserialize)]
struct WhyForm {
    text: String,
}

async fn add_why(
    State(ui): State<Arc<Ui>>,
    ctx: PageCtx,
    Path(id): Path<String>,
    Form(f): Form<WhyForm>,
) -> Result<Done, UiError> {
    change(&ui, &ctx, &id, Change::Why { text: f.text }).await
}

#[derive(serde::Deserialize)]
struct ActionForm {
    text: String,
    owner: String,
}

async fn add_action(
    State(ui): State<Arc<Ui>>,
    ctx: PageCtx,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Result<Done, UiError> {
    change(&ui, &ctx, &id, Change::Action { text: f.text, owner: f.owner }).await
}

#[derive(serde::Deserialize)]
struct DoneForm {
    n: String,
}

async fn action_done(
    State(ui): State<Arc<Ui>>,
    ctx: PageCtx,
    Path(id): Path<String>,
    Form(f): Form<DoneForm>,
) -> Result<Done, UiError> {
    let n =
        f.n.parse()
            .map_err(|_| UiError::new(StatusCode::BAD_REQUEST, format!("n: {:?} is not an action number", f.n)))?;
    change(&ui, &ctx, &id, Change::ActionDone { n }).await
}

async fn close(State(ui): State<Arc<Ui>>, ctx: PageCtx, Path(id): Path<String>) -> Result<Done, UiError> {
    change(&ui, &ctx, &id, Change::Close).await
}

#[cfg(test)]
mod tests {
    use super::super::ci::fixtures::{ctx, NOW};
    use super::*;
    use crate::incidents::Action;

    fn incident(closed: bool) -> IncidentView {
        IncidentView {
            id: 3,
            state: if closed { "closed" } else { "open" }.into(),
            title: "release 9 of shop reverted".into(),
            repo: "shop".into(),
            branch: "main".into(),
            opened_at: NOW.into(),
            sha: "abcdef0123456789".into(),
            subject: "Speed up <cart>".into(),
            release: 9,
            previous: 8,
            rollout: 4,
            reason: "error_rate regressed".into(),
            evidence: vec!["fail: error_rate +80% (t=5.1 ...)".into()],
            revert_commit: Some("0123abcd".into()),
            revert_error: None,
            timeline: vec![(NOW.into(), "immune system reverted release 9".into())],
            whys: vec!["the cache was cold".into()],
            actions: vec![Action { text: "warm the cache".into(), owner: "ada".into(), done: false }],
            closed: closed.then(|| (NOW.to_string(), "token a1".to_string())),
            markdown: "# Incident 3".into(),
        }
    }

    #[test]
    fn the_list_links_every_incident() {
        let page = list_body(&[incident(false), IncidentView { id: 4, ..incident(true) }]).into_string();
        assert!(page.contains(r#"href="/ui/incidents/3""#) && page.contains(r#"href="/ui/incidents/4""#), "{page}");
        assert!(page.contains(">open<") && page.contains(">closed<") && page.contains("0 of 1"), "{page}");
        assert!(list_body(&[]).into_string().contains("No incidents"));
    }

    #[test]
    fn an_incident_shows_timeline_evidence_whys_actions_and_the_export() {
        let t0 = chart::epoch_secs(parse_rfc3339(NOW).unwrap());
        let chart = LineChart {
            title: "error_rate: canary (release 9) vs baseline".into(),
            y_label: "error_rate".into(),
            x_axis: chart::XAxis::Time,
            series: vec![chart::Series { name: "canary, release 9".into(), points: vec![(t0 - 60.0, 0.1), (t0, 0.2)] }],
            markers: vec![Marker { x: t0, label: "decision: revert".into() }],
        };
        let page = incident_body(&ctx(false), &incident(false), &[chart]).into_string();
        for needle in [
            "immune system reverted release 9",
            "fail: error_rate +80%",
            "the cache was cold",
            "warm the cache",
            "Speed up &lt;cart&gt;",
            r#"href="/ui/incidents/3/markdown""#,
            "decision: revert",
            "<svg",
        ] {
            assert!(page.contains(needle), "{needle} missing: {page}");
        }
    }

    #[test]
    fn only_an_admin_on_an_open_incident_gets_the_forms() {
        let admin = incident_body(&ctx(true), &incident(false), &[]).into_string();
        for action in ["/ui/incidents/3/why", "/ui/incidents/3/action", "/ui/incidents/3/done", "/ui/incidents/3/close"]
        {
            assert!(admin.contains(&format!(r#"action="{action}""#)), "{action} missing: {admin}");
        }
        assert_eq!(admin.matches(r#"name="csrf" value="csrf-token""#).count(), 4, "{admin}");
        let read = incident_body(&ctx(false), &incident(false), &[]).into_string();
        assert!(!read.contains("<form") && !read.contains("csrf"), "{read}");
        let closed = incident_body(&ctx(true), &incident(true), &[]).into_string();
        assert!(!closed.contains("<form"), "a closed incident takes no change: {closed}");
    }
}
