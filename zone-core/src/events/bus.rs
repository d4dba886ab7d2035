//! Fan-out of a zone's events to its subscribers, bounded where the guest drives them.

use super::{Violation, ZoneEvent};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Guest-driven events a subscriber can hold before further ones are dropped (lifecycle events
/// are always kept).
pub const EVENT_QUEUE_CAPACITY: usize = 4096;
/// Events kept for [`EventBus::recent`] (quarantine evidence).
pub(crate) const RECENT_EVENTS: usize = 256;
/// Violations delivered one by one: a burst of this many, then [`VIOLATIONS_PER_SEC`].
const VIOLATION_BURST: f64 = 64.0;
/// See [`VIOLATION_BURST`].
const VIOLATIONS_PER_SEC: f64 = 16.0;
/// Coalesced violations are delivered at most this long after the first of them (or at once
/// when a lifecycle event, such as the zone's end, comes first).
pub(crate) const COALESCE_FOR: Duration = Duration::from_secs(1);

/// The events of one subscriber, and how many of them are guest-driven.
#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<ZoneEvent>,
    guest_driven: usize,
    /// Tasks waiting for an event (async subscribers).
    wakers: crate::wakers::Wakers,
}

impl Inner {
    fn pop(&mut self) -> Option<ZoneEvent> {
        let e = self.events.pop_front()?;
        if !e.is_lifecycle() {
            self.guest_driven -= 1;
        }
        Some(e)
    }
}

/// One subscriber's queue.
#[derive(Debug, Default)]
struct Queue {
    inner: Mutex<Inner>,
    cv: Condvar,
    /// The bus is gone (the zone was dropped): no more events will come.
    closed: AtomicBool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Violations waiting to be delivered as one event per control.
#[derive(Debug)]
struct Pending {
    count: u64,
    vcpu: Option<u32>,
    last: String,
}

#[derive(Debug)]
struct State {
    subscribers: Vec<Arc<Queue>>,
    /// The first subscription's queue, filled from the start, until someone subscribes.
    first: Option<Arc<Queue>>,
    tokens: f64,
    at: Instant,
    pending: BTreeMap<&'static str, Pending>,
    pending_since: Option<Instant>,
    recent: VecDeque<ZoneEvent>,
}

/// The bus of one zone.
#[derive(Debug)]
pub(crate) struct EventBus {
    state: Mutex<State>,
    dropped: AtomicU64,
    /// The zone's name and id, for tracing.
    zone: String,
    id: u64,
}

impl EventBus {
    /// A bus of zone `zone` (id `id`) whose first subscription will see every event since now.
    pub(crate) fn new(zone: &str, id: u64) -> Arc<Self> {
        let first = Arc::new(Queue::default());
        Arc::new(Self {
            state: Mutex::new(State {
                subscribers: vec![first.clone()],
                first: Some(first),
                tokens: VIOLATION_BURST,
                at: Instant::now(),
                pending: BTreeMap::new(),
                pending_since: None,
                recent: VecDeque::with_capacity(RECENT_EVENTS),
            }),
            dropped: AtomicU64::new(0),
            zone: zone.to_owned(),
            id,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last [`RECENT_EVENTS`] events, oldest first, whoever subscribed.
    pub(crate) fn recent(&self) -> Vec<ZoneEvent> {
        self.flush_due();
        self.lock().recent.iter().cloned().collect()
    }

    pub(crate) fn subscribe(self: &Arc<Self>) -> EventStream {
        let mut st = self.lock();
        let queue = match st.first.take() {
            Some(first) => first,
            None => {
                let q = Arc::new(Queue::default());
                st.subscribers.push(q.clone());
                q
            }
        };
        EventStream {
            queue,
            bus: Arc::downgrade(self),
        }
    }

    pub(crate) fn emit(&self, event: ZoneEvent) {
        let mut st = self.lock();
        let now = Instant::now();
        match event {
            ZoneEvent::Violation(v) => {
                let elapsed = now.saturating_duration_since(st.at).as_secs_f64();
                st.tokens = (st.tokens + elapsed * VIOLATIONS_PER_SEC).min(VIOLATION_BURST);
                st.at = now;
                if st.tokens >= 1.0 && st.pending.is_empty() {
                    st.tokens -= 1.0;
                    self.deliver(&mut st, ZoneEvent::Violation(v));
                } else {
                    let p = st.pending.entry(v.control).or_insert(Pending {
                        count: 0,
                        vcpu: v.vcpu,
                        last: String::new(),
                    });
                    p.count += v.count;
                    p.vcpu = v.vcpu;
                    p.last = v.detail;
                    st.pending_since.get_or_insert(now);
                }
                self.flush_if_due(&mut st, now);
            }
            lifecycle if lifecycle.is_lifecycle() => {
                // What was coalesced so far comes first: counts are never lost, even at the end.
                self.flush(&mut st);
                self.deliver(&mut st, lifecycle);
            }
            other => {
                self.flush_if_due(&mut st, now);
                self.deliver(&mut st, other);
            }
        }
    }

    /// Delivers coalesced violations if they have waited long enough.
    pub(crate) fn flush_due(&self) {
        let mut st = self.lock();
        self.flush_if_due(&mut st, Instant::now());
    }

    fn flush_if_due(&self, st: &mut State, now: Instant) {
        if st
            .pending_since
            .is_some_and(|since| now.saturating_duration_since(since) >= COALESCE_FOR)
        {
            self.flush(st);
        }
    }

    fn flush(&self, st: &mut State) {
        st.pending_since = None;
        let pending = std::mem::take(&mut st.pending);
        for (control, p) in pending {
            let violation = Violation {
                vcpu: p.vcpu,
                control,
                detail: p.last,
                count: p.count,
            };
            self.deliver(st, ZoneEvent::Violation(violation));
        }
    }

    fn deliver(&self, st: &mut State, event: ZoneEvent) {
        crate::trace::zone_event(&self.zone, self.id, &event);
        if st.recent.len() == RECENT_EVENTS {
            st.recent.pop_front();
        }
        st.recent.push_back(event.clone());
        let lifecycle = event.is_lifecycle();
        // A subscription whose stream was dropped has only the bus's reference left.
        let first = st.first.clone();
        st.subscribers.retain(|q| {
            Arc::strong_count(q) > 1 || first.as_ref().is_some_and(|f| Arc::ptr_eq(f, q))
        });
        for q in &st.subscribers {
            let mut inner = q.lock();
            if lifecycle {
                inner.events.push_back(event.clone());
            } else if inner.guest_driven < EVENT_QUEUE_CAPACITY {
                inner.guest_driven += 1;
                inner.events.push_back(event.clone());
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let wakers = inner.wakers.take();
            drop(inner);
            q.cv.notify_all();
            wakers.wake();
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for EventBus {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for q in &st.subscribers {
            q.closed.store(true, Ordering::SeqCst);
            let wakers = q.lock().wakers.take();
            q.cv.notify_all();
            wakers.wake();
        }
    }
}

/// A subscription to a zone's events. The first subscription of a zone holds every event since
/// the zone was built; later ones start at the moment they subscribe.
#[derive(Debug)]
pub struct EventStream {
    queue: Arc<Queue>,
    bus: Weak<EventBus>,
}

impl EventStream {
    /// Lets coalesced violations through once they have waited long enough.
    fn poll_bus(&self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.flush_due();
        }
    }

    /// The next event, if one is queued.
    pub fn try_next(&self) -> Option<ZoneEvent> {
        self.poll_bus();
        self.queue.lock().pop()
    }

    /// Waits up to `timeout` for the next event.
    pub fn next_timeout(&self, timeout: Duration) -> Option<ZoneEvent> {
        let until = Instant::now() + timeout;
        loop {
            self.poll_bus();
            let mut events = self.queue.lock();
            if let Some(e) = events.pop() {
                return Some(e);
            }
            if self.queue.closed.load(Ordering::SeqCst) {
                return None;
            }
            let left = until.checked_duration_since(Instant::now())?;
            // Wake at least every COALESCE_FOR to let coalesced violations through.
            let wait = left.min(COALESCE_FOR);
            let _ = self
                .queue
                .cv
                .wait_timeout(events, wait)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// The next event for a task: `Ready(Some)` with an event, `Ready(None)` once the zone is
    /// gone and the queue is empty, else `Pending` with the task woken by the next event.
    /// Coalesced violations are let through when polled after [`COALESCE_FOR`]: an async caller
    /// also polls at least that often (see `aio`).
    pub(crate) fn poll_event(
        &self,
        cx: &std::task::Context<'_>,
    ) -> std::task::Poll<Option<ZoneEvent>> {
        self.poll_bus();
        let mut inner = self.queue.lock();
        if let Some(e) = inner.pop() {
            return std::task::Poll::Ready(Some(e));
        }
        if self.queue.closed.load(Ordering::SeqCst) {
            return std::task::Poll::Ready(None);
        }
        inner.wakers.register(cx);
        std::task::Poll::Pending
    }

    /// Every event queued now.
    pub fn drain(&self) -> Vec<ZoneEvent> {
        self.poll_bus();
        let mut inner = self.queue.lock();
        inner.guest_driven = 0;
        inner.events.drain(..).collect()
    }
}

impl Iterator for EventStream {
    type Item = ZoneEvent;

    /// Blocks for the next event; ends once the zone is gone and the queue is empty.
    fn next(&mut self) -> Option<ZoneEvent> {
        loop {
            if let Some(e) = self.next_timeout(Duration::from_secs(3600)) {
                return Some(e);
            }
            if self.queue.closed.load(Ordering::SeqCst) {
                return self.queue.lock().pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(n: u32) -> ZoneEvent {
        ZoneEvent::Violation(Violation::new(Some(0), "hypercall", format!("call {n}")))
    }

    #[test]
    fn first_subscriber_sees_history_later_ones_do_not() {
        let bus = EventBus::new("test", 0);
        bus.emit(ZoneEvent::Paused);
        let first = bus.subscribe();
        let second = bus.subscribe();
        bus.emit(ZoneEvent::Resumed);
        assert_eq!(first.drain(), vec![ZoneEvent::Paused, ZoneEvent::Resumed]);
        assert_eq!(second.drain(), vec![ZoneEvent::Resumed]);
    }

    #[test]
    fn recent_events_keep_the_last_ones_without_a_subscriber() {
        let bus = EventBus::new("test", 0);
        for _ in 0..RECENT_EVENTS {
            bus.emit(ZoneEvent::Paused);
        }
        bus.emit(ZoneEvent::Resumed);
        let recent = bus.recent();
        assert_eq!(recent.len(), RECENT_EVENTS);
        assert_eq!(recent.last(), Some(&ZoneEvent::Resumed));
    }

    /// A million refused calls to a subscriber that does not read: a few events with counts
    /// that add up, and the zone's end is still seen.
    #[test]
    fn a_flood_is_coalesced_and_lifecycle_events_are_never_lost() {
        let bus = EventBus::new("test", 0);
        let events = bus.subscribe();
        bus.emit(ZoneEvent::Paused);
        for n in 0..1_000_000 {
            bus.emit(refused(n));
        }
        bus.emit(ZoneEvent::Stopped(crate::ZoneExit::Killed));
        let seen = events.drain();
        assert_eq!(seen.first(), Some(&ZoneEvent::Paused));
        assert_eq!(
            seen.last(),
            Some(&ZoneEvent::Stopped(crate::ZoneExit::Killed))
        );
        let counts: u64 = seen
            .iter()
            .filter_map(|e| match e {
                ZoneEvent::Violation(v) => Some(v.count),
                _ => None,
            })
            .sum();
        assert_eq!(counts, 1_000_000);
        assert!(seen.len() < 100, "{} events", seen.len());
        assert_eq!(bus.dropped(), 0);
    }

    #[test]
    fn a_full_queue_drops_guest_driven_events_only() {
        let bus = EventBus::new("test", 0);
        let events = bus.subscribe();
        for i in 0..EVENT_QUEUE_CAPACITY + 5 {
            bus.emit(ZoneEvent::Denied(crate::Denial {
                zone: "z".into(),
                device: "net0".into(),
                rule: "default deny".into(),
                protocol: "tcp",
                destination: format!("10.0.0.{}", i % 200),
                port: Some(1),
                count: 1,
            }));
        }
        bus.emit(ZoneEvent::Resumed);
        assert_eq!(bus.dropped(), 5);
        let seen = events.drain();
        assert_eq!(seen.len(), EVENT_QUEUE_CAPACITY + 1);
        assert_eq!(seen.last(), Some(&ZoneEvent::Resumed));
    }

    #[test]
    fn closed_subscribers_are_removed_and_streams_end_with_the_bus() {
        let bus = EventBus::new("test", 0);
        let first = bus.subscribe();
        let mut second = bus.subscribe();
        drop(first);
        bus.emit(ZoneEvent::Resumed);
        assert_eq!(bus.lock().subscribers.len(), 1);
        drop(bus);
        assert_eq!(second.next(), Some(ZoneEvent::Resumed));
        assert_eq!(second.next(), None, "the zone is gone");
    }

    #[test]
    fn coalesced_violations_arrive_within_a_second_on_their_own() {
        let bus = EventBus::new("test", 0);
        let events = bus.subscribe();
        for n in 0..100 {
            bus.emit(refused(n));
        }
        let mut total = 0;
        let until = Instant::now() + Duration::from_secs(5);
        while total < 100 && Instant::now() < until {
            if let Some(ZoneEvent::Violation(v)) = events.next_timeout(Duration::from_millis(200)) {
                total += v.count;
            }
        }
        assert_eq!(total, 100);
    }
}
