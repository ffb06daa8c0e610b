//! `POST /v1/webhooks/github`: GitHub-style push webhooks. No bearer token (GitHub cannot send
//! one); instead the body must carry a valid `X-Hub-Signature-256` (HMAC-SHA256 of the raw body
//! with the repository's webhook secret, compared in constant time), and each
//! `X-GitHub-Delivery` id is acted on once (a redelivery is answered, not repeated).
//!
//! The repository is `?repo=NAME`, else the registered one whose URL is the payload's
//! `clone_url`, `ssh_url`, `git_url` or `html_url`, else the one named like the payload's
//! repository.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::ApiError;
use crate::ci::NewCommit;
use crate::coordinator::Coordinator;

/// Headers a follower forwards to the leader with the body.
pub const HEADERS: [&str; 3] = ["x-hub-signature-256", "x-github-delivery", "x-github-event"];

#[derive(Deserialize)]
pub(super) struct WebhookQuery {
    repo: Option<String>,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: PushRepo,
    #[serde(default)]
    commits: Vec<PushCommit>,
}

#[derive(Deserialize)]
struct PushRepo {
    #[serde(default)]
    name: String,
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    git_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
}

#[derive(Deserialize)]
struct PushCommit {
    id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    author: Option<PushAuthor>,
}

#[derive(Deserialize)]
struct PushAuthor {
    #[serde(default)]
    name: String,
}

fn bad(status: StatusCode, m: impl Into<String>) -> ApiError {
    ApiError(status, m.into())
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn signature_valid(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else { return false };
    let Ok(tag) = hex::decode(hex_sig.trim()) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, body, &tag).is_ok()
}

pub(super) async fn github(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    Query(q): Query<WebhookQuery>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let event = header("x-github-event").unwrap_or_else(|| "push".into());
    let push: Option<Push> = serde_json::from_slice(&body).ok();
    // Which repository: by query, by URL, by name.
    let repos = c.consensus.store().repos()?;
    let repo = match (&q.repo, &push) {
        (Some(name), _) => repos.into_iter().find(|r| r.name.as_str() == name),
        (None, Some(p)) => {
            let urls: Vec<&String> =
                [&p.repository.clone_url, &p.repository.ssh_url, &p.repository.git_url, &p.repository.html_url]
                    .into_iter()
                    .flatten()
                    .collect();
            let by_url = repos
                .iter()
                .find(|r| urls.iter().any(|u| u.trim_end_matches(".git") == r.url.trim_end_matches(".git")));
            by_url.cloned().or_else(|| repos.into_iter().find(|r| r.name.as_str() == p.repository.name))
        }
        (None, None) => None,
    };
    let Some(repo) = repo else {
        return Err(bad(
            StatusCode::NOT_FOUND,
            "no registered repository matches this webhook: add ?repo=NAME to its URL, or register the repository's URL",
        ));
    };
    let Some(secret) = &repo.webhook_secret else {
        return Err(bad(
            StatusCode::FORBIDDEN,
            format!(
                "webhooks are off for {}: set a secret with `fifty repo add {} --webhook-secret ...`",
                repo.name, repo.name
            ),
        ));
    };
    let Some(signature) = header("x-hub-signature-256") else {
        return Err(bad(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256"));
    };
    if !signature_valid(secret, &body, &signature) {
        tracing::warn!(repo = %repo.name, "webhook with a wrong signature refused");
        c.metrics.webhooks_refused.inc();
        return Err(bad(
            StatusCode::UNAUTHORIZED,
            "X-Hub-Signature-256 does not match the body and this repository's secret",
        ));
    }
    if event == "ping" {
        return Ok((StatusCode::OK, Json(serde_json::json!({ "pong": true }))).into_response());
    }
    if event != "push" {
        return Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "ignored": format!("event {event} is not a push") })),
        )
            .into_response());
    }
    let Some(push) = push else {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "the body is not a push event (expected JSON with ref, repository, commits)",
        ));
    };
    let delivery = header("x-github-delivery");
    if let Some(d) = &delivery {
        if d.is_empty() || d.len() > 100 || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad(StatusCode::BAD_REQUEST, "X-GitHub-Delivery must be up to 100 letters, digits and '-'"));
        }
    }
    let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else {
        return Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "ignored": format!("{} is not a branch", push.git_ref) })),
        )
            .into_response());
    };
    if push.deleted {
        return Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "ignored": "branch deleted" }))).into_response());
    }
    let mut commits: Vec<NewCommit> = push
        .commits
        .into_iter()
        .map(|pc| NewCommit { sha: pc.id, subject: pc.message, author: pc.author.map(|a| a.name).unwrap_or_default() })
        .collect();
    if commits.is_empty() && crate::ci::valid_sha(&push.after) {
        commits.push(NewCommit { sha: push.after.clone(), subject: String::new(), author: String::new() });
    }
    let answer = c.notify_commits(repo.name.as_str(), Some(branch.to_string()), commits, delivery).await?;
    Ok((StatusCode::OK, Json(answer)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_valid("It's a Secret to Everybody", b"Hello, World!", sig));
        assert!(!signature_valid("another secret", b"Hello, World!", sig));
        assert!(!signature_valid("It's a Secret to Everybody", b"Hello, World?", sig));
        assert!(!signature_valid("It's a Secret to Everybody", b"Hello, World!", "sha1=abc"));
        assert!(!signature_valid("It's a Secret to Everybody", b"Hello, World!", "sha256=zz"));
    }
}
