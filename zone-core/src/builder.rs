//! [`ZoneBuilder`]: describe a zone, then [`build`](ZoneBuilder::build) it. Everything that can be
//! checked without KVM is checked before KVM is touched.

use crate::console::{ConsoleSink, DEFAULT_CONSOLE_LIMIT};
use crate::device::{AttachError, Attachment};
use crate::host_fn::{HostCall, HostFnNameError, HostFnResult, HostFunctions, u64_adapter};
use crate::kvm::{DEFAULT_KVM_PATH, KvmError};
use crate::linux::LinuxBoot;
use crate::memory::MemoryError;
use crate::micro::{self, GuestProgram, LayoutError, LoadError};
use crate::vcpu::kick::KickSetupError;
use crate::vmm::Settings;
use crate::zone::Zone;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use zone_guest::abi::MAX_VCPUS;

/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u64 = 64;

static NEXT_ZONE_ID: AtomicU64 = AtomicU64::new(1);

/// What a zone runs.
enum Payload {
    Micro(GuestProgram),
    Linux(LinuxBoot),
}

/// Why a zone could not be built. Every variant names the zone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No guest was given.
    #[error(
        "zone {zone}: nothing to run: call .micro(GuestProgram::from_elf(..)) or .linux(LinuxBoot::..)"
    )]
    NoPayload {
        /// The zone.
        zone: String,
    },
    /// vCPU count out of range.
    #[error("zone {zone}: {vcpus} vCPUs requested; a micro zone takes 1 to {max}")]
    Vcpus {
        /// The zone.
        zone: String,
        /// Requested.
        vcpus: u32,
        /// Allowed maximum.
        max: u32,
    },
    /// Memory does not fit the program.
    #[error("zone {zone}: {source}")]
    Layout {
        /// The zone.
        zone: String,
        /// Why.
        #[source]
        source: LayoutError,
    },
    /// A host function was registered badly.
    #[error("zone {zone}: {source}")]
    HostFunction {
        /// The zone.
        zone: String,
        /// Why.
        #[source]
        source: HostFnNameError,
    },
    /// The program could not be placed in memory.
    #[error("zone {zone}: loading the guest program: {source}")]
    Load {
        /// The zone.
        zone: String,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// KVM is missing, inaccessible or lacks something.
    #[error("zone {zone}: {source}")]
    Kvm {
        /// The zone.
        zone: String,
        /// Why.
        #[source]
        source: KvmError,
    },
    /// Guest memory could not be set up.
    #[error("zone {zone}: {source}")]
    Memory {
        /// The zone.
        zone: String,
        /// Why.
        #[source]
        source: MemoryError,
    },
    /// A VM-level KVM call failed.
    #[error("zone {zone}: {op} failed: {source}")]
    Vm {
        /// The zone.
        zone: String,
        /// The ioctl.
        op: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A vCPU-level KVM call failed.
    #[error("zone {zone}: vCPU {vcpu}: {op} failed: {source}")]
    Vcpu {
        /// The zone.
        zone: String,
        /// The vCPU.
        vcpu: u32,
        /// The ioctl.
        op: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The vCPU kick signal could not be installed.
    #[error("zone {zone}: {source}")]
    Kick {
        /// The zone.
        zone: String,
        /// Why.
        #[source]
        source: KickSetupError,
    },
    /// The Linux guest could not be prepared.
    #[error("zone {zone}: {source}")]
    Linux {
        /// The zone.
        zone: String,
        /// Why.
        #[source]
        source: crate::linux::LinuxError,
    },
    /// A device was granted to a zone that cannot have it.
    #[error(
        "zone {zone}: a {kind} device needs a Linux zone (.linux(LinuxBoot::..)); micro zones have no devices"
    )]
    DeviceNeedsLinux {
        /// The zone.
        zone: String,
        /// The kind of device.
        kind: &'static str,
    },
    /// A device could not be prepared or attached.
    #[error("zone {zone}: device {device}: {source}")]
    Attach {
        /// The zone.
        zone: String,
        /// The device's name in the zone (`net0`, ...).
        device: String,
        /// Why.
        #[source]
        source: AttachError,
    },
    /// A vCPU thread could not be started.
    #[error("zone {zone}: cannot start a vCPU thread: {source}")]
    Thread {
        /// The zone.
        zone: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Describes a zone. Start with [`Zone::builder`].
///
/// ```no_run
/// # use zone_core::{Zone, GuestProgram};
/// # let elf: &[u8] = &[];
/// let zone = Zone::builder()
///     .name("agent-7")
///     .memory_mib(32)
///     .micro(GuestProgram::from_elf(elf)?)
///     .host_fn_u64("add", |args| args.iter().sum())
///     .deadline(std::time::Duration::from_secs(5))
///     .build()?;
/// println!("{:?}", zone.wait());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ZoneBuilder {
    name: Option<String>,
    memory_mib: u64,
    vcpus: u32,
    payload: Option<Payload>,
    deadline: Option<Duration>,
    functions: HostFunctions,
    function_error: Option<HostFnNameError>,
    console_limit: usize,
    console_sink: Option<ConsoleSink>,
    kvm_path: PathBuf,
    start_paused: bool,
    attachments: Vec<Box<dyn Attachment>>,
    seccomp: crate::seccomp::Seccomp,
}

impl Default for ZoneBuilder {
    fn default() -> Self {
        Self {
            name: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            payload: None,
            deadline: None,
            functions: HostFunctions::default(),
            function_error: None,
            console_limit: DEFAULT_CONSOLE_LIMIT,
            console_sink: None,
            kvm_path: PathBuf::from(DEFAULT_KVM_PATH),
            start_paused: false,
            attachments: Vec::new(),
            seccomp: crate::seccomp::Seccomp::Enforce,
        }
    }
}

impl std::fmt::Debug for ZoneBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneBuilder")
            .field("name", &self.name)
            .field("memory_mib", &self.memory_mib)
            .field("vcpus", &self.vcpus)
            .field("host_functions", &self.functions)
            .field(
                "devices",
                &self
                    .attachments
                    .iter()
                    .map(|a| a.kind())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ZoneBuilder {
    /// Names the zone (used in thread names, errors and events). Default: `zone-<n>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Guest memory in MiB (default 64). Pages are only backed once the guest touches them.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs (default 1).
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = vcpus;
        self
    }

    /// Runs `program` as a micro zone.
    pub fn micro(mut self, program: GuestProgram) -> Self {
        self.payload = Some(Payload::Micro(program));
        self
    }

    /// Boots a Linux kernel (a Linux zone).
    pub fn linux(mut self, boot: LinuxBoot) -> Self {
        self.payload = Some(Payload::Linux(boot));
        self
    }

    /// Ends the zone with `DeadlineExceeded` once `after` has passed since `build()`.
    pub fn deadline(mut self, after: Duration) -> Self {
        self.deadline = Some(after);
        self
    }

    /// Grants the guest a host function called `name` (1-64 printable ASCII characters). It runs
    /// on the calling vCPU's thread and the guest waits for it. Pause, kill and deadlines take
    /// effect when it returns, so a host function should not block indefinitely. A panic inside
    /// it is caught and reported to the guest as an error.
    ///
    /// ```no_run
    /// use zone_core::{GuestProgram, HostFnError, Zone};
    /// # fn run(program: GuestProgram) -> Result<(), zone_core::BuildError> {
    /// let zone = Zone::builder()
    ///     .micro(program)
    ///     // The guest calls it with bytes (`zone_guest::call("upper", ..)`) and gets bytes back.
    ///     .host_fn("upper", |call| {
    ///         let text = std::str::from_utf8(call.input).map_err(|_| HostFnError::new("not UTF-8"))?;
    ///         Ok(text.to_uppercase().into_bytes())
    ///     })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn host_fn(
        mut self,
        name: &str,
        f: impl Fn(&HostCall<'_>) -> HostFnResult + Send + Sync + 'static,
    ) -> Self {
        if let Err(e) = self.functions.register(name, f) {
            self.function_error.get_or_insert(e);
        }
        self
    }

    /// Grants a host function over 64-bit words (`zone_guest::call_u64` on the guest side).
    pub fn host_fn_u64(
        self,
        name: &str,
        f: impl Fn(&[u64]) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.host_fn(name, u64_adapter(f))
    }

    /// Caps captured console output (default 1 MiB); beyond it bytes are dropped and counted.
    pub fn console_limit(mut self, bytes: usize) -> Self {
        self.console_limit = bytes;
        self
    }

    /// Streams console bytes to `sink` as the guest writes them (on vCPU threads).
    pub fn on_console(mut self, sink: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        self.console_sink = Some(Arc::new(sink));
        self
    }

    /// Uses another KVM device node (default `/dev/kvm`).
    pub fn kvm_device(mut self, path: impl Into<PathBuf>) -> Self {
        self.kvm_path = path.into();
        self
    }

    /// Builds the zone paused: nothing runs until [`ZoneHandle::resume`](crate::ZoneHandle::resume).
    pub fn start_paused(mut self, paused: bool) -> Self {
        self.start_paused = paused;
        self
    }

    /// How the threads zones spawns for this zone are filtered (default
    /// [`Seccomp::Enforce`](crate::seccomp::Seccomp): each kind of thread has its own allowlist;
    /// a call outside it is refused with `EPERM`, counted and reported). See [`crate::seccomp`].
    pub fn seccomp(mut self, mode: crate::seccomp::Seccomp) -> Self {
        self.seccomp = mode;
        self
    }

    /// Grants the zone a device (see [`crate::device`]). Builder extensions such as zone-net's
    /// `.net(..)` call this; a zone has no device it was not granted.
    pub fn attach(mut self, attachment: impl Attachment) -> Self {
        self.attachments.push(Box::new(attachment));
        self
    }

    /// Validates the description, creates the VM and starts its vCPUs.
    pub fn build(self) -> Result<Zone, BuildError> {
        let id = NEXT_ZONE_ID.fetch_add(1, Ordering::Relaxed);
        let zone = self.name.clone().unwrap_or_else(|| format!("zone-{id}"));
        // Checks that need no KVM.
        if let Some(source) = self.function_error.clone() {
            return Err(BuildError::HostFunction { zone, source });
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(BuildError::Vcpus {
                zone,
                vcpus: self.vcpus,
                max: MAX_VCPUS,
            });
        }
        let span = tracing::info_span!(target: "zones::build", "zone_build", zone = %zone, id);
        let _entered = span.enter();
        crate::trace::start_forwarder();
        let started = std::time::Instant::now();
        let (vcpus, memory_mib) = (self.vcpus, self.memory_mib);
        let settings = Settings {
            id,
            zone,
            vcpus: self.vcpus,
            mem_size: self.memory_mib.saturating_mul(1 << 20),
            kvm_path: self.kvm_path,
            deadline: self.deadline,
            start_paused: self.start_paused,
            console_limit: self.console_limit,
            console_sink: self.console_sink,
            host_fn_names: self.functions.names(),
            seccomp: self.seccomp,
            started,
        };
        let kind = match &self.payload {
            Some(Payload::Micro(_)) => "micro",
            Some(Payload::Linux(_)) => "linux",
            None => "none",
        };
        let result = match self.payload {
            None => Err(BuildError::NoPayload {
                zone: settings.zone.clone(),
            }),
            Some(Payload::Micro(program)) => match self.attachments.first() {
                Some(device) => Err(BuildError::DeviceNeedsLinux {
                    zone: settings.zone.clone(),
                    kind: device.kind(),
                }),
                None => micro::build(&settings, &program, self.functions),
            },
            Some(Payload::Linux(boot)) => {
                crate::linux::build(&settings, &boot, self.functions, self.attachments)
            }
        };
        let micros = started.elapsed().as_micros() as u64;
        match &result {
            Ok(_) => tracing::info!(
                target: "zones::build", zone = %settings.zone, id, kind, vcpus, memory_mib, micros,
                "zone built"
            ),
            Err(e) => tracing::warn!(
                target: "zones::build", zone = %settings.zone, id, kind, error = %e,
                "zone build failed"
            ),
        }
        result
    }
}
