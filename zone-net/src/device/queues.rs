//! The guest-facing half of virtio-net, kept apart from the event loop so that it can be tested
//! with virtio-queue's mock queue and fuzzed: reading the frames of TX chains and writing frames
//! into RX buffers (one chain per frame, or spread over several with mergeable RX buffers).
//!
//! Everything the guest controls is bounded: a TX chain larger than the header and the largest
//! frame is refused; a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) is completed only inside
//! the frame; GSO (never offered) is refused.

use std::io::{Read, Write};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

/// `struct virtio_net_hdr_v1` (virtio 1.x: `num_buffers` always present).
pub(crate) const HDR_LEN: usize = 12;

/// Why a TX chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxError {
    /// The chain does not resolve to readable guest memory.
    BadChain,
    /// Shorter than the header plus an Ethernet header.
    TooShort,
    /// Longer than the header plus the largest frame.
    TooLarge,
    /// GSO was asked for (never offered).
    Gso,
    /// A partial checksum whose start or offset lies outside the frame.
    BadChecksumOffset,
}

/// Reads the frame of TX `chain` (without its virtio-net header) into `buf`, completing a partial
/// checksum if `complete` (a backend that hands frames on needs it; one that terminates them
/// does not). `max_frame` bounds the frame.
pub(crate) fn read_tx<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    max_frame: usize,
    buf: &mut Vec<u8>,
    complete: bool,
) -> Result<(), TxError> {
    let mut reader = chain.reader(mem).map_err(|_| TxError::BadChain)?;
    let len = reader.available_bytes();
    if len < HDR_LEN + crate::packet::ETH_HEADER {
        return Err(TxError::TooShort);
    }
    if len > HDR_LEN + max_frame {
        return Err(TxError::TooLarge);
    }
    let mut hdr = [0u8; HDR_LEN];
    reader.read_exact(&mut hdr).map_err(|_| TxError::BadChain)?;
    if u32::from(hdr[1]) != VIRTIO_NET_HDR_GSO_NONE {
        return Err(TxError::Gso);
    }
    buf.clear();
    buf.resize(len - HDR_LEN, 0);
    reader.read_exact(buf).map_err(|_| TxError::BadChain)?;
    if complete && u32::from(hdr[0]) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
        complete_checksum(buf, start, offset)?;
    }
    Ok(())
}

/// Computes the ones'-complement sum over `frame[start..]` (the driver put the pseudo-header sum
/// at `start + offset`) and stores its complement there.
fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), TxError> {
    let at = start
        .checked_add(offset)
        .filter(|at| at.checked_add(2).is_some_and(|end| end <= frame.len()))
        .ok_or(TxError::BadChecksumOffset)?;
    let mut sum: u32 = 0;
    let mut words = frame[start..].chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    Ok(())
}

/// What [`write_rx`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxOutcome {
    /// Written, in this many buffers (chains).
    Written(u16),
    /// Not enough buffers now; none was used. Try again when the driver adds some.
    NoBuffers,
    /// Dropped: without mergeable buffers, the next buffer is too small for it (that buffer
    /// was returned unused, length 0).
    TooLarge,
}

/// How RX buffers are filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RxMode {
    /// VIRTIO_NET_F_MRG_RXBUF was negotiated.
    pub(crate) mergeable: bool,
    /// Frames carry VIRTIO_NET_HDR_F_DATA_VALID (VIRTIO_NET_F_GUEST_CSUM negotiated and the
    /// backend vouches for the checksums).
    pub(crate) data_valid: bool,
}

/// Writes `frame` into RX buffers of `queue`.
pub(crate) fn write_rx<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    frame: &[u8],
    mode: RxMode,
) -> RxOutcome {
    let need = HDR_LEN + frame.len();
    let mut writers = Vec::new();
    let mut room = 0usize;
    let mut broken = Vec::new();
    while room < need {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            for _ in 0..writers.len() + broken.len() {
                queue.go_to_previous_position();
            }
            return RxOutcome::NoBuffers;
        };
        let head = chain.head_index();
        match chain.writer(mem) {
            Ok(w) if w.available_bytes() > 0 => {
                room += w.available_bytes();
                writers.push((head, w));
            }
            // A chain with no writable memory is a driver bug: give it back empty, before the
            // frame's own buffers.
            _ => broken.push(head),
        }
        if !mode.mergeable && !writers.is_empty() && room < need {
            let (head, _) = writers.remove(0);
            for head in broken.into_iter().chain([head]) {
                let _ = queue.add_used(mem, head, 0);
            }
            return RxOutcome::TooLarge;
        }
    }
    for head in broken {
        let _ = queue.add_used(mem, head, 0);
    }
    let mut hdr = [0u8; HDR_LEN];
    if mode.data_valid {
        hdr[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    }
    let count = writers.len() as u16;
    hdr[10..12].copy_from_slice(&count.to_le_bytes());
    let mut rest: &[u8] = &hdr;
    let mut body = frame;
    let mut used = Vec::with_capacity(writers.len());
    for (head, mut w) in writers {
        let mut written = 0;
        for part in [&mut rest, &mut body] {
            let bytes: &[u8] = part;
            let n = bytes.len().min(w.available_bytes());
            if n > 0 && w.write_all(&bytes[..n]).is_ok() {
                written += n;
                *part = &bytes[n..];
            }
        }
        used.push((head, written as u32));
    }
    for (head, len) in used {
        let _ = queue.add_used(mem, head, len);
    }
    RxOutcome::Written(count)
}

#[cfg(test)]
mod tests;
