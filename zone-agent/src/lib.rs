//! zone-agent: PID 1 of a zones Linux zone.
//!
//! The host embeds the agent binary (built by `build::compile` from `src/main.rs`) as `/init` in
//! the initramfs it generates. The agent mounts `/proc`, `/sys`, `/dev`, loads the kernel modules
//! the host listed ([`init`]), and serves exec requests over virtio-vsock ([`server`],
//! [`proto`]). zone-core uses only [`proto`] from this crate.
//!
//! Everything here uses `std` alone (plus inline `asm!` system calls in [`sys`]), so that the
//! agent can be compiled by invoking `rustc` directly on its sources.

pub mod proto;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod init;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod net;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod rootfs;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod server;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod sys;

#[cfg(feature = "build")]
pub mod build;
