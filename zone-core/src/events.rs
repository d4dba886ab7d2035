//! The per-zone event stream: lifecycle changes and policy violations.
//!
//! Each subscriber gets its own bounded queue; a full queue drops the event for that subscriber
//! and counts it in [`ZoneMetrics::events_dropped`](crate::ZoneMetrics). Emitting never blocks a
//! vCPU.

use crate::exit::ZoneExit;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// Events a subscriber can hold before further ones are dropped.
pub const EVENT_QUEUE_CAPACITY: usize = 4096;

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
    /// What was refused and why.
    pub detail: String,
}

/// Events kept for [`EventBus::recent`] (quarantine evidence).
pub(crate) const RECENT_EVENTS: usize = 256;

/// Fan-out of events to subscribers.
#[derive(Debug)]
pub(crate) struct EventBus {
    subscribers: Mutex<Vec<SyncSender<ZoneEvent>>>,
    first: Mutex<Option<Receiver<ZoneEvent>>>,
    dropped: AtomicU64,
    recent: Mutex<VecDeque<ZoneEvent>>,
}

impl EventBus {
    /// A bus with one subscriber already attached, so the first [`EventBus::subscribe`] sees every
    /// event since the zone was created.
    pub(crate) fn new() -> Self {
        let (tx, rx) = sync_channel(EVENT_QUEUE_CAPACITY);
        Self {
            subscribers: Mutex::new(vec![tx]),
            first: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
        }
    }

    /// The last [`RECENT_EVENTS`] events, oldest first, whoever subscribed.
    pub(crate) fn recent(&self) -> Vec<ZoneEvent> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        if let Some(rx) = self.first.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return EventStream { rx };
        }
        let (tx, rx) = sync_channel(EVENT_QUEUE_CAPACITY);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        EventStream { rx }
    }

    pub(crate) fn emit(&self, event: ZoneEvent) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A subscription to a zone's events. The first subscription of a zone holds every event since the
/// zone was built; later ones start at the moment they subscribe.
#[derive(Debug)]
pub struct EventStream {
    rx: Receiver<ZoneEvent>,
}

impl EventStream {
    /// The next event, if one is queued.
    pub fn try_next(&self) -> Option<ZoneEvent> {
        self.rx.try_recv().ok()
    }

    /// Waits up to `timeout` for the next event.
    pub fn next_timeout(&self, timeout: Duration) -> Option<ZoneEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Every event queued now.
    pub fn drain(&self) -> Vec<ZoneEvent> {
        self.rx.try_iter().collect()
    }
}

impl Iterator for EventStream {
    type Item = ZoneEvent;

    /// Blocks for the next event; ends once the zone is gone and the queue is empty.
    fn next(&mut self) -> Option<ZoneEvent> {
        self.rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_subscriber_sees_history_later_ones_do_not() {
        let bus = EventBus::new();
        bus.emit(ZoneEvent::Paused);
        let first = bus.subscribe();
        let second = bus.subscribe();
        bus.emit(ZoneEvent::Resumed);
        assert_eq!(first.drain(), vec![ZoneEvent::Paused, ZoneEvent::Resumed]);
        assert_eq!(second.drain(), vec![ZoneEvent::Resumed]);
    }

    #[test]
    fn recent_events_keep_the_last_ones_without_a_subscriber() {
        let bus = EventBus::new();
        for _ in 0..RECENT_EVENTS {
            bus.emit(ZoneEvent::Paused);
        }
        bus.emit(ZoneEvent::Resumed);
        let recent = bus.recent();
        assert_eq!(recent.len(), RECENT_EVENTS);
        assert_eq!(recent.last(), Some(&ZoneEvent::Resumed));
    }

    #[test]
    fn full_queue_drops_and_counts_and_closed_subscribers_are_removed() {
        let bus = EventBus::new();
        let first = bus.subscribe();
        for _ in 0..EVENT_QUEUE_CAPACITY + 5 {
            bus.emit(ZoneEvent::Paused);
        }
        assert_eq!(bus.dropped(), 5);
        drop(first);
        bus.emit(ZoneEvent::Resumed);
        assert!(bus.subscribers.lock().unwrap().is_empty());
    }
}
