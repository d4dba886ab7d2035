//! An ELF vmlinux loaded into guest memory segment by segment, without the ranges its `NOBITS`
//! sections cover (`.bss`, `.brk`, `.orc_lookup`): those hold no data by definition, the kernel
//! clears its `.bss` itself, and fresh guest memory is zero anyway, so they are neither read from
//! the file nor written. Debian 6.1's vmlinux: 17 MiB of its 59 MiB of segments.
//!
//! linux-loader's ELF loader reads every segment whole; this one keeps its checks (ELF64,
//! little-endian, x86-64 program header size, entry at or above the kernel's load address) and
//! adds bounds on every offset and size, as the image may come from anywhere.

use super::boot::BootError;
use super::guest_read::{Piece, Readers};
use super::layout;
use crate::micro::elf::{u16_at, u32_at, u64_at};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PT_LOAD: u32 = 1;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 2;
const PHDR_SIZE: usize = 0x38;
const SHDR_SIZE: usize = 0x40;
/// Largest section header table read (a vmlinux has about 40 entries, 2.5 KiB).
pub(crate) const MAX_SECTION_TABLE: usize = 1 << 20;

/// How to load an ELF kernel: its entry, the end of its memory, and the pieces to copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) entry: u64,
    pub(crate) end: u64,
    pub(crate) pieces: Vec<Piece>,
}

fn bad(what: &str) -> BootError {
    BootError::Load(format!("ELF kernel: {what}"))
}

/// Where the section header table is (offset, bytes), when there is one of a sane size.
pub(crate) fn section_table(head: &[u8]) -> Option<(u64, usize)> {
    let shoff = u64_at(head, 0x28)?;
    let entry = usize::from(u16_at(head, 0x3a)?);
    let count = usize::from(u16_at(head, 0x3c)?);
    let bytes = entry.checked_mul(count)?;
    (shoff != 0 && entry == SHDR_SIZE && bytes <= MAX_SECTION_TABLE).then_some((shoff, bytes))
}

/// The plan for an ELF image of `file_len` bytes whose first bytes are `head` (the program
/// headers included) and whose section header table is `sections` (empty when unknown: then
/// nothing is skipped).
pub(crate) fn plan(head: &[u8], sections: &[u8], file_len: u64) -> Result<Plan, BootError> {
    if head.get(..4) != Some(b"\x7fELF") {
        return Err(bad("no ELF magic"));
    }
    if head.get(4) != Some(&2) || head.get(5) != Some(&1) {
        return Err(bad("not a little-endian ELF64 image"));
    }
    let entry = u64_at(head, 0x18).ok_or_else(|| bad("truncated header"))?;
    if entry < layout::KERNEL_START {
        return Err(bad("entry point below the kernel's load address"));
    }
    let phoff = u64_at(head, 0x20).ok_or_else(|| bad("truncated header"))?;
    let phentsize = usize::from(u16_at(head, 0x36).ok_or_else(|| bad("truncated header"))?);
    let phnum = usize::from(u16_at(head, 0x38).ok_or_else(|| bad("truncated header"))?);
    if phentsize != PHDR_SIZE || phoff < 0x40 {
        return Err(bad("bad program header table"));
    }
    let skips = nobits(sections);
    let mut pieces = Vec::new();
    let mut end = 0u64;
    for i in 0..phnum {
        let at = usize::try_from(phoff)
            .ok()
            .and_then(|p| p.checked_add(i * PHDR_SIZE))
            .ok_or_else(|| bad("program header table out of range"))?;
        let field = |o: usize| {
            u64_at(head, at + o).ok_or_else(|| bad("program header past the headers read"))
        };
        if u32_at(head, at).ok_or_else(|| bad("program header past the headers read"))? != PT_LOAD {
            continue;
        }
        let (offset, vaddr, paddr) = (field(0x08)?, field(0x10)?, field(0x18)?);
        let (filesz, memsz) = (field(0x20)?, field(0x28)?);
        let seg_end = paddr
            .checked_add(memsz)
            .ok_or_else(|| bad("segment overflows"))?;
        end = end.max(seg_end);
        if filesz == 0 {
            continue;
        }
        if filesz > memsz || offset.checked_add(filesz).is_none_or(|e| e > file_len) {
            return Err(bad("segment outside the image"));
        }
        // The segment's file bytes, minus what NOBITS sections cover (by virtual address).
        let mut cursor = 0u64;
        let mut holes: Vec<(u64, u64)> = skips
            .iter()
            .filter_map(|&(start, len)| {
                let from = start.checked_sub(vaddr)?;
                (from < filesz).then(|| (from, from.saturating_add(len).min(filesz)))
            })
            .collect();
        holes.sort_unstable();
        for (from, to) in holes.into_iter().chain([(filesz, filesz)]) {
            if from > cursor {
                pieces.push(Piece {
                    guest: paddr + cursor,
                    offset: offset + cursor,
                    len: from - cursor,
                });
            }
            cursor = cursor.max(to);
        }
    }
    Ok(Plan { entry, end, pieces })
}

/// The allocated NOBITS sections in a section header table: (virtual address, size).
fn nobits(table: &[u8]) -> Vec<(u64, u64)> {
    table
        .chunks_exact(SHDR_SIZE)
        .filter_map(|s| {
            let alloc = u64_at(s, 0x08)? & SHF_ALLOC != 0;
            (u32_at(s, 0x04)? == SHT_NOBITS && alloc)
                .then_some((u64_at(s, 0x10)?, u64_at(s, 0x20)?))
        })
        .filter(|&(_, size)| size > 0)
        .collect()
}

/// Copies the plan's pieces from `image` (bytes) into guest memory.
pub(crate) fn copy_bytes(
    mem: &GuestMemoryMmap,
    plan: &Plan,
    image: &[u8],
) -> Result<(), BootError> {
    for p in &plan.pieces {
        let range = usize::try_from(p.offset)
            .ok()
            .zip(usize::try_from(p.offset + p.len).ok())
            .and_then(|(a, b)| image.get(a..b))
            .ok_or_else(|| bad("segment outside the image"))?;
        mem.write_slice(range, GuestAddress(p.guest))?;
    }
    Ok(())
}

/// Reads the plan's pieces from `file` straight into guest memory, with `readers`.
pub(crate) fn copy_file(
    mem: &GuestMemoryMmap,
    plan: &Plan,
    file: &std::fs::File,
    readers: &Readers<'_>,
) -> Result<(), BootError> {
    super::guest_read::read(file, mem, &plan.pieces, readers)
        .map_err(|e| BootError::Load(format!("reading the kernel image: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 image: `segments` as (offset, vaddr, paddr, filesz, memsz), `nobits` sections as
    /// (vaddr, size); file bytes are `fill` everywhere past the headers.
    fn image(segments: &[(u64, u64, u64, u64, u64)], nobits: &[(u64, u64)], len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        for (i, x) in b.iter_mut().enumerate().skip(0x1000) {
            *x = (i % 251) as u8 | 1;
        }
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x18..0x20].copy_from_slice(&layout::KERNEL_START.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, s) in segments.iter().enumerate() {
            let at = 0x40 + i * PHDR_SIZE;
            b[at..at + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            for (o, v) in [(8, s.0), (0x10, s.1), (0x18, s.2), (0x20, s.3), (0x28, s.4)] {
                b[at + o..at + o + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        let shoff = 0x800usize;
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&(nobits.len() as u16).to_le_bytes());
        for (i, &(addr, size)) in nobits.iter().enumerate() {
            let at = shoff + i * SHDR_SIZE;
            b[at + 4..at + 8].copy_from_slice(&SHT_NOBITS.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&SHF_ALLOC.to_le_bytes());
            b[at + 0x10..at + 0x18].copy_from_slice(&addr.to_le_bytes());
            b[at + 0x20..at + 0x28].copy_from_slice(&size.to_le_bytes());
        }
        b
    }

    fn plan_of(b: &[u8]) -> Result<Plan, BootError> {
        let sections = section_table(b)
            .map(|(at, n)| &b[at as usize..at as usize + n])
            .unwrap_or(&[]);
        plan(b, sections, b.len() as u64)
    }

    const K: u64 = layout::KERNEL_START;
    const V: u64 = 0xffff_ffff_8100_0000;

    #[test]
    fn nobits_ranges_are_not_copied_and_everything_else_is() {
        // Segment 1: 0x3000 bytes; segment 2: 0x4000 bytes whose middle 0x2000 are .bss.
        let b = image(
            &[
                (0x1000, V, K, 0x3000, 0x3000),
                (0x4000, V + 0x10000, K + 0x10000, 0x4000, 0x5000),
            ],
            &[(V + 0x11000, 0x2000)],
            0x8000,
        );
        let p = plan_of(&b).unwrap();
        assert_eq!(p.entry, K);
        assert_eq!(p.end, K + 0x15000);
        assert_eq!(
            p.pieces,
            [
                Piece {
                    guest: K,
                    offset: 0x1000,
                    len: 0x3000
                },
                Piece {
                    guest: K + 0x10000,
                    offset: 0x4000,
                    len: 0x1000
                },
                Piece {
                    guest: K + 0x13000,
                    offset: 0x7000,
                    len: 0x1000
                },
            ]
        );
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (K + 0x20000) as usize)])
            .unwrap();
        copy_bytes(&mem, &p, &b).unwrap();
        let mut got = vec![0u8; 0x4000];
        mem.read_slice(&mut got, GuestAddress(K + 0x10000)).unwrap();
        assert_eq!(&got[..0x1000], &b[0x4000..0x5000]);
        assert!(
            got[0x1000..0x3000].iter().all(|&x| x == 0),
            ".bss left zero"
        );
        assert_eq!(&got[0x3000..], &b[0x7000..0x8000]);
        // The same from a file.
        let path = std::env::temp_dir().join(format!("zones-elf-kernel-{}", std::process::id()));
        std::fs::write(&path, &b).unwrap();
        let file_mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (K + 0x20000) as usize)])
                .unwrap();
        let readers = Readers::new(2, &super::super::guest_read::unfiltered);
        copy_file(
            &file_mem,
            &p,
            &std::fs::File::open(&path).unwrap(),
            &readers,
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut a = vec![0u8; 0x20000];
        let mut c = vec![0u8; 0x20000];
        mem.read_slice(&mut a, GuestAddress(K)).unwrap();
        file_mem.read_slice(&mut c, GuestAddress(K)).unwrap();
        assert!(a == c, "file and bytes load alike");
    }

    #[test]
    fn without_sections_every_file_byte_is_copied() {
        let b = image(&[(0x1000, V, K, 0x3000, 0x4000)], &[], 0x4000);
        assert_eq!(
            plan_of(&b).unwrap().pieces,
            [Piece {
                guest: K,
                offset: 0x1000,
                len: 0x3000
            }]
        );
    }

    #[test]
    fn lying_headers_are_refused_not_followed() {
        let ok = image(&[(0x1000, V, K, 0x3000, 0x3000)], &[], 0x4000);
        let mut past_end = ok.clone();
        past_end[0x40 + 0x20..0x40 + 0x28].copy_from_slice(&0x9000u64.to_le_bytes());
        past_end[0x40 + 0x28..0x40 + 0x30].copy_from_slice(&0x9000u64.to_le_bytes());
        assert!(plan_of(&past_end).is_err(), "file bytes past the end");
        let mut overflow = ok.clone();
        overflow[0x40 + 0x28..0x40 + 0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(plan_of(&overflow).is_err(), "memsz overflows");
        let mut low = ok.clone();
        low[0x18..0x20].copy_from_slice(&0x1000u64.to_le_bytes());
        assert!(plan_of(&low).is_err(), "entry below the load address");
        let mut many = ok.clone();
        many[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(
            plan_of(&many).is_err(),
            "program headers past the bytes read"
        );
        let mut big_end = ok;
        big_end[5] = 2;
        assert!(plan_of(&big_end).is_err(), "big-endian");
        // A NOBITS section that claims more than the segment skips only the segment's bytes.
        let b = image(
            &[(0x1000, V, K, 0x3000, 0x3000)],
            &[(V + 0x2000, u64::MAX)],
            0x4000,
        );
        assert_eq!(
            plan_of(&b).unwrap().pieces,
            [Piece {
                guest: K,
                offset: 0x1000,
                len: 0x2000
            }]
        );
    }

    /// The host's own kernel, decompressed as a zone would boot it, loads as linux-loader loads
    /// it, except that its NOBITS ranges stay zero (SKIPPED without a kernel in /boot).
    #[test]
    fn the_host_kernel_loads_as_linux_loader_loads_it_but_for_its_nobits() {
        use linux_loader::loader::{KernelLoader, elf::Elf};
        let Ok(boot) = crate::LinuxBoot::host_kernel() else {
            eprintln!("SKIPPED: no kernel in /boot");
            return;
        };
        let Some(path) = boot.kernel.path().map(std::path::Path::to_path_buf) else {
            return;
        };
        let image = std::fs::read(&path).unwrap();
        let vmlinux = match super::super::payload::vmlinux(Some(&path), &image, None) {
            Ok(super::super::blob::Loadable::Bytes(b)) => b.to_vec(),
            other => {
                eprintln!(
                    "SKIPPED: the host kernel is not decompressed here: {:?}",
                    other.err()
                );
                return;
            }
        };
        let p = plan_of(&vmlinux).unwrap();
        let size = (p.end + 0x1000) as usize;
        let ours = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
        copy_bytes(&ours, &p, &vmlinux).unwrap();
        let theirs = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
        let r = Elf::load(
            &theirs,
            None,
            &mut std::io::Cursor::new(&vmlinux),
            Some(GuestAddress(K)),
        )
        .unwrap();
        assert_eq!((p.entry, p.end), (r.kernel_load.0, r.kernel_end));
        let (mut a, mut b) = (vec![0u8; size], vec![0u8; size]);
        ours.read_slice(&mut a, GuestAddress(0)).unwrap();
        theirs.read_slice(&mut b, GuestAddress(0)).unwrap();
        let sections =
            section_table(&vmlinux).map(|(at, n)| &vmlinux[at as usize..at as usize + n]);
        let skipped: u64 = nobits(sections.unwrap_or(&[])).iter().map(|s| s.1).sum();
        let copied: u64 = p.pieces.iter().map(|p| p.len).sum();
        eprintln!("host kernel: {copied} bytes copied, {skipped} bytes of NOBITS sections not");
        // Every byte differs only where linux-loader copied the file's bytes of a NOBITS range.
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x == y || *x == 0),
            "only NOBITS bytes differ"
        );
        assert!(differ as u64 <= skipped, "{differ} bytes differ");
    }
}
