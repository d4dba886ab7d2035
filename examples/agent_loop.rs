//! An AI agent's code-execution tool: each snippet (as an LLM tool call produces it) runs in a
//! fresh Linux zone with a deadline, an output limit and a network policy, and comes back as one
//! JSON line with its output, exit and every violation the zone reported. Async (tokio); several
//! snippets run at once, each in its own zone.
//!
//! ```sh
//! cargo run --release --example agent_loop -- [OPTIONS] [FILE]
//! #   FILE               JSON lines, one tool call each (default: stdin):
//! #                        {"id": "a1", "lang": "sh", "code": "echo $((6*7))"}
//! #                      lang is sh (busybox; the default) or python (needs --rootfs-dir)
//! #   --timeout SECS     each snippet's time limit (default 10)
//! #   --output-limit N   bytes kept of stdout and of stderr each (default 65536)
//! #   --allow RULE       a network rule, e.g. "tcp api.example.com:443" (repeatable); without
//! #                      any, zones get no network device at all
//! #   --parallel N       zones at once (default 2)
//! #   --rootfs-dir DIR   a root filesystem directory (e.g. target/lab-images/debian-python)
//! #   --kernel PATH      default: the host's newest /boot/vmlinuz-* with its modules
//! #   --boot-timeout S   how long a zone may take to boot before its snippet runs (default 120)
//! ```
//!
//! The snippet's timeout counts from the moment its zone's agent answers: boot time is not
//! charged to the snippet. Linux zones need a KVM that runs guest kernels; on one that cannot, run it in the lab:
//!
//! ```sh
//! cargo build --release --example agent_loop
//! printf '%s\n' '{"code":"echo $((6*7))"}' '{"code":"while :; do :; done"}' \
//!   | lab/run -- env ZONES_LAB=1 target/release/examples/agent_loop --timeout 3
//! ```

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use zones::prelude::*;
use zones::{Command, LinuxBoot, Rootfs};

/// How each snippet's zone is made and limited.
struct Settings {
    timeout: Duration,
    boot_timeout: Duration,
    output_limit: usize,
    allow: Vec<String>,
    parallel: usize,
    rootfs_dir: Option<String>,
    kernel: Option<String>,
    input: Option<String>,
}

fn settings() -> Result<Settings, String> {
    let mut s = Settings {
        timeout: Duration::from_secs(10),
        boot_timeout: Duration::from_secs(120),
        output_limit: 64 << 10,
        allow: Vec::new(),
        parallel: 2,
        rootfs_dir: None,
        kernel: None,
        input: None,
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.ok_or(format!("{what} needs a value"))?
            .parse()
            .map_err(|e| format!("{what}: {e}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout" => s.timeout = Duration::from_secs(number(args.next(), "--timeout")?),
            "--boot-timeout" => {
                s.boot_timeout = Duration::from_secs(number(args.next(), "--boot-timeout")?)
            }
            "--output-limit" => s.output_limit = number(args.next(), "--output-limit")? as usize,
            "--parallel" => s.parallel = number(args.next(), "--parallel")?.max(1) as usize,
            "--allow" => s.allow.push(args.next().ok_or("--allow needs a rule")?),
            "--rootfs-dir" => s.rootfs_dir = Some(args.next().ok_or("--rootfs-dir needs a dir")?),
            "--kernel" => s.kernel = Some(args.next().ok_or("--kernel needs a path")?),
            other if !other.starts_with("--") && s.input.is_none() => s.input = Some(arg),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(s)
}

/// One tool call.
struct Snippet {
    id: String,
    lang: String,
    code: String,
}

fn parse(line: &str, n: usize) -> Result<Snippet, String> {
    let call: Value = serde_json::from_str(line).map_err(|e| format!("line {n}: {e}"))?;
    let field = |k: &str| call.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Snippet {
        id: field("id").unwrap_or_else(|| n.to_string()),
        lang: field("lang").unwrap_or_else(|| "sh".into()),
        code: field("code").ok_or(format!("line {n}: no \"code\""))?,
    })
}

fn boot(s: &Settings) -> Result<LinuxBoot, Box<dyn std::error::Error + Send + Sync>> {
    let boot = match &s.kernel {
        Some(path) => LinuxBoot::new(path),
        None => LinuxBoot::host_kernel()?,
    };
    let boot = match &s.rootfs_dir {
        Some(dir) => boot.rootfs(Rootfs::dir(dir)),
        None => boot.busybox(),
    };
    Ok(boot.hide_xsave(std::env::var("ZONES_LAB").is_ok_and(|v| v == "1")))
}

/// Runs one snippet in a fresh zone and describes what happened.
async fn run(snippet: Snippet, s: Arc<Settings>) -> Value {
    let started = Instant::now();
    let program = match snippet.lang.as_str() {
        "sh" => Command::new("sh").arg("-c").arg(&snippet.code),
        "python" => Command::new("python3").arg("-c").arg(&snippet.code),
        other => return json!({"id": snippet.id, "error": format!("unknown lang {other}")}),
    };
    let cmd = program.timeout(s.timeout).output_limit(s.output_limit);
    let mut builder = Zone::builder()
        .name(format!("snippet-{}", snippet.id))
        .memory_mib(256)
        // The whole zone's life, boot included, is bounded too.
        .deadline(s.boot_timeout + s.timeout + Duration::from_secs(60));
    match boot(&s) {
        Ok(boot) => builder = builder.linux(boot),
        Err(e) => return json!({"id": snippet.id, "error": e.to_string()}),
    }
    if !s.allow.is_empty() {
        let policy = s.allow.iter().fold(NetPolicy::new(), |p, r| p.allow(r));
        builder = builder.net(Net::user().policy(policy));
    }
    let zone = match builder.build_async().await {
        Ok(zone) => zone,
        Err(e) => return json!({"id": snippet.id, "error": e.to_string()}),
    };
    let mut events = zone.events_async();
    // A command's timeout bounds its whole call, the wait for the agent included: wait for the
    // boot first, under its own bound.
    let result = match zone.wait_ready_async(s.boot_timeout).await {
        Ok(_) => zone.exec_async(&cmd).await,
        Err(e) => Err(e),
    };
    zone.kill();
    zone.wait_async().await;
    drop(zone);
    // The stream ends once the zone is gone: every violation and denial, coalesced ones too.
    let mut violations = Vec::new();
    while let Some(event) = events.next().await {
        if matches!(event, ZoneEvent::Violation(_) | ZoneEvent::Denied(_)) {
            violations.push(event.to_string());
        }
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut answer = match result {
        Ok(out) => json!({
            "exit_code": out.status.code(),
            "signal": out.status.signal(),
            "timed_out": out.status.timed_out(),
            "stdout": text(&out.stdout),
            "stderr": text(&out.stderr),
            "truncated": out.truncated,
        }),
        Err(e) => json!({"error": e.to_string()}),
    };
    answer["id"] = json!(snippet.id);
    answer["violations"] = json!(violations);
    answer["ms"] = json!(started.elapsed().as_millis() as u64);
    answer
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let s = Arc::new(settings()?);
    let input: Box<dyn tokio::io::AsyncRead + Unpin> = match &s.input {
        Some(path) => Box::new(tokio::fs::File::open(path).await?),
        None => Box::new(tokio::io::stdin()),
    };
    let mut lines = tokio::io::BufReader::new(input).lines();
    let slots = Arc::new(tokio::sync::Semaphore::new(s.parallel));
    let mut running = tokio::task::JoinSet::new();
    let mut n = 0;
    while let Some(line) = lines.next_line().await? {
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let snippet = match parse(&line, n) {
            Ok(snippet) => snippet,
            Err(e) => {
                println!("{}", json!({"id": n.to_string(), "error": e}));
                continue;
            }
        };
        let slot = slots.clone().acquire_owned().await?;
        let s = s.clone();
        running.spawn(async move {
            let answer = run(snippet, s).await;
            drop(slot);
            // One line per result, as each finishes.
            println!("{answer}");
        });
    }
    while let Some(done) = running.join_next().await {
        done?;
    }
    Ok(())
}
