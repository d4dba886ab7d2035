//! Reading the agent protocol's frames without blocking: bytes are gathered as the connection
//! has them, and a frame is handed out once it is whole.

use crate::devices::virtio::vsock::backend::VsockError;
use std::io;
use std::task::Poll;
use zone_agent::proto::MAX_FRAME;

/// Bytes read per poll at most.
const READ_CHUNK: usize = 64 << 10;
/// A frame's header: kind (1 byte) and length (4 bytes, little-endian).
const HEADER: usize = 5;

/// A frame: its kind and payload.
pub(super) type Frame = (u8, Vec<u8>);

/// Gathers frames from a byte stream. Holds at most one frame and one read's worth of bytes.
#[derive(Debug, Default)]
pub(super) struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next whole frame, reading with `read` as long as it has bytes. `Ready(Ok(None))` at a
    /// clean end of stream between frames.
    pub(super) fn poll_frame(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> Poll<Result<usize, VsockError>>,
    ) -> Poll<io::Result<Option<Frame>>> {
        loop {
            if let Some(frame) = self.split()? {
                return Poll::Ready(Ok(Some(frame)));
            }
            let old = self.buf.len();
            self.buf.resize(old + READ_CHUNK, 0);
            let result = read(&mut self.buf[old..]);
            let n = match &result {
                Poll::Ready(Ok(n)) => *n,
                _ => 0,
            };
            self.buf.truncate(old + n);
            match result {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(crate::exec::to_io(e))),
                Poll::Ready(Ok(0)) if old == 0 => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Takes the first frame off the buffer if it is whole.
    fn split(&mut self) -> io::Result<Option<Frame>> {
        let Some(head) = self.buf.get(..HEADER) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame longer than MAX_FRAME",
            ));
        }
        let end = HEADER + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[HEADER..end].to_vec();
        self.buf.drain(..end);
        Ok(Some((kind, payload)))
    }
}

/// One frame's bytes (header and payload).
pub(super) fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    let mut w = io::Cursor::new(&mut frame);
    // Writing to a Vec fails only for a payload over MAX_FRAME, which callers never pass.
    let _ = zone_agent::proto::write_frame(&mut w, kind, payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in reads of at most `step` bytes, then `Pending` or the end of stream.
    fn feeder(
        bytes: Vec<u8>,
        step: usize,
        end: bool,
    ) -> impl FnMut(&mut [u8]) -> Poll<Result<usize, VsockError>> {
        let mut at = 0;
        move |buf: &mut [u8]| {
            if at == bytes.len() {
                return if end {
                    Poll::Ready(Ok(0))
                } else {
                    Poll::Pending
                };
            }
            let n = step.min(buf.len()).min(bytes.len() - at);
            buf[..n].copy_from_slice(&bytes[at..at + n]);
            at += n;
            Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let mut bytes = encode(17, b"hello");
        bytes.extend(encode(18, &[7u8; 70_000]));
        bytes.extend(encode(19, b""));
        for step in [1, 3, 5, 4096, 1 << 20] {
            let mut reader = FrameReader::default();
            let mut read = feeder(bytes.clone(), step, true);
            let mut frames = Vec::new();
            while let Poll::Ready(Ok(Some(f))) = reader.poll_frame(&mut read) {
                frames.push(f);
            }
            assert_eq!(frames.len(), 3, "step {step}");
            assert_eq!(frames[0], (17, b"hello".to_vec()));
            assert_eq!(frames[1].1.len(), 70_000);
            assert_eq!(frames[2], (19, Vec::new()));
            assert!(reader.buf.len() <= READ_CHUNK, "bounded");
        }
    }

    #[test]
    fn pending_keeps_partial_frames_and_truncation_is_an_error() {
        let frame = encode(17, b"abcdef");
        let mut reader = FrameReader::default();
        let mut read = feeder(frame[..7].to_vec(), 2, false);
        assert!(reader.poll_frame(&mut read).is_pending());
        let mut rest = feeder(frame[7..].to_vec(), 2, false);
        let got = reader.poll_frame(&mut rest);
        assert!(matches!(got, Poll::Ready(Ok(Some((17, p)))) if p == b"abcdef"));
        let mut cut = FrameReader::default();
        let mut read = feeder(frame[..4].to_vec(), 4, true);
        let got = cut.poll_frame(&mut read);
        assert!(matches!(got, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn a_lying_length_is_refused_before_anything_is_buffered_for_it() {
        let mut head = vec![17u8];
        head.extend((MAX_FRAME + 1).to_le_bytes());
        let mut reader = FrameReader::default();
        let mut read = feeder(head, 64, false);
        let got = reader.poll_frame(&mut read);
        assert!(matches!(got, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::InvalidData));
        let mut clean = FrameReader::default();
        assert!(matches!(
            clean.poll_frame(feeder(Vec::new(), 1, true)),
            Poll::Ready(Ok(None))
        ));
        let mut failing = FrameReader::default();
        let got = failing.poll_frame(|_| Poll::Ready(Err(VsockError::Reset)));
        assert!(matches!(got, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset));
    }
}
