//! Writes each argument to the console straight from where the host put it (the console write
//! hypercall gets a pointer into the argument block), a newline after each; exits with the
//! number of arguments, or 100 if a write was refused.
#![no_std]
#![no_main]

zone_guest::entry!(main);

fn main() -> i32 {
    let mut count = 0;
    for arg in zone_guest::args() {
        if zone_guest::console_write(arg) != 0 || zone_guest::console_write(b"\n") != 0 {
            return 100;
        }
        count += 1;
    }
    count
}
