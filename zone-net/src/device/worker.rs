//! The device thread's worker: event-manager glue between the queues, the backend, the DNS
//! upstream socket, one timer and the control eventfd. All flow state lives on this thread.
//!
//! Paused, the worker keeps its events but moves nothing (host sockets are edge-triggered, so
//! what arrives is remembered, not spun on); control requests (cut, policy) still apply.

use super::queues::{self, RxMode, RxOutcome};
use crate::backend::{Backend, Gate, TOKEN_BACKEND, TOKEN_DNS};
use crate::control::{NetHandle, Wanted};
use crate::metrics::{Counters, DropReason};
use crate::ratelimit::Limiter;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;
use zone_core::device::{
    Activation, DeviceWorker, EventOps, EventSet, Events, Interrupt, MutEventSubscriber,
};

const RX: u32 = 0;
const TX: u32 = 1;
const TIMER: u32 = 2;
const CONTROL: u32 = 3;

/// Shortest timer: a deadline already due fires after this.
const MIN_TIMER: Duration = Duration::from_micros(50);

/// What builds the host side of an activation: the gate and the backend (sockets, a TAP
/// descriptor). Run on the device thread.
pub(crate) type MakeEngine = Box<dyn FnOnce(Instant) -> std::io::Result<(Gate, Backend)> + Send>;

/// The worker of one activation. The vCPU thread whose register write activated the device only
/// hands over the queues; everything that opens host resources (sockets, the timer, the TAP)
/// happens on the device thread, under its own seccomp filter, in [`init`](MutEventSubscriber::init).
pub(crate) struct NetWorker {
    start: Option<(Activation, Queue, Queue, MakeEngine)>,
    live: Option<Live>,
    control: Arc<NetHandle>,
}

impl NetWorker {
    pub(crate) fn new(
        a: Activation,
        rx: Queue,
        tx: Queue,
        make: MakeEngine,
        control: Arc<NetHandle>,
    ) -> Self {
        Self {
            start: Some((a, rx, tx, make)),
            live: None,
            control,
        }
    }
}

impl MutEventSubscriber for NetWorker {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        let Some((a, rx, tx, make)) = self.start.take() else {
            return;
        };
        let built = make(Instant::now())
            .and_then(|(gate, backend)| Live::new(a, rx, tx, gate, backend, self.control.clone()));
        match built {
            Ok(mut live) => {
                live.init(ops);
                self.live = Some(live);
            }
            // No host side (out of descriptors): the device stays silent, and says why.
            Err(e) => self.control.failed(&e),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        if let Some(live) = &mut self.live {
            live.process(events, ops);
        }
    }
}

impl DeviceWorker for NetWorker {
    fn pause(&mut self, ops: &mut EventOps<'_>) {
        if let Some(live) = &mut self.live {
            live.pause(ops);
        }
    }

    fn resume(&mut self, ops: &mut EventOps<'_>) {
        if let Some(live) = &mut self.live {
            live.resume(ops);
        }
    }
}

/// A running network device.
struct Live {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    mode: RxMode,
    /// Complete partial checksums of guest frames (the TAP backend hands them on).
    complete_checksums: bool,
    max_frame: usize,
    gate: Gate,
    backend: Backend,
    control: Arc<NetHandle>,
    applied: Option<Wanted>,
    egress: Limiter,
    ingress: Limiter,
    timer: TimerFd,
    paused: bool,
    tx_pending: bool,
    tx_buf: Vec<u8>,
}

impl Live {
    fn new(
        a: Activation,
        rx: Queue,
        tx: Queue,
        gate: Gate,
        backend: Backend,
        control: Arc<NetHandle>,
    ) -> std::io::Result<Self> {
        let timer = TimerFd::new().map_err(std::io::Error::from)?;
        // SAFETY: fcntl(2) on the timer's own descriptor, setting O_NONBLOCK: a timer read after
        // the timer was re-armed must not block.
        unsafe {
            let flags = libc::fcntl(timer.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let feature = |bit: u32| a.features & (1 << bit) != 0;
        let mode = RxMode {
            mergeable: feature(VIRTIO_NET_F_MRG_RXBUF),
            data_valid: feature(VIRTIO_NET_F_GUEST_CSUM) && backend.terminates_frames(),
        };
        let complete_checksums = feature(VIRTIO_NET_F_CSUM) && !backend.terminates_frames();
        let max_frame = usize::from(gate.addr.mtu) + crate::packet::ETH_HEADER;
        let now = gate.now;
        Ok(Self {
            mem: a.mem,
            rx,
            tx,
            queue_events: a.queue_events,
            interrupt: a.interrupt,
            mode,
            complete_checksums,
            max_frame,
            gate,
            backend,
            control,
            applied: None,
            egress: Limiter::new(None, now),
            ingress: Limiter::new(None, now),
            timer,
            paused: false,
            tx_pending: false,
            tx_buf: Vec::with_capacity(max_frame),
        })
    }

    /// Takes every frame the guest made available, as the egress limit allows.
    fn drain_tx(&mut self, ops: &mut EventOps<'_>) {
        self.tx_pending = false;
        let mut used = false;
        let mut empty_rounds = 0;
        loop {
            let _ = self.tx.disable_notification(&self.mem);
            let mut popped = 0;
            loop {
                if !self.egress.wait(self.gate.now).is_zero() {
                    self.tx_pending = true;
                    break;
                }
                let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) else {
                    break;
                };
                popped += 1;
                let head = chain.head_index();
                let read = queues::read_tx(
                    &self.mem,
                    chain,
                    self.max_frame,
                    &mut self.tx_buf,
                    self.complete_checksums,
                );
                used |= self.tx.add_used(&self.mem, head, 0).is_ok();
                let counters = &self.gate.counters;
                if read.is_err() {
                    counters.dropped(DropReason::Malformed);
                    continue;
                }
                let len = self.tx_buf.len();
                Counters::add(&counters.tx_packets, 1);
                Counters::add(&counters.tx_bytes, len as u64);
                self.egress.take(len);
                if self.control.cut.load(Ordering::SeqCst) || self.gate.cut {
                    counters.dropped(DropReason::Cut);
                    continue;
                }
                let frame = std::mem::take(&mut self.tx_buf);
                self.backend.guest_frame(&mut self.gate, &frame, ops);
                self.tx_buf = frame;
            }
            if self.tx_pending {
                break;
            }
            empty_rounds = if popped == 0 { empty_rounds + 1 } else { 0 };
            match self.tx.enable_notification(&self.mem) {
                // More arrived while notifications were off; two empty rounds: a broken ring.
                Ok(true) if empty_rounds < 2 => continue,
                _ => break,
            }
        }
        if used && self.tx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.notify_queue(TX as usize);
        }
    }

    /// Writes waiting frames into the guest's RX buffers, as the ingress limit allows.
    fn flush_rx(&mut self) {
        let mut used = false;
        let mut retried = false;
        while let Some(frame) = self.gate.to_guest.front() {
            if !self.ingress.wait(self.gate.now).is_zero() {
                break;
            }
            match queues::write_rx(&mut self.rx, &self.mem, frame, self.mode) {
                RxOutcome::Written(_) => {
                    let c = &self.gate.counters;
                    Counters::add(&c.rx_packets, 1);
                    Counters::add(&c.rx_bytes, frame.len() as u64);
                    self.ingress.take(frame.len());
                    self.gate.to_guest.pop_front();
                    used = true;
                }
                RxOutcome::TooLarge => {
                    self.gate.counters.dropped(DropReason::Backlog);
                    self.gate.to_guest.pop_front();
                    used = true;
                }
                RxOutcome::NoBuffers => {
                    // Ask for a kick when buffers come; look once more in case they raced in.
                    match self.rx.enable_notification(&self.mem) {
                        Ok(true) if !retried => {
                            retried = true;
                            continue;
                        }
                        _ => break,
                    }
                }
            }
        }
        if used && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.notify_queue(RX as usize);
        }
    }

    /// Moves everything that can move, then sets the timer for the next deadline.
    fn run(&mut self, ops: &mut EventOps<'_>) {
        self.gate.dns_expire();
        self.backend.sweep(&mut self.gate, ops);
        if self.tx_pending {
            self.drain_tx(ops);
        }
        self.backend.pump(&mut self.gate, ops);
        self.flush_rx();
        let now = self.gate.now;
        self.gate.denials.flush(now);
        let emitted = self.gate.denials.emitted();
        self.gate
            .counters
            .denials_emitted
            .store(emitted, Ordering::Relaxed);
        self.arm_timer();
    }

    fn arm_timer(&mut self) {
        let now = self.gate.now;
        let mut next = [
            self.backend.next_wake(&self.gate),
            self.gate.dns.next_deadline(),
            self.gate.denials.flush_at(),
        ]
        .into_iter()
        .flatten()
        .min();
        let limited = |l: &mut Limiter| Some(now + l.wait(now)).filter(|at| *at > now);
        if self.tx_pending {
            next = next.into_iter().chain(limited(&mut self.egress)).min();
        }
        if !self.gate.to_guest.is_empty() {
            next = next.into_iter().chain(limited(&mut self.ingress)).min();
        }
        let _ = match next {
            Some(at) => self
                .timer
                .reset(at.saturating_duration_since(now).max(MIN_TIMER), None),
            None => self.timer.clear(),
        };
    }

    /// Applies what the controllers want: policy, limits, cut or restore.
    fn apply_control(&mut self, ops: &mut EventOps<'_>) {
        let w = self.control.wanted();
        let now = self.gate.now;
        if w.generation != self.gate.generation {
            self.gate.policy = w.policy.clone();
            self.gate.generation = w.generation;
            self.backend.rejudge(&mut self.gate, ops);
        }
        let prev = self.applied.as_ref();
        if prev.is_none_or(|p| p.egress != w.egress) {
            self.egress = Limiter::new(w.egress, now);
        }
        if prev.is_none_or(|p| p.ingress != w.ingress) {
            self.ingress = Limiter::new(w.ingress, now);
        }
        let mut cut_flows = None;
        if w.cut() && !self.gate.cut {
            let dropped = self.gate.to_guest.len();
            self.gate.to_guest.clear();
            for _ in 0..dropped {
                self.gate.counters.dropped(DropReason::Cut);
            }
            // Reset every flow while frames may still reach the guest (the resets), then cut.
            cut_flows = Some(self.backend.cut(&mut self.gate, ops));
            let _ = self.gate.dns.fail_all(&self.gate.counters);
            self.flush_rx();
            self.gate.to_guest.clear();
            self.gate.cut = true;
            self.interrupt.notify_config();
        } else if !w.cut() && self.gate.cut {
            self.gate.cut = false;
            self.interrupt.notify_config();
            if self.backend.terminates_frames() {
                // The user-space stack is the gateway: re-announce it, the guest's ARP entry
                // failed while the link was cut.
                let a = self.gate.addr;
                let announce = self.gate.link.arp_announce(a.gateway, a.guest);
                self.gate.send(announce);
                self.flush_rx();
            }
        }
        self.control
            .applied(w.seq, self.backend.flows(now), cut_flows);
        self.applied = Some(w);
    }
}

impl Live {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            let _ = ops.add(Events::with_data(evt, i as u32, EventSet::IN));
        }
        let _ = ops.add(Events::with_data(&self.timer, TIMER, EventSet::IN));
        let _ = ops.add(Events::with_data(&self.control.wake, CONTROL, EventSet::IN));
        self.gate.register(ops);
        self.backend.init(ops);
        self.control.running.store(true, Ordering::SeqCst);
        self.gate.now = Instant::now();
        self.apply_control(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        self.gate.now = Instant::now();
        match events.data() {
            RX => {
                let _ = self.queue_events[RX as usize].read();
            }
            TX => {
                let _ = self.queue_events[TX as usize].read();
                self.tx_pending = true;
            }
            TIMER => {
                let _ = self.timer.wait();
            }
            CONTROL => {
                let _ = self.control.wake.read();
                self.apply_control(ops);
            }
            TOKEN_DNS if !self.paused => self.gate.dns_ready(),
            token if token >= TOKEN_BACKEND => {
                self.backend
                    .ready(&mut self.gate, token, events.event_set());
            }
            _ => {}
        }
        if !self.paused {
            if self.tx_pending {
                self.drain_tx(ops);
            }
            self.run(ops);
        }
    }
}

impl Live {
    fn pause(&mut self, _ops: &mut EventOps<'_>) {
        self.paused = true;
        let _ = self.timer.clear();
    }

    fn resume(&mut self, ops: &mut EventOps<'_>) {
        self.paused = false;
        self.gate.now = Instant::now();
        self.tx_pending = true;
        // The DNS socket is edge-triggered: look at it now for what came while paused.
        self.gate.dns_ready();
        self.drain_tx(ops);
        self.run(ops);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.control.stopped_running();
    }
}
