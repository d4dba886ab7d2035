//! virtio-net TX and RX descriptor chains (lying lengths, loops, addresses outside memory,
//! partial checksums) through the device's queue logic and stack: it must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zone_net::fuzzing::queues(data));
