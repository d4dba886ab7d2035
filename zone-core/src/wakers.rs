//! Task wakers kept beside a `Condvar`, so that async callers wait on the same state changes as
//! blocking ones: whoever notifies the condition variable also wakes the tasks registered here.
//! No thread waits on behalf of a task.

use std::task::{Context, Waker};

/// The tasks waiting on one condition. A task registers again at every poll that finds the
/// condition false; each notification wakes and forgets every registered task, so the list holds
/// at most one entry per task that polled since the last notification.
#[derive(Debug, Default)]
pub(crate) struct Wakers(Vec<Waker>);

impl Wakers {
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Registers the task polling with `cx`.
    pub(crate) fn register(&mut self, cx: &Context<'_>) {
        let waker = cx.waker();
        if !self.0.iter().any(|w| w.will_wake(waker)) {
            self.0.push(waker.clone());
        }
    }

    /// Takes the registered tasks, to wake them once the lock that guards the condition is
    /// released.
    pub(crate) fn take(&mut self) -> Wakers {
        std::mem::take(self)
    }

    /// Adds `other`'s tasks to these.
    pub(crate) fn append(&mut self, mut other: Wakers) {
        self.0.append(&mut other.0);
    }

    /// Wakes every task.
    pub(crate) fn wake(self) {
        for w in self.0 {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_task_is_registered_once_and_woken_once() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let mut wakers = Wakers::default();
        wakers.register(&cx);
        wakers.register(&cx);
        assert_eq!(wakers.0.len(), 1);
        wakers.take().wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(wakers.0.is_empty(), "woken tasks are forgotten");
    }
}
