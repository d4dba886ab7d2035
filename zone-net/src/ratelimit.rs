//! Rate limits per direction: token buckets over bytes and packets, changeable while the zone
//! runs. A frame passes while the bucket holds tokens and may take it into debt, so a limit
//! smaller than one frame still lets frames through, at the limit's average rate.

use std::time::{Duration, Instant};

/// Which way traffic flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the guest out (the guest's transmit queue).
    Egress,
    /// From the outside into the guest (its receive queue).
    Ingress,
}

/// A limit: bytes per second, packets per second, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes per second (frames, Ethernet header included), if limited.
    pub bytes_per_sec: Option<u64>,
    /// Packets per second, if limited.
    pub packets_per_sec: Option<u64>,
}

impl RateLimit {
    /// At most `rate` bytes per second.
    pub fn bytes_per_sec(rate: u64) -> Self {
        Self {
            bytes_per_sec: Some(rate),
            packets_per_sec: None,
        }
    }

    /// At most `rate` packets per second.
    pub fn packets_per_sec(rate: u64) -> Self {
        Self {
            bytes_per_sec: None,
            packets_per_sec: Some(rate),
        }
    }

    /// Also at most `rate` packets per second.
    pub fn and_packets_per_sec(mut self, rate: u64) -> Self {
        self.packets_per_sec = Some(rate);
        self
    }
}

/// One token bucket: refills at `rate` per second up to `burst`.
#[derive(Clone, Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket; the burst is a tenth of a second's worth, at least `min_burst`.
    fn new(rate: u64, min_burst: f64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).max(min_burst);
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// How long until the bucket has tokens again (zero if it has some now).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens > 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-self.tokens + 1.0) / self.rate)
        }
    }
}

/// The limiter of one direction.
#[derive(Clone, Debug, Default)]
pub struct Limiter {
    bytes: Option<Bucket>,
    packets: Option<Bucket>,
}

/// The burst of a byte bucket is at least one largest frame, so one frame never waits forever.
const MIN_BYTE_BURST: f64 = 65_550.0;

impl Limiter {
    /// A limiter for `limit` (None: unlimited).
    pub fn new(limit: Option<RateLimit>, now: Instant) -> Self {
        let limit = limit.unwrap_or_default();
        Self {
            bytes: limit
                .bytes_per_sec
                .map(|r| Bucket::new(r, MIN_BYTE_BURST, now)),
            packets: limit.packets_per_sec.map(|r| Bucket::new(r, 1.0, now)),
        }
    }

    /// Zero if a frame may pass now, else how long until one may.
    pub fn wait(&mut self, now: Instant) -> Duration {
        let b = self.bytes.as_mut().map_or(Duration::ZERO, |b| b.wait(now));
        let p = self
            .packets
            .as_mut()
            .map_or(Duration::ZERO, |p| p.wait(now));
        b.max(p)
    }

    /// Charges a frame of `len` bytes (after [`wait`](Self::wait) said it may pass).
    pub fn take(&mut self, len: usize) {
        if let Some(b) = &mut self.bytes {
            b.tokens -= len as f64;
        }
        if let Some(p) = &mut self.packets {
            p.tokens -= 1.0;
        }
    }

    /// Whether any limit is set.
    pub fn limited(&self) -> bool {
        self.bytes.is_some() || self.packets.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as many 1000-byte frames as the limiter allows over `secs` simulated seconds.
    fn frames_passed(limit: RateLimit, secs: u64) -> u64 {
        let start = Instant::now();
        let mut l = Limiter::new(Some(limit), start);
        let mut now = start;
        let mut sent = 0;
        while now < start + Duration::from_secs(secs) {
            let wait = l.wait(now);
            if wait.is_zero() {
                l.take(1000);
                sent += 1;
            } else {
                now += wait;
            }
        }
        sent
    }

    #[test]
    fn long_run_rates_match_the_limit() {
        // 1 MB/s of 1000-byte frames: ~1000 frames a second, plus the initial burst.
        let n = frames_passed(RateLimit::bytes_per_sec(1_000_000), 10);
        assert!((10_000..=10_200).contains(&n), "{n}");
        let n = frames_passed(RateLimit::packets_per_sec(50), 10);
        assert!((500..=510).contains(&n), "{n}");
        let both = RateLimit::bytes_per_sec(1_000_000).and_packets_per_sec(100);
        let n = frames_passed(both, 10);
        assert!((1000..=1015).contains(&n), "the tighter limit wins: {n}");
    }

    #[test]
    fn a_limit_below_one_frame_still_passes_frames() {
        let n = frames_passed(RateLimit::bytes_per_sec(100), 100);
        assert!((60..=180).contains(&n), "{n}");
    }

    #[test]
    fn no_limit_never_waits() {
        let now = Instant::now();
        let mut l = Limiter::new(None, now);
        for _ in 0..1000 {
            assert!(l.wait(now).is_zero());
            l.take(65_000);
        }
        assert!(!l.limited());
    }
}
