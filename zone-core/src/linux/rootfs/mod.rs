//! Root filesystems for Linux zones: the zone's commands run in a userland taken from a
//! filesystem image, a host directory or an OCI image, read-only and shared, with a writable
//! layer of the zone's own on top (overlayfs).
//!
//! The host attaches the image as a read-only virtio-blk disk (serial `zones-rootfs`), so no
//! zone can change it, whatever it does: the block device refuses writes. The agent (PID 1)
//! mounts it, puts an overlay with a writable upper layer over it (a size-limited tmpfs, or a
//! scratch disk with serial `zones-scratch`), moves `/dev`, `/proc` and `/sys` there and
//! switches root; it keeps serving exec from there. Directories and OCI images become ext4
//! images once and are cached by content ([`image`]).

mod image;
pub(crate) mod layer;
mod oci;

pub use image::{FsType, MkfsError};
pub use layer::LayerError;
pub use oci::{ImageConfig, OciError};

use super::disk::Disk;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use zone_agent::proto::rootfs::{ROOTFS_SERIAL, SCRATCH_SERIAL};

/// Where the agent reads the root filesystem's description in the initramfs.
pub(crate) fn config_path() -> &'static str {
    zone_agent::proto::rootfs::CONFIG.trim_start_matches('/')
}
/// Default size bound of the writable layer (tmpfs).
const DEFAULT_WRITABLE: u64 = 256 << 20;
/// Default bound on an image (or an unpacked directory or OCI image).
const DEFAULT_MAX: u64 = 16 << 30;

/// Where the userland comes from.
#[derive(Clone, Debug)]
enum Source {
    Image(PathBuf),
    Dir(PathBuf),
    Oci(PathBuf),
}

/// Where the zone's writes go.
#[derive(Clone, Debug)]
enum Writable {
    Tmpfs(u64),
    Scratch(PathBuf, u64),
}

/// The root filesystem of a Linux zone (see [`LinuxBoot::rootfs`](super::LinuxBoot::rootfs)).
///
/// ```no_run
/// use zone_core::{LinuxBoot, Rootfs};
/// let boot = LinuxBoot::host_kernel()?
///     .rootfs(Rootfs::oci("images/python.tar").writable_mib(128));
/// # Ok::<(), zone_core::LinuxError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Rootfs {
    source: Source,
    writable: Writable,
    cache_dir: Option<PathBuf>,
    max_bytes: u64,
}

/// Why a root filesystem could not be prepared. Each names the image and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootfsError {
    /// The image cannot be read.
    #[error("root filesystem {}: {source}", .path.display())]
    Read {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no filesystem zones mounts.
    #[error(
        "root filesystem {}: not an ext4, erofs or squashfs image; for a directory use \
         Rootfs::dir, for an OCI image or `docker save` archive Rootfs::oci",
        .path.display()
    )]
    UnknownFormat {
        /// The image.
        path: PathBuf,
    },
    /// The image is larger than allowed.
    #[error(
        "root filesystem {}: {size} bytes, more than the {limit} allowed; raise \
         Rootfs::max_size_mib or use a smaller image",
        .path.display()
    )]
    TooLarge {
        /// The image.
        path: PathBuf,
        /// Its size (or what was unpacked when the bound was hit).
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// The cache directory cannot be used.
    #[error(
        "root filesystem cache {}: {source}; choose another with Rootfs::cache_dir",
        .path.display()
    )]
    Cache {
        /// The cache directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image of a directory could not be made.
    #[error("root filesystem {}: making its image: {source}", .path.display())]
    Mkfs {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: MkfsError,
    },
    /// The OCI image could not be read or unpacked.
    #[error("OCI image {}: {source}", .path.display())]
    Oci {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: OciError,
    },
}

impl Rootfs {
    /// A filesystem image file (ext4, erofs or squashfs, detected by its magic numbers),
    /// attached read-only.
    pub fn image(path: impl Into<PathBuf>) -> Self {
        Self::with(Source::Image(path.into()))
    }

    /// A host directory holding a root filesystem (e.g. made by `mmdebstrap`), turned into an
    /// ext4 image with `mke2fs -d` the first time and cached by what it holds (paths, modes,
    /// owners, sizes, modification times). Owners are kept as they are on the host.
    pub fn dir(path: impl Into<PathBuf>) -> Self {
        Self::with(Source::Dir(path.into()))
    }

    /// An OCI image on disk: an OCI image layout directory, or a tar archive of one (`docker
    /// save`, `skopeo copy ... oci-archive:`). Its layers are applied in order with whiteouts,
    /// the result becomes an image as with [`Rootfs::dir`], and commands run with the image's
    /// `Env`, `WorkingDir` and `User`. Owners in the layers are kept when the host process is
    /// root; otherwise files belong to the calling user.
    pub fn oci(path: impl Into<PathBuf>) -> Self {
        Self::with(Source::Oci(path.into()))
    }

    fn with(source: Source) -> Self {
        Self {
            source,
            writable: Writable::Tmpfs(DEFAULT_WRITABLE),
            cache_dir: None,
            max_bytes: DEFAULT_MAX,
        }
    }

    /// Bounds the zone's writable layer, a tmpfs in guest memory (default 256 MiB).
    pub fn writable_mib(mut self, mib: u64) -> Self {
        self.writable = Writable::Tmpfs(mib << 20);
        self
    }

    /// Puts the zone's writes on a scratch disk at `path` instead, created (or replaced) and
    /// formatted as ext4 with `mib` MiB at every build, sparse on the host.
    pub fn scratch_disk(mut self, path: impl Into<PathBuf>, mib: u64) -> Self {
        self.writable = Writable::Scratch(path.into(), mib << 20);
        self
    }

    /// Where images made from directories and OCI images are kept (default:
    /// `$ZONES_CACHE_DIR`, else `$XDG_CACHE_HOME/zones`, else `~/.cache/zones`).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Refuses images (or unpacked directories and OCI images) larger than `mib` MiB (default
    /// 16 GiB).
    pub fn max_size_mib(mut self, mib: u64) -> Self {
        self.max_bytes = mib << 20;
        self
    }

    /// The path the root filesystem comes from.
    pub fn path(&self) -> &Path {
        match &self.source {
            Source::Image(p) | Source::Dir(p) | Source::Oci(p) => p,
        }
    }

    fn cache(&self) -> Result<PathBuf, RootfsError> {
        let dir = self.cache_dir.clone().unwrap_or_else(default_cache_dir);
        std::fs::create_dir_all(&dir).map_err(|source| RootfsError::Cache {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Makes the image ready: detects its filesystem, or builds (or finds in the cache) the
    /// image of a directory or an OCI image; formats the scratch disk.
    pub(crate) fn prepare(&self) -> Result<Prepared, RootfsError> {
        let path = self.path().to_owned();
        let read = |source| RootfsError::Read {
            path: path.clone(),
            source,
        };
        let (image, config) = match &self.source {
            Source::Image(p) => (p.clone(), ImageConfig::default()),
            Source::Dir(dir) => {
                if !std::fs::metadata(dir).map_err(read)?.is_dir() {
                    return Err(read(std::io::Error::other("not a directory")));
                }
                (self.image_of_dir(dir, None)?, ImageConfig::default())
            }
            Source::Oci(p) => self.image_of_oci(p)?,
        };
        let size = std::fs::metadata(&image).map_err(read)?.len();
        if size > self.max_bytes {
            return Err(RootfsError::TooLarge {
                path,
                size,
                limit: self.max_bytes,
            });
        }
        let fstype = image::detect_file(&image)
            .map_err(read)?
            .ok_or(RootfsError::UnknownFormat { path: path.clone() })?;
        let writable = match &self.writable {
            Writable::Tmpfs(bytes) => PreparedWritable::Tmpfs(*bytes),
            Writable::Scratch(p, bytes) => {
                image::mkfs_scratch(p, *bytes).map_err(|source| RootfsError::Mkfs {
                    path: p.clone(),
                    source,
                })?;
                PreparedWritable::Scratch(p.clone())
            }
        };
        Ok(Prepared {
            image,
            fstype,
            config,
            writable,
        })
    }

    /// The cached image of directory `dir` (made now if missing), named `<prefix>-<key>.ext4`
    /// (`prefix` defaults to `dir`).
    fn image_of_dir(&self, dir: &Path, key: Option<&str>) -> Result<PathBuf, RootfsError> {
        let mkfs = |source| RootfsError::Mkfs {
            path: dir.to_owned(),
            source,
        };
        let manifest = image::manifest(dir).map_err(|e| mkfs(e.into()))?;
        if manifest.bytes > self.max_bytes {
            return Err(RootfsError::TooLarge {
                path: dir.to_owned(),
                size: manifest.bytes,
                limit: self.max_bytes,
            });
        }
        let name = match key {
            Some(k) => format!("oci-{k}.ext4"),
            None => format!("dir-{}.ext4", manifest.key),
        };
        let out = self.cache()?.join(name);
        if !out.is_file() {
            image::mkfs_ext4(dir, &manifest, &out).map_err(mkfs)?;
        }
        Ok(out)
    }

    /// The cached image of the OCI image at `path` and its configuration.
    fn image_of_oci(&self, path: &Path) -> Result<(PathBuf, ImageConfig), RootfsError> {
        let oci = |source| RootfsError::Oci {
            path: path.to_owned(),
            source,
        };
        let cache = self.cache()?;
        let scratch =
            |what: &str| cache.join(format!("{what}-{}-{}", std::process::id(), unique()));
        let mut budget = layer::Budget {
            left: self.max_bytes,
            limit: self.max_bytes,
        };
        let too_large = |source: OciError| match source {
            OciError::Layer {
                source: LayerError::TooLarge { limit },
                ..
            } => RootfsError::TooLarge {
                path: path.to_owned(),
                size: limit,
                limit,
            },
            other => oci(other),
        };
        // A layout directory is read in place; an archive is unpacked first.
        let unpacked = if path.is_dir() {
            None
        } else {
            let dir = scratch("archive");
            std::fs::create_dir_all(&dir).map_err(|source| RootfsError::Cache {
                path: dir.clone(),
                source,
            })?;
            let guard = RemoveOnDrop(dir.clone());
            oci::unpack_archive(path, &dir, &mut budget).map_err(too_large)?;
            Some(guard)
        };
        let layout = unpacked.as_ref().map_or(path, |g| g.0.as_path());
        let image = oci::read(layout).map_err(oci)?;
        let out = cache.join(format!("oci-{}.ext4", image.key));
        if !out.is_file() {
            let tree = RemoveOnDrop(scratch("tree"));
            std::fs::create_dir_all(&tree.0).map_err(|source| RootfsError::Cache {
                path: tree.0.clone(),
                source,
            })?;
            oci::unpack(&image, &tree.0, &mut budget).map_err(too_large)?;
            self.image_of_dir(&tree.0, Some(&image.key))?;
        }
        Ok((out, image.config))
    }
}

/// A counter making scratch names unique within the process.
pub(crate) fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Removes a scratch directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `$ZONES_CACHE_DIR`, `$XDG_CACHE_HOME/zones`, `~/.cache/zones`, or a directory in `/tmp`.
pub(crate) fn default_cache_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("ZONES_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("zones");
    }
    if let Some(home) = var("HOME") {
        return home.join(".cache/zones");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("zones-cache-{uid}"))
}

/// Where the zone's writes go, ready.
#[derive(Debug)]
enum PreparedWritable {
    Tmpfs(u64),
    Scratch(PathBuf),
}

/// A root filesystem ready to attach.
#[derive(Debug)]
pub(crate) struct Prepared {
    image: PathBuf,
    fstype: FsType,
    config: ImageConfig,
    writable: PreparedWritable,
}

impl Prepared {
    /// The disks to attach: the image (read-only), then the scratch disk if any.
    pub(crate) fn disks(&self) -> Vec<Disk> {
        let mut disks = vec![Disk::raw(&self.image).read_only(true).id(ROOTFS_SERIAL)];
        if let PreparedWritable::Scratch(p) = &self.writable {
            disks.push(Disk::raw(p).id(SCRATCH_SERIAL));
        }
        disks
    }

    /// Kernel modules the guest needs to mount it (skipped where built in).
    pub(crate) fn modules(&self) -> Vec<&'static str> {
        let mut modules = vec![self.fstype.name(), "overlay"];
        if matches!(self.writable, PreparedWritable::Scratch(_)) && self.fstype != FsType::Ext4 {
            modules.push("ext4");
        }
        modules
    }

    /// The description the agent reads from [`CONFIG_PATH`]: one `key value` a line.
    pub(crate) fn agent_config(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "fstype {}", self.fstype.name());
        match &self.writable {
            PreparedWritable::Tmpfs(bytes) => {
                let _ = writeln!(out, "writable tmpfs {bytes}");
            }
            PreparedWritable::Scratch(_) => {
                let _ = writeln!(out, "writable disk");
            }
        }
        for entry in &self.config.env {
            if !entry.contains('\n') {
                let _ = writeln!(out, "env {entry}");
            }
        }
        for (key, value) in [
            ("workdir", &self.config.working_dir),
            ("user", &self.config.user),
        ] {
            if !value.is_empty() && !value.contains('\n') {
                let _ = writeln!(out, "{key} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("zones-rootfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn images_are_recognized_or_refused_with_the_fix() {
        let d = temp("detect");
        let junk = d.join("junk.img");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        let err = Rootfs::image(&junk).prepare().unwrap_err();
        assert!(matches!(err, RootfsError::UnknownFormat { .. }), "{err}");
        assert!(err.to_string().contains("Rootfs::dir"), "{err}");
        let err = Rootfs::image(d.join("missing.img")).prepare().unwrap_err();
        assert!(matches!(err, RootfsError::Read { .. }), "{err}");

        let mut ext4 = vec![0u8; 8192];
        ext4[1080..1082].copy_from_slice(&[0x53, 0xef]);
        let img = d.join("fs.ext4");
        std::fs::write(&img, &ext4).unwrap();
        let ready = Rootfs::image(&img).prepare().unwrap();
        assert_eq!(ready.fstype, FsType::Ext4);
        assert_eq!(ready.modules(), ["ext4", "overlay"]);
        assert_eq!(
            ready.agent_config(),
            format!("fstype ext4\nwritable tmpfs {}\n", 256 << 20)
        );
        let disks = ready.disks();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0], Disk::raw(&img).read_only(true).id(ROOTFS_SERIAL));

        let err = Rootfs::image(&img).max_size_mib(0).prepare().unwrap_err();
        assert!(
            matches!(err, RootfsError::TooLarge { size: 8192, .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn configuration_lines_cannot_be_forged() {
        let ready = Prepared {
            image: PathBuf::from("/x"),
            fstype: FsType::Erofs,
            config: ImageConfig {
                env: vec!["A=1".into(), "B=2\nuser 0".into()],
                working_dir: "/app".into(),
                user: "nobody\nfstype ext4".into(),
            },
            writable: PreparedWritable::Scratch(PathBuf::from("/s")),
        };
        assert_eq!(
            ready.agent_config(),
            "fstype erofs\nwritable disk\nenv A=1\nworkdir /app\n"
        );
        assert_eq!(ready.modules(), ["erofs", "overlay", "ext4"]);
    }

    /// A directory and an OCI image become cached ext4 images (needs mke2fs).
    #[test]
    fn directories_and_oci_images_become_cached_images() {
        let d = temp("cache");
        std::fs::create_dir_all(d.join("tree/etc")).unwrap();
        std::fs::write(d.join("tree/etc/hostname"), b"zone\n").unwrap();
        let rootfs = Rootfs::dir(d.join("tree")).cache_dir(d.join("cache"));
        let first = match rootfs.prepare() {
            Err(RootfsError::Mkfs {
                source: MkfsError::Missing,
                ..
            }) => {
                crate::testing::skipped(format_args!(
                    "directories_and_oci_images_become_cached_images: no mke2fs"
                ));
                return;
            }
            other => other.unwrap(),
        };
        assert_eq!(first.fstype, FsType::Ext4);
        let made = std::fs::metadata(&first.image).unwrap().modified().unwrap();
        let second = rootfs.prepare().unwrap();
        assert_eq!(second.image, first.image, "cached");
        assert_eq!(
            std::fs::metadata(&second.image)
                .unwrap()
                .modified()
                .unwrap(),
            made
        );
        std::fs::write(d.join("tree/etc/hostname"), b"other\n").unwrap();
        assert_ne!(
            rootfs.prepare().unwrap().image,
            first.image,
            "changed tree, new image"
        );

        let err = Rootfs::dir(d.join("tree/etc/hostname"))
            .prepare()
            .unwrap_err();
        assert!(matches!(err, RootfsError::Read { .. }), "{err}");
        let err = Rootfs::oci(d.join("tree"))
            .cache_dir(d.join("cache"))
            .prepare()
            .unwrap_err();
        assert!(
            matches!(
                &err,
                RootfsError::Oci {
                    source: OciError::NotAnImage,
                    ..
                }
            ),
            "{err}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
