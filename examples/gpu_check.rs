//! Passes one PCI device (a GPU, or any device bound to vfio-pci) to a Linux zone and prints what
//! the guest sees of it: its sysfs entries, its BARs, its interrupts, the kernel's log lines about
//! it. `lab/gpu-check --pass BDF` runs it; so can you:
//!
//! ```sh
//! sudo target/release/examples/gpu_check 0000:41:00.0 [--bind] [--module nvidia] [--memory-mib 4096]
//! ```
//!
//! Without `--bind` the device must already be bound to vfio-pci (the error says how).

use std::time::{Duration, Instant};
use zones::gpu::{Gpu, GpuControl};
use zones::prelude::*;
use zones::{Command, LinuxBoot};

const GUEST_REPORT: &str = r#"
for d in /sys/bus/pci/devices/*; do
  echo "== $(basename $d) $(cat $d/vendor):$(cat $d/device) class $(cat $d/class) driver $(basename "$(readlink $d/driver)" 2>/dev/null || echo none)"
  head -6 $d/resource | awk '$1 != "0x0000000000000000" { print "   BAR " NR-1 ": " $1 " - " $2 " flags " $3 }'
done
echo "== interrupts"; grep -i -E 'msi|pci' /proc/interrupts || echo "(none)"
echo "== kernel log (pci)"; busybox dmesg | grep -i -E 'pci|mmconfig|nvme|nvidia|amdgpu' | tail -40
"#;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut address = None;
    let (mut bind, mut modules, mut memory) = (false, Vec::new(), 2048u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bind" => bind = true,
            "--module" => modules.extend(args.next()),
            "--memory-mib" => memory = args.next().and_then(|m| m.parse().ok()).unwrap_or(memory),
            _ if address.is_none() => address = Some(a),
            _ => {
                eprintln!("usage: gpu_check BDF [--bind] [--module NAME]... [--memory-mib N]");
                std::process::exit(2);
            }
        }
    }
    let Some(address) = address else {
        eprintln!("usage: gpu_check BDF [--bind] [--module NAME]... [--memory-mib N]");
        std::process::exit(2);
    };
    let kernel = match LinuxBoot::host_kernel() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("gpu_check: {e}");
            std::process::exit(1);
        }
    };
    let mut boot = kernel
        .busybox()
        .hide_xsave(std::env::var("ZONES_LAB").is_ok());
    for m in &modules {
        boot = boot.module(m);
    }
    let started = Instant::now();
    let zone = match Zone::builder()
        .memory_mib(memory)
        .vcpus(2)
        .linux(boot)
        .gpu(Gpu::vfio(&address).bind_vfio(bind))
        .deadline(Duration::from_secs(600))
        .build()
    {
        Ok(z) => z,
        Err(e) => {
            eprintln!("gpu_check: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = zone.wait_ready(Duration::from_secs(300)) {
        eprintln!("gpu_check: {e}\n{}", zone.console_text());
        std::process::exit(1);
    }
    println!(
        "zone up with {address} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Give a driver loaded at boot a moment to probe.
    std::thread::sleep(Duration::from_secs(2));
    match zone.exec(&Command::new("sh").arg("-c").arg(GUEST_REPORT)) {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Err(e) => eprintln!("gpu_check: exec: {e}\n{}", zone.console_text()),
    }
    if let Some(gpu) = zone.device::<GpuControl>() {
        println!(
            "== host: bus mastering {}",
            if gpu.bus_master() { "on" } else { "off" }
        );
    }
    let metrics = zone.metrics();
    if let Some(c) = metrics.devices.iter().find(|d| d.device == "gpu0") {
        println!("== host: counters {:?}", c.counters);
    }
}
