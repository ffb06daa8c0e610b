//! The sample application (`coordinator/sample-app/`, built into the binary) in a real bare git
//! repository wired to Fifty with the real hooks (`scripts/hooks/`): what `fifty demo` pushes to,
//! and what the end-to-end tests push to. Every git command runs with an identity of its own, so
//! it works on a machine without one.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{bail, Context, Result};

use crate::local::LocalCluster;
use crate::views::{AddRepo, RepoView};

/// The sample app's files: path and contents.
pub const FILES: &[(&str, &str)] = &[
    ("fifty.toml", include_str!("../sample-app/fifty.toml")),
    ("README.md", include_str!("../sample-app/README.md")),
    ("app/shop.sh", include_str!("../sample-app/app/shop.sh")),
    ("scripts/list-tests.sh", include_str!("../sample-app/scripts/list-tests.sh")),
    ("scripts/package.sh", include_str!("../sample-app/scripts/package.sh")),
    ("release/README", include_str!("../sample-app/release/README")),
    ("release/ERROR_RATE", include_str!("../sample-app/release/ERROR_RATE")),
    ("release/LATENCY_MS", include_str!("../sample-app/release/LATENCY_MS")),
    ("scripts/run-tests.sh", include_str!("../sample-app/scripts/run-tests.sh")),
    ("tests/test_discount.sh", include_str!("../sample-app/tests/test_discount.sh")),
    ("tests/test_prices.sh", include_str!("../sample-app/tests/test_prices.sh")),
    ("tests/test_receipt.sh", include_str!("../sample-app/tests/test_receipt.sh")),
    ("tests/test_total.sh", include_str!("../sample-app/tests/test_total.sh")),
    ("tests/test_unknown_item.sh", include_str!("../sample-app/tests/test_unknown_item.sh")),
];

/// Fifty's git hooks, as shipped in `scripts/hooks/`.
pub const HOOKS: &[(&str, &str)] = &[
    ("pre-receive", include_str!("../../scripts/hooks/pre-receive")),
    ("post-receive", include_str!("../../scripts/hooks/post-receive")),
];

/// How much of the sample app's `fifty.toml` a repository keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steps {
    /// `[test]` only: green commits are not packaged or deployed.
    Test,
    /// `[test]`, `[package]` and `[deploy]`: green commits roll out, unwatched.
    Deploy,
    /// All of it: rollouts are watched by the immune system (`[immune]`).
    Immune,
}

/// A bare repository with Fifty's hooks, registered with the cluster, and a clone to push from.
pub struct SampleRepo {
    /// The repository's name in Fifty.
    pub name: String,
    /// The bare repository (what build agents fetch).
    pub bare: PathBuf,
    /// A working clone.
    pub work: PathBuf,
}

/// What the shop served on 127.0.0.1:`port` says its version is (`GET /version`), if it answers.
pub async fn served_version(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let mut s = tokio::time::timeout(std::time::Duration::from_secs(2), connect).await.ok()?.ok()?;
    s.write_all(b"GET /version HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut buf)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.trim().to_string())
}

/// Waits until the shop on every port in `ports` serves `version` (a commit's first 10 digits).
pub async fn wait_serving(ports: &[u16], version: &str, deadline: std::time::Duration) -> Result<()> {
    for &port in ports {
        crate::local::wait_for(&format!("127.0.0.1:{port} to serve {version}"), deadline, || async move {
            Ok((served_version(port).await.as_deref() == Some(version)).then_some(()))
        })
        .await?;
    }
    Ok(())
}

/// Runs git in `dir` with its own identity.
pub async fn git(dir: &Path, args: &[&str]) -> Result<Output> {
    tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Fifty Demo")
        .env("GIT_AUTHOR_EMAIL", "demo@fifty.invalid")
        .env("GIT_COMMITTER_NAME", "Fifty Demo")
        .env("GIT_COMMITTER_EMAIL", "demo@fifty.invalid")
        .output()
        .await
        .with_context(|| format!("run git {}", args.join(" ")))
}

async fn git_ok(dir: &Path, args: &[&str]) -> Result<String> {
    let out = git(dir, args).await?;
    if !out.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl SampleRepo {
    /// Creates `<dir>/<name>.git` with the hooks pointing at `cluster` (with `ci_token`), a
    /// clone holding the sample app (committed, not pushed), and registers it as `name`, branch
    /// `main`, with `webhook_secret` if given; its `fifty.toml` keeps the sections `steps` says.
    pub async fn create(
        dir: &Path,
        cluster: &LocalCluster,
        name: &str,
        ci_token: &str,
        webhook_secret: Option<&str>,
        steps: Steps,
    ) -> Result<Self> {
        let bare = dir.join(format!("{name}.git"));
        let work = dir.join(format!("{name}-work"));
        std::fs::create_dir_all(dir)?;
        git_ok(dir, &["init", "-q", "--bare", "-b", "main", &bare.display().to_string()]).await?;
        for (hook, text) in HOOKS {
            use std::os::unix::fs::PermissionsExt;
            let path = bare.join("hooks").join(hook);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        let fifty = cluster.bin_dir.join("fifty").display().to_string();
        for (key, value) in [
            ("fifty.repo", name.to_string()),
            ("fifty.addr", cluster.all_addrs()),
            ("fifty.token", ci_token.to_string()),
            ("fifty.cacert", cluster.ca_path().display().to_string()),
            ("fifty.bin", fifty),
        ] {
            git_ok(&bare, &["config", key, &value]).await?;
        }
        git_ok(dir, &["init", "-q", "-b", "main", &work.display().to_string()]).await?;
        git_ok(&work, &["remote", "add", "origin", &bare.display().to_string()]).await?;
        let repo = Self { name: name.to_string(), bare, work };
        for (path, text) in FILES {
            let text = match (*path, steps) {
                ("fifty.toml", Steps::Test) => text.split("\n[package]").next().unwrap_or(text),
                ("fifty.toml", Steps::Deploy) => text.split("\n# The cluster immune system").next().unwrap_or(text),
                _ => text,
            };
            repo.write(path, text)?;
        }
        repo.commit("Add the shop").await?;
        let req = AddRepo {
            name: name.to_string(),
            url: repo.bare.display().to_string(),
            branch: Some("main".into()),
            fix_marker: None,
            webhook_secret: webhook_secret.map(str::to_string),
        };
        let _: RepoView = cluster.client().post("/v1/repos", &req).await?;
        Ok(repo)
    }

    /// Writes a file of the working clone.
    pub fn write(&self, path: &str, text: &str) -> Result<()> {
        let path = self.work.join(path);
        std::fs::create_dir_all(path.parent().expect("files are in a directory"))?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    /// Replaces `from` with `to` in a file of the working clone.
    pub fn edit(&self, path: &str, from: &str, to: &str) -> Result<()> {
        let text = std::fs::read_to_string(self.work.join(path))?;
        if !text.contains(from) {
            bail!("{path} does not contain {from:?}");
        }
        self.write(path, &text.replacen(from, to, 1))
    }

    /// Commits everything in the working clone; returns the SHA.
    pub async fn commit(&self, message: &str) -> Result<String> {
        git_ok(&self.work, &["add", "-A"]).await?;
        git_ok(&self.work, &["commit", "-q", "-m", message]).await?;
        git_ok(&self.work, &["rev-parse", "HEAD"]).await
    }

    /// Pushes `main`; the output says what the hooks said (on stderr), success or not.
    pub async fn push(&self) -> Result<Output> {
        git(&self.work, &["push", "origin", "HEAD:main"]).await
    }

    /// The working clone's HEAD.
    pub async fn git_head(&self) -> String {
        git_ok(&self.work, &["rev-parse", "HEAD"]).await.unwrap_or_default()
    }

    /// Drops the last commit from the working clone (after a refused push).
    pub async fn undo_commit(&self) -> Result<()> {
        git_ok(&self.work, &["reset", "-q", "--hard", "HEAD~1"]).await.map(|_| ())
    }
}

/// Traffic for the shops: one thread per port sends `GET /` at `per_second`, until dropped. What
/// the immune system's metrics count; the demo and the tests run it while releases roll out.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts sending to 127.0.0.1:`port` for each of `ports`.
    pub fn start(ports: &[u16], per_second: u32) -> Load {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gap = std::time::Duration::from_secs(1) / per_second.max(1);
        let threads = ports
            .iter()
            .map(|&port| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut next = std::time::Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let timeout = Some(std::time::Duration::from_secs(2));
                        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                            let _ = s.set_read_timeout(timeout);
                            let _ = s.set_write_timeout(timeout);
                            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n");
                            let mut sink = Vec::new();
                            let _ = s.read_to_end(&mut sink);
                        }
                        next += gap;
                        let now = std::time::Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
