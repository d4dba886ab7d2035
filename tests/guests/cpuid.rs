//! Reports what `cpuid` answers for leaves 0, 1, 7 and 0x8000_0001 through the `cpuid` host
//! function (leaf, eax, ebx, ecx, edx), then exits.
#![no_std]
#![no_main]

zone_guest::entry!(main);

fn main() -> i32 {
    for leaf in [0, 1, 7, 0x8000_0001] {
        // SAFETY: `cpuid` is available on every x86-64 CPU and has no side effects.
        let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, 0) };
        let words = [u64::from(leaf), r.eax.into(), r.ebx.into(), r.ecx.into(), r.edx.into()];
        if zone_guest::call_u64("cpuid", &words).is_err() {
            return 1;
        }
    }
    0
}
