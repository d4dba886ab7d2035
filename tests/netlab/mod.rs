//! What the network tests share: a network namespace per test, peers (echo, stream) and a DNS
//! server on its addresses, a Linux zone with the `netprobe` tool, and event helpers.
#![allow(dead_code)]

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use zones::net::{Net, NetBuilderExt};
use zones::{Command, Denial, EventStream, Process, ProcessEvent, Zone, ZoneBuilder, ZoneEvent};

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Held by every network test for its whole run: shared by most, exclusive for a test that
/// counts this process's descriptors (the tests of a binary share one process, so another
/// test's zone would be counted too).
static PROCESS: RwLock<()> = RwLock::new(());

/// What a test holds while it runs beside others (see [`namespace`]).
pub enum Share {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

/// Moves this test's thread into a new network namespace (the zone's threads, spawned from it,
/// follow): loopback up, `addrs` added to it. The test runs beside the others while it holds
/// the returned guard.
#[must_use = "the guard keeps a descriptor-counting test from running beside this one"]
pub fn namespace(addrs: &[&str]) -> Share {
    let guard = PROCESS.read().unwrap_or_else(|e| e.into_inner());
    enter_namespace(addrs);
    Share::Shared(guard)
}

/// As [`namespace`], for a test that counts this process's descriptors: no other network test
/// runs while it holds the returned guard.
#[must_use = "the guard keeps other tests' zones out of this test's descriptor count"]
pub fn namespace_alone(addrs: &[&str]) -> Share {
    let guard = PROCESS.write().unwrap_or_else(|e| e.into_inner());
    enter_namespace(addrs);
    Share::Alone(guard)
}

fn enter_namespace(addrs: &[&str]) {
    // SAFETY: unshare(2) with CLONE_NEWNET affects only the calling thread's network namespace.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    ip(&["link", "set", "lo", "up"]);
    for a in addrs {
        ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
    }
}

/// Routes `net` to a TUN device that nobody reads: connections to it hang (SYNs vanish).
pub fn sinkhole(net: &str) {
    ip(&["tuntap", "add", "dev", "sink", "mode", "tun"]);
    ip(&["link", "set", "sink", "up"]);
    ip(&["route", "add", net, "dev", "sink"]);
}

/// Creates TAP `name` with address `cidr` on the host side, up.
pub fn tap(name: &str, cidr: &str) {
    ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
    ip(&["addr", "add", cidr, "dev", name]);
    ip(&["link", "set", name, "up"]);
}

/// Lets every group open ICMP echo sockets in this namespace.
pub fn allow_ping_sockets() {
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
        .expect("ping_group_range");
}

/// A UDP peer that echoes every datagram.
pub struct UdpEcho {
    port: u16,
    received: Arc<AtomicU64>,
}

impl UdpEcho {
    pub fn bind(at: &str) -> Self {
        let socket = UdpSocket::bind(at).expect("bind");
        let port = socket.local_addr().unwrap().port();
        let received: Arc<AtomicU64> = Arc::default();
        let count = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = socket.send_to(&buf[..n], from);
            }
        });
        Self { port, received }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

/// A TCP peer on the namespace's loopback.
pub struct Peer {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

impl Peer {
    fn start(at: &str, serve: fn(std::net::TcpStream, &Peer)) -> Self {
        let listener = TcpListener::bind(at).expect("bind the peer");
        let peer = Peer {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            sent: Arc::default(),
            closed: Arc::default(),
        };
        let shared = Peer {
            addr: peer.addr,
            accepted: peer.accepted.clone(),
            sent: peer.sent.clone(),
            closed: peer.closed.clone(),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                serve(stream, &shared);
            }
        });
        peer
    }

    /// Echoes what it reads until the client shuts its side, then closes.
    pub fn echo(at: &str) -> Self {
        Self::start(at, |mut s, _| {
            let mut data = Vec::new();
            let _ = s.read_to_end(&mut data);
            let _ = s.write_all(&data);
        })
    }

    /// Sends zeros until the connection breaks.
    pub fn stream(at: &str) -> Self {
        Self::start(at, |mut s, peer| {
            peer.closed.store(false, Ordering::SeqCst);
            let chunk = vec![0u8; 64 << 10];
            while let Ok(n) = s.write(&chunk) {
                peer.sent.fetch_add(n as u64, Ordering::SeqCst);
            }
            peer.closed.store(true, Ordering::SeqCst);
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until `bytes` were sent on the current connection.
    pub fn wait_sent(&self, bytes: u64) {
        wait(Duration::from_secs(60), "data flowing to the guest", || {
            self.sent.load(Ordering::SeqCst) >= bytes
        });
    }

    /// Waits until the current connection broke.
    pub fn wait_closed(&self) {
        wait(Duration::from_secs(10), "the host side to close", || {
            self.closed.load(Ordering::SeqCst)
        });
    }
}

/// A DNS server answering A queries from a table (other names: NXDOMAIN).
pub struct Dns {
    addr: SocketAddr,
    asked: Arc<Mutex<HashMap<String, u64>>>,
}

impl Dns {
    pub fn serve(table: &[(&str, &str)]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let table: HashMap<String, Ipv4Addr> = table
            .iter()
            .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
            .collect();
        let asked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let counts = asked.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = query.queries.first() else {
                    continue;
                };
                let name = q.name.to_ascii().trim_end_matches('.').to_lowercase();
                *counts.lock().unwrap().entry(name.clone()).or_default() += 1;
                let mut answer = Message::new(
                    query.metadata.id,
                    MessageType::Response,
                    query.metadata.op_code,
                );
                answer.metadata.recursion_desired = query.metadata.recursion_desired;
                answer.metadata.recursion_available = true;
                answer.add_query(q.clone());
                match table.get(&name) {
                    Some(a) if q.query_type == RecordType::A => {
                        answer.add_answer(Record::from_rdata(q.name.clone(), 60, RData::A(A(*a))));
                    }
                    Some(_) => {}
                    None => answer.metadata.response_code = ResponseCode::NXDomain,
                }
                let _ = socket.send_to(&answer.to_vec().unwrap(), from);
            }
        });
        Self { addr, asked }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How often `name` was asked for.
    pub fn asked(&self, name: &str) -> u64 {
        self.asked.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

/// Builds a Linux zone from `builder` with the host kernel, busybox and `/bin/netprobe`.
pub fn zone(builder: ZoneBuilder) -> Zone {
    let boot = crate::common::boot().file("/bin/netprobe", env!("ZONES_TOOL_NETPROBE"), 0o755);
    builder
        .memory_mib(256)
        .linux(boot)
        .deadline(crate::common::scaled(Duration::from_secs(90)))
        .build()
        .expect("Linux zone")
}

/// A Linux zone with network `net`.
pub fn zone_with(net: Net) -> Zone {
    zone(Zone::builder().net(net))
}

/// Runs `netprobe ARGS` in the zone; its one output line. Bounded (60 s, scaled): a probe that
/// hangs fails the test with the zone's state instead of running into the lab's timeout.
pub fn probe(zone: &Zone, args: &[&str]) -> String {
    let cmd = Command::new("/bin/netprobe")
        .args(args)
        .timeout(crate::common::scaled(Duration::from_secs(60)));
    let out = zone.exec(&cmd).unwrap_or_else(|e| {
        panic!(
            "netprobe {args:?}: {e}\nzone: {:?}\nmetrics: {:?}\nconsole:\n{}",
            zone.state(),
            zone.metrics(),
            zone.console_text()
        )
    });
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts `netprobe stream` in the zone, reading from `source` through the gateway, and returns
/// it once the zone has received `bytes`.
pub fn stream_from(zone: &Zone, source: &Peer, bytes: u64) -> Process {
    let from = format!("10.0.2.2:{}", source.port());
    let transfer = zone
        .spawn(&Command::new("/bin/netprobe").args(["stream", &from]))
        .unwrap_or_else(|e| panic!("netprobe stream {from}: {e}"));
    wait_rx(zone, bytes);
    transfer
}

/// The first line a spawned command prints on stdout (waits for it to end).
pub fn stdout_line(p: &mut Process) -> String {
    let mut out = Vec::new();
    while let Ok(Some(event)) = p.next_event() {
        match event {
            ProcessEvent::Stdout(b) => out.extend(b),
            ProcessEvent::Exited(_) => break,
            ProcessEvent::Stderr(_) => {}
        }
    }
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Waits (up to 30 s, scaled) for a denial that `pred` accepts.
pub fn wait_denial(events: &EventStream, pred: impl Fn(&Denial) -> bool) -> Denial {
    let until = Instant::now() + crate::common::scaled(Duration::from_secs(30));
    let mut seen = Vec::new();
    while Instant::now() < until {
        match events.next_timeout(Duration::from_millis(100)) {
            Some(ZoneEvent::Denied(d)) if pred(&d) => return d,
            Some(e) => seen.push(e),
            None => {}
        }
    }
    panic!("no such denial; events seen: {seen:?}");
}

/// Every denial queued now (after the aggregation interval has passed).
pub fn denials(events: &EventStream) -> Vec<Denial> {
    std::thread::sleep(Duration::from_millis(1500));
    events
        .drain()
        .into_iter()
        .filter_map(|e| match e {
            ZoneEvent::Denied(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Waits until the guest has received `bytes` through its network (frames written into its
/// memory, not just bytes a host peer queued in its socket).
pub fn wait_rx(zone: &Zone, bytes: u64) {
    use zones::net::NetControl;
    wait(Duration::from_secs(60), "data reaching the guest", || {
        zone.net_metrics().is_ok_and(|m| m.rx_bytes >= bytes)
    });
}

/// Collects the denials a zone emits, on a thread of its own, until [`Collector::finish`].
pub struct Collector {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Denial>>,
}

impl Collector {
    pub fn start(events: EventStream) -> Self {
        let stop: Arc<AtomicBool> = Arc::default();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut quiet_since: Option<Instant> = None;
            loop {
                match events.next_timeout(Duration::from_millis(100)) {
                    Some(ZoneEvent::Denied(d)) => {
                        seen.push(d);
                        quiet_since = None;
                    }
                    Some(_) => {}
                    // Stopped, and nothing came for longer than an aggregation interval.
                    None if flag.load(Ordering::SeqCst) => {
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(1500) {
                            return seen;
                        }
                    }
                    None => {}
                }
            }
        });
        Self { stop, thread }
    }

    pub fn finish(self) -> Vec<Denial> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("collector")
    }
}

/// The guest's view of its network, for failure messages.
pub fn guest_net_state(zone: &Zone) -> String {
    use zones::net::NetControl;
    let script =
        "ip addr; ip route; cat /proc/net/arp; cat /sys/class/net/eth0/carrier; netstat -tn";
    let out = zone
        .exec(&Command::new("sh").arg("-c").arg(script))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(exec failed: {e})"));
    format!(
        "{out}
metrics: {:?}",
        zone.net_metrics()
    )
}

/// The zone's threads (vCPUs, devices) stayed inside their seccomp allowlists.
pub fn no_refused_syscalls(zone: &Zone) {
    if zone.metrics().seccomp_refused == 0 {
        return;
    }
    // The zone's last events (the test's own subscription may have taken them already).
    let recent = zone
        .quarantine()
        .map(|e| e.recent_events)
        .unwrap_or_default();
    let refusals: Vec<_> = recent
        .iter()
        .filter(|e| matches!(e, ZoneEvent::Violation(v) if v.control == "seccomp"))
        .collect();
    panic!("system calls refused on the zone's threads: {refusals:?}");
}

/// File descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn wait(bound: Duration, what: &str, done: impl Fn() -> bool) {
    let until = Instant::now() + crate::common::scaled(bound);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
