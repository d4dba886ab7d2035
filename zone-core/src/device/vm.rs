//! The VM ioctls devices issue after the zone is built (MSI routes and their irqfds, the memory
//! slots of mapped BARs), on one descriptor of the VM the zone's devices share: kvm-ioctls makes
//! no second `VmFd` of one VM, so these few requests are made here.

use kvm_bindings::{KvmIrqRouting, kvm_irqfd, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// `_IOW(KVMIO, nr, size)`.
const fn kvm_iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// KVM_IRQFD.
const KVM_IRQFD: u64 = kvm_iow(0x76, std::mem::size_of::<kvm_irqfd>());
/// KVM_SET_GSI_ROUTING (the header; entries follow it). vCPU threads of a zone with PCI functions
/// issue it: a guest's write to an MSI-X table or MSI capability routes the vector again.
pub(crate) const KVM_SET_GSI_ROUTING: u64 =
    kvm_iow(0x6a, std::mem::size_of::<kvm_bindings::kvm_irq_routing>());
/// KVM_SET_USER_MEMORY_REGION. vCPU threads of a zone with PCI functions issue it: a guest's BAR
/// move maps a function's BAR memory again.
pub(crate) const KVM_SET_USER_MEMORY_REGION: u64 =
    kvm_iow(0x46, std::mem::size_of::<kvm_userspace_memory_region>());

/// A descriptor of the zone's VM, for its devices.
#[derive(Debug)]
pub(crate) struct VmHandle(File);

impl VmHandle {
    /// A descriptor of `vm` of the devices' own.
    pub(crate) fn dup(vm: &VmFd) -> std::io::Result<Arc<Self>> {
        // SAFETY: dup of a descriptor we hold; the new descriptor is owned by the File below.
        let fd = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor of a KVM VM that nothing else owns.
        Ok(Arc::new(Self(unsafe { File::from_raw_fd(fd) })))
    }

    /// Issues `request` with `arg`.
    ///
    /// # Safety
    /// `arg` must be what the kernel reads for `request`, and whatever it refers to must stay
    /// valid for as long as the request says.
    unsafe fn ioctl<T>(&self, request: u64, arg: *const T) -> std::io::Result<()> {
        // SAFETY: the caller vouches for the argument; the descriptor is a KVM VM's.
        match unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, arg) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// Wires `evt` to `gsi` (or, with `KVM_IRQFD_FLAG_DEASSIGN` in `flags`, unwires it).
    pub(crate) fn irqfd(&self, evt: &EventFd, gsi: u32, flags: u32) -> std::io::Result<()> {
        let irqfd = kvm_irqfd {
            fd: evt.as_raw_fd() as u32,
            gsi,
            flags,
            ..Default::default()
        };
        // SAFETY: KVM_IRQFD reads a `struct kvm_irqfd`, which lives across the call.
        unsafe { self.ioctl(KVM_IRQFD, &irqfd) }
    }

    /// Wires `evt` to level-triggered `gsi` with KVM's resampler: a write to `evt` asserts the
    /// line, the guest's end of interrupt deasserts it and signals `resample` (an INTx line).
    pub(crate) fn irqfd_resample(
        &self,
        evt: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> std::io::Result<()> {
        let irqfd = kvm_irqfd {
            fd: evt.as_raw_fd() as u32,
            gsi,
            flags: kvm_bindings::KVM_IRQFD_FLAG_RESAMPLE,
            resamplefd: resample.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: KVM_IRQFD reads a `struct kvm_irqfd`, which lives across the call.
        unsafe { self.ioctl(KVM_IRQFD, &irqfd) }
    }

    /// Replaces the VM's GSI routing table with `routing`.
    pub(crate) fn set_gsi_routing(&self, routing: &KvmIrqRouting) -> std::io::Result<()> {
        // SAFETY: KVM_SET_GSI_ROUTING reads the header and its `nr` entries, which the fam
        // wrapper keeps together and alive across the call.
        unsafe { self.ioctl(KVM_SET_GSI_ROUTING, routing.as_fam_struct_ptr()) }
    }

    /// Sets memory slot `region.slot` (a size of 0 removes it).
    ///
    /// # Safety
    /// The host range `region` names must stay mapped until the slot is removed or moved.
    pub(crate) unsafe fn set_user_memory_region(
        &self,
        region: &kvm_userspace_memory_region,
    ) -> std::io::Result<()> {
        // SAFETY: the kernel reads the struct, which lives across the call; the caller keeps the
        // host range mapped while the slot lasts.
        unsafe { self.ioctl(KVM_SET_USER_MEMORY_REGION, region) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
    }
}
