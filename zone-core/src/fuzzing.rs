//! Entry points for the fuzz targets in `fuzz/` (not a stable API).

use crate::host_fn::{HostFunctions, u64_adapter};
use crate::memory::{Access, AccessMap, Span};
use crate::metrics::HypercallKind;
use crate::micro::hypercall::{Dispatcher, HypercallSink, mailbox_addr};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
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

const DATA: u64 = 0x400000;
const RODATA: u64 = 0x401000;

/// Runs one hypercall decoded from `data`: 4 bytes of number, 48 bytes of arguments, the rest
/// copied into guest data pages. Asserts that the host wrote only guest-writable memory.
pub fn hypercall(data: &[u8]) {
    if data.len() < 52 {
        return;
    }
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 6 << 20)]).expect("test memory");
    let access = AccessMap::new(vec![
        Span {
            start: layout::MAILBOXES,
            end: layout::MAILBOXES + PAGE_SIZE,
            writable: true,
        },
        Span {
            start: DATA,
            end: DATA + PAGE_SIZE,
            writable: true,
        },
        Span {
            start: RODATA,
            end: RODATA + PAGE_SIZE,
            writable: false,
        },
    ]);
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
    let d = Dispatcher {
        zone: "fuzz".into(),
        mem,
        access,
        functions,
    };
    let nr = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let rest = &data[52..];
    let split = rest.len().min(PAGE_SIZE as usize);
    d.mem
        .write_slice(&rest[..split], GuestAddress(RODATA))
        .expect("rodata");
    d.mem
        .write_slice(
            &rest[split..rest.len().min(2 * PAGE_SIZE as usize)],
            GuestAddress(DATA),
        )
        .expect("data");
    d.mem
        .write_slice(&data[4..52], GuestAddress(mailbox_addr(0) + 16))
        .expect("mailbox");
    let snapshot = |d: &Dispatcher| {
        let mut v = vec![0u8; 6 << 20];
        d.mem.read_slice(&mut v, GuestAddress(0)).expect("read");
        v
    };
    let before = snapshot(&d);
    let _ = d.handle(0, nr, &NullSink);
    let after = snapshot(&d);
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        assert!(
            a == b || d.access.allows(i as u64, 1, Access::Write),
            "host wrote non-writable guest byte {i:#x}"
        );
    }
}
