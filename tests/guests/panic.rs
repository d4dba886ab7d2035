//! Panics with a message, or exhausts the heap (first argument `oom`).
#![no_std]
#![no_main]
extern crate alloc;

zone_guest::entry!(main);

fn main() {
    if zone_guest::args().next() == Some(b"oom") {
        let mut hoard = alloc::vec::Vec::new();
        loop {
            hoard.push(alloc::vec![1u8; 1 << 20]);
        }
    }
    let answer = core::hint::black_box(41);
    panic!("the answer was {answer}, not 42");
}
