//! How a zone ended.

use std::fmt;

/// Why a zone stopped running. Returned by [`ZoneHandle::wait`](crate::ZoneHandle::wait).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZoneExit {
    /// The guest ended itself with this exit code.
    Exited(i32),
    /// The guest panicked; the message is its panic report (the guest's text: `Display` escapes
    /// its control characters).
    Panicked(String),
    /// A CPU exception in the guest ended the zone.
    Fault(Fault),
    /// [`kill`](crate::ZoneHandle::kill) was called (or the [`Zone`](crate::Zone) was dropped).
    Killed,
    /// The zone's deadline passed before it ended.
    DeadlineExceeded,
    /// The guest shut the machine down (a triple fault in a micro zone).
    Shutdown,
    /// KVM or the VMM could not continue the zone (internal error, failed entry, unexpected exit).
    Crashed {
        /// The vCPU that stopped.
        vcpu: u32,
        /// What happened.
        reason: String,
    },
}

impl fmt::Display for ZoneExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exited with code {code}"),
            Self::Panicked(msg) => write!(f, "guest panicked: {}", crate::text::escaped(msg)),
            Self::Fault(fault) => write!(f, "{fault}"),
            Self::Killed => f.write_str("killed"),
            Self::DeadlineExceeded => f.write_str("deadline exceeded"),
            Self::Shutdown => f.write_str("guest shut down"),
            Self::Crashed { vcpu, reason } => write!(f, "vCPU {vcpu} crashed: {reason}"),
        }
    }
}

/// A CPU exception raised by guest code, as reported by the CPL0 stub that caught it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The vCPU that faulted.
    pub vcpu: u32,
    /// The exception vector.
    pub vector: u8,
    /// The error code the CPU pushed, for vectors that have one.
    pub error_code: Option<u64>,
    /// Address of the faulting instruction.
    pub rip: u64,
    /// Faulting linear address (page faults only).
    pub cr2: Option<u64>,
    /// Privilege level the guest was running at (3 for micro-zone programs).
    pub cpl: u8,
}

impl Fault {
    /// The exception by name.
    pub fn exception(&self) -> Exception {
        Exception::from_vector(self.vector)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (vector {}) on vCPU {} at rip {:#x}",
            self.exception(),
            self.vector,
            self.vcpu,
            self.rip
        )?;
        if let Some(code) = self.error_code {
            write!(f, ", error code {code:#x}")?;
        }
        if let Some(cr2) = self.cr2 {
            write!(f, ", address {cr2:#x}")?;
        }
        Ok(())
    }
}

/// x86 exception vectors by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Exception {
    DivideError,
    Debug,
    Nmi,
    Breakpoint,
    Overflow,
    BoundRange,
    InvalidOpcode,
    DeviceNotAvailable,
    DoubleFault,
    InvalidTss,
    SegmentNotPresent,
    StackFault,
    GeneralProtection,
    PageFault,
    X87Floating,
    AlignmentCheck,
    MachineCheck,
    SimdFloating,
    Virtualization,
    ControlProtection,
    /// Any other vector (reserved or external interrupt).
    Other(u8),
}

impl Exception {
    /// Names a vector.
    pub fn from_vector(vector: u8) -> Self {
        match vector {
            0 => Self::DivideError,
            1 => Self::Debug,
            2 => Self::Nmi,
            3 => Self::Breakpoint,
            4 => Self::Overflow,
            5 => Self::BoundRange,
            6 => Self::InvalidOpcode,
            7 => Self::DeviceNotAvailable,
            8 => Self::DoubleFault,
            10 => Self::InvalidTss,
            11 => Self::SegmentNotPresent,
            12 => Self::StackFault,
            13 => Self::GeneralProtection,
            14 => Self::PageFault,
            16 => Self::X87Floating,
            17 => Self::AlignmentCheck,
            18 => Self::MachineCheck,
            19 => Self::SimdFloating,
            20 => Self::Virtualization,
            21 => Self::ControlProtection,
            other => Self::Other(other),
        }
    }

    /// Whether the CPU pushes an error code for this vector.
    pub fn has_error_code(vector: u8) -> bool {
        matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::DivideError => "#DE divide error",
            Self::Debug => "#DB debug",
            Self::Nmi => "NMI",
            Self::Breakpoint => "#BP breakpoint",
            Self::Overflow => "#OF overflow",
            Self::BoundRange => "#BR bound range",
            Self::InvalidOpcode => "#UD invalid opcode",
            Self::DeviceNotAvailable => "#NM device not available",
            Self::DoubleFault => "#DF double fault",
            Self::InvalidTss => "#TS invalid TSS",
            Self::SegmentNotPresent => "#NP segment not present",
            Self::StackFault => "#SS stack fault",
            Self::GeneralProtection => "#GP general protection",
            Self::PageFault => "#PF page fault",
            Self::X87Floating => "#MF x87 floating point",
            Self::AlignmentCheck => "#AC alignment check",
            Self::MachineCheck => "#MC machine check",
            Self::SimdFloating => "#XM SIMD floating point",
            Self::Virtualization => "#VE virtualization",
            Self::ControlProtection => "#CP control protection",
            Self::Other(v) => return write!(f, "exception {v}"),
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_escaped_when_displayed() {
        let exit = ZoneExit::Panicked("boom\u{1b}[2J\nINFO all good".into());
        let shown = exit.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "guest panicked: boom\\u{1b}[2J\\nINFO all good");
    }
}
