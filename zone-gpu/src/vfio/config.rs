//! The guest's view of a passed-through function's configuration space, built from the device's
//! own: its IDs and class, its memory BARs (sizes from VFIO), and an emulated MSI-X capability
//! where the device has MSI-X, or else an emulated MSI capability (one vector) where it has MSI;
//! and a read-only copy of its PCI Express capability (drivers read the device's PCIe type and
//! link from it; the guest writes none of it). Nothing else of the device's space is shown.

use zone_core::device::pci::{
    Bar, BarKind, ConfigSpace, Header, MSI_CAPABILITY_ID, MSIX_CAPABILITY_ID, Msix, PciError,
    msi_capability,
};

/// Where the device keeps its MSI-X table and PBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MsixPlace {
    pub(crate) vectors: u16,
    pub(crate) table_bar: usize,
    pub(crate) table_offset: u64,
    pub(crate) pba_bar: usize,
    pub(crate) pba_offset: u64,
}

impl MsixPlace {
    /// Bytes of the table (16 a vector).
    pub(crate) fn table_len(&self) -> u64 {
        u64::from(self.vectors) * 16
    }

    /// Bytes of the PBA (a bit a vector, in whole quadwords).
    pub(crate) fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

/// The device's layout, read from its configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) header: Header,
    pub(crate) bars: [Option<Bar>; 6],
    pub(crate) msix: Option<MsixPlace>,
    /// The device has an MSI capability.
    pub(crate) msi: bool,
    /// The body of the device's PCI Express capability (after ID and next pointer).
    pub(crate) pcie: Option<Vec<u8>>,
    /// The device has an interrupt pin (INTx).
    pub(crate) intx: bool,
}

fn u16_at(raw: &[u8], at: usize) -> u16 {
    raw.get(at..at + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    raw.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads the layout from `raw` (the device's first 256 configuration bytes) and `region_size`
/// (VFIO's size of BAR region `i`). Anything odd (a BAR size that is not a power of two, a
/// capability list that loops or leaves the space) is left out, never trusted.
pub(crate) fn layout(raw: &[u8], region_size: impl Fn(usize) -> u64) -> Layout {
    let class = u32_at(raw, 0x08) >> 8;
    let header = Header {
        vendor_id: u16_at(raw, 0x00),
        device_id: u16_at(raw, 0x02),
        revision: raw.get(0x08).copied().unwrap_or(0),
        class,
        subsystem_vendor_id: u16_at(raw, 0x2c),
        subsystem_id: u16_at(raw, 0x2e),
        // INTA# once the device's INTx is routed to the zone (see `Layout::intx`).
        interrupt_pin: 0,
    };
    let mut bars = [None; 6];
    let mut i = 0;
    while i < 6 {
        let reg = u32_at(raw, 0x10 + 4 * i);
        let size = region_size(i);
        let wide = reg & 0b111 == 0b100;
        let kind = match (reg & 1, wide) {
            (1, _) => None, // I/O: not shown (the zone's bus has no I/O window)
            (_, true) => Some(BarKind::Memory64 {
                prefetchable: reg & 0b1000 != 0,
            }),
            (_, false) => Some(BarKind::Memory32 {
                prefetchable: reg & 0b1000 != 0,
            }),
        };
        if let Some(kind) = kind
            && size >= 16
            && size.is_power_of_two()
            && !(wide && i == 5)
        {
            bars[i] = Some(Bar { kind, size });
        }
        i += if wide { 2 } else { 1 };
    }
    Layout {
        header,
        bars,
        msix: msix_place(raw, &bars),
        msi: capability(raw, MSI_CAPABILITY_ID).is_some(),
        pcie: capability(raw, PCIE_CAPABILITY_ID)
            .and_then(|at| raw.get(at + 2..at + PCIE_CAPABILITY_LEN))
            .map(<[u8]>::to_vec),
        intx: raw.get(0x3d).is_some_and(|pin| (1..=4).contains(pin)),
    }
}

/// PCI Express capability ID.
const PCIE_CAPABILITY_ID: u8 = 0x10;
/// Length of a version 2 PCI Express capability, ID and next pointer included.
const PCIE_CAPABILITY_LEN: usize = 0x3c;

/// The offset of the device's first capability `id`, walking at most 48 entries inside the
/// standard space.
fn capability(raw: &[u8], id: u8) -> Option<usize> {
    const STATUS_CAPABILITIES: u16 = 1 << 4;
    if u16_at(raw, 0x06) & STATUS_CAPABILITIES == 0 {
        return None;
    }
    let mut at = usize::from(raw.get(0x34).copied()? & 0xfc);
    for _ in 0..48 {
        if !(0x40..0x100).contains(&at) {
            return None;
        }
        if raw.get(at).copied()? == id {
            return Some(at);
        }
        at = usize::from(raw.get(at + 1).copied()? & 0xfc);
    }
    None
}

/// The MSI-X capability, if the device has one whose table and PBA lie in BARs it shows.
fn msix_place(raw: &[u8], bars: &[Option<Bar>; 6]) -> Option<MsixPlace> {
    let at = capability(raw, MSIX_CAPABILITY_ID)?;
    let vectors = (u16_at(raw, at + 2) & 0x7ff) + 1;
    let (table, pba) = (u32_at(raw, at + 4), u32_at(raw, at + 8));
    let place = MsixPlace {
        vectors,
        table_bar: (table & 7) as usize,
        table_offset: u64::from(table & !7),
        pba_bar: (pba & 7) as usize,
        pba_offset: u64::from(pba & !7),
    };
    let inside = |bar: usize, offset: u64, len: u64| {
        bars.get(bar)
            .copied()
            .flatten()
            .is_some_and(|b| offset.checked_add(len).is_some_and(|end| end <= b.size))
    };
    (inside(place.table_bar, place.table_offset, place.table_len())
        && inside(place.pba_bar, place.pba_offset, place.pba_len()))
    .then_some(place)
}

/// The guest's configuration space for `layout`: with the emulated MSI-X and its capability's
/// offset, or (for a device with MSI but no MSI-X) the emulated MSI capability's offset.
pub(crate) fn guest_space(layout: &Layout) -> Result<GuestSpace, PciError> {
    let mut config = ConfigSpace::new(&layout.header);
    for (i, bar) in layout.bars.iter().enumerate() {
        if let Some(bar) = bar {
            config.add_bar(i, *bar)?;
        }
    }
    let msix = match layout.msix {
        Some(p) => {
            let msix = Msix::new(p.vectors)?;
            let (body, mask) = msix.capability(
                (p.table_bar as u8, p.table_offset as u32),
                (p.pba_bar as u8, p.pba_offset as u32),
            )?;
            let at = config.add_capability(MSIX_CAPABILITY_ID, &body, &mask)?;
            Some((msix, at))
        }
        None => None,
    };
    let msi = match (msix.is_none() && layout.msi, msi_capability()) {
        (true, (body, mask)) => Some(config.add_capability(MSI_CAPABILITY_ID, &body, &mask)?),
        (false, _) => None,
    };
    if let Some(body) = &layout.pcie {
        config.add_capability(PCIE_CAPABILITY_ID, body, &vec![0; body.len()])?;
    }
    Ok(GuestSpace { config, msix, msi })
}

/// What [`guest_space`] makes.
pub(crate) struct GuestSpace {
    pub(crate) config: ConfigSpace,
    pub(crate) msix: Option<(Msix, u16)>,
    pub(crate) msi: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's nvme as the lab shows it: a 16 KiB 64-bit BAR 0 with the MSI-X table (65 vectors)
    /// at 0x2000 and the PBA at 0x3000; capabilities PM (0x40), MSI-X (0x80), PCIe (0x60) in a
    /// chain; plus a 32-bit BAR 4 and an I/O BAR 5 for the test.
    fn nvme_like() -> Vec<u8> {
        let mut raw = vec![0u8; 256];
        raw[0..4].copy_from_slice(&[0x36, 0x1b, 0x10, 0x00]);
        raw[6] = 0x10; // capabilities
        raw[8..12].copy_from_slice(&[0x02, 0x02, 0x08, 0x01]);
        raw[0x10..0x14].copy_from_slice(&0xfebf_0004u32.to_le_bytes());
        raw[0x20..0x24].copy_from_slice(&0xfebe_0000u32.to_le_bytes());
        raw[0x24..0x28].copy_from_slice(&0xc001u32.to_le_bytes());
        raw[0x2c..0x30].copy_from_slice(&[0xf4, 0x1a, 0x00, 0x11]);
        raw[0x34] = 0x40;
        raw[0x40..0x42].copy_from_slice(&[0x01, 0x60]); // PM -> 0x60
        raw[0x60..0x62].copy_from_slice(&[0x10, 0x80]); // PCIe -> 0x80
        raw[0x80..0x82].copy_from_slice(&[0x11, 0x00]); // MSI-X, end
        raw[0x82..0x84].copy_from_slice(&64u16.to_le_bytes());
        raw[0x84..0x88].copy_from_slice(&0x2000u32.to_le_bytes());
        raw[0x88..0x8c].copy_from_slice(&0x3000u32.to_le_bytes());
        raw
    }

    fn sizes(i: usize) -> u64 {
        [0x4000, 0, 0, 0, 0x1000, 0x100][i]
    }

    #[test]
    fn the_guest_sees_ids_memory_bars_and_msix_only() {
        let l = layout(&nvme_like(), sizes);
        assert_eq!(
            (l.header.vendor_id, l.header.device_id, l.header.class),
            (0x1b36, 0x0010, 0x01_08_02)
        );
        assert_eq!(l.header.interrupt_pin, 0, "no INTx");
        assert_eq!(
            l.bars[0],
            Some(Bar {
                kind: BarKind::Memory64 {
                    prefetchable: false
                },
                size: 0x4000
            })
        );
        assert_eq!(l.bars[1], None, "the upper half of BAR 0");
        assert!(l.bars[4].is_some() && l.bars[5].is_none(), "no I/O BAR");
        assert_eq!(
            l.msix,
            Some(MsixPlace {
                vectors: 65,
                table_bar: 0,
                table_offset: 0x2000,
                pba_bar: 0,
                pba_offset: 0x3000
            })
        );
        let GuestSpace { config, msix, msi } = guest_space(&l).unwrap();
        let (msix, at) = msix.unwrap();
        assert_eq!(msi, None, "MSI-X is shown, MSI not");
        assert_eq!(msix.vectors(), 65);
        let caps: Vec<_> = config.capabilities().collect();
        assert_eq!(caps.len(), 2, "{caps:?}");
        assert_eq!(caps[0], (at, MSIX_CAPABILITY_ID));
        assert_eq!(
            caps[1].1, PCIE_CAPABILITY_ID,
            "PM is not shown; PCIe is, read-only"
        );
        let mut config = config;
        let pcie = caps[1].0;
        let before = config.read(pcie + 8, 4);
        assert_eq!(
            config.write(pcie + 8, 2, 0xffff),
            None,
            "the guest writes no PCIe field"
        );
        assert_eq!(config.read(pcie + 8, 4), before);
        assert_eq!(config.read(0x30, 4), 0, "no expansion ROM");
    }

    #[test]
    fn a_device_with_msi_only_gets_the_emulated_msi() {
        // edu as the lab shows it: a 1 MiB BAR 0 and an MSI capability at 0x40.
        let mut raw = vec![0u8; 256];
        raw[0..4].copy_from_slice(&[0x34, 0x12, 0xe8, 0x11]);
        raw[6] = 0x10;
        raw[0x10..0x14].copy_from_slice(&0xfea0_0000u32.to_le_bytes());
        raw[0x34] = 0x40;
        raw[0x40..0x42].copy_from_slice(&[0x05, 0x00]);
        let l = layout(&raw, |i| if i == 0 { 1 << 20 } else { 0 });
        assert!(l.msi && l.msix.is_none());
        let GuestSpace { config, msix, msi } = guest_space(&l).unwrap();
        assert!(msix.is_none());
        let at = msi.unwrap();
        assert_eq!(
            config.capabilities().collect::<Vec<_>>(),
            vec![(at, MSI_CAPABILITY_ID)]
        );
    }

    #[test]
    fn a_lying_capability_list_or_table_is_left_out() {
        let mut raw = nvme_like();
        raw[0x61] = 0x40; // PCIe -> PM: a loop without MSI-X
        assert_eq!(layout(&raw, sizes).msix, None);
        let mut raw = nvme_like();
        raw[0x84..0x88].copy_from_slice(&0x3ff8u32.to_le_bytes()); // table past BAR 0's end
        assert_eq!(layout(&raw, sizes).msix, None);
        let mut raw = nvme_like();
        raw[0x84..0x88].copy_from_slice(&0x2002u32.to_le_bytes()); // BIR 2: no such BAR
        assert_eq!(layout(&raw, sizes).msix, None);
        assert_eq!(layout(&raw[..8], sizes).msix, None, "a short space");
        let odd = |i: usize| if i == 0 { 0x3000 } else { 0 };
        assert_eq!(
            layout(&nvme_like(), odd).bars[0],
            None,
            "not a power of two"
        );
    }
}
