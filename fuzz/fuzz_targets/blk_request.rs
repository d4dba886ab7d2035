//! virtio-blk request handling over arbitrary descriptor chains, headers and buffers: it must
//! never panic, and the device may write only guest buffers marked device-writable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zone_core::fuzzing::blk_request(data));
