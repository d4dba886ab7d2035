//! A strict parser for static, non-PIE x86-64 ELF executables: the only thing a micro zone runs.
//!
//! It never trusts the file: every offset and size is bounds-checked with checked arithmetic, the
//! number of program headers is bounded, loadable segments must be page-aligned, must not share
//! pages, must not be both writable and executable (W^X), and must lie inside the window the
//! zone's layout gives to program images. Anything dynamic (interpreter, dynamic section, TLS) is
//! refused with a message that says how to build the program instead.

use std::ops::Range;

const PAGE: u64 = 0x1000;
/// At most this many program headers are examined.
pub const MAX_PROGRAM_HEADERS: usize = 64;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_TLS: u32 = 7;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// Why an ELF image was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Shorter than its headers claim.
    #[error("truncated ELF: {0}")]
    Truncated(&'static str),
    /// Not a 64-bit little-endian x86-64 ELF.
    #[error("not a 64-bit little-endian x86-64 ELF executable ({0})")]
    WrongKind(&'static str),
    /// A shared object or position-independent executable.
    #[error(
        "ELF type {0} is not ET_EXEC: build the guest static and non-PIE (zone_guest::build does)"
    )]
    NotExecutable(u16),
    /// Dynamic linking or thread-local storage requested.
    #[error(
        "ELF needs {0}, which micro zones do not provide: build a static no_std program with zone_guest::build"
    )]
    Unsupported(&'static str),
    /// Too many program headers.
    #[error("ELF has {0} program headers; at most {MAX_PROGRAM_HEADERS} are accepted")]
    TooManyHeaders(usize),
    /// A segment is malformed.
    #[error("ELF segment {index} at {vaddr:#x}: {problem}")]
    BadSegment {
        /// Program header index.
        index: usize,
        /// Its virtual address.
        vaddr: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// No loadable segment.
    #[error("ELF has no loadable segment")]
    Empty,
    /// The entry point is not in an executable segment.
    #[error("ELF entry point {0:#x} is not inside an executable segment")]
    BadEntry(u64),
}

/// Page permissions of a loaded segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentFlags {
    /// Writable (never together with `exec`).
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

/// A loadable segment: `memory` (page-aligned) is filled from `file` and zero beyond it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address range, page-aligned at both ends.
    pub memory: Range<u64>,
    /// Guest address the file bytes go to.
    pub vaddr: u64,
    /// File byte range to copy to `vaddr`.
    pub file: Range<usize>,
    /// Permissions.
    pub flags: SegmentFlags,
}

/// A parsed executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    /// Entry point.
    pub entry: u64,
    /// Loadable segments, sorted by address, non-overlapping at page granularity.
    pub segments: Vec<Segment>,
}

impl ElfImage {
    /// One past the last byte of the highest segment (page-aligned).
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.memory.end)
    }
}

/// The little-endian `u16` at `off` of `b`, if `b` holds it (never overflows: `off` may be any
/// value a lying header gives). Also read by the Linux loader's ELF size check.
pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
/// The little-endian `u32` at `off` of `b` (see [`u16_at`]).
pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
/// The little-endian `u64` at `off` of `b` (see [`u16_at`]).
pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Parses `bytes`, accepting segments only inside `window` (guest addresses).
pub fn parse(bytes: &[u8], window: Range<u64>) -> Result<ElfImage, ElfError> {
    if bytes.len() < 64 {
        return Err(ElfError::Truncated("file header"));
    }
    if bytes[0..4] != *b"\x7fELF" {
        return Err(ElfError::WrongKind("bad magic"));
    }
    if bytes[4] != 2 || bytes[5] != 1 || bytes[6] != 1 {
        return Err(ElfError::WrongKind("class, byte order or version"));
    }
    let field = |v: Option<u64>| v.ok_or(ElfError::Truncated("file header"));
    let e_type = field(u16_at(bytes, 16).map(u64::from))? as u16;
    let machine = field(u16_at(bytes, 18).map(u64::from))? as u16;
    if machine != 62 {
        return Err(ElfError::WrongKind("machine is not x86-64"));
    }
    if e_type != 2 {
        return Err(ElfError::NotExecutable(e_type));
    }
    let entry = field(u64_at(bytes, 24))?;
    let phoff = field(u64_at(bytes, 32))?;
    let phentsize = field(u16_at(bytes, 54).map(u64::from))?;
    let phnum = field(u16_at(bytes, 56).map(u64::from))? as usize;
    if phentsize < 56 {
        return Err(ElfError::WrongKind("program header entry size"));
    }
    if phnum > MAX_PROGRAM_HEADERS {
        return Err(ElfError::TooManyHeaders(phnum));
    }
    let mut segments = Vec::new();
    for index in 0..phnum {
        let off = phoff
            .checked_add(
                phentsize
                    .checked_mul(index as u64)
                    .ok_or(ElfError::Truncated("program headers"))?,
            )
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(ElfError::Truncated("program headers"))?;
        let ph = |rel: usize, width: usize| -> Result<u64, ElfError> {
            let at = off
                .checked_add(rel)
                .ok_or(ElfError::Truncated("program headers"))?;
            let v = if width == 4 {
                u32_at(bytes, at).map(u64::from)
            } else {
                u64_at(bytes, at)
            };
            v.ok_or(ElfError::Truncated("program headers"))
        };
        let p_type = ph(0, 4)? as u32;
        match p_type {
            PT_INTERP => return Err(ElfError::Unsupported("a dynamic loader (PT_INTERP)")),
            PT_DYNAMIC => return Err(ElfError::Unsupported("dynamic linking (PT_DYNAMIC)")),
            PT_TLS => return Err(ElfError::Unsupported("thread-local storage (PT_TLS)")),
            PT_LOAD => {}
            _ => continue,
        }
        let flags = ph(4, 4)? as u32;
        let offset = ph(8, 8)?;
        let vaddr = ph(16, 8)?;
        let filesz = ph(32, 8)?;
        let memsz = ph(40, 8)?;
        let bad = |problem| ElfError::BadSegment {
            index,
            vaddr,
            problem,
        };
        if memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(bad("file size exceeds memory size"));
        }
        if flags & PF_W != 0 && flags & PF_X != 0 {
            return Err(bad(
                "writable and executable (W^X): link with the zone-guest linker script",
            ));
        }
        if flags & (PF_R | PF_W | PF_X) == 0 {
            return Err(bad("no access permissions"));
        }
        if vaddr % PAGE != offset % PAGE {
            return Err(bad("address and file offset disagree modulo the page size"));
        }
        let file_end = offset
            .checked_add(filesz)
            .ok_or(bad("file range overflows"))?;
        if file_end > bytes.len() as u64 {
            return Err(bad("file range beyond the end of the file"));
        }
        let mem_end = vaddr
            .checked_add(memsz)
            .ok_or(bad("address range overflows"))?;
        let start = vaddr & !(PAGE - 1);
        let end = mem_end
            .checked_add(PAGE - 1)
            .ok_or(bad("address range overflows"))?
            & !(PAGE - 1);
        if start < window.start || end > window.end {
            return Err(bad(
                "outside the program window of this zone (link at 0x400000, or give the zone more memory)",
            ));
        }
        segments.push(Segment {
            memory: start..end,
            vaddr,
            file: offset as usize..file_end as usize,
            flags: SegmentFlags {
                write: flags & PF_W != 0,
                exec: flags & PF_X != 0,
            },
        });
    }
    if segments.is_empty() {
        return Err(ElfError::Empty);
    }
    segments.sort_by_key(|s| s.memory.start);
    for (i, pair) in segments.windows(2).enumerate() {
        if pair[0].memory.end > pair[1].memory.start {
            return Err(ElfError::BadSegment {
                index: i + 1,
                vaddr: pair[1].vaddr,
                problem: "shares a page with another segment: link with page-aligned segments",
            });
        }
    }
    if !segments
        .iter()
        .any(|s| s.flags.exec && s.memory.contains(&entry))
    {
        return Err(ElfError::BadEntry(entry));
    }
    Ok(ElfImage { entry, segments })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an ELF with the given `(flags, vaddr, file bytes, memsz)` segments.
    pub(crate) fn build_elf(entry: u64, segs: &[(u32, u64, &[u8], u64)]) -> Vec<u8> {
        let mut out = vec![0u8; 64 + 56 * segs.len()];
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (flags, vaddr, data, memsz)) in segs.iter().enumerate() {
            // Place data at a file offset congruent to vaddr modulo the page size.
            let mut offset = out.len().next_multiple_of(PAGE as usize) as u64 + (vaddr % PAGE);
            if offset < out.len() as u64 {
                offset += PAGE;
            }
            out.resize(offset as usize, 0);
            out.extend_from_slice(data);
            let ph = 64 + 56 * i;
            out[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            out[ph + 4..ph + 8].copy_from_slice(&flags.to_le_bytes());
            out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            out[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        out
    }

    const WINDOW: Range<u64> = 0x400000..0x1000000;

    #[test]
    fn accepts_a_well_formed_program() {
        let elf = build_elf(
            0x400010,
            &[
                (PF_R | PF_X, 0x400000, &[0x90; 32], 32),
                (PF_R | PF_W, 0x401000, &[1, 2], 0x2000),
            ],
        );
        let img = parse(&elf, WINDOW).unwrap();
        assert_eq!(img.entry, 0x400010);
        assert_eq!(img.segments.len(), 2);
        assert_eq!(img.segments[1].memory, 0x401000..0x403000);
        assert_eq!(
            img.segments[1].flags,
            SegmentFlags {
                write: true,
                exec: false
            }
        );
        assert_eq!(img.end(), 0x403000);
    }

    #[test]
    fn refuses_wx_overlap_window_entry_and_truncation() {
        let wx = build_elf(0x400000, &[(PF_R | PF_W | PF_X, 0x400000, &[0x90], 1)]);
        assert!(
            matches!(parse(&wx, WINDOW), Err(ElfError::BadSegment { problem, .. }) if problem.contains("W^X"))
        );
        let shared = build_elf(
            0x400000,
            &[
                (PF_R | PF_X, 0x400000, &[0x90], 16),
                (PF_R | PF_W, 0x400800, &[1], 1),
            ],
        );
        assert!(
            matches!(parse(&shared, WINDOW), Err(ElfError::BadSegment { problem, .. }) if problem.contains("shares a page"))
        );
        let low = build_elf(0x1000, &[(PF_R | PF_X, 0x1000, &[0x90], 1)]);
        assert!(
            matches!(parse(&low, WINDOW), Err(ElfError::BadSegment { problem, .. }) if problem.contains("window"))
        );
        let entry = build_elf(
            0x401000,
            &[
                (PF_R | PF_X, 0x400000, &[0x90], 1),
                (PF_R | PF_W, 0x401000, &[0], 1),
            ],
        );
        assert_eq!(parse(&entry, WINDOW), Err(ElfError::BadEntry(0x401000)));
        let ok = build_elf(0x400000, &[(PF_R | PF_X, 0x400000, &[0x90; 16], 16)]);
        for cut in [0, 10, 63, 64, 100, ok.len() - 1] {
            assert!(parse(&ok[..cut], WINDOW).is_err(), "cut at {cut}");
        }
        let mut huge = ok.clone();
        huge[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes()); // filesz
        huge[64 + 40..64 + 48].copy_from_slice(&u64::MAX.to_le_bytes()); // memsz
        assert!(parse(&huge, WINDOW).is_err());
        let mut pie = ok.clone();
        pie[16] = 3;
        assert_eq!(parse(&pie, WINDOW), Err(ElfError::NotExecutable(3)));
        let mut many = ok;
        many[56..58].copy_from_slice(&1000u16.to_le_bytes());
        assert_eq!(parse(&many, WINDOW), Err(ElfError::TooManyHeaders(1000)));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_accepted_images_respect_the_window(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(img) = parse(&bytes, WINDOW) {
                for s in &img.segments {
                    proptest::prop_assert!(s.memory.start >= WINDOW.start && s.memory.end <= WINDOW.end);
                    proptest::prop_assert!(s.file.end <= bytes.len());
                    proptest::prop_assert!(!(s.flags.write && s.flags.exec));
                }
            }
        }
    }
}
