//! The PCI bus of a Linux zone, present only when the builder granted a PCI function: a host
//! bridge at 00:00.0, the functions at 00:01.0 onwards (one device number each), configuration
//! space through an ECAM window (bus 0 only, described by the MCFG table), and BAR decoding in a
//! 32-bit and a 64-bit window (described by the host bridge's `_CRS` in the DSDT).
//!
//! BARs are decoded where the function's configuration space says they are, and only while its
//! command register enables memory decoding: the guest may move them (Linux sizes every BAR by
//! writing all ones and usually puts back the address zone-core chose).

use super::layout;
use crate::device::VmHandle;
use crate::device::pci::{
    BarAllocator, BarKind, ConfigChange, ConfigSpace, Header, PciFunction, command,
};
use crate::devices::{Bus, BusDevice, BusError};
use crate::exit::ZoneExit;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Device numbers on bus 0: 0 is the host bridge.
pub(crate) const MAX_FUNCTIONS: usize = 31;

/// Why a function could not be put on the bus.
#[derive(Debug, thiserror::Error)]
pub enum PciBusError {
    /// Bus 0 has 31 device numbers for functions.
    #[error("at most {MAX_FUNCTIONS} PCI functions fit bus 0")]
    Full,
    /// A BAR could not be placed.
    #[error("placing BAR {index} ({size:#x} bytes): {source}")]
    Bar {
        /// The BAR.
        index: usize,
        /// Its size.
        size: u64,
        /// Why.
        source: crate::device::pci::PciError,
    },
    /// The zone's 64-bit window is too small for the guest's physical address width.
    #[error("no 64-bit PCI window above guest RAM: the guest's physical addresses end at {end:#x}")]
    NoHighWindow {
        /// Where guest-physical addresses end.
        end: u64,
    },
}

/// One decoded BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Decoded {
    start: u64,
    len: u64,
    function: usize,
    bar: usize,
}

/// The bus: its functions, where their BARs decode, and the KVM memory slots of the BAR parts
/// mapped into the guest.
pub(crate) struct PciBus {
    bridge: Mutex<ConfigSpace>,
    functions: Vec<Mutex<Box<dyn PciFunction>>>,
    decode: RwLock<Vec<Decoded>>,
    low: Range<u64>,
    high: Range<u64>,
    slots: Mutex<Slots>,
}

/// First KVM memory slot for mapped BAR parts (guest RAM has slots 0 and 1).
const FIRST_BAR_SLOT: u32 = 16;
/// Most mapped BAR parts a zone has at once.
const MAX_BAR_SLOTS: u32 = 256;

/// The VM and the mapped BAR parts, by slot.
#[derive(Default)]
struct Slots {
    vm: Option<Arc<VmHandle>>,
    /// slot → (guest address, length, host address).
    mapped: std::collections::BTreeMap<u32, (u64, u64, u64)>,
}

impl Slots {
    fn set(&self, slot: u32, gpa: u64, len: u64, host: u64) -> std::io::Result<()> {
        let Some(vm) = &self.vm else {
            return Ok(());
        };
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: the host range is a function's BAR mapping, which stays mapped while the
        // function lives, and the bus removes its slots (a size of 0) before it drops its
        // functions.
        unsafe { vm.set_user_memory_region(&region) }
    }

    /// Makes the mapped parts `want` (guest address, length, host address), moving only what
    /// changed.
    fn sync(&mut self, want: &[(u64, u64, u64)]) {
        let stale: Vec<u32> = self
            .mapped
            .iter()
            .filter(|(_, m)| !want.contains(m))
            .map(|(s, _)| *s)
            .collect();
        for slot in stale {
            if let Some((gpa, _, host)) = self.mapped.remove(&slot)
                && let Err(e) = self.set(slot, gpa, 0, host)
            {
                tracing::warn!(target: "zones::device", slot, error = %e, "removing a BAR mapping");
            }
        }
        for &m in want {
            if self.mapped.values().any(|v| *v == m) {
                continue;
            }
            let Some(slot) = (FIRST_BAR_SLOT..FIRST_BAR_SLOT + MAX_BAR_SLOTS)
                .find(|s| !self.mapped.contains_key(s))
            else {
                tracing::warn!(target: "zones::device", "no KVM slot left for a BAR mapping; it stays trapped");
                break;
            };
            match self.set(slot, m.0, m.1, m.2) {
                Ok(()) => {
                    self.mapped.insert(slot, m);
                }
                Err(e) => {
                    tracing::warn!(target: "zones::device", gpa = m.0, error = %e, "a BAR mapping stays trapped");
                }
            }
        }
    }
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("functions", &self.functions.len())
            .field("low", &self.low)
            .field("high", &self.high)
            .finish_non_exhaustive()
    }
}

/// The host bridge's header (the ID Cloud Hypervisor's bridge uses, which guests know).
fn bridge_header() -> Header {
    Header {
        vendor_id: 0x8086,
        device_id: 0x0d57,
        class: 0x06_00_00,
        ..Header::default()
    }
}

/// Builds the bus: places each function's BARs.
pub(crate) struct PciBusBuilder {
    functions: Vec<Box<dyn PciFunction>>,
    bars: BarAllocator,
    low: Range<u64>,
    high: Range<u64>,
}

impl PciBusBuilder {
    /// A bus for a zone of `mem_size` bytes whose guest has `phys_bits` of physical address.
    pub(crate) fn new(mem_size: u64, phys_bits: u8) -> Result<Self, PciBusError> {
        let low = layout::PCI_MMIO32;
        let high = layout::pci_mmio64(mem_size, phys_bits);
        let bars = BarAllocator::new(low.clone(), high.clone())
            .map_err(|_| PciBusError::NoHighWindow { end: high.end })?;
        Ok(Self {
            functions: Vec::new(),
            bars,
            low,
            high,
        })
    }

    /// Puts `function` on the bus; returns its device number.
    pub(crate) fn add(&mut self, mut function: Box<dyn PciFunction>) -> Result<u8, PciBusError> {
        if self.functions.len() >= MAX_FUNCTIONS {
            return Err(PciBusError::Full);
        }
        let config = function.config_mut();
        for index in 0..6 {
            let Some(bar) = config.bar(index) else {
                continue;
            };
            // No I/O window: an I/O BAR stays unassigned, and the guest leaves it so.
            if bar.kind == BarKind::Io {
                continue;
            }
            let err = |source| PciBusError::Bar {
                index,
                size: bar.size,
                source,
            };
            let at = self.bars.allocate(index, &bar).map_err(err)?;
            config.set_bar_address(index, at).map_err(err)?;
        }
        self.functions.push(function);
        Ok(self.functions.len() as u8)
    }

    /// The device number the next function gets.
    pub(crate) fn next_slot(&self) -> u8 {
        self.functions.len() as u8 + 1
    }

    /// The 32-bit and 64-bit windows, for the DSDT.
    pub(crate) fn windows(&self) -> (Range<u64>, Range<u64>) {
        (self.low.clone(), self.high.clone())
    }

    /// The bus, mapping BAR memory into the guest through `vm` (without one, every BAR access
    /// is trapped).
    pub(crate) fn finish(self, vm: Option<Arc<VmHandle>>) -> Arc<PciBus> {
        let bus = Arc::new(PciBus {
            bridge: Mutex::new(ConfigSpace::new(&bridge_header())),
            functions: self.functions.into_iter().map(Mutex::new).collect(),
            decode: RwLock::new(Vec::new()),
            low: self.low,
            high: self.high,
            slots: Mutex::new(Slots {
                vm,
                mapped: Default::default(),
            }),
        });
        bus.redecode();
        bus
    }
}

impl PciBus {
    /// Puts the bus on the zone's MMIO bus: the ECAM window and both BAR windows.
    pub(crate) fn place(self: &Arc<Self>, mmio: &mut Bus) -> Result<(), BusError> {
        mmio.insert(
            layout::PCI_ECAM,
            layout::PCI_ECAM_SIZE,
            Arc::new(Ecam(self.clone())),
        )?;
        for window in [&self.low, &self.high] {
            let bars = Arc::new(BarWindow(self.clone(), window.start));
            mmio.insert(window.start, window.end - window.start, bars)?;
        }
        Ok(())
    }

    fn function(&self, index: usize) -> Option<MutexGuard<'_, Box<dyn PciFunction>>> {
        let f = self.functions.get(index)?;
        Some(f.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Rebuilds the decode table from every function's configuration space.
    fn redecode(&self) {
        let mut table = Vec::new();
        for function in 0..self.functions.len() {
            let Some(f) = self.function(function) else {
                continue;
            };
            let config = f.config();
            if config.command() & command::MEMORY == 0 {
                continue;
            }
            for bar in 0..6 {
                let (Some(b), Some(start)) = (config.bar(bar), config.bar_address(bar)) else {
                    continue;
                };
                let in_window = |w: &Range<u64>| {
                    start >= w.start && start.checked_add(b.size).is_some_and(|e| e <= w.end)
                };
                if b.kind != BarKind::Io && (in_window(&self.low) || in_window(&self.high)) {
                    table.push(Decoded {
                        start,
                        len: b.size,
                        function,
                        bar,
                    });
                }
            }
        }
        table.sort_by_key(|d| d.start);
        // The mapped parts of every decoding BAR, at the BAR's address now.
        let mut mapped = Vec::new();
        for d in &table {
            if let Some(f) = self.function(d.function) {
                for m in f.bar_mappings(d.bar) {
                    let fits = m.offset().checked_add(m.len()).is_some_and(|e| e <= d.len);
                    if m.page_aligned() && fits && d.start % 4096 == 0 {
                        mapped.push((d.start + m.offset(), m.len(), m.host() as u64));
                    }
                }
            }
        }
        *self.decode.write().unwrap_or_else(|e| e.into_inner()) = table;
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync(&mapped);
    }

    /// Bytes of BAR memory mapped into the guest now.
    #[cfg(test)]
    pub(crate) fn mapped_bytes(&self) -> u64 {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.mapped.values().map(|m| m.1).sum()
    }

    fn find(&self, addr: u64, len: usize) -> Option<(usize, usize, u64)> {
        let table = self.decode.read().unwrap_or_else(|e| e.into_inner());
        let i = table.partition_point(|d| d.start <= addr).checked_sub(1)?;
        let d = table[i];
        let offset = addr - d.start;
        (offset.checked_add(len as u64)? <= d.len).then_some((d.function, d.bar, offset))
    }

    /// A configuration read at ECAM offset `offset` (bus 0).
    pub(crate) fn config_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some((device, reg)) = ecam_target(offset, data.len()) else {
            return;
        };
        if device == 0 {
            let value = self
                .bridge
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(reg, data.len());
            data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
        } else if let Some(mut f) = self.function(device - 1) {
            f.config_read(reg, data);
        }
    }

    pub(crate) fn config_write(&self, offset: u64, data: &[u8]) {
        let Some((device, reg)) = ecam_target(offset, data.len()) else {
            return;
        };
        if device == 0 {
            let mut value = [0u8; 4];
            value[..data.len()].copy_from_slice(data);
            self.bridge.lock().unwrap_or_else(|e| e.into_inner()).write(
                reg,
                data.len(),
                u32::from_le_bytes(value),
            );
            return;
        }
        let change = match self.function(device - 1) {
            Some(mut f) => f.config_write(reg, data),
            None => return,
        };
        if matches!(
            change,
            Some(ConfigChange::Command { .. } | ConfigChange::Bar { .. })
        ) {
            self.redecode();
        }
    }

    pub(crate) fn bar_read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((function, bar, offset)) => {
                if let Some(mut f) = self.function(function) {
                    f.bar_read(bar, offset, data);
                }
            }
            None => data.fill(0xff),
        }
    }

    pub(crate) fn bar_write(&self, addr: u64, data: &[u8]) {
        if let Some((function, bar, offset)) = self.find(addr, data.len())
            && let Some(mut f) = self.function(function)
        {
            f.bar_write(bar, offset, data);
        }
    }
}

impl Drop for PciBus {
    /// The guest's view of every mapped BAR part goes before the functions (and their
    /// mappings) do.
    fn drop(&mut self) {
        self.slots
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .sync(&[]);
    }
}

/// The device number and register of a configuration access at ECAM `offset` of `len` bytes:
/// bus 0, function 0 only, 1, 2 or 4 bytes naturally aligned.
fn ecam_target(offset: u64, len: usize) -> Option<(usize, u16)> {
    let (bus, device, function) = (offset >> 20, (offset >> 15) & 0x1f, (offset >> 12) & 0x7);
    let reg = (offset & 0xfff) as u16;
    let aligned = matches!(len, 1 | 2 | 4) && usize::from(reg) % len == 0;
    (bus == 0 && function == 0 && aligned).then_some((device as usize, reg))
}

/// The ECAM window on the MMIO bus.
struct Ecam(Arc<PciBus>);

impl BusDevice for Ecam {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0.config_read(offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<ZoneExit> {
        self.0.config_write(offset, data);
        None
    }
}

/// A BAR window (starting at `.1`) on the MMIO bus.
struct BarWindow(Arc<PciBus>, u64);

impl BusDevice for BarWindow {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0.bar_read(self.1 + offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<ZoneExit> {
        self.0.bar_write(self.1 + offset, data);
        None
    }
}

#[cfg(test)]
mod tests;
