//! The ACPI power-management register of a hardware-reduced platform: the FADT names this one
//! I/O port as sleep-control, sleep-status and reset register. Power-off (S5) and reset both end
//! the zone; zones never reboot.

use super::BusDevice;
use crate::exit::ZoneExit;

/// SLP_EN in the sleep control register.
const SLP_EN: u8 = 1 << 5;

/// What the guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PowerRequest {
    /// S5 power-off.
    Off,
    /// Reset.
    Reset,
}

/// Decides how a power request ends the zone (e.g. looking at the console for a panic).
pub(crate) type PowerPolicy = Box<dyn Fn(PowerRequest) -> ZoneExit + Send + Sync>;

/// The register.
pub(crate) struct PowerRegister {
    reset_value: u8,
    s5_typ: u8,
    policy: PowerPolicy,
}

impl PowerRegister {
    pub(crate) fn new(reset_value: u8, s5_typ: u8, policy: PowerPolicy) -> Self {
        Self {
            reset_value,
            s5_typ,
            policy,
        }
    }
}

impl BusDevice for PowerRegister {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS clear (the platform never wakes from sleep).
        data.fill(0);
    }

    fn write(&self, _offset: u64, data: &[u8]) -> Option<ZoneExit> {
        let &[value] = data else { return None };
        if value == self.reset_value {
            return Some((self.policy)(PowerRequest::Reset));
        }
        if value & SLP_EN != 0 && (value >> 2) & 0x7 == self.s5_typ {
            return Some((self.policy)(PowerRequest::Off));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_and_s5_end_the_zone_other_values_do_not() {
        let reg = PowerRegister::new(
            1,
            5,
            Box::new(|r| match r {
                PowerRequest::Off => ZoneExit::Shutdown,
                PowerRequest::Reset => ZoneExit::Exited(-1),
            }),
        );
        assert_eq!(reg.write(0, &[1]), Some(ZoneExit::Exited(-1)));
        assert_eq!(reg.write(0, &[SLP_EN | (5 << 2)]), Some(ZoneExit::Shutdown));
        assert_eq!(reg.write(0, &[5 << 2]), None, "SLP_EN not set");
        assert_eq!(
            reg.write(0, &[SLP_EN | (3 << 2)]),
            None,
            "S3 is not power-off"
        );
        assert_eq!(reg.write(0, &[1, 1]), None, "wide access");
    }
}
