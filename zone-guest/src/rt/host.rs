//! Calls into functions the embedder registered on the host.

use super::hypercall;
use crate::abi::{Hypercall, status};

/// Why a host call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCallError {
    /// The embedder registered no function with that name for this zone.
    UnknownFunction,
    /// A buffer was not in memory the program may access that way.
    BadPointer,
    /// The name, input or output exceeded the host's limits.
    TooLarge,
    /// The output buffer was too small; the call ran and produced `needed` bytes.
    OutputTooSmall {
        /// Bytes the host function produced.
        needed: usize,
    },
    /// The host function reported an error.
    HostError,
    /// A status this runtime does not know.
    Other(i64),
}

/// Calls host function `name` with `input`; the result is written to `output` and its length
/// returned.
pub fn call(name: &str, input: &[u8], output: &mut [u8]) -> Result<usize, HostCallError> {
    let [ret0, ret1] = hypercall(
        Hypercall::HostCall,
        [
            name.as_ptr() as u64,
            name.len() as u64,
            input.as_ptr() as u64,
            input.len() as u64,
            output.as_mut_ptr() as u64,
            output.len() as u64,
        ],
    );
    match ret0 as i64 {
        status::OK => Ok(ret1 as usize),
        status::UNKNOWN_FUNCTION => Err(HostCallError::UnknownFunction),
        status::BAD_POINTER => Err(HostCallError::BadPointer),
        status::TOO_LARGE => Err(HostCallError::TooLarge),
        status::OUTPUT_TOO_SMALL => Err(HostCallError::OutputTooSmall {
            needed: ret1 as usize,
        }),
        status::HOST_ERROR => Err(HostCallError::HostError),
        other => Err(HostCallError::Other(other)),
    }
}

/// Calls a host function registered with `host_fn_u64`: arguments and result are little-endian
/// 64-bit words. At most 16 arguments.
pub fn call_u64(name: &str, args: &[u64]) -> Result<u64, HostCallError> {
    let mut input = [0u8; 128];
    let args = &args[..args.len().min(16)];
    for (i, arg) in args.iter().enumerate() {
        input[i * 8..i * 8 + 8].copy_from_slice(&arg.to_le_bytes());
    }
    let mut out = [0u8; 8];
    let len = call(name, &input[..args.len() * 8], &mut out)?;
    if len != 8 {
        return Err(HostCallError::Other(len as i64));
    }
    Ok(u64::from_le_bytes(out))
}
