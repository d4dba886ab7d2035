//! The hostile suite: guests that hammer the VMM (a million hypercalls, a million refused calls,
//! a 256 MiB console flood, every privileged instruction class, `int N`, vCPUs racing on each
//! other's mailboxes, a scan of fresh memory for foreign bytes) and controllers that race
//! (pause/resume/kill storms from several threads). Counters must be exact, host memory flat,
//! every control call must return, and the zone must end as the guest or the controller says.
//!
//! The tests run one at a time, at full size on the local KVM (`cargo test`). `lab/test hostile`
//! runs them by hand, the counted floods at a tenth of their size (each exit is emulated in
//! software there, about a hundred times slower); it is not part of the test command, because
//! under this load QEMU's emulated machine fails now and then (a lab CPU that stops answering
//! IPIs, a lab-kernel crash right after a nested VM exit): see the README's status table.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zones::Exception;
use zones::prelude::*;

/// One test at a time: each loads the host fully, and the resident-memory checks must see one
/// zone's growth only.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n`, or a tenth of it in the lab.
fn flood_size(n: u64) -> u64 {
    if std::env::var("ZONES_LAB").is_ok_and(|v| v == "1") {
        n / 10
    } else {
        n
    }
}

/// This process's resident memory in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn hostile(args: &[&str]) -> GuestProgram {
    guest!("HOSTILE").args(args)
}

#[test]
fn a_million_host_calls_are_counted_exactly_and_host_memory_stays_flat() {
    require_kvm!();
    let _alone = alone();
    let n = flood_size(1_000_000);
    let calls = Arc::new(AtomicU64::new(0));
    let rss_early = Arc::new(AtomicU64::new(0));
    let (c, early) = (calls.clone(), rss_early.clone());
    let zone = Zone::builder()
        .memory_mib(8)
        .micro(hostile(&["calls", &n.to_string()]))
        .host_fn_u64("tick", move |a| {
            let seen = c.fetch_add(1, Ordering::Relaxed);
            assert_eq!(a[0], seen, "the guest's counter and ours agree");
            if seen == n / 10 {
                early.store(rss(), Ordering::Relaxed);
            }
            0
        })
        .build()
        .unwrap();
    let started = Instant::now();
    assert_eq!(zone.wait(), ZoneExit::Exited(0), "{}", zone.console_text());
    let elapsed = started.elapsed();
    let grew = rss().saturating_sub(rss_early.load(Ordering::Relaxed));
    let m = zone.metrics();
    assert_eq!(calls.load(Ordering::Relaxed), n);
    assert_eq!(m.hypercalls.host_call, n);
    assert_eq!(m.host_functions.get("tick"), Some(&n));
    assert_eq!(m.hypercalls.exit, 1);
    assert_eq!(m.hypercalls.rejected, 0);
    assert_eq!(m.exits.io_out, n + 1, "one exit per hypercall");
    assert_eq!(m.seccomp_refused, 0);
    assert!(
        grew < 16 << 20,
        "host memory grew {grew} bytes over {} calls",
        n - n / 10
    );
    eprintln!(
        "{n} host calls in {elapsed:?} ({:.1} us each), resident memory +{} KiB",
        elapsed.as_secs_f64() * 1e6 / n as f64,
        grew >> 10
    );
}

#[test]
fn a_million_refused_calls_are_counted_and_the_end_is_still_seen() {
    require_kvm!();
    let _alone = alone();
    let n = flood_size(1_000_000);
    let zone = Zone::builder()
        .memory_mib(8)
        .micro(hostile(&["refused", &n.to_string()]))
        .build()
        .unwrap();
    // Subscribed at once and not drained until the zone has ended.
    let events = zone.events();
    let started = Instant::now();
    assert_eq!(zone.wait(), ZoneExit::Exited(0), "{}", zone.console_text());
    let secs = started.elapsed().as_secs();
    let m = zone.metrics();
    assert_eq!(m.hypercalls.host_call, n);
    assert_eq!(m.hypercalls.rejected, n);
    assert_eq!(m.events_dropped, 0);
    let all = events.drain();
    let refused: u64 = all
        .iter()
        .filter_map(|e| match e {
            ZoneEvent::Violation(v) if v.control == "host-fn" => Some(v.count),
            _ => None,
        })
        .sum();
    assert_eq!(refused, n, "every refusal is in the events, coalesced");
    // A burst of 64, then 16 a second one by one and one coalesced event a second, plus the
    // lifecycle events.
    let bound = 64 + 17 * (secs as usize + 2) + 4;
    assert!(
        all.len() <= bound,
        "{} events in {secs} s: more than the rate limits allow ({bound})",
        all.len()
    );
    assert!(
        matches!(all.last(), Some(ZoneEvent::Stopped(ZoneExit::Exited(0)))),
        "the end is delivered last: {:?}",
        all.last()
    );
}

#[test]
fn a_256_mib_console_flood_is_counted_and_bounded() {
    require_kvm!();
    let _alone = alone();
    let before = rss();
    let zone = Zone::builder()
        .memory_mib(8)
        .micro(hostile(&["flood", "256"]))
        .build()
        .unwrap();
    assert_eq!(zone.wait(), ZoneExit::Exited(0));
    let m = zone.metrics();
    assert_eq!(m.hypercalls.console, 256 * 16);
    assert_eq!(m.console_bytes + m.console_dropped, 256 << 20);
    assert_eq!(m.console_bytes, 1 << 20, "the default limit keeps 1 MiB");
    assert_eq!(zone.console().len(), 1 << 20);
    let grew = rss().saturating_sub(before);
    assert!(grew < 64 << 20, "host memory grew {grew} bytes");
}

/// Runs `hostile <mode> <arg>` to its fault; returns it with the instruction the guest named.
fn fault_of(mode: &str, arg: &str) -> (Fault, u64) {
    let expected = common::Slot::default();
    let e = expected.clone();
    let zone = Zone::builder()
        .memory_mib(8)
        .micro(hostile(&[mode, arg]))
        .host_fn_u64("expect", move |a| {
            e.set(a[0]);
            0
        })
        .build()
        .unwrap();
    let exit = zone.wait();
    let rip = expected.get().expect("the guest announced its fault");
    match exit {
        ZoneExit::Fault(f) => (f, rip),
        other => panic!("{mode} {arg}: expected a fault, got {other:?}"),
    }
}

/// Every class of privileged instruction at CPL3 is #GP(0) at the instruction (as hardware
/// defines it), and ends the zone.
#[test]
fn every_privileged_instruction_class_faults_at_cpl3() {
    require_kvm!();
    let _alone = alone();
    let classes = [
        "cli",
        "sti",
        "hlt",
        "in",
        "out",
        "read-cr0",
        "write-cr3",
        "read-dr7",
        "lgdt",
        "lidt",
        "lldt",
        "ltr",
        "rdmsr",
        "wrmsr",
        "invlpg",
        "wbinvd",
        "invd",
        "clts",
        "lmsw",
        "swapgs",
        "rdpmc",
    ];
    let mut wrong = Vec::new();
    for class in classes {
        let (f, rip) = fault_of("priv", class);
        let gp0 = f.exception() == Exception::GeneralProtection && f.error_code == Some(0);
        if !(gp0 && f.rip == rip && f.cpl == 3) {
            wrong.push(format!(
                "{class}: {f} {:?} (instruction at {rip:#x})",
                f.error_code
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `int N` at CPL3 meets a DPL0 gate: hardware raises #GP with error code "IDT vector N" at
/// the instruction. As for `int3` (micro_faults), two KVMs this project runs on deliver it
/// otherwise, and each outcome is accepted exactly: kvm_pvm delivers vectors 3 and 4 (the two
/// Linux's IDT opens to user mode) after the instruction and raises #UD at it for every other
/// N; kvm-amd without NRIP save (the lab, under QEMU TCG) raises #GP whose error code holds the
/// gate's byte offset in a 64-bit IDT (N * 16, i.e. `(N << 4) | 2`, where hardware puts the
/// vector, `(N << 3) | 2`), with RIP after the instruction or at it (both seen, 2026-12).
#[test]
fn int_n_at_cpl3_faults_for_a_sample_of_vectors() {
    require_kvm!();
    let _alone = alone();
    let mut wrong = Vec::new();
    for n in [
        0u64, 1, 2, 3, 4, 5, 6, 8, 13, 14, 17, 31, 32, 0x21, 0x80, 0xf0, 0xff,
    ] {
        let (f, rip) = fault_of("int", &n.to_string());
        let gp =
            |code: u64| f.exception() == Exception::GeneralProtection && f.error_code == Some(code);
        let hardware = gp((n << 3) | 2) && f.rip == rip;
        let pvm = if n == 3 || n == 4 {
            u64::from(f.vector) == n && f.rip == rip + 2
        } else {
            f.exception() == Exception::InvalidOpcode && f.rip == rip
        };
        let lab = gp((n << 4) | 2) && (f.rip == rip + 2 || f.rip == rip);
        if !(hardware || pvm || lab) {
            wrong.push(format!("int {n:#x}: {f} {:?} (at {rip:#x})", f.error_code));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Each vCPU makes console writes while scribbling over the next vCPU's mailbox: every call gets
/// exactly one status, the host counts exactly the calls made, and the console holds exactly the
/// bytes the host said it accepted, all from the guest's message.
#[test]
fn vcpus_racing_on_each_others_mailboxes_get_consistent_answers() {
    require_kvm!();
    let _alone = alone();
    for vcpus in [2u64, 4] {
        let report = common::Slot::default();
        let r = report.clone();
        let zone = Zone::builder()
            .memory_mib(16)
            .vcpus(vcpus as u32)
            .micro(hostile(&["race"]))
            .host_fn("report", move |call| {
                let words: Vec<u64> = call
                    .input
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                r.set(words);
                Ok(Vec::new())
            })
            .build()
            .unwrap();
        assert_eq!(zone.wait(), ZoneExit::Exited(0), "{vcpus} vCPUs");
        let seen = report.get().expect("the guest reported");
        let (ok, bad_pointer, too_large, other, bytes) =
            (seen[0], seen[1], seen[2], seen[3], seen[4]);
        let calls = vcpus * 2000;
        assert_eq!(other, 0, "{vcpus} vCPUs: unexpected statuses");
        assert_eq!(ok + bad_pointer + too_large, calls);
        let m = zone.metrics();
        assert_eq!(m.hypercalls.console, calls, "{vcpus} vCPUs");
        assert_eq!(m.hypercalls.rejected, bad_pointer + too_large);
        assert_eq!(m.console_bytes, bytes);
        let console = zone.console();
        assert_eq!(console.len() as u64, bytes);
        assert!(console.iter().all(|b| *b == b'r'), "only the guest's bytes");
        eprintln!(
            "{vcpus} vCPUs: {ok} accepted ({bytes} bytes), {bad_pointer} bad pointers, {too_large} too large"
        );
    }
}

/// A zone's memory starts zeroed: after one zone filled its heap, the next one (same size, same
/// process) finds no foreign byte in its own.
#[test]
fn fresh_guest_memory_holds_no_foreign_bytes() {
    require_kvm!();
    let _alone = alone();
    let filled = Zone::builder()
        .memory_mib(64)
        .micro(hostile(&["fill"]))
        .build()
        .unwrap();
    assert_eq!(filled.wait(), ZoneExit::Exited(0));
    drop(filled);
    for _ in 0..2 {
        let found = common::Slot::default();
        let f = found.clone();
        let zone = Zone::builder()
            .memory_mib(64)
            .micro(hostile(&["scan"]))
            .host_fn_u64("found", move |a| {
                f.set(a[0]);
                0
            })
            .build()
            .unwrap();
        assert_eq!(
            zone.wait(),
            ZoneExit::Exited(0),
            "pages not zero; first foreign byte at {:?}",
            found.get()
        );
    }
}

/// Four threads pause, resume and read a zone as fast as they can while its vCPUs spin or call
/// the host; then one kills it while the others go on. Every call returns, within a bound, and
/// the zone ends killed.
#[test]
fn pause_resume_and_kill_storms_from_several_threads_always_return() {
    require_kvm!();
    let _alone = alone();
    let calling = Zone::builder()
        .memory_mib(8)
        .vcpus(2)
        .micro(hostile(&["calls", "1000000000"]))
        .host_fn_u64("tick", |_| 0)
        .build()
        .unwrap();
    let (spinning, _) = common::spinning_zone(Zone::builder().memory_mib(8).vcpus(2));
    for zone in [calling, spinning] {
        let stop = Arc::new(AtomicBool::new(false));
        let slowest = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for t in 0..4u64 {
            let (h, stop, slowest) = (zone.handle(), stop.clone(), slowest.clone());
            threads.push(std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let _ = match i % 4 {
                        0 | 1 => h.pause().map(drop),
                        2 => h.resume().map(drop),
                        _ => {
                            let _ = h.metrics();
                            let _ = h.state();
                            Ok(())
                        }
                    };
                    let took = started.elapsed().as_micros() as u64;
                    slowest.fetch_max(took, Ordering::Relaxed);
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407)
                        >> 7;
                }
            }));
        }
        // Not scaled: the lab's emulated machine, loaded with signal storms for seconds, now
        // and then stops answering a CPU's IPIs (a soft lockup of the lab kernel, lab/run).
        std::thread::sleep(Duration::from_millis(500));
        zone.kill();
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("a controller thread panicked");
        }
        assert_eq!(
            zone.wait_timeout(common::scaled(Duration::from_secs(5))),
            Some(ZoneExit::Killed)
        );
        let slowest = Duration::from_micros(slowest.load(Ordering::Relaxed));
        assert!(
            slowest < common::scaled(Duration::from_secs(2)),
            "a control call took {slowest:?}"
        );
        assert!(zone.pause().is_err(), "a killed zone cannot be paused");
        assert_eq!(zone.metrics().seccomp_refused, 0);
    }
}
