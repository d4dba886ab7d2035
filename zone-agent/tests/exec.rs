//! Drives `server::handle_connection` over a Unix socket pair, speaking the exec protocol as the
//! host does.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use zone_agent::proto::{self, ExecRequest, ExitReport, kind};
use zone_agent::{server, sys};

/// Generous bound for anything that should be quick.
const SOON: Duration = Duration::from_secs(5);

struct Host {
    stream: UnixStream,
    agent: JoinHandle<()>,
}

fn connect() -> Host {
    let (host, agent) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let agent: OwnedFd = agent.into();
    let agent = std::thread::spawn(move || server::handle_connection(agent));
    Host {
        stream: host,
        agent,
    }
}

fn request(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

fn sh(script: &str) -> ExecRequest {
    request(&["sh", "-c", script])
}

#[derive(Debug, Default)]
struct Outcome {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<ExitReport>,
    error: Option<String>,
}

impl Host {
    fn send(&mut self, kind: u8, payload: &[u8]) {
        proto::write_frame(&mut self.stream, kind, payload).unwrap();
    }

    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        proto::read_frame(&mut self.stream).unwrap()
    }

    /// Sends EXEC and expects STARTED; returns the pid.
    fn start(&mut self, req: &ExecRequest) -> u32 {
        self.send(kind::EXEC, &req.encode());
        match self.recv() {
            Some((kind::STARTED, p)) if p.len() == 4 => u32::from_le_bytes(p.try_into().unwrap()),
            other => panic!("expected STARTED, got {other:?}"),
        }
    }

    /// Reads frames to the end of the connection, checking the protocol's shape.
    fn collect(mut self) -> Outcome {
        let mut out = Outcome::default();
        while let Some((k, payload)) = self.recv() {
            assert!(
                out.exit.is_none() && out.error.is_none(),
                "frame {k} after the last frame"
            );
            match k {
                kind::STARTED => out.pid = u32::from_le_bytes(payload.try_into().unwrap()),
                kind::STDOUT | kind::STDERR => {
                    assert!(!payload.is_empty() && payload.len() <= proto::DATA_CHUNK);
                    let buf = if k == kind::STDOUT {
                        &mut out.stdout
                    } else {
                        &mut out.stderr
                    };
                    buf.extend_from_slice(&payload);
                }
                kind::EXIT => out.exit = Some(ExitReport::decode(&payload).unwrap()),
                kind::ERROR => out.error = Some(String::from_utf8(payload).unwrap()),
                other => panic!("unexpected frame kind {other}"),
            }
        }
        self.agent.join().expect("the handler panicked");
        out
    }
}

fn run(req: &ExecRequest) -> Outcome {
    let mut host = connect();
    host.send(kind::EXEC, &req.encode());
    host.collect()
}

fn exited(code: i32) -> Option<ExitReport> {
    Some(ExitReport {
        code: Some(code),
        signal: None,
        timed_out: false,
    })
}

/// Whether `pid` is gone (or a zombie waiting for whoever inherited it).
fn dead(pid: u32) -> bool {
    match sys::kill(pid as i32, 0) {
        Err(e) => sys::is_errno(&e, sys::ESRCH),
        Ok(()) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true),
    }
}

fn wait_dead(pid: u32) {
    let start = Instant::now();
    while !dead(pid) {
        assert!(start.elapsed() < SOON, "process {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ping_gets_version_and_kernel_release() {
    let mut host = connect();
    host.send(kind::PING, &[]);
    let (k, payload) = host.recv().unwrap();
    assert_eq!(k, kind::PONG);
    assert_eq!(payload[..4], proto::VERSION.to_le_bytes());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    assert_eq!(payload[4..], *release.trim().as_bytes());
    assert_eq!(host.recv(), None, "the connection ends after PONG");
    host.agent.join().unwrap();
}

#[test]
fn exit_code_is_reported() {
    let out = run(&sh("exit 3"));
    assert!(out.pid > 1);
    assert_eq!(out.exit, exited(3));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

#[test]
fn stdout_and_stderr_are_separate() {
    let out = run(&sh("echo out; echo err >&2"));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit, exited(0));
}

#[test]
fn sixteen_mib_of_output_arrive_intact() {
    let out = run(&sh("yes abcdefg | head -c 16777216"));
    assert_eq!(out.exit, exited(0));
    assert_eq!(out.stdout.len(), 16 << 20);
    assert!(out.stdout.chunks(8).all(|c| c == b"abcdefg\n"));
}

#[test]
fn every_byte_value_survives_both_ways() {
    // Out: printf writes all 256 byte values (octal escapes).
    let format: String = (0..=255u8).map(|b| format!("\\{b:03o}")).collect();
    let out = run(&request(&["sh", "-c", "printf \"$1\"", "sh", &format]));
    assert_eq!(out.exit, exited(0));
    assert_eq!(out.stdout, (0..=255u8).collect::<Vec<_>>());

    // In and back out: cat echoes them.
    let data: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).collect();
    let mut host = connect();
    host.start(&ExecRequest {
        stdin: true,
        ..request(&["cat"])
    });
    host.send(kind::STDIN, &data);
    host.send(kind::STDIN_EOF, &[]);
    let out = host.collect();
    assert_eq!(out.exit, exited(0));
    assert_eq!(out.stdout, data);
}

#[test]
fn stdin_streams_to_the_command() {
    let mut host = connect();
    host.start(&ExecRequest {
        stdin: true,
        ..request(&["cat"])
    });
    // Each chunk comes back before the next is sent: stdin is streamed, not buffered to EOF.
    for chunk in [&b"hello "[..], b"streaming ", b"world"] {
        host.send(kind::STDIN, chunk);
        let mut echoed = Vec::new();
        while echoed.len() < chunk.len() {
            let (k, payload) = host.recv().unwrap();
            assert_eq!(k, kind::STDOUT);
            echoed.extend_from_slice(&payload);
        }
        assert_eq!(echoed, chunk);
    }
    host.send(kind::STDIN_EOF, &[]);
    let out = host.collect();
    assert_eq!(out.exit, exited(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn stdin_frames_are_ignored_without_requested_stdin() {
    let mut host = connect();
    host.start(&request(&["cat"]));
    // cat (reading /dev/null) may be done and the connection closed before these arrive.
    let _ = proto::write_frame(&mut host.stream, kind::STDIN, b"nobody reads this");
    let _ = proto::write_frame(&mut host.stream, kind::STDIN_EOF, &[]);
    let out = host.collect();
    assert_eq!(out.exit, exited(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn env_and_cwd_are_applied() {
    let out = run(&ExecRequest {
        env: vec![b"ZA_ONE=1".to_vec(), b"ZA_TWO=x=y".to_vec()],
        cwd: b"/tmp".to_vec(),
        ..sh("echo \"$ZA_ONE|$ZA_TWO|$(pwd)\"")
    });
    assert_eq!(out.exit, exited(0));
    assert_eq!(out.stdout, b"1|x=y|/tmp\n");

    let out = run(&sh("pwd"));
    assert_eq!(out.stdout, b"/\n", "the default working directory is /");
}

#[test]
fn env_clear_starts_from_nothing() {
    let env = ["/usr/bin/env", "/bin/env"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("env(1) is installed");
    let out = run(&ExecRequest {
        env: vec![b"ONLY=this".to_vec()],
        clear_env: true,
        ..request(&[env])
    });
    assert_eq!(out.exit, exited(0));
    assert_eq!(out.stdout, b"ONLY=this\n");
}

#[test]
fn timeout_kills_the_command() {
    let start = Instant::now();
    let out = run(&ExecRequest {
        timeout_ms: 300,
        ..request(&["sleep", "30"])
    });
    assert!(start.elapsed() < SOON, "took {:?}", start.elapsed());
    assert_eq!(
        out.exit,
        Some(ExitReport {
            code: None,
            signal: Some(sys::SIGKILL),
            timed_out: true
        })
    );
}

#[test]
fn a_quick_command_with_a_timeout_is_not_timed_out() {
    let start = Instant::now();
    let out = run(&ExecRequest {
        timeout_ms: 60_000,
        ..sh("echo quick")
    });
    assert!(start.elapsed() < SOON, "the watchdog held the command up");
    assert_eq!(out.exit, exited(0));
    assert_eq!(out.stdout, b"quick\n");
}

#[test]
fn signal_frames_reach_the_process_group() {
    let mut host = connect();
    // sh waits for a child: SIGTERM must reach both, or sh would wait 30 s.
    let start = Instant::now();
    host.start(&sh("sleep 30; echo never"));
    std::thread::sleep(Duration::from_millis(100));
    host.send(kind::SIGNAL, &(sys::SIGTERM as u32).to_le_bytes());
    let out = host.collect();
    assert!(start.elapsed() < SOON, "took {:?}", start.elapsed());
    assert_eq!(
        out.exit,
        Some(ExitReport {
            code: None,
            signal: Some(sys::SIGTERM),
            timed_out: false
        })
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn the_host_going_away_kills_the_command_and_its_children() {
    let mut host = connect();
    let pid = host.start(&sh("sleep 30 & echo $!; wait"));
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let (k, payload) = host.recv().unwrap();
        assert_eq!(k, kind::STDOUT);
        line.extend_from_slice(&payload);
    }
    let grandchild: u32 = String::from_utf8(line).unwrap().trim().parse().unwrap();
    let Host { stream, agent } = host;
    drop(stream);
    let start = Instant::now();
    while !agent.is_finished() {
        assert!(start.elapsed() < SOON, "the handler did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.join().unwrap();
    wait_dead(pid);
    wait_dead(grandchild);
}

#[test]
fn a_missing_program_is_an_error_frame() {
    let out = run(&request(&["zone-agent-no-such-program", "arg"]));
    let msg = out.error.expect("an ERROR frame");
    assert!(msg.contains("zone-agent-no-such-program"), "{msg}");
    assert_eq!(out.pid, 0, "no STARTED before the ERROR");
    assert!(out.exit.is_none());

    let out = run(&ExecRequest {
        cwd: b"/no/such/directory".to_vec(),
        ..request(&["true"])
    });
    let msg = out.error.expect("an ERROR frame");
    assert!(msg.contains("/no/such/directory"), "{msg}");
}

#[test]
fn malformed_first_frames_get_an_error_and_no_panic() {
    let cases: [(u8, Vec<u8>); 5] = [
        (kind::EXEC, b"garbage".to_vec()),
        (kind::EXEC, Vec::new()),
        (99, b"what".to_vec()),
        (kind::STDIN, b"too early".to_vec()),
        (kind::PING, b"unexpected payload".to_vec()),
    ];
    for (k, payload) in cases {
        let mut host = connect();
        host.send(k, &payload);
        let out = host.collect();
        assert!(out.error.is_some(), "kind {k}: {out:?}");
        assert!(out.exit.is_none() && out.pid == 0);
    }

    // A header announcing more than MAX_FRAME.
    let mut host = connect();
    let mut head = vec![kind::EXEC];
    head.extend_from_slice(&(proto::MAX_FRAME + 1).to_le_bytes());
    host.stream.write_all(&head).unwrap();
    assert!(host.collect().error.is_some());

    // A truncated header, or nothing at all, then the host leaves.
    for bytes in [&[kind::EXEC, 1][..], &[][..]] {
        let Host { mut stream, agent } = connect();
        stream.write_all(bytes).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut host = Host { stream, agent };
        let frame = host.recv();
        assert!(frame.is_none() || frame.unwrap().0 == kind::ERROR);
        host.agent.join().unwrap();
    }
}

#[test]
fn a_malformed_frame_mid_command_ends_it() {
    let mut host = connect();
    let pid = host.start(&request(&["sleep", "30"]));
    host.send(kind::SIGNAL, b"not four bytes");
    let start = Instant::now();
    let out = host.collect();
    assert!(start.elapsed() < SOON);
    assert!(out.error.is_none());
    wait_dead(pid);
}

#[test]
fn eight_commands_run_at_once() {
    let start = Instant::now();
    let hosts: Vec<_> = (0..8)
        .map(|i| {
            let mut host = connect();
            host.start(&sh(&format!("sleep 1; echo {i}")));
            host
        })
        .collect();
    for (i, host) in hosts.into_iter().enumerate() {
        let out = host.collect();
        assert_eq!(out.exit, exited(0));
        assert_eq!(out.stdout, format!("{i}\n").as_bytes());
    }
    // In sequence they would take 8 s.
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}
