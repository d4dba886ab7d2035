//! PCI in Linux zones: a function granted through the device API appears on the guest's PCI bus
//! (ECAM described by MCFG, the host bridge's windows by the DSDT) at the BAR addresses zones
//! placed; the guest reads and writes its BARs; an MSI-X vector the guest programs is delivered
//! by KVM's routing. A zone without a PCI grant has no PCI bus. The guest kernel's own PCI core
//! is the client; these run in the lab (`lab/test pci_zone`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use zones::Command;
use zones::device::pci::{
    Bar, BarKind, ConfigChange, ConfigSpace, Header, MSIX_CAPABILITY_ID, Msix, PciFunction,
    RoutedMsix,
};
use zones::device::{AttachContext, AttachError, Attached, Attachment, Transport};
use zones::prelude::*;

const MAGIC0: u32 = 0x5a0e_0001;
const MAGIC2: u32 = 0x5a0e_0064;
const TABLE: u64 = 0x800;
const PBA: u64 = 0xc00;
/// Writing a vector number here raises it.
const DOORBELL: u64 = 0x10;
const SCRATCH: u64 = 0x8;
/// The vector the guest script programs (no Linux driver owns it: the guest reports it as
/// "No irq handler for vector").
const GUEST_VECTOR: u32 = 0xdf;

/// What the host saw of the function.
#[derive(Default)]
struct Seen {
    bar_writes: Vec<(usize, u64, Vec<u8>)>,
    msix_capability: u16,
}

/// A test function: BAR 0 (4 KiB, 32-bit) with a magic word, a scratch register, a doorbell
/// and the MSI-X table and PBA; BAR 2 (1 MiB, 64-bit prefetchable) with another magic word.
struct Probe {
    config: ConfigSpace,
    msix: RoutedMsix,
    msix_cap: u16,
    scratch: u32,
    seen: Arc<Mutex<Seen>>,
}

impl PciFunction for Probe {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Option<ConfigChange> {
        let change = self.config.write_bytes(offset, data);
        if let Some(ConfigChange::Capability { capability, id }) = change
            && id == MSIX_CAPABILITY_ID
            && capability == self.msix_cap
        {
            self.msix
                .control_written(&self.config, capability)
                .expect("KVM routes the vector");
        }
        change
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let word = match (bar, offset) {
            (0, 0) => MAGIC0,
            (0, SCRATCH) => self.scratch,
            (0, o) if (TABLE..TABLE + 16).contains(&o) => {
                return self.msix.read_table(o - TABLE, data);
            }
            (0, o) if (PBA..PBA + 8).contains(&o) => return self.msix.read_pba(o - PBA, data),
            (2, 0) => MAGIC2,
            _ => 0,
        };
        let n = data.len().min(4);
        data[..n].copy_from_slice(&word.to_le_bytes()[..n]);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .bar_writes
            .push((bar, offset, data.to_vec()));
        let mut bytes = [0u8; 4];
        bytes[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        let word = u32::from_le_bytes(bytes);
        match (bar, offset) {
            (0, SCRATCH) => self.scratch = word,
            (0, DOORBELL) => self.msix.raise(word as u16),
            (0, o) if (TABLE..TABLE + 16).contains(&o) => {
                self.msix
                    .write_table(o - TABLE, data)
                    .expect("KVM routes the vector");
            }
            _ => {}
        }
    }
}

struct ProbeAttachment(Arc<Mutex<Seen>>);

impl Attachment for ProbeAttachment {
    fn kind(&self) -> &'static str {
        "probe"
    }

    fn transport(&self) -> Transport {
        Transport::Pci
    }

    fn attach(self: Box<Self>, cx: &AttachContext) -> Result<Attached, AttachError> {
        let mut config = ConfigSpace::new(&Header {
            vendor_id: 0x1b36,
            device_id: 0x0005,
            class: 0x00_ff_00,
            ..Header::default()
        });
        let pci = |e: zones::device::pci::PciError| AttachError::new(e);
        config
            .add_bar(
                0,
                Bar {
                    kind: BarKind::Memory32 {
                        prefetchable: false,
                    },
                    size: 0x1000,
                },
            )
            .map_err(pci)?;
        config
            .add_bar(
                2,
                Bar {
                    kind: BarKind::Memory64 { prefetchable: true },
                    size: 1 << 20,
                },
            )
            .map_err(pci)?;
        let msix = Msix::new(1).map_err(pci)?;
        let (body, mask) = msix
            .capability((0, TABLE as u32), (0, PBA as u32))
            .map_err(pci)?;
        let msix_cap = config
            .add_capability(MSIX_CAPABILITY_ID, &body, &mask)
            .map_err(pci)?;
        let msix = RoutedMsix::new(msix, cx).map_err(AttachError::new)?;
        self.0.lock().unwrap().msix_capability = msix_cap;
        Ok(Attached::pci(Box::new(Probe {
            config,
            msix,
            msix_cap,
            scratch: 0,
            seen: self.0,
        })))
    }
}

fn zone(builder: zones::ZoneBuilder) -> Zone {
    builder
        .memory_mib(256)
        .linux(common::boot().cmdline("zones.test=pci"))
        .deadline(common::scaled(Duration::from_secs(120)))
        .build()
        .expect("Linux zone")
}

fn sh(zone: &Zone, script: &str) -> String {
    let out = common::run_when_ready(zone, &Command::new("sh").arg("-c").arg(script));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{script}\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_guest_enumerates_a_granted_function_uses_its_bars_and_gets_its_msix_vector() {
    require_linux!();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let z = zone(Zone::builder().attach(ProbeAttachment(seen.clone())));
    let d = "/sys/bus/pci/devices/0000:00:01.0";
    let ids = sh(
        &z,
        &format!("cat {d}/vendor {d}/device {d}/class; ls /sys/bus/pci/devices | wc -l"),
    );
    assert_eq!(
        ids.split_whitespace().collect::<Vec<_>>(),
        ["0x1b36", "0x0005", "0x00ff00", "2"],
        "the host bridge and the probe, nothing else\nconsole:\n{}",
        z.console_text()
    );
    let mmconfig = sh(&z, "busybox dmesg | grep -i mmconfig || true");
    eprintln!("guest on ECAM: {mmconfig}");
    // Linux kept the addresses zones placed (32-bit window at 3 GiB, 64-bit above RAM at 4 GiB).
    let resources = sh(&z, &format!("head -3 {d}/resource"));
    let starts: Vec<&str> = resources
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(
        starts,
        [
            "0x00000000c0000000",
            "0x0000000000000000",
            "0x0000000100000000"
        ],
        "{resources}"
    );

    // Memory decoding on (no driver binds; the sysfs switch does what a driver's
    // pci_enable_device does), then the BARs through /dev/mem.
    let bars = sh(
        &z,
        &format!(
            "echo 1 > {d}/enable; busybox devmem 0xc0000000 32; busybox devmem 0x100000000 32; \
             busybox devmem 0xc0000008 32 0x1234abcd; busybox devmem 0xc0000008 32"
        ),
    );
    assert_eq!(
        bars.split_whitespace().collect::<Vec<_>>(),
        [
            format!("0x{MAGIC0:08X}"),
            format!("0x{MAGIC2:08X}"),
            "0x1234ABCD".to_string()
        ]
    );
    assert!(
        seen.lock().unwrap().bar_writes.contains(&(
            0,
            SCRATCH,
            0x1234_abcdu32.to_le_bytes().to_vec()
        )),
        "the guest's write reached the function"
    );

    // MSI-X by hand: entry 0 to the boot CPU's LAPIC with vector GUEST_VECTOR, unmasked; MSI-X
    // enabled through configuration space; then the doorbell. No driver owns the vector, so
    // the guest kernel reports it: proof that KVM delivered the message the guest wrote.
    // The message control's high byte.
    let cap = seen.lock().unwrap().msix_capability + 3;
    let msi = sh(
        &z,
        &format!(
            "t=$((0xc0000000 + {TABLE})); busybox devmem $t 32 0xfee00000; \
             busybox devmem $((t + 4)) 32 0; busybox devmem $((t + 8)) 32 {GUEST_VECTOR}; \
             busybox devmem $((t + 12)) 32 0; \
             printf '\\200' | dd of={d}/config bs=1 seek={cap} conv=notrunc 2>/dev/null; \
             busybox devmem $((0xc0000000 + {DOORBELL})) 32 0; \
             for i in 1 2 3 4 5 6 7 8 9 10; do \
               busybox dmesg | grep -q 'No irq handler for vector' && break; sleep 1; \
             done; busybox dmesg | grep 'No irq handler for vector' || echo none"
        ),
    );
    assert!(
        msi.contains(&format!(".{GUEST_VECTOR} No irq handler for vector")),
        "{msi}\nconsole:\n{}",
        z.console_text()
    );
}

#[test]
fn a_zone_without_a_pci_grant_has_no_pci_bus() {
    require_linux!();
    let z = zone(Zone::builder());
    let out = sh(
        &z,
        "ls /sys/bus/pci/devices 2>/dev/null | wc -l; grep -o 'pci=off' /proc/cmdline",
    );
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "pci=off"]);
}
