//! PCI passthrough, in the lab's passthrough variant (`LAB_VFIO=1 lab/test --bench passthrough`):
//! a Linux zone's `build()` to its first exec answer with QEMU's nvme passed through, against
//! QEMU booting the same kernel and command line with the same device (`-device vfio-pci`), from
//! spawn to a line its `/init` prints; at 256 MiB and 1 GiB of guest memory, a warm-up round and
//! 3 interleaved rounds each; medians and ratios, and zones' DMA-map time per GiB of guest
//! memory (the pinning of guest memory grows with it).
//!
//! Then the device's interrupt round trip under load: the guest's nvme driver reads 4 KiB
//! blocks with `O_DIRECT`, one at a time, so that each read is a doorbell write into the
//! device's mapped BAR, the device's work, and its completion interrupt delivered to the guest
//! (MSI-X through VFIO's eventfd and KVM's irqfd, or INTx with `pci=nomsi`). The guest kernel's
//! own disk statistics give the mean time a read spent in flight. Zones with MSI-X and with INTx
//! against QEMU (MSI-X) with the same device, kernel and command, interleaved rounds, medians.
//! Elsewhere it prints SKIPPED.

mod common;
mod peers;

use common::median;
use std::time::{Duration, Instant};
use zones::gpu::Gpu;
use zones::prelude::*;
use zones::{Command, LinuxBoot};

const ROUNDS: usize = 3;

/// The lab's nvme, when the passthrough variant runs.
fn nvme() -> Option<String> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let mut found: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            read(e.path().join("vendor")).trim() == "0x1b36"
                && read(e.path().join("device")).trim() == "0x0010"
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// `build()` to the first exec answer, and the DMA-map time the device reported.
fn zones_first_exec(address: &str, memory_mib: u64) -> Option<(Duration, u64)> {
    let t = Instant::now();
    let zone = Zone::builder()
        .memory_mib(memory_mib)
        .linux(
            LinuxBoot::host_kernel()
                .ok()?
                .busybox()
                .hide_xsave(std::env::var("ZONES_LAB").is_ok()),
        )
        .gpu(Gpu::vfio(address).bind_vfio(true))
        .build()
        .map_err(|e| eprintln!("zones: {e}"))
        .ok()?;
    let out = zone
        .exec(&Command::new("true").timeout(Duration::from_secs(300)))
        .map_err(|e| eprintln!("zones: {e}\n{}", zone.console_text()))
        .ok()?;
    let took = t.elapsed();
    let map_us = zone
        .device::<GpuControl>()
        .and(
            zone.metrics()
                .devices
                .iter()
                .find(|d| d.device == "gpu0")
                .cloned(),
        )
        .and_then(|d| d.get("dma_map_us"))
        .unwrap_or(0);
    out.status.success().then_some((took, map_us))
}

/// The guest's reads: `READS` direct 4 KiB reads of the nvme, one at a time, with the disk
/// statistics (reads completed, milliseconds spent reading) and the uptime before and after.
const READS: u32 = 4000;
fn read_script() -> String {
    format!(
        "for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
st() {{ echo $(cat /sys/block/nvme0n1/stat) | cut -d' ' -f1,4; }}
s0=$(st); u0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/nvme0n1 of=/dev/null bs=4096 count={READS} iflag=direct 2>/dev/null
s1=$(st); u1=$(cut -d' ' -f1 /proc/uptime)
echo \"zones-reads $s0 $s1 $u0 $u1\""
    )
}

/// The mean microseconds a read spent in flight (the guest's disk statistics) and per read
/// of wall time (its uptime), from the script's line in `out`.
fn read_times(out: &str) -> Option<(f64, f64)> {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("zones-reads "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse::<f64>().ok())
        .collect::<Option<_>>()?;
    let [r0, ms0, r1, ms1, u0, u1] = v[..] else {
        return None;
    };
    let reads = r1 - r0;
    (reads >= f64::from(READS)).then(|| ((ms1 - ms0) * 1000.0 / reads, (u1 - u0) * 1e6 / reads))
}

/// The nvme module and what it needs, from the running kernel's `modules.dep`, in load order.
fn nvme_modules() -> Vec<std::path::PathBuf> {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return Vec::new();
    };
    let dir = std::path::PathBuf::from(format!("/lib/modules/{}", release.trim()));
    let dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_default();
    let Some(line) = dep
        .lines()
        .find(|l| l.starts_with("kernel/drivers/nvme/host/nvme.ko"))
    else {
        return Vec::new();
    };
    let mut deps: Vec<&str> = line.split_whitespace().skip(1).collect();
    deps.reverse();
    // The crypto implementations the CRC modules ask for by name (softdeps) come first.
    let mut order = vec![
        "kernel/crypto/crct10dif_generic.ko",
        "kernel/crypto/crc64_rocksoft_generic.ko",
    ];
    order.extend(deps);
    order.push("kernel/drivers/nvme/host/nvme.ko");
    order
        .into_iter()
        .map(|m| dir.join(m))
        .filter(|p| p.exists())
        .collect()
}

/// The guest's read times in a zone with the nvme (MSI-X, or INTx with `pci=nomsi`).
fn zones_reads(address: &str, intx: bool) -> Option<(f64, f64)> {
    let mut boot = LinuxBoot::host_kernel()
        .ok()?
        .busybox()
        .module("nvme")
        .hide_xsave(std::env::var("ZONES_LAB").is_ok());
    if intx {
        boot = boot.cmdline("pci=nomsi");
    }
    let zone = Zone::builder()
        .memory_mib(256)
        .linux(boot)
        .gpu(Gpu::vfio(address).bind_vfio(true))
        .build()
        .map_err(|e| eprintln!("zones: {e}"))
        .ok()?;
    let out = zone
        .exec(
            &Command::new("sh")
                .arg("-c")
                .arg(read_script())
                .timeout(Duration::from_secs(300)),
        )
        .map_err(|e| eprintln!("zones: {e}\n{}", zone.console_text()))
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    read_times(&text).or_else(|| {
        eprintln!("zones: no read times in {text:?}");
        None
    })
}

/// The interrupt round trip under load (see the module's documentation).
fn reads(address: &str, bzimage: &std::path::Path, work: &std::path::Path) {
    let modules = nvme_modules();
    let Some(initrd) = peers::initramfs_running(work, "reads", &modules, &read_script()) else {
        println!("passthrough reads: SKIPPED: no initramfs for the peers");
        return;
    };
    let qemus = peers::qemu_passthrough(bzimage, &initrd, 256, address);
    let mut peer_runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); qemus.len()];
    let (mut msix, mut intx) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let variants = qemus.len() + 2;
        for k in 0..variants {
            match (round + k) % variants {
                0 => msix.extend(zones_reads(address, false)),
                1 => intx.extend(zones_reads(address, true)),
                i => {
                    let lines = qemus[i - 2].output().unwrap_or_default();
                    match read_times(&lines.join("\n")) {
                        Some(t) => peer_runs[i - 2].push(t),
                        None => eprintln!("{}: no read times", qemus[i - 2].label),
                    }
                }
            }
        }
        eprintln!("  reads: round {} of {ROUNDS} done", round + 1);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let report = |label: &str, runs: &[(f64, f64)]| {
        let flight = med(runs.iter().map(|r| r.0).collect());
        let wall = med(runs.iter().map(|r| r.1).collect());
        match (flight, wall) {
            (Some(f), Some(w)) => {
                println!(
                    "passthrough reads ({label}): 4 KiB direct reads one at a time, median of {}: {f:.1} us in flight, {w:.1} us per read",
                    runs.len()
                );
                Some(f)
            }
            _ => {
                println!("passthrough reads ({label}): failed every round");
                None
            }
        }
    };
    let zones = report("zones, MSI-X", &msix);
    if let (Some(z), Some(i)) = (zones, report("zones, INTx (pci=nomsi)", &intx)) {
        println!("passthrough reads: zones INTx / zones MSI-X {:.2}", i / z);
    }
    for (peer, runs) in qemus.iter().zip(&peer_runs) {
        if let (Some(z), Some(q)) = (zones, report(&peer.label, runs)) {
            println!(
                "passthrough reads: zones MSI-X / {} {:.2}",
                peer.label,
                z / q
            );
        }
    }
}

fn main() {
    if std::env::var("ZONES_LAB").is_err() || std::env::var("LAB_VFIO").as_deref() != Ok("1") {
        println!(
            "passthrough: SKIPPED: needs the lab's passthrough variant (LAB_VFIO=1 lab/test --bench passthrough)"
        );
        return;
    }
    let Some(address) = nvme() else {
        println!("passthrough: SKIPPED: no QEMU nvme in this lab");
        return;
    };
    let work = std::env::temp_dir().join("zones-bench-passthrough");
    let _ = std::fs::create_dir_all(&work);
    let (Some(initrd), Some(bzimage)) = (peers::initramfs(&work), common::host_kernel_path())
    else {
        println!("passthrough: SKIPPED: no busybox initramfs or no kernel in /boot");
        return;
    };
    let bzimage = std::path::PathBuf::from(bzimage);
    if std::env::var("ZONES_BENCH_ONLY").as_deref() != Ok("reads") {
        boots(&address, &bzimage, &initrd);
    }
    reads(&address, &bzimage, &work);
}

/// `build()` to first exec against QEMU's spawn to /init, at two memory sizes.
fn boots(address: &str, bzimage: &std::path::Path, initrd: &std::path::Path) {
    for memory_mib in [256u64, 1024] {
        let label = format!("nvme {address}, {memory_mib} MiB");
        // Warm-up: binds the device to vfio-pci (zones), fills caches, drops a QEMU machine type
        // that cannot boot it.
        if zones_first_exec(address, memory_mib).is_none() {
            println!("passthrough ({label}): zones did not boot; no comparison");
            continue;
        }
        let mut qemus = peers::qemu_passthrough(bzimage, initrd, memory_mib, address);
        peers::keep_booting(&mut qemus, &format!("passthrough ({label})"));
        let (mut zones_runs, mut maps) = (Vec::new(), Vec::new());
        let peer_runs = peers::interleaved(ROUNDS, &label, &qemus, || {
            if let Some((t, map_us)) = zones_first_exec(address, memory_mib) {
                zones_runs.push(t);
                maps.push(Duration::from_micros(map_us));
            }
        });
        if zones_runs.is_empty() {
            println!("passthrough ({label}): zones failed every round");
            continue;
        }
        let z = median(zones_runs.clone());
        let map = median(maps);
        println!(
            "passthrough ({label}): zones, build() -> first exec answered, median of {}: {} ms; DMA map {} ms ({:.0} ms per GiB)",
            zones_runs.len(),
            z.as_millis(),
            map.as_millis(),
            map.as_secs_f64() * 1000.0 * 1024.0 / memory_mib as f64
        );
        for (peer, runs) in qemus.iter().zip(peer_runs) {
            if runs.is_empty() {
                println!("passthrough ({label}): {}: failed every round", peer.label);
                continue;
            }
            let m = median(runs.clone());
            println!(
                "passthrough ({label}): {}, spawn -> /init, median of {}: {} ms; zones/peer {:.2}",
                peer.label,
                runs.len(),
                m.as_millis(),
                z.as_secs_f64() / m.as_secs_f64()
            );
        }
    }
}
