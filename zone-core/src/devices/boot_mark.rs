//! The boot-mark register: one I/O port the zones agent writes a small number to as it reaches
//! each step of its start (`zone_agent::proto::boot::PORT_MARKS`). The host stamps the first
//! write of each value on its own clock, so that the boot report places the guest's steps on the
//! host's timeline. The guest controls the port: any value, any number of times; the register
//! keeps one stamp per known value and ignores everything else.

use super::BusDevice;
use crate::exit::ZoneExit;

/// Where a written byte goes (the zone's `BootClock::port_mark`).
pub(crate) type MarkSink = Box<dyn Fn(u8) + Send + Sync>;

/// The register.
pub(crate) struct BootMarkPort {
    sink: MarkSink,
}

impl BootMarkPort {
    pub(crate) fn new(sink: MarkSink) -> Self {
        Self { sink }
    }
}

impl BusDevice for BootMarkPort {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&self, _offset: u64, data: &[u8]) -> Option<ZoneExit> {
        if let &[value] = data {
            (self.sink)(value);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_report::BootClock;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn known_values_are_stamped_once_and_the_rest_ignored() {
        let clock = Arc::new(BootClock::new(Instant::now()));
        let c = clock.clone();
        let port = BootMarkPort::new(Box::new(move |v| c.port_mark(v)));
        assert_eq!(port.write(0, &[0]), None);
        assert_eq!(port.write(0, &[200]), None);
        assert_eq!(port.write(0, &[1, 2]), None, "wide access");
        assert!(clock.port_marks().is_empty());
        port.write(0, &[3]);
        let first = clock.port_marks();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, "modules loaded (agent)");
        std::thread::sleep(std::time::Duration::from_millis(2));
        port.write(0, &[3]);
        port.write(0, &[1]);
        let marks = clock.port_marks();
        assert_eq!(marks.len(), 2);
        assert_eq!(
            marks.iter().find(|m| m.1 == first[0].1).map(|m| m.0),
            Some("modules loaded (agent)"),
            "the first write of a value counts"
        );
        let mut data = [0u8; 1];
        port.read(0, &mut data);
        assert_eq!(data, [0xff]);
    }
}
