//! Guest-physical layout of a Linux zone and its e820 memory map.
//!
//! ```text
//! 0x0000_0500  GDT                    0x0000_7000  boot_params (zero page)
//! 0x0000_9000  page tables (PML4, PDPT, 4 PDs: identity map of 0-4 GiB with 2 MiB pages)
//! 0x0002_0000  kernel command line    0x000e_0000  ACPI tables (RSDP first)
//! 0x0010_0000  kernel                 top of low RAM: initramfs
//! 0xc000_0000 - 0x1_0000_0000: MMIO hole (PCI 32-bit BARs at 0xc000_0000, virtio-mmio at
//!                               0xd000_0000, PCI ECAM at 0xe000_0000, IOAPIC, LAPIC)
//! 0x1_0000_0000: RAM beyond 3 GiB, when the zone has that much
//! above RAM (1 GiB aligned) up to the guest's physical address width: PCI 64-bit BARs
//! ```

use std::ops::Range;

/// GDT for the 64-bit entry.
pub(crate) const GDT: u64 = 0x500;
/// An empty IDT (interrupts stay off until the kernel installs its own).
pub(crate) const IDT: u64 = 0x520;
/// `struct boot_params`.
pub(crate) const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer.
pub(crate) const BOOT_STACK: u64 = 0x8ff0;
/// First page-table page.
pub(crate) const PML4: u64 = 0x9000;
/// Kernel command line.
pub(crate) const CMDLINE: u64 = 0x20000;
/// Longest command line (bytes, NUL included) this layout has room for.
pub(crate) const CMDLINE_MAX: usize = 0x10000;
/// Start of the end of conventional memory (EBDA and BIOS area follow, reserved).
pub(crate) const EBDA_START: u64 = 0x9fc00;
/// ACPI tables.
pub(crate) const ACPI_TABLES: u64 = 0xe0000;
/// End of the ACPI area.
pub(crate) const ACPI_TABLES_END: u64 = 0x100000;
/// Where the kernel is loaded (1 MiB, the bzImage default).
pub(crate) const KERNEL_START: u64 = 0x100000;
/// Start of the MMIO hole below 4 GiB.
pub(crate) const MMIO_START: u64 = 0xc000_0000;
/// Start of RAM above the MMIO hole.
pub(crate) const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// First virtio-mmio device; each takes [`VIRTIO_MMIO_SIZE`].
pub(crate) const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Guest-physical window of one virtio-mmio device.
pub(crate) const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The PCI 32-bit BAR window (below the virtio-mmio devices).
pub(crate) const PCI_MMIO32: Range<u64> = MMIO_START..VIRTIO_MMIO_BASE;
/// The PCI configuration window (ECAM) of bus 0.
pub(crate) const PCI_ECAM: u64 = 0xe000_0000;
/// ECAM size for one bus (32 devices x 8 functions x 4 KiB).
pub(crate) const PCI_ECAM_SIZE: u64 = 1 << 20;
/// IOAPIC registers.
pub(crate) const IOAPIC: u64 = 0xfec0_0000;
/// Local APIC registers.
pub(crate) const LAPIC: u64 = 0xfee0_0000;
/// Identity-mapped range of the boot page tables.
pub(crate) const IDENTITY_MAPPED: u64 = 4 << 30;
/// Intel VMX's real-mode TSS (three pages) sits just below the BIOS area, inside the MMIO hole.
pub(crate) const KVM_TSS: u64 = 0xfffb_d000;
/// First GSI handed to virtio devices (0-4 are legacy: timer, keyboard, cascade, COM2, COM1).
pub(crate) const FIRST_DEVICE_GSI: u32 = 5;
/// GSI of the serial port (COM1's ISA IRQ).
pub(crate) const SERIAL_GSI: u32 = 4;
/// IOAPIC pins.
pub(crate) const IOAPIC_PINS: u32 = 24;
/// The IOAPIC pins of PCI INTx (20-23): a zone with a PCI bus keeps them from virtio devices.
pub(crate) const PCI_INTX_GSI: u32 = 20;

/// The GSI of interrupt pin `pin` (1 INTA# .. 4 INTD#) of the function in slot `slot`: the pins
/// of a slot rotate over GSIs 20-23 as PCI's swizzle does (the DSDT's `_PRT` says the same).
pub(crate) fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI + (u32::from(slot) + u32::from(pin.clamp(1, 4)) - 1) % 4
}
/// I/O port of the ACPI sleep-control/reset register.
pub(crate) const ACPI_PM_PORT: u16 = 0x3c0;
/// The boot-mark register the agent writes its steps to (`zone_agent::proto::boot::MARK_PORT`).
pub(crate) const BOOT_MARK_PORT: u16 = zone_agent::proto::boot::MARK_PORT;
/// I/O ports of COM1.
pub(crate) const SERIAL_PORT: u16 = 0x3f8;

/// e820 entry types.
pub(crate) const E820_RAM: u32 = 1;
pub(crate) const E820_RESERVED: u32 = 2;

/// Guest RAM regions `(start, size)` for `mem_size` bytes: low RAM up to the MMIO hole, the rest
/// above 4 GiB.
pub(crate) fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_START), (HIGH_RAM_START, mem_size - MMIO_START)]
    }
}

/// The e820 map the guest sees: `(start, size, type)`.
pub(crate) fn e820(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let low_end = mem_size.min(MMIO_START);
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, KERNEL_START - EBDA_START, E820_RESERVED),
        (KERNEL_START, low_end - KERNEL_START, E820_RAM),
    ];
    if mem_size > MMIO_START {
        map.push((HIGH_RAM_START, mem_size - MMIO_START, E820_RAM));
    }
    map
}

/// The PCI 64-bit BAR window: from the first 1 GiB boundary above guest RAM (and above 4 GiB)
/// to the end of the guest's `phys_bits`-bit physical address space (at most 46 bits). Empty
/// when there is no room.
pub(crate) fn pci_mmio64(mem_size: u64, phys_bits: u8) -> Range<u64> {
    let ram_top = match mem_size > MMIO_START {
        true => HIGH_RAM_START + (mem_size - MMIO_START),
        false => HIGH_RAM_START,
    };
    let start = ram_top.next_multiple_of(1 << 30);
    let end = 1u64 << phys_bits.clamp(32, 46);
    start..end.max(start)
}

/// Low RAM (below the MMIO hole), where boot data must live.
pub(crate) fn low_ram(mem_size: u64) -> Range<u64> {
    0..mem_size.min(MMIO_START)
}

/// Guest-physical base of virtio-mmio device `index`.
pub(crate) fn virtio_mmio_base(index: u32) -> u64 {
    VIRTIO_MMIO_BASE + u64::from(index) * VIRTIO_MMIO_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region_and_the_legacy_area_is_reserved() {
        let mem = 512 << 20;
        assert_eq!(ram_regions(mem), vec![(0, mem)]);
        let map = e820(mem);
        assert_eq!(map[0], (0, 0x9fc00, E820_RAM));
        assert_eq!(map[1], (0x9fc00, 0x60400, E820_RESERVED));
        assert_eq!(map[2], (0x100000, mem - 0x100000, E820_RAM));
        let covered: u64 = map.iter().map(|e| e.1).sum();
        assert_eq!(covered, mem, "no gaps below the end of RAM");
    }

    #[test]
    fn the_64bit_pci_window_starts_above_ram_and_ends_at_the_address_width() {
        assert_eq!(pci_mmio64(256 << 20, 40), (4 << 30)..(1 << 40));
        // 5 GiB of RAM: 3 below the hole, 2 above 4 GiB, so RAM ends at 6 GiB.
        assert_eq!(pci_mmio64(5 << 30, 40), (6 << 30)..(1 << 40));
        assert_eq!(pci_mmio64((5 << 30) + 1, 48).start, 7 << 30);
        assert_eq!(pci_mmio64(256 << 20, 52).end, 1 << 46);
        assert!(pci_mmio64(64 << 30, 36).is_empty());
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let mem = 4 << 30;
        assert_eq!(ram_regions(mem), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        let map = e820(mem);
        assert_eq!(map.last(), Some(&(4 << 30, 1 << 30, E820_RAM)));
        assert!(
            map.iter()
                .all(|(s, l, _)| s + l <= MMIO_START || *s >= HIGH_RAM_START)
        );
        assert!(virtio_mmio_base(31) + VIRTIO_MMIO_SIZE < IOAPIC);
        assert!(virtio_mmio_base(31) + VIRTIO_MMIO_SIZE <= PCI_ECAM);
        const { assert!(PCI_ECAM + PCI_ECAM_SIZE <= IOAPIC) };
        const { assert!(PCI_INTX_GSI + 4 == IOAPIC_PINS) };
        assert_eq!(pci_intx_gsi(1, 1), 21);
        assert_eq!(pci_intx_gsi(1, 4), 20);
        assert_eq!(pci_intx_gsi(3, 1), 23);
        assert!((0..32).all(|slot| (1..=4).all(|pin| (20..24).contains(&pci_intx_gsi(slot, pin)))));
        const { assert!(KVM_TSS > MMIO_START && KVM_TSS > LAPIC) };
    }
}
