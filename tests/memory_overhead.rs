//! A Linux zone's VMM overhead: the anonymous memory this process gains per zone beyond the
//! guest memory the zone touched, at most 5 MiB (Firecracker's bound for its VMM process). Code
//! pages of the binary (file-backed, shared, paid once) are not counted. Measured for the first
//! zone of the process (one-time costs included) and per zone for the next three; the bench
//! (`lab/test --bench linux_zone`) reports it for 1, 8 and 32 zones. Needs a KVM that runs guest
//! kernels: in the lab (`lab/test memory_overhead`).

mod common;

use common::boot;
use zones::Command;
use zones::prelude::*;

/// Firecracker's specification for its VMM's memory overhead per microVM.
const BOUND_KIB: i64 = 5 << 10;

/// This process's anonymous resident memory (RssAnon), in KiB.
fn rss_anon_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("RssAnon in /proc/self/status")
}

/// A booted zone that has run a command, and the guest memory it touched (KiB).
fn booted() -> (Zone, i64) {
    let zone = Zone::builder()
        .memory_mib(128)
        .linux(boot())
        .build()
        .expect("Linux zone");
    let out = common::run_when_ready(&zone, &Command::new("true"));
    assert!(out.status.success(), "{out:?}");
    let guest = zone
        .metrics()
        .memory_resident_bytes
        .expect("resident guest memory")
        >> 10;
    (zone, guest as i64)
}

#[test]
fn a_linux_zone_costs_at_most_5_mib_beyond_its_guest_memory() {
    require_linux!();
    let before = rss_anon_kib();
    let (first, guest) = booted();
    let cold = rss_anon_kib() - before - guest;
    println!("first zone: {cold} KiB beyond its {guest} KiB of guest memory");
    assert!(
        cold <= BOUND_KIB,
        "the first zone costs {cold} KiB beyond its guest memory"
    );
    let before = rss_anon_kib();
    let zones: Vec<(Zone, i64)> = (0..3).map(|_| booted()).collect();
    let guest: i64 = zones.iter().map(|(_, g)| g).sum();
    let each = (rss_anon_kib() - before - guest) / zones.len() as i64;
    println!("three more zones: {each} KiB each beyond their {guest} KiB of guest memory");
    assert!(
        each <= BOUND_KIB,
        "each zone costs {each} KiB beyond its guest memory"
    );
    drop((first, zones));
}
