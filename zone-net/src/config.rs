//! [`Net`]: what a zone's network is (backend, addresses, policy, limits), granted with
//! `Zone::builder().net(..)`.

use crate::policy::NetPolicy;
use crate::ratelimit::{Direction, RateLimit};
use std::net::{Ipv4Addr, SocketAddr};

/// MTU offered to the guest by default: large, as passt does, so that a user-space stack moves
/// 64 KiB per frame instead of 1.5 KiB.
pub const DEFAULT_MTU: u16 = 65520;
/// Flows (TCP connections, UDP and ping flows) a zone may have open at once by default. Every
/// packet is matched against the open flows, so this is a bound against a flood, not a knob.
pub const DEFAULT_MAX_FLOWS: usize = 256;
/// Receive and send buffer of each TCP flow, each direction (touched only as data flows).
pub const DEFAULT_FLOW_BUFFER: usize = 256 << 10;
/// The most flows a zone may be given.
pub const MAX_FLOWS: usize = 4096;

/// Which host side carries the zone's frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// The user-space network: frames end in the VMM, flows leave through host sockets.
    User,
    /// A TAP device of the host.
    Tap {
        /// Its name.
        name: String,
    },
}

/// A zone's addresses on its link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Addressing {
    pub(crate) guest: Ipv4Addr,
    pub(crate) prefix: u8,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) guest_mac: [u8; 6],
    pub(crate) gateway_mac: [u8; 6],
    pub(crate) mtu: u16,
}

/// A zone's network, deny by default.
///
/// ```no_run
/// use zone_core::{LinuxBoot, Zone};
/// use zone_net::{Net, NetBuilderExt};
/// # let boot = LinuxBoot::new("/boot/vmlinuz");
/// let zone = Zone::builder()
///     .linux(boot)
///     .net(Net::user().allow("tcp api.example.com:443").allow("udp host:53"))
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Net {
    pub(crate) backend: BackendKind,
    pub(crate) policy: NetPolicy,
    pub(crate) dns_upstream: Option<SocketAddr>,
    pub(crate) max_flows: usize,
    pub(crate) flow_buffer: usize,
    pub(crate) guest: Ipv4Addr,
    pub(crate) prefix: u8,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) mac: Option<[u8; 6]>,
    pub(crate) mtu: u16,
    pub(crate) egress: Option<RateLimit>,
    pub(crate) ingress: Option<RateLimit>,
}

impl Net {
    /// The user-space network (no privileges, no TAP): the guest is 10.0.2.15/24, its gateway
    /// and DNS server 10.0.2.2 (which also leads to the host's loopback, for `host` rules). Every
    /// allowed TCP and UDP flow leaves through a socket of the host process; ICMP echo through an
    /// unprivileged ping socket where the host allows one.
    pub fn user() -> Self {
        Self::with(BackendKind::User, [10, 0, 2, 15], [10, 0, 2, 2])
    }

    /// The host's TAP device `name` (opened; created when the process may, with CAP_NET_ADMIN).
    /// The guest is 10.0.3.2/24 with gateway 10.0.3.1 unless [`address`](Self::address) says
    /// otherwise; routing the TAP's traffic on the host is the caller's. The policy is enforced
    /// in the VMM, frame by frame, before anything reaches the TAP.
    pub fn tap(name: impl Into<String>) -> Self {
        Self::with(
            BackendKind::Tap { name: name.into() },
            [10, 0, 3, 2],
            [10, 0, 3, 1],
        )
    }

    fn with(backend: BackendKind, guest: [u8; 4], gateway: [u8; 4]) -> Self {
        Self {
            backend,
            policy: NetPolicy::new(),
            dns_upstream: None,
            max_flows: DEFAULT_MAX_FLOWS,
            flow_buffer: DEFAULT_FLOW_BUFFER,
            guest: guest.into(),
            prefix: 24,
            gateway: gateway.into(),
            mac: None,
            mtu: DEFAULT_MTU,
            egress: None,
            ingress: None,
        }
    }

    /// Uses `policy` (replacing the rules given so far).
    pub fn policy(mut self, policy: NetPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Appends an allow rule to the policy (see [`NetPolicy`] for the syntax).
    pub fn allow(mut self, rule: &str) -> Self {
        self.policy = self.policy.allow(rule);
        self
    }

    /// Appends a deny rule to the policy.
    pub fn deny(mut self, rule: &str) -> Self {
        self.policy = self.policy.deny(rule);
        self
    }

    /// Forwards allowed DNS queries to `resolver` (default: the first nameserver of the host's
    /// `/etc/resolv.conf`).
    pub fn dns_upstream(mut self, resolver: SocketAddr) -> Self {
        self.dns_upstream = Some(resolver);
        self
    }

    /// Caps open flows (default [`DEFAULT_MAX_FLOWS`], at most [`MAX_FLOWS`]).
    pub fn max_flows(mut self, flows: usize) -> Self {
        self.max_flows = flows;
        self
    }

    /// Each TCP flow's buffer per direction (default [`DEFAULT_FLOW_BUFFER`]).
    pub fn flow_buffer(mut self, bytes: usize) -> Self {
        self.flow_buffer = bytes;
        self
    }

    /// The guest's address and prefix length, and its gateway.
    pub fn address(mut self, guest: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Self {
        self.guest = guest;
        self.prefix = prefix;
        self.gateway = gateway;
        self
    }

    /// The guest's MAC address (default: derived from the zone's name, locally administered).
    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = Some(mac);
        self
    }

    /// The MTU offered to the guest (default [`DEFAULT_MTU`]; 576 to 65520).
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu;
        self
    }

    /// Limits the rate of one direction (changeable later with `set_net_rate_limit`).
    pub fn rate_limit(mut self, direction: Direction, limit: RateLimit) -> Self {
        match direction {
            Direction::Egress => self.egress = Some(limit),
            Direction::Ingress => self.ingress = Some(limit),
        }
        self
    }
}

/// A locally administered unicast MAC derived from `seed` (the zone and device names).
pub(crate) fn derived_mac(seed: &str) -> [u8; 6] {
    // FNV-1a: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x52, 0x54, b[0], b[1], b[2], b[3]]
}

/// The gateway's MAC: the guest's with the last byte flipped, never equal to it.
pub(crate) fn gateway_mac(guest: [u8; 6]) -> [u8; 6] {
    let mut m = guest;
    m[5] ^= 0xff;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_local_unicast_and_distinct() {
        let a = derived_mac("zone-1/net0");
        assert_eq!(a, derived_mac("zone-1/net0"));
        assert_ne!(a, derived_mac("zone-2/net0"));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered, unicast");
        assert_ne!(gateway_mac(a), a);
    }
}
