//! What zones says through `tracing` (one process-wide subscriber, installed by the first test
//! that needs it): builds with their phases and results, lifecycle events, stops, policy
//! violations from vCPU threads (forwarded: the filtered threads never run the subscriber, and
//! nothing is refused), guest text escaped.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use zones::prelude::*;

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The lines about zone `zone` (waiting up to 5 s for one that contains `wanted`).
    fn lines_of(&self, zone: &str, wanted: &str) -> Vec<String> {
        let started = std::time::Instant::now();
        loop {
            let lines: Vec<String> = self
                .text()
                .lines()
                .filter(|l| l.contains(&format!("zone={zone}")))
                .map(str::to_owned)
                .collect();
            if lines.iter().any(|l| l.contains(wanted))
                || started.elapsed() > Duration::from_secs(5)
            {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Log::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        log
    })
}

#[test]
fn a_zone_life_is_traced() {
    require_kvm!();
    let log = log();
    let zone = Zone::builder()
        .name("traced-hello")
        .memory_mib(8)
        .micro(guest!("HELLO"))
        .host_fn_u64("add", |args| args.iter().sum())
        .build()
        .unwrap();
    assert_eq!(zone.wait(), ZoneExit::Exited(0));
    let lines = log.lines_of("traced-hello", "zone stopped");
    let has = |what: &str| lines.iter().any(|l| l.contains(what));
    assert!(
        has("build phase") && has("phase=\"VM\"") && has("phase=\"vCPUs\""),
        "{lines:#?}"
    );
    assert!(has("zone built") && has("kind=\"micro\""), "{lines:#?}");
    assert!(
        has("zone stopped") && has("exited with code 0"),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l.contains("id=")), "{lines:#?}");

    // Control calls from the embedder's thread.
    let (zone, _) = common::spinning_zone(Zone::builder().name("traced-spin").memory_mib(8));
    zone.pause().unwrap();
    zone.resume().unwrap();
    zone.kill();
    let lines = log.lines_of("traced-spin", "killed");
    for what in ["zone paused", "zone resumed", "zone stopped", "killed"] {
        assert!(lines.iter().any(|l| l.contains(what)), "{what}: {lines:#?}");
    }

    // A build that fails says so, with the error.
    let err = Zone::builder()
        .name("traced-fails")
        .memory_mib(8)
        .build()
        .unwrap_err();
    let lines = log.lines_of("traced-fails", "zone build failed");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("zone build failed") && l.contains(&err.to_string())),
        "{lines:#?}"
    );
}

#[test]
fn guest_text_is_escaped_and_filtered_threads_forward_violations() {
    require_kvm!();
    let log = log();
    // A guest whose panic message tries to forge a log line.
    let forged = "first\nzone=victim zone built\x1b[2J";
    let zone = Zone::builder()
        .name("traced-panic")
        .memory_mib(8)
        .micro(guest!("PANIC").arg("say").arg(forged))
        .build()
        .unwrap();
    assert!(matches!(zone.wait(), ZoneExit::Panicked(_)));
    let lines = log.lines_of("traced-panic", "zone stopped");
    let stop = lines
        .iter()
        .find(|l| l.contains("zone stopped"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(stop.contains("first\\nzone=victim"), "{stop}");
    let text = log.text();
    eprintln!("{stop}");
    assert!(!text.contains('\x1b'), "no raw escape byte reaches the log");
    assert!(
        !text.lines().any(|l| l.starts_with("zone=victim")),
        "no forged line"
    );

    // Violations happen on the vCPU thread, which runs under its seccomp filter: the record is
    // forwarded, and the filter refuses nothing.
    let zone = Zone::builder()
        .name("traced-oob")
        .memory_mib(8)
        .micro(guest!("OOB"))
        .host_fn("report", |_| Ok(Vec::new()))
        .build()
        .unwrap();
    let _ = zone.wait();
    let lines = log.lines_of("traced-oob", "policy violation");
    assert!(
        lines.iter().any(|l| l.contains("WARN")
            && l.contains("policy violation")
            && l.contains("control=")),
        "{lines:#?}"
    );
    assert_eq!(
        zone.metrics().seccomp_refused,
        0,
        "tracing made no filtered thread call what it may not"
    );
}
