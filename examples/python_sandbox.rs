//! Runs a Python snippet in a fresh Linux zone whose userland comes from an image, with a
//! deadline and an output limit, and prints its output, its exit and the zone's metrics.
//!
//! ```sh
//! cargo run --release --example python_sandbox -- [OPTIONS] 'print(6*7)'
//! #   --dir PATH     a root filesystem directory (e.g. made by
//! #                  `mmdebstrap --variant=essential --include=python3-minimal bookworm PATH`)
//! #   --oci PATH     an OCI image layout or archive (`docker save`, `skopeo ... oci-archive:`)
//! #   --image PATH   an ext4, erofs or squashfs image
//! #   --kernel PATH  default: the host's newest /boot/vmlinuz-* with its modules
//! #   --timeout S    deadline of the snippet, default 10 s
//! #   --limit BYTES  output kept per stream, default 64 KiB
//! ```
//!
//! Images made from directories and OCI images are cached in `$ZONES_CACHE_DIR` (default
//! `~/.cache/zones`).
//!
//! One of `--dir`, `--oci` or `--image` is required; the image is shared read-only and the
//! snippet's writes stay in the zone. On a machine whose KVM cannot run a guest kernel, run it
//! in the lab (`lab/images` builds the image the lab tests use):
//!
//! ```sh
//! cargo build --release --example python_sandbox
//! lab/run -- env ZONES_LAB=1 ZONES_CACHE_DIR=/tmp/zones-cache target/release/examples/python_sandbox \
//!     --dir target/lab-images/debian-python 'import platform; print(platform.python_version())'
//! ```

use std::time::{Duration, Instant};
use zones::prelude::*;
use zones::{Command, LinuxBoot, Rootfs};

struct Options {
    rootfs: Option<Rootfs>,
    kernel: Option<String>,
    timeout: Duration,
    limit: usize,
    snippet: String,
}

fn parse() -> Result<Options, String> {
    let mut opts = Options {
        rootfs: None,
        kernel: None,
        timeout: Duration::from_secs(10),
        limit: 64 << 10,
        snippet: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--dir" => opts.rootfs = Some(Rootfs::dir(value("--dir")?)),
            "--oci" => opts.rootfs = Some(Rootfs::oci(value("--oci")?)),
            "--image" => opts.rootfs = Some(Rootfs::image(value("--image")?)),
            "--kernel" => opts.kernel = Some(value("--kernel")?),
            "--timeout" => {
                let secs: u64 = value("--timeout")?
                    .parse()
                    .map_err(|e| format!("--timeout: {e}"))?;
                opts.timeout = Duration::from_secs(secs);
            }
            "--limit" => {
                opts.limit = value("--limit")?
                    .parse()
                    .map_err(|e| format!("--limit: {e}"))?;
            }
            _ if opts.snippet.is_empty() => opts.snippet = arg,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if opts.rootfs.is_none() {
        return Err("name the userland: --dir PATH, --oci PATH or --image PATH".into());
    }
    if opts.snippet.is_empty() {
        return Err("give the Python snippet to run, e.g. 'print(6*7)'".into());
    }
    Ok(opts)
}

fn main() {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("python_sandbox: {e}");
            std::process::exit(2);
        }
    };
    match run(opts) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("python_sandbox: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs the snippet; returns its exit code.
fn run(opts: Options) -> Result<i32, Box<dyn std::error::Error>> {
    let kernel = match &opts.kernel {
        Some(path) => LinuxBoot::new(path),
        None => LinuxBoot::host_kernel()?,
    };
    let rootfs = opts.rootfs.expect("checked by parse");
    let boot = kernel
        .hide_xsave(std::env::var_os("ZONES_LAB").is_some())
        .rootfs(rootfs);
    let started = Instant::now();
    let zone = Zone::builder()
        .name("python-sandbox")
        .memory_mib(256)
        .linux(boot)
        // The whole zone ends at this deadline whatever the snippet does.
        .deadline(opts.timeout + Duration::from_secs(120))
        .build()?;
    // The snippet's timeout counts from when it starts, not from the kernel's boot.
    zone.wait_ready(Duration::from_secs(300))?;
    let built = started.elapsed();
    let cmd = Command::new("python3")
        .arg("-c")
        .arg(&opts.snippet)
        .timeout(opts.timeout)
        .output_limit(opts.limit);
    let out = zone.exec(&cmd)?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "python_sandbox: {} after {:?} (agent ready after {built:?}){}",
        out.status,
        started.elapsed(),
        if out.truncated {
            ", output truncated"
        } else {
            ""
        },
    );
    eprintln!("{}", zone.metrics());
    Ok(out.status.code().unwrap_or(1))
}
