//! One process-wide timer thread for zone deadlines, started on first use. Zones register
//! `(instant, weak target)`; the thread fires each target when its instant passes. A zone that is
//! gone by then is skipped, and a target checks that the deadline it is told about is still its
//! current one (deadlines can be moved).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock, Weak};
use std::time::Instant;

/// Something with a deadline.
pub(crate) trait DeadlineTarget: Send + Sync {
    /// Called on the timer thread once `at` has passed.
    fn deadline_reached(&self, at: Instant);
}

struct Entry {
    at: Instant,
    seq: u64,
    target: Weak<dyn DeadlineTarget>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Service {
    queue: Mutex<(BinaryHeap<Entry>, u64)>,
    cv: Condvar,
}

fn service() -> &'static Service {
    static SERVICE: OnceLock<&'static Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let svc: &'static Service = Box::leak(Box::new(Service {
            queue: Mutex::new((BinaryHeap::new(), 0)),
            cv: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("zones-deadlines".into())
            .spawn(move || {
                // Process-wide, it belongs to no zone: always filtered, refusals counted
                // process-wide (crate::seccomp::refused_syscalls).
                let _ = crate::seccomp::apply(crate::seccomp::ThreadFilter {
                    mode: crate::seccomp::Seccomp::Enforce,
                    kind: crate::seccomp::ThreadKind::Deadlines,
                    extra: Vec::new(),
                    thread: "deadline service".into(),
                    sink: None,
                });
                svc.run()
            })
            .expect("spawning the zones deadline thread");
        svc
    })
}

/// Starts the service (from a zone's builder: a thread without a filter, so the service's own
/// filter is the only one it carries).
pub(crate) fn start() {
    service();
}

impl Service {
    fn run(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            match q.0.peek().map(|e| e.at) {
                None => q = self.cv.wait(q).unwrap_or_else(|e| e.into_inner()),
                Some(at) if at > now => {
                    q = self
                        .cv
                        .wait_timeout(q, at - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                Some(_) => {
                    let Some(entry) = q.0.pop() else { continue };
                    drop(q);
                    if let Some(target) = entry.target.upgrade() {
                        target.deadline_reached(entry.at);
                    }
                    q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

/// Asks for `target.deadline_reached(at)` once `at` has passed.
pub(crate) fn schedule(at: Instant, target: Weak<dyn DeadlineTarget>) {
    let svc = service();
    let mut q = svc.queue.lock().unwrap_or_else(|e| e.into_inner());
    q.1 += 1;
    let seq = q.1;
    q.0.push(Entry { at, seq, target });
    svc.cv.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc::{Sender, channel};
    use std::time::Duration;

    struct Probe(Mutex<Sender<Instant>>);
    impl DeadlineTarget for Probe {
        fn deadline_reached(&self, at: Instant) {
            let _ = self.0.lock().unwrap().send(at);
        }
    }

    #[test]
    fn fires_in_order_and_skips_dropped_targets() {
        let (tx, rx) = channel();
        let probe: Arc<dyn DeadlineTarget> = Arc::new(Probe(Mutex::new(tx)));
        let gone: Arc<dyn DeadlineTarget> = Arc::new(Probe(Mutex::new(channel().0)));
        let t0 = Instant::now();
        let (a, b) = (
            t0 + Duration::from_millis(30),
            t0 + Duration::from_millis(10),
        );
        schedule(a, Arc::downgrade(&probe));
        schedule(b, Arc::downgrade(&probe));
        schedule(t0 + Duration::from_millis(5), Arc::downgrade(&gone));
        drop(gone);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), a);
        assert!(Instant::now() >= a);
    }
}
