//! What a virtio device model implements, and what it gets when the driver is ready.

use super::{DeviceWorker, Interrupt};
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: a modern (virtio 1.x) device. The transport always offers it and refuses
/// drivers that do not accept it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX: the driver says when it wants notifications and interrupts.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory. Every access to it goes through vm-memory's checked accessors.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them, EVENT_IDX set if negotiated.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled (without an exit to user space) when the driver notifies
    /// that queue. The worker registers them with its event manager.
    pub queue_events: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("queues", &self.queues.len())
            .field("features", &format_args!("{:#x}", self.features))
            .finish_non_exhaustive()
    }
}

/// Why a device could not start. The transport marks the device as needing a reset.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ActivateError(pub String);

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// virtio device id (1 network, 2 block, 19 vsock, ...).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered ([`VIRTIO_F_VERSION_1`] is added by the transport).
    fn features(&self) -> u64;
    /// Reads device configuration space (on a vCPU thread). Bytes beyond the structure read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device: returns the worker its thread runs. Called on the vCPU thread whose
    /// register write set DRIVER_OK, under that thread's seccomp filter: hand over the queues and
    /// leave opening host resources (sockets, timers, files) to the worker's `init`, which runs
    /// on the device's own thread.
    fn activate(&mut self, activation: Activation) -> Result<Box<dyn DeviceWorker>, ActivateError>;
    /// System calls the device's thread needs beyond a device thread's allowlist (its event
    /// manager, memory, futexes, reads and writes, close): e.g. positioned I/O for a disk,
    /// sockets for a network (`socket` is allowed for `AF_INET` and `AF_INET6` only). Everything
    /// else is refused there ([`crate::seccomp`]).
    fn syscalls(&self) -> Vec<i64> {
        Vec::new()
    }
}

/// Copies `data` out of a little-endian config structure at `offset`, zero beyond its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
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
}
