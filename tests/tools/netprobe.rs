//! netprobe: a small static network probe the Linux-zone tests run inside their guests (busybox's
//! tools print errors that differ by version; this prints one line a test can parse).
//!
//! ```text
//! netprobe connect ADDR:PORT [SECS]        connected | refused | reset | timeout | error <e>
//! netprobe send ADDR:PORT TEXT             sends TEXT, prints the reply up to EOF: reply <text>
//! netprobe stream ADDR:PORT                reads until the end: bytes <n> end <eof|reset|error>
//! netprobe udp ADDR:PORT TEXT              sends a datagram, prints the reply: reply <text>
//! netprobe resolve NAME                    addrs <a,b> | nxdomain | noanswer | timeout | rcode <n>
//! netprobe synflood ADDR FIRST COUNT       sends COUNT connection requests to ports FIRST..
//! netprobe upload ADDR:PORT BYTES          sends BYTES, then waits for the peer to close:
//!                                          upload <bytes> <microseconds>
//! netprobe download ADDR:PORT              reads until the peer closes: download <bytes> <us>
//! netprobe rr ADDR:PORT COUNT              COUNT one-byte request/response round trips on one
//!                                          connection: rr <count> <microseconds>
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        println!("error bad address {s}");
        std::process::exit(2)
    })
}

fn outcome(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::ConnectionReset => "reset".into(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
        _ => format!("error {e}"),
    }
}

fn connect(to: &str, secs: u64) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(&addr(to), Duration::from_secs(secs)).map_err(|e| outcome(&e))
}

/// A DNS query for `name` (type A) to the first nameserver of /etc/resolv.conf.
fn resolve(name: &str) -> String {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let Some(server) = conf
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .find_map(|s| s.trim().parse::<Ipv4Addr>().ok())
    else {
        return "error no nameserver".into();
    };
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else {
        return "error bind".into();
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(3)));
    if let Err(e) = socket.send_to(&q, (server, 53)) {
        return outcome(&e);
    }
    let mut buf = [0u8; 4096];
    let n = match socket.recv(&mut buf) {
        Ok(n) => n,
        Err(e) => return outcome(&e),
    };
    let a = &buf[..n];
    if n < 12 || a[0..2] != [0x12, 0x34] {
        return "error bad answer".into();
    }
    match a[3] & 0xf {
        0 => {}
        3 => return "nxdomain".into(),
        rcode => return format!("rcode {rcode}"),
    }
    let answers = u16::from_be_bytes([a[6], a[7]]);
    // Skip the question: name, type, class.
    let mut at = 12;
    while at < n && a[at] != 0 {
        at += 1 + a[at] as usize;
    }
    at += 5;
    let mut addrs = Vec::new();
    for _ in 0..answers {
        // Name: a pointer (2 bytes) or labels.
        if at < n && a[at] & 0xc0 == 0xc0 {
            at += 2;
        } else {
            while at < n && a[at] != 0 {
                at += 1 + a[at] as usize;
            }
            at += 1;
        }
        if at + 10 > n {
            break;
        }
        let rtype = u16::from_be_bytes([a[at], a[at + 1]]);
        let len = u16::from_be_bytes([a[at + 8], a[at + 9]]) as usize;
        at += 10;
        if rtype == 1 && len == 4 && at + 4 <= n {
            addrs.push(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]).to_string());
        }
        at += len;
    }
    if addrs.is_empty() {
        "noanswer".into()
    } else {
        format!("addrs {}", addrs.join(","))
    }
}

/// Sends `count` connection requests (SYNs) to `ip`, ports `first`.., without waiting for any.
fn synflood(ip: Ipv4Addr, first: u16, count: u16) -> String {
    let started = Instant::now();
    let mut sent = 0;
    for i in 0..count {
        let port = first.wrapping_add(i);
        // std has no non-blocking connect: a socket per request with a 1 ms timeout sends its
        // SYN at once and is dropped either way.
        let _ = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(1));
        sent += 1;
    }
    format!("sent {sent} in {} ms", started.elapsed().as_millis())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let line = match arg(0) {
        "connect" => match connect(arg(1), arg(2).parse().unwrap_or(5)) {
            Ok(_) => "connected".into(),
            Err(e) => e,
        },
        "send" => match connect(arg(1), 5) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reply = String::new();
                match s
                    .write_all(arg(2).as_bytes())
                    .and_then(|()| s.shutdown(std::net::Shutdown::Write))
                    .and_then(|()| s.read_to_string(&mut reply))
                {
                    Ok(_) => format!("reply {}", reply.trim()),
                    Err(e) => outcome(&e),
                }
            }
            Err(e) => e,
        },
        "stream" => match connect(arg(1), 5) {
            Ok(mut s) => {
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0u64;
                let end = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break "eof".to_string(),
                        Ok(n) => total += n as u64,
                        Err(e) => break outcome(&e),
                    }
                };
                format!("bytes {total} end {end}")
            }
            Err(e) => e,
        },
        "udp" => {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            let _ = socket.set_read_timeout(Some(Duration::from_secs(3)));
            let _ = socket.send_to(arg(2).as_bytes(), addr(arg(1)));
            let mut buf = [0u8; 2048];
            match socket.recv(&mut buf) {
                Ok(n) => format!("reply {}", String::from_utf8_lossy(&buf[..n]).trim()),
                Err(e) => outcome(&e),
            }
        }
        "resolve" => resolve(arg(1)),
        "upload" => match connect(arg(1), 10) {
            Ok(mut s) => {
                let total: u64 = arg(2).parse().expect("bytes");
                let chunk = vec![0u8; 1 << 16];
                let started = Instant::now();
                let mut sent = 0u64;
                let mut result = Ok(());
                while sent < total && result.is_ok() {
                    let n = (total - sent).min(chunk.len() as u64) as usize;
                    result = s.write_all(&chunk[..n]);
                    sent += n as u64;
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                match result {
                    Ok(()) => format!("upload {sent} {}", started.elapsed().as_micros()),
                    Err(e) => outcome(&e),
                }
            }
            Err(e) => e,
        },
        "download" => match connect(arg(1), 10) {
            Ok(mut s) => {
                let mut buf = vec![0u8; 1 << 16];
                let started = Instant::now();
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break format!("download {total} {}", started.elapsed().as_micros()),
                        Ok(n) => total += n as u64,
                        Err(e) => break outcome(&e),
                    }
                }
            }
            Err(e) => e,
        },
        "rr" => match connect(arg(1), 10) {
            Ok(mut s) => {
                let _ = s.set_nodelay(true);
                let count: u32 = arg(2).parse().expect("count");
                let mut b = [0u8; 1];
                let started = Instant::now();
                let mut done = 0;
                while done < count {
                    if s.write_all(&[7]).and_then(|()| s.read_exact(&mut b)).is_err() {
                        break;
                    }
                    done += 1;
                }
                format!("rr {done} {}", started.elapsed().as_micros())
            }
            Err(e) => e,
        },
        "synflood" => {
            let ip: Ipv4Addr = arg(1).parse().expect("address");
            synflood(ip, arg(2).parse().expect("first port"), arg(3).parse().expect("count"))
        }
        _ => {
            println!("usage: netprobe connect|send|stream|udp|resolve|synflood ...");
            std::process::exit(2);
        }
    };
    println!("{line}");
}
