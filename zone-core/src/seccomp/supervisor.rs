//! The process-wide supervisor of refused system calls: it holds the listener of every filter
//! zones installed, counts each call a filter hands it, reports it to the thread's zone and
//! answers `EPERM` (or, for a filter in Log mode, lets the call run).

use super::{REFUSED, Seccomp, ThreadFilter, ThreadKind};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Token of the wake eventfd.
const WAKE: u64 = u64::MAX;

struct Shared {
    incoming: Mutex<Vec<(OwnedFd, ThreadFilter)>>,
    wake: EventFd,
}

static SUPERVISOR: OnceLock<Option<Shared>> = OnceLock::new();

/// Starts the supervisor thread once.
pub(super) fn start() {
    SUPERVISOR.get_or_init(|| {
        let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).ok()?;
        let epoll = Epoll::new().ok()?;
        epoll
            .ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, WAKE),
            )
            .ok()?;
        std::thread::Builder::new()
            .name("zones-seccomp".into())
            .spawn(move || run(epoll))
            .ok()?;
        Some(Shared {
            incoming: Mutex::default(),
            wake,
        })
    });
}

/// Whether the supervisor runs (a filter that hands calls to it may only be installed then: an
/// unanswered notification would block its thread for good).
pub(super) fn running() -> bool {
    matches!(SUPERVISOR.get(), Some(Some(_)))
}

/// Hands a thread's listener to the supervisor.
pub(super) fn watch(listener: OwnedFd, filter: ThreadFilter) {
    if let Some(Some(s)) = SUPERVISOR.get() {
        s.incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((listener, filter));
        let _ = s.wake.write(1);
    }
}

fn run(epoll: Epoll) {
    let _ = super::apply(ThreadFilter {
        mode: Seccomp::Enforce,
        kind: ThreadKind::Supervisor,
        extra: Vec::new(),
        thread: "seccomp supervisor".into(),
        sink: None,
    });
    let sizes = notif_sizes();
    let mut watched: HashMap<RawFd, (OwnedFd, ThreadFilter)> = HashMap::new();
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(_) => continue,
        };
        for ev in &events[..n] {
            if ev.data() == WAKE {
                take_incoming(&epoll, &mut watched);
                continue;
            }
            let fd = ev.data() as RawFd;
            let set = EventSet::from_bits_truncate(ev.events());
            if set.contains(EventSet::IN)
                && let Some((listener, filter)) = watched.get(&fd)
            {
                answer(listener, filter, sizes);
            }
            if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                // No thread uses the filter any more.
                if let Some((listener, _)) = watched.remove(&fd) {
                    let _ = epoll.ctl(
                        ControlOperation::Delete,
                        listener.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
            }
        }
    }
}

fn take_incoming(epoll: &Epoll, watched: &mut HashMap<RawFd, (OwnedFd, ThreadFilter)>) {
    let Some(Some(s)) = SUPERVISOR.get() else {
        return;
    };
    let _ = s.wake.read();
    let incoming = std::mem::take(&mut *s.incoming.lock().unwrap_or_else(|e| e.into_inner()));
    for (listener, filter) in incoming {
        let fd = listener.as_raw_fd();
        let added = epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, fd as u64),
        );
        if added.is_ok() {
            watched.insert(fd, (listener, filter));
        }
    }
}

/// The kernel's size of `struct seccomp_notif` (at least ours).
fn notif_sizes() -> usize {
    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one `struct seccomp_notif_sizes` into `sizes`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            &raw mut sizes,
        )
    };
    let ours = std::mem::size_of::<libc::seccomp_notif>();
    if r == 0 {
        usize::from(sizes.seccomp_notif).max(ours)
    } else {
        ours
    }
}

/// Takes one notification from `listener`, counts and reports it, and answers it.
fn answer(listener: &OwnedFd, filter: &ThreadFilter, size: usize) {
    // A zeroed buffer as large as the kernel's struct, 8-byte aligned.
    let mut buf = vec![0u64; size.div_ceil(8)];
    // SAFETY: SECCOMP_IOCTL_NOTIF_RECV fills a zeroed `struct seccomp_notif` of the kernel's
    // size, which `buf` has (and is aligned for).
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            buf.as_mut_ptr(),
        )
    };
    if r != 0 {
        // ENOENT: the thread went away (or a signal interrupted its call) first.
        return;
    }
    // SAFETY: the kernel filled at least `size_of::<seccomp_notif>()` bytes (its struct is not
    // smaller), and `buf` is aligned for it; every bit pattern is a valid `seccomp_notif`.
    let req: libc::seccomp_notif = unsafe { std::ptr::read(buf.as_ptr().cast()) };
    REFUSED.fetch_add(1, Ordering::Relaxed);
    let log = filter.mode == Seccomp::Log;
    if let Some(sink) = filter.sink.as_ref().and_then(|s| s.upgrade()) {
        sink.refused(&filter.thread, i64::from(req.data.nr), &req.data.args);
    }
    let resp = libc::seccomp_notif_resp {
        id: req.id,
        val: 0,
        error: if log { 0 } else { -libc::EPERM },
        flags: if log {
            libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32
        } else {
            0
        },
    };
    // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads one `struct seccomp_notif_resp`.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &raw const resp,
        )
    };
}
