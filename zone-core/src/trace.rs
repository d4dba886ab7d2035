//! What zones says through [`tracing`]: a span around each `build()` with its phases (debug) and
//! the result (info, or warn with the error), then every event the zone's event stream carries:
//! lifecycle (paused, resumed, quarantined, released: info; stopped: info, or warn for a fault,
//! panic, crash or deadline), policy violations and denials (warn). Fields name the zone
//! (`zone`) and its id; text the guest controls is escaped (`Display` of violations and exits
//! escapes control characters, and Debug-formatted fields quote). Targets: `zones::build`,
//! `zones::zone`, `zones::violation`, `zones::denied`, `zones::device`.
//!
//! Without a subscriber, nothing is done beyond tracing's own check.
//!
//! Threads zones filters with seccomp (vCPUs, devices) never run the subscriber's code, which
//! may do anything (write files, send logs over the network): their events go through a
//! bounded queue to one forwarder thread per process, started by the first `build()` after a
//! global subscriber was set (install it before building zones). That thread runs the
//! embedder's code and is not filtered, like a host function's helper. A full queue drops the
//! record (the event stream and the metrics still have it) and counts it.

use crate::events::ZoneEvent;
use crate::exit::ZoneExit;
use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

/// Records the forwarder's queue holds.
const QUEUE: usize = 1024;

thread_local! {
    /// Whether this thread runs under a zones seccomp filter.
    static FILTERED: Cell<bool> = const { Cell::new(false) };
}

/// A record for the forwarder: the zone, its id and the event.
type Record = (String, u64, ZoneEvent);

static FORWARDER: OnceLock<SyncSender<Record>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Marks the calling thread as filtered: from now on its records are forwarded.
pub(crate) fn mark_filtered() {
    FILTERED.with(|f| f.set(true));
}

/// Starts the forwarder once a global subscriber exists (called by `build()` on the embedder's
/// thread, which is not filtered and may create threads).
pub(crate) fn start_forwarder() {
    if FORWARDER.get().is_some() || !tracing::dispatcher::has_been_set() {
        return;
    }
    FORWARDER.get_or_init(|| {
        let (tx, rx) = sync_channel::<Record>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("zones-trace".into())
            .stack_size(256 << 10)
            .spawn(move || {
                for (zone, id, event) in rx {
                    emit(&zone, id, &event);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(target: "zones::build", error = %e, "cannot start the tracing forwarder; events of zone threads are not traced");
        }
        tx
    });
}

/// Records that the tracing queue was full and dropped (process-wide).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Traces `event` of zone `zone` (id `id`): at once on an unfiltered thread, through the
/// forwarder on a filtered one.
pub(crate) fn zone_event(zone: &str, id: u64, event: &ZoneEvent) {
    if !tracing::dispatcher::has_been_set() {
        return;
    }
    if !FILTERED.with(Cell::get) {
        emit(zone, id, event);
        return;
    }
    match FORWARDER.get() {
        Some(tx) => {
            if tx.try_send((zone.to_owned(), id, event.clone())).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn emit(zone: &str, id: u64, event: &ZoneEvent) {
    match event {
        ZoneEvent::Violation(v) => tracing::warn!(
            target: "zones::violation", zone = %zone, id, control = v.control, vcpu = ?v.vcpu,
            count = v.count, detail = %crate::text::escaped(&v.detail), "policy violation"
        ),
        ZoneEvent::Denied(d) => tracing::warn!(
            target: "zones::denied", zone = %zone, id, device = ?d.device, rule = ?d.rule,
            protocol = d.protocol, destination = ?d.destination, port = ?d.port, count = d.count,
            "policy denial"
        ),
        ZoneEvent::Stopped(exit) => match exit {
            ZoneExit::Exited(_) | ZoneExit::Killed | ZoneExit::Shutdown => {
                tracing::info!(target: "zones::zone", zone = %zone, id, exit = %exit, "zone stopped");
            }
            _ => {
                tracing::warn!(target: "zones::zone", zone = %zone, id, exit = %exit, "zone stopped")
            }
        },
        ZoneEvent::Paused => tracing::info!(target: "zones::zone", zone = %zone, id, "zone paused"),
        ZoneEvent::Resumed => {
            tracing::info!(target: "zones::zone", zone = %zone, id, "zone resumed")
        }
        ZoneEvent::Quarantined => {
            tracing::warn!(target: "zones::zone", zone = %zone, id, "zone quarantined");
        }
        ZoneEvent::Released => {
            tracing::info!(target: "zones::zone", zone = %zone, id, "zone released")
        }
    }
}

/// Timing of a build's phases: each [`Phases::done`] traces the phase's duration (debug).
pub(crate) struct Phases {
    zone: String,
    last: Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    /// Starts timing the phases of zone `zone`.
    pub(crate) fn new(zone: &str) -> Self {
        Self {
            zone: zone.to_owned(),
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    /// The phases ended so far, with their durations.
    pub(crate) fn into_list(self) -> Vec<(&'static str, std::time::Duration)> {
        self.done
    }

    /// Ends phase `phase`.
    pub(crate) fn done(&mut self, phase: &'static str) {
        let now = Instant::now();
        let took = now.duration_since(self.last);
        self.done.push((phase, took));
        let micros = took.as_micros() as u64;
        tracing::debug!(target: "zones::build", zone = %self.zone, phase, micros, "build phase");
        self.last = now;
    }
}

/// Traces a device attached to a zone (debug).
pub(crate) fn device_attached(zone: &str, device: &str) {
    tracing::debug!(target: "zones::device", zone = %zone, device, "device attached");
}
