//! Where a zone's start went: the host's build phases, the moments the host saw the guest reach
//! (first console output, its vsock driver, its agent, its first command), and the agent's own
//! marks on the guest's clock. [`ZoneHandle::boot_report`] puts them together.

use crate::zone::ZoneHandle;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The host's record of one zone's start, kept in the zone.
#[derive(Debug)]
pub(crate) struct BootClock {
    /// When `build()` started.
    started: Instant,
    /// The build's phases and their durations, in order.
    phases: Mutex<Vec<(&'static str, Duration)>>,
    /// When the vCPU threads were started (`build()` returns right after).
    launched: OnceLock<Instant>,
    /// When the first command was started and ended (Linux zones).
    first_started: OnceLock<Instant>,
    first_ended: OnceLock<Instant>,
    /// The agent's marks, once asked for (they never change).
    guest: OnceLock<Vec<(String, Duration)>>,
    /// When the agent wrote each of its port marks (`PORT_MARKS`' order), on the host's clock.
    port: [OnceLock<Instant>; PORT_MARKS],
}

/// How many marks the agent stamps through the boot-mark port.
const PORT_MARKS: usize = zone_agent::proto::boot::PORT_MARKS.len();

/// The agent's port marks as the boot report names them (`PORT_MARKS`' order).
const PORT_MARK_NAMES: [&str; PORT_MARKS] = [
    "agent started (agent)",
    "mounts done (agent)",
    "modules loaded (agent)",
    "root filesystem ready (agent)",
    "network ready (agent)",
    "agent port listening (agent)",
    "server ready (agent)",
];

impl BootClock {
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            started,
            phases: Mutex::default(),
            launched: OnceLock::new(),
            first_started: OnceLock::new(),
            first_ended: OnceLock::new(),
            guest: OnceLock::new(),
            port: Default::default(),
        }
    }

    /// The guest wrote `value` to the boot-mark port: the first write of a known value is
    /// stamped, anything else ignored (the guest controls the port).
    pub(crate) fn port_mark(&self, value: u8) {
        let Some(slot) = usize::from(value)
            .checked_sub(1)
            .and_then(|i| self.port.get(i))
        else {
            return;
        };
        let _ = slot.set(Instant::now());
    }

    /// The port marks stamped so far, since `build()`, in `PORT_MARKS`' order.
    pub(crate) fn port_marks(&self) -> Vec<(&'static str, Duration)> {
        PORT_MARK_NAMES
            .iter()
            .zip(&self.port)
            .filter_map(|(name, at)| {
                Some((*name, at.get()?.saturating_duration_since(self.started)))
            })
            .collect()
    }

    /// Records the build's phases and that the vCPUs are starting.
    pub(crate) fn launched(&self, phases: Vec<(&'static str, Duration)>) {
        *self.phases.lock().unwrap_or_else(|e| e.into_inner()) = phases;
        let _ = self.launched.set(Instant::now());
    }

    /// A command started (only the first counts).
    pub(crate) fn command_started(&self) {
        let _ = self.first_started.set(Instant::now());
    }

    /// A command ended (only the first counts).
    pub(crate) fn command_ended(&self) {
        let _ = self.first_ended.set(Instant::now());
    }

    /// The agent's marks, if they were fetched.
    pub(crate) fn guest(&self) -> Option<&Vec<(String, Duration)>> {
        self.guest.get()
    }

    /// Keeps the agent's marks.
    pub(crate) fn set_guest(&self, marks: Vec<(String, Duration)>) {
        let _ = self.guest.set(marks);
    }
}

/// A zone's start, as far as it has gone ([`ZoneHandle::boot_report`]). Times on the host are
/// counted from the moment `build()` was called; the guest's marks are on the guest's own clock,
/// from the moment its kernel started counting time (early in its boot), so the two sets are
/// not on one axis: the report shows both as measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootReport {
    /// The zone.
    pub zone: String,
    /// `build()`'s phases (host side), in order, with their durations: kernel read, root
    /// filesystem, initramfs, VM and memory, kernel and boot data loaded, devices, vCPUs (Linux
    /// zones); threads started, VM, vCPUs, memory and program (micro zones: vCPU thread 0 makes
    /// the memory while the building thread makes the VM and the vCPUs, so this last phase is
    /// the building thread's wait for it).
    pub build_phases: Vec<(&'static str, Duration)>,
    /// What the host saw the zone reach, since `build()` was called, in order of occurrence:
    /// `vCPUs started`, `first console output`, `vsock driver ready`, `agent answered`,
    /// `first command started`, `first command ended` (those reached so far), and the agent's
    /// steps as the host saw them through its boot-mark port, named `... (agent)` (Linux zones
    /// whose kernel lets the agent use `ioperm`).
    pub milestones: Vec<(&'static str, Duration)>,
    /// The agent's marks (Linux zones with the zones agent), on the guest's clock:
    /// `agent_start` (the kernel's own boot is over), `mounted`, `modules_loaded`,
    /// `rootfs_ready`, `network_ready`, `server_listening` (the agent port listens),
    /// `server_ready` (its server accepts connections). Empty for micro zones, before the
    /// agent has answered, or when it could not be asked.
    pub guest_marks: Vec<(String, Duration)>,
}

impl std::fmt::Display for BootReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        writeln!(f, "zone {}: boot report", self.zone)?;
        writeln!(f, "  build() phases (host):")?;
        for (name, d) in &self.build_phases {
            writeln!(f, "    {name:<28} {:>10.3} ms", ms(d))?;
        }
        writeln!(f, "  milestones (host, since build()):")?;
        for (name, d) in &self.milestones {
            writeln!(f, "    {name:<28} {:>10.3} ms", ms(d))?;
        }
        if !self.guest_marks.is_empty() {
            writeln!(f, "  agent marks (guest clock, since the kernel started):")?;
            for (name, d) in &self.guest_marks {
                writeln!(
                    f,
                    "    {:<28} {:>10.3} ms",
                    crate::text::escaped(name),
                    ms(d)
                )?;
            }
        }
        Ok(())
    }
}

impl ZoneHandle {
    /// Where the zone's start went so far: `build()`'s phases, the milestones the host saw and,
    /// for a Linux zone whose agent has answered, the agent's own marks. The first call after the
    /// agent answered asks the agent for its marks (one vsock round trip, bounded by
    /// [`crate::AGENT_ANSWER_TIMEOUT`]); later calls use what it said.
    ///
    /// ```no_run
    /// # fn run(zone: &zone_core::Zone) -> Result<(), zone_core::ExecError> {
    /// zone.exec(&zone_core::Command::new("true"))?;
    /// println!("{}", zone.boot_report());
    /// # Ok(()) }
    /// ```
    pub fn boot_report(&self) -> BootReport {
        let clock = &self.shared.boot;
        if clock.guest().is_none()
            && let Some(marks) = self.fetch_boot_marks()
        {
            clock.set_guest(marks);
        }
        self.boot_report_now()
    }

    /// The report from what is known now, without asking the agent.
    pub(crate) fn boot_report_now(&self) -> BootReport {
        let clock = &self.shared.boot;
        let since = |at: Option<Instant>| at.map(|t| t.saturating_duration_since(clock.started));
        let backend = self
            .shared
            .devices
            .find::<crate::devices::virtio::vsock::backend::Backend>();
        let mut milestones: Vec<(&'static str, Duration)> = [
            ("vCPUs started", since(clock.launched.get().copied())),
            (
                "first console output",
                since(self.shared.console.first_output()),
            ),
            (
                "vsock driver ready",
                since(backend.as_ref().and_then(|b| b.driver_ready_at())),
            ),
            (
                "agent answered",
                since(backend.as_ref().and_then(|b| b.agent_seen_at())),
            ),
            (
                "first command started",
                since(clock.first_started.get().copied()),
            ),
            (
                "first command ended",
                since(clock.first_ended.get().copied()),
            ),
        ]
        .into_iter()
        .filter_map(|(name, at)| Some((name, at?)))
        .chain(clock.port_marks())
        .collect();
        milestones.sort_by_key(|m| m.1);
        BootReport {
            zone: self.name().to_string(),
            build_phases: clock
                .phases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            milestones,
            guest_marks: clock.guest().cloned().unwrap_or_default(),
        }
    }
}

/// The marks in the agent's answer to `BOOT`, if it is a `BOOT_TIMES` frame (bounded and
/// checked: the guest wrote it).
pub(crate) fn guest_marks(answer: Option<(u8, Vec<u8>)>) -> Option<Vec<(String, Duration)>> {
    match answer? {
        (zone_agent::proto::kind::BOOT_TIMES, payload) => Some(marks_of(&payload)),
        _ => None,
    }
}

/// The marks of a `BOOT_TIMES` payload.
fn marks_of(payload: &[u8]) -> Vec<(String, Duration)> {
    zone_agent::proto::boot::decode(&String::from_utf8_lossy(payload))
        .into_iter()
        .map(|(name, micros)| (name, Duration::from_micros(micros)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_reads_as_a_table_and_guest_text_is_checked() {
        let report = BootReport {
            zone: "z".into(),
            build_phases: vec![("kernel read", Duration::from_micros(1500))],
            milestones: vec![("agent answered", Duration::from_millis(120))],
            guest_marks: marks_of(b"agent_start=80000\nmounted=81000\nEvil\x1b=1\n"),
        };
        let text = report.to_string();
        assert!(text.contains("kernel read"), "{text}");
        assert!(text.contains("1.500 ms"), "{text}");
        assert!(text.contains("agent answered"), "{text}");
        assert!(text.contains("120.000 ms"), "{text}");
        assert_eq!(report.guest_marks.len(), 2, "the malformed line is dropped");
        assert!(
            text.contains("agent_start") && text.contains("80.000 ms"),
            "{text}"
        );
    }

    #[test]
    fn first_marks_win() {
        let clock = BootClock::new(Instant::now());
        clock.command_started();
        let first = clock.first_started.get().copied();
        std::thread::sleep(Duration::from_millis(2));
        clock.command_started();
        assert_eq!(clock.first_started.get().copied(), first);
    }
}
