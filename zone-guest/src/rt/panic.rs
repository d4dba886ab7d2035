//! The panic handler: formats the message into a fixed buffer (no allocation) and reports it to
//! the host, which ends the zone with `ZoneExit::Panicked`.

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write as _;
    struct Buf {
        bytes: [u8; 512],
        len: usize,
    }
    impl core::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.bytes.len() - self.len);
            self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
    let mut buf = Buf {
        bytes: [0; 512],
        len: 0,
    };
    let _ = write!(buf, "{info}");
    super::hypercall(
        crate::abi::Hypercall::Panic,
        [buf.bytes.as_ptr() as u64, buf.len as u64, 0, 0, 0, 0],
    );
    super::exit(101)
}

/// The standard library for this target is built with unwinding, so `alloc` references the
/// personality routine. Guests are compiled with `panic=abort` and never unwind: this symbol is
/// never called.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
