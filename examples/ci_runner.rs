//! A CI runner's job step: a project's test command runs in a Linux zone, the project on a disk
//! of its own (a copy: the host's directory is never written), its log lines streamed as they
//! come with their time, then its exit status and what the zone used. Async (tokio).
//!
//! ```sh
//! cargo run --release --example ci_runner -- [OPTIONS] PROJECT_DIR -- COMMAND [ARGS...]
//! #   --timeout SECS     the command's time limit (default 600)
//! #   --memory MIB       the zone's memory (default 512); --vcpus N (default 2)
//! #   --ready SECS       how long the zone may take to boot (default 300)
//! #   --rootfs-dir DIR   a root filesystem directory for the command's userland (default:
//! #                      busybox); e.g. target/lab-images/debian-python for python3
//! #   --kernel PATH      default: the host's newest /boot/vmlinuz-* with its modules
//! ```
//!
//! The project becomes an ext4 image made by `mke2fs -d` (e2fsprogs), attached as a writable
//! virtio-blk disk and mounted at `/project`, where the command runs. The exit status of the
//! runner is the command's (or 2 when it could not run). Linux zones need a KVM that runs guest
//! kernels; on one that cannot, run it in the lab:
//!
//! ```sh
//! cargo build --release --example ci_runner
//! lab/run -- env ZONES_LAB=1 target/release/examples/ci_runner tests/tools/ci-project -- sh ./test.sh
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zones::prelude::*;
use zones::{Command, Disk, LinuxBoot, ProcessEvent, Rootfs};

/// The disk's serial: the guest finds the project's disk by it.
const SERIAL: &str = "ci-project";

struct Job {
    project: PathBuf,
    command: Vec<String>,
    timeout: Duration,
    memory_mib: u64,
    vcpus: u32,
    rootfs_dir: Option<String>,
    kernel: Option<String>,
    ready: Duration,
}

fn job() -> Result<Job, String> {
    let mut args = std::env::args().skip(1);
    let mut job = Job {
        project: PathBuf::new(),
        command: Vec::new(),
        timeout: Duration::from_secs(600),
        memory_mib: 512,
        vcpus: 2,
        rootfs_dir: None,
        kernel: None,
        ready: Duration::from_secs(300),
    };
    let number = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.ok_or(format!("{what} needs a value"))?
            .parse()
            .map_err(|e| format!("{what}: {e}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout" => job.timeout = Duration::from_secs(number(args.next(), "--timeout")?),
            "--memory" => job.memory_mib = number(args.next(), "--memory")?,
            "--vcpus" => job.vcpus = number(args.next(), "--vcpus")? as u32,
            "--ready" => job.ready = Duration::from_secs(number(args.next(), "--ready")?),
            "--rootfs-dir" => job.rootfs_dir = Some(args.next().ok_or("--rootfs-dir needs a dir")?),
            "--kernel" => job.kernel = Some(args.next().ok_or("--kernel needs a path")?),
            "--" => {
                job.command = args.by_ref().collect();
                break;
            }
            other if !other.starts_with("--") => job.project = PathBuf::from(other),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if job.project.as_os_str().is_empty() || job.command.is_empty() {
        return Err("usage: ci_runner [OPTIONS] PROJECT_DIR -- COMMAND [ARGS...]".into());
    }
    Ok(job)
}

/// Bytes under `dir` (files only), for sizing the image.
fn size_of(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            size_of(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// An ext4 image holding a copy of `project`, twice its size plus 64 MiB of room for the build.
async fn project_image(project: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let image = std::env::temp_dir().join(format!("ci-project-{}.ext4", std::process::id()));
    let mib = size_of(project)? * 2 / (1 << 20) + 64;
    let status = tokio::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d"])
        .arg(project)
        .arg(&image)
        .arg(format!("{mib}M"))
        .status()
        .await
        .map_err(|e| format!("mke2fs (install e2fsprogs): {e}"))?;
    if !status.success() {
        return Err(format!("mke2fs -d {} failed: {status}", project.display()).into());
    }
    Ok(image)
}

fn boot(job: &Job, image: &Path) -> Result<LinuxBoot, Box<dyn std::error::Error>> {
    let boot = match &job.kernel {
        Some(path) => LinuxBoot::new(path),
        None => LinuxBoot::host_kernel()?,
    };
    let boot = match &job.rootfs_dir {
        Some(dir) => boot.rootfs(Rootfs::dir(dir)),
        None => boot.busybox(),
    };
    // ext4 asks the kernel's crypto API for crc32c (metadata checksums); where that is a module
    // too, it must be loaded as well.
    Ok(boot
        .module("ext4")
        .module("crc32c_generic")
        .disk(Disk::raw(image).id(SERIAL))
        .hide_xsave(std::env::var("ZONES_LAB").is_ok_and(|v| v == "1")))
}

/// Prints complete lines of `pending` (keeping a partial last line) with the time and stream.
fn print_lines(pending: &mut Vec<u8>, tag: &str, at: Duration, flush: bool) {
    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        println!("[{:>8.3}s] {tag}| {text}", at.as_secs_f64());
    }
    if flush && !pending.is_empty() {
        println!(
            "[{:>8.3}s] {tag}| {}",
            at.as_secs_f64(),
            String::from_utf8_lossy(pending)
        );
        pending.clear();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let job = job()?;
    let started = Instant::now();
    let image = project_image(&job.project).await?;
    let zone = Zone::builder()
        .name("ci-job")
        .memory_mib(job.memory_mib)
        .vcpus(job.vcpus)
        .linux(boot(&job, &image)?)
        .deadline(job.timeout + Duration::from_secs(300))
        .build_async()
        .await?;
    // Mount the project's disk (found by its serial) and run the command there.
    let script = format!(
        "set -e; for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = {SERIAL} ] && dev=/dev/${{d##*/}}; done
         mkdir -p /project; mount -t ext4 \"$dev\" /project; cd /project; exec \"$@\""
    );
    let cmd = Command::new("sh")
        .args(["-c", &script, "ci"])
        .args(&job.command)
        .timeout(job.timeout);
    if let Err(e) = zone.wait_ready_async(job.ready).await {
        // What the guest reached, for the report: the host's milestones and the console's end.
        eprintln!("{}", zone.boot_report_async().await);
        let console = zone.console_text();
        let tail = console.len().saturating_sub(4000);
        let tail = console.get(tail..).unwrap_or(&console);
        eprintln!("--- the zone's console, its end (escaped):");
        for line in tail.lines() {
            eprintln!("  {}", line.escape_debug());
        }
        return Err(e.into());
    }
    let mut process = zone.spawn_async(&cmd).await?;
    drop(process.take_stdin()); // no input: end of file at once
    let ready_at = started.elapsed();
    println!(
        "[{:>8.3}s] ci | zone up, running {:?}",
        ready_at.as_secs_f64(),
        job.command
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut log_bytes = 0u64;
    let status = loop {
        match process.next_event().await? {
            Some(ProcessEvent::Stdout(bytes)) => {
                log_bytes += bytes.len() as u64;
                out.extend(bytes);
                print_lines(&mut out, "out", started.elapsed(), false);
            }
            Some(ProcessEvent::Stderr(bytes)) => {
                log_bytes += bytes.len() as u64;
                err.extend(bytes);
                print_lines(&mut err, "err", started.elapsed(), false);
            }
            Some(ProcessEvent::Exited(status)) => break status,
            None => return Err("the command's stream ended without an exit".into()),
        }
    };
    print_lines(&mut out, "out", started.elapsed(), true);
    print_lines(&mut err, "err", started.elapsed(), true);
    let m = zone.metrics();
    zone.kill();
    zone.wait_async().await;
    let _ = std::fs::remove_file(&image);
    println!("--- result: {status}");
    println!(
        "--- resources: wall {:.2}s (zone up after {:.2}s), vCPU time {:.2}s, guest memory touched {} MiB of {} MiB, log {} B",
        started.elapsed().as_secs_f64(),
        ready_at.as_secs_f64(),
        m.vcpu_run_time.as_secs_f64(),
        m.memory_resident_bytes.unwrap_or(0) >> 20,
        m.memory_bytes >> 20,
        log_bytes
    );
    for device in m.devices.iter().filter(|d| d.device.starts_with("blk")) {
        let counters: Vec<String> = device
            .counters
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        println!("--- {}: {}", device.device, counters.join(", "));
    }
    std::process::exit(status.code().unwrap_or(2));
}
