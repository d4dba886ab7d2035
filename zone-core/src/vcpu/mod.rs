//! vCPU threads: each runs KVM_RUN in a loop, counts every exit, hands I/O and MMIO exits to the
//! zone's [`GuestExits`], and checks the zone's control state between runs.

pub(crate) mod activity;
mod exit;
pub(crate) mod kick;
mod threads;

pub(crate) use threads::{VcpuThreads, recv_spinning};

use crate::control::Step;
use crate::exit::ZoneExit;
use crate::zone::ZoneShared;
use exit::Exit;
use kvm_bindings::{kvm_regs, kvm_run, kvm_sregs};
use kvm_ioctls::VcpuFd;
use std::cell::Cell;
use std::sync::Arc;

/// What the exit loop does after an exit was handled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Re-enter the guest.
    Continue,
    /// End the zone.
    Stop(ZoneExit),
    /// This vCPU is done; the zone goes on.
    Idle,
}

/// The vCPU an exit came from.
pub(crate) struct VcpuCtx<'a> {
    pub(crate) index: u32,
    fd: &'a VcpuFd,
}

impl VcpuCtx<'_> {
    pub(crate) fn regs(&self) -> Result<kvm_regs, kvm_ioctls::Error> {
        self.fd.get_regs()
    }

    pub(crate) fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error> {
        self.fd.get_sregs()
    }
}

/// How a kind of guest answers exits that need the VMM. Shared by all vCPUs of a zone.
pub(crate) trait GuestExits: Send + Sync {
    fn io_out(&self, cx: &VcpuCtx<'_>, port: u16, data: &[u8]) -> Flow;
    fn io_in(&self, cx: &VcpuCtx<'_>, port: u16, data: &mut [u8]) -> Flow;
    fn mmio_read(&self, cx: &VcpuCtx<'_>, addr: u64, data: &mut [u8]) -> Flow;
    fn mmio_write(&self, cx: &VcpuCtx<'_>, addr: u64, data: &[u8]) -> Flow;
    /// The guest shut the machine down (triple fault): how the zone ends.
    fn shutdown(&self, _cx: &VcpuCtx<'_>) -> ZoneExit {
        ZoneExit::Shutdown
    }
    fn hlt(&self, cx: &VcpuCtx<'_>) -> Flow {
        Flow::Stop(ZoneExit::Crashed {
            vcpu: cx.index,
            reason: "unexpected HLT exit".into(),
        })
    }
}

thread_local! {
    /// Id of the zone whose vCPU this thread runs (0: none).
    static CURRENT_ZONE: Cell<u64> = const { Cell::new(0) };
}

/// The id of the zone whose vCPU runs on this thread, if any.
pub(crate) fn current_zone() -> u64 {
    CURRENT_ZONE.with(Cell::get)
}

/// Marks this thread as acting for a vCPU of zone `id` (a host-call thread).
pub(crate) fn set_current_zone(id: u64) {
    CURRENT_ZONE.with(|c| c.set(id));
}

/// Body of a vCPU thread, whose filter is installed already (or failed to be: `failed`).
pub(crate) fn run(
    mut fd: VcpuFd,
    index: u32,
    shared: Arc<ZoneShared>,
    exits: Arc<dyn GuestExits>,
    failed: threads::FilterFailed,
) {
    if let Some(e) = failed {
        // Never run a guest on an unfiltered thread: the zone ends instead.
        shared.stop(ZoneExit::Crashed {
            vcpu: index,
            reason: e.to_string(),
        });
    }
    let run_ptr: *mut kvm_run = fd.get_kvm_run();
    kick::attach(run_ptr);
    CURRENT_ZONE.with(|c| c.set(shared.id));
    shared.kickers[index as usize].register_current();

    let flow = exit_loop(&mut fd, index, &shared, exits.as_ref(), run_ptr);
    if let Flow::Stop(exit) = flow {
        shared.stop(exit);
    }

    shared.kickers[index as usize].unregister();
    kick::detach();
    CURRENT_ZONE.with(|c| c.set(0));
    drop(fd);
    drop(exits);
    shared.control.finish(|exit| shared.on_stopped(exit));
}

fn exit_loop(
    fd: &mut VcpuFd,
    index: u32,
    shared: &ZoneShared,
    exits: &dyn GuestExits,
    run_ptr: *mut kvm_run,
) -> Flow {
    loop {
        if shared.control.pending() && shared.control.checkpoint() == Step::Stop {
            return Flow::Idle;
        }
        shared.metrics.enter(index);
        let exit = Exit::from_run(fd.run());
        shared.metrics.leave(index, exit.reason());
        let cx = VcpuCtx { index, fd };
        let flow = match exit {
            Exit::IoOut { port, data } => exits.io_out(&cx, port, data.as_slice()),
            Exit::IoIn { port, len } => {
                let (mut small, mut large) = ([0u8; 16], Vec::new());
                let buf: &mut [u8] = if len <= small.len() {
                    &mut small[..len]
                } else {
                    large.resize(len, 0);
                    &mut large
                };
                let flow = exits.io_in(&cx, port, buf);
                complete_io_in(run_ptr, buf);
                flow
            }
            Exit::MmioRead { addr, len } => {
                let mut buf = [0u8; 8];
                let len = len.min(8);
                let flow = exits.mmio_read(&cx, addr, &mut buf[..len]);
                complete_mmio_read(run_ptr, &buf[..len]);
                flow
            }
            Exit::MmioWrite { addr, data } => exits.mmio_write(&cx, addr, data.as_slice()),
            Exit::Hlt => exits.hlt(&cx),
            Exit::Shutdown => Flow::Stop(exits.shutdown(&cx)),
            Exit::Interrupted => {
                kick::rearm(run_ptr);
                Flow::Continue
            }
            Exit::SystemEvent(kind) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                    Flow::Stop(ZoneExit::Shutdown)
                }
                other => crashed(index, format!("KVM system event {other}")),
            },
            Exit::InternalError => crashed(index, internal_error_detail(run_ptr)),
            Exit::FailEntry(reason) => crashed(
                index,
                format!("VM entry failed (hardware reason {reason:#x})"),
            ),
            Exit::Unsupported(what) => crashed(index, format!("unsupported exit {what}")),
            Exit::RunFailed(errno) => crashed(
                index,
                format!(
                    "KVM_RUN failed: {}",
                    std::io::Error::from_raw_os_error(errno)
                ),
            ),
        };
        if flow != Flow::Continue {
            return flow;
        }
    }
}

fn crashed(vcpu: u32, reason: String) -> Flow {
    Flow::Stop(ZoneExit::Crashed { vcpu, reason })
}

fn internal_error_detail(run_ptr: *mut kvm_run) -> String {
    // SAFETY: called right after KVM_RUN reported KVM_EXIT_INTERNAL_ERROR on this thread's vCPU,
    // so the `internal` member of the exit union is the valid one; `run_ptr` is mapped.
    let internal = unsafe { (*run_ptr).__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    format!(
        "KVM internal error, suberror {} data {:x?}",
        internal.suberror,
        &internal.data[..n]
    )
}

fn complete_io_in(run_ptr: *mut kvm_run, data: &[u8]) {
    // SAFETY: called right after a KVM_EXIT_IO (in) exit on this thread's vCPU, so the `io`
    // member is valid and `data_offset` points at `size * count` bytes inside the kvm_run mapping
    // (KVM ABI); we copy at most that many.
    unsafe {
        let io = (*run_ptr).__bindgen_anon_1.io;
        let len = (io.size as usize * io.count as usize).min(data.len());
        let dst = run_ptr.cast::<u8>().add(io.data_offset as usize);
        std::ptr::copy_nonoverlapping(data.as_ptr(), dst, len);
    }
}

fn complete_mmio_read(run_ptr: *mut kvm_run, data: &[u8]) {
    // SAFETY: called right after a KVM_EXIT_MMIO read on this thread's vCPU, so the `mmio` member
    // is valid; `data` is at most 8 bytes, the size of `mmio.data`.
    unsafe {
        let mmio = &mut (*run_ptr).__bindgen_anon_1.mmio;
        let len = data.len().min(mmio.data.len());
        mmio.data[..len].copy_from_slice(&data[..len]);
    }
}
