//! The parts of building a zone that every guest kind shares: opening KVM, creating the VM and
//! its vCPUs, the zone's shared state, and launching the vCPU threads.

use crate::builder::BuildError;
use crate::console::{ConsoleBuffer, ConsoleSink};
use crate::control::Control;
use crate::cpuid::{self, Features};
use crate::events::EventBus;
use crate::kvm;
use crate::memory;
use crate::metrics::Metrics;
use crate::vcpu::kick::{self, Kicker};
use crate::vcpu::{GuestExits, VcpuThreads};
use crate::zone::{Zone, ZoneHandle, ZoneShared};
use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use vm_memory::GuestMemoryMmap;

/// What every guest kind's build needs from the builder.
pub(crate) struct Settings {
    pub(crate) id: u64,
    pub(crate) zone: String,
    pub(crate) vcpus: u32,
    pub(crate) mem_size: u64,
    pub(crate) kvm_path: PathBuf,
    pub(crate) deadline: Option<Duration>,
    pub(crate) start_paused: bool,
    pub(crate) console_limit: usize,
    pub(crate) console_sink: Option<ConsoleSink>,
    pub(crate) host_fn_names: Vec<String>,
    pub(crate) seccomp: crate::seccomp::Seccomp,
    /// When `build()` was called.
    pub(crate) started: std::time::Instant,
}

/// An open KVM device and a fresh VM.
pub(crate) struct Vm {
    pub(crate) kvm: Kvm,
    pub(crate) fd: VmFd,
    pub(crate) cpuid: CpuId,
    pub(crate) features: Features,
}

impl Settings {
    /// `BuildError::Vm` for a failed VM-level ioctl `op`.
    pub(crate) fn vm_err(
        &self,
        op: &'static str,
    ) -> impl FnOnce(kvm_ioctls::Error) -> BuildError + '_ {
        move |source| BuildError::Vm {
            zone: self.zone.clone(),
            op,
            source,
        }
    }

    /// Installs the kick handler, starts the process-wide service threads (from this thread,
    /// which zones does not filter), opens and checks KVM, creates a VM.
    pub(crate) fn open_vm(&self) -> Result<Vm, BuildError> {
        self.services()?;
        let kvm = kvm::open(&self.kvm_path, self.vcpus).map_err(|source| BuildError::Kvm {
            zone: self.zone.clone(),
            source,
        })?;
        let cpuid = cpuid::supported(&kvm).map_err(self.vm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let features = cpuid::features(&cpuid);
        let fd = kvm.create_vm().map_err(self.vm_err("KVM_CREATE_VM"))?;
        Ok(Vm {
            kvm,
            fd,
            cpuid,
            features,
        })
    }

    /// Installs the kick handler and starts the process-wide service threads (once; from this
    /// thread, which zones does not filter).
    fn services(&self) -> Result<(), BuildError> {
        crate::seccomp::start_supervisor();
        crate::deadline::start();
        kick::install_handler().map_err(|source| BuildError::Kick {
            zone: self.zone.clone(),
            source,
        })
    }

    /// Allocates guest memory as `regions`, for huge pages ([`memory::allocate_huge`]: only Linux
    /// zones come here), and registers it with the VM.
    pub(crate) fn memory(
        &self,
        vm: &Vm,
        regions: &[(u64, u64)],
    ) -> Result<GuestMemoryMmap, BuildError> {
        let err = |source| BuildError::Memory {
            zone: self.zone.clone(),
            source,
        };
        let mem = memory::allocate_huge(regions).map_err(err)?;
        memory::register(&vm.fd, &mem).map_err(err)?;
        Ok(mem)
    }

    /// Creates every vCPU and lets `configure` set it up.
    pub(crate) fn vcpus(
        &self,
        vm: &Vm,
        mut configure: impl FnMut(&VcpuFd, u32) -> Result<(), (&'static str, kvm_ioctls::Error)>,
    ) -> Result<Vec<VcpuFd>, BuildError> {
        (0..self.vcpus)
            .map(|index| {
                let err = |(op, source)| BuildError::Vcpu {
                    zone: self.zone.clone(),
                    vcpu: index,
                    op,
                    source,
                };
                let fd = vm
                    .fd
                    .create_vcpu(u64::from(index))
                    .map_err(|e| err(("KVM_CREATE_VCPU", e)))?;
                configure(&fd, index).map_err(err)?;
                Ok(fd)
            })
            .collect()
    }

    /// The zone's shared state, over `mem`.
    pub(crate) fn shared(&self, mem: &GuestMemoryMmap) -> Arc<ZoneShared> {
        Arc::new(ZoneShared {
            id: self.id,
            name: self.zone.clone(),
            control: Control::new(self.vcpus, self.start_paused),
            metrics: Metrics::new(self.vcpus, self.host_fn_names.clone(), self.mem_size),
            events: EventBus::new(&self.zone, self.id),
            console: ConsoleBuffer::new(self.console_limit, self.console_sink.clone()),
            console_limit: self.console_limit,
            kickers: (0..self.vcpus).map(|_| Kicker::default()).collect(),
            memory: RwLock::new(Some(mem.clone())),
            deadline: Mutex::new(None),
            devices: Arc::new(crate::device::Devices::new(self.start_paused)),
            device_sync: Mutex::new(()),
            seccomp: self.seccomp,
            boot: crate::boot_report::BootClock::new(self.started),
        })
    }

    /// Records the build's phases, hands each vCPU to its waiting thread ([`vcpu_threads`](Self::vcpu_threads))
    /// and returns the running zone.
    pub(crate) fn launch(
        &self,
        vm: Vm,
        shared: Arc<ZoneShared>,
        vcpus: Vec<VcpuFd>,
        exits: Arc<dyn GuestExits>,
        threads: VcpuThreads,
        phases: crate::trace::Phases,
    ) -> Result<Zone, BuildError> {
        let mut zone = Zone {
            handle: ZoneHandle {
                shared: shared.clone(),
            },
            threads: Vec::new(),
            vm: Some(vm.fd),
            kvm: Some(vm.kvm),
            keep: Vec::new(),
        };
        if let Some(after) = self.deadline {
            zone.set_deadline(after);
        }
        // Recorded before the vCPUs run: the guest's first marks come after it.
        shared.boot.launched(phases.into_list());
        zone.threads = threads.run(vcpus, &shared, &exits);
        Ok(zone)
    }

    /// Starts the zone's vCPU threads, filtered as `kind`, to wait for their vCPUs
    /// ([`launch`](Self::launch) hands them over): started early in a build, they install
    /// their filters while the build goes on.
    pub(crate) fn vcpu_threads(
        &self,
        kind: crate::seccomp::ThreadKind,
        before_filter: Arc<dyn Fn(u32) + Send + Sync>,
        spin: std::time::Duration,
    ) -> Result<VcpuThreads, BuildError> {
        // The process-wide services start from this unfiltered thread, before any vCPU thread.
        self.services()?;
        VcpuThreads::start(
            short(&self.zone),
            self.vcpus,
            kind,
            self.seccomp,
            before_filter,
            spin,
        )
        .map_err(|source| BuildError::Thread {
            zone: self.zone.clone(),
            source,
        })
    }
}

/// A thread-name prefix: Linux keeps 15 bytes of a thread name.
pub(crate) fn short(name: &str) -> &str {
    let mut end = name.len().min(12);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}
