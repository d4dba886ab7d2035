//! Helpers for this crate's unit tests.

/// Prints `SKIPPED <why>` straight to the process's stderr, which the test harness does not
/// capture (its capture would hide the line of a test that returns early and passes).
pub(crate) fn skipped(why: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {why}");
}
