//! Where a micro zone's program, heap and stacks go in guest memory. The fixed system area below
//! `IMAGE_BASE` is described in `zone_guest::abi::layout`.
//!
//! ```text
//! 0            4 KiB  system tables, stubs, boot info, args, mailboxes, CPL0 stacks, page tables
//! IMAGE_BASE          program segments (W^X)
//! image end           heap (grows up)
//!                     guard page | stack of vCPU n-1
//!                     ...
//! memory end          guard page | stack of vCPU 0
//! ```

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

/// The computed placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MicroLayout {
    pub(crate) mem_size: u64,
    pub(crate) image_end: u64,
    pub(crate) heap: Range<u64>,
    /// Stack of vCPU i (its top is `end`); a guard page sits right below each.
    pub(crate) stacks: Vec<Range<u64>>,
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
    let stack = stack_size.max(MIN_STACK_SIZE).next_multiple_of(PAGE_SIZE);
    let image_end = image_end
        .max(layout::IMAGE_BASE)
        .next_multiple_of(PAGE_SIZE);
    let per_vcpu = stack + PAGE_SIZE;
    let stacks_total = per_vcpu * u64::from(vcpus);
    let needed = image_end + MIN_HEAP + stacks_total;
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
    let stacks = (0..u64::from(vcpus))
        .map(|i| {
            let top = mem_size - i * per_vcpu;
            top - stack..top
        })
        .collect();
    Ok(MicroLayout {
        mem_size,
        image_end,
        heap: image_end..mem_size - stacks_total,
        stacks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_at_the_top_with_guards_and_heap_in_between() {
        let l = plan(0x403000, 2, 64 << 10, 8 << 20).unwrap();
        let top = 8u64 << 20;
        assert_eq!(l.stacks[0], top - 0x10000..top);
        assert_eq!(
            l.stacks[1],
            top - 0x21000..top - 0x11000,
            "one guard page between stacks"
        );
        assert_eq!(
            l.heap,
            0x403000..top - 0x22000,
            "a guard page below the lowest stack"
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
