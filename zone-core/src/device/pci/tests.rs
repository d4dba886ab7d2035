use super::*;

fn nvme() -> ConfigSpace {
    ConfigSpace::new(&Header {
        vendor_id: 0x1b36,
        device_id: 0x0010,
        revision: 2,
        class: 0x01_08_02,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
        interrupt_pin: 1,
    })
}

#[test]
fn the_header_reads_back_and_read_only_fields_stay() {
    let mut c = nvme();
    assert_eq!(c.read(reg::VENDOR_ID, 2), 0x1b36);
    assert_eq!(c.read(reg::VENDOR_ID, 4), 0x0010_1b36);
    assert_eq!(c.read(reg::REVISION, 4), 0x0108_0202);
    assert_eq!(c.read(reg::INTERRUPT_PIN, 1), 1);
    assert_eq!(c.read(reg::HEADER_TYPE, 1), 0, "type 0, single function");
    for (offset, len) in [
        (reg::VENDOR_ID, 4),
        (reg::REVISION, 4),
        (reg::HEADER_TYPE, 1),
        (reg::ROM, 4),
    ] {
        let before = c.read(offset, len);
        assert_eq!(c.write(offset, len, 0xffff_ffff), None);
        assert_eq!(c.read(offset, len), before, "{offset:#x}");
    }
    assert_eq!(c.read(reg::ROM, 4), 0, "no expansion ROM");
    // The interrupt line is the guest's scratch.
    c.write(reg::INTERRUPT_LINE, 1, 11);
    assert_eq!(c.read(reg::INTERRUPT_LINE, 1), 11);
}

#[test]
fn invalid_accesses_read_all_ones_and_write_nothing() {
    let mut c = nvme();
    for (offset, len) in [
        (1, 2),
        (2, 4),
        (0, 3),
        (0, 8),
        (4095, 2),
        (4096, 1),
        (u16::MAX, 1),
    ] {
        assert_eq!(c.read(offset, len), u32::MAX, "{offset} {len}");
        assert_eq!(c.write(offset, len, 0), None);
    }
    assert_eq!(c.read(4092, 4), 0, "the extended space reads as empty");
}

#[test]
fn command_bits_are_masked_and_reported() {
    let mut c = nvme();
    let change = c.write(reg::COMMAND, 2, 0xffff);
    let allowed = command::IO | command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
    assert_eq!(
        change,
        Some(ConfigChange::Command {
            from: 0,
            to: allowed
        })
    );
    assert_eq!(c.command(), allowed);
    assert_eq!(
        c.write(reg::COMMAND, 2, u32::from(allowed)),
        None,
        "no change, no report"
    );
    // The VMM takes bus mastering away (a paused zone) and gives it back.
    assert_eq!(c.set_command(allowed & !command::BUS_MASTER), allowed);
    assert_eq!(c.command() & command::BUS_MASTER, 0);
}

#[test]
fn status_error_bits_clear_on_writing_one() {
    let mut c = nvme();
    c.set_bytes(reg::STATUS, &0xf910u16.to_le_bytes()).unwrap();
    c.write(reg::STATUS, 2, 0x8000);
    assert_eq!(c.read(reg::STATUS, 2), 0x7910);
    c.write(reg::STATUS, 2, 0xffff);
    assert_eq!(
        c.read(reg::STATUS, 2),
        0x0010,
        "the capability bit is read-only"
    );
}

#[test]
fn bars_size_probe_like_hardware_and_report_moves() {
    let mut c = nvme();
    c.add_bar(
        0,
        Bar {
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
            size: 0x4000,
        },
    )
    .unwrap();
    c.add_bar(
        2,
        Bar {
            kind: BarKind::Memory64 { prefetchable: true },
            size: 64 << 30,
        },
    )
    .unwrap();
    c.add_bar(
        4,
        Bar {
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            size: 0x1000,
        },
    )
    .unwrap();
    c.add_bar(
        5,
        Bar {
            kind: BarKind::Io,
            size: 0x20,
        },
    )
    .unwrap();
    c.set_bar_address(0, 0xfe00_0000).unwrap();
    assert_eq!(c.bar_address(0), Some(0xfe00_0000));
    assert_eq!(c.read(reg::BAR0, 4), 0xfe00_0004, "64-bit flag");
    // Linux's sizing: write all ones, read the mask, restore.
    c.write(reg::BAR0, 4, u32::MAX);
    c.write(reg::BAR0 + 4, 4, u32::MAX);
    assert_eq!(c.read(reg::BAR0, 4), 0xffff_c004);
    assert_eq!(c.read(reg::BAR0 + 4, 4), u32::MAX);
    let big_low = reg::BAR0 + 8;
    c.write(big_low, 4, u32::MAX);
    c.write(big_low + 4, 4, u32::MAX);
    assert_eq!(
        c.read(big_low, 4),
        0x0000_000c,
        "64 GiB: no low address bits, prefetchable"
    );
    assert_eq!(c.read(big_low + 4, 4), 0xffff_fff0);
    c.write(reg::BAR0 + 16, 4, u32::MAX);
    assert_eq!(c.read(reg::BAR0 + 16, 4), 0xffff_f000);
    c.write(reg::BAR0 + 20, 4, u32::MAX);
    assert_eq!(c.read(reg::BAR0 + 20, 4), 0xffff_ffe1, "I/O flag");
    // A move is reported with the old and new address.
    c.set_bar_address(4, 0xc000_0000).unwrap();
    assert_eq!(
        c.write(reg::BAR0 + 16, 4, 0xc000_1000),
        Some(ConfigChange::Bar {
            index: 4,
            from: 0xc000_0000,
            to: 0xc000_1000
        })
    );
    assert_eq!(
        c.write(big_low + 4, 4, 0x20),
        Some(ConfigChange::Bar {
            index: 2,
            from: 0xffff_fff0_0000_0000,
            to: 0x20_0000_0000
        })
    );
    assert_eq!(c.bar_address(2), Some(0x20_0000_0000));
}

#[test]
fn bar_declarations_are_checked() {
    let mut c = nvme();
    let mem = |size| Bar {
        kind: BarKind::Memory32 {
            prefetchable: false,
        },
        size,
    };
    let mem64 = |size| Bar {
        kind: BarKind::Memory64 {
            prefetchable: false,
        },
        size,
    };
    assert_eq!(
        c.add_bar(0, mem(0x1800)),
        Err(PciError::BarSize {
            index: 0,
            size: 0x1800
        })
    );
    assert_eq!(
        c.add_bar(0, mem(8)),
        Err(PciError::BarSize { index: 0, size: 8 })
    );
    assert_eq!(
        c.add_bar(0, mem(1 << 32)),
        Err(PciError::BarSize {
            index: 0,
            size: 1 << 32
        })
    );
    assert_eq!(
        c.add_bar(5, mem64(0x1000)),
        Err(PciError::BarIndex { index: 5 })
    );
    c.add_bar(1, mem64(0x1000)).unwrap();
    assert_eq!(
        c.add_bar(2, mem(0x1000)),
        Err(PciError::BarTaken { index: 2 })
    );
    assert_eq!(
        c.add_bar(1, mem(0x1000)),
        Err(PciError::BarTaken { index: 1 })
    );
    assert_eq!(
        c.add_bar(0, mem64(0x1000)),
        Err(PciError::BarTaken { index: 1 })
    );
    assert_eq!(
        c.set_bar_address(1, 0x1800),
        Err(PciError::BarAddress {
            index: 1,
            address: 0x1800
        })
    );
    assert_eq!(
        c.set_bar_address(3, 0),
        Err(PciError::BarIndex { index: 3 })
    );
    c.add_bar(3, mem(0x1000)).unwrap();
    assert_eq!(
        c.set_bar_address(3, 0xffff_f000 + 0x1000),
        Err(PciError::BarAddress {
            index: 3,
            address: 0x1_0000_0000
        })
    );
}

#[test]
fn capabilities_chain_and_report_writes() {
    let mut c = nvme();
    let msix = Msix::new(8).unwrap();
    let (body, mask) = msix.capability((0, 0x2000), (0, 0x3000)).unwrap();
    let at = c.add_capability(MSIX_CAPABILITY_ID, &body, &mask).unwrap();
    let vendor = c.add_capability(0x09, &[1, 2, 3], &[0, 0, 0]).unwrap();
    assert_eq!(at, 0x40);
    assert_eq!(
        vendor, 0x4c,
        "dword aligned after the 12-byte MSI-X capability"
    );
    assert_eq!(c.read(reg::CAPABILITIES, 1), 0x40);
    assert_eq!(c.read(reg::STATUS, 2) & 0x10, 0x10);
    assert_eq!(c.read(0x40, 2), 0x4c11, "ID and next pointer");
    assert_eq!(c.read(0x4c, 2), 0x0009, "end of list");
    assert_eq!(c.read(0x42, 2), 7, "table size N-1");
    assert_eq!(c.read(0x44, 4), 0x2000);
    assert_eq!(c.capability(0x09), Some(0x4c));
    assert_eq!(
        c.capabilities().collect::<Vec<_>>(),
        [(0x40, 0x11), (0x4c, 0x09)]
    );
    // Enable and function mask are writable; the table size is not.
    let change = c.write(0x42, 2, 0xffff);
    assert_eq!(
        change,
        Some(ConfigChange::Capability {
            capability: 0x40,
            id: MSIX_CAPABILITY_ID
        })
    );
    assert_eq!(c.read(0x42, 2), 0xc007);
    // The next pointer and the ID are read-only.
    assert_eq!(c.write(0x40, 2, 0), None);
    assert_eq!(c.read(0x40, 2), 0x4c11);
    // Too many capabilities for the standard space.
    let mut c = nvme();
    let big = [0u8; 80];
    c.add_capability(1, &big, &big).unwrap();
    c.add_capability(2, &big, &big).unwrap();
    assert_eq!(
        c.add_capability(3, &big, &big),
        Err(PciError::CapabilitySpace { id: 3 })
    );
    assert_eq!(
        c.add_capability(3, &[0; 2], &[0; 1]),
        Err(PciError::CapabilityMask { id: 3 })
    );
}

#[test]
fn capabilities_placed_at_a_devices_offsets_keep_its_next_pointers() {
    let mut c = nvme();
    let msix = Msix::new(65).unwrap();
    let (body, mask) = msix.capability((0, 0x2000), (0, 0x3000)).unwrap();
    c.place_capability(0x80, MSIX_CAPABILITY_ID, 0x60, &body, &mask)
        .unwrap();
    assert_eq!(c.read(0x80, 2), 0x6011, "ID and the device's next pointer");
    assert_eq!(c.read(reg::STATUS, 2) & 0x10, 0x10);
    assert_eq!(c.capability(MSIX_CAPABILITY_ID), Some(0x80));
    assert_eq!(
        c.write(0x82, 2, 0x8000),
        Some(ConfigChange::Capability {
            capability: 0x80,
            id: MSIX_CAPABILITY_ID
        })
    );
    // Overlapping, unaligned, in the header or past the standard space: refused.
    for at in [0x84, 0x7c, 0x62, 0x3c, 0xf8] {
        assert_eq!(
            c.place_capability(at, 5, 0, &[0; 10], &[0; 10]),
            Err(PciError::CapabilitySpace { id: 5 }),
            "{at:#x}"
        );
    }
    assert_eq!(
        c.place_capability(0x50, 5, 0, &[0; 2], &[0; 1]),
        Err(PciError::CapabilityMask { id: 5 })
    );
    c.place_capability(0x50, 5, 0x80, &[0; 12], &[0; 12])
        .unwrap();
}

#[test]
fn msix_masks_pends_and_delivers_on_unmask() {
    let mut m = Msix::new(3).unwrap();
    assert_eq!(m.trigger(0), Delivery::Dropped, "MSI-X off");
    m.set_control(0x8000);
    assert!(m.enabled());
    // Program vector 1, still masked: the trigger pends.
    m.write_table(16, &0xfee0_1000u32.to_le_bytes());
    m.write_table(24, &0x41u32.to_le_bytes());
    assert_eq!(m.trigger(1), Delivery::Pending);
    assert!(m.is_pending(1));
    let mut pba = [0u8; 8];
    m.read_pba(0, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0b10);
    // Unmask: the pending message goes out, the bit clears.
    let msg = MsiMessage {
        address: 0xfee0_1000,
        data: 0x41,
    };
    let changes = m.write_table(28, &0u32.to_le_bytes());
    assert_eq!(
        changes,
        [
            TableChange::Vector { vector: 1 },
            TableChange::Deliver {
                vector: 1,
                message: msg
            }
        ]
    );
    assert!(!m.is_pending(1));
    assert_eq!(m.trigger(1), Delivery::Send(msg));
    // The function mask holds every vector.
    m.set_control(0xc000);
    assert_eq!(m.trigger(1), Delivery::Pending);
    let changes = m.set_control(0x8000);
    assert_eq!(
        changes,
        [TableChange::Deliver {
            vector: 1,
            message: msg
        }]
    );
    // Reads: entries as the guest wrote them, reserved control bits zero.
    m.write_table(12, &u32::MAX.to_le_bytes());
    let mut e = [0u8; 4];
    m.read_table(12, &mut e);
    assert_eq!(u32::from_le_bytes(e), 1);
    let mut q = [0u8; 8];
    m.read_table(16, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
    // Out of range and misaligned accesses are ignored.
    assert_eq!(m.trigger(3), Delivery::Dropped);
    assert!(m.write_table(48, &[0; 4]).is_empty());
    assert!(m.write_table(2, &[0; 4]).is_empty());
    m.read_table(2, &mut e);
    assert_eq!(e, [0; 4]);
    assert_eq!(
        Msix::new(0).unwrap_err(),
        PciError::MsixVectors { vectors: 0 }
    );
    assert_eq!(
        Msix::new(2049).unwrap_err(),
        PciError::MsixVectors { vectors: 2049 }
    );
    assert_eq!(m.table_size(), 48);
    assert_eq!(m.pba_size(), 8);
    assert_eq!(Msix::new(65).unwrap().pba_size(), 16);
    assert_eq!(
        m.capability((6, 0), (0, 0)).unwrap_err(),
        PciError::MsixLayout
    );
}

#[test]
fn bars_are_placed_naturally_aligned_in_their_windows() {
    let mut a = BarAllocator::new(0xc000_0000..0xd000_0000, 1 << 40..1 << 41).unwrap();
    let gpu = Bar {
        kind: BarKind::Memory64 { prefetchable: true },
        size: 256 << 30,
    };
    let regs = Bar {
        kind: BarKind::Memory32 {
            prefetchable: false,
        },
        size: 16 << 20,
    };
    let small = Bar {
        kind: BarKind::Memory32 {
            prefetchable: false,
        },
        size: 0x1000,
    };
    let g = a.allocate(2, &gpu).unwrap();
    assert_eq!(g % (256 << 30), 0);
    assert!(g >= 1 << 40);
    let s = a.allocate(0, &small).unwrap();
    let r = a.allocate(1, &regs).unwrap();
    assert_eq!(r % (16 << 20), 0);
    assert!((0xc000_0000..0xd000_0000).contains(&s) && (0xc000_0000..0xd000_0000).contains(&r));
    assert!(r + (16 << 20) <= s || s + 0x1000 <= r, "no overlap");
    let huge = Bar {
        kind: BarKind::Memory32 {
            prefetchable: false,
        },
        size: 1 << 30,
    };
    assert_eq!(
        a.allocate(3, &huge),
        Err(PciError::NoRoom {
            index: 3,
            size: 1 << 30
        })
    );
    a.free(&gpu, g);
    assert_eq!(a.allocate(2, &gpu).unwrap(), g, "freed space is reused");
    assert!(BarAllocator::new(5..5, 1..2).is_err());
}
