//! The peers of the fair boot bench: Cloud Hypervisor, Firecracker and QEMU `-M microvm,rtc=on`
//! booting the same kernel, 1 vCPU and 256 MiB, to a busybox `/init` that prints a marker on the
//! serial console; timed from process spawn to the marker line. Binaries: Cloud Hypervisor and
//! Firecracker from `$ZONES_PEERS_DIR/bin` (default `../shared/peers/bin` beside the checkout),
//! QEMU from `PATH`. A peer whose binary or kernel form is absent is skipped, and the bench says
//! so.
#![allow(dead_code)] // each bench uses a part of these helpers

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The line each peer's `/init` prints.
const MARKER: &str = "ZONES-PEER-READY";
/// The same command line for every peer.
const CMDLINE: &str = "console=ttyS0 quiet panic=-1 rdinit=/init";
/// QEMU with no default devices, no reboot, the serial console on stdout and nothing else.
const QEMU_CONSOLE_ONLY: [&str; 8] = [
    "-nodefaults",
    "-no-reboot",
    "-serial",
    "stdio",
    "-display",
    "none",
    "-monitor",
    "none",
];
/// A boot that takes longer than this failed.
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// One way to boot a kernel.
#[derive(Clone, Debug)]
pub struct Peer {
    /// `VMM (kernel form)`.
    pub label: String,
    program: PathBuf,
    args: Vec<String>,
}

/// Where the peers' binaries are.
fn peers_bin() -> PathBuf {
    std::env::var_os("ZONES_PEERS_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers"),
            PathBuf::from,
        )
        .join("bin")
}

/// A busybox initramfs whose /init prints the marker and powers off, in `dir`.
pub fn initramfs(dir: &Path) -> Option<PathBuf> {
    let root = dir.join("peer-root");
    std::fs::create_dir_all(root.join("bin")).ok()?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).ok()?;
    std::fs::write(
        root.join("init"),
        format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n"),
    )
    .ok()?;
    cpio(&root, &dir.join("peer.cpio"))
}

/// A busybox initramfs in `dir` (`NAME.cpio`) whose /init mounts /proc, /sys and /dev, loads
/// `modules` in order (one that fails is skipped), runs `script` with busybox's sh, prints the
/// marker and powers off.
pub fn initramfs_running(
    dir: &Path,
    name: &str,
    modules: &[PathBuf],
    script: &str,
) -> Option<PathBuf> {
    let root = dir.join(format!("{name}-root"));
    std::fs::create_dir_all(root.join("bin")).ok()?;
    std::fs::create_dir_all(root.join("lib")).ok()?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).ok()?;
    let mut init = String::from(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
         mkdir -p /proc /sys /dev /tmp\nmount -t proc proc /proc\nmount -t sysfs sysfs /sys\n\
         mount -t devtmpfs dev /dev\n",
    );
    for (i, module) in modules.iter().enumerate() {
        std::fs::copy(module, root.join(format!("lib/{i}.ko"))).ok()?;
        init.push_str(&format!("insmod /lib/{i}.ko 2>/dev/null\n"));
    }
    init.push_str(script);
    init.push_str(&format!("\necho {MARKER}\npoweroff -f\n"));
    std::fs::write(root.join("init"), init).ok()?;
    cpio(&root, &dir.join(format!("{name}.cpio")))
}

/// `root` as a newc cpio archive at `out`.
fn cpio(root: &Path, out: &Path) -> Option<PathBuf> {
    let cmd = format!(
        "chmod +x {root}/init && cd {root} && find . | cpio -o -H newc --quiet > {out}",
        root = root.display(),
        out = out.display()
    );
    let ok = Command::new("sh")
        .args(["-c", &cmd])
        .status()
        .ok()?
        .success();
    ok.then(|| out.to_path_buf())
}

/// The ELF vmlinux inside `bzimage` (xz, gzip or zstd payload), written to `out`.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Option<PathBuf> {
    let image = std::fs::read(bzimage).ok()?;
    for (magic, tool) in [
        (&b"\xfd7zXZ\0"[..], "xz"),
        (&b"\x1f\x8b\x08"[..], "gzip"),
        (&b"\x28\xb5\x2f\xfd"[..], "zstd"),
    ] {
        let Some(at) = image.windows(magic.len()).position(|w| w == magic) else {
            continue;
        };
        let mut child = Command::new(tool)
            .args(["-dc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let payload = image[at..].to_vec();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&payload);
        });
        let output = child.wait_with_output().ok()?;
        let _ = feeder.join();
        if output.stdout.starts_with(b"\x7fELF") {
            std::fs::write(out, &output.stdout).ok()?;
            return Some(out.to_path_buf());
        }
    }
    None
}

/// The peers that can boot this kernel here; the others are named in the second list with why.
pub fn peers(
    bzimage: &Path,
    vmlinux: Option<&Path>,
    initrd: &Path,
    work: &Path,
) -> (Vec<Peer>, Vec<String>) {
    peers_with(bzimage, vmlinux, initrd, work, "")
}

/// As [`peers`], with `extra` appended to every peer's kernel command line (and to its label,
/// when not empty): the same guest-kernel arguments as zones, to tell the VMMs apart from the
/// arguments.
pub fn peers_with(
    bzimage: &Path,
    vmlinux: Option<&Path>,
    initrd: &Path,
    work: &Path,
    extra: &str,
) -> (Vec<Peer>, Vec<String>) {
    let cmdline = if extra.is_empty() {
        CMDLINE.to_string()
    } else {
        format!("{CMDLINE} {extra}")
    };
    let (found, skipped) = plain_peers(bzimage, vmlinux, initrd, work, &cmdline);
    if extra.is_empty() {
        return (found, skipped);
    }
    let tag = format!(" + `{extra}`");
    let found = found
        .into_iter()
        .map(|mut p| {
            p.label.push_str(&tag);
            p
        })
        .collect();
    (found, skipped.into_iter().map(|s| s + &tag).collect())
}

/// The words of `zones_cmdline` that the peers' own command line lacks, without `reboot=`
/// (how zones stops its guest): the guest-kernel arguments zones adds for speed.
pub fn zones_extra_args(zones_cmdline: &str) -> String {
    let plain: Vec<&str> = CMDLINE.split_whitespace().collect();
    zones_cmdline
        .split_whitespace()
        .filter(|w| !plain.contains(w) && !w.starts_with("reboot="))
        .collect::<Vec<_>>()
        .join(" ")
}

fn plain_peers(
    bzimage: &Path,
    vmlinux: Option<&Path>,
    initrd: &Path,
    work: &Path,
    cmdline: &str,
) -> (Vec<Peer>, Vec<String>) {
    let bin = peers_bin();
    let (ch, fc) = (bin.join("cloud-hypervisor"), bin.join("firecracker"));
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    let s = |p: &Path| p.display().to_string();
    if ch.is_file() {
        let ch_args = |kernel: &Path| {
            vec![
                "--kernel".into(),
                s(kernel),
                "--initramfs".into(),
                s(initrd),
                "--cmdline".into(),
                cmdline.into(),
                "--cpus".into(),
                "boot=1".into(),
                "--memory".into(),
                "size=256M".into(),
                "--serial".into(),
                "tty".into(),
                "--console".into(),
                "off".into(),
            ]
        };
        found.push(Peer {
            label: "Cloud Hypervisor (bzImage)".into(),
            program: ch.clone(),
            args: ch_args(bzimage),
        });
        // It boots a vmlinux only through a PVH note; one without fails the warm-up round.
        match vmlinux {
            Some(v) => found.push(Peer {
                label: "Cloud Hypervisor (vmlinux, PVH)".into(),
                program: ch.clone(),
                args: ch_args(v),
            }),
            None => skipped.push("Cloud Hypervisor (vmlinux): no vmlinux".into()),
        }
    } else {
        skipped.push(format!("Cloud Hypervisor: no {}", ch.display()));
    }
    match (fc.is_file(), vmlinux) {
        (true, Some(v)) => {
            // One config per command line: the plain and the extended peers both run.
            let config = work.join(format!("fc-{}-{}.json", found.len(), cmdline.len()));
            let json = format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "{cmdline}"}}, "drives": [], "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}}}}"#,
                s(v),
                s(initrd)
            );
            if std::fs::write(&config, json).is_ok() {
                found.push(Peer {
                    label: "Firecracker (vmlinux)".into(),
                    program: fc,
                    args: vec!["--no-api".into(), "--config-file".into(), s(&config)],
                });
            }
        }
        (true, None) => skipped.push("Firecracker: it boots only an ELF vmlinux, none here".into()),
        (false, _) => skipped.push(format!("Firecracker: no {}", fc.display())),
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        let mut args: Vec<String> = [
            "-accel",
            "kvm",
            "-M",
            "microvm,rtc=on",
            "-cpu",
            "host,-xsave",
            "-m",
            "256M",
            "-smp",
            "1",
            "-kernel",
        ]
        .map(String::from)
        .to_vec();
        args.extend([s(bzimage), "-initrd".into(), s(initrd), "-append".into()]);
        args.push(cmdline.into());
        args.extend(QEMU_CONSOLE_ONLY.map(String::from));
        found.push(Peer {
            label: "QEMU microvm rtc=on (bzImage)".into(),
            program: "qemu-system-x86_64".into(),
            args,
        });
    } else {
        skipped.push("QEMU: qemu-system-x86_64 is not installed".into());
    }
    (found, skipped)
}

/// QEMU with the host PCI device `bdf` passed through (vfio-pci), `memory_mib` of RAM, the
/// same kernel, command line and initramfs: on `microvm,rtc=on,pcie=on` (its PCIe host) and on
/// `q35` (firmware boot). Empty without QEMU.
pub fn qemu_passthrough(bzimage: &Path, initrd: &Path, memory_mib: u64, bdf: &str) -> Vec<Peer> {
    let installed = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        return Vec::new();
    }
    let s = |p: &Path| p.display().to_string();
    ["microvm,rtc=on,pcie=on", "q35"]
        .into_iter()
        .map(|machine| {
            let mut args: Vec<String> = ["-accel", "kvm", "-M", machine, "-cpu", "host,-xsave"]
                .map(String::from)
                .to_vec();
            args.extend([
                "-m".into(),
                format!("{memory_mib}M"),
                "-smp".into(),
                "1".into(),
            ]);
            args.extend(["-kernel".into(), s(bzimage), "-initrd".into(), s(initrd)]);
            args.extend(["-append".into(), CMDLINE.into()]);
            args.extend(["-device".into(), format!("vfio-pci,host={bdf}")]);
            args.extend(QEMU_CONSOLE_ONLY.map(String::from));
            Peer {
                label: format!("QEMU {machine} + vfio-pci (bzImage)"),
                program: "qemu-system-x86_64".into(),
                args,
            }
        })
        .collect()
}

/// Drops the peers that cannot boot (one try each, the warm-up), saying so after `prefix`.
pub fn keep_booting(peers: &mut Vec<Peer>, prefix: &str) {
    peers.retain(|p| {
        let ok = p.boot().is_some();
        if !ok {
            println!(
                "{prefix}: peer SKIPPED: {} did not reach /init (warm-up)",
                p.label
            );
        }
        ok
    });
}

/// `rounds` rounds of zones (`zones`, called on its turn) and every peer, each round in a
/// rotated order; each peer's successful boot times, in `peers`' order.
pub fn interleaved(
    rounds: usize,
    label: &str,
    peers: &[Peer],
    zones: impl FnMut(),
) -> Vec<Vec<Duration>> {
    interleaved_rounds(rounds, label, peers, zones)
        .into_iter()
        .map(|runs| runs.into_iter().flatten().collect())
        .collect()
}

/// As [`interleaved`], keeping each peer's boot time by round (`None`: it failed that round),
/// so that zones' time in a round can be set against the peers' in the same round.
pub fn interleaved_rounds(
    rounds: usize,
    label: &str,
    peers: &[Peer],
    mut zones: impl FnMut(),
) -> Vec<Vec<Option<Duration>>> {
    let mut runs = vec![Vec::new(); peers.len()];
    let variants = peers.len() + 1;
    for round in 0..rounds {
        for k in 0..variants {
            match (round + k) % variants {
                0 => zones(),
                i => runs[i - 1].push(peers[i - 1].boot()),
            }
        }
        eprintln!("  {label}: round {} of {rounds} done", round + 1);
    }
    runs
}

/// The median of zones' time over a peer's in the same round, over the rounds both finished:
/// the lab's speed drifts between rounds, and a ratio within one round cancels the drift.
pub fn paired_ratio(zones: &[Option<Duration>], peer: &[Option<Duration>]) -> Option<f64> {
    let mut ratios: Vec<f64> = zones
        .iter()
        .zip(peer)
        .filter_map(|(z, p)| Some(z.as_ref()?.as_secs_f64() / p.as_ref()?.as_secs_f64()))
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied()
}

impl Peer {
    /// Spawn to marker, or None when the peer failed or took over [`BOOT_LIMIT`].
    pub fn boot(&self) -> Option<Duration> {
        self.run().map(|(took, _)| took)
    }

    /// The console lines before the marker, or None when the peer failed or took over
    /// [`BOOT_LIMIT`].
    pub fn output(&self) -> Option<Vec<String>> {
        self.run().map(|(_, lines)| lines)
    }

    /// Spawn to marker and the console lines before it.
    fn run(&self) -> Option<(Duration, Vec<String>)> {
        let started = Instant::now();
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) if l.contains(MARKER) => {
                        let _ = tx.send((started.elapsed(), seen));
                        return;
                    }
                    Ok(l) => seen.push(l),
                    Err(_) => return,
                }
            }
        });
        let ready = rx.recv_timeout(BOOT_LIMIT).ok();
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        ready
    }
}
