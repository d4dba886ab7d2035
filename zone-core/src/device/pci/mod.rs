//! PCI for device models: what a function implements ([`PciFunction`]), configuration space
//! with write masks and BARs ([`ConfigSpace`]), MSI-X emulation ([`Msix`]) and BAR placement
//! ([`BarAllocator`]). These are the parts a PCI device needs whatever it is (VFIO passthrough
//! in zone-gpu, virtio-pci later). A Linux zone gets its PCI bus (host bridge, ECAM window, MCFG
//! and DSDT description, BAR decoding) when an attachment on
//! [`Transport::Pci`](super::Transport::Pci) is granted; without one it boots with `pci=off`.
//!
//! Everything the guest sends (configuration accesses, table writes) is bounds-checked and
//! never panics; a fuzz target (`pci_config`) drives both with arbitrary access sequences.

mod bar;
mod config;
mod function;
mod msi_cap;
mod msix;
mod routed;

pub use bar::BarAllocator;
pub use config::{
    Bar, BarKind, CONFIG_SPACE_SIZE, ConfigChange, ConfigSpace, Header, command, reg,
};
pub use function::{BarMapping, PciFunction};
pub use msi_cap::{MSI_CAPABILITY_ID, RoutedMsi, msi_capability, msi_message};
pub use msix::{
    CAPABILITY_ID as MSIX_CAPABILITY_ID, Delivery, MAX_VECTORS, MsiMessage, Msix, TableChange,
};
pub use routed::RoutedMsix;

/// Why a PCI function could not be described as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A BAR's size is not a power of two of at least 16 bytes (4 for I/O) or too large for its
    /// kind.
    #[error("BAR {index}: size {size:#x} is not a power of two that its kind can hold")]
    BarSize {
        /// The BAR.
        index: usize,
        /// The size asked for.
        size: u64,
    },
    /// No BAR slot there (0-5; a 64-bit BAR takes two).
    #[error("BAR {index}: no such slot (0-5, a 64-bit BAR takes two)")]
    BarIndex {
        /// The BAR.
        index: usize,
    },
    /// The slot is already used.
    #[error("BAR slot {index} is already taken")]
    BarTaken {
        /// The slot.
        index: usize,
    },
    /// An address that is not aligned to the BAR's size or does not fit its kind.
    #[error("BAR {index}: address {address:#x} is not aligned to its size or out of its range")]
    BarAddress {
        /// The BAR.
        index: usize,
        /// The address.
        address: u64,
    },
    /// A capability's mask does not match its body.
    #[error("capability {id:#x}: the write mask is not as long as the body")]
    CapabilityMask {
        /// The capability ID.
        id: u8,
    },
    /// The capabilities do not fit the standard configuration space.
    #[error("capability {id:#x} does not fit below offset 0x100")]
    CapabilitySpace {
        /// The capability ID.
        id: u8,
    },
    /// An offset outside the configuration space.
    #[error("configuration offset {offset:#x} is outside the 4 KiB space")]
    Offset {
        /// The offset.
        offset: u16,
    },
    /// A vector count MSI-X cannot have.
    #[error("MSI-X has 1 to 2048 vectors, not {vectors}")]
    MsixVectors {
        /// The count asked for.
        vectors: u16,
    },
    /// MSI-X table or PBA placement outside BARs 0-5 or not 8-byte aligned.
    #[error("MSI-X table and PBA must be in BARs 0-5 at 8-byte aligned offsets")]
    MsixLayout,
    /// An empty or wrapping BAR window.
    #[error("BAR window {start:#x}..{end:#x} is empty")]
    Window {
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
    },
    /// No room left in the window for a BAR.
    #[error("BAR {index}: no room for {size:#x} bytes in its window")]
    NoRoom {
        /// The BAR.
        index: usize,
        /// Its size.
        size: u64,
    },
}

#[cfg(test)]
mod tests;
