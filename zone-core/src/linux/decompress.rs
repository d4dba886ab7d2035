//! Compressed kernel modules (`.ko.xz`: Debian 13 and bookworm-backports, `.ko.zst`: Ubuntu,
//! `.ko.gz`), decompressed on the host before they go into the initramfs.
//!
//! Why on the host rather than handing the compressed file to the kernel
//! (`finit_module(MODULE_INIT_COMPRESSED_FILE)`): it works for every kernel, with or without
//! `CONFIG_MODULE_DECOMPRESS`, and for any of the three formats whatever the kernel was built
//! to accept. The decoders are pure Rust (lzma-rs, ruzstd, flate2 on miniz_oxide), so no C
//! decompressor runs on module files in the embedding process, and every output is bounded.
//! Decompressed modules are kept in a small process-wide cache keyed by path, size and
//! modification time, so a second zone from the same kernel pays nothing.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// How a module file is compressed, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    /// `.ko`
    None,
    /// `.ko.xz`
    Xz,
    /// `.ko.zst`
    Zstd,
    /// `.ko.gz`
    Gzip,
}

impl Compression {
    /// The compression of the module at `path` (by suffix).
    pub(crate) fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("xz") => Self::Xz,
            Some("zst") => Self::Zstd,
            Some("gz") => Self::Gzip,
            _ => Self::None,
        }
    }

    /// The format's name, for errors.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
        }
    }
}

/// Why a compressed module could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// The stream is corrupt or not in the format its name says.
    #[error("not a valid {format} stream: {reason}")]
    Corrupt {
        /// The format its suffix names.
        format: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The decompressed module would exceed the bound.
    #[error("it decompresses to more than {limit} bytes")]
    TooLarge {
        /// The bound in bytes.
        limit: usize,
    },
}

/// Decompresses `data` (compressed as `kind`) into at most `limit` bytes.
pub(crate) fn decompress(
    kind: Compression,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let corrupt = |reason: String| DecompressError::Corrupt {
        format: kind.name(),
        reason,
    };
    let mut out = Bounded {
        buf: Vec::new(),
        limit,
        over: false,
    };
    let result = match kind {
        Compression::None => out.write_all(data).map_err(|e| e.to_string()),
        Compression::Xz => {
            lzma_rs::xz_decompress(&mut &data[..], &mut out).map_err(|e| e.to_string())
        }
        Compression::Zstd => match ruzstd::decoding::StreamingDecoder::new(&mut &data[..]) {
            Ok(mut decoder) => copy(&mut decoder, &mut out),
            Err(e) => Err(e.to_string()),
        },
        Compression::Gzip => copy(&mut flate2::read::GzDecoder::new(data), &mut out),
    };
    if out.over {
        return Err(DecompressError::TooLarge { limit });
    }
    result.map_err(corrupt)?;
    Ok(out.buf)
}

/// Copies `from` into `to`, keeping the error's text.
fn copy(from: &mut impl Read, to: &mut Bounded) -> Result<(), String> {
    std::io::copy(from, to).map(drop).map_err(|e| e.to_string())
}

/// A `Vec` writer that refuses to grow past `limit` (and remembers that it refused).
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() > self.limit.saturating_sub(self.buf.len()) {
            self.over = true;
            return Err(std::io::Error::other("output bound reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Largest total of decompressed modules the cache keeps.
const CACHE_BYTES: usize = 64 << 20;

/// Which file a cached module came from: its path, size and modification time.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

/// Decompressed modules, by file.
#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Arc<[u8]>>,
    bytes: usize,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// The cache key of `path`, or `None` when its metadata cannot be read (then it is not cached).
fn key(path: &Path) -> Option<Key> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Key {
        path: path.to_owned(),
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// The decompressed module at `path` if the cache has it.
pub(crate) fn cached(path: &Path) -> Option<Arc<[u8]>> {
    let key = key(path)?;
    let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.as_ref()?.entries.get(&key).cloned()
}

/// Remembers the decompressed module of `path` (dropping the whole cache when it would exceed
/// [`CACHE_BYTES`]: kernels change rarely, so this stays simple).
pub(crate) fn remember(path: &Path, data: Arc<[u8]>) {
    let Some(key) = key(path) else { return };
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(Cache::default);
    if cache.bytes.saturating_add(data.len()) > CACHE_BYTES {
        cache.entries.clear();
        cache.bytes = 0;
    }
    if data.len() <= CACHE_BYTES {
        cache.bytes += data.len();
        if let Some(old) = cache.entries.insert(key, data) {
            cache.bytes -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module-like payload: the text that `testdata/payload.xz` holds (made with
    /// `xz -9 --check=crc32`, as kmod's install scripts compress modules).
    fn payload() -> Vec<u8> {
        (0..2000u32)
            .map(|i| format!("module text line {i} {}\n", i * i % 977))
            .collect::<String>()
            .into_bytes()
    }

    /// `payload()` compressed by xz(1).
    const PAYLOAD_XZ: &[u8] = include_bytes!("testdata/payload.xz");
    /// 4 MiB of zeros compressed by xz(1): 740 bytes.
    const ZEROS_XZ: &[u8] = include_bytes!("testdata/zeros-4m.xz");

    fn xz(data: &[u8]) -> Vec<u8> {
        if data == payload() {
            PAYLOAD_XZ.to_vec()
        } else {
            assert!(data.iter().all(|&b| b == 0) && data.len() == 4 << 20);
            ZEROS_XZ.to_vec()
        }
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zst(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn kinds_come_from_the_suffix() {
        for (name, kind) in [
            ("a/virtio_mmio.ko", Compression::None),
            ("a/virtio_mmio.ko.xz", Compression::Xz),
            ("a/virtio_mmio.ko.zst", Compression::Zstd),
            ("a/virtio_mmio.ko.gz", Compression::Gzip),
        ] {
            assert_eq!(Compression::of(Path::new(name)), kind, "{name}");
        }
    }

    #[test]
    fn every_format_round_trips() {
        let data = payload();
        for (kind, packed) in [
            (Compression::Xz, xz(&data)),
            (Compression::Zstd, zst(&data)),
            (Compression::Gzip, gz(&data)),
            (Compression::None, data.clone()),
        ] {
            let out = decompress(kind, &packed, 1 << 20).unwrap();
            assert_eq!(out, data, "{kind:?}");
        }
    }

    #[test]
    fn output_is_bounded() {
        let bomb = vec![0u8; 4 << 20];
        for (kind, packed) in [
            (Compression::Xz, xz(&bomb)),
            (Compression::Zstd, zst(&bomb)),
            (Compression::Gzip, gz(&bomb)),
        ] {
            assert!(packed.len() < bomb.len() / 50, "{kind:?} compresses");
            let err = decompress(kind, &packed, 1 << 20).unwrap_err();
            assert!(
                matches!(err, DecompressError::TooLarge { limit } if limit == 1 << 20),
                "{kind:?}: {err}"
            );
        }
    }

    #[test]
    fn corrupt_and_mislabelled_streams_are_errors() {
        let data = payload();
        let mut bad = xz(&data);
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        for (kind, bytes) in [
            (Compression::Xz, bad),
            (Compression::Xz, gz(&data)),
            (Compression::Zstd, xz(&data)),
            (Compression::Gzip, zst(&data)),
            (Compression::Zstd, Vec::new()),
            (Compression::Gzip, b"\x1f\x8b".to_vec()),
        ] {
            match decompress(kind, &bytes, 1 << 20) {
                Err(DecompressError::Corrupt { format, .. }) => assert_eq!(format, kind.name()),
                other => panic!("{kind:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_cache_follows_the_file() {
        let dir = std::env::temp_dir().join(format!("zones-decompress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.ko.xz");
        std::fs::write(&path, b"one").unwrap();
        assert!(cached(&path).is_none());
        remember(&path, Arc::from(&b"decompressed"[..]));
        assert_eq!(cached(&path).as_deref(), Some(&b"decompressed"[..]));
        // A different size (a new kernel build in place) is a different key.
        std::fs::write(&path, b"changed").unwrap();
        assert!(cached(&path).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
