//! Guest frames in (classified with etherparse, strictly: a frame that does not parse is
//! dropped) and frames to the guest out (built with etherparse's `PacketBuilder`, checksums
//! included).

use etherparse::{
    IcmpEchoHeader, Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
    icmpv4::DestUnreachableHeader,
};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Ethernet header length.
pub(crate) const ETH_HEADER: usize = 14;

/// A TCP segment from the guest, as the policy and backends see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcpSegment {
    pub(crate) src: SocketAddrV4,
    pub(crate) dst: SocketAddrV4,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    pub(crate) syn: bool,
    pub(crate) ack_flag: bool,
    pub(crate) fin: bool,
    pub(crate) rst: bool,
    pub(crate) payload_len: usize,
}

impl TcpSegment {
    /// A connection request: SYN without ACK.
    pub(crate) fn is_open(&self) -> bool {
        self.syn && !self.ack_flag && !self.rst
    }

    /// The sequence space the segment takes (payload, SYN, FIN).
    pub(crate) fn seq_len(&self) -> u32 {
        self.payload_len as u32 + u32::from(self.syn) + u32::from(self.fin)
    }
}

/// What a guest frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// ARP.
    Arp,
    /// TCP over IPv4.
    Tcp(TcpSegment),
    /// UDP over IPv4.
    Udp {
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &'a [u8],
    },
    /// ICMP echo request over IPv4.
    EchoRequest {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        id: u16,
        seq: u16,
        payload: &'a [u8],
    },
    /// ICMP echo reply over IPv4 (from a TAP peer).
    EchoReply {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        id: u16,
    },
    /// IPv4 that is none of the above (other protocols, fragments, other ICMP).
    OtherIpv4 { dst: Ipv4Addr },
    /// IPv6 (not offered to the guest).
    Ipv6,
    /// Another EtherType.
    Other,
    /// Does not parse.
    Malformed,
}

/// Classifies an Ethernet frame.
pub(crate) fn parse(frame: &[u8]) -> Frame<'_> {
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return Frame::Malformed;
    };
    let ip = match &p.net {
        Some(NetSlice::Arp(_)) => return Frame::Arp,
        Some(NetSlice::Ipv6(_)) => return Frame::Ipv6,
        Some(NetSlice::Ipv4(ip)) => ip,
        None => return Frame::Other,
    };
    let header = ip.header();
    let (src, dst) = (header.source_addr(), header.destination_addr());
    if ip.is_payload_fragmented() {
        return Frame::OtherIpv4 { dst };
    }
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => Frame::Tcp(TcpSegment {
            src: SocketAddrV4::new(src, t.source_port()),
            dst: SocketAddrV4::new(dst, t.destination_port()),
            seq: t.sequence_number(),
            ack: t.acknowledgment_number(),
            syn: t.syn(),
            ack_flag: t.ack(),
            fin: t.fin(),
            rst: t.rst(),
            payload_len: t.payload().len(),
        }),
        Some(TransportSlice::Udp(u)) => Frame::Udp {
            src: SocketAddrV4::new(src, u.source_port()),
            dst: SocketAddrV4::new(dst, u.destination_port()),
            payload: u.payload(),
        },
        Some(TransportSlice::Icmpv4(i)) => match i.icmp_type() {
            Icmpv4Type::EchoRequest(e) => Frame::EchoRequest {
                src,
                dst,
                id: e.id,
                seq: e.seq,
                payload: i.payload(),
            },
            Icmpv4Type::EchoReply(e) => Frame::EchoReply { src, dst, id: e.id },
            _ => Frame::OtherIpv4 { dst },
        },
        _ => Frame::OtherIpv4 { dst },
    }
}

/// The two MACs of the guest's link: the guest's and the gateway's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) guest: [u8; 6],
    pub(crate) gateway: [u8; 6],
}

impl Link {
    fn toward_guest(self) -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
        PacketBuilder::ethernet2(self.gateway, self.guest)
    }

    /// A RST (with ACK) from `from` answering the guest's segment `seg` to it.
    pub(crate) fn tcp_reset(&self, seg: &TcpSegment) -> Vec<u8> {
        let (seq, ack) = if seg.ack_flag {
            (seg.ack, seg.seq.wrapping_add(seg.seq_len()))
        } else {
            (0, seg.seq.wrapping_add(seg.seq_len()))
        };
        let mut out = Vec::with_capacity(ETH_HEADER + 40);
        let _ = self
            .toward_guest()
            .ipv4(seg.dst.ip().octets(), seg.src.ip().octets(), 64)
            .tcp(seg.dst.port(), seg.src.port(), seq, 0)
            .rst()
            .ack(ack)
            .write(&mut out, &[]);
        out
    }

    /// A RST from `from` to `to` at sequence `seq` (to end a flow the guest has open).
    pub(crate) fn tcp_reset_at(&self, from: SocketAddrV4, to: SocketAddrV4, seq: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(ETH_HEADER + 40);
        let _ = self
            .toward_guest()
            .ipv4(from.ip().octets(), to.ip().octets(), 64)
            .tcp(from.port(), to.port(), seq, 0)
            .rst()
            .write(&mut out, &[]);
        out
    }

    /// An unsolicited ARP reply telling the guest `gateway` is at the gateway's MAC: after a cut
    /// the guest's entry for it has failed, and this makes it usable again at once.
    pub(crate) fn arp_announce(&self, gateway: Ipv4Addr, guest: Ipv4Addr) -> Vec<u8> {
        let mut out = Vec::with_capacity(ETH_HEADER + 28);
        out.extend_from_slice(&self.guest);
        out.extend_from_slice(&self.gateway);
        out.extend_from_slice(&[0x08, 0x06]); // ARP
        out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]); // Ethernet, IPv4, reply
        out.extend_from_slice(&self.gateway);
        out.extend_from_slice(&gateway.octets());
        out.extend_from_slice(&self.guest);
        out.extend_from_slice(&guest.octets());
        out
    }

    /// A UDP datagram from `from` to `to`.
    pub(crate) fn udp(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ETH_HEADER + 28 + payload.len());
        let _ = self
            .toward_guest()
            .ipv4(from.ip().octets(), to.ip().octets(), 64)
            .udp(from.port(), to.port())
            .write(&mut out, payload);
        out
    }

    /// An ICMP echo reply from `from` to `to`.
    pub(crate) fn echo_reply(
        &self,
        from: Ipv4Addr,
        to: Ipv4Addr,
        echo: IcmpEchoHeader,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(ETH_HEADER + 28 + payload.len());
        let _ = self
            .toward_guest()
            .ipv4(from.octets(), to.octets(), 64)
            .icmpv4_echo_reply(echo.id, echo.seq)
            .write(&mut out, payload);
        out
    }

    /// An ICMP "destination unreachable, administratively prohibited" from `from` about the
    /// guest's IPv4 packet `packet` (the frame without its Ethernet header).
    pub(crate) fn prohibited(&self, from: Ipv4Addr, to: Ipv4Addr, packet: &[u8]) -> Vec<u8> {
        // The IP header and the first 8 bytes of its payload (RFC 792), at most 576 in all.
        let quoted = &packet[..packet.len().min(28 + 40)];
        let mut out = Vec::with_capacity(ETH_HEADER + 28 + quoted.len());
        let _ = self
            .toward_guest()
            .ipv4(from.octets(), to.octets(), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FilterProhibited,
            ))
            .write(&mut out, quoted);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    pub(crate) const GW_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

    pub(crate) fn link() -> Link {
        Link {
            guest: GUEST_MAC,
            gateway: GW_MAC,
        }
    }

    /// A frame the guest would send.
    pub(crate) fn guest_frame() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
        PacketBuilder::ethernet2(GUEST_MAC, GW_MAC)
    }

    pub(crate) fn syn(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
        let mut out = Vec::new();
        guest_frame()
            .ipv4(src.ip().octets(), dst.ip().octets(), 64)
            .tcp(src.port(), dst.port(), 1000, 65535)
            .syn()
            .write(&mut out, &[])
            .unwrap();
        out
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_what_the_guest_sends() {
        let (g, d) = (addr("10.0.2.15:40000"), addr("93.184.216.34:443"));
        let Frame::Tcp(seg) = parse(&syn(g, d)) else {
            panic!("not TCP")
        };
        assert!(seg.is_open() && seg.src == g && seg.dst == d && seg.seq == 1000);
        let mut udp = Vec::new();
        guest_frame()
            .ipv4([10, 0, 2, 15], [10, 0, 2, 2], 64)
            .udp(5353, 53)
            .write(&mut udp, b"query")
            .unwrap();
        assert!(matches!(
            parse(&udp),
            Frame::Udp { payload: b"query", dst, .. } if dst == addr("10.0.2.2:53")
        ));
        let mut ping = Vec::new();
        guest_frame()
            .ipv4([10, 0, 2, 15], [1, 1, 1, 1], 64)
            .icmpv4_echo_request(7, 9)
            .write(&mut ping, b"abc")
            .unwrap();
        assert!(matches!(
            parse(&ping),
            Frame::EchoRequest {
                id: 7,
                seq: 9,
                payload: b"abc",
                ..
            }
        ));
        assert_eq!(parse(&ping[..20]), Frame::Malformed);
        assert_eq!(parse(&[]), Frame::Malformed);
        let mut v6 = Vec::new();
        guest_frame()
            .ipv6([0; 16], [1; 16], 64)
            .udp(1, 2)
            .write(&mut v6, b"")
            .unwrap();
        assert_eq!(parse(&v6), Frame::Ipv6);
    }

    #[test]
    fn builds_valid_answers() {
        let (g, d) = (addr("10.0.2.15:40000"), addr("93.184.216.34:443"));
        let Frame::Tcp(seg) = parse(&syn(g, d)) else {
            panic!()
        };
        let rst = link().tcp_reset(&seg);
        let p = SlicedPacket::from_ethernet(&rst).unwrap();
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!()
        };
        assert!(t.rst() && t.ack());
        assert_eq!(t.acknowledgment_number(), 1001, "acknowledges the SYN");
        assert_eq!((t.source_port(), t.destination_port()), (443, 40000));
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        let checksum = t.calc_checksum_ipv4(ip.header().source(), ip.header().destination());
        assert_eq!(checksum.unwrap(), t.checksum());
        let reply = link().udp(addr("10.0.2.2:53"), g, b"answer");
        assert!(matches!(
            parse_to_guest(&reply),
            Frame::Udp {
                payload: b"answer",
                ..
            }
        ));
        let arp = link().arp_announce(Ipv4Addr::new(10, 0, 2, 2), *g.ip());
        assert_eq!(parse_to_guest(&arp), Frame::Arp);
        let Ok(SlicedPacket {
            net: Some(NetSlice::Arp(a)),
            ..
        }) = SlicedPacket::from_ethernet(&arp)
        else {
            panic!("not ARP")
        };
        assert_eq!(a.sender_protocol_addr(), [10, 0, 2, 2]);
        assert_eq!(a.sender_hw_addr(), GW_MAC);
        let no = link().prohibited(Ipv4Addr::new(10, 0, 2, 2), *g.ip(), &reply[ETH_HEADER..]);
        assert!(matches!(parse_to_guest(&no), Frame::OtherIpv4 { .. }));
    }

    /// Parses a frame the device sends to the guest (same format).
    fn parse_to_guest(frame: &[u8]) -> Frame<'_> {
        parse(frame)
    }
}
