//! The page frame every dashboard page shares, the POST form helpers, and the static assets.
//!
//! Pages are plain server-rendered HTML that reads well without JavaScript. The Content Security
//! Policy (`super::SECURITY_HEADERS`) allows scripts and styles from `/ui/static/` only: write no
//! inline `<script>`, no `style="..."` attribute and no `on...=` handler — use the classes of
//! `static/style.css` (SVG presentation attributes such as `fill` or `stroke` are fine).

use maud::{html, Markup, DOCTYPE};

use super::PageCtx;

/// The stylesheet, compiled into the binary.
pub const STYLE_CSS: &str = include_str!("static/style.css");
/// The live-update script (`super::events`), compiled into the binary.
pub const LIVE_JS: &str = include_str!("static/live.js");

/// A whole page: header with the navigation, `body` in `<main id="main">`, footer.
/// `nav_active` is the nav label to mark as the current page (see `super::pages`), `title` the
/// `<title>` and the page's `<h1>`.
pub fn page(ctx: &PageCtx, title: &str, nav_active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Fifty" }
                link rel="stylesheet" href="/ui/static/style.css";
                script src="/ui/static/live.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "Fifty" }
                    nav aria-label="Main" {
                        ul {
                            @for (label, path) in super::nav() {
                                li {
                                    @if label == nav_active {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span.role title=(ctx.who) { (ctx.role_name()) }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(ctx.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" data-live=(ctx.live_path) {
                    (fragment(title, body))
                }
                footer {
                    small { "Rendered by coordinator " (ctx.node_id) " (the leader). " span.live-state { "Updates live." } }
                }
            }
        }
    }
}

/// What goes inside `<main>`: the heading and the page body. Live updates (`super::events`)
/// send exactly this, so the page and its updates cannot differ.
pub fn fragment(title: &str, body: Markup) -> Markup {
    html! {
        h1 { (title) }
        (body)
    }
}

/// A page outside a session (sign-in, errors before sign-in): same look, no navigation.
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Fifty" }
                link rel="stylesheet" href="/ui/static/style.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top { a.brand href="/ui/" { "Fifty" } }
                main id="main" tabindex="-1" { h1 { (title) } (body) }
            }
        }
    }
}

/// A one-button admin action: `<form method="post" action=(action)>` carrying the session's
/// CSRF token and `fields` as hidden inputs, with a submit button saying `label`. Renders
/// nothing for a read session, so a page can call it unconditionally.
pub fn form(ctx: &PageCtx, action: &str, label: &str, fields: &[(&str, &str)]) -> Markup {
    form_with(
        ctx,
        action,
        label,
        html! {
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
        },
    )
}

/// An admin form with visible inputs of the page's own (`inputs`, e.g. a reason text field),
/// the CSRF token and a submit button saying `label`. Renders nothing for a read session.
pub fn form_with(ctx: &PageCtx, action: &str, label: &str, inputs: Markup) -> Markup {
    if !ctx.admin {
        return html! {};
    }
    html! {
        form.action method="post" action=(action) {
            input type="hidden" name="csrf" value=(ctx.csrf);
            (inputs)
            button type="submit" { (label) }
        }
    }
}

/// A small state badge (`ok`, `warn`, `bad` or `info` colours), text always shown.
pub fn badge(kind: &str, text: &str) -> Markup {
    html! { span class={ "badge " (kind) } { (text) } }
}

/// A `<time>` element for an RFC 3339 time (shown as is: the coordinator's UTC).
pub fn time(rfc3339: &str) -> Markup {
    html! { time datetime=(rfc3339) { (rfc3339.replace('T', " ")) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(admin: bool) -> PageCtx {
        PageCtx {
            admin,
            csrf: "tok<en>".into(),
            who: "token abc".into(),
            by: "token abc".into(),
            node_id: "00000000000000aa".into(),
            live_path: "/ui/hosts".into(),
        }
    }

    #[test]
    fn forms_carry_the_csrf_token_and_read_sessions_get_none() {
        let f = form(&ctx(true), "/ui/gates/shop/close", "Close", &[("branch", "main")]).into_string();
        assert!(f.contains(r#"method="post""#) && f.contains(r#"action="/ui/gates/shop/close""#), "{f}");
        assert!(f.contains(r#"name="csrf" value="tok&lt;en&gt;""#), "escaped CSRF field: {f}");
        assert!(f.contains(r#"name="branch" value="main""#), "{f}");
        assert_eq!(form(&ctx(false), "/ui/x", "Close", &[]).into_string(), "");
    }

    #[test]
    fn the_page_has_landmarks_a_skip_link_and_escapes_its_title() {
        let p = page(&ctx(false), "<Hosts>", "Hosts", html! { p { "body" } }).into_string();
        for needle in
            ["<header", "<nav", "<main id=\"main\"", "href=\"#main\"", "&lt;Hosts&gt;", "aria-current=\"page\""]
        {
            assert!(p.contains(needle), "{needle} missing: {p}");
        }
        assert!(!p.contains("<Hosts>"));
    }
}
