//! Creates a micro zone, grants it one host function, runs it, and prints its console and metrics.
//!
//! `cargo run --release --example hello_zone`

use std::time::{Duration, Instant};
use zones::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
