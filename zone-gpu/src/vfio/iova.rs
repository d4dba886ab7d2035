//! The IOMMU's usable I/O virtual addresses (`VFIO_IOMMU_GET_INFO`'s IOVA-range capability):
//! guest RAM is mapped for DMA at its guest-physical addresses, so every RAM region must lie in
//! a usable range. The host reserves some (on x86 the MSI window 0xfee00000-0xfeefffff, and any
//! reserved region of the device's group); a DMA map there would fail or, worse, alias.

use std::os::fd::AsRawFd;

/// `VFIO_IOMMU_GET_INFO`: `_IO(VFIO_TYPE, VFIO_BASE + 12)`.
const VFIO_IOMMU_GET_INFO: libc::c_ulong = 0x3b70;
/// `vfio_iommu_type1_info.flags`: a capability chain follows.
const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
/// The IOVA-range capability's ID.
const CAP_IOVA_RANGE: u16 = 1;
/// Size of `vfio_iommu_type1_info` (argsz, flags, iova_pgsizes, cap_offset, pad).
const INFO_SIZE: usize = 24;
/// The largest answer read (a handful of capabilities; a kernel asking for more is refused).
const MAX_INFO: usize = 64 << 10;
/// Most capabilities walked (a chain that loops is cut).
const MAX_CAPS: usize = 64;

/// Usable ranges, each `[start, end]` inclusive as VFIO reports them.
pub(crate) type Ranges = Vec<(u64, u64)>;

/// The container's usable IOVA ranges; `Ok(None)` when the kernel does not report them (before
/// Linux 5.4), so nothing can be checked.
pub(crate) fn usable(container: &impl AsRawFd) -> std::io::Result<Option<Ranges>> {
    let mut buf = vec![0u8; INFO_SIZE];
    loop {
        let argsz = u32::try_from(buf.len()).map_err(std::io::Error::other)?;
        buf[..4].copy_from_slice(&argsz.to_le_bytes());
        // SAFETY: the ioctl writes at most `argsz` bytes into `buf`, which is that long and
        // lives across the call.
        let rc =
            unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_GET_INFO, buf.as_mut_ptr()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let wanted = read_u32(&buf, 0).unwrap_or(0) as usize;
        if wanted <= buf.len() {
            return Ok(parse(&buf));
        }
        if wanted > MAX_INFO {
            return Err(std::io::Error::other(format!(
                "VFIO_IOMMU_GET_INFO wants {wanted} bytes"
            )));
        }
        buf = vec![0u8; wanted];
    }
}

/// The IOVA ranges in a `vfio_iommu_type1_info` answer, if it has the capability. A chain
/// that leaves the buffer, or loops, ends the walk.
pub(crate) fn parse(info: &[u8]) -> Option<Ranges> {
    if read_u32(info, 4)? & VFIO_IOMMU_INFO_CAPS == 0 {
        return None;
    }
    let mut at = read_u32(info, 16)? as usize;
    for _ in 0..MAX_CAPS {
        if at < INFO_SIZE {
            return None;
        }
        let id = u16::from_le_bytes(info.get(at..at.checked_add(2)?)?.try_into().ok()?);
        if id == CAP_IOVA_RANGE {
            let count = read_u32(info, at.checked_add(8)?)? as usize;
            let mut ranges = Vec::new();
            for i in 0..count.min(MAX_INFO / 16) {
                let entry = at.checked_add(16)?.checked_add(i.checked_mul(16)?)?;
                ranges.push((read_u64(info, entry)?, read_u64(info, entry + 8)?));
            }
            return Some(ranges);
        }
        at = read_u32(info, at.checked_add(4)?)? as usize;
        if at == 0 {
            return None;
        }
    }
    None
}

/// The first part of `[start, start + len)` outside every range, if any.
pub(crate) fn outside(ranges: &Ranges, start: u64, len: u64) -> Option<u64> {
    let last = start.checked_add(len)?.checked_sub(1)?;
    let mut at = start;
    while at <= last {
        match ranges.iter().find(|(s, e)| *s <= at && at <= *e) {
            Some(&(_, end)) if end >= last => return None,
            Some(&(_, end)) => at = end + 1,
            None => return Some(at),
        }
    }
    None
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as Linux writes it: the info, a migration capability (id 2), then the IOVA
    /// ranges of an x86 host (everything but the MSI window).
    fn answer() -> Vec<u8> {
        let mut b = vec![0u8; INFO_SIZE];
        b[4..8].copy_from_slice(&(VFIO_IOMMU_INFO_CAPS | 1).to_le_bytes());
        b[16..20].copy_from_slice(&(INFO_SIZE as u32).to_le_bytes());
        // Capability 2 at 24, 8 bytes of header + 8 of body, next at 40.
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&40u32.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        // IOVA ranges at 40, last in the chain.
        b.extend_from_slice(&CAP_IOVA_RANGE.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for (s, e) in [(0u64, 0xfedf_ffff_u64), (0xfef0_0000, (1 << 48) - 1)] {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
        }
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b
    }

    #[test]
    fn finds_the_ranges_behind_another_capability() {
        let ranges = parse(&answer()).unwrap();
        assert_eq!(ranges, vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 48) - 1)]);
        // Guest RAM below 3 GiB and above 4 GiB fits; a region over the MSI window does not.
        assert_eq!(outside(&ranges, 0, 3 << 30), None);
        assert_eq!(outside(&ranges, 4 << 30, 8 << 30), None);
        assert_eq!(
            outside(&ranges, 0xf000_0000, 0x1000_0000),
            Some(0xfee0_0000)
        );
        assert_eq!(outside(&ranges, 1 << 48, 4096), Some(1 << 48));
    }

    #[test]
    fn lying_answers_give_no_ranges_and_never_panic() {
        let good = answer();
        assert_eq!(parse(&good[..INFO_SIZE]), None, "the chain is cut off");
        let mut no_caps = good.clone();
        no_caps[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(parse(&no_caps), None, "no capability flag");
        let mut looping = good.clone();
        looping[28..32].copy_from_slice(&24u32.to_le_bytes());
        assert_eq!(parse(&looping), None, "a chain that loops");
        let mut huge = good.clone();
        huge[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge), None, "more ranges than the answer holds");
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
    }
}
