//! Address classes: which addresses a rule must name explicitly before a zone may reach them.

use ipnet::IpNet;
use std::net::IpAddr;

/// The class of a destination address. Every class but [`Public`](AddressClass::Public) is
/// *protected*: only a rule that names it (its group, or an address range inside it) opens it; a
/// `public` rule or a wide range such as `0.0.0.0/0` never does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Globally routable unicast addresses.
    Public,
    /// Private and shared ranges: 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT),
    /// fc00::/7 (unique local).
    Private,
    /// The host the zone runs on: the zone's gateway address, which leads to the host's loopback
    /// on the user-space backend.
    Host,
    /// Link-local ranges: 169.254/16 (but the metadata address) and fe80::/10.
    LinkLocal,
    /// The cloud metadata service: 169.254.169.254 and fd00:ec2::254.
    Metadata,
    /// Addresses no flow may go to: unspecified, loopback (the guest's own), multicast,
    /// broadcast, reserved and documentation-free special ranges that are not unicast.
    Special,
}

impl AddressClass {
    /// The group name used in rules (`public`, `private`, `host`, `link_local`, `metadata`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Host => "host",
            Self::LinkLocal => "link_local",
            Self::Metadata => "metadata",
            Self::Special => "special",
        }
    }

    /// Whether only an explicit rule opens this class.
    pub fn protected(self) -> bool {
        self != Self::Public
    }
}

/// The ranges of each protected class, most specific first.
const RANGES: &[(AddressClass, &str)] = &[
    (AddressClass::Metadata, "169.254.169.254/32"),
    (AddressClass::Metadata, "fd00:ec2::254/128"),
    (AddressClass::LinkLocal, "169.254.0.0/16"),
    (AddressClass::LinkLocal, "fe80::/10"),
    (AddressClass::Private, "10.0.0.0/8"),
    (AddressClass::Private, "172.16.0.0/12"),
    (AddressClass::Private, "192.168.0.0/16"),
    (AddressClass::Private, "100.64.0.0/10"),
    (AddressClass::Private, "fc00::/7"),
    (AddressClass::Special, "0.0.0.0/8"),
    (AddressClass::Special, "127.0.0.0/8"),
    (AddressClass::Special, "224.0.0.0/4"),
    (AddressClass::Special, "240.0.0.0/4"),
    (AddressClass::Special, "::/128"),
    (AddressClass::Special, "::1/128"),
    (AddressClass::Special, "ff00::/8"),
    (AddressClass::Special, "::ffff:0:0/96"),
];

/// The protected range (and its class) that holds `addr`, if any.
fn protected_range(addr: IpAddr) -> Option<(AddressClass, IpNet)> {
    static PARSED: std::sync::OnceLock<Vec<(AddressClass, IpNet)>> = std::sync::OnceLock::new();
    let parsed = PARSED.get_or_init(|| {
        // The table is constant; a test checks that every entry parses.
        RANGES
            .iter()
            .filter_map(|(class, net)| Some((*class, net.parse().ok()?)))
            .collect()
    });
    parsed.iter().find(|(_, net)| net.contains(&addr)).copied()
}

/// Classifies `addr` for a zone whose gateway (the host) is `gateway`.
pub fn classify(addr: IpAddr, gateway: Option<IpAddr>) -> AddressClass {
    if Some(addr) == gateway {
        return AddressClass::Host;
    }
    protected_range(addr).map_or(AddressClass::Public, |(class, _)| class)
}

/// Whether a rule's range `net` may open `addr` (inside it): public addresses yes; a protected
/// address only when `net` lies entirely inside the protected range that holds it (so `10/8`
/// opens 10.1.2.3, `0.0.0.0/0` does not), and the host only through its own address.
pub fn range_opens(net: &IpNet, addr: IpAddr, gateway: Option<IpAddr>) -> bool {
    if !net.contains(&addr) {
        return false;
    }
    if Some(addr) == gateway {
        return net.prefix_len() == net.max_prefix_len();
    }
    match protected_range(addr) {
        None => true,
        Some((_, range)) => range.contains(net),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_range_parses() {
        for (_, net) in RANGES {
            net.parse::<IpNet>().unwrap();
        }
    }

    #[test]
    fn classes_of_well_known_addresses() {
        let gw = Some(ip("10.0.2.2"));
        let cases = [
            ("93.184.216.34", AddressClass::Public),
            ("203.0.113.10", AddressClass::Public),
            ("10.1.2.3", AddressClass::Private),
            ("172.31.0.1", AddressClass::Private),
            ("172.32.0.1", AddressClass::Public),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::Private),
            ("10.0.2.2", AddressClass::Host),
            ("169.254.169.254", AddressClass::Metadata),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("127.0.0.1", AddressClass::Special),
            ("0.0.0.0", AddressClass::Special),
            ("255.255.255.255", AddressClass::Special),
            ("224.0.0.1", AddressClass::Special),
            ("2001:db8::1", AddressClass::Public),
            ("fd00::1", AddressClass::Private),
            ("fd00:ec2::254", AddressClass::Metadata),
            ("fe80::1", AddressClass::LinkLocal),
            ("::1", AddressClass::Special),
            ("::ffff:10.0.0.1", AddressClass::Special),
        ];
        for (addr, class) in cases {
            assert_eq!(classify(ip(addr), gw), class, "{addr}");
        }
    }

    #[test]
    fn only_ranges_inside_a_protected_range_open_it() {
        let gw = Some(ip("10.0.2.2"));
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(range_opens(&net("10.0.0.0/8"), ip("10.1.2.3"), gw));
        assert!(range_opens(&net("10.1.0.0/16"), ip("10.1.2.3"), gw));
        assert!(!range_opens(&net("0.0.0.0/0"), ip("10.1.2.3"), gw));
        assert!(
            !range_opens(&net("8.0.0.0/5"), ip("10.1.2.3"), gw),
            "8/5 spans 8-15"
        );
        assert!(range_opens(&net("0.0.0.0/0"), ip("93.184.216.34"), gw));
        assert!(!range_opens(
            &net("169.254.0.0/16"),
            ip("169.254.169.254"),
            gw
        ));
        assert!(range_opens(
            &net("169.254.169.254/32"),
            ip("169.254.169.254"),
            gw
        ));
        assert!(
            !range_opens(&net("10.0.0.0/8"), ip("10.0.2.2"), gw),
            "the host"
        );
        assert!(range_opens(&net("10.0.2.2/32"), ip("10.0.2.2"), gw));
        assert!(
            !range_opens(&net("10.0.0.0/8"), ip("11.0.0.1"), gw),
            "outside"
        );
    }
}
