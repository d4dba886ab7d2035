use super::*;
use crate::device::pci::{Bar, reg};
use std::sync::Mutex as StdMutex;

/// Every BAR access a probe saw: (BAR, offset, length).
type Seen = Arc<StdMutex<Vec<(usize, u64, usize)>>>;

/// A function with a 4 KiB 32-bit BAR 0 and a 1 GiB 64-bit prefetchable BAR 2 that records
/// every BAR access.
struct Probe {
    config: ConfigSpace,
    seen: Seen,
}

impl Probe {
    fn new() -> (Box<Self>, Seen) {
        let mut config = ConfigSpace::new(&Header {
            vendor_id: 0x1b36,
            device_id: 0x0005,
            class: 0x00_ff_00,
            ..Header::default()
        });
        let mmio = |kind, size| Bar { kind, size };
        config
            .add_bar(
                0,
                mmio(
                    BarKind::Memory32 {
                        prefetchable: false,
                    },
                    0x1000,
                ),
            )
            .unwrap();
        config
            .add_bar(2, mmio(BarKind::Memory64 { prefetchable: true }, 1 << 30))
            .unwrap();
        let seen = Arc::new(StdMutex::new(Vec::new()));
        (
            Box::new(Self {
                config,
                seen: seen.clone(),
            }),
            seen,
        )
    }
}

impl PciFunction for Probe {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.seen.lock().unwrap().push((bar, offset, data.len()));
        data.fill(0xab);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.seen.lock().unwrap().push((bar, offset, data.len()));
    }
}

/// A configuration space with one BAR, at index 0.
fn one_bar(kind: BarKind, size: u64) -> ConfigSpace {
    let mut config = ConfigSpace::new(&Header::default());
    config.add_bar(0, Bar { kind, size }).unwrap();
    config
}

/// ECAM offset of device `device`, register `reg`.
fn at(device: u64, reg: u16) -> u64 {
    (device << 15) | u64::from(reg)
}

fn read32(bus: &PciBus, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    bus.config_read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn bus_with_probe() -> (Arc<PciBus>, Seen) {
    let mut b = PciBusBuilder::new(256 << 20, 40).unwrap();
    let (probe, seen) = Probe::new();
    assert_eq!(b.add(probe).unwrap(), 1, "the first function is device 1");
    (b.finish(None), seen)
}

#[test]
fn bars_are_placed_aligned_in_their_windows() {
    let (bus, _) = bus_with_probe();
    let f = bus.function(0).unwrap();
    let low = f.config().bar_address(0).unwrap();
    let high = f.config().bar_address(2).unwrap();
    assert!(
        layout::PCI_MMIO32.contains(&low) && low % 0x1000 == 0,
        "{low:#x}"
    );
    let window = layout::pci_mmio64(256 << 20, 40);
    assert!(window.contains(&high) && high % (1 << 30) == 0, "{high:#x}");
}

#[test]
fn ecam_reaches_the_bridge_and_the_functions_and_nothing_else() {
    let (bus, _) = bus_with_probe();
    assert_eq!(read32(&bus, at(0, reg::VENDOR_ID)), 0x0d57_8086);
    assert_eq!(read32(&bus, at(0, reg::REVISION)) >> 8, 0x06_00_00);
    assert_eq!(read32(&bus, at(1, reg::VENDOR_ID)), 0x0005_1b36);
    for absent in [
        at(2, 0),
        at(31, 0),
        at(1, 0) | (1 << 12), // function 1
        at(1, 0) | (1 << 20), // bus 1
        at(1, 1),             // unaligned dword
    ] {
        assert_eq!(read32(&bus, absent), u32::MAX, "{absent:#x}");
    }
    let mut wide = [0u8; 8];
    bus.config_read(at(1, 0), &mut wide);
    assert_eq!(
        wide, [0xff; 8],
        "8-byte configuration accesses read all ones"
    );
    bus.config_write(at(1, reg::VENDOR_ID), &[0; 8]);
    bus.config_write(at(7, reg::COMMAND), &[0xff, 0xff]);
    assert_eq!(read32(&bus, at(1, reg::VENDOR_ID)), 0x0005_1b36);
}

#[test]
fn bars_decode_only_while_memory_decoding_is_on_and_follow_a_move() {
    let (bus, seen) = bus_with_probe();
    let low = bus.function(0).unwrap().config().bar_address(0).unwrap();
    let high = bus.function(0).unwrap().config().bar_address(2).unwrap();
    let mut b = [0u8; 4];
    bus.bar_read(low + 8, &mut b);
    assert_eq!(b, [0xff; 4], "memory decoding is off");
    assert!(seen.lock().unwrap().is_empty());

    bus.config_write(at(1, reg::COMMAND), &command::MEMORY.to_le_bytes());
    bus.bar_read(low + 8, &mut b);
    assert_eq!(b, [0xab; 4]);
    bus.bar_write(high + (1 << 29), &[1, 2]);
    bus.bar_write(low + 0xffe, &[0; 4]); // straddles the end of BAR 0: dropped
    assert_eq!(*seen.lock().unwrap(), vec![(0, 8, 4), (2, 1 << 29, 2)]);

    // Linux sizes BAR 0 (all ones, read back) and moves it 64 KiB up.
    bus.config_write(at(1, reg::BAR0), &u32::MAX.to_le_bytes());
    assert_eq!(read32(&bus, at(1, reg::BAR0)), 0xffff_f000, "size mask");
    let moved = low + 0x10000;
    bus.config_write(at(1, reg::BAR0), &(moved as u32).to_le_bytes());
    seen.lock().unwrap().clear();
    bus.bar_read(low + 8, &mut b);
    assert_eq!(b, [0xff; 4], "nothing at the old address");
    bus.bar_read(moved + 8, &mut b);
    assert_eq!(*seen.lock().unwrap(), vec![(0, 8, 4)]);

    bus.config_write(at(1, reg::COMMAND), &[0, 0]);
    bus.bar_read(moved + 8, &mut b);
    assert_eq!(b, [0xff; 4], "decoding off again");
}

#[test]
fn thirty_one_functions_fit_and_a_thirty_second_is_refused() {
    let mut b = PciBusBuilder::new(256 << 20, 40).unwrap();
    for n in 1..=31u8 {
        let config = one_bar(
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x1000,
        );
        let (mut probe, _) = Probe::new();
        probe.config = config;
        assert_eq!(b.add(probe).unwrap(), n);
    }
    let (probe, _) = Probe::new();
    assert!(matches!(b.add(probe), Err(PciBusError::Full)));
}

#[test]
fn a_bar_larger_than_its_window_is_refused_with_its_size() {
    let mut b = PciBusBuilder::new(256 << 20, 40).unwrap();
    let (mut probe, _) = Probe::new();
    probe.config = one_bar(BarKind::Memory64 { prefetchable: true }, 1 << 41);
    let e = b.add(probe).unwrap_err();
    assert!(
        matches!(e, PciBusError::Bar { index: 0, size, .. } if size == 1 << 41),
        "{e}"
    );
}

#[test]
fn no_room_above_ram_for_a_64bit_window_is_an_error() {
    assert!(matches!(
        PciBusBuilder::new(64 << 30, 36),
        Err(PciBusError::NoHighWindow { .. })
    ));
}

/// A function whose BAR 0 has two page-aligned mapped parts and one that is not aligned.
struct Mapped(ConfigSpace);

impl PciFunction for Mapped {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }

    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}

    fn bar_mappings(&self, bar: usize) -> Vec<crate::device::pci::BarMapping> {
        use crate::device::pci::BarMapping;
        if bar != 0 {
            return Vec::new();
        }
        let host = 0x7f00_0000_0000usize as *mut u8;
        // SAFETY: the bus under test has no VM: nothing maps or touches these addresses.
        unsafe {
            vec![
                BarMapping::new(0, 0x2000, host),
                BarMapping::new(0x3000, 0x1000, host.wrapping_add(0x3000)),
                BarMapping::new(0x4100, 0x1000, host.wrapping_add(0x4100)),
            ]
        }
    }
}

#[test]
fn mapped_bar_parts_follow_decoding_and_moves_and_unaligned_ones_stay_trapped() {
    let config = one_bar(
        BarKind::Memory32 {
            prefetchable: false,
        },
        0x8000,
    );
    let mut b = PciBusBuilder::new(256 << 20, 40).unwrap();
    b.add(Box::new(Mapped(config))).unwrap();
    let bus = b.finish(None);
    let gpas = |bus: &PciBus| -> Vec<u64> {
        let slots = bus.slots.lock().unwrap();
        let mut v: Vec<u64> = slots.mapped.values().map(|m| m.0).collect();
        v.sort();
        v
    };
    assert_eq!(bus.mapped_bytes(), 0, "not decoding yet");
    bus.config_write(at(1, reg::COMMAND), &command::MEMORY.to_le_bytes());
    assert_eq!(bus.mapped_bytes(), 0x3000);
    let base = 0xc000_0000;
    assert_eq!(gpas(&bus), vec![base, base + 0x3000]);
    bus.config_write(at(1, reg::BAR0), &((base + 0x10000) as u32).to_le_bytes());
    assert_eq!(
        gpas(&bus),
        vec![base + 0x10000, base + 0x13000],
        "moved with the BAR"
    );
    bus.config_write(at(1, reg::COMMAND), &[0, 0]);
    assert_eq!(bus.mapped_bytes(), 0, "unmapped with decoding off");
}
