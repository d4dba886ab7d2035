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
use worker::{MakeEngine, NetWorker};
use zone_core::device::{
    ActivateError, Activation, DeviceWorker, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VirtioDevice, read_config_bytes,
};

/// virtio device id of a network device.
const DEVICE_TYPE: u32 = 1;
/// RX and TX, 256 entries each.
const QUEUE_SIZES: [u16; 2] = [256, 256];

/// How the device's backend is made on each activation.
#[derive(Clone)]
pub(crate) enum BackendPlan {
    User,
    Tap(Arc<File>),
}

/// A zone's network device.
pub(crate) struct NetDevice {
    pub(crate) control: Arc<NetHandle>,
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

    /// What builds an activation's gate and backend on the device thread.
    fn engine(&self) -> MakeEngine {
        let control = self.control.clone();
        let (addr, plan, upstream) = (self.addr, self.plan.clone(), self.upstream);
        let (max_flows, flow_buffer) = (self.max_flows, self.flow_buffer);
        Box::new(move |now| {
            let gate = gate(&control, addr, upstream, now);
            let backend = match plan {
                BackendPlan::User => {
                    Backend::User(Box::new(UserStack::new(&gate, max_flows, flow_buffer)))
                }
                BackendPlan::Tap(file) => {
                    Backend::Tap(TapLink::new(file.try_clone()?, max_flows, addr.mtu, now))
                }
            };
            Ok((gate, backend))
        })
    }
}

/// The shared half of the engine for a fresh activation.
fn gate(control: &NetHandle, addr: Addressing, upstream: Option<SocketAddr>, now: Instant) -> Gate {
    let wanted = control.wanted();
    Gate {
        policy: wanted.policy,
        generation: wanted.generation,
        pins: Pins::default(),
        counters: control.counters.clone(),
        denials: Denials::new(control.host().clone(), &control.zone, &control.device, now),
        dns: Dns::new(random_u16()),
        upstream: upstream.and_then(|a| Upstream::open(a).ok()),
        link: Link {
            guest: addr.guest_mac,
            gateway: addr.gateway_mac,
        },
        addr,
        to_guest: VecDeque::new(),
        now,
        cut: false,
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

    /// Host sockets (TCP, UDP, ping; the DNS upstream) and the timer; the TAP backend only reads
    /// and writes its descriptor, which every device thread may.
    fn syscalls(&self) -> Vec<i64> {
        vec![
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_setsockopt,
            libc::SYS_getsockopt,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_shutdown,
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
        ]
    }

    fn activate(&mut self, mut a: Activation) -> Result<Box<dyn DeviceWorker>, ActivateError> {
        let [rx, tx]: [Queue; 2] = std::mem::take(&mut a.queues)
            .try_into()
            .map_err(|_| ActivateError("virtio-net needs exactly two queues".into()))?;
        let worker = NetWorker::new(a, rx, tx, self.engine(), self.control.clone());
        Ok(Box::new(worker))
    }
}
