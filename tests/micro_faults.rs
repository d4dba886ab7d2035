//! Adversarial guests that fault: every CPU exception must end the zone with a `Fault` that names
//! the right vector, error code, faulting instruction and address.

mod common;

use zones::Exception;
use zones::prelude::*;

/// Runs `faults <mode>` and returns the fault with the (rip, address) the guest announced.
fn fault(mode: &str) -> (Fault, u64, u64) {
    let expected = common::Slot::default();
    let e = expected.clone();
    let zone = Zone::builder()
        .memory_mib(8)
        .micro(guest!("FAULTS").arg(mode))
        .host_fn_u64("expect", move |a| {
            e.set((a[0], a[1]));
            0
        })
        .build()
        .unwrap();
    let exit = zone.wait();
    let (rip, addr) = expected.get().expect("guest announced its fault");
    match exit {
        ZoneExit::Fault(f) => (f, rip, addr),
        other => panic!(
            "mode {mode}: expected a fault, got {other:?}; console: {}",
            zone.console_text()
        ),
    }
}

const USER: u64 = 1 << 2;
const WRITE: u64 = 1 << 1;
const PRESENT: u64 = 1;
const FETCH: u64 = 1 << 4;

#[test]
fn invalid_opcode() {
    require_kvm!();
    let (f, rip, _) = fault("ud");
    assert_eq!(
        (f.exception(), f.rip, f.error_code, f.cpl),
        (Exception::InvalidOpcode, rip, None, 3)
    );
}

#[test]
fn page_fault_on_the_null_page() {
    require_kvm!();
    let (f, rip, _) = fault("read-null");
    assert_eq!((f.vector, f.rip, f.cr2), (14, rip, Some(0)));
    assert_eq!(
        f.error_code,
        Some(USER),
        "user-mode read of a not-present page"
    );
}

#[test]
fn write_to_read_only_code_is_a_page_fault() {
    require_kvm!();
    let (f, rip, addr) = fault("write-code");
    assert_eq!((f.vector, f.rip, f.cr2), (14, rip, Some(addr)));
    assert_eq!(f.error_code, Some(USER | WRITE | PRESENT));
}

#[test]
fn executing_data_is_a_page_fault() {
    require_kvm!();
    let (f, rip, addr) = fault("exec-data");
    assert_eq!((f.vector, f.rip, f.cr2), (14, rip, Some(addr)));
    assert_eq!(
        f.error_code,
        Some(USER | PRESENT | FETCH),
        "no-execute data page"
    );
}

#[test]
fn supervisor_pages_are_invisible_to_the_guest() {
    require_kvm!();
    let (f, rip, addr) = fault("system-area");
    assert_eq!((f.vector, f.rip, f.cr2), (14, rip, Some(addr)));
    assert_eq!(
        f.error_code,
        Some(USER | PRESENT),
        "the GDT page exists but is supervisor-only"
    );
}

#[test]
fn privileged_instructions_are_general_protection_faults() {
    require_kvm!();
    for mode in ["cli", "hlt", "port"] {
        let (f, rip, _) = fault(mode);
        assert_eq!(
            (f.exception(), f.rip, f.error_code),
            (Exception::GeneralProtection, rip, Some(0)),
            "{mode}"
        );
    }
}

/// Hardware raises #GP (gate DPL 0 < CPL 3, error code: IDT vector 3) at the `int3`. Two KVMs
/// this project runs on differ, and each outcome is accepted exactly:
/// - kvm_pvm (the local KVM) delivers #BP with RIP after the instruction;
/// - kvm-amd without NRIP save (the lab, under QEMU TCG) raises #GP whose error code holds the
///   gate's byte offset in a 64-bit IDT (3 * 16: 0x32, where hardware puts 0x1A), RIP after the
///   instruction in most runs and at it in some (seen both, 2026-12; `int N` in the hostile
///   suite shows the same `(N << 4) | 2` for every vector).
#[test]
fn int3_through_a_supervisor_gate_ends_the_zone() {
    require_kvm!();
    let (f, rip, _) = fault("int3");
    let gp =
        |code: u64| f.exception() == Exception::GeneralProtection && f.error_code == Some(code);
    let hardware = gp((3 << 3) | 2) && f.rip == rip;
    let pvm = f.exception() == Exception::Breakpoint && f.rip == rip + 1 && f.error_code.is_none();
    let lab = gp((3 << 4) | 2) && (f.rip == rip + 1 || f.rip == rip);
    assert!(hardware || pvm || lab, "{f:?} (int3 at {rip:#x})");
}

/// Hardware raises #UD (EFER.SCE is clear). kvm_pvm instead transfers to address 0 at CPL3,
/// which faults on instruction fetch. Either way the zone ends with a fault.
#[test]
fn syscall_without_a_kernel_ends_the_zone() {
    require_kvm!();
    let (f, rip, _) = fault("syscall");
    let hardware = f.exception() == Exception::InvalidOpcode && f.rip == rip;
    let pvm =
        f.vector == 14 && f.rip == 0 && f.cr2 == Some(0) && f.error_code == Some(USER | FETCH);
    assert!(hardware || pvm, "{f:?} (syscall at {rip:#x})");
}

#[test]
fn divide_by_zero() {
    require_kvm!();
    let (f, rip, _) = fault("div");
    assert_eq!(
        (f.exception(), f.rip, f.error_code),
        (Exception::DivideError, rip, None)
    );
}

#[test]
fn stack_overflow_hits_the_guard_page() {
    require_kvm!();
    let (f, _, _) = fault("stack-overflow");
    // vCPU 0's stack ends where the boot info and its mailbox start, its top page at a 32 KiB
    // boundary below them: 8 MiB - 32 KiB + 4 KiB.
    let top = (8u64 << 20) - 0x7000;
    let guard = top - (256 << 10) - 4096..top - (256 << 10);
    assert_eq!(f.vector, 14);
    let cr2 = f.cr2.unwrap();
    assert!(
        guard.contains(&cr2),
        "cr2 {cr2:#x} not in guard page {guard:x?}"
    );
    assert_eq!(
        f.error_code.unwrap() & PRESENT,
        0,
        "guard page is not present"
    );
}

/// Stray accesses to the hypercall port's bytes are the guest's doing: refused and reported as
/// violations; they neither end the zone nor pass for a VMM crash.
#[test]
fn stray_hypercall_port_accesses_are_violations() {
    require_kvm!();
    let zone = Zone::builder()
        .memory_mib(8)
        .micro(guest!("STRAY_PORTS"))
        .build()
        .unwrap();
    let events = zone.events();
    assert_eq!(zone.wait(), ZoneExit::Exited(0));
    let violations: Vec<_> = events
        .drain()
        .into_iter()
        .filter_map(|e| match e {
            ZoneEvent::Violation(v) => Some(v.detail),
            _ => None,
        })
        .collect();
    assert_eq!(violations.len(), 4, "{violations:?}");
    assert!(violations[0].contains("port 0xe1"), "{violations:?}");
    assert!(violations[1].contains("2-byte write to I/O port 0xe2"));
    assert!(violations[2].contains("1-byte write to I/O port 0xe0"));
    assert!(violations[3].contains("read from I/O port 0xe0"));
    assert_eq!(zone.metrics().hypercalls.rejected, 4);
}
