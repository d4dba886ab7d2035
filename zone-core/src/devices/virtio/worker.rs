//! The worker thread of an active device: waits on its queues' ioeventfds, its handler's extra
//! file descriptors and a stop eventfd, and calls the handler.

use super::QueueHandler;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Token of the stop eventfd.
const STOP: u64 = u64::MAX;
/// Extra fds get tokens above this; queues use their index.
const EXTRA: u64 = 1 << 32;

/// A running worker; stops (and is joined) on drop.
pub(crate) struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `handler` on a thread named `name`, woken by `notify[i]` for queue `i`.
    pub(crate) fn spawn(
        name: String,
        notify: Vec<EventFd>,
        mut handler: Box<dyn QueueHandler>,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (i, evt) in notify.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        for (fd, token) in handler.extra_fds() {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, EXTRA + u64::from(token)),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut events = vec![EpollEvent::default(); 16];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                for event in &events[..n] {
                    match event.data() {
                        STOP => return,
                        token if token >= EXTRA => handler.extra_ready((token - EXTRA) as u32),
                        queue => {
                            if let Some(evt) = notify.get(queue as usize) {
                                let _ = evt.read();
                            }
                            handler.queue_notified(queue as usize);
                        }
                    }
                }
            }
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
