//! Exit handling of Linux zones: port I/O and MMIO go to device buses; the console gets the serial
//! output; a guest stop is classified (a kernel panic is reported as such).

use crate::devices::Bus;
use crate::devices::power::PowerRequest;
use crate::exit::ZoneExit;
use crate::vcpu::{Flow, GuestExits, VcpuCtx};
use crate::zone::ZoneShared;
use std::sync::Arc;

/// The marker Linux prints when it panics.
const PANIC_MARKER: &str = "Kernel panic - not syncing";

pub(crate) struct LinuxExits {
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) shared: Arc<ZoneShared>,
}

fn flow(exit: Option<ZoneExit>) -> Flow {
    exit.map_or(Flow::Continue, Flow::Stop)
}

impl GuestExits for LinuxExits {
    fn io_out(&self, _: &VcpuCtx<'_>, port: u16, data: &[u8]) -> Flow {
        flow(self.pio.write(u64::from(port), data))
    }

    fn io_in(&self, _: &VcpuCtx<'_>, port: u16, data: &mut [u8]) -> Flow {
        self.pio.read(u64::from(port), data);
        Flow::Continue
    }

    fn mmio_read(&self, _: &VcpuCtx<'_>, addr: u64, data: &mut [u8]) -> Flow {
        self.mmio.read(addr, data);
        Flow::Continue
    }

    fn mmio_write(&self, _: &VcpuCtx<'_>, addr: u64, data: &[u8]) -> Flow {
        flow(self.mmio.write(addr, data))
    }

    fn shutdown(&self, _: &VcpuCtx<'_>) -> ZoneExit {
        stop_reason(&self.shared, PowerRequest::Reset)
    }
}

/// How a guest-initiated stop ends the zone: a panic (found on the console) or a shutdown.
pub(crate) fn stop_reason(shared: &ZoneShared, _request: PowerRequest) -> ZoneExit {
    let console = shared.console.snapshot();
    let text = String::from_utf8_lossy(&console);
    match text.rfind(PANIC_MARKER) {
        Some(at) => {
            let line = text[at..].lines().next().unwrap_or(PANIC_MARKER);
            ZoneExit::Panicked(line.trim_end().to_string())
        }
        None => ZoneExit::Shutdown,
    }
}

/// Serial output into the zone's console.
pub(crate) struct ConsoleWriter(pub(crate) Arc<ZoneShared>);

impl std::io::Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.console_output(None, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
