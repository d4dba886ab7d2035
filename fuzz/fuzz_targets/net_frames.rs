//! Guest Ethernet frames (ARP, TCP, UDP, DNS, ICMP, junk) into zone-net's user-space stack under
//! a policy that opens no flow: it must never panic, and every frame it answers must parse.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zone_net::fuzzing::frames(data));
