//! The guest's view of a passed-through function's configuration space. zones emulates the
//! header (IDs and class, its memory BARs with sizes from VFIO, the command register, the
//! interrupt pin) and, in place at the device's own offsets, the MSI-X capability and the MSI
//! capability (one vector): their vectors are KVM routes. Everything else, the device's other
//! capabilities (power management, PCI Express, vendor-specific ones) and its extended space,
//! passes through to VFIO, whose permission tables decide what reaches the device, as for QEMU
//! and Cloud Hypervisor. The capability list is the device's, as VFIO shows it.

use std::ops::Range;
use zone_core::device::pci::{
    Bar, BarKind, ConfigSpace, Header, MSI_CAPABILITY_ID, MSIX_CAPABILITY_ID, Msix, PciError,
    msi_capability,
};

/// The header's end: configuration offsets below it are zones'.
pub(crate) const HEADER_END: u16 = 0x40;
/// Bytes of the emulated MSI capability (64-bit, one vector, no masking).
const MSI_LEN: usize = 14;
/// Bytes of an MSI-X capability.
const MSIX_LEN: usize = 12;

/// Where the device keeps its MSI-X capability, table and PBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MsixPlace {
    /// The capability's offset and next pointer.
    pub(crate) at: u16,
    pub(crate) next: u8,
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
    /// The device's capabilities pointer (0: none).
    pub(crate) capabilities: u8,
    pub(crate) msix: Option<MsixPlace>,
    /// The device's MSI capability (offset, next pointer), where the emulated one fits in its
    /// place.
    pub(crate) msi: Option<(u16, u8)>,
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
    let chain = chain(raw);
    let next = |at: usize| raw.get(at + 1).copied().unwrap_or(0) & 0xfc;
    let fits = |at: usize, len: usize| {
        at + len <= 0x100 && !chain.iter().any(|&(o, _)| o > at && o < at + len)
    };
    let msi = chain
        .iter()
        .find(|c| c.1 == MSI_CAPABILITY_ID)
        .filter(|c| fits(c.0, MSI_LEN))
        .map(|c| (c.0 as u16, next(c.0)));
    Layout {
        header,
        bars,
        capabilities: match chain.first() {
            Some(&(at, _)) => at as u8,
            None => 0,
        },
        msix: chain
            .iter()
            .find(|c| c.1 == MSIX_CAPABILITY_ID)
            .filter(|c| fits(c.0, MSIX_LEN))
            .and_then(|c| msix_place(raw, c.0, next(c.0), &bars)),
        msi,
        intx: raw.get(0x3d).is_some_and(|pin| (1..=4).contains(pin)),
    }
}

/// The device's capabilities `(offset, id)` in list order, walking at most 48 entries inside
/// the standard space; a list that leaves it or loops ends there.
fn chain(raw: &[u8]) -> Vec<(usize, u8)> {
    const STATUS_CAPABILITIES: u16 = 1 << 4;
    let mut out: Vec<(usize, u8)> = Vec::new();
    if u16_at(raw, 0x06) & STATUS_CAPABILITIES == 0 {
        return out;
    }
    let mut at = usize::from(raw.get(0x34).copied().unwrap_or(0) & 0xfc);
    while out.len() < 48 && (0x40..0x100).contains(&at) && !out.iter().any(|c| c.0 == at) {
        let Some(&id) = raw.get(at) else { break };
        out.push((at, id));
        at = usize::from(raw.get(at + 1).copied().unwrap_or(0) & 0xfc);
    }
    out
}

/// The MSI-X capability at `at`, if its table and PBA lie in BARs the guest sees.
fn msix_place(raw: &[u8], at: usize, next: u8, bars: &[Option<Bar>; 6]) -> Option<MsixPlace> {
    let vectors = (u16_at(raw, at + 2) & 0x7ff) + 1;
    let (table, pba) = (u32_at(raw, at + 4), u32_at(raw, at + 8));
    let place = MsixPlace {
        at: at as u16,
        next,
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

/// The guest's configuration space for `layout`: the header, the emulated MSI-X and MSI in
/// their places, and the ranges zones emulates beyond the header.
pub(crate) fn guest_space(layout: &Layout) -> Result<GuestSpace, PciError> {
    let mut config = ConfigSpace::new(&layout.header);
    for (i, bar) in layout.bars.iter().enumerate() {
        if let Some(bar) = bar {
            config.add_bar(i, *bar)?;
        }
    }
    let mut emulated = Vec::new();
    if layout.capabilities != 0 {
        const STATUS_CAPABILITIES: u8 = 1 << 4;
        config.set_bytes(0x34, &[layout.capabilities])?;
        config.set_bytes(0x06, &[STATUS_CAPABILITIES])?;
    }
    let msix = match layout.msix {
        Some(p) => {
            let msix = Msix::new(p.vectors)?;
            let (body, mask) = msix.capability(
                (p.table_bar as u8, p.table_offset as u32),
                (p.pba_bar as u8, p.pba_offset as u32),
            )?;
            config.place_capability(p.at, MSIX_CAPABILITY_ID, p.next, &body, &mask)?;
            emulated.push(p.at..p.at + MSIX_LEN as u16);
            Some((msix, p.at))
        }
        None => None,
    };
    let msi = match layout.msi {
        Some((at, next)) => {
            let (body, mask) = msi_capability();
            config.place_capability(at, MSI_CAPABILITY_ID, next, &body, &mask)?;
            emulated.push(at..at + MSI_LEN as u16);
            Some(at)
        }
        None => None,
    };
    Ok(GuestSpace {
        config,
        msix,
        msi,
        emulated,
    })
}

/// What [`guest_space`] makes.
pub(crate) struct GuestSpace {
    pub(crate) config: ConfigSpace,
    pub(crate) msix: Option<(Msix, u16)>,
    pub(crate) msi: Option<u16>,
    /// The configuration ranges past the header that zones emulates (MSI-X, MSI).
    pub(crate) emulated: Vec<Range<u16>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use zone_core::device::pci::ConfigChange;

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
    fn the_guest_sees_the_header_and_the_emulated_msix_in_the_devices_place() {
        let l = layout(&nvme_like(), sizes);
        assert_eq!(
            (l.header.vendor_id, l.header.device_id, l.header.class),
            (0x1b36, 0x0010, 0x01_08_02)
        );
        assert_eq!(l.header.interrupt_pin, 0, "INTA# only once INTx is routed");
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
                at: 0x80,
                next: 0,
                vectors: 65,
                table_bar: 0,
                table_offset: 0x2000,
                pba_bar: 0,
                pba_offset: 0x3000
            })
        );
        let GuestSpace {
            mut config,
            msix,
            msi,
            emulated,
        } = guest_space(&l).unwrap();
        let (msix, at) = msix.unwrap();
        assert_eq!((at, msi), (0x80, None), "the device has no MSI");
        assert_eq!(msix.vectors(), 65);
        assert_eq!(emulated, vec![0x80..0x8c]);
        // The device's list: PM first, then PCIe, then the emulated MSI-X, last.
        assert_eq!(config.read(0x34, 1), 0x40);
        assert_eq!(config.read(0x06, 2) & 0x10, 0x10);
        assert_eq!(config.read(0x80, 2), 0x0011);
        assert_eq!(config.read(0x82, 2), 64, "65 vectors");
        assert_eq!(
            config.write(0x82, 2, 0x8000),
            Some(ConfigChange::Capability {
                capability: 0x80,
                id: MSIX_CAPABILITY_ID
            })
        );
        assert_eq!(config.read(0x30, 4), 0, "no expansion ROM");
    }

    /// edu as the lab shows it: a 1 MiB BAR 0 and a 64-bit MSI capability at 0x40.
    fn edu_like() -> Vec<u8> {
        let mut raw = vec![0u8; 256];
        raw[0..4].copy_from_slice(&[0x34, 0x12, 0xe8, 0x11]);
        raw[6] = 0x10;
        raw[0x10..0x14].copy_from_slice(&0xfea0_0000u32.to_le_bytes());
        raw[0x34] = 0x40;
        raw[0x3d] = 1;
        raw[0x40..0x44].copy_from_slice(&[0x05, 0x00, 0x80, 0x00]);
        raw
    }

    #[test]
    fn a_device_with_msi_gets_the_emulated_msi_in_its_place() {
        let edu = |i| if i == 0 { 1 << 20 } else { 0 };
        let l = layout(&edu_like(), edu);
        assert!(l.intx, "edu has INTA#");
        assert_eq!((l.msi, l.msix), (Some((0x40, 0)), None));
        let GuestSpace {
            config,
            msix,
            msi,
            emulated,
        } = guest_space(&l).unwrap();
        assert!(msix.is_none());
        assert_eq!(msi, Some(0x40));
        assert_eq!(emulated, vec![0x40..0x4e]);
        assert_eq!(
            config.capabilities().collect::<Vec<_>>(),
            vec![(0x40, MSI_CAPABILITY_ID)]
        );
        // A 32-bit MSI capability (10 bytes) followed right after by another: the emulated
        // 14 bytes do not fit in its place, so it is not emulated.
        let mut raw = edu_like();
        raw[0x41] = 0x4c;
        raw[0x4c..0x4e].copy_from_slice(&[0x09, 0x00]);
        assert_eq!(layout(&raw, edu).msi, None);
        // MSI and MSI-X both: both emulated.
        let mut raw = nvme_like();
        raw[0x81] = 0xa0;
        raw[0xa0..0xa2].copy_from_slice(&[0x05, 0x00]);
        let l = layout(&raw, sizes);
        assert_eq!(l.msi, Some((0xa0, 0)));
        let space = guest_space(&l).unwrap();
        assert_eq!(
            space.config.read(0x80, 2),
            0xa011,
            "MSI-X's next pointer kept"
        );
        assert_eq!(space.emulated, vec![0x80..0x8c, 0xa0..0xae]);
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
