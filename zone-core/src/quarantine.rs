//! Quarantine: pause a zone, cut every device off from the outside, and keep the evidence.

use crate::control::Parked;
use crate::device::DeviceEvidence;
use crate::events::ZoneEvent;
use crate::metrics::ZoneMetrics;
use crate::zone::ZoneHandle;
use crate::{ControlError, vcpu};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Console bytes kept in [`Evidence::console_tail`].
pub const EVIDENCE_CONSOLE_TAIL: usize = 64 << 10;

/// What [`ZoneHandle::quarantine_with`] does besides pausing and cutting.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct QuarantineOptions {
    /// Writes guest memory to this file (created or truncated): each RAM region at its
    /// guest-physical offset, all-zero pages left as holes.
    pub memory_dump: Option<PathBuf>,
}

impl QuarantineOptions {
    /// Also dumps guest memory to `path`.
    pub fn memory_dump(mut self, path: impl Into<PathBuf>) -> Self {
        self.memory_dump = Some(path.into());
        self
    }
}

/// What a quarantined zone looked like at the moment it was cut off.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Evidence {
    /// The zone.
    pub zone: String,
    /// When the devices were cut.
    pub at: SystemTime,
    /// The last [`EVIDENCE_CONSOLE_TAIL`] bytes of captured console output.
    pub console_tail: Vec<u8>,
    /// Its counters, taken after the cut.
    pub metrics: ZoneMetrics,
    /// Its last events (up to 256), oldest first.
    pub recent_events: Vec<ZoneEvent>,
    /// What each device reported (a network: its open flows at the moment of the cut).
    pub devices: Vec<DeviceEvidence>,
    /// The memory dump, when one was asked for.
    pub memory_dump: Option<MemoryDump>,
}

/// A dump of guest memory taken during a quarantine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryDump {
    /// The file.
    pub path: PathBuf,
    /// Bytes of guest memory it covers.
    pub bytes: u64,
    /// Why it is incomplete, if writing it failed.
    pub error: Option<String>,
}

impl ZoneHandle {
    /// Quarantines the zone: pauses every vCPU and device, cuts every device off from the outside
    /// (a network's flows are reset and its link cut), and returns the evidence. The zone stays
    /// quarantined, [`resume`](Self::resume) refused, until [`release`](Self::release) or a
    /// kill.
    ///
    /// ```no_run
    /// # fn run(zone: &zone_core::Zone) -> Result<(), zone_core::ControlError> {
    /// let evidence = zone.quarantine()?; // paused, cut off; nothing runs until release()
    /// println!("console tail: {}", String::from_utf8_lossy(&evidence.console_tail));
    /// for device in &evidence.devices {
    ///     println!("{}: {:?}", device.device, device.lines);
    /// }
    /// zone.release()?; // or zone.kill()
    /// # Ok(()) }
    /// ```
    pub fn quarantine(&self) -> Result<Evidence, ControlError> {
        self.quarantine_with(QuarantineOptions::default())
    }

    /// [`quarantine`](Self::quarantine), with options (a memory dump).
    pub fn quarantine_with(&self, options: QuarantineOptions) -> Result<Evidence, ControlError> {
        let shared = &self.shared;
        let (_, epoch) = shared
            .control
            .request_pause(true)
            .map_err(|exit| self.ended(exit))?;
        shared.kick_all();
        let own = vcpu::current_zone() == shared.id;
        // A resume cannot overtake a quarantine (it is refused), so this waits for every vCPU.
        let parked = shared
            .control
            .wait_parked(epoch, own)
            .map_err(|exit| self.ended(exit))?;
        debug_assert_eq!(parked, Parked::All);
        shared.sync_devices();
        let at = SystemTime::now();
        let devices = shared.devices.quarantine();
        shared.events.emit(ZoneEvent::Quarantined);
        let memory_dump = options.memory_dump.map(|path| {
            let guard = shared.memory.read().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(mem) => dump(mem, &path),
                None => MemoryDump {
                    path,
                    bytes: 0,
                    error: Some("the zone's memory was released".into()),
                },
            }
        });
        Ok(Evidence {
            zone: shared.name.clone(),
            at,
            console_tail: shared.console.tail(EVIDENCE_CONSOLE_TAIL),
            metrics: self.metrics(),
            recent_events: shared.events.recent(),
            devices,
            memory_dump,
        })
    }

    /// Ends a quarantine: the devices are reconnected (a network's link and policy as before),
    /// then the zone runs again. Releasing a zone that is not quarantined does nothing.
    pub fn release(&self) -> Result<(), ControlError> {
        let shared = &self.shared;
        if !matches!(self.state(), crate::ZoneState::Quarantined) {
            return Ok(());
        }
        shared.devices.release();
        let was = shared
            .control
            .release()
            .map_err(|refused| self.refused(refused))?;
        shared.sync_devices();
        if was {
            shared.events.emit(ZoneEvent::Released);
        }
        Ok(())
    }
}

/// Writes every RAM region of `mem` at its guest-physical offset in `path`, skipping zero chunks.
fn dump(mem: &GuestMemoryMmap, path: &Path) -> MemoryDump {
    const CHUNK: usize = 1 << 20;
    let mut written = 0u64;
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        let mut buf = vec![0u8; CHUNK];
        for region in mem.iter() {
            let start = region.start_addr().0;
            let len = region.len();
            file.set_len(file.metadata()?.len().max(start + len))?;
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(CHUNK as u64) as usize;
                mem.read_slice(&mut buf[..n], GuestAddress(start + off))
                    .map_err(std::io::Error::other)?;
                if buf[..n].iter().any(|&b| b != 0) {
                    file.write_all_at(&buf[..n], start + off)?;
                }
                off += n as u64;
                written += n as u64;
            }
        }
        file.sync_all()
    })();
    MemoryDump {
        path: path.to_path_buf(),
        bytes: written,
        error: result.err().map(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_regions_at_their_guest_offsets() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x40_0000), 0x10_0000),
        ])
        .unwrap();
        mem.write_slice(b"low", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"high", GuestAddress(0x48_0000)).unwrap();
        let path = std::env::temp_dir().join(format!("zones-dump-{}", std::process::id()));
        let d = dump(&mem, &path);
        assert_eq!((d.bytes, d.error.clone()), (0x30_0000, None));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes.len(), 0x50_0000);
        assert_eq!(&bytes[0x1000..0x1003], b"low");
        assert_eq!(&bytes[0x48_0000..0x48_0004], b"high");
        let bad = dump(&mem, Path::new("/nonexistent/dir/dump"));
        assert!(bad.error.is_some());
    }
}
