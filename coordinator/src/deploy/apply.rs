//! How the state machine applies the deploy commands (`StartRollout`, `StepRollout`,
//! `BlobAvailable`, the old `PutBlob`), and the rollout and artifact records the CI and immune
//! commands write too: free functions over the store, called from the dispatch in
//! `state::Machine::apply`.

use std::time::SystemTime;

use fifty_shared::ids::HostName;

use super::Rollout;
use crate::state::{Applied, ApplyResult, Rejection};
use crate::store::{Batch, Store, StoreError};

/// An artifact chunk of an older version's log (see `Command::PutBlob`): changes nothing.
pub(crate) fn put_blob(digest: &str, index: u32) -> ApplyResult {
    // Deterministic on every node: nothing is written.
    tracing::warn!(digest, index, "an artifact chunk from an older version's log is ignored: artifacts live in the blob store now; package that release again");
    Ok(Ok(Applied::Done))
}

/// Records that a quorum holds an artifact (see `Command::BlobAvailable`).
pub(crate) fn blob_available(digest: &str, size: u64, batch: &mut Batch) -> ApplyResult {
    if crate::store::blobs::check_digest(digest).is_err() || size > fifty_shared::wire::MAX_ARTIFACT_BYTES {
        return Ok(Err(Rejection::BadArtifact(format!("{digest:.80} of {size} bytes"))));
    }
    batch.put_blob_available(digest, size);
    Ok(Ok(Applied::Done))
}

/// Starts a rollout (see `Command::StartRollout`).
pub(crate) fn start_rollout(
    store: &Store,
    rollout: &Rollout,
    targets: &[(HostName, u64)],
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    let mut counters = store.counters()?;
    if rollout.id != counters.last_rollout + 1 {
        return Ok(Err(Rejection::RolloutConflict(rollout.id)));
    }
    let mut target = store.target(&rollout.repo)?;
    if let Some(active) = target.active {
        let Some(current) = store.rollout(active)? else {
            return Ok(Err(Rejection::RolloutConflict(active)));
        };
        if !current.finished() {
            if rollout.kind != crate::deploy::Kind::Rollback && !current.superseded_by(rollout.release) {
                return Ok(Err(Rejection::RolloutBusy(active)));
            }
            batch.put_rollout(&current.supersede(rollout.id, at).rollout);
        }
    }
    counters.last_rollout = rollout.id;
    batch.put_counters(&counters);
    target.active = (!rollout.finished()).then_some(rollout.id);
    if target.queued.is_some_and(|q| q <= rollout.release) {
        target.queued = None;
    }
    record_rollout(rollout, targets, &mut target, at, batch);
    Ok(Ok(Applied::Done))
}

/// Records a rollout's next state (see `Command::StepRollout`).
pub(crate) fn step_rollout(
    store: &Store,
    rollout: &Rollout,
    targets: &[(HostName, u64)],
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    let stored = store.rollout(rollout.id)?;
    if stored.as_ref().map(|r| r.version + 1) != Some(rollout.version) {
        return Ok(Err(Rejection::RolloutConflict(rollout.id)));
    }
    let mut target = store.target(&rollout.repo)?;
    if rollout.finished() && target.active == Some(rollout.id) {
        target.active = None;
    }
    record_rollout(rollout, targets, &mut target, at, batch);
    // A wave the immune system held waits for a person: tell them.
    if let (Some(why), None) = (&rollout.held, stored.as_ref().and_then(|r| r.held.as_ref())) {
        let mut counters = store.counters()?;
        counters.last_notification += 1;
        let notification = crate::notify::Notification {
            id: counters.last_notification,
            kind: "immune.hold".into(),
            title: format!(
                "{}: rollout {} of release {} held at wave {}",
                rollout.repo,
                rollout.id,
                rollout.release,
                rollout.wave + 1
            ),
            text: format!(
                "The immune system could not decide: {why}. Decide with `fifty rollout promote --repo {}` or `fifty rollout abort --repo {}`.",
                rollout.repo, rollout.repo
            ),
            repo: Some(rollout.repo.to_string()),
            incident: None,
            at: Some(at),
            to: store.webhooks()?.iter().map(|h| (h.id, false)).collect(),
        };
        batch.put_notification(&notification);
        batch.put_counters(&counters);
    }
    if let (true, Some(crate::deploy::Outcome::Reverted { .. })) = (rollout.finished(), &rollout.outcome) {
        for mut i in store.incidents()?.into_iter().filter(|i| i.rollout == rollout.id) {
            let back = rollout.previous.map_or("the previous release".into(), |p| format!("release {p}"));
            i.say(at, format!("every host of rollout {} is back on {back}", rollout.id));
            batch.put_incident(&i);
        }
    }
    Ok(Ok(Applied::Done))
}

/// Keeps the artifacts of the newest `KEEP_ARTIFACTS` releases of `newest`'s repository and of
/// every release a host is targeted at; drops the others' chunks (their records stay).
pub(crate) fn drop_old_artifacts(
    store: &Store,
    newest: &crate::deploy::ReleaseRecord,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    let targeted: Vec<u64> = store.host_targets()?.into_iter().map(|t| t.release).collect();
    let mut releases: Vec<crate::deploy::ReleaseRecord> =
        store.releases()?.into_iter().filter(|r| r.repo == newest.repo && r.id != newest.id).collect();
    releases.sort_by(|a, b| b.id.cmp(&a.id));
    let mut keep_digests: Vec<String> = vec![newest.digest.clone()];
    for (i, r) in releases.iter().enumerate() {
        if i + 1 < crate::deploy::KEEP_ARTIFACTS || targeted.contains(&r.id) {
            keep_digests.push(r.digest.clone());
        }
    }
    for r in releases.iter().skip(crate::deploy::KEEP_ARTIFACTS - 1) {
        if !keep_digests.contains(&r.digest) && store.blob_size(&r.digest)?.is_some() {
            batch.remove_blob(&r.digest, r.size);
        }
    }
    Ok(())
}

/// Writes a rollout, its hosts' new targets and its target record.
pub(crate) fn record_rollout(
    rollout: &crate::deploy::Rollout,
    targets: &[(HostName, u64)],
    target: &mut crate::deploy::TargetRecord,
    at: SystemTime,
    batch: &mut Batch,
) {
    if rollout.outcome == Some(crate::deploy::Outcome::Succeeded) {
        target.last_good = Some(rollout.release);
    }
    for (host, release) in targets {
        batch.put_host_target(&crate::deploy::HostTarget {
            host: host.clone(),
            repo: rollout.repo.clone(),
            release: *release,
            since: at,
        });
    }
    batch.put_rollout(rollout);
    batch.put_target(&rollout.repo, target);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testkit::*;
    use crate::state::Command;
    use fifty_shared::ids::RepoName;
    use std::time::Duration;

    #[test]
    fn old_artifacts_are_dropped_unless_a_host_runs_them() {
        use sha2::Digest as _;
        let (m, _d) = machine();
        let repo = RepoName::new("shop").unwrap();
        let bytes = |id: u64| format!("artifact {id:08}").into_bytes();
        let digest = |id: u64| hex::encode(sha2::Sha256::digest(bytes(id)));
        let release = |id: u64| crate::deploy::ReleaseRecord {
            id,
            repo: repo.clone(),
            sha: "a".repeat(40),
            subject: String::new(),
            digest: digest(id),
            size: 17,
            manifest: vec![],
            signature: vec![],
            plan: crate::deploy::DeployPlan {
                hosts: "role=prod".into(),
                waves: vec![],
                bake: Duration::ZERO,
                auto: true,
                max_unavailable: "1".into(),
                progress_deadline: Duration::from_secs(60),
                immune: None,
            },
            created_at: SystemTime::UNIX_EPOCH,
        };
        let mut b = Batch::default();
        for id in 1..=12 {
            b.put_release(&release(id));
            m.store().blobs().put(&digest(id), &bytes(id)).unwrap();
            b.put_blob_available(&digest(id), 17);
        }
        b.put_host_target(&crate::deploy::HostTarget {
            host: HostName::new("web-1").unwrap(),
            repo: repo.clone(),
            release: 1,
            since: SystemTime::UNIX_EPOCH,
        });
        m.store().apply(b).unwrap();
        let mut b = Batch::default();
        drop_old_artifacts(m.store(), &release(12), &mut b).unwrap();
        m.store().apply(b).unwrap();
        // The record and, once the batch is applied, the blob file.
        let kept = |id: u64| {
            let recorded = m.store().blob_size(&digest(id)).unwrap().is_some();
            let held = m.store().blobs().size(&digest(id)).unwrap().is_some();
            assert_eq!(recorded, held, "release {id}: record and file go together");
            recorded
        };
        assert!(kept(1), "a host is targeted at release 1");
        assert!(!kept(2), "release 2 is older than the newest ten");
        assert!((3..=12).all(kept), "the newest ten are kept");
        assert!(m.store().release(2).unwrap().is_some(), "the record stays");
        // Dropping again (an entry applied again after a restart) is harmless.
        let mut b = Batch::default();
        b.remove_blob(&digest(2), 17);
        m.store().apply(b).unwrap();
        let _ = std::fs::remove_dir_all(m.store().blobs().dir());
    }

    /// A deploy of a newer release takes over the deploy in progress (which ends superseded)
    /// and moves its hosts; a paused rollout, or an older release, is not taken over.
    #[test]
    fn a_newer_release_supersedes_the_rollout_in_progress() {
        use crate::deploy::{Kind, Outcome, Rollout, WaveStep};
        let (mut m, _d) = machine();
        let now = SystemTime::now();
        add_repo(&mut m);
        let d = Duration::from_secs(10);
        let hosts = vec![b("web-1"), b("web-2"), b("web-3")];
        let waves = vec![WaveStep::Hosts(1), WaveStep::Percent(100)];
        let start = |id, release, hosts: Vec<HostName>, waves: Vec<WaveStep>| {
            Rollout::start(id, repo(), Kind::Deploy, release, Some(6), hosts, waves, d, 1, d * 6, now)
        };
        let seven = start(1, 7, hosts.clone(), waves.clone());
        let cmd = Command::StartRollout { rollout: seven.rollout.clone(), targets: seven.targets, at: now };
        apply(&mut m, cmd).unwrap();

        let (carried, carried_waves) = seven.rollout.carry_over(hosts.clone(), waves.clone());
        let eight = start(2, 8, carried, carried_waves);
        let cmd = Command::StartRollout { rollout: eight.rollout.clone(), targets: eight.targets, at: now };
        assert_eq!(apply(&mut m, cmd), Ok(Applied::Done));
        let store = m.store();
        assert_eq!(store.rollout(1).unwrap().unwrap().outcome, Some(Outcome::Superseded { by: 2 }));
        assert_eq!(store.target(&repo()).unwrap().active, Some(2));
        let web1 = store.host_targets().unwrap().into_iter().find(|t| t.host == b("web-1")).unwrap();
        assert_eq!(web1.release, 8, "7's canary moved to 8");

        let older = start(3, 5, hosts.clone(), waves.clone());
        let cmd = Command::StartRollout { rollout: older.rollout, targets: older.targets, at: now };
        assert_eq!(apply(&mut m, cmd), Err(Rejection::RolloutBusy(2)), "an older release waits");
        let paused = eight.rollout.set_paused(true, "admin", now).unwrap();
        apply(&mut m, Command::StepRollout { rollout: paused.rollout, targets: vec![], at: now }).unwrap();
        let nine = start(3, 9, hosts, waves);
        let cmd = Command::StartRollout { rollout: nine.rollout, targets: nine.targets, at: now };
        assert_eq!(apply(&mut m, cmd), Err(Rejection::RolloutBusy(2)), "a paused rollout waits for its person");
    }
}
