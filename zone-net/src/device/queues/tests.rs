use super::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const BUFS: u64 = 0x10_0000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A frame of `len` bytes, byte `i` = `i % 251`.
fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `count` single-descriptor RX buffers of `size` bytes each at BUFS, BUFS + 0x10000, ...
fn rx_queue(
    mem: &GuestMemoryMmap,
    count: u16,
    size: u32,
) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue) {
    let mock = MockSplitQueue::create(mem, GuestAddress(0), 256);
    let descs: Vec<_> = (0..count)
        .map(|i| desc(BUFS + u64::from(i) * 0x10000, size, W, 0))
        .collect();
    mock.add_desc_chains(&descs, 0).unwrap();
    let q = mock.create_queue().unwrap();
    (mock, q)
}

fn used(mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = mock.used().idx().load();
    (0..n)
        .map(|i| {
            let e = mock.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn read(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mem.read_slice(&mut b, GuestAddress(at)).unwrap();
    b
}

const MERGE: RxMode = RxMode {
    mergeable: true,
    data_valid: true,
};

#[test]
fn a_large_frame_spreads_over_mergeable_buffers() {
    let mem = memory();
    let (mock, mut q) = rx_queue(&mem, 8, 4096);
    let f = frame(10_000);
    assert_eq!(write_rx(&mut q, &mem, &f, MERGE), RxOutcome::Written(3));
    assert_eq!(used(&mock), [(0, 4096), (1, 4096), (2, 10_000 + 12 - 8192)]);
    let hdr = read(&mem, BUFS, HDR_LEN);
    assert_eq!(hdr[0], VIRTIO_NET_HDR_F_DATA_VALID as u8);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
    let mut got = read(&mem, BUFS + 12, 4096 - 12);
    got.extend(read(&mem, BUFS + 0x10000, 4096));
    got.extend(read(&mem, BUFS + 0x20000, 10_000 + 12 - 8192));
    assert_eq!(got, f);
}

#[test]
fn without_enough_buffers_nothing_is_used() {
    let mem = memory();
    let (mock, mut q) = rx_queue(&mem, 2, 4096);
    assert_eq!(
        write_rx(&mut q, &mem, &frame(9000), MERGE),
        RxOutcome::NoBuffers
    );
    assert!(used(&mock).is_empty());
    assert_eq!(
        write_rx(&mut q, &mem, &frame(100), MERGE),
        RxOutcome::Written(1)
    );
    assert_eq!(used(&mock), [(0, 112)], "the same buffers are used later");
}

#[test]
fn without_mergeable_buffers_a_frame_needs_one_big_buffer() {
    let mem = memory();
    let (mock, mut q) = rx_queue(&mem, 2, 4096);
    let plain = RxMode {
        mergeable: false,
        data_valid: false,
    };
    assert_eq!(
        write_rx(&mut q, &mem, &frame(5000), plain),
        RxOutcome::TooLarge
    );
    assert_eq!(used(&mock), [(0, 0)], "the small buffer goes back empty");
    assert_eq!(
        write_rx(&mut q, &mem, &frame(1000), plain),
        RxOutcome::Written(1)
    );
    assert_eq!(read(&mem, BUFS + 0x10000, 12)[0], 0, "no DATA_VALID");
}

#[test]
fn broken_rx_chains_are_returned_empty() {
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), 256);
    // A read-only "RX buffer", one outside guest memory, then a good one.
    let descs = [
        desc(BUFS, 4096, 0, 0),
        desc(0xffff_0000_0000, 4096, W, 0),
        desc(BUFS + 0x10000, 4096, W, 0),
    ];
    mock.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    assert_eq!(
        write_rx(&mut q, &mem, &frame(100), MERGE),
        RxOutcome::Written(1)
    );
    assert_eq!(used(&mock), [(0, 0), (1, 0), (2, 112)]);
}

fn tx(
    mem: &GuestMemoryMmap,
    hdr: [u8; HDR_LEN],
    frame: &[u8],
    max: usize,
) -> Result<Vec<u8>, TxError> {
    let mock = MockSplitQueue::create(mem, GuestAddress(0), 256);
    mem.write_slice(&hdr, GuestAddress(BUFS)).unwrap();
    mem.write_slice(frame, GuestAddress(BUFS + 0x100)).unwrap();
    // Header and frame in separate descriptors, as Linux sends them.
    let chain = mock
        .build_desc_chain(&[
            desc(BUFS, HDR_LEN as u32, N, 1),
            desc(BUFS + 0x100, frame.len() as u32, 0, 0),
        ])
        .unwrap();
    let mut buf = Vec::new();
    read_tx(mem, chain, max, &mut buf, true).map(|()| buf)
}

#[test]
fn tx_frames_are_read_and_bounded() {
    let mem = memory();
    let f = frame(1500);
    assert_eq!(tx(&mem, [0; HDR_LEN], &f, 1514).unwrap(), f);
    assert_eq!(tx(&mem, [0; HDR_LEN], &f, 1000), Err(TxError::TooLarge));
    assert_eq!(
        tx(&mem, [0; HDR_LEN], &f[..10], 1514),
        Err(TxError::TooShort)
    );
    let mut gso = [0u8; HDR_LEN];
    gso[1] = 1;
    assert_eq!(tx(&mem, gso, &f, 1514), Err(TxError::Gso));
    let mut bad = [0u8; HDR_LEN];
    bad[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    bad[6..8].copy_from_slice(&1499u16.to_le_bytes());
    bad[8..10].copy_from_slice(&16u16.to_le_bytes());
    assert_eq!(tx(&mem, bad, &f, 1514), Err(TxError::BadChecksumOffset));
}

/// A UDP frame whose checksum the "driver" left partial: the device completes it to what
/// etherparse computes for the whole datagram.
#[test]
fn partial_checksums_are_completed() {
    let mem = memory();
    let mut full = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 2, 15], [10, 0, 2, 2], 64)
        .udp(1234, 53)
        .write(&mut full, b"some query bytes!")
        .unwrap();
    let (udp_at, csum_at) = (14 + 20, 14 + 20 + 6);
    let right = [full[csum_at], full[csum_at + 1]];
    // The driver's partial value: the pseudo-header sum, not complemented.
    let mut partial = full.clone();
    let pseudo = {
        let mut s: u32 = 0;
        for w in [[10, 0], [2, 15], [10, 0], [2, 2]] {
            s += u32::from(u16::from_be_bytes(w));
        }
        s += 17 + (full.len() - udp_at) as u32;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    };
    partial[csum_at..csum_at + 2].copy_from_slice(&pseudo.to_be_bytes());
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    hdr[6..8].copy_from_slice(&(udp_at as u16).to_le_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
    let out = tx(&mem, hdr, &partial, 1514).unwrap();
    assert_eq!([out[csum_at], out[csum_at + 1]], right);
}
