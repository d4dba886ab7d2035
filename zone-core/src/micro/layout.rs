//! Where a micro zone's program, heap and stacks go in guest memory. The fixed system area below
//! `IMAGE_BASE` is described in `zone_guest::abi::layout`.
//!
//! ```text
//! 0            4 KiB  system tables, stubs, args, CPL0 stacks, page tables
//! IMAGE_BASE          program segments (W^X)
//! image end           heap (grows up)
//!                     guard page | stack of vCPU n-1
//!                     ...
//!                     guard page | stack of vCPU 0 | boot info | mailbox 0 .. mailbox n-1
//! memory end          (up to 7 unused pages)
//! ```
//!
//! vCPU 0's first run touches its stack, the boot info and its mailbox before its first
//! hypercall. The top page of its stack starts a run of eight pages (32 KiB-aligned) that holds
//! the other two: under shadow paging KVM fills in the rest of such a run when the guest first
//! touches one of its pages, for every page the host has already written, so the three cost
//! one page fault instead of three (about 45 us each on the development machine's KVM).

use std::ops::Range;
use zone_guest::abi::{PAGE_SIZE, layout};

/// Largest micro-zone memory.
pub const MAX_MEMORY: u64 = 64 << 30;
/// Default stack per vCPU.
pub const DEFAULT_STACK_SIZE: u64 = 256 << 10;
/// Smallest stack per vCPU.
pub const MIN_STACK_SIZE: u64 = 16 << 10;
/// Smallest heap a layout leaves.
pub const MIN_HEAP: u64 = 64 << 10;

/// Why a layout does not fit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Not enough guest memory.
    #[error(
        "the program needs at least {needed_mib} MiB of guest memory (image to {image_end:#x}, {vcpus} stack(s) of {stack} KiB, a {heap} KiB heap); {available_mib} MiB given: raise memory_mib"
    )]
    MemoryTooSmall {
        /// MiB needed (rounded up).
        needed_mib: u64,
        /// MiB given.
        available_mib: u64,
        /// End of the program image.
        image_end: u64,
        /// vCPUs.
        vcpus: u32,
        /// Stack per vCPU in KiB.
        stack: u64,
        /// Minimum heap in KiB.
        heap: u64,
    },
    /// More memory than a micro zone may have.
    #[error("{0} MiB is more than a micro zone may have ({max} MiB)", max = MAX_MEMORY >> 20)]
    MemoryTooLarge(u64),
}

/// Pages KVM's shadow paging fills in together (`PTE_PREFETCH_NUM`): an aligned run of eight.
const PREFETCH_RUN: u64 = 8 * PAGE_SIZE;

/// The computed placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MicroLayout {
    pub(crate) mem_size: u64,
    pub(crate) image_end: u64,
    pub(crate) heap: Range<u64>,
    /// Stack of vCPU i (its top is `end`); a guard page sits right below each.
    pub(crate) stacks: Vec<Range<u64>>,
    /// The boot-info page, right above vCPU 0's stack.
    pub(crate) boot_info: u64,
    /// vCPU 0's mailbox page, right above the boot info; vCPU i's is i pages higher.
    pub(crate) mailboxes: u64,
}

impl MicroLayout {
    /// vCPU `index`'s mailbox page.
    pub(crate) fn mailbox(&self, index: u32) -> u64 {
        self.mailboxes + u64::from(index) * PAGE_SIZE
    }
}

/// Places heap and stacks for a program whose image ends at `image_end`.
pub(crate) fn plan(
    image_end: u64,
    vcpus: u32,
    stack_size: u64,
    mem_size: u64,
) -> Result<MicroLayout, LayoutError> {
    if mem_size > MAX_MEMORY {
        return Err(LayoutError::MemoryTooLarge(mem_size >> 20));
    }
    // No stack larger than the largest memory fits; the clamp keeps the sums below in range.
    let stack = stack_size
        .clamp(MIN_STACK_SIZE, MAX_MEMORY)
        .next_multiple_of(PAGE_SIZE);
    let image_end = image_end
        .max(layout::IMAGE_BASE)
        .next_multiple_of(PAGE_SIZE);
    let per_vcpu = stack + PAGE_SIZE;
    let stacks_total = per_vcpu * u64::from(vcpus);
    // Above vCPU 0's stack: the boot info and the mailboxes.
    let above = (1 + u64::from(vcpus)) * PAGE_SIZE;
    // The lowest address vCPU 0's top stack page may take, so that the heap keeps its minimum.
    let lowest_top =
        (image_end + MIN_HEAP + stacks_total - PAGE_SIZE).next_multiple_of(PREFETCH_RUN);
    let needed = lowest_top + PAGE_SIZE + above;
    if mem_size < needed {
        return Err(LayoutError::MemoryTooSmall {
            needed_mib: needed.div_ceil(1 << 20),
            available_mib: mem_size >> 20,
            image_end,
            vcpus,
            stack: stack >> 10,
            heap: MIN_HEAP >> 10,
        });
    }
    let top_page = (mem_size - PAGE_SIZE - above) / PREFETCH_RUN * PREFETCH_RUN;
    let stack0_end = top_page + PAGE_SIZE;
    let stacks = (0..u64::from(vcpus))
        .map(|i| {
            let top = stack0_end - i * per_vcpu;
            top - stack..top
        })
        .collect();
    Ok(MicroLayout {
        mem_size,
        image_end,
        heap: image_end..stack0_end - stacks_total,
        stacks,
        boot_info: stack0_end,
        mailboxes: stack0_end + PAGE_SIZE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_at_the_top_with_guards_and_heap_in_between() {
        let l = plan(0x403000, 2, 64 << 10, 8 << 20).unwrap();
        let top = 8u64 << 20;
        // Boot info and two mailboxes (3 pages) above vCPU 0's stack, whose top page starts a
        // 32 KiB run: 8 MiB - 32 KiB.
        let run = top - 0x8000;
        assert_eq!(l.stacks[0], run + 0x1000 - 0x10000..run + 0x1000);
        assert_eq!(
            (l.boot_info, l.mailbox(0), l.mailbox(1)),
            (run + 0x1000, run + 0x2000, run + 0x3000)
        );
        assert_eq!(
            l.stacks[1],
            l.stacks[0].start - 0x11000..l.stacks[0].start - 0x1000,
            "one guard page between stacks"
        );
        assert_eq!(
            l.heap,
            0x403000..l.stacks[1].start - 0x1000,
            "a guard page below the lowest stack"
        );
    }

    #[test]
    fn the_first_run_pages_share_a_prefetch_run_and_everything_fits() {
        for vcpus in [1, 2, 5, 6, 7, 64] {
            for mem in [4u64 << 20, (8 << 20) + 0x3000, 64 << 20] {
                for stack in [16 << 10, 20 << 10, DEFAULT_STACK_SIZE] {
                    let Ok(l) = plan(0x405000, vcpus, stack, mem) else {
                        continue;
                    };
                    let top_page = l.stacks[0].end - PAGE_SIZE;
                    assert_eq!(top_page % PREFETCH_RUN, 0, "{l:?}");
                    assert_eq!(l.boot_info, top_page + PAGE_SIZE);
                    assert_eq!(l.mailbox(0), top_page + 2 * PAGE_SIZE);
                    assert!(l.mailbox(vcpus - 1) + PAGE_SIZE <= mem, "{l:?}");
                    assert!(l.heap.end - l.heap.start >= MIN_HEAP, "{l:?}");
                    let mut ranges: Vec<_> = l
                        .stacks
                        .iter()
                        .map(|s| (s.start - PAGE_SIZE, s.end))
                        .collect();
                    ranges.push((l.heap.start, l.heap.end));
                    ranges.push((l.boot_info, l.mailbox(vcpus - 1) + PAGE_SIZE));
                    ranges.sort();
                    assert!(
                        ranges.windows(2).all(|w| w[0].1 <= w[1].0),
                        "overlap: {ranges:x?}"
                    );
                }
            }
        }
        // The memory a refused layout asks for is enough.
        let err = plan(0x405000, 3, 20 << 10, 1 << 20).unwrap_err();
        let LayoutError::MemoryTooSmall { needed_mib, .. } = err else {
            panic!("{err:?}");
        };
        assert!(plan(0x405000, 3, 20 << 10, needed_mib << 20).is_ok());
        assert!(plan(0x405000, 3, 20 << 10, u64::MAX / 2).is_err());
        assert!(
            plan(0x405000, 1, u64::MAX, 64 << 20).is_err(),
            "no overflow"
        );
    }

    #[test]
    fn too_small_and_too_large_memory_are_explained() {
        let err = plan(0x800000, 1, DEFAULT_STACK_SIZE, 8 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::MemoryTooSmall {
                    needed_mib: 9,
                    available_mib: 8,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("memory_mib"));
        assert!(matches!(
            plan(0x400000, 1, 0, MAX_MEMORY + (1 << 20)),
            Err(LayoutError::MemoryTooLarge(_))
        ));
    }
}
