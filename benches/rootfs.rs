//! Linux zones with a root filesystem, in the lab (`lab/test --bench rootfs`; elsewhere SKIPPED).
//! Needs `target/lab-images/debian-python` (lab/images).
//!
//! - `build()` -> first `python3 -c pass` answered, with the Debian+Python image as
//!   `Rootfs::dir` (its image already cached), beside `build()` -> first `true` answered with the
//!   busybox initramfs only, interleaved, median of 5 each, same run;
//! - memory for 8 zones on one image: this process's RSS growth and the guest memory the zones
//!   touched, per zone.

mod common;

use common::{console_tail, median, rss_kib};
use std::path::Path;
use std::time::{Duration, Instant};
use zones::prelude::*;
use zones::{Command, LinuxBoot, Rootfs};

fn kernel() -> LinuxBoot {
    LinuxBoot::host_kernel()
        .expect("a kernel in /boot")
        .hide_xsave(std::env::var("ZONES_LAB").is_ok())
}

fn rootfs() -> Rootfs {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lab-images/debian-python");
    assert!(dir.is_dir(), "no {}: run lab/images", dir.display());
    Rootfs::dir(dir).cache_dir(std::env::temp_dir().join("zones-bench-cache"))
}

fn zone(boot: LinuxBoot, mib: u64) -> Zone {
    Zone::builder()
        .memory_mib(mib)
        .linux(boot)
        .build()
        .expect("Linux zone")
}

fn first_answer(boot: LinuxBoot, cmd: &Command) -> Duration {
    let t = Instant::now();
    let z = zone(boot, 256);
    let out = z.exec(cmd).expect("exec");
    assert!(out.status.success(), "{out:?}");
    t.elapsed()
}

fn main() {
    let on = |v: &str| std::env::var(v).is_ok_and(|v| v == "1");
    if !(on("ZONES_LAB") || on("ZONES_LINUX_TESTS")) {
        eprintln!(
            "SKIPPED rootfs benchmarks: they need a KVM that runs guest kernels (lab/test --bench rootfs)"
        );
        return;
    }
    // The image is made once, outside the measurement (as a second zone finds it cached).
    let t = Instant::now();
    drop(zone(kernel().rootfs(rootfs()), 256));
    println!(
        "first zone from the directory (mke2fs -d, then boot): {:?}",
        t.elapsed()
    );

    let python = Command::new("python3").arg("-c").arg("pass");
    // Memory first: zones built and dropped before would leave freed heap behind that hides
    // the VMM's own growth.
    let before = rss_kib();
    let mut zones: Vec<Zone> = (0..8)
        .map(|_| zone(kernel().rootfs(rootfs()), 192))
        .collect();
    // A zone the lab's emulated machine fails (a nested guest's triple fault shows as a
    // shutdown) is reported and left out of the figure, not hidden.
    zones.retain(|z| match z.exec(&python) {
        Ok(out) if out.status.success() => true,
        other => {
            eprintln!(
                "a zone failed: {other:?}\nconsole tail:\n{}",
                console_tail(&z.console_text())
            );
            false
        }
    });
    let n = zones.len() as u64;
    assert!(n > 0, "no zone answered");
    let grew = rss_kib().saturating_sub(before);
    let guest: u64 = zones
        .iter()
        .map(|z| z.metrics().memory_resident_bytes.unwrap_or(0) >> 10)
        .sum();
    println!(
        "{n} zones on one image, each after one python3: process RSS grew {grew} KiB ({} KiB per zone), of which guest memory {guest} KiB ({} KiB per zone); VMM overhead {} KiB per zone",
        grew / n,
        guest / n,
        grew.saturating_sub(guest) / n
    );
    drop(zones);

    let (mut with_image, mut busybox) = (Vec::new(), Vec::new());
    for round in 0..5 {
        with_image.push(first_answer(kernel().rootfs(rootfs()), &python));
        busybox.push(first_answer(kernel().busybox(), &Command::new("true")));
        eprintln!(
            "  round {round}: rootfs {:?}, busybox {:?}",
            with_image[round], busybox[round]
        );
    }
    let (a, b) = (median(with_image), median(busybox));
    println!("build() -> first `python3 -c pass`, Debian+Python rootfs, median of 5: {a:?}");
    println!("build() -> first `true`, busybox initramfs only, median of 5: {b:?}");
    println!(
        "ratio rootfs/busybox: {:.2}",
        a.as_secs_f64() / b.as_secs_f64()
    );
}
