//! The initramfs of a Linux zone: the agent as `/init`, the kernel modules it loads at boot (in
//! dependency order, resolved from the host's `modules.dep`) and any extra files.
//!
//! Layout of the archive:
//!
//! ```text
//! init                          the agent (0o755)
//! dev proc sys tmp run root etc directories
//! dev/console                   character device 5:1 (0o600)
//! lib/modules/zones/NN-<name>.ko  modules, NN zero-padded so that names sort in load order
//! lib/modules/zones/NN-<name>.ko.sig  a module's detached signature (see [`Signatures`])
//! lib/modules/zones/order       the module file names in load order, one a line
//! ...                           extra files
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::blob::{Blob, Scratch};
use super::cpio::{CpioError, CpioWriter};
use super::decompress::{self, Compression};
use super::module_sig;

/// Directories every initramfs has, with their modes.
const BASE_DIRS: [(&str, u32); 7] = [
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("root", 0o700),
    ("etc", 0o755),
];

/// Largest initramfs [`build`] produces.
pub(crate) const MAX_INITRAMFS: usize = 1 << 30;
/// Largest `modules.dep` or `modules.builtin` read (Debian's `modules.dep` is about 500 KiB).
const MAX_INDEX: u64 = 64 << 20;
/// Where the modules go in the guest.
const MODULES_DIR: &str = "lib/modules/zones";
/// Suffixes of compressed modules (kmod also knows gzip).
const COMPRESSED_SUFFIXES: [&str; 3] = [".ko.xz", ".ko.zst", ".ko.gz"];

/// A kernel module to put in the initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModuleFile {
    /// The module's name as the kernel spells it, e.g. `virtio_mmio` (`-` becomes `_`).
    pub(crate) name: String,
    /// Absolute path of the `.ko` on the host.
    pub(crate) path: PathBuf,
}

/// Where a signed module's signature goes in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signatures {
    /// Split off into `<module>.sig` ([`super::module_sig`]): the guest kernel loads the module
    /// without checking a signature, and the agent adds it back only for a kernel that demands
    /// one.
    Detached,
    /// Left on the module: the guest kernel checks it at every load.
    Attached,
}

/// An extra file for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExtraFile {
    /// Where it goes, relative to the guest root, e.g. `bin/busybox`.
    pub(crate) guest_path: String,
    /// Permission bits (ignored for symlinks).
    pub(crate) mode: u32,
    /// What it holds.
    pub(crate) contents: FileContents,
}

/// The contents of an [`ExtraFile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FileContents {
    /// These bytes.
    Bytes(Arc<[u8]>),
    /// The contents of this host file, read when the initramfs is built.
    HostFile(PathBuf),
    /// A symbolic link to this target.
    Symlink(String),
}

/// Why the modules cannot be resolved or the initramfs cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// `modules.dep` or `modules.builtin` cannot be read.
    #[error(
        "cannot read the module index {}: {source}; point the zone at a \
         /lib/modules/<kernel version> directory that `depmod` has been run on",
        .path.display()
    )]
    ReadIndex {
        /// The index file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `modules.dep` or `modules.builtin` is implausibly large.
    #[error("the module index {} is larger than {limit} bytes; is it really a depmod index?", .path.display())]
    IndexTooLarge {
        /// The index file.
        path: PathBuf,
        /// The largest size accepted.
        limit: u64,
    },
    /// A line of `modules.dep` is not `<module path>: <dependency paths>`.
    #[error(
        "{}:{line}: {reason}; regenerate the file with `depmod`",
        .path.display()
    )]
    MalformedIndex {
        /// The index file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A module is listed as a dependency in `modules.dep` but has no line of its own.
    #[error(
        "{}: module `{module}` depends on `{dependency}`, which has no line of its own; \
         the index is inconsistent, regenerate it with `depmod`",
        .path.display()
    )]
    MissingDependency {
        /// The index file.
        path: PathBuf,
        /// The module whose line names the dependency.
        module: String,
        /// The dependency's path as listed.
        dependency: String,
    },
    /// The modules depend on each other in a cycle, which the kernel cannot load.
    #[error(
        "{}: module `{module}` depends on itself (through its dependencies); \
         regenerate the index with `depmod`",
        .path.display()
    )]
    DependencyCycle {
        /// The index file.
        path: PathBuf,
        /// A module of the cycle.
        module: String,
    },
    /// A wanted module is neither in `modules.dep` nor built in.
    #[error(
        "kernel module `{name}` is neither in {dir}/modules.dep nor built into the kernel \
         ({dir}/modules.builtin); check its name (`modinfo {name}`) and that this directory \
         belongs to the guest kernel",
        dir = .modules_dir.display()
    )]
    UnknownModule {
        /// The name asked for.
        name: String,
        /// The modules directory searched.
        modules_dir: PathBuf,
    },
    /// A compressed module could not be decompressed.
    #[error(
        "kernel module `{module}` ({}) cannot be used: {source}; reinstall the kernel's \
         modules, or decompress it yourself and run `depmod` again",
        .path.display()
    )]
    Decompress {
        /// The module's name.
        module: String,
        /// Its file.
        path: PathBuf,
        /// Why.
        #[source]
        source: super::decompress::DecompressError,
    },
    /// A module's file is missing from the modules directory.
    #[error(
        "kernel module `{module}` is listed in modules.dep but {} is not a file; \
         reinstall the kernel's modules or run `depmod` again",
        .path.display()
    )]
    MissingModuleFile {
        /// The module's name.
        module: String,
        /// The file that should exist.
        path: PathBuf,
    },
    /// A module name cannot be used in a file name.
    #[error(
        "invalid kernel module name {name:?}: use a module name such as `virtio_mmio` \
         (letters, digits, `_` and `-` only)"
    )]
    InvalidModuleName {
        /// The offending name.
        name: String,
    },
    /// The same module is given twice.
    #[error("kernel module `{name}` is given twice; list each module once")]
    DuplicateModule {
        /// The module's name.
        name: String,
    },
    /// A host file (a module or an extra file) cannot be read.
    #[error("cannot read {} for the initramfs ({what}): {source}", .path.display())]
    ReadHostFile {
        /// What the file is for: a module name or a guest path.
        what: String,
        /// The host path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An entry cannot be added to the archive.
    #[error("cannot add {guest_path:?} to the initramfs: {source}")]
    Entry {
        /// The path in the guest.
        guest_path: String,
        /// Why the archive refused it.
        source: CpioError,
    },
    /// Memory for the archive could not be mapped (or grown).
    #[error("cannot map memory for the initramfs: {0}")]
    Memory(std::io::Error),
    /// The initramfs would exceed its size limit.
    #[error(
        "the initramfs would be larger than {limit} bytes (at {what:?}); ship fewer or smaller \
         modules and extra files, or put large files on a disk image instead"
    )]
    TooLarge {
        /// The entry that crossed the limit.
        what: String,
        /// The limit in bytes.
        limit: usize,
    },
}

/// Resolves `wanted` module names (as `modprobe` names them: `-` and `_` are equivalent, no
/// `.ko`) against `<modules_dir>/modules.dep`, returning every module to load, dependencies
/// first, each once.
///
/// Modules listed in `<modules_dir>/modules.builtin` are built into the kernel: they are skipped
/// silently (a missing `modules.builtin` counts as empty). Soft dependencies
/// (`modules.softdep`) are not followed: name those modules explicitly.
pub(crate) fn resolve_modules(
    modules_dir: &Path,
    wanted: &[&str],
) -> Result<Vec<ModuleFile>, InitramfsError> {
    let dep_path = modules_dir.join("modules.dep");
    let dep_text = read_index(&dep_path, false)?;
    let index = DepIndex::parse(index_text(&dep_text, &dep_path)?, &dep_path)?;
    let builtin_path = modules_dir.join("modules.builtin");
    let builtin_text = read_index(&builtin_path, true)?;
    let builtin_text = index_text(&builtin_text, &builtin_path)?;
    let builtin = |normalized: &str| {
        builtin_text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .any(|line| is_module(line, normalized))
    };

    let mut roots = Vec::new();
    for name in wanted {
        let normalized = normalize(name);
        match index.find(&normalized) {
            Some(i) => roots.push(i),
            None if builtin(&normalized) => {}
            None => {
                return Err(InitramfsError::UnknownModule {
                    name: (*name).to_owned(),
                    modules_dir: modules_dir.to_owned(),
                });
            }
        }
    }
    let order = index.load_order(&roots, &dep_path)?;
    order
        .into_iter()
        .map(|i| {
            let module = &index.modules[i];
            let path = modules_dir.join(module.path);
            if !path.is_file() {
                return Err(InitramfsError::MissingModuleFile {
                    module: module.name(),
                    path,
                });
            }
            Ok(ModuleFile {
                name: module.name(),
                path,
            })
        })
        .collect()
}

/// Builds the initramfs: `/init` (the agent, mode 0o755), directories
/// `dev proc sys tmp run root etc`, `/dev/console` (character device 5:1, mode 0o600),
/// `/lib/modules/zones/NN-<name>.ko` for every module in order (NN zero-padded so that names
/// sort in load order; with [`Signatures::Detached`], a signed module's signature beside it as
/// `NN-<name>.ko.sig`), `/lib/modules/zones/order` listing the modules' file names one a line in
/// load order (empty without modules), then every extra file (its parent directories created as
/// needed).
pub(crate) fn build(
    agent: &[u8],
    modules: &[ModuleFile],
    signatures: Signatures,
    extra: &[ExtraFile],
) -> Result<Blob, InitramfsError> {
    build_with_limit(agent, modules, signatures, extra, MAX_INITRAMFS)
}

/// [`build`], refusing archives larger than `limit` bytes.
fn build_with_limit(
    agent: &[u8],
    modules: &[ModuleFile],
    signatures: Signatures,
    extra: &[ExtraFile],
    limit: usize,
) -> Result<Blob, InitramfsError> {
    // Room for the agent and typical modules; the buffer grows past it when needed.
    let reserve = agent
        .len()
        .saturating_add(16 << 20)
        .min(limit.saturating_add(4096));
    let mut archive = Archive {
        writer: CpioWriter::with_buffer(
            Scratch::with_capacity(reserve).map_err(InitramfsError::Memory)?,
        ),
        limit,
    };
    archive.file("init", 0o755, agent)?;
    for (dir, mode) in BASE_DIRS {
        archive.add(dir, |w| w.dir(dir, mode))?;
    }
    archive.add("dev/console", |w| w.char_device("dev/console", 0o600, 5, 1))?;

    archive.add(MODULES_DIR, |w| w.dir(MODULES_DIR, 0o755))?;
    let mut names = HashSet::new();
    let mut order = String::new();
    for (index, module) in modules.iter().enumerate() {
        validate_module_name(&module.name)?;
        if !names.insert(normalize(&module.name)) {
            return Err(InitramfsError::DuplicateModule {
                name: module.name.clone(),
            });
        }
        let file_name = module_file_name(index, modules.len(), &module.name);
        let guest_path = format!("{MODULES_DIR}/{file_name}");
        let data = archive.read_module(module)?;
        match module_sig::split(&data).filter(|_| signatures == Signatures::Detached) {
            Some((object, signature)) => {
                archive.file(&guest_path, 0o644, object)?;
                archive.file(&format!("{guest_path}.sig"), 0o644, signature)?;
            }
            None => archive.file(&guest_path, 0o644, &data)?,
        }
        let _ = writeln!(order, "{file_name}");
    }
    archive.file(&format!("{MODULES_DIR}/order"), 0o644, order.as_bytes())?;

    for file in extra {
        let path = file.guest_path.as_str();
        match &file.contents {
            FileContents::Bytes(bytes) => archive.file(path, file.mode, bytes)?,
            FileContents::HostFile(host) => {
                let data = archive.read_host_file(host, path)?;
                archive.file(path, file.mode, &data)?;
            }
            FileContents::Symlink(target) => archive.add(path, |w| w.symlink(path, target))?,
        }
    }

    let bytes = archive.writer.finish();
    if !bytes.complete() {
        return Err(InitramfsError::Memory(
            std::io::ErrorKind::OutOfMemory.into(),
        ));
    }
    if bytes.len() > limit {
        return Err(InitramfsError::TooLarge {
            what: "the end of the archive".to_owned(),
            limit,
        });
    }
    Ok(Blob::Scratch(bytes))
}

/// A [`CpioWriter`] with a size limit and errors that name the guest path.
struct Archive {
    /// The archive being built.
    writer: CpioWriter<Scratch>,
    /// The largest archive accepted.
    limit: usize,
}

impl Archive {
    /// Adds a regular file, checking the size limit first.
    fn file(&mut self, guest_path: &str, mode: u32, data: &[u8]) -> Result<(), InitramfsError> {
        if data.len() > self.budget() {
            return Err(InitramfsError::TooLarge {
                what: guest_path.to_owned(),
                limit: self.limit,
            });
        }
        self.add(guest_path, |w| w.file(guest_path, mode, data))
    }

    /// Runs `add` on the writer, naming `guest_path` in its error.
    fn add(
        &mut self,
        guest_path: &str,
        add: impl FnOnce(&mut CpioWriter<Scratch>) -> Result<(), CpioError>,
    ) -> Result<(), InitramfsError> {
        add(&mut self.writer).map_err(|source| InitramfsError::Entry {
            guest_path: guest_path.to_owned(),
            source,
        })
    }

    /// Bytes left before the limit.
    fn budget(&self) -> usize {
        self.limit.saturating_sub(self.writer.len())
    }

    /// Reads a module, decompressing it when its name says it is compressed (through the
    /// process-wide cache of [`super::decompress`]).
    fn read_module(&self, module: &ModuleFile) -> Result<Blob, InitramfsError> {
        let kind = Compression::of(&module.path);
        if kind == Compression::None {
            return self.read_host_file(&module.path, &module.name);
        }
        if let Some(data) = decompress::cached(&module.path) {
            return Ok(Blob::Shared(data));
        }
        let packed = self.read_host_file(&module.path, &module.name)?;
        let data: Arc<[u8]> = decompress::decompress(kind, &packed, self.budget())
            .map_err(|source| InitramfsError::Decompress {
                module: module.name.clone(),
                path: module.path.clone(),
                source,
            })?
            .into();
        decompress::remember(&module.path, data.clone());
        Ok(Blob::Shared(data))
    }

    /// Reads a host file for `what` (a module name or guest path), reading no more than the
    /// size limit allows.
    fn read_host_file(&self, path: &Path, what: &str) -> Result<Blob, InitramfsError> {
        let read_error = |source| InitramfsError::ReadHostFile {
            what: what.to_owned(),
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        match Scratch::read_file(&file, self.budget()).map_err(read_error)? {
            Some(data) => Ok(Blob::Scratch(data)),
            None => Err(InitramfsError::TooLarge {
                what: what.to_owned(),
                limit: self.limit,
            }),
        }
    }
}

/// The file name of the `index`th of `count` modules: `NN-<name>.ko`, with at least two digits
/// and as many as the largest index needs, so that names sort in load order.
fn module_file_name(index: usize, count: usize, name: &str) -> String {
    let width = count.saturating_sub(1).to_string().len().max(2);
    format!("{index:0width$}-{name}.ko")
}

/// Checks that a module name is usable as a file name.
fn validate_module_name(name: &str) -> Result<(), InitramfsError> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(InitramfsError::InvalidModuleName {
            name: name.to_owned(),
        })
    }
}

/// A module name as the kernel spells it (`-` becomes `_`).
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The normalized module name of a path in a depmod index (compressed or not).
fn module_name(path: &str) -> String {
    normalize(stem(path))
}

/// The file name of a path in a depmod index without its `.ko` (and compression) suffix.
fn stem(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    for suffix in COMPRESSED_SUFFIXES {
        if let Some(stem) = file.strip_suffix(suffix) {
            return stem;
        }
    }
    file.strip_suffix(".ko").unwrap_or(file)
}

/// Whether the index path `path` is the module `normalized` (without allocating: the index
/// has thousands of lines and is searched for a handful of names).
fn is_module(path: &str, normalized: &str) -> bool {
    let stem = stem(path);
    stem.len() == normalized.len()
        && stem
            .bytes()
            .zip(normalized.bytes())
            .all(|(a, b)| (if a == b'-' { b'_' } else { a }) == b)
}

/// Reads an index file of the modules directory, bounded by [`MAX_INDEX`]. With `optional`, a
/// missing file reads as empty.
fn read_index(path: &Path, optional: bool) -> Result<Blob, InitramfsError> {
    let read_error = |source| InitramfsError::ReadIndex {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Blob::Owned(Vec::new()));
        }
        Err(e) => return Err(read_error(e)),
    };
    // Outside the heap: the index is read for each zone's build and dropped after it.
    match Scratch::read_file(&file, MAX_INDEX as usize).map_err(read_error)? {
        Some(text) => Ok(Blob::Scratch(text)),
        None => Err(InitramfsError::IndexTooLarge {
            path: path.to_owned(),
            limit: MAX_INDEX,
        }),
    }
}

/// The text of an index read by [`read_index`].
fn index_text<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str, InitramfsError> {
    std::str::from_utf8(bytes).map_err(|e| InitramfsError::ReadIndex {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// One line of `modules.dep`, borrowed from its text.
struct DepEntry<'a> {
    /// Path relative to the modules directory (or absolute, as old depmods wrote).
    path: &'a str,
    /// Dependency paths as listed, separated by whitespace.
    deps: &'a str,
}

impl DepEntry<'_> {
    /// The normalized module name.
    fn name(&self) -> String {
        module_name(self.path)
    }

    /// The `n`th dependency counted from the last listed, if there is one.
    fn dep_from_last(&self, n: usize) -> Option<&str> {
        self.deps.split_whitespace().rev().nth(n)
    }
}

/// `modules.dep`, parsed: a few small allocations however many modules the kernel has (the
/// entries borrow the text).
struct DepIndex<'a> {
    /// The lines, in file order.
    modules: Vec<DepEntry<'a>>,
    /// Index into `modules` by listed path.
    by_path: HashMap<&'a str, usize>,
}

impl<'a> DepIndex<'a> {
    /// The first line of module `normalized`.
    fn find(&self, normalized: &str) -> Option<usize> {
        self.modules
            .iter()
            .position(|m| is_module(m.path, normalized))
    }

    /// Parses the text of `modules.dep` (read from `path`, named in errors).
    fn parse(text: &'a str, path: &Path) -> Result<Self, InitramfsError> {
        let mut index = Self {
            modules: Vec::new(),
            by_path: HashMap::new(),
        };
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |reason: &str| InitramfsError::MalformedIndex {
                path: path.to_owned(),
                line: number + 1,
                reason: reason.to_owned(),
            };
            let Some((module, deps)) = line.split_once(':') else {
                return Err(malformed("expected `<module>: <dependencies>`"));
            };
            let module = module.trim();
            if !module.ends_with(".ko") && !COMPRESSED_SUFFIXES.iter().any(|s| module.ends_with(s))
            {
                return Err(malformed("the module path does not end in .ko"));
            }
            let i = index.modules.len();
            index.by_path.entry(module).or_insert(i);
            index.modules.push(DepEntry { path: module, deps });
        }
        Ok(index)
    }

    /// The modules `roots` need, each after all of its dependencies, each once.
    ///
    /// A depth-first walk over every module's own line. Dependencies are visited last-listed
    /// first, so for a depmod-generated line the order matches what `modprobe` loads.
    fn load_order(&self, roots: &[usize], path: &Path) -> Result<Vec<usize>, InitramfsError> {
        /// Walk state of a module.
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            /// Not reached yet.
            New,
            /// On the walk's stack: its dependencies are being visited.
            Visiting,
            /// In the order.
            Done,
        }
        let mut state = vec![State::New; self.modules.len()];
        let mut order = Vec::new();
        for &root in roots {
            if state[root] == State::Done {
                continue;
            }
            // (module, how many of its dependencies, counted from the last, were visited)
            let mut stack = vec![(root, 0usize)];
            state[root] = State::Visiting;
            while let Some(top) = stack.last_mut() {
                let (module, visited) = *top;
                let Some(dep_path) = self.modules[module].dep_from_last(visited) else {
                    state[module] = State::Done;
                    order.push(module);
                    stack.pop();
                    continue;
                };
                top.1 += 1;
                let Some(&dep) = self.by_path.get(dep_path) else {
                    return Err(InitramfsError::MissingDependency {
                        path: path.to_owned(),
                        module: self.modules[module].name(),
                        dependency: dep_path.to_owned(),
                    });
                };
                match state[dep] {
                    State::Done => {}
                    State::Visiting => {
                        return Err(InitramfsError::DependencyCycle {
                            path: path.to_owned(),
                            module: self.modules[dep].name(),
                        });
                    }
                    State::New => {
                        state[dep] = State::Visiting;
                        stack.push((dep, 0));
                    }
                }
            }
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpio::testing::{Entry, parse};
    use super::super::cpio::{S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        /// A fresh empty directory.
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "zones-initramfs-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        /// Writes `contents` to `relative`, creating its parents.
        fn write(&self, relative: &str, contents: &[u8]) -> PathBuf {
            let path = self.0.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A fake modules directory: a diamond (`top` needs `left` and `right`, both need `base`),
    /// a module with a dash, a compressed module and one depending on it, and built-ins.
    fn fake_modules() -> TempDir {
        let dir = TempDir::new();
        let dep = "\
kernel/top/top.ko: kernel/mid/left.ko kernel/mid/right.ko kernel/base/base.ko
kernel/mid/left.ko: kernel/base/base.ko
kernel/mid/right.ko: kernel/base/base.ko
kernel/base/base.ko:
kernel/misc/dash-name.ko:
kernel/odd/odd.ko: kernel/base/base.ko kernel/mid/left.ko
kernel/z/zmod.ko.xz:
kernel/z/zstmod.ko.zst:
kernel/z/uses_z.ko: kernel/z/zstmod.ko.zst
";
        dir.write("modules.dep", dep.as_bytes());
        dir.write(
            "modules.builtin",
            b"kernel/drivers/virtio/virtio.ko\nkernel/fs/built-in_fs.ko\n",
        );
        for ko in [
            "top/top.ko",
            "mid/left.ko",
            "mid/right.ko",
            "base/base.ko",
            "misc/dash-name.ko",
            "odd/odd.ko",
            "z/zmod.ko.xz",
            "z/zstmod.ko.zst",
            "z/uses_z.ko",
        ] {
            dir.write(&format!("kernel/{ko}"), format!("ELF {ko}").as_bytes());
        }
        dir
    }

    /// The names of resolved modules.
    fn names(modules: &[ModuleFile]) -> Vec<&str> {
        modules.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn diamond_resolves_dependencies_first() {
        let dir = fake_modules();
        let modules = resolve_modules(&dir.0, &["top"]).unwrap();
        assert_eq!(names(&modules), ["base", "right", "left", "top"]);
        assert_eq!(modules[0].path, dir.0.join("kernel/base/base.ko"));
        // A line listing its dependencies in the "wrong" order still loads them first.
        let modules = resolve_modules(&dir.0, &["odd"]).unwrap();
        assert_eq!(names(&modules), ["base", "left", "odd"]);
    }

    #[test]
    fn modules_appear_once() {
        let dir = fake_modules();
        let modules = resolve_modules(&dir.0, &["left", "top", "base", "left", "right"]).unwrap();
        assert_eq!(names(&modules), ["base", "left", "right", "top"]);
        assert!(resolve_modules(&dir.0, &[]).unwrap().is_empty());
    }

    #[test]
    fn dash_and_underscore_are_equivalent() {
        let dir = fake_modules();
        for wanted in ["dash-name", "dash_name"] {
            let modules = resolve_modules(&dir.0, &[wanted, "dash_name"]).unwrap();
            assert_eq!(names(&modules), ["dash_name"]);
            assert_eq!(modules[0].path, dir.0.join("kernel/misc/dash-name.ko"));
        }
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let dir = fake_modules();
        let modules = resolve_modules(&dir.0, &["virtio", "built_in-fs", "base"]).unwrap();
        assert_eq!(names(&modules), ["base"]);
    }

    #[test]
    fn missing_builtin_index_counts_as_empty() {
        let dir = fake_modules();
        std::fs::remove_file(dir.0.join("modules.builtin")).unwrap();
        assert_eq!(
            names(&resolve_modules(&dir.0, &["left"]).unwrap()),
            ["base", "left"]
        );
        let err = resolve_modules(&dir.0, &["virtio"]).unwrap_err();
        assert!(matches!(err, InitramfsError::UnknownModule { .. }), "{err}");
    }

    #[test]
    fn unknown_module_names_the_directory() {
        let dir = fake_modules();
        let err = resolve_modules(&dir.0, &["base", "nope-mod"]).unwrap_err();
        let message = err.to_string();
        match err {
            InitramfsError::UnknownModule { name, modules_dir } => {
                assert_eq!(name, "nope-mod");
                assert_eq!(modules_dir, dir.0);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(message.contains("neither in"), "{message}");
        assert!(message.contains(&*dir.0.to_string_lossy()), "{message}");
        for bad in ["", "top.ko", "kernel/top/top.ko"] {
            let err = resolve_modules(&dir.0, &[bad]).unwrap_err();
            assert!(
                matches!(err, InitramfsError::UnknownModule { .. }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn compressed_modules_resolve_by_name() {
        let dir = fake_modules();
        let found = resolve_modules(&dir.0, &["zmod"]).unwrap();
        assert_eq!(names(&found), ["zmod"]);
        assert_eq!(found[0].path, dir.0.join("kernel/z/zmod.ko.xz"));
        let found = resolve_modules(&dir.0, &["uses_z"]).unwrap();
        assert_eq!(names(&found), ["zstmod", "uses_z"]);
    }

    #[test]
    fn compressed_modules_go_in_decompressed() {
        let dir = fake_modules();
        let plain = b"\x7fELF a module".repeat(100);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &plain[..], &mut xz).unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            &plain[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let modules: Vec<ModuleFile> = [
            ("a", "x.ko.xz", xz),
            ("b", "z.ko.zst", zst),
            ("c", "g.ko.gz", gz),
        ]
        .into_iter()
        .map(|(name, file, data)| ModuleFile {
            name: name.to_owned(),
            path: dir.write(&format!("packed/{file}"), &data),
        })
        .collect();
        let entries = parse(&build(b"agent", &modules, Signatures::Detached, &[]).unwrap());
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let e = find(&entries, &format!("lib/modules/zones/{i:02}-{name}.ko"));
            assert_eq!(e.data, plain, "{name}");
        }

        // A module whose contents do not match its suffix names the module and the format.
        let liar = ModuleFile {
            name: "liar".to_owned(),
            path: dir.0.join("kernel/z/zmod.ko.xz"),
        };
        let err = build(b"agent", &[liar], Signatures::Detached, &[]).unwrap_err();
        assert!(
            matches!(&err, InitramfsError::Decompress { module, .. } if module == "liar"),
            "{err}"
        );
        assert!(err.to_string().contains("not a valid xz stream"), "{err}");
    }

    #[test]
    fn missing_modules_dep_names_the_file() {
        let dir = TempDir::new();
        let err = resolve_modules(&dir.0, &["x"]).unwrap_err();
        assert!(
            matches!(&err, InitramfsError::ReadIndex { path, .. } if *path == dir.0.join("modules.dep")),
            "{err}"
        );
        assert!(err.to_string().contains("modules.dep"), "{err}");
    }

    #[test]
    fn broken_indexes_are_reported() {
        let dir = TempDir::new();
        dir.write("a.ko", b"");
        dir.write("modules.dep", b"a.ko: b.ko\n");
        let err = resolve_modules(&dir.0, &["a"]).unwrap_err();
        assert!(
            matches!(&err, InitramfsError::MissingDependency { module, dependency, .. }
                if module == "a" && dependency == "b.ko"),
            "{err}"
        );
        dir.write("modules.dep", b"a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n");
        let err = resolve_modules(&dir.0, &["a"]).unwrap_err();
        assert!(
            matches!(err, InitramfsError::DependencyCycle { .. }),
            "{err}"
        );
        dir.write("modules.dep", b"a.ko:\n\nnonsense\n");
        let err = resolve_modules(&dir.0, &["a"]).unwrap_err();
        assert!(
            matches!(err, InitramfsError::MalformedIndex { line: 3, .. }),
            "{err}"
        );
        dir.write("modules.dep", b"a.ko:\nb.ko:\n");
        let err = resolve_modules(&dir.0, &["b"]).unwrap_err();
        assert!(
            matches!(&err, InitramfsError::MissingModuleFile { path, .. } if *path == dir.0.join("b.ko")),
            "{err}"
        );
    }

    /// The entry named `name`.
    fn find<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} not in the initramfs"))
    }

    #[test]
    fn build_lays_out_agent_modules_and_extras() {
        let dir = fake_modules();
        let modules = resolve_modules(&dir.0, &["top"]).unwrap();
        let host = dir.write("host/busybox", b"busybox binary");
        let extra = [
            ExtraFile {
                guest_path: "bin/busybox".to_owned(),
                mode: 0o755,
                contents: FileContents::HostFile(host),
            },
            ExtraFile {
                guest_path: "bin/sh".to_owned(),
                mode: 0o777,
                contents: FileContents::Symlink("busybox".to_owned()),
            },
            ExtraFile {
                guest_path: "etc/zones/config.json".to_owned(),
                mode: 0o600,
                contents: FileContents::Bytes(Arc::from(&b"{}"[..])),
            },
        ];
        let archive = build(b"\x7fELF agent", &modules, Signatures::Detached, &extra).unwrap();
        let entries = parse(&archive);

        assert_eq!(entries[0].name, "init");
        let init = find(&entries, "init");
        assert_eq!(
            (init.mode, init.data.as_slice()),
            (S_IFREG | 0o755, &b"\x7fELF agent"[..])
        );
        for (dir, mode) in BASE_DIRS {
            assert_eq!(find(&entries, dir).mode, S_IFDIR | mode, "{dir}");
        }
        let console = find(&entries, "dev/console");
        assert_eq!((console.mode, console.rdev), (S_IFCHR | 0o600, (5, 1)));

        let module_files = ["00-base.ko", "01-right.ko", "02-left.ko", "03-top.ko"];
        for (file, source) in
            module_files
                .iter()
                .zip(["base/base", "mid/right", "mid/left", "top/top"])
        {
            let e = find(&entries, &format!("lib/modules/zones/{file}"));
            assert_eq!(e.mode, S_IFREG | 0o644);
            assert_eq!(e.data, format!("ELF {source}.ko").as_bytes());
        }
        let order = find(&entries, "lib/modules/zones/order");
        assert_eq!(
            order.data,
            format!("{}\n", module_files.join("\n")).as_bytes()
        );

        let busybox = find(&entries, "bin/busybox");
        assert_eq!(
            (busybox.mode, busybox.data.as_slice()),
            (S_IFREG | 0o755, &b"busybox binary"[..])
        );
        let sh = find(&entries, "bin/sh");
        assert_eq!(
            (sh.file_type(), sh.data.as_slice()),
            (S_IFLNK, &b"busybox"[..])
        );
        assert_eq!(find(&entries, "etc/zones").mode, S_IFDIR | 0o755);
        let config = find(&entries, "etc/zones/config.json");
        assert_eq!(
            (config.permissions(), config.data.as_slice()),
            (0o600, &b"{}"[..])
        );
    }

    /// A signed module's signature goes beside it (detached) or stays on it (attached); an
    /// unsigned module is the same either way, with no `.sig`.
    #[test]
    fn signatures_are_detached_or_attached() {
        let dir = TempDir::new();
        let mut signed = b"\x7fELF signed object".to_vec();
        let tail = [
            &b"pkcs7"[..],
            &[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            super::module_sig::MARKER,
        ]
        .concat();
        signed.extend_from_slice(&tail);
        let modules = [
            ModuleFile {
                name: "signed".to_owned(),
                path: dir.write("signed.ko", &signed),
            },
            ModuleFile {
                name: "plain".to_owned(),
                path: dir.write("plain.ko", b"\x7fELF plain"),
            },
        ];
        let detached = parse(&build(b"agent", &modules, Signatures::Detached, &[]).unwrap());
        assert_eq!(
            find(&detached, "lib/modules/zones/00-signed.ko").data,
            b"\x7fELF signed object"
        );
        assert_eq!(
            find(&detached, "lib/modules/zones/00-signed.ko.sig").data,
            tail
        );
        assert_eq!(
            find(&detached, "lib/modules/zones/01-plain.ko").data,
            b"\x7fELF plain"
        );
        assert!(!detached.iter().any(|e| e.name.ends_with("plain.ko.sig")));
        assert_eq!(
            find(&detached, "lib/modules/zones/order").data,
            b"00-signed.ko\n01-plain.ko\n"
        );

        let attached = parse(&build(b"agent", &modules, Signatures::Attached, &[]).unwrap());
        assert_eq!(
            find(&attached, "lib/modules/zones/00-signed.ko").data,
            signed
        );
        assert!(!attached.iter().any(|e| e.name.ends_with(".sig")));
    }

    #[test]
    fn build_without_modules_has_an_empty_order() {
        let entries = parse(&build(b"agent", &[], Signatures::Detached, &[]).unwrap());
        assert!(find(&entries, "lib/modules/zones/order").data.is_empty());
        assert!(!entries.iter().any(|e| e.name.ends_with(".ko")));
    }

    #[test]
    fn module_file_names_sort_in_load_order() {
        assert_eq!(module_file_name(0, 1, "virtio"), "00-virtio.ko");
        assert_eq!(module_file_name(99, 100, "a"), "99-a.ko");
        assert_eq!(module_file_name(7, 101, "a"), "007-a.ko");
        let mut names: Vec<String> = (0..1200).map(|i| module_file_name(i, 1200, "m")).collect();
        let unsorted = names.clone();
        names.sort();
        assert_eq!(names, unsorted);
    }

    #[test]
    fn build_reports_unreadable_host_files() {
        let missing = PathBuf::from("/nonexistent/zones/busybox");
        let extra = [ExtraFile {
            guest_path: "bin/busybox".to_owned(),
            mode: 0o755,
            contents: FileContents::HostFile(missing.clone()),
        }];
        let err = build(b"agent", &[], Signatures::Detached, &extra).unwrap_err();
        assert!(
            matches!(&err, InitramfsError::ReadHostFile { path, .. } if *path == missing),
            "{err}"
        );
        assert!(
            err.to_string().contains("/nonexistent/zones/busybox"),
            "{err}"
        );

        let module = ModuleFile {
            name: "virtio".to_owned(),
            path: missing.with_file_name("virtio.ko"),
        };
        let err = build(b"agent", &[module], Signatures::Detached, &[]).unwrap_err();
        assert!(matches!(err, InitramfsError::ReadHostFile { .. }), "{err}");
    }

    #[test]
    fn build_rejects_bad_modules_and_paths() {
        let dir = fake_modules();
        let ko = dir.0.join("kernel/base/base.ko");
        for name in ["", "../evil", "a/b", "a b"] {
            let module = ModuleFile {
                name: name.to_owned(),
                path: ko.clone(),
            };
            let err = build(b"agent", &[module], Signatures::Detached, &[]).unwrap_err();
            assert!(
                matches!(err, InitramfsError::InvalidModuleName { .. }),
                "{name:?}"
            );
        }
        let twice = [
            ModuleFile {
                name: "base".to_owned(),
                path: ko.clone(),
            },
            ModuleFile {
                name: "base".to_owned(),
                path: ko,
            },
        ];
        let err = build(b"agent", &twice, Signatures::Detached, &[]).unwrap_err();
        assert!(
            matches!(err, InitramfsError::DuplicateModule { .. }),
            "{err}"
        );
        for path in ["init", "dev/console", "/bin/sh", "bin/../init", "init/x"] {
            let extra = [ExtraFile {
                guest_path: path.to_owned(),
                mode: 0o644,
                contents: FileContents::Bytes(Arc::from(&b"x"[..])),
            }];
            let err = build(b"agent", &[], Signatures::Detached, &extra).unwrap_err();
            assert!(
                matches!(&err, InitramfsError::Entry { guest_path, .. } if guest_path == path),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn build_enforces_the_size_limit() {
        let dir = fake_modules();
        let big = dir.write("host/big", &[1; 5000]);
        let extra = [ExtraFile {
            guest_path: "big".to_owned(),
            mode: 0o644,
            contents: FileContents::HostFile(big),
        }];
        let fits = build_with_limit(b"agent", &[], Signatures::Detached, &extra, 8192).unwrap();
        assert!(fits.len() <= 8192);
        let err = build_with_limit(b"agent", &[], Signatures::Detached, &extra, 4096).unwrap_err();
        assert!(
            matches!(&err, InitramfsError::TooLarge { what, limit: 4096 } if what == "big"),
            "{err}"
        );
        let err = build_with_limit(&[0; 100], &[], Signatures::Detached, &[], 50).unwrap_err();
        assert!(matches!(err, InitramfsError::TooLarge { .. }), "{err}");
        // An archive whose entries fit but whose trailer and padding do not.
        let err = build_with_limit(b"agent", &[], Signatures::Detached, &[], 1000).unwrap_err();
        assert!(matches!(err, InitramfsError::TooLarge { .. }), "{err}");
    }

    /// Debian's 6.12 modules (`.ko.xz`), where `lab/debian-kernel` has unpacked them: they
    /// resolve, decompress to ELF objects, and a second build takes them from the cache. Prints
    /// both times (a measurement, not a bound).
    #[test]
    fn real_xz_modules_decompress() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/lab-kernels/debian-6.12/lib/modules");
        let Some(dir) = std::fs::read_dir(&root)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.path())
        else {
            crate::testing::skipped(format_args!(
                "real_xz_modules_decompress: no {}; lab/debian-kernel unpacks it",
                root.display()
            ));
            return;
        };
        let wanted = [
            "virtio_mmio",
            "vmw_vsock_virtio_transport",
            "virtio_blk",
            "ext4",
            "overlay",
            "erofs",
        ];
        let modules = resolve_modules(&dir, &wanted).unwrap();
        assert!(
            modules
                .iter()
                .all(|m| m.path.to_string_lossy().ends_with(".ko.xz"))
        );
        let packed: u64 = modules
            .iter()
            .map(|m| std::fs::metadata(&m.path).unwrap().len())
            .sum();
        let started = std::time::Instant::now();
        let cold = build(b"agent", &modules, Signatures::Detached, &[]).unwrap();
        let cold_time = started.elapsed();
        let started = std::time::Instant::now();
        let warm = build(b"agent", &modules, Signatures::Detached, &[]).unwrap();
        let warm_time = started.elapsed();
        assert_eq!(*cold, *warm);
        let entries = parse(&cold);
        let order =
            String::from_utf8(find(&entries, "lib/modules/zones/order").data.clone()).unwrap();
        let mut unpacked = 0;
        for line in order.lines() {
            let data = &find(&entries, &format!("lib/modules/zones/{line}")).data;
            assert_eq!(&data[..4], b"\x7fELF", "{line}");
            unpacked += data.len();
        }
        println!(
            "{} modules, {packed} bytes as .ko.xz, {unpacked} decompressed: initramfs built in {cold_time:?}, again (cached) in {warm_time:?}",
            modules.len()
        );
    }

    /// The host's own kernel modules (its newest /boot/vmlinuz-*), when they are a Debian-style
    /// modular tree with these drivers as uncompressed modules.
    #[test]
    fn real_debian_modules_resolve() {
        let skip = |why: String| {
            crate::testing::skipped(format_args!("real_debian_modules_resolve: {why}"));
        };
        let Ok((version, _)) = crate::linux::newest_host_kernel(Path::new("/boot")) else {
            return skip("no /boot/vmlinuz-* on this host".into());
        };
        let dir = Path::new("/lib/modules").join(version);
        let dir = dir.as_path();
        if !dir.join("modules.dep").exists() {
            return skip(format!("{} has no modules.dep", dir.display()));
        }
        let wanted = [
            "virtio_mmio",
            "vmw_vsock_virtio_transport",
            "virtio_blk",
            "ext4",
        ];
        let modules = match resolve_modules(dir, &wanted) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        if names(&modules).len() < 8 {
            return skip(format!("{} builds these drivers in", dir.display()));
        }
        println!("resolved: {:?}", names(&modules));
        for m in &modules {
            assert!(m.path.is_file(), "{} missing", m.path.display());
        }
        let position = |name: &str| {
            names(&modules)
                .iter()
                .position(|n| *n == name)
                .unwrap_or_else(|| panic!("{name} not resolved"))
        };
        assert!(position("virtio_ring") < position("virtio"));
        assert!(position("virtio") < position("virtio_mmio"));
        assert!(position("vsock") < position("vmw_vsock_virtio_transport_common"));
        assert!(
            position("vmw_vsock_virtio_transport_common") < position("vmw_vsock_virtio_transport")
        );
        for name in ["jbd2", "mbcache", "crc16"] {
            assert!(position(name) < position("ext4"), "{name}");
        }
        let unique: HashSet<&str> = names(&modules).into_iter().collect();
        assert_eq!(unique.len(), modules.len());

        // ext4 and jbd2 have a soft dependency on crc32c (modules.softdep), which is a module
        // here: it must be asked for by name, spelt either way.
        let crc = resolve_modules(dir, &["crc32c-intel", "crc32c_generic"]).unwrap();
        assert_eq!(names(&crc), ["crc32c_intel", "crc32c_generic"]);

        let archive = build(b"agent", &modules, Signatures::Detached, &[]).unwrap();
        println!("initramfs with those modules: {} bytes", archive.len());
        let entries = parse(&archive);
        let order =
            String::from_utf8(find(&entries, "lib/modules/zones/order").data.clone()).unwrap();
        assert_eq!(order.lines().count(), modules.len());
        for (line, module) in order.lines().zip(&modules) {
            let e = find(&entries, &format!("lib/modules/zones/{line}"));
            let host = std::fs::read(&module.path).unwrap();
            // A signed module arrives as its object and its signature beside it, whole.
            let signature = entries
                .iter()
                .find(|s| s.name == format!("lib/modules/zones/{line}.sig"));
            match signature {
                Some(sig) => assert_eq!([e.data.as_slice(), &sig.data].concat(), host, "{line}"),
                None => assert_eq!(e.data, host, "{line}"),
            }
        }
    }
}
