//! The passed-through function, on vfio-ioctls: a type1 container holding the device's group,
//! every guest RAM region mapped for DMA at its guest-physical address, the BARs' mmap-able parts
//! mapped into the guest and the rest trapped and forwarded to the device's regions, MSI-X (or
//! MSI) emulated and its vectors handed to VFIO as the eventfds of KVM-routed vectors; its INTx
//! handed to VFIO as the eventfds of the function's level-triggered line while MSI and MSI-X
//! are off (VFIO takes one kind at a time).

mod config;
pub(crate) mod iova;
mod mmap;

use crate::control::{Device, GpuControl};
use crate::policy::{Checked, GpuError, check_memlock};
use std::collections::HashSet;
use std::sync::Arc;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use zone_core::device::pci::{
    BarMapping, ConfigChange, ConfigSpace, MSI_CAPABILITY_ID, MSIX_CAPABILITY_ID, PciFunction,
    RoutedMsi, RoutedMsix,
};
use zone_core::device::{AttachContext, DeviceHost, IntxLine};

/// VFIO's region index of the configuration space (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub(crate) const CONFIG_REGION: u32 = 7;
/// VFIO's interrupt index of INTx (`VFIO_PCI_INTX_IRQ_INDEX`).
const INTX: u32 = 0;
/// Status bit: the function asserts its INTx.
const STATUS_INTERRUPT: u8 = 1 << 3;

/// The function on the zone's PCI bus.
pub(crate) struct Passthrough {
    device: Arc<Device>,
    config: ConfigSpace,
    msix: Option<(RoutedMsix, u16, config::MsixPlace)>,
    /// Whether the device's own MSI-X is enabled (with the vectors' eventfds).
    device_msix: bool,
    /// The emulated MSI (for a device without MSI-X) and its capability's offset.
    msi: Option<(RoutedMsi, u16)>,
    /// Whether the device's own MSI is enabled (with the vector's eventfd).
    device_msi: bool,
    /// The function's INTx line, where the device has INTx and VFIO routes it.
    intx: Option<IntxLine>,
    /// Whether the device's INTx is enabled in VFIO (with the line's eventfds).
    device_intx: bool,
    /// The configuration ranges past the header that zones emulates (MSI-X, MSI); the rest
    /// passes through to VFIO.
    emulated: Vec<std::ops::Range<u16>>,
    /// The BARs' mmap-able parts, which the guest reaches without a trap.
    mmaps: mmap::Mmaps,
    /// The zone's event stream, for refused guest writes.
    host: DeviceHost,
    /// Configuration offsets (and, as `0x1000 + offset`, PBA offsets) whose refused write was
    /// reported: one event per register, however often a driver retries (at most 8 Ki).
    reported: HashSet<u16>,
}

fn vfio_err(address: &str, e: VfioError) -> GpuError {
    let errno = |e: &VfioError| match e {
        VfioError::OpenGroup(io, _) => io.raw_os_error(),
        VfioError::ContainerSetIOMMU(sys) => Some(sys.errno()),
        _ => None,
    };
    match (&e, errno(&e)) {
        (VfioError::OpenGroup(..), Some(libc::EBUSY)) => GpuError::Busy {
            address: address.to_string(),
        },
        (VfioError::ContainerSetIOMMU(_), Some(libc::EPERM)) => GpuError::NoInterruptRemapping {
            address: address.to_string(),
        },
        _ => GpuError::Vfio {
            address: address.to_string(),
            detail: e.to_string(),
        },
    }
}

/// Opens the checked device for the zone of `cx`: container, group, device; DMA mappings;
/// reset; the guest's configuration space.
pub(crate) fn open(
    checked: Checked,
    cx: &AttachContext,
) -> Result<(Passthrough, Arc<GpuControl>), GpuError> {
    let address = checked.address.clone();
    let memory = cx.memory();
    let ram: u64 = memory.iter().map(|r| r.len()).sum();
    check_memlock(ram)?;
    // The container registers the device's group with KVM's VFIO device, as QEMU and Cloud
    // Hypervisor do: KVM then knows whether the device's DMA snoops the CPU's caches.
    let kvm = cx.kvm_vfio_device().map_err(|e| GpuError::Vfio {
        address: address.clone(),
        detail: format!("KVM's VFIO device (KVM_CREATE_DEVICE): {e}"),
    })?;
    let kvm = Arc::new(VfioDeviceFd::new_from_kvm(kvm));
    let container = Arc::new(VfioContainer::new(Some(kvm)).map_err(|e| vfio_err(&address, e))?);
    let vfio = VfioDevice::new(&checked.path, container.clone(), false)
        .map_err(|e| vfio_err(&address, e))?;
    let iova = iova::usable(&*container).map_err(|e| GpuError::Vfio {
        address: address.clone(),
        detail: format!("VFIO_IOMMU_GET_INFO: {e}"),
    })?;
    if let Some(ranges) = &iova {
        check_iova(&address, ranges, memory)?;
    }
    let device = Arc::new(Device::new(vfio, container, checked));
    // A known state before the guest sees it (a device without a reset keeps what it had).
    device.reset();
    let mapping = std::time::Instant::now();
    for region in memory.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| GpuError::Vfio {
                address: address.clone(),
                detail: format!("guest memory: {e}"),
            })?;
        device.map_dma(region.start_addr().0, region.len(), host)?;
    }
    device.stats.set_dma_map_time(mapping.elapsed());
    let mut raw = [0u8; 256];
    device.vfio.region_read(CONFIG_REGION, &mut raw, 0);
    let mut layout = config::layout(&raw, |i| device.vfio.get_region_size(i as u32));
    let fail = |what: &str, e: &dyn std::fmt::Display| GpuError::Vfio {
        address: address.clone(),
        detail: format!("{what}: {e}"),
    };
    let intx = match layout.intx {
        true => match intx_line(&device, cx) {
            Ok(line) => Some(line),
            // Without MSI or MSI-X, INTx is the device's only interrupt: no silent downgrade.
            Err(e) if layout.msix.is_none() && layout.msi.is_none() => {
                return Err(fail("INTx (the device has no MSI or MSI-X)", &e));
            }
            Err(e) => {
                tracing::warn!(target: "zones::device", address = %address, error = %e, "INTx not routed; the guest has MSI or MSI-X");
                None
            }
        },
        false => None,
    };
    if intx.is_some() {
        layout.header.interrupt_pin = 1;
    }
    let config::GuestSpace {
        mut config,
        msix,
        msi,
        emulated,
    } = config::guest_space(&layout).map_err(|e| fail("describing the function", &e))?;
    if let Some(line) = &intx {
        // What firmware writes there: the line's IOAPIC pin (Linux reads the DSDT's _PRT).
        let _ = config.set_bytes(0x3c, &[line.gsi() as u8]);
        device.set_intx(true);
    }
    let msi = match msi {
        Some(at) => Some((RoutedMsi::new(cx).map_err(|e| fail("MSI vector", &e))?, at)),
        None => None,
    };
    let msix = match (msix, layout.msix) {
        (Some((msix, at)), Some(place)) => {
            let routed = RoutedMsix::new(msix, cx).map_err(|e| fail("MSI-X vectors", &e))?;
            Some((routed, at, place))
        }
        _ => None,
    };
    let mmaps = mmap::map(&device.vfio, &layout.bars, layout.msix);
    device.stats.set_direct(mmaps.direct_bytes());
    // Bus mastering and decoding off until the guest's driver turns them on.
    device.set_guest_command(0);
    let control = Arc::new(GpuControl::new(&device, iova));
    Ok((
        Passthrough {
            device,
            config,
            msix,
            device_msix: false,
            msi,
            device_msi: false,
            device_intx: intx.is_some(),
            intx,
            emulated,
            mmaps,
            host: cx.host(),
            reported: HashSet::new(),
        },
        control,
    ))
}

/// The function's INTx line, with the device's INTx enabled in VFIO on it.
fn intx_line(device: &Device, cx: &AttachContext) -> Result<IntxLine, String> {
    let line = cx.intx_line().map_err(|e| e.to_string())?;
    vfio_intx(&device.vfio, &line, true).map_err(|e| e.to_string())?;
    Ok(line)
}

/// Enables the device's INTx in VFIO on `line` (its trigger, and its resample as VFIO's unmask),
/// or disables it.
fn vfio_intx(vfio: &VfioDevice, line: &IntxLine, enable: bool) -> Result<(), VfioError> {
    if !enable {
        return vfio.disable_irq(INTX);
    }
    vfio.enable_irq(INTX, vec![line.trigger()])?;
    vfio.set_irq_resample_fd(INTX, vec![line.resample()])
        .inspect_err(|_| {
            let _ = vfio.disable_irq(INTX);
        })
}

/// Refuses guest RAM that covers reserved I/O addresses (see [`iova`]).
fn check_iova(
    address: &str,
    ranges: &iova::Ranges,
    memory: &vm_memory::GuestMemoryMmap,
) -> Result<(), GpuError> {
    for region in memory.iter() {
        let (start, len) = (region.start_addr().0, region.len());
        if let Some(at) = iova::outside(ranges, start, len) {
            let usable: Vec<String> = ranges
                .iter()
                .map(|(s, e)| format!("{s:#x}-{e:#x}"))
                .collect();
            return Err(GpuError::IovaReserved {
                address: address.to_string(),
                at,
                region_start: start,
                region_len: len,
                usable: usable.join(", "),
            });
        }
    }
    Ok(())
}

impl Passthrough {
    /// Whether configuration byte `offset` is zones' (the header, MSI-X, MSI) rather than the
    /// device's.
    fn emulates(&self, offset: u16) -> bool {
        offset < config::HEADER_END || self.emulated.iter().any(|r| r.contains(&offset))
    }
    /// Counts a guest write that zones does not pass to the device, and reports the first one
    /// at each register as a violation event. Writes to the BAR registers the function does not
    /// have (and to the expansion ROM's) are how every PCI driver sizes BARs: counted only.
    fn refused(&mut self, what: &str, key: u16, len: usize) {
        self.device.stats.config_refused();
        let sizing = (0x10..0x28).contains(&key) || (0x30..0x34).contains(&key);
        if !sizing && self.reported.insert(key) {
            let offset = key & 0xfff;
            self.host.violation(
                "pci-config",
                format!(
                    "PCI device {}: the guest wrote {len} byte(s) at {what} offset {offset:#x}, which zones emulates read-only or does not pass through; refused (counted in config_writes_refused, reported once per register)",
                    self.device.address()
                ),
            );
        }
    }

    /// The MSI-X table or PBA access at `offset` of BAR `bar`, if it is one.
    fn msix_access(&self, bar: usize, offset: u64, len: usize) -> Option<MsixAccess> {
        let (_, _, place) = self.msix.as_ref()?;
        let within = |start: u64, size: u64| {
            offset >= start
                && offset
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= start + size)
        };
        if bar == place.table_bar && within(place.table_offset, place.table_len()) {
            return Some(MsixAccess::Table(offset - place.table_offset));
        }
        if bar == place.pba_bar && within(place.pba_offset, place.pba_len()) {
            return Some(MsixAccess::Pba(offset - place.pba_offset));
        }
        None
    }

    /// Follows the guest's MSI-X enable on the device: the vectors' eventfds while enabled.
    fn sync_device_msix(&mut self) {
        let Some((routed, _, _)) = self.msix.as_ref() else {
            return;
        };
        let want = routed.msix().enabled();
        if want == self.device_msix {
            return;
        }
        if want {
            self.sync_device_intx(false);
        }
        let Some((routed, _, _)) = self.msix.as_ref() else {
            return;
        };
        let result = match want {
            true => {
                let fds = (0..routed.msix().vectors())
                    .filter_map(|v| routed.vector(v).map(|v| v.eventfd()))
                    .collect();
                self.device.vfio.enable_msix(fds)
            }
            false => self.device.vfio.disable_msix(),
        };
        match result {
            Ok(()) => self.device_msix = want,
            Err(e) => {
                tracing::warn!(target: "zones::device", error = %e, enable = want, "VFIO MSI-X")
            }
        }
        self.sync_device_intx(!self.device_msix && !self.device_msi);
    }

    /// Enables or disables the device's INTx in VFIO (where it is routed), as MSI and MSI-X
    /// leave it: VFIO enables one kind of interrupt at a time.
    fn sync_device_intx(&mut self, want: bool) {
        let Some(line) = self.intx.as_ref() else {
            return;
        };
        if want == self.device_intx {
            return;
        }
        match vfio_intx(&self.device.vfio, line, want) {
            Ok(()) => self.device_intx = want,
            Err(e) => {
                tracing::warn!(target: "zones::device", error = %e, enable = want, "VFIO INTx")
            }
        }
    }

    /// Follows the guest's MSI enable on the device: the vector's eventfd while enabled.
    fn sync_device_msi(&mut self) {
        let Some((routed, _)) = self.msi.as_ref() else {
            return;
        };
        let want = routed.enabled();
        if want == self.device_msi {
            return;
        }
        if want {
            self.sync_device_intx(false);
        }
        let Some((routed, _)) = self.msi.as_ref() else {
            return;
        };
        let result = match want {
            true => self.device.vfio.enable_msi(vec![routed.vector().eventfd()]),
            false => self.device.vfio.disable_msi(),
        };
        match result {
            Ok(()) => self.device_msi = want,
            Err(e) => {
                tracing::warn!(target: "zones::device", error = %e, enable = want, "VFIO MSI")
            }
        }
        self.sync_device_intx(!self.device_msix && !self.device_msi);
    }
}

enum MsixAccess {
    Table(u64),
    Pba(u64),
}

impl PciFunction for Passthrough {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let n = data.len().min(4);
        let mut own = [false; 4];
        for (i, own) in own.iter_mut().enumerate().take(n) {
            *own = self.emulates(offset + i as u16);
        }
        if !own[..n].iter().all(|&o| o) {
            // The device's bytes, through VFIO (all ones where it does not answer).
            data[..n].fill(0xff);
            self.device
                .vfio
                .region_read(CONFIG_REGION, &mut data[..n], u64::from(offset));
            self.device.stats.config_device_read();
        }
        let value = self.config.read(offset, n).to_le_bytes();
        for i in (0..n).filter(|&i| own[i]) {
            data[i] = value[i];
        }
        // Where INTx is routed, the status register's interrupt bit is the device's own: an INTx
        // handler (shared lines, uio_pci_generic) reads it to know whether its device asserts.
        const STATUS: u16 = 6;
        if self.intx.is_some() && (offset..offset + n as u16).contains(&STATUS) {
            let mut status = [0u8];
            self.device.vfio.region_read(CONFIG_REGION, &mut status, 6);
            let at = usize::from(STATUS - offset);
            data[at] = (data[at] & !STATUS_INTERRUPT) | (status[0] & STATUS_INTERRUPT);
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Option<ConfigChange> {
        if !self.emulates(offset) {
            // The device's own capabilities and extended space: VFIO's permission tables decide
            // what of the write reaches the device.
            self.device
                .vfio
                .region_write(CONFIG_REGION, data, u64::from(offset));
            self.device.stats.config_device_write();
            return None;
        }
        let change = self.config.write_bytes(offset, data);
        match change {
            None => self.refused("configuration", offset, data.len()),
            Some(ConfigChange::Command { to, .. }) => self.device.set_guest_command(to),
            Some(ConfigChange::Capability { capability, id }) if id == MSIX_CAPABILITY_ID => {
                if let Some((routed, at, _)) = self.msix.as_mut()
                    && *at == capability
                {
                    if let Err(e) = routed.control_written(&self.config, capability) {
                        tracing::warn!(target: "zones::device", error = %e, "MSI-X routing");
                    }
                    self.sync_device_msix();
                }
            }
            Some(ConfigChange::Capability { capability, id }) if id == MSI_CAPABILITY_ID => {
                if let Some((routed, at)) = self.msi.as_mut()
                    && *at == capability
                {
                    if let Err(e) = routed.capability_written(&self.config, capability) {
                        tracing::warn!(target: "zones::device", error = %e, "MSI routing");
                    }
                    self.sync_device_msi();
                }
            }
            Some(_) => {}
        }
        change
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.device.stats.bar_read();
        match self.msix_access(bar, offset, data.len()) {
            Some(MsixAccess::Table(at)) => {
                self.msix.as_ref().map_or((), |m| m.0.read_table(at, data))
            }
            Some(MsixAccess::Pba(at)) => self.msix.as_ref().map_or((), |m| m.0.read_pba(at, data)),
            None => {
                // vfio-ioctls logs a failed read and leaves the buffer as it was: all ones then,
                // as for a device that does not answer.
                data.fill(0xff);
                self.device.vfio.region_read(bar as u32, data, offset);
            }
        }
    }

    fn bar_mappings(&self, bar: usize) -> Vec<BarMapping> {
        self.mmaps.mappings.get(bar).cloned().unwrap_or_default()
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.device.stats.bar_write();
        match self.msix_access(bar, offset, data.len()) {
            Some(MsixAccess::Table(at)) => {
                if let Some((routed, _, _)) = self.msix.as_mut()
                    && let Err(e) = routed.write_table(at, data)
                {
                    tracing::warn!(target: "zones::device", error = %e, "MSI-X routing");
                }
            }
            Some(MsixAccess::Pba(at)) => {
                self.refused("MSI-X pending-bit array", 0x1000 + at as u16, data.len())
            }
            None => self.device.vfio.region_write(bar as u32, data, offset),
        }
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        if self.device_msix {
            let _ = self.device.vfio.disable_msix();
        }
        if self.device_msi {
            let _ = self.device.vfio.disable_msi();
        }
        if self.device_intx {
            let _ = self.device.vfio.disable_irq(INTX);
        }
        self.device.set_intx(false);
        self.device.release();
    }
}
