//! Linux zones: a real kernel booted with the 64-bit boot protocol, hardware-reduced ACPI, a
//! serial console and (next) virtio-mmio devices.

mod acpi;
mod agent;
mod blob;
use blob::{Blob, Loadable, Scratch};
mod boot;
mod cache;
mod cpio;
mod cpu;
mod decompress;
mod devices;
mod disk;
mod elf_kernel;
mod exits;
mod guest_read;
mod initramfs;
mod initramfs_cache;
pub(crate) mod layout;
mod module_sig;
mod payload;
pub(crate) mod pci;
pub(crate) mod rootfs;

pub use acpi::AcpiError;
pub use boot::BootError;
pub use cpio::CpioError;
pub use decompress::DecompressError;
pub use disk::{Disk, DiskError};
pub use initramfs::InitramfsError;
pub use pci::PciBusError;
pub use rootfs::{FsType, ImageConfig, LayerError, MkfsError, OciError, Rootfs, RootfsError};

use crate::builder::BuildError;
use crate::device::{Attachment, MsiRouter, VmHandle};
use crate::devices::BusError;
use crate::devices::virtio::vsock::{Vsock, backend::Backend};
use crate::host_fn::HostFunctions;
use crate::vmm::Settings;
use crate::zone::Zone;
use exits::LinuxExits;
use initramfs::{ExtraFile, FileContents};
use pci::PciBusBuilder;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

/// Smallest memory a Linux zone may have.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Largest kernel image read from disk.
const MAX_KERNEL_BYTES: u64 = 512 << 20;
/// Command line every Linux zone starts with; [`LinuxBoot::cmdline`] appends to it (a later
/// argument wins: `cryptomgr.notests=0` turns the self-tests back on). A zone without a PCI
/// function also gets [`NO_PCI`].
///
/// `cryptomgr.notests` skips the guest kernel's boot-time self-tests of its crypto algorithms
/// (about 0.3 s of the Debian kernel's start in the lab, the largest single item of its boot).
/// They check that the kernel's own implementations compute correctly on this CPU; they defend
/// nothing against the guest or the host. Kata Containers boots its guests with the same
/// argument. A kernel booted with `fips=1` runs them regardless.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 8250.nr_uarts=1 no_timer_check \
     cryptomgr.notests quiet rdinit=/init";
/// What a zone without a PCI bus adds to [`BASE_CMDLINE`]: the guest does not look for one.
pub const NO_PCI: &str = "pci=off";

/// A kernel image: a file or bytes.
#[derive(Clone, Debug)]
enum Image {
    Path(PathBuf),
    Bytes(Arc<[u8]>),
}

impl Image {
    /// The file it is read from, if it is one.
    fn path(&self) -> Option<&Path> {
        match self {
            Image::Path(p) => Some(p),
            Image::Bytes(_) => None,
        }
    }

    fn read(&self, what: &'static str) -> Result<Blob, LinuxError> {
        match self {
            Image::Bytes(b) => Ok(Blob::Shared(b.clone())),
            Image::Path(p) => {
                let read_error = |source| LinuxError::Read {
                    what,
                    path: p.clone(),
                    source,
                };
                let file = std::fs::File::open(p).map_err(read_error)?;
                let len = file.metadata().map_err(read_error)?.len();
                let too_large = |len| LinuxError::TooLarge {
                    what,
                    path: p.clone(),
                    len,
                };
                if len > MAX_KERNEL_BYTES {
                    return Err(too_large(len));
                }
                // Outside the heap: the image is garbage once copied into the guest.
                match Scratch::read_file(&file, MAX_KERNEL_BYTES as usize).map_err(read_error)? {
                    Some(bytes) => Ok(Blob::Scratch(bytes)),
                    None => Err(too_large(MAX_KERNEL_BYTES + 1)),
                }
            }
        }
    }
}

/// Modules the agent needs from a modular kernel (skipped when built in).
const AGENT_MODULES: [&str; 2] = ["virtio_mmio", "vmw_vsock_virtio_transport"];
/// The module a zone with a disk (its own or its root filesystem's) needs besides.
const DISK_MODULE: &str = "virtio_blk";

/// How to boot a Linux zone.
///
/// By default the SDK writes the initramfs itself: the zones agent as `/init`, the kernel modules
/// it needs (from the modules directory, when the kernel is modular) and any extra files; the
/// zone then runs commands with [`ZoneHandle::exec`](crate::ZoneHandle::exec). With
/// [`LinuxBoot::initrd`] a custom initramfs replaces all of that (and `exec` is unavailable).
///
/// The archive is cached on disk (`initramfs/` in the directory [`Rootfs::cache_dir`]
/// describes, owner-only, the 16 most recently used kept), keyed by the agent and by every
/// input's path and identity (device, inode, size, modification and change times), so a zone
/// whose archive an earlier one made, in this process or another, has it read straight into its
/// memory. An archive with a file given as bytes ([`LinuxBoot::file_bytes`]) is
/// never cached: those bytes may be meant for one zone alone.
#[derive(Clone, Debug)]
pub struct LinuxBoot {
    kernel: Image,
    initrd: Option<Image>,
    modules_dir: Option<PathBuf>,
    modules: Vec<String>,
    files: Vec<ExtraFile>,
    disks: Vec<Disk>,
    rootfs: Option<Box<Rootfs>>,
    cmdline: Vec<String>,
    hide_xsave: bool,
    host_decompress: bool,
    guest_checks_signatures: bool,
}

/// Why a Linux zone could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinuxError {
    /// A file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is implausibly large.
    #[error("the {what} {path} has {len} bytes, more than a kernel image can have")]
    TooLarge {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// No kernel in /boot.
    #[error(
        "no /boot/vmlinuz-* kernel on this host: install one (Debian: apt-get install linux-image-amd64) or pass a kernel to LinuxBoot::new"
    )]
    NoHostKernel,
    /// Too little memory.
    #[error("a Linux zone needs at least {MIN_MEMORY_MIB} MiB of memory, {0} MiB given")]
    MemoryTooSmall(u64),
    /// Kernel loading or boot data failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// Devices overlap (a VMM bug).
    #[error("placing devices: {0}")]
    Bus(#[from] BusError),
    /// Writing guest memory failed.
    #[error("writing guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// More devices than IOAPIC lines.
    #[error("{0} virtio devices do not fit the IOAPIC's lines; use fewer disks")]
    TooManyDevices(usize),
    /// A disk could not be attached.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A device model could not be set up.
    #[error("device setup: {0}")]
    Device(String),
    /// The PCI bus could not be set up.
    #[error(transparent)]
    Pci(#[from] PciBusError),
    /// A device's thread could not be started.
    #[error("cannot start the thread of device {device}: {source}")]
    DeviceThread {
        /// The device.
        device: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The root filesystem could not be prepared.
    #[error(transparent)]
    Rootfs(Box<RootfsError>),
    /// A root filesystem was given with a custom initramfs, which has no agent to mount it.
    #[error(
        "LinuxBoot::rootfs needs the zones agent, which a custom initramfs (LinuxBoot::initrd) \
         replaces: drop one of the two"
    )]
    RootfsWithInitrd,
    /// An interrupt line could not be wired.
    #[error("wiring interrupt {gsi}: {source}")]
    Irq {
        /// The GSI.
        gsi: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl LinuxBoot {
    /// Boots the kernel image at `kernel` (an ELF vmlinux with a 64-bit entry point, or a bzImage).
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self::with(Image::Path(kernel.into()))
    }

    /// Boots a kernel image held in memory.
    pub fn from_image(kernel: impl Into<Arc<[u8]>>) -> Self {
        Self::with(Image::Bytes(kernel.into()))
    }

    fn with(kernel: Image) -> Self {
        Self {
            kernel,
            initrd: None,
            modules_dir: None,
            modules: Vec::new(),
            files: Vec::new(),
            disks: Vec::new(),
            rootfs: None,
            cmdline: Vec::new(),
            hide_xsave: false,
            host_decompress: true,
            guest_checks_signatures: false,
        }
    }

    /// Boots this host's newest `/boot/vmlinuz-*` with its modules from `/lib/modules/<version>`.
    ///
    /// ```no_run
    /// use zone_core::{Disk, LinuxBoot, Zone};
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let boot = LinuxBoot::host_kernel()?
    ///     .busybox()                                   // a userland: busybox and its applets
    ///     .module("ext4")                              // loaded at boot, dependencies too
    ///     .file("/etc/motd", "/etc/hostname", 0o644)   // a host file copied into the guest
    ///     .disk(Disk::raw("data.img").read_only(true).id("data")); // /dev/vda, serial "data"
    /// let zone = Zone::builder().memory_mib(256).vcpus(2).linux(boot).build()?;
    /// # Ok(()) }
    /// ```
    pub fn host_kernel() -> Result<Self, LinuxError> {
        let (version, path) = newest_host_kernel(Path::new("/boot"))?;
        Ok(Self::new(path).modules_dir(Path::new("/lib/modules").join(version)))
    }

    /// Takes kernel modules from `dir` (a `/lib/modules/<version>` tree with `modules.dep`).
    /// Without it, the kernel must have virtio-mmio, vsock and virtio-blk built in.
    pub fn modules_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.modules_dir = Some(dir.into());
        self
    }

    /// Also loads module `name` (and its dependencies) at boot, e.g. `ext4`.
    pub fn module(mut self, name: impl Into<String>) -> Self {
        self.modules.push(name.into());
        self
    }

    /// Whether the guest kernel checks each module's signature when the agent loads it
    /// (default: no).
    ///
    /// The modules come from the host's module directory, chosen by the host, in an archive
    /// only the host writes: the guest kernel's check of them decides nothing the host has not
    /// already decided, and costs about 9 ms a module under the lab's emulation (an RSA
    /// verification each; a diskless Debian zone loads six). So by default the agent loads each
    /// module without its signature, which the guest kernel notes by tainting itself
    /// (`E` in `/proc/sys/kernel/tainted`, "module verification failed" in its log). A kernel that
    /// demands signatures (`module.sig_enforce=1`, `CONFIG_MODULE_SIG_FORCE`, lockdown) gets
    /// them anyway: the agent then loads the module with its signature. `true` loads every
    /// module with its signature from the start.
    pub fn guest_checks_module_signatures(mut self, on: bool) -> Self {
        self.guest_checks_signatures = on;
        self
    }

    /// Copies the host file `host` into the guest at `guest` (an absolute path) with `mode`.
    pub fn file(self, guest: &str, host: impl Into<PathBuf>, mode: u32) -> Self {
        self.extra(guest, mode, FileContents::HostFile(host.into()))
    }

    /// Puts `bytes` into the guest at `guest` (an absolute path) with `mode`.
    pub fn file_bytes(self, guest: &str, bytes: impl Into<Arc<[u8]>>, mode: u32) -> Self {
        self.extra(guest, mode, FileContents::Bytes(bytes.into()))
    }

    fn extra(mut self, guest: &str, mode: u32, contents: FileContents) -> Self {
        let guest_path = guest.trim_start_matches('/').to_string();
        self.files.push(ExtraFile {
            guest_path,
            mode,
            contents,
        });
        self
    }

    /// Attaches a disk (virtio-blk): `/dev/vda` for the first, `/dev/vdb` for the second, ...
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Runs the zone's commands in `rootfs`: an image, a directory or an OCI image, shared
    /// read-only, with a writable layer of the zone's own on top (see [`Rootfs`]). The agent
    /// mounts it and switches root before it serves exec, so commands see the image's userland
    /// (and, for OCI images, its `Env`, `WorkingDir` and `User`). With a modules directory, the
    /// filesystem's module and `overlay` are loaded at boot; a kernel without them is refused
    /// with the module's name.
    ///
    /// ```no_run
    /// use zone_core::{Command, LinuxBoot, Rootfs, Zone};
    /// let zone = Zone::builder()
    ///     .memory_mib(512)
    ///     .linux(LinuxBoot::host_kernel()?.rootfs(Rootfs::dir("/srv/debian-python")))
    ///     .build()?;
    /// let out = zone.exec(&Command::new("python3").arg("-c").arg("print(6*7)"))?;
    /// assert_eq!(out.stdout, b"42\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rootfs(mut self, rootfs: Rootfs) -> Self {
        self.rootfs = Some(Box::new(rootfs));
        self
    }

    /// Adds this host's static busybox as `/bin/busybox` with `/bin/sh` and common applets
    /// linked to it: a userland for commands. `/bin/busybox` must be statically linked
    /// (Debian: busybox-static).
    pub fn busybox(mut self) -> Self {
        self = self.file("/bin/busybox", "/bin/busybox", 0o755);
        for applet in BUSYBOX_APPLETS {
            let link = FileContents::Symlink("busybox".into());
            self = self.extra(&format!("/bin/{applet}"), 0o777, link);
        }
        self
    }

    /// Uses `initrd` (a cpio archive, possibly compressed) as the initramfs.
    pub fn initrd(mut self, initrd: impl Into<Arc<[u8]>>) -> Self {
        self.initrd = Some(Image::Bytes(initrd.into()));
        self
    }

    /// Appends arguments to the kernel command line (after [`BASE_CMDLINE`]).
    pub fn cmdline(mut self, args: impl Into<String>) -> Self {
        self.cmdline.push(args.into());
        self
    }

    /// Whether a bzImage's kernel is decompressed on the host (default: yes), so that the guest
    /// starts the kernel itself instead of the bzImage's decompressor. The decompressed kernel
    /// is cached on disk (`kernels/` in the directory [`Rootfs::cache_dir`] describes), so only
    /// a kernel's first zone pays for it; nothing of it stays in memory. gzip and zstd payloads are decompressed in-process, xz ones by the `xz` program
    /// (their x86 BCJ filter is beyond the pure-Rust decoder); any other payload, or no `xz`,
    /// boots as the bzImage it is. The guest then runs at the kernel's link address (no KASLR
    /// of the kernel image, as with Firecracker's and Cloud Hypervisor's vmlinux boots).
    pub fn decompress_on_host(mut self, on: bool) -> Self {
        self.host_decompress = on;
        self
    }

    /// Hides XSAVE and the AVX family from the guest's CPUID. Needed where the host does not
    /// virtualize XSETBV (QEMU's software SVM, i.e. the lab); costs AVX elsewhere.
    pub fn hide_xsave(mut self, hide: bool) -> Self {
        self.hide_xsave = hide;
        self
    }

    /// The full kernel command line (without what attached devices add: a zone with a PCI
    /// function boots without [`NO_PCI`]).
    pub fn full_cmdline(&self) -> String {
        self.cmdline_with(&[], false)
    }

    fn cmdline_with(&self, extra: &[String], pci: bool) -> String {
        std::iter::once(BASE_CMDLINE)
            .chain((!pci).then_some(NO_PCI))
            .chain(self.cmdline.iter().map(String::as_str))
            .chain(extra.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Applets linked to busybox by [`LinuxBoot::busybox`].
const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "echo",
    "ls",
    "mkdir",
    "mount",
    "umount",
    "uname",
    "date",
    "sleep",
    "head",
    "tail",
    "dd",
    "sha256sum",
    "md5sum",
    "wc",
    "grep",
    "sed",
    "awk",
    "tr",
    "cut",
    "sort",
    "yes",
    "true",
    "false",
    "env",
    "printf",
    "test",
    "[",
    "ps",
    "kill",
    "cp",
    "mv",
    "rm",
    "touch",
    "chmod",
    "ln",
    "find",
    "xargs",
    "seq",
    "stat",
    "df",
    "free",
    "id",
    "hostname",
    "nproc",
    "od",
    "hexdump",
    "base64",
    "gzip",
    "sync",
    "nc",
    "wget",
    "nslookup",
    "ping",
    "ip",
    "ifconfig",
    "route",
    "netstat",
    "timeout",
    "tee",
    "which",
];

/// The newest `vmlinuz-<version>` in `boot_dir` by version order: `(version, path)`.
pub(crate) fn newest_host_kernel(boot_dir: &Path) -> Result<(String, PathBuf), LinuxError> {
    let entries = std::fs::read_dir(boot_dir).map_err(|_| LinuxError::NoHostKernel)?;
    let mut kernels: Vec<(Vec<u64>, String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            let key = version
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            Some((key, version, e.path()))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .map(|(_, v, p)| (v, p))
        .ok_or(LinuxError::NoHostKernel)
}

impl LinuxBoot {
    /// The initramfs: the given one, or the agent with modules (those the agent needs, those
    /// named, and `device_modules` for attached devices) and extra files. The second value says
    /// whether the agent is in it.
    fn initramfs(
        &self,
        device_modules: &[String],
        rootfs: Option<&rootfs::Prepared>,
    ) -> Result<(Loadable, bool), LinuxError> {
        if let Some(image) = &self.initrd {
            if rootfs.is_some() {
                return Err(LinuxError::RootfsWithInitrd);
            }
            return Ok((Loadable::Bytes(image.read("initramfs")?), false));
        }
        let modules = match &self.modules_dir {
            Some(dir) => {
                let mut wanted: Vec<&str> = AGENT_MODULES.to_vec();
                // Loading a module costs boot time: the disk driver only where a disk is.
                if !self.disks.is_empty() || rootfs.is_some() {
                    wanted.push(DISK_MODULE);
                }
                wanted.extend(self.modules.iter().map(String::as_str));
                wanted.extend(device_modules.iter().map(String::as_str));
                if let Some(r) = rootfs {
                    wanted.extend(r.modules());
                    // ext4 images with metadata checksums need crc32c (a soft dependency
                    // that depmod does not list): load it where the kernel has it as a module.
                    if initramfs_cache::resolve_modules(dir, &["crc32c_generic"]).is_ok() {
                        wanted.push("crc32c_generic");
                    }
                }
                let mut seen = std::collections::HashSet::new();
                wanted.retain(|m| seen.insert(m.replace('-', "_")));
                initramfs_cache::resolve_modules(dir, &wanted)?
            }
            None => Vec::new(),
        };
        // Bytes the caller gave may be a secret for this zone: never written to the cache.
        let cacheable = self
            .files
            .iter()
            .all(|f| !matches!(f.contents, FileContents::Bytes(_)));
        let mut files = self.files.clone();
        if let Some(r) = rootfs {
            files.push(ExtraFile {
                guest_path: rootfs::config_path().to_owned(),
                mode: 0o644,
                contents: FileContents::Bytes(r.agent_config().into_bytes().into()),
            });
        }
        let signatures = if self.guest_checks_signatures {
            initramfs::Signatures::Attached
        } else {
            initramfs::Signatures::Detached
        };
        let dir = initramfs_cache::cache_dir();
        let cached = cacheable
            .then(|| {
                initramfs_cache::file_name(agent::GENERATOR_SHA256, &modules, signatures, &files)
            })
            .flatten();
        if let Some(name) = &cached
            && let Some(archive) =
                initramfs_cache::lookup(&dir, name, initramfs::MAX_INITRAMFS as u64)
        {
            return Ok((archive, true));
        }
        let archive = initramfs::build(agent::AGENT, &modules, signatures, &files)?;
        if let Some(name) = &cached {
            initramfs_cache::keep(&dir, name, &archive);
        }
        Ok((Loadable::Bytes(archive), true))
    }
}

/// Builds and starts a Linux zone.
pub(crate) fn build(
    s: &Settings,
    boot: &LinuxBoot,
    _functions: HostFunctions,
    attachments: Vec<Box<dyn Attachment>>,
) -> Result<Zone, BuildError> {
    let err = |source: LinuxError| BuildError::Linux {
        zone: s.zone.clone(),
        source,
    };
    if s.mem_size < MIN_MEMORY_MIB << 20 {
        return Err(err(LinuxError::MemoryTooSmall(s.mem_size >> 20)));
    }
    let mut phases = crate::trace::Phases::new(&s.zone);
    let mut attachments = devices::Attachments::name(attachments);
    let guest = attachments.prepare(&s.zone)?;
    let cached = match (boot.host_decompress, boot.kernel.path()) {
        (true, Some(path)) => payload::cached_vmlinux(path, &payload::cache_dir()),
        _ => None,
    };
    let mut kernel_image = match cached {
        // The vmlinux decompressed for an earlier zone: the bzImage is not even read.
        Some(vmlinux) => {
            phases.done("kernel read");
            vmlinux
        }
        None => {
            let image = boot.kernel.read("kernel").map_err(err)?;
            phases.done("kernel read");
            match boot.host_decompress {
                true => {
                    match payload::vmlinux(boot.kernel.path(), &image, Some(&payload::cache_dir()))
                    {
                        Ok(vmlinux) => {
                            phases.done("kernel decompressed (host)");
                            vmlinux
                        }
                        Err(kept) => {
                            tracing::debug!(target: "zones::build", zone = %s.zone, reason = ?kept, "kernel left compressed");
                            Loadable::Bytes(image)
                        }
                    }
                }
                false => Loadable::Bytes(image),
            }
        }
    };
    let rootfs = match &boot.rootfs {
        Some(r) => Some(
            r.prepare()
                .map_err(|e| err(LinuxError::Rootfs(Box::new(e))))?,
        ),
        None => None,
    };
    phases.done("root filesystem");
    let (mut initramfs, with_agent) = boot
        .initramfs(&guest.modules, rootfs.as_ref())
        .map_err(err)?;
    phases.done("initramfs");
    let cmdline = boot.cmdline_with(&guest.cmdline, guest.pci);
    let rootfs_disks = rootfs
        .as_ref()
        .map(rootfs::Prepared::disks)
        .unwrap_or_default();
    let disks = boot
        .disks
        .iter()
        .chain(&rootfs_disks)
        .map(Disk::open)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.into()))?;

    let vm = s.open_vm()?;
    vm.fd
        .set_tss_address(layout::KVM_TSS as usize)
        .map_err(s.vm_err("KVM_SET_TSS_ADDR"))?;
    vm.fd
        .create_irq_chip()
        .map_err(s.vm_err("KVM_CREATE_IRQCHIP"))?;
    let mem = s.memory(&vm, &layout::ram_regions(s.mem_size))?;
    phases.done("VM and memory");
    let shared = s.shared(&mem);
    let reader_filter = || {
        shared.thread_filter(
            crate::seccomp::ThreadKind::Helper,
            vec![libc::SYS_pread64],
            "boot-file reader".into(),
        )
    };
    let kernel = load(
        &mem,
        &mut kernel_image,
        &mut initramfs,
        &cmdline,
        s.mem_size,
        &guest_read::Readers::for_host(&reader_filter),
    )
    .map_err(err)?;
    // Copied into the guest: the build's large buffers are garbage now.
    drop((kernel_image, initramfs));
    phases.done("kernel and boot data loaded");

    let pio = devices::legacy(&vm.fd, &shared).map_err(err)?;
    let mut virtio = devices::VirtioBus::new(&vm.fd, &mem, &s.zone, &shared, guest.pci);
    if with_agent {
        let backend = Arc::new(
            Backend::new(devices::GUEST_CID).map_err(|e| err(LinuxError::Device(e.to_string())))?,
        );
        shared.devices.register("vsock", backend.clone());
        virtio
            .add("vsock", Box::new(Vsock::new(devices::GUEST_CID, backend)))
            .map_err(err)?;
    }
    for (i, disk) in disks.into_iter().enumerate() {
        let name = format!("blk{i}");
        shared.devices.register(&name, disk.stats());
        virtio.add(&name, Box::new(disk)).map_err(err)?;
    }
    let vm_handle = match guest.pci {
        true => Some(VmHandle::dup(&vm.fd).map_err(|e| err(LinuxError::Device(e.to_string())))?),
        false => None,
    };
    let mut pci = match &vm_handle {
        Some(handle) => Some((
            PciBusBuilder::new(s.mem_size, cpu::phys_bits(&vm.cpuid)).map_err(|e| err(e.into()))?,
            MsiRouter::new(handle.clone()),
        )),
        None => None,
    };
    attachments.attach(
        &s.zone,
        &shared,
        &mut virtio,
        pci.as_mut().map(|(bus, router)| (bus, router.clone())),
    )?;
    let pci_root = pci.as_ref().map(|(bus, _)| {
        let (low, high) = bus.windows();
        acpi::PciRoot { low, high }
    });
    let tables = acpi::tables(s.vcpus, &virtio.described, pci_root.as_ref());
    for (at, table) in tables.map_err(|e| err(e.into()))? {
        mem.write_slice(&table, GuestAddress(at))
            .map_err(|e| err(e.into()))?;
    }
    let mut mmio = virtio.mmio;
    let pci_bus = pci.map(|(bus, _)| bus.finish(vm_handle));
    if let Some(bus) = &pci_bus {
        bus.place(&mut mmio).map_err(|e| err(e.into()))?;
    }
    phases.done("devices");

    let vcpus = s.vcpus(&vm, |fd, index| {
        cpu::configure_vcpu(fd, index, s.vcpus, kernel.entry, &vm.cpuid, boot.hide_xsave)
    })?;
    phases.done("vCPUs");
    let exits = Arc::new(LinuxExits {
        pio,
        mmio,
        shared: shared.clone(),
    });
    let vcpu_kind = match pci_bus.is_some() {
        true => crate::seccomp::ThreadKind::PciVcpu,
        false => crate::seccomp::ThreadKind::Vcpu,
    };
    let threads = s.vcpu_threads(vcpu_kind, Arc::new(|_| {}), std::time::Duration::ZERO)?;
    let mut zone = s.launch(vm, shared, vcpus, exits, threads, phases)?;
    zone.keep
        .extend(pci_bus.map(|b| b as Arc<dyn std::any::Any + Send + Sync>));
    Ok(zone)
}

/// Writes boot tables, kernel, initramfs, command line and boot parameters into guest memory;
/// files are read by `readers`.
fn load(
    mem: &vm_memory::GuestMemoryMmap,
    kernel_image: &mut Loadable,
    initramfs: &mut Loadable,
    cmdline: &str,
    mem_size: u64,
    readers: &guest_read::Readers<'_>,
) -> Result<boot::LoadedKernel, LinuxError> {
    cpu::write_tables(mem)?;
    let kernel = boot::load_kernel(mem, kernel_image, readers)?;
    let len = initramfs.len()?;
    let initrd_at = match len {
        0 => 0,
        _ => boot::load_initramfs(mem, &kernel, mem_size, initramfs, readers)?,
    };
    boot::write_boot_params(mem, &kernel, cmdline, (initrd_at, len), mem_size)?;
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_wins_by_version_not_by_name() {
        let dir = std::env::temp_dir().join(format!("zones-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-56-amd64", "5.10.0-30-amd64"] {
            std::fs::write(dir.join(format!("vmlinuz-{v}")), b"").unwrap();
        }
        std::fs::write(dir.join("config-9.9.9"), b"").unwrap();
        let (version, path) = newest_host_kernel(&dir).unwrap();
        assert_eq!(version, "6.1.0-56-amd64");
        assert!(path.ends_with("vmlinuz-6.1.0-56-amd64"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            newest_host_kernel(&dir),
            Err(LinuxError::NoHostKernel)
        ));
    }

    #[test]
    fn command_line_starts_with_the_base() {
        let boot = LinuxBoot::from_image(vec![0u8; 4])
            .cmdline("loglevel=7")
            .cmdline("foo=bar");
        assert_eq!(
            boot.full_cmdline(),
            format!("{BASE_CMDLINE} {NO_PCI} loglevel=7 foo=bar")
        );
        assert_eq!(
            boot.cmdline_with(&["zones.x=1".into()], true),
            format!("{BASE_CMDLINE} loglevel=7 foo=bar zones.x=1")
        );
    }
}
