//! Panics with a message, or exhausts the heap (first argument `oom`), or panics with the
//! message given as the second argument (first argument `say`).
#![no_std]
#![no_main]
extern crate alloc;

zone_guest::entry!(main);

fn main() {
    let mut args = zone_guest::args();
    let first = args.next();
    if first == Some(b"say") {
        let message = args.next().and_then(|m| core::str::from_utf8(m).ok());
        panic!("{}", message.unwrap_or("(no message)"));
    }
    if first == Some(b"oom") {
        let mut hoard = alloc::vec::Vec::new();
        loop {
            hoard.push(alloc::vec![1u8; 1 << 20]);
        }
    }
    let answer = core::hint::black_box(41);
    panic!("the answer was {answer}, not 42");
}
