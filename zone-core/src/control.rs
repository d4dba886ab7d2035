//! The run state of a zone shared by its vCPU threads and its controllers: running, paused,
//! stopping, ended. Controllers change it and kick vCPUs; vCPU threads check it between runs.

use crate::exit::ZoneExit;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const STOP: u32 = 1;
const PAUSE: u32 = 2;

/// A zone's coarse state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneState {
    /// vCPUs are running (or about to).
    Running,
    /// Paused: no vCPU runs guest code and no device moves data until resumed.
    Paused,
    /// Quarantined: paused, its devices cut off, until [`release`](crate::ZoneHandle::release)
    /// or a kill.
    Quarantined,
    /// Stopping: an exit was decided and vCPUs are leaving.
    Stopping(ZoneExit),
    /// Ended: every vCPU has left.
    Ended(ZoneExit),
}

/// Why a control request could not be carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The zone already stopped.
    #[error("zone {zone} has already stopped ({exit})")]
    Ended {
        /// The zone.
        zone: String,
        /// How it stopped.
        exit: ZoneExit,
    },
    /// The zone is quarantined: only `release()` (or a kill) lets it run again.
    #[error("zone {zone} is quarantined; call release() to let it run again, or kill() it")]
    Quarantined {
        /// The zone.
        zone: String,
    },
}

/// Why a control request was refused by the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Ended(ZoneExit),
    Quarantined,
}

/// How a wait for parked vCPUs ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parked {
    /// Every vCPU is parked (or finished).
    All,
    /// A later resume came first: the zone runs again.
    Overtaken,
}

#[derive(Debug)]
struct State {
    paused: bool,
    quarantined: bool,
    /// Counts pause and resume requests, so that a pause overtaken by a resume knows it.
    epoch: u64,
    exit: Option<ZoneExit>,
    vcpus: u32,
    /// vCPUs parked at a checkpoint, or inside a pause they called themselves (a host function
    /// that pauses its own zone): neither runs guest code.
    parked: u32,
    finished: u32,
    /// Tasks waiting for the zone's end ([`Control::poll_wait`]).
    end_wakers: crate::wakers::Wakers,
}

/// What a vCPU should do at a checkpoint.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Run,
    Stop,
}

#[derive(Debug)]
pub(crate) struct Control {
    flags: AtomicU32,
    state: Mutex<State>,
    cv: Condvar,
}

impl Control {
    pub(crate) fn new(vcpus: u32, start_paused: bool) -> Self {
        Self {
            flags: AtomicU32::new(if start_paused { PAUSE } else { 0 }),
            state: Mutex::new(State {
                paused: start_paused,
                quarantined: false,
                epoch: 0,
                exit: None,
                vcpus,
                parked: 0,
                finished: 0,
                end_wakers: Default::default(),
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fast check a vCPU makes before every KVM_RUN.
    pub(crate) fn pending(&self) -> bool {
        self.flags.load(Ordering::SeqCst) != 0
    }

    /// Parks while paused; says whether to run or stop.
    pub(crate) fn checkpoint(&self) -> Step {
        let mut st = self.lock();
        loop {
            if st.exit.is_some() {
                return Step::Stop;
            }
            if !st.paused {
                return Step::Run;
            }
            st.parked += 1;
            self.cv.notify_all();
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            st.parked -= 1;
        }
    }

    /// Records that a vCPU thread is done. When it was the last one, calls `on_end` with the
    /// zone's exit before any waiter can observe the end, and returns true.
    pub(crate) fn finish(&self, on_end: impl FnOnce(&ZoneExit)) -> bool {
        let mut st = self.lock();
        st.finished += 1;
        let last = st.finished == st.vcpus;
        if last {
            // Every vCPU went idle without an exit request: a clean end.
            let exit = st.exit.get_or_insert(ZoneExit::Exited(0));
            on_end(exit);
        }
        let wakers = if last {
            st.end_wakers.take()
        } else {
            Default::default()
        };
        drop(st);
        self.cv.notify_all();
        wakers.wake();
        last
    }

    /// Decides the zone's exit (first caller wins). Returns whether this call decided it; the
    /// caller then kicks every vCPU.
    pub(crate) fn stop(&self, exit: ZoneExit) -> bool {
        let mut st = self.lock();
        if st.exit.is_some() || st.finished == st.vcpus {
            return false;
        }
        st.exit = Some(exit);
        self.flags.fetch_or(STOP, Ordering::SeqCst);
        self.cv.notify_all();
        true
    }

    /// Requests a pause (`quarantine`: and quarantines the zone); the caller kicks every vCPU,
    /// then calls [`Control::wait_parked`] with the returned epoch. Returns whether the zone was
    /// running.
    pub(crate) fn request_pause(&self, quarantine: bool) -> Result<(bool, u64), ZoneExit> {
        let mut st = self.lock();
        if let Some(exit) = &st.exit {
            return Err(exit.clone());
        }
        let was = st.paused;
        st.paused = true;
        st.quarantined |= quarantine;
        st.epoch += 1;
        self.flags.fetch_or(PAUSE, Ordering::SeqCst);
        Ok((!was, st.epoch))
    }

    /// Waits until every vCPU is parked or finished, or until a resume overtakes the pause of
    /// `epoch` (a pause overtaken by another pause goes on waiting). `own_vcpu`: the caller is a
    /// vCPU thread of this zone (a host function); it counts as parked while it waits, so that
    /// vCPUs pausing their own zone at once never wait for each other.
    pub(crate) fn wait_parked(&self, epoch: u64, own_vcpu: bool) -> Result<Parked, ZoneExit> {
        let mut st = self.lock();
        if own_vcpu {
            st.parked += 1;
            self.cv.notify_all();
        }
        let outcome = loop {
            if let Some(exit) = &st.exit {
                break Err(exit.clone());
            }
            if st.epoch != epoch && !st.paused {
                break Ok(Parked::Overtaken);
            }
            if st.parked + st.finished >= st.vcpus {
                break Ok(Parked::All);
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        if own_vcpu {
            st.parked -= 1;
        }
        outcome
    }

    /// Resumes a paused zone. Returns whether it was paused. Refused while quarantined.
    pub(crate) fn resume(&self) -> Result<bool, Refused> {
        self.unpause(false)
    }

    /// Ends a quarantine and resumes. Returns whether the zone was quarantined.
    pub(crate) fn release(&self) -> Result<bool, Refused> {
        self.unpause(true)
    }

    fn unpause(&self, release: bool) -> Result<bool, Refused> {
        let mut st = self.lock();
        if let Some(exit) = &st.exit {
            return Err(Refused::Ended(exit.clone()));
        }
        if st.quarantined && !release {
            return Err(Refused::Quarantined);
        }
        let was = if release { st.quarantined } else { st.paused };
        if release && !st.quarantined {
            return Ok(false);
        }
        st.quarantined = false;
        st.paused = false;
        st.epoch += 1;
        self.flags.fetch_and(!PAUSE, Ordering::SeqCst);
        self.cv.notify_all();
        Ok(was)
    }

    /// Whether the zone is meant to be paused now (devices follow this).
    pub(crate) fn paused(&self) -> bool {
        self.lock().paused
    }

    /// Waits for the zone to end, up to `deadline`.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<ZoneExit> {
        let mut st = self.lock();
        loop {
            if st.finished == st.vcpus
                && let Some(exit) = &st.exit
            {
                return Some(exit.clone());
            }
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(at) => {
                    let left = at
                        .checked_duration_since(Instant::now())
                        .filter(|d| !d.is_zero())?;
                    self.cv
                        .wait_timeout(st, left.min(Duration::from_secs(3600)))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// [`Control::wait`] for a task: ready with the exit once every vCPU has finished;
    /// otherwise the task is woken when the last one does.
    pub(crate) fn poll_wait(&self, cx: &std::task::Context<'_>) -> std::task::Poll<ZoneExit> {
        let mut st = self.lock();
        if st.finished == st.vcpus
            && let Some(exit) = &st.exit
        {
            return std::task::Poll::Ready(exit.clone());
        }
        st.end_wakers.register(cx);
        std::task::Poll::Pending
    }

    pub(crate) fn state(&self) -> ZoneState {
        let st = self.lock();
        match &st.exit {
            Some(exit) if st.finished == st.vcpus => ZoneState::Ended(exit.clone()),
            Some(exit) => ZoneState::Stopping(exit.clone()),
            None if st.quarantined => ZoneState::Quarantined,
            None if st.paused => ZoneState::Paused,
            None => ZoneState::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_stop_wins_and_wait_returns_after_all_vcpus_finish() {
        let c = Control::new(2, false);
        assert!(c.stop(ZoneExit::Killed));
        assert!(!c.stop(ZoneExit::DeadlineExceeded));
        assert_eq!(c.checkpoint(), Step::Stop);
        assert_eq!(
            c.wait(Some(Instant::now() + Duration::from_millis(5))),
            None
        );
        assert!(!c.finish(|_| panic!("not the last vCPU")));
        assert_eq!(c.state(), ZoneState::Stopping(ZoneExit::Killed));
        let mut seen = None;
        assert!(c.finish(|e| seen = Some(e.clone())));
        assert_eq!(seen, Some(ZoneExit::Killed));
        assert_eq!(c.wait(None), Some(ZoneExit::Killed));
        assert_eq!(c.state(), ZoneState::Ended(ZoneExit::Killed));
    }

    #[test]
    fn all_vcpus_idle_is_a_clean_exit() {
        let c = Control::new(1, false);
        let mut seen = None;
        assert!(c.finish(|e| seen = Some(e.clone())));
        assert_eq!(seen, Some(ZoneExit::Exited(0)));
        assert!(!c.stop(ZoneExit::Killed), "nothing to stop once ended");
    }

    #[test]
    fn pause_parks_vcpus_until_resume() {
        let c = Arc::new(Control::new(1, false));
        let (newly, epoch) = c.request_pause(false).unwrap();
        assert!(newly);
        let vcpu = {
            let c = c.clone();
            std::thread::spawn(move || c.checkpoint())
        };
        assert_eq!(c.wait_parked(epoch, false), Ok(Parked::All));
        assert_eq!(c.state(), ZoneState::Paused);
        assert_eq!(c.resume(), Ok(true));
        assert_eq!(vcpu.join().unwrap(), Step::Run);
        assert_eq!(c.resume(), Ok(false));
    }

    #[test]
    fn stop_releases_parked_vcpus_and_pause_after_stop_fails() {
        let c = Arc::new(Control::new(1, true));
        let vcpu = {
            let c = c.clone();
            std::thread::spawn(move || c.checkpoint())
        };
        assert_eq!(c.wait_parked(0, false), Ok(Parked::All));
        c.stop(ZoneExit::Killed);
        assert_eq!(vcpu.join().unwrap(), Step::Stop);
        assert_eq!(c.request_pause(false), Err(ZoneExit::Killed));
        assert_eq!(c.resume(), Err(Refused::Ended(ZoneExit::Killed)));
    }

    /// A resume that comes while a pause waits for vCPUs (one is in a host function) ends that
    /// wait: the pause returns, overtaken, instead of waiting for a park that never comes.
    #[test]
    fn a_racing_resume_ends_a_pending_pause() {
        let c = Arc::new(Control::new(1, false));
        let (_, epoch) = c.request_pause(false).unwrap();
        let pauser = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_parked(epoch, false))
        };
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(c.resume(), Ok(true));
        assert_eq!(pauser.join().unwrap(), Ok(Parked::Overtaken));
        assert_eq!(c.state(), ZoneState::Running);
        // A pause overtaken by another pause still waits for the vCPUs.
        let (_, first) = c.request_pause(false).unwrap();
        let (newly, _) = c.request_pause(false).unwrap();
        assert!(!newly);
        let vcpu = {
            let c = c.clone();
            std::thread::spawn(move || c.checkpoint())
        };
        assert_eq!(c.wait_parked(first, false), Ok(Parked::All));
        c.resume().unwrap();
        assert_eq!(vcpu.join().unwrap(), Step::Run);
    }

    /// Two (four) vCPUs pausing their own zone from host functions at once do not wait for each
    /// other: each pause returns, each vCPU then parks at its next checkpoint.
    #[test]
    fn vcpus_pausing_their_own_zone_at_once_do_not_deadlock() {
        for vcpus in [2u32, 4] {
            let c = Arc::new(Control::new(vcpus, false));
            let threads: Vec<_> = (0..vcpus)
                .map(|_| {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        let (_, epoch) = c.request_pause(false).unwrap();
                        let paused = c.wait_parked(epoch, true);
                        // The host function returns; the vCPU reaches its checkpoint.
                        (paused, c.checkpoint())
                    })
                })
                .collect();
            let (_, epoch) = c.request_pause(false).unwrap();
            assert_eq!(c.wait_parked(epoch, false), Ok(Parked::All));
            assert_eq!(c.state(), ZoneState::Paused);
            c.resume().unwrap();
            for t in threads {
                let (paused, step) = t.join().unwrap();
                // All, or overtaken by the resume above if it came before this pause looked.
                assert!(paused.is_ok(), "{vcpus} vCPUs: {paused:?}");
                assert_eq!(step, Step::Run);
            }
        }
    }

    #[test]
    fn quarantine_refuses_resume_until_released() {
        let c = Control::new(1, false);
        c.request_pause(true).unwrap();
        assert_eq!(c.state(), ZoneState::Quarantined);
        assert_eq!(c.resume(), Err(Refused::Quarantined));
        assert!(c.paused());
        assert_eq!(c.release(), Ok(true));
        assert_eq!(c.state(), ZoneState::Running);
        assert_eq!(c.release(), Ok(false), "nothing to release");
    }
}
