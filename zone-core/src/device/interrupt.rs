//! How a device signals the guest.

use std::sync::atomic::{AtomicU32, Ordering};
use vmm_sys_util::eventfd::EventFd;

/// Interrupt status bit: a used buffer was added.
pub(crate) const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub(crate) const INT_CONFIG: u32 = 2;

/// The interrupt of one device. On virtio-mmio it is one IOAPIC line (an irqfd) plus the status
/// bits the driver reads and acknowledges through the transport; devices only call
/// [`notify_queue`](Self::notify_queue) and [`notify_config`](Self::notify_config), so the same
/// device model works on a transport with a vector per queue.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Interrupt {
    /// An interrupt that raises `irqfd` (already wired to the guest's interrupt controller).
    pub(crate) fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tells the driver that queue `queue` has new used buffers.
    pub fn notify_queue(&self, _queue: usize) {
        self.signal(INT_USED_RING);
    }

    /// Tells the driver that the device's configuration space changed (e.g. link status).
    pub fn notify_config(&self) {
        self.signal(INT_CONFIG);
    }

    fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        // A full eventfd counter means an interrupt is already pending: nothing is lost.
        let _ = self.irqfd.write(1);
    }

    pub(crate) fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub(crate) fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// A standalone interrupt over a fresh eventfd, for device tests: `(interrupt, raised count)`.
    #[doc(hidden)]
    pub fn for_tests() -> std::io::Result<(Self, impl Fn() -> u64)> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        let reader = evt.try_clone()?;
        Ok((Self::new(evt), move || reader.read().unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_status_sets_and_acks() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.notify_queue(0);
        irq.notify_config();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG);
        assert_eq!(irq.irqfd.read().unwrap(), 2);
    }
}
