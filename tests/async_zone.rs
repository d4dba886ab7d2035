//! The async face (`zones::aio`, feature `tokio`) on tokio runtimes: nothing blocks a worker
//! thread, commands run concurrently on one zone and on several, dropping a command's future
//! kills the command and leaves the zone working, and a zone killed under waiting futures
//! resolves every one of them with an error. Micro-zone tests run on this machine's KVM; the
//! Linux-zone ones in the lab (`lab/test async_zone`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use zones::prelude::*;
use zones::{Command, ExecError, LinuxBoot, ProcessEvent};

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A task that counts while the runtime's only thread is free: it advances only if nothing
/// else blocks that thread.
async fn ticker(count: Arc<AtomicU64>) {
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        count.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn waiting_for_a_micro_zone_does_not_block_a_single_threaded_runtime() {
    require_kvm!();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (zone, _) = common::spinning_zone(Zone::builder().name("async-spin").memory_mib(8));
        let ticks = Arc::new(AtomicU64::new(0));
        let ticking = tokio::spawn(ticker(ticks.clone()));
        let handle = zone.handle();
        // Killed from another OS thread after a while; until then wait_async must let the
        // ticker run on this runtime's only thread.
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            handle.kill();
        });
        let mut events = zone.events_async();
        assert_eq!(zone.wait_async().await, ZoneExit::Killed);
        let ticked = ticks.load(Ordering::Relaxed);
        assert!(
            ticked >= 5,
            "the runtime was blocked: {ticked} ticks in 300 ms"
        );
        let mut seen = Vec::new();
        drop(zone);
        // The first subscription holds the whole life, and ends once the zone is gone.
        let collect = async {
            while let Some(e) = events.next().await {
                seen.push(e);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), collect)
            .await
            .expect("the event stream ends when the zone is gone");
        assert!(
            seen.contains(&ZoneEvent::Stopped(ZoneExit::Killed)),
            "{seen:?}"
        );
        ticking.abort();
        killer.join().unwrap();
    });
}

#[test]
fn build_async_runs_a_micro_zone_and_exec_async_names_the_missing_agent() {
    require_kvm!();
    runtime(2).block_on(async {
        let zone = Zone::builder()
            .name("async-hello")
            .memory_mib(8)
            .micro(guest!("HELLO"))
            .host_fn_u64("add", |args| args.iter().sum())
            .build_async()
            .await
            .expect("micro zone");
        assert_eq!(zone.wait_async().await, ZoneExit::Exited(0));
        assert!(
            zone.console_text().contains("42"),
            "{}",
            zone.console_text()
        );
        match zone.exec_async(&Command::new("true")).await {
            Err(ExecError::NoAgent { zone }) => assert_eq!(zone, "async-hello"),
            other => panic!("expected NoAgent, got {other:?}"),
        }
        // A build error comes back as the error, not a panic.
        let bad = Zone::builder()
            .name("async-bad")
            .vcpus(0)
            .build_async()
            .await;
        assert!(matches!(bad, Err(BuildError::Vcpus { .. })), "{bad:?}");
    });
}

#[test]
fn violations_reach_an_async_subscriber() {
    require_kvm!();
    runtime(2).block_on(async {
        let zone = Zone::builder()
            .name("async-violations")
            .memory_mib(8)
            .micro(guest!("HOSTCALL"))
            .build_async()
            .await
            .expect("micro zone");
        let mut events = zone.events_async();
        let violation = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = events.next().await {
                if let ZoneEvent::Violation(v) = e {
                    return Some(v);
                }
            }
            None
        })
        .await
        .expect("a violation within 10 s")
        .expect("a violation before the stream ended");
        assert_eq!(violation.control, "host-fn", "{violation}");
        assert!(violation.detail.contains("\"mul\""), "{violation}");
        zone.kill();
        zone.wait_async().await;
    });
}

// ----- Linux zones (lab) ---------------------------------------------------------------------

fn sh(script: &str) -> Command {
    Command::new("sh").arg("-c").arg(script)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

async fn linux_zone(name: &str, boot: LinuxBoot, memory_mib: u64) -> Zone {
    Zone::builder()
        .name(name)
        .memory_mib(memory_mib)
        .linux(boot)
        .deadline(common::scaled(Duration::from_secs(60)))
        .build_async()
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The minimal kernel (`lab/minikernel`) when it is built: it boots in a fraction of the
/// Debian kernel's time, which matters for eight zones under emulation.
fn small_boot() -> LinuxBoot {
    let dir = std::env::var_os("ZONES_MINI_KERNEL_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/minikernel"),
        std::path::PathBuf::from,
    );
    let image = dir.join("bzImage");
    if image.is_file() {
        common::with_userland(LinuxBoot::new(image))
    } else {
        common::boot()
    }
}

/// Runs `cmd`, or panics with what the zone shows: its console, its start (host milestones and
/// guest marks) and its counters twice, a second apart (whether the guest still makes exits).
async fn exec_ok(zone: &Zone, cmd: &Command) -> zones::Output {
    match zone.exec_async(cmd).await {
        Ok(out) => out,
        Err(e) => {
            let before = zone.metrics();
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!(
                "exec failed: {e}\nconsole:\n{}\nstart:\n{}\ncounters:\n{before:?}\na second later:\n{:?}",
                zone.console_text(),
                zone.boot_report_async().await,
                zone.metrics()
            )
        }
    }
}

#[test]
fn sixty_four_concurrent_execs_on_one_zone_and_on_eight() {
    require_linux!();
    runtime(4).block_on(async {
        let one = Arc::new(linux_zone("async-one", small_boot(), 256).await);
        let ready = common::scaled(Duration::from_secs(30));
        one.wait_ready_async(ready).await.expect("agent");
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let zone = one.clone();
                tokio::spawn(async move { exec_ok(&zone, &sh(&format!("echo {i}"))).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let out = task.await.unwrap();
            assert_eq!(text(&out.stdout), i.to_string());
            assert!(out.status.success());
        }
        let report = one.boot_report_async().await;
        assert_eq!(report.guest_marks.len(), 7, "{report}");
        assert!(
            report
                .milestones
                .iter()
                .any(|m| m.0 == "first command ended"),
            "{report}"
        );
        one.kill();

        // Eight zones built concurrently, eight commands each, all at once.
        let zones: Vec<Arc<Zone>> = futures_join(
            (0..8)
                .map(|z| async move { linux_zone(&format!("async-{z}"), small_boot(), 128).await })
                .collect(),
        )
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let zone = zones[i % 8].clone();
                tokio::spawn(async move {
                    let out = exec_ok(&zone, &sh(&format!("echo {i} $(hostname)"))).await;
                    (i, text(&out.stdout))
                })
            })
            .collect();
        for task in tasks {
            let (i, out) = task.await.unwrap();
            assert!(out.starts_with(&format!("{i} ")), "{i}: {out:?}");
        }
        for zone in &zones {
            zone.kill();
        }
    });
}

/// Awaits every future, concurrently, on the current task.
async fn futures_join<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Whether the guest process whose pid is in `file` is gone, waiting up to `within`.
async fn gone(zone: &Zone, file: &str, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        let out = exec_ok(
            zone,
            &sh(&format!(
                "kill -0 $(cat {file}) 2>/dev/null && echo alive || echo gone"
            )),
        )
        .await;
        if text(&out.stdout) == "gone" {
            return true;
        }
        if tokio::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn cancellation_kills_the_command_and_the_zone_goes_on() {
    require_linux!();
    runtime(2).block_on(async {
        let zone = linux_zone("async-cancel", small_boot(), 256).await;
        let ready = common::scaled(Duration::from_secs(30));
        zone.wait_ready_async(ready).await.expect("agent");
        let within = common::scaled(Duration::from_secs(5));

        // A future dropped while its command sleeps (a timeout drops it).
        let slow_cmd = sh("echo $$ > /tmp/slow; sleep 60");
        let slow = zone.exec_async(&slow_cmd);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), slow)
                .await
                .is_err()
        );
        assert!(
            gone(&zone, "/tmp/slow", within).await,
            "the dropped exec's command still runs"
        );

        // A process dropped in the middle of its output.
        let mut process = zone
            .spawn_async(&sh("echo $$ > /tmp/loud; while :; do echo line; done"))
            .await
            .expect("spawn");
        let mut lines = 0;
        while lines < 1000 {
            match process.next_event().await.expect("output") {
                Some(ProcessEvent::Stdout(bytes)) => {
                    lines += bytes.iter().filter(|&&b| b == b'\n').count()
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => panic!("ended early"),
            }
        }
        drop(process);
        assert!(
            gone(&zone, "/tmp/loud", within).await,
            "the dropped process still runs"
        );

        // Stdin as an AsyncWrite, then the output as a Stream; and exec_async with stdin.
        let mut cat = zone
            .spawn_async(&Command::new("wc").arg("-c"))
            .await
            .expect("spawn");
        let mut stdin = cat.take_stdin().expect("stdin");
        let chunk = vec![b'x'; 100_000];
        for _ in 0..20 {
            stdin.write_all(&chunk).await.expect("write");
        }
        stdin.shutdown().await.expect("end of input");
        let out = cat.wait_with_output().await.expect("wc");
        assert_eq!(text(&out.stdout), "2000000");
        let fed = exec_ok(
            &zone,
            &Command::new("wc").arg("-c").stdin(vec![7u8; 3 << 20]),
        )
        .await;
        assert_eq!(text(&fed.stdout), (3 << 20).to_string());
        let timed = exec_ok(
            &zone,
            &Command::new("sleep")
                .arg("30")
                .timeout(Duration::from_millis(300)),
        )
        .await;
        assert!(timed.status.timed_out(), "{:?}", timed.status);
        zone.kill();
    });
}

#[test]
fn a_zone_killed_under_waiting_futures_resolves_each_with_an_error() {
    require_linux!();
    runtime(2).block_on(async {
        let zone = Arc::new(linux_zone("async-killed", small_boot(), 256).await);
        let ready = common::scaled(Duration::from_secs(30));
        zone.wait_ready_async(ready).await.expect("agent");
        let execs: Vec<_> = (0..8)
            .map(|_| {
                let zone = zone.clone();
                tokio::spawn(async move { zone.exec_async(&sh("sleep 60")).await })
            })
            .collect();
        let mut process = zone.spawn_async(&sh("sleep 60")).await.expect("spawn");
        let waiter = {
            let zone = zone.clone();
            tokio::spawn(async move { zone.wait_async().await })
        };
        // Let the commands start.
        tokio::time::sleep(common::scaled(Duration::from_millis(500))).await;
        zone.kill();
        let bound = common::scaled(Duration::from_secs(5));
        for task in execs {
            let result = tokio::time::timeout(bound, task)
                .await
                .expect("resolved")
                .unwrap();
            assert!(
                matches!(result, Err(ExecError::ZoneStopped { .. })),
                "{result:?}"
            );
        }
        let event = tokio::time::timeout(bound, process.next_event())
            .await
            .expect("resolved");
        assert!(
            matches!(event, Err(ExecError::ZoneStopped { .. })),
            "{event:?}"
        );
        let exit = tokio::time::timeout(bound, waiter)
            .await
            .expect("resolved")
            .unwrap();
        assert_eq!(exit, ZoneExit::Killed);
        // And a new command on the dead zone fails at once.
        let late = zone.exec_async(&Command::new("true")).await;
        assert!(
            matches!(late, Err(ExecError::ZoneStopped { .. })),
            "{late:?}"
        );
    });
}
