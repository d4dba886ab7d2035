//! The micro-zone ABI shared by the host (zone-core) and guest programs (this crate's runtime).
//!
//! Everything a guest and the host must agree on lives here and nowhere else: the memory layout
//! the host builds, the hypercall ports and numbers, the mailbox and boot-info layouts, status
//! codes and limits. Guest memory is identity mapped: a guest virtual address equals its guest
//! physical address.
//!
//! # Hypercall convention
//! A guest writes up to six 64-bit arguments into its vCPU's [`mailbox`] (the FS segment
//! base points at it) and executes `out dx, eax` with `dx = HYPERCALL_PORT` and `eax` = the
//! [`Hypercall`] number. The host reads the arguments from guest memory, performs the call and
//! writes two result words into the mailbox before the guest resumes. The port is the only one the
//! guest's TSS I/O permission bitmap opens; every other port faults (#GP) at CPL3.

/// The I/O port a guest writes to make a hypercall (`out dx, eax`, eax = [`Hypercall`] number).
pub const HYPERCALL_PORT: u16 = 0xE0;
/// The I/O port the host's CPL0 exception stubs write to report a fault. Not open to CPL3.
pub const FAULT_PORT: u16 = 0xF0;
/// Guest page size.
pub const PAGE_SIZE: u64 = 0x1000;
/// Largest number of vCPUs a micro zone may have.
pub const MAX_VCPUS: u32 = 64;

/// Fixed guest-physical layout of a micro zone (identity mapped).
///
/// The boot-info page (user, read-only) and the per-vCPU hypercall mailboxes (one page each,
/// user, read-write, no-execute) have no fixed place: they sit right above vCPU 0's stack, so
/// that a program's first run finds them in one run of pages with its stack. The host passes
/// the boot-info address in `rsi` at entry and in every mailbox ([`mailbox::BOOT_INFO`]), each
/// vCPU's mailbox as its FS base, and vCPU 0's mailbox in the boot info
/// ([`boot_info::MAILBOXES`]; vCPU i's is i pages higher).
pub mod layout {
    /// Global descriptor table (supervisor, read-only).
    pub const GDT: u64 = 0x1000;
    /// Interrupt descriptor table (supervisor, read-only).
    pub const IDT: u64 = 0x2000;
    /// Per-vCPU task state segments with their I/O permission bitmaps (supervisor, read-only).
    pub const TSS: u64 = 0x3000;
    /// Bytes reserved per vCPU TSS.
    pub const TSS_STRIDE: u64 = 256;
    /// CPL0 exception stubs, one per vector (supervisor, read + execute).
    pub const STUBS: u64 = 0x7000;
    /// Bytes per exception stub.
    pub const STUB_STRIDE: u64 = 16;
    /// Program arguments that do not fit in the boot-info page (user, read-only): a block of
    /// at most [`boot_info::INLINE_ARGS_MAX`](super::boot_info::INLINE_ARGS_MAX) bytes sits in
    /// the boot-info page instead. Either way `boot_info::ARGS_PTR` says where.
    pub const ARGS: u64 = 0x10000;
    /// Largest argument block in bytes.
    pub const ARGS_MAX: u64 = 0x10000;
    /// Per-vCPU CPL0 stacks for exception delivery, one page each (supervisor, no-execute).
    pub const KERNEL_STACKS: u64 = 0x60000;
    /// Page tables (not mapped into the guest's address space at all).
    pub const PAGE_TABLES: u64 = 0x100000;
    /// End of the page-table area.
    pub const PAGE_TABLES_END: u64 = 0x200000;
    /// Lowest address a guest program may load at (link address of the zone-guest script).
    pub const IMAGE_BASE: u64 = 0x400000;
}

/// Word offsets inside a vCPU's mailbox page.
pub mod mailbox {
    /// The mailbox's own address (so `fs:[0]` yields a pointer). Written by the host.
    pub const SELF_PTR: usize = 0;
    /// The vCPU index. Written by the host.
    pub const VCPU: usize = 1;
    /// First of six argument words. Written by the guest.
    pub const ARGS: usize = 2;
    /// Number of argument words.
    pub const NARGS: usize = 6;
    /// First result word: a [`status`](super::status) code. Written by the host.
    pub const RET0: usize = 8;
    /// Second result word: a call-specific value. Written by the host.
    pub const RET1: usize = 9;
    /// The boot-info page's address. Written by the host.
    pub const BOOT_INFO: usize = 10;
}

/// Hypercall numbers (`eax` at the `out`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// `(ptr, len)`: append bytes to the zone's console. RET0 = status.
    ConsoleWrite = 1,
    /// `(code)`: end the zone with `ZoneExit::Exited(code)`. Does not return.
    Exit = 2,
    /// `(ptr, len)`: end the zone with `ZoneExit::Panicked` and that message. Does not return.
    Panic = 3,
    /// `(name_ptr, name_len, in_ptr, in_len, out_ptr, out_cap)`: call a host function the
    /// embedder registered by name. RET0 = status, RET1 = output length (or the length needed
    /// when the status is [`status::OUTPUT_TOO_SMALL`]).
    HostCall = 4,
    /// `()`: this vCPU has no more work; it stops without ending the zone. Does not return.
    Idle = 5,
}

impl Hypercall {
    /// Decodes a hypercall number.
    pub fn from_u32(nr: u32) -> Option<Self> {
        Some(match nr {
            1 => Self::ConsoleWrite,
            2 => Self::Exit,
            3 => Self::Panic,
            4 => Self::HostCall,
            5 => Self::Idle,
            _ => return None,
        })
    }
}

/// Status codes returned in RET0 (as `i64` bit patterns).
pub mod status {
    /// Success.
    pub const OK: i64 = 0;
    /// No host function with that name is registered for this zone.
    pub const UNKNOWN_FUNCTION: i64 = -1;
    /// A pointer/length pair is not inside memory the guest may access that way.
    pub const BAD_POINTER: i64 = -2;
    /// A length exceeds the [`limits`](super::limits).
    pub const TOO_LARGE: i64 = -3;
    /// The output buffer is too small; RET1 holds the length needed. The call did run.
    pub const OUTPUT_TOO_SMALL: i64 = -4;
    /// The host function returned an error.
    pub const HOST_ERROR: i64 = -5;
    /// Unknown hypercall number.
    pub const UNKNOWN_HYPERCALL: i64 = -6;
}

/// Bounds the host enforces on hypercall arguments.
pub mod limits {
    /// Longest host-function name in bytes.
    pub const MAX_NAME: u64 = 64;
    /// Largest host-call input in bytes.
    pub const MAX_INPUT: u64 = 1 << 20;
    /// Largest host-call output in bytes.
    pub const MAX_OUTPUT: u64 = 1 << 20;
    /// Largest single console write in bytes.
    pub const MAX_CONSOLE_WRITE: u64 = 64 << 10;
}

/// Byte offsets inside the boot-info page (its address: [`mailbox::BOOT_INFO`]).
pub mod boot_info {
    /// `u64`: [`MAGIC`](super::BOOT_MAGIC).
    pub const MAGIC: u64 = 0;
    /// `u64`: number of vCPUs.
    pub const VCPUS: u64 = 8;
    /// `u64`: guest memory size in bytes.
    pub const MEM_SIZE: u64 = 16;
    /// `u64`: first heap byte.
    pub const HEAP_START: u64 = 24;
    /// `u64`: one past the last heap byte.
    pub const HEAP_END: u64 = 32;
    /// `u64`: address of the argument block.
    pub const ARGS_PTR: u64 = 40;
    /// `u64`: length of the argument block (arguments separated by NUL bytes).
    pub const ARGS_LEN: u64 = 48;
    /// `u64`: address of vCPU 0's mailbox page; vCPU i's is i pages higher.
    pub const MAILBOXES: u64 = 56;
    /// Where in the boot-info page an argument block that fits is placed: a program's first
    /// run then touches one page fewer.
    pub const INLINE_ARGS: u64 = 0x100;
    /// The largest argument block placed in the boot-info page.
    pub const INLINE_ARGS_MAX: u64 = super::PAGE_SIZE - INLINE_ARGS;
}

/// Value of the boot-info magic word ("ZONEBOOT").
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"ZONEBOOT");
