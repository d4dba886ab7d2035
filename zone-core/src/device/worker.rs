//! Device threads: one per active device, running rust-vmm's `event-manager` with the device's
//! [`DeviceWorker`], plus a control eventfd through which the zone stops, pauses and resumes it.

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// How long a controller waits for a device thread to acknowledge a pause or resume. Workers never
/// block (non-blocking sockets, bounded file I/O), so this bound is only reached by a device stuck
/// in the host kernel; the controller then goes on rather than hang.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What runs on a device's thread: an event-manager subscriber (it registers its queue eventfds
/// and its own fds in [`init`](MutEventSubscriber::init) and handles them in
/// [`process`](MutEventSubscriber::process)) that also stops moving data while the zone is paused.
pub trait DeviceWorker: MutEventSubscriber + Send {
    /// The zone is being paused: from now until [`resume`](Self::resume), touch no guest memory
    /// and move no data (remember what arrives; act on it after resume). The pause returns to the
    /// caller once this returns. Default: nothing to stop.
    fn pause(&mut self, _ops: &mut EventOps<'_>) {}
    /// The zone resumes: catch up on what arrived while paused.
    fn resume(&mut self, _ops: &mut EventOps<'_>) {}
}

/// The queue processing of a device that only reacts to its queues and to a few fds of its own;
/// [`QueueWorker`] runs it on the device thread.
pub trait QueueHandler: Send {
    /// Queue `index` was notified by the driver.
    fn queue_notified(&mut self, index: usize);
    /// Other file descriptors to wait on (readable), each with a token the handler recognises.
    fn extra_fds(&self) -> Vec<(RawFd, u32)> {
        Vec::new()
    }
    /// `token`'s file descriptor is readable; the handler must consume what made it readable.
    fn extra_ready(&mut self, _token: u32) {}
}

/// Marks the data of an extra fd's events (queues use their index).
const EXTRA: u32 = 1 << 31;

/// Runs a [`QueueHandler`] as a [`DeviceWorker`]: registers the queue eventfds and the handler's
/// fds, dispatches their events, and while paused only records which of them fired.
pub struct QueueWorker<H> {
    handler: H,
    queue_events: Vec<EventFd>,
    extra: Vec<(RawFd, u32)>,
    paused: bool,
    missed_queues: Vec<bool>,
}

impl<H: QueueHandler> QueueWorker<H> {
    /// `handler` notified through `queue_events[i]` for queue `i`.
    pub fn new(handler: H, queue_events: Vec<EventFd>) -> Self {
        let extra = handler.extra_fds();
        let missed_queues = vec![false; queue_events.len()];
        Self {
            handler,
            queue_events,
            extra,
            paused: false,
            missed_queues,
        }
    }

    /// The handler (for tests).
    pub fn handler(&mut self) -> &mut H {
        &mut self.handler
    }

    fn watch_extra(&self, ops: &mut EventOps<'_>, on: bool) {
        for &(fd, token) in &self.extra {
            let events = Events::with_data_raw(fd, EXTRA | token, EventSet::IN);
            // Registering an fd that is valid and not yet registered cannot fail but for lack of
            // memory; the device then just misses that fd's wake-ups.
            let _ = if on {
                ops.add(events)
            } else {
                ops.remove(events)
            };
        }
    }
}

impl<H: QueueHandler> MutEventSubscriber for QueueWorker<H> {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            let _ = ops.add(Events::with_data(evt, i as u32, EventSet::IN));
        }
        self.watch_extra(ops, true);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps<'_>) {
        let data = events.data();
        if data & EXTRA != 0 {
            self.handler.extra_ready(data & !EXTRA);
            return;
        }
        let index = data as usize;
        if let Some(evt) = self.queue_events.get(index) {
            let _ = evt.read();
            if self.paused {
                self.missed_queues[index] = true;
            } else {
                self.handler.queue_notified(index);
            }
        }
    }
}

impl<H: QueueHandler> DeviceWorker for QueueWorker<H> {
    fn pause(&mut self, ops: &mut EventOps<'_>) {
        if !self.paused {
            self.paused = true;
            self.watch_extra(ops, false);
        }
    }

    fn resume(&mut self, ops: &mut EventOps<'_>) {
        if !self.paused {
            return;
        }
        self.paused = false;
        self.watch_extra(ops, true);
        for index in 0..self.missed_queues.len() {
            if std::mem::take(&mut self.missed_queues[index]) {
                self.handler.queue_notified(index);
            }
        }
        // Whatever an extra fd signalled while unwatched is still readable: level-triggered
        // epoll reports it on the next wait.
    }
}

#[derive(Debug, Default)]
struct CtlState {
    stop: bool,
    want_paused: bool,
    paused: bool,
    alive: bool,
}

/// The control side of a device thread, shared with the zone's device registry.
#[derive(Debug)]
pub(crate) struct RunnerCtl {
    pub(crate) name: String,
    state: Mutex<CtlState>,
    cv: Condvar,
    wake: EventFd,
}

impl RunnerCtl {
    fn lock(&self) -> MutexGuard<'_, CtlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self, change: impl FnOnce(&mut CtlState)) {
        change(&mut self.lock());
        let _ = self.wake.write(1);
    }

    /// Asks the thread to pause (or resume) and waits, boundedly, until it did or has ended.
    /// Returns false when the bound was reached.
    pub(crate) fn set_paused(&self, paused: bool) -> bool {
        self.request(|st| st.want_paused = paused);
        let until = Instant::now() + ACK_TIMEOUT;
        let mut st = self.lock();
        while st.alive && st.paused != paused && !st.stop {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// The event-manager subscriber of a device thread: the control eventfd, then the worker.
struct Runner {
    worker: Box<dyn DeviceWorker>,
    ctl: Arc<RunnerCtl>,
    paused: bool,
}

impl Runner {
    /// Brings the worker to the requested pause state.
    fn apply(&mut self, ops: &mut EventOps<'_>) {
        loop {
            let want = self.ctl.lock().want_paused;
            if want == self.paused {
                break;
            }
            if want {
                self.worker.pause(ops);
            } else {
                self.worker.resume(ops);
            }
            self.paused = want;
            let mut st = self.ctl.lock();
            st.paused = want;
            self.ctl.cv.notify_all();
        }
    }
}

impl MutEventSubscriber for Runner {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        let _ = ops.add(Events::new(&self.ctl.wake, EventSet::IN));
        self.worker.init(ops);
        self.apply(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        if events.fd() == self.ctl.wake.as_raw_fd() {
            let _ = self.ctl.wake.read();
            self.apply(ops);
        } else {
            self.worker.process(events, ops);
        }
    }
}

/// A running device thread; stopped and joined on drop.
pub(crate) struct DeviceThread {
    ctl: Arc<RunnerCtl>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts `worker` on a thread named `name`, paused if `paused`. The returned control is what
    /// the zone's registry keeps to pause and resume it.
    pub(crate) fn spawn(
        name: String,
        worker: Box<dyn DeviceWorker>,
        paused: bool,
    ) -> std::io::Result<(Self, Arc<RunnerCtl>)> {
        let ctl = Arc::new(RunnerCtl {
            name: name.clone(),
            state: Mutex::new(CtlState {
                want_paused: paused,
                alive: true,
                ..CtlState::default()
            }),
            cv: Condvar::new(),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        let mut manager = EventManager::<Runner>::new().map_err(std::io::Error::other)?;
        let runner = Runner {
            worker,
            ctl: ctl.clone(),
            paused: false,
        };
        let thread_ctl = ctl.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            manager.add_subscriber(runner);
            while !thread_ctl.lock().stop {
                if manager.run().is_err() {
                    break;
                }
            }
            // Drop the worker (its fds, its host resources) before saying we are gone.
            drop(manager);
            let mut st = thread_ctl.lock();
            st.alive = false;
            thread_ctl.cv.notify_all();
        })?;
        Ok((
            Self {
                ctl: ctl.clone(),
                thread: Some(thread),
            },
            ctl,
        ))
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.ctl.request(|st| st.stop = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counter(Arc<AtomicUsize>);

    impl QueueHandler for Counter {
        fn queue_notified(&mut self, _index: usize) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn queue_worker_runs_notifications_and_holds_them_while_paused() {
        let count = Arc::new(AtomicUsize::new(0));
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let worker = QueueWorker::new(Counter(count.clone()), vec![kick.try_clone().unwrap()]);
        let (thread, ctl) = DeviceThread::spawn("t/dev".into(), Box::new(worker), false).unwrap();
        kick.write(1).unwrap();
        wait_for("a notification", || count.load(Ordering::SeqCst) == 1);
        assert!(ctl.set_paused(true));
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.load(Ordering::SeqCst), 1, "paused: nothing runs");
        assert!(ctl.set_paused(false));
        wait_for("the missed notification", || {
            count.load(Ordering::SeqCst) == 2
        });
        drop(thread);
        assert!(!ctl.lock().alive, "joined on drop");
        assert!(ctl.set_paused(true), "a gone thread does not block pause");
    }

    #[test]
    fn a_thread_started_paused_waits_for_resume() {
        let count = Arc::new(AtomicUsize::new(0));
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let worker = QueueWorker::new(Counter(count.clone()), vec![kick.try_clone().unwrap()]);
        let (_thread, ctl) = DeviceThread::spawn("t/dev".into(), Box::new(worker), true).unwrap();
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.load(Ordering::SeqCst), 0);
        assert!(ctl.set_paused(false));
        wait_for("the notification", || count.load(Ordering::SeqCst) == 1);
    }
}
