//! Writes an exact byte pattern to the console: text through println!, one large write, and
//! every byte value 0..=255.
#![no_std]
#![no_main]

zone_guest::entry!(main);

fn main() {
    zone_guest::println!("line one");
    zone_guest::print!("{}-{}", 6 * 7, "x");
    zone_guest::println!();
    let mut big = [0u8; 3000];
    for (i, b) in big.iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    zone_guest::console_write(&big);
    let mut all = [0u8; 256];
    for (i, b) in all.iter_mut().enumerate() {
        *b = i as u8;
    }
    zone_guest::console_write(&all);
}
