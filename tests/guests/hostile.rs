//! A hostile guest, one behaviour per mode (first argument; a count as the second where the mode
//! takes one):
//! - `calls N`: N calls of host function `tick`; exits 0.
//! - `refused N`: N calls of host function `forbidden`, which the zone was not granted; exits 0
//!   when every one was refused as unknown.
//! - `flood MIB`: MIB MiB of console output in 64 KiB writes; exits 0.
//! - `int N`: executes `int N` after announcing it (`expect`); faults.
//! - `priv NAME`: executes one privileged instruction after announcing it; faults.
//! - `race`: every vCPU makes console writes through its own mailbox while scribbling over the
//!   next vCPU's mailbox arguments; vCPU 0 reports the statuses (`report`) and exits 0.
//! - `fill`: fills the heap with 0xA5; exits 0.
//! - `scan`: reads the whole heap and reports (`found`) the first non-zero byte; exits with
//!   the number of pages that were not zero (0: fresh memory is clean).
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use zone_guest::abi::{Hypercall, PAGE_SIZE, layout, mailbox, status};

// 256 stubs `int N; ret`, 4 bytes apart.
global_asm!(
    ".globl int_table",
    ".balign 16",
    "int_table:",
    ".set n, 0",
    ".rept 256",
    ".byte 0xcd, n",
    "ret",
    "nop",
    ".set n, n + 1",
    ".endr",
);

// Privileged instructions, one per routine, each at its symbol.
global_asm!(
    ".globl p_cli", "p_cli: cli", "ret",
    ".globl p_sti", "p_sti: sti", "ret",
    ".globl p_hlt", "p_hlt: hlt", "ret",
    ".globl p_in", "p_in: in al, 0x80", "ret",
    ".globl p_out", "p_out: out 0x80, al", "ret",
    ".globl p_read_cr0", "p_read_cr0: mov rax, cr0", "ret",
    ".globl p_write_cr3", "p_write_cr3: xor eax, eax", ".globl p_write_cr3_insn", "p_write_cr3_insn: mov cr3, rax", "ret",
    ".globl p_read_dr7", "p_read_dr7: mov rax, dr7", "ret",
    ".globl p_lgdt", "p_lgdt: lgdt [rsp - 16]", "ret",
    ".globl p_lidt", "p_lidt: lidt [rsp - 16]", "ret",
    ".globl p_lldt", "p_lldt: xor eax, eax", ".globl p_lldt_insn", "p_lldt_insn: lldt ax", "ret",
    ".globl p_ltr", "p_ltr: xor eax, eax", ".globl p_ltr_insn", "p_ltr_insn: ltr ax", "ret",
    ".globl p_rdmsr", "p_rdmsr: mov ecx, 0x10", ".globl p_rdmsr_insn", "p_rdmsr_insn: rdmsr", "ret",
    ".globl p_wrmsr", "p_wrmsr: mov ecx, 0xc0000080", "xor eax, eax", "xor edx, edx", ".globl p_wrmsr_insn", "p_wrmsr_insn: wrmsr", "ret",
    ".globl p_invlpg", "p_invlpg: invlpg [rsp]", "ret",
    ".globl p_wbinvd", "p_wbinvd: wbinvd", "ret",
    ".globl p_invd", "p_invd: invd", "ret",
    ".globl p_clts", "p_clts: clts", "ret",
    ".globl p_lmsw", "p_lmsw: xor eax, eax", ".globl p_lmsw_insn", "p_lmsw_insn: lmsw ax", "ret",
    ".globl p_swapgs", "p_swapgs: swapgs", "ret",
    ".globl p_rdpmc", "p_rdpmc: xor ecx, ecx", ".globl p_rdpmc_insn", "p_rdpmc_insn: rdpmc", "ret",
);

unsafe extern "C" {
    static int_table: u8;
    fn p_cli();
    fn p_sti();
    fn p_hlt();
    fn p_in();
    fn p_out();
    fn p_read_cr0();
    fn p_write_cr3();
    fn p_write_cr3_insn();
    fn p_read_dr7();
    fn p_lgdt();
    fn p_lidt();
    fn p_lldt();
    fn p_lldt_insn();
    fn p_ltr();
    fn p_ltr_insn();
    fn p_rdmsr();
    fn p_rdmsr_insn();
    fn p_wrmsr();
    fn p_wrmsr_insn();
    fn p_invlpg();
    fn p_wbinvd();
    fn p_invd();
    fn p_clts();
    fn p_lmsw();
    fn p_lmsw_insn();
    fn p_swapgs();
    fn p_rdpmc();
    fn p_rdpmc_insn();
}

zone_guest::entry!(main, secondary);

fn number(arg: Option<&[u8]>) -> u64 {
    arg.unwrap_or(b"0")
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'))
}

fn expect(rip: u64) {
    zone_guest::call_u64("expect", &[rip]).expect("expect host function");
}

/// `(routine, the faulting instruction)` of privileged instruction `name`.
fn privileged(name: &[u8]) -> Option<(unsafe extern "C" fn(), u64)> {
    let same = |f: unsafe extern "C" fn()| Some((f, f as usize as u64));
    let at = |f: unsafe extern "C" fn(), insn: unsafe extern "C" fn()| Some((f, insn as usize as u64));
    match name {
        b"cli" => same(p_cli),
        b"sti" => same(p_sti),
        b"hlt" => same(p_hlt),
        b"in" => same(p_in),
        b"out" => same(p_out),
        b"read-cr0" => same(p_read_cr0),
        b"write-cr3" => at(p_write_cr3, p_write_cr3_insn),
        b"read-dr7" => same(p_read_dr7),
        b"lgdt" => same(p_lgdt),
        b"lidt" => same(p_lidt),
        b"lldt" => at(p_lldt, p_lldt_insn),
        b"ltr" => at(p_ltr, p_ltr_insn),
        b"rdmsr" => at(p_rdmsr, p_rdmsr_insn),
        b"wrmsr" => at(p_wrmsr, p_wrmsr_insn),
        b"invlpg" => same(p_invlpg),
        b"wbinvd" => same(p_wbinvd),
        b"invd" => same(p_invd),
        b"clts" => same(p_clts),
        b"lmsw" => at(p_lmsw, p_lmsw_insn),
        b"swapgs" => same(p_swapgs),
        b"rdpmc" => at(p_rdpmc, p_rdpmc_insn),
        _ => None,
    }
}

fn calls(n: u64) -> i32 {
    for i in 0..n {
        if zone_guest::call_u64("tick", &[i]).is_err() {
            return 1;
        }
    }
    0
}

fn refused(n: u64) -> i32 {
    let mut out = [0u8; 8];
    for _ in 0..n {
        if zone_guest::call("forbidden", &[], &mut out) != Err(zone_guest::HostCallError::UnknownFunction) {
            return 1;
        }
    }
    0
}

fn flood(mib: u64) -> i32 {
    let chunk = [b'x'; 64 << 10];
    for _ in 0..mib * 16 {
        if zone_guest::console_write(&chunk) != status::OK {
            return 1;
        }
    }
    0
}

// --- race: console writes through mailboxes another vCPU scribbles over ---

/// Calls each vCPU makes.
const RACE_CALLS: u64 = 2000;
static DONE: AtomicU32 = AtomicU32::new(0);
/// Statuses seen, all vCPUs: OK, BAD_POINTER, TOO_LARGE, anything else; then the bytes the host
/// said it accepted (RET1 of the OK calls).
static SEEN: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static MESSAGE: [u8; 64] = [b'r'; 64];

fn mailbox_of(vcpu: u32) -> *mut u64 {
    zone_guest::mailbox_address(vcpu) as *mut u64
}

fn race(vcpu: u32) {
    let n = zone_guest::vcpu_count();
    let victim = mailbox_of((vcpu + 1) % n);
    let good = MESSAGE.as_ptr() as u64;
    let lies = [
        (good, 64),
        (good, 1 << 40),
        (0xdead_0000_0000, 8),
        (layout::PAGE_TABLES, 8),
        (good, 1),
    ];
    for i in 0..RACE_CALLS {
        // Scribble over the next vCPU's argument words, which it may be using right now.
        let (p, l) = lies[(i % lies.len() as u64) as usize];
        // SAFETY: mailboxes are user read-write pages of this zone; racing on them is the point
        // (volatile: every store happens).
        unsafe {
            victim.add(mailbox::ARGS).write_volatile(p);
            victim.add(mailbox::ARGS + 1).write_volatile(l);
        }
        let ret = zone_guest::hypercall(Hypercall::ConsoleWrite, [good, 1 + i % 64, 0, 0, 0, 0]);
        let slot = match ret[0] as i64 {
            status::OK => 0,
            status::BAD_POINTER => 1,
            status::TOO_LARGE => 2,
            _ => 3,
        };
        SEEN[slot].fetch_add(1, Ordering::SeqCst);
        if slot == 0 {
            SEEN[4].fetch_add(ret[1], Ordering::SeqCst);
        }
    }
    DONE.fetch_add(1, Ordering::SeqCst);
}

fn race_main() -> i32 {
    race(0);
    while DONE.load(Ordering::SeqCst) < zone_guest::vcpu_count() {
        core::hint::spin_loop();
    }
    let mut report = [0u8; 40];
    for (i, s) in SEEN.iter().enumerate() {
        report[i * 8..i * 8 + 8].copy_from_slice(&s.load(Ordering::SeqCst).to_le_bytes());
    }
    let _ = zone_guest::call("report", &report, &mut []);
    0
}

fn secondary(vcpu: u32) {
    if zone_guest::args().next() == Some(b"race") {
        race(vcpu);
    }
}

// --- fresh memory ---

fn fill() -> i32 {
    let (start, end) = zone_guest::heap_bounds();
    // SAFETY: the heap range is this program's read-write memory, unused by the allocator yet.
    unsafe { core::ptr::write_bytes(start as *mut u8, 0xa5, (end - start) as usize) };
    0
}

fn scan() -> i32 {
    let (start, end) = zone_guest::heap_bounds();
    let mut dirty = 0;
    let mut first = None;
    let mut page = start;
    while page < end {
        let len = PAGE_SIZE.min(end - page) as usize;
        // SAFETY: the heap range is mapped read-write for the program and nothing uses it yet.
        let bytes = unsafe { core::slice::from_raw_parts(page as *const u8, len) };
        if let Some(i) = bytes.iter().position(|b| *b != 0) {
            dirty += 1;
            first.get_or_insert(page + i as u64);
        }
        page += PAGE_SIZE;
    }
    if let Some(at) = first {
        let _ = zone_guest::call_u64("found", &[at]);
    }
    dirty
}

fn main() -> i32 {
    let mut args = zone_guest::args();
    let mode = args.next().unwrap_or(b"");
    let arg = args.next();
    match mode {
        b"calls" => calls(number(arg)),
        b"refused" => refused(number(arg)),
        b"flood" => flood(number(arg)),
        b"race" => race_main(),
        b"fill" => fill(),
        b"scan" => scan(),
        b"int" => {
            let n = number(arg) & 0xff;
            // SAFETY: the table holds 256 four-byte `int N; ret` stubs.
            let stub = unsafe { core::ptr::addr_of!(int_table) as u64 + 4 * n };
            expect(stub);
            // SAFETY: calling a stub; it faults by design (the host ends the zone), or returns.
            let f: extern "C" fn() = unsafe { core::mem::transmute(stub) };
            f();
            1
        }
        b"priv" => match arg.and_then(privileged) {
            Some((routine, insn)) => {
                expect(insn);
                // SAFETY: the routine executes one privileged instruction; it faults by design.
                unsafe { routine() };
                1
            }
            None => 2,
        },
        _ => 2,
    }
}
