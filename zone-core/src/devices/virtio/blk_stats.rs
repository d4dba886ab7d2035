//! A block device's counters, shown in the zone's metrics under the device's name (`blk0`, ...):
//! what the guest asked of the disk, counted by the device thread, read from any thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one virtio-blk device.
#[derive(Debug, Default)]
pub(crate) struct BlockStats {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    written_bytes: AtomicU64,
    flushes: AtomicU64,
    /// Requests that failed on the host side (I/O error, unreachable guest buffer).
    errors: AtomicU64,
    /// Requests refused as malformed, out of range, or writes to a read-only disk.
    refused: AtomicU64,
}

/// What one request was, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Served {
    Read(u64),
    Write(u64),
    Flush,
    Other,
    Failed,
    Refused,
}

impl BlockStats {
    /// Counts one request.
    pub(crate) fn count(&self, served: Served) {
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Relaxed);
        };
        match served {
            Served::Read(bytes) => {
                add(&self.reads, 1);
                add(&self.read_bytes, bytes);
            }
            Served::Write(bytes) => {
                add(&self.writes, 1);
                add(&self.written_bytes, bytes);
            }
            Served::Flush => add(&self.flushes, 1),
            Served::Other => {}
            Served::Failed => add(&self.errors, 1),
            Served::Refused => add(&self.refused, 1),
        }
    }
}

impl crate::device::DeviceControl for BlockStats {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("reads", self.reads.load(Relaxed)),
            ("read_bytes", self.read_bytes.load(Relaxed)),
            ("writes", self.writes.load(Relaxed)),
            ("written_bytes", self.written_bytes.load(Relaxed)),
            ("flushes", self.flushes.load(Relaxed)),
            ("errors", self.errors.load(Relaxed)),
            ("refused", self.refused.load(Relaxed)),
        ]
    }
}
