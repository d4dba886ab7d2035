//! The user-space network: the guest's frames end in the VMM. A smoltcp interface at the
//! gateway address answers ARP and terminates TCP (any destination address: smoltcp's AnyIP);
//! each allowed flow is carried by a socket of the host process. The policy is checked on a
//! flow's first packet, before smoltcp sees it: a denied SYN gets a RST at once; an allowed one
//! waits until the host connect succeeds (the guest then sees the real outcome, refused or
//! connected). UDP and ICMP echo are relayed without smoltcp, through connected UDP sockets and
//! unprivileged ping sockets; DNS to the gateway goes to the [`Gate`].
//!
//! The gateway address leads to the host's loopback (for `host` rules).

mod datagram;
mod flows;
mod host;
mod phy;
mod tcp;

use super::{Gate, TOKEN_BACKEND};
use crate::control::FlowInfo;
use crate::metrics::{Counters, DropReason};
use crate::packet::{self, Frame};
use crate::policy::FlowTarget;
use flows::{Flow, Flows, Kind};
use phy::Phy;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use zone_core::device::{EventOps, EventSet, Events};

/// A UDP or ping flow with no traffic for this long is closed.
const DATAGRAM_IDLE: Duration = Duration::from_secs(60);
/// A host connect that has not completed after this long fails (the guest gets a RST).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle flows are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The user-space stack of one zone.
pub(crate) struct UserStack {
    iface: Interface,
    phy: Phy,
    sockets: SocketSet<'static>,
    flows: Flows,
    flow_buffer: usize,
    epoch: Instant,
    next_sweep: Instant,
}

impl UserStack {
    pub(crate) fn new(gate: &Gate, max_flows: usize, flow_buffer: usize) -> Self {
        let mut phy = Phy::new(gate.addr.mtu);
        let epoch = gate.now;
        let config = Config::new(EthernetAddress(gate.addr.gateway_mac).into());
        let mut iface = Interface::new(config, &mut phy, smoltcp::time::Instant::ZERO);
        let gw = Ipv4Address::from(gate.addr.gateway.octets());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(gw), gate.addr.prefix));
        });
        // AnyIP: accept TCP to any address routed through our own; the policy picks the flows.
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
        iface.set_any_ip(true);
        Self {
            iface,
            phy,
            sockets: SocketSet::new(Vec::new()),
            flows: Flows::new(max_flows),
            flow_buffer,
            epoch,
            next_sweep: gate.now + SWEEP_EVERY,
        }
    }

    fn stamp(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    /// A frame from the guest.
    pub(crate) fn guest_frame(&mut self, gate: &mut Gate, frame: &[u8], ops: &mut EventOps<'_>) {
        match packet::parse(frame) {
            Frame::Arp => self.phy.inbound.push_back(frame.to_vec()),
            Frame::Tcp(seg) if *seg.src.ip() == gate.addr.guest => {
                tcp::on_segment(self, gate, seg, frame, ops);
            }
            Frame::Udp { src, dst, payload } if *src.ip() == gate.addr.guest => {
                if *dst.ip() == gate.addr.gateway && dst.port() == 53 {
                    gate.dns_query(payload, src, dst);
                } else {
                    datagram::on_udp(self, gate, src, dst, payload, frame, ops);
                }
            }
            Frame::EchoRequest {
                src,
                dst,
                id,
                seq,
                payload,
            } if src == gate.addr.guest => {
                if dst == gate.addr.gateway {
                    // The gateway answers pings itself, as a router does: nothing leaves.
                    let echo = etherparse::IcmpEchoHeader { id, seq };
                    let reply = gate.link.echo_reply(dst, src, echo, payload);
                    gate.send(reply);
                } else {
                    datagram::on_echo(self, gate, (src, dst), (id, seq), payload, frame, ops);
                }
            }
            Frame::Malformed => gate.counters.dropped(DropReason::Malformed),
            // Another source address than the guest's own: spoofed, dropped.
            Frame::Tcp(_) | Frame::Udp { .. } | Frame::EchoRequest { .. } => {
                gate.counters.dropped(DropReason::Malformed)
            }
            Frame::EchoReply { .. } | Frame::OtherIpv4 { .. } | Frame::Ipv6 | Frame::Other => {
                gate.counters.dropped(DropReason::Unsupported)
            }
        }
    }

    /// A host socket is ready.
    pub(crate) fn ready(&mut self, token: u32, events: EventSet) {
        let Some(slot) = token.checked_sub(TOKEN_BACKEND) else {
            return;
        };
        let Some(flow) = self.flows.get_mut(slot as usize) else {
            return;
        };
        let readable = events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR);
        let writable = events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR);
        match &mut flow.kind {
            Kind::Tcp(t) => {
                t.readable |= readable;
                t.writable |= writable;
            }
            Kind::Udp(u) => u.readable |= readable,
            Kind::Ping(p) => p.readable |= readable,
        }
    }

    /// Runs smoltcp and serves every flow until nothing moves (a few rounds at most).
    pub(crate) fn pump(&mut self, gate: &mut Gate, ops: &mut EventOps<'_>) {
        for _ in 0..4 {
            self.phy.room = if gate.cut { 0 } else { gate.room() };
            let stamp = self.stamp(gate.now);
            let changed = self.iface.poll(stamp, &mut self.phy, &mut self.sockets);
            let sent = self.flush(gate);
            let served = self.serve(gate, ops);
            if changed == smoltcp::iface::PollResult::None && !sent && !served {
                break;
            }
        }
        self.flush(gate);
    }

    /// Moves smoltcp's frames to the guest's queue.
    fn flush(&mut self, gate: &mut Gate) -> bool {
        let any = !self.phy.outbound.is_empty();
        while let Some(frame) = self.phy.outbound.pop_front() {
            gate.send(frame);
        }
        any
    }

    /// Serves every flow once; ends those that are done. Returns whether anything moved.
    fn serve(&mut self, gate: &mut Gate, ops: &mut EventOps<'_>) -> bool {
        let mut moved = false;
        for slot in self.flows.slots() {
            let Some(flow) = self.flows.get_mut(slot) else {
                continue;
            };
            let outcome = match &mut flow.kind {
                Kind::Tcp(_) => tcp::serve(
                    flow,
                    &mut self.sockets,
                    &mut self.phy,
                    gate,
                    self.flow_buffer,
                ),
                Kind::Udp(_) | Kind::Ping(_) => datagram::serve(flow, gate),
            };
            moved |= outcome.moved;
            if outcome.done {
                self.close(slot, gate, ops);
            }
        }
        moved
    }

    /// Ends the flow in `slot`: its smoltcp socket and host socket go.
    fn close(&mut self, slot: usize, gate: &mut Gate, ops: &mut EventOps<'_>) {
        if let Some(flow) = self.flows.remove(slot) {
            let _ = ops.remove(Events::empty_raw(flow.fd()));
            if let Kind::Tcp(flows::TcpFlow {
                state: flows::TcpState::Open(handle),
                ..
            }) = &flow.kind
            {
                self.sockets.remove(*handle);
            }
            gate.counters
                .flows_open
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Registers a new flow's host socket; false if the table is full (the flow is dropped).
    fn add(
        &mut self,
        flow: Flow,
        events: EventSet,
        gate: &mut Gate,
        ops: &mut EventOps<'_>,
    ) -> bool {
        let fd = flow.fd();
        let Some(slot) = self.flows.insert(flow) else {
            return false;
        };
        let data = TOKEN_BACKEND + slot as u32;
        if ops
            .add(Events::with_data_raw(
                fd,
                data,
                events | EventSet::EDGE_TRIGGERED,
            ))
            .is_err()
        {
            self.flows.remove(slot);
            return false;
        }
        Counters::add(&gate.counters.flows_opened, 1);
        Counters::add(&gate.counters.flows_open, 1);
        true
    }

    /// Whether the table has room; if not, the flow is refused (counted, reported).
    fn has_room(&self, gate: &mut Gate, target: &FlowTarget) -> bool {
        if self.flows.len() < self.flows.capacity() {
            return true;
        }
        gate.flow_limit(target, self.flows.capacity());
        false
    }

    pub(crate) fn next_wake(&mut self, gate: &Gate) -> Option<Instant> {
        let stamp = self.stamp(gate.now);
        let stack = self
            .iface
            .poll_delay(stamp, &self.sockets)
            .map(|d| gate.now + Duration::from_micros(d.total_micros()));
        let sweep = (self.flows.len() > 0).then_some(self.next_sweep);
        [stack, sweep].into_iter().flatten().min()
    }

    /// Ends idle datagram flows and overdue connects.
    pub(crate) fn sweep(&mut self, gate: &mut Gate, ops: &mut EventOps<'_>) {
        if gate.now < self.next_sweep {
            return;
        }
        self.next_sweep = gate.now + SWEEP_EVERY;
        for slot in self.flows.slots() {
            let Some(flow) = self.flows.get_mut(slot) else {
                continue;
            };
            let idle = gate.now.saturating_duration_since(flow.last);
            let expired = match &flow.kind {
                Kind::Udp(_) | Kind::Ping(_) => idle >= DATAGRAM_IDLE,
                Kind::Tcp(t) => match &t.state {
                    flows::TcpState::Connecting { seg, .. } if idle >= CONNECT_TIMEOUT => {
                        Counters::add(&gate.counters.flows_failed, 1);
                        let rst = gate.link.tcp_reset(seg);
                        gate.send(rst);
                        true
                    }
                    _ => false,
                },
            };
            if expired {
                self.close(slot, gate, ops);
            }
        }
    }

    /// Resets every flow: TCP flows get a RST to the guest, every host socket is closed (TCP with
    /// a reset). Returns what was open.
    pub(crate) fn cut(&mut self, gate: &mut Gate, ops: &mut EventOps<'_>) -> Vec<FlowInfo> {
        let open = self.flows(gate.now);
        for slot in self.flows.slots() {
            self.reset(slot, gate);
        }
        // Let smoltcp send its RSTs, then drop every socket.
        self.pump(gate, ops);
        for slot in self.flows.slots() {
            self.close(slot, gate, ops);
        }
        open
    }

    /// Resets the flow in `slot` (it is closed on the next [`serve`](Self::serve)).
    fn reset(&mut self, slot: usize, gate: &mut Gate) {
        let Some(flow) = self.flows.get_mut(slot) else {
            return;
        };
        if let Kind::Tcp(t) = &mut flow.kind {
            host::reset_on_close(&t.stream);
            match &t.state {
                flows::TcpState::Open(handle) => {
                    self.sockets
                        .get_mut::<smoltcp::socket::tcp::Socket>(*handle)
                        .abort();
                }
                flows::TcpState::Connecting { seg, .. } => {
                    let rst = gate.link.tcp_reset(seg);
                    gate.send(rst);
                }
            }
        }
        tcp::mark_dead(flow);
    }

    /// Judges every flow again under the current policy; resets those it now denies.
    pub(crate) fn rejudge(&mut self, gate: &mut Gate, ops: &mut EventOps<'_>) {
        for slot in self.flows.slots() {
            let Some(flow) = self.flows.get_mut(slot) else {
                continue;
            };
            let v = gate
                .policy
                .judge(&flow.target, gate.gateway(), &gate.pins, gate.now);
            if v.allowed() {
                flow.rule = gate.policy.describe(v.rule);
                continue;
            }
            let target = flow.target.clone();
            gate.denied(&target, v.rule);
            self.reset(slot, gate);
        }
        self.pump(gate, ops);
    }

    pub(crate) fn flows(&self, now: Instant) -> Vec<FlowInfo> {
        self.flows.iter().map(|f| f.info(now)).collect()
    }
}

/// Where a flow to `dst` goes on the host: the gateway means the host's loopback.
fn host_target(gate: &Gate, dst: SocketAddrV4) -> SocketAddrV4 {
    if *dst.ip() == gate.addr.gateway {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, dst.port())
    } else {
        dst
    }
}
