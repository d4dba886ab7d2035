//! seccomp on a zone's threads, on this machine's KVM (micro zones): a vCPU thread refuses what
//! a vCPU need not do (with EPERM, counted, reported), host functions run unfiltered on threads
//! of their own, Log and Off modes, and the test's own threads are never filtered.

mod common;

use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use zones::prelude::*;
use zones::seccomp::Seccomp;

/// A console zone whose sink (which runs on the vCPU thread) tries to open a file once; returns
/// the zone's exit, the open's outcome, its metrics and its seccomp violations.
fn console_zone_opening_a_file(
    mode: Seccomp,
) -> (Option<std::io::ErrorKind>, ZoneMetrics, Vec<String>) {
    let outcome: Arc<Mutex<Option<Option<ErrorKind>>>> = Arc::default();
    let seen = outcome.clone();
    let zone = Zone::builder()
        .memory_mib(8)
        .seccomp(mode)
        .micro(guest!("CONSOLE"))
        .on_console(move |_| {
            let mut slot = seen.lock().unwrap();
            if slot.is_none() {
                let r = std::fs::File::open("/proc/self/status");
                *slot = Some(r.err().map(|e| e.kind()));
            }
        })
        .build()
        .unwrap();
    let events = zone.events();
    assert_eq!(zone.wait(), ZoneExit::Exited(0));
    let violations = events
        .drain()
        .into_iter()
        .filter_map(|e| match e {
            ZoneEvent::Violation(v) if v.control == "seccomp" => Some(v.detail),
            _ => None,
        })
        .collect();
    let opened = outcome.lock().unwrap().expect("the sink ran");
    (opened, zone.metrics(), violations)
}

#[test]
fn a_vcpu_thread_refuses_opening_files_counts_and_reports_it() {
    require_kvm!();
    let (opened, metrics, violations) = console_zone_opening_a_file(Seccomp::Enforce);
    assert_eq!(
        opened,
        Some(ErrorKind::PermissionDenied),
        "EPERM on the vCPU thread"
    );
    assert_eq!(metrics.seccomp_refused, 1);
    assert_eq!(
        violations,
        ["vCPU 0 thread: system call openat refused"],
        "{violations:?}"
    );
    assert!(
        std::fs::File::open("/proc/self/status").is_ok(),
        "the embedder's thread is not filtered"
    );
}

#[test]
fn log_mode_counts_and_lets_the_call_run_off_mode_does_neither() {
    require_kvm!();
    let (opened, metrics, violations) = console_zone_opening_a_file(Seccomp::Log);
    assert_eq!(opened, None, "Log mode lets it run");
    assert_eq!(metrics.seccomp_refused, 1);
    assert_eq!(violations.len(), 1);
    let (opened, metrics, violations) = console_zone_opening_a_file(Seccomp::Off);
    assert_eq!(opened, None);
    assert_eq!(metrics.seccomp_refused, 0);
    assert!(violations.is_empty());
}

#[test]
fn host_functions_run_unfiltered_on_a_thread_of_their_own() {
    require_kvm!();
    let where_ran: Arc<Mutex<Option<(String, bool)>>> = Arc::default();
    let slot = where_ran.clone();
    let zone = Zone::builder()
        .name("hostfs")
        .memory_mib(16)
        .micro(guest!("COMPUTE"))
        .host_fn_u64("result", move |_| {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            let opened = std::fs::File::open("/proc/self/status").is_ok();
            *slot.lock().unwrap() = Some((thread, opened));
            0
        })
        .build()
        .unwrap();
    assert!(matches!(zone.wait(), ZoneExit::Exited(_)));
    let (thread, opened) = where_ran
        .lock()
        .unwrap()
        .clone()
        .expect("the host function ran");
    assert_eq!(
        thread, "hostfs/h0",
        "a host-call thread, not the vCPU thread"
    );
    assert!(
        opened,
        "host functions are the embedder's code: not filtered"
    );
    assert_eq!(zone.metrics().seccomp_refused, 0);
}
