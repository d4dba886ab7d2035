use super::*;
use proptest::prelude::*;
use std::time::Duration;

const GW: &str = "10.0.2.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn flow(protocol: Protocol, addr: &str, port: Option<u16>) -> FlowTarget {
    FlowTarget {
        protocol,
        addr: ip(addr),
        port,
        name: None,
    }
}

fn judge(policy: &NetPolicy, pins: &Pins, f: &FlowTarget) -> (Action, String) {
    let v = policy.judge(f, Some(ip(GW)), pins, Instant::now());
    (v.action, policy.describe(v.rule))
}

#[test]
fn table() {
    use Action::{Allow, Deny};
    use Protocol::{Icmp, Tcp, Udp};
    let policy = NetPolicy::new()
        .deny("metadata")
        .allow("tcp 10.1.0.0/16:5432")
        .deny("203.0.113.66")
        .allow("public:80,443")
        .allow("udp host:53")
        .allow("icmp public");
    assert!(policy.error().is_none());
    let none = Pins::default();
    let cases: &[(Protocol, &str, Option<u16>, Action, &str)] = &[
        (
            Tcp,
            "93.184.216.34",
            Some(443),
            Allow,
            "allow public:80,443",
        ),
        (
            Udp,
            "93.184.216.34",
            Some(443),
            Allow,
            "allow public:80,443",
        ),
        (Tcp, "93.184.216.34", Some(22), Deny, "default deny"),
        (Tcp, "203.0.113.66", Some(443), Deny, "deny 203.0.113.66"),
        (
            Tcp,
            "10.1.2.3",
            Some(5432),
            Allow,
            "allow tcp 10.1.0.0/16:5432",
        ),
        (Udp, "10.1.2.3", Some(5432), Deny, "default deny"),
        (Tcp, "10.2.0.1", Some(443), Deny, "default deny"),
        (Tcp, "192.168.1.1", Some(80), Deny, "default deny"),
        (Tcp, "169.254.169.254", Some(80), Deny, "deny metadata"),
        (Tcp, "169.254.1.1", Some(80), Deny, "default deny"),
        (Udp, GW, Some(53), Allow, "allow udp host:53"),
        (Tcp, GW, Some(80), Deny, "default deny"),
        (Icmp, "93.184.216.34", None, Allow, "allow icmp public"),
        (Icmp, "10.1.2.3", None, Deny, "default deny"),
        (Tcp, "127.0.0.1", Some(80), Deny, "default deny"),
    ];
    for (p, addr, port, action, rule) in cases {
        let got = judge(&policy, &none, &flow(*p, addr, *port));
        assert_eq!(got, (*action, rule.to_string()), "{p:?} {addr} {port:?}");
    }
    assert_eq!(
        judge(&NetPolicy::new(), &none, &flow(Tcp, "1.1.1.1", Some(443))).0,
        Deny,
        "the empty policy denies"
    );
}

#[test]
fn name_rules_open_only_pinned_addresses() {
    let policy = NetPolicy::new()
        .allow("tcp api.example.com:443")
        .deny("*.evil.example")
        .allow("*.pypi.org:443");
    let now = Instant::now();
    let mut pins = Pins::default();
    let api = flow(Protocol::Tcp, "93.184.216.34", Some(443));
    assert_eq!(
        judge(&policy, &pins, &api).0,
        Action::Deny,
        "not answered yet"
    );
    pins.pin(
        ip("93.184.216.34"),
        "api.example.com",
        Duration::from_secs(30),
        now,
    );
    assert_eq!(
        judge(&policy, &pins, &api),
        (Action::Allow, "allow tcp api.example.com:443".into())
    );
    let other = flow(Protocol::Tcp, "93.184.216.35", Some(443));
    assert_eq!(
        judge(&policy, &pins, &other).0,
        Action::Deny,
        "only that address"
    );
    let port = flow(Protocol::Tcp, "93.184.216.34", Some(80));
    assert_eq!(
        judge(&policy, &pins, &port).0,
        Action::Deny,
        "only that port"
    );
    let later = now + Duration::from_secs(31);
    let v = policy.judge(&api, Some(ip(GW)), &pins, later);
    assert_eq!(v.action, Action::Deny, "the pin expired");
    let remembered = FlowTarget {
        name: Some("api.example.com".into()),
        ..api.clone()
    };
    let v = policy.judge(&remembered, Some(ip(GW)), &pins, later);
    assert_eq!(v.action, Action::Allow, "an open flow keeps its name");
    let v = policy.judge(&api, Some(ip(GW)), &pins, now);
    assert_eq!(
        policy.pinned_name(v, api.addr, &pins, now),
        Some("api.example.com")
    );
}

#[test]
fn names_are_judged_by_name_rules_first() {
    let policy = NetPolicy::new()
        .deny("*.evil.example")
        .allow("api.example.com:443")
        .allow("*.example.com");
    assert_eq!(
        policy.judge_name("x.evil.example"),
        NameVerdict::Deny { rule: Some(0) }
    );
    assert_eq!(
        policy.judge_name("api.example.com"),
        NameVerdict::Allow {
            pin: true,
            rule: Some(1)
        }
    );
    assert_eq!(
        policy.judge_name("cdn.example.com"),
        NameVerdict::Allow {
            pin: true,
            rule: Some(2)
        }
    );
    assert_eq!(
        policy.judge_name("other.test"),
        NameVerdict::Deny { rule: None },
        "no address rule allows anything: no other name resolves"
    );
    let open = NetPolicy::new().allow("public:443");
    assert_eq!(
        open.judge_name("other.test"),
        NameVerdict::Allow {
            pin: false,
            rule: None
        }
    );
    let host_only = NetPolicy::new().allow("tcp host:8080").allow("metadata");
    assert_eq!(
        host_only.judge_name("other.test"),
        NameVerdict::Deny { rule: None },
        "rules for the host or metadata open no names"
    );
}

#[test]
fn answers_into_protected_ranges_are_rebinding() {
    let gw = Some(ip(GW));
    let policy = NetPolicy::new()
        .allow("api.example.com")
        .allow("tcp 10.5.0.0/16:443");
    assert!(policy.answer_allowed(ip("93.184.216.34"), gw));
    assert!(!policy.answer_allowed(ip("192.168.1.10"), gw));
    assert!(!policy.answer_allowed(ip("127.0.0.1"), gw));
    assert!(!policy.answer_allowed(ip("169.254.169.254"), gw));
    assert!(!policy.answer_allowed(ip(GW), gw));
    assert!(
        policy.answer_allowed(ip("10.5.1.1"), gw),
        "named explicitly"
    );
    assert!(!policy.answer_allowed(ip("10.6.1.1"), gw));
}

#[test]
fn a_policy_reads_from_text() {
    let policy: NetPolicy =
        "# agent sandbox\nallow tcp api.example.com:443\n\ndeny private\nallow public:443\n"
            .parse()
            .unwrap();
    assert_eq!(policy.rules().len(), 3);
    assert_eq!(policy.rules()[1].text, "deny private");
    assert!("permit 1.2.3.4".parse::<NetPolicy>().is_err());
    assert!("allow tcp".parse::<NetPolicy>().is_err());
    let bad = NetPolicy::new()
        .allow("ok.example")
        .allow("tcp")
        .allow("also bad");
    assert_eq!(
        bad.error().map(|e| e.rule.as_str()),
        Some("tcp"),
        "the first error"
    );
    assert_eq!(bad.rules().len(), 1);
}

/// Any IPv4 address in a protected range.
fn protected_v4() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|x| IpAddr::from((0x0a00_0000 | (x & 0x00ff_ffff)).to_be_bytes())),
        any::<u32>().prop_map(|x| IpAddr::from((0xac10_0000 | (x & 0x000f_ffff)).to_be_bytes())),
        any::<u32>().prop_map(|x| IpAddr::from((0xc0a8_0000 | (x & 0x0000_ffff)).to_be_bytes())),
        any::<u32>().prop_map(|x| IpAddr::from((0xa9fe_0000 | (x & 0x0000_ffff)).to_be_bytes())),
        Just(ip("169.254.169.254")),
        Just(ip(GW)),
    ]
}

/// Rules that never name a protected class: public, wide ranges, names.
fn unprotected_rule() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("public".to_string()),
        Just("0.0.0.0/0".to_string()),
        Just("0.0.0.0/1".to_string()),
        Just("8.0.0.0/5".to_string()),
        Just("128.0.0.0/1".to_string()),
        Just("*.example.com".to_string()),
        (1u16..=65535).prop_map(|p| format!("public:{p}")),
        (1u16..=65535).prop_map(|p| format!("tcp 0.0.0.0/0:{p}")),
    ]
}

proptest! {
    /// A rule set made of public/wide/name rules never lets a protected address through.
    #[test]
    fn protected_addresses_never_pass_unnamed(
        rules in proptest::collection::vec(unprotected_rule(), 1..8),
        addr in protected_v4(),
        port in 1u16..=65535,
        tcp in any::<bool>(),
    ) {
        let mut policy = NetPolicy::new();
        for r in &rules {
            policy = policy.allow(r);
        }
        prop_assert!(policy.error().is_none());
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        let v = policy.judge(&FlowTarget { protocol, addr, port: Some(port), name: None },
            Some(ip(GW)), &Pins::default(), Instant::now());
        prop_assert_eq!(v.action, Action::Deny);
        prop_assert!(!policy.answer_allowed(addr, Some(ip(GW))));
    }

    /// The first matching rule decides: putting a rule that matches in front changes the verdict
    /// to that rule's, whatever follows.
    #[test]
    fn first_match_wins(
        rules in proptest::collection::vec((any::<bool>(), unprotected_rule()), 0..8),
        last_octet in 1u8..=254,
        port in 1u16..=65535,
        deny_first in any::<bool>(),
    ) {
        let target = format!("93.184.216.{last_octet}");
        let mut policy = if deny_first {
            NetPolicy::new().deny(&target)
        } else {
            NetPolicy::new().allow(&target)
        };
        for (allow, r) in &rules {
            policy = if *allow { policy.allow(r) } else { policy.deny(r) };
        }
        let f = FlowTarget { protocol: Protocol::Tcp, addr: ip(&target), port: Some(port), name: None };
        let v = policy.judge(&f, Some(ip(GW)), &Pins::default(), Instant::now());
        prop_assert_eq!(v.rule, Some(0));
        prop_assert_eq!(v.action, if deny_first { Action::Deny } else { Action::Allow });
    }
}
