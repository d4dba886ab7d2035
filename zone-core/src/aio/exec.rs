//! Commands as futures: [`ZoneHandle::exec_async`], [`ZoneHandle::spawn_async`] and the
//! [`AsyncProcess`] they start. Readiness comes from the zone's vsock device itself (its worker
//! wakes the task that waits on a connection); no thread waits on behalf of a call.

use super::frames::{FrameReader, encode};
use crate::devices::virtio::vsock::backend::{Stream, VsockError};
use crate::exec::{
    AGENT_ANSWER_TIMEOUT, AGENT_BUSY_LIMIT, AgentInfo, Attempt, Command, DEFAULT_READY_TIMEOUT,
    ExecError, ExitStatus, FIRST_RETRY_PAUSE, FOREVER, MAX_RETRY_PAUSE, Output, ProcessEvent,
    STOP_REPORT_WAIT, agent_busy, answer_step, decode_event, lost, to_io,
};
use crate::exit::ZoneExit;
use crate::vcpu::activity::Activity;
use crate::zone::ZoneHandle;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::time::Sleep;
use zone_agent::proto::{self, kind};

/// Events handled in one poll before the task yields to others on its worker thread.
const EVENTS_PER_POLL: usize = 64;

/// A command running in a zone, as a task sees it ([`ZoneHandle::spawn_async`]).
///
/// Its stdout, stderr and exit arrive as a [`futures_core::Stream`] of [`ProcessEvent`]s (or
/// through [`AsyncProcess::next_event`]); its stdin is an [`tokio::io::AsyncWrite`]
/// ([`AsyncProcess::take_stdin`]).
///
/// **Cancellation**: dropping an `AsyncProcess`, or a future of [`ZoneHandle::exec_async`] that
/// has not finished, resets the command's connection, and the agent kills the command's whole
/// process group. The zone goes on; nothing is left running and no connection is leaked.
pub struct AsyncProcess {
    zone: ZoneHandle,
    stream: Arc<Stream>,
    frames: FrameReader,
    pid: u32,
    finished: bool,
    output_limit: usize,
    /// The command's timeout plus a grace, if it has one: no wait goes beyond it.
    deadline: Option<Pin<Box<Sleep>>>,
    stdin: Option<ProcessStdin>,
}

impl std::fmt::Debug for AsyncProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncProcess")
            .field("zone", &self.zone.name())
            .field("pid", &self.pid)
            .finish()
    }
}

impl AsyncProcess {
    /// The command's process id in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command's stdin, the first time it is asked for (`None` after that, and for
    /// [`ZoneHandle::exec_async`]'s commands, whose input is given by [`Command::stdin`]).
    pub fn take_stdin(&mut self) -> Option<ProcessStdin> {
        self.stdin.take()
    }

    /// Sends `signal` (e.g. 15 for SIGTERM) to the command's process group. Never waits.
    pub fn signal(&self, signal: i32) -> Result<(), ExecError> {
        let frame = encode(kind::SIGNAL, &(signal as u32).to_le_bytes());
        self.stream
            .queue_control(&frame)
            .map_err(|e| lost(&self.zone, to_io(e)))
    }

    /// The next event, or `None` once the command has exited (or failed).
    pub async fn next_event(&mut self) -> Result<Option<ProcessEvent>, ExecError> {
        poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Collects the remaining output until the command exits, keeping at most the command's
    /// output limit of each stream.
    pub async fn wait_with_output(mut self) -> Result<Output, ExecError> {
        let mut out = Output::default();
        poll_fn(|cx| self.poll_collect(cx, &mut out)).await?;
        Ok(out)
    }

    /// Waits for the command to exit, discarding its output.
    pub async fn wait(mut self) -> Result<ExitStatus, ExecError> {
        let mut out = Output::default();
        self.output_limit = 0;
        poll_fn(|cx| self.poll_collect(cx, &mut out)).await?;
        Ok(out.status)
    }

    /// Adds events to `out` until the command exits.
    fn poll_collect(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Output,
    ) -> Poll<Result<(), ExecError>> {
        for _ in 0..EVENTS_PER_POLL {
            let Some(event) = ready!(self.poll_event(cx))? else {
                return Poll::Ready(Ok(()));
            };
            if out.push(event, self.output_limit) {
                return Poll::Ready(Ok(()));
            }
        }
        // A command that writes without pause must not hold the worker thread: yield.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The next event, for a task.
    pub(crate) fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<ProcessEvent>, ExecError>> {
        if self.finished {
            return Poll::Ready(Ok(None));
        }
        let stream = &self.stream;
        let frame = match self.frames.poll_frame(|buf| stream.poll_read(cx, buf)) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Some(deadline) = &mut self.deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    self.finished = true;
                    let e = io::Error::new(io::ErrorKind::TimedOut, VsockError::TimedOut);
                    return Poll::Ready(Err(lost(&self.zone, e)));
                }
                return Poll::Pending;
            }
        };
        let event = frame
            .map_err(|e| lost(&self.zone, e))
            .and_then(|frame| decode_event(&self.zone, frame));
        self.finished = !matches!(event, Ok(ProcessEvent::Stdout(_) | ProcessEvent::Stderr(_)));
        Poll::Ready(event.map(Some))
    }
}

impl futures_core::Stream for AsyncProcess {
    type Item = Result<ProcessEvent, ExecError>;

    /// Output as it comes, then the exit; ends after the exit or an error.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx).map(Result::transpose)
    }
}

/// A running command's stdin ([`AsyncProcess::take_stdin`]): an [`tokio::io::AsyncWrite`].
///
/// `shutdown()` closes the command's input (end of file); so does dropping it. Writes wait
/// while 1 MiB is queued for the guest. Once the [`AsyncProcess`] is gone, writes fail with
/// `BrokenPipe`.
#[derive(Debug)]
pub struct ProcessStdin {
    stream: Weak<Stream>,
    eof_sent: bool,
}

impl ProcessStdin {
    fn stream(&self) -> io::Result<Arc<Stream>> {
        self.stream.upgrade().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the command's process was dropped",
            )
        })
    }

    fn send_eof(&mut self) -> io::Result<()> {
        if !self.eof_sent {
            self.eof_sent = true;
            self.stream()?
                .queue_control(&encode(kind::STDIN_EOF, &[]))
                .map_err(to_io)?;
        }
        Ok(())
    }
}

impl tokio::io::AsyncWrite for ProcessStdin {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.eof_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdin was shut down",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let stream = self.stream()?;
        let n = buf.len().min(proto::DATA_CHUNK);
        let frame = encode(kind::STDIN, &buf[..n]);
        stream
            .poll_write_whole(cx, &frame)
            .map(|r| r.map(|()| n).map_err(to_io))
    }

    /// Written bytes are queued for the guest in order: nothing more to flush.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().send_eof())
    }
}

impl Drop for ProcessStdin {
    fn drop(&mut self) {
        let _ = self.send_eof();
    }
}

/// How long to wait until `deadline`, as a tokio sleep.
fn sleep_until(deadline: Instant) -> Pin<Box<Sleep>> {
    Box::pin(tokio::time::sleep_until(deadline.into()))
}

/// Reads one frame from `stream` by `deadline`. `frames` keeps what was read beyond it (the
/// agent may send a command's output right behind its start).
async fn read_frame(
    zone: &ZoneHandle,
    stream: &Stream,
    frames: &mut FrameReader,
    deadline: Instant,
) -> Result<Option<(u8, Vec<u8>)>, ExecError> {
    let read = poll_fn(|cx| frames.poll_frame(|buf| stream.poll_read(cx, buf)));
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(frame) => frame.map_err(|e| lost(zone, e)),
        Err(_) => Err(lost(zone, io::ErrorKind::TimedOut.into())),
    }
}

impl ZoneHandle {
    /// [`ZoneHandle::exec`] as a future: runs `cmd` to completion and returns its output, its
    /// stdin (if any) fed while the output is read. Waits for the agent first if the zone is
    /// still booting (up to [`DEFAULT_READY_TIMEOUT`]). Dropping the future kills the command.
    ///
    /// ```no_run
    /// # async fn run(zone: &zone_core::Zone) -> Result<(), zone_core::ExecError> {
    /// use zone_core::Command;
    /// let out = zone.exec_async(&Command::new("echo").arg("hi")).await?;
    /// assert_eq!(out.stdout, b"hi\n");
    /// # Ok(()) }
    /// ```
    pub async fn exec_async(&self, cmd: &Command) -> Result<Output, ExecError> {
        let mut process = self.start_async(cmd, cmd.stdin.is_some()).await?;
        let (Some(input), Some(mut stdin)) = (cmd.stdin.as_deref(), process.take_stdin()) else {
            return process.wait_with_output().await;
        };
        let mut feed = pin!(async move {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(input).await?;
            stdin.shutdown().await
        });
        let mut fed = false;
        let mut out = Output::default();
        poll_fn(|cx| {
            // A command that exits without reading all of its input ends the feed with an
            // error; its output is what counts.
            if !fed && feed.as_mut().poll(cx).is_ready() {
                fed = true;
            }
            process.poll_collect(cx, &mut out)
        })
        .await?;
        Ok(out)
    }

    /// [`ZoneHandle::spawn`] as a future: starts `cmd` and returns it running, stdin open.
    ///
    /// ```no_run
    /// # async fn run(zone: &zone_core::Zone) -> Result<(), zone_core::ExecError> {
    /// use tokio::io::AsyncWriteExt;
    /// use zone_core::{Command, ProcessEvent};
    /// let mut process = zone.spawn_async(&Command::new("cat")).await?;
    /// let mut stdin = process.take_stdin().expect("spawned with stdin");
    /// stdin.write_all(b"hello\n").await.ok();
    /// drop(stdin); // end of input
    /// while let Some(event) = process.next_event().await? {
    ///     if let ProcessEvent::Stdout(bytes) = event {
    ///         print!("{}", String::from_utf8_lossy(&bytes));
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn spawn_async(&self, cmd: &Command) -> Result<AsyncProcess, ExecError> {
        self.start_async(cmd, true).await
    }

    /// [`ZoneHandle::wait_ready`] as a future: waits until the zone's agent answers, at most
    /// `timeout` (boot included).
    pub async fn wait_ready_async(&self, timeout: Duration) -> Result<AgentInfo, ExecError> {
        let deadline = Instant::now() + timeout;
        let stream = self.agent_stream_async(timeout, deadline).await?;
        write_whole(self, &stream, &encode(kind::PING, &[]), deadline).await?;
        let mut frames = FrameReader::default();
        self.agent_info(read_frame(self, &stream, &mut frames, deadline).await?)
    }

    /// [`ZoneHandle::boot_report`] as a future: asks the agent for its marks as a task.
    pub async fn boot_report_async(&self) -> crate::BootReport {
        let clock = &self.shared.boot;
        if clock.guest().is_none()
            && let Some(marks) = self.fetch_boot_marks_async().await
        {
            clock.set_guest(marks);
        }
        self.boot_report_now()
    }

    async fn fetch_boot_marks_async(&self) -> Option<Vec<(String, Duration)>> {
        self.answered_agent()?;
        let deadline = Instant::now() + AGENT_ANSWER_TIMEOUT;
        let stream = self
            .agent_stream_async(AGENT_ANSWER_TIMEOUT, deadline)
            .await
            .ok()?;
        write_whole(self, &stream, &encode(kind::BOOT, &[]), deadline)
            .await
            .ok()?;
        let mut frames = FrameReader::default();
        let answer = read_frame(self, &stream, &mut frames, deadline)
            .await
            .ok()?;
        crate::boot_report::guest_marks(answer)
    }

    /// [`ZoneHandle::wait`] as a future: the zone's exit, once every vCPU has stopped.
    pub async fn wait_async(&self) -> ZoneExit {
        poll_fn(|cx| self.shared.control.poll_wait(cx)).await
    }

    /// [`read_frame`] for the agent's first answer on a connection: each wait is bounded by
    /// [`AGENT_ANSWER_TIMEOUT`], renewed while the agent keeps sending on other connections or
    /// its guest is at work ([`ZoneHandle::guest_at_work`]), up to `hard`.
    async fn read_answer(
        &self,
        stream: &Stream,
        frames: &mut FrameReader,
        hard: Instant,
    ) -> Result<Option<(u8, Vec<u8>)>, ExecError> {
        let backend = self.agent_backend()?;
        let mut activity = Activity::sample(&self.shared.kickers);
        loop {
            let read = poll_fn(|cx| frames.poll_frame(|buf| stream.poll_read(cx, buf)));
            match tokio::time::timeout_at(answer_step(hard).into(), read).await {
                Ok(frame) => return frame.map_err(|e| lost(self, e)),
                Err(_) if agent_busy(self, &backend, &mut activity, hard) => {}
                Err(_) => return Err(lost(self, io::ErrorKind::TimedOut.into())),
            }
        }
    }

    async fn start_async(&self, cmd: &Command, stdin: bool) -> Result<AsyncProcess, ExecError> {
        let now = Instant::now();
        let deadline = cmd.deadline(now);
        let stream = self
            .agent_stream_async(DEFAULT_READY_TIMEOUT, deadline.unwrap_or(now + FOREVER))
            .await?;
        let stream = Arc::new(stream);
        // The agent answers at once; one that says nothing at all is lost.
        let answer_by = Instant::now() + AGENT_BUSY_LIMIT;
        let answer_by = deadline.map_or(answer_by, |d| d.min(answer_by));
        let request = encode(kind::EXEC, &cmd.request(stdin).encode());
        write_whole(self, &stream, &request, answer_by).await?;
        let mut frames = FrameReader::default();
        let answer = self.read_answer(&stream, &mut frames, answer_by).await?;
        let pid = self.started_pid(answer)?;
        let stdin = stdin.then(|| ProcessStdin {
            stream: Arc::downgrade(&stream),
            eof_sent: false,
        });
        Ok(AsyncProcess {
            zone: self.clone(),
            stream,
            frames,
            pid,
            finished: false,
            output_limit: cmd.output_limit,
            deadline: deadline.map(sleep_until),
            stdin,
        })
    }

    /// A connection to the agent, as the blocking `agent_stream` makes it, waiting as a task.
    async fn agent_stream_async(
        &self,
        ready: Duration,
        deadline: Instant,
    ) -> Result<Stream, ExecError> {
        let mut plan = self.agent_plan(ready, deadline)?;
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            if let Some(exit) = self.ended_exit() {
                let zone = self.name().to_string();
                return Err(ExecError::ZoneStopped { zone, exit });
            }
            let result = match plan.backend.open(proto::AGENT_PORT) {
                Ok(stream) => {
                    let answer = poll_fn(|cx| stream.poll_connected(cx));
                    match tokio::time::timeout_at(plan.attempt_deadline().into(), answer).await {
                        Ok(Ok(())) => Ok(stream),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(VsockError::TimedOut),
                    }
                }
                Err(e) => Err(e),
            };
            match self.judge(&mut plan, result) {
                Attempt::Connected(stream) => return Ok(stream),
                Attempt::Retry => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                Attempt::Stopped => {
                    let exit = tokio::time::timeout(STOP_REPORT_WAIT, self.wait_async())
                        .await
                        .unwrap_or(ZoneExit::Killed);
                    let zone = self.name().to_string();
                    return Err(ExecError::ZoneStopped { zone, exit });
                }
                Attempt::Failed(e) => return Err(e),
            }
        }
    }
}

/// Queues one whole frame for the agent, waiting for room until `deadline`.
async fn write_whole(
    zone: &ZoneHandle,
    stream: &Stream,
    frame: &[u8],
    deadline: Instant,
) -> Result<(), ExecError> {
    let write = poll_fn(|cx| stream.poll_write_whole(cx, frame));
    match tokio::time::timeout_at(deadline.into(), write).await {
        Ok(result) => result.map_err(|e| lost(zone, to_io(e))),
        Err(_) => Err(lost(zone, io::ErrorKind::TimedOut.into())),
    }
}
