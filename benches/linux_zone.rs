//! Linux-zone measurements. They need a KVM that runs guest kernels, so they run in the lab:
//! `lab/test --bench linux_zone`. Elsewhere they print SKIPPED.
//!
//! - boot: `build()` -> agent answers a ping, and -> first `exec` answer, median of 10;
//!   peer: QEMU `-M microvm` booting the same kernel (1 vCPU, 256 MiB, no XSAVE) to an `/init`
//!   that prints a line, median of 10, measured in the same run;
//! - exec round trip (`true`), criterion median;
//! - exec throughput: 64 MiB of stdout written 4 KiB and 1 MiB at a time, beside the floor of the
//!   same 4 KiB writer piped to `cat` inside the guest; 16 MiB through stdin;
//! - memory overhead: growth of this process's RSS once a zone has booted and run a command,
//!   minus the guest memory the zone touched.
//!
//! Criterion writes its reports under `$CRITERION_HOME` (lab/test sets it to /tmp in the lab,
//! whose root file system is read-only).

mod common;

use common::{median, rss_kib};
use criterion::Criterion;
use std::io::{BufRead, BufReader};
use std::process::{Command as Host, Stdio};
use std::time::{Duration, Instant};
use zones::prelude::*;
use zones::{Command, LinuxBoot};

/// `kernel` with a busybox userland, XSAVE hidden in the lab (its SVM does not virtualize XSETBV).
fn with_userland(kernel: LinuxBoot) -> LinuxBoot {
    kernel
        .busybox()
        .hide_xsave(std::env::var("ZONES_LAB").is_ok())
}

/// The host's kernel and its modules.
fn boot() -> LinuxBoot {
    with_userland(LinuxBoot::host_kernel().expect("a kernel in /boot"))
}

fn zone(boot: LinuxBoot) -> Zone {
    Zone::builder()
        .memory_mib(256)
        .linux(boot)
        .build()
        .expect("Linux zone")
}

fn sh(script: &str) -> Command {
    Command::new("sh").arg("-c").arg(script)
}

/// QEMU's microvm boot of the same kernel to an /init that prints READY, or None if QEMU or the
/// tools to build its initramfs are missing.
fn qemu_microvm_boot(kernel: &str, initramfs: &std::path::Path) -> Option<Duration> {
    let started = Instant::now();
    let mut qemu = Host::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-M",
            "microvm",
            "-cpu",
            "host,-xsave",
            "-m",
            "256M",
            "-smp",
            "1",
        ])
        .args(["-kernel", kernel, "-initrd"])
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 rdinit=/init",
            "-nodefaults",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-display", "none", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let reader = BufReader::new(qemu.stdout.take()?);
    let mut ready = None;
    for line in reader.lines() {
        if line.ok()?.contains("ZONES-PEER-READY") {
            ready = Some(started.elapsed());
            break;
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    ready
}

/// A busybox initramfs whose /init prints ZONES-PEER-READY and powers off.
fn peer_initramfs(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let root = dir.join("peer-root");
    std::fs::create_dir_all(root.join("bin")).ok()?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).ok()?;
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n/bin/busybox echo ZONES-PEER-READY\n/bin/busybox poweroff -f\n",
    )
    .ok()?;
    Host::new("chmod")
        .args(["+x"])
        .arg(root.join("init"))
        .status()
        .ok()?;
    let out = dir.join("peer.cpio");
    let cmd = format!(
        "cd {} && find . | cpio -o -H newc --quiet > {}",
        root.display(),
        out.display()
    );
    Host::new("sh")
        .args(["-c", &cmd])
        .status()
        .ok()?
        .success()
        .then_some(out)
}

/// `build()` -> agent ping and -> first exec answer for 10 zones booted with `boot`: medians.
fn boot_medians(label: &str, boot: impl Fn() -> LinuxBoot) -> (Duration, Duration) {
    let mut to_ping = Vec::new();
    let mut to_exec = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let zone = zone(boot());
        zone.wait_ready(Duration::from_secs(300))
            .expect("agent ready");
        to_ping.push(t.elapsed());
        let out = zone.exec(&Command::new("true")).expect("exec");
        assert!(out.status.success());
        to_exec.push(t.elapsed());
        eprintln!(
            "  {label} boot {}: ping {:?}, first exec {:?}",
            to_exec.len(),
            to_ping[to_ping.len() - 1],
            t.elapsed()
        );
    }
    let (ping, exec) = (median(to_ping), median(to_exec));
    println!("boot ({label}): build() -> agent ping answered, median of 10: {ping:?}");
    println!("boot ({label}): build() -> first exec answered, median of 10: {exec:?}");
    (ping, exec)
}

/// QEMU `-M microvm` booting `kernel` to a printing /init, median of 10, beside `exec`.
fn report_peer(label: &str, kernel: &str, initramfs: Option<&std::path::Path>, exec: Duration) {
    let Some(initramfs) = initramfs else {
        println!("peer ({label}): SKIPPED (busybox, cpio or qemu missing)");
        return;
    };
    let runs: Vec<Duration> = (0..10)
        .filter_map(|_| qemu_microvm_boot(kernel, initramfs))
        .collect();
    if runs.len() < 10 {
        println!(
            "peer ({label}): qemu -M microvm did not complete 10 boots ({} did)",
            runs.len()
        );
        return;
    }
    let peer = median(runs);
    println!(
        "peer ({label}): qemu -M microvm, same kernel, spawn -> /init prints, median of 10: {peer:?}"
    );
    println!(
        "ratio ({label}): zones first exec / qemu microvm init = {:.2}",
        exec.as_secs_f64() / peer.as_secs_f64()
    );
}

fn report_boot() {
    let dir = std::env::temp_dir().join(format!("zones-peer-{}", std::process::id()));
    let initramfs = peer_initramfs(&dir);
    let (_, exec) = boot_medians("Debian kernel", boot);
    report_peer(
        "Debian kernel",
        &zones_kernel_path(),
        initramfs.as_deref(),
        exec,
    );
    // The kernel lab/minikernel builds: drivers built in, no modules.
    let mini = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/minikernel/bzImage");
    if mini.is_file() {
        let (_, exec) = boot_medians("minimal kernel", || with_userland(LinuxBoot::new(&mini)));
        report_peer(
            "minimal kernel",
            &mini.display().to_string(),
            initramfs.as_deref(),
            exec,
        );
    } else {
        println!("boot (minimal kernel): SKIPPED (build it with lab/minikernel)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn zones_kernel_path() -> String {
    let mut k: Vec<_> = std::fs::read_dir("/boot")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains("vmlinuz-"))
        .collect();
    k.sort();
    k.pop().expect("a kernel in /boot")
}

fn report_memory_and_throughput() {
    let rss_before = rss_kib();
    let zone = zone(boot());
    zone.wait_ready(Duration::from_secs(300))
        .expect("agent ready");
    assert!(
        zone.exec(&Command::new("true"))
            .expect("exec")
            .status
            .success()
    );
    // Measured before any large output exists in this process.
    let guest = zone.metrics().memory_resident_bytes.unwrap_or(0) >> 10;
    let grew = rss_kib().saturating_sub(rss_before);
    println!(
        "memory: process RSS grew {grew} KiB with a booted zone; guest memory touched {guest} KiB; VMM overhead {} KiB",
        grew.saturating_sub(guest)
    );
    let bytes = 64u64 << 20;
    let n = bytes.to_string();
    let mb_s = |secs: f64| bytes as f64 / secs / 1e6;
    // Floor: the same writer into a pipe inside the guest, no zones channel.
    let t = Instant::now();
    let floor = zone
        .exec(&sh(&format!("head -c {n} /dev/zero | cat > /dev/null")))
        .expect("exec");
    let floor_secs = t.elapsed().as_secs_f64();
    assert!(floor.status.success());
    for (label, cmd) in [
        ("head -c (4 KiB writes)", format!("head -c {n} /dev/zero")),
        (
            "dd bs=1M (1 MiB writes)",
            format!("dd if=/dev/zero bs=1M count={} 2>/dev/null", bytes >> 20),
        ),
    ] {
        let t = Instant::now();
        let out = zone.exec(&sh(&cmd)).expect("exec");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(out.stdout.len() as u64, bytes);
        drop(out);
        println!(
            "exec throughput, guest stdout -> host, {label}: {:.1} MB/s (64 MiB in {secs:.2} s)",
            mb_s(secs)
        );
    }
    println!(
        "floor: head -c | cat inside the guest: {:.1} MB/s (64 MiB in {floor_secs:.2} s)",
        mb_s(floor_secs)
    );
    let input = vec![b'z'; 16 << 20];
    let t = Instant::now();
    let out = zone
        .exec(&Command::new("wc").arg("-c").stdin(input))
        .expect("exec");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (16u64 << 20).to_string()
    );
    println!(
        "exec throughput, host stdin -> guest: {:.1} MB/s (16 MiB in {secs:.2} s)",
        16.0 * 1048576.0 / secs / 1e6
    );
    zone.kill();
}

fn exec_latency(c: &mut Criterion) {
    let zone = zone(boot());
    zone.wait_ready(Duration::from_secs(300))
        .expect("agent ready");
    let mut g = c.benchmark_group("linux_zone");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(2));
    g.bench_function("exec_true_round_trip", |b| {
        b.iter(|| zone.exec(&Command::new("true")).expect("exec"))
    });
    g.finish();
    zone.kill();
}

fn main() {
    let on = |v: &str| std::env::var(v).is_ok_and(|v| v == "1");
    if !(on("ZONES_LAB") || on("ZONES_LINUX_TESTS")) {
        eprintln!(
            "SKIPPED linux_zone benchmarks: they need a KVM that runs guest kernels (lab/test --bench linux_zone)"
        );
        return;
    }
    // Memory first: later zones would leave freed heap behind that hides the VMM's own growth.
    report_memory_and_throughput();
    report_boot();
    let mut c = Criterion::default().configure_from_args();
    exec_latency(&mut c);
    c.final_summary();
}
