//! Denial events, bounded: a flood of denied flows or queries becomes a few aggregated events
//! (each with the number of denials it stands for), never an unbounded stream, and no denial is
//! ever uncounted.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use zone_core::Denial;
use zone_core::device::DeviceHost;

/// Denial events emitted one by one: a burst of this many, then [`EVENTS_PER_SEC`]; beyond it
/// denials are aggregated.
pub(crate) const EVENT_BURST: f64 = 32.0;
/// See [`EVENT_BURST`].
pub(crate) const EVENTS_PER_SEC: f64 = 8.0;
/// Distinct (rule, protocol, destination) aggregates kept between flushes (ports are not told
/// apart: a port scan is one aggregate); beyond it denials are counted in one `various`
/// aggregate. At most this many + 1 events per flush.
pub(crate) const MAX_AGGREGATES: usize = 16;
/// How often aggregates are flushed.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    rule: String,
    protocol: &'static str,
    destination: String,
    port: Option<u16>,
}

/// One denial, as the device saw it.
#[derive(Clone, Debug)]
pub(crate) struct Denied<'a> {
    pub(crate) rule: String,
    pub(crate) protocol: &'static str,
    pub(crate) destination: &'a str,
    pub(crate) port: Option<u16>,
}

/// Where denial events go (a zone's event stream; a list in tests).
pub(crate) trait DenialSink {
    fn emit(&mut self, denial: Denial);
}

impl DenialSink for DeviceHost {
    fn emit(&mut self, denial: Denial) {
        self.deny(denial);
    }
}

/// The rate-bounded aggregator.
pub(crate) struct Denials<S> {
    sink: S,
    zone: String,
    device: String,
    tokens: f64,
    at: Instant,
    pending: HashMap<Key, u64>,
    various: u64,
    flush_at: Option<Instant>,
    emitted: u64,
}

impl<S: DenialSink> Denials<S> {
    pub(crate) fn new(sink: S, zone: &str, device: &str, now: Instant) -> Self {
        Self {
            sink,
            zone: zone.to_string(),
            device: device.to_string(),
            tokens: EVENT_BURST,
            at: now,
            pending: HashMap::new(),
            various: 0,
            flush_at: None,
            emitted: 0,
        }
    }

    /// Records a denial: an event now if the budget allows, else into an aggregate.
    pub(crate) fn deny(&mut self, d: Denied<'_>, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * EVENTS_PER_SEC).min(EVENT_BURST);
        self.at = now;
        let mut key = Key {
            rule: d.rule,
            protocol: d.protocol,
            destination: d.destination.to_string(),
            port: d.port,
        };
        if self.tokens >= 1.0 && self.pending.is_empty() && self.various == 0 {
            self.tokens -= 1.0;
            self.send(key, 1);
            return;
        }
        key.port = None;
        if let Some(n) = self.pending.get_mut(&key) {
            *n += 1;
        } else if self.pending.len() < MAX_AGGREGATES {
            self.pending.insert(key, 1);
        } else {
            self.various += 1;
        }
        self.flush_at.get_or_insert(now + FLUSH_EVERY);
    }

    /// When [`flush`](Self::flush) is due, if anything waits.
    pub(crate) fn flush_at(&self) -> Option<Instant> {
        self.flush_at
    }

    /// Emits every aggregate if due.
    pub(crate) fn flush(&mut self, now: Instant) {
        if self.flush_at.is_none_or(|at| at > now) {
            return;
        }
        self.flush_at = None;
        let mut pending: Vec<_> = self.pending.drain().collect();
        pending.sort_by_key(|p| std::cmp::Reverse(p.1));
        for (key, n) in pending {
            self.send(key, n);
        }
        if self.various > 0 {
            let key = Key {
                rule: "various rules".into(),
                protocol: "various",
                destination: "various destinations".into(),
                port: None,
            };
            let n = std::mem::take(&mut self.various);
            self.send(key, n);
        }
    }

    fn send(&mut self, key: Key, count: u64) {
        self.emitted += 1;
        self.sink.emit(Denial {
            zone: self.zone.clone(),
            device: self.device.clone(),
            rule: key.rule,
            protocol: key.protocol,
            destination: key.destination,
            port: key.port,
            count,
        });
    }

    /// Events emitted so far.
    pub(crate) fn emitted(&self) -> u64 {
        self.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorded(Vec<Denial>);

    impl DenialSink for &mut Recorded {
        fn emit(&mut self, denial: Denial) {
            self.0.push(denial);
        }
    }

    fn denied(port: u16) -> Denied<'static> {
        Denied {
            rule: "default deny".into(),
            protocol: "tcp",
            destination: "203.0.113.9",
            port: Some(port),
        }
    }

    #[test]
    fn a_flood_is_aggregated_and_every_denial_counted() {
        let mut seen = Recorded::default();
        let now = Instant::now();
        {
            let mut d = Denials::new(&mut seen, "z", "net0", now);
            for port in 1..=10_000u16 {
                d.deny(denied(port), now);
            }
            assert!(d.flush_at().is_some());
            d.flush(now);
            assert!(d.emitted() < 100, "nothing flushed before it is due");
            d.flush(now + FLUSH_EVERY);
            assert!(d.flush_at().is_none());
        }
        let total: u64 = seen.0.iter().map(|e| e.count).sum();
        assert_eq!(total, 10_000, "counts are never lost");
        assert_eq!(
            seen.0.len(),
            EVENT_BURST as usize + 1,
            "the burst, then one aggregate: ports are not told apart"
        );
        assert_eq!(seen.0[0].count, 1, "the first ones are immediate");
        let last = seen.0.last().unwrap();
        assert_eq!((last.port, last.count), (None, 10_000 - EVENT_BURST as u64));
        assert_eq!(seen.0[0].zone, "z");
    }

    #[test]
    fn the_same_denial_repeated_is_one_event_with_a_count() {
        let mut seen = Recorded::default();
        let now = Instant::now();
        {
            let mut d = Denials::new(&mut seen, "z", "net0", now);
            for _ in 0..1000 {
                d.deny(denied(443), now);
            }
            d.flush(now + FLUSH_EVERY);
        }
        assert_eq!(seen.0.len(), EVENT_BURST as usize + 1);
        assert_eq!(seen.0.last().unwrap().count, 1000 - EVENT_BURST as u64);
    }

    #[test]
    fn many_destinations_overflow_into_one_aggregate() {
        let mut seen = Recorded::default();
        let now = Instant::now();
        {
            let mut d = Denials::new(&mut seen, "z", "net0", now);
            let names: Vec<String> = (0..1000)
                .map(|i| format!("10.9.{}.{}", i / 256, i % 256))
                .collect();
            for name in &names {
                d.deny(
                    Denied {
                        rule: "default deny".into(),
                        protocol: "tcp",
                        destination: name,
                        port: Some(80),
                    },
                    now,
                );
            }
            d.flush(now + FLUSH_EVERY);
        }
        assert_eq!(seen.0.len(), EVENT_BURST as usize + MAX_AGGREGATES + 1);
        assert_eq!(seen.0.iter().map(|e| e.count).sum::<u64>(), 1000);
    }
}
