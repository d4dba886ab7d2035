//! [`RoutedMsix`]: an emulated MSI-X table whose vectors KVM delivers, kept routed as the guest
//! programs them.

use super::ConfigSpace;
use super::msix::{Delivery, Msix, TableChange};
use crate::device::{AttachContext, MsiError, MsiVector};

/// MSI-X of a function, delivered through KVM: the emulated table and PBA ([`Msix`]) plus one
/// [`MsiVector`] per table entry. A vector is routed while the guest has it enabled and
/// unmasked (with the message it wrote) and unrouted otherwise, so the vector's eventfd can be
/// handed to whoever raises it (the function's own thread, or the host's VFIO driver).
#[derive(Debug)]
pub struct RoutedMsix {
    msix: Msix,
    vectors: Vec<MsiVector>,
}

impl RoutedMsix {
    /// One KVM vector for each of `msix`'s table entries.
    pub fn new(msix: Msix, cx: &AttachContext) -> Result<Self, MsiError> {
        let vectors = (0..msix.vectors())
            .map(|_| cx.msi_vector())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { msix, vectors })
    }

    /// The emulated state.
    pub fn msix(&self) -> &Msix {
        &self.msix
    }

    /// The KVM vector behind table entry `vector`.
    pub fn vector(&self, vector: u16) -> Option<&MsiVector> {
        self.vectors.get(usize::from(vector))
    }

    /// After a guest write to the MSI-X capability at `capability` of `config`: takes the new
    /// message control (enable, function mask) and routes every vector again.
    pub fn control_written(
        &mut self,
        config: &ConfigSpace,
        capability: u16,
    ) -> Result<(), MsiError> {
        let control = config
            .bytes(capability + 2, 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        let deliver = self.msix.set_control(control);
        for vector in 0..self.msix.vectors() {
            self.reroute(vector)?;
        }
        self.apply(deliver)
    }

    /// A guest write into the table (at `offset` from its start).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Result<(), MsiError> {
        let changes = self.msix.write_table(offset, data);
        self.apply(changes)
    }

    /// A guest read of the table.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        self.msix.read_table(offset, data);
    }

    /// A guest read of the PBA.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        self.msix.read_pba(offset, data);
    }

    /// The function raises `vector`: delivered now, or pending while masked.
    pub fn raise(&mut self, vector: u16) {
        if let Delivery::Send(_) = self.msix.trigger(vector)
            && let Some(v) = self.vectors.get(usize::from(vector))
        {
            v.trigger();
        }
    }

    fn apply(&mut self, changes: Vec<TableChange>) -> Result<(), MsiError> {
        for change in changes {
            match change {
                TableChange::Vector { vector } => self.reroute(vector)?,
                TableChange::Deliver { vector, .. } => {
                    self.reroute(vector)?;
                    if let Some(v) = self.vectors.get(usize::from(vector)) {
                        v.trigger();
                    }
                }
            }
        }
        Ok(())
    }

    fn reroute(&mut self, vector: u16) -> Result<(), MsiError> {
        match self.vectors.get(usize::from(vector)) {
            Some(v) => v.route_as(self.msix.message(vector)),
            None => Ok(()),
        }
    }
}
