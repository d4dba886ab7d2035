//! Disks for Linux zones: raw images attached as virtio-blk devices.

use crate::devices::virtio::blk::{Block, BlockError};
use std::path::PathBuf;

/// A raw disk image for a Linux zone. Disks appear in the guest as `/dev/vda`, `/dev/vdb`, ...
/// in the order they were added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    path: PathBuf,
    read_only: bool,
    id: String,
}

/// Why a disk could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image is not usable as a disk.
    #[error("disk image {path}: {source}")]
    Image {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: BlockError,
    },
}

impl Disk {
    /// A raw image (its size must be a multiple of 512 bytes), writable by the guest.
    pub fn raw(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            id: String::new(),
        }
    }

    /// Makes the disk read-only: the guest sees a read-only device and its writes fail.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets the serial the guest reads (`VIRTIO_BLK_T_GET_ID`), at most 20 bytes.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Opens the image (read-only when the disk is) and builds the device.
    pub(crate) fn open(&self) -> Result<Block, DiskError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .open(&self.path)
            .map_err(|source| DiskError::Open {
                path: self.path.clone(),
                source,
            })?;
        Block::new(file, self.read_only, &self.id).map_err(|source| DiskError::Image {
            path: self.path.clone(),
            source,
        })
    }
}
