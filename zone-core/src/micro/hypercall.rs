//! Micro-zone hypercalls: read the request from the vCPU's mailbox, check every guest pointer
//! against the [`AccessMap`], perform the call, write the result back.
//!
//! Everything here is guest-controlled input. The mailbox is read once into a local copy (no
//! double fetch), every length is bounded by `zone_guest::abi::limits` before anything is
//! allocated, and every buffer must lie in memory the guest itself may read (or, for outputs,
//! write). A refused request returns a status to the guest and a [`Violation`] event to the
//! embedder; it never panics the host or ends the zone.
//!
//! [`Violation`]: crate::Violation

use crate::exit::ZoneExit;
use crate::host_fn::{HostCall, HostFnError, HostFunctions};
use crate::memory::{Access, AccessMap};
use crate::metrics::HypercallKind;
use std::panic::{AssertUnwindSafe, catch_unwind};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zone_guest::abi::{Hypercall, PAGE_SIZE, limits, mailbox, status};

/// Longest panic message taken from a guest.
const MAX_PANIC_MESSAGE: u64 = 4096;

/// Where the dispatcher reports what it did.
pub(crate) trait HypercallSink {
    /// Console bytes from the guest.
    fn console(&self, vcpu: u32, bytes: &[u8]);
    /// A refused request.
    fn violation(&self, vcpu: u32, control: &'static str, detail: String);
    /// A hypercall of this kind was made.
    fn count(&self, kind: HypercallKind);
    /// Host function `index` was called.
    fn host_fn_called(&self, index: usize);
}

/// The result of one hypercall.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Resume the guest with these result words.
    Return { status: i64, value: u64 },
    /// End the zone.
    Stop(ZoneExit),
    /// This vCPU is done.
    Idle,
}

fn ret(status: i64, value: u64) -> Outcome {
    Outcome::Return { status, value }
}

/// Performs micro-zone hypercalls for one zone.
pub(crate) struct Dispatcher {
    pub(crate) zone: String,
    pub(crate) mem: GuestMemoryMmap,
    /// vCPU 0's mailbox page; vCPU i's is i pages higher.
    pub(crate) mailboxes: u64,
    pub(crate) access: AccessMap,
    pub(crate) functions: HostFunctions,
    /// Per vCPU, the thread its host functions run on (none: on the vCPU thread itself).
    pub(crate) host_threads: Vec<super::host_calls::HostCallThread>,
}

impl Dispatcher {
    /// Handles hypercall `nr` from vCPU `vcpu`, including the mailbox round trip.
    pub(crate) fn handle(&self, vcpu: u32, nr: u32, sink: &dyn HypercallSink) -> Outcome {
        let mb = self.mailboxes + u64::from(vcpu) * PAGE_SIZE;
        let mut raw = [0u8; 8 * mailbox::NARGS];
        if self
            .mem
            .read_slice(&mut raw, GuestAddress(mb + 8 * mailbox::ARGS as u64))
            .is_err()
        {
            return Outcome::Stop(ZoneExit::Crashed {
                vcpu,
                reason: format!("mailbox {mb:#x} unreadable"),
            });
        }
        let mut args = [0u64; mailbox::NARGS];
        for (arg, chunk) in args.iter_mut().zip(raw.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *arg = u64::from_le_bytes(word);
        }
        let outcome = self.dispatch(vcpu, nr, args, sink);
        if let Outcome::Return { status, value } = outcome {
            let mut out = [0u8; 16];
            out[..8].copy_from_slice(&status.to_le_bytes());
            out[8..].copy_from_slice(&value.to_le_bytes());
            if self
                .mem
                .write_slice(&out, GuestAddress(mb + 8 * mailbox::RET0 as u64))
                .is_err()
            {
                return Outcome::Stop(ZoneExit::Crashed {
                    vcpu,
                    reason: format!("mailbox {mb:#x} unwritable"),
                });
            }
        }
        outcome
    }

    fn dispatch(&self, vcpu: u32, nr: u32, args: [u64; 6], sink: &dyn HypercallSink) -> Outcome {
        let Some(call) = Hypercall::from_u32(nr) else {
            sink.count(HypercallKind::Unknown);
            sink.violation(vcpu, "hypercall", format!("unknown hypercall number {nr}"));
            return ret(status::UNKNOWN_HYPERCALL, 0);
        };
        match call {
            Hypercall::ConsoleWrite => {
                sink.count(HypercallKind::Console);
                match self.read_guest(
                    vcpu,
                    "console write",
                    args[0],
                    args[1],
                    limits::MAX_CONSOLE_WRITE,
                    sink,
                ) {
                    Ok(bytes) => {
                        sink.console(vcpu, &bytes);
                        ret(status::OK, bytes.len() as u64)
                    }
                    Err(status) => ret(status, 0),
                }
            }
            Hypercall::Exit => {
                sink.count(HypercallKind::Exit);
                Outcome::Stop(ZoneExit::Exited(args[0] as u32 as i32))
            }
            Hypercall::Panic => {
                sink.count(HypercallKind::Panic);
                let len = args[1].min(MAX_PANIC_MESSAGE);
                let message = match self.read_guest(
                    vcpu,
                    "panic message",
                    args[0],
                    len,
                    MAX_PANIC_MESSAGE,
                    sink,
                ) {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(_) => "<panic message not readable>".to_string(),
                };
                Outcome::Stop(ZoneExit::Panicked(message))
            }
            Hypercall::HostCall => {
                sink.count(HypercallKind::HostCall);
                self.host_call(vcpu, args, sink)
            }
            Hypercall::Idle => {
                sink.count(HypercallKind::Idle);
                Outcome::Idle
            }
        }
    }

    fn host_call(&self, vcpu: u32, args: [u64; 6], sink: &dyn HypercallSink) -> Outcome {
        let [name_ptr, name_len, in_ptr, in_len, out_ptr, out_cap] = args;
        let name = match self.read_guest(
            vcpu,
            "host function name",
            name_ptr,
            name_len,
            limits::MAX_NAME,
            sink,
        ) {
            Ok(name) => name,
            Err(status) => return ret(status, 0),
        };
        let Some(index) = self.functions.lookup(&name) else {
            sink.violation(
                vcpu,
                "host-fn",
                format!(
                    "call to host function {:?}, which this zone was not granted",
                    String::from_utf8_lossy(&name)
                ),
            );
            return ret(status::UNKNOWN_FUNCTION, 0);
        };
        let input = match self.read_guest(
            vcpu,
            "host call input",
            in_ptr,
            in_len,
            limits::MAX_INPUT,
            sink,
        ) {
            Ok(input) => input,
            Err(status) => return ret(status, 0),
        };
        let out_cap = out_cap.min(limits::MAX_OUTPUT);
        if !self.access.allows(out_ptr, out_cap, Access::Write) {
            self.bad_pointer(
                vcpu,
                "host call output",
                out_ptr,
                out_cap,
                Access::Write,
                sink,
            );
            return ret(status::BAD_POINTER, 0);
        }
        sink.host_fn_called(index);
        let call = HostCall {
            zone: &self.zone,
            vcpu,
            input: &input,
        };
        let invoke = || {
            catch_unwind(AssertUnwindSafe(|| self.functions.call(index, &call)))
                .unwrap_or_else(|_| Err(HostFnError::new("host function panicked")))
        };
        let result = match self.host_threads.get(vcpu as usize) {
            Some(thread) => thread
                .run(invoke)
                .unwrap_or_else(|| Err(HostFnError::new("the host-call thread is gone"))),
            None => invoke(),
        };
        match result {
            Ok(output) if output.len() as u64 > out_cap => {
                ret(status::OUTPUT_TOO_SMALL, output.len() as u64)
            }
            Ok(output) => match self.mem.write_slice(&output, GuestAddress(out_ptr)) {
                Ok(()) => ret(status::OK, output.len() as u64),
                Err(_) => ret(status::BAD_POINTER, 0),
            },
            Err(e) => {
                sink.violation(
                    vcpu,
                    "host-fn",
                    format!("host function {} failed: {e}", self.functions.name(index)),
                );
                ret(status::HOST_ERROR, 0)
            }
        }
    }

    /// Copies `len` guest bytes at `ptr` after checking the limit and the access map.
    fn read_guest(
        &self,
        vcpu: u32,
        what: &'static str,
        ptr: u64,
        len: u64,
        limit: u64,
        sink: &dyn HypercallSink,
    ) -> Result<Vec<u8>, i64> {
        if len > limit {
            sink.violation(
                vcpu,
                "hypercall",
                format!("{what} of {len} bytes exceeds the {limit}-byte limit"),
            );
            return Err(status::TOO_LARGE);
        }
        if !self.access.allows(ptr, len, Access::Read) {
            self.bad_pointer(vcpu, what, ptr, len, Access::Read, sink);
            return Err(status::BAD_POINTER);
        }
        let mut buf = vec![0u8; len as usize];
        if len > 0 {
            self.mem
                .read_slice(&mut buf, GuestAddress(ptr))
                .map_err(|_| status::BAD_POINTER)?;
        }
        Ok(buf)
    }

    fn bad_pointer(
        &self,
        vcpu: u32,
        what: &str,
        ptr: u64,
        len: u64,
        access: Access,
        sink: &dyn HypercallSink,
    ) {
        let verb = if access == Access::Read {
            "read"
        } else {
            "write"
        };
        sink.violation(
            vcpu,
            "hypercall",
            format!("{what} buffer {ptr:#x}+{len:#x} is outside memory the guest may {verb}"),
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records everything a dispatcher reports.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) console: RefCell<Vec<u8>>,
        pub(crate) violations: RefCell<Vec<String>>,
        pub(crate) calls: RefCell<Vec<usize>>,
    }

    impl HypercallSink for Recorder {
        fn console(&self, _: u32, bytes: &[u8]) {
            self.console.borrow_mut().extend_from_slice(bytes);
        }
        fn violation(&self, _: u32, control: &'static str, detail: String) {
            self.violations
                .borrow_mut()
                .push(format!("{control}: {detail}"));
        }
        fn count(&self, _: HypercallKind) {}
        fn host_fn_called(&self, index: usize) {
            self.calls.borrow_mut().push(index);
        }
    }

    pub(crate) use crate::fuzzing::{DATA, MAILBOX, RODATA};

    /// The small fuzzing guest with test host functions.
    pub(crate) fn dispatcher() -> Dispatcher {
        let (mem, access) = crate::fuzzing::small_guest();
        let mut functions = HostFunctions::default();
        functions
            .register("add", crate::host_fn::u64_adapter(|a| a.iter().sum()))
            .unwrap();
        functions
            .register("fail", |_| Err(HostFnError::new("nope")))
            .unwrap();
        functions
            .register("boom", |_| panic!("host function bug"))
            .unwrap();
        functions.register("big", |_| Ok(vec![7; 100])).unwrap();
        Dispatcher {
            zone: "test".into(),
            mem,
            mailboxes: MAILBOX,
            access,
            functions,
            host_threads: Vec::new(),
        }
    }

    pub(crate) fn call(d: &Dispatcher, nr: u32, args: [u64; 6], sink: &Recorder) -> Outcome {
        let words: Vec<u8> = args.iter().flat_map(|a| a.to_le_bytes()).collect();
        d.mem
            .write_slice(&words, GuestAddress(MAILBOX + 16))
            .unwrap();
        d.handle(0, nr, sink)
    }

    fn result_words(d: &Dispatcher) -> (i64, u64) {
        let s: i64 = d.mem.read_obj(GuestAddress(MAILBOX + 64)).unwrap();
        let v: u64 = d.mem.read_obj(GuestAddress(MAILBOX + 72)).unwrap();
        (s, v)
    }

    #[test]
    fn console_write_is_captured_and_bounds_checked() {
        let (d, rec) = (dispatcher(), Recorder::default());
        d.mem.write_slice(b"hello", GuestAddress(RODATA)).unwrap();
        assert_eq!(
            call(&d, 1, [RODATA, 5, 0, 0, 0, 0], &rec),
            ret(status::OK, 5)
        );
        assert_eq!(
            result_words(&d),
            (status::OK, 5),
            "written back to the mailbox"
        );
        assert_eq!(&*rec.console.borrow(), b"hello");
        assert_eq!(
            call(&d, 1, [zone_guest::abi::layout::GDT, 8, 0, 0, 0, 0], &rec),
            ret(status::BAD_POINTER, 0),
            "system area"
        );
        assert_eq!(
            call(&d, 1, [RODATA + 4000, 200, 0, 0, 0, 0], &rec),
            ret(status::BAD_POINTER, 0),
            "runs past the page"
        );
        assert_eq!(
            call(&d, 1, [RODATA, 1 << 20, 0, 0, 0, 0], &rec),
            ret(status::TOO_LARGE, 0)
        );
        assert_eq!(rec.violations.borrow().len(), 3);
    }

    #[test]
    fn host_calls_round_trip_and_refuse_what_was_not_granted() {
        let (d, rec) = (dispatcher(), Recorder::default());
        d.mem.write_slice(b"add", GuestAddress(RODATA)).unwrap();
        let input: Vec<u8> = [2u64, 40].iter().flat_map(|a| a.to_le_bytes()).collect();
        d.mem.write_slice(&input, GuestAddress(DATA)).unwrap();
        let out = DATA + 0x100;
        assert_eq!(
            call(&d, 4, [RODATA, 3, DATA, 16, out, 8], &rec),
            ret(status::OK, 8)
        );
        assert_eq!(d.mem.read_obj::<u64>(GuestAddress(out)).unwrap(), 42);
        assert_eq!(&*rec.calls.borrow(), &[0]);

        d.mem
            .write_slice(b"rm -rf", GuestAddress(RODATA + 16))
            .unwrap();
        assert_eq!(
            call(&d, 4, [RODATA + 16, 6, 0, 0, out, 8], &rec),
            ret(status::UNKNOWN_FUNCTION, 0)
        );
        assert!(
            rec.violations
                .borrow()
                .last()
                .unwrap()
                .contains("\"rm -rf\"")
        );
        // Output into read-only memory is refused before the function runs.
        assert_eq!(
            call(&d, 4, [RODATA, 3, DATA, 16, RODATA + 64, 8], &rec),
            ret(status::BAD_POINTER, 0)
        );
        assert_eq!(rec.calls.borrow().len(), 1);
    }

    #[test]
    fn host_errors_panics_and_short_buffers_are_statuses() {
        let (d, rec) = (dispatcher(), Recorder::default());
        for (i, name) in ["fail", "boom", "big"].iter().enumerate() {
            d.mem
                .write_slice(name.as_bytes(), GuestAddress(RODATA + 16 * i as u64))
                .unwrap();
        }
        assert_eq!(
            call(&d, 4, [RODATA, 4, 0, 0, DATA, 8], &rec),
            ret(status::HOST_ERROR, 0)
        );
        assert_eq!(
            call(&d, 4, [RODATA + 16, 4, 0, 0, DATA, 8], &rec),
            ret(status::HOST_ERROR, 0)
        );
        assert_eq!(
            call(&d, 4, [RODATA + 32, 3, 0, 0, DATA, 8], &rec),
            ret(status::OUTPUT_TOO_SMALL, 100)
        );
        assert_eq!(
            call(&d, 4, [RODATA + 32, 3, 0, 0, DATA, 100], &rec),
            ret(status::OK, 100)
        );
    }

    #[test]
    fn exit_panic_idle_and_unknown_numbers() {
        let (d, rec) = (dispatcher(), Recorder::default());
        assert_eq!(
            call(&d, 2, [u64::from(u32::MAX - 2), 0, 0, 0, 0, 0], &rec),
            Outcome::Stop(ZoneExit::Exited(-3))
        );
        d.mem.write_slice(b"oops", GuestAddress(DATA)).unwrap();
        assert_eq!(
            call(&d, 3, [DATA, 4, 0, 0, 0, 0], &rec),
            Outcome::Stop(ZoneExit::Panicked("oops".into()))
        );
        assert_eq!(
            call(&d, 3, [0xdead_0000, 4, 0, 0, 0, 0], &rec),
            Outcome::Stop(ZoneExit::Panicked("<panic message not readable>".into()))
        );
        assert_eq!(call(&d, 5, [0; 6], &rec), Outcome::Idle);
        assert_eq!(
            call(&d, 99, [0; 6], &rec),
            ret(status::UNKNOWN_HYPERCALL, 0)
        );
    }

    proptest::proptest! {
        /// Arbitrary requests never panic, and the host writes guest memory only inside writable
        /// spans (mailbox results and granted output buffers).
        #[test]
        fn arbitrary_requests_write_only_where_allowed(nr in 0u32..8, args in proptest::array::uniform6(proptest::num::u64::ANY)) {
            let (d, rec) = (dispatcher(), Recorder::default());
            let size = vm_memory::GuestMemoryBackend::last_addr(&d.mem).0 as usize + 1;
            let before: Vec<u8> = {
                let mut v = vec![0u8; size];
                d.mem.read_slice(&mut v, GuestAddress(0)).unwrap();
                v
            };
            let _ = call(&d, nr, args, &rec);
            let mut after = vec![0u8; size];
            d.mem.read_slice(&mut after, GuestAddress(0)).unwrap();
            for (page, (a, b)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
                if a == b {
                    continue;
                }
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    let addr = (page * 4096 + i) as u64;
                    proptest::prop_assert!(x == y || d.access.allows(addr, 1, Access::Write), "wrote {addr:#x}");
                }
            }
        }
    }
}
