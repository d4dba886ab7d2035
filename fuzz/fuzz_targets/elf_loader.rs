//! The micro-zone ELF loader over arbitrary bytes: it must never panic, and every image it
//! accepts must stay inside the program window, inside the file, and W^X.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zone_core::fuzzing::elf(data));
