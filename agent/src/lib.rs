//! `fifty-agent`: the small process ops install on every build and production host.
//!
//! It enrolls once (`join`: makes a key pair, has the coordinator sign it, keeps the identity in
//! its data dir), then runs (`run`): holds one mutual-TLS QUIC link to the coordinator and
//! reports health every heartbeat, reconnecting with backoff and jitter whenever the link drops.
//!
//! Architecture invariant: the agent links tokio, quinn, rustls, bincode (through
//! `fifty-shared`) and sysinfo; never raft, sled, axum or the coordinator's crate. It keeps
//! working while no coordinator answers.

pub mod config;
pub mod health;
pub mod identity;
pub mod join;
pub mod link;
