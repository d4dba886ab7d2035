//! The async face of zones (feature `tokio`, off by default; the blocking API stays).
//!
//! Everything that waits here waits as a task on a tokio runtime and never blocks a worker
//! thread: commands ([`ZoneHandle::exec_async`](crate::ZoneHandle::exec_async), [`ZoneHandle::spawn_async`](crate::ZoneHandle::spawn_async) and their
//! [`AsyncProcess`], whose output is a [`futures_core::Stream`] and whose stdin is an
//! [`tokio::io::AsyncWrite`]), the agent's readiness ([`ZoneHandle::wait_ready_async`](crate::ZoneHandle::wait_ready_async)), the
//! zone's end ([`ZoneHandle::wait_async`](crate::ZoneHandle::wait_async)) and its events ([`ZoneHandle::events_async`](crate::ZoneHandle::events_async)).
//! Readiness comes from the zone itself: the vsock device's worker, the vCPUs and the event bus
//! wake the waiting task when its state changes; no thread waits on behalf of a call.
//! [`crate::ZoneBuilder::build_async`] runs the host-side preparation (reading and
//! decompressing the kernel, the initramfs, a root filesystem image) on tokio's blocking pool;
//! the guest then boots on the zone's own vCPU threads while the runtime goes on.
//!
//! The control calls (`pause`, `resume`, `kill`, `quarantine`, `net_cut`) are quick and
//! bounded; call them from tasks as they are.
//!
//! **Cancellation.** Dropping a command's future or its [`AsyncProcess`] resets the command's
//! connection; the agent then kills the command's process group. The zone is unaffected and
//! the connection is released at once. Other waits hold nothing when dropped.
//!
//! ```no_run
//! use zone_core::{Command, LinuxBoot, Zone};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let zone = Zone::builder()
//!     .memory_mib(256)
//!     .linux(LinuxBoot::host_kernel()?.busybox())
//!     .build_async()
//!     .await?;
//! let out = zone.exec_async(&Command::new("uname").arg("-r")).await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! # Ok(()) }
//! ```

mod events;
mod exec;
mod frames;

pub use events::AsyncEvents;
pub use exec::{AsyncProcess, ProcessStdin};

use crate::builder::{BuildError, ZoneBuilder};
use crate::zone::Zone;

impl ZoneBuilder {
    /// [`ZoneBuilder::build`] for a task: the host-side preparation runs on tokio's blocking
    /// pool, so the runtime's workers go on while a Linux zone's kernel, initramfs and root
    /// filesystem are prepared. The zone returned is running (a Linux guest is booting);
    /// [`crate::ZoneHandle::exec_async`] waits for its agent.
    ///
    /// Panics only where `build` would; must be called inside a tokio runtime.
    pub async fn build_async(self) -> Result<Zone, BuildError> {
        match tokio::task::spawn_blocking(move || self.build()).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("zone build task was cancelled: {e}"),
        }
    }
}
