//! [`ZoneBuilder`]: describe a zone, then [`build`](ZoneBuilder::build) it. Everything that can be
//! checked without KVM is checked before KVM is touched.

use crate::console::{ConsoleBuffer, ConsoleSink, DEFAULT_CONSOLE_LIMIT};
use crate::control::Control;
use crate::cpuid;
use crate::events::EventBus;
use crate::host_fn::{HostCall, HostFnNameError, HostFnResult, HostFunctions, u64_adapter};
use crate::kvm::{self, DEFAULT_KVM_PATH, KvmError};
use crate::memory::{self, MemoryError};
use crate::metrics::Metrics;
use crate::micro::hypercall::Dispatcher;
use crate::micro::{self, GuestProgram, LayoutError, LoadError, MicroExits, layout};
use crate::vcpu::kick::{self, KickSetupError, Kicker};
use crate::vcpu::{self, GuestExits};
use crate::zone::{Zone, ZoneHandle, ZoneShared};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use zone_guest::abi::MAX_VCPUS;

/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u64 = 64;

static NEXT_ZONE_ID: AtomicU64 = AtomicU64::new(1);

/// Why a zone could not be built. Every variant names the zone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No guest was given.
    #[error("zone {zone}: no guest program: call .micro(GuestProgram::from_elf(..))")]
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
    program: Option<GuestProgram>,
    deadline: Option<Duration>,
    functions: HostFunctions,
    function_error: Option<HostFnNameError>,
    console_limit: usize,
    console_sink: Option<ConsoleSink>,
    kvm_path: PathBuf,
    start_paused: bool,
}

impl Default for ZoneBuilder {
    fn default() -> Self {
        Self {
            name: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            program: None,
            deadline: None,
            functions: HostFunctions::default(),
            function_error: None,
            console_limit: DEFAULT_CONSOLE_LIMIT,
            console_sink: None,
            kvm_path: PathBuf::from(DEFAULT_KVM_PATH),
            start_paused: false,
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
        self.program = Some(program);
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

    /// Builds the zone paused: nothing runs until [`ZoneHandle::resume`].
    pub fn start_paused(mut self, paused: bool) -> Self {
        self.start_paused = paused;
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
        let Some(program) = self.program.clone() else {
            return Err(BuildError::NoPayload { zone });
        };
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(BuildError::Vcpus {
                zone,
                vcpus: self.vcpus,
                max: MAX_VCPUS,
            });
        }
        let mem_size = self.memory_mib.saturating_mul(1 << 20);
        let plan = layout::plan(
            program.image_end(),
            self.vcpus,
            program.stack_size,
            mem_size,
        )
        .map_err(|source| BuildError::Layout {
            zone: zone.clone(),
            source,
        })?;
        program.check_args().map_err(|source| BuildError::Load {
            zone: zone.clone(),
            source,
        })?;

        // KVM.
        kick::install_handler().map_err(|source| BuildError::Kick {
            zone: zone.clone(),
            source,
        })?;
        let kvm = kvm::open(&self.kvm_path, self.vcpus).map_err(|source| BuildError::Kvm {
            zone: zone.clone(),
            source,
        })?;
        let vm_err = |op| {
            let zone = zone.clone();
            move |source| BuildError::Vm { zone, op, source }
        };
        let base_cpuid = cpuid::supported(&kvm).map_err(vm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let features = cpuid::features(&base_cpuid);
        let vm = kvm.create_vm().map_err(vm_err("KVM_CREATE_VM"))?;
        let mem = memory::allocate(mem_size).map_err(|source| BuildError::Memory {
            zone: zone.clone(),
            source,
        })?;
        memory::register(&vm, &mem).map_err(|source| BuildError::Memory {
            zone: zone.clone(),
            source,
        })?;
        kvm::create_split_irqchip(&vm).map_err(vm_err("KVM_ENABLE_CAP(SPLIT_IRQCHIP)"))?;
        let loaded =
            micro::load(&mem, &program, &plan, self.vcpus).map_err(|source| BuildError::Load {
                zone: zone.clone(),
                source,
            })?;
        let mut vcpu_fds = Vec::with_capacity(self.vcpus as usize);
        for index in 0..self.vcpus {
            let vcpu_err = |(op, source)| BuildError::Vcpu {
                zone: zone.clone(),
                vcpu: index,
                op,
                source,
            };
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(|e| vcpu_err(("KVM_CREATE_VCPU", e)))?;
            micro::configure_vcpu(&fd, index, &loaded, &plan, &base_cpuid, features)
                .map_err(vcpu_err)?;
            vcpu_fds.push(fd);
        }

        let shared = Arc::new(ZoneShared {
            id,
            name: zone.clone(),
            control: Control::new(self.vcpus, self.start_paused),
            metrics: Metrics::new(self.vcpus, self.functions.names(), mem_size),
            events: EventBus::new(),
            console: ConsoleBuffer::new(self.console_limit, self.console_sink.clone()),
            console_limit: self.console_limit,
            kickers: (0..self.vcpus).map(|_| Kicker::default()).collect(),
            memory: RwLock::new(Some(mem.clone())),
            deadline: Mutex::new(None),
        });
        let exits: Arc<dyn GuestExits> = Arc::new(MicroExits {
            dispatcher: Dispatcher {
                zone: zone.clone(),
                mem,
                access: loaded.access,
                functions: self.functions,
            },
            shared: shared.clone(),
        });
        let mut built = Zone {
            handle: ZoneHandle {
                shared: shared.clone(),
            },
            threads: Vec::new(),
            vm: Some(vm),
            kvm: Some(kvm),
        };
        if let Some(after) = self.deadline {
            built.set_deadline(after);
        }
        for (index, fd) in (0u32..).zip(vcpu_fds) {
            let (shared, exits) = (shared.clone(), exits.clone());
            let thread = std::thread::Builder::new()
                .name(format!("{}/{index}", short(&zone)))
                .spawn(move || vcpu::run(fd, index, shared, exits))
                .map_err(|source| BuildError::Thread {
                    zone: zone.clone(),
                    source,
                })?;
            built.threads.push(thread);
        }
        Ok(built)
    }
}

/// A thread-name prefix: Linux keeps 15 bytes of a thread name.
fn short(name: &str) -> &str {
    let mut end = name.len().min(12);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}
