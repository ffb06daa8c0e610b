//! `fifty pipeline check`: a `fifty.toml` checked on this machine, by the same parser and with the
//! same messages as CI gives a pushed commit (`fifty_shared::pipeline`).

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use fifty_shared::pipeline::{self, Pipeline};

/// `fifty pipeline ...`.
#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Check a fifty.toml offline: exit 0 with what it asks for, 1 with the error CI would give
    /// (line, key, what was expected, the line with a caret).
    Check {
        /// The file.
        #[arg(default_value = pipeline::FILE_NAME)]
        file: PathBuf,
    },
}

/// Runs `fifty pipeline ...`.
pub fn run(command: PipelineCommand) -> Result<()> {
    match command {
        PipelineCommand::Check { file } => {
            let text = read(&file)?;
            match Pipeline::parse(&text) {
                Ok(p) => {
                    print!("{}", summary(&file, &p));
                    Ok(())
                }
                Err(e) => {
                    println!("{e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// The file's text, read no further than the parser's limit (so a huge file is refused by size,
/// as CI refuses it, without being read whole).
fn read(file: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(file).with_context(|| format!("read {}", file.display()))?;
    let mut bytes = Vec::new();
    f.take(pipeline::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("read {}", file.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", file.display()))
}

/// What a valid file asks for, a line per section.
pub fn summary(file: &std::path::Path, p: &Pipeline) -> String {
    let secs = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let t = &p.test;
    let mut out = format!("{} is valid.\n", file.display());
    let split = match &t.list {
        Some(list) => format!("balanced by past durations, tests listed by `{list}`"),
        None if t.shards > 1 => {
            "split by the command itself (no `list`: add one to balance shards by test durations)".to_string()
        }
        None => "no test list".to_string(),
    };
    let _ = writeln!(
        out,
        "  test     `{}`: {} shard{} ({split}), timeout {}, {} retr{}, JUnit {}",
        t.command,
        t.shards,
        if t.shards == 1 { "" } else { "s" },
        secs(t.timeout),
        t.retries,
        if t.retries == 1 { "y" } else { "ies" },
        t.junit.as_deref().unwrap_or("none (only exit statuses count)")
    );
    match &p.package {
        Some(k) => {
            let _ = writeln!(out, "  package  `{}` makes {} (timeout {})", k.command, k.artifact, secs(k.timeout));
        }
        None => out.push_str("  package  none: green commits are not released\n"),
    }
    if let Some(d) = &p.deploy {
        let how = match (&d.run, &d.restart) {
            (Some(run), _) => format!("runs `{run}`"),
            (_, Some(restart)) => format!("restarts with `{restart}`"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  deploy   hosts {}, waves {}, bake {}, {}, {how}, health {}",
            d.hosts,
            d.waves.join(" → "),
            secs(d.bake),
            if d.auto { "every green commit" } else { "by hand" },
            d.health.url
        );
    }
    if let Some(i) = &p.immune {
        let metrics: Vec<String> =
            i.metric.iter().map(|m| format!("{} ({}, bad: {})", m.name, m.kind, m.bad)).collect();
        let _ = writeln!(
            out,
            "  immune   {} metric{}: {}; alpha {}, min_effect {}, pass_bound {}, max_bake {}, watch {}",
            i.metric.len(),
            if i.metric.len() == 1 { "" } else { "s" },
            metrics.join(", "),
            i.alpha,
            i.min_effect,
            i.pass_bound,
            secs(i.max_bake),
            secs(i.watch)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_pipeline_is_summed_up() {
        let text = include_str!("../../sample-app/fifty.toml");
        let p = Pipeline::parse(text).unwrap();
        let s = summary(std::path::Path::new("fifty.toml"), &p);
        assert!(s.starts_with("fifty.toml is valid.\n"), "{s}");
        assert!(s.contains("`sh scripts/run-tests.sh`: 2 shards (balanced by past durations"), "{s}");
        assert!(s.contains("waves 1 → 50% → 100%, bake 6s"), "{s}");
        assert!(
            s.contains(
                "immune   2 metrics: error_rate (ratio, bad: increase), latency (histogram, bad: increase); alpha 0.01"
            ),
            "{s}"
        );
        assert!(s.contains("pass_bound 2, max_bake 5m"), "{s}");
        let p = Pipeline::parse("[test]\ncommand = \"make test\"\nshards = 3\n").unwrap();
        let s = summary(std::path::Path::new("fifty.toml"), &p);
        assert!(s.contains("3 shards (split by the command itself (no `list`"), "{s}");
        assert!(s.contains("package  none"), "{s}");
    }

    #[test]
    fn a_file_is_read_no_further_than_the_limit() {
        let dir = std::env::temp_dir().join(format!("fifty-pipeline-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("fifty.toml");
        std::fs::write(&big, "#".repeat(10 * pipeline::MAX_FILE_BYTES)).unwrap();
        let text = read(&big).unwrap();
        assert_eq!(text.len(), pipeline::MAX_FILE_BYTES + 1);
        let err = Pipeline::parse(&text).unwrap_err().to_string();
        assert!(err.contains("the limit is 65536"), "{err}");
        let err = read(&dir.join("missing.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("missing.toml"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
