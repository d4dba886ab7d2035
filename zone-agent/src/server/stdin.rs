//! A bounded queue between the connection's reader (which must keep reading so that it sees
//! `SIGNAL` frames and the host going away) and the thread that writes to the command's stdin
//! (which blocks while the command does not read).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Most stdin bytes held for a command that is not reading; beyond it the reader waits.
pub(super) const STDIN_BUFFER: usize = 8 << 20;

#[derive(Default)]
struct State {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The host sent `STDIN_EOF`: close stdin once the queue is drained.
    eof: bool,
    /// Nobody will write any more (the command closed its stdin or the session ended).
    closed: bool,
}

/// Bytes on their way to the command's stdin.
#[derive(Default)]
pub(super) struct StdinQueue {
    state: Mutex<State>,
    cond: Condvar,
}

impl StdinQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cond.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `data`; waits while more than [`STDIN_BUFFER`] bytes are pending. Dropped after
    /// `STDIN_EOF` or once the queue is closed.
    pub(super) fn push(&self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let mut s = self.lock();
        while !s.closed && !s.eof && s.bytes > 0 && s.bytes + data.len() > STDIN_BUFFER {
            s = self.wait(s);
        }
        if s.closed || s.eof {
            return;
        }
        s.bytes += data.len();
        s.chunks.push_back(data);
        self.cond.notify_all();
    }

    /// The host closed stdin: the writer closes it after the pending bytes.
    pub(super) fn finish(&self) {
        self.lock().eof = true;
        self.cond.notify_all();
    }

    /// Drops everything pending and refuses more; wakes everyone waiting.
    pub(super) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.chunks.clear();
        s.bytes = 0;
        self.cond.notify_all();
    }

    /// The next chunk for stdin, or `None` when stdin is to be closed.
    pub(super) fn pop(&self) -> Option<Vec<u8>> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some(chunk) = s.chunks.pop_front() {
                s.bytes -= chunk.len();
                self.cond.notify_all();
                return Some(chunk);
            }
            if s.eof {
                return None;
            }
            s = self.wait(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn delivers_in_order_then_ends() {
        let q = StdinQueue::default();
        q.push(b"ab".to_vec());
        q.push(Vec::new());
        q.push(b"c".to_vec());
        q.finish();
        q.push(b"late".to_vec());
        assert_eq!(q.pop(), Some(b"ab".to_vec()));
        assert_eq!(q.pop(), Some(b"c".to_vec()));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_full_queue_blocks_until_drained_or_closed() {
        let q = Arc::new(StdinQueue::default());
        q.push(vec![0; STDIN_BUFFER]);
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || q.push(vec![1; 10]))
        };
        assert_eq!(q.pop().map(|c| c.len()), Some(STDIN_BUFFER));
        pusher.join().unwrap();
        assert_eq!(q.pop(), Some(vec![1; 10]));

        q.push(vec![0; STDIN_BUFFER]);
        let blocked = {
            let q = q.clone();
            std::thread::spawn(move || q.push(vec![1; 10]))
        };
        q.close();
        blocked.join().unwrap();
        assert_eq!(q.pop(), None);
    }
}
