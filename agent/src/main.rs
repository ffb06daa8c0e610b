use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// The Fifty agent: enrolls this host and reports to the coordinator.
#[derive(Debug, Parser)]
#[command(name = "fifty-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this host with a join token from `fifty token create --role agent`.
    Join {
        /// A coordinator's QUIC address, HOST:PORT (port 7071 by default).
        #[arg(long)]
        coordinator: String,
        /// The join token.
        #[arg(long, env = "FIFTY_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// This host's name (lower-case letters, digits and '-').
        #[arg(long)]
        name: String,
        /// Labels, e.g. role=prod,pool=web.
        #[arg(long, default_value = "")]
        labels: String,
        /// Where to keep the identity and agent.toml.
        #[arg(long, env = "FIFTY_DATA_DIR", default_value = "/var/lib/fifty-agent")]
        data_dir: PathBuf,
        /// `[service]` settings a release's commands and health URL refer to as `{name}`,
        /// e.g. port=18081 (written to agent.toml; edit it there later).
        #[arg(long, default_value = "")]
        service: String,
        /// Where the local A/B sidecar listens (loopback only; default 127.0.0.1:7072).
        #[arg(long)]
        sidecar: Option<String>,
    },
    /// Run the agent.
    Run {
        /// The agent's config file (written by `join` into the data dir).
        #[arg(long, short = 'c', default_value = "/var/lib/fifty-agent/agent.toml")]
        config: PathBuf,
    },
    /// Print a shell completion script, e.g. `source <(fifty-agent completions bash)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: fifty_shared::cli_docs::Shell,
    },
    /// Print the fifty-agent(1) man page, or with DIR write one page per command into DIR.
    Man {
        /// Where to write fifty-agent.1, fifty-agent-join.1, fifty-agent-run.1 (created if missing).
        dir: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    fifty_shared::logging::init("info");
    fifty_shared::logging::exit_on_panic();
    let cli = Cli::parse();
    // What only prints needs no runtime.
    let printed = match &cli.command {
        Command::Completions { shell } => Some(fifty_shared::cli_docs::print_completions(Cli::command(), *shell)),
        Command::Man { dir: None } => Some(fifty_shared::cli_docs::print_man_page(Cli::command())),
        Command::Man { dir: Some(dir) } => Some(
            fifty_shared::cli_docs::write_man_pages(Cli::command(), dir)
                .map(|pages| println!("Wrote {} man pages into {}.", pages.len(), dir.display())),
        ),
        Command::Join { .. } | Command::Run { .. } => None,
    };
    if let Some(result) = printed {
        return exit_code(result);
    }
    // One thread: the agent's work is a heartbeat a second; a small footprint matters more.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("start the tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Join { coordinator, token, name, labels, data_dir, service, sidecar } => {
                let coordinator = if coordinator.contains(':') { coordinator } else { format!("{coordinator}:7071") };
                fifty_agent::join::join(fifty_agent::join::JoinRequest {
                    coordinator: &coordinator,
                    token: &token,
                    name: &name,
                    labels: &labels,
                    data_dir: &data_dir,
                    service: &service,
                    sidecar: sidecar.as_deref(),
                })
                .await
            }
            Command::Run { config } => {
                // agent.toml may carry secrets in `[service]`; it is written 0600 by `join`.
                if config.exists() {
                    fifty_shared::config::check_private(&config)?;
                }
                let config = fifty_agent::config::Config::load(&config)?;
                let (tx, rx) = tokio::sync::watch::channel(false);
                // Installed before anything else runs, so a SIGTERM right after READY=1 (a quick
                // `systemctl stop`) stops the agent cleanly instead of killing it.
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    fifty_shared::sd_notify::notify_or_warn("STOPPING=1");
                    let _ = tx.send(true);
                });
                fifty_agent::link::run(config, rx).await
            }
            Command::Completions { .. } | Command::Man { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    exit_code(result)
}

fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
