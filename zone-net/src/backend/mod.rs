//! The host side of a zone's network. What every backend shares is the [`Gate`]: the policy and
//! its DNS pins, DNS itself, the counters and denial events, and the queue of frames toward the
//! guest. A backend carries the flows the gate allowed: [`user`] in the VMM's own process
//! (smoltcp and host sockets), [`tap`] through a TAP device with connection tracking.

pub(crate) mod tap;
pub(crate) mod user;

use crate::config::Addressing;
use crate::control::FlowInfo;
use crate::denials::{Denials, Denied};
use crate::dns::{Asked, Dns, DnsCx, MAX_MESSAGE, Reply};
use crate::metrics::{Counters, DropReason};
use crate::packet::Link;
use crate::policy::pins::Pins;
use crate::policy::{FlowTarget, NetPolicy, Verdict};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Instant;
use zone_core::device::{DeviceHost, EventOps, EventSet};

/// Frames waiting for the guest's RX buffers; beyond it the backends hold back (TCP) or drop.
pub(crate) const TO_GUEST_FRAMES: usize = 1024;

/// Event-manager data of the DNS upstream socket.
pub(crate) const TOKEN_DNS: u32 = 4;
/// First event-manager data a backend may use for its own fds.
pub(crate) const TOKEN_BACKEND: u32 = 16;

/// The upstream resolver and the socket queries go to it through.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) socket: UdpSocket,
}

impl Upstream {
    pub(crate) fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let any: SocketAddr = match addr {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().map_err(std::io::Error::other)?,
            SocketAddr::V6(_) => "[::]:0".parse().map_err(std::io::Error::other)?,
        };
        let socket = UdpSocket::bind(any)?;
        socket.set_nonblocking(true)?;
        Ok(Self { addr, socket })
    }
}

/// What every backend shares.
pub(crate) struct Gate {
    pub(crate) policy: Arc<NetPolicy>,
    pub(crate) generation: u64,
    pub(crate) pins: Pins,
    pub(crate) counters: Arc<Counters>,
    pub(crate) denials: Denials<DeviceHost>,
    pub(crate) dns: Dns,
    pub(crate) upstream: Option<Upstream>,
    pub(crate) link: Link,
    pub(crate) addr: Addressing,
    pub(crate) to_guest: VecDeque<Vec<u8>>,
    pub(crate) now: Instant,
    /// Cut: nothing goes either way.
    pub(crate) cut: bool,
}

impl Gate {
    /// The gateway (the host) as a destination address.
    pub(crate) fn gateway(&self) -> Option<IpAddr> {
        Some(IpAddr::V4(self.addr.gateway))
    }

    /// Judges a new flow; a denial is counted and reported.
    pub(crate) fn judge(&mut self, target: &FlowTarget) -> Verdict {
        let v = self
            .policy
            .judge(target, self.gateway(), &self.pins, self.now);
        if !v.allowed() {
            self.denied(target, v.rule);
        }
        v
    }

    /// Counts and reports a flow the policy denied under `rule`.
    pub(crate) fn denied(&mut self, target: &FlowTarget, rule: Option<usize>) {
        Counters::add(&self.counters.flows_refused, 1);
        self.counters.dropped(DropReason::Policy);
        let destination = target.addr.to_string();
        self.denials.deny(
            Denied {
                rule: self.policy.describe(rule),
                protocol: target.protocol.name(),
                destination: &destination,
                port: target.port,
            },
            self.now,
        );
    }

    /// Counts and reports a flow refused because the flow table is full.
    pub(crate) fn flow_limit(&mut self, target: &FlowTarget, max: usize) {
        self.counters.dropped(DropReason::FlowLimit);
        let destination = target.addr.to_string();
        self.denials.deny(
            Denied {
                rule: format!("flow limit ({max} open flows)"),
                protocol: target.protocol.name(),
                destination: &destination,
                port: target.port,
            },
            self.now,
        );
    }

    /// The name a flow allowed by `verdict` was opened for, if a name rule allowed it.
    pub(crate) fn pinned_name(&self, verdict: Verdict, addr: IpAddr) -> Option<String> {
        self.policy
            .pinned_name(verdict, addr, &self.pins, self.now)
            .map(str::to_string)
    }

    /// Room for frames toward the guest.
    pub(crate) fn room(&self) -> usize {
        TO_GUEST_FRAMES.saturating_sub(self.to_guest.len())
    }

    /// Queues a frame for the guest; false (and counted) when there is no room or the link is cut.
    pub(crate) fn send(&mut self, frame: Vec<u8>) -> bool {
        if self.cut {
            self.counters.dropped(DropReason::Cut);
            return false;
        }
        if self.to_guest.len() >= TO_GUEST_FRAMES {
            self.counters.dropped(DropReason::Backlog);
            return false;
        }
        self.to_guest.push_back(frame);
        true
    }

    fn dns_cx(&mut self) -> (DnsCx<'_, DeviceHost>, &mut Dns) {
        let gateway = self.gateway();
        (
            DnsCx {
                policy: &self.policy,
                gateway,
                pins: &mut self.pins,
                counters: &self.counters,
                denials: &mut self.denials,
                now: self.now,
            },
            &mut self.dns,
        )
    }

    /// A DNS query from `guest` to `server`: answered, forwarded or dropped.
    pub(crate) fn dns_query(&mut self, payload: &[u8], guest: SocketAddrV4, server: SocketAddrV4) {
        let asked = {
            let (mut cx, dns) = self.dns_cx();
            dns.query(payload, guest, server, &mut cx)
        };
        match asked {
            Asked::Answer(answer) => {
                let frame = self.link.udp(server, guest, &answer);
                self.send(frame);
            }
            Asked::Forward(query) => {
                let sent = self
                    .upstream
                    .as_ref()
                    .is_some_and(|u| u.socket.send_to(&query, u.addr).is_ok());
                if !sent {
                    // No resolver, or it cannot be reached: fail now, not after a timeout.
                    let replies = self.dns.fail_all(&self.counters);
                    self.reply(replies);
                }
            }
            Asked::Drop => self.counters.dropped(DropReason::Malformed),
        }
    }

    /// The upstream socket is readable: takes every answer.
    pub(crate) fn dns_ready(&mut self) {
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            let Some(up) = &self.upstream else { return };
            let (n, from) = match up.socket.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            if !crate::dns::from_upstream(from, up.addr) {
                continue;
            }
            let reply = {
                let (mut cx, dns) = self.dns_cx();
                dns.answer(&buf[..n], &mut cx)
            };
            if let Some(reply) = reply {
                self.reply(vec![reply]);
            }
        }
    }

    /// Fails overdue DNS queries.
    pub(crate) fn dns_expire(&mut self) {
        let replies = self.dns.expire(self.now, &self.counters);
        self.reply(replies);
    }

    fn reply(&mut self, replies: Vec<Reply>) {
        for r in replies {
            let frame = self.link.udp(r.server, r.guest, &r.message);
            self.send(frame);
        }
    }

    /// Registers the upstream socket (edge-triggered).
    pub(crate) fn register(&self, ops: &mut EventOps<'_>) {
        if let Some(up) = &self.upstream {
            let _ = ops.add(zone_core::device::Events::with_data(
                &up.socket,
                TOKEN_DNS,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ));
        }
    }
}

/// The backends.
pub(crate) enum Backend {
    User(Box<user::UserStack>),
    Tap(tap::TapLink),
}

impl Backend {
    /// Registers the backend's fds.
    pub(crate) fn init(&mut self, ops: &mut EventOps<'_>) {
        match self {
            Backend::User(_) => {}
            Backend::Tap(t) => t.init(ops),
        }
    }

    /// A frame from the guest (already counted; the link is not cut).
    pub(crate) fn guest_frame(&mut self, gate: &mut Gate, frame: &[u8], ops: &mut EventOps<'_>) {
        match self {
            Backend::User(u) => u.guest_frame(gate, frame, ops),
            Backend::Tap(t) => t.guest_frame(gate, frame),
        }
    }

    /// One of the backend's fds is ready (`events` as epoll reported them).
    pub(crate) fn ready(&mut self, gate: &mut Gate, token: u32, events: EventSet) {
        match self {
            Backend::User(u) => u.ready(token, events),
            Backend::Tap(t) => t.ready(gate),
        }
    }

    /// Moves data: runs the stack, serves the flows, fills `gate.to_guest`.
    pub(crate) fn pump(&mut self, gate: &mut Gate, ops: &mut EventOps<'_>) {
        match self {
            Backend::User(u) => u.pump(gate, ops),
            Backend::Tap(t) => t.pump(gate),
        }
    }

    /// When the backend next needs to run (stack timers, flow timeouts).
    pub(crate) fn next_wake(&mut self, gate: &Gate) -> Option<Instant> {
        match self {
            Backend::User(u) => u.next_wake(gate),
            Backend::Tap(t) => t.next_wake(),
        }
    }

    /// Ends idle and overdue flows.
    pub(crate) fn sweep(&mut self, gate: &mut Gate, ops: &mut EventOps<'_>) {
        match self {
            Backend::User(u) => u.sweep(gate, ops),
            Backend::Tap(t) => t.sweep(gate),
        }
    }

    /// Resets every flow (RST to the guest, host sockets closed) and returns what was open.
    pub(crate) fn cut(&mut self, gate: &mut Gate, ops: &mut EventOps<'_>) -> Vec<FlowInfo> {
        match self {
            Backend::User(u) => u.cut(gate, ops),
            Backend::Tap(t) => t.cut(gate),
        }
    }

    /// Judges every open flow again (the policy changed); resets those now denied.
    pub(crate) fn rejudge(&mut self, gate: &mut Gate, ops: &mut EventOps<'_>) {
        match self {
            Backend::User(u) => u.rejudge(gate, ops),
            Backend::Tap(t) => t.rejudge(gate),
        }
    }

    /// The open flows.
    pub(crate) fn flows(&self, now: Instant) -> Vec<FlowInfo> {
        match self {
            Backend::User(u) => u.flows(now),
            Backend::Tap(t) => t.flows(now),
        }
    }

    /// Whether the backend terminates the guest's link: it builds every frame the guest receives
    /// (so they may carry VIRTIO_NET_HDR_F_DATA_VALID) and is the gateway. A TAP's frames come
    /// from elsewhere.
    pub(crate) fn terminates_frames(&self) -> bool {
        matches!(self, Backend::User(_))
    }
}
