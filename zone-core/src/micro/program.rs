//! [`GuestProgram`]: a micro-zone guest, parsed and validated when it is created.

use super::elf::{self, ElfError, ElfImage};
use super::layout::{DEFAULT_STACK_SIZE, MAX_MEMORY};
use std::sync::Arc;
use zone_guest::abi::layout;

/// A static x86-64 program built against `zone-guest`, ready to run in a micro zone.
///
/// Cheap to clone: the ELF bytes and the parsed image are shared.
#[derive(Clone, Debug)]
pub struct GuestProgram {
    pub(crate) elf: Arc<[u8]>,
    pub(crate) image: Arc<ElfImage>,
    pub(crate) args: Vec<Vec<u8>>,
    pub(crate) stack_size: u64,
    pub(crate) host_cpu_features: bool,
}

impl GuestProgram {
    /// Parses and validates an ELF executable (static, non-PIE, W^X, linked at 0x400000 or
    /// above, as `zone_guest::build` produces).
    pub fn from_elf(bytes: &[u8]) -> Result<Self, ElfError> {
        let image = elf::parse(bytes, layout::IMAGE_BASE..MAX_MEMORY)?;
        Ok(Self {
            elf: bytes.into(),
            image: Arc::new(image),
            args: Vec::new(),
            stack_size: DEFAULT_STACK_SIZE,
            host_cpu_features: false,
        })
    }

    /// Appends an argument (read in the guest with `zone_guest::args()`). Arguments may not
    /// contain NUL bytes and take at most 64 KiB together; `build()` checks both.
    pub fn arg(mut self, arg: impl AsRef<[u8]>) -> Self {
        self.args.push(arg.as_ref().to_vec());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_vec()));
        self
    }

    /// Sets the stack size of each vCPU (default 256 KiB, at least 16 KiB). A guard page below
    /// every stack turns an overflow into a page fault.
    pub fn stack_size(mut self, bytes: u64) -> Self {
        self.stack_size = bytes;
        self
    }

    /// Lets the program see the host's CPU features through `cpuid` (less XSAVE and the AVX
    /// family, which micro zones do not turn on), for code that picks an implementation when it
    /// runs (AES-NI, SHA, POPCNT) or uses instructions that KVM allows only when CPUID offers
    /// them (on Intel hosts RDRAND, RDSEED, RDTSCP and RDPID, which otherwise raise `#UD`: a
    /// fault the zone reports).
    ///
    /// Off by default: the vCPU's CPUID then lists only what it runs in (the vendor, long mode,
    /// NX, and SMEP, SMAP and UMIP where zones turns them on), so untrusted code learns neither
    /// the host's model nor its features, and the start is shorter (on the development machine,
    /// a KVM inside a VM, KVM took about 190 us to take the host's set and 60 us for this one).
    /// On kvm_pvm (that machine's KVM) the guest was seen to get the host CPU's own answer for
    /// the leaves the list holds (leaf 7's features showed through); the leaves it leaves out
    /// (the model and most features) answered zeros there too.
    pub fn host_cpu_features(mut self, visible: bool) -> Self {
        self.host_cpu_features = visible;
        self
    }

    /// The entry point.
    pub fn entry(&self) -> u64 {
        self.image.entry
    }

    /// One past the last byte of the loaded image (page-aligned).
    pub fn image_end(&self) -> u64 {
        self.image.end()
    }

    /// Checks the arguments: no NUL bytes, at most `ARGS_MAX` bytes together.
    pub(crate) fn check_args(&self) -> Result<(), super::LoadError> {
        if self.args.iter().any(|a| a.contains(&0)) {
            return Err(super::LoadError::Args("an argument contains a NUL byte"));
        }
        if self.arg_block().len() as u64 > layout::ARGS_MAX {
            return Err(super::LoadError::Args("arguments exceed 64 KiB together"));
        }
        Ok(())
    }

    /// The argument block: arguments joined by NUL bytes.
    pub(crate) fn arg_block(&self) -> Vec<u8> {
        self.args.join(&0u8)
    }
}
