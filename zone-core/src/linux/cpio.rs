//! In-memory writer of cpio "newc" archives (SVR4 format, magic `070701`, no checksum), the
//! format the Linux kernel unpacks an initramfs from.
//!
//! Every entry is a 110-byte ASCII header (the magic, then thirteen 8-digit hex fields), the
//! NUL-terminated name padded to a multiple of 4 bytes, and the data padded to a multiple of 4
//! bytes. The archive ends with an entry named `TRAILER!!!`. Entries are written in a
//! reproducible way: uid and gid 0, mtime 0, inode numbers counting up from 1.

use std::collections::HashMap;

/// File-type bits of a directory.
pub(crate) const S_IFDIR: u32 = 0o040_000;
/// File-type bits of a regular file.
pub(crate) const S_IFREG: u32 = 0o100_000;
/// File-type bits of a symbolic link.
pub(crate) const S_IFLNK: u32 = 0o120_000;
/// File-type bits of a character device.
pub(crate) const S_IFCHR: u32 = 0o020_000;
/// Mask of the file-type bits of a mode.
pub(crate) const S_IFMT: u32 = 0o170_000;

/// Magic of a "newc" header.
const MAGIC: &[u8; 6] = b"070701";
/// Size of a "newc" header.
#[cfg(test)]
const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";
/// The kernel's `PATH_MAX`: it rejects longer names (NUL included) and symlink targets.
const PATH_MAX: usize = 4096;
/// Permission bits a mode may carry (setuid, setgid, sticky, rwx for all).
const PERMISSION_BITS: u32 = 0o7777;
/// Mode of the parent directories the writer adds on its own.
const IMPLICIT_DIR_MODE: u32 = 0o755;
/// The archive is padded to a multiple of this many bytes.
const BLOCK: usize = 512;

/// Why an entry cannot be added to a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The path is not a clean relative path.
    #[error(
        "invalid initramfs path {path:?}: {reason} (paths are relative to the guest root, \
         e.g. \"bin/sh\", with no empty, \".\" or \"..\" components)"
    )]
    InvalidPath {
        /// The offending path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The target of a symlink is empty, too long or contains a NUL byte.
    #[error("invalid target {target:?} for the symlink {path:?}: {reason}")]
    InvalidSymlinkTarget {
        /// The symlink's path.
        path: String,
        /// The offending target.
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path is already in the archive.
    #[error(
        "{path:?} is already in the initramfs (either added before or created as the parent \
         directory of an earlier entry); add every path once, directories before their contents"
    )]
    Duplicate {
        /// The path added twice.
        path: String,
    },
    /// A parent of the path is in the archive but is not a directory.
    #[error("cannot add {path:?} to the initramfs: its parent {parent:?} is not a directory")]
    ParentNotDirectory {
        /// The path being added.
        path: String,
        /// The parent that is a file, symlink or device.
        parent: String,
    },
    /// The mode has bits beyond the permission bits.
    #[error(
        "invalid mode {mode:#o} for {path:?}: give only permission bits (at most 0o7777); \
         the file type is set by the kind of entry"
    )]
    InvalidMode {
        /// The path being added.
        path: String,
        /// The offending mode.
        mode: u32,
    },
    /// The data does not fit the 32-bit size field of a "newc" header.
    #[error("{path:?} is {len} bytes, more than the 4 GiB - 1 a cpio newc entry can hold")]
    TooLarge {
        /// The path being added.
        path: String,
        /// Length of its data.
        len: usize,
    },
    /// The 32-bit inode numbers are exhausted.
    #[error("too many entries in one cpio archive (inode numbers exhausted)")]
    TooManyEntries,
}

/// Builds a cpio "newc" archive in memory.
///
/// Paths are relative (`init`, `lib/modules/x.ko`); missing parent directories are added with
/// mode 0o755 before the entry that needs them. Each path may be added once. An entry that fails
/// to be added leaves the archive unchanged.
#[derive(Debug, Default)]
pub(crate) struct CpioWriter<B: ArchiveBuf = Vec<u8>> {
    /// The archive so far, without the trailer.
    buf: B,
    /// Every path in the archive, and whether it is a directory.
    paths: HashMap<String, bool>,
    /// Inode number of the last entry (0 before the first).
    last_ino: u32,
}

/// Where a [`CpioWriter`] puts its archive: a `Vec`, or a buffer outside the heap
/// ([`super::blob::Scratch`]).
pub(crate) trait ArchiveBuf {
    /// Appends `bytes`.
    fn extend_from_slice(&mut self, bytes: &[u8]);
    /// Bytes so far.
    fn len(&self) -> usize;
}

impl ArchiveBuf for Vec<u8> {
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }

    fn len(&self) -> usize {
        Vec::len(self)
    }
}

impl ArchiveBuf for super::blob::Scratch {
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        super::blob::Scratch::extend_from_slice(self, bytes);
    }

    fn len(&self) -> usize {
        super::blob::Scratch::len(self)
    }
}

#[cfg(test)]
impl CpioWriter {
    /// An empty archive.
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

impl<B: ArchiveBuf> CpioWriter<B> {
    /// An empty archive written into `buf` (which must be empty).
    pub(crate) fn with_buffer(buf: B) -> Self {
        Self {
            buf,
            paths: HashMap::new(),
            last_ino: 0,
        }
    }

    /// Adds a directory with permission bits `mode` (e.g. `("dev", 0o755)`).
    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        self.add(path, S_IFDIR, mode, &[], (0, 0))
    }

    /// Adds a regular file with permission bits `mode` holding `data`.
    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), CpioError> {
        self.add(path, S_IFREG, mode, data, (0, 0))
    }

    /// Adds a symbolic link to `target` (which may be absolute; it is not checked to exist).
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let reason = if target.is_empty() {
            Some("it is empty")
        } else if target.len() >= PATH_MAX {
            Some("it is longer than 4095 bytes")
        } else if target.contains('\0') {
            Some("it contains a NUL byte")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(CpioError::InvalidSymlinkTarget {
                path: path.to_owned(),
                target: target.to_owned(),
                reason,
            });
        }
        self.add(path, S_IFLNK, 0o777, target.as_bytes(), (0, 0))
    }

    /// Adds a character device node `major:minor` with permission bits `mode`.
    pub(crate) fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(path, S_IFCHR, mode, &[], (major, minor))
    }

    /// Bytes written so far (the trailer and final padding are not counted).
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Ends the archive with the trailer entry and pads it to a multiple of 512 bytes.
    pub(crate) fn finish(mut self) -> B {
        let header = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdev: (0, 0),
        };
        push_entry(&mut self.buf, &header, TRAILER, &[]);
        let padded = self.buf.len().next_multiple_of(BLOCK);
        pad_to(&mut self.buf, padded);
        self.buf
    }

    /// Validates and appends one entry, after any parent directory it lacks.
    fn add(
        &mut self,
        path: &str,
        file_type: u32,
        mode: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> Result<(), CpioError> {
        validate_path(path)?;
        if mode & !PERMISSION_BITS != 0 {
            return Err(CpioError::InvalidMode {
                path: path.to_owned(),
                mode,
            });
        }
        let filesize = data_len(path, data.len())?;
        if self.paths.contains_key(path) {
            return Err(CpioError::Duplicate {
                path: path.to_owned(),
            });
        }
        let mut missing = Vec::new();
        for (end, _) in path.match_indices('/') {
            let parent = &path[..end];
            match self.paths.get(parent) {
                Some(true) => {}
                Some(false) => {
                    return Err(CpioError::ParentNotDirectory {
                        path: path.to_owned(),
                        parent: parent.to_owned(),
                    });
                }
                None => missing.push(parent),
            }
        }
        let needed = u32::try_from(missing.len() + 1).map_err(|_| CpioError::TooManyEntries)?;
        if self.last_ino.checked_add(needed).is_none() {
            return Err(CpioError::TooManyEntries);
        }
        for parent in missing {
            self.push(parent, S_IFDIR | IMPLICIT_DIR_MODE, 0, &[], (0, 0));
        }
        self.push(path, file_type | mode, filesize, data, rdev);
        Ok(())
    }

    /// Appends one already validated entry with the next inode number and records its path.
    fn push(&mut self, path: &str, mode: u32, filesize: u32, data: &[u8], rdev: (u32, u32)) {
        self.last_ino = self.last_ino.wrapping_add(1);
        let is_dir = mode & S_IFMT == S_IFDIR;
        let header = Header {
            ino: self.last_ino,
            mode,
            nlink: if is_dir { 2 } else { 1 },
            filesize,
            rdev,
        };
        push_entry(&mut self.buf, &header, path, data);
        self.paths.insert(path.to_owned(), is_dir);
    }
}

/// The fields of a header that vary between entries.
struct Header {
    /// Inode number.
    ino: u32,
    /// File type and permission bits.
    mode: u32,
    /// Link count.
    nlink: u32,
    /// Length of the data.
    filesize: u32,
    /// Device number of a device node.
    rdev: (u32, u32),
}

/// Appends a header, the padded name and the padded data.
fn push_entry(buf: &mut impl ArchiveBuf, header: &Header, name: &str, data: &[u8]) {
    buf.extend_from_slice(MAGIC);
    let namesize = name.len() + 1;
    let fields = [
        header.ino,
        header.mode,
        0, // uid
        0, // gid
        header.nlink,
        0, // mtime
        header.filesize,
        0, // devmajor
        0, // devminor
        header.rdev.0,
        header.rdev.1,
        // Paths are validated to be shorter than PATH_MAX, so this never saturates.
        u32::try_from(namesize).unwrap_or(u32::MAX),
        0, // check (only used by the "crc" format)
    ];
    for field in fields {
        push_hex(buf, field);
    }
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(&[0]);
    pad4(buf);
    buf.extend_from_slice(data);
    pad4(buf);
}

/// Appends `value` as 8 lowercase hex digits.
fn push_hex(buf: &mut impl ArchiveBuf, value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 8];
    for (i, shift) in (0..8).rev().enumerate() {
        hex[i] = DIGITS[((value >> (shift * 4)) & 0xf) as usize];
    }
    buf.extend_from_slice(&hex);
}

/// Pads with zeros to a multiple of 4 bytes (the archive starts aligned).
fn pad4(buf: &mut impl ArchiveBuf) {
    let padded = buf.len().next_multiple_of(4);
    pad_to(buf, padded);
}

/// Pads with zeros to `len` bytes.
fn pad_to(buf: &mut impl ArchiveBuf, len: usize) {
    const ZEROS: [u8; 512] = [0; 512];
    while buf.len() < len {
        let n = (len - buf.len()).min(ZEROS.len());
        buf.extend_from_slice(&ZEROS[..n]);
    }
}

/// The length of an entry's data as a header field.
fn data_len(path: &str, len: usize) -> Result<u32, CpioError> {
    u32::try_from(len).map_err(|_| CpioError::TooLarge {
        path: path.to_owned(),
        len,
    })
}

/// Checks that `path` is a clean relative path the kernel accepts.
fn validate_path(path: &str) -> Result<(), CpioError> {
    let reason = if path.is_empty() {
        Some("it is empty")
    } else if path.len() >= PATH_MAX {
        Some("it is longer than 4095 bytes")
    } else if path.starts_with('/') {
        Some("it is absolute")
    } else if path.contains('\0') {
        Some("it contains a NUL byte")
    } else if path == TRAILER {
        Some("it is the name that marks the end of a cpio archive")
    } else if path.split('/').any(str::is_empty) {
        Some("it has an empty component (\"//\" or a trailing \"/\")")
    } else if path.split('/').any(|c| c == "." || c == "..") {
        Some("it has a \".\" or \"..\" component")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CpioError::InvalidPath {
            path: path.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A strict "newc" parser for tests, shared with the tests of the modules that build archives.
#[cfg(test)]
pub(crate) mod testing {
    use super::{BLOCK, HEADER_LEN, MAGIC, S_IFMT, TRAILER};

    /// One parsed entry.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) struct Entry {
        /// `c_ino`.
        pub(crate) ino: u32,
        /// `c_mode`: file type and permission bits.
        pub(crate) mode: u32,
        /// `c_uid`.
        pub(crate) uid: u32,
        /// `c_gid`.
        pub(crate) gid: u32,
        /// `c_nlink`.
        pub(crate) nlink: u32,
        /// `c_mtime`.
        pub(crate) mtime: u32,
        /// `c_devmajor` and `c_devminor`.
        pub(crate) dev: (u32, u32),
        /// `c_rdevmajor` and `c_rdevminor`.
        pub(crate) rdev: (u32, u32),
        /// The name, without its NUL.
        pub(crate) name: String,
        /// The data (a symlink's target).
        pub(crate) data: Vec<u8>,
    }

    impl Entry {
        /// The file-type bits of the mode.
        pub(crate) fn file_type(&self) -> u32 {
            self.mode & S_IFMT
        }

        /// The permission bits of the mode.
        pub(crate) fn permissions(&self) -> u32 {
            self.mode & !S_IFMT
        }
    }

    /// Parses a complete archive, panicking on anything a strict reader would reject: bad
    /// magic, non-hex fields, misalignment, non-zero padding, a missing trailer, trailing
    /// garbage, a length that is not a multiple of 512, or an entry before its parent directory.
    pub(crate) fn parse(archive: &[u8]) -> Vec<Entry> {
        assert_eq!(archive.len() % BLOCK, 0, "archive not padded to 512 bytes");
        let mut entries: Vec<Entry> = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "header at {pos} not 4-byte aligned");
            let header = archive
                .get(pos..pos + HEADER_LEN)
                .unwrap_or_else(|| panic!("truncated header at {pos}"));
            assert_eq!(&header[..6], MAGIC, "bad magic at {pos}");
            let field = |i: usize| {
                let digits = &header[6 + 8 * i..14 + 8 * i];
                let text = std::str::from_utf8(digits).unwrap();
                assert!(
                    text.bytes().all(|b| b.is_ascii_hexdigit()),
                    "field {text:?}"
                );
                u32::from_str_radix(text, 16).unwrap()
            };
            let filesize = field(6) as usize;
            let namesize = field(11) as usize;
            assert_eq!(field(12), 0, "check field must be 0 in newc");
            assert!(namesize >= 1, "namesize must count the NUL");
            let name_start = pos + HEADER_LEN;
            let name_bytes = &archive[name_start..name_start + namesize];
            assert_eq!(name_bytes[namesize - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&name_bytes[..namesize - 1]).unwrap();
            assert!(!name.contains('\0'), "NUL inside name {name:?}");
            let data_start = (name_start + namesize).next_multiple_of(4);
            assert_zero(&archive[name_start + namesize..data_start], "name padding");
            let data_end = data_start + filesize;
            let data = archive[data_start..data_end].to_vec();
            let next = data_end.next_multiple_of(4);
            assert_zero(&archive[data_end..next], "data padding");
            let entry = Entry {
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                dev: (field(7), field(8)),
                rdev: (field(9), field(10)),
                name: name.to_owned(),
                data,
            };
            pos = next;
            if entry.name == TRAILER {
                assert_eq!(entry.data, b"", "trailer with data");
                break;
            }
            if let Some((parent, _)) = entry.name.rsplit_once('/') {
                assert!(
                    entries
                        .iter()
                        .any(|e| e.name == parent && e.file_type() == super::S_IFDIR),
                    "{} comes before its parent directory",
                    entry.name
                );
            }
            entries.push(entry);
        }
        assert_zero(&archive[pos..], "padding after the trailer");
        entries
    }

    /// Asserts that `bytes` are all zero.
    fn assert_zero(bytes: &[u8], what: &str) {
        assert!(bytes.iter().all(|&b| b == 0), "non-zero {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Entry, parse};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The entry named `name`.
    fn find<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} not in the archive"))
    }

    /// The names of the entries, in order.
    fn names(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn empty_archive_is_one_trailer_block() {
        let archive = CpioWriter::new().finish();
        assert_eq!(archive.len(), 512);
        assert!(archive.starts_with(b"070701"));
        assert!(parse(&archive).is_empty());
    }

    #[test]
    fn header_bytes_match_the_newc_layout() {
        let mut w = CpioWriter::new();
        w.file("a", 0o644, b"hi").unwrap();
        assert_eq!(w.len(), 116);
        let archive = w.finish();
        let expected_header = concat!(
            "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
            "00000002", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
        );
        assert_eq!(&archive[..110], expected_header.as_bytes());
        assert_eq!(&archive[110..116], b"a\0hi\0\0");
        assert!(archive[116..].starts_with(b"070701"));
        assert_eq!(&archive[116 + 110..116 + 121], b"TRAILER!!!\0");
    }

    #[test]
    fn entries_round_trip_with_their_fields() {
        let mut w = CpioWriter::new();
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"\x7fELF agent").unwrap();
        w.symlink("bin", "usr/bin").unwrap();
        w.dir("tmp", 0o1777).unwrap();
        let entries = parse(&w.finish());
        assert_eq!(
            names(&entries),
            ["dev", "dev/console", "init", "bin", "tmp"]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!((e.uid, e.gid, e.mtime, e.dev), (0, 0, 0, (0, 0)));
        }
        let dev = find(&entries, "dev");
        assert_eq!((dev.mode, dev.nlink, dev.data.len()), (0o040_755, 2, 0));
        let console = find(&entries, "dev/console");
        assert_eq!((console.mode, console.nlink), (0o020_600, 1));
        assert_eq!((console.rdev, console.data.len()), ((5, 1), 0));
        let init = find(&entries, "init");
        assert_eq!((init.mode, init.nlink), (0o100_755, 1));
        assert_eq!(init.data, b"\x7fELF agent");
        let bin = find(&entries, "bin");
        assert_eq!(
            (bin.mode, bin.nlink, bin.data.as_slice()),
            (0o120_777, 1, &b"usr/bin"[..])
        );
        assert_eq!(find(&entries, "tmp").mode, 0o041_777);
    }

    #[test]
    fn missing_parents_are_added_first() {
        let mut w = CpioWriter::new();
        w.dir("lib", 0o700).unwrap();
        w.file("lib/modules/zones/x.ko", 0o644, b"ko").unwrap();
        w.symlink("usr/bin/sh", "/bin/busybox").unwrap();
        w.file("lib/modules/zones/y.ko", 0o644, b"").unwrap();
        let entries = parse(&w.finish());
        assert_eq!(
            names(&entries),
            [
                "lib",
                "lib/modules",
                "lib/modules/zones",
                "lib/modules/zones/x.ko",
                "usr",
                "usr/bin",
                "usr/bin/sh",
                "lib/modules/zones/y.ko",
            ]
        );
        assert_eq!(find(&entries, "lib").mode, 0o040_700);
        for implicit in ["lib/modules", "lib/modules/zones", "usr", "usr/bin"] {
            let e = find(&entries, implicit);
            assert_eq!((e.mode, e.nlink), (0o040_755, 2), "{implicit}");
        }
        let inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(inos, (1..=8).collect::<Vec<u32>>());
    }

    #[test]
    fn duplicates_are_rejected() {
        let mut w = CpioWriter::new();
        w.file("etc/hosts", 0o644, b"").unwrap();
        assert!(matches!(
            w.file("etc/hosts", 0o644, b""),
            Err(CpioError::Duplicate { path }) if path == "etc/hosts"
        ));
        assert!(matches!(
            w.dir("etc", 0o755),
            Err(CpioError::Duplicate { .. })
        ));
        assert!(matches!(
            w.symlink("etc/hosts", "x"),
            Err(CpioError::Duplicate { .. })
        ));
        assert!(matches!(
            w.char_device("etc", 0o600, 1, 3),
            Err(CpioError::Duplicate { .. })
        ));
        assert_eq!(names(&parse(&w.finish())), ["etc", "etc/hosts"]);
    }

    #[test]
    fn a_file_cannot_be_a_parent() {
        let mut w = CpioWriter::new();
        w.file("init", 0o755, b"x").unwrap();
        w.symlink("bin", "usr/bin").unwrap();
        let before = w.len();
        let err = w.file("init/x", 0o644, b"").unwrap_err();
        assert!(
            matches!(&err, CpioError::ParentNotDirectory { parent, .. } if parent == "init"),
            "{err}"
        );
        assert!(matches!(
            w.file("bin/sh", 0o755, b""),
            Err(CpioError::ParentNotDirectory { .. })
        ));
        assert_eq!(w.len(), before);
    }

    #[test]
    fn invalid_paths_are_rejected() {
        let long = "a".repeat(4096);
        let bad = [
            "",
            "/init",
            "..",
            "a/../b",
            "a/..",
            ".",
            "./a",
            "a//b",
            "a/",
            "a\0b",
            "TRAILER!!!",
            long.as_str(),
        ];
        let mut w = CpioWriter::new();
        for path in bad {
            let err = w.file(path, 0o644, b"x").unwrap_err();
            assert!(
                matches!(err, CpioError::InvalidPath { .. }),
                "{path:?}: {err}"
            );
            assert!(w.dir(path, 0o755).is_err(), "{path:?}");
            assert!(w.symlink(path, "x").is_err(), "{path:?}");
            assert!(w.char_device(path, 0o600, 1, 3).is_err(), "{path:?}");
        }
        assert_eq!(w.len(), 0);
        let longest = "b".repeat(4095);
        for good in ["foo..bar", "..a", "a.", ".hidden/x", longest.as_str()] {
            w.file(good, 0o644, b"ok").unwrap();
        }
        assert_eq!(parse(&w.finish()).last().unwrap().name, longest);
    }

    #[test]
    fn modes_outside_the_permission_bits_are_rejected() {
        let mut w = CpioWriter::new();
        for mode in [0o10000, 0o100_644, 0o040_755, u32::MAX] {
            let err = w.file("f", mode, b"").unwrap_err();
            assert!(matches!(err, CpioError::InvalidMode { .. }), "{mode:#o}");
            assert!(w.dir("d", mode).is_err());
            assert!(w.char_device("c", mode, 1, 3).is_err());
        }
        w.file("f", 0o7777, b"").unwrap();
        assert_eq!(parse(&w.finish())[0].mode, 0o107_777);
    }

    #[test]
    fn invalid_symlink_targets_are_rejected() {
        let mut w = CpioWriter::new();
        let long = "t".repeat(4096);
        for target in ["", "a\0b", long.as_str()] {
            let err = w.symlink("l", target).unwrap_err();
            assert!(
                matches!(err, CpioError::InvalidSymlinkTarget { .. }),
                "{err}"
            );
        }
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn oversized_data_is_rejected() {
        assert_eq!(data_len("f", u32::MAX as usize).unwrap(), u32::MAX);
        let too_big = usize::try_from(u64::from(u32::MAX) + 1);
        if let Ok(len) = too_big {
            let err = data_len("f", len).unwrap_err();
            assert!(matches!(err, CpioError::TooLarge { len: l, .. } if l == len));
        }
    }

    #[test]
    fn every_name_and_data_length_stays_aligned() {
        let mut w = CpioWriter::new();
        for name_len in 1..=9 {
            for data_len in 0..=9 {
                let name = format!("{}{}", "n".repeat(name_len), data_len);
                w.file(&name, 0o644, &vec![0xa5; data_len]).unwrap();
                assert_eq!(w.len() % 4, 0);
            }
        }
        let entries = parse(&w.finish());
        assert_eq!(entries.len(), 90);
        for e in entries {
            let data_len: usize = e.name[e.name.len() - 1..].parse().unwrap();
            assert_eq!(e.data, vec![0xa5; data_len]);
        }
    }

    #[test]
    fn gnu_cpio_lists_the_archive() {
        let cpio = std::path::Path::new("/usr/bin/cpio");
        if !cpio.exists() {
            crate::testing::skipped(format_args!(
                "gnu_cpio_lists_the_archive: cpio not installed"
            ));
            return;
        }
        let mut w = CpioWriter::new();
        w.file("init", 0o755, b"agent").unwrap();
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("lib/modules/zones/00-virtio.ko", 0o644, &[7; 1000])
            .unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        let archive = w.finish();
        let listing = run_cpio(cpio, &["-it"], &archive);
        assert_eq!(
            listing.lines().collect::<Vec<_>>(),
            [
                "init",
                "dev",
                "dev/console",
                "lib",
                "lib/modules",
                "lib/modules/zones",
                "lib/modules/zones/00-virtio.ko",
                "bin",
                "bin/sh",
            ]
        );
        let data = run_cpio(cpio, &["-i", "--to-stdout", "init"], &archive);
        assert_eq!(data, "agent");
    }

    /// Runs cpio on `archive`, checking it reports nothing but the block count on stderr.
    fn run_cpio(cpio: &std::path::Path, args: &[&str], archive: &[u8]) -> String {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(cpio)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = archive.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(output.status.success(), "cpio {args:?} failed: {stderr}");
        assert!(
            stderr.trim().ends_with("block") || stderr.trim().ends_with("blocks"),
            "cpio complained: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "cpio complained: {stderr}");
        String::from_utf8(output.stdout).unwrap()
    }

    /// A random relative path: directories named `d*`, leaves named `f*`, so no leaf is ever
    /// another path's parent.
    fn path_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec("d[a-c]{0,2}", 0..4),
            "f[a-z0-9._-]{0,12}",
        )
            .prop_map(|(dirs, leaf)| {
                let mut parts = dirs;
                parts.push(leaf);
                parts.join("/")
            })
    }

    /// What a random entry is.
    #[derive(Clone, Debug)]
    enum Kind {
        /// A regular file with its data.
        File(Vec<u8>),
        /// A symlink with its target.
        Symlink(String),
        /// A character device.
        Char(u32, u32),
    }

    /// A random entry kind, mostly files.
    fn kind_strategy() -> impl Strategy<Value = Kind> {
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..600).prop_map(Kind::File),
            1 => "[a-z/._-]{1,40}".prop_map(Kind::Symlink),
            1 => (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Kind::Char(a, b)),
        ]
    }

    proptest! {
        #[test]
        fn random_entry_sets_round_trip(
            files in prop::collection::btree_map(
                path_strategy(),
                (0u32..=0o7777, kind_strategy()),
                0..40,
            )
        ) {
            let mut w = CpioWriter::new();
            for (path, (mode, kind)) in &files {
                match kind {
                    Kind::File(data) => w.file(path, *mode, data).unwrap(),
                    Kind::Symlink(target) => w.symlink(path, target).unwrap(),
                    Kind::Char(major, minor) => w.char_device(path, *mode, *major, *minor).unwrap(),
                }
            }
            let entries = parse(&w.finish());
            let mut seen = BTreeMap::new();
            for (i, e) in entries.iter().enumerate() {
                prop_assert_eq!(e.ino as usize, i + 1);
                prop_assert!(seen.insert(e.name.clone(), e).is_none(), "duplicate {}", e.name);
            }
            for (path, (mode, kind)) in &files {
                let e = seen.remove(path.as_str()).unwrap();
                match kind {
                    Kind::File(data) => {
                        prop_assert_eq!(e.mode, S_IFREG | mode);
                        prop_assert_eq!(&e.data, data);
                    }
                    Kind::Symlink(target) => {
                        prop_assert_eq!(e.mode, S_IFLNK | 0o777);
                        prop_assert_eq!(&e.data, target.as_bytes());
                    }
                    Kind::Char(major, minor) => {
                        prop_assert_eq!(e.mode, S_IFCHR | mode);
                        prop_assert_eq!(e.rdev, (*major, *minor));
                        prop_assert!(e.data.is_empty());
                    }
                }
            }
            // What is left are the implicit parent directories, exactly the parents needed.
            let parents: std::collections::BTreeSet<String> = files
                .keys()
                .flat_map(|p| p.match_indices('/').map(|(i, _)| p[..i].to_owned()))
                .collect();
            prop_assert_eq!(seen.keys().cloned().collect::<std::collections::BTreeSet<_>>(), parents);
            for e in seen.values() {
                prop_assert_eq!((e.mode, e.nlink), (S_IFDIR | 0o755, 2));
            }
        }

        #[test]
        fn arbitrary_paths_never_panic(path in "[a-z./\\x00]{0,12}", mode in any::<u32>()) {
            let mut w = CpioWriter::new();
            if w.file(&path, mode, b"x").is_ok() {
                prop_assert!(!path.starts_with('/') && !path.split('/').any(|c| c == ".."));
                let entries = parse(&w.finish());
                prop_assert_eq!(&entries.last().unwrap().name, &path);
            } else {
                prop_assert_eq!(w.len(), 0);
            }
        }
    }
}
