//! The egress policy of a zone: ordered rules, first match wins, deny by default.
//!
//! ```
//! use zone_net::NetPolicy;
//! let policy = NetPolicy::new()
//!     .deny("metadata")
//!     .allow("tcp api.example.com:443")
//!     .allow("*.pypi.org:443")
//!     .allow("udp host:53")
//!     .allow("public:80,443");
//! assert!(policy.error().is_none());
//! ```
//!
//! Protected classes (private, host, link-local, metadata) stay closed unless a rule names them
//! (their group, or a range inside them): `public` and `0.0.0.0/0` never open them. A name rule
//! opens only the addresses that DNS answered to this zone for a matching name, while their pin
//! lasts ([`pins`]).

pub mod class;
pub mod pins;
pub mod rule;

pub use class::{AddressClass, classify};
pub use rule::{Action, Destination, DomainPattern, Ports, Protocol, Rule, RuleError};

use pins::Pins;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Instant;

/// An egress policy: ordered rules, the first that matches decides, nothing matches: denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetPolicy {
    rules: Vec<Rule>,
    error: Option<RuleError>,
}

/// What decided a flow or a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed or not.
    pub action: Action,
    /// The index of the rule that decided, None for the default.
    pub rule: Option<usize>,
}

impl Verdict {
    const DEFAULT_DENY: Verdict = Verdict {
        action: Action::Deny,
        rule: None,
    };

    /// Whether the flow or query may go.
    pub fn allowed(&self) -> bool {
        self.action == Action::Allow
    }
}

/// What a DNS query may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameVerdict {
    /// Forward it; `pin`: a name rule allowed it, so the addresses answered are pinned to it.
    Allow {
        /// Pin the answers.
        pin: bool,
        /// The deciding name rule, if one.
        rule: Option<usize>,
    },
    /// Answer NXDOMAIN.
    Deny {
        /// The deciding rule, None for the default.
        rule: Option<usize>,
    },
}

impl NetPolicy {
    /// A policy that denies everything (add rules with [`allow`](Self::allow) and
    /// [`deny`](Self::deny)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a rule allowing `rule` (`[tcp|udp|icmp ]DEST[:PORTS]`). A rule that cannot be read
    /// is kept as an error that the zone's build reports ([`error`](Self::error)).
    pub fn allow(self, rule: &str) -> Self {
        self.push(Action::Allow, rule)
    }

    /// Appends a rule denying `rule`.
    pub fn deny(self, rule: &str) -> Self {
        self.push(Action::Deny, rule)
    }

    fn push(mut self, action: Action, text: &str) -> Self {
        match Rule::parse(action, text) {
            Ok(rule) => self.rules.push(rule),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// The first rule that could not be read, if any.
    pub fn error(&self) -> Option<&RuleError> {
        self.error.as_ref()
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The text of rule `index` (`allow tcp api.example.com:443`), or `default deny`.
    pub fn describe(&self, rule: Option<usize>) -> String {
        rule.and_then(|i| self.rules.get(i))
            .map_or_else(|| "default deny".to_string(), |r| r.text.clone())
    }

    /// Judges a flow to `addr` over `protocol` to `port` (None: ICMP). `gateway` is the zone's
    /// gateway (the host); `pins` what DNS answered to the zone; `name` a name the flow was
    /// already opened for (a flow being judged again keeps its name even if the pin expired).
    pub fn judge(
        &self,
        flow: &FlowTarget,
        gateway: Option<IpAddr>,
        pins: &Pins,
        now: Instant,
    ) -> Verdict {
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches_transport(flow.protocol, flow.port) {
                continue;
            }
            let hit = match &rule.destination {
                Destination::Range(net) => class::range_opens(net, flow.addr, gateway),
                Destination::Group(g) => classify(flow.addr, gateway) == *g,
                Destination::Domain(p) => {
                    flow.name.as_deref().is_some_and(|n| p.matches(n))
                        || pins.names(flow.addr, now).any(|n| p.matches(n))
                }
            };
            if hit {
                return Verdict {
                    action: rule.action,
                    rule: Some(i),
                };
            }
        }
        Verdict::DEFAULT_DENY
    }

    /// The name rule `addr` was allowed by for `flow`, to remember with the flow.
    pub fn pinned_name<'p>(
        &self,
        verdict: Verdict,
        addr: IpAddr,
        pins: &'p Pins,
        now: Instant,
    ) -> Option<&'p str> {
        let rule = self.rules.get(verdict.rule?)?;
        let Destination::Domain(p) = &rule.destination else {
            return None;
        };
        pins.names(addr, now).find(|n| p.matches(n))
    }

    /// Judges a DNS query for `name` (lower case, no trailing dot): the first name rule that
    /// matches decides; without one, the query goes if an allow rule names addresses that DNS
    /// answers (`public`, `private` or a range: its answers are then judged flow by flow), else
    /// it is denied. Rules for the host, link-local or metadata addresses open no names.
    pub fn judge_name(&self, name: &str) -> NameVerdict {
        for (i, rule) in self.rules.iter().enumerate() {
            if let Destination::Domain(p) = &rule.destination
                && p.matches(name)
            {
                return match rule.action {
                    Action::Allow => NameVerdict::Allow {
                        pin: true,
                        rule: Some(i),
                    },
                    Action::Deny => NameVerdict::Deny { rule: Some(i) },
                };
            }
        }
        let any_address_allow = self.rules.iter().any(|r| {
            r.action == Action::Allow
                && match r.destination {
                    Destination::Range(_) => true,
                    Destination::Group(g) => {
                        matches!(g, AddressClass::Public | AddressClass::Private)
                    }
                    Destination::Domain(_) => false,
                }
        });
        match any_address_allow {
            true => NameVerdict::Allow {
                pin: false,
                rule: None,
            },
            false => NameVerdict::Deny { rule: None },
        }
    }

    /// Whether a DNS answer `addr` may reach the guest: public addresses may; an address in a
    /// protected class only if an allow rule names that class or a range inside it (else it is
    /// a rebinding attempt and dropped).
    pub fn answer_allowed(&self, addr: IpAddr, gateway: Option<IpAddr>) -> bool {
        let class = classify(addr, gateway);
        if !class.protected() {
            return true;
        }
        self.rules.iter().any(|r| {
            r.action == Action::Allow
                && match &r.destination {
                    Destination::Range(net) => class::range_opens(net, addr, gateway),
                    Destination::Group(g) => *g == class,
                    Destination::Domain(_) => false,
                }
        })
    }
}

/// A flow to judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowTarget {
    /// Protocol.
    pub protocol: Protocol,
    /// Destination address as the guest sent it.
    pub addr: IpAddr,
    /// Destination port (None for ICMP).
    pub port: Option<u16>,
    /// The name the flow was opened for, when a name rule opened it.
    pub name: Option<String>,
}

impl FromStr for NetPolicy {
    type Err = RuleError;

    /// Reads a policy written one rule a line: `allow RULE` or `deny RULE`; blank lines and `#`
    /// comments are skipped.
    fn from_str(text: &str) -> Result<Self, RuleError> {
        let mut policy = NetPolicy::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (verb, rule) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let action = match verb {
                "allow" => Action::Allow,
                "deny" => Action::Deny,
                _ => {
                    return Err(RuleError {
                        rule: line.to_string(),
                        reason: "a line starts with allow or deny",
                    });
                }
            };
            policy.rules.push(Rule::parse(action, rule)?);
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests;
