//! ACPI tables for a Linux zone: RSDP, XSDT, a hardware-reduced FADT, MADT and a DSDT that
//! describes the serial port and every virtio-mmio device; with a PCI bus, also an MCFG table
//! (the ECAM window) and the host bridge in the DSDT (its bus range and BAR windows), with the
//! ECAM window reserved as a motherboard resource (Linux uses ECAM only where it is). Hardware-reduced ACPI tells Linux there
//! is no PIT, PIC or SMI to look for; reset and S5 power-off go through one I/O register that the
//! VMM turns into the end of the zone.

use super::layout;
use acpi_tables::Aml;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;

const OEM_ID: [u8; 6] = *b"ZONES ";
const OEM_TABLE_ID: [u8; 8] = *b"ZONEVMM ";

/// Value written to the reset register to reboot (the zone ends instead).
pub(crate) const RESET_VALUE: u8 = 1;
/// SLP_TYP the DSDT's `_S5` object gives for power-off.
pub(crate) const S5_SLP_TYP: u8 = 5;

/// A virtio-mmio device to describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MmioDevice {
    /// Guest-physical base of its register window.
    pub(crate) base: u64,
    /// Window size.
    pub(crate) size: u64,
    /// Its interrupt (an IOAPIC pin).
    pub(crate) gsi: u32,
}

/// A PCI bus to describe: its 32-bit and 64-bit BAR windows (the ECAM window is fixed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PciRoot {
    pub(crate) low: std::ops::Range<u64>,
    pub(crate) high: std::ops::Range<u64>,
}

/// Why the tables could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// Too much to describe for the ACPI area.
    #[error("ACPI tables need {needed} bytes; the area holds {room}")]
    TooLarge {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        room: usize,
    },
    /// More devices than four-character ACPI names (`VR00`-`VRFF`) allow.
    #[error("{0} virtio devices; at most 256 can be described")]
    TooManyDevices(usize),
    /// Too many vCPUs for 8-bit APIC ids.
    #[error("{0} vCPUs do not fit 8-bit APIC ids")]
    TooManyVcpus(u32),
}

struct Sink(Vec<u8>);

impl acpi_tables::AmlSink for Sink {
    fn byte(&mut self, byte: u8) {
        self.0.push(byte);
    }
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut sink = Sink(Vec::new());
    table.to_aml_bytes(&mut sink);
    sink.0
}

/// One device of the DSDT: `Device(<name>) { _HID, _UID, _CRS }`.
fn device(name: &str, hid: &dyn Aml, uid: u32, resources: &[&dyn Aml]) -> Vec<u8> {
    let crs = aml::ResourceTemplate::new(resources.to_vec());
    let hid = aml::Name::new("_HID".into(), hid);
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    bytes(&aml::Device::new(name.into(), vec![&hid, &uid, &crs]))
}

/// Pre-serialized AML.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// The host bridge (`PCI0`: bus 0, its BAR windows) and the motherboard device (`MBRD`) that
/// reserves the ECAM window.
fn pci_devices(pci: &PciRoot) -> [Vec<u8>; 2] {
    use aml::{AddressSpace, AddressSpaceCacheable};
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let low = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.low.start as u32,
        (pci.low.end - 1) as u32,
        None,
    );
    // Not marked prefetchable: Linux claims a 64-bit BAR only in a window of its kind, and a
    // non-prefetchable window takes both kinds (an nvme's 64-bit BAR 0 is not prefetchable).
    let high = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.high.start,
        pci.high.end - 1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &low, &high]);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let prt = aml::Name::new("_PRT".into(), &routing());
    let root = bytes(&aml::Device::new(
        "PCI0".into(),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs, &prt],
    ));
    let ecam = aml::Memory32Fixed::new(true, layout::PCI_ECAM as u32, layout::PCI_ECAM_SIZE as u32);
    let mbrd = device("MBRD", &aml::EISAName::new("PNP0C02"), 0, &[&ecam]);
    [root, mbrd]
}

/// The `_PRT` of bus 0: pin `p` (0 INTA# .. 3 INTD#) of every slot to its IOAPIC pin, no link
/// devices (`Package { slot << 16 | 0xffff, p, Zero, gsi }`).
fn routing() -> aml::PackageBuilder {
    let mut prt = aml::PackageBuilder::new();
    for slot in 1..=super::pci::MAX_FUNCTIONS as u8 {
        for pin in 0..4u8 {
            let address = (u32::from(slot) << 16) | 0xffff;
            let gsi = layout::pci_intx_gsi(slot, pin + 1);
            prt.add_element(&aml::Package::new(vec![&address, &pin, &aml::ZERO, &gsi]));
        }
    }
    prt
}

fn mcfg() -> Vec<u8> {
    let mut m = acpi_tables::mcfg::MCFG::new(OEM_ID, OEM_TABLE_ID, 1);
    m.add_ecam(layout::PCI_ECAM, 0, 0, 0);
    bytes(&m)
}

fn dsdt(devices: &[MmioDevice], pci: Option<&PciRoot>) -> Vec<u8> {
    let com1_io = aml::IO::new(layout::SERIAL_PORT, layout::SERIAL_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, layout::SERIAL_GSI);
    let mut children = vec![Raw(device(
        "COM1",
        &aml::EISAName::new("PNP0501"),
        0,
        &[&com1_io, &com1_irq],
    ))];
    for (i, d) in devices.iter().enumerate() {
        let window = aml::Memory32Fixed::new(true, d.base as u32, d.size as u32);
        let irq = aml::Interrupt::new(true, true, false, false, d.gsi);
        let name = format!("VR{i:02X}");
        children.push(Raw(device(&name, &"LNRO0005", i as u32, &[&window, &irq])));
    }
    if let Some(pci) = pci {
        children.extend(pci_devices(pci).map(Raw));
    }
    let sb = aml::Scope::new(
        "_SB_".into(),
        children.iter().map(|c| c as &dyn Aml).collect(),
    );
    let s5_typ = S5_SLP_TYP;
    let package = aml::Package::new(vec![&s5_typ, &aml::ZERO]);
    let s5 = aml::Name::new("_S5_".into(), &package);
    let mut body = bytes(&sb);
    body.extend(bytes(&s5));
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, 1);
    table.append_slice(&body);
    table.update_checksum();
    table.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let pm = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(layout::ACPI_PM_PORT),
    );
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.reset_reg = pm;
    f.reset_value = RESET_VALUE;
    f.sleep_control_reg = pm;
    f.sleep_status_reg = pm;
    // IA-PC boot architecture: no VGA (bit 2), no CMOS RTC (bit 5; the guest's clock is
    // kvmclock). No legacy devices and no 8042 (bits 0 and 1 clear).
    f.iapc_boot_arch = ((1u16 << 2) | (1 << 5)).into();
    bytes(&f.finalize())
}

fn madt(vcpus: u32) -> Result<Vec<u8>, AcpiError> {
    if vcpus >= 255 {
        return Err(AcpiError::TooManyVcpus(vcpus));
    }
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        1,
        LocalInterruptController::Address(layout::LAPIC as u32),
    );
    for i in 0..vcpus as u8 {
        m.add_structure(ProcessorLocalApic::new(i, i, EnabledStatus::Enabled));
    }
    // The IOAPIC id must not clash with a local APIC id.
    m.add_structure(IoApic::new(vcpus as u8, layout::IOAPIC as u32, 0));
    Ok(bytes(&m))
}

/// The tables and where each goes, starting at `layout::ACPI_TABLES` with the RSDP.
pub(crate) fn tables(
    vcpus: u32,
    devices: &[MmioDevice],
    pci: Option<&PciRoot>,
) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    if devices.len() > 256 {
        return Err(AcpiError::TooManyDevices(devices.len()));
    }
    let align = |a: u64| a.next_multiple_of(16);
    let rsdp_at = layout::ACPI_TABLES;
    let xsdt_at = align(rsdp_at + Rsdp::len() as u64);
    let dsdt = dsdt(devices, pci);
    let madt = madt(vcpus)?;
    let mcfg = pci.map(|_| mcfg());
    // XSDT: header + 2 or 3 entries.
    let entries = 2 + u64::from(mcfg.is_some());
    let fadt_at = align(xsdt_at + 36 + 8 * entries);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let madt_at = align(fadt_at + fadt_len);
    let dsdt_at = align(madt_at + madt.len() as u64);
    let mcfg_at = align(dsdt_at + dsdt.len() as u64);
    let end = mcfg_at + mcfg.as_ref().map_or(0, |m| m.len() as u64);
    if end > layout::ACPI_TABLES_END {
        return Err(AcpiError::TooLarge {
            needed: (end - layout::ACPI_TABLES) as usize,
            room: (layout::ACPI_TABLES_END - layout::ACPI_TABLES) as usize,
        });
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    if mcfg.is_some() {
        xsdt.add_entry(mcfg_at);
    }
    let mut all = vec![
        (rsdp_at, bytes(&Rsdp::new(OEM_ID, xsdt_at))),
        (xsdt_at, bytes(&xsdt)),
        (fadt_at, fadt(dsdt_at)),
        (madt_at, madt),
        (dsdt_at, dsdt),
    ];
    all.extend(mcfg.map(|m| (mcfg_at, m)));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn tables_link_up_and_checksum() {
        let devs = [MmioDevice {
            base: 0xd000_0000,
            size: 0x1000,
            gsi: 5,
        }];
        let t = tables(2, &devs, None).unwrap();
        let (rsdp_at, rsdp) = &t[0];
        assert_eq!(*rsdp_at, layout::ACPI_TABLES);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(rsdp));
        let xsdt_at = u64_at(rsdp, 24);
        let find = |at: u64| t.iter().find(|(a, _)| *a == at).map(|(_, b)| b).unwrap();
        let xsdt = find(xsdt_at);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(u32_at(xsdt, 4) as usize, xsdt.len());
        let fadt = find(u64_at(xsdt, 36));
        let madt = find(u64_at(xsdt, 44));
        assert_eq!((&fadt[..4], &madt[..4]), (&b"FACP"[..], &b"APIC"[..]));
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "hardware-reduced ACPI");
        let dsdt = find(u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        for table in [xsdt, fadt, madt, dsdt] {
            assert!(checksum_ok(table), "{:?}", std::str::from_utf8(&table[..4]));
            assert_eq!(u32_at(table, 4) as usize, table.len());
        }
        // Two local APICs (8 bytes each) and one IOAPIC (12 bytes) after the 44-byte header.
        assert_eq!(madt.len(), 44 + 2 * 8 + 12);
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"LNRO0005") && has(b"VR00") && has(b"COM1") && has(b"_S5_"));
        assert!(
            !has(b"PCI0") && !has(b"MBRD"),
            "no PCI bus without a PCI function"
        );
        assert_eq!(xsdt.len(), 36 + 2 * 8, "no MCFG without a PCI function");
    }

    #[test]
    fn a_pci_bus_adds_mcfg_and_the_host_bridge() {
        let pci = PciRoot {
            low: 0xc000_0000..0xd000_0000,
            high: (4 << 30)..(1 << 40),
        };
        let t = tables(1, &[], Some(&pci)).unwrap();
        let find = |at: u64| t.iter().find(|(a, _)| *a == at).map(|(_, b)| b).unwrap();
        let xsdt = find(u64_at(&t[0].1, 24));
        assert_eq!(xsdt.len(), 36 + 3 * 8);
        let mcfg = find(u64_at(xsdt, 52));
        assert_eq!(&mcfg[..4], b"MCFG");
        assert!(checksum_ok(mcfg));
        // One allocation after the 44-byte header: base, segment 0, buses 0-0.
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(u64_at(mcfg, 44), layout::PCI_ECAM);
        assert_eq!(&mcfg[52..56], &[0, 0, 0, 0]);
        let fadt = find(u64_at(xsdt, 36));
        let dsdt = find(u64_at(fadt, 140));
        assert!(checksum_ok(dsdt));
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"PCI0") && has(b"MBRD") && has(b"_CRS") && has(b"_BBN") && has(b"_PRT"));
        // INTA# of slot 1: Package (4) { 0x0001ffff, Zero, Zero, 21 }.
        let slot1 = [
            0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x0a, 21,
        ];
        assert!(
            dsdt.windows(slot1.len()).any(|w| w == slot1),
            "slot 1's INTA# route"
        );
        // PNP0A08 and PNP0C02 as compressed EISA IDs.
        assert!(has(&[0x41, 0xd0, 0x0a, 0x08]) && has(&[0x41, 0xd0, 0x0c, 0x02]));
        // The 64-bit window as a QWord descriptor: min, max, length.
        let mut qword = Vec::new();
        qword.extend((4u64 << 30).to_le_bytes());
        qword.extend(((1u64 << 40) - 1).to_le_bytes());
        qword.extend(0u64.to_le_bytes());
        qword.extend(((1u64 << 40) - (4 << 30)).to_le_bytes());
        assert!(has(&qword));
        // The ECAM window reserved: Memory32Fixed (0x86), base, length.
        let mut ecam = vec![0x86, 9, 0, 1];
        ecam.extend((layout::PCI_ECAM as u32).to_le_bytes());
        ecam.extend((layout::PCI_ECAM_SIZE as u32).to_le_bytes());
        assert!(has(&ecam));
    }

    #[test]
    fn too_many_vcpus_or_devices_are_errors() {
        assert!(matches!(
            tables(255, &[], None),
            Err(AcpiError::TooManyVcpus(255))
        ));
        let many: Vec<_> = (0..257)
            .map(|i| MmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                gsi: 5,
            })
            .collect();
        assert!(matches!(
            tables(1, &many, None),
            Err(AcpiError::TooManyDevices(257))
        ));
        assert!(
            tables(1, &many[..256], None).is_ok(),
            "256 devices fit the area"
        );
    }
}
