//! The per-zone event stream: lifecycle changes, policy violations and denials.
//!
//! Each subscriber has its own queue. Lifecycle events (paused, resumed, quarantined, released,
//! stopped) are never dropped. Guest-driven events are bounded: a subscriber's queue holds up to
//! [`EVENT_QUEUE_CAPACITY`] of them (beyond, they are dropped for that subscriber and counted in
//! [`ZoneMetrics::events_dropped`](crate::ZoneMetrics)), and a flood of violations is coalesced
//! before it reaches any queue (one event per control with a count, [`Violation::count`]).
//! Emitting never blocks a vCPU. Guest-controlled text is escaped when events are displayed.

mod bus;

#[cfg(feature = "tokio")]
pub(crate) use bus::COALESCE_FOR;
pub(crate) use bus::EventBus;
pub use bus::{EVENT_QUEUE_CAPACITY, EventStream};

use crate::exit::ZoneExit;

/// Something that happened in a zone.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZoneEvent {
    /// The zone was paused.
    Paused,
    /// The zone was resumed.
    Resumed,
    /// The zone was quarantined: paused, its devices cut off, evidence taken.
    Quarantined,
    /// The quarantine was released; the zone runs again.
    Released,
    /// The zone stopped; every vCPU has left the guest.
    Stopped(ZoneExit),
    /// A policy the builder set was violated; the guest's request was refused.
    Violation(Violation),
    /// A device's policy denied the guest something (a network flow, a DNS name).
    Denied(Denial),
}

impl ZoneEvent {
    /// Whether the event reports a change of the zone's state (never dropped, never coalesced).
    pub fn is_lifecycle(&self) -> bool {
        matches!(
            self,
            Self::Paused | Self::Resumed | Self::Quarantined | Self::Released | Self::Stopped(_)
        )
    }
}

impl std::fmt::Display for ZoneEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Paused => f.write_str("paused"),
            Self::Resumed => f.write_str("resumed"),
            Self::Quarantined => f.write_str("quarantined"),
            Self::Released => f.write_str("released"),
            Self::Stopped(exit) => write!(f, "stopped: {exit}"),
            Self::Violation(v) => v.fmt(f),
            Self::Denied(d) => d.fmt(f),
        }
    }
}

/// What a device's policy denied: which zone and device, under which rule, what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The zone.
    pub zone: String,
    /// The device that enforced the policy (`net0`, ...).
    pub device: String,
    /// The rule that decided, as written (`deny private`), or `default deny`.
    pub rule: String,
    /// What was asked: `tcp`, `udp`, `icmp`, `dns`.
    pub protocol: &'static str,
    /// Where to: an address, or the name asked for.
    pub destination: String,
    /// The destination port, where there is one.
    pub port: Option<u16>,
    /// How many denials this event stands for: 1, or more when a flood was aggregated (the
    /// device's counters are exact either way).
    pub count: u64,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "zone {}: {} denied {} {}",
            self.zone,
            self.device,
            self.protocol,
            crate::text::escaped(&self.destination)
        )?;
        if let Some(port) = self.port {
            write!(f, " port {port}")?;
        }
        write!(f, " ({})", self.rule)?;
        if self.count > 1 {
            write!(f, " x{}", self.count)?;
        }
        Ok(())
    }
}

/// A refused guest request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The vCPU that made the request, when one did.
    pub vcpu: Option<u32>,
    /// Which control refused it (e.g. `hypercall`, `host-fn`, `console`).
    pub control: &'static str,
    /// What was refused and why (for a coalesced event: the last one, after the count). It may
    /// quote the guest: display it escaped, as `Display` does.
    pub detail: String,
    /// How many refusals this event stands for: 1, or more when a flood was coalesced (the
    /// zone's `hypercalls.rejected` counter is exact either way).
    pub count: u64,
}

impl Violation {
    /// One refusal.
    pub fn new(vcpu: Option<u32>, control: &'static str, detail: String) -> Self {
        Self {
            vcpu,
            control,
            detail,
            count: 1,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} refused", self.control)?;
        if let Some(vcpu) = self.vcpu {
            write!(f, " (vCPU {vcpu})")?;
        }
        write!(f, ": {}", crate::text::escaped(&self.detail))?;
        if self.count > 1 {
            write!(f, " x{}", self.count)?;
        }
        Ok(())
    }
}
