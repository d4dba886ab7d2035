//! Calls the `arrive` host function (which returns only once every zone of the test has arrived)
//! and exits with its answer.
#![no_std]
#![no_main]

zone_guest::entry!(main);

fn main() -> i32 {
    match zone_guest::call_u64("arrive", &[]) {
        Ok(v) => v as i32,
        Err(_) => -1,
    }
}
