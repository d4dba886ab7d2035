//! COM1: a 16550A UART (vm-superio) whose output goes to the zone's console and whose interrupt
//! is an irqfd.

use super::BusDevice;
use crate::exit::ZoneExit;
use std::io;
use std::sync::Mutex;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's interrupt through an irqfd.
pub(crate) struct IrqTrigger(pub(crate) EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go.
pub(crate) type ConsoleOut = Box<dyn io::Write + Send>;

/// The serial port device.
pub(crate) struct SerialPort {
    uart: Mutex<Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>>,
}

impl SerialPort {
    pub(crate) fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Self {
            uart: Mutex::new(Serial::new(IrqTrigger(irq), out)),
        }
    }
}

impl BusDevice for SerialPort {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        match (u8::try_from(offset), data.len()) {
            (Ok(reg), 1) => data[0] = uart.read(reg),
            _ => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<ZoneExit> {
        if let (Ok(reg), [value]) = (u8::try_from(offset), data) {
            let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
            // An interrupt that cannot be raised (eventfd full) is not the guest's fault and
            // cannot be reported to it; the UART state is updated either way.
            let _ = uart.write(reg, *value);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_console_and_odd_accesses_are_harmless() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let port = SerialPort::new(irq.try_clone().unwrap(), Box::new(Shared(out.clone())));
        for b in b"hi\n" {
            port.write(0, &[*b]);
        }
        assert_eq!(*out.lock().unwrap(), b"hi\n");
        let mut lsr = [0u8];
        port.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter holding register empty");
        let mut wide = [0u8; 4];
        port.read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        assert_eq!(port.write(1 << 40, &[1]), None);
    }
}
