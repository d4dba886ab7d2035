//! Runtime and ABI for zones micro-zone guest programs.
//!
//! A micro zone runs one static, `no_std` x86-64 program at CPL3 on page tables the host builds;
//! its only way out is the hypercall ABI in [`abi`]. This crate has three faces:
//! - [`abi`] (always): the constants host and guest share. zone-core depends on this part only.
//! - `rt` (feature `runtime`): what a guest program links: entry point, console, host calls,
//!   panic handler, allocator and memory functions. The `build` helper enables it when it
//!   compiles guests.
//! - `build` (feature `build`): a helper for `build.rs` scripts that compiles guest programs with
//!   the stock `x86_64-unknown-linux-gnu` toolchain (no extra rustup target needed).
#![no_std]

#[cfg(feature = "build")]
extern crate std;

pub mod abi;
pub mod heap;

#[cfg(feature = "runtime")]
pub mod rt;

#[cfg(feature = "runtime")]
pub use rt::*;

#[cfg(feature = "build")]
pub mod build;
