//! How a device reports to its zone from its own thread.

use crate::events::{Denial, Violation, ZoneEvent};
use crate::zone::ZoneShared;
use std::sync::Weak;

/// A device's link to its zone's event stream and counters. Cheap to clone; holds the zone
/// weakly, so a device never keeps a dropped zone alive (reports then go nowhere).
#[derive(Clone)]
pub struct DeviceHost {
    zone: String,
    device: String,
    shared: Weak<ZoneShared>,
}

impl std::fmt::Debug for DeviceHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHost")
            .field("zone", &self.zone)
            .field("device", &self.device)
            .finish()
    }
}

impl DeviceHost {
    pub(crate) fn new(zone: &str, device: &str, shared: Weak<ZoneShared>) -> Self {
        Self {
            zone: zone.to_string(),
            device: device.to_string(),
            shared,
        }
    }

    /// The zone's name.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The device's name in its zone (`net0`, ...).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Emits a policy denial (already aggregated by the device if it floods).
    pub fn deny(&self, denial: Denial) {
        if let Some(shared) = self.shared.upgrade() {
            shared.events.emit(ZoneEvent::Denied(denial));
        }
    }

    /// Reports a refused guest request that is not a policy decision (a malformed frame, a
    /// driver doing what the spec forbids), counted in the zone's rejected requests.
    pub fn violation(&self, control: &'static str, detail: String) {
        if let Some(shared) = self.shared.upgrade() {
            shared.metrics.rejected();
            shared
                .events
                .emit(ZoneEvent::Violation(Violation::new(None, control, detail)));
        }
    }

    /// A standalone host for device tests: reports go nowhere.
    #[doc(hidden)]
    pub fn detached(zone: &str, device: &str) -> Self {
        Self::new(zone, device, Weak::new())
    }
}
