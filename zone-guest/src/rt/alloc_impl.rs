//! The global allocator: [`Heap`] over the region the host reserved, behind a spin lock.
//! Initialised lazily by whichever vCPU allocates first.

use crate::heap::Heap;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

struct LockedHeap {
    locked: AtomicBool,
    ready: UnsafeCell<bool>,
    heap: UnsafeCell<Heap>,
}

// SAFETY: `heap` and `ready` are only touched while `locked` is held (see `with`).
unsafe impl Sync for LockedHeap {}

impl LockedHeap {
    fn with<R>(&self, f: impl FnOnce(&mut Heap) -> R) -> R {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference to `ready` and `heap`.
        let result = unsafe {
            let heap = &mut *self.heap.get();
            if !*self.ready.get() {
                *self.ready.get() = true;
                let (start, end) = super::heap_bounds();
                if start != 0 && end > start {
                    // The host reserved [start, end) for the heap, mapped user read-write, and
                    // nothing else uses it.
                    heap.init(start as *mut u8, (end - start) as usize);
                }
            }
            f(heap)
        };
        self.locked.store(false, Ordering::Release);
        result
    }
}

// SAFETY: allocation and deallocation delegate to `Heap`, which returns disjoint blocks fitting
// the requested layout and takes back only blocks it handed out (GlobalAlloc's contract).
unsafe impl GlobalAlloc for LockedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|heap| heap.allocate(layout))
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with this layout.
            self.with(|heap| unsafe { heap.deallocate(ptr, layout) });
        }
    }
}

#[global_allocator]
static HEAP: LockedHeap = LockedHeap {
    locked: AtomicBool::new(false),
    ready: UnsafeCell::new(false),
    heap: UnsafeCell::new(Heap::empty()),
};

/// Bytes currently allocated on the guest heap.
pub fn heap_used() -> usize {
    HEAP.with(|heap| heap.used())
}
