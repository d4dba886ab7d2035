//! Attaching a device from a builder extension: [`Attachment`], and what zone-core gives it while
//! the zone is built.

use super::intx::IntxLine;
use super::msi::{MsiError, MsiRouter, MsiVector};
use super::pci::PciFunction;
use super::{DeviceControl, DeviceHost, VirtioDevice};
use std::any::Any;
use std::sync::Arc;

/// One device granted to a zone by its builder (through
/// [`ZoneBuilder::attach`](crate::ZoneBuilder::attach), usually from a builder extension such as
/// zone-net's `.net(..)`). Nothing is attached that the builder did not name.
pub trait Attachment: Send + 'static {
    /// The kind of device (`net`, `gpu`): devices are named `<kind><n>` in their zone (`net0`).
    fn kind(&self) -> &'static str;

    /// Where the device goes: a virtio device on virtio-mmio (the default), or a function on
    /// the zone's PCI bus. A Linux zone has a PCI bus only when an attachment asks for one.
    fn transport(&self) -> Transport {
        Transport::VirtioMmio
    }

    /// Called before the guest is prepared: the kernel modules and command-line arguments the
    /// guest needs for this device. Default: none.
    fn prepare(&mut self, _guest: &mut GuestSetup<'_>) -> Result<(), AttachError> {
        Ok(())
    }

    /// Creates the device model once the VM exists.
    fn attach(self: Box<Self>, cx: &AttachContext) -> Result<Attached, AttachError>;
}

/// Where an attachment's device sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A [`VirtioDevice`] on virtio-mmio, described in the DSDT.
    VirtioMmio,
    /// A [`PciFunction`] on the zone's PCI bus (ECAM, MCFG, MSI and MSI-X through KVM).
    Pci,
}

/// What an attachment may ask of the guest before it boots.
#[derive(Debug)]
pub struct GuestSetup<'a> {
    pub(crate) zone: &'a str,
    pub(crate) device: &'a str,
    pub(crate) modules: &'a mut Vec<String>,
    pub(crate) cmdline: &'a mut Vec<String>,
}

impl GuestSetup<'_> {
    /// The zone's name.
    pub fn zone(&self) -> &str {
        self.zone
    }

    /// The device's name in its zone (`net0`, ...).
    pub fn device(&self) -> &str {
        self.device
    }

    /// Loads kernel module `name` (and its dependencies) at boot, when the kernel is modular and
    /// does not have it built in.
    pub fn module(&mut self, name: &str) {
        if !self.modules.iter().any(|m| m == name) {
            self.modules.push(name.to_string());
        }
    }

    /// Appends `arg` to the guest kernel's command line (the agent reads `zones.*` arguments).
    pub fn cmdline(&mut self, arg: impl Into<String>) {
        self.cmdline.push(arg.into());
    }
}

/// What an attachment gets when its device is created.
#[derive(Debug)]
pub struct AttachContext {
    pub(crate) host: DeviceHost,
    pub(crate) msi: Option<Arc<MsiRouter>>,
    /// The GSI of the function's INTA# (a PCI function's slot decides it).
    pub(crate) intx_gsi: Option<u32>,
    pub(crate) memory: vm_memory::GuestMemoryMmap,
}

impl AttachContext {
    /// The zone's name.
    pub fn zone(&self) -> &str {
        self.host.zone()
    }

    /// The device's name in its zone.
    pub fn device(&self) -> &str {
        self.host.device()
    }

    /// The device's link to its zone, for its threads to report through.
    pub fn host(&self) -> DeviceHost {
        self.host.clone()
    }

    /// The zone's guest memory (a passed-through device maps it for DMA, guest-physical
    /// addresses as I/O virtual addresses).
    pub fn memory(&self) -> &vm_memory::GuestMemoryMmap {
        &self.memory
    }

    /// A new MSI vector routed through KVM (for a PCI function's MSI or MSI-X): silent until
    /// the guest gives it a message and the function [`route`](MsiVector::route)s it.
    /// Only attachments on [`Transport::Pci`] get vectors.
    pub fn msi_vector(&self) -> Result<MsiVector, MsiError> {
        match &self.msi {
            Some(router) => router.vector(),
            None => Err(MsiError::NotPci),
        }
    }

    /// A descriptor of the zone's KVM VFIO device (one a VM; each call a duplicate), for a
    /// passed-through device's VFIO groups: KVM learns from it whether their DMA snoops the CPU's
    /// caches. Only attachments on [`Transport::Pci`] get one.
    pub fn kvm_vfio_device(&self) -> std::io::Result<kvm_ioctls::DeviceFd> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let Some(router) = &self.msi else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the KVM VFIO device is for PCI functions (an attachment on Transport::Pci)",
            ));
        };
        let file = router.vm().kvm_vfio_device()?;
        // SAFETY: the descriptor is a KVM device's, owned by `file` and handed over here.
        Ok(unsafe { kvm_ioctls::DeviceFd::from_raw_fd(file.into_raw_fd()) })
    }

    /// The function's INTA# line (a level-triggered IOAPIC pin, see [`IntxLine`]), for a PCI
    /// function that reports interrupt pin 1 (INTA#) in its header. The guest finds the line
    /// through the DSDT's `_PRT`. Only attachments on [`Transport::Pci`] get one.
    pub fn intx_line(&self) -> Result<IntxLine, MsiError> {
        match (&self.msi, self.intx_gsi) {
            (Some(router), Some(gsi)) => IntxLine::new(router.vm().clone(), gsi),
            _ => Err(MsiError::NotPci),
        }
    }
}

/// A device model ready to be placed on the zone's transport, with its control.
pub struct Attached {
    pub(crate) device: AttachedDevice,
    pub(crate) control: Option<(Arc<dyn DeviceControl>, Arc<dyn Any + Send + Sync>)>,
}

/// The device model of an [`Attached`].
pub(crate) enum AttachedDevice {
    Virtio(Box<dyn VirtioDevice>),
    Pci(Box<dyn PciFunction>),
}

impl AttachedDevice {
    pub(crate) fn transport(&self) -> Transport {
        match self {
            Self::Virtio(_) => Transport::VirtioMmio,
            Self::Pci(_) => Transport::Pci,
        }
    }
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Attached");
        match &self.device {
            AttachedDevice::Virtio(v) => d.field("device_type", &v.device_type()),
            AttachedDevice::Pci(p) => d.field("pci", p.config()),
        };
        d.field("control", &self.control.is_some()).finish()
    }
}

impl Attached {
    /// `device`, without a control.
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        Self {
            device: AttachedDevice::Virtio(device),
            control: None,
        }
    }

    /// A PCI function (for an attachment whose [`transport`](Attachment::transport) is
    /// [`Transport::Pci`]), without a control.
    pub fn pci(function: Box<dyn PciFunction>) -> Self {
        Self {
            device: AttachedDevice::Pci(function),
            control: None,
        }
    }

    /// Gives the device a control: its counters, quarantine and stop hooks, and the typed handle
    /// that [`ZoneHandle::device::<T>()`](crate::ZoneHandle::device) finds.
    pub fn with_control<T: DeviceControl>(mut self, control: Arc<T>) -> Self {
        self.control = Some((control.clone(), control));
        self
    }
}

/// Why an attachment could not be prepared or attached: the attachment's own error, which names
/// the fix.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct AttachError(pub Box<dyn std::error::Error + Send + Sync>);

impl AttachError {
    /// Wraps the attachment's error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}
