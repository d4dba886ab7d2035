//! The guest side of the `hello_zone` example: prints a greeting, asks the host to add two
//! numbers through a host function, and exits with the result's low byte as status.
#![no_std]
#![no_main]

zone_guest::entry!(main);

fn main() -> i32 {
    zone_guest::println!("hello from a micro zone on vCPU {}", zone_guest::vcpu_index());
    match zone_guest::call_u64("add", &[19, 23]) {
        Ok(sum) => {
            zone_guest::println!("the host says 19 + 23 = {sum}");
            0
        }
        Err(e) => {
            zone_guest::println!("host call failed: {e:?}");
            1
        }
    }
}
