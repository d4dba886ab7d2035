//! PCI passthrough with VFIO: QEMU's nvme in the lab's PCI passthrough variant (a q35 lab VM with
//! an emulated Intel IOMMU, interrupt remapping on) is granted to a Linux zone, whose own nvme
//! driver is the client. Run with `LAB_VFIO=1 lab/test vfio_zone`; elsewhere these print SKIPPED.

mod common;

use std::time::Duration;
use zones::gpu::{Gpu, GpuControl};
use zones::prelude::*;
use zones::{BuildError, Command};

/// QEMU's nvme.
const NVME: (u16, u16) = (0x1b36, 0x0010);
/// Where the guest writes, in bytes from the start of the namespace.
const AT: u64 = 1 << 20;

/// The address of the first device with `id`, when the lab's passthrough variant runs.
fn find(id: (u16, u16)) -> Option<String> {
    if std::env::var("LAB_VFIO").ok().as_deref() != Some("1") {
        common::skipped(format_args!(
            "{}: needs the lab's PCI passthrough variant (LAB_VFIO=1 lab/test vfio_zone)",
            std::thread::current().name().unwrap_or("vfio_zone")
        ));
        return None;
    }
    let read = |p: std::path::PathBuf| {
        let s = std::fs::read_to_string(p).ok()?;
        u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
    };
    let mut found: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .expect("sysfs")
        .filter_map(Result::ok)
        .filter(|e| {
            read(e.path().join("vendor")) == Some(id.0)
                && read(e.path().join("device")) == Some(id.1)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    Some(
        found
            .into_iter()
            .next()
            .expect("the lab's passthrough variant has the device"),
    )
}

fn nvme_zone(gpu: Gpu) -> Result<Zone, BuildError> {
    Zone::builder()
        .memory_mib(256)
        .linux(common::boot().module("nvme"))
        .gpu(gpu)
        .deadline(common::scaled(Duration::from_secs(180)))
        .build()
}

fn sh(zone: &Zone, script: &str) -> String {
    let out = common::run_when_ready(zone, &Command::new("sh").arg("-c").arg(script));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{script}\n{text}\n{}\nconsole:\n{}",
        String::from_utf8_lossy(&out.stderr),
        zone.console_text()
    );
    text
}

/// Waits in the guest for the nvme namespace to appear.
const WAIT_NVME: &str =
    "for i in $(seq 60); do [ -b /dev/nvme0n1 ] && break; sleep 1; done; [ -b /dev/nvme0n1 ]";

#[test]
fn nvme_passes_through_its_driver_binds_with_msix_and_writes_reach_the_disk() {
    let Some(address) = find(NVME) else {
        return;
    };
    let image = std::env::var("LAB_NVME_IMG").expect("lab/test names the nvme's backing file");
    let sysfs = format!("/sys/bus/pci/devices/{address}");
    if std::fs::read_link(format!("{sysfs}/driver")).is_ok_and(|d| d.ends_with("vfio-pci")) {
        std::fs::write(format!("{sysfs}/driver/unbind"), &address).expect("unbind");
    }

    // Not bound to vfio-pci, and not allowed to bind it: refused, with the commands.
    let e = nvme_zone(Gpu::vfio(&address)).expect_err("an unbound device is refused");
    let text = e.to_string();
    assert!(
        text.contains("not vfio-pci")
            && text.contains("driver_override")
            && text.contains("bind_vfio(true)"),
        "{text}"
    );
    // The wrong device expected: refused.
    let e = nvme_zone(
        Gpu::vfio(&address)
            .expect_id(0x10de, 0x2330)
            .bind_vfio(true),
    )
    .expect_err("a different device is refused");
    assert!(e.to_string().contains("not the 10de:2330"), "{e}");

    let token = format!("zones-vfio-{}", std::process::id());
    let z = nvme_zone(
        Gpu::vfio(&address)
            .expect_id(NVME.0, NVME.1)
            .bind_vfio(true),
    )
    .expect("nvme passed through");
    // A second zone cannot have it while the first holds it.
    let e = nvme_zone(Gpu::vfio(&address)).expect_err("in use");
    assert!(e.to_string().contains("passed through to zone"), "{e}");

    let out = sh(
        &z,
        &format!(
            "{WAIT_NVME}; printf '%s' {token} | dd of=/dev/nvme0n1 bs=512 seek={} conv=sync,fsync 2>/dev/null; \
             echo 3 > /proc/sys/vm/drop_caches; \
             dd if=/dev/nvme0n1 bs=512 skip={} count=1 2>/dev/null | head -c {}; echo; \
             grep -c nvme0q /proc/interrupts; grep nvme0q /proc/interrupts | head -3",
            AT / 512,
            AT / 512,
            token.len()
        ),
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(token.as_str()), "{out}");
    let queues: u32 = lines.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(
        queues >= 1,
        "nvme's MSI-X vectors in /proc/interrupts:\n{out}"
    );
    eprintln!(
        "guest /proc/interrupts (nvme):\n{}",
        lines.collect::<Vec<_>>().join("\n")
    );

    // Containment: bus mastering (the device's DMA) off while paused, back on resume.
    let gpu = z.device::<GpuControl>().expect("the gpu control");
    assert!(
        gpu.bus_master(),
        "the guest's driver turned bus mastering on"
    );
    z.pause().unwrap();
    assert!(!gpu.bus_master(), "paused: no DMA");
    z.resume().unwrap();
    assert!(gpu.bus_master(), "resumed");
    let m = z.metrics();
    let counters = m
        .devices
        .iter()
        .find(|d| d.device == "gpu0")
        .expect("gpu0 counters");
    assert_eq!(counters.get("dma_mapped_bytes"), Some(256 << 20));
    assert!(counters.get("bar_reads").unwrap_or(0) > 0, "{counters:?}");
    drop(gpu);
    drop(z);

    // The write reached the backing file of the lab's nvme.
    let disk = std::fs::read(&image).expect("the nvme's backing file");
    let at = AT as usize;
    assert_eq!(&disk[at..at + token.len()], token.as_bytes());

    // The device is clean and passes to the next zone, which reads the data back.
    let z = nvme_zone(Gpu::vfio(&address)).expect("the same device, a second zone");
    let again = sh(
        &z,
        &format!(
            "{WAIT_NVME}; dd if=/dev/nvme0n1 bs=512 skip={} count=1 2>/dev/null | head -c {}",
            AT / 512,
            token.len()
        ),
    );
    assert_eq!(again, token);
}
