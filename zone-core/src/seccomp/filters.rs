//! The allowlists, one per kind of thread, compiled with seccompiler.
//!
//! Every thread: memory (mmap and mprotect never executable), futexes, time, its own signals
//! (rt_sigreturn, the kick to a vCPU and SIGABRT for a clean abort), reads and writes on the
//! descriptors it was given, closing them, getrandom (std's hash maps), exit. Then:
//! - vCPU threads: `ioctl` limited to KVM_RUN, KVM_GET_REGS and KVM_GET_SREGS (fault reports),
//!   and `dup` (a device's activation hands its worker copies of the queue eventfds); in a zone
//!   with PCI functions also KVM_SET_GSI_ROUTING (the guest programs MSI vectors),
//!   KVM_SET_USER_MEMORY_REGION (a mapped BAR follows the guest's BAR moves),
//!   VFIO_DEVICE_SET_IRQS and VFIO_DEVICE_RESET (a passed-through function's MSI-X and reset)
//!   and positioned reads and writes (its trapped BAR and configuration accesses);
//! - device threads: their event manager (epoll), `ioctl(FIONBIO)` (non-blocking sockets) and
//!   what the device declares ([`VirtioDevice::syscalls`](crate::device::VirtioDevice::syscalls):
//!   a disk's positioned I/O and flushes, a network's Internet sockets and timer);
//! - the supervisor: epoll and the three seccomp notification ioctls;
//! - helpers and the deadline service: nothing more.
//!
//! No thread may open files, execute programs, create processes or threads, map executable
//! memory, or signal anything but a vCPU (the kick) and itself (abort).

use super::{Seccomp, ThreadKind};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// `_IOR(KVMIO, nr, size)`.
fn kvm_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// VFIO_DEVICE_SET_IRQS (`_IO(VFIO_TYPE, VFIO_BASE + 10)`).
const VFIO_DEVICE_SET_IRQS: u64 = (b';' as u64) << 8 | (100 + 10);
/// VFIO_DEVICE_RESET (`_IO(VFIO_TYPE, VFIO_BASE + 11)`).
const VFIO_DEVICE_RESET: u64 = (b';' as u64) << 8 | (100 + 11);

/// KVM_RUN (`_IO(KVMIO, 0x80)`).
const KVM_RUN: u64 = 0xae80;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Arguments 0-5 and these operators always make a valid condition.
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .unwrap_or_else(|_| unreachable!("seccomp condition on argument {arg}"))
}

/// Allows `nr` when argument `arg` equals one of `values`.
fn allow_values(rules: &mut Rules, nr: i64, arg: u8, values: &[u64]) {
    let alternatives = values
        .iter()
        .filter_map(|v| SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)]).ok())
        .collect();
    rules.insert(nr, alternatives);
}

/// Allows `nr` when argument `arg` has none of `bits` set.
fn allow_without_bits(rules: &mut Rules, nr: i64, arg: u8, bits: u64) {
    let rule = SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(bits), 0)]).ok();
    rules.insert(nr, rule.into_iter().collect());
}

fn allow(rules: &mut Rules, nrs: &[i64]) {
    for nr in nrs {
        rules.insert(*nr, Vec::new());
    }
}

/// What every thread zones spawns may do.
fn base() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_mremap,
            libc::SYS_brk,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_gettimeofday,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_restart_syscall,
            libc::SYS_getrandom,
            libc::SYS_rseq,
            libc::SYS_set_robust_list,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    let exec = libc::PROT_EXEC as u64;
    allow_without_bits(&mut r, libc::SYS_mmap, 2, exec);
    allow_without_bits(&mut r, libc::SYS_mprotect, 2, exec);
    let kick = crate::vcpu::kick::kick_signal() as u64;
    allow_values(&mut r, libc::SYS_tgkill, 2, &[kick, libc::SIGABRT as u64]);
    let fcntl = [
        libc::F_GETFL,
        libc::F_SETFL,
        libc::F_GETFD,
        libc::F_SETFD,
        libc::F_DUPFD_CLOEXEC,
    ];
    allow_values(&mut r, libc::SYS_fcntl, 1, &fcntl.map(|c| c as u64));
    r
}

/// The rules of `kind`, plus `extra` calls allowed outright.
pub(crate) fn rules(kind: ThreadKind, extra: &[i64]) -> Rules {
    let mut r = base();
    match kind {
        ThreadKind::Vcpu | ThreadKind::PciVcpu => {
            let mut ioctls = vec![
                KVM_RUN,
                kvm_ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>()),
                kvm_ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>()),
            ];
            if kind == ThreadKind::PciVcpu {
                ioctls.extend([
                    crate::device::KVM_SET_GSI_ROUTING,
                    crate::device::KVM_SET_USER_MEMORY_REGION,
                    VFIO_DEVICE_SET_IRQS,
                    VFIO_DEVICE_RESET,
                ]);
                allow(&mut r, &[libc::SYS_pread64, libc::SYS_pwrite64]);
            }
            allow_values(&mut r, libc::SYS_ioctl, 1, &ioctls);
            allow(&mut r, &[libc::SYS_dup]);
        }
        ThreadKind::Device => {
            allow(
                &mut r,
                &[
                    libc::SYS_epoll_create1,
                    libc::SYS_epoll_ctl,
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_dup,
                ],
            );
            // std's set_nonblocking on the sockets a device opens.
            allow_values(&mut r, libc::SYS_ioctl, 1, &[libc::FIONBIO]);
        }
        ThreadKind::Supervisor => {
            allow(
                &mut r,
                &[
                    libc::SYS_epoll_create1,
                    libc::SYS_epoll_ctl,
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                ],
            );
            allow_values(
                &mut r,
                libc::SYS_ioctl,
                1,
                &[
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    libc::SECCOMP_IOCTL_NOTIF_SEND,
                    libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                ],
            );
        }
        ThreadKind::Helper | ThreadKind::Deadlines => {}
    }
    for nr in extra {
        if *nr == libc::SYS_socket {
            // Internet sockets only: no Unix sockets to the host's daemons, no netlink, no raw
            // packets.
            let families = [libc::AF_INET as u64, libc::AF_INET6 as u64];
            allow_values(&mut r, libc::SYS_socket, 0, &families);
            continue;
        }
        r.entry(*nr).or_default();
        // An extra call is allowed outright, whatever conditions the kind had on it.
        if let Some(v) = r.get_mut(nr) {
            v.clear();
        }
    }
    r
}

/// Marks the calls to hand to the supervisor: the program uses SECCOMP_RET_TRAP for them, which
/// `install` rewrites to SECCOMP_RET_USER_NOTIF (seccompiler has no such action). No SIGSYS is
/// ever raised: a program with that rewrite is only installed with a listener.
pub(crate) const NOTIFY_PLACEHOLDER: SeccompAction = SeccompAction::Trap;

/// Compiles `kind`'s filter: allowed calls pass; the rest get `mismatch` ([`bucketed`]).
pub(crate) fn program(
    kind: ThreadKind,
    extra: &[i64],
    mismatch: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    bucketed(rules(kind, extra), &mismatch)
}

/// How many calls one bucket of [`bucketed`] holds.
const BUCKET: usize = 8;

/// `rules` compiled by seccompiler as one program per run of [`BUCKET`] calls (in number
/// order), behind a head that jumps to the program whose range of numbers holds the call's. Each
/// program is whole (its own architecture check, its calls, `mismatch` for the rest), and a
/// call's number selects the one program that can list it: the verdicts of one program over all
/// of `rules`. Why: when a filter is installed, the kernel runs it for every call number to
/// prepare its action cache, so a single chain of every call costs each filtered thread's start
/// (the vCPU filter: about 160 us on the development machine, 70-110 us bucketed).
fn bucketed(
    rules: Rules,
    mismatch: &SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JGE | BPF_K, BPF_JMP | BPF_JA.
    const LD: u16 = 0x20;
    const JGE: u16 = 0x35;
    const JA: u16 = 0x05;
    const NR: u32 = 0;
    let compile = |rules: Rules| -> Result<BpfProgram, seccompiler::BackendError> {
        SeccompFilter::new(
            rules,
            mismatch.clone(),
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?
        .try_into()
    };
    if rules.len() <= BUCKET {
        return compile(rules);
    }
    let entries: Vec<_> = rules.into_iter().collect();
    let mut buckets = Vec::new();
    for chunk in entries.chunks(BUCKET) {
        // The kernel compares the call number as an unsigned 32-bit value; every key is a
        // call number (non-negative, far below 2^31), so both orders agree.
        let first = chunk[0].0 as u32;
        buckets.push((first, compile(chunk.iter().cloned().collect())?));
    }
    let insn = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    // The head: load the number; from the last bucket down to the second, `nr >= first` jumps
    // (through a JA: conditional jumps reach only 255 instructions) to that bucket. The first
    // bucket follows the head.
    let mut start = 1 + 2 * (buckets.len() - 1);
    let starts: Vec<usize> = buckets
        .iter()
        .map(|(_, p)| {
            let at = start;
            start += p.len();
            at
        })
        .collect();
    let mut out = vec![insn(LD, 0, 0, NR)];
    for (i, (first, _)) in buckets.iter().enumerate().skip(1).rev() {
        out.push(insn(JGE, 0, 1, *first));
        let next = out.len() + 1;
        out.push(insn(JA, 0, 0, (starts[i] - next) as u32));
    }
    for (_, program) in buckets {
        out.extend(program);
    }
    Ok(out)
}

/// `program`, behind a head that answers `clone3` with ENOSYS: glibc then falls back to
/// `clone`, which the allowlist refuses and the supervisor reports by name. One filter, not a
/// second one: the kernel compiles every filter and prepares its action cache when it is
/// installed, and a thread's start pays for each.
pub(crate) fn with_clone3_enosys(program: BpfProgram) -> BpfProgram {
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JEQ | BPF_K, BPF_RET | BPF_K.
    const LD: u16 = 0x20;
    const JEQ: u16 = 0x15;
    const RET: u16 = 0x06;
    // The offsets of `arch` and `nr` in `struct seccomp_data`.
    const ARCH: u32 = 4;
    const NR: u32 = 0;
    let insn = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    let mut out = vec![
        insn(LD, 0, 0, ARCH),
        // Another architecture: straight to `program`, which refuses it.
        insn(JEQ, 0, 3, AUDIT_ARCH_X86_64),
        insn(LD, 0, 0, NR),
        insn(JEQ, 0, 1, libc::SYS_clone3 as u32),
        insn(RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ];
    out.extend(program);
    out
}

/// `AUDIT_ARCH_X86_64`: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// What a mode does with a call outside the list when no listener can be had.
pub(crate) fn fallback(mode: Seccomp) -> SeccompAction {
    match mode {
        Seccomp::Log => SeccompAction::Log,
        _ => SeccompAction::Errno(libc::EPERM as u32),
    }
}

/// Every kind of thread, for the tests that go through them all.
#[cfg(test)]
const ALL_KINDS: [ThreadKind; 6] = [
    ThreadKind::Vcpu,
    ThreadKind::PciVcpu,
    ThreadKind::Device,
    ThreadKind::Helper,
    ThreadKind::Deadlines,
    ThreadKind::Supervisor,
];

#[cfg(test)]
#[path = "bucketed_tests.rs"]
mod bucketed_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_and_forbids_the_dangerous_calls() {
        for kind in ALL_KINDS {
            let r = rules(kind, &[]);
            for nr in [
                libc::SYS_openat,
                libc::SYS_open,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_socket,
                libc::SYS_ptrace,
                libc::SYS_kill,
                libc::SYS_mount,
                libc::SYS_bpf,
            ] {
                assert!(
                    !r.contains_key(&nr),
                    "{kind:?} allows {}",
                    super::super::name(nr)
                );
            }
            assert!(program(kind, &[], NOTIFY_PLACEHOLDER).is_ok(), "{kind:?}");
        }
        let net = rules(ThreadKind::Device, &[libc::SYS_socket, libc::SYS_connect]);
        assert_eq!(
            net.get(&libc::SYS_socket).map(Vec::len),
            Some(2),
            "socket for AF_INET and AF_INET6 only"
        );
        assert!(net.get(&libc::SYS_connect).is_some_and(Vec::is_empty));
        let ioctls = |kind| rules(kind, &[]).get(&libc::SYS_ioctl).map_or(0, Vec::len);
        assert_eq!(ioctls(ThreadKind::Vcpu), 3);
        assert_eq!(
            ioctls(ThreadKind::PciVcpu),
            7,
            "KVM_SET_GSI_ROUTING and VFIO's two only where PCI functions are"
        );
        assert_eq!((VFIO_DEVICE_SET_IRQS, VFIO_DEVICE_RESET), (0x3b6e, 0x3b6f));
        assert!(!rules(ThreadKind::Vcpu, &[]).contains_key(&libc::SYS_pwrite64));
    }

    #[test]
    fn the_clone3_head_jumps_into_the_program_it_precedes() {
        let program = program(ThreadKind::Helper, &[], NOTIFY_PLACEHOLDER).unwrap();
        let headed = with_clone3_enosys(program.clone());
        let head = headed.len() - program.len();
        assert_eq!(&headed[head..], &program[..]);
        // Both "not clone3" and "not x86_64" continue at the program's first instruction.
        assert_eq!(1 + 1 + usize::from(headed[1].jf), head);
        assert_eq!(3 + 1 + usize::from(headed[3].jf), head);
        // seccompiler's programs (one a bucket) check the same architecture first.
        let arch_checks: Vec<u32> = program
            .windows(2)
            .filter(|w| w[0].code == 0x20 && w[0].k == 4)
            .map(|w| w[1].k)
            .collect();
        assert!(arch_checks.len() > 1, "{arch_checks:?}");
        assert!(arch_checks.iter().all(|k| *k == AUDIT_ARCH_X86_64));
    }
}
