//! The flow table of the user-space stack: a fixed number of slots (the zone's flow limit), each
//! flow found by its key and by the event-manager data of its host socket.

use crate::control::FlowInfo;
use crate::policy::{FlowTarget, Protocol};
use smoltcp::iface::SocketHandle;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use crate::packet::TcpSegment;

/// What identifies a flow from the guest's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub(crate) protocol: Protocol,
    /// The guest's port (ICMP: the echo id).
    pub(crate) guest_port: u16,
    /// Where the guest sent it (ICMP: port 0).
    pub(crate) dst: SocketAddrV4,
}

/// A TCP flow: connecting on the host, then proxied between a smoltcp socket and the host.
pub(crate) struct TcpFlow {
    pub(crate) stream: TcpStream,
    pub(crate) state: TcpState,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// The host side was told the guest will send no more.
    pub(crate) write_shut: bool,
}

pub(crate) enum TcpState {
    /// The host connect is under way; the guest's SYN waits for its result.
    Connecting { syn: Vec<u8>, seg: TcpSegment },
    /// Connected: the smoltcp socket stands for the host in the guest's connection.
    Open(SocketHandle),
}

/// A UDP flow through a connected host socket.
pub(crate) struct UdpFlow {
    pub(crate) socket: UdpSocket,
    pub(crate) readable: bool,
}

/// An ICMP echo flow through a ping socket.
pub(crate) struct PingFlow {
    pub(crate) socket: UdpSocket,
    pub(crate) guest_id: u16,
    pub(crate) readable: bool,
}

pub(crate) enum Kind {
    Tcp(TcpFlow),
    Udp(UdpFlow),
    Ping(PingFlow),
}

/// One flow.
pub(crate) struct Flow {
    pub(crate) key: FlowKey,
    pub(crate) target: FlowTarget,
    pub(crate) rule: String,
    pub(crate) opened: Instant,
    pub(crate) last: Instant,
    pub(crate) bytes_out: u64,
    pub(crate) bytes_in: u64,
    /// Ending: closed on its next service (TCP: once the guest got its RST).
    pub(crate) dead: bool,
    pub(crate) kind: Kind,
}

impl Flow {
    /// A flow `verdict` allowed: the target named by its DNS pin, the deciding rule described.
    pub(crate) fn new(
        gate: &super::Gate,
        key: FlowKey,
        target: FlowTarget,
        verdict: crate::policy::Verdict,
        kind: Kind,
    ) -> Flow {
        Flow {
            key,
            target: FlowTarget {
                name: gate.pinned_name(verdict, target.addr),
                ..target
            },
            rule: gate.policy.describe(verdict.rule),
            opened: gate.now,
            last: gate.now,
            bytes_out: 0,
            bytes_in: 0,
            dead: false,
            kind,
        }
    }

    /// The host socket.
    pub(crate) fn fd(&self) -> RawFd {
        match &self.kind {
            Kind::Tcp(t) => t.stream.as_raw_fd(),
            Kind::Udp(u) => u.socket.as_raw_fd(),
            Kind::Ping(p) => p.socket.as_raw_fd(),
        }
    }

    pub(crate) fn info(&self, now: Instant) -> FlowInfo {
        FlowInfo {
            protocol: self.key.protocol,
            guest_port: self.key.guest_port,
            destination: SocketAddr::V4(self.key.dst),
            name: self.target.name.clone(),
            rule: self.rule.clone(),
            age: now.saturating_duration_since(self.opened),
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
        }
    }
}

/// The table.
pub(crate) struct Flows {
    slots: Vec<Option<Flow>>,
    free: Vec<usize>,
    by_key: HashMap<FlowKey, usize>,
}

impl Flows {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            slots: (0..max).map(|_| None).collect(),
            free: (0..max).rev().collect(),
            by_key: HashMap::new(),
        }
    }

    /// The most flows the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The slot of the flow with `key`.
    pub(crate) fn find(&self, key: &FlowKey) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// Stores `flow`; None when the table is full.
    pub(crate) fn insert(&mut self, flow: Flow) -> Option<usize> {
        let slot = self.free.pop()?;
        self.by_key.insert(flow.key, slot);
        self.slots[slot] = Some(flow);
        Some(slot)
    }

    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<&mut Flow> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub(crate) fn remove(&mut self, slot: usize) -> Option<Flow> {
        let flow = self.slots.get_mut(slot)?.take()?;
        self.by_key.remove(&flow.key);
        self.free.push(slot);
        Some(flow)
    }

    /// The slots in use.
    pub(crate) fn slots(&self) -> Vec<usize> {
        self.by_key.values().copied().collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.slots.iter().flatten()
    }
}

/// The guest's side of a flow, for answers built without smoltcp.
pub(crate) fn guest_addr(guest: Ipv4Addr, key: &FlowKey) -> SocketAddrV4 {
    SocketAddrV4::new(guest, key.guest_port)
}
