//! Pipeline as code: `fifty.toml` at the root of an application's repository, read at the commit
//! under test. The build agent that plans a commit reads it (it needs `[test] list` to collect the
//! suite) and sends its text on; the coordinator parses the same text here again, so both sides
//! agree on what it says.
//!
//! ```toml
//! [test]
//! command = "scripts/run-tests.sh"   # run once per shard
//! list    = "scripts/list-tests.sh"  # optional: prints every test, one per line
//! shards  = 4
//! timeout = "10m"
//! junit   = "reports/*.xml"          # JUnit XML the command leaves behind
//! retries = 1                        # a failed shard is retried on another agent
//! ```
//!
//! A bad file is a [`PipelineError`] that names the line, the key and the problem and shows the
//! line with a caret; it fails that commit and nothing else, and `fifty pipeline check` prints the
//! same text before a push. README's `fifty.toml` reference lists every key (a test here checks).

use std::time::Duration;

use serde::Deserialize;

/// The file's name, at the repository's root.
pub const FILE_NAME: &str = "fifty.toml";

/// Largest `fifty.toml` accepted (a plan travels in one frame).
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// Most shards one commit may ask for.
pub const MAX_SHARDS: u32 = 64;

/// Most retries one shard may ask for.
pub const MAX_RETRIES: u32 = 5;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// How the commit is tested.
    pub test: TestStep,
    /// How a green commit becomes an artifact (needed to deploy).
    #[serde(default)]
    pub package: Option<PackageStep>,
    /// How a release rolls out.
    #[serde(default)]
    pub deploy: Option<DeployStep>,
    /// What the cluster immune system watches while a release rolls out.
    #[serde(default)]
    pub immune: Option<ImmuneStep>,
}

/// `[immune]`: the service's metrics, scraped on every host while a release rolls out, and the
/// statistics that judge each wave.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImmuneStep {
    /// The service's Prometheus endpoint (`{name}` from the host's `[service]`).
    pub scrape: String,
    /// How often agents scrape it (default 2s).
    #[serde(default = "two_seconds", with = "crate::config::duration")]
    pub interval: Duration,
    /// The false-revert probability a whole rollout may spend (default 0.01).
    #[serde(default = "one_percent")]
    pub alpha: f64,
    /// Regressions smaller than this relative change are ignored (default 0.2 = +20%).
    #[serde(default = "one_fifth")]
    pub min_effect: f64,
    /// A wave passes when the data rule out a regression larger than this (default 0.5 = +50%).
    #[serde(default = "one_half")]
    pub pass_bound: f64,
    /// After the last wave, how long the fleet is compared with the previous release's fleet in
    /// the window before the rollout (default 5m).
    #[serde(default = "five_minutes", with = "crate::config::duration")]
    pub watch: Duration,
    /// How long a wave's bake may be extended, in all, while the data cannot yet tell a pass from
    /// a regression (default 5m; no longer than `[deploy] bake` means no extension). Only at this
    /// point is an undecided wave held for a person.
    #[serde(default = "five_minutes", with = "crate::config::duration")]
    pub max_bake: Duration,
    /// The metrics.
    #[serde(default)]
    pub metric: Vec<MetricStep>,
}

/// `[[immune.metric]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricStep {
    /// The name verdicts show.
    pub name: String,
    /// `ratio` (numerator / denominator counters), `histogram` (a Prometheus histogram),
    /// `gauge` (a gauge of the service) or `host` (`series = "cpu"` or `"memory"`, from the agent).
    pub kind: String,
    /// For `ratio`: the counted events, e.g. `http_requests_total{code=~"5.."}`.
    #[serde(default)]
    pub numerator: Option<String>,
    /// For `ratio`: all events, e.g. `http_requests_total`.
    #[serde(default)]
    pub denominator: Option<String>,
    /// For `histogram`, `gauge` and `host`: the series.
    #[serde(default)]
    pub series: Option<String>,
    /// `increase` (default) or `decrease`: which direction is a regression.
    #[serde(default = "increase")]
    pub bad: String,
}

fn two_seconds() -> Duration {
    Duration::from_secs(2)
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

fn one_percent() -> f64 {
    0.01
}

fn one_fifth() -> f64 {
    0.2
}

fn one_half() -> f64 {
    0.5
}

fn increase() -> String {
    "increase".into()
}

/// Most metrics one `[immune]` may watch.
pub const MAX_METRICS: usize = 16;

impl ImmuneStep {
    /// What agents scrape, for the release manifest (checked by [`Pipeline::parse`]).
    pub fn order(&self) -> crate::wire::MetricsOrder {
        use crate::wire::{MetricQuery, MetricSource};
        let metrics = self
            .metric
            .iter()
            .map(|m| {
                let series = m.series.clone().unwrap_or_default();
                let source = match m.kind.as_str() {
                    "ratio" => MetricSource::Ratio {
                        numerator: m.numerator.clone().unwrap_or_default(),
                        denominator: m.denominator.clone().unwrap_or_default(),
                    },
                    "histogram" => MetricSource::Histogram { series },
                    "gauge" => MetricSource::Gauge { series },
                    _ => MetricSource::Host { series },
                };
                MetricQuery { name: m.name.clone(), source }
            })
            .collect();
        crate::wire::MetricsOrder { scrape_url: self.scrape.clone(), interval: self.interval, metrics }
    }

    fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, problem: String| Err((key.to_string(), problem));
        if !self.scrape.starts_with("http://") {
            return bad("immune.scrape", format!("{:?} must be an http:// URL", self.scrape));
        }
        if self.interval < Duration::from_millis(200) || self.interval > Duration::from_secs(300) {
            return bad("immune.interval", "must be from 200ms to 5m".into());
        }
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return bad("immune.alpha", format!("{} is out of range (0 to 0.5, e.g. 0.01)", self.alpha));
        }
        if !(self.min_effect.is_finite() && self.min_effect >= 0.0) {
            return bad("immune.min_effect", format!("{} must be 0 or more (0.2 = +20%)", self.min_effect));
        }
        if !(self.pass_bound.is_finite() && self.pass_bound > 0.0) {
            return bad("immune.pass_bound", format!("{} must be more than 0 (0.5 = +50%)", self.pass_bound));
        }
        if self.max_bake > Duration::from_secs(24 * 3600) {
            return bad("immune.max_bake", "must be at most 24h".into());
        }
        if self.metric.is_empty() {
            return bad("immune.metric", "is empty; add at least one [[immune.metric]]".into());
        }
        if self.metric.len() > MAX_METRICS {
            return bad("immune.metric", format!("{} metrics; at most {MAX_METRICS}", self.metric.len()));
        }
        for (i, m) in self.metric.iter().enumerate() {
            let key = |k: &str| format!("immune.metric[{i}].{k}");
            if m.name.trim().is_empty() || self.metric[..i].iter().any(|o| o.name == m.name) {
                return bad(&key("name"), format!("{:?} is empty or used twice", m.name));
            }
            if m.bad != "increase" && m.bad != "decrease" {
                return bad(&key("bad"), format!("{:?} is not \"increase\" or \"decrease\"", m.bad));
            }
            let selector = |k: &str, v: &Option<String>| -> Result<(), (String, String)> {
                match v {
                    None => Err((key(k), format!("is needed for kind = {:?}", m.kind))),
                    Some(v) => crate::selector::Selector::parse(v).map(|_| ()).map_err(|e| (key(k), e)),
                }
            };
            match m.kind.as_str() {
                "ratio" => {
                    selector("numerator", &m.numerator)?;
                    selector("denominator", &m.denominator)?;
                }
                "histogram" | "gauge" => selector("series", &m.series)?,
                "host" => match m.series.as_deref() {
                    Some("cpu") | Some("memory") => {}
                    other => return bad(&key("series"), format!("{other:?}: a host metric is \"cpu\" or \"memory\"")),
                },
                other => {
                    return bad(
                        &key("kind"),
                        format!("{other:?} is not \"ratio\", \"histogram\", \"gauge\" or \"host\""),
                    )
                }
            }
        }
        Ok(())
    }
}

/// `[package]`: runs on a build agent after the tests pass.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageStep {
    /// Shell command that builds the artifact, at the repository root.
    pub command: String,
    /// Path of the artifact it leaves, relative to the repository root: a `.tar.gz`.
    pub artifact: String,
    /// How long it may run (default 10m).
    #[serde(default = "ten_minutes", with = "crate::config::duration")]
    pub timeout: Duration,
}

/// How many hosts a wave reaches, or a stop for a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wave {
    /// This many hosts in all (cumulative).
    Hosts(u32),
    /// This percent of the target hosts in all, rounded up.
    Percent(u32),
    /// Wait for `fifty rollout promote` before the next wave.
    Manual,
}

impl std::str::FromStr for Wave {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "manual" {
            return Ok(Wave::Manual);
        }
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Wave::Percent(p)),
                _ => Err(format!("{s:?} is not a percentage from 1% to 100%")),
            };
        }
        match s.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Wave::Hosts(n)),
            _ => Err(format!("{s:?} is not a host count, a percentage (\"25%\") or \"manual\"")),
        }
    }
}

impl Wave {
    /// How many of `total` hosts this wave reaches (cumulative), `None` for a manual stop.
    pub fn reach(self, total: usize) -> Option<usize> {
        match self {
            Wave::Hosts(n) => Some((n as usize).min(total)),
            Wave::Percent(p) => Some((total * p as usize).div_ceil(100).min(total)),
            Wave::Manual => None,
        }
    }
}

/// How the service is checked after each switch.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// URL that answers 2xx when the service is healthy; `{name}` filled from the host's
    /// `[service]` settings.
    pub url: String,
    /// How long a new release has to become healthy (default 10s).
    #[serde(default = "ten_seconds", with = "crate::config::duration")]
    pub timeout: Duration,
}

/// `[deploy]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployStep {
    /// Label selector of the target hosts, e.g. `role=prod` or `role=prod,pool=web`.
    pub hosts: String,
    /// The waves, canary first, e.g. `["1", "25%", "100%"]`; `"manual"` waits for a person.
    #[serde(default = "default_waves")]
    pub waves: Vec<String>,
    /// How long each wave must stay healthy before the next (default 60s).
    #[serde(default = "sixty_seconds", with = "crate::config::duration")]
    pub bake: Duration,
    /// Deploy every green commit of the branch (default true).
    #[serde(default = "yes")]
    pub auto: bool,
    /// Command the agent runs and supervises, in the release's directory.
    #[serde(default)]
    pub run: Option<String>,
    /// Or: command that restarts a service managed elsewhere, after the switch.
    #[serde(default)]
    pub restart: Option<String>,
    /// The health check.
    pub health: HealthCheck,
    /// Releases kept on each host (default 5).
    #[serde(default = "five")]
    pub keep_releases: u32,
    /// Hosts that may be unhealthy at once during a rollout: a count or a percentage (default
    /// "10%", at least 1).
    #[serde(default = "ten_percent")]
    pub max_unavailable: String,
    /// How long one wave may take to become healthy before the rollout fails (default 10m).
    #[serde(default = "ten_minutes", with = "crate::config::duration")]
    pub progress_deadline: Duration,
}

impl DeployStep {
    /// The waves, parsed (checked by [`Pipeline::parse`]).
    pub fn parsed_waves(&self) -> Vec<Wave> {
        self.waves.iter().filter_map(|w| w.parse().ok()).collect()
    }

    /// How many of `total` hosts may be unavailable at once (at least 1).
    pub fn unavailable_of(&self, total: usize) -> usize {
        parse_unavailable(&self.max_unavailable).map(|u| u.of(total)).unwrap_or(1).max(1)
    }
}

/// `max_unavailable`: a count or a percentage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Hosts.
    Hosts(u32),
    /// Percent of the target, rounded down (at least 1 host).
    Percent(u32),
}

impl Unavailable {
    /// Of `total` hosts.
    pub fn of(self, total: usize) -> usize {
        match self {
            Unavailable::Hosts(n) => n as usize,
            Unavailable::Percent(p) => total * p as usize / 100,
        }
    }
}

fn parse_unavailable(s: &str) -> Result<Unavailable, String> {
    let s = s.trim();
    match s.strip_suffix('%') {
        Some(p) => match p.parse::<u32>() {
            Ok(p) if p <= 100 => Ok(Unavailable::Percent(p)),
            _ => Err(format!("{s:?} is not a percentage from 0% to 100%")),
        },
        None => {
            s.parse::<u32>().map(Unavailable::Hosts).map_err(|_| format!("{s:?} is not a host count or a percentage"))
        }
    }
}

fn default_waves() -> Vec<String> {
    vec!["1".into(), "25%".into(), "100%".into()]
}

fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn yes() -> bool {
    true
}

fn five() -> u32 {
    5
}

fn ten_percent() -> String {
    "10%".into()
}

/// Fills `{name}` placeholders from `vars`; a placeholder with no value is an error naming it.
pub fn fill(template: &str, vars: &std::collections::BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            return Err(format!("unclosed {{ in {template:?}"));
        };
        let name = &rest[start + 1..start + len];
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(format!(
                    "{template:?} needs {{{name}}}, which this host's agent.toml does not set (add `{name} = ...` under [service])"
                ))
            }
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `[test]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestStep {
    /// Shell command run once per shard, in the checked-out tree (`sh -c`).
    pub command: String,
    /// Shell command that prints the suite's test names, one per line. With it, shards are
    /// balanced by each test's past duration; without it, the command splits the suite itself by
    /// `FIFTY_SHARD_INDEX` / `FIFTY_SHARD_COUNT`.
    #[serde(default)]
    pub list: Option<String>,
    /// How many shards (default 1).
    #[serde(default = "one")]
    pub shards: u32,
    /// How long one shard may run before its whole process tree is killed (default 10m).
    #[serde(default = "ten_minutes", with = "crate::config::duration")]
    pub timeout: Duration,
    /// Glob, relative to the repository root, of the JUnit XML files the command writes.
    #[serde(default)]
    pub junit: Option<String>,
    /// How many times a failed shard is run again, on another agent when there is one (default 0).
    #[serde(default)]
    pub retries: u32,
}

fn one() -> u32 {
    1
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

impl Pipeline {
    /// Parses and checks the text of a `fifty.toml`.
    pub fn parse(text: &str) -> Result<Self, PipelineError> {
        if text.len() > MAX_FILE_BYTES {
            return Err(PipelineError::whole(format!("{} bytes; the limit is {MAX_FILE_BYTES}", text.len())));
        }
        let p: Pipeline = toml::from_str(text).map_err(|e| PipelineError::from_toml(text, &e))?;
        let bad = |key: &str, problem: String| Err(PipelineError::at_key(text, key, problem));
        if p.test.command.trim().is_empty() {
            return bad("test.command", "is empty; give the command that runs the tests".into());
        }
        if p.test.list.as_deref().is_some_and(|l| l.trim().is_empty()) {
            return bad("test.list", "is empty; remove it or give the command that lists the tests".into());
        }
        if p.test.shards == 0 || p.test.shards > MAX_SHARDS {
            return bad("test.shards", format!("{} is out of range (1 to {MAX_SHARDS})", p.test.shards));
        }
        if p.test.timeout.is_zero() {
            return bad("test.timeout", "must be longer than zero".into());
        }
        if p.test.retries > MAX_RETRIES {
            return bad("test.retries", format!("{} is out of range (0 to {MAX_RETRIES})", p.test.retries));
        }
        let inside =
            |path: &str| !(path.trim().is_empty() || path.starts_with('/') || path.split('/').any(|part| part == ".."));
        if let Some(glob) = &p.test.junit {
            if !inside(glob) {
                return bad("test.junit", format!("{glob:?} must be a relative path inside the repository"));
            }
        }
        if let Some(pkg) = &p.package {
            if pkg.command.trim().is_empty() {
                return bad("package.command", "is empty; give the command that builds the artifact".into());
            }
            if !inside(&pkg.artifact) {
                return bad(
                    "package.artifact",
                    format!("{:?} must be a relative path inside the repository", pkg.artifact),
                );
            }
        }
        if let Some(d) = &p.deploy {
            if p.package.is_none() {
                return bad("deploy", "needs a [package] section: a release is the artifact it builds".into());
            }
            if d.hosts.trim().is_empty() || d.hosts.split(',').any(|kv| !kv.contains('=')) {
                return bad("deploy.hosts", format!("{:?} is not a label selector like \"role=prod\"", d.hosts));
            }
            if d.waves.is_empty() {
                return bad("deploy.waves", "is empty; e.g. [\"1\", \"25%\", \"100%\"]".into());
            }
            for w in &d.waves {
                if let Err(e) = w.parse::<Wave>() {
                    return bad("deploy.waves", e);
                }
            }
            if d.waves.last().and_then(|w| w.parse::<Wave>().ok()).and_then(|w| w.reach(100)) != Some(100) {
                return bad("deploy.waves", "the last wave must reach every host (\"100%\")".into());
            }
            match (&d.run, &d.restart) {
                (Some(_), Some(_)) => return bad("deploy.run", "give run or restart, not both".into()),
                (None, None) => return bad("deploy.run", "give run (the agent supervises it) or restart".into()),
                _ => {}
            }
            if let Err(e) = parse_unavailable(&d.max_unavailable) {
                return bad("deploy.max_unavailable", e);
            }
            if d.keep_releases < 2 {
                return bad(
                    "deploy.keep_releases",
                    "must be at least 2 (the current release and one to go back to)".into(),
                );
            }
            if !d.health.url.starts_with("http://") {
                return bad("deploy.health.url", format!("{:?} must be an http:// URL", d.health.url));
            }
        }
        if let Some(immune) = &p.immune {
            if p.deploy.is_none() {
                return bad("immune", "needs a [deploy] section: the immune system watches rollouts".into());
            }
            if let Err((key, problem)) = immune.check() {
                return bad(&key, problem);
            }
        }
        Ok(p)
    }
}

/// What is wrong with a `fifty.toml`, and where. Its text is what every reader of the mistake
/// sees: `fifty pipeline check`, the failed commit's error and the closed gate's reason. The first
/// line stands alone (file, line, key, problem), so a one-line summary loses nothing; the next two
/// show the line of the file with a caret under the part at fault:
///
/// ```text
/// fifty.toml:4: key test.shards: invalid type: string "two", expected u32
///   4 | shards  = "two"
///     |           ^^^^^
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineError {
    /// The key at fault, dotted as the reference names it (`test.shards`, `immune.metric[1].kind`).
    pub key: Option<String>,
    /// Line of the file, from 1.
    pub line: Option<usize>,
    /// That line's text (cut to [`MAX_SHOWN_LINE`]) and the caret under the part at fault.
    pub source: Option<(String, String)>,
    /// What is wrong, or what was expected, in one line.
    pub problem: String,
}

/// Longest stretch of a bad line an error shows, in characters.
pub const MAX_SHOWN_LINE: usize = 160;

/// Longest problem an error keeps, in bytes (a pusher's unknown key may be long).
const MAX_PROBLEM: usize = 600;

impl std::fmt::Display for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{FILE_NAME}:")?;
        if let Some(line) = self.line {
            write!(f, "{line}:")?;
        }
        if let Some(key) = &self.key {
            write!(f, " key {key}:")?;
        }
        write!(f, " {}", self.problem)?;
        if let (Some(line), Some((text, caret))) = (self.line, &self.source) {
            let gutter = " ".repeat(line.to_string().len());
            write!(f, "\n  {line} | {text}\n  {gutter} | {caret}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PipelineError {}

impl PipelineError {
    /// A problem with the file as a whole (its size).
    fn whole(problem: String) -> Self {
        PipelineError { key: None, line: None, source: None, problem }
    }

    /// A problem the checks found with `key`, located in `text` (at the key's value, or at the
    /// nearest enclosing key the file has when the key itself is missing).
    fn at_key(text: &str, key: &str, problem: String) -> Self {
        let span = toml::de::DeTable::parse(text).ok().and_then(|doc| span_of(doc.get_ref(), key));
        Self::located(text, Some(key.to_string()), span, problem)
    }

    /// A TOML syntax error or a wrong type or name, as the parser reports it, with the key it
    /// happened in.
    fn from_toml(text: &str, e: &toml::de::Error) -> Self {
        let problem = e.message().trim().replace('\n', "; ");
        let key = e.span().and_then(|span| {
            let (doc, _) = toml::de::DeTable::parse_recoverable(text);
            let mut path = key_at(doc.get_ref(), span.start)?;
            // "missing field `command`" is about a key the table lacks: name that key.
            if let Some(missing) = problem.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
                path = if path.is_empty() { missing.to_string() } else { format!("{path}.{missing}") };
            }
            (!path.is_empty()).then_some(path)
        });
        Self::located(text, key, e.span(), problem)
    }

    fn located(text: &str, key: Option<String>, span: Option<std::ops::Range<usize>>, problem: String) -> Self {
        let mut problem = problem;
        if problem.len() > MAX_PROBLEM {
            let mut end = MAX_PROBLEM;
            while !problem.is_char_boundary(end) {
                end -= 1;
            }
            problem.truncate(end);
            problem.push_str("...");
        }
        let Some(span) = span.filter(|s| s.start <= text.len()) else {
            return PipelineError { key, line: None, source: None, problem };
        };
        let mut start = span.start;
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let whole = text[line_start..line_end].trim_end_matches('\r');
        let column = text[line_start..start].chars().count();
        // A long line is shown from a little before the fault, and cut.
        let skip = column.saturating_sub(MAX_SHOWN_LINE / 2);
        let shown: String = whole.chars().skip(skip).take(MAX_SHOWN_LINE).collect();
        let before: String = shown.chars().take(column - skip).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        let room = shown.chars().count().saturating_sub(column - skip);
        let width = text[start..span.end.clamp(start, line_end.max(start))].chars().count().min(room).max(1);
        let caret = format!("{before}{}", "^".repeat(width));
        PipelineError { key, line: Some(line), source: Some((shown, caret)), problem }
    }

    /// The first line alone: file, line, key and problem.
    pub fn summary(&self) -> String {
        self.to_string().lines().next().unwrap_or_default().to_string()
    }
}

/// The span of `key` (`deploy.health.url`, `immune.metric[1].kind`) in a parsed file: its value,
/// or for a table its name; when the key is missing, the nearest enclosing key that is there.
fn span_of(doc: &toml::de::DeTable<'_>, key: &str) -> Option<std::ops::Range<usize>> {
    let mut table = doc;
    let mut found = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, v)) = table.get_key_value(name) else {
            return found;
        };
        let mut value = v;
        if let (Some(i), toml::de::DeValue::Array(items)) = (index, v.get_ref()) {
            match items.get(i) {
                Some(item) => value = item,
                None => return Some(k.span()),
            }
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => {
                // A table's own span may cover all of it: point at its name, or the item of an
                // array of tables.
                found = Some(if index.is_some() && value.span().start < value.span().end {
                    value.span()
                } else {
                    k.span()
                });
                table = t;
            }
            _ => found = Some(value.span()),
        }
    }
    found
}

/// The dotted key whose name or value holds byte `at` of the file, deepest first; "" when none.
fn key_at(doc: &toml::de::DeTable<'_>, at: usize) -> Option<String> {
    fn walk(table: &toml::de::DeTable<'_>, at: usize, path: &str) -> Option<String> {
        for (k, v) in table.iter() {
            let here = if path.is_empty() { k.get_ref().to_string() } else { format!("{path}.{}", k.get_ref()) };
            let holds = |s: std::ops::Range<usize>| s.start <= at && at < s.end.max(s.start + 1);
            match v.get_ref() {
                toml::de::DeValue::Table(t) => {
                    if let Some(deeper) = walk(t, at, &here) {
                        return Some(deeper);
                    }
                    if holds(k.span()) || holds(v.span()) {
                        return Some(here);
                    }
                }
                toml::de::DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let indexed = format!("{here}[{i}]");
                        if let toml::de::DeValue::Table(t) = item.get_ref() {
                            if let Some(deeper) = walk(t, at, &indexed) {
                                return Some(deeper);
                            }
                        }
                        if holds(item.span()) {
                            return Some(indexed);
                        }
                    }
                    if holds(k.span()) || holds(v.span()) {
                        return Some(here);
                    }
                }
                _ => {
                    if holds(k.span()) || holds(v.span()) {
                        return Some(here);
                    }
                }
            }
        }
        None
    }
    Some(walk(doc, at, "").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_with_its_defaults() {
        let p = Pipeline::parse(
            "[test]\ncommand = \"make test\"\nshards = 4\ntimeout = \"2m\"\njunit = \"reports/*.xml\"\nretries = 1\n",
        )
        .unwrap();
        assert_eq!(p.test.shards, 4);
        assert_eq!(p.test.timeout, Duration::from_secs(120));
        assert_eq!(p.test.retries, 1);
        let p = Pipeline::parse("[test]\ncommand = \"make test\"\n").unwrap();
        assert_eq!((p.test.shards, p.test.timeout, p.test.retries), (1, Duration::from_secs(600), 0));
        assert_eq!(p.test.junit, None);
    }

    const DEPLOY: &str = "[test]\ncommand = \"t\"\n[package]\ncommand = \"p\"\nartifact = \"dist/app.tar.gz\"\n\
        [deploy]\nhosts = \"role=prod\"\nwaves = [\"1\", \"manual\", \"50%\", \"100%\"]\nbake = \"5s\"\n\
        run = \"bin/app --port {port}\"\nhealth = { url = \"http://127.0.0.1:{port}/health\", timeout = \"3s\" }\n";

    #[test]
    fn deploy_sections_parse_with_waves_and_defaults() {
        let p = Pipeline::parse(DEPLOY).unwrap();
        let d = p.deploy.unwrap();
        assert_eq!(d.parsed_waves(), [Wave::Hosts(1), Wave::Manual, Wave::Percent(50), Wave::Percent(100)]);
        assert_eq!(Wave::Percent(50).reach(6), Some(3));
        assert_eq!(Wave::Percent(25).reach(6), Some(2));
        assert_eq!(Wave::Hosts(1).reach(6), Some(1));
        assert_eq!((d.keep_releases, d.auto, d.unavailable_of(6)), (5, true, 1));
        assert_eq!(d.health.timeout, Duration::from_secs(3));
        let vars = std::collections::BTreeMap::from([("port".to_string(), "18081".to_string())]);
        assert_eq!(fill(d.run.as_deref().unwrap(), &vars).unwrap(), "bin/app --port 18081");
        assert!(fill("x {host}", &vars).unwrap_err().contains("{host}"));
    }

    #[test]
    fn deploy_errors_name_the_key() {
        let err = Pipeline::parse(&DEPLOY.replace("\"100%\"]", "\"50%\"]")).unwrap_err().to_string();
        assert!(err.contains("deploy.waves") && err.contains("last wave"), "{err}");
        let err = Pipeline::parse(&DEPLOY.replace("\"manual\"", "\"soon\"")).unwrap_err().to_string();
        assert!(err.contains("deploy.waves") && err.contains("soon"), "{err}");
        let err = Pipeline::parse(&DEPLOY.replace("role=prod", "prod")).unwrap_err().to_string();
        assert!(err.contains("deploy.hosts"), "{err}");
        let err = Pipeline::parse(&DEPLOY.replace("run = ", "restart = \"x\"\nrun = ")).unwrap_err().to_string();
        assert!(err.contains("deploy.run"), "{err}");
    }

    const IMMUNE: &str = "[immune]\nscrape = \"http://127.0.0.1:{port}/metrics\"\nwatch = \"30s\"\n\
        [[immune.metric]]\nname = \"error_rate\"\nkind = \"ratio\"\n\
        numerator = 'http_requests_total{code=~\"5..\"}'\ndenominator = 'http_requests_total'\n\
        [[immune.metric]]\nname = \"latency\"\nkind = \"histogram\"\nseries = \"http_request_duration_seconds\"\n\
        [[immune.metric]]\nname = \"cpu\"\nkind = \"host\"\nseries = \"cpu\"\n";

    #[test]
    fn immune_sections_parse_with_their_defaults() {
        let p = Pipeline::parse(&format!("{DEPLOY}{IMMUNE}")).unwrap();
        let i = p.immune.unwrap();
        assert_eq!(
            (i.interval, i.alpha, i.min_effect, i.watch, i.max_bake),
            (Duration::from_secs(2), 0.01, 0.2, Duration::from_secs(30), Duration::from_secs(300))
        );
        assert_eq!(i.metric.len(), 3);
        assert_eq!(i.metric[0].bad, "increase");
        let order = i.order();
        assert_eq!(order.metrics.len(), 3);
        assert!(
            matches!(&order.metrics[0].source, crate::wire::MetricSource::Ratio { numerator, .. } if numerator.contains("5.."))
        );
    }

    #[test]
    fn immune_errors_name_the_key() {
        let full = format!("{DEPLOY}{IMMUNE}");
        let err = Pipeline::parse(&full.replace("kind = \"histogram\"", "kind = \"summary\"")).unwrap_err().to_string();
        assert!(err.contains("immune.metric[1].kind") && err.contains("summary"), "{err}");
        let err = Pipeline::parse(&full.replace("code=~", "code~")).unwrap_err().to_string();
        assert!(err.contains("immune.metric[0].numerator"), "{err}");
        let err = Pipeline::parse(&full.replace("watch = ", "alpha = 2.0\nwatch = ")).unwrap_err().to_string();
        assert!(err.contains("immune.alpha"), "{err}");
        let err = Pipeline::parse(&full.replace("watch = ", "max_bake = \"2d\"\nwatch = ")).unwrap_err().to_string();
        assert!(err.contains("immune.max_bake"), "{err}");
        let err = Pipeline::parse(&full.replace("series = \"cpu\"", "series = \"gpu\"")).unwrap_err().to_string();
        assert!(err.contains("immune.metric[2].series"), "{err}");
        let err =
            Pipeline::parse(&full.replace("name = \"latency\"", "name = \"error_rate\"")).unwrap_err().to_string();
        assert!(err.contains("immune.metric[1].name"), "{err}");
        let err = Pipeline::parse(&format!("[test]\ncommand = \"t\"\n{IMMUNE}")).unwrap_err().to_string();
        assert!(err.contains("key immune:"), "{err}");
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let err = Pipeline::parse("[test]\ncommand = \"x\"\nshard = 4\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `shard`") && err.starts_with("fifty.toml:3: key test.shard:"), "{err}");
        let err = Pipeline::parse("[test]\ncommand = \"x\"\nshards = 0\n").unwrap_err().to_string();
        assert!(err.contains("test.shards") && err.contains("out of range"), "{err}");
        let err = Pipeline::parse("[test]\ncommand = \"x\"\ntimeout = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("timeout") && err.contains("not a duration"), "{err}");
        let err = Pipeline::parse("[test]\nshards = 2\n").unwrap_err().to_string();
        assert!(err.contains("missing field `command`"), "{err}");
        let err = Pipeline::parse("[test]\ncommand = \"x\"\njunit = \"../x.xml\"\n").unwrap_err().to_string();
        assert!(err.contains("test.junit"), "{err}");
        let err = Pipeline::parse("[tests]\ncommand = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `tests`"), "{err}");
        let err = Pipeline::parse("[test\n").unwrap_err().to_string();
        assert!(err.starts_with("fifty.toml:"), "{err}");
    }

    #[test]
    fn a_bake_past_the_longest_duration_is_refused_naming_it() {
        let err = Pipeline::parse("[deploy]\nhosts = \"role=prod\"\nbake = \"100000000h\"\n").unwrap_err().to_string();
        assert!(err.contains("bake") && err.contains("maximum, 10years"), "{err}");
    }

    /// The error CI records is the one `fifty pipeline check` prints: line, key, problem on its
    /// first line; then the line of the file with a caret under the part at fault.
    #[test]
    fn errors_point_at_the_line_and_the_key() {
        let err = Pipeline::parse("[test]\ncommand = \"x\"\nshards  = \"two\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "fifty.toml:3: key test.shards: invalid type: string \"two\", expected u32\n  3 | shards  = \"two\"\n    |           ^^^^^"
        );
        assert_eq!(err.summary(), "fifty.toml:3: key test.shards: invalid type: string \"two\", expected u32");
        assert_eq!((err.key.as_deref(), err.line), (Some("test.shards"), Some(3)));

        let err = Pipeline::parse("[test]\ncommand = \"x\"\nshard = 4\n").unwrap_err();
        assert!(
            err.summary().starts_with("fifty.toml:3: key test.shard: unknown field `shard`, expected one of"),
            "{err}"
        );
        assert!(err.to_string().ends_with("  3 | shard = 4\n    | ^^^^^"), "{err}");

        let err = Pipeline::parse("[test]\nshards = 2\n").unwrap_err();
        assert!(err.summary().starts_with("fifty.toml:1: key test.command: missing field `command`"), "{err}");

        // A check after parsing points at the value it refused.
        let full = format!("{DEPLOY}{IMMUNE}");
        let err = Pipeline::parse(&full.replace("kind = \"histogram\"", "kind = \"summary\"")).unwrap_err();
        let line = full.lines().position(|l| l == "kind = \"histogram\"").unwrap() + 1;
        assert_eq!(err.line, Some(line), "{err}");
        assert!(err.summary().contains(&format!(":{line}: key immune.metric[1].kind: \"summary\" is not")), "{err}");
        assert!(err.to_string().ends_with("kind = \"summary\"\n     |        ^^^^^^^^^"), "{err}");
        // A key the file lacks: at the section that needs it.
        let err = Pipeline::parse(&DEPLOY.replace("run = ", "# run = ")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("deploy.run"));
        assert!(err.to_string().contains("| [deploy]\n"), "{err}");
        // A syntax error: where the parser stopped.
        let err = Pipeline::parse("[test]\ncommand = \"x\ntimeout = \"1m\"\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        // A long line is cut around the fault.
        let err = Pipeline::parse(&format!("[test]\ncommand = \"{}\"\nshards = 0 # {}\n", "x", "y".repeat(5000)))
            .unwrap_err();
        assert!(err.to_string().len() < 600, "{err}");
    }

    /// Every key the parser accepts, by section, as its own "unknown field" error lists them (so a
    /// key added to a struct is found without being listed here).
    fn accepted_keys() -> Vec<(&'static str, Vec<String>)> {
        // `_unknown` sorts before every real key, so it is the first one each table meets.
        let probes = [
            ("", "_unknown = 1\n"),
            ("test", "[test]\n_unknown = 1\n"),
            ("package", "[package]\n_unknown = 1\n"),
            ("deploy", "[deploy]\n_unknown = 1\n"),
            ("deploy.health", "[deploy]\nhealth = { _unknown = 1 }\n"),
            ("immune", "[immune]\n_unknown = 1\n"),
            ("immune.metric", "[[immune.metric]]\n_unknown = 1\n"),
        ];
        probes
            .into_iter()
            .map(|(section, text)| {
                let err = Pipeline::parse(text).unwrap_err().problem;
                assert!(err.starts_with("unknown field `_unknown`, expected"), "{section}: {err}");
                let keys: Vec<String> = err.split('`').skip(3).step_by(2).map(str::to_string).collect();
                assert!(!keys.is_empty(), "{section}: {err}");
                (section, keys)
            })
            .collect()
    }

    /// README's `fifty.toml` reference has a row for every key the parser accepts, in the table of
    /// its section.
    #[test]
    fn the_readme_reference_lists_every_key() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let start = readme.find("\n## `fifty.toml` reference").expect("README has a `fifty.toml` reference");
        let reference = &readme[start + 1..];
        let reference = &reference[..reference.find("\n## ").unwrap_or(reference.len())];
        let sections = accepted_keys();
        assert_eq!(sections[1].1, ["command", "list", "shards", "timeout", "junit", "retries"]);
        for (section, keys) in sections {
            let heading = match section {
                "" => "#### Sections".to_string(),
                "immune.metric" => "#### `[[immune.metric]]`".to_string(),
                s => format!("#### `[{s}]`"),
            };
            let at = reference.find(&format!("{heading}\n")).unwrap_or_else(|| panic!("README lacks {heading}"));
            let table = &reference[at + heading.len()..];
            let table = &table[..table.find("\n####").unwrap_or(table.len())];
            for key in keys {
                assert!(
                    table.contains(&format!("\n| `{key}` | ")),
                    "README's fifty.toml reference lacks a row for `{key}` under {heading}"
                );
            }
        }
    }
}
