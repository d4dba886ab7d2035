//! A kernel module's appended signature, found and split off.
//!
//! A signed module is its ELF object followed by a PKCS#7 signature, a `struct
//! module_signature` (12 bytes: algorithm, hash, id type, signer and key-id lengths, 3 bytes of
//! padding, the signature's length as a big-endian `u32`) and the marker
//! `~Module signature appended~\n` (the layout of the kernel's `scripts/sign-file.c` and
//! `kernel/module/signing.c`).
//!
//! The guest kernel checks a signed module's signature when it loads it: under the lab's
//! emulation about 9 ms a module (an RSA verification). A zone's modules come from the host's own
//! module directory, chosen by the host, into an archive only the host writes; the guest kernel's
//! check of them defends nothing the host does not already decide. So by default the archive
//! carries each module without its signature and the signature beside it (`<module>.sig`); the
//! agent loads the module as it is and adds the signature back only for a kernel that demands
//! one (`module.sig_enforce=1`, `CONFIG_MODULE_SIG_FORCE`, lockdown).

/// What ends a signed module.
pub(crate) const MARKER: &[u8] = b"~Module signature appended~\n";
/// The size of `struct module_signature`.
const INFO_LEN: usize = 12;
/// `PKEY_ID_PKCS7`: the only id type the kernel accepts for modules.
const PKEY_ID_PKCS7: u8 = 2;

/// `module` split into its object and its signature (the PKCS#7 data, the signature info and the
/// marker, as appended), or `None` when it carries no well-formed signature (it then goes into
/// the archive as it is).
pub(crate) fn split(module: &[u8]) -> Option<(&[u8], &[u8])> {
    let info_end = module.len().checked_sub(MARKER.len())?;
    if &module[info_end..] != MARKER {
        return None;
    }
    let info_start = info_end.checked_sub(INFO_LEN)?;
    let info = &module[info_start..info_end];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]);
    let sig_len = usize::try_from(sig_len).ok()?;
    let body_end = info_start.checked_sub(sig_len)?;
    if info[2] != PKEY_ID_PKCS7 || sig_len == 0 || body_end == 0 {
        return None;
    }
    Some(module.split_at(body_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `body` signed with a `sig_len`-byte signature of id type `id_type`.
    fn signed(body: &[u8], sig: &[u8], id_type: u8, claimed_len: u32) -> Vec<u8> {
        let mut m = body.to_vec();
        m.extend_from_slice(sig);
        m.extend_from_slice(&[0, 0, id_type, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&claimed_len.to_be_bytes());
        m.extend_from_slice(MARKER);
        m
    }

    #[test]
    fn splits_a_signed_module() {
        let m = signed(b"\x7fELF object", b"pkcs7 data", PKEY_ID_PKCS7, 10);
        let (body, sig) = split(&m).unwrap();
        assert_eq!(body, b"\x7fELF object");
        assert_eq!(sig.len(), 10 + INFO_LEN + MARKER.len());
        assert_eq!([body, sig].concat(), m);
    }

    #[test]
    fn leaves_unsigned_and_malformed_modules_whole() {
        assert_eq!(split(b"\x7fELF object"), None);
        assert_eq!(split(b""), None);
        assert_eq!(split(MARKER), None);
        // A length past the start of the file.
        assert_eq!(split(&signed(b"obj", b"sig", PKEY_ID_PKCS7, 1000)), None);
        assert_eq!(
            split(&signed(b"obj", b"sig", PKEY_ID_PKCS7, u32::MAX)),
            None
        );
        // Nothing left of the object.
        assert_eq!(split(&signed(b"", b"sig", PKEY_ID_PKCS7, 3)), None);
        // An empty signature, or one of another id type.
        assert_eq!(split(&signed(b"obj", b"", PKEY_ID_PKCS7, 0)), None);
        assert_eq!(split(&signed(b"obj", b"sig", 1, 3)), None);
    }

    /// Every signed module of the host's module directory splits, and nothing is lost.
    #[test]
    fn splits_the_host_modules() {
        let Ok(release) = std::fs::read_dir("/lib/modules") else {
            return;
        };
        let mut seen = 0;
        for dir in release.filter_map(Result::ok) {
            let net = dir.path().join("kernel/net/vmw_vsock");
            for entry in std::fs::read_dir(net)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
            {
                let Ok(m) = std::fs::read(entry.path()) else {
                    continue;
                };
                if !m.ends_with(MARKER) {
                    continue;
                }
                let (body, sig) = split(&m).expect("a signed host module splits");
                assert!(body.starts_with(b"\x7fELF"), "{}", entry.path().display());
                assert!(!body.ends_with(MARKER));
                assert_eq!(body.len() + sig.len(), m.len());
                seen += 1;
            }
        }
        eprintln!("{seen} signed host modules split");
    }
}
