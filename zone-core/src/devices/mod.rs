//! Device models and the buses that route port I/O and MMIO exits to them.

pub(crate) mod boot_mark;
pub(crate) mod power;
pub(crate) mod serial;
pub(crate) mod virtio;

use crate::exit::ZoneExit;
use std::sync::Arc;

/// A device on a bus. Accesses arrive from any vCPU thread.
pub(crate) trait BusDevice: Send + Sync {
    /// Fills `data` for a read at `offset` into the device's range.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Handles a write at `offset`; a device may end the zone (power-off, reset).
    fn write(&self, offset: u64, data: &[u8]) -> Option<ZoneExit>;
}

/// Why a device could not be placed on a bus.
#[derive(Debug, thiserror::Error)]
#[error("device range {base:#x}+{len:#x} overlaps another device or wraps")]
pub struct BusError {
    /// Base of the refused range.
    pub base: u64,
    /// Its length.
    pub len: u64,
}

/// Address ranges mapped to devices. Built before the vCPUs start; read-only afterwards.
#[derive(Default)]
pub(crate) struct Bus {
    ranges: Vec<(u64, u64, Arc<dyn BusDevice>)>,
}

impl Bus {
    pub(crate) fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<dyn BusDevice>,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError { base, len })?;
        if self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(BusError { base, len });
        }
        let at = self.ranges.partition_point(|(b, _, _)| *b < base);
        self.ranges.insert(at, (base, len, device));
        Ok(())
    }

    /// The device and offset for an access of `len` bytes at `addr` (it must fit in one device).
    fn find(&self, addr: u64, len: usize) -> Option<(&Arc<dyn BusDevice>, u64)> {
        let i = self
            .ranges
            .partition_point(|(b, _, _)| *b <= addr)
            .checked_sub(1)?;
        let (base, size, dev) = &self.ranges[i];
        let offset = addr - base;
        (offset.checked_add(len as u64)? <= *size).then_some((dev, offset))
    }

    /// Reads from the device at `addr`; unclaimed addresses read as all ones. Returns whether a
    /// device answered.
    pub(crate) fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, offset)) => {
                dev.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; writes to unclaimed addresses are dropped.
    pub(crate) fn write(&self, addr: u64, data: &[u8]) -> Option<ZoneExit> {
        self.find(addr, data.len())
            .and_then(|(dev, offset)| dev.write(offset, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);
    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) -> Option<ZoneExit> {
            self.0.lock().unwrap().push((offset, data.to_vec()));
            None
        }
    }

    #[test]
    fn routes_by_range_and_refuses_overlaps() {
        let mut bus = Bus::default();
        let a = Arc::new(Recorder::default());
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        assert!(bus.insert(0x3fc, 8, a.clone()).is_err(), "overlap");
        assert!(bus.insert(u64::MAX, 2, a.clone()).is_err(), "wraps");
        assert!(bus.insert(0x3f0, 0, a.clone()).is_err(), "empty");
        bus.insert(0x3f0, 8, a.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        let mut wide = [0u8; 4];
        assert!(
            !bus.read(0x3fe, &mut wide),
            "straddles the end of the device"
        );
        assert_eq!(bus.write(0x3f1, &[7]), None);
        assert_eq!(*a.0.lock().unwrap(), vec![(1, vec![7])]);
    }
}
