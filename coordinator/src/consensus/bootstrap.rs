//! How a coordinator comes to belong to a cluster, before its Raft loop starts:
//!
//! - it already does (its log is initialized): nothing to do;
//! - `force_new_cluster`: it does, but its quorum is lost for good: make it the only voter,
//!   keeping its data (etcd's `--force-new-cluster`), so the others can be added back;
//! - `join` names a coordinator: ask it (or the leader it points to) to add this node as a
//!   learner; the leader brings it up to date with a snapshot and makes it a voter once it has
//!   caught up (`node.rs`). With `replace`, a member still listed at this node's address under
//!   another id (this node's lost data dir) is removed first;
//! - `bootstrap_expect = 1`: a cluster of one, formed at once;
//! - `bootstrap_expect = N` with `peers`: say hello to the peers until N coordinators (this one
//!   included) are found, then every one of them writes the same genesis — the same voters and
//!   member table at index 1 — as Nomad's `bootstrap_expect` does. If a peer answers that it
//!   already belongs to a cluster that does not include this node, this node joins that cluster
//!   instead — unless a member of it has this node's address: then this node's data dir was lost,
//!   and joining under a new id would leave the old id a voter that never answers (three voters
//!   become four, tolerating no failure). It stops and names the recovery instead.
//!
//! Genesis sits at index 1 with the log compacted there, so a node added later can never replay
//! the log from scratch without the initial configuration: it must take a snapshot first.

// raft-rs's protobuf types are built field by field, as its own examples do.
#![allow(clippy::field_reassign_with_default)]

use std::time::Duration;

use anyhow::{bail, Result};
use fifty_shared::wire::{PeerInfo, PeerRequest, PeerResponse};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, EntryType, HardState};
use raft::{GetEntriesContext, Storage};
use tracing::{info, warn};

use super::transport::Transport;
use crate::state::MemberRecord;
use crate::store::raft_log::RaftLog;
use crate::store::{Batch, StoreError};

/// How this node finds its cluster.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    /// Form a new cluster once this many coordinators (this one included) are found.
    pub bootstrap_expect: usize,
    /// Other coordinators' QUIC addresses.
    pub peers: Vec<String>,
    /// Join the running cluster that this coordinator belongs to.
    pub join: Option<String>,
    /// With `join`: replace the member listed at this node's address under another id.
    pub replace: bool,
    /// Make this node the only voter of its cluster (lost-quorum recovery).
    pub force_new_cluster: bool,
}

/// Makes sure `log` belongs to a cluster (or has asked to join one).
pub async fn prepare(log: &RaftLog, me: &PeerInfo, membership: &Membership, transport: &Transport) -> Result<()> {
    if membership.force_new_cluster {
        return force_new_cluster(log, me);
    }
    if log.initialized()? {
        return Ok(());
    }
    if let Some(addr) = &membership.join {
        return join(addr, me, membership.replace, transport).await;
    }
    if membership.bootstrap_expect <= 1 {
        info!("forming a new cluster of one");
        return Ok(genesis(log, std::slice::from_ref(me))?);
    }
    let mut waited = 0u32;
    loop {
        let mut found = vec![me.clone()];
        for addr in membership.peers.iter().filter(|a| **a != me.quic_addr) {
            match transport.request(addr, &PeerRequest::Hello(me.clone())).await {
                Ok(PeerResponse::Hello { info, initialized: false, .. }) => {
                    transport.learn(info.node_id, &info.quic_addr);
                    found.push(info);
                }
                Ok(PeerResponse::Hello { initialized: true, members, .. }) => {
                    if members.iter().any(|m| m.node_id == me.node_id) {
                        // A peer formed the cluster with us in it a moment ago: same genesis.
                        return Ok(genesis(log, &members)?);
                    }
                    if let Some(old) = same_address(&members, me) {
                        bail!("{}", lost_data_dir(&old, me, addr));
                    }
                    info!(peer = %addr, "a cluster is already running; joining it");
                    return join(addr, me, false, transport).await;
                }
                Ok(other) => warn!(peer = %addr, answer = ?other, "unexpected answer to hello"),
                Err(e) => {
                    if waited % 10 == 0 {
                        info!(peer = %addr, error = %format!("{e:#}"), "waiting for peer")
                    }
                }
            }
        }
        found.sort_by_key(|p| p.node_id);
        found.dedup_by_key(|p| p.node_id);
        if found.len() >= membership.bootstrap_expect {
            info!(coordinators = found.len(), "forming a new cluster");
            return Ok(genesis(log, &found)?);
        }
        waited += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A member other than `me` listed at one of `me`'s addresses: `me` lost its data dir.
pub(super) fn same_address<'a>(members: impl IntoIterator<Item = &'a PeerInfo>, me: &PeerInfo) -> Option<PeerInfo> {
    members
        .into_iter()
        .find(|m| m.node_id != me.node_id && (m.quic_addr == me.quic_addr || m.http_addr == me.http_addr))
        .cloned()
}

/// What a coordinator whose data dir was lost is told, and what it can do.
pub(super) fn lost_data_dir(old: &PeerInfo, me: &PeerInfo, via: &str) -> String {
    format!(
        "coordinator {old:016x} is still a member of the running cluster at this coordinator's address ({addr}), \
         but this data dir holds no cluster state (it was lost or wiped) and this coordinator now has id {new:016x}. \
         Joining under the new id would leave {old:016x} a voter that never answers (the cluster would tolerate one \
         failure fewer). To recover: start this coordinator with `fifty server --join {via} --replace` (the leader \
         removes {old:016x} and adds this one in its place), or run `fifty cluster remove {old:016x}` and then \
         start it with `--join {via}`",
        old = old.node_id,
        addr = old.quic_addr,
        new = me.node_id,
    )
}

/// Makes `me` the only voter of the cluster its data dir belongs to, keeping its state:
/// the conf state becomes `me` alone, the other members leave the member table, and entries
/// past the commit index (no quorum holds them) are dropped. The others come back with `--join`.
pub(crate) fn force_new_cluster(log: &RaftLog, me: &PeerInfo) -> Result<()> {
    if !log.initialized()? {
        bail!("--force-new-cluster: this data dir holds no cluster to recover (start without the flag)");
    }
    let hs = log.hard_state()?;
    let applied = log.applied()?;
    // A committed entry not yet applied here is applied at start; one adding a voter would
    // undo the recovery, so it is refused rather than silently skipped.
    if hs.commit > applied {
        let entries = log.entries(applied + 1, hs.commit + 1, None, GetEntriesContext::empty(false))?;
        for e in entries.iter().filter(|e| e.get_entry_type() == EntryType::EntryConfChange) {
            let cc = ConfChange::parse_from_bytes(&e.data)?;
            if cc.get_change_type() == ConfChangeType::AddNode && cc.node_id != me.node_id {
                bail!(
                    "--force-new-cluster: committed entry {} (not yet applied here) adds voter {:016x}; forcing now \
                     would bring it back. Start this coordinator once without the flag (it applies the entry), \
                     stop it, and force again",
                    e.index,
                    cc.node_id
                );
            }
        }
    }
    let mut batch = Batch::default();
    let dropped = log.discard_after(&mut batch, hs.commit)?;
    let before = log.conf_state()?;
    let mut cs = ConfState::default();
    cs.voters = vec![me.node_id];
    RaftLog::set_conf_state(&mut batch, &cs);
    let mut removed = Vec::new();
    for m in log.store().members()? {
        if m.id != me.node_id {
            batch.remove_member(m.id);
            removed.push(format!("{:016x}", m.id));
        }
    }
    batch.put_member(&MemberRecord {
        id: me.node_id,
        quic_addr: me.quic_addr.clone(),
        http_addr: me.http_addr.clone(),
    });
    log.store().apply(batch)?;
    log.store().flush_blocking()?;
    warn!(
        voters_before = ?before.voters.iter().map(|v| format!("{v:016x}")).collect::<Vec<_>>(),
        removed = ?removed,
        uncommitted_entries_dropped = dropped,
        commit = hs.commit,
        "FORCE NEW CLUSTER: this coordinator is now the only voter, with its state as of commit {}; add the \
         others back with `fifty server --join {}` after wiping their data dirs, and never start a removed \
         coordinator with its old data dir",
        hs.commit,
        me.quic_addr
    );
    Ok(())
}

/// Writes the first state of a new cluster: voters, member table, log compacted at index 1.
pub(super) fn genesis(log: &RaftLog, members: &[PeerInfo]) -> Result<(), StoreError> {
    let mut batch = Batch::default();
    let mut cs = ConfState::default();
    cs.voters = members.iter().map(|m| m.node_id).collect();
    cs.voters.sort_unstable();
    RaftLog::set_conf_state(&mut batch, &cs);
    let mut hs = HardState::default();
    hs.term = 1;
    hs.commit = 1;
    RaftLog::set_hard_state(&mut batch, &hs);
    RaftLog::set_applied(&mut batch, 1);
    RaftLog::set_compacted(&mut batch, 1, 1);
    for m in members {
        batch.put_member(&MemberRecord {
            id: m.node_id,
            quic_addr: m.quic_addr.clone(),
            http_addr: m.http_addr.clone(),
        });
    }
    log.store().apply(batch)?;
    log.store().flush_blocking()
}

/// Asks the cluster (through `addr`, following redirects to the leader) to add this node as a
/// learner (with `replace`, in place of the member listed at its address).
async fn join(addr: &str, me: &PeerInfo, replace: bool, transport: &Transport) -> Result<()> {
    let mut target = addr.to_string();
    let request = if replace { PeerRequest::JoinReplacing(me.clone()) } else { PeerRequest::Join(me.clone()) };
    for attempt in 1..=120 {
        match transport.request(&target, &request).await {
            Ok(PeerResponse::Joined { members }) => {
                // Until the snapshot brings the member table, this is how we reach the others.
                for m in &members {
                    transport.learn(m.node_id, &m.quic_addr);
                }
                info!(via = %target, "joined the cluster as a learner; waiting for the leader's snapshot");
                return Ok(());
            }
            Ok(PeerResponse::NotLeader { leader: Some(leader) }) => {
                target = leader;
                continue;
            }
            Ok(PeerResponse::NotLeader { leader: None }) => info!(via = %target, "no leader yet; retrying the join"),
            Ok(PeerResponse::Refused { reason }) => bail!("joining through {target} was refused: {reason}"),
            Ok(PeerResponse::Retry { reason }) => info!(via = %target, %reason, "join deferred; retrying"),
            Ok(other) => warn!(answer = ?other, "unexpected answer to join"),
            Err(e) => info!(via = %target, error = %format!("{e:#}"), "join attempt {attempt} failed; retrying"),
        }
        target = addr.to_string();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("could not join the cluster through {addr}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use raft::eraftpb::Entry;

    fn peer(id: u64) -> PeerInfo {
        PeerInfo { node_id: id, quic_addr: format!("10.0.0.{id}:7071"), http_addr: format!("10.0.0.{id}:7070") }
    }

    /// A member of a three-node cluster holding entries 2..=4, of which 2..=3 are committed and
    /// applied; entry 4 (`last`) was never committed.
    fn survivor(last: Entry) -> RaftLog {
        let dir =
            std::env::temp_dir().join(format!("fifty-bootstrap-{}-{}", std::process::id(), rand::random::<u64>()));
        let log = RaftLog::new(Store::open(&dir).expect("open a temp store"));
        genesis(&log, &[peer(1), peer(2), peer(3)]).expect("genesis");
        let entry = |index| {
            let mut e = Entry::default();
            e.index = index;
            e.term = 1;
            e
        };
        let mut batch = Batch::default();
        log.append(&mut batch, &[entry(2), entry(3), last]).expect("append");
        let mut hs = log.hard_state().expect("hard state");
        hs.commit = 3;
        RaftLog::set_hard_state(&mut batch, &hs);
        RaftLog::set_applied(&mut batch, 3);
        log.store().apply(batch).expect("apply");
        log
    }

    /// `--force-new-cluster` leaves this node the only voter and member, keeps what was
    /// committed and drops what was not.
    #[test]
    fn force_new_cluster_keeps_the_committed_log_and_only_this_voter() {
        let mut uncommitted = Entry::default();
        uncommitted.index = 4;
        uncommitted.term = 1;
        uncommitted.data = b"never committed".to_vec().into();
        let log = survivor(uncommitted);
        force_new_cluster(&log, &peer(2)).expect("forced");
        assert_eq!(log.conf_state().unwrap().voters, vec![2]);
        assert!(log.conf_state().unwrap().learners.is_empty());
        let members = log.store().members().unwrap();
        assert_eq!(members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(log.last_index().unwrap(), 3, "the uncommitted entry is dropped");
        assert_eq!(log.hard_state().unwrap().commit, 3);
        assert_eq!(log.applied().unwrap(), 3);
    }

    /// A committed entry still to apply that adds a voter would undo the recovery: refused.
    #[test]
    fn force_new_cluster_refuses_a_pending_voter() {
        let log = survivor(Entry::default());
        // Entry 3 committed but not yet applied adds node 3 back as a voter.
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = 3;
        let mut add = Entry::default();
        add.index = 3;
        add.term = 1;
        add.set_entry_type(EntryType::EntryConfChange);
        add.data = cc.write_to_bytes().unwrap().into();
        let mut batch = Batch::default();
        log.append(&mut batch, &[add]).unwrap();
        RaftLog::set_applied(&mut batch, 2);
        log.store().apply(batch).unwrap();
        let err = force_new_cluster(&log, &peer(2)).unwrap_err().to_string();
        assert!(err.contains("adds voter 0000000000000003") && err.contains("without the flag"), "{err}");
        assert_eq!(log.conf_state().unwrap().voters, vec![1, 2, 3], "nothing changed");
    }

    /// A data dir that belongs to no cluster has nothing to recover.
    #[test]
    fn force_new_cluster_needs_a_cluster() {
        let dir =
            std::env::temp_dir().join(format!("fifty-bootstrap-{}-{}", std::process::id(), rand::random::<u64>()));
        let log = RaftLog::new(Store::open(&dir).unwrap());
        assert!(force_new_cluster(&log, &peer(1)).unwrap_err().to_string().contains("no cluster to recover"));
    }

    #[test]
    fn a_member_at_this_address_under_another_id_is_found() {
        let me = PeerInfo { node_id: 9, ..peer(2) };
        let members = [peer(1), peer(2), peer(3)];
        assert_eq!(same_address(&members, &me).map(|m| m.node_id), Some(2));
        assert_eq!(same_address(&members, &peer(2)), None, "itself");
        assert_eq!(same_address(&members, &peer(4)), None, "a new address");
        let text = lost_data_dir(&peer(2), &me, "10.0.0.1:7071");
        assert!(
            text.contains("--join 10.0.0.1:7071 --replace") && text.contains("fifty cluster remove 0000000000000002")
        );
    }
}
