//! Helpers for this crate's unit tests.

/// Prints `SKIPPED <why>` straight to the process's stderr, which the test harness does not
/// capture (its capture would hide the line of a test that returns early and passes).
pub(crate) fn skipped(why: std::fmt::Arguments<'_>) {
    use std::io::Write;
    // One write of a whole line that starts on a line of its own: the harness's own output
    // ("test x ... " without its newline yet) cannot split it or run into it.
    let line = format!("\nSKIPPED {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
