//! Process entry, exit, and what the host told the program at boot.

use super::hypercall;
use crate::abi::{BOOT_MAGIC, Hypercall, boot_info, layout, mailbox};
use core::arch::global_asm;

// The host starts every vCPU here at CPL3 with RSP at the top of its stack, RDI = vCPU index and
// RSI = boot-info address.
global_asm!(
    ".section .text._start,\"ax\",@progbits",
    ".globl _start",
    "_start:",
    "and rsp, -16",
    "xor ebp, ebp",
    "call {start}",
    "ud2",
    start = sym rt_start,
);

unsafe extern "Rust" {
    fn __zone_guest_main() -> i32;
    fn __zone_guest_secondary(vcpu: u32);
}

extern "C" fn rt_start(vcpu: u64, _boot_info: u64) -> ! {
    if vcpu == 0 {
        // SAFETY: defined by the program's `entry!` invocation with this exact signature.
        let code = unsafe { __zone_guest_main() };
        exit(code)
    }
    // SAFETY: as above.
    unsafe { __zone_guest_secondary(vcpu as u32) };
    idle()
}

/// Ends the zone with `ZoneExit::Exited(code)`.
pub fn exit(code: i32) -> ! {
    hypercall(Hypercall::Exit, [code as u32 as u64, 0, 0, 0, 0, 0]);
    unreachable_after_stop()
}

/// Stops this vCPU without ending the zone. When every vCPU is idle the zone ends with exit code 0.
pub fn idle() -> ! {
    hypercall(Hypercall::Idle, [0; 6]);
    unreachable_after_stop()
}

fn unreachable_after_stop() -> ! {
    // The host never resumes a vCPU after exit, panic or idle. Should it, trap.
    loop {
        // SAFETY: `ud2` raises #UD, which the host reports as a fault; it touches no memory.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}

fn boot_word(offset: u64) -> u64 {
    // SAFETY: the mailbox page is this vCPU's and the host wrote the boot-info address there.
    let page = unsafe { super::mailbox_ptr().add(mailbox::BOOT_INFO).read_volatile() };
    let ptr = (page + offset) as *const u64;
    // SAFETY: the host maps the boot-info page user-readable and writes it before any vCPU runs.
    unsafe { ptr.read_volatile() }
}

/// The address of vCPU `vcpu`'s mailbox page (a program uses its own through [`hypercall`]; a
/// test of the host may want another's).
pub fn mailbox_address(vcpu: u32) -> u64 {
    boot_word(boot_info::MAILBOXES) + u64::from(vcpu) * crate::abi::PAGE_SIZE
}

fn boot_info_valid() -> bool {
    boot_word(boot_info::MAGIC) == BOOT_MAGIC
}

/// This vCPU's index (0 for the vCPU that runs `main`).
pub fn vcpu_index() -> u32 {
    // SAFETY: the mailbox page is this vCPU's and the host wrote its index there.
    unsafe { super::mailbox_ptr().add(mailbox::VCPU).read_volatile() as u32 }
}

/// Number of vCPUs in this zone.
pub fn vcpu_count() -> u32 {
    if boot_info_valid() {
        boot_word(boot_info::VCPUS) as u32
    } else {
        1
    }
}

/// Guest memory size in bytes.
pub fn memory_size() -> u64 {
    boot_word(boot_info::MEM_SIZE)
}

/// The heap region `[start, end)` the host reserved for this program.
pub fn heap_bounds() -> (u64, u64) {
    if !boot_info_valid() {
        return (0, 0);
    }
    (
        boot_word(boot_info::HEAP_START),
        boot_word(boot_info::HEAP_END),
    )
}

/// The program's arguments, as given to `GuestProgram::arg` on the host.
pub fn args() -> impl Iterator<Item = &'static [u8]> {
    let (ptr, len) = if boot_info_valid() {
        (
            boot_word(boot_info::ARGS_PTR),
            boot_word(boot_info::ARGS_LEN).min(layout::ARGS_MAX),
        )
    } else {
        (0, 0)
    };
    let block: &'static [u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the host maps the argument block user-readable for the zone's lifetime and
        // bounds its length by ARGS_MAX (re-checked above).
        unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) }
    };
    block.split(|b| *b == 0).filter(|_| !block.is_empty())
}

/// What `main` may return.
pub trait ExitCode {
    /// The zone exit code for this value.
    fn code(self) -> i32;
}

impl ExitCode for () {
    fn code(self) -> i32 {
        0
    }
}

impl ExitCode for i32 {
    fn code(self) -> i32 {
        self
    }
}

impl<E: core::fmt::Debug> ExitCode for Result<(), E> {
    fn code(self) -> i32 {
        match self {
            Ok(()) => 0,
            Err(e) => {
                crate::println!("error: {e:?}");
                1
            }
        }
    }
}
