//! Boots a Linux zone (this host's kernel and a busybox userland, or a kernel you name), runs one
//! command in it with its output streamed as it arrives, and prints how long each step took and
//! the zone's metrics.
//!
//! ```sh
//! cargo run --release --example linux_exec -- [OPTIONS] [COMMAND [ARGS...]]
//! #   --kernel PATH    a bzImage or ELF vmlinux with virtio-mmio, vsock and virtio-blk built in
//! #                    (e.g. target/minikernel/bzImage from lab/minikernel); default: the host's
//! #                    newest /boot/vmlinuz-* with its modules
//! #   --vcpus N        default 1
//! #   --memory MIB     default 256
//! # COMMAND defaults to `uname -a`.
//! ```
//!
//! Linux zones need a KVM that runs guest kernels. On a machine whose KVM cannot (such as this
//! project's development machine), run it in the lab, where `ZONES_LAB=1` also hides XSAVE from
//! the guest (the lab's emulated SVM does not virtualize XSETBV):
//!
//! ```sh
//! cargo build --release --example linux_exec
//! lab/run -- env ZONES_LAB=1 target/release/examples/linux_exec sh -c 'cat /proc/cpuinfo | head -5'
//! ```

use std::io::Write;
use std::time::{Duration, Instant};
use zones::prelude::*;
use zones::{Command, LinuxBoot, ProcessEvent};

struct Options {
    kernel: Option<String>,
    vcpus: u32,
    memory_mib: u64,
    command: Vec<String>,
}

fn parse() -> Result<Options, String> {
    let mut opts = Options {
        kernel: None,
        vcpus: 1,
        memory_mib: 256,
        command: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--kernel" => opts.kernel = Some(value("--kernel")?),
            "--vcpus" => {
                opts.vcpus = value("--vcpus")?
                    .parse()
                    .map_err(|e| format!("--vcpus: {e}"))?
            }
            "--memory" => {
                opts.memory_mib = value("--memory")?
                    .parse()
                    .map_err(|e| format!("--memory: {e}"))?
            }
            "--" => {
                opts.command.extend(args.by_ref());
            }
            _ => {
                opts.command.push(arg);
                opts.command.extend(args.by_ref());
            }
        }
    }
    if opts.command.is_empty() {
        opts.command = vec!["uname".into(), "-a".into()];
    }
    Ok(opts)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = parse()?;
    let boot = match &opts.kernel {
        Some(path) => LinuxBoot::new(path),
        None => LinuxBoot::host_kernel()?,
    }
    .busybox()
    .hide_xsave(std::env::var("ZONES_LAB").is_ok_and(|v| v == "1"));

    let started = Instant::now();
    let zone = Zone::builder()
        .name("linux-exec")
        .memory_mib(opts.memory_mib)
        .vcpus(opts.vcpus)
        .linux(boot)
        .deadline(Duration::from_secs(600))
        .build()?;
    let agent = match zone.wait_ready(Duration::from_secs(300)) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("{e}\nconsole:\n{}", zone.console_text());
            return Err(e.into());
        }
    };
    let ready = started.elapsed();
    eprintln!(
        "zone {}: kernel {} ready after {ready:?}",
        zone.name(),
        agent.kernel_release
    );

    let t = Instant::now();
    let mut process = zone.spawn(&Command::new(&opts.command[0]).args(&opts.command[1..]))?;
    process.close_stdin()?;
    let (mut out_bytes, mut err_bytes) = (0usize, 0usize);
    let status = loop {
        match process.next_event()? {
            Some(ProcessEvent::Stdout(data)) => {
                out_bytes += data.len();
                std::io::stdout().write_all(&data)?;
            }
            Some(ProcessEvent::Stderr(data)) => {
                err_bytes += data.len();
                std::io::stderr().write_all(&data)?;
            }
            Some(ProcessEvent::Exited(status)) => break status,
            None => return Err("the command ended without an exit status".into()),
        }
    };
    let ran = t.elapsed();
    std::io::stdout().flush()?;
    eprintln!(
        "command: {status:?} after {ran:?}; {out_bytes} bytes on stdout ({:.1} MB/s), {err_bytes} on stderr",
        out_bytes as f64 / ran.as_secs_f64() / 1e6
    );
    eprintln!("{}", zone.metrics());
    zone.kill();
    zone.wait();
    if status.success() {
        Ok(())
    } else {
        Err(format!("the command failed: {status:?}").into())
    }
}
