//! A small first-fit heap over one contiguous region: an address-ordered free list whose
//! neighbouring blocks coalesce on free. It is plain Rust over raw memory, so the host runs its
//! unit tests; the guest runtime wraps it in a spin lock as the global allocator.
//!
//! Every block starts 16-byte aligned and is a multiple of 16 bytes, so any split remainder is
//! either empty or large enough to hold a free-block header.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

/// Block granularity and minimum alignment.
const GRAIN: usize = 16;

#[repr(C)]
struct FreeBlock {
    size: usize,
    next: *mut FreeBlock,
}

const _: () = assert!(core::mem::size_of::<FreeBlock>() <= GRAIN);

/// A first-fit heap. Not thread-safe by itself.
#[derive(Debug)]
pub struct Heap {
    head: *mut FreeBlock,
    size: usize,
    used: usize,
}

// SAFETY: the heap owns its region exclusively (contract of `init`); moving it to another thread
// moves that ownership along. It is not `Sync`: callers lock around it.
unsafe impl Send for Heap {}

impl Heap {
    /// A heap with no memory: every allocation fails until [`Heap::init`].
    pub const fn empty() -> Self {
        Self {
            head: ptr::null_mut(),
            size: 0,
            used: 0,
        }
    }

    /// Hands the region `[start, start + len)` to the heap.
    ///
    /// # Safety
    /// The region must be valid for reads and writes, unused by anything else, and outlive the
    /// heap. `init` must be called at most once.
    pub unsafe fn init(&mut self, start: *mut u8, len: usize) {
        let begin = align_up(start as usize, GRAIN);
        let end = (start as usize).saturating_add(len) & !(GRAIN - 1);
        if begin == 0 || end <= begin {
            return;
        }
        let block = begin as *mut FreeBlock;
        // SAFETY: `block` is inside the caller's region, 16-byte aligned and at least GRAIN bytes
        // from its end, so the header fits.
        unsafe {
            block.write(FreeBlock {
                size: end - begin,
                next: ptr::null_mut(),
            })
        };
        self.head = block;
        self.size = end - begin;
    }

    /// Bytes handed to the heap by `init` (after alignment).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes currently allocated (block-rounded).
    pub fn used(&self) -> usize {
        self.used
    }

    /// Allocates a block that fits `layout`, or returns `None` when no free block is large enough.
    pub fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let (size, align) = block_shape(layout)?;
        let mut link: *mut *mut FreeBlock = &mut self.head;
        // SAFETY: every pointer on the free list was written by `init`, `allocate` or `deallocate`
        // as a header inside the heap's region, so reading and rewriting headers is valid.
        unsafe {
            while !(*link).is_null() {
                let block = *link;
                let start = block as usize;
                let end = start + (*block).size;
                let at = align_up(start, align);
                if let Some(at_end) = at.checked_add(size)
                    && at_end <= end
                {
                    let mut rest = (*block).next;
                    if at_end < end {
                        let tail = at_end as *mut FreeBlock;
                        tail.write(FreeBlock {
                            size: end - at_end,
                            next: rest,
                        });
                        rest = tail;
                    }
                    if at == start {
                        *link = rest;
                    } else {
                        (*block).size = at - start;
                        (*block).next = rest;
                    }
                    self.used += size;
                    return NonNull::new(at as *mut u8);
                }
                link = &mut (*block).next;
            }
        }
        None
    }

    /// Returns a block to the heap, merging it with free neighbours.
    ///
    /// # Safety
    /// `ptr` must come from [`Heap::allocate`] on this heap with the same `layout`, and must not be
    /// freed twice.
    pub unsafe fn deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let Some((size, _)) = block_shape(layout) else {
            return;
        };
        let addr = ptr.as_ptr() as usize;
        let mut prev: *mut FreeBlock = ptr::null_mut();
        let mut next = self.head;
        // SAFETY: list pointers are valid headers (see `allocate`); `addr` is a block the caller
        // owned, at least `size` bytes and 16-byte aligned, so a header fits there.
        unsafe {
            while !next.is_null() && (next as usize) < addr {
                prev = next;
                next = (*next).next;
            }
            let block = addr as *mut FreeBlock;
            block.write(FreeBlock { size, next });
            if !next.is_null() && addr + size == next as usize {
                (*block).size += (*next).size;
                (*block).next = (*next).next;
            }
            if prev.is_null() {
                self.head = block;
            } else if prev as usize + (*prev).size == addr {
                (*prev).size += (*block).size;
                (*prev).next = (*block).next;
            } else {
                (*prev).next = block;
            }
        }
        self.used -= size;
    }

    /// Number of blocks on the free list and the size of the largest one.
    pub fn free_blocks(&self) -> (usize, usize) {
        let (mut count, mut largest) = (0, 0);
        let mut cur = self.head;
        while !cur.is_null() {
            // SAFETY: list pointers are valid headers (see `allocate`).
            let block = unsafe { &*cur };
            count += 1;
            largest = largest.max(block.size);
            cur = block.next;
        }
        (count, largest)
    }
}

fn align_up(value: usize, align: usize) -> usize {
    (value + align - 1) & !(align - 1)
}

/// Block size and alignment for a layout, or `None` when the size overflows.
fn block_shape(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size().max(GRAIN).checked_add(GRAIN - 1)? & !(GRAIN - 1);
    Some((size, layout.align().max(GRAIN)))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn heap_over(buf: &mut Vec<u8>) -> Heap {
        let mut heap = Heap::empty();
        // SAFETY: the test keeps `buf` alive and untouched for the heap's lifetime.
        unsafe { heap.init(buf.as_mut_ptr(), buf.len()) };
        heap
    }

    #[test]
    fn empty_heap_fails_allocations() {
        let mut heap = Heap::empty();
        assert!(
            heap.allocate(Layout::from_size_align(8, 8).unwrap())
                .is_none()
        );
    }

    #[test]
    fn allocations_are_aligned_disjoint_and_coalesce_back() {
        let mut buf = std::vec![0u8; 1 << 18];
        let mut heap = heap_over(&mut buf);
        let total = heap.size();
        let mut live = Vec::new();
        for (i, align) in [1usize, 8, 16, 64, 256, 4096]
            .iter()
            .cycle()
            .take(60)
            .enumerate()
        {
            let layout = Layout::from_size_align(1 + i * 7, *align).unwrap();
            let p = heap.allocate(layout).expect("fits");
            assert_eq!(p.as_ptr() as usize % align, 0);
            live.push((p, layout));
        }
        let mut spans: Vec<_> = live
            .iter()
            .map(|(p, l)| (p.as_ptr() as usize, p.as_ptr() as usize + l.size()))
            .collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "blocks overlap");
        // Free every other block, then the rest: the heap must return to one block.
        for (p, l) in live.iter().step_by(2) {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { heap.deallocate(*p, *l) };
        }
        for (p, l) in live.iter().skip(1).step_by(2) {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { heap.deallocate(*p, *l) };
        }
        assert_eq!(heap.used(), 0);
        assert_eq!(heap.free_blocks(), (1, total));
    }

    #[test]
    fn exhaustion_returns_none_and_huge_sizes_do_not_overflow() {
        let mut buf = std::vec![0u8; 4096];
        let mut heap = heap_over(&mut buf);
        assert!(
            heap.allocate(Layout::from_size_align(8192, 8).unwrap())
                .is_none()
        );
        let huge = Layout::from_size_align(isize::MAX as usize - 64, 1).unwrap();
        assert!(heap.allocate(huge).is_none());
        let a = heap
            .allocate(Layout::from_size_align(2048, 16).unwrap())
            .unwrap();
        assert!(
            heap.allocate(Layout::from_size_align(4000, 16).unwrap())
                .is_none()
        );
        // SAFETY: allocated above, freed once.
        unsafe { heap.deallocate(a, Layout::from_size_align(2048, 16).unwrap()) };
        assert!(
            heap.allocate(Layout::from_size_align(4000, 16).unwrap())
                .is_some()
        );
    }
}
