//! virtio-vsock (device id 19): the exec channel between the host and the guest's agent.
//!
//! Three queues: RX (host to guest), TX (guest to host) and event (unused). Packets from the TX
//! queue are decoded strictly ([`packet`]) and handed to the [`backend`]; packets the backend
//! owes the guest are written into RX buffers as they become available.

pub(crate) mod backend;
pub(crate) mod packet;

use crate::device::{
    ActivateError, Activation, DeviceWorker, Interrupt, QueueHandler, QueueWorker,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice, read_config_bytes,
};
use backend::Backend;
use packet::{HEADER_LEN, Header};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// virtio device id of vsock.
const DEVICE_TYPE: u32 = 19;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const RX: usize = 0;
const TX: usize = 1;

/// The vsock device.
pub(crate) struct Vsock {
    guest_cid: u64,
    backend: Arc<Backend>,
}

impl Vsock {
    pub(crate) fn new(guest_cid: u64, backend: Arc<Backend>) -> Self {
        Self { guest_cid, backend }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<Box<dyn DeviceWorker>, ActivateError> {
        let [rx, tx, _event]: [Queue; 3] = a
            .queues
            .try_into()
            .map_err(|_| ActivateError("vsock needs exactly three queues".into()))?;
        self.backend.driver_ready();
        let handler = VsockQueues {
            mem: a.mem,
            rx,
            tx,
            interrupt: a.interrupt,
            backend: self.backend.clone(),
        };
        Ok(Box::new(QueueWorker::new(handler, a.queue_events)))
    }
}

/// The queues of an active vsock device, driven by its worker thread.
pub(crate) struct VsockQueues {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
    backend: Arc<Backend>,
}

impl VsockQueues {
    /// Takes every packet the guest sent. Malformed packets are dropped; their buffers are
    /// returned to the guest either way. Returns whether any buffer was used.
    fn drain_tx(&mut self) -> bool {
        let mut used = false;
        let mut empty_rounds = 0;
        loop {
            // Suppress kicks while draining; re-enable and look again so none is missed.
            let _ = self.tx.disable_notification(&self.mem);
            let mut popped = 0;
            while let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) {
                popped += 1;
                let head = chain.head_index();
                if let Ok(mut reader) = chain.reader(&self.mem) {
                    let mut raw = [0u8; HEADER_LEN];
                    if reader.read_exact(&mut raw).is_ok()
                        && let Ok(hdr) = Header::decode(&raw)
                    {
                        let len = (hdr.len as usize).min(reader.available_bytes());
                        let mut payload = vec![0u8; len];
                        if reader.read_exact(&mut payload).is_ok() {
                            self.backend.on_guest_packet(&hdr, &payload);
                        }
                    }
                }
                // Nothing is written into TX buffers.
                used |= self.tx.add_used(&self.mem, head, 0).is_ok();
            }
            // Two empty rounds in a row: an avail index nothing can be popped from (a broken
            // ring). Stop rather than spin.
            empty_rounds = if popped == 0 { empty_rounds + 1 } else { 0 };
            match self.tx.enable_notification(&self.mem) {
                Ok(true) if empty_rounds < 2 => continue,
                _ => return used,
            }
        }
    }

    /// Fills the guest's RX buffers with whatever the backend has for it. Returns whether any
    /// buffer was used.
    fn fill_rx(&mut self) -> bool {
        let mut used = false;
        let mut empty_rounds = 0;
        loop {
            let _ = self.rx.disable_notification(&self.mem);
            let mut out_of_buffers = false;
            let mut popped = 0;
            while self.backend.has_pending() {
                let Some(chain) = self.rx.pop_descriptor_chain(&self.mem) else {
                    out_of_buffers = true;
                    break;
                };
                popped += 1;
                let head = chain.head_index();
                let len = match chain.writer(&self.mem) {
                    Ok(mut writer) if writer.available_bytes() >= HEADER_LEN => {
                        let room = writer.available_bytes() - HEADER_LEN;
                        let Some((hdr, payload)) = self.backend.next_for_guest(room) else {
                            self.rx.go_to_previous_position();
                            break;
                        };
                        let written = writer
                            .write_all(&hdr.encode())
                            .and_then(|()| writer.write_all(&payload));
                        if written.is_ok() {
                            (HEADER_LEN + payload.len()) as u32
                        } else {
                            0
                        }
                    }
                    // A broken chain or one too small for a header: give it back empty.
                    _ => 0,
                };
                used |= self.rx.add_used(&self.mem, head, len).is_ok();
            }
            // Ask for a kick when buffers arrive while data waits; go round if some raced in.
            empty_rounds = if popped == 0 { empty_rounds + 1 } else { 0 };
            match self.rx.enable_notification(&self.mem) {
                Ok(true) if out_of_buffers && empty_rounds < 2 && self.backend.has_pending() => {
                    continue;
                }
                _ => return used,
            }
        }
    }

    fn service(&mut self, tx: bool) {
        let tx_used = tx && self.drain_tx();
        let rx_used = self.fill_rx();
        let notify =
            |q: &mut Queue, mem: &GuestMemoryMmap| q.needs_notification(mem).unwrap_or(true);
        let interrupt = (tx_used && notify(&mut self.tx, &self.mem))
            | (rx_used && notify(&mut self.rx, &self.mem));
        if interrupt {
            self.interrupt.notify_queue(RX);
        }
    }
}

impl Drop for VsockQueues {
    /// The queues go when the driver resets the device (or the zone stops): connections die.
    fn drop(&mut self) {
        self.backend.device_reset();
    }
}

impl QueueHandler for VsockQueues {
    fn queue_notified(&mut self, index: usize) {
        self.service(index == TX);
    }

    fn extra_fds(&self) -> Vec<(RawFd, u32)> {
        vec![(self.backend.kick_fd().as_raw_fd(), 0)]
    }

    fn extra_ready(&mut self, _token: u32) {
        let _ = self.backend.kick_fd().read();
        self.service(false);
    }
}

#[cfg(test)]
mod tests {
    use super::packet::{HOST_CID, Op};
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    #[test]
    fn guest_request_is_refused_through_the_queues() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let tx_mock = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let rx_mock = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
        // TX: a REQUEST from guest port 5000 to host port 80, header in one descriptor.
        let req = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 80,
            len: 0,
            op: Op::Request,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        };
        mem.write_slice(&req.encode(), GuestAddress(0x10000))
            .unwrap();
        tx_mock
            .build_desc_chain(&[desc(0x10000, HEADER_LEN as u32, 0, 0)])
            .unwrap();
        // RX: one writable buffer split over two descriptors.
        rx_mock
            .build_desc_chain(&[
                desc(0x20000, 16, WRITE | NEXT, 1),
                desc(0x20100, 4096, WRITE, 0),
            ])
            .unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let backend = Arc::new(Backend::new(3).unwrap());
        let mut queues = VsockQueues {
            mem: mem.clone(),
            rx: rx_mock.create_queue().unwrap(),
            tx: tx_mock.create_queue().unwrap(),
            interrupt,
            backend,
        };
        queues.queue_notified(TX);
        assert_eq!(irq.read().unwrap(), 1, "interrupt raised");
        let mut raw = [0u8; HEADER_LEN];
        mem.read_slice(&mut raw[..16], GuestAddress(0x20000))
            .unwrap();
        mem.read_slice(&mut raw[16..], GuestAddress(0x20100))
            .unwrap();
        let rst = Header::decode(&raw).unwrap();
        assert_eq!(
            (rst.op, rst.src_port, rst.dst_port, rst.dst_cid),
            (Op::Rst, 80, 5000, 3)
        );
        assert_eq!(rx_mock.used().idx().load(), 1);
        assert_eq!(tx_mock.used().idx().load(), 1);
    }
}
