//! Micro zones: one static program at CPL3 on host-built page tables, with hypercalls as its only
//! way out and CPL0 stubs that turn every CPU exception into a [`Fault`] report.

pub(crate) mod cpu;
pub mod elf;
mod host_calls;
pub(crate) mod hypercall;
pub(crate) mod layout;
pub(crate) mod paging;
mod prepare;
mod program;

pub use layout::LayoutError;
pub use program::GuestProgram;

use crate::builder::BuildError;
use crate::cpuid::{self, Features};
use crate::exit::{Exception, Fault, ZoneExit};
use crate::host_fn::HostFunctions;
use crate::memory::{AccessMap, Span};
use crate::vcpu::{Flow, GuestExits, VcpuCtx};
use crate::vmm::Settings;
use crate::zone::Zone;
use crate::zone::ZoneShared;
use hypercall::{Dispatcher, Outcome};
use kvm_bindings::{CpuId, KVM_MP_STATE_RUNNABLE, kvm_fpu, kvm_mp_state};
use kvm_ioctls::VcpuFd;
use layout::MicroLayout;
use paging::{PageFlags, PageTables, PagingError};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};
use zone_guest::abi::{
    BOOT_MAGIC, FAULT_PORT, HYPERCALL_PORT, PAGE_SIZE, boot_info, layout as abi, mailbox,
};

/// Why a program could not be placed in guest memory.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Writing page tables failed.
    #[error("page tables: {0}")]
    Paging(#[from] PagingError),
    /// Writing guest memory failed.
    #[error("writing guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    /// The argument block is invalid.
    #[error("program arguments: {0}")]
    Args(&'static str),
}

/// What loading produced: what the guest may name in hypercalls.
pub(crate) struct Loaded {
    pub(crate) access: AccessMap,
}

/// Where the page tables' root goes (the first table [`PageTables`] takes from its area), known
/// before they are written, so that the vCPUs can be set up meanwhile.
const CR3: u64 = abi::PAGE_TABLES;

const SUP_R: PageFlags = PageFlags::new(false, false, false);
const SUP_RX: PageFlags = PageFlags::new(false, false, true);
const SUP_RW: PageFlags = PageFlags::new(false, true, false);
const USER_R: PageFlags = PageFlags::new(true, false, false);
const USER_RW: PageFlags = PageFlags::new(true, true, false);

fn pages(bytes: u64) -> u64 {
    bytes.next_multiple_of(PAGE_SIZE)
}

/// Writes the whole micro-zone image into `mem`: CPU tables, page tables, program segments, boot
/// info, arguments and mailboxes.
pub(crate) fn load(
    mem: &GuestMemoryMmap,
    program: &GuestProgram,
    plan: &MicroLayout,
    vcpus: u32,
) -> Result<Loaded, LoadError> {
    program.check_args()?;
    let args = program.arg_block();
    let vcpu_pages = u64::from(vcpus) * PAGE_SIZE;
    cpu::write_tables(mem, vcpus)?;

    let mut pt = PageTables::new(mem, abi::PAGE_TABLES..abi::PAGE_TABLES_END)?;
    pt.map(abi::GDT..abi::GDT + PAGE_SIZE, SUP_R)?;
    pt.map(abi::IDT..abi::IDT + PAGE_SIZE, SUP_R)?;
    pt.map(abi::TSS..abi::STUBS, SUP_R)?;
    pt.map(abi::STUBS..abi::STUBS + PAGE_SIZE, SUP_RX)?;
    pt.map(abi::KERNEL_STACKS..abi::KERNEL_STACKS + vcpu_pages, SUP_RW)?;
    let mut spans = Vec::new();
    let mut user = |pt: &mut PageTables<'_>,
                    start: u64,
                    end: u64,
                    flags: PageFlags|
     -> Result<(), PagingError> {
        pt.map(start..end, flags)?;
        spans.push(Span {
            start,
            end,
            writable: flags.write,
        });
        Ok(())
    };
    user(&mut pt, plan.boot_info, plan.boot_info + PAGE_SIZE, USER_R)?;
    // A small argument block goes into the boot-info page, which the program reads anyway.
    let inline_args = args.len() as u64 <= boot_info::INLINE_ARGS_MAX;
    let args_at = if inline_args {
        plan.boot_info + boot_info::INLINE_ARGS
    } else {
        abi::ARGS
    };
    if !inline_args {
        user(
            &mut pt,
            abi::ARGS,
            abi::ARGS + pages(args.len() as u64),
            USER_R,
        )?;
    }
    user(
        &mut pt,
        plan.mailboxes,
        plan.mailboxes + vcpu_pages,
        USER_RW,
    )?;
    for seg in &program.image.segments {
        let flags = PageFlags::new(true, seg.flags.write, seg.flags.exec);
        user(&mut pt, seg.memory.start, seg.memory.end, flags)?;
        mem.write_slice(&program.elf[seg.file.clone()], GuestAddress(seg.vaddr))?;
    }
    user(&mut pt, plan.heap.start, plan.heap.end, USER_RW)?;
    for stack in &plan.stacks {
        user(&mut pt, stack.start, stack.end, USER_RW)?;
    }
    debug_assert_eq!(pt.root(), CR3);

    let info = [
        (boot_info::MAGIC, BOOT_MAGIC),
        (boot_info::VCPUS, u64::from(vcpus)),
        (boot_info::MEM_SIZE, plan.mem_size),
        (boot_info::HEAP_START, plan.heap.start),
        (boot_info::HEAP_END, plan.heap.end),
        (boot_info::ARGS_PTR, args_at),
        (boot_info::ARGS_LEN, args.len() as u64),
        (boot_info::MAILBOXES, plan.mailboxes),
    ];
    for (offset, value) in info {
        mem.write_obj(value, GuestAddress(plan.boot_info + offset))?;
    }
    mem.write_slice(&args, GuestAddress(args_at))?;
    for v in 0..vcpus {
        let mb = plan.mailbox(v);
        let words = [
            (mailbox::SELF_PTR, mb),
            (mailbox::VCPU, u64::from(v)),
            (mailbox::BOOT_INFO, plan.boot_info),
        ];
        for (word, value) in words {
            mem.write_obj(value, GuestAddress(mb + 8 * word as u64))?;
        }
    }
    // vCPU 0's top stack page is written too (its last word, which the program's first call
    // overwrites): KVM fills in a page the guest has not touched yet only if the host has (see
    // `layout`), so the stack, the boot info and the mailboxes then cost one fault.
    if let Some(stack) = plan.stacks.first() {
        mem.write_obj(0u64, GuestAddress(stack.end - 8))?;
    }
    Ok(Loaded {
        access: AccessMap::new(spans),
    })
}

/// Builds and starts a micro zone.
pub(crate) fn build(
    s: &Settings,
    program: &GuestProgram,
    functions: HostFunctions,
) -> Result<Zone, BuildError> {
    let load_err = |source| BuildError::Load {
        zone: s.zone.clone(),
        source,
    };
    let plan = layout::plan(program.image_end(), s.vcpus, program.stack_size, s.mem_size).map_err(
        |source| BuildError::Layout {
            zone: s.zone.clone(),
            source,
        },
    )?;
    program.check_args().map_err(load_err)?;
    let mut phases = crate::trace::Phases::new(&s.zone);
    // Host functions run on threads of their own, unfiltered (they are the embedder's code),
    // unless the zone's threads are not filtered at all.
    let helpers = host_calls::Helpers::new(
        crate::vmm::short(&s.zone),
        s.id,
        s.vcpus,
        !functions.is_empty() && s.seccomp != crate::seccomp::Seccomp::Off,
    );
    // vCPU thread 0 makes the memory while this thread makes the VM and the vCPUs.
    let (preparation, job) = prepare::new(s, program, &plan);
    let job = std::sync::Mutex::new(Some(job));
    let starter = helpers.starter();
    let before_filter: Arc<dyn Fn(u32) + Send + Sync> = Arc::new(move |index| {
        starter(index);
        if index == 0 {
            let job = job.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(job) = job {
                job();
            }
        }
    });
    let threads = s.vcpu_threads(
        crate::seccomp::ThreadKind::Vcpu,
        before_filter,
        prepare::SPIN,
    )?;
    phases.done("threads started");
    let (vm, memory) = preparation.with_vm(s, || {
        let vm = s.open_vm()?;
        crate::kvm::create_split_irqchip(&vm.fd)
            .map_err(s.vm_err("KVM_ENABLE_CAP(SPLIT_IRQCHIP)"))?;
        Ok(vm)
    })?;
    phases.done("VM");
    let vcpus = s.vcpus(&vm, |fd, index| {
        let cpuid = if program.host_cpu_features {
            cpuid::for_vcpu(&vm.cpuid, index, true)
        } else {
            cpuid::for_micro_vcpu(&vm.cpuid)
        };
        configure_vcpu(fd, index, program.image.entry, &plan, &cpuid, vm.features)
    })?;
    phases.done("vCPUs");
    let prepare::Prepared { mem, loaded } = memory.wait()?;
    phases.done("memory and program");
    let shared = s.shared(&mem);
    let host_threads = helpers.collect().map_err(|source| BuildError::Thread {
        zone: s.zone.clone(),
        source,
    })?;
    let dispatcher = Dispatcher {
        zone: s.zone.clone(),
        mem,
        mailboxes: plan.mailboxes,
        access: loaded.access,
        functions,
        host_threads,
    };
    let exits = Arc::new(MicroExits {
        dispatcher,
        shared: shared.clone(),
    });
    let zone = s.launch(vm, shared, vcpus, exits, threads, phases)?;
    Ok(zone)
}

/// Sets up vCPU `index` to start the program at `entry` at CPL3, with `cpuid` as its CPUID.
pub(crate) fn configure_vcpu(
    fd: &VcpuFd,
    index: u32,
    entry: u64,
    plan: &MicroLayout,
    cpuid: &CpuId,
    features: Features,
) -> Result<(), (&'static str, kvm_ioctls::Error)> {
    fd.set_cpuid2(cpuid).map_err(|e| ("KVM_SET_CPUID2", e))?;
    let sregs = fd.get_sregs().map_err(|e| ("KVM_GET_SREGS", e))?;
    fd.set_sregs(&cpu::user_sregs(
        sregs,
        index,
        CR3,
        plan.mailbox(index),
        features,
    ))
    .map_err(|e| ("KVM_SET_SREGS", e))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(|e| ("KVM_SET_FPU", e))?;
    let top = plan.stacks[index as usize].end;
    fd.set_regs(&cpu::user_regs(entry, top, index, plan.boot_info))
        .map_err(|e| ("KVM_SET_REGS", e))?;
    // With the in-kernel LAPIC every vCPU but the first waits for INIT/SIPI; micro zones start
    // all vCPUs at once.
    let runnable = kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    };
    fd.set_mp_state(runnable)
        .map_err(|e| ("KVM_SET_MP_STATE", e))?;
    Ok(())
}

/// Exit handling for micro zones: hypercalls and fault reports.
pub(crate) struct MicroExits {
    pub(crate) dispatcher: Dispatcher,
    pub(crate) shared: Arc<ZoneShared>,
}

impl GuestExits for MicroExits {
    fn io_out(&self, cx: &VcpuCtx<'_>, port: u16, data: &[u8]) -> Flow {
        match port {
            // The ABI's only way out: `out dx, eax` to the hypercall port, all four bytes.
            HYPERCALL_PORT if data.len() == 4 => {
                let mut nr = [0u8; 4];
                nr.copy_from_slice(data);
                match self
                    .dispatcher
                    .handle(cx.index, u32::from_le_bytes(nr), self.shared.as_ref())
                {
                    Outcome::Return { .. } => Flow::Continue,
                    Outcome::Stop(exit) => Flow::Stop(exit),
                    Outcome::Idle => Flow::Idle,
                }
            }
            FAULT_PORT => report_fault(cx, &self.dispatcher.mem),
            // The I/O bitmap has to open the four bytes of the hypercall port for `out dx, eax`;
            // any other access to them (or to a port the bitmap closes, should a KVM not honour
            // it) is the guest's doing: refused, reported, and the guest goes on.
            other => {
                self.shared.violation(
                    cx.index,
                    "hypercall",
                    format!(
                        "stray {}-byte write to I/O port {other:#x}; a hypercall is `out dx, eax`                          to port {HYPERCALL_PORT:#x}",
                        data.len()
                    ),
                );
                Flow::Continue
            }
        }
    }

    fn io_in(&self, cx: &VcpuCtx<'_>, port: u16, data: &mut [u8]) -> Flow {
        // Only the hypercall port is reachable from CPL3; reading it means nothing.
        data.fill(0xff);
        self.shared.violation(
            cx.index,
            "hypercall",
            format!("read from I/O port {port:#x}"),
        );
        Flow::Continue
    }

    fn mmio_read(&self, cx: &VcpuCtx<'_>, addr: u64, _: &mut [u8]) -> Flow {
        unexpected(cx, format!("MMIO read at {addr:#x}"))
    }

    fn mmio_write(&self, cx: &VcpuCtx<'_>, addr: u64, _: &[u8]) -> Flow {
        unexpected(cx, format!("MMIO write at {addr:#x}"))
    }
}

fn unexpected(cx: &VcpuCtx<'_>, what: String) -> Flow {
    Flow::Stop(ZoneExit::Crashed {
        vcpu: cx.index,
        reason: format!("{what}, which micro-zone code cannot reach"),
    })
}

/// Reads the exception frame a CPL0 stub left on the vCPU's exception stack:
/// `[vector, error code, rip, cs, rflags, rsp, ss]`.
fn report_fault(cx: &VcpuCtx<'_>, mem: &GuestMemoryMmap) -> Flow {
    let (regs, sregs) = match (cx.regs(), cx.sregs()) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => {
            return Flow::Stop(ZoneExit::Crashed {
                vcpu: cx.index,
                reason: format!("reading registers after a fault: {e}"),
            });
        }
    };
    let low = abi::KERNEL_STACKS + u64::from(cx.index) * PAGE_SIZE;
    let frame_end = regs.rsp.checked_add(7 * 8);
    if regs.rsp < low || frame_end.is_none_or(|end| end > low + PAGE_SIZE) || sregs.cs.dpl != 0 {
        return Flow::Stop(ZoneExit::Crashed {
            vcpu: cx.index,
            reason: format!(
                "fault port written with rsp {:#x} at CPL{}, not by an exception stub",
                regs.rsp, sregs.cs.dpl
            ),
        });
    }
    let mut raw = [0u8; 56];
    if mem.read_slice(&mut raw, GuestAddress(regs.rsp)).is_err() {
        return Flow::Stop(ZoneExit::Crashed {
            vcpu: cx.index,
            reason: "exception frame unreadable".into(),
        });
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&raw[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    let vector = word(0) as u8;
    Flow::Stop(ZoneExit::Fault(Fault {
        vcpu: cx.index,
        vector,
        error_code: Exception::has_error_code(vector).then(|| word(1)),
        rip: word(2),
        cr2: (vector == 14).then_some(sregs.cr2),
        cpl: (word(3) & 3) as u8,
    }))
}
