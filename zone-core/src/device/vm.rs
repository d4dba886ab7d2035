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

/// KVM_CREATE_DEVICE (`_IOWR`: the kernel writes the new device's descriptor back).
const KVM_CREATE_DEVICE: u64 = (3 << 30)
    | ((std::mem::size_of::<kvm_bindings::kvm_create_device>() as u64) << 16)
    | (0xae << 8)
    | 0xe0;

/// A descriptor of the zone's VM, for its devices.
#[derive(Debug)]
pub(crate) struct VmHandle(File, std::sync::OnceLock<File>);

impl VmHandle {
    /// A descriptor of `vm` of the devices' own.
    pub(crate) fn dup(vm: &VmFd) -> std::io::Result<Arc<Self>> {
        // SAFETY: dup of a descriptor we hold; the new descriptor is owned by the File below.
        let fd = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor of a KVM VM that nothing else owns.
        Ok(Arc::new(Self(
            unsafe { File::from_raw_fd(fd) },
            std::sync::OnceLock::new(),
        )))
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
        self.set_irqfd(&kvm_irqfd {
            fd: evt.as_raw_fd() as u32,
            gsi,
            flags,
            ..Default::default()
        })
    }

    /// Issues KVM_IRQFD with `irqfd`.
    fn set_irqfd(&self, irqfd: &kvm_irqfd) -> std::io::Result<()> {
        // SAFETY: KVM_IRQFD reads a `struct kvm_irqfd`, which lives across the call.
        unsafe { self.ioctl(KVM_IRQFD, irqfd) }
    }

    /// Wires `evt` to level-triggered `gsi` with KVM's resampler: a write to `evt` asserts the
    /// line, the guest's end of interrupt deasserts it and signals `resample` (an INTx line).
    pub(crate) fn irqfd_resample(
        &self,
        evt: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> std::io::Result<()> {
        self.set_irqfd(&kvm_irqfd {
            fd: evt.as_raw_fd() as u32,
            gsi,
            flags: kvm_bindings::KVM_IRQFD_FLAG_RESAMPLE,
            resamplefd: resample.as_raw_fd() as u32,
            ..Default::default()
        })
    }

    /// A descriptor of the VM's KVM VFIO device (KVM allows one a VM): created on the first call,
    /// a duplicate on each. VFIO groups registered with it tell KVM about a passed-through
    /// device's DMA (whether it snoops the CPU's caches).
    pub(crate) fn kvm_vfio_device(&self) -> std::io::Result<File> {
        if let Some(device) = self.1.get() {
            return device.try_clone();
        }
        let mut create = kvm_bindings::kvm_create_device {
            type_: kvm_bindings::kvm_device_type_KVM_DEV_TYPE_VFIO,
            ..Default::default()
        };
        // SAFETY: KVM_CREATE_DEVICE reads and writes a `struct kvm_create_device`, which
        // lives across the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), KVM_CREATE_DEVICE as _, &mut create) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
        let device = unsafe { File::from_raw_fd(create.fd as i32) };
        // Attachments are created one after the other, on the building thread: the lock
        // is still empty here.
        self.1.get_or_init(|| device).try_clone()
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
        assert_eq!(KVM_CREATE_DEVICE, 0xc00c_aee0);
    }

    /// On this machine's KVM (skipped without one): the VM's VFIO device is created once, and
    /// each call hands out a descriptor of that one device (KVM refuses a second).
    #[test]
    fn one_kvm_vfio_device_a_vm() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIPPED one_kvm_vfio_device_a_vm: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let handle = VmHandle::dup(&vm).unwrap();
        let (a, b) = (handle.kvm_vfio_device(), handle.kvm_vfio_device());
        let (Ok(a), Ok(b)) = (a, b) else {
            panic!("KVM's VFIO device: {:?}", handle.kvm_vfio_device().err());
        };
        let link = |f: &File| std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()));
        let (la, lb) = (link(&a).unwrap(), link(&b).unwrap());
        assert_eq!(la, lb);
        assert!(la.to_string_lossy().contains("kvm-vfio"), "{la:?}");
    }
}
