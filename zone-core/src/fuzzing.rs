//! Entry points for the fuzz targets in `fuzz/` (not a stable API).

use crate::host_fn::{HostFunctions, u64_adapter};
use crate::memory::{AccessMap, Span};
use crate::metrics::HypercallKind;
use crate::micro::hypercall::{Dispatcher, HypercallSink, mailbox_addr};
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

/// A small guest for dispatcher tests and fuzzing: vCPU 0's mailbox page, a writable page at
/// [`DATA`], a read-only page at [`RODATA`], and a last page that is guest memory but in no span
/// (the host must never touch it).
pub(crate) const DATA: u64 = layout::MAILBOXES + PAGE_SIZE;
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
        span(layout::MAILBOXES, DATA, true),
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
        access,
        functions,
    }
}

fn run_hypercall(d: &Dispatcher, data: &[u8]) {
    static ZERO: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
    for page in [layout::MAILBOXES, DATA, RODATA] {
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
        .write_slice(&data[4..52], GuestAddress(mailbox_addr(0) + 16))
        .expect("mailbox");
    // Everything the guest may not write becomes read-only on the host for the call: a stray
    // host write faults at once and the fuzzer reports it.
    let base = d
        .mem
        .get_host_address(GuestAddress(0))
        .expect("host address");
    let protect = |prot| {
        for (start, end) in [(0, layout::MAILBOXES), (RODATA, MEMORY)] {
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

#[cfg(test)]
mod tests {
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
