//! Installing a thread's filter, with a listener for the supervisor when the kernel gives one.

use super::filters::{self, NOTIFY_PLACEHOLDER};
use super::{Seccomp, ThreadFilter, ThreadKind, UNCOUNTED, supervisor};
use seccompiler::BpfProgram;
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};

/// Why a thread's filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The allowlist did not compile (a zones bug).
    #[error("compiling the {kind} thread's seccomp filter: {source}")]
    Compile {
        /// The kind of thread.
        kind: &'static str,
        /// Why.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the {kind} thread's seccomp filter: {source}")]
    Install {
        /// The kind of thread.
        kind: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `SECCOMP_RET_TRAP`, as seccompiler encodes the placeholder action.
const RET_TRAP: u32 = 0x0003_0000;
/// `BPF_RET | BPF_K`.
const BPF_RET_K: u16 = 0x06;

type Key = (ThreadKind, Vec<i64>, bool);

/// The compiled program for `kind` + `extra`: with the placeholder turned into
/// SECCOMP_RET_USER_NOTIF (`notify`), or with the mode's kernel-side action. Compiled once.
fn compiled(
    kind: ThreadKind,
    extra: &[i64],
    mode: Seccomp,
    notify: bool,
) -> Result<BpfProgram, SeccompError> {
    static CACHE: OnceLock<Mutex<HashMap<Key, BpfProgram>>> = OnceLock::new();
    let key = (kind, extra.to_vec(), notify);
    let cache = CACHE.get_or_init(Mutex::default);
    if notify && let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let mismatch = if notify {
        NOTIFY_PLACEHOLDER
    } else {
        filters::fallback(mode)
    };
    let program =
        filters::program(kind, extra, mismatch).map_err(|source| SeccompError::Compile {
            kind: kind.name(),
            source,
        })?;
    let mut program = filters::with_clone3_enosys(program);
    if notify {
        for insn in &mut program {
            if insn.code == BPF_RET_K && insn.k == RET_TRAP {
                insn.k = libc::SECCOMP_RET_USER_NOTIF;
            }
        }
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, program.clone());
    }
    Ok(program)
}

/// Installs `program` on the calling thread; with a listener when `listen`.
fn install(program: &BpfProgram, listen: bool) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: prctl(2) with constant integer arguments; it affects only the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        // seccompiler's `sock_filter` has the kernel's layout (code, jt, jf, k; repr(C)).
        filter: program.as_ptr().cast_mut().cast(),
    };
    let flags = if listen {
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
    } else {
        0
    };
    // SAFETY: seccomp(2) reads `fprog` and the `program.len()` instructions it points to, which
    // live until the call returns; the filter applies to the calling thread only (no TSYNC).
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &raw const fprog,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if !listen {
        return Ok(None);
    }
    // SAFETY: with NEW_LISTENER, seccomp(2) returned a new descriptor owned by nobody else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(r as i32) }))
}

/// A filter installed on the calling thread whose listener (if it got one) is not yet handed to
/// the supervisor: [`attach`](Self::attach) does that once the thread knows whom its refusals
/// belong to. Until then the thread must make no call outside its list (it would wait for an
/// answer nobody gives); waiting on a channel is fine.
pub(crate) struct Installed {
    listener: Option<OwnedFd>,
}

impl Installed {
    /// Hands the listener to the supervisor, which reports the thread's refusals as `f` says.
    pub(crate) fn attach(self, f: ThreadFilter) {
        if let Some(listener) = self.listener {
            supervisor::watch(listener, f);
        }
    }
}

/// Installs the filter `f` describes on the calling thread (nothing for [`Seccomp::Off`]).
pub(crate) fn apply(f: ThreadFilter) -> Result<(), SeccompError> {
    install_for(f.mode, f.kind, &f.extra)?.attach(f);
    Ok(())
}

/// Installs `kind`'s filter (plus `extra`) in `mode` on the calling thread; its listener is
/// attached later ([`Installed::attach`]).
pub(crate) fn install_for(
    mode: Seccomp,
    kind: ThreadKind,
    extra: &[i64],
) -> Result<Installed, SeccompError> {
    let none = Installed { listener: None };
    if mode == Seccomp::Off {
        return Ok(none);
    }
    // From now on this thread's tracing records go through the forwarder.
    crate::trace::mark_filtered();
    let err = |source| SeccompError::Install {
        kind: kind.name(),
        source,
    };
    // The supervisor is started from this thread before it is filtered (a filtered thread may
    // not create threads). It cannot supervise itself: its own refusals happen in the kernel.
    if kind != ThreadKind::Supervisor {
        supervisor::start();
    }
    if kind != ThreadKind::Supervisor && supervisor::running() {
        let program = compiled(kind, extra, mode, true)?;
        match install(&program, true) {
            Ok(listener) => return Ok(Installed { listener }),
            // EBUSY: the thread's chain already has a listener (its creator's filter).
            // EINVAL: a kernel without user notifications. Refuse in the kernel, uncounted.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINVAL)) => {
                UNCOUNTED.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(err(e)),
        }
    }
    let program = compiled(kind, extra, mode, false)?;
    install(&program, false).map_err(err)?;
    Ok(none)
}
