//! Upstream DNS answers to a pending query (rebinding filter, pins, re-encoding): it must never
//! panic, and a reply goes only to the guest that asked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zone_net::fuzzing::dns_answer(data));
