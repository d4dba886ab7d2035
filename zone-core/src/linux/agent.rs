//! The zones agent binary, built by zone-core's build script and embedded here.

/// The static `zone-agent` executable that becomes `/init` in generated initramfs images.
pub(crate) const AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/zone-agent"));

/// SHA-256 (hex) of [`AGENT`] and the initramfs writer's sources, computed when they were built:
/// what the initramfs cache knows the generator by.
pub(crate) const GENERATOR_SHA256: &str =
    include_str!(concat!(env!("OUT_DIR"), "/initramfs-generator.sha256"));
