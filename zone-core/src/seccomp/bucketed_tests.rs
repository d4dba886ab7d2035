//! The bucketed programs give the verdicts of seccompiler's single program over the same rules:
//! both run on a small classic-BPF interpreter (the instructions seccompiler and the head use)
//! for every call number, both architectures, and arguments on and around every value the rules
//! name.

use super::*;
use seccompiler::sock_filter;

/// Runs `program` on a `struct seccomp_data` (nr, arch, ip, args) and returns its verdict.
fn run(program: &[sock_filter], nr: u32, arch: u32, args: &[u64; 6]) -> u32 {
    let word = |k: u32| -> u32 {
        match k {
            0 => nr,
            4 => arch,
            8 | 12 => 0,
            16..=63 if k.is_multiple_of(4) => {
                let arg = args[(k as usize - 16) / 8];
                if k.is_multiple_of(8) {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                }
            }
            _ => panic!("load outside seccomp_data: {k}"),
        }
    };
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = program.get(pc).expect("the program runs off its end");
        pc += 1;
        let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
        match i.code {
            0x20 => a = word(i.k),
            0x54 => a &= i.k,
            0x05 => pc += i.k as usize,
            0x15 => pc += jump(a == i.k),
            0x35 => pc += jump(a >= i.k),
            0x25 => pc += jump(a > i.k),
            0x45 => pc += jump(a & i.k != 0),
            0x06 => return i.k,
            code => panic!("instruction {code:#x} not interpreted"),
        }
    }
}

/// Argument vectors worth trying for `rules`: none set, and each of the first three arguments
/// set to every value the kinds name (and next to it, and with high bits).
fn argument_sets() -> Vec<[u64; 6]> {
    let mut values: Vec<u64> = vec![0, 1, 2, 3, 4, 7, u64::MAX, 1 << 32];
    values.extend([
        libc::PROT_EXEC as u64,
        (libc::PROT_READ | libc::PROT_EXEC) as u64,
    ]);
    values.extend([libc::F_GETFL, libc::F_SETFL, libc::F_GETFD, libc::F_SETFD].map(|v| v as u64));
    values.extend([libc::F_DUPFD_CLOEXEC as u64, libc::FIONBIO]);
    values.extend(
        [
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_UNIX,
            libc::AF_NETLINK,
        ]
        .map(|v| v as u64),
    );
    values.extend([
        crate::vcpu::kick::kick_signal() as u64,
        libc::SIGABRT as u64,
    ]);
    values.extend([
        KVM_RUN,
        crate::device::KVM_SET_GSI_ROUTING,
        VFIO_DEVICE_RESET,
    ]);
    values.extend([
        libc::SECCOMP_IOCTL_NOTIF_RECV,
        libc::SECCOMP_IOCTL_NOTIF_SEND,
    ]);
    let around: Vec<u64> = values
        .iter()
        .flat_map(|v| [*v, v.wrapping_add(1), v | (1 << 40)])
        .collect();
    let mut sets = vec![[0u64; 6]];
    for position in 0..3 {
        for v in &around {
            let mut args = [0u64; 6];
            args[position] = *v;
            sets.push(args);
        }
    }
    sets
}

#[test]
fn bucketed_programs_give_the_single_programs_verdicts() {
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
    let extras: [&[i64]; 2] = [&[], &[libc::SYS_socket, libc::SYS_connect, libc::SYS_ioctl]];
    let mismatches = [SeccompAction::Errno(libc::EPERM as u32), NOTIFY_PLACEHOLDER];
    let sets = argument_sets();
    let mut numbers: Vec<u32> = (0..=470).collect();
    numbers.extend([0x4000_0000, 0x4000_0001, 0x7fff_ffff, u32::MAX]);
    let mut checked = 0u64;
    for kind in ALL_KINDS {
        for extra in extras {
            for mismatch in &mismatches {
                let single: BpfProgram = SeccompFilter::new(
                    rules(kind, extra),
                    mismatch.clone(),
                    SeccompAction::Allow,
                    TargetArch::x86_64,
                )
                .and_then(TryInto::try_into)
                .unwrap();
                let listed = rules(kind, extra);
                let split = bucketed(listed.clone(), mismatch).unwrap();
                assert!(split.len() < 4096, "{kind:?}: {} instructions", split.len());
                for &nr in &numbers {
                    // Arguments matter only to a listed call; the rest are tried with none.
                    let tried = if listed.contains_key(&i64::from(nr)) {
                        &sets[..]
                    } else {
                        &sets[..1]
                    };
                    for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386] {
                        for args in tried {
                            assert_eq!(
                                run(&split, nr, arch, args),
                                run(&single, nr, arch, args),
                                "{kind:?} extra {extra:?} {mismatch:?}: call {nr} arch {arch:#x} args {args:x?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 100_000, "{checked} verdicts compared");
}

#[test]
fn the_vcpu_filter_is_split_and_its_calls_reach_their_bucket() {
    let listed = rules(ThreadKind::Vcpu, &[]);
    let split = bucketed(listed.clone(), &SeccompAction::Errno(libc::EPERM as u32)).unwrap();
    let heads = split
        .iter()
        .take_while(|i| i.code != 0x20 || i.k != 4)
        .count();
    assert!(
        heads >= 5,
        "a head of {heads} instructions: not split into buckets"
    );
    let allow = libc::SECCOMP_RET_ALLOW;
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let x86 = AUDIT_ARCH_X86_64;
    assert_eq!(run(&split, libc::SYS_read as u32, x86, &[0; 6]), allow);
    assert_eq!(
        run(&split, libc::SYS_exit_group as u32, x86, &[0; 6]),
        allow
    );
    let mut run_ioctl = [0u64; 6];
    run_ioctl[1] = KVM_RUN;
    assert_eq!(run(&split, libc::SYS_ioctl as u32, x86, &run_ioctl), allow);
    run_ioctl[1] = crate::device::KVM_SET_USER_MEMORY_REGION;
    assert_eq!(run(&split, libc::SYS_ioctl as u32, x86, &run_ioctl), eperm);
    assert_eq!(run(&split, libc::SYS_execve as u32, x86, &[0; 6]), eperm);
    assert_eq!(run(&split, libc::SYS_openat as u32, x86, &[0; 6]), eperm);
}
