//! Filesystem images: what an image file holds (by its magic numbers), and a host directory
//! turned into an image once, cached by what the directory holds.
//!
//! A directory becomes an **ext4** image made by `mke2fs -d` (e2fsprogs). Why ext4 and not
//! erofs: `mke2fs -d` is on nearly every Linux host (e2fsprogs is essential on Debian and in
//! most distributions' base), and ext4 is in every distribution kernel; `mkfs.erofs` would make
//! smaller images but is rarely installed. The image has no journal (it is attached read-only).
//! An image that a user already has may be ext4, erofs or squashfs.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A filesystem an image can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    /// ext2/3/4 (mounted as ext4).
    Ext4,
    /// EROFS.
    Erofs,
    /// SquashFS.
    Squashfs,
}

impl FsType {
    /// The kernel's name for it (filesystem type and module name alike).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Erofs => "erofs",
            Self::Squashfs => "squashfs",
        }
    }
}

/// The filesystem in the first bytes of an image (at least 1088 bytes), if it is one we mount.
pub(crate) fn detect(head: &[u8]) -> Option<FsType> {
    let at = |offset: usize, len: usize| head.get(offset..offset + len);
    if at(0, 4) == Some(b"hsqs") {
        return Some(FsType::Squashfs);
    }
    if at(1024, 4) == Some(&0xE0F5_E1E2u32.to_le_bytes()[..]) {
        return Some(FsType::Erofs);
    }
    if at(1080, 2) == Some(&0xEF53u16.to_le_bytes()[..]) {
        return Some(FsType::Ext4);
    }
    None
}

/// Reads the head of the image at `path` and detects its filesystem.
pub(crate) fn detect_file(path: &Path) -> std::io::Result<Option<FsType>> {
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)?
        .take(4096)
        .read_to_end(&mut head)?;
    Ok(detect(&head))
}

/// What a directory holds, summarized: the key its image is cached under, and the sizes that
/// the image needs.
#[derive(Debug)]
pub(crate) struct Manifest {
    /// SHA-256 over every entry's path, type, mode, owner, size, modification time and link
    /// target (not the file contents: a change to a file changes its size or time).
    pub(crate) key: String,
    /// Bytes of regular files, each rounded up to 4 KiB blocks.
    pub(crate) bytes: u64,
    /// Number of entries.
    pub(crate) entries: u64,
}

/// Walks `dir` (without following links) and summarizes it. Entries are visited in name order
/// so that the key does not depend on the directory order.
pub(crate) fn manifest(dir: &Path) -> std::io::Result<Manifest> {
    let mut hash = Sha256::new();
    hash.update(b"zones-rootfs-dir-v1\0");
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut children: Vec<_> = std::fs::read_dir(dir.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        children.sort();
        for name in children.into_iter().rev() {
            let child = rel.join(&name);
            let meta = std::fs::symlink_metadata(dir.join(&child))?;
            entries += 1;
            hash.update(child.as_os_str().as_encoded_bytes());
            hash.update([0]);
            for n in [
                u64::from(meta.mode()),
                u64::from(meta.uid()),
                u64::from(meta.gid()),
                meta.size(),
                meta.mtime() as u64,
                meta.mtime_nsec() as u64,
                meta.rdev(),
            ] {
                hash.update(n.to_le_bytes());
            }
            if meta.file_type().is_symlink() {
                hash.update(
                    std::fs::read_link(dir.join(&child))?
                        .as_os_str()
                        .as_encoded_bytes(),
                );
            } else if meta.is_file() {
                bytes += meta.size().div_ceil(4096) * 4096;
            } else if meta.is_dir() {
                stack.push(child);
            }
            hash.update([0xff]);
        }
    }
    let digest = hash.finalize();
    Ok(Manifest {
        key: digest.iter().take(16).map(|b| format!("{b:02x}")).collect(),
        bytes,
        entries,
    })
}

/// Why `mke2fs` could not make the image.
#[derive(Debug, thiserror::Error)]
pub enum MkfsError {
    /// mke2fs is not installed.
    #[error("`mke2fs` is not installed: install e2fsprogs (Debian: apt-get install e2fsprogs)")]
    Missing,
    /// mke2fs failed.
    #[error("`mke2fs -d` failed ({status}): {stderr}")]
    Failed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// The image file could not be written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Makes an ext4 image of `dir` at `out` (replacing it), sized for `manifest` with room for
/// metadata. Written to a temporary name first and renamed, so a cached image is never half
/// written.
pub(crate) fn mkfs_ext4(dir: &Path, manifest: &Manifest, out: &Path) -> Result<(), MkfsError> {
    let inodes = manifest.entries + manifest.entries / 4 + 1024;
    // Data, one block per entry for directories and inode slack, 20 % and 16 MiB of room.
    let bytes = (manifest.bytes + manifest.entries * 4096) * 6 / 5 + (16 << 20);
    let kib = bytes.div_ceil(1024);
    let tmp = out.with_extension(format!("tmp-{}-{}", std::process::id(), super::unique()));
    let _ = std::fs::remove_file(&tmp);
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096"])
        .args(["-O", "^has_journal,^metadata_csum"])
        .args(["-N", &inodes.to_string(), "-L", "zones-rootfs", "-d"])
        .arg(dir)
        .arg(&tmp)
        .arg(format!("{kib}k"));
    if let Err(e) = run(cmd) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Formats a fresh, sparse ext4 scratch disk of `bytes` at `path` (replacing what was there).
pub(crate) fn mkfs_scratch(path: &Path, bytes: u64) -> Result<(), MkfsError> {
    let file = std::fs::File::create(path)?;
    file.set_len(bytes)?;
    drop(file);
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4", "-O", "^metadata_csum"])
        .args(["-L", "zones-scratch"])
        .arg(path);
    run(cmd)
}

/// Runs a `mke2fs` command to its end.
fn run(mut cmd: Command) -> Result<(), MkfsError> {
    match cmd.stdin(std::process::Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(MkfsError::Failed {
            status: o.status,
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MkfsError::Missing),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        let mut head = vec![0u8; 2048];
        assert_eq!(detect(&head), None);
        head[1080..1082].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(detect(&head), Some(FsType::Ext4));
        let mut head = vec![0u8; 2048];
        head[1024..1028].copy_from_slice(&[0xe2, 0xe1, 0xf5, 0xe0]);
        assert_eq!(detect(&head), Some(FsType::Erofs));
        let mut head = vec![0u8; 2048];
        head[..4].copy_from_slice(b"hsqs");
        assert_eq!(detect(&head), Some(FsType::Squashfs));
        assert_eq!(detect(b"hs"), None, "short heads are no image");
    }

    #[test]
    fn the_key_follows_what_the_directory_holds() {
        let dir = std::env::temp_dir().join(format!("zones-manifest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), b"1234").unwrap();
        std::os::unix::fs::symlink("b/f", dir.join("a/l")).unwrap();
        let one = manifest(&dir).unwrap();
        assert_eq!(one.entries, 4);
        assert_eq!(one.bytes, 4096);
        assert_eq!(manifest(&dir).unwrap().key, one.key, "stable");
        std::fs::write(dir.join("a/b/f"), b"12345").unwrap();
        let two = manifest(&dir).unwrap();
        assert_ne!(two.key, one.key, "a changed file changes the key");
        std::fs::remove_file(dir.join("a/l")).unwrap();
        std::os::unix::fs::symlink("b/g", dir.join("a/l")).unwrap();
        assert_ne!(manifest(&dir).unwrap().key, two.key, "a changed link too");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// mke2fs makes an image of a directory that reads back as ext4.
    #[test]
    fn a_directory_becomes_an_ext4_image() {
        let dir = std::env::temp_dir().join(format!("zones-mkfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tree/etc")).unwrap();
        std::fs::write(dir.join("tree/etc/hostname"), b"zone\n").unwrap();
        let m = manifest(&dir.join("tree")).unwrap();
        let out = dir.join("image.ext4");
        match mkfs_ext4(&dir.join("tree"), &m, &out) {
            Err(MkfsError::Missing) => {
                crate::testing::skipped(format_args!(
                    "a_directory_becomes_an_ext4_image: no mke2fs"
                ));
            }
            other => {
                other.unwrap();
                assert_eq!(detect_file(&out).unwrap(), Some(FsType::Ext4));
                let debugfs = Command::new("debugfs")
                    .args(["-R", "cat /etc/hostname"])
                    .arg(&out)
                    .output();
                if let Ok(o) = debugfs {
                    assert_eq!(String::from_utf8_lossy(&o.stdout), "zone\n");
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
