//! Linux zones: a real kernel booted with the 64-bit boot protocol, hardware-reduced ACPI, a
//! serial console and (next) virtio-mmio devices.

mod acpi;
mod boot;
mod cpu;
mod exits;
pub(crate) mod layout;

pub use acpi::AcpiError;
pub use boot::BootError;

use crate::builder::BuildError;
use crate::devices::power::PowerRegister;
use crate::devices::serial::SerialPort;
use crate::devices::{Bus, BusError};
use crate::host_fn::HostFunctions;
use crate::vmm::Settings;
use crate::zone::Zone;
use exits::LinuxExits;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Smallest memory a Linux zone may have.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Largest kernel image read from disk.
const MAX_KERNEL_BYTES: u64 = 512 << 20;
/// Command line every Linux zone starts with; [`LinuxBoot::cmdline`] appends to it.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=t panic=-1 8250.nr_uarts=1 pci=off no_timer_check quiet rdinit=/init";

/// A kernel image: a file or bytes.
#[derive(Clone, Debug)]
enum Image {
    Path(PathBuf),
    Bytes(Arc<[u8]>),
}

impl Image {
    fn read(&self, what: &'static str) -> Result<Arc<[u8]>, LinuxError> {
        match self {
            Image::Bytes(b) => Ok(b.clone()),
            Image::Path(p) => {
                let meta = std::fs::metadata(p).map_err(|source| LinuxError::Read {
                    what,
                    path: p.clone(),
                    source,
                })?;
                if meta.len() > MAX_KERNEL_BYTES {
                    return Err(LinuxError::TooLarge {
                        what,
                        path: p.clone(),
                        len: meta.len(),
                    });
                }
                let bytes = std::fs::read(p).map_err(|source| LinuxError::Read {
                    what,
                    path: p.clone(),
                    source,
                })?;
                Ok(bytes.into())
            }
        }
    }
}

/// How to boot a Linux zone.
#[derive(Clone, Debug)]
pub struct LinuxBoot {
    kernel: Image,
    initrd: Option<Image>,
    cmdline: Vec<String>,
    hide_xsave: bool,
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
        Self {
            kernel: Image::Path(kernel.into()),
            initrd: None,
            cmdline: Vec::new(),
            hide_xsave: false,
        }
    }

    /// Boots a kernel image held in memory.
    pub fn from_image(kernel: impl Into<Arc<[u8]>>) -> Self {
        Self {
            kernel: Image::Bytes(kernel.into()),
            initrd: None,
            cmdline: Vec::new(),
            hide_xsave: false,
        }
    }

    /// Boots this host's newest `/boot/vmlinuz-*`.
    pub fn host_kernel() -> Result<Self, LinuxError> {
        Ok(Self::new(newest_host_kernel(Path::new("/boot"))?.1))
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

    /// Hides XSAVE and the AVX family from the guest's CPUID. Needed where the host does not
    /// virtualize XSETBV (QEMU's software SVM, i.e. the lab); costs AVX elsewhere.
    pub fn hide_xsave(mut self, hide: bool) -> Self {
        self.hide_xsave = hide;
        self
    }

    /// The full kernel command line.
    pub fn full_cmdline(&self) -> String {
        std::iter::once(BASE_CMDLINE)
            .chain(self.cmdline.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The newest `vmlinuz-<version>` in `boot_dir` by version order: `(version, path)`.
fn newest_host_kernel(boot_dir: &Path) -> Result<(String, PathBuf), LinuxError> {
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

/// Builds and starts a Linux zone.
pub(crate) fn build(
    s: &Settings,
    boot: &LinuxBoot,
    _functions: HostFunctions,
) -> Result<Zone, BuildError> {
    let err = |source: LinuxError| BuildError::Linux {
        zone: s.zone.clone(),
        source,
    };
    if s.mem_size < MIN_MEMORY_MIB << 20 {
        return Err(err(LinuxError::MemoryTooSmall(s.mem_size >> 20)));
    }
    let kernel_image = boot.kernel.read("kernel").map_err(err)?;
    let initramfs = match &boot.initrd {
        Some(image) => image.read("initramfs").map_err(err)?,
        None => Arc::from(&b""[..]),
    };
    let cmdline = boot.full_cmdline();

    let vm = s.open_vm()?;
    vm.fd
        .set_tss_address(layout::KVM_TSS as usize)
        .map_err(s.vm_err("KVM_SET_TSS_ADDR"))?;
    vm.fd
        .create_irq_chip()
        .map_err(s.vm_err("KVM_CREATE_IRQCHIP"))?;
    let mem = s.memory(&vm, &layout::ram_regions(s.mem_size))?;
    cpu::write_tables(&mem).map_err(|e| err(e.into()))?;
    let kernel = boot::load_kernel(&mem, &kernel_image).map_err(|e| err(e.into()))?;
    let initrd_at = if initramfs.is_empty() {
        0
    } else {
        boot::load_initramfs(&mem, &kernel, s.mem_size, &initramfs).map_err(|e| err(e.into()))?
    };
    boot::write_boot_params(
        &mem,
        &kernel,
        &cmdline,
        (initrd_at, initramfs.len() as u64),
        s.mem_size,
    )
    .map_err(|e| err(e.into()))?;
    for (at, table) in acpi::tables(s.vcpus, &[]).map_err(|e| err(e.into()))? {
        mem.write_slice(&table, GuestAddress(at))
            .map_err(|e| err(e.into()))?;
    }

    let shared = s.shared(&mem);
    let mut pio = Bus::default();
    let serial_irq = irq_line(&vm.fd, layout::SERIAL_GSI).map_err(err)?;
    let console = exits::ConsoleWriter(shared.clone());
    pio.insert(
        u64::from(layout::SERIAL_PORT),
        8,
        Arc::new(SerialPort::new(serial_irq, Box::new(console))),
    )
    .map_err(|e| err(e.into()))?;
    let power_shared = shared.clone();
    let power = PowerRegister::new(
        acpi::RESET_VALUE,
        acpi::S5_SLP_TYP,
        Box::new(move |request| exits::stop_reason(&power_shared, request)),
    );
    pio.insert(u64::from(layout::ACPI_PM_PORT), 1, Arc::new(power))
        .map_err(|e| err(e.into()))?;

    let vcpus = s.vcpus(&vm, |fd, index| {
        cpu::configure_vcpu(fd, index, s.vcpus, kernel.entry, &vm.cpuid, boot.hide_xsave)
    })?;
    let exits = Arc::new(LinuxExits {
        pio,
        mmio: Bus::default(),
        shared: shared.clone(),
    });
    s.launch(vm, shared, vcpus, exits)
}

/// An eventfd wired to interrupt `gsi` of the in-kernel IOAPIC.
fn irq_line(vm: &kvm_ioctls::VmFd, gsi: u32) -> Result<EventFd, LinuxError> {
    let irq_err = |source| LinuxError::Irq { gsi, source };
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(irq_err)?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|e| irq_err(std::io::Error::from_raw_os_error(e.errno())))?;
    Ok(evt)
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
            format!("{BASE_CMDLINE} loglevel=7 foo=bar")
        );
    }
}
