//! The coordinators the agent dials. `agent.toml` lists those known at join; the cluster tells
//! the agent every coordinator's address on each link, and again when the members change
//! (`CoordinatorMsg::Coordinators`). The learned list is kept in `<data_dir>/coordinators`
//! (one address a line, 0600), so an agent restarted after the cluster moved still finds it.
//! The learned addresses come first; configured ones the cluster did not name stay as a
//! fallback (an operator's address may be a name the member table does not use).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fifty_shared::wire::MAX_COORDINATORS;
use tracing::{info, warn};

/// The list, shared by the link's reconnect loop and its sessions.
#[derive(Clone)]
pub struct Coordinators {
    path: PathBuf,
    configured: Vec<String>,
    learned: Arc<Mutex<Vec<String>>>,
}

/// The file the learned list is kept in.
pub fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("coordinators")
}

/// Whether `addr` looks like `HOST:PORT` (what a member record holds), bounded in size.
fn plausible(addr: &str) -> bool {
    !addr.is_empty()
        && addr.len() <= 255
        && !addr.chars().any(char::is_whitespace)
        && addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl Coordinators {
    /// The configured list, and the learned one from `data_dir` if there is one (a damaged file
    /// is ignored with a warning: the configured list still works).
    pub fn load(data_dir: &Path, configured: &[String]) -> Self {
        let path = file(data_dir);
        let learned = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let list: Vec<String> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                if list.iter().all(|a| plausible(a)) && list.len() <= MAX_COORDINATORS {
                    list
                } else {
                    warn!(file = %path.display(), "ignoring the learned coordinators: not one HOST:PORT a line");
                    Vec::new()
                }
            }
            Err(_) => Vec::new(),
        };
        Self { path, configured: configured.to_vec(), learned: Arc::new(Mutex::new(learned)) }
    }

    /// Whom to dial, in order: the learned addresses, then configured ones not among them.
    pub fn list(&self) -> Vec<String> {
        let mut out = self.learned.lock().expect("coordinators lock").clone();
        for c in &self.configured {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }

    /// The cluster named its coordinators: keep them (and write them down) if they are new and
    /// plausible. Returns whether the list changed.
    pub fn learn(&self, addrs: Vec<String>) -> bool {
        if addrs.is_empty() || addrs.len() > MAX_COORDINATORS || !addrs.iter().all(|a| plausible(a)) {
            warn!(?addrs, "the coordinator sent an unusable list of coordinators; keeping the one known");
            return false;
        }
        let mut learned = self.learned.lock().expect("coordinators lock");
        if *learned == addrs {
            return false;
        }
        let text: String = addrs.iter().map(|a| format!("{a}\n")).collect();
        if let Err(e) = fifty_shared::config::write_private(&self.path, &text) {
            warn!(file = %self.path.display(), error = %format!("{e:#}"), "could not keep the coordinators' addresses");
        }
        info!(coordinators = ?addrs, "the cluster's coordinators");
        *learned = addrs;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_coordinators_come_first_survive_a_restart_and_bad_lists_are_refused() {
        let dir = std::env::temp_dir().join(format!("fifty-members-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let configured = vec!["10.0.0.1:7071".to_string(), "c2.example:7071".to_string()];
        let c = Coordinators::load(&dir, &configured);
        assert_eq!(c.list(), configured);
        // The cluster moved: one coordinator replaced by another at a new address.
        assert!(c.learn(vec!["10.0.0.1:7071".into(), "10.0.0.9:7071".into()]));
        assert!(!c.learn(vec!["10.0.0.1:7071".into(), "10.0.0.9:7071".into()]), "no change the second time");
        assert_eq!(c.list(), ["10.0.0.1:7071", "10.0.0.9:7071", "c2.example:7071"]);
        // Nonsense is not taken.
        assert!(!c.learn(vec!["not an address".into()]));
        assert!(!c.learn(Vec::new()));
        assert!(!c.learn((0..17).map(|i| format!("10.0.0.{i}:7071")).collect()));
        // A restarted agent starts from what it learned.
        let again = Coordinators::load(&dir, &configured);
        assert_eq!(again.list(), ["10.0.0.1:7071", "10.0.0.9:7071", "c2.example:7071"]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(file(&dir)).unwrap().permissions().mode() & 0o777, 0o600);
        // A damaged file is ignored: the configured list still works.
        std::fs::write(file(&dir), "garbage here\n").unwrap();
        assert_eq!(Coordinators::load(&dir, &configured).list(), configured);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
