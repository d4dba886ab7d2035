//! [`Zone`] (owns the VM and its threads) and [`ZoneHandle`] (a cloneable, thread-safe
//! controller).

use crate::console::ConsoleBuffer;
use crate::control::{Control, ControlError, Parked, Refused, ZoneState};
use crate::deadline::{self, DeadlineTarget};
use crate::device::Devices;
use crate::events::{EventBus, EventStream, Violation, ZoneEvent};
use crate::exit::ZoneExit;
use crate::memory;
use crate::metrics::{HypercallKind, Metrics, ZoneMetrics};
use crate::micro::hypercall::HypercallSink;
use crate::vcpu::{self, kick::Kicker};
use kvm_ioctls::{Kvm, VmFd};
use std::ops::Deref;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// State shared by a zone's vCPU threads, its handles and the deadline service.
pub(crate) struct ZoneShared {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) control: Control,
    pub(crate) metrics: Metrics,
    pub(crate) events: Arc<EventBus>,
    pub(crate) console: ConsoleBuffer,
    pub(crate) console_limit: usize,
    pub(crate) kickers: Vec<Kicker>,
    pub(crate) memory: RwLock<Option<GuestMemoryMmap>>,
    pub(crate) deadline: Mutex<Option<Instant>>,
    /// The zone's devices (Linux zones): their controls and their threads.
    pub(crate) devices: Arc<Devices>,
    /// Serializes bringing the device threads to the zone's pause state.
    pub(crate) device_sync: Mutex<()>,
    /// How the zone's threads are filtered.
    pub(crate) seccomp: crate::seccomp::Seccomp,
    /// Where its start went ([`ZoneHandle::boot_report`]).
    pub(crate) boot: crate::boot_report::BootClock,
}

impl crate::seccomp::RefusalSink for ZoneShared {
    fn refused(&self, thread: &str, nr: i64, args: &[u64; 6]) {
        self.metrics.seccomp_refused();
        let verb = match self.seccomp {
            crate::seccomp::Seccomp::Log => "made (allowed: Log mode)",
            _ => "refused",
        };
        let detail = format!(
            "{thread} thread: system call {} {verb}",
            crate::seccomp::describe(nr, args)
        );
        self.events.emit(ZoneEvent::Violation(Violation::new(
            None, "seccomp", detail,
        )));
    }
}

impl ZoneShared {
    /// The filter of one of this zone's threads.
    pub(crate) fn thread_filter(
        self: &Arc<Self>,
        kind: crate::seccomp::ThreadKind,
        extra: Vec<i64>,
        thread: String,
    ) -> crate::seccomp::ThreadFilter {
        let weak: std::sync::Weak<dyn crate::seccomp::RefusalSink> = Arc::downgrade(self) as _;
        crate::seccomp::ThreadFilter {
            mode: self.seccomp,
            kind,
            extra,
            thread,
            sink: Some(weak),
        }
    }
}

impl ZoneShared {
    /// Decides the zone's exit (first one wins) and kicks every vCPU out of the guest.
    pub(crate) fn stop(&self, exit: ZoneExit) {
        if self.control.stop(exit) {
            self.kick_all();
        }
    }

    /// Brings every device thread to the zone's current pause state. Serialized, and always
    /// applying the latest state, so that racing pauses and resumes leave the devices as the
    /// vCPUs are.
    pub(crate) fn sync_devices(&self) {
        let _guard = self.device_sync.lock().unwrap_or_else(|e| e.into_inner());
        self.devices.set_paused(self.control.paused());
    }

    pub(crate) fn kick_all(&self) {
        for kicker in &self.kickers {
            kicker.kick();
        }
    }

    /// Called once, when the last vCPU has left the guest: announce the end and fail every
    /// exec still waiting on the guest.
    pub(crate) fn on_stopped(&self, exit: &ZoneExit) {
        self.devices.stopped(exit);
        self.events.emit(ZoneEvent::Stopped(exit.clone()));
    }

    /// Reports a refused guest request.
    pub(crate) fn violation(&self, vcpu: u32, control: &'static str, detail: String) {
        self.metrics.rejected();
        self.events.emit(ZoneEvent::Violation(Violation::new(
            Some(vcpu),
            control,
            detail,
        )));
    }
}

impl ZoneShared {
    /// Console bytes from the guest (a hypercall from `vcpu`, or a device).
    pub(crate) fn console_output(&self, vcpu: Option<u32>, bytes: &[u8]) {
        let pushed = self.console.push(bytes);
        self.metrics
            .console(pushed.kept as u64, pushed.dropped as u64);
        if pushed.first_overflow {
            let detail = format!(
                "console capture limit of {} bytes reached; further output is dropped",
                self.console_limit
            );
            self.metrics.rejected();
            let violation = Violation::new(vcpu, "console", detail);
            self.events.emit(ZoneEvent::Violation(violation));
        }
    }
}

impl HypercallSink for ZoneShared {
    fn console(&self, vcpu: u32, bytes: &[u8]) {
        self.console_output(Some(vcpu), bytes);
    }

    fn violation(&self, vcpu: u32, control: &'static str, detail: String) {
        ZoneShared::violation(self, vcpu, control, detail);
    }

    fn count(&self, kind: HypercallKind) {
        self.metrics.hypercall(kind);
    }

    fn host_fn_called(&self, index: usize) {
        self.metrics.host_fn_call(index);
    }
}

impl DeadlineTarget for ZoneShared {
    fn deadline_reached(&self, at: Instant) {
        let current = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if current == Some(at) {
            self.stop(ZoneExit::DeadlineExceeded);
        }
    }
}

/// Why guest memory could not be read or written from the host.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryAccessError {
    /// The range is not inside guest memory.
    #[error("zone {zone}: guest range {addr:#x}+{len:#x} is outside its guest memory")]
    OutOfRange {
        /// The zone.
        zone: String,
        /// Start address.
        addr: u64,
        /// Length.
        len: usize,
    },
    /// The zone was dropped and its memory released.
    #[error("zone {zone} was dropped; its memory is released")]
    Released {
        /// The zone.
        zone: String,
    },
}

/// A cloneable, `Send + Sync` controller of a zone: pause, resume, kill, deadlines, waiting,
/// metrics, events, console and guest memory, from any thread. It stays valid after the
/// [`Zone`] is dropped (then the zone has ended and its memory is released).
#[derive(Clone)]
pub struct ZoneHandle {
    pub(crate) shared: Arc<ZoneShared>,
}

impl std::fmt::Debug for ZoneHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneHandle")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

impl ZoneHandle {
    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Stops every vCPU at its next exit (kicking it out of the guest at once) and every device
    /// thread (no queue is processed, no network flow moves), and returns once none runs. A vCPU
    /// inside a host function pauses when the function returns; a host function may pause its own
    /// zone (its vCPU counts as paused while it waits, so several vCPUs may do it at once). If
    /// another thread resumes the zone before every vCPU has paused, the resume wins and `pause`
    /// returns then: a control call always returns.
    ///
    /// ```no_run
    /// # fn run(zone: &zone_core::Zone) -> Result<(), zone_core::ControlError> {
    /// let handle = zone.handle(); // Clone + Send: control the zone from any thread
    /// std::thread::spawn(move || -> Result<(), zone_core::ControlError> {
    ///     handle.pause()?; // no vCPU runs guest code, no device moves data
    ///     handle.resume()
    /// });
    /// # Ok(()) }
    /// ```
    pub fn pause(&self) -> Result<(), ControlError> {
        self.pause_inner(false)
    }

    pub(crate) fn pause_inner(&self, quarantine: bool) -> Result<(), ControlError> {
        let control = &self.shared.control;
        let (newly, epoch) = control
            .request_pause(quarantine)
            .map_err(|exit| self.ended(exit))?;
        if newly {
            self.shared.events.emit(ZoneEvent::Paused);
        }
        self.shared.kick_all();
        let own = vcpu::current_zone() == self.shared.id;
        let parked = control
            .wait_parked(epoch, own)
            .map_err(|exit| self.ended(exit))?;
        if parked == Parked::All {
            self.shared.sync_devices();
        }
        Ok(())
    }

    /// Lets a paused zone run again (devices first, then vCPUs). Resuming a running zone does
    /// nothing; a quarantined zone needs [`release`](Self::release).
    pub fn resume(&self) -> Result<(), ControlError> {
        let was = self
            .shared
            .control
            .resume()
            .map_err(|refused| self.refused(refused))?;
        self.shared.sync_devices();
        if was {
            self.shared.events.emit(ZoneEvent::Resumed);
        }
        Ok(())
    }

    /// Ends the zone now with [`ZoneExit::Killed`] (unless it already ended). Returns at once;
    /// [`wait`](Self::wait) returns once every vCPU has left the guest. A vCPU running guest code
    /// leaves at once; one inside a host function leaves when that function returns (host
    /// functions are the embedder's code and are not preempted).
    ///
    /// ```no_run
    /// # fn run(zone: &zone_core::Zone) {
    /// use std::time::Duration;
    /// zone.set_deadline(Duration::from_secs(30)); // or end it now:
    /// zone.kill();
    /// assert_eq!(zone.wait(), zone_core::ZoneExit::Killed);
    /// # }
    /// ```
    pub fn kill(&self) {
        self.shared.stop(ZoneExit::Killed);
    }

    /// Sets (or moves) the deadline to `after` from now. When it passes the zone ends with
    /// [`ZoneExit::DeadlineExceeded`].
    pub fn set_deadline(&self, after: Duration) {
        let at = Instant::now() + after;
        *self
            .shared
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(at);
        let weak = Arc::downgrade(&self.shared);
        deadline::schedule(at, weak);
    }

    /// Blocks until the zone has ended and every vCPU has left the guest.
    pub fn wait(&self) -> ZoneExit {
        self.shared.control.wait(None).unwrap_or(ZoneExit::Killed)
    }

    /// Like [`wait`](Self::wait), giving up after `timeout`.
    ///
    /// ```no_run
    /// # fn run(zone: &zone_core::Zone) {
    /// match zone.wait_timeout(std::time::Duration::from_secs(5)) {
    ///     Some(exit) => println!("ended: {exit}"),
    ///     None => println!("still {:?}", zone.state()),
    /// }
    /// # }
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ZoneExit> {
        self.shared.control.wait(Some(Instant::now() + timeout))
    }

    /// The zone's exit once it has been decided (stopping or ended).
    pub(crate) fn ended_exit(&self) -> Option<ZoneExit> {
        match self.state() {
            ZoneState::Stopping(exit) | ZoneState::Ended(exit) => Some(exit),
            ZoneState::Running | ZoneState::Paused | ZoneState::Quarantined => None,
        }
    }

    /// The zone's current state.
    pub fn state(&self) -> ZoneState {
        self.shared.control.state()
    }

    /// A snapshot of the zone's counters.
    ///
    /// ```no_run
    /// # fn run(zone: &zone_core::Zone) {
    /// let m = zone.metrics();
    /// println!("{m}"); // every counter, one per line
    /// println!("vCPU time {:?}, {} KVM exits", m.vcpu_run_time, m.exits.total());
    /// if let Some(disk) = m.device("blk0") {
    ///     println!("disk read {} bytes", disk.get("read_bytes").unwrap_or(0));
    /// }
    /// # }
    /// ```
    pub fn metrics(&self) -> ZoneMetrics {
        let resident = self
            .shared
            .memory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(memory::resident_bytes);
        self.shared.metrics.snapshot(
            resident,
            self.shared.events.dropped(),
            self.shared.devices.counters(),
        )
    }

    /// Subscribes to the zone's events. The first subscription receives every event since the
    /// zone was built; later ones start now.
    ///
    /// ```no_run
    /// # fn run(zone: &zone_core::Zone) {
    /// use zone_core::ZoneEvent;
    /// let events = zone.events();
    /// for event in events.drain() {
    ///     match event {
    ///         ZoneEvent::Violation(v) => eprintln!("refused: {v}"),
    ///         ZoneEvent::Denied(d) => eprintln!("denied: {d}"),
    ///         other => println!("{other}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> EventStream {
        self.shared.events.subscribe()
    }

    /// The console bytes captured so far.
    pub fn console(&self) -> Vec<u8> {
        self.shared.console.snapshot()
    }

    /// The console as text (invalid UTF-8 replaced).
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.shared.console.snapshot()).into_owned()
    }

    /// Copies guest memory at guest physical address `addr` into `buf`.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryAccessError> {
        self.with_memory(addr, buf.len(), |mem| {
            mem.read_slice(buf, GuestAddress(addr)).is_ok()
        })
    }

    /// Copies `data` into guest memory at guest physical address `addr`.
    pub fn write_memory(&self, addr: u64, data: &[u8]) -> Result<(), MemoryAccessError> {
        self.with_memory(addr, data.len(), |mem| {
            mem.write_slice(data, GuestAddress(addr)).is_ok()
        })
    }

    fn with_memory(
        &self,
        addr: u64,
        len: usize,
        f: impl FnOnce(&GuestMemoryMmap) -> bool,
    ) -> Result<(), MemoryAccessError> {
        let guard = self.shared.memory.read().unwrap_or_else(|e| e.into_inner());
        let mem = guard.as_ref().ok_or_else(|| MemoryAccessError::Released {
            zone: self.shared.name.clone(),
        })?;
        let in_range = len == 0 || mem.check_range(GuestAddress(addr), len);
        if in_range && f(mem) {
            Ok(())
        } else {
            Err(MemoryAccessError::OutOfRange {
                zone: self.shared.name.clone(),
                addr,
                len,
            })
        }
    }

    pub(crate) fn ended(&self, exit: ZoneExit) -> ControlError {
        ControlError::Ended {
            zone: self.shared.name.clone(),
            exit,
        }
    }

    pub(crate) fn refused(&self, refused: Refused) -> ControlError {
        match refused {
            Refused::Ended(exit) => self.ended(exit),
            Refused::Quarantined => ControlError::Quarantined {
                zone: self.shared.name.clone(),
            },
        }
    }

    /// The device of this zone whose control is a `T` (how a device crate's extension trait
    /// finds its device, e.g. zone-net's `net_cut()`), if the zone has one.
    pub fn device<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.shared.devices.find::<T>()
    }
}

/// A running zone. Dereferences to its [`ZoneHandle`] for control and observation.
///
/// Dropping a `Zone` kills it if it is still running, joins its vCPU threads, closes its KVM file
/// descriptors and releases its guest memory.
pub struct Zone {
    pub(crate) handle: ZoneHandle,
    pub(crate) threads: Vec<JoinHandle<()>>,
    pub(crate) vm: Option<VmFd>,
    pub(crate) kvm: Option<Kvm>,
    /// Device models released only after the vCPU threads are joined, on the thread that drops
    /// the zone (a passed-through PCI function resets its device then, which a vCPU thread's
    /// filter would refuse).
    pub(crate) keep: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Zone {
    /// Starts describing a zone.
    pub fn builder() -> crate::ZoneBuilder {
        crate::ZoneBuilder::default()
    }

    /// A handle to control this zone from other threads.
    pub fn handle(&self) -> ZoneHandle {
        self.handle.clone()
    }
}

impl Deref for Zone {
    type Target = ZoneHandle;

    fn deref(&self) -> &ZoneHandle {
        &self.handle
    }
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.fmt(f)
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        self.handle.shared.stop(ZoneExit::Killed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.keep.clear();
        drop(self.vm.take());
        drop(self.kvm.take());
        *self
            .handle
            .shared
            .memory
            .write()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }
}
