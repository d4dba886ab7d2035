//! virtio-blk (device id 2): a raw disk image as the guest's block device.
//!
//! One request queue. Each descriptor chain is handled in three steps, kept apart so that the
//! guest-facing part can be tested and fuzzed on its own:
//!
//! 1. [`parse_request`] reads the chain and validates everything the guest controls (chain shape,
//!    buffer directions and bounds, lengths, sector range) without touching the disk;
//! 2. [`Disk::execute`] performs a validated [`Request`] with positioned reads and writes through
//!    a bounded bounce buffer;
//! 3. [`Disk::serve`] writes the status byte and returns the used length, which
//!    [`BlockQueue`] puts on the used ring before raising the interrupt once per batch.
//!
//! A request that fails validation completes with `VIRTIO_BLK_S_IOERR` (or `UNSUPP` for an unknown
//! type) when the chain has somewhere to put a status byte, and is dropped otherwise. Guest memory
//! is written only inside descriptors the guest marked device-writable.

use super::blk_stats::{BlockStats, Served};
use crate::device::{
    ActivateError, Activation, DeviceWorker, Interrupt, QueueHandler, QueueWorker,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice, read_config_bytes,
};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// virtio device id of a block device.
const DEVICE_TYPE: u32 = 2;
/// One request queue of up to 256 entries.
const QUEUE_SIZES: [u16; 1] = [256];
/// Bytes per sector (the unit of `capacity` and of request sectors).
pub(crate) const SECTOR_SIZE: u64 = 512;
/// Largest data buffer (one descriptor) a request may carry: config `size_max`.
pub(crate) const SIZE_MAX: u32 = 1 << 20;
/// Most data buffers one request may carry: config `seg_max`.
pub(crate) const SEG_MAX: u32 = 126;
/// Most data bytes one request may carry.
const MAX_DATA: u64 = SIZE_MAX as u64 * SEG_MAX as u64;
/// Most descriptors in a chain: header, `SEG_MAX` data buffers, status.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Size of the request header (`struct virtio_blk_outhdr`).
const HEADER_LEN: usize = 16;
/// Size of the device id GET_ID returns.
const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Largest size of the bounce buffer data passes through between the image and guest memory.
const BOUNCE_LEN: usize = 256 << 10;
/// Bytes of `struct virtio_blk_config` the device fills: capacity, size_max, seg_max.
const CONFIG_LEN: usize = 16;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The size of the image could not be read.
    #[error(
        "cannot read the size of the disk image: {0}; pass an open regular file or block device"
    )]
    Size(#[source] std::io::Error),
    /// The image is a directory.
    #[error("the disk image is a directory; pass a raw disk image file or a block device")]
    Directory,
    /// The image does not hold a whole number of sectors.
    #[error(
        "the disk image is {len} bytes, not a multiple of the 512-byte sector size; \
         pad it to a whole number of sectors (e.g. `truncate -s %512 IMAGE`)"
    )]
    PartialSector {
        /// Size of the image in bytes.
        len: u64,
    },
    /// The device id does not fit in the 20 bytes GET_ID returns.
    #[error("the disk id {id:?} is {len} bytes long; use an id of at most 20 bytes")]
    IdTooLong {
        /// The id given.
        id: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// What request validation needs to know about the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DiskInfo {
    /// Size of the disk in sectors.
    pub(crate) capacity: u64,
    /// Whether writes (and flushes) are refused.
    pub(crate) read_only: bool,
}

/// The request types the device serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestType {
    /// Read sectors into the guest's buffers.
    In,
    /// Write the guest's buffers to sectors.
    Out,
    /// Make written data durable.
    Flush,
    /// Return the device id.
    GetId,
}

/// One guest buffer of a request's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Guest address of the buffer.
    pub(crate) addr: GuestAddress,
    /// Its length in bytes (at most [`SIZE_MAX`]).
    pub(crate) len: u32,
}

/// A request that passed validation: every buffer lies in guest memory with the right direction,
/// and the sectors it covers lie on the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// What to do.
    pub(crate) kind: RequestType,
    /// First sector (IN and OUT).
    pub(crate) sector: u64,
    /// The data buffers, in order.
    pub(crate) segments: Vec<Segment>,
    /// Total bytes of the data buffers.
    pub(crate) data_len: u64,
    /// Where the status byte goes.
    pub(crate) status: GuestAddress,
}

/// Why a chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestError {
    /// The last descriptor is missing, not device-writable, empty or outside guest memory: there
    /// is nowhere to put the status.
    NoStatus,
    /// The status descriptor is longer than the one status byte.
    StatusLength,
    /// The chain ended on a descriptor that still names a next one (a loop, or a next index
    /// outside the table).
    Broken,
    /// More descriptors than a header, [`SEG_MAX`] data buffers and a status.
    TooManyDescriptors,
    /// The first descriptor is not a readable 16-byte header in guest memory.
    BadHeader,
    /// A request type the device does not implement.
    Unsupported,
    /// A write or flush to a read-only disk.
    ReadOnly,
    /// A data buffer whose direction does not match the request (or data on a flush).
    WrongDirection,
    /// A data buffer longer than [`SIZE_MAX`] or outside guest memory.
    BadBuffer,
    /// A data length that is not a whole number of sectors.
    PartialSector,
    /// Sectors beyond the end of the disk (or a range that overflows).
    OutOfRange,
}

impl RequestError {
    /// The status a refused request completes with.
    pub(crate) fn status(self) -> u8 {
        match self {
            Self::Unsupported => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A refused chain: why, and where its status byte goes if it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// Device-writable address of the status byte, if the chain has a usable one.
    pub(crate) status: Option<GuestAddress>,
    /// What was wrong.
    pub(crate) error: RequestError,
}

/// Reads and validates the request in `chain`, whose buffers lie in `mem`. Pure: touches neither
/// the disk nor guest memory beyond reading descriptors and the header.
pub(crate) fn parse_request<M, T>(
    mem: &M,
    mut chain: DescriptorChain<T>,
    info: &DiskInfo,
) -> Result<Request, Refused>
where
    M: GuestMemory + ?Sized,
    T: Deref,
    T::Target: GuestMemory,
{
    // Keep at most MAX_DESCRIPTORS + 1 descriptors; a longer chain is still walked (the iterator
    // bounds it by the table size) to find its last descriptor, which is the status.
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut last = None;
    for desc in chain.by_ref() {
        if descs.len() <= MAX_DESCRIPTORS {
            descs.push(desc);
        }
        last = Some(desc);
    }
    let refuse = |status, error| Refused { status, error };
    let Some(last) = last else {
        return Err(refuse(None, RequestError::NoStatus));
    };
    if !last.is_write_only()
        || last.len() == 0
        || !mem.check_range(last.addr(), 1, Permissions::Write)
    {
        return Err(refuse(None, RequestError::NoStatus));
    }
    let status = last.addr();
    let refuse = |error| Refused {
        status: Some(status),
        error,
    };
    if last.has_next() {
        return Err(refuse(RequestError::Broken));
    }
    if last.len() != 1 {
        return Err(refuse(RequestError::StatusLength));
    }
    if descs.len() > MAX_DESCRIPTORS {
        return Err(refuse(RequestError::TooManyDescriptors));
    }
    let [header, data @ .., _status] = descs.as_slice() else {
        return Err(refuse(RequestError::BadHeader));
    };
    let mut raw = [0u8; HEADER_LEN];
    if header.is_write_only()
        || header.len() as usize != HEADER_LEN
        || mem.read_slice(&mut raw, header.addr()).is_err()
    {
        return Err(refuse(RequestError::BadHeader));
    }
    let [t0, t1, t2, t3, _, _, _, _, s @ ..] = raw;
    let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes(s);
    let (kind, writes_guest) = match request_type {
        VIRTIO_BLK_T_IN => (RequestType::In, true),
        VIRTIO_BLK_T_OUT => (RequestType::Out, false),
        VIRTIO_BLK_T_FLUSH => (RequestType::Flush, false),
        VIRTIO_BLK_T_GET_ID => (RequestType::GetId, true),
        _ => return Err(refuse(RequestError::Unsupported)),
    };
    if info.read_only && matches!(kind, RequestType::Out | RequestType::Flush) {
        return Err(refuse(RequestError::ReadOnly));
    }
    if kind == RequestType::Flush && !data.is_empty() {
        return Err(refuse(RequestError::WrongDirection));
    }
    let access = if writes_guest {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut segments = Vec::with_capacity(data.len());
    let mut data_len = 0u64;
    for d in data {
        if d.is_write_only() != writes_guest {
            return Err(refuse(RequestError::WrongDirection));
        }
        if d.len() > SIZE_MAX || !mem.check_range(d.addr(), d.len() as usize, access) {
            return Err(refuse(RequestError::BadBuffer));
        }
        data_len += u64::from(d.len());
        segments.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
    }
    // Implied by the per-buffer and descriptor-count limits; checked in its own right anyway.
    if data_len > MAX_DATA {
        return Err(refuse(RequestError::BadBuffer));
    }
    if matches!(kind, RequestType::In | RequestType::Out) {
        if !data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(refuse(RequestError::PartialSector));
        }
        let sectors = data_len / SECTOR_SIZE;
        if sector
            .checked_add(sectors)
            .is_none_or(|end| end > info.capacity)
        {
            return Err(refuse(RequestError::OutOfRange));
        }
    }
    Ok(Request {
        kind,
        sector,
        segments,
        data_len,
        status,
    })
}

/// The disk image of an active device and what serving requests on it needs.
pub(crate) struct Disk {
    /// The image, read and written at explicit offsets only.
    file: File,
    /// Its size and mode.
    info: DiskInfo,
    /// What GET_ID returns.
    id: [u8; ID_LEN],
    /// Sync after every write: the driver did not negotiate VIRTIO_BLK_F_FLUSH.
    write_through: bool,
    /// Grows with the largest chunk served so far, up to [`BOUNCE_LEN`].
    bounce: Vec<u8>,
    /// What was served, for the zone's metrics.
    stats: Arc<BlockStats>,
}

impl Disk {
    /// Serves the disk `file` as described by `info`, answering GET_ID with `id`.
    pub(crate) fn new(file: File, info: DiskInfo, id: [u8; ID_LEN], write_through: bool) -> Self {
        Self {
            file,
            info,
            id,
            write_through,
            bounce: Vec::new(),
            stats: Arc::default(),
        }
    }

    /// Counts what this disk serves in `stats`.
    pub(crate) fn with_stats(mut self, stats: Arc<BlockStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Handles one chain: validates it, performs it and writes its status. Returns the used
    /// length: the bytes written into the guest's buffers, status byte included.
    pub(crate) fn serve<M, T>(&mut self, mem: &M, chain: DescriptorChain<T>) -> u32
    where
        M: GuestMemory + ?Sized,
        T: Deref,
        T::Target: GuestMemory,
    {
        let (status_addr, status, written) = match parse_request(mem, chain, &self.info) {
            Ok(request) => {
                let (status, written) = self.execute(mem, &request);
                self.stats.count(match request.kind {
                    _ if status != VIRTIO_BLK_S_OK as u8 => Served::Failed,
                    RequestType::In => Served::Read(request.data_len),
                    RequestType::Out => Served::Write(request.data_len),
                    RequestType::Flush => Served::Flush,
                    RequestType::GetId => Served::Other,
                });
                (Some(request.status), status, written)
            }
            Err(refused) => {
                self.stats.count(Served::Refused);
                (refused.status, refused.error.status(), 0)
            }
        };
        let status_written =
            status_addr.is_some_and(|addr| mem.write_slice(&[status], addr).is_ok());
        written.saturating_add(u32::from(status_written))
    }

    /// Performs a validated request. Returns its status and the number of bytes written into
    /// the guest's buffers.
    pub(crate) fn execute<M: GuestMemory + ?Sized>(&mut self, mem: &M, req: &Request) -> (u8, u32) {
        let result = match req.kind {
            RequestType::In => self.read(mem, req),
            RequestType::Out => self.write(mem, req).map(|()| 0),
            RequestType::Flush => self.file.sync_data().map(|()| 0).map_err(|_| 0),
            RequestType::GetId => {
                let len = req.data_len.min(ID_LEN as u64) as usize;
                copy_to_guest(mem, &req.segments, &self.id[..len]).map(|()| len as u32)
            }
        };
        match result {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(written) => (VIRTIO_BLK_S_IOERR as u8, written),
        }
    }

    /// Byte offset of `sector` in the image (validated requests never overflow it).
    fn offset(&self, sector: u64) -> Result<u64, u32> {
        debug_assert!(sector <= self.info.capacity);
        sector.checked_mul(SECTOR_SIZE).ok_or(0)
    }

    /// IN: image to guest, through the bounce buffer. Ok or Err carry the bytes written so far.
    fn read<M: GuestMemory + ?Sized>(&mut self, mem: &M, req: &Request) -> Result<u32, u32> {
        let mut pos = self.offset(req.sector)?;
        let mut done = 0u32;
        for seg in &req.segments {
            let mut seg_done = 0u32;
            while seg_done < seg.len {
                let n = ((seg.len - seg_done) as usize).min(BOUNCE_LEN);
                let buf = bounce(&mut self.bounce, n);
                self.file.read_exact_at(buf, pos).map_err(|_| done)?;
                let addr = seg.addr.checked_add(u64::from(seg_done)).ok_or(done)?;
                mem.write_slice(buf, addr).map_err(|_| done)?;
                // n <= SIZE_MAX and the total is at most MAX_DATA, which fits in u32.
                seg_done += n as u32;
                done += n as u32;
                pos += n as u64;
            }
        }
        Ok(done)
    }

    /// OUT: guest to image, through the bounce buffer.
    fn write<M: GuestMemory + ?Sized>(&mut self, mem: &M, req: &Request) -> Result<(), u32> {
        let mut pos = self.offset(req.sector)?;
        for seg in &req.segments {
            let mut seg_done = 0u32;
            while seg_done < seg.len {
                let n = ((seg.len - seg_done) as usize).min(BOUNCE_LEN);
                let buf = bounce(&mut self.bounce, n);
                let addr = seg.addr.checked_add(u64::from(seg_done)).ok_or(0u32)?;
                mem.read_slice(buf, addr).map_err(|_| 0u32)?;
                self.file.write_all_at(buf, pos).map_err(|_| 0u32)?;
                seg_done += n as u32;
                pos += n as u64;
            }
        }
        if self.write_through {
            self.file.sync_data().map_err(|_| 0u32)?;
        }
        Ok(())
    }
}

/// The first `n` (at most [`BOUNCE_LEN`]) bytes of `buf`, grown as needed.
fn bounce(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n {
        buf.resize(n, 0);
    }
    &mut buf[..n]
}

/// Copies `bytes` into the guest buffers `segments`, in order. Err carries the bytes written.
fn copy_to_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
    mut bytes: &[u8],
) -> Result<(), u32> {
    let mut written = 0u32;
    for seg in segments {
        if bytes.is_empty() {
            break;
        }
        let n = (seg.len as usize).min(bytes.len());
        mem.write_slice(&bytes[..n], seg.addr)
            .map_err(|_| written)?;
        written += n as u32;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// The queue of an active block device, driven by its worker thread.
pub(crate) struct BlockQueue {
    /// Guest memory.
    mem: GuestMemoryMmap,
    /// The request queue.
    queue: Queue,
    /// Where requests go.
    disk: Disk,
    /// Raised after each batch of completions.
    interrupt: Arc<Interrupt>,
}

impl BlockQueue {
    /// Serves every request the driver has made available; returns how many completed.
    pub(crate) fn process(&mut self) -> usize {
        let mut completed = 0;
        let mut empty_rounds = 0;
        loop {
            // Suppress kicks while draining; re-enable and look again so none is missed.
            let _ = self.queue.disable_notification(&self.mem);
            let mut popped = 0;
            while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
                popped += 1;
                let head = chain.head_index();
                let len = self.disk.serve(&self.mem, chain);
                // Fails only for a head index outside the queue: nothing to complete then.
                if self.queue.add_used(&self.mem, head, len).is_ok() {
                    completed += 1;
                }
            }
            empty_rounds = if popped == 0 { empty_rounds + 1 } else { 0 };
            // More available after re-enabling: a request raced the re-enable, so go round again.
            // Two empty rounds in a row mean an available index nothing can be popped from (a
            // broken ring): stop rather than spin.
            match self.queue.enable_notification(&self.mem) {
                Ok(true) if empty_rounds < 2 => continue,
                _ => break,
            }
        }
        if completed > 0 && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.notify_queue(0);
        }
        completed
    }
}

impl QueueHandler for BlockQueue {
    fn queue_notified(&mut self, _index: usize) {
        self.process();
    }
}

/// A virtio block device backed by a raw disk image.
pub(crate) struct Block {
    /// The image; each activation gets its own duplicate.
    file: File,
    /// Its size and mode.
    info: DiskInfo,
    /// What GET_ID returns (NUL-padded).
    id: [u8; ID_LEN],
    /// The little-endian `struct virtio_blk_config` prefix.
    config: [u8; CONFIG_LEN],
    /// What its activations served.
    stats: Arc<BlockStats>,
}

impl Block {
    /// Serves `file` (a raw image of whole 512-byte sectors, or a block device) to the guest,
    /// read-only if `read_only`. `id` (at most 20 bytes) is what the guest reads with GET_ID
    /// (Linux shows it as `/sys/block/vdX/serial`).
    pub(crate) fn new(file: File, read_only: bool, id: &str) -> Result<Self, BlockError> {
        if file.metadata().map_err(BlockError::Size)?.is_dir() {
            return Err(BlockError::Directory);
        }
        // Seeking to the end sizes block devices too (their metadata length is 0).
        let len = (&file).seek(SeekFrom::End(0)).map_err(BlockError::Size)?;
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::PartialSector { len });
        }
        if id.len() > ID_LEN {
            return Err(BlockError::IdTooLong {
                id: id.to_owned(),
                len: id.len(),
            });
        }
        let mut id_bytes = [0u8; ID_LEN];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        let capacity = len / SECTOR_SIZE;
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Self {
            file,
            info: DiskInfo {
                capacity,
                read_only,
            },
            id: id_bytes,
            config,
            stats: Arc::default(),
        })
    }

    /// The device's counters (registered with the zone under the device's name).
    pub(crate) fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }
}

impl Block {
    /// The queue handler for `a` (the worker without its thread glue, for tests and fuzzing).
    pub(crate) fn handler(&mut self, a: Activation) -> Result<BlockQueue, ActivateError> {
        let [queue]: [Queue; 1] = a
            .queues
            .try_into()
            .map_err(|_| ActivateError("virtio-blk needs exactly one queue".into()))?;
        // The handler gets its own descriptor so that the device can be reset and started again;
        // positioned I/O means the shared file offset does not matter.
        let file = self.file.try_clone().map_err(|e| {
            ActivateError(format!("cannot duplicate the disk image descriptor: {e}"))
        })?;
        let write_through = a.features & (1 << VIRTIO_BLK_F_FLUSH) == 0;
        let disk =
            Disk::new(file, self.info, self.id, write_through).with_stats(self.stats.clone());
        Ok(BlockQueue {
            mem: a.mem,
            queue,
            disk,
            interrupt: a.interrupt,
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX);
        if self.info.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn syscalls(&self) -> Vec<i64> {
        vec![
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
        ]
    }

    fn activate(&mut self, mut a: Activation) -> Result<Box<dyn DeviceWorker>, ActivateError> {
        let events = std::mem::take(&mut a.queue_events);
        Ok(Box::new(QueueWorker::new(self.handler(a)?, events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EventFd;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const R: u16 = 0;
    /// Guest memory of the tests; a mock queue of up to 256 entries sits at 0.
    const MEM: usize = 0x4_0000;
    const HDR: u64 = 0x4000;
    const STATUS: u64 = 0x4100;
    const DATA: u64 = 0x8000;
    const SECTORS: u64 = 64;

    /// A disk image in the temp directory, removed on drop.
    struct Image(PathBuf);

    impl Image {
        fn new(contents: &[u8]) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("zone-blk-{}-{n}.img", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }

        /// An image of `SECTORS` sectors, byte `i` holding `i * 7 % 251`.
        fn patterned() -> Self {
            Self::new(
                &(0..SECTORS * SECTOR_SIZE)
                    .map(|i| (i * 7 % 251) as u8)
                    .collect::<Vec<_>>(),
            )
        }

        fn block(&self, read_only: bool) -> Block {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.0)
                .unwrap();
            Block::new(file, read_only, "zone-disk").unwrap()
        }

        fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }
    }

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
        let mut raw = [0u8; HEADER_LEN];
        raw[..4].copy_from_slice(&request_type.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// What one batch did.
    struct Outcome {
        /// Used length of each chain, in order.
        used: Vec<u32>,
        /// Interrupts raised.
        irqs: u64,
    }

    /// Makes `chains` available on a fresh queue at 0, activates `block` and kicks it once.
    fn run(block: &mut Block, mem: &GuestMemoryMmap, chains: &[&[RawDescriptor]]) -> Outcome {
        let mock = MockSplitQueue::create(mem, GuestAddress(0), 256);
        let mut table = Vec::new();
        for chain in chains {
            let first = table.len() as u16;
            for (i, d) in chain.iter().enumerate() {
                let d = SplitDescriptor::from(*d);
                let more = i + 1 < chain.len();
                let flags = if more {
                    d.flags() | VRING_DESC_F_NEXT as u16
                } else {
                    d.flags()
                };
                let next = if more { first + i as u16 + 1 } else { 0 };
                table.push(RawDescriptor::from(SplitDescriptor::new(
                    d.addr().0,
                    d.len(),
                    flags,
                    next,
                )));
            }
        }
        mock.add_desc_chains(&table, 0).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let activation = Activation {
            mem: mem.clone(),
            queues: vec![mock.create_queue().unwrap()],
            interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            features: block.features(),
            queue_events: Vec::new(),
        };
        let mut handler = block.handler(activation).unwrap();
        handler.queue_notified(0);
        let count = mock.used().idx().load();
        let used = (0..usize::from(count))
            .map(|i| mock.used().ring().ref_at(i).unwrap().load().len())
            .collect();
        Outcome {
            used,
            irqs: irq.read().unwrap_or(0),
        }
    }

    /// Runs one chain; returns its used length.
    fn run_one(block: &mut Block, mem: &GuestMemoryMmap, chain: &[RawDescriptor]) -> u32 {
        let out = run(block, mem, &[chain]);
        assert_eq!(out.used.len(), 1, "the chain is completed");
        out.used[0]
    }

    fn write_chain(segments: &[(u64, u32)]) -> Vec<RawDescriptor> {
        let mut chain = vec![desc(HDR, 16, R)];
        chain.extend(segments.iter().map(|&(addr, len)| desc(addr, len, R)));
        chain.push(desc(STATUS, 1, W));
        chain
    }

    fn read_chain(segments: &[(u64, u32)]) -> Vec<RawDescriptor> {
        let mut chain = vec![desc(HDR, 16, R)];
        chain.extend(segments.iter().map(|&(addr, len)| desc(addr, len, W)));
        chain.push(desc(STATUS, 1, W));
        chain
    }

    fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    #[test]
    fn writes_and_reads_round_trip_at_several_sectors() {
        let image = Image::patterned();
        let mut block = image.block(false);
        let mem = memory();
        let mut expected = image.contents();
        // (sector, data buffers): single sectors, a buffer split over descriptors, the last sectors.
        let cases: [(u64, &[(u64, u32)]); 4] = [
            (0, &[(DATA, 512)]),
            (5, &[(DATA, 1024), (DATA + 0x1000, 512)]),
            (17, &[(DATA + 0x10, 512), (DATA + 0x800, 2048)]),
            (SECTORS - 2, &[(DATA, 1024)]),
        ];
        for (round, (sector, segments)) in cases.into_iter().enumerate() {
            let mut written = Vec::new();
            for &(addr, len) in segments {
                let bytes: Vec<u8> = (0..len)
                    .map(|i| (i as usize * 13 + round * 31 + 1) as u8)
                    .collect();
                mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
                written.extend(bytes);
            }
            header(&mem, VIRTIO_BLK_T_OUT, sector);
            assert_eq!(
                run_one(&mut block, &mem, &write_chain(segments)),
                1,
                "OUT writes only the status"
            );
            assert_eq!(status(&mem), OK);
            let at = (sector * SECTOR_SIZE) as usize;
            expected[at..at + written.len()].copy_from_slice(&written);
            assert_eq!(image.contents(), expected, "sector {sector}");

            // Read back into other buffers.
            let read_segments: Vec<(u64, u32)> = segments
                .iter()
                .map(|&(addr, len)| (addr + 0x10000, len))
                .collect();
            header(&mem, VIRTIO_BLK_T_IN, sector);
            let used = run_one(&mut block, &mem, &read_chain(&read_segments));
            assert_eq!(
                used as usize,
                written.len() + 1,
                "IN reports data and status"
            );
            assert_eq!(status(&mem), OK);
            let read: Vec<u8> = read_segments
                .iter()
                .flat_map(|&(addr, len)| guest_bytes(&mem, addr, len as usize))
                .collect();
            assert_eq!(read, written);
        }
        // A sector nobody wrote reads back the original image.
        header(&mem, VIRTIO_BLK_T_IN, 40);
        run_one(&mut block, &mem, &read_chain(&[(DATA, 512)]));
        assert_eq!(guest_bytes(&mem, DATA, 512), expected[40 * 512..41 * 512]);
        // The zone's metrics count what was served.
        let bytes: u64 = cases
            .iter()
            .flat_map(|(_, segments)| segments.iter().map(|&(_, len)| u64::from(len)))
            .sum();
        assert_eq!(
            counters(&block),
            [
                ("reads", 5),
                ("read_bytes", bytes + 512),
                ("writes", 4),
                ("written_bytes", bytes),
                ("flushes", 0),
                ("errors", 0),
                ("refused", 0)
            ]
        );
    }

    fn counters(block: &Block) -> Vec<(&'static str, u64)> {
        use crate::device::DeviceControl;
        block.stats().counters()
    }

    #[test]
    fn read_only_device_refuses_writes_and_flushes() {
        let image = Image::patterned();
        let before = image.contents();
        let mut block = image.block(true);
        assert_ne!(block.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mem = memory();
        mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 3);
        assert_eq!(run_one(&mut block, &mem, &write_chain(&[(DATA, 512)])), 1);
        assert_eq!(status(&mem), IOERR);
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        run_one(&mut block, &mem, &[desc(HDR, 16, R), desc(STATUS, 1, W)]);
        assert_eq!(status(&mem), IOERR);
        assert_eq!(image.contents(), before, "the image is unchanged");
        // Reads still work.
        header(&mem, VIRTIO_BLK_T_IN, 3);
        assert_eq!(run_one(&mut block, &mem, &read_chain(&[(DATA, 512)])), 513);
        assert_eq!(status(&mem), OK);
        assert_eq!(guest_bytes(&mem, DATA, 512), before[3 * 512..4 * 512]);
        let refused = counters(&block).into_iter().find(|c| c.0 == "refused");
        assert_eq!(refused, Some(("refused", 2)), "{:?}", counters(&block));
    }

    #[test]
    fn out_of_range_and_overflowing_sectors_fail() {
        let image = Image::patterned();
        let before = image.contents();
        let mut block = image.block(false);
        let mem = memory();
        mem.write_slice(&[0x55; 1024], GuestAddress(DATA)).unwrap();
        for (sector, len) in [
            (SECTORS, 512),
            (SECTORS - 1, 1024),
            (u64::MAX, 512),
            (u64::MAX - 1, 1024),
            (1 << 55, 512),
        ] {
            for (request_type, chain) in [
                (VIRTIO_BLK_T_IN, read_chain(&[(DATA, len)])),
                (VIRTIO_BLK_T_OUT, write_chain(&[(DATA, len)])),
            ] {
                header(&mem, request_type, sector);
                assert_eq!(
                    run_one(&mut block, &mem, &chain),
                    1,
                    "sector {sector}, {len} bytes"
                );
                assert_eq!(status(&mem), IOERR, "sector {sector}, {len} bytes");
                assert_eq!(
                    guest_bytes(&mem, DATA, 1024),
                    [0x55; 1024],
                    "no data was read"
                );
            }
        }
        assert_eq!(image.contents(), before);
    }

    #[test]
    fn lengths_that_are_not_whole_sectors_fail() {
        let image = Image::patterned();
        let before = image.contents();
        let mut block = image.block(false);
        let mem = memory();
        for segments in [
            &[(DATA, 513)][..],
            &[(DATA, 100)],
            &[(DATA, 256), (DATA + 0x1000, 512)],
        ] {
            for (request_type, chain) in [
                (VIRTIO_BLK_T_IN, read_chain(segments)),
                (VIRTIO_BLK_T_OUT, write_chain(segments)),
            ] {
                header(&mem, request_type, 0);
                assert_eq!(run_one(&mut block, &mem, &chain), 1);
                assert_eq!(status(&mem), IOERR);
            }
        }
        assert_eq!(
            guest_bytes(&mem, DATA, 513),
            [0; 513],
            "nothing was read into the guest"
        );
        assert_eq!(image.contents(), before);
    }

    #[test]
    fn flush_succeeds() {
        let image = Image::patterned();
        let mut block = image.block(false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            run_one(&mut block, &mem, &[desc(HDR, 16, R), desc(STATUS, 1, W)]),
            1
        );
        assert_eq!(status(&mem), OK);
        // A flush carries no data.
        let chain = [desc(HDR, 16, R), desc(DATA, 512, R), desc(STATUS, 1, W)];
        run_one(&mut block, &mem, &chain);
        assert_eq!(status(&mem), IOERR);
    }

    #[test]
    fn get_id_returns_the_padded_id() {
        let image = Image::patterned();
        let mut block = image.block(false);
        let mem = memory();
        mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(run_one(&mut block, &mem, &read_chain(&[(DATA, 20)])), 21);
        assert_eq!(status(&mem), OK);
        let mut expected = [0u8; 20];
        expected[..9].copy_from_slice(b"zone-disk");
        assert_eq!(guest_bytes(&mem, DATA, 20), expected);
        assert_eq!(
            guest_bytes(&mem, DATA + 20, 12),
            [0xff; 12],
            "nothing past the id"
        );
        // Split over two buffers, with room to spare: still exactly 20 bytes.
        mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
        assert_eq!(
            run_one(&mut block, &mem, &read_chain(&[(DATA, 4), (DATA + 4, 28)])),
            21
        );
        assert_eq!(guest_bytes(&mem, DATA, 20), expected);
        assert_eq!(guest_bytes(&mem, DATA + 20, 12), [0xff; 12]);
        // An id longer than 20 bytes is refused.
        let file = std::fs::File::open(&image.0).unwrap();
        let err = Block::new(file, false, "an-id-longer-than-twenty")
            .err()
            .unwrap();
        assert!(err.to_string().contains("at most 20 bytes"), "{err}");
    }

    #[test]
    fn unknown_types_are_unsupported() {
        let image = Image::patterned();
        let mut block = image.block(false);
        let mem = memory();
        for request_type in [2, 11, 13, 0x8000_0000, u32::MAX] {
            header(&mem, request_type, 0);
            assert_eq!(run_one(&mut block, &mem, &read_chain(&[(DATA, 512)])), 1);
            assert_eq!(status(&mem), UNSUPP, "type {request_type}");
        }
    }

    /// Chains with nowhere to put a status complete with nothing written but the used ring.
    #[test]
    fn chains_without_a_writable_status_write_nothing() {
        let image = Image::patterned();
        let before = image.contents();
        let mut block = image.block(false);
        let mem = memory();
        mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
        let chains: [(u32, Vec<RawDescriptor>); 5] = [
            // OUT whose last descriptor is data: no status descriptor at all.
            (VIRTIO_BLK_T_OUT, vec![desc(HDR, 16, R), desc(DATA, 512, R)]),
            // IN with a device-readable "status".
            (
                VIRTIO_BLK_T_IN,
                vec![desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, R)],
            ),
            // An empty status descriptor.
            (
                VIRTIO_BLK_T_IN,
                vec![desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 0, W)],
            ),
            // A status outside guest memory.
            (
                VIRTIO_BLK_T_IN,
                vec![desc(HDR, 16, R), desc(DATA, 512, W), desc(MEM as u64, 1, W)],
            ),
            // Only a header.
            (VIRTIO_BLK_T_FLUSH, vec![desc(HDR, 16, R)]),
        ];
        for (request_type, chain) in chains {
            header(&mem, request_type, 0);
            let snapshot = guest_bytes(&mem, 0x2000, MEM - 0x2000);
            assert_eq!(run_one(&mut block, &mem, &chain), 0);
            assert!(
                guest_bytes(&mem, 0x2000, MEM - 0x2000) == snapshot,
                "guest memory changed"
            );
        }
        assert_eq!(image.contents(), before);
    }

    #[test]
    fn config_space_and_identity() {
        let image = Image::patterned();
        let block = image.block(false);
        assert_eq!(block.device_type(), 2);
        assert_eq!(block.queue_max_sizes(), &[256]);
        let features = block.features();
        assert_eq!(
            features,
            VIRTIO_F_VERSION_1
                | VIRTIO_RING_F_EVENT_IDX
                | (1 << VIRTIO_BLK_F_FLUSH)
                | (1 << VIRTIO_BLK_F_SEG_MAX)
                | (1 << VIRTIO_BLK_F_SIZE_MAX)
        );
        let mut cfg = [0u8; 24];
        block.read_config(0, &mut cfg);
        assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), SECTORS);
        assert_eq!(u32::from_le_bytes(cfg[8..12].try_into().unwrap()), 1 << 20);
        assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), 126);
        assert_eq!(cfg[16..], [0; 8], "nothing else is offered");
        let mut word = [0u8; 4];
        block.read_config(12, &mut word);
        assert_eq!(u32::from_le_bytes(word), 126);
    }

    #[test]
    fn new_rejects_partial_sectors() {
        let image = Image::new(&[0; 1000]);
        let err = Block::new(std::fs::File::open(&image.0).unwrap(), false, "x")
            .err()
            .unwrap();
        assert!(
            matches!(err, BlockError::PartialSector { len: 1000 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("truncate -s %512"), "{err}");
        let empty = Image::new(&[]);
        assert!(Block::new(std::fs::File::open(&empty.0).unwrap(), true, "").is_ok());
        let dir = Block::new(std::fs::File::open(std::env::temp_dir()).unwrap(), true, "");
        assert!(matches!(dir, Err(BlockError::Directory)));
    }

    #[test]
    fn interrupt_is_raised_once_per_batch() {
        let image = Image::patterned();
        let mut block = image.block(false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 1);
        let a = read_chain(&[(DATA, 512)]);
        let b = [
            desc(HDR, 16, R),
            desc(DATA + 0x1000, 512, W),
            desc(STATUS + 1, 1, W),
        ];
        let out = run(&mut block, &mem, &[&a, &b]);
        assert_eq!(out.used, [513, 513]);
        assert_eq!(out.irqs, 1, "one interrupt for the batch");
        // Nothing available: no interrupt.
        assert_eq!(run(&mut block, &mem, &[]).irqs, 0);
    }

    /// An available index far ahead of the ring (nothing can be popped) does not spin the worker.
    #[test]
    fn broken_available_index_does_not_spin() {
        let image = Image::patterned();
        let mut block = image.block(false);
        let mem = memory();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        mock.avail().idx().store(1000);
        let activation = Activation {
            mem: mem.clone(),
            queues: vec![mock.create_queue().unwrap()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            features: block.features(),
            queue_events: Vec::new(),
        };
        let mut handler = block.handler(activation).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            handler.queue_notified(0);
            let _ = done.send(());
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the worker returned");
        assert_eq!(mock.used().idx().load(), 0);
    }

    /// The parser on its own: the shape of the chain decides, before any I/O.
    #[test]
    fn parse_validates_chain_shape() {
        let mem = memory();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 256);
        let info = DiskInfo {
            capacity: SECTORS,
            read_only: false,
        };
        let parse = |chain: &[RawDescriptor]| {
            parse_request(&mem, mock.build_desc_chain(chain).unwrap(), &info)
        };
        let refused = |error| {
            Err(Refused {
                status: Some(GuestAddress(STATUS)),
                error,
            })
        };
        header(&mem, VIRTIO_BLK_T_IN, 2);
        assert_eq!(
            parse(&read_chain(&[(DATA, 512), (DATA + 0x1000, 1024)])),
            Ok(Request {
                kind: RequestType::In,
                sector: 2,
                segments: vec![
                    Segment {
                        addr: GuestAddress(DATA),
                        len: 512
                    },
                    Segment {
                        addr: GuestAddress(DATA + 0x1000),
                        len: 1024
                    }
                ],
                data_len: 1536,
                status: GuestAddress(STATUS),
            })
        );
        let too_long = read_chain(&vec![(DATA, 512); SEG_MAX as usize + 1]);
        assert_eq!(parse(&too_long), refused(RequestError::TooManyDescriptors));
        let most = read_chain(&vec![(DATA, 512); 60]);
        assert!(parse(&most).is_ok(), "60 sectors over 60 buffers");
        assert_eq!(
            parse(&[desc(HDR, 16, W), desc(DATA, 512, W), desc(STATUS, 1, W)]),
            refused(RequestError::BadHeader)
        );
        assert_eq!(
            parse(&[desc(HDR, 15, R), desc(DATA, 512, W), desc(STATUS, 1, W)]),
            refused(RequestError::BadHeader)
        );
        assert_eq!(
            parse(&[desc(MEM as u64 - 8, 16, R), desc(STATUS, 1, W)]),
            refused(RequestError::BadHeader)
        );
        assert_eq!(
            parse(&[desc(STATUS, 1, W)]),
            refused(RequestError::BadHeader)
        );
        assert_eq!(
            parse(&write_chain(&[(DATA, 512)])),
            refused(RequestError::WrongDirection)
        );
        assert_eq!(
            parse(&read_chain(&[(DATA, SIZE_MAX + 512)])),
            refused(RequestError::BadBuffer)
        );
        assert_eq!(
            parse(&read_chain(&[(MEM as u64 - 512, 1024)])),
            refused(RequestError::BadBuffer)
        );
        assert_eq!(
            parse(&read_chain(&[(u64::MAX - 511, 512)])),
            refused(RequestError::BadBuffer)
        );
        assert_eq!(
            parse(&[desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 2, W)]),
            refused(RequestError::StatusLength)
        );
        // A loop: the chain never ends, but its last descriptor still gets the status.
        let looped = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(SplitDescriptor::new(
                STATUS,
                1,
                W | VRING_DESC_F_NEXT as u16,
                0,
            )),
        ];
        let chain = mock.build_multiple_desc_chains(&looped).unwrap();
        assert_eq!(
            parse_request(&mem, chain, &info),
            refused(RequestError::Broken)
        );
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let ro = DiskInfo {
            capacity: SECTORS,
            read_only: true,
        };
        let chain = mock.build_desc_chain(&write_chain(&[(DATA, 512)])).unwrap();
        assert_eq!(
            parse_request(&mem, chain, &ro),
            refused(RequestError::ReadOnly)
        );
    }

    /// An arbitrary chain for the property test as (address, length, device-writable) triples,
    /// biased towards well-formed requests so that many get past validation and do I/O: a header,
    /// data buffers mostly of one direction, and usually a one-byte status.
    fn any_chain() -> impl proptest::strategy::Strategy<Value = Vec<(u64, u32, bool)>> {
        use proptest::prelude::*;
        let addr =
            || prop_oneof![8 => 0x200u64..0x1_1000, 1 => Just(u64::MAX - 8), 1 => any::<u64>()];
        let header = (
            addr(),
            prop_oneof![8 => Just(16u32), 1 => any::<u32>()],
            proptest::bool::weighted(0.1),
        );
        let data_len = prop_oneof![
            (0u32..5).prop_map(|k| k * 512),
            Just(20),
            0u32..2048,
            any::<u32>()
        ];
        let data =
            proptest::collection::vec((addr(), data_len, proptest::bool::weighted(0.1)), 0..4);
        let status_len = prop_oneof![8 => Just(1u32), 1 => 0u32..3];
        let status =
            proptest::option::weighted(0.9, (addr(), status_len, proptest::bool::weighted(0.9)));
        (header, any::<bool>(), data, status).prop_map(|(header, into_guest, data, status)| {
            let data = data
                .into_iter()
                .map(|(a, len, flip)| (a, len, into_guest != flip));
            std::iter::once(header).chain(data).chain(status).collect()
        })
    }

    proptest::proptest! {
        /// Arbitrary chains never panic, and the device writes guest memory only inside
        /// descriptors marked device-writable (and the used ring).
        #[test]
        fn arbitrary_chains_write_only_writable_buffers(
            descs in any_chain(),
            request_type in proptest::prop_oneof![
                4 => proptest::sample::select(vec![0u32, 1, 4, 8]),
                1 => proptest::num::u32::ANY
            ],
            sector in proptest::prop_oneof![4 => 0u64..70, 1 => proptest::num::u64::ANY],
            read_only in proptest::bool::ANY,
        ) {
            const SMALL: usize = 0x1_0000;
            let image = Image::new(&[0x3c; (SECTORS * SECTOR_SIZE) as usize]);
            let mut block = image.block(read_only);
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), SMALL)]).unwrap();
            let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
            let raw: Vec<RawDescriptor> =
                descs.iter().map(|&(addr, len, w)| desc(addr, len, if w { W } else { R })).collect();
            // The header goes wherever the first descriptor points (if that is guest memory).
            let mut hdr = [0u8; HEADER_LEN];
            hdr[..4].copy_from_slice(&request_type.to_le_bytes());
            hdr[8..].copy_from_slice(&sector.to_le_bytes());
            let _ = mem.write_slice(&hdr, GuestAddress(descs[0].0));
            mock.build_desc_chain(&raw).unwrap();
            let before = guest_bytes(&mem, 0, SMALL);
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let activation = Activation {
                mem: mem.clone(),
                queues: vec![mock.create_queue().unwrap()],
                interrupt: Arc::new(Interrupt::new(irq)),
                features: block.features(),
                queue_events: Vec::new(),
            };
            block.handler(activation).unwrap().queue_notified(0);
            proptest::prop_assert_eq!(mock.used().idx().load(), 1);
            let used_len = mock.used().ring().ref_at(0).unwrap().load().len();
            let writable: u64 = descs.iter().filter(|d| d.2).map(|d| u64::from(d.1)).sum();
            proptest::prop_assert!(u64::from(used_len) <= writable);
            let used_ring = mock.used_addr().0..mock.used().end().0;
            let after = guest_bytes(&mem, 0, SMALL);
            for (i, (x, y)) in before.iter().zip(&after).enumerate() {
                let addr = i as u64;
                let allowed = used_ring.contains(&addr)
                    || descs.iter().any(|&(a, len, w)| w && addr >= a && addr - a < u64::from(len));
                proptest::prop_assert!(x == y || allowed, "wrote {addr:#x}");
            }
        }

        /// The fuzz entry point holds its own assertions on arbitrary bytes.
        #[test]
        fn fuzz_entry_point_accepts_arbitrary_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            crate::fuzzing::blk_request(&data);
        }
    }
}
