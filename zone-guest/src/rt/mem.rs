//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp` for a program linked without libc. The
//! copies and fills use `rep movsb`/`rep stosb`, so the compiler cannot turn them back into calls
//! to themselves.

use core::arch::asm;

/// # Safety
/// C `memcpy` contract: both ranges valid for `n` bytes and not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees both ranges are valid for n bytes; the direction flag is clear
    // (SysV ABI), so `rep movsb` copies forward.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// C `memmove` contract: both ranges valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // Forward copy is safe: dest is below src or the ranges do not overlap.
        // SAFETY: caller's contract; forward copy never reads a byte it already overwrote.
        unsafe {
            asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
                 options(nostack, preserves_flags));
        }
    } else {
        // SAFETY: caller's contract; copying backwards from the last byte never reads a byte it
        // already overwrote. The direction flag is restored before returning.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _, options(nostack));
        }
    }
    dest
}

/// # Safety
/// C `memset` contract: `dest` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees dest is valid for n bytes; direction flag is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// C `memcmp` contract: both ranges valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and both ranges are valid for n bytes. Volatile reads keep the compiler
        // from recognising this loop as a call to memcmp itself.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// C `bcmp` contract: both ranges valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
