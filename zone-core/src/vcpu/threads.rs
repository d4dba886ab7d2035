//! vCPU threads started at the beginning of `build()`: each runs its `before_filter` hook (a
//! micro zone's host-function helper starts there), installs its seccomp filter (the kernel
//! compiles it and prepares its action cache, about 100 us for the bucketed vCPU filter on the
//! development machine) and hands its listener to the supervisor while the building thread
//! creates the VM, its memory and the vCPUs, then waits for its vCPU. A build that fails lets
//! them go: they end without ever running a guest.
//!
//! The first thread may spin for its vCPU for a while before it sleeps ([`VcpuThreads::start`]'s
//! `spin`): a micro zone's build is short, and a sleeping thread's wake-up (about 50 us on the
//! development machine) would be on its start's path.

use super::GuestExits;
use crate::seccomp::{RefusalSink, Seccomp, SeccompError, ThreadFilter, ThreadKind};
use crate::zone::ZoneShared;
use kvm_ioctls::VcpuFd;
use std::sync::mpsc::{Receiver, RecvError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a waiting vCPU thread is given to run.
struct Go {
    fd: VcpuFd,
    shared: Arc<ZoneShared>,
    exits: Arc<dyn GuestExits>,
}

/// One waiting thread.
struct Waiting {
    go: SyncSender<Go>,
    thread: JoinHandle<()>,
}

/// A zone's vCPU threads, filtered and waiting for their vCPUs.
pub(crate) struct VcpuThreads {
    waiting: Vec<Waiting>,
}

impl VcpuThreads {
    /// Starts `count` threads named `{prefix}/{index}`, each filtered as `kind` in `mode`. Each
    /// runs `before_filter(index)` first, unfiltered: what it starts (a host function's helper
    /// thread) carries no filter and leaves the building thread's path. Thread 0 spins for up to
    /// `spin` for its vCPU before it sleeps; the others sleep at once.
    ///
    /// Thread 0 is started last, so that when this fails no `before_filter(0)` has begun: a hook
    /// that waits for the building thread (a micro zone's memory waits for the VM) is never
    /// left waiting while this joins the threads already started.
    pub(crate) fn start(
        prefix: &str,
        count: u32,
        kind: ThreadKind,
        mode: Seccomp,
        before_filter: Arc<dyn Fn(u32) + Send + Sync>,
        spin: Duration,
    ) -> std::io::Result<Self> {
        let mut threads = Self {
            waiting: Vec::new(),
        };
        for index in (0..count).rev() {
            let spin = if index == 0 { spin } else { Duration::ZERO };
            let (go, ready) = sync_channel::<Go>(1);
            let before_filter = before_filter.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{prefix}/{index}"))
                .spawn(move || {
                    before_filter(index);
                    drop(before_filter);
                    let zone = Arc::new(LateSink::default());
                    let filtered = crate::seccomp::install_for(mode, kind, &[]).map(|i| {
                        i.attach(ThreadFilter {
                            mode,
                            kind,
                            extra: Vec::new(),
                            thread: format!("vCPU {index}"),
                            sink: Some(Arc::downgrade(&zone) as Weak<dyn RefusalSink>),
                        })
                    });
                    // A closed channel: the build failed, nothing to run.
                    if let Ok(go) = recv_spinning(&ready, spin) {
                        let _ = zone
                            .0
                            .set(Arc::downgrade(&go.shared) as Weak<dyn RefusalSink>);
                        super::run(go.fd, index, go.shared, go.exits, filtered.err());
                    }
                })?;
            // On an error, `threads` is dropped: the ones already started end.
            threads.waiting.push(Waiting { go, thread });
        }
        threads.waiting.reverse();
        Ok(threads)
    }

    /// Hands each thread its vCPU (in index order) and returns the threads to join.
    pub(crate) fn run(
        mut self,
        vcpus: Vec<VcpuFd>,
        shared: &Arc<ZoneShared>,
        exits: &Arc<dyn GuestExits>,
    ) -> Vec<JoinHandle<()>> {
        let mut started = Vec::new();
        for ((index, w), fd) in (0u32..).zip(std::mem::take(&mut self.waiting)).zip(vcpus) {
            let go = Go {
                fd,
                shared: shared.clone(),
                exits: exits.clone(),
            };
            // The thread only leaves its wait by receiving, so the send fails only if it died
            // (a panic): its vCPU would never run, so the zone ends instead of waiting on it.
            if w.go.send(go).is_err() {
                shared.stop(crate::exit::ZoneExit::Crashed {
                    vcpu: index,
                    reason: "its vCPU thread ended before it was handed the vCPU".into(),
                });
            }
            started.push(w.thread);
        }
        started
    }
}

impl Drop for VcpuThreads {
    /// Threads never handed a vCPU end (their channel closes) and are joined.
    fn drop(&mut self) {
        for w in self.waiting.drain(..) {
            drop(w.go);
            let _ = w.thread.join();
        }
    }
}

/// Where a waiting thread's refusals go: its zone, once it is handed its vCPU. (It makes none
/// while it waits; one would be counted process-wide only.)
#[derive(Default)]
struct LateSink(OnceLock<Weak<dyn RefusalSink>>);

impl RefusalSink for LateSink {
    fn refused(&self, thread: &str, nr: i64, args: &[u64; 6]) {
        if let Some(zone) = self.0.get().and_then(Weak::upgrade) {
            zone.refused(thread, nr, args);
        }
    }
}

/// Why a vCPU thread's filter could not be installed.
pub(crate) type FilterFailed = Option<SeccompError>;

/// Receives from `rx`, spinning for up to `spin` before it sleeps.
pub(crate) fn recv_spinning<T>(rx: &Receiver<T>, spin: Duration) -> Result<T, RecvError> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(value) => return Ok(value),
            Err(TryRecvError::Disconnected) => return Err(RecvError),
            Err(TryRecvError::Empty) if start.elapsed() < spin => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return rx.recv(),
        }
    }
}
