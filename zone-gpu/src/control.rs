//! The passed-through device's state shared by its function (vCPU threads) and its control (the
//! zone's controllers): the command register the guest wants and what containment allows of it,
//! the DMA mappings, the counters.

use crate::policy::{Checked, GpuError};
use crate::vfio::CONFIG_REGION;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use vfio_ioctls::{VfioContainer, VfioDevice};
use zone_core::ZoneExit;
use zone_core::device::pci::command;
use zone_core::device::{DeviceControl, DeviceEvidence};

/// Counters of one passed-through device.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    dma_mapped: AtomicU64,
    bar_reads: AtomicU64,
    bar_writes: AtomicU64,
    config_refused: AtomicU64,
    config_device_reads: AtomicU64,
    config_device_writes: AtomicU64,
    direct: AtomicU64,
    dma_map_us: AtomicU64,
}

impl Stats {
    /// How long mapping guest memory for DMA took at attach.
    pub(crate) fn set_dma_map_time(&self, took: std::time::Duration) {
        self.dma_map_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Bytes of BAR the guest reaches without a trap.
    pub(crate) fn set_direct(&self, bytes: u64) {
        self.direct.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn bar_read(&self) {
        self.bar_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bar_write(&self) {
        self.bar_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn config_refused(&self) {
        self.config_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A guest configuration read that reached the device (its own capabilities, extended space).
    pub(crate) fn config_device_read(&self) {
        self.config_device_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// A guest configuration write passed to VFIO.
    pub(crate) fn config_device_write(&self) {
        self.config_device_writes.fetch_add(1, Ordering::Relaxed);
    }
}

/// The device, open.
pub(crate) struct Device {
    pub(crate) vfio: VfioDevice,
    container: Arc<VfioContainer>,
    checked: Checked,
    pub(crate) stats: Arc<Stats>,
    /// The command register as the guest last wrote it.
    guest_command: AtomicU16,
    /// Containment: DMA stopped (paused, quarantined or stopped zone).
    paused: AtomicBool,
    quarantined: AtomicBool,
    stopped: AtomicBool,
    /// The guest drives the INTx-disable bit (the device's INTx is routed to the zone).
    intx: AtomicBool,
    /// Serializes writes of the device's command register.
    command_lock: Mutex<()>,
    mapped: Mutex<Vec<(u64, u64)>>,
}

impl Device {
    pub(crate) fn new(vfio: VfioDevice, container: Arc<VfioContainer>, checked: Checked) -> Self {
        Self {
            vfio,
            container,
            checked,
            stats: Arc::default(),
            guest_command: AtomicU16::new(0),
            paused: AtomicBool::new(false),
            quarantined: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            intx: AtomicBool::new(false),
            command_lock: Mutex::new(()),
            mapped: Mutex::new(Vec::new()),
        }
    }

    /// The device's PCI address.
    pub(crate) fn address(&self) -> &str {
        &self.checked.address
    }

    /// Resets the device, where it has a reset.
    pub(crate) fn reset(&self) {
        if self.checked.resettable {
            self.vfio.reset();
        }
    }

    /// Maps `len` bytes of guest memory at guest-physical `gpa` (host address `host`) for the
    /// device's DMA.
    pub(crate) fn map_dma(&self, gpa: u64, len: u64, host: *mut u8) -> Result<(), GpuError> {
        // SAFETY: `host..host + len` is guest memory, which zones accesses only through
        // volatile copies and system calls, and which outlives the mapping: the device (and with
        // it this mapping) is released before the zone's memory (Zone::drop).
        unsafe { self.container.vfio_dma_map(gpa, len as usize, host) }.map_err(|e| {
            GpuError::Vfio {
                address: self.checked.address.clone(),
                detail: format!("mapping guest memory {gpa:#x}+{len:#x} for DMA: {e}"),
            }
        })?;
        self.mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((gpa, len));
        self.stats.dma_mapped.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the guest's INTx-disable bit reaches the device (while its INTx is routed to the
    /// zone); otherwise the bit stays set.
    pub(crate) fn set_intx(&self, routed: bool) {
        self.intx.store(routed, Ordering::SeqCst);
        self.apply_command();
    }

    /// The guest wrote the command register.
    pub(crate) fn set_guest_command(&self, value: u16) {
        self.guest_command.store(value, Ordering::SeqCst);
        self.apply_command();
    }

    /// Writes the device's command register: the guest's memory decoding and bus mastering,
    /// bus mastering only while containment allows DMA, INTx disabled unless it is routed to the
    /// zone (then as the guest wants it: VFIO turns the bit into its own mask of the line).
    fn apply_command(&self) {
        let _serial = self.command_lock.lock().unwrap_or_else(|e| e.into_inner());
        let guest = self.guest_command.load(Ordering::SeqCst);
        let mut value = guest & (command::MEMORY | command::BUS_MASTER);
        if !self.dma_allowed() {
            value &= !command::BUS_MASTER;
        }
        value |= match self.intx.load(Ordering::SeqCst) {
            true => guest & command::INTX_DISABLE,
            false => command::INTX_DISABLE,
        };
        self.vfio
            .region_write(CONFIG_REGION, &value.to_le_bytes(), 4);
    }

    fn dma_allowed(&self) -> bool {
        !(self.paused.load(Ordering::SeqCst)
            || self.quarantined.load(Ordering::SeqCst)
            || self.stopped.load(Ordering::SeqCst))
    }

    /// The device's bus mastering as last written.
    fn bus_master(&self) -> bool {
        let mut b = [0u8; 2];
        self.vfio.region_read(CONFIG_REGION, &mut b, 4);
        u16::from_le_bytes(b) & command::BUS_MASTER != 0
    }

    /// The zone let go of the device: no DMA, no mappings, reset.
    pub(crate) fn release(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.apply_command();
        let mapped = std::mem::take(&mut *self.mapped.lock().unwrap_or_else(|e| e.into_inner()));
        for (gpa, len) in mapped {
            if let Err(e) = self.container.vfio_dma_unmap(gpa, len as usize) {
                tracing::warn!(target: "zones::device", device = %self.checked.address, error = %e, "DMA unmap");
            }
        }
        self.reset();
        tracing::debug!(target: "zones::device", device = %self.checked.address, group = self.checked.group, reset = self.checked.resettable, "passthrough released");
    }
}

/// A passed-through device's control: containment of its DMA and its counters. Find it with
/// `zone.device::<GpuControl>()`.
pub struct GpuControl {
    /// The device while its zone holds it: the zone's drop releases it (DMA unmapped, reset,
    /// group closed, claim given up) however long handles and this control live on.
    device: Weak<Device>,
    address: String,
    resettable: bool,
    /// The IOMMU's usable I/O address ranges, where the kernel reports them.
    iova: Option<crate::vfio::iova::Ranges>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for GpuControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuControl")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl GpuControl {
    /// The control of `device`, whose IOMMU reported the usable I/O ranges `iova`.
    pub(crate) fn new(device: &Arc<Device>, iova: Option<crate::vfio::iova::Ranges>) -> Self {
        Self {
            device: Arc::downgrade(device),
            address: device.checked.address.clone(),
            resettable: device.checked.resettable,
            iova,
            stats: device.stats.clone(),
        }
    }

    /// The PCI address of the device.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The host IOMMU's usable I/O address ranges for this device (`[start, end]`, inclusive),
    /// as VFIO reported them when the zone was built; guest RAM was checked to lie inside them.
    /// `None` on a kernel that does not report them (before Linux 5.4): nothing was checked.
    pub fn iova_ranges(&self) -> Option<&[(u64, u64)]> {
        self.iova.as_deref()
    }

    /// Interrupts per vector, `(vector, count)`, as the host counted them on the IRQs VFIO
    /// holds for the vectors the guest has enabled (from `/proc/interrupts`: the vectors go from
    /// the device to KVM without zones on the way). Empty while the guest has none enabled; the
    /// counts restart when it enables them again. Reads a file: call it from the embedder's
    /// threads, not from a zones thread.
    ///
    /// ```no_run
    /// # fn show(gpu: &zone_gpu::GpuControl) -> std::io::Result<()> {
    /// for (vector, count) in gpu.interrupts()? {
    ///     println!("vector {vector}: {count} interrupts");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn interrupts(&self) -> std::io::Result<Vec<(u32, u64)>> {
        let text = std::fs::read_to_string("/proc/interrupts")?;
        Ok(crate::interrupts::per_vector(&text, self.address()))
    }

    /// Interrupts on the device's INTx line, as the host counted them on the IRQ VFIO holds
    /// for it (from `/proc/interrupts`); `None` while VFIO does not route its INTx (the guest
    /// has MSI or MSI-X on, or the device has no INTx). Reads a file, as
    /// [`interrupts`](Self::interrupts) does.
    pub fn intx_interrupts(&self) -> std::io::Result<Option<u64>> {
        let text = std::fs::read_to_string("/proc/interrupts")?;
        Ok(crate::interrupts::intx(&text, self.address()))
    }

    /// Whether the device's bus mastering (its DMA) is on now, read back from the device;
    /// `false` once the zone has released it.
    pub fn bus_master(&self) -> bool {
        self.device.upgrade().is_some_and(|d| d.bus_master())
    }

    /// Runs `f` on the device while the zone holds it.
    fn with_device(&self, f: impl FnOnce(&Device)) {
        if let Some(device) = self.device.upgrade() {
            f(&device);
        }
    }
}

impl DeviceControl for GpuControl {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        vec![
            ("dma_mapped_bytes", s.dma_mapped.load(Ordering::Relaxed)),
            ("dma_map_us", s.dma_map_us.load(Ordering::Relaxed)),
            ("bar_bytes_direct", s.direct.load(Ordering::Relaxed)),
            ("bar_reads", s.bar_reads.load(Ordering::Relaxed)),
            ("bar_writes", s.bar_writes.load(Ordering::Relaxed)),
            (
                "config_writes_refused",
                s.config_refused.load(Ordering::Relaxed),
            ),
            (
                "config_device_reads",
                s.config_device_reads.load(Ordering::Relaxed),
            ),
            (
                "config_device_writes",
                s.config_device_writes.load(Ordering::Relaxed),
            ),
            ("resettable", u64::from(self.resettable)),
        ]
    }

    fn quarantine(&self) -> Option<DeviceEvidence> {
        self.with_device(|d| {
            d.quarantined.store(true, Ordering::SeqCst);
            d.apply_command();
        });
        Some(DeviceEvidence {
            device: self.address.clone(),
            lines: vec![format!(
                "PCI device {}: bus mastering off (no DMA) until released",
                self.address
            )],
            detail: None,
        })
    }

    fn release(&self) {
        self.with_device(|d| {
            d.quarantined.store(false, Ordering::SeqCst);
            d.apply_command();
        });
    }

    fn set_paused(&self, paused: bool) {
        self.with_device(|d| {
            d.paused.store(paused, Ordering::SeqCst);
            d.apply_command();
        });
    }

    fn stopped(&self, _exit: &ZoneExit) {
        self.with_device(|d| {
            d.stopped.store(true, Ordering::SeqCst);
            d.apply_command();
        });
    }
}
