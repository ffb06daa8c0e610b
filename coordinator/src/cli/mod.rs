//! The `fifty` command line: the server, the local playgrounds (`dev`, `demo`), and the client
//! verbs, which talk to a coordinator only through its HTTPS API.

mod alert;
mod demo;
mod demo_experiment;
mod dev;
pub mod experiment;
mod immune;
mod incident;
mod output;
mod pipeline;

use anyhow::Result;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::ci::NewCommit;
pub use crate::client::{ApiFailure, Client, ClientOpts};
use crate::gate::Verdict;
use crate::views::{
    AddRepo, ClusterView, CommitSummary, CommitView, CreateToken, GateChange, GateView, HostView, Notified,
    NotifyCommits, Quarantine, RepoView, StatusView, TestsView, TokenCreated, TokenView,
};
use crate::views::{ReleaseView, RollbackRequest, RolloutView};

/// Fifty: ship to production fifty times a day without breaking it.
#[derive(Debug, Parser)]
#[command(name = "fifty", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a coordinator.
    Server {
        #[command(flatten)]
        flags: crate::config::Overrides,
    },
    /// Run a coordinator and local agents in a temporary directory, and print how to use them.
    Dev {
        /// How many agents to start.
        #[arg(long, default_value_t = 3)]
        agents: usize,
    },
    /// Tell Fifty's story with real processes on this machine; exit 0 only if every step happened.
    Demo,
    /// Print the tests Fifty reads from JUnit XML files, one `OUTCOME<TAB>NAME` a line, named as
    /// it records them: with `--listed`, a JUnit spelling of a listed test becomes the listed
    /// name. For trying a test runner's recipe (`scripts/recipes/check`).
    #[command(hide = true, name = "junit-names")]
    JunitNames {
        /// JUnit XML files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// What `[test] list` printed: one test a line.
        #[arg(long)]
        listed: Option<std::path::PathBuf>,
    },
    /// Cluster summary.
    Status {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List hosts with their state and health.
    Hosts {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage one host.
    Host {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Manage tokens.
    Token {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Repositories Fifty watches.
    Repo {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Commits Fifty tested or is testing, newest first.
    Commits {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// One commit: its shards, their agents and results, failed and flaky tests, output.
    Commit {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: CommitCommand,
    },
    /// Releases: id, commit, digest, size, state, where each runs.
    Releases {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// The rollout in progress (or the last one): watch and steer it.
    Rollout {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// A/B experiments served by the agents: define, ramp, stop, judge.
    Experiment {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: experiment::ExperimentCommand,
    },
    /// Return every host to a known-good release at once (no canary, no bake).
    Rollback {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// The release (default: the one before the current, or the active rollout's previous).
        #[arg(long)]
        to: Option<u64>,
        /// The repository, if several deploy.
        #[arg(long)]
        repo: Option<String>,
    },
    /// Incidents the immune system opened, newest first.
    Incidents {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// One incident: show it, record its whys and corrective actions, close it.
    Incident {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: incident::IncidentCommand,
    },
    /// Alerts firing now and recently resolved.
    Alerts {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// How many recent alerts.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Alert rules; acknowledge an alert; silence a rule.
    Alert {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: alert::AlertCommand,
    },
    /// The immune system: size a bake for a repository's fleet.
    Immune {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: immune::ImmuneCommand,
    },
    /// A live view of the fleet (refreshes in place on a terminal).
    Top {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// Print once and exit.
        #[arg(long)]
        once: bool,
        /// Print the API's JSON once.
        #[arg(long)]
        json: bool,
        /// Refresh interval.
        #[arg(long, default_value = "2s", value_parser = fifty_shared::config::parse_duration)]
        every: std::time::Duration,
    },
    /// Recent series of a host or the fleet (the leader keeps the last hour).
    Metrics {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// The host.
        #[arg(required_unless_present = "fleet", conflicts_with = "fleet")]
        host: Option<String>,
        /// The whole fleet.
        #[arg(long)]
        fleet: bool,
        /// Only this service ratio metric.
        #[arg(long)]
        metric: Option<String>,
        /// How far back.
        #[arg(long, default_value = "10m")]
        since: String,
        /// Bucket width (default: since / 30).
        #[arg(long)]
        step: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Webhooks notified of reverts and alerts.
    Webhook {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: incident::WebhookCommand,
    },
    /// A repository's tests: durations, flaky tests, quarantine.
    Test {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: TestCommand,
    },
    /// The commit gate of a repository's branch.
    Gate {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: GateCommand,
    },
    /// The coordinators: members, leader, Raft indexes.
    Cluster {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The cluster CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Pipeline as code: check a fifty.toml offline, with the messages CI gives.
    Pipeline {
        #[command(subcommand)]
        command: pipeline::PipelineCommand,
    },
    /// Back up the cluster (state and artifacts) to a file, or start a new cluster from one.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Offline tools for a coordinator's data dir (run while that coordinator is stopped).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Print a shell completion script, e.g. `source <(fifty completions bash)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: fifty_shared::cli_docs::Shell,
    },
    /// Print the fifty(1) man page, or with DIR write one page per command into DIR.
    Man {
        /// Where to write fifty.1, fifty-server.1, fifty-token-create.1, ... (created if missing).
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CommitCommand {
    /// Show a commit (SHA or a prefix of 4+ digits).
    Show {
        /// The commit.
        sha: String,
        /// Its repository, if the prefix is ambiguous.
        #[arg(long)]
        repo: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shard's output (live while it runs); without --shard, the plan job's.
    Log {
        /// The commit.
        sha: String,
        /// The shard, from 0.
        #[arg(long)]
        shard: Option<u32>,
        /// The attempt (default: the last).
        #[arg(long)]
        attempt: Option<u32>,
        /// The package job's output instead.
        #[arg(long, conflicts_with = "shard")]
        package: bool,
        /// Its repository, if the prefix is ambiguous.
        #[arg(long)]
        repo: Option<String>,
    },
    /// Tell Fifty about pushed commits (what scripts/hooks/post-receive runs). Subjects and
    /// authors are read from the git repository in the current directory when there is one.
    Notify {
        /// The repository's name in Fifty.
        repo: String,
        /// The branch they were pushed to (default: the repository's).
        #[arg(long)]
        branch: Option<String>,
        /// Full SHAs, oldest first.
        #[arg(required = true)]
        shas: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Waves, hosts and what happened, once.
    Status {
        /// The repository, if several deploy.
        #[arg(long)]
        repo: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow the rollout until it ends (progress bars on a terminal, plain lines when piped).
    Watch {
        /// The repository, if several deploy.
        #[arg(long)]
        repo: Option<String>,
    },
    /// Skip the rest of the bake, or pass a manual wave.
    Promote {
        /// The repository, if several deploy.
        #[arg(long)]
        repo: Option<String>,
    },
    /// Hold the rollout where it is.
    Pause {
        /// The repository, if several deploy.
        #[arg(long)]
        repo: Option<String>,
    },
    /// Go on after a pause (the bake starts again).
    Resume {
        /// The repository, if several deploy.
        #[arg(long)]
        repo: Option<String>,
    },
    /// Stop and put every host it touched back on the previous release.
    Abort {
        /// The repository, if several deploy.
        #[arg(long)]
        repo: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TestCommand {
    /// Quarantine a test: its failures are still reported but no longer fail commits.
    Quarantine {
        /// The repository.
        repo: String,
        /// The test, as its JUnit report names it.
        test: String,
    },
    /// Release a quarantined test.
    Unquarantine {
        /// The repository.
        repo: String,
        /// The test.
        test: String,
    },
    /// Known tests with their last passing durations, slowest first; quarantined and flaky ones.
    List {
        /// The repository.
        repo: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Save a backup of the whole cluster to FILE (admin token): every state record at one log
    /// index and every artifact the state names, checksummed. FILE (mode 0600) holds the
    /// cluster's CA key and release-signing key: keep it as secret as a coordinator's data dir.
    Save {
        /// Where the coordinator is, and the token (flags or FIFTY_* variables).
        #[command(flatten)]
        client: ClientOpts,
        /// The backup file to write (replaced only once the new one is whole).
        file: std::path::PathBuf,
    },
    /// Check a backup file whole (checksum, every record and artifact) without restoring it.
    Verify {
        /// The backup file.
        file: std::path::PathBuf,
    },
    /// Make an empty data dir the first coordinator of a new cluster whose state is FILE's
    /// (offline; then start it with `fifty server`, and join the other coordinators to it).
    Restore {
        /// The backup file.
        file: std::path::PathBuf,
        /// The new coordinator's config, as `fifty server` takes it (data dir, addresses, CA).
        #[command(flatten)]
        flags: crate::config::Overrides,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Check the Raft log and state for consistency; exits 1 if anything is wrong.
    Check {
        /// The coordinator's data dir (as in its config).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// Register a repository.
    Add {
        /// Its name in Fifty.
        name: String,
        /// The git URL build hosts fetch (a local path works).
        #[arg(long)]
        url: String,
        /// The branch Fifty gates.
        #[arg(long, default_value = "main")]
        branch: String,
        /// What a commit message carries to pass a gate closed by a red build.
        #[arg(long, default_value = "[fix]")]
        fix_marker: String,
        /// Secret for GitHub-style push webhooks (POST /v1/webhooks/github); without one they
        /// are refused.
        #[arg(long, env = "FIFTY_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
    },
    /// List repositories.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct GateTarget {
    /// The repository.
    repo: String,
    /// The branch (default: the repository's).
    #[arg(long)]
    branch: Option<String>,
}

#[derive(Debug, Subcommand)]
enum GateCommand {
    /// Show whether the gate is open, and why not.
    Status {
        #[command(flatten)]
        target: GateTarget,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if a push may go in, 1 if the gate is closed to it, 2 if it could not be checked.
    Check {
        #[command(flatten)]
        target: GateTarget,
        /// The pushed commit's message (the fix marker passes a closure by a red build).
        #[arg(long)]
        message: Option<String>,
        /// The commit the pushed commit was checked to undo exactly (the pre-receive hook sets it
        /// for a `Fifty-Revert:` commit): the one push a closure by the immune system lets in.
        #[arg(long)]
        reverts: Option<String>,
        /// The push deletes the branch (the pre-receive hook sets it): refused (exit 1) when it is
        /// the branch Fifty tests, or its gate is closed.
        #[arg(long, conflicts_with_all = ["message", "reverts"])]
        delete: bool,
    },
    /// Close the gate by hand (the fix marker does not pass this).
    Close {
        #[command(flatten)]
        target: GateTarget,
        /// Why, shown to everyone whose push is refused.
        #[arg(long)]
        reason: String,
    },
    /// Open the gate.
    Open {
        #[command(flatten)]
        target: GateTarget,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// List coordinators with the leader, term, commit and applied index.
    Members {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a coordinator from the cluster (a Raft configuration change).
    Remove {
        /// Its node id, as `fifty cluster members` shows it.
        node: String,
    },
    /// Compare every coordinator's state digest at one point of the log; exits 1 if they differ.
    Check {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a cluster CA to share among coordinators (ca.pem, ca-key.pem).
    Init {
        /// Directory to write into.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Remove a host and revoke its certificate; its agent is disconnected and refused.
    Remove {
        /// The host's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token. `--role agent` makes a join token for `fifty-agent join`.
    Create {
        /// admin, ci, read or agent.
        #[arg(long)]
        role: String,
        /// Lifetime, e.g. 1h (join tokens default to 1h, API tokens to none).
        #[arg(long)]
        ttl: Option<String>,
        /// Join tokens: how many hosts it may enroll (default 1; 0 = unlimited until it expires).
        #[arg(long)]
        max_uses: Option<u32>,
        /// A note to find it by.
        #[arg(long, default_value = "")]
        description: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its accessor.
    Revoke {
        /// The accessor shown by `token create` and `token list`.
        accessor: String,
    },
}

/// `fifty junit-names`: what Fifty records of these JUnit files (see [`Command::JunitNames`]).
fn junit_names(files: &[std::path::PathBuf], listed: Option<&std::path::Path>) -> Result<()> {
    use anyhow::Context;
    let mut read = Vec::new();
    for file in files {
        let xml = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        read.push((file.display().to_string(), xml));
    }
    let (mut tests, notes) = crate::ci::junit::parse(&read);
    if !notes.is_empty() {
        anyhow::bail!("{}", notes.join("; "));
    }
    if let Some(listed) = listed {
        let text = std::fs::read_to_string(listed).with_context(|| format!("read {}", listed.display()))?;
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        crate::ci::junit::name_as_listed(&mut tests, &names);
    }
    let mut out = std::io::stdout().lock();
    for t in tests {
        let outcome = match t.outcome {
            crate::ci::TestOutcome::Passed => "passed",
            crate::ci::TestOutcome::Failed => "failed",
            crate::ci::TestOutcome::Skipped => "skipped",
        };
        match std::io::Write::write_fmt(&mut out, format_args!("{outcome}\t{}\n", t.name)) {
            // A reader that stopped reading (`| head`) wanted no more.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            written => written.context("write to stdout")?,
        }
    }
    Ok(())
}

/// `fifty snapshot save|verify|restore`.
async fn snapshot(command: SnapshotCommand) -> Result<()> {
    use anyhow::Context as _;
    match command {
        SnapshotCommand::Save { client, file } => {
            let client = Client::from_opts(&client)?;
            let name = file.file_name().context("the backup FILE names no file")?.to_string_lossy().into_owned();
            let partial = file.with_file_name(format!(".{name}.partial"));
            let mut out = {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&partial)
                    .with_context(|| format!("create {}", partial.display()))?;
                // An existing file keeps its mode: make sure no one else can read the keys.
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                tokio::fs::File::from_std(f)
            };
            let got = client.download("/v1/snapshot", &mut out).await;
            let checked = match got {
                Ok(_) => {
                    out.sync_all().await?;
                    drop(out);
                    let p = partial.clone();
                    tokio::task::spawn_blocking(move || crate::backup::verify(&p)).await?.map_err(anyhow::Error::from)
                }
                Err(e) => Err(e),
            };
            let summary = match checked {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e.context("no backup was saved"));
                }
            };
            std::fs::rename(&partial, &file).with_context(|| format!("rename into {}", file.display()))?;
            print_backup(&file, &summary);
            println!(
                "It holds the cluster's CA key, its release-signing key and every token's hash: keep it as secret as a \
                 coordinator's data dir (README: Backup and restore)."
            );
            Ok(())
        }
        SnapshotCommand::Verify { file } => {
            let summary = crate::backup::verify(&file).with_context(|| format!("backup {}", file.display()))?;
            print_backup(&file, &summary);
            Ok(())
        }
        SnapshotCommand::Restore { file, flags } => {
            // The restored data dir holds the cluster's keys: owner-only, as `fifty server` makes it.
            // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
            unsafe { libc::umask(0o077) };
            let config = crate::config::Config::load(&flags)?;
            let r = tokio::task::spawn_blocking(move || crate::backup::restore(&file, &config)).await??;
            let h = &r.summary.header;
            println!(
                "Restored a cluster of one from a backup of log index {} ({} records, {} artifacts).\n\
                 New coordinator {:016x} at {} (API {}); its CA certificate: {}.\n\
                 Start it with `fifty server` and this config; join the other coordinators to it with empty data \
                 dirs and `fifty server --join {}`. Agents and tokens from before the backup work as they did.",
                h.index,
                h.records,
                h.blobs.len(),
                r.node_id,
                r.me.quic_addr,
                r.me.http_addr,
                r.ca_path.display(),
                r.me.quic_addr
            );
            Ok(())
        }
    }
}

fn print_backup(file: &std::path::Path, s: &crate::backup::Summary) {
    let h = &s.header;
    println!(
        "{}: a whole backup of {} bytes (SHA-256 {}): state at log index {} (term {}), {} records, {} artifacts \
         ({} bytes), taken {} by coordinator {:016x}.",
        file.display(),
        s.bytes,
        s.sha256,
        h.index,
        h.term,
        h.records,
        h.blobs.len(),
        s.blob_bytes(),
        humantime::format_rfc3339_seconds(h.taken_at),
        h.taken_by
    );
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Server { flags } => {
            let config = crate::config::Config::load(&flags)?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                fifty_shared::sd_notify::notify_or_warn("STOPPING=1");
                let _ = tx.send(true);
            });
            crate::server::run(config, rx).await
        }
        Command::Dev { agents } => dev::run(agents).await,
        Command::Demo => demo::run().await,
        Command::JunitNames { files, listed } => junit_names(&files, listed.as_deref()),
        Command::Status { client, json } => {
            let status: StatusView = Client::from_opts(&client)?.get("/v1/status").await?;
            output::print(json, &status, output::status)
        }
        Command::Hosts { client, json } => {
            let hosts: Vec<HostView> = Client::from_opts(&client)?.get("/v1/hosts").await?;
            output::print(json, &hosts, |h| output::hosts(h))
        }
        Command::Host { client, command: HostCommand::Remove { name } } => {
            let out: serde_json::Value = Client::from_opts(&client)?.delete(&format!("/v1/hosts/{name}")).await?;
            println!("Removed host {name}; certificate {} revoked.", out["revoked_serial"].as_str().unwrap_or("?"));
            Ok(())
        }
        Command::Token { client, command } => token(&client, command).await,
        Command::Repo { client, command } => repo(&client, command).await,
        Command::Gate { client, command } => gate(&client, command).await,
        Command::Commits { client, repo, limit, json } => {
            let q = query(&[("repo", repo.as_deref()), ("limit", Some(&limit.to_string()))]);
            let commits: Vec<CommitSummary> = Client::from_opts(&client)?.get(&format!("/v1/commits{q}")).await?;
            output::print(json, &commits, |c| output::commits(c))
        }
        Command::Commit { client, command } => commit(&client, command).await,
        Command::Test { client, command } => test(&client, command).await,
        Command::Releases { client, repo, json } => {
            let releases: Vec<ReleaseView> = Client::from_opts(&client)?
                .get(&format!("/v1/releases{}", query(&[("repo", repo.as_deref())])))
                .await?;
            output::print(json, &releases, |r| output::releases(r))
        }
        Command::Rollout { client, command } => rollout(&client, command).await,
        Command::Incidents { client, json } => incident::list(&client, json).await,
        Command::Incident { client, command } => incident::incident(&client, command).await,
        Command::Immune { client, command } => immune::run(&client, command).await,
        Command::Webhook { client, command } => incident::webhook(&client, command).await,
        Command::Experiment { client, command } => experiment::run(&client, command).await,
        Command::Alerts { client, limit, json } => alert::list(&client, json, limit).await,
        Command::Alert { client, command } => alert::alert(&client, command).await,
        Command::Top { client, once, json, every } => alert::top(&client, once, json, every).await,
        Command::Metrics { client, host, fleet: _, metric, since, step, json } => {
            alert::metrics(&client, host, metric, since, step, json).await
        }
        Command::Rollback { client, to, repo } => {
            let view: RolloutView =
                Client::from_opts(&client)?.post("/v1/rollback", &RollbackRequest { repo, to }).await?;
            println!(
                "Rolling every host of {} back to release {} (rollout {}), no canary, no bake.",
                view.repo, view.release, view.id
            );
            println!("Follow it with `fifty rollout watch`.");
            Ok(())
        }
        Command::Cluster { client, command: ClusterCommand::Members { json } } => {
            let view: ClusterView = Client::from_opts(&client)?.get("/v1/cluster/members").await?;
            output::print(json, &view, output::cluster)
        }
        Command::Cluster { client, command: ClusterCommand::Check { json } } => {
            let view: crate::views::ClusterCheckView =
                Client::from_opts(&client)?.post("/v1/cluster/check", &serde_json::json!({})).await?;
            output::print(json, &view, output::cluster_check)?;
            if !view.consistent {
                anyhow::bail!("the coordinators' states do not all agree at index {}", view.index);
            }
            Ok(())
        }
        Command::Cluster { client, command: ClusterCommand::Remove { node } } => {
            let _: serde_json::Value =
                Client::from_opts(&client)?.delete(&format!("/v1/cluster/members/{node}")).await?;
            println!("Removed coordinator {node} from the cluster.");
            Ok(())
        }
        Command::Ca { command: CaCommand::Init { out } } => crate::server::ca_init(&out),
        Command::Pipeline { command } => pipeline::run(command),
        Command::Completions { shell } => fifty_shared::cli_docs::print_completions(Cli::command(), shell),
        Command::Man { dir: None } => fifty_shared::cli_docs::print_man_page(Cli::command()),
        Command::Man { dir: Some(dir) } => {
            let pages = fifty_shared::cli_docs::write_man_pages(Cli::command(), &dir)?;
            println!("Wrote {} man pages into {}.", pages.len(), dir.display());
            Ok(())
        }
        Command::Snapshot { command } => snapshot(command).await,
        Command::Store { command: StoreCommand::Check { data_dir, json } } => {
            // Opening sled may write files in the data dir: owner-only, as `fifty server` makes
            // them (the server refuses to start on a file others can read).
            // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
            unsafe { libc::umask(0o077) };
            let report = crate::store::check::check(&data_dir.join("state"))?;
            output::print(json, &report, output::store_check)?;
            if !report.problems.is_empty() {
                anyhow::bail!(
                    "{} problem(s) in {}; see README, \"A damaged disk\", for the recovery",
                    report.problems.len(),
                    data_dir.display()
                );
            }
            Ok(())
        }
    }
}

async fn token(opts: &ClientOpts, command: TokenCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    match command {
        TokenCommand::Create { role, ttl, max_uses, description, json } => {
            let created: TokenCreated =
                client.post("/v1/tokens", &CreateToken { role, ttl, max_uses, description }).await?;
            output::print(json, &created, output::token_created)
        }
        TokenCommand::List { json } => {
            let tokens: Vec<TokenView> = client.get("/v1/tokens").await?;
            output::print(json, &tokens, |t| output::tokens(t))
        }
        TokenCommand::Revoke { accessor } => {
            let _: serde_json::Value = client.delete(&format!("/v1/tokens/{accessor}")).await?;
            println!("Revoked token {accessor}.");
            Ok(())
        }
    }
}

async fn repo(opts: &ClientOpts, command: RepoCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    match command {
        RepoCommand::Add { name, url, branch, fix_marker, webhook_secret } => {
            let req = AddRepo { name, url, branch: Some(branch), fix_marker: Some(fix_marker), webhook_secret };
            let repo: RepoView = client.post("/v1/repos", &req).await?;
            println!("Added repository {} ({}, branch {}).", repo.name, repo.url, repo.branch);
            Ok(())
        }
        RepoCommand::List { json } => {
            let repos: Vec<RepoView> = client.get("/v1/repos").await?;
            output::print(json, &repos, |r| output::repos(r))
        }
    }
}

async fn commit(opts: &ClientOpts, command: CommitCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    match command {
        CommitCommand::Show { sha, repo, json } => {
            let view: CommitView =
                client.get(&format!("/v1/commits/{sha}{}", query(&[("repo", repo.as_deref())]))).await?;
            output::print(json, &view, output::commit)
        }
        CommitCommand::Log { sha, shard, attempt, package, repo } => {
            let (shard, attempt) = (shard.map(|s| s.to_string()), attempt.map(|a| a.to_string()));
            let package = package.then_some("true");
            let q = query(&[
                ("shard", shard.as_deref()),
                ("attempt", attempt.as_deref()),
                ("package", package),
                ("repo", repo.as_deref()),
            ]);
            let text = client.get_text(&format!("/v1/commits/{sha}/log{q}")).await?;
            print!("{text}");
            Ok(())
        }
        CommitCommand::Notify { repo, branch, shas } => {
            let commits = shas.iter().map(|sha| describe_commit(sha.trim())).collect();
            let answer: Notified =
                client.post(&format!("/v1/repos/{repo}/commits"), &NotifyCommits { branch, commits }).await?;
            if let Some(why) = &answer.ignored {
                println!("Nothing queued: {why}.");
            }
            for sha in &answer.queued {
                println!("Queued {} of {}/{} for testing.", &sha[..10.min(sha.len())], answer.repo, answer.branch);
            }
            for sha in &answer.known {
                println!("Already known: {}.", &sha[..10.min(sha.len())]);
            }
            Ok(())
        }
    }
}

/// A commit with its subject and author, when the git repository in the current directory (a
/// hook's) has it.
fn describe_commit(sha: &str) -> NewCommit {
    let out = std::process::Command::new("git")
        // The SHA comes from the command line: `--end-of-options` keeps it from being read as an option.
        .args(["log", "-1", "--format=%s%x1f%an", "--end-of-options", sha, "--"])
        .stderr(std::process::Stdio::null())
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim_end().to_string(),
        _ => String::new(),
    };
    let (subject, author) = text.split_once('\u{1f}').unwrap_or((&text, ""));
    NewCommit { sha: sha.to_string(), subject: subject.to_string(), author: author.to_string() }
}

async fn rollout(opts: &ClientOpts, command: RolloutCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    let path = |repo: &Option<String>, action: &str| {
        format!("/v1/rollouts/current{action}{}", query(&[("repo", repo.as_deref())]))
    };
    let steer = |repo: Option<String>, action: &'static str| {
        let client = client.clone();
        let p = path(&repo, &format!("/{action}"));
        async move {
            let view: RolloutView = client.post(&p, &serde_json::json!({})).await?;
            print!("{}", output::rollout(&view));
            anyhow::Ok(())
        }
    };
    match command {
        RolloutCommand::Status { repo, json } => {
            let view: RolloutView = client.get(&path(&repo, "")).await?;
            output::print(json, &view, output::rollout)
        }
        RolloutCommand::Watch { repo } => {
            use std::io::IsTerminal;
            let terminal = std::io::stdout().is_terminal();
            let mut printed = 0;
            let mut last_id = None;
            loop {
                let view: RolloutView = client.get(&path(&repo, "")).await?;
                if last_id != Some(view.id) {
                    printed = 0;
                    last_id = Some(view.id);
                }
                if terminal {
                    // Redraw in place: clear the screen, then the status with progress bars.
                    print!("\x1b[2J\x1b[H{}", output::rollout_bars(&view));
                } else {
                    for (at, what) in view.events.iter().skip(printed) {
                        println!("{at}  rollout {}: {what}", view.id);
                    }
                }
                printed = view.events.len();
                use std::io::Write;
                let _ = std::io::stdout().flush();
                if view.finished_at.is_some() {
                    if !terminal {
                        print!("{}", output::rollout(&view));
                    }
                    return match &view.outcome {
                        Some(crate::deploy::Outcome::Succeeded) => Ok(()),
                        Some(other) => Err(anyhow::anyhow!("rollout {} ended: {other:?}", view.id)),
                        None => Ok(()),
                    };
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        RolloutCommand::Promote { repo } => steer(repo, "promote").await,
        RolloutCommand::Pause { repo } => steer(repo, "pause").await,
        RolloutCommand::Resume { repo } => steer(repo, "resume").await,
        RolloutCommand::Abort { repo } => steer(repo, "abort").await,
    }
}

async fn test(opts: &ClientOpts, command: TestCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    match command {
        TestCommand::Quarantine { repo, test } => {
            let _: TestsView = client
                .post(&format!("/v1/repos/{repo}/quarantine"), &Quarantine { test: test.clone(), on: true })
                .await?;
            println!("Quarantined {test} in {repo}: its failures are reported but no longer fail commits.");
            Ok(())
        }
        TestCommand::Unquarantine { repo, test } => {
            let _: TestsView = client
                .post(&format!("/v1/repos/{repo}/quarantine"), &Quarantine { test: test.clone(), on: false })
                .await?;
            println!("Released {test} in {repo}: its failures fail commits again.");
            Ok(())
        }
        TestCommand::List { repo, json } => {
            let view: TestsView = client.get(&format!("/v1/repos/{repo}/tests")).await?;
            output::print(json, &view, output::tests)
        }
    }
}

fn gate_path(target: &GateTarget, action: &str) -> String {
    format!("/v1/repos/{}/gate{action}", target.repo)
}

fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", output::url_encode(v)))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

async fn gate(opts: &ClientOpts, command: GateCommand) -> Result<()> {
    let client = Client::from_opts(opts)?;
    match command {
        GateCommand::Status { target, json } => {
            let path = format!("{}{}", gate_path(&target, ""), query(&[("branch", target.branch.as_deref())]));
            let view: GateView = client.get(&path).await?;
            output::print(json, &view, output::gate)
        }
        GateCommand::Check { target, delete: true, .. } => {
            // A gated branch is never deleted by a push: that would undo everything the gate let in.
            let get = |branch: Option<&str>| {
                let path = format!("{}{}", gate_path(&target, ""), query(&[("branch", branch)]));
                let client = client.clone();
                async move { client.get::<GateView>(&path).await }
            };
            let (view, tested) = match tokio::try_join!(get(target.branch.as_deref()), get(None)) {
                Ok(views) => views,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(2);
                }
            };
            if view.branch == tested.branch {
                println!(
                    "Deleting {}/{} is refused: it is the branch Fifty tests and gates; only its gate decides what \
                     changes it.",
                    view.repo, view.branch
                );
                std::process::exit(1);
            }
            if !view.open {
                println!("Deleting {}/{} is refused: its gate is closed.", view.repo, view.branch);
                print!("{}", output::gate(&view));
                std::process::exit(1);
            }
            Ok(())
        }
        GateCommand::Check { target, message, reverts, .. } => {
            // Exit codes for hooks: 0 let in, 1 gate closed, 2 could not check.
            let q = query(&[
                ("branch", target.branch.as_deref()),
                ("message", message.as_deref()),
                ("reverts", reverts.as_deref()),
            ]);
            let view: GateView = match client.get(&format!("{}{q}", gate_path(&target, ""))).await {
                Ok(view) => view,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(2);
                }
            };
            match view.verdict {
                Verdict::Open => Ok(()),
                Verdict::FixAllowed => {
                    println!(
                        "Gate of {}/{} is closed, but this is a fix ({}): let in.",
                        view.repo, view.branch, view.fix_marker
                    );
                    Ok(())
                }
                Verdict::RevertAllowed => {
                    println!(
                        "Gate of {}/{} is closed by the immune system; this push reverts its commit: let in.",
                        view.repo, view.branch
                    );
                    Ok(())
                }
                Verdict::Closed => {
                    print!("{}", output::gate(&view));
                    std::process::exit(1);
                }
            }
        }
        GateCommand::Close { target, reason } => {
            let change = GateChange { branch: target.branch.clone(), reason: Some(reason) };
            let view: GateView = client.post(&gate_path(&target, "/close"), &change).await?;
            print!("{}", output::gate(&view));
            Ok(())
        }
        GateCommand::Open { target } => {
            let change = GateChange { branch: target.branch.clone(), reason: None };
            let view: GateView = client.post(&gate_path(&target, "/open"), &change).await?;
            print!("{}", output::gate(&view));
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn help(path: &[&str]) -> String {
        let mut cmd = Cli::command();
        cmd.build();
        let mut sub = &mut cmd;
        for name in path {
            sub = sub.find_subcommand_mut(name).unwrap_or_else(|| panic!("no subcommand {name}"));
        }
        sub.render_long_help().to_string()
    }

    #[test]
    fn completions_load_in_bash_and_every_command_has_a_man_page_groff_renders_cleanly() {
        let ran = fifty_shared::cli_docs::check_generated(Cli::command(), true).unwrap();
        println!("{ran:?}");
        let pages = fifty_shared::cli_docs::man_pages(Cli::command()).unwrap();
        let names: Vec<&str> = pages.iter().map(|(name, _)| name.as_str()).collect();
        for page in ["fifty.1", "fifty-server.1", "fifty-token-create.1", "fifty-gate-check.1", "fifty-man.1"] {
            assert!(names.contains(&page), "no {page} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "no page for clap's help subcommand: {names:?}");
        let token =
            String::from_utf8_lossy(&pages.iter().find(|(n, _)| n == "fifty-token-create.1").unwrap().1).into_owned();
        assert!(token.contains("FIFTY_TOKEN") && token.contains("\\-\\-role"), "{token}");
        let bash = String::from_utf8(fifty_shared::cli_docs::completion_script(
            Cli::command(),
            fifty_shared::cli_docs::Shell::Bash,
        ))
        .unwrap();
        assert!(bash.contains("fifty__token__create") || bash.contains("fifty,token"), "subcommands complete");
    }

    #[test]
    fn server_side_commands_list_no_client_flags() {
        for path in [
            &["server"][..],
            &["dev"],
            &["demo"],
            &["ca", "init"],
            &["store", "check"],
            &["pipeline", "check"],
            &["completions"],
            &["man"],
        ] {
            let text = help(path);
            for flag in ["--token", "--cacert", "--stale", "--addr"] {
                assert!(!text.contains(flag), "fifty {} --help lists {flag}:\n{text}", path.join(" "));
            }
        }
        assert!(Cli::try_parse_from(["fifty", "server", "--token", "x"]).is_err());
    }

    #[test]
    fn client_commands_take_the_client_flags_at_any_depth() {
        for path in [&["status"][..], &["token", "list"], &["gate", "check"]] {
            let text = help(path);
            for flag in ["--token", "--cacert", "--stale", "--addr"] {
                assert!(text.contains(flag), "fifty {} --help lacks {flag}", path.join(" "));
            }
        }
        let cli = Cli::try_parse_from(["fifty", "token", "list", "--token", "t1", "--cacert", "/ca.pem"]).unwrap();
        let Command::Token { client, .. } = cli.command else { panic!("parsed as another command") };
        assert_eq!(client.token.as_deref(), Some("t1"));
        assert_eq!(client.cacert.as_deref(), Some(std::path::Path::new("/ca.pem")));
    }
}
