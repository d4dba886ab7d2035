//! Boot files read straight into guest memory, by a few threads at once.
//!
//! Loading the cached Debian vmlinux (41.5 MB) into a fresh zone took 290-770 ms of the build in
//! the lab: the host kernel faults each page of guest memory in (zeroing it), then copies the
//! file's bytes into it, and both run on the reading thread's CPU. The work splits cleanly: the
//! file's bytes go to 2-MiB-aligned pieces of guest memory (so that no huge page is faulted by
//! two threads), each read with `pread` at its own offset, claimed one after the other from a
//! shared counter by the building thread and up to [`MAX_THREADS`]` - 1` helpers.
//!
//! Every helper installs its own seccomp filter first (the helper list plus `pread64`), as every
//! thread zones starts does. A helper that cannot be started leaves its share to the others; a
//! helper whose filter cannot be installed reads nothing and fails the load.

use crate::seccomp::ThreadFilter;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// What to read: `len` bytes at `offset` of the file into guest memory at `guest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) guest: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// Threads that read at most, the building thread included.
const MAX_THREADS: usize = 4;
/// The unit of work: guest memory is split at multiples of this (a huge page).
const CHUNK: u64 = 2 << 20;

/// Who reads: how many threads, and the filter each helper thread installs first.
pub(crate) struct Readers<'a> {
    threads: usize,
    filter: &'a (dyn Fn() -> ThreadFilter + Sync),
}

impl<'a> Readers<'a> {
    /// As many threads as the host has CPUs for this process, at most [`MAX_THREADS`].
    pub(crate) fn for_host(filter: &'a (dyn Fn() -> ThreadFilter + Sync)) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cpus, filter)
    }

    /// `threads` threads (1 to [`MAX_THREADS`]), the calling one included.
    pub(crate) fn new(threads: usize, filter: &'a (dyn Fn() -> ThreadFilter + Sync)) -> Self {
        Self {
            threads: threads.clamp(1, MAX_THREADS),
            filter,
        }
    }
}

/// `pieces` cut at every [`CHUNK`] boundary of guest memory, in order.
fn chunks(pieces: &[Piece]) -> Vec<Piece> {
    let mut out = Vec::new();
    for p in pieces {
        let (mut guest, mut offset, end) = (p.guest, p.offset, p.guest.saturating_add(p.len));
        while guest < end {
            let next = (guest / CHUNK)
                .saturating_add(1)
                .saturating_mul(CHUNK)
                .min(end);
            out.push(Piece {
                guest,
                offset,
                len: next - guest,
            });
            offset = offset.saturating_add(next - guest);
            guest = next;
        }
    }
    out
}

/// Reads every piece of `file` into `mem`. On an error (a piece outside guest memory, a read
/// error, the file shorter than a piece) the first error is returned once every thread stopped;
/// guest memory then holds part of the pieces.
pub(crate) fn read(
    file: &File,
    mem: &GuestMemoryMmap,
    pieces: &[Piece],
    readers: &Readers<'_>,
) -> std::io::Result<()> {
    let chunks = chunks(pieces);
    let helpers = readers.threads.min(chunks.len()).saturating_sub(1);
    let work = Work {
        file,
        mem,
        chunks: &chunks,
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    std::thread::scope(|scope| {
        for _ in 0..helpers {
            let filter = (readers.filter)();
            let work = &work;
            let started = std::thread::Builder::new()
                .name("zones-boot-read".into())
                .spawn_scoped(scope, move || match crate::seccomp::apply(filter) {
                    Ok(()) => work.run(),
                    Err(e) => work.fail(std::io::Error::other(e)),
                });
            // No thread: the others take its share.
            if started.is_err() {
                break;
            }
        }
        work.run();
    });
    // A reader that panicked has made `scope` panic already: the lock is never poisoned here.
    match work
        .error
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// The pieces shared by the reading threads.
struct Work<'a> {
    file: &'a File,
    mem: &'a GuestMemoryMmap,
    chunks: &'a [Piece],
    next: AtomicUsize,
    stop: AtomicBool,
    error: Mutex<Option<std::io::Error>>,
}

impl Work<'_> {
    /// Reads chunks until none is left or a thread failed.
    fn run(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let Some(chunk) = self.chunks.get(self.next.fetch_add(1, Ordering::Relaxed)) else {
                return;
            };
            if let Err(e) = self.read_chunk(chunk) {
                return self.fail(e);
            }
        }
    }

    /// Keeps the first error and stops every thread.
    fn fail(&self, e: std::io::Error) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut first) = self.error.lock() {
            first.get_or_insert(e);
        }
    }

    fn read_chunk(&self, chunk: &Piece) -> std::io::Result<()> {
        let len = usize::try_from(chunk.len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let mut offset = chunk.offset;
        for slice in self.mem.get_slices(GuestAddress(chunk.guest), len) {
            let slice = slice.map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("guest memory at {:#x}: {e}", chunk.guest),
                )
            })?;
            pread_all(self.file, &slice, offset)?;
            offset = offset.saturating_add(slice.len() as u64);
        }
        Ok(())
    }
}

/// Fills `slice` with the file's bytes at `offset`; the file ending first is an error.
fn pread_all<B: BitmapSlice>(
    file: &File,
    slice: &VolatileSlice<'_, B>,
    offset: u64,
) -> std::io::Result<()> {
    let guard = slice.ptr_guard_mut();
    let mut done = 0usize;
    while done < slice.len() {
        let at = offset
            .checked_add(done as u64)
            .and_then(|o| i64::try_from(o).ok())
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        // SAFETY: the slice's memory (guest memory, mapped for as long as `mem` lives) is valid for
        // writes of `slice.len()` bytes from its start; this writes the `len - done` bytes past
        // `done`. The guest does not run yet, and each chunk is read by one thread only.
        let n = unsafe {
            libc::pread64(
                file.as_raw_fd(),
                guard.as_ptr().add(done).cast(),
                slice.len() - done,
                at,
            )
        };
        match n {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ends before byte {}", offset + slice.len() as u64),
                ));
            }
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => done += n as usize,
        }
    }
    slice.bitmap().mark_dirty(0, slice.len());
    Ok(())
}

/// A helper's filter in unit tests: none (they run unfiltered test threads).
#[cfg(test)]
pub(crate) fn unfiltered() -> ThreadFilter {
    ThreadFilter {
        mode: crate::seccomp::Seccomp::Off,
        kind: crate::seccomp::ThreadKind::Helper,
        extra: vec![libc::SYS_pread64],
        thread: "boot-file reader (test)".into(),
        sink: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn pieces_are_cut_at_huge_page_boundaries() {
        let m = 1 << 20;
        let got = chunks(&[
            Piece {
                guest: m,
                offset: 0x1000,
                len: 5 * m,
            },
            Piece {
                guest: 8 * m,
                offset: 0x90_0000,
                len: 100,
            },
            Piece {
                guest: 9 * m,
                offset: 0,
                len: 0,
            },
        ]);
        let want = [
            (m, 0x1000, m),
            (2 * m, 0x1000 + m, 2 * m),
            (4 * m, 0x1000 + 3 * m, 2 * m),
            (8 * m, 0x90_0000, 100),
        ]
        .map(|(guest, offset, len)| Piece { guest, offset, len });
        assert_eq!(got, want);
    }

    /// A file of `len` bytes, each byte a function of its offset.
    fn file(len: usize, tag: &str) -> (std::path::PathBuf, Vec<u8>) {
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
            .collect();
        let path =
            std::env::temp_dir().join(format!("zones-guest-read-{tag}-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    #[test]
    fn every_thread_count_reads_the_same_bytes_across_regions() {
        let (path, bytes) = file(11 << 20, "regions");
        let pieces = [
            Piece {
                guest: 0x10_0000,
                offset: 0x3000,
                len: (9 << 20) + 123,
            },
            Piece {
                guest: 14 << 20,
                offset: 0,
                len: 4096,
            },
        ];
        for threads in 1..=MAX_THREADS + 1 {
            // Two regions back to back: the piece crossing from one to the next is split there.
            let mem = GuestMemoryMmap::<()>::from_ranges(&[
                (GuestAddress(0), 7 << 20),
                (GuestAddress(7 << 20), 9 << 20),
            ])
            .unwrap();
            let f = File::open(&path).unwrap();
            read(&f, &mem, &pieces, &Readers::new(threads, &unfiltered)).unwrap();
            for p in pieces {
                let mut got = vec![0u8; p.len as usize];
                mem.read_slice(&mut got, GuestAddress(p.guest)).unwrap();
                let want = &bytes[p.offset as usize..(p.offset + p.len) as usize];
                assert!(got == want, "{threads} threads, piece {p:?}");
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_short_file_or_a_piece_outside_memory_is_an_error() {
        let (path, _) = file(3 << 20, "short");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let f = File::open(&path).unwrap();
        for threads in [1, 3] {
            let readers = Readers::new(threads, &unfiltered);
            let past_end = [Piece {
                guest: 0,
                offset: 0,
                len: (3 << 20) + 1,
            }];
            let e = read(&f, &mem, &past_end, &readers).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
            let outside = [Piece {
                guest: 15 << 20,
                offset: 0,
                len: 2 << 20,
            }];
            let e = read(&f, &mem, &outside, &readers).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        }
        std::fs::remove_file(&path).unwrap();
    }
}
