//! Uses the heap hard (many sizes and alignments, frees and reallocations) and checks the data
//! survives. Exits 0 on success, with the failing step otherwise.
#![no_std]
#![no_main]
extern crate alloc;
use alloc::{boxed::Box, string::String, vec::Vec};

zone_guest::entry!(main);

fn main() -> i32 {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for round in 0..2000usize {
        let size = (round * 7919) % 5000 + 1;
        blocks.push(alloc::vec![(round % 251) as u8; size]);
        if round % 3 == 0 {
            let victim = (round * 31) % blocks.len();
            blocks.swap_remove(victim);
        }
    }
    for b in &blocks {
        if b.iter().any(|x| *x != b[0]) {
            return 1;
        }
    }
    let aligned = Box::new(Aligned([7u8; 4096]));
    if (&*aligned as *const Aligned as usize) % 4096 != 0 || aligned.0[4095] != 7 {
        return 2;
    }
    let mut s = String::new();
    for i in 0..1000 {
        s.push_str(if i % 2 == 0 { "ab" } else { "c" });
    }
    if s.len() != 1500 {
        return 3;
    }
    drop(blocks);
    let big: Vec<u64> = (0..1_000_000).collect();
    if big.iter().sum::<u64>() != 499_999_500_000 {
        return 4;
    }
    zone_guest::println!("heap in use at exit: {} bytes", zone_guest::heap_used());
    0
}

#[repr(align(4096))]
struct Aligned([u8; 4096]);
