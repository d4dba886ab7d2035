//! Whether a zone's guest is at work: how long its vCPU threads ran, or were ready to run and
//! waited for a host CPU, by the kernel's scheduler statistics (`/proc/self/task/TID/schedstat`:
//! time on a CPU, time waiting on a run queue).
//!
//! A wait for the guest's agent uses it to tell two silences apart. An agent that says nothing
//! while its guest idles (the vCPUs halted, their threads asleep in KVM_RUN) is lost. One that
//! says nothing while its guest works, or while the host is too loaded to run the guest (many
//! zones on few CPUs, nested or emulated hosts), is slow: it gets more time. A kernel without
//! scheduler statistics (`CONFIG_SCHED_INFO` off) reports zeros: every guest then looks idle and
//! only the wall clock counts, as before.

use super::kick::Kicker;
use std::time::Instant;

/// A sample of a zone's vCPU threads' scheduler times, to compare with a later one.
#[derive(Debug)]
pub(crate) struct Activity {
    at: Instant,
    /// Per vCPU: its thread's time on a CPU plus its time waiting for one, in nanoseconds (`None`:
    /// no thread registered, or no statistics).
    demand: Vec<Option<u64>>,
}

impl Activity {
    /// Samples the threads of `vcpus` now.
    pub(crate) fn sample(vcpus: &[Kicker]) -> Self {
        Self {
            at: Instant::now(),
            demand: vcpus.iter().map(|k| k.tid().and_then(demand_ns)).collect(),
        }
    }

    /// Whether since the sample some vCPU thread ran, or waited to run, for at least half of the
    /// time that passed: the guest worked (or the host kept it from working), it did not idle.
    /// Then samples again, for the next question.
    pub(crate) fn busy_since(&mut self, vcpus: &[Kicker]) -> bool {
        let now = Self::sample(vcpus);
        let window = now.at.duration_since(self.at).as_nanos();
        let busiest = self
            .demand
            .iter()
            .zip(&now.demand)
            .filter_map(|(then, now)| Some(now.as_ref()?.saturating_sub((*then)?)))
            .max()
            .unwrap_or(0);
        *self = now;
        window > 0 && u128::from(busiest) * 2 >= window
    }
}

/// A thread's time on a CPU plus its time waiting on a run queue, in nanoseconds.
fn demand_ns(tid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    parse_schedstat(&stat)
}

/// The first two fields of a `schedstat` line ("RUN_NS WAIT_NS SLICES").
fn parse_schedstat(line: &str) -> Option<u64> {
    let mut fields = line.split_ascii_whitespace().map(str::parse::<u64>);
    let run = fields.next()?.ok()?;
    let wait = fields.next()?.ok()?;
    run.checked_add(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn parses_the_first_two_fields() {
        assert_eq!(
            parse_schedstat("408161284 196329376 909\n"),
            Some(604490660)
        );
        assert_eq!(parse_schedstat("0 0 0\n"), Some(0));
        assert_eq!(parse_schedstat("12\n"), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("18446744073709551615 1 0"), None);
    }

    /// Whether this kernel keeps scheduler statistics: this thread has run, so its line is not
    /// all zeros where it does.
    fn statistics_kept() -> bool {
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        demand_ns(me).is_some_and(|d| d > 0)
    }

    /// Starts a thread registered in a one-vCPU `Kicker` list that spins (`spin`) or sleeps in
    /// 20 ms steps, samples, waits `for_`, and says whether the thread looked busy.
    fn looks_busy(spin: bool, for_: Duration) -> bool {
        let kickers = Arc::new(vec![Kicker::default()]);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (kickers, stop) = (kickers.clone(), stop.clone());
            std::thread::spawn(move || {
                kickers[0].register_current();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if spin {
                        std::hint::spin_loop();
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                kickers[0].unregister();
            })
        };
        ready_rx.recv().unwrap();
        let mut activity = Activity::sample(&kickers);
        std::thread::sleep(for_);
        let busy = activity.busy_since(&kickers);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        busy
    }

    #[test]
    fn a_spinning_vcpu_thread_is_busy_and_a_sleeping_one_is_not() {
        if !statistics_kept() {
            eprintln!("SKIPPED: this kernel keeps no scheduler statistics (schedstat is zeros)");
            return;
        }
        // A spinning thread is on a CPU or waiting for one all the time, however loaded the
        // machine is; a sleeping one is neither for nearly all of it.
        assert!(looks_busy(true, Duration::from_millis(300)));
        assert!(!looks_busy(false, Duration::from_millis(300)));
    }

    #[test]
    fn no_registered_thread_is_idle() {
        let kickers = vec![Kicker::default(), Kicker::default()];
        let mut activity = Activity::sample(&kickers);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!activity.busy_since(&kickers));
    }
}
