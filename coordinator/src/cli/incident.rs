//! `fifty incidents`, `fifty incident show|why|action|close`, `fifty webhook add|list|remove`.

use anyhow::Result;
use clap::Subcommand;

use super::output;
use crate::client::{Client, ClientOpts};
use crate::incidents::Change;
use crate::views::{AddWebhook, IncidentView, WebhookView};

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// The timeline, the evidence, the whys and the corrective actions.
    Show {
        /// The incident's number.
        id: u64,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        /// Print the postmortem as Markdown.
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
    },
    /// Record the next why (they are kept in order: why 1, why 2, ...).
    Why {
        /// The incident's number.
        id: u64,
        /// The answer.
        text: String,
    },
    /// Record a corrective action, or mark one done (`--done N`).
    Action {
        /// The incident's number.
        id: u64,
        /// What will be done.
        #[arg(required_unless_present = "done")]
        text: Option<String>,
        /// Who owns it.
        #[arg(long, required_unless_present = "done")]
        owner: Option<String>,
        /// Mark action N (from 1) done instead.
        #[arg(long, conflicts_with_all = ["text", "owner"])]
        done: Option<usize>,
    },
    /// Close the incident (it needs at least one why and one corrective action).
    Close {
        /// The incident's number.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Notify this URL of every revert (and later alerts): POST, JSON.
    Add {
        /// An http:// URL.
        url: String,
        /// `json` (Fifty's fields) or `slack` (`{"text": ...}`, for Slack-compatible chats).
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// The webhooks.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop notifying a webhook.
    Remove {
        /// Its id, from `fifty webhook list`.
        id: u64,
    },
}

/// `fifty incidents`.
pub async fn list(opts: &ClientOpts, json: bool) -> Result<()> {
    let list: Vec<IncidentView> = Client::from_opts(opts)?.get("/v1/incidents").await?;
    output::print(json, &list, |l| output::incidents(l))
}

/// `fifty incident ...`.
pub async fn incident(opts: &ClientOpts, command: IncidentCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    let change = |id: u64, change: Change| {
        let client = client.clone();
        async move {
            let view: IncidentView = client.post(&format!("/v1/incidents/{id}"), &change).await?;
            print!("{}", output::incident(&view));
            anyhow::Ok(())
        }
    };
    match command {
        IncidentCommand::Show { id, json, markdown } => {
            let view: IncidentView = client.get(&format!("/v1/incidents/{id}")).await?;
            if markdown {
                print!("{}", view.markdown);
                return Ok(());
            }
            output::print(json, &view, output::incident)
        }
        IncidentCommand::Why { id, text } => change(id, Change::Why { text }).await,
        IncidentCommand::Action { id, done: Some(n), .. } => change(id, Change::ActionDone { n }).await,
        IncidentCommand::Action { id, text, owner, done: None } => {
            change(id, Change::Action { text: text.unwrap_or_default(), owner: owner.unwrap_or_default() }).await
        }
        IncidentCommand::Close { id } => change(id, Change::Close).await,
    }
}

/// `fifty webhook ...`.
pub async fn webhook(opts: &ClientOpts, command: WebhookCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    match command {
        WebhookCommand::Add { url, format } => {
            let format = match format.as_str() {
                "json" => crate::notify::Format::Json,
                "slack" => crate::notify::Format::Slack,
                other => anyhow::bail!("--format {other:?}: use json or slack"),
            };
            let list: Vec<WebhookView> =
                client.post("/v1/notify/webhooks", &AddWebhook { url, format: Some(format) }).await?;
            print!("{}", output::webhooks(&list));
            Ok(())
        }
        WebhookCommand::List { json } => {
            let list: Vec<WebhookView> = client.get("/v1/notify/webhooks").await?;
            output::print(json, &list, |l| output::webhooks(l))
        }
        WebhookCommand::Remove { id } => {
            let list: Vec<WebhookView> = client.delete(&format!("/v1/notify/webhooks/{id}")).await?;
            print!("{}", output::webhooks(&list));
            Ok(())
        }
    }
}
