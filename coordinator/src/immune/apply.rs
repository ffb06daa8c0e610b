//! How the state machine applies the immune system's commands: its revert (`ImmuneRevert`), one
//! entry that turns the rollout back, closes the gate, queues the git revert, opens the incident
//! and notifies; and its evidence (`ImmuneEvidence`), the sequential tests of the wave baking now.
//! Free functions over the store, called from the dispatch in `state::Machine::apply`; the
//! statistics that decide a revert are elsewhere in this module and never touch the store.

use std::time::SystemTime;

use fifty_shared::ids::HostName;
use fifty_shared::wire::JobKind;

use crate::ci::JobState;
use crate::deploy::apply::record_rollout;
use crate::gate::{Cause, Closure};
use crate::state::{Applied, ApplyResult, GateRecord, Rejection};
use crate::store::{Batch, Store};

/// The immune system's evidence (see `Command::ImmuneEvidence`): kept for the wave it names only
/// while the rollout still bakes that wave (a record that arrives after the wave moved on is
/// refused, so a new leader never continues a test of another wave), and only within its bounds.
pub(crate) fn immune_evidence(
    store: &Store,
    evidence: &super::evidence::WaveEvidence,
    batch: &mut Batch,
) -> ApplyResult {
    let Some(rollout) = store.rollout(evidence.rollout)? else {
        return Ok(Err(Rejection::RolloutConflict(evidence.rollout)));
    };
    let baking = rollout.phase == crate::deploy::Phase::Baking && !rollout.finished();
    if !baking || rollout.wave != evidence.wave {
        return Ok(Err(Rejection::RolloutConflict(evidence.rollout)));
    }
    if let Err(why) = evidence.check() {
        return Ok(Err(Rejection::BadEvidence(format!("rollout {}: {why}", evidence.rollout))));
    }
    batch.put_evidence(&rollout.repo, evidence);
    Ok(Ok(Applied::Done))
}

/// Folds a judged wave's spread samples into its repository's learned spreads (see
/// `Command::LearnSpread`): refused when a sample could not come from a judge or there are more
/// than a record keeps; a wave already folded in is accepted and changes nothing (the leader
/// may propose it again before its step commits, and so may a new leader).
pub(crate) fn learn_spread(
    store: &Store,
    repo: &fifty_shared::ids::RepoName,
    rollout: u64,
    wave: u64,
    samples: &[super::spread::SpreadSample],
    batch: &mut Batch,
) -> ApplyResult {
    if samples.len() > super::spread::MAX_METRICS {
        return Ok(Err(Rejection::BadEvidence(format!(
            "rollout {rollout}: {} spread samples; the limit is {}",
            samples.len(),
            super::spread::MAX_METRICS
        ))));
    }
    for s in samples {
        if let Err(why) = s.check() {
            return Ok(Err(Rejection::BadEvidence(format!("rollout {rollout}: spread sample: {why}"))));
        }
    }
    let mut learned = store.spread(repo)?;
    if learned.fold(rollout, wave, samples) {
        batch.put_spread(repo, &learned);
    }
    Ok(Ok(Applied::Done))
}

/// The immune system's revert (see `Command::ImmuneRevert`).
pub(crate) fn immune_revert(
    store: &Store,
    rollout: &crate::deploy::Rollout,
    targets: &[(HostName, u64)],
    incident: &crate::incidents::IncidentRecord,
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    let stored = store.rollout(rollout.id)?;
    if stored.as_ref().map(|r| r.version + 1) != Some(rollout.version) {
        return Ok(Err(Rejection::RolloutConflict(rollout.id)));
    }
    let mut target = store.target(&rollout.repo)?;
    // The bad release must not be started again by itself.
    if target.queued == Some(rollout.release) {
        target.queued = None;
    }
    record_rollout(rollout, targets, &mut target, at, batch);
    let mut counters = store.counters()?;
    counters.last_incident += 1;
    counters.next_job += 1;
    counters.last_notification += 1;
    let mut incident = incident.clone();
    incident.id = counters.last_incident;
    let Some(repo) = incident.repo.clone() else {
        return Ok(Err(Rejection::IncidentChange("a revert's incident names its repository".into())));
    };
    let short = crate::ci::short(&incident.sha).to_string();
    // 1. every touched host goes back: the rollout's targets, above. 2. the gate closes.
    let reason = format!("immune system reverted {short}: {}", incident.reason);
    let gate = store.gate(&repo, &incident.branch)?;
    batch.put_gate(&GateRecord {
        repo: repo.clone(),
        branch: incident.branch.clone(),
        closed: Some(Closure {
            reason: reason.clone(),
            cause: Cause::Immune { sha: incident.sha.clone(), incident: incident.id },
            since: at,
        }),
        changed_at: at,
        changed_by: "fifty immune system".into(),
        last_finished_seq: gate.map_or(0, |g| g.last_finished_seq),
    });
    incident.say(at, format!("gate of {} closed: {reason}", incident.branch));
    // 3. a build agent reverts the commit in git. The job names the commit by its own
    // sequence number (0: the commit is not known here; seqs start at 1).
    let commit_seq = store.commit_by_sha(&repo, &incident.sha)?.map_or(0, |c| c.seq);
    let job = crate::ci::JobRecord {
        id: counters.next_job,
        repo: repo.clone(),
        sha: incident.sha.clone(),
        commit_seq,
        kind: JobKind::Revert {
            revert: incident.sha.clone(),
            branch: incident.branch.clone(),
            reason: incident.reason.clone(),
        },
        state: JobState::Queued,
        max_failures: 2,
        avoid: Vec::new(),
        attempts: Vec::new(),
        queued_at: at,
    };
    incident.revert_job = Some(job.id);
    incident.say(at, format!("revert of {short} on {} queued for a build agent (job {})", incident.branch, job.id));
    batch.put_job(&job);
    // 4. the incident. 5. the notification.
    let hooks = store.webhooks()?;
    incident.say(at, format!("incident {} opened; {} webhooks notified", incident.id, hooks.len()));
    let notification = crate::notify::Notification {
        id: counters.last_notification,
        kind: "immune.revert".into(),
        title: format!("{}: {}", repo, reason),
        text: format!(
            "Release {} ({short} \"{}\") was reverted on every host to release {}; the gate of {} is closed until an admin opens it (`fifty gate open {}`). Incident {}: `fifty incident show {}`.\n{}",
            incident.release,
            incident.subject,
            incident.previous,
            incident.branch,
            repo,
            incident.id,
            incident.id,
            incident.evidence.join("\n")
        ),
        repo: Some(repo.to_string()),
        incident: Some(incident.id),
        at: Some(at),
        to: hooks.iter().map(|h| (h.id, false)).collect(),
    };
    batch.put_notification(&notification);
    batch.put_incident(&incident);
    batch.put_counters(&counters);
    Ok(Ok(Applied::Done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::{JobReport, NewCommit};
    use crate::state::testkit::*;
    use crate::state::{Command, RepoRecord};
    use std::time::Duration;

    /// The immune system's revert through the state machine alone: one entry turns the
    /// rollout back, closes the gate, queues the git revert, opens the incident and the
    /// notification; a second leader's copy of the same decision is refused; the hosts coming
    /// back, the revert commit, the admin opening the gate and the delivery are recorded.
    #[test]
    fn an_immune_revert_is_one_decision_with_five_effects() {
        use crate::deploy::{Kind, Rollout, WaveStep};
        let (mut m, _d) = machine();
        let now = SystemTime::now();
        add_repo(&mut m);
        let hook = Command::AddWebhook {
            url: "http://127.0.0.1:9/hook".into(),
            format: crate::notify::Format::Json,
            by: "admin".into(),
            at: now,
        };
        apply(&mut m, hook).unwrap();
        let hosts = vec![b("web-1"), b("web-2"), b("web-3")];
        let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(100)];
        let d = Duration::from_secs(10);
        let start = Rollout::start(1, repo(), Kind::Deploy, 2, Some(1), hosts, waves, d, 1, d * 6, now);
        let cmd = Command::StartRollout { rollout: start.rollout.clone(), targets: start.targets, at: now };
        apply(&mut m, cmd).unwrap();
        let bad = "3f2a9c1e20".repeat(4);
        let why = "error_rate 0.41% → 3.9% (+850%, p=2e-05)";
        let step = start.rollout.revert(why, now).unwrap();
        let incident = crate::incidents::IncidentRecord {
            id: 0,
            repo: Some(repo()),
            branch: "main".into(),
            title: "t".into(),
            opened_at: now,
            sha: bad.clone(),
            subject: "Faster checkout".into(),
            release: 2,
            previous: 1,
            rollout: 1,
            reason: why.into(),
            evidence: vec![format!("FAIL: {why}")],
            revert_job: None,
            revert: None,
            timeline: vec![],
            whys: vec![],
            actions: vec![],
            closed: None,
            alert: None,
        };
        let decide = Command::ImmuneRevert {
            rollout: step.rollout.clone(),
            targets: step.targets.clone(),
            incident: incident.clone(),
            at: now,
        };
        apply(&mut m, decide.clone()).unwrap();
        assert_eq!(apply(&mut m, decide), Err(Rejection::RolloutConflict(1)), "a second copy is refused");

        let store = m.store();
        // 1. The canary goes back.
        let targets = store.host_targets().unwrap();
        assert_eq!(targets.iter().find(|t| t.host == b("web-1")).map(|t| t.release), Some(1));
        // 2. The gate closes, naming the commit and the incident.
        let gate = store.gate(&repo(), "main").unwrap().unwrap().closed.unwrap();
        assert_eq!(gate.cause, Cause::Immune { sha: bad.clone(), incident: 1 });
        assert_eq!(gate.reason, format!("immune system reverted 3f2a9c1e20: {why}"));
        // 3. The revert is queued for a build agent. 4. The incident. 5. The notification.
        let i = store.incident(1).unwrap().unwrap();
        let job = store.job(i.revert_job.unwrap()).unwrap().unwrap();
        assert!(matches!(&job.kind, JobKind::Revert { revert, branch, .. } if *revert == bad && branch == "main"));
        assert_eq!(job.state, JobState::Queued);
        assert!(i.timeline.iter().any(|(_, e)| e.starts_with("gate of main closed")), "{:?}", i.timeline);
        let n = store.notification(1).unwrap().unwrap();
        assert_eq!((n.kind.as_str(), n.incident, n.to.clone()), ("immune.revert", Some(1), vec![(1, false)]));

        // The hosts are back: the rollout ends, and the incident says so.
        let back = step.rollout.step(&std::collections::HashMap::new(), &crate::deploy::Judgement::Off, now).unwrap();
        let cmd = Command::StepRollout { rollout: back.rollout, targets: back.targets, at: now };
        apply(&mut m, cmd).unwrap();
        // The revert commit is pushed.
        let r = assign(&mut m, job.id, "build-1");
        finish(&mut m, r, "build-1", JobReport::Revert { outcome: Ok("9b64de79f4".repeat(4)) }).unwrap();
        // An admin opens the gate; the webhook got it.
        let open = GateRecord {
            repo: repo(),
            branch: "main".into(),
            closed: None,
            changed_at: now,
            changed_by: "token a (admin)".into(),
            last_finished_seq: 0,
        };
        apply(&mut m, Command::SetGate(open)).unwrap();
        apply(&mut m, Command::Delivered { notification: 1, webhook: 1 }).unwrap();
        let store = m.store();
        let i = store.incident(1).unwrap().unwrap();
        let said: Vec<&str> = i.timeline.iter().map(|(_, e)| e.as_str()).collect();
        assert!(said.iter().any(|e| e.starts_with("every host of rollout 1 is back on release 1")), "{said:?}");
        assert!(said.iter().any(|e| e.starts_with("revert commit 9b64de79f4 pushed to main")), "{said:?}");
        assert!(said.iter().any(|e| e.starts_with("gate of main opened by token a")), "{said:?}");
        assert_eq!(i.revert, Some(Ok("9b64de79f4".repeat(4))));
        assert_eq!(store.notification(1).unwrap().unwrap().to, vec![(1, true)]);
        assert_eq!(store.job(job.id).unwrap().unwrap().state, JobState::Passed);

        // A held wave (the next rollout) notifies the webhooks once.
        let hosts = vec![b("web-1"), b("web-2")];
        let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(100)];
        let start = Rollout::start(2, repo(), Kind::Deploy, 3, Some(1), hosts, waves, d, 1, d * 6, now);
        let cmd = Command::StartRollout { rollout: start.rollout.clone(), targets: start.targets, at: now };
        apply(&mut m, cmd).unwrap();
        let mut held = start.rollout.clone();
        held.version += 1;
        held.held = Some("error_rate has no data".into());
        apply(&mut m, Command::StepRollout { rollout: held.clone(), targets: vec![], at: now }).unwrap();
        held.version += 1;
        apply(&mut m, Command::StepRollout { rollout: held, targets: vec![], at: now }).unwrap();
        let notes = m.store().notifications().unwrap();
        assert_eq!(notes.iter().filter(|n| n.kind == "immune.hold").count(), 1, "{notes:?}");
        assert!(notes[1].text.contains("error_rate has no data"));
    }

    /// The immune system's git revert job names the reverted commit by the commit's own
    /// sequence number, not by the release's id (it carried the release id).
    #[test]
    fn the_revert_job_names_the_commit_it_reverts() {
        use crate::deploy::{Kind, Rollout, WaveStep};
        let (mut m, _d) = machine();
        let now = SystemTime::now();
        add_repo(&mut m);
        let (good, bad) = ("a".repeat(40), "b".repeat(40));
        let commits = [&good, &bad]
            .into_iter()
            .map(|sha| NewCommit { sha: sha.clone(), subject: "s".into(), author: "a".into() })
            .collect();
        let notify = Command::NotifyCommits { repo: repo(), branch: "main".into(), commits, delivery: None, at: now };
        apply(&mut m, notify).unwrap();
        let seq = m.store().commit_by_sha(&repo(), &bad).unwrap().unwrap().seq;
        let (release, d) = (9, Duration::from_secs(10));
        assert_ne!(seq, release);
        let hosts = vec![b("web-1"), b("web-2")];
        let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(100)];
        let start = Rollout::start(1, repo(), Kind::Deploy, release, Some(1), hosts, waves, d, 1, d * 6, now);
        let cmd = Command::StartRollout { rollout: start.rollout.clone(), targets: start.targets, at: now };
        apply(&mut m, cmd).unwrap();
        let step = start.rollout.revert("worse", now).unwrap();
        let incident = crate::incidents::IncidentRecord {
            id: 0,
            repo: Some(repo()),
            branch: "main".into(),
            title: "t".into(),
            opened_at: now,
            sha: bad.clone(),
            subject: "s".into(),
            release,
            previous: 1,
            rollout: 1,
            reason: "worse".into(),
            evidence: vec![],
            revert_job: None,
            revert: None,
            timeline: vec![],
            whys: vec![],
            actions: vec![],
            closed: None,
            alert: None,
        };
        let decide = Command::ImmuneRevert { rollout: step.rollout, targets: step.targets, incident, at: now };
        apply(&mut m, decide).unwrap();
        let store = m.store();
        let job = store.job(store.incident(1).unwrap().unwrap().revert_job.unwrap()).unwrap().unwrap();
        assert_eq!(job.commit_seq, seq);
        assert_eq!(store.commit(&repo(), job.commit_seq).unwrap().unwrap().sha, bad);
    }

    /// The immune system's evidence through the state machine: kept (one record per target)
    /// while the rollout bakes the wave it names, refused for any other wave or bake and over its
    /// bounds, alike on every coordinator; a kind of command older coordinators cannot decode.
    #[test]
    fn evidence_is_kept_for_the_wave_baking_now_within_its_bounds() {
        use crate::deploy::{Kind, Phase, Rollout, WaveStep};
        use crate::immune::analysis::{HostTotals, TestState};
        use crate::immune::evidence::{MetricEvidence, WaveEvidence, MAX_METRICS};
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let start = Rollout::start(
            1,
            repo(),
            Kind::Deploy,
            2,
            Some(1),
            vec![b("web-1"), b("web-2"), b("web-3")],
            vec![WaveStep::Hosts(1), WaveStep::Percent(100)],
            Duration::from_secs(10),
            1,
            Duration::from_secs(60),
            now,
        );
        let mut baking = start.rollout.clone();
        baking.version += 1;
        baking.phase = Phase::Baking;
        baking.phase_since = now + Duration::from_secs(5);
        let setup = |m: &mut crate::state::Machine| {
            // Both machines get the same repository record (the same time): their digests are compared.
            let record = RepoRecord {
                name: repo(),
                url: "/srv/shop.git".into(),
                branch: "main".into(),
                fix_marker: "[fix]".into(),
                webhook_secret: None,
                added_at: now,
            };
            apply(m, Command::PutRepo(record)).unwrap();
            let cmd = Command::StartRollout { rollout: start.rollout.clone(), targets: start.targets.clone(), at: now };
            apply(m, cmd).unwrap();
            apply(m, Command::StepRollout { rollout: baking.clone(), targets: vec![], at: now }).unwrap();
        };
        let host = |name: &str, num: f64| HostTotals {
            host: name.into(),
            last_interval: Some(7),
            intervals: 7,
            num,
            den: 700.0,
            num_sq_over_den: num * num / 100.0,
            buckets: vec![],
        };
        let test = TestState {
            looks: 7,
            min_p: 0.42,
            best_pass: 1.5,
            alpha: 0.005,
            rejected: 0,
            baseline: vec![host("web-2", 14.0), host("web-3", 13.0)],
            canary: vec![host("web-1", 15.0)],
            before: vec![host("web-1", 120.0), host("web-2", 121.0), host("web-3", 119.0)],
        };
        let evidence = WaveEvidence {
            rollout: 1,
            wave: 0,
            first_data: Some(baking.phase_since + Duration::from_secs(1)),
            seen: vec![("web-1".into(), 7), ("web-2".into(), 7), ("web-3".into(), 7)],
            metrics: vec![MetricEvidence { name: "error_rate".into(), bounds: vec![], test: test.clone() }],
            resumes: 0,
            at: now + Duration::from_secs(8),
        };
        let record = |e: &WaveEvidence| Command::ImmuneEvidence { evidence: e.clone() };
        assert_eq!(record(&evidence).since(), 3);
        assert!(record(&evidence).since() <= crate::state::STATE_VERSION);

        let (mut m, _d) = machine();
        let (mut other, _d2) = machine();
        setup(&mut m);
        setup(&mut other);
        assert_eq!(apply(&mut m, record(&evidence)), Ok(Applied::Done));
        assert_eq!(apply(&mut other, record(&evidence)), Ok(Applied::Done));
        assert_eq!(m.store().evidence(&repo()).unwrap(), Some(evidence.clone()));
        assert_eq!(m.store().state_digest().unwrap(), other.store().state_digest().unwrap(), "deterministic");

        // Another wave, another rollout: refused, the record stays.
        let changed = |f: fn(&mut WaveEvidence)| {
            let mut e = evidence.clone();
            f(&mut e);
            e
        };
        for stale in [changed(|e| e.wave = 1), changed(|e| e.rollout = 2)] {
            assert_eq!(apply(&mut m, record(&stale)), Err(Rejection::RolloutConflict(stale.rollout)));
        }
        // Malformed or over the bounds: refused, with what was wrong.
        let refused = |m: &mut crate::state::Machine, e: WaveEvidence| match apply(m, record(&e)) {
            Err(Rejection::BadEvidence(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        let nan = changed(|e| e.metrics[0].test.canary[0].num = f64::NAN);
        assert!(refused(&mut m, nan).contains("metric error_rate: recorded test state: canary host web-1"));
        let many = changed(|e| e.metrics = vec![e.metrics[0].clone(); MAX_METRICS + 1]);
        assert!(refused(&mut m, many).contains("65 metrics; the limit is 64"));
        let mut huge = evidence.clone();
        huge.metrics[0].test.baseline = (0..20_000).map(|i| host(&format!("web-{i}"), 1.0)).collect();
        let why = refused(&mut m, huge);
        assert!(why.contains("bytes; the limit is 262144"), "{why}");
        assert_eq!(m.store().evidence(&repo()).unwrap(), Some(evidence.clone()), "refusals change nothing");

        // A newer record replaces it; once the wave is over, none is taken.
        let newer = changed(|e| e.metrics[0].test.looks = 8);
        assert_eq!(apply(&mut m, record(&newer)), Ok(Applied::Done));
        assert_eq!(m.store().evidence(&repo()).unwrap().map(|e| e.looks()), Some(8));
        let mut next = baking.clone();
        next.version += 1;
        next.phase = Phase::Deploying;
        apply(&mut m, Command::StepRollout { rollout: next, targets: vec![], at: now }).unwrap();
        assert_eq!(apply(&mut m, record(&newer)), Err(Rejection::RolloutConflict(1)));
    }

    /// A judged wave's spread samples through the state machine: folded into the repository's
    /// learned spreads alike on two nodes (the same bytes), taken once per wave however often it
    /// is proposed, a bad sample refused with what was wrong; the store's check reads the record.
    #[test]
    fn learned_spreads_are_folded_once_alike_everywhere_and_bad_samples_refused() {
        use crate::immune::spread::SpreadSample;
        let sample = |excess: f64| SpreadSample { metric: "error_rate".into(), excess, df: 4.0 };
        let cmds = |rollout: u64| {
            (0..3u64).map(move |wave| Command::LearnSpread {
                repo: repo(),
                rollout,
                wave,
                samples: vec![sample(4.0 * 0.0004)],
            })
        };
        let (mut a, _da) = machine();
        let (mut b, _db) = machine();
        for cmd in cmds(1) {
            assert_eq!(apply(&mut a, cmd.clone()), Ok(Applied::Done));
            assert_eq!(apply(&mut b, cmd), Ok(Applied::Done));
        }
        // The last wave proposed again (a leader asking twice before its step commits): no change.
        let before = a.store().spread(&repo()).unwrap();
        assert_eq!(apply(&mut a, cmds(1).last().unwrap()), Ok(Applied::Done));
        assert_eq!(a.store().spread(&repo()).unwrap(), before);
        let bytes =
            |m: &crate::state::Machine| fifty_shared::codec::to_bytes(&m.store().spread(&repo()).unwrap()).unwrap();
        assert_eq!(bytes(&a), bytes(&b));
        let spread = before.spread("error_rate").expect("10.84 degrees of freedom");
        assert!((spread - 0.02).abs() < 1e-12, "{spread}");
        assert_eq!(before.metrics[0].waves, 3);
        let bad = Command::LearnSpread { repo: repo(), rollout: 2, wave: 0, samples: vec![sample(f64::INFINITY)] };
        match apply(&mut a, bad) {
            Err(Rejection::BadEvidence(why)) => assert!(why.contains("error_rate") && why.contains("excess"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.store().spread(&repo()).unwrap(), before, "a refused sample changes nothing");
        let many = Command::LearnSpread {
            repo: repo(),
            rollout: 2,
            wave: 0,
            samples: vec![sample(0.0); crate::immune::spread::MAX_METRICS + 1],
        };
        assert!(matches!(apply(&mut a, many), Err(Rejection::BadEvidence(_))));
        assert_eq!(Command::LearnSpread { repo: repo(), rollout: 1, wave: 0, samples: vec![] }.since(), 6);
        assert!(crate::state::STATE_VERSION >= 6);
    }
}
