//! The guest-side runtime (feature `runtime`): entry point, hypercall wrappers, console,
//! host calls, panic handler, global allocator and the memory functions a `no_std` static
//! binary needs.
//!
//! A guest program is a `#![no_std] #![no_main]` binary that names its entry with [`entry!`]:
//! ```ignore
//! #![no_std]
//! #![no_main]
//! zone_guest::entry!(main);
//! fn main() -> i32 {
//!     zone_guest::println!("6 * 7 = {}", 6 * 7);
//!     0
//! }
//! ```

mod alloc_impl;
mod console;
mod host;
mod mem;
mod panic;
mod start;

pub use alloc_impl::heap_used;
pub use console::{Console, write as console_write};
pub use host::{HostCallError, call, call_u64};
pub use start::{
    ExitCode, args, exit, heap_bounds, idle, mailbox_address, memory_size, vcpu_count, vcpu_index,
};

use crate::abi::{Hypercall, mailbox};
use core::arch::asm;

/// Performs a hypercall: writes `args` into this vCPU's mailbox, traps to the host and returns
/// the two result words.
pub fn hypercall(nr: Hypercall, args: [u64; 6]) -> [u64; 2] {
    raw_hypercall(nr as u32, args)
}

/// Like [`hypercall`] with any number, including ones the host does not know (it answers
/// `status::UNKNOWN_HYPERCALL`).
pub fn raw_hypercall(nr: u32, args: [u64; 6]) -> [u64; 2] {
    let mb = mailbox_ptr();
    // SAFETY: the host maps this vCPU's mailbox page user read-write and points FS at it; the
    // argument and result words lie inside that page. The `out` to the hypercall port is the one
    // I/O operation the TSS bitmap grants; the asm block is a compiler barrier (it may touch
    // memory), so the argument stores happen before it and the result loads after it.
    unsafe {
        for (i, arg) in args.iter().enumerate() {
            mb.add(mailbox::ARGS + i).write_volatile(*arg);
        }
        asm!("out dx, eax", in("dx") crate::abi::HYPERCALL_PORT, in("eax") nr,
             options(nostack, preserves_flags));
        [
            mb.add(mailbox::RET0).read_volatile(),
            mb.add(mailbox::RET1).read_volatile(),
        ]
    }
}

fn mailbox_ptr() -> *mut u64 {
    let ptr: u64;
    // SAFETY: reads the first word of the FS segment, which the host sets to this vCPU's mailbox
    // whose first word holds its own address.
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags));
    }
    ptr as *mut u64
}

/// Declares the guest program's entry points.
///
/// `entry!(main)` runs `main` on vCPU 0; other vCPUs go idle. `entry!(main, secondary)` also runs
/// `secondary(index)` on every other vCPU. `main` may return `()`, `i32` or `Result<(), E: Debug>`;
/// its value becomes the zone's exit code.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        extern "Rust" fn __zone_guest_main() -> i32 {
            $crate::rt::ExitCode::code($main())
        }
        #[unsafe(no_mangle)]
        extern "Rust" fn __zone_guest_secondary(_vcpu: u32) {}
    };
    ($main:path, $secondary:path) => {
        #[unsafe(no_mangle)]
        extern "Rust" fn __zone_guest_main() -> i32 {
            $crate::rt::ExitCode::code($main())
        }
        #[unsafe(no_mangle)]
        extern "Rust" fn __zone_guest_secondary(vcpu: u32) {
            $secondary(vcpu)
        }
    };
}

/// Prints to the zone's console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut console = $crate::rt::Console::new();
        let _ = core::write!(console, $($arg)*);
    }};
}

/// Prints to the zone's console, with a newline.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut console = $crate::rt::Console::new();
        let _ = core::writeln!(console, $($arg)*);
    }};
}
