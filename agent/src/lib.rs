//! `fifty-agent`: the small process ops install on every build and production host.
//!
//! It enrolls once (`join`: makes a key pair, has the coordinator sign it, keeps the identity in
//! its data dir), then runs (`run`): holds one mutual-TLS QUIC link to the coordinator and
//! reports health every heartbeat, reconnecting with backoff and jitter whenever the link drops.
//! On build hosts it runs the CI jobs the coordinator hands it (`jobs`): a cached clone per
//! repository, a clean work tree per job, the test command as a child process group.
//!
//! Architecture invariant: the agent links tokio, quinn, rustls, bincode (through
//! `fifty-shared`), sysinfo and glob, and runs `git` as a child process; never raft, sled, axum or the coordinator's crate. It keeps
//! working while no coordinator answers.

pub mod config;
pub mod deploy;
pub mod download;
pub mod health;
pub mod identity;
pub mod job_tree;
pub mod jobs;
pub mod join;
pub mod link;
pub mod members;
pub mod metrics;
pub mod procs;
pub mod sandbox;
pub mod service;
pub mod sidecar;
