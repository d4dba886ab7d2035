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

#[derive(Default)]
struct CtlState {
    /// The zone is gone: the thread ends.
    stop: bool,
    /// The driver reset the device: the current worker ends.
    deactivate: bool,
    want_paused: bool,
    paused: bool,
    /// A worker runs (between activation and reset).
    active: bool,
    /// The thread runs.
    alive: bool,
    /// The next worker, handed over by an activation.
    next: Option<Box<dyn DeviceWorker>>,
}

impl std::fmt::Debug for CtlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtlState")
            .field("active", &self.active)
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
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
        self.cv.notify_all();
    }

    /// Waits, boundedly, until `done` holds or the thread has ended. False when the bound was
    /// reached.
    fn wait_for(&self, done: impl Fn(&CtlState) -> bool) -> bool {
        let until = Instant::now() + ACK_TIMEOUT;
        let mut st = self.lock();
        while st.alive && !done(&st) {
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

    /// Asks the worker to pause (or resume) and waits until it did; a thread with no worker has
    /// nothing to pause (its next worker starts in the state asked for). False when the bound
    /// was reached.
    pub(crate) fn set_paused(&self, paused: bool) -> bool {
        self.request(|st| st.want_paused = paused);
        self.wait_for(|st| !st.active || st.paused == paused || st.stop)
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

/// A device's thread, from the zone's build to its end: it waits for an activation, runs that
/// worker on a fresh event manager until the driver resets the device, and waits again. It is
/// started on the builder's thread (not on the vCPU thread whose register write activates the
/// device), so that it carries only its own seccomp filter. Stopped and joined on drop.
pub(crate) struct DeviceThread {
    ctl: Arc<RunnerCtl>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts the thread `name`; `setup` runs first on it (its seccomp filter) and says whether
    /// the thread may serve (if not, it takes no worker).
    pub(crate) fn spawn(
        name: String,
        setup: impl FnOnce() -> bool + Send + 'static,
    ) -> std::io::Result<Self> {
        let ctl = Arc::new(RunnerCtl {
            name: name.clone(),
            state: Mutex::new(CtlState {
                alive: true,
                ..CtlState::default()
            }),
            cv: Condvar::new(),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        let thread_ctl = ctl.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            if setup() {
                serve(&thread_ctl);
            }
            let mut st = thread_ctl.lock();
            st.alive = false;
            st.active = false;
            thread_ctl.cv.notify_all();
        })?;
        Ok(Self {
            ctl,
            thread: Some(thread),
        })
    }

    /// The control the zone's registry keeps to pause and resume the thread's workers.
    pub(crate) fn ctl(&self) -> Arc<RunnerCtl> {
        self.ctl.clone()
    }

    /// Hands `worker` to the thread (the driver set DRIVER_OK). Returns at once.
    pub(crate) fn activate(&self, worker: Box<dyn DeviceWorker>) {
        self.ctl.request(|st| {
            st.next = Some(worker);
            st.deactivate = false;
        });
    }

    /// Ends the current worker (the driver reset the device) and waits, boundedly, until it
    /// is dropped.
    pub(crate) fn deactivate(&self) {
        self.ctl.request(|st| {
            st.next = None;
            st.deactivate = true;
        });
        self.ctl.wait_for(|st| !st.active);
    }
}

/// The thread's life: a worker at a time.
fn serve(ctl: &Arc<RunnerCtl>) {
    loop {
        let worker = {
            let mut st = ctl.lock();
            loop {
                if st.stop {
                    return;
                }
                if let Some(worker) = st.next.take() {
                    st.deactivate = false;
                    st.active = true;
                    st.paused = false;
                    break worker;
                }
                st = ctl.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Ok(mut manager) = EventManager::<Runner>::new() else {
            ctl.lock().active = false;
            continue;
        };
        manager.add_subscriber(Runner {
            worker,
            ctl: ctl.clone(),
            paused: false,
        });
        loop {
            {
                let st = ctl.lock();
                if st.stop || st.deactivate {
                    break;
                }
            }
            if manager.run().is_err() {
                break;
            }
        }
        // Drop the worker (its fds, its host resources) before saying it is gone.
        drop(manager);
        let mut st = ctl.lock();
        st.active = false;
        st.paused = false;
        ctl.cv.notify_all();
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
        let thread = DeviceThread::spawn("t/dev".into(), || true).unwrap();
        let ctl = thread.ctl();
        thread.activate(Box::new(worker));
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
        thread.deactivate();
        assert!(!ctl.lock().active, "the worker is gone");
        assert!(
            ctl.set_paused(true),
            "a thread without a worker does not block pause"
        );
        drop(thread);
        assert!(!ctl.lock().alive, "joined on drop");
    }

    #[test]
    fn a_worker_activated_while_paused_waits_for_resume() {
        let count = Arc::new(AtomicUsize::new(0));
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let worker = QueueWorker::new(Counter(count.clone()), vec![kick.try_clone().unwrap()]);
        let thread = DeviceThread::spawn("t/dev".into(), || true).unwrap();
        let ctl = thread.ctl();
        assert!(ctl.set_paused(true));
        thread.activate(Box::new(worker));
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(count.load(Ordering::SeqCst), 0);
        assert!(ctl.set_paused(false));
        wait_for("the notification", || count.load(Ordering::SeqCst) == 1);
    }

    struct Opener(Arc<Mutex<Vec<Option<i32>>>>);

    impl QueueHandler for Opener {
        fn queue_notified(&mut self, _index: usize) {
            let errno = std::fs::File::open("/etc/hostname")
                .err()
                .and_then(|e| e.raw_os_error());
            self.0.lock().unwrap().push(errno);
        }
    }

    #[derive(Default)]
    struct Refusals(Mutex<Vec<(String, i64)>>);

    impl crate::seccomp::RefusalSink for Refusals {
        fn refused(&self, thread: &str, nr: i64, _args: &[u64; 6]) {
            self.0.lock().unwrap().push((thread.to_string(), nr));
        }
    }

    #[test]
    fn a_worker_runs_under_its_threads_device_filter() {
        use crate::seccomp::{Seccomp, ThreadFilter, ThreadKind};
        crate::seccomp::start_supervisor();
        let sink = Arc::new(Refusals::default());
        let weak: std::sync::Weak<dyn crate::seccomp::RefusalSink> = Arc::downgrade(&sink) as _;
        let filter = ThreadFilter {
            mode: Seccomp::Enforce,
            kind: ThreadKind::Device,
            extra: Vec::new(),
            thread: "device t0".into(),
            sink: Some(weak),
        };
        let thread = DeviceThread::spawn("t/dev".into(), move || {
            crate::seccomp::apply(filter).is_ok()
        })
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let worker = QueueWorker::new(Opener(seen.clone()), vec![kick.try_clone().unwrap()]);
        thread.activate(Box::new(worker));
        kick.write(1).unwrap();
        wait_for("the worker's open", || !seen.lock().unwrap().is_empty());
        assert_eq!(
            *seen.lock().unwrap(),
            [Some(libc::EPERM)],
            "open refused on the device thread"
        );
        let refused = sink.0.lock().unwrap().clone();
        assert_eq!(refused, [("device t0".to_string(), libc::SYS_openat)]);
        assert!(
            std::fs::File::open("/etc/hostname").is_ok(),
            "the test's own thread is not filtered"
        );
    }
}
