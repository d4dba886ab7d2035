//! Kicking a vCPU thread out of KVM_RUN from any other thread.
//!
//! The kick is a real-time signal sent with `pthread_kill`. Its handler sets `immediate_exit` in
//! the thread's `kvm_run` (found through a thread-local pointer), so a kick that lands just before
//! the thread enters KVM_RUN still makes that KVM_RUN return at once with EINTR: no lost wake-ups.
//! A [`Kicker`] only signals a thread while that thread is registered, so a thread that has ended
//! (and whose `pthread_t` may be reused) is never signalled.

use kvm_bindings::kvm_run;
use std::cell::Cell;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

/// Offset of the kick signal from `SIGRTMIN`. Embedders must leave `SIGRTMIN + 2` to zones.
pub const KICK_SIGNAL_OFFSET: i32 = 2;

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal number.
pub(crate) fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: read a const-initialised thread-local, write one byte.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's mapped `kvm_run`; it is set by `attach` and cleared
        // by `detach` before the mapping goes away, both on this same thread.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Why the kick signal could not be set up.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KickSetupError {
    /// Another handler is installed for the signal zones uses.
    #[error(
        "signal SIGRTMIN+{KICK_SIGNAL_OFFSET} already has a handler that is not zones'; zones needs it to stop vCPUs"
    )]
    SignalTaken,
    /// sigaction failed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Install(String),
}

/// Installs the process-wide kick handler once.
pub(crate) fn install_handler() -> Result<(), KickSetupError> {
    static INSTALLED: OnceLock<Result<(), KickSetupError>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let sig = kick_signal();
            // SAFETY: querying the current action with a zeroed out-struct and a null new action.
            let current = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                    return Err(KickSetupError::Install(
                        std::io::Error::last_os_error().to_string(),
                    ));
                }
                old.sa_sigaction
            };
            if current != libc::SIG_DFL
                && current != libc::SIG_IGN
                && current != on_kick as *const () as usize
            {
                return Err(KickSetupError::SignalTaken);
            }
            vmm_sys_util::signal::register_signal_handler(sig, on_kick)
                .map_err(|e| KickSetupError::Install(e.to_string()))
        })
        .clone()
}

/// Points this thread's kick handler at `run` and makes sure the signal is not blocked here
/// (threads inherit their creator's mask).
pub(crate) fn attach(run: *mut kvm_run) {
    KVM_RUN.with(|cell| cell.set(run));
    // Ignore failure: the signal number is valid, so unblocking cannot fail.
    let _ = vmm_sys_util::signal::unblock_signal(kick_signal());
}

/// Clears this thread's kick target. Call before the `kvm_run` mapping is dropped.
pub(crate) fn detach() {
    KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
}

/// Clears `immediate_exit` after a kick was consumed.
pub(crate) fn rearm(run: *mut kvm_run) {
    // SAFETY: `run` is this thread's mapped `kvm_run` (see `attach`); volatile because the signal
    // handler on this same thread may write it concurrently.
    unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(0) };
}

/// Sends kicks to one vCPU thread while it is registered.
#[derive(Debug, Default)]
pub(crate) struct Kicker {
    thread: Mutex<Option<libc::pthread_t>>,
    /// The registered thread's kernel id (0: none), whose scheduler statistics say how busy the
    /// vCPU is ([`super::activity`]).
    tid: AtomicI32,
}

impl Kicker {
    /// Registers the calling thread as the kick target.
    pub(crate) fn register_current(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(me);
        // SAFETY: gettid has no preconditions.
        self.tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
    }

    /// Unregisters the target; after this returns no kick reaches the thread.
    pub(crate) fn unregister(&self) {
        self.tid.store(0, Ordering::Relaxed);
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The registered thread's kernel id, if one is registered.
    pub(crate) fn tid(&self) -> Option<i32> {
        Some(self.tid.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Kicks the thread if it is registered.
    pub(crate) fn kick(&self) {
        let guard = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(thread) = *guard {
            // SAFETY: the thread is registered, so it is alive: it unregisters (taking this lock)
            // before it exits, and we hold the lock while signalling.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }
}
