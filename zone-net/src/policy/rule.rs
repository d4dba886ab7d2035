//! One egress rule: what it matches (protocol, destination, ports) and what it decides.
//!
//! Written as `[PROTO ]DEST[:PORTS]`:
//! - `PROTO`: `tcp`, `udp` or `icmp`; omitted, the rule matches every protocol.
//! - `DEST`: an address (`93.184.216.34`, `[2001:db8::1]`), a range (`10.0.0.0/8`,
//!   `[fd00::/8]`), a name (`api.example.com`, exactly), a suffix (`*.example.com`: every name
//!   below it, not the name itself), or a group (`public`, `private`, `host`, `link_local`,
//!   `metadata`).
//! - `PORTS`: `443`, `80,443`, `8000-8100` or `*`; omitted, every port. A rule with ports never
//!   matches ICMP.

use super::class::AddressClass;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Let the flow or query through.
    Allow,
    /// Refuse it (TCP: reset; UDP and ICMP: port unreachable; DNS: NXDOMAIN).
    Deny,
}

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP echo (ping).
    Icmp,
}

impl Protocol {
    /// `tcp`, `udp`, `icmp`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        }
    }
}

/// A name pattern: exact, or every name below a suffix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainPattern {
    /// Exactly this name (lower case, no trailing dot).
    Exact(String),
    /// Every name ending in `.suffix` (`*.suffix`), not the suffix itself.
    Below(String),
}

impl DomainPattern {
    /// Whether `name` (lower case, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(n) => name == n,
            Self::Below(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

/// Where a rule applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An address range (a single address is a full-length prefix).
    Range(IpNet),
    /// A name or suffix: the addresses DNS answered for it to this zone, while pinned.
    Domain(DomainPattern),
    /// A class of addresses.
    Group(AddressClass),
}

/// Destination ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    /// Every port (and ICMP).
    Any,
    /// Only these ports (never ICMP).
    Only(Vec<RangeInclusive<u16>>),
}

impl Ports {
    /// Whether `port` (None for ICMP) matches.
    pub fn matches(&self, port: Option<u16>) -> bool {
        match (self, port) {
            (Self::Any, _) => true,
            (Self::Only(_), None) => false,
            (Self::Only(ranges), Some(p)) => ranges.iter().any(|r| r.contains(&p)),
        }
    }
}

/// One rule of a [`NetPolicy`](super::NetPolicy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What it decides.
    pub action: Action,
    /// Which protocol it matches (None: all).
    pub protocol: Option<Protocol>,
    /// Where.
    pub destination: Destination,
    /// Which ports.
    pub ports: Ports,
    /// As written, for events (`allow tcp api.example.com:443`).
    pub text: String,
}

/// Why a rule could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "network rule {rule:?}: {reason}; rules read `[tcp|udp|icmp ]DEST[:PORTS]`, e.g. `tcp api.example.com:443`, `10.0.0.0/8`, `*.pypi.org:443`, `public:80,443`"
)]
pub struct RuleError {
    /// The rule as given.
    pub rule: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Rule {
    /// Reads `text` (`[PROTO ]DEST[:PORTS]`) as a rule deciding `action`.
    pub fn parse(action: Action, text: &str) -> Result<Rule, RuleError> {
        let err = |reason| RuleError {
            rule: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        let (protocol, rest) = match trimmed.split_once(char::is_whitespace) {
            Some((p, rest)) => {
                let protocol = match p.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    "icmp" => Protocol::Icmp,
                    _ => return Err(err("unknown protocol (tcp, udp or icmp)")),
                };
                (Some(protocol), rest.trim())
            }
            None => (None, trimmed),
        };
        if rest.is_empty() {
            return Err(err("no destination"));
        }
        let (dest, ports) = split_ports(rest).map_err(err)?;
        let ports = match ports {
            None => Ports::Any,
            Some(p) => parse_ports(p).map_err(err)?,
        };
        if protocol == Some(Protocol::Icmp) && ports != Ports::Any {
            return Err(err("ICMP has no ports"));
        }
        let destination = parse_destination(dest).map_err(err)?;
        let verb = match action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        Ok(Rule {
            action,
            protocol,
            destination,
            ports,
            text: format!("{verb} {trimmed}"),
        })
    }

    /// Whether the rule applies to `protocol` and `port`.
    pub fn matches_transport(&self, protocol: Protocol, port: Option<u16>) -> bool {
        self.protocol.is_none_or(|p| p == protocol) && self.ports.matches(port)
    }
}

/// Splits `DEST[:PORTS]`; an IPv6 destination with ports is written in brackets.
fn split_ports(s: &str) -> Result<(&str, Option<&str>), &'static str> {
    if let Some(inner) = s.strip_prefix('[') {
        let (dest, after) = inner.split_once(']').ok_or("unclosed [")?;
        return match after {
            "" => Ok((dest, None)),
            a => Ok((dest, Some(a.strip_prefix(':').ok_or("text after ]")?))),
        };
    }
    if s.matches(':').count() > 1 {
        // A bare IPv6 address or range, without ports.
        return Ok((s, None));
    }
    Ok(match s.split_once(':') {
        Some((d, p)) => (d, Some(p)),
        None => (s, None),
    })
}

fn parse_ports(s: &str) -> Result<Ports, &'static str> {
    if s == "*" {
        return Ok(Ports::Any);
    }
    let mut ranges = Vec::new();
    for part in s.split(',') {
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| "bad port");
        let range = match part.split_once('-') {
            Some((a, b)) => port(a)?..=port(b)?,
            None => port(part).map(|p| p..=p)?,
        };
        if range.is_empty() || *range.start() == 0 {
            return Err("bad port range");
        }
        ranges.push(range);
    }
    Ok(Ports::Only(ranges))
}

fn parse_destination(s: &str) -> Result<Destination, &'static str> {
    let group = match s.to_ascii_lowercase().as_str() {
        "public" => Some(AddressClass::Public),
        "private" => Some(AddressClass::Private),
        "host" => Some(AddressClass::Host),
        "link_local" | "link-local" => Some(AddressClass::LinkLocal),
        "metadata" => Some(AddressClass::Metadata),
        _ => None,
    };
    if let Some(g) = group {
        return Ok(Destination::Group(g));
    }
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(Destination::Range(net.trunc()));
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(Destination::Range(IpNet::from(addr)));
    }
    let lower = s.trim_end_matches('.').to_ascii_lowercase();
    let (pattern, name) = match lower.strip_prefix("*.") {
        Some(suffix) => (DomainPattern::Below(suffix.to_string()), suffix),
        None => (DomainPattern::Exact(lower.clone()), lower.as_str()),
    };
    if !valid_name(name) {
        return Err("not an address, range, group or DNS name");
    }
    Ok(Destination::Domain(pattern))
}

/// A fully qualified DNS name: two or more dot-separated labels of 1-63 letters, digits, `-`
/// and `_`, 253 bytes at most (a single word, such as a misplaced `tcp`, is refused).
fn valid_name(name: &str) -> bool {
    name.contains('.')
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && name.bytes().any(|b| !b.is_ascii_digit() && b != b'.')
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(s: &str) -> Rule {
        Rule::parse(Action::Allow, s).unwrap()
    }

    #[test]
    fn reads_every_form() {
        let r = allow("tcp api.example.com:443");
        assert_eq!(r.protocol, Some(Protocol::Tcp));
        assert_eq!(
            r.destination,
            Destination::Domain(DomainPattern::Exact("api.example.com".into()))
        );
        assert_eq!(r.ports, Ports::Only(vec![443..=443]));
        assert_eq!(r.text, "allow tcp api.example.com:443");
        let r = allow("10.0.0.0/8");
        assert_eq!((r.protocol, &r.ports), (None, &Ports::Any));
        assert_eq!(
            r.destination,
            Destination::Range("10.0.0.0/8".parse().unwrap())
        );
        let r = allow("10.1.2.3/8:80,443,8000-8100");
        assert_eq!(
            r.destination,
            Destination::Range("10.0.0.0/8".parse().unwrap()),
            "host bits are dropped"
        );
        assert_eq!(r.ports, Ports::Only(vec![80..=80, 443..=443, 8000..=8100]));
        let r = allow("[2001:db8::/32]:443");
        assert_eq!(
            r.destination,
            Destination::Range("2001:db8::/32".parse().unwrap())
        );
        assert_eq!(allow("2001:db8::1").ports, Ports::Any);
        assert_eq!(
            allow("*.PyPI.org.:443").destination,
            Destination::Domain(DomainPattern::Below("pypi.org".into()))
        );
        assert_eq!(
            allow("public:*").destination,
            Destination::Group(AddressClass::Public)
        );
        assert_eq!(allow("icmp metadata").protocol, Some(Protocol::Icmp));
        assert_eq!(
            allow("udp host:53").destination,
            Destination::Group(AddressClass::Host)
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "",
            "sctp 1.2.3.4",
            "tcp",
            "1.2.3.4:0",
            "1.2.3.4:70000",
            "1.2.3.4:90-80",
            "icmp 1.2.3.4:80",
            "[2001:db8::1",
            "exa mple.com",
            "-",
            "1.2.3",
            "*.",
            "a..b",
        ] {
            assert!(Rule::parse(Action::Allow, bad).is_err(), "{bad:?}");
        }
        let e = Rule::parse(Action::Deny, "sctp x").unwrap_err();
        assert!(e.to_string().contains("unknown protocol"), "{e}");
    }

    #[test]
    fn suffixes_match_below_only() {
        let p = DomainPattern::Below("example.com".into());
        assert!(p.matches("a.example.com") && p.matches("a.b.example.com"));
        assert!(!p.matches("example.com") && !p.matches("badexample.com"));
        assert!(!p.matches(".example.com"));
        let e = DomainPattern::Exact("example.com".into());
        assert!(e.matches("example.com") && !e.matches("a.example.com"));
    }

    #[test]
    fn ports_never_match_icmp() {
        let r = allow("1.2.3.4:80");
        assert!(r.matches_transport(Protocol::Tcp, Some(80)));
        assert!(!r.matches_transport(Protocol::Icmp, None));
        assert!(allow("1.2.3.4").matches_transport(Protocol::Icmp, None));
        assert!(!allow("udp 1.2.3.4").matches_transport(Protocol::Tcp, Some(1)));
    }
}
