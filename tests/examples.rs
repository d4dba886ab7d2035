//! The examples a user copies, run as a user runs them, with small inputs: `agent_loop` (code
//! snippets as tool calls, each in a fresh zone with a deadline, an output limit and a network
//! policy) and `ci_runner` (a project's test command on a disk, its log streamed). They boot Linux
//! zones, so they run in the lab (`lab/test examples`, which builds the examples first).

mod common;

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The built example `name`, beside this test's own binary (`target/<profile>/examples/`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --examples` (lab/test examples does)",
        path.display()
    );
    path
}

/// The two tests boot zones: one at a time, so that they do not share the lab's two vCPUs.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/ci-project")
}

#[test]
fn agent_loop_runs_each_snippet_in_its_own_zone_with_limits_and_policy() {
    require_linux!();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let calls = [
        r#"{"id": "sum", "code": "echo $((6*7))"}"#,
        r#"{"id": "spin", "code": "while :; do :; done"}"#,
        r#"{"id": "net", "code": "echo hi | nc -w 2 1.1.1.1 80; echo tried"}"#,
        r#"{"id": "flood", "code": "yes | head -c 200000"}"#,
        r#"not json"#,
    ];
    let mut child = Command::new(example("agent_loop"))
        .args([
            "--timeout",
            "3",
            "--output-limit",
            "1000",
            "--parallel",
            "2",
        ])
        .args(["--boot-timeout", "300"])
        // A NIC that reaches one host port: everything else the snippet tries is denied.
        .args(["--allow", "tcp host:9"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("agent_loop");
    let mut stdin = child.stdin.take().unwrap();
    for call in calls {
        writeln!(stdin, "{call}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{:?}\n{text}", out.status);
    let answers: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let by_id = |id: &str| -> &Value {
        answers
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no answer for {id}:\n{text}"))
    };
    let sum = by_id("sum");
    assert_eq!(sum["stdout"], "42\n", "{sum}");
    assert_eq!(sum["exit_code"], 0, "{sum}");
    let spin = by_id("spin");
    assert_eq!(spin["timed_out"], true, "{spin}");
    assert_eq!(spin["signal"], 9, "{spin}");
    let net = by_id("net");
    assert!(
        net["stdout"].as_str().unwrap_or("").contains("tried"),
        "{net}"
    );
    let denials = net["violations"].as_array().expect("violations");
    assert!(
        denials
            .iter()
            .any(|d| d.as_str().unwrap_or("").contains("1.1.1.1")),
        "{net}"
    );
    let flood = by_id("flood");
    assert_eq!(flood["truncated"], true, "{flood}");
    assert_eq!(
        flood["stdout"].as_str().map(str::len),
        Some(1000),
        "{flood}"
    );
    let bad = by_id("5");
    assert!(
        bad["error"].as_str().unwrap_or("").contains("line 5"),
        "{bad}"
    );
}

#[test]
fn ci_runner_streams_the_log_and_reports_status_and_resources() {
    require_linux!();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = |args: &[&str]| {
        let out = Command::new(example("ci_runner"))
            .arg(project())
            .arg("--")
            .args(args)
            .output()
            .expect("ci_runner");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, log, stderr) = run(&["sh", "./test.sh"]);
    assert_eq!(code, Some(0), "{log}\n{stderr}");
    // Each line carries the time it arrived: the checks a second apart arrive apart.
    let time_of = |what: &str| -> f64 {
        let line = log
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?}:\n{log}"));
        line.trim_start_matches('[')
            .split('s')
            .next()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("no time in {line:?}"))
    };
    let first = time_of("out| build: 2 sources");
    let last = time_of("out| done: all checks passed");
    assert!(
        last - first >= 1.5,
        "the log was not streamed: {first} .. {last}\n{log}"
    );
    assert!(log.contains("err| check 1 writes a warning"), "{log}");
    assert!(log.contains("--- result: exit code 0"), "{log}");
    assert!(log.contains("--- resources: wall"), "{log}");
    assert!(log.contains("--- blk0:"), "{log}");
    // The host's project directory was not written: the build went to the zone's copy.
    assert!(!project().join("build").exists());

    let (code, log, stderr) = run(&["sh", "./test.sh", "fail"]);
    assert_eq!(code, Some(3), "{log}\n{stderr}");
    assert!(log.contains("check 3: failing on purpose"), "{log}");
}
