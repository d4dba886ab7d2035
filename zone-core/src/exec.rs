//! Running commands in a Linux zone through its agent: [`Command`] in, [`Output`] or a streaming
//! [`Process`] out. Each command is its own vsock connection to the agent, so commands run
//! concurrently and one command's failure does not disturb another.

use crate::devices::virtio::vsock::backend::{Backend, Stream, VsockError};
use crate::exit::ZoneExit;
use crate::vcpu::activity::Activity;
use crate::zone::ZoneHandle;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};
use zone_agent::proto::{self, ExecRequest, ExitReport, kind};

/// How long `exec` waits for the agent after boot when nothing else is said.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Default cap on captured stdout and on captured stderr, each.
pub const DEFAULT_OUTPUT_LIMIT: usize = 256 << 20;
/// Longest wait that stands for "no deadline".
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Once the agent has answered, how long a new connection (and the command's start) may take
/// before the agent counts as lost, when its guest idles: a healthy agent answers in
/// milliseconds. While the guest works, the wait goes on (see [`AGENT_BUSY_LIMIT`]).
pub const AGENT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection to an agent that answered before, and a command's start, may take
/// while the agent keeps sending on other connections (a burst of starts) or its guest keeps
/// working: its vCPU threads ran, or waited for a host CPU, for at least half of each
/// [`AGENT_ANSWER_TIMEOUT`] (a loaded host, many zones on few CPUs, an emulated machine), or the
/// zone was paused. An agent silent for [`AGENT_ANSWER_TIMEOUT`] while its guest idles is lost
/// at once.
pub const AGENT_BUSY_LIMIT: Duration = Duration::from_secs(120);
/// How long after a command's timeout the agent has to report that it killed it.
const TIMEOUT_GRACE: Duration = Duration::from_secs(5);
/// A connection attempt made before the guest's vsock driver is up waits in the device until it
/// is; after that, each refused attempt is one round trip through the guest, so retrying often is
/// cheap, and a short cap keeps the wait after the agent starts listening short (it averages half
/// the cap).
pub(crate) const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(2);
/// See [`FIRST_RETRY_PAUSE`].
pub(crate) const MAX_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long a caller that found the zone's channel closed waits for the zone's exit to report.
pub(crate) const STOP_REPORT_WAIT: Duration = Duration::from_secs(5);

/// How to reach a zone's agent ([`ZoneHandle::agent_plan`]).
pub(crate) struct AgentPlan {
    pub(crate) backend: std::sync::Arc<Backend>,
    started: Instant,
    seen: bool,
    /// Give up after this, unless the guest is at work ([`ZoneHandle::goes_on`]).
    pub(crate) deadline: Instant,
    /// Never wait past this.
    hard: Instant,
    /// The guest's activity since the last look.
    activity: Activity,
}

impl AgentPlan {
    /// Until when one connection attempt waits for the guest's answer. A guest whose vsock
    /// driver is up answers every request in a round trip (accepted, or refused while nothing
    /// listens); one that goes unanswered all the same (a packet or an interrupt lost in the
    /// guest) is given up after [`AGENT_ANSWER_TIMEOUT`], reset, and made again, rather than
    /// holding the whole wait for the agent.
    pub(crate) fn attempt_deadline(&self) -> Instant {
        (Instant::now() + AGENT_ANSWER_TIMEOUT).min(self.deadline)
    }
}

/// What one connection attempt to the agent means.
pub(crate) enum Attempt {
    /// It answered.
    Connected(Stream),
    /// Not listening (yet): try again after a pause.
    Retry,
    /// The zone stopped: report its exit.
    Stopped,
    /// Give up with this error.
    Failed(ExecError),
}

/// A command to run in a Linux zone, in the style of `std::process::Command`.
#[derive(Clone, Debug)]
pub struct Command {
    argv: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    cwd: Vec<u8>,
    clear_env: bool,
    timeout: Option<Duration>,
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) output_limit: usize,
}

impl Command {
    /// Runs `program` (looked up in the guest's `PATH` when it has no slash).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            argv: vec![program.as_ref().as_bytes().to_vec()],
            env: Vec::new(),
            cwd: Vec::new(),
            clear_env: false,
            timeout: None,
            stdin: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.argv.push(arg.as_ref().as_bytes().to_vec());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().as_bytes().to_vec()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let mut entry = key.as_ref().as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_ref().as_bytes());
        self.env.push(entry);
        self
    }

    /// Starts from an empty environment instead of the agent's.
    pub fn env_clear(mut self) -> Self {
        self.clear_env = true;
        self
    }

    /// Runs in `dir` (default `/`).
    pub fn current_dir(mut self, dir: impl AsRef<OsStr>) -> Self {
        self.cwd = dir.as_ref().as_bytes().to_vec();
        self
    }

    /// Kills the command (SIGKILL) once `timeout` has passed; the output reports `timed_out`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Feeds `input` to the command's stdin, then closes it ([`ZoneHandle::exec`] only).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Caps captured stdout and stderr at `bytes` each; beyond it output is dropped and
    /// [`Output::truncated`] is set (default 256 MiB).
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = bytes;
        self
    }

    /// When the whole call must be over: the command's timeout (with a grace for the agent to
    /// report the kill), counted from `start`.
    pub(crate) fn deadline(&self, start: Instant) -> Option<Instant> {
        self.timeout.map(|t| start + t + TIMEOUT_GRACE)
    }

    pub(crate) fn request(&self, stdin: bool) -> ExecRequest {
        ExecRequest {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            timeout_ms: self
                .timeout
                .map_or(0, |t| t.as_millis().clamp(1, u128::from(u64::MAX)) as u64),
            stdin,
            clear_env: self.clear_env,
        }
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitStatus {
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
}

impl ExitStatus {
    /// The exit code, if the command exited normally.
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// The signal that ended the command, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// Whether the agent killed the command because its timeout passed.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<ExitReport> for ExitStatus {
    fn from(r: ExitReport) -> Self {
        Self {
            code: r.code,
            signal: r.signal,
            timed_out: r.timed_out,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}")?,
            (None, Some(s)) => write!(f, "signal {s}")?,
            (None, None) => f.write_str("unknown status")?,
        }
        if self.timed_out {
            f.write_str(" (timed out)")?;
        }
        Ok(())
    }
}

/// The result of [`ZoneHandle::exec`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// How the command ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (up to the output limit).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr (up to the output limit).
    pub stderr: Vec<u8>,
    /// Some output was dropped because of the output limit.
    pub truncated: bool,
}

/// Something a running [`Process`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// Bytes on stdout.
    Stdout(Vec<u8>),
    /// Bytes on stderr.
    Stderr(Vec<u8>),
    /// It ended; no more events follow.
    Exited(ExitStatus),
}

/// The agent's answer to a readiness probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    /// Protocol version.
    pub version: u32,
    /// The guest kernel's release (`uname -r`).
    pub kernel_release: String,
}

/// Why a command could not be run or completed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// `exec` on a zone without an agent (a micro zone, or a Linux zone with a custom initrd).
    #[error(
        "zone {zone} has no exec channel: only Linux zones booted with the zones agent run commands"
    )]
    NoAgent {
        /// The zone.
        zone: String,
    },
    /// The zone stopped (guest panic, shutdown, kill, deadline) before or while the command ran.
    #[error("zone {zone} stopped ({exit}) before the command completed")]
    ZoneStopped {
        /// The zone.
        zone: String,
        /// How it stopped.
        exit: ZoneExit,
    },
    /// The agent did not answer in time after boot.
    #[error(
        "zone {zone}: the agent did not answer within {waited:?}; see the zone console for the guest's boot log"
    )]
    AgentNotReady {
        /// The zone.
        zone: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The connection to the agent broke mid-command (the agent crashed or the guest reset it),
    /// or the agent said nothing for [`AGENT_ANSWER_TIMEOUT`] while its guest idled.
    #[error("zone {zone}: lost the agent while running the command: {detail}")]
    AgentLost {
        /// The zone.
        zone: String,
        /// What happened.
        detail: String,
    },
    /// The agent could not start the program (its message quotes the guest: escaped).
    #[error("zone {zone}: {}", crate::text::escaped(message))]
    Spawn {
        /// The zone.
        zone: String,
        /// The agent's message.
        message: String,
    },
    /// The agent sent something that does not follow the protocol.
    #[error("zone {zone}: exec protocol error: {detail}")]
    Protocol {
        /// The zone.
        zone: String,
        /// What was wrong.
        detail: String,
    },
}

/// `io::Read`/`io::Write` over a vsock stream, for the protocol's frame functions.
struct Io<'a> {
    stream: &'a Stream,
    deadline: Instant,
}

pub(crate) fn to_io(e: VsockError) -> io::Error {
    let kind = if e == VsockError::TimedOut {
        io::ErrorKind::TimedOut
    } else {
        io::ErrorKind::ConnectionReset
    };
    io::Error::new(kind, e)
}

impl io::Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf, self.deadline).map_err(to_io)
    }
}

impl io::Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write_all(buf, self.deadline).map_err(to_io)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A command running in a zone ([`ZoneHandle::spawn`]). Dropping it kills the command.
pub struct Process {
    zone: ZoneHandle,
    stream: Stream,
    pid: u32,
    finished: bool,
    output_limit: usize,
    /// The command's timeout (plus a grace), if it has one: no read waits beyond it.
    deadline: Instant,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("zone", &self.zone.name())
            .field("pid", &self.pid)
            .finish()
    }
}

impl Process {
    /// The command's process id in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), ExecError> {
        let mut io = Io {
            stream: &self.stream,
            deadline: self.deadline,
        };
        proto::write_frame(&mut io, kind, payload).map_err(|e| self.lost(e))
    }

    /// Writes to the command's stdin.
    pub fn write_stdin(&mut self, data: &[u8]) -> Result<(), ExecError> {
        for chunk in data.chunks(proto::DATA_CHUNK) {
            self.send(kind::STDIN, chunk)?;
        }
        Ok(())
    }

    /// Closes the command's stdin.
    pub fn close_stdin(&mut self) -> Result<(), ExecError> {
        self.send(kind::STDIN_EOF, &[])
    }

    /// Sends `signal` (e.g. 15 for SIGTERM) to the command's process group.
    pub fn signal(&mut self, signal: i32) -> Result<(), ExecError> {
        self.send(kind::SIGNAL, &(signal as u32).to_le_bytes())
    }

    /// The next event, or `None` once the command has exited.
    pub fn next_event(&mut self) -> Result<Option<ProcessEvent>, ExecError> {
        if self.finished {
            return Ok(None);
        }
        let event = read_event(&self.stream, &self.zone, self.deadline)?;
        self.finished = matches!(event, ProcessEvent::Exited(_));
        Ok(Some(event))
    }

    /// Collects the remaining output until the command exits.
    pub fn wait_with_output(self) -> Result<Output, ExecError> {
        if self.finished {
            return Ok(Output::default());
        }
        collect(&self.stream, &self.zone, self.output_limit, self.deadline)
    }

    fn lost(&self, e: io::Error) -> ExecError {
        lost(&self.zone, e)
    }
}

/// Reads one event of a running command, by `deadline`.
fn read_event(
    stream: &Stream,
    zone: &ZoneHandle,
    deadline: Instant,
) -> Result<ProcessEvent, ExecError> {
    let mut io = Io { stream, deadline };
    let frame = proto::read_frame(&mut io).map_err(|e| lost(zone, e))?;
    decode_event(zone, frame)
}

/// The event a frame from the agent stands for (`None`: the agent closed the connection).
pub(crate) fn decode_event(
    zone: &ZoneHandle,
    frame: Option<(u8, Vec<u8>)>,
) -> Result<ProcessEvent, ExecError> {
    let protocol = |detail: String| ExecError::Protocol {
        zone: zone.name().to_string(),
        detail,
    };
    let Some((k, payload)) = frame else {
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the agent closed the connection",
        );
        return Err(lost(zone, eof));
    };
    match k {
        kind::STDOUT => Ok(ProcessEvent::Stdout(payload)),
        kind::STDERR => Ok(ProcessEvent::Stderr(payload)),
        kind::EXIT => {
            let report = ExitReport::decode(&payload).map_err(|e| protocol(e.to_string()))?;
            zone.shared.boot.command_ended();
            Ok(ProcessEvent::Exited(report.into()))
        }
        kind::ERROR => Err(ExecError::Spawn {
            zone: zone.name().to_string(),
            message: String::from_utf8_lossy(&payload).into_owned(),
        }),
        other => Err(protocol(format!("unexpected frame kind {other}"))),
    }
}

impl Output {
    /// Adds `event` to the output, keeping at most `limit` bytes of each stream. Returns
    /// whether the command has ended.
    pub(crate) fn push(&mut self, event: ProcessEvent, limit: usize) -> bool {
        let keep = |buf: &mut Vec<u8>, data: Vec<u8>, truncated: &mut bool| {
            let room = limit.saturating_sub(buf.len());
            *truncated |= data.len() > room;
            buf.extend_from_slice(&data[..data.len().min(room)]);
        };
        match event {
            ProcessEvent::Stdout(d) => keep(&mut self.stdout, d, &mut self.truncated),
            ProcessEvent::Stderr(d) => keep(&mut self.stderr, d, &mut self.truncated),
            ProcessEvent::Exited(status) => {
                self.status = status;
                return true;
            }
        }
        false
    }
}

/// Reads events until the command exits (by `deadline`), keeping at most `limit` bytes of each
/// stream.
fn collect(
    stream: &Stream,
    zone: &ZoneHandle,
    limit: usize,
    deadline: Instant,
) -> Result<Output, ExecError> {
    let mut out = Output::default();
    while !out.push(read_event(stream, zone, deadline)?, limit) {}
    Ok(out)
}

/// Sends `input` as stdin frames, then end of input, by `deadline`.
fn feed(stream: &Stream, input: &[u8], deadline: Instant) -> io::Result<()> {
    let mut io = Io { stream, deadline };
    for chunk in input.chunks(proto::DATA_CHUNK) {
        proto::write_frame(&mut io, kind::STDIN, chunk)?;
    }
    proto::write_frame(&mut io, kind::STDIN_EOF, &[])
}

/// Reads the agent's answer on a new connection: each read waits up to [`AGENT_ANSWER_TIMEOUT`],
/// and again while the agent keeps sending on other connections or its guest is at work (it is
/// busy or slow, not lost), up to `hard`.
struct Answer<'a> {
    zone: &'a ZoneHandle,
    stream: &'a Stream,
    backend: &'a Backend,
    activity: Activity,
    hard: Instant,
}

impl io::Read for Answer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf, answer_step(self.hard)) {
                Err(VsockError::TimedOut)
                    if agent_busy(self.zone, self.backend, &mut self.activity, self.hard) => {}
                other => return other.map_err(to_io),
            }
        }
    }
}

/// Until when one wait for the agent's answer goes, at most: [`AGENT_ANSWER_TIMEOUT`], never
/// past `hard`.
pub(crate) fn answer_step(hard: Instant) -> Instant {
    (Instant::now() + AGENT_ANSWER_TIMEOUT).min(hard)
}

/// Whether a wait for the agent's answer that reached its step goes on: `hard` has not passed,
/// and the agent kept sending on some connection or its guest was at work during the step
/// ([`ZoneHandle::guest_at_work`]): it is busy or slow, not lost.
pub(crate) fn agent_busy(
    zone: &ZoneHandle,
    backend: &Backend,
    activity: &mut Activity,
    hard: Instant,
) -> bool {
    // Both looks are taken: the activity's sample starts the next step.
    let at_work = zone.guest_at_work(activity);
    Instant::now() < hard && (backend.heard_within(AGENT_ANSWER_TIMEOUT) || at_work)
}

/// The error for a broken connection: the zone's exit if it stopped, else a lost agent.
pub(crate) fn lost(zone: &ZoneHandle, e: io::Error) -> ExecError {
    match zone.ended_exit() {
        Some(exit) => ExecError::ZoneStopped {
            zone: zone.name().to_string(),
            exit,
        },
        None => ExecError::AgentLost {
            zone: zone.name().to_string(),
            detail: e.to_string(),
        },
    }
}

impl ZoneHandle {
    /// The zone's exec channel (its vsock device), or `NoAgent`.
    pub(crate) fn agent_backend(&self) -> Result<std::sync::Arc<Backend>, ExecError> {
        self.shared
            .devices
            .find::<Backend>()
            .ok_or_else(|| ExecError::NoAgent {
                zone: self.name().to_string(),
            })
    }

    /// The exec channel, when the zone runs and its agent has answered before: whom to ask for
    /// the agent's boot marks.
    pub(crate) fn answered_agent(&self) -> Option<std::sync::Arc<Backend>> {
        let backend = self.agent_backend().ok()?;
        (backend.agent_seen() && self.ended_exit().is_none()).then_some(backend)
    }

    /// The pid in the agent's answer to EXEC (`STARTED`), or why the command did not start.
    pub(crate) fn started_pid(&self, answer: Option<(u8, Vec<u8>)>) -> Result<u32, ExecError> {
        match answer {
            Some((kind::STARTED, p)) if p.len() == 4 => {
                self.shared.boot.command_started();
                Ok(u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
            }
            Some((kind::ERROR, message)) => Err(ExecError::Spawn {
                zone: self.name().to_string(),
                message: String::from_utf8_lossy(&message).into_owned(),
            }),
            _ => Err(ExecError::Protocol {
                zone: self.name().to_string(),
                detail: "expected STARTED".into(),
            }),
        }
    }

    /// The agent's answer to PING (`PONG`).
    pub(crate) fn agent_info(&self, answer: Option<(u8, Vec<u8>)>) -> Result<AgentInfo, ExecError> {
        match answer {
            Some((kind::PONG, payload)) if payload.len() >= 4 => Ok(AgentInfo {
                version: u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]),
                kernel_release: String::from_utf8_lossy(&payload[4..]).into_owned(),
            }),
            _ => Err(ExecError::Protocol {
                zone: self.name().to_string(),
                detail: "bad answer to PING".into(),
            }),
        }
    }

    /// The plan for reaching the agent: its device, whether it answered before, and until when
    /// to try. Before the agent has ever answered, the wait is `ready` (the guest may still be
    /// booting); once it has, a connection it does not answer within [`AGENT_ANSWER_TIMEOUT`]
    /// while its guest idles means the agent is lost (a guest at work gets more, up to
    /// [`AGENT_BUSY_LIMIT`]). Never past `deadline`.
    pub(crate) fn agent_plan(
        &self,
        ready: Duration,
        deadline: Instant,
    ) -> Result<AgentPlan, ExecError> {
        let backend = self.agent_backend()?;
        let started = Instant::now();
        let seen = backend.agent_seen();
        let (bound, limit) = if seen {
            (AGENT_ANSWER_TIMEOUT, AGENT_BUSY_LIMIT)
        } else {
            (ready, ready)
        };
        Ok(AgentPlan {
            backend,
            started,
            seen,
            deadline: deadline.min(started + bound),
            hard: deadline.min(started + limit),
            activity: Activity::sample(&self.shared.kickers),
        })
    }

    /// Whether the zone's guest was at work since `activity`'s sample (its vCPU threads ran or
    /// waited for a host CPU for at least half of the time, see [`Activity`]) or the zone is
    /// paused (its guest cannot answer; the time does not count against it). Samples again.
    pub(crate) fn guest_at_work(&self, activity: &mut Activity) -> bool {
        let busy = activity.busy_since(&self.shared.kickers);
        busy || self.shared.control.paused()
    }

    /// Whether the wait for a connection goes on: before the plan's deadline, or, for an agent
    /// that answered before, while its guest is at work (each look extends the deadline by
    /// [`AGENT_ANSWER_TIMEOUT`], never past the plan's hard limit).
    fn goes_on(&self, plan: &mut AgentPlan) -> bool {
        let now = Instant::now();
        if now < plan.deadline {
            return true;
        }
        if plan.seen && now < plan.hard && self.guest_at_work(&mut plan.activity) {
            plan.deadline = (now + AGENT_ANSWER_TIMEOUT).min(plan.hard);
            return true;
        }
        false
    }

    /// What one connection attempt means (see [`Attempt`]).
    pub(crate) fn judge(
        &self,
        plan: &mut AgentPlan,
        result: Result<Stream, VsockError>,
    ) -> Attempt {
        let zone = || self.name().to_string();
        match result {
            Ok(stream) => {
                plan.backend.mark_agent_seen();
                Attempt::Connected(stream)
            }
            // Not listening yet (still booting), restarting, or an attempt not answered (see
            // AgentPlan::attempt_deadline): try again shortly.
            Err(VsockError::Refused | VsockError::Reset | VsockError::TimedOut)
                if self.goes_on(plan) =>
            {
                Attempt::Retry
            }
            Err(VsockError::Closed(_)) => Attempt::Stopped,
            Err(_) if plan.seen => Attempt::Failed(ExecError::AgentLost {
                zone: zone(),
                detail: format!(
                    "the agent answered before but not a new connection within {:?}",
                    plan.started.elapsed()
                ),
            }),
            Err(_) => Attempt::Failed(ExecError::AgentNotReady {
                zone: zone(),
                waited: plan.started.elapsed(),
            }),
        }
    }

    /// A connection to the agent, following [`ZoneHandle::agent_plan`].
    fn agent_stream(&self, ready: Duration, deadline: Instant) -> Result<Stream, ExecError> {
        let mut plan = self.agent_plan(ready, deadline)?;
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            if let Some(exit) = self.ended_exit() {
                let zone = self.name().to_string();
                return Err(ExecError::ZoneStopped { zone, exit });
            }
            let result = plan
                .backend
                .connect(proto::AGENT_PORT, plan.attempt_deadline());
            match self.judge(&mut plan, result) {
                Attempt::Connected(stream) => return Ok(stream),
                Attempt::Retry => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                Attempt::Stopped => {
                    let exit = self
                        .wait_timeout(STOP_REPORT_WAIT)
                        .unwrap_or(ZoneExit::Killed);
                    let zone = self.name().to_string();
                    return Err(ExecError::ZoneStopped { zone, exit });
                }
                Attempt::Failed(e) => return Err(e),
            }
        }
    }

    /// The agent's boot marks, if its agent has answered before and answers now (within
    /// [`AGENT_ANSWER_TIMEOUT`]).
    pub(crate) fn fetch_boot_marks(&self) -> Option<Vec<(String, Duration)>> {
        let backend = self.answered_agent()?;
        let deadline = Instant::now() + AGENT_ANSWER_TIMEOUT;
        let stream = backend.connect(proto::AGENT_PORT, deadline).ok()?;
        let mut io = Io {
            stream: &stream,
            deadline,
        };
        proto::write_frame(&mut io, kind::BOOT, &[]).ok()?;
        crate::boot_report::guest_marks(proto::read_frame(&mut io).ok()?)
    }

    /// Waits until the zone's agent answers, at most `timeout` (boot included).
    pub fn wait_ready(&self, timeout: Duration) -> Result<AgentInfo, ExecError> {
        let deadline = Instant::now() + timeout;
        let stream = self.agent_stream(timeout, deadline)?;
        let mut io = Io {
            stream: &stream,
            deadline,
        };
        proto::write_frame(&mut io, kind::PING, &[]).map_err(|e| lost(self, e))?;
        self.agent_info(proto::read_frame(&mut io).map_err(|e| lost(self, e))?)
    }

    /// Starts `cmd` and returns it running, stdin open. Waits for the agent first if the zone is
    /// still booting (up to [`DEFAULT_READY_TIMEOUT`]). The command's timeout, if it has one,
    /// bounds everything: the connection, the start and every read.
    ///
    /// ```no_run
    /// # fn run(zone: &zone_core::Zone) -> Result<(), zone_core::ExecError> {
    /// use zone_core::{Command, ProcessEvent};
    /// let mut process = zone.spawn(&Command::new("sh").arg("-c").arg("read x; echo got $x"))?;
    /// process.write_stdin(b"hello\n")?;
    /// process.close_stdin()?;
    /// while let Some(event) = process.next_event()? {
    ///     match event {
    ///         ProcessEvent::Stdout(b) => print!("{}", String::from_utf8_lossy(&b)),
    ///         ProcessEvent::Stderr(b) => eprint!("{}", String::from_utf8_lossy(&b)),
    ///         ProcessEvent::Exited(status) => println!("ended: {status}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn spawn(&self, cmd: &Command) -> Result<Process, ExecError> {
        self.start(cmd, true)
    }

    fn start(&self, cmd: &Command, stdin: bool) -> Result<Process, ExecError> {
        let now = Instant::now();
        let deadline = cmd.deadline(now).unwrap_or(now + FOREVER);
        let stream = self.agent_stream(DEFAULT_READY_TIMEOUT, deadline)?;
        let mut process = Process {
            zone: self.clone(),
            stream,
            pid: 0,
            finished: false,
            output_limit: cmd.output_limit,
            deadline,
        };
        process.send(kind::EXEC, &cmd.request(stdin).encode())?;
        // The agent answers at once; one that says nothing at all is lost.
        let backend = self.agent_backend()?;
        let mut answer = Answer {
            zone: self,
            stream: &process.stream,
            backend: &backend,
            activity: Activity::sample(&self.shared.kickers),
            hard: deadline.min(Instant::now() + AGENT_BUSY_LIMIT),
        };
        let frame = proto::read_frame(&mut answer).map_err(|e| lost(self, e))?;
        process.pid = self.started_pid(frame)?;
        Ok(process)
    }

    /// Runs `cmd` to completion and returns its output. Stdin (if any) is fed from another thread
    /// while the output is read, so neither side can block the other. Waits for the agent first if
    /// the zone is still booting (up to [`DEFAULT_READY_TIMEOUT`]).
    ///
    /// ```no_run
    /// # fn run(zone: &zone_core::Zone) -> Result<(), zone_core::ExecError> {
    /// use std::time::Duration;
    /// use zone_core::Command;
    /// let out = zone.exec(
    ///     &Command::new("sh")
    ///         .args(["-c", "wc -c"])
    ///         .stdin(b"four".to_vec())
    ///         .env("LANG", "C")
    ///         .timeout(Duration::from_secs(10)) // killed (and reported) after 10 s
    ///         .output_limit(1 << 20),           // keep at most 1 MiB of each stream
    /// )?;
    /// assert!(out.status.success());
    /// assert_eq!(out.stdout, b"4\n");
    /// # Ok(()) }
    /// ```
    pub fn exec(&self, cmd: &Command) -> Result<Output, ExecError> {
        let process = self.start(cmd, cmd.stdin.is_some())?;
        let Some(input) = &cmd.stdin else {
            return process.wait_with_output();
        };
        let stream = &process.stream;
        std::thread::scope(|scope| {
            // A command that exits without reading all of its input ends the feed with an
            // error; its output is what counts.
            let filter = self.shared.thread_filter(
                crate::seccomp::ThreadKind::Helper,
                Vec::new(),
                "exec stdin feeder".into(),
            );
            let feeder = scope.spawn(|| {
                crate::seccomp::apply(filter).map_err(io::Error::other)?;
                feed(stream, input, process.deadline)
            });
            let output = collect(stream, self, cmd.output_limit, process.deadline);
            let _ = feeder.join();
            output
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_what_was_asked() {
        let cmd = Command::new("sh")
            .args(["-c", "exit 3"])
            .env("A", "1")
            .current_dir("/tmp")
            .timeout(Duration::from_millis(1500))
            .env_clear();
        let req = cmd.request(false);
        assert_eq!(
            req.argv,
            vec![b"sh".to_vec(), b"-c".to_vec(), b"exit 3".to_vec()]
        );
        assert_eq!(req.env, vec![b"A=1".to_vec()]);
        assert_eq!(
            (req.cwd.as_slice(), req.timeout_ms, req.clear_env, req.stdin),
            (&b"/tmp"[..], 1500, true, false)
        );
        assert_eq!(ExecRequest::decode(&req.encode()), Ok(req));
    }

    #[test]
    fn exit_status_reads_like_std() {
        let ok = ExitStatus::from(ExitReport {
            code: Some(0),
            signal: None,
            timed_out: false,
        });
        assert!(ok.success());
        let killed = ExitStatus::from(ExitReport {
            code: None,
            signal: Some(9),
            timed_out: true,
        });
        assert!(!killed.success());
        assert_eq!(killed.to_string(), "signal 9 (timed out)");
    }
}
