//! CPUID as zones present it: KVM's supported set (fetched once per process), normalised per vCPU.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use std::sync::OnceLock;

/// Host features zones uses when it sets up a guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Features {
    pub(crate) smep: bool,
    pub(crate) smap: bool,
    pub(crate) umip: bool,
    /// The CPU vendor is AMD (or Hygon): SVM rather than VMX rules apply.
    pub(crate) amd: bool,
}

/// KVM's supported CPUID (cached: it does not change while the process runs).
pub(crate) fn supported(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    static CACHE: OnceLock<CpuId> = OnceLock::new();
    if let Some(c) = CACHE.get() {
        return Ok(c.clone());
    }
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    Ok(CACHE.get_or_init(|| cpuid).clone())
}

pub(crate) fn features(cpuid: &CpuId) -> Features {
    let leaf = |f: u32| {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == f && e.index == 0)
    };
    let amd = leaf(0).is_some_and(|e| {
        // The vendor string is EBX, EDX, ECX: "Auth" "enti" "cAMD" / "Hygo" "nGen" "uine".
        let ebx = e.ebx.to_le_bytes();
        &ebx == b"Auth" || &ebx == b"Hygo"
    });
    let mut features = leaf(7).map_or_else(Features::default, |e| Features {
        smep: e.ebx & SMEP != 0,
        smap: e.ebx & SMAP != 0,
        umip: e.ecx & UMIP != 0,
        amd: false,
    });
    features.amd = amd;
    features
}

/// The CPUID a micro zone's vCPU sees unless its program asks for the host's features: only what
/// the vCPU runs in. Leaf 0 (the host's vendor, basic leaves up to 7), leaf 7 with SMEP, SMAP and
/// UMIP where the host has them (zones turns them on in CR4, which KVM checks against CPUID),
/// and the extended leaves up to 0x8000_0001 with long mode and NX (the vCPU runs in both).
/// Nothing else: untrusted code learns neither the host's model nor its features, and setting
/// it costs KVM far less than the host's set (in a VM, KVM answers some leaves by asking the
/// host's CPU, each question an exit).
pub(crate) fn for_micro_vcpu(base: &CpuId) -> CpuId {
    const MAX_BASIC: u32 = 7;
    const MAX_EXTENDED: u32 = 0x8000_0001;
    let entries: Vec<_> = base
        .as_slice()
        .iter()
        .filter_map(|e| {
            let mut e = *e;
            match (e.function, e.index) {
                (0, _) => e.eax = e.eax.min(MAX_BASIC),
                (7, 0) => {
                    e.eax = 0;
                    e.ebx &= SMEP | SMAP;
                    e.ecx &= UMIP;
                    e.edx = 0;
                }
                (0x8000_0000, _) => e.eax = e.eax.min(MAX_EXTENDED),
                (0x8000_0001, _) => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx &= NX | LONG_MODE;
                }
                _ => return None,
            }
            Some(e)
        })
        .collect();
    // At most four entries: always within KVM_MAX_CPUID_ENTRIES.
    CpuId::from_entries(&entries).unwrap_or_else(|_| unreachable!("four CPUID entries"))
}

/// Leaf 7 EBX: SMEP (7), SMAP (20); ECX: UMIP (2).
const SMEP: u32 = 1 << 7;
const SMAP: u32 = 1 << 20;
const UMIP: u32 = 1 << 2;
/// Leaf 0x8000_0001 EDX: NX (20), long mode (29).
const NX: u32 = 1 << 20;
const LONG_MODE: u32 = 1 << 29;

/// The CPUID a vCPU sees: APIC ids set to its index; with `hide_xsave`, XSAVE and the AVX family
/// hidden (for guests that do not enable XSAVE in CR4, so that CPUID does not promise AVX).
pub(crate) fn for_vcpu(base: &CpuId, index: u32, hide_xsave: bool) -> CpuId {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        match (e.function, e.index) {
            (1, _) => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24);
                if hide_xsave {
                    // XSAVE (26), OSXSAVE (27), AVX (28), F16C (29), FMA (12).
                    e.ecx &= !((1 << 26) | (1 << 27) | (1 << 28) | (1 << 29) | (1 << 12));
                }
            }
            (7, 0) if hide_xsave => {
                // AVX2 (5) and the AVX-512 family (16, 17, 21, 26, 27, 28, 30, 31) in EBX.
                e.ebx &= !((1 << 5)
                    | (1 << 16)
                    | (1 << 17)
                    | (1 << 21)
                    | (1 << 26)
                    | (1 << 27)
                    | (1 << 28)
                    | (1 << 30)
                    | (1 << 31));
                e.ecx &= !((1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14));
            }
            (0xb, _) | (0x1f, _) => e.edx = index,
            _ => {}
        }
    }
    if hide_xsave {
        // With XSAVE hidden, its enumeration leaf must not be offered either.
        cpuid
            .as_mut_slice()
            .iter_mut()
            .filter(|e| e.function == 0xd)
            .for_each(|e| {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            });
    }
    cpuid
}

/// The CPUID vCPU `index` of a `vcpus`-vCPU Linux zone sees: [`for_vcpu`] plus a consistent
/// topology (one package, one thread per core, `vcpus` cores) and the hypervisor bit.
pub(crate) fn for_linux_vcpu(base: &CpuId, index: u32, vcpus: u32, hide_xsave: bool) -> CpuId {
    let mut cpuid = for_vcpu(base, index, hide_xsave);
    let core_bits = 32 - vcpus.saturating_sub(1).leading_zeros();
    let amd = features(base).amd;
    for e in cpuid.as_mut_slice() {
        match (e.function, e.index) {
            (1, _) => {
                // Logical processors per package in EBX[23:16]; HTT (EDX 28) when more than one;
                // the hypervisor-present bit (ECX 31).
                e.ebx = (e.ebx & 0xff00_ffff) | (vcpus.min(255) << 16);
                if vcpus > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
                e.ecx |= 1 << 31;
            }
            (0xb, 0) => {
                e.eax = 0;
                e.ebx = 1;
                e.ecx = 1 << 8;
            }
            (0xb, 1) => {
                e.eax = core_bits;
                e.ebx = vcpus;
                e.ecx = (2 << 8) | 1;
            }
            (0xb, n) => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = n;
            }
            (0x8000_0008, _) if amd => e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (vcpus - 1),
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn micro_vcpus_see_only_the_leaves_they_run_in() {
        let entry = |function, index, flags, v: u32| kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: v,
            ebx: v,
            ecx: v,
            edx: v,
            ..Default::default()
        };
        let base = CpuId::from_entries(&[
            entry(0, 0, 0, 0x1c),
            entry(1, 0, 0, u32::MAX),
            entry(7, 0, 1, u32::MAX),
            entry(7, 1, 1, u32::MAX),
            entry(0xd, 0, 1, u32::MAX),
            entry(0x8000_0000, 0, 0, 0x8000_0008),
            entry(0x8000_0001, 0, 0, u32::MAX),
            entry(0x8000_0008, 0, 0, u32::MAX),
        ])
        .unwrap();
        let seen: Vec<_> = for_micro_vcpu(&base)
            .as_slice()
            .iter()
            .map(|e| (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx))
            .collect();
        assert_eq!(
            seen,
            [
                (0, 0, 0, 7, 0x1c, 0x1c, 0x1c),
                (7, 0, 1, 0, SMEP | SMAP, UMIP, 0),
                (
                    0x8000_0000,
                    0,
                    0,
                    0x8000_0001,
                    0x8000_0008,
                    0x8000_0008,
                    0x8000_0008
                ),
                (0x8000_0001, 0, 0, 0, 0, 0, NX | LONG_MODE),
            ]
        );
    }

    fn entry(function: u32, index: u32, ebx: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            ..Default::default()
        }
    }

    #[test]
    fn linux_topology_is_one_package_of_n_cores() {
        let base = CpuId::from_entries(&[
            entry(0, 0, u32::from_le_bytes(*b"Auth"), 0),
            entry(1, 0, 0, 0),
            entry(0xb, 0, 0, 0),
            entry(0xb, 1, 0, 0),
            entry(0x8000_0008, 0, 0, 0),
        ])
        .unwrap();
        let c = for_linux_vcpu(&base, 2, 4, false);
        let s = c.as_slice();
        assert_eq!(s[1].ebx >> 24, 2, "APIC id");
        assert_eq!((s[1].ebx >> 16) & 0xff, 4, "logical processors");
        assert_ne!(s[1].ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!(
            (s[3].eax, s[3].ebx, s[3].edx),
            (2, 4, 2),
            "core level: 2 bits, 4 cores, x2APIC id"
        );
        assert_eq!(s[4].ecx & 0xff, 3, "AMD NC = cores - 1");
    }

    #[test]
    fn sets_apic_ids_and_hides_xsave_family() {
        let base = CpuId::from_entries(&[
            entry(
                0,
                0,
                u32::from_le_bytes(*b"Auth"),
                u32::from_le_bytes(*b"cAMD"),
            ),
            entry(1, 0, 0x0800_0800, u32::MAX),
            entry(7, 0, u32::MAX, 1 << 2),
            entry(0xb, 0, 0, 0),
            entry(0xd, 0, 832, 832),
        ])
        .unwrap();
        let c = for_vcpu(&base, 3, true);
        let s = &c.as_slice()[1..];
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!(s[0].ebx & 0xff_ffff, 0x0800);
        assert_eq!(s[0].ecx & (1 << 28), 0, "AVX hidden");
        assert_eq!(s[0].ecx & (1 << 26), 0, "XSAVE hidden");
        assert_eq!(s[1].ebx & (1 << 5), 0, "AVX2 hidden");
        assert_ne!(s[1].ebx & (1 << 7), 0, "SMEP kept");
        assert_eq!(s[2].edx, 3);
        assert_eq!(s[3].ebx, 0);
        assert_eq!(
            features(&c),
            Features {
                smep: true,
                smap: true,
                umip: true,
                amd: true,
            }
        );
        let kept = for_vcpu(&base, 0, false);
        assert_ne!(kept.as_slice()[1].ecx & (1 << 28), 0);
    }
}
