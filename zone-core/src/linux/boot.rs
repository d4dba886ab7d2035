//! Loading a Linux kernel and writing what the 64-bit boot protocol needs: the kernel (bzImage or
//! ELF vmlinux), the initramfs at the top of low RAM, the command line and `boot_params`.

use super::blob::Loadable;
use super::elf_kernel;
use super::guest_read::{Piece, Readers};
use super::layout;
use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{KernelLoader, bzimage::BzImage};
use std::io::Cursor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// xloadflags: the kernel has a 64-bit entry point at `code32_start + 0x200`.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;

/// Why a kernel could not be booted.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Neither a bzImage nor an ELF.
    #[error("kernel image is neither an ELF vmlinux nor a bzImage ({0})")]
    UnknownFormat(String),
    /// A bzImage without a 64-bit entry point.
    #[error(
        "the bzImage has no 64-bit entry point (boot protocol 2.12+, XLF_KERNEL_64); use a newer kernel"
    )]
    No64BitEntry,
    /// linux-loader failed.
    #[error("loading the kernel: {0}")]
    Load(String),
    /// Things do not fit in low RAM.
    #[error(
        "{what} needs {needed:#x} bytes at {at:#x} but low RAM ends at {end:#x}: give the zone more memory"
    )]
    NoRoom {
        /// What did not fit.
        what: &'static str,
        /// Where it would go.
        at: u64,
        /// Its size.
        needed: u64,
        /// End of low RAM.
        end: u64,
    },
    /// The command line is too long.
    #[error("kernel command line of {len} bytes exceeds the kernel's limit of {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Writing guest memory failed.
    #[error("writing guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Where the kernel went and how to enter it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadedKernel {
    /// 64-bit entry point.
    pub(crate) entry: u64,
    /// One past the memory the kernel needs (its init_size for a bzImage).
    pub(crate) end: u64,
    /// Setup header to pass on (from the bzImage, or a default one for ELF kernels).
    pub(crate) header: setup_header,
}

/// Bytes of an ELF image read for its program headers (a vmlinux has a handful, right after the
/// ELF header).
const ELF_HEAD: usize = 64 << 10;

/// Loads `image` (ELF vmlinux with a 64-bit entry, or bzImage) at 1 MiB. A file is read
/// straight into guest memory.
pub(crate) fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &mut Loadable,
    readers: &Readers<'_>,
) -> Result<LoadedKernel, BootError> {
    let head = image
        .head(ELF_HEAD)
        .map_err(|e| BootError::Load(format!("reading the kernel image: {e}")))?;
    if head.starts_with(b"\x7fELF") {
        let ram_end = mem.last_addr().raw_value().saturating_add(1);
        if let Some((at, end)) = elf_extent(&head)
            && end > ram_end
        {
            return Err(BootError::NoRoom {
                what: "the kernel (decompressed)",
                at,
                needed: end - at,
                end: ram_end,
            });
        }
        let sections = match elf_kernel::section_table(&head) {
            Some((at, len)) => image
                .range(at, len)
                .map_err(|e| BootError::Load(format!("reading the kernel image: {e}")))?,
            None => Vec::new(),
        };
        let plan = elf_kernel::plan(&head, &sections, image.len()?)?;
        drop(head);
        match image {
            Loadable::Bytes(b) => elf_kernel::copy_bytes(mem, &plan, b)?,
            Loadable::File(f) => elf_kernel::copy_file(mem, &plan, f, readers)?,
        }
        let header = setup_header {
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            kernel_alignment: KERNEL_MIN_ALIGNMENT,
            ..Default::default()
        };
        return Ok(LoadedKernel {
            entry: plan.entry,
            end: plan.end,
            header,
        });
    }
    drop(head);
    let image = match image {
        Loadable::Bytes(b) => &b[..],
        Loadable::File(_) => {
            return Err(BootError::UnknownFormat(
                "a kernel file that is not an ELF vmlinux".into(),
            ));
        }
    };
    if image.len() < 0x250 || image[0x202..0x206] != KERNEL_HDR_MAGIC.to_le_bytes() {
        return Err(BootError::UnknownFormat(format!(
            "{} bytes, no ELF magic and no HdrS header",
            image.len()
        )));
    }
    let start = Some(GuestAddress(layout::KERNEL_START));
    let r = BzImage::load(mem, start, &mut Cursor::new(image), start)
        .map_err(|e| BootError::Load(e.to_string()))?;
    let header = r
        .setup_header
        .ok_or_else(|| BootError::Load("bzImage without setup header".into()))?;
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry);
    }
    let init_size = u64::from(header.init_size);
    Ok(LoadedKernel {
        entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY,
        end: (r.kernel_load.0 + init_size.max(image.len() as u64)).max(r.kernel_end),
        header,
    })
}

/// The guest-physical range an ELF64 kernel's loadable segments cover, if its headers can be
/// read (linux-loader checks them again as it loads).
fn elf_extent(image: &[u8]) -> Option<(u64, u64)> {
    use crate::micro::elf::{u16_at, u32_at, u64_at};
    const PT_LOAD: u32 = 1;
    let phoff = usize::try_from(u64_at(image, 0x20)?).ok()?;
    let entry_size = usize::from(u16_at(image, 0x36)?);
    let count = usize::from(u16_at(image, 0x38)?);
    let mut extent: Option<(u64, u64)> = None;
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(entry_size)?)?;
        if u32_at(image, at)? != PT_LOAD {
            continue;
        }
        let start = u64_at(image, at.checked_add(0x18)?)?;
        let end = start.checked_add(u64_at(image, at.checked_add(0x28)?)?)?;
        extent = Some(extent.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
    }
    extent
}

/// Places `initramfs` page-aligned at the top of low RAM (below the kernel's initrd limit),
/// above the kernel. Returns its guest address.
pub(crate) fn load_initramfs(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    mem_size: u64,
    initramfs: &mut Loadable,
    readers: &Readers<'_>,
) -> Result<u64, BootError> {
    let len = initramfs.len()?;
    let limit = match kernel.header.initrd_addr_max {
        0 => 0x7fff_ffff,
        max => u64::from(max),
    };
    let top = layout::low_ram(mem_size).end.min(limit + 1);
    let no_room = BootError::NoRoom {
        what: "the initramfs",
        at: kernel.end,
        needed: len,
        end: top,
    };
    let at = top.checked_sub(len).ok_or(no_room)? & !0xfff;
    if at < kernel.end.next_multiple_of(0x1000) {
        return Err(BootError::NoRoom {
            what: "the initramfs",
            at: kernel.end,
            needed: len,
            end: top,
        });
    }
    match initramfs {
        Loadable::Bytes(b) => mem.write_slice(b, GuestAddress(at))?,
        Loadable::File(f) => {
            let whole = Piece {
                guest: at,
                offset: 0,
                len,
            };
            super::guest_read::read(f, mem, &[whole], readers)
                .map_err(|e| BootError::Load(format!("reading the initramfs: {e}")))?
        }
    }
    Ok(at)
}

/// Writes the command line and `boot_params` (with the e820 map and the ACPI RSDP address).
pub(crate) fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    initramfs: (u64, u64),
    mem_size: u64,
) -> Result<(), BootError> {
    let max = match kernel.header.cmdline_size {
        0 => 2048,
        n => (n as usize + 1).min(layout::CMDLINE_MAX),
    };
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    mem.write_slice(&line, GuestAddress(layout::CMDLINE))?;

    // SAFETY: boot_params is a plain-data C struct for which all-zero bytes are valid.
    let mut params: boot_params = unsafe { std::mem::zeroed() };
    params.hdr = kernel.header;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;
    params.hdr.ramdisk_image = initramfs.0 as u32;
    params.hdr.ramdisk_size = initramfs.1 as u32;
    params.acpi_rsdp_addr = layout::ACPI_TABLES;
    let map = layout::e820(mem_size);
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_slice(&zero_page_bytes(&params), GuestAddress(layout::ZERO_PAGE))?;
    Ok(())
}

fn zero_page_bytes(params: &boot_params) -> Vec<u8> {
    const _: () = assert!(std::mem::size_of::<boot_params>() == 4096);
    // SAFETY: boot_params is repr(C, packed) plain data (no padding, no pointers); viewing its
    // 4096 bytes as a byte slice for the lifetime of the borrow is sound.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (params as *const boot_params).cast::<u8>(),
            std::mem::size_of::<boot_params>(),
        )
    };
    bytes.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread reads alone.
    fn alone() -> Readers<'static> {
        Readers::new(1, &crate::linux::guest_read::unfiltered)
    }

    fn bytes(b: &[u8]) -> Loadable {
        Loadable::Bytes(super::super::blob::Blob::Owned(b.to_vec()))
    }

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: 0x100200,
            end,
            header: setup_header {
                cmdline_size: 255,
                ..Default::default()
            },
        }
    }

    #[test]
    fn an_elf_kernel_larger_than_memory_is_refused_with_the_fix() {
        // An ELF64 header with one PT_LOAD segment of 48 MiB at 16 MiB.
        let mut elf = vec![0u8; 0x40 + 0x38];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes());
        elf[0x40 + 0x18..0x40 + 0x20].copy_from_slice(&(16u64 << 20).to_le_bytes());
        elf[0x40 + 0x28..0x40 + 0x30].copy_from_slice(&(48u64 << 20).to_le_bytes());
        assert_eq!(elf_extent(&elf), Some((16 << 20, 64 << 20)));
        let err = load_kernel(&mem(32 << 20), &mut bytes(&elf), &alone()).unwrap_err();
        assert!(
            matches!(err, BootError::NoRoom { needed, end, .. } if needed == 48 << 20 && end == 32 << 20),
            "{err}"
        );
        assert!(
            err.to_string().contains("give the zone more memory"),
            "{err}"
        );
        // Headers that lie (a table past the end, a segment that overflows) give no extent.
        elf[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_extent(&elf), None);
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x40 + 0x28..0x40 + 0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_extent(&elf), None);
    }

    #[test]
    fn boot_params_carry_the_header_e820_cmdline_initramfs_and_rsdp() {
        let m = mem(64 << 20);
        write_boot_params(
            &m,
            &kernel(0x800000),
            "console=ttyS0",
            (0x3f00000, 0x1000),
            64 << 20,
        )
        .unwrap();
        let mut zp = [0u8; 4096];
        m.read_slice(&mut zp, GuestAddress(layout::ZERO_PAGE))
            .unwrap();
        let u16_at = |o: usize| u16::from_le_bytes([zp[o], zp[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(zp[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(zp[o..o + 8].try_into().unwrap());
        assert_eq!(u16_at(0x1fe), 0xaa55, "boot_flag");
        assert_eq!(u32_at(0x202), KERNEL_HDR_MAGIC);
        assert_eq!(zp[0x210], 0xff, "type_of_loader");
        assert_eq!(u32_at(0x218), 0x3f00000, "ramdisk_image");
        assert_eq!(u32_at(0x21c), 0x1000, "ramdisk_size");
        assert_eq!(u32_at(0x228), layout::CMDLINE as u32, "cmd_line_ptr");
        assert_eq!(u64_at(0x070), layout::ACPI_TABLES, "acpi_rsdp_addr");
        assert_eq!(zp[0x1e8], 3, "e820 entries");
        assert_eq!(
            (u64_at(0x2d0 + 40), u64_at(0x2d0 + 48)),
            (0x100000, (64 << 20) - 0x100000)
        );
        let mut line = [0u8; 14];
        m.read_slice(&mut line, GuestAddress(layout::CMDLINE))
            .unwrap();
        assert_eq!(&line, b"console=ttyS0\0");
    }

    #[test]
    fn long_command_lines_and_unfitting_initramfs_are_refused() {
        let m = mem(16 << 20);
        let long = "x".repeat(300);
        assert!(matches!(
            write_boot_params(&m, &kernel(0x800000), &long, (0, 0), 16 << 20),
            Err(BootError::CmdlineTooLong { len: 300, max: 255 })
        ));
        let big = vec![0u8; 10 << 20];
        assert!(matches!(
            load_initramfs(&m, &kernel(0x800000), 16 << 20, &mut bytes(&big), &alone()),
            Err(BootError::NoRoom { .. })
        ));
        let at = load_initramfs(
            &m,
            &kernel(0x800000),
            16 << 20,
            &mut bytes(&[1u8; 5000]),
            &alone(),
        )
        .unwrap();
        assert_eq!(at, (16 << 20) - 0x2000, "page-aligned at the top");
        // From a file (a cached archive), the same bytes at the same place.
        let path = std::env::temp_dir().join(format!("zones-initrd-test-{}", std::process::id()));
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut file = Loadable::File(std::fs::File::open(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        let at = load_initramfs(&m, &kernel(0x800000), 16 << 20, &mut file, &alone()).unwrap();
        assert_eq!(at, (16 << 20) - 0x2000);
        let mut got = vec![0u8; 5000];
        m.read_slice(&mut got, GuestAddress(at)).unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let m = mem(16 << 20);
        assert!(matches!(
            load_kernel(&m, &mut bytes(b"definitely not a kernel"), &alone()),
            Err(BootError::UnknownFormat(_))
        ));
        let mut fake = vec![0u8; 0x400];
        fake[0x202..0x206].copy_from_slice(&KERNEL_HDR_MAGIC.to_le_bytes());
        assert!(
            load_kernel(&m, &mut bytes(&fake), &alone()).is_err(),
            "HdrS but no valid bzImage"
        );
    }
}
