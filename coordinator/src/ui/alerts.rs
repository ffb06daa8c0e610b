//! The alerts page: alerts firing (ack for admins), the recent ones, and the rules (silence for
//! admins). It reads `Coordinator::alerts` and `alert_rules`, as `GET /v1/alerts` and
//! `/v1/alerts/rules` do; its actions call `ack_alert` and `silence_alert_rule`, as
//! `POST /v1/alerts/{id}/ack` and `/v1/alerts/rules/{rule}/silence` do.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Form;
use maud::{html, Markup};

use super::layout::{badge, form, form_with, time};
use super::{Done, Page, PageCtx, Params, Ui, UiError, UiRoute};
use crate::alerts::ops::{AlertsView, Silence};
use crate::alerts::{AlertView, RuleView, Severity};
use crate::coordinator::Coordinator;

/// Recent alerts listed.
const RECENT: usize = 50;

pub(super) fn pages() -> Vec<Page> {
    vec![Page { path: "/ui/alerts", title: "Alerts", nav: Some("Alerts"), section: "Alerts", render: alerts }]
}

pub(super) fn routes() -> Vec<UiRoute> {
    vec![UiRoute::action("/ui/alerts/{id}/ack", ack), UiRoute::action("/ui/alerts/rules/{rule}/silence", silence)]
}

fn severity(s: Severity) -> Markup {
    let kind = match s {
        Severity::Critical => "bad",
        Severity::Warning => "warn",
    };
    badge(kind, s.as_str())
}

fn alert_row(ctx: &PageCtx, a: &AlertView, actions: bool) -> Markup {
    html! {
        tr data-alert=(a.id) {
            th scope="row" { (a.id) }
            td { (severity(a.severity)) " " @if a.state == "firing" { (badge("bad", "firing")) } @else { (badge("ok", "resolved")) } }
            td { (a.rule_name) }
            td { (a.subject) }
            td { (a.summary) @if let Some(r) = &a.resolved_summary { br; span.meta { "resolved: " (r) } } }
            td { (time(&a.fired_at)) @if let Some(r) = &a.resolved_at { br; span.meta { "until " (time(r)) } } }
            td {
                @if let Some(by) = &a.acked_by { "acked by " (by) } @else { "—" }
                @if a.silenced { " " (badge("info", "silenced")) }
                @if let Some(i) = a.incident { " " a href={ "/ui/incidents/" (i) } { "incident " (i) } }
            }
            @if actions {
                td { @if a.acked_by.is_none() { (form(ctx, &format!("/ui/alerts/{}/ack", a.id), "Acknowledge", &[])) } }
            }
        }
    }
}

fn alert_table(ctx: &PageCtx, id: &str, alerts: &[AlertView], actions: bool) -> Markup {
    let actions = actions && ctx.admin;
    html! {
        div.scroll { table id=(id) {
            thead { tr {
                th scope="col" { "#" } th scope="col" { "State" } th scope="col" { "Rule" } th scope="col" { "Subject" }
                th scope="col" { "Seen" } th scope="col" { "Fired" } th scope="col" { "Acknowledged" }
                @if actions { th scope="col" { "Action" } }
            } }
            tbody { @for a in alerts { (alert_row(ctx, a, actions)) } }
        } }
    }
}

/// The alerts page body.
pub fn alerts_body(ctx: &PageCtx, v: &AlertsView, rules: &[RuleView]) -> Markup {
    html! {
        section aria-labelledby="h-firing" {
            h2 #h-firing { "Firing (" (v.firing.len()) ")" }
            @if v.firing.is_empty() { p { "Nothing is firing." } }
            @else { (alert_table(ctx, "firing", &v.firing, true)) }
        }
        section aria-labelledby="h-rules" {
            h2 #h-rules { "Rules" }
            @if rules.is_empty() { p { "No alert rules: add one with `fifty alert rule add` or in the coordinator's config." } }
            @else {
                div.scroll { table #rules {
                    thead { tr {
                        th scope="col" { "Rule" } th scope="col" { "Fires when" } th scope="col" { "For" } th scope="col" { "Severity" }
                        th scope="col" { "Silenced until" } @if ctx.admin { th scope="col" { "Silence" } }
                    } }
                    tbody { @for r in rules {
                        tr data-rule=(r.name) {
                            th scope="row" { (r.name) }
                            td { (r.condition) }
                            td { (r.for_) }
                            td { (severity(r.severity)) }
                            td { @if let Some(u) = &r.silenced_until { (time(u)) } @else { "—" } }
                            @if ctx.admin {
                                td {
                                    @let action = format!("/ui/alerts/rules/{}/silence", super::urlencode(&r.name));
                                    (form_with(ctx, &action, "Silence", html! {
                                        label for={ "silence-" (r.id) } { "for" }
                                        input id={ "silence-" (r.id) } type="text" name="for" required value="1h" size="5";
                                    }))
                                    @if r.silenced_until.is_some() { (form(ctx, &action, "Lift", &[("for", "0s")])) }
                                }
                            }
                        }
                    } }
                } }
            }
        }
        section aria-labelledby="h-recent" {
            h2 #h-recent { "Recent" }
            @if v.recent.is_empty() { p { "No alerts yet." } }
            @else { (alert_table(ctx, "recent", &v.recent, false)) }
        }
    }
}

fn alerts(c: &Coordinator, ctx: &PageCtx, _: &Params) -> Result<Markup, UiError> {
    Ok(alerts_body(ctx, &c.alerts(RECENT)?, &c.alert_rules()?))
}

async fn ack(State(ui): State<Arc<Ui>>, ctx: PageCtx, Path(id): Path<String>) -> Result<Done, UiError> {
    let id = id.parse().map_err(|_| UiError::new(StatusCode::BAD_REQUEST, format!("{id:?} is not an alert number")))?;
    ui.c.ack_alert(id, &ctx.by).await?;
    Ok(Done::to("/ui/alerts"))
}

#[derive(serde::Deserialize)]
struct SilenceForm {
    #[serde(rename = "for")]
    for_: String,
}

async fn silence(
    State(ui): State<Arc<Ui>>,
    Path(rule): Path<String>,
    Form(f): Form<SilenceForm>,
) -> Result<Done, UiError> {
    ui.c.silence_alert_rule(&rule, Silence { for_: f.for_.trim().to_string() }).await?;
    Ok(Done::to("/ui/alerts"))
}

#[cfg(test)]
mod tests {
    use super::super::ci::fixtures::{ctx, NOW};
    use super::*;

    fn alert(id: u64, firing: bool, acked: bool) -> AlertView {
        AlertView {
            id,
            state: if firing { "firing" } else { "resolved" }.into(),
            rule: 1,
            rule_name: "host-down".into(),
            subject: "web-<1>".into(),
            severity: Severity::Critical,
            summary: "no heartbeat for 5s".into(),
            since: NOW.into(),
            fired_at: NOW.into(),
            resolved_at: (!firing).then(|| NOW.to_string()),
            resolved_summary: None,
            acked_by: acked.then(|| "token a1".to_string()),
            silenced: false,
            notifications: vec![],
            incident: Some(2),
        }
    }

    fn rule() -> RuleView {
        serde_json::from_value(serde_json::json!({
            "id": 1, "name": "host-down", "kind": "host_down", "condition": "a host is down", "for": "5s",
            "severity": "critical", "webhooks": [], "silenced_until": null, "added_by": "config", "added_at": NOW
        }))
        .expect("a rule view")
    }

    #[test]
    fn firing_alerts_rules_and_recent_ones_with_actions_for_admins_only() {
        let v = AlertsView {
            firing: vec![alert(7, true, false), alert(8, true, true)],
            recent: vec![alert(6, false, true)],
        };
        let admin = alerts_body(&ctx(true), &v, &[rule()]).into_string();
        let read = alerts_body(&ctx(false), &v, &[rule()]).into_string();
        for page in [&admin, &read] {
            assert!(page.contains("Firing (2)") && page.contains("web-&lt;1&gt;"), "{page}");
            assert!(page.contains(r#"href="/ui/incidents/2""#) && page.contains("a host is down"), "{page}");
        }
        assert!(admin.contains(r#"action="/ui/alerts/7/ack""#), "{admin}");
        assert!(!admin.contains(r#"action="/ui/alerts/8/ack""#), "acked already: {admin}");
        assert!(!admin.contains(r#"action="/ui/alerts/6/ack""#), "the recent list takes no action");
        assert!(admin.contains(r#"action="/ui/alerts/rules/host-down/silence""#), "{admin}");
        assert!(!read.contains("<form") && !read.contains("csrf"), "{read}");
    }
}
