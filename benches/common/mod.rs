//! Helpers the Linux-zone benchmarks share.
#![allow(dead_code)] // each bench uses a part of these helpers

use std::time::Duration;

/// The median of `v` (the upper one for an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The last 30 lines of a zone's console, for a failure's message.
pub fn console_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A KiB field of /proc/self/status (0 when it cannot be read).
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// This process's anonymous resident memory (RssAnon), in KiB: heap, stacks and guest memory,
/// without the binary's code pages.
pub fn rss_anon_kib() -> u64 {
    status_kib("RssAnon")
}

/// This process's resident set in KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// The newest `/boot/vmlinuz-*` (by name), the kernel `LinuxBoot::host_kernel()` boots.
pub fn host_kernel_path() -> Option<String> {
    let mut k: Vec<_> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains("vmlinuz-"))
        .collect();
    k.sort();
    k.pop()
}
