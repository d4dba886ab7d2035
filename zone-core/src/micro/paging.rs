//! Identity-mapped x86-64 4-level page tables written straight into guest memory. Large aligned
//! ranges use 2 MiB pages; everything else 4 KiB pages. Intermediate entries are permissive; the
//! leaf carries the real permissions (user, writable, no-execute).
//!
//! Every entry is written with its accessed bit set, and every writable leaf with its dirty bit
//! set: nothing in a micro zone reads them, and the processor (or, under shadow paging, KVM)
//! would otherwise write them on the first access. Under shadow paging that first write to a
//! page KVM had mapped for a read costs one more exit to the host (KVM maps a writable page
//! read-only until its dirty bit is set), as the GDT's descriptors are written accessed for the
//! same reason.

use std::ops::Range;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PAGE: u64 = 0x1000;
const LARGE: u64 = 0x20_0000;

/// Leaf permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageFlags {
    pub(crate) user: bool,
    pub(crate) write: bool,
    pub(crate) exec: bool,
}

impl PageFlags {
    pub(crate) const fn new(user: bool, write: bool, exec: bool) -> Self {
        Self { user, write, exec }
    }

    fn bits(self) -> u64 {
        PRESENT
            | ACCESSED
            | if self.write { WRITABLE | DIRTY } else { 0 }
            | if self.user { USER } else { 0 }
            | if self.exec { 0 } else { NO_EXECUTE }
    }
}

/// Why a mapping could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// The page-table area is full.
    #[error("page-table area exhausted")]
    OutOfTables,
    /// An address is mapped twice.
    #[error("guest page {0:#x} is mapped twice")]
    Conflict(u64),
    /// A range is not page-aligned.
    #[error("range {0:#x?} is not page-aligned")]
    Unaligned(Range<u64>),
    /// Guest memory access failed.
    #[error("writing page tables: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Builds page tables in `area` of guest memory.
pub(crate) struct PageTables<'m> {
    mem: &'m GuestMemoryMmap,
    pml4: u64,
    next: u64,
    end: u64,
}

impl<'m> PageTables<'m> {
    /// Tables in `area`, the root first: its address is `area.start`, known before anything is
    /// mapped.
    pub(crate) fn new(mem: &'m GuestMemoryMmap, area: Range<u64>) -> Result<Self, PagingError> {
        let mut pt = Self {
            mem,
            pml4: 0,
            next: area.start,
            end: area.end,
        };
        pt.pml4 = pt.alloc()?;
        Ok(pt)
    }

    /// Physical address of the top-level table (CR3).
    pub(crate) fn root(&self) -> u64 {
        self.pml4
    }

    /// Bytes of table memory used so far.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.next - (self.pml4)
    }

    fn alloc(&mut self) -> Result<u64, PagingError> {
        if self.next + PAGE > self.end {
            return Err(PagingError::OutOfTables);
        }
        let table = self.next;
        self.next += PAGE;
        self.mem
            .write_slice(&[0u8; PAGE as usize], GuestAddress(table))?;
        Ok(table)
    }

    fn entry(&self, table: u64, index: u64) -> Result<(GuestAddress, u64), PagingError> {
        let at = GuestAddress(table + index * 8);
        Ok((at, self.mem.read_obj::<u64>(at)?))
    }

    /// The next-level table under `table[index]`, created if absent.
    fn descend(&mut self, table: u64, index: u64, va: u64) -> Result<u64, PagingError> {
        let (at, e) = self.entry(table, index)?;
        if e & PRESENT != 0 {
            if e & HUGE != 0 {
                return Err(PagingError::Conflict(va));
            }
            return Ok(e & ADDR_MASK);
        }
        let next = self.alloc()?;
        self.mem
            .write_obj(next | PRESENT | WRITABLE | USER | ACCESSED, at)?;
        Ok(next)
    }

    /// Identity-maps `range` (page-aligned) with `flags`.
    pub(crate) fn map(&mut self, range: Range<u64>, flags: PageFlags) -> Result<(), PagingError> {
        if !range.start.is_multiple_of(PAGE) || !range.end.is_multiple_of(PAGE) {
            return Err(PagingError::Unaligned(range));
        }
        let mut va = range.start;
        while va < range.end {
            let pdpt = self.descend(self.pml4, (va >> 39) & 511, va)?;
            let pd = self.descend(pdpt, (va >> 30) & 511, va)?;
            if va.is_multiple_of(LARGE) && va + LARGE <= range.end {
                let (at, e) = self.entry(pd, (va >> 21) & 511)?;
                if e & PRESENT != 0 {
                    return Err(PagingError::Conflict(va));
                }
                self.mem.write_obj(va | flags.bits() | HUGE, at)?;
                va += LARGE;
                continue;
            }
            let pt = self.descend(pd, (va >> 21) & 511, va)?;
            // The run of 4 KiB pages this table holds, read, checked and written at once.
            let end = range.end.min((va | (LARGE - 1)) + 1);
            va = self.leaves(pt, va..end, flags)?;
        }
        Ok(())
    }

    /// Writes the leaf entries of `range` (inside one 2 MiB region) into table `pt`; returns
    /// the range's end.
    fn leaves(&self, pt: u64, range: Range<u64>, flags: PageFlags) -> Result<u64, PagingError> {
        let first = (range.start >> 12) & 511;
        let count = ((range.end - range.start) / PAGE) as usize;
        let at = GuestAddress(pt + first * 8);
        let mut run = [0u8; PAGE as usize];
        let run = &mut run[..count * 8];
        self.mem.read_slice(run, at)?;
        for (i, e) in run.chunks_exact_mut(8).enumerate() {
            let va = range.start + i as u64 * PAGE;
            let old = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
            if old & PRESENT != 0 {
                return Err(PagingError::Conflict(va));
            }
            e.copy_from_slice(&(va | flags.bits()).to_le_bytes());
        }
        self.mem.write_slice(run, at)?;
        Ok(range.end)
    }
}

/// Walks the tables like the MMU: the leaf entry's flags for `va`, or None if unmapped. Tests only.
#[cfg(test)]
pub(crate) fn translate(mem: &GuestMemoryMmap, root: u64, va: u64) -> Option<(u64, PageFlags)> {
    let mut table = root;
    for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
        let e: u64 = mem
            .read_obj(GuestAddress(table + ((va >> shift) & 511) * 8))
            .ok()?;
        if e & PRESENT == 0 {
            return None;
        }
        if level == 1 || (level == 2 && e & HUGE != 0) {
            let offset_mask = if level == 2 { LARGE - 1 } else { PAGE - 1 };
            let flags = PageFlags::new(e & USER != 0, e & WRITABLE != 0, e & NO_EXECUTE == 0);
            return Some(((e & ADDR_MASK & !offset_mask) | (va & offset_mask), flags));
        }
        table = e & ADDR_MASK;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_identity_with_leaf_permissions_and_large_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut pt = PageTables::new(&mem, 0x100000..0x200000).unwrap();
        let rx = PageFlags::new(true, false, true);
        let rw = PageFlags::new(true, true, false);
        pt.map(0x400000..0x402000, rx).unwrap();
        pt.map(0x402000..0xa00000, rw).unwrap();
        pt.map(0x7000..0x8000, PageFlags::new(false, false, true))
            .unwrap();
        let root = pt.root();
        assert_eq!(root, 0x100000, "the root is the area's first page");
        assert_eq!(translate(&mem, root, 0x400123), Some((0x400123, rx)));
        assert_eq!(translate(&mem, root, 0x402000), Some((0x402000, rw)));
        assert_eq!(
            translate(&mem, root, 0x600000 + 0x1234),
            Some((0x601234, rw)),
            "2 MiB page"
        );
        assert_eq!(
            translate(&mem, root, 0x7010).map(|(_, f)| f.user),
            Some(false)
        );
        assert_eq!(translate(&mem, root, 0x0), None, "null page unmapped");
        assert_eq!(translate(&mem, root, 0xa00000), None, "end is exclusive");
        // 3 tables for the 2 MiB-granular walk + 2 PTs (low area, image head).
        assert_eq!(pt.used(), 5 * PAGE);
    }

    /// The raw entries the MMU reads to translate `va`, root first.
    fn walk(mem: &GuestMemoryMmap, root: u64, va: u64) -> Vec<u64> {
        let mut entries = Vec::new();
        let mut table = root;
        for shift in [39, 30, 21, 12] {
            let e: u64 = mem
                .read_obj(GuestAddress(table + ((va >> shift) & 511) * 8))
                .unwrap();
            entries.push(e);
            if e & HUGE != 0 {
                break;
            }
            table = e & ADDR_MASK;
        }
        entries
    }

    #[test]
    fn entries_are_written_accessed_and_writable_leaves_dirty() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut pt = PageTables::new(&mem, 0x100000..0x200000).unwrap();
        pt.map(0x400000..0x401000, PageFlags::new(true, false, true))
            .unwrap();
        pt.map(0x401000..0x402000, PageFlags::new(true, true, false))
            .unwrap();
        pt.map(0x600000..0x800000, PageFlags::new(true, true, false))
            .unwrap();
        for (va, levels, dirty) in [
            (0x400000, 4, false),
            (0x401000, 4, true),
            (0x600000, 3, true),
        ] {
            let entries = walk(&mem, pt.root(), va);
            assert_eq!(entries.len(), levels, "{va:#x}");
            assert!(
                entries.iter().all(|e| e & ACCESSED != 0),
                "{va:#x}: {entries:x?}"
            );
            let leaf = entries[levels - 1];
            assert_eq!(leaf & DIRTY != 0, dirty, "{va:#x}: leaf {leaf:#x}");
            assert!(
                entries[..levels - 1].iter().all(|e| e & DIRTY == 0),
                "no dirty bit above the leaf"
            );
        }
    }

    #[test]
    fn double_mapping_and_exhaustion_are_errors() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let mut pt = PageTables::new(&mem, 0x100000..0x104000).unwrap();
        let f = PageFlags::new(true, true, false);
        pt.map(0x400000..0x401000, f).unwrap();
        assert!(matches!(
            pt.map(0x400000..0x401000, f),
            Err(PagingError::Conflict(0x400000))
        ));
        assert!(matches!(
            pt.map(0x400001..0x401000, f),
            Err(PagingError::Unaligned(_))
        ));
        // Four tables used (PML4, PDPT, PD, PT): a PT for another 2 MiB region does not fit.
        assert!(matches!(
            pt.map(0x1000..0x2000, f),
            Err(PagingError::OutOfTables)
        ));
    }
}
