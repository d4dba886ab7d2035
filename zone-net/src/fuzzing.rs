//! Entry points for the fuzz targets in `fuzz/` (not a stable API).
//!
//! The policy here opens no flow (it names only `*.test`, and nothing is ever pinned since no
//! upstream resolver answers), so a fuzzer never makes a host connection: every frame exercises
//! parsing, the policy, DNS, the flow table and answer crafting only.

use crate::backend::user::UserStack;
use crate::backend::{Backend, Gate};
use crate::config::Addressing;
use crate::denials::Denials;
use crate::device::queues::{self, RxMode};
use crate::dns::Dns;
use crate::metrics::Counters;
use crate::packet::{self, Frame, Link};
use crate::policy::NetPolicy;
use crate::policy::pins::Pins;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zone_core::device::DeviceHost;

struct Idle;

impl MutEventSubscriber for Idle {
    fn process(&mut self, _: Events, _: &mut EventOps<'_>) {}
    fn init(&mut self, _: &mut EventOps<'_>) {}
}

/// The guest's link in the fuzz targets.
const GUEST: [u8; 4] = [10, 0, 2, 15];
const GATEWAY: [u8; 4] = [10, 0, 2, 2];

fn gate() -> Gate {
    let now = Instant::now();
    let addr = Addressing {
        guest: Ipv4Addr::from(GUEST),
        prefix: 24,
        gateway: Ipv4Addr::from(GATEWAY),
        guest_mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        gateway_mac: [0x52, 0x54, 0, 0x12, 0x34, 0xa9],
        mtu: crate::config::DEFAULT_MTU,
    };
    Gate {
        policy: Arc::new(NetPolicy::new().allow("*.test").deny("metadata")),
        generation: 1,
        pins: Pins::default(),
        counters: Arc::new(Counters::default()),
        denials: Denials::new(DeviceHost::detached("fuzz", "net0"), "fuzz", "net0", now),
        dns: Dns::new(7),
        upstream: None,
        link: Link {
            guest: addr.guest_mac,
            gateway: addr.gateway_mac,
        },
        addr,
        to_guest: VecDeque::new(),
        now,
        cut: false,
    }
}

struct Rig {
    gate: Gate,
    backend: Backend,
    events: EventManager<Idle>,
    id: event_manager::SubscriberId,
}

fn rig() -> Rig {
    let gate = gate();
    let backend = Backend::User(Box::new(UserStack::new(&gate, 16, 4096)));
    let mut events = EventManager::new().expect("epoll");
    let id = events.add_subscriber(Idle);
    Rig {
        gate,
        backend,
        events,
        id,
    }
}

/// Feeds frames decoded from `data` (each a 2-byte little-endian length, then the frame) to a
/// user-space stack as if the guest sent them. Every frame the device sends back must parse.
pub fn frames(data: &[u8]) {
    thread_local! {
        static RIG: RefCell<Rig> = RefCell::new(rig());
    }
    RIG.with(|r| {
        let r = &mut *r.borrow_mut();
        let mut ops = r.events.event_ops(r.id).expect("ops");
        r.gate.now = Instant::now();
        let mut rest = data;
        while let [a, b, tail @ ..] = rest {
            let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
            let (frame, next) = tail.split_at(len);
            r.backend.guest_frame(&mut r.gate, frame, &mut ops);
            rest = next;
        }
        r.backend.pump(&mut r.gate, &mut ops);
        r.backend.sweep(&mut r.gate, &mut ops);
        for out in r.gate.to_guest.drain(..) {
            assert_ne!(
                packet::parse(&out),
                Frame::Malformed,
                "the device sent junk"
            );
        }
        assert!(
            r.backend.flows(r.gate.now).is_empty(),
            "the policy opens no flow"
        );
    });
}

/// An upstream DNS answer from `data` to a pending query (its id is set to the query's).
pub fn dns_answer(data: &[u8]) {
    let mut g = gate();
    let query = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
    ];
    let guest = std::net::SocketAddrV4::new(Ipv4Addr::from(GUEST), 5000);
    let server = std::net::SocketAddrV4::new(Ipv4Addr::from(GATEWAY), 53);
    let mut answer = data.to_vec();
    let now = Instant::now();
    let mut cx = crate::dns::DnsCx {
        policy: &g.policy,
        gateway: Some(Ipv4Addr::from(GATEWAY).into()),
        pins: &mut g.pins,
        counters: &g.counters,
        denials: &mut g.denials,
        now,
    };
    if let crate::dns::Asked::Forward(up) = g.dns.query(&query, guest, server, &mut cx)
        && answer.len() >= 2
    {
        answer[..2].copy_from_slice(&up[..2]);
    }
    if let Some(reply) = g.dns.answer(&answer, &mut cx) {
        assert_eq!((reply.guest, reply.server), (guest, server));
    }
}

/// Guest memory of the queue target: a 16-entry TX queue at 0, a 16-entry RX queue at 0x1000,
/// buffers from 0x2000.
const QUEUE_MEMORY: u64 = 0x2_0000;
const TX_RING: u64 = 0;
const RX_RING: u64 = 0x1000;
const BUFFERS: u64 = 0x2000;
const QUEUE_SIZE: u16 = 16;

/// Lays out a split queue at `base` with descriptors decoded from `table` (6 bytes each: 2 of
/// address offset into the buffers, 2 of length, flags, next) and `avail` heads.
fn queue(mem: &GuestMemoryMmap, base: u64, table: &[u8], avail: &[u8]) -> Queue {
    for (i, d) in table
        .chunks_exact(6)
        .take(usize::from(QUEUE_SIZE))
        .enumerate()
    {
        let addr = BUFFERS + u64::from(u16::from_le_bytes([d[0], d[1]]));
        let len = u32::from(u16::from_le_bytes([d[2], d[3]]));
        let flags = u16::from(d[4] & 0x3);
        let next = u16::from(d[5] % 20);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(base + 16 * i as u64));
    }
    let heads: Vec<u16> = avail.iter().map(|h| u16::from(h % 20)).collect();
    let mut ring = vec![0u8; 4 + 2 * heads.len()];
    ring[2..4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
    for (i, h) in heads.iter().enumerate() {
        ring[4 + 2 * i..6 + 2 * i].copy_from_slice(&h.to_le_bytes());
    }
    let _ = mem.write_slice(&ring, GuestAddress(base + 0x100));
    let mut q = Queue::new(QUEUE_SIZE).expect("queue");
    q.set_size(QUEUE_SIZE);
    q.set_ready(true);
    let _ = q.try_set_desc_table_address(GuestAddress(base));
    let _ = q.try_set_avail_ring_address(GuestAddress(base + 0x100));
    let _ = q.try_set_used_ring_address(GuestAddress(base + 0x200));
    q
}

/// TX and RX descriptor chains decoded from `data`: byte 0 options (bit 0 mergeable RX, bit 1
/// complete checksums), bytes 1-2 the counts of TX and RX descriptors, then the TX table, TX
/// heads (4), RX table, RX heads (4), then buffer bytes. Every TX frame read goes through the
/// stack; every frame it answers is written into the RX chains.
pub fn queues(data: &[u8]) {
    let [options, ntx, nrx, rest @ ..] = data else {
        return;
    };
    let take = |rest: &mut &[u8], n: usize| {
        let (a, b) = rest.split_at(n.min(rest.len()));
        *rest = b;
        a.to_vec()
    };
    let mut rest = rest;
    let tx_table = take(&mut rest, 6 * usize::from(ntx % 17));
    let tx_heads = take(&mut rest, 4);
    let rx_table = take(&mut rest, 6 * usize::from(nrx % 17));
    let rx_heads = take(&mut rest, 4);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), QUEUE_MEMORY as usize)])
        .expect("memory");
    let room = (QUEUE_MEMORY - BUFFERS) as usize;
    let _ = mem.write_slice(&rest[..rest.len().min(room)], GuestAddress(BUFFERS));
    let mut tx = queue(&mem, TX_RING, &tx_table, &tx_heads);
    let mut rx = queue(&mem, RX_RING, &rx_table, &rx_heads);
    let mut r = rig();
    let mut ops = r.events.event_ops(r.id).expect("ops");
    let mut buf = Vec::new();
    let complete = options & 2 != 0;
    while let Some(chain) = tx.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        if queues::read_tx(&mem, chain, 65534, &mut buf, complete).is_ok() {
            r.backend.guest_frame(&mut r.gate, &buf, &mut ops);
        }
        let _ = tx.add_used(&mem, head, 0);
    }
    r.backend.pump(&mut r.gate, &mut ops);
    let mode = RxMode {
        mergeable: options & 1 != 0,
        data_valid: true,
    };
    while let Some(frame) = r.gate.to_guest.pop_front() {
        if queues::write_rx(&mut rx, &mem, &frame, mode) == queues::RxOutcome::NoBuffers {
            break;
        }
    }
}

/// Seed inputs for the fuzz targets, built from the frames and chains a Linux guest sends:
/// `(target, name, bytes)`. `cargo test --test fuzz_seeds -- --ignored` writes them to
/// `fuzz/seeds/<target>/`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use etherparse::{PacketBuilder, TcpOptionElement};
    let guest_mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let gw_mac = [0x52, 0x54, 0, 0x12, 0x34, 0xa9];
    let eth = || PacketBuilder::ethernet2(guest_mac, gw_mac);
    let mut frames: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&guest_mac);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&guest_mac);
    arp.extend_from_slice(&GUEST);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&GATEWAY);
    frames.push(("arp", arp));
    let mut syn = Vec::new();
    let _ = eth()
        .ipv4(GUEST, [93, 184, 216, 34], 64)
        .tcp(40000, 443, 0x1000, 64240)
        .syn()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(65480),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
            TcpOptionElement::Timestamp(1, 0),
            TcpOptionElement::WindowScale(7),
        ])
        .map(|b| b.write(&mut syn, &[]));
    frames.push(("syn", syn));
    let mut data = Vec::new();
    let _ = eth()
        .ipv4(GUEST, GATEWAY, 64)
        .tcp(40001, 8080, 0x2000, 502)
        .ack(0x9000)
        .psh()
        .write(&mut data, b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n");
    frames.push(("data", data));
    let mut rst = Vec::new();
    let _ = eth()
        .ipv4(GUEST, GATEWAY, 64)
        .tcp(40001, 8080, 0x2000, 0)
        .rst()
        .write(&mut rst, &[]);
    frames.push(("rst", rst));
    let query = [
        0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a', b'p', b'i', 4, b't', b'e', b's', b't',
        0, 0, 1, 0, 1,
    ];
    let mut dns = Vec::new();
    let _ = eth()
        .ipv4(GUEST, GATEWAY, 64)
        .udp(33333, 53)
        .write(&mut dns, &query);
    frames.push(("dns", dns));
    let mut denied = Vec::new();
    let mut q2 = query;
    q2[13..16].copy_from_slice(b"bad");
    q2[17..21].copy_from_slice(b"evil");
    let _ = eth()
        .ipv4(GUEST, GATEWAY, 64)
        .udp(33334, 53)
        .write(&mut denied, &q2);
    frames.push(("dns-denied", denied));
    let mut udp = Vec::new();
    let _ = eth()
        .ipv4(GUEST, [203, 0, 113, 5], 64)
        .udp(5000, 123)
        .write(&mut udp, &[0x23; 48]);
    frames.push(("udp", udp));
    let mut ping = Vec::new();
    let _ = eth()
        .ipv4(GUEST, [1, 1, 1, 1], 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut ping, &[0x55; 56]);
    frames.push(("ping", ping));
    let mut ping_gw = Vec::new();
    let _ = eth()
        .ipv4(GUEST, GATEWAY, 64)
        .icmpv4_echo_request(8, 1)
        .write(&mut ping_gw, &[0x55; 56]);
    frames.push(("ping-gateway", ping_gw));
    let mut v6 = Vec::new();
    let _ = eth()
        .ipv6(
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xff; 16],
            255,
        )
        .udp(546, 547)
        .write(&mut v6, b"dhcpv6");
    frames.push(("ipv6", v6));
    let framed = |f: &[u8]| {
        let mut v = (f.len() as u16).to_le_bytes().to_vec();
        v.extend_from_slice(f);
        v
    };
    let mut seeds: Vec<(&'static str, String, Vec<u8>)> = frames
        .iter()
        .map(|(name, f)| ("net_frames", name.to_string(), framed(f)))
        .collect();
    let all: Vec<u8> = frames.iter().flat_map(|(_, f)| framed(f)).collect();
    seeds.push(("net_frames", "all".into(), all));
    // net_queues: a TX chain (header, frame in a second descriptor) and four RX buffers.
    for (name, frame) in frames.iter().take(5) {
        let mut q = vec![0b01, 2, 4];
        let hdr_at: u16 = 0;
        let frame_at: u16 = 0x100;
        q.extend_from_slice(&hdr_at.to_le_bytes());
        q.extend_from_slice(&12u16.to_le_bytes());
        q.extend_from_slice(&[1, 1]);
        q.extend_from_slice(&frame_at.to_le_bytes());
        q.extend_from_slice(&(frame.len() as u16).to_le_bytes());
        q.extend_from_slice(&[0, 0]);
        q.extend_from_slice(&[0, 0, 0, 0]);
        for i in 0..4u16 {
            q.extend_from_slice(&(0x4000 + i * 0x1000).to_le_bytes());
            q.extend_from_slice(&4096u16.to_le_bytes());
            q.extend_from_slice(&[2, 0]);
        }
        q.extend_from_slice(&[0, 1, 2, 3]);
        let mut mem = vec![0u8; 0x100];
        mem.extend_from_slice(frame);
        q.extend_from_slice(&mem);
        seeds.push(("net_queues", name.to_string(), q));
    }
    // dns_answer: answers for x.test (public, private, metadata, CNAME then A).
    let answer = |records: &[(u16, &[u8])]| {
        let mut a = vec![0, 0, 0x81, 0x80, 0, 1, 0, records.len() as u8, 0, 0, 0, 0];
        a.extend_from_slice(&[1, b'x', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1]);
        for (rtype, data) in records {
            a.extend_from_slice(&[0xc0, 12]);
            a.extend_from_slice(&rtype.to_be_bytes());
            a.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            a.extend_from_slice(&(data.len() as u16).to_be_bytes());
            a.extend_from_slice(data);
        }
        a
    };
    seeds.push((
        "dns_answer",
        "public".into(),
        answer(&[(1, &[93, 184, 216, 34])]),
    ));
    seeds.push((
        "dns_answer",
        "rebinding".into(),
        answer(&[
            (1, &[10, 0, 0, 5]),
            (1, &[169, 254, 169, 254]),
            (1, &[1, 2, 3, 4]),
        ]),
    ));
    seeds.push((
        "dns_answer",
        "cname".into(),
        answer(&[
            (5, &[4, b'e', b'd', b'g', b'e', 0xc0, 14]),
            (
                28,
                &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ),
        ]),
    ));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_through_their_targets() {
        for (target, name, bytes) in seeds() {
            match target {
                "net_frames" => frames(&bytes),
                "net_queues" => queues(&bytes),
                "dns_answer" => dns_answer(&bytes),
                other => panic!("unknown target {other} ({name})"),
            }
        }
    }
}
