//! Benchmark guest. `first`: one `ready` host call, then exit. `tick`: call `tick` until it
//! returns 0. `null`: empty console writes until the host kills the zone.
#![no_std]
#![no_main]

zone_guest::entry!(main);

fn main() -> i32 {
    match zone_guest::args().next() {
        Some(b"tick") => while zone_guest::call_u64("tick", &[]) == Ok(1) {},
        Some(b"null") => loop {
            // An empty console write: a full hypercall round trip with no host work.
            zone_guest::hypercall(zone_guest::abi::Hypercall::ConsoleWrite, [0; 6]);
        },
        _ => {
            let _ = zone_guest::call_u64("ready", &[]);
        }
    }
    0
}
