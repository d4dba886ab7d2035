//! Faults on purpose, selected by the first argument. Before faulting it tells the host (host
//! function `expect`) the address of the instruction that will fault and, for page faults, the
//! address it will touch.
#![no_std]
#![no_main]

use core::arch::global_asm;

global_asm!(
    ".globl fault_ud", "fault_ud: ud2",
    ".globl fault_read_null", "fault_read_null: mov rax, qword ptr [0]", "ret",
    ".globl fault_write_code", "fault_write_code: mov qword ptr [rip + fault_write_code], rax", "ret",
    ".globl fault_cli", "fault_cli: cli", "ret",
    ".globl fault_hlt", "fault_hlt: hlt", "ret",
    ".globl fault_port", "fault_port: out 0x80, al", "ret",
    ".globl fault_div", "fault_div: xor edx, edx", "xor eax, eax", "xor ecx, ecx",
    ".globl fault_div_insn", "fault_div_insn: div ecx", "ret",
    ".globl fault_int3", "fault_int3: int3", "ret",
    ".globl fault_syscall", "fault_syscall: syscall", "ret",
    ".globl fault_system_area", "fault_system_area: mov rax, qword ptr [0x1000]", "ret",
);

unsafe extern "C" {
    fn fault_ud();
    fn fault_read_null();
    fn fault_write_code();
    fn fault_cli();
    fn fault_hlt();
    fn fault_port();
    fn fault_div();
    fn fault_div_insn();
    fn fault_int3();
    fn fault_syscall();
    fn fault_system_area();
}

static mut DATA_CODE: [u8; 16] = [0xc3; 16];

zone_guest::entry!(main);

fn expect(rip: u64, addr: u64) {
    zone_guest::call_u64("expect", &[rip, addr]).expect("expect host function");
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[3]
}

fn main() -> i32 {
    let mode = zone_guest::args().next().unwrap_or(b"");
    // SAFETY (all arms): each routine faults by design; the host ends the zone at the fault.
    unsafe {
        match mode {
            b"ud" => { expect(fault_ud as u64, 0); fault_ud() }
            b"read-null" => { expect(fault_read_null as u64, 0); fault_read_null() }
            b"write-code" => { expect(fault_write_code as u64, fault_write_code as u64); fault_write_code() }
            b"cli" => { expect(fault_cli as u64, 0); fault_cli() }
            b"hlt" => { expect(fault_hlt as u64, 0); fault_hlt() }
            b"port" => { expect(fault_port as u64, 0); fault_port() }
            b"div" => { expect(fault_div_insn as u64, 0); fault_div() }
            b"int3" => { expect(fault_int3 as u64, 0); fault_int3() }
            b"syscall" => { expect(fault_syscall as u64, 0); fault_syscall() }
            b"system-area" => { expect(fault_system_area as u64, 0x1000); fault_system_area() }
            b"exec-data" => {
                let at = core::ptr::addr_of!(DATA_CODE) as u64;
                expect(at, at);
                let f: extern "C" fn() = core::mem::transmute(at);
                f()
            }
            b"stack-overflow" => {
                expect(0, 0);
                return recurse(0) as i32;
            }
            _ => return 2,
        }
    }
    1
}
