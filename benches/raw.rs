//! The floor: the same work done with raw kvm-ioctls and nothing of zones. Hand-built tables;
//! no code shared with zone-core, so the ratio measures what zones adds.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// Anonymous memory for a raw VM.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes.
    pub fn new(len: usize) -> Self {
        // SAFETY: anonymous private mapping, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Self {
            ptr: ptr.cast(),
            len,
        }
    }

    /// Copies `bytes` to offset `at`.
    pub fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.len);
        // SAFETY: bounds checked above; the mapping is ours.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn vm_with(mem: &Mapping) -> (Kvm, VmFd) {
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: mem.len as u64,
        userspace_addr: mem.ptr as u64,
        flags: 0,
    };
    // SAFETY: the mapping outlives the VM in every caller.
    unsafe { vm.set_user_memory_region(region).unwrap() };
    (kvm, vm)
}

/// Open /dev/kvm, create a VM with 2 MiB of memory and one vCPU, run real-mode `hlt`, tear down.
pub fn create_run_hlt_drop() {
    drop(create_run_hlt());
}

/// Everything of [`create_run_hlt_drop`] up to the HLT; the returned VM is torn down when dropped.
pub fn create_run_hlt() -> impl Drop {
    let mem = Mapping::new(2 << 20);
    mem.write(0x1000, &[0xf4]);
    let (kvm, vm) = vm_with(&mem);
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    })
    .unwrap();
    assert!(matches!(vcpu.run().unwrap(), VcpuExit::Hlt));
    Teardown((vcpu, vm, kvm, mem))
}

struct Teardown<T>(T);

impl<T> Drop for Teardown<T> {
    fn drop(&mut self) {}
}

impl Default for Cpl3Loop {
    fn default() -> Self {
        Self::new()
    }
}

/// A vCPU at CPL3 in long mode looping on `out 0xe0, eax`: the raw cost of the exit a zones
/// hypercall uses.
pub struct Cpl3Loop {
    vcpu: VcpuFd,
    _vm: VmFd,
    _kvm: Kvm,
    _mem: Mapping,
}

impl Cpl3Loop {
    /// Builds the VM: GDT, TSS with I/O bitmap, 4-level page tables, code `out 0xe0, eax; jmp`.
    pub fn new() -> Self {
        let mem = Mapping::new(2 << 20);
        let w64 = |at: usize, v: u64| mem.write(at, &v.to_le_bytes());
        let code64 = |dpl: u64| 0x00af_9b00_0000_ffffu64 | (dpl << 45);
        let data = |dpl: u64| 0x00cf_9300_0000_ffffu64 | (dpl << 45);
        w64(0x1008, code64(0));
        w64(0x1010, data(0));
        w64(0x1018, code64(3));
        w64(0x1020, data(3));
        let (tss, limit) = (0x3000u64, 104 + 32u64);
        w64(0x1028, limit | ((tss & 0xff_ffff) << 16) | (0x8b << 40));
        mem.write(0x3000 + 102, &104u16.to_le_bytes());
        let mut bitmap = [0xffu8; 33];
        bitmap[0xe0 / 8] = 0xf0;
        mem.write(0x3000 + 104, &bitmap);
        // PML4 -> PDPT -> PD -> PT (user, writable); code page user-executable.
        w64(0x9000, 0xa000 | 7);
        w64(0xa000, 0xb000 | 7);
        w64(0xb000, 0xc000 | 7);
        w64(0xc000 + 0x10 * 8, 0x10000 | 5);
        w64(0xc000 + 8, 0x1000 | 1); // GDT, supervisor read-only
        w64(0xc000 + 3 * 8, 0x3000 | 1); // TSS + I/O bitmap, read by the CPU on every `out`
        mem.write(0x10000, &[0xe7, 0xe0, 0xeb, 0xfc]); // out 0xe0, eax; jmp back
        let (kvm, vm) = vm_with(&mem);
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut s = vcpu.get_sregs().unwrap();
        let seg = |selector: u16, type_: u8, l: u8| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 3,
            db: u8::from(l == 0),
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        s.cs = seg(0x1b, 0xb, 1);
        s.ds = seg(0x23, 0x3, 0);
        s.es = s.ds;
        s.fs = s.ds;
        s.gs = s.ds;
        s.ss = s.ds;
        s.tr = kvm_segment {
            base: tss,
            limit: limit as u32,
            selector: 0x28,
            type_: 0xb,
            present: 1,
            ..Default::default()
        };
        s.gdt.base = 0x1000;
        s.gdt.limit = 0x37;
        s.cr3 = 0x9000;
        s.cr4 = 1 << 5;
        s.cr0 = 0x8001_0033;
        s.efer = 0x500;
        vcpu.set_sregs(&s).unwrap();
        vcpu.set_regs(&kvm_regs {
            rip: 0x10000,
            rflags: 2,
            ..Default::default()
        })
        .unwrap();
        Self {
            vcpu,
            _vm: vm,
            _kvm: kvm,
            _mem: mem,
        }
    }

    /// [`new`](Self::new) and its first exit: the floor of a CPL3 guest's start.
    pub fn started() -> Self {
        let mut vcpu = Self::new();
        vcpu.round_trip();
        vcpu
    }

    /// One guest `out` and back.
    pub fn round_trip(&mut self) {
        match self.vcpu.run() {
            Ok(VcpuExit::IoOut(0xe0, _)) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}
