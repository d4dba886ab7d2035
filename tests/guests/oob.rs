//! Lies in hypercall arguments: pointers outside guest memory, into the supervisor-only system
//! area and page tables, into its own code (for output), into the stack guard page, lengths over
//! the limits, wrapping ranges and unknown hypercall numbers. Sends every status to `report` and
//! keeps running: a refused request must return an error, not end the zone.
#![no_std]
#![no_main]

use zone_guest::abi::{Hypercall, layout};

zone_guest::entry!(main);

static NAME: &[u8] = b"report";

fn console(ptr: u64, len: u64) -> i64 {
    zone_guest::hypercall(Hypercall::ConsoleWrite, [ptr, len, 0, 0, 0, 0])[0] as i64
}

fn host(name: u64, name_len: u64, input: u64, input_len: u64, out: u64, out_cap: u64) -> i64 {
    zone_guest::hypercall(Hypercall::HostCall, [name, name_len, input, input_len, out, out_cap])[0] as i64
}

fn main() -> i32 {
    let mem = zone_guest::memory_size();
    let valid = NAME.as_ptr() as u64;
    let code = main as usize as u64;
    let mut buf = [0u8; 16];
    let out = buf.as_mut_ptr() as u64;
    // The guard page below vCPU 0's stack (default 256 KiB), whose top is the boot-info page
    // right below vCPU 0's mailbox.
    let stack_top = zone_guest::mailbox_address(0) - 4096;
    let guard = stack_top - (256 << 10) - 4096;
    let statuses: [i64; 12] = [
        console(0xdead_0000_0000, 16),
        console(layout::GDT, 8),
        console(layout::PAGE_TABLES, 8),
        console(valid, 1 << 20),
        console(mem - 8, 16),
        console(u64::MAX - 4, 16),
        host(0xdead_0000, 6, 0, 0, out, 16),
        host(valid, NAME.len() as u64, 0, 0, code, 16),
        host(valid, NAME.len() as u64, guard, 8, out, 16),
        zone_guest::raw_hypercall(77, [0; 6])[0] as i64,
        host(valid, 0, 0, 0, out, 16),
        console(valid, 0),
    ];
    let mut bytes = [0u8; 96];
    for (i, s) in statuses.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&s.to_le_bytes());
    }
    let _ = zone_guest::call("report", &bytes, &mut []);
    0
}
