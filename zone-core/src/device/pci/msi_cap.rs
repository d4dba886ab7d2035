//! MSI (not MSI-X), emulated: one vector, 64-bit message address, no per-vector masking. The
//! guest writes the message and the enable bit into the capability; [`RoutedMsi`] keeps the
//! vector routed through KVM to what the guest wrote while it is enabled.

use super::{ConfigSpace, MsiMessage};
use crate::device::{AttachContext, MsiError, MsiVector};

/// MSI capability ID.
pub const MSI_CAPABILITY_ID: u8 = 0x05;
/// Message control: MSI enable.
const ENABLE: u16 = 1;
/// Message control: 64-bit address capable.
const ADDRESS_64: u16 = 1 << 7;

/// The capability's body (after ID and next pointer) and its write mask, for
/// [`ConfigSpace::add_capability`]: message control (1 vector, 64-bit), address low, address
/// high, data. The guest may write the enable bit, the address (dword aligned) and the data.
pub fn msi_capability() -> ([u8; 12], [u8; 12]) {
    let mut body = [0u8; 12];
    body[..2].copy_from_slice(&ADDRESS_64.to_le_bytes());
    let mut mask = [0u8; 12];
    mask[..2].copy_from_slice(&ENABLE.to_le_bytes());
    mask[2..6].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
    mask[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    mask[10..12].copy_from_slice(&u16::MAX.to_le_bytes());
    (body, mask)
}

/// The message the guest programmed into the MSI capability at `at`, if it enabled MSI.
pub fn msi_message(config: &ConfigSpace, at: u16) -> Option<MsiMessage> {
    let b = config.bytes(at + 2, 12)?;
    let control = u16::from_le_bytes([b[0], b[1]]);
    let low = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let high = u32::from_le_bytes([b[6], b[7], b[8], b[9]]);
    let data = u16::from_le_bytes([b[10], b[11]]);
    (control & ENABLE != 0).then_some(MsiMessage {
        address: u64::from(high) << 32 | u64::from(low),
        data: u32::from(data),
    })
}

/// A function's MSI vector, delivered through KVM as the guest programmed it.
#[derive(Debug)]
pub struct RoutedMsi {
    vector: MsiVector,
    routed: Option<MsiMessage>,
}

impl RoutedMsi {
    /// A KVM vector for the function's MSI, not routed until the guest enables it.
    pub fn new(cx: &AttachContext) -> Result<Self, MsiError> {
        Ok(Self {
            vector: cx.msi_vector()?,
            routed: None,
        })
    }

    /// The KVM vector (its eventfd is what VFIO signals).
    pub fn vector(&self) -> &MsiVector {
        &self.vector
    }

    /// Whether the guest has MSI enabled.
    pub fn enabled(&self) -> bool {
        self.routed.is_some()
    }

    /// After a guest write to the MSI capability at `at`: routes the vector as the guest now
    /// has it (or not at all, when MSI is off).
    pub fn capability_written(&mut self, config: &ConfigSpace, at: u16) -> Result<(), MsiError> {
        let want = msi_message(config, at);
        self.vector.route_as(want)?;
        self.routed = want;
        Ok(())
    }

    /// The function raises its interrupt: delivered when MSI is on, dropped otherwise.
    pub fn raise(&self) {
        if self.routed.is_some() {
            self.vector.trigger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::pci::Header;

    #[test]
    fn the_guest_programs_message_and_enable_and_nothing_else() {
        let mut c = ConfigSpace::new(&Header::default());
        let (body, mask) = msi_capability();
        let at = c.add_capability(MSI_CAPABILITY_ID, &body, &mask).unwrap();
        assert_eq!(msi_message(&c, at), None, "off after reset");
        assert_eq!(c.read(at + 2, 2), u32::from(ADDRESS_64), "1 vector, 64-bit");
        c.write(at + 4, 4, 0xfee0_1003);
        c.write(at + 8, 4, 0x1);
        c.write(at + 12, 2, 0x40de);
        assert_eq!(msi_message(&c, at), None, "not yet enabled");
        c.write(at + 2, 2, 0xffff);
        assert_eq!(
            c.read(at + 2, 2),
            u32::from(ADDRESS_64 | ENABLE),
            "multiple messages and masking stay off"
        );
        assert_eq!(
            msi_message(&c, at),
            Some(MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x40de
            })
        );
    }
}
