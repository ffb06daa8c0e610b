//! Notifications to webhooks. Decisions that people must hear of (an immune-system revert) write
//! a [`Notification`] in the same Raft entry as the decision, naming the webhooks configured at
//! that moment (`fifty webhook add URL [--format slack]`). The leader's loop POSTs each one to
//! each webhook, retrying with backoff, and records each delivery through Raft, so a new leader
//! carries on where the old one stopped and a notification is not sent twice to a webhook that
//! acknowledged it. (A leader that dies between a POST and its record may send it once more: the
//! `X-Fifty-Delivery` header carries an id receivers can drop repeats by.)

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bincode::{Decode, Encode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::coordinator::Coordinator;
use crate::state::{Applied, ApplyResult, Command, Rejection};
use crate::store::{Batch, Store};

/// The body a webhook gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Fifty's JSON: id, kind, title, text, repo, incident, at.
    Json,
    /// `{"text": ...}`, what Slack's (and Mattermost's, Rocket.Chat's) incoming webhooks take.
    Slack,
}

/// A webhook notifications go to.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Webhook {
    /// Its id, from 1.
    pub id: u64,
    /// Where to POST (`http://`).
    pub url: String,
    /// What to send.
    pub format: Format,
    /// Who added it, and when.
    pub added: (SystemTime, String),
}

/// Something people must hear of.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Notification {
    /// Its id, from 1 (receivers may drop repeats by it).
    pub id: u64,
    /// What kind of event, e.g. `immune.revert`.
    pub kind: String,
    /// One line.
    pub title: String,
    /// The details.
    pub text: String,
    /// The repository, if it is about one.
    pub repo: Option<String>,
    /// The incident, if one was opened.
    pub incident: Option<u64>,
    /// When.
    #[serde(skip)]
    pub at: Option<SystemTime>,
    /// The webhooks it goes to, and which of them have it.
    #[serde(skip)]
    pub to: Vec<(u64, bool)>,
}

impl Notification {
    /// The body for a webhook of `format`.
    pub fn body(&self, format: Format) -> String {
        match format {
            Format::Json => {
                let mut v = serde_json::to_value(self).unwrap_or_default();
                v["at"] = serde_json::Value::String(self.at.map(crate::views::rfc3339).unwrap_or_default());
                v.to_string()
            }
            Format::Slack => serde_json::json!({ "text": format!("*{}*\n{}", self.title, self.text) }).to_string(),
        }
    }
}

/// Checks a webhook URL: `http://host:port/path`.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{url:?}: only http:// webhooks are supported (put an HTTPS relay on the coordinators' network for https)"
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || url.parse::<hyper::Uri>().is_err() {
        return Err(format!("{url:?} is not a URL like http://host:port/path"));
    }
    Ok(())
}

impl Coordinator {
    /// The webhooks.
    pub fn webhooks(&self) -> Result<Vec<crate::views::WebhookView>, crate::coordinator::OpError> {
        Ok(self
            .consensus
            .store()
            .webhooks()?
            .into_iter()
            .map(|w| crate::views::WebhookView {
                id: w.id,
                url: w.url,
                format: w.format,
                added_at: crate::views::rfc3339(w.added.0),
                added_by: w.added.1,
            })
            .collect())
    }

    /// Adds a webhook.
    pub async fn add_webhook(
        &self,
        req: crate::views::AddWebhook,
        by: &str,
    ) -> Result<Vec<crate::views::WebhookView>, crate::coordinator::OpError> {
        check_url(&req.url).map_err(crate::coordinator::OpError::BadRequest)?;
        let cmd = Command::AddWebhook {
            url: req.url,
            format: req.format.unwrap_or(Format::Json),
            by: by.to_string(),
            at: SystemTime::now(),
        };
        self.consensus.propose(cmd).await??;
        self.webhooks()
    }

    /// Removes a webhook.
    pub async fn remove_webhook(&self, id: u64) -> Result<Vec<crate::views::WebhookView>, crate::coordinator::OpError> {
        self.consensus.propose(Command::RemoveWebhook { id }).await??;
        self.webhooks()
    }
}

/// How long a notification is tried before the loop gives up on it (and logs an error).
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Runs the delivery loop until `shutdown`; it delivers only while this node leads.
pub async fn run(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    // (notification, webhook) → (attempts, next try). Soft: a new leader starts again.
    let mut retries: std::collections::HashMap<(u64, u64), (u32, Instant)> = Default::default();
    loop {
        tokio::select! {
            _ = coordinator.notify_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !coordinator.consensus.status().is_leader() {
            retries.clear();
            continue;
        }
        let store = coordinator.consensus.store();
        let (pending, hooks) = match (store.notifications(), store.webhooks()) {
            (Ok(p), Ok(h)) => (p, h),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot read notifications");
                continue;
            }
        };
        for n in pending.into_iter().filter(|n| n.to.iter().any(|(_, done)| !done)) {
            let age = n.at.and_then(|at| SystemTime::now().duration_since(at).ok()).unwrap_or_default();
            for (hook_id, _) in n.to.iter().filter(|(_, done)| !done) {
                let key = (n.id, *hook_id);
                let (attempts, next) = retries.get(&key).copied().unwrap_or((0, Instant::now()));
                if next > Instant::now() || age > GIVE_UP_AFTER {
                    continue;
                }
                let Some(hook) = hooks.iter().find(|h| h.id == *hook_id) else {
                    // Removed since: count it as done.
                    let _ = coordinator
                        .consensus
                        .propose(Command::Delivered { notification: n.id, webhook: *hook_id })
                        .await;
                    continue;
                };
                match post(&hook.url, n.id, n.body(hook.format)).await {
                    Ok(()) => {
                        info!(notification = n.id, webhook = %hook.url, kind = %n.kind, "notification delivered");
                        retries.remove(&key);
                        let cmd = Command::Delivered { notification: n.id, webhook: hook.id };
                        if let Err(e) = coordinator.consensus.propose(cmd).await {
                            warn!(error = %e, "delivery not recorded; it may be sent again");
                        }
                    }
                    Err(e) => {
                        let delay = Duration::from_secs(1 << attempts.min(8)).min(Duration::from_secs(300));
                        retries.insert(key, (attempts + 1, Instant::now() + delay));
                        if age + delay > GIVE_UP_AFTER {
                            error!(notification = n.id, webhook = %hook.url, error = %e, "notification not delivered; giving up");
                        } else {
                            warn!(notification = n.id, webhook = %hook.url, error = %e, retry_in = ?delay, "webhook failed; will retry");
                        }
                    }
                }
            }
        }
    }
}

/// POSTs `body` to `url`; success is a 2xx within 10 s.
pub async fn post(url: &str, id: u64, body: String) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let exchange = async {
        let stream =
            tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, uri.authority().map(|a| a.as_str()).unwrap_or(&host))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("X-Fifty-Delivery", format!("fifty-notification-{id}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = send.send_request(request).await.map_err(|e| format!("send: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "no answer within 10 s".to_string())?
}

/// Adds a webhook (see `Command::AddWebhook`).
pub(crate) fn apply_add_webhook(
    store: &Store,
    url: &str,
    format: Format,
    by: &str,
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    let mut counters = store.counters()?;
    counters.last_webhook += 1;
    let hook =
        crate::notify::Webhook { id: counters.last_webhook, url: url.to_string(), format, added: (at, by.to_string()) };
    batch.put_counters(&counters);
    batch.put_webhook(&hook);
    Ok(Ok(Applied::Done))
}

/// Removes a webhook (see `Command::RemoveWebhook`).
pub(crate) fn apply_remove_webhook(store: &Store, id: u64, batch: &mut Batch) -> ApplyResult {
    if store.webhook(id)?.is_none() {
        return Ok(Err(Rejection::UnknownWebhook(id)));
    }
    batch.remove_webhook(id);
    Ok(Ok(Applied::Done))
}

/// Records a delivery (see `Command::Delivered`).
pub(crate) fn apply_delivered(store: &Store, notification: u64, webhook: u64, batch: &mut Batch) -> ApplyResult {
    if let Some(mut n) = store.notification(notification)? {
        for (id, done) in n.to.iter_mut() {
            if *id == webhook {
                *done = true;
            }
        }
        batch.put_notification(&n);
    }
    Ok(Ok(Applied::Done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_urls() {
        let n = Notification {
            id: 4,
            kind: "immune.revert".into(),
            title: "immune system reverted 3f2a9c1".into(),
            text: "error_rate 0.41% → 3.9%".into(),
            repo: Some("shop".into()),
            incident: Some(2),
            at: Some(SystemTime::UNIX_EPOCH),
            to: vec![(1, false)],
        };
        let json: serde_json::Value = serde_json::from_str(&n.body(Format::Json)).unwrap();
        assert_eq!(json["kind"], "immune.revert");
        assert_eq!(json["incident"], 2);
        assert_eq!(json["at"], "1970-01-01T00:00:00.000Z");
        let slack: serde_json::Value = serde_json::from_str(&n.body(Format::Slack)).unwrap();
        assert!(slack["text"].as_str().unwrap().starts_with("*immune system reverted"));
        assert!(check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_url("https://hooks.slack.com/x").unwrap_err().contains("only http://"));
        assert!(check_url("http:///x").is_err());
    }
}
