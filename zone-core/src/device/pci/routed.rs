//! [`RoutedMsix`]: an emulated MSI-X table whose vectors KVM delivers, kept routed as the guest
//! programs them.

use super::msix::{Delivery, Msix, TableChange};
use super::{ConfigSpace, MsiMessage};
use crate::device::{AttachContext, MsiError, MsiVector};

/// MSI-X of a function, delivered through KVM: the emulated table and PBA ([`Msix`]) plus one
/// [`MsiVector`] per table entry. A vector is routed while the guest has it enabled and
/// unmasked (with the message it wrote) and unrouted otherwise, so the vector's eventfd can be
/// handed to whoever raises it (the function's own thread, or the host's VFIO driver).
pub struct RoutedMsix {
    msix: Msix,
    vectors: Vec<MsiVector>,
    routed: Vec<Option<MsiMessage>>,
}

impl std::fmt::Debug for RoutedMsix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedMsix")
            .field("msix", &self.msix)
            .field("routed", &self.routed)
            .finish()
    }
}

impl RoutedMsix {
    /// One KVM vector for each of `msix`'s table entries.
    pub fn new(msix: Msix, cx: &AttachContext) -> Result<Self, MsiError> {
        let vectors = (0..msix.vectors())
            .map(|_| cx.msi_vector())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            routed: vec![None; vectors.len()],
            msix,
            vectors,
        })
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
        let i = usize::from(vector);
        let want = self.msix.message(vector);
        let (Some(v), Some(routed)) = (self.vectors.get(i), self.routed.get_mut(i)) else {
            return Ok(());
        };
        if *routed == want {
            return Ok(());
        }
        match want {
            Some(m) => v.route(m)?,
            None => v.unroute()?,
        }
        *routed = want;
        Ok(())
    }
}
