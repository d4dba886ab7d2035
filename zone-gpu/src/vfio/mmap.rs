//! The device's BARs mapped into this process (VFIO's mmap-able regions), and the parts of them
//! the guest may reach without a trap: everything but the pages of the MSI-X table and PBA,
//! which zones emulates.

use super::config::MsixPlace;
use std::os::fd::AsRawFd;
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use zone_core::device::pci::{Bar, BarMapping};

/// `VFIO_REGION_INFO_FLAG_MMAP`.
const REGION_MMAP: u32 = 1 << 2;
const PAGE: u64 = 4096;

/// The device's mappings in this process; unmapped when dropped (after the bus has taken them
/// out of the guest: `PciBus` removes its KVM slots before it drops its functions).
#[derive(Debug, Default)]
pub(crate) struct Mmaps {
    areas: Vec<(usize, usize)>,
    /// Per BAR, the parts the guest may reach directly.
    pub(crate) mappings: [Vec<BarMapping>; 6],
}

// SAFETY: the mappings are plain shared memory of the device; nothing in this struct is tied to
// the thread that made it.
unsafe impl Send for Mmaps {}

impl Drop for Mmaps {
    fn drop(&mut self) {
        for &(host, len) in &self.areas {
            // SAFETY: an mmap this struct made and owns; nothing refers to it any more.
            unsafe { libc::munmap(host as *mut libc::c_void, len) };
        }
    }
}

impl Mmaps {
    /// Bytes the guest may reach without a trap.
    pub(crate) fn direct_bytes(&self) -> u64 {
        self.mappings.iter().flatten().map(BarMapping::len).sum()
    }
}

/// Maps every mmap-able part of the BARs in `bars`, leaving out the pages of `msix`'s table and
/// PBA. A part that cannot be mapped stays trapped (said in the log).
pub(crate) fn map(device: &VfioDevice, bars: &[Option<Bar>; 6], msix: Option<MsixPlace>) -> Mmaps {
    let mut out = Mmaps::default();
    for (i, bar) in bars.iter().enumerate() {
        let Some(bar) = bar else { continue };
        let index = i as u32;
        if device.get_region_flags(index) & REGION_MMAP == 0 {
            continue;
        }
        let sparse = device
            .get_region_caps(index)
            .into_iter()
            .find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => Some(s.areas),
                _ => None,
            });
        let areas: Vec<(u64, u64)> = match sparse {
            Some(a) => a.iter().map(|a| (a.offset, a.size)).collect(),
            None => vec![(0, bar.size)],
        };
        let mut trapped = Vec::new();
        if let Some(p) = msix {
            if p.table_bar == i {
                trapped.push((p.table_offset, p.table_len()));
            }
            if p.pba_bar == i {
                trapped.push((p.pba_offset, p.pba_len()));
            }
        }
        let region = device.get_region_offset(index);
        for (offset, len) in areas {
            if offset % PAGE != 0 || len % PAGE != 0 || len == 0 || offset + len > bar.size {
                continue;
            }
            // SAFETY: a fresh shared mapping of the device's region; the kernel checks the
            // range against the region.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    device.as_raw_fd(),
                    (region + offset) as libc::off_t,
                )
            };
            if host == libc::MAP_FAILED {
                tracing::warn!(target: "zones::device", bar = i, offset, error = %std::io::Error::last_os_error(), "BAR part stays trapped");
                continue;
            }
            out.areas.push((host as usize, len as usize));
            for (start, part) in direct_parts(offset, len, &trapped) {
                let at = (host as usize + (start - offset) as usize) as *mut u8;
                // SAFETY: inside the mapping just made, which `out` owns and unmaps only when
                // it is dropped, after the guest's view of it is gone.
                out.mappings[i].push(unsafe { BarMapping::new(start, part, at) });
            }
        }
    }
    out
}

/// The page-aligned parts of `offset..offset + len` outside every `trapped` range (each widened
/// to whole pages).
fn direct_parts(offset: u64, len: u64, trapped: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut holes: Vec<(u64, u64)> = trapped
        .iter()
        .filter(|(_, l)| *l > 0)
        .map(|&(o, l)| (o / PAGE * PAGE, (o + l).div_ceil(PAGE) * PAGE))
        .collect();
    holes.sort();
    let mut parts = Vec::new();
    let mut at = offset;
    let end = offset + len;
    for (start, stop) in holes {
        if stop <= at || start >= end {
            continue;
        }
        if start > at {
            parts.push((at, start - at));
        }
        at = at.max(stop);
    }
    if at < end {
        parts.push((at, end - at));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_msix_pages_are_cut_out_and_the_rest_is_direct() {
        // nvme's BAR 0: 16 KiB, table at 0x2000 (65 vectors: 1040 bytes), PBA at 0x3000.
        assert_eq!(
            direct_parts(0, 0x4000, &[(0x2000, 1040), (0x3000, 16)]),
            vec![(0, 0x2000)]
        );
        // A table straddling a page boundary takes both pages.
        assert_eq!(
            direct_parts(0, 0x8000, &[(0x1ff0, 32)]),
            vec![(0, 0x1000), (0x3000, 0x5000)]
        );
        assert_eq!(direct_parts(0x1000, 0x1000, &[]), vec![(0x1000, 0x1000)]);
        assert_eq!(direct_parts(0, 0x1000, &[(0, 8)]), vec![]);
    }
}
