//! UDP and ICMP echo flows of the user-space stack: judged on their first datagram, then relayed
//! through a connected host UDP socket or an unprivileged ping socket. A refused datagram gets
//! an ICMP "administratively prohibited" back, so the guest's program fails at once.

use super::flows::{Flow, FlowKey, Kind, PingFlow, UdpFlow, guest_addr};
use super::tcp::Served;
use super::{Gate, UserStack, host, host_target};
use crate::denials::Denied;
use crate::metrics::{Counters, DropReason};
use crate::packet::ETH_HEADER;
use crate::policy::{FlowTarget, Protocol};
use etherparse::IcmpEchoHeader;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use zone_core::device::{EventOps, EventSet};

/// Largest datagram taken from a host socket.
const MAX_DATAGRAM: usize = 65535;

/// Tells the guest its datagram `frame` to `dst` was refused.
fn prohibit(gate: &mut Gate, dst: Ipv4Addr, frame: &[u8]) {
    let answer = gate
        .link
        .prohibited(dst, gate.addr.guest, &frame[ETH_HEADER.min(frame.len())..]);
    gate.send(answer);
}

/// Sends `datagram` on an existing flow's socket.
fn relay(flow: &mut Flow, gate: &mut Gate, datagram: &[u8]) {
    flow.last = gate.now;
    flow.bytes_out += datagram.len() as u64;
    let socket = match &flow.kind {
        Kind::Udp(u) => &u.socket,
        Kind::Ping(p) => &p.socket,
        Kind::Tcp(_) => return,
    };
    if socket.send(datagram).is_err() {
        gate.counters.dropped(DropReason::Backlog);
    }
}

/// A UDP datagram from the guest (not DNS to the gateway).
pub(crate) fn on_udp(
    stack: &mut UserStack,
    gate: &mut Gate,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
    frame: &[u8],
    ops: &mut EventOps<'_>,
) {
    let key = FlowKey {
        protocol: Protocol::Udp,
        guest_port: src.port(),
        dst,
    };
    if let Some(flow) = stack.flows.find(&key).and_then(|s| stack.flows.get_mut(s)) {
        relay(flow, gate, payload);
        return;
    }
    let target = FlowTarget {
        protocol: Protocol::Udp,
        addr: IpAddr::V4(*dst.ip()),
        port: Some(dst.port()),
        name: None,
    };
    let verdict = gate.judge(&target);
    if !verdict.allowed() || !stack.has_room(gate, &target) {
        prohibit(gate, *dst.ip(), frame);
        return;
    }
    let Ok(socket) = host::udp(host_target(gate, dst)) else {
        Counters::add(&gate.counters.flows_failed, 1);
        prohibit(gate, *dst.ip(), frame);
        return;
    };
    let mut flow = Flow::new(
        gate,
        key,
        target,
        verdict,
        Kind::Udp(UdpFlow {
            socket,
            readable: false,
        }),
    );
    relay(&mut flow, gate, payload);
    if !stack.add(flow, EventSet::IN, gate, ops) {
        gate.counters.dropped(DropReason::Backlog);
    }
}

/// An ICMP echo request from the guest to `dst` (not the gateway).
pub(crate) fn on_echo(
    stack: &mut UserStack,
    gate: &mut Gate,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    (id, seq): (u16, u16),
    payload: &[u8],
    frame: &[u8],
    ops: &mut EventOps<'_>,
) {
    let key = FlowKey {
        protocol: Protocol::Icmp,
        guest_port: id,
        dst: SocketAddrV4::new(dst, 0),
    };
    // The ping socket fills in its own id and the checksum.
    let mut request = vec![8u8, 0, 0, 0, 0, 0];
    request.extend_from_slice(&seq.to_be_bytes());
    request.extend_from_slice(payload);
    if let Some(flow) = stack.flows.find(&key).and_then(|s| stack.flows.get_mut(s)) {
        relay(flow, gate, &request);
        return;
    }
    let _ = src;
    let target = FlowTarget {
        protocol: Protocol::Icmp,
        addr: IpAddr::V4(dst),
        port: None,
        name: None,
    };
    let verdict = gate.judge(&target);
    if !verdict.allowed() || !stack.has_room(gate, &target) {
        prohibit(gate, dst, frame);
        return;
    }
    let socket = match host::ping(dst) {
        Ok(s) => s,
        Err(e) => {
            // Allowed, but the host does not let this process ping: say so.
            Counters::add(&gate.counters.flows_failed, 1);
            let why = match e.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => {
                    "host refuses unprivileged ping (net.ipv4.ping_group_range)".to_string()
                }
                _ => format!("host cannot ping: {e}"),
            };
            let destination = dst.to_string();
            gate.denials.deny(
                Denied {
                    rule: why,
                    protocol: "icmp",
                    destination: &destination,
                    port: None,
                },
                gate.now,
            );
            prohibit(gate, dst, frame);
            return;
        }
    };
    let mut flow = Flow::new(
        gate,
        key,
        target,
        verdict,
        Kind::Ping(PingFlow {
            socket,
            guest_id: id,
            readable: false,
        }),
    );
    relay(&mut flow, gate, &request);
    if !stack.add(flow, EventSet::IN, gate, ops) {
        gate.counters.dropped(DropReason::Backlog);
    }
}

/// Relays what the host socket received to the guest, while there is room.
pub(crate) fn serve(flow: &mut Flow, gate: &mut Gate) -> Served {
    if flow.dead {
        return Served {
            moved: false,
            done: true,
        };
    }
    let readable = match &flow.kind {
        Kind::Udp(u) => u.readable,
        Kind::Ping(p) => p.readable,
        Kind::Tcp(_) => false,
    };
    if !readable {
        return Served {
            moved: false,
            done: false,
        };
    }
    let guest = guest_addr(gate.addr.guest, &flow.key);
    let mut moved = false;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (socket, readable) = match &mut flow.kind {
            Kind::Udp(u) => (&u.socket, &mut u.readable),
            Kind::Ping(p) => (&p.socket, &mut p.readable),
            Kind::Tcp(_) => break,
        };
        if !*readable || gate.room() == 0 || gate.cut {
            break;
        }
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                *readable = false;
                break;
            }
            // An ICMP error from the host side (port unreachable): nothing to relay.
            Err(_) => continue,
        };
        let frame = match &flow.kind {
            Kind::Udp(_) => gate.link.udp(flow.key.dst, guest, &buf[..n]),
            Kind::Ping(p) => {
                // An echo reply: type 0, then code, checksum, id, seq, data.
                if n < 8 || buf[0] != 0 {
                    continue;
                }
                let seq = u16::from_be_bytes([buf[6], buf[7]]);
                let echo = IcmpEchoHeader {
                    id: p.guest_id,
                    seq,
                };
                gate.link
                    .echo_reply(*flow.key.dst.ip(), gate.addr.guest, echo, &buf[8..n])
            }
            Kind::Tcp(_) => break,
        };
        flow.bytes_in += n as u64;
        flow.last = gate.now;
        gate.send(frame);
        moved = true;
    }
    Served { moved, done: false }
}
