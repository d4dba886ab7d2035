//! Hypercall decoding and dispatch over arbitrary numbers, argument words and guest memory: it
//! must never panic, and the host may write only guest-writable memory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zone_core::fuzzing::hypercall(data));
