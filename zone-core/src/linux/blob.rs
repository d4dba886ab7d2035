//! The large buffers of a Linux zone's build (kernel image, initramfs, modules), kept out of the
//! allocator's heap.
//!
//! They live for the build only: each is copied into guest memory and dropped. From the heap
//! they would stay resident afterwards: glibc raises its mmap threshold when a large block is
//! freed, so the next large buffers come from an arena, and a thread's arena (a zone built on a
//! tokio or test thread) keeps its top memory even through `malloc_trim`. Measured in the lab,
//! that was 9-14 MiB kept per process after a zone's build, with under 200 KiB in use. A
//! [`Scratch`] is an anonymous mapping of its own that goes back to the kernel when dropped.
//! Files are read into one rather than mapped: a host file truncated while mapped would fault
//! the whole process (SIGBUS).

use std::io::Read;
use std::ops::Deref;
use std::sync::Arc;

/// Bytes for the build: shared (given by the caller), a vector, or a [`Scratch`].
pub(crate) enum Blob {
    /// Bytes the caller gave (`LinuxBoot::from_image`, `initrd` bytes).
    Shared(Arc<[u8]>),
    /// Bytes made on the heap (rare paths: a kernel decompressed without a cache).
    Owned(Vec<u8>),
    /// Bytes outside the heap.
    Scratch(Scratch),
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Shared(b) => b,
            Self::Owned(b) => b,
            Self::Scratch(b) => b.as_slice(),
        }
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({} bytes)", self.len())
    }
}

/// A kernel image or an initramfs to load: bytes, or an open file that the loader reads straight
/// into guest memory (the host-decompressed vmlinux and the generated initramfs from the cache:
/// never copied through the VMM).
pub(crate) enum Loadable {
    /// The bytes.
    Bytes(Blob),
    /// A file (an ELF vmlinux or a cpio archive), positioned anywhere (the loader seeks).
    File(std::fs::File),
}

impl Loadable {
    /// The image's first `n` bytes (fewer if it is shorter): enough to tell its format and read
    /// its headers.
    pub(crate) fn head(&self, n: usize) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Self::Bytes(b) => Ok(std::borrow::Cow::Borrowed(&b[..n.min(b.len())])),
            Self::File(_) => self.range(0, n).map(std::borrow::Cow::Owned),
        }
    }

    /// The image's `n` bytes from `offset` (fewer where it ends).
    pub(crate) fn range(&self, offset: u64, n: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        match self {
            Self::Bytes(b) => {
                let from = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                Ok(b[from..from.saturating_add(n).min(b.len())].to_vec())
            }
            Self::File(f) => {
                let mut bytes = vec![0u8; n];
                let mut got = 0;
                while got < n {
                    match f.read_at(&mut bytes[got..], offset.saturating_add(got as u64)) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                bytes.truncate(got);
                Ok(bytes)
            }
        }
    }

    /// The image's length in bytes.
    pub(crate) fn len(&self) -> Result<u64, super::boot::BootError> {
        match self {
            Self::Bytes(b) => Ok(b.len() as u64),
            Self::File(f) => f
                .metadata()
                .map(|m| m.len())
                .map_err(|e| super::boot::BootError::Load(format!("reading a boot file: {e}"))),
        }
    }
}

/// A growable byte buffer in an anonymous mapping of its own, unmapped when dropped. Its
/// address space is reserved without backing (`MAP_NORESERVE`): only the pages written become
/// resident.
pub(crate) struct Scratch {
    ptr: *mut u8,
    len: usize,
    cap: usize,
    /// A write did not fit and the mapping could not grow: the contents are incomplete.
    failed: bool,
}

// SAFETY: the mapping is owned by this value alone (no aliasing pointer exists elsewhere).
unsafe impl Send for Scratch {}
// SAFETY: shared access only reads the mapping.
unsafe impl Sync for Scratch {}

/// Granularity of a reservation.
const PAGE: usize = 4096;

impl Scratch {
    /// An empty buffer with room for `reserve` bytes before it has to grow.
    pub(crate) fn with_capacity(reserve: usize) -> std::io::Result<Self> {
        let cap = reserve.max(1).next_multiple_of(PAGE);
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len: 0,
            cap,
            failed: false,
        })
    }

    /// Reads `file` to its end, at most `limit` bytes (`Ok(None)` when it holds more).
    pub(crate) fn read_file(file: &std::fs::File, limit: usize) -> std::io::Result<Option<Self>> {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let hint = usize::try_from(size).unwrap_or(usize::MAX).min(limit);
        let mut buf = Self::with_capacity(hint.saturating_add(1))?;
        let mut reader = file.take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
        loop {
            if buf.len == buf.cap && !buf.grow(buf.cap.saturating_add(1)) {
                return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
            }
            // SAFETY: `len..cap` lies inside the mapping, which nothing else references.
            let spare =
                unsafe { std::slice::from_raw_parts_mut(buf.ptr.add(buf.len), buf.cap - buf.len) };
            match reader.read(spare) {
                Ok(0) => break,
                Ok(n) => buf.len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((buf.len <= limit).then_some(buf))
    }

    /// The bytes written so far.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is inside the live mapping and initialized (written or zero).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Appends `bytes` (growing the mapping as needed; see [`Scratch::complete`]).
    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        let Some(end) = self.len.checked_add(bytes.len()) else {
            self.failed = true;
            return;
        };
        if end > self.cap && !self.grow(end) {
            self.failed = true;
            return;
        }
        // SAFETY: `len..end` lies inside the mapping; `bytes` cannot overlap it (the mapping is
        // only reachable through `self`, borrowed mutably).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(self.len), bytes.len())
        };
        self.len = end;
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether every write fitted: `false` once the mapping could not grow.
    pub(crate) fn complete(&self) -> bool {
        !self.failed
    }

    /// Makes room for at least `needed` bytes, doubling; `false` when the mapping cannot grow.
    fn grow(&mut self, needed: usize) -> bool {
        let Some(cap) = needed
            .max(self.cap.saturating_mul(2))
            .checked_next_multiple_of(PAGE)
        else {
            return false;
        };
        // SAFETY: `ptr..ptr+cap` is this value's own mapping; MREMAP_MAYMOVE returns a new
        // address for the same pages, and the old one is no longer used.
        let moved = unsafe { libc::mremap(self.ptr.cast(), self.cap, cap, libc::MREMAP_MAYMOVE) };
        if moved == libc::MAP_FAILED {
            return false;
        }
        self.ptr = moved.cast();
        self.cap = cap;
        true
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `with_capacity` (or moved by `grow`) and is unmapped
        // once, here; no reference to it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.cap) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn grows_past_its_reservation_and_keeps_every_byte() {
        let mut buf = Scratch::with_capacity(10).unwrap();
        let mut expected = Vec::new();
        for i in 0..3000u32 {
            let chunk = i.to_le_bytes().repeat(7);
            buf.extend_from_slice(&chunk);
            expected.extend_from_slice(&chunk);
        }
        assert!(buf.complete());
        assert_eq!(buf.len(), expected.len());
        assert_eq!(buf.as_slice(), &expected[..]);
        assert_eq!(&*Blob::Scratch(buf), &expected[..]);
    }

    #[test]
    fn reads_a_file_whole_and_refuses_one_over_the_limit() {
        let path = std::env::temp_dir().join(format!("zones-blob-test-{}", std::process::id()));
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let read = |limit| Scratch::read_file(&std::fs::File::open(&path).unwrap(), limit).unwrap();
        assert_eq!(read(20_000).unwrap().as_slice(), &data[..]);
        assert!(read(19_999).is_none(), "one byte over the limit");
        std::fs::File::create(&path).unwrap();
        assert_eq!(read(5).unwrap().len(), 0, "an empty file");
        std::fs::remove_file(&path).unwrap();
    }
}
