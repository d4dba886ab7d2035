//! vCPU state for the Linux 64-bit boot protocol: identity page tables for the first 4 GiB, a GDT
//! with flat `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18), long mode with paging, RSI at the zero
//! page; plus the MSRs, FPU and local APIC state a kernel expects from firmware. Secondary vCPUs
//! wait for INIT/SIPI from the kernel like real application processors.

use super::layout;
use crate::cpuid;
use kvm_bindings::{CpuId, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const BOOT_TSS: u16 = 0x20;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_LVT_MASKED: u32 = 1 << 16;

/// A flat 4 GiB descriptor.
fn descriptor(flags: u64) -> u64 {
    0xffff | (flags << 40) | (0xf << 48)
}

/// Writes the GDT, an empty IDT and identity page tables for `[0, 4 GiB)` (2 MiB pages).
pub(crate) fn write_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    let gdt = [
        0,
        0,
        descriptor(0xa09b), // 0x10: 64-bit code, present, DPL0, accessed
        descriptor(0xc093), // 0x18: data, 4 KiB granularity, 32-bit, accessed
        descriptor(0x008b), // 0x20: busy 64-bit TSS
    ];
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(layout::GDT))?;
    mem.write_obj(0u64, GuestAddress(layout::IDT))?;
    let pdpt = layout::PML4 + 0x1000;
    let first_pd = pdpt + 0x1000;
    mem.write_obj(pdpt | 0x3, GuestAddress(layout::PML4))?;
    let gib = layout::IDENTITY_MAPPED >> 30;
    for i in 0..gib {
        let pd = first_pd + i * 0x1000;
        mem.write_obj(pd | 0x3, GuestAddress(pdpt + i * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| (((i << 30) + (j << 21)) | 0x83).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}

fn segment(selector: u16, flags: u16) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: (flags & 0xf) as u8,
        present: 1,
        dpl: 0,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for the 64-bit entry.
pub(crate) fn boot_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = segment(BOOT_CS, 0xa09b);
    let data = segment(BOOT_DS, 0xc093);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = kvm_segment {
        limit: 0xfffff,
        selector: BOOT_TSS,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    s.gdt.base = layout::GDT;
    s.gdt.limit = 5 * 8 - 1;
    s.idt.base = layout::IDT;
    s.idt.limit = 7;
    s.cr0 = 0x1 | 0x2 | 0x10 | 0x20 | (1 << 31); // PE MP ET NE PG
    s.cr3 = layout::PML4;
    s.cr4 = 1 << 5; // PAE
    s.efer = (1 << 8) | (1 << 10); // LME LMA
    s
}

/// General registers for the 64-bit entry.
pub(crate) fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: layout::BOOT_STACK,
        rbp: layout::BOOT_STACK,
        rsi: layout::ZERO_PAGE,
        rflags: 0x2,
        ..Default::default()
    }
}

fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

fn set_lapic_reg(regs: &mut [i8], offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as i8;
    }
}

fn lapic_reg(regs: &[i8], offset: usize) -> u32 {
    u32::from_le_bytes([
        regs[offset] as u8,
        regs[offset + 1] as u8,
        regs[offset + 2] as u8,
        regs[offset + 3] as u8,
    ])
}

/// The guest's physical address width, from CPUID leaf 0x8000_0008 (36 bits where it is
/// missing, the architectural minimum with PAE).
pub(crate) fn phys_bits(cpuid: &CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

/// Configures vCPU `index` of `vcpus`. Only vCPU 0 gets boot registers; the others start when the
/// kernel sends them INIT/SIPI.
pub(crate) fn configure_vcpu(
    fd: &VcpuFd,
    index: u32,
    vcpus: u32,
    entry: u64,
    base_cpuid: &CpuId,
    hide_xsave: bool,
) -> Result<(), (&'static str, kvm_ioctls::Error)> {
    let cpuid = cpuid::for_linux_vcpu(base_cpuid, index, vcpus, hide_xsave);
    fd.set_cpuid2(&cpuid).map_err(|e| ("KVM_SET_CPUID2", e))?;
    let msrs = Msrs::from_entries(&boot_msrs())
        .map_err(|_| ("building MSR list", kvm_ioctls::Error::new(libc::EINVAL)))?;
    let set = fd.set_msrs(&msrs).map_err(|e| ("KVM_SET_MSRS", e))?;
    if set != msrs.as_slice().len() {
        let index = msrs.as_slice().get(set).map_or(0, |m| m.index);
        return Err((
            "KVM_SET_MSRS (an MSR was refused)",
            kvm_ioctls::Error::new(i32::try_from(index).unwrap_or(libc::EINVAL)),
        ));
    }
    fd.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })
    .map_err(|e| ("KVM_SET_FPU", e))?;
    let mut lapic = fd.get_lapic().map_err(|e| ("KVM_GET_LAPIC", e))?;
    // LINT0 masked: with hardware-reduced ACPI no 8259 PIC is in use. LINT1 delivers NMIs.
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0) | APIC_LVT_MASKED;
    let lvt1 = (lapic_reg(&lapic.regs, APIC_LVT1) & !0x700) | (APIC_MODE_NMI << 8);
    set_lapic_reg(&mut lapic.regs, APIC_LVT0, lvt0);
    set_lapic_reg(&mut lapic.regs, APIC_LVT1, lvt1);
    fd.set_lapic(&lapic).map_err(|e| ("KVM_SET_LAPIC", e))?;
    if index == 0 {
        let sregs = fd.get_sregs().map_err(|e| ("KVM_GET_SREGS", e))?;
        fd.set_sregs(&boot_sregs(sregs))
            .map_err(|e| ("KVM_SET_SREGS", e))?;
        fd.set_regs(&boot_regs(entry))
            .map_err(|e| ("KVM_SET_REGS", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_maps_four_gib_with_large_pages_and_a_boot_gdt() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(&mem).unwrap();
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        let pdpt = read(layout::PML4) & !0xfff;
        let pd3 = read(pdpt + 3 * 8) & !0xfff;
        assert_eq!(
            read(pd3 + 511 * 8),
            ((4u64 << 30) - (2 << 20)) | 0x83,
            "last 2 MiB page below 4 GiB"
        );
        assert_eq!(read(layout::GDT + 0x10) >> 40 & 0xff, 0x9b, "__BOOT_CS");
        assert_eq!(read(layout::GDT + 0x18) >> 40 & 0xff, 0x93, "__BOOT_DS");
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!(
            (s.cs.selector, s.cs.l, s.ds.selector, s.ds.db),
            (0x10, 1, 0x18, 1)
        );
        let r = boot_regs(0x100200);
        assert_eq!((r.rip, r.rsi), (0x100200, layout::ZERO_PAGE));
    }

    #[test]
    fn lapic_registers_round_trip() {
        let mut regs = [0i8; 1024];
        set_lapic_reg(&mut regs, APIC_LVT1, 0x0001_0400);
        assert_eq!(lapic_reg(&regs, APIC_LVT1), 0x0001_0400);
    }
}
