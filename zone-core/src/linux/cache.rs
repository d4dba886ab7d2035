//! The on-disk caches of Linux zones' boot data (`kernels/`, `initramfs/` in the zones cache
//! directory): content-named files written whole under a temporary name and renamed, owner-only
//! (an initramfs can hold the contents of the caller's own host files), never changed in place.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// SHA-256 of `bytes`, in hex.
pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What tells one version of the file at `path` from another without reading it: device,
/// inode, size, modification and change times (`None` when its metadata cannot be read). A
/// file rewritten in place changes its change time, which no caller can set back.
pub(crate) fn identity(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// Writes `bytes` to `file` atomically (a temporary file renamed), owner-only, best effort: a
/// cache that cannot be written only costs the next zone the work. Returns whether it did.
pub(crate) fn store(file: &Path, bytes: &[u8]) -> bool {
    let Some(dir) = file.parent() else {
        return false;
    };
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .is_err()
    {
        return false;
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes));
    if written.is_ok() && std::fs::rename(&tmp, file).is_ok() {
        return true;
    }
    let _ = std::fs::remove_file(&tmp);
    false
}

/// Removes the least recently used files of `dir` (by modification time, which a hit renews)
/// whose names end with `suffix`, keeping `keep`.
pub(crate) fn evict(dir: &Path, suffix: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stores_owner_only_and_evicts_the_least_recently_used() {
        let dir = std::env::temp_dir().join(format!("zones-cache-test-{}", std::process::id()));
        let file = |i: u32| dir.join(format!("{i}.x"));
        for i in 0..5u32 {
            assert!(store(&file(i), &i.to_le_bytes()));
            let t = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1000 + u64::from(i));
            std::fs::File::options()
                .write(true)
                .open(file(i))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        assert_eq!(std::fs::read(file(3)).unwrap(), 3u32.to_le_bytes());
        let mode = std::fs::metadata(file(3)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
        std::fs::write(dir.join("other"), b"kept").unwrap();
        evict(&dir, ".x", 2);
        let left: Vec<bool> = (0..5).map(|i| file(i).exists()).collect();
        assert_eq!(left, [false, false, false, true, true]);
        assert!(dir.join("other").exists(), "only files with the suffix");
        let before = identity(&file(4)).unwrap();
        std::fs::write(file(4), b"other").unwrap();
        assert_ne!(identity(&file(4)).unwrap(), before, "rewritten in place");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
