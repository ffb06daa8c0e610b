//! Shell completions and man pages, generated from a binary's clap definition (`fifty
//! completions`, `fifty man`, and the same verbs of `fifty-agent`), so they say exactly what
//! `--help` says and never drift from it. The packages (`scripts/package`) install what these
//! print; nothing generated is kept in the repository.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
pub use clap_complete::Shell;

/// `cmd`'s completion script for `shell`.
pub fn completion_script(mut cmd: clap::Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    script
}

/// Prints `cmd`'s completion script for `shell` on standard output (a closed pipe is an error,
/// not a panic: the script is generated in memory first).
pub fn print_completions(cmd: clap::Command, shell: Shell) -> Result<()> {
    write_stdout(&completion_script(cmd, shell)).context("write the completion script to standard output")
}

/// Every man page of `cmd`, as (file name, roff text): its own (`fifty.1`) and one for each
/// subcommand at any depth (`fifty-token-create.1`), each naming its subcommands' pages.
pub fn man_pages(cmd: clap::Command) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Gives each subcommand its full name (`fifty-token-create`), used for its page's name.
    cmd.build();
    let source = format!("{} {}", cmd.get_name(), cmd.get_version().unwrap_or_default());
    let manual = format!("{} Manual", capitalised(cmd.get_name()));
    // The date the pages were made (`SOURCE_DATE_EPOCH` when set, for reproducible packages). Never
    // empty: clap_mangen leaves an empty date out of `.TH`, which shifts the source and manual
    // into the wrong fields.
    let date = man_date();
    let mut pages = Vec::new();
    let mut todo = vec![cmd];
    while let Some(cmd) = todo.pop() {
        todo.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let man = clap_mangen::Man::new(cmd).date(date.clone()).source(source.clone()).manual(manual.clone());
        let mut text = Vec::new();
        man.render(&mut text)?;
        pages.push((man.get_filename(), text));
    }
    pages.sort();
    Ok(pages)
}

/// Prints `cmd`'s own man page on standard output (`fifty man | man -l -`).
pub fn print_man_page(cmd: clap::Command) -> Result<()> {
    let name = format!("{}.1", cmd.get_name());
    let pages = man_pages(cmd).context("render the man page")?;
    let (_, text) = pages.iter().find(|(file, _)| *file == name).context("the top-level man page")?;
    write_stdout(text).context("write the man page to standard output")
}

/// Writes every page of [`man_pages`] into `dir` (created if missing); returns their paths.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut written = Vec::new();
    for (file, text) in man_pages(cmd).context("render the man pages")? {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

fn man_date() -> String {
    let now = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    format!("{:04}-{:02}-{:02}", now.year(), u8::from(now.month()), now.day())
}

fn capitalised(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Checks, for tests of each binary's real command line: the bash completion script loads in
/// bash and registers `name`; every man page renders with groff without a warning (when bash and
/// groff are installed: each check says which tool it ran, and a missing one fails unless
/// `allow_missing_tools`).
#[doc(hidden)]
pub fn check_generated(cmd: clap::Command, allow_missing_tools: bool) -> Result<Vec<String>> {
    let name = cmd.get_name().to_string();
    let dir = std::env::temp_dir().join(format!("fifty-cli-docs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut ran = Vec::new();
    let script = dir.join("completion.bash");
    std::fs::write(&script, completion_script(cmd.clone(), Shell::Bash))?;
    let tool = |tool: &str| which(tool).or_else(|| (!allow_missing_tools).then(|| PathBuf::from(tool)));
    if let Some(bash) = tool("bash") {
        let out = std::process::Command::new(bash)
            .arg("-c")
            .arg(format!("source {} && complete -p {name}", script.display()))
            .output()
            .context("run bash")?;
        let said = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success() && said.contains(&format!(" {name}\n")),
            "bash did not register the completion of {name}: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push(format!("bash: {}", said.trim()));
    }
    let pages = write_man_pages(cmd, &dir.join("man"))?;
    if let Some(groff) = tool("groff") {
        for page in &pages {
            // -ww: every warning; -z: no output, only the diagnostics.
            let out = std::process::Command::new(&groff)
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(page)
                .output()
                .context("run groff")?;
            let warnings = String::from_utf8_lossy(&out.stderr);
            anyhow::ensure!(
                out.status.success() && warnings.trim().is_empty(),
                "groff on {}: {warnings}",
                page.display()
            );
        }
        ran.push(format!("groff: {} pages without a warning", pages.len()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ran)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("sample")
            .version("1.2.3")
            .about("A sample tool")
            .subcommand(
                clap::Command::new("token").about("Manage tokens").subcommand(
                    clap::Command::new("create").about("Create one").arg(clap::arg!(--role <ROLE> "Its role")),
                ),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn every_visible_subcommand_gets_a_page_named_by_its_path() {
        let pages = man_pages(sample()).unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sample-token-create.1", "sample-token.1", "sample.1"]);
        let top = String::from_utf8_lossy(&pages[2].1).into_owned();
        assert!(top.contains(".TH sample 1 20") && top.contains("\"sample 1.2.3\" \"Sample Manual\""), "{top}");
        assert!(top.contains("sample\\-token(1)"), "the top page names its subcommands' pages: {top}");
        let create = String::from_utf8_lossy(&pages[0].1).into_owned();
        assert!(create.contains("\\-\\-role"), "{create}");
    }

    #[test]
    fn completion_scripts_name_the_binary_and_load_in_bash() {
        let zsh = String::from_utf8(completion_script(sample(), Shell::Zsh)).unwrap();
        assert!(zsh.starts_with("#compdef sample"), "{zsh}");
        let fish = String::from_utf8(completion_script(sample(), Shell::Fish)).unwrap();
        assert!(fish.contains("complete -c sample"), "{fish}");
        let ran = check_generated(sample(), true).unwrap();
        if which("bash").is_some() {
            assert!(ran.iter().any(|r| r.starts_with("bash: complete")), "{ran:?}");
        }
    }
}
