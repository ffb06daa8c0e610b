//! A/B split tests: the replicated records, how the state machine applies experiment commands, and
//! the operations behind `fifty experiment ...` and `/v1/experiments`.
//!
//! What is replicated (Raft entries, in sled on every coordinator): each experiment's definition
//! (variants, weights, the bucket → variant slot table, host selector, metric, ramps, stop), its
//! running totals per variant, one small record per unit seen (variant, exposed, converted, value
//! sum: about 60 bytes of sled per unit with its key), and per host the last agent report applied.
//! Agents report units they saw since their last acknowledged report; the leader proposes each
//! report as one command and acknowledges it once applied, so a report is counted exactly once:
//! a report re-sent after a failover carries the same (boot, seq) and changes nothing.
//!
//! Submodules: [`analysis`] (pure statistics), [`group_sequential`] (boundaries for scheduled
//! looks), [`sim`] (seeded simulations through `analysis`),
//! [`leader`] (pushing definitions to agents, turning reports into commands), [`view`] (JSON).

pub mod analysis;
pub mod group_sequential;
pub mod leader;
pub mod sim;
pub mod view;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bincode::{Decode, Encode};
use fifty_shared::experiment::{self as shared_exp, ExperimentDef, ExperimentReport};
use fifty_shared::ids::HostName;

use crate::coordinator::{Coordinator, OpError};
use crate::state::{Applied, ApplyResult, Command, Rejection};
use crate::store::{Batch, Store, StoreError};

/// An experiment's definition and history.
#[derive(Clone, Debug, Encode, Decode)]
pub struct ExperimentRecord {
    /// Its name.
    pub name: String,
    /// Assignment salt (random at creation).
    pub salt: String,
    /// Variant names, the control first.
    pub variants: Vec<String>,
    /// Current weights, one per variant.
    pub weights: Vec<u32>,
    /// The weights it was created with (epoch 0; each ramp starts the next epoch).
    pub initial_weights: Vec<u32>,
    /// Bucket → variant (see `fifty_shared::experiment`).
    pub slots: Vec<u8>,
    /// Label selector of the hosts that serve it (empty: every host).
    pub hosts: String,
    /// The metric event.
    pub metric: String,
    /// When it was created, and by whom.
    pub created_at: SystemTime,
    /// Who created it.
    pub created_by: String,
    /// Every ramp: when, and the weights it set.
    pub ramps: Vec<(SystemTime, Vec<u32>)>,
    /// When it stopped, and the variant everyone gets since (and whether it was named the winner).
    pub stopped: Option<Stop>,
}

/// When an experiment with scheduled looks is judged (a group-sequential test rather than the
/// always-valid one): look k at `created_at + k · every`. Stored in its own record beside the
/// experiment's (`exp/schedule/<name>`), never inside [`ExperimentRecord`], whose layout older
/// coordinators must still read; absent means no schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Schedule {
    /// How many looks (the last spends what is left of alpha).
    pub looks: u32,
    /// Time between looks.
    pub every: Duration,
}

/// Most looks a schedule may have.
pub const MAX_LOOKS: u32 = 100;

impl Schedule {
    /// Checks what a user asked for: `looks` 1 to [`MAX_LOOKS`], `look_every` a duration of at least
    /// one second (`"1d"`, `"12h"`); both or neither.
    pub fn parse(looks: Option<u32>, every: Option<&str>) -> Result<Option<Schedule>, String> {
        match (looks, every) {
            (None, None) => Ok(None),
            (Some(_), None) => Err("look_every: give the time between scheduled looks too, e.g. \"1d\"".into()),
            (None, Some(_)) => Err("looks: give the number of scheduled looks too, e.g. 14".into()),
            (Some(l), Some(_)) if l == 0 || l > MAX_LOOKS => {
                Err(format!("looks: {l} is out of range; give 1 to {MAX_LOOKS}"))
            }
            (Some(looks), Some(e)) => {
                let every = humantime::parse_duration(e.trim())
                    .map_err(|err| format!("look_every: {e:?} is not a duration like \"1d\" or \"12h\" ({err})"))?;
                if every < Duration::from_secs(1) {
                    return Err(format!("look_every: {e:?} is under one second"));
                }
                if every.checked_mul(looks).is_none_or(|d| d > Duration::from_secs(10 * 365 * 86_400)) {
                    return Err(format!("look_every: {looks} looks of {e} run past ten years"));
                }
                Ok(Some(Schedule { looks, every }))
            }
        }
    }

    /// When look `k` (1-based) is due.
    pub fn due(&self, start: SystemTime, k: u32) -> SystemTime {
        start + self.every * k
    }
}

/// How an experiment ended.
#[derive(Clone, Debug, Encode, Decode)]
pub struct Stop {
    /// When.
    pub at: SystemTime,
    /// The variant every unit gets now.
    pub variant: u8,
    /// Whether someone named it the winner (otherwise it is the control by default).
    pub winner: bool,
}

impl ExperimentRecord {
    /// What agents need of it.
    pub fn def(&self) -> ExperimentDef {
        ExperimentDef {
            name: self.name.clone(),
            salt: self.salt.clone(),
            variants: self.variants.clone(),
            slots: self.slots.clone().into(),
            metric: self.metric.clone(),
            stopped: self.stopped.as_ref().map(|s| s.variant),
            epoch: self.ramps.len() as u32,
        }
    }

    /// The weights in force during `epoch`.
    pub fn weights_of(&self, epoch: u32) -> &[u32] {
        match epoch {
            0 => &self.initial_weights,
            e => self.ramps.get(e as usize - 1).map_or(&self.weights, |(_, w)| w),
        }
    }
}

/// One variant's running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Encode, Decode)]
pub struct TotalsRecord {
    /// Units exposed.
    pub exposed: u64,
    /// Exposed units that converted.
    pub converted: u64,
    /// Sum of exposed units' values.
    pub value_sum: f64,
    /// Sum of their squares.
    pub value_sumsq: f64,
}

impl From<TotalsRecord> for analysis::Totals {
    fn from(t: TotalsRecord) -> Self {
        analysis::Totals {
            exposed: t.exposed,
            converted: t.converted,
            value_sum: t.value_sum,
            value_sumsq: t.value_sumsq,
        }
    }
}

/// An experiment's counts, kept apart from the definition so a report rewrites only this.
#[derive(Clone, Debug, Default, Encode, Decode)]
pub struct StatsRecord {
    /// Per variant.
    pub totals: Vec<TotalsRecord>,
    /// Units known (exposed or only tracked so far).
    pub units: u64,
    /// Observations agents dropped at their memory cap.
    pub dropped: u64,
    /// Agent reports applied.
    pub reports: u64,
    /// When the last one was applied.
    pub last_report: Option<SystemTime>,
    /// Units first exposed per epoch (see `ExperimentDef::epoch`), per variant: what the
    /// sample-ratio check compares with each epoch's weights.
    pub first_exposed: Vec<Vec<u64>>,
}

/// What an experiment created by state version 4 keeps beside its counts
/// (`exp/running/<name>`): its scheduled looks and where its evidence peaked. A record of its
/// own so that [`StatsRecord`] keeps the layout older coordinators read. Only
/// `Command::CreateExperimentV4` writes the first one, and the leader proposes that only once
/// every voter runs version 4: so every coordinator that applies a report keeps these alike
/// (one still on version 3 could not, and the state digests would differ). An experiment
/// without one (created before) shows the p-value and interval of now, as version 3 did.
/// At most [`MAX_LOOKS`] looks of `MAX_VARIANTS` totals and a peak per variant (about 60 KB),
/// well under `store::MAX_RECORD`, which `Batch::put` checks as for every record.
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
pub struct RunningRecord {
    /// With a schedule: every variant's totals at each look taken, the first first.
    pub looks: Vec<Vec<TotalsRecord>>,
    /// Per variant (the control's entry stays empty): where the always-valid test's evidence was
    /// strongest so far, for the running minimum p-value and the intersection of intervals.
    pub peaks: Vec<Peaks>,
}

/// Totals of the control and of a variant, as they were at one moment.
pub type PairRecord = [TotalsRecord; 2];

/// The moments at which one metric's always-valid comparison was at its strongest: the lowest
/// p-value, the highest lower end and the lowest upper end of the interval. The totals are kept
/// rather than the figures so that every coordinator stores the same bits (the figures go through
/// `ln` and `exp`, whose last bit may differ between machines; the totals are exact).
#[derive(Clone, Copy, Debug, PartialEq, Encode, Decode)]
pub struct Peak {
    /// Where the p-value was lowest.
    pub p: PairRecord,
    /// Where the interval's lower end was highest.
    pub lo: PairRecord,
    /// Where the interval's upper end was lowest.
    pub hi: PairRecord,
}

/// A variant's peaks, per metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Encode, Decode)]
pub struct Peaks {
    /// Conversion.
    pub conversion: Option<Peak>,
    /// Value per unit.
    pub value: Option<Peak>,
}

impl Peak {
    /// The comparisons at the three moments, by `metric` (0 conversion, 1 value).
    fn comparisons(&self, metric: usize, s: &analysis::Settings) -> [Option<analysis::Comparison>; 3] {
        [self.p, self.lo, self.hi].map(|[c, v]| {
            let (conv, value) = analysis::comparisons(&c.into(), &v.into(), s);
            if metric == 0 {
                conv
            } else {
                value
            }
        })
    }

    /// The running minimum p-value and the intersection of the intervals, including `now`.
    pub fn running(&self, metric: usize, now: &analysis::Comparison, s: &analysis::Settings) -> (f64, (f64, f64)) {
        let [p, lo, hi] = self.comparisons(metric, s);
        let p_min = p.map_or(now.p_value, |p| p.p_value.min(now.p_value));
        let lo = lo.map_or(now.diff_ci.0, |c| c.diff_ci.0.max(now.diff_ci.0));
        let hi = hi.map_or(now.diff_ci.1, |c| c.diff_ci.1.min(now.diff_ci.1));
        (p_min, (lo, hi))
    }
}

/// Moves `peak` to `pair` where the comparison there is stronger (state-machine side, after each
/// report: every coordinator makes the same choice).
fn update_peak(peak: &mut Option<Peak>, pair: PairRecord, metric: usize, s: &analysis::Settings) {
    let (conv, value) = analysis::comparisons(&pair[0].into(), &pair[1].into(), s);
    let Some(now) = (if metric == 0 { conv } else { value }) else { return };
    let Some(old) = peak else {
        *peak = Some(Peak { p: pair, lo: pair, hi: pair });
        return;
    };
    let [p, lo, hi] = old.comparisons(metric, s);
    if p.is_none_or(|p| now.p_value < p.p_value) {
        old.p = pair;
    }
    if lo.is_none_or(|c| now.diff_ci.0 > c.diff_ci.0) {
        old.lo = pair;
    }
    if hi.is_none_or(|c| now.diff_ci.1 < c.diff_ci.1) {
        old.hi = pair;
    }
}

/// What the cluster knows of one unit in one experiment.
#[derive(Clone, Copy, Debug, PartialEq, Encode, Decode)]
pub struct UnitRecord {
    /// The variant it was first seen in (a later ramp may move it; it stays counted here).
    pub variant: u8,
    /// It was exposed.
    pub exposed: bool,
    /// It converted.
    pub converted: bool,
    /// Sum of its metric values.
    pub value: f64,
}

/// The last agent report applied for a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ReportMark {
    /// The agent process's boot id.
    pub boot: u64,
    /// The report's sequence number.
    pub seq: u64,
}

// ---- applying commands (called from `state::Machine`, deterministic) -------------------------

/// Most experiments the cluster keeps (running or stopped, until deleted): each is pushed to
/// every host it selects, and a host's definitions travel in one message under the frame cap.
pub const MAX_EXPERIMENTS: usize = 500;

/// `Command::CreateExperiment` (state version 1: no schedule, no running record).
pub(crate) fn apply_create(store: &Store, rec: &ExperimentRecord, batch: &mut Batch) -> ApplyResult {
    apply_create_v4(store, rec, None, false, batch)
}

/// `Command::CreateExperimentV4`: also the schedule, if any, and an empty running record.
pub(crate) fn apply_create_v4(
    store: &Store,
    rec: &ExperimentRecord,
    schedule: Option<Schedule>,
    running: bool,
    batch: &mut Batch,
) -> ApplyResult {
    if store.experiment(&rec.name)?.is_some() {
        return Ok(Err(Rejection::ExperimentExists(rec.name.clone())));
    }
    if store.experiment_count()? >= MAX_EXPERIMENTS {
        return Ok(Err(Rejection::TooManyExperiments(MAX_EXPERIMENTS)));
    }
    batch.put_experiment(rec);
    batch.put_experiment_stats(
        &rec.name,
        &StatsRecord { totals: vec![TotalsRecord::default(); rec.variants.len()], ..Default::default() },
    );
    if let Some(s) = &schedule {
        batch.put_experiment_schedule(&rec.name, s);
    }
    if running {
        batch.put_experiment_running(&rec.name, &RunningRecord::default());
    }
    Ok(Ok(Applied::Done))
}

/// `Command::RampExperiment`: the new slot table is computed here from the stored one.
pub(crate) fn apply_ramp(store: &Store, name: &str, weights: &[u32], at: SystemTime, batch: &mut Batch) -> ApplyResult {
    let Some(mut rec) = store.experiment(name)? else {
        return Ok(Err(Rejection::UnknownExperiment(name.to_string())));
    };
    if rec.stopped.is_some() {
        return Ok(Err(Rejection::ExperimentStopped(name.to_string())));
    }
    if weights.len() != rec.variants.len() || weights.iter().all(|w| *w == 0) {
        return Ok(Err(Rejection::ExperimentVariants(name.to_string())));
    }
    rec.slots = shared_exp::ramp(&rec.slots, weights);
    rec.weights = weights.to_vec();
    rec.ramps.push((at, weights.to_vec()));
    batch.put_experiment(&rec);
    Ok(Ok(Applied::Done))
}

/// `Command::StopExperiment`.
pub(crate) fn apply_stop(
    store: &Store,
    name: &str,
    winner: Option<u8>,
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    let Some(mut rec) = store.experiment(name)? else {
        return Ok(Err(Rejection::UnknownExperiment(name.to_string())));
    };
    if rec.stopped.is_some() {
        return Ok(Err(Rejection::ExperimentStopped(name.to_string())));
    }
    rec.stopped = Some(Stop { at, variant: winner.unwrap_or(0), winner: winner.is_some() });
    batch.put_experiment(&rec);
    Ok(Ok(Applied::Done))
}

/// `Command::DeleteExperiment`: a stopped experiment goes with its counts and unit records.
pub(crate) fn apply_delete(store: &Store, name: &str, batch: &mut Batch) -> ApplyResult {
    let Some(rec) = store.experiment(name)? else {
        return Ok(Err(Rejection::UnknownExperiment(name.to_string())));
    };
    if rec.stopped.is_none() {
        return Ok(Err(Rejection::ExperimentRunning(name.to_string())));
    }
    batch.remove_experiment(name);
    for key in store.experiment_unit_keys(name)? {
        batch.remove_raw(&key);
    }
    Ok(Ok(Applied::Done))
}

/// One unit while a report is merged: its record before, its record after, and the (epoch, variant)
/// of its first exposure in the report.
type Merge = (Option<UnitRecord>, UnitRecord, Option<(u32, u8)>);

/// An agent's report without the units whose value no honest sidecar sends (not finite, or past
/// [`shared_exp::MAX_VALUE`], which the sidecar refuses): merged, one would make a sum or a sum of
/// squares infinite and wreck the experiment's totals. Each such unit is counted as dropped, the
/// same way on every coordinator. Borrowed unchanged when every value is sound.
fn sanitized(report: &ExperimentReport) -> std::borrow::Cow<'_, ExperimentReport> {
    let sound = |u: &shared_exp::UnitSeen| u.value.is_finite() && u.value.abs() <= shared_exp::MAX_VALUE;
    if report.experiments.iter().all(|part| part.units.iter().all(sound)) {
        return std::borrow::Cow::Borrowed(report);
    }
    let mut clean = report.clone();
    for part in &mut clean.experiments {
        let before = part.units.len();
        part.units.retain(sound);
        part.dropped = part.dropped.saturating_add((before - part.units.len()) as u64);
    }
    std::borrow::Cow::Owned(clean)
}

/// `Command::RecordExperimentReport`: merges an agent's report into the units and totals, once.
pub(crate) fn apply_report(
    store: &Store,
    host: &HostName,
    report: &ExperimentReport,
    at: SystemTime,
    batch: &mut Batch,
) -> ApplyResult {
    let report = &*sanitized(report);
    if let Some(mark) = store.report_mark(host)? {
        if mark.boot == report.boot && mark.seq >= report.seq {
            return Ok(Ok(Applied::Done));
        }
    }
    batch.put_report_mark(host, &ReportMark { boot: report.boot, seq: report.seq });
    for part in &report.experiments {
        let Some(rec) = store.experiment(&part.name)? else { continue };
        if rec.stopped.is_some() {
            continue;
        }
        let mut stats = store.experiment_stats(&part.name)?.unwrap_or_default();
        stats.totals.resize(rec.variants.len(), TotalsRecord::default());
        stats.dropped += part.dropped;
        stats.reports += 1;
        stats.last_report = Some(at);
        // Absent for experiments created before state version 4 (see `RunningRecord`).
        let mut running = store.experiment_running(&part.name)?;
        // A scheduled look takes the totals as they were when it fell due: before the first report
        // applied after that time.
        if let (Some(run), Some(schedule)) = (running.as_mut(), store.experiment_schedule(&part.name)?) {
            while (run.looks.len() as u32) < schedule.looks
                && at >= schedule.due(rec.created_at, run.looks.len() as u32 + 1)
            {
                run.looks.push(stats.totals.clone());
            }
        }
        // By unit, in order: the float sums below must be added in the same order on every
        // coordinator (a HashMap's order differs between processes, and so would the sums).
        let mut merged: BTreeMap<u64, Merge> = BTreeMap::new();
        for seen in &part.units {
            if seen.variant as usize >= rec.variants.len() || !seen.value.is_finite() {
                continue;
            }
            let entry = match merged.entry(seen.unit) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let before = store.experiment_unit(&part.name, seen.unit)?;
                    let start = before.unwrap_or(UnitRecord {
                        variant: seen.variant,
                        exposed: false,
                        converted: false,
                        value: 0.0,
                    });
                    e.insert((before, start, None))
                }
            };
            if seen.exposed && entry.2.is_none() {
                entry.2 = Some((seen.epoch, seen.variant));
            }
            entry.1.exposed |= seen.exposed;
            entry.1.converted |= seen.converted;
            entry.1.value += seen.value;
        }
        for (unit, (before, after, exposure)) in merged {
            if before.is_none() {
                stats.units += 1;
            }
            let was = before.filter(|b| b.exposed);
            let t = &mut stats.totals[after.variant as usize];
            if after.exposed {
                let (old_conv, old_value) = was.map_or((false, 0.0), |b| (b.converted, b.value));
                if was.is_none() {
                    t.exposed += 1;
                    if let Some((epoch, variant)) = exposure.filter(|(e, _)| (*e as usize) <= rec.ramps.len()) {
                        let e = epoch as usize;
                        if stats.first_exposed.len() <= e {
                            stats.first_exposed.resize(e + 1, vec![0; rec.variants.len()]);
                        }
                        stats.first_exposed[e][variant as usize] += 1;
                    }
                }
                if after.converted && !old_conv {
                    t.converted += 1;
                }
                t.value_sum += after.value - old_value;
                t.value_sumsq += after.value * after.value - old_value * old_value;
            }
            batch.put_experiment_unit(&part.name, unit, &after);
        }
        if let Some(mut run) = running {
            let settings = analysis::Settings::default();
            run.peaks.resize(rec.variants.len(), Peaks::default());
            for i in 1..rec.variants.len() {
                let pair = [stats.totals[0], stats.totals[i]];
                update_peak(&mut run.peaks[i].conversion, pair, 0, &settings);
                update_peak(&mut run.peaks[i].value, pair, 1, &settings);
            }
            batch.put_experiment_running(&part.name, &run);
        }
        batch.put_experiment_stats(&part.name, &stats);
    }
    Ok(Ok(Applied::Done))
}

// ---- operations (the API's handlers call these) ----------------------------------------------

impl Coordinator {
    /// Creates an experiment.
    pub async fn create_experiment(
        &self,
        req: view::CreateExperiment,
        by: &str,
    ) -> Result<view::ExperimentView, OpError> {
        if !shared_exp::valid_name(&req.name) {
            return Err(OpError::BadRequest(format!(
                "experiment name {:?}: use 1-64 of a-z, 0-9, '_' and '-'",
                req.name
            )));
        }
        let variants =
            shared_exp::parse_variants(&req.variants).map_err(|e| OpError::BadRequest(format!("variants: {e}")))?;
        let hosts = req.hosts.unwrap_or_default();
        if !hosts.trim().is_empty() && hosts.split(',').any(|kv| !kv.contains('=')) {
            return Err(OpError::BadRequest(format!("hosts: {hosts:?} is not a label selector like \"role=prod\"")));
        }
        let metric = req.metric.unwrap_or_else(|| "conversion".into());
        if !shared_exp::valid_name(&metric) {
            return Err(OpError::BadRequest(format!("metric {metric:?}: use 1-64 of a-z, 0-9, '_' and '-'")));
        }
        let salt = match req.salt {
            Some(s) if s.is_empty() || s.len() > 64 => {
                return Err(OpError::BadRequest("salt: give 1 to 64 characters, or none for a random one".into()))
            }
            Some(s) => s,
            None => hex::encode(rand::random::<[u8; 8]>()),
        };
        let schedule = Schedule::parse(req.looks, req.look_every.as_deref()).map_err(OpError::BadRequest)?;
        let weights: Vec<u32> = variants.iter().map(|(_, w)| *w).collect();
        let now = SystemTime::now();
        let rec = ExperimentRecord {
            name: req.name.clone(),
            salt,
            variants: variants.into_iter().map(|(n, _)| n).collect(),
            slots: shared_exp::initial_slots(&weights),
            initial_weights: weights.clone(),
            weights,
            hosts: hosts.trim().to_string(),
            metric,
            created_at: now,
            created_by: by.to_string(),
            ramps: Vec::new(),
            stopped: None,
        };
        // A schedule needs state version 4 on every voter (refused with "upgrade every
        // coordinator first" until then). Without one, version 4's command still brings the
        // running minimum p-value; while some voter is older, the version 1 command works.
        let v4 = Command::CreateExperimentV4 { experiment: rec.clone(), schedule };
        match self.consensus.propose(v4).await {
            Err(crate::consensus::ConsensusError::NotUpgraded { .. }) if schedule.is_none() => {
                self.consensus.propose(Command::CreateExperiment(rec)).await??
            }
            other => other??,
        };
        self.experiments_wake.notify_one();
        self.experiment(&req.name)
    }

    /// Moves an experiment's weights; only units of shrinking variants move.
    pub async fn ramp_experiment(&self, name: &str, variants: &str) -> Result<view::ExperimentView, OpError> {
        let rec = self.experiment_record(name)?;
        let asked = shared_exp::parse_variants(variants).map_err(|e| OpError::BadRequest(format!("variants: {e}")))?;
        let mut weights = Vec::new();
        for v in &rec.variants {
            match asked.iter().find(|(n, _)| n == v) {
                Some((_, w)) => weights.push(*w),
                None => return Err(OpError::BadRequest(format!("variants: give a weight for {v} (it may be 0)"))),
            }
        }
        if let Some((n, _)) = asked.iter().find(|(n, _)| !rec.variants.contains(n)) {
            return Err(OpError::BadRequest(format!("variants: {name} has no variant {n}")));
        }
        let cmd = Command::RampExperiment { name: name.to_string(), weights, at: SystemTime::now() };
        self.consensus.propose(cmd).await??;
        self.experiments_wake.notify_one();
        self.experiment(name)
    }

    /// Stops an experiment; every unit gets `winner` (or the control) from now on.
    pub async fn stop_experiment(&self, name: &str, winner: Option<&str>) -> Result<view::ExperimentView, OpError> {
        let rec = self.experiment_record(name)?;
        let winner = match winner {
            None => None,
            Some(w) => match rec.variants.iter().position(|v| v == w) {
                Some(i) => Some(i as u8),
                None => {
                    return Err(OpError::BadRequest(format!(
                        "winner: {name} has no variant {w} (it has {})",
                        rec.variants.join(", ")
                    )))
                }
            },
        };
        self.consensus
            .propose(Command::StopExperiment { name: name.to_string(), winner, at: SystemTime::now() })
            .await??;
        self.experiments_wake.notify_one();
        self.experiment(name)
    }

    /// Deletes a stopped experiment: its definition, counts and unit records. Agents stop serving
    /// it (the sidecar answers 404 for it), so only delete what no code asks for any more.
    pub async fn delete_experiment(&self, name: &str) -> Result<(), OpError> {
        self.consensus.propose(Command::DeleteExperiment { name: name.to_string() }).await??;
        self.experiments_wake.notify_one();
        Ok(())
    }

    fn experiment_record(&self, name: &str) -> Result<ExperimentRecord, OpError> {
        self.consensus
            .store()
            .experiment(name)?
            .ok_or_else(|| OpError::NotFound(format!("no experiment named {name:?}; see `fifty experiment list`")))
    }

    /// One experiment with its analysis.
    pub fn experiment(&self, name: &str) -> Result<view::ExperimentView, OpError> {
        let rec = self.experiment_record(name)?;
        let store = self.consensus.store();
        let stats = store.experiment_stats(name)?.unwrap_or_default();
        let schedule = store.experiment_schedule(name)?;
        let running = store.experiment_running(name)?.unwrap_or_default();
        Ok(view::experiment_view(&rec, schedule, &stats, &running, &analysis::Settings::default()))
    }

    /// Every experiment, oldest first.
    pub fn experiments(&self) -> Result<Vec<view::ExperimentSummary>, StoreError> {
        let store = self.consensus.store();
        let mut out = Vec::new();
        for rec in store.experiments()? {
            let stats = store.experiment_stats(&rec.name)?.unwrap_or_default();
            out.push(view::summary(&rec, &stats));
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fifty_shared::experiment::{ExperimentUnits, UnitSeen};

    fn store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fifty-exp-{}-{}", std::process::id(), rand::random::<u64>()));
        (Store::open(&dir).unwrap(), dir)
    }

    fn apply(store: &Store, f: impl FnOnce(&mut Batch) -> ApplyResult) -> Result<Applied, Rejection> {
        let mut batch = Batch::default();
        let out = f(&mut batch).unwrap();
        store.apply(batch).unwrap();
        out
    }

    fn record() -> ExperimentRecord {
        ExperimentRecord {
            name: "checkout".into(),
            salt: "salt".into(),
            variants: vec!["control".into(), "new_checkout".into()],
            weights: vec![50, 50],
            initial_weights: vec![50, 50],
            slots: shared_exp::initial_slots(&[50, 50]),
            hosts: "role=prod".into(),
            metric: "conversion".into(),
            created_at: SystemTime::UNIX_EPOCH,
            created_by: "test".into(),
            ramps: vec![],
            stopped: None,
        }
    }

    fn seen(unit: u64, variant: u8, exposed: bool, converted: bool, value: f64) -> UnitSeen {
        UnitSeen { unit, variant, exposed, converted, value, epoch: 0 }
    }

    fn report(boot: u64, seq: u64, units: Vec<UnitSeen>) -> ExperimentReport {
        ExperimentReport {
            boot,
            seq,
            experiments: vec![ExperimentUnits { name: "checkout".into(), units, dropped: 0 }],
        }
    }

    #[test]
    fn a_unit_seen_on_two_hosts_counts_once_and_a_repeated_report_changes_nothing() {
        let (s, _dir) = store();
        let now = SystemTime::now();
        apply(&s, |b| apply_create(&s, &record(), b)).unwrap();
        let (a, b) = (HostName::new("web-1").unwrap(), HostName::new("web-2").unwrap());
        let r1 = report(7, 1, vec![seen(1, 0, true, false, 0.0), seen(2, 1, true, true, 5.0)]);
        apply(&s, |batch| apply_report(&s, &a, &r1, now, batch)).unwrap();
        // Host b sees unit 1 again (exposed and converting) and unit 2 again with more value.
        let r2 =
            report(9, 1, vec![seen(1, 0, true, true, 2.0), seen(2, 1, false, true, 3.0), seen(3, 1, false, true, 1.0)]);
        apply(&s, |batch| apply_report(&s, &b, &r2, now, batch)).unwrap();
        // The same report again (its ack was lost in a failover): no change.
        apply(&s, |batch| apply_report(&s, &b, &r2, now, batch)).unwrap();
        let stats = s.experiment_stats("checkout").unwrap().unwrap();
        assert_eq!(stats.units, 3);
        assert_eq!(stats.totals[0], TotalsRecord { exposed: 1, converted: 1, value_sum: 2.0, value_sumsq: 4.0 });
        assert_eq!(stats.totals[1], TotalsRecord { exposed: 1, converted: 1, value_sum: 8.0, value_sumsq: 64.0 });
        // Unit 3 was only tracked: it counts once it is exposed.
        let r3 = report(7, 2, vec![seen(3, 1, true, false, 0.0)]);
        apply(&s, |batch| apply_report(&s, &a, &r3, now, batch)).unwrap();
        let stats = s.experiment_stats("checkout").unwrap().unwrap();
        assert_eq!(stats.totals[1], TotalsRecord { exposed: 2, converted: 2, value_sum: 9.0, value_sumsq: 65.0 });
        assert_eq!(stats.first_exposed, vec![vec![1, 2]], "first exposures by epoch and variant");
        assert_eq!(stats.reports, 3, "the repeated report is not counted");
    }

    /// Two coordinators applying the same report end with the same bits: the value sums are
    /// added in unit order, not a hash map's (whose order differs between maps and processes),
    /// so the whole state's digest agrees too.
    #[test]
    fn applying_a_report_is_deterministic_to_the_bit() {
        let now = SystemTime::now();
        let web = HostName::new("web-1").unwrap();
        // Values whose floating-point sum depends on the order they are added in.
        let units: Vec<UnitSeen> =
            (0..2000u64).map(|u| seen(u * 7919, (u % 2) as u8, true, true, 1.0 / (u as f64 + 3.0) * 1e8)).collect();
        let r = report(7, 1, units);
        let mut results = Vec::new();
        for _ in 0..4 {
            let (s, _dir) = store();
            apply(&s, |b| apply_create(&s, &record(), b)).unwrap();
            apply(&s, |batch| apply_report(&s, &web, &r, now, batch)).unwrap();
            let stats = s.experiment_stats("checkout").unwrap().unwrap();
            let sums: Vec<(u64, u64)> =
                stats.totals.iter().map(|t| (t.value_sum.to_bits(), t.value_sumsq.to_bits())).collect();
            results.push((sums, s.state_digest().unwrap()));
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    }

    /// `n` units of each arm starting at id `first`, of which `conv` converted (value 1 each).
    fn arms(first: u64, n: u64, conv: [u64; 2]) -> Vec<UnitSeen> {
        (0..2u8)
            .flat_map(|arm| {
                (0..n).map(move |i| {
                    let converted = i < conv[arm as usize];
                    seen(first + u64::from(arm) * n + i, arm, true, converted, if converted { 1.0 } else { 0.0 })
                })
            })
            .collect()
    }

    #[test]
    fn scheduled_looks_take_the_totals_as_they_were_when_due_and_decide_the_verdict() {
        let (s, _dir) = store();
        let mut rec = record();
        rec.created_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let schedule = Some(Schedule { looks: 3, every: Duration::from_secs(86_400) });
        apply(&s, |b| apply_create_v4(&s, &rec, schedule, true, b)).unwrap();
        assert_eq!(s.experiment_schedule("checkout").unwrap(), schedule);
        let day = |d: f64| rec.created_at + Duration::from_secs_f64(d * 86_400.0);
        let web = HostName::new("web-1").unwrap();
        let running = || s.experiment_running("checkout").unwrap().unwrap();
        // Day 0.5: 1,000 units an arm, the variant converting twice as often.
        apply(&s, |b| apply_report(&s, &web, &report(7, 1, arms(0, 1000, [100, 200])), day(0.5), b)).unwrap();
        let first = s.experiment_stats("checkout").unwrap().unwrap().totals;
        assert!(running().looks.is_empty(), "no look is due yet");
        // Day 1.5: look 1 fell due at day 1; it holds the totals from before this report.
        apply(&s, |b| apply_report(&s, &web, &report(7, 2, arms(10_000, 1000, [100, 100])), day(1.5), b)).unwrap();
        assert_eq!(running().looks, vec![first]);
        // Day 3.2: looks 2 and 3 both fell due with no report between: the same totals.
        apply(&s, |b| apply_report(&s, &web, &report(7, 3, arms(20_000, 10, [1, 1])), day(3.2), b)).unwrap();
        let run = running();
        assert_eq!(run.looks.len(), 3);
        assert_eq!(run.looks[1], run.looks[2]);
        assert_eq!(run.looks[1][0].exposed, 2000);
        // Past the schedule: no more looks.
        apply(&s, |b| apply_report(&s, &web, &report(7, 4, arms(30_000, 10, [1, 1])), day(9.0), b)).unwrap();
        let stats = s.experiment_stats("checkout").unwrap().unwrap();
        let run = running();
        assert_eq!(run.looks.len(), 3);

        let v = view::experiment_view(&rec, schedule, &stats, &run, &analysis::Settings::default());
        let sched = v.schedule.as_ref().unwrap();
        assert_eq!((sched.looks, sched.taken, sched.next_look_at.as_deref()), (3, 3, None));
        let conv = v.variants[1].scheduled_conversion.as_ref().unwrap();
        assert_eq!(conv.looks.len(), 3);
        // 10% against 20% at 1,000 an arm: z ≈ 6.3 crosses the first boundary (3.71 for thirds).
        assert_eq!(conv.crossed_at, Some(1), "{conv:?}");
        assert!((conv.looks[0].bound.unwrap() - 3.7103).abs() < 1e-3, "{conv:?}");
        assert!(conv.looks[2].bound.is_none(), "look 3 brought no new units: {conv:?}");
        assert_eq!(conv.looks[2].alpha_spent, conv.looks[1].alpha_spent, "and so spent nothing");
        let [lo, hi] = conv.diff_ci.unwrap();
        assert!(lo > 0.0 && lo < hi, "{conv:?}");
        assert_eq!(v.variants[1].verdict, "win");
        assert_eq!(v.winner.as_deref(), Some("new_checkout"));
    }

    #[test]
    fn a_schedule_is_checked_and_a_bad_one_names_its_field() {
        let day = Duration::from_secs(86_400);
        assert_eq!(Schedule::parse(Some(14), Some("1d")), Ok(Some(Schedule { looks: 14, every: day })));
        assert_eq!(Schedule::parse(None, None), Ok(None));
        for (looks, every, field) in [
            (Some(14), None, "look_every"),
            (None, Some("1d"), "looks"),
            (Some(0), Some("1d"), "looks"),
            (Some(101), Some("1d"), "looks"),
            (Some(14), Some("daily"), "look_every"),
            (Some(14), Some("10ms"), "look_every"),
            (Some(100), Some("100y"), "look_every"),
        ] {
            let err = Schedule::parse(looks, every).unwrap_err();
            assert!(err.starts_with(&format!("{field}: ")), "{looks:?} {every:?}: {err}");
        }
    }

    #[test]
    fn the_always_valid_p_value_is_the_running_minimum_and_the_interval_the_intersection() {
        let (s, _dir) = store();
        apply(&s, |b| apply_create_v4(&s, &record(), None, true, b)).unwrap();
        assert_eq!(s.experiment_schedule("checkout").unwrap(), None);
        let web = HostName::new("web-1").unwrap();
        let now = SystemTime::now();
        let running = || s.experiment_running("checkout").unwrap().unwrap();
        // First a clear lift, then units that take it back: the totals end equal.
        apply(&s, |b| apply_report(&s, &web, &report(7, 1, arms(0, 3000, [300, 420])), now, b)).unwrap();
        let early = view::experiment_view(
            &record(),
            None,
            &s.experiment_stats("checkout").unwrap().unwrap(),
            &running(),
            &analysis::Settings::default(),
        );
        let early = early.variants[1].conversion.clone().unwrap();
        assert!(early.p_value < 0.05, "{early:?}");
        apply(&s, |b| apply_report(&s, &web, &report(7, 2, arms(10_000, 3000, [300, 180])), now, b)).unwrap();
        let stats = s.experiment_stats("checkout").unwrap().unwrap();
        let run = running();
        let v = view::experiment_view(&record(), None, &stats, &run, &analysis::Settings::default());
        let c = v.variants[1].conversion.clone().unwrap();
        assert_eq!(c.diff, 0.0);
        assert!(c.p_value > 0.5, "{c:?}");
        assert_eq!(c.p_value_min, early.p_value, "the lowest p-value seen stays");
        assert!(c.significant && v.variants[1].verdict == "win", "{v:?}");
        assert_eq!(c.diff_ci_intersection[0], early.diff_ci[0], "the highest lower end stays");
        assert!(c.diff_ci_intersection[1] <= c.diff_ci[1] && c.diff_ci_intersection[1] <= early.diff_ci[1]);
        // The state keeps the totals where the evidence peaked, not figures from `ln` and `exp`.
        assert_eq!(
            run.peaks[1].conversion.unwrap().p[1],
            TotalsRecord { exposed: 3000, converted: 420, value_sum: 420.0, value_sumsq: 420.0 }
        );
    }

    /// An experiment created by the version 1 command (while a voter still runs version 3) is
    /// stored and counted exactly as version 3 does: no schedule or running record, so a
    /// version 3 follower applying the same entries has the same state digest. Its view shows
    /// the p-value of now; deleting one created by version 4 leaves none of its records.
    #[test]
    fn the_version_1_create_writes_only_what_version_3_writes() {
        let (s, _dir) = store();
        apply(&s, |b| apply_create(&s, &record(), b)).unwrap();
        let web = HostName::new("web-1").unwrap();
        let now = SystemTime::now();
        apply(&s, |b| apply_report(&s, &web, &report(7, 1, arms(0, 3000, [300, 420])), now, b)).unwrap();
        apply(&s, |b| apply_report(&s, &web, &report(7, 2, arms(10_000, 3000, [300, 180])), now, b)).unwrap();
        assert_eq!(s.experiment_schedule("checkout").unwrap(), None);
        assert_eq!(s.experiment_running("checkout").unwrap(), None);
        let stats = s.experiment_stats("checkout").unwrap().unwrap();
        let v =
            view::experiment_view(&record(), None, &stats, &RunningRecord::default(), &analysis::Settings::default());
        let c = v.variants[1].conversion.clone().unwrap();
        assert_eq!(c.p_value_min, c.p_value, "no peaks kept: the p-value of now");
        assert!(v.schedule.is_none());

        let mut other = record();
        other.name = "scheduled".into();
        let schedule = Some(Schedule { looks: 3, every: Duration::from_secs(60) });
        apply(&s, |b| apply_create_v4(&s, &other, schedule, true, b)).unwrap();
        assert!(s.experiment_running("scheduled").unwrap().is_some());
        let stop = |b: &mut Batch| apply_stop(&s, "scheduled", None, now, b);
        apply(&s, stop).unwrap();
        apply(&s, |b| apply_delete(&s, "scheduled", b)).unwrap();
        assert_eq!(s.experiment_schedule("scheduled").unwrap(), None);
        assert_eq!(s.experiment_running("scheduled").unwrap(), None);
    }

    /// Records and a create command written by the previous release (main's layouts, copied
    /// here) still decode: an upgrade keeps every running experiment, and a version 3 follower
    /// reads a version 1 create from a version 4 leader (the same bytes both ways).
    #[test]
    fn records_and_the_create_command_of_the_previous_release_still_decode() {
        #[derive(Encode)]
        struct OldStop {
            at: SystemTime,
            variant: u8,
            winner: bool,
        }
        #[derive(Encode)]
        struct OldExperiment {
            name: String,
            salt: String,
            variants: Vec<String>,
            weights: Vec<u32>,
            initial_weights: Vec<u32>,
            slots: Vec<u8>,
            hosts: String,
            metric: String,
            created_at: SystemTime,
            created_by: String,
            ramps: Vec<(SystemTime, Vec<u32>)>,
            stopped: Option<OldStop>,
        }
        #[derive(Encode)]
        struct OldTotals {
            exposed: u64,
            converted: u64,
            value_sum: f64,
            value_sumsq: f64,
        }
        #[derive(Encode)]
        struct OldStats {
            totals: Vec<OldTotals>,
            units: u64,
            dropped: u64,
            reports: u64,
            last_report: Option<SystemTime>,
            first_exposed: Vec<Vec<u64>>,
        }
        use fifty_shared::codec;
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let old = || OldExperiment {
            name: "checkout".into(),
            salt: "s".into(),
            variants: vec!["control".into(), "new_checkout".into()],
            weights: vec![90, 10],
            initial_weights: vec![50, 50],
            slots: shared_exp::initial_slots(&[50, 50]),
            hosts: "*".into(),
            metric: "conversion".into(),
            created_at: at,
            created_by: "test".into(),
            ramps: vec![(at, vec![90, 10])],
            stopped: Some(OldStop { at, variant: 1, winner: true }),
        };
        let rec: ExperimentRecord = codec::from_bytes(&codec::to_bytes(&old()).unwrap()).unwrap();
        assert_eq!((rec.name.as_str(), rec.weights.as_slice(), rec.ramps.len()), ("checkout", &[90, 10][..], 1));
        let stop = rec.stopped.as_ref().unwrap();
        assert_eq!((stop.variant, stop.winner), (1, true));
        assert_eq!(codec::to_bytes(&rec).unwrap(), codec::to_bytes(&old()).unwrap(), "the same bytes both ways");
        let stats = OldStats {
            totals: vec![OldTotals { exposed: 10, converted: 2, value_sum: 2.5, value_sumsq: 3.25 }],
            units: 10,
            dropped: 1,
            reports: 4,
            last_report: Some(at),
            first_exposed: vec![vec![10, 0]],
        };
        let bytes = codec::to_bytes(&stats).unwrap();
        let new: StatsRecord = codec::from_bytes(&bytes).unwrap();
        assert_eq!(new.totals, vec![TotalsRecord { exposed: 10, converted: 2, value_sum: 2.5, value_sumsq: 3.25 }]);
        assert_eq!((new.units, new.dropped, new.reports, new.last_report), (10, 1, 4, Some(at)));
        assert_eq!(codec::to_bytes(&new).unwrap(), bytes, "the same bytes both ways");

        // The previous release's `Command::CreateExperiment`: variant 20 (bincode writes the
        // variant's index, then its fields), holding the record.
        let old_bytes = [codec::to_bytes(&20u32).unwrap(), codec::to_bytes(&old()).unwrap()].concat();
        let cmd: Command = codec::from_bytes(&old_bytes).unwrap();
        let Command::CreateExperiment(ref decoded) = cmd else { panic!("decoded as {cmd:?}") };
        assert_eq!(decoded.name, "checkout");
        assert_eq!(codec::to_bytes(&cmd).unwrap(), old_bytes, "a version 4 leader's bytes are version 3's");
        assert_eq!(cmd.since(), 1);
        let v4 = Command::CreateExperimentV4 { experiment: rec, schedule: None };
        assert_eq!(v4.since(), 4);
        assert!(v4.since() <= crate::state::STATE_VERSION);
    }

    #[test]
    fn values_no_sidecar_sends_are_dropped_and_counted_without_touching_the_totals() {
        let (s, _dir) = store();
        let now = SystemTime::now();
        apply(&s, |b| apply_create(&s, &record(), b)).unwrap();
        let web = HostName::new("web-1").unwrap();
        let units = vec![
            seen(1, 0, true, true, f64::INFINITY),
            seen(2, 0, true, true, f64::NAN),
            seen(3, 1, true, true, 1e308),
            seen(4, 1, true, true, -2e12),
            seen(5, 1, true, true, 4.0),
        ];
        apply(&s, |batch| apply_report(&s, &web, &report(7, 1, units), now, batch)).unwrap();
        let stats = s.experiment_stats("checkout").unwrap().unwrap();
        assert_eq!(stats.dropped, 4, "each bad unit is counted");
        assert_eq!(stats.units, 1);
        assert_eq!(stats.totals[0], TotalsRecord::default());
        assert_eq!(stats.totals[1], TotalsRecord { exposed: 1, converted: 1, value_sum: 4.0, value_sumsq: 16.0 });
        assert!(s.experiment_unit("checkout", 3).unwrap().is_none());
    }

    #[test]
    fn ramps_and_stops_are_checked() {
        let (s, _dir) = store();
        let now = SystemTime::now();
        apply(&s, |b| apply_create(&s, &record(), b)).unwrap();
        assert_eq!(apply(&s, |b| apply_create(&s, &record(), b)), Err(Rejection::ExperimentExists("checkout".into())));
        apply(&s, |b| apply_ramp(&s, "checkout", &[20, 80], now, b)).unwrap();
        let rec = s.experiment("checkout").unwrap().unwrap();
        assert_eq!(rec.slots.iter().filter(|&&v| v == 1).count(), 8000);
        assert_eq!(
            apply(&s, |b| apply_ramp(&s, "nope", &[20, 80], now, b)),
            Err(Rejection::UnknownExperiment("nope".into()))
        );
        apply(&s, |b| apply_stop(&s, "checkout", Some(1), now, b)).unwrap();
        assert_eq!(s.experiment("checkout").unwrap().unwrap().def().assign("anyone"), 1);
        assert_eq!(
            apply(&s, |b| apply_ramp(&s, "checkout", &[50, 50], now, b)),
            Err(Rejection::ExperimentStopped("checkout".into()))
        );
    }

    #[test]
    fn only_a_stopped_experiment_is_deleted_and_it_leaves_nothing_behind() {
        let (s, _dir) = store();
        let now = SystemTime::now();
        apply(&s, |b| apply_create(&s, &record(), b)).unwrap();
        let mut other = record();
        other.name = "checkout-2".into();
        apply(&s, |b| apply_create(&s, &other, b)).unwrap();
        let web = HostName::new("web-1").unwrap();
        let mut r = report(7, 1, vec![seen(1, 0, true, false, 0.0), seen(2, 1, true, true, 5.0)]);
        r.experiments.push(ExperimentUnits {
            name: "checkout-2".into(),
            units: vec![seen(1, 0, true, false, 0.0)],
            dropped: 0,
        });
        apply(&s, |batch| apply_report(&s, &web, &r, now, batch)).unwrap();
        assert_eq!(
            apply(&s, |b| apply_delete(&s, "checkout", b)),
            Err(Rejection::ExperimentRunning("checkout".into()))
        );
        apply(&s, |b| apply_stop(&s, "checkout", None, now, b)).unwrap();
        apply(&s, |b| apply_delete(&s, "checkout", b)).unwrap();
        assert!(s.experiment("checkout").unwrap().is_none() && s.experiment_stats("checkout").unwrap().is_none());
        assert!(s.experiment_unit_keys("checkout").unwrap().is_empty(), "its unit records are gone");
        assert_eq!(s.experiment_unit_keys("checkout-2").unwrap().len(), 1, "a name sharing the prefix keeps its own");
        assert_eq!(
            apply(&s, |b| apply_delete(&s, "checkout", b)),
            Err(Rejection::UnknownExperiment("checkout".into()))
        );
        // The name is free again, and starts from nothing.
        apply(&s, |b| apply_create(&s, &record(), b)).unwrap();
        assert_eq!(s.experiment_stats("checkout").unwrap().unwrap().units, 0);
        assert_eq!(s.experiment_count().unwrap(), 2);
    }

    #[test]
    fn the_cluster_keeps_a_bounded_number_of_experiments() {
        let (s, _dir) = store();
        let mut batch = Batch::default();
        for i in 0..MAX_EXPERIMENTS {
            let mut rec = record();
            rec.name = format!("e{i}");
            batch.put_experiment(&rec);
        }
        s.apply(batch).unwrap();
        assert_eq!(apply(&s, |b| apply_create(&s, &record(), b)), Err(Rejection::TooManyExperiments(MAX_EXPERIMENTS)));
        // Every definition a host could be sent fits one message, with room to spare.
        let defs: Vec<ExperimentDef> = s.experiments().unwrap().iter().map(|r| r.def()).collect();
        let bytes = fifty_shared::codec::to_bytes(&defs).unwrap();
        assert!(bytes.len() < fifty_shared::codec::MAX_FRAME / 4, "{} bytes", bytes.len());
    }
}
