//! Host side of virtio-vsock: the connections the host opened to the guest, shared by the device
//! worker (which moves packets) and host [`Stream`]s (which read and write bytes).
//!
//! Only the host connects: a connection the guest tries to open is refused (RST), deny by
//! default. Flow control follows the spec's credit scheme in both directions; a guest that
//! overruns the buffer it was granted loses the connection. Everything is bounded: receive
//! buffers by the granted credit, send buffers by [`SEND_BUFFER`].

use super::packet::{HOST_CID, Header, MAX_PAYLOAD, Op, SHUTDOWN_RCV, SHUTDOWN_SEND};
use crate::wakers::Wakers;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;
use vmm_sys_util::eventfd::EventFd;

/// Receive buffer granted to the guest per connection (its credit).
pub(crate) const RECV_BUFFER: u32 = 256 << 10;
/// Host bytes queued for the guest per connection before `write` waits.
pub(crate) const SEND_BUFFER: usize = 1 << 20;
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
/// Largest control frame [`Stream::queue_control`] queues over a full send buffer.
pub(crate) const CONTROL_FRAME_MAX: usize = 16;
/// Most connections at once.
pub(crate) const MAX_CONNECTIONS: usize = 1024;
const FIRST_HOST_PORT: u32 = 49152;

/// Why a stream operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VsockError {
    /// Nothing listens on that guest port (the guest answered RST).
    #[error("connection refused by the guest")]
    Refused,
    /// The guest reset the connection.
    #[error("connection reset by the guest")]
    Reset,
    /// The deadline passed.
    #[error("timed out")]
    TimedOut,
    /// The device is gone (zone stopped).
    #[error("vsock closed: {0}")]
    Closed(String),
    /// Too many open connections.
    #[error("too many vsock connections")]
    Exhausted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Connected,
    Refused,
    Reset,
}

struct Conn {
    peer_port: u32,
    state: ConnState,
    /// Host bytes waiting to go to the guest.
    send: VecDeque<u8>,
    /// Total bytes sent to the guest (wrapping, as the spec counts).
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Guest bytes not yet read by the host.
    recv: VecDeque<u8>,
    /// Total bytes the host has read (our fwd_cnt).
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    /// The guest will send nothing more.
    peer_done: bool,
    need_request: bool,
    need_credit: bool,
    need_shutdown: bool,
    shutdown_sent: bool,
    need_rst: bool,
    host_gone: bool,
    /// Tasks waiting on this connection (async streams), woken with the condition variable.
    wakers: Wakers,
}

impl Conn {
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn has_packet(&self) -> bool {
        self.need_rst
            || self.need_request
            || self.need_credit
            || (self.state == ConnState::Connected
                && !self.send.is_empty()
                && self.peer_credit() > 0)
            || (self.need_shutdown && !self.shutdown_sent && self.send.is_empty())
    }

    /// Finished on both sides: can be forgotten.
    fn finished(&self) -> bool {
        self.host_gone && !self.need_rst
    }

    /// A read would not wait: bytes, the guest's end of stream, or the connection's end.
    fn readable(&self) -> bool {
        !self.recv.is_empty() || self.peer_done || self.state != ConnState::Connected
    }
}

impl State {
    /// Takes the tasks waiting on every connection.
    fn take_all_wakers(&mut self) -> Wakers {
        let mut all = Wakers::default();
        for conn in self.conns.values_mut() {
            all.append(conn.wakers.take());
        }
        all
    }

    /// Connection `port` if it is open for writing; why not otherwise.
    fn writable(&mut self, port: u32) -> Result<&mut Conn, VsockError> {
        if let Some(reason) = &self.closed {
            return Err(VsockError::Closed(reason.clone()));
        }
        self.conns
            .get_mut(&port)
            .filter(|c| c.state == ConnState::Connected)
            .ok_or(VsockError::Reset)
    }

    /// Takes the tasks waiting on connection `port`.
    fn take_wakers(&mut self, port: u32) -> Wakers {
        self.conns
            .get_mut(&port)
            .map(|c| c.wakers.take())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    conns: BTreeMap<u32, Conn>,
    /// RSTs owed for packets on unknown connections: `(local port, peer port)`.
    orphans: VecDeque<(u32, u32)>,
    next_port: u32,
    closed: Option<String>,
}

/// Most RSTs for unknown connections kept pending; a guest flooding them loses answers.
const MAX_ORPHANS: usize = 64;

/// The connection table.
pub(crate) struct Backend {
    guest_cid: u64,
    state: Mutex<State>,
    cv: Condvar,
    kick: EventFd,
    /// The agent has answered a connection since the zone started.
    agent_seen: std::sync::atomic::AtomicBool,
    /// When the agent first answered, and when the guest's driver first started the device
    /// (the zone's boot report).
    agent_seen_at: std::sync::OnceLock<Instant>,
    driver_ready_at: std::sync::OnceLock<Instant>,
    /// When the guest last sent a packet (nanoseconds since `born`): a busy agent is alive.
    last_heard: std::sync::atomic::AtomicU64,
    born: Instant,
}

impl Backend {
    pub(crate) fn new(guest_cid: u64) -> std::io::Result<Self> {
        Ok(Self {
            guest_cid,
            state: Mutex::new(State {
                next_port: FIRST_HOST_PORT,
                ..Default::default()
            }),
            cv: Condvar::new(),
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            agent_seen: std::sync::atomic::AtomicBool::new(false),
            agent_seen_at: std::sync::OnceLock::new(),
            driver_ready_at: std::sync::OnceLock::new(),
            last_heard: std::sync::atomic::AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    /// Records that the agent answered a connection.
    pub(crate) fn mark_agent_seen(&self) {
        self.agent_seen
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.agent_seen_at.get_or_init(Instant::now);
    }

    /// Whether the guest sent anything on any connection within `within` (a busy agent is
    /// still alive).
    pub(crate) fn heard_within(&self, within: std::time::Duration) -> bool {
        let last = self.last_heard.load(std::sync::atomic::Ordering::Relaxed);
        last != 0
            && self.born.elapsed().as_nanos() as u64
                <= last.saturating_add(within.as_nanos() as u64)
    }

    /// When the agent first answered.
    pub(crate) fn agent_seen_at(&self) -> Option<Instant> {
        self.agent_seen_at.get().copied()
    }

    /// The guest's driver started the device (the first time counts).
    pub(crate) fn driver_ready(&self) {
        let _ = self.driver_ready_at.get_or_init(Instant::now);
    }

    /// When the guest's driver first started the device.
    pub(crate) fn driver_ready_at(&self) -> Option<Instant> {
        self.driver_ready_at.get().copied()
    }

    /// Whether the agent has answered a connection since the zone started.
    pub(crate) fn agent_seen(&self) -> bool {
        self.agent_seen.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The guest reset the device (its driver went away): every connection is gone. Streams see
    /// a reset at once instead of waiting for packets that will never come; new connections
    /// wait for the driver to come back.
    pub(crate) fn device_reset(&self) {
        let mut st = self.lock();
        for conn in st.conns.values_mut() {
            if conn.state != ConnState::Refused {
                conn.state = ConnState::Reset;
            }
            conn.need_request = false;
            conn.need_credit = false;
            conn.need_shutdown = false;
            conn.need_rst = false;
        }
        st.orphans.clear();
        let wakers = st.take_all_wakers();
        drop(st);
        self.cv.notify_all();
        wakers.wake();
    }

    /// The eventfd the device worker waits on for host-side news.
    pub(crate) fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_worker(&self) {
        let _ = self.kick.write(1);
    }

    /// Fails every stream from now on (the zone stopped).
    pub(crate) fn close_all(&self, reason: &str) {
        let mut st = self.lock();
        st.closed = Some(reason.to_string());
        let wakers = st.take_all_wakers();
        drop(st);
        self.cv.notify_all();
        wakers.wake();
    }
}

/// The exec channel's control: when the zone stops, every stream fails at once.
impl crate::device::DeviceControl for Backend {
    fn stopped(&self, exit: &crate::ZoneExit) {
        self.close_all(&format!("the zone stopped ({exit})"));
    }
}

impl Backend {
    /// Opens a stream to guest port `port`, waiting for the guest's answer until `deadline`.
    pub(crate) fn connect(
        self: &Arc<Self>,
        port: u32,
        deadline: Instant,
    ) -> Result<Stream, VsockError> {
        let stream = self.open(port)?;
        let local = stream.port;
        let st = self.wait(deadline, |st| {
            st.conns
                .get(&local)
                .is_none_or(|c| c.state != ConnState::Connecting)
        })?;
        match st.conns.get(&local).map(|c| c.state) {
            Some(ConnState::Connected) => Ok(stream),
            Some(ConnState::Refused) => Err(VsockError::Refused),
            _ => Err(VsockError::Reset),
        }
    }

    /// Starts a connection to guest port `port` without waiting for the answer.
    pub(crate) fn open(self: &Arc<Self>, port: u32) -> Result<Stream, VsockError> {
        let mut st = self.lock();
        if let Some(reason) = &st.closed {
            return Err(VsockError::Closed(reason.clone()));
        }
        st.conns.retain(|_, c| !c.finished());
        if st.conns.len() >= MAX_CONNECTIONS {
            return Err(VsockError::Exhausted);
        }
        let mut local = st.next_port;
        while st.conns.contains_key(&local) {
            local = local.checked_add(1).unwrap_or(FIRST_HOST_PORT);
        }
        st.next_port = local.checked_add(1).unwrap_or(FIRST_HOST_PORT);
        st.conns.insert(
            local,
            Conn {
                peer_port: port,
                state: ConnState::Connecting,
                send: VecDeque::new(),
                tx_cnt: 0,
                peer_buf_alloc: 0,
                peer_fwd_cnt: 0,
                recv: VecDeque::new(),
                fwd_cnt: 0,
                fwd_cnt_sent: 0,
                peer_done: false,
                need_request: true,
                need_credit: false,
                need_shutdown: false,
                shutdown_sent: false,
                need_rst: false,
                host_gone: false,
                wakers: Wakers::default(),
            },
        );
        drop(st);
        self.wake_worker();
        Ok(Stream {
            backend: self.clone(),
            port: local,
        })
    }

    /// Waits until `done` holds, the deadline passes (TimedOut) or the backend closes.
    fn wait(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&State) -> bool,
    ) -> Result<MutexGuard<'_, State>, VsockError> {
        let mut st = self.lock();
        loop {
            if done(&st) {
                return Ok(st);
            }
            if let Some(reason) = &st.closed {
                return Err(VsockError::Closed(reason.clone()));
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(VsockError::TimedOut)?;
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    // ----- device side -----------------------------------------------------------------------

    /// Handles one packet from the guest (payload already bounded by the header's `len`).
    pub(crate) fn on_guest_packet(&self, hdr: &Header, payload: &[u8]) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            return; // Misaddressed: drop it.
        }
        let now = (self.born.elapsed().as_nanos() as u64).max(1);
        self.last_heard
            .store(now, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.lock();
        let wake = self.apply(&mut st, hdr, payload);
        let wakers = st.take_wakers(hdr.dst_port);
        drop(st);
        self.cv.notify_all();
        wakers.wake();
        if wake {
            self.wake_worker();
        }
    }

    /// Returns whether the worker has something new to send.
    fn apply(&self, st: &mut State, hdr: &Header, payload: &[u8]) -> bool {
        let Some(conn) = st
            .conns
            .get_mut(&hdr.dst_port)
            .filter(|c| c.peer_port == hdr.src_port)
        else {
            // No such connection (or the guest trying to connect to us): refuse.
            if hdr.op != Op::Rst && st.orphans.len() < MAX_ORPHANS {
                st.orphans.push_back((hdr.dst_port, hdr.src_port));
                return true;
            }
            return false;
        };
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            Op::Response if conn.state == ConnState::Connecting => {
                conn.state = ConnState::Connected
            }
            Op::Rst => {
                conn.state = if conn.state == ConnState::Connecting {
                    ConnState::Refused
                } else {
                    ConnState::Reset
                };
                conn.need_rst = false;
                conn.need_request = false;
            }
            Op::Rw if conn.state == ConnState::Connected => {
                if conn.recv.len() + payload.len() > RECV_BUFFER as usize {
                    // The guest overran the credit it was given.
                    conn.state = ConnState::Reset;
                    conn.need_rst = true;
                } else {
                    conn.recv.extend(payload);
                }
            }
            Op::CreditRequest => conn.need_credit = true,
            Op::Shutdown => {
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    conn.peer_done = true;
                }
                if hdr.flags & SHUTDOWN_RCV != 0 {
                    conn.send.clear();
                }
            }
            Op::Request => {
                conn.state = ConnState::Reset;
                conn.need_rst = true;
            }
            _ => {}
        }
        conn.has_packet()
    }

    /// The largest receive and send buffers of any connection, and the number of connections
    /// (for invariant checks).
    pub(crate) fn buffered(&self) -> (usize, usize, usize) {
        let st = self.lock();
        let recv = st.conns.values().map(|c| c.recv.len()).max().unwrap_or(0);
        let send = st.conns.values().map(|c| c.send.len()).max().unwrap_or(0);
        (recv, send, st.conns.len() + st.orphans.len())
    }

    /// Whether any packet waits for the guest.
    pub(crate) fn has_pending(&self) -> bool {
        let st = self.lock();
        !st.orphans.is_empty() || st.conns.values().any(Conn::has_packet)
    }

    /// The next packet for the guest with at most `room` payload bytes, if any.
    pub(crate) fn next_for_guest(&self, room: usize) -> Option<(Header, Vec<u8>)> {
        let mut st = self.lock();
        if let Some((local, peer)) = st.orphans.pop_front() {
            let rst = Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: local,
                dst_port: peer,
                len: 0,
                op: Op::Rst,
                flags: 0,
                buf_alloc: 0,
                fwd_cnt: 0,
            };
            return Some((rst, Vec::new()));
        }
        let (&port, conn) = st.conns.iter_mut().find(|(_, c)| c.has_packet())?;
        let mut hdr = Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: port,
            dst_port: conn.peer_port,
            len: 0,
            op: Op::Rw,
            flags: 0,
            buf_alloc: RECV_BUFFER,
            fwd_cnt: conn.fwd_cnt,
        };
        let mut payload = Vec::new();
        if conn.need_rst {
            conn.need_rst = false;
            hdr.op = Op::Rst;
        } else if conn.need_request {
            conn.need_request = false;
            hdr.op = Op::Request;
        } else if conn.state == ConnState::Connected
            && !conn.send.is_empty()
            && conn.peer_credit() > 0
        {
            let n = conn
                .send
                .len()
                .min(conn.peer_credit() as usize)
                .min(room)
                .min(MAX_PAYLOAD as usize);
            payload.extend(conn.send.drain(..n));
            conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
            hdr.len = n as u32;
        } else if conn.need_shutdown && !conn.shutdown_sent && conn.send.is_empty() {
            conn.shutdown_sent = true;
            hdr.op = Op::Shutdown;
            hdr.flags = SHUTDOWN_SEND;
        } else {
            hdr.op = Op::CreditUpdate;
        }
        conn.need_credit = false;
        conn.fwd_cnt_sent = conn.fwd_cnt;
        let wakers = conn.wakers.take();
        if conn.finished() {
            st.conns.remove(&port);
        }
        drop(st);
        self.cv.notify_all();
        wakers.wake();
        Some((hdr, payload))
    }
}

/// A host-side stream to a guest port.
pub(crate) struct Stream {
    backend: Arc<Backend>,
    port: u32,
}

impl Stream {
    /// Reads at least one byte (or 0 at end of stream) before `deadline`.
    pub(crate) fn read(&self, buf: &mut [u8], deadline: Instant) -> Result<usize, VsockError> {
        let st = self.backend.wait(deadline, |st| {
            st.conns.get(&self.port).is_none_or(Conn::readable)
        })?;
        self.take_read(st, buf)
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// [`Stream::read`] for a task: ready when a read would not wait; otherwise the task is
    /// woken when the connection changes.
    pub(crate) fn poll_read(
        &self,
        cx: &Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<usize, VsockError>> {
        let mut st = self.backend.lock();
        let closed = st.closed.clone();
        match st.conns.get_mut(&self.port) {
            Some(conn) if !conn.readable() => match closed {
                Some(reason) => Poll::Ready(Err(VsockError::Closed(reason))),
                None => {
                    conn.wakers.register(cx);
                    Poll::Pending
                }
            },
            _ => Poll::Ready(self.take_read(st, buf)),
        }
    }

    /// Moves buffered guest bytes into `buf` once a read would not wait.
    fn take_read(
        &self,
        mut st: MutexGuard<'_, State>,
        buf: &mut [u8],
    ) -> Result<usize, VsockError> {
        let b = &self.backend;
        let Some(conn) = st.conns.get_mut(&self.port) else {
            return Err(VsockError::Reset);
        };
        if conn.recv.is_empty() {
            return if conn.peer_done {
                Ok(0)
            } else {
                Err(VsockError::Reset)
            };
        }
        let n = buf.len().min(conn.recv.len());
        let (front, back) = conn.recv.as_slices();
        let first = n.min(front.len());
        buf[..first].copy_from_slice(&front[..first]);
        buf[first..n].copy_from_slice(&back[..n - first]);
        conn.recv.drain(..n);
        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
        let update = conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_sent) >= RECV_BUFFER / 4;
        if update {
            conn.need_credit = true;
        }
        drop(st);
        if update {
            b.wake_worker();
        }
        Ok(n)
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Waits for the guest's answer to [`Backend::open`], as a task: ready once the guest
    /// accepted (`Ok`), refused or reset the connection, or the zone stopped.
    pub(crate) fn poll_connected(&self, cx: &Context<'_>) -> Poll<Result<(), VsockError>> {
        let mut st = self.backend.lock();
        let closed = st.closed.clone();
        match st.conns.get_mut(&self.port) {
            Some(conn) if conn.state == ConnState::Connecting => match closed {
                Some(reason) => Poll::Ready(Err(VsockError::Closed(reason))),
                None => {
                    conn.wakers.register(cx);
                    Poll::Pending
                }
            },
            Some(conn) if conn.state == ConnState::Connected => Poll::Ready(Ok(())),
            Some(conn) if conn.state == ConnState::Refused => Poll::Ready(Err(VsockError::Refused)),
            _ => Poll::Ready(Err(VsockError::Reset)),
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Queues all of `frame` for the guest at once, as a task: a frame is never interleaved with
    /// another writer's. Pending (the task woken when the guest drains the buffer) while the
    /// send buffer lacks room for it.
    pub(crate) fn poll_write_whole(
        &self,
        cx: &Context<'_>,
        frame: &[u8],
    ) -> Poll<Result<(), VsockError>> {
        let mut st = self.backend.lock();
        let conn = match st.writable(self.port) {
            Ok(conn) => conn,
            Err(e) => return Poll::Ready(Err(e)),
        };
        // A frame larger than the buffer goes in once the buffer is empty.
        if !conn.send.is_empty() && conn.send.len() + frame.len() > SEND_BUFFER {
            conn.wakers.register(cx);
            return Poll::Pending;
        }
        conn.send.extend(frame);
        drop(st);
        self.backend.wake_worker();
        Poll::Ready(Ok(()))
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Queues a small control frame (end of input, a signal) at once, even over a full send
    /// buffer: it never waits, and the buffer's bound grows by at most [`CONTROL_FRAME_MAX`].
    pub(crate) fn queue_control(&self, frame: &[u8]) -> Result<(), VsockError> {
        debug_assert!(frame.len() <= CONTROL_FRAME_MAX);
        let mut st = self.backend.lock();
        let conn = st.writable(self.port)?;
        if conn.send.len() + frame.len() > SEND_BUFFER + CONTROL_FRAME_MAX {
            return Err(VsockError::Exhausted);
        }
        conn.send.extend(frame);
        drop(st);
        self.backend.wake_worker();
        Ok(())
    }

    /// Queues all of `data` for the guest, waiting for room before `deadline`.
    pub(crate) fn write_all(&self, mut data: &[u8], deadline: Instant) -> Result<(), VsockError> {
        let b = &self.backend;
        while !data.is_empty() {
            let mut st = b.wait(deadline, |st| {
                st.conns
                    .get(&self.port)
                    .is_none_or(|c| c.send.len() < SEND_BUFFER || c.state != ConnState::Connected)
            })?;
            let conn = st
                .conns
                .get_mut(&self.port)
                .filter(|c| c.state == ConnState::Connected)
                .ok_or(VsockError::Reset)?;
            let n = data.len().min(SEND_BUFFER - conn.send.len());
            conn.send.extend(&data[..n]);
            data = &data[n..];
            drop(st);
            b.wake_worker();
        }
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.backend.lock();
        if let Some(conn) = st.conns.get_mut(&self.port) {
            conn.host_gone = true;
            conn.send.clear();
            if matches!(conn.state, ConnState::Connected | ConnState::Connecting) {
                conn.state = ConnState::Reset;
                // A request never sent needs no reset: the guest never heard of the connection.
                conn.need_rst = !conn.need_request;
                conn.need_request = false;
            }
        }
        drop(st);
        self.backend.wake_worker();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GUEST: u64 = 3;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn guest(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    /// Connects host port -> guest port 1024 with a simulated guest that answers `answer`.
    fn connect(b: &Arc<Backend>, answer: Op) -> (Result<Stream, VsockError>, u32) {
        let b2 = b.clone();
        let guest_side = std::thread::spawn(move || {
            loop {
                if let Some((h, _)) = b2.next_for_guest(4096) {
                    assert_eq!((h.op, h.dst_port, h.dst_cid), (Op::Request, 1024, GUEST));
                    b2.on_guest_packet(&guest(answer, 1024, h.src_port, 0), &[]);
                    return h.src_port;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let stream = b.connect(1024, soon());
        (stream, guest_side.join().unwrap())
    }

    #[test]
    fn connect_exchange_data_with_credit_and_close() {
        let b = Arc::new(Backend::new(GUEST).unwrap());
        let (stream, port) = connect(&b, Op::Response);
        let stream = stream.unwrap();
        // Host -> guest, limited by the guest's 4096-byte credit.
        stream.write_all(&[7u8; 6000], soon()).unwrap();
        let (h, data) = b.next_for_guest(1 << 16).unwrap();
        assert_eq!((h.op, data.len()), (Op::Rw, 4096));
        assert!(b.next_for_guest(1 << 16).is_none(), "no credit left");
        let mut credit = guest(Op::CreditUpdate, 1024, port, 0);
        credit.fwd_cnt = 4096;
        b.on_guest_packet(&credit, &[]);
        let (_, rest) = b.next_for_guest(1 << 16).unwrap();
        assert_eq!(rest.len(), 6000 - 4096);
        // Guest -> host.
        b.on_guest_packet(&guest(Op::Rw, 1024, port, 5), b"hello");
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf, soon()).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        let mut fin = guest(Op::Shutdown, 1024, port, 0);
        fin.flags = SHUTDOWN_SEND;
        b.on_guest_packet(&fin, &[]);
        assert_eq!(stream.read(&mut buf, soon()).unwrap(), 0, "end of stream");
        drop(stream);
        let (h, _) = b.next_for_guest(4096).unwrap();
        assert_eq!(h.op, Op::Rst, "dropping the stream resets the connection");
    }

    #[test]
    fn an_unanswered_attempt_times_out_and_is_reset_only_if_it_was_sent() {
        let b = Arc::new(Backend::new(GUEST).unwrap());
        let shortly = || Instant::now() + Duration::from_millis(20);
        // Never delivered (no guest driver took it): dropped without a word to the guest.
        assert_eq!(b.connect(1024, shortly()).err(), Some(VsockError::TimedOut));
        assert!(!b.has_pending(), "a request never sent needs no reset");
        // Delivered but never answered: the guest is told the attempt is over.
        let b2 = b.clone();
        let guest_side = std::thread::spawn(move || {
            loop {
                if let Some((h, _)) = b2.next_for_guest(4096) {
                    return h;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let attempt = b.connect(1024, Instant::now() + Duration::from_millis(200));
        let request = guest_side.join().unwrap();
        assert_eq!(request.op, Op::Request);
        assert_eq!(attempt.err(), Some(VsockError::TimedOut));
        let (rst, _) = b.next_for_guest(4096).unwrap();
        assert_eq!((rst.op, rst.src_port), (Op::Rst, request.src_port));
        // The next attempt is a connection of its own, answered as usual.
        let (stream, port) = connect(&b, Op::Response);
        assert!(stream.is_ok());
        assert_ne!(port, request.src_port);
    }

    #[test]
    fn refused_connections_and_guest_initiated_requests() {
        let b = Arc::new(Backend::new(GUEST).unwrap());
        assert!(
            !b.heard_within(std::time::Duration::from_secs(3600)),
            "nothing heard yet"
        );
        let (stream, _) = connect(&b, Op::Rst);
        assert!(
            b.heard_within(std::time::Duration::from_secs(10)),
            "the RST was heard"
        );
        assert_eq!(stream.err(), Some(VsockError::Refused));
        // The guest tries to connect to the host: refused with RST.
        b.on_guest_packet(&guest(Op::Request, 5000, 80, 0), &[]);
        let (h, _) = b.next_for_guest(4096).unwrap();
        assert_eq!((h.op, h.dst_port, h.src_port), (Op::Rst, 5000, 80));
        // Misaddressed packets are dropped.
        let mut wrong = guest(Op::Request, 5000, 80, 0);
        wrong.src_cid = 99;
        b.on_guest_packet(&wrong, &[]);
        assert!(!b.has_pending());
    }

    #[test]
    fn a_guest_overrunning_its_credit_loses_the_connection() {
        let b = Arc::new(Backend::new(GUEST).unwrap());
        let (stream, port) = connect(&b, Op::Response);
        let stream = stream.unwrap();
        let chunk = vec![1u8; MAX_PAYLOAD as usize];
        for _ in 0..(RECV_BUFFER / MAX_PAYLOAD) {
            b.on_guest_packet(&guest(Op::Rw, 1024, port, MAX_PAYLOAD), &chunk);
        }
        b.on_guest_packet(&guest(Op::Rw, 1024, port, 1), &[1]);
        let (h, _) = b.next_for_guest(4096).unwrap();
        assert_eq!(h.op, Op::Rst);
        let mut buf = vec![0u8; RECV_BUFFER as usize];
        assert_eq!(
            stream.read(&mut buf, soon()).unwrap(),
            RECV_BUFFER as usize,
            "what was granted is kept"
        );
        assert_eq!(stream.read(&mut buf, soon()), Err(VsockError::Reset));
    }

    #[test]
    fn reads_time_out_and_close_all_fails_streams() {
        let b = Arc::new(Backend::new(GUEST).unwrap());
        let (stream, _) = connect(&b, Op::Response);
        let stream = stream.unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            stream.read(&mut buf, Instant::now() + Duration::from_millis(20)),
            Err(VsockError::TimedOut)
        );
        b.close_all("zone stopped");
        assert_eq!(
            stream.read(&mut buf, soon()),
            Err(VsockError::Closed("zone stopped".into()))
        );
        assert!(matches!(
            b.connect(1024, soon()),
            Err(VsockError::Closed(_))
        ));
    }

    #[test]
    fn reading_returns_credit_to_the_guest() {
        let b = Arc::new(Backend::new(GUEST).unwrap());
        let (stream, port) = connect(&b, Op::Response);
        let stream = stream.unwrap();
        let chunk = vec![2u8; MAX_PAYLOAD as usize];
        b.on_guest_packet(&guest(Op::Rw, 1024, port, MAX_PAYLOAD), &chunk);
        let mut buf = vec![0u8; MAX_PAYLOAD as usize];
        stream.read(&mut buf, soon()).unwrap();
        let (h, _) = b.next_for_guest(4096).unwrap();
        assert_eq!(
            (h.op, h.fwd_cnt, h.buf_alloc),
            (Op::CreditUpdate, MAX_PAYLOAD, RECV_BUFFER)
        );
    }
}
