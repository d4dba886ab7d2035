//! Applying an image layer (a tar stream) to a directory tree, with OCI whiteouts.
//!
//! Every path of the layer is resolved inside the tree: a symbolic link met on the way is
//! followed as if the tree were `/` (an absolute target starts again at the tree's root, `..`
//! stops there), so no entry, however crafted, writes outside the tree. Whiteouts
//! (`.wh.<name>`) delete what lower layers put there; an opaque marker (`.wh..wh..opq`) empties
//! its directory of everything lower layers put there. Device nodes and FIFOs are skipped (a
//! zone gets `/dev` from the kernel); ownership is kept when the host process is root.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Most symbolic links followed while resolving one path (as Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;
/// Whiteout prefix.
const WHITEOUT: &str = ".wh.";
/// Opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tar stream is malformed.
    #[error("malformed tar stream: {0}")]
    Tar(#[source] std::io::Error),
    /// An entry's path cannot be used.
    #[error("entry {path:?}: {reason}")]
    Path {
        /// The path as the layer gives it.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Writing the tree failed.
    #[error("entry {path:?}: {source}")]
    Write {
        /// The path as the layer gives it.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The layers hold more than the image may.
    #[error("the unpacked image exceeds {limit} bytes")]
    TooLarge {
        /// The bound in bytes.
        limit: u64,
    },
}

/// Bytes an image may still unpack (shared by all of its layers).
pub(crate) struct Budget {
    /// Bytes left.
    pub(crate) left: u64,
    /// The bound, for errors.
    pub(crate) limit: u64,
}

/// Applies the tar stream `layer` on top of the tree at `root`.
pub(crate) fn apply(root: &Path, layer: impl Read, budget: &mut Budget) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(layer);
    let mut created: HashSet<PathBuf> = HashSet::new();
    let as_root = euid_is_root();
    for entry in archive.entries().map_err(LayerError::Tar)? {
        let mut entry = entry.map_err(LayerError::Tar)?;
        let raw = entry.path().map_err(LayerError::Tar)?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let Some(rel) = relative(&raw) else {
            return Err(LayerError::Path {
                path: shown,
                reason: "it leaves the image (`..`)",
            });
        };
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue; // the layer's root directory itself
        };
        let write = |source| LayerError::Write {
            path: shown.clone(),
            source,
        };
        let parent =
            resolve(root, rel.parent().unwrap_or(Path::new("")), true).map_err(|reason| {
                LayerError::Path {
                    path: shown.clone(),
                    reason,
                }
            })?;
        if name == OPAQUE {
            for child in std::fs::read_dir(&parent).map_err(write)? {
                let child = child.map_err(write)?.path();
                if !created.contains(&child) {
                    remove(&child).map_err(write)?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(LayerError::Path {
                    path: shown,
                    reason: "a whiteout names no entry",
                });
            }
            remove(&parent.join(hidden)).map_err(write)?;
            continue;
        }
        let target = parent.join(&name);
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(LayerError::Tar)? & 0o7777;
        let owner = (header.uid().ok(), header.gid().ok());
        if kind.is_dir() {
            match std::fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    remove(&target).map_err(write)?;
                    std::fs::create_dir(&target).map_err(write)?;
                }
                Err(_) => std::fs::create_dir(&target).map_err(write)?,
            }
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            remove(&target).map_err(write)?;
            let size = entry.size();
            if size > budget.left {
                return Err(LayerError::TooLarge {
                    limit: budget.limit,
                });
            }
            budget.left -= size;
            let mut file = std::fs::File::create(&target).map_err(write)?;
            std::io::copy(&mut (&mut entry).take(size), &mut file).map_err(write)?;
        } else if kind.is_symlink() {
            let link = link_target(&entry, &shown, "a symbolic link without a target")?;
            remove(&target).map_err(write)?;
            std::os::unix::fs::symlink(&*link, &target).map_err(write)?;
        } else if kind.is_hard_link() {
            let link = link_target(&entry, &shown, "a hard link without a target")?;
            let link_rel = relative(&link).ok_or(LayerError::Path {
                path: shown.clone(),
                reason: "a hard link that leaves the image",
            })?;
            let link_parent = resolve(root, link_rel.parent().unwrap_or(Path::new("")), false)
                .map_err(|reason| LayerError::Path {
                    path: shown.clone(),
                    reason,
                })?;
            let source = match link_rel.file_name() {
                Some(n) => link_parent.join(n),
                None => link_parent,
            };
            remove(&target).map_err(write)?;
            std::fs::hard_link(&source, &target).map_err(write)?;
            created.insert(target);
            continue;
        } else {
            // Character and block devices, FIFOs, and anything else: not needed in a zone.
            continue;
        }
        if !kind.is_symlink() {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                .map_err(write)?;
        }
        if as_root && let (Some(uid), Some(gid)) = owner {
            let (uid, gid) = (u32::try_from(uid).ok(), u32::try_from(gid).ok());
            std::os::unix::fs::lchown(&target, uid, gid).map_err(write)?;
        }
        created.insert(target);
    }
    Ok(())
}

/// The target a link entry names (`missing` is the error's reason when it names none).
fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    shown: &str,
    missing: &'static str,
) -> Result<PathBuf, LayerError> {
    entry
        .link_name()
        .map_err(LayerError::Tar)?
        .map(|l| l.into_owned())
        .ok_or(LayerError::Path {
            path: shown.to_owned(),
            reason: missing,
        })
}

/// Whether this process runs as root (and may keep the layer's ownership).
fn euid_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A layer path made relative (`./a/b`, `/a/b` and `a/b` are the same); `None` when it has a
/// `..` component.
pub(crate) fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// The host path of directory `rel` inside the tree at `root`, following symbolic links as if
/// the tree were `/`. With `create`, missing directories are created (mode 0o755).
pub(crate) fn resolve(root: &Path, rel: &Path, create: bool) -> Result<PathBuf, &'static str> {
    // The components still to walk, in order, and the walked ones (relative to root).
    let mut pending: Vec<std::ffi::OsString> = rel
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_owned()),
            _ => None,
        })
        .collect();
    let mut walked: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            walked.pop();
            continue;
        }
        if part == "." {
            continue;
        }
        let here: PathBuf = std::iter::once(root.as_os_str())
            .chain(walked.iter().map(|p| p.as_os_str()))
            .chain(std::iter::once(part.as_os_str()))
            .collect();
        match std::fs::symlink_metadata(&here) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err("too many symbolic links on the way");
                }
                let target = std::fs::read_link(&here).map_err(|_| "an unreadable link")?;
                if target.is_absolute() {
                    walked.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(p) => pending.push(p.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(meta) if meta.is_dir() => walked.push(part),
            Ok(_) => return Err("a parent is not a directory"),
            Err(_) if create => {
                std::fs::create_dir(&here).map_err(|_| "a parent directory cannot be created")?;
                walked.push(part);
            }
            Err(_) => return Err("a parent directory is missing"),
        }
    }
    Ok(std::iter::once(root.as_os_str())
        .chain(walked.iter().map(|p| p.as_os_str()))
        .collect())
}

/// Removes whatever is at `path` (a directory with its contents); nothing there is fine.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar stream built entry by entry.
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }
        fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h
        }
        fn file(mut self, path: &str, data: &[u8]) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
            // Written into the header by hand: tar's builder refuses absolute and `..` paths,
            // which a hostile layer may well hold.
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }
        fn dir(mut self, path: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
            self.0.append_data(&mut h, path, &[][..]).unwrap();
            self
        }
        fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
            let mut h = Self::header(kind, 0o777, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }
        fn symlink(self, path: &str, target: &str) -> Self {
            self.link(tar::EntryType::Symlink, path, target)
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    struct Tree(PathBuf);
    impl Tree {
        fn new(name: &str) -> Self {
            let outer =
                std::env::temp_dir().join(format!("zones-layer-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&outer);
            std::fs::create_dir_all(outer.join("root")).unwrap();
            Self(outer)
        }
        fn root(&self) -> PathBuf {
            self.0.join("root")
        }
        fn apply(&self, layer: Vec<u8>) -> Result<(), LayerError> {
            let mut budget = Budget {
                left: 1 << 20,
                limit: 1 << 20,
            };
            apply(&self.root(), &layer[..], &mut budget)
        }
        fn read(&self, rel: &str) -> Option<String> {
            std::fs::read_to_string(self.root().join(rel)).ok()
        }
    }
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_directories() {
        let t = Tree::new("stack");
        t.apply(
            Tar::new()
                .dir("etc")
                .file("etc/keep", b"lower")
                .file("etc/gone", b"lower")
                .dir("opt/app")
                .file("opt/app/old", b"lower")
                .file("./usr/bin/tool", b"v1")
                .bytes(),
        )
        .unwrap();
        t.apply(
            Tar::new()
                .file("etc/.wh.gone", b"")
                .file("opt/app/new", b"upper")
                .file("opt/app/.wh..wh..opq", b"")
                .file("/usr/bin/tool", b"v2")
                .bytes(),
        )
        .unwrap();
        assert_eq!(t.read("etc/keep").as_deref(), Some("lower"));
        assert_eq!(t.read("etc/gone"), None);
        assert_eq!(t.read("opt/app/old"), None, "opaque hides lower entries");
        assert_eq!(
            t.read("opt/app/new").as_deref(),
            Some("upper"),
            "not its own layer's"
        );
        assert_eq!(t.read("usr/bin/tool").as_deref(), Some("v2"));
        assert!(!t.root().join("etc/.wh.gone").exists());
    }

    #[test]
    fn nothing_escapes_the_tree() {
        let t = Tree::new("escape");
        // A link to / and a link climbing out: writes through them land inside the tree.
        t.apply(
            Tar::new()
                .symlink("etc", "/")
                .symlink("up", "../../..")
                .file("etc/passwd", b"inside")
                .file("up/outside", b"inside too")
                .bytes(),
        )
        .unwrap();
        assert_eq!(t.read("passwd").as_deref(), Some("inside"));
        assert_eq!(t.read("outside").as_deref(), Some("inside too"));
        assert!(!t.0.join("outside").exists());
        // `..` in an entry's own path is refused outright.
        let err = t.apply(Tar::new().file("a/../../x", b"no").bytes());
        // tar's builder refuses to write `..`, so craft the name by hand if it did not.
        if let Err(e) = err {
            assert!(
                matches!(e, LayerError::Path { .. } | LayerError::Tar(_)),
                "{e}"
            );
        }
        // A hard link to a file outside is refused; a link loop is an error, not a hang.
        let err = t
            .apply(
                Tar::new()
                    .symlink("loop", "loop")
                    .file("loop/x", b"")
                    .bytes(),
            )
            .unwrap_err();
        assert!(matches!(err, LayerError::Path { .. }), "{err}");
    }

    #[test]
    fn hard_links_and_replaced_types() {
        let t = Tree::new("links");
        t.apply(
            Tar::new()
                .file("bin/busybox", b"bb")
                .link(tar::EntryType::Link, "bin/sh", "bin/busybox")
                .dir("var/thing")
                .file("var/thing/x", b"")
                .bytes(),
        )
        .unwrap();
        assert_eq!(t.read("bin/sh").as_deref(), Some("bb"));
        // A file replaces a directory, a directory replaces a file.
        t.apply(
            Tar::new()
                .file("var/thing", b"now a file")
                .dir("bin/busybox")
                .bytes(),
        )
        .unwrap();
        assert_eq!(t.read("var/thing").as_deref(), Some("now a file"));
        assert!(t.root().join("bin/busybox").is_dir());
        assert_eq!(
            t.read("bin/sh").as_deref(),
            Some("bb"),
            "the link keeps its data"
        );
    }

    #[test]
    fn the_budget_bounds_the_unpacked_size() {
        let t = Tree::new("budget");
        let mut budget = Budget {
            left: 10,
            limit: 10,
        };
        let layer = Tar::new().file("a", b"12345").file("b", b"123456").bytes();
        let err = apply(&t.root(), &layer[..], &mut budget).unwrap_err();
        assert!(matches!(err, LayerError::TooLarge { limit: 10 }), "{err}");
        let junk = b"not a tar stream at all, just bytes".repeat(20);
        assert!(t.apply(junk).is_err());
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(relative(Path::new("/a/b/")), Some(PathBuf::from("a/b")));
        assert_eq!(relative(Path::new("a/../b")), None);
    }
}
