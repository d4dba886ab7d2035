//! The smoltcp device of the user-space stack: frames from the guest that smoltcp should see go
//! in, frames smoltcp sends come out, both as queues the backend moves.

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;

/// Frames between the guest and smoltcp.
pub(crate) struct Phy {
    /// From the guest, for smoltcp (ARP, TCP).
    pub(crate) inbound: VecDeque<Vec<u8>>,
    /// From smoltcp, for the guest.
    pub(crate) outbound: VecDeque<Vec<u8>>,
    /// How many more frames smoltcp may send now (room toward the guest).
    pub(crate) room: usize,
    /// Largest frame, Ethernet header included.
    max_frame: usize,
}

impl Phy {
    pub(crate) fn new(mtu: u16) -> Self {
        Self {
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
            room: 0,
            max_frame: usize::from(mtu) + crate::packet::ETH_HEADER,
        }
    }
}

pub(crate) struct Rx(Vec<u8>);

pub(crate) struct Tx<'a> {
    out: &'a mut VecDeque<Vec<u8>>,
    room: &'a mut usize,
}

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        *self.room = self.room.saturating_sub(1);
        self.out.push_back(frame);
        r
    }
}

impl phy::Device for Phy {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.inbound.pop_front()?;
        // An answer to this frame (an ACK, a RST) is sent even without room: the backend bounds
        // what it feeds in.
        Some((
            Rx(frame),
            Tx {
                out: &mut self.outbound,
                room: &mut self.room,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        (self.room > 0).then_some(Tx {
            out: &mut self.outbound,
            room: &mut self.room,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        // Frames from the guest come out of its memory, not off a wire: they are not checked
        // (a guest that sends a partial checksum has offloaded it). Frames to the guest get
        // checksums.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}
