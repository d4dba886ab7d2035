//! A bzImage's kernel decompressed on the host, so the guest starts the kernel itself instead of
//! first running the bzImage's decompressor (under emulation that decompression is most of a
//! Debian kernel's boot; on hardware it is still tens of milliseconds per zone). The result, an
//! ELF vmlinux, is kept in the zones cache directory (`kernels/`, see
//! [`Rootfs::cache_dir`](crate::Rootfs::cache_dir) for where that is), so every zone after the
//! first one of a kernel, in this process or another, skips the work; the process keeps
//! nothing of it in memory once the zone is built. Where the cache directory is not writable,
//! every zone decompresses again.
//!
//! Formats: gzip (flate2) and zstd (ruzstd) in-process; xz through the `xz` program, because a
//! kernel's xz payload uses the x86 BCJ filter, which the pure-Rust xz decoder does not know.
//! Without `xz`, or for another format (lz4, lzo, bzip2), the bzImage boots as it is: the guest
//! decompresses it, as it always did. Nothing about the zone's isolation changes either way.

use super::blob::{Blob, Loadable};
use super::decompress::{Compression, decompress};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Largest vmlinux accepted (Debian's is about 66 MB).
const MAX_VMLINUX: usize = 512 << 20;

/// How a bzImage's payload is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Gzip,
    Xz,
    Zstd,
    /// Something else (lz4, lzo, bzip2, lzma): left to the guest.
    Other,
}

/// The compressed payload of a bzImage (boot protocol 2.08 and later say where it is), and its
/// format by magic number.
pub(crate) fn payload(image: &[u8]) -> Option<(Format, &[u8])> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes([image[0x206], image[0x207]]);
    if version < 0x208 {
        return None;
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = image.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1)
        .checked_mul(512)?
        .checked_add(u32_at(0x248)?)?;
    let payload = image.get(start..start.checked_add(u32_at(0x24c)?)?)?;
    let format = if payload.starts_with(b"\x1f\x8b") {
        Format::Gzip
    } else if payload.starts_with(b"\xfd7zXZ\0") {
        Format::Xz
    } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
        Format::Zstd
    } else {
        Format::Other
    };
    Some((format, payload))
}

/// Why the host did not decompress a kernel (it then boots as it is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    /// Not a bzImage (an ELF vmlinux already, or unknown).
    NotBzImage,
    /// A payload format the host does not decompress.
    Format,
    /// The `xz` program is missing or failed.
    Xz(String),
    /// The payload did not decompress to an ELF image within the bound.
    Corrupt(String),
}

/// The cache file name of a kernel read from `path` (by its path, size and modification time)
/// or given as `image` (by its SHA-256).
fn cache_name(path: Option<&Path>, image: &[u8]) -> String {
    path.and_then(name_by_path)
        .unwrap_or_else(|| hex_name(image))
}

/// The cache file name of the kernel at `path`, by its path, size and modification time
/// (`None` when its metadata cannot be read).
fn name_by_path(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!("file\0{}\0{}\0{modified}", path.display(), meta.len());
    Some(hex_name(key.as_bytes()))
}

/// `<SHA-256 of bytes>.vmlinux`.
fn hex_name(bytes: &[u8]) -> String {
    format!("{}.vmlinux", super::cache::hex_sha256(bytes))
}

/// The cached vmlinux of the bzImage at `path` in `cache`, if an earlier zone made it (found by
/// the file's path, size and modification time: the bzImage itself is not read).
pub(crate) fn cached_vmlinux(path: &Path, cache: &Path) -> Option<Loadable> {
    open_cached(&cache.join(name_by_path(path)?))
}

/// The vmlinux in cache file `file`, open, if it is one.
fn open_cached(file: &Path) -> Option<Loadable> {
    let file = std::fs::File::open(file).ok()?;
    if file.metadata().ok()?.len() > MAX_VMLINUX as u64 {
        return None;
    }
    let image = Loadable::File(file);
    image
        .head(4)
        .is_ok_and(|h| h.starts_with(b"\x7fELF"))
        .then_some(image)
}

/// The vmlinux inside `image` (read from `path`, when it was, after [`cached_vmlinux`] found
/// nothing for that path), from the cache in `cache` or decompressed now (and then cached
/// there); `Err` says why the image should boot as it is.
pub(crate) fn vmlinux(
    path: Option<&Path>,
    image: &[u8],
    cache: Option<&Path>,
) -> Result<Loadable, Kept> {
    let Some((format, data)) = payload(image) else {
        return Err(Kept::NotBzImage);
    };
    let cached = cache.map(|dir| dir.join(cache_name(path, image)));
    // A kernel read from a file was looked up by its path before it was read
    // ([`cached_vmlinux`]); one given as bytes is looked up here, by its content. The cached
    // file is handed to the loader open: it reads it straight into guest memory.
    if path.is_none()
        && let Some(image) = cached.as_deref().and_then(open_cached)
    {
        return Ok(image);
    }
    let vmlinux = decompress_payload(format, data)?;
    if !vmlinux.starts_with(b"\x7fELF") {
        return Err(Kept::Corrupt("the payload is not an ELF image".into()));
    }
    if let Some(file) = &cached {
        super::cache::store(file, &vmlinux);
    }
    Ok(Loadable::Bytes(Blob::Owned(vmlinux)))
}

/// The kernel cache directory: `kernels/` in the zones cache directory.
pub(crate) fn cache_dir() -> PathBuf {
    super::rootfs::default_cache_dir().join("kernels")
}

fn decompress_payload(format: Format, data: &[u8]) -> Result<Vec<u8>, Kept> {
    // The kernel's payloads end with the decompressed size (4 bytes) after the stream; the
    // decoders stop at the stream's end.
    let corrupt = |e: super::decompress::DecompressError| Kept::Corrupt(e.to_string());
    match format {
        Format::Gzip => decompress(Compression::Gzip, data, MAX_VMLINUX).map_err(corrupt),
        Format::Zstd => decompress(Compression::Zstd, data, MAX_VMLINUX).map_err(corrupt),
        Format::Xz => xz(data),
        Format::Other => Err(Kept::Format),
    }
}

/// `xz -dc` over `data`, bounded. The kernel's stream is followed by its size, which xz reports
/// as trailing garbage after a complete stream: the output counts once it is an ELF image.
fn xz(data: &[u8]) -> Result<Vec<u8>, Kept> {
    // xz reads the payload from an unlinked file, so no thread has to feed a pipe.
    let input = unlinked_file(data).map_err(|e| Kept::Xz(format!("staging xz's input: {e}")))?;
    let mut child = std::process::Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Kept::Xz(format!("cannot run xz: {e}")))?;
    let mut out = Vec::new();
    let read = child
        .stdout
        .take()
        .ok_or_else(|| Kept::Xz("no pipe from xz".into()))?
        .take(MAX_VMLINUX as u64 + 1)
        .read_to_end(&mut out);
    let _ = child.kill();
    let _ = child.wait();
    read.map_err(|e| Kept::Xz(format!("reading xz's output: {e}")))?;
    if out.len() > MAX_VMLINUX {
        return Err(Kept::Corrupt(format!("over {MAX_VMLINUX} bytes")));
    }
    Ok(out)
}

/// A file holding `data`, open for reading from its start, already removed from its directory.
fn unlinked_file(data: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("zones-xz-{}-{n}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    file.write_all(data)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All the bytes of a kernel image.
    fn contents(image: Loadable) -> Vec<u8> {
        match image {
            Loadable::Bytes(b) => b.to_vec(),
            Loadable::File(mut f) => {
                let mut all = Vec::new();
                f.read_to_end(&mut all).unwrap();
                all
            }
        }
    }

    /// A bzImage-shaped header with `payload` at the place the header says.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 0x1000];
        image[0x1f1] = 3; // setup sectors: the payload area starts at 4 * 512
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.resize(4 * 512 + 0x100, 0);
        image.extend_from_slice(payload);
        image.extend_from_slice(&[0; 4]); // the kernel's trailing size
        image
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zones-payload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_gzip_payload_becomes_its_elf_and_is_cached_on_disk() {
        let elf = [b"\x7fELF".as_slice(), &[7u8; 5000]].concat();
        let image = bzimage(&gzip(&elf));
        let (format, _) = payload(&image).unwrap();
        assert_eq!(format, Format::Gzip);
        let dir = scratch("cache");
        assert_eq!(contents(vmlinux(None, &image, Some(&dir)).unwrap()), elf);
        let file = dir.join(cache_name(None, &image));
        assert_eq!(std::fs::read(&file).unwrap(), elf, "cached");
        // The next zone reads the cache: a marked cache file proves it was used.
        let mut marked = elf.clone();
        marked[4] = 42;
        std::fs::write(&file, &marked).unwrap();
        assert_eq!(contents(vmlinux(None, &image, Some(&dir)).unwrap()), marked);
        // A cache file that is not an ELF image is not trusted: decompressed again.
        std::fs::write(&file, b"junk").unwrap();
        assert_eq!(contents(vmlinux(None, &image, Some(&dir)).unwrap()), elf);
        // No cache directory: decompressed every time.
        assert_eq!(contents(vmlinux(None, &image, None).unwrap()), elf);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cached_vmlinux_is_found_by_the_bzimage_file_without_reading_it() {
        let elf = [b"\x7fELF".as_slice(), &[9u8; 3000]].concat();
        let image = bzimage(&gzip(&elf));
        let dir = scratch("by-path");
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, &image).unwrap();
        let cache = dir.join("cache");
        assert!(
            cached_vmlinux(&kernel, &cache).is_none(),
            "nothing cached yet"
        );
        assert_eq!(
            contents(vmlinux(Some(&kernel), &image, Some(&cache)).unwrap()),
            elf
        );
        let hit = cached_vmlinux(&kernel, &cache).expect("cached by path");
        assert!(matches!(hit, Loadable::File(_)), "handed over open");
        assert_eq!(contents(hit), elf);
        // A bzImage that changed (its size here) is another kernel: no stale vmlinux.
        std::fs::write(&kernel, [image.as_slice(), &[0]].concat()).unwrap();
        assert!(cached_vmlinux(&kernel, &cache).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_cannot_be_decompressed_boots_as_it_is() {
        assert_eq!(
            vmlinux(None, b"\x7fELF...", None).err(),
            Some(Kept::NotBzImage)
        );
        assert_eq!(
            vmlinux(None, &bzimage(b"BZh91AY&SY"), None).err(),
            Some(Kept::Format)
        );
        let not_elf = bzimage(&gzip(b"not a kernel"));
        assert!(matches!(
            vmlinux(None, &not_elf, None),
            Err(Kept::Corrupt(_))
        ));
        let corrupt = bzimage(b"\x1f\x8b\x08\x00garbage");
        assert!(matches!(
            vmlinux(None, &corrupt, None),
            Err(Kept::Corrupt(_))
        ));
        // A header that points outside the image.
        let mut lying = bzimage(b"\x1f\x8b");
        lying[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(payload(&lying), None);
        assert_eq!(vmlinux(None, &lying, None).err(), Some(Kept::NotBzImage));
    }

    #[test]
    fn the_hosts_kernel_decompresses_to_its_elf() {
        let Some(path) = std::fs::read_dir("/boot").ok().and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().contains("vmlinuz-"))
        }) else {
            eprintln!("SKIPPED the_hosts_kernel_decompresses_to_its_elf: no /boot/vmlinuz-*");
            return;
        };
        let Ok(image) = std::fs::read(&path) else {
            eprintln!("SKIPPED the_hosts_kernel_decompresses_to_its_elf: cannot read {path:?}");
            return;
        };
        match vmlinux(Some(&path), &image, None) {
            Ok(elf) => {
                let elf = contents(elf);
                assert!(elf.len() > image.len(), "{} bytes", elf.len())
            }
            Err(Kept::Xz(why)) => {
                eprintln!("SKIPPED the_hosts_kernel_decompresses_to_its_elf: {why}")
            }
            Err(other) => panic!("{}: {other:?}", path.display()),
        }
    }
}
