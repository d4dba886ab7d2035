//! PCI passthrough, in the lab's passthrough variant (`LAB_VFIO=1 lab/test --bench passthrough`):
//! a Linux zone's `build()` to its first exec answer with QEMU's nvme passed through, against
//! QEMU booting the same kernel and command line with the same device (`-device vfio-pci`), from
//! spawn to a line its `/init` prints; at 256 MiB and 1 GiB of guest memory, a warm-up round and
//! 3 interleaved rounds each; medians and ratios, and zones' DMA-map time per GiB of guest
//! memory (the pinning of guest memory grows with it). Elsewhere it prints SKIPPED.

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
    for memory_mib in [256u64, 1024] {
        let label = format!("nvme {address}, {memory_mib} MiB");
        // Warm-up: binds the device to vfio-pci (zones), fills caches, drops a QEMU machine type
        // that cannot boot it.
        if zones_first_exec(&address, memory_mib).is_none() {
            println!("passthrough ({label}): zones did not boot; no comparison");
            continue;
        }
        let mut qemus = peers::qemu_passthrough(&bzimage, &initrd, memory_mib, &address);
        peers::keep_booting(&mut qemus, &format!("passthrough ({label})"));
        let (mut zones_runs, mut maps) = (Vec::new(), Vec::new());
        let peer_runs = peers::interleaved(ROUNDS, &label, &qemus, || {
            if let Some((t, map_us)) = zones_first_exec(&address, memory_mib) {
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
