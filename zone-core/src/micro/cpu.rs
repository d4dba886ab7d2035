//! The CPU state of a micro zone: GDT, IDT, per-vCPU TSS with an I/O permission bitmap, the CPL0
//! exception stubs, and each vCPU's initial registers (64-bit mode, CPL3, paging on).
//!
//! Only the stubs ever run at CPL0, and they use nothing but `push imm`, `out imm8, al` and `hlt`
//! (no SSE/x87), so they also run where CPL0 code is emulated.

use crate::cpuid::Features;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};
use zone_guest::abi::{FAULT_PORT, HYPERCALL_PORT, MAX_VCPUS, PAGE_SIZE, layout};

pub(crate) const KERNEL_CS: u16 = 0x08;
pub(crate) const USER_CS: u16 = 0x18 | 3;
pub(crate) const USER_DS: u16 = 0x20 | 3;
const FIRST_TSS_INDEX: u16 = 5;
/// TSS: 104-byte header, then an I/O bitmap covering ports 0..=0xFF, then the 0xFF terminator.
const IOMAP_OFFSET: u64 = 104;
const IOMAP_BYTES: u64 = 32;
pub(crate) const TSS_LIMIT: u64 = IOMAP_OFFSET + IOMAP_BYTES;

const _: () = assert!(TSS_LIMIT < layout::TSS_STRIDE);
const _: () = assert!(
    (5 + 2 * MAX_VCPUS as u64) * 8 <= PAGE_SIZE,
    "GDT fits its page"
);
const _: () = assert!(layout::TSS + MAX_VCPUS as u64 * layout::TSS_STRIDE <= layout::STUBS);
const _: () =
    assert!(HYPERCALL_PORT.is_multiple_of(8) && (HYPERCALL_PORT as u64) < IOMAP_BYTES * 8);

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_UMIP: u64 = 1 << 11;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

fn tss_selector(vcpu: u32) -> u16 {
    (FIRST_TSS_INDEX + 2 * vcpu as u16) * 8
}

fn tss_base(vcpu: u32) -> u64 {
    layout::TSS + u64::from(vcpu) * layout::TSS_STRIDE
}

/// A code or data descriptor with the accessed bit preset, so the CPU never writes the GDT.
fn segment_descriptor(code: bool, dpl: u64) -> u64 {
    let access = if code { 0xb } else { 0x3 } | (1 << 4) | (dpl << 5) | (1 << 7);
    let flags = if code { 0b1010 } else { 0b1100 }; // G + L for code, G + D/B for data
    0xffff | (access << 40) | (0xf << 48) | (flags << 52)
}

/// The two 8-byte halves of a busy 64-bit TSS descriptor.
fn tss_descriptor(base: u64, limit: u64) -> [u64; 2] {
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0xb << 40)
        | (1 << 47)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

/// GDT words: null, kernel code/data, user code/data, then one TSS per vCPU.
pub(crate) fn gdt(vcpus: u32) -> Vec<u64> {
    let mut g = vec![
        0,
        segment_descriptor(true, 0),
        segment_descriptor(false, 0),
        segment_descriptor(true, 3),
        segment_descriptor(false, 3),
    ];
    for v in 0..vcpus {
        g.extend(tss_descriptor(tss_base(v), TSS_LIMIT));
    }
    g
}

/// Machine code of the stub for `vector`: push a zero error code where the CPU does not, push the
/// vector, report on the fault port, halt.
pub(crate) fn stub(vector: u8) -> Vec<u8> {
    let mut code = Vec::with_capacity(layout::STUB_STRIDE as usize);
    if !crate::exit::Exception::has_error_code(vector) {
        code.extend([0x6a, 0x00]); // push 0
    }
    code.push(0x68); // push imm32
    code.extend(u32::from(vector).to_le_bytes());
    code.extend([0xe6, FAULT_PORT as u8]); // out FAULT_PORT, al
    code.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp back to hlt
    code
}

/// Interrupt gates for all 256 vectors, DPL0, pointing at the stubs.
pub(crate) fn idt() -> Vec<u8> {
    let mut idt = Vec::with_capacity(4096);
    for vector in 0..256u64 {
        let handler = layout::STUBS + vector * layout::STUB_STRIDE;
        let low = (handler & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (0xe << 40)
            | (1 << 47)
            | (((handler >> 16) & 0xffff) << 48);
        idt.extend(low.to_le_bytes());
        idt.extend((handler >> 32).to_le_bytes());
    }
    idt
}

/// The TSS of one vCPU: RSP0 at the top of its CPL0 stack page, an I/O bitmap that opens only the
/// hypercall port (4 bytes wide, for `out dx, eax`).
pub(crate) fn tss(vcpu: u32) -> Vec<u8> {
    let mut t = vec![0u8; (TSS_LIMIT + 1) as usize];
    let rsp0 = layout::KERNEL_STACKS + (u64::from(vcpu) + 1) * PAGE_SIZE;
    t[4..12].copy_from_slice(&rsp0.to_le_bytes());
    t[102..104].copy_from_slice(&(IOMAP_OFFSET as u16).to_le_bytes());
    let map = &mut t[IOMAP_OFFSET as usize..];
    map.fill(0xff);
    map[HYPERCALL_PORT as usize / 8] &= !0x0f;
    t
}

/// Whether the I/O bitmap in `tss` lets CPL3 access `width` bytes at `port`. Tests only.
#[cfg(test)]
pub(crate) fn io_allowed(tss: &[u8], port: u16, width: u16) -> bool {
    let base = u16::from_le_bytes([tss[102], tss[103]]) as usize;
    (u32::from(port)..u32::from(port) + u32::from(width)).all(|p| {
        let byte = base + p as usize / 8;
        byte < tss.len() - 1 && tss[byte] & (1 << (p % 8)) == 0
    })
}

/// Writes GDT, IDT, every vCPU's TSS and the stubs into guest memory.
pub(crate) fn write_tables(mem: &GuestMemoryMmap, vcpus: u32) -> Result<(), GuestMemoryError> {
    let gdt: Vec<u8> = gdt(vcpus).iter().flat_map(|w| w.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(layout::GDT))?;
    mem.write_slice(&idt(), GuestAddress(layout::IDT))?;
    for v in 0..vcpus {
        mem.write_slice(&tss(v), GuestAddress(tss_base(v)))?;
    }
    // All 256 stubs, each at its stride, in one write.
    let stride = layout::STUB_STRIDE as usize;
    let mut stubs = vec![0u8; 256 * stride];
    for (vector, slot) in (0..=255u8).zip(stubs.chunks_exact_mut(stride)) {
        let code = stub(vector);
        slot[..code.len()].copy_from_slice(&code);
    }
    mem.write_slice(&stubs, GuestAddress(layout::STUBS))
}

fn segment(selector: u16, code: bool, dpl: u8, base: u64) -> kvm_segment {
    kvm_segment {
        base,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers of vCPU `index`: long mode, paging from `cr3`, CPL3 code and data, FS at
/// `mailbox` (the vCPU's), TR at its TSS, SMEP/SMAP/UMIP where the host has them.
pub(crate) fn user_sregs(
    mut s: kvm_sregs,
    index: u32,
    cr3: u64,
    mailbox: u64,
    features: Features,
) -> kvm_sregs {
    s.cs = segment(USER_CS, true, 3, 0);
    let data = segment(USER_DS, false, 3, 0);
    s.ds = data;
    s.es = data;
    s.ss = data;
    s.gs = data;
    s.fs = segment(USER_DS, false, 3, mailbox);
    s.tr = kvm_segment {
        base: tss_base(index),
        limit: TSS_LIMIT as u32,
        selector: tss_selector(index),
        type_: tr_type(features),
        present: 1,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        type_: 0x2,
        present: 1,
        unusable: 1,
        ..Default::default()
    };
    s.gdt.base = layout::GDT;
    // Covers every possible vCPU's TSS; unused slots are zero (not present).
    s.gdt.limit = (gdt_len_bytes(MAX_VCPUS) - 1) as u16;
    s.idt.base = layout::IDT;
    s.idt.limit = 256 * 16 - 1;
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = cr3;
    s.cr4 = CR4_PAE
        | CR4_OSFXSR
        | CR4_OSXMMEXCPT
        | if features.smep { CR4_SMEP } else { 0 }
        | if features.smap { CR4_SMAP } else { 0 }
        | if features.umip { CR4_UMIP } else { 0 };
    s.efer = EFER_LME | EFER_LMA | EFER_NXE;
    s
}

/// The type of the loaded TR. Hardware marks a loaded 64-bit TSS busy (11), and Intel VM entry
/// requires 11 in 64-bit mode. AMD's VMRUN accepts either, and QEMU's software SVM (the lab) honours
/// the I/O permission bitmap only for type 9, the value QEMU keeps internally after LTR. So AMD
/// hosts get 9, others 11.
fn tr_type(features: Features) -> u8 {
    if features.amd { 0x9 } else { 0xb }
}

fn gdt_len_bytes(vcpus: u32) -> u64 {
    (5 + 2 * u64::from(vcpus)) * 8
}

/// General registers of vCPU `index`: entry point, its stack, interrupts off, RDI = index,
/// RSI = boot info.
pub(crate) fn user_regs(entry: u64, stack_top: u64, index: u32, boot_info: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack_top,
        rflags: 0x2,
        rdi: u64::from(index),
        rsi: boot_info,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hypercall_port_is_open_to_cpl3() {
        let t = tss(0);
        assert!(io_allowed(&t, HYPERCALL_PORT, 4));
        assert!(io_allowed(&t, HYPERCALL_PORT, 1));
        assert!(!io_allowed(&t, HYPERCALL_PORT + 1, 4), "only 4 bytes wide");
        assert!(!io_allowed(&t, FAULT_PORT, 1));
        for port in [0u16, 0x20, 0x60, 0x80, 0x3f8, 0xcf8, 0xffff] {
            assert!(!io_allowed(&t, port, 1), "port {port:#x}");
        }
        assert_eq!(t[t.len() - 1], 0xff, "terminator byte");
    }

    #[test]
    fn stubs_fit_and_report_the_vector() {
        for v in 0..=255u8 {
            let s = stub(v);
            assert!(s.len() <= layout::STUB_STRIDE as usize);
            let push = s.iter().position(|b| *b == 0x68).unwrap();
            assert_eq!(s[push + 1], v);
            assert_eq!(
                s.starts_with(&[0x6a, 0x00]),
                !crate::exit::Exception::has_error_code(v)
            );
        }
    }

    #[test]
    fn descriptors_match_the_segment_registers() {
        let g = gdt(2);
        assert_eq!(g.len() as u64 * 8, gdt_len_bytes(2));
        assert_eq!(
            g[3] >> 40 & 0xff,
            0xfb,
            "user code: present, DPL3, code, accessed"
        );
        assert_eq!(
            g[4] >> 40 & 0xff,
            0xf3,
            "user data: present, DPL3, data, accessed"
        );
        assert_eq!(g[1] >> 53 & 1, 1, "kernel code is 64-bit");
        let [lo, hi] = tss_descriptor(tss_base(1), TSS_LIMIT);
        assert_eq!(g[7], lo);
        assert_eq!(g[8], hi);
        let s = user_sregs(
            kvm_sregs::default(),
            1,
            0x100000,
            0x7f_3000,
            Features::default(),
        );
        assert_eq!(s.tr.selector as usize / 8, 7);
        assert_eq!(s.cs.dpl, 3);
        assert_eq!(s.fs.base, 0x7f_3000);
        assert!(u64::from(s.gdt.limit) >= u64::from(s.tr.selector) + 15);
    }
}
