//! # zones
//!
//! Hardened KVM microVMs (*zones*) that your program creates in its own process, grants exactly
//! what it needs, runs untrusted code in, and contains in real time. A zone is a KVM virtual
//! machine owned by a [`Zone`] value: no daemon, no socket API, no second process. Dropping the
//! `Zone` ends it and releases everything it held.
//!
//! ## Quick start
//!
//! A Linux zone: the host's kernel, the zones agent as PID 1, a busybox userland, one command.
//!
//! ```no_run
//! use zones::prelude::*;
//! use zones::{Command, LinuxBoot};
//!
//! let zone = Zone::builder()
//!     .memory_mib(256)
//!     .linux(LinuxBoot::host_kernel()?.busybox())
//!     .deadline(std::time::Duration::from_secs(60))
//!     .build()?;
//! let out = zone.exec(&Command::new("sh").arg("-c").arg("echo $((6*7))"))?;
//! assert_eq!(out.stdout, b"42\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same from a tokio task (feature `tokio`; see [`aio`]): nothing blocks the runtime.
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use zones::prelude::*;
//! use zones::{Command, LinuxBoot};
//!
//! let zone = Zone::builder()
//!     .memory_mib(256)
//!     .linux(LinuxBoot::host_kernel()?.busybox())
//!     .build_async()
//!     .await?;
//! let out = zone.exec_async(&Command::new("uname").arg("-r")).await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! # Ok(()) }
//! ```
//!
//! ## Two kinds of guest
//!
//! - **Linux zones** ([`ZoneBuilder::linux`] with a [`LinuxBoot`]): a real kernel (the host's,
//!   a distribution's with compressed modules, or your own), the zones agent as PID 1, commands
//!   over virtio-vsock ([`ZoneHandle::exec`], [`ZoneHandle::spawn`]), disks over virtio-blk
//!   ([`Disk`]), a userland from busybox or from an image ([`Rootfs`]: a directory, an ext4,
//!   erofs or squashfs image, or an OCI image), a network through [`net`].
//! - **Micro zones** ([`ZoneBuilder::micro`] with a [`GuestProgram`]): one static `no_std`
//!   program at CPL3, built against the `zone-guest` crate, whose only way out is the host
//!   functions its builder registered ([`ZoneBuilder::host_fn_u64`], [`ZoneBuilder::host_fn`]).
//!   They start in about a millisecond.
//!
//! ```no_run
//! use zones::prelude::*;
//!
//! let program = GuestProgram::from_elf(&std::fs::read("hello.elf")?)?;
//! let zone = Zone::builder()
//!     .memory_mib(16)
//!     .micro(program)
//!     .host_fn_u64("add", |args| args.iter().sum())
//!     .deadline(std::time::Duration::from_secs(2))
//!     .build()?;
//! assert_eq!(zone.wait(), ZoneExit::Exited(0));
//! println!("{}", zone.console_text());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Deny by default
//!
//! A zone sees what its builder granted and nothing else: no network device without
//! `.net(..)` (and then only what its [`net::NetPolicy`] allows, DNS included), no disk without
//! [`LinuxBoot::disk`], no PCI bus and no passed-through device without `.gpu(..)` (a
//! [`gpu::Gpu`] names one host device by address, bound to vfio-pci behind an IOMMU; its DMA
//! reaches the zone's memory only), no host function without its registration. A request for what was not
//! granted is refused and reported as a [`ZoneEvent::Violation`] or [`ZoneEvent::Denied`]; it
//! never falls back to something wider. Every thread zones starts runs under its own seccomp
//! filter ([`seccomp`]).
//!
//! ## Containment and observation
//!
//! From any thread, through the [`Zone`] or a cloned [`ZoneHandle`]: [`ZoneHandle::pause`],
//! [`ZoneHandle::resume`], [`ZoneHandle::kill`], [`ZoneHandle::set_deadline`],
//! [`ZoneHandle::quarantine`] (paused, devices cut off, evidence returned), and for networked
//! zones `net_cut()` and `set_net_policy(..)` ([`net::NetControl`]). They reach vCPUs, device
//! threads and a passed-through device's DMA (its bus mastering) alike. [`ZoneHandle::metrics`] gives the counters, [`ZoneHandle::events`] the stream of
//! lifecycle events and policy violations, and the same is said through `tracing` (targets
//! `zones::build`, `zones::zone`, `zones::violation`, `zones::denied`, `zones::device`).
//!
//! ```no_run
//! use zones::prelude::*;
//! # fn run(zone: &Zone) -> Result<(), Box<dyn std::error::Error>> {
//! let handle = zone.handle();
//! std::thread::spawn(move || {
//!     handle.pause().ok();
//!     handle.resume().ok();
//! });
//! let evidence = zone.quarantine()?;
//! println!("{} events before the quarantine", evidence.recent_events.len());
//! for event in zone.events().drain() {
//!     println!("{event}");
//! }
//! # Ok(()) }
//! ```
//!
//! ## Where it runs and where it was verified
//!
//! zones needs Linux with `/dev/kvm` (x86-64) and the right to open it. Micro zones run on any
//! KVM, including ones that cannot run a guest kernel at ring 0; Linux zones need a KVM that
//! can. The README's status table says, feature by feature, where each was verified: unit tests,
//! micro zones on the development machine's KVM, Linux zones in the lab (a hardware-like KVM
//! inside QEMU's emulation, with Linux's own drivers as the client of zones' devices), or real
//! hardware. The embedding process must leave the real-time signal `SIGRTMIN + 2` to zones
//! ([`KICK_SIGNAL_OFFSET`]).
//!
//! ## Features
//!
//! - `tokio` (off): the async face, [`aio`]: `build_async`, `exec_async`, `spawn_async`,
//!   `wait_async`, `events_async`.
//!
//! Guest programs for micro zones are `no_std` binaries built against the `zone-guest` crate;
//! `zone_guest::build::GuestBuilder` compiles them from a build script with the stock toolchain.

pub use zone_core::*;

/// Networking for zones: [`net::Net`], [`net::NetPolicy`], live controls ([`net::NetControl`]).
pub use zone_net as net;

/// PCI passthrough for zones: [`gpu::Gpu`] (a device bound to vfio-pci, granted by address),
/// its control ([`gpu::GpuControl`]).
pub use zone_gpu as gpu;

/// The types most programs need.
pub mod prelude {
    pub use zone_core::{
        BuildError, ControlError, Denial, EventStream, Evidence, Fault, GuestProgram, HostCall,
        HostFnError, HostFnResult, Violation, Zone, ZoneBuilder, ZoneEvent, ZoneExit, ZoneHandle,
        ZoneMetrics, ZoneState,
    };
    pub use zone_gpu::{Gpu, GpuBuilderExt, GpuControl};
    pub use zone_net::{Net, NetBuilderExt, NetControl, NetPolicy};

    /// The async face (feature `tokio`).
    #[cfg(feature = "tokio")]
    pub use zone_core::aio::{AsyncEvents, AsyncProcess, ProcessStdin};
}
