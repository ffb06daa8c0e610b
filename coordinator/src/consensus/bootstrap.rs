//! How a coordinator comes to belong to a cluster, before its Raft loop starts:
//!
//! - it already does (its log is initialized): nothing to do;
//! - `join` names a coordinator: ask it (or the leader it points to) to add this node as a voter;
//!   the leader then brings this node up to date with a snapshot;
//! - `bootstrap_expect = 1`: a cluster of one, formed at once;
//! - `bootstrap_expect = N` with `peers`: say hello to the peers until N coordinators (this one
//!   included) are found, then every one of them writes the same genesis — the same voters and
//!   member table at index 1 — as Nomad's `bootstrap_expect` does. If a peer answers that it
//!   already belongs to a cluster that does not include this node (a wiped disk, a new node), this
//!   node joins that cluster instead.
//!
//! Genesis sits at index 1 with the log compacted there, so a node added later can never replay
//! the log from scratch without the initial configuration: it must take a snapshot first.

// raft-rs's protobuf types are built field by field, as its own examples do.
#![allow(clippy::field_reassign_with_default)]

use std::time::Duration;

use anyhow::{bail, Result};
use fifty_shared::wire::{PeerInfo, PeerRequest, PeerResponse};
use raft::eraftpb::{ConfState, HardState};
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
}

/// Makes sure `log` belongs to a cluster (or has asked to join one).
pub async fn prepare(log: &RaftLog, me: &PeerInfo, membership: &Membership, transport: &Transport) -> Result<()> {
    if log.initialized()? {
        return Ok(());
    }
    if let Some(addr) = &membership.join {
        return join(addr, me, transport).await;
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
                    info!(peer = %addr, "a cluster is already running; joining it");
                    return join(addr, me, transport).await;
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

/// Asks the cluster (through `addr`, following redirects to the leader) to add this node.
async fn join(addr: &str, me: &PeerInfo, transport: &Transport) -> Result<()> {
    let mut target = addr.to_string();
    for attempt in 1..=120 {
        match transport.request(&target, &PeerRequest::Join(me.clone())).await {
            Ok(PeerResponse::Joined { members }) => {
                // Until the snapshot brings the member table, this is how we reach the others.
                for m in &members {
                    transport.learn(m.node_id, &m.quic_addr);
                }
                info!(via = %target, "joined the cluster; waiting for the leader's snapshot");
                return Ok(());
            }
            Ok(PeerResponse::NotLeader { leader: Some(leader) }) => {
                target = leader;
                continue;
            }
            Ok(PeerResponse::NotLeader { leader: None }) => info!(via = %target, "no leader yet; retrying the join"),
            Ok(PeerResponse::Refused { reason }) => bail!("joining through {target} was refused: {reason}"),
            Ok(other) => warn!(answer = ?other, "unexpected answer to join"),
            Err(e) => info!(via = %target, error = %format!("{e:#}"), "join attempt {attempt} failed; retrying"),
        }
        target = addr.to_string();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("could not join the cluster through {addr}")
}
