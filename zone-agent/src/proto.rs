//! The exec protocol between the host (zone-core) and the agent, shared by both.
//!
//! One command per connection: the host opens a vsock stream to the agent's port
//! ([`AGENT_PORT`]), sends an [`EXEC`](kind::EXEC) frame with an encoded [`ExecRequest`], then
//! optionally stdin frames; the agent answers with `STARTED`, any number of `STDOUT`/`STDERR`
//! frames, and finally exactly one `EXIT` or `ERROR` frame, then closes the connection. A `PING`
//! connection gets one `PONG` (the agent's version and kernel release) and is closed.
//!
//! Frame: `kind: u8`, `len: u32` little-endian, `payload: [u8; len]`, `len <= MAX_FRAME`.
//! Everything read from the peer is bounded and validated; a malformed frame ends the connection.

use std::io::{self, Read, Write};

/// vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// Largest frame payload.
pub const MAX_FRAME: u32 = 1 << 20;
/// Data frames (stdin/stdout/stderr) carry at most this many bytes.
pub const DATA_CHUNK: usize = 64 << 10;
/// Protocol version reported in `PONG`.
pub const VERSION: u32 = 1;

/// Frame kinds.
pub mod kind {
    /// Host -> agent: an encoded `ExecRequest`. First frame of an exec connection.
    pub const EXEC: u8 = 1;
    /// Host -> agent: bytes for the command's stdin.
    pub const STDIN: u8 = 2;
    /// Host -> agent: close the command's stdin. Empty payload.
    pub const STDIN_EOF: u8 = 3;
    /// Host -> agent: send this signal (`u32` LE) to the command's process.
    pub const SIGNAL: u8 = 4;
    /// Host -> agent: readiness probe. Empty payload; first and only frame of its connection.
    pub const PING: u8 = 5;
    /// Host -> agent: asks for the agent's boot times. Empty payload; first and only frame.
    pub const BOOT: u8 = 6;
    /// Agent -> host: the command started; payload `pid: u32` LE.
    pub const STARTED: u8 = 16;
    /// Agent -> host: bytes the command wrote to stdout.
    pub const STDOUT: u8 = 17;
    /// Agent -> host: bytes the command wrote to stderr.
    pub const STDERR: u8 = 18;
    /// Agent -> host: the command ended; payload is an encoded `ExitReport`. Last frame.
    pub const EXIT: u8 = 19;
    /// Agent -> host: the command could not be run; payload is a UTF-8 message. Last frame.
    pub const ERROR: u8 = 20;
    /// Agent -> host: answer to `PING`; payload `version: u32` LE, then the kernel release.
    pub const PONG: u8 = 21;
    /// Agent -> host: answer to `BOOT`; payload: [`boot::encode`](super::boot::encode)d marks.
    pub const BOOT_TIMES: u8 = 22;
}

/// Limits on an `ExecRequest`.
pub mod limits {
    /// Most arguments (program included).
    pub const MAX_ARGS: u32 = 4096;
    /// Most environment entries.
    pub const MAX_ENV: u32 = 4096;
    /// Longest single argument, environment entry or working directory.
    pub const MAX_STRING: u32 = 128 << 10;
}

/// A command to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no slash.
    pub argv: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries added to (or, with `clear_env`, replacing) the agent's environment.
    pub env: Vec<Vec<u8>>,
    /// Working directory (empty: `/`).
    pub cwd: Vec<u8>,
    /// Kill the command (SIGKILL) after this many milliseconds; 0: no limit.
    pub timeout_ms: u64,
    /// Keep stdin open for `STDIN` frames; otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// Start from an empty environment instead of the agent's.
    pub clear_env: bool,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitReport {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Terminating signal, when a signal ended it.
    pub signal: Option<i32>,
    /// The agent killed it because `timeout_ms` passed.
    pub timed_out: bool,
}

/// Why bytes could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed exec protocol data: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const FLAG_STDIN: u8 = 1;
const FLAG_CLEAR_ENV: u8 = 2;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let lo = u64::from(self.u32(what)?);
        let hi = u64::from(self.u32(what)?);
        Ok(lo | (hi << 32))
    }

    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32(what)?;
        if len > limits::MAX_STRING {
            return Err(DecodeError("string longer than the limit"));
        }
        Ok(self.take(len as usize, what)?.to_vec())
    }

    fn list(&mut self, max: u32, what: &'static str) -> Result<Vec<Vec<u8>>, DecodeError> {
        let n = self.u32(what)?;
        if n > max {
            return Err(DecodeError("too many entries"));
        }
        (0..n).map(|_| self.bytes(what)).collect()
    }
}

impl ExecRequest {
    /// Encodes the request as an `EXEC` payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.argv.len() as u32).to_le_bytes());
        self.argv.iter().for_each(|a| put_bytes(&mut out, a));
        out.extend_from_slice(&(self.env.len() as u32).to_le_bytes());
        self.env.iter().for_each(|e| put_bytes(&mut out, e));
        put_bytes(&mut out, &self.cwd);
        out.extend_from_slice(&self.timeout_ms.to_le_bytes());
        let flags = if self.stdin { FLAG_STDIN } else { 0 }
            | if self.clear_env { FLAG_CLEAR_ENV } else { 0 };
        out.push(flags);
        out
    }

    /// Decodes an `EXEC` payload. Rejects empty `argv`, over-limit sizes and trailing bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor { buf };
        let argv = c.list(limits::MAX_ARGS, "argv")?;
        if argv.is_empty() || argv[0].is_empty() {
            return Err(DecodeError("no program"));
        }
        if argv.iter().any(|a| a.contains(&0)) {
            return Err(DecodeError("argument contains NUL"));
        }
        let env = c.list(limits::MAX_ENV, "env")?;
        if env.iter().any(|e| e.contains(&0) || !e.contains(&b'=')) {
            return Err(DecodeError("environment entry is not KEY=VALUE"));
        }
        let cwd = c.bytes("cwd")?;
        if cwd.contains(&0) {
            return Err(DecodeError("cwd contains NUL"));
        }
        let timeout_ms = c.u64("timeout")?;
        let flags = c.take(1, "flags")?[0];
        if flags & !(FLAG_STDIN | FLAG_CLEAR_ENV) != 0 {
            return Err(DecodeError("unknown flags"));
        }
        if !c.buf.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Self {
            argv,
            env,
            cwd,
            timeout_ms,
            stdin: flags & FLAG_STDIN != 0,
            clear_env: flags & FLAG_CLEAR_ENV != 0,
        })
    }
}

impl ExitReport {
    /// Encodes the report as an `EXIT` payload (9 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10);
        out.push(
            u8::from(self.code.is_some())
                | (u8::from(self.signal.is_some()) << 1)
                | (u8::from(self.timed_out) << 2),
        );
        out.extend_from_slice(&self.code.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.signal.unwrap_or(0).to_le_bytes());
        out
    }

    /// Decodes an `EXIT` payload.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() != 9 || buf[0] & !7 != 0 {
            return Err(DecodeError("exit report"));
        }
        let word = |i: usize| i32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        Ok(Self {
            code: (buf[0] & 1 != 0).then(|| word(1)),
            signal: (buf[0] & 2 != 0).then(|| word(5)),
            timed_out: buf[0] & 4 != 0,
        })
    }
}

/// Writes one frame. `payload` must not exceed [`MAX_FRAME`].
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_FRAME as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame payload over MAX_FRAME",
        ));
    }
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame longer than MAX_FRAME",
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_marks_round_trip_and_junk_is_ignored() {
        let marks = vec![
            ("agent_start".to_string(), 1_234_567),
            ("mounted".to_string(), 1_240_000),
        ];
        assert_eq!(boot::decode(&boot::encode(&marks)), marks);
        let junk = "x=1\nBAD=2\n=3\nno_equals\ny=notanumber\nz=-1\n".to_string()
            + "long_name_that_goes_on_and_on_and_on=5\n"
            + &"m=9\n".repeat(100);
        let got = boot::decode(&junk);
        assert_eq!(got[0], ("x".to_string(), 1));
        assert_eq!(got.len(), boot::MAX_MARKS, "bounded");
        assert!(
            got[1..].iter().all(|m| m == &("m".to_string(), 9)),
            "{got:?}"
        );
    }

    fn request() -> ExecRequest {
        ExecRequest {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"exit 3".to_vec()],
            env: vec![b"A=1".to_vec()],
            cwd: b"/tmp".to_vec(),
            timeout_ms: 1500,
            stdin: true,
            clear_env: false,
        }
    }

    #[test]
    fn requests_and_reports_round_trip() {
        let r = request();
        assert_eq!(ExecRequest::decode(&r.encode()), Ok(r));
        for rep in [
            ExitReport {
                code: Some(3),
                signal: None,
                timed_out: false,
            },
            ExitReport {
                code: None,
                signal: Some(9),
                timed_out: true,
            },
        ] {
            assert_eq!(ExitReport::decode(&rep.encode()), Ok(rep));
        }
    }

    #[test]
    fn malformed_requests_are_rejected() {
        let good = request().encode();
        for cut in 0..good.len() {
            assert!(
                ExecRequest::decode(&good[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(ExecRequest::decode(&trailing).is_err());
        let empty = ExecRequest {
            argv: vec![],
            ..request()
        };
        assert!(ExecRequest::decode(&empty.encode()).is_err());
        let bad_env = ExecRequest {
            env: vec![b"NOEQUALS".to_vec()],
            ..request()
        };
        assert!(ExecRequest::decode(&bad_env.encode()).is_err());
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(ExecRequest::decode(&huge).is_err(), "argc over the limit");
    }

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, kind::STDOUT, b"hello").unwrap();
        write_frame(&mut buf, kind::STDIN_EOF, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((kind::STDOUT, b"hello".to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some((kind::STDIN_EOF, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let mut big = vec![kind::STDOUT];
        big.extend_from_slice(&(MAX_FRAME + 1).to_le_bytes());
        assert!(read_frame(&mut &big[..]).is_err());
        assert!(
            read_frame(&mut &[1u8, 5, 0][..]).is_err(),
            "truncated header"
        );
    }
}

/// The agent's boot times: when (on the guest's `CLOCK_BOOTTIME`, since the kernel started) PID 1
/// reached each step. Text, one `name=micros` a line; the host takes at most [`boot::MAX_MARKS`]
/// well-formed lines and ignores the rest (the guest writes this).
pub mod boot {
    /// PID 1 started (the kernel's own boot is over).
    pub const AGENT_START: &str = "agent_start";
    /// `/proc`, `/sys`, `/dev`, `/tmp`, `/run` mounted.
    pub const MOUNTED: &str = "mounted";
    /// The listed kernel modules loaded.
    pub const MODULES: &str = "modules_loaded";
    /// The root filesystem switched to (or nothing to do).
    pub const ROOTFS: &str = "rootfs_ready";
    /// The network configured (or nothing to do).
    pub const NETWORK: &str = "network_ready";
    /// The agent port listens (PID 1 opens it; connections wait there for the server).
    pub const LISTENING: &str = "server_listening";
    /// The exec server accepts connections.
    pub const SERVING: &str = "server_ready";
    /// The marks the agent also writes to [`MARK_PORT`] (the value written is the index here
    /// plus one), so that the host stamps them on its own clock: under emulation the guest's
    /// clock can lose time against the host's while the guest boots.
    pub const PORT_MARKS: [&str; 7] = [
        AGENT_START,
        MOUNTED,
        MODULES,
        ROOTFS,
        NETWORK,
        LISTENING,
        SERVING,
    ];
    /// The I/O port of the host's boot-mark register (in the VGA range, which the zone's FADT
    /// declares absent, next to the power register).
    pub const MARK_PORT: u16 = 0x3c8;
    /// The value the agent writes to [`MARK_PORT`] for `mark`.
    pub fn port_value(mark: &str) -> Option<u8> {
        let i = PORT_MARKS.iter().position(|m| *m == mark)?;
        u8::try_from(i + 1).ok()
    }
    /// Most marks a report holds.
    pub const MAX_MARKS: usize = 16;
    /// Longest mark name.
    pub const MAX_NAME: usize = 32;

    /// The marks as text.
    pub fn encode(marks: &[(String, u64)]) -> String {
        marks.iter().map(|(n, us)| format!("{n}={us}\n")).collect()
    }

    /// The well-formed marks of `text`, at most [`MAX_MARKS`].
    pub fn decode(text: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter_map(|line| {
                let (name, micros) = line.split_once('=')?;
                let valid = !name.is_empty()
                    && name.len() <= MAX_NAME
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                valid.then_some((name.to_string(), micros.parse().ok()?))
            })
            .take(MAX_MARKS)
            .collect()
    }
}

/// How the host and the agent agree on a zone's root filesystem (zone-core's `Rootfs`).
pub mod rootfs {
    /// Where the host describes the root filesystem in the initramfs (absolute in the guest).
    pub const CONFIG: &str = "/etc/zones/rootfs";
    /// virtio-blk serial of the image's disk.
    pub const ROOTFS_SERIAL: &str = "zones-rootfs";
    /// virtio-blk serial of the scratch disk.
    pub const SCRATCH_SERIAL: &str = "zones-scratch";
}
