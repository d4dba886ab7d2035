//! MSI-X, emulated: the capability's message control, the vector table and the pending-bit
//! array (PBA) that live in a BAR. A passed-through device's own table is trapped and this one
//! stands in for it, so the guest never programs the device's real MSI-X table: the VMM routes
//! each vector through KVM (an irqfd per vector) instead.

use super::PciError;

/// MSI-X capability ID.
pub const CAPABILITY_ID: u8 = 0x11;
/// Most vectors a function has.
pub const MAX_VECTORS: u16 = 2048;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
const ENABLE: u16 = 1 << 15;
/// Message control: function mask (every vector masked).
const FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: masked.
const VECTOR_MASKED: u32 = 1;

/// One MSI message: where the device writes and what.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address (an x86 LAPIC address, 0xfee0_0000 | destination).
    pub address: u64,
    /// Data (vector and delivery mode).
    pub data: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    message: MsiMessage,
    control: u32,
}

/// What happened to a vector the device raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Deliver this message now.
    Send(MsiMessage),
    /// The vector (or the function) is masked: its pending bit is set.
    Pending,
    /// MSI-X is off, or no such vector: nothing happens.
    Dropped,
}

/// What a write to the table changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableChange {
    /// Vector `vector`'s message or mask changed; route it again.
    Vector {
        /// The vector.
        vector: u16,
    },
    /// Vector `vector` was unmasked while pending: deliver `message` now (its pending bit is
    /// cleared).
    Deliver {
        /// The vector.
        vector: u16,
        /// Its message.
        message: MsiMessage,
    },
}

/// The MSI-X state of one function.
#[derive(Clone, Debug)]
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    control: u16,
}

impl Msix {
    /// `vectors` vectors (1 to [`MAX_VECTORS`]), each masked, MSI-X disabled.
    pub fn new(vectors: u16) -> Result<Self, PciError> {
        if vectors == 0 || vectors > MAX_VECTORS {
            return Err(PciError::MsixVectors { vectors });
        }
        Ok(Self {
            entries: vec![
                Entry {
                    message: MsiMessage::default(),
                    control: VECTOR_MASKED,
                };
                usize::from(vectors)
            ],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            control: vectors - 1,
        })
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes of the table.
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors()) * ENTRY_SIZE
    }

    /// Bytes of the PBA (whole quadwords).
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability's body (after ID and next pointer) and its write mask, for
    /// [`ConfigSpace::add_capability`](super::ConfigSpace::add_capability): message control,
    /// then table and PBA locations (`BAR index | offset`, offsets 8-byte aligned).
    pub fn capability(
        &self,
        table: (u8, u32),
        pba: (u8, u32),
    ) -> Result<([u8; 10], [u8; 10]), PciError> {
        if table.0 > 5 || pba.0 > 5 || !table.1.is_multiple_of(8) || !pba.1.is_multiple_of(8) {
            return Err(PciError::MsixLayout);
        }
        let mut body = [0u8; 10];
        body[..2].copy_from_slice(&self.control.to_le_bytes());
        body[2..6].copy_from_slice(&(table.1 | u32::from(table.0)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba.1 | u32::from(pba.0)).to_le_bytes());
        let mut mask = [0u8; 10];
        mask[..2].copy_from_slice(&(ENABLE | FUNCTION_MASK).to_le_bytes());
        Ok((body, mask))
    }

    /// Takes the message control the guest wrote (from the capability). Returns the vectors to
    /// deliver now: pending ones that the write unmasked.
    pub fn set_control(&mut self, control: u16) -> Vec<TableChange> {
        self.control = (self.control & 0x07ff) | (control & (ENABLE | FUNCTION_MASK));
        self.deliverable()
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.control & ENABLE != 0
    }

    /// Whether the whole function is masked.
    pub fn function_masked(&self) -> bool {
        self.control & FUNCTION_MASK != 0
    }

    /// The message of `vector`, if unmasked and MSI-X is on.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        let e = self.entries.get(usize::from(vector))?;
        (self.enabled() && !self.function_masked() && e.control & VECTOR_MASKED == 0)
            .then_some(e.message)
    }

    /// The device raised `vector`.
    pub fn trigger(&mut self, vector: u16) -> Delivery {
        if !self.enabled() || usize::from(vector) >= self.entries.len() {
            return Delivery::Dropped;
        }
        match self.message(vector) {
            Some(m) => Delivery::Send(m),
            None => {
                self.pending[usize::from(vector) / 64] |= 1 << (vector % 64);
                Delivery::Pending
            }
        }
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    /// Reads the table at byte `offset` into `data` (4 or 8 bytes, naturally aligned; other
    /// accesses read as zeros).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !aligned(offset, data.len()) {
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            let Some(entry) = self.entries.get((at / ENTRY_SIZE) as usize) else {
                return;
            };
            let words = [
                entry.message.address as u32,
                (entry.message.address >> 32) as u32,
                entry.message.data,
                entry.control,
            ];
            let word = words[((at % ENTRY_SIZE) / 4) as usize];
            *byte = word.to_le_bytes()[(at % 4) as usize];
        }
    }

    /// Writes `data` (4 or 8 bytes, naturally aligned) at byte `offset` of the table. Message
    /// fields of an unmasked vector are written too (the spec leaves that undefined; Linux
    /// masks first); reserved vector-control bits stay zero.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<TableChange> {
        if !aligned(offset, data.len()) {
            return Vec::new();
        }
        let mut changed = Vec::new();
        for (i, chunk) in data.chunks(4).enumerate() {
            let at = offset + 4 * i as u64;
            let vector = (at / ENTRY_SIZE) as usize;
            let Some(entry) = self.entries.get_mut(vector) else {
                break;
            };
            let word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let before = *entry;
            match (at % ENTRY_SIZE) / 4 {
                0 => {
                    entry.message.address = (entry.message.address & !0xffff_ffff) | u64::from(word)
                }
                1 => {
                    entry.message.address =
                        (entry.message.address & 0xffff_ffff) | (u64::from(word) << 32)
                }
                2 => entry.message.data = word,
                _ => entry.control = word & VECTOR_MASKED,
            }
            if *entry != before
                && !changed.contains(&TableChange::Vector {
                    vector: vector as u16,
                })
            {
                changed.push(TableChange::Vector {
                    vector: vector as u16,
                });
            }
        }
        changed.extend(self.deliverable());
        changed
    }

    /// Reads the PBA at byte `offset` (4 or 8 bytes, aligned; others read as zeros). The PBA is
    /// read-only.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !aligned(offset, data.len()) {
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            if let Some(word) = self.pending.get((at / 8) as usize) {
                *byte = word.to_le_bytes()[(at % 8) as usize];
            }
        }
    }

    /// Pending vectors that may now be delivered: their bits are cleared.
    fn deliverable(&mut self) -> Vec<TableChange> {
        let mut out = Vec::new();
        for vector in 0..self.vectors() {
            if self.is_pending(vector)
                && let Some(message) = self.message(vector)
            {
                self.pending[usize::from(vector) / 64] &= !(1 << (vector % 64));
                out.push(TableChange::Deliver { vector, message });
            }
        }
        out
    }
}

fn aligned(offset: u64, len: usize) -> bool {
    matches!(len, 4 | 8) && offset.is_multiple_of(len as u64)
}
