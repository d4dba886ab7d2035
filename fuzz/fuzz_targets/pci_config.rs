//! PCI configuration space and MSI-X table accesses (what a guest's PCI core and drivers send):
//! never a panic, read-only fields and the capability chain unchanged, BARs aligned.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zone_core::fuzzing::pci_config(data));
