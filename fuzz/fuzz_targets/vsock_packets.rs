//! The vsock backend under arbitrary guest packets and host operations: it must never panic, and
//! every buffer stays within its bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zone_core::fuzzing::vsock(data));
