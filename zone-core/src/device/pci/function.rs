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
}
