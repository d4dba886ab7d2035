//! MSI vectors routed through KVM: each vector is a GSI of its own with an irqfd, and the zone's
//! GSI routing table maps it to the message the guest programmed (x86 LAPIC address and data).
//! An unrouted vector's irqfd is silent: a raised vector reaches the guest only once the guest
//! gave it a message.

use super::pci::MsiMessage;
use super::vm::VmHandle;
use kvm_bindings::KVM_IRQFD_FLAG_DEASSIGN;
use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// GSIs below this are the IOAPIC's pins (and the PIC's first 16).
const FIRST_MSI_GSI: u32 = 24;
/// Most MSI vectors one zone routes (KVM allows 4096 routes in all).
pub const MAX_MSI_VECTORS: u32 = 2048;

/// Why an MSI vector could not be created or routed.
#[derive(Debug, thiserror::Error)]
pub enum MsiError {
    /// The zone routes [`MAX_MSI_VECTORS`] already.
    #[error("the zone already routes {MAX_MSI_VECTORS} MSI vectors")]
    Exhausted,
    /// An eventfd or irqfd could not be made.
    #[error("irqfd for GSI {gsi}: {source}")]
    Irqfd {
        /// The vector's GSI.
        gsi: u32,
        /// The error.
        source: std::io::Error,
    },
    /// The device is not a PCI function: only those get MSI vectors.
    #[error("MSI vectors are for PCI functions (an attachment on Transport::Pci)")]
    NotPci,
    /// KVM refused the routing table.
    #[error("KVM_SET_GSI_ROUTING: {0}")]
    Routing(std::io::Error),
}

/// The zone's GSI routing: the interrupt controller's default routes plus one route per routed
/// MSI vector.
pub(crate) struct MsiRouter {
    vm: Arc<VmHandle>,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    allocated: u32,
    routes: BTreeMap<u32, MsiMessage>,
}

impl std::fmt::Debug for MsiRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiRouter").finish_non_exhaustive()
    }
}

impl MsiRouter {
    /// A router for the VM behind `vm`.
    pub(crate) fn new(vm: Arc<VmHandle>) -> Arc<Self> {
        Arc::new(Self {
            vm,
            table: Mutex::new(Table::default()),
        })
    }

    /// A new vector: a GSI and its irqfd, not yet routed.
    /// The VM the routes are set on.
    pub(crate) fn vm(&self) -> &Arc<VmHandle> {
        &self.vm
    }

    pub(crate) fn vector(self: &Arc<Self>) -> Result<MsiVector, MsiError> {
        let gsi = {
            let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            if t.allocated >= MAX_MSI_VECTORS {
                return Err(MsiError::Exhausted);
            }
            t.allocated += 1;
            FIRST_MSI_GSI + t.allocated - 1
        };
        let irqfd_err = |source| MsiError::Irqfd { gsi, source };
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(irqfd_err)?;
        self.vm.irqfd(&evt, gsi, 0).map_err(irqfd_err)?;
        Ok(MsiVector {
            gsi,
            evt,
            router: self.clone(),
        })
    }

    fn set(&self, gsi: u32, message: Option<MsiMessage>) -> Result<(), MsiError> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let before = t.routes.get(&gsi).copied();
        if before == message {
            return Ok(());
        }
        match message {
            Some(m) => t.routes.insert(gsi, m),
            None => t.routes.remove(&gsi),
        };
        let entries = routing_entries(&t.routes);
        let result = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| MsiError::Routing(std::io::Error::from_raw_os_error(libc::E2BIG)))
            .and_then(|routing| self.vm.set_gsi_routing(&routing).map_err(MsiError::Routing));
        if result.is_err() {
            // The table KVM has is the one before this change.
            match before {
                Some(m) => t.routes.insert(gsi, m),
                None => t.routes.remove(&gsi),
            };
        }
        result
    }
}

/// The default routes of KVM's in-kernel irqchip (GSIs 0-15 to the PIC and the IOAPIC, 16-23 to
/// the IOAPIC), which a routing table replaces, and then the MSI routes.
fn routing_entries(routes: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut entries = Vec::with_capacity(40 + routes.len());
    for gsi in 0..FIRST_MSI_GSI {
        if gsi < 8 {
            entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, m) in routes {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        entries.push(e);
    }
    entries
}

/// One MSI (or MSI-X) vector of a device: a GSI with an irqfd. The device model (or, for a
/// passed-through device, the host's VFIO driver) raises it through its eventfd; KVM delivers it
/// as the message last [`route`](Self::route)d, or drops it while the vector is unrouted.
pub struct MsiVector {
    gsi: u32,
    evt: EventFd,
    router: Arc<MsiRouter>,
}

impl std::fmt::Debug for MsiVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiVector").field("gsi", &self.gsi).finish()
    }
}

impl MsiVector {
    /// The vector's GSI in its zone.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// The eventfd that raises the vector (for VFIO's `VFIO_DEVICE_SET_IRQS`).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Delivers the vector as `message` from now on.
    pub fn route(&self, message: MsiMessage) -> Result<(), MsiError> {
        self.router.set(self.gsi, Some(message))
    }

    /// Stops delivering the vector (masked or disabled by the guest).
    pub fn unroute(&self) -> Result<(), MsiError> {
        self.router.set(self.gsi, None)
    }

    /// Delivers the vector as `message` from now on, or not at all for `None`. Routing a vector
    /// as it already is changes nothing (KVM's table is not rewritten).
    pub fn route_as(&self, message: Option<MsiMessage>) -> Result<(), MsiError> {
        self.router.set(self.gsi, message)
    }

    /// Raises the vector.
    pub fn trigger(&self) {
        // A full counter means the vector is already raised: nothing is lost.
        let _ = self.evt.write(1);
    }
}

impl Drop for MsiVector {
    fn drop(&mut self) {
        let _ = self
            .router
            .vm
            .irqfd(&self.evt, self.gsi, KVM_IRQFD_FLAG_DEASSIGN);
        let _ = self.router.set(self.gsi, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this machine's KVM (skipped without one): vectors get GSIs from 24 up and irqfds; a
    /// route and its removal are accepted by KVM; dropped vectors leave the table.
    #[test]
    fn kvm_accepts_the_routes() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIPPED kvm_accepts_the_routes: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let router = MsiRouter::new(VmHandle::dup(&vm).unwrap());
        let (a, b) = (router.vector().unwrap(), router.vector().unwrap());
        assert_eq!((a.gsi(), b.gsi()), (24, 25));
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        a.route(m).unwrap();
        b.route(MsiMessage { data: 0x42, ..m }).unwrap();
        a.trigger();
        a.unroute().unwrap();
        drop(b);
        let t = router.table.lock().unwrap();
        assert!(t.routes.is_empty(), "{:?}", t.routes);
    }

    #[test]
    fn the_default_routes_come_first_and_msi_routes_carry_their_message() {
        let mut routes = BTreeMap::new();
        routes.insert(
            24,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4041,
            },
        );
        let e = routing_entries(&routes);
        // 16 PIC routes, 24 IOAPIC routes, one MSI route.
        assert_eq!(e.len(), 16 + 24 + 1);
        let ioapic: Vec<_> = e
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: irqchip entries hold the irqchip member.
            .filter(|e| unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC)
            .map(|e| e.gsi)
            .collect();
        assert_eq!(ioapic, (0..24).collect::<Vec<_>>());
        let msi = e.last().unwrap();
        assert_eq!((msi.gsi, msi.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: an MSI entry holds the msi member.
        let m = unsafe { msi.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4041)
        );
    }
}
