//! The built-in virtio devices (vsock for exec, blk for disks) and the virtio-mmio transport that
//! carries every virtio device of a Linux zone. The device API they implement is
//! [`crate::device`].

pub(crate) mod blk;
pub(crate) mod blk_stats;
pub(crate) mod mmio;
pub(crate) mod vsock;
