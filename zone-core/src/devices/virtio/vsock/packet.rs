//! virtio-vsock packet headers (virtio 1.x spec 5.10.6): encoding and strict decoding.

/// Host CID (the VMM).
pub(crate) const HOST_CID: u64 = 2;
/// Size of a packet header.
pub(crate) const HEADER_LEN: usize = 44;
/// Stream sockets, the only type supported.
pub(crate) const TYPE_STREAM: u16 = 1;
/// Largest payload a guest packet may carry (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub(crate) const MAX_PAYLOAD: u32 = 64 << 10;
/// SHUTDOWN flag: the sender will receive no more.
pub(crate) const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub(crate) const SHUTDOWN_SEND: u32 = 2;

/// Packet operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) src_cid: u64,
    pub(crate) dst_cid: u64,
    pub(crate) src_port: u32,
    pub(crate) dst_port: u32,
    pub(crate) len: u32,
    pub(crate) op: Op,
    pub(crate) flags: u32,
    pub(crate) buf_alloc: u32,
    pub(crate) fwd_cnt: u32,
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    Short,
    UnknownOp(u16),
    NotStream(u16),
    TooLong(u32),
}

impl Header {
    /// Decodes a header, refusing unknown ops, non-stream types and oversized payloads.
    pub(crate) fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        let b: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(HeaderError::Short)?;
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        let kind = u16_at(28);
        if kind != TYPE_STREAM {
            return Err(HeaderError::NotStream(kind));
        }
        let op_raw = u16_at(30);
        let op = Op::from_u16(op_raw).ok_or(HeaderError::UnknownOp(op_raw))?;
        let len = u32_at(24);
        if len > MAX_PAYLOAD {
            return Err(HeaderError::TooLong(len));
        }
        Ok(Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len,
            op,
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }

    /// Encodes the header.
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        b[30..32].copy_from_slice(&(self.op as u16).to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 49152,
            len: 5,
            op: Op::Rw,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 77,
        }
    }

    #[test]
    fn round_trips_and_refuses_bad_headers() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        let mut b = h.encode();
        b[30] = 9;
        assert_eq!(Header::decode(&b), Err(HeaderError::UnknownOp(9)));
        let mut b = h.encode();
        b[28] = 2;
        assert_eq!(Header::decode(&b), Err(HeaderError::NotStream(2)));
        let mut b = h.encode();
        b[24..28].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(
            Header::decode(&b),
            Err(HeaderError::TooLong(MAX_PAYLOAD + 1))
        );
        assert_eq!(Header::decode(&h.encode()[..43]), Err(HeaderError::Short));
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = Header::decode(&bytes);
        }
    }
}
