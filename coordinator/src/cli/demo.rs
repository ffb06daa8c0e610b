//! `fifty demo`: Fifty's story, told with real processes on loopback. Each step waits for what a
//! user would see through the API; the command exits 0 only if every step happened.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ci::{short, CommitState};
use crate::deploy::{Outcome, Phase};
use crate::fleet::HostState;
use crate::local::{bin_dir, LocalCluster, Options};
use crate::sample_app::{Load, SampleRepo, Steps};
use crate::views::{ClusterView, StatusView, TokenView};

const BUILD: [&str; 2] = ["build-1", "build-2"];
const PROD: [&str; 6] = ["web-1", "web-2", "web-3", "web-4", "web-5", "web-6"];
const DEADLINE: Duration = Duration::from_secs(60);
/// How long a commit, a release or a rollout step may take.
const WAIT: Duration = Duration::from_secs(120);

struct Timeline {
    start: Instant,
}

impl Timeline {
    fn say(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.start.elapsed().as_secs_f64());
    }
}

/// Runs the story; on failure keeps the directory with every process's log.
pub async fn run() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fifty-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = story(&dir).await;
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
            println!("\nDemo complete: every step happened.");
        }
        Err(_) => eprintln!("\nDemo failed. Logs of every process are in {}/logs/", dir.display()),
    }
    result
}

async fn story(dir: &std::path::Path) -> Result<()> {
    let t = Timeline { start: Instant::now() };
    let options = Options { coordinators: 3, ..Options::default() };
    let mut cluster = LocalCluster::start(dir, &bin_dir()?, options).await?;
    let leader = cluster.wait_leader(DEADLINE).await?;
    t.say(&format!("3 coordinators formed a Raft cluster; {} leads", cluster.coordinators[leader].name));

    for name in BUILD {
        cluster.add_agent(name, "role=build,slots=2").await?;
    }
    let mut ports = Vec::new();
    for name in PROD {
        let port = crate::local::free_port()?;
        ports.push(port);
        cluster.add_agent_with(name, "role=prod,pool=web", &format!("port={port}")).await?;
    }
    t.say("enrolled 2 build hosts and 6 production hosts (each made its own key; the coordinators signed it)");
    let all: Vec<&str> = BUILD.iter().chain(PROD.iter()).copied().collect();
    let hosts = cluster.wait_reporting(&all, DEADLINE).await?;
    t.say("all 8 hosts ready, reporting health to the leader over mutual-TLS QUIC:");
    print!("{}", indent(&super::output::hosts(&hosts)));

    // CI and the commit gate.
    let ci: crate::views::TokenCreated = cluster
        .client()
        .post(
            "/v1/tokens",
            &crate::views::CreateToken {
                role: "ci".into(),
                ttl: None,
                max_uses: None,
                description: "git hooks".into(),
            },
        )
        .await?;
    let repo = SampleRepo::create(dir, &cluster, "shop", &ci.token, None, Steps::Immune).await?;
    t.say("created the shop's git repository with Fifty's pre-receive and post-receive hooks");
    let good = repo.git_head().await;
    pushed(&repo, true).await?;
    let view = cluster.wait_commit(&good, WAIT).await?;
    if view.summary.state != CommitState::Passed {
        bail!("the first commit did not pass:\n{}", super::output::commit(&view));
    }
    t.say(&format!(
        "pushed {}: the post-receive hook queued it; its {} shards ran on {}: green",
        short(&good),
        view.summary.shards,
        view.shard_hosts().join(" and ")
    ));
    print!("{}", indent(&super::output::commit(&view)));
    let release = cluster.wait_release(&good, WAIT).await?;
    t.say(&format!("a build agent packaged it: release {release}, stored on every coordinator, manifest signed"));
    let done = cluster.wait_rollout("shop", release, Phase::Done, WAIT).await?;
    if done.outcome != Some(Outcome::Succeeded) {
        bail!("the first rollout did not succeed:\n{}", super::output::rollout(&done));
    }
    crate::sample_app::wait_serving(&ports, &good[..10], DEADLINE).await?;
    t.say(&format!("rolled out 1 host → 50% → 100%, baking each wave; all 6 web hosts serve {}:", short(&good)));
    print!("{}", indent(&super::output::rollout(&done)));
    let _load = Load::start(&ports, LOAD_PER_HOST);
    t.say(&format!(
        "customers arrive: {LOAD_PER_HOST} requests/s to each web host (the shop fails 2% of them); every agent \
         scrapes its shop's /metrics each second for the immune system"
    ));
    let hook = crate::local::WebhookReceiver::start()?;
    let _: Vec<crate::views::WebhookView> = cluster
        .client()
        .post("/v1/notify/webhooks", &crate::views::AddWebhook { url: hook.url(), format: None })
        .await?;
    t.say(&format!("`fifty webhook add {}`: reverts are announced there", hook.url()));
    for (name, kind, for_) in [("host-down", "host_down", "5s"), ("immune-decision", "immune", "0s")] {
        let spec = crate::alerts::RuleSpec {
            name: name.into(),
            kind: kind.into(),
            for_: Some(for_.into()),
            severity: Some(crate::alerts::Severity::Critical),
            ..Default::default()
        };
        let _: Vec<crate::alerts::RuleView> = cluster.client().post("/v1/alerts/rules", &spec).await?;
    }
    t.say("`fifty alert rule add host-down --kind host_down --for 5s` and `... immune-decision --kind immune`: alerts go there too");

    repo.edit("app/shop.sh", "pear) echo 55", "pear) echo 50")?;
    let red = repo.commit("Cheaper pears").await?;
    pushed(&repo, true).await?;
    let view = cluster.wait_commit(&red, WAIT).await?;
    if view.summary.state != CommitState::Failed {
        bail!("the breaking commit did not fail:\n{}", super::output::commit(&view));
    }
    let gate: crate::views::GateView = cluster.client().get("/v1/repos/shop/gate").await?;
    if gate.open {
        bail!("the gate stayed open after a red build");
    }
    t.say(&format!(
        "pushed {} \"Cheaper pears\": a test fails (retried on the other agent, still red); the gate closed:",
        short(&red)
    ));
    print!("{}", indent(&super::output::commit(&view)));
    print!("{}", indent(&super::output::gate(&gate)));

    repo.write("NOTES.md", "an unrelated change\n")?;
    repo.commit("Unrelated change").await?;
    let refused = pushed(&repo, false).await?;
    t.say("the next ordinary push is refused by the pre-receive hook; the pusher reads:");
    print!("{}", indent(&refused));
    repo.undo_commit().await?;

    repo.edit("app/shop.sh", "pear) echo 50", "pear) echo 55")?;
    let fix = repo.commit("[fix] Pears cost 55 again").await?;
    pushed(&repo, true).await?;
    let view = cluster.wait_commit(&fix, WAIT).await?;
    let gate: crate::views::GateView = cluster.client().get("/v1/repos/shop/gate").await?;
    if view.summary.state != CommitState::Passed || !gate.open {
        bail!("the fix did not pass or the gate did not reopen:\n{}", super::output::commit(&view));
    }
    t.say(&format!(
        "pushed {} \"[fix] Pears cost 55 again\": the fix marker let it through; green; the gate reopened",
        short(&fix)
    ));
    let commits: Vec<crate::views::CommitSummary> = cluster.client().get("/v1/commits?repo=shop").await?;
    print!("{}", indent(&super::output::commits(&commits)));
    let release = cluster.wait_release(&fix, WAIT).await?;
    let done = cluster.wait_rollout("shop", release, Phase::Done, WAIT).await?;
    if done.outcome != Some(Outcome::Succeeded) {
        bail!("the fix's rollout did not succeed:\n{}", super::output::rollout(&done));
    }
    crate::sample_app::wait_serving(&ports, &fix[..10], DEADLINE).await?;
    t.say(&format!(
        "the fix rolled out as release {release}; the immune system compared every wave with the hosts still on \
         the old release and passed it; all 6 web hosts serve {}:",
        short(&fix)
    ));
    print!("{}", indent(&super::output::rollout(&done)));
    let fix_release = release;
    immune_story(&t, &cluster, &repo, &ports, &hook, &fix, fix_release).await?;

    cluster.kill_agent("web-3").await?;
    t.say("killed the agent on web-3 (SIGKILL)");
    cluster.wait_hosts(&["web-3"], HostState::Down, DEADLINE).await?;
    t.say("web-3 marked down after 5 s without a heartbeat");
    let fired = wait_alert(&cluster, "host-down", "web-3", false).await?;
    crate::local::wait_for("the host-down webhook", DEADLINE, || async {
        Ok(hook.received().iter().any(|b| b.contains("host-down firing: web-3")).then_some(()))
    })
    .await?;
    t.say(&format!(
        "alert {} fired, 5 s after web-3's last heartbeat: host-down web-3 ({}); the webhook got it",
        fired.id, fired.summary
    ));
    cluster.start_agent("web-3")?;
    cluster.wait_reporting(&all, DEADLINE).await?;
    wait_alert(&cluster, "host-down", "web-3", true).await?;
    t.say("restarted web-3: it reconnected and is ready again; its alert resolved. `fifty alerts`:");
    let alerts: crate::alerts::ops::AlertsView = cluster.client().get("/v1/alerts").await?;
    print!("{}", indent(&super::alert::alerts(&alerts)));

    repo.write("NOTES.md", "pushed just before the leader dies\n")?;
    let last = repo.commit("Notes").await?;
    pushed(&repo, true).await?;
    let release = cluster.wait_release(&last, WAIT).await?;
    let baking = cluster.wait_rollout("shop", release, Phase::Baking, WAIT).await?;
    let tokens_before: Vec<TokenView> = cluster.client().get("/v1/tokens").await?;
    let old = cluster.wait_leader(DEADLINE).await?;
    let killed_at = Instant::now();
    cluster.kill_coordinator(old).await?;
    t.say(&format!(
        "pushed {} (release {release}); while its canary baked, killed the leader, {} (SIGKILL)",
        short(&last),
        cluster.coordinators[old].name
    ));
    let new = cluster.wait_leader(DEADLINE).await?;
    t.say(&format!(
        "{} leads now ({:.1} s after the kill); writes and reads go on through any coordinator",
        cluster.coordinators[new].name,
        killed_at.elapsed().as_secs_f64()
    ));
    let tokens_after: Vec<TokenView> = cluster.client().get("/v1/tokens").await?;
    if tokens_after != tokens_before {
        bail!("tokens changed across the failover: {} before, {} after", tokens_before.len(), tokens_after.len());
    }
    cluster.join_token(1).await.context("write through the new leader")?;
    let hosts = cluster.wait_reporting(&all, DEADLINE).await?;
    if hosts.len() != all.len() {
        bail!("{} hosts after the failover, expected {}", hosts.len(), all.len());
    }
    t.say("all 8 hosts re-attached to the new leader by themselves; every token and host kept");
    let view = cluster.wait_commit(&last, WAIT).await?;
    if view.summary.state != CommitState::Passed {
        bail!("the commit pushed before the failover did not pass:\n{}", super::output::commit(&view));
    }
    let done = cluster.wait_rollout("shop", release, Phase::Done, WAIT).await?;
    if done.outcome != Some(Outcome::Succeeded) || done.id != baking.id {
        bail!("the rollout did not carry on across the failover:\n{}", super::output::rollout(&done));
    }
    crate::sample_app::wait_serving(&ports, &last[..10], DEADLINE).await?;
    t.say(&format!(
        "rollout {} carried on under the new leader, no wave restarted: all 6 web hosts serve {}",
        done.id,
        short(&last)
    ));
    let releases: Vec<crate::views::ReleaseView> = cluster.client().get("/v1/releases").await?;
    print!("{}", indent(&super::output::releases(&releases)));

    cluster.start_coordinator(old).await?;
    let caught_up = crate::local::wait_for("the old leader to catch up", DEADLINE, || async {
        let views = cluster.views().await;
        let back = views.iter().find(|(i, _)| *i == old).map(|(_, v)| v.applied_index);
        let leader = views.iter().map(|(_, v)| v.commit_index).max();
        Ok(match (back, leader) {
            (Some(a), Some(c)) if a >= c => Some(a),
            _ => None,
        })
    })
    .await?;
    t.say(&format!(
        "restarted {} from its own disk: it rejoined as a follower, applied index {caught_up}",
        cluster.coordinators[old].name
    ));

    let members: ClusterView = cluster.client().get("/v1/cluster/members").await?;
    print!("{}", indent(&super::output::cluster(&members)));
    let status: StatusView = cluster.client().get("/v1/status").await.context("read status")?;
    print!("{}", indent(&super::output::status(&status)));

    super::demo_experiment::story(&cluster, &PROD, &ports, &|what: &str| t.say(what))
        .await
        .context("A/B experiment")?;
    Ok(())
}

/// Requests per second each web host gets while releases roll out.
const LOAD_PER_HOST: u32 = 40;

/// The immune system's part of the story: a bad release is caught on its canary and reverted
/// everywhere, in git too; the gate closes until an admin opens it.
async fn immune_story(
    t: &Timeline,
    cluster: &LocalCluster,
    repo: &SampleRepo,
    ports: &[u16],
    hook: &crate::local::WebhookReceiver,
    good: &str,
    good_release: u64,
) -> Result<()> {
    repo.write("release/ERROR_RATE", "0.25\n")?;
    let bad = repo.commit("Faster checkout").await?;
    pushed(repo, true).await?;
    let view = cluster.wait_commit(&bad, WAIT).await?;
    if view.summary.state != CommitState::Passed {
        bail!("the bad commit's tests did not pass:\n{}", super::output::commit(&view));
    }
    let release = cluster.wait_release(&bad, WAIT).await?;
    t.say(&format!(
        "pushed {} \"Faster checkout\": its tests pass, but the shop now fails 25% of requests; release {release}",
        short(&bad)
    ));
    let incident: crate::views::IncidentView = crate::local::wait_for("the immune system's incident", WAIT, || async {
        let list: Vec<crate::views::IncidentView> = cluster.client().get("/v1/incidents").await?;
        Ok(list.into_iter().find(|i| i.release == release))
    })
    .await?;
    let canary_at = incident
        .timeline
        .iter()
        .find(|(_, e)| e.contains(": wave 1 healthy"))
        .and_then(|(at, _)| crate::views::parse_rfc3339(at));
    let decided_at = crate::views::parse_rfc3339(&incident.opened_at);
    let detect = match (canary_at, decided_at) {
        (Some(a), Some(b)) => b.duration_since(a).map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_default(),
        _ => "?".into(),
    };
    t.say(&format!("the canary's bake caught it {detect} after it began: {}", incident.reason));
    crate::sample_app::wait_serving(ports, &good[..10], DEADLINE).await?;
    let incident: crate::views::IncidentView = crate::local::wait_for("the hosts back", WAIT, || async {
        let i: crate::views::IncidentView = cluster.client().get(&format!("/v1/incidents/{}", incident.id)).await?;
        Ok(i.timeline.iter().any(|(_, e)| e.starts_with("every host")).then_some(i))
    })
    .await?;
    let back_at = incident
        .timeline
        .iter()
        .find(|(_, e)| e.starts_with("every host"))
        .and_then(|(at, _)| crate::views::parse_rfc3339(at));
    let back = match (decided_at, back_at) {
        (Some(a), Some(b)) => b.duration_since(a).map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_default(),
        _ => "?".into(),
    };
    t.say(&format!(
        "every host it touched went back to release {good_release} at once ({back} from the decision to the last \
         host back); all 6 web hosts serve {}",
        short(good)
    ));
    let gate: crate::views::GateView = cluster.client().get("/v1/repos/shop/gate").await?;
    if gate.open {
        bail!("the gate is open after the revert");
    }
    t.say("the gate closed:");
    print!("{}", indent(&super::output::gate(&gate)));
    let incident: crate::views::IncidentView = crate::local::wait_for("the revert commit", WAIT, || async {
        let i: crate::views::IncidentView = cluster.client().get(&format!("/v1/incidents/{}", incident.id)).await?;
        Ok((i.revert_commit.is_some() || i.revert_error.is_some()).then_some(i))
    })
    .await?;
    let Some(revert) = incident.revert_commit.clone() else {
        bail!("the commit was not reverted in git: {}", incident.revert_error.unwrap_or_default());
    };
    let log = crate::sample_app::git(&repo.bare, &["log", "-1", "--format=%h %s%n%b", "main"]).await?;
    t.say(&format!("a build agent reverted {} in git; the branch's head is now:", short(&bad)));
    print!("{}", indent(&String::from_utf8_lossy(&log.stdout)));
    let got =
        crate::local::wait_for("the webhook", DEADLINE, || async { Ok(hook.received().into_iter().next()) }).await?;
    t.say("the webhook received:");
    print!("{}", indent(&got));
    t.say("the incident, with its timeline and evidence (`fifty incident show`):");
    print!("{}", indent(&super::output::incident(&incident)));
    let alert = wait_alert(cluster, "immune-decision", &format!("incident {}", incident.id), false).await?;
    let needle = format!("immune-decision firing: incident {}", incident.id);
    crate::local::wait_for("the immune-decision webhook", DEADLINE, || async {
        Ok(hook.received().iter().any(|b| b.contains(&needle)).then_some(()))
    })
    .await?;
    t.say(&format!(
        "the immune-decision rule raised alert {} for incident {} (`fifty alerts`; the webhook got it too)",
        alert.id, incident.id
    ));

    crate::sample_app::git(&repo.work, &["pull", "-q", "--ff-only", "origin", "main"]).await?;
    repo.write("NOTES.md", "a change while the gate is closed\n")?;
    repo.commit("Unrelated change").await?;
    let refused = pushed(repo, false).await?;
    t.say("the next push is refused until someone has looked:");
    print!("{}", indent(&refused));
    let reverted = cluster.wait_commit(&revert, WAIT).await?;
    t.say(&format!(
        "the revert commit {} went through CI like any commit: {:?}",
        short(&revert),
        reverted.summary.state
    ));
    let _: crate::views::GateView = cluster
        .client()
        .post("/v1/repos/shop/gate/open", &crate::views::GateChange { branch: None, reason: None })
        .await?;
    pushed(repo, true).await?;
    t.say(&format!("an admin ran `fifty gate open shop` (incident {} records it); the push goes in", incident.id));
    Ok(())
}

/// Waits for the alert of `rule` on `subject` to fire (or, with `resolved`, to resolve).
async fn wait_alert(
    cluster: &LocalCluster,
    rule: &str,
    subject: &str,
    resolved: bool,
) -> Result<crate::alerts::AlertView> {
    crate::local::wait_for(&format!("alert {rule} {subject}"), DEADLINE, || async {
        let v: crate::alerts::ops::AlertsView = cluster.client().get("/v1/alerts").await?;
        Ok(v.recent
            .into_iter()
            .find(|a| a.rule_name == rule && a.subject == subject && (a.resolved_at.is_some() == resolved)))
    })
    .await
}

/// Pushes the shop's working clone; `Ok` with what the hooks said when the push went as
/// `expect_ok` says.
async fn pushed(repo: &SampleRepo, expect_ok: bool) -> Result<String> {
    let out = repo.push().await?;
    let said: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("remote:"))
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    if out.status.success() != expect_ok {
        bail!("git push {}: {said}", if expect_ok { "was refused" } else { "got through a closed gate" });
    }
    Ok(said)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("           {l}\n")).collect()
}
