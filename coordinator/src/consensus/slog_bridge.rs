//! raft-rs logs through `slog`; this drain forwards every record to `tracing`, so a coordinator
//! has one log stream with one filter (`RUST_LOG`). Raft's chatty INFO lines (every election
//! step) go to DEBUG; its warnings and errors keep their level.

use slog::{Drain, Level, OwnedKVList, Record, KV};

struct TracingDrain;

/// Collects a record's key/value pairs as `key=value` text.
struct Pairs(String);

impl slog::Serializer for Pairs {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut pairs = Pairs(String::new());
        let _ = record.kv().serialize(record, &mut pairs);
        let _ = values.serialize(record, &mut pairs);
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{}", pairs.0),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{}", pairs.0),
            Level::Info => tracing::debug!(target: "raft", "{msg}{}", pairs.0),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft", "{msg}{}", pairs.0),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs, tagged with the node id.
pub fn logger(id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("raft_id" => format!("{id:016x}")))
}
