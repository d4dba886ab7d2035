//! Guest memory: allocation, registration with KVM, and the access map that decides which guest
//! buffers the host may read or write on the guest's behalf.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

mod huge;

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    Allocate {
        /// Bytes requested.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Building the region collection failed.
    #[error("cannot describe guest memory: {0}")]
    Layout(String),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM refused guest memory slot {slot} at {gpa:#x} ({size} bytes): {source}")]
    Register {
        /// Slot number.
        slot: u32,
        /// Guest physical base.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Allocates anonymous guest memory for `regions` (`(guest address, size)`, sorted).
///
/// Pages are reserved lazily (`MAP_NORESERVE`), excluded from the host's core dumps
/// (`MADV_DONTDUMP`) and not inherited by children the embedder forks (`MADV_DONTFORK`).
pub(crate) fn allocate(regions: &[(u64, u64)]) -> Result<GuestMemoryMmap, MemoryError> {
    collect(regions, Pages::Small)
}

/// As [`allocate`], for a guest that touches much of its memory (a Linux zone): each region is
/// advised `MADV_HUGEPAGE` and, when its guest address is a multiple of 2 MiB, placed at a host
/// address that is one too (see [`huge::hole`]), so that the host backs it with transparent
/// huge pages where it has them (`enabled` set to `always` or `madvise`) and KVM maps the guest's
/// memory 2 MiB at a time: KVM maps a region with 4 KiB pages only when its guest and host
/// addresses differ modulo 2 MiB, whatever backs it. Each first touch of 4 KiB by the guest is
/// then a fault of its own, instead of one per 2 MiB.
pub(crate) fn allocate_huge(regions: &[(u64, u64)]) -> Result<GuestMemoryMmap, MemoryError> {
    collect(regions, Pages::Huge)
}

/// How a region's pages are asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pages {
    Small,
    Huge,
}

fn collect(regions: &[(u64, u64)], pages: Pages) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = regions
        .iter()
        .map(|&(start, size)| region(start, size, pages))
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))
}

fn region(start: u64, size: u64, pages: Pages) -> Result<GuestRegionMmap, MemoryError> {
    let huge = pages == Pages::Huge;
    // KVM's 2 MiB mappings need the host address congruent to the guest address. The hole is
    // dropped once the region is mapped: the reservation around it goes.
    let _hole = (huge && start.is_multiple_of(huge::SIZE))
        .then(|| huge::hole(size))
        .flatten();
    let region = MmapRegion::build(
        None,
        size as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
    )
    .map_err(|source| MemoryError::Allocate { size, source })?;
    let advice = [
        libc::MADV_DONTFORK,
        libc::MADV_DONTDUMP,
        libc::MADV_HUGEPAGE,
    ];
    for advice in &advice[..if huge { 3 } else { 2 }] {
        let advice = *advice;
        // SAFETY: the range is exactly the mapping just created; madvise with these advice values
        // changes no memory contents. Failure only loses the hardening (or the huge pages, on a
        // host without them), so it is ignored.
        unsafe { libc::madvise(region.as_ptr().cast(), region.size(), advice) };
    }
    GuestRegionMmap::new(region, GuestAddress(start))
        .ok_or_else(|| MemoryError::Layout("region end overflows".into()))
}

/// Registers every region of `mem` with the VM, slots numbered from 0.
pub(crate) fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let gpa = region.start_addr().raw_value();
        let size = region.len();
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| MemoryError::Layout(e.to_string()))?;
        let desc = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: `host` points at a live mapping of `size` bytes owned by `mem`, which the zone
        // keeps alive until after the VM fd is closed.
        unsafe { vm.set_user_memory_region(desc) }.map_err(|source| MemoryError::Register {
            slot,
            gpa,
            size,
            source,
        })?;
    }
    Ok(())
}

/// Bytes of guest memory backed by host pages right now (mincore), or None on error.
pub(crate) fn resident_bytes(mem: &GuestMemoryMmap) -> Option<u64> {
    let page = 4096usize;
    let mut total = 0u64;
    for region in mem.iter() {
        let host = mem.get_host_address(region.start_addr()).ok()?;
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `host..host+len` is one live mapping owned by `mem`; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        total += vec.iter().filter(|b| **b & 1 != 0).count() as u64 * page as u64;
    }
    Some(total)
}

/// How the host would touch a guest buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Host reads guest bytes (guest passes data in).
    Read,
    /// Host writes guest bytes (guest receives data).
    Write,
}

/// A guest address range and whether the guest itself may write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) writable: bool,
}

/// The ranges a guest may name in hypercalls: exactly the memory its own page tables let it read
/// (and, for writes, write). System structures, page tables, guard pages and anything beyond
/// guest memory are not in the map, so the host never reads or writes them for the guest.
#[derive(Clone, Debug, Default)]
pub(crate) struct AccessMap {
    spans: Vec<Span>,
}

impl AccessMap {
    /// A map over non-overlapping spans (any order).
    pub(crate) fn new(mut spans: Vec<Span>) -> Self {
        spans.retain(|s| s.end > s.start);
        spans.sort_by_key(|s| s.start);
        debug_assert!(
            spans.windows(2).all(|w| w[0].end <= w[1].start),
            "overlapping spans"
        );
        Self { spans }
    }

    /// Whether `[addr, addr + len)` lies entirely in spans allowing `access`.
    pub(crate) fn allows(&self, addr: u64, len: u64, access: Access) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut cur = addr;
        let mut i = self.spans.partition_point(|s| s.end <= cur);
        while cur < end {
            let Some(span) = self.spans.get(i) else {
                return false;
            };
            if span.start > cur || (access == Access::Write && !span.writable) {
                return false;
            }
            cur = span.end;
            i += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map() -> AccessMap {
        AccessMap::new(vec![
            Span {
                start: 0x3000,
                end: 0x4000,
                writable: true,
            },
            Span {
                start: 0x1000,
                end: 0x2000,
                writable: false,
            },
            Span {
                start: 0x2000,
                end: 0x3000,
                writable: true,
            },
            Span {
                start: 0x8000,
                end: 0x9000,
                writable: true,
            },
        ])
    }

    #[test]
    fn contiguous_spans_combine_and_gaps_reject() {
        let m = map();
        assert!(
            m.allows(0x1800, 0x2000, Access::Read),
            "crosses R into RW spans"
        );
        assert!(
            !m.allows(0x1800, 0x2000, Access::Write),
            "part is read-only"
        );
        assert!(m.allows(0x2000, 0x2000, Access::Write));
        assert!(!m.allows(0x3800, 0x1000, Access::Read), "runs into the gap");
        assert!(!m.allows(0x0, 0x10, Access::Read), "null page");
        assert!(!m.allows(0x8fff, 2, Access::Read), "past the last span");
        assert!(!m.allows(u64::MAX - 1, 4, Access::Read), "wraps");
        assert!(
            m.allows(0xdead_0000_0000, 0, Access::Write),
            "empty buffers touch nothing"
        );
    }

    proptest! {
        #[test]
        fn allows_matches_a_byte_by_byte_model(addr in 0u64..0xa000, len in 0u64..0x3000, write: bool) {
            let m = map();
            let access = if write { Access::Write } else { Access::Read };
            let byte_ok = |a: u64| m.spans.iter().any(|s| s.start <= a && a < s.end && (!write || s.writable));
            let expected = (addr..addr + len).all(byte_ok);
            prop_assert_eq!(m.allows(addr, len, access), expected);
        }
    }
}
