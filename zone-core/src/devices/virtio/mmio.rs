//! The virtio-mmio transport (virtio 1.x register layout, version 2).
//!
//! Register accesses come from vCPU threads (MMIO exits). Queue notifications do not: each queue's
//! QueueNotify write is bound to an ioeventfd that wakes the device's worker directly. On
//! DRIVER_OK the transport hands the configured queues to the device and starts its worker; a
//! status write of 0 (reset) stops the worker and forgets the queues.

use super::worker::Worker;
use super::{Activation, INT_CONFIG, INT_USED_RING, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::devices::BusDevice;
use crate::exit::ZoneExit;
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Offset of QueueNotify (where the ioeventfds are bound).
pub(crate) const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5a4f_4e45; // "ZONE"
const CONFIG_SPACE: u64 = 0x100;

const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;

struct State {
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    worker: Option<Worker>,
}

/// One virtio-mmio device window.
pub(crate) struct MmioTransport {
    name: String,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    notify: Vec<EventFd>,
    state: Mutex<State>,
}

impl MmioTransport {
    /// Wraps `device`. `notify[i]` must already be bound (ioeventfd) to QueueNotify writes of `i`.
    pub(crate) fn new(
        name: String,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        notify: Vec<EventFd>,
    ) -> Result<Self, String> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|e| format!("queue of {max} entries: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if notify.len() != queues.len() {
            return Err(format!(
                "{} notify eventfds for {} queues",
                notify.len(),
                queues.len()
            ));
        }
        let state = State {
            device,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            worker: None,
        };
        Ok(Self {
            name,
            mem,
            interrupt,
            notify,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_register(&self, st: &State, offset: u64) -> u32 {
        let queue = st.queues.get(st.queue_sel as usize);
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => st.device.device_type(),
            0x00c => VENDOR,
            0x010 => {
                let features = st.device.features() | VIRTIO_F_VERSION_1;
                match st.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x044 => queue.map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => st.status,
            0x0fc => st.config_generation,
            _ => 0,
        }
    }

    fn write_register(&self, st: &mut State, offset: u64, value: u32) {
        let queues_locked = st.status & STATUS_DRIVER_OK != 0;
        let sel = st.queue_sel as usize;
        match offset {
            0x014 => st.device_features_sel = value,
            0x020 if st.status & STATUS_FEATURES_OK == 0 => match st.driver_features_sel {
                0 => st.driver_features = (st.driver_features & !0xffff_ffff) | u64::from(value),
                1 => {
                    st.driver_features =
                        (st.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            0x024 => st.driver_features_sel = value,
            0x030 => st.queue_sel = value,
            0x038 if !queues_locked => {
                if let Some(q) = st.queues.get_mut(sel) {
                    q.set_size(value as u16);
                }
            }
            0x044 if !queues_locked => {
                if let Some(q) = st.queues.get_mut(sel) {
                    q.set_ready(value == 1);
                }
            }
            0x064 => self.interrupt.ack(value & (INT_USED_RING | INT_CONFIG)),
            0x070 => self.set_status(st, value),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 if !queues_locked => {
                if let Some(q) = st.queues.get_mut(sel) {
                    let (lo, hi) = if offset % 8 == 0 {
                        (Some(value), None)
                    } else {
                        (None, Some(value))
                    };
                    match offset & !0x7 {
                        0x080 => q.set_desc_table_address(lo, hi),
                        0x090 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
    }

    fn set_status(&self, st: &mut State, value: u32) {
        if value == 0 {
            // Reset: stop the worker, forget negotiation and queues.
            st.worker = None;
            for q in &mut st.queues {
                q.reset();
            }
            st.status = 0;
            st.driver_features = 0;
            self.interrupt.ack(INT_USED_RING | INT_CONFIG);
            return;
        }
        let newly = value & !st.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = st.device.features() | VIRTIO_F_VERSION_1;
            if st.driver_features & !offered != 0 || st.driver_features & VIRTIO_F_VERSION_1 == 0 {
                // The driver accepted something not offered, or wants legacy: refuse FEATURES_OK.
                st.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        st.status = value;
        if newly & STATUS_DRIVER_OK != 0 && st.status & STATUS_FAILED == 0 {
            self.activate(st);
        }
    }

    fn activate(&self, st: &mut State) {
        let all_valid = st
            .queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(&self.mem));
        if !all_valid {
            st.status |= STATUS_FAILED;
            return;
        }
        let queues = std::mem::replace(
            &mut st.queues,
            st.device
                .queue_max_sizes()
                .iter()
                .filter_map(|&m| Queue::new(m).ok())
                .collect(),
        );
        // Keep the configured queue state visible to the driver (ready flags, sizes).
        for (kept, active) in st.queues.iter_mut().zip(&queues) {
            kept.set_size(active.size());
            kept.set_ready(active.ready());
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: st.driver_features,
        };
        let notify = self
            .notify
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>();
        match (st.device.activate(activation), notify) {
            (Ok(handler), Ok(notify)) => match Worker::spawn(self.name.clone(), notify, handler) {
                Ok(worker) => st.worker = Some(worker),
                Err(_) => st.status |= STATUS_FAILED,
            },
            _ => st.status |= STATUS_FAILED,
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let st = self.lock();
        if offset >= CONFIG_SPACE {
            st.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_register(&st, offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<ZoneExit> {
        let mut st = self.lock();
        if offset >= CONFIG_SPACE {
            st.device.write_config(offset - CONFIG_SPACE, data);
            return None;
        }
        if let Ok(bytes) = <[u8; 4]>::try_from(data)
            && offset % 4 == 0
        {
            self.write_register(&mut st, offset, u32::from_le_bytes(bytes));
        }
        None
    }
}
