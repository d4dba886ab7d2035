//! The session thread's own work once a command runs: copy its stdout and stderr to the host,
//! enforce its timeout, and wait for it. One thread does all three with `poll(2)`, so a command
//! costs the agent no output or watchdog threads: in the lab every thread a command started was
//! several milliseconds of the guest's only vCPU before the command's answer.

use crate::proto::DATA_CHUNK;
use crate::sys;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long output waits for more before it goes to the host in a frame that is not full.
///
/// A program that writes in small pieces (4 KiB is common) would otherwise cost one frame, one
/// vsock packet and one guest interrupt per piece: the reader wakes at every write, so waiting
/// for readiness alone does not coalesce; holding the piece briefly does. In the lab, 64 MiB of
/// `head -c` output went from 4.9 MB/s to 11.7 MB/s, close to the 12.7 MB/s of `head -c | cat`
/// inside the guest. End of file is seen at once when there is no output; otherwise output
/// waits this much at most.
pub(super) const COALESCE: Duration = Duration::from_millis(1);

/// How often the leader is looked at, at most, on a kernel without `pidfd_open` (before 5.3),
/// when its outputs have ended before it and it has a timeout.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Where the relay sends frames and signals: the session, or a test's recorder.
pub(super) trait Session {
    /// Sends a frame; `false` if the host is gone (the session then killed the command).
    fn send(&self, kind: u8, payload: &[u8]) -> bool;
    /// Signals the command's process group.
    fn signal_group(&self, sig: i32);
}

/// One of the command's outputs on its way to the host.
pub(super) struct Output {
    /// `None` once it ended (or the host is gone).
    src: Option<File>,
    kind: u8,
    buf: Vec<u8>,
    filled: usize,
    /// When the bytes held go out even if the buffer is not full.
    due: Option<Instant>,
}

impl Output {
    pub(super) fn new(src: impl Into<OwnedFd>, kind: u8) -> Self {
        Self {
            src: Some(File::from(src.into())),
            kind,
            buf: vec![0u8; DATA_CHUNK],
            filled: 0,
            due: None,
        }
    }

    /// Reads what the source has (it was reported readable): a full buffer goes out at once,
    /// a first piece waits [`COALESCE`] for more, end of file sends what is held and closes.
    fn read(&mut self, session: &impl Session, now: Instant) {
        let Some(src) = self.src.as_mut() else { return };
        match read_some(src, &mut self.buf[self.filled..]) {
            Some(0) | None => self.close(session),
            Some(n) => {
                self.filled += n;
                if self.filled == self.buf.len() {
                    self.flush(session);
                } else if self.due.is_none() {
                    self.due = Some(now + COALESCE);
                }
            }
        }
    }

    /// Sends the bytes held, if any; the host gone ends this output (the command was killed).
    fn flush(&mut self, session: &impl Session) {
        if self.filled > 0 && !session.send(self.kind, &self.buf[..self.filled]) {
            self.src = None;
        }
        self.filled = 0;
        self.due = None;
    }

    fn close(&mut self, session: &impl Session) {
        self.flush(session);
        self.src = None;
    }
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

/// What became of the command.
pub(super) struct Ending {
    pub(super) status: io::Result<ExitStatus>,
    /// The timeout killed it before it ended by itself.
    pub(super) timed_out: bool,
}

/// Copies `outputs` to the host until every holder of them is gone (no output lost), kills the
/// command's group at `deadline` (if any), then waits for the command. The timeout counts only
/// when the leader had not ended by then; lingering children holding its output are killed all
/// the same.
pub(super) fn relay(
    session: &impl Session,
    child: &mut Child,
    mut outputs: Vec<Output>,
    deadline: Option<Instant>,
) -> Ending {
    let mut watch = Watch {
        deadline,
        timed_out: false,
    };
    loop {
        let now = Instant::now();
        for out in outputs
            .iter_mut()
            .filter(|o| o.due.is_some_and(|d| d <= now))
        {
            out.flush(session);
        }
        watch.check(session, child, now);
        let open: Vec<&mut Output> = outputs.iter_mut().filter(|o| o.src.is_some()).collect();
        if open.is_empty() {
            break;
        }
        let wake = open
            .iter()
            .filter_map(|o| o.due)
            .chain(watch.deadline)
            .min();
        let fds: Vec<_> = open
            .iter()
            .filter_map(|o| o.src.as_ref().map(AsFd::as_fd))
            .collect();
        let ready = match sys::wait_readable(&fds, wake.map(|w| w.saturating_duration_since(now))) {
            Ok(ready) => ready,
            // Cannot happen with valid descriptors; end the outputs rather than spin.
            Err(_) => vec![true; fds.len()],
        };
        let now = Instant::now();
        for (out, ready) in open.into_iter().zip(ready) {
            if ready {
                out.read(session, now);
            }
        }
    }
    let status = watch.wait(session, child);
    Ending {
        status,
        timed_out: watch.timed_out,
    }
}

/// The command's timeout.
struct Watch {
    /// `None` when there is none, or once it fired.
    deadline: Option<Instant>,
    timed_out: bool,
}

impl Watch {
    /// At the deadline: kill the command's group, and tell whether the leader was still running.
    fn check(&mut self, session: &impl Session, child: &mut Child, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.deadline = None;
            self.timed_out = !matches!(child.try_wait(), Ok(Some(_)));
            session.signal_group(sys::SIGKILL);
        }
    }

    /// Waits for the leader, still honouring the deadline: its outputs may end long before it
    /// does.
    fn wait(&mut self, session: &impl Session, child: &mut Child) -> io::Result<ExitStatus> {
        let Some(deadline) = self.deadline else {
            return child.wait();
        };
        let exit = i32::try_from(child.id())
            .ok()
            .and_then(|pid| sys::pidfd_open(pid).ok());
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            let now = Instant::now();
            if now >= deadline {
                self.check(session, child, now);
                return child.wait();
            }
            let left = deadline - now;
            match &exit {
                Some(fd) => {
                    let _ = sys::wait_readable(&[fd.as_fd()], Some(left));
                }
                None => std::thread::sleep(left.min(EXIT_POLL)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::kind;
    use std::io::Write;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, Stdio};
    use std::sync::Mutex;

    /// A session that records frames and delivers signals to one process group.
    #[derive(Default)]
    struct Recorder {
        frames: Mutex<Vec<(u8, Vec<u8>)>>,
        signals: Mutex<Vec<i32>>,
        pgid: i32,
        host_gone: bool,
    }

    impl Session for Recorder {
        fn send(&self, kind: u8, payload: &[u8]) -> bool {
            if self.host_gone {
                self.signal_group(sys::SIGKILL);
                return false;
            }
            self.frames.lock().unwrap().push((kind, payload.to_vec()));
            true
        }

        fn signal_group(&self, sig: i32) {
            self.signals.lock().unwrap().push(sig);
            if self.pgid > 1 {
                let _ = sys::kill(-self.pgid, sig);
            }
        }
    }

    impl Recorder {
        fn data(&self, want: u8) -> Vec<u8> {
            let frames = self.frames.lock().unwrap();
            let parts = frames.iter().filter(|(k, _)| *k == want);
            parts.flat_map(|(_, d)| d.clone()).collect()
        }
    }

    fn pipe_output() -> (Output, std::io::PipeWriter) {
        let (r, w) = std::io::pipe().unwrap();
        (Output::new(r, kind::STDOUT), w)
    }

    #[test]
    fn output_written_in_pieces_goes_out_in_one_frame_when_due() {
        let rec = Recorder::default();
        let (mut out, mut w) = pipe_output();
        let t = Instant::now();
        w.write_all(b"ab").unwrap();
        out.read(&rec, t);
        assert!(rec.frames.lock().unwrap().is_empty(), "a first piece waits");
        assert_eq!(out.due, Some(t + COALESCE));
        w.write_all(b"cdef").unwrap();
        out.read(&rec, t);
        assert_eq!(out.due, Some(t + COALESCE), "more bytes do not delay it");
        out.flush(&rec);
        assert_eq!(
            *rec.frames.lock().unwrap(),
            [(kind::STDOUT, b"abcdef".to_vec())]
        );
        drop(w);
        out.read(&rec, t);
        assert!(out.src.is_none(), "end of file closes the output");
        assert_eq!(rec.frames.lock().unwrap().len(), 1, "nothing more was sent");
    }

    #[test]
    fn a_full_buffer_goes_out_at_once_and_end_of_file_sends_what_is_held() {
        let rec = Recorder::default();
        let (mut out, mut w) = pipe_output();
        let writer = std::thread::spawn(move || {
            w.write_all(&vec![7u8; DATA_CHUNK + 3]).unwrap();
        });
        let t = Instant::now();
        while out.filled < DATA_CHUNK && rec.frames.lock().unwrap().is_empty() {
            out.read(&rec, t);
        }
        writer.join().unwrap();
        assert_eq!(rec.frames.lock().unwrap()[0].1.len(), DATA_CHUNK);
        while out.src.is_some() {
            out.read(&rec, t);
        }
        assert_eq!(rec.data(kind::STDOUT).len(), DATA_CHUNK + 3, "no byte lost");
    }

    fn command(script: &str) -> (Child, Recorder) {
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let rec = Recorder {
            pgid: child.id() as i32,
            ..Default::default()
        };
        (child, rec)
    }

    fn run(script: &str, timeout: Option<Duration>, host_gone: bool) -> (Ending, Recorder) {
        let (mut child, mut rec) = command(script);
        rec.host_gone = host_gone;
        let outputs = vec![
            Output::new(child.stdout.take().unwrap(), kind::STDOUT),
            Output::new(child.stderr.take().unwrap(), kind::STDERR),
        ];
        let deadline = timeout.map(|t| Instant::now() + t);
        (relay(&rec, &mut child, outputs, deadline), rec)
    }

    #[test]
    fn both_outputs_and_the_status_are_relayed() {
        let (end, rec) = run(
            "echo out; echo err >&2; exit 3",
            Some(Duration::from_secs(60)),
            false,
        );
        assert_eq!(end.status.unwrap().code(), Some(3));
        assert!(!end.timed_out);
        assert_eq!(rec.data(kind::STDOUT), b"out\n");
        assert_eq!(rec.data(kind::STDERR), b"err\n");
        assert!(
            rec.signals.lock().unwrap().is_empty(),
            "no timeout, no signal"
        );
    }

    #[test]
    fn a_command_that_closed_its_outputs_is_still_timed_out() {
        let (end, rec) = run(
            "exec >&- 2>&-; sleep 30",
            Some(Duration::from_millis(300)),
            false,
        );
        assert!(end.timed_out);
        assert_eq!(end.status.unwrap().signal(), Some(sys::SIGKILL));
        assert_eq!(*rec.signals.lock().unwrap(), [sys::SIGKILL]);
    }

    #[test]
    fn lingering_children_are_killed_at_the_deadline_but_the_leader_was_not_timed_out() {
        let (end, rec) = run(
            "sleep 30 & echo started",
            Some(Duration::from_millis(500)),
            false,
        );
        assert!(!end.timed_out, "the leader ended by itself");
        assert_eq!(end.status.unwrap().code(), Some(0));
        assert_eq!(rec.data(kind::STDOUT), b"started\n");
        assert_eq!(*rec.signals.lock().unwrap(), [sys::SIGKILL]);
    }

    #[test]
    fn the_host_going_away_ends_the_relay() {
        let (end, rec) = run("while :; do echo y; done", None, true);
        assert_eq!(end.status.unwrap().signal(), Some(sys::SIGKILL));
        assert!(rec.frames.lock().unwrap().is_empty());
    }
}
