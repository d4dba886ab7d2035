//! Every vCPU checks in with the host (`checkin`, its index); vCPU 0 waits until all have, then
//! exits with the vCPU count.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

static ARRIVED: AtomicU32 = AtomicU32::new(0);

zone_guest::entry!(main, secondary);

fn checkin(vcpu: u32) {
    zone_guest::call_u64("checkin", &[u64::from(vcpu)]).expect("checkin");
    ARRIVED.fetch_add(1, Ordering::SeqCst);
}

fn secondary(vcpu: u32) {
    checkin(vcpu);
}

fn main() -> i32 {
    checkin(0);
    while ARRIVED.load(Ordering::SeqCst) < zone_guest::vcpu_count() {
        core::hint::spin_loop();
    }
    zone_guest::vcpu_count() as i32
}
