//! An AI agent's sandbox with a network policy: a Linux zone may reach one service on the host
//! and one DNS name, nothing else. It runs a script that tries the service, the name, a
//! forbidden address and a forbidden name, then prints what happened, every denial the zone's
//! policy reported, and the network counters.
//!
//! ```sh
//! cargo run --release --example agent_sandbox -- [--name NAME] [--kernel PATH]
//! #   --name NAME     the one DNS name the zone may resolve and reach on port 443
//! #                   (default example.com; answered by the host's resolver)
//! #   --kernel PATH   a kernel with virtio-mmio, vsock, virtio-blk and virtio-net built in;
//! #                   default: the host's newest /boot/vmlinuz-* with its modules
//! ```
//!
//! The service is a tiny HTTP responder this example starts on the host's loopback; the zone
//! reaches it at its gateway, 10.0.2.2, through the rule `tcp host:PORT`. Linux zones need a KVM
//! that runs guest kernels; on one that cannot, run it in the lab:
//!
//! ```sh
//! cargo build --release --example agent_sandbox
//! lab/run -- env ZONES_LAB=1 target/release/examples/agent_sandbox
//! ```

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;
use zones::prelude::*;
use zones::{Command, LinuxBoot};

/// Answers every connection with a fixed HTTP response.
fn serve(listener: TcpListener) {
    for mut stream in listener.incoming().flatten() {
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello from the host service\n");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut name = "example.com".to_string();
    let mut kernel = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = args.next().ok_or("--name needs a value")?,
            "--kernel" => kernel = Some(args.next().ok_or("--kernel needs a value")?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || serve(listener));

    let policy = NetPolicy::new()
        .allow(&format!("tcp host:{port}"))
        .allow(&format!("tcp {name}:443"));
    let boot = match &kernel {
        Some(path) => LinuxBoot::new(path),
        None => LinuxBoot::host_kernel()?,
    }
    .busybox()
    .hide_xsave(std::env::var("ZONES_LAB").is_ok_and(|v| v == "1"));
    let zone = Zone::builder()
        .name("agent-sandbox")
        .memory_mib(256)
        .linux(boot)
        .net(Net::user().policy(policy))
        .deadline(Duration::from_secs(300))
        .build()?;
    let events = zone.events();

    // busybox's nc and nslookup: the statically linked wget of some distributions crashes
    // without NSS libraries.
    let script = format!(
        "echo '--- the host service (allowed):'; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.2.2 {port} 2>&1
         echo '--- {name} (allowed name):'; nslookup {name} 2>&1 | tail -n 2
         echo '--- 1.1.1.1:80 (no rule):'; echo hi | nc -w 5 1.1.1.1 80 2>&1
         echo '--- evil.example (no rule):'; nslookup evil.example 2>&1 | tail -n 2
         true"
    );
    let out = zone.exec(&Command::new("sh").arg("-c").arg(script))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    println!("--- what the policy denied:");
    // Give the device a moment to flush aggregated denials, then take what came.
    std::thread::sleep(Duration::from_millis(1200));
    for event in events.drain() {
        if let ZoneEvent::Denied(denial) = event {
            println!("{denial}");
        }
    }
    println!("--- network counters:");
    let m = zone.net_metrics()?;
    println!(
        "tx {} frames / {} B, rx {} frames / {} B; flows opened {}, refused {}; \
         DNS queries {}, denied {}, answered {}, failed {}",
        m.tx_packets,
        m.tx_bytes,
        m.rx_packets,
        m.rx_bytes,
        m.flows_opened,
        m.flows_refused,
        m.dns_queries,
        m.dns_denied,
        m.dns_answered,
        m.dns_failed
    );
    Ok(())
}
