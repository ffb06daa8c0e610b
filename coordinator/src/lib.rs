//! `fifty`: the coordinator server and the admin/CI command-line client, in one binary (like
//! `nomad` or `vault`).
//!
//! Architecture invariant: the state machine (`state`) knows nothing of QUIC, HTTP or time; it
//! applies commands to the store. `store` is the only module that touches sled. The front doors
//! (`api`, `quic`) call `coordinator`, which decides and proposes commands through `consensus`.
//! The CLI (`cli`) talks to a coordinator only through the HTTPS API.

pub mod alerts;
pub mod api;
pub mod backup;
pub mod ci;
pub mod cli;
pub mod client;
pub mod config;
pub mod consensus;
pub mod coordinator;
pub mod deploy;
pub mod experiments;
pub mod fleet;
pub mod gate;
pub mod immune;
pub mod incidents;
pub mod local;
pub mod metrics;
pub mod notify;
pub mod quic;
pub mod retention;
pub mod sample_app;
pub mod server;
pub mod state;
pub mod store;
pub mod ui;
pub mod views;
