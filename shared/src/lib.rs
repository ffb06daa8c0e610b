//! `fifty-shared`: everything that crosses a process boundary in Fifty.
//!
//! The coordinator (`fifty`) and the agent (`fifty-agent`) both depend on this crate and on nothing of
//! each other. It holds the ids users see, the wire messages, the one framed codec that every network
//! byte goes through, the cluster's TLS identity (CA, certificates, rustls/quinn configs), the join
//! token format, and the small helpers both binaries share (config loading, logging, telling systemd
//! they are ready).
//!
//! Architecture invariant: this crate knows nothing about Raft, sled, HTTP or processes. It does no
//! I/O of its own beyond reading and writing frames on a stream it is handed, the config files it is
//! asked to load, and the one datagram `sd_notify` sends to systemd.

pub mod cli_docs;
pub mod codec;
pub mod config;
pub mod experiment;
pub mod git;
pub mod ids;
pub mod logging;
pub mod pieces;
pub mod pipeline;
pub mod sd_notify;
pub mod selector;
pub mod tls;
pub mod token;
pub mod wire;

/// The version of this build, reported by agents and shown by `fifty hosts`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
