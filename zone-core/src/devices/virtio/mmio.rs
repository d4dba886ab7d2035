//! The virtio-mmio transport (virtio 1.x register layout, version 2).
//!
//! Register accesses come from vCPU threads (MMIO exits). Queue notifications do not: each queue's
//! QueueNotify write is bound to an ioeventfd that wakes the device's thread directly. On
//! DRIVER_OK the transport hands the configured queues to the device and its worker to the
//! device's thread (started with the zone, registered with it, so that pausing the zone pauses
//! it); a status write of 0 (reset) ends the worker and forgets the queues. When the device cannot start (queues outside guest
//! memory, a worker that fails), the transport sets DEVICE_NEEDS_RESET: FAILED is the driver's.

use crate::device::interrupt::{INT_CONFIG, INT_USED_RING};
use crate::device::{
    Activation, DeviceThread, Interrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
};
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
const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
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
    /// A worker runs on the device thread.
    active: bool,
}

/// One virtio-mmio device window.
pub(crate) struct MmioTransport {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    notify: Vec<EventFd>,
    thread: DeviceThread,
    state: Mutex<State>,
}

impl MmioTransport {
    /// Wraps `device`, whose workers run on `thread`. `notify[i]` must already be bound
    /// (ioeventfd) to QueueNotify writes of `i`.
    pub(crate) fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        notify: Vec<EventFd>,
        thread: DeviceThread,
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
            active: false,
        };
        Ok(Self {
            mem,
            interrupt,
            notify,
            thread,
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
                    let (lo, hi) = if offset.is_multiple_of(8) {
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
            if std::mem::take(&mut st.active) {
                self.thread.deactivate();
            }
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
            if st.status & STATUS_FEATURES_OK == 0 {
                // DRIVER_OK before features were negotiated: the driver is broken.
                st.status |= STATUS_DEVICE_NEEDS_RESET;
                return;
            }
            self.activate(st);
        }
    }

    fn activate(&self, st: &mut State) {
        let all_valid = st
            .queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(&self.mem));
        if !all_valid {
            st.status |= STATUS_DEVICE_NEEDS_RESET;
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
        let event_idx = st.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = queues;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let Ok(queue_events) = self
            .notify
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
        else {
            st.status |= STATUS_DEVICE_NEEDS_RESET;
            return;
        };
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            features: st.driver_features,
        };
        let Ok(worker) = st.device.activate(activation) else {
            st.status |= STATUS_DEVICE_NEEDS_RESET;
            return;
        };
        self.thread.activate(worker);
        st.active = true;
    }
}

impl BusDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let st = self.lock();
        if offset >= CONFIG_SPACE {
            st.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
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
            && offset.is_multiple_of(4)
        {
            self.write_register(&mut st, offset, u32::from_le_bytes(bytes));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{ActivateError, DeviceWorker, QueueHandler, QueueWorker};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;

    /// A device that counts activations and notifications.
    struct Probe {
        activations: Arc<AtomicUsize>,
        notified: Arc<AtomicUsize>,
    }

    struct ProbeQueues(Arc<AtomicUsize>);

    impl QueueHandler for ProbeQueues {
        fn queue_notified(&mut self, _index: usize) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::device::read_config_bytes(&[0xaa, 0xbb, 0xcc, 0xdd], offset, data);
        }
        fn activate(&mut self, a: Activation) -> Result<Box<dyn DeviceWorker>, ActivateError> {
            assert_eq!(a.queues.len(), 2);
            assert_eq!(a.features, VIRTIO_F_VERSION_1 | (1 << 3));
            self.activations.fetch_add(1, Ordering::SeqCst);
            let handler = ProbeQueues(self.notified.clone());
            Ok(Box::new(QueueWorker::new(handler, a.queue_events)))
        }
    }

    struct Rig {
        transport: MmioTransport,
        notify: Vec<EventFd>,
        activations: Arc<AtomicUsize>,
        notified: Arc<AtomicUsize>,
    }

    fn rig() -> Rig {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (activations, notified) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let device = Box::new(Probe {
            activations: activations.clone(),
            notified: notified.clone(),
        });
        let notify: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let clones = notify.iter().map(|e| e.try_clone().unwrap()).collect();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let thread = DeviceThread::spawn("probe".into(), || true).unwrap();
        let transport = MmioTransport::new(device, mem, irq, clones, thread).unwrap();
        Rig {
            transport,
            notify,
            activations,
            notified,
        }
    }

    fn r(t: &MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &MmioTransport, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    fn setup_queue(t: &MmioTransport, index: u32, base: u64) {
        w(t, 0x030, index);
        w(t, 0x038, 16);
        w(t, 0x080, base as u32);
        w(t, 0x090, (base + 0x100) as u32);
        w(t, 0x0a0, (base + 0x200) as u32);
        w(t, 0x044, 1);
    }

    #[test]
    fn identifies_itself_and_negotiates_features() {
        let rig = rig();
        let t = &rig.transport;
        assert_eq!((r(t, 0x000), r(t, 0x004), r(t, 0x008)), (MAGIC, 2, 42));
        w(t, 0x014, 0);
        assert_eq!(r(t, 0x010), 1 << 3);
        w(t, 0x014, 1);
        assert_eq!(r(t, 0x010), 1, "VIRTIO_F_VERSION_1 in the high word");
        w(t, 0x030, 1);
        assert_eq!(r(t, 0x034), 16, "queue max size");
        w(t, 0x030, 7);
        assert_eq!(r(t, 0x034), 0, "no such queue");
        let mut cfg = [0u8; 2];
        t.read(CONFIG_SPACE + 1, &mut cfg);
        assert_eq!(cfg, [0xbb, 0xcc]);
        let mut odd = [0u8; 2];
        t.read(0x000, &mut odd);
        assert_eq!(odd, [0, 0], "registers are 32-bit only");
    }

    #[test]
    fn refuses_features_it_did_not_offer_and_legacy_drivers() {
        let rig = rig();
        let t = &rig.transport;
        w(t, 0x070, 3);
        w(t, 0x024, 0);
        w(t, 0x020, (1 << 3) | (1 << 5)); // bit 5 was not offered
        w(t, 0x024, 1);
        w(t, 0x020, 1);
        w(t, 0x070, 0xb);
        assert_eq!(r(t, 0x070) & STATUS_FEATURES_OK, 0, "FEATURES_OK refused");
        w(t, 0x070, 0);
        w(t, 0x024, 0);
        w(t, 0x020, 1 << 3); // no VERSION_1: a legacy driver
        w(t, 0x070, 0xb);
        assert_eq!(r(t, 0x070) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn activates_on_driver_ok_runs_a_worker_and_resets() {
        let rig = rig();
        let t = &rig.transport;
        w(t, 0x070, 3);
        w(t, 0x024, 0);
        w(t, 0x020, 1 << 3);
        w(t, 0x024, 1);
        w(t, 0x020, 1);
        w(t, 0x070, 0xb);
        assert_ne!(r(t, 0x070) & STATUS_FEATURES_OK, 0);
        setup_queue(t, 0, 0x10000);
        setup_queue(t, 1, 0x20000);
        w(t, 0x070, 0xf);
        assert_eq!(rig.activations.load(Ordering::SeqCst), 1);
        assert_eq!(r(t, 0x044), 1, "queue stays ready after activation");
        w(t, 0x038, 8);
        w(t, 0x030, 0);
        assert_eq!(
            r(t, 0x034),
            16,
            "queue configuration is locked after DRIVER_OK"
        );
        rig.notify[1].write(1).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while rig.notified.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < until, "worker did not run");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        w(t, 0x070, 0);
        assert_eq!(
            (r(t, 0x070), r(t, 0x044)),
            (0, 0),
            "reset clears status and queues"
        );
        w(t, 0x064, 3);
        assert_eq!(r(t, 0x060), 0);
    }

    #[test]
    fn driver_ok_without_negotiated_features_fails() {
        let rig = rig();
        let t = &rig.transport;
        w(t, 0x070, 3);
        setup_queue(t, 0, 0x10000);
        w(t, 0x070, 7);
        assert_eq!(
            r(t, 0x070) & STATUS_FAILED,
            0,
            "FAILED is the driver's to set"
        );
        assert_ne!(r(t, 0x070) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(rig.activations.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn queues_outside_guest_memory_fail_activation() {
        let rig = rig();
        let t = &rig.transport;
        w(t, 0x070, 3);
        w(t, 0x024, 1);
        w(t, 0x020, 1);
        w(t, 0x070, 0xb);
        setup_queue(t, 0, 0x7fff_0000); // beyond the 1 MiB of guest memory
        w(t, 0x070, 0xf);
        assert_eq!(
            r(t, 0x070),
            0xf | STATUS_DEVICE_NEEDS_RESET,
            "the device asks for a reset; FAILED is the driver's to set"
        );
        assert_eq!(rig.activations.load(Ordering::SeqCst), 0);
    }
}
