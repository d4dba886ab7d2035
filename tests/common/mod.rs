//! Helpers shared by the zone tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zones::prelude::*;

/// Prints `SKIPPED <why>` where it is seen: straight to the process's stderr, which the test
/// harness does not capture (its capture would hide the line of a test that returns early).
pub fn skipped(why: std::fmt::Arguments<'_>) {
    use std::io::Write;
    // One write of a whole line that starts on a line of its own: the harness's own output
    // ("test x ... " without its newline yet) cannot split it or run into it.
    let line = format!("\nSKIPPED {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The line lab/run looks for on the lab's console: it makes the run a fault of the emulated
/// machine (126), which lab/test answers by running the unfinished suites once more.
pub const LAB_EMULATION_FAULT: &str = "zones-lab: emulation fault:";

/// In the lab only: a test that fails because a zone's guest shut the machine down (a triple
/// fault, which no test provokes: every deliberate fault is caught by the guest's own handlers)
/// also prints [`LAB_EMULATION_FAULT`]. Under QEMU's software SVM such stops come now and then,
/// without a guest panic and without a pattern, together with crashes of the lab kernel itself
/// (lab/run); on a hardware KVM the line is never printed and the failure stands as it is.
pub fn watch_for_lab_faults() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if !std::env::var("ZONES_LAB").is_ok_and(|v| v == "1") {
        return;
    }
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if msg.contains("guest shut down") || msg.contains("Shutdown") {
                use std::io::Write;
                let test = std::thread::current().name().unwrap_or("?").to_string();
                let line = format!(
                    "\n{LAB_EMULATION_FAULT} {test}: a zone's guest shut down (triple fault) \
                     without a guest panic\n"
                );
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            report(info);
        }));
    });
}

/// Whether /dev/kvm can be opened. Prints why a test is skipped when it cannot.
pub fn kvm_available(test: &str) -> bool {
    watch_for_lab_faults();
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skipped(format_args!(
                "{test}: /dev/kvm cannot be opened ({e}); zone tests need KVM"
            ));
            false
        }
    }
}

/// `bound` scaled by `ZONES_TIME_SCALE` (default 1). The lab sets 10: under full emulation every
/// bound that holds on a real KVM holds only about ten times looser.
pub fn scaled(bound: Duration) -> Duration {
    let scale = std::env::var("ZONES_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1);
    bound * scale.max(1)
}

/// Runs `cmd` in `zone` once its agent is up, or panics with the zone's console. The wait for
/// the agent is scaled like every other bound ([`scaled`]): `exec`'s own wait for a booting
/// guest (two minutes) is a product default, and in the lab several zones booting at once
/// under emulation can take longer than that.
pub fn run_when_ready(zone: &Zone, cmd: &zones::Command) -> zones::Output {
    let console =
        |e: &dyn std::fmt::Display| panic!("exec failed: {e}\nconsole:\n{}", zone.console_text());
    if let Err(e) = zone.wait_ready(scaled(Duration::from_secs(120))) {
        console(&e);
    }
    zone.exec(cmd).unwrap_or_else(|e| console(&e))
}

/// Returns from the test (printing the reason) when KVM is unavailable.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !common::kvm_available(module_path!()) {
            return;
        }
    };
}

/// A guest program built by build.rs from tests/guests/<name>.rs.
#[macro_export]
macro_rules! guest {
    ($name:literal) => {
        zones::GuestProgram::from_elf(include_bytes!(env!(concat!("ZONES_GUEST_", $name))))
            .expect("guest ELF")
    };
}

/// A value a host function stores for the test to read.
#[derive(Clone, Default)]
pub struct Slot<T>(pub Arc<Mutex<Option<T>>>);

impl<T: Clone> Slot<T> {
    pub fn set(&self, v: T) {
        *self.0.lock().unwrap() = Some(v);
    }
    pub fn get(&self) -> Option<T> {
        self.0.lock().unwrap().clone()
    }
    /// Waits up to 10 s for a value.
    pub fn wait(&self) -> T {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.get() {
                return v;
            }
            assert!(Instant::now() < until, "timed out waiting for the guest");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Reads a u64 from guest memory.
pub fn read_u64(zone: &ZoneHandle, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    zone.read_memory(addr, &mut b).expect("guest memory read");
    u64::from_le_bytes(b)
}

/// Starts the `spin` guest and returns it with the address of its counter, once it counts.
pub fn spinning_zone(builder: ZoneBuilder) -> (Zone, u64) {
    let at = Slot::default();
    let slot = at.clone();
    let zone = builder
        .micro(crate::guest!("SPIN"))
        .host_fn_u64("counter_at", move |a| {
            slot.set(a[0]);
            0
        })
        .build()
        .expect("spin zone");
    let addr = at.wait();
    let until = Instant::now() + Duration::from_secs(10);
    while read_u64(&zone, addr) == 0 {
        assert!(Instant::now() < until, "counter never advanced");
        std::thread::yield_now();
    }
    (zone, addr)
}

/// Whether this KVM can run a guest kernel: set by the lab (`ZONES_LAB=1`) or by a user with a
/// hardware KVM (`ZONES_LINUX_TESTS=1`).
pub fn linux_capable(test: &str) -> bool {
    let on = |v: &str| std::env::var(v).is_ok_and(|v| v == "1");
    if on("ZONES_LAB") || on("ZONES_LINUX_TESTS") {
        return kvm_available(test);
    }
    skipped(format_args!(
        "{test}: needs a KVM that runs guest kernels; run it in the lab (lab/test linux_zone) or set ZONES_LINUX_TESTS=1"
    ));
    false
}

/// Returns from the test (printing the reason) when this KVM cannot run a guest kernel.
#[macro_export]
macro_rules! require_linux {
    () => {
        if !common::linux_capable(std::thread::current().name().unwrap_or(module_path!())) {
            return;
        }
    };
}

/// `kernel` with a busybox userland, XSAVE hidden in the lab (QEMU's software SVM does not
/// virtualize XSETBV).
pub fn with_userland(kernel: zones::LinuxBoot) -> zones::LinuxBoot {
    kernel
        .busybox()
        .hide_xsave(std::env::var("ZONES_LAB").is_ok())
}

/// The host's kernel and its modules, with a busybox userland.
pub fn boot() -> zones::LinuxBoot {
    with_userland(zones::LinuxBoot::host_kernel().expect("a kernel in /boot"))
}
