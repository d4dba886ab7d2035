//! Micro-zone benchmarks, each beside a raw kvm-ioctls floor measured in the same run:
//! - lifecycle: build a zone, run it to its first hypercall, drop it; floor: open /dev/kvm,
//!   create a VM, memory and a vCPU, run to a real-mode HLT, tear down. The start alone
//!   (teardown untimed) has a second floor doing the zone's kind of work: a vCPU set up for
//!   long mode at CPL3 (GDT, TSS, page tables) run to its first PIO exit, on the calling thread.
//! - hypercall: one host-function call round trip from a running guest, with seccomp filters
//!   (the default: the function runs on the vCPU's helper thread) and without (on the vCPU
//!   thread); floor: one raw PIO exit from CPL3 (the exit a hypercall costs), and one zones
//!   hypercall that does no host work.
//!
//! `cargo bench --bench micro_zone` prints each median and its ratio to its floor at the end.

mod raw;

use criterion::{Criterion, criterion_group};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use zones::prelude::*;
use zones::seccomp::Seccomp;

fn program(mode: &str) -> GuestProgram {
    GuestProgram::from_elf(include_bytes!(env!("ZONES_GUEST_BENCH")))
        .unwrap()
        .arg(mode)
}

fn lifecycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("lifecycle");
    g.sample_size(50).measurement_time(Duration::from_secs(8));
    g.bench_function("floor_raw_kvm_create_run_hlt_drop", |b| {
        b.iter(raw::create_run_hlt_drop)
    });
    let first = program("first");
    let start_zone = || start_zone(&first, Seccomp::Enforce);
    g.bench_function("zone_build_first_hypercall_drop", |b| {
        b.iter(|| drop(start_zone()))
    });
    // Start latency alone: teardown happens outside the timed part on both sides.
    g.bench_function("floor_raw_kvm_create_run_hlt", |b| {
        b.iter_custom(|iters| timed_without_drop(iters, raw::create_run_hlt))
    });
    g.bench_function("floor_raw_kvm_cpl3_first_exit", |b| {
        b.iter_custom(|iters| timed_without_drop(iters, raw::Cpl3Loop::started))
    });
    g.bench_function("zone_build_to_first_hypercall", |b| {
        b.iter_custom(|iters| timed_without_drop(iters, start_zone))
    });
    g.finish();
}

/// Builds a zone running the `first` guest and waits (spinning) for its first hypercall.
fn start_zone(first: &GuestProgram, seccomp: Seccomp) -> Zone {
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let zone = Zone::builder()
        .memory_mib(8)
        .seccomp(seccomp)
        .micro(first.clone())
        .host_fn_u64("ready", move |_| {
            r.store(true, Ordering::Release);
            0
        })
        .build()
        .unwrap();
    while !ready.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    zone
}

/// Start latency in interleaved rounds (each round: both floors, then zones with filters and
/// without), so that the machine's drift between criterion's groups does not enter the ratios:
/// medians of `ROUNDS` rounds after 10 warm-up ones.
fn interleaved_start() {
    const ROUNDS: usize = 200;
    let first = program("first");
    let mut times: [Vec<Duration>; 4] = Default::default();
    for round in 0..ROUNDS + 10 {
        let mut took = [Duration::ZERO; 4];
        let t = Instant::now();
        let hlt = raw::create_run_hlt();
        took[0] = t.elapsed();
        drop(hlt);
        let t = Instant::now();
        let cpl3 = raw::Cpl3Loop::started();
        took[1] = t.elapsed();
        drop(cpl3);
        for (i, mode) in [(2, Seccomp::Enforce), (3, Seccomp::Off)] {
            let t = Instant::now();
            let zone = start_zone(&first, mode);
            took[i] = t.elapsed();
            drop(zone);
        }
        if round >= 10 {
            for (v, t) in times.iter_mut().zip(took) {
                v.push(t);
            }
        }
    }
    let [hlt, cpl3, zone, off] = times.map(|mut v| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e6
    });
    println!("\nstart latency, medians of {ROUNDS} interleaved rounds:");
    println!(
        "  floor: raw KVM to a real-mode HLT {hlt:.1} µs; raw KVM to a CPL3 PIO exit {cpl3:.1} µs"
    );
    for (name, v) in [
        ("zones build() to first hypercall", zone),
        ("  the same, Seccomp::Off", off),
    ] {
        println!(
            "  {name}: {v:.1} µs; ratio to the HLT floor {:.2}, to the CPL3 floor {:.2}",
            v / hlt,
            v / cpl3
        );
    }
}

/// Times `iters` runs of `start`, dropping each result outside the timed part.
fn timed_without_drop<T>(iters: u64, start: impl Fn() -> T) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        let started = start();
        total += t.elapsed();
        drop(started);
    }
    total
}

/// Host side of the `tick` guest: lets exactly the requested number of calls through.
#[derive(Default)]
struct Ticks {
    state: Mutex<(u64, u64)>, // (calls so far, calls allowed)
    cv: Condvar,
}

fn hypercalls(c: &mut Criterion) {
    let mut g = c.benchmark_group("hypercall");
    g.sample_size(50).measurement_time(Duration::from_secs(8));
    let mut floor = raw::Cpl3Loop::new();
    g.bench_function("floor_raw_cpl3_pio_exit", |b| b.iter(|| floor.round_trip()));

    // Enforce (the default): host functions run on the vCPU's unfiltered helper thread. Off: on
    // the vCPU thread itself, as before filters (the cost of the hand-off is the difference).
    host_fn_round_trip(&mut g, "zone_host_fn_round_trip", Seccomp::Enforce);
    host_fn_round_trip(&mut g, "zone_host_fn_round_trip_seccomp_off", Seccomp::Off);

    let zone = Zone::builder()
        .memory_mib(8)
        .micro(program("null"))
        .build()
        .unwrap();
    g.bench_function("zone_null_hypercall", |b| {
        b.iter_custom(|iters| {
            let before = zone.metrics().hypercalls.console;
            let start = Instant::now();
            while zone.metrics().hypercalls.console < before + iters {
                std::thread::sleep(Duration::from_micros(200));
            }
            let took = start.elapsed();
            let done = zone.metrics().hypercalls.console - before;
            took.mul_f64(iters as f64 / done as f64)
        })
    });
    g.finish();
}

/// The round trip of a host function in a zone with seccomp `mode`.
fn host_fn_round_trip(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mode: Seccomp,
) {
    let ticks = Arc::new(Ticks::default());
    let t = ticks.clone();
    let zone = Zone::builder()
        .memory_mib(8)
        .seccomp(mode)
        .micro(program("tick"))
        .host_fn_u64("tick", move |_| {
            let mut st = t.state.lock().unwrap();
            st.0 += 1;
            if st.0 >= st.1 {
                t.cv.notify_all();
                drop(t.cv.wait_while(st, |st| st.0 >= st.1).unwrap());
            }
            1
        })
        .build()
        .unwrap();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut st = ticks.state.lock().unwrap();
            let start = Instant::now();
            st.1 = st.0 + iters;
            ticks.cv.notify_all();
            let _st = ticks.cv.wait_while(st, |st| st.0 < st.1).unwrap();
            start.elapsed()
        })
    });
    // Stop the zone, then let its vCPU out of the host function it is blocked in.
    zone.kill();
    ticks.state.lock().unwrap().1 = u64::MAX;
    ticks.cv.notify_all();
    drop(zone);
}

criterion_group!(benches, lifecycle, hypercalls);

fn median_ns(group: &str, name: &str) -> Option<f64> {
    let path = format!("target/criterion/{group}/{name}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let at = text.find("\"median\"")?;
    let rest = &text[at..];
    let p = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    rest[p..].split([',', '}']).next()?.trim().parse().ok()
}

fn report() {
    let rows = [
        (
            "lifecycle",
            "zone_build_first_hypercall_drop",
            "floor_raw_kvm_create_run_hlt_drop",
        ),
        (
            "lifecycle",
            "zone_build_to_first_hypercall",
            "floor_raw_kvm_create_run_hlt",
        ),
        (
            "lifecycle",
            "zone_build_to_first_hypercall",
            "floor_raw_kvm_cpl3_first_exit",
        ),
        (
            "hypercall",
            "zone_host_fn_round_trip",
            "floor_raw_cpl3_pio_exit",
        ),
        (
            "hypercall",
            "zone_host_fn_round_trip_seccomp_off",
            "floor_raw_cpl3_pio_exit",
        ),
        (
            "hypercall",
            "zone_null_hypercall",
            "floor_raw_cpl3_pio_exit",
        ),
    ];
    println!("\nmedians (ratio to the floor measured in this run):");
    for (group, name, floor) in rows {
        if let (Some(v), Some(f)) = (median_ns(group, name), median_ns(group, floor)) {
            println!(
                "  {group}/{name}: {:.1} µs; floor {floor}: {:.1} µs; ratio {:.2}",
                v / 1e3,
                f / 1e3,
                v / f
            );
        }
    }
}

fn main() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED micro_zone benchmarks: /dev/kvm is absent");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
    interleaved_start();
}
