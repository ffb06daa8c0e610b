//! Splitting a suite into shards that finish together. Pure.
//!
//! With per-test durations from earlier runs, tests are dealt longest first, each to the shard
//! with the least work so far (longest-processing-time first; a test with no history counts as
//! the mean of those with one). With no history at all, test `i` goes to shard `i % count`. With
//! no test list, every shard gets an empty list and the command splits the suite itself by
//! `FIFTY_SHARD_INDEX` / `FIFTY_SHARD_COUNT`.

use std::collections::BTreeMap;
use std::time::Duration;

/// The tests of each shard; `count` lists (fewer when there are fewer tests than shards).
pub fn split(tests: &[String], history: &BTreeMap<String, Duration>, count: u32) -> Vec<Vec<String>> {
    let count = count.max(1) as usize;
    if tests.is_empty() {
        return vec![Vec::new(); count];
    }
    let count = count.min(tests.len());
    let known: Vec<Duration> = tests.iter().filter_map(|t| history.get(t).copied()).collect();
    if known.is_empty() {
        let mut shards = vec![Vec::new(); count];
        for (i, t) in tests.iter().enumerate() {
            shards[i % count].push(t.clone());
        }
        return shards;
    }
    let mean = known.iter().sum::<Duration>() / known.len() as u32;
    let mut weighted: Vec<(Duration, &String)> =
        tests.iter().map(|t| (history.get(t).copied().unwrap_or(mean), t)).collect();
    // Longest first; ties by name, so the same inputs always give the same shards.
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let mut shards: Vec<(Duration, Vec<String>)> = vec![(Duration::ZERO, Vec::new()); count];
    for (d, t) in weighted {
        let (_, lightest) = shards
            .iter_mut()
            .enumerate()
            .min_by_key(|(i, (load, _))| (*load, *i))
            .map(|(i, s)| (i, s))
            .expect("at least one shard");
        lightest.0 += d;
        lightest.1.push(t.clone());
    }
    shards.into_iter().map(|(_, tests)| tests).collect()
}

/// The slowest shard's total over the mean total, by `durations` (1.0 is perfect balance).
pub fn imbalance(shards: &[Vec<String>], durations: &BTreeMap<String, Duration>) -> f64 {
    let totals: Vec<f64> =
        shards.iter().map(|s| s.iter().filter_map(|t| durations.get(t)).map(Duration::as_secs_f64).sum()).collect();
    let mean = totals.iter().sum::<f64>() / totals.len().max(1) as f64;
    let max = totals.iter().cloned().fold(0.0, f64::max);
    if mean == 0.0 {
        1.0
    } else {
        max / mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i:03}")).collect()
    }

    #[test]
    fn without_history_tests_go_round_robin() {
        let shards = split(&names(5), &BTreeMap::new(), 2);
        assert_eq!(shards, [vec!["t000", "t002", "t004"], vec!["t001", "t003"]]);
        assert_eq!(split(&names(1), &BTreeMap::new(), 4).len(), 1, "no empty shards for a small suite");
        assert_eq!(split(&[], &BTreeMap::new(), 3), vec![Vec::<String>::new(); 3]);
    }

    #[test]
    fn with_history_skewed_suites_balance() {
        // 200 tests: 190 short, 10 long, the long ones at the end of the list.
        let tests = names(200);
        let mut history = BTreeMap::new();
        for (i, t) in tests.iter().enumerate() {
            let ms = if i >= 190 { 1000 } else { 20 + (i as u64 % 7) };
            history.insert(t.clone(), Duration::from_millis(ms));
        }
        let first = split(&tests, &BTreeMap::new(), 4);
        let balanced = split(&tests, &history, 4);
        assert!(imbalance(&first, &history) > 1.10, "round robin should be skewed here");
        assert!(imbalance(&balanced, &history) <= 1.05, "{}", imbalance(&balanced, &history));
        let mut all: Vec<_> = balanced.concat();
        all.sort();
        assert_eq!(all, tests, "every test runs exactly once");
    }

    #[test]
    fn new_tests_count_as_the_mean() {
        let tests = names(4);
        let history = BTreeMap::from([("t000".to_string(), Duration::from_secs(3))]);
        let shards = split(&tests, &history, 2);
        // t000 (3 s) alone; the three new ones (3 s each as the mean) share... the other shard
        // gets two of them, this one one more.
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 4);
        assert!(shards.iter().all(|s| s.len() == 2));
    }
}
