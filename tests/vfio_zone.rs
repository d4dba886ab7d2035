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

/// One test at a time per device: a device passes to one zone at a time, and the tests of this
/// file run in parallel.
static DEVICES: [std::sync::Mutex<()>; 2] = [std::sync::Mutex::new(()), std::sync::Mutex::new(())];

/// The device with `id` for this test alone (until the guard drops), when the lab's passthrough
/// variant runs.
fn take(id: (u16, u16)) -> Option<(String, std::sync::MutexGuard<'static, ()>)> {
    let address = find(id)?;
    let lock = &DEVICES[usize::from(id == EDU)];
    Some((address, lock.lock().unwrap_or_else(|e| e.into_inner())))
}

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
    nvme_zone_booting(gpu, common::boot())
}

/// A zone with `gpu`, booting `boot` with the nvme driver.
fn nvme_zone_booting(gpu: Gpu, boot: zones::LinuxBoot) -> Result<Zone, BuildError> {
    Zone::builder()
        .memory_mib(256)
        .linux(boot.module("nvme"))
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

/// A guest script: once the nvme namespace is there, writes `token` at block `block`, drops
/// the page cache, reads the token back (the first line of output), then runs `then`.
fn write_and_read_back(token: &str, block: u64, then: &str) -> String {
    format!(
        "{WAIT_NVME}; printf '%s' {token} | dd of=/dev/nvme0n1 bs=512 seek={block} conv=sync,fsync 2>/dev/null; \
         echo 3 > /proc/sys/vm/drop_caches; \
         dd if=/dev/nvme0n1 bs=512 skip={block} count=1 2>/dev/null | head -c {}; echo; {then}",
        token.len()
    )
}

/// Waits in the guest for the nvme namespace to appear.
const WAIT_NVME: &str =
    "for i in $(seq 60); do [ -b /dev/nvme0n1 ] && break; sleep 1; done; [ -b /dev/nvme0n1 ]";

#[test]
fn nvme_passes_through_its_driver_binds_with_msix_and_writes_reach_the_disk() {
    let Some((address, _device)) = take(NVME) else {
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
    // q35's ICH9 functions share one IOMMU group: a grant of one of them is refused, naming the
    // others.
    let e = nvme_zone(Gpu::vfio("0000:00:1f.2")).expect_err("a shared group is refused");
    assert!(
        e.to_string().contains("shares IOMMU group") && e.to_string().contains("0000:00:1f.0"),
        "{e}"
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
        &write_and_read_back(
            &token,
            AT / 512,
            "grep -c nvme0q /proc/interrupts; grep nvme0q /proc/interrupts | head -3",
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

    // The guest sees a PCI Express device (its own capability, through VFIO): the PCIe link
    // attributes exist only for such devices.
    let link = sh(
        &z,
        "cat /sys/bus/pci/devices/0000:00:01.0/current_link_speed",
    );
    eprintln!("guest: the nvme's link speed: {link}");

    // The device's own capabilities reach the guest through VFIO, in the device's list, the
    // emulated MSI-X in its place; a write to the PCI Express device control 2 register (its
    // TLP-prefix blocking bit flipped, a bit VFIO passes and QEMU's nvme keeps) reaches the
    // device.
    let caps = sh(
        &z,
        r#"d=/sys/bus/pci/devices/0000:00:01.0
b() { od -An -tu1 -j$1 -N1 $d/config | tr -d ' '; }
c=$(b 52); ids=""; pcie=0
for i in $(seq 48); do [ "$c" = 0 ] && break; id=$(printf '%02x' $(b $c)); ids="$ids $id"; [ $id = 10 ] && pcie=$c; c=$(( $(b $((c + 1))) & 252 )); done
echo caps$ids
echo pcie $pcie
o=$((pcie + 41)); v=$(b $o)
printf "\\$(printf '%03o' $(( v ^ 128 )))" | dd of=$d/config bs=1 count=1 seek=$o conv=notrunc 2>/dev/null
echo devctl2 $v $(b $o)"#,
    );
    eprintln!("guest: {caps}");
    let field = |name: &str| {
        caps.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let ids = field("caps ");
    assert!(
        ids.split(' ').any(|id| id == "10") && ids.split(' ').any(|id| id == "11"),
        "PCIe and MSI-X in the guest's list: {caps}"
    );
    let pcie: usize = field("pcie ").parse().unwrap_or(0);
    let devctl: Vec<u8> = field("devctl2 ")
        .split(' ')
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(
        pcie >= 0x40 && devctl.len() == 2 && devctl[1] == devctl[0] ^ 0x80,
        "the guest's device control write: {caps}"
    );
    let host = std::fs::read(format!("/sys/bus/pci/devices/{address}/config")).expect("config");
    assert_eq!(
        host.get(pcie + 41).copied(),
        Some(devctl[1]),
        "the device's own device control 2 register (the lab's view)"
    );

    // The guest's driver lets go of the device (MSI-X off): its INTx is routed again; it binds
    // again (MSI-X on): INTx is off in VFIO again, and the driver reads the token back.
    let gpu = z.device::<GpuControl>().expect("the gpu control");
    assert_eq!(
        gpu.intx_interrupts().ok(),
        Some(None),
        "INTx off while MSI-X is on"
    );
    sh(&z, "echo 0000:00:01.0 > /sys/bus/pci/drivers/nvme/unbind");
    let unbound = gpu.intx_interrupts().expect("/proc/interrupts");
    sh(&z, "echo 0000:00:01.0 > /sys/bus/pci/drivers/nvme/bind");
    let again = sh(
        &z,
        &format!(
            "{WAIT_NVME}; dd if=/dev/nvme0n1 bs=512 skip={} count=1 iflag=direct 2>/dev/null | head -c {}",
            AT / 512,
            token.len()
        ),
    );
    assert!(unbound.is_some(), "INTx routed again once MSI-X was off");
    assert_eq!(again, token, "the driver bound again");
    assert_eq!(gpu.intx_interrupts().ok(), Some(None), "INTx off again");

    // The device's group is registered with the zone's KVM VFIO device (KVM learns whether the
    // device's DMA snoops the CPU's caches), as QEMU and Cloud Hypervisor do.
    let kvm_vfio = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|l| l.to_string_lossy().contains("kvm-vfio"))
        .count();
    assert!(kvm_vfio >= 1, "no KVM VFIO device open");

    // Containment: bus mastering (the device's DMA) off while paused, back on resume.
    assert!(
        gpu.bus_master(),
        "the guest's driver turned bus mastering on"
    );
    // The host counted the interrupts of the vectors the guest's driver enabled.
    let per_vector = gpu.interrupts().expect("/proc/interrupts");
    eprintln!("host: the nvme's interrupts per vector: {per_vector:?}");
    assert!(
        per_vector.iter().any(|&(_, n)| n > 0),
        "host counts of the nvme's vectors: {per_vector:?}"
    );
    // The lab's IOMMU reports its usable I/O addresses: guest RAM (checked against them) is
    // inside, the x86 MSI window is not.
    let ranges = gpu
        .iova_ranges()
        .expect("IOVA ranges from VFIO_IOMMU_GET_INFO");
    eprintln!("host: usable IOVA ranges: {ranges:x?}");
    assert!(
        ranges.iter().any(|&(s, e)| s == 0 && e >= (256 << 20) - 1),
        "{ranges:x?}"
    );
    assert!(
        !ranges.iter().any(|&(s, e)| (s..=e).contains(&0xfee0_0000)),
        "{ranges:x?}"
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
    // BAR 0 (16 KiB) is mapped into the guest but for the MSI-X table's and PBA's pages, which
    // stay trapped (the guest programs the table: reads and writes come to zones).
    assert_eq!(
        counters.get("bar_bytes_direct"),
        Some(0x2000),
        "{counters:?}"
    );
    assert!(counters.get("bar_writes").unwrap_or(0) > 0, "{counters:?}");
    eprintln!("nvme counters: {:?}", counters.counters);
    // A handle and the device's control that outlive the zone do not keep the device: the
    // zone's drop releases it, and the next grant below succeeds while both still live.
    let lingering = z.handle();
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
    // The first zone's control stayed readable and reports its device released.
    assert!(!gpu.bus_master(), "the first zone's device was released");
    assert_eq!(gpu.address(), address);
    assert!(
        lingering
            .metrics()
            .devices
            .iter()
            .any(|d| d.device == "gpu0")
    );
    drop((gpu, lingering));
}

/// QEMU's edu.
const EDU: (u16, u16) = (0x1234, 0x11e8);
/// Guest RAM the guest kernel leaves alone (`memmap=1M$0x6000000`), for the DMA buffers.
const BUFFER: u64 = 0x600_0000;
/// An address outside the zone's 128 MiB (and below edu's 28-bit DMA mask): not mapped.
const OUTSIDE: u64 = 0xc00_0000;
/// The vector the guest programs into edu's MSI.
const MSI_VECTOR: u32 = 0xde;

/// A zone that edu passes to, booting `boot`.
fn edu_zone(address: &str, boot: zones::LinuxBoot) -> Zone {
    Zone::builder()
        .memory_mib(128)
        .linux(boot)
        .gpu(Gpu::vfio(address).expect_id(EDU.0, EDU.1).bind_vfio(true))
        .deadline(common::scaled(Duration::from_secs(240)))
        .build()
        .expect("edu passed through")
}

/// The start of a guest script that drives edu by hand: `r OFFSET [BITS]` reads its BAR,
/// `w OFFSET VALUE [BITS]` writes it (through `/dev/mem`).
const EDU_SH: &str = r#"d=/sys/bus/pci/devices/0000:00:01.0
b=$(head -1 $d/resource | cut -d' ' -f1)
r() { busybox devmem $(( b + $1 )) ${2:-32}; }
w() { busybox devmem $(( b + $1 )) ${3:-32} $2; }
"#;

#[test]
fn edu_computes_its_dma_reaches_guest_memory_but_nothing_outside_it_and_its_msi_arrives() {
    let Some((address, _device)) = take(EDU) else {
        return;
    };
    let z = edu_zone(&address, common::boot().cmdline("memmap=1M$0x6000000"));
    let events = z.events();
    // The guest has no driver for edu: it drives it by hand through /dev/mem, with memory
    // decoding and bus mastering turned on in its command register. Each edu transfer waits for
    // a 100 ms timer; the script polls the command register until the transfer is done.
    let script = format!(
        r#"{EDU_SH}printf '\006' | dd of=$d/config bs=1 seek=4 conv=notrunc 2>/dev/null
dma() {{ w 0x80 $1 64; w 0x88 $2 64; w 0x90 8 64; w 0x98 $3 64
  for i in $(seq 100); do [ $(( $(r 0x98 64) & 1 )) = 0 ] && return; sleep 0.1; done; echo stuck; }}
echo id $(r 0)
w 8 5; for i in $(seq 100); do [ $(( $(r 0x20) & 1 )) = 0 ] && break; sleep 0.05; done
echo fact $(( $(r 8) ))
busybox devmem {BUFFER} 64 0x1122334455667788
dma {BUFFER} 0x40000 1
dma 0x40000 $(( {BUFFER} + 256 )) 3
echo back $(busybox devmem $(( {BUFFER} + 256 )) 64)
busybox devmem $(( {BUFFER} + 768 )) 64 0
dma $(( {BUFFER} + 768 )) 0x40000 1
dma {OUTSIDE} 0x40000 1
dma 0x40000 $(( {BUFFER} + 512 )) 3
echo outside $(busybox devmem $(( {BUFFER} + 512 )) 64)
c=$(od -An -tu1 -j52 -N1 $d/config | tr -d ' ')
echo cap $(od -An -tx1 -j$c -N1 $d/config | tr -d ' ')
printf '\000\000\340\376' | dd of=$d/config bs=4 seek=$(( (c + 4) / 4 )) conv=notrunc 2>/dev/null
printf '\000\000\000\000' | dd of=$d/config bs=4 seek=$(( (c + 8) / 4 )) conv=notrunc 2>/dev/null
printf '\{MSI_VECTOR:o}\000' | dd of=$d/config bs=2 seek=$(( (c + 12) / 2 )) conv=notrunc 2>/dev/null
printf '\001' | dd of=$d/config bs=1 seek=$(( c + 2 )) conv=notrunc 2>/dev/null
w 0x60 1
for i in $(seq 50); do busybox dmesg | grep -q 'No irq handler for vector' && break; sleep 0.1; done
busybox dmesg | grep 'No irq handler for vector' || echo 'no interrupt'
printf '\000\000' | dd of=$d/config bs=2 seek=0 conv=notrunc 2>/dev/null
printf '\000\000' | dd of=$d/config bs=2 seek=0 conv=notrunc 2>/dev/null
"#
    );
    let out = sh(&z, &script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"id 0x010000ED"), "{out}");
    assert!(lines.contains(&"fact 120"), "{out}");
    assert!(
        lines.contains(&"back 0x1122334455667788"),
        "a DMA round trip through edu:\n{out}"
    );
    assert!(!out.contains("stuck"), "{out}");
    let outside = lines
        .iter()
        .find(|l| l.starts_with("outside "))
        .copied()
        .unwrap_or("");
    assert_ne!(outside, "outside 0x1122334455667788", "{out}");
    // The lab's IOMMU refused the read at the unmapped address (its kernel logs the fault).
    let log = std::process::Command::new("dmesg").output().expect("dmesg");
    let log = String::from_utf8_lossy(&log.stdout);
    let fault = log
        .lines()
        .filter(|l| l.contains("DMAR") && l.to_ascii_lowercase().contains(&format!("{OUTSIDE:x}")))
        .collect::<Vec<_>>();
    eprintln!(
        "the lab's IOMMU on the DMA outside guest memory:\n{}",
        fault.join("\n")
    );
    assert!(
        !fault.is_empty(),
        "no IOMMU fault for {OUTSIDE:#x}; DMAR lines:\n{}",
        log.lines()
            .filter(|l| l.contains("DMAR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let m = z.metrics();
    let gpu = m.devices.iter().find(|d| d.device == "gpu0").expect("gpu0");
    assert_eq!(gpu.get("resettable"), Some(0), "edu has no reset");
    assert_eq!(
        gpu.get("bar_bytes_direct"),
        Some(1 << 20),
        "edu's BAR mapped whole"
    );
    eprintln!("edu counters: {:?}", gpu.counters);
    // The guest's two writes to edu's vendor ID were refused and reported once.
    let refused: Vec<String> = events
        .drain()
        .into_iter()
        .filter_map(|e| match e {
            ZoneEvent::Violation(v) if v.control == "pci-config" => Some(v.detail),
            _ => None,
        })
        .collect();
    eprintln!("pci-config violations: {refused:#?}");
    assert_eq!(
        refused
            .iter()
            .filter(|d| d.contains("configuration offset 0x0,"))
            .count(),
        1,
        "{refused:#?}"
    );
    // The guest kernel's sizing of the BARs edu does not have is counted, not reported.
    assert!(
        !refused.iter().any(|d| d.contains("offset 0x14,")),
        "{refused:#?}"
    );
    assert!(
        gpu.get("config_writes_refused").unwrap_or(0) >= 2,
        "{:?}",
        gpu.counters
    );
}

/// Guest RAM for the DMA loop's slots (inside the guest kernel's reserved megabyte).
const LOOP_SLOTS: u64 = BUFFER + 0x1000;
/// What edu's buffer holds during the loop: each transfer copies it into a fresh slot.
const LOOP_PATTERN: &str = "0x55AA55AA12345678";
/// Transfers of the loop, and the ones the host pauses the zone on.
const LOOP_ROUNDS: u32 = 9;
const PAUSED_ON: [u32; 3] = [3, 5, 7];

/// edu keeps doing DMA from its buffer into guest RAM, one transfer after the other. The host
/// pauses the zone right after the guest started some of them: edu's transfer, which lands
/// 100 ms after it starts, finds bus mastering off and writes nothing. After resume the loop
/// goes on and its transfers land again.
///
/// How the host knows a transfer started: right after starting it, the guest writes edu's
/// vendor ID, a write zones traps and refuses (one more in `config_writes_refused`). A console
/// line is too slow for this: the serial port takes an interrupt a character.
#[test]
fn pause_stops_an_ongoing_dma_loop_and_resume_continues_it() {
    let Some((address, _device)) = take(EDU) else {
        return;
    };
    let z = edu_zone(&address, common::boot().cmdline("memmap=1M$0x6000000"));
    let gpu = z.device::<GpuControl>().expect("the gpu control");
    let script = format!(
        r#"{EDU_SH}printf '\006' | dd of=$d/config bs=1 seek=4 conv=notrunc 2>/dev/null
start() {{ w 0x80 $1 64; w 0x88 $2 64; w 0x90 8 64; w 0x98 $3 64; }}
finish() {{ for i in $(seq 200); do [ $(( $(r 0x98 64) & 1 )) = 0 ] && return; sleep 0.05; done; echo stuck; }}
busybox devmem {BUFFER} 64 {LOOP_PATTERN}
start {BUFFER} 0x40000 1; finish
for n in $(seq {LOOP_ROUNDS}); do
  slot=$(( {LOOP_SLOTS} + 8 * n ))
  busybox devmem $slot 64 0
  start 0x40000 $slot 3
  printf '\000\000' | dd of=$d/config bs=2 seek=0 conv=notrunc 2>/dev/null
  finish
  echo "round $n $(busybox devmem $slot 64)"
done
"#
    );
    let refused = || {
        let m = z.metrics();
        let gpu = m.devices.iter().find(|d| d.device == "gpu0");
        gpu.and_then(|g| g.get("config_writes_refused"))
            .unwrap_or(0)
    };
    if let Err(e) = z.wait_ready(common::scaled(Duration::from_secs(120))) {
        panic!("{e}\n{}", z.console_text());
    }
    // The guest kernel's BAR sizing is over: from here, one refused write a started transfer.
    let base = refused();
    let (out, paused) = std::thread::scope(|s| {
        let guest = s.spawn(|| sh(&z, &script));
        let mut paused = Vec::new();
        for n in PAUSED_ON {
            let t = std::time::Instant::now();
            while refused() < base + u64::from(n) && !guest.is_finished() {
                assert!(
                    t.elapsed() < common::scaled(Duration::from_secs(180)),
                    "round {n} did not start:\n{}",
                    z.console_text()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let seen = std::time::Instant::now();
            z.pause().unwrap();
            let took = seen.elapsed();
            assert!(!gpu.bus_master(), "paused: bus mastering off");
            // edu's transfer fires 100 ms after its start: long past while paused.
            std::thread::sleep(Duration::from_secs(1));
            z.resume().unwrap();
            assert!(gpu.bus_master(), "resumed: bus mastering on");
            paused.push((n, took));
        }
        (guest.join().expect("the guest's loop"), paused)
    });
    eprintln!("paused on (round, started to paused): {paused:?}\n{out}");
    assert!(!out.contains("stuck"), "{out}");
    let rounds: Vec<(u32, bool)> = out
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("round ")?.split_whitespace();
            let n = w.next()?.parse().ok()?;
            let value = w.next()?;
            Some((n, value.eq_ignore_ascii_case(LOOP_PATTERN)))
        })
        .collect();
    assert_eq!(rounds.len(), LOOP_ROUNDS as usize, "{out}");
    // Every transfer the host did not pause on landed: the loop ran on after each resume.
    for &(n, landed) in &rounds {
        if !PAUSED_ON.contains(&n) {
            assert!(landed, "round {n} (not paused) lost its transfer:\n{out}");
        }
    }
    // The host pauses within milliseconds of the guest's signal: the transfer was still in flight
    // (100 ms) on at least one of the paused rounds, and it wrote nothing.
    let lost: Vec<u32> = rounds.iter().filter(|r| !r.1).map(|r| r.0).collect();
    assert!(
        !lost.is_empty(),
        "every transfer landed although the zone was paused while it was in flight:\n{out}"
    );
    eprintln!("transfers lost to the pause: rounds {lost:?} of {PAUSED_ON:?}");
}

/// edu's INTx, for a guest that does not enable its MSI: the guest's own `uio_pci_generic`
/// binds edu (it needs an interrupt line from the DSDT's `_PRT` and the INTx-disable bit
/// working), and each interrupt edu raises reaches the guest's handler, which reads edu's own
/// interrupt status bit and masks the line with the INTx-disable bit. The second interrupt
/// arrives only if the user-space unmask (the command register, as the UIO how-to does it)
/// reaches VFIO.
#[test]
fn edu_intx_reaches_the_guests_own_driver_twice() {
    let Some((address, _device)) = take(EDU) else {
        return;
    };
    let z = edu_zone(&address, common::boot().module("uio_pci_generic"));
    let script = format!(
        r#"{EDU_SH}echo pin $(od -An -tu1 -j61 -N1 $d/config | tr -d ' ')
echo '1234 11e8' > /sys/bus/pci/drivers/uio_pci_generic/new_id
for i in $(seq 100); do [ -e /dev/uio0 ] && break; sleep 0.1; done
ls -l $d/driver | sed 's/.*\///'
for n in 1 2; do
  dd if=/dev/uio0 bs=4 count=1 of=/tmp/ev$n 2>/dev/null &
  sleep 0.3
  w 0x60 1
  for i in $(seq 100); do [ -s /tmp/ev$n ] && break; sleep 0.1; done
  echo "event $n $(od -An -tu4 /tmp/ev$n 2>/dev/null | tr -d ' ')"
  echo "status $(od -An -tx1 -j6 -N1 $d/config | tr -d ' ') command $(od -An -tx1 -j5 -N1 $d/config | tr -d ' ')"
  w 0x64 1
  echo "status $(od -An -tx1 -j6 -N1 $d/config | tr -d ' ') after the ack"
  printf '\000' | dd of=$d/config bs=1 seek=5 conv=notrunc 2>/dev/null
done
grep uio_pci_generic /proc/interrupts
"#
    );
    let out = sh(&z, &script);
    let gpu = z.device::<GpuControl>().expect("the gpu control");
    let host = gpu.intx_interrupts().expect("/proc/interrupts");
    eprintln!("guest:\n{out}\nhost: INTx interrupts {host:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"pin 1"), "edu shows INTA#:\n{out}");
    assert!(lines.contains(&"uio_pci_generic"), "bound:\n{out}");
    assert!(lines.contains(&"event 1 1"), "the first interrupt:\n{out}");
    // In the handler: edu's interrupt status (0x08) seen live, the line masked (INTx disable).
    assert!(lines.contains(&"status 18 command 04"), "{out}");
    assert!(lines.contains(&"status 10 after the ack"), "{out}");
    assert!(
        lines.contains(&"event 2 2"),
        "the second interrupt (the line was unmasked):\n{out}\nconsole:\n{}",
        z.console_text()
    );
    assert_eq!(host, Some(2), "the host's count of edu's INTx");
}

/// nvme on INTx: the guest kernel runs with `pci=nomsi`, so its nvme driver takes the device's
/// INTx line for every queue. The driver acknowledges each interrupt at the device, never through
/// the INTx-disable bit: every interrupt after the first reaches the guest only because KVM's
/// resampler tells VFIO to unmask the line at the guest's end of interrupt.
#[test]
fn nvme_works_on_intx_alone() {
    let Some((address, _device)) = take(NVME) else {
        return;
    };
    let z = nvme_zone_booting(
        Gpu::vfio(&address)
            .expect_id(NVME.0, NVME.1)
            .bind_vfio(true),
        common::boot().cmdline("pci=nomsi"),
    )
    .expect("nvme passed through");
    let token = format!("zones-intx-{}", std::process::id());
    let out = sh(
        &z,
        &write_and_read_back(&token, AT / 512 + 8, "grep nvme /proc/interrupts"),
    );
    let gpu = z.device::<GpuControl>().expect("the gpu control");
    let count = gpu.intx_interrupts().expect("/proc/interrupts");
    eprintln!("guest:\n{out}\nhost: INTx interrupts {count:?}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(token.as_str()), "{out}");
    let guest = lines.collect::<Vec<_>>().join("\n");
    assert!(
        guest.contains("IO-APIC") && !guest.contains("MSI"),
        "the guest's nvme on its INTx line:\n{guest}"
    );
    assert!(
        count.is_some_and(|n| n > 1),
        "the host took more than one INTx of the nvme: {count:?}"
    );
}
