//! The generated initramfs, cached on disk (`initramfs/` in the zones cache directory) by what
//! went into it, so a zone whose archive an earlier zone made (in this process or another) skips
//! making it: the cached file is read straight into guest memory.
//!
//! The key is the SHA-256 of: the generator (the agent binary and the archive writer's sources,
//! hashed when they were built), every module's name, path and [`identity`], where the modules'
//! signatures go ([`Signatures`]), and every extra
//! file's guest path, mode and contents (a host file by its path and identity, bytes by their
//! SHA-256, a symlink by its target). An archive with a file the caller gave as bytes is never
//! written to disk: those bytes may be a secret meant for one zone. At most [`MAX_ENTRIES`]
//! archives are kept; the least recently used go first.

use super::blob::Loadable;
use super::cache::{evict, hex_sha256, identity};
use super::initramfs::{ExtraFile, FileContents, ModuleFile, Signatures};
use std::path::{Path, PathBuf};

/// How many archives the cache keeps.
pub(crate) const MAX_ENTRIES: usize = 16;
/// Suffix of a cached archive.
const SUFFIX: &str = ".cpio";
/// What every archive the SDK writes starts with (a cpio "newc" header).
const CPIO_MAGIC: [u8; 6] = *b"070701";

/// The initramfs cache directory: `initramfs/` in the zones cache directory.
pub(crate) fn cache_dir() -> PathBuf {
    super::rootfs::default_cache_dir().join("initramfs")
}

/// The cache file of the archive `generator` makes of `modules` (their signatures placed as
/// `signatures` says) and `extra`, or `None` when it is not to be cached: a host file's metadata
/// cannot be read (the build then says why).
pub(crate) fn file_name(
    generator: &str,
    modules: &[ModuleFile],
    signatures: Signatures,
    extra: &[ExtraFile],
) -> Option<String> {
    let mut key = format!("zones-initramfs\0{generator}\0{signatures:?}\0");
    for m in modules {
        key.push_str(&format!(
            "m\0{}\0{}\0{}\0",
            m.name,
            m.path.display(),
            identity(&m.path)?
        ));
    }
    for f in extra {
        key.push_str(&format!("f\0{}\0{:o}\0", f.guest_path, f.mode));
        match &f.contents {
            FileContents::Bytes(b) => key.push_str(&format!("b\0{}\0", hex_sha256(b))),
            FileContents::HostFile(p) => {
                key.push_str(&format!("h\0{}\0{}\0", p.display(), identity(p)?));
            }
            FileContents::Symlink(target) => key.push_str(&format!("s\0{target}\0")),
        }
    }
    Some(format!("{}{SUFFIX}", hex_sha256(key.as_bytes())))
}

/// The cached archive `name` in `dir`, open, if it is one (a regular file of at most `limit`
/// bytes that starts like a cpio archive); its use renews it.
pub(crate) fn lookup(dir: &Path, name: &str, limit: u64) -> Option<Loadable> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(dir.join(name)).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > limit {
        return None;
    }
    let mut magic = [0u8; CPIO_MAGIC.len()];
    file.read_exact_at(&mut magic, 0).ok()?;
    if magic != CPIO_MAGIC {
        return None;
    }
    let _ = file.set_modified(std::time::SystemTime::now());
    Some(Loadable::File(file))
}

/// Keeps `archive` as `name` in `dir` (best effort), then trims the cache to [`MAX_ENTRIES`].
pub(crate) fn keep(dir: &Path, name: &str, archive: &[u8]) {
    if super::cache::store(&dir.join(name), archive) {
        evict(dir, SUFFIX, MAX_ENTRIES);
    }
}

/// How many module resolutions a process remembers.
const MAX_RESOLUTIONS: usize = 32;

/// [`super::initramfs::resolve_modules`], remembered for the life of the process by the module
/// index's identity (`modules.dep` and `modules.builtin`) and the names asked: a new or rewritten
/// index is read again. Parsing Debian's 527 KB `modules.dep` was most of a zone's initramfs
/// phase once the archive came from the cache. Failures are not remembered.
pub(crate) fn resolve_modules(
    modules_dir: &Path,
    wanted: &[&str],
) -> Result<Vec<ModuleFile>, super::initramfs::InitramfsError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static MEMO: OnceLock<Mutex<HashMap<String, Vec<ModuleFile>>>> = OnceLock::new();
    let index = |name: &str| identity(&modules_dir.join(name)).unwrap_or_default();
    let key = format!(
        "{}\0{}\0{}\0{}",
        modules_dir.display(),
        index("modules.dep"),
        index("modules.builtin"),
        wanted.join("\0")
    );
    let memo = MEMO.get_or_init(Mutex::default);
    if let Some(found) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(found.clone());
    }
    let resolved = super::initramfs::resolve_modules(modules_dir, wanted)?;
    let mut memo = memo.lock().unwrap_or_else(|e| e.into_inner());
    if memo.len() >= MAX_RESOLUTIONS {
        memo.clear();
    }
    memo.insert(key, resolved.clone());
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_key_follows_every_input_and_a_hit_is_the_archive() {
        let dir =
            std::env::temp_dir().join(format!("zones-initramfs-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ko = dir.join("m.ko");
        std::fs::write(&ko, b"module").unwrap();
        let modules = vec![ModuleFile {
            name: "m".into(),
            path: ko.clone(),
        }];
        let extra = |contents| {
            vec![ExtraFile {
                guest_path: "etc/x".into(),
                mode: 0o644,
                contents,
            }]
        };
        let bytes = |b: &[u8]| FileContents::Bytes(Arc::from(b));
        let detached = Signatures::Detached;
        let name = |m: &[ModuleFile], e: &[ExtraFile]| file_name("g1", m, detached, e).unwrap();
        let base = name(&modules, &extra(bytes(b"a")));
        assert_eq!(base, name(&modules, &extra(bytes(b"a"))), "stable");
        assert_ne!(base, name(&modules, &extra(bytes(b"b"))), "bytes");
        assert_ne!(
            base,
            file_name("g2", &modules, detached, &extra(bytes(b"a"))).unwrap(),
            "generator"
        );
        assert_ne!(
            base,
            file_name("g1", &modules, Signatures::Attached, &extra(bytes(b"a"))).unwrap(),
            "signatures"
        );
        assert_ne!(base, name(&[], &extra(bytes(b"a"))), "modules");
        assert_ne!(
            base,
            name(&modules, &extra(FileContents::Symlink("a".into()))),
            "kind of contents"
        );
        std::fs::write(&ko, b"module, rebuilt").unwrap();
        assert_ne!(
            base,
            name(&modules, &extra(bytes(b"a"))),
            "a module rewritten in place"
        );
        let gone = extra(FileContents::HostFile(dir.join("missing")));
        assert!(
            file_name("g1", &modules, detached, &gone).is_none(),
            "unreadable host file: no key"
        );

        assert!(lookup(&dir, &base, 1 << 20).is_none(), "nothing cached yet");
        keep(&dir, &base, b"070701 an archive");
        let Some(Loadable::File(_)) = lookup(&dir, &base, 1 << 20) else {
            panic!("a hit after keep");
        };
        assert!(lookup(&dir, &base, 4).is_none(), "over the limit");
        std::fs::write(dir.join("junk.cpio"), b"not an archive").unwrap();
        assert!(
            lookup(&dir, "junk.cpio", 1 << 20).is_none(),
            "not a cpio archive"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_resolution_is_remembered_until_the_index_changes() {
        let dir = std::env::temp_dir().join(format!("zones-resolve-memo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel")).unwrap();
        std::fs::write(dir.join("kernel/a.ko"), b"a").unwrap();
        std::fs::write(dir.join("kernel/b.ko"), b"b").unwrap();
        std::fs::write(dir.join("modules.dep"), "kernel/a.ko:\n").unwrap();
        let names = |m: Vec<ModuleFile>| m.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(resolve_modules(&dir, &["a"]).unwrap()), ["a"]);
        assert!(
            resolve_modules(&dir, &["b"]).is_err(),
            "b is not in the index"
        );
        // The index rewritten in place: read again.
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n",
        )
        .unwrap();
        assert_eq!(names(resolve_modules(&dir, &["a"]).unwrap()), ["b", "a"]);
        assert_eq!(names(resolve_modules(&dir, &["b"]).unwrap()), ["b"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
