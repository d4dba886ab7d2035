//! PCI configuration space of one function, emulated: a type-0 header, BARs, a capability list,
//! and per-bit write masks, so that the guest can write only what a device lets it write.
//!
//! Every access is bounds-checked: an access that is not 1, 2 or 4 bytes, not naturally
//! aligned, or beyond the 4 KiB extended space reads as all ones and writes nothing, as a
//! PCI host bridge would master-abort it. A write reports what it changed ([`ConfigChange`]) so
//! that the device model can move a BAR's mapping, stop DMA when bus mastering goes off, or
//! react to a capability (MSI-X enable) without parsing the bytes itself.

use super::PciError;

/// Size of the (extended) configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// End of the standard configuration space (capabilities live below it).
const STANDARD_END: usize = 256;
/// First byte available to capabilities.
const FIRST_CAPABILITY: usize = 0x40;

/// Register offsets of a type-0 header.
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status (16 bits).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8 bits), then the class code (24 bits).
    pub const REVISION: u16 = 0x08;
    /// Header type (8 bits).
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First BAR (six of them, 4 bytes each).
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Expansion ROM base address (not emulated: reads as zero).
    pub const ROM: u16 = 0x30;
    /// Capabilities pointer (8 bits).
    pub const CAPABILITIES: u16 = 0x34;
    /// Interrupt line (8 bits, writable scratch for the guest).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin (8 bits: 0 none, 1 INTA#, ...).
    pub const INTERRUPT_PIN: u16 = 0x3d;
}

/// Command register bits.
pub mod command {
    /// Responds to I/O space accesses.
    pub const IO: u16 = 1 << 0;
    /// Responds to memory space accesses.
    pub const MEMORY: u16 = 1 << 1;
    /// May master the bus (DMA, MSI).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Legacy INTx disabled.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status bit: the function has a capability list.
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Status bits the guest clears by writing 1 (parity and abort errors, INTx pending is RO).
const STATUS_W1C: u16 = 0xf900;

/// What a function says about itself in its header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class, subclass, programming interface (`0x03_00_00`: VGA).
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin: 0 none, 1 INTA# .. 4 INTD#.
    pub interrupt_pin: u8,
}

/// The kind of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Memory32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit memory (two BAR slots).
    Memory64 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// I/O ports.
    Io,
}

/// A BAR a function decodes: its kind and size (a power of two: at least 16 bytes for
/// memory, 4 for I/O).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Its kind.
    pub kind: BarKind,
    /// Its size in bytes.
    pub size: u64,
}

impl Bar {
    /// The low flag bits the BAR register reports.
    fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Io => 0b01,
            BarKind::Memory32 { prefetchable } => u32::from(prefetchable) << 3,
            BarKind::Memory64 { prefetchable } => 0b100 | (u32::from(prefetchable) << 3),
        }
    }

    /// Whether it takes two slots.
    pub fn is_64bit(&self) -> bool {
        matches!(self.kind, BarKind::Memory64 { .. })
    }
}

/// What a configuration write changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// The command register: old and new values.
    Command {
        /// Before the write.
        from: u16,
        /// After it.
        to: u16,
    },
    /// A BAR's address (for a 64-bit BAR, whichever half was written).
    Bar {
        /// Its index (the lower slot of a 64-bit BAR).
        index: usize,
        /// Address before the write.
        from: u64,
        /// Address after it.
        to: u64,
    },
    /// A byte of the capability at `capability` (its offset) was written.
    Capability {
        /// The capability's offset.
        capability: u16,
        /// Its ID.
        id: u8,
    },
}

/// The configuration space of one function.
#[derive(Clone)]
pub struct ConfigSpace {
    data: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// Bits the guest may write.
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// Bits a written 1 clears.
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<Bar>; 6],
    /// `(offset, id, length)` of each capability, in list order.
    capabilities: Vec<(u16, u8, u16)>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor_id", &self.u16_at(reg::VENDOR_ID))
            .field("device_id", &self.u16_at(reg::DEVICE_ID))
            .field("bars", &self.bars)
            .field("capabilities", &self.capabilities)
            .finish()
    }
}

impl ConfigSpace {
    /// A type-0 function with `header`, no BARs and no capabilities. Writable: the command
    /// register's I/O, memory, bus-master and INTx-disable bits, the status error bits (write
    /// one to clear) and the interrupt line.
    pub fn new(header: &Header) -> Self {
        let mut s = Self {
            data: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; 6],
            capabilities: Vec::new(),
        };
        s.put(reg::VENDOR_ID, &header.vendor_id.to_le_bytes());
        s.put(reg::DEVICE_ID, &header.device_id.to_le_bytes());
        let class = header.class & 0x00ff_ffff;
        s.put(
            reg::REVISION,
            &(u32::from(header.revision) | (class << 8)).to_le_bytes(),
        );
        s.put(
            reg::SUBSYSTEM_VENDOR_ID,
            &header.subsystem_vendor_id.to_le_bytes(),
        );
        s.put(reg::SUBSYSTEM_ID, &header.subsystem_id.to_le_bytes());
        s.put(reg::INTERRUPT_PIN, &[header.interrupt_pin.min(4)]);
        let cmd = command::IO | command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
        s.mask(reg::COMMAND, &cmd.to_le_bytes());
        s.w1c[usize::from(reg::STATUS)..usize::from(reg::STATUS) + 2]
            .copy_from_slice(&STATUS_W1C.to_le_bytes());
        s.mask(reg::INTERRUPT_LINE, &[0xff]);
        s
    }

    fn put(&mut self, offset: u16, bytes: &[u8]) {
        let at = usize::from(offset);
        self.data[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn mask(&mut self, offset: u16, bytes: &[u8]) {
        let at = usize::from(offset);
        self.writable[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn u16_at(&self, offset: u16) -> u16 {
        let at = usize::from(offset);
        u16::from_le_bytes([self.data[at], self.data[at + 1]])
    }

    fn u32_at(&self, offset: u16) -> u32 {
        let at = usize::from(offset);
        u32::from_le_bytes([
            self.data[at],
            self.data[at + 1],
            self.data[at + 2],
            self.data[at + 3],
        ])
    }

    /// Declares BAR `index` (0-5; a 64-bit BAR also takes `index + 1`), unassigned (address 0).
    pub fn add_bar(&mut self, index: usize, bar: Bar) -> Result<(), PciError> {
        let min = if bar.kind == BarKind::Io { 4 } else { 16 };
        if !bar.size.is_power_of_two() || bar.size < min {
            return Err(PciError::BarSize {
                index,
                size: bar.size,
            });
        }
        let limit = match bar.kind {
            BarKind::Memory64 { .. } => u64::MAX,
            BarKind::Io => 1 << 16,
            BarKind::Memory32 { .. } => 1 << 31,
        };
        if bar.size > limit {
            return Err(PciError::BarSize {
                index,
                size: bar.size,
            });
        }
        let slots = if bar.is_64bit() { 2 } else { 1 };
        if index + slots > 6 {
            return Err(PciError::BarIndex { index });
        }
        for i in index..index + slots {
            if self.bars[i].is_some() || (i > 0 && self.bars[i - 1].is_some_and(|b| b.is_64bit())) {
                return Err(PciError::BarTaken { index: i });
            }
        }
        self.bars[index] = Some(bar);
        let offset = reg::BAR0 + 4 * index as u16;
        let low_mask = (!(bar.size - 1) as u32) & if bar.kind == BarKind::Io { !0x3 } else { !0xf };
        self.put(offset, &bar.flags().to_le_bytes());
        self.mask(offset, &low_mask.to_le_bytes());
        if bar.is_64bit() {
            self.put(offset + 4, &[0; 4]);
            self.mask(offset + 4, &((!(bar.size - 1) >> 32) as u32).to_le_bytes());
        }
        Ok(())
    }

    /// The BAR declared at `index`.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address BAR `index` is at (as the guest or [`set_bar_address`](Self::set_bar_address)
    /// last put it), or `None` when there is no such BAR.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let offset = reg::BAR0 + 4 * index as u16;
        let low = u64::from(self.u32_at(offset));
        Some(match bar.kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 { .. } => low & !0xf,
            BarKind::Memory64 { .. } => (low & !0xf) | (u64::from(self.u32_at(offset + 4)) << 32),
        })
    }

    /// Places BAR `index` at `address` (the VMM's initial assignment; aligned to its size).
    pub fn set_bar_address(&mut self, index: usize, address: u64) -> Result<(), PciError> {
        let bar = self.bar(index).ok_or(PciError::BarIndex { index })?;
        let fits = match bar.kind {
            BarKind::Memory64 { .. } => true,
            BarKind::Memory32 { .. } => address <= u64::from(u32::MAX) - (bar.size - 1),
            BarKind::Io => address <= 0xffff - (bar.size - 1),
        };
        if address & (bar.size - 1) != 0 || !fits {
            return Err(PciError::BarAddress { index, address });
        }
        let offset = reg::BAR0 + 4 * index as u16;
        self.put(offset, &((address as u32) | bar.flags()).to_le_bytes());
        if bar.is_64bit() {
            self.put(offset + 4, &((address >> 32) as u32).to_le_bytes());
        }
        Ok(())
    }

    /// Adds a capability with `id` whose body (after the ID and next-pointer bytes) is `body`,
    /// with `writable` giving the bits of the body the guest may write (same length). Returns
    /// the capability's offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<u16, PciError> {
        if writable.len() != body.len() {
            return Err(PciError::CapabilityMask { id });
        }
        let start = match self.capabilities.last() {
            Some(&(offset, _, len)) => usize::from(offset + len).next_multiple_of(4),
            None => FIRST_CAPABILITY,
        };
        let len = 2 + body.len();
        if start + len > STANDARD_END {
            return Err(PciError::CapabilitySpace { id });
        }
        let offset = start as u16;
        self.put(offset, &[id, 0]);
        self.put(offset + 2, body);
        self.mask(offset + 2, writable);
        match self.capabilities.last() {
            Some(&(previous, _, _)) => self.put(previous + 1, &[offset as u8]),
            None => {
                self.put(reg::CAPABILITIES, &[offset as u8]);
                let status = self.u16_at(reg::STATUS) | STATUS_CAPABILITIES;
                self.put(reg::STATUS, &status.to_le_bytes());
            }
        }
        self.capabilities.push((offset, id, len as u16));
        Ok(offset)
    }

    /// Puts a capability with `id` at `offset` (dword-aligned, in the standard space after the
    /// header), its next pointer `next` as given: for a function whose capability layout is a
    /// device's own (a passed-through function emulating some of its capabilities in place).
    /// `body` and `writable` as for [`add_capability`](Self::add_capability). Linking the list
    /// (the capabilities pointer, the previous next pointers) is the caller's.
    pub fn place_capability(
        &mut self,
        offset: u16,
        id: u8,
        next: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<(), PciError> {
        if writable.len() != body.len() {
            return Err(PciError::CapabilityMask { id });
        }
        let (start, len) = (usize::from(offset), 2 + body.len());
        let overlaps = self
            .capabilities
            .iter()
            .any(|&(o, _, l)| start < usize::from(o + l) && usize::from(o) < start + len);
        if start < FIRST_CAPABILITY || start % 4 != 0 || start + len > STANDARD_END || overlaps {
            return Err(PciError::CapabilitySpace { id });
        }
        self.put(offset, &[id, next]);
        self.put(offset + 2, body);
        self.mask(offset + 2, writable);
        let status = self.u16_at(reg::STATUS) | STATUS_CAPABILITIES;
        self.put(reg::STATUS, &status.to_le_bytes());
        self.capabilities.push((offset, id, len as u16));
        Ok(())
    }

    /// The offset of the first capability with `id`.
    pub fn capability(&self, id: u8) -> Option<u16> {
        self.capabilities.iter().find(|c| c.1 == id).map(|c| c.0)
    }

    /// Reads `len` bytes (1, 2 or 4, naturally aligned) at `offset`; anything else reads as
    /// all ones.
    pub fn read(&self, offset: u16, len: usize) -> u32 {
        let Some(at) = checked(offset, len) else {
            return u32::MAX;
        };
        let mut bytes = [0u8; 4];
        bytes[..len].copy_from_slice(&self.data[at..at + len]);
        u32::from_le_bytes(bytes)
    }

    /// Reads the register bytes at `offset` as the guest sees them (the device model may keep
    /// fields of its own in them, e.g. a capability's state).
    pub fn bytes(&self, offset: u16, len: usize) -> Option<&[u8]> {
        let at = usize::from(offset);
        self.data.get(at..at.checked_add(len)?)
    }

    /// Overwrites register bytes (for the device model, not the guest: masks do not apply).
    pub fn set_bytes(&mut self, offset: u16, bytes: &[u8]) -> Result<(), PciError> {
        let at = usize::from(offset);
        let end = at
            .checked_add(bytes.len())
            .filter(|&e| e <= CONFIG_SPACE_SIZE);
        let Some(end) = end else {
            return Err(PciError::Offset { offset });
        };
        self.data[at..end].copy_from_slice(bytes);
        Ok(())
    }

    /// Writes `value`'s low `len` bytes (1, 2 or 4, naturally aligned) at `offset`, through the
    /// write masks. Returns what changed; an invalid access changes nothing.
    pub fn write(&mut self, offset: u16, len: usize, value: u32) -> Option<ConfigChange> {
        let at = checked(offset, len)?;
        let command_before = self.u16_at(reg::COMMAND);
        let bar = self.bar_slot(at);
        let bar_before = bar.and_then(|i| self.bar_address(i));
        let new = value.to_le_bytes();
        let mut touched = false;
        for (i, byte) in new.iter().enumerate().take(len) {
            let p = at + i;
            let (mask, clear) = (self.writable[p], self.w1c[p]);
            if mask == 0 && clear == 0 {
                continue;
            }
            touched = true;
            let kept = self.data[p] & !mask & !(clear & byte);
            self.data[p] = kept | (byte & mask);
        }
        if !touched {
            return None;
        }
        let command_after = self.u16_at(reg::COMMAND);
        if command_after != command_before {
            return Some(ConfigChange::Command {
                from: command_before,
                to: command_after,
            });
        }
        if let (Some(index), Some(from)) = (bar, bar_before) {
            let to = self.bar_address(index).unwrap_or(from);
            return (to != from).then_some(ConfigChange::Bar { index, from, to });
        }
        self.capabilities
            .iter()
            .find(|(o, _, l)| (usize::from(*o)..usize::from(o + l)).contains(&at))
            .map(|&(capability, id, _)| ConfigChange::Capability { capability, id })
    }

    /// [`write`](Self::write) of a guest access as its bytes (1, 2 or 4, little-endian; any
    /// other length changes nothing).
    pub fn write_bytes(&mut self, offset: u16, data: &[u8]) -> Option<ConfigChange> {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        self.write(offset, data.len(), u32::from_le_bytes(bytes))
    }

    /// The BAR (lower slot index) whose register holds byte `at`.
    fn bar_slot(&self, at: usize) -> Option<usize> {
        let bar0 = usize::from(reg::BAR0);
        if !(bar0..bar0 + 24).contains(&at) {
            return None;
        }
        let slot = (at - bar0) / 4;
        match (
            self.bars[slot],
            slot.checked_sub(1).and_then(|s| self.bars[s]),
        ) {
            (Some(_), _) => Some(slot),
            (None, Some(prev)) if prev.is_64bit() => Some(slot - 1),
            _ => None,
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(reg::COMMAND)
    }

    /// Sets or clears command bits (for the VMM: e.g. bus mastering off while the zone is
    /// paused). Returns the previous value.
    pub fn set_command(&mut self, value: u16) -> u16 {
        let before = self.command();
        self.put(reg::COMMAND, &value.to_le_bytes());
        before
    }

    /// The capabilities, `(offset, id)`, in list order.
    pub fn capabilities(&self) -> impl Iterator<Item = (u16, u8)> + '_ {
        self.capabilities.iter().map(|&(o, id, _)| (o, id))
    }
}

/// The byte index of a valid access.
fn checked(offset: u16, len: usize) -> Option<usize> {
    let at = usize::from(offset);
    let valid = matches!(len, 1 | 2 | 4) && at.is_multiple_of(len) && at + len <= CONFIG_SPACE_SIZE;
    valid.then_some(at)
}
