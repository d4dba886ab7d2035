//! Linux zones end to end: the Debian kernel boots in a zone, the agent runs commands over
//! virtio-vsock, disks attach over virtio-blk, containment applies. These need a KVM that runs a
//! guest kernel: they run in the lab (`lab/test linux_zone`); on a KVM that cannot (this project's
//! development KVM) they print SKIPPED and return.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use zones::prelude::*;
use zones::{Command, ExecError, LinuxBoot};

use common::{boot, with_userland};

fn zone(boot: LinuxBoot, vcpus: u32, memory_mib: u64) -> Zone {
    Zone::builder()
        .memory_mib(memory_mib)
        .vcpus(vcpus)
        .linux(boot)
        .deadline(common::scaled(Duration::from_secs(60)))
        .build()
        .expect("Linux zone")
}

fn sh(script: &str) -> Command {
    Command::new("sh").arg("-c").arg(script)
}

fn run(zone: &Zone, cmd: &Command) -> zones::Output {
    common::run_when_ready(zone, cmd)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[test]
fn boots_the_host_kernel_and_runs_commands() {
    require_linux!();
    let started = Instant::now();
    let zone = zone(boot(), 2, 256);
    let info = zone
        .wait_ready(common::scaled(Duration::from_secs(30)))
        .unwrap();
    eprintln!(
        "agent ready after {:?}: kernel {}",
        started.elapsed(),
        info.kernel_release
    );
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let uname = run(&zone, &Command::new("uname").arg("-r"));
    assert!(uname.status.success());
    assert_eq!(
        text(&uname.stdout),
        host_release.trim(),
        "the zone runs the host's kernel"
    );
    assert_eq!(info.kernel_release, host_release.trim());
    // A zone without a disk carries no disk driver (every module loaded costs boot time); the
    // agent's own are there.
    let modules = run(&zone, &sh("ls /lib/modules/zones"));
    let modules = text(&modules.stdout);
    assert!(
        modules.contains("vmw_vsock_virtio_transport") && !modules.contains("virtio_blk"),
        "{modules}"
    );
    // Signed modules go in with their signatures beside them, and load without.
    if host_modules_are_signed() {
        assert!(
            modules.contains("vmw_vsock_virtio_transport.ko.sig"),
            "{modules}"
        );
        assert_ne!(tainted(&zone) & TAINT_UNSIGNED_MODULE, 0);
    }

    let three = run(&zone, &sh("exit 3"));
    assert_eq!(three.status.code(), Some(3));

    let split = run(&zone, &sh("echo to-out; echo to-err >&2"));
    assert_eq!(
        (text(&split.stdout), text(&split.stderr)),
        ("to-out".into(), "to-err".into())
    );

    let cpus = run(&zone, &sh("grep -c ^processor /proc/cpuinfo"));
    assert_eq!(text(&cpus.stdout), "2");
    let mem = run(&zone, &sh("grep MemTotal /proc/meminfo"));
    let kib: u64 = text(&mem.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (200 << 10..256 << 10).contains(&kib),
        "MemTotal {kib} kB for a 256 MiB zone"
    );

    let env = run(
        &zone,
        &Command::new("sh")
            .args(["-c", "echo $GREETING; pwd"])
            .env("GREETING", "hi")
            .current_dir("/tmp"),
    );
    assert_eq!(text(&env.stdout), "hi\n/tmp");
    let missing = zone.exec(&Command::new("/no/such/program"));
    assert!(
        matches!(missing, Err(ExecError::Spawn { .. })),
        "{missing:?}"
    );
    check_boot_report(&zone);
    zone.kill();
    assert_eq!(
        zone.metrics().seccomp_refused,
        0,
        "{:?}",
        zone.events().drain()
    );
}

/// The guest kernel's taint flag for a module loaded without a (valid) signature.
const TAINT_UNSIGNED_MODULE: u64 = 1 << 13;

/// The guest kernel's taint flags.
fn tainted(zone: &Zone) -> u64 {
    let out = run(zone, &sh("cat /proc/sys/kernel/tainted"));
    text(&out.stdout).parse().expect("a number")
}

/// Whether the host's vsock module carries a signature (Debian's do).
fn host_modules_are_signed() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let module = format!(
        "/lib/modules/{}/kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        release.trim()
    );
    std::fs::read(module).is_ok_and(|m| m.ends_with(b"~Module signature appended~\n"))
}

/// A kernel that demands signed modules (`module.sig_enforce=1`) refuses the agent's modules
/// without their signatures; the agent loads each again with its signature and the zone starts,
/// untainted. `guest_checks_module_signatures(true)` leaves the signatures on the modules.
#[test]
fn module_signatures_come_back_where_the_kernel_demands_them() {
    require_linux!();
    if !host_modules_are_signed() {
        common::skipped(format_args!("the host's modules are not signed"));
        return;
    }
    for (what, boot) in [
        (
            "module.sig_enforce=1",
            boot().cmdline("module.sig_enforce=1"),
        ),
        (
            "guest_checks_module_signatures",
            boot().guest_checks_module_signatures(true),
        ),
    ] {
        let zone = zone(boot, 1, 256);
        let loaded = run(
            &zone,
            &sh("cut -d' ' -f1 /proc/modules; ls /lib/modules/zones"),
        );
        let loaded = text(&loaded.stdout);
        assert!(
            loaded.contains("vmw_vsock_virtio_transport"),
            "{what}: {loaded}"
        );
        assert_eq!(tainted(&zone) & TAINT_UNSIGNED_MODULE, 0, "{what}");
        let console = zone.console_text();
        assert!(!console.contains("zone-agent: module"), "{what}: {console}");
        if what == "guest_checks_module_signatures" {
            assert!(!loaded.contains(".sig"), "{what}: {loaded}");
        }
        zone.kill();
    }
}

/// The boot report of a Linux zone that ran commands: the build's phases, the host's milestones
/// in their order, and the agent's marks, in order on the guest's clock.
fn check_boot_report(zone: &Zone) {
    let report = zone.boot_report();
    eprintln!("{report}");
    // The bzImage is decompressed by the first zone that boots it; later zones load the cached
    // vmlinux, with no decompression phase.
    let phases: Vec<&str> = report
        .build_phases
        .iter()
        .map(|p| p.0)
        .filter(|p| *p != "kernel decompressed (host)")
        .collect();
    assert_eq!(
        phases,
        [
            "kernel read",
            "root filesystem",
            "initramfs",
            "VM and memory",
            "kernel and boot data loaded",
            "devices",
            "vCPUs"
        ],
        "{report}"
    );
    let at = |name: &str| {
        report
            .milestones
            .iter()
            .find(|m| m.0 == name)
            .unwrap_or_else(|| panic!("no {name:?}:\n{report}"))
            .1
    };
    // The host's own milestones, with the agent's steps stamped on the host's clock through
    // the boot-mark port between them: the vsock driver comes up while the agent loads the
    // modules.
    let order = [
        "vCPUs started",
        "agent started (agent)",
        "mounts done (agent)",
        "vsock driver ready",
        "modules loaded (agent)",
        "root filesystem ready (agent)",
        "network ready (agent)",
        "agent port listening (agent)",
        "agent answered",
        "first command started",
        "first command ended",
    ];
    for pair in order.windows(2) {
        assert!(at(pair[0]) <= at(pair[1]), "{pair:?}:\n{report}");
    }
    assert!(
        at("first console output") >= at("vCPUs started"),
        "{report}"
    );
    assert!(
        at("server ready (agent)") <= at("first command started"),
        "{report}"
    );
    let marks: Vec<&str> = report.guest_marks.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        marks,
        [
            "agent_start",
            "mounted",
            "modules_loaded",
            "rootfs_ready",
            "network_ready",
            "server_listening",
            "server_ready"
        ],
        "{report}"
    );
    assert!(
        report.guest_marks.windows(2).all(|w| w[0].1 <= w[1].1)
            && report.guest_marks[0].1 > Duration::ZERO,
        "{report}"
    );
}

#[test]
fn large_binary_and_streamed_io_arrive_intact() {
    require_linux!();
    let zone = zone(boot(), 1, 256);
    // 16 MiB of stdout; compare its checksum with the guest's own.
    let out = run(&zone, &sh("yes 0123456789abcdef | head -c 16777216"));
    assert_eq!(out.stdout.len(), 16 << 20);
    assert!(
        out.stdout
            .chunks(17)
            .all(|c| c == &b"0123456789abcdef\n"[..c.len()])
    );
    // Every byte value, both ways: stdin -> cat -> stdout.
    let all: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let echoed = run(&zone, &Command::new("cat").stdin(all.clone()));
    assert_eq!(echoed.stdout, all);
    // Streaming stdin.
    let mut p = zone.spawn(&Command::new("wc").arg("-c")).unwrap();
    for _ in 0..10 {
        p.write_stdin(&[b'x'; 1000]).unwrap();
    }
    p.close_stdin().unwrap();
    assert_eq!(text(&p.wait_with_output().unwrap().stdout), "10000");
    zone.kill();
    assert_eq!(
        zone.metrics().seccomp_refused,
        0,
        "{:?}",
        zone.events().drain()
    );
}

#[test]
fn concurrent_commands_and_timeouts() {
    require_linux!();
    let zone = Arc::new(zone(boot(), 2, 256));
    zone.wait_ready(common::scaled(Duration::from_secs(30)))
        .unwrap();
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let zone = zone.clone();
            std::thread::spawn(move || run(&zone, &sh(&format!("sleep 0.2; echo {i}"))))
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        assert_eq!(text(&r.join().unwrap().stdout), i.to_string());
    }
    let slow = run(
        &zone,
        &Command::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(500)),
    );
    assert!(
        slow.status.timed_out() && slow.status.signal() == Some(9),
        "{:?}",
        slow.status
    );
    zone.kill();
}

#[test]
fn a_guest_panic_is_reported_not_hung() {
    require_linux!();
    let zone = zone(boot(), 1, 256);
    zone.wait_ready(common::scaled(Duration::from_secs(30)))
        .unwrap();
    let result = zone.exec(&sh("echo c > /proc/sysrq-trigger; sleep 60"));
    assert!(
        matches!(result, Err(ExecError::ZoneStopped { .. })),
        "{result:?}"
    );
    match zone.wait() {
        ZoneExit::Panicked(msg) => assert!(msg.contains("sysrq"), "{msg}"),
        other => panic!("expected a panic, got {other:?}\n{}", zone.console_text()),
    }
}

#[test]
fn the_agent_dying_is_an_error_not_a_hang() {
    require_linux!();
    let zone = zone(boot(), 1, 256);
    // Kill the agent's server process (the one serving this very command).
    let result = zone.exec(&sh("kill -9 $PPID; sleep 60"));
    assert!(
        matches!(result, Err(ExecError::AgentLost { .. })),
        "{result:?}"
    );
    zone.kill();
}

/// An agent that says nothing for longer than [`zones::AGENT_ANSWER_TIMEOUT`] is waited for while
/// its guest works (a loaded or emulated host makes a healthy agent that slow), and is lost
/// while its guest idles. The agent's server is stopped (SIGSTOP) from inside the guest; the
/// guest kernel still accepts the host's connection and buffers its request, so only the
/// answer is missing.
#[test]
fn a_silent_agent_is_waited_for_while_its_guest_works_and_lost_while_it_idles() {
    require_linux!();
    let zone = zone(boot(), 1, 256);
    run(&zone, &sh("true"));
    let silence = zones::AGENT_ANSWER_TIMEOUT + Duration::from_secs(8);
    // Busy: the server stops (after this command has ended), `yes` keeps the vCPU running, and
    // the server continues `silence` later.
    let busy = format!(
        "(sleep 2; kill -STOP $PPID; yes >/dev/null & y=$!; sleep {}; kill -CONT $PPID; kill $y) \
         >/dev/null 2>&1 </dev/null &",
        silence.as_secs()
    );
    run(&zone, &sh(&busy));
    std::thread::sleep(Duration::from_secs(5));
    let started = Instant::now();
    let out = zone
        .exec(&sh("echo back"))
        .unwrap_or_else(|e| panic!("a busy guest's agent was given up: {e}"));
    let waited = started.elapsed();
    assert_eq!(text(&out.stdout), "back");
    assert!(
        waited > zones::AGENT_ANSWER_TIMEOUT,
        "the server answered after {waited:?}: the silence did not outlast the answer timeout"
    );
    // Idle: the server stops for longer than the wait a busy guest gets, nothing runs.
    let idle =
        "(sleep 2; kill -STOP $PPID; sleep 200; kill -CONT $PPID) >/dev/null 2>&1 </dev/null &";
    run(&zone, &sh(idle));
    std::thread::sleep(Duration::from_secs(5));
    let started = Instant::now();
    let r = zone.exec(&sh("echo never"));
    let waited = started.elapsed();
    assert!(matches!(r, Err(ExecError::AgentLost { .. })), "{r:?}");
    assert!(
        waited < zones::AGENT_BUSY_LIMIT,
        "an idle guest's silent agent was waited for {waited:?}"
    );
    zone.kill();
}

#[test]
fn pause_stops_guest_progress() {
    require_linux!();
    let zone = zone(boot(), 1, 256);
    let mut p = zone
        .spawn(&sh("while true; do date +%s%N; sleep 0.05; done"))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(Some(zones::ProcessEvent::Stdout(bytes))) = p.next_event() {
            if tx.send(bytes).is_err() {
                return;
            }
        }
    });
    let wait = common::scaled(Duration::from_secs(10));
    rx.recv_timeout(wait).expect("the guest prints");
    zone.pause().unwrap();
    // Output already on its way out of the guest may still land; nothing new after that.
    std::thread::sleep(Duration::from_millis(200));
    while rx.try_recv().is_ok() {}
    let run_time = zone.metrics().vcpu_run_time;
    std::thread::sleep(Duration::from_millis(600));
    assert!(rx.try_recv().is_err(), "the guest printed while paused");
    assert_eq!(
        zone.metrics().vcpu_run_time,
        run_time,
        "a vCPU ran while paused"
    );
    zone.resume().unwrap();
    rx.recv_timeout(wait)
        .expect("the guest prints again after resume");
    // Deadlines apply to Linux zones too.
    zone.set_deadline(Duration::from_millis(200));
    assert_eq!(zone.wait(), ZoneExit::DeadlineExceeded);
    assert!(matches!(
        zone.exec(&Command::new("true")),
        Err(ExecError::ZoneStopped { .. })
    ));
}

/// The newest `/boot/vmlinuz-*`: (path, version).
fn host_kernel_file() -> (std::path::PathBuf, String) {
    let mut kernels: Vec<_> = std::fs::read_dir("/boot")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            Some((
                e.path(),
                e.file_name()
                    .into_string()
                    .ok()?
                    .strip_prefix("vmlinuz-")?
                    .to_string(),
            ))
        })
        .collect();
    kernels.sort_by_key(|(_, v)| {
        v.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    kernels.pop().expect("a kernel in /boot")
}

/// The ELF vmlinux inside an xz-compressed bzImage, as `scripts/extract-vmlinux` finds it.
fn extract_vmlinux(bzimage: &[u8]) -> Option<Vec<u8>> {
    let at = bzimage.windows(6).position(|w| w == b"\xfd7zXZ\0")?;
    let mut xz = std::process::Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = xz.stdin.take()?;
    let payload = bzimage[at..].to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload));
    let out = xz.wait_with_output().ok()?;
    let _ = feeder.join();
    out.stdout.starts_with(b"\x7fELF").then_some(out.stdout)
}

#[test]
fn boots_an_elf_vmlinux_too() {
    require_linux!();
    let (path, version) = host_kernel_file();
    let Some(vmlinux) = extract_vmlinux(&std::fs::read(&path).unwrap()) else {
        common::skipped(format_args!(
            "boots_an_elf_vmlinux_too: {} has no xz payload or xz is missing",
            path.display()
        ));
        return;
    };
    let boot = with_userland(
        LinuxBoot::from_image(vmlinux).modules_dir(format!("/lib/modules/{version}")),
    );
    let zone = zone(boot, 1, 256);
    let uname = run(&zone, &Command::new("uname").arg("-r"));
    assert_eq!(text(&uname.stdout), version);
    zone.kill();
}

#[test]
fn reads_files_from_a_disk_and_enforces_read_only() {
    require_linux!();
    let dir = std::env::temp_dir().join(format!("zones-disk-{}", std::process::id()));
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("hello.txt"), "hello from a virtio-blk disk\n").unwrap();
    let ext4 = dir.join("data.ext4");
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&ext4)
        .arg("8M")
        .status();
    if !mkfs.is_ok_and(|s| s.success()) {
        common::skipped(format_args!(
            "reads_files_from_a_disk_and_enforces_read_only: mkfs.ext4 (e2fsprogs) is unavailable"
        ));
        return;
    }
    let scratch = dir.join("scratch.raw");
    std::fs::write(&scratch, vec![0u8; 1 << 20]).unwrap();
    let boot = boot()
        .module("ext4")
        .module("crc32c_generic")
        .disk(zones::Disk::raw(&ext4).read_only(true).id("data"))
        .disk(zones::Disk::raw(&scratch));
    let zone = zone(boot, 1, 256);
    let read = run(
        &zone,
        &sh("mkdir -p /mnt && mount -t ext4 -o ro /dev/vda /mnt && cat /mnt/hello.txt"),
    );
    assert_eq!(
        text(&read.stdout),
        "hello from a virtio-blk disk",
        "stderr: {}",
        text(&read.stderr)
    );
    let denied = run(
        &zone,
        &sh("dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync"),
    );
    assert!(
        !denied.status.success(),
        "writing a read-only disk succeeded"
    );
    let wrote = run(
        &zone,
        &sh("printf 'zones-was-here' | dd of=/dev/vdb bs=512 seek=3 conv=sync,fsync"),
    );
    assert!(wrote.status.success(), "{}", text(&wrote.stderr));
    zone.kill();
    zone.wait();
    assert_eq!(
        zone.metrics().seccomp_refused,
        0,
        "{:?}",
        zone.events().drain()
    );
    drop(zone);
    let image = std::fs::read(&scratch).unwrap();
    assert_eq!(&image[3 * 512..3 * 512 + 14], b"zones-was-here");
    assert!(
        image[..3 * 512].iter().all(|b| *b == 0),
        "nothing written before sector 3"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A kernel built by `lab/minikernel` (tinyconfig plus virtio-mmio, vsock, virtio-blk, serial and
/// ACPI built in, no modules): `$ZONES_MINI_KERNEL_DIR` or `target/minikernel`.
fn minimal_kernel_dir() -> std::path::PathBuf {
    std::env::var_os("ZONES_MINI_KERNEL_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/minikernel"),
        Into::into,
    )
}

#[test]
fn boots_a_minimal_kernel_with_drivers_built_in() {
    require_linux!();
    let dir = minimal_kernel_dir();
    let images = [dir.join("bzImage"), dir.join("vmlinux")];
    if !images.iter().all(|p| p.is_file()) {
        common::skipped(format_args!(
            "boots_a_minimal_kernel_with_drivers_built_in: no {} and {}; build them with lab/minikernel",
            images[0].display(),
            images[1].display()
        ));
        return;
    }
    let disk_dir = std::env::temp_dir().join(format!("zones-mini-{}", std::process::id()));
    std::fs::create_dir_all(&disk_dir).unwrap();
    let raw = disk_dir.join("disk.raw");
    let mut image = vec![0u8; 64 << 10];
    image[512..512 + 17].copy_from_slice(b"minimal-disk-data");
    std::fs::write(&raw, &image).unwrap();
    for kernel in &images {
        // No modules directory: the drivers must be built in. The bzImage's own decompressor
        // runs in the guest here (other tests boot kernels decompressed on the host).
        let boot = with_userland(LinuxBoot::new(kernel).decompress_on_host(false))
            .disk(zones::Disk::raw(&raw).read_only(true));
        let zone = zone(boot, 2, 128);
        let out = run(
            &zone,
            &sh(
                "uname -r; grep -c ^processor /proc/cpuinfo; dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 17",
            ),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            lines.len() == 3 && lines[0].starts_with("6.") && lines[1] == "2",
            "{}: stdout {stdout:?} stderr {:?}",
            kernel.display(),
            text(&out.stderr)
        );
        assert_eq!(lines[2], "minimal-disk-data", "{}", kernel.display());
        eprintln!("{}: {}", kernel.display(), zone.boot_report());
        let status = run(&zone, &sh("exit 7")).status;
        assert_eq!(status.code(), Some(7));
        // The guest panics on request: the zone reports it.
        let _ = zone.exec(&sh("echo c > /proc/sysrq-trigger"));
        match zone.wait() {
            ZoneExit::Panicked(line) => assert!(line.contains("sysrq"), "{line}"),
            other => panic!("{}: expected a panic, got {other:?}", kernel.display()),
        }
    }
    std::fs::remove_dir_all(&disk_dir).unwrap();
}

/// Debian's 6.12 kernel as `lab/debian-kernel` unpacks it: `(vmlinuz, modules dir, version)`.
fn debian_6_12() -> Option<(std::path::PathBuf, std::path::PathBuf, String)> {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lab-kernels/debian-6.12");
    let version = std::fs::read_dir(root.join("lib/modules"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()?;
    let kernel = root.join("boot").join(format!("vmlinuz-{version}"));
    let modules = root.join("lib/modules").join(&version);
    Some((kernel, modules, version))
}

/// The kernel users of Debian 13 and bookworm-backports have: modules compressed as `.ko.xz`,
/// `virtio_mmio` a module, `virtio_pci` built in. The agent's modules (and ext4 with its
/// dependencies) are decompressed on the host; the zone boots and runs commands.
#[test]
fn boots_debian_6_12_compressed_modules() {
    require_linux!();
    let (kernel, modules, version) = debian_6_12()
        .expect("no target/lab-kernels/debian-6.12: lab/setup fetches it (lab/debian-kernel)");
    let boot = with_userland(LinuxBoot::new(&kernel))
        .modules_dir(&modules)
        .module("ext4");
    let started = Instant::now();
    let zone = zone(boot, 2, 256);
    let info = zone
        .wait_ready(common::scaled(Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", zone.console_text()));
    eprintln!("6.12: agent ready after {:?}", started.elapsed());
    assert_eq!(info.kernel_release, version);
    let out = run(
        &zone,
        &sh(
            "uname -r; grep -E '^(virtio_mmio|vmw_vsock_virtio_transport|ext4) ' /proc/modules | cut -d' ' -f1 | sort",
        ),
    );
    assert_eq!(
        text(&out.stdout),
        format!("{version}\next4\nvirtio_mmio\nvmw_vsock_virtio_transport"),
        "stderr {:?}\nconsole:\n{}",
        text(&out.stderr),
        zone.console_text()
    );
    assert!(
        !zone.console_text().contains("zone-agent: module"),
        "every module loaded:\n{}",
        zone.console_text()
    );
}

/// A guest that takes the vsock device from its driver breaks the exec channel: once the agent
/// has answered, the next exec fails fast (bounded by its timeout), not after the 120 s boot wait.
#[test]
fn a_broken_exec_channel_fails_fast() {
    require_linux!();
    let zone = zone(boot(), 1, 256);
    run(&zone, &sh("true"));
    let unbind = "cd /sys/bus/virtio/drivers/vmw_vsock_virtio_transport && \
                  for d in virtio*; do echo $d > unbind; done";
    let _ = zone.exec(&sh(unbind).timeout(Duration::from_secs(5)));
    let started = Instant::now();
    let r = zone.exec(&Command::new("true").timeout(Duration::from_secs(5)));
    let took = started.elapsed();
    assert!(matches!(r, Err(ExecError::AgentLost { .. })), "{r:?}");
    assert!(
        took < Duration::from_secs(5)
            + common::scaled(Duration::from_secs(1))
            + Duration::from_secs(5),
        "took {took:?}"
    );
    assert_eq!(zone.state(), ZoneState::Running, "the zone itself is fine");
    zone.kill();
}
