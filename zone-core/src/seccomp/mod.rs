//! seccomp filters on every thread zones spawns for a zone, each with the allowlist its kind of
//! thread needs (`filters`), installed by the thread itself as the first thing it does, for
//! that thread only: the embedding program's threads are never filtered.
//!
//! A system call outside the list is refused with `EPERM` (never a signal, never killing the
//! process: an embedded library must not take its host down). The refusal is counted and
//! reported, exactly: each filter is installed with a seccomp user-notification listener
//! (`SECCOMP_FILTER_FLAG_NEW_LISTENER`), and instead of failing the call in the kernel, the
//! filter hands it to zones' supervisor thread, which counts it for the zone
//! ([`ZoneMetrics::seccomp_refused`](crate::ZoneMetrics)), emits a `seccomp` violation naming
//! the thread and the call, and answers `EPERM` (or, in [`Seccomp::Log`] mode, lets it run).
//! Where the kernel cannot give a listener (one already sits on the thread's filter chain), the
//! filter refuses in the kernel, uncounted: [`uncounted_filters`] says how often.

pub(crate) mod filters;
mod install;
mod names;
mod supervisor;

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};

pub use install::SeccompError;
pub(crate) use install::{apply, install_for};
pub(crate) use names::describe;
#[cfg(test)]
use names::name;

/// How zones filters the system calls of the threads it spawns for a zone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// Refuse (`EPERM`), count and report every call outside a thread's allowlist. The default.
    #[default]
    Enforce,
    /// Count and report calls outside the allowlists, but let them run (to find what a new
    /// workload needs).
    Log,
    /// No filters (for debugging; say so in production reviews).
    Off,
}

/// The kinds of thread zones spawns, each with its own allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN and the exits it serves.
    Vcpu,
    /// A vCPU thread of a zone with PCI functions: also KVM_SET_GSI_ROUTING, which routes an MSI
    /// vector again when the guest programs it.
    PciVcpu,
    /// A device's event-loop thread (plus what the device asks for).
    Device,
    /// A short-lived helper that moves bytes for the embedder (exec's stdin feeder).
    Helper,
    /// The process-wide deadline service.
    Deadlines,
    /// The process-wide supervisor of refused calls.
    Supervisor,
}

impl ThreadKind {
    /// The kind as written in reports (`vCPU`, `device`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Vcpu | Self::PciVcpu => "vCPU",
            Self::Device => "device",
            Self::Helper => "helper",
            Self::Deadlines => "deadline",
            Self::Supervisor => "supervisor",
        }
    }
}

/// Where a refused call is reported: the zone that owns the thread.
pub(crate) trait RefusalSink: Send + Sync {
    /// `thread` (its name in reports) made system call `nr` with `args`, which was refused (or,
    /// in [`Seccomp::Log`] mode, only reported).
    fn refused(&self, thread: &str, nr: i64, args: &[u64; 6]);
}

/// A thread's filter, as `apply` installs it.
pub(crate) struct ThreadFilter {
    pub(crate) mode: Seccomp,
    pub(crate) kind: ThreadKind,
    /// Calls allowed on top of the kind's list (a device's own needs).
    pub(crate) extra: Vec<i64>,
    /// The thread in reports (`vCPU 0`, `device net0`).
    pub(crate) thread: String,
    pub(crate) sink: Option<Weak<dyn RefusalSink>>,
}

static REFUSED: AtomicU64 = AtomicU64::new(0);
static UNCOUNTED: AtomicU64 = AtomicU64::new(0);

/// System calls refused (or, in Log mode, reported) on any thread zones filtered, process-wide,
/// including the process-wide service threads that belong to no zone.
pub fn refused_syscalls() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Filters installed without a listener (their refusals cannot be counted).
pub fn uncounted_filters() -> u64 {
    UNCOUNTED.load(Ordering::Relaxed)
}

/// Starts the process-wide supervisor (from a thread that carries no filter, so that it does
/// not inherit one). Idempotent.
pub(crate) fn start_supervisor() {
    supervisor::start();
}

#[cfg(test)]
mod tests;
