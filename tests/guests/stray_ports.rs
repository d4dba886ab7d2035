//! Touches the hypercall port's bytes the wrong way (a byte at 0xE1, a word at 0xE2, a byte at
//! 0xE0, a read of 0xE0), then exits 0: each access is refused and reported, none ends the zone.
#![no_std]
#![no_main]

zone_guest::entry!(main);

fn main() -> i32 {
    // SAFETY: port I/O to the hypercall port's bytes, which the I/O bitmap opens; the host
    // refuses what is not a hypercall and the guest goes on. No memory is touched.
    unsafe {
        core::arch::asm!("out 0xE1, al", in("al") 1u8);
        core::arch::asm!("out 0xE2, ax", in("ax") 2u16);
        core::arch::asm!("out 0xE0, al", in("al") 3u8);
        let _v: u8;
        core::arch::asm!("in al, 0xE0", out("al") _v);
    }
    0
}
