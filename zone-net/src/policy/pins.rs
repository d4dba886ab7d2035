//! DNS pins: the addresses DNS answered to this zone for a name, each open to that name's rules
//! only until the answer's TTL has passed. A name rule never opens an address without a pin.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most pins a zone holds; beyond it the pins closest to expiry make room.
pub const MAX_PINS: usize = 4096;
/// Shortest pin: an answer with a smaller TTL (even 0) is usable for this long.
pub const MIN_PIN: Duration = Duration::from_secs(10);
/// Longest pin, whatever the TTL.
pub const MAX_PIN: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
struct Pin {
    name: Arc<str>,
    until: Instant,
}

/// The pins of one zone.
#[derive(Debug, Default)]
pub struct Pins {
    by_addr: HashMap<IpAddr, Vec<Pin>>,
    count: usize,
}

impl Pins {
    /// Pins `addr` for `name` for `ttl` (clamped to [`MIN_PIN`]..=[`MAX_PIN`]) from `now`.
    pub fn pin(&mut self, addr: IpAddr, name: &str, ttl: Duration, now: Instant) {
        let until = now + ttl.clamp(MIN_PIN, MAX_PIN);
        if let Some(pin) = self
            .by_addr
            .get_mut(&addr)
            .and_then(|pins| pins.iter_mut().find(|p| &*p.name == name))
        {
            pin.until = pin.until.max(until);
            return;
        }
        if self.count >= MAX_PINS {
            self.expire(now);
        }
        if self.count >= MAX_PINS {
            self.evict_soonest();
        }
        self.by_addr.entry(addr).or_default().push(Pin {
            name: name.into(),
            until,
        });
        self.count += 1;
    }

    /// The names `addr` is pinned for at `now`.
    pub fn names(&self, addr: IpAddr, now: Instant) -> impl Iterator<Item = &str> {
        self.by_addr
            .get(&addr)
            .into_iter()
            .flatten()
            .filter(move |p| p.until > now)
            .map(|p| &*p.name)
    }

    /// Forgets expired pins.
    pub fn expire(&mut self, now: Instant) {
        let mut count = 0;
        self.by_addr.retain(|_, pins| {
            pins.retain(|p| p.until > now);
            count += pins.len();
            !pins.is_empty()
        });
        self.count = count;
    }

    fn evict_soonest(&mut self) {
        let soonest = self
            .by_addr
            .iter()
            .flat_map(|(a, pins)| pins.iter().map(move |p| (p.until, *a)))
            .min();
        if let Some((until, addr)) = soonest
            && let Some(pins) = self.by_addr.get_mut(&addr)
        {
            pins.retain(|p| p.until != until);
            if pins.is_empty() {
                self.by_addr.remove(&addr);
            }
            self.count = self.by_addr.values().map(Vec::len).sum();
        }
    }

    /// How many pins are held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pins_expire_after_the_clamped_ttl() {
        let now = Instant::now();
        let mut pins = Pins::default();
        pins.pin(ip("1.2.3.4"), "a.test", Duration::ZERO, now);
        pins.pin(ip("1.2.3.4"), "b.test", Duration::from_secs(60), now);
        let at = |s| now + Duration::from_secs(s);
        assert_eq!(
            pins.names(ip("1.2.3.4"), at(5)).count(),
            2,
            "TTL 0 lasts MIN_PIN"
        );
        assert_eq!(
            pins.names(ip("1.2.3.4"), at(11)).collect::<Vec<_>>(),
            ["b.test"]
        );
        assert_eq!(pins.names(ip("1.2.3.4"), at(61)).count(), 0);
        assert_eq!(pins.names(ip("5.6.7.8"), now).count(), 0);
        pins.pin(ip("1.2.3.4"), "b.test", Duration::from_secs(100_000), now);
        assert_eq!(pins.len(), 2, "a renewed pin is not a second pin");
        assert_eq!(
            pins.names(ip("1.2.3.4"), at(3599)).count(),
            1,
            "capped at MAX_PIN"
        );
        pins.expire(at(3601));
        assert!(pins.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut pins = Pins::default();
        for i in 0..(MAX_PINS as u32 + 100) {
            let addr = IpAddr::from(i.to_be_bytes());
            pins.pin(addr, "x.test", Duration::from_secs(60 + u64::from(i)), now);
        }
        assert_eq!(pins.len(), MAX_PINS);
        assert_eq!(
            pins.names(IpAddr::from(0u32.to_be_bytes()), now).count(),
            0,
            "the pin closest to expiry made room"
        );
    }
}
