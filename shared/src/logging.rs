//! One way to set up `tracing` for both binaries: `RUST_LOG`-style filters, logs on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default` is the filter used when `RUST_LOG` is unset,
/// e.g. `"info"`.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Makes a panic on any thread end the whole process, after the usual message and one log line.
///
/// A panic that only ended its thread could leave a coordinator that still looks alive (its
/// status says "leader", agents stay attached) while the thread that decides is gone; an agent
/// could go on without its link or its sidecar. Ending the process lets the supervisor restart
/// it and, on a coordinator, the others take over. (Release builds also set `panic = "abort"`.)
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        tracing::error!(panic = %info, "a panic ends this process; a supervisor should start it again");
        std::process::abort();
    }));
}
