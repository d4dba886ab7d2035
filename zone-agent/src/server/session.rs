//! One command run for the host: spawn it in its own process group, stream its output, feed its
//! stdin, deliver signals, enforce the timeout, report how it ended.
//!
//! Threads of a session: the calling thread relays the command's stdout and stderr, enforces its
//! timeout and waits for it ([`super::relay`]), then sends the one `EXIT` frame; beside it run
//! the connection reader (STDIN, STDIN_EOF, SIGNAL, the host going away) and, when stdin was
//! requested, a stdin writer.

use super::THREAD_STACK;
use super::relay;
use super::stdin::StdinQueue;
use crate::proto::{self, ExecRequest, ExitReport, kind};
use crate::sys;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// The command was reaped and its output drained: no more signals to its group.
    done: bool,
}

struct Session {
    /// Process group of the command (its pid: it was spawned with `process_group(0)`).
    pgid: i32,
    /// Write side of the connection: one frame at a time.
    wire: Mutex<File>,
    state: Mutex<State>,
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

    fn finish(&self) {
        self.state().done = true;
        if let Some(q) = &self.stdin {
            q.close();
        }
    }
}

impl relay::Session for Session {
    fn send(&self, kind: u8, payload: &[u8]) -> bool {
        Session::send(self, kind, payload)
    }

    fn signal_group(&self, sig: i32) {
        Session::signal_group(self, sig);
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
        stdin: request.stdin.then(StdinQueue::default),
    });
    // If the host is already gone, `send` killed the command; the session still winds down
    // normally (reap, drain), its frames going nowhere.
    session.send(kind::STARTED, &pid.to_le_bytes());

    let started = start_threads(&session, &mut child, reader);
    if started.is_err() {
        session.signal_group(sys::SIGKILL);
    }
    let outputs = [
        child
            .stdout
            .take()
            .map(|o| relay::Output::new(o, kind::STDOUT)),
        child
            .stderr
            .take()
            .map(|o| relay::Output::new(o, kind::STDERR)),
    ];
    let deadline = (request.timeout_ms > 0)
        .then(|| Instant::now().checked_add(Duration::from_millis(request.timeout_ms)))
        .flatten();
    let relay::Ending { status, timed_out } = relay::relay(
        &*session,
        &mut child,
        outputs.into_iter().flatten().collect(),
        deadline,
    );
    session.finish();
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

/// Starts the session's threads: the stdin writer (when stdin was requested) and the reader of
/// the host's frames. Both end by themselves once the session is over.
fn start_threads(session: &Arc<Session>, child: &mut Child, reader: File) -> io::Result<()> {
    if let Some(stdin) = child.stdin.take() {
        let s = session.clone();
        thread("stdin", move || write_stdin(&s, stdin))?;
    }
    let s = session.clone();
    thread("reader", move || read_host(&s, reader))?;
    Ok(())
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("zone-agent-{name}"))
        .stack_size(THREAD_STACK)
        .spawn(f)
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
