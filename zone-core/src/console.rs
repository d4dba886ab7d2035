//! Console capture: bytes the guest writes, kept up to a limit, optionally streamed to a sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A callback that receives console bytes as the guest writes them (on a vCPU thread).
pub type ConsoleSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Default console capture limit.
pub const DEFAULT_CONSOLE_LIMIT: usize = 1 << 20;

pub(crate) struct ConsoleBuffer {
    data: Mutex<Vec<u8>>,
    limit: usize,
    overflowed: AtomicBool,
    sink: Option<ConsoleSink>,
    /// When the guest first wrote something.
    first_output: std::sync::OnceLock<std::time::Instant>,
}

impl std::fmt::Debug for ConsoleBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleBuffer")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// What [`ConsoleBuffer::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pushed {
    pub(crate) kept: usize,
    pub(crate) dropped: usize,
    /// This push was the first to hit the limit.
    pub(crate) first_overflow: bool,
}

impl ConsoleBuffer {
    pub(crate) fn new(limit: usize, sink: Option<ConsoleSink>) -> Self {
        Self {
            data: Mutex::new(Vec::new()),
            limit,
            overflowed: AtomicBool::new(false),
            sink,
            first_output: std::sync::OnceLock::new(),
        }
    }

    /// When the guest first wrote something, if it has.
    pub(crate) fn first_output(&self) -> Option<std::time::Instant> {
        self.first_output.get().copied()
    }

    /// Appends guest bytes, keeping at most `limit` in total. The sink sees every byte.
    pub(crate) fn push(&self, bytes: &[u8]) -> Pushed {
        if !bytes.is_empty() && self.first_output.get().is_none() {
            let _ = self.first_output.set(std::time::Instant::now());
        }
        if let Some(sink) = &self.sink {
            sink(bytes);
        }
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.limit.saturating_sub(data.len());
        let kept = bytes.len().min(room);
        data.extend_from_slice(&bytes[..kept]);
        let dropped = bytes.len() - kept;
        let first_overflow = dropped > 0 && !self.overflowed.swap(true, Ordering::Relaxed);
        Pushed {
            kept,
            dropped,
            first_overflow,
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last `n` captured bytes.
    pub(crate) fn tail(&self, n: usize) -> Vec<u8> {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        data[data.len().saturating_sub(n)..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn keeps_up_to_the_limit_and_reports_the_first_overflow_once() {
        let seen = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        let sink: ConsoleSink = Arc::new(move |b: &[u8]| {
            seen2.fetch_add(b.len(), Ordering::Relaxed);
        });
        let c = ConsoleBuffer::new(8, Some(sink));
        assert_eq!(
            c.push(b"hello"),
            Pushed {
                kept: 5,
                dropped: 0,
                first_overflow: false
            }
        );
        assert_eq!(
            c.push(b"world"),
            Pushed {
                kept: 3,
                dropped: 2,
                first_overflow: true
            }
        );
        assert_eq!(
            c.push(b"!!"),
            Pushed {
                kept: 0,
                dropped: 2,
                first_overflow: false
            }
        );
        assert_eq!(c.snapshot(), b"hellowor");
        assert_eq!(c.tail(3), b"wor");
        assert_eq!(c.tail(100), b"hellowor");
        assert_eq!(seen.load(Ordering::Relaxed), 12, "the sink sees every byte");
    }
}
