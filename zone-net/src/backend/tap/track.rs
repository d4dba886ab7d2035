//! Connection tracking for the TAP backend: the flows the policy allowed, so that their packets
//! pass both ways and nothing else does.

use crate::control::FlowInfo;
use crate::policy::{FlowTarget, Protocol};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// A TCP connection with no packet for this long is forgotten.
const TCP_IDLE: Duration = Duration::from_secs(3600);
/// A UDP or ICMP flow with no packet for this long is forgotten.
const DATAGRAM_IDLE: Duration = Duration::from_secs(60);
/// A TCP connection closed (FIN both ways, or RST) is forgotten after this.
const CLOSED_LINGER: Duration = Duration::from_secs(10);

/// A flow, from the guest's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub(crate) protocol: Protocol,
    /// The guest's port (ICMP: the echo id).
    pub(crate) guest_port: u16,
    /// The other end (ICMP: port 0).
    pub(crate) remote: SocketAddrV4,
}

/// A tracked flow.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub(crate) target: FlowTarget,
    pub(crate) rule: String,
    pub(crate) opened: Instant,
    pub(crate) last: Instant,
    pub(crate) bytes_out: u64,
    pub(crate) bytes_in: u64,
    /// TCP: the guest's next sequence number (for a reset toward the remote end).
    pub(crate) guest_next: u32,
    /// TCP: what the guest last acknowledged (for a reset toward the guest).
    pub(crate) guest_ack: u32,
    pub(crate) fin_out: bool,
    pub(crate) fin_in: bool,
    /// Closed (both FINs, or a RST) at this time.
    pub(crate) closed: Option<Instant>,
}

impl Conn {
    pub(crate) fn new(target: FlowTarget, rule: String, now: Instant) -> Self {
        Self {
            target,
            rule,
            opened: now,
            last: now,
            bytes_out: 0,
            bytes_in: 0,
            guest_next: 0,
            guest_ack: 0,
            fin_out: false,
            fin_in: false,
            closed: None,
        }
    }

    fn expired(&self, protocol: Protocol, now: Instant) -> bool {
        if let Some(at) = self.closed {
            return now.saturating_duration_since(at) >= CLOSED_LINGER;
        }
        let idle = now.saturating_duration_since(self.last);
        match protocol {
            Protocol::Tcp => idle >= TCP_IDLE,
            Protocol::Udp | Protocol::Icmp => idle >= DATAGRAM_IDLE,
        }
    }
}

/// The table, bounded by the zone's flow limit.
#[derive(Debug)]
pub(crate) struct Track {
    conns: HashMap<ConnKey, Conn>,
    max: usize,
}

impl Track {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            conns: HashMap::new(),
            max,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.max
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn get_mut(&mut self, key: &ConnKey) -> Option<&mut Conn> {
        self.conns.get_mut(key)
    }

    /// Tracks `conn`; false when the table is full.
    pub(crate) fn insert(&mut self, key: ConnKey, conn: Conn) -> bool {
        if self.conns.len() >= self.max && !self.conns.contains_key(&key) {
            return false;
        }
        self.conns.insert(key, conn);
        true
    }

    pub(crate) fn remove(&mut self, key: &ConnKey) -> Option<Conn> {
        self.conns.remove(key)
    }

    /// Forgets expired flows; returns how many.
    pub(crate) fn sweep(&mut self, now: Instant) -> usize {
        let before = self.conns.len();
        self.conns.retain(|k, c| !c.expired(k.protocol, now));
        before - self.conns.len()
    }

    pub(crate) fn keys(&self) -> Vec<ConnKey> {
        self.conns.keys().copied().collect()
    }

    pub(crate) fn drain(&mut self) -> Vec<(ConnKey, Conn)> {
        self.conns.drain().collect()
    }

    pub(crate) fn flows(&self, now: Instant) -> Vec<FlowInfo> {
        self.conns
            .iter()
            .map(|(k, c)| FlowInfo {
                protocol: k.protocol,
                guest_port: k.guest_port,
                destination: SocketAddr::V4(k.remote),
                name: c.target.name.clone(),
                rule: c.rule.clone(),
                age: now.saturating_duration_since(c.opened),
                bytes_out: c.bytes_out,
                bytes_in: c.bytes_in,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ConnKey {
        ConnKey {
            protocol: Protocol::Udp,
            guest_port: port,
            remote: "203.0.113.1:53".parse().unwrap(),
        }
    }

    fn conn(now: Instant) -> Conn {
        let target = FlowTarget {
            protocol: Protocol::Udp,
            addr: "203.0.113.1".parse().unwrap(),
            port: Some(53),
            name: None,
        };
        Conn::new(target, "allow public".into(), now)
    }

    #[test]
    fn bounded_and_swept() {
        let now = Instant::now();
        let mut t = Track::new(2);
        assert!(t.insert(key(1), conn(now)));
        assert!(t.insert(key(2), conn(now)));
        assert!(!t.insert(key(3), conn(now)), "full");
        assert!(
            t.insert(key(2), conn(now)),
            "an existing flow may be replaced"
        );
        assert_eq!(t.sweep(now + Duration::from_secs(30)), 0);
        assert_eq!(t.sweep(now + DATAGRAM_IDLE), 2);
        assert_eq!(t.len(), 0);
    }
}
