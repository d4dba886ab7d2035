//! PID 1 duties: mount the kernel's filesystems, load the kernel modules the host put in the
//! initramfs, switch to the root filesystem the host attached ([`crate::rootfs`]), configure the
//! network the host described ([`crate::net`]), set a usable environment, run the server (a fork
//! of PID 1 that runs [`crate::server::run`]) and reap every process that ends up orphaned.
//!
//! Problems are printed to stderr, which for PID 1 is `/dev/console` (the zone's console), as
//! `zone-agent: ...` lines. Only a server that keeps dying makes PID 1 exit (and the kernel
//! panic, which the host sees as the zone stopping).

use crate::{proto, sys};
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

/// Where the host puts the kernel modules in the initramfs.
pub const MODULES_DIR: &str = "/lib/modules/zones";
/// `PATH` of the guest when the kernel passed none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `HOME` of the guest.
pub const DEFAULT_HOME: &str = "/root";
/// How many times (over the life of the zone) the server is restarted before PID 1 gives up.
pub const MAX_SERVER_RESTARTS: u32 = 5;

/// A filesystem PID 1 mounts.
struct Mount {
    target: &'static CStr,
    fstype: &'static CStr,
    flags: u64,
    data: Option<&'static CStr>,
    required: bool,
}

const MOUNTS: [Mount; 6] = [
    Mount {
        target: c"/proc",
        fstype: c"proc",
        flags: sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC,
        data: None,
        required: true,
    },
    Mount {
        target: c"/sys",
        fstype: c"sysfs",
        flags: sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC,
        data: None,
        required: true,
    },
    Mount {
        target: c"/dev",
        fstype: c"devtmpfs",
        flags: sys::MS_NOSUID,
        data: Some(c"mode=0755"),
        required: true,
    },
    Mount {
        target: c"/dev/pts",
        fstype: c"devpts",
        flags: sys::MS_NOSUID | sys::MS_NOEXEC,
        data: Some(c"mode=0620,ptmxmode=0666"),
        required: false,
    },
    Mount {
        target: c"/tmp",
        fstype: c"tmpfs",
        flags: sys::MS_NOSUID | sys::MS_NODEV,
        data: Some(c"mode=1777"),
        required: true,
    },
    Mount {
        target: c"/run",
        fstype: c"tmpfs",
        flags: sys::MS_NOSUID | sys::MS_NODEV,
        data: Some(c"mode=0755"),
        required: true,
    },
];

/// Runs PID 1: mounts, modules, environment, then supervises the server and reaps orphans
/// forever. Exits (making the kernel panic) only when the server dies again after
/// [`MAX_SERVER_RESTARTS`] restarts (counted over the life of the zone).
pub fn run() -> ! {
    let mut marks = Marks::default();
    marks.reached(proto::boot::AGENT_START);
    for problem in mount_filesystems() {
        eprintln!("{problem}");
    }
    marks.reached(proto::boot::MOUNTED);
    for problem in load_modules(Path::new(MODULES_DIR)) {
        eprintln!("{problem}");
    }
    marks.reached(proto::boot::MODULES);
    set_default_env();
    // After the modules (the filesystems'), before the network (which writes /etc/resolv.conf
    // into the new root).
    let mut server_env = crate::rootfs::setup();
    marks.reached(proto::boot::ROOTFS);
    for problem in crate::net::setup() {
        eprintln!("{problem}");
    }
    marks.reached(proto::boot::NETWORK);
    // The agent port listens from here on, held by PID 1 and passed to every server it starts:
    // the host's first connection is answered (and waits for the server) as soon as the socket
    // exists, not after the server's start, and none is refused while a server restarts.
    let listener = crate::server::listen_with_retries(proto::AGENT_PORT);
    marks.reached(proto::boot::LISTENING);
    match sys::set_cloexec(listener.as_fd(), false) {
        Ok(()) => server_env.push((
            crate::rootfs::server_env::LISTEN_FD,
            listener.as_raw_fd().to_string(),
        )),
        // The server then listens itself, once this socket is closed.
        Err(e) => {
            eprintln!("zone-agent: cannot pass the agent socket to the server: {e}");
            drop(listener);
        }
    }
    server_env.push((crate::rootfs::server_env::BOOT, marks.encode()));
    supervise(&server_env)
}

/// When PID 1 reached each step of its start (the host asks for them with `BOOT`).
#[derive(Default)]
struct Marks(Vec<(String, u64)>);

impl Marks {
    fn reached(&mut self, step: &str) {
        sys::port_mark(step);
        let micros = sys::boottime().as_micros().min(u128::from(u64::MAX)) as u64;
        self.0.push((step.to_string(), micros));
    }

    fn encode(&self) -> String {
        proto::boot::encode(&self.0)
    }
}

/// Creates the mount points and mounts `/proc`, `/sys`, `/dev`, `/dev/pts` (best effort),
/// `/tmp` and `/run`. Returns one message per failure; a filesystem already mounted there
/// (`EBUSY`) is no failure.
pub fn mount_filesystems() -> Vec<String> {
    let mut problems = Vec::new();
    for m in &MOUNTS {
        let target = Path::new(std::ffi::OsStr::from_bytes(m.target.to_bytes()));
        let _ = std::fs::create_dir_all(target);
        match sys::mount(m.fstype, m.target, m.fstype, m.flags, m.data) {
            Ok(()) => {}
            Err(e) if sys::is_errno(&e, sys::EBUSY) => {}
            Err(_) if !m.required => {}
            Err(e) => problems.push(format!(
                "zone-agent: mount {} on {}: {e}; is it enabled in the guest kernel?",
                m.fstype.to_string_lossy(),
                target.display()
            )),
        }
    }
    problems
}

/// The module file names listed in an `order` file: one a line, blank lines skipped.
pub fn module_order(order: &str) -> impl Iterator<Item = &str> {
    order.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// Loads the modules listed in `<dir>/order` (files in `dir`) in that order. A module whose
/// signature the host detached (`<name>.sig` beside it) is loaded without it first, and with it
/// when the kernel refuses it so (it demands signatures). A module already
/// loaded (`EEXIST`) is fine; every other failure becomes a
/// `zone-agent: module <name>: <error>` message and loading continues. No `order` file: no
/// modules.
pub fn load_modules(dir: &Path) -> Vec<String> {
    let order = match std::fs::read_to_string(dir.join("order")) {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            return vec![format!(
                "zone-agent: module list {}: {e}",
                dir.join("order").display()
            )];
        }
    };
    let mut problems = Vec::new();
    for name in module_order(&order) {
        if let Err(e) = load_module(dir, name) {
            problems.push(format!("zone-agent: module {name}: {e}"));
        }
    }
    problems
}

fn load_module(dir: &Path, name: &str) -> std::io::Result<()> {
    if name.contains('/') || name == "." || name == ".." {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name in the module directory",
        ));
    }
    let path = dir.join(name);
    let file = std::fs::File::open(&path)?;
    let Err(unsigned) = already_loaded_is_fine(sys::finit_module(file.as_fd(), c"", 0)) else {
        return Ok(());
    };
    // The host detached the signature (`<name>.sig`): a kernel that demands one gets it back.
    let Ok(signature) = std::fs::read(dir.join(format!("{name}.sig"))) else {
        return Err(unsigned);
    };
    let mut image = std::fs::read(&path)?;
    image.extend_from_slice(&signature);
    already_loaded_is_fine(sys::init_module(&image, c"")).map_err(|signed| {
        std::io::Error::new(
            signed.kind(),
            format!("{unsigned}; with its signature: {signed}"),
        )
    })
}

/// A module load's outcome, where a module already loaded (`EEXIST`) counts as loaded.
fn already_loaded_is_fine(loaded: std::io::Result<()>) -> std::io::Result<()> {
    match loaded {
        Err(e) if sys::is_errno(&e, sys::EEXIST) => Ok(()),
        other => other,
    }
}

/// Sets `PATH` and `HOME` when the kernel did not pass them. The kernel always passes `HOME=/`
/// to init; that default is replaced by [`DEFAULT_HOME`] too.
fn set_default_env() {
    if std::env::var_os("PATH").is_none() {
        // SAFETY: PID 1 is single-threaded here (no thread has been started yet), so nothing
        // reads or writes the environment concurrently.
        unsafe { std::env::set_var("PATH", DEFAULT_PATH) };
    }
    if std::env::var_os("HOME").is_none_or(|h| h == "/") {
        // SAFETY: as above, single-threaded.
        unsafe { std::env::set_var("HOME", DEFAULT_HOME) };
    }
}

/// Starts the server: a fork of PID 1 that runs [`crate::server::run`] with `env` added to its
/// environment. A fork, not a new execution of the agent: the child shares PID 1's pages, so
/// the server starts without loading the agent binary and its runtime again (in the lab that
/// was about 30 ms of the first command's wait).
fn start_server(env: &[(&str, String)]) -> Option<i32> {
    // SAFETY: PID 1 never starts a thread (it only mounts, loads modules, configures and reaps),
    // so the process is single-threaded here.
    match unsafe { sys::fork_single_threaded() } {
        Ok(sys::Forked::Child) => {
            for (key, value) in env {
                // SAFETY: the child has one thread (fork copied only the caller's).
                unsafe { std::env::set_var(key, value) };
            }
            crate::server::run()
        }
        Ok(sys::Forked::Parent(pid)) => Some(pid),
        Err(e) => {
            eprintln!("zone-agent: cannot start the server: {e}");
            None
        }
    }
}

/// Reaps every child forever, restarting the server (with `env` added to its environment) when
/// it dies.
fn supervise(env: &[(&str, String)]) -> ! {
    let mut restarts = 0;
    let mut server = start_server(env);
    loop {
        if server.is_none() {
            if restarts >= MAX_SERVER_RESTARTS {
                eprintln!(
                    "zone-agent: the server failed {} times; giving up (the kernel will panic)",
                    restarts + 1
                );
                std::process::exit(1);
            }
            restarts += 1;
            std::thread::sleep(Duration::from_millis(200));
            eprintln!("zone-agent: restarting the server ({restarts} of {MAX_SERVER_RESTARTS})");
            server = start_server(env);
            continue;
        }
        match sys::wait4(-1, 0) {
            Ok((pid, status)) if Some(pid) == server => {
                let status = std::process::ExitStatus::from_raw(status);
                eprintln!("zone-agent: the server (pid {pid}) ended: {status}");
                server = None;
            }
            // An orphan reparented to PID 1: reaped, nothing more to do.
            Ok(_) => {}
            Err(e) => {
                // ECHILD cannot happen while the server runs; whatever it was, do not spin.
                eprintln!("zone-agent: wait4: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_lists_names_in_order() {
        let names: Vec<_> = module_order("01-a.ko\n\n  02-b.ko \n03-c.ko").collect();
        assert_eq!(names, ["01-a.ko", "02-b.ko", "03-c.ko"]);
    }

    #[test]
    fn module_problems_are_reported_and_loading_goes_on() {
        let dir = std::env::temp_dir().join(format!("zone-agent-modules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("order"),
            "01-missing.ko\n../escape.ko\n02-gone.ko\n",
        )
        .unwrap();
        let problems = load_modules(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("zone-agent: module 01-missing.ko: "));
        assert!(problems[1].starts_with("zone-agent: module ../escape.ko: "));
        assert!(problems[2].starts_with("zone-agent: module 02-gone.ko: "));
    }

    #[test]
    fn no_order_file_means_no_modules() {
        assert!(load_modules(Path::new("/nonexistent/zone-agent")).is_empty());
    }
}
