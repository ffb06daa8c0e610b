//! JUnit XML → per-test results, with the maintained `junit-parser` crate. The leader parses what
//! a shard's agent sent before it records the result, so the replicated record holds tests, not
//! XML.

use std::time::Duration;

use super::{TestOutcome, TestResult};

/// Most bytes of one test's failure message kept.
const MAX_MESSAGE: usize = 2048;

/// Most bytes of test results one attempt records (names, messages and a little per test): the
/// record travels in one Raft entry and is stored as one value, both under the 1 MiB frame cap.
pub const MAX_REPORT_BYTES: usize = 512 * 1024;

fn weight(t: &TestResult) -> usize {
    t.name.len() + t.message.len() + 16
}

/// Parses every `(path, xml)` file. Files that do not parse are named in the returned notes; the
/// rest still count.
pub fn parse(files: &[(String, String)]) -> (Vec<TestResult>, Vec<String>) {
    let mut tests = Vec::new();
    let mut notes = Vec::new();
    for (path, xml) in files {
        match junit_parser::from_reader(std::io::Cursor::new(xml.as_bytes())) {
            Ok(suites) => {
                for suite in &suites.suites {
                    collect(suite, &mut tests);
                }
            }
            Err(e) => notes.push(format!("{path}: not JUnit XML ({e})")),
        }
    }
    let total: usize = tests.iter().map(weight).sum();
    if total > MAX_REPORT_BYTES {
        // Keep failures first: they decide the result and are what people read.
        let (failed, others): (Vec<TestResult>, Vec<TestResult>) =
            tests.into_iter().partition(|t| t.outcome == TestOutcome::Failed);
        let mut kept = Vec::new();
        let mut used = 0;
        let mut dropped = 0;
        for mut t in failed.into_iter().chain(others) {
            if used + weight(&t) > MAX_REPORT_BYTES {
                if t.outcome == TestOutcome::Failed && used + t.name.len() + 16 <= MAX_REPORT_BYTES {
                    t.message.clear();
                } else {
                    dropped += 1;
                    continue;
                }
            }
            used += weight(&t);
            kept.push(t);
        }
        if dropped > 0 {
            notes.push(format!("{dropped} test results beyond the {MAX_REPORT_BYTES}-byte budget were not recorded"));
        }
        tests = kept;
    }
    (tests, notes)
}

/// Renames each test as `[test] list` named it when its JUnit name is another spelling of a
/// listed name, so durations, retries and `FIFTY_TESTS_FILE` use one name per test. pytest is
/// the case: a node id `tests/test_x.py::TestC::test_y[1-a]` is reported as classname
/// `tests.test_x.TestC`, name `test_y[1-a]` (its junitxml plugin's `mangle_test_address`), which
/// [`parse`] names `tests.test_x.TestC::test_y[1-a]`. Both spell `tests.test_x.TestC.test_y[1-a]`
/// in dotted form; a listed name is used when exactly one listed test has the result's dotted
/// form. Results already named as listed, and names no list entry matches, are left alone.
pub fn name_as_listed(results: &mut [TestResult], listed: &[String]) {
    if listed.is_empty() {
        return;
    }
    let exact: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
    let mut dotted: std::collections::HashMap<String, Option<&String>> = std::collections::HashMap::new();
    for name in listed {
        dotted
            .entry(dotted_node_id(name))
            .and_modify(|seen| *seen = None) // two listed tests with one dotted form: ambiguous
            .or_insert(Some(name));
    }
    for result in results.iter_mut() {
        if exact.contains(result.name.as_str()) {
            continue;
        }
        if let Some(Some(listed)) = dotted.get(&dotted_junit_name(&result.name)) {
            result.name = (*listed).clone();
        }
    }
}

/// A pytest node id in dotted form: the path's `/` become `.`, `.py` goes, `::` become `.`; the
/// parameters (from the first `[`) stay as they are.
fn dotted_node_id(id: &str) -> String {
    let (path, params) = id.find('[').map_or((id, ""), |i| id.split_at(i));
    let mut names: Vec<String> = path.split("::").map(String::from).collect();
    names[0] = names[0].replace('/', ".");
    if let Some(module) = names[0].strip_suffix(".py") {
        names[0] = module.to_string();
    }
    format!("{}{params}", names.join("."))
}

/// A JUnit name as [`parse`] makes it (`classname::name`) in dotted form: `classname.name`.
fn dotted_junit_name(name: &str) -> String {
    let (before, params) = name.find('[').map_or((name, ""), |i| name.split_at(i));
    match before.split_once("::") {
        Some((class, rest)) => format!("{class}.{rest}{params}"),
        None => name.to_string(),
    }
}

fn collect(suite: &junit_parser::TestSuite, out: &mut Vec<TestResult>) {
    for case in &suite.cases {
        let (outcome, message) = match &case.status {
            junit_parser::TestStatus::Success => (TestOutcome::Passed, String::new()),
            junit_parser::TestStatus::Skipped(_) => (TestOutcome::Skipped, String::new()),
            junit_parser::TestStatus::Failure(f) => (TestOutcome::Failed, join(&f.message, &f.text)),
            junit_parser::TestStatus::Error(e) => (TestOutcome::Failed, join(&e.message, &e.text)),
        };
        // `classname::name`, as junit-parser names it, but a blank classname adds nothing.
        let name = match case.classname.as_deref().map(str::trim) {
            Some(class) if !class.is_empty() => format!("{class}::{}", case.original_name),
            _ => case.original_name.clone(),
        };
        out.push(TestResult {
            name: super::bounded_test_name(name),
            outcome,
            // A pusher writes this number: bounded, so the durations the sharder adds up cannot overflow.
            duration: Duration::try_from_secs_f64(case.time)
                .unwrap_or_default()
                .min(fifty_shared::config::MAX_DURATION),
            message: truncate(message),
        });
    }
    for inner in &suite.suites {
        collect(inner, out);
    }
}

fn join(message: &str, text: &str) -> String {
    match (message.trim(), text.trim()) {
        (m, "") => m.to_string(),
        ("", t) => t.to_string(),
        (m, t) if t.starts_with(m) => t.to_string(),
        (m, t) => format!("{m}\n{t}"),
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" …");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pytest_style_report_gives_names_outcomes_durations_and_messages() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="1.5">
<testcase classname="" name="test_ok" time="0.25"/>
<testcase classname="tests.shop" name="test_bad" time="1.0"><failure message="assert 1 == 2">AssertionError: assert 1 == 2</failure></testcase>
<testcase name="test_skip" time="0"><skipped message="later"/></testcase>
<testcase name="test_err" time="0.1"><error message="boom"/></testcase>
</testsuite></testsuites>"#;
        let (tests, notes) = parse(&[("reports/a.xml".into(), xml.into())]);
        assert!(notes.is_empty(), "{notes:?}");
        let by = |n: &str| tests.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("{n} in {tests:?}"));
        assert_eq!(by("test_ok").outcome, TestOutcome::Passed);
        assert_eq!(by("test_ok").duration, Duration::from_millis(250));
        assert_eq!(by("tests.shop::test_bad").outcome, TestOutcome::Failed);
        assert!(by("tests.shop::test_bad").message.contains("assert 1 == 2"));
        assert_eq!(by("test_skip").outcome, TestOutcome::Skipped);
        assert_eq!(by("test_err").outcome, TestOutcome::Failed);
        assert_eq!(by("test_err").message, "boom");
    }

    /// Real pytest 9 output (`--collect-only -q` and `--junitxml`) for a module with a class,
    /// parametrized tests (parameters holding `/`, `::` and a space), a failure, a skip, and a
    /// module in a subdirectory.
    const PYTEST_COLLECT: &str = include_str!("fixtures/pytest-collect.txt");
    const PYTEST_JUNIT: &str = include_str!("fixtures/pytest-junit.xml");

    #[test]
    fn pytest_junit_names_come_back_as_the_node_ids_the_list_gave() {
        let listed: Vec<String> = PYTEST_COLLECT.lines().map(String::from).collect();
        let (mut tests, notes) = parse(&[("reports/junit.xml".into(), PYTEST_JUNIT.into())]);
        assert!(notes.is_empty(), "{notes:?}");
        // Before: JUnit's spelling, which no list entry matches.
        assert!(tests.iter().any(|t| t.name == "tests.test_shop.TestPrices::test_bulk[2-x::y]"), "{tests:?}");
        name_as_listed(&mut tests, &listed);
        let mut names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        let mut expected: Vec<&str> = listed.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(names, expected, "every JUnit name is a listed node id");
        let by = |n: &str| tests.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("{n} in {tests:?}"));
        assert_eq!(by("tests/test_shop.py::TestRefunds::test_negative[-1]").outcome, TestOutcome::Failed);
        assert_eq!(by("tests/test_shop.py::TestRefunds::test_partial").outcome, TestOutcome::Skipped);
        assert_eq!(by("tests/unit/test_receipt.py::test_receipt").outcome, TestOutcome::Passed);
        assert_eq!(by("tests/test_shop.py::TestPrices::test_bulk[3-sp ace]").outcome, TestOutcome::Passed);
        // The durations recorded under those names are what the next split looks up.
        let history = tests.iter().map(|t| (t.name.clone(), t.duration + Duration::from_millis(1))).collect();
        let shards = crate::ci::shard::split(&listed, &history, 3);
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), listed.len());
    }

    /// README's test-runner recipes (`scripts/recipes/<runner>/fifty.toml`, tried for real by
    /// `scripts/recipes/check`) are valid pipelines, and README shows them as they are.
    #[test]
    fn the_readme_recipes_are_valid_pipelines_shown_as_tried() {
        let readme = include_str!("../../../README.md");
        let recipes = [
            ("pytest", include_str!("../../../scripts/recipes/pytest/fifty.toml")),
            ("nextest", include_str!("../../../scripts/recipes/nextest/fifty.toml")),
            ("gotestsum", include_str!("../../../scripts/recipes/gotestsum/fifty.toml")),
            ("jest", include_str!("../../../scripts/recipes/jest/fifty.toml")),
        ];
        for (runner, text) in recipes {
            let pipeline = fifty_shared::pipeline::Pipeline::parse(text).unwrap_or_else(|e| panic!("{runner}: {e}"));
            assert!(pipeline.test.list.is_some() && pipeline.test.junit.is_some(), "{runner}");
            for line in text.lines().filter(|l| l.starts_with("list ") || l.starts_with("command ")) {
                assert!(readme.contains(line), "README shows {runner}'s recipe as tried: {line}");
            }
        }
    }

    #[test]
    fn names_as_listed_leave_exact_unknown_and_ambiguous_names_alone() {
        let result = |name: &str| TestResult {
            name: name.into(),
            outcome: TestOutcome::Passed,
            duration: Duration::ZERO,
            message: String::new(),
        };
        let mut tests = vec![result("test_ok"), result("pkg.mod::test_gone"), result("a.b::c")];
        // `a/b.py::c` and `a/b::c` both spell `a.b.c`: which one ran cannot be told.
        let listed = ["test_ok", "a/b.py::c", "a/b::c"].map(String::from);
        name_as_listed(&mut tests, &listed);
        let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["test_ok", "pkg.mod::test_gone", "a.b::c"]);
    }

    #[test]
    fn a_test_time_past_the_longest_duration_is_clamped() {
        let xml = r#"<testsuite><testcase name="a" time="1e19"/><testcase name="b" time="1e19"/></testsuite>"#;
        let (tests, _) = parse(&[("r.xml".into(), xml.into())]);
        assert!(tests.iter().all(|t| t.duration == fifty_shared::config::MAX_DURATION), "{tests:?}");
        // The sharder adds them up without overflowing.
        let history = tests.iter().map(|t| (t.name.clone(), t.duration)).collect();
        let names: Vec<String> = tests.iter().map(|t| t.name.clone()).collect();
        assert_eq!(crate::ci::shard::split(&names, &history, 2).len(), 2);
    }

    #[test]
    fn a_huge_report_keeps_its_failures_within_the_budget() {
        let mut xml = String::from("<testsuite>");
        for i in 0..40_000 {
            xml.push_str(&format!("<testcase name=\"test_number_{i:06}\" time=\"0.001\"/>"));
        }
        xml.push_str("<testcase name=\"the_broken_one\"><failure message=\"boom\"/></testcase></testsuite>");
        let (tests, notes) = parse(&[("big.xml".into(), xml)]);
        assert!(tests.iter().map(weight).sum::<usize>() <= MAX_REPORT_BYTES);
        assert_eq!(tests[0].name, "the_broken_one");
        assert!(notes.iter().any(|n| n.contains("not recorded")), "{notes:?}");
    }

    #[test]
    fn garbage_is_a_note_not_a_failure_of_the_parser() {
        let (tests, notes) = parse(&[("r.xml".into(), "<testsuite><testcase name=".into())]);
        assert!(tests.is_empty());
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with("r.xml: not JUnit XML"), "{notes:?}");
    }

    /// A pusher's JUnit can name a test with hundreds of kilobytes; Fifty keeps a bounded name
    /// (start + hash of the whole), so names stay apart and every record holding names is bounded.
    #[test]
    fn long_test_names_are_bounded_and_stay_distinct() {
        let long = |end: &str| format!("{}{end}", "é".repeat(200 * 1024));
        let xml = format!(
            r#"<testsuite name="s"><testcase name="{}" time="1"/><testcase name="{}" time="1"/><testcase name="short" time="1"/></testsuite>"#,
            long("a"),
            long("b")
        );
        let (tests, _) = parse(&[("r.xml".into(), xml)]);
        assert_eq!(tests.len(), 3);
        assert!(tests.iter().all(|t| t.name.len() <= crate::ci::MAX_TEST_NAME), "names are bounded");
        assert_ne!(tests[0].name, tests[1].name, "two long names differing at the end stay apart");
        assert_eq!(tests[2].name, "short");
    }
}
