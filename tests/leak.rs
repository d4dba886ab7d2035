//! Dropping zones releases everything: after 1000 create/run/drop cycles the process has the same
//! file descriptors and threads as before, and its resident memory is back near the baseline.
//! Its own test binary, so no other test runs in this process meanwhile.

mod common;

use zones::prelude::*;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4
}

fn cycle(program: &GuestProgram) {
    let zone = Zone::builder()
        .memory_mib(16)
        .micro(program.clone())
        .host_fn_u64("result", |_| 0)
        .build()
        .unwrap();
    assert_eq!(zone.wait(), ZoneExit::Exited(7919 % 256));
}

#[test]
fn a_thousand_cycles_leak_no_fds_threads_or_memory() {
    require_kvm!();
    let program = guest!("COMPUTE");
    // Warm up: the deadline thread, signal handler, CPUID cache and allocator arenas exist after.
    for _ in 0..50 {
        cycle(&program);
    }
    let (fds, thr, rss) = (fd_count(), threads(), rss_kib());
    for _ in 0..1000 {
        cycle(&program);
    }
    let (fds2, thr2, rss2) = (fd_count(), threads(), rss_kib());
    eprintln!("fds {fds} -> {fds2}, threads {thr} -> {thr2}, rss {rss} KiB -> {rss2} KiB");
    assert_eq!(fds2, fds, "file descriptors leaked");
    assert_eq!(thr2, thr, "threads leaked");
    // Each zone touches ~1 MiB of guest memory (the sieve); leaking it would add ~1 GiB.
    assert!(
        rss2 < rss + 8 * 1024,
        "resident memory grew from {rss} KiB to {rss2} KiB"
    );
}
