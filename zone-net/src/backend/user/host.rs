//! Host sockets for the user-space stack's flows: non-blocking TCP connects, connected UDP
//! sockets and unprivileged ICMP echo (ping) sockets.

use std::io;
use std::net::{SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn socket(ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts a non-blocking TCP connection to `to`; it completes when the socket becomes writable
/// (then `take_error` says how it went).
pub(crate) fn connect(to: SocketAddrV4) -> io::Result<TcpStream> {
    let fd = socket(libc::SOCK_STREAM, 0)?;
    let addr = sockaddr(to);
    // SAFETY: `addr` is a valid sockaddr_in of the size passed; `fd` is an open socket.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let stream = TcpStream::from(fd);
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Makes closing `stream` send a reset to its peer (SO_LINGER with a zero timeout): a flow the
/// guest reset, or that a cut or a policy ended, is reset on the host side too.
pub(crate) fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on an open socket with a valid `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A non-blocking UDP socket connected to `to`.
pub(crate) fn udp(to: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = UdpSocket::from(socket(libc::SOCK_DGRAM, 0)?);
    socket.connect(to)?;
    Ok(socket)
}

/// A non-blocking unprivileged ICMP echo socket connected to `to` (Linux "ping sockets"; the
/// host must allow the process's group in `net.ipv4.ping_group_range`).
pub(crate) fn ping(to: std::net::Ipv4Addr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::from(socket(libc::SOCK_DGRAM, libc::IPPROTO_ICMP)?);
    socket.connect(SocketAddrV4::new(to, 0))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    #[test]
    fn a_nonblocking_connect_completes_and_carries_data() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(at) = listener.local_addr().unwrap() else {
            panic!()
        };
        let mut stream = connect(at).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            match stream.write(b"hi") {
                Ok(2) => break,
                Ok(_) => panic!("short write"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < until);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut b = [0u8; 2];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
        assert!(stream.take_error().unwrap().is_none());
    }

    #[test]
    fn a_refused_connect_reports_its_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(at) = listener.local_addr().unwrap() else {
            panic!()
        };
        drop(listener);
        match connect(at) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            Ok(stream) => {
                let until = Instant::now() + Duration::from_secs(5);
                loop {
                    if let Some(e) = stream.take_error().unwrap() {
                        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                        break;
                    }
                    assert!(Instant::now() < until, "no error reported");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}
