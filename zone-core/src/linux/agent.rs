//! The zones agent binary, built by zone-core's build script and embedded here.

/// The static `zone-agent` executable that becomes `/init` in generated initramfs images.
pub(crate) const AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/zone-agent"));
