//! Incidents (Five Whys): every revert by the immune system opens one, with the timeline of the
//! change that caused it and the evidence of the decision. People then record the whys in order
//! and the corrective actions, and close it; `fifty incident show --markdown` exports the
//! postmortem. Replicated records; the state machine appends to the timeline as the revert goes
//! on (hosts back, revert commit pushed, gate opened).

use std::time::SystemTime;

use bincode::{Decode, Encode};
use fifty_shared::ids::RepoName;
use serde::{Deserialize, Serialize};

use crate::state::{Applied, ApplyResult, Rejection};
use crate::store::{Batch, Store};

/// One incident.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct IncidentRecord {
    /// Its number, from 1.
    pub id: u64,
    /// The repository (an incident an alert opened may be about no repository).
    pub repo: Option<RepoName>,
    /// The branch whose gate it closed.
    pub branch: String,
    /// One line.
    pub title: String,
    /// When it was opened.
    pub opened_at: SystemTime,
    /// The commit whose release was reverted.
    pub sha: String,
    /// That commit's subject.
    pub subject: String,
    /// The bad release.
    pub release: u64,
    /// The release the hosts went back to.
    pub previous: u64,
    /// The rollout that was reverted.
    pub rollout: u64,
    /// Why: the failing metrics' verdicts.
    pub reason: String,
    /// Every metric's verdict and evidence at the decision.
    pub evidence: Vec<String>,
    /// The build job that reverts the commit in git.
    pub revert_job: Option<u64>,
    /// The revert commit, or why there is none.
    pub revert: Option<Result<String, String>>,
    /// What happened, in order.
    pub timeline: Vec<(SystemTime, String)>,
    /// The whys, in order.
    pub whys: Vec<String>,
    /// Corrective actions.
    pub actions: Vec<Action>,
    /// When and by whom it was closed.
    pub closed: Option<(SystemTime, String)>,
    /// The critical alert that opened it, if an alert did (then the commit fields are empty).
    pub alert: Option<u64>,
}

impl IncidentRecord {
    /// An incident a critical alert opens: what fired, on what, when.
    pub fn of_alert(alert: u64, title: String, reason: String, at: SystemTime) -> Self {
        IncidentRecord {
            id: 0,
            repo: None,
            branch: String::new(),
            title,
            opened_at: at,
            sha: String::new(),
            subject: String::new(),
            release: 0,
            previous: 0,
            rollout: 0,
            reason,
            evidence: Vec::new(),
            revert_job: None,
            revert: None,
            timeline: vec![(at, format!("alert {alert} fired; incident opened"))],
            whys: Vec::new(),
            actions: Vec::new(),
            closed: None,
            alert: Some(alert),
        }
    }
}

/// A corrective action.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Action {
    /// What will be done.
    pub text: String,
    /// Who owns it.
    pub owner: String,
    /// Whether it is done.
    pub done: bool,
}

/// A change people make to an incident.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The next why.
    Why {
        /// The answer.
        text: String,
    },
    /// A corrective action.
    Action {
        /// What.
        text: String,
        /// Who.
        owner: String,
    },
    /// Action `n` (from 1) is done.
    ActionDone {
        /// Which.
        n: usize,
    },
    /// Close the incident.
    Close,
}

/// Most whys, actions and timeline lines one incident keeps.
pub const MAX_ITEMS: usize = 100;

impl IncidentRecord {
    /// Adds a line to the timeline.
    pub fn say(&mut self, at: SystemTime, what: impl Into<String>) {
        if self.timeline.len() < MAX_ITEMS * 2 {
            self.timeline.push((at, what.into()));
        }
    }

    /// Applies a person's change, or says why it cannot be made.
    pub fn change(&mut self, change: &Change, by: &str, at: SystemTime) -> Result<(), String> {
        if self.closed.is_some() {
            return Err(format!("incident {} is closed", self.id));
        }
        let text_ok = |t: &str| {
            if t.trim().is_empty() {
                Err("the text is empty".to_string())
            } else if t.len() > 2000 {
                Err("the text is longer than 2000 bytes".to_string())
            } else {
                Ok(())
            }
        };
        match change {
            Change::Why { text } => {
                text_ok(text)?;
                if self.whys.len() >= MAX_ITEMS {
                    return Err(format!("an incident keeps at most {MAX_ITEMS} whys"));
                }
                self.whys.push(text.trim().to_string());
                self.say(at, format!("why {} recorded by {by}", self.whys.len()));
            }
            Change::Action { text, owner } => {
                text_ok(text)?;
                text_ok(owner).map_err(|e| format!("owner: {e}"))?;
                if self.actions.len() >= MAX_ITEMS {
                    return Err(format!("an incident keeps at most {MAX_ITEMS} actions"));
                }
                self.actions.push(Action {
                    text: text.trim().to_string(),
                    owner: owner.trim().to_string(),
                    done: false,
                });
                self.say(at, format!("corrective action {} for {owner} recorded by {by}", self.actions.len()));
            }
            Change::ActionDone { n } => {
                let count = self.actions.len();
                let Some(action) = n.checked_sub(1).and_then(|i| self.actions.get_mut(i)) else {
                    return Err(format!("there is no action {n} (the incident has {count})"));
                };
                action.done = true;
                self.say(at, format!("corrective action {n} done ({by})"));
            }
            Change::Close => {
                if self.whys.is_empty() || self.actions.is_empty() {
                    return Err(format!(
                        "incident {} needs at least one why and one corrective action before it closes (it has {} and {}): \
                         `fifty incident why {} \"...\"`, `fifty incident action {} \"...\" --owner NAME`",
                        self.id,
                        self.whys.len(),
                        self.actions.len(),
                        self.id,
                        self.id
                    ));
                }
                self.say(at, format!("closed by {by}"));
                self.closed = Some((at, by.to_string()));
            }
        }
        Ok(())
    }

    /// The postmortem, as Markdown.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut m = String::new();
        let _ = writeln!(m, "# Incident {}: {}\n", self.id, self.title);
        let state = match &self.closed {
            Some((at, by)) => format!("closed {} by {by}", crate::views::rfc3339(*at)),
            None => "open".into(),
        };
        let _ = writeln!(m, "- **Status:** {state}");
        let _ = writeln!(m, "- **Opened:** {}", crate::views::rfc3339(self.opened_at));
        if let Some(alert) = self.alert {
            let _ = writeln!(m, "- **Opened by:** alert {alert}\n");
            let _ = writeln!(m, "## What fired\n\n{}\n", self.reason);
        } else {
            let repo = self.repo.as_ref().map(|r| r.to_string()).unwrap_or_default();
            let _ = writeln!(m, "- **Repository:** {repo} (branch {})", self.branch);
            let _ = writeln!(m, "- **Commit:** `{}` {}", &self.sha[..self.sha.len().min(10)], self.subject);
            let _ = writeln!(m, "- **Release:** {} (hosts went back to {})", self.release, self.previous);
            let revert = match &self.revert {
                Some(Ok(sha)) => format!("`{}` pushed", &sha[..sha.len().min(10)]),
                Some(Err(why)) => format!("not made: {why}"),
                None => "pending".into(),
            };
            let _ = writeln!(m, "- **Revert commit:** {revert}\n");
            let _ = writeln!(m, "## Why it was reverted\n\n{}\n", self.reason);
        }
        let _ = writeln!(m, "## Evidence\n");
        for e in &self.evidence {
            let _ = writeln!(m, "- {e}");
        }
        let _ = writeln!(m, "\n## Timeline\n");
        for (at, what) in &self.timeline {
            let _ = writeln!(m, "- {} {what}", crate::views::rfc3339(*at));
        }
        let _ = writeln!(m, "\n## Five whys\n");
        if self.whys.is_empty() {
            let _ = writeln!(m, "_none yet_");
        }
        for (i, w) in self.whys.iter().enumerate() {
            let _ = writeln!(m, "{}. {w}", i + 1);
        }
        let _ = writeln!(m, "\n## Corrective actions\n");
        if self.actions.is_empty() {
            let _ = writeln!(m, "_none yet_");
        }
        for a in &self.actions {
            let _ = writeln!(m, "- [{}] {} ({})", if a.done { "x" } else { " " }, a.text, a.owner);
        }
        m
    }
}

impl crate::coordinator::Coordinator {
    /// Every incident, newest first.
    pub fn incidents(&self) -> Result<Vec<crate::views::IncidentView>, crate::coordinator::OpError> {
        Ok(self.consensus.store().incidents()?.iter().rev().map(Into::into).collect())
    }

    /// One incident.
    pub fn incident(&self, id: u64) -> Result<crate::views::IncidentView, crate::coordinator::OpError> {
        match self.consensus.store().incident(id)? {
            Some(i) => Ok((&i).into()),
            None => Err(crate::coordinator::OpError::NotFound(format!("no incident {id}; see `fifty incidents`"))),
        }
    }

    /// A person's change to an incident.
    pub async fn change_incident(
        &self,
        id: u64,
        change: Change,
        by: &str,
    ) -> Result<crate::views::IncidentView, crate::coordinator::OpError> {
        let cmd = crate::state::Command::ChangeIncident { id, change, by: by.to_string(), at: SystemTime::now() };
        self.consensus.propose(cmd).await??;
        self.incident(id)
    }
}

/// A person's change to an incident (see `Command::ChangeIncident`).
pub(crate) fn apply_change(
    store: &Store,
    id: u64,
    change: &Change,
    by: &str,
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    let Some(mut incident) = store.incident(id)? else {
        return Ok(Err(Rejection::UnknownIncident(id)));
    };
    if let Err(why) = incident.change(change, by, at) {
        return Ok(Err(Rejection::IncidentChange(why)));
    }
    batch.put_incident(&incident);
    Ok(Ok(Applied::Done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident() -> IncidentRecord {
        IncidentRecord {
            id: 3,
            repo: Some(RepoName::new("shop").unwrap()),
            branch: "main".into(),
            title: "immune system reverted 3f2a9c1".into(),
            opened_at: SystemTime::UNIX_EPOCH,
            sha: "3f2a9c1".repeat(5) + "abcde",
            subject: "Cheaper pears".into(),
            release: 7,
            previous: 6,
            rollout: 4,
            reason: "error_rate 0.41% → 3.9% (+850%, p=2.1e-05)".into(),
            evidence: vec!["FAIL: error_rate ...".into()],
            revert_job: Some(9),
            revert: None,
            timeline: vec![],
            whys: vec![],
            actions: vec![],
            closed: None,
            alert: None,
        }
    }

    #[test]
    fn an_incident_closes_only_with_a_why_and_an_action() {
        let mut i = incident();
        let at = SystemTime::UNIX_EPOCH;
        let err = i.change(&Change::Close, "admin", at).unwrap_err();
        assert!(err.contains("at least one why and one corrective action"), "{err}");
        i.change(&Change::Why { text: "pears were priced by a new rule".into() }, "admin", at).unwrap();
        assert!(i.change(&Change::Close, "admin", at).is_err());
        assert!(i.change(&Change::Why { text: "  ".into() }, "admin", at).unwrap_err().contains("empty"));
        i.change(&Change::Action { text: "test prices at the edges".into(), owner: "ana".into() }, "admin", at)
            .unwrap();
        assert!(i.change(&Change::ActionDone { n: 2 }, "ana", at).unwrap_err().contains("no action 2"));
        i.change(&Change::ActionDone { n: 1 }, "ana", at).unwrap();
        i.change(&Change::Close, "admin", at).unwrap();
        assert!(i.change(&Change::Why { text: "late".into() }, "admin", at).unwrap_err().contains("closed"));
        let md = i.markdown();
        assert!(md.contains("# Incident 3") && md.contains("1. pears were priced") && md.contains("- [x] test prices"));
        assert!(md.contains("closed") && md.contains("error_rate 0.41%"), "{md}");
    }
}
