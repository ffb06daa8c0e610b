//! A/B experiments as both sides see them: the definition the coordinator replicates and pushes to
//! agents, and the assignment every agent computes locally from it.
//!
//! Assignment is a pure function of (experiment salt, unit id): SHA-256 of both picks one of
//! [`BUCKETS`] buckets, and the definition's slot table says which variant owns that bucket. So the
//! same unit gets the same variant on every host and after restarts, with no coordination.
//!
//! Invariant (ramps): [`ramp`] only hands buckets from variants whose share shrinks to variants
//! whose share grows; a unit whose variant keeps or grows its share keeps its variant. That is why
//! the slot table lives in the replicated definition instead of being derived from the weights:
//! plain cumulative ranges over the weights would reshuffle units between unchanged variants.

use bincode::{Decode, Encode};
use sha2::{Digest, Sha256};

/// How many buckets a unit can fall in; a weight is honoured to 1/BUCKETS.
pub const BUCKETS: usize = 10_000;

/// Most variants an experiment may have.
pub const MAX_VARIANTS: usize = 16;

/// An experiment as agents need it to answer "which variant does this unit get?".
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ExperimentDef {
    /// Its name (`[a-z0-9_-]`, 1–64 characters).
    pub name: String,
    /// Random per experiment, so two experiments split the same units independently.
    pub salt: String,
    /// Variant names; the first is the control.
    pub variants: Vec<String>,
    /// [`BUCKETS`] entries: the index of the variant owning each bucket.
    pub slots: Slots,
    /// The event whose occurrence counts as a conversion (and whose value is summed per unit).
    pub metric: String,
    /// Once stopped, every unit gets this variant (the control if no winner was named), and no
    /// more exposures are counted.
    pub stopped: Option<u8>,
    /// How many ramps the slot table has seen (0 before the first): reports say which table
    /// assigned a unit, so the sample-ratio check compares each period with its own weights.
    pub epoch: u32,
}

impl ExperimentDef {
    /// The variant index `unit` gets.
    pub fn assign(&self, unit: &str) -> u8 {
        match self.stopped {
            Some(winner) => winner,
            None => self.slots.get(bucket(&self.salt, unit)).copied().unwrap_or(0),
        }
    }
}

/// The bucket of `unit` in an experiment with `salt`, in `0..BUCKETS`.
pub fn bucket(salt: &str, unit: &str) -> usize {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0]);
    h.update(unit.as_bytes());
    let x = u64::from_be_bytes(h.finalize()[..8].try_into().expect("a SHA-256 digest has 8 bytes"));
    ((x as u128 * BUCKETS as u128) >> 64) as usize
}

/// A unit id as agents report it: 64 bits of its SHA-256 (collisions among a million units: about
/// one chance in 36 million).
pub fn unit_hash(unit: &str) -> u64 {
    let d = Sha256::new().chain_update(b"unit\0").chain_update(unit.as_bytes()).finalize();
    u64::from_be_bytes(d[..8].try_into().expect("a SHA-256 digest has 8 bytes"))
}

/// Whether `name` can name an experiment (it appears in URLs).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Parses `control=50,new_checkout=50` into names and weights.
pub fn parse_variants(text: &str) -> Result<Vec<(String, u32)>, String> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, weight)) = part.split_once('=') else {
            return Err(format!("{part:?} is not NAME=WEIGHT, e.g. control=50"));
        };
        let name = name.trim();
        if !valid_name(name) {
            return Err(format!("variant name {name:?}: use 1-64 of a-z, 0-9, '_' and '-'"));
        }
        let weight: u32 =
            weight.trim().parse().map_err(|_| format!("variant {name}: weight {weight:?} is not a whole number"))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("variant {name} is listed twice"));
        }
        out.push((name.to_string(), weight));
    }
    if out.len() < 2 {
        return Err("an experiment needs at least two variants, e.g. control=50,new_checkout=50".into());
    }
    if out.len() > MAX_VARIANTS {
        return Err(format!("at most {MAX_VARIANTS} variants"));
    }
    if out.iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
        return Err("the weights add up to zero".into());
    }
    Ok(out)
}

/// How many buckets each variant should own for `weights` (largest remainder, ties to the first).
pub fn targets(weights: &[u32]) -> Vec<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
    let exact: Vec<u64> = weights.iter().map(|w| u64::from(*w) * BUCKETS as u64).collect();
    let mut out: Vec<usize> = exact.iter().map(|e| (e / total) as usize).collect();
    let mut left = BUCKETS - out.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    by_remainder.sort_by_key(|&i| (std::cmp::Reverse(exact[i] % total), i));
    for &i in by_remainder.iter().cycle() {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// A slot table: [`BUCKETS`] entries, the variant owning each bucket. On the wire it travels as
/// runs of (variant, length): [`initial_slots`] makes one run per variant and each [`ramp`] splits
/// a few, so a definition is a few hundred bytes and a host's push stays small with hundreds of
/// experiments (as a byte per bucket it was 10 KB each). Decoding checks that the runs cover
/// exactly [`BUCKETS`] buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slots(Vec<u8>);

impl Slots {
    /// The runs of equal entries, in order.
    fn runs(&self) -> Vec<(u8, u16)> {
        let mut runs: Vec<(u8, u16)> = Vec::new();
        for &v in &self.0 {
            match runs.last_mut() {
                Some((last, n)) if *last == v => *n += 1,
                _ => runs.push((v, 1)),
            }
        }
        runs
    }
}

impl From<Vec<u8>> for Slots {
    fn from(v: Vec<u8>) -> Self {
        Slots(v)
    }
}

impl std::ops::Deref for Slots {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Encode for Slots {
    fn encode<E: bincode::enc::Encoder>(&self, e: &mut E) -> Result<(), bincode::error::EncodeError> {
        self.runs().encode(e)
    }
}

impl<C> Decode<C> for Slots {
    fn decode<D: bincode::de::Decoder<Context = C>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        let runs = Vec::<(u8, u16)>::decode(d)?;
        let total: usize = runs.iter().map(|&(_, n)| n as usize).sum();
        if total != BUCKETS {
            return Err(bincode::error::DecodeError::OtherString(format!(
                "slot table covers {total} buckets, not {BUCKETS}"
            )));
        }
        let mut slots = Vec::with_capacity(BUCKETS);
        for (v, n) in runs {
            slots.extend(std::iter::repeat_n(v, n as usize));
        }
        Ok(Slots(slots))
    }
}
bincode::impl_borrow_decode!(Slots);

/// The first slot table for `weights`: each variant owns a contiguous run of buckets.
pub fn initial_slots(weights: &[u32]) -> Vec<u8> {
    let mut slots = Vec::with_capacity(BUCKETS);
    for (i, n) in targets(weights).into_iter().enumerate() {
        slots.extend(std::iter::repeat_n(i as u8, n));
    }
    slots
}

/// The slot table after a ramp to `weights`: a shrinking variant gives up its highest buckets, and
/// the freed buckets go, lowest first, to the variants that grow. Nothing else moves.
pub fn ramp(slots: &[u8], weights: &[u32]) -> Vec<u8> {
    let want = targets(weights);
    let mut have = vec![0usize; weights.len()];
    for &s in slots {
        if let Some(h) = have.get_mut(s as usize) {
            *h += 1;
        }
    }
    let mut next = slots.to_vec();
    let mut freed = Vec::new();
    for (v, (&h, &w)) in have.iter().zip(&want).enumerate() {
        if h > w {
            let mut surplus = h - w;
            for (b, s) in next.iter().enumerate().rev() {
                if surplus == 0 {
                    break;
                }
                if *s as usize == v {
                    freed.push(b);
                    surplus -= 1;
                }
            }
        }
    }
    freed.sort_unstable();
    let mut freed = freed.into_iter();
    for (v, (&h, &w)) in have.iter().zip(&want).enumerate() {
        for _ in h..w {
            if let Some(b) = freed.next() {
                next[b] = v as u8;
            }
        }
    }
    next
}

/// What one agent saw of one unit in one experiment since its last report.
#[derive(Clone, Copy, Debug, PartialEq, Encode, Decode)]
pub struct UnitSeen {
    /// [`unit_hash`] of the unit id.
    pub unit: u64,
    /// The variant it was assigned.
    pub variant: u8,
    /// It was assigned through `/v1/assign` (an exposure), not only tracked.
    pub exposed: bool,
    /// The experiment's metric event happened for it.
    pub converted: bool,
    /// Sum of the metric event's values.
    pub value: f64,
    /// The definition's [`ExperimentDef::epoch`] when the unit was first seen here.
    pub epoch: u32,
}

/// One experiment's part of an [`ExperimentReport`].
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ExperimentUnits {
    /// The experiment.
    pub name: String,
    /// Units seen since the last report.
    pub units: Vec<UnitSeen>,
    /// Observations the agent dropped because its per-experiment cap was reached.
    pub dropped: u64,
}

/// Largest magnitude of a metric event's value, and of one unit's sum of values in one report.
/// Far past any real amount (a trillion), and small enough that sums and sums of squares over
/// any number of units stay finite.
pub const MAX_VALUE: f64 = 1e12;

/// Most unit observations in one report (about 20 bytes each, well under the frame cap).
pub const MAX_REPORT_UNITS: usize = 30_000;

/// Agent → coordinator: what the sidecar saw, kept and re-sent until acknowledged.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ExperimentReport {
    /// Random per agent process, so a restarted agent's numbering is not taken for a repeat.
    pub boot: u64,
    /// Counts up from 1 per boot; the coordinator applies each (boot, seq) once.
    pub seq: u64,
    /// Per experiment.
    pub experiments: Vec<ExperimentUnits>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(slots: Vec<u8>) -> ExperimentDef {
        ExperimentDef {
            name: "checkout".into(),
            salt: "s1".into(),
            variants: vec!["control".into(), "new_checkout".into()],
            slots: slots.into(),
            metric: "conversion".into(),
            stopped: None,
            epoch: 0,
        }
    }

    #[test]
    fn weights_become_exact_bucket_counts() {
        assert_eq!(targets(&[50, 50]), vec![5000, 5000]);
        assert_eq!(targets(&[1, 1, 1]), vec![3334, 3333, 3333]);
        assert_eq!(targets(&[0, 100]), vec![0, 10_000]);
        let s = initial_slots(&[20, 80]);
        assert_eq!(s.len(), BUCKETS);
        assert_eq!(s.iter().filter(|&&v| v == 0).count(), 2000);
    }

    #[test]
    fn assignment_is_deterministic_and_follows_the_weights() {
        let d = def(initial_slots(&[50, 50]));
        let n = 20_000;
        let ones = (0..n).filter(|i| d.assign(&format!("user-{i}")) == 1).count();
        assert_eq!(d.assign("user-7"), d.clone().assign("user-7"));
        // 50% of 20,000 with sd 71: within 4 sd.
        assert!((ones as i64 - 10_000).abs() < 284, "{ones}");
        let mut other = d.clone();
        other.salt = "s2".into();
        let same = (0..n).filter(|i| d.assign(&format!("user-{i}")) == other.assign(&format!("user-{i}"))).count();
        assert!((same as i64 - 10_000).abs() < 284, "another salt splits independently: {same}");
    }

    #[test]
    fn a_ramp_only_moves_units_into_growing_variants() {
        let three =
            |w: &[u32]| ExperimentDef { variants: vec!["a".into(), "b".into(), "c".into()], ..def(initial_slots(w)) };
        let before = three(&[40, 30, 30]);
        let steps: [&[u32]; 4] = [&[20, 30, 50], &[10, 60, 30], &[0, 0, 100], &[34, 33, 33]];
        let mut current = before.clone();
        for weights in steps {
            let mut next = current.clone();
            next.slots = ramp(&current.slots, weights).into();
            let want = targets(weights);
            for (v, &w) in want.iter().enumerate() {
                assert_eq!(next.slots.iter().filter(|&&s| s as usize == v).count(), w, "{weights:?}");
            }
            let old = targets(&current.slots.iter().fold(vec![0u32; 3], |mut c, &s| {
                c[s as usize] += 1;
                c
            }));
            for i in 0..30_000 {
                let unit = format!("u{i}");
                let (a, b) = (current.assign(&unit) as usize, next.assign(&unit) as usize);
                if a != b {
                    assert!(want[a] < old[a], "unit left {a}, which did not shrink ({weights:?})");
                    assert!(want[b] > old[b], "unit went to {b}, which did not grow ({weights:?})");
                }
            }
            current = next;
        }
    }

    #[test]
    fn slot_tables_travel_as_runs_and_are_checked() {
        let mut d = def(initial_slots(&[50, 50]));
        for weights in [[20, 80], [70, 30], [10, 90], [50, 50]] {
            d.slots = ramp(&d.slots, &weights).into();
        }
        let bytes = crate::codec::to_bytes(&d).unwrap();
        assert!(bytes.len() < 200, "a definition after four ramps is {} bytes", bytes.len());
        let back: ExperimentDef = crate::codec::from_bytes(&bytes).unwrap();
        assert_eq!(back, d);
        // Runs that do not cover every bucket are refused, with the reason.
        let short = crate::codec::to_bytes(&vec![(0u8, 5000u16), (1, 4999)]).unwrap();
        let err = crate::codec::from_bytes::<Slots>(&short).unwrap_err().to_string();
        assert!(err.contains("9999 buckets"), "{err}");
        let long = crate::codec::to_bytes(&vec![(0u8, 60_000u16); 3]).unwrap();
        assert!(crate::codec::from_bytes::<Slots>(&long).is_err());
    }

    #[test]
    fn a_stopped_experiment_gives_everyone_the_winner() {
        let mut d = def(initial_slots(&[50, 50]));
        d.stopped = Some(1);
        assert!((0..1000).all(|i| d.assign(&format!("u{i}")) == 1));
    }

    #[test]
    fn variants_are_parsed_strictly() {
        assert_eq!(parse_variants("control=50, new_checkout=50").unwrap().len(), 2);
        assert!(parse_variants("control=50").unwrap_err().contains("at least two"));
        assert!(parse_variants("control=5x,b=1").unwrap_err().contains("5x"));
        assert!(parse_variants("control=1,control=1").unwrap_err().contains("twice"));
        assert!(parse_variants("Con trol=1,b=1").unwrap_err().contains("variant name"));
        assert!(parse_variants("a=0,b=0").unwrap_err().contains("zero"));
        assert!(valid_name("checkout-2") && !valid_name("../x") && !valid_name(""));
    }
}
