//! Host functions: named callbacks the embedder grants a zone. A guest can call only what its
//! builder registered; anything else is refused and reported as a violation.

use std::collections::HashMap;
use std::sync::Arc;
use zone_guest::abi::limits;

/// What a host function sees of a call.
#[derive(Debug)]
pub struct HostCall<'a> {
    /// The calling zone's name.
    pub zone: &'a str,
    /// The calling vCPU.
    pub vcpu: u32,
    /// The bytes the guest passed (at most 1 MiB).
    pub input: &'a [u8],
}

/// An error a host function returns to the guest (the guest sees a `HostError` status; the message
/// goes to the zone's event stream).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostFnError(pub String);

impl HostFnError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<&str> for HostFnError {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for HostFnError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The result of a host function: output bytes for the guest, or an error.
pub type HostFnResult = Result<Vec<u8>, HostFnError>;

type HostFnBox = Arc<dyn Fn(&HostCall<'_>) -> HostFnResult + Send + Sync>;

/// Why a host function could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostFnNameError {
    /// Empty, too long or not printable ASCII.
    #[error(
        "host function name {0:?} is invalid: use 1 to 64 printable ASCII characters without spaces"
    )]
    Invalid(String),
    /// Registered twice.
    #[error("host function {0:?} is registered twice")]
    Duplicate(String),
}

/// The host functions of one zone, looked up by name and by index.
#[derive(Clone, Default)]
pub(crate) struct HostFunctions {
    by_name: HashMap<Box<[u8]>, usize>,
    entries: Vec<(String, HostFnBox)>,
}

impl std::fmt::Debug for HostFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(n, _)| n))
            .finish()
    }
}

impl HostFunctions {
    pub(crate) fn register(
        &mut self,
        name: &str,
        f: impl Fn(&HostCall<'_>) -> HostFnResult + Send + Sync + 'static,
    ) -> Result<(), HostFnNameError> {
        let valid = !name.is_empty()
            && name.len() as u64 <= limits::MAX_NAME
            && name.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(HostFnNameError::Invalid(name.to_string()));
        }
        if self.by_name.contains_key(name.as_bytes()) {
            return Err(HostFnNameError::Duplicate(name.to_string()));
        }
        self.by_name
            .insert(name.as_bytes().into(), self.entries.len());
        self.entries.push((name.to_string(), Arc::new(f)));
        Ok(())
    }

    /// Index of the function called `name` (raw guest bytes).
    pub(crate) fn lookup(&self, name: &[u8]) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn call(&self, index: usize, call: &HostCall<'_>) -> HostFnResult {
        match self.entries.get(index) {
            Some((_, f)) => f(call),
            None => Err(HostFnError::new("no such host function")),
        }
    }

    pub(crate) fn name(&self, index: usize) -> &str {
        self.entries.get(index).map_or("?", |(n, _)| n)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Wraps a function over little-endian `u64` words (at most 16 arguments, one result), the
/// convention of `zone_guest::call_u64`.
pub(crate) fn u64_adapter(
    f: impl Fn(&[u64]) -> u64 + Send + Sync + 'static,
) -> impl Fn(&HostCall<'_>) -> HostFnResult + Send + Sync + 'static {
    move |call: &HostCall<'_>| {
        if !call.input.len().is_multiple_of(8) || call.input.len() > 16 * 8 {
            return Err(HostFnError::new(format!(
                "expected up to 16 little-endian u64 arguments, got {} bytes",
                call.input.len()
            )));
        }
        let mut args = [0u64; 16];
        let n = call.input.len() / 8;
        for (slot, chunk) in args.iter_mut().zip(call.input.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *slot = u64::from_le_bytes(word);
        }
        Ok(f(&args[..n]).to_le_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(input: &'a [u8]) -> HostCall<'a> {
        HostCall {
            zone: "t",
            vcpu: 0,
            input,
        }
    }

    #[test]
    fn names_are_validated_and_unique() {
        let mut fns = HostFunctions::default();
        assert!(fns.register("add", |_| Ok(vec![])).is_ok());
        assert_eq!(
            fns.register("add", |_| Ok(vec![])),
            Err(HostFnNameError::Duplicate("add".into()))
        );
        for bad in ["", "has space", "tab\t", &"x".repeat(65), "ünï"] {
            assert!(
                matches!(
                    fns.register(bad, |_| Ok(vec![])),
                    Err(HostFnNameError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(fns.lookup(b"add"), Some(0));
        assert_eq!(fns.lookup(b"ad"), None);
        assert_eq!(fns.names(), vec!["add".to_string()]);
    }

    #[test]
    fn u64_adapter_decodes_words_and_rejects_odd_input() {
        let add = u64_adapter(|a| a.iter().sum());
        let mut input = Vec::new();
        for w in [2u64, 40] {
            input.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(add(&call(&input)).unwrap(), 42u64.to_le_bytes().to_vec());
        assert!(add(&call(&[1, 2, 3])).is_err());
        assert!(add(&call(&[0; 17 * 8])).is_err());
        assert_eq!(add(&call(&[])).unwrap(), 0u64.to_le_bytes().to_vec());
    }
}
