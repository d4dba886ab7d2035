//! Firecracker-style checks of the filters: on a fresh thread under each kind's filter, the
//! calls that kind needs work, calls outside its list fail with EPERM and are counted exactly,
//! and the test's own thread is unaffected.

use super::*;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Recorded(Mutex<Vec<(String, i64)>>);

impl RefusalSink for Recorded {
    fn refused(&self, thread: &str, nr: i64, _args: &[u64; 6]) {
        self.0.lock().unwrap().push((thread.to_string(), nr));
    }
}

/// Runs `f` on a new thread under `kind`'s filter (plus `extra`) in `mode`; returns what `f`
/// returned and the refusals reported.
fn under<R: Send + 'static>(
    kind: ThreadKind,
    extra: Vec<i64>,
    mode: Seccomp,
    f: impl FnOnce() -> R + Send + 'static,
) -> (R, Vec<(String, i64)>) {
    start_supervisor();
    let sink = Arc::new(Recorded::default());
    let weak: std::sync::Weak<dyn RefusalSink> = Arc::downgrade(&sink) as _;
    let filter = ThreadFilter {
        mode,
        kind,
        extra,
        thread: format!("test {}", kind.name()),
        sink: Some(weak),
    };
    let r = std::thread::spawn(move || {
        apply(filter).expect("filter installed");
        f()
    })
    .join()
    .expect("the filtered thread ran");
    let refused = sink.0.lock().unwrap().clone();
    (r, refused)
}

/// What every zones thread does: allocate (small and large), lock, wait, sleep, read the
/// clock, seed a hash map, signal and read an eventfd it was given.
fn everyday_work(evt: vmm_sys_util::eventfd::EventFd) -> bool {
    let big = vec![7u8; 8 << 20];
    let m = Arc::new((Mutex::new(0u32), std::sync::Condvar::new()));
    let guard = m.0.lock().unwrap();
    let _ =
        m.1.wait_timeout(guard, std::time::Duration::from_millis(1))
            .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1));
    let _ = std::time::Instant::now();
    let mut map = std::collections::HashMap::new();
    map.insert(1, big.len());
    evt.write(1).unwrap();
    evt.read().unwrap() == 1 && map[&1] == 8 << 20
}

fn open_fails_with_eperm() -> bool {
    match std::fs::File::open("/proc/self/status") {
        Err(e) => e.kind() == ErrorKind::PermissionDenied && e.raw_os_error() == Some(libc::EPERM),
        Ok(_) => false,
    }
}

#[test]
fn each_kind_runs_its_work_and_refuses_opening_files_exactly_once() {
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Helper,
        ThreadKind::Deadlines,
    ] {
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ((work, refused_open), refusals) =
            under(kind, Vec::new(), Seccomp::Enforce, move || {
                (everyday_work(evt), open_fails_with_eperm())
            });
        assert!(work, "{kind:?}: its everyday work failed");
        assert!(refused_open, "{kind:?}: open was not refused with EPERM");
        assert_eq!(refusals.len(), 1, "{kind:?}: {refusals:?}");
        assert_eq!(refusals[0].0, format!("test {}", kind.name()));
        assert_eq!(name(refusals[0].1), "openat");
    }
    // The test's own thread is not filtered.
    assert!(std::fs::File::open("/proc/self/status").is_ok());
}

#[test]
fn vcpu_threads_may_not_exec_create_sockets_or_threads() {
    let ((exec, socket, thread), refusals) =
        under(ThreadKind::Vcpu, vec![], Seccomp::Enforce, || {
            let exec = std::process::Command::new("/bin/true").status().is_err();
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").is_err();
            let thread = std::thread::Builder::new().spawn(|| ()).is_err();
            (exec, socket, thread)
        });
    assert!(
        exec && socket && thread,
        "exec {exec}, socket {socket}, thread {thread}"
    );
    let names: Vec<String> = refusals.iter().map(|(_, nr)| name(*nr)).collect();
    assert!(names.iter().any(|n| n == "socket"), "{names:?}");
    // clone3 got ENOSYS (uncounted), and glibc fell back to clone, which was refused.
    assert!(names.iter().any(|n| n == "clone"), "{names:?}");
    assert!(!names.iter().any(|n| n == "clone3"), "{names:?}");
}

#[test]
fn clone3_is_not_implemented_so_glibc_falls_back() {
    let (errno, refusals) = under(ThreadKind::Device, vec![], Seccomp::Enforce, || {
        // SAFETY: clone3 with a null argument struct of size 0 creates nothing; the filter
        // answers before the kernel looks at the arguments.
        let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
        (r == -1).then(|| std::io::Error::last_os_error().raw_os_error())
    });
    assert_eq!(errno, Some(Some(libc::ENOSYS)));
    assert!(refusals.is_empty(), "{refusals:?}");
}

#[test]
fn a_device_gets_the_calls_it_declares() {
    let (bound, refusals) = under(
        ThreadKind::Device,
        vec![libc::SYS_socket, libc::SYS_bind],
        Seccomp::Enforce,
        || {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").is_ok();
            let unix = std::os::unix::net::UnixDatagram::unbound()
                .err()
                .and_then(|e| e.raw_os_error());
            (udp, unix)
        },
    );
    assert_eq!(bound, (true, Some(libc::EPERM)), "{refusals:?}");
    let names: Vec<String> = refusals.iter().map(|(_, nr)| name(*nr)).collect();
    assert_eq!(names, ["socket"], "only the Unix socket was refused");
}

#[test]
fn log_mode_reports_but_lets_the_call_run() {
    let (opened, refusals) = under(ThreadKind::Vcpu, vec![], Seccomp::Log, || {
        std::fs::File::open("/proc/self/status").is_ok()
    });
    assert!(opened);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
}

#[test]
fn executable_mappings_are_refused() {
    let (mapped, refusals) = under(ThreadKind::Vcpu, vec![], Seccomp::Enforce, || {
        // SAFETY: an anonymous private mapping; only its result is looked at, and it is unmapped
        // if it was made.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p != libc::MAP_FAILED {
                libc::munmap(p, 4096);
            }
            p != libc::MAP_FAILED
        }
    });
    assert!(!mapped);
    assert_eq!(refusals.len(), 1);
}

#[test]
fn a_panic_on_a_filtered_thread_unwinds_cleanly() {
    start_supervisor();
    let filter = ThreadFilter {
        mode: Seccomp::Enforce,
        kind: ThreadKind::Vcpu,
        extra: Vec::new(),
        thread: "panicking".into(),
        sink: None,
    };
    let joined = std::thread::spawn(move || {
        apply(filter).unwrap();
        panic!("a bug on a filtered thread");
    })
    .join();
    assert!(
        joined.is_err(),
        "the panic was reported, the process lives on"
    );
}

/// Set in the child process of [`an_abort_on_a_filtered_thread_is_sigabrt_not_sigsys`].
const ABORT_CHILD: &str = "ZONES_SECCOMP_ABORT_CHILD";

#[test]
fn abort_child() {
    if std::env::var_os(ABORT_CHILD).is_none() {
        return;
    }
    start_supervisor();
    let filter = ThreadFilter {
        mode: Seccomp::Enforce,
        kind: ThreadKind::Vcpu,
        extra: Vec::new(),
        thread: "aborting".into(),
        sink: None,
    };
    let _ = std::thread::spawn(move || {
        apply(filter).unwrap();
        std::process::abort();
    })
    .join();
    std::process::exit(3);
}

#[test]
fn an_abort_on_a_filtered_thread_is_sigabrt_not_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new(exe)
        .args(["--exact", "seccomp::tests::abort_child", "--nocapture"])
        .env(ABORT_CHILD, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
}
