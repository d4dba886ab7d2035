//! Guest-physical windows for BARs: a 32-bit window below 4 GiB and a 64-bit window above guest
//! RAM (where a GPU's 16-256 GiB BARs fit), each BAR naturally aligned (to its size), on
//! rust-vmm's `vm-allocator`.

use super::PciError;
use super::config::{Bar, BarKind};
use std::ops::Range;
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

/// Where BARs may go.
#[derive(Debug)]
pub struct BarAllocator {
    low: AddressAllocator,
    high: AddressAllocator,
}

impl BarAllocator {
    /// BARs in `low` (32-bit memory BARs, and 64-bit ones that ask for it) and `high` (64-bit
    /// BARs). Both windows must be non-empty.
    pub fn new(low: Range<u64>, high: Range<u64>) -> Result<Self, PciError> {
        let window = |r: &Range<u64>| {
            let size = r.end.checked_sub(r.start).filter(|s| *s > 0);
            let size = size.ok_or(PciError::Window {
                start: r.start,
                end: r.end,
            })?;
            AddressAllocator::new(r.start, size).map_err(|_| PciError::Window {
                start: r.start,
                end: r.end,
            })
        };
        Ok(Self {
            low: window(&low)?,
            high: window(&high)?,
        })
    }

    /// An address for `bar`, aligned to its size: 64-bit BARs in the high window, others in the
    /// low one. I/O BARs are not placed here.
    pub fn allocate(&mut self, index: usize, bar: &Bar) -> Result<u64, PciError> {
        let window = match bar.kind {
            BarKind::Memory64 { .. } => &mut self.high,
            BarKind::Memory32 { .. } => &mut self.low,
            BarKind::Io => return Err(PciError::BarIndex { index }),
        };
        window
            .allocate(bar.size, bar.size, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|_| PciError::NoRoom {
                index,
                size: bar.size,
            })
    }

    /// Gives back the range of `bar` at `address`.
    pub fn free(&mut self, bar: &Bar, address: u64) {
        let window = match bar.kind {
            BarKind::Memory64 { .. } => &mut self.high,
            _ => &mut self.low,
        };
        if let Ok(range) = RangeInclusive::new(address, address + (bar.size - 1)) {
            let _ = window.free(&range);
        }
    }
}
