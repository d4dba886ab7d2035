//! Publishes the address of a counter (host function `counter_at`), then increments it forever
//! without any further exit: only kill, a deadline or pause can stop it.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

zone_guest::entry!(main);

fn main() -> i32 {
    let _ = zone_guest::call_u64("counter_at", &[COUNTER.as_ptr() as u64]);
    loop {
        COUNTER.fetch_add(1, Ordering::Relaxed);
    }
}
