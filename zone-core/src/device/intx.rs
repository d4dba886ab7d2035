//! INTx: a PCI function's level-triggered interrupt line, for a function without MSI or before
//! its driver enables MSI. The line is one of the in-kernel IOAPIC's pins 20-23 (the function's
//! slot and pin decide which, and the DSDT's `_PRT` tells the guest), wired through a KVM irqfd
//! with a resampler: a write to the trigger eventfd asserts the line, the guest's end of interrupt
//! deasserts it and signals the resample eventfd, and the function asserts it again if it still
//! has an interrupt pending. VFIO takes the two eventfds as they are (its INTx trigger and unmask).

use super::msi::MsiError;
use super::vm::VmHandle;
use kvm_bindings::KVM_IRQFD_FLAG_DEASSIGN;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// The INTA# line of one PCI function (see the module's documentation). Dropping it unwires it.
pub struct IntxLine {
    vm: Arc<VmHandle>,
    gsi: u32,
    trigger: EventFd,
    resample: EventFd,
}

impl std::fmt::Debug for IntxLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntxLine").field("gsi", &self.gsi).finish()
    }
}

impl IntxLine {
    /// A line on `gsi`, wired through `vm`.
    pub(crate) fn new(vm: Arc<VmHandle>, gsi: u32) -> Result<Self, MsiError> {
        let err = |source| MsiError::Irqfd { gsi, source };
        let trigger = EventFd::new(libc::EFD_NONBLOCK).map_err(err)?;
        let resample = EventFd::new(libc::EFD_NONBLOCK).map_err(err)?;
        vm.irqfd_resample(&trigger, &resample, gsi).map_err(err)?;
        Ok(Self {
            vm,
            gsi,
            trigger,
            resample,
        })
    }

    /// The IOAPIC pin (GSI) the line drives.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Written to assert the line.
    pub fn trigger(&self) -> &EventFd {
        &self.trigger
    }

    /// Signalled when the guest ends the interrupt and KVM deasserts the line.
    pub fn resample(&self) -> &EventFd {
        &self.resample
    }

    /// Asserts the line (until the guest's end of interrupt).
    pub fn raise(&self) {
        // A full counter means the line is already asserted: nothing is lost.
        let _ = self.trigger.write(1);
    }
}

impl Drop for IntxLine {
    fn drop(&mut self) {
        let _ = self
            .vm
            .irqfd(&self.trigger, self.gsi, KVM_IRQFD_FLAG_DEASSIGN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this machine's KVM (skipped without one): a line with a resampler on an IOAPIC pin is
    /// accepted, raised, and unwired on drop; the pin takes a second line after it.
    #[test]
    fn kvm_wires_a_resampled_line() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIPPED kvm_wires_a_resampled_line: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let handle = VmHandle::dup(&vm).unwrap();
        let line = IntxLine::new(handle.clone(), 21).unwrap();
        assert_eq!(line.gsi(), 21);
        line.raise();
        // The same eventfd cannot be wired twice while it is.
        assert!(
            handle
                .irqfd_resample(line.trigger(), line.resample(), 21)
                .is_err()
        );
        drop(line);
        let again = IntxLine::new(handle, 21).unwrap();
        again.raise();
    }
}
