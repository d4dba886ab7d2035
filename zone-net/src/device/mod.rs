//! The virtio-net device (virtio 1.x): two queues (RX, TX), MAC, MTU, link status, mergeable RX
//! buffers, checksum offload both ways where the backend can honour it, EVENT_IDX. No control
//! queue, no GSO: a large MTU does the work GSO would.

pub(crate) mod queues;
mod worker;

use crate::backend::tap::TapLink;
use crate::backend::user::UserStack;
use crate::backend::{Backend, Gate, Upstream};
use crate::config::Addressing;
use crate::control::NetHandle;
use crate::denials::Denials;
use crate::dns::Dns;
use crate::packet::Link;
use crate::policy::pins::Pins;
use std::collections::VecDeque;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::Queue;
use worker::NetWorker;
use zone_core::device::{
    ActivateError, Activation, DeviceHost, DeviceWorker, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VirtioDevice, read_config_bytes,
};

/// virtio device id of a network device.
const DEVICE_TYPE: u32 = 1;
/// RX and TX, 256 entries each.
const QUEUE_SIZES: [u16; 2] = [256, 256];

/// How the device's backend is made on each activation.
pub(crate) enum BackendPlan {
    User,
    Tap(File),
}

/// A zone's network device.
pub(crate) struct NetDevice {
    pub(crate) control: Arc<NetHandle>,
    pub(crate) host: DeviceHost,
    pub(crate) addr: Addressing,
    pub(crate) plan: BackendPlan,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) max_flows: usize,
    pub(crate) flow_buffer: usize,
}

impl NetDevice {
    fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.addr.guest_mac);
        let status = if self.control.link_up() {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.addr.mtu.to_le_bytes());
        c
    }

    /// The shared half of the engine for a fresh activation.
    fn gate(&self, now: Instant) -> Gate {
        let wanted = self.control.wanted();
        Gate {
            policy: wanted.policy,
            generation: wanted.generation,
            pins: Pins::default(),
            counters: self.control.counters.clone(),
            denials: Denials::new(
                self.host.clone(),
                &self.control.zone,
                &self.control.device,
                now,
            ),
            dns: Dns::new(random_u16()),
            upstream: self.upstream.and_then(|a| Upstream::open(a).ok()),
            link: Link {
                guest: self.addr.guest_mac,
                gateway: self.addr.gateway_mac,
            },
            addr: self.addr,
            to_guest: VecDeque::new(),
            now,
            cut: false,
        }
    }
}

/// 16 random bits for DNS query ids (getrandom; the clock if it fails).
fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom(2) writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == 2 {
        u16::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5a5a, |d| d.subsec_nanos() as u16)
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_MTU)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_NET_F_CSUM);
        // The user-space stack builds every frame the guest receives, checksums included.
        if matches!(self.plan, BackendPlan::User) {
            f |= 1 << VIRTIO_NET_F_GUEST_CSUM;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, mut a: Activation) -> Result<Box<dyn DeviceWorker>, ActivateError> {
        let [rx, tx]: [Queue; 2] = std::mem::take(&mut a.queues)
            .try_into()
            .map_err(|_| ActivateError("virtio-net needs exactly two queues".into()))?;
        let now = Instant::now();
        let gate = self.gate(now);
        let backend = match &self.plan {
            BackendPlan::User => Backend::User(Box::new(UserStack::new(
                &gate,
                self.max_flows,
                self.flow_buffer,
            ))),
            BackendPlan::Tap(file) => {
                let file = file.try_clone().map_err(|e| {
                    ActivateError(format!("cannot duplicate the TAP descriptor: {e}"))
                })?;
                Backend::Tap(TapLink::new(file, self.max_flows, self.addr.mtu, now))
            }
        };
        let worker = NetWorker::new(a, rx, tx, gate, backend, self.control.clone())
            .map_err(|e| ActivateError(format!("virtio-net: {e}")))?;
        Ok(Box::new(worker))
    }
}
