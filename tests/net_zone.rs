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
    netlab::namespace(&[]);
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
    zone.kill();
}

#[test]
fn a_zone_without_net_has_no_network() {
    require_linux!();
    netlab::namespace(&[]);
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
    netlab::namespace(&["203.0.113.10", "203.0.113.11"]);
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
    zone.kill();
}

#[test]
fn net_cut_stops_a_transfer_at_once_and_restore_brings_the_network_back() {
    require_linux!();
    netlab::namespace(&[]);
    let source = Peer::stream("127.0.0.1:0");
    let echo = Peer::echo("127.0.0.1:0");
    let net = Net::user()
        .allow(&format!("tcp host:{}", source.port()))
        .allow(&format!("tcp host:{}", echo.port()));
    let zone = zone_with(net);
    let mut transfer = zone
        .spawn(
            &Command::new("/bin/netprobe").args(["stream", &format!("10.0.2.2:{}", source.port())]),
        )
        .unwrap();
    netlab::wait_rx(&zone, 4 << 20);
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
    zone.kill();
}

#[test]
fn tightening_the_policy_cuts_an_open_flow() {
    require_linux!();
    netlab::namespace(&[]);
    let source = Peer::stream("127.0.0.1:0");
    let rule = format!("tcp host:{}", source.port());
    let zone = zone_with(Net::user().allow(&rule));
    let mut transfer = zone
        .spawn(
            &Command::new("/bin/netprobe").args(["stream", &format!("10.0.2.2:{}", source.port())]),
        )
        .unwrap();
    netlab::wait_rx(&zone, 1 << 20);
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
    netlab::namespace(&[]);
    let source = Peer::stream("127.0.0.1:0");
    let zone = zone_with(Net::user().allow(&format!("tcp host:{}", source.port())));
    let _transfer = zone
        .spawn(
            &Command::new("/bin/netprobe").args(["stream", &format!("10.0.2.2:{}", source.port())]),
        )
        .unwrap();
    netlab::wait_rx(&zone, 1 << 20);
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
    netlab::namespace(&[]);
    // Connections to 203.0.113.0/24 hang (their SYNs vanish on the host): flows pile up.
    netlab::sinkhole("203.0.113.0/24");
    let fds_before = netlab::open_fds();
    let net = Net::user()
        .max_flows(64)
        .allow("tcp 203.0.113.0/24:20000-29999");
    let zone = zone_with(net);
    let denials = netlab::Collector::start(zone.events());
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
        fds <= fds_before + 64 + 32,
        "{fds} fds open, {fds_before} before the zone"
    );
    // Denials beyond the event budget are aggregated; their counts add up.
    let seen = denials.finish();
    let denied: u64 = seen.iter().map(|d| d.count).sum();
    let m = zone.net_metrics().unwrap();
    assert_eq!(denied, m.dropped_flow_limit);
    assert!(
        seen.len() as u64 <= m.dropped_flow_limit / 10,
        "{} events for {} denials",
        seen.len(),
        m.dropped_flow_limit
    );
    zone.kill();
}
