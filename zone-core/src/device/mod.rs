//! The device API: how a crate outside zone-core (zone-net, zone-gpu, your own) adds a device to a
//! zone. Small enough to read in one sitting.
//!
//! # The pieces
//!
//! 1. **An [`Attachment`]** is what a builder extension hands to
//!    [`ZoneBuilder::attach`](crate::ZoneBuilder::attach): the description of one device, granted
//!    explicitly. zone-core calls it twice while building a Linux zone:
//!    [`prepare`](Attachment::prepare) before the guest is set up (kernel modules and command-line
//!    arguments the guest needs, through [`GuestSetup`]), and [`attach`](Attachment::attach) once
//!    the VM exists, to create the device model.
//! 2. **A [`VirtioDevice`]** (or, for an attachment whose [`Attachment::transport`] is
//!    [`Transport::Pci`], a [`pci::PciFunction`] on the zone's PCI bus, with MSI vectors from
//!    [`AttachContext::msi_vector`], an INTx line from [`AttachContext::intx_line`] and, for a
//!    passed-through device, KVM's VFIO device from [`AttachContext::kvm_vfio_device`]) is the
//!    device model the guest's driver talks to through a transport
//!    (virtio-mmio today, described in the DSDT): its type, features, queues and configuration
//!    space. When the driver sets DRIVER_OK the transport calls
//!    [`activate`](VirtioDevice::activate) with an [`Activation`] (guest memory, the configured
//!    queues, one notification eventfd per queue, the device's [`Interrupt`]) and gets back a
//!    [`DeviceWorker`].
//! 3. **A [`DeviceWorker`]** runs on the device's own thread under rust-vmm's `event-manager`: it
//!    is a [`MutEventSubscriber`] that registers the queue eventfds (and any fd of its own, e.g.
//!    host sockets or timers) and processes them; [`pause`](DeviceWorker::pause) and
//!    [`resume`](DeviceWorker::resume) come on the same thread when the zone is paused or
//!    resumed. Devices that only react to their queues implement [`QueueHandler`] and wrap it in
//!    a [`QueueWorker`], which does the event-manager glue and the pausing.
//!    The device signals the guest with [`Interrupt::notify_queue`] and
//!    [`Interrupt::notify_config`].
//! 4. **A [`DeviceControl`]** is the device's face to the zone's controllers, on any thread:
//!    counters that appear in [`ZoneMetrics::devices`](crate::ZoneMetrics), what happens to it
//!    when the zone is quarantined or released, and what it does when the zone stops. Its concrete
//!    type is also how a crate's extension trait finds the device again:
//!    [`ZoneHandle::device::<T>()`](crate::ZoneHandle::device).
//! 5. **A [`DeviceHost`]** lets a device report to its zone from its own thread: policy
//!    [`Denial`](crate::Denial)s and [`Violation`](crate::Violation)s into the zone's event
//!    stream.
//!
//! # Threads and lifetime
//! Each active device has one thread, named `<zone>/<device>`, running one `EventManager` with
//! the device's worker (one manager per device thread, not one per zone: a device that is slow
//! for a moment, a disk flush or a burst of host sockets, never delays another device, and each
//! kind of device thread can have a filter of its own). The thread starts when the driver sets
//! DRIVER_OK, stops when the driver resets the device, and is stopped and joined when the zone
//! stops (before [`ZoneHandle::wait`](crate::ZoneHandle::wait) returns) or is dropped.
//!
//! # Containment
//! [`ZoneHandle::pause`](crate::ZoneHandle::pause) returns once every vCPU is parked *and* every
//! device worker has acknowledged [`DeviceWorker::pause`]: a paused zone moves no data.
//! [`ZoneHandle::quarantine`](crate::ZoneHandle::quarantine) pauses, then calls
//! [`DeviceControl::quarantine`] on every device (a network cuts its link and reports its open
//! flows) and gathers the evidence.

mod attach;
mod control;
mod host;
pub(crate) mod interrupt;
mod intx;
mod msi;
pub mod pci;
mod virtio;
mod vm;
mod worker;

pub use attach::{AttachContext, AttachError, Attached, Attachment, GuestSetup, Transport};
pub use control::{DeviceControl, DeviceCounters, DeviceEvidence};
pub use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
pub use host::DeviceHost;
pub use interrupt::Interrupt;
pub use intx::IntxLine;
pub use msi::{MAX_MSI_VECTORS, MsiError, MsiVector};
pub use virtio::{
    ActivateError, Activation, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
    read_config_bytes,
};
pub use worker::{DeviceWorker, QueueHandler, QueueWorker};

pub(crate) use attach::AttachedDevice;
pub(crate) use control::Devices;
pub(crate) use msi::MsiRouter;
pub(crate) use vm::{KVM_SET_GSI_ROUTING, KVM_SET_USER_MEMORY_REGION, VmHandle};
pub(crate) use worker::DeviceThread;
