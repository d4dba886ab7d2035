//! zone-net end to end: Linux zones whose own virtio_net driver talks to zone-net, under a
//! deny-by-default policy, with live cut, policy swaps and quarantine. They need a KVM that runs
//! a guest kernel (the lab: `lab/test net_zone`). Each test runs in a network namespace of its
//! own (created for the test's thread, inherited by the zone's threads), with its peers on
//! addresses of that namespace's loopback: nothing leaves the machine.

mod common;
mod netlab;

use netlab::{Dns, Peer, probe, zone_with};
use std::time::{Duration, Instant};
use zones::Command;
use zones::net::{Net, NetControl, NetError, NetPolicy};
use zones::prelude::*;

#[test]
fn allowed_host_port_connects_and_a_denied_one_is_refused_with_an_event() {
    require_linux!();
    let _share = netlab::namespace(&[]);
    let open = Peer::echo("127.0.0.1:0");
    let closed = Peer::echo("127.0.0.1:0");
    let net = Net::user().allow(&format!("tcp host:{}", open.port()));
    let zone = zone_with(net);
    let events = zone.events();
    let reply = probe(
        &zone,
        &["send", &format!("10.0.2.2:{}", open.port()), "hello"],
    );
    assert_eq!(reply, "reply hello", "console:\n{}", zone.console_text());
    let refused = probe(&zone, &["connect", &format!("10.0.2.2:{}", closed.port())]);
    assert_eq!(refused, "refused", "a denied SYN is answered with a RST");
    assert_eq!(closed.accepted(), 0, "nothing reached the denied peer");
    let denial = netlab::wait_denial(&events, |d| d.port == Some(closed.port()));
    assert_eq!(
        (
            denial.protocol,
            denial.rule.as_str(),
            denial.destination.as_str()
        ),
        ("tcp", "default deny", "10.0.2.2")
    );
    assert_eq!(denial.zone, zone.name());
    let m = zone.net_metrics().unwrap();
    assert!(m.flows_opened >= 1 && m.flows_refused >= 1, "{m:?}");
    assert!(m.tx_packets > 0 && m.rx_packets > 0);
    let shown = zone
        .metrics()
        .device("net0")
        .cloned()
        .expect("net0 counters");
    assert!(shown.get("flows_refused").unwrap() >= 1);
    netlab::no_refused_syscalls(&zone);
    zone.kill();
}

#[test]
fn a_zone_without_net_has_no_network() {
    require_linux!();
    let _share = netlab::namespace(&[]);
    let peer = Peer::echo("127.0.0.1:0");
    let zone = netlab::zone(Zone::builder());
    let links = zone
        .exec(&Command::new("sh").arg("-c").arg("ls /sys/class/net"))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&links.stdout).trim(), "lo");
    let connect = probe(
        &zone,
        &["connect", &format!("10.0.2.2:{}", peer.port()), "2"],
    );
    assert!(connect.starts_with("error"), "{connect}");
    let dns = probe(&zone, &["resolve", "example.com"]);
    assert!(dns.starts_with("error") || dns == "timeout", "{dns}");
    assert!(matches!(zone.net_cut(), Err(NetError::NoNetwork { .. })));
    assert!(zone.device::<zones::net::NetHandle>().is_none());
    zone.kill();
}

#[test]
fn a_name_rule_opens_exactly_the_answered_address_and_rebinding_is_refused() {
    require_linux!();
    let _share = netlab::namespace(&["203.0.113.10", "203.0.113.11"]);
    let api = Peer::echo("203.0.113.10:80");
    let other = Peer::echo("203.0.113.11:80");
    let dns = Dns::serve(&[
        ("api.test", "203.0.113.10"),
        ("other.test", "203.0.113.11"),
        ("rebind.test", "10.0.0.5"),
    ]);
    let net = Net::user()
        .dns_upstream(dns.addr())
        .allow("tcp api.test:80")
        .allow("tcp rebind.test:80");
    let zone = zone_with(net);
    let events = zone.events();
    assert_eq!(probe(&zone, &["resolve", "api.test"]), "addrs 203.0.113.10");
    assert_eq!(
        probe(&zone, &["send", "203.0.113.10:80", "via-name"]),
        "reply via-name"
    );
    assert_eq!(api.accepted(), 1);
    assert_eq!(
        probe(&zone, &["connect", "203.0.113.11:80"]),
        "refused",
        "an address nobody answered is not opened"
    );
    assert_eq!(other.accepted(), 0);
    assert_eq!(probe(&zone, &["resolve", "other.test"]), "nxdomain");
    assert_eq!(probe(&zone, &["resolve", "rebind.test"]), "noanswer");
    assert_eq!(dns.asked("other.test"), 0, "a denied name never leaves");
    let m = zone.net_metrics().unwrap();
    assert_eq!((m.dns_denied, m.dns_rebinding_blocked), (1, 1), "{m:?}");
    netlab::wait_denial(&events, |d| {
        d.protocol == "dns" && d.destination == "other.test"
    });
    netlab::wait_denial(&events, |d| d.rule.starts_with("rebinding"));
    netlab::no_refused_syscalls(&zone);
    zone.kill();
}

#[test]
fn net_cut_stops_a_transfer_at_once_and_restore_brings_the_network_back() {
    require_linux!();
    let _share = netlab::namespace(&[]);
    let source = Peer::stream("127.0.0.1:0");
    let echo = Peer::echo("127.0.0.1:0");
    let net = Net::user()
        .allow(&format!("tcp host:{}", source.port()))
        .allow(&format!("tcp host:{}", echo.port()));
    let zone = zone_with(net);
    let mut transfer = netlab::stream_from(&zone, &source, 4 << 20);
    let flows = zone.net_flows().unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let cut_at = Instant::now();
    zone.net_cut().unwrap();
    let line = netlab::stdout_line(&mut transfer);
    let took = cut_at.elapsed();
    assert!(line.ends_with("end reset"), "{line}");
    assert!(
        took < common::scaled(Duration::from_millis(100)),
        "the transfer stopped {took:?} after the cut"
    );
    source.wait_closed();
    assert!(zone.net_flows().unwrap().is_empty());
    let during = probe(
        &zone,
        &["connect", &format!("10.0.2.2:{}", echo.port()), "2"],
    );
    assert_ne!(during, "connected");
    zone.net_restore().unwrap();
    let after = probe(
        &zone,
        &["send", &format!("10.0.2.2:{}", echo.port()), "back"],
    );
    assert_eq!(after, "reply back", "{}", netlab::guest_net_state(&zone));
    assert!(zone.net_metrics().unwrap().dropped_cut > 0);
    netlab::no_refused_syscalls(&zone);
    zone.kill();
}

#[test]
fn tightening_the_policy_cuts_an_open_flow() {
    require_linux!();
    let _share = netlab::namespace(&[]);
    let source = Peer::stream("127.0.0.1:0");
    let rule = format!("tcp host:{}", source.port());
    let zone = zone_with(Net::user().allow(&rule));
    let mut transfer = netlab::stream_from(&zone, &source, 1 << 20);
    let events = zone.events();
    let generation = zone.set_net_policy(NetPolicy::new().deny(&rule)).unwrap();
    assert_eq!(generation, 2);
    let line = netlab::stdout_line(&mut transfer);
    assert!(line.ends_with("end reset"), "{line}");
    netlab::wait_denial(&events, |d| d.rule == format!("deny {rule}"));
    let again = probe(&zone, &["connect", &format!("10.0.2.2:{}", source.port())]);
    assert_eq!(again, "refused");
    assert!(
        zone.set_net_policy(NetPolicy::new().allow("nonsense rule"))
            .is_err()
    );
    zone.kill();
}

#[test]
fn quarantine_freezes_the_zone_cuts_its_flows_and_reports_them() {
    require_linux!();
    let _share = netlab::namespace(&[]);
    let source = Peer::stream("127.0.0.1:0");
    let zone = zone_with(Net::user().allow(&format!("tcp host:{}", source.port())));
    let _transfer = netlab::stream_from(&zone, &source, 1 << 20);
    let evidence = zone.quarantine().unwrap();
    assert_eq!(zone.state(), ZoneState::Quarantined);
    let net = evidence
        .devices
        .iter()
        .find(|d| d.device == "net0")
        .expect("net0 evidence");
    let flows = net
        .detail::<Vec<zones::net::FlowInfo>>()
        .expect("typed flows");
    assert_eq!(flows.len(), 1, "{:?}", net.lines);
    assert_eq!(flows[0].destination.port(), source.port());
    assert!(flows[0].bytes_in > 0);
    source.wait_closed();
    assert!(matches!(
        zone.net_restore(),
        Err(NetError::Quarantined { .. })
    ));
    assert!(zone.resume().is_err());
    zone.release().unwrap();
    let echo_rule = format!("10.0.2.2:{}", source.port());
    let reconnect = probe(&zone, &["connect", &echo_rule]);
    assert_eq!(reconnect, "connected", "released: the network is back");
    zone.kill();
}

#[test]
fn ten_thousand_syns_leave_host_fds_and_flows_bounded() {
    require_linux!();
    let _share = netlab::namespace_alone(&[]);
    // Connections to 203.0.113.0/24 hang (their SYNs vanish on the host): flows pile up.
    netlab::sinkhole("203.0.113.0/24");
    let net = Net::user()
        .max_flows(64)
        .allow("tcp 203.0.113.0/24:20000-29999");
    let zone = zone_with(net);
    // The zone's own descriptors (VM, vCPUs, devices, their threads' seccomp listeners) are
    // counted once it is up and idle: the bound below is on what the flood adds.
    zone.wait_ready(common::scaled(Duration::from_secs(60)))
        .expect("agent ready");
    let fds_before = netlab::open_fds();
    let denials = netlab::Collector::start(zone.events());
    let flood_started = Instant::now();
    let out = probe(&zone, &["synflood", "203.0.113.99", "20000", "10000"]);
    assert!(out.starts_with("sent 10000"), "{out}");
    let m = zone.net_metrics().unwrap();
    // Hung connects time out (30 s) and free their slots: more than 64 may have been opened
    // over the flood, never more than 64 at once.
    assert!(m.flows_opened >= 64, "{m:?}");
    assert_eq!(m.flows_open, 64, "{m:?}");
    assert_eq!(
        m.flows_opened + m.dropped_flow_limit,
        10_000,
        "every SYN opened a flow or was refused: {m:?}"
    );
    let fds = netlab::open_fds();
    assert!(
        fds <= fds_before + 64 + 8,
        "{fds} fds open, {fds_before} before the flood"
    );
    // Denials beyond the event budget are aggregated; their counts add up. The number of
    // events follows zone-net's budget over the flood's duration (a burst of 32, then 8 a
    // second, plus one aggregate a second for this single destination), not the number of
    // denials: a slower flood (the lab's emulation) may see more events, never more than that.
    let seen = denials.finish();
    let secs = flood_started.elapsed().as_secs() + 2;
    let denied: u64 = seen.iter().map(|d| d.count).sum();
    let m = zone.net_metrics().unwrap();
    assert_eq!(denied, m.dropped_flow_limit);
    let budget = 32 + 9 * secs;
    assert!(
        (seen.len() as u64) <= budget && (seen.len() as u64) < m.dropped_flow_limit / 2,
        "{} events for {} denials in {secs} s (budget {budget})",
        seen.len(),
        m.dropped_flow_limit
    );
    zone.kill();
}

#[test]
fn udp_and_ping_follow_the_policy() {
    require_linux!();
    let _share = netlab::namespace(&["203.0.113.10"]);
    let open = netlab::UdpEcho::bind("127.0.0.1:0");
    let closed = netlab::UdpEcho::bind("127.0.0.1:0");
    let net = Net::user()
        .allow(&format!("udp host:{}", open.port()))
        .allow("icmp 203.0.113.0/24");
    let zone = zone_with(net);
    let events = zone.events();
    let reply = probe(
        &zone,
        &["udp", &format!("10.0.2.2:{}", open.port()), "ping?"],
    );
    assert_eq!(reply, "reply ping?");
    let denied = probe(&zone, &["udp", &format!("10.0.2.2:{}", closed.port()), "x"]);
    assert_ne!(denied, "reply x");
    assert_eq!(closed.received(), 0);
    netlab::wait_denial(&events, |d| {
        d.protocol == "udp" && d.port == Some(closed.port())
    });
    let ping = |to: &str| {
        zone.exec(&Command::new("ping").args(["-c", "1", "-W", "5", to]))
            .unwrap()
            .status
            .success()
    };
    assert!(ping("10.0.2.2"), "the gateway answers pings itself");
    // This namespace lets no group use ping sockets (net.ipv4.ping_group_range = 1 0).
    assert!(!ping("203.0.113.10"));
    netlab::wait_denial(&events, |d| d.rule.contains("ping_group_range"));
    netlab::allow_ping_sockets();
    assert!(
        ping("203.0.113.10"),
        "allowed once the host lets the VMM ping"
    );
    assert!(!ping("198.51.100.1"), "no rule");
    netlab::no_refused_syscalls(&zone);
    zone.kill();
}

#[test]
fn the_tap_backend_enforces_the_same_policy() {
    require_linux!();
    let _share = netlab::namespace(&[]);
    netlab::tap("zt0", "10.0.3.1/24");
    let open = Peer::echo("10.0.3.1:0");
    let closed = Peer::echo("10.0.3.1:0");
    let dns = Dns::serve(&[("svc.test", "10.0.3.1")]);
    let net = Net::tap("zt0")
        .dns_upstream(dns.addr())
        .allow(&format!("tcp host:{}", open.port()))
        .allow("host");
    let zone = zone_with(net);
    let reply = probe(
        &zone,
        &["send", &format!("10.0.3.1:{}", open.port()), "tap"],
    );
    assert_eq!(reply, "reply tap", "{}", netlab::guest_net_state(&zone));
    let policy = NetPolicy::new().allow(&format!("tcp host:{}", open.port()));
    zone.set_net_policy(policy).unwrap();
    let refused = probe(&zone, &["connect", &format!("10.0.3.1:{}", closed.port())]);
    assert_eq!(refused, "refused");
    assert_eq!(closed.accepted(), 0);
    assert_eq!(
        probe(&zone, &["resolve", "svc.test"]),
        "nxdomain",
        "no name rule"
    );
    zone.set_net_policy(NetPolicy::new().allow("tcp svc.test:*").allow("host"))
        .unwrap();
    assert_eq!(probe(&zone, &["resolve", "svc.test"]), "addrs 10.0.3.1");
    // Unsolicited traffic toward the guest is dropped.
    let before = zone.net_metrics().unwrap().dropped_no_flow;
    let s = std::net::UdpSocket::bind("10.0.3.1:0").unwrap();
    for _ in 0..5 {
        s.send_to(b"knock", "10.0.3.2:9999").unwrap();
    }
    let until = Instant::now() + common::scaled(Duration::from_secs(5));
    while zone.net_metrics().unwrap().dropped_no_flow < before + 5 {
        assert!(Instant::now() < until, "{:?}", zone.net_metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    netlab::no_refused_syscalls(&zone);
    zone.kill();
}

#[test]
fn pause_stops_flows_and_resume_continues_them() {
    require_linux!();
    let _share = netlab::namespace(&[]);
    let source = Peer::stream("127.0.0.1:0");
    let zone = zone_with(Net::user().allow(&format!("tcp host:{}", source.port())));
    let _transfer = netlab::stream_from(&zone, &source, 1 << 20);
    zone.pause().unwrap();
    let frozen = zone.net_metrics().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let later = zone.net_metrics().unwrap();
    assert_eq!(
        (later.rx_bytes, later.tx_bytes),
        (frozen.rx_bytes, frozen.tx_bytes),
        "no frame moved while paused"
    );
    zone.resume().unwrap();
    netlab::wait_rx(&zone, frozen.rx_bytes + (1 << 20));
    zone.kill();
}

#[test]
fn a_rate_limit_caps_a_transfer_and_can_be_lifted() {
    require_linux!();
    let _share = netlab::namespace(&[]);
    use zones::net::{Direction, RateLimit};
    let source = Peer::stream("127.0.0.1:0");
    let limit = 200_000u64;
    let net = Net::user()
        .allow(&format!("tcp host:{}", source.port()))
        .rate_limit(Direction::Ingress, RateLimit::bytes_per_sec(limit));
    let zone = zone_with(net);
    let _transfer = netlab::stream_from(&zone, &source, 300_000);
    let (start, at) = (zone.net_metrics().unwrap().rx_bytes, Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let got = zone.net_metrics().unwrap().rx_bytes - start;
    let secs = at.elapsed().as_secs_f64();
    // At most the limit (plus one burst of a frame's worth); a cap, not a speed.
    assert!(
        (got as f64) <= limit as f64 * secs + 70_000.0,
        "{got} bytes in {secs:.2} s under a {limit} B/s limit"
    );
    zone.set_net_rate_limit(Direction::Ingress, None).unwrap();
    netlab::wait_rx(&zone, start + got + 4 * limit);
    netlab::no_refused_syscalls(&zone);
    zone.kill();
}
