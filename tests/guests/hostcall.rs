//! Exercises host functions: u64 arguments and result, byte buffers in both directions, an
//! unregistered function, an output buffer that is too small, and a host function that fails.
//! Reports each outcome to the `report` host function as a line of text.
#![no_std]
#![no_main]

use zone_guest::HostCallError;

zone_guest::entry!(main);

fn report(line: &str) {
    let _ = zone_guest::call("report", line.as_bytes(), &mut []);
}

fn main() -> i32 {
    let product = zone_guest::call_u64("mul", &[6, 7, 10]);
    let mut out = [0u8; 64];
    let echoed = zone_guest::call("upper", b"hello zone", &mut out);
    match (product, echoed) {
        (Ok(420), Ok(10)) if &out[..10] == b"HELLO ZONE" => report("basic ok"),
        other => {
            let _ = other;
            report("basic wrong");
        }
    }
    match zone_guest::call("launch_missiles", b"", &mut out) {
        Err(HostCallError::UnknownFunction) => report("unknown refused"),
        _ => report("unknown wrong"),
    }
    let mut small = [0u8; 4];
    match zone_guest::call("upper", b"hello zone", &mut small) {
        Err(HostCallError::OutputTooSmall { needed: 10 }) => report("small ok"),
        _ => report("small wrong"),
    }
    match zone_guest::call("fail", b"", &mut out) {
        Err(HostCallError::HostError) => report("fail ok"),
        _ => report("fail wrong"),
    }
    0
}
