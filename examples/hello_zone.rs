//! Creates a micro zone, grants it one host function, runs it, and prints its console and metrics.
//!
//! `cargo run --release --example hello_zone [-- --trace]`
//!
//! With `--trace`, a `tracing` subscriber prints what zones says on stderr: the build's phases
//! and result, the zone's stop, any violation (install it before building zones, so that the
//! events of the zone's own threads are forwarded too).

use std::time::{Duration, Instant};
use zones::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--trace") {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .init();
    }
    let elf = std::fs::read(env!("ZONES_GUEST_HELLO"))?;
    let started = Instant::now();
    let zone = Zone::builder()
        .name("hello")
        .memory_mib(8)
        .micro(GuestProgram::from_elf(&elf)?)
        .host_fn_u64("add", |args| args.iter().sum())
        .deadline(Duration::from_secs(5))
        .build()?;
    let exit = zone.wait();
    let elapsed = started.elapsed();
    print!("{}", zone.console_text());
    println!("zone {} {exit} after {elapsed:?}", zone.name());
    println!("{}", zone.metrics());
    match exit {
        ZoneExit::Exited(0) => Ok(()),
        other => Err(format!("unexpected exit: {other}").into()),
    }
}
