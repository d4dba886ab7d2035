//! A micro zone's guest memory is made on its first vCPU thread, before that thread installs its
//! filter, while the building thread creates the VM and the vCPUs: the vCPU thread allocates the
//! memory and writes the program's image into it, waits for the VM, and registers the memory
//! with it. The two halves of a build overlap instead of following each other.
//!
//! The hand-over cannot leave either side waiting for good: the building thread hands the VM
//! over (or gives up, dropping its end) before it can return, and waits for the memory only
//! after that; the vCPU thread's work always ends, sending its result or finding nobody to send
//! it to.

use super::{GuestProgram, Loaded, layout::MicroLayout, load};
use crate::builder::BuildError;
use crate::memory;
use crate::vcpu::recv_spinning;
use crate::vmm::{Settings, Vm};
use kvm_ioctls::VmFd;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;
use vm_memory::GuestMemoryMmap;

/// How long either side spins for the other before it sleeps: both halves of a micro zone's
/// build take a few hundred microseconds, and a sleeping thread's wake-up costs tens of them.
pub(crate) const SPIN: Duration = Duration::from_millis(1);

/// The memory the vCPU thread made, registered with the VM.
pub(crate) struct Prepared {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) loaded: Loaded,
}

type Outcome = Result<Prepared, BuildError>;

/// The work for the first vCPU thread, run before its filter.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The building thread's end before it has the VM.
pub(crate) struct Preparation {
    vm: SyncSender<VmFd>,
    done: Receiver<Outcome>,
    zone: String,
}

/// The building thread's end once the VM is handed over: the memory still to come.
pub(crate) struct Pending {
    done: Receiver<Outcome>,
    zone: String,
}

/// The two ends of zone `s`'s preparation of `program` laid out as `plan`.
pub(crate) fn new(s: &Settings, program: &GuestProgram, plan: &MicroLayout) -> (Preparation, Job) {
    let (vm_tx, vm_rx) = sync_channel::<VmFd>(1);
    let (done_tx, done_rx) = sync_channel::<Outcome>(1);
    let (zone, program, plan, vcpus) = (s.zone.clone(), program.clone(), plan.clone(), s.vcpus);
    let for_job = zone.clone();
    let job: Job = Box::new(move || {
        let zone = for_job;
        let memory_err = |source| BuildError::Memory {
            zone: zone.clone(),
            source,
        };
        let made = memory::allocate(&[(0, plan.mem_size)])
            .map_err(memory_err)
            .and_then(|mem| {
                load(&mem, &program, &plan, vcpus)
                    .map(|loaded| (mem, loaded))
                    .map_err(|source| BuildError::Load {
                        zone: zone.clone(),
                        source,
                    })
            });
        let outcome = match made {
            Ok((mem, loaded)) => {
                // A closed channel: the build gave up before it had a VM; nobody waits.
                let Ok(vm) = recv_spinning(&vm_rx, SPIN) else {
                    return;
                };
                memory::register(&vm, &mem)
                    .map(|()| Prepared { mem, loaded })
                    .map_err(memory_err)
            }
            Err(e) => Err(e),
        };
        let _ = done_tx.send(outcome);
    });
    (
        Preparation {
            vm: vm_tx,
            done: done_rx,
            zone,
        },
        job,
    )
}

impl Preparation {
    /// Makes the VM with `make` and hands the vCPU thread a second descriptor of it. Whatever
    /// `make` returns, the vCPU thread stops waiting for the VM when this returns.
    pub(crate) fn with_vm(
        self,
        s: &Settings,
        make: impl FnOnce() -> Result<Vm, BuildError>,
    ) -> Result<(Vm, Pending), BuildError> {
        let vm = make()?;
        // SAFETY: the VM's descriptor stays open while it is borrowed here (`vm` owns it).
        let second = unsafe { BorrowedFd::borrow_raw(vm.fd.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(|e| BuildError::Vm {
                zone: s.zone.clone(),
                op: "F_DUPFD_CLOEXEC (the VM for vCPU thread 0)",
                source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EBADF)),
            })?;
        // SAFETY: `second` is a fresh duplicate of the VM's descriptor, owned by nothing else;
        // the new `VmFd` takes it over and closes it.
        let second = unsafe { vm.kvm.create_vmfd_from_rawfd(second.into_raw_fd()) }
            .map_err(s.vm_err("KVM_GET_VCPU_MMAP_SIZE"))?;
        // The thread only stops receiving when it has failed before (it then reports that).
        let _ = self.vm.send(second);
        Ok((
            vm,
            Pending {
                done: self.done,
                zone: self.zone,
            },
        ))
    }
}

impl Pending {
    /// Waits for the memory.
    pub(crate) fn wait(self) -> Result<Prepared, BuildError> {
        recv_spinning(&self.done, SPIN).unwrap_or_else(|_| {
            Err(BuildError::Thread {
                zone: self.zone,
                source: std::io::Error::other(
                    "vCPU thread 0 ended before it made the zone's memory",
                ),
            })
        })
    }
}
