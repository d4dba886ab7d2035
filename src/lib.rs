//! # zones
//!
//! Hardened KVM microVMs (*zones*) that your program creates in its own process, grants exactly
//! what it needs, runs untrusted code in, and contains in real time.
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
//! println!("{}", zone.metrics());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Guest programs for micro zones are `no_std` binaries built against the `zone-guest` crate;
//! `zone_guest::build::GuestBuilder` compiles them from a build script with the stock toolchain.

pub use zone_core::*;

/// Networking for zones: [`net::Net`], [`net::NetPolicy`], live controls ([`net::NetControl`]).
pub use zone_net as net;

/// The types most programs need.
pub mod prelude {
    pub use zone_core::{
        BuildError, ControlError, Denial, EventStream, Evidence, Fault, GuestProgram, HostCall,
        HostFnError, HostFnResult, Violation, Zone, ZoneBuilder, ZoneEvent, ZoneExit, ZoneHandle,
        ZoneMetrics, ZoneState,
    };
    pub use zone_net::{Net, NetBuilderExt, NetControl, NetPolicy};

    /// The async face (feature `tokio`).
    #[cfg(feature = "tokio")]
    pub use zone_core::aio::{AsyncEvents, AsyncProcess, ProcessStdin};
}
