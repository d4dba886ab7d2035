//! The devices of a Linux zone: COM1, the ACPI power register, and virtio-mmio devices (vsock
//! for exec, block devices for disks), each on its own IOAPIC line.

use super::acpi::{self, MmioDevice};
use super::pci::PciBusBuilder;
use super::{LinuxError, exits, layout};
use crate::builder::BuildError;
use crate::device::{
    AttachContext, AttachError, AttachedDevice, Attachment, DeviceHost, DeviceThread, Devices,
    GuestSetup, Interrupt, MsiRouter, Transport, VirtioDevice,
};
use crate::devices::Bus;
use crate::devices::boot_mark::BootMarkPort;
use crate::devices::power::PowerRegister;
use crate::devices::serial::SerialPort;
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY};
use crate::seccomp::ThreadKind;
use crate::zone::ZoneShared;
use kvm_ioctls::{IoEventAddress, VmFd};
use std::sync::Arc;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest CID of every Linux zone (the host is 2).
pub(crate) const GUEST_CID: u64 = 3;

/// An eventfd wired to interrupt `gsi` of the in-kernel IOAPIC.
pub(crate) fn irq_line(vm: &VmFd, gsi: u32) -> Result<EventFd, LinuxError> {
    let irq_err = |source| LinuxError::Irq { gsi, source };
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(irq_err)?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|e| irq_err(std::io::Error::from_raw_os_error(e.errno())))?;
    Ok(evt)
}

/// The port-I/O devices: COM1 and the ACPI power register.
pub(crate) fn legacy(vm: &VmFd, shared: &Arc<ZoneShared>) -> Result<Bus, LinuxError> {
    let mut pio = Bus::default();
    let serial_irq = irq_line(vm, layout::SERIAL_GSI)?;
    let console = exits::ConsoleWriter(shared.clone());
    let serial = SerialPort::new(serial_irq, Box::new(console));
    pio.insert(u64::from(layout::SERIAL_PORT), 8, Arc::new(serial))?;
    let power_shared = shared.clone();
    let power = PowerRegister::new(
        acpi::RESET_VALUE,
        acpi::S5_SLP_TYP,
        Box::new(move |request| exits::stop_reason(&power_shared, request)),
    );
    pio.insert(u64::from(layout::ACPI_PM_PORT), 1, Arc::new(power))?;
    let marks_shared = shared.clone();
    let marks = BootMarkPort::new(Box::new(move |value| marks_shared.boot.port_mark(value)));
    pio.insert(u64::from(layout::BOOT_MARK_PORT), 1, Arc::new(marks))?;
    Ok(pio)
}

/// Places virtio devices on the MMIO bus, one window and one interrupt line each.
pub(crate) struct VirtioBus<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    zone: &'a str,
    shared: &'a Arc<ZoneShared>,
    devices: Arc<Devices>,
    pub(crate) mmio: Bus,
    pub(crate) described: Vec<MmioDevice>,
    /// The first GSI virtio devices do not get (PCI INTx's pins, with a PCI bus).
    gsi_end: u32,
}

impl<'a> VirtioBus<'a> {
    pub(crate) fn new(
        vm: &'a VmFd,
        mem: &'a GuestMemoryMmap,
        zone: &'a str,
        shared: &'a Arc<ZoneShared>,
        pci: bool,
    ) -> Self {
        Self {
            gsi_end: match pci {
                true => layout::PCI_INTX_GSI,
                false => layout::IOAPIC_PINS,
            },
            vm,
            mem,
            zone,
            shared,
            devices: shared.devices.clone(),
            mmio: Bus::default(),
            described: Vec::new(),
        }
    }

    /// Adds `device` (named `name` in its zone and in its thread's name).
    pub(crate) fn add(
        &mut self,
        name: &str,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(), LinuxError> {
        let index = self.described.len() as u32;
        let gsi = layout::FIRST_DEVICE_GSI + index;
        if gsi >= self.gsi_end {
            return Err(LinuxError::TooManyDevices(index as usize + 1));
        }
        let base = layout::virtio_mmio_base(index);
        let queues = device.queue_max_sizes().len();
        let notify = (0..queues)
            .map(|queue| {
                let evt = EventFd::new(libc::EFD_NONBLOCK)
                    .map_err(|source| LinuxError::Irq { gsi, source })?;
                let at = IoEventAddress::Mmio(base + QUEUE_NOTIFY);
                self.vm
                    .register_ioevent(&evt, &at, queue as u32)
                    .map_err(|e| LinuxError::Irq {
                        gsi,
                        source: std::io::Error::from_raw_os_error(e.errno()),
                    })?;
                Ok(evt)
            })
            .collect::<Result<Vec<_>, LinuxError>>()?;
        let interrupt = Arc::new(Interrupt::new(irq_line(self.vm, gsi)?));
        let thread_name = format!("{}/{name}", thread_prefix(self.zone));
        let filter = self.shared.thread_filter(
            ThreadKind::Device,
            device.syscalls(),
            format!("device {name}"),
        );
        let weak = Arc::downgrade(self.shared);
        let setup = move || {
            if let Err(e) = crate::seccomp::apply(filter) {
                // A device never runs on an unfiltered thread: the zone ends instead.
                if let Some(shared) = weak.upgrade() {
                    shared.stop(crate::exit::ZoneExit::Crashed {
                        vcpu: 0,
                        reason: e.to_string(),
                    });
                }
                return false;
            }
            true
        };
        let thread =
            DeviceThread::spawn(thread_name, setup).map_err(|source| LinuxError::DeviceThread {
                device: name.to_string(),
                source,
            })?;
        self.devices.add_thread(thread.ctl());
        let transport = MmioTransport::new(device, self.mem.clone(), interrupt, notify, thread)
            .map_err(LinuxError::Device)?;
        self.mmio
            .insert(base, layout::VIRTIO_MMIO_SIZE, Arc::new(transport))?;
        crate::trace::device_attached(self.zone, name);
        self.described.push(MmioDevice {
            base,
            size: layout::VIRTIO_MMIO_SIZE,
            gsi,
        });
        Ok(())
    }
}

/// The devices granted by the builder, each with its name in the zone (`<kind><n>`).
pub(crate) struct Attachments(Vec<(String, Box<dyn Attachment>)>);

/// What the attached devices need from the guest.
#[derive(Default)]
pub(crate) struct GuestNeeds {
    pub(crate) modules: Vec<String>,
    pub(crate) cmdline: Vec<String>,
    /// A PCI bus (some attachment is a PCI function).
    pub(crate) pci: bool,
}

impl Attachments {
    /// Names each attachment `<kind><n>`, counting per kind in builder order.
    pub(crate) fn name(attachments: Vec<Box<dyn Attachment>>) -> Self {
        let mut named: Vec<(String, Box<dyn Attachment>)> = Vec::new();
        for a in attachments {
            let n = named.iter().filter(|(_, b)| b.kind() == a.kind()).count();
            named.push((format!("{}{n}", a.kind()), a));
        }
        Self(named)
    }

    /// Asks every attachment what the guest needs.
    pub(crate) fn prepare(&mut self, zone: &str) -> Result<GuestNeeds, BuildError> {
        let mut needs = GuestNeeds::default();
        for (device, a) in &mut self.0 {
            needs.pci |= a.transport() == Transport::Pci;
            let mut guest = GuestSetup {
                zone,
                device,
                modules: &mut needs.modules,
                cmdline: &mut needs.cmdline,
            };
            a.prepare(&mut guest).map_err(|source| BuildError::Attach {
                zone: zone.to_string(),
                device: device.clone(),
                source,
            })?;
        }
        Ok(needs)
    }

    /// Creates every device, registers its control and places it on its bus: virtio devices
    /// on `virtio`, PCI functions on `pci` (with MSI vectors from `msi`).
    pub(crate) fn attach(
        self,
        zone: &str,
        shared: &Arc<ZoneShared>,
        virtio: &mut VirtioBus<'_>,
        mut pci: Option<(&mut PciBusBuilder, Arc<MsiRouter>)>,
    ) -> Result<(), BuildError> {
        for (device, a) in self.0 {
            let err = |source| BuildError::Attach {
                zone: zone.to_string(),
                device: device.clone(),
                source,
            };
            let declared = a.transport();
            let cx = AttachContext {
                host: DeviceHost::new(zone, &device, Arc::downgrade(shared)),
                msi: match (declared, &pci) {
                    (Transport::Pci, Some((_, router))) => Some(router.clone()),
                    _ => None,
                },
                intx_gsi: match (declared, &pci) {
                    (Transport::Pci, Some((bus, _))) => {
                        Some(layout::pci_intx_gsi(bus.next_slot(), 1))
                    }
                    _ => None,
                },
                memory: virtio.mem.clone(),
            };
            let attached = a.attach(&cx).map_err(err)?;
            let returned = attached.device.transport();
            if returned != declared {
                return Err(err(AttachError::new(format!(
                    "the attachment declared transport {declared:?} but made a {returned:?} \
                     device; a guest prepared for one cannot find the other"
                ))));
            }
            if let Some((control, any)) = attached.control {
                shared.devices.register_dyn(&device, control, any);
            }
            let linux_err = |source| BuildError::Linux {
                zone: zone.to_string(),
                source,
            };
            match (attached.device, pci.as_mut()) {
                (AttachedDevice::Virtio(v), _) => virtio.add(&device, v).map_err(linux_err)?,
                (AttachedDevice::Pci(f), Some((bus, _))) => {
                    let slot = bus.add(f).map_err(|e| err(AttachError::new(e)))?;
                    crate::trace::device_attached(zone, &format!("{device} (PCI 00:{slot:02x}.0)"));
                }
                (AttachedDevice::Pci(_), None) => {
                    return Err(err(AttachError::new(
                        "a PCI function on a zone without a PCI bus",
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Up to 8 bytes of the zone name, so that "<prefix>/<kind>" fits Linux's 15-byte thread names.
fn thread_prefix(zone: &str) -> &str {
    let mut end = zone.len().min(8);
    while !zone.is_char_boundary(end) {
        end -= 1;
    }
    &zone[..end]
}
