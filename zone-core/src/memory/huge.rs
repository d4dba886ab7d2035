//! A hole at a 2 MiB boundary for the next anonymous mapping of a given size.
//!
//! vm-memory maps guest memory itself (`mmap` with no address, `MAP_FIXED` refused), and a kernel
//! before 6.7 places an anonymous mapping at any 4 KiB boundary. The kernel places a mapping in
//! the highest gap of the address space that fits it, at the gap's top: a hole of exactly the
//! mapping's size, aligned and walled in by two reserved ranges, is where the next mapping of
//! that size goes, unless a higher gap fits it too (or another thread maps there first). The
//! caller gets an aligned mapping in nearly every case and an unaligned one, as before, in the
//! rest: the result is checked by nobody but KVM, which then maps the region 4 KiB at a time.

/// Huge page size (x86-64 PMD).
pub(crate) const SIZE: u64 = 2 << 20;

/// The two reserved ranges around a hole; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Hole {
    walls: [(usize, usize); 2],
}

/// Reserves `size + SIZE` bytes (no memory, no access), then frees the aligned `size` bytes
/// inside. `None` when the address space has no room (the mapping that follows will say so).
pub(crate) fn hole(size: u64) -> Option<Hole> {
    let size = usize::try_from(size).ok()?;
    let span = size.checked_add(SIZE as usize)?;
    // SAFETY: a new private anonymous mapping with no access: it touches no existing memory.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let base = base as usize;
    let start = base.next_multiple_of(SIZE as usize);
    // SAFETY: `start..start + size` lies inside the reservation just made (`start - base` is
    // less than `SIZE`), which nothing else uses.
    unsafe { libc::munmap(start as *mut libc::c_void, size) };
    Some(Hole {
        walls: [
            (base, start - base),
            (start + size, base + span - start - size),
        ],
    })
}

impl Drop for Hole {
    fn drop(&mut self) {
        for (at, len) in self.walls {
            if len > 0 {
                // SAFETY: each wall is what is left of the reservation `hole` made; only this
                // value knows of it.
                unsafe { libc::munmap(at as *mut libc::c_void, len) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `[at, at + len)` is mapped in this process (`/proc/self/maps`).
    fn mapped(at: usize, len: usize) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            );
            a < at + len && at < b
        })
    }

    #[test]
    fn the_hole_is_aligned_and_walled_in() {
        let size = 64 << 20;
        let hole = hole(size as u64).unwrap();
        let [(below, below_len), (above, above_len)] = hole.walls;
        let start = below + below_len;
        assert_eq!(start % SIZE as usize, 0);
        assert_eq!(above, start + size);
        assert_eq!(below_len + above_len, SIZE as usize);
        // (Whether the hole and, after the drop, the walls are free is not asserted: another
        // test's thread may map there at any moment.)
        assert!(mapped(above, above_len), "the wall above is reserved");
        drop(hole);
    }

    #[test]
    fn guest_memory_lands_in_the_hole() {
        // The kernel of this machine may align such a mapping by itself (6.7 and later); the
        // lab's 6.1 does not, and there the region's place comes from the hole alone.
        let mem = super::super::allocate_huge(&[(0, 256 << 20)]).unwrap();
        let host =
            vm_memory::GuestMemoryBackend::get_host_address(&mem, vm_memory::GuestAddress(0))
                .unwrap();
        assert!((host as u64).is_multiple_of(SIZE), "{host:p}");
    }
}
