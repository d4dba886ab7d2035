//! virtio devices over the MMIO transport.
//!
//! A device model implements [`VirtioDevice`]: what it offers (type, features, queues, config
//! space) and, once the driver sets DRIVER_OK, a [`QueueHandler`] that owns the device's queues
//! and runs on the device's own worker thread. Queue notifications reach the worker through
//! ioeventfds (no exit to user space); the worker raises interrupts through an irqfd.
//! Queue logic is kept apart from the transport and the thread so that it can be tested with
//! virtio-queue's mock queue and fuzzed.

pub(crate) mod blk;
pub(crate) mod mmio;
pub(crate) mod vsock;
pub(crate) mod worker;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: a modern (virtio 1.x) device.
pub(crate) const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX: the driver says when it wants notifications and interrupts.
pub(crate) const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Interrupt status bit: a used buffer was added.
pub(crate) const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub(crate) const INT_CONFIG: u32 = 2;

/// The interrupt of one device: status bits the driver reads and acks through the transport, and
/// an irqfd that raises the IOAPIC line.
pub(crate) struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub(crate) fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets `bits` in the interrupt status and raises the line.
    pub(crate) fn signal(&self, bits: u32) {
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
}

/// What a device gets when the driver is ready.
pub(crate) struct Activation {
    /// Guest memory.
    pub(crate) mem: GuestMemoryMmap,
    /// The queues, configured by the driver.
    pub(crate) queues: Vec<Queue>,
    /// The device's interrupt.
    pub(crate) interrupt: Arc<Interrupt>,
    /// Features the driver accepted.
    pub(crate) features: u64,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ActivateError(pub(crate) String);

/// A device model.
pub(crate) trait VirtioDevice: Send {
    /// virtio device id (e.g. 2 block, 19 vsock).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Reads device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device: returns the handler its worker thread runs.
    fn activate(&mut self, activation: Activation) -> Result<Box<dyn QueueHandler>, ActivateError>;
}

/// The device's queue processing, on its worker thread.
pub(crate) trait QueueHandler: Send {
    /// Queue `index` was notified by the driver.
    fn queue_notified(&mut self, index: usize);
    /// Other file descriptors to wait on, each with a token the handler recognises.
    fn extra_fds(&self) -> Vec<(RawFd, u32)> {
        Vec::new()
    }
    /// `token`'s file descriptor is readable.
    fn extra_ready(&mut self, _token: u32) {}
}

/// Copies `data` out of a little-endian config structure at `offset`, zero beyond its end.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = 0x1122_3344_5566_7788u64.to_le_bytes();
        let mut b = [0u8; 4];
        read_config_bytes(&cfg, 4, &mut b);
        assert_eq!(b, [0x44, 0x33, 0x22, 0x11]);
        read_config_bytes(&cfg, 6, &mut b);
        assert_eq!(b, [0x22, 0x11, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn interrupt_status_sets_and_acks() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.signal(INT_USED_RING);
        irq.signal(INT_CONFIG);
        assert_eq!(irq.status(), 3);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG);
        assert_eq!(irq.irqfd.read().unwrap(), 2);
    }
}
