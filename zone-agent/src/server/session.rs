//! One command run for the host: spawn it in its own process group, stream its output, feed its
//! stdin, deliver signals, enforce the timeout, report how it ended.
//!
//! Threads of a session: two output pumps (stdout, stderr), the connection reader (STDIN,
//! STDIN_EOF, SIGNAL, the host going away), a stdin writer when stdin was requested and a
//! watchdog when a timeout was set. The calling thread waits for the command, then for both
//! pumps to reach end of file, then sends the one `EXIT` frame.

use super::THREAD_STACK;
use super::stdin::StdinQueue;
use crate::proto::{self, DATA_CHUNK, ExecRequest, ExitReport, kind};
use crate::sys;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
struct State {
    /// The command's process was reaped.
    leader_exited: bool,
    /// The command was reaped and its output drained: no more signals to its group.
    done: bool,
    /// The watchdog killed the command.
    timed_out: bool,
}

struct Session {
    /// Process group of the command (its pid: it was spawned with `process_group(0)`).
    pgid: i32,
    /// Write side of the connection: one frame at a time.
    wire: Mutex<File>,
    state: Mutex<State>,
    cond: Condvar,
    /// Present when the host asked for stdin.
    stdin: Option<StdinQueue>,
}

fn relock<T>(r: std::sync::LockResult<T>) -> T {
    // A poisoned lock only means another session thread panicked; the data stays usable.
    r.unwrap_or_else(|e| e.into_inner())
}

impl Session {
    fn state(&self) -> MutexGuard<'_, State> {
        relock(self.state.lock())
    }

    /// Sends a frame; `false` if the host is gone, in which case the command is killed.
    fn send(&self, kind: u8, payload: &[u8]) -> bool {
        let sent = proto::write_frame(&mut *relock(self.wire.lock()), kind, payload);
        if sent.is_err() {
            self.host_gone();
        }
        sent.is_ok()
    }

    /// Signals the command's whole process group, unless the session is over (its pgid may then
    /// belong to someone else).
    fn signal_group(&self, sig: i32) {
        let state = self.state();
        if !state.done && self.pgid > 1 {
            // ESRCH (everyone already gone) and EINVAL (bad signal number) are nothing to report.
            let _ = sys::kill(-self.pgid, sig);
        }
    }

    /// The host went away or broke the protocol: leave no orphans behind.
    fn host_gone(&self) {
        self.signal_group(sys::SIGKILL);
        if let Some(q) = &self.stdin {
            q.close();
        }
    }

    /// Ends both directions of the connection: the host sees end of file after our last frame,
    /// and the reader thread wakes up.
    fn shutdown(&self) {
        let wire = relock(self.wire.lock());
        let _ = sys::shutdown(wire.as_fd(), sys::SHUT_RDWR);
    }

    fn watchdog(&self, timeout: Duration) {
        let state = self.state();
        let (mut state, _) = relock(self.cond.wait_timeout_while(state, timeout, |s| !s.done));
        if !state.done && self.pgid > 1 {
            // Killed by us before it ended by itself: report it. (If the command already exited
            // and only lingering children hold its output open, they are killed but the
            // command's own status stands.)
            state.timed_out = !state.leader_exited;
            let _ = sys::kill(-self.pgid, sys::SIGKILL);
        }
    }

    fn finish(&self) {
        self.state().done = true;
        self.cond.notify_all();
        if let Some(q) = &self.stdin {
            q.close();
        }
    }
}

/// Runs `request` over `conn` (its first frame already read) and returns when the session is
/// over.
pub(super) fn run(conn: File, request: ExecRequest) {
    let reader = match conn.try_clone() {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("the agent cannot duplicate the connection: {e}");
            return super::send_error(&conn, &msg);
        }
    };
    let mut child = match spawn(&request) {
        Ok(c) => c,
        Err(msg) => return super::send_error(&conn, &msg),
    };
    let pid = child.id();
    let session = Arc::new(Session {
        pgid: i32::try_from(pid).unwrap_or(0),
        wire: Mutex::new(conn),
        state: Mutex::new(State::default()),
        cond: Condvar::new(),
        stdin: request.stdin.then(StdinQueue::default),
    });
    // If the host is already gone, `send` killed the command; the session still winds down
    // normally (reap, drain), its frames going nowhere.
    session.send(kind::STARTED, &pid.to_le_bytes());

    let mut threads = Threads::default();
    let started = start_threads(&session, &mut child, reader, &request, &mut threads);
    if started.is_err() {
        session.signal_group(sys::SIGKILL);
    }
    let status = child.wait();
    session.state().leader_exited = true;
    // Pumps end when every holder of the command's stdout and stderr is gone: no output lost.
    for pump in threads.pumps {
        let _ = pump.join();
    }
    session.finish();
    if let Some(watchdog) = threads.watchdog {
        let _ = watchdog.join();
    }
    let timed_out = session.state().timed_out;
    match (started, status) {
        (Err(e), _) => {
            let msg = format!(
                "the agent cannot start a thread for the command (killed it): {e}; the zone is low on memory"
            );
            session.send(kind::ERROR, msg.as_bytes());
        }
        (Ok(()), Ok(status)) => {
            let report = ExitReport {
                code: status.code(),
                signal: status.signal(),
                timed_out,
            };
            session.send(kind::EXIT, &report.encode());
        }
        (Ok(()), Err(e)) => {
            let msg = format!("the agent lost track of the command (pid {pid}): {e}");
            session.send(kind::ERROR, msg.as_bytes());
        }
    }
    session.shutdown();
}

/// The session threads that are waited for (the reader and the stdin writer end by themselves
/// once the session is over).
#[derive(Default)]
struct Threads {
    pumps: Vec<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
}

/// Starts the session's threads.
fn start_threads(
    session: &Arc<Session>,
    child: &mut Child,
    reader: File,
    request: &ExecRequest,
    threads: &mut Threads,
) -> io::Result<()> {
    if let Some(out) = child.stdout.take() {
        let s = session.clone();
        threads
            .pumps
            .push(thread("stdout", move || pump(&s, out, kind::STDOUT))?);
    }
    if let Some(err) = child.stderr.take() {
        let s = session.clone();
        threads
            .pumps
            .push(thread("stderr", move || pump(&s, err, kind::STDERR))?);
    }
    if let Some(stdin) = child.stdin.take() {
        let s = session.clone();
        thread("stdin", move || write_stdin(&s, stdin))?;
    }
    let s = session.clone();
    thread("reader", move || read_host(&s, reader))?;
    if request.timeout_ms > 0 {
        let s = session.clone();
        let timeout = Duration::from_millis(request.timeout_ms);
        threads.watchdog = Some(thread("watchdog", move || s.watchdog(timeout))?);
    }
    Ok(())
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("zone-agent-{name}"))
        .stack_size(THREAD_STACK)
        .spawn(f)
}

/// How long output waits for more before it goes to the host in a frame that is not full.
///
/// A program that writes in small pieces (4 KiB is common) would otherwise cost one frame, one
/// vsock packet and one guest interrupt per piece: the reader wakes at every write, so waiting
/// for readiness alone does not coalesce; sleeping briefly after the first piece does. In the
/// lab, 64 MiB of `head -c` output went from 4.9 MB/s to 11.7 MB/s, close to the 12.7 MB/s of
/// `head -c | cat` inside the guest. End of file is seen at once when there is no output;
/// otherwise output waits this much at most.
const COALESCE: Duration = Duration::from_millis(1);

/// Copies one of the command's outputs to the host, `DATA_CHUNK` bytes at most per frame: a frame
/// holds the first piece read plus whatever else arrived within [`COALESCE`] after it.
fn pump<R: Read + AsFd>(session: &Session, mut src: R, kind: u8) {
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        let first = match read_some(&mut src, &mut buf) {
            Some(0) | None => return,
            Some(n) => n,
        };
        if first < buf.len() {
            std::thread::sleep(COALESCE);
        }
        let (filled, eof) = drain(&mut src, &mut buf, first);
        if !session.send(kind, &buf[..filled]) || eof {
            return;
        }
    }
}

/// Reads what is already available into `buf[filled..]`, without waiting, until it is full.
/// Returns the bytes held and whether the source ended.
fn drain<R: Read + AsFd>(src: &mut R, buf: &mut [u8], mut filled: usize) -> (usize, bool) {
    while filled < buf.len() {
        if !sys::readable_now(src.as_fd()).unwrap_or(false) {
            break;
        }
        match read_some(src, &mut buf[filled..]) {
            Some(0) | None => return (filled, true),
            Some(n) => filled += n,
        }
    }
    (filled, false)
}

/// One read, retried on EINTR; `None` on an error (treated as the end of the output).
fn read_some(src: &mut impl Read, buf: &mut [u8]) -> Option<usize> {
    loop {
        match src.read(buf) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Feeds queued host bytes to the command's stdin; closes it on `STDIN_EOF`, or when the
/// command stops reading (broken pipe) or the session ends.
fn write_stdin(session: &Session, mut stdin: ChildStdin) {
    let Some(queue) = &session.stdin else { return };
    while let Some(chunk) = queue.pop() {
        if stdin.write_all(&chunk).is_err() {
            queue.close();
            return;
        }
    }
}

/// Reads the host's frames until the connection ends.
fn read_host(session: &Session, mut conn: File) {
    loop {
        match proto::read_frame(&mut conn) {
            Ok(Some((kind::STDIN, data))) => {
                // Without requested stdin the command reads /dev/null: ignore the bytes.
                if let Some(q) = &session.stdin {
                    q.push(data);
                }
            }
            Ok(Some((kind::STDIN_EOF, payload))) if payload.is_empty() => {
                if let Some(q) = &session.stdin {
                    q.finish();
                }
            }
            Ok(Some((kind::SIGNAL, payload))) if payload.len() == 4 => {
                let sig = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                // A number that is no signal is the host's mistake; the kernel would refuse it.
                if let Ok(sig) = i32::try_from(sig) {
                    session.signal_group(sig);
                }
            }
            // End of stream or a broken connection: the host went away.
            Ok(None) | Err(_) => return session.host_gone(),
            // A malformed or unexpected frame: the host cannot be trusted to follow the
            // command any more; end it and the connection.
            Ok(Some(_)) => {
                session.host_gone();
                return session.shutdown();
            }
        }
    }
}

fn display(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Spawns the command in a new process group; `Err` is the message for the host.
fn spawn(request: &ExecRequest) -> Result<Child, String> {
    let Some((program, args)) = request.argv.split_first() else {
        return Err("rejected EXEC request: no program".into());
    };
    let defaults = super::defaults::get();
    let cwd: &[u8] = match (&request.cwd[..], &defaults.cwd) {
        ([], Some(dir)) => dir,
        ([], None) => b"/",
        (dir, _) => dir,
    };
    match std::fs::metadata(Path::new(OsStr::from_bytes(cwd))) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "cannot run `{}`: working directory `{}` is not a directory",
                display(program),
                display(cwd)
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot run `{}`: working directory `{}`: {e}",
                display(program),
                display(cwd)
            ));
        }
    }
    let mut cmd = Command::new(OsStr::from_bytes(program));
    cmd.args(args.iter().map(|a| OsStr::from_bytes(a)));
    if request.clear_env {
        cmd.env_clear();
    }
    for entry in &request.env {
        let (key, value) = split_env(entry);
        cmd.env(OsStr::from_bytes(key), OsStr::from_bytes(value));
    }
    if let Some((uid, gid)) = defaults.user {
        cmd.uid(uid).gid(gid);
    }
    // std starts a command with posix_spawn (a clone that shares the server's memory until the
    // exec) only when it need not change directory (the agent is linked statically: its libc
    // offers no `posix_spawn_file_actions_addchdir_np` that std can find); with a directory it
    // forks, copying the server's page tables. The server's own directory needs no change.
    if !is_own_directory(cwd) {
        cmd.current_dir(OsStr::from_bytes(cwd));
    }
    cmd.stdin(if request.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    cmd.spawn().map_err(|e| spawn_error(request, program, &e))
}

/// Whether `dir` is the server's working directory, as it was when first asked (the server never
/// changes it).
fn is_own_directory(dir: &[u8]) -> bool {
    static OWN: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let own = OWN.get_or_init(|| {
        std::env::current_dir()
            .ok()
            .map(|d| d.into_os_string().into_encoded_bytes())
    });
    own.as_deref() == Some(dir)
}

/// `KEY=VALUE` split at the first `=` (a value may contain more); no `=`: an empty value.
pub(crate) fn split_env(entry: &[u8]) -> (&[u8], &[u8]) {
    match entry.iter().position(|&b| b == b'=') {
        Some(i) => (&entry[..i], &entry[i + 1..]),
        None => (entry, &[]),
    }
}

fn spawn_error(request: &ExecRequest, program: &[u8], e: &io::Error) -> String {
    let mut msg = format!("cannot run `{}`: {e}", display(program));
    if e.kind() == io::ErrorKind::NotFound && !program.contains(&b'/') {
        let from_request = request
            .env
            .iter()
            .rev()
            .map(|e| split_env(e))
            .find(|(k, _)| *k == b"PATH")
            .map(|(_, v)| display(v).into_owned());
        let path = from_request.or_else(|| {
            (!request.clear_env)
                .then(|| std::env::var_os("PATH"))
                .flatten()
                .map(|p| p.to_string_lossy().into_owned())
        });
        match path {
            Some(path) => msg.push_str(&format!(
                "; it is in no directory of PATH ({path}): give its absolute path or put it in the zone's image"
            )),
            None => msg.push_str("; PATH is not set: give the program's absolute path"),
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a first piece, waits `pause`, and takes what else is there, as `pump` does.
    fn frame(r: &mut std::io::PipeReader, cap: usize, pause: Duration) -> (Vec<u8>, bool) {
        let mut buf = vec![0u8; cap];
        let first = read_some(r, &mut buf).unwrap();
        std::thread::sleep(pause);
        let (n, eof) = drain(r, &mut buf, first);
        (buf[..n].to_vec(), eof)
    }

    #[test]
    fn output_written_in_pieces_goes_out_in_one_frame() {
        let (mut r, mut w) = std::io::pipe().unwrap();
        let (wrote_first, first_written) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            w.write_all(b"ab").unwrap();
            wrote_first.send(()).unwrap();
            w.write_all(b"cd").unwrap();
            w.write_all(b"ef").unwrap();
        });
        first_written.recv().unwrap();
        // The pause is far longer than the writer needs to finish and close the pipe.
        let (data, eof) = frame(&mut r, 64, Duration::from_millis(500));
        writer.join().unwrap();
        assert_eq!(data.as_slice(), b"abcdef");
        assert!(eof, "the closed pipe ends the output");
    }

    #[test]
    fn a_frame_holds_what_is_there_and_no_more_than_fits() {
        let (mut r, mut w) = std::io::pipe().unwrap();
        w.write_all(b"xy").unwrap();
        assert_eq!(
            frame(&mut r, 64, Duration::ZERO),
            (b"xy".to_vec(), false),
            "the writer is still open: nothing more to wait for"
        );
        w.write_all(b"0123456789").unwrap();
        assert_eq!(frame(&mut r, 4, Duration::ZERO), (b"0123".to_vec(), false));
        drop(w);
        assert_eq!(
            frame(&mut r, 64, Duration::ZERO),
            (b"456789".to_vec(), true)
        );
    }

    #[test]
    fn env_entries_split_at_the_first_equals() {
        assert_eq!(split_env(b"A=1"), (&b"A"[..], &b"1"[..]));
        assert_eq!(split_env(b"B=x=y"), (&b"B"[..], &b"x=y"[..]));
        assert_eq!(split_env(b"C="), (&b"C"[..], &b""[..]));
        assert_eq!(split_env(b"D"), (&b"D"[..], &b""[..]));
    }

    /// What `pwd` prints when spawned with `cwd`.
    fn pwd_in(cwd: &[u8]) -> Vec<u8> {
        let req = ExecRequest {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"pwd -P".to_vec()],
            cwd: cwd.to_vec(),
            ..Default::default()
        };
        let out = spawn(&req).unwrap().wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout.trim_ascii_end().to_vec()
    }

    #[test]
    fn a_command_runs_where_asked_whether_or_not_that_is_the_servers_directory() {
        let bytes = |p: std::path::PathBuf| p.into_os_string().into_encoded_bytes();
        let own = std::env::current_dir().unwrap();
        let physical = bytes(own.canonicalize().unwrap());
        let own = bytes(own);
        assert!(is_own_directory(&own));
        assert_eq!(
            pwd_in(&own),
            physical,
            "the server's own directory (no change asked)"
        );
        let tmp = bytes(std::env::temp_dir().canonicalize().unwrap());
        assert!(!is_own_directory(&tmp));
        assert_eq!(pwd_in(&tmp), tmp, "another directory");
        // No directory asked: `/` (the server's own in a zone; not this test's).
        assert_eq!(pwd_in(b""), b"/");
    }

    #[test]
    fn spawn_errors_name_the_program_and_the_path() {
        let req = ExecRequest {
            argv: vec![b"no-such-program".to_vec()],
            env: vec![b"PATH=/nowhere".to_vec()],
            ..Default::default()
        };
        let msg = spawn(&req).map(drop).unwrap_err();
        assert!(msg.contains("`no-such-program`"), "{msg}");
        assert!(msg.contains("/nowhere"), "{msg}");
        let req = ExecRequest {
            argv: vec![b"true".to_vec()],
            cwd: b"/no/such/dir".to_vec(),
            ..Default::default()
        };
        let msg = spawn(&req).map(drop).unwrap_err();
        assert!(msg.contains("/no/such/dir"), "{msg}");
    }
}
