//! The TAP backend: the guest's frames go to a host TAP device, after the same policy as the
//! user-space backend, enforced here frame by frame with connection tracking. A flow's first
//! packet is judged (TCP: the SYN; UDP and ICMP echo: the first datagram); allowed flows are
//! tracked and their packets pass both ways; everything else is dropped, in both directions.
//! ARP passes. DNS from the guest (UDP port 53, to any server) is answered by the [`Gate`], so
//! name rules and rebinding protection mean the same as on the user-space backend.

mod device;
mod track;

use super::{Gate, TOKEN_BACKEND};
use crate::control::FlowInfo;
use crate::metrics::{Counters, DropReason};
use crate::packet::{self, ETH_HEADER, Frame, TcpSegment};
use crate::policy::{FlowTarget, Protocol};
use etherparse::PacketBuilder;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddrV4};
use std::time::{Duration, Instant};
use track::{Conn, ConnKey, Track};
use zone_core::device::{EventOps, EventSet, Events};

pub(crate) use device::{fix_for, open};

/// How often expired flows are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A TAP link with its tracked flows.
pub(crate) struct TapLink {
    file: File,
    track: Track,
    readable: bool,
    /// The host end's MAC, learned from the guest's frames to it (for resets toward it).
    peer_mac: Option<[u8; 6]>,
    next_sweep: Instant,
    buf: Vec<u8>,
}

impl TapLink {
    pub(crate) fn new(file: File, max_flows: usize, mtu: u16, now: Instant) -> Self {
        Self {
            file,
            track: Track::new(max_flows),
            readable: true,
            peer_mac: None,
            next_sweep: now + SWEEP_EVERY,
            buf: vec![0u8; usize::from(mtu) + ETH_HEADER],
        }
    }

    pub(crate) fn init(&mut self, ops: &mut EventOps<'_>) {
        let _ = ops.add(Events::with_data(
            &self.file,
            TOKEN_BACKEND,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        ));
    }

    fn write(&mut self, gate: &mut Gate, frame: &[u8]) {
        if (&self.file).write(frame).is_err() {
            gate.counters.dropped(DropReason::Backlog);
        }
    }

    /// A frame from the guest.
    pub(crate) fn guest_frame(&mut self, gate: &mut Gate, frame: &[u8]) {
        let parsed = packet::parse(frame);
        let ours = |ip: std::net::Ipv4Addr| ip == gate.addr.guest;
        match parsed {
            Frame::Arp => return self.write(gate, frame),
            Frame::Udp { src, dst, payload } if ours(*src.ip()) && dst.port() == 53 => {
                return gate.dns_query(payload, src, dst);
            }
            _ => {}
        }
        let (key, seg) = match parsed {
            Frame::Tcp(seg) if ours(*seg.src.ip()) => (tcp_key(&seg), Some(seg)),
            Frame::Udp { src, dst, .. } if ours(*src.ip()) => (
                ConnKey {
                    protocol: Protocol::Udp,
                    guest_port: src.port(),
                    remote: dst,
                },
                None,
            ),
            Frame::EchoRequest { src, dst, id, .. } if ours(src) => (
                ConnKey {
                    protocol: Protocol::Icmp,
                    guest_port: id,
                    remote: SocketAddrV4::new(dst, 0),
                },
                None,
            ),
            Frame::Malformed | Frame::Tcp(_) | Frame::Udp { .. } | Frame::EchoRequest { .. } => {
                return gate.counters.dropped(DropReason::Malformed);
            }
            _ => return gate.counters.dropped(DropReason::Unsupported),
        };
        self.peer_mac = frame.get(..6).and_then(|m| m.try_into().ok());
        if let Some(conn) = self.track.get_mut(&key) {
            conn.last = gate.now;
            conn.bytes_out += frame.len() as u64;
            if let Some(seg) = seg {
                follow_guest(conn, &seg, gate.now);
            }
            return self.write(gate, frame);
        }
        // No flow yet: only a flow's first packet may open one.
        if let Some(seg) = seg
            && !seg.is_open()
        {
            gate.counters.dropped(DropReason::NoFlow);
            if !seg.rst {
                let rst = gate.link.tcp_reset(&seg);
                gate.send(rst);
            }
            return;
        }
        let target = FlowTarget {
            protocol: key.protocol,
            addr: IpAddr::V4(*key.remote.ip()),
            port: (key.protocol != Protocol::Icmp).then_some(key.remote.port()),
            name: None,
        };
        let verdict = gate.judge(&target);
        let mut allowed = verdict.allowed();
        if allowed && self.track.len() >= self.track.capacity() {
            gate.flow_limit(&target, self.track.capacity());
            allowed = false;
        }
        if !allowed {
            match seg {
                Some(seg) => {
                    let rst = gate.link.tcp_reset(&seg);
                    gate.send(rst);
                }
                None => {
                    let answer = gate.link.prohibited(
                        *key.remote.ip(),
                        gate.addr.guest,
                        &frame[ETH_HEADER..],
                    );
                    gate.send(answer);
                }
            }
            return;
        }
        let name = gate.pinned_name(verdict, target.addr);
        let mut conn = Conn::new(
            FlowTarget { name, ..target },
            gate.policy.describe(verdict.rule),
            gate.now,
        );
        conn.bytes_out = frame.len() as u64;
        if let Some(seg) = seg {
            follow_guest(&mut conn, &seg, gate.now);
        }
        self.track.insert(key, conn);
        Counters::add(&gate.counters.flows_opened, 1);
        self.write(gate, frame);
    }

    pub(crate) fn ready(&mut self, _gate: &mut Gate) {
        self.readable = true;
    }

    /// Takes frames from the TAP while the guest has room: tracked flows' packets and ARP pass.
    pub(crate) fn pump(&mut self, gate: &mut Gate) {
        while self.readable && gate.room() > 0 && !gate.cut {
            let n = match (&self.file).read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(_) => {
                    self.readable = false;
                    break;
                }
            };
            let frame = &self.buf[..n];
            let to_guest = frame.get(..6) == Some(&gate.addr.guest_mac[..])
                || frame.first().is_some_and(|b| b & 1 == 1);
            let key = match packet::parse(frame) {
                Frame::Arp if to_guest => {
                    let f = frame.to_vec();
                    gate.send(f);
                    continue;
                }
                Frame::Tcp(seg) => Some((tcp_reply_key(&seg), Some(seg))),
                Frame::Udp { src, dst, .. } => Some((
                    ConnKey {
                        protocol: Protocol::Udp,
                        guest_port: dst.port(),
                        remote: src,
                    },
                    None,
                )),
                Frame::EchoReply { src, id, .. } => Some((
                    ConnKey {
                        protocol: Protocol::Icmp,
                        guest_port: id,
                        remote: SocketAddrV4::new(src, 0),
                    },
                    None,
                )),
                _ => None,
            };
            let conn = key
                .filter(|_| to_guest)
                .and_then(|(k, seg)| self.track.get_mut(&k).map(|c| (c, seg)));
            let Some((conn, seg)) = conn else {
                gate.counters.dropped(DropReason::NoFlow);
                continue;
            };
            conn.last = gate.now;
            conn.bytes_in += n as u64;
            if let Some(seg) = seg {
                conn.fin_in |= seg.fin;
                if seg.rst || (conn.fin_in && conn.fin_out) {
                    conn.closed.get_or_insert(gate.now);
                }
            }
            let f = frame.to_vec();
            gate.send(f);
        }
        gate.counters.flows_open.store(
            self.track.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub(crate) fn next_wake(&self) -> Option<Instant> {
        (self.track.len() > 0).then_some(self.next_sweep)
    }

    pub(crate) fn sweep(&mut self, gate: &mut Gate) {
        if gate.now >= self.next_sweep {
            self.next_sweep = gate.now + SWEEP_EVERY;
            self.track.sweep(gate.now);
        }
    }

    /// Resets every tracked TCP connection both ways and forgets every flow.
    pub(crate) fn cut(&mut self, gate: &mut Gate) -> Vec<FlowInfo> {
        let open = self.track.flows(gate.now);
        for (key, conn) in self.track.drain() {
            self.reset(gate, &key, &conn);
        }
        open
    }

    /// Judges every tracked flow again; resets and forgets those now denied.
    pub(crate) fn rejudge(&mut self, gate: &mut Gate) {
        for key in self.track.keys() {
            let Some(conn) = self.track.get_mut(&key) else {
                continue;
            };
            let v = gate
                .policy
                .judge(&conn.target, gate.gateway(), &gate.pins, gate.now);
            if v.allowed() {
                conn.rule = gate.policy.describe(v.rule);
                continue;
            }
            let target = conn.target.clone();
            gate.denied(&target, v.rule);
            if let Some(conn) = self.track.remove(&key) {
                self.reset(gate, &key, &conn);
            }
        }
    }

    /// Resets a TCP connection toward the guest and toward the remote end.
    fn reset(&mut self, gate: &mut Gate, key: &ConnKey, conn: &Conn) {
        if key.protocol != Protocol::Tcp || conn.closed.is_some() {
            return;
        }
        let guest = SocketAddrV4::new(gate.addr.guest, key.guest_port);
        let to_guest = gate.link.tcp_reset_at(key.remote, guest, conn.guest_ack);
        gate.send(to_guest);
        if let Some(peer) = self.peer_mac {
            let mut out = Vec::with_capacity(ETH_HEADER + 40);
            let built = PacketBuilder::ethernet2(gate.addr.guest_mac, peer)
                .ipv4(gate.addr.guest.octets(), key.remote.ip().octets(), 64)
                .tcp(key.guest_port, key.remote.port(), conn.guest_next, 0)
                .rst()
                .write(&mut out, &[]);
            if built.is_ok() {
                self.write(gate, &out);
            }
        }
    }

    pub(crate) fn flows(&self, now: Instant) -> Vec<FlowInfo> {
        self.track.flows(now)
    }
}

fn tcp_key(seg: &TcpSegment) -> ConnKey {
    ConnKey {
        protocol: Protocol::Tcp,
        guest_port: seg.src.port(),
        remote: seg.dst,
    }
}

/// The key of a segment from the remote end to the guest.
fn tcp_reply_key(seg: &TcpSegment) -> ConnKey {
    ConnKey {
        protocol: Protocol::Tcp,
        guest_port: seg.dst.port(),
        remote: seg.src,
    }
}

/// Follows the guest's side of a tracked TCP connection.
fn follow_guest(conn: &mut Conn, seg: &TcpSegment, now: Instant) {
    conn.guest_next = seg.seq.wrapping_add(seg.seq_len());
    if seg.ack_flag {
        conn.guest_ack = seg.ack;
    }
    conn.fin_out |= seg.fin;
    if seg.rst || (conn.fin_in && conn.fin_out) {
        conn.closed.get_or_insert(now);
    }
}
