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
