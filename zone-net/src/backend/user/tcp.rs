//! TCP flows of the user-space stack: judged at the guest's SYN, connected on the host, then
//! proxied between a smoltcp socket (the guest's peer) and the host socket.

use super::flows::{Flow, FlowKey, Kind, TcpFlow, TcpState};
use super::phy::Phy;
use super::{Gate, UserStack, host, host_target};
use crate::metrics::{Counters, DropReason};
use crate::packet::TcpSegment;
use crate::policy::{FlowTarget, Protocol};
use smoltcp::iface::SocketSet;
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};
use smoltcp::wire::{IpAddress, IpListenEndpoint, Ipv4Address};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use zone_core::device::{EventOps, EventSet};

/// What serving a flow did.
pub(crate) struct Served {
    pub(crate) moved: bool,
    pub(crate) done: bool,
}

/// A TCP segment from the guest.
pub(crate) fn on_segment(
    stack: &mut UserStack,
    gate: &mut Gate,
    seg: TcpSegment,
    frame: &[u8],
    ops: &mut EventOps<'_>,
) {
    let key = FlowKey {
        protocol: Protocol::Tcp,
        guest_port: seg.src.port(),
        dst: seg.dst,
    };
    if let Some(slot) = stack.flows.find(&key) {
        let Some(flow) = stack.flows.get_mut(slot) else {
            return;
        };
        flow.last = gate.now;
        flow.bytes_out += seg.payload_len as u64;
        let Kind::Tcp(t) = &mut flow.kind else {
            return;
        };
        match t.state {
            // The guest gave up before the host answered.
            TcpState::Connecting { .. } if seg.rst => mark_dead(flow),
            // A retransmitted SYN while the host connect is under way.
            TcpState::Connecting { .. } => {}
            TcpState::Open(_) => stack.phy.inbound.push_back(frame.to_vec()),
        }
        return;
    }
    if !seg.is_open() {
        // No flow: smoltcp answers with a RST (and ignores a RST).
        stack.phy.inbound.push_back(frame.to_vec());
        return;
    }
    let target = FlowTarget {
        protocol: Protocol::Tcp,
        addr: IpAddr::V4(*seg.dst.ip()),
        port: Some(seg.dst.port()),
        name: None,
    };
    let verdict = gate.judge(&target);
    if !verdict.allowed() || !stack.has_room(gate, &target) {
        let rst = gate.link.tcp_reset(&seg);
        gate.send(rst);
        return;
    }
    let stream = match host::connect(host_target(gate, seg.dst)) {
        Ok(s) => s,
        Err(_) => {
            Counters::add(&gate.counters.flows_failed, 1);
            let rst = gate.link.tcp_reset(&seg);
            gate.send(rst);
            return;
        }
    };
    let kind = Kind::Tcp(TcpFlow {
        stream,
        state: TcpState::Connecting {
            syn: frame.to_vec(),
            seg,
        },
        readable: false,
        writable: false,
        write_shut: false,
    });
    let flow = Flow::new(gate, key, target, verdict, kind);
    if !stack.add(flow, EventSet::IN | EventSet::OUT, gate, ops) {
        gate.counters.dropped(DropReason::Backlog);
        let rst = gate.link.tcp_reset(&seg);
        gate.send(rst);
    }
}

/// Marks a flow for closing on its next service.
pub(crate) fn mark_dead(flow: &mut Flow) {
    flow.dead = true;
}

/// Serves one TCP flow: completes its connect, moves data both ways, follows closes. `buffer`
/// is the size of each direction's buffer of a new smoltcp socket.
pub(crate) fn serve(
    flow: &mut Flow,
    sockets: &mut SocketSet<'static>,
    phy: &mut Phy,
    gate: &mut Gate,
    buffer: usize,
) -> Served {
    let idle = Served {
        moved: false,
        done: false,
    };
    let Kind::Tcp(t) = &mut flow.kind else {
        return Served {
            moved: false,
            done: true,
        };
    };
    let handle = match &t.state {
        TcpState::Connecting { .. } if flow.dead => {
            return Served {
                moved: false,
                done: true,
            };
        }
        TcpState::Connecting { .. } if !t.writable => return idle,
        TcpState::Connecting { syn, seg } => {
            let connected =
                matches!(t.stream.take_error(), Ok(None)) && t.stream.peer_addr().is_ok();
            let socket = connected.then(|| listening(seg, buffer)).flatten();
            let Some(socket) = socket else {
                Counters::add(&gate.counters.flows_failed, 1);
                let rst = gate.link.tcp_reset(seg);
                gate.send(rst);
                return Served {
                    moved: true,
                    done: true,
                };
            };
            // The guest's SYN reaches smoltcp only now: it answers SYN-ACK.
            phy.inbound.push_back(syn.clone());
            t.state = TcpState::Open(sockets.add(socket));
            return Served {
                moved: true,
                done: false,
            };
        }
        TcpState::Open(handle) => *handle,
    };
    let socket = sockets.get_mut::<Socket>(handle);
    if flow.dead {
        // Aborted: done once smoltcp has sent its RST (it then forgets the peer).
        let done = socket.state() == State::Closed && socket.remote_endpoint().is_none();
        return Served { moved: false, done };
    }
    let mut moved = false;
    let mut failed = false;
    // Guest to host.
    while t.writable && socket.can_recv() {
        let r = socket.recv(|data| match (&t.stream).write(data) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match r {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => moved = true,
            Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => t.writable = false,
            Ok(Err(_)) | Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let guest_done = matches!(
        socket.state(),
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait | State::Closed
    );
    if !failed && guest_done && !socket.can_recv() && !t.write_shut {
        let _ = t.stream.shutdown(std::net::Shutdown::Write);
        t.write_shut = true;
    }
    // Host to guest.
    while !failed && t.readable && socket.can_send() {
        let r = socket.send(|buf| match (&t.stream).read(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match r {
            Ok(Ok(0)) => {
                // The host peer closed its side: FIN to the guest once the data is out.
                socket.close();
                t.readable = false;
            }
            Ok(Ok(n)) => {
                flow.bytes_in += n as u64;
                moved = true;
            }
            Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => t.readable = false,
            Ok(Err(_)) | Err(_) => failed = true,
        }
    }
    if failed {
        // The host peer reset (or the socket broke): reset the guest's side too.
        host::reset_on_close(&t.stream);
        socket.abort();
        flow.dead = true;
        return Served {
            moved: true,
            done: false,
        };
    }
    if moved {
        flow.last = gate.now;
    }
    let done = socket.state() == State::TimeWait
        || (socket.state() == State::Closed && socket.remote_endpoint().is_none());
    Served { moved, done }
}

/// A smoltcp socket listening where the guest's SYN `seg` goes, with `buffer` bytes each way.
fn listening(seg: &TcpSegment, buffer: usize) -> Option<Socket<'static>> {
    let mut socket = Socket::new(
        SocketBuffer::new(vec![0u8; buffer]),
        SocketBuffer::new(vec![0u8; buffer]),
    );
    socket.set_nagle_enabled(false);
    let local = IpListenEndpoint {
        addr: Some(IpAddress::Ipv4(Ipv4Address::from(seg.dst.ip().octets()))),
        port: seg.dst.port(),
    };
    socket.listen(local).ok()?;
    Some(socket)
}
