//! A device's face to the zone's controllers ([`DeviceControl`]) and the zone's registry of its
//! devices and device threads.

use super::worker::RunnerCtl;
use crate::exit::ZoneExit;
use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// What the zone's controllers (any thread) can ask of a device. Every method has a default, so
/// a device implements only what it has.
pub trait DeviceControl: Send + Sync + 'static {
    /// Counters shown in [`ZoneMetrics::devices`](crate::ZoneMetrics) under the device's name.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The zone is being quarantined (its vCPUs and device threads are already paused): cut
    /// what connects the guest to the outside and return what the device knows at that moment.
    fn quarantine(&self) -> Option<DeviceEvidence> {
        None
    }
    /// The quarantine was released: undo what [`quarantine`](Self::quarantine) cut.
    fn release(&self) {}
    /// The zone was paused (`true`: every vCPU is parked and every device thread has
    /// acknowledged) or resumes (`false`, before the vCPUs run again). A device that moves data
    /// on its own without a thread of zones' (a passed-through function's DMA) stops it here.
    /// May come more than once with the same value.
    fn set_paused(&self, _paused: bool) {}
    /// The zone stopped; every vCPU has left the guest. Fail whatever still waits on the guest.
    fn stopped(&self, _exit: &ZoneExit) {}
}

/// A device's counters in a metrics snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// The device's name in its zone (`net0`, `vsock`, `blk0`, ...).
    pub device: String,
    /// Its counters, in the device's order.
    pub counters: Vec<(&'static str, u64)>,
}

impl DeviceCounters {
    /// The counter called `name`, if the device has one.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters.iter().find(|(n, _)| *n == name).map(|c| c.1)
    }
}

/// What a device reports when its zone is quarantined.
#[derive(Clone)]
pub struct DeviceEvidence {
    /// The device's name in its zone.
    pub device: String,
    /// Human-readable lines (e.g. one per open network flow at the moment of the cut).
    pub lines: Vec<String>,
    /// The same, typed, for the device's own crate to hand out (downcast it with
    /// [`DeviceEvidence::detail`]).
    pub detail: Option<Arc<dyn Any + Send + Sync>>,
}

impl DeviceEvidence {
    /// The typed detail, if it is a `T`.
    pub fn detail<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.detail.as_deref()?.downcast_ref()
    }
}

impl std::fmt::Debug for DeviceEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEvidence")
            .field("device", &self.device)
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

/// One device of a zone.
struct Entry {
    name: String,
    control: Arc<dyn DeviceControl>,
    any: Arc<dyn Any + Send + Sync>,
}

#[derive(Default)]
struct Threads {
    paused: bool,
    runners: Vec<Weak<RunnerCtl>>,
}

/// The devices of a zone and their threads: what pause, quarantine, metrics and typed look-ups
/// go through.
#[derive(Default)]
pub(crate) struct Devices {
    entries: Mutex<Vec<Entry>>,
    threads: Mutex<Threads>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Devices {
    /// Registers device `name` with its control.
    pub(crate) fn register<T: DeviceControl>(&self, name: &str, control: Arc<T>) {
        lock(&self.entries).push(Entry {
            name: name.to_string(),
            control: control.clone(),
            any: control,
        });
    }

    /// Registers an erased control (from an attachment).
    pub(crate) fn register_dyn(
        &self,
        name: &str,
        control: Arc<dyn DeviceControl>,
        any: Arc<dyn Any + Send + Sync>,
    ) {
        lock(&self.entries).push(Entry {
            name: name.to_string(),
            control,
            any,
        });
    }

    /// The first device whose control is a `T`.
    pub(crate) fn find<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        lock(&self.entries)
            .iter()
            .find_map(|e| e.any.clone().downcast::<T>().ok())
    }

    fn controls(&self) -> Vec<(String, Arc<dyn DeviceControl>)> {
        lock(&self.entries)
            .iter()
            .map(|e| (e.name.clone(), e.control.clone()))
            .collect()
    }

    /// Every device's counters.
    pub(crate) fn counters(&self) -> Vec<DeviceCounters> {
        self.controls()
            .into_iter()
            .map(|(device, c)| DeviceCounters {
                device,
                counters: c.counters(),
            })
            .filter(|c| !c.counters.is_empty())
            .collect()
    }

    /// Quarantines every device; returns their evidence.
    pub(crate) fn quarantine(&self) -> Vec<DeviceEvidence> {
        self.controls()
            .into_iter()
            .filter_map(|(_, c)| c.quarantine())
            .collect()
    }

    pub(crate) fn release(&self) {
        for (_, c) in self.controls() {
            c.release();
        }
    }

    pub(crate) fn stopped(&self, exit: &ZoneExit) {
        for (_, c) in self.controls() {
            c.stopped(exit);
        }
    }

    /// Registers a device thread: pausing the zone pauses its workers. A thread registered while
    /// the zone is paused starts paused.
    pub(crate) fn add_thread(&self, ctl: Arc<RunnerCtl>) {
        let mut threads = lock(&self.threads);
        threads.runners.retain(|r| r.strong_count() > 0);
        if threads.paused {
            ctl.set_paused(true);
        }
        threads.runners.push(Arc::downgrade(&ctl));
    }

    /// A registry for a zone that starts paused (or not).
    pub(crate) fn new(paused: bool) -> Self {
        Self {
            entries: Mutex::default(),
            threads: Mutex::new(Threads {
                paused,
                runners: Vec::new(),
            }),
        }
    }

    /// Pauses (or resumes) every device thread, waiting for each. Returns the names of threads
    /// that did not answer within the bound.
    pub(crate) fn set_paused(&self, paused: bool) -> Vec<String> {
        let runners: Vec<Arc<RunnerCtl>> = {
            let mut threads = lock(&self.threads);
            threads.paused = paused;
            threads.runners.iter().filter_map(Weak::upgrade).collect()
        };
        let silent = runners
            .into_iter()
            .filter(|r| !r.set_paused(paused))
            .map(|r| r.name.clone())
            .collect();
        for (_, control) in self.controls() {
            control.set_paused(paused);
        }
        silent
    }
}
