//! Network throughput and latency of a Linux zone's user-space network against QEMU's virtio-net
//! with `-netdev user` (slirp) and with passt, same kernel, same guest tool, same host peers, in
//! one lab run: `LAB_TIMEOUT=1800 lab/test --bench net_zone`. Elsewhere it prints SKIPPED.
//!
//! Each variant boots the host's kernel (1 vCPU, 256 MiB) and runs the static `netprobe` tool
//! against servers on the host's loopback, reached at the gateway 10.0.2.2:
//! - upload: 16 MiB guest to host (the time until the host has read it all and closed);
//! - download: 16 MiB host to guest;
//! - rr: 500 one-byte request/response round trips on one connection.
//!
//! Times are the guest's own (the same kernel clock for every variant). Rounds are interleaved
//! (each round runs every variant once) after a warm-up round; medians of 3 rounds. zones and
//! passt use a 65520-byte MTU, slirp its 1500. The bench runs in a network namespace of its own
//! with a TAP device holding a default route, which passt needs to start; nothing leaves it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command as Host, Stdio};
use std::time::Duration;
use zones::prelude::*;
use zones::{Command, LinuxBoot};

const BYTES: u64 = 16 << 20;
const ROUND_TRIPS: u32 = 500;
const ROUNDS: usize = 3;

/// What one variant measured in one round.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    upload_mbps: f64,
    download_mbps: f64,
    rr_us: f64,
}

fn sh(args: &[&str]) {
    let ok = Host::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{args:?} failed");
}

/// The host peers: a sink (reads until EOF, then closes), a source (writes BYTES, then closes),
/// an echo (answers each byte). Returns their ports.
fn peers() -> (u16, u16, u16) {
    let listen = |serve: fn(std::net::TcpStream)| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve(s));
            }
        });
        port
    };
    let sink = listen(|mut s| {
        let mut buf = vec![0u8; 1 << 16];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let source = listen(|mut s| {
        let chunk = vec![0u8; 1 << 16];
        let mut sent = 0;
        while sent < BYTES && s.write_all(&chunk).is_ok() {
            sent += chunk.len() as u64;
        }
    });
    let echo = listen(|mut s| {
        let _ = s.set_nodelay(true);
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
    });
    (sink, source, echo)
}

fn commands(ports: (u16, u16, u16)) -> [String; 3] {
    [
        format!("/bin/netprobe upload 10.0.2.2:{} {BYTES}", ports.0),
        format!("/bin/netprobe download 10.0.2.2:{}", ports.1),
        format!("/bin/netprobe rr 10.0.2.2:{} {ROUND_TRIPS}", ports.2),
    ]
}

/// Reads the three result lines netprobe printed.
fn sample(lines: &[String]) -> Option<Sample> {
    let field = |prefix: &str| -> Option<(f64, f64)> {
        let line = lines.iter().find(|l| l.starts_with(prefix))?;
        let mut words = line.split_whitespace().skip(1);
        let n: f64 = words.next()?.parse().ok()?;
        let us: f64 = words.next()?.parse().ok()?;
        Some((n, us))
    };
    let (up, up_us) = field("upload")?;
    let (down, down_us) = field("download")?;
    let (rr, rr_us) = field("rr")?;
    Some(Sample {
        upload_mbps: up / up_us,
        download_mbps: down / down_us,
        rr_us: rr_us / rr,
    })
}

fn zones_round(ports: (u16, u16, u16)) -> Option<Sample> {
    let boot = LinuxBoot::host_kernel()
        .ok()?
        .busybox()
        .hide_xsave(true)
        .file("/bin/netprobe", env!("ZONES_TOOL_NETPROBE"), 0o755);
    let net = Net::user().allow(&format!("tcp host:{},{},{}", ports.0, ports.1, ports.2));
    let zone = Zone::builder()
        .memory_mib(256)
        .linux(boot)
        .net(net)
        .build()
        .ok()?;
    let mut lines = Vec::new();
    for cmd in commands(ports) {
        let out = zone.exec(&Command::new("sh").arg("-c").arg(cmd)).ok()?;
        lines.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    sample(&lines)
}

/// The module files (in load order) for `names` from `dir`'s modules.dep.
fn modules(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_default();
    let deps: Vec<(&str, Vec<&str>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((m, d.split_whitespace().collect()))
        })
        .collect();
    let mut order: Vec<String> = Vec::new();
    fn add(m: &str, deps: &[(&str, Vec<&str>)], order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        if let Some((_, ds)) = deps.iter().find(|(k, _)| *k == m) {
            for d in ds {
                add(d, deps, order);
            }
        }
        order.push(m.to_string());
    }
    for name in names {
        let file = format!("/{name}.ko");
        if let Some((m, _)) = deps.iter().find(|(k, _)| k.ends_with(&file)) {
            add(m, &deps, &mut order);
        }
    }
    order.into_iter().map(|m| dir.join(m)).collect()
}

/// A busybox initramfs that loads virtio-net, configures 10.0.2.15 and runs the workloads.
fn peer_initramfs(
    dir: &Path,
    kernel_version: &str,
    ports: (u16, u16, u16),
    mtu: u16,
) -> Option<PathBuf> {
    let root = dir.join(format!("net-peer-{mtu}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).ok()?;
    std::fs::create_dir_all(root.join("mods")).ok()?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).ok()?;
    std::fs::copy(env!("ZONES_TOOL_NETPROBE"), root.join("bin/netprobe")).ok()?;
    let mut init = String::from(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc p /proc; mount -t sysfs s /sys\n",
    );
    let mods = modules(
        &Path::new("/lib/modules").join(kernel_version),
        &["virtio_mmio", "virtio_net"],
    );
    for (i, m) in mods.iter().enumerate() {
        let name = format!("{i:02}.ko");
        std::fs::copy(m, root.join("mods").join(&name)).ok()?;
        init.push_str(&format!("insmod /mods/{name}\n"));
    }
    init.push_str(&format!(
        "ip link set lo up; ip link set eth0 mtu {mtu} up; ip addr add 10.0.2.15/24 dev eth0\n\
         ip route add default via 10.0.2.2\nsleep 1\n"
    ));
    for cmd in commands(ports) {
        init.push_str(&format!("echo \"RESULT $({cmd})\"\n"));
    }
    init.push_str("echo RESULT-END\npoweroff -f\n");
    std::fs::write(root.join("init"), init).ok()?;
    sh(&[
        "chmod",
        "+x",
        root.join("init").to_str()?,
        root.join("bin/netprobe").to_str()?,
    ]);
    let out = dir.join(format!("net-peer-{mtu}.cpio"));
    let script = format!(
        "cd {} && find . | cpio -o -H newc --quiet > {}",
        root.display(),
        out.display()
    );
    sh(&["sh", "-c", &script]);
    Some(out)
}

/// One QEMU run with `netdev` (and `host_mtu` on the device when given).
fn qemu_round(kernel: &Path, initramfs: &Path, netdev: &str, mtu: Option<u16>) -> Option<Sample> {
    let mut device = "virtio-net-device,netdev=n0".to_string();
    if let Some(mtu) = mtu {
        device.push_str(&format!(",host_mtu={mtu}"));
    }
    let mut qemu = Host::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-M",
            "microvm,rtc=on",
            "-cpu",
            "host,-xsave",
        ])
        .args(["-m", "256M", "-smp", "1", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
        .args(["-netdev", netdev, "-device", &device])
        .args(["-nodefaults", "-no-reboot", "-serial", "stdio"])
        .args(["-display", "none", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut lines = Vec::new();
    for line in BufReader::new(qemu.stdout.take()?).lines() {
        let line = line.ok()?;
        if line.contains("RESULT-END") {
            break;
        }
        if let Some(r) = line.split("RESULT ").nth(1) {
            lines.push(r.trim().to_string());
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    sample(&lines)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::var("ZONES_LAB").is_err() {
        eprintln!(
            "SKIPPED net_zone bench: needs a KVM that runs guest kernels; run lab/test --bench net_zone"
        );
        return;
    }
    // A namespace of our own, with a default route for passt.
    // SAFETY: unshare(2) with CLONE_NEWNET moves only this (so far single) thread.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "tuntap", "add", "dev", "uplink", "mode", "tap"]);
    sh(&["ip", "addr", "add", "192.0.2.1/24", "dev", "uplink"]);
    sh(&["ip", "link", "set", "uplink", "up"]);
    sh(&["ip", "route", "add", "default", "via", "192.0.2.254"]);
    let ports = peers();
    let version = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = version.trim();
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{version}"));
    let dir = std::env::temp_dir().join("zones-net-bench");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let slirp_init = peer_initramfs(&dir, version, ports, 1500);
    let passt_init = peer_initramfs(&dir, version, ports, 65520);
    let sock = dir.join("passt.sock");
    let passt = Host::new("passt")
        .args(["-f", "-q", "-s"])
        .arg(&sock)
        .args(["-a", "10.0.2.15", "-n", "24", "-g", "10.0.2.2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok();
    if passt.is_none() {
        println!("passt: SKIPPED (not installed: apt-get install passt)");
    }
    std::thread::sleep(Duration::from_millis(500));
    let qemu_present = Host::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    let mut results: Vec<(&str, Vec<Sample>)> =
        vec![("zones", vec![]), ("qemu-user", vec![]), ("passt", vec![])];
    for round in 0..=ROUNDS {
        for (name, samples) in &mut results {
            let s = match *name {
                "zones" => zones_round(ports),
                "qemu-user" if qemu_present => slirp_init
                    .as_deref()
                    .and_then(|i| qemu_round(&kernel, i, "user,id=n0", None)),
                "passt" if qemu_present && passt.is_some() => passt_init.as_deref().and_then(|i| {
                    let netdev = format!(
                        "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                        sock.display()
                    );
                    qemu_round(&kernel, i, &netdev, Some(65520))
                }),
                _ => None,
            };
            println!("round {round} {name}: {s:?}");
            if let (Some(s), true) = (s, round > 0) {
                samples.push(s);
            }
        }
    }
    println!("\nmedians of {ROUNDS} rounds (warm-up excluded), guest-measured:");
    println!(
        "{:<10} {:>12} {:>14} {:>12}",
        "variant", "upload MB/s", "download MB/s", "rr us"
    );
    let mut medians = Vec::new();
    for (name, samples) in &results {
        if samples.is_empty() {
            println!("{name:<10} SKIPPED (did not run)");
            continue;
        }
        let m = Sample {
            upload_mbps: median(samples.iter().map(|s| s.upload_mbps).collect()),
            download_mbps: median(samples.iter().map(|s| s.download_mbps).collect()),
            rr_us: median(samples.iter().map(|s| s.rr_us).collect()),
        };
        println!(
            "{name:<10} {:>12.1} {:>14.1} {:>12.1}",
            m.upload_mbps, m.download_mbps, m.rr_us
        );
        medians.push((*name, m));
    }
    if let Some((_, z)) = medians.iter().find(|(n, _)| *n == "zones") {
        for (name, p) in medians.iter().filter(|(n, _)| *n != "zones") {
            println!(
                "zones / {name}: upload {:.2}x, download {:.2}x, rr latency {:.2}x",
                z.upload_mbps / p.upload_mbps,
                z.download_mbps / p.download_mbps,
                z.rr_us / p.rr_us
            );
        }
    }
    if let Some(mut p) = passt {
        let _ = p.kill();
        let _ = p.wait();
    }
}
