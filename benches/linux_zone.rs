//! Linux-zone measurements. They need a KVM that runs guest kernels, so they run in the lab:
//! `lab/test --bench linux_zone`. Elsewhere they print SKIPPED.
//!
//! - boot, fair: zones' `build()` to the first `exec` answer against Cloud Hypervisor,
//!   Firecracker and QEMU `-M microvm,rtc=on` from spawn to a line their `/init` prints, the same
//!   kernel (bzImage, and the vmlinux inside it where a peer needs one), 1 vCPU, 256 MiB, for
//!   the Debian kernel and the minimal one; a warm-up round, then 7 interleaved rounds; each
//!   median, each ratio of medians, each paired ratio (the median over rounds of zones' time
//!   over the peer's in the same round, which cancels the lab's drift between rounds), and where
//!   zones' last boot went (`boot_report()`), see `peers.rs`;
//!   every peer runs twice a round: on its plain command line, and with the guest-kernel
//!   arguments zones adds for speed (`cryptomgr.notests` and the others), so the table shows
//!   what the VMM gains apart from what the arguments gain;
//! - exec round trip (`true`), criterion median;
//! - exec throughput: 64 MiB of stdout written 4 KiB and 1 MiB at a time, beside the floor of the
//!   same 4 KiB writer piped to `cat` inside the guest; 16 MiB through stdin;
//! - memory overhead: growth of this process's anonymous RSS once zones have booted and run a
//!   command, minus the guest memory they touched, per zone, for 1, 8 and 32 zones.
//!
//! `ZONES_BENCH_MEMORY_ONLY=1` stops after the memory overhead. Run it with `LAB_MEM=8G`: the 32 zones
//! touch about 3 GiB. `ZONES_BENCH_SKIP_MEMORY=1` leaves the memory overhead out (pass it into the
//! lab with `LAB_ENV=ZONES_BENCH_SKIP_MEMORY`): the lab's emulated machine sometimes freezes
//! under the 32 zones, and lab/test then starts the whole bench again.
//!
//! `ZONES_BENCH_BOOT_ONLY=debian` (or `minimal`) runs only that kernel's boot comparison: no
//! memory overhead, no throughput, no exec latency (pass it with `LAB_ENV=ZONES_BENCH_BOOT_ONLY`);
//! `ZONES_BENCH_BOOT_ONLY=all` runs both kernels' comparisons, one after the other.
//!
//! `ZONES_BENCH_THP=madvise` (or `always`, `never`) first sets the machine's transparent huge
//! pages to that mode (`/sys/kernel/mm/transparent_hugepage/enabled`; root, so in the lab): the
//! lab's Debian kernel defaults to `always`, Ubuntu's to `madvise`, where only memory advised
//! `MADV_HUGEPAGE` gets huge pages.
//!
//! Criterion writes its reports under `$CRITERION_HOME` (lab/test sets it to /tmp in the lab,
//! whose root file system is read-only).

mod common;
mod peers;

use common::{console_tail, median, rss_anon_kib};
use criterion::Criterion;
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

/// zones' `build()` to the first exec's answer (the agent up and one command run).
fn zones_first_exec(boot: &dyn Fn() -> LinuxBoot) -> Option<(Duration, Zone)> {
    let t = Instant::now();
    let zone = zone(boot());
    let out = zone
        .exec(&Command::new("true").timeout(Duration::from_secs(300)))
        .ok()?;
    out.status.success().then(|| (t.elapsed(), zone))
}

/// The fair boot bench for one kernel: zones `build()` to first exec against each peer's spawn
/// to `/init`, same kernel, 1 vCPU, 256 MiB, one warm-up round, then `ROUNDS` interleaved
/// rounds (each runs every variant once, in an order that rotates). Prints each median, each
/// ratio, and the boot report of zones' last zone.
fn fair_boot(
    label: &str,
    bzimage: &std::path::Path,
    vmlinux: Option<&std::path::Path>,
    zones_boot: &dyn Fn() -> LinuxBoot,
    initrd: &std::path::Path,
    work: &std::path::Path,
) {
    const ROUNDS: usize = 7;
    let (mut found, mut skipped) = peers::peers(bzimage, vmlinux, initrd, work);
    // The same peers again with the guest-kernel arguments zones adds for speed, so that the
    // table tells what the VMM gains apart from what the arguments gain.
    let extra = peers::zones_extra_args(&zones_boot().full_cmdline());
    let (mut with_args, why) = match extra.is_empty() {
        true => Default::default(),
        false => peers::peers_with(bzimage, vmlinux, initrd, work, &extra),
    };
    skipped.extend(why);
    for why in skipped {
        println!("boot ({label}): peer SKIPPED: {why}");
    }
    // Warm-up: caches filled; a peer that cannot boot this kernel form is dropped here.
    if zones_first_exec(zones_boot).is_none() {
        println!("boot ({label}): zones did not boot; no comparison");
        return;
    }
    peers::keep_booting(&mut found, &format!("boot ({label})"));
    peers::keep_booting(&mut with_args, &format!("boot ({label})"));
    // `found[..plain]` run on the plain command line, the rest with zones' arguments.
    let plain = found.len();
    found.append(&mut with_args);
    let mut zones_rounds = Vec::new();
    let mut last_report = None;
    let peer_runs = peers::interleaved_rounds(ROUNDS, label, &found, || {
        let run = zones_first_exec(zones_boot);
        zones_rounds.push(run.as_ref().map(|(t, _)| *t));
        if let Some((_, zone)) = run {
            last_report = Some(zone.boot_report());
            zone.kill();
        }
    });
    let zones_runs: Vec<Duration> = zones_rounds.iter().flatten().copied().collect();
    if zones_runs.is_empty() {
        println!("boot ({label}): zones failed every round");
        return;
    }
    let zones_median = median(zones_runs.clone());
    println!(
        "boot ({label}): zones, build() -> first exec answered, median of {}: {} ms",
        zones_runs.len(),
        zones_median.as_millis()
    );
    // The best peer on its plain command line, and the best with zones' arguments.
    // Each peer's median, its ratio of medians and its paired ratio (the median of zones / it
    // within each round).
    let mut best: [Option<(String, Duration, Option<f64>)>; 2] = [None, None];
    for (i, (peer, rounds)) in found.iter().zip(peer_runs).enumerate() {
        let runs: Vec<Duration> = rounds.iter().flatten().copied().collect();
        if runs.is_empty() {
            println!("boot ({label}): {}: failed every round", peer.label);
            continue;
        }
        let n = runs.len();
        let m = median(runs);
        let paired = peers::paired_ratio(&zones_rounds, &rounds);
        println!(
            "boot ({label}): {}, spawn -> /init prints, median of {n}: {} ms; zones / it = {:.2}{}",
            peer.label,
            m.as_millis(),
            zones_median.as_secs_f64() / m.as_secs_f64(),
            paired_text(paired)
        );
        let kind = &mut best[usize::from(i >= plain)];
        if kind.as_ref().is_none_or(|b| m < b.1) {
            *kind = Some((peer.label.clone(), m, paired));
        }
    }
    for (which, b) in ["best peer", "best peer with zones' kernel arguments"]
        .iter()
        .zip(best)
    {
        if let Some((peer, m, paired)) = b {
            println!(
                "boot ({label}): {which}: {peer} {} ms; zones / it = {:.2}{}",
                m.as_millis(),
                zones_median.as_secs_f64() / m.as_secs_f64(),
                paired_text(paired)
            );
        }
    }
    if let Some(report) = last_report {
        println!("boot ({label}): where zones' last boot went:\n{report}");
    }
}

/// The paired ratio, as the bench prints it after the ratio of medians.
fn paired_text(paired: Option<f64>) -> String {
    paired.map_or_else(String::new, |r| {
        format!(" (paired: median of the rounds' ratios {r:.2})")
    })
}

/// The fair boot bench on `only` the named kernel (`debian` or `minimal`), or on both.
fn report_boot(only: Option<&str>) {
    let work = std::env::temp_dir().join(format!("zones-peer-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&work);
    let Some(initrd) = peers::initramfs(&work) else {
        println!("boot: SKIPPED (busybox or cpio missing for the peers' initramfs)");
        return;
    };
    let wanted = |kernel: &str| only.is_none_or(|o| o == kernel || o == "all");
    if wanted("debian") {
        let debian = std::path::PathBuf::from(zones_kernel_path());
        let debian_vmlinux = peers::extract_vmlinux(&debian, &work.join("debian.vmlinux"));
        fair_boot(
            "Debian kernel",
            &debian,
            debian_vmlinux.as_deref(),
            &boot,
            &initrd,
            &work,
        );
    }
    // The kernel lab/minikernel builds: drivers built in, no modules.
    if wanted("minimal") {
        boot_minimal(&initrd, &work);
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// The fair boot bench on the kernel lab/minikernel builds (drivers built in, no modules).
fn boot_minimal(initrd: &std::path::Path, work: &std::path::Path) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/minikernel");
    let (mini, mini_vmlinux) = (dir.join("bzImage"), dir.join("vmlinux"));
    if !mini.is_file() {
        println!("boot (minimal kernel): SKIPPED (build it with lab/minikernel)");
        return;
    }
    let boot_mini = || with_userland(LinuxBoot::new(&mini));
    fair_boot(
        "minimal kernel",
        &mini,
        mini_vmlinux.is_file().then_some(mini_vmlinux.as_path()),
        &boot_mini,
        initrd,
        work,
    );
}

fn zones_kernel_path() -> String {
    common::host_kernel_path().expect("a kernel in /boot")
}

/// `n` booted 128-MiB zones that have each run `true`, and the guest memory they touched (KiB).
fn booted_zones(n: usize) -> (Vec<Zone>, u64) {
    let zones: Vec<Zone> = (0..n)
        .map(|_| {
            let zone = Zone::builder()
                .memory_mib(128)
                .linux(boot())
                .build()
                .expect("Linux zone");
            if let Err(e) = zone.wait_ready(Duration::from_secs(300)) {
                panic!(
                    "{e}\nits console's end:\n{}\nits boot report:\n{}",
                    console_tail(&zone.console_text()),
                    zone.boot_report()
                );
            }
            let out = zone.exec(&Command::new("true")).expect("exec");
            assert!(out.status.success());
            zone
        })
        .collect();
    let guest = zones
        .iter()
        .map(|z| z.metrics().memory_resident_bytes.unwrap_or(0) >> 10)
        .sum();
    (zones, guest)
}

/// VMM memory overhead: this process's anonymous RSS beyond the guest memory its zones touched,
/// per zone, for 1 zone (the first of the process: one-time costs included), then 8 and 32
/// zones alive at once (32 zones touch about 3 GiB: `LAB_MEM=8G`). Runs first, before anything
/// else in the process.
fn report_memory() {
    for n in [1, 8, 32] {
        let before = rss_anon_kib();
        let (zones, guest) = booted_zones(n);
        let grew = rss_anon_kib().saturating_sub(before);
        println!(
            "memory overhead, {n} zone(s) of 128 MiB: {} KiB per zone (anonymous RSS grew {grew} KiB, guest memory touched {guest} KiB)",
            (grew as i64 - guest as i64) / n as i64
        );
        drop(zones);
    }
}

fn report_throughput() {
    let zone = zone(boot());
    zone.wait_ready(Duration::from_secs(300))
        .expect("agent ready");
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
        let out = zone
            .exec(&sh(&cmd))
            .unwrap_or_else(|e| panic!("{label}: {e}\nconsole:\n{}", zone.console_text()));
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
    if let Ok(mode) = std::env::var("ZONES_BENCH_THP") {
        let knob = "/sys/kernel/mm/transparent_hugepage/enabled";
        std::fs::write(knob, &mode).expect("ZONES_BENCH_THP: cannot set the huge page mode");
        let now = std::fs::read_to_string(knob).unwrap_or_default();
        println!("transparent huge pages: {}", now.trim());
    }
    let only = std::env::var("ZONES_BENCH_BOOT_ONLY").ok();
    if only.is_some() {
        report_boot(only.as_deref());
        return;
    }
    // Memory first: a process that has run other zones has paid its one-time costs already.
    if !on("ZONES_BENCH_SKIP_MEMORY") {
        report_memory();
    }
    if on("ZONES_BENCH_MEMORY_ONLY") {
        return;
    }
    report_throughput();
    report_boot(None);
    let mut c = Criterion::default().configure_from_args();
    exec_latency(&mut c);
    c.final_summary();
}
