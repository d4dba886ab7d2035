//! Per-zone counters. Updated with relaxed atomics on vCPU threads; read as a
//! [`ZoneMetrics`] snapshot from any thread.

use crate::device::DeviceCounters;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Why KVM_RUN returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
pub enum ExitReason {
    /// Port write.
    IoOut,
    /// Port read.
    IoIn,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// HLT.
    Hlt,
    /// Triple fault / shutdown.
    Shutdown,
    /// Interrupted by a kick (pause, kill, deadline) or a signal.
    Interrupted,
    /// KVM internal error.
    InternalError,
    /// VM entry failed.
    FailEntry,
    /// System event (reset, shutdown, crash) reported by KVM.
    SystemEvent,
    /// Anything else.
    Other,
}

impl ExitReason {
    /// Every reason, in counter order.
    pub const ALL: [ExitReason; 11] = [
        Self::IoOut,
        Self::IoIn,
        Self::MmioRead,
        Self::MmioWrite,
        Self::Hlt,
        Self::Shutdown,
        Self::Interrupted,
        Self::InternalError,
        Self::FailEntry,
        Self::SystemEvent,
        Self::Other,
    ];
}

/// Built-in hypercalls, counted separately from host functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum HypercallKind {
    Console,
    Exit,
    Panic,
    HostCall,
    Idle,
    Unknown,
}

const HYPERCALL_KINDS: usize = 6;

/// Live counters of one zone.
#[derive(Debug)]
pub(crate) struct Metrics {
    started: Instant,
    exits: [AtomicU64; ExitReason::ALL.len()],
    run_ns: AtomicU64,
    /// Per vCPU: nanoseconds since `started` at which it entered the guest, or 0 when outside.
    entered_ns: Vec<AtomicU64>,
    hypercalls: [AtomicU64; HYPERCALL_KINDS],
    rejected: AtomicU64,
    host_fn_calls: Vec<AtomicU64>,
    host_fn_names: Vec<String>,
    console_bytes: AtomicU64,
    console_dropped: AtomicU64,
    seccomp_refused: AtomicU64,
    memory_bytes: u64,
}

impl Metrics {
    pub(crate) fn new(vcpus: u32, host_fn_names: Vec<String>, memory_bytes: u64) -> Self {
        Self {
            started: Instant::now(),
            exits: Default::default(),
            run_ns: AtomicU64::new(0),
            entered_ns: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
            hypercalls: Default::default(),
            rejected: AtomicU64::new(0),
            host_fn_calls: host_fn_names.iter().map(|_| AtomicU64::new(0)).collect(),
            host_fn_names,
            console_bytes: AtomicU64::new(0),
            console_dropped: AtomicU64::new(0),
            seccomp_refused: AtomicU64::new(0),
            memory_bytes,
        }
    }

    fn now_ns(&self) -> u64 {
        // At least 1 so that 0 keeps meaning "not in the guest".
        (self.started.elapsed().as_nanos() as u64).max(1)
    }

    /// Marks vCPU `index` as entering KVM_RUN.
    pub(crate) fn enter(&self, index: u32) {
        if let Some(slot) = self.entered_ns.get(index as usize) {
            slot.store(self.now_ns(), Relaxed);
        }
    }

    /// Marks vCPU `index` as back from KVM_RUN for `reason`.
    pub(crate) fn leave(&self, index: u32, reason: ExitReason) {
        if let Some(slot) = self.entered_ns.get(index as usize) {
            let entered = slot.swap(0, Relaxed);
            if entered != 0 {
                self.run_ns
                    .fetch_add(self.now_ns().saturating_sub(entered), Relaxed);
            }
        }
        self.exits[reason as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn hypercall(&self, kind: HypercallKind) {
        self.hypercalls[kind as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }

    pub(crate) fn host_fn_call(&self, index: usize) {
        if let Some(counter) = self.host_fn_calls.get(index) {
            counter.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn seccomp_refused(&self) {
        self.seccomp_refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn console(&self, accepted: u64, dropped: u64) {
        self.console_bytes.fetch_add(accepted, Relaxed);
        self.console_dropped.fetch_add(dropped, Relaxed);
    }

    /// A consistent-enough snapshot (each counter read once, relaxed).
    pub(crate) fn snapshot(
        &self,
        resident: Option<u64>,
        events_dropped: u64,
        devices: Vec<DeviceCounters>,
    ) -> ZoneMetrics {
        let now = self.now_ns();
        let in_guest: u64 = self
            .entered_ns
            .iter()
            .map(|slot| match slot.load(Relaxed) {
                0 => 0,
                entered => now.saturating_sub(entered),
            })
            .sum();
        let exits = |r: ExitReason| self.exits[r as usize].load(Relaxed);
        let calls = |k: HypercallKind| self.hypercalls[k as usize].load(Relaxed);
        ZoneMetrics {
            uptime: self.started.elapsed(),
            vcpu_run_time: Duration::from_nanos(self.run_ns.load(Relaxed) + in_guest),
            exits: ExitCounts {
                io_out: exits(ExitReason::IoOut),
                io_in: exits(ExitReason::IoIn),
                mmio_read: exits(ExitReason::MmioRead),
                mmio_write: exits(ExitReason::MmioWrite),
                hlt: exits(ExitReason::Hlt),
                shutdown: exits(ExitReason::Shutdown),
                interrupted: exits(ExitReason::Interrupted),
                internal_error: exits(ExitReason::InternalError),
                fail_entry: exits(ExitReason::FailEntry),
                system_event: exits(ExitReason::SystemEvent),
                other: exits(ExitReason::Other),
            },
            hypercalls: HypercallCounts {
                console: calls(HypercallKind::Console),
                exit: calls(HypercallKind::Exit),
                panic: calls(HypercallKind::Panic),
                host_call: calls(HypercallKind::HostCall),
                idle: calls(HypercallKind::Idle),
                unknown: calls(HypercallKind::Unknown),
                rejected: self.rejected.load(Relaxed),
            },
            host_functions: self
                .host_fn_names
                .iter()
                .zip(&self.host_fn_calls)
                .map(|(name, n)| (name.clone(), n.load(Relaxed)))
                .collect(),
            console_bytes: self.console_bytes.load(Relaxed),
            console_dropped: self.console_dropped.load(Relaxed),
            seccomp_refused: self.seccomp_refused.load(Relaxed),
            memory_bytes: self.memory_bytes,
            memory_resident_bytes: resident,
            events_dropped,
            devices,
        }
    }
}

/// A snapshot of a zone's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ZoneMetrics {
    /// Time since the zone was built.
    pub uptime: Duration,
    /// Time vCPUs spent inside KVM_RUN, summed over vCPUs (includes the current stretch).
    pub vcpu_run_time: Duration,
    /// VM exits by reason.
    pub exits: ExitCounts,
    /// Hypercalls by kind.
    pub hypercalls: HypercallCounts,
    /// Calls per registered host function, by name.
    pub host_functions: BTreeMap<String, u64>,
    /// Console bytes captured.
    pub console_bytes: u64,
    /// Console bytes dropped because the capture limit was reached.
    pub console_dropped: u64,
    /// System calls the zone's threads made outside their seccomp allowlists (refused, or in
    /// Log mode only reported). Each is also a `seccomp` violation event.
    pub seccomp_refused: u64,
    /// Guest memory size.
    pub memory_bytes: u64,
    /// Guest memory the host has actually backed with pages (None if it could not be read).
    pub memory_resident_bytes: Option<u64>,
    /// Events dropped because a subscriber's queue was full.
    pub events_dropped: u64,
    /// Counters of the zone's devices (network bytes and drops, ...), by device.
    pub devices: Vec<DeviceCounters>,
}

impl ZoneMetrics {
    /// The counters of device `name` (`net0`, ...), if it has any.
    pub fn device(&self, name: &str) -> Option<&DeviceCounters> {
        self.devices.iter().find(|d| d.device == name)
    }
}

/// VM exits by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ExitCounts {
    pub io_out: u64,
    pub io_in: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    pub shutdown: u64,
    pub interrupted: u64,
    pub internal_error: u64,
    pub fail_entry: u64,
    pub system_event: u64,
    pub other: u64,
}

impl ExitCounts {
    /// All exits.
    pub fn total(&self) -> u64 {
        self.io_out
            + self.io_in
            + self.mmio_read
            + self.mmio_write
            + self.hlt
            + self.shutdown
            + self.interrupted
            + self.internal_error
            + self.fail_entry
            + self.system_event
            + self.other
    }
}

/// Hypercalls by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallCounts {
    /// Console writes.
    pub console: u64,
    /// Exit requests.
    pub exit: u64,
    /// Panic reports.
    pub panic: u64,
    /// Host-function calls (known or not).
    pub host_call: u64,
    /// vCPUs that went idle.
    pub idle: u64,
    /// Unknown hypercall numbers.
    pub unknown: u64,
    /// Hypercalls refused (bad pointer, too large, unknown function or number).
    pub rejected: u64,
}

impl HypercallCounts {
    /// All hypercalls.
    pub fn total(&self) -> u64 {
        self.console + self.exit + self.panic + self.host_call + self.idle + self.unknown
    }
}

impl std::fmt::Display for ZoneMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "uptime           {:?}", self.uptime)?;
        writeln!(f, "vcpu run time    {:?}", self.vcpu_run_time)?;
        let e = &self.exits;
        writeln!(
            f,
            "exits            {} (io_out {}, io_in {}, mmio {}, hlt {}, interrupted {}, shutdown {}, errors {})",
            e.total(),
            e.io_out,
            e.io_in,
            e.mmio_read + e.mmio_write,
            e.hlt,
            e.interrupted,
            e.shutdown,
            e.internal_error + e.fail_entry + e.other
        )?;
        let h = &self.hypercalls;
        writeln!(
            f,
            "hypercalls       {} (console {}, host_call {}, exit {}, rejected {})",
            h.total(),
            h.console,
            h.host_call,
            h.exit,
            h.rejected
        )?;
        for (name, calls) in &self.host_functions {
            writeln!(f, "  host fn {name:<12} {calls}")?;
        }
        writeln!(
            f,
            "console          {} bytes ({} dropped)",
            self.console_bytes, self.console_dropped
        )?;
        match self.memory_resident_bytes {
            Some(r) => writeln!(
                f,
                "memory           {} KiB resident of {} KiB",
                r >> 10,
                self.memory_bytes >> 10
            )?,
            None => writeln!(f, "memory           {} KiB", self.memory_bytes >> 10)?,
        }
        if self.seccomp_refused > 0 {
            writeln!(f, "seccomp          {} calls refused", self.seccomp_refused)?;
        }
        for device in &self.devices {
            write!(f, "{:<16}", device.device)?;
            for (i, (name, value)) in device.counters.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{name} {value}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exits_run_time_and_host_functions() {
        let m = Metrics::new(2, vec!["add".into(), "log".into()], 1 << 20);
        m.enter(0);
        std::thread::sleep(Duration::from_millis(2));
        m.leave(0, ExitReason::IoOut);
        m.leave(1, ExitReason::Interrupted);
        m.host_fn_call(1);
        m.host_fn_call(7); // out of range: ignored, not a panic
        m.hypercall(HypercallKind::HostCall);
        let s = m.snapshot(None, 3, Vec::new());
        assert_eq!(s.exits.io_out, 1);
        assert_eq!(s.exits.interrupted, 1);
        assert_eq!(s.exits.total(), 2);
        assert!(s.vcpu_run_time >= Duration::from_millis(2));
        assert_eq!(s.host_functions["log"], 1);
        assert_eq!(s.host_functions["add"], 0);
        assert_eq!(s.hypercalls.host_call, 1);
        assert_eq!(s.events_dropped, 3);
    }

    #[test]
    fn run_time_includes_the_current_stretch_in_the_guest() {
        let m = Metrics::new(1, vec![], 0);
        m.enter(0);
        std::thread::sleep(Duration::from_millis(2));
        assert!(m.snapshot(None, 0, Vec::new()).vcpu_run_time >= Duration::from_millis(2));
    }
}
