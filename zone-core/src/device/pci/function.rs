//! [`PciFunction`]: what a PCI device model implements to sit on a Linux zone's PCI bus.

use super::{ConfigChange, ConfigSpace};

/// One function on a Linux zone's PCI bus (bus 0, one device number each): zone-gpu's VFIO
/// passthrough, a future virtio-pci, your own model.
///
/// zone-core owns the bus: the ECAM window the guest reaches configuration space through, the
/// address decoding of every BAR (following the guest when it moves one, and only while the
/// command register enables memory decoding), the ACPI description (MCFG, the host bridge in
/// the DSDT). Before the guest starts, zone-core places each memory BAR the function declared in
/// its [`ConfigSpace`] in the zone's 32-bit or 64-bit window and writes the address there.
///
/// Every call comes from a vCPU thread, one at a time per function. None may panic on what the
/// guest sends: accesses arrive with 1, 2, 4 or 8 bytes at any offset within the range.
pub trait PciFunction: Send + 'static {
    /// The function's configuration space (header, BARs, capabilities).
    fn config(&self) -> &ConfigSpace;

    /// The same, to change.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// A guest read of `data.len()` bytes (1, 2 or 4) at `offset` (below 4096) of configuration
    /// space. Default: from [`config`](Self::config).
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let value = self.config().read(offset, data.len());
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// A guest write to configuration space. Returns what changed: a moved BAR or a new command
    /// register makes the bus decode again. Default: through the write masks of
    /// [`config_mut`](Self::config_mut).
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Option<ConfigChange> {
        self.config_mut().write_bytes(offset, data)
    }

    /// A guest read at `offset` into memory BAR `bar` (trapped: the BAR is not mapped into the
    /// guest).
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// A guest write at `offset` into memory BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// The parts of BAR `bar` the guest reaches without a trap: host memory (a passed-through
    /// device's mmap-able region) that zone-core maps into the guest at the BAR's address, as a
    /// KVM memory slot, while the BAR decodes, and moves with the BAR. Accesses elsewhere in the
    /// BAR come to [`bar_read`](Self::bar_read) and [`bar_write`](Self::bar_write). Parts that
    /// are not page aligned stay trapped. Default: none.
    fn bar_mappings(&self, _bar: usize) -> Vec<BarMapping> {
        Vec::new()
    }
}

/// Host memory behind part of a BAR (see [`PciFunction::bar_mappings`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMapping {
    offset: u64,
    len: u64,
    host: usize,
}

impl BarMapping {
    /// `len` bytes at `offset` into the BAR, backed by the host mapping at `host`.
    ///
    /// # Safety
    /// `host..host + len` must be a live mapping, readable and writable, that stays mapped for
    /// as long as the function reporting it lives (zone-core removes the guest's view of it
    /// before it drops the function).
    pub unsafe fn new(offset: u64, len: u64, host: *mut u8) -> Self {
        Self {
            offset,
            len,
            host: host as usize,
        }
    }

    /// Offset into the BAR.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address.
    pub fn host(&self) -> *mut u8 {
        self.host as *mut u8
    }

    /// Whether offset, length and host address are page aligned (only such parts are mapped).
    pub fn page_aligned(&self) -> bool {
        const PAGE: u64 = 4096;
        self.offset.is_multiple_of(PAGE)
            && self.len.is_multiple_of(PAGE)
            && (self.host as u64).is_multiple_of(PAGE)
            && self.len > 0
    }
}
