//! Reads back what a libtest harness printed (`cargo test`'s, or the guest
//! suite's libtest-mimic): how many tests passed, which failed and the line
//! that says why, and which test was running if the output stops inside it
//! (a guest that died or was killed mid-test).
//!
//! The "pretty" format, per run of one test binary: `running N tests`; per
//! test `test NAME ... ` (the name padded) and its outcome, `ok`, `FAILED`
//! or `ignored`; a `failures:` section with a `---- NAME ----` block per
//! failed test (libtest: `---- NAME stdout ----`, its captured output),
//! then a list of the failed names; last `test result: ... N passed; N
//! failed; ...`. A sequential run (the guest suite's) prints each outcome
//! after whatever the test printed meanwhile, so the outcome need not share
//! the name's line: a panic's report, which the panic hook writes to
//! stderr, comes in between. libtest-mimic catches the panic and its
//! failure block says only `test panicked: MESSAGE`; the hook's report in
//! the stream says where.

/// A failed test and the line that says why.
#[derive(Debug, PartialEq)]
pub struct Failure {
    pub test: String,
    pub why: String,
}

/// What the output says, over every test binary it shows.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub passed: usize,
    pub failed: Vec<Failure>,
    /// Tests that started and have no outcome: the output stops inside
    /// them.
    pub unfinished: Vec<String>,
    /// Failures a summary line counts that no test name in the output
    /// accounts for.
    pub unnamed: usize,
}

/// The longest reason kept: the summary has one line per failure.
const WHY_CHARS: usize = 240;

pub fn parse(output: &str) -> Report {
    let mut report = Report::default();
    let mut run: Option<Run> = None;
    for line in output.lines() {
        if is_running_line(line) {
            if let Some(done) = run.take() {
                done.finish(&mut report);
            }
            run = Some(Run::default());
        } else if let Some(current) = run.as_mut() {
            current.line(line);
        }
    }
    if let Some(done) = run {
        done.finish(&mut report);
    }
    report
}

/// "running 3 tests", "running 1 test".
fn is_running_line(line: &str) -> bool {
    line.strip_prefix("running ")
        .and_then(|rest| {
            rest.strip_suffix(" tests")
                .or_else(|| rest.strip_suffix(" test"))
        })
        .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// `test NAME ... REST`: the name (without its padding) and what follows
/// (`test NAME ...` if what followed began a new line and the line lost
/// its trailing space).
fn test_start(line: &str) -> Option<(&str, &str)> {
    let line = line.strip_prefix("test ")?;
    let (name, rest) = line
        .split_once(" ... ")
        .or_else(|| Some((line.strip_suffix(" ...")?, "")))?;
    let name = name.trim_end();
    (!name.is_empty()).then_some((name, rest))
}

/// The block header of a failed test: `---- NAME ----` or
/// `---- NAME stdout ----`.
fn failure_header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix("---- ")?.strip_suffix(" ----")?;
    Some(inner.strip_suffix(" stdout").unwrap_or(inner).trim())
}

/// Where a panic report line (`thread 'main' panicked at FILE:LINE:COL:`)
/// says the panic was.
fn panic_location(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once("panicked at ")?;
    Some(rest.trim().trim_end_matches(':'))
}

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Passed,
    Failed,
    Ignored,
    /// Nothing after the name says how it went.
    Unknown,
}

fn outcome_of(last: &str) -> Outcome {
    let last = last.trim_end();
    if last.ends_with("FAILED") {
        Outcome::Failed
    } else if last.ends_with("ok") {
        Outcome::Passed
    } else if last.ends_with("ignored")
        || (last.ends_with(')') && last.contains("ignored ("))
        // `#[ignore = "why"]` on current toolchains.
        || last.trim_start().starts_with("ignored, ")
    {
        Outcome::Ignored
    } else {
        Outcome::Unknown
    }
}

/// A test whose start the stream showed, while its outcome is pending.
struct Running {
    name: String,
    /// The last non-blank text since its name: its outcome, once printed.
    last: String,
    panics: Vec<Panic>,
    /// A panic report line seen; its message is the next line.
    panic_at: Option<String>,
}

struct Panic {
    location: String,
    message: String,
}

/// Where in a run's output the parser is.
#[derive(Default, PartialEq)]
enum Part {
    #[default]
    Tests,
    /// In `failures:`, inside the block of the named test (if any yet).
    Failures(Option<String>),
    /// The list of failed names after the blocks.
    FailureList,
    Done,
}

/// One test binary's output, from its `running N tests` on.
#[derive(Default)]
struct Run {
    part: Part,
    current: Option<Running>,
    /// Tests that ended, with their outcome and the panics they printed.
    ended: Vec<(String, Outcome, Vec<Panic>)>,
    unfinished: Vec<String>,
    /// Each failure block's lines, by test.
    blocks: Vec<(String, Vec<String>)>,
    listed: Vec<String>,
    summary: Option<(usize, usize)>,
}

impl Run {
    fn line(&mut self, line: &str) {
        if line.starts_with("test result:") {
            self.close_current();
            self.summary = Some((count(line, "passed"), count(line, "failed")));
            self.part = Part::Done;
            return;
        }
        if line.trim_end() == "failures:" {
            self.close_current();
            self.part = match self.part {
                Part::Tests => Part::Failures(None),
                _ => Part::FailureList,
            };
            return;
        }
        match &mut self.part {
            Part::Tests => self.stream_line(line),
            Part::Failures(block) => {
                if let Some(test) = failure_header(line) {
                    *block = Some(test.to_owned());
                    self.blocks.push((test.to_owned(), Vec::new()));
                } else if block.is_some()
                    && let Some((_, lines)) = self.blocks.last_mut()
                {
                    lines.push(line.to_owned());
                }
            }
            Part::FailureList => {
                let name = line.trim();
                if !name.is_empty() {
                    self.listed.push(name.to_owned());
                }
            }
            Part::Done => {}
        }
    }

    /// A line among the tests: a test starting, or what the running one
    /// prints (its outcome last).
    fn stream_line(&mut self, line: &str) {
        let text = if let Some((name, rest)) = test_start(line) {
            self.close_current();
            self.current = Some(Running {
                name: name.to_owned(),
                last: String::new(),
                panics: Vec::new(),
                panic_at: None,
            });
            rest
        } else {
            line
        };
        let Some(running) = self.current.as_mut() else {
            return;
        };
        if let Some(location) = running.panic_at.take() {
            running.panics.push(Panic {
                location,
                message: text.trim().to_owned(),
            });
        }
        if let Some(location) = panic_location(text) {
            running.panic_at = Some(location.to_owned());
        }
        if !text.trim().is_empty() {
            running.last = text.to_owned();
        }
    }

    fn close_current(&mut self) {
        if let Some(running) = self.current.take() {
            let outcome = outcome_of(&running.last);
            if outcome == Outcome::Unknown {
                self.unfinished.push(running.name);
            } else {
                self.ended.push((running.name, outcome, running.panics));
            }
        }
    }

    fn finish(mut self, report: &mut Report) {
        // Output that stops inside a test leaves it running.
        if let Some(running) = self.current.take() {
            self.unfinished.push(running.name);
        }
        let panics_of = |test: &str| {
            self.ended
                .iter()
                .find(|(name, _, _)| name == test)
                .map_or(&[][..], |(_, _, panics)| &panics[..])
        };
        let mut failed: Vec<Failure> = Vec::new();
        for (test, lines) in &self.blocks {
            failed.push(Failure {
                test: test.clone(),
                why: why_from_block(lines, panics_of(test)),
            });
        }
        for (test, outcome, panics) in &self.ended {
            if *outcome == Outcome::Failed && !failed.iter().any(|f| f.test == *test) {
                let why = match panics.last() {
                    Some(panic) => format!("panicked at {}: {}", panic.location, panic.message),
                    None => "FAILED; the output stops before its message".to_owned(),
                };
                failed.push(Failure {
                    test: test.clone(),
                    why: shorten(&why),
                });
            }
        }
        for test in &self.listed {
            if !failed.iter().any(|f| f.test == *test) {
                failed.push(Failure {
                    test: test.clone(),
                    why: "failed without a message".to_owned(),
                });
            }
        }
        report.passed += match self.summary {
            Some((passed, _)) => passed,
            None => self
                .ended
                .iter()
                .filter(|(_, outcome, _)| *outcome == Outcome::Passed)
                .count(),
        };
        if let Some((_, counted)) = self.summary {
            report.unnamed += counted.saturating_sub(failed.len());
        }
        report.failed.extend(failed);
        report.unfinished.extend(self.unfinished);
    }
}

/// Why a test failed, from its failure block: the panic it reports (with
/// where it was, from the stream when the block has only the message),
/// else the block's first line.
fn why_from_block(lines: &[String], stream_panics: &[Panic]) -> String {
    let mut texts = lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty());
    // libtest: the captured output, the panic report somewhere in it.
    if let Some(at) = lines.iter().position(|l| panic_location(l).is_some())
        && let Some(location) = panic_location(&lines[at])
    {
        let message = lines[at + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .unwrap_or("");
        return shorten(&format!("panicked at {location}: {message}"));
    }
    let Some(first) = texts.next() else {
        return "failed without a message".to_owned();
    };
    // libtest-mimic: only the payload; the hook's report said where.
    if let Some(payload) = first.strip_prefix("test panicked: ")
        && let Some(panic) = stream_panics.iter().rev().find(|p| p.message == payload)
    {
        return shorten(&format!("panicked at {}: {payload}", panic.location));
    }
    shorten(first)
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(WHY_CHARS) {
        Some((cut, _)) => format!("{} ...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The number before `what` in a libtest summary:
/// "test result: ok. 3 passed; 1 failed; 0 ignored; ...".
fn count(line: &str, what: &str) -> usize {
    line.split([';', '.'])
        .filter_map(|part| part.trim().strip_suffix(what))
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(test: &str, why: &str) -> Failure {
        Failure {
            test: test.to_owned(),
            why: why.to_owned(),
        }
    }

    /// The guest suite (libtest-mimic 0.8, `--test-threads 1 --color
    /// never`) as the virtio console gave it, a panic among the tests.
    const GUEST: &str = "\
kchat: module loaded

running 6 tests
test chat::quiet_pass                               ... ok
test mapped::losses_are_exact_under_a_racing_writer ... thread 'main' panicked at vmtest/src/mapped.rs:61:23:
attempt to multiply with overflow
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace
FAILED
test mapped::prints_then_passes                     ... mapped: 5 delivered ... ok
test stress::writers_readers_churn_and_kills        ... some progress line
FAILED
test trust::no_message                              ... FAILED
test systemd::x                                     ... ignored

failures:

---- mapped::losses_are_exact_under_a_racing_writer ----
test panicked: attempt to multiply with overflow

---- stress::writers_readers_churn_and_kills ----
timed out after 10s waiting for cat to open and the shell to write
second line

---- trust::no_message ----


failures:
    mapped::losses_are_exact_under_a_racing_writer
    stress::writers_readers_churn_and_kills
    trust::no_message

test result: FAILED. 2 passed; 3 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.08s

";

    #[test]
    fn an_ignored_test_with_its_reason_is_ignored_not_unfinished() {
        for line in [
            "ignored",
            "ignored, the writers' process of the harness's tests; they run it",
            "ignored (needs a VM)",
        ] {
            assert!(outcome_of(line) == Outcome::Ignored, "{line}");
        }
        assert!(outcome_of("still ignored, going on") == Outcome::Unknown);
    }

    #[test]
    fn a_guest_run_names_every_failure_and_why() {
        assert_eq!(
            parse(GUEST),
            Report {
                passed: 2,
                failed: vec![
                    failure(
                        "mapped::losses_are_exact_under_a_racing_writer",
                        "panicked at vmtest/src/mapped.rs:61:23: attempt to multiply with overflow"
                    ),
                    failure(
                        "stress::writers_readers_churn_and_kills",
                        "timed out after 10s waiting for cat to open and the shell to write"
                    ),
                    failure("trust::no_message", "failed without a message"),
                ],
                unfinished: vec![],
                unnamed: 0,
            }
        );
    }

    /// Newer toolchains start the hook's report on a line of its own, with
    /// the thread's id, and may print a backtrace.
    #[test]
    fn a_panic_report_on_its_own_lines_with_a_backtrace() {
        let output = "\
running 2 tests
test mapped::losses ... \n\
thread 'main' (27167) panicked at vmtest/src/mapped.rs:61:23:
attempt to multiply with overflow
stack backtrace:
   0: __rustc::rust_begin_unwind
             at /rustc/59807616e1fa/library/std/src/panicking.rs:689:5
note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.
FAILED
test mapped::other  ... ok

failures:

---- mapped::losses ----
test panicked: attempt to multiply with overflow


failures:
    mapped::losses

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.08s
";
        let report = parse(output);
        assert_eq!(report.passed, 1);
        assert_eq!(
            report.failed,
            vec![failure(
                "mapped::losses",
                "panicked at vmtest/src/mapped.rs:61:23: attempt to multiply with overflow"
            )]
        );
    }

    /// `cargo test` (libtest): two binaries, captured output with blank
    /// lines, a panic report inside it.
    #[test]
    fn cargo_test_output_names_failures_across_binaries() {
        let output = "
running 2 tests
test tests::a ... ok
test tests::b ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s


running 3 tests
test tests::asserts ... FAILED
test tests::overflows ... FAILED
test tests::passes ... ok

failures:

---- tests::asserts stdout ----
noise

thread 'tests::asserts' (27650) panicked at src/lib.rs:8:39:
assertion `left == right` failed: math is off
  left: 2
 right: 3
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace

---- tests::overflows stdout ----

thread 'tests::overflows' (27651) panicked at src/lib.rs:6:100:
attempt to multiply with overflow


failures:
    tests::asserts
    tests::overflows

test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

";
        assert_eq!(
            parse(output),
            Report {
                passed: 3,
                failed: vec![
                    failure(
                        "tests::asserts",
                        "panicked at src/lib.rs:8:39: assertion `left == right` failed: math is off"
                    ),
                    failure(
                        "tests::overflows",
                        "panicked at src/lib.rs:6:100: attempt to multiply with overflow"
                    ),
                ],
                unfinished: vec![],
                unnamed: 0,
            }
        );
    }

    /// A guest that dies (or is killed) mid-test: no failures section, no
    /// summary. The tests that ended still count, the one that failed is
    /// named, and so is the one that was running.
    #[test]
    fn a_guest_that_dies_mid_test_names_the_running_test() {
        let output = "
running 40 tests
test chat::a ... ok
test mapped::b ... thread 'main' panicked at vmtest/src/mapped.rs:61:23:
attempt to multiply with overflow
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace
FAILED
test model::c ... model: seed 1
FAILED
test stress::writers_readers_churn_and_kills ... stress: still going
";
        assert_eq!(
            parse(output),
            Report {
                passed: 1,
                failed: vec![
                    failure(
                        "mapped::b",
                        "panicked at vmtest/src/mapped.rs:61:23: attempt to multiply with overflow"
                    ),
                    failure("model::c", "FAILED; the output stops before its message"),
                ],
                unfinished: vec!["stress::writers_readers_churn_and_kills".to_owned()],
                unnamed: 0,
            }
        );
    }

    #[test]
    fn a_summary_counting_more_failures_than_are_named() {
        let output = "running 2 tests\n\
                      test a ... ok\n\
                      \n\
                      test result: FAILED. 1 passed; 2 failed; 0 ignored\n";
        let report = parse(output);
        assert_eq!((report.passed, report.unnamed), (1, 2));
        assert!(report.failed.is_empty() && report.unfinished.is_empty());
    }

    #[test]
    fn reasons_are_one_short_line() {
        let long = "x".repeat(1000);
        let output = format!(
            "running 1 test\ntest a ... FAILED\n\nfailures:\n\n---- a ----\n{long}\n\n\
             failures:\n    a\n\ntest result: FAILED. 0 passed; 1 failed\n"
        );
        let report = parse(&output);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].why.chars().count(), WHY_CHARS + 4);
    }

    #[test]
    fn counts_read_the_summary() {
        let line = "test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured";
        assert_eq!((count(line, "passed"), count(line, "failed")), (3, 1));
    }
}
