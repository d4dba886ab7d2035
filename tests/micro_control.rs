//! Real-time containment of running zones: kill, deadlines, pause/resume, many zones at once.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use zones::prelude::*;

#[test]
fn kill_stops_an_infinite_loop_within_100ms() {
    require_kvm!();
    let (zone, _) = common::spinning_zone(Zone::builder().memory_mib(8));
    let handle = zone.handle();
    let started = Instant::now();
    std::thread::spawn(move || handle.kill()).join().unwrap();
    let exit = zone.wait();
    let took = started.elapsed();
    assert_eq!(exit, ZoneExit::Killed);
    assert!(
        took < common::scaled(Duration::from_millis(100)),
        "kill took {took:?}"
    );
    assert!(zone.metrics().exits.interrupted >= 1);
    assert!(matches!(zone.state(), ZoneState::Ended(ZoneExit::Killed)));
}

#[test]
fn deadline_stops_an_infinite_loop_within_100ms_of_expiry() {
    require_kvm!();
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let (zone, _) = common::spinning_zone(Zone::builder().memory_mib(8).deadline(deadline));
    let exit = zone.wait();
    let took = started.elapsed();
    assert_eq!(exit, ZoneExit::DeadlineExceeded);
    assert!(took >= deadline, "stopped early: {took:?}");
    assert!(
        took < deadline + common::scaled(Duration::from_millis(100)),
        "stopped {:?} after the deadline",
        took - deadline
    );
}

#[test]
fn a_deadline_can_be_moved_while_running() {
    require_kvm!();
    // Later: the first deadline must not fire. It leaves room for the guest to start spinning
    // (slow under emulation, hence scaled).
    let first = common::scaled(Duration::from_millis(200));
    let (zone, _) = common::spinning_zone(Zone::builder().memory_mib(8).deadline(first));
    assert_eq!(
        zone.state(),
        ZoneState::Running,
        "started too slowly for this test"
    );
    zone.set_deadline(first * 3);
    let moved = Instant::now();
    assert_eq!(zone.wait(), ZoneExit::DeadlineExceeded);
    assert!(moved.elapsed() >= first * 2, "the old deadline fired");

    // Earlier: a far deadline brought close fires at the new time.
    let (zone, _) = common::spinning_zone(
        Zone::builder()
            .memory_mib(8)
            .deadline(Duration::from_secs(600)),
    );
    zone.set_deadline(Duration::from_millis(50));
    let exit = zone.wait_timeout(common::scaled(Duration::from_secs(1)));
    assert_eq!(exit, Some(ZoneExit::DeadlineExceeded));
}

#[test]
fn pause_freezes_guest_progress_and_resume_continues_it() {
    require_kvm!();
    let (zone, counter) = common::spinning_zone(Zone::builder().memory_mib(8));
    let events = zone.events();
    zone.pause().unwrap();
    assert_eq!(zone.state(), ZoneState::Paused);
    let frozen = common::read_u64(&zone, counter);
    let run_time = zone.metrics().vcpu_run_time;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        common::read_u64(&zone, counter),
        frozen,
        "counter advanced while paused"
    );
    assert_eq!(
        zone.metrics().vcpu_run_time,
        run_time,
        "vCPU time advanced while paused"
    );
    zone.resume().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        common::read_u64(&zone, counter) > frozen,
        "counter did not advance after resume"
    );
    zone.kill();
    assert_eq!(zone.wait(), ZoneExit::Killed);
    let seen: Vec<_> = events.drain();
    assert!(
        seen.contains(&ZoneEvent::Paused) && seen.contains(&ZoneEvent::Resumed),
        "{seen:?}"
    );
    assert_eq!(seen.last(), Some(&ZoneEvent::Stopped(ZoneExit::Killed)));
    assert!(matches!(zone.pause(), Err(ControlError::Ended { .. })));
}

#[test]
fn pause_and_kill_reach_every_vcpu() {
    require_kvm!();
    let zone = Zone::builder()
        .memory_mib(16)
        .vcpus(4)
        .micro(guest!("MULTI"))
        .host_fn_u64("checkin", |_| 0)
        .start_paused(true)
        .build()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        zone.metrics().hypercalls.host_call,
        0,
        "nothing runs while started paused"
    );
    zone.resume().unwrap();
    assert_eq!(zone.wait(), ZoneExit::Exited(4));
}

#[test]
fn sixty_four_zones_are_alive_at_once() {
    require_kvm!();
    const N: usize = 64;
    // (guests inside `arrive`, released by the test) and its condition variable.
    let gate = Arc::new((Mutex::new((0usize, false)), Condvar::new()));
    let zones: Vec<Zone> = (0..N)
        .map(|i| {
            let gate = gate.clone();
            Zone::builder()
                .name(format!("many-{i}"))
                .memory_mib(8)
                .micro(guest!("RENDEZVOUS"))
                .host_fn_u64("arrive", move |_| {
                    let (state, cv) = &*gate;
                    let mut st = state.lock().unwrap();
                    st.0 += 1;
                    cv.notify_all();
                    let (st, _) = cv
                        .wait_timeout_while(st, Duration::from_secs(30), |st| !st.1)
                        .unwrap();
                    if st.1 { 7 } else { 0 }
                })
                .build()
                .unwrap()
        })
        .collect();
    let (state, cv) = &*gate;
    let st = cv
        .wait_timeout_while(state.lock().unwrap(), Duration::from_secs(30), |st| {
            st.0 < N
        })
        .unwrap()
        .0;
    assert_eq!(st.0, N, "not every zone reached its host call");
    drop(st);
    // Every guest is blocked inside `arrive` now: all 64 zones exist and are running.
    let running = zones
        .iter()
        .filter(|z| z.state() == ZoneState::Running)
        .count();
    state.lock().unwrap().1 = true;
    cv.notify_all();
    assert_eq!(running, N);
    for z in &zones {
        let exit = z.wait_timeout(common::scaled(Duration::from_secs(10)));
        assert_eq!(
            exit,
            Some(ZoneExit::Exited(7)),
            "{} ({:?}): {}",
            z.name(),
            z.state(),
            z.metrics()
        );
    }
}

#[test]
fn handles_outlive_the_zone() {
    require_kvm!();
    let (zone, counter) = common::spinning_zone(Zone::builder().memory_mib(8));
    let handle = zone.handle();
    drop(zone);
    assert_eq!(handle.wait(), ZoneExit::Killed, "dropping a zone kills it");
    handle.kill();
    assert!(handle.resume().is_err());
    assert!(matches!(
        handle.read_memory(counter, &mut [0; 8]),
        Err(zones::MemoryAccessError::Released { .. })
    ));
    assert!(handle.metrics().uptime > Duration::ZERO);
}

/// A resume from another thread while a pause waits for a vCPU that is inside a host function
/// ends that pause: control calls always return.
#[test]
fn a_resume_racing_a_pending_pause_lets_the_pause_return() {
    require_kvm!();
    let (arrived, release) = (Arc::new(Mutex::new(false)), Arc::new(Condvar::new()));
    let (a, r) = (arrived.clone(), release.clone());
    let zone = Zone::builder()
        .memory_mib(8)
        .micro(guest!("RENDEZVOUS"))
        .host_fn_u64("arrive", move |_| {
            let mut st = a.lock().unwrap();
            *st = true;
            r.notify_all();
            // Stay inside the host function until the test says so.
            let _ = r.wait_timeout_while(st, Duration::from_secs(30), |st| *st);
            7
        })
        .build()
        .unwrap();
    let st = release
        .wait_timeout_while(arrived.lock().unwrap(), Duration::from_secs(10), |st| !*st)
        .unwrap()
        .0;
    assert!(*st, "the guest never called arrive");
    drop(st);
    let pauser = {
        let handle = zone.handle();
        std::thread::spawn(move || handle.pause())
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !pauser.is_finished(),
        "pause waits for the vCPU in the host function"
    );
    zone.resume().unwrap();
    let until = Instant::now() + common::scaled(Duration::from_secs(2));
    while !pauser.is_finished() {
        assert!(
            Instant::now() < until,
            "pause still blocked after the resume"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(pauser.join().unwrap(), Ok(()));
    assert_eq!(zone.state(), ZoneState::Running);
    *arrived.lock().unwrap() = false;
    release.notify_all();
    assert_eq!(
        zone.wait_timeout(common::scaled(Duration::from_secs(10))),
        Some(ZoneExit::Exited(7))
    );
}

/// Host functions that pause and resume their own zone, called at once from 2 and 4 vCPUs.
#[test]
fn host_functions_pausing_their_own_zone_from_several_vcpus_do_not_deadlock() {
    require_kvm!();
    for vcpus in [2u32, 4] {
        let me: Arc<std::sync::OnceLock<ZoneHandle>> = Arc::default();
        let slot = me.clone();
        let zone = Zone::builder()
            .memory_mib(16)
            .vcpus(vcpus)
            .micro(guest!("MULTI"))
            .host_fn_u64("checkin", move |_| {
                let zone = slot.get().expect("handle set before resume");
                zone.pause().expect("pause from a host function");
                zone.resume().expect("resume from a host function");
                0
            })
            .start_paused(true)
            .build()
            .unwrap();
        let _ = me.set(zone.handle());
        zone.resume().unwrap();
        let exit = zone.wait_timeout(common::scaled(Duration::from_secs(10)));
        assert_eq!(
            exit,
            Some(ZoneExit::Exited(vcpus as i32)),
            "{vcpus} vCPUs: state {:?}",
            zone.state()
        );
    }
}

#[test]
fn quarantine_freezes_the_zone_keeps_evidence_and_holds_until_released() {
    require_kvm!();
    let (zone, counter) = common::spinning_zone(Zone::builder().memory_mib(8));
    let dump = std::env::temp_dir().join(format!("zones-quarantine-{}", std::process::id()));
    let evidence = zone
        .quarantine_with(zones::QuarantineOptions::default().memory_dump(&dump))
        .unwrap();
    assert_eq!(zone.state(), ZoneState::Quarantined);
    let frozen = common::read_u64(&zone, counter);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(common::read_u64(&zone, counter), frozen, "still running");
    assert!(matches!(
        zone.resume(),
        Err(ControlError::Quarantined { .. })
    ));
    assert_eq!(evidence.zone, zone.name());
    assert_eq!(
        evidence.recent_events.last(),
        Some(&ZoneEvent::Quarantined),
        "{:?}",
        evidence.recent_events
    );
    assert!(evidence.metrics.vcpu_run_time > Duration::ZERO);
    let taken = evidence.memory_dump.expect("a dump was asked for");
    assert_eq!((taken.bytes, taken.error), (8 << 20, None));
    let bytes = std::fs::read(&dump).unwrap();
    std::fs::remove_file(&dump).unwrap();
    let at = counter as usize;
    let dumped = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(dumped, frozen, "the dump holds the frozen counter");
    zone.release().unwrap();
    assert_eq!(zone.state(), ZoneState::Running);
    let until = Instant::now() + common::scaled(Duration::from_secs(2));
    while common::read_u64(&zone, counter) == frozen {
        assert!(
            Instant::now() < until,
            "the counter did not move after release"
        );
        std::thread::yield_now();
    }
    zone.kill();
    assert_eq!(zone.wait(), ZoneExit::Killed);
    assert!(
        zone.quarantine().is_err(),
        "an ended zone cannot be quarantined"
    );
}
