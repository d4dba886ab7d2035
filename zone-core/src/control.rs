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
    /// Paused: no vCPU runs guest code until resumed.
    Paused,
    /// Stopping: an exit was decided and vCPUs are leaving.
    Stopping(ZoneExit),
    /// Ended: every vCPU has left.
    Ended(ZoneExit),
}

/// Why a control request could not be carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The zone already stopped.
    #[error("zone {zone} has already stopped ({exit})")]
    Ended {
        /// The zone.
        zone: String,
        /// How it stopped.
        exit: ZoneExit,
    },
}

#[derive(Debug)]
struct State {
    paused: bool,
    exit: Option<ZoneExit>,
    vcpus: u32,
    parked: u32,
    finished: u32,
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
                exit: None,
                vcpus,
                parked: 0,
                finished: 0,
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
        self.cv.notify_all();
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

    /// Requests a pause; the caller kicks every vCPU, then calls [`Control::wait_parked`].
    pub(crate) fn request_pause(&self) -> Result<bool, ZoneExit> {
        let mut st = self.lock();
        if let Some(exit) = &st.exit {
            return Err(exit.clone());
        }
        let was = st.paused;
        st.paused = true;
        self.flags.fetch_or(PAUSE, Ordering::SeqCst);
        Ok(!was)
    }

    /// Waits until every vCPU (but `except` of them, the caller's own) is parked or finished.
    pub(crate) fn wait_parked(&self, except: u32) -> Result<(), ZoneExit> {
        let mut st = self.lock();
        loop {
            if let Some(exit) = &st.exit {
                return Err(exit.clone());
            }
            if st.parked + st.finished + except >= st.vcpus {
                return Ok(());
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Resumes a paused zone. Returns whether it was paused.
    pub(crate) fn resume(&self) -> Result<bool, ZoneExit> {
        let mut st = self.lock();
        if let Some(exit) = &st.exit {
            return Err(exit.clone());
        }
        let was = st.paused;
        st.paused = false;
        self.flags.fetch_and(!PAUSE, Ordering::SeqCst);
        self.cv.notify_all();
        Ok(was)
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

    pub(crate) fn state(&self) -> ZoneState {
        let st = self.lock();
        match &st.exit {
            Some(exit) if st.finished == st.vcpus => ZoneState::Ended(exit.clone()),
            Some(exit) => ZoneState::Stopping(exit.clone()),
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
        assert_eq!(c.request_pause(), Ok(true));
        let vcpu = {
            let c = c.clone();
            std::thread::spawn(move || c.checkpoint())
        };
        c.wait_parked(0).unwrap();
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
        c.wait_parked(0).unwrap();
        c.stop(ZoneExit::Killed);
        assert_eq!(vcpu.join().unwrap(), Step::Stop);
        assert_eq!(c.request_pause(), Err(ZoneExit::Killed));
        assert_eq!(c.resume(), Err(ZoneExit::Killed));
    }
}
