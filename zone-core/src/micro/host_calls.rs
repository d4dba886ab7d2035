//! Host functions run off the vCPU thread: the vCPU thread carries a seccomp filter for what a
//! vCPU does, and a host function is the embedder's code, which may do anything the embedder's
//! own threads may. Each vCPU of a zone with host functions gets a helper thread, started with
//! the zone by the vCPU's thread before that thread installs its filter (so the helper carries
//! none, and its start leaves the building thread's path), that runs its calls while the vCPU
//! waits: a call still blocks its vCPU, and pause and kill still take effect when it returns.
//!
//! The hand-off is a slot and two flags, not a channel: the helper spins for [`SPIN`] after a
//! call before it parks, so a guest that calls the host in a loop finds its helper awake; the
//! vCPU spins while the call typically takes (up to [`MAX_VCPU_SPIN`]) before it parks, so a
//! quick host function costs no sleep of the vCPU thread (two thread switches per call cost
//! about 40 us on the development machine; the micro_zone bench reports the round trip with and
//! without filters). A vCPU thread that does not sleep also keeps its KVM state on its CPU.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long the helper spins before it parks, and the vCPU at least.
const SPIN: Duration = Duration::from_micros(50);
/// The longest the vCPU spins: for host functions that typically return within half of it.
const MAX_VCPU_SPIN: Duration = Duration::from_millis(2);

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const DONE: u8 = 2;

/// What the caller and the helper share.
struct Slot {
    state: AtomicU8,
    stop: AtomicBool,
    job: Mutex<Option<Job>>,
    caller: Mutex<Option<Thread>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spins for up to `spin`, then parks, until `ready`.
fn wait_until(spin: Duration, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() < spin {
            std::hint::spin_loop();
        } else {
            std::thread::park();
        }
    }
}

/// One vCPU's host-call thread; stopped and joined on drop.
pub(crate) struct HostCallThread {
    slot: Arc<Slot>,
    /// One call at a time.
    calls: Mutex<()>,
    helper: Thread,
    thread: Option<JoinHandle<()>>,
    /// A moving average of the round trip, in nanoseconds.
    typical_ns: AtomicU64,
}

impl HostCallThread {
    /// Starts the thread `name` for a vCPU of zone `zone_id` (its calls count as that zone's
    /// vCPU for `pause`).
    pub(crate) fn spawn(name: String, zone_id: u64) -> std::io::Result<Self> {
        let slot = Arc::new(Slot {
            state: AtomicU8::new(IDLE),
            stop: AtomicBool::new(false),
            job: Mutex::new(None),
            caller: Mutex::new(None),
        });
        let served = slot.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || serve(&served, zone_id))?;
        Ok(Self {
            slot,
            calls: Mutex::new(()),
            helper: thread.thread().clone(),
            thread: Some(thread),
            typical_ns: AtomicU64::new(0),
        })
    }

    /// Runs `f` on the thread and returns its result, or None if `f` panicked (callers catch
    /// their own panics to report them).
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Option<R> {
        let _one = lock(&self.calls);
        let mut out: Option<R> = None;
        let job: Box<dyn FnOnce() + Send + '_> = Box::new(|| out = Some(f()));
        // SAFETY: only the lifetime is erased. `job` borrows this frame (`f`'s borrows and
        // `out`); the helper runs and drops it (or drops it while unwinding) before it marks
        // the slot DONE, and this function waits for DONE before it reads `out` or returns.
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
        *lock(&self.slot.job) = Some(job);
        *lock(&self.slot.caller) = Some(std::thread::current());
        let started = Instant::now();
        self.slot.state.store(POSTED, Ordering::Release);
        self.helper.unpark();
        wait_until(self.vcpu_spin(), || {
            self.slot.state.load(Ordering::Acquire) == DONE
        });
        self.slot.state.store(IDLE, Ordering::Relaxed);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let typical = self.typical_ns.load(Ordering::Relaxed);
        let next = typical - typical / 8 + took / 8;
        self.typical_ns.store(next, Ordering::Relaxed);
        out
    }

    /// How long the vCPU spins for the next result: twice the typical round trip plus [`SPIN`],
    /// if that stays within [`MAX_VCPU_SPIN`]; else (slow host functions) only [`SPIN`].
    fn vcpu_spin(&self) -> Duration {
        let typical = Duration::from_nanos(self.typical_ns.load(Ordering::Relaxed));
        let spin = typical * 2 + SPIN;
        if spin <= MAX_VCPU_SPIN { spin } else { SPIN }
    }
}

fn serve(slot: &Slot, zone_id: u64) {
    crate::vcpu::set_current_zone(zone_id);
    let mut spin = Duration::ZERO;
    loop {
        wait_until(spin, || {
            slot.stop.load(Ordering::Acquire) || slot.state.load(Ordering::Acquire) == POSTED
        });
        if slot.stop.load(Ordering::Acquire) {
            return;
        }
        let job = lock(&slot.job).take();
        if let Some(job) = job {
            // A panicking job is dropped half-run; its caller finds no result.
            let _ = catch_unwind(AssertUnwindSafe(job));
        }
        spin = SPIN;
        slot.state.store(DONE, Ordering::Release);
        if let Some(caller) = lock(&slot.caller).take() {
            caller.unpark();
        }
    }
}

/// The helper threads of a zone's vCPUs, each started by its vCPU's thread before that thread
/// installs its filter ([`starter`](Self::starter)), so that their starts leave the building
/// thread's path (about 50 us of a micro zone's start on the development machine).
pub(crate) struct Helpers {
    receivers: Vec<Receiver<std::io::Result<HostCallThread>>>,
    starter: Arc<dyn Fn(u32) + Send + Sync>,
}

impl Helpers {
    /// Helpers named `{prefix}/h{index}` for zone `zone_id`'s `vcpus` vCPUs, or none if not
    /// `wanted`.
    pub(crate) fn new(prefix: &str, zone_id: u64, vcpus: u32, wanted: bool) -> Self {
        if !wanted {
            return Self {
                receivers: Vec::new(),
                starter: Arc::new(|_| {}),
            };
        }
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..vcpus).map(|_| sync_channel(1)).unzip();
        let prefix = prefix.to_string();
        let starter = Arc::new(move |index: u32| {
            if let Some(sender) = senders.get(index as usize) {
                let name = format!("{prefix}/h{index}");
                // The build gave up (its receiver is gone): the helper is stopped as it drops.
                let _ = sender.send(HostCallThread::spawn(name, zone_id));
            }
        });
        Self { receivers, starter }
    }

    /// What vCPU thread `index` runs before its filter: starts helper `index`.
    pub(crate) fn starter(&self) -> Arc<dyn Fn(u32) + Send + Sync> {
        self.starter.clone()
    }

    /// Every vCPU's helper, in order, once their vCPU threads have started them. A vCPU thread
    /// that ended before it started its helper is a failed start, not a wait.
    pub(crate) fn collect(self) -> std::io::Result<Vec<HostCallThread>> {
        drop(self.starter);
        self.receivers
            .into_iter()
            .map(|r| {
                r.recv().unwrap_or_else(|_| {
                    Err(std::io::Error::other(
                        "the vCPU thread ended before it started its host-function thread",
                    ))
                })
            })
            .collect()
    }
}

impl Drop for HostCallThread {
    fn drop(&mut self) {
        self.slot.stop.store(true, Ordering::Release);
        self.helper.unpark();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_borrowing_closures_elsewhere_and_survives_panics() {
        let t = HostCallThread::spawn("test/h0".into(), 7).unwrap();
        let data = [1u64, 2, 3];
        let here = std::thread::current().id();
        let (sum, there) = t
            .run(|| (data.iter().sum::<u64>(), std::thread::current().id()))
            .unwrap();
        assert_eq!(sum, 6);
        assert_ne!(there, here, "ran on the helper");
        assert_eq!(t.run(crate::vcpu::current_zone), Some(7));
        assert_eq!(t.run(|| -> u8 { panic!("host function bug") }), None);
        assert_eq!(t.run(|| 5), Some(5), "the helper survives a panic");
    }
}
