//! The grant's checks, against sysfs, before anything is opened: the device exists and is the
//! one expected, it is bound to `vfio-pci`, it has an IOMMU group of its own, no other zone holds
//! it, and its guest's memory may be pinned. Each refusal names its fix.

use crate::Gpu;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a device cannot be passed through.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// Not a PCI address.
    #[error("{address:?} is not a PCI address (domain:bus:device.function, e.g. 0000:41:00.0)")]
    BadAddress {
        /// What was given.
        address: String,
    },
    /// No such device.
    #[error("no PCI device {address} ({path} is missing); list them with `lspci -D`")]
    NoDevice {
        /// The address.
        address: String,
        /// The sysfs path looked at.
        path: String,
    },
    /// The device is not the one the grant expected.
    #[error(
        "PCI device {address} is {found_vendor:04x}:{found_device:04x}, not the {vendor:04x}:{device:04x} the grant expects; check the address"
    )]
    WrongDevice {
        /// The address.
        address: String,
        /// Vendor ID expected.
        vendor: u16,
        /// Device ID expected.
        device: u16,
        /// Vendor ID found.
        found_vendor: u16,
        /// Device ID found.
        found_device: u16,
    },
    /// The device is bound to another driver (or none).
    #[error(
        "PCI device {address} is bound to {driver}, not vfio-pci; as root run:\n  modprobe vfio-pci\n  echo vfio-pci > /sys/bus/pci/devices/{address}/driver_override\n{unbind}  echo {address} > /sys/bus/pci/drivers/vfio-pci/bind\nor grant it with Gpu::bind_vfio(true)"
    )]
    NotVfio {
        /// The address.
        address: String,
        /// Its driver (`no driver` when unbound).
        driver: String,
        /// The unbind line, when it has a driver.
        unbind: String,
    },
    /// The host has no IOMMU (or it is off).
    #[error(
        "PCI device {address} has no IOMMU group: the host runs without an IOMMU; turn it on (VT-d or AMD-Vi in the firmware, intel_iommu=on or amd_iommu=on on the kernel command line). zones never passes a device through without one"
    )]
    NoIommu {
        /// The address.
        address: String,
    },
    /// The device shares its IOMMU group.
    #[error(
        "PCI device {address} shares IOMMU group {group} with {others:?}, which would share its DMA view; put the device in a slot with a group of its own (behind ACS), or leave it on the host"
    )]
    SharedGroup {
        /// The address.
        address: String,
        /// The group.
        group: u32,
        /// The other devices in it.
        others: Vec<String>,
    },
    /// Another zone holds the device.
    #[error("PCI device {address} is passed through to zone {zone} already; drop that zone first")]
    InUse {
        /// The address.
        address: String,
        /// The zone that holds it.
        zone: String,
    },
    /// Another process holds the device's group.
    #[error(
        "the IOMMU group of PCI device {address} is open in another process (a VMM or another program using VFIO); stop it first"
    )]
    Busy {
        /// The address.
        address: String,
    },
    /// The guest memory cannot be pinned.
    #[error(
        "pinning the guest's memory for DMA needs {needed} bytes of RLIMIT_MEMLOCK; the limit is {limit}: raise it (`ulimit -l`, systemd's LimitMEMLOCK=) or give the process CAP_IPC_LOCK"
    )]
    Memlock {
        /// Bytes needed.
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// Guest RAM covers I/O addresses the host's IOMMU reserves: the device could not DMA there.
    #[error(
        "the host's IOMMU reserves I/O address {at:#x} for {address}, inside the zone's guest RAM at {region_start:#x} (+{region_len:#x} bytes), which the device reaches at its guest-physical addresses; the usable ranges are {usable}: give the zone less memory so that its RAM stays inside them"
    )]
    IovaReserved {
        /// The address.
        address: String,
        /// The first reserved I/O address inside guest RAM.
        at: u64,
        /// The guest RAM region.
        region_start: u64,
        /// Its length.
        region_len: u64,
        /// The usable ranges, as VFIO reports them.
        usable: String,
    },
    /// VFIO refused the IOMMU (interrupt remapping off).
    #[error(
        "VFIO refused the IOMMU for {address}: the host's IOMMU has no interrupt remapping, so the device could forge interrupts; turn it on (intremap, x2APIC in the firmware). zones never sets vfio_iommu_type1's allow_unsafe_interrupts"
    )]
    NoInterruptRemapping {
        /// The address.
        address: String,
    },
    /// Binding to vfio-pci failed.
    #[error("binding PCI device {address} to vfio-pci: {detail}")]
    Bind {
        /// The address.
        address: String,
        /// What failed.
        detail: String,
    },
    /// Another VFIO failure.
    #[error("VFIO, PCI device {address}: {detail}")]
    Vfio {
        /// The address.
        address: String,
        /// What failed.
        detail: String,
    },
}

/// A grant that passed the checks, with a claim on its device in this process.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) address: String,
    pub(crate) path: PathBuf,
    pub(crate) group: u32,
    /// Whether the device has a reset the kernel can do.
    pub(crate) resettable: bool,
    pub(crate) _claim: Claim,
}

/// Devices passed through in this process, by address, with their zones.
static CLAIMS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// The claim of one zone on one device; released when dropped.
#[derive(Debug)]
pub(crate) struct Claim(String);

impl Claim {
    fn take(address: &str, zone: &str) -> Result<Self, GpuError> {
        let mut claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
        let claims = claims.get_or_insert_with(HashMap::new);
        if let Some(holder) = claims.get(address) {
            return Err(GpuError::InUse {
                address: address.to_string(),
                zone: holder.clone(),
            });
        }
        claims.insert(address.to_string(), zone.to_string());
        Ok(Self(address.to_string()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = claims.as_mut() {
            c.remove(&self.0);
        }
    }
}

/// `dddd:bb:dd.f` in hex, device below 32, function below 8.
fn valid_address(a: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = a.split([':', '.']).collect();
    match parts.as_slice() {
        [d, b, s, f] if hex(d, 4) && hex(b, 2) && hex(s, 2) && hex(f, 1) => {
            u8::from_str_radix(s, 16).is_ok_and(|s| s < 32) && f.as_bytes()[0] < b'8'
        }
        _ => false,
    }
}

fn read_id(path: &Path) -> Option<u16> {
    let s = std::fs::read_to_string(path).ok()?;
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Runs the grant's checks for zone `zone`.
pub(crate) fn check(gpu: &Gpu, zone: &str) -> Result<Checked, GpuError> {
    let address = gpu.address.to_ascii_lowercase();
    if !valid_address(&address) {
        return Err(GpuError::BadAddress {
            address: gpu.address.clone(),
        });
    }
    let path = gpu.sysfs.join("bus/pci/devices").join(&address);
    if !path.is_dir() {
        return Err(GpuError::NoDevice {
            path: path.display().to_string(),
            address,
        });
    }
    if let Some((vendor, device)) = gpu.expect {
        let found = (read_id(&path.join("vendor")), read_id(&path.join("device")));
        let (found_vendor, found_device) = (found.0.unwrap_or(0), found.1.unwrap_or(0));
        if (found_vendor, found_device) != (vendor, device) {
            return Err(GpuError::WrongDevice {
                address,
                vendor,
                device,
                found_vendor,
                found_device,
            });
        }
    }
    let group = link_name(&path.join("iommu_group"))
        .and_then(|g| g.parse::<u32>().ok())
        .ok_or_else(|| GpuError::NoIommu {
            address: address.clone(),
        })?;
    let members = gpu
        .sysfs
        .join(format!("kernel/iommu_groups/{group}/devices"));
    let mut others: Vec<String> = std::fs::read_dir(&members)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| *n != address)
                .collect()
        })
        .unwrap_or_default();
    if !others.is_empty() {
        others.sort();
        return Err(GpuError::SharedGroup {
            address,
            group,
            others,
        });
    }
    match link_name(&path.join("driver")).as_deref() {
        Some("vfio-pci") => {}
        driver if gpu.bind => bind(&gpu.sysfs, &path, &address, driver)?,
        driver => {
            return Err(GpuError::NotVfio {
                unbind: driver.map_or(String::new(), |_| {
                    format!("  echo {address} > /sys/bus/pci/devices/{address}/driver/unbind\n")
                }),
                driver: driver.unwrap_or("no driver").to_string(),
                address,
            });
        }
    }
    let claim = Claim::take(&address, zone)?;
    Ok(Checked {
        resettable: path.join("reset").exists(),
        address,
        path,
        group,
        _claim: claim,
    })
}

/// Binds the device at `path` to vfio-pci.
fn bind(sysfs: &Path, path: &Path, address: &str, driver: Option<&str>) -> Result<(), GpuError> {
    let err = |what: &str, e: std::io::Error| GpuError::Bind {
        address: address.to_string(),
        detail: format!("{what}: {e}"),
    };
    let vfio = sysfs.join("bus/pci/drivers/vfio-pci");
    if !vfio.is_dir() {
        return Err(GpuError::Bind {
            address: address.to_string(),
            detail: "the vfio-pci driver is not loaded (modprobe vfio-pci)".into(),
        });
    }
    std::fs::write(path.join("driver_override"), "vfio-pci")
        .map_err(|e| err("writing driver_override", e))?;
    if driver.is_some() {
        std::fs::write(path.join("driver/unbind"), address)
            .map_err(|e| err("unbinding from its driver", e))?;
    }
    std::fs::write(vfio.join("bind"), address).map_err(|e| err("binding", e))?;
    match link_name(&path.join("driver")).as_deref() {
        Some("vfio-pci") => Ok(()),
        other => Err(GpuError::Bind {
            address: address.to_string(),
            detail: format!("still bound to {}", other.unwrap_or("no driver")),
        }),
    }
}

/// Whether this process may pin `needed` bytes: CAP_IPC_LOCK, or RLIMIT_MEMLOCK that high.
pub(crate) fn check_memlock(needed: u64) -> Result<(), GpuError> {
    const CAP_IPC_LOCK: u32 = 14;
    let capable = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0);
    if capable {
        return Ok(());
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(()); // Unknown: VFIO's own accounting decides.
    }
    match limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed {
        true => Ok(()),
        false => Err(GpuError::Memlock {
            needed,
            limit: limit.rlim_cur,
        }),
    }
}

#[cfg(test)]
mod tests;
