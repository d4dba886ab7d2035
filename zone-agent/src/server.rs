//! The agent's vsock server: accepts connections on [`AGENT_PORT`](proto::AGENT_PORT) and serves
//! one command (or one `PING`) per connection, as [`proto`] describes.
//!
//! [`run`] is the server process (forked by PID 1, or `zone-agent --serve`); [`handle_connection`] serves one connection over any
//! connected stream socket (tests drive it over a Unix socket pair).

mod defaults;
mod relay;
mod session;
mod stdin;

use crate::proto::{self, ExecRequest, kind};
use crate::sys;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// How many times [`run`] tries to listen before giving up.
pub const LISTEN_ATTEMPTS: u32 = 100;
/// Pause between listen attempts.
pub const LISTEN_RETRY: Duration = Duration::from_millis(100);
/// Stack size of the agent's threads (per connection and per command).
pub(crate) const THREAD_STACK: usize = 256 << 10;

/// Serves one connection: a `PING` gets a `PONG`; an `EXEC` runs the command and streams it
/// (`STARTED`, output, exactly one `EXIT`); anything else gets an `ERROR`. Returns when the
/// exchange is over; the connection is closed when `conn` is dropped. Never panics on anything
/// the peer sends.
pub fn handle_connection(conn: OwnedFd) {
    let conn = File::from(conn);
    let frame = proto::read_frame(&mut &conn);
    match frame {
        // The host connected and left (e.g. a port probe): nothing to do.
        Ok(None) => {}
        Err(e) => send_error(&conn, &format!("malformed first frame: {e}")),
        Ok(Some((kind::PING, payload))) if payload.is_empty() => {
            // Nothing follows a PONG; a host that is already gone is no concern of ours.
            let _ = proto::write_frame(&mut &conn, kind::PONG, &pong_payload());
        }
        Ok(Some((kind::PING, _))) => send_error(&conn, "malformed PING: it carries no payload"),
        Ok(Some((kind::BOOT, _))) => {
            let _ = proto::write_frame(&mut &conn, kind::BOOT_TIMES, boot_times().as_bytes());
        }
        Ok(Some((kind::EXEC, _))) if defaults::get().rootfs_error.is_some() => {
            let msg = defaults::get().rootfs_error.clone().unwrap_or_default();
            send_error(&conn, &msg);
        }
        Ok(Some((kind::EXEC, payload))) => match ExecRequest::decode(&payload) {
            Ok(request) => session::run(conn, request),
            Err(e) => send_error(&conn, &format!("rejected EXEC request: {e}")),
        },
        Ok(Some((other, _))) => send_error(
            &conn,
            &format!(
                "unexpected first frame kind {other}: a connection starts with EXEC, PING or BOOT"
            ),
        ),
    }
}

/// When the server listened itself (no socket from PID 1) and when it began to serve (guest
/// boot time, microseconds).
static LISTENING_AT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
static SERVING_AT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The `BOOT_TIMES` payload: PID 1's marks, then the server's own.
fn boot_times() -> String {
    let mut text = defaults::get().boot.clone();
    for (name, at) in [
        (proto::boot::LISTENING, &LISTENING_AT),
        (proto::boot::SERVING, &SERVING_AT),
    ] {
        if let Some(at) = at.get() {
            text += &proto::boot::encode(&[(name.to_string(), *at)]);
        }
    }
    text
}

/// Guest boot time now, in microseconds.
fn now_micros() -> u64 {
    sys::boottime().as_micros().min(u128::from(u64::MAX)) as u64
}

/// The `PONG` payload: protocol version (u32 LE), then the kernel release (empty if unknown).
pub fn pong_payload() -> Vec<u8> {
    let mut payload = proto::VERSION.to_le_bytes().to_vec();
    if let Ok(release) = std::fs::read("/proc/sys/kernel/osrelease") {
        payload.extend_from_slice(release.trim_ascii());
    }
    payload
}

/// Sends an `ERROR` frame, ignoring a peer that is already gone.
fn send_error(conn: &File, message: &str) {
    let mut message = message.as_bytes();
    if message.len() > proto::MAX_FRAME as usize {
        message = &message[..proto::MAX_FRAME as usize];
    }
    let _ = proto::write_frame(&mut &*conn, kind::ERROR, message);
}

/// A listening vsock stream socket on `port` of every local CID (close-on-exec, backlog 128).
pub fn listen_vsock(port: u32) -> io::Result<OwnedFd> {
    let sock = sys::socket(sys::AF_VSOCK, sys::SOCK_STREAM | sys::SOCK_CLOEXEC, 0)?;
    sys::bind(
        sock.as_fd(),
        &sys::SockaddrVm::new(sys::VMADDR_CID_ANY, port),
    )?;
    sys::listen(sock.as_fd(), 128)?;
    Ok(sock)
}

/// The server process: takes the listening socket PID 1 passed (or, started otherwise,
/// listens on [`AGENT_PORT`](proto::AGENT_PORT) itself, retrying for about ten seconds while the
/// vsock transport comes up), then serves every connection on its own thread, forever. Exits
/// with status 1 if it cannot listen. It prints nothing when it is ready (the boot-mark port and
/// the `BOOT` answer say when): on a serial console each character is a trap to the host, and a
/// line cost the first command about 15 ms in the lab.
pub fn run() -> ! {
    defaults::take();
    let listener = inherited_listener().unwrap_or_else(|| {
        let listener = listen_with_retries(proto::AGENT_PORT);
        let _ = LISTENING_AT.set(now_micros());
        sys::port_mark(proto::boot::LISTENING);
        listener
    });
    let _ = SERVING_AT.set(now_micros());
    sys::port_mark(proto::boot::SERVING);
    loop {
        match sys::accept4(listener.as_fd(), sys::SOCK_CLOEXEC) {
            Ok(conn) => {
                let spawned = std::thread::Builder::new()
                    .name("zone-agent-conn".into())
                    .stack_size(THREAD_STACK)
                    .spawn(move || handle_connection(conn));
                if let Err(e) = spawned {
                    // The connection is dropped (closed) with the closure; the host sees EOF.
                    eprintln!("zone-agent: cannot start a thread for a connection: {e}");
                }
            }
            // The peer gave up before we accepted: nothing to serve.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                eprintln!(
                    "zone-agent: accept on vsock port {}: {e}",
                    proto::AGENT_PORT
                );
                // Out of descriptors or memory: let the running commands finish some work.
                std::thread::sleep(LISTEN_RETRY);
            }
        }
    }
}

/// The listening socket PID 1 passed, close-on-exec again (commands must not inherit it).
fn inherited_listener() -> Option<OwnedFd> {
    let fd = defaults::get().listen_fd?;
    // SAFETY: PID 1 opened this socket and passed its number to this process alone, which owns
    // nothing under that number yet; if it is not open after all, fcntl fails and the
    // descriptor is forgotten, not closed.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    match sys::set_cloexec(sock.as_fd(), true) {
        Ok(()) => Some(sock),
        Err(_) => {
            std::mem::forget(sock);
            None
        }
    }
}

/// A listening socket on vsock `port`, retried for about ten seconds while the vsock transport
/// comes up; exits the process with status 1 (naming the likely cause) when it cannot listen.
pub fn listen_with_retries(port: u32) -> OwnedFd {
    let mut last = None;
    for attempt in 0..LISTEN_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(LISTEN_RETRY);
        }
        match listen_vsock(port) {
            Ok(sock) => return sock,
            Err(e) => last = Some(e),
        }
    }
    let err = last.map_or_else(|| "no attempt made".to_string(), |e| e.to_string());
    eprintln!(
        "zone-agent: cannot listen on vsock port {port}: {err} (is vmw_vsock_virtio_transport loaded?)"
    );
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_starts_with_the_version() {
        let p = pong_payload();
        assert_eq!(p[..4], proto::VERSION.to_le_bytes());
        assert!(!p[4..].ends_with(b"\n"));
    }
}
