//! zone-core: the VMM behind zones.
//!
//! A *zone* is a KVM virtual machine created inside the embedding process with
//! [`Zone::builder`]. This crate owns the VM, its guest memory, its vCPU threads and exit loop,
//! the micro-zone guest kind (a static program at CPL3 with a hypercall ABI), and the real-time
//! controls: pause, resume, kill and deadlines from any thread, per-zone metrics and an event
//! stream of policy violations.
//!
//! Linux zones ([`LinuxBoot`]) run a real kernel with the zones agent as PID 1 and take commands
//! over virtio-vsock ([`ZoneHandle::exec`]); the device API ([`device`]) is how attachments
//! (vsock, virtio-blk, zone-net's virtio-net) plug in. With feature `tokio`, `aio` is the async
//! face of all of it.
//!
//! Most users depend on the `zones` facade crate instead, which re-exports this one; its front
//! page is the guide (the two guest kinds, grants, containment, where things are verified).
//!
//! # Signals
//! vCPU threads are stopped with the real-time signal `SIGRTMIN + 2`
//! ([`KICK_SIGNAL_OFFSET`]). The embedding process must not install its own handler for it.

#[cfg(feature = "tokio")]
pub mod aio;
mod boot_report;
mod builder;
mod console;
mod control;
mod cpuid;
mod deadline;
pub mod device;
mod devices;
mod events;
mod exec;
mod exit;
#[doc(hidden)]
pub mod fuzzing;
mod host_fn;
mod kvm;
pub mod linux;
mod memory;
mod metrics;
pub mod micro;
mod quarantine;
pub mod seccomp;
#[cfg(test)]
mod testing;
mod text;
mod trace;
mod vcpu;
mod vmm;
mod wakers;
mod zone;

pub use boot_report::BootReport;
pub use builder::{BuildError, DEFAULT_MEMORY_MIB, ZoneBuilder};
pub use console::DEFAULT_CONSOLE_LIMIT;
pub use control::{ControlError, ZoneState};
pub use device::DeviceCounters;
pub use devices::virtio::vsock::backend::VsockError;
pub use events::{Denial, EVENT_QUEUE_CAPACITY, EventStream, Violation, ZoneEvent};
pub use exec::{
    AGENT_ANSWER_TIMEOUT, AGENT_BUSY_LIMIT, AgentInfo, Command, DEFAULT_OUTPUT_LIMIT,
    DEFAULT_READY_TIMEOUT, ExecError, ExitStatus, Output, Process, ProcessEvent,
};
pub use exit::{Exception, Fault, ZoneExit};
pub use host_fn::{HostCall, HostFnError, HostFnNameError, HostFnResult};
pub use kvm::{DEFAULT_KVM_PATH, KvmError};
pub use linux::{Disk, DiskError, LinuxBoot, LinuxError, Rootfs, RootfsError};
pub use memory::MemoryError;
pub use metrics::{ExitCounts, HypercallCounts, ZoneMetrics};
pub use micro::elf::ElfError;
pub use micro::{GuestProgram, LayoutError, LoadError};
pub use quarantine::{EVIDENCE_CONSOLE_TAIL, Evidence, MemoryDump, QuarantineOptions};
pub use trace::dropped as tracing_dropped;
pub use vcpu::kick::{KICK_SIGNAL_OFFSET, KickSetupError};
pub use zone::{MemoryAccessError, Zone, ZoneHandle};
