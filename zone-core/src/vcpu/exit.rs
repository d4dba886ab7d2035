//! KVM exits copied out of `kvm_run` into owned values, so the handler can use the vCPU fd
//! (for register reads) while deciding what to do.

use crate::metrics::ExitReason;
use kvm_ioctls::VcpuExit;

/// Bytes of an I/O or MMIO exit. Small accesses (all that real guests make) stay inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExitData {
    Inline([u8; 16], usize),
    Heap(Vec<u8>),
}

impl ExitData {
    pub(crate) fn copy(bytes: &[u8]) -> Self {
        if bytes.len() <= 16 {
            let mut buf = [0u8; 16];
            buf[..bytes.len()].copy_from_slice(bytes);
            Self::Inline(buf, bytes.len())
        } else {
            Self::Heap(bytes.to_vec())
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline(buf, len) => &buf[..*len],
            Self::Heap(v) => v,
        }
    }
}

/// An owned KVM exit.
#[derive(Debug)]
pub(crate) enum Exit {
    IoOut { port: u16, data: ExitData },
    IoIn { port: u16, len: usize },
    MmioRead { addr: u64, len: usize },
    MmioWrite { addr: u64, data: ExitData },
    Hlt,
    Shutdown,
    Interrupted,
    InternalError,
    FailEntry(u64),
    SystemEvent(u32),
    Unsupported(String),
    RunFailed(i32),
}

impl Exit {
    pub(crate) fn from_run(result: Result<VcpuExit<'_>, kvm_ioctls::Error>) -> Self {
        match result {
            Ok(VcpuExit::IoOut(port, data)) => Self::IoOut {
                port,
                data: ExitData::copy(data),
            },
            Ok(VcpuExit::IoIn(port, data)) => Self::IoIn {
                port,
                len: data.len(),
            },
            Ok(VcpuExit::MmioRead(addr, data)) => Self::MmioRead {
                addr,
                len: data.len(),
            },
            Ok(VcpuExit::MmioWrite(addr, data)) => Self::MmioWrite {
                addr,
                data: ExitData::copy(data),
            },
            Ok(VcpuExit::Hlt) => Self::Hlt,
            Ok(VcpuExit::Shutdown) => Self::Shutdown,
            Ok(VcpuExit::Intr) => Self::Interrupted,
            Ok(VcpuExit::InternalError) => Self::InternalError,
            Ok(VcpuExit::FailEntry(reason, _cpu)) => Self::FailEntry(reason),
            Ok(VcpuExit::SystemEvent(kind, _)) => Self::SystemEvent(kind),
            Ok(other) => Self::Unsupported(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Self::Interrupted,
            Err(e) => Self::RunFailed(e.errno()),
        }
    }

    pub(crate) fn reason(&self) -> ExitReason {
        match self {
            Self::IoOut { .. } => ExitReason::IoOut,
            Self::IoIn { .. } => ExitReason::IoIn,
            Self::MmioRead { .. } => ExitReason::MmioRead,
            Self::MmioWrite { .. } => ExitReason::MmioWrite,
            Self::Hlt => ExitReason::Hlt,
            Self::Shutdown => ExitReason::Shutdown,
            Self::Interrupted => ExitReason::Interrupted,
            Self::InternalError => ExitReason::InternalError,
            Self::FailEntry(_) => ExitReason::FailEntry,
            Self::SystemEvent(_) => ExitReason::SystemEvent,
            Self::Unsupported(_) | Self::RunFailed(_) => ExitReason::Other,
        }
    }
}
