//! Entry points for the fuzz targets in `fuzz/` (not a stable API).

pub mod seeds;

use crate::host_fn::{HostFunctions, u64_adapter};
use crate::memory::{AccessMap, Span};
use crate::metrics::HypercallKind;
use crate::micro::hypercall::{Dispatcher, HypercallSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use zone_guest::abi::{PAGE_SIZE, layout};

/// Parses arbitrary bytes as a micro-zone ELF; accepted images must respect the window.
pub fn elf(data: &[u8]) {
    let window = layout::IMAGE_BASE..crate::micro::layout::MAX_MEMORY;
    if let Ok(img) = crate::micro::elf::parse(data, window.clone()) {
        for s in &img.segments {
            assert!(s.memory.start >= window.start && s.memory.end <= window.end);
            assert!(s.file.end <= data.len());
            assert!(!(s.flags.write && s.flags.exec));
        }
    }
}

struct NullSink;
impl HypercallSink for NullSink {
    fn console(&self, _: u32, _: &[u8]) {}
    fn violation(&self, _: u32, _: &'static str, _: String) {}
    fn count(&self, _: HypercallKind) {}
    fn host_fn_called(&self, _: usize) {}
}

/// A small guest for dispatcher tests and fuzzing: vCPU 0's mailbox page at [`MAILBOX`], a
/// writable page at [`DATA`], a read-only page at [`RODATA`], and a last page that is guest
/// memory but in no span (the host must never touch it).
pub(crate) const MAILBOX: u64 = 0x20000;
/// See [`MAILBOX`].
pub(crate) const DATA: u64 = MAILBOX + PAGE_SIZE;
/// See [`DATA`].
pub(crate) const RODATA: u64 = DATA + PAGE_SIZE;
const MEMORY: u64 = RODATA + 2 * PAGE_SIZE;

/// Memory and access map of the small guest described at [`DATA`].
pub(crate) fn small_guest() -> (GuestMemoryMmap, AccessMap) {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY as usize)]).expect("memory");
    let span = |start, end, writable| Span {
        start,
        end,
        writable,
    };
    let access = AccessMap::new(vec![
        span(MAILBOX, DATA, true),
        span(DATA, RODATA, true),
        span(RODATA, RODATA + PAGE_SIZE, false),
    ]);
    (mem, access)
}

/// Host-function names at fixed places in the read-only page, so inputs can name them.
const NAMES: &[u8] = b"add\0echo\0";

/// Runs one hypercall decoded from `data`: 4 bytes of number, 48 bytes of arguments, the rest
/// copied into the data pages. The host may write only guest-writable memory: everything else is
/// mapped read-only during the call, so a stray write crashes the target.
pub fn hypercall(data: &[u8]) {
    if data.len() < 52 {
        return;
    }
    thread_local! {
        static DISPATCHER: Dispatcher = fuzz_dispatcher();
    }
    DISPATCHER.with(|d| run_hypercall(d, data));
}

fn fuzz_dispatcher() -> Dispatcher {
    let (mem, access) = small_guest();
    let mut functions = HostFunctions::default();
    functions
        .register(
            "add",
            u64_adapter(|a| a.iter().fold(0u64, |x, y| x.wrapping_add(*y))),
        )
        .expect("name");
    functions
        .register("echo", |c| Ok(c.input.to_vec()))
        .expect("name");
    Dispatcher {
        zone: "fuzz".into(),
        mem,
        mailboxes: MAILBOX,
        access,
        functions,
        host_threads: Vec::new(),
    }
}

fn run_hypercall(d: &Dispatcher, data: &[u8]) {
    static ZERO: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
    for page in [MAILBOX, DATA, RODATA] {
        d.mem.write_slice(&ZERO, GuestAddress(page)).expect("reset");
    }
    let nr = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let rest = &data[52..];
    let page = PAGE_SIZE as usize;
    let (ro, rw) = rest.split_at(rest.len().min(page - 16));
    d.mem
        .write_slice(NAMES, GuestAddress(RODATA))
        .expect("names");
    d.mem
        .write_slice(ro, GuestAddress(RODATA + 16))
        .expect("rodata");
    d.mem
        .write_slice(&rw[..rw.len().min(page)], GuestAddress(DATA))
        .expect("data");
    d.mem
        .write_slice(&data[4..52], GuestAddress(MAILBOX + 16))
        .expect("mailbox");
    // Everything the guest may not write becomes read-only on the host for the call: a stray
    // host write faults at once and the fuzzer reports it.
    let base = d
        .mem
        .get_host_address(GuestAddress(0))
        .expect("host address");
    let protect = |prot| {
        for (start, end) in [(0, MAILBOX), (RODATA, MEMORY)] {
            // SAFETY: both ranges are page-aligned and inside this dispatcher's own mapping of
            // MEMORY bytes; nothing else references those pages during the call.
            let rc = unsafe {
                libc::mprotect(
                    base.add(start as usize).cast(),
                    (end - start) as usize,
                    prot,
                )
            };
            assert_eq!(rc, 0, "mprotect");
        }
    };
    protect(libc::PROT_READ);
    let _ = d.handle(0, nr, &NullSink);
    protect(libc::PROT_READ | libc::PROT_WRITE);
}

use crate::device::{Activation, Interrupt, VirtioDevice};
use crate::devices::virtio::blk::Block;
use virtio_queue::{Queue, QueueT};

/// Guest memory of the block target: a 16-entry split queue in the first page (descriptor table,
/// available ring, used ring), request buffers above [`BLK_BUFFERS`].
const BLK_MEMORY: u64 = 0x4000;
/// Entries of the block target's queue.
const BLK_QUEUE_SIZE: u16 = 16;
/// Where the descriptor table, available ring and used ring of the block target lie.
const BLK_DESC_TABLE: u64 = 0;
/// See [`BLK_DESC_TABLE`].
const BLK_AVAIL: u64 = 0x100;
/// See [`BLK_DESC_TABLE`].
const BLK_USED: u64 = 0x200;
/// End of the used ring: flags, idx, 16 elements of 8 bytes, avail_event.
const BLK_USED_END: u64 = BLK_USED + 4 + 8 * BLK_QUEUE_SIZE as u64 + 2;
/// Start of the request buffers of the block target.
const BLK_BUFFERS: u64 = 0x1000;
/// Sectors of the fuzzed disk.
const BLK_SECTORS: u64 = 64;
/// Bytes of one encoded descriptor (see [`blk_descriptor`]).
const BLK_DESC_BYTES: usize = 4;

/// What the block target keeps between inputs.
struct BlkTarget {
    mem: GuestMemoryMmap,
    image: std::fs::File,
    interrupt: std::sync::Arc<Interrupt>,
    irq: vmm_sys_util::eventfd::EventFd,
}

/// Guest memory, an unlinked disk image and an interrupt for the block target.
fn blk_target() -> BlkTarget {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), BLK_MEMORY as usize)])
        .expect("memory");
    // An unlinked temporary file: nothing is left behind when the fuzzer stops.
    let path = std::env::temp_dir().join(format!("zones-fuzz-blk-{}", std::process::id()));
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("disk image");
    let _ = std::fs::remove_file(&path);
    image.set_len(BLK_SECTORS * 512).expect("disk size");
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = std::sync::Arc::new(Interrupt::new(irq.try_clone().expect("eventfd")));
    BlkTarget {
        mem,
        image,
        interrupt,
        irq,
    }
}

/// Runs one virtio-blk request decoded from `data` through the device's own queue handler.
///
/// Layout: byte 0 options (bit 0 read-only disk, bit 1 driver accepted VIRTIO_BLK_F_FLUSH, bit 2
/// the available index runs far ahead of the ring),
/// byte 1 the head index on the available ring (mod 32: 16 and above are out of the queue),
/// byte 2 the number of descriptors (mod 17), then 4 bytes per descriptor (see
/// `blk_descriptor`), then the bytes of the request buffers (headers, data) from
/// `BLK_BUFFERS` on. The encoding makes well-formed chains easy to reach while still
/// expressing broken ones. Buffers never overlap the queue. The device may change guest memory
/// only inside descriptors marked device-writable and in the used ring; anything else fails the
/// target.
pub fn blk_request(data: &[u8]) {
    let [options, head, count, rest @ ..] = data else {
        return;
    };
    thread_local! {
        static TARGET: BlkTarget = blk_target();
    }
    TARGET.with(|t| run_blk_request(t, *options, *head, *count, rest));
}

/// Decodes descriptor `index` from 4 bytes into (address, length, flags, next):
/// - byte 0: the address, `BLK_BUFFERS + 64 * byte` (the top of the address space instead when
///   byte 1 has bit 7 set);
/// - byte 1: bits 0-3 a length class (16, 1, 20, 0, 512 to 2560, 4096, the raw u16 of bytes 2-3,
///   size_max, size_max + 512, u32::MAX, 513, beyond the disk), bit 4 device-writable, bit 5
///   NEXT, bit 6 next is byte 2 (else `index + 1`), bit 7 the high address;
/// - bytes 2-3: the raw length or next index.
///
/// Indirect descriptors are never produced: the device does not offer them, and without them
/// the writable buffers are exactly the table's.
fn blk_descriptor(index: u16, [a, b, c, d]: [u8; 4]) -> (u64, u32, u16, u16) {
    let offset = 64 * u64::from(a);
    let addr = if b & 0x80 != 0 {
        u64::MAX - offset
    } else {
        BLK_BUFFERS + offset
    };
    let size_max = crate::devices::virtio::blk::SIZE_MAX;
    let len = match b & 0xf {
        0 => 16,
        1 => 1,
        2 => 20,
        3 => 0,
        k @ 4..=8 => u32::from(k - 3) * 512,
        9 => 4096,
        10 => u32::from(u16::from_le_bytes([c, d])),
        11 => size_max,
        12 => size_max + 512,
        13 => u32::MAX,
        14 => 513,
        _ => (BLK_SECTORS as u32 + 1) * 512,
    };
    let flags = u16::from(b & 0x10 != 0) * 2 + u16::from(b & 0x20 != 0);
    let next = if b & 0x40 != 0 {
        u16::from(c)
    } else {
        index + 1
    };
    (addr, len, flags, next)
}

/// Lays out the request `blk_request` decoded, runs it and checks what the device wrote.
fn run_blk_request(t: &BlkTarget, options: u8, head: u8, count: u8, rest: &[u8]) {
    static ZERO: [u8; BLK_MEMORY as usize] = [0; BLK_MEMORY as usize];
    t.mem.write_slice(&ZERO, GuestAddress(0)).expect("reset");
    let count = usize::from(count % (BLK_QUEUE_SIZE as u8 + 1));
    let table_len = (count * BLK_DESC_BYTES).min(rest.len());
    let (table, buffers) = rest.split_at(table_len);
    let mut writable = Vec::new();
    for (i, d) in table.chunks_exact(BLK_DESC_BYTES).enumerate() {
        let (addr, len, flags, next) = blk_descriptor(i as u16, [d[0], d[1], d[2], d[3]]);
        if flags & 2 != 0 {
            writable.push((addr, u64::from(len)));
        }
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        t.mem
            .write_slice(&raw, GuestAddress(BLK_DESC_TABLE + 16 * i as u64))
            .expect("descriptor");
    }
    let room = (BLK_MEMORY - BLK_BUFFERS) as usize;
    t.mem
        .write_slice(
            &buffers[..buffers.len().min(room)],
            GuestAddress(BLK_BUFFERS),
        )
        .expect("buffers");
    // Available ring: no flags, the index, one entry naming the head.
    let head = u16::from(head % 32);
    let mut avail = [0u8; 6];
    let avail_idx: u16 = if options & 4 != 0 { 1000 } else { 1 };
    avail[2..4].copy_from_slice(&avail_idx.to_le_bytes());
    avail[4..].copy_from_slice(&head.to_le_bytes());
    t.mem
        .write_slice(&avail, GuestAddress(BLK_AVAIL))
        .expect("avail");

    let mut queue = Queue::new(BLK_QUEUE_SIZE).expect("queue");
    queue.set_size(BLK_QUEUE_SIZE);
    queue.set_ready(true);
    queue
        .try_set_desc_table_address(GuestAddress(BLK_DESC_TABLE))
        .expect("table");
    queue
        .try_set_avail_ring_address(GuestAddress(BLK_AVAIL))
        .expect("avail");
    queue
        .try_set_used_ring_address(GuestAddress(BLK_USED))
        .expect("used");
    let image = t.image.try_clone().expect("image");
    let mut block = Block::new(image, options & 1 != 0, "fuzz-disk").expect("block");
    let mut features = block.features();
    if options & 2 == 0 {
        features &= !(1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH);
    }
    let activation = Activation {
        mem: t.mem.clone(),
        queues: vec![queue],
        interrupt: t.interrupt.clone(),
        features,
        queue_events: Vec::new(),
    };
    let mut before = vec![0u8; BLK_MEMORY as usize];
    t.mem
        .read_slice(&mut before, GuestAddress(0))
        .expect("snapshot");
    block.handler(activation).expect("activate").process();
    let _ = t.irq.read();
    let mut after = vec![0u8; BLK_MEMORY as usize];
    t.mem
        .read_slice(&mut after, GuestAddress(0))
        .expect("snapshot");
    for (page, (a, b)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
        if a == b {
            continue;
        }
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let addr = (page * 4096 + i) as u64;
            let allowed = (BLK_USED..BLK_USED_END).contains(&addr)
                || writable.iter().any(|&(a, len)| addr >= a && addr - a < len);
            assert!(
                x == y || allowed,
                "the device wrote {addr:#x}, outside every writable buffer"
            );
        }
    }
}

/// Drives the vsock backend with a script decoded from `data`: guest packets (a 44-byte header
/// and a payload), host reads and writes (never waiting), RX drains with random room, new
/// connections and dropped streams. Nothing may panic, and buffers stay within their bounds.
pub fn vsock(data: &[u8]) {
    use crate::devices::virtio::vsock::backend::{Backend, RECV_BUFFER, SEND_BUFFER};
    use crate::devices::virtio::vsock::packet::{HEADER_LEN, Header};
    use std::sync::Arc;
    use std::time::Instant;

    let Ok(backend) = Backend::new(3).map(Arc::new) else {
        return;
    };
    let mut streams: Vec<crate::devices::virtio::vsock::backend::Stream> = Vec::new();
    let mut rest = data;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    while let Some(&[op]) = take(1) {
        match op % 6 {
            0 => {
                let Some(raw) = take(HEADER_LEN) else { break };
                let mut raw: [u8; HEADER_LEN] = raw.try_into().unwrap_or([0; HEADER_LEN]);
                if op & 0x80 != 0 {
                    // Well addressed, so that packets reach connections.
                    raw[0..8].copy_from_slice(&3u64.to_le_bytes());
                    raw[8..16].copy_from_slice(&2u64.to_le_bytes());
                }
                if op & 0x40 != 0 {
                    // Aimed at one of the first host ports, from the agent's port.
                    raw[16..20].copy_from_slice(&1024u32.to_le_bytes());
                    raw[20..24].copy_from_slice(&(49152 + u32::from(op & 3)).to_le_bytes());
                }
                if let Ok(hdr) = Header::decode(&raw) {
                    let payload = take((hdr.len as usize).min(rest_len_hint(op))).unwrap_or(&[]);
                    backend.on_guest_packet(&hdr, payload);
                }
            }
            1 => {
                let mut buf = [0u8; 4096];
                if let Some(s) = streams.last() {
                    let _ = s.read(&mut buf, Instant::now());
                }
            }
            2 => {
                let n = usize::from(op) * 97;
                if let Some(s) = streams.last() {
                    let _ = s.write_all(&vec![op; n], Instant::now());
                }
            }
            3 => {
                let room = usize::from(op) * 64;
                while backend.next_for_guest(room).is_some() {}
            }
            4 => {
                if let Ok(s) = backend.open(1024) {
                    streams.push(s);
                }
            }
            _ => {
                streams.pop();
            }
        }
        let (recv, send, conns) = backend.buffered();
        assert!(
            recv <= RECV_BUFFER as usize,
            "receive buffer over the granted credit"
        );
        assert!(send <= SEND_BUFFER, "send buffer over its bound");
        assert!(conns <= 1024 + 64, "connection table unbounded");
    }
}

fn rest_len_hint(op: u8) -> usize {
    usize::from(op) * 512
}

/// Applies arbitrary bytes as an OCI image layer, twice (stacked), in a fresh directory: it must
/// never panic, and nothing may appear beside the tree it unpacks into.
pub fn oci_layer(data: &[u8]) {
    use crate::linux::rootfs::layer::{Budget, apply};
    let outer = std::env::temp_dir().join(format!(
        "zones-fuzz-layer-{}-{}",
        std::process::id(),
        crate::linux::rootfs::unique()
    ));
    let root = outer.join("root");
    if std::fs::create_dir_all(&root).is_err() {
        return;
    }
    let mut budget = Budget {
        left: 1 << 20,
        limit: 1 << 20,
    };
    let _ = apply(&root, data, &mut budget);
    let _ = apply(&root, data, &mut budget);
    let beside: Vec<_> = std::fs::read_dir(&outer)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&outer);
    assert_eq!(beside, ["root"], "a layer wrote beside its tree");
}

/// Arbitrary configuration-space and MSI-X table accesses from a guest, as 8-byte records
/// `[kind, len, offset lo, offset hi, value (4 bytes LE)]` over a function with 64-bit, 32-bit
/// and I/O BARs, an MSI-X capability and a vendor capability: nothing panics, read-only fields
/// and the capability chain never change, BAR addresses stay aligned to their sizes.
pub fn pci_config(data: &[u8]) {
    use crate::device::pci::{
        Bar, BarKind, ConfigChange, ConfigSpace, Header, MSIX_CAPABILITY_ID, Msix, reg,
    };
    let mut c = ConfigSpace::new(&Header {
        vendor_id: 0x1234,
        device_id: 0x11e8,
        class: 0x00ff_0000,
        interrupt_pin: 1,
        ..Header::default()
    });
    let bars = [
        (
            0,
            Bar {
                kind: BarKind::Memory64 {
                    prefetchable: false,
                },
                size: 0x4000,
            },
        ),
        (
            2,
            Bar {
                kind: BarKind::Memory64 { prefetchable: true },
                size: 16 << 30,
            },
        ),
        (
            4,
            Bar {
                kind: BarKind::Memory32 {
                    prefetchable: false,
                },
                size: 0x1000,
            },
        ),
        (
            5,
            Bar {
                kind: BarKind::Io,
                size: 0x20,
            },
        ),
    ];
    for (i, bar) in bars {
        if c.add_bar(i, bar).is_err() {
            return;
        }
    }
    let Ok(mut msix) = Msix::new(33) else { return };
    let Ok((body, mask)) = msix.capability((0, 0x2000), (0, 0x3000)) else {
        return;
    };
    let (msi_body, msi_mask) = crate::device::pci::msi_capability();
    let (Ok(msix_at), Ok(_), Ok(msi_at)) = (
        c.add_capability(MSIX_CAPABILITY_ID, &body, &mask),
        c.add_capability(0x09, &[1, 2, 3, 4], &[0xff, 0, 0, 0]),
        c.add_capability(crate::device::pci::MSI_CAPABILITY_ID, &msi_body, &msi_mask),
    ) else {
        return;
    };
    let chain: Vec<_> = c.capabilities().collect();
    let pristine = c.clone();
    let fixed = [
        (reg::VENDOR_ID, 4),
        (reg::REVISION, 4),
        (reg::CAPABILITIES, 1),
    ];
    let before: Vec<u32> = fixed.iter().map(|&(o, l)| c.read(o, l)).collect();
    for record in data.chunks_exact(8) {
        let len = [1, 2, 4, 8, 3][usize::from(record[1] % 5)];
        let offset = u16::from_le_bytes([record[2], record[3]]);
        let value = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
        match record[0] % 5 {
            0 => {
                let _ = c.read(offset, len);
            }
            1 => {
                if let Some(ConfigChange::Capability { capability, .. }) =
                    c.write(offset, len, value)
                    && capability == msix_at
                {
                    let control = c.read(msix_at + 2, 2) as u16;
                    let _ = msix.set_control(control);
                }
            }
            2 => {
                let bytes = u64::from(value).to_le_bytes();
                let _ = msix.write_table(u64::from(offset), &bytes[..len.min(8)]);
            }
            3 => {
                let mut out = [0u8; 8];
                msix.read_table(u64::from(offset), &mut out[..len.min(8)]);
                msix.read_pba(u64::from(offset), &mut out[..len.min(8)]);
            }
            _ => {
                let _ = msix.trigger(offset % 40);
            }
        }
    }
    let after: Vec<u32> = fixed.iter().map(|&(o, l)| c.read(o, l)).collect();
    assert_eq!(before, after, "read-only header fields changed");
    if let Some(m) = crate::device::pci::msi_message(&c, msi_at) {
        assert_eq!(m.address & 3, 0, "an MSI address the guest wrote unaligned");
        assert!(m.data <= 0xffff);
    }
    pci_bus(data, pristine);
    assert_eq!(chain, c.capabilities().collect::<Vec<_>>());
    for (i, bar) in bars {
        let address = c.bar_address(i).unwrap_or(0);
        assert_eq!(
            address & (bar.size - 1),
            0,
            "BAR {i} misaligned: {address:#x}"
        );
    }
}

/// The same records as a Linux zone's PCI bus sees them: configuration accesses through the
/// ECAM window to the host bridge, to a function with `config` and to absent devices, and
/// accesses into the BAR windows, where the function's BARs decode or not as the guest's command
/// register and BAR writes say. The host bridge's identity never changes; nothing panics.
fn pci_bus(data: &[u8], config: crate::device::pci::ConfigSpace) {
    use crate::device::pci::{ConfigSpace, PciFunction};
    use crate::linux::pci::PciBusBuilder;
    struct Function(ConfigSpace);
    impl PciFunction for Function {
        fn config(&self) -> &ConfigSpace {
            &self.0
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.0
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    }
    let Ok(mut builder) = PciBusBuilder::new(256 << 20, 40) else {
        return;
    };
    if builder.add(Box::new(Function(config))).is_err() {
        return;
    }
    let bus = builder.finish(None);
    let (low, high) = (crate::linux::layout::PCI_MMIO32.start, 1u64 << 32);
    for record in data.chunks_exact(8) {
        let len = [1, 2, 4, 8, 3][usize::from(record[1] % 5)];
        let offset = u16::from_le_bytes([record[2], record[3]]);
        let value = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
        // Devices 0 (the bridge), 1 (the function), 2 and 3 (absent); any register.
        let ecam = (u64::from((record[1] >> 4) & 3) << 15) | u64::from(offset & 0xfff);
        let bytes = u64::from(value).to_le_bytes();
        let window = if record[1] & 0x40 != 0 { high } else { low };
        let mut out = [0u8; 8];
        match record[0] % 5 {
            0 => bus.config_read(ecam, &mut out[..len]),
            1 => bus.config_write(ecam, &bytes[..len]),
            2 => bus.bar_write(window + u64::from(value & 0x7fff), &bytes[..len]),
            3 => bus.bar_read(window + u64::from(value & 0x7fff), &mut out[..len]),
            _ => bus.config_write((1 << 15) | 4, &bytes[..2]),
        }
    }
    let mut id = [0u8; 4];
    bus.config_read(0, &mut id);
    assert_eq!(
        u32::from_le_bytes(id),
        0x0d57_8086,
        "the host bridge's identity changed"
    );
}

#[cfg(test)]
mod tests {
    /// A scripted vsock session: open a stream, the guest answers, data both ways, drains.
    #[test]
    fn vsock_script_runs() {
        let mut header = [0u8; 44];
        header[28] = 1; // stream
        header[30] = 2; // RESPONSE
        header[36..40].copy_from_slice(&65536u32.to_le_bytes()); // guest credit
        let mut script = vec![4u8, 0xc0];
        script.extend_from_slice(&header);
        let mut rw = header;
        rw[30] = 5; // RW, 3 bytes
        rw[24] = 3;
        script.push(0xc0);
        script.extend_from_slice(&rw);
        script.extend_from_slice(b"abc");
        script.extend_from_slice(&[2, 3, 1, 5, 3]);
        super::vsock(&script);
    }

    /// The fuzz entry points run (and hold their assertions) on a few fixed inputs.
    #[test]
    fn entry_points_accept_inputs() {
        super::elf(b"\x7fELF");
        let mut input = vec![4, 0, 0, 0];
        for word in [super::RODATA, 3, super::DATA, 16, super::DATA + 64, 8, 0] {
            input.extend_from_slice(&word.to_le_bytes());
        }
        super::hypercall(&input[..52 + 8]);
    }
}
