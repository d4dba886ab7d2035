//! Console output through the `ConsoleWrite` hypercall, with a small line buffer.

use super::hypercall;
use crate::abi::{Hypercall, limits};

/// Writes raw bytes to the zone's console. Returns the hypercall status.
pub fn write(bytes: &[u8]) -> i64 {
    let mut status = 0;
    for chunk in bytes.chunks(limits::MAX_CONSOLE_WRITE as usize) {
        let [ret, _] = hypercall(
            Hypercall::ConsoleWrite,
            [chunk.as_ptr() as u64, chunk.len() as u64, 0, 0, 0, 0],
        );
        status = ret as i64;
    }
    status
}

/// A `core::fmt::Write` sink that buffers up to 256 bytes per hypercall and flushes on drop.
pub struct Console {
    buf: [u8; 256],
    len: usize,
}

impl Console {
    /// An empty console writer.
    pub const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    /// Sends buffered bytes to the host.
    pub fn flush(&mut self) {
        if self.len > 0 {
            write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let bytes = s.as_bytes();
        if bytes.len() > self.buf.len() {
            self.flush();
            write(bytes);
            return Ok(());
        }
        if self.len + bytes.len() > self.buf.len() {
            self.flush();
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}
