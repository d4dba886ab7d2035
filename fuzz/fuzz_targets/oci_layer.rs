//! OCI image layers (tar streams from an image the embedder may not trust): unpacking must never
//! panic and never write outside the tree, whatever the headers, links and whiteouts say.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zone_core::fuzzing::oci_layer(data));
