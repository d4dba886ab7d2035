//! PCI passthrough for zones: a GPU (or any PCI device) bound to the host's `vfio-pci` driver,
//! handed to one Linux zone by an explicit grant, and taken back clean.
//!
//! ```no_run
//! use zone_core::Zone;
//! use zone_gpu::{Gpu, GpuBuilderExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let zone = Zone::builder()
//!     .memory_mib(4096)
//!     .linux(zone_core::LinuxBoot::host_kernel()?.busybox())
//!     // Only this device, and only if it is the one expected.
//!     .gpu(Gpu::vfio("0000:41:00.0").expect_id(0x10de, 0x2330))
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! # What a grant checks (nothing is passed through unless every check holds)
//! - the address names a PCI device, with the vendor:device ID expected (when given);
//! - the device is bound to `vfio-pci` ([`Gpu::bind_vfio`] binds it when the caller may; otherwise
//!   the error prints the sysfs commands);
//! - the host has an IOMMU and the device's IOMMU group holds no other device (which would share
//!   the device's DMA view); VFIO refuses an IOMMU without interrupt remapping, and zones never
//!   asks for its unsafe mode;
//! - no other zone of this process holds the device (the kernel refuses other processes);
//! - the process may pin the guest's memory for DMA (`RLIMIT_MEMLOCK`, or `CAP_IPC_LOCK`).
//!
//! # What the guest sees
//! One PCI function at 00:01.0 (onwards) of the zone's PCI bus, with the device's configuration
//! space under zones' emulation. zones emulates the header (the device's IDs and class, its memory
//! BARs placed by zones and mapped into the guest where VFIO allows, no expansion ROM, no I/O
//! BARs), and in place at the device's own offsets its MSI-X capability and its MSI capability
//! (one vector): KVM delivers their vectors, and the guest never programs the device's own table.
//! A device with an interrupt pin shows INTA#, routed through VFIO and a KVM irqfd with a
//! resampler while the guest has neither MSI nor MSI-X on. The rest of configuration space (the
//! device's other capabilities, its extended space) goes to VFIO, whose permission tables decide
//! what reaches the device. The guest's command register reaches the device (memory decoding,
//! bus mastering, INTx disable), and all of guest RAM is mapped for the device's DMA at its
//! guest-physical addresses, nothing else. The device's VFIO group is registered with the zone's
//! KVM VFIO device.
//!
//! # Containment
//! Pausing or quarantining the zone turns the device's bus mastering off (no DMA) until it
//! resumes or is released; when the zone stops, bus mastering goes off at once, and when it is
//! dropped the device's interrupts are disabled, its DMA mappings removed and the device reset
//! (where it supports a reset; `resettable` in its counters says which), left bound to
//! `vfio-pci` for the next zone. Counters (in [`ZoneMetrics::devices`](zone_core::ZoneMetrics),
//! as `gpu0`, ...): DMA mapped bytes, trapped BAR reads and writes, refused configuration
//! writes, configuration reads and writes passed to the device; [`GpuControl::interrupts`] and
//! [`GpuControl::intx_interrupts`] read the host's interrupt counts.

mod control;
mod interrupts;
mod policy;
mod vfio;

pub use control::GpuControl;
pub use policy::GpuError;

use std::path::PathBuf;
use zone_core::ZoneBuilder;
use zone_core::device::{AttachContext, AttachError, Attached, Attachment, GuestSetup, Transport};

/// A grant of one PCI device to a zone.
#[derive(Clone, Debug)]
pub struct Gpu {
    address: String,
    expect: Option<(u16, u16)>,
    bind: bool,
    sysfs: PathBuf,
}

impl Gpu {
    /// The device at PCI address `address` (`0000:41:00.0`), passed through with VFIO.
    pub fn vfio(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            expect: None,
            bind: false,
            sysfs: PathBuf::from("/sys"),
        }
    }

    /// Refuses the grant unless the device's vendor and device IDs are these.
    pub fn expect_id(mut self, vendor: u16, device: u16) -> Self {
        self.expect = Some((vendor, device));
        self
    }

    /// Binds the device to `vfio-pci` when it is not (unbinding it from its host driver). Off by
    /// default: taking a device from the host is the caller's decision, and needs root.
    pub fn bind_vfio(mut self, bind: bool) -> Self {
        self.bind = bind;
        self
    }

    /// Reads sysfs from `root` instead of `/sys` (for tests).
    #[doc(hidden)]
    pub fn sysfs_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.sysfs = root.into();
        self
    }

    /// The PCI address granted.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// `.gpu(..)` on a zone builder.
pub trait GpuBuilderExt {
    /// Grants the zone the PCI device `gpu` (one more per call: `gpu0`, `gpu1`, ...).
    fn gpu(self, gpu: Gpu) -> Self;
}

impl GpuBuilderExt for ZoneBuilder {
    fn gpu(self, gpu: Gpu) -> Self {
        self.attach(GpuAttachment { gpu, checked: None })
    }
}

struct GpuAttachment {
    gpu: Gpu,
    checked: Option<policy::Checked>,
}

impl Attachment for GpuAttachment {
    fn kind(&self) -> &'static str {
        "gpu"
    }

    fn transport(&self) -> Transport {
        Transport::Pci
    }

    fn prepare(&mut self, guest: &mut GuestSetup<'_>) -> Result<(), AttachError> {
        let checked = policy::check(&self.gpu, guest.zone()).map_err(AttachError::new)?;
        self.checked = Some(checked);
        Ok(())
    }

    fn attach(self: Box<Self>, cx: &AttachContext) -> Result<Attached, AttachError> {
        let checked = match self.checked {
            Some(c) => c,
            None => policy::check(&self.gpu, cx.zone()).map_err(AttachError::new)?,
        };
        let (function, control) = vfio::open(checked, cx).map_err(AttachError::new)?;
        Ok(Attached::pci(Box::new(function)).with_control(control))
    }
}
